//! Client certificate → identity, as Kubernetes' x509 authenticator does it: user = subject CN,
//! groups = every subject O (docs/kubelet-api.md section 6). The certificate has already been verified
//! by rustls against `--client-ca-file`; this only reads names from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Identity, Issued, PeerCertificate};

/// Reads the identity of the leaf certificate a caller presented, if any, with its issuer, serial
/// number and expiry.
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> PeerCertificate {
    let Some(leaf) = chain.and_then(|chain| chain.first()) else {
        return PeerCertificate::Absent;
    };
    match identity(leaf) {
        Ok((identity, not_after, issued)) => PeerCertificate::Identity {
            identity: Arc::new(identity.authenticated()),
            not_after,
            issued: Arc::new(issued),
        },
        Err(why) => PeerCertificate::Unusable(why),
    }
}

/// The identity a certificate names, when it expires, and who issued it. Of several subject CNs
/// the last one counts, as in Go's `pkix.Name` which Kubernetes reads: never an earlier one.
fn identity(leaf: &CertificateDer<'_>) -> Result<(Identity, SystemTime, Issued), String> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| format!("unparsable certificate: {e}"))?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
        .map_err(|_| "the certificate expired before 1970")?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .last()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or("the subject has no common name")?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    let issued = Issued {
        issuer: cert.issuer().to_string(),
        serial: format!("{:x}", cert.tbs_certificate.serial),
    };
    Ok((
        Identity {
            name,
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        },
        not_after,
        issued,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: Option<&str>, org: Option<&str>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        if let Some(org) = org {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, org);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn common_name_is_the_user_and_organizations_the_groups() {
        let chain = [certificate(
            Some("system:node:node-1"),
            Some("system:nodes"),
        )];
        let PeerCertificate::Identity { identity, .. } = peer_identity(Some(&chain)) else {
            panic!("no identity")
        };
        assert_eq!(identity.name, "system:node:node-1");
        assert_eq!(
            identity.groups[..],
            ["system:nodes", "system:authenticated"]
        );
    }

    #[test]
    fn the_issuer_serial_and_expiry_are_read_once_with_the_identity() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "example");
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::default();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x0a, 0xbc, 0xde]));
        leaf.not_after = rcgen::date_time_ymd(2031, 7, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = [leaf.signed_by(&key, &issuer).unwrap().der().clone()];
        let PeerCertificate::Identity {
            not_after, issued, ..
        } = peer_identity(Some(&chain))
        else {
            panic!("no identity")
        };
        assert_eq!(issued.issuer, "O=example, CN=kubernetes");
        assert_eq!(
            issued.serial, "abcde",
            "no leading zeros, as Go prints a big.Int"
        );
        assert_eq!(
            humantime::format_rfc3339_seconds(not_after).to_string(),
            "2031-07-01T00:00:00Z"
        );
    }

    #[test]
    fn of_several_common_names_the_last_counts_as_in_kubernetes() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        // rcgen keeps one value per type: the same OID (2.5.4.3) as a custom type is a second CN.
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 3]), "bob");
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = [params.self_signed(&key).unwrap().der().clone()];
        let PeerCertificate::Identity { identity, .. } = peer_identity(Some(&chain)) else {
            panic!("no identity")
        };
        assert_eq!(identity.name, "bob");
    }

    #[test]
    fn a_certificate_without_a_common_name_identifies_no_one() {
        let chain = [certificate(None, Some("system:masters"))];
        assert!(matches!(
            peer_identity(Some(&chain)),
            PeerCertificate::Unusable(_)
        ));
        assert!(matches!(peer_identity(None), PeerCertificate::Absent));
        assert!(matches!(peer_identity(Some(&[])), PeerCertificate::Absent));
    }
}
