//! The demo's throw-away PKI: one CA that signs the guard's and the kubelet stand-in's serving
//! certificates and the guard's client certificate for the kubelet, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and key written to disk.
pub struct Issued {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM key (PKCS#8).
    pub key: PathBuf,
}

/// The files of the demo's PKI.
pub struct Pki {
    /// The CA certificate every party trusts.
    pub ca: PathBuf,
    /// The guard's serving certificate (127.0.0.1, localhost).
    pub guard: Issued,
    /// The kubelet stand-in's serving certificate (127.0.0.1, localhost).
    pub kubelet: Issued,
    /// The guard's client certificate towards the kubelet.
    pub upstream: Issued,
}

impl Pki {
    /// Generates the PKI into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, String> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubelet-guard demo CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(text)?)
            .map_err(text)?;
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, issuer.pem()).map_err(text)?;
        let serving = |name: &str| issue(&issuer, dir, name, ExtendedKeyUsagePurpose::ServerAuth);
        Ok(Self {
            ca,
            guard: serving("guard")?,
            kubelet: serving("kubelet")?,
            upstream: issue(
                &issuer,
                dir,
                "kubelet-guard",
                ExtendedKeyUsagePurpose::ClientAuth,
            )?,
        })
    }
}

fn issue(
    issuer: &CertifiedIssuer<'_, KeyPair>,
    dir: &Path,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Result<Issued, String> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(text)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().map_err(text)?;
    let cert = params.signed_by(&key, issuer).map_err(text)?;
    let issued = Issued {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&issued.cert, cert.pem()).map_err(text)?;
    std::fs::write(&issued.key, key.serialize_pem()).map_err(text)?;
    Ok(issued)
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}
