//! The audit writer: the [`Auditor`] the request pipeline hands each event to, built from
//! [`AuditSettings`] (which `config::audit` validates from kube-apiserver's audit flags).
//!
//! Each configured sink (the log of `file`, the webhook of `webhook`) has its own bounded queue and
//! its own background task, so a slow receiver never delays the file and neither ever delays a
//! request: [`Auditor::record`] only `try_send`s. An event a full queue cannot take is counted in
//! `kubelet_guard_audit_events_dropped_total{reason}` and reported by a warning at most once a
//! second.
//!
//! Each queue holds at most `--audit-queue-size` events and [`QUEUE_BYTES`] of them (by
//! [`Event::weight`]): a forwarded request's URI is recorded whole, up to the request head limit,
//! so 10,000 of them could otherwise hold gigabytes while a webhook receiver is down.
//!
//! Half of each queue, in events and in bytes, is kept for the events of authenticated requests
//! (allowed, forbidden, or undecided): a flood of unauthenticated or malformed requests (401, 400,
//! 405) fills the other half and then loses its own events (`reason="reserved-for-authenticated"`),
//! never an exec's.
//!
//! Log lines name flags, files, counts and statuses, never an event's contents: an event carries
//! the exec command line and the caller's identity.
//!
//! Flags and semantics follow kube-apiserver's `--audit-log-*` and `--audit-webhook-*` options
//! (`k8s.io/apiserver/pkg/server/options/audit.go`); the defaults are kubelet-guard's.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Event;
use super::file::LogSink;
use super::webhook::WebhookSink;

/// The validated audit configuration. No sink configured means no audit trail.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The log sink (`--audit-log-path`).
    pub log: Option<LogSettings>,
    /// The webhook sink (`--audit-webhook-config-file`).
    pub webhook: Option<WebhookSettings>,
    /// Capacity of each sink's queue (`--audit-queue-size`).
    pub queue_size: NonZeroUsize,
}

/// Where and how the audit log is written.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// A file or standard output.
    pub destination: LogDestination,
    /// When to rotate the file; `None` never rotates. Ignored for standard output.
    pub rotation: Option<Rotation>,
}

/// The audit log's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDestination {
    /// `--audit-log-path=-`.
    Stdout,
    /// A file, appended to; its name is valid UTF-8 (backup names are built from it).
    File(PathBuf),
}

/// When the audit log file is rotated and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would take the file past this size (`--audit-log-maxsize` MiB).
    pub max_bytes: NonZeroU64,
    /// Backups kept, oldest deleted first; `None` keeps all (`--audit-log-maxbackup=0`).
    pub max_backups: Option<NonZeroUsize>,
}

/// The webhook receiver and its batching.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The kubeconfig naming the receiver.
    pub config_file: PathBuf,
    /// Most events per batch.
    pub batch_max_size: NonZeroUsize,
    /// Longest the first event of a batch waits before the batch is sent; never zero.
    pub batch_max_wait: Duration,
    /// Wait before the first retry; never zero.
    pub initial_backoff: Duration,
}

/// A sink could not be opened at start-up; names the flag and the file.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {message}", path.display())]
pub struct AuditError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Hands events to the audit sinks without ever waiting. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct Auditor {
    /// `None` when no sink is configured: recording is then a single branch.
    queues: Option<Arc<Queues>>,
}

/// Whose request an event records, which decides how much of a queue it may fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A caller that authenticated, or whose verified certificate names it: the whole queue.
    Authenticated,
    /// A request from nobody the guard could name: half the queue.
    Unauthenticated,
}

/// The `reason` labels of `kubelet_guard_audit_events_dropped_total`.
pub const DROP_REASONS: [&str; 4] = [
    "queue-full",
    "reserved-for-authenticated",
    "write-error",
    "webhook-failed",
];

/// Most bytes of events (by [`Event::weight`]) one sink's queue holds.
pub const QUEUE_BYTES: usize = 64 << 20;

/// The sending side of every sink's queue, and what recording a dropped event needs.
struct Queues {
    sinks: Vec<Sending>,
    /// Free slots an unauthenticated request's event must leave in a queue.
    reserved: usize,
    /// Most bytes of events one queue holds.
    bytes: usize,
    dropped: IntCounterVec,
    report: Throttle,
}

/// Lets an action through at most once per period, counting what it held back.
pub(super) struct Throttle {
    origin: Instant,
    period: Duration,
    /// Milliseconds after `origin` before which the action stays held back.
    next: AtomicU64,
    held: AtomicU64,
}

/// Longest the final webhook batches may take once shutdown is asked for.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl AuditSettings {
    /// Whether any sink is configured.
    pub fn is_enabled(&self) -> bool {
        self.log.is_some() || self.webhook.is_some()
    }
}

impl Auditor {
    /// An auditor with no sink: [`Auditor::record`] drops every event at no cost.
    pub fn disabled() -> Self {
        Self { queues: None }
    }

    /// Opens every configured sink (the log file; the webhook kubeconfig) and starts one writer
    /// task per sink. The returned handle finishes once every writer has drained its queue after
    /// `shutdown` turns true (or its sender is dropped, or every `Auditor` clone is).
    ///
    /// `dropped` counts events a full queue refused, a file could not take, or a webhook batch
    /// abandoned held; `webhook_failures` counts those batches.
    pub async fn start(
        settings: &AuditSettings,
        dropped: IntCounterVec,
        webhook_failures: IntCounter,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Auditor, JoinHandle<()>), AuditError> {
        // Open everything before spawning anything, so a bad file leaves no task behind.
        let log = settings.log.as_ref().map(LogSink::open).transpose()?;
        let webhook = match &settings.webhook {
            Some(webhook) => Some(
                WebhookSink::connect(
                    webhook,
                    webhook_failures,
                    dropped.with_label_values(&["webhook-failed"]),
                )
                .await?,
            ),
            None => None,
        };
        if log.is_none() && webhook.is_none() {
            return Ok((Auditor::disabled(), tokio::spawn(async {})));
        }
        let capacity = settings.queue_size.get();
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        if let Some(log) = log {
            let (tx, rx) = queue(capacity);
            sinks.push(tx);
            let lost = dropped.with_label_values(&["write-error"]);
            tasks.push(tokio::spawn(super::file::run(
                log,
                rx,
                shutdown.clone(),
                lost,
            )));
        }
        if let Some(webhook) = webhook {
            let (tx, rx) = queue(capacity);
            sinks.push(tx);
            tasks.push(tokio::spawn(super::webhook::run(webhook, rx, shutdown)));
        }
        let writers = tokio::spawn(supervise(tasks));
        let queues = Queues {
            sinks,
            reserved: capacity / 2,
            bytes: QUEUE_BYTES,
            dropped,
            report: Throttle::new(Duration::from_secs(1)),
        };
        Ok((
            Auditor {
                queues: Some(Arc::new(queues)),
            },
            writers,
        ))
    }

    /// Whether any sink takes events; when not, the caller may skip building them.
    pub fn is_enabled(&self) -> bool {
        self.queues.is_some()
    }

    /// Queues `event` for every sink without waiting; a sink whose queue is full, in events or
    /// bytes (or whose writer has stopped), or has only the authenticated share left for an
    /// `Unauthenticated` event, loses it, and the loss is counted.
    pub fn record(&self, event: Event, priority: Priority) {
        let Some(queues) = &self.queues else {
            return;
        };
        queues.record(Arc::new(event), priority);
    }
}

/// Waits for every sink's writer. The first to fail ends the wait, and a panic is raised again,
/// so the guard sees its audit trail broken (`Running::failed`) and stops, rather than go on while
/// a sink's queue fills and its events are dropped.
async fn supervise(writers: Vec<JoinHandle<()>>) {
    if let Err(e) = futures_util::future::try_join_all(writers).await {
        tracing::error!(error = %e, "an audit writer failed");
        if let Ok(panic) = e.try_into_panic() {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Queues {
    /// See [`Auditor::record`].
    fn record(&self, event: Arc<Event>, priority: Priority) {
        let weight = event.weight();
        let unauthenticated = priority == Priority::Unauthenticated;
        // The authenticated half of the bytes too: an unauthenticated event can be as big as an
        // exec's (a classified target's annotations), so counting events alone would not keep it.
        let budget = match unauthenticated {
            true => self.bytes / 2,
            false => self.bytes,
        };
        for sink in &self.sinks {
            let reason = if unauthenticated && sink.events.capacity() <= self.reserved {
                DROP_REASONS[1]
            } else if !sink.hold(weight, budget) {
                DROP_REASONS[usize::from(unauthenticated)]
            } else if sink
                .events
                .try_send(Queued {
                    event: Arc::clone(&event),
                    weight,
                })
                .is_err()
            {
                sink.held.fetch_sub(weight, Ordering::AcqRel);
                DROP_REASONS[0]
            } else {
                continue;
            };
            self.dropped.with_label_values(&[reason]).inc();
            if let Some(held) = self.report.allow(Instant::now()) {
                tracing::warn!(
                    dropped_since_last_report = held + 1,
                    reason,
                    "audit queue full or writer stopped: events dropped"
                );
            }
        }
    }
}

/// An event in a queue, with the weight it was counted at.
pub(crate) struct Queued {
    pub(crate) event: Arc<Event>,
    pub(crate) weight: usize,
}

/// The sending side of one sink's queue.
struct Sending {
    events: mpsc::Sender<Queued>,
    /// The weight of the events queued.
    held: Arc<AtomicUsize>,
}

impl Sending {
    /// Counts `weight` more bytes queued, unless that would pass `budget`.
    fn hold(&self, weight: usize, budget: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(weight).filter(|total| *total <= budget)
            })
            .is_ok()
    }
}

/// One sink's queue, as its writer reads it: taking an event gives its bytes back.
pub(crate) struct Queue {
    events: mpsc::Receiver<Queued>,
    held: Arc<AtomicUsize>,
}

/// A queue of at most `capacity` events.
fn queue(capacity: usize) -> (Sending, Queue) {
    let (tx, rx) = mpsc::channel(capacity);
    let held = Arc::new(AtomicUsize::new(0));
    (
        Sending {
            events: tx,
            held: Arc::clone(&held),
        },
        Queue { events: rx, held },
    )
}

impl Queue {
    /// The next event; `None` once the queue is closed and empty.
    pub(crate) async fn recv(&mut self) -> Option<Queued> {
        let queued = self.events.recv().await?;
        Some(self.taken(queued))
    }

    /// The next event if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Queued> {
        let queued = self.events.try_recv().ok()?;
        Some(self.taken(queued))
    }

    /// Refuses every event from now on; those queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.events.close();
    }

    fn taken(&self, queued: Queued) -> Queued {
        self.held.fetch_sub(queued.weight, Ordering::AcqRel);
        queued
    }
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sinks = self.queues.as_ref().map_or(0, |q| q.sinks.len());
        f.debug_struct("Auditor").field("sinks", &sinks).finish()
    }
}

impl Throttle {
    /// A throttle whose first action may happen at once.
    pub(super) fn new(period: Duration) -> Self {
        Self {
            origin: Instant::now(),
            period,
            next: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when the action may happen at `now` (`n` were held back since the last one),
    /// `None` when it is held back.
    pub(super) fn allow(&self, now: Instant) -> Option<u64> {
        let now_ms = millis(now.saturating_duration_since(self.origin));
        let next = self.next.load(Ordering::Relaxed);
        let due = now_ms >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now_ms.saturating_add(millis(self.period)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A complete synthetic event, numbered by its `auditID`.
    pub(crate) fn event(n: usize) -> Event {
        use std::collections::BTreeMap;

        use crate::audit::{
            API_VERSION, DECISION, EVENT_KIND, ObjectReference, ResponseStatus, Stage, UserInfo,
        };
        Event {
            kind: EVENT_KIND,
            api_version: API_VERSION,
            level: "Metadata",
            audit_id: format!("00000000-0000-4000-8000-{n:012}"),
            stage: Stage::ResponseComplete,
            request_uri: "/exec/default/web/app?command=sh&stdin=true".into(),
            verb: "create".into(),
            user: UserInfo {
                username: "alice".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            },
            source_ips: vec!["10.0.0.7".into()],
            user_agent: Some("kubectl/v1.36.0".into()),
            object_ref: Some(ObjectReference {
                resource: "nodes",
                name: "node-a".into(),
                subresource: "exec".into(),
                api_version: "v1",
            }),
            response_status: ResponseStatus {
                metadata: BTreeMap::new(),
                code: 101,
                status: None,
                reason: None,
                message: None,
            },
            request_received_timestamp: "2026-11-23T09:20:51.123456Z".into(),
            stage_timestamp: "2026-11-23T09:20:51.223456Z".into(),
            annotations: BTreeMap::from([(DECISION, "allow".to_owned())]),
        }
    }

    #[test]
    fn a_disabled_auditor_takes_events_and_keeps_none() {
        let auditor = Auditor::disabled();
        assert!(!auditor.is_enabled());
        auditor.record(event(1), Priority::Authenticated);
    }

    /// One sink of 100 events (50 kept for authenticated requests) and `events` of `big`'s weight,
    /// its queue, and the drop counter.
    fn one_sink(big: &Event, events: usize) -> (Queues, Queue, IntCounterVec) {
        let dropped = IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap();
        let (sending, queue) = queue(100);
        let queues = Queues {
            sinks: vec![sending],
            reserved: 50,
            bytes: events * big.weight(),
            dropped: dropped.clone(),
            report: Throttle::new(Duration::from_secs(1)),
        };
        (queues, queue, dropped)
    }

    #[test]
    fn a_queue_holds_events_up_to_its_byte_budget_and_frees_what_is_taken() {
        let mut big = event(1);
        big.request_uri = format!("/metrics?{}", "x".repeat(100_000));
        let (queues, mut queue, dropped) = one_sink(&big, 3);
        let big = Arc::new(big);
        for _ in 0..5 {
            queues.record(Arc::clone(&big), Priority::Authenticated);
        }
        let full = dropped.with_label_values(&["queue-full"]);
        assert_eq!(
            full.get(),
            2,
            "three fit in the budget, though 100 events would"
        );
        assert!(queue.try_recv().is_some());
        queues.record(Arc::clone(&big), Priority::Authenticated);
        assert_eq!(full.get(), 2, "taking one made room for one");
        queues.record(Arc::clone(&big), Priority::Authenticated);
        assert_eq!(full.get(), 3);
        let mut left = 0;
        while queue.try_recv().is_some() {
            left += 1;
        }
        assert_eq!(left, 3);
        assert_eq!(queues.sinks[0].held.load(Ordering::Acquire), 0);
    }

    #[test]
    fn unauthenticated_events_fill_half_the_bytes_at_most() {
        let mut big = event(1);
        big.request_uri = format!("/exec/{}", "x".repeat(20_000));
        let (queues, mut queue, dropped) = one_sink(&big, 4);
        let big = Arc::new(big);
        for _ in 0..10 {
            queues.record(Arc::clone(&big), Priority::Unauthenticated);
        }
        let reserved = dropped.with_label_values(&["reserved-for-authenticated"]);
        assert_eq!(
            reserved.get(),
            8,
            "two fill half the bytes, though 50 events would"
        );
        for _ in 0..3 {
            queues.record(Arc::clone(&big), Priority::Authenticated);
        }
        assert_eq!(dropped.with_label_values(&["queue-full"]).get(), 1);
        let mut held = 0;
        while queue.try_recv().is_some() {
            held += 1;
        }
        assert_eq!(held, 4, "two unauthenticated, then two authenticated");
    }

    #[test]
    fn the_drop_report_fires_once_per_period_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let t0 = throttle.origin;
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0 + Duration::from_millis(10)), None);
        assert_eq!(throttle.allow(t0 + Duration::from_millis(999)), None);
        assert_eq!(throttle.allow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(throttle.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(throttle.allow(t0 + Duration::from_secs(5)), Some(1));
    }

    #[tokio::test]
    async fn a_writer_that_panics_fails_the_audit_writer_at_once() {
        let quiet = tokio::spawn(std::future::pending::<()>());
        let broken = tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("a bug in a sink");
        });
        let supervised = tokio::spawn(supervise(vec![quiet, broken]));
        let ended = tokio::time::timeout(Duration::from_secs(5), supervised)
            .await
            .expect("the first writer to fail ends the wait");
        assert!(ended.unwrap_err().is_panic());
    }
}
