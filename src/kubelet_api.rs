//! Request classification: what a request to the kubelet asks for, in the kubelet's own terms.
//!
//! Owns the *classify* step: method, request-target and upgrade headers become a
//! [`KubeletRequest`] (the verb, and the `nodes/<subresource>` checks to try in order), or a
//! [`Rejection`] before any review is made or any byte is forwarded. Follows
//! `docs/kubelet-api.md` section 2 (verbs, upgrades), section 3 (subresources in check order,
//! with the `isSubpath` of the kubelet's `pkg/kubelet/server/auth.go`) and section 4 (classify
//! and forward the same bytes), including where that spec is stricter than the kubelet.
//!
//! It must not do I/O, hold state, know status codes beyond [`Rejection::is_method`], or
//! allocate for an accepted request. It never rewrites: no percent-decoding, case change, slash
//! stripping or dot-segment removal. It *refuses* what would need any of that, so the caller must
//! forward `uri.path_and_query()` verbatim: those are the bytes that were classified.
//!
//! The `http` crate's [`Uri`] parser runs first: it silently drops a `#fragment` (`/pods#x`
//! arrives as `/pods`) and refuses control bytes, space and DEL, but accepts `%`, `\` and
//! non-ASCII UTF-8. Every byte rule is enforced here again, so no rule depends on that parser.
//! The one rule this cannot enforce is docs/kubelet-api.md's 400 for `#`: the fragment is gone before
//! classification, so `/metrics#/../exec` is authorized and forwarded as `/metrics` (both readings
//! are the same bytes, which is what the rule protects; `tests/path_confusion.rs` pins it).
//! On HTTP/2 hyper builds the `Uri` from `:scheme`, `:authority` and `:path`: only the path is
//! checked there.

pub mod pod_scope;
pub mod query;

use std::fmt;

use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, UPGRADE};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Uri, Version};

/// Kubelet authorization verb (docs/kubelet-api.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// `get`: a GET that is neither an upgrade nor a streaming endpoint.
    Get,
    /// `create`: a POST, any upgrade, or any request to `exec`, `attach`, `portForward` or `run`.
    Create,
    /// `update`: a PUT.
    Update,
    /// `patch`: a PATCH.
    Patch,
    /// `delete`: a DELETE.
    Delete,
}

/// A `nodes/<subresource>` the kubelet authorizes against (docs/kubelet-api.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subresource {
    /// `nodes/pods`: `/pods` and `/runningpods/`.
    Pods,
    /// `nodes/healthz`: `/healthz`.
    Healthz,
    /// `nodes/configz`: `/configz` and `/flagz`.
    Configz,
    /// `nodes/stats`: `/stats/`.
    Stats,
    /// `nodes/metrics`: `/metrics` and everything below it.
    Metrics,
    /// `nodes/log`: `/logs/` (node log files, not container logs).
    Log,
    /// `nodes/checkpoint`: `/checkpoint/`.
    Checkpoint,
    /// `nodes/statusz`: `/statusz`.
    Statusz,
    /// `nodes/proxy`: everything else, and the fallback of the fine-grained paths.
    Proxy,
}

/// Which protocol an upgrade asked for (for audit and metric labels; bounded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UpgradeProtocol {
    /// `Upgrade: websocket` (any case).
    WebSocket,
    /// `Upgrade: SPDY/<version>` (any case).
    Spdy,
    /// Any other protocol, an empty `Upgrade`, or `Connection: upgrade` without `Upgrade`.
    Other,
}

/// Options of the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Whether the fine-grained paths (`/pods`, `/healthz`, `/configz`, `/runningpods/`) are also
    /// allowed through `nodes/proxy`, as the kubelet does. `false` is the spec's strict mode.
    pub proxy_fallback: bool,
}

/// A request the guard may authorize; exists only for a canonical request-target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeletRequest {
    verb: Verb,
    checks: Checks,
    upgrade: Option<UpgradeProtocol>,
    streaming: bool,
}

/// Which part of the request-target a [`Rejection::ForbiddenByte`] was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TargetPart {
    /// The path, before any `?`.
    Path,
    /// The query, after the first `?`.
    Query,
}

/// Why a request was refused before authorization: nothing is reviewed or forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The request-target is `*` (asterisk-form, RFC 9112 section 3.2.4).
    AsteriskForm,
    /// An HTTP/1 request-target in absolute-form, `http://host/path` (RFC 9112 section 3.2.2).
    AbsoluteForm,
    /// An HTTP/1 request-target in authority-form, `host:port` (RFC 9112 section 3.2.3).
    AuthorityForm,
    /// The path is empty or does not start with `/`.
    PathNotAbsolute,
    /// The path contains `%`: the kubelet would decode it, so it could route elsewhere.
    PercentInPath,
    /// The path or query contains a byte never accepted there: `\`, `#`, a control byte, space,
    /// DEL or a non-ASCII byte (and `%`, in the path, is [`Rejection::PercentInPath`]).
    ForbiddenByte {
        /// Where the byte is.
        part: TargetPart,
        /// The first offending byte.
        byte: u8,
    },
    /// The path contains an empty segment (`//`).
    EmptySegment,
    /// The path contains a `.` or `..` segment.
    DotSegment,
    /// A `POST`, `PUT` or `PATCH` to `exec`, `attach`, `portForward` or `run` with a form body:
    /// the kubelet reads its parameters (`cmd`, `input`, `tty`, …) from such a body before the
    /// query, so the query the guard records would not be what runs.
    FormBody,
    /// The method is not exactly `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    MethodNotAllowed {
        /// The method as received.
        method: Method,
        /// The HTTP version, to explain an HTTP/2 extended CONNECT.
        version: Version,
    },
}

impl Verb {
    /// The verb as sent in a SubjectAccessReview (`get`, `create`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
        }
    }
}

impl Subresource {
    /// The subresource as sent in a SubjectAccessReview (`pods`, `log`, `proxy`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::Healthz => "healthz",
            Self::Configz => "configz",
            Self::Stats => "stats",
            Self::Metrics => "metrics",
            Self::Log => "log",
            Self::Checkpoint => "checkpoint",
            Self::Statusz => "statusz",
            Self::Proxy => "proxy",
        }
    }
}

impl UpgradeProtocol {
    /// A bounded label: `websocket`, `spdy` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Spdy => "spdy",
            Self::Other => "other",
        }
    }
}

/// `Display` is `as_str`, for the label and review enums.
macro_rules! display_as_str {
    ($($name:ty),+) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

display_as_str!(Verb, Subresource, UpgradeProtocol, TargetPart);

impl Default for Options {
    /// The kubelet's behaviour: strict mode is off, fine-grained paths fall back to `proxy`.
    fn default() -> Self {
        Self {
            proxy_fallback: true,
        }
    }
}

impl KubeletRequest {
    /// The verb every check is made with.
    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The subresources to check, in order (one or two; the first allow wins). When there are
    /// two, the last is [`Subresource::Proxy`].
    pub fn checks(&self) -> &[Subresource] {
        match &self.checks {
            Checks::One(one) => one,
            Checks::Two(two) => two,
        }
    }

    /// The protocol asked for, when the request asks for an upgrade.
    pub fn upgrade(&self) -> Option<UpgradeProtocol> {
        self.upgrade
    }

    /// Whether the first path segment is `exec`, `attach`, `portForward` or `run`.
    pub fn is_streaming_endpoint(&self) -> bool {
        self.streaming
    }
}

impl TargetPart {
    /// `path` or `query`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
        }
    }
}

impl Rejection {
    /// Whether the method was refused (405); otherwise the request-target was (400).
    pub fn is_method(&self) -> bool {
        matches!(self, Self::MethodNotAllowed { .. })
    }

    /// A bounded label for metrics and audit (`percent_in_path`, `method_not_allowed`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Self::AsteriskForm => "asterisk_form",
            Self::AbsoluteForm => "absolute_form",
            Self::AuthorityForm => "authority_form",
            Self::PathNotAbsolute => "path_not_absolute",
            Self::PercentInPath => "percent_in_path",
            Self::ForbiddenByte { .. } => "forbidden_byte",
            Self::EmptySegment => "empty_segment",
            Self::DotSegment => "dot_segment",
            Self::FormBody => "form_body",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ORIGIN_FORM: &str = "send the path only (origin-form)";
        match self {
            Self::AsteriskForm => write!(f, "request-target `*` refused: {ORIGIN_FORM}"),
            Self::AbsoluteForm => write!(f, "absolute-form target refused: {ORIGIN_FORM}"),
            Self::AuthorityForm => write!(f, "authority-form target refused: {ORIGIN_FORM}"),
            Self::PathNotAbsolute => f.write_str("request path does not start with '/'"),
            Self::PercentInPath => f.write_str(
                "request path contains '%': percent-escapes are refused in the path \
                 (the query may use them)",
            ),
            Self::ForbiddenByte { part, byte } => match *byte {
                b'\\' => write!(f, "request {part} contains a backslash"),
                b'#' => write!(f, "request {part} contains '#'"),
                b' ' => write!(f, "request {part} contains a space"),
                0x80.. => write!(f, "request {part} contains non-ASCII byte 0x{byte:02x}"),
                _ => write!(f, "request {part} contains control byte 0x{byte:02x}"),
            },
            Self::EmptySegment => f.write_str("request path contains an empty segment ('//')"),
            Self::DotSegment => f.write_str("request path contains a '.' or '..' segment"),
            Self::FormBody => f.write_str(
                "a form body is refused on exec, attach, portForward and run: the kubelet would \
                 read its parameters before the query's; send them in the query",
            ),
            Self::MethodNotAllowed { method, version }
                if *method == Method::CONNECT && *version == Version::HTTP_2 =>
            {
                f.write_str(
                    "method CONNECT is not allowed: extended CONNECT (an upgrade over HTTP/2) \
                     is not supported; upgrade over HTTP/1.1",
                )
            }
            Self::MethodNotAllowed { method, .. } => {
                write!(
                    f,
                    "method {method} is not allowed: use GET, POST, PUT, PATCH or DELETE"
                )
            }
        }
    }
}

impl std::error::Error for Rejection {}

/// Classifies one request: the verb and the checks to authorize it with, or why it is refused.
///
/// Request-target problems are decided before method problems, so a bad target is a 400 even
/// with a bad method. `version` decides which target forms are possible: on HTTP/2 the `Uri`
/// carries the scheme and authority from the pseudo-headers, and only its path is checked.
pub fn classify(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    options: Options,
) -> Result<KubeletRequest, Rejection> {
    let path = check_target(uri, version)?;
    let Some(method_verb) = verb_of(method) else {
        return Err(Rejection::MethodNotAllowed {
            method: method.clone(),
            version,
        });
    };
    let upgrade = upgrade_of(headers);
    let streaming = is_streaming_path(path);
    if streaming && has_form_body(method, headers) {
        return Err(Rejection::FormBody);
    }
    // The kubelet would take a GET upgrade as `get`; the spec requires `create` (section 2).
    let verb = if upgrade.is_some() || streaming {
        Verb::Create
    } else {
        method_verb
    };
    Ok(KubeletRequest {
        verb,
        checks: checks_of(path, options),
        upgrade,
        streaming,
    })
}

/// The checks of one request: the step-1 entry, if any, then the step-2 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checks {
    One([Subresource; 1]),
    Two([Subresource; 2]),
}

/// Step 1 of section 3, fine-grained paths; the first match adds one check.
/// The prefix of a bearer token sent as a WebSocket subprotocol
/// (`base64url.bearer.authorization.k8s.io.<token>`, Kubernetes' WebSocket protocol
/// authenticator): `authn` reads it, `forward` never passes it on.
pub const BEARER_SUBPROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

const FINE_GRAINED: [(&str, Subresource); 4] = [
    ("/pods", Subresource::Pods),
    ("/healthz", Subresource::Healthz),
    ("/configz", Subresource::Configz),
    ("/runningpods/", Subresource::Pods),
];

/// Step 2 of section 3; the first match adds one check, and no match adds `proxy`.
const COARSE: [(&str, Subresource); 6] = [
    ("/stats/", Subresource::Stats),
    ("/metrics", Subresource::Metrics),
    ("/logs/", Subresource::Log),
    ("/checkpoint/", Subresource::Checkpoint),
    ("/statusz", Subresource::Statusz),
    ("/flagz", Subresource::Configz),
];

/// First path segments that run or reach into a container, whatever the method (section 2).
const STREAMING: [&str; 4] = ["exec", "attach", "portForward", "run"];

/// Checks the request-target form and bytes (section 4); returns the path to classify, which is
/// the start of `uri.path_and_query()`, the bytes to forward.
fn check_target(uri: &Uri, version: Version) -> Result<&str, Rejection> {
    if version != Version::HTTP_2 {
        if uri.scheme().is_some() {
            return Err(Rejection::AbsoluteForm);
        }
        if uri.authority().is_some() {
            return Err(Rejection::AuthorityForm);
        }
    }
    // The raw bytes, as they will be forwarded: `Uri::path` shows `/` for a query-only target.
    let target = uri.path_and_query().map_or("", PathAndQuery::as_str);
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path == "*" {
        return Err(Rejection::AsteriskForm);
    }
    check_path(path)?;
    if let Some(query) = query {
        check_query(query)?;
    }
    Ok(path)
}

/// Accepts only a canonical path: `/`-rooted, visible ASCII without `%`, `\` or `#`, no empty
/// segment except one trailing slash, no dot segment.
fn check_path(path: &str) -> Result<(), Rejection> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Rejection::PathNotAbsolute);
    };
    for &byte in path.as_bytes() {
        match byte {
            b'%' => return Err(Rejection::PercentInPath),
            b'\\' | b'#' => return Err(forbidden(TargetPart::Path, byte)),
            _ if !byte.is_ascii_graphic() => return Err(forbidden(TargetPart::Path, byte)),
            _ => {}
        }
    }
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // An empty last segment is a trailing slash (`/logs/`), which the kubelet routes.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(Rejection::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(Rejection::DotSegment);
        }
    }
    Ok(())
}

/// The query is forwarded untouched; it only has to be visible ASCII without `#`.
fn check_query(query: &str) -> Result<(), Rejection> {
    match query
        .bytes()
        .find(|&byte| byte == b'#' || !byte.is_ascii_graphic())
    {
        Some(byte) => Err(forbidden(TargetPart::Query, byte)),
        None => Ok(()),
    }
}

fn forbidden(part: TargetPart, byte: u8) -> Rejection {
    Rejection::ForbiddenByte { part, byte }
}

/// The verb of an allowed method; methods are case-sensitive, so `get` is refused.
fn verb_of(method: &Method) -> Option<Verb> {
    match method.as_str() {
        "GET" => Some(Verb::Get),
        "POST" => Some(Verb::Create),
        "PUT" => Some(Verb::Update),
        "PATCH" => Some(Verb::Patch),
        "DELETE" => Some(Verb::Delete),
        _ => None,
    }
}

/// Whether Go's `Request.FormValue`, which the kubelet's streaming handlers read their parameters
/// with, would read the body: a `POST`, `PUT` or `PATCH` whose `Content-Type` (any of them, case
/// and parameters aside) is `application/x-www-form-urlencoded` or `multipart/form-data`. Go
/// trims and lowercases the media type by Unicode rules, so a value that is not ASCII counts as a
/// form too rather than be compared by other rules.
fn has_form_body(method: &Method, headers: &HeaderMap) -> bool {
    let form = |value: &HeaderValue| {
        if !value.as_bytes().is_ascii() {
            return true;
        }
        let media = value
            .as_bytes()
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default();
        let media = media.trim_ascii();
        media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
            || media.eq_ignore_ascii_case(b"multipart/form-data")
    };
    [Method::POST, Method::PUT, Method::PATCH].contains(method)
        && headers.get_all(CONTENT_TYPE).iter().any(form)
}

/// An upgrade is any `Upgrade` header, or a `Connection` header with the token `upgrade`.
fn upgrade_of(headers: &HeaderMap) -> Option<UpgradeProtocol> {
    if let Some(upgrade) = headers.get(UPGRADE) {
        return Some(protocol_of(upgrade.as_bytes()));
    }
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|value| has_token(value.as_bytes(), b"upgrade"))
        .then_some(UpgradeProtocol::Other)
}

/// The protocol named first in an `Upgrade` value; a label only, never a decision.
fn protocol_of(value: &[u8]) -> UpgradeProtocol {
    let first = value.split(|&b| b == b',').next().unwrap_or_default();
    let first = first.trim_ascii();
    if first.eq_ignore_ascii_case(b"websocket") {
        UpgradeProtocol::WebSocket
    } else if first
        .get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"spdy/"))
    {
        UpgradeProtocol::Spdy
    } else {
        UpgradeProtocol::Other
    }
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive, OWS trimmed).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

fn is_streaming_path(path: &str) -> bool {
    let first = path
        .strip_prefix('/')
        .and_then(|rest| rest.split('/').next());
    first.is_some_and(|segment| STREAMING.contains(&segment))
}

/// Section 3: step 1's entry (if any), then step 2's; strict mode drops step 1's `proxy`.
fn checks_of(path: &str, options: Options) -> Checks {
    let first_match = |table: &[(&str, Subresource)]| {
        table
            .iter()
            .find(|(pattern, _)| is_subpath(path, pattern))
            .map(|&(_, subresource)| subresource)
    };
    let step2 = first_match(&COARSE).unwrap_or(Subresource::Proxy);
    match first_match(&FINE_GRAINED) {
        None => Checks::One([step2]),
        Some(step1) if step2 == Subresource::Proxy && !options.proxy_fallback => {
            Checks::One([step1])
        }
        Some(step1) => Checks::Two([step1, step2]),
    }
}

/// The kubelet's `isSubpath`: drop one trailing `/` from the pattern; the path matches when it
/// equals the pattern or starts with it followed by `/`.
fn is_subpath(path: &str, pattern: &str) -> bool {
    let pattern = pattern.strip_suffix('/').unwrap_or(pattern);
    path.strip_prefix(pattern)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, HeaderValue};
    use http::uri::{Authority, Parts, Scheme};
    use proptest::prelude::*;

    use super::*;

    use Subresource::{Checkpoint, Configz, Healthz, Log, Metrics, Pods, Proxy, Stats, Statusz};

    const STRICT: Options = Options {
        proxy_fallback: false,
    };

    fn uri(target: &str) -> Uri {
        target.parse().expect("test target parses")
    }

    fn method(name: &str) -> Method {
        Method::from_bytes(name.as_bytes()).expect("test method parses")
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_bytes(value.as_bytes()).expect("test header value"),
            );
        }
        map
    }

    /// An HTTP/1.1 request without headers, default options.
    fn h1(method_name: &str, target: &str) -> Result<KubeletRequest, Rejection> {
        classify(
            &method(method_name),
            &uri(target),
            Version::HTTP_11,
            &HeaderMap::new(),
            Options::default(),
        )
    }

    fn with_headers(
        method_name: &str,
        target: &str,
        pairs: &[(&str, &str)],
    ) -> Result<KubeletRequest, Rejection> {
        classify(
            &method(method_name),
            &uri(target),
            Version::HTTP_11,
            &headers(pairs),
            Options::default(),
        )
    }

    fn checks(target: &str, options: Options) -> Vec<Subresource> {
        let request = classify(
            &Method::GET,
            &uri(target),
            Version::HTTP_11,
            &HeaderMap::new(),
            options,
        )
        .expect("accepted");
        request.checks().to_vec()
    }

    /// An HTTP/2 request as hyper builds it: scheme and authority from the pseudo-headers.
    fn h2_uri(path_and_query: &str) -> Uri {
        let mut parts = Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(Authority::from_static("node-1:10250"));
        parts.path_and_query = Some(path_and_query.parse().expect("test path parses"));
        Uri::from_parts(parts).expect("test uri builds")
    }

    fn h2(method_name: &str, path_and_query: &str) -> Result<KubeletRequest, Rejection> {
        classify(
            &method(method_name),
            &h2_uri(path_and_query),
            Version::HTTP_2,
            &HeaderMap::new(),
            Options::default(),
        )
    }

    fn rejection(result: Result<KubeletRequest, Rejection>) -> Rejection {
        result.expect_err("rejected")
    }

    // ---- section 2: verbs ----

    #[test]
    fn verb_follows_method() {
        for (name, verb) in [
            ("GET", Verb::Get),
            ("POST", Verb::Create),
            ("PUT", Verb::Update),
            ("PATCH", Verb::Patch),
            ("DELETE", Verb::Delete),
        ] {
            let request = h1(name, "/pods").expect("accepted");
            assert_eq!(request.verb(), verb, "{name}");
            assert_eq!(request.upgrade(), None);
            assert!(!request.is_streaming_endpoint());
        }
    }

    #[test]
    fn verb_names_are_the_kubelets() {
        let all = [
            Verb::Get,
            Verb::Create,
            Verb::Update,
            Verb::Patch,
            Verb::Delete,
        ];
        let names: Vec<_> = all.iter().map(|verb| verb.as_str()).collect();
        assert_eq!(names, ["get", "create", "update", "patch", "delete"]);
        assert_eq!(Verb::Create.to_string(), "create");
    }

    #[test]
    fn other_methods_are_405() {
        for name in [
            "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "post", "Get", "PROPFIND", "BREW",
        ] {
            let rejected = rejection(h1(name, "/pods"));
            assert!(rejected.is_method(), "{name}");
            assert_eq!(rejected.label(), "method_not_allowed");
            assert_eq!(
                rejected,
                Rejection::MethodNotAllowed {
                    method: method(name),
                    version: Version::HTTP_11
                }
            );
            let message = rejected.to_string();
            assert!(message.contains(name), "{message}");
            assert!(!message.contains("extended CONNECT"), "{message}");
        }
    }

    #[test]
    fn http2_extended_connect_is_405_and_says_why() {
        let mut map = HeaderMap::new();
        map.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let rejected = rejection(classify(
            &Method::CONNECT,
            &h2_uri("/exec/ns/pod/ctr?command=sh"),
            Version::HTTP_2,
            &map,
            Options::default(),
        ));
        assert!(rejected.is_method());
        let message = rejected.to_string();
        assert!(message.contains("extended CONNECT"), "{message}");
        assert!(message.contains("HTTP/2"), "{message}");
        // A plain HTTP/2 CONNECT has no :path: a target problem first.
        let mut parts = Parts::default();
        parts.authority = Some(Authority::from_static("node-1:10250"));
        let no_path = Uri::from_parts(parts).expect("authority-only uri");
        let rejected = rejection(classify(
            &Method::CONNECT,
            &no_path,
            Version::HTTP_2,
            &HeaderMap::new(),
            Options::default(),
        ));
        assert_eq!(rejected, Rejection::PathNotAbsolute);
    }

    // ---- section 2: upgrades and streaming endpoints ----

    #[test]
    fn any_upgrade_header_is_create() {
        for (value, protocol) in [
            ("websocket", UpgradeProtocol::WebSocket),
            ("WebSocket", UpgradeProtocol::WebSocket),
            ("SPDY/3.1", UpgradeProtocol::Spdy),
            ("spdy/3.1", UpgradeProtocol::Spdy),
            ("SPDY/3.1, websocket", UpgradeProtocol::Spdy),
            (" websocket , h2c", UpgradeProtocol::WebSocket),
            ("h2c", UpgradeProtocol::Other),
            ("SPDY", UpgradeProtocol::Other),
            ("", UpgradeProtocol::Other),
        ] {
            for target in ["/exec/ns/pod/ctr", "/pods", "/metrics", "/anything"] {
                let request = with_headers("GET", target, &[("upgrade", value)]).expect("ok");
                assert_eq!(request.verb(), Verb::Create, "{value:?} {target}");
                assert_eq!(request.upgrade(), Some(protocol), "{value:?}");
            }
        }
    }

    #[test]
    fn upgrade_with_any_method_is_create() {
        for name in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let request = with_headers(
                name,
                "/stats/summary",
                &[("connection", "Upgrade"), ("upgrade", "SPDY/3.1")],
            )
            .expect("accepted");
            assert_eq!(request.verb(), Verb::Create, "{name}");
            assert_eq!(request.checks(), [Stats]);
        }
    }

    #[test]
    fn connection_upgrade_token_is_an_upgrade() {
        for values in [
            &["upgrade"][..],
            &["Upgrade"],
            &["UPGRADE"],
            &["keep-alive, Upgrade"],
            &["keep-alive,upgrade"],
            &["  upgrade\t, close"],
            &["keep-alive", "Upgrade"],
            &["close", "te, upgrade"],
        ] {
            let pairs: Vec<_> = values.iter().map(|value| ("connection", *value)).collect();
            let request = with_headers("GET", "/containerLogs/ns/pod/ctr", &pairs).expect("ok");
            assert_eq!(request.verb(), Verb::Create, "{values:?}");
            assert_eq!(
                request.upgrade(),
                Some(UpgradeProtocol::Other),
                "{values:?}"
            );
        }
    }

    #[test]
    fn connection_without_the_upgrade_token_is_not_an_upgrade() {
        for values in [
            &["keep-alive"][..],
            &["close"],
            &["upgrade-insecure"],
            &["keep-alive upgrade"],
            &["upgraded, keep-alive"],
            &["keep-alive", "close"],
            &[""],
        ] {
            let pairs: Vec<_> = values.iter().map(|value| ("connection", *value)).collect();
            let request = with_headers("GET", "/containerLogs/ns/pod/ctr", &pairs).expect("ok");
            assert_eq!(request.verb(), Verb::Get, "{values:?}");
            assert_eq!(request.upgrade(), None, "{values:?}");
        }
        // Other headers that merely mention upgrades are not upgrades.
        let request = with_headers(
            "GET",
            "/pods",
            &[
                ("sec-websocket-protocol", "v5.channel.k8s.io"),
                ("x-upgrade", "websocket"),
            ],
        )
        .expect("ok");
        assert_eq!(request.verb(), Verb::Get);
    }

    #[test]
    fn streaming_endpoints_are_create_whatever_the_method() {
        for target in [
            "/exec/ns/pod/ctr?command=ls",
            "/exec/ns/pod/uid/ctr",
            "/exec",
            "/exec/",
            "/attach/ns/pod/ctr",
            "/portForward/ns/pod",
            "/run/ns/pod/ctr?cmd=ls",
        ] {
            for name in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
                let request = h1(name, target).expect("accepted");
                assert_eq!(request.verb(), Verb::Create, "{name} {target}");
                assert!(request.is_streaming_endpoint(), "{target}");
                assert_eq!(request.upgrade(), None);
                assert_eq!(request.checks(), [Proxy], "{target}");
            }
        }
    }

    #[test]
    fn a_form_body_on_a_streaming_endpoint_is_refused() {
        for content_type in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            "multipart/form-data; boundary=x",
            "app\u{130}cation/x-www-form-urlencoded",
        ] {
            for (name, target) in [
                ("POST", "/run/ns/pod/ctr"),
                ("POST", "/exec/ns/pod/ctr?command=ls"),
                ("PUT", "/attach/ns/pod/ctr"),
                ("PATCH", "/portForward/ns/pod"),
            ] {
                let refused = with_headers(name, target, &[("content-type", content_type)]);
                assert_eq!(rejection(refused), Rejection::FormBody, "{name} {target}");
            }
        }
        // Go reads no form body from a GET or DELETE, nor one of another type; nor do other paths.
        for (name, target, content_type) in [
            (
                "GET",
                "/exec/ns/pod/ctr",
                "application/x-www-form-urlencoded",
            ),
            (
                "DELETE",
                "/run/ns/pod/ctr",
                "application/x-www-form-urlencoded",
            ),
            ("POST", "/run/ns/pod/ctr?cmd=ls", "application/octet-stream"),
            (
                "POST",
                "/run/ns/pod/ctr?cmd=ls",
                "multipart/mixed; boundary=x",
            ),
            (
                "POST",
                "/checkpoint/ns/pod/ctr",
                "application/x-www-form-urlencoded",
            ),
        ] {
            let accepted = with_headers(name, target, &[("content-type", content_type)]);
            assert!(accepted.is_ok(), "{name} {target} {content_type}");
        }
    }

    #[test]
    fn streaming_match_is_exact_and_case_sensitive() {
        for target in [
            "/portforward/ns/pod",
            "/Exec/ns/pod/ctr",
            "/EXEC",
            "/execx/ns/pod/ctr",
            "/runx",
            "/attach-x",
            "/pods/exec",
            "/debug/run",
            "/containerLogs/ns/pod/ctr",
            "/",
        ] {
            let request = h1("GET", target).expect("accepted");
            assert_eq!(request.verb(), Verb::Get, "{target}");
            assert!(!request.is_streaming_endpoint(), "{target}");
        }
    }

    // ---- section 3: subresources ----

    #[test]
    fn subresource_table() {
        let table: &[(&str, &[Subresource])] = &[
            ("/pods", &[Pods, Proxy]),
            ("/pods/", &[Pods, Proxy]),
            ("/pods/anything", &[Pods, Proxy]),
            ("/pods?x=1", &[Pods, Proxy]),
            ("/runningpods/", &[Pods, Proxy]),
            ("/runningpods", &[Pods, Proxy]),
            ("/runningpods/x", &[Pods, Proxy]),
            ("/healthz", &[Healthz, Proxy]),
            ("/healthz/ping", &[Healthz, Proxy]),
            ("/healthz/log", &[Healthz, Proxy]),
            ("/healthz/syncloop", &[Healthz, Proxy]),
            ("/configz", &[Configz, Proxy]),
            ("/configz/x", &[Configz, Proxy]),
            ("/stats", &[Stats]),
            ("/stats/", &[Stats]),
            ("/stats/summary?only_cpu_and_memory=true", &[Stats]),
            ("/metrics", &[Metrics]),
            ("/metrics/", &[Metrics]),
            ("/metrics/cadvisor", &[Metrics]),
            ("/metrics/resource", &[Metrics]),
            ("/metrics/probes", &[Metrics]),
            ("/metrics/slis", &[Metrics]),
            ("/logs", &[Log]),
            ("/logs/", &[Log]),
            ("/logs/kubelet.log", &[Log]),
            ("/logs/?query=kubelet", &[Log]),
            ("/checkpoint", &[Checkpoint]),
            ("/checkpoint/ns/pod/ctr", &[Checkpoint]),
            ("/statusz", &[Statusz]),
            ("/statusz/x", &[Statusz]),
            ("/flagz", &[Configz]),
            ("/flagz/x", &[Configz]),
            ("/exec/ns/pod/ctr", &[Proxy]),
            ("/attach/ns/pod/ctr", &[Proxy]),
            ("/portForward/ns/pod", &[Proxy]),
            ("/run/ns/pod/ctr", &[Proxy]),
            ("/containerLogs/a/b/c", &[Proxy]),
            ("/containerLogs/ns/pod/ctr?follow=true", &[Proxy]),
            ("/debug/pprof/heap", &[Proxy]),
            ("/debug/flags/v", &[Proxy]),
            ("/", &[Proxy]),
            ("/unknown", &[Proxy]),
        ];
        for &(target, expected) in table {
            assert_eq!(checks(target, Options::default()), expected, "{target}");
        }
    }

    #[test]
    fn subpath_needs_a_slash_boundary() {
        for target in [
            "/podsx",
            "/pods.json",
            "/runningpodsx",
            "/healthzx",
            "/configzx",
            "/statsx",
            "/stats.json",
            "/metricsx",
            "/logsx",
            "/logsx/kubelet.log",
            "/checkpointx",
            "/statuszx",
            "/flagzx",
            "/x/pods",
            "/x/stats/summary",
        ] {
            assert_eq!(checks(target, Options::default()), [Proxy], "{target}");
        }
    }

    #[test]
    fn subpath_is_case_sensitive() {
        for target in [
            "/Pods",
            "/RunningPods/",
            "/runningPods/",
            "/HEALTHZ",
            "/Stats/summary",
            "/Metrics",
            "/Logs/",
            "/Flagz",
        ] {
            assert_eq!(checks(target, Options::default()), [Proxy], "{target}");
        }
    }

    #[test]
    fn strict_mode_drops_the_proxy_fallback_of_step_1() {
        let table: &[(&str, &[Subresource])] = &[
            ("/pods", &[Pods]),
            ("/runningpods/", &[Pods]),
            ("/healthz/ping", &[Healthz]),
            ("/configz", &[Configz]),
            ("/stats/summary", &[Stats]),
            ("/metrics/cadvisor", &[Metrics]),
            ("/logs/", &[Log]),
            ("/flagz", &[Configz]),
            ("/exec/ns/pod/ctr", &[Proxy]),
            ("/containerLogs/ns/pod/ctr", &[Proxy]),
            ("/statsx", &[Proxy]),
        ];
        for &(target, expected) in table {
            assert_eq!(checks(target, STRICT), expected, "{target}");
        }
    }

    #[test]
    fn default_options_are_not_strict() {
        assert!(Options::default().proxy_fallback);
    }

    #[test]
    fn subresource_and_protocol_names() {
        let all = [
            Pods, Healthz, Configz, Stats, Metrics, Log, Checkpoint, Statusz, Proxy,
        ];
        let names: Vec<_> = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "pods",
                "healthz",
                "configz",
                "stats",
                "metrics",
                "log",
                "checkpoint",
                "statusz",
                "proxy"
            ]
        );
        assert_eq!(Proxy.to_string(), "proxy");
        let all = [
            UpgradeProtocol::WebSocket,
            UpgradeProtocol::Spdy,
            UpgradeProtocol::Other,
        ];
        let names: Vec<_> = all.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["websocket", "spdy", "other"]);
        assert_eq!(UpgradeProtocol::Spdy.to_string(), "spdy");
    }

    #[test]
    fn is_subpath_matches_the_kubelet() {
        assert!(is_subpath("/stats", "/stats/"));
        assert!(is_subpath("/stats/", "/stats/"));
        assert!(is_subpath("/stats/summary", "/stats/"));
        assert!(!is_subpath("/statsx", "/stats/"));
        assert!(!is_subpath("/stat", "/stats/"));
        assert!(is_subpath("/metrics", "/metrics"));
        assert!(!is_subpath("", "/metrics"));
    }

    // ---- section 4: request-targets ----

    #[test]
    fn encoded_dots_are_400_not_stats() {
        let rejected = rejection(h1("GET", "/stats/%2E%2E/exec/ns/pod/ctr"));
        assert_eq!(rejected, Rejection::PercentInPath);
        assert!(!rejected.is_method());
        for target in [
            "/stats/%2e%2e/exec",
            "/pods%2F..%2Fexec",
            "/%70ods",
            "/x%",
            "/x%zz",
        ] {
            assert_eq!(
                rejection(h1("GET", target)),
                Rejection::PercentInPath,
                "{target}"
            );
        }
    }

    #[test]
    fn percent_escapes_are_allowed_in_the_query() {
        let request = h1(
            "GET",
            "/exec/ns/pod/ctr?command=sh&command=-c&command=echo%20hi",
        )
        .expect("accepted");
        assert_eq!(request.checks(), [Proxy]);
        let request = h1("GET", "/logs/?query=%2E%2E%2Fetc").expect("accepted");
        assert_eq!(request.checks(), [Log]);
        assert!(h1("GET", "/pods?").is_ok());
        assert!(h1("GET", "/pods?a=b?c/d\\e").is_ok());
    }

    #[test]
    fn empty_segments_are_400() {
        for target in [
            "//",
            "//pods",
            "/pods//",
            "/pods//x",
            "/stats//summary",
            "/logs///",
        ] {
            assert_eq!(
                rejection(h1("GET", target)),
                Rejection::EmptySegment,
                "{target}"
            );
        }
        for target in ["/", "/logs/", "/stats/", "/runningpods/", "/pods/x/"] {
            assert!(h1("GET", target).is_ok(), "{target}");
        }
    }

    #[test]
    fn dot_segments_are_400() {
        for target in [
            "/.",
            "/..",
            "/./pods",
            "/../pods",
            "/pods/./x",
            "/pods/..",
            "/pods/../exec/ns/pod/ctr",
            "/stats/..",
            "/pods/.",
            "/pods/./",
            "/pods/../",
            "/logs/..?query=x",
        ] {
            assert_eq!(
                rejection(h1("GET", target)),
                Rejection::DotSegment,
                "{target}"
            );
        }
        for target in [
            "/pods/.hidden",
            "/pods/...",
            "/..x",
            "/x..",
            "/.well-known",
            "/a.b/c",
        ] {
            assert!(h1("GET", target).is_ok(), "{target}");
        }
    }

    #[test]
    fn backslash_and_non_ascii_are_400() {
        let cases = [
            ("/pods\\..\\exec", TargetPart::Path, b'\\'),
            ("/stats\\summary", TargetPart::Path, b'\\'),
            ("/pods/\u{e9}", TargetPart::Path, 0xc3),
            ("/pods?name=\u{e9}", TargetPart::Query, 0xc3),
        ];
        for (target, part, byte) in cases {
            let rejected = rejection(h1("GET", target));
            assert_eq!(
                rejected,
                Rejection::ForbiddenByte { part, byte },
                "{target}"
            );
            assert_eq!(rejected.label(), "forbidden_byte");
        }
    }

    #[test]
    fn the_http_crate_drops_fragments_and_refuses_control_bytes() {
        // `#` never reaches classify through the parser: the fragment is cut off.
        let request = h1("GET", "/pods#/../exec").expect("accepted");
        assert_eq!(request.checks(), [Pods, Proxy]);
        assert_eq!(uri("/pods?x=1#frag").query(), Some("x=1"));
        // Control bytes, space and DEL are refused by every constructor we could use.
        for raw in [
            &b"/pods\x00"[..],
            b"/pods\x01",
            b"/pods\x1f",
            b"/pods\x7f",
            b"/po ds",
            b"/pods?x=\x00",
            b"/pods?x=\x7f",
            b"/pods?a b",
        ] {
            assert!(Uri::from_maybe_shared(raw).is_err(), "{raw:?}");
            assert!(PathAndQuery::from_maybe_shared(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn path_bytes_are_checked_even_if_the_parser_let_them_through() {
        for (path, byte) in [
            ("/pods\0", 0),
            ("/pods\x01", 1),
            ("/pods\n", b'\n'),
            ("/pods\r", b'\r'),
            ("/pods\t", b'\t'),
            ("/po ds", b' '),
            ("/pods\x7f", 0x7f),
            ("/pods#x", b'#'),
            ("/pods\\", b'\\'),
            ("/\u{2215}pods", 0xe2),
        ] {
            let expected = Rejection::ForbiddenByte {
                part: TargetPart::Path,
                byte,
            };
            assert_eq!(check_path(path), Err(expected), "{path:?}");
        }
        assert_eq!(check_path(""), Err(Rejection::PathNotAbsolute));
        assert_eq!(check_path("pods"), Err(Rejection::PathNotAbsolute));
        assert_eq!(check_path("/a%"), Err(Rejection::PercentInPath));
        assert_eq!(check_path("/pods"), Ok(()));
    }

    #[test]
    fn query_bytes_are_checked_even_if_the_parser_let_them_through() {
        for (query, byte) in [
            ("a=\0", 0),
            ("a=\n", b'\n'),
            ("a=b c", b' '),
            ("a=\x7f", 0x7f),
            ("a=b#c", b'#'),
            ("a=\u{e9}", 0xc3),
        ] {
            let expected = Rejection::ForbiddenByte {
                part: TargetPart::Query,
                byte,
            };
            assert_eq!(check_query(query), Err(expected), "{query:?}");
        }
        assert_eq!(check_query("a=%2E%2E&b=\\/..//"), Ok(()));
        assert_eq!(check_query(""), Ok(()));
    }

    #[test]
    fn http1_targets_must_be_origin_form() {
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_3,
        ] {
            let classify_h1 = |target: &str| {
                classify(
                    &Method::GET,
                    &uri(target),
                    version,
                    &HeaderMap::new(),
                    Options::default(),
                )
            };
            for target in ["http://node-1:10250/pods", "https://node-1/stats/summary"] {
                assert_eq!(
                    classify_h1(target),
                    Err(Rejection::AbsoluteForm),
                    "{target}"
                );
            }
            assert_eq!(classify_h1("node-1:10250"), Err(Rejection::AuthorityForm));
            assert_eq!(classify_h1("*"), Err(Rejection::AsteriskForm));
            assert!(classify_h1("/pods").is_ok());
        }
    }

    #[test]
    fn a_query_only_target_is_400() {
        let mut parts = Parts::default();
        parts.path_and_query = Some(PathAndQuery::from_static("?x=1"));
        let query_only = Uri::from_parts(parts).expect("query-only uri");
        let rejected = rejection(classify(
            &Method::GET,
            &query_only,
            Version::HTTP_11,
            &HeaderMap::new(),
            Options::default(),
        ));
        assert_eq!(rejected, Rejection::PathNotAbsolute);
        // Over HTTP/2 too, where `Uri::path` would show `/` for it.
        let mut parts = Parts::default();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(Authority::from_static("node-1"));
        parts.path_and_query = Some(PathAndQuery::from_static("?x=1"));
        let query_only = Uri::from_parts(parts).expect("query-only uri");
        assert_eq!(query_only.path(), "/");
        let rejected = rejection(classify(
            &Method::GET,
            &query_only,
            Version::HTTP_2,
            &HeaderMap::new(),
            Options::default(),
        ));
        assert_eq!(rejected, Rejection::PathNotAbsolute);
    }

    #[test]
    fn http2_accepts_scheme_and_authority_and_checks_the_path() {
        let request = h2("GET", "/stats/summary?only_cpu_and_memory=true").expect("accepted");
        assert_eq!(request.checks(), [Stats]);
        assert_eq!(request.verb(), Verb::Get);
        assert_eq!(
            h2("GET", "/pods").expect("accepted").checks(),
            [Pods, Proxy]
        );
        assert_eq!(rejection(h2("GET", "*")), Rejection::AsteriskForm);
        assert_eq!(
            rejection(h2("GET", "/stats/%2E%2E/exec")),
            Rejection::PercentInPath
        );
        assert_eq!(rejection(h2("GET", "/a//b")), Rejection::EmptySegment);
        assert_eq!(rejection(h2("GET", "/a/../b")), Rejection::DotSegment);
        assert!(rejection(h2("HEAD", "/pods")).is_method());
    }

    #[test]
    fn target_problems_come_before_method_problems() {
        for (name, target, expected) in [
            ("OPTIONS", "*", Rejection::AsteriskForm),
            ("CONNECT", "node-1:10250", Rejection::AuthorityForm),
            ("get", "http://node-1/pods", Rejection::AbsoluteForm),
            ("BREW", "/a/../b", Rejection::DotSegment),
            ("HEAD", "/a%2e", Rejection::PercentInPath),
            ("TRACE", "//", Rejection::EmptySegment),
        ] {
            let rejected = rejection(h1(name, target));
            assert_eq!(rejected, expected, "{name} {target}");
            assert!(!rejected.is_method());
        }
    }

    #[test]
    fn every_rejection_has_a_one_line_message_and_a_distinct_label() {
        let all = [
            Rejection::AsteriskForm,
            Rejection::AbsoluteForm,
            Rejection::AuthorityForm,
            Rejection::PathNotAbsolute,
            Rejection::PercentInPath,
            forbidden(TargetPart::Path, b'\\'),
            forbidden(TargetPart::Path, b'#'),
            forbidden(TargetPart::Path, b' '),
            forbidden(TargetPart::Query, 0),
            forbidden(TargetPart::Query, 0xff),
            Rejection::EmptySegment,
            Rejection::DotSegment,
            Rejection::FormBody,
            Rejection::MethodNotAllowed {
                method: Method::HEAD,
                version: Version::HTTP_11,
            },
            Rejection::MethodNotAllowed {
                method: Method::CONNECT,
                version: Version::HTTP_2,
            },
        ];
        for rejected in &all {
            let message = rejected.to_string();
            assert!(!message.is_empty());
            assert!(!message.contains(['\n', '\r']), "{message:?}");
        }
        assert!(all[7].to_string().contains("space"));
        assert!(
            all[8]
                .to_string()
                .contains("query contains control byte 0x00")
        );
        assert!(all[9].to_string().contains("non-ASCII byte 0xff"));
        // Ten variants, ten labels: sorted first, so two variants sharing one cannot hide.
        let mut labels: Vec<_> = all.iter().map(Rejection::label).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), 10, "{labels:?}");
    }

    // ---- properties ----

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 512,
            // Never write regression files next to the source.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    const PREFIXES: &[&str] = &[
        "/pods",
        "/runningpods",
        "/healthz",
        "/configz",
        "/stats",
        "/metrics",
        "/logs",
        "/checkpoint",
        "/statusz",
        "/flagz",
        "/exec",
        "/attach",
        "/portForward",
        "/run",
        "/containerLogs",
        "/debug",
        "",
    ];

    /// Printable-ASCII paths, biased towards kubelet prefixes, dots, slashes and `%`.
    fn any_path() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            "[a-zA-Z0-9._~-]{1,6}",
            "[ -~]{1,6}",
        ];
        let segmented = (
            prop::sample::select(PREFIXES),
            prop::collection::vec(segment, 0..5),
        )
            .prop_map(|(prefix, segments)| {
                let mut path = prefix.to_owned();
                for segment in segments {
                    path.push('/');
                    path.push_str(&segment);
                }
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                }
            });
        prop_oneof![segmented, "/[ -~]{0,32}", "[ -~]{0,12}"]
    }

    fn any_method() -> impl Strategy<Value = Method> {
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ])
    }

    fn allowed_method() -> impl Strategy<Value = Method> {
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
    }

    fn any_options() -> impl Strategy<Value = Options> {
        any::<bool>().prop_map(|proxy_fallback| Options { proxy_fallback })
    }

    /// A kubelet-shaped path that classify accepts.
    fn canonical_path() -> impl Strategy<Value = String> {
        (
            prop::sample::select(PREFIXES),
            "(/[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,5}){0,3}/?",
        )
            .prop_map(|(prefix, rest)| {
                let path = format!("{prefix}{rest}");
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                }
            })
    }

    fn is_canonical(path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        path.bytes()
            .all(|b| b.is_ascii_graphic() && !b"%\\#".contains(&b))
            && !path.contains("//")
            && segments
                .iter()
                .enumerate()
                .all(|(i, s)| *s != "." && *s != ".." && (i == last || !s.is_empty()))
    }

    proptest! {
        #![proptest_config(config())]

        /// (a) Whatever is accepted is canonical: forwarding it unchanged is safe.
        #[test]
        fn accepted_paths_are_canonical(
            target in any_path(),
            method in any_method(),
            http2 in any::<bool>(),
            options in any_options(),
        ) {
            let parsed = if http2 {
                target.parse::<PathAndQuery>().ok().and_then(|pq| {
                    let mut parts = Parts::default();
                    parts.scheme = Some(Scheme::HTTPS);
                    parts.authority = Some(Authority::from_static("node-1"));
                    parts.path_and_query = Some(pq);
                    Uri::from_parts(parts).ok()
                })
            } else {
                target.parse::<Uri>().ok()
            };
            let Some(parsed) = parsed else { return Ok(()) };
            let version = if http2 { Version::HTTP_2 } else { Version::HTTP_11 };
            let result = classify(&method, &parsed, version, &HeaderMap::new(), options);
            // The bytes that would be forwarded, not `Uri::path`'s view of them.
            let raw = parsed.path_and_query().map_or("", PathAndQuery::as_str);
            let raw_path = raw.split('?').next().unwrap_or_default();
            if let Ok(request) = result {
                let path = raw_path;
                prop_assert!(path.starts_with('/'), "{path:?}");
                prop_assert!(!path.contains('%'), "{path:?}");
                prop_assert!(!path.contains("//"), "{path:?}");
                prop_assert!(is_canonical(path), "{path:?}");
                prop_assert!(!request.checks().is_empty());
            } else if is_canonical(raw_path) && verb_of(&method).is_some() {
                // A canonical path with an allowed method is refused only for its query.
                let rejected = result.expect_err("rejected");
                prop_assert!(
                    matches!(rejected, Rejection::ForbiddenByte { part: TargetPart::Query, .. }),
                    "{target:?}: {rejected:?}"
                );
            }
        }

        /// (b) An upgrade or a streaming endpoint is never authorized as `get`.
        #[test]
        fn upgrades_and_streaming_are_never_get(
            method in allowed_method(),
            first in prop_oneof![
                prop::sample::select(vec!["exec", "attach", "portForward", "run", "pods",
                    "portforward", "Exec", "containerLogs", "stats"]),
                prop::sample::select(vec!["x", "execx", "runs", "logs"]),
            ],
            rest in "(/[a-z0-9]{1,5}){0,3}",
            upgrade in prop::option::of(prop::sample::select(vec![
                "websocket", "SPDY/3.1", "h2c", "", "WebSocket"])),
            connection in prop::collection::vec(prop::sample::select(vec![
                "Upgrade", "keep-alive, upgrade", "close", "keep-alive", "upgrade-insecure",
                "te,UPGRADE"]), 0..3),
        ) {
            let target = format!("/{first}{rest}");
            let mut map = HeaderMap::new();
            if let Some(value) = upgrade {
                map.insert(UPGRADE, HeaderValue::from_static(value));
            }
            for value in &connection {
                map.append(CONNECTION, HeaderValue::from_static(value));
            }
            let request = classify(&method, &uri(&target), Version::HTTP_11, &map,
                Options::default()).expect("accepted");
            let asks_upgrade = upgrade.is_some()
                || connection.iter().any(|value| {
                    value.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
                });
            let streaming = ["exec", "attach", "portForward", "run"].contains(&first);
            prop_assert_eq!(request.upgrade().is_some(), asks_upgrade);
            prop_assert_eq!(request.is_streaming_endpoint(), streaming);
            if asks_upgrade || streaming {
                prop_assert_eq!(request.verb(), Verb::Create);
            } else {
                prop_assert_eq!(Some(request.verb()), verb_of(&method));
            }
        }

        /// (c) There is always a check, at most two, and `proxy` only ever comes last.
        #[test]
        fn checks_are_never_empty_and_proxy_is_last(
            path in prop_oneof![canonical_path(), any_path()],
            options in any_options(),
        ) {
            let Ok(parsed) = path.parse::<Uri>() else { return Ok(()) };
            let Ok(request) = classify(&Method::GET, &parsed, Version::HTTP_11,
                &HeaderMap::new(), options) else { return Ok(()) };
            let checks = request.checks();
            prop_assert!(!checks.is_empty() && checks.len() <= 2, "{checks:?}");
            if let Some(position) = checks.iter().position(|&s| s == Proxy) {
                prop_assert_eq!(position, checks.len() - 1, "{:?}", checks);
            }
            if checks.len() == 2 {
                prop_assert!(options.proxy_fallback);
                prop_assert!(matches!(checks[0], Pods | Healthz | Configz), "{checks:?}");
            }
        }

        /// (d) The query never changes the checks, the verb or the upgrade.
        #[test]
        fn the_query_never_changes_the_classification(
            path in canonical_path(),
            query in "[a-zA-Z0-9=&%./?_~:@!$'()*+,;\\\\-]{0,24}",
            method in allowed_method(),
            options in any_options(),
        ) {
            let bare = classify(&method, &uri(&path), Version::HTTP_11, &HeaderMap::new(),
                options).expect("canonical path accepted");
            let with_query = classify(&method, &uri(&format!("{path}?{query}")),
                Version::HTTP_11, &HeaderMap::new(), options).expect("query accepted");
            prop_assert_eq!(bare, with_query);
        }
    }
}
