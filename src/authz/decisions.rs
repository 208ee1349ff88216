//! The decision cache in front of whatever answers access reviews (the API server's
//! SubjectAccessReview or the embedded RBAC policy).
//!
//! Keyed by (identity, verb, resource): the node name is fixed for the process. Allowed and
//! denied answers live for their own TTLs (the kubelet's `--authorization-webhook-cache-*-ttl`
//! defaults, 5m and 30s); concurrent misses for one key share one review; errors are never
//! cached; a hit builds no review. A decision reviewed before the policy was reloaded is never
//! served after it ([`Generation`]).

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::{Decision, Resource};
use crate::authn::Identity;
use crate::kubelet_api::Verb;
use crate::metrics::{CacheKind, Metrics};
use crate::review::{Generation, Lifetimes, ReviewError, ReviewFuture};

/// Something that answers one access review for the guard's node.
pub trait AccessReviewer: Send + Sync {
    /// May `who` do `verb` on `resource` (a subresource of this node, or of a pod)? `Err` means
    /// no answer.
    fn review<'a>(
        &'a self,
        who: &'a Identity,
        verb: Verb,
        resource: &'a Resource,
    ) -> ReviewFuture<'a, Decision>;
}

/// Cached, coalescing access reviews.
pub struct DecisionCache {
    reviewer: Arc<dyn AccessReviewer>,
    /// Each decision with the generation read before its review.
    cache: Cache<Key, (Decision, u64)>,
    generation: Generation,
    metrics: Metrics,
}

type Key = (Arc<Identity>, Verb, Resource);

// A key per cached decision, tens of thousands of them: a pod's names stay out of line.
const _: () = assert!(std::mem::size_of::<Key>() <= 32);

impl DecisionCache {
    /// Forgets every cached decision: the policy file changed, and a removed grant must stop
    /// working now, not when its entry expires.
    pub fn forget(&self) {
        self.generation.advance();
        self.cache.invalidate_all();
    }

    /// Caches `reviewer`'s allows for `allowed` and denies for `denied`; zero keeps nothing.
    pub fn new(
        reviewer: Arc<dyn AccessReviewer>,
        allowed: Duration,
        denied: Duration,
        metrics: Metrics,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            .expire_after(Lifetimes(move |decision: &Decision| {
                if decision.is_allow() { allowed } else { denied }
            }))
            .build();
        Self {
            reviewer,
            cache,
            generation: Generation::default(),
            metrics,
        }
    }

    /// One decision, from the cache when possible.
    pub async fn decide(
        &self,
        who: &Arc<Identity>,
        verb: Verb,
        resource: &Resource,
    ) -> Result<Decision, ReviewError> {
        let key = (Arc::clone(who), verb, resource.clone());
        let generation = self.generation.current();
        // A hit costs a lookup only: the review future is not even built.
        match self.cache.get(&key).await {
            Some((decision, of)) if of == generation => {
                self.metrics.cache(CacheKind::Sar, true);
                return Ok(decision);
            }
            Some(_) => self.cache.invalidate(&key).await,
            None => {}
        }
        let review = self.reviewer.review(who, verb, resource);
        let entry = self
            .cache
            .entry(key.clone())
            .or_try_insert_with(async move { review.await.map(|decision| (decision, generation)) })
            .await
            .map_err(|e| (*e).clone())?;
        self.metrics.cache(CacheKind::Sar, !entry.is_fresh());
        let (decision, of) = entry.into_value();
        if of == generation {
            return Ok(decision);
        }
        // Joined a review begun before a reload: ask the current policy, and let the next
        // request cache its answer.
        self.cache.invalidate(&key).await;
        self.reviewer.review(who, verb, resource).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::kubelet_api::Subresource;

    /// Reads its policy (`allow`) when a review is built, as the embedded policy does, and
    /// answers once `gate` gives a permit.
    struct Gated {
        allow: AtomicBool,
        built: AtomicUsize,
        gate: Semaphore,
    }

    impl AccessReviewer for Gated {
        fn review<'a>(
            &'a self,
            _: &'a Identity,
            _: Verb,
            _: &'a Resource,
        ) -> ReviewFuture<'a, Decision> {
            self.built.fetch_add(1, Ordering::SeqCst);
            let decision = if self.allow.load(Ordering::SeqCst) {
                Decision::Allow { reason: "".into() }
            } else {
                Decision::Deny { reason: "".into() }
            };
            Box::pin(async move {
                self.gate.acquire().await.expect("gate").forget();
                Ok(decision)
            })
        }
    }

    #[tokio::test]
    async fn a_decision_reviewed_across_a_reload_is_not_served_after_it() {
        let reviewer = Arc::new(Gated {
            allow: AtomicBool::new(true),
            built: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        });
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let reviewing: Arc<dyn AccessReviewer> = reviewer.clone();
        let cache = Arc::new(DecisionCache::new(
            reviewing,
            Duration::from_secs(300),
            Duration::from_secs(30),
            metrics,
        ));
        let who = Arc::new(Identity::anonymous());
        let proxy = Resource::Node(Subresource::Proxy);

        // A review reads the old policy, the policy is reloaded, then the review's answer lands.
        let first = tokio::spawn({
            let (cache, who, proxy) = (Arc::clone(&cache), Arc::clone(&who), proxy.clone());
            async move { cache.decide(&who, Verb::Get, &proxy).await }
        });
        while reviewer.built.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        reviewer.allow.store(false, Ordering::SeqCst);
        cache.forget();
        reviewer.gate.add_permits(10);
        assert!(
            first.await.unwrap().unwrap().is_allow(),
            "begun before the reload"
        );

        let after = cache.decide(&who, Verb::Get, &proxy).await.unwrap();
        assert!(!after.is_allow(), "the removed grant no longer works");
        assert!(
            !cache
                .decide(&who, Verb::Get, &proxy)
                .await
                .unwrap()
                .is_allow()
        );
    }
}
