//! kubelet-guard: an authorizing reverse proxy in front of the kubelet's HTTPS API.
//!
//! `run` wires the modules below into one request pipeline (see `proxy`). Traits that the
//! pipeline consumes are defined by their consumer (`authn::token::TokenReviewer`,
//! `authz::decisions::AccessReviewer`); `apiserver` implements both against kube-apiserver.

/// Connections admitted before their caller proved who it is: a cap per source address.
pub mod admission;
pub mod apiserver;
/// The audit trail: `audit.k8s.io/v1` events and their sinks.
pub mod audit;
/// Who is calling: certificate, bearer token, or anonymous.
pub mod authn;
/// May they: ordered checks through a cached, coalescing decision cache.
pub mod authz;
/// The binary's command line: subcommands and the `--config` file.
pub mod cli;
/// `serve`'s flags into a validated `Config`, and the settings each module is built from.
pub mod config;
/// `kubelet-guard demo`: a kubelet stand-in, embedded mode and a tour.
pub mod demo;
/// Embedded mode: the static token file and the RBAC policy file as reviewers.
pub mod embedded;
/// Forwarding to the kubelet: header hygiene, streaming, upgrade splice.
pub mod forward;
/// Request classification: verb, subresources, upgrade, canonical target (docs/kubelet-api.md).
pub mod kubelet_api;
/// The self-check that the kubelet refuses whoever lacks the guard's certificate.
pub mod lockdown;
/// Prometheus metrics and the admin endpoints.
pub mod metrics;
/// `kubelet-guard node-pki`: the node-local CA and the guard's renewable upstream certificate.
pub mod node_pki;
/// The per-request pipeline and the error → response mapping.
pub mod proxy;
/// `kubelet-guard rbac-audit`: RBAC grants of the kubelet's subresources, and their replacements.
pub mod rbac_audit;
/// Polling reload of files with keep-last-good semantics.
pub mod reload;
/// The reviewer future and the error that means no answer, shared by authn, authz and their implementations.
pub mod review;
/// Listeners, connections, graceful shutdown.
pub mod server;
/// The stop signal and the drain of connections and streams, below everything that must stop.
pub mod shutdown;
/// PEM loading and rustls configurations.
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apiserver::ApiServer;
use crate::authn::Authenticator;
use crate::authn::token::TokenAuthenticator;
use crate::authn::token::TokenReviewer;
use crate::authz::Authorizer;
use crate::authz::decisions::AccessReviewer;
use crate::authz::decisions::DecisionCache;
use crate::config::{Config, NodeName};
use crate::embedded::{PolicyFile, TokenFile};
use crate::forward::Upstream;
use crate::metrics::{Metrics, Readiness};
use crate::proxy::State;
use crate::reload::{Poll, Reload, Watched};
use crate::server::{Listen, Proxy};
use crate::shutdown::Drain;

/// Why the guard could not start. Every variant names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate, key or CA file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The API server client cannot be built.
    #[error(transparent)]
    ApiServer(#[from] apiserver::SetupError),
    /// A token, policy or credential file is unusable.
    #[error(transparent)]
    File(#[from] reload::FileError),
    /// A listener cannot be bound.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// The worker threads cannot start, or cannot be pinned as asked (`InvalidInput`: more
    /// workers than CPUs, which the flags can fix).
    #[error(transparent)]
    Workers(std::io::Error),
    /// An audit sink cannot be opened.
    #[error(transparent)]
    Audit(#[from] audit::sink::AuditError),
    /// The node PKI directory is unusable, or its CA is trusted for callers.
    #[error(transparent)]
    NodePki(#[from] node_pki::PkiError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// `--kubelet-lockdown=require` without an API-server token to probe the kubelet with.
    #[error(
        "--kubelet-lockdown: require cannot be met: the guard has no API-server token of its own \
         to prove that the kubelet refuses tokens (give --kubeconfig a user with a token or token \
         file, or run in a pod with a service-account token; or use warn)"
    )]
    LockdownUnprovable,
    /// `--kubelet-lockdown=require` with an API-server token file that cannot be read now.
    #[error("--kubelet-lockdown: require cannot be met: the guard's own API-server {0}")]
    LockdownTokenUnreadable(String),
}

impl StartError {
    /// Whether the operator's configuration is at fault (exit 64) rather than the environment.
    pub fn is_configuration(&self) -> bool {
        match self {
            Self::Bind(_) | Self::Metrics(_) => false,
            Self::Workers(e) => e.kind() == std::io::ErrorKind::InvalidInput,
            _ => true,
        }
    }
}

/// A started guard: where it listens and how to stop it.
pub struct Running {
    /// The guarded API's address.
    pub proxy_addr: SocketAddr,
    /// The admin listener's address.
    pub admin_addr: SocketAddr,
    ready: Readiness,
    drain: watch::Sender<bool>,
    /// Taken by [`failed`](Running::failed) if it ended.
    proxy: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// The background tasks by name; one [`failed`](Running::failed) saw end is taken.
    tasks: Vec<(&'static str, Option<JoinHandle<()>>)>,
}

/// How often [`Running::failed`] looks at the tasks.
const WATCH_TASKS: std::time::Duration = std::time::Duration::from_secs(1);

/// Loads every file the configuration names, binds both listeners and starts serving. Nothing is
/// bound unless every file loaded. If the guarded address is still in use, the guard starts
/// anyway, unready, and binds it as soon as it is free.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // Every field by name: a new one that nothing here uses fails to compile.
    let Config {
        listen,
        metrics_listen,
        serving: serving_files,
        upstream: upstream_settings,
        node_name,
        apiserver: api_settings,
        cache,
        anonymous_auth,
        proxy_fallback,
        mode,
        pod_scope_exempt,
        reload_interval,
        audit: audit_settings,
        tls_policy,
        limits,
        shutdown_grace,
        node_pki_dir,
        lockdown: (lockdown_mode, lockdown_interval),
    } = config;
    let metrics = Metrics::new(prometheus::Registry::new())?;
    let node_pki = node_pki_dir.as_deref().map(node_pki::Paths::new);
    let never_trusted = match &node_pki {
        Some(paths) => {
            node_pki::check_issued(paths)?;
            node_pki::node_ca(paths)?
        }
        None => Vec::new(),
    };
    let serving = Arc::new(tls::reload::serving(
        &serving_files,
        &tls_policy,
        metrics.certificate_expiry("serving"),
        never_trusted.clone(),
    )?);
    let drain = Drain::new();
    let upstream = Arc::new(Upstream::new(
        &upstream_settings,
        mode == config::Mode::Observe,
        drain.clone(),
        // Made only for a certificate: the series is absent with a token, as its help says.
        matches!(
            upstream_settings.credential,
            tls::UpstreamCredential::ClientCert { .. }
        )
        .then(|| metrics.certificate_expiry("upstream")),
        metrics.limit_counter("stream-unread"),
    )?);
    let upstream_files = upstream.client_files();
    let mut watched: Vec<Arc<dyn Poll>> = vec![serving.clone()];
    watched.extend(upstream.watched());
    let (tokens, access) = reviewers(&api_settings, &node_name, &metrics, &mut watched).await?;
    let ready = Readiness::default();
    // The audit writer stops after the guarded listener has drained (Running::stop), so the last
    // events of drained requests and closed streams are still written.
    let (shutdown, stop) = watch::channel(false);
    let (auditor, audit_writer) = audit::sink::Auditor::start(
        &audit_settings,
        metrics.audit_dropped.clone(),
        metrics.audit_webhook_failures.clone(),
        stop.clone(),
    )
    .await?;

    let state = Arc::new(State {
        authenticator: Authenticator::new(
            TokenAuthenticator::new(
                tokens,
                cache.token,
                authn::token::FAILED_TTL,
                metrics.clone(),
            ),
            anonymous_auth,
        ),
        authorizer: Authorizer::new(DecisionCache::new(
            access,
            cache.authorized,
            cache.unauthorized,
            metrics.clone(),
        )),
        upstream: Arc::clone(&upstream),
        metrics: metrics.clone(),
        audit: auditor,
        classify: kubelet_api::Options { proxy_fallback },
        mode,
        pod_scope_exempt,
        node: node_name.clone(),
    });

    // Threads before any port: a --worker-threads the machine cannot pin fails start-up unbound.
    let workers = server::Workers::start(limits.worker_threads, limits.worker_cpu_affinity)
        .map_err(StartError::Workers)?;
    // The lockdown probe's own token, read before anything binds: `require` with none can never
    // be met, and a --kubeconfig given for it must be readable.
    let own_token = match lockdown_mode {
        config::Lockdown::Off => None,
        _ => apiserver::OwnToken::find(&api_settings).await?,
    };
    if lockdown_mode == config::Lockdown::Require {
        match own_token.as_ref().map(apiserver::OwnToken::read) {
            None => return Err(StartError::LockdownUnprovable),
            Some(Err(why)) => return Err(StartError::LockdownTokenUnreadable(why)),
            Some(Ok(_)) => {}
        }
    }
    // Unready under `require` from the admin listener's first answer, not from the probe task's
    // first poll.
    if lockdown_mode == config::Lockdown::Require {
        ready.hold(Some(lockdown::UNPROVEN.to_owned()));
    }
    // The admin listener first: probes get an answer (503) while the guarded address is held.
    let admin = server::bind_now(metrics_listen, "--metrics-listen").await?;
    let admin_addr = admin.local_addr()?;
    let listen = server::bind(listen, "--listen").await?;
    let proxy_addr = match &listen {
        Listen::Bound(listener) => {
            ready.set(true);
            listener.local_addr()?
        }
        Listen::InUse(addr) => *addr,
    };
    let (drain_signal, drain_stop) = watch::channel(false);
    let proxy = tokio::spawn(server::serve_proxy(
        Proxy {
            listen,
            tls: serving,
            state: Arc::clone(&state),
            limits,
            grace: shutdown_grace,
            drain,
            ready: ready.clone(),
            workers,
        },
        drain_stop,
    ));
    let mut tasks = vec![
        ("the audit writer", audit_writer),
        (
            "the admin listener",
            tokio::spawn(server::serve_admin(
                admin,
                metrics.clone(),
                ready.clone(),
                shutdown_grace,
                stop.clone(),
            )),
        ),
        (
            "the file reloader",
            tokio::spawn(reload_files(
                watched,
                Arc::clone(&state),
                reload_interval,
                stop.clone(),
            )),
        ),
    ];
    if let Some(paths) = node_pki {
        tasks.push((
            "the node PKI renewal",
            tokio::spawn(node_pki::renew(
                paths,
                node_name.clone(),
                upstream_files,
                metrics.clone(),
                stop.clone(),
            )),
        ));
    }
    if lockdown_mode != config::Lockdown::Off {
        let probe = lockdown::Probe {
            upstream: upstream_settings,
            kubelet: upstream,
            node_ca: never_trusted,
            token: own_token,
            mode: lockdown_mode,
            metrics,
            ready: ready.clone(),
        };
        tasks.push((
            "the lockdown check",
            tokio::spawn(lockdown::run(probe, lockdown_interval, stop)),
        ));
    }
    tracing::info!(%proxy_addr, %admin_addr, node = %node_name, "kubelet-guard serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        ready,
        drain: drain_signal,
        proxy: Some(proxy),
        shutdown,
        tasks: tasks
            .into_iter()
            .map(|(name, task)| (name, Some(task)))
            .collect(),
    })
}

impl Running {
    /// Shuts down gracefully: `/readyz` turns 503 at once, the guarded listener closes, open
    /// connections finish within `--shutdown-grace-period` (upgraded streams are closed at its
    /// end), then the admin listener and the background tasks stop. Returns when all have.
    pub async fn stop(self) {
        self.ready.set(false);
        let _ = self.drain.send(true);
        if let Some(proxy) = self.proxy {
            let _ = proxy.await;
        }
        // Only now the rest: probes keep getting their 503 while connections drain, and whatever
        // drained requests record still has somewhere to go.
        let _ = self.shutdown.send(true);
        for task in self.tasks.into_iter().filter_map(|(_, task)| task) {
            let _ = task.await;
        }
    }

    /// Resolves, naming it, when the guarded listener ends or a background task panics before
    /// [`stop`](Self::stop). Neither happens but by a bug; the process must then not go on
    /// half-working (`/healthz` answering while no caller is served, or certificates no longer
    /// reloaded), but stop, so that it is restarted. A task that ends normally early (the audit
    /// writer without a sink) is let go.
    pub async fn failed(&mut self) -> &'static str {
        loop {
            if self.proxy.as_ref().is_some_and(JoinHandle::is_finished) {
                if let Some(proxy) = self.proxy.take() {
                    let _ = proxy.await;
                }
                return "the guarded listener";
            }
            for (name, slot) in &mut self.tasks {
                if slot.as_ref().is_some_and(JoinHandle::is_finished)
                    && let Some(task) = slot.take()
                    && task.await.is_err()
                {
                    return name;
                }
            }
            tokio::time::sleep(WATCH_TASKS).await;
        }
    }
}

/// The token and access reviewers: the embedded files where given, else the API server (connected
/// only when one of the two needs it).
async fn reviewers(
    settings: &config::ApiServerSettings,
    node: &NodeName,
    metrics: &Metrics,
    watched: &mut Vec<Arc<dyn Poll>>,
) -> Result<(Arc<dyn TokenReviewer>, Arc<dyn AccessReviewer>), StartError> {
    let mut api = None;
    let tokens: Arc<dyn TokenReviewer> = match &settings.token_auth_file {
        Some(path) => {
            let file = Arc::new(Watched::load(
                "--token-auth-file",
                path,
                embedded::parse_tokens,
            )?);
            watched.push(file.clone());
            Arc::new(TokenFile(file))
        }
        None => connected(&mut api, settings, node, metrics).await?,
    };
    let access: Arc<dyn AccessReviewer> = match &settings.rbac_policy_file {
        Some(path) => {
            let policy = Arc::new(Watched::load(
                "--rbac-policy-file",
                path,
                embedded::parse_policy,
            )?);
            watched.push(policy.clone());
            Arc::new(PolicyFile::new(policy, node.clone()))
        }
        None => connected(&mut api, settings, node, metrics).await?,
    };
    Ok((tokens, access))
}

/// The API server client, connected on first need and shared after.
async fn connected(
    api: &mut Option<Arc<ApiServer>>,
    settings: &config::ApiServerSettings,
    node: &NodeName,
    metrics: &Metrics,
) -> Result<Arc<ApiServer>, StartError> {
    if let Some(api) = api {
        return Ok(Arc::clone(api));
    }
    let connected = Arc::new(ApiServer::connect(settings, node.clone(), metrics.clone()).await?);
    *api = Some(Arc::clone(&connected));
    Ok(connected)
}

/// Polls every watched file each `interval` until shutdown, counting what failed to reload. A
/// changed file is read again a second later (or `interval`, if shorter) and taken in when the
/// reads agree. A new token or policy file empties the caches its old content filled: revocation
/// takes effect now.
async fn reload_files(
    watched: Vec<Arc<dyn Poll>>,
    state: Arc<State>,
    interval: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    if watched.is_empty() {
        return;
    }
    let pause = interval.min(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = shutdown::stopped(&mut stop) => return,
        }
        for file in &watched {
            let settled = tokio::select! {
                settled = reload::settled(file.as_ref(), pause) => settled,
                () = shutdown::stopped(&mut stop) => return,
            };
            match settled {
                Reload::Unchanged => {}
                Reload::Changing { flag } => {
                    tracing::warn!(flag, "still changing at every read: read again next time");
                }
                Reload::Reloaded { flag } => {
                    tracing::info!(flag, "reloaded");
                    match flag {
                        "--token-auth-file" => state.authenticator.forget(),
                        "--rbac-policy-file" => state.authorizer.forget(),
                        _ => {}
                    }
                    state.metrics.reload(flag, true);
                }
                Reload::Kept(e) => {
                    tracing::warn!(error = %e, "keeping the last good content");
                    state.metrics.reload(e.flag, false);
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (how Kubernetes stops a pod).
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    /// A guard whose listener task and background tasks are `proxy` and `tasks`.
    fn running(proxy: JoinHandle<()>, tasks: Vec<(&'static str, JoinHandle<()>)>) -> Running {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Running {
            proxy_addr: addr,
            admin_addr: addr,
            ready: Readiness::default(),
            drain: watch::channel(false).0,
            proxy: Some(proxy),
            shutdown: watch::channel(false).0,
            tasks: tasks.into_iter().map(|(name, t)| (name, Some(t))).collect(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_or_a_listener_that_ends_is_a_failure_an_early_end_is_not() {
        let mut guard = running(
            tokio::spawn(std::future::pending()),
            vec![
                ("the audit writer", tokio::spawn(async {})),
                (
                    "the file reloader",
                    tokio::spawn(async {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        panic!("a bug");
                    }),
                ),
            ],
        );
        let failed = tokio::time::timeout(Duration::from_secs(60), guard.failed())
            .await
            .expect("the panic is seen");
        assert_eq!(failed, "the file reloader");

        let mut guard = running(tokio::spawn(async {}), Vec::new());
        assert_eq!(guard.failed().await, "the guarded listener");
        guard.stop().await;

        // Nothing ends: nothing is reported.
        let mut guard = running(
            tokio::spawn(std::future::pending()),
            vec![("the audit writer", tokio::spawn(async {}))],
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(600), guard.failed())
                .await
                .is_err()
        );
    }
}
