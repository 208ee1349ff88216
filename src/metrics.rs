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
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};

/// The guard's metric handles.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    reloads: IntCounterVec,
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
}

/// Whether the guard is serving; `/readyz` reports it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Metrics {
    /// Registers the guard's metrics on `registry`.
    pub fn new(registry: Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "kubelet_guard_requests_total",
                "Requests to the guarded kubelet API, by outcome.",
            ),
            &["verb", "subresource", "decision", "code"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "kubelet_guard_file_reloads_total",
                "Re-reads of changed files, by the flag naming the file and result.",
            ),
            &["flag", "result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Self {
            registry,
            requests,
            reloads,
        })
    }

    /// Counts one finished request. `verb` and `subresource` are empty when unknown.
    pub fn request(&self, verb: &str, subresource: &str, outcome: Outcome, code: StatusCode) {
        self.requests
            .with_label_values(&[verb, subresource, outcome.as_str(), code.as_str()])
            .inc();
    }

    /// Counts one re-read of a changed file; a failure kept the last good content.
    pub fn reload(&self, flag: &str, succeeded: bool) {
        let result = if succeeded { "success" } else { "error" };
        self.reloads.with_label_values(&[flag, result]).inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::Forbidden => "forbid",
            Self::Unauthenticated => "unauthenticated",
            Self::Rejected => "reject",
            Self::Error => "error",
        }
    }
}

impl Readiness {
    /// Marks the guard ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the guard is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
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
        "/readyz" if ready.is_ready() => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_owned(),
        ),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "not ready\n".to_owned(),
        ),
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
