//! Where audit events go: a JSON-lines file with rotation, and a webhook receiver taking batched
//! `EventList`s with retries, through real files and sockets. Events are synthetic here; the
//! request pipeline's events are checked field by field elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::BTreeMap;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use kubelet_guard::audit::sink::{
    AuditSettings, Auditor, DROP_REASONS, LogDestination, LogSettings, Priority, Rotation,
    WebhookSettings,
};
use kubelet_guard::audit::{
    API_VERSION, DECISION, EVENT_KIND, Event, ObjectReference, ResponseStatus, Stage, UserInfo,
};
use prometheus::{IntCounter, IntCounterVec};
use serde_json::Value;
use support::audit_log::written_to;
use support::audit_receiver::AuditReceiver;
use support::pki::Ca;
use support::with_deadline;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[tokio::test]
async fn the_file_gets_one_json_line_per_event_in_order() {
    let dir = support::temp_dir("audit-file");
    let path = dir.join("audit.log");
    let trail = Trail::start(settings(Some(log(&path, None)), None)).await;

    for n in 0..5 {
        trail.auditor.record(event(n), Priority::Authenticated);
    }
    // Written and flushed without waiting for shutdown.
    let lines = eventually("five lines in the audit log", || {
        let lines = written_to(&path);
        (lines.len() == 5).then_some(lines)
    })
    .await;
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["kind"], "Event");
        assert_eq!(line["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(line["level"], "Metadata");
        assert_eq!(line["auditID"], audit_id(n));
        assert_eq!(line["objectRef"]["subresource"], "exec");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "only the owner may read the audit log: {mode:o}"
        );
    }
    let dropped = trail.stop().await.dropped;
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn an_existing_log_is_appended_to() {
    let dir = support::temp_dir("audit-append");
    let path = dir.join("audit.log");
    let first = Trail::start(settings(Some(log(&path, None)), None)).await;
    first.auditor.record(event(0), Priority::Authenticated);
    first.stop().await;

    let second = Trail::start(settings(Some(log(&path, None)), None)).await;
    second.auditor.record(event(1), Priority::Authenticated);
    second.stop().await;

    let ids: Vec<_> = written_to(&path)
        .into_iter()
        .map(|l| l["auditID"].clone())
        .collect();
    assert_eq!(ids, [audit_id(0), audit_id(1)]);
}

#[tokio::test]
async fn rotation_keeps_exactly_maxbackup_backups() {
    let dir = support::temp_dir("audit-rotate");
    let path = dir.join("audit.log");
    // Two events per file; ten events make four backups, of which two are kept.
    let line = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
    let rotation = Rotation {
        max_bytes: NonZeroU64::new(2 * line).unwrap(),
        max_backups: NonZeroUsize::new(2),
    };
    let trail = Trail::start(settings(Some(log(&path, Some(rotation))), None)).await;
    for n in 0..10 {
        trail.auditor.record(event(n), Priority::Authenticated);
    }
    trail.stop().await;

    let mut backups: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "audit.log")
        .collect();
    backups.sort();
    assert_eq!(backups.len(), 2, "{backups:?}");
    for name in &backups {
        // lumberjack's name: audit-2026-11-23T09-20-51.123.log
        let stamp = name
            .strip_prefix("audit-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(stamp.len(), "2026-11-23T09-20-51.123".len(), "{name}");
        assert!(
            humantime::parse_rfc3339(&format!(
                "{}:{}:{}Z",
                &stamp[..13],
                &stamp[14..16],
                &stamp[17..]
            ))
            .is_ok(),
            "{name}"
        );
    }
    let ids = |path: &Path| -> Vec<Value> {
        written_to(path)
            .into_iter()
            .map(|l| l["auditID"].clone())
            .collect()
    };
    assert_eq!(ids(&dir.join(&backups[0])), [audit_id(4), audit_id(5)]);
    assert_eq!(ids(&dir.join(&backups[1])), [audit_id(6), audit_id(7)]);
    assert_eq!(ids(&path), [audit_id(8), audit_id(9)]);
}

#[tokio::test]
async fn a_full_batch_is_posted_as_an_event_list_to_the_exact_url() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    let webhook = webhook(&receiver, 3, Duration::from_secs(3600));
    let trail = Trail::start(settings(None, Some(webhook))).await;

    for n in 0..3 {
        trail.auditor.record(event(n), Priority::Authenticated);
    }
    let batches = with_deadline("a full batch", receiver.wait_for_batches(1)).await;
    assert_eq!(batches.len(), 1);
    let list = &batches[0];
    assert_eq!(list["kind"], "EventList");
    assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
    let ids: Vec<_> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["auditID"].clone())
        .collect();
    assert_eq!(ids, [audit_id(0), audit_id(1), audit_id(2)]);
    assert_eq!(list["items"][0]["kind"], "Event");

    let attempt = &receiver.attempts()[0];
    assert_eq!(attempt.method, http::Method::POST);
    assert_eq!(
        attempt.target, "/k8s-audit",
        "the server URL's path, exactly"
    );
    assert_eq!(
        attempt.authorization.as_deref(),
        Some("Bearer audit-webhook-token"),
        "the kubeconfig's credentials"
    );
    assert_eq!(attempt.content_type.as_deref(), Some("application/json"));
    trail.stop().await;
}

#[tokio::test]
async fn a_partial_batch_is_sent_once_its_wait_is_over() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    let webhook = webhook(&receiver, 400, Duration::from_millis(100));
    let trail = Trail::start(settings(None, Some(webhook))).await;

    trail.auditor.record(event(0), Priority::Authenticated);
    trail.auditor.record(event(1), Priority::Authenticated);
    let batches = with_deadline("a batch after max wait", receiver.wait_for_batches(1)).await;
    assert_eq!(batches[0]["items"].as_array().unwrap().len(), 2);

    trail.auditor.record(event(2), Priority::Authenticated);
    let batches = with_deadline("a second batch", receiver.wait_for_batches(2)).await;
    assert_eq!(batches[1]["items"][0]["auditID"], audit_id(2));
    trail.stop().await;
}

#[tokio::test]
async fn a_500_is_retried_and_the_batch_arrives_once() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    receiver.fail_next(2);
    let trail = Trail::start(settings(
        None,
        Some(webhook(&receiver, 1, Duration::from_secs(3600))),
    ))
    .await;

    trail.auditor.record(event(0), Priority::Authenticated);
    with_deadline("the batch after two 500s", receiver.wait_for_batches(1)).await;
    let statuses: Vec<_> = receiver.attempts().iter().map(|a| a.status).collect();
    assert_eq!(statuses, [500, 500, 200]);

    trail.auditor.record(event(1), Priority::Authenticated);
    let batches = with_deadline("the next batch", receiver.wait_for_batches(2)).await;
    let ids: Vec<_> = batches
        .iter()
        .map(|b| b["items"][0]["auditID"].clone())
        .collect();
    assert_eq!(ids, [audit_id(0), audit_id(1)], "each event once");
    let stopped = trail.stop().await;
    assert_eq!(stopped.webhook_failures, 0);
}

#[tokio::test]
async fn a_batch_the_receiver_refuses_is_dropped_at_once() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    // 413: the receiver will never take this body; asking again only delays the next batches.
    receiver.fail_next_with(1, 413);
    let trail = Trail::start(settings(
        None,
        Some(webhook(&receiver, 1, Duration::from_secs(3600))),
    ))
    .await;
    trail.auditor.record(event(0), Priority::Authenticated);
    eventually("the batch given up", || {
        (trail.webhook_failures.get() == 1).then_some(())
    })
    .await;
    trail.auditor.record(event(1), Priority::Authenticated);
    let batches = with_deadline("the next batch", receiver.wait_for_batches(1)).await;
    assert_eq!(batches[0]["items"][0]["auditID"], audit_id(1));
    let statuses: Vec<_> = receiver.attempts().iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [413, 200],
        "no second attempt of the refused batch"
    );
    trail.stop().await;
}

#[tokio::test]
async fn a_batch_holds_at_most_ten_mebibytes() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    let trail = Trail::start(settings(
        None,
        Some(webhook(&receiver, 400, Duration::from_secs(3600))),
    ))
    .await;
    // Three events of 4 MiB (a forwarded URI is recorded whole): two fit in a batch, not three.
    for n in 0..3 {
        let mut big = event(n);
        big.request_uri = format!("/metrics?{}", "x".repeat(4 << 20));
        trail.auditor.record(big, Priority::Authenticated);
    }
    let batches = with_deadline("the first batch", receiver.wait_for_batches(1)).await;
    assert_eq!(batches[0]["items"].as_array().unwrap().len(), 2);
    trail.stop().await;
    let batches = receiver.batches();
    assert_eq!(batches.len(), 2, "the third went at shutdown, alone");
    assert_eq!(batches[1]["items"][0]["auditID"], audit_id(2));
}

#[tokio::test]
async fn a_receiver_that_stays_down_costs_one_counted_batch() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    receiver.fail_always(true);
    let trail = Trail::start(settings(
        None,
        Some(webhook(&receiver, 1, Duration::from_secs(3600))),
    ))
    .await;

    trail.auditor.record(event(0), Priority::Authenticated);
    eventually("the batch given up", || {
        (trail.webhook_failures.get() == 1).then_some(())
    })
    .await;
    assert_eq!(
        receiver.attempts().len(),
        5,
        "five attempts, then the batch is dropped"
    );
    assert!(receiver.batches().is_empty());

    receiver.fail_always(false);
    trail.auditor.record(event(1), Priority::Authenticated);
    let batches = with_deadline("the next batch", receiver.wait_for_batches(1)).await;
    assert_eq!(batches[0]["items"][0]["auditID"], audit_id(1));
    let stopped = trail.stop().await;
    assert_eq!(stopped.webhook_failures, 1);
    let lost = |reason: &str| stopped.dropped_counter.with_label_values(&[reason]).get();
    assert_eq!(lost("webhook-failed"), 1, "the batch's one event");
    assert_eq!(lost("queue-full"), 0, "a failed batch is not a full queue");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    receiver.stall(true);
    let mut settings = settings(None, Some(webhook(&receiver, 1, Duration::from_secs(3600))));
    settings.queue_size = NonZeroUsize::MIN;
    let trail = Trail::start(settings).await;

    trail.auditor.record(event(0), Priority::Authenticated);
    // Event 0 is in flight and held by the receiver; the queue's one place is free.
    with_deadline("the first POST", receiver.wait_for_attempts(1)).await;
    trail.auditor.record(event(1), Priority::Authenticated);
    trail.auditor.record(event(2), Priority::Authenticated);
    trail.auditor.record(event(3), Priority::Authenticated);
    assert_eq!(
        total(&trail.dropped),
        2,
        "events 2 and 3 found the queue full"
    );

    receiver.stall(false);
    let batches = with_deadline(
        "the held and the queued batch",
        receiver.wait_for_batches(2),
    )
    .await;
    let ids: Vec<_> = batches
        .iter()
        .map(|b| b["items"][0]["auditID"].clone())
        .collect();
    assert_eq!(ids, [audit_id(0), audit_id(1)]);
    trail.stop().await;
}

#[tokio::test]
async fn unauthenticated_events_leave_half_the_queue_to_authenticated_ones() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    receiver.stall(true);
    let mut settings = settings(None, Some(webhook(&receiver, 1, Duration::from_secs(3600))));
    settings.queue_size = NonZeroUsize::new(4).unwrap();
    let trail = Trail::start(settings).await;
    trail.auditor.record(event(0), Priority::Authenticated);
    // Event 0 is in flight and held by the receiver: the queue's four places are free.
    with_deadline("the first POST", receiver.wait_for_attempts(1)).await;
    for n in 1..=10 {
        trail.auditor.record(event(n), Priority::Unauthenticated);
    }
    let reserved = |trail: &Trail| trail.dropped.with_label_values(&[DROP_REASONS[1]]).get();
    assert_eq!(
        reserved(&trail),
        8,
        "two unauthenticated events fill their half"
    );
    trail.auditor.record(event(11), Priority::Authenticated);
    trail.auditor.record(event(12), Priority::Authenticated);
    assert_eq!(
        total(&trail.dropped),
        8,
        "the authenticated ones still found room"
    );
    receiver.stall(false);
    let batches = with_deadline("every queued batch", receiver.wait_for_batches(5)).await;
    let ids: Vec<_> = batches
        .iter()
        .map(|b| b["items"][0]["auditID"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            audit_id(0),
            audit_id(1),
            audit_id(2),
            audit_id(11),
            audit_id(12)
        ]
    );
    trail.stop().await;
}

#[tokio::test]
async fn shutdown_sends_the_last_batch_and_flushes_the_file() {
    let ca = Ca::new("audit-ca");
    let receiver = AuditReceiver::start(&ca).await;
    let path = support::temp_dir("audit-shutdown").join("audit.log");
    let trail = Trail::start(settings(
        Some(log(&path, None)),
        Some(webhook(&receiver, 400, Duration::from_secs(3600))),
    ))
    .await;
    for n in 0..3 {
        trail.auditor.record(event(n), Priority::Authenticated);
    }
    let auditor = trail.auditor.clone();
    let stopped = trail.stop().await;

    let batches = receiver.batches();
    assert_eq!(batches.len(), 1, "the partial batch went out at shutdown");
    assert_eq!(batches[0]["items"].as_array().unwrap().len(), 3);
    assert_eq!(written_to(&path).len(), 3);
    assert_eq!(stopped.dropped, 0);

    auditor.record(event(3), Priority::Authenticated);
    assert_eq!(
        total(&stopped.dropped_counter),
        2,
        "after shutdown each sink refuses and counts"
    );
}

#[tokio::test]
async fn unusable_files_name_their_flag_at_start() {
    let missing_dir = support::temp_dir("audit-missing").join("no-such-dir/audit.log");
    let error = start(settings(Some(log(&missing_dir, None)), None))
        .await
        .err()
        .expect("a log in a missing directory");
    assert_eq!(error.flag, "--audit-log-path");
    assert_eq!(error.path, missing_dir);
    assert!(
        error.to_string().starts_with("--audit-log-path "),
        "{error}"
    );

    let missing = support::temp_dir("audit-missing").join("webhook.yaml");
    let broken = support::temp_dir("audit-broken").join("webhook.yaml");
    std::fs::write(&broken, "clusters: [unterminated").unwrap();
    for config_file in [missing, broken] {
        let webhook = WebhookSettings {
            config_file: config_file.clone(),
            batch_max_size: NonZeroUsize::MIN,
            batch_max_wait: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(1),
        };
        let error = start(settings(None, Some(webhook)))
            .await
            .err()
            .expect("an unusable kubeconfig");
        assert_eq!(error.flag, "--audit-webhook-config-file");
        assert_eq!(error.path, config_file);
    }
}

#[tokio::test]
async fn without_a_sink_the_auditor_is_disabled() {
    let trail = Trail::start(settings(None, None)).await;
    assert!(!trail.auditor.is_enabled());
    trail.auditor.record(event(0), Priority::Authenticated);
    let stopped = trail.stop().await;
    assert_eq!(stopped.dropped, 0);
}

/// Drops of every reason.
fn total(dropped: &IntCounterVec) -> u64 {
    DROP_REASONS
        .iter()
        .map(|reason| dropped.with_label_values(&[reason]).get())
        .sum()
}

/// A started auditor, its counters and its shutdown switch.
struct Trail {
    auditor: Auditor,
    writers: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    dropped: IntCounterVec,
    webhook_failures: IntCounter,
}

/// The counters after the writers finished.
struct Stopped {
    dropped: u64,
    webhook_failures: u64,
    dropped_counter: IntCounterVec,
}

impl Trail {
    async fn start(settings: AuditSettings) -> Trail {
        start(settings).await.expect("auditor starts")
    }

    /// Turns the shutdown switch and waits for the writers to drain.
    async fn stop(self) -> Stopped {
        self.shutdown.send_replace(true);
        with_deadline("the audit writers drain", self.writers)
            .await
            .unwrap();
        Stopped {
            dropped: total(&self.dropped),
            webhook_failures: self.webhook_failures.get(),
            dropped_counter: self.dropped,
        }
    }
}

async fn start(settings: AuditSettings) -> Result<Trail, kubelet_guard::audit::sink::AuditError> {
    support::init();
    let dropped =
        IntCounterVec::new(prometheus::Opts::new("dropped", "dropped"), &["reason"]).unwrap();
    let webhook_failures = IntCounter::new("failures", "failures").unwrap();
    let (shutdown, stop) = watch::channel(false);
    let (auditor, writers) =
        Auditor::start(&settings, dropped.clone(), webhook_failures.clone(), stop).await?;
    Ok(Trail {
        auditor,
        writers,
        shutdown,
        dropped,
        webhook_failures,
    })
}

fn settings(log: Option<LogSettings>, webhook: Option<WebhookSettings>) -> AuditSettings {
    AuditSettings {
        log,
        webhook,
        queue_size: NonZeroUsize::new(100).unwrap(),
    }
}

fn log(path: &Path, rotation: Option<Rotation>) -> LogSettings {
    LogSettings {
        destination: LogDestination::File(path.to_owned()),
        rotation,
    }
}

/// The receiver's webhook with a 10 ms initial backoff.
fn webhook(receiver: &AuditReceiver, batch: usize, wait: Duration) -> WebhookSettings {
    WebhookSettings {
        config_file: receiver.write_kubeconfig(),
        batch_max_size: NonZeroUsize::new(batch).unwrap(),
        batch_max_wait: wait,
        initial_backoff: Duration::from_millis(10),
    }
}

/// Polls `check` until it returns a value, within the test deadline.
async fn eventually<T>(what: &str, check: impl Fn() -> Option<T>) -> T {
    with_deadline(what, async {
        loop {
            if let Some(value) = check() {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn audit_id(n: usize) -> Value {
    Value::from(format!("00000000-0000-4000-8000-{n:012}"))
}

/// A complete Metadata-level event for an exec call, numbered by its `auditID`.
fn event(n: usize) -> Event {
    Event {
        kind: EVENT_KIND,
        api_version: API_VERSION,
        level: "Metadata",
        audit_id: format!("00000000-0000-4000-8000-{n:012}"),
        stage: Stage::ResponseComplete,
        request_uri: "/exec/default/web/app?command=sh&stdin=true&tty=true".into(),
        verb: "create".into(),
        user: UserInfo {
            username: "alice".into(),
            uid: "uid-alice".into(),
            groups: vec!["system:authenticated".into()],
            extra: BTreeMap::new(),
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
