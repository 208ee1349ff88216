//! `serve`'s flags (and their `KUBELET_GUARD_*` environment twins; `cli` adds the `--config` file)
//! parsed and validated into a typed [`Config`] before any socket is bound or file is read.
//! Precedence: flags, then `KUBELET_GUARD_*`, then the `--config` file, then defaults.
//!
//! `Config` is one settings value per module that is built from it; a module that owns its
//! settings type (`tls::ServingFiles`, `audit::sink::AuditSettings`) is imported here, and no
//! module imports anything here but those values, [`ConfigError`] and [`NodeName`], so nothing
//! below reaches back up. Flag names follow the kubelet and kube-rbac-proxy so operators
//! recognise them. This module only checks what can be checked without I/O (flag combinations,
//! URL shape, node name); loading the files the flags name is `tls` and `apiserver`'s job, still
//! before binding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use rustls::SupportedCipherSuite;

use crate::tls::{MinVersion, ServingFiles, TlsPolicy, UpstreamCredential};

mod audit;
pub use audit::AuditArgs;

/// Help headings of `serve`, in the order an operator fills them in.
const LISTENING: &str = "Listening and TLS";
const CALLERS: &str = "Callers";
const AUTHORIZATION: &str = "Authorization";
const API_SERVER: &str = "API server";
const UPSTREAM: &str = "Upstream kubelet";
const EMBEDDED: &str = "Embedded mode (no API server)";
const LIMITS: &str = "Limits";
const OPERATIONS: &str = "Operations";

/// Flags of `kubelet-guard serve`, as the operator typed them.
///
/// `-h` shows each flag's first paragraph, `--help` its whole comment; `Required` starts the
/// help of every flag without which the guard does not start.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Required unless NODE_IP is set: the address the guarded kubelet API listens on.
    ///
    /// Default: $NODE_IP:10250. Never a wildcard address by default: 0.0.0.0:10250 would collide
    /// with a kubelet still listening on its own wildcard address.
    #[arg(long, env = "KUBELET_GUARD_LISTEN", help_heading = LISTENING)]
    pub listen: Option<SocketAddr>,
    /// Required: PEM certificate chain served to callers (usually the kubelet's own).
    ///
    /// Re-read every --tls-reload-interval, so the kubelet's certificate rotation carries over.
    #[arg(long, env = "KUBELET_GUARD_TLS_CERT_FILE", help_heading = LISTENING)]
    pub tls_cert_file: Option<PathBuf>,
    /// Required: PEM private key of --tls-cert-file (PKCS#1, SEC1 or PKCS#8).
    #[arg(long, env = "KUBELET_GUARD_TLS_PRIVATE_KEY_FILE", help_heading = LISTENING)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Lowest TLS version accepted from callers: VersionTLS12 or VersionTLS13.
    #[arg(long, env = "KUBELET_GUARD_TLS_MIN_VERSION", default_value = "VersionTLS12", value_parser = MinVersion::parse, help_heading = LISTENING)]
    pub tls_min_version: MinVersion,
    /// Comma-separated TLS 1.2 cipher suites, Go or IANA names (default: all).
    ///
    /// TLS 1.3 suites are restricted only if named.
    #[arg(long, env = "KUBELET_GUARD_TLS_CIPHER_SUITES", value_delimiter = ',', value_parser = crate::tls::policy::parse_cipher_suite, help_heading = LISTENING)]
    pub tls_cipher_suites: Vec<SupportedCipherSuite>,
    /// How often certificate, key and token files are checked for new content.
    #[arg(long, env = "KUBELET_GUARD_TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration, help_heading = LISTENING)]
    pub tls_reload_interval: Duration,

    /// PEM CA bundle; when set, callers may present a client certificate signed by it.
    #[arg(long, env = "KUBELET_GUARD_CLIENT_CA_FILE", help_heading = CALLERS)]
    pub client_ca_file: Option<PathBuf>,
    /// Comma-separated audiences requested in TokenReviews.
    #[arg(
        long,
        env = "KUBELET_GUARD_AUTH_TOKEN_AUDIENCES",
        value_delimiter = ',',
        help_heading = CALLERS
    )]
    pub auth_token_audiences: Vec<String>,
    /// How long TokenReview results are cached (0s disables the cache).
    #[arg(long, env = "KUBELET_GUARD_AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL", default_value = "2m", value_parser = parse_duration, help_heading = CALLERS)]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// Treat callers without credentials as system:anonymous (still authorized) instead of 401.
    #[arg(long, env = "KUBELET_GUARD_ANONYMOUS_AUTH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", help_heading = CALLERS)]
    pub anonymous_auth: bool,

    /// enforce: refuse what is not authorized; observe: decide and record only.
    ///
    /// Observe forwards token and anonymous callers with their own credentials, so the kubelet
    /// decides and nothing breaks; would-be refusals are annotated in the audit events.
    /// Certificate callers are enforced in both modes.
    #[arg(long, env = "KUBELET_GUARD_MODE", value_enum, default_value_t = Mode::Enforce, help_heading = AUTHORIZATION)]
    pub mode: Mode,
    /// Check nodes/proxy after a fine-grained subresource denies.
    ///
    /// Applies to /pods, /healthz, /configz and /runningpods/, as the kubelet does.
    #[arg(long, env = "KUBELET_GUARD_PROXY_FALLBACK", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", help_heading = AUTHORIZATION)]
    pub proxy_fallback: bool,
    /// Also require the API server's namespaced permission on the pod named in the path.
    ///
    /// create on pods/exec, pods/attach or pods/portforward, get on pods/log, for /exec,
    /// /attach, /portForward, /run, /containerLogs and container log files under /logs/.
    #[arg(long, env = "KUBELET_GUARD_POD_SCOPED_AUTHZ", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", help_heading = AUTHORIZATION)]
    pub pod_scoped_authz: bool,
    /// Comma-separated users exempt from --pod-scoped-authz by client certificate (the API
    /// server authorized them) [default: kube-apiserver-kubelet-client]
    #[arg(
        long,
        env = "KUBELET_GUARD_POD_SCOPE_EXEMPT_USERS",
        value_delimiter = ',',
        help_heading = AUTHORIZATION
    )]
    pub pod_scope_exempt_users: Vec<String>,
    /// How long allowed SubjectAccessReview results are cached (0s disables).
    #[arg(long, env = "KUBELET_GUARD_AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL", default_value = "5m", value_parser = parse_duration, help_heading = AUTHORIZATION)]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long denied SubjectAccessReview results are cached (0s disables).
    #[arg(long, env = "KUBELET_GUARD_AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL", default_value = "30s", value_parser = parse_duration, help_heading = AUTHORIZATION)]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
    /// Node name sent in every review (default: NODE_NAME, else the host name).
    #[arg(long, env = "KUBELET_GUARD_NODE_NAME", help_heading = AUTHORIZATION)]
    pub node_name: Option<String>,

    /// Kubeconfig for TokenReview and SubjectAccessReview (default: in-cluster configuration).
    #[arg(long, env = "KUBELET_GUARD_KUBECONFIG", help_heading = API_SERVER)]
    pub kubeconfig: Option<PathBuf>,
    /// Deadline of one call to the API server.
    #[arg(long, env = "KUBELET_GUARD_APISERVER_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = API_SERVER)]
    pub apiserver_timeout: Duration,

    /// URL of the real kubelet.
    #[arg(
        long,
        env = "KUBELET_GUARD_UPSTREAM",
        default_value = "https://127.0.0.1:10250",
        help_heading = UPSTREAM
    )]
    pub upstream: http::Uri,
    /// Required: PEM CA bundle that verifies the kubelet's serving certificate.
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_CA_FILE", help_heading = UPSTREAM)]
    pub upstream_ca_file: Option<PathBuf>,
    /// Name to verify in the kubelet's serving certificate (default: the host of --upstream).
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_SERVER_NAME", help_heading = UPSTREAM)]
    pub upstream_server_name: Option<String>,
    /// Required, or one of the two other credentials: directory made by `node-pki`.
    ///
    /// Its client certificate is the guard's credential towards the kubelet, renewed by the
    /// guard itself. Give exactly one credential: this directory, a client certificate with its
    /// key (the two flags below), or a token file.
    #[arg(long, env = "KUBELET_GUARD_NODE_PKI_DIR", help_heading = UPSTREAM)]
    pub node_pki_dir: Option<PathBuf>,
    /// Required, or one of the two other credentials: PEM client certificate for the kubelet.
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_CLIENT_CERT_FILE", help_heading = UPSTREAM)]
    pub upstream_client_cert_file: Option<PathBuf>,
    /// PEM private key of --upstream-client-cert-file.
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_CLIENT_KEY_FILE", help_heading = UPSTREAM)]
    pub upstream_client_key_file: Option<PathBuf>,
    /// Required, or one of the two other credentials: bearer token file for the kubelet.
    ///
    /// Re-read when it changes.
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_TOKEN_FILE", help_heading = UPSTREAM)]
    pub upstream_token_file: Option<PathBuf>,
    /// How long to wait for the kubelet's response headers before answering 504.
    #[arg(long, env = "KUBELET_GUARD_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = UPSTREAM)]
    pub upstream_timeout: Duration,
    /// Self-check that the kubelet refuses whoever lacks the guard's certificate.
    ///
    /// warn: log and export kubelet_guard_kubelet_exposed; require: also /readyz 503 while the
    /// kubelet is exposed; off: no probe.
    #[arg(long, env = "KUBELET_GUARD_KUBELET_LOCKDOWN", value_enum, default_value_t = Lockdown::Warn, help_heading = UPSTREAM)]
    pub kubelet_lockdown: Lockdown,
    /// How often the kubelet lockdown self-check runs.
    #[arg(long, env = "KUBELET_GUARD_KUBELET_LOCKDOWN_INTERVAL", default_value = "60s", value_parser = parse_duration, help_heading = UPSTREAM)]
    pub kubelet_lockdown_interval: Duration,

    /// kube-apiserver static token file (token,user,uid,"groups"), instead of TokenReview.
    #[arg(long, env = "KUBELET_GUARD_TOKEN_AUTH_FILE", help_heading = EMBEDDED)]
    pub token_auth_file: Option<PathBuf>,
    /// YAML ClusterRoles and ClusterRoleBindings, instead of SubjectAccessReview.
    #[arg(long, env = "KUBELET_GUARD_RBAC_POLICY_FILE", help_heading = EMBEDDED)]
    pub rbac_policy_file: Option<PathBuf>,

    /// Audit trail flags (kube-apiserver's names).
    #[command(flatten)]
    pub audit: AuditArgs,

    /// Most caller connections open at once; a connection over it is closed at once.
    #[arg(long, env = "KUBELET_GUARD_MAX_CONNECTIONS", default_value_t = 10_000, help_heading = LIMITS)]
    pub max_connections: usize,
    /// Threads serving caller connections, each connection on one of them from accept to close;
    /// default one per CPU the process may use (its CPU limit, else the node's).
    #[arg(long, env = "KUBELET_GUARD_WORKER_THREADS", help_heading = LIMITS)]
    pub worker_threads: Option<usize>,
    /// Pin worker thread N to the N-th CPU the process may run on (its affinity mask, such as a
    /// container's cpuset). For a guard with CPUs of its own; on CPUs other pods share, leave the
    /// kernel free to move a worker off a busy one.
    #[arg(long, env = "KUBELET_GUARD_WORKER_CPU_AFFINITY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", help_heading = LIMITS)]
    pub worker_cpu_affinity: bool,
    /// Most connections one source address may hold before a request on them was authorized,
    /// always fewer than the connection limit [default: 256, or one less than a lower limit]
    #[arg(
        long,
        env = "KUBELET_GUARD_MAX_UNAUTHENTICATED_CONNECTIONS_PER_SOURCE",
        help_heading = LIMITS
    )]
    pub max_unauthenticated_connections_per_source: Option<usize>,
    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    #[arg(
        long,
        env = "KUBELET_GUARD_MAX_REQUEST_HEADER_BYTES",
        default_value_t = 65_536,
        help_heading = LIMITS
    )]
    pub max_request_header_bytes: usize,
    /// How long a caller may take to send a request's headers before its connection is closed.
    #[arg(long, env = "KUBELET_GUARD_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = LIMITS)]
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    #[arg(long, env = "KUBELET_GUARD_IDLE_TIMEOUT", default_value = "90s", value_parser = parse_duration, help_heading = LIMITS)]
    pub idle_timeout: Duration,
    /// How long an exec, attach or port-forward caller may take nothing of what the guard has for
    /// it before the stream is closed (as the kubelet's --streaming-connection-idle-timeout, 4h).
    #[arg(long, env = "KUBELET_GUARD_STREAM_UNREAD_TIMEOUT", default_value = "4h", value_parser = parse_duration, help_heading = LIMITS)]
    pub stream_unread_timeout: Duration,
    /// Most concurrent streams per HTTP/2 connection.
    #[arg(long, env = "KUBELET_GUARD_HTTP2_MAX_STREAMS", default_value_t = 250, help_heading = LIMITS)]
    pub http2_max_streams: u32,

    /// Plain-HTTP admin listener with /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "KUBELET_GUARD_METRICS_LISTEN",
        default_value = "127.0.0.1:9250",
        help_heading = OPERATIONS
    )]
    pub metrics_listen: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM; then upgraded streams are closed.
    #[arg(long, env = "KUBELET_GUARD_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration, help_heading = OPERATIONS)]
    pub shutdown_grace_period: Duration,
    /// YAML file of flag values, keyed by flag name without dashes (flags and environment win).
    #[arg(long, env = "KUBELET_GUARD_CONFIG", help_heading = OPERATIONS)]
    pub config: Option<PathBuf>,
    /// Log format on standard error (colour only when it is a terminal).
    #[arg(long, env = "KUBELET_GUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = OPERATIONS)]
    pub log_format: LogFormat,
}

/// Whether the guard enforces its decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Refuse what is not authorized (the default).
    Enforce,
    /// Decide and record as usual, but forward bearer-token and anonymous callers with their own
    /// credentials so the kubelet's native authorization decides: a first rollout that breaks
    /// nothing. Certificate callers are enforced in both modes.
    Observe,
}

/// What the guard does about a kubelet that answers callers without the guard's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lockdown {
    /// Probe, export `kubelet_guard_kubelet_exposed` and log an exposed kubelet (the default).
    Warn,
    /// As warn, and `/readyz` answers 503 until the kubelet is proven locked.
    Require,
    /// No probe.
    Off,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The kubelet's port, which `--listen` takes over on the node's address.
const KUBELET_PORT: u16 = 10250;

/// The user of the API server's kubelet client certificate as kubeadm issues it.
const API_SERVER_CLIENT: &str = "kube-apiserver-kubelet-client";
/// The smallest `--max-request-header-bytes`: hyper's smallest read buffer.
const MIN_HEADER_BYTES: usize = 8192;

/// The shortest `--tls-reload-interval` and `--kubelet-lockdown-interval`.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// `--max-unauthenticated-connections-per-source` when not given (and `--max-connections` allows).
const PER_SOURCE: usize = 256;

/// The most `--worker-threads`: each is a thread and a runtime.
const MAX_WORKER_THREADS: usize = 1024;
/// The largest `--max-request-header-bytes`: the kubelet's own limit (Go's 1 MiB default).
const MAX_HEADER_BYTES: usize = 1 << 20;

/// A validated node name: a non-empty lower-case RFC 1123 subdomain, as Kubernetes requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName(String);

/// The validated configuration of `serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the guarded API.
    pub listen: SocketAddr,
    /// Address of the admin listener.
    pub metrics_listen: SocketAddr,
    /// The guard's serving certificate and client CA.
    pub serving: ServingFiles,
    /// Where and how to reach the kubelet.
    pub upstream: UpstreamSettings,
    /// The node every review names.
    pub node_name: NodeName,
    /// How to reach the API server.
    pub apiserver: ApiServerSettings,
    /// Cache lifetimes.
    pub cache: CacheTtls,
    /// Whether callers without credentials are let through to authorization as system:anonymous.
    pub anonymous_auth: bool,
    /// Whether step-1 paths fall back to nodes/proxy.
    pub proxy_fallback: bool,
    /// Enforce or observe.
    pub mode: Mode,
    /// With `--pod-scoped-authz`, the users exempt from it; `None` when it is off.
    pub pod_scope_exempt: Option<Vec<String>>,
    /// How often files are re-read.
    pub reload_interval: Duration,
    /// Where audit events go.
    pub audit: crate::audit::sink::AuditSettings,
    /// TLS versions and cipher suites offered to callers.
    pub tls_policy: TlsPolicy,
    /// Limits on callers' connections.
    pub limits: Limits,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// `--node-pki-dir`: the guard renews the client certificate there itself.
    pub node_pki_dir: Option<PathBuf>,
    /// The kubelet lockdown self-check and how often it runs.
    pub lockdown: (Lockdown, Duration),
}

/// Limits on callers' connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--max-connections`.
    pub max_connections: usize,
    /// `--header-read-timeout`.
    pub header_read_timeout: Duration,
    /// `--idle-timeout`.
    pub idle_timeout: Duration,
    /// `--stream-unread-timeout`, in milliseconds (what `TCP_USER_TIMEOUT` takes).
    pub stream_unread_millis: u32,
    /// `--http2-max-streams`.
    pub http2_max_streams: u32,
    /// `--max-unauthenticated-connections-per-source`.
    pub unauthenticated_per_source: usize,
    /// `--worker-threads`; `None`: one per CPU.
    pub worker_threads: Option<NonZeroUsize>,
    /// `--worker-cpu-affinity`.
    pub worker_cpu_affinity: bool,
    /// `--max-request-header-bytes`.
    pub max_header_bytes: usize,
}

/// The kubelet behind the guard.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Scheme `https` and authority of the kubelet; never a path.
    pub authority: http::uri::Authority,
    /// The `Host` header of requests to the kubelet: its authority.
    pub host: http::HeaderValue,
    /// The name verified in the kubelet's certificate.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// `--upstream-ca-file`.
    pub ca: PathBuf,
    /// The guard's own credential.
    pub credential: UpstreamCredential,
    /// Deadline for the kubelet's response headers.
    pub timeout: Duration,
}

/// How TokenReview and SubjectAccessReview reach the API server, and the embedded files that
/// replace either.
#[derive(Debug, Clone)]
pub struct ApiServerSettings {
    /// `--token-auth-file`: static tokens instead of TokenReview.
    pub token_auth_file: Option<PathBuf>,
    /// `--rbac-policy-file`: local RBAC instead of SubjectAccessReview.
    pub rbac_policy_file: Option<PathBuf>,
    /// `--kubeconfig`, or in-cluster configuration when absent.
    pub kubeconfig: Option<PathBuf>,
    /// Audiences requested in TokenReviews.
    pub audiences: Vec<String>,
    /// Deadline of one call.
    pub timeout: Duration,
}

/// Cache lifetimes; zero disables the cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheTtls {
    /// TokenReview results.
    pub token: Duration,
    /// Allowed SubjectAccessReview results.
    pub authorized: Duration,
    /// Denied SubjectAccessReview results.
    pub unauthorized: Duration,
}

/// A flag, or a combination of flags, that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required flag is absent.
    #[error("{flag} is required: {why}")]
    Missing {
        /// The flag, with its dashes.
        flag: &'static str,
        /// What it is needed for.
        why: &'static str,
    },
    /// A flag's value is unusable.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag, with its dashes.
        flag: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// The flag at fault, with its dashes.
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Missing { flag, .. } | Self::Invalid { flag, .. } => flag,
        }
    }
}

impl NodeName {
    /// Validates a node name; `flag` names where it came from in the error.
    pub fn parse(raw: &str, flag: &'static str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { flag, message };
        if raw.is_empty() {
            return Err(invalid("the node name is empty".into()));
        }
        if raw.len() > 253 {
            return Err(invalid(format!("{raw:?} is longer than 253 characters")));
        }
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if !raw.split('.').all(label_ok) {
            return Err(invalid(format!(
                "{raw:?} is not a lower-case RFC 1123 subdomain, so no Kubernetes node can have it"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The node name from `flag`'s value, else from `NODE_NAME`, else the host name.
    pub fn resolve(value: Option<String>, flag: &'static str) -> Result<Self, ConfigError> {
        match value {
            Some(name) => Self::parse(&name, flag),
            None => match std::env::var("NODE_NAME") {
                Ok(name) => Self::parse(&name, "--node-name (from NODE_NAME)"),
                Err(_) => Self::parse(&host_name(), "--node-name (from the host name)"),
            },
        }
    }

    /// The name as sent in reviews.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `serve`'s flags alone, without the binary's name and subcommand.
#[derive(Parser)]
#[command(name = "kubelet-guard serve", no_binary_name = true)]
struct ServeFlags {
    #[command(flatten)]
    args: ServeArgs,
}

impl ServeArgs {
    /// Parses `serve`'s flags from `flags` (no program name), as the command line would: for a
    /// command line built in code, such as the demo's.
    pub fn try_parse_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ServeFlags::try_parse_from(flags).map(|parsed| parsed.args)
    }

    /// Checks every flag that needs no I/O beyond the environment and the host name.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let serving = ServingFiles {
            cert: self.tls_cert_file.ok_or(ConfigError::Missing {
                flag: "--tls-cert-file",
                why: "the guard serves TLS with the kubelet's serving certificate",
            })?,
            key: self.tls_private_key_file.ok_or(ConfigError::Missing {
                flag: "--tls-private-key-file",
                why: "the key of --tls-cert-file",
            })?,
            client_ca: self.client_ca_file,
        };
        let node_name = NodeName::resolve(self.node_name, "--node-name")?;
        let upstream = upstream(
            &self.upstream,
            self.upstream_server_name,
            self.upstream_ca_file,
            credential(
                self.upstream_client_cert_file,
                self.upstream_client_key_file,
                self.upstream_token_file,
                self.node_pki_dir.as_deref(),
            )?,
            self.upstream_timeout,
        )?;
        if self.apiserver_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                flag: "--apiserver-timeout",
                message: "must be longer than 0s".into(),
            });
        }
        for (flag, duration) in [
            ("--tls-reload-interval", self.tls_reload_interval),
            (
                "--kubelet-lockdown-interval",
                self.kubelet_lockdown_interval,
            ),
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--stream-unread-timeout", self.stream_unread_timeout),
        ] {
            if duration.is_zero() {
                return Err(ConfigError::Invalid {
                    flag,
                    message: "must be longer than 0s".into(),
                });
            }
        }
        // A loop that polls files or probes the kubelet must not spin (`30ms` for `30s`).
        for (flag, interval) in [
            ("--tls-reload-interval", self.tls_reload_interval),
            (
                "--kubelet-lockdown-interval",
                self.kubelet_lockdown_interval,
            ),
        ] {
            if interval < MIN_INTERVAL {
                return Err(ConfigError::Invalid {
                    flag,
                    message: format!(
                        "must be at least {}",
                        humantime::format_duration(MIN_INTERVAL)
                    ),
                });
            }
        }
        // A connection slot is a semaphore permit, and there are only so many.
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::Invalid {
                flag: "--max-connections",
                message: format!("must be at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            });
        }
        if self.mode == Mode::Observe && self.kubelet_lockdown == Lockdown::Require {
            return Err(ConfigError::Invalid {
                flag: "--kubelet-lockdown",
                message: "require cannot be met with --mode=observe, which needs the kubelet to \
                          take callers' tokens; use warn until the guard enforces"
                    .into(),
            });
        }
        let listen = listen(self.listen, std::env::var("NODE_IP").ok().as_deref())?;
        if same_socket(listen, self.metrics_listen) {
            return Err(ConfigError::Invalid {
                flag: "--metrics-listen",
                message: format!("{} takes --listen={listen}'s port", self.metrics_listen),
            });
        }
        // The guard would be its own kubelet, or never get its port while the kubelet holds it.
        for (listener, flag) in [
            (listen, "--listen"),
            (self.metrics_listen, "--metrics-listen"),
        ] {
            if upstream_sockets(&upstream.authority).any(|kubelet| same_socket(listener, kubelet)) {
                return Err(ConfigError::Invalid {
                    flag,
                    message: format!(
                        "{listener} takes the kubelet's address, --upstream=https://{}; the \
                         kubelet moves to another (127.0.0.1:10250 by default)",
                        upstream.authority
                    ),
                });
            }
        }
        for (flag, count) in [
            ("--max-connections", self.max_connections),
            ("--http2-max-streams", self.http2_max_streams as usize),
            (
                "--max-unauthenticated-connections-per-source",
                self.max_unauthenticated_connections_per_source.unwrap_or(1),
            ),
            // Not given is the default (one per CPU), not zero.
            ("--worker-threads", self.worker_threads.unwrap_or(1)),
        ] {
            if count == 0 {
                return Err(ConfigError::Invalid {
                    flag,
                    message: "must be at least 1".into(),
                });
            }
        }
        if self
            .worker_threads
            .is_some_and(|threads| threads > MAX_WORKER_THREADS)
        {
            return Err(ConfigError::Invalid {
                flag: "--worker-threads",
                message: format!("must be at most {MAX_WORKER_THREADS}"),
            });
        }
        // At or above --max-connections, one address could hold every slot: the cap would be
        // void. Not given, it follows a lowered --max-connections.
        let per_source = match self.max_unauthenticated_connections_per_source {
            Some(given) if given >= self.max_connections && self.max_connections > 1 => {
                return Err(ConfigError::Invalid {
                    flag: "--max-unauthenticated-connections-per-source",
                    message: format!(
                        "{given} would let one address take every one of --max-connections={}: \
                         set it lower",
                        self.max_connections
                    ),
                });
            }
            Some(given) => given,
            None => PER_SOURCE
                .min(self.max_connections.saturating_sub(1))
                .max(1),
        };
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_request_header_bytes) {
            return Err(ConfigError::Invalid {
                flag: "--max-request-header-bytes",
                message: format!(
                    "must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} (the kubelet's 1 MiB)"
                ),
            });
        }
        Ok(Config {
            listen,
            metrics_listen: self.metrics_listen,
            serving,
            upstream,
            node_name,
            apiserver: ApiServerSettings {
                token_auth_file: self.token_auth_file,
                rbac_policy_file: self.rbac_policy_file,
                kubeconfig: self.kubeconfig,
                audiences: self
                    .auth_token_audiences
                    .into_iter()
                    .filter(|a| !a.is_empty())
                    .collect(),
                timeout: self.apiserver_timeout,
            },
            cache: CacheTtls {
                token: self.authentication_token_webhook_cache_ttl,
                authorized: self.authorization_webhook_cache_authorized_ttl,
                unauthorized: self.authorization_webhook_cache_unauthorized_ttl,
            },
            anonymous_auth: self.anonymous_auth,
            proxy_fallback: self.proxy_fallback,
            mode: self.mode,
            pod_scope_exempt: pod_scope_exempt(self.pod_scoped_authz, self.pod_scope_exempt_users)?,
            reload_interval: self.tls_reload_interval,
            audit: self.audit.validate()?,
            tls_policy: TlsPolicy {
                min_version: self.tls_min_version,
                cipher_suites: self.tls_cipher_suites,
            },
            limits: Limits {
                max_connections: self.max_connections,
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                stream_unread_millis: stream_unread_millis(self.stream_unread_timeout)?,
                http2_max_streams: self.http2_max_streams,
                unauthenticated_per_source: per_source,
                max_header_bytes: self.max_request_header_bytes,
                worker_threads: self.worker_threads.and_then(NonZeroUsize::new),
                worker_cpu_affinity: self.worker_cpu_affinity,
            },
            shutdown_grace: self.shutdown_grace_period,
            node_pki_dir: self.node_pki_dir,
            lockdown: (self.kubelet_lockdown, self.kubelet_lockdown_interval),
        })
    }
}

/// `--pod-scope-exempt-users` when `--pod-scoped-authz` is on. Not given is the API server's
/// default client name; given empty (`--pod-scope-exempt-users=`) is no one.
fn pod_scope_exempt(
    pod_scoped: bool,
    users: Vec<String>,
) -> Result<Option<Vec<String>>, ConfigError> {
    match (pod_scoped, users.is_empty()) {
        (false, true) => Ok(None),
        (false, false) => Err(ConfigError::Invalid {
            flag: "--pod-scope-exempt-users",
            message: "exempts callers from --pod-scoped-authz, which is off: turn it on, or drop \
                      this flag"
                .into(),
        }),
        (true, true) => Ok(Some(vec![API_SERVER_CLIENT.to_owned()])),
        (true, false) => Ok(Some(
            users.into_iter().filter(|user| !user.is_empty()).collect(),
        )),
    }
}

/// `--stream-unread-timeout` as `TCP_USER_TIMEOUT` takes it: whole milliseconds, from 1 to
/// `i32::MAX` (Linux refuses more, and 0 would mean the kernel's own default).
fn stream_unread_millis(timeout: Duration) -> Result<u32, ConfigError> {
    u32::try_from(timeout.as_millis())
        .ok()
        .filter(|millis| (1..=i32::MAX.unsigned_abs()).contains(millis))
        .ok_or_else(|| ConfigError::Invalid {
            flag: "--stream-unread-timeout",
            message: "must be from 1ms to 24 days".into(),
        })
}

/// Parses `500ms`, `30s`, `2m`, `1h`.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    // Longer is no setting anyone means, and would overflow the clock arithmetic it feeds.
    const LONGEST: Duration = Duration::from_secs(366 * 24 * 3600);
    let duration = humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration like 500ms, 30s or 2m: {e}"))?;
    if duration > LONGEST {
        return Err(format!("{raw:?} is longer than a year"));
    }
    Ok(duration)
}

/// `--listen`, else `$NODE_IP:10250`; never a wildcard address, which would collide with a
/// kubelet still listening on its own.
fn listen(flag: Option<SocketAddr>, node_ip: Option<&str>) -> Result<SocketAddr, ConfigError> {
    if let Some(address) = flag {
        return Ok(address);
    }
    match node_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
        Some(ip) => ip
            .parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, KUBELET_PORT))
            .map_err(|e| ConfigError::Invalid {
                flag: "--listen",
                message: format!("not given, and NODE_IP={ip:?} is not an IP address: {e}"),
            }),
        None => Err(ConfigError::Missing {
            flag: "--listen",
            why: "give the node's address (--listen=10.0.0.10:10250), or set NODE_IP to listen \
                  on $NODE_IP:10250; there is no wildcard default, which would collide with a \
                  kubelet still listening on 0.0.0.0:10250",
        }),
    }
}

/// Whether two listeners would want one socket: the same port (not 0, which is any free port) on
/// the same address or under a wildcard. `[::]` covers IPv4 too, as Linux binds it dual-stack.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wild: IpAddr, other: IpAddr| match wild {
        IpAddr::V4(wild) => wild.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(wild) => wild.is_unspecified(),
    };
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    a.port() == b.port() && a.port() != 0 && (x == y || covers(x, y) || covers(y, x))
}

/// The addresses `--upstream` names when its host is an IP address or `localhost`; none for a
/// DNS name, which only a lookup could place.
fn upstream_sockets(authority: &http::uri::Authority) -> impl Iterator<Item = SocketAddr> {
    let port = authority.port_u16().unwrap_or(KUBELET_PORT);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ips: Vec<IpAddr> = if host.eq_ignore_ascii_case("localhost") {
        vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
    } else {
        host.parse().into_iter().collect()
    };
    ips.into_iter().map(move |ip| SocketAddr::new(ip, port))
}

/// The kernel's host name, lower-cased as the kubelet does when it names its node.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn credential(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token: Option<PathBuf>,
    node_pki: Option<&std::path::Path>,
) -> Result<UpstreamCredential, ConfigError> {
    if let Some(dir) = node_pki {
        let other = [
            ("--upstream-client-cert-file", cert.is_some()),
            ("--upstream-client-key-file", key.is_some()),
            ("--upstream-token-file", token.is_some()),
        ];
        if let Some((flag, _)) = other.iter().find(|(_, given)| *given) {
            return Err(ConfigError::Invalid {
                flag: "--node-pki-dir",
                message: format!(
                    "and {flag} both name the guard's credential towards the kubelet; give one"
                ),
            });
        }
        return Ok(UpstreamCredential::ClientCert {
            cert: dir.join("client.crt"),
            key: dir.join("client.key"),
            flags: ["--node-pki-dir", "--node-pki-dir"],
        });
    }
    match (cert, key, token) {
        (Some(cert), Some(key), None) => Ok(UpstreamCredential::ClientCert {
            cert,
            key,
            flags: ["--upstream-client-cert-file", "--upstream-client-key-file"],
        }),
        (None, None, Some(token)) => Ok(UpstreamCredential::TokenFile(token)),
        (Some(_), None, _) => Err(ConfigError::Missing {
            flag: "--upstream-client-key-file",
            why: "the key of --upstream-client-cert-file",
        }),
        (None, Some(_), _) => Err(ConfigError::Missing {
            flag: "--upstream-client-cert-file",
            why: "the certificate of --upstream-client-key-file",
        }),
        (Some(_), Some(_), Some(_)) => Err(ConfigError::Invalid {
            flag: "--upstream-token-file",
            message: "give either a client certificate or a token file, not both".into(),
        }),
        (None, None, None) => Err(ConfigError::Missing {
            flag: "--node-pki-dir",
            why: "the guard calls the kubelet as its own identity: give --node-pki-dir, or \
                  --upstream-client-cert-file with --upstream-client-key-file, or \
                  --upstream-token-file",
        }),
    }
}

fn upstream(
    url: &http::Uri,
    server_name: Option<String>,
    ca: Option<PathBuf>,
    credential: UpstreamCredential,
    timeout: Duration,
) -> Result<UpstreamSettings, ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        flag: "--upstream",
        message: format!("{url}: {message}"),
    };
    if url.scheme_str() != Some("https") {
        return Err(invalid("the kubelet is reached over https only"));
    }
    if url.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(invalid(
            "give only scheme, host and port; request paths are the caller's",
        ));
    }
    let authority = url.authority().cloned().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "no user information: the guard's credential is --upstream-client-cert-file or \
             --upstream-token-file",
        ));
    }
    if authority.port().is_none() {
        return Err(invalid("give the port, 10250 for a kubelet"));
    }
    let host = http::HeaderValue::from_str(authority.as_str())
        .map_err(|_| invalid("not a Host header value"))?;
    let server_name = server_name.unwrap_or_else(|| {
        let host = authority.host();
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    });
    let server_name =
        rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|e| {
            ConfigError::Invalid {
                flag: "--upstream-server-name",
                message: format!("{server_name:?}: {e}"),
            }
        })?;
    let ca = ca.ok_or(ConfigError::Missing {
        flag: "--upstream-ca-file",
        why: "the kubelet's serving certificate is verified against it",
    })?;
    if timeout.is_zero() {
        return Err(ConfigError::Invalid {
            flag: "--upstream-timeout",
            message: "must be longer than 0s".into(),
        });
    }
    Ok(UpstreamSettings {
        authority,
        host,
        server_name,
        ca,
        credential,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let given = |flag: &str| {
            let name = flag.split('=').next().unwrap_or(flag);
            extra.iter().any(|e| e.split('=').next() == Some(name))
        };
        let mut flags: Vec<&str> = [
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--upstream-ca-file=ca",
            "--upstream-token-file=t",
            "--node-name=node-1",
            "--listen=10.0.0.10:10250",
        ]
        .into_iter()
        .filter(|flag| !given(flag))
        .collect();
        flags.extend_from_slice(extra);
        let serve = ServeArgs::try_parse_flags(flags).map_err(|e| e.to_string())?;
        serve.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_kubelet() {
        let config = args(&[]).unwrap();
        assert_eq!(config.metrics_listen.to_string(), "127.0.0.1:9250");
        assert_eq!(config.cache.token, Duration::from_secs(120));
        assert_eq!(config.cache.authorized, Duration::from_secs(300));
        assert_eq!(config.cache.unauthorized, Duration::from_secs(30));
        assert_eq!(config.apiserver.timeout, Duration::from_secs(10));
        assert!(!config.anonymous_auth);
        assert!(config.proxy_fallback);
        assert_eq!(config.upstream.server_name.to_str(), "127.0.0.1");
        assert_eq!(config.upstream.authority.as_str(), "127.0.0.1:10250");
        assert_eq!(config.upstream.host, "127.0.0.1:10250");
        assert_eq!(config.limits.worker_threads, None);
        assert!(!config.limits.worker_cpu_affinity);
        let config = args(&["--worker-threads=3", "--worker-cpu-affinity"]).unwrap();
        assert_eq!(config.limits.worker_threads, NonZeroUsize::new(3));
        assert!(config.limits.worker_cpu_affinity);
        // As every switch: a value too, so the `--config` file and the env twin can say false.
        let config = args(&["--worker-cpu-affinity=false"]).unwrap();
        assert!(!config.limits.worker_cpu_affinity);
    }

    #[test]
    fn listen_defaults_to_the_node_address_never_a_wildcard() {
        let given: SocketAddr = "10.0.0.10:10250".parse().unwrap();
        assert_eq!(listen(Some(given), Some("10.0.0.11")).unwrap(), given);
        assert_eq!(
            listen(None, Some("10.0.0.11")).unwrap().to_string(),
            "10.0.0.11:10250"
        );
        assert_eq!(
            listen(None, Some("fd00::1")).unwrap().to_string(),
            "[fd00::1]:10250"
        );
        for node_ip in [None, Some(""), Some("node-1")] {
            let err = listen(None, node_ip).unwrap_err().to_string();
            assert!(
                err.contains("--listen") && err.contains("NODE_IP"),
                "{node_ip:?}: {err}"
            );
        }
    }

    #[test]
    fn durations_and_lists_parse() {
        let config = args(&[
            "--authentication-token-webhook-cache-ttl=0s",
            "--authorization-webhook-cache-authorized-ttl=500ms",
            "--auth-token-audiences=a,b",
            "--anonymous-auth",
        ])
        .unwrap();
        assert_eq!(config.cache.token, Duration::ZERO);
        assert_eq!(config.cache.authorized, Duration::from_millis(500));
        assert_eq!(config.apiserver.audiences, ["a", "b"]);
        assert!(config.anonymous_auth);
    }

    #[test]
    fn errors_name_the_flag() {
        for (extra, flag) in [
            (&["--node-name="][..], "--node-name"),
            (&["--node-name=Node_1"][..], "--node-name"),
            (&["--upstream=http://127.0.0.1:10250"][..], "--upstream"),
            (&["--upstream=https://127.0.0.1:10250/x"][..], "--upstream"),
            (
                &["--upstream-client-cert-file=c"][..],
                "--upstream-client-key-file",
            ),
            (&["--apiserver-timeout=0s"][..], "--apiserver-timeout"),
            (
                &["--idle-timeout=10000000000000000000s"][..],
                "--idle-timeout",
            ),
            (
                &["--max-connections=18446744073709551615"][..],
                "--max-connections",
            ),
            (
                &["--mode=observe", "--kubelet-lockdown=require"][..],
                "--kubelet-lockdown",
            ),
            (
                &["--metrics-listen=10.0.0.10:10250"][..],
                "--metrics-listen",
            ),
            (
                &["--listen=0.0.0.0:9250", "--metrics-listen=127.0.0.1:9250"][..],
                "--metrics-listen",
            ),
            (
                &["--listen=[::]:9250", "--metrics-listen=127.0.0.1:9250"][..],
                "--metrics-listen",
            ),
            (
                &["--listen=127.0.0.1:10250", "--metrics-listen=[::]:10250"][..],
                "--metrics-listen",
            ),
            (&["--upstream=https://10.0.0.10:10250"][..], "--listen"),
            (&["--listen=0.0.0.0:10250"][..], "--listen"),
            (&["--listen=[::ffff:127.0.0.1]:10250"][..], "--listen"),
            (
                &["--upstream=https://localhost:9250"][..],
                "--metrics-listen",
            ),
            (
                &["--upstream=https://u:p@127.0.0.1:10250"][..],
                "--upstream",
            ),
            (&["--upstream=https://127.0.0.1"][..], "--upstream"),
            (&["--apiserver-timeout=soon"][..], "--apiserver-timeout"),
            (&["--worker-threads=0"][..], "--worker-threads"),
            (&["--worker-threads=all"][..], "--worker-threads"),
            (&["--worker-threads=1025"][..], "--worker-threads"),
            (
                &["--worker-threads=18446744073709551615"][..],
                "--worker-threads",
            ),
            (&["--tls-reload-interval=1ns"][..], "--tls-reload-interval"),
            (
                &["--kubelet-lockdown-interval=9ms"][..],
                "--kubelet-lockdown-interval",
            ),
            (
                &[
                    "--max-connections=100",
                    "--max-unauthenticated-connections-per-source=100",
                ][..],
                "--max-unauthenticated-connections-per-source",
            ),
        ] {
            // The flag first (`--listen: ...` is not `--metrics-listen: ...`), or in clap's quotes.
            let err = args(extra).unwrap_err();
            let named = [format!("{flag}:"), format!("{flag} ")]
                .iter()
                .any(|start| err.starts_with(start))
                || err.contains(&format!("'{flag} "));
            assert!(named, "{extra:?}: {err}");
        }
    }

    #[test]
    fn pod_scope_exemptions_need_pod_scoped_authz() {
        let exempt = |extra: &[&str]| args(extra).map(|config| config.pod_scope_exempt);
        assert_eq!(exempt(&[]).unwrap(), None);
        assert_eq!(
            exempt(&["--pod-scoped-authz"]).unwrap().unwrap(),
            ["kube-apiserver-kubelet-client"]
        );
        assert_eq!(
            exempt(&["--pod-scoped-authz", "--pod-scope-exempt-users=a,,b"])
                .unwrap()
                .unwrap(),
            ["a", "b"]
        );
        assert_eq!(
            exempt(&["--pod-scoped-authz", "--pod-scope-exempt-users="])
                .unwrap()
                .unwrap(),
            Vec::<String>::new()
        );
        for extra in [
            &["--pod-scope-exempt-users=a"][..],
            &["--pod-scope-exempt-users="][..],
            &["--pod-scoped-authz=false", "--pod-scope-exempt-users=a"][..],
        ] {
            let err = exempt(extra).unwrap_err();
            assert!(
                err.starts_with("--pod-scope-exempt-users"),
                "{extra:?}: {err}"
            );
        }
    }

    #[test]
    fn distinct_sockets_on_one_port_are_accepted() {
        for extra in [
            &["--metrics-listen=10.0.0.10:9250"][..],
            &["--listen=10.0.0.10:9250"][..],
            &["--listen=127.0.0.2:10250"][..],
            &["--listen=[fd00::1]:10250"][..],
            &["--upstream=https://kubelet.local:10250"][..],
            &["--listen=127.0.0.1:0", "--metrics-listen=127.0.0.1:0"][..],
        ] {
            assert!(args(extra).is_ok(), "{extra:?}: {:?}", args(extra).err());
        }
    }

    #[test]
    fn the_per_source_cap_stays_below_the_connection_limit() {
        let per_source = |extra: &[&str]| args(extra).unwrap().limits.unauthenticated_per_source;
        assert_eq!(per_source(&[]), 256);
        assert_eq!(
            per_source(&["--max-connections=100"]),
            99,
            "follows it when not given"
        );
        assert_eq!(per_source(&["--max-connections=1"]), 1);
        assert_eq!(
            per_source(&[
                "--max-connections=100",
                "--max-unauthenticated-connections-per-source=20"
            ]),
            20
        );
    }

    #[test]
    fn a_credential_for_the_kubelet_is_required() {
        let serve = ServeArgs::try_parse_flags([
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--upstream-ca-file=ca",
            "--node-name=n",
            "--listen=10.0.0.10:10250",
        ])
        .unwrap();
        let err = serve.validate().unwrap_err().to_string();
        assert!(err.contains("--upstream-client-cert-file"), "{err}");
    }

    #[test]
    fn the_node_pki_excludes_every_other_upstream_credential() {
        let serve = ServeArgs::try_parse_flags([
            "--tls-cert-file=c",
            "--tls-private-key-file=k",
            "--upstream-ca-file=ca",
            "--node-name=n",
            "--listen=10.0.0.10:10250",
            "--node-pki-dir=/pki",
        ])
        .unwrap();
        let config = serve.validate().unwrap();
        assert!(matches!(
            config.upstream.credential,
            UpstreamCredential::ClientCert { ref cert, .. } if cert == std::path::Path::new("/pki/client.crt")
        ));
        for other in [
            "--upstream-token-file=t",
            "--upstream-client-cert-file=c",
            "--upstream-client-key-file=k",
        ] {
            let mut flags = vec![
                "--tls-cert-file=c",
                "--tls-private-key-file=k",
                "--upstream-ca-file=ca",
                "--node-name=n",
                "--listen=10.0.0.10:10250",
                "--node-pki-dir=/pki",
            ];
            flags.push(other);
            let serve = ServeArgs::try_parse_flags(flags).unwrap();
            let err = serve.validate().unwrap_err().to_string();
            let flag = other.split('=').next().unwrap();
            assert!(
                err.contains("--node-pki-dir") && err.contains(flag),
                "{err}"
            );
        }
    }

    #[test]
    fn node_names_are_rfc1123_subdomains() {
        assert!(NodeName::parse("ip-10-0-0-1.ec2.internal", "f").is_ok());
        for bad in ["", "-a", "a-", "a..b", "A", "a_b", &"a".repeat(254)] {
            assert!(NodeName::parse(bad, "f").is_err(), "{bad}");
        }
    }
}
