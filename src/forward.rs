//! Forwarding an authorized request to the kubelet as the guard's own identity.
//!
//! - Header hygiene (RFC 9110 §7.6.1): hop-by-hop fields and the fields `Connection` names are
//!   dropped both ways, and so is every inbound credential or identity header (`Authorization`,
//!   `Proxy-Authorization`, `Impersonate-*`, `X-Remote-*`, a bearer token sent as a WebSocket
//!   subprotocol) and every claim about the caller's address the guard cannot vouch for
//!   (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Client-IP`); for an upgrade,
//!   `Connection: Upgrade` and the caller's `Upgrade` are put back. Everything else, and the
//!   request-target with its query, goes through byte for byte.
//! - Bodies stream both ways; nothing is buffered.
//! - Upgrades (RFC 9110 §7.8): the kubelet's 101 goes back unchanged, then the two upgraded
//!   connections are spliced with `copy_bidirectional`, no per-frame work. The splice is tracked by
//!   graceful shutdown and closed at the end of `--shutdown-grace-period`.
//! - An HTTP/1.1 caller's requests come one at a time, so its connection keeps one kubelet
//!   connection for them (a [`Lane`]): no pool between them, no more kubelet connections than
//!   callers. Upgrades, HTTP/2 callers and observe mode's caller credential use the pooled client,
//!   which keeps at most 32 idle kubelet connections after a burst.
//! - The TLS files towards the kubelet are polled: when they change, new connections use a new
//!   pooled client and lanes reconnect, while requests in flight finish on the old connections.
//! - The client speaks HTTP/1.1 only (HTTP/2 cannot carry `Upgrade`) and never follows redirects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::UpstreamSettings;
use crate::kubelet_api::BEARER_SUBPROTOCOL;
use crate::reload::{FileError, Poll, Watched};
use crate::shutdown::{Drain, Tracked};
use crate::tls::{self, UpstreamCredential};

/// The response body type of the whole proxy: the kubelet's streamed body or one of ours.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Why the kubelet's answer could not be had, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Connecting or talking to the kubelet failed: the kubelet's fault (502).
    #[error("the kubelet is unreachable")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No response headers within `--upstream-timeout`: the kubelet's fault (504).
    #[error("the kubelet did not answer within {0:?}")]
    Timeout(Duration),
    /// The kubelet answered 401 to the guard's own credential: its client CA or the guard's
    /// certificate is wrong (502), not the caller's credential, which never reached it.
    #[error("the kubelet refused the guard's own credential (401)")]
    Refused,
    /// The guard could not build the request it meant to send: its own fault (500).
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// Displays an error's causes, outermost first, for a log line.
pub struct Causes<'a>(pub &'a dyn std::error::Error);

/// Whose credential a forwarded request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// The guard's own (client certificate or token file): every enforced request.
    Guard,
    /// The caller's own bearer token, over a connection without the guard's certificate: `observe`
    /// mode, where the kubelet's native authorization stays in force.
    Caller,
}

/// What forwarding produced: the kubelet's response, and for a relayed upgrade the task that
/// copies the stream and reports its totals when either side closes.
pub struct Forwarded {
    /// The response to send back.
    pub response: Response<Body>,
    /// The splice task of an upgraded connection.
    pub stream: Option<tokio::task::JoinHandle<(Relayed, Tracked)>>,
}

/// Totals of one upgraded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes copied from the caller to the kubelet.
    pub to_kubelet: u64,
    /// Bytes copied from the kubelet to the caller.
    pub to_caller: u64,
    /// How long the stream was open after the 101.
    pub duration: Duration,
    /// How the stream ended.
    pub end: StreamEnd,
}

/// How an upgraded stream ended: which side's connection ended first, whether cleanly (EOF) or
/// abruptly (a reset, a TLS connection closed without `close_notify`), or why the guard ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The caller's connection ended first.
    CallerClosed,
    /// The kubelet's connection ended first (the command exited, or it answered a close).
    KubeletClosed,
    /// The guard closed it at the end of the shutdown grace period.
    Shutdown,
    /// The guard closed it when the caller's client certificate expired.
    CertificateExpired,
    /// The caller took nothing the guard sent it for `--stream-unread-timeout`: it stopped
    /// reading, or went away without a word.
    CallerUnread,
    /// A connection failed otherwise, or the upgrade never completed after the 101.
    Error,
}

impl StreamEnd {
    /// The audit annotation value: `caller-closed`, `kubelet-closed`, `shutdown`,
    /// `certificate-expired`, `caller-unread` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerClosed => "caller-closed",
            Self::KubeletClosed => "kubelet-closed",
            Self::Shutdown => "shutdown",
            Self::CertificateExpired => "certificate-expired",
            Self::CallerUnread => "caller-unread",
            Self::Error => "error",
        }
    }
}

/// The kubelet behind the guard and the pooled clients that reach it.
pub struct Upstream {
    clients: Arc<Watched<Clients>>,
    authority: http::uri::Authority,
    /// The `Host` a lane's requests carry, as the pooled client writes it.
    host: HeaderValue,
    server_name: rustls::pki_types::ServerName<'static>,
    token: Option<Arc<Watched<HeaderValue>>>,
    timeout: Duration,
    streams: Drain,
    /// Counts the streams whose caller took nothing for `--stream-unread-timeout`.
    unread: prometheus::IntCounter,
}

/// The pooled clients built from one generation of the upstream TLS files.
struct Clients {
    /// With the guard's credential.
    guard: Client<HttpsConnector<HttpConnector>, Incoming>,
    /// The guard's TLS configuration, for the connections of lanes.
    lane_tls: tokio_rustls::TlsConnector,
    /// Without a client certificate, for `--mode=observe`.
    callers: Option<Client<HttpsConnector<HttpConnector>, Incoming>>,
}

/// Header fields that never cross the proxy, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Claims about the caller's address and the request's way here: the guard does not vouch for them.
const FORWARDING: [HeaderName; 3] = [
    header::FORWARDED,
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
];

/// Caller credentials and identity assertions the kubelet must never see from a caller.
const CREDENTIALS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::HOST,
];

impl Upstream {
    /// Loads the upstream TLS files and builds the client for `settings`, and with `callers` a
    /// second client without a client certificate for requests forwarded with the caller's token.
    /// Upgraded streams are tracked by `streams`.
    pub fn new(
        settings: &UpstreamSettings,
        callers: bool,
        streams: Drain,
        expiry: Option<prometheus::IntGauge>,
        unread: prometheus::IntCounter,
    ) -> Result<Self, FileError> {
        let token = match &settings.credential {
            UpstreamCredential::TokenFile(path) => Some(Arc::new(Watched::load(
                "--upstream-token-file",
                path,
                bearer_header,
            )?)),
            UpstreamCredential::ClientCert { .. } => None,
        };
        let (ca, credential) = (settings.ca.clone(), settings.credential.clone());
        let server_name = settings.server_name.clone();
        let resolved = server_name.clone();
        let sources = tls::reload::upstream_sources(&ca, &credential);
        let clients = Watched::load_with(sources, move |files| {
            let tls = tls::reload::upstream(&ca, &credential, files, callers, expiry.as_ref())?;
            let client = |tls: rustls::ClientConfig| {
                // Nagle off, as on the callers' side: an exec keystroke or a small request body
                // must not wait for the kubelet's delayed ACK.
                let mut tcp = HttpConnector::new();
                tcp.set_nodelay(true);
                tcp.enforce_http(false);
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .with_server_name_resolver(FixedServerNameResolver::new(resolved.clone()))
                    .enable_http1()
                    .wrap_connector(tcp);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(KEPT_IDLE)
                    .pool_max_idle_per_host(POOLED_IDLE)
                    .pool_timer(TokioTimer::new())
                    .build(connector)
            };
            let mut lane_tls = tls.guard.clone();
            lane_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Clients {
                guard: client(tls.guard),
                lane_tls: tokio_rustls::TlsConnector::from(Arc::new(lane_tls)),
                callers: tls.callers.map(client),
            })
        })?;
        Ok(Self {
            clients: Arc::new(clients),
            authority: settings.authority.clone(),
            host: settings.host.clone(),
            server_name,
            token,
            timeout: settings.timeout,
            streams,
            unread,
        })
    }

    /// The polled files: the TLS files, and the token file if that is the credential.
    pub fn watched(&self) -> Vec<Arc<dyn Poll>> {
        let mut watched: Vec<Arc<dyn Poll>> = vec![self.clients.clone()];
        if let Some(token) = &self.token {
            watched.push(token.clone());
        }
        watched
    }

    /// Counts a response still on its way to a caller, so that shutdown's drain waits for what it
    /// records when it ends (an HTTP/2 stream's body lives in a task of its own, outside its
    /// connection's).
    pub fn track(&self) -> Tracked {
        self.streams.track()
    }

    /// The polled TLS files, to poll at once when the guard renewed its own certificate.
    pub fn client_files(&self) -> Arc<dyn Poll> {
        self.clients.clone()
    }

    /// Sends `request` to the kubelet with `credential` and returns its response, relaying an
    /// upgrade if the kubelet switches protocols. `upgrade` says whether the caller asked for one;
    /// `lane` is the caller connection's own kubelet connection, if it has one.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        upgrade: bool,
        credential: Credential,
        lane: Option<&Lane>,
        expires: Option<tokio::time::Instant>,
    ) -> Result<Forwarded, ForwardError> {
        let inbound_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        // The caller's own credential, kept aside for observe mode before hygiene drops it.
        let caller = (credential == Credential::Caller).then(|| {
            let protocols: Vec<HeaderValue> = parts
                .headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .cloned()
                .collect();
            (parts.headers.get(header::AUTHORIZATION).cloned(), protocols)
        });
        // The caller connection's own kubelet connection carries the guard's credential only,
        // and an upgrade takes its connection away: those use the pool.
        let lane = lane.filter(|_| credential == Credential::Guard && !upgrade);
        // The target as received, never re-parsed: what was classified is what is sent. On a
        // lane in origin-form with `Host`, as written on the wire; the pool takes it absolute.
        let mut uri = http::uri::Parts::default();
        if lane.is_none() {
            uri.scheme = Some(http::uri::Scheme::HTTPS);
            uri.authority = Some(self.authority.clone());
        }
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let uri = http::Uri::from_parts(uri)
            .map_err(|_| ForwardError::Internal("the upstream URI cannot be built"))?;
        let clients = self.clients.current();
        // Never pair the caller's token with the guard's certificate: the kubelet would believe
        // the certificate. Without a client for callers (enforce mode) such a request fails.
        let client = match credential {
            Credential::Guard => &clients.guard,
            Credential::Caller => clients.callers.as_ref().ok_or(ForwardError::Internal(
                "no connection without the guard's identity outside observe mode",
            ))?,
        };
        let mut headers = std::mem::take(&mut parts.headers);
        strip_request(&mut headers, upgrade);
        if lane.is_some() {
            headers.insert(header::HOST, self.host.clone());
        }
        match caller {
            None => {
                if let Some(token) = &self.token {
                    headers.insert(header::AUTHORIZATION, HeaderValue::clone(&token.current()));
                }
            }
            // Observe mode: the caller's own credential, in whichever form it came, decides.
            Some((authorization, protocols)) => {
                if let Some(authorization) = authorization {
                    headers.insert(header::AUTHORIZATION, authorization);
                }
                headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
                for value in protocols {
                    headers.append(header::SEC_WEBSOCKET_PROTOCOL, value);
                }
            }
        }
        let mut outbound = Request::new(body);
        *outbound.method_mut() = parts.method;
        *outbound.uri_mut() = uri;
        *outbound.version_mut() = http::Version::HTTP_11;
        *outbound.headers_mut() = headers;

        let exchange = async {
            match lane {
                Some(lane) => self.through(lane, Arc::clone(&clients), outbound).await,
                None => client.request(outbound).await.map_err(unreachable),
            }
        };
        let mut response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(self.timeout))??;
        if credential == Credential::Guard && response.status() == StatusCode::UNAUTHORIZED {
            return Err(ForwardError::Refused);
        }
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let stream = match inbound_upgrade {
            Some(inbound) if switching => Some(tokio::spawn(splice(
                inbound,
                hyper::upgrade::on(&mut response),
                self.streams.track(),
                expires,
                self.unread.clone(),
            ))),
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        strip_response(&mut parts.headers, switching && upgrade);
        Ok(Forwarded {
            response: Response::from_parts(parts, body.boxed()),
            stream,
        })
    }

    /// One exchange on `lane`'s kubelet connection, made now if it has none from this generation
    /// of the TLS files, and kept for the caller connection's next request.
    async fn through(
        &self,
        lane: &Lane,
        clients: Arc<Clients>,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, ForwardError> {
        // A kept connection that is still open once its last exchange is over, else a new one.
        let mut kept = lane.take(&clients);
        if let Some(sender) = &mut kept
            && sender.ready().await.is_err()
        {
            kept = None;
        }
        let reused = kept.is_some();
        let mut sender = match kept {
            Some(sender) => sender,
            None => self.connect(&clients).await?,
        };
        let request = match sender.try_send_request(request).await {
            Ok(response) => {
                lane.keep(clients, sender);
                return Ok(response);
            }
            Err(mut e) => match e.take_message() {
                // Never written: the kept connection closed under it. Once more, on a new one.
                Some(request) if reused => request,
                _ => return Err(unreachable(e.into_error())),
            },
        };
        let mut sender = self.connect(&clients).await?;
        let response = sender.send_request(request).await.map_err(unreachable)?;
        lane.keep(clients, sender);
        Ok(response)
    }

    /// A GET of `path` as the guard itself, on a connection of its own, for the guard's checks of
    /// its own kubelet (the lockdown's read of `/configz`): the status and at most `limit` bytes of
    /// body, within `timeout`. Never carries anything of a caller's.
    pub async fn get_as_guard(
        &self,
        path: &'static str,
        limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ForwardError> {
        let clients = self.clients.current();
        let mut request = Request::get(path)
            .header(header::HOST, self.host.clone())
            .header(header::USER_AGENT, "kubelet-guard")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|_| ForwardError::Internal("the guard's own request cannot be built"))?;
        if let Some(token) = &self.token {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, HeaderValue::clone(&token.current()));
        }
        let exchange = async {
            let mut sender = self.connect(&clients).await?;
            let response = sender.send_request(request).await.map_err(unreachable)?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(ForwardError::Unreachable)?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ForwardError::Timeout(timeout))?
    }

    /// A new kubelet connection for a lane or the guard's own request: TCP without Nagle, TLS with
    /// the guard's credential, HTTP/1.1 driven by a task of its own until its last sender is gone.
    async fn connect<B>(&self, clients: &Clients) -> Result<http1::SendRequest<B>, ForwardError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tcp = tokio::net::TcpStream::connect(self.authority.as_str())
            .await
            .map_err(unreachable)?;
        tcp.set_nodelay(true).map_err(unreachable)?;
        let tls = clients
            .lane_tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(unreachable)?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(unreachable)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "kubelet connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// How long an idle kubelet connection is kept for reuse: less than the kubelet's own idle
/// timeout (90 s, its `http.Server`'s `IdleTimeout`), so a request is never written to a
/// connection the kubelet is closing at that moment.
const KEPT_IDLE: Duration = Duration::from_secs(60);

/// How many idle kubelet connections the pooled client keeps, for HTTP/2 callers, upgrades and
/// observe mode's callers: every stream of an HTTP/2 burst takes a kubelet connection of its own
/// (HTTP/1.1 carries one exchange at a time), and the ones past this close once their exchange is
/// over instead of holding memory for [`KEPT_IDLE`].
const POOLED_IDLE: usize = 32;

/// The kubelet connection one HTTP/1.1 caller connection keeps for its requests, which come one
/// at a time: taken for an exchange, put back once the kubelet's response head is in (the next
/// request waits for its body to end), dropped with the caller's connection.
#[derive(Default)]
pub struct Lane(std::sync::Mutex<Option<Kept>>);

/// A kept kubelet connection, the clients it was made from, and when it was put back: at its last
/// response head, so one whose last body streamed for a while is made anew a little early, never
/// reused late.
struct Kept {
    made_from: Arc<Clients>,
    sender: http1::SendRequest<Incoming>,
    at: std::time::Instant,
}

impl Lane {
    /// The kept connection, if it was made from `clients`, is still open, and has not been idle
    /// for [`KEPT_IDLE`].
    fn take(&self, clients: &Arc<Clients>) -> Option<http1::SendRequest<Incoming>> {
        let kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()?;
        (Arc::ptr_eq(&kept.made_from, clients)
            && !kept.sender.is_closed()
            && kept.at.elapsed() < KEPT_IDLE)
            .then_some(kept.sender)
    }

    fn keep(&self, made_from: Arc<Clients>, sender: http1::SendRequest<Incoming>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Kept {
            made_from,
            sender,
            at: std::time::Instant::now(),
        });
    }
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lane")
    }
}

/// A failure to reach the kubelet, with its cause.
fn unreachable(error: impl std::error::Error + Send + Sync + 'static) -> ForwardError {
    ForwardError::Unreachable(Box::new(error))
}

/// The headers sent to the kubelet for a caller's request headers.
pub fn request_headers(inbound: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut headers = inbound.clone();
    strip_request(&mut headers, upgrade);
    headers
}

/// Header hygiene towards the kubelet, in place: hop-by-hop fields, credentials, identity
/// assertions, forwarding claims and bearer subprotocols go; an upgrade keeps `Connection:
/// Upgrade` and the caller's `Upgrade`.
///
/// One pass over the names decides what goes, and only what is there is removed: a request
/// carries a handful of fields, and a lookup per name that might be there cost more than the
/// rest of the hygiene (measured with callgrind, issue 11).
fn strip_request(headers: &mut HeaderMap, upgrade: bool) {
    let upgrades: Vec<HeaderValue> = if upgrade {
        headers.get_all(header::UPGRADE).iter().cloned().collect()
    } else {
        Vec::new()
    };
    let mut subprotocols = false;
    let mut dropped = Vec::new();
    for name in headers.keys() {
        subprotocols |= name == header::SEC_WEBSOCKET_PROTOCOL;
        if HOP_BY_HOP.contains(name)
            || CREDENTIALS.contains(name)
            || FORWARDING.contains(name)
            || is_assertion(name)
        {
            dropped.push(name.clone());
        }
    }
    remove(headers, dropped);
    if subprotocols {
        without_bearer_subprotocol(headers);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        for value in upgrades {
            headers.append(header::UPGRADE, value);
        }
    }
}

/// Identity assertions and forwarding claims named by prefix: what the guard did not see for
/// itself, it does not pass on as if it vouched for it.
fn is_assertion(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("impersonate-")
        || name.starts_with("x-remote-")
        || name.starts_with("x-forwarded-")
}

/// Removes `dropped` and every field that `Connection` names (read before it goes itself).
fn remove(headers: &mut HeaderMap, mut dropped: Vec<HeaderName>) {
    if dropped.contains(&header::CONNECTION) {
        dropped.extend(nominated(headers));
    }
    for name in dropped {
        headers.remove(name);
    }
}

/// Drops the bearer tokens a WebSocket caller may send as subprotocols
/// (`base64url.bearer.authorization.k8s.io.<token>`), keeping the other subprotocols in order.
fn without_bearer_subprotocol(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect();
    if values.is_empty() {
        return;
    }
    // A value that is not visible ASCII cannot be split safely: dropped whole, token or not.
    let kept: Vec<&str> = values
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|protocol| !protocol.is_empty() && !protocol.starts_with(BEARER_SUBPROTOCOL))
        .collect();
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = HeaderValue::from_str(&kept.join(", "))
        && !kept.is_empty()
    {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
}

/// The headers sent back to the caller.
pub fn response_headers(upstream: &HeaderMap, switching: bool) -> HeaderMap {
    let mut headers = upstream.clone();
    strip_response(&mut headers, switching);
    headers
}

/// Header hygiene towards the caller, in place; a 101 keeps its `Connection` and `Upgrade`.
fn strip_response(headers: &mut HeaderMap, switching: bool) {
    let kept: Vec<(HeaderName, HeaderValue)> = if switching {
        [header::CONNECTION, header::UPGRADE]
            .into_iter()
            .flat_map(|name| {
                headers
                    .get_all(&name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    } else {
        Vec::new()
    };
    let dropped = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name) || *name == header::PROXY_AUTHENTICATE)
        .cloned()
        .collect();
    remove(headers, dropped);
    for (name, value) in kept {
        headers.append(name, value);
    }
}

/// The fields a `Connection` header names. Split as bytes: a value with one non-ASCII byte must
/// not keep every name it lists alive (found by the header_hygiene fuzz target).
fn nominated(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect()
}

/// Copies bytes both ways between the caller's and the kubelet's upgraded connections until
/// either side closes (then the other is closed too, as Kubernetes' own upgrade proxy does: a
/// caller that kept its end of a finished exec would otherwise keep it, and its connection slot,
/// for ever), the caller's socket gives up on a caller that takes nothing (`caller-unread`:
/// `server::connection` sets `TCP_USER_TIMEOUT` at the 101), or shutdown's grace period ends, and
/// reports the totals and how it ended.
///
/// The stream stays counted by graceful shutdown (`open` is handed back) until whoever reads the
/// totals lets go: the audit writers stop only after the drain, so the stream's closing event,
/// recorded from the totals, is still written when shutdown closed the stream.
async fn splice(
    inbound: hyper::upgrade::OnUpgrade,
    outbound: hyper::upgrade::OnUpgrade,
    mut open: Tracked,
    expires: Option<tokio::time::Instant>,
    unread: prometheus::IntCounter,
) -> (Relayed, Tracked) {
    let started = std::time::Instant::now();
    let (to_kubelet, to_caller, end) = match tokio::try_join!(inbound, outbound) {
        Ok((inbound, outbound)) => {
            // Both sides report the first connection to end; the first report wins.
            let first = Arc::new(std::sync::OnceLock::new());
            let (mut from_caller, mut to_caller) =
                tokio::io::split(Metered::new(TokioIo::new(inbound), Side::Caller, &first));
            let (mut from_kubelet, mut to_kubelet) =
                tokio::io::split(Metered::new(TokioIo::new(outbound), Side::Kubelet, &first));
            let end = tokio::select! {
                copied = one_way(&mut from_caller, &mut to_kubelet) => ended(copied, &first),
                copied = one_way(&mut from_kubelet, &mut to_caller) => ended(copied, &first),
                () = open.closing() => {
                    tracing::info!("upgraded stream closed at the end of the shutdown grace period");
                    StreamEnd::Shutdown
                }
                () = until(expires) => {
                    tracing::info!("upgraded stream closed: the caller's client certificate expired");
                    StreamEnd::CertificateExpired
                }
            };
            if !matches!(end, StreamEnd::Shutdown | StreamEnd::CertificateExpired) {
                // One side ended: the other hears it as a clean close (`close_notify`, then FIN),
                // given as long as Go's tls.Conn.Close gives it, and never past shutdown's grace.
                let clean_close = tokio::time::timeout(CLOSE_NOTIFY, async {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_caller).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_kubelet).await;
                });
                tokio::select! {
                    _ = clean_close => {}
                    () = open.closing() => {}
                }
            }
            if end == StreamEnd::CallerUnread {
                unread.inc();
            }
            let inbound = from_caller.unsplit(to_caller);
            let outbound = from_kubelet.unsplit(to_kubelet);
            (inbound.read, outbound.read, end)
        }
        Err(e) => {
            tracing::warn!(error = %e, "upgrade failed after 101");
            (0, 0, StreamEnd::Error)
        }
    };
    let relayed = Relayed {
        to_kubelet,
        to_caller,
        duration: started.elapsed(),
        end,
    };
    (relayed, open)
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One of the two connections of an upgraded stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Caller,
    Kubelet,
}

/// How long the side of a stream that did not end it gets to take its clean close.
const CLOSE_NOTIFY: Duration = Duration::from_secs(5);

/// Copies what `from` sends to `to` until `from` ends, then ends `to`'s sending side.
async fn one_way(
    from: &mut (impl tokio::io::AsyncRead + Unpin),
    to: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> std::io::Result<()> {
    tokio::io::copy(from, to).await?;
    tokio::io::AsyncWriteExt::shutdown(to).await
}

/// How a stream ended once one direction's copy is over: as its first connection to end says.
fn ended(copied: std::io::Result<()>, first: &std::sync::OnceLock<StreamEnd>) -> StreamEnd {
    if let Err(e) = &copied {
        tracing::debug!(error = %e, "upgraded stream ended with an error");
    }
    first.get().copied().unwrap_or(StreamEnd::Error)
}

impl Side {
    /// How a stream ends when this side's connection is the first to end, at its end of stream
    /// (`None`) or with an error of `kind`.
    fn end(self, error: Option<std::io::ErrorKind>) -> StreamEnd {
        match (self, error) {
            // The caller's socket gave up: `TCP_USER_TIMEOUT`, set on it at the 101.
            (Self::Caller, Some(std::io::ErrorKind::TimedOut)) => StreamEnd::CallerUnread,
            (_, Some(kind)) if !peer_went_away(kind) => StreamEnd::Error,
            (Self::Caller, _) => StreamEnd::CallerClosed,
            (Self::Kubelet, _) => StreamEnd::KubeletClosed,
        }
    }
}

/// Whether an I/O error on an upgraded connection means that its peer went away rather than
/// that the connection failed: a reset, an abort, a broken pipe, or a TLS peer that closed
/// without `close_notify` (rustls reports `UnexpectedEof`).
fn peer_went_away(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind;
    matches!(
        kind,
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// An upgraded connection that counts the bytes read from it, so a stream closed mid-copy still
/// reports what it relayed, and reports when it is the first of the two to end.
struct Metered<T> {
    io: T,
    read: u64,
    side: Side,
    first: Arc<std::sync::OnceLock<StreamEnd>>,
}

impl<T> Metered<T> {
    fn new(io: T, side: Side, first: &Arc<std::sync::OnceLock<StreamEnd>>) -> Self {
        Self {
            io,
            read: 0,
            side,
            first: Arc::clone(first),
        }
    }

    /// Notes how this connection ended, unless the other one ended first.
    fn ended<R>(&self, polled: &std::task::Poll<std::io::Result<R>>, eof: bool) {
        let error = match polled {
            std::task::Poll::Ready(Ok(_)) if eof => None,
            std::task::Poll::Ready(Err(e)) => Some(e.kind()),
            _ => return,
        };
        let _ = self.first.set(self.side.end(error));
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Metered<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.read += read as u64;
        // A read of nothing into room for something is the end of the stream.
        this.ended(&polled, read == 0 && buf.remaining() > 0);
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.ended(&polled, false);
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.ended(&polled, false);
        polled
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Parses a token file into the `Authorization` value the guard sends (marked sensitive, so it is
/// never printed).
fn bearer_header(bytes: &[u8]) -> Result<HeaderValue, String> {
    let token = std::str::from_utf8(bytes)
        .map_err(|_| "the token is not UTF-8".to_owned())?
        .trim();
    if token.is_empty() {
        return Err("the file is empty".into());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token has bytes a header cannot carry".to_owned())?;
    value.set_sensitive(true);
    Ok(value)
}

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut source = self.0.source();
        let mut first = true;
        while let Some(cause) = source {
            if !first {
                f.write_str(": ")?;
            }
            write!(f, "{cause}")?;
            first = false;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn credentials_and_identity_headers_never_reach_the_kubelet() {
        let inbound = map(&[
            ("authorization", "Bearer secret"),
            ("proxy-authorization", "Basic x"),
            ("impersonate-user", "admin"),
            ("impersonate-group", "system:masters"),
            ("impersonate-extra-scopes", "x"),
            ("impersonate-uid", "1"),
            ("x-remote-user", "admin"),
            ("x-remote-group", "system:masters"),
            ("host", "node:10250"),
            ("accept", "application/json"),
            ("x-custom", "kept"),
        ]);
        let outbound = request_headers(&inbound, false);
        let mut names: Vec<_> = outbound.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-custom"]);
    }

    #[test]
    fn a_connection_value_with_a_non_ascii_byte_still_drops_what_it_names() {
        let mut inbound = map(&[("x-private", "secret"), ("accept", "*/*")]);
        inbound.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-private, \x80").unwrap(),
        );
        let outbound = request_headers(&inbound, false);
        assert_eq!(
            outbound.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );
    }

    #[test]
    fn forwarding_claims_never_reach_the_kubelet() {
        let inbound = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-client-cert", "Hash=x"),
            ("forwarded", "for=10.0.0.1"),
            ("x-real-ip", "10.0.0.1"),
            ("x-client-ip", "10.0.0.1"),
            ("accept", "*/*"),
        ]);
        let outbound = request_headers(&inbound, false);
        assert_eq!(
            outbound.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["accept"]
        );
    }

    #[test]
    fn a_bearer_token_subprotocol_is_dropped_and_the_others_keep_their_order() {
        let inbound = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            (
                "sec-websocket-protocol",
                "base64url.bearer.authorization.k8s.io.c2VjcmV0, v5.channel.k8s.io",
            ),
            ("sec-websocket-protocol", "v4.channel.k8s.io"),
        ]);
        let outbound = request_headers(&inbound, true);
        assert_eq!(
            outbound
                .get_all("sec-websocket-protocol")
                .iter()
                .collect::<Vec<_>>(),
            ["v5.channel.k8s.io, v4.channel.k8s.io"]
        );
        let only_token = map(&[(
            "sec-websocket-protocol",
            "base64url.bearer.authorization.k8s.io.c2VjcmV0",
        )]);
        assert!(!request_headers(&only_token, true).contains_key("sec-websocket-protocol"));
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped() {
        let inbound = map(&[
            ("connection", "keep-alive, X-Private"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("x-private", "gone"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ]);
        let outbound = request_headers(&inbound, false);
        assert_eq!(
            outbound.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-stream-protocol-version"]
        );
    }

    #[test]
    fn the_token_file_becomes_a_sensitive_bearer_header() {
        let value = bearer_header(b"abc\n").unwrap();
        assert_eq!(value, "Bearer abc");
        assert!(value.is_sensitive(), "never printed in debug output");
        assert!(bearer_header(b" \n").unwrap_err().contains("empty"));
        assert!(bearer_header(b"a\x01b").is_err());
    }

    #[test]
    fn a_stream_ends_as_the_first_connection_to_end_did() {
        use std::io::ErrorKind;
        assert_eq!(Side::Caller.end(None), StreamEnd::CallerClosed);
        assert_eq!(Side::Kubelet.end(None), StreamEnd::KubeletClosed);
        for failed in [ErrorKind::InvalidData, ErrorKind::Other] {
            assert_eq!(Side::Caller.end(Some(failed)), StreamEnd::Error);
            assert_eq!(Side::Kubelet.end(Some(failed)), StreamEnd::Error);
        }
        assert_eq!(
            Side::Caller.end(Some(ErrorKind::TimedOut)),
            StreamEnd::CallerUnread
        );
        assert_eq!(
            Side::Kubelet.end(Some(ErrorKind::TimedOut)),
            StreamEnd::Error
        );
        assert_eq!(
            Side::Kubelet.end(Some(ErrorKind::ConnectionReset)),
            StreamEnd::KubeletClosed
        );
        for gone in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::BrokenPipe,
        ] {
            assert!(peer_went_away(gone), "{gone:?}");
        }
        assert!(
            !peer_went_away(std::io::ErrorKind::InvalidData),
            "a TLS error is a failure"
        );
    }

    #[test]
    fn upgrades_keep_their_upgrade_fields() {
        let inbound = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "channel.k8s.io"),
        ]);
        let outbound = request_headers(&inbound, true);
        assert_eq!(outbound["connection"], "Upgrade");
        assert_eq!(outbound["upgrade"], "SPDY/3.1");
        assert_eq!(
            outbound.get_all("x-stream-protocol-version").iter().count(),
            2
        );

        let answer = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-accept", "abc"),
        ]);
        let back = response_headers(&answer, true);
        assert_eq!(back.len(), 3);
        assert_eq!(response_headers(&answer, false).len(), 1);
    }
}
