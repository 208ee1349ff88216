//! Listeners and connections: the guarded TLS listener (rustls, ALPN h2 and http/1.1, hyper's auto
//! connection with upgrades) and the plain-HTTP admin listener; graceful shutdown of both.
//!
//! Per connection the TLS handshake has a deadline and the client certificate is read once; per
//! request everything else is `proxy`'s job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::authn::x509;
use crate::metrics::{self, Metrics, Readiness};
use crate::proxy::{self, Peer, State};

/// How long a caller may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head accepted, as the kubelet's Go server (1 MiB).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// How long in-flight requests may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves the guarded API on `listener` until `shutdown` turns true, then drains.
pub async fn serve_proxy(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = connection_builder();
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let open = state.metrics.connection();
        tokio::spawn(async move {
            let _open = open;
            let Some((tls, peer)) = handshake(&acceptor, tcp, addr).await else {
                return;
            };
            let peer = Arc::new(peer);
            let service = service_fn(move |request| {
                let state = Arc::clone(&state);
                let peer = Arc::clone(&peer);
                async move {
                    Ok::<_, std::convert::Infallible>(proxy::handle(&state, &peer, request).await)
                }
            });
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    drain(graceful, "proxy").await;
}

/// Serves `/healthz`, `/readyz` and `/metrics` over plain HTTP until `shutdown` turns true.
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Metrics,
    ready: Readiness,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        let service =
            service_fn(move |request| metrics::admin(metrics.clone(), ready.clone(), request));
        let connection = builder
            .serve_connection(TokioIo::new(tcp), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drain(graceful, "admin").await;
}

/// Binds a listener, naming the flag when that fails.
pub async fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{flag} {addr}: cannot listen: {e}")))
}

/// Completes the TLS handshake and reads what the connection proves about the caller.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer)> {
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let certificate = x509::peer_identity(tls.get_ref().1.peer_certificates());
            Some((tls, Peer { addr, certificate }))
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake timed out");
            None
        }
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    // Extended CONNECT (RFC 8441) is let in so the classifier can refuse it as an upgrade with 405,
    // as the kubelet would, rather than h2 resetting the stream.
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// Resolves once shutdown has been asked for (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn drain(graceful: GracefulShutdown, listener: &str) {
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener,
            "connections still open after the grace period; closing them"
        );
    }
}
