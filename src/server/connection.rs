//! One caller connection, from TLS handshake to close, and the limits that keep a misbehaving
//! caller from hurting the node. Each limit hit is counted in `kubelet_guard_limit_hits_total`.
//!
//! - ALPN decides the protocol, as in Go's server: `h2` is HTTP/2, anything else HTTP/1.1.
//! - A connection moves between three phases. *Reading a head* (HTTP/1.1 only): from the
//!   handshake, or from the first byte after an idle spell, until the request head is complete;
//!   longer than `--header-read-timeout` and the connection is closed (Go's `ReadHeaderTimeout`).
//!   *Busy*: at least one request is in flight (its response body not yet sent); no timeout while
//!   a response moves or waits on the kubelet (a followed log may be quiet for hours), but when
//!   every response in flight waits for hyper to take more and none was taken for
//!   `--idle-timeout` to `2 × --idle-timeout` (the caller reads nothing, or its HTTP/2 window
//!   stays shut), the connection is closed at once. *Idle*: nothing in flight; longer than `--idle-timeout` and the
//!   connection is shut down gracefully (Go's `IdleTimeout`), and closed if that shutdown has not
//!   finished within `--header-read-timeout` (a caller that does not acknowledge HTTP/2's
//!   shutdown PING, or reads nothing).
//! - Request heads are limited to 1 MiB as the kubelet's (hyper answers 431 beyond that) and HTTP/2
//!   streams to `--http2-max-streams` per connection (counted when a connection reaches it: the
//!   peer must wait, or its extra streams are refused).
//! - The connection's socket carries its `--max-connections` slot and its place in the open
//!   connections gauge, so an upgraded stream, which outlives the HTTP connection, keeps both.
//!   From the `101` on, the socket has `TCP_USER_TIMEOUT` = `--stream-unread-timeout`: the kernel
//!   closes it when the caller takes nothing for that long (it reads nothing while the kubelet
//!   sends, so its window stays shut, or it is gone), which `forward` reports as `caller-unread`
//!   and counts as limit `stream-unread`.
//! - Every caller socket has `TCP_NODELAY` and TCP keep-alive as Go's listeners set it (15 s idle,
//!   15 s apart, 9 probes), so a caller that vanished is noticed while its connection is quiet
//!   (an upgraded stream's within `--stream-unread-timeout`, which overrides the probe count).
//! - A phase change stamps the time and wakes the timer only if the new phase's deadline comes
//!   before the timer would wake; otherwise the timer finds the change when it wakes. While idle
//!   it wakes at least every `--header-read-timeout`, so a head that starts is still cut at its own
//!   deadline. With the defaults a keep-alive request wakes nothing; waking the timer at every
//!   change cost each request three wake-ups of its connection's task.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::HandshakeKind;
use tokio_rustls::server::TlsStream;

use crate::admission::Ticket;
use crate::authn::{PeerCertificate, x509};
use crate::config::Limits;
use crate::forward;
use crate::metrics::{ConnectionGuard, Metrics};
use crate::proxy::{self, Peer, State};
use crate::reload::Watched;
use crate::shutdown::Tracked;
use crate::tls::{CallerTrust, Serving};

/// How much of the caller's first bytes is read before HTTP is set up: a buffer inside the
/// connection's task, so an idle connection has none of its own; hyper reads the rest from rustls.
const FIRST_READ: usize = 64;

/// HTTP/2's default window (RFC 9113, section 6.9.2), kept for every stream and the connection.
const H2_WINDOW: u32 = 65_535;

/// Go's TCP keep-alive idle time and interval, and its count of unanswered probes.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
const KEEP_ALIVE_PROBES: u32 = 9;

/// How long a caller may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A limit a caller ran into; the `limit` label of `kubelet_guard_limit_hits_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limit {
    /// `--max-connections`: a connection over it was closed at once.
    MaxConnections,
    /// `--header-read-timeout`: a request head took too long.
    HeaderReadTimeout,
    /// A request head over `--max-request-header-bytes` was refused with 431.
    HeaderSize,
    /// `--max-unauthenticated-connections-per-source`: a connection over it was closed at once.
    UnauthenticatedPerSource,
    /// The client certificate expired: the connection was closed, a response in flight with it.
    CertificateExpired,
    /// `--idle-timeout`: an idle connection was shut down.
    IdleTimeout,
    /// `--idle-timeout`: a response stayed unread that long, and its connection was closed.
    ResponseUnread,
    /// `--http2-max-streams`: a connection reached its concurrent-stream limit.
    Http2MaxStreams,
}

/// What every connection of the guarded listener shares.
pub(super) struct Context {
    tls: Arc<Watched<Serving>>,
    state: Arc<State>,
    limits: Limits,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// Where a connection is between requests, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    ReadingHead,
    Busy,
    Idle,
}

/// A connection's requests in flight and its phase, shared by its service, its socket and its
/// timer.
struct Activity {
    state: Mutex<ActivityState>,
    /// Set while idle on HTTP/1.1, so a read knows to start the head timer without the lock.
    awaiting_head: AtomicBool,
    changed: Notify,
    http1: bool,
    stream_limit: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// `--stream-unread-timeout`, in milliseconds.
    stream_unread_millis: u32,
    /// When the caller's client certificate expires: the connection is shut down then.
    expires: Option<Instant>,
    /// Response bodies that handed hyper a frame (or were just made) and wait for it to ask again.
    owed: AtomicUsize,
    /// Counts every poll of a response body: that it moved tells a slow reader from none.
    progress: AtomicU64,
    /// Set when a request is answered 101, until the socket takes the stream's read limit.
    upgrading: AtomicBool,
}

struct ActivityState {
    in_flight: usize,
    phase: Phase,
    since: Instant,
    /// When the timer wakes next; `None` while it waits for the connection to leave *busy*. A
    /// phase whose deadline comes earlier wakes it.
    wake_by: Option<Instant>,
    /// While busy: the response bodies' progress when the timer last looked, and when.
    watched: Option<(u64, Instant)>,
}

/// One request in flight, until its response body is sent or dropped.
struct InFlight(Arc<Activity>);

/// A response body that keeps its request in flight, and tells its connection's timer whether
/// hyper owes it a poll.
struct InFlightBody<B> {
    body: B,
    in_flight: InFlight,
    owed: bool,
}

/// The caller's socket, with what must live exactly as long as it: its `--max-connections` slot
/// and its count in the open-connections gauge.
struct Admitted {
    io: Box<TlsStream<TcpStream>>,
    /// Bytes read before HTTP was set up, handed to hyper first.
    first: Option<Vec<u8>>,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
    _open: ConnectionGuard,
}

impl Limit {
    /// The label value.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max-connections",
            Self::HeaderReadTimeout => "header-read-timeout",
            Self::HeaderSize => "header-size",
            Self::UnauthenticatedPerSource => "unauthenticated-per-source",
            Self::CertificateExpired => "certificate-expired",
            Self::IdleTimeout => "idle-timeout",
            Self::ResponseUnread => "response-unread",
            Self::Http2MaxStreams => "http2-max-streams",
        }
    }
}

impl Context {
    /// The HTTP/1.1 and HTTP/2 connection settings for `limits`.
    pub(super) fn new(tls: Arc<Watched<Serving>>, state: Arc<State>, limits: Limits) -> Self {
        let mut http1 = http1::Builder::new();
        // The head timer is ours (`Activity`), which tells reading a head from idling.
        http1
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            .max_buf_size(limits.max_header_bytes);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        // Extended CONNECT (RFC 8441) is let in so the classifier can refuse it as an upgrade with
        // 405, as the kubelet would, rather than h2 resetting the stream.
        // Flow control at the protocol's default (hyper's are 1 MiB and 400 KiB): a caller can make
        // the guard hold no more than 64 KiB of request body it has not read yet per connection
        // (none is read before the request is authorized), and a stream whose window the caller
        // keeps shut about 64 KiB of its response (plus the one chunk from the kubelet in hand,
        // which h2 takes whole). The kubelet's requests carry small bodies or none; responses
        // stream from a socket, which refills the buffer.
        http2
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(H2_WINDOW)
            .max_send_buf_size(H2_WINDOW as usize)
            .enable_connect_protocol()
            .max_concurrent_streams(limits.http2_max_streams)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            tls,
            state,
            limits,
            http1,
            http2,
        }
    }
}

/// Serves one accepted connection until it closes, a limit closes it, or shutdown does.
///
/// An async block, not an async fn: an async fn's future keeps its arguments and a moved copy of
/// each side by side, in every idle connection's task.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn's future holds each argument twice"
)]
pub(super) fn serve(
    context: Arc<Context>,
    tcp: TcpStream,
    addr: SocketAddr,
    slot: OwnedSemaphorePermit,
    admission: Ticket,
    mut open: Tracked,
) -> impl Future<Output = ()> {
    async move {
        let gauge = context.state.metrics.connection();
        // The serving configuration in force now: a rotated certificate applies from the next
        // accept.
        let serving = context.tls.current();
        let acceptor = TlsAcceptor::from(Arc::clone(&serving.config));
        // The handshake's state is boxed and the TLS stream comes out boxed, so what a
        // connection's task holds while it waits for the first bytes is pointers: the task was
        // 4.7 KiB, the handshake's state and a moved copy of the stream side by side in it.
        let accepted = tokio::select! {
            accepted = Box::pin(handshake(acceptor, tcp, addr, admission, (&context.tls, serving))) => accepted,
            () = open.draining() => None,
        };
        let Some((mut tls, peer)) = accepted else {
            return;
        };
        // Nothing of HTTP is built before the caller sends its first bytes: an idle connection
        // then costs its TLS state and this small task, not hyper's buffers (16 KiB) as well.
        let mut first = [0u8; FIRST_READ];
        let read = tokio::select! {
            read = tokio::time::timeout(context.limits.header_read_timeout, tls.read(&mut first)) => read,
            () = open.draining() => return,
        };
        let first = match read {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => first[..n].to_vec(),
            Ok(Err(e)) => {
                tracing::debug!(peer = %addr, error = %e, "connection failed before its first request");
                return;
            }
            Err(_) => {
                context
                    .state
                    .metrics
                    .limit_hit(Limit::HeaderReadTimeout.as_str());
                return;
            }
        };
        Box::pin(serve_http(context, tls, peer, first, slot, gauge, open)).await;
    }
}

/// Serves HTTP on a connection whose caller has sent `first`, until it closes.
async fn serve_http(
    context: Arc<Context>,
    tls: Box<TlsStream<TcpStream>>,
    peer: Arc<Peer>,
    first: Vec<u8>,
    slot: OwnedSemaphorePermit,
    gauge: ConnectionGuard,
    mut open: Tracked,
) {
    let addr = peer.addr;
    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::new(&context.limits, !http2, peer.expires));
    activity.read(first.len());
    let io = TokioIo::new(Admitted {
        io: tls,
        first: Some(first).filter(|first| !first.is_empty()),
        activity: Arc::clone(&activity),
        _slot: slot,
        _open: gauge,
    });
    let state = Arc::clone(&context.state);
    let in_flight = Arc::clone(&activity);
    let service = service_fn(move |request| {
        let (busy, at_limit) = Activity::begin(&in_flight);
        if at_limit {
            state.metrics.limit_hit(Limit::Http2MaxStreams.as_str());
        }
        let (state, peer) = (Arc::clone(&state), Arc::clone(&peer));
        async move {
            let response = proxy::handle(&state, &peer, request).await;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                busy.0.upgrading.store(true, Ordering::Release);
            }
            Ok::<_, Infallible>(response.map(|body| InFlightBody::new(body, busy)))
        }
    });
    let metrics = &context.state.metrics;
    // Each protocol's connection in its own allocation of its own size: in one future the
    // HTTP/1.1 connection took the HTTP/2 one's 8.9 KiB.
    if http2 {
        let connection = context.http2.serve_connection(io, service);
        Box::pin(drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            &mut open,
            metrics,
            addr,
        ))
        .await;
    } else {
        let connection = context.http1.serve_connection(io, service).with_upgrades();
        Box::pin(drive(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            &mut open,
            metrics,
            addr,
        ))
        .await;
    }
}

/// Polls a connection to its end, shutting it down gracefully when shutdown starts or it idles
/// too long, closing it when a head is too slow or the grace period ends.
async fn drive<C>(
    connection: C,
    graceful: impl FnOnce(Pin<&mut C>),
    activity: &Activity,
    open: &mut Tracked,
    metrics: &Metrics,
    addr: SocketAddr,
) where
    C: Future<Output = Result<(), hyper::Error>>,
{
    let mut connection = pin!(connection);
    let limit = tokio::select! {
        ended = connection.as_mut() => return ended_with(ended, metrics, addr),
        () = open.draining() => None,
        limit = activity.expired() => Some(limit),
    };
    if let Some(limit) = limit {
        metrics.limit_hit(limit.as_str());
        tracing::debug!(peer = %addr, limit = limit.as_str(), "connection limit hit");
        match limit {
            // Closed without an answer, as Go's server does: the caller is not reading one.
            Limit::HeaderReadTimeout | Limit::ResponseUnread => return,
            // Closed at once: a response still streaming (a followed log) ends with it.
            Limit::CertificateExpired => return,
            _ => {}
        }
    }
    graceful(connection.as_mut());
    // Shutdown lets requests in flight finish within its grace period; an idle connection's
    // caller gets a head's time to let the connection close.
    let bound = async {
        match limit {
            Some(_) => tokio::time::sleep(activity.header_read_timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        ended = connection.as_mut() => ended_with(ended, metrics, addr),
        () = open.closing() => {
            tracing::debug!(peer = %addr, "closed at the end of the shutdown grace period");
        }
        () = bound => {
            tracing::debug!(peer = %addr, "closed: the graceful shutdown did not finish");
        }
    }
}

/// Logs how a connection ended and counts an oversized head.
fn ended_with(ended: Result<(), hyper::Error>, metrics: &Metrics, addr: SocketAddr) {
    let Err(e) = ended else {
        return;
    };
    if e.is_parse_too_large() {
        metrics.limit_hit(Limit::HeaderSize.as_str());
    }
    tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
}

/// TCP keep-alive as Go's listeners (the kubelet's among them) set it on every connection they
/// accept: a probe after 15 s of silence, every 15 s, nine unanswered and the kernel closes the
/// connection. A caller that vanished (a node that lost power, a dropped NAT entry) then gives
/// back its slot within about 2.5 minutes, also while its followed log is quiet and nothing is
/// sent that could go unacknowledged. Not an upgraded stream's: from its `101` on,
/// `TCP_USER_TIMEOUT` (`--stream-unread-timeout`) decides when unanswered probes close it.
fn keep_alive(tcp: &TcpStream) {
    use rustix::net::sockopt;
    let set = sockopt::set_socket_keepalive(tcp, true)
        .and_then(|()| sockopt::set_tcp_keepidle(tcp, KEEP_ALIVE))
        .and_then(|()| sockopt::set_tcp_keepintvl(tcp, KEEP_ALIVE))
        .and_then(|()| sockopt::set_tcp_keepcnt(tcp, KEEP_ALIVE_PROBES));
    if let Err(e) = set {
        tracing::debug!(error = %e, "could not turn TCP keep-alive on");
    }
}

/// Completes the TLS handshake and reads what the connection proves about the caller.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    admission: Ticket,
    (watched, serving): (&Arc<Watched<Serving>>, Arc<Serving>),
) -> Option<(Box<TlsStream<TcpStream>>, Arc<Peer>)> {
    let _ = tcp.set_nodelay(true);
    keep_alive(&tcp);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let chain = tls.get_ref().1.peer_certificates();
            let certificate = x509::peer_identity(chain);
            let trust = match (&certificate, chain) {
                (PeerCertificate::Identity { .. }, Some(chain)) => {
                    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
                    Some(Box::new(CallerTrust::new(
                        chain,
                        Arc::clone(watched),
                        serving,
                        resumed,
                    )))
                }
                _ => None,
            };
            // HTTP/1.1 requests come one at a time: they share one kubelet connection.
            let http1 = tls.get_ref().1.alpn_protocol() != Some(b"h2");
            Some((
                Box::new(tls),
                Arc::new(Peer {
                    addr,
                    expires: certificate.expires(),
                    certificate,
                    trust,
                    admission,
                    lane: http1.then(forward::Lane::default),
                }),
            ))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            None
        }
    }
}

impl Activity {
    /// A fresh connection: an HTTP/1.1 one is reading its first head, an HTTP/2 one idles.
    fn new(limits: &Limits, http1: bool, expires: Option<Instant>) -> Self {
        let phase = if http1 {
            Phase::ReadingHead
        } else {
            Phase::Idle
        };
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                phase,
                since: Instant::now(),
                wake_by: None,
                watched: None,
            }),
            awaiting_head: AtomicBool::new(false),
            changed: Notify::new(),
            http1,
            stream_limit: limits.http2_max_streams as usize,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            stream_unread_millis: limits.stream_unread_millis,
            expires,
            owed: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            upgrading: AtomicBool::new(false),
        }
    }

    /// Marks a request in flight; also says whether that brought an HTTP/2 connection to its
    /// stream limit.
    fn begin(this: &Arc<Self>) -> (InFlight, bool) {
        let in_flight = this.update(|state| {
            state.in_flight += 1;
            state.phase = Phase::Busy;
            state.in_flight
        });
        let at_limit = !this.http1 && in_flight == this.stream_limit;
        (InFlight(Arc::clone(this)), at_limit)
    }

    /// A read of `bytes` from the socket: the first bytes after an idle spell start a head.
    fn read(&self, bytes: usize) {
        if bytes > 0 && self.awaiting_head.load(Ordering::Acquire) {
            self.update(|state| {
                if state.phase == Phase::Idle {
                    state.phase = Phase::ReadingHead;
                }
            });
        }
    }

    /// Changes the state under the lock and stamps a phase change; wakes the timer only if the
    /// new phase's deadline comes before the timer would wake.
    fn update<R>(&self, change: impl FnOnce(&mut ActivityState) -> R) -> R {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = state.phase;
        let result = change(&mut state);
        if state.phase != before {
            let now = Instant::now();
            state.since = now;
            self.awaiting_head
                .store(self.http1 && state.phase == Phase::Idle, Ordering::Release);
            if let Some((_, deadline)) = self.deadline(state.phase, now)
                && state.wake_by.is_none_or(|at| deadline < at)
            {
                self.changed.notify_waiters();
            }
        }
        result
    }

    /// The limit `phase` runs into, and when, had it begun at `since`; `None` when busy.
    fn deadline(&self, phase: Phase, since: Instant) -> Option<(Limit, Instant)> {
        match phase {
            Phase::Busy => None,
            Phase::Idle => Some((Limit::IdleTimeout, since + self.idle_timeout)),
            Phase::ReadingHead => {
                Some((Limit::HeaderReadTimeout, since + self.header_read_timeout))
            }
        }
    }

    /// While busy: when to look again at whether the responses moved, or, if every request in
    /// flight has a response waiting for hyper and none moved since the last look, a deadline
    /// already passed. Looks are `--idle-timeout` apart, so an unread connection is cut after one
    /// to two of them. One stalled HTTP/2 stream beside a quiet followed log, or beside streams
    /// that move, is not cut: the connection is still in use.
    fn watch(&self, state: &mut ActivityState, now: Instant) -> Option<(Limit, Instant)> {
        let progress = self.progress.load(Ordering::Acquire);
        let owed = self.owed.load(Ordering::Acquire) >= state.in_flight.max(1);
        match state.watched {
            Some((seen, at)) if seen == progress && owed => {
                if at + self.idle_timeout <= now {
                    return Some((Limit::ResponseUnread, now));
                }
            }
            _ => state.watched = Some((progress, now)),
        }
        state
            .watched
            .map(|(_, at)| (Limit::ResponseUnread, at + self.idle_timeout))
    }

    /// Resolves with the limit the connection ran into: its certificate expired, or a phase ran
    /// over its timeout (the phase found when the timer wakes, past the deadline that phase has
    /// from the moment it began). One sleep serves both.
    async fn expired(&self) -> Limit {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            let wake = {
                let mut state = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let now = Instant::now();
                if self.expires.is_some_and(|at| at <= now) {
                    return Limit::CertificateExpired;
                }
                let deadline = match state.phase {
                    Phase::Busy => self.watch(&mut state, now),
                    _ => {
                        state.watched = None;
                        self.deadline(state.phase, state.since)
                    }
                };
                if let Some((limit, deadline)) = deadline
                    && deadline <= now
                {
                    return limit;
                }
                // Idle on HTTP/1.1, a head may start at any moment without waking this timer:
                // look again within a head's time, which is before that head's deadline.
                let head = (state.phase == Phase::Idle && self.http1)
                    .then(|| now + self.header_read_timeout);
                state.wake_by = match (deadline, head) {
                    (Some((_, deadline)), Some(head)) => Some(deadline.min(head)),
                    (deadline, _) => deadline.map(|(_, at)| at),
                };
                // The certificate's expiry bounds every sleep, busy too.
                match (state.wake_by, self.expires) {
                    (Some(at), Some(expires)) => Some(at.min(expires)),
                    (at, expires) => at.or(expires),
                }
            };
            match wake {
                None => changed.await,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = changed => {}
                    }
                }
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.update(|state| {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.phase = Phase::Idle;
            }
        });
    }
}

impl<B> InFlightBody<B> {
    /// A response body just handed to hyper, which owes it a first poll.
    fn new(body: B, in_flight: InFlight) -> Self {
        in_flight.0.owed.fetch_add(1, Ordering::AcqRel);
        Self {
            body,
            in_flight,
            owed: true,
        }
    }
}

impl<B> Drop for InFlightBody<B> {
    fn drop(&mut self) {
        if self.owed {
            self.in_flight.0.owed.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<B: Body + Unpin> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let activity = &this.in_flight.0;
        activity.progress.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // A frame handed over waits for hyper to write it and ask again; a pending body waits
        // on the kubelet, and an ended one on nothing.
        let owed = matches!(polled, Poll::Ready(Some(Ok(_))));
        if owed != this.owed {
            this.owed = owed;
            if owed {
                activity.owed.fetch_add(1, Ordering::AcqRel);
            } else {
                activity.owed.fetch_sub(1, Ordering::AcqRel);
            }
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

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(first) = &mut this.first {
            let n = first.len().min(buf.remaining());
            buf.put_slice(&first[..n]);
            first.drain(..n);
            if first.is_empty() {
                this.first = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.activity
            .read(buf.filled().len().saturating_sub(before));
        polled
    }
}

impl Admitted {
    /// Once a request is answered 101, before the answer is written: from then on the kernel
    /// closes the connection (`ETIMEDOUT`) when what the guard sent stays unacknowledged, or its
    /// window shut, for `--stream-unread-timeout` (`TCP_USER_TIMEOUT`, which bounds zero-window
    /// probing too since Linux 5.11). That is a caller that stopped reading an exec, attach or
    /// port-forward, or went away without a word; one that reads on reopens its window.
    fn arm_upgraded(&mut self) {
        let activity = &self.activity;
        if activity.upgrading.load(Ordering::Relaxed)
            && activity.upgrading.swap(false, Ordering::Acquire)
        {
            let millis = activity.stream_unread_millis;
            if let Err(e) = rustix::net::sockopt::set_tcp_user_timeout(self.io.get_ref().0, millis)
            {
                tracing::warn!(error = %e, "could not bound how long an upgraded stream's caller may read nothing");
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.arm_upgraded();
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.arm_upgraded();
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
