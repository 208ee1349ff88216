//! The only code that talks to kube-apiserver: TokenReview (`authentication.k8s.io/v1`) and
//! SubjectAccessReview (`authorization.k8s.io/v1`) on a `kube::Client` built from `--kubeconfig` or
//! the in-cluster configuration.
//!
//! One call is one HTTP request: kube's automatic retries are off and every call has the
//! `--apiserver-timeout` deadline, so a failing API server turns into a prompt `ReviewError`
//! (which callers answer with 500 and never cache) instead of a hung request.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

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

/// A client for the two review APIs, bound to one node name.
#[derive(Clone)]
pub struct ApiServer {
    client: kube::Client,
    audiences: Vec<String>,
    node: NodeName,
    timeout: Duration,
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
            metrics,
        })
    }

    /// Runs one API call under the deadline, timing it as `api`.
    async fn call<T>(
        &self,
        api: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ReviewError> {
        let started = Instant::now();
        let (code, result) = match tokio::time::timeout(self.timeout, call).await {
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
        self.metrics.apiserver(api, &code, started.elapsed());
        result
    }
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
            let answer = self
                .call("tokenreview", api.create(&PostParams::default(), &request))
                .await?;
            let Some(status) = answer.status else {
                return Err(ReviewError::Inconsistent(
                    "TokenReview without status".into(),
                ));
            };
            if status.authenticated != Some(true) {
                return Ok(TokenOutcome::Rejected);
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
            Ok(TokenOutcome::Authenticated(Arc::new(Identity {
                name,
                uid: user.uid.unwrap_or_default(),
                groups: user.groups.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
            })))
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
                Resource::Pod {
                    namespace, name, ..
                } => (Some(namespace.clone()), name.as_str()),
            };
            let request = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(who.name.clone()),
                    uid: (!who.uid.is_empty()).then(|| who.uid.clone()),
                    groups: Some(who.groups.clone()),
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
            let answer = self
                .call(
                    "subjectaccessreview",
                    api.create(&PostParams::default(), &request),
                )
                .await?;
            let Some(status) = answer.status else {
                return Err(ReviewError::Inconsistent(
                    "SubjectAccessReview without status".into(),
                ));
            };
            let reason = status.reason.unwrap_or_default();
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
    /// neither has one (embedded mode on a machine outside a cluster).
    pub async fn find(settings: &config::ApiServerSettings) -> Option<Self> {
        let kube_config = match &settings.kubeconfig {
            Some(path) => from_file(path).await.ok()?,
            None => kube::Config::incluster().ok()?,
        };
        let auth = kube_config.auth_info;
        match (auth.token, auth.token_file) {
            (Some(token), _) => Some(Self::Inline(token)),
            (None, Some(file)) => Some(Self::File(file.into())),
            (None, None) => None,
        }
    }

    /// The token now; `None` if its file cannot be read.
    pub fn read(&self) -> Option<String> {
        use secrecy::ExposeSecret;
        match self {
            Self::Inline(token) => Some(token.expose_secret().to_owned()),
            Self::File(path) => std::fs::read_to_string(path)
                .ok()
                .map(|token| token.trim().to_owned()),
        }
    }
}

async fn from_file(path: &Path) -> Result<kube::Config, SetupError> {
    let invalid = |message: String| SetupError::Kubeconfig {
        path: path.to_owned(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| invalid(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))
}

