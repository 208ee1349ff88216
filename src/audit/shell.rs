//! Command arguments joined as a POSIX shell would show them (`printf '%q '` in bash, Python's
//! `shlex.join`), so that an audit reader sees where each argument begins and ends.
//!
//! An argument of safe characters only (`A-Z a-z 0-9 @ % + = : , . / - _`) is shown as it is; an
//! empty one as `''`; one with a control character (a newline, a tab, an escape) or an invisible
//! one that changes how text reads (bidirectional overrides such as U+202E, zero-width characters:
//! a "Trojan Source" command would otherwise show a SIEM reader something else than what ran) in
//! bash's `$'…'` form with `\n`, `\t`, `\xHH`, `\uHHHH` escapes; any other in single quotes, a
//! quote inside becoming `'\''`. Pasting the result into a shell gives the same arguments back.

use std::borrow::Cow;
use std::fmt::Write;

/// The arguments quoted as a shell would need them and joined with single spaces.
pub fn shell_join(arguments: &[String]) -> String {
    let quoted: Vec<Cow<'_, str>> = arguments.iter().map(|a| quote(a)).collect();
    quoted.join(" ")
}

/// One argument, quoted if a shell would need it.
fn quote(argument: &str) -> Cow<'_, str> {
    if argument.is_empty() {
        return Cow::Borrowed("''");
    }
    if argument.chars().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, '@' | '%' | '+' | '=' | ':' | ',' | '.' | '/' | '-' | '_')
    }) {
        return Cow::Borrowed(argument);
    }
    if !argument.chars().any(hidden) {
        return Cow::Owned(format!("'{}'", argument.replace('\'', r"'\''")));
    }
    let mut quoted = String::from("$'");
    for c in argument.chars() {
        match c {
            '\n' => quoted.push_str(r"\n"),
            '\t' => quoted.push_str(r"\t"),
            '\r' => quoted.push_str(r"\r"),
            '\\' => quoted.push_str(r"\\"),
            '\'' => quoted.push_str(r"\'"),
            c if c.is_ascii_control() => {
                let _ = write!(quoted, "\\x{:02x}", u32::from(c));
            }
            c if hidden(c) => {
                let _ = write!(quoted, "\\u{:04x}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    Cow::Owned(quoted)
}

/// Whether `c` is a control character or an invisible one that changes how the text around it
/// reads: Unicode's format characters that matter here (soft hyphen, bidirectional marks,
/// embeddings, overrides and isolates, zero-width characters, the byte-order mark).
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206f}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(arguments: &[&str]) -> String {
        let arguments: Vec<String> = arguments.iter().map(|a| (*a).to_owned()).collect();
        shell_join(&arguments)
    }

    #[test]
    fn safe_arguments_stay_as_they_are() {
        assert_eq!(
            joined(&["ls", "-l", "/var/log", "a=b,c:d@e%f+g"]),
            "ls -l /var/log a=b,c:d@e%f+g"
        );
        assert_eq!(joined(&[]), "");
    }

    #[test]
    fn spaces_quotes_and_shell_syntax_are_single_quoted() {
        assert_eq!(
            joined(&[
                "sh",
                "-c",
                "echo \"it's\" > /tmp/x; id",
                "",
                "~",
                "$HOME",
                "✓"
            ]),
            r#"sh -c 'echo "it'\''s" > /tmp/x; id' '' '~' '$HOME' '✓'"#
        );
    }

    #[test]
    fn control_characters_use_bashs_dollar_quotes() {
        assert_eq!(
            joined(&["printf", "a\nb\tc\u{1b}[0m'\\", "\u{85}"]),
            r"printf $'a\nb\tc\x1b[0m\'\\' $'\u0085'"
        );
    }

    #[test]
    fn characters_that_change_how_a_command_reads_are_escaped() {
        // Shown raw, U+202E would make `rm -rf /tmp/x #/gol.txt` read otherwise.
        assert_eq!(
            joined(&["sh", "-c", "rm -rf /tmp/x #\u{202e}txt.log", "a\u{200b}b"]),
            r"sh -c $'rm -rf /tmp/x #\u202etxt.log' $'a\u200bb'"
        );
        assert_eq!(joined(&["café"]), "'café'", "other text is not escaped");
    }
}
