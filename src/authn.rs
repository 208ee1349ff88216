//! Who is calling: a verified client certificate, else a bearer token (of the `Authorization`
//! header, else of a WebSocket request's bearer subprotocol; TokenReview or the static token file,
//! both behind one cache), else `system:anonymous` when `--anonymous-auth` allows it.
//!
//! Follows docs/kubelet-api.md section 6 and the order of Kubernetes' union authenticator (x509 first).
//! This module decides identities only: it never authorizes, never chooses a status code, and never
//! logs or stores a token (cache keys are SHA-256 digests).

pub mod static_tokens;
pub mod token;
pub mod x509;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::HeaderMap;

use crate::kubelet_api::BEARER_SUBPROTOCOL;
use crate::review::ReviewError;
use token::{TokenAuthenticator, TokenOutcome};

/// The group Kubernetes adds to every authenticated user.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The user of callers without credentials.
const ANONYMOUS_USER: &str = "system:anonymous";

/// The group of callers without credentials.
const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";

/// An authenticated caller, as sent in SubjectAccessReviews.
///
/// Built by [`Identity::new`], which hashes every field once with a key random per process: a
/// decision-cache lookup on every request then hashes one number, and identities that differ only
/// in their groups or extra (one service account's tokens, each with its own
/// `authentication.kubernetes.io/credential-id`) do not pile up on one hash for a caller minting
/// tokens to aim at. Equal identities are equal in every field, the digest included, so a field
/// changed after `new` can make equal identities unequal (a cache miss), never the reverse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The keyed hash of the fields below; first, so that most unequal identities differ at once.
    digest: u64,
    /// User name.
    pub name: String,
    /// User UID, empty when unknown.
    pub uid: String,
    /// Groups, in the order the authenticator gave them; shared, so identities of a token file
    /// with the same groups keep one list.
    pub groups: Arc<[String]>,
    /// Extra attributes from the TokenReview.
    pub extra: BTreeMap<String, Vec<String>>,
    /// Whether this is the caller without credentials ([`Identity::anonymous`]), not a token or
    /// certificate naming `system:anonymous`.
    anonymous: bool,
}

impl std::hash::Hash for Identity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// What the caller's TLS connection proved, worked out once per connection.
#[derive(Clone, Debug)]
pub enum PeerCertificate {
    /// No client certificate was presented.
    Absent,
    /// A verified certificate naming this identity, valid until `not_after`: Kubernetes checks a
    /// certificate's dates on every request, not once per connection (or resumed session).
    Identity {
        /// Who the certificate names.
        identity: Arc<Identity>,
        /// When it expires.
        not_after: std::time::SystemTime,
        /// Which certificate it is, for the audit trail.
        issued: Arc<Issued>,
    },
    /// A verified certificate that names no user.
    Unusable(String),
}

impl PeerCertificate {
    /// Who a verified certificate names, while it is valid.
    pub fn current_identity(&self) -> Option<&Arc<Identity>> {
        match self {
            Self::Identity {
                identity,
                not_after,
                ..
            } if std::time::SystemTime::now() <= *not_after => Some(identity),
            _ => None,
        }
    }

    /// When a verified certificate stops being valid, on the runtime's clock: a second after its
    /// `notAfter`, through which it is valid. `None` without one.
    pub fn expires(&self) -> Option<tokio::time::Instant> {
        let Self::Identity { not_after, .. } = self else {
            return None;
        };
        let left = not_after
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left + std::time::Duration::from_secs(1))
    }
}

/// Who issued a client certificate and under which serial number: with the issuer, the serial
/// names one certificate, so an audit reader can find (and revoke) exactly the one that was used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The issuer's distinguished name in certificate order, as OpenSSL prints it (`CN=kubernetes`).
    pub issuer: String,
    /// The serial number in lowercase hexadecimal without leading zeros, as Go's `%x` prints it.
    pub serial: String,
}

/// Why a caller was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    /// No credential, and anonymous access is off.
    #[error("no credentials")]
    NoCredentials,
    /// An `Authorization` header that is not a bearer token.
    #[error("malformed Authorization header")]
    MalformedAuthorization,
    /// The token was reviewed and is not valid.
    #[error("invalid bearer token")]
    InvalidToken,
    /// The client certificate expired after the connection was made.
    #[error("the client certificate has expired")]
    ExpiredCertificate,
    /// The client certificate no longer verifies against `--client-ca-file` (its CA was removed).
    #[error("the client certificate no longer verifies against --client-ca-file")]
    UntrustedCertificate,
    /// The client certificate names no user.
    #[error("unusable client certificate: {0}")]
    UnusableCertificate(String),
    /// The TokenReview failed; nothing is known about the token.
    #[error("token review failed")]
    Review(#[source] ReviewError),
}

/// Authenticates requests.
pub struct Authenticator {
    tokens: TokenAuthenticator,
    anonymous: bool,
}

impl Identity {
    /// An identity, with its digest.
    pub fn new(
        name: impl Into<String>,
        uid: impl Into<String>,
        groups: impl Into<Arc<[String]>>,
        extra: BTreeMap<String, Vec<String>>,
    ) -> Self {
        static KEY: OnceLock<RandomState> = OnceLock::new();
        let (name, uid, groups) = (name.into(), uid.into(), groups.into());
        let digest = KEY
            .get_or_init(RandomState::new)
            .hash_one((&name, &uid, &groups, &extra));
        Self {
            digest,
            name,
            uid,
            groups,
            extra,
            anonymous: false,
        }
    }

    /// The identity of a caller without credentials.
    pub fn anonymous() -> Self {
        Self {
            anonymous: true,
            ..Self::new(
                ANONYMOUS_USER,
                "",
                [UNAUTHENTICATED_GROUP.to_owned()],
                BTreeMap::new(),
            )
        }
    }

    /// Whether this is the identity of a caller without credentials: its requests do not prove
    /// the connection, and are audited as `anonymous` and with the unauthenticated priority. A
    /// token or certificate that names `system:anonymous` is not one.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// [`authenticated`](Self::authenticated) for a shared identity: one that gets no group (the
    /// token file's own, which add it when loaded) stays shared, not copied.
    pub fn shared_authenticated(identity: Arc<Self>) -> Arc<Self> {
        if identity.gets_authenticated_group() {
            Arc::new(Arc::unwrap_or_clone(identity).authenticated())
        } else {
            identity
        }
    }

    /// Adds `system:authenticated` as the kubelet's authenticator chain does (Kubernetes'
    /// `AuthenticatedGroupAdder`): not to `system:anonymous`, and not when the groups already
    /// hold `system:authenticated` or `system:unauthenticated`.
    pub fn authenticated(self) -> Self {
        if self.gets_authenticated_group() {
            let mut groups = self.groups.to_vec();
            groups.push(AUTHENTICATED_GROUP.into());
            return Self::new(self.name, self.uid, groups, self.extra);
        }
        self
    }

    /// By name, as Kubernetes' `AuthenticatedGroupAdder` decides it.
    fn gets_authenticated_group(&self) -> bool {
        self.name != ANONYMOUS_USER
            && !self
                .groups
                .iter()
                .any(|g| g == AUTHENTICATED_GROUP || g == UNAUTHENTICATED_GROUP)
    }
}

impl Authenticator {
    /// An authenticator over a token path, with anonymous access on or off.
    pub fn new(tokens: TokenAuthenticator, anonymous: bool) -> Self {
        Self { tokens, anonymous }
    }

    /// Forgets every cached token review (the token file changed).
    pub fn forget(&self) {
        self.tokens.forget();
    }

    /// Decides who sent a request: the connection's certificate first, then the bearer token of
    /// the `Authorization` header, then that of a WebSocket bearer subprotocol.
    pub async fn authenticate(
        &self,
        peer: &PeerCertificate,
        headers: &HeaderMap,
    ) -> Result<Arc<Identity>, AuthnError> {
        match peer {
            PeerCertificate::Identity {
                identity,
                not_after,
                ..
            } => {
                if std::time::SystemTime::now() > *not_after {
                    return Err(AuthnError::ExpiredCertificate);
                }
                return Ok(Arc::clone(identity));
            }
            PeerCertificate::Unusable(why) => {
                return Err(AuthnError::UnusableCertificate(why.clone()));
            }
            PeerCertificate::Absent => {}
        }
        let subprotocol;
        let token = match bearer_token(headers)? {
            Some(token) => Some(token),
            None => {
                subprotocol = subprotocol_token(headers)?;
                subprotocol.as_deref()
            }
        };
        match token {
            Some(token) => match self
                .tokens
                .review(token)
                .await
                .map_err(AuthnError::Review)?
            {
                TokenOutcome::Authenticated(identity) => Ok(identity),
                TokenOutcome::Rejected | TokenOutcome::Failed => Err(AuthnError::InvalidToken),
            },
            None if self.anonymous => Ok(Arc::new(Identity::anonymous())),
            None => Err(AuthnError::NoCredentials),
        }
    }
}

/// Kubernetes' `wsstream.IsWebSocketRequest`: the first `Upgrade` header is `websocket` under Go's
/// `strings.EqualFold` (Unicode simple folding: `ſ` is an `s` and the Kelvin sign a `k`), and the
/// first `Connection` header, lowercased, matches `(^|.*,\s*)upgrade($|\s*,)`: `upgrade` as the
/// first element of its list, or after a comma and spaces, and followed by the end or spaces and a
/// comma. Any other request's subprotocols are no credential, as there.
fn is_websocket_request(headers: &HeaderMap) -> bool {
    let first = |name| {
        headers
            .get(name)
            .map(|value: &http::HeaderValue| String::from_utf8_lossy(value.as_bytes()))
    };
    let websocket = first(http::header::UPGRADE).is_some_and(|upgrade| {
        let mut letters = upgrade.chars();
        "websocket".chars().all(|want| {
            letters.next().is_some_and(|got| {
                got.to_ascii_lowercase() == want
                    || (want == 's' && got == '\u{17f}')
                    || (want == 'k' && got == '\u{212a}')
            })
        }) && letters.next().is_none()
    });
    // Go's `\s`: space, tab, newline, form feed, carriage return.
    let space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r');
    let upgrade = first(http::header::CONNECTION).is_some_and(|connection| {
        let connection = connection.to_lowercase();
        let elements: Vec<&str> = connection.split(',').collect();
        elements.iter().enumerate().any(|(at, element)| {
            let element = match at {
                0 => element,
                _ => element.trim_start_matches(space),
            };
            element
                .strip_prefix("upgrade")
                .is_some_and(|rest| match at + 1 == elements.len() {
                    true => rest.is_empty(),
                    false => rest.trim_start_matches(space).is_empty(),
                })
        })
    });
    websocket && upgrade
}

/// Go's `base64.RawURLEncoding`: URL alphabet, no padding, trailing bits not checked.
const RAW_URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// The bearer token of a WebSocket request without an `Authorization` header, as Kubernetes'
/// WebSocket protocol authenticator reads it (after the bearer token in the kubelet's chain), for
/// browsers, which cannot set headers: on a WebSocket request ([`is_websocket_request`]), the one
/// subprotocol
/// `base64url.bearer.authorization.k8s.io.<token, unpadded base64url>` among the comma-separated
/// values of every `Sec-WebSocket-Protocol` header, beside at least one other. Two of them, one
/// that does not decode to UTF-8, or one alone is an invalid token (401), as there; an empty one
/// is no token. On any other request the subprotocol is no credential, as there. Either way it
/// never reaches the kubelet (`forward`).
fn subprotocol_token(headers: &HeaderMap) -> Result<Option<String>, AuthnError> {
    if !is_websocket_request(headers) {
        return Ok(None);
    }
    let mut token = None;
    let mut others = 0;
    for value in headers.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        for protocol in String::from_utf8_lossy(value.as_bytes()).split(',') {
            let Some(encoded) = protocol.trim().strip_prefix(BEARER_SUBPROTOCOL) else {
                others += 1;
                continue;
            };
            if token.is_some() {
                return Err(AuthnError::InvalidToken);
            }
            let decoded = RAW_URL
                .decode(encoded)
                .map_err(|_| AuthnError::InvalidToken)?;
            token = Some(String::from_utf8(decoded).map_err(|_| AuthnError::InvalidToken)?);
        }
    }
    match token.filter(|token| !token.is_empty()) {
        Some(_) if others == 0 => Err(AuthnError::InvalidToken),
        token => Ok(token),
    }
}

/// The bearer token of a request, as Kubernetes' bearertoken authenticator reads it: the first
/// `Authorization` header, trimmed, split at single spaces into at most three parts; the scheme
/// `Bearer` in any case, then a non-empty token (a third part is ignored). Where Kubernetes would
/// find no token (another scheme, two spaces, a tab) the guard answers 401.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthnError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthnError::MalformedAuthorization)?
        .trim_ascii();
    let mut parts = value.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() =>
        {
            Ok(Some(token))
        }
        _ => Err(AuthnError::MalformedAuthorization),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn bearer_tokens_are_read_like_kubernetes() {
        assert_eq!(bearer_token(&HeaderMap::new()).unwrap(), None);
        assert_eq!(bearer_token(&headers("Bearer abc")).unwrap(), Some("abc"));
        assert_eq!(bearer_token(&headers(" bearer abc ")).unwrap(), Some("abc"));
        assert_eq!(
            bearer_token(&headers("Bearer a b")).unwrap(),
            Some("a"),
            "a third part is ignored"
        );
        for bad in ["Basic abc", "Bearer", "Bearer  abc", "Bearer\tabc", ""] {
            assert!(bearer_token(&headers(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_subprotocol_token_is_read_from_websocket_requests_only() {
        let request = |connection: &str, upgrade: &str, protocols: &[&str]| {
            let mut headers = HeaderMap::new();
            for (name, value) in [("connection", connection), ("upgrade", upgrade)] {
                if !value.is_empty() {
                    headers.insert(name, value.parse().unwrap());
                }
            }
            for protocol in protocols {
                headers.append("sec-websocket-protocol", protocol.parse().unwrap());
            }
            subprotocol_token(&headers)
        };
        // "tok" in unpadded base64url; and "to" with its spare bits set, which Go accepts.
        let token = "base64url.bearer.authorization.k8s.io.dG9r";
        let loose = "base64url.bearer.authorization.k8s.io.dG9";
        let found = |r: Result<Option<String>, AuthnError>| r.unwrap();
        assert_eq!(
            found(request("Upgrade", "websocket", &[token, "v5"])).as_deref(),
            Some("tok")
        );
        assert_eq!(
            found(request("keep-alive, UPGRADE", "WebSocket", &["v5", token])).as_deref(),
            Some("tok")
        );
        assert_eq!(
            found(request(
                "upgrade",
                "websocket",
                &[&format!(" {token} , v5")]
            ))
            .as_deref(),
            Some("tok")
        );
        assert_eq!(
            found(request("upgrade", "websocket", &[loose, "v5"])).as_deref(),
            Some("to")
        );
        let folded = request(
            "keep-alive,\tupgrade , close",
            "web\u{17f}oc\u{212a}et",
            &[token, "v5"],
        );
        assert_eq!(found(folded).as_deref(), Some("tok"), "Go's EqualFold");
        // No WebSocket request, no token; an empty one is none either.
        assert_eq!(found(request("", "websocket", &[token, "v5"])), None);
        for connection in [
            "x-upgrade",
            "upgrades",
            "keep-alive upgrade",
            " upgrade",
            "upgrade ",
        ] {
            let request = request(connection, "websocket", &[token, "v5"]);
            assert_eq!(found(request), None, "{connection:?}");
        }
        let mut second = HeaderMap::new();
        second.append("connection", "keep-alive".parse().unwrap());
        second.append("connection", "upgrade".parse().unwrap());
        second.insert("upgrade", "websocket".parse().unwrap());
        second.insert(
            "sec-websocket-protocol",
            format!("{token}, v5").parse().unwrap(),
        );
        assert_eq!(
            found(subprotocol_token(&second)),
            None,
            "the first Connection header only"
        );
        assert_eq!(found(request("upgrade", "SPDY/3.1", &[token, "v5"])), None);
        assert_eq!(
            found(request("upgrade", "websocket, h2c", &[token, "v5"])),
            None
        );
        assert_eq!(
            found(request(
                "upgrade",
                "websocket",
                &["base64url.bearer.authorization.k8s.io.", "v5"]
            )),
            None
        );
        for bad in [
            &[token][..],
            &[token, token, "v5"],
            &["base64url.bearer.authorization.k8s.io.dG9r=", "v5"],
            &["base64url.bearer.authorization.k8s.io.dG9r+", "v5"],
            &["base64url.bearer.authorization.k8s.io.__8", "v5"],
        ] {
            assert!(
                matches!(
                    request("upgrade", "websocket", bad),
                    Err(AuthnError::InvalidToken)
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_service_accounts_tokens_do_not_share_a_hash() {
        let token = |credential: &str| {
            let extra = BTreeMap::from([(
                "authentication.kubernetes.io/credential-id".to_owned(),
                vec![format!("JTI={credential}")],
            )]);
            Identity::new(
                "system:serviceaccount:a:default",
                "u",
                ["g".to_owned()],
                extra,
            )
        };
        // One state, as a cache's table has.
        let state = RandomState::new();
        let hash = |identity: &Identity| state.hash_one(identity);
        let hashes: std::collections::HashSet<u64> =
            (0..1000).map(|n| hash(&token(&n.to_string()))).collect();
        assert_eq!(hashes.len(), 1000, "colliding hashes");
        assert_eq!(token("1"), token("1"));
        assert_eq!(hash(&token("1")), hash(&token("1")));
        assert_ne!(
            hash(&Identity::new("a", "", ["g".to_owned()], BTreeMap::new())),
            hash(&Identity::new("a", "", ["h".to_owned()], BTreeMap::new())),
            "groups count"
        );
    }

    #[test]
    fn authenticated_group_is_added_once() {
        let identity = Identity::new("a", "", ["g".to_owned()], BTreeMap::new());
        let identity = identity.authenticated().authenticated();
        assert_eq!(identity.groups[..], ["g", AUTHENTICATED_GROUP]);
        // As Kubernetes' AuthenticatedGroupAdder: never to system:anonymous or to a caller that
        // already claims system:unauthenticated (a certificate's O, a token file's group).
        for (name, group) in [("system:anonymous", "g"), ("a", UNAUTHENTICATED_GROUP)] {
            let identity = Identity::new(name, "", [group.to_owned()], BTreeMap::new());
            assert_eq!(identity.authenticated().groups[..], [group], "{name}");
        }
        assert!(
            !Identity::anonymous()
                .groups
                .iter()
                .any(|g| g == AUTHENTICATED_GROUP)
        );
        // Only the caller without credentials is anonymous; a token of that name is not.
        assert!(Identity::anonymous().is_anonymous());
        let named = Identity::new("system:anonymous", "", [], BTreeMap::new()).authenticated();
        assert!(!named.is_anonymous());
        assert!(named.groups.is_empty(), "named so, it gets no group either");
    }
}
