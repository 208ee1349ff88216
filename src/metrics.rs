//! Prometheus metrics on a registry built in `run()` and passed down (never a global), and the
//! plain-HTTP admin endpoints `/healthz` (alive), `/readyz` (serving) and `/metrics`.
//!
//! Label values are bounded: verbs, subresources, decisions and status codes; never a path, a user
//! or a pod name.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The guard's metric handles.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    /// `kubelet_guard_request_duration_seconds` by decision, in `Outcome::ALL`'s order: looked
    /// up once, not hashed per request.
    duration: Arc<[Histogram; Outcome::ALL.len()]>,
    /// `kubelet_guard_authorization_cache_requests_total`: token then SAR, each miss then hit.
    cache: Arc<[[IntCounter; 2]; 2]>,
    apiserver: HistogramVec,
    fallback: IntCounterVec,
    upgrades: IntCounterVec,
    upstream_errors: IntCounterVec,
    observed: IntCounterVec,
    connections: IntGauge,
    exposed: IntGaugeVec,
    certificate_expiry: IntGaugeVec,
    reloads: IntCounterVec,
    limit_hits: IntCounterVec,
    /// Audit events dropped, by reason (`queue-full`, `reserved-for-authenticated`).
    pub audit_dropped: IntCounterVec,
    /// Audit webhook batches given up after retries.
    pub audit_webhook_failures: IntCounter,
}

/// How a request ended, as the `decision` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Authorized and forwarded.
    Allowed,
    /// Authenticated but not authorized.
    Forbidden,
    /// Not authenticated.
    Unauthenticated,
    /// Refused before authentication (400, 405).
    Rejected,
    /// No decision could be made (a review failed).
    Error,
    /// The connection closed before the guard decided (the kubelet was never called).
    Abandoned,
}

/// Which decision cache a lookup went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    /// TokenReview results.
    Token,
    /// SubjectAccessReview results.
    Sar,
}

/// Whether the guard is serving; `/readyz` reports it. Ready takes both: the guarded listener
/// serving, and no condition holding it back (the kubelet lockdown under `require`).
#[derive(Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Default)]
struct ReadinessState {
    serving: AtomicBool,
    held: std::sync::Mutex<Option<String>>,
}

/// Counts one open connection for as long as it lives.
pub struct ConnectionGuard(IntGauge);

/// Latency buckets for requests and API calls, in seconds: 1 ms to 30 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Registers the guard's metrics on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let vec = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(vec.clone()))?;
                Ok(vec)
            };
        let histogram =
            |name: &str, help: &str, labels: &[&str]| -> Result<HistogramVec, prometheus::Error> {
                let vec = HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                    labels,
                )?;
                registry.register(Box::new(vec.clone()))?;
                Ok(vec)
            };
        let requests = counter(
            "kubelet_guard_requests_total",
            "Requests to the guarded kubelet API, by verb, deciding subresource, decision and status code.",
            &["verb", "subresource", "decision", "code"],
        )?;
        let duration = histogram(
            "kubelet_guard_request_duration_seconds",
            "Time from a request's arrival to its response headers, by decision.",
            &["decision"],
        )?;
        let cache = counter(
            "kubelet_guard_authorization_cache_requests_total",
            "Lookups in the token and access-review caches; a miss costs an API call.",
            &["cache", "result"],
        )?;
        let apiserver = histogram(
            "kubelet_guard_apiserver_request_duration_seconds",
            "TokenReview and SubjectAccessReview calls, by API and HTTP status (or error).",
            &["api", "code"],
        )?;
        let fallback = counter(
            "kubelet_guard_proxy_fallback_total",
            "Requests allowed only through the nodes/proxy fallback, by the fine-grained subresource that denied.",
            &["subresource"],
        )?;
        let upgrades = counter(
            "kubelet_guard_upgrades_total",
            "Protocol upgrade requests (exec, attach, port-forward), by decision and protocol.",
            &["decision", "protocol"],
        )?;
        let upstream_errors = counter(
            "kubelet_guard_upstream_errors_total",
            "Failures reaching the kubelet, by kind.",
            &["kind"],
        )?;
        let observed = counter(
            "kubelet_guard_observed_refusals_total",
            "In --mode=observe, requests forwarded that enforcing would have refused, by that refusal.",
            &["decision"],
        )?;
        let reloads = counter(
            "kubelet_guard_file_reloads_total",
            "Re-reads of changed files, by the flag naming the file and result.",
            &["flag", "result"],
        )?;
        let limit_hits = counter(
            "kubelet_guard_limit_hits_total",
            "Connections that ran into a limit: max-connections, unauthenticated-per-source, header-read-timeout, header-size, idle-timeout, response-unread, stream-unread, certificate-expired, http2-max-streams; on the admin listener admin-per-source, admin-max-connections, admin-header-read-timeout, admin-lifetime.",
            &["limit"],
        )?;
        let exposed = IntGaugeVec::new(
            Opts::new(
                "kubelet_guard_kubelet_exposed",
                "1 while the kubelet answers a probe without the guard's certificate (credential none or the guard's own token), trusts a client CA besides the node's own (credential certificate, with the node PKI), or serves its read-only port (credential read-only-port); 0 once it refuses.",
            ),
            &["credential"],
        )?;
        registry.register(Box::new(exposed.clone()))?;
        let certificate_expiry = IntGaugeVec::new(
            Opts::new(
                "kubelet_guard_certificate_expiry_timestamp_seconds",
                "When the certificate in use expires (Unix seconds): serving (--tls-cert-file) or upstream (the guard's client certificate towards the kubelet; absent with a token). Set at every load and reload.",
            ),
            &["certificate"],
        )?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        let connections =
            IntGauge::new("kubelet_guard_open_connections", "Open caller connections.")?;
        registry.register(Box::new(connections.clone()))?;
        let audit_dropped = counter(
            "kubelet_guard_audit_events_dropped_total",
            "Audit events dropped: queue-full (no room at all), reserved-for-authenticated (an unauthenticated request's event met the share kept for authenticated ones), write-error (the audit log file could not be written), or webhook-failed (the events of a webhook batch given up after its retries).",
            &["reason"],
        )?;
        for reason in crate::audit::sink::DROP_REASONS {
            audit_dropped.with_label_values(&[reason]);
        }
        let audit_webhook_failures = IntCounter::new(
            "kubelet_guard_audit_webhook_failures_total",
            "Audit batches the webhook receiver did not take after every retry.",
        )?;
        registry.register(Box::new(audit_webhook_failures.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("kubelet_guard_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build))?;
        Ok(Self {
            registry,
            requests,
            duration: Arc::new(
                Outcome::ALL.map(|outcome| duration.with_label_values(&[outcome.as_str()])),
            ),
            cache: Arc::new(["token", "sar"].map(|kind| {
                ["miss", "hit"].map(|result| cache.with_label_values(&[kind, result]))
            })),
            apiserver,
            fallback,
            upgrades,
            upstream_errors,
            observed,
            connections,
            exposed,
            certificate_expiry,
            reloads,
            limit_hits,
            audit_dropped,
            audit_webhook_failures,
        })
    }

    /// Counts one finished request. `verb` and `subresource` are empty when unknown.
    pub fn request(
        &self,
        verb: &str,
        subresource: &str,
        outcome: Outcome,
        code: StatusCode,
        took: Duration,
    ) {
        self.requests
            .with_label_values(&[verb, subresource, outcome.as_str(), code.as_str()])
            .inc();
        self.duration[outcome as usize].observe(took.as_secs_f64());
    }

    /// The expiry gauge of one certificate the guard uses: `serving` or `upstream`.
    pub fn certificate_expiry(&self, certificate: &str) -> IntGauge {
        self.certificate_expiry.with_label_values(&[certificate])
    }

    /// Counts one cache lookup.
    pub fn cache(&self, kind: CacheKind, hit: bool) {
        self.cache[kind as usize][usize::from(hit)].inc();
    }

    /// Times one API call; `code` is the HTTP status, or `error`/`timeout`, or `queued` (no turn
    /// within the deadline: the guard's own limit on calls in flight was full), or `queue-full`
    /// (not even a place to wait for one).
    pub fn apiserver(&self, api: &str, code: &str, took: Duration) {
        self.apiserver
            .with_label_values(&[api, code])
            .observe(took.as_secs_f64());
    }

    /// Counts a request that only `nodes/proxy` allowed after `denied` did not.
    pub fn proxy_fallback(&self, denied: &str) {
        self.fallback.with_label_values(&[denied]).inc();
    }

    /// Counts one upgrade request.
    pub fn upgrade(&self, outcome: Outcome, protocol: &str) {
        self.upgrades
            .with_label_values(&[outcome.as_str(), protocol])
            .inc();
    }

    /// Counts one failure to reach the kubelet.
    pub fn upstream_error(&self, kind: &str) {
        self.upstream_errors.with_label_values(&[kind]).inc();
    }

    /// Counts a request that observe mode forwarded although enforcing would have refused it.
    pub fn observed(&self, would: Outcome) {
        self.observed.with_label_values(&[would.as_str()]).inc();
    }

    /// Counts a connection open until the returned guard drops.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.inc();
        ConnectionGuard(self.connections.clone())
    }

    /// Records what the lockdown probe with `credential` found.
    pub fn kubelet_exposed(&self, credential: &str, exposed: bool) {
        self.exposed
            .with_label_values(&[credential])
            .set(i64::from(exposed));
    }

    /// Counts one re-read of a changed file; a failure kept the last good content.
    pub fn reload(&self, flag: &str, succeeded: bool) {
        let result = if succeeded { "success" } else { "error" };
        self.reloads.with_label_values(&[flag, result]).inc();
    }

    /// Counts one connection that ran into `limit`.
    pub fn limit_hit(&self, limit: &str) {
        self.limit_counter(limit).inc();
    }

    /// The counter of one limit's hits, for a part that counts them without the rest.
    pub fn limit_counter(&self, limit: &str) -> IntCounter {
        self.limit_hits.with_label_values(&[limit])
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Outcome {
    /// Every outcome, in declaration order (`outcome as usize` indexes it).
    pub const ALL: [Outcome; 6] = [
        Self::Allowed,
        Self::Forbidden,
        Self::Unauthenticated,
        Self::Rejected,
        Self::Error,
        Self::Abandoned,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::Forbidden => "forbid",
            Self::Unauthenticated => "unauthenticated",
            Self::Rejected => "reject",
            Self::Error => "error",
            Self::Abandoned => "abandoned",
        }
    }
}

impl Readiness {
    /// Marks the guarded listener serving or not.
    pub fn set(&self, ready: bool) {
        self.0.serving.store(ready, Ordering::Release);
    }

    /// Holds readiness back for `reason` (`/readyz` says it), or releases it with `None`.
    pub fn hold(&self, reason: Option<String>) {
        *self
            .0
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// Whether the guard is ready.
    pub fn is_ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why the guard is not ready, or `None` when it is.
    pub fn unready_reason(&self) -> Option<String> {
        if !self.0.serving.load(Ordering::Acquire) {
            return Some("not serving the guarded listener".to_owned());
        }
        self.0
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Answers one admin request.
pub async fn admin<B>(
    metrics: Metrics,
    ready: Readiness,
    request: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_owned(),
        ),
        "/readyz" => match ready.unready_reason() {
            None => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n".to_owned(),
            ),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pre_resolved_series_carry_their_own_labels() {
        let metrics = Metrics::new(Registry::new()).unwrap();
        for (index, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, index);
            metrics.request("get", "metrics", outcome, StatusCode::OK, Duration::ZERO);
        }
        metrics.cache(CacheKind::Sar, true);
        metrics.cache(CacheKind::Token, false);
        let text = metrics.render();
        for outcome in Outcome::ALL {
            let series = format!(
                "kubelet_guard_request_duration_seconds_count{{decision=\"{}\"}} 1",
                outcome.as_str()
            );
            assert!(text.contains(&series), "{series}\n{text}");
        }
        for (cache, result, count) in [
            ("sar", "hit", 1),
            ("sar", "miss", 0),
            ("token", "hit", 0),
            ("token", "miss", 1),
        ] {
            let series = format!(
                "kubelet_guard_authorization_cache_requests_total{{cache=\"{cache}\",result=\"{result}\"}} {count}"
            );
            assert!(text.contains(&series), "{series}\n{text}");
        }
    }
}
