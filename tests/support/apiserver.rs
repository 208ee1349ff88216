//! Stands in for the Kubernetes API server as kubelet-guard's webhooks see it: HTTPS (HTTP/1.1 and
//! h2) serving `authentication.k8s.io/v1` TokenReview and `authorization.k8s.io/v1`
//! SubjectAccessReview in their real wire format, answering 201 with the posted object plus a
//! `status`, and a `v1` `Status` body on every failure.
//!
//! Tests script it while it runs (tokens, allow/deny rules, delay, failures, raw status) and read
//! back every review body and every `Authorization` header it saw.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::Ca;

mod review;

use review::{Rule, access_review_status, token_review_status};

const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const ACCESS_REVIEW_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// The API server double, listening on `127.0.0.1:<port>` until dropped.
pub struct ApiServerDouble {
    addr: SocketAddr,
    ca_path: PathBuf,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

/// Who a scripted token authenticates as.
#[derive(Clone, Debug, Default)]
pub struct TokenIdentity {
    /// `status.user.username`.
    pub username: String,
    /// `status.user.uid`.
    pub uid: String,
    /// `status.user.groups`, exactly as scripted (nothing is added).
    pub groups: Vec<String>,
    /// `status.user.extra`.
    pub extra: HashMap<String, Vec<String>>,
    /// The token's audiences; `None` accepts any requested audience.
    pub audiences: Option<Vec<String>>,
}

impl TokenIdentity {
    /// A bound service-account token as the API server reviews it, with its `extra`.
    pub fn bound_service_account(user: &str, pod: &str) -> TokenIdentity {
        let extra: HashMap<String, Vec<String>> = [
            (
                "authentication.kubernetes.io/credential-id",
                "JTI=7c1f0c5e-3d43-4a1e-9d1b-0e6f2b8a5a10",
            ),
            ("authentication.kubernetes.io/node-name", "node-1"),
            (
                "authentication.kubernetes.io/node-uid",
                "b8e2c6a4-5f0e-4c43-a3c7-2d9b4f1e7a21",
            ),
            ("authentication.kubernetes.io/pod-name", pod),
            (
                "authentication.kubernetes.io/pod-uid",
                "0f5a3c1e-8b7d-4e2f-9a6c-1d3e5f7a9b2c",
            ),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), vec![value.to_owned()]))
        .collect();
        TokenIdentity {
            username: user.into(),
            uid: "5d2e0f4b-9c1a-4b7e-8f3d-6a2c1e0b9d48".into(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:monitoring".into(),
            ],
            extra,
            audiences: None,
        }
    }
}

/// One HTTP request the double received, whatever its outcome.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// The request method.
    pub method: Method,
    /// Path and query as received.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// HTTP/1.1 or HTTP/2.
    pub version: Version,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, TokenIdentity>,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    delay: Duration,
    fail_with: Option<u16>,
    fail_once: Option<u16>,
    sar_status: Option<Value>,
    token_reviews: Vec<Value>,
    access_reviews: Vec<Value>,
    requests: Vec<ApiRequest>,
    mismatches: Vec<String>,
}

impl ApiServerDouble {
    /// The bearer token kubelet-guard's own service account presents; anything else gets 401.
    pub const GUARD_TOKEN: &'static str = "guard-sa-token";

    /// Starts the double with a serving certificate for `127.0.0.1` and `localhost` from `ca`.
    pub async fn start(ca: &Ca) -> ApiServerDouble {
        super::init();
        let (listener, acceptor, addr) = super::tls_listener(ca, "kube-apiserver").await;
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&state)));
        ApiServerDouble {
            addr,
            ca_path: ca.cert_path().to_path_buf(),
            state,
            task,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Scripts `token` to authenticate as `username`/`uid` with exactly `groups`, any audience.
    pub fn add_token(&self, token: &str, username: &str, uid: &str, groups: &[&str]) {
        self.add_token_with(
            token,
            TokenIdentity {
                username: username.to_owned(),
                uid: uid.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ..TokenIdentity::default()
            },
        );
    }

    /// Scripts `token` with a full identity (extra, restricted audiences).
    pub fn add_token_with(&self, token: &str, identity: TokenIdentity) {
        self.lock().tokens.insert(token.to_owned(), identity);
    }

    /// Allows `subject` (a user name or any of the caller's groups) `verb` on `nodes/<subresource>`;
    /// `verb` and `subresource` may be `*`.
    pub fn allow(&self, subject: &str, verb: &str, subresource: &str) {
        self.lock()
            .allow
            .push(Rule::new(subject, verb, subresource));
    }

    /// Allows `subject` `verb` on `pods/<subresource>` of any pod in `namespace`.
    pub fn allow_pod(&self, subject: &str, verb: &str, subresource: &str, namespace: &str) {
        self.lock()
            .allow
            .push(Rule::in_namespace(subject, verb, subresource, namespace));
    }

    /// Explicitly denies (`denied: true`); a matching deny rule wins over any allow rule.
    pub fn deny(&self, subject: &str, verb: &str, subresource: &str) {
        self.lock().deny.push(Rule::new(subject, verb, subresource));
    }

    /// Waits this long before every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Answers every authenticated request with this status and a `Status` body; `None` heals.
    pub fn fail_with(&self, status: Option<u16>) {
        self.lock().fail_with = status;
    }

    /// Answers the next review with this status and a `Status` body, then heals.
    pub fn fail_once(&self, status: u16) {
        self.lock().fail_once = Some(status);
    }

    /// Answers every SubjectAccessReview with exactly this `status` object; `None` restores the rules.
    pub fn sar_status_override(&self, status: Option<Value>) {
        self.lock().sar_status = status;
    }

    /// TokenReview request bodies, in arrival order.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.lock().token_reviews.clone()
    }

    /// SubjectAccessReview request bodies, in arrival order.
    pub fn access_reviews(&self) -> Vec<Value> {
        self.lock().access_reviews.clone()
    }

    /// Every request received, with its `Authorization` header.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.lock().requests.clone()
    }

    /// SubjectAccessReviews whose attributes were not `nodes` in core `v1` (each one denied).
    pub fn mismatches(&self) -> Vec<String> {
        self.lock().mismatches.clone()
    }

    /// Writes a kubeconfig for this server (CA file, guard token) and returns its path.
    pub fn write_kubeconfig(&self) -> PathBuf {
        let path = super::temp_dir("kubeconfig").join("kubeconfig");
        let user = format!("{{token: {}}}", Self::GUARD_TOKEN);
        let yaml = super::kubeconfig(&self.url(), &self.ca_path, &user);
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("API server double state")
    }
}

impl Drop for ApiServerDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<Mutex<State>>) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let delay = {
        let mut st = state.lock().expect("state");
        st.requests.push(ApiRequest {
            method: parts.method.clone(),
            target: parts.uri.to_string(),
            authorization: authorization.clone(),
            version: parts.version,
        });
        st.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let expected = format!("Bearer {}", ApiServerDouble::GUARD_TOKEN);
    if authorization.as_deref() != Some(expected.as_str()) {
        return Ok(status_response(401, "Unauthorized"));
    }
    let path = parts.uri.path();
    let review = match (&parts.method, path) {
        (&Method::POST, TOKEN_REVIEW_PATH | ACCESS_REVIEW_PATH) => {
            match serde_json::from_slice::<Value>(&body) {
                Ok(review) => review,
                Err(e) => return Ok(status_response(400, &format!("invalid JSON: {e}"))),
            }
        }
        _ => {
            return Ok(status_response(
                404,
                "the server could not find the requested resource",
            ));
        }
    };
    let mut st = state.lock().expect("state");
    let is_token_review = path == TOKEN_REVIEW_PATH;
    if is_token_review {
        st.token_reviews.push(review.clone());
    } else {
        st.access_reviews.push(review.clone());
    }
    if let Some(code) = st.fail_once.take().or(st.fail_with) {
        return Ok(status_response(code, "injected failure"));
    }
    let status = if is_token_review {
        token_review_status(&st, &review)
    } else {
        access_review_status(&mut st, &review)
    };
    let mut answer = review;
    if answer.get("metadata").is_none() {
        answer["metadata"] = json!({"creationTimestamp": null});
    }
    answer["status"] = status;
    Ok(json_response(201, &answer))
}

/// A `v1` `Status` failure, as the API server writes one.
fn status_response(code: u16, message: &str) -> Response<Full<Bytes>> {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    json_response(code, &body)
}

fn json_response(code: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}
