//! Graceful shutdown's bookkeeping, below every module that must stop: the stop signal every
//! background task waits on ([`stopped`]), and the drain of the guarded listener: every caller
//! connection and every upgraded stream holds a [`Tracked`] for as long as it is open (and, with
//! an audit sink, every request and forwarded body until its event is queued), so the listener
//! knows when all of them are gone.
//!
//! Shutdown has two phases. *Draining*: connections finish the requests they are serving and
//! close (HTTP/1.1 after the response in flight, HTTP/2 after a GOAWAY), while upgraded streams
//! (exec, attach, port-forward) go on. *Closing*, at the end of `--shutdown-grace-period`: whatever
//! is still open is closed at once.

use std::time::Duration;

use tokio::sync::watch;

/// Resolves once shutdown has been asked for (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Where shutdown stands; only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

/// The shutdown signal and the count of what is still open.
#[derive(Clone, Debug)]
pub struct Drain(watch::Sender<Phase>);

/// One open connection, stream, or (with an audit sink) request or body, counted until dropped.
#[derive(Debug)]
pub struct Tracked(watch::Receiver<Phase>);

impl Drain {
    /// A drain with nothing open, serving.
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Serving);
        Self(phase)
    }

    /// Counts something open until the returned value drops.
    pub fn track(&self) -> Tracked {
        Tracked(self.0.subscribe())
    }

    /// How many connections and streams are open.
    pub fn open(&self) -> usize {
        self.0.receiver_count()
    }

    /// Asks everything tracked to finish, waits up to `grace`, then closes what is left; returns
    /// how many had to be closed.
    pub async fn run(&self, grace: Duration) -> usize {
        self.0.send_replace(Phase::Draining);
        if tokio::time::timeout(grace, self.0.closed()).await.is_ok() {
            return 0;
        }
        let left = self.open();
        self.0.send_replace(Phase::Closing);
        // Every tracked task selects on `closing`, so this takes one scheduling round; the bound is
        // only against a task stuck outside its select.
        if tokio::time::timeout(Duration::from_secs(1), self.0.closed())
            .await
            .is_err()
        {
            tracing::warn!(open = self.open(), "still open after closing");
        }
        left
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracked {
    /// Resolves once shutdown has started (or the drain is gone).
    pub async fn draining(&mut self) {
        let _ = self.0.wait_for(|phase| *phase >= Phase::Draining).await;
    }

    /// Resolves once the grace period is over and everything must close (or the drain is gone).
    pub async fn closing(&mut self) {
        let _ = self.0.wait_for(|phase| *phase == Phase::Closing).await;
    }

    /// Whether the grace period is over and everything must close.
    pub fn is_closing(&self) -> bool {
        *self.0.borrow() == Phase::Closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_drain_waits_for_what_finishes_and_closes_the_rest() {
        let drain = Drain::new();
        let mut quick = drain.track();
        let mut stubborn = drain.track();
        assert_eq!(drain.open(), 2);
        let quick_task = tokio::spawn(async move {
            quick.draining().await;
        });
        let stubborn_task = tokio::spawn(async move {
            stubborn.closing().await;
            "closed"
        });
        assert_eq!(drain.run(Duration::from_secs(30)).await, 1);
        quick_task.await.unwrap();
        assert_eq!(stubborn_task.await.unwrap(), "closed");
        assert_eq!(drain.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_open_means_no_wait() {
        let drain = Drain::new();
        assert_eq!(drain.run(Duration::from_secs(30)).await, 0);
    }
}
