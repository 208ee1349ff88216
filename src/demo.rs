//! `kubelet-guard demo`: the guard in embedded mode in front of a kubelet stand-in, on loopback
//! ports, with a PKI and tokens generated at start in a temporary directory and the example policy
//! of `examples/embedded/policy.yaml` (a metrics agent, a legacy `nodes/proxy` agent, an admin).
//!
//! It prints a tour of ready-to-paste `curl` commands and serves until Ctrl-C; with `--check` it
//! runs the tour itself and fails if any answer differs (the test suite runs that).

pub mod kubelet;
pub mod pki;
pub mod tour;

use std::path::{Path, PathBuf};

use clap::Args;
use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::tls::ServingFiles;
use tour::Tokens;

/// The example policy the demo enforces.
pub const POLICY: &str = include_str!("../examples/embedded/policy.yaml");
/// The node name the demo's guard reviews for.
const NODE: &str = "demo-node";

/// Flags of `kubelet-guard demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Run the tour, print each outcome, and exit non-zero if any differs.
    #[arg(long)]
    pub check: bool,
    /// Address of the demo's guard.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Setting up files or sockets failed.
    #[error("demo set-up: {0}")]
    Setup(String),
    /// The guard did not start.
    #[error(transparent)]
    Start(#[from] crate::StartError),
    /// Some tour steps did not answer as expected.
    #[error("{} tour step(s) answered differently: {}", .0.len(), .0.join("; "))]
    Tour(Vec<String>),
}

/// Runs the demo until Ctrl-C, or through the tour once with `--check`.
pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let dir = Scratch::create()?;
    let pki = pki::Pki::generate(&dir.0).map_err(DemoError::Setup)?;
    let tokens = Tokens {
        metrics: random_token()?,
        legacy: random_token()?,
        admin: random_token()?,
    };
    let token_file = write(&dir.0, "tokens.csv", &token_csv(&tokens))?;
    let policy_file = write(&dir.0, "policy.yaml", POLICY)?;

    let kubelet_tls = crate::tls::server_config(&ServingFiles {
        cert: pki.kubelet.cert.clone(),
        key: pki.kubelet.key.clone(),
        client_ca: Some(pki.ca.clone()),
    })
    .map_err(|e| DemoError::Setup(e.to_string()))?;
    let kubelet_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let kubelet_addr = kubelet_listener
        .local_addr()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let stand_in = tokio::spawn(kubelet::serve(kubelet_listener, kubelet_tls, NODE.into()));

    let flags = [
        format!("--listen={}", args.listen),
        "--metrics-listen=127.0.0.1:0".into(),
        format!("--tls-cert-file={}", pki.guard.cert.display()),
        format!("--tls-private-key-file={}", pki.guard.key.display()),
        format!("--upstream=https://{kubelet_addr}"),
        format!("--upstream-ca-file={}", pki.ca.display()),
        format!(
            "--upstream-client-cert-file={}",
            pki.upstream.cert.display()
        ),
        format!("--upstream-client-key-file={}", pki.upstream.key.display()),
        format!("--token-auth-file={}", token_file.display()),
        format!("--rbac-policy-file={}", policy_file.display()),
        format!("--node-name={NODE}"),
    ];
    let config = ServeArgs::try_parse_flags(flags)
        .map_err(|e| DemoError::Setup(e.to_string()))?
        .validate()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let guard = crate::start(config).await?;

    println!(
        "kubelet-guard demo: no cluster, everything on loopback, files in {}",
        dir.0.display()
    );
    println!("  kubelet STAND-IN (not a real kubelet) on https://{kubelet_addr}");
    println!(
        "  kubelet-guard on https://{} (metrics on http://{}/metrics)",
        guard.proxy_addr, guard.admin_addr
    );
    println!(
        "  policy: {} (from examples/embedded/policy.yaml)\n",
        policy_file.display()
    );

    let outcome = if args.check {
        let failures = tour::check(guard.proxy_addr, &pki.ca, &tokens)
            .await
            .map_err(DemoError::Setup)?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(DemoError::Tour(failures))
        }
    } else {
        tour::print(guard.proxy_addr, &pki.ca, &tokens);
        println!("Serving until Ctrl-C.");
        crate::stop_signal().await;
        Ok(())
    };
    guard.stop().await;
    stand_in.abort();
    outcome
}

/// A temporary directory removed when the demo ends.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Self, DemoError> {
        let suffix = random_token()?;
        let dir = std::env::temp_dir().join(format!("kubelet-guard-demo-{}", &suffix[..12]));
        std::fs::create_dir_all(&dir)
            .map_err(|e| DemoError::Setup(format!("{}: {e}", dir.display())))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token_csv(tokens: &Tokens) -> String {
    format!(
        "{},system:serviceaccount:monitoring:metrics-agent,uid-metrics,\"system:serviceaccounts\"\n\
         {},system:serviceaccount:logging:legacy-agent,uid-legacy,\"system:serviceaccounts\"\n\
         {},kubelet-admin,uid-admin,\"kubelet-admins\"\n",
        tokens.metrics, tokens.legacy, tokens.admin
    )
}

fn random_token() -> Result<String, DemoError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| DemoError::Setup("no randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(dir: &Path, name: &str, content: &str) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    std::fs::write(&path, content)
        .map_err(|e| DemoError::Setup(format!("{}: {e}", path.display())))?;
    Ok(path)
}
