//! Stands in for the cluster's PKI: a CA generated at test time and the serving and client
//! certificates it signs (ECDSA P-256), written to files the way kubeadm lays them out.
//!
//! Client certificates carry the Kubernetes identity: subject CN is the user name and every
//! subject O is a group. rcgen keeps one value per attribute type, so a subject with several O
//! entries is encoded here by hand and the certificate re-signed with the CA key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SigningKey,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority whose certificate lives in `ca.crt` inside its own temp dir.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    cert_path: PathBuf,
    serial: AtomicU64,
}

/// An issued certificate and its private key, in memory and on disk.
#[derive(Clone, Debug)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
    /// Where `cert_pem` was written.
    pub cert_path: PathBuf,
    /// Where `key_pem` was written.
    pub key_path: PathBuf,
}

impl Ca {
    /// Generates a self-signed CA with subject CN `name` and writes `ca.crt`.
    pub fn new(name: &str) -> Ca {
        Self::valid_for(name, None)
    }

    /// As [`Ca::new`], valid from now for `validity` when given.
    pub fn valid_for(name: &str, validity: Option<std::time::Duration>) -> Ca {
        let mut params = CertificateParams::default();
        if let Some(validity) = validity {
            (params.not_before, params.not_after) = from_now(validity);
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-sign CA");
        let dir = super::temp_dir("pki");
        let cert_path = dir.join("ca.crt");
        std::fs::write(&cert_path, issuer.pem()).expect("write ca.crt");
        Ca {
            issuer,
            dir,
            cert_path,
            serial: AtomicU64::new(0),
        }
    }

    /// Path of the CA certificate (PEM).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// The directory holding `ca.crt` and every issued certificate.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A root store trusting only this CA.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der()).expect("add CA to root store");
        Arc::new(roots)
    }

    /// Issues a serving certificate (serverAuth) for `cn`; each SAN is an IP address or a DNS name.
    pub fn server_cert(&self, cn: &str, sans: &[&str]) -> CertKey {
        let mut params = leaf_params(cn);
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into().expect("DNS SAN")),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(cn, &params, None)
    }

    /// Issues a client certificate (clientAuth): subject CN `cn` and one O entry per org.
    pub fn client_cert(&self, cn: &str, orgs: &[&str]) -> CertKey {
        let mut params = leaf_params(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(cn, &params, Some(orgs))
    }

    /// Issues a client certificate whose subject holds the common names `cns` in order (Go reads
    /// the last), valid from now for `validity` when given.
    pub fn client_cert_with(&self, cns: &[&str], validity: Option<std::time::Duration>) -> CertKey {
        let mut params = leaf_params(cns[0]);
        for cn in &cns[1..] {
            // rcgen keeps one value per type: the CN's OID (2.5.4.3) as a custom type adds another.
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 3]), *cn);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Some(validity) = validity {
            (params.not_before, params.not_after) = from_now(validity);
        }
        self.issue(cns[0], &params, None)
    }

    /// Signs `params`; with `orgs`, replaces the subject by CN plus one O per org and re-signs.
    fn issue(&self, cn: &str, params: &CertificateParams, orgs: Option<&[&str]>) -> CertKey {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let der = match orgs {
            Some(orgs) => self.resign_with_subject(cert.der(), &subject_der(cn, orgs)),
            None => cert.der().to_vec(),
        };
        let cert_pem = pem_encode("CERTIFICATE", &der);
        let key_pem = key.serialize_pem();
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let stem: String = cn
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let cert_path = self.dir.join(format!("{stem}-{n}.crt"));
        let key_path = self.dir.join(format!("{stem}-{n}.key"));
        std::fs::write(&cert_path, &cert_pem).expect("write cert");
        std::fs::write(&key_path, &key_pem).expect("write key");
        CertKey {
            cert_pem,
            key_pem,
            cert_path,
            key_path,
        }
    }

    /// Rebuilds `cert` with `subject` in place of its subject and signs the new TBS with the CA key.
    fn resign_with_subject(&self, cert: &[u8], subject: &[u8]) -> Vec<u8> {
        let parts = der_children(der_content(cert));
        let [tbs, sig_alg, _sig] = parts[..] else {
            panic!("certificate is not tbs, algorithm, signature");
        };
        let fields = der_children(der_content(tbs));
        // rcgen writes v3 certificates: [0] version, serial, signature, issuer, validity, subject, ...
        assert_eq!(fields[0][0], 0xa0, "TBS starts with an explicit version");
        let mut tbs_content = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            tbs_content.extend_from_slice(if i == 5 { subject } else { field });
        }
        let new_tbs = der_tlv(0x30, &tbs_content);
        let mut bits = vec![0u8];
        bits.extend(self.issuer.key().sign(&new_tbs).expect("sign TBS"));
        let mut content = new_tbs;
        content.extend_from_slice(sig_alg);
        content.extend(der_tlv(0x03, &bits));
        der_tlv(0x30, &content)
    }
}

impl CertKey {
    /// The certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("certificate PEM")
    }

    /// The private key, DER.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM")
    }
}

/// Parameters shared by every leaf certificate: subject CN, signature key usage, AKI.
fn leaf_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

/// `SEQUENCE OF RDN`: one O per org (in order), then the CN, as Go's `pkix.Name` orders them.
fn subject_der(cn: &str, orgs: &[&str]) -> Vec<u8> {
    const OID_CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    const OID_O: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    let rdn = |oid: &[u8], value: &str| {
        let mut atv = oid.to_vec();
        atv.extend(der_tlv(0x0c, value.as_bytes()));
        der_tlv(0x31, &der_tlv(0x30, &atv))
    };
    let mut rdns = Vec::new();
    for org in orgs {
        rdns.extend(rdn(&OID_O, org));
    }
    rdns.extend(rdn(&OID_CN, cn));
    der_tlv(0x30, &rdns)
}

/// Encodes one DER element with a single-byte tag.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// Splits one DER element into (header length, content length).
fn der_header(elem: &[u8]) -> (usize, usize) {
    let first = elem[1];
    if first < 0x80 {
        return (2, usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    let len = elem[2..2 + n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    (2 + n, len)
}

/// The content octets of the DER element at the start of `elem`.
fn der_content(elem: &[u8]) -> &[u8] {
    let (header, len) = der_header(elem);
    &elem[header..header + len]
}

/// The complete child elements (tag, length, content) of a constructed element's content.
fn der_children(mut content: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (header, len) = der_header(content);
        let (elem, rest) = content.split_at(header + len);
        out.push(elem);
        content = rest;
    }
    out
}

/// PEM-encodes `der` with 64-column base64 lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// From now (to the second) for `validity`.
fn from_now(validity: std::time::Duration) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::from_unix_timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
    .unwrap();
    (now, now + validity)
}
