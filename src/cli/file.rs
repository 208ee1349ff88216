//! `serve --config FILE`: a YAML mapping whose keys are the flags' names without their dashes
//! (`listen: 10.0.0.10:10250`, `tls-cert-file: /var/lib/kubelet/pki/kubelet.crt`), a list for a
//! flag that takes several values (`auth-token-audiences: [a, b]`).
//!
//! The file fills in only what neither a flag nor a `KUBELET_GUARD_*` variable set (clap's value
//! source says which), so the order is flags, then environment, then file, then defaults. Each
//! value goes through its flag's own parser, so no flag is described twice, and an unknown key or
//! a bad value is an error naming the file and the line. So is a value the file gave that only
//! validation refuses (a zero timeout, two flags that contradict each other): [`FromFile`] keeps
//! where each came from, for `main` to name.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::Cli;

/// Why the command line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The flags themselves (including `--help` and `--version`, which are not failures).
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// The `--config` file.
    #[error("--config {}:{line}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The 1-based line at fault (0 when the file as a whole is).
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// The values `serve` took from its `--config` file: where each was written, so that an error
/// found when the flags are validated names the file and line as a parse error does.
#[derive(Debug, Default)]
pub struct FromFile {
    path: PathBuf,
    /// Each flag taken from the file (`--upstream-timeout`), with its 1-based line.
    lines: Vec<(String, u64)>,
}

impl FromFile {
    /// `--config PATH:LINE: ` for an error about `flag` when its value came from the file; empty
    /// when it came from the command line, the environment or the default.
    pub fn locate(&self, flag: &str) -> String {
        self.lines
            .iter()
            .find(|(taken, _)| taken == flag)
            .map(|(_, line)| format!("--config {}:{line}: ", self.path.display()))
            .unwrap_or_default()
    }
}

/// The file's entries in order, each with where it was written, and the file's text.
struct Entries(Vec<(Spanned<String>, Spanned<Value>)>, String);

/// A value as YAML typed it, a list's items with where each is written; flags take text.
enum Value {
    One(Scalar),
    Many(Vec<Spanned<Scalar>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

impl Cli {
    /// Parses `argv` (program name first) and, for `serve --config FILE`, fills in from the file
    /// every flag that neither the command line nor the environment set.
    pub fn parse_args<I, T>(argv: I) -> Result<Cli, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let file = matches
            .subcommand_matches("serve")
            .and_then(|serve| Some((serve, serve.get_one::<PathBuf>("config")?)));
        let Some((serve, path)) = file else {
            return Ok(Cli::from_arg_matches(&matches)?);
        };
        let serve_command = command
            .find_subcommand("serve")
            .ok_or_else(|| file_error(path, 0, "internal: no serve command"))?;
        let mut from_file = FromFile {
            path: path.clone(),
            lines: Vec::new(),
        };
        let Entries(entries, source) = read(path)?;
        for (key, value) in entries {
            let line = key.referenced.line();
            let Some(arg) = serve_command
                .get_arguments()
                .find(|arg| arg.get_long() == Some(key.value.as_str()))
                .filter(|arg| !matches!(arg.get_id().as_str(), "config" | "help"))
            else {
                return Err(file_error(
                    path,
                    line,
                    format!(
                        "unknown key {:?}: keys are serve's flag names without dashes",
                        key.value
                    ),
                ));
            };
            let flag = format!("--{}", key.value);
            let written = |at: &Location| {
                let span = at.span();
                let start = usize::try_from(span.byte_offset()?).ok()?;
                let len = usize::try_from(span.byte_len()?).ok()?;
                source.get(start..start.checked_add(len)?)
            };
            let line = value.referenced.line();
            let values = match value.value {
                Value::One(scalar) => vec![(scalar.texts(written(&value.defined)), line)],
                Value::Many(_) if !matches!(arg.get_action(), ArgAction::Append) => {
                    return Err(file_error(
                        path,
                        value.referenced.line(),
                        format!("{flag} takes one value, not a list"),
                    ));
                }
                // `[]` is the command line's `--flag=`: an empty list, not the default.
                Value::Many(scalars) if scalars.is_empty() => vec![(vec![String::new()], line)],
                Value::Many(scalars) => scalars
                    .into_iter()
                    .map(|scalar| {
                        let line = scalar.referenced.line();
                        (scalar.value.texts(written(&scalar.defined)), line)
                    })
                    .collect(),
            };
            let values = values
                .into_iter()
                .map(|(readings, line)| {
                    first_taken(&command, &flag, readings)
                        .map_err(|message| file_error(path, line, message))
                })
                .collect::<Result<Vec<String>, _>>()?;
            let set_elsewhere = matches!(
                serve.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if !set_elsewhere {
                argv.extend(
                    values
                        .iter()
                        .map(|text| OsString::from(format!("{flag}={text}"))),
                );
                from_file.lines.push((flag, value.referenced.line()));
            }
        }
        let matches = command.try_get_matches_from(&argv)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.from_file = from_file;
        Ok(cli)
    }
}

impl Scalar {
    /// The readings of a value, what the file says first: a number as written (`1.10`), then as
    /// YAML reads it (`1_000` is 1000); a boolean as YAML reads it (`yes` is `true`).
    fn texts(self, written: Option<&str>) -> Vec<String> {
        let typed = match self {
            Self::Bool(b) => return vec![b.to_string()],
            Self::Text(text) => return vec![text],
            Self::Integer(n) => n.to_string(),
            Self::Float(x) => x.to_string(),
        };
        // A quoted or block scalar read as a number (`!!int "0x1F"`) is written with its quotes or
        // its header: YAML's reading is the only one.
        match written {
            Some(written) if written != typed && !written.starts_with(['"', '\'', '|', '>']) => {
                vec![written.to_owned(), typed]
            }
            _ => vec![typed],
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Value;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::One(Scalar::Bool(b)))
            }

            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::One(Scalar::Integer(n)))
            }

            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(Value::One(match i64::try_from(n) {
                    Ok(n) => Scalar::Integer(n),
                    Err(_) => Scalar::Text(n.to_string()),
                }))
            }

            fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
                Ok(Value::One(Scalar::Float(x)))
            }

            fn visit_str<E>(self, text: &str) -> Result<Value, E> {
                Ok(Value::One(Scalar::Text(text.to_owned())))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Many(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a mapping of flag names to values")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries, String::new()))
            }

            fn visit_unit<E>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new(), String::new()))
            }

            fn visit_none<E>(self) -> Result<Entries, E> {
                Ok(Entries(Vec::new(), String::new()))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Of a value's readings, the first its flag's own parser takes, so the file accepts exactly
/// what the command line does; else that parser's refusal of the first.
fn first_taken(
    command: &clap::Command,
    flag: &str,
    readings: Vec<String>,
) -> Result<String, String> {
    let mut refusal = None;
    for text in readings {
        let alone = [
            "kubelet-guard".to_owned(),
            "serve".to_owned(),
            format!("{flag}={text}"),
        ];
        match command.clone().try_get_matches_from(alone) {
            Ok(_) => return Ok(text),
            Err(e) => {
                refusal.get_or_insert_with(|| clap_message(flag, &e));
            }
        }
    }
    Err(refusal.unwrap_or_default())
}

/// Reads and parses the file.
fn read(path: &Path) -> Result<Entries, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, 0, e))?;
    if text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Ok(Entries(Vec::new(), text));
    }
    let entries = serde_saphyr::from_str::<Entries>(&text).map_err(|e| {
        let line = e.location().map_or(0, |location| location.line());
        let rendered = e.to_string();
        let message = yaml_message(rendered.lines().next().unwrap_or_default());
        file_error(path, line, message)
    })?;
    Ok(Entries(entries.0, text))
}

/// serde-saphyr's first error line without the prefixes the file error already gives.
fn yaml_message(first: &str) -> String {
    let message = first.strip_prefix("error: ").unwrap_or(first);
    let message = match message.split_once(": ") {
        Some((place, rest)) if place.starts_with("line ") && place.contains(" column ") => rest,
        _ => message,
    };
    if let Some(rest) = message.strip_prefix("invalid type: unit value, ") {
        format!("no value: {rest}")
    } else if message.contains("untagged enum Scalar") {
        "a list takes plain values only".to_owned()
    } else if message.starts_with("expected mapping") {
        "expected a mapping of flag names to values".to_owned()
    } else {
        // Advice meant for the library's caller, not the operator.
        let message = message
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(message);
        message.to_owned()
    }
}

/// The one line of a clap error that says what is wrong, without clap's `error: ` prefix.
fn clap_message(flag: &str, e: &clap::Error) -> String {
    let rendered = e.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    if first.contains(flag) {
        first.to_owned()
    } else {
        format!("{flag}: {first}")
    }
}

fn file_error(path: &Path, line: u64, message: impl std::fmt::Display) -> CliError {
    CliError::File {
        path: path.to_owned(),
        line,
        message: message.to_string(),
    }
}
