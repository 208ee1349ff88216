//! Shared doubles for the behaviour tests: stand-ins for the cluster around kubelet-guard.
//!
//! - [`pki`]: the cluster CA and the certificates it issues, generated at test time;
//! - [`apiserver`]: the Kubernetes API server, speaking TokenReview and SubjectAccessReview JSON;
//! - [`kubelet`]: a v1.36 kubelet behind mutual TLS, with real WebSocket and SPDY handshakes;
//! - [`client`]: the callers (kubectl, the API server, scrapers) as TLS clients;
//! - [`guard`]: kubelet-guard itself between the doubles, started with real flags;
//! - [`audit_log`]: the audit log file the guard writes, read back.
//!
//! The behaviour tests (`tests/behaviour.rs`, one binary) use all of it; the load harness
//! (`benches/load.rs`) includes it too and uses a part, hence the `dead_code` allowance. The
//! module is private to each crate that includes it, hence `unreachable_pub`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod apiserver;
pub mod audit_log;
pub mod audit_receiver;
pub mod client;
pub mod guard;
pub mod kubelet;
pub mod pki;
pub mod rbac_audit;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long [`with_deadline`] waits before failing the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Prepares the process for a test: ring as rustls' default provider, and tracing to the test output.
///
/// Safe to call from every test; later calls do nothing.
pub fn init() {
    // Another test in the same binary may have installed it already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

/// Sends SIGTERM to process `pid`, as the kubelet's node does to stop the guard; whether `kill`
/// could send it.
pub fn sigterm(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// A kubeconfig with one cluster, at `server` and verified against the CA file `ca`, and one user,
/// `user` as a YAML flow mapping (`{token: t}`, `{tokenFile: /path}`, `{}`).
pub fn kubeconfig(server: &str, ca: &std::path::Path, user: &str) -> String {
    let ca = serde_json::to_string(&ca.display().to_string()).expect("quote the path");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: {server}, \
         certificate-authority: {ca}}}\nusers:\n- name: u\n  user: {user}\ncontexts:\n- name: c\n  \
         context: {{cluster: c, user: u}}\ncurrent-context: c\n"
    )
}

/// Creates a fresh, empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "kubelet-guard-{tag}-{}-{n}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Awaits `f`, panicking with `what` if it takes longer than [`DEADLINE`].
pub async fn with_deadline<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no result within {DEADLINE:?}"),
    }
}

/// A loopback listener and a TLS acceptor (ALPN h2 and http/1.1, no client certificates) serving a
/// certificate from `ca` for `127.0.0.1` and `localhost`: the front of the HTTPS doubles.
pub async fn tls_listener(
    ca: &pki::Ca,
    name: &str,
) -> (
    tokio::net::TcpListener,
    tokio_rustls::TlsAcceptor,
    std::net::SocketAddr,
) {
    let serving = ca.server_cert(name, &["127.0.0.1", "localhost"]);
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![serving.cert_der()], serving.key_der())
    .expect("TLS config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (
        listener,
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        addr,
    )
}
