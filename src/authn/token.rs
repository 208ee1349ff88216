//! Bearer tokens: one review per token through a cache keyed by the token's SHA-256, so the raw
//! token is never stored. Concurrent misses for one token share a single review; review errors are
//! not cached. The reviewer is the API server's TokenReview or the static token file.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::Identity;
use crate::metrics::{CacheKind, Metrics};
use crate::review::{ReviewError, ReviewFuture};

/// The result of reviewing one token.
#[derive(Clone, Debug)]
pub enum TokenOutcome {
    /// The token identifies this caller (with `system:authenticated` added).
    Authenticated(Arc<Identity>),
    /// The token is not valid.
    Rejected,
}

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
    cache: Cache<TokenDigest, TokenOutcome>,
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
        self.cache.invalidate_all();
    }

    /// Caches `reviewer`'s answers for `ttl` (zero: nothing is kept, but concurrent misses still
    /// share one review).
    pub fn new(reviewer: Arc<dyn TokenReviewer>, ttl: Duration, metrics: Metrics) -> Self {
        let cache = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(ttl.max(Duration::from_nanos(1)))
            .build();
        Self {
            reviewer,
            cache,
            metrics,
        }
    }

    /// Reviews a token, from the cache when possible.
    pub async fn review(&self, token: &str) -> Result<TokenOutcome, ReviewError> {
        let reviewer = &self.reviewer;
        let entry = self
            .cache
            .entry(TokenDigest::of(token))
            .or_try_insert_with(async move {
                reviewer.review(token).await.map(|outcome| match outcome {
                    TokenOutcome::Authenticated(identity) => {
                        TokenOutcome::Authenticated(Identity::shared_authenticated(identity))
                    }
                    TokenOutcome::Rejected => TokenOutcome::Rejected,
                })
            })
            .await
            .map_err(|e| (*e).clone())?;
        self.metrics.cache(CacheKind::Token, !entry.is_fresh());
        Ok(entry.into_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256() {
        let digest = TokenDigest::of("abc");
        assert_eq!(digest.0[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(TokenDigest::of("abc"), TokenDigest::of("abd"));
    }
}
