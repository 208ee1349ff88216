//! What Go checks of a trust anchor and webpki does not. webpki turns each CA certificate of
//! `--client-ca-file` into a trust anchor of subject, key and name constraints, and drops the
//! rest; Go's `Certificate.Verify`, which the kubelet's x509 authenticator calls, also requires
//! the root itself to be within its validity period and, when it names extended key usages, to
//! allow client authentication. So an expired cluster CA, or a CA limited to server
//! authentication, would admit callers at the guard and not at the kubelet.
//!
//! The verifier here hands webpki only the CAs that pass both checks at the moment of
//! verification: webpki then cannot build a path through any other, whatever certificates the
//! caller adds to its chain, and during a rotation a CA and its same-named successor are told apart
//! by their keys, as webpki tells them. The webpki verifier is rebuilt only when the set of such
//! CAs changes (a CA's dates begin or end).

use std::sync::{Arc, Mutex};

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

/// webpki over the CAs of the bundle that Go would accept as roots now.
#[derive(Debug)]
struct AnchorChecked {
    /// webpki over the whole bundle: the hints sent to callers and the handshake signatures.
    whole: Arc<dyn ClientCertVerifier>,
    /// Every CA of the bundle, with what Go checks of it.
    anchors: Vec<Anchor>,
    /// Which CAs were admissible at the last verification, and webpki over just those (`None`:
    /// none were, or none has been made yet).
    current: Mutex<(Vec<bool>, Option<Verifier>)>,
}

type Verifier = Arc<dyn ClientCertVerifier>;

/// What Go checks of one CA certificate of the bundle.
#[derive(Debug)]
struct Anchor {
    der: CertificateDer<'static>,
    /// Validity, in seconds since the epoch.
    not_before: i64,
    not_after: i64,
    /// No extended key usage, `any`, or `clientAuth`.
    client_auth: bool,
}

/// `whole` (webpki's verifier for `bundle`) narrowed, at each verification, to the CAs of
/// `bundle` Go would accept as roots then.
pub(super) fn checked(
    whole: Arc<dyn ClientCertVerifier>,
    bundle: &[CertificateDer<'_>],
) -> Arc<dyn ClientCertVerifier> {
    // Nothing is narrowed yet: the first verification builds webpki over the CAs admissible
    // then, from the CAs this can read (one it cannot is never handed to webpki).
    Arc::new(AnchorChecked {
        whole,
        anchors: bundle.iter().filter_map(Anchor::of).collect(),
        current: Mutex::new((Vec::new(), None)),
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
            der: der.clone().into_owned(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            client_auth,
        })
    }

    fn admits(&self, now: i64) -> bool {
        self.client_auth && self.not_before <= now && now <= self.not_after
    }
}

impl AnchorChecked {
    /// webpki over the CAs admissible at `now`, rebuilt when that set changed.
    fn narrowed(&self, now: UnixTime) -> Option<Verifier> {
        let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let admissible: Vec<bool> = self.anchors.iter().map(|a| a.admits(seconds)).collect();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != admissible {
            let mut roots = RootCertStore::empty();
            for (anchor, _) in self.anchors.iter().zip(&admissible).filter(|(_, ok)| **ok) {
                // Each was added to the whole bundle's store already.
                let _ = roots.add(anchor.der.clone());
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider())
                    .allow_unauthenticated()
                    .build()
                    .ok()
                    .map(|verifier| verifier as Verifier);
            *current = (admissible, verifier);
        }
        current.1.clone()
    }
}

impl ClientCertVerifier for AnchorChecked {
    fn offer_client_auth(&self) -> bool {
        self.whole.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.whole.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.whole.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match self.narrowed(now) {
            Some(verifier) => verifier.verify_client_cert(end_entity, intermediates, now),
            None => Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.whole.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.whole.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.whole.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.whole.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    use super::*;

    /// A CA named `CN=rcgen self signed cert` (every one of them: the same name, as a CA and its
    /// successor have) with `usages`, valid from `from` to `to` seconds from now.
    fn ca(
        from: i64,
        to: i64,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> CertifiedIssuer<'static, KeyPair> {
        let now = time::OffsetDateTime::now_utc();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_before = now + time::Duration::seconds(from);
        ca.not_after = now + time::Duration::seconds(to);
        ca.extended_key_usages = usages;
        CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap()
    }

    /// A client certificate `issuer` signed, valid now.
    fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>) -> CertificateDer<'static> {
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), issuer)
            .unwrap();
        leaf.der().clone()
    }

    /// Whether webpki over the whole `bundle`, and the checked verifier, admit `chain`.
    fn verdict(
        bundle: &[&CertifiedIssuer<'static, KeyPair>],
        chain: &[CertificateDer<'static>],
    ) -> (bool, bool) {
        let bundle: Vec<CertificateDer<'static>> =
            bundle.iter().map(|ca| ca.der().clone()).collect();
        let mut roots = RootCertStore::empty();
        for ca in &bundle {
            roots.add(ca.clone()).unwrap();
        }
        let webpki: Verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::super::provider())
                .build()
                .unwrap();
        let verifier = checked(Arc::clone(&webpki), &bundle);
        let now = UnixTime::now();
        let (leaf, intermediates) = chain.split_first().unwrap();
        (
            webpki.verify_client_cert(leaf, intermediates, now).is_ok(),
            verifier
                .verify_client_cert(leaf, intermediates, now)
                .is_ok(),
        )
    }

    #[test]
    fn a_valid_ca_admits_as_webpki_does() {
        let plain = ca(-3600, 3600, vec![]);
        assert_eq!(verdict(&[&plain], &[leaf(&plain)]), (true, true));
        let client = ca(-3600, 3600, vec![ExtendedKeyUsagePurpose::ClientAuth]);
        assert_eq!(verdict(&[&client], &[leaf(&client)]), (true, true));
    }

    #[test]
    fn an_expired_ca_or_one_for_servers_only_admits_no_one_as_in_go() {
        let expired = ca(-7200, -3600, vec![]);
        assert_eq!(verdict(&[&expired], &[leaf(&expired)]), (true, false));
        let early = ca(3600, 7200, vec![]);
        assert_eq!(
            verdict(&[&early], &[leaf(&early)]),
            (true, false),
            "not yet valid"
        );
        let servers = ca(-3600, 3600, vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert_eq!(verdict(&[&servers], &[leaf(&servers)]), (true, false));
    }

    #[test]
    fn a_same_named_successor_or_a_padded_chain_does_not_stand_in_for_the_ca_that_signed() {
        // During a rotation: the old CA expired, its successor carries the same name.
        let old = ca(-7200, -3600, vec![]);
        let new = ca(-3600, 3600, vec![]);
        assert_eq!(verdict(&[&old, &new], &[leaf(&old)]), (true, false));
        assert_eq!(verdict(&[&old, &new], &[leaf(&new)]), (true, true));
        // A server-only CA's leaf, padded with any certificate the valid CA issued.
        let servers = ca(-3600, 3600, vec![ExtendedKeyUsagePurpose::ServerAuth]);
        let padded = [leaf(&servers), leaf(&new)];
        assert_eq!(verdict(&[&servers, &new], &padded), (true, false));
    }
}
