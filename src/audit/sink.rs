//! The audit writer: kube-apiserver's audit flags validated into [`AuditSettings`], and the
//! [`Auditor`] the request pipeline hands each event to.
//!
//! Each configured sink (the log of `file`, the webhook of `webhook`) has its own bounded queue and
//! its own background task, so a slow receiver never delays the file and neither ever delays a
//! request: [`Auditor::record`] only `try_send`s. An event a full queue cannot take is counted in
//! `kubelet_guard_audit_events_dropped_total{reason}` and reported by a warning at most once a
//! second.
//!
//! Half of each queue is kept for the events of authenticated requests (allowed, forbidden, or
//! undecided): a flood of unauthenticated or malformed requests (401, 400, 405) fills the other
//! half and then loses its own events (`reason="reserved-for-authenticated"`), never an exec's.
//!
//! Log lines name flags, files, counts and statuses, never an event's contents: an event carries
//! the exec command line and the caller's identity.
//!
//! Flags and semantics follow kube-apiserver's `--audit-log-*` and `--audit-webhook-*` options
//! (`k8s.io/apiserver/pkg/server/options/audit.go`); the defaults are kubelet-guard's.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Event;
use super::file::LogSink;
use super::webhook::WebhookSink;
use crate::config::ConfigError;

/// The audit flags of `kubelet-guard serve`, named as kube-apiserver names them.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Audit")]
pub struct AuditArgs {
    /// Audit log file (`-` for stdout); without it no audit log is written.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_PATH")]
    pub audit_log_path: Option<PathBuf>,
    /// Size in MiB at which the audit log is rotated (0: never rotate).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_MAXSIZE", default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit log files kept beside the log (0: keep all, as kube-apiserver).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_MAXBACKUP", default_value_t = 10)]
    pub audit_log_maxbackup: usize,
    /// Kubeconfig naming the audit webhook receiver (its cluster's `server` URL, CA and credentials).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_CONFIG_FILE")]
    pub audit_webhook_config_file: Option<PathBuf>,
    /// Most events in one webhook batch.
    #[arg(
        long,
        env = "KUBELET_GUARD_AUDIT_WEBHOOK_BATCH_MAX_SIZE",
        default_value_t = 400
    )]
    pub audit_webhook_batch_max_size: usize,
    /// Longest an event waits for its webhook batch to fill before the batch is sent anyway.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_BATCH_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub audit_webhook_batch_max_wait: Duration,
    /// Wait before the first retry of a failed webhook batch; each later retry waits 1.5 times longer.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_INITIAL_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    pub audit_webhook_initial_backoff: Duration,
    /// Events each sink's queue holds before new events are dropped (and counted).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_QUEUE_SIZE", default_value_t = 10000)]
    pub audit_queue_size: usize,
}

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
    /// A caller that authenticated: the whole queue.
    Authenticated,
    /// A request refused before anyone was authenticated: half the queue.
    Unauthenticated,
}

/// The `reason` labels of `kubelet_guard_audit_events_dropped_total`.
pub const DROP_REASONS: [&str; 2] = ["queue-full", "reserved-for-authenticated"];

/// The sending side of every sink's queue, and what recording a dropped event needs.
struct Queues {
    sinks: Vec<mpsc::Sender<Arc<Event>>>,
    /// Free slots an unauthenticated request's event must leave in a queue.
    reserved: usize,
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

/// The flag names, for errors.
const LOG_PATH: &str = "--audit-log-path";
const LOG_MAXSIZE: &str = "--audit-log-maxsize";
const WEBHOOK_CONFIG: &str = "--audit-webhook-config-file";
const BATCH_MAX_SIZE: &str = "--audit-webhook-batch-max-size";
const BATCH_MAX_WAIT: &str = "--audit-webhook-batch-max-wait";
const INITIAL_BACKOFF: &str = "--audit-webhook-initial-backoff";
const QUEUE_SIZE: &str = "--audit-queue-size";

impl AuditArgs {
    /// Checks the flags without touching a file: every error names its flag.
    pub fn validate(self) -> Result<AuditSettings, ConfigError> {
        let queue_size = positive(self.audit_queue_size, QUEUE_SIZE)?;
        let log = self
            .audit_log_path
            .map(|path| -> Result<LogSettings, ConfigError> {
                Ok(LogSettings {
                    destination: destination(path)?,
                    rotation: rotation(self.audit_log_maxsize, self.audit_log_maxbackup)?,
                })
            })
            .transpose()?;
        let webhook = self
            .audit_webhook_config_file
            .map(|config_file| -> Result<WebhookSettings, ConfigError> {
                if config_file.as_os_str().is_empty() {
                    return Err(invalid(WEBHOOK_CONFIG, "the path is empty".into()));
                }
                Ok(WebhookSettings {
                    config_file,
                    batch_max_size: positive(self.audit_webhook_batch_max_size, BATCH_MAX_SIZE)?,
                    batch_max_wait: nonzero(self.audit_webhook_batch_max_wait, BATCH_MAX_WAIT)?,
                    initial_backoff: nonzero(self.audit_webhook_initial_backoff, INITIAL_BACKOFF)?,
                })
            })
            .transpose()?;
        Ok(AuditSettings {
            log,
            webhook,
            queue_size,
        })
    }
}

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
    /// `dropped` counts events a full queue refused; `webhook_failures` counts webhook batches
    /// abandoned after every retry.
    pub async fn start(
        settings: &AuditSettings,
        dropped: IntCounterVec,
        webhook_failures: IntCounter,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Auditor, JoinHandle<()>), AuditError> {
        // Open everything before spawning anything, so a bad file leaves no task behind.
        let log = settings.log.as_ref().map(LogSink::open).transpose()?;
        let webhook = match &settings.webhook {
            Some(webhook) => Some(WebhookSink::connect(webhook, webhook_failures).await?),
            None => None,
        };
        if log.is_none() && webhook.is_none() {
            return Ok((Auditor::disabled(), tokio::spawn(async {})));
        }
        let capacity = settings.queue_size.get();
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        if let Some(log) = log {
            let (tx, rx) = mpsc::channel(capacity);
            sinks.push(tx);
            tasks.push(tokio::spawn(super::file::run(log, rx, shutdown.clone())));
        }
        if let Some(webhook) = webhook {
            let (tx, rx) = mpsc::channel(capacity);
            sinks.push(tx);
            tasks.push(tokio::spawn(super::webhook::run(webhook, rx, shutdown)));
        }
        let writers = tokio::spawn(async move {
            for task in tasks {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "an audit writer failed");
                }
            }
        });
        let queues = Queues {
            sinks,
            reserved: capacity / 2,
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

    /// Queues `event` for every sink without waiting; a sink whose queue is full (or whose
    /// writer has stopped), or has only the authenticated share left for an `Unauthenticated`
    /// event, loses it, and the loss is counted.
    pub fn record(&self, event: Event, priority: Priority) {
        let Some(queues) = &self.queues else {
            return;
        };
        let event = Arc::new(event);
        for sink in &queues.sinks {
            let reason =
                if priority == Priority::Unauthenticated && sink.capacity() <= queues.reserved {
                    DROP_REASONS[1]
                } else if sink.try_send(Arc::clone(&event)).is_err() {
                    DROP_REASONS[0]
                } else {
                    continue;
                };
            queues.dropped.with_label_values(&[reason]).inc();
            if let Some(held) = queues.report.allow(Instant::now()) {
                tracing::warn!(
                    dropped_since_last_report = held + 1,
                    reason,
                    "audit queue full or writer stopped: events dropped"
                );
            }
        }
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

/// `--audit-log-path`: `-` or a file whose name is UTF-8.
fn destination(path: PathBuf) -> Result<LogDestination, ConfigError> {
    if path.as_os_str() == "-" {
        return Ok(LogDestination::Stdout);
    }
    match path.file_name().map(|name| name.to_str()) {
        None => Err(invalid(
            LOG_PATH,
            format!("{} does not name a file", path.display()),
        )),
        Some(None) => Err(invalid(
            LOG_PATH,
            format!("{} does not have a UTF-8 file name", path.display()),
        )),
        Some(Some(_)) => Ok(LogDestination::File(path)),
    }
}

/// `--audit-log-maxsize` (MiB, 0 never) and `--audit-log-maxbackup` (0 keeps all).
fn rotation(max_mib: u64, max_backups: usize) -> Result<Option<Rotation>, ConfigError> {
    let Some(max_mib) = NonZeroU64::new(max_mib) else {
        return Ok(None);
    };
    let max_bytes = max_mib.get().checked_mul(1 << 20).and_then(NonZeroU64::new);
    let Some(max_bytes) = max_bytes else {
        return Err(invalid(
            LOG_MAXSIZE,
            format!("{max_mib} MiB does not fit in 64 bits of bytes"),
        ));
    };
    Ok(Some(Rotation {
        max_bytes,
        max_backups: NonZeroUsize::new(max_backups),
    }))
}

fn positive(value: usize, flag: &'static str) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(flag, "must be at least 1".into()))
}

fn nonzero(value: Duration, flag: &'static str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(invalid(flag, "must be longer than zero".into()));
    }
    Ok(value)
}

fn invalid(flag: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { flag, message }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditArgs,
    }

    fn parse(args: &[&str]) -> Result<AuditSettings, ConfigError> {
        let argv = std::iter::once("kubelet-guard").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().audit.validate()
    }

    fn flag_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { flag, .. } | ConfigError::Missing { flag, .. } => flag,
        }
    }

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
    fn no_sink_flag_means_no_trail() {
        let settings = parse(&[]).unwrap();
        assert!(!settings.is_enabled());
        assert_eq!(settings.queue_size.get(), 10_000);
    }

    #[test]
    fn defaults_follow_the_flags_documentation() {
        let settings = parse(&[
            "--audit-log-path=/var/log/kubelet-guard/audit.log",
            "--audit-webhook-config-file=/etc/kubelet-guard/audit-webhook.yaml",
        ])
        .unwrap();
        let log = settings.log.unwrap();
        assert_eq!(
            log.destination,
            LogDestination::File("/var/log/kubelet-guard/audit.log".into())
        );
        assert_eq!(
            log.rotation,
            Some(Rotation {
                max_bytes: NonZeroU64::new(100 * 1024 * 1024).unwrap(),
                max_backups: NonZeroUsize::new(10),
            })
        );
        let webhook = settings.webhook.unwrap();
        assert_eq!(webhook.batch_max_size.get(), 400);
        assert_eq!(webhook.batch_max_wait, Duration::from_secs(30));
        assert_eq!(webhook.initial_backoff, Duration::from_secs(10));
    }

    #[test]
    fn dash_is_stdout_and_zeroes_mean_never_and_all() {
        let settings = parse(&[
            "--audit-log-path=-",
            "--audit-log-maxsize=0",
            "--audit-webhook-batch-max-wait=500ms",
        ])
        .unwrap();
        let log = settings.log.unwrap();
        assert_eq!(log.destination, LogDestination::Stdout);
        assert_eq!(log.rotation, None);

        let keep_all = parse(&["--audit-log-path=a.log", "--audit-log-maxbackup=0"]).unwrap();
        let rotation = keep_all.log.unwrap().rotation.unwrap();
        assert_eq!(rotation.max_backups, None);
        assert_eq!(rotation.max_bytes.get(), 100 << 20);
    }

    #[test]
    fn humantime_durations_parse() {
        let settings = parse(&[
            "--audit-webhook-config-file=w.yaml",
            "--audit-webhook-batch-max-wait=500ms",
            "--audit-webhook-initial-backoff=1m 30s",
        ])
        .unwrap();
        let webhook = settings.webhook.unwrap();
        assert_eq!(webhook.batch_max_wait, Duration::from_millis(500));
        assert_eq!(webhook.initial_backoff, Duration::from_secs(90));
    }

    #[test]
    fn each_bad_value_names_its_flag() {
        for (args, flag) in [
            (&["--audit-queue-size=0"][..], QUEUE_SIZE),
            (&["--audit-log-path=/"][..], LOG_PATH),
            (&["--audit-log-path=logs/.."][..], LOG_PATH),
            (
                &[
                    "--audit-log-path=a.log",
                    "--audit-log-maxsize=18446744073709551615",
                ][..],
                LOG_MAXSIZE,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-batch-max-size=0",
                ][..],
                BATCH_MAX_SIZE,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-batch-max-wait=0s",
                ][..],
                BATCH_MAX_WAIT,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-initial-backoff=0",
                ][..],
                INITIAL_BACKOFF,
            ),
        ] {
            let e = parse(args).expect_err("invalid");
            assert!(e.to_string().starts_with(flag), "{args:?}: {e}");
            assert_eq!(flag_of(e), flag, "{args:?}");
        }
    }

    #[test]
    fn a_disabled_auditor_takes_events_and_keeps_none() {
        let auditor = Auditor::disabled();
        assert!(!auditor.is_enabled());
        auditor.record(event(1), Priority::Authenticated);
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
}
