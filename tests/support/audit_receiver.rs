//! Stands in for an audit webhook receiver (Falco's k8saudit plugin, a SIEM collector): HTTPS on
//! `127.0.0.1` with a certificate from the test CA, taking `POST`s of `audit.k8s.io/v1` `EventList`
//! JSON at one path from callers presenting its bearer token.
//!
//! Tests script it while it runs (a number of 500s first, failing until healed, holding every
//! request until released) and read back every accepted batch and every attempt, whatever its
//! answer. Waits return when a condition holds; callers bound them with `with_deadline`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::Ca;

/// The receiver double, listening on `127.0.0.1:<port>` until dropped.
pub struct AuditReceiver {
    addr: SocketAddr,
    ca_path: PathBuf,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// One `POST` (or other request) the receiver saw, whatever it answered.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The request method.
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change a test may wait for.
    changed: watch::Sender<u64>,
    /// `true` while requests are held.
    stalled: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    batches: Vec<Value>,
    attempts: Vec<Attempt>,
    fail_next: usize,
    /// What the next failures answer; 500 unless set.
    fail_status: Option<u16>,
    fail_always: bool,
}

impl AuditReceiver {
    /// The path batches must be POSTed to.
    pub const PATH: &'static str = "/k8s-audit";
    /// The bearer token the receiver demands; anything else gets 401.
    pub const TOKEN: &'static str = "audit-webhook-token";

    /// Starts the receiver with a serving certificate for `127.0.0.1` and `localhost` from `ca`.
    pub async fn start(ca: &Ca) -> AuditReceiver {
        super::init();
        let (listener, acceptor, addr) = super::tls_listener(ca, "audit-receiver").await;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::Sender::new(0),
            stalled: watch::Sender::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared)));
        AuditReceiver {
            addr,
            ca_path: ca.cert_path().to_path_buf(),
            shared,
            task,
        }
    }

    /// `https://127.0.0.1:<port>/k8s-audit`.
    pub fn url(&self) -> String {
        format!("https://{}{}", self.addr, Self::PATH)
    }

    /// Answers the next `n` POSTs with 500 before accepting again.
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// Answers the next `n` POSTs with `status` before accepting again.
    pub fn fail_next_with(&self, n: usize, status: u16) {
        let mut st = self.lock();
        st.fail_next = n;
        st.fail_status = Some(status);
    }

    /// Answers every POST with 500 until called with `false`.
    pub fn fail_always(&self, failing: bool) {
        self.lock().fail_always = failing;
    }

    /// Holds every request (after recording its attempt) until called with `false`.
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// The accepted `EventList` bodies, in arrival order.
    pub fn batches(&self) -> Vec<Value> {
        self.lock().batches.clone()
    }

    /// Every request received, whatever its answer; a held request is listed while held.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// Returns the accepted batches once there are at least `n`.
    pub async fn wait_for_batches(&self, n: usize) -> Vec<Value> {
        self.wait_until(|st| st.batches.len() >= n).await;
        self.batches()
    }

    /// Returns once at least `n` requests have arrived.
    pub async fn wait_for_attempts(&self, n: usize) {
        self.wait_until(|st| st.attempts.len() >= n).await;
    }

    /// Writes a kubeconfig naming this receiver (its URL with the path, the CA file, the token)
    /// and returns its path.
    pub fn write_kubeconfig(&self) -> PathBuf {
        let path = super::temp_dir("audit-webhook").join("audit-webhook.yaml");
        let user = format!("{{token: {}}}", Self::TOKEN);
        let yaml = super::kubeconfig(&self.url(), &self.ca_path, &user);
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    async fn wait_until(&self, done: impl Fn(&State) -> bool) {
        // Subscribe before checking, so a change between the check and the wait is not missed.
        let mut changes = self.shared.changed.subscribe();
        loop {
            if done(&self.lock()) {
                return;
            }
            changes.changed().await.expect("receiver alive");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock()
    }
}

impl Drop for AuditReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("receiver state")
    }

    /// Applies `change` and wakes every waiter.
    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
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
            let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let header = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut attempt = Attempt {
        method: parts.method.clone(),
        target: parts.uri.to_string(),
        authorization: header(header::AUTHORIZATION),
        content_type: header(header::CONTENT_TYPE),
        status: 0,
    };
    let expected = format!("Bearer {}", AuditReceiver::TOKEN);
    let mut status = if attempt.authorization.as_deref() != Some(expected.as_str()) {
        401
    } else if parts.method != Method::POST || parts.uri.path() != AuditReceiver::PATH {
        404
    } else {
        let mut st = shared.lock();
        if st.fail_always {
            500
        } else if st.fail_next > 0 {
            st.fail_next -= 1;
            st.fail_status.unwrap_or(500)
        } else {
            200
        }
    };
    let list = match serde_json::from_slice::<Value>(&body) {
        Ok(list) => Some(list),
        Err(_) if status == 200 => {
            status = 400;
            None
        }
        Err(_) => None,
    };
    attempt.status = status;
    shared.update(|st| st.attempts.push(attempt));

    let mut stalled = shared.stalled.subscribe();
    let _ = stalled.wait_for(|held| !*held).await;

    if status == 200
        && let Some(list) = list
    {
        shared.update(|st| st.batches.push(list));
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
