//! PEM loading and the two rustls configurations: the guard's serving side (optional client
//! certificates verified against `--client-ca-file`, the protocol versions and cipher suites of
//! `--tls-min-version` and `--tls-cipher-suites`) and its client side towards the kubelet.
//!
//! ring is the one crypto provider (`provider()`); nothing here may pull in another. Every error
//! names the flag and the file so a misconfiguration fails at start-up with a usable message.
//! Configurations are built from file contents already read, so the reload task (`tls::reload`)
//! builds exactly what it compared.

mod anchors;
pub mod policy;
pub mod reload;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::reload::{FileError, Watched};
pub use policy::{MinVersion, TlsPolicy};

/// A certificate, key or CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {message}", path.display())]
pub struct TlsError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Files of the guard's own TLS endpoint.
#[derive(Debug, Clone)]
pub struct ServingFiles {
    /// `--tls-cert-file`.
    pub cert: PathBuf,
    /// `--tls-private-key-file`.
    pub key: PathBuf,
    /// `--client-ca-file`.
    pub client_ca: Option<PathBuf>,
}

/// How the guard proves its own identity to the kubelet.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// A client certificate and its key.
    ClientCert {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM key.
        key: PathBuf,
        /// The flags that named the certificate and the key, for errors and metric labels.
        flags: [&'static str; 2],
    },
    /// A bearer token read from a file.
    TokenFile(PathBuf),
}

/// The client configurations towards the kubelet.
pub struct UpstreamTls {
    /// With the guard's client certificate, if that is its credential.
    pub guard: ClientConfig,
    /// Without any client certificate, for requests forwarded with the caller's own token
    /// (`--mode=observe`); `None` when not asked for.
    pub callers: Option<ClientConfig>,
}

/// The crypto provider of every TLS configuration in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The serving configuration and the verifier of callers' certificates inside it, kept apart so a
/// connection made under an older `--client-ca-file` can be checked against the current one.
pub struct Serving {
    /// What new connections are served with.
    pub config: Arc<ServerConfig>,
    /// Verifies callers' certificates against `--client-ca-file`; `None` without one.
    pub callers: Option<Arc<dyn ClientCertVerifier>>,
}

/// A caller's verified certificate chain, verified again whenever the serving configuration has
/// changed since (a new `--client-ca-file`, or serving certificate) and at least every
/// [`REVERIFY`], as the kubelet verifies the chain against its current bundle on every request: a
/// CA removed from the bundle, or one past its dates, stops admitting the connections it admitted.
pub struct CallerTrust {
    chain: Vec<CertificateDer<'static>>,
    serving: Arc<Watched<Serving>>,
    /// The configuration the chain was last verified under, whether it verified, and when.
    checked: Mutex<(Arc<Serving>, bool, Instant)>,
}

/// How long a verdict on a caller's chain stands under one configuration: a CA or intermediate
/// whose dates end while its connection is open stops admitting within this.
pub const REVERIFY: Duration = Duration::from_secs(60);

impl CallerTrust {
    /// The chain a connection presented to `serving`'s configuration `at`. A full handshake has
    /// just verified it; a `resumed` one carries the chain of the handshake that made the session,
    /// verified then (rustls does not verify it again), so it is verified now.
    pub fn new(
        chain: &[CertificateDer<'_>],
        serving: Arc<Watched<Serving>>,
        at: Arc<Serving>,
        resumed: bool,
    ) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|cert| cert.clone().into_owned()).collect();
        let verified = !resumed || verify(&chain, &at);
        Self {
            chain,
            serving,
            checked: Mutex::new((at, verified, Instant::now())),
        }
    }

    /// Whether the current configuration still trusts the chain; verified at most once per
    /// configuration.
    pub fn holds(&self) -> bool {
        let current = self.serving.current();
        let mut checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if !Arc::ptr_eq(&checked.0, &current) || now.duration_since(checked.2) >= REVERIFY {
            let verified = verify(&self.chain, &current);
            *checked = (current, verified, now);
        }
        checked.1
    }
}

/// Whether `serving`'s client CAs admit `chain` now.
fn verify(chain: &[CertificateDer<'static>], serving: &Serving) -> bool {
    match (chain.split_first(), &serving.callers) {
        (Some((leaf, intermediates)), Some(verifier)) => verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok(),
        _ => false,
    }
}

impl std::fmt::Debug for CallerTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerTrust")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Builds the serving configuration from the files with the default policy: ALPN h2 and
/// http/1.1, client certificates requested but optional when a client CA is given.
pub fn server_config(files: &ServingFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut contents = vec![read(&files.cert, "--tls-cert-file")?];
    contents.push(read(&files.key, "--tls-private-key-file")?);
    if let Some(ca) = &files.client_ca {
        contents.push(read(ca, "--client-ca-file")?);
    }
    Ok(server_config_from(files, &TlsPolicy::default(), &contents)?.config)
}

/// Builds the serving configuration from the contents of the certificate, the key and, if
/// configured, the client CA, in that order.
pub fn server_config_from(
    files: &ServingFiles,
    policy: &TlsPolicy,
    contents: &[Vec<u8>],
) -> Result<Serving, TlsError> {
    let (cert_pem, key_pem, ca_pem) = match contents {
        [cert, key] => (cert, key, None),
        [cert, key, ca] => (cert, key, Some(ca)),
        _ => {
            return Err(error(
                "--tls-cert-file",
                &files.cert,
                "internal: files missing",
            ));
        }
    };
    let (chain, key) = cert_and_key(
        (cert_pem, &files.cert, "--tls-cert-file"),
        (key_pem, &files.key, "--tls-private-key-file"),
    )?;
    let provider = Arc::new(policy.provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&policy.versions(&provider))
        .map_err(|e| error("--tls-cert-file", &files.cert, e))?;
    let callers = match (&files.client_ca, ca_pem) {
        (Some(ca), Some(pem)) => {
            let roots = Arc::new(roots(pem, ca, "--client-ca-file")?);
            let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| error("--client-ca-file", ca, e))?;
            Some(anchors::checked(
                webpki,
                &certs(pem, ca, "--client-ca-file")?,
            ))
        }
        _ => None,
    };
    let builder = match &callers {
        Some(verifier) => builder.with_client_cert_verifier(Arc::clone(verifier)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| error("--tls-private-key-file", &files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Serving {
        config: Arc::new(config),
        callers,
    })
}

/// Builds the client configurations towards the kubelet from the contents of the upstream CA `ca` and,
/// for a certificate credential, the client certificate and its key, in that order. ALPN is left
/// to the connector, which offers http/1.1 only.
pub fn upstream_config_from(
    ca: &Path,
    credential: &UpstreamCredential,
    contents: &[Vec<u8>],
    callers: bool,
) -> Result<UpstreamTls, TlsError> {
    let Some(ca_pem) = contents.first() else {
        return Err(error("--upstream-ca-file", ca, "internal: file missing"));
    };
    let roots = roots(ca_pem, ca, "--upstream-ca-file")?;
    let builder = || {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| error("--upstream-ca-file", ca, e))
            .map(|builder| builder.with_root_certificates(roots.clone()))
    };
    let guard = match (credential, contents) {
        (UpstreamCredential::ClientCert { cert, key, flags }, [_, cert_pem, key_pem]) => {
            let (chain, key_der) =
                cert_and_key((cert_pem, cert, flags[0]), (key_pem, key, flags[1]))?;
            builder()?
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| error(flags[1], key, e))?
        }
        _ => builder()?.with_no_client_auth(),
    };
    let callers = if callers {
        Some(builder()?.with_no_client_auth())
    } else {
        None
    };
    Ok(UpstreamTls { guard, callers })
}

/// A client configuration towards the kubelet with no client certificate at all, verifying the
/// kubelet against the CA file `ca` (named by `--upstream-ca-file`), offering http/1.1: what the
/// lockdown probe presents, and what a caller without the guard's certificate would.
pub fn client_without_certificate(ca: &Path) -> Result<ClientConfig, TlsError> {
    let flag = "--upstream-ca-file";
    let roots = roots(&read(ca, flag)?, ca, flag)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(flag, ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads every certificate of a PEM file; an empty file is an error.
pub fn load_certs(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certs(&read(path, flag)?, path, flag)
}

/// Reads the first private key of a PEM file (PKCS#1, SEC1 or PKCS#8).
pub fn load_key(path: &Path, flag: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path, flag)?).map_err(|e| error(flag, path, e))
}

impl From<TlsError> for FileError {
    fn from(e: TlsError) -> Self {
        crate::reload::error(e.flag, &e.path, e.message)
    }
}

/// When the first certificate of PEM `bytes` expires, in Unix seconds; `None` if there is no
/// readable certificate (the configuration built from the same bytes reports why).
pub fn not_after(bytes: &[u8]) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let first = CertificateDer::pem_slice_iter(bytes).next()?.ok()?;
    let (_, cert) = X509Certificate::from_der(first.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Every certificate of PEM `bytes` read from `path`; none is an error.
fn certs(
    bytes: &[u8],
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(flag, path, e))?;
    if certs.is_empty() {
        return Err(error(flag, path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// Parses a certificate chain and its key and proves they belong together, so a mismatch fails
/// at start-up (or keeps the last good pair on reload) rather than failing every handshake.
fn cert_and_key(
    (cert_pem, cert_path, cert_flag): (&[u8], &Path, &'static str),
    (key_pem, key_path, key_flag): (&[u8], &Path, &'static str),
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certs(cert_pem, cert_path, cert_flag)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| error(key_flag, key_path, e))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| error(key_flag, key_path, e))?;
    CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| {
            error(
                key_flag,
                key_path,
                format!("does not match {cert_flag} {}: {e}", cert_path.display()),
            )
        })?;
    Ok((chain, key))
}

fn roots(pem: &[u8], path: &Path, flag: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(pem, path, flag)? {
        roots.add(cert).map_err(|e| error(flag, path, e))?;
    }
    Ok(roots)
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(flag, path, e))
}

fn error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        flag,
        path: path.to_owned(),
        message: message.to_string(),
    }
}
