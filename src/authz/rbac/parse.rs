//! Reading input: a YAML stream split into documents, each with the line it starts on, and each
//! document (or `v1` List item) checked for `kind` and `apiVersion`, decoded strictly into its
//! Kubernetes type, defaulted as the API server would (`pkg/apis/rbac/v1/defaults.go`, and
//! `default` for a namespaced object without a namespace), validated, and filed by kind.
//!
//! Must not: resolve bindings against roles (`build` does, once every source is loaded); an
//! error names the object, the document's line and, inside a List, the item index.

use std::fmt;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter, Spanned};

use super::validate::{check_binding, check_cluster_role, check_role};
use super::{Document, Location, PolicyError, PolicyWarning, RBAC_GROUP};

/// Splits a YAML stream (JSON is YAML too) into documents, each with its first line; syntax
/// errors keep their location.
pub fn documents(yaml: &str) -> Result<Vec<Document>, PolicyError> {
    let options = serde_saphyr::options! { with_snippet: false };
    let spanned: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(yaml, options)
        .map_err(|error| {
            let message = DefaultMessageFormatter.format_message(error.without_snippet());
            // The message may quote the input: keep control characters out of logs.
            let message: String = message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            match error.location() {
                Some(at) => PolicyError::new(
                    usize::try_from(at.line()).ok(),
                    format!("{message} (column {})", at.column()),
                ),
                None => PolicyError::new(None, message),
            }
        })?;
    Ok(spanned
        .into_iter()
        .map(|document| Document {
            line: usize::try_from(document.referenced.line()).unwrap_or(0),
            item: None,
            value: document.value,
        })
        .collect())
}

/// The API group and version of every RBAC kind this module reads.
const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

/// The namespace of a namespaced object that names none (`kubectl apply`'s default context).
const DEFAULT_NAMESPACE: &str = "default";

/// Where an object came from: its source, its document's first line and, inside a List, its
/// item index.
#[derive(Clone, Copy)]
pub(super) struct Origin<'s> {
    pub(super) source: &'s str,
    pub(super) line: usize,
    pub(super) item: Option<usize>,
}

impl Origin<'_> {
    fn error(&self, message: impl fmt::Display) -> PolicyError {
        let message = match self.item {
            Some(index) => format!("List items[{index}]: {message}"),
            None => message.to_string(),
        };
        PolicyError::new(Some(self.line), message)
    }

    fn location(&self) -> Location {
        Location {
            source: self.source.to_owned(),
            line: self.line,
        }
    }
}

/// An object with where it was read.
#[derive(Debug)]
pub(super) struct Located<T> {
    pub(super) location: Location,
    pub(super) object: T,
}

/// Everything loaded from the sources, before roles are resolved.
#[derive(Debug, Default)]
pub(super) struct Objects {
    pub(super) cluster_roles: Vec<Located<ClusterRole>>,
    pub(super) cluster_bindings: Vec<Located<ClusterRoleBinding>>,
    pub(super) roles: Vec<Located<Role>>,
    pub(super) role_bindings: Vec<Located<RoleBinding>>,
    pub(super) warnings: Vec<PolicyWarning>,
}

impl Objects {
    /// Checks `kind` and `apiVersion`, then validates the object (or List) and files it.
    pub(super) fn load(&mut self, value: Value, origin: &Origin<'_>) -> Result<(), PolicyError> {
        let text = |field| value.get(field).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion").to_owned(), text("kind").to_owned());
        let what = format!("{kind} {:?}", object_name(&value));
        let location = origin.location();
        let invalid = |message: String| origin.error(format!("{what}: {message}"));
        match (kind.as_str(), api_version.as_str()) {
            ("List", "v1") if origin.item.is_none() => self.load_list(value, origin)?,
            ("ClusterRole", RBAC_V1) => {
                let mut role: ClusterRole = typed(value, &what, origin)?;
                cluster_scoped(&mut role.metadata);
                check_cluster_role(&role).map_err(invalid)?;
                self.cluster_roles.push(Located {
                    location,
                    object: role,
                });
            }
            ("ClusterRoleBinding", RBAC_V1) => {
                let mut binding: ClusterRoleBinding = typed(value, &what, origin)?;
                cluster_scoped(&mut binding.metadata);
                default_binding(&mut binding.role_ref, binding.subjects.as_mut(), None);
                check_binding(
                    &binding.metadata,
                    &binding.role_ref,
                    &binding.subjects,
                    false,
                )
                .map_err(invalid)?;
                self.cluster_bindings.push(Located {
                    location,
                    object: binding,
                });
            }
            ("Role", RBAC_V1) => {
                let mut role: Role = typed(value, &what, origin)?;
                self.default_namespace("Role", &mut role.metadata, &location);
                check_role(&role).map_err(invalid)?;
                self.roles.push(Located {
                    location,
                    object: role,
                });
            }
            ("RoleBinding", RBAC_V1) => {
                let mut binding: RoleBinding = typed(value, &what, origin)?;
                self.default_namespace("RoleBinding", &mut binding.metadata, &location);
                let namespace = binding.metadata.namespace.clone();
                default_binding(
                    &mut binding.role_ref,
                    binding.subjects.as_mut(),
                    namespace.as_deref(),
                );
                check_binding(
                    &binding.metadata,
                    &binding.role_ref,
                    &binding.subjects,
                    true,
                )
                .map_err(invalid)?;
                self.role_bindings.push(Located {
                    location,
                    object: binding,
                });
            }
            ("List", _) if origin.item.is_some() => {
                return Err(origin.error("a List cannot hold another List"));
            }
            ("ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding" | "List", _) => {
                let expected = if kind == "List" { "v1" } else { RBAC_V1 };
                let message =
                    format!("{kind} has apiVersion {api_version:?}; expected {expected:?}");
                return Err(origin.error(message));
            }
            ("", _) => return Err(origin.error("the document has no \"kind\"")),
            _ => {
                return Err(origin.error(format!(
                    "unsupported kind {kind:?}; expected ClusterRole, ClusterRoleBinding, Role, \
                     RoleBinding or List"
                )));
            }
        }
        Ok(())
    }

    /// Loads every item of a top-level `kind: List` document.
    fn load_list(&mut self, mut value: Value, origin: &Origin<'_>) -> Result<(), PolicyError> {
        let items = match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(origin.error("List \"items\" is not a sequence")),
        };
        for (index, item) in items.into_iter().enumerate() {
            let item_origin = Origin {
                item: Some(index),
                ..*origin
            };
            self.load(item, &item_origin)?;
        }
        Ok(())
    }

    /// Puts a namespaced object without a namespace in `default`, with a warning.
    fn default_namespace(&mut self, kind: &'static str, metadata: &mut ObjectMeta, at: &Location) {
        if metadata.namespace.as_deref().is_none_or(str::is_empty) {
            metadata.namespace = Some(DEFAULT_NAMESPACE.to_owned());
            self.warnings.push(PolicyWarning::DefaultNamespace {
                kind,
                name: metadata.name.clone().unwrap_or_default(),
                location: at.clone(),
            });
        }
    }

    /// Moves everything `other` loaded after what this holds.
    pub(super) fn append(&mut self, mut other: Objects) {
        self.cluster_roles.append(&mut other.cluster_roles);
        self.cluster_bindings.append(&mut other.cluster_bindings);
        self.roles.append(&mut other.roles);
        self.role_bindings.append(&mut other.role_bindings);
        self.warnings.append(&mut other.warnings);
    }
}

/// Drops a cluster-scoped object's namespace, as the API server does: `b` and `monitoring/b` are
/// one ClusterRoleBinding there, so here a second of them is a duplicate, not another binding.
fn cluster_scoped(metadata: &mut ObjectMeta) {
    metadata.namespace = None;
}

/// Converts a document to its Kubernetes type, strictly as `kubectl apply`'s field validation
/// would: a field the type does not have is an error. The `k8s-openapi` types skip such fields,
/// and a misspelled `resourceNames` would otherwise leave its rule open to every name; so what
/// the typed object writes back must hold every field given (a `null` aside).
fn typed<T: DeserializeOwned + Serialize>(
    value: Value,
    what: &str,
    origin: &Origin<'_>,
) -> Result<T, PolicyError> {
    let object: T = serde_json::from_value(value.clone()).map_err(|error| {
        let error = error.to_string();
        // Like kubectl's YAML 1.1 reader, serde-saphyr reads a bare `y` or `no` as a boolean.
        let hint = match error.contains("invalid type: boolean") {
            true => "; unquoted y, n, yes, no, on and off are booleans in YAML: quote them",
            false => "",
        };
        origin.error(format!("{what}: {error}{hint}"))
    })?;
    let known =
        serde_json::to_value(&object).map_err(|error| origin.error(format!("{what}: {error}")))?;
    match unknown_field(&value, &known) {
        Some(path) => Err(origin.error(format!("{what}: unknown field \"{path}\""))),
        None => Ok(object),
    }
}

/// The first field of `given` that `known` (the same document as its type writes it) lacks, as a
/// path such as `rules[0].resourceName`.
fn unknown_field(given: &Value, known: &Value) -> Option<String> {
    match (given, known) {
        (Value::Object(given), Value::Object(known)) => {
            given.iter().find_map(|(key, value)| match known.get(key) {
                Some(known) => unknown_field(value, known).map(|path| nested(key, &path)),
                None if value.is_null() => None,
                None => Some(key.clone()),
            })
        }
        (Value::Array(given), Value::Array(known)) => {
            given
                .iter()
                .zip(known)
                .enumerate()
                .find_map(|(at, (given, known))| {
                    unknown_field(given, known).map(|path| nested(&format!("[{at}]"), &path))
                })
        }
        _ => None,
    }
}

/// `outer` then `inner` as one field path: `rules` and `[0]`, `[0]` and `resourceName`.
fn nested(outer: &str, inner: &str) -> String {
    match inner.starts_with('[') {
        true => format!("{outer}{inner}"),
        false => format!("{outer}.{inner}"),
    }
}

/// `metadata.name` of a not-yet-typed object, for messages.
fn object_name(value: &Value) -> &str {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `SetDefaults_*RoleBinding` and `SetDefaults_Subject`: an empty `apiGroup` of the role
/// reference, and of `User` and `Group` subjects, means `rbac.authorization.k8s.io`. In a
/// RoleBinding (`namespace` given), a ServiceAccount subject without a namespace is in the
/// binding's, as `appliesToUser` reads it.
fn default_binding(
    role_ref: &mut RoleRef,
    subjects: Option<&mut Vec<Subject>>,
    namespace: Option<&str>,
) {
    if role_ref.api_group.is_empty() {
        RBAC_GROUP.clone_into(&mut role_ref.api_group);
    }
    for subject in subjects.into_iter().flatten() {
        let unset = subject.api_group.as_deref().is_none_or(str::is_empty);
        if unset && matches!(subject.kind.as_str(), "User" | "Group") {
            subject.api_group = Some(RBAC_GROUP.to_owned());
        }
        let no_namespace = subject.namespace.as_deref().is_none_or(str::is_empty);
        if subject.kind == "ServiceAccount" && no_namespace {
            subject.namespace = namespace.map(str::to_owned);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::authz::rbac::fixtures::*;

    #[test]
    fn list_documents_are_unpacked() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n\
                    - apiVersion: rbac.authorization.k8s.io/v1\n  kind: ClusterRole\n  metadata: {name: r}\n  \
                    rules: [{apiGroups: [''], resources: [nodes/proxy], verbs: [get]}]\n\
                    - apiVersion: rbac.authorization.k8s.io/v1\n  kind: ClusterRoleBinding\n  metadata: {name: b}\n  \
                    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n  \
                    subjects: [{kind: User, name: alice}]\n";
        let (policy, warnings) = parse(yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(alice_may(&policy, &node("proxy", "get")));
    }

    #[test]
    fn kubectl_output_parses() {
        // The shape of `kubectl get clusterrole,clusterrolebinding -o yaml`, trimmed.
        let yaml = r#"apiVersion: v1
items:
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata:
    annotations:
      rbac.authorization.kubernetes.io/autoupdate: "true"
    creationTimestamp: "2024-05-01T10:00:00Z"
    labels:
      kubernetes.io/bootstrapping: rbac-defaults
    managedFields:
    - apiVersion: rbac.authorization.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:annotations:
            .: {}
      manager: kube-apiserver
      operation: Update
      time: 2024-05-01T10:00:00Z
    name: system:kubelet-api-admin
    resourceVersion: "74"
  rules:
  - apiGroups:
    - ""
    resources:
    - nodes/log
    - nodes/proxy
    verbs:
    - '*'
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata:
    name: kube-apiserver-kubelet-admin
  roleRef:
    apiGroup: rbac.authorization.k8s.io
    kind: ClusterRole
    name: system:kubelet-api-admin
  subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: User
    name: alice
kind: List
metadata:
  resourceVersion: ""
"#;
        let (policy, warnings) = parse(yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(alice_may(&policy, &node("proxy", "create")));
        assert!(!alice_may(&policy, &node("stats", "get")));
    }

    #[test]
    fn list_item_errors_name_the_item() {
        let yaml =
            "# a comment\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod}\n";
        let error = parse_error(yaml);
        assert_eq!(error.line, Some(2));
        assert!(
            error
                .message
                .starts_with("List items[0]: unsupported kind \"Pod\""),
            "{error}"
        );
    }

    #[test]
    fn nested_lists_are_rejected() {
        let yaml =
            "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: List, items: []}\n";
        let error = parse_error(yaml);
        assert_eq!(
            error.to_string(),
            "line 1: List items[0]: a List cannot hold another List"
        );
    }

    #[test]
    fn empty_list_is_accepted_with_a_warning() {
        let (policy, warnings) = parse("apiVersion: v1\nkind: List\nitems: []\n");
        assert_eq!(policy.bindings().count(), 0);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn yaml_syntax_errors_carry_their_line() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]")) + "kind: [unclosed\n";
        let error = parse_error(&yaml);
        assert_eq!(error.line, Some(11), "{error}");
        assert!(error.to_string().starts_with("line 11: "), "{error}");
        assert!(error.message.contains("column"), "{error}");
    }

    #[test]
    fn duplicate_keys_are_a_yaml_error() {
        let error = parse_error("kind: ClusterRole\nkind: Role\n");
        assert_eq!(error.line, Some(2), "{error}");
    }

    #[test]
    fn unknown_kind_names_the_document_line() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + "# the next document starts below\n\napiVersion: apps/v1\nkind: Deployment\n";
        let error = parse_error(&yaml);
        assert_eq!(error.line, Some(13), "{error}");
        assert!(
            error.message.contains("unsupported kind \"Deployment\""),
            "{error}"
        );
    }

    #[test]
    fn wrong_api_version_is_an_error() {
        let error =
            parse_error("apiVersion: rbac.authorization.k8s.io/v1beta1\nkind: ClusterRole\n");
        assert_eq!(error.line, Some(1));
        assert!(error.message.contains("v1beta1"), "{error}");
        let error = parse_error("apiVersion: rbac.authorization.k8s.io/v1\nkind: List\n");
        assert!(error.message.contains("expected \"v1\""), "{error}");
    }

    #[test]
    fn document_without_kind_is_an_error() {
        assert!(
            parse_error("just a string\n")
                .message
                .contains("no \"kind\"")
        );
        assert!(parse_error("- a\n- b\n").message.contains("no \"kind\""));
    }

    #[test]
    fn empty_stream_is_an_error() {
        assert_eq!(parse_error("").line, None);
        assert!(
            parse_error("# only a comment\n---\n")
                .message
                .contains("no documents")
        );
    }

    #[test]
    fn type_errors_name_the_object_and_its_document() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + &cluster_role(
                "bad",
                "{}",
                "rules:\n- apiGroups: ['']\n  resources: [nodes]\n  verbs: get",
            );
        let error = parse_error(&yaml);
        assert_eq!(error.line, Some(11));
        assert!(
            error
                .message
                .starts_with("ClusterRole \"bad\": invalid type"),
            "{error}"
        );
    }

    #[test]
    fn yaml_booleans_in_string_fields_get_a_hint() {
        let error = parse_error(&cluster_role("no", "{}", "rules: []"));
        assert!(
            error.message.contains("invalid type: boolean `false`"),
            "{error}"
        );
        assert!(error.message.contains("quote them"), "{error}");
        let (_, warnings) = parse(&cluster_role("'no'", "{}", "rules: []"));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn ignored_objects_are_still_type_checked() {
        let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: v, namespace: ns}\n\
                    rules: [{verbs: get}]\n";
        let error = parse_error(yaml);
        assert!(
            error.message.starts_with("Role \"v\": invalid type"),
            "{error}"
        );
    }
}
