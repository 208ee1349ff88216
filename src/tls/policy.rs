//! The serving side's TLS policy: `--tls-min-version` and `--tls-cipher-suites`, with the
//! kubelet's flag values (Go's `VersionTLS12`, Go's and IANA's suite names) mapped onto what
//! rustls' ring provider offers.
//!
//! As in Go, the suite list governs TLS 1.2. Go ignores TLS 1.3 names in the list and always
//! offers every TLS 1.3 suite; the guard keeps all of them too unless the list names some, then
//! only those (stricter than Go: a list naming a TLS 1.3 suite is the operator asking for it). A name Go knows but rustls does not implement (CBC, RC4, 3DES,
//! static RSA key exchange) is refused with that reason, so a kubelet's flag value copied over
//! never silently weakens or breaks the policy.

use rustls::SupportedCipherSuite;
use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite as ring;

/// The lowest TLS version the guard accepts from callers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// `VersionTLS12` (the default, as the kubelet's).
    #[default]
    Tls12,
    /// `VersionTLS13`.
    Tls13,
}

/// The protocol versions and cipher suites offered to callers.
#[derive(Clone, Debug, Default)]
pub struct TlsPolicy {
    /// `--tls-min-version`.
    pub min_version: MinVersion,
    /// `--tls-cipher-suites`; empty means every suite the provider offers.
    pub cipher_suites: Vec<SupportedCipherSuite>,
}

/// Suites by the names Go and IANA give them. Go names the ChaCha20 suites without `_SHA256`,
/// and TLS 1.3 suites without the `13` rustls adds.
const SUPPORTED: [(&str, &SupportedCipherSuite); 14] = [
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        &ring::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        &ring::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        &ring::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        &ring::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        &ring::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        &ring::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        &ring::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        &ring::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    ("TLS_AES_128_GCM_SHA256", &ring::TLS13_AES_128_GCM_SHA256),
    ("TLS_AES_256_GCM_SHA384", &ring::TLS13_AES_256_GCM_SHA384),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        &ring::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    ("TLS13_AES_128_GCM_SHA256", &ring::TLS13_AES_128_GCM_SHA256),
    ("TLS13_AES_256_GCM_SHA384", &ring::TLS13_AES_256_GCM_SHA384),
    (
        "TLS13_CHACHA20_POLY1305_SHA256",
        &ring::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// Suites Go (and so the kubelet) accepts that rustls does not implement.
const UNSUPPORTED: [&str; 16] = [
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

impl MinVersion {
    /// Parses a `--tls-min-version` value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "VersionTLS12" => Ok(Self::Tls12),
            "VersionTLS13" => Ok(Self::Tls13),
            "VersionTLS10" | "VersionTLS11" => Err(format!(
                "{raw} is not supported (TLS 1.0 and 1.1 are not implemented): use VersionTLS12 or VersionTLS13"
            )),
            _ => Err(format!(
                "{raw:?} is not a TLS version: use VersionTLS12 or VersionTLS13"
            )),
        }
    }
}

impl TlsPolicy {
    /// The ring provider restricted to the policy's suites.
    pub fn provider(&self) -> CryptoProvider {
        let mut provider = rustls::crypto::ring::default_provider();
        if self.cipher_suites.is_empty() {
            return provider;
        }
        let named = |suite: &SupportedCipherSuite| {
            self.cipher_suites
                .iter()
                .any(|wanted| wanted.suite() == suite.suite())
        };
        let names_tls13 = self.cipher_suites.iter().any(|s| s.tls13().is_some());
        provider.cipher_suites.retain(|suite| match suite {
            SupportedCipherSuite::Tls13(_) => !names_tls13 || named(suite),
            SupportedCipherSuite::Tls12(_) => named(suite),
        });
        provider
    }

    /// The protocol versions to enable with `provider`: from the minimum up, skipping a version
    /// the suite list left no suite for.
    pub fn versions(&self, provider: &CryptoProvider) -> Vec<&'static SupportedProtocolVersion> {
        let has = |version: &SupportedProtocolVersion| {
            provider
                .cipher_suites
                .iter()
                .any(|suite| suite.version() == version)
        };
        let mut versions = Vec::new();
        if self.min_version == MinVersion::Tls12 && has(&rustls::version::TLS12) {
            versions.push(&rustls::version::TLS12);
        }
        if has(&rustls::version::TLS13) {
            versions.push(&rustls::version::TLS13);
        }
        versions
    }
}

/// Parses one `--tls-cipher-suites` name.
pub fn parse_cipher_suite(raw: &str) -> Result<SupportedCipherSuite, String> {
    let name = raw.trim();
    if let Some((_, suite)) = SUPPORTED.iter().find(|(known, _)| *known == name) {
        return Ok(**suite);
    }
    if UNSUPPORTED.contains(&name) {
        return Err(format!(
            "{name} is not supported: only AEAD suites with ECDHE key exchange are implemented ({})",
            supported_names()
        ));
    }
    Err(format!(
        "{name:?} is not a cipher suite name; supported: {}",
        supported_names()
    ))
}

fn supported_names() -> String {
    let names: Vec<&str> = SUPPORTED.iter().map(|(name, _)| *name).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_iana_names_map_to_the_same_suite() {
        let go = parse_cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").unwrap();
        let iana = parse_cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256").unwrap();
        assert_eq!(go.suite(), iana.suite());
        let go13 = parse_cipher_suite("TLS_AES_128_GCM_SHA256").unwrap();
        assert_eq!(go13.suite(), rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn unknown_and_unimplemented_names_are_told_apart() {
        let cbc = parse_cipher_suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA").unwrap_err();
        assert!(cbc.contains("not supported"), "{cbc}");
        let typo = parse_cipher_suite("TLS_ECDHE_RSA_WITH_AES_129_GCM_SHA256").unwrap_err();
        assert!(typo.contains("not a cipher suite"), "{typo}");
        assert!(MinVersion::parse("VersionTLS11").is_err());
        assert_eq!(MinVersion::parse("VersionTLS13"), Ok(MinVersion::Tls13));
    }

    #[test]
    fn the_list_restricts_tls12_and_leaves_tls13_alone_unless_named() {
        let policy = TlsPolicy {
            min_version: MinVersion::Tls12,
            cipher_suites: vec![
                parse_cipher_suite("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384").unwrap(),
            ],
        };
        let provider = policy.provider();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(provider.cipher_suites.len(), 4, "three TLS 1.3 suites kept");
        assert_eq!(policy.versions(&provider).len(), 2);

        let only13 = TlsPolicy {
            min_version: MinVersion::Tls12,
            cipher_suites: vec![parse_cipher_suite("TLS_AES_256_GCM_SHA384").unwrap()],
        };
        let provider = only13.provider();
        assert_eq!(provider.cipher_suites.len(), 1);
        assert_eq!(
            only13.versions(&provider),
            [&rustls::version::TLS13],
            "no TLS 1.2 suite left, so no TLS 1.2"
        );
    }
}
