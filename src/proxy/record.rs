//! The record step: for every request one audit event (two for an upgraded stream: at the 101 and
//! when the stream closes; two for a container log: at its headers and when its body ends), its
//! metric samples, the `Audit-ID` response header, and a debug line. A forwarded response's event
//! is written when its body has ended, with the bytes handed to the caller's connection and how it
//! ended, so a log streamed for hours is not recorded as done in a millisecond. Nothing here may
//! block the response or write a credential.

mod enrich;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::task::JoinHandle;

use super::{Peer, State};
use crate::audit::redact::redact_target;
use crate::audit::sink::{Auditor, Priority};
use crate::audit::{self, Event, ObjectReference, ResponseStatus, Stage, UserInfo};
use crate::authn::Identity;
use crate::authz::{Decision, PodResource, Resource, Verdict};
use crate::forward::{Body, Relayed, StreamEnd};
use crate::kubelet_api::{KubeletRequest, Subresource};
use crate::metrics::Outcome;
use crate::shutdown::Tracked;

/// What is learnt about a request as it passes the pipeline's steps.
#[derive(Default)]
pub(super) struct Trail {
    /// The classifier's reading.
    pub(super) classified: Option<KubeletRequest>,
    /// The authenticated caller.
    pub(super) who: Option<Arc<Identity>>,
    /// Every check and its decision.
    pub(super) verdict: Option<Verdict>,
    /// The refusal's one-line message, when the guard answered itself.
    pub(super) message: Option<String>,
    /// With `--pod-scoped-authz`, the pod check and its decision.
    pub(super) pod: Option<(Resource, Decision)>,
    /// In observe mode, what enforcing would have answered instead of forwarding.
    pub(super) observed: Option<Outcome>,
    /// Whether every check the request needs allowed it (the pod check too, when it has one).
    pub(super) authorized: bool,
    /// Whether the request went to the kubelet.
    pub(super) forwarded: bool,
    /// Whether the response is the kubelet's (not the guard's 5xx for a kubelet that failed).
    pub(super) kubelet_answered: bool,
}

/// A request being handled; recorded when it is answered, or, if hyper drops the handler first
/// (the caller left, its certificate expired, shutdown's grace ended), when it is dropped: the
/// kubelet may already be running what was asked, and the trail must say so.
pub(super) struct Pending<'a> {
    state: &'a State,
    peer: &'a Peer,
    arrival: Option<Arrival>,
    /// What the pipeline learns.
    pub(super) trail: Trail,
    /// With an audit sink, keeps shutdown's drain (and so the audit writers) waiting until the
    /// event is queued; handed on to a body that records it later.
    open: Option<Tracked>,
}

/// The status an abandoned request is recorded with: nginx's "client closed request", as no
/// response was sent.
const ABANDONED: u16 = 499;

impl<'a> Pending<'a> {
    /// A request that arrived as `arrival` says.
    pub(super) fn new(state: &'a State, peer: &'a Peer, arrival: Arrival) -> Self {
        Self {
            state,
            peer,
            arrival: Some(arrival),
            trail: Trail::default(),
            open: state.audit.is_enabled().then(|| state.upstream.track()),
        }
    }

    /// Records the answered request: see [`finish`].
    pub(super) fn answered(
        mut self,
        outcome: Outcome,
        response: &mut Response<Body>,
        stream: Option<JoinHandle<(Relayed, Tracked)>>,
    ) {
        if let Some(arrival) = self.arrival.take() {
            let trail = std::mem::take(&mut self.trail);
            let answer = Answer {
                response: Some(response),
                stream,
                open: self.open.take(),
            };
            finish(self.state, self.peer, arrival, trail, outcome, answer);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(arrival) = self.arrival.take() else {
            return;
        };
        let mut trail = std::mem::take(&mut self.trail);
        trail.message = Some("the connection closed before the guard answered".to_owned());
        let outcome = if trail.forwarded {
            Outcome::Allowed
        } else {
            Outcome::Abandoned
        };
        let answer = Answer {
            response: None,
            stream: None,
            open: self.open.take(),
        };
        finish(self.state, self.peer, arrival, trail, outcome, answer);
    }
}

/// What is known when a request arrives, before the pipeline consumes it.
pub(super) struct Arrival {
    received: SystemTime,
    started: Instant,
    method: http::Method,
    target: String,
    user_agent: Option<String>,
}

/// The path and query as received (an HTTP/2 request's `:path`; hyper gives every HTTP/2 URI
/// its `:authority`). A target without a path is the authority form (`CONNECT host:port`,
/// refused): recorded as host and port, never with the user information it may carry
/// (`user:password@`), a credential.
fn target(uri: &http::Uri) -> String {
    if let Some(path) = uri.path_and_query() {
        return path.as_str().to_owned();
    }
    match uri.authority() {
        Some(authority) => match authority.port() {
            Some(port) => format!("{}:{port}", authority.host()),
            None => authority.host().to_owned(),
        },
        None => uri.to_string(),
    }
}

impl Arrival {
    /// What the audit event and the debug line need of `request`; only the clock when neither
    /// is written (the hot path of a guard without an audit sink).
    pub(super) fn of<B>(request: &Request<B>, detailed: bool) -> Self {
        let detailed = detailed || tracing::enabled!(tracing::Level::DEBUG);
        Self {
            received: SystemTime::now(),
            started: Instant::now(),
            method: request.method().clone(),
            target: if detailed {
                target(request.uri())
            } else {
                String::new()
            },
            user_agent: request
                .headers()
                .get(http::header::USER_AGENT)
                .filter(|_| detailed)
                .and_then(|v| v.to_str().ok())
                .map(|agent| truncated(agent, USER_AGENT_MAX).into_owned()),
        }
    }
}

/// What went back to the caller, if anything, and what the event may still wait for.
struct Answer<'r> {
    /// `None` for a request dropped unanswered.
    response: Option<&'r mut Response<Body>>,
    /// An upgraded stream's splice.
    stream: Option<JoinHandle<(Relayed, Tracked)>>,
    /// The request's hold on shutdown's drain (with an audit sink), for a body to keep.
    open: Option<Tracked>,
}

/// Records a finished request: metrics, the audit event(s), the `Audit-ID` header.
/// `answer.response` is `None` for a request dropped unanswered (recorded as [`ABANDONED`]).
fn finish(
    state: &State,
    peer: &Peer,
    arrival: Arrival,
    mut trail: Trail,
    outcome: Outcome,
    answer: Answer<'_>,
) {
    let Answer {
        mut response,
        stream,
        open,
    } = answer;
    // Refused before authentication (a target read two ways, a method the kubelet has no route
    // for), a caller whose certificate the handshake verified is still named.
    if state.audit.is_enabled()
        && trail.who.is_none()
        && trail.classified.is_none()
        && peer.trust.as_ref().is_none_or(|trust| trust.holds())
    {
        trail.who = peer.certificate.current_identity().cloned();
    }
    let status = response.as_ref().map_or_else(
        || StatusCode::from_u16(ABANDONED).unwrap_or(StatusCode::BAD_REQUEST),
        |response| response.status(),
    );
    let verb = trail.classified.as_ref().map_or("", |c| c.verb().as_str());
    let decided = decided_by(&trail);
    let subresource = decided.map_or("", Subresource::as_str);
    let metrics = &state.metrics;
    metrics.request(
        verb,
        subresource,
        outcome,
        status,
        arrival.started.elapsed(),
    );
    if let Some(protocol) = trail.classified.as_ref().and_then(KubeletRequest::upgrade) {
        metrics.upgrade(outcome, protocol.as_str());
    }
    if let Some(denied) = fallback_after(&trail) {
        metrics.proxy_fallback(denied.as_str());
    }
    if let Some(observed) = trail.observed {
        metrics.observed(observed);
    }
    tracing::debug!(
        peer = %peer.addr,
        method = %arrival.method,
        path = arrival.target.split('?').next().unwrap_or_default(),
        user = trail.who.as_ref().map_or("", |who| who.name.as_str()),
        verb,
        subresource,
        decision = outcome.as_str(),
        status = status.as_u16(),
        "request"
    );

    // Without a sink there is no event for an Audit-ID to name.
    if !state.audit.is_enabled() {
        return;
    }
    let audit_id = audit_id();
    if let (Some(response), Ok(value)) = (response.as_deref_mut(), HeaderValue::from_str(&audit_id))
    {
        response.headers_mut().insert("audit-id", value);
    }
    // A caller that proved who it is keeps its events when unauthenticated noise floods the queue.
    let priority = match trail.who.as_ref() {
        Some(who) if !who.is_anonymous() => Priority::Authenticated,
        _ => Priority::Unauthenticated,
    };
    let mut event = event(state, peer, &arrival, &trail, audit_id, status, decided);
    match (stream, response) {
        (Some(stream), _) if status == StatusCode::SWITCHING_PROTOCOLS => {
            event.stage = Stage::ResponseStarted;
            state.audit.record(event.clone(), priority);
            let audit = state.audit.clone();
            tokio::spawn(async move {
                // Holding `_open` until the event is queued keeps shutdown's drain, and so the
                // audit writers, waiting for it. A splice task that panicked relayed nothing
                // anyone counted.
                let (relayed, _open) = match stream.await {
                    Ok((relayed, open)) => (relayed, Some(open)),
                    Err(_) => (
                        Relayed {
                            to_kubelet: 0,
                            to_caller: 0,
                            duration: std::time::Duration::ZERO,
                            end: StreamEnd::Error,
                        },
                        None,
                    ),
                };
                event.stage = Stage::ResponseComplete;
                event.stage_timestamp = timestamp(SystemTime::now());
                event
                    .annotations
                    .insert(audit::BYTES_TO_KUBELET, relayed.to_kubelet.to_string());
                event
                    .annotations
                    .insert(audit::BYTES_TO_CALLER, relayed.to_caller.to_string());
                event.annotations.insert(
                    audit::STREAM_DURATION,
                    format!("{:.3}s", relayed.duration.as_secs_f64()),
                );
                event
                    .annotations
                    .insert(audit::STREAM_END, relayed.end.as_str().to_owned());
                audit.record(event, priority);
            });
        }
        (_, Some(response)) if trail.kubelet_answered => {
            // A container log can stream for hours (kube-apiserver counts `log` as long-running):
            // say at once that it started.
            if arrival.target.starts_with("/containerLogs/") {
                let mut started = event.clone();
                started.stage = Stage::ResponseStarted;
                state.audit.record(started, priority);
            }
            // The kubelet's body: recorded once it has gone to the caller (an empty one as soon as
            // hyper drops it).
            let empty = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed();
            let body = std::mem::replace(response.body_mut(), empty);
            *response.body_mut() = Audited {
                body,
                sent: 0,
                pending: Some((event, state.audit.clone(), priority)),
                expires: peer.expires,
                open: open.unwrap_or_else(|| state.upstream.track()),
            }
            .boxed();
        }
        _ => state.audit.record(event, priority),
    }
}

/// A forwarded response's body, whose event is recorded when it ends or is dropped unfinished.
struct Audited {
    body: Body,
    /// Bytes handed to the caller's connection so far.
    sent: u64,
    /// The event, until it is recorded.
    pending: Option<(Event, Auditor, Priority)>,
    /// When the caller's certificate expires, which closes its connection.
    expires: Option<tokio::time::Instant>,
    /// Keeps shutdown's drain waiting until the event is queued (dropped after [`Drop::drop`]),
    /// and says whether the guard is closing everything.
    open: Tracked,
}

impl Audited {
    fn ended(&mut self, end: &'static str) {
        if let Some((mut event, audit, priority)) = self.pending.take() {
            event.stage_timestamp = timestamp(SystemTime::now());
            event
                .annotations
                .insert(audit::BYTES_TO_CALLER, self.sent.to_string());
            event
                .annotations
                .insert(audit::RESPONSE_END, end.to_owned());
            audit.record(event, priority);
        }
    }
}

impl hyper::body::Body for Audited {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
                if this.body.is_end_stream() {
                    this.ended("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => this.ended("error"),
            Poll::Ready(None) => this.ended("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Audited {
    fn drop(&mut self) {
        let end = if self.body.is_end_stream() {
            "complete"
        } else if self.open.is_closing() {
            "shutdown"
        } else if self
            .expires
            .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            "certificate-expired"
        } else {
            "caller-closed"
        };
        self.ended(end);
    }
}

/// The subresource that decided: the one that allowed, else the last one checked.
fn decided_by(trail: &Trail) -> Option<Subresource> {
    trail
        .verdict
        .as_ref()
        .and_then(Verdict::allowed_by)
        .or_else(|| {
            trail
                .classified
                .as_ref()
                .and_then(|c| c.checks().last().copied())
        })
}

/// The fine-grained subresource that denied before `nodes/proxy` allowed, if that happened.
fn fallback_after(trail: &Trail) -> Option<Subresource> {
    let verdict = trail.verdict.as_ref()?;
    match verdict.checks.as_slice() {
        [
            (first, Decision::Deny { .. }),
            (Subresource::Proxy, Decision::Allow { .. }),
        ] => Some(*first),
        _ => None,
    }
}

fn event(
    state: &State,
    peer: &Peer,
    arrival: &Arrival,
    trail: &Trail,
    audit_id: String,
    status: StatusCode,
    decided: Option<Subresource>,
) -> Event {
    let mut annotations = BTreeMap::new();
    if let Some(verdict) = &trail.verdict {
        // A pod check that denied forbids the request, whatever the node-level checks said; so
        // does one that never decided (an unnamed pod, a failed review, a caller gone first),
        // whose reason is then the refusal's.
        let pod_denied = trail
            .pod
            .as_ref()
            .map(|(_, decision)| decision)
            .filter(|decision| !decision.is_allow());
        let allowed = trail.authorized;
        annotations.insert(
            audit::DECISION,
            if allowed { "allow" } else { "forbid" }.to_owned(),
        );
        let last = verdict.checks.last().map(|(_, decision)| decision);
        let reason = pod_denied
            .or_else(|| last.filter(|decision| allowed || !decision.is_allow()))
            .map(|decision| match decision {
                Decision::Allow { reason } | Decision::Deny { reason } => reason.to_string(),
            });
        if let Some(reason) = reason
            .filter(|r| !r.is_empty())
            .or_else(|| trail.message.clone())
        {
            annotations.insert(audit::REASON, reason);
        }
        let checks: Vec<String> = verdict
            .checks
            .iter()
            .map(|(subresource, decision)| {
                format!(
                    "{}={}",
                    subresource.as_str(),
                    if decision.is_allow() { "allow" } else { "deny" }
                )
            })
            .collect();
        annotations.insert(audit::CHECKS, checks.join(","));
        annotations.insert(
            audit::PROXY_FALLBACK,
            fallback_after(trail).is_some().to_string(),
        );
    }
    if let Some(protocol) = trail.classified.as_ref().and_then(KubeletRequest::upgrade) {
        annotations.insert(audit::UPGRADE, protocol.as_str().to_owned());
    }
    if let Some((Resource::Pod(pod), decision)) = &trail.pod {
        let PodResource {
            namespace,
            name,
            action,
        } = &**pod;
        let outcome = if decision.is_allow() { "allow" } else { "deny" };
        let check = format!(
            "{} pods/{} {namespace}/{name}={outcome}",
            action.verb().as_str(),
            action.subresource()
        );
        annotations.insert(audit::POD_CHECK, check);
    }
    if let Some(observed) = trail.observed {
        annotations.insert(audit::OBSERVED, format!("would-{}", observed.as_str()));
    }
    // Only a classified target is canonical enough to name a pod: the one that was forwarded.
    if trail.classified.is_some() {
        enrich::target(&mut annotations, &arrival.target);
    }
    if let Some(who) = &trail.who {
        enrich::authentication(&mut annotations, &peer.certificate, who);
    }
    let failed = status.is_client_error() || status.is_server_error();
    // What the kubelet never saw has nothing to hide: a refused request's caller-chosen text is
    // cut, so a flood of large refused requests cannot fill the audit queues' memory. What was
    // forwarded is recorded whole, or a long padding could hide what ran.
    let max = if trail.forwarded {
        usize::MAX
    } else {
        REFUSED_TEXT_MAX
    };
    for value in annotations.values_mut() {
        if let Cow::Owned(cut) = truncated(value, max) {
            *value = cut;
        }
    }
    Event {
        kind: audit::EVENT_KIND,
        api_version: audit::API_VERSION,
        level: "Metadata",
        audit_id,
        stage: Stage::ResponseComplete,
        request_uri: truncated(&redact_target(&arrival.target), max).into_owned(),
        verb: trail
            .classified
            .as_ref()
            .map_or("", |c| c.verb().as_str())
            .to_owned(),
        user: trail.who.as_deref().map(user_info).unwrap_or_default(),
        // An IPv4 caller of a dual-stack listener as kube-apiserver writes it, not `::ffff:a.b.c.d`.
        source_ips: vec![peer.addr.ip().to_canonical().to_string()],
        user_agent: arrival.user_agent.clone(),
        object_ref: trail.classified.as_ref().map(|_| ObjectReference {
            resource: "nodes",
            name: state.node.to_string(),
            subresource: decided.map_or("", Subresource::as_str).to_owned(),
            api_version: "v1",
        }),
        response_status: ResponseStatus {
            metadata: BTreeMap::new(),
            code: status.as_u16(),
            status: failed.then_some("Failure"),
            reason: failed.then(|| reason(status)).flatten(),
            message: trail
                .message
                .as_deref()
                .filter(|_| failed)
                .map(|message| truncated(message, max).into_owned()),
        },
        request_received_timestamp: timestamp(arrival.received),
        stage_timestamp: timestamp(SystemTime::now()),
        annotations,
    }
}

fn user_info(who: &Identity) -> UserInfo {
    UserInfo {
        username: who.name.clone(),
        uid: who.uid.clone(),
        groups: who.groups.to_vec(),
        extra: who.extra.clone(),
    }
}

/// The longest `userAgent` recorded, as kube-apiserver's audit (`maxUserAgentLength`).
const USER_AGENT_MAX: usize = 1024;

/// The longest `requestURI` or annotation recorded for a request the kubelet never saw.
const REFUSED_TEXT_MAX: usize = 4096;

/// `text` cut to at most `max` bytes at a character boundary and marked as kube-apiserver marks
/// a long user agent.
fn truncated(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...TRUNCATED", &text[..end]))
}

/// The `metav1.StatusReason` kube-apiserver would give.
fn reason(status: StatusCode) -> Option<&'static str> {
    Some(match status {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::NOT_ACCEPTABLE => "NotAcceptable",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::GONE => "Gone",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
        StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "Timeout",
        s if s.is_server_error() => "InternalError",
        _ => return None,
    })
}

/// RFC 3339 with microseconds, as kube-apiserver writes audit timestamps.
fn timestamp(at: SystemTime) -> String {
    // humantime panics before 1970: a clock that far wrong is shown as the epoch.
    humantime::format_rfc3339_micros(at.max(SystemTime::UNIX_EPOCH)).to_string()
}

/// A version-4 UUID: 64 random bits drawn once per process, then a counter mixed by a bijection
/// so that IDs are unique within the process and look random across it, with no system call per
/// request. Audit IDs name events; they are no secret.
fn audit_id() -> String {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            // No OS randomness: the clock still sets processes apart.
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes = (nanos as u64).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    uuid(seed, mix(n ^ seed.rotate_left(32)))
}

/// The UUID of `seed` and `mixed`, every bit of `mixed` kept: the variant takes the top two bits
/// of its half, so those two go into the seed's half instead, where nothing else varies.
fn uuid(seed: u64, mixed: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_be_bytes());
    bytes[8..].copy_from_slice(&mixed.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[7] ^= (mixed >> 62) as u8;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// SplitMix64's finalizer: a bijection on u64, so distinct counters give distinct IDs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_ids_are_version_4_uuids() {
        let id = audit_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(id, audit_id());
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| audit_id()).collect();
        assert_eq!(many.len(), 10_000);
        // The variant's two bits overwrite none of the counter's.
        let mixed = 0x0123_4567_89ab_cdef;
        let ids: std::collections::HashSet<String> =
            (0..4u64).map(|top| uuid(7, mixed ^ (top << 62))).collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
    }

    #[test]
    fn every_kubernetes_status_reason_a_kubelet_answer_can_have_is_named() {
        for (code, wanted) in [
            (400, Some("BadRequest")),
            (404, Some("NotFound")),
            (409, Some("Conflict")),
            (410, Some("Gone")),
            (413, Some("RequestEntityTooLarge")),
            (415, Some("UnsupportedMediaType")),
            (422, Some("Invalid")),
            (429, Some("TooManyRequests")),
            (500, Some("InternalError")),
            (504, Some("Timeout")),
            (499, None),
            (200, None),
        ] {
            assert_eq!(
                reason(StatusCode::from_u16(code).unwrap()),
                wanted,
                "{code}"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(timestamp(at), "2023-11-14T22:13:20.123456Z");
    }
}
