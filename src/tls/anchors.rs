//! What Go checks of a trust anchor and webpki does not. webpki turns each CA certificate of
//! `--client-ca-file` into a trust anchor of subject, key and name constraints, and drops the
//! rest; Go's `Certificate.Verify`, which the kubelet's x509 authenticator calls, also requires
//! the root itself to be within its validity period and, when it names extended key usages, to
//! allow client authentication. So an expired cluster CA, or a CA limited to server
//! authentication, would admit callers at the guard and not at the kubelet. This verifier asks
//! webpki first, then requires that a CA of the bundle that issued a certificate of the chain
//! passes both checks now.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

/// webpki's verdict, then the anchors' own dates and extended key usage.
#[derive(Debug)]
struct AnchorChecked {
    inner: Arc<dyn ClientCertVerifier>,
    anchors: Vec<Anchor>,
}

/// What Go checks of one CA certificate of the bundle.
#[derive(Debug)]
struct Anchor {
    /// The subject, as DER: what a certificate it issued names as its issuer.
    subject: Vec<u8>,
    /// Validity, in seconds since the epoch.
    not_before: i64,
    not_after: i64,
    /// No extended key usage, `any`, or `clientAuth`.
    client_auth: bool,
}

/// `inner` (webpki's verifier for `bundle`) with the anchors of `bundle` checked as Go checks
/// them.
pub(super) fn checked(
    inner: Arc<dyn ClientCertVerifier>,
    bundle: &[CertificateDer<'_>],
) -> Arc<dyn ClientCertVerifier> {
    Arc::new(AnchorChecked {
        inner,
        anchors: bundle.iter().filter_map(Anchor::of).collect(),
    })
}

impl Anchor {
    fn of(der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let client_auth = match cert.extended_key_usage() {
            Ok(None) => true,
            Ok(Some(usage)) => usage.value.any || usage.value.client_auth,
            Err(_) => false,
        };
        Some(Self {
            subject: cert.subject().as_raw().to_vec(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            client_auth,
        })
    }

    fn admits(&self, now: i64) -> bool {
        self.client_auth && self.not_before <= now && now <= self.not_after
    }
}

impl ClientCertVerifier for AnchorChecked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let mut issuers = std::iter::once(end_entity)
            .chain(intermediates)
            .filter_map(|der| X509Certificate::from_der(der).ok())
            .map(|(_, cert)| cert.issuer().as_raw().to_vec());
        let admitted = issuers.any(|issuer| {
            self.anchors
                .iter()
                .any(|anchor| anchor.subject == issuer && anchor.admits(now))
        });
        if admitted {
            Ok(verified)
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };
    use rustls::RootCertStore;
    use rustls::server::WebPkiClientVerifier;

    use super::*;

    /// A CA with `usages` valid from `from` to `to` (seconds from now), and a client certificate
    /// it issued, valid now.
    fn ca_and_leaf(
        from: i64,
        to: i64,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let now = time::OffsetDateTime::now_utc();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_before = now + time::Duration::seconds(from);
        ca.not_after = now + time::Duration::seconds(to);
        ca.extended_key_usages = usages;
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        (issuer.der().clone(), leaf.der().clone())
    }

    fn verdict(ca: CertificateDer<'static>, leaf: &CertificateDer<'_>) -> (bool, bool) {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let webpki: Arc<dyn ClientCertVerifier> =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()
                .unwrap();
        let verifier = checked(Arc::clone(&webpki), &[ca]);
        let now = UnixTime::now();
        (
            webpki.verify_client_cert(leaf, &[], now).is_ok(),
            verifier.verify_client_cert(leaf, &[], now).is_ok(),
        )
    }

    #[test]
    fn a_valid_ca_admits_as_webpki_does() {
        let (ca, leaf) = ca_and_leaf(-3600, 3600, vec![]);
        assert_eq!(verdict(ca, &leaf), (true, true));
        let (ca, leaf) = ca_and_leaf(-3600, 3600, vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(verdict(ca, &leaf), (true, true));
    }

    #[test]
    fn an_expired_ca_or_one_for_servers_only_admits_no_one_as_in_go() {
        let (ca, leaf) = ca_and_leaf(-7200, -3600, vec![]);
        assert_eq!(verdict(ca, &leaf), (true, false), "expired an hour ago");
        let (ca, leaf) = ca_and_leaf(3600, 7200, vec![]);
        assert_eq!(verdict(ca, &leaf), (true, false), "not yet valid");
        let (ca, leaf) = ca_and_leaf(-3600, 3600, vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert_eq!(verdict(ca, &leaf), (true, false), "for servers only");
    }
}
