//! Stands in for a v1.36 kubelet (docs/kubelet-api.md section 5): HTTPS, HTTP/1.1 only, a client
//! certificate asked for as a Go kubelet asks (`tls.RequestClientCert`: any certificate completes
//! the handshake) and verified against the client CA at each request (401 when it does not
//! verify), believable bodies on every route.
//!
//! Upgrades are real handshakes (see [`upgrade`]): after the `101` an exec WebSocket greets on
//! stdout and echoes stdin back on stdout; a SPDY stream echoes raw bytes. `?follow=true`
//! container logs stream one line per [`KubeletDouble::release_log_line`], so a test can prove
//! streaming without sleeping. Every request is recorded with the client certificate's CN and its
//! whole body (read before routing, so a test can prove a body arrived intact; the double never
//! answers before the request body has ended).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::{Ca, CertKey};

mod upgrade;

/// WebSocket subprotocols the kubelet accepts, in k8s naming.
pub const WEBSOCKET_PROTOCOLS: [&str; 6] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
    "SPDY/3.1+portforward.k8s.io",
];

/// `X-Stream-Protocol-Version` values the kubelet accepts over SPDY.
pub const SPDY_PROTOCOLS: [&str; 5] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "portforward.k8s.io",
];

/// The greeting an exec WebSocket sends on stdout (channel 1) right after the handshake.
pub const EXEC_GREETING: &[u8] = b"hello from exec\n";

/// The number of lines a followed container log has.
pub const FOLLOW_LINES: usize = 5;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The kubelet double, listening on `127.0.0.1:<port>` until dropped.
pub struct KubeletDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// One request as the kubelet received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The request method.
    pub method: Method,
    /// The request-target exactly as received (path and query for origin-form).
    pub target: String,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The subject CN of the peer's client certificate, if it verified against the client CA
    /// when the request came (the identity the kubelet's x509 authenticator would name).
    pub client_cn: Option<String>,
    /// The HTTP version.
    pub version: Version,
    /// The request body, complete and de-chunked (empty for upgrade handshakes).
    pub body: Bytes,
}

/// How the double authenticates its callers (KubeletConfiguration `authentication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Webhook authentication on, anonymous off: a client certificate or any bearer token; 401
    /// to a request with neither.
    Webhook,
    /// The kubelet's own defaults: as `Webhook`, and anonymous requests are served too.
    Open,
    /// Locked to its guard (docs/kubelet-api.md §9): a client certificate from the client CA only,
    /// checked against the clock on every request as Kubernetes' x509 authenticator does; 401 to
    /// anything else, bearer token or not.
    Locked,
}

struct Shared {
    auth: Auth,
    /// Verifies a client certificate against the client CA, at each request.
    client_ca: Arc<dyn ClientCertVerifier>,
    /// TLS connections accepted.
    connections: AtomicUsize,
    /// TLS connections accepted and not yet closed.
    open: AtomicUsize,
    /// Answer with `Connection: close`, as a server shedding its keep-alive connections does.
    closing: std::sync::atomic::AtomicBool,
    requests: Mutex<Vec<Recorded>>,
    log_lines: Arc<Semaphore>,
    upgrades: AtomicUsize,
    /// While set, each request is recorded and then waits for a permit of `answers`.
    holding: std::sync::atomic::AtomicBool,
    answers: Semaphore,
    /// The `readOnlyPort` `/configz` reports, or the status it answers instead.
    configz: Mutex<Result<u16, StatusCode>>,
}

impl KubeletDouble {
    /// Starts the kubelet with `serving` as its certificate, verifying client certificates from
    /// `client_ca`. As a kubelet with webhook authentication, it also takes a bearer token instead
    /// of a certificate, and answers 401 to a request with neither.
    pub async fn start(serving: &CertKey, client_ca: &Ca) -> KubeletDouble {
        Self::start_with(serving, client_ca.root_store(), Auth::Webhook).await
    }

    /// Starts a kubelet that authenticates as `auth` says, verifying client certificates against
    /// the PEM bundle `client_ca_file` (for example a node PKI's `ca.crt`).
    pub async fn start_trusting(
        serving: &CertKey,
        client_ca_file: &std::path::Path,
        auth: Auth,
    ) -> KubeletDouble {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(client_ca_file)
            .expect("client CA file")
        {
            roots.add(cert.expect("client CA PEM")).expect("client CA");
        }
        Self::start_with(serving, Arc::new(roots), auth).await
    }

    async fn start_with(
        serving: &CertKey,
        client_roots: Arc<rustls::RootCertStore>,
        auth: Auth,
    ) -> KubeletDouble {
        super::init();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_ca = rustls::server::WebPkiClientVerifier::builder_with_provider(
            client_roots,
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(Arc::new(RequestClientCert(Arc::clone(&client_ca))))
            .with_single_cert(vec![serving.cert_der()], serving.key_der())
            .expect("kubelet TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            auth,
            client_ca,
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            closing: std::sync::atomic::AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            log_lines: Arc::new(Semaphore::new(0)),
            upgrades: AtomicUsize::new(0),
            holding: std::sync::atomic::AtomicBool::new(false),
            answers: Semaphore::new(0),
            configz: Mutex::new(Ok(0)),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        KubeletDouble { addr, shared, task }
    }

    /// How many TLS connections the kubelet has accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many TLS connections are open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// From now on, closes each connection after its response (`Connection: close`).
    pub fn close_after_each_response(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().expect("requests").clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().expect("requests").len()
    }

    /// How many upgraded connections (WebSocket or SPDY) got past the `101` to their streams.
    pub fn upgrades_completed(&self) -> usize {
        self.shared.upgrades.load(Ordering::SeqCst)
    }

    /// From now on, records each request and then holds its answer until [`Self::release_answer`],
    /// as a kubelet running a long command does.
    pub fn hold_answers(&self) {
        self.shared.holding.store(true, Ordering::SeqCst);
    }

    /// From now on, `/configz` says the kubelet serves its read-only port on `port` (0: none, as by
    /// default). The double listens on no such port.
    pub fn report_read_only_port(&self, port: u16) {
        *self.shared.configz.lock().expect("configz") = Ok(port);
    }

    /// From now on, `/configz` answers `status` with a plain-text body: 404 as on a kubelet with
    /// `enableDebuggingHandlers: false`, 500 as on one that cannot reach the API server to
    /// authorize the caller.
    pub fn answer_configz_with(&self, status: StatusCode) {
        *self.shared.configz.lock().expect("configz") = Err(status);
    }

    /// Lets one held request be answered.
    pub fn release_answer(&self) {
        self.shared.answers.add_permits(1);
    }

    /// Lets followed log streams send one more line (shared by all open streams).
    pub fn release_log_line(&self) {
        self.shared.log_lines.add_permits(1);
    }
}

impl Drop for KubeletDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            shared.open.fetch_add(1, Ordering::SeqCst);
            let open = Arc::clone(&shared);
            let chain: Arc<[CertificateDer<'static>]> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let chain = Arc::clone(&chain);
                async move {
                    let closing = shared.closing.load(Ordering::SeqCst);
                    let client_cn = authenticated(shared.client_ca.as_ref(), &chain);
                    let mut response = route(shared, client_cn, req).await;
                    if closing {
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades()
                .await;
            open.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// The CN of a client certificate chain that verifies against the client CA now, as Kubernetes'
/// x509 authenticator checks it on every request (a Go kubelet's TLS only asks for a certificate,
/// `tls.RequestClientCert`: any certificate completes the handshake).
fn authenticated(
    client_ca: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'_>],
) -> Option<String> {
    let (leaf, intermediates) = chain.split_first()?;
    client_ca
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A Go TLS server's `RequestClientCert`: asks for a certificate, naming the client CAs, proves
/// the client holds its key, and leaves the chain to each request.
#[derive(Debug)]
struct RequestClientCert(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RequestClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Dispatches one request the way the kubelet's mux does.
async fn route(
    shared: Arc<Shared>,
    client_cn: Option<String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    // Upgrade handshakes have an empty body, so reading it first never holds back a 101.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let req = Request::from_parts(parts, ());
    let has_token = req.headers().contains_key(http::header::AUTHORIZATION);
    let refused = match shared.auth {
        Auth::Webhook => client_cn.is_none() && !has_token,
        Auth::Open => false,
        Auth::Locked => client_cn.is_none(),
    };
    shared.requests.lock().expect("requests").push(Recorded {
        method: req.method().clone(),
        target: req.uri().to_string(),
        headers: req.headers().clone(),
        client_cn,
        version: req.version(),
        body: body.clone(),
    });
    if shared.holding.load(Ordering::SeqCst) {
        shared.answers.acquire().await.expect("answers").forget();
    }
    if refused {
        return text(StatusCode::UNAUTHORIZED, "text/plain", "Unauthorized");
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match (segments[0], path.as_str()) {
        ("exec" | "attach" | "portForward" | "run" | "checkpoint", _) if segments.len() < 3 => {
            not_found()
        }
        ("exec" | "attach" | "portForward", _) if get || post => upgrade::upgrade(shared, req),
        ("exec" | "attach" | "portForward", _) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "405: Method Not Allowed",
        ),
        ("healthz", "/healthz" | "/healthz/ping" | "/healthz/log" | "/healthz/syncloop") => {
            text(StatusCode::OK, "text/plain; charset=utf-8", "ok")
        }
        (_, "/pods" | "/runningpods/") if get => json_body(&pod_list()),
        (_, "/stats/summary") if get || post => json_body(&summary()),
        (
            _,
            "/metrics" | "/metrics/cadvisor" | "/metrics/resource" | "/metrics/probes"
            | "/metrics/slis",
        ) => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics(&path),
        ),
        (_, "/configz") => configz(&shared),
        (_, "/flagz") => json_body(
            &json!({"kind": "Flagz", "apiVersion": "config.k8s.io/v1alpha1",
            "componentName": "kubelet", "flags": {"v": "2", "node-ip": "10.0.0.10"}}),
        ),
        (_, "/statusz") => json_body(
            &json!({"kind": "Statusz", "apiVersion": "config.k8s.io/v1alpha1",
            "componentName": "kubelet", "goVersion": "go1.25.3", "binaryVersion": "1.36.0",
            "startTime": "2026-04-01T00:00:00Z", "uptimeSeconds": 3600}),
        ),
        ("containerLogs", _) if get && segments.len() == 4 => {
            container_logs(&shared, &segments, &query)
        }
        (_, "/logs") => {
            let mut resp = text(
                StatusCode::MOVED_PERMANENTLY,
                "text/html; charset=utf-8",
                "<a href=\"/logs/\">Moved Permanently</a>.\n\n",
            );
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/logs/"));
            resp
        }
        (_, "/logs/") if get && query.starts_with("query=") => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "Apr 01 00:00:01 node-a kubelet[812]: I0401 started\n",
        ),
        (_, "/logs/") if get => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<pre>\n<a href=\"kern.log\">kern.log</a>\n<a href=\"pods/\">pods/</a>\n</pre>\n",
        ),
        ("logs", _) if get => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            &format!("contents of {}\n", &path["/logs/".len()..]),
        ),
        ("run", _) if post => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            &format!("output of {query}\n"),
        ),
        ("checkpoint", _) if post && segments.len() == 4 => json_body(&json!({"items": [format!(
            "/var/lib/kubelet/checkpoints/checkpoint-{}_{}-{}-2026-04-01T00:00:00Z.tar",
            segments[2], segments[1], segments[3]
        )]})),
        (_, "/debug/pprof/") if get => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><body>/debug/pprof/<br>\n<a href=\"goroutine?debug=1\">goroutine</a>\n</body></html>\n",
        ),
        ("debug", _) if get && path.starts_with("/debug/pprof/") => text(
            StatusCode::OK,
            "application/octet-stream",
            "pprof profile bytes",
        ),
        (_, "/debug/flags/v") if method == Method::PUT => {
            let level = String::from_utf8_lossy(&body).trim().to_owned();
            text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                &format!("successfully set klog.logging.verbosity to {level}\n"),
            )
        }
        _ => not_found(),
    }
}

/// `/configz`: KubeletConfiguration v1beta1, which omits a `readOnlyPort` of 0.
fn configz(shared: &Shared) -> Response<Body> {
    let read_only_port = match *shared.configz.lock().expect("configz") {
        Ok(port) => port,
        Err(StatusCode::NOT_FOUND) => return not_found(),
        Err(status) => {
            return text(
                status,
                "text/plain; charset=utf-8",
                "Authorization error (user=kubelet-guard, verb=get, resource=nodes, \
                 subresource=configz)",
            );
        }
    };
    // Converted to v1beta1 without its type metadata, as the kubelet's configz shows it.
    let mut config = json!({"address": "127.0.0.1", "port": 10250,
        "authentication": {"webhook": {"enabled": true}}, "authorization": {"mode": "Webhook"}});
    if read_only_port != 0 {
        config["readOnlyPort"] = json!(read_only_port);
    }
    json_body(&json!({ "kubeletconfig": config }))
}

/// `/containerLogs/{ns}/{pod}/{ctr}`: a whole log, or with `follow=true` a gated chunked stream.
fn container_logs(shared: &Shared, segments: &[&str], query: &str) -> Response<Body> {
    let follow = query
        .split('&')
        .any(|kv| kv == "follow=true" || kv == "follow=1");
    if !follow {
        let body = format!(
            "log of {}/{}/{}\nline 1\nline 2\n",
            segments[1], segments[2], segments[3]
        );
        return text(StatusCode::OK, "text/plain", &body);
    }
    let gate = Arc::clone(&shared.log_lines);
    let lines = futures_util::stream::unfold(1usize, move |n| {
        let gate = Arc::clone(&gate);
        async move {
            if n > FOLLOW_LINES {
                return None;
            }
            if n > 1 {
                gate.acquire().await.ok()?.forget();
            }
            let frame = Frame::data(Bytes::from(format!("line {n}\n")));
            Some((Ok::<_, Infallible>(frame), n + 1))
        }
    });
    let mut resp = Response::new(BodyExt::boxed_unsync(StreamBody::new(lines)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn pod_list() -> serde_json::Value {
    json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
        "metadata": {"name": "web-0", "namespace": "default", "uid": "6f1c2b1e-0000-4000-8000-000000000001"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "web", "image": "nginx:1.27"}]},
        "status": {"phase": "Running", "podIP": "10.244.0.12"}
    }]})
}

fn summary() -> serde_json::Value {
    json!({"node": {"nodeName": "node-a", "startTime": "2026-04-01T00:00:00Z",
        "cpu": {"time": "2026-04-01T01:00:00Z", "usageNanoCores": 123_456_789u64},
        "memory": {"time": "2026-04-01T01:00:00Z", "workingSetBytes": 987_654_321u64}},
        "pods": [{"podRef": {"name": "web-0", "namespace": "default", "uid": "6f1c2b1e-0000-4000-8000-000000000001"},
        "containers": [{"name": "web", "cpu": {"usageNanoCores": 1_000_000u64}}]}]})
}

fn metrics(path: &str) -> String {
    let name = match path {
        "/metrics/cadvisor" => "container_cpu_usage_seconds_total",
        "/metrics/resource" => "node_cpu_usage_seconds_total",
        "/metrics/probes" => "prober_probe_total",
        "/metrics/slis" => "kubernetes_healthcheck",
        _ => "kubelet_running_pods",
    };
    format!("# HELP {name} Stand-in metric served at {path}.\n# TYPE {name} gauge\n{name} 1\n")
}

fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response<Body> {
    let mut resp = Response::new(full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_body(value: &serde_json::Value) -> Response<Body> {
    text(StatusCode::OK, "application/json", &value.to_string())
}

/// Go's `http.NotFound`.
fn not_found() -> Response<Body> {
    let mut resp = text(
        StatusCode::NOT_FOUND,
        "text/plain; charset=utf-8",
        "404 page not found\n",
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn full(body: String) -> Body {
    BodyExt::boxed_unsync(Full::new(Bytes::from(body)))
}

fn empty() -> Body {
    full(String::new())
}
