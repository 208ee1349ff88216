//! The decision cache in front of whatever answers access reviews (the API server's
//! SubjectAccessReview or the embedded RBAC policy).
//!
//! Keyed by (identity, verb, resource): the node name is fixed for the process. Allowed and
//! denied answers live for their own TTLs (the kubelet's `--authorization-webhook-cache-*-ttl`
//! defaults, 5m and 30s); concurrent misses for one key share one review; errors are never
//! cached; a hit builds no review.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use super::{Decision, Resource};
use crate::authn::Identity;
use crate::kubelet_api::Verb;
use crate::metrics::{CacheKind, Metrics};
use crate::review::{ReviewError, ReviewFuture};

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
    cache: Cache<Key, Decision>,
    metrics: Metrics,
}

type Key = (Arc<Identity>, Verb, Resource);

// A key per cached decision, tens of thousands of them: a pod's names stay out of line.
const _: () = assert!(std::mem::size_of::<Key>() <= 32);

/// Lifetimes by decision.
struct Ttls {
    allowed: Duration,
    denied: Duration,
}

impl DecisionCache {
    /// Forgets every cached decision: the policy file changed, and a removed grant must stop
    /// working now, not when its entry expires.
    pub fn forget(&self) {
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
            .expire_after(Ttls { allowed, denied })
            .build();
        Self {
            reviewer,
            cache,
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
        // A hit costs a lookup only: the review future is not even built.
        if let Some(decision) = self.cache.get(&key).await {
            self.metrics.cache(CacheKind::Sar, true);
            return Ok(decision);
        }
        let entry = self
            .cache
            .entry(key)
            .or_try_insert_with(self.reviewer.review(who, verb, resource))
            .await
            .map_err(|e| (*e).clone())?;
        self.metrics.cache(CacheKind::Sar, !entry.is_fresh());
        Ok(entry.into_value())
    }
}

impl Expiry<Key, Decision> for Ttls {
    fn expire_after_create(
        &self,
        _key: &Key,
        decision: &Decision,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(if decision.is_allow() {
            self.allowed
        } else {
            self.denied
        })
    }
}
