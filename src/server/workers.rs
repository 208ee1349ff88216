//! The threads caller connections run on (`--worker-threads`, by default one per core), each
//! driving a single-threaded runtime of its own. A connection stays on its worker from accept to
//! close, and so does everything it starts (its kubelet connection, an upgraded stream's relay),
//! so a request never crosses threads: the kubelet's response wakes the caller's task on the
//! thread it already runs on. On the shared multi-threaded runtime each such wake-up could land
//! on the other core, and a cached 65-byte GET cost 30% more CPU (`benches/compare.sh` on two
//! cores: 23.2–23.4 µs against 17.8–18.4).
//!
//! Accepting, the admin listener, API-server calls and the audit writers stay on the main runtime.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The worker threads; they stop when this is dropped, ending whatever still runs on them.
#[derive(Debug)]
pub struct Workers(Vec<Worker>);

#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Connections on this worker.
    open: Arc<AtomicUsize>,
    /// Dropped to stop the thread.
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` workers, by default one per core the process may use
    /// (`available_parallelism`, which follows a container's CPU limit).
    pub fn start(count: Option<NonZeroUsize>) -> std::io::Result<Self> {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        (0..count)
            .map(Worker::start)
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("--worker-threads: cannot start {count} worker threads: {e}"),
                )
            })
    }

    /// Runs `serve` for `tcp` on the worker with the fewest connections.
    pub fn spawn<F, S>(&self, tcp: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .0
            .iter()
            .min_by_key(|worker| worker.open.load(Ordering::Relaxed))
        else {
            return;
        };
        // The socket leaves this runtime's reactor and joins the worker's.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand an accepted connection to a worker");
                return;
            }
        };
        let open = Counted::new(&worker.open);
        worker.handle.spawn(async move {
            let _open = open;
            match TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::warn!(error = %e, "a worker cannot take a connection"),
            }
        });
    }
}

impl Worker {
    fn start(index: usize) -> std::io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("guard-worker-{index}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Self {
            handle,
            open: Arc::default(),
            _stop: stop,
        })
    }
}

/// One connection counted on its worker until dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(open))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    type Reports = mpsc::UnboundedSender<(Option<String>, bool)>;

    /// Accepts one connection from a fresh listener.
    async fn accepted() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, _client) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        accepted.unwrap().0
    }

    /// Serves a connection on `workers` that reports its thread and whether its socket works
    /// there, then holds until the returned sender is dropped.
    async fn hold(workers: &Workers, reports: &Reports) -> oneshot::Sender<()> {
        let (release, released) = oneshot::channel::<()>();
        let report = reports.clone();
        workers.spawn(accepted().await, move |tcp| async move {
            let thread = std::thread::current().name().map(str::to_owned);
            report.send((thread, tcp.peer_addr().is_ok())).unwrap();
            let _ = released.await;
        });
        release
    }

    fn open(workers: &Workers) -> Vec<usize> {
        workers
            .0
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_worker_with_the_fewest() {
        let workers = Workers::start(NonZeroUsize::new(2)).unwrap();
        let (reports, mut reported) = mpsc::unbounded_channel();
        let first = hold(&workers, &reports).await;
        let (first_thread, usable) = reported.recv().await.unwrap();
        assert!(usable, "the socket does not work on its worker");
        assert!(
            first_thread
                .as_deref()
                .unwrap()
                .starts_with("guard-worker-")
        );
        let _second = hold(&workers, &reports).await;
        let (second_thread, _) = reported.recv().await.unwrap();
        assert_ne!(first_thread, second_thread, "both on one worker");
        assert_eq!(open(&workers), [1, 1]);

        // The first connection ends: its worker takes the next one.
        drop(first);
        while open(&workers).iter().sum::<usize>() > 1 {
            tokio::task::yield_now().await;
        }
        let _third = hold(&workers, &reports).await;
        let (third_thread, _) = reported.recv().await.unwrap();
        assert_eq!(
            third_thread, first_thread,
            "the third joined the busy worker"
        );
    }
}
