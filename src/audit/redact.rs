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
//! 5. the password of a URL's user information (`https://user:…@host`).
//!
//! Secret words, in any case: `token`, `password`, `passwd`, `secret`, `credential`, `apikey`,
//! `api-key`, `api_key`, `authorization`. A redacted word keeps the quotes around it and becomes
//! [`MARK`]. In a `requestURI`, the values of each query key go through the same rule, every
//! value of a key that holds a secret word is redacted whole, and a pair the kubelet does not
//! read (one holding `;` or a bad `%` escape, which Go's `url.ParseQuery` drops) becomes
//! [`MARK`] whole, since it cannot be read word by word; the rest of the URI stays as sent.
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

/// The arguments with every credential the rule recognises replaced by [`MARK`].
pub fn redact_arguments(arguments: &[String]) -> Vec<String> {
    let mut next_is_secret = false;
    arguments
        .iter()
        .map(|argument| {
            let mut redacted = String::with_capacity(argument.len());
            let mut copied = 0;
            for (start, word) in words(argument) {
                redacted.push_str(&argument[copied..start]);
                let (shown, introduces) = redact_word(word, next_is_secret);
                redacted.push_str(&shown);
                next_is_secret = introduces;
                copied = start + word.len();
            }
            redacted.push_str(&argument[copied..]);
            redacted
        })
        .collect()
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
            redact_arguments(&values)
        };
        for ((pair, value), redacted) in group.iter().zip(&values).zip(redacted) {
            if *value != redacted {
                let key = pair.raw.split_once('=').map_or(pair.raw, |(key, _)| key);
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

/// One word, redacted if it is a credential, and whether the word after it is one.
fn redact_word(word: &str, is_credential: bool) -> (Cow<'_, str>, bool) {
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
            return (Cow::Owned(format!("{name}{}", mask(last))), true);
        }
        return (Cow::Borrowed(word), true);
    }
    if is_credential {
        return (mask(word), false);
    }
    for separator in ['=', ':'] {
        if let Some((name, value)) = word.split_once(separator)
            && is_secret(name)
        {
            if value.trim_matches(['\'', '"']).is_empty() {
                // `X-Auth-Token:` with its value in the next word.
                return (Cow::Borrowed(word), separator == ':');
            }
            return (
                Cow::Owned(format!("{name}{separator}{}", mask(value))),
                false,
            );
        }
    }
    if let Some(masked) = url_password(word) {
        return (Cow::Owned(masked), false);
    }
    let flag = word.starts_with('-') && !word.contains('=');
    (Cow::Borrowed(word), flag && is_secret(word))
}

/// `word` with the password of its URL's user information masked, if it has one.
fn url_password(word: &str) -> Option<String> {
    let (scheme, rest) = word.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!(
        "{scheme}://{user}:{MARK}{}",
        &rest[userinfo.len()..]
    ))
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
    }
}
