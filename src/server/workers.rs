//! The threads caller connections run on (`--worker-threads`, by default one per core), each
//! driving a single-threaded runtime of its own. A connection stays on its worker from accept to
//! close, and so does everything it starts (its kubelet connection, an upgraded stream's relay),
//! so a request never crosses threads: the kubelet's response wakes the caller's task on the
//! thread it already runs on. On the shared multi-threaded runtime each such wake-up could land
//! on the other core, and a cached 65-byte GET cost 30% more CPU (`benches/compare.sh` on two
//! cores: 23.2–23.4 µs against 17.8–18.4).
//!
//! Accepting, the admin listener, API-server calls and the audit writers stay on the main runtime.
//!
//! With `--worker-cpu-affinity` worker N runs on the N-th CPU of the process's affinity mask
//! only. Unpinned, the kernel sometimes kept both workers on one of two cores while the other
//! served the load generator and the upstream: a worker then waited out the other's time slice,
//! and `benches/compare.sh` lost a sixth of its 65-byte throughput and doubled its p99 in those
//! runs. Pinned, no run did. Off by default: where other pods share the CPUs, a worker pinned to
//! a busy one cannot leave it.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::thread::CpuSet;
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
    /// (`available_parallelism`, which follows a container's CPU limit), each pinned to a CPU of
    /// its own if `pin`.
    pub fn start(count: Option<NonZeroUsize>, pin: bool) -> std::io::Result<Self> {
        let count = count
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        let cpus = if pin {
            pinned_cpus(count)?.into_iter().map(Some).collect()
        } else {
            vec![None; count]
        };
        cpus.into_iter()
            .enumerate()
            .map(|(index, cpu)| Worker::start(index, cpu, count))
            .collect::<Result<_, _>>()
            .map(Self)
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

/// The CPUs in `set`, in order.
fn cpus(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect()
}

/// The first `count` CPUs the process may run on, one per worker; an error naming the flag if
/// there are fewer.
fn pinned_cpus(count: usize) -> std::io::Result<Vec<usize>> {
    let cpus = cpus(&rustix::thread::sched_getaffinity(None)?);
    if cpus.len() < count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--worker-cpu-affinity: {count} worker threads, but the process may run on {} CPUs \
                 ({cpus:?}): set --worker-threads to at most {}",
                cpus.len(),
                cpus.len()
            ),
        ));
    }
    Ok(cpus[..count].to_vec())
}

impl Worker {
    /// Worker `index` of `count`, on `cpu` only if given.
    fn start(index: usize, cpu: Option<usize>, count: usize) -> std::io::Result<Self> {
        let cannot = |e: std::io::Error| {
            std::io::Error::new(
                e.kind(),
                format!("--worker-threads: cannot start {count} worker threads: {e}"),
            )
        };
        let runtime = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(cannot)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (pinned, pinning) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("guard-worker-{index}"))
            .spawn(move || {
                let result = cpu.map_or(Ok(()), |cpu| {
                    let mut only = CpuSet::new();
                    only.set(cpu);
                    rustix::thread::sched_setaffinity(None, &only).map_err(std::io::Error::from)
                });
                let serve = result.is_ok();
                let _ = pinned.send(result);
                if serve {
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                }
            })
            .map_err(cannot)?;
        if let Some(cpu) = cpu {
            // A thread that ended without an answer failed to pin itself just the same.
            let pinned = pinning
                .recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the thread ended")));
            pinned.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("--worker-cpu-affinity: cannot pin worker {index} to CPU {cpu}: {e}"),
                )
            })?;
        }
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

    /// What a connection saw on its worker: the thread's name, whether its socket works there,
    /// and the CPUs the thread may run on.
    type Report = (Option<String>, bool, Vec<usize>);
    type Reports = mpsc::UnboundedSender<Report>;

    /// Accepts one connection from a fresh listener.
    async fn accepted() -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, _client) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        accepted.unwrap().0
    }

    /// Serves a connection on `workers` that reports what it sees there, then holds until the
    /// returned sender is dropped.
    async fn hold(workers: &Workers, reports: &Reports) -> oneshot::Sender<()> {
        let (release, released) = oneshot::channel::<()>();
        let report = reports.clone();
        workers.spawn(accepted().await, move |tcp| async move {
            let thread = std::thread::current().name().map(str::to_owned);
            let affinity = cpus(&rustix::thread::sched_getaffinity(None).unwrap());
            report
                .send((thread, tcp.peer_addr().is_ok(), affinity))
                .unwrap();
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
        let workers = Workers::start(NonZeroUsize::new(2), false).unwrap();
        let (reports, mut reported) = mpsc::unbounded_channel();
        let first = hold(&workers, &reports).await;
        let (first_thread, usable, _) = reported.recv().await.unwrap();
        assert!(usable, "the socket does not work on its worker");
        assert!(
            first_thread
                .as_deref()
                .unwrap()
                .starts_with("guard-worker-")
        );
        let _second = hold(&workers, &reports).await;
        let (second_thread, ..) = reported.recv().await.unwrap();
        assert_ne!(first_thread, second_thread, "both on one worker");
        assert_eq!(open(&workers), [1, 1]);

        // The first connection ends: its worker takes the next one.
        drop(first);
        while open(&workers).iter().sum::<usize>() > 1 {
            tokio::task::yield_now().await;
        }
        let _third = hold(&workers, &reports).await;
        let (third_thread, ..) = reported.recv().await.unwrap();
        assert_eq!(
            third_thread, first_thread,
            "the third joined the busy worker"
        );
    }

    #[tokio::test]
    async fn pinned_workers_each_run_on_one_cpu_of_the_process() {
        let allowed = cpus(&rustix::thread::sched_getaffinity(None).unwrap());
        let count = allowed.len().min(2);
        let workers = Workers::start(NonZeroUsize::new(count), true).unwrap();
        let (reports, mut reported) = mpsc::unbounded_channel();
        let mut held = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..count {
            held.push(hold(&workers, &reports).await);
            let (thread, _, affinity) = reported.recv().await.unwrap();
            let index: usize = thread.unwrap()["guard-worker-".len()..].parse().unwrap();
            assert_eq!(affinity, [allowed[index]], "worker {index}");
            seen.push(index);
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..count).collect::<Vec<_>>(),
            "one connection per worker"
        );

        // Unpinned, a worker may run wherever the process may.
        let workers = Workers::start(NonZeroUsize::new(1), false).unwrap();
        let _unpinned = hold(&workers, &reports).await;
        assert_eq!(reported.recv().await.unwrap().2, allowed);
    }

    #[test]
    fn more_pinned_workers_than_cpus_are_refused_naming_both_flags() {
        let allowed = rustix::thread::sched_getaffinity(None).unwrap().count() as usize;
        let e = Workers::start(NonZeroUsize::new(allowed + 1), true).unwrap_err();
        let message = e.to_string();
        assert!(message.starts_with("--worker-cpu-affinity: "), "{message}");
        assert!(
            message.contains(&format!("set --worker-threads to at most {allowed}")),
            "{message}"
        );
    }
}
