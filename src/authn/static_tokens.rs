//! Static bearer tokens: kube-apiserver's `--token-auth-file`, the authenticator of embedded mode.
//!
//! Owns: parsing the token file into a table from token digest to [`Identity`] (the tokens
//! themselves are not kept), and looking tokens up.
//!
//! Must not: read files, log, or reveal a token. No error message and no `Debug` output contains
//! a token: errors name lines, and [`StaticTokens`] prints only how many tokens it holds.
//!
//! Follows `staging/src/k8s.io/apiserver/pkg/authentication/token/tokenfile/tokenfile.go`: one
//! record a line, `token,user,uid[,"group1,group2"]`, fields quoted as Go's `encoding/csv` quotes
//! them (a quoted field may hold commas, and `""` stands for one `"`), columns after the fourth
//! ignored, the groups column split on commas. Deliberately stricter or friendlier where
//! kube-apiserver only warns or silently misbehaves:
//! - lines that are blank or start with `#` are skipped (kube-apiserver has no comments);
//! - an empty token, an empty user name, a token holding whitespace (no `Authorization` header
//!   could carry it) and a repeated token are errors, as is a file without any token;
//! - group names are trimmed and empty ones dropped (`"a, b,"` is `a` and `b`);
//! - a quoted field cannot span lines.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::authn::Identity;
use crate::authn::token::TokenDigest;

/// The identities of a token file, by token digest.
#[derive(Clone)]
pub struct StaticTokens {
    /// By the token's digest, as the token cache keeps them: the file's tokens are not kept.
    /// Shared with the token cache, so a cached identity costs no second copy.
    by_token: HashMap<TokenDigest, Arc<Identity>>,
}

/// Why a token file was rejected. Never contains a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFileError {
    /// A record is malformed.
    #[error("line {line}: {problem}")]
    Record {
        /// 1-based line of the record.
        line: usize,
        /// What is wrong with it.
        problem: RecordProblem,
    },
    /// The file has no record at all, only blank or comment lines.
    #[error("the token file holds no tokens")]
    NoTokens,
}

/// What is wrong with one record of a token file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordProblem {
    /// Fewer than the three columns token, user, uid.
    #[error("expected at least 3 columns (token,user,uid), found {0}")]
    TooFewColumns(usize),
    /// The token column is empty.
    #[error("the token is empty")]
    EmptyToken,
    /// The token holds whitespace, so no bearer token header could present it.
    #[error("the token holds whitespace")]
    WhitespaceInToken,
    /// The user name column is empty.
    #[error("the user name is empty")]
    EmptyUser,
    /// The same token appears on an earlier line.
    #[error("the token repeats the one on line {first_line}")]
    DuplicateToken {
        /// 1-based line where the token first appears.
        first_line: usize,
    },
    /// A quoted field has no closing quote on its line.
    #[error("a quoted field is not closed on this line")]
    UnclosedQuote,
    /// A closing quote is followed by something other than a comma or the end of the line.
    #[error("a closing quote is followed by text other than a comma")]
    TextAfterQuote,
    /// An unquoted field holds a quote.
    #[error("an unquoted field holds a '\"'")]
    BareQuote,
}

impl StaticTokens {
    /// Parses the text of a token file.
    pub fn parse(text: &str) -> Result<StaticTokens, TokenFileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut by_token = HashMap::new();
        // Identities with the same groups share one list: a file of ten thousand service
        // accounts in a handful of groups keeps a handful of lists.
        let mut group_lists: HashSet<Arc<[String]>> = HashSet::new();
        for (line, record) in records(text) {
            let at_line = |problem| TokenFileError::Record { line, problem };
            let (token, identity) = record.map_err(at_line)?;
            let mut identity = identity.authenticated();
            match group_lists.get(&identity.groups) {
                Some(shared) => identity.groups = Arc::clone(shared),
                None => {
                    group_lists.insert(Arc::clone(&identity.groups));
                }
            }
            match by_token.entry(TokenDigest::of(&token)) {
                Entry::Occupied(_) => {
                    let first_line = first_line_of(text, &token);
                    return Err(at_line(RecordProblem::DuplicateToken { first_line }));
                }
                Entry::Vacant(slot) => {
                    slot.insert(Arc::new(identity));
                }
            }
        }
        if by_token.is_empty() {
            return Err(TokenFileError::NoTokens);
        }
        Ok(StaticTokens { by_token })
    }

    /// The identity the file gives `token`, or `None` for an unknown token.
    /// Every identity has `system:authenticated` added, as the token authenticator adds it.
    pub fn lookup(&self, token: &str) -> Option<&Arc<Identity>> {
        self.by_token.get(&TokenDigest::of(token))
    }

    /// How many tokens the file defines (for a startup log line).
    pub fn token_count(&self) -> usize {
        self.by_token.len()
    }
}

/// Shows only the number of tokens: a token must never reach a log.
impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("tokens", &self.by_token.len())
            .finish_non_exhaustive()
    }
}

/// The records of a file with their 1-based line numbers, skipping blank lines and comments.
fn records(text: &str) -> impl Iterator<Item = (usize, Result<(String, Identity), RecordProblem>)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
        .map(|(index, line)| (index + 1, record(line)))
}

/// The line where `token` first appears; called once a later line repeats it, so there is one.
fn first_line_of(text: &str, token: &str) -> usize {
    records(text)
        .find_map(|(line, record)| record.is_ok_and(|(t, _)| t == token).then_some(line))
        .unwrap_or_default()
}

/// One record: its token and the identity it stands for.
fn record(line: &str) -> Result<(String, Identity), RecordProblem> {
    let fields = fields(line)?;
    let [token, name, uid, rest @ ..] = fields.as_slice() else {
        return Err(RecordProblem::TooFewColumns(fields.len()));
    };
    if token.is_empty() {
        return Err(RecordProblem::EmptyToken);
    }
    if token.chars().any(char::is_whitespace) {
        return Err(RecordProblem::WhitespaceInToken);
    }
    if name.is_empty() {
        return Err(RecordProblem::EmptyUser);
    }
    let groups = rest.first().map(String::as_str).unwrap_or_default();
    let groups: Vec<String> = groups
        .split(',')
        .map(str::trim)
        .filter(|group| !group.is_empty())
        .map(str::to_owned)
        .collect();
    let identity = Identity::new(name.clone(), uid.clone(), groups, BTreeMap::new());
    Ok((token.clone(), identity))
}

/// Splits one line into CSV fields (RFC 4180 quoting, as Go's `encoding/csv` without lazy quotes).
fn fields(line: &str) -> Result<Vec<String>, RecordProblem> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let (field, after_comma) = match rest.strip_prefix('"') {
            Some(quoted) => quoted_field(quoted)?,
            None => bare_field(rest)?,
        };
        fields.push(field);
        match after_comma {
            Some(next) => rest = next,
            None => return Ok(fields),
        }
    }
}

/// A field after its opening quote: its value and the text after the next comma, if any.
fn quoted_field(text: &str) -> Result<(String, Option<&str>), RecordProblem> {
    let mut value = String::new();
    let mut rest = text;
    loop {
        let Some((chunk, after_quote)) = rest.split_once('"') else {
            return Err(RecordProblem::UnclosedQuote);
        };
        value.push_str(chunk);
        if let Some(after_escape) = after_quote.strip_prefix('"') {
            value.push('"');
            rest = after_escape;
            continue;
        }
        return match after_quote.strip_prefix(',') {
            Some(next) => Ok((value, Some(next))),
            None if after_quote.is_empty() => Ok((value, None)),
            None => Err(RecordProblem::TextAfterQuote),
        };
    }
}

/// An unquoted field: its value and the text after the next comma, if any.
fn bare_field(text: &str) -> Result<(String, Option<&str>), RecordProblem> {
    let (value, next) = match text.split_once(',') {
        Some((value, next)) => (value, Some(next)),
        None => (text, None),
    };
    if value.contains('"') {
        return Err(RecordProblem::BareQuote);
    }
    Ok((value.to_owned(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> StaticTokens {
        StaticTokens::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problem(text: &str) -> (usize, RecordProblem) {
        match StaticTokens::parse(text) {
            Err(TokenFileError::Record { line, problem }) => (line, problem),
            other => panic!("expected a record error, got {other:?}"),
        }
    }

    #[test]
    fn three_columns_give_an_identity_without_groups() {
        let tokens = parse("s3cr3t,alice,1001\n");
        let alice = tokens.lookup("s3cr3t").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "1001");
        assert_eq!(alice.groups[..], ["system:authenticated"]);
        assert!(alice.extra.is_empty());
    }

    #[test]
    fn quoted_fourth_column_holds_groups() {
        let tokens = parse("t,alice,1,\"system:masters,ops\"\n");
        assert_eq!(
            tokens.lookup("t").unwrap().groups[..],
            ["system:masters", "ops", "system:authenticated"]
        );
    }

    #[test]
    fn unquoted_fourth_column_is_one_group() {
        // As in Go's CSV reader, an unquoted comma starts a fifth column, which is ignored.
        let tokens = parse("t,alice,1,ops,extra\n");
        assert_eq!(
            tokens.lookup("t").unwrap().groups[..],
            ["ops", "system:authenticated"]
        );
    }

    #[test]
    fn group_names_are_trimmed_and_empty_ones_dropped() {
        let tokens = parse("t,alice,1,\" a, b ,,\"\nu,bob,2,\n");
        assert_eq!(
            tokens.lookup("t").unwrap().groups[..],
            ["a", "b", "system:authenticated"]
        );
        assert_eq!(
            tokens.lookup("u").unwrap().groups[..],
            ["system:authenticated"]
        );
    }

    #[test]
    fn doubled_quotes_escape_a_quote() {
        let tokens = parse("\"to\"\"ken\",\"al\"\"ice\",\"\"\n");
        let identity = tokens.lookup("to\"ken").unwrap();
        assert_eq!(identity.name, "al\"ice");
        assert_eq!(identity.uid, "");
    }

    #[test]
    fn quoted_fields_may_hold_commas() {
        let tokens = parse("\"a,b\",\"last, first\",1\n");
        assert_eq!(tokens.lookup("a,b").unwrap().name, "last, first");
        assert!(tokens.lookup("a").is_none());
    }

    #[test]
    fn comments_blank_lines_crlf_and_bom_are_handled() {
        let text = "\u{feff}# operators\r\n\r\n   \r\nt1,alice,1\r\n  # indented comment\nt2,bob,2";
        let tokens = parse(text);
        assert_eq!(tokens.token_count(), 2);
        assert_eq!(tokens.lookup("t1").unwrap().uid, "1");
        assert_eq!(tokens.lookup("t2").unwrap().name, "bob");
    }

    #[test]
    fn identities_with_the_same_groups_share_one_list() {
        let tokens = parse("t1,alice,1,\"ops,dev\"\nt2,bob,2,\"ops,dev\"\nt3,carol,3,ops\n");
        let [alice, bob, carol] = ["t1", "t2", "t3"].map(|t| tokens.lookup(t).unwrap());
        assert!(Arc::ptr_eq(&alice.groups, &bob.groups));
        assert!(!Arc::ptr_eq(&alice.groups, &carol.groups));
        assert_eq!(carol.groups[..], ["ops", "system:authenticated"]);
    }

    #[test]
    fn lookup_is_exact() {
        let tokens = parse("Token,alice,1\n");
        assert!(tokens.lookup("Token").is_some());
        for wrong in ["token", "Toke", "Token ", "Tokenx", ""] {
            assert!(tokens.lookup(wrong).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn too_few_columns_is_an_error_with_its_line() {
        assert_eq!(
            problem("t,alice,1\n# c\nu,bob\n"),
            (3, RecordProblem::TooFewColumns(2))
        );
        assert_eq!(
            problem("justonefield\n"),
            (1, RecordProblem::TooFewColumns(1))
        );
    }

    #[test]
    fn empty_token_or_user_is_an_error() {
        assert_eq!(problem(",alice,1\n"), (1, RecordProblem::EmptyToken));
        assert_eq!(problem("\"\",alice,1\n"), (1, RecordProblem::EmptyToken));
        assert_eq!(problem("t,,1\n"), (1, RecordProblem::EmptyUser));
    }

    #[test]
    fn empty_uid_is_allowed() {
        assert_eq!(parse("t,alice,\n").lookup("t").unwrap().uid, "");
    }

    #[test]
    fn token_with_whitespace_is_an_error() {
        assert_eq!(
            problem("t , alice, 1\n"),
            (1, RecordProblem::WhitespaceInToken)
        );
        assert_eq!(
            problem("\"a b\",alice,1\n"),
            (1, RecordProblem::WhitespaceInToken)
        );
    }

    #[test]
    fn duplicate_token_is_an_error_naming_both_lines() {
        let text = "t,alice,1\nu,bob,2\n\nt,carol,3\n";
        let first_line = 1;
        assert_eq!(
            problem(text),
            (4, RecordProblem::DuplicateToken { first_line })
        );
    }

    #[test]
    fn file_without_tokens_is_an_error() {
        for text in ["", "\n\n", "# nothing yet\n", "\u{feff}"] {
            assert_eq!(
                StaticTokens::parse(text).unwrap_err(),
                TokenFileError::NoTokens,
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_quoting_is_an_error() {
        assert_eq!(problem("\"t,alice,1\n"), (1, RecordProblem::UnclosedQuote));
        assert_eq!(
            problem("t,alice,1,\"a,b\nc\"\n"),
            (1, RecordProblem::UnclosedQuote)
        );
        assert_eq!(
            problem("\"t\"x,alice,1\n"),
            (1, RecordProblem::TextAfterQuote)
        );
        assert_eq!(problem("t,al\"ice,1\n"), (1, RecordProblem::BareQuote));
        assert_eq!(problem("t, \"alice\",1\n"), (1, RecordProblem::BareQuote));
    }

    #[test]
    fn errors_and_debug_never_show_a_token() {
        let secret = "hunter2-very-secret";
        let texts = [
            format!("{secret},alice,1\n{secret},bob,2\n"),
            format!("{secret} x,alice,1\n"),
            format!("{secret},,1\n"),
            format!("{secret}\n"),
            format!("\"{secret}\n"),
        ];
        for text in &texts {
            let error = StaticTokens::parse(text).unwrap_err();
            assert!(!error.to_string().contains("hunter2"), "{error}");
            assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
        }
        let tokens = parse(&format!("{secret},alice,1\n"));
        assert_eq!(format!("{tokens:?}"), "StaticTokens { tokens: 1, .. }");
    }

    #[test]
    fn error_messages_name_the_line() {
        let error = StaticTokens::parse("t,alice,1\nt,bob,2\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 2: the token repeats the one on line 1"
        );
        let error = StaticTokens::parse("x\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "line 1: expected at least 3 columns (token,user,uid), found 1"
        );
    }

    #[test]
    fn parse_never_panics_on_short_inputs() {
        // Every string of up to five symbols from the characters that steer the parser.
        let alphabet = ['"', ',', '\n', '#', ' ', 'a', '\r', 'é'];
        let mut inputs = vec![String::new()];
        for _ in 0..5 {
            let longer: Vec<String> = inputs
                .iter()
                .flat_map(|input| alphabet.iter().map(move |c| format!("{input}{c}")))
                .collect();
            for input in &longer {
                let _ = StaticTokens::parse(input);
            }
            inputs = longer;
        }
    }
}
