//! kubelet-guard itself, started in-process on loopback ports with real flags, between an API
//! server double and a kubelet double, with one PKI for the whole little cluster.
//!
//! The cluster CA signs the API server's and the guard's serving certificates and every caller's
//! client certificate (as kubeadm's does); the kubelet CA signs the kubelet's serving certificate
//! and the guard's upstream client certificate.

use std::net::SocketAddr;

use kubelet_guard::Running;
use kubelet_guard::cli::{Cli, Command};

use super::apiserver::ApiServerDouble;
use super::client::TlsClient;
use super::kubelet::{Auth, KubeletDouble};
use super::pki::{Ca, CertKey};

/// The node name every review must carry.
pub const NODE: &str = "node-1";

/// A running guard with its doubles.
pub struct Cluster {
    /// Signs the API server, the guard's serving certificate and callers' client certificates.
    pub ca: Ca,
    /// Signs the kubelet's serving certificate and the guard's client certificate for it.
    pub kubelet_ca: Ca,
    /// The API server double.
    pub api: ApiServerDouble,
    /// The kubelet double.
    pub kubelet: KubeletDouble,
    /// The guard.
    pub guard: Running,
    /// The node PKI directory the guard's upstream credential comes from, if it has one.
    pub node_pki: Option<std::path::PathBuf>,
}

impl Cluster {
    /// The flags of another guard wired to this cluster's doubles, plus `extra`.
    pub fn flags(&self, extra: &[&str]) -> Vec<String> {
        flags(&self.ca, &self.kubelet_ca, &self.api, &self.kubelet, extra)
    }

    /// Starts the doubles and a guard with the default flags plus `extra`.
    pub async fn start(extra: &[&str]) -> Cluster {
        super::init();
        let ca = Ca::new("cluster");
        let kubelet_ca = Ca::new("kubelet");
        let api = ApiServerDouble::start(&ca).await;
        let kubelet = KubeletDouble::start(
            &kubelet_ca.server_cert(NODE, &["127.0.0.1", "localhost"]),
            &kubelet_ca,
        )
        .await;
        let guard = start_guard(&ca, &kubelet_ca, &api, &kubelet, extra)
            .await
            .unwrap_or_else(|e| panic!("guard did not start: {e}"));
        Cluster {
            ca,
            kubelet_ca,
            api,
            kubelet,
            guard,
            node_pki: None,
        }
    }

    /// Makes a node PKI with `kubelet-guard node-pki --validity=<validity>`, starts a kubelet
    /// that trusts its CA for client certificates and authenticates as `auth` says, and a guard
    /// with `--node-pki-dir` and the default flags plus `extra`.
    pub async fn start_with_node_pki(auth: Auth, validity: &str, extra: &[&str]) -> Cluster {
        Self::start_with_node_pki_trusting(auth, validity, extra, false).await
    }

    /// As [`Cluster::start_with_node_pki`]; with `cluster_ca_too` the kubelet also trusts client
    /// certificates from the cluster CA (`--client-ca-file` left pointing at it).
    pub async fn start_with_node_pki_trusting(
        auth: Auth,
        validity: &str,
        extra: &[&str],
        cluster_ca_too: bool,
    ) -> Cluster {
        super::init();
        let ca = Ca::new("cluster");
        let kubelet_ca = Ca::new("kubelet");
        let api = ApiServerDouble::start(&ca).await;
        let dir = super::temp_dir("node-pki").join("pki");
        make_node_pki(&dir, NODE, validity);
        let mut client_cas = std::fs::read(dir.join("ca.crt")).expect("node CA");
        if cluster_ca_too {
            client_cas.extend(std::fs::read(ca.cert_path()).expect("cluster CA"));
        }
        let client_ca_file = dir.with_file_name("kubelet-client-ca.crt");
        std::fs::write(&client_ca_file, client_cas).expect("kubelet client CA file");
        let kubelet = KubeletDouble::start_trusting(
            &kubelet_ca.server_cert(NODE, &["127.0.0.1", "localhost"]),
            &client_ca_file,
            auth,
        )
        .await;
        let mut argv: Vec<String> = flags(&ca, &kubelet_ca, &api, &kubelet, extra)
            .into_iter()
            .filter(|flag| !flag.starts_with("--upstream-client-"))
            .collect();
        argv.push(format!("--node-pki-dir={}", dir.display()));
        let guard = start_with_flags(&argv)
            .await
            .unwrap_or_else(|e| panic!("guard did not start: {e}"));
        Cluster {
            ca,
            kubelet_ca,
            api,
            kubelet,
            guard,
            node_pki: Some(dir),
        }
    }

    /// The guarded API's address.
    pub fn addr(&self) -> SocketAddr {
        self.guard.proxy_addr
    }

    /// A caller that trusts the guard and presents no client certificate.
    pub fn client(&self) -> TlsClient {
        TlsClient::new(self.ca.cert_path(), None)
    }

    /// A caller presenting a client certificate from the cluster CA.
    pub fn client_with_cert(&self, cn: &str, orgs: &[&str]) -> TlsClient {
        TlsClient::new(self.ca.cert_path(), Some(&self.ca.client_cert(cn, orgs)))
    }

    /// GETs `path` with a bearer token and returns status and body.
    pub async fn get(&self, path: &str, token: &str) -> (http::StatusCode, String) {
        let (status, _, body) = self.client().get(self.addr(), path, Some(token)).await;
        (status, body)
    }

    /// Opens an exec-style WebSocket (`v5.channel.k8s.io`) to `target` with a bearer token,
    /// expects the 101 and reads the kubelet double's greeting.
    pub async fn exec_websocket(&self, target: &str, token: &str) -> super::client::WsStream {
        use futures_util::StreamExt;
        let (response, mut socket) = self
            .client()
            .websocket(self.addr(), target, Some(token), &["v5.channel.k8s.io"])
            .await
            .expect("WebSocket handshake");
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        socket
            .next()
            .await
            .expect("a greeting")
            .expect("the greeting frame");
        socket
    }

    /// How often `limit` was hit (`kubelet_guard_limit_hits_total`).
    pub async fn limit_hits(&self, limit: &str) -> u64 {
        let series = format!("kubelet_guard_limit_hits_total{{limit=\"{limit}\"}} ");
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        admin_get(self.guard.admin_addr, "/metrics").await
    }
}

/// The flags of a guard wired to the doubles, plus `extra` (a flag may be given once only).
pub fn flags(
    ca: &Ca,
    kubelet_ca: &Ca,
    api: &ApiServerDouble,
    kubelet: &KubeletDouble,
    extra: &[&str],
) -> Vec<String> {
    let serving: CertKey = ca.server_cert(NODE, &["127.0.0.1", "localhost"]);
    let upstream = kubelet_ca.client_cert("kubelet-guard", &[]);
    let mut argv: Vec<String> = vec![
        "kubelet-guard".into(),
        "serve".into(),
        "--listen=127.0.0.1:0".into(),
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--tls-cert-file={}", serving.cert_path.display()),
        format!("--tls-private-key-file={}", serving.key_path.display()),
        format!("--client-ca-file={}", ca.cert_path().display()),
        format!("--upstream={}", kubelet.url()),
        format!("--upstream-ca-file={}", kubelet_ca.cert_path().display()),
        format!(
            "--upstream-client-cert-file={}",
            upstream.cert_path.display()
        ),
        format!("--upstream-client-key-file={}", upstream.key_path.display()),
        format!("--node-name={NODE}"),
    ];
    if !extra.iter().any(|flag| flag.starts_with("--kubeconfig=")) {
        argv.push(format!("--kubeconfig={}", api.write_kubeconfig().display()));
    }
    // The lockdown probe would add its requests to what the kubelet double records: off unless a
    // test asks for it.
    if !extra
        .iter()
        .any(|flag| flag.starts_with("--kubelet-lockdown="))
    {
        argv.push("--kubelet-lockdown=off".into());
    }
    argv.extend(extra.iter().map(|flag| (*flag).to_owned()));
    argv
}

/// Runs `kubelet-guard node-pki` for `node` into `dir`, as the DaemonSet's init container does.
pub fn make_node_pki(dir: &std::path::Path, node: &str, validity: &str) {
    let cli = <Cli as clap::Parser>::try_parse_from([
        "kubelet-guard",
        "node-pki",
        &format!("--dir={}", dir.display()),
        &format!("--node-name={node}"),
        &format!("--validity={validity}"),
    ])
    .expect("node-pki flags");
    let Command::NodePki(args) = cli.command else {
        panic!("not node-pki")
    };
    kubelet_guard::node_pki::run(args).expect("node-pki");
}

/// Parses `flags` exactly as the binary does and starts the guard.
pub async fn start_with_flags(argv: &[String]) -> Result<Running, String> {
    let cli = <Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Serve(args) = cli.command else {
        return Err("not a serve command".into());
    };
    let config = args.validate().map_err(|e| e.to_string())?;
    kubelet_guard::start(config)
        .await
        .map_err(|e| e.to_string())
}

async fn start_guard(
    ca: &Ca,
    kubelet_ca: &Ca,
    api: &ApiServerDouble,
    kubelet: &KubeletDouble,
    extra: &[&str],
) -> Result<Running, String> {
    start_with_flags(&flags(ca, kubelet_ca, api, kubelet, extra)).await
}

/// GETs `path` from an admin listener over plain HTTP/1.1 and returns the whole answer, status line
/// and headers included.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
        .await
        .expect("admin write");
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)
        .await
        .expect("admin read");
    answer
}
