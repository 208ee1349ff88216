//! Certificate rotation: the serving configuration and the upstream client configurations as
//! polled values (`reload::Watched`), rebuilt when any of their files changes.
//!
//! The kubelet rotates its serving certificate, and client CAs and the guard's own upstream
//! credential rotate too. A new configuration is used by connections opened after it took effect;
//! open connections keep the one they were made with, except for trust: a caller's certificate
//! chain is verified again against the new `--client-ca-file` at its connection's next request
//! (`tls::CallerTrust`), as the kubelet verifies against its current bundle on every request. A
//! certificate that does not match its key,
//! or a file that does not parse, keeps the last good configuration (and is logged and counted by
//! the reload task). Each configuration that takes effect sets its certificate's expiry gauge
//! (`kubelet_guard_certificate_expiry_timestamp_seconds`).

use prometheus::IntGauge;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use std::path::Path;

use super::{Serving, ServingFiles, TlsPolicy, UpstreamCredential, UpstreamTls};
use crate::reload::{FileError, Source, Watched};

/// The serving configuration, from `--tls-cert-file`, `--tls-private-key-file` and
/// `--client-ca-file`, under `policy`; `expiry` follows the certificate in use. A caller CA
/// bundle holding any of `never_trusted` (the node-local CA) is refused, at start and at every
/// reload.
pub fn serving(
    files: &ServingFiles,
    policy: &TlsPolicy,
    expiry: IntGauge,
    never_trusted: Vec<CertificateDer<'static>>,
) -> Result<Watched<Serving>, FileError> {
    let mut sources = vec![
        Source::new("--tls-cert-file", &files.cert),
        Source::new("--tls-private-key-file", &files.key),
    ];
    if let Some(ca) = &files.client_ca {
        sources.push(Source::new("--client-ca-file", ca));
    }
    let (files, policy) = (files.clone(), policy.clone());
    Watched::load_with(sources, move |contents| {
        if let (Some(ca), Some(pem)) = (&files.client_ca, contents.get(2))
            && CertificateDer::pem_slice_iter(pem)
                .filter_map(Result::ok)
                .any(|cert| never_trusted.contains(&cert))
        {
            return Err(FileError {
                flag: "--client-ca-file",
                path: ca.clone(),
                message: "holds the node-local CA of --node-pki-dir; that CA must never be \
                          trusted for callers"
                    .into(),
            });
        }
        let config = super::server_config_from(&files, &policy, contents)?;
        set_expiry(&expiry, contents.first());
        Ok(config)
    })
}

/// The files the upstream client configurations are built from, in the order
/// [`upstream`] reads them.
pub fn upstream_sources(ca: &Path, credential: &UpstreamCredential) -> Vec<Source> {
    let mut sources = vec![Source::new("--upstream-ca-file", ca)];
    if let UpstreamCredential::ClientCert { cert, key, flags } = credential {
        sources.push(Source::new(flags[0], cert));
        sources.push(Source::new(flags[1], key));
    }
    sources
}

/// Builds the upstream client configurations from the contents of [`upstream_sources`];
/// `callers` adds the one without the guard's certificate. `expiry`, given with a client
/// certificate only (a token has none to show), follows that certificate.
pub fn upstream(
    ca: &Path,
    credential: &UpstreamCredential,
    contents: &[Vec<u8>],
    callers: bool,
    expiry: Option<&IntGauge>,
) -> Result<UpstreamTls, FileError> {
    let tls = super::upstream_config_from(ca, credential, contents, callers)?;
    if let Some(expiry) = expiry {
        set_expiry(expiry, contents.get(1));
    }
    Ok(tls)
}

/// Sets `expiry` to when the certificate of `pem` expires, if it is readable.
fn set_expiry(expiry: &IntGauge, pem: Option<&Vec<u8>>) {
    if let Some(not_after) = pem.and_then(|pem| super::not_after(pem)) {
        expiry.set(not_after);
    }
}
