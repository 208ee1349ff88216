//! kubelet-guard: an authorizing reverse proxy in front of the kubelet's HTTPS API.
//!
//! `run` wires the modules below into one request pipeline (see `proxy`). Traits that the
//! pipeline consumes are defined by their consumer (`authn::token::TokenReviewer`,
//! `authz::sar::AccessReviewer`); `apiserver` implements both against kube-apiserver.

pub mod apiserver;
/// Who is calling: certificate, bearer token, or anonymous.
pub mod authn;
/// May they: ordered checks through a cached, coalescing decision cache.
pub mod authz;
/// Flags into a validated `Config`.
pub mod config;
/// Forwarding to the kubelet: header hygiene, streaming, upgrade splice.
pub mod forward;
/// Request classification: verb, subresources, upgrade, canonical target (KUBELET-API.md).
pub mod kubelet_api;
/// Prometheus metrics and the admin endpoints.
pub mod metrics;
/// The per-request pipeline and the error → response mapping.
pub mod proxy;
/// Listeners, connections, graceful shutdown.
pub mod server;
/// PEM loading and rustls configurations.
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apiserver::ApiServer;
use crate::authn::Authenticator;
use crate::authn::token::TokenAuthenticator;
use crate::authz::Authorizer;
use crate::authz::sar::DecisionCache;
use crate::config::Config;
use crate::forward::Upstream;
use crate::metrics::{Metrics, Readiness};
use crate::proxy::State;

/// Why the guard could not start. Every variant names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or CA file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The API server client cannot be built.
    #[error(transparent)]
    ApiServer(#[from] apiserver::SetupError),
    /// The upstream token file is unusable.
    #[error(transparent)]
    UpstreamToken(#[from] forward::TokenFileError),
    /// A listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl StartError {
    /// Whether the operator's configuration is at fault (exit 64) rather than the environment.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, Self::Bind(_) | Self::Metrics(_))
    }
}

/// A started guard: where it listens and how to stop it.
pub struct Running {
    /// The guarded API's address.
    pub proxy_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Loads every file the configuration names, binds both listeners and starts serving. Nothing is
/// bound unless every file loaded.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let server_tls = Arc::new(tls::server_config(&config.serving)?);
    let upstream = Upstream::new(&config.upstream, tls::upstream_config(&config.upstream)?)?;
    let api = Arc::new(ApiServer::connect(&config.apiserver, config.node_name.clone()).await?);
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let ready = Readiness::default();

    let state = Arc::new(State {
        authenticator: Authenticator::new(
            TokenAuthenticator::new(api.clone(), config.cache.token),
            config.anonymous_auth,
        ),
        authorizer: Authorizer::new(DecisionCache::new(
            api,
            config.cache.authorized,
            config.cache.unauthorized,
        )),
        upstream,
        metrics: metrics.clone(),
        classify: kubelet_api::Options {
            proxy_fallback: config.proxy_fallback,
        },
    });

    let admin = server::bind(config.metrics_listen, "--metrics-listen").await?;
    let proxy = server::bind(config.listen, "--listen").await?;
    let (proxy_addr, admin_addr) = (proxy.local_addr()?, admin.local_addr()?);
    let (shutdown, stop) = watch::channel(false);
    let mut tasks = vec![
        tokio::spawn(server::serve_admin(
            admin,
            metrics,
            ready.clone(),
            stop.clone(),
        )),
        tokio::spawn(server::serve_proxy(
            proxy,
            server_tls.into(),
            Arc::clone(&state),
            stop.clone(),
        )),
    ];
    if let Some(token) = state.upstream.token().cloned() {
        tasks.push(tokio::spawn(reload_token(
            token,
            config.reload_interval,
            stop,
        )));
    }
    ready.set(true);
    tracing::info!(%proxy_addr, %admin_addr, node = %config.node_name, "kubelet-guard serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

impl Running {
    /// Stops accepting, drains open connections, and returns when every task has finished.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Re-reads the upstream token file every `interval` until shutdown.
async fn reload_token(
    token: forward::UpstreamToken,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = server::stopped(&mut stop) => return,
        }
        if let Err(e) = token.refresh() {
            tracing::warn!(error = %e, "keeping the last good upstream token");
        }
    }
}
