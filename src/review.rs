//! What a review is, independent of who answers it: the future a reviewer returns and the error
//! that means no answer. `authn` and `authz` define the reviewer traits with these; `apiserver`
//! and `embedded` implement them; their two caches of answers share [`Generation`] and
//! [`Lifetimes`]. Depends on nothing else of the crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A future returned by a reviewer.
pub type ReviewFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ReviewError>> + Send + 'a>>;

/// A review that produced no answer. Never cached; always answered with 500.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server did not answer within `--apiserver-timeout`.
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    /// The API server answered with an error status.
    #[error("the API server answered {code}: {message}")]
    Status {
        /// HTTP status.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The API server could not be reached, or its answer could not be read; the client's error
    /// is kept as the source (shared, because a failed review is handed to every request that
    /// waited for it).
    #[error("the API server could not be reached")]
    Transport(#[source] Arc<kube::Error>),
    /// The guard's own limit on calls in flight left no turn within `--apiserver-timeout`.
    #[error("no turn for an API-server call within {0:?}: the guard's limit was full")]
    Queued(Duration),
    /// The guard's own limit on calls waiting for a turn was full: the call was not queued.
    #[error("{0} API-server calls already wait for a turn: the guard's limit")]
    QueueFull(usize),
    /// The answer contradicts itself (for example both allowed and denied).
    #[error("the API server's answer is inconsistent: {0}")]
    Inconsistent(String),
}

/// How many times what answers reviews has been reloaded. A cache stamps each answer with the
/// generation read before the review began and serves only answers of the current one: a review
/// that read the old policy or token file but reached the cache after the reload cleared it
/// would otherwise be served until its entry expired.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    /// The current generation; read it before a review starts.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Starts a new generation: call it after the new content is in place.
    pub fn advance(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A review cache's entry lifetimes, by answer: each answer lives as long as `F` says for it from
/// when it was stored, and one replacing another lives its own lifetime, not what was left of the
/// other's. Stored values are `(answer, generation)`.
pub struct Lifetimes<F>(pub F);

impl<K, A, F: Fn(&A) -> Duration> moka::Expiry<K, (A, u64)> for Lifetimes<F> {
    fn expire_after_create(
        &self,
        _key: &K,
        (answer, _): &(A, u64),
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some((self.0)(answer))
    }

    fn expire_after_update(
        &self,
        key: &K,
        value: &(A, u64),
        updated_at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}
