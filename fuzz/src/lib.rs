//! The input format shared by the fuzz targets: a loose, human-readable HTTP/1-style head, so
//! that seed files in `corpus/` can be written and read by hand.
//!
//! ```text
//! METHOD SP request-target [SP HTTP/<version>] LF
//! Name: value LF
//! ...
//! ```
//!
//! Lines end at `\n` (a trailing `\r` is dropped). The request line is split at its first space
//! (method) and, if the last space-separated token starts with `HTTP/`, at its last space
//! (version); everything between is the request-target, spaces and all. An unknown or missing
//! version is HTTP/1.1. A field line is split at its first `:`; the value loses its surrounding
//! spaces and tabs, as an HTTP parser strips OWS. Lines that `http` would refuse as a name or
//! value are skipped when a [`HeaderMap`] is built, so every byte sequence is some input.
//!
//! `header_hygiene` has no request line: every line is a field line.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Version};

/// A parsed head. Borrowed from the fuzz input.
#[derive(Debug)]
pub struct Head<'a> {
    /// The method token, as bytes.
    pub method: &'a [u8],
    /// The request-target, as bytes.
    pub target: &'a [u8],
    /// The HTTP version named on the request line (HTTP/1.1 if none or unknown).
    pub version: Version,
    /// The field lines, split at the first `:`, value trimmed of OWS.
    pub fields: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Head<'a> {
    /// Parses a request line and field lines; never fails.
    pub fn parse(data: &'a [u8]) -> Self {
        let mut lines = lines(data);
        let request_line = lines.next().unwrap_or_default();
        let (method, rest) = match request_line.iter().position(|&b| b == b' ') {
            Some(at) => (&request_line[..at], &request_line[at + 1..]),
            None => (request_line, &b""[..]),
        };
        let (target, version) = match rest.iter().rposition(|&b| b == b' ') {
            Some(at) if rest[at + 1..].starts_with(b"HTTP/") => {
                (&rest[..at], version_of(&rest[at + 1..]))
            }
            _ => (rest, Version::HTTP_11),
        };
        Self {
            method,
            target,
            version,
            fields: lines.filter_map(field).collect(),
        }
    }

    /// The field lines that `http` accepts, appended in order.
    pub fn header_map(&self) -> HeaderMap {
        header_map(&self.fields)
    }
}

/// Parses field lines only (no request line).
pub fn fields(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    lines(data).filter_map(field).collect()
}

/// Builds a map from field lines, skipping names and values `http` refuses.
pub fn header_map(fields: &[(&[u8], &[u8])]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for &(name, value) in fields {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = line.iter().position(|&b| b == b':')?;
    Some((&line[..at], trim_ows(&line[at + 1..])))
}

/// Strips optional whitespace (SP and HTAB, RFC 9110 section 5.6.3) from both ends.
pub fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// The comma-separated list items of a field value (RFC 9110 section 5.6.1), OWS trimmed,
/// empty items dropped.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|item| !item.is_empty())
}

fn version_of(token: &[u8]) -> Version {
    match token {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        _ => Version::HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head() {
        let head = Head::parse(b"GET /a b HTTP/2\r\nUpgrade:  websocket \nbad line\nX:\n");
        assert_eq!(head.method, b"GET");
        assert_eq!(head.target, b"/a b");
        assert_eq!(head.version, Version::HTTP_2);
        assert_eq!(
            head.fields,
            [(&b"Upgrade"[..], &b"websocket"[..]), (&b"X"[..], &b""[..])]
        );
        let head = Head::parse(b"GET");
        assert_eq!((head.method, head.target), (&b"GET"[..], &b""[..]));
        let head = Head::parse(b"GET /x HTTP/9");
        assert_eq!((head.target, head.version), (&b"/x"[..], Version::HTTP_11));
    }

    #[test]
    fn list_items_trim_ows() {
        let items: Vec<_> = list_items(b" a ,\tb,, ,c").collect();
        assert_eq!(items, [&b"a"[..], b"b", b"c"]);
    }
}
