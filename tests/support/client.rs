//! Stands in for kubelet-guard's callers (kubectl through the API server, metrics scrapers,
//! attackers): a TLS client that trusts one CA, may present a client certificate, and opens a
//! fresh connection per call so every test request is observable on its own.
//!
//! Besides plain HTTP/1.1 and h2 requests it performs the two upgrade handshakes the kubelet
//! speaks (RFC 6455 WebSocket, SPDY/3.1) and can write raw bytes for request-targets that a
//! well-behaved HTTP client would refuse to send.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::pki::CertKey;

/// Any error from connecting, the TLS handshake or the HTTP exchange.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A WebSocket over the client's TLS connection.
pub type WsStream = WebSocketStream<TlsStream<TcpStream>>;

/// A TLS client for one trusted CA and an optional client certificate.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    http2: bool,
    server_name: ServerName<'static>,
    source: Option<std::net::IpAddr>,
}

impl TlsClient {
    /// A client trusting the CA certificate(s) in `ca_pem_path`, presenting `client_cert` if given.
    ///
    /// Speaks HTTP/1.1 (ALPN `http/1.1`) to the server name `localhost` until told otherwise.
    pub fn new(ca_pem_path: impl AsRef<Path>, client_cert: Option<&CertKey>) -> TlsClient {
        super::init();
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca_pem_path).expect("read CA file") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots);
        let config = match client_cert {
            Some(ck) => builder
                .with_client_auth_cert(vec![ck.cert_der()], ck.key_der())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        TlsClient {
            config: Arc::new(config),
            http2: false,
            server_name: ServerName::try_from("localhost").expect("server name"),
            source: None,
        }
    }

    /// Uses h2 (ALPN `h2`) for [`send`](Self::send) and [`get`](Self::get).
    pub fn http2(mut self) -> TlsClient {
        self.http2 = true;
        self
    }

    /// Verifies the server against `name` (a DNS name or an IP address) instead of `localhost`.
    pub fn server_name(mut self, name: &str) -> TlsClient {
        self.server_name = ServerName::try_from(name.to_owned()).expect("server name");
        self
    }

    /// Connects from `source` (for example `127.0.0.2`, a second caller on loopback).
    pub fn with_source(mut self, source: std::net::IpAddr) -> TlsClient {
        self.source = Some(source);
        self
    }

    /// Opens a TCP connection (from the source address, if one was set), with Nagle's algorithm
    /// off as Go's clients (kubectl, the API server) have it.
    pub async fn tcp(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let tcp = self.tcp_with_nagle(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    async fn tcp_with_nagle(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self.source {
            None => TcpStream::connect(addr).await,
            Some(source) => {
                let socket = match source {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(addr).await
            }
        }
    }

    /// Opens a TCP connection and completes a TLS handshake offering `alpn`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = self.tcp(addr).await?;
        self.handshake(tcp, alpn).await
    }

    /// Completes a TLS handshake offering `alpn` on a connection the test opened itself.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: &[u8],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
            .connect(self.server_name.clone(), tcp)
            .await
    }

    /// A keep-alive HTTP/1.1 connection, its connection task spawned: send on it request after
    /// request.
    pub async fn keep_alive<B>(
        &self,
        addr: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tls = self.connect(addr, b"http/1.1").await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        sender
    }

    /// Sends `req` on a fresh connection; the error says which step failed.
    ///
    /// For HTTP/1.1 an absolute URI is turned into origin-form and `Host` is set; for h2 an
    /// origin-form URI gets `https://<server name>:<port>` so `:scheme` and `:authority` are sent.
    pub async fn try_send(
        &self,
        addr: SocketAddr,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, BoxError> {
        let authority = format!("{}:{}", self.server_name.to_str(), addr.port());
        if self.http2 {
            let tls = self.connect(addr, b"h2").await?;
            if req.uri().authority().is_none() {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                *req.uri_mut() = format!("https://{authority}{pq}").parse::<Uri>()?;
            }
            *req.version_mut() = http::Version::HTTP_2;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await?;
            tokio::spawn(conn);
            Ok(sender.send_request(req).await?)
        } else {
            let tls = self.connect(addr, b"http/1.1").await?;
            if req.uri().authority().is_some() {
                let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
                *req.uri_mut() = pq.parse::<Uri>()?;
            }
            if !req.headers().contains_key(header::HOST) {
                req.headers_mut()
                    .insert(header::HOST, HeaderValue::from_str(&authority)?);
            }
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(conn.with_upgrades());
            Ok(sender.send_request(req).await?)
        }
    }

    /// [`try_send`](Self::try_send), panicking on failure.
    pub async fn send(&self, addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self.try_send(addr, req).await {
            Ok(resp) => resp,
            Err(e) => panic!("request to {addr} failed: {e}"),
        }
    }

    /// GETs `path` (with query) with an optional bearer token; returns status, headers, body text.
    pub async fn get(
        &self,
        addr: SocketAddr,
        path: &str,
        bearer: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let resp = self.send(addr, request("GET", path, bearer)).await;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// Opens a WebSocket to `path` offering `protocols` (`Sec-WebSocket-Protocol`).
    ///
    /// An answer other than `101` comes back as `Err(tungstenite::Error::Http(response))`.
    pub async fn websocket(
        &self,
        addr: SocketAddr,
        path: &str,
        bearer: Option<&str>,
        protocols: &[&str],
    ) -> Result<(Response<Option<Vec<u8>>>, WsStream), tungstenite::Error> {
        let url = format!("wss://{}:{}{path}", self.server_name.to_str(), addr.port());
        let mut req = url.into_client_request()?;
        if let Some(token) = bearer {
            req.headers_mut()
                .insert(header::AUTHORIZATION, bearer_value(token));
        }
        if !protocols.is_empty() {
            let offered = HeaderValue::from_str(&protocols.join(", ")).expect("protocols");
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, offered);
        }
        let tls = self.connect(addr, b"http/1.1").await?;
        let (ws, resp) = tokio_tungstenite::client_async(req, tls).await?;
        Ok((resp, ws))
    }

    /// POSTs a SPDY/3.1 upgrade to `path` with one `X-Stream-Protocol-Version` per protocol.
    ///
    /// On `101` the upgraded connection is returned for raw reads and writes.
    pub async fn spdy(
        &self,
        addr: SocketAddr,
        path: &str,
        bearer: Option<&str>,
        protocols: &[&str],
    ) -> (StatusCode, HeaderMap, Option<Upgraded>) {
        let mut req = request("POST", path, bearer);
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        for proto in protocols {
            headers.append(
                "x-stream-protocol-version",
                HeaderValue::from_str(proto).expect("protocol"),
            );
        }
        let resp = self.send(addr, req).await;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let upgraded = if status == StatusCode::SWITCHING_PROTOCOLS {
            Some(hyper::upgrade::on(resp).await.expect("SPDY upgrade"))
        } else {
            None
        };
        (status, headers, upgraded)
    }

    /// Writes `request_bytes` as-is over TLS (ALPN `http/1.1`) and returns the answer as text.
    ///
    /// Reads until the server closes, one complete response has arrived (`Content-Length`,
    /// a final chunk, or a status without a body), or [`super::DEADLINE`] passes.
    pub async fn raw(&self, addr: SocketAddr, request_bytes: &[u8]) -> String {
        let mut tls = self.connect(addr, b"http/1.1").await.expect("TLS connect");
        tls.write_all(request_bytes).await.expect("write request");
        tls.flush().await.expect("flush request");
        let mut answer = Vec::new();
        let read = async {
            let mut buf = [0u8; 8192];
            while !response_complete(&answer) {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(super::DEADLINE, read).await;
        String::from_utf8_lossy(&answer).into_owned()
    }
}

/// A request with an empty body and, if given, `Authorization: Bearer <token>`.
pub fn request(method: &str, path: &str, bearer: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .expect("request");
    if let Some(token) = bearer {
        req.headers_mut()
            .insert(header::AUTHORIZATION, bearer_value(token));
    }
    req
}

fn bearer_value(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("bearer token")
}

/// Whether `answer` holds one whole HTTP/1.1 response.
fn response_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let body = &answer[end + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return true;
    }
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= len;
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}
