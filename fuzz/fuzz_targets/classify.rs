//! `kubelet_api::classify` against an oracle written from docs/kubelet-api.md alone.
//!
//! Input: a loose HTTP/1 head (see `src/lib.rs`): `METHOD target [HTTP/x]` then field lines.
//! The request-target is parsed with `http::Uri` (inputs it refuses are skipped, as hyper refuses
//! them before the classifier). For `HTTP/2` an origin-form or `*` target is wrapped in the
//! scheme and authority hyper builds from the pseudo-headers. Every input is classified with
//! `--proxy-fallback` on and off.
//!
//! The oracle is plain code from the spec's tables (sections 2, 3 and 4), never the code under
//! test: the verb table, the upgrade rule, the streaming first segments, the "path → checks"
//! table keyed on the first path segment, and the request-target refusal table. Where the spec
//! does not fix an order between two refusal rules that both apply, any of them is accepted.
//! Then metamorphic checks: the query, headers other than `Upgrade`, `Connection` and
//! `Content-Type`, and the HTTP version of an origin-form target never change the answer.

#![no_main]

use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Uri, Version};
use kubelet_guard::kubelet_api::{
    KubeletRequest, Options, Rejection, Subresource, TargetPart, UpgradeProtocol, Verb, classify,
};
use kubelet_guard_fuzz::{Head, list_items};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = Head::parse(data);
    let Ok(method) = Method::from_bytes(head.method) else {
        return;
    };
    let Ok(parsed) = Uri::try_from(head.target) else {
        return;
    };
    fragment_is_the_only_thing_the_parser_drops(head.target, &parsed);
    let uri = match head.version {
        Version::HTTP_2 => as_http2(&parsed).unwrap_or(parsed),
        _ => parsed,
    };
    let headers = head.header_map();
    for proxy_fallback in [true, false] {
        check(
            &method,
            &uri,
            head.version,
            &headers,
            Options { proxy_fallback },
        );
    }
});

fn check(method: &Method, uri: &Uri, version: Version, headers: &HeaderMap, options: Options) {
    let got = classify(method, uri, version, headers, options);
    let expected = spec::classify(method, uri, version, headers, options.proxy_fallback);
    compare(&got, &expected, method, uri, version);
    metamorphic(&got, method, uri, version, headers, options);
}

/// Compares the classifier's answer with the oracle's, and checks the invariants the spec states
/// for every accepted request.
fn compare(
    got: &Result<KubeletRequest, Rejection>,
    expected: &spec::Expected,
    method: &Method,
    uri: &Uri,
    version: Version,
) {
    match (got, expected) {
        (Err(rejection), spec::Expected::Target(violations)) => {
            assert!(
                !rejection.is_method(),
                "a target problem must be a 400 before the method is looked at: {rejection:?}, \
                 spec: {violations:?}"
            );
            assert!(
                violations.admits(rejection),
                "refused for a rule that does not apply: {rejection:?}, spec: {violations:?}"
            );
            let message = rejection.to_string();
            assert!(
                message.starts_with(spec::message_prefix(rejection)),
                "message {message:?} for {rejection:?}"
            );
        }
        (Err(rejection), spec::Expected::Method) => match rejection {
            Rejection::MethodNotAllowed {
                method: refused,
                version: refused_version,
            } => {
                assert_eq!(refused, method);
                assert_eq!(*refused_version, version);
                let message = rejection.to_string();
                assert!(message.starts_with("method "), "{message:?}");
                if *method == Method::CONNECT && version == Version::HTTP_2 {
                    assert!(message.contains("HTTP/1.1"), "{message:?}");
                } else {
                    assert_eq!(
                        message,
                        format!(
                            "method {method} is not allowed: use GET, POST, PUT, PATCH or DELETE"
                        )
                    );
                }
            }
            other => panic!("expected 405 for method {method}, got {other:?}"),
        },
        (Ok(request), spec::Expected::Accept(accept)) => {
            assert_eq!(request.verb(), accept.verb, "verb; spec: {accept:?}");
            assert_eq!(request.checks(), accept.checks, "checks; spec: {accept:?}");
            assert_eq!(
                request.upgrade().is_some(),
                accept.upgrade,
                "upgrade; spec: {accept:?}"
            );
            assert_eq!(
                request.is_streaming_endpoint(),
                accept.streaming,
                "streaming; spec: {accept:?}"
            );
            if let Some(protocol) = request.upgrade() {
                spec::plausible_protocol(protocol, &accept.upgrade_values);
            }
            invariants(request, &accept.path, uri, version);
        }
        (Err(Rejection::FormBody), spec::Expected::FormBody) => {
            let message = got.as_ref().map_err(ToString::to_string).unwrap_err();
            assert!(
                message.starts_with(spec::message_prefix(&Rejection::FormBody)),
                "{message:?}"
            );
        }
        (got, expected) => panic!("classify: {got:?}, spec: {expected:?}"),
    }
}

/// What the spec promises of every accepted request, stated without the segment walk above.
fn invariants(request: &KubeletRequest, path: &str, uri: &Uri, version: Version) {
    // Canonical: what is authorized is what is forwarded, and only one reading exists.
    assert!(path.starts_with('/'), "{path:?}");
    for bad in ["%", "//", "\\", "#", "/./", "/../"] {
        assert!(
            !path.contains(bad),
            "accepted path {path:?} contains {bad:?}"
        );
    }
    assert!(
        !path.ends_with("/.") && !path.ends_with("/.."),
        "accepted path {path:?} ends in a dot segment"
    );
    assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{path:?}");
    // Origin-form over HTTP/1.x (over HTTP/2 scheme and authority are pseudo-headers).
    if version != Version::HTTP_2 {
        assert!(
            uri.scheme().is_none() && uri.authority().is_none(),
            "{uri:?}"
        );
    }
    // One or two checks; nodes/proxy, if there, is the last; two checks end in proxy.
    let checks = request.checks();
    assert!((1..=2).contains(&checks.len()), "{checks:?}");
    if let Some(at) = checks.iter().position(|&c| c == Subresource::Proxy) {
        assert_eq!(
            at,
            checks.len() - 1,
            "proxy must be the last check: {checks:?}"
        );
    }
    if checks.len() == 2 {
        assert_eq!(checks[1], Subresource::Proxy, "{checks:?}");
        assert_ne!(checks[0], Subresource::Proxy, "{checks:?}");
    }
    // An upgrade or a streaming endpoint is never a mere `get`.
    if request.upgrade().is_some() || request.is_streaming_endpoint() {
        assert_eq!(request.verb(), Verb::Create, "{request:?}");
    }
}

/// The query, the headers the spec does not name, and the version of an origin-form target never
/// change the answer.
fn metamorphic(
    got: &Result<KubeletRequest, Rejection>,
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    options: Options,
) {
    // Only Upgrade, Connection and Content-Type count (Sec-WebSocket-*, X-Stream-Protocol-Version
    // never do).
    let mut named = HeaderMap::new();
    for name in [
        http::header::UPGRADE,
        http::header::CONNECTION,
        http::header::CONTENT_TYPE,
    ] {
        for value in headers.get_all(&name) {
            named.append(name.clone(), value.clone());
        }
    }
    let without_others = classify(method, uri, version, &named, options);
    assert_eq!(
        got, &without_others,
        "a header other than Upgrade/Connection/Content-Type mattered"
    );

    // The query never changes the verb, the checks or the upgrade of an accepted request.
    if let Ok(request) = got {
        let target = uri.path_and_query().map_or("", PathAndQuery::as_str);
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        for query in ["", "?", "?command=sh&stdin=1&x=/../exec/%2e%2e&y=\\"] {
            let Some(other) = with_path_and_query(uri, &format!("{path}{query}")) else {
                continue;
            };
            let again = classify(method, &other, version, headers, options);
            assert_eq!(
                again.as_ref(),
                Ok(request),
                "the query {query:?} changed the answer"
            );
        }
    }

    // An origin-form target means the same over every HTTP version hyper serves.
    if version != Version::HTTP_2 && uri.scheme().is_none() && uri.authority().is_none() {
        let normalize = |result: Result<KubeletRequest, Rejection>| {
            result.map_err(|rejection| match rejection {
                Rejection::MethodNotAllowed { method, .. } => Rejection::MethodNotAllowed {
                    method,
                    version: Version::HTTP_11,
                },
                other => other,
            })
        };
        let mine = normalize(got.clone());
        for other_version in [Version::HTTP_10, Version::HTTP_11] {
            let again = classify(method, uri, other_version, headers, options);
            assert_eq!(
                normalize(again),
                mine,
                "{other_version:?} changed the answer"
            );
        }
        if let Some(h2) = as_http2(uri) {
            let again = classify(method, &h2, Version::HTTP_2, headers, options);
            // Extended CONNECT's message differs, the decision does not.
            assert_eq!(normalize(again), mine, "HTTP/2 changed the answer");
        }
    }
}

/// The spec's one stated parser deviation: `http::Uri` cuts a `#fragment` off an origin-form
/// target and changes nothing else, so the bytes classified are the bytes forwarded.
fn fragment_is_the_only_thing_the_parser_drops(raw: &[u8], uri: &Uri) {
    if raw.first() != Some(&b'/') {
        return;
    }
    let kept = raw.split(|&b| b == b'#').next().unwrap_or_default();
    let parsed = uri.path_and_query().map_or("", PathAndQuery::as_str);
    assert_eq!(
        parsed.as_bytes(),
        kept,
        "http::Uri changed an origin-form target other than by dropping a fragment"
    );
}

/// An origin-form (or `*`) target as hyper presents it over HTTP/2.
fn as_http2(uri: &Uri) -> Option<Uri> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return None;
    }
    let mut parts = Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(Authority::from_static("node-1:10250"));
    parts.path_and_query = Some(uri.path_and_query()?.clone());
    Uri::from_parts(parts).ok()
}

fn with_path_and_query(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::try_from(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

/// docs/kubelet-api.md, transcribed. Nothing here calls into kubelet-guard.
mod spec {
    use super::*;

    /// What the spec says should happen.
    #[derive(Debug)]
    pub(crate) enum Expected {
        /// 400: the target breaks at least one rule of section 4.
        Target(Violations),
        /// 405: the target is fine, the method is not one of the five (section 2).
        Method,
        /// 400: a form body on a streaming endpoint (section 4), after the target and method.
        FormBody,
        /// Authorized with these checks.
        Accept(Accept),
    }

    #[derive(Debug)]
    pub(crate) struct Accept {
        pub(crate) verb: Verb,
        pub(crate) checks: &'static [Subresource],
        pub(crate) upgrade: bool,
        pub(crate) streaming: bool,
        pub(crate) path: String,
        pub(crate) upgrade_values: Vec<Vec<u8>>,
    }

    /// The rules of section 4's table that the target breaks.
    #[derive(Debug, Default)]
    pub(crate) struct Violations {
        asterisk: bool,
        absolute_form: bool,
        authority_form: bool,
        not_absolute: bool,
        percent: bool,
        path_bytes: Vec<u8>,
        empty_segment: bool,
        dot_segment: bool,
        query_bytes: Vec<u8>,
    }

    impl Violations {
        fn any(&self) -> bool {
            self.asterisk
                || self.absolute_form
                || self.authority_form
                || self.not_absolute
                || self.percent
                || !self.path_bytes.is_empty()
                || self.empty_segment
                || self.dot_segment
                || !self.query_bytes.is_empty()
        }

        /// Whether `rejection` names one of the broken rules.
        pub(crate) fn admits(&self, rejection: &Rejection) -> bool {
            match rejection {
                Rejection::AsteriskForm => self.asterisk,
                Rejection::AbsoluteForm => self.absolute_form,
                Rejection::AuthorityForm => self.authority_form,
                Rejection::PathNotAbsolute => self.not_absolute,
                Rejection::PercentInPath => self.percent,
                Rejection::ForbiddenByte {
                    part: TargetPart::Path,
                    byte,
                } => self.path_bytes.contains(byte),
                Rejection::ForbiddenByte {
                    part: TargetPart::Query,
                    byte,
                } => self.query_bytes.contains(byte),
                Rejection::EmptySegment => self.empty_segment,
                Rejection::DotSegment => self.dot_segment,
                Rejection::FormBody | Rejection::MethodNotAllowed { .. } => false,
            }
        }
    }

    /// Section 4's "message starts with" column.
    pub(crate) fn message_prefix(rejection: &Rejection) -> &'static str {
        match rejection {
            Rejection::AsteriskForm => "request-target `*` refused",
            Rejection::AbsoluteForm => "absolute-form target refused",
            Rejection::AuthorityForm => "authority-form target refused",
            Rejection::PathNotAbsolute => "request path does not start with '/'",
            Rejection::PercentInPath => "request path contains '%'",
            Rejection::ForbiddenByte {
                part: TargetPart::Path,
                ..
            } => "request path contains ",
            Rejection::ForbiddenByte {
                part: TargetPart::Query,
                ..
            } => "request query contains ",
            Rejection::EmptySegment => "request path contains an empty segment",
            Rejection::DotSegment => "request path contains a '.' or '..' segment",
            Rejection::FormBody => "a form body is refused on exec, attach, portForward and run",
            Rejection::MethodNotAllowed { .. } => "method ",
        }
    }

    pub(crate) fn classify(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        proxy_fallback: bool,
    ) -> Expected {
        // Section 4: target problems first, then the method.
        let violations = target_violations(uri, version);
        if violations.any() {
            return Expected::Target(violations);
        }
        // Section 2's table: exact, upper case.
        let method_verb = match method.as_str() {
            "GET" => Verb::Get,
            "POST" => Verb::Create,
            "PUT" => Verb::Update,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ => return Expected::Method,
        };
        let target = uri.path_and_query().map_or("", PathAndQuery::as_str);
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let first_segment = path[1..].split('/').next().unwrap_or_default();

        // Section 2: any Upgrade header, even empty, or `upgrade` among Connection's tokens.
        let upgrade = headers.contains_key("upgrade")
            || headers.get_all("connection").iter().any(|value| {
                list_items(value.as_bytes()).any(|token| token.eq_ignore_ascii_case(b"upgrade"))
            });
        // Section 2: these first segments, case-sensitive.
        let streaming = matches!(first_segment, "exec" | "attach" | "portForward" | "run");
        // Section 4: a POST, PUT or PATCH there whose Content-Type is a form, case and
        // parameters aside, or is not ASCII.
        let form = headers.get_all("content-type").iter().any(|value| {
            let Ok(value) = value.to_str() else {
                return true;
            };
            let media = value.split(';').next().unwrap_or_default();
            let media = media.trim_matches([' ', '\t']).to_ascii_lowercase();
            media == "application/x-www-form-urlencoded" || media == "multipart/form-data"
        });
        if streaming && matches!(method.as_str(), "POST" | "PUT" | "PATCH") && form {
            return Expected::FormBody;
        }
        let verb = if upgrade || streaming {
            Verb::Create
        } else {
            method_verb
        };
        Expected::Accept(Accept {
            verb,
            checks: checks(first_segment, proxy_fallback),
            upgrade,
            streaming,
            path: path.to_owned(),
            upgrade_values: headers
                .get_all("upgrade")
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect(),
        })
    }

    /// Section 3's "path → checks, in order" table. Every pattern there is one segment, so with
    /// `isSubpath` a path matches exactly when its first segment is that segment.
    fn checks(first_segment: &str, proxy_fallback: bool) -> &'static [Subresource] {
        use Subresource::*;
        let fine_grained = match first_segment {
            "pods" | "runningpods" => Some(Pods),
            "healthz" => Some(Healthz),
            "configz" => Some(Configz),
            _ => None,
        };
        match (fine_grained, proxy_fallback) {
            (Some(Pods), true) => &[Pods, Proxy],
            (Some(Healthz), true) => &[Healthz, Proxy],
            (Some(Configz), true) => &[Configz, Proxy],
            // --proxy-fallback=false: the fine-grained subresource alone.
            (Some(Pods), false) => &[Pods],
            (Some(Healthz), false) => &[Healthz],
            (Some(Configz), false) => &[Configz],
            _ => match first_segment {
                "stats" => &[Stats],
                "metrics" => &[Metrics],
                "logs" => &[Log],
                "checkpoint" => &[Checkpoint],
                "statusz" => &[Statusz],
                "flagz" => &[Configz],
                _ => &[Proxy],
            },
        }
    }

    /// Section 4's refusal table.
    fn target_violations(uri: &Uri, version: Version) -> Violations {
        let mut v = Violations::default();
        // Absolute- and authority-form are HTTP/1.x rules; over HTTP/2 the scheme and authority
        // come from pseudo-headers and only the path (and query) is checked.
        if version != Version::HTTP_2 {
            v.absolute_form = uri.scheme().is_some();
            v.authority_form = uri.scheme().is_none() && uri.authority().is_some();
        }
        let target = uri.path_and_query().map_or("", PathAndQuery::as_str);
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        v.asterisk = path == "*";
        v.not_absolute = !path.starts_with('/');
        v.percent = path.contains('%');
        // Backslash, `#`, space, control bytes, DEL, non-ASCII.
        let never = |b: u8| b == b'#' || b <= b' ' || b == 0x7f || b >= 0x80;
        v.path_bytes = path.bytes().filter(|&b| b == b'\\' || never(b)).collect();
        if let Some(rest) = path.strip_prefix('/') {
            let segments: Vec<&str> = rest.split('/').collect();
            // One trailing slash is accepted: only the last segment may be empty.
            v.empty_segment = segments[..segments.len() - 1].iter().any(|s| s.is_empty());
            v.dot_segment = segments.iter().any(|&s| s == "." || s == "..");
        }
        if let Some(query) = query {
            v.query_bytes = query.bytes().filter(|&b| never(b)).collect();
        }
        v
    }

    /// The protocol label only names what was asked for (section 2: it never decides).
    pub(crate) fn plausible_protocol(protocol: UpgradeProtocol, upgrade_values: &[Vec<u8>]) {
        let mentions = |needle: &[u8]| {
            upgrade_values.iter().any(|value| {
                value
                    .to_ascii_lowercase()
                    .windows(needle.len())
                    .any(|w| w == needle)
            })
        };
        match protocol {
            UpgradeProtocol::WebSocket => assert!(mentions(b"websocket"), "{upgrade_values:?}"),
            UpgradeProtocol::Spdy => assert!(mentions(b"spdy/"), "{upgrade_values:?}"),
            UpgradeProtocol::Other => {}
        }
    }
}
