//! What the kubelet reads from the query of its streaming endpoints, read the way it reads it, so
//! that the audit trail records what the kubelet was asked to do and not a guess.
//!
//! The query is split as Go's `url.ParseQuery` splits it (`net/url`, Go 1.17 and later): pairs
//! separated by `&`, a pair holding `;` is dropped, key and value are `QueryUnescape`d (`+` is a
//! space, `%XX` a byte) and a pair with a bad escape is dropped. The kubelet
//! (`pkg/kubelet/server/server.go` and the `remotecommand` and `portforward` packages) then reads:
//!
//! - `/exec`: every `command` value, one argument each; `/run`: the first `cmd` value split at
//!   each single space ("for legacy reasons, run uses different query param than exec");
//! - `/exec` and `/attach`: the first `input`, `output`, `error` and `tty` values, `1` meaning
//!   requested (the API server sends `kubectl exec -i -t` as `input=1&tty=1`);
//! - `/portForward` over WebSocket: every `port` value, each a comma-separated list of ports
//!   (SPDY port-forwards name their ports later, in stream headers the guard does not parse).
//!
//! Pure: no I/O and no state. Unlike the classifier it allocates, and it is only called when an
//! audit sink is enabled.

use std::borrow::Cow;

/// One `key=value` pair of a query, decoded, with the bytes it was sent as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPair<'a> {
    /// The pair as sent, between two `&`.
    pub raw: &'a str,
    /// The decoded key.
    pub key: String,
    /// The decoded value; not valid UTF-8 is shown with U+FFFD.
    pub value: String,
}

/// The streams an exec or attach asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    /// `input=1`.
    pub stdin: bool,
    /// `output=1`.
    pub stdout: bool,
    /// `error=1`.
    pub stderr: bool,
    /// `tty=1`.
    pub tty: bool,
}

/// What a request to a streaming endpoint asks the kubelet to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRequest {
    /// The command of an exec or run, one entry per argument; `None` for other endpoints.
    pub command: Option<Vec<String>>,
    /// The streams of an exec or attach; `None` for other endpoints.
    pub streams: Option<Streams>,
    /// The ports of a WebSocket port-forward, in the order given; empty for other requests.
    pub ports: Vec<u16>,
}

/// Splits and decodes `query` (the part after `?`) as Go's `url.ParseQuery` does.
pub fn parse_query(query: &str) -> Vec<QueryPair<'_>> {
    query
        .split('&')
        .filter(|raw| !raw.is_empty() && !raw.contains(';'))
        .filter_map(|raw| {
            let (key, value) = raw.split_once('=').unwrap_or((raw, ""));
            Some(QueryPair {
                raw,
                key: query_unescape(key)?,
                value: query_unescape(value)?,
            })
        })
        .collect()
}

/// What the kubelet reads from the query of a request to `path`.
pub fn stream_request(path: &str, pairs: &[QueryPair<'_>]) -> StreamRequest {
    let first = |key: &str| pairs.iter().find(|pair| pair.key == key);
    let streams = || Streams {
        stdin: first("input").is_some_and(|pair| pair.value == "1"),
        stdout: first("output").is_some_and(|pair| pair.value == "1"),
        stderr: first("error").is_some_and(|pair| pair.value == "1"),
        tty: first("tty").is_some_and(|pair| pair.value == "1"),
    };
    let endpoint = path.strip_prefix('/').unwrap_or(path).split('/').next();
    match endpoint {
        Some("exec") => StreamRequest {
            command: Some(values(pairs, "command").map(str::to_owned).collect()),
            streams: Some(streams()),
            ports: Vec::new(),
        },
        Some("run") => StreamRequest {
            command: Some(
                first("cmd")
                    .map(|pair| pair.value.split(' ').map(str::to_owned).collect())
                    .unwrap_or_default(),
            ),
            ..StreamRequest::default()
        },
        Some("attach") => StreamRequest {
            streams: Some(streams()),
            ..StreamRequest::default()
        },
        Some("portForward") => StreamRequest {
            ports: values(pairs, "port")
                .flat_map(|list| list.split(','))
                .filter_map(|port| port.parse().ok())
                .collect(),
            ..StreamRequest::default()
        },
        _ => StreamRequest::default(),
    }
}

/// Encodes `value` as Go's `url.QueryEscape` does: unreserved bytes as they are, space as `+`,
/// every other byte as `%XX`.
pub fn query_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                escaped.push(char::from(byte));
            }
            b' ' => escaped.push('+'),
            _ => escaped.push_str(&format!("%{byte:02X}")),
        }
    }
    escaped
}

/// Every value of `key`, in order.
fn values<'p>(pairs: &'p [QueryPair<'_>], key: &'p str) -> impl Iterator<Item = &'p str> {
    pairs
        .iter()
        .filter(move |pair| pair.key == key)
        .map(|pair| pair.value.as_str())
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` is a byte; `None` for a `%` not followed by two
/// hexadecimal digits.
fn query_unescape(text: &str) -> Option<String> {
    if !text.contains(['%', '+']) {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'%' => {
                let high = hex(*bytes.get(i + 1)?)?;
                let low = hex(*bytes.get(i + 2)?)?;
                decoded.push((high << 4) | low);
                i += 3;
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            _ => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    Some(match String::from_utf8_lossy(&decoded) {
        Cow::Borrowed(text) => text.to_owned(),
        Cow::Owned(text) => text,
    })
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str) -> StreamRequest {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        stream_request(path, &parse_query(query))
    }

    fn strings(words: &[&str]) -> Option<Vec<String>> {
        Some(words.iter().map(|word| (*word).to_owned()).collect())
    }

    #[test]
    fn queries_are_decoded_and_dropped_as_go_does() {
        let pairs = parse_query("a=1+2&b=%41%2f&&c&d=x;y&e=%zz&f=%4&=g&h=%e2%9c%93&i=%ff");
        let decoded: Vec<(&str, &str)> = pairs
            .iter()
            .map(|pair| (pair.key.as_str(), pair.value.as_str()))
            .collect();
        assert_eq!(
            decoded,
            [
                ("a", "1 2"),
                ("b", "A/"),
                ("c", ""),
                ("", "g"),
                ("h", "✓"),
                ("i", "\u{fffd}")
            ]
        );
        assert_eq!(pairs[1].raw, "b=%41%2f", "the bytes as sent are kept");
    }

    #[test]
    fn exec_reads_every_command_value_and_the_first_stream_flags() {
        let exec = request(
            "/exec/ns/p/c?command=sh&command=-c&command=echo+%22a+b%22%3B+id&input=1&tty=1&tty=0&output=true",
        );
        assert_eq!(exec.command, strings(&["sh", "-c", "echo \"a b\"; id"]));
        assert_eq!(
            exec.streams,
            Some(Streams {
                stdin: true,
                stdout: false,
                stderr: false,
                tty: true
            }),
            "only 1 means requested, and the first value counts"
        );
        assert_eq!(request("/exec/ns/p/c").command, strings(&[]));
    }

    #[test]
    fn run_splits_its_first_cmd_at_each_space() {
        let run = request("/run/ns/p/c?cmd=ls%20%20-l+/tmp&cmd=id");
        assert_eq!(run.command, strings(&["ls", "", "-l", "/tmp"]));
        assert_eq!(run.streams, None);
        assert_eq!(request("/run/ns/p/c").command, strings(&[]));
    }

    #[test]
    fn attach_has_streams_and_port_forward_has_ports() {
        let attach = request("/attach/ns/p/c?command=x&output=1&error=1");
        assert_eq!(attach.command, None, "attach runs nothing");
        assert_eq!(
            attach.streams.map(|s| (s.stdout, s.stderr)),
            Some((true, true))
        );
        let forward = request("/portForward/ns/p?port=8080,9090&port=53&port=x&port=70000");
        assert_eq!(forward.ports, [8080, 9090, 53]);
        assert_eq!(request("/metrics?port=1"), StreamRequest::default());
    }

    #[test]
    fn escaping_round_trips_through_unescaping() {
        for text in ["a b", "Authorization: Bearer <redacted>", "%+&=;'\"", "✓"] {
            let escaped = query_escape(text);
            assert!(escaped.bytes().all(|b| b.is_ascii_graphic()), "{escaped}");
            assert_eq!(query_unescape(&escaped).as_deref(), Some(text));
        }
        assert_eq!(query_escape("a b/c"), "a+b%2Fc");
    }
}
