//! Listeners: the guarded TLS listener and the plain-HTTP admin listener, their start-up and
//! their graceful shutdown.
//!
//! - Start-up: the admin listener binds first, so probes get answers while the guarded listener
//!   waits for its address: when the kubelet still holds it (it has not been moved to 127.0.0.1
//!   yet), binding is retried with backoff and logged, `/readyz` answering 503 until it succeeds.
//! - Accept: over `--max-connections` a new connection is closed at once and counted; under it,
//!   a connection is served by `connection` with the serving certificate in force at accept, on
//!   one of the `workers`' threads.
//! - Shutdown: the listener closes (no new connections), open connections finish what they are
//!   serving, and whatever is still open at the end of `--shutdown-grace-period` is closed
//!   (`crate::shutdown`). `/readyz` turns 503 as shutdown starts (`Running::stop`); the admin listener
//!   keeps answering until the guarded one has drained.

mod connection;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admission::Unproven;
use crate::config::Limits;
use crate::metrics::{self, Metrics, Readiness};
use crate::proxy::State;
use crate::reload::Watched;
use crate::shutdown::{Drain, stopped};
use crate::tls::Serving;
use connection::Limit;
pub use workers::Workers;

/// A listener bound at start-up, or an address another process still holds.
#[derive(Debug)]
pub enum Listen {
    /// Bound and ready to accept.
    Bound(TcpListener),
    /// In use at start-up; bound by the serving task, retrying with backoff.
    InUse(SocketAddr),
}

/// The guarded listener and everything its connections share.
pub struct Proxy {
    /// Where to accept.
    pub listen: Listen,
    /// The serving configuration, polled for new certificates.
    pub tls: Arc<Watched<Serving>>,
    /// The request pipeline's state.
    pub state: Arc<State>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// How long open connections may take to finish once shutdown starts.
    pub grace: Duration,
    /// Tracks open connections and upgraded streams for shutdown.
    pub drain: Drain,
    /// Turned ready once the listener is bound.
    pub ready: Readiness,
    /// The threads connections are served on.
    pub workers: Workers,
}

/// Most admin connections open at once from one source address.
pub const ADMIN_PER_SOURCE: usize = 32;
/// Most admin connections open at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 512;
/// How long an admin connection may take to send a request head, from connecting or from the
/// previous response.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an admin connection may stay open at all: hyper has no write timeout, so a caller
/// that pipelines requests and reads no answer would otherwise keep its slot for ever. A scraper
/// that keeps its connection alive opens a new one now and then.
pub const ADMIN_LIFETIME: Duration = Duration::from_secs(60);
/// After a failed accept (out of file descriptors, say): logs it, and pauses, as accepting again
/// at once would spin.
async fn accept_failed(listener: &'static str, error: &std::io::Error) {
    tracing::warn!(listener, %error, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Largest admin request head (the endpoints take no parameters).
const ADMIN_MAX_HEAD: usize = 8192;

/// First delay between two attempts to bind an address in use.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// Longest delay between two attempts to bind an address in use.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Serves the guarded API until `stop` turns true, then drains.
pub async fn serve_proxy(proxy: Proxy, mut stop: watch::Receiver<bool>) {
    let Proxy {
        listen,
        tls,
        state,
        limits,
        grace,
        drain,
        ready,
        workers,
    } = proxy;
    let listener = match listen {
        Listen::Bound(listener) => listener,
        Listen::InUse(addr) => match bind_retrying(addr, "--listen", &mut stop).await {
            Some(listener) => listener,
            None => return,
        },
    };
    if !*stop.borrow() {
        ready.set(true);
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let unproven = Unproven::new(limits.unauthenticated_per_source);
    let context = Arc::new(connection::Context::new(tls, Arc::clone(&state), limits));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed("--listen", &e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Over a limit the connection is closed before its TLS handshake costs anything: first the
        // source's unauthenticated connections, so one source cannot take every slot.
        let Some(admission) = unproven.admit(addr.ip()) else {
            state
                .metrics
                .limit_hit(Limit::UnauthenticatedPerSource.as_str());
            tracing::debug!(peer = %addr, "over --max-unauthenticated-connections-per-source; closed");
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            state.metrics.limit_hit(Limit::MaxConnections.as_str());
            tracing::debug!(peer = %addr, "over --max-connections; closed");
            continue;
        };
        let (context, open) = (Arc::clone(&context), drain.track());
        workers.spawn(tcp, move |tcp| {
            connection::serve(context, tcp, addr, slot, admission, open)
        });
    }
    // No new connections from here on; the kernel refuses them once the socket is closed.
    drop(listener);
    tracing::info!(
        open = drain.open(),
        "draining connections, streams and responses"
    );
    let closed = drain.run(grace).await;
    if closed > 0 {
        tracing::warn!(
            closed,
            "connections, streams and responses still open at the end of \
             --shutdown-grace-period were closed"
        );
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` over plain HTTP/1.1 until `stop` turns true, then
/// gives open admin connections up to `grace` to finish.
///
/// The admin listener is on the node's address (the kubelet's probes reach it there), so it has
/// limits of its own, each counted in `kubelet_guard_limit_hits_total`: at most
/// [`ADMIN_PER_SOURCE`] connections per source address and [`ADMIN_MAX_CONNECTIONS`] in all (over
/// either, closed at once), each request head must arrive within [`ADMIN_HEADER_TIMEOUT`] of
/// connecting or of the previous response, so silent and idle connections close alike, and no
/// connection stays open longer than [`ADMIN_LIFETIME`].
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(ADMIN_MAX_HEAD);
    let per_source = Unproven::new(ADMIN_PER_SOURCE);
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed("--metrics-listen", &e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Some(admitted) = per_source.admit(addr.ip()) else {
            metrics.limit_hit("admin-per-source");
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.limit_hit("admin-max-connections");
            continue;
        };
        let (for_service, for_task) = (metrics.clone(), metrics.clone());
        let ready = ready.clone();
        let service =
            service_fn(move |request| metrics::admin(for_service.clone(), ready.clone(), request));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            match tokio::time::timeout(ADMIN_LIFETIME, connection).await {
                Ok(Err(e)) if e.is_timeout() => for_task.limit_hit("admin-header-read-timeout"),
                Err(_) => for_task.limit_hit("admin-lifetime"),
                Ok(_) => {}
            }
            drop((admitted, slot));
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections still open after the grace period");
    }
}

/// Binds a listener; an address in use is [`Listen::InUse`] (the serving task retries), any other
/// failure an error naming the flag.
pub async fn bind(addr: SocketAddr, flag: &'static str) -> Result<Listen, std::io::Error> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Listen::Bound(listener)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                flag,
                %addr,
                "address in use (is the kubelet still listening on it?); retrying until it is free"
            );
            Ok(Listen::InUse(addr))
        }
        Err(e) => Err(cannot_listen(addr, flag, &e)),
    }
}

/// Binds a listener that must be available now, naming the flag when it is not.
pub async fn bind_now(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| cannot_listen(addr, flag, &e))
}

/// Binds `addr`, retrying with doubling delays while it is in use; `None` if `stop` came first.
async fn bind_retrying(
    addr: SocketAddr,
    flag: &'static str,
    stop: &mut watch::Receiver<bool>,
) -> Option<TcpListener> {
    let mut delay = FIRST_RETRY;
    let mut attempts = 1u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stopped(stop) => return None,
        }
        attempts += 1;
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(flag, %addr, attempts, "bound");
                return Some(listener);
            }
            Err(e) => {
                delay = (delay * 2).min(MAX_RETRY);
                tracing::warn!(
                    flag,
                    %addr,
                    error = %e,
                    retry_in = ?delay,
                    "cannot listen yet (is the kubelet still listening on it?)"
                );
            }
        }
    }
}

fn cannot_listen(addr: SocketAddr, flag: &'static str, e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{flag} {addr}: cannot listen: {e}"))
}
