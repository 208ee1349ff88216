//! Input loading: `-f` files, directories (recursively) and standard input, each a YAML or JSON
//! stream of Kubernetes objects or Lists, into one [`PolicyBuilder`] in lenient mode.
//!
//! Only the four RBAC kinds are kept, from plain streams (`helm template`), `kind: List` documents
//! (`kubectl get -o yaml`) and typed lists such as `ClusterRoleList` (whose items carry no kind);
//! every other object is skipped. Each file is loaded whole or not at all: a malformed file becomes
//! an [`InputError`] naming the file and line, and the other files are still audited.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::authz::rbac::{self, Document, MissingRoles, Policy, PolicyBuilder, PolicyWarning};

/// Everything read so far, before the policy is resolved.
pub(super) struct Inputs {
    builder: PolicyBuilder,
    notes: Vec<String>,
    errors: Vec<InputError>,
}

/// The inputs resolved into one policy.
pub(super) struct Loaded {
    /// Every object that loaded.
    pub(super) policy: Policy,
    /// What the evaluator noticed while resolving bindings.
    pub(super) policy_warnings: Vec<PolicyWarning>,
    /// What loading changed to audit an object (an old `apiVersion`).
    pub(super) notes: Vec<String>,
    /// The inputs that could not be audited.
    pub(super) errors: Vec<InputError>,
}

/// An input that could not be audited, with the file and line at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct InputError {
    /// The file, `-` for standard input, or `cluster`.
    pub(super) source: String,
    /// 1-based line of the offending document, when known.
    pub(super) line: Option<usize>,
    /// What is wrong.
    pub(super) message: String,
}

/// The four RBAC kinds.
const RBAC_KINDS: [&str; 4] = ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"];

/// The API group of the RBAC kinds, and the one version still served.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io/";
const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

/// Reads every `-f` path in order; `-` is standard input (read once).
pub(super) fn read_paths(paths: &[PathBuf], stdin: &mut dyn Read) -> Inputs {
    let mut inputs = Inputs::new();
    let mut stdin_read = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if std::mem::replace(&mut stdin_read, true) {
                inputs.error("-", None, "standard input given twice; read once");
                continue;
            }
            let mut text = String::new();
            match stdin.read_to_string(&mut text) {
                Ok(_) => inputs.add_text("-", &text),
                Err(e) => inputs.error("-", None, format!("cannot read standard input: {e}")),
            }
            continue;
        }
        let label = path.display().to_string();
        match fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                let mut files = Vec::new();
                if let Err(e) = walk(path, &mut files) {
                    inputs.error(&label, None, format!("cannot read the directory: {e}"));
                }
                if files.is_empty() {
                    inputs.error(
                        &label,
                        None,
                        "the directory holds no .yaml, .yml or .json file",
                    );
                }
                for file in files {
                    inputs.add_file(&file);
                }
            }
            Ok(_) => inputs.add_file(path),
            Err(e) => inputs.error(&label, None, e.to_string()),
        }
    }
    inputs
}

impl Inputs {
    /// No inputs yet.
    pub(super) fn new() -> Inputs {
        Inputs {
            builder: PolicyBuilder::new(MissingRoles::Report).with_stored_aggregates(),
            notes: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Adds the RBAC objects of one YAML or JSON stream, or records why it cannot be audited.
    pub(super) fn add_text(&mut self, source: &str, text: &str) {
        match parse_stream(text) {
            Ok(documents) => self.add_documents(source, documents),
            Err((line, message)) => self.error(source, line, message),
        }
    }

    /// Adds the RBAC objects among `documents`, skipping every other kind.
    pub(super) fn add_documents(&mut self, source: &str, documents: Vec<Document>) {
        let kept = self.rbac_only(source, documents);
        if let Err(e) = self.builder.add_source(source, kept) {
            self.error(source, e.line, e.message);
        }
    }

    /// Records an input that cannot be audited.
    pub(super) fn error(&mut self, source: &str, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(InputError {
            source: source.to_owned(),
            line,
            message: message.into(),
        });
    }

    /// Resolves every binding against the roles of every input.
    pub(super) fn finish(self) -> Loaded {
        let Inputs {
            builder,
            notes,
            mut errors,
        } = self;
        let (policy, policy_warnings) = match builder.build() {
            Ok(built) => built,
            // Lenient building reports what strict building rejects; keep the report whole anyway.
            Err(e) => {
                errors.push(InputError {
                    source: String::new(),
                    line: e.line,
                    message: e.message,
                });
                (Policy::default(), Vec::new())
            }
        };
        Loaded {
            policy,
            policy_warnings,
            notes,
            errors,
        }
    }

    fn add_file(&mut self, path: &Path) {
        let source = path.display().to_string();
        match fs::read(path).map(String::from_utf8) {
            Ok(Ok(text)) => self.add_text(&source, &text),
            Ok(Err(_)) => self.error(&source, None, "not UTF-8 text"),
            Err(e) => self.error(&source, None, e.to_string()),
        }
    }

    /// The RBAC objects of `documents`, Lists and bare arrays unpacked; older RBAC versions are
    /// read as `v1`.
    fn rbac_only(&mut self, source: &str, documents: Vec<Document>) -> Vec<Document> {
        let mut kept = Vec::new();
        for Document { line, value, .. } in documents {
            // `jq .items` and the like print a bare array: read it as the List it came from,
            // rather than skip it as an object of no kind.
            let value = match value {
                Value::Array(items) => serde_json::json!({"kind": "List", "items": items}),
                value => value,
            };
            let kind = text(&value, "kind");
            if kind == "List"
                || kind
                    .strip_suffix("List")
                    .is_some_and(|k| RBAC_KINDS.contains(&k))
            {
                let (item_kind, version) = (
                    kind.trim_end_matches("List").to_owned(),
                    text(&value, "apiVersion").to_owned(),
                );
                let Some(Value::Array(items)) = value.get("items").cloned() else {
                    continue;
                };
                for (index, mut item) in items.into_iter().enumerate() {
                    if !item_kind.is_empty() {
                        fill(&mut item, "kind", &item_kind);
                        fill(&mut item, "apiVersion", &version);
                    }
                    if let Some(item) = self.rbac_object(source, line, item) {
                        kept.push(Document {
                            line,
                            item: Some(index),
                            value: item,
                        });
                    }
                }
            } else if let Some(value) = self.rbac_object(source, line, value) {
                kept.push(Document {
                    line,
                    item: None,
                    value,
                });
            }
        }
        kept
    }

    /// `value` when it is an RBAC object, its `apiVersion` read as `v1`; `None` for anything else.
    fn rbac_object(&mut self, source: &str, line: usize, mut value: Value) -> Option<Value> {
        if !RBAC_KINDS.contains(&text(&value, "kind")) {
            return None;
        }
        let version = text(&value, "apiVersion").to_owned();
        if version != RBAC_V1 && version.starts_with(RBAC_GROUP) {
            let at = rbac::Location {
                source: source.to_owned(),
                line,
            };
            self.notes.push(format!(
                "{} {} ({at}) has apiVersion {version}, which Kubernetes no longer serves \
                 (removed in 1.22); audited as {RBAC_V1}",
                text(&value, "kind"),
                value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ));
            if let Some(field) = value.get_mut("apiVersion") {
                *field = Value::from(RBAC_V1);
            }
        }
        Some(value)
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source.as_str(), self.line) {
            ("", Some(line)) => write!(f, "line {line}: {}", self.message),
            ("", None) => f.write_str(&self.message),
            (source, Some(line)) if line > 0 => write!(f, "{source}:{line}: {}", self.message),
            (source, _) => write!(f, "{source}: {}", self.message),
        }
    }
}

/// Splits a stream into documents: JSON (one or more values, as `kubectl get -o json` writes)
/// when it starts with `{`, else YAML. Errors carry the line when known.
fn parse_stream(text: &str) -> Result<Vec<Document>, (Option<usize>, String)> {
    if !text.trim_start().starts_with('{') {
        return rbac::documents(text).map_err(|e| (e.line, e.message));
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut documents = Vec::new();
    loop {
        let before = stream.byte_offset();
        match stream.next() {
            None => return Ok(documents),
            Some(Ok(value)) => {
                let skipped = text
                    .get(before..)
                    .map_or(0, |rest| rest.len() - rest.trim_start().len());
                let start = text.get(..before + skipped).unwrap_or_default();
                let line = 1 + start.matches('\n').count();
                documents.push(Document {
                    line,
                    item: None,
                    value,
                });
            }
            Some(Err(e)) => return Err((Some(e.line()), format!("invalid JSON: {e}"))),
        }
    }
}

/// Collects the `.yaml`, `.yml` and `.json` files under `dir`, sorted, skipping hidden entries
/// and never following a symbolic link to a directory (no loops).
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&path, files)?;
        } else if (file_type.is_file() || path.is_file()) && has_manifest_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
}

fn has_manifest_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ["yaml", "yml", "json"].contains(&ext.to_ascii_lowercase().as_str()))
}

/// A top-level string field, or `""`.
fn text<'v>(value: &'v Value, field: &str) -> &'v str {
    value.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Sets a field a typed list's items leave out.
fn fill(item: &mut Value, field: &str, with: &str) {
    if let Some(object) = item.as_object_mut() {
        object.entry(field).or_insert_with(|| Value::from(with));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\n\
                        rules: [{apiGroups: [''], resources: [nodes/proxy], verbs: [get]}]\n";

    fn load(text: &str) -> Loaded {
        let mut inputs = Inputs::new();
        inputs.add_text("in.yaml", text);
        inputs.finish()
    }

    #[test]
    fn non_rbac_objects_are_skipped() {
        let text = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: a}}\n---\n{ROLE}---\n"
        );
        let loaded = load(&text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.policy.roles().count(), 1);
        assert_eq!(
            loaded.policy.roles().next().map(|r| r.location.line),
            Some(5)
        );
    }

    #[test]
    fn lists_are_filtered_and_typed_lists_filled_in() {
        let text = r#"{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleList",
            "items": [{"metadata": {"name": "a"}, "rules": []}]}
            {"apiVersion": "v1", "kind": "List", "items": [
              {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
              {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "b"}}]}"#;
        let loaded = load(text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let roles: Vec<_> = loaded
            .policy
            .roles()
            .map(|r| (r.name, r.location.line))
            .collect();
        assert_eq!(roles, [("a", 1), ("b", 3)]);
    }

    #[test]
    fn old_rbac_versions_are_audited_as_v1_with_a_note() {
        let loaded = load(&ROLE.replace("/v1", "/v1beta1"));
        assert_eq!(loaded.policy.roles().count(), 1);
        assert_eq!(loaded.notes.len(), 1);
        assert!(loaded.notes[0].contains("in.yaml:1"), "{:?}", loaded.notes);
    }

    #[test]
    fn malformed_yaml_names_file_and_line() {
        let loaded = load(&format!("{ROLE}---\nkind: [unclosed\n"));
        assert_eq!(loaded.errors.len(), 1);
        let error = loaded.errors[0].to_string();
        assert!(error.starts_with("in.yaml:6: "), "{error}");
        assert_eq!(
            loaded.policy.roles().count(),
            0,
            "a file loads whole or not at all"
        );
    }

    #[test]
    fn malformed_json_names_its_line() {
        let loaded = load("{\"kind\": \"List\",\n \"items\": [\n}\n");
        assert_eq!(loaded.errors[0].line, Some(3));
    }

    #[test]
    fn invalid_rbac_object_names_its_document() {
        let loaded = load(&format!("{ROLE}---\n{}", ROLE.replace("[get]", "get")));
        assert_eq!(loaded.errors[0].line, Some(6));
        assert!(loaded.errors[0].message.contains("ClusterRole \"r\""));
    }
}
