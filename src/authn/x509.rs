//! Client certificate → identity, as Kubernetes' x509 authenticator does it: user = subject CN,
//! groups = every subject O, UID = the subject's `1.3.6.1.4.1.57683.2` attribute (v1.34 and later,
//! `AllowParsingUserUIDFromCertAuth`), and the extra `authentication.kubernetes.io/credential-id`
//! = `X509SHA256=<hex of the certificate's SHA-256>` (docs/kubelet-api.md section 6). The
//! certificate has already been verified by rustls against `--client-ca-file`; this only reads
//! names from it. A name this cannot read as text (a BMPString, say) makes the certificate
//! unusable rather than be skipped: skipping an `O=system:unauthenticated` would change the groups.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

use super::{Identity, Issued, PeerCertificate};

/// The subject attribute Kubernetes reads a certificate user's UID from.
const UID_OID: [u64; 8] = [1, 3, 6, 1, 4, 1, 57683, 2];

/// The extra key naming the credential a user authenticated with.
pub const CREDENTIAL_ID: &str = "authentication.kubernetes.io/credential-id";

/// A subject attribute's text, or why it has none the guard can read.
fn text<'a>(attribute: &AttributeTypeAndValue<'a>) -> Result<&'a str, String> {
    attribute
        .as_str()
        .map_err(|_| "a subject name is not text the guard reads (UTF8String, PrintableString, IA5String or NumericString)".to_owned())
}

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
        .map(text)
        .transpose()?
        .filter(|cn| !cn.is_empty())
        .ok_or("the subject has no common name")?
        .to_owned();
    let groups = subject
        .iter_organization()
        .map(|o| text(o).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    let uid_oid = Oid::from(&UID_OID).map_err(|_| "internal: the UID attribute's OID")?;
    let uid = match subject
        .iter_by_oid(&uid_oid)
        .map(text)
        .collect::<Result<Vec<_>, _>>()?[..]
    {
        [] => String::new(),
        [""] => return Err("the subject's UID is empty".into()),
        [uid] => uid.to_owned(),
        _ => return Err("the subject has more than one UID".into()),
    };
    let fingerprint = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let hex: String = fingerprint
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let extra = BTreeMap::from([(CREDENTIAL_ID.to_owned(), vec![format!("X509SHA256={hex}")])]);
    let issued = Issued {
        issuer: cert.issuer().to_string(),
        serial: format!("{:x}", cert.tbs_certificate.serial),
    };
    Ok((Identity::new(name, uid, groups, extra), not_after, issued))
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

    /// A self-signed certificate with `CN=u` and these other subject attributes.
    fn with_subject(attributes: Vec<(rcgen::DnType, rcgen::DnValue)>) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "u");
        for (ty, value) in attributes {
            params.distinguished_name.push(ty, value);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uid(value: &str) -> (rcgen::DnType, rcgen::DnValue) {
        (
            rcgen::DnType::CustomDnType(UID_OID.to_vec()),
            rcgen::DnValue::Utf8String(value.into()),
        )
    }

    #[test]
    fn the_uid_attribute_and_the_fingerprint_are_read_as_kubernetes_reads_them() {
        let chain = [with_subject(vec![uid("u-1")])];
        let PeerCertificate::Identity { identity, .. } = peer_identity(Some(&chain)) else {
            panic!("no identity")
        };
        assert_eq!(identity.uid, "u-1");
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, chain[0].as_ref());
        let hex: String = fingerprint
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(identity.extra[CREDENTIAL_ID], [format!("X509SHA256={hex}")]);
        let chain = [with_subject(vec![])];
        let PeerCertificate::Identity { identity, .. } = peer_identity(Some(&chain)) else {
            panic!("no identity")
        };
        assert_eq!(identity.uid, "", "no UID attribute, no UID");
    }

    #[test]
    fn an_empty_uid_or_a_name_that_is_not_readable_text_is_refused() {
        let empty = [with_subject(vec![uid("")])];
        assert!(matches!(
            peer_identity(Some(&empty)),
            PeerCertificate::Unusable(why) if why.contains("UID is empty")
        ));
        // Go reads a BMPString; skipping it would drop O=system:unauthenticated from the groups.
        let bmp = rcgen::DnValue::BmpString("system:unauthenticated".try_into().unwrap());
        let unreadable = [with_subject(vec![(rcgen::DnType::OrganizationName, bmp)])];
        assert!(matches!(
            peer_identity(Some(&unreadable)),
            PeerCertificate::Unusable(_)
        ));
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
