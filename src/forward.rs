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
//! - The TLS files towards the kubelet are polled: when they change, new connections use a new
//!   pooled client while requests in flight finish on the old one.
//! - The client speaks HTTP/1.1 only (HTTP/2 cannot carry `Upgrade`) and never follows redirects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::config::{self, UpstreamCredential};
use crate::reload::{FileError, Poll, Watched};
use crate::server::drain::Drain;
use crate::tls;

/// The response body type of the whole proxy: the kubelet's streamed body or one of ours.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Why the kubelet's answer could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Connecting or talking to the kubelet failed.
    #[error("the kubelet is unreachable: {0}")]
    Unreachable(String),
    /// No response headers within `--upstream-timeout`.
    #[error("the kubelet did not answer within {0:?}")]
    Timeout(Duration),
}

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
    pub stream: Option<tokio::task::JoinHandle<Relayed>>,
}

/// Totals of one upgraded stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes copied from the caller to the kubelet.
    pub to_kubelet: u64,
    /// Bytes copied from the kubelet to the caller.
    pub to_caller: u64,
    /// How long the stream was open after the 101.
    pub duration: Duration,
}

/// The kubelet behind the guard and the pooled clients that reach it.
pub struct Upstream {
    clients: Arc<Watched<Clients>>,
    authority: http::uri::Authority,
    token: Option<Arc<Watched<HeaderValue>>>,
    timeout: Duration,
    streams: Drain,
}

/// The pooled clients built from one generation of the upstream TLS files.
struct Clients {
    /// With the guard's credential.
    guard: Client<HttpsConnector<HttpConnector>, Incoming>,
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

/// The prefix of a bearer token sent as a WebSocket subprotocol (Kubernetes' WebSocket protocol
/// authenticator).
const BEARER_SUBPROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

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
        settings: &config::Upstream,
        callers: bool,
        streams: Drain,
        expiry: prometheus::IntGauge,
    ) -> Result<Self, FileError> {
        let token = match &settings.credential {
            UpstreamCredential::TokenFile(path) => Some(Arc::new(Watched::load(
                "--upstream-token-file",
                path,
                bearer_header,
            )?)),
            UpstreamCredential::ClientCert { .. } => None,
        };
        let tls_settings = settings.clone();
        let clients = Watched::load_with(tls::reload::upstream_sources(settings), move |files| {
            let tls = tls::reload::upstream(&tls_settings, files, callers, &expiry)?;
            let client = |tls: rustls::ClientConfig| {
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .with_server_name_resolver(FixedServerNameResolver::new(
                        tls_settings.server_name.clone(),
                    ))
                    .enable_http1()
                    .build();
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .build(connector)
            };
            Ok(Clients {
                guard: client(tls.guard),
                callers: tls.callers.map(client),
            })
        })?;
        Ok(Self {
            clients: Arc::new(clients),
            authority: settings.authority.clone(),
            token,
            timeout: settings.timeout,
            streams,
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

    /// The polled TLS files, to poll at once when the guard renewed its own certificate.
    pub fn client_files(&self) -> Arc<dyn Poll> {
        self.clients.clone()
    }

    /// The polled token file, for the reload task.
    pub fn token(&self) -> Option<&Arc<Watched<HeaderValue>>> {
        self.token.as_ref()
    }

    /// Sends `request` to the kubelet with `credential` and returns its response, relaying an
    /// upgrade if the kubelet switches protocols. `upgrade` says whether the caller asked for one.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        upgrade: bool,
        credential: Credential,
    ) -> Result<Forwarded, ForwardError> {
        let inbound_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|e| {
                ForwardError::Unreachable(format!("cannot build the upstream URI: {e}"))
            })?;
        let mut outbound = Request::builder()
            .method(parts.method)
            .uri(uri)
            .version(http::Version::HTTP_11);
        let clients = self.clients.current();
        // Never pair the caller's token with the guard's certificate: the kubelet would believe
        // the certificate. Without a client for callers (enforce mode) such a request fails.
        let client = match credential {
            Credential::Guard => &clients.guard,
            Credential::Caller => clients.callers.as_ref().ok_or_else(|| {
                ForwardError::Unreachable(
                    "no connection without the guard's identity outside observe mode".into(),
                )
            })?,
        };
        if let Some(headers) = outbound.headers_mut() {
            *headers = request_headers(&parts.headers, upgrade);
            let authorization = match credential {
                Credential::Guard => self
                    .token
                    .as_ref()
                    .map(|token| HeaderValue::clone(&token.current())),
                Credential::Caller => parts.headers.get(header::AUTHORIZATION).cloned(),
            };
            if let Some(authorization) = authorization {
                headers.insert(header::AUTHORIZATION, authorization);
            }
            // Observe mode: the caller's own credential, in whichever form it came, decides.
            if credential == Credential::Caller {
                headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
                for value in parts.headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
                    headers.append(header::SEC_WEBSOCKET_PROTOCOL, value.clone());
                }
            }
        }
        let outbound = outbound.body(body).map_err(|e| {
            ForwardError::Unreachable(format!("cannot build the upstream request: {e}"))
        })?;

        let mut response = match tokio::time::timeout(self.timeout, client.request(outbound)).await
        {
            Err(_) => return Err(ForwardError::Timeout(self.timeout)),
            Ok(Err(e)) => return Err(ForwardError::Unreachable(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let stream = match inbound_upgrade {
            Some(inbound) if switching => Some(tokio::spawn(splice(
                inbound,
                hyper::upgrade::on(&mut response),
                self.streams.track(),
            ))),
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        parts.headers = response_headers(&parts.headers, switching && upgrade);
        Ok(Forwarded {
            response: Response::from_parts(parts, body.boxed()),
            stream,
        })
    }
}

/// The headers sent to the kubelet for a caller's request headers.
pub fn request_headers(inbound: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut headers = without_hop_by_hop(inbound);
    for name in CREDENTIALS {
        headers.remove(name);
    }
    let identity: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            name.as_str().starts_with("impersonate-") || name.as_str().starts_with("x-remote-")
        })
        .cloned()
        .collect();
    for name in identity {
        headers.remove(name);
    }
    // What the guard did not see for itself, it does not pass on as if it vouched for it.
    for name in FORWARDING {
        headers.remove(name);
    }
    let forwarding: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarding {
        headers.remove(name);
    }
    without_bearer_subprotocol(&mut headers);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        for value in inbound.get_all(header::UPGRADE) {
            headers.append(header::UPGRADE, value.clone());
        }
    }
    headers
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

/// The headers sent back to the caller; a 101 keeps its `Connection` and `Upgrade`.
pub fn response_headers(upstream: &HeaderMap, switching: bool) -> HeaderMap {
    let mut headers = without_hop_by_hop(upstream);
    headers.remove(header::PROXY_AUTHENTICATE);
    if switching {
        for name in [header::CONNECTION, header::UPGRADE] {
            for value in upstream.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers
}

/// Drops the fixed hop-by-hop fields and every field `Connection` names.
fn without_hop_by_hop(source: &HeaderMap) -> HeaderMap {
    let mut headers = source.clone();
    for value in source.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers
}

/// Copies bytes both ways between the caller's and the kubelet's upgraded connections until
/// either side closes or shutdown's grace period ends, and reports the totals.
async fn splice(
    inbound: hyper::upgrade::OnUpgrade,
    outbound: hyper::upgrade::OnUpgrade,
    mut open: crate::server::drain::Tracked,
) -> Relayed {
    let started = std::time::Instant::now();
    let (to_kubelet, to_caller) = match tokio::try_join!(inbound, outbound) {
        Ok((inbound, outbound)) => {
            let mut inbound = Metered::new(TokioIo::new(inbound));
            let mut outbound = Metered::new(TokioIo::new(outbound));
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {
                    if let Err(e) = copied {
                        tracing::debug!(error = %e, "upgraded stream ended with an error");
                    }
                }
                () = open.closing() => {
                    tracing::info!("upgraded stream closed at the end of the shutdown grace period");
                }
            }
            (inbound.read, outbound.read)
        }
        Err(e) => {
            tracing::warn!(error = %e, "upgrade failed after 101");
            (0, 0)
        }
    };
    Relayed {
        to_kubelet,
        to_caller,
        duration: started.elapsed(),
    }
}

/// An upgraded connection that counts the bytes read from it, so a stream closed mid-copy still
/// reports what it relayed.
struct Metered<T> {
    io: T,
    read: u64,
}

impl<T> Metered<T> {
    fn new(io: T) -> Self {
        Self { io, read: 0 }
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
        this.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Metered<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
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

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
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
