//! Bearer tokens: one review per token through a cache keyed by the token's SHA-256, so the raw
//! token is never stored. Concurrent misses for one token share a single review; review errors are
//! not cached, and a rejection that came with an error ([`TokenOutcome::Failed`]) is kept for
//! [`FAILED_TTL`] at most; an answer reviewed before the token file was reloaded is never served
//! after it ([`Generation`]). The reviewer is the API server's TokenReview or the static token
//! file.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::Identity;
use crate::metrics::{CacheKind, Metrics};
use crate::review::{Generation, Lifetimes, ReviewError, ReviewFuture};

/// The result of reviewing one token.
#[derive(Clone, Debug)]
pub enum TokenOutcome {
    /// The token identifies this caller (with `system:authenticated` added).
    Authenticated(Arc<Identity>),
    /// The token is not valid.
    Rejected,
    /// Not authenticated, with an error from the API server's authenticators: a 401 as
    /// `Rejected`. kube-apiserver reports every token it does not authenticate with an error
    /// ("invalid bearer token", "token has expired"), but the error may also be one that passes (a
    /// key fetch that failed just then), so it is kept only [`FAILED_TTL`]. Kubernetes' own token
    /// cache keeps none, and reviews a repeated bad token every time.
    Failed,
}

/// How long a [`TokenOutcome::Failed`] is kept (at most the cache's lifetime): a valid token
/// caught in an authenticator's passing failure is refused that long at most, and a caller
/// repeating a bad token costs one TokenReview that often.
pub const FAILED_TTL: Duration = Duration::from_secs(10);

/// Something that can say whose token this is.
pub trait TokenReviewer: Send + Sync {
    /// Reviews one token. `Rejected` is an answer; `Err` means no answer could be had.
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenOutcome>;
}

/// The SHA-256 of a bearer token: the only form in which a token is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

/// Cached, coalescing token authentication.
pub struct TokenAuthenticator {
    reviewer: Arc<dyn TokenReviewer>,
    /// Each answer with the generation read before its review.
    cache: Cache<TokenDigest, (TokenOutcome, u64)>,
    generation: Generation,
    metrics: Metrics,
}

impl TokenDigest {
    /// Digests a token.
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl TokenAuthenticator {
    /// Forgets every cached answer: the token file changed, and a removed token must stop
    /// working now, not when its entry expires.
    pub fn forget(&self) {
        self.generation.advance();
        self.cache.invalidate_all();
    }

    /// Caches `reviewer`'s answers for `ttl`, failed ones for `failed` if shorter (zero: nothing is
    /// kept, but concurrent misses still share one review).
    pub fn new(
        reviewer: Arc<dyn TokenReviewer>,
        ttl: Duration,
        failed: Duration,
        metrics: Metrics,
    ) -> Self {
        let ttl = ttl.max(Duration::from_nanos(1));
        let failed = failed.clamp(Duration::from_nanos(1), ttl);
        let cache = Cache::builder()
            .max_capacity(100_000)
            .expire_after(Lifetimes(move |outcome: &TokenOutcome| match outcome {
                TokenOutcome::Failed => failed,
                _ => ttl,
            }))
            .build();
        Self {
            reviewer,
            cache,
            generation: Generation::default(),
            metrics,
        }
    }

    /// Reviews a token, from the cache when possible.
    pub async fn review(&self, token: &str) -> Result<TokenOutcome, ReviewError> {
        let digest = TokenDigest::of(token);
        let generation = self.generation.current();
        let entry = self
            .cache
            .entry(digest)
            .or_try_insert_with(async move {
                let outcome = self.reviewed(token).await?;
                Ok::<_, ReviewError>((outcome, generation))
            })
            .await
            .map_err(|e| (*e).clone())?;
        self.metrics.cache(CacheKind::Token, !entry.is_fresh());
        let (outcome, of) = entry.into_value();
        if of == generation {
            return Ok(outcome);
        }
        // Cached before a reload: ask the current file, and let the next request cache it.
        self.cache.invalidate(&digest).await;
        self.reviewed(token).await
    }

    /// One uncached review.
    async fn reviewed(&self, token: &str) -> Result<TokenOutcome, ReviewError> {
        Ok(match self.reviewer.review(token).await? {
            TokenOutcome::Authenticated(identity) => {
                TokenOutcome::Authenticated(Identity::shared_authenticated(identity))
            }
            rejected => rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn digests_are_sha256() {
        let digest = TokenDigest::of("abc");
        assert_eq!(digest.0[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(TokenDigest::of("abc"), TokenDigest::of("abd"));
    }

    /// Knows `bob`'s token until `removed`, read when a review starts (as the token file is);
    /// answers once `gate` gives a permit.
    struct Gated {
        removed: std::sync::atomic::AtomicBool,
        started: tokio::sync::Notify,
        gate: tokio::sync::Semaphore,
    }

    impl TokenReviewer for Gated {
        fn review<'a>(&'a self, _: &'a str) -> ReviewFuture<'a, TokenOutcome> {
            let outcome = if self.removed.load(std::sync::atomic::Ordering::SeqCst) {
                TokenOutcome::Rejected
            } else {
                let bob = Identity::new("bob", "", [], BTreeMap::new());
                TokenOutcome::Authenticated(Arc::new(bob))
            };
            self.started.notify_one();
            Box::pin(async move {
                self.gate.acquire().await.expect("gate").forget();
                Ok(outcome)
            })
        }
    }

    #[tokio::test]
    async fn a_token_reviewed_across_a_reload_is_not_served_after_it() {
        let reviewer = Arc::new(Gated {
            removed: false.into(),
            started: tokio::sync::Notify::new(),
            gate: tokio::sync::Semaphore::new(0),
        });
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let reviewing: Arc<dyn TokenReviewer> = reviewer.clone();
        let tokens = Arc::new(TokenAuthenticator::new(
            reviewing,
            Duration::from_secs(120),
            FAILED_TTL,
            metrics,
        ));
        let first = tokio::spawn({
            let tokens = Arc::clone(&tokens);
            async move { tokens.review("t").await }
        });
        reviewer.started.notified().await;
        reviewer
            .removed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tokens.forget();
        reviewer.gate.add_permits(10);
        let first = first.await.unwrap().unwrap();
        assert!(
            matches!(first, TokenOutcome::Authenticated(_)),
            "begun before"
        );
        for _ in 0..2 {
            let after = tokens.review("t").await.unwrap();
            assert!(
                matches!(after, TokenOutcome::Rejected),
                "removed: {after:?}"
            );
        }
    }

    /// Answers every review with `outcome`, counting them.
    struct Counting {
        outcome: TokenOutcome,
        reviews: std::sync::atomic::AtomicUsize,
    }

    impl TokenReviewer for Counting {
        fn review<'a>(&'a self, _: &'a str) -> ReviewFuture<'a, TokenOutcome> {
            self.reviews
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let outcome = self.outcome.clone();
            Box::pin(async move { Ok(outcome) })
        }
    }

    #[tokio::test]
    async fn a_failure_is_kept_a_shorter_time_than_a_rejection() {
        for (outcome, reviews) in [(TokenOutcome::Rejected, 1), (TokenOutcome::Failed, 2)] {
            let reviewer = Arc::new(Counting {
                outcome,
                reviews: 0.into(),
            });
            let reviewing: Arc<dyn TokenReviewer> = reviewer.clone();
            let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
            let tokens = TokenAuthenticator::new(
                reviewing,
                Duration::from_secs(120),
                Duration::from_millis(100),
                metrics,
            );
            for _ in 0..3 {
                let answer = tokens.review("t").await.unwrap();
                assert!(
                    matches!(answer, TokenOutcome::Rejected | TokenOutcome::Failed),
                    "{answer:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokens.review("t").await.unwrap();
            assert_eq!(
                reviewer.reviews.load(std::sync::atomic::Ordering::SeqCst),
                reviews
            );
        }
    }
}
