//! The only code that talks to kube-apiserver: TokenReview (`authentication.k8s.io/v1`) and
//! SubjectAccessReview (`authorization.k8s.io/v1`) on a `kube::Client` built from `--kubeconfig` or
//! the in-cluster configuration.
//!
//! Every call has the `--apiserver-timeout` deadline, so a failing API server turns into a
//! `ReviewError` (which callers answer with 500 and never cache) instead of a hung request.
//! kube's own retries are off; a transient failure (429, 5xx, a broken connection) is tried again
//! with backoff within that deadline, as the kubelet's webhook clients do, so an API server
//! restart or a burst of its flow control does not turn into refusals.
//!
//! At most [`MAX_IN_FLIGHT`] TokenReviews and as many SubjectAccessReviews run at once; up to
//! [`MAX_WAITING`] more wait their turn within the same deadline (timed as code `queued` if it
//! passes first), and past those a call fails at once (code `queue-full`). Each distinct
//! bad token costs a TokenReview, and kube's client opens an HTTP/1.1 connection per concurrent
//! call: without a bound, callers spraying random tokens over many HTTP/2 streams would open
//! thousands of connections to the API server and use up the node's ports. Apart, so such a
//! spray does not hold back the authorization of callers already authenticated.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Semaphore;

use crate::authn::Identity;
use crate::authn::token::{TokenOutcome, TokenReviewer};
use crate::authz::decisions::AccessReviewer;
use crate::authz::{Decision, Resource};
use crate::config::{self, NodeName};
use crate::kubelet_api::Verb;
use crate::metrics::Metrics;
use crate::review::{ReviewError, ReviewFuture};

/// The API server could not be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--kubeconfig` is unreadable or unusable.
    #[error("--kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No `--kubeconfig` and no in-cluster configuration.
    #[error("--kubeconfig not given and the in-cluster configuration is unusable: {0}")]
    InCluster(String),
}

/// The guard's own bearer token towards the API server: what the kubelet lockdown probe offers
/// the kubelet, to prove that the kubelet refuses it.
#[derive(Clone)]
pub enum OwnToken {
    /// Written in the kubeconfig.
    Inline(secrecy::SecretString),
    /// A file, re-read at every use (projected service-account tokens rotate).
    File(std::path::PathBuf),
}

/// The most calls of one API one guard runs at once. Caching and coalescing leave a node's
/// steady state at a few reviews a minute; 32 calls of a few milliseconds each carry thousands a
/// second.
pub const MAX_IN_FLIGHT: usize = 32;

/// The most calls of one API that may wait for a turn. Past it a call fails at once: a spray of
/// distinct tokens (each its own TokenReview) would otherwise hold every request that waits, its
/// headers and its HTTP/2 stream, for up to `--apiserver-timeout`. At a few milliseconds a call,
/// 256 waiting clear in well under a second.
pub const MAX_WAITING: usize = 256;

/// Turns for one API's calls: [`MAX_IN_FLIGHT`] at once, [`MAX_WAITING`] more waiting.
struct Turns {
    in_flight: Semaphore,
    waiting: AtomicUsize,
}

/// One call's place among those waiting for a turn, given back when it has one or gives up.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Turns {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            waiting: AtomicUsize::new(0),
        })
    }

    /// A place in the queue, unless [`MAX_WAITING`] calls already wait.
    fn queue(&self) -> Option<Waiting<'_>> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < MAX_WAITING).then_some(waiting + 1)
            })
            .ok()
            .map(|_| Waiting(&self.waiting))
    }
}

/// A client for the two review APIs, bound to one node name.
#[derive(Clone)]
pub struct ApiServer {
    client: kube::Client,
    audiences: Vec<String>,
    node: NodeName,
    timeout: Duration,
    /// Turns for TokenReviews in flight.
    token_reviews: Arc<Turns>,
    /// Turns for SubjectAccessReviews in flight.
    access_reviews: Arc<Turns>,
    metrics: Metrics,
}

impl ApiServer {
    /// Builds the client from `--kubeconfig` or the in-cluster configuration.
    pub async fn connect(
        settings: &config::ApiServerSettings,
        node: NodeName,
        metrics: Metrics,
    ) -> Result<Self, SetupError> {
        let mut kube_config = match &settings.kubeconfig {
            Some(path) => from_file(path).await?,
            None => kube::Config::incluster().map_err(|e| SetupError::InCluster(e.to_string()))?,
        };
        kube_config.default_retry = false;
        kube_config.connect_timeout = Some(settings.timeout);
        kube_config.read_timeout = Some(settings.timeout);
        kube_config.reset_reader_on_write = true;
        let client =
            kube::Client::try_from(kube_config).map_err(|e| match &settings.kubeconfig {
                Some(path) => SetupError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                },
                None => SetupError::InCluster(e.to_string()),
            })?;
        Ok(Self {
            client,
            audiences: settings.audiences.clone(),
            node,
            timeout: settings.timeout,
            token_reviews: Turns::new(),
            access_reviews: Turns::new(),
            metrics,
        })
    }

    /// Runs an API call when `turns` gives it one, all under the deadline, timing each attempt as
    /// `api`. A transient failure (see [`transient`]) is tried again after a pause, as the kubelet's
    /// own webhook clients do (500 ms, growing by half each time, ±20%), while the next attempt
    /// can still start before the deadline; the turn is given back during the pause.
    async fn call<T, F>(
        &self,
        api: &str,
        turns: &Turns,
        call: impl Fn() -> F,
    ) -> Result<T, ReviewError>
    where
        F: Future<Output = Result<T, kube::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut pause = FIRST_RETRY;
        // The failure that was tried again: what a retry that runs out of time reports, as the
        // reason the call did not succeed.
        let mut failed: Option<ReviewError> = None;
        loop {
            let started = Instant::now();
            let Some(waiting) = turns.queue() else {
                self.metrics.apiserver(api, "queue-full", started.elapsed());
                return Err(failed.unwrap_or(ReviewError::QueueFull(MAX_WAITING)));
            };
            // The semaphore is never closed.
            let Ok(turn) = tokio::time::timeout_at(deadline, turns.in_flight.acquire()).await
            else {
                self.metrics.apiserver(api, "queued", started.elapsed());
                return Err(failed.unwrap_or(ReviewError::Queued(self.timeout)));
            };
            drop(waiting);
            let (code, result) = match tokio::time::timeout_at(deadline, call()).await {
                Err(_) => (
                    "timeout".to_owned(),
                    Err(ReviewError::Timeout(self.timeout)),
                ),
                Ok(Ok(answer)) => ("201".to_owned(), Ok(answer)),
                Ok(Err(kube::Error::Api(status))) => (
                    status.code.to_string(),
                    Err(ReviewError::Status {
                        code: status.code,
                        message: status.message,
                    }),
                ),
                Ok(Err(e)) => ("error".to_owned(), Err(ReviewError::Transport(Arc::new(e)))),
            };
            drop(turn);
            self.metrics.apiserver(api, &code, started.elapsed());
            let again = tokio::time::Instant::now() + jittered(pause);
            match result {
                Err(e) if transient(&e) && again < deadline => {
                    tracing::debug!(api, error = %e, "API-server call failed; trying again");
                    failed = Some(e);
                    tokio::time::sleep_until(again).await;
                    pause = pause.mul_f64(1.5);
                }
                Err(timeout @ ReviewError::Timeout(_)) => return Err(failed.unwrap_or(timeout)),
                result => return result,
            }
        }
    }
}

/// The pause before the first retry of a transient failure.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Whether a failed call may succeed if made again, as the kubelet's webhook clients judge it
/// (`DefaultShouldRetry`): the API server is overloaded (429), failed internally (500), or is
/// unavailable behind a proxy or restarting (502, 503, 504); or the connection broke under the
/// call. A refusal (401, 403, 404), a timeout (the deadline is spent) or an unreadable answer is
/// final.
fn transient(error: &ReviewError) -> bool {
    match error {
        ReviewError::Status { code, .. } => matches!(code, 429 | 500 | 502 | 503 | 504),
        ReviewError::Transport(e) => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            while let Some(error) = source {
                if let Some(hyper) = error.downcast_ref::<hyper::Error>()
                    && (hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled())
                {
                    return true;
                }
                if let Some(io) = error.downcast_ref::<std::io::Error>()
                    && matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    )
                {
                    return true;
                }
                source = error.source();
            }
            false
        }
        ReviewError::Timeout(_)
        | ReviewError::Queued(_)
        | ReviewError::QueueFull(_)
        | ReviewError::Inconsistent(_) => false,
    }
}

/// `pause`, give or take a fifth, so the reviews that failed together do not all come back
/// together.
fn jittered(pause: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let spread = match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0 * 0.4 - 0.2,
        Err(_) => 0.0,
    };
    pause.mul_f64(1.0 + spread)
}

impl TokenReviewer for ApiServer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenOutcome> {
        Box::pin(async move {
            let request = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                },
                ..TokenReview::default()
            };
            let api = Api::<TokenReview>::all(self.client.clone());
            let params = PostParams::default();
            let answer = self
                .call("tokenreview", &self.token_reviews, || {
                    api.create(&params, &request)
                })
                .await?;
            let Some(status) = answer.status else {
                return Err(ReviewError::Inconsistent(
                    "TokenReview without status".into(),
                ));
            };
            if status.authenticated != Some(true) {
                // As Kubernetes' webhook authenticator: a status error is an error, not cached.
                return Ok(if status.error.as_deref().is_some_and(|e| !e.is_empty()) {
                    TokenOutcome::Failed
                } else {
                    TokenOutcome::Rejected
                });
            }
            // As Kubernetes' webhook authenticator: a token minted for other audiences is not ours.
            if !self.audiences.is_empty()
                && !status
                    .audiences
                    .iter()
                    .flatten()
                    .any(|a| self.audiences.contains(a))
            {
                return Ok(TokenOutcome::Rejected);
            }
            let user = status.user.unwrap_or_default();
            let Some(name) = user.username.filter(|name| !name.is_empty()) else {
                return Err(ReviewError::Inconsistent(
                    "authenticated TokenReview without a username".into(),
                ));
            };
            Ok(TokenOutcome::Authenticated(Arc::new(Identity::new(
                name,
                user.uid.unwrap_or_default(),
                user.groups.unwrap_or_default(),
                user.extra.unwrap_or_default(),
            ))))
        })
    }
}

impl AccessReviewer for ApiServer {
    fn review<'a>(
        &'a self,
        who: &'a Identity,
        verb: Verb,
        resource: &'a Resource,
    ) -> ReviewFuture<'a, Decision> {
        Box::pin(async move {
            let (namespace, name) = match resource {
                Resource::Node(_) => (None, self.node.as_str()),
                Resource::Pod(pod) => (Some(pod.namespace.clone()), pod.name.as_str()),
            };
            let request = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(who.name.clone()),
                    uid: (!who.uid.is_empty()).then(|| who.uid.clone()),
                    groups: Some(who.groups.to_vec()),
                    extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(String::new()),
                        version: Some("v1".into()),
                        resource: Some(resource.resource().into()),
                        subresource: Some(resource.subresource().into()),
                        name: Some(name.into()),
                        namespace,
                        verb: Some(verb.as_str().into()),
                        ..ResourceAttributes::default()
                    }),
                    ..SubjectAccessReviewSpec::default()
                },
                ..SubjectAccessReview::default()
            };
            let api = Api::<SubjectAccessReview>::all(self.client.clone());
            let params = PostParams::default();
            let answer = self
                .call("subjectaccessreview", &self.access_reviews, || {
                    api.create(&params, &request)
                })
                .await?;
            let Some(status) = answer.status else {
                return Err(ReviewError::Inconsistent(
                    "SubjectAccessReview without status".into(),
                ));
            };
            let reason: Arc<str> = status.reason.unwrap_or_default().into();
            match (status.allowed, status.denied == Some(true)) {
                (true, true) => Err(ReviewError::Inconsistent("both allowed and denied".into())),
                (true, false) => Ok(Decision::Allow { reason }),
                (false, _) => Ok(Decision::Deny { reason }),
            }
        })
    }
}

impl OwnToken {
    /// The bearer token of `--kubeconfig`, else of the in-cluster configuration; `None` when
    /// the one that applies has none (a client certificate, an exec plugin), or outside a
    /// cluster without `--kubeconfig`. A `--kubeconfig` that cannot be read is an error.
    pub async fn find(settings: &config::ApiServerSettings) -> Result<Option<Self>, SetupError> {
        let kube_config = match &settings.kubeconfig {
            Some(path) => from_file(path).await?,
            None => match kube::Config::incluster() {
                Ok(config) => config,
                Err(_) => return Ok(None),
            },
        };
        let auth = kube_config.auth_info;
        Ok(match (auth.token, auth.token_file) {
            (Some(token), _) => Some(Self::Inline(token)),
            (None, Some(file)) => Some(Self::File(file.into())),
            (None, None) => None,
        })
    }

    /// The token now; an error names its file when that cannot be read or holds no token.
    pub fn read(&self) -> Result<String, String> {
        use secrecy::ExposeSecret;
        match self {
            Self::Inline(token) if !token.expose_secret().trim().is_empty() => {
                Ok(token.expose_secret().to_owned())
            }
            Self::Inline(_) => Err("token in the kubeconfig is blank".to_owned()),
            Self::File(path) => match std::fs::read_to_string(path) {
                Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
                Ok(_) => Err(format!("token file {} is empty", path.display())),
                Err(e) => Err(format!("token file {}: {e}", path.display())),
            },
        }
    }
}

async fn from_file(path: &Path) -> Result<kube::Config, SetupError> {
    let invalid = |message: String| SetupError::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let mut kubeconfig = Kubeconfig::read_from(path).map_err(|e| invalid(e.to_string()))?;
    // An empty token is none, so a token file beside it applies, as client-go reads a kubeconfig
    // (kube's client would send an empty bearer): the reviews and the lockdown probe read the
    // same credential.
    for named in &mut kubeconfig.auth_infos {
        if let Some(auth) = &mut named.auth_info {
            use secrecy::ExposeSecret;
            if auth
                .token
                .as_ref()
                .is_some_and(|t| t.expose_secret().is_empty())
            {
                auth.token = None;
            }
        }
    }
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;
    use crate::kubelet_api::Subresource;

    /// The client under test, on a mocked transport whose handle sees each HTTP request.
    fn api_server(audiences: &[&str]) -> (ApiServer, mock::Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let api = ApiServer {
            client: kube::Client::new(service, "default"),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            node: NodeName::parse("node-a", "--node-name").unwrap(),
            timeout: Duration::from_secs(5),
            token_reviews: Turns::new(),
            access_reviews: Turns::new(),
            metrics,
        };
        (api, handle)
    }

    /// Takes the next request, answers it with `status` and `body`, and returns its method, path
    /// and JSON body.
    async fn answer(
        handle: &mut mock::Handle<Request<Body>, Response<Body>>,
        status: StatusCode,
        body: Value,
    ) -> (String, String, Value) {
        let (request, respond) = handle.next_request().await.expect("a request");
        let (parts, sent) = request.into_parts();
        let sent = sent.collect().await.unwrap().to_bytes();
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        respond.send_response(response);
        (
            parts.method.to_string(),
            parts.uri.path().to_owned(),
            serde_json::from_slice(&sent).unwrap(),
        )
    }

    fn token_review(status: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}, "status": status})
    }

    fn access_review(status: Value) -> Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {}, "status": status})
    }

    fn alice() -> Identity {
        Identity::new(
            "alice",
            "u-1",
            ["ops".to_owned()],
            [("scopes".to_owned(), vec!["a".to_owned()])].into(),
        )
    }

    #[tokio::test]
    async fn a_token_review_asks_for_the_audiences_and_names_the_user() {
        let (api, mut handle) = api_server(&["kubelet-guard"]);
        let reviewed =
            tokio::spawn(async move { TokenReviewer::review(&api, "t-secret").await.unwrap() });
        let (method, path, sent) = answer(
            &mut handle,
            StatusCode::CREATED,
            token_review(json!({
                "authenticated": true,
                "audiences": ["other", "kubelet-guard"],
                "user": {"username": "alice", "uid": "u-1", "groups": ["ops"],
                         "extra": {"scopes": ["a"]}}
            })),
        )
        .await;
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
        assert_eq!(
            sent["spec"],
            json!({"token": "t-secret", "audiences": ["kubelet-guard"]})
        );
        let TokenOutcome::Authenticated(who) = reviewed.await.unwrap() else {
            panic!("not authenticated")
        };
        assert_eq!(*who, alice());
    }

    #[tokio::test]
    async fn a_token_for_other_audiences_or_not_authenticated_is_rejected() {
        for status in [
            json!({"authenticated": true, "audiences": ["https://kubernetes.default.svc"],
                   "user": {"username": "alice"}}),
            json!({"authenticated": true, "user": {"username": "alice"}}),
            json!({"authenticated": false}),
            json!({"authenticated": false, "error": ""}),
        ] {
            let (api, mut handle) = api_server(&["kubelet-guard"]);
            let reviewed =
                tokio::spawn(async move { TokenReviewer::review(&api, "t").await.unwrap() });
            answer(
                &mut handle,
                StatusCode::CREATED,
                token_review(status.clone()),
            )
            .await;
            assert!(
                matches!(reviewed.await.unwrap(), TokenOutcome::Rejected),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_review_that_failed_with_an_error_is_a_failure_not_a_rejection() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await.unwrap() });
        answer(
            &mut handle,
            StatusCode::CREATED,
            token_review(json!({"authenticated": false, "error": "token expired"})),
        )
        .await;
        assert!(matches!(reviewed.await.unwrap(), TokenOutcome::Failed));
    }

    #[tokio::test]
    async fn past_the_calls_that_wait_for_a_turn_a_call_fails_at_once() {
        let (api, mut handle) = api_server(&[]);
        let held: Vec<_> = (0..MAX_IN_FLIGHT + MAX_WAITING)
            .map(|n| {
                let api = api.clone();
                tokio::spawn(async move { TokenReviewer::review(&api, &format!("t{n}")).await })
            })
            .collect();
        // The calls in flight reach the API server (and are never answered); the rest wait.
        let mut unanswered = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            unanswered.push(handle.next_request().await.unwrap());
        }
        while api.token_reviews.waiting.load(Ordering::Acquire) < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        let refused = tokio::time::timeout(
            Duration::from_secs(5),
            TokenReviewer::review(&api, "one-more"),
        )
        .await
        .expect("refused at once, not queued");
        assert!(
            matches!(refused, Err(ReviewError::QueueFull(MAX_WAITING))),
            "{:?}",
            refused.err()
        );
        // The other API keeps its own turns.
        assert_eq!(api.access_reviews.waiting.load(Ordering::Acquire), 0);
        for call in held {
            call.abort();
        }
        // A call that gave up gives its place back.
        while api.token_reviews.waiting.load(Ordering::Acquire) > 0 {
            tokio::task::yield_now().await;
        }
    }

    /// `token: ""` beside a `tokenFile`: both the reviews' client and the lockdown probe use the
    /// file, as client-go would, not an empty bearer.
    #[tokio::test]
    async fn an_empty_inline_token_gives_way_to_the_token_file() {
        let dir =
            std::env::temp_dir().join(format!("kubelet-guard-empty-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kubeconfig, file) = (dir.join("kubeconfig"), dir.join("token"));
        std::fs::write(&file, "from-file\n").unwrap();
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \
                 https://127.0.0.1:9}}\nusers:\n- name: u\n  user: {{token: \"\", tokenFile: {}}}\n\
                 contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                file.display()
            ),
        )
        .unwrap();
        let config = from_file(&kubeconfig).await.unwrap();
        assert!(config.auth_info.token.is_none());
        let settings = config::ApiServerSettings {
            token_auth_file: None,
            rbac_policy_file: None,
            kubeconfig: Some(kubeconfig),
            audiences: Vec::new(),
            timeout: Duration::from_secs(1),
        };
        let own = OwnToken::find(&settings).await.unwrap().unwrap();
        assert_eq!(own.read().unwrap(), "from-file");
        let blank = OwnToken::Inline(" \n".to_owned().into());
        assert!(blank.read().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn without_audiences_none_are_sent_or_checked() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await.unwrap() });
        let (_, _, sent) = answer(
            &mut handle,
            StatusCode::CREATED,
            token_review(json!({"authenticated": true, "audiences": ["anything"],
                                "user": {"username": "bob"}})),
        )
        .await;
        assert_eq!(sent["spec"], json!({"token": "t"}));
        assert!(matches!(
            reviewed.await.unwrap(),
            TokenOutcome::Authenticated(who) if who.name == "bob"
        ));
    }

    #[tokio::test]
    async fn an_authenticated_review_without_a_user_name_is_an_error() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await });
        answer(
            &mut handle,
            StatusCode::CREATED,
            token_review(json!({"authenticated": true, "user": {"username": ""}})),
        )
        .await;
        assert!(matches!(
            reviewed.await.unwrap(),
            Err(ReviewError::Inconsistent(_))
        ));
    }

    #[tokio::test]
    async fn an_access_review_names_the_node_and_every_attribute_of_the_caller() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move {
            let resource = Resource::Node(Subresource::Proxy);
            AccessReviewer::review(&api, &alice(), Verb::Create, &resource).await
        });
        let (method, path, sent) = answer(
            &mut handle,
            StatusCode::CREATED,
            access_review(json!({"allowed": true, "reason": "bound"})),
        )
        .await;
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
        assert_eq!(
            sent["spec"],
            json!({
                "user": "alice", "uid": "u-1", "groups": ["ops"], "extra": {"scopes": ["a"]},
                "resourceAttributes": {"group": "", "version": "v1", "resource": "nodes",
                    "subresource": "proxy", "name": "node-a", "verb": "create"}
            })
        );
        assert_eq!(
            reviewed.await.unwrap().unwrap(),
            Decision::Allow {
                reason: "bound".into()
            }
        );
    }

    #[tokio::test]
    async fn allowed_and_denied_at_once_is_an_error_and_not_allowed_is_a_denial() {
        for (status, expected) in [
            (json!({"allowed": true, "denied": true}), None),
            (
                json!({"allowed": false, "reason": "no"}),
                Some(Decision::Deny {
                    reason: "no".into(),
                }),
            ),
            (
                json!({"allowed": false, "denied": true}),
                Some(Decision::Deny { reason: "".into() }),
            ),
        ] {
            let (api, mut handle) = api_server(&[]);
            let reviewed = tokio::spawn(async move {
                let resource = Resource::Node(Subresource::Metrics);
                AccessReviewer::review(&api, &alice(), Verb::Get, &resource).await
            });
            answer(
                &mut handle,
                StatusCode::CREATED,
                access_review(status.clone()),
            )
            .await;
            match (reviewed.await.unwrap(), expected) {
                (Ok(decision), Some(expected)) => assert_eq!(decision, expected, "{status}"),
                (Err(ReviewError::Inconsistent(_)), None) => {}
                (other, _) => panic!("{status}: {other:?}"),
            }
        }
    }

    fn status(code: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
               "message": "injected"})
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_is_tried_again_until_the_deadline() {
        let (api, mut handle) = api_server(&[]);
        let started = tokio::time::Instant::now();
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await });
        let mut attempts = Vec::new();
        // Every attempt is answered 503, until the client is dropped with the finished review.
        while let Some((_, respond)) =
            tokio::time::timeout(Duration::from_secs(6), handle.next_request())
                .await
                .expect("an attempt or the end within 6 s")
        {
            attempts.push(started.elapsed());
            let body = serde_json::to_vec(&status(503)).unwrap();
            respond.send_response(
                Response::builder()
                    .status(StatusCode::SERVICE_UNAVAILABLE)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            );
        }
        let gaps: Vec<_> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            (4..=5).contains(&attempts.len()),
            "0.5 s growing by half, within the 5 s deadline: {attempts:?}"
        );
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps[0] >= Duration::from_millis(400) && gaps[0] <= Duration::from_millis(600));
        assert!(*attempts.last().unwrap() < Duration::from_secs(5));
        assert!(matches!(
            reviewed.await.unwrap(),
            Err(ReviewError::Status { code: 503, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_runs_out_of_time_reports_the_failure_it_retried() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await });
        answer(&mut handle, StatusCode::SERVICE_UNAVAILABLE, status(503)).await;
        // The retry is never answered: the deadline passes while it waits.
        let (_held, _respond) = handle.next_request().await.expect("the retry");
        assert!(matches!(
            reviewed.await.unwrap(),
            Err(ReviewError::Status { code: 503, .. })
        ));
    }

    #[test]
    fn only_failures_that_may_pass_are_tried_again() {
        let failed = |code| ReviewError::Status {
            code,
            message: String::new(),
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(transient(&failed(code)), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!transient(&failed(code)), "{code}");
        }
        assert!(!transient(&ReviewError::Timeout(Duration::from_secs(1))));
        assert!(!transient(&ReviewError::Inconsistent(String::new())));
        let broken = |kind| {
            ReviewError::Transport(Arc::new(kube::Error::Service(Box::new(
                std::io::Error::new(kind, "x"),
            ))))
        };
        assert!(transient(&broken(std::io::ErrorKind::ConnectionReset)));
        assert!(
            !transient(&broken(std::io::ErrorKind::ConnectionRefused)),
            "nothing listens: fail at once, as the kubelet does"
        );
    }

    #[tokio::test]
    async fn an_error_status_is_kept_with_its_code_and_message() {
        let (api, mut handle) = api_server(&[]);
        let reviewed = tokio::spawn(async move { TokenReviewer::review(&api, "t").await });
        answer(
            &mut handle,
            StatusCode::FORBIDDEN,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 403,
                   "reason": "Forbidden", "message": "tokenreviews is forbidden"}),
        )
        .await;
        assert!(matches!(
            reviewed.await.unwrap(),
            Err(ReviewError::Status { code: 403, ref message }) if message == "tokenreviews is forbidden"
        ));
    }
}
