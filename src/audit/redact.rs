//! No credential in the trail: the rule that redacts credentials from the command arguments an
//! event records and from its `requestURI`.
//!
//! The guard never records the caller's own credential (its `Authorization` header is never
//! read into an event). A command, though, can carry one: `curl -H 'Authorization: Bearer …'`
//! run through an exec puts the token into the query. The rule works on words (runs of
//! characters other than ASCII whitespace) of the arguments, in order, so a credential is found
//! whether it is an argument of its own or part of a `sh -c` script:
//!
//! 1. the word after `Bearer`, `Basic` or `Token` (any case; quotes around the scheme ignored),
//!    also when the scheme ends a `Name:` or `--flag=` word (`Authorization:Bearer …`,
//!    `--header=Authorization:"Bearer …"`);
//! 2. the value of `name=value` when the name holds a secret word (`--token=…`, `PASSWORD=…`,
//!    `…?access_token=…`);
//! 3. the value of `Name:value` when the name holds a secret word (`X-Auth-Token: …`);
//! 4. the word after a flag (`-…`, no `=`) whose name holds a secret word (`--password …`);
//! 5. the password of a URL's user information (`https://user:…@host`);
//! 6. the token of a WebSocket bearer subprotocol (`base64url.bearer.authorization.k8s.io.…`);
//! 7. a JSON Web Token anywhere in a word (`eyJ…` in three dot-separated base64url parts, the last
//!    empty if unsigned), as a service-account token is, whatever names it;
//! 8. the word after `--oauth2-bearer`, and the password of the `user:password` word after `-u`,
//!    `--user` or `--proxy-user`, or after their `=` (curl's credentials; a user name alone is
//!    kept).
//!
//! Secret words, in any case: `token`, `password`, `passwd`, `secret`, `credential`, `apikey`,
//! `api-key`, `api_key`, `authorization`. A redacted word keeps the quotes around it and becomes
//! [`MARK`]. In a `requestURI`, the values of each query key go through the same rule, and so
//! does each key itself; every value of a key that holds a secret word is redacted whole, and a
//! pair the kubelet does not read (one holding `;` or a bad `%` escape, which Go's
//! `url.ParseQuery` drops) becomes [`MARK`] whole, since it cannot be read word by word; the rest
//! of the URI stays as sent.
//!
//! The rule errs towards redacting too much. It cannot know every program's options: `mysql
//! -psecret` or a credential on stdin is not recognised (stdin is never recorded at all).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use crate::kubelet_api::query::{QueryPair, parse_query, query_escape};

/// What a redacted credential is replaced with.
pub const MARK: &str = "<redacted>";

/// Parts of a name that say its value is a credential.
const SECRET_WORDS: [&str; 9] = [
    "token",
    "password",
    "passwd",
    "secret",
    "credential",
    "apikey",
    "api-key",
    "api_key",
    "authorization",
];

/// Authorization schemes whose next word is the credential.
const SCHEMES: [&str; 3] = ["bearer", "basic", "token"];

/// Flags without a secret word whose next word is a credential.
const CREDENTIAL_FLAGS: [&str; 1] = ["--oauth2-bearer"];

/// Flags whose next word may be `user:password`.
const USER_FLAGS: [&str; 3] = ["-u", "--user", "--proxy-user"];

/// What the word after a word is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Judged on its own.
    Plain,
    /// A credential.
    Credential,
    /// A user name, with its password after a `:` if it has one.
    UserInfo,
}

/// What precedes the token in Kubernetes' WebSocket bearer subprotocol.
const BEARER_PROTOCOL: &str = "bearer.authorization.k8s.io.";

/// The arguments with every credential the rule recognises replaced by [`MARK`].
pub fn redact_arguments(arguments: &[String]) -> Vec<String> {
    redact_after(arguments, Next::Plain).0
}

/// [`redact_arguments`] when what came before says what the first word is; also says what the
/// word after the last one would be.
fn redact_after(arguments: &[String], mut next: Next) -> (Vec<String>, Next) {
    let redacted = arguments
        .iter()
        .map(|argument| {
            let mut redacted = String::with_capacity(argument.len());
            let mut copied = 0;
            for (start, word) in words(argument) {
                redacted.push_str(&argument[copied..start]);
                let (shown, introduces) = redact_word(word, next);
                redacted.push_str(&shown);
                next = introduces;
                copied = start + word.len();
            }
            redacted.push_str(&argument[copied..]);
            redacted
        })
        .collect();
    (redacted, next)
}

/// The request-target with the credentials in its query redacted; borrowed when there are none.
///
/// Linear in the query: it runs on every request, refused ones included, and a query of
/// thousands of distinct keys must not cost a core for seconds.
pub fn redact_target(target: &str) -> Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    let pairs = parse_query(query);
    // Each pair is known by where it starts in `query`; the values of one key, in order, are
    // read as one command line (`command=curl&command=-H&command=…`).
    let at = |raw: &str| raw.as_ptr() as usize - query.as_ptr() as usize;
    let mut groups: HashMap<&str, Vec<&QueryPair<'_>>> = HashMap::new();
    for pair in &pairs {
        groups.entry(pair.key.as_str()).or_default().push(pair);
    }
    let mut replaced: HashMap<usize, String> = HashMap::new();
    for (key, group) in &groups {
        let values: Vec<String> = group.iter().map(|p| p.value.clone()).collect();
        // A key can carry a credential too (`?Bearer%20…`, `?eyJ…`), or introduce one
        // (`?Bearer=…`).
        let (shown_key, after_key) = redact_after(&[(*key).to_owned()], Next::Plain);
        let shown_key = shown_key.into_iter().next().unwrap_or_default();
        let redacted: Vec<String> = if is_secret(key) {
            values
                .iter()
                .map(|value| {
                    if value.is_empty() {
                        String::new()
                    } else {
                        MARK.to_owned()
                    }
                })
                .collect()
        } else {
            redact_after(&values, after_key).0
        };
        for ((pair, value), redacted) in group.iter().zip(&values).zip(redacted) {
            if *value != redacted || shown_key != *key {
                let raw_key = pair.raw.split_once('=').map_or(pair.raw, |(key, _)| key);
                let key = if shown_key == *key {
                    Cow::Borrowed(raw_key)
                } else {
                    Cow::Owned(query_escape(&shown_key))
                };
                replaced.insert(at(pair.raw), format!("{key}={}", query_escape(&redacted)));
            }
        }
    }
    let segments = query.split('&').filter(|segment| !segment.is_empty());
    if replaced.is_empty() && segments.count() == pairs.len() {
        return Cow::Borrowed(target);
    }
    let kept: HashSet<usize> = pairs.iter().map(|pair| at(pair.raw)).collect();
    let dropped = query_escape(MARK);
    let query: Vec<&str> = query
        .split('&')
        .map(|segment| {
            if let Some(new) = replaced.get(&at(segment)) {
                new.as_str()
            } else if segment.is_empty() || kept.contains(&at(segment)) {
                segment
            } else {
                &dropped
            }
        })
        .collect();
    Cow::Owned(format!("{path}?{}", query.join("&")))
}

/// The words of `text` and where each starts.
fn words(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut rest = text.char_indices().peekable();
    std::iter::from_fn(move || {
        while rest.next_if(|(_, c)| c.is_ascii_whitespace()).is_some() {}
        let (start, _) = *rest.peek()?;
        let mut end = text.len();
        while let Some((at, c)) = rest.next_if(|(_, c)| !c.is_ascii_whitespace()) {
            end = at + c.len_utf8();
        }
        Some((start, &text[start..end]))
    })
}

/// One word, redacted if it is a credential, and what the word after it is.
fn redact_word(word: &str, next: Next) -> (Cow<'_, str>, Next) {
    // The scheme may end a `Name:` or `--flag=` word: `Authorization:Bearer`.
    let last = word.rsplit([':', '=']).next().unwrap_or(word);
    let bare = last.trim_matches(['\'', '"']);
    if SCHEMES
        .iter()
        .any(|scheme| bare.eq_ignore_ascii_case(scheme))
    {
        let name = &word[..word.len() - last.len()];
        let header = name
            .trim_end_matches([':', '='])
            .rsplit([':', '='])
            .next()
            .unwrap_or_default();
        // `PASSWORD=token`: a secret name's value is masked even when it reads as a scheme,
        // and the word after it too, in case it was one.
        if is_secret(name) && !header.eq_ignore_ascii_case("authorization") {
            return (
                Cow::Owned(format!("{name}{}", mask(last))),
                Next::Credential,
            );
        }
        return (Cow::Borrowed(word), Next::Credential);
    }
    match next {
        Next::Credential => return (mask(word), Next::Plain),
        Next::UserInfo => {
            if let Some(masked) = without_password(word) {
                return (Cow::Owned(masked), Next::Plain);
            }
        }
        Next::Plain => {}
    }
    if let Some(at) = word.find(BEARER_PROTOCOL) {
        let token = &word[at + BEARER_PROTOCOL.len()..];
        return (
            Cow::Owned(format!(
                "{}{}",
                &word[..word.len() - token.len()],
                mask(token)
            )),
            Next::Plain,
        );
    }
    if let Some(masked) = without_jwts(word) {
        return (Cow::Owned(masked), Next::Plain);
    }
    if let Some((flag, value)) = word.split_once('=')
        && USER_FLAGS.contains(&flag)
        && let Some(masked) = without_password(value)
    {
        return (Cow::Owned(format!("{flag}={masked}")), Next::Plain);
    }
    for separator in ['=', ':'] {
        if let Some((name, value)) = word.split_once(separator)
            && is_secret(name)
        {
            if value.trim_matches(['\'', '"']).is_empty() {
                // `X-Auth-Token:` with its value in the next word.
                let next = if separator == ':' {
                    Next::Credential
                } else {
                    Next::Plain
                };
                return (Cow::Borrowed(word), next);
            }
            return (
                Cow::Owned(format!("{name}{separator}{}", mask(value))),
                Next::Plain,
            );
        }
    }
    if let Some(masked) = url_password(word) {
        return (Cow::Owned(masked), Next::Plain);
    }
    let next = match (word.starts_with('-') && !word.contains('='), word) {
        (true, flag) if is_secret(flag) || CREDENTIAL_FLAGS.contains(&flag) => Next::Credential,
        (true, flag) if USER_FLAGS.contains(&flag) => Next::UserInfo,
        _ => Next::Plain,
    };
    (Cow::Borrowed(word), next)
}

/// `word` with every JSON Web Token in it masked, if it holds one: `eyJ` (a JSON object's
/// start, base64url-encoded), then three dot-separated runs of base64url characters.
fn without_jwts(word: &str) -> Option<String> {
    let base64url = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    let bytes = word.as_bytes();
    let mut masked = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = word[from..].find("eyJ") {
        let start = from + found;
        let mut end = start;
        let mut parts = 0;
        loop {
            let part = end;
            while end < bytes.len() && base64url(bytes[end]) {
                end += 1;
            }
            if end == part {
                break;
            }
            parts += 1;
            if parts == 3 || end >= bytes.len() || bytes[end] != b'.' {
                break;
            }
            end += 1;
        }
        // Three parts, the last one empty when the token is unsigned (`alg: none`).
        if parts == 3 || (parts == 2 && bytes[end - 1] == b'.') {
            masked.push_str(&word[copied..start]);
            masked.push_str(MARK);
            copied = end;
            from = end;
        } else {
            // Any `eyJ` inside what was just scanned ends where this did, as short of parts:
            // scanning on from each would make a run of them quadratic.
            from = end.max(start + 3);
        }
    }
    if copied == 0 {
        return None;
    }
    masked.push_str(&word[copied..]);
    Some(masked)
}

/// `word` with the password of its URL's user information masked, if it has one.
fn url_password(word: &str) -> Option<String> {
    let (scheme, rest) = word.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some(format!(
        "{scheme}://{}{}",
        without_password(userinfo)?,
        &rest[userinfo.len()..]
    ))
}

/// `user:password` with the password masked, if it has one (a user name alone is no secret).
fn without_password(userinfo: &str) -> Option<String> {
    let (user, password) = userinfo.split_once(':')?;
    if password.trim_matches(['\'', '"']).is_empty() {
        return None;
    }
    Some(format!("{user}:{}", mask(password)))
}

/// `word` as [`MARK`], keeping the quotes around it.
fn mask(word: &str) -> Cow<'_, str> {
    let inner = word.trim_matches(['\'', '"']);
    if inner.is_empty() {
        return Cow::Borrowed(word);
    }
    let leading = word.len() - word.trim_start_matches(['\'', '"']).len();
    let trailing = word.len() - word.trim_end_matches(['\'', '"']).len();
    Cow::Owned(format!(
        "{}{MARK}{}",
        &word[..leading],
        &word[word.len() - trailing..]
    ))
}

/// Whether a name says its value is a credential.
fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|secret| name.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(arguments: &[&str]) -> Vec<String> {
        let arguments: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
        redact_arguments(&arguments)
    }

    #[test]
    fn the_credential_after_an_authorization_scheme_is_redacted() {
        assert_eq!(
            redacted(&["curl", "-H", "Authorization: Bearer xyz", "https://api"]),
            [
                "curl",
                "-H",
                "Authorization: Bearer <redacted>",
                "https://api"
            ]
        );
        assert_eq!(
            redacted(&["Authorization:", "bearer", "xyz", "next"]),
            ["Authorization:", "bearer", "<redacted>", "next"],
            "across arguments, as /run splits its command"
        );
        assert_eq!(
            redacted(&[
                "sh",
                "-c",
                "curl -H 'Authorization: Basic dXNlcjpw' -H \"x: Token abc\" u"
            ]),
            [
                "sh",
                "-c",
                "curl -H 'Authorization: Basic <redacted>' -H \"x: Token <redacted>\" u"
            ],
            "inside a script, keeping its quotes"
        );
    }

    #[test]
    fn a_scheme_closing_a_name_in_one_word_still_marks_the_credential() {
        assert_eq!(
            redacted(&[
                "curl",
                "-H",
                "Authorization:Bearer",
                "xyz",
                "--header=Authorization:\"Bearer",
                "abc\"",
                "-H",
                "authorization:tok",
            ]),
            [
                "curl",
                "-H",
                "Authorization:Bearer",
                "<redacted>",
                "--header=Authorization:\"Bearer",
                "<redacted>\"",
                "-H",
                "authorization:<redacted>",
            ]
        );
        assert_eq!(
            redacted(&["env", "PASSWORD=token", "--api-key=basic", "x"]),
            [
                "env",
                "PASSWORD=<redacted>",
                "--api-key=<redacted>",
                "<redacted>"
            ],
            "a secret whose value reads as a scheme is still masked"
        );
    }

    #[test]
    fn the_password_of_a_url_is_redacted() {
        assert_eq!(
            redacted(&[
                "git",
                "clone",
                "https://bob:ghp_x1@github.com/o/r.git",
                "https://bob@h/p",
                "https://h/p?q=a:b@c",
            ]),
            [
                "git",
                "clone",
                "https://bob:<redacted>@github.com/o/r.git",
                "https://bob@h/p",
                "https://h/p?q=a:b@c",
            ],
            "only a password inside the authority"
        );
    }

    #[test]
    fn values_of_secret_names_are_redacted() {
        assert_eq!(
            redacted(&[
                "kubectl",
                "--token=abc",
                "--Password",
                "hunter2",
                "API_KEY=k1",
                "X-Auth-Token: t2",
                "https://x/?access_token=t3",
                "--token-ttl=5",
                "--namespace=a",
                "--user",
                "bob",
            ]),
            [
                "kubectl",
                "--token=<redacted>",
                "--Password",
                "<redacted>",
                "API_KEY=<redacted>",
                "X-Auth-Token: <redacted>",
                "https://x/?access_token=<redacted>",
                "--token-ttl=<redacted>",
                "--namespace=a",
                "--user",
                "bob",
            ],
            "too much rather than too little: --token-ttl goes too"
        );
        assert_eq!(
            redacted(&["echo", "hello", "world", ""]),
            ["echo", "hello", "world", ""]
        );
    }

    #[test]
    fn a_target_keeps_its_bytes_except_the_credentials() {
        let plain = "/exec/ns/p/c?command=sh&command=-c&command=echo%20hi&tty=1";
        assert!(matches!(redact_target(plain), Cow::Borrowed(_)));
        assert_eq!(
            redact_target(
                "/exec/ns/p/c?command=curl&command=-H&command=Authorization%3A%20Bearer%20xyz&input=1"
            ),
            "/exec/ns/p/c?command=curl&command=-H&command=Authorization%3A+Bearer+%3Credacted%3E&input=1"
        );
        assert_eq!(
            redact_target("/run/ns/p/c?cmd=mysql+--password+s3cret+-e+x&my_secret=abc&x=Bearer"),
            "/run/ns/p/c?cmd=mysql+--password+%3Credacted%3E+-e+x&my_secret=%3Credacted%3E&x=Bearer"
        );
        assert_eq!(
            redact_target("/exec/ns/p/c?command=--token&command=x&command=--token&command=x"),
            "/exec/ns/p/c?command=--token&command=%3Credacted%3E&command=--token&command=%3Credacted%3E",
            "equal segments are each judged where they sit"
        );
        assert_eq!(
            redact_target("/exec/ns/p/c?command=ls&access_token=abc;x&&command=100%&tty=1"),
            "/exec/ns/p/c?command=ls&%3Credacted%3E&&%3Credacted%3E&tty=1",
            "pairs the kubelet drops are redacted whole"
        );
        assert_eq!(
            redact_target("/pods?Bearer%20xyz&eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln=1"),
            "/pods?Bearer+%3Credacted%3E=&%3Credacted%3E=1",
            "a key is judged as a value is"
        );
        assert_eq!(
            redact_target("/pods?Bearer=tok&x=1"),
            "/pods?Bearer=%3Credacted%3E&x=1",
            "a key can introduce the credential its value is"
        );
    }

    #[test]
    fn tokens_in_a_websocket_protocol_a_jwt_or_curl_credentials_are_redacted() {
        let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJl";
        assert_eq!(
            redacted(&[
                "curl",
                "-H",
                "Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.dG9rZW4",
                &format!("X-Forward: {jwt}"),
                &format!("--data=id:{jwt},{jwt}"),
                "--oauth2-bearer",
                "t0k",
                "--user",
                "me:pw",
                "--proxy-user='me:pw'",
                "-u",
                "root",
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
                "https://kubernetes.default.svc",
            ]),
            [
                "curl",
                "-H",
                "Sec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.<redacted>",
                "X-Forward: <redacted>",
                "--data=id:<redacted>,<redacted>",
                "--oauth2-bearer",
                "<redacted>",
                "--user",
                "me:<redacted>",
                "--proxy-user='me:<redacted>'",
                "-u",
                "root",
                "<redacted>",
                "https://kubernetes.default.svc",
            ]
        );
        assert_eq!(
            redacted(&["echo", "eyJ.not", "eyJa.b", "eyJhbGc"]),
            ["echo", "eyJ.not", "eyJa.b", "eyJhbGc"],
            "fewer than three parts is no token"
        );
        let run = format!("{}.a.b", "eyJ".repeat(4));
        assert_eq!(
            redacted(&[&run, "eyJeyJ.x"]),
            ["<redacted>", "eyJeyJ.x"],
            "a run of starts is one token, or none"
        );
    }
}
