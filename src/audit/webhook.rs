//! The audit webhook sink, as kube-apiserver's batching webhook backend
//! (`k8s.io/apiserver/plugin/pkg/audit/webhook`, `plugin/pkg/audit/buffered`): events are collected
//! into an `audit.k8s.io/v1` `EventList` of at most `--audit-webhook-batch-max-size` items and
//! [`BATCH_BYTES`] of JSON (as kube-apiserver's `--audit-webhook-truncate-max-batch-size`), sent when full or when its first event has waited
//! `--audit-webhook-batch-max-wait`, and POSTed as JSON to the `server` URL of the current context
//! of `--audit-webhook-config-file`.
//!
//! The kubeconfig is loaded by kube-rs, so CA files and data, client certificates, tokens, token
//! files and exec plugins work as in kube-apiserver, over the process's one (ring) TLS provider.
//! kube's client joins each request path *after* the cluster URL's path (`/k8s-audit` + `/`
//! would give `/k8s-audit/`, which Falco's receiver does not serve), so the client is given the
//! URL's origin only and every POST targets the URL's path and query exactly.
//!
//! A transport failure, a 429 or a 5xx answer is retried after `--audit-webhook-initial-backoff`,
//! each later wait 1.5 times the last (kube-apiserver's factor), for at most [`MAX_ATTEMPTS`]
//! attempts; then the batch is dropped. Any other answer (a 400, or a 413 for a body the receiver
//! will never take) drops it at once, as kube-apiserver's webhook does not retry it either. A
//! dropped batch is counted in `kubelet_guard_audit_webhook_failures_total`, its events in
//! `kubelet_guard_audit_events_dropped_total{reason="webhook-failed"}`, and logged.
//! Batches go out one at a time; while one is retried new events wait in the queue, whose overflow
//! the `Auditor` counts. On shutdown the batch in hand and everything queued are sent within
//! [`SHUTDOWN_GRACE`], retries included. Logs name the kubeconfig file, never the URL (it may
//! carry credentials) nor an event's contents.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{PathAndQuery, Uri};
use http_body_util::{BodyExt, Limited};
use kube::config::{KubeConfigOptions, Kubeconfig};
use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::time::Instant;

use super::sink::{AuditError, Queue, Queued, SHUTDOWN_GRACE, WebhookSettings};
use super::{API_VERSION, EVENT_LIST_KIND};
use crate::shutdown::stopped;

/// The receiver, its batching and its retry policy.
pub(crate) struct WebhookSink {
    client: kube::Client,
    /// The `server` URL's path and query, POSTed to exactly.
    endpoint: PathAndQuery,
    config_file: PathBuf,
    batch_max_size: NonZeroUsize,
    batch_max_wait: Duration,
    initial_backoff: Duration,
    failures: IntCounter,
    /// The events of abandoned batches.
    lost: IntCounter,
}

/// Most attempts per batch, the first included (kube-apiserver's backoff has 5 steps).
pub(crate) const MAX_ATTEMPTS: u32 = 5;

/// Longest one POST may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait between two attempts, whatever the initial backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Most bytes of a receiver's answer read (and discarded) so its connection can be reused.
const ANSWER_LIMIT: usize = 64 * 1024;

const FLAG: &str = "--audit-webhook-config-file";

/// Most bytes of events, as JSON, in one batch: kube-apiserver's default
/// `--audit-webhook-truncate-max-batch-size`, so a receiver that takes its batches takes ours.
pub(crate) const BATCH_BYTES: usize = 10 << 20;

impl WebhookSink {
    /// Loads the kubeconfig and builds the client; nothing is sent yet.
    pub(crate) async fn connect(
        settings: &WebhookSettings,
        failures: IntCounter,
        lost: IntCounter,
    ) -> Result<Self, AuditError> {
        let fail = |message: String| AuditError {
            flag: FLAG,
            path: settings.config_file.clone(),
            message,
        };
        let kubeconfig =
            Kubeconfig::read_from(&settings.config_file).map_err(|e| fail(e.to_string()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| fail(e.to_string()))?;
        let (origin, endpoint) = split(&config.cluster_url).map_err(fail)?;
        config.cluster_url = origin;
        // Retries are ours, with the batch in hand; kube's would repeat them.
        config.default_retry = false;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let client = kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            client,
            endpoint,
            config_file: settings.config_file.clone(),
            batch_max_size: settings.batch_max_size,
            batch_max_wait: settings.batch_max_wait,
            initial_backoff: settings.initial_backoff,
            failures,
            lost,
        })
    }

    /// Sends one encoded batch, retrying with backoff; a batch that cannot be delivered (all
    /// attempts failed, or `deadline` passed) is counted and logged.
    async fn deliver(&self, events: usize, body: Bytes, deadline: Option<Instant>) {
        let mut backoff = self.initial_backoff.min(MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            let (error, again) = match self.post(body.clone(), deadline).await {
                Ok(()) => return,
                Err(failed) => failed,
            };
            let out_of_time = deadline.is_some_and(|d| Instant::now() + backoff >= d);
            if !again || attempt >= MAX_ATTEMPTS || out_of_time {
                self.give_up(events, attempt, &error);
                return;
            }
            tracing::warn!(
                config = %self.config_file.display(),
                attempt,
                %error,
                retry_in = ?backoff,
                "audit webhook batch not accepted; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff);
            attempt += 1;
        }
    }

    /// One POST of `body`; `Err` says why the receiver did not take it, and whether it may if
    /// asked again.
    async fn post(&self, body: Bytes, deadline: Option<Instant>) -> Result<(), (String, bool)> {
        let request = http::Request::post(self.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(kube::client::Body::from(body))
            .map_err(|e| (e.to_string(), false))?;
        let limit = Instant::now() + ATTEMPT_TIMEOUT;
        let limit = deadline.map_or(limit, |d| d.min(limit));
        let response = match tokio::time::timeout_at(limit, self.client.send(request)).await {
            Err(_) => return Err(("no answer in time".into(), true)),
            Ok(Err(e)) => return Err((e.to_string(), true)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let answer = Limited::new(response.into_body(), ANSWER_LIMIT).collect();
        let _ = tokio::time::timeout_at(limit, answer).await;
        if status.is_success() {
            Ok(())
        } else {
            let again = status == http::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            Err((format!("the receiver answered {status}"), again))
        }
    }

    fn give_up(&self, events: usize, attempts: u32, error: &str) {
        self.failures.inc();
        self.lost.inc_by(events as u64);
        tracing::error!(
            config = %self.config_file.display(),
            events,
            attempts,
            %error,
            "audit webhook batch dropped"
        );
    }
}

/// Batches queued events until shutdown, then sends what is in hand and queued, and returns.
pub(crate) async fn run(sink: WebhookSink, mut queue: Queue, mut shutdown: watch::Receiver<bool>) {
    let max = sink.batch_max_size.get();
    let mut batch = Batch::new(max);
    let mut send_at: Option<Instant> = None;
    // An event that did not fit the batch in hand: the first of the next.
    let mut carried: Option<Queued> = None;
    let deadline = loop {
        let wait_over = async move {
            match send_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break Instant::now() + SHUTDOWN_GRACE,
            () = wait_over => {}
            event = queue.recv() => {
                let Some(event) = event else {
                    break Instant::now() + SHUTDOWN_GRACE;
                };
                if let Err(event) = batch.push(event) {
                    carried = Some(event);
                } else if !batch.is_full() {
                    // The first event starts the wait (one left out starts nothing).
                    if batch.len() == 1 && send_at.is_none() {
                        send_at = Some(later(sink.batch_max_wait));
                    }
                    continue;
                }
            }
        }
        // The batch is full or its first event has waited long enough.
        let events = batch.len();
        let body = batch.encode();
        let mut delivery = pin!(sink.deliver(events, body, None));
        let stopping = tokio::select! {
            () = &mut delivery => None,
            () = stopped(&mut shutdown) => Some(Instant::now() + SHUTDOWN_GRACE),
        };
        if let Some(deadline) = stopping {
            // The batch in flight keeps its retries, but only within the grace period.
            if tokio::time::timeout_at(deadline, delivery).await.is_err() {
                sink.give_up(events, 0, "shutdown grace period over");
            }
            break deadline;
        }
        send_at = None;
        if let Some(event) = carried.take() {
            send_at = Some(later(sink.batch_max_wait));
            // An empty batch takes any event.
            let _ = batch.push(event);
        }
    };
    // Events recorded from now on are refused (and counted as dropped); the rest is sent.
    queue.close();
    loop {
        while !batch.is_full() {
            let Some(event) = carried.take().or_else(|| queue.try_recv()) else {
                break;
            };
            if let Err(event) = batch.push(event) {
                carried = Some(event);
                break;
            }
        }
        if batch.is_empty() {
            return;
        }
        let events = batch.len();
        if Instant::now() >= deadline {
            sink.give_up(events, 0, "shutdown grace period over");
        } else {
            let delivery = sink.deliver(events, batch.encode(), Some(deadline));
            if tokio::time::timeout_at(deadline, delivery).await.is_err() {
                sink.give_up(events, 0, "shutdown grace period over");
            }
        }
        batch.clear();
    }
}

/// One batch, written as the `EventList` JSON body it will be sent as (all but its closing
/// `]}`), so that its size is the bytes sent, escaping included, not an estimate, and the body is
/// handed over without a copy.
struct Batch {
    body: Vec<u8>,
    /// The bytes of its events (and the commas between them), as kube-apiserver counts a batch.
    bytes: usize,
    events: usize,
    max: usize,
}

impl Batch {
    fn new(max: usize) -> Self {
        Self {
            body: Vec::new(),
            bytes: 0,
            events: 0,
            max,
        }
    }

    /// Adds `queued`, or hands it back when it would take a batch that holds something past
    /// [`BATCH_BYTES`].
    fn push(&mut self, queued: Queued) -> Result<(), Queued> {
        let Ok(json) = serde_json::to_vec(&*queued.event) else {
            // Cannot happen (every map key is a string); an empty item would break the list.
            tracing::error!("an audit event could not be written as JSON; left out of the batch");
            return Ok(());
        };
        if self.events > 0 {
            if self.bytes + 1 + json.len() > BATCH_BYTES {
                return Err(queued);
            }
            self.body.push(b',');
            self.bytes += 1;
        } else {
            self.open();
        }
        self.body.extend_from_slice(&json);
        self.bytes += json.len();
        self.events += 1;
        Ok(())
    }

    /// Starts the body: everything before the first item.
    fn open(&mut self) {
        self.body.clear();
        self.body.extend_from_slice(
            format!(
                r#"{{"kind":"{EVENT_LIST_KIND}","apiVersion":"{API_VERSION}","metadata":{{}},"items":["#
            )
            .as_bytes(),
        );
    }

    /// Whether the batch holds `--audit-webhook-batch-max-size` events or [`BATCH_BYTES`].
    fn is_full(&self) -> bool {
        self.events >= self.max || self.bytes >= BATCH_BYTES
    }

    fn is_empty(&self) -> bool {
        self.events == 0
    }

    fn len(&self) -> usize {
        self.events
    }

    /// Empties the batch without sending it.
    fn clear(&mut self) {
        self.body.clear();
        (self.bytes, self.events) = (0, 0);
    }

    /// The batch as an `EventList` JSON body, as kube-apiserver's webhook POSTs it; the batch is
    /// empty after.
    fn encode(&mut self) -> Bytes {
        if self.events == 0 {
            self.open();
        }
        let mut body = std::mem::take(&mut self.body);
        body.extend_from_slice(b"]}");
        (self.bytes, self.events) = (0, 0);
        Bytes::from(body)
    }
}

/// Splits the `server` URL into the origin kube's client is built on and the exact path to POST.
fn split(server: &Uri) -> Result<(Uri, PathAndQuery), String> {
    let (Some(scheme), Some(authority)) = (server.scheme(), server.authority()) else {
        return Err(format!(
            "the cluster's server {server:?} is not an absolute URL"
        ));
    };
    let origin = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| e.to_string())?;
    let endpoint = match server.path_and_query() {
        Some(pq) if !pq.as_str().is_empty() => pq.clone(),
        _ => PathAndQuery::from_static("/"),
    };
    Ok((origin, endpoint))
}

/// Now plus `wait`, or a century from now when the operator asked for longer.
fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// 1.5 times `backoff`, at most [`MAX_BACKOFF`].
fn next_backoff(backoff: Duration) -> Duration {
    backoff
        .checked_mul(3)
        .map_or(MAX_BACKOFF, |d| d / 2)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::audit::sink::tests::event;

    #[test]
    fn the_server_path_is_kept_exactly() {
        for (server, origin, endpoint) in [
            (
                "https://falco:9765/k8s-audit",
                "https://falco:9765/",
                "/k8s-audit",
            ),
            (
                "https://10.0.0.1/audit/?tenant=a",
                "https://10.0.0.1/",
                "/audit/?tenant=a",
            ),
            (
                "https://siem.example:8443",
                "https://siem.example:8443/",
                "/",
            ),
        ] {
            let (o, e) = split(&server.parse().unwrap()).unwrap();
            assert_eq!(o.to_string(), origin, "{server}");
            assert_eq!(e.as_str(), endpoint, "{server}");
        }
        assert!(split(&"/relative".parse().unwrap()).is_err());
    }

    #[test]
    fn backoff_grows_by_half_and_is_capped() {
        let steps: Vec<_> =
            std::iter::successors(Some(Duration::from_secs(10)), |d| Some(next_backoff(*d)))
                .take(4)
                .collect();
        assert_eq!(
            steps,
            [10_000, 15_000, 22_500, 33_750].map(Duration::from_millis)
        );
        assert_eq!(next_backoff(Duration::MAX), MAX_BACKOFF);
    }

    fn queued(event: crate::audit::Event) -> Queued {
        Queued {
            weight: event.weight(),
            event: std::sync::Arc::new(event),
        }
    }

    #[test]
    fn a_batch_is_an_event_list() {
        let mut batch = Batch::new(400);
        for n in [1, 2] {
            assert!(batch.push(queued(event(n))).is_ok());
        }
        let body = batch.encode();
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(list["kind"], "EventList");
        assert_eq!(list["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(list["metadata"], serde_json::json!({}));
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(
            list["items"][1]["auditID"],
            "00000000-0000-4000-8000-000000000002"
        );
    }

    #[test]
    fn a_batch_is_a_valid_event_list_after_every_step() {
        let items = |body: &Bytes| -> usize {
            let list: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(list["kind"], "EventList");
            list["items"].as_array().unwrap().len()
        };
        let mut batch = Batch::new(400);
        assert_eq!(items(&batch.encode()), 0, "never opened");
        assert!(batch.push(queued(event(1))).is_ok());
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.push(queued(event(2))).is_ok());
        assert!(batch.push(queued(event(3))).is_ok());
        assert_eq!(items(&batch.encode()), 2, "opened again after clear");
        assert!(batch.is_empty());
        assert_eq!(items(&batch.encode()), 0, "encoded twice");
        assert!(batch.push(queued(event(4))).is_ok());
        assert_eq!(items(&batch.encode()), 1);
    }

    /// A batch holds 10 MiB of JSON, escaping included: `"` in a query weighs one byte in memory
    /// and two once written, so counting memory let a batch grow to twice what receivers take.
    #[test]
    fn a_batch_holds_ten_mebibytes_as_written() {
        let mut quoted = event(1);
        quoted.request_uri = format!("/metrics?x={}", "\"".repeat(60_000));
        let (mut batch, mut batches, mut pushed) = (Batch::new(400), Vec::new(), 0);
        while pushed < 300 {
            match batch.push(queued(quoted.clone())) {
                Ok(()) => pushed += 1,
                Err(_) => {
                    batches.push(batch.encode());
                }
            }
        }
        batches.push(batch.encode());
        let events: usize = batches
            .iter()
            .map(|body| {
                assert!(body.len() <= BATCH_BYTES + 100, "{} bytes", body.len());
                let list: serde_json::Value = serde_json::from_slice(body).unwrap();
                list["items"].as_array().unwrap().len()
            })
            .sum();
        assert_eq!(events, 300);
        assert_eq!(batches.len(), 4, "about 87 events of 120 KB each per batch");
    }
}
