//! PEM loading and the two rustls configurations: the guard's serving side (optional client
//! certificates verified against `--client-ca-file`) and its client side towards the kubelet.
//!
//! ring is the one crypto provider (`provider()`); nothing here may pull in another. Every error
//! names the flag and the file so a misconfiguration fails at start-up with a usable message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ServingFiles, Upstream, UpstreamCredential};

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

/// The crypto provider of every TLS configuration in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the serving configuration: ALPN h2 and http/1.1, client certificates requested but
/// optional when a client CA is given (a caller may use a bearer token instead).
pub fn server_config(files: &ServingFiles) -> Result<ServerConfig, TlsError> {
    let (chain, key) = cert_and_key(
        &files.cert,
        "--tls-cert-file",
        &files.key,
        "--tls-private-key-file",
    )?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("--tls-cert-file", &files.cert, e))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = Arc::new(roots(ca, "--client-ca-file")?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| error("--client-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| error("--tls-private-key-file", &files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Builds the client configuration towards the kubelet: its CA and the guard's client certificate
/// if that is its credential. ALPN is left to the connector, which offers http/1.1 only.
pub fn upstream_config(upstream: &Upstream) -> Result<ClientConfig, TlsError> {
    upstream_client(upstream, true)
}

/// The client configuration towards the kubelet without the guard's certificate, for requests
/// forwarded with the caller's own token (`--mode=observe`).
pub fn upstream_config_for_callers(upstream: &Upstream) -> Result<ClientConfig, TlsError> {
    upstream_client(upstream, false)
}

fn upstream_client(upstream: &Upstream, with_identity: bool) -> Result<ClientConfig, TlsError> {
    let roots = roots(&upstream.ca, "--upstream-ca-file")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("--upstream-ca-file", &upstream.ca, e))?
        .with_root_certificates(roots);
    let config = match &upstream.credential {
        UpstreamCredential::ClientCert {
            cert,
            key: key_path,
        } if with_identity => {
            let (chain, key) = cert_and_key(
                cert,
                "--upstream-client-cert-file",
                key_path,
                "--upstream-client-key-file",
            )?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| error("--upstream-client-key-file", key_path, e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Reads every certificate of a PEM file; an empty file is an error.
pub fn load_certs(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(flag, path, e))?;
    if certs.is_empty() {
        return Err(error(flag, path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#1, SEC1 or PKCS#8).
pub fn load_key(path: &Path, flag: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error(flag, path, e))
}

/// Loads a certificate chain and its key and proves they belong together, so a mismatch fails at
/// start-up rather than in every handshake.
fn cert_and_key(
    cert_path: &Path,
    cert_flag: &'static str,
    key_path: &Path,
    key_flag: &'static str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = load_certs(cert_path, cert_flag)?;
    let key = load_key(key_path, key_flag)?;
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

fn roots(path: &Path, flag: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, flag)? {
        roots.add(cert).map_err(|e| error(flag, path, e))?;
    }
    Ok(roots)
}

fn error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError {
        flag,
        path: path.to_owned(),
        message: message.to_string(),
    }
}
