//! `forward::request_headers` (and `forward::response_headers`) against the header hygiene
//! rules: no caller credential or identity header and no hop-by-hop field ever reaches the
//! kubelet, and every other field goes through unchanged, values and order.
//!
//! Input: field lines `Name: value` (see `src/lib.rs`); lines `http` refuses are skipped, so any
//! name and value `http` accepts can occur, obs-text included. Each map is forwarded both as a
//! plain request and as an upgrade, and sent back both as a plain response and as a `101`.
//!
//! The rules (RFC 9110 section 7.6.1, and forward.rs's module doc):
//! - credentials: `Authorization`, `Proxy-Authorization`, `Host`, `Impersonate-*`, `X-Remote-*`;
//! - hop-by-hop: `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`, and every field a `Connection` value names (each
//!   comma-separated item, OWS trimmed, case-insensitive), whatever else is in that value;
//! - for an upgrade, `Connection` lists only `upgrade`, and `Upgrade` is the caller's, unchanged;
//! - everything else: the same values in the same order.

#![no_main]

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, header};
use kubelet_guard::forward::{request_headers, response_headers};
use kubelet_guard_fuzz::{fields, header_map, list_items};
use libfuzzer_sys::fuzz_target;

/// The WebSocket subprotocol that carries a bearer token. Kubernetes' WebSocket protocol
/// authenticator (which the kubelet's delegating authenticator includes) splits each
/// `Sec-WebSocket-Protocol` value at `,`, trims each entry with Go's `strings.TrimSpace` (Unicode
/// white space) and matches this prefix case-sensitively.
const BEARER_SUBPROTOCOL: &str = "base64url.bearer.authorization.k8s.io.";

fuzz_target!(|data: &[u8]| {
    let inbound = header_map(&fields(data));
    for upgrade in [false, true] {
        let outbound = request_headers(&inbound, upgrade);
        check_request(&inbound, &outbound, upgrade);
    }
    for switching in [false, true] {
        let back = response_headers(&inbound, switching);
        check_response(&inbound, &back, switching);
    }
});

/// What must happen to one inbound field on its way to the kubelet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Dropped(&'static str),
    Unchanged,
    /// `Connection`/`Upgrade` of an upgrade.
    UpgradeField,
    /// A forwarding header (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`, `X-Client-IP`).
    Forwarding,
    /// `Sec-WebSocket-Protocol`.
    WebSocketProtocol,
}

fn request_fate(name: &HeaderName, listed: &[Vec<u8>], upgrade: bool) -> Fate {
    let n = name.as_str();
    if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
        return Fate::UpgradeField;
    }
    if matches!(n, "authorization" | "proxy-authorization" | "host")
        || n.starts_with("impersonate-")
        || n.starts_with("x-remote-")
    {
        return Fate::Dropped("a credential or identity header");
    }
    if is_fixed_hop_by_hop(n) {
        return Fate::Dropped("hop-by-hop");
    }
    if listed.iter().any(|token| token.as_slice() == n.as_bytes()) {
        return Fate::Dropped("named by Connection");
    }
    if n.starts_with("x-forwarded-") || matches!(n, "forwarded" | "x-real-ip" | "x-client-ip") {
        return Fate::Forwarding;
    }
    if name == header::SEC_WEBSOCKET_PROTOCOL {
        return Fate::WebSocketProtocol;
    }
    Fate::Unchanged
}

fn is_fixed_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Every item of every `Connection` value, lower-cased: the names of hop-by-hop fields.
fn connection_options(map: &HeaderMap) -> Vec<Vec<u8>> {
    map.get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| list_items(value.as_bytes()))
        .map(<[u8]>::to_ascii_lowercase)
        .collect()
}

fn values<'a>(map: &'a HeaderMap, name: &HeaderName) -> Vec<&'a HeaderValue> {
    map.get_all(name).iter().collect()
}

fn check_request(inbound: &HeaderMap, outbound: &HeaderMap, upgrade: bool) {
    let listed = connection_options(inbound);
    for name in inbound.keys() {
        let fate = request_fate(name, &listed, upgrade);
        let sent = values(outbound, name);
        let received = values(inbound, name);
        match fate {
            Fate::Dropped(why) => assert!(
                sent.is_empty(),
                "{name} ({why}) reached the kubelet (upgrade={upgrade}): {sent:?}"
            ),
            Fate::Unchanged => assert_eq!(
                sent, received,
                "{name} was changed on its way to the kubelet (upgrade={upgrade})"
            ),
            Fate::UpgradeField if name == header::UPGRADE => assert_eq!(
                sent, received,
                "the caller's Upgrade must reach the kubelet unchanged"
            ),
            Fate::UpgradeField => {}
            Fate::Forwarding => assert!(
                sent.is_empty(),
                "{name} from the caller reached the kubelet (upgrade={upgrade}): {sent:?}"
            ),
            Fate::WebSocketProtocol => check_subprotocols(&received, &sent),
        }
    }
    // Nothing is made up, except the Connection of an upgrade.
    for name in outbound.keys() {
        assert!(
            inbound.contains_key(name) || (upgrade && name == header::CONNECTION),
            "{name} appeared on the way to the kubelet (upgrade={upgrade})"
        );
    }
    if upgrade {
        let connection = values(outbound, &header::CONNECTION);
        let tokens: Vec<&[u8]> = connection
            .iter()
            .flat_map(|v| list_items(v.as_bytes()))
            .collect();
        assert!(
            !tokens.is_empty()
                && tokens
                    .iter()
                    .all(|token| token.eq_ignore_ascii_case(b"upgrade")),
            "an upgrade must carry `Connection: upgrade` and name no other field: {connection:?}"
        );
    }
}

/// No bearer-token subprotocol reaches the kubelet, and the other subprotocols keep their order. A
/// value that is not
/// visible ASCII holds no valid subprotocol token (RFC 6455 section 4.1) and may be dropped whole.
fn check_subprotocols(received: &[&HeaderValue], sent: &[&HeaderValue]) {
    let items = |values: &[&HeaderValue], only_visible_ascii: bool| -> Vec<Vec<u8>> {
        values
            .iter()
            .filter(|v| !only_visible_ascii || v.to_str().is_ok())
            .flat_map(|v| list_items(v.as_bytes()))
            .filter(|item| !is_bearer(item))
            .map(<[u8]>::to_vec)
            .collect()
    };
    let sent_items: Vec<Vec<u8>> = sent
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::to_vec)
        .collect();
    let no_token = !sent_items.iter().any(|item| is_bearer(item));
    let sent_kept = items(sent, false);
    let in_order = sent_kept == items(received, false) || sent_kept == items(received, true);
    assert!(
        no_token && in_order,
        "Sec-WebSocket-Protocol: received {received:?}, sent {sent:?}"
    );
}

/// Whether a subprotocol entry is a bearer token as the Kubernetes authenticator reads it: Go's
/// `strings.TrimSpace` (leading Unicode white space; an invalid UTF-8 byte stops it), then the
/// prefix.
fn is_bearer(item: &[u8]) -> bool {
    let mut rest = item;
    loop {
        let next = (1..=rest.len().min(4))
            .find_map(|len| std::str::from_utf8(&rest[..len]).ok())
            .and_then(|s| s.chars().next());
        match next {
            Some(c) if c.is_whitespace() => rest = &rest[c.len_utf8()..],
            _ => break,
        }
    }
    rest.starts_with(BEARER_SUBPROTOCOL.as_bytes())
}

/// The kubelet's answer: hop-by-hop fields and `Proxy-Authenticate` dropped, except a `101`'s
/// `Connection` and `Upgrade`; everything else unchanged.
fn check_response(upstream: &HeaderMap, back: &HeaderMap, switching: bool) {
    let listed = connection_options(upstream);
    for name in upstream.keys() {
        let n = name.as_str();
        let sent = values(back, name);
        let kept_for_101 = switching && (name == header::CONNECTION || name == header::UPGRADE);
        if kept_for_101 {
            assert_eq!(sent, values(upstream, name), "{name} of a 101 was changed");
        } else if is_fixed_hop_by_hop(n)
            || n == "proxy-authenticate"
            || listed.iter().any(|token| token.as_slice() == n.as_bytes())
        {
            assert!(sent.is_empty(), "{name} reached the caller: {sent:?}");
        } else {
            assert_eq!(
                sent,
                values(upstream, name),
                "{name} was changed on its way back"
            );
        }
    }
    for name in back.keys() {
        assert!(
            upstream.contains_key(name),
            "{name} appeared on the way back"
        );
    }
}
