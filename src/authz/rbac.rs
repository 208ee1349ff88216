//! Kubernetes RBAC evaluated locally: the authorizer of embedded mode (`--rbac-policy-file`).
//!
//! Owns: turning a YAML stream of `rbac.authorization.k8s.io/v1` objects into a validated
//! [`Policy`], flattening aggregated ClusterRoles, and answering whether some ClusterRoleBinding
//! grants an identity a resource request.
//!
//! Must not: read files, log, know HTTP or kubelet paths (the caller turns a request into a
//! [`ResourceRequest`]), or add implicit groups such as `system:authenticated` (the caller does).
//! Roles and RoleBindings are loaded and reported, never used: kubelet resources (`nodes/*`) are
//! cluster-scoped, and a namespaced binding cannot grant cluster-scoped access.
//!
//! Follows Kubernetes, so a file means here what it would mean in a cluster:
//! - matching: `pkg/apis/rbac/v1/evaluation_helpers.go` (`VerbMatches`, `APIGroupMatches`,
//!   `ResourceMatches`, `ResourceNameMatches`) as combined by `RuleAllows` in
//!   `plugin/pkg/auth/authorizer/rbac/rbac.go`;
//! - subjects: `appliesToUser` in `rbac.go`, after the defaults of `pkg/apis/rbac/v1/defaults.go`;
//! - validation: `pkg/apis/rbac/validation/validation.go` for ClusterRoles and ClusterRoleBindings
//!   (what the API server would reject, we reject; Roles and RoleBindings are only type-checked);
//! - aggregation: `pkg/controller/clusterroleaggregation`, taken to its fixed point at parse time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::{DefaultMessageFormatter, MessageFormatter, Spanned};

use crate::authn::Identity;

/// A validated RBAC policy: every ClusterRoleBinding with the effective rules of its role.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    bindings: Vec<Binding>,
}

/// The attributes of one resource request, as the Kubernetes RBAC authorizer sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceRequest<'a> {
    /// API group of the resource; `""` is the core group (where `nodes` lives).
    pub api_group: &'a str,
    /// Resource, e.g. `nodes`.
    pub resource: &'a str,
    /// Subresource, e.g. `proxy`; `""` for none.
    pub subresource: &'a str,
    /// Name of the object, e.g. the node name.
    pub name: &'a str,
    /// Kubernetes verb, e.g. `get` or `create`.
    pub verb: &'a str,
}

/// Which binding, through which role, allowed a request (for audit records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Name of the ClusterRoleBinding.
    pub binding: String,
    /// Name of the ClusterRole it refers to.
    pub role: String,
}

/// One subject of one ClusterRoleBinding with the effective rules it is granted.
#[derive(Clone, Copy, Debug)]
pub struct SubjectGrant<'a> {
    /// Name of the ClusterRoleBinding.
    pub binding: &'a str,
    /// Name of the ClusterRole it refers to.
    pub role: &'a str,
    /// The subject, with Kubernetes' defaults applied (`apiGroup` of users and groups filled in).
    pub subject: &'a Subject,
    /// The role's effective rules (for an aggregated role, the union of the selected roles' rules).
    pub rules: &'a [PolicyRule],
}

/// Why a policy file was rejected, with the line of the offending document when known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line_prefix(.line))]
pub struct PolicyError {
    /// 1-based line: of a YAML syntax error, else of the start of the offending document.
    pub line: Option<usize>,
    /// What is wrong, naming the object.
    pub message: String,
}

impl Policy {
    /// Parses and validates a multi-document YAML stream of ClusterRoles, ClusterRoleBindings,
    /// Roles, RoleBindings and `v1` Lists of them. Returns the policy and human-readable warnings
    /// (objects loaded but unable to grant anything).
    pub fn parse(yaml: &str) -> Result<(Policy, Vec<String>), PolicyError> {
        let documents = documents(yaml)?;
        if documents.is_empty() {
            return Err(PolicyError::new(None, "the policy file holds no documents"));
        }
        let mut objects = Objects::default();
        for document in documents {
            let line = usize::try_from(document.referenced.line()).unwrap_or(0);
            objects.load(document.value, &Origin { line, item: None })?;
        }
        objects.into_policy()
    }

    /// The first ClusterRoleBinding (in file order) whose subjects include `who` and whose role
    /// has a rule allowing `request`, or `None` when nothing grants it.
    pub fn authorize(&self, who: &Identity, request: &ResourceRequest<'_>) -> Option<Grant> {
        self.bindings()
            .filter(|grant| subject_matches(grant.subject, who))
            .find(|grant| grant.rules.iter().any(|rule| rule_allows(rule, request)))
            .map(|grant| Grant {
                binding: grant.binding.to_owned(),
                role: grant.role.to_owned(),
            })
    }

    /// Every (binding, subject) pair in file order with the effective rules it grants; the
    /// input of `rbac-audit` and of [`Policy::authorize`].
    pub fn bindings(&self) -> impl Iterator<Item = SubjectGrant<'_>> {
        self.bindings.iter().flat_map(|binding| {
            binding.subjects.iter().map(move |subject| SubjectGrant {
                binding: &binding.name,
                role: &binding.role,
                subject,
                rules: &binding.rules,
            })
        })
    }
}

impl PolicyError {
    fn new(line: Option<usize>, message: impl Into<String>) -> PolicyError {
        let message = message.into();
        PolicyError { line, message }
    }
}

/// Whether `rule` allows the resource request: Kubernetes' `RuleAllows` for resource requests.
///
/// Verbs and API groups match literally or through `*`. The resource matches as `*`, as the
/// combined `resource/subresource`, or as `*/subresource`; `nodes/*` is no wildcard. A rule with
/// `resourceNames` matches only those names. Non-resource-URL rules name no resources, so never match.
pub fn rule_allows(rule: &PolicyRule, request: &ResourceRequest<'_>) -> bool {
    holds(Some(&rule.verbs), request.verb)
        && holds(rule.api_groups.as_ref(), request.api_group)
        && resource_matches(rule, request)
        && resource_name_matches(rule, request.name)
}

/// Whether a binding subject denotes `who`: Kubernetes' `appliesToUser` for cluster bindings.
pub fn subject_matches(subject: &Subject, who: &Identity) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == who.name,
        "Group" => who.groups.contains(&subject.name),
        "ServiceAccount" => subject
            .namespace
            .as_deref()
            .is_some_and(|namespace| is_service_account(&who.name, namespace, &subject.name)),
        _ => false,
    }
}

/// The API group and version of every RBAC kind this module reads.
const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

/// The API group that `User` and `Group` subjects and every `roleRef` belong to.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// One ClusterRoleBinding resolved against its role.
#[derive(Clone, Debug)]
struct Binding {
    name: String,
    role: String,
    subjects: Vec<Subject>,
    rules: Vec<PolicyRule>,
}

/// Where an object came from: its document's first line and, inside a List, its item index.
#[derive(Clone, Copy)]
struct Origin {
    line: usize,
    item: Option<usize>,
}

impl Origin {
    fn error(&self, message: impl std::fmt::Display) -> PolicyError {
        let message = match self.item {
            Some(index) => format!("List items[{index}]: {message}"),
            None => message.to_string(),
        };
        PolicyError::new(Some(self.line), message)
    }
}

/// An object with the line of the document that held it.
struct Located<T> {
    line: usize,
    object: T,
}

/// Everything loaded from the stream, before roles are resolved.
#[derive(Default)]
struct Objects {
    cluster_roles: Vec<Located<ClusterRole>>,
    bindings: Vec<Located<ClusterRoleBinding>>,
    warnings: Vec<String>,
}

impl Objects {
    /// Checks `kind` and `apiVersion`, then validates the object (or List) and files it.
    fn load(&mut self, value: Value, origin: &Origin) -> Result<(), PolicyError> {
        let text = |field| value.get(field).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion").to_owned(), text("kind").to_owned());
        let what = format!("{kind} {:?}", object_name(&value));
        let line = origin.line;
        let invalid = |message: String| origin.error(format!("{what}: {message}"));
        match (kind.as_str(), api_version.as_str()) {
            ("List", "v1") if origin.item.is_none() => self.load_list(value, origin)?,
            ("ClusterRole", RBAC_V1) => {
                let role: ClusterRole = typed(value, &what, origin)?;
                check_cluster_role(&role).map_err(invalid)?;
                self.cluster_roles.push(Located { line, object: role });
            }
            ("ClusterRoleBinding", RBAC_V1) => {
                let mut binding: ClusterRoleBinding = typed(value, &what, origin)?;
                default_binding(&mut binding);
                check_cluster_role_binding(&binding).map_err(invalid)?;
                self.bindings.push(Located {
                    line,
                    object: binding,
                });
            }
            ("Role", RBAC_V1) => {
                self.ignore("Role", &typed::<Role>(value, &what, origin)?.metadata)
            }
            ("RoleBinding", RBAC_V1) => {
                let binding: RoleBinding = typed(value, &what, origin)?;
                self.ignore("RoleBinding", &binding.metadata);
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
    fn load_list(&mut self, mut value: Value, origin: &Origin) -> Result<(), PolicyError> {
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

    /// Records a namespaced object, which cannot reach cluster-scoped `nodes`.
    fn ignore(&mut self, kind: &str, metadata: &ObjectMeta) {
        let name = metadata.name.as_deref().unwrap_or_default();
        let name = match metadata.namespace.as_deref() {
            Some(namespace) if !namespace.is_empty() => format!("{namespace}/{name}"),
            _ => name.to_owned(),
        };
        let warning = format!("{kind} {name} cannot grant cluster-scoped nodes access; ignored");
        self.warnings.push(warning);
    }

    /// Resolves every binding against the effective rules of its role.
    fn into_policy(self) -> Result<(Policy, Vec<String>), PolicyError> {
        let mut warnings = self.warnings;
        let roles = index_by_name(&self.cluster_roles, |role| &role.metadata, "ClusterRole")?;
        index_by_name(
            &self.bindings,
            |binding| &binding.metadata,
            "ClusterRoleBinding",
        )?;
        let mut bindings = Vec::with_capacity(self.bindings.len());
        for Located { line, object } in self.bindings {
            let name = object.metadata.name.unwrap_or_default();
            let role = object.role_ref.name;
            let Some(rules) = effective_rules(&role, &roles) else {
                let message = format!(
                    "ClusterRoleBinding {name:?} refers to ClusterRole {role:?}, which is not in \
                     the policy file"
                );
                return Err(PolicyError::new(Some(line), message));
            };
            let subjects = object.subjects.unwrap_or_default();
            if subjects.is_empty() {
                warnings.push(format!(
                    "ClusterRoleBinding {name} has no subjects; it grants nothing"
                ));
            }
            bindings.push(Binding {
                name,
                role,
                subjects,
                rules,
            });
        }
        if bindings.is_empty() {
            warnings
                .push("the policy has no ClusterRoleBinding; every request is denied".to_owned());
        }
        Ok((Policy { bindings }, warnings))
    }
}

/// Splits the stream into documents, each with its first line; YAML errors keep their location.
fn documents(yaml: &str) -> Result<Vec<Spanned<Value>>, PolicyError> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_multiple_with_options(yaml, options).map_err(|error| {
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
    })
}

/// Converts a document to its Kubernetes type, strictly as the API server's JSON decoding would.
fn typed<T: DeserializeOwned>(value: Value, what: &str, origin: &Origin) -> Result<T, PolicyError> {
    serde_json::from_value(value).map_err(|error| {
        let error = error.to_string();
        // Like kubectl's YAML 1.1 reader, serde-saphyr reads a bare `y` or `no` as a boolean.
        let hint = match error.contains("invalid type: boolean") {
            true => "; unquoted y, n, yes, no, on and off are booleans in YAML: quote them",
            false => "",
        };
        origin.error(format!("{what}: {error}{hint}"))
    })
}

/// `metadata.name` of a not-yet-typed object, for messages.
fn object_name(value: &Value) -> &str {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Indexes objects by name, rejecting a name defined twice.
fn index_by_name<'a, T>(
    objects: &'a [Located<T>],
    metadata: impl Fn(&T) -> &ObjectMeta,
    kind: &str,
) -> Result<BTreeMap<&'a str, (usize, &'a T)>, PolicyError> {
    let mut index = BTreeMap::new();
    for Located { line, object } in objects {
        let name = metadata(object).name.as_deref().unwrap_or_default();
        if let Some((first, _)) = index.insert(name, (*line, object)) {
            let message = format!("{kind} {name:?} is defined twice (first at line {first})");
            return Err(PolicyError::new(Some(*line), message));
        }
    }
    Ok(index)
}

/// `SetDefaults_ClusterRoleBinding` and `SetDefaults_Subject`: an empty `apiGroup` of the role
/// reference, and of `User` and `Group` subjects, means `rbac.authorization.k8s.io`.
fn default_binding(binding: &mut ClusterRoleBinding) {
    if binding.role_ref.api_group.is_empty() {
        RBAC_GROUP.clone_into(&mut binding.role_ref.api_group);
    }
    for subject in binding.subjects.iter_mut().flatten() {
        let unset = subject.api_group.as_deref().is_none_or(str::is_empty);
        if unset && matches!(subject.kind.as_str(), "User" | "Group") {
            subject.api_group = Some(RBAC_GROUP.to_owned());
        }
    }
}

/// `ValidateClusterRole`, including its aggregation rule.
fn check_cluster_role(role: &ClusterRole) -> Result<(), String> {
    check_name("metadata.name", role.metadata.name.as_deref())?;
    for (index, rule) in role.rules.iter().flatten().enumerate() {
        check_rule(rule).map_err(|e| format!("rules[{index}].{e}"))?;
    }
    let Some(aggregation) = &role.aggregation_rule else {
        return Ok(());
    };
    let selectors = aggregation
        .cluster_role_selectors
        .as_deref()
        .unwrap_or_default();
    let field = "aggregationRule.clusterRoleSelectors";
    ensure(
        !selectors.is_empty(),
        &format!("{field}: at least one clusterRoleSelector required"),
    )?;
    for (index, selector) in selectors.iter().enumerate() {
        for requirement in selector.match_expressions.iter().flatten() {
            check_requirement(requirement).map_err(|e| format!("{field}[{index}]: {e}"))?;
        }
    }
    Ok(())
}

/// `ValidateClusterRoleBinding`, on a defaulted binding.
fn check_cluster_role_binding(binding: &ClusterRoleBinding) -> Result<(), String> {
    check_name("metadata.name", binding.metadata.name.as_deref())?;
    let RoleRef {
        api_group,
        kind,
        name,
    } = &binding.role_ref;
    ensure(
        api_group == RBAC_GROUP,
        &format!("roleRef.apiGroup: Unsupported value {api_group:?}"),
    )?;
    let expected_kind = "expected \"ClusterRole\"";
    ensure(
        kind == "ClusterRole",
        &format!("roleRef.kind: Unsupported value {kind:?}; {expected_kind}"),
    )?;
    check_name("roleRef.name", Some(name))?;
    for (index, subject) in binding.subjects.iter().flatten().enumerate() {
        check_subject(subject).map_err(|e| format!("subjects[{index}].{e}"))?;
    }
    Ok(())
}

/// `minimalNameRequirements`: non-empty and usable as one URL path segment.
fn check_name(field: &str, name: Option<&str>) -> Result<(), String> {
    match name.unwrap_or_default() {
        "" => Err(format!("{field}: Required value")),
        "." | ".." => Err(format!("{field}: may not be '.' or '..'")),
        name if name.contains(['/', '%']) => Err(format!("{field}: may not contain '/' or '%'")),
        _ => Ok(()),
    }
}

/// `validateRoleBindingSubject` for a cluster binding, on a defaulted subject.
fn check_subject(subject: &Subject) -> Result<(), String> {
    ensure(!subject.name.is_empty(), "name: Required value")?;
    let namespace = subject.namespace.as_deref().unwrap_or_default();
    let expected_group = match subject.kind.as_str() {
        "User" | "Group" => RBAC_GROUP,
        "ServiceAccount" if namespace.is_empty() => return Err("namespace: Required value".into()),
        "ServiceAccount" => "",
        other => {
            return Err(format!(
                "kind: Unsupported value {other:?}; expected User, Group or ServiceAccount"
            ));
        }
    };
    let group = subject.api_group.as_deref().unwrap_or_default();
    ensure(
        group == expected_group,
        &format!("apiGroup: Unsupported value {group:?}; expected {expected_group:?}"),
    )
}

/// `validatePolicyRule` for a cluster role: catches, among others, a missing `apiGroups: [""]`.
fn check_rule(rule: &PolicyRule) -> Result<(), String> {
    let count = |list: &Option<Vec<String>>| list.as_ref().map_or(0, Vec::len);
    let (groups, resources) = (count(&rule.api_groups), count(&rule.resources));
    let names = count(&rule.resource_names);
    ensure(
        !rule.verbs.is_empty(),
        "verbs: Required value: verbs must contain at least one value",
    )?;
    if count(&rule.non_resource_urls) > 0 {
        let both =
            "nonResourceURLs: rules cannot apply to both regular resources and non-resource URLs";
        return ensure(groups + resources + names == 0, both);
    }
    ensure(
        groups > 0,
        "apiGroups: Required value: at least one api group (\"\" is the core group)",
    )?;
    ensure(
        resources > 0,
        "resources: Required value: at least one resource",
    )?;
    ensure(
        names == 0 || resources == 1,
        "resourceNames: cannot apply to multiple resources",
    )
}

/// A selector requirement that `LabelSelectorAsSelector` accepts.
fn check_requirement(requirement: &LabelSelectorRequirement) -> Result<(), String> {
    let LabelSelectorRequirement {
        key,
        operator,
        values,
    } = requirement;
    let values = values.as_deref().unwrap_or_default();
    let valid = match operator.as_str() {
        "In" | "NotIn" => !values.is_empty(),
        "Exists" | "DoesNotExist" => values.is_empty(),
        other => return Err(format!("{other:?} is not a valid label selector operator")),
    };
    let needs = "values must be non-empty for In and NotIn, empty for Exists and DoesNotExist";
    ensure(
        valid,
        &format!("operator {operator:?} on key {key:?}: {needs}"),
    )
}

/// `Ok` when `valid`, else the message.
fn ensure(valid: bool, message: &str) -> Result<(), String> {
    if valid {
        Ok(())
    } else {
        Err(message.to_owned())
    }
}

/// The rules a ClusterRole grants, or `None` when no such role exists.
///
/// A role without an aggregation rule grants its own rules. An aggregated role grants the rules
/// of every non-aggregated role reachable through its selectors, following selected aggregated
/// roles too, each visited once: the least fixed point the aggregation controller converges to
/// from empty rules (its own `rules` field is the controller's output, so it is ignored).
fn effective_rules(
    root: &str,
    roles: &BTreeMap<&str, (usize, &ClusterRole)>,
) -> Option<Vec<PolicyRule>> {
    roles.get(root)?;
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(name) = queue.pop_front() {
        let Some((_, role)) = roles.get(name) else {
            continue;
        };
        let Some(aggregation) = &role.aggregation_rule else {
            for rule in role.rules.iter().flatten() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
            continue;
        };
        // Per selector, then by name: the controller's order.
        for selector in aggregation.cluster_role_selectors.iter().flatten() {
            for (selected, (_, candidate)) in roles {
                let labels = candidate.metadata.labels.as_ref();
                if selector_matches(selector, labels) && seen.insert(*selected) {
                    queue.push_back(*selected);
                }
            }
        }
    }
    Some(rules)
}

/// `LabelSelectorAsSelector(selector).Matches(labels)`; an empty selector matches every role.
fn selector_matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let label = |key: &str| labels.and_then(|labels| labels.get(key));
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| label(key) == Some(value));
    labels_match
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|requirement| {
                let values = requirement.values.as_deref().unwrap_or_default();
                let value = label(&requirement.key);
                match requirement.operator.as_str() {
                    "In" => value.is_some_and(|value| values.contains(value)),
                    "NotIn" => value.is_none_or(|value| !values.contains(value)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
}

/// `VerbMatches`/`APIGroupMatches`: the list holds the wanted value or `*`.
fn holds(list: Option<&Vec<String>>, wanted: &str) -> bool {
    list.into_iter()
        .flatten()
        .any(|item| item == "*" || item == wanted)
}

/// `ResourceMatches`: `*`, the combined `resource/subresource`, or `*/subresource`.
fn resource_matches(rule: &PolicyRule, request: &ResourceRequest<'_>) -> bool {
    let subresource = request.subresource;
    rule.resources.iter().flatten().any(|item| {
        if item == "*" {
            return true;
        }
        if subresource.is_empty() {
            return item == request.resource;
        }
        let combined = item
            .strip_prefix(request.resource)
            .and_then(|rest| rest.strip_prefix('/'));
        combined == Some(subresource) || item.strip_prefix("*/") == Some(subresource)
    })
}

/// `ResourceNameMatches`: no names means any; otherwise the requested name must be listed.
fn resource_name_matches(rule: &PolicyRule, name: &str) -> bool {
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => names.iter().any(|listed| listed == name),
    }
}

/// `serviceaccount.MatchesUsername`: `system:serviceaccount:<namespace>:<name>`.
fn is_service_account(user: &str, namespace: &str, name: &str) -> bool {
    !namespace.is_empty()
        && user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.strip_prefix(namespace))
            .and_then(|rest| rest.strip_prefix(':'))
            == Some(name)
}

/// `line N: ` when the line is known.
fn line_prefix(line: &Option<usize>) -> String {
    line.map(|line| format!("line {line}: "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn who(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: name.to_owned(),
            uid: String::new(),
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
            extra: BTreeMap::new(),
        }
    }

    fn node(subresource: &'static str, verb: &'static str) -> ResourceRequest<'static> {
        ResourceRequest {
            api_group: "",
            resource: "nodes",
            subresource,
            name: "node-a",
            verb,
        }
    }

    fn rule(value: Value) -> PolicyRule {
        serde_json::from_value(value).unwrap()
    }

    fn subject(value: Value) -> Subject {
        serde_json::from_value(value).unwrap()
    }

    fn parse(yaml: &str) -> (Policy, Vec<String>) {
        Policy::parse(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_error(yaml: &str) -> PolicyError {
        Policy::parse(yaml).map(|_| ()).unwrap_err()
    }

    fn cluster_role(name: &str, labels: &str, body: &str) -> String {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\n  \
             labels: {labels}\n{body}\n---\n"
        )
    }

    fn grants(resources: &str) -> String {
        format!("rules:\n- apiGroups: [\"\"]\n  resources: {resources}\n  verbs: [get]")
    }

    fn bind_user(binding: &str, role: &str, user: &str) -> String {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: \
             {binding}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: \
             {role}\nsubjects:\n- kind: User\n  name: {user}\n---\n"
        )
    }

    /// `policy` allows `request` for user `alice`, through some binding.
    fn alice_may(policy: &Policy, request: &ResourceRequest<'_>) -> bool {
        policy.authorize(&who("alice", &[]), request).is_some()
    }

    // --- rule_allows: the matching cases people get wrong ---

    #[test]
    fn exact_subresource_is_allowed() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(rule_allows(&rule, &node("proxy", "get")));
    }

    #[test]
    fn get_on_proxy_does_not_allow_create() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(!rule_allows(&rule, &node("proxy", "create")));
    }

    #[test]
    fn verb_wildcard_allows_any_verb() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["*"]}));
        assert!(rule_allows(&rule, &node("proxy", "create")));
        assert!(rule_allows(&rule, &node("proxy", "delete")));
    }

    #[test]
    fn nodes_slash_star_is_not_a_wildcard() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes/*"], "verbs": ["get"]}));
        assert!(!rule_allows(&rule, &node("proxy", "get")));
        assert!(!rule_allows(&rule, &node("log", "get")));
        assert!(!rule_allows(&rule, &node("", "get")));
        // It matches only a subresource literally named `*`.
        assert!(rule_allows(&rule, &node("*", "get")));
    }

    #[test]
    fn star_slash_subresource_is_a_wildcard_over_resources() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["*/proxy"], "verbs": ["get"]}));
        assert!(rule_allows(&rule, &node("proxy", "get")));
        assert!(!rule_allows(&rule, &node("log", "get")));
        assert!(!rule_allows(&rule, &node("", "get")));
        let pods = ResourceRequest {
            resource: "pods",
            ..node("proxy", "get")
        };
        assert!(rule_allows(&rule, &pods));
    }

    #[test]
    fn star_slash_needs_the_whole_subresource() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["*/proxy"], "verbs": ["get"]}));
        assert!(!rule_allows(&rule, &node("xproxy", "get")));
        assert!(!rule_allows(&rule, &node("prox", "get")));
    }

    #[test]
    fn star_resource_in_core_group_matches_every_subresource() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}));
        for subresource in ["", "proxy", "log", "stats", "metrics", "configz", "healthz"] {
            assert!(
                rule_allows(&rule, &node(subresource, "get")),
                "{subresource}"
            );
        }
    }

    #[test]
    fn bare_resource_does_not_cover_its_subresources() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}));
        assert!(rule_allows(&rule, &node("", "get")));
        assert!(!rule_allows(&rule, &node("proxy", "get")));
    }

    #[test]
    fn subresource_rule_does_not_cover_the_bare_resource() {
        let rule = rule(json!({"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(!rule_allows(&rule, &node("", "get")));
    }

    #[test]
    fn other_api_group_does_not_grant_core_nodes() {
        let everything = rule(json!({"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}));
        assert!(!rule_allows(&everything, &node("proxy", "get")));
        let proxy =
            rule(json!({"apiGroups": ["apps"], "resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(!rule_allows(&proxy, &node("proxy", "get")));
    }

    #[test]
    fn api_group_wildcard_covers_the_core_group() {
        let rule =
            rule(json!({"apiGroups": ["*"], "resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(rule_allows(&rule, &node("proxy", "get")));
    }

    #[test]
    fn missing_api_groups_match_nothing() {
        let rule = rule(json!({"resources": ["nodes/proxy"], "verbs": ["get"]}));
        assert!(!rule_allows(&rule, &node("proxy", "get")));
    }

    #[test]
    fn resource_names_restrict_by_node_name() {
        let rule = rule(json!({
            "apiGroups": [""], "resources": ["nodes/proxy"], "resourceNames": ["node-a"], "verbs": ["get"]
        }));
        assert!(rule_allows(&rule, &node("proxy", "get")));
        let other = ResourceRequest {
            name: "node-b",
            ..node("proxy", "get")
        };
        assert!(!rule_allows(&rule, &other));
        // As in Kubernetes, a request without a name does not match a rule listing names.
        let unnamed = ResourceRequest {
            name: "",
            ..node("proxy", "get")
        };
        assert!(!rule_allows(&rule, &unnamed));
    }

    #[test]
    fn empty_resource_names_mean_any_name() {
        let rule = rule(json!({
            "apiGroups": [""], "resources": ["nodes/proxy"], "resourceNames": [], "verbs": ["get"]
        }));
        let other = ResourceRequest {
            name: "node-b",
            ..node("proxy", "get")
        };
        assert!(rule_allows(&rule, &other));
    }

    #[test]
    fn non_resource_url_rules_never_match_resource_requests() {
        let rule = rule(json!({"nonResourceURLs": ["*"], "verbs": ["*"]}));
        assert!(!rule_allows(&rule, &node("proxy", "get")));
        assert!(!rule_allows(&rule, &node("", "get")));
    }

    // --- subject_matches ---

    #[test]
    fn user_subject_matches_by_name_only() {
        let user = subject(json!({"kind": "User", "name": "alice", "apiGroup": RBAC_GROUP}));
        assert!(subject_matches(&user, &who("alice", &[])));
        assert!(!subject_matches(&user, &who("bob", &["alice"])));
    }

    #[test]
    fn group_subject_matches_any_member() {
        let group = subject(json!({"kind": "Group", "name": "system:authenticated"}));
        assert!(subject_matches(
            &group,
            &who("anyone", &["ops", "system:authenticated"])
        ));
        assert!(!subject_matches(
            &group,
            &who("system:authenticated", &["ops"])
        ));
    }

    #[test]
    fn service_account_subject_matches_its_user_name() {
        let account =
            subject(json!({"kind": "ServiceAccount", "namespace": "monitoring", "name": "prom"}));
        assert!(subject_matches(
            &account,
            &who("system:serviceaccount:monitoring:prom", &[])
        ));
        assert!(!subject_matches(
            &account,
            &who("system:serviceaccount:default:prom", &[])
        ));
        assert!(!subject_matches(
            &account,
            &who("system:serviceaccount:monitoring:prom2", &[])
        ));
        assert!(!subject_matches(&account, &who("prom", &[])));
        assert!(!subject_matches(
            &account,
            &who("system:serviceaccount:monitoringprom", &[])
        ));
    }

    #[test]
    fn service_account_subject_needs_a_namespace() {
        let account = subject(json!({"kind": "ServiceAccount", "name": "prom"}));
        assert!(!subject_matches(
            &account,
            &who("system:serviceaccount::prom", &[])
        ));
    }

    #[test]
    fn unknown_subject_kind_matches_nobody() {
        let odd = subject(json!({"kind": "Robot", "name": "alice"}));
        assert!(!subject_matches(&odd, &who("alice", &["alice"])));
    }

    // --- Policy::parse and authorize ---

    #[test]
    fn binding_grants_its_role_to_its_subject() {
        let yaml = cluster_role("proxy", "{}", &grants("[nodes/proxy]"))
            + &bind_user("b", "proxy", "alice");
        let (policy, warnings) = parse(&yaml);
        assert!(warnings.is_empty(), "{warnings:?}");
        let grant = policy.authorize(&who("alice", &[]), &node("proxy", "get"));
        let expected = Grant {
            binding: "b".to_owned(),
            role: "proxy".to_owned(),
        };
        assert_eq!(grant, Some(expected));
        assert_eq!(
            policy.authorize(&who("bob", &[]), &node("proxy", "get")),
            None
        );
        assert!(!alice_may(&policy, &node("proxy", "create")));
        assert!(!alice_may(&policy, &node("log", "get")));
    }

    #[test]
    fn first_granting_binding_in_file_order_is_reported() {
        let yaml = cluster_role("logs", "{}", &grants("[nodes/log]"))
            + &cluster_role("all", "{}", &grants("[\"*\"]"))
            + &bind_user("logs-only", "logs", "alice")
            + &bind_user("everything", "all", "alice")
            + &bind_user("again", "all", "alice");
        let (policy, _) = parse(&yaml);
        let proxy = policy.authorize(&who("alice", &[]), &node("proxy", "get"));
        assert_eq!(
            proxy.map(|grant| grant.binding),
            Some("everything".to_owned())
        );
        let log = policy.authorize(&who("alice", &[]), &node("log", "get"));
        assert_eq!(log.map(|grant| grant.binding), Some("logs-only".to_owned()));
    }

    #[test]
    fn group_binding_to_system_authenticated_grants_authenticated_callers() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/healthz]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
               roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
               subjects:\n- {kind: Group, name: 'system:authenticated', apiGroup: rbac.authorization.k8s.io}\n";
        let (policy, _) = parse(&yaml);
        let request = node("healthz", "get");
        assert!(
            policy
                .authorize(&who("x", &["system:authenticated"]), &request)
                .is_some()
        );
        assert!(policy.authorize(&who("x", &[]), &request).is_none());
    }

    #[test]
    fn service_account_binding_grants_the_account() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/metrics]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
               roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
               subjects:\n- {kind: ServiceAccount, name: prom, namespace: monitoring}\n";
        let (policy, _) = parse(&yaml);
        let request = node("metrics", "get");
        let account = who(
            "system:serviceaccount:monitoring:prom",
            &["system:serviceaccounts"],
        );
        assert!(policy.authorize(&account, &request).is_some());
        assert!(policy.authorize(&who("prom", &[]), &request).is_none());
    }

    #[test]
    fn subject_and_role_ref_api_groups_are_defaulted() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
               roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: User, name: alice}\n";
        let (policy, _) = parse(&yaml);
        assert!(alice_may(&policy, &node("proxy", "get")));
        let grant = policy.bindings().next().unwrap();
        assert_eq!(grant.subject.api_group.as_deref(), Some(RBAC_GROUP));
    }

    #[test]
    fn role_bindings_never_grant_and_are_reported() {
        let yaml = cluster_role("r", "{}", &grants("[\"*\"]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
               metadata: {name: x, namespace: ns}\n\
               roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
               subjects:\n- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}\n---\n\
               apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: viewer, namespace: ns}\n\
               rules: [{apiGroups: [''], resources: ['*'], verbs: ['*']}]\n";
        let (policy, warnings) = parse(&yaml);
        assert!(!alice_may(&policy, &node("proxy", "get")));
        assert_eq!(policy.bindings().count(), 0);
        assert_eq!(
            warnings,
            [
                "RoleBinding ns/x cannot grant cluster-scoped nodes access; ignored",
                "Role ns/viewer cannot grant cluster-scoped nodes access; ignored",
                "the policy has no ClusterRoleBinding; every request is denied",
            ]
        );
    }

    #[test]
    fn binding_to_missing_role_is_an_error_naming_both() {
        let yaml =
            cluster_role("r", "{}", &grants("[nodes/proxy]")) + &bind_user("b", "nope", "alice");
        let error = parse_error(&yaml);
        assert_eq!(error.line, Some(11));
        assert!(
            error.message.contains("ClusterRoleBinding \"b\""),
            "{error}"
        );
        assert!(error.message.contains("ClusterRole \"nope\""), "{error}");
    }

    #[test]
    fn bindings_lists_every_subject_with_effective_rules() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
               roleRef: {kind: ClusterRole, name: r}\n\
               subjects: [{kind: User, name: alice}, {kind: Group, name: ops}]\n";
        let (policy, _) = parse(&yaml);
        let listed: Vec<_> = policy
            .bindings()
            .map(|grant| {
                (
                    grant.binding,
                    grant.role,
                    grant.subject.name.as_str(),
                    grant.rules.len(),
                )
            })
            .collect();
        assert_eq!(listed, [("b", "r", "alice", 1), ("b", "r", "ops", 1)]);
    }

    #[test]
    fn binding_without_subjects_is_reported() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
               roleRef: {kind: ClusterRole, name: r}\n";
        let (policy, warnings) = parse(&yaml);
        assert_eq!(policy.bindings().count(), 0);
        assert_eq!(
            warnings,
            ["ClusterRoleBinding b has no subjects; it grants nothing"]
        );
    }

    // --- aggregation ---

    fn aggregated(name: &str, labels: &str, selectors: &str) -> String {
        // Its own rules grant everything: the controller overwrites them, so they must not count.
        let body = format!(
            "aggregationRule:\n  clusterRoleSelectors: {selectors}\n\
             rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]"
        );
        cluster_role(name, labels, &body)
    }

    #[test]
    fn aggregation_by_match_labels_unions_selected_rules() {
        let yaml = aggregated("agg", "{}", "[{matchLabels: {kg/aggregate: 'true'}}]")
            + &cluster_role("log", "{kg/aggregate: 'true'}", &grants("[nodes/log]"))
            + &cluster_role(
                "stats",
                "{kg/aggregate: 'true', other: x}",
                &grants("[nodes/stats]"),
            )
            + &cluster_role("proxy", "{kg/aggregate: 'false'}", &grants("[nodes/proxy]"))
            + &bind_user("b", "agg", "alice");
        let (policy, _) = parse(&yaml);
        assert!(alice_may(&policy, &node("log", "get")));
        assert!(alice_may(&policy, &node("stats", "get")));
        assert!(
            !alice_may(&policy, &node("proxy", "get")),
            "own rules or unselected role leaked"
        );
        assert_eq!(policy.bindings().next().unwrap().rules.len(), 2);
    }

    #[test]
    fn aggregation_by_match_expressions() {
        let yaml = aggregated(
            "agg",
            "{}",
            "[{matchExpressions: [{key: tier, operator: In, values: [a, b]}, \
             {key: skip, operator: DoesNotExist}]}, \
             {matchExpressions: [{key: extra, operator: Exists}, \
             {key: env, operator: NotIn, values: [prod]}]}]",
        ) + &cluster_role("log", "{tier: a}", &grants("[nodes/log]"))
            + &cluster_role("stats", "{tier: b, skip: 'yes'}", &grants("[nodes/stats]"))
            + &cluster_role("metrics", "{extra: ''}", &grants("[nodes/metrics]"))
            + &cluster_role("proxy", "{extra: '', env: prod}", &grants("[nodes/proxy]"))
            + &cluster_role("spec", "{tier: c}", &grants("[nodes/spec]"))
            + &bind_user("b", "agg", "alice");
        let (policy, _) = parse(&yaml);
        assert!(alice_may(&policy, &node("log", "get")));
        assert!(
            !alice_may(&policy, &node("stats", "get")),
            "DoesNotExist ignored"
        );
        assert!(
            alice_may(&policy, &node("metrics", "get")),
            "Exists/NotIn on a missing label"
        );
        assert!(!alice_may(&policy, &node("proxy", "get")), "NotIn ignored");
        assert!(!alice_may(&policy, &node("spec", "get")), "In ignored");
    }

    #[test]
    fn empty_selector_selects_every_other_role() {
        let yaml = aggregated("agg", "{}", "[{}]")
            + &cluster_role("log", "{}", &grants("[nodes/log]"))
            + &bind_user("b", "agg", "alice");
        let (policy, _) = parse(&yaml);
        assert!(alice_may(&policy, &node("log", "get")));
        assert!(
            !alice_may(&policy, &node("proxy", "get")),
            "the role's own rules leaked"
        );
    }

    #[test]
    fn aggregation_is_transitive() {
        let yaml = aggregated("top", "{}", "[{matchLabels: {level: mid}}]")
            + &aggregated("mid", "{level: mid}", "[{matchLabels: {level: leaf}}]")
            + &cluster_role("leaf", "{level: leaf}", &grants("[nodes/log]"))
            + &bind_user("b", "top", "alice");
        let (policy, _) = parse(&yaml);
        assert!(alice_may(&policy, &node("log", "get")));
        assert!(!alice_may(&policy, &node("proxy", "get")));
    }

    #[test]
    fn aggregation_cycles_reach_the_fixed_point() {
        let yaml = aggregated(
            "a",
            "{ring: 'yes'}",
            "[{matchLabels: {ring: 'yes'}}, {matchLabels: {x: a}}]",
        ) + &aggregated(
            "b",
            "{ring: 'yes'}",
            "[{matchLabels: {ring: 'yes'}}, {matchLabels: {x: b}}]",
        ) + &cluster_role("leaf-a", "{x: a}", &grants("[nodes/log]"))
            + &cluster_role("leaf-b", "{x: b}", &grants("[nodes/stats]"))
            + &bind_user("ba", "a", "alice")
            + &bind_user("bb", "b", "bob");
        let (policy, _) = parse(&yaml);
        for user in ["alice", "bob"] {
            let caller = who(user, &[]);
            assert!(
                policy.authorize(&caller, &node("log", "get")).is_some(),
                "{user}"
            );
            assert!(
                policy.authorize(&caller, &node("stats", "get")).is_some(),
                "{user}"
            );
            assert!(
                policy.authorize(&caller, &node("proxy", "get")).is_none(),
                "{user}"
            );
        }
    }

    #[test]
    fn aggregated_role_selecting_nothing_grants_nothing() {
        let yaml = aggregated("agg", "{}", "[{matchLabels: {nobody: here}}]")
            + &bind_user("b", "agg", "alice");
        let (policy, _) = parse(&yaml);
        assert!(!alice_may(&policy, &node("proxy", "get")));
    }

    #[test]
    fn duplicate_rules_are_merged() {
        let yaml = aggregated("agg", "{}", "[{matchLabels: {a: b}}]")
            + &cluster_role("one", "{a: b}", &grants("[nodes/log]"))
            + &cluster_role("two", "{a: b}", &grants("[nodes/log]"))
            + &bind_user("b", "agg", "alice");
        let (policy, _) = parse(&yaml);
        assert_eq!(policy.bindings().next().unwrap().rules.len(), 1);
    }

    #[test]
    fn invalid_selector_operator_is_an_error() {
        let yaml = aggregated(
            "agg",
            "{}",
            "[{matchExpressions: [{key: a, operator: Like}]}]",
        );
        let error = parse_error(&yaml);
        assert_eq!(error.line, Some(1));
        assert!(
            error
                .message
                .contains("\"Like\" is not a valid label selector operator"),
            "{error}"
        );
        let yaml = aggregated(
            "agg",
            "{}",
            "[{matchExpressions: [{key: a, operator: In}]}]",
        );
        assert!(
            parse_error(&yaml)
                .message
                .contains("values must be non-empty")
        );
    }

    #[test]
    fn aggregation_rule_without_selectors_is_an_error() {
        let error = parse_error(&aggregated("agg", "{}", "[]"));
        assert!(
            error.message.contains("at least one clusterRoleSelector"),
            "{error}"
        );
    }

    // --- documents, Lists and errors ---

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
    fn rule_without_api_groups_is_rejected_as_the_api_server_would() {
        let yaml = cluster_role(
            "r",
            "{}",
            "rules:\n- resources: [nodes/proxy]\n  verbs: [get]",
        );
        let error = parse_error(&yaml);
        assert!(
            error.message.contains("rules[0].apiGroups: Required value"),
            "{error}"
        );
    }

    #[test]
    fn rule_validation_follows_the_api_server() {
        let cases = [
            (
                "{apiGroups: [''], resources: [nodes]}",
                "verbs: Required value",
            ),
            (
                "{apiGroups: [''], verbs: [get]}",
                "resources: Required value",
            ),
            (
                "{nonResourceURLs: [/x], resources: [nodes], verbs: [get]}",
                "both regular resources",
            ),
            (
                "{apiGroups: [''], resources: [nodes, pods], resourceNames: [a], verbs: [get]}",
                "cannot apply to multiple resources",
            ),
        ];
        for (rule, expected) in cases {
            let error = parse_error(&cluster_role("r", "{}", &format!("rules: [{rule}]")));
            assert!(error.message.contains(expected), "{rule}: {error}");
        }
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

    #[test]
    fn binding_validation_follows_the_api_server() {
        let cases = [
            (
                "roleRef: {kind: Role, name: r}",
                "roleRef.kind: Unsupported value \"Role\"",
            ),
            (
                "roleRef: {apiGroup: x.io, kind: ClusterRole, name: r}",
                "roleRef.apiGroup",
            ),
            (
                "roleRef: {kind: ClusterRole, name: ''}",
                "roleRef.name: Required value",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\nsubjects: [{kind: ServiceAccount, name: s}]",
                "subjects[0].namespace: Required value",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\nsubjects: [{kind: User, name: u, apiGroup: ''}]",
                "",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\nsubjects: [{kind: User, name: u, apiGroup: x.io}]",
                "subjects[0].apiGroup: Unsupported value \"x.io\"",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\n\
                 subjects: [{kind: ServiceAccount, name: s, namespace: team, apiGroup: x.io}]",
                "subjects[0].apiGroup",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\nsubjects: [{kind: Robot, name: u}]",
                "kind",
            ),
            (
                "roleRef: {kind: ClusterRole, name: r}\nsubjects: [{kind: User}]",
                "name: Required",
            ),
        ];
        for (body, expected) in cases {
            let yaml = cluster_role("r", "{}", &grants("[nodes]"))
                + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n"
                + body;
            match Policy::parse(&yaml) {
                Ok(_) => assert!(expected.is_empty(), "{body}: accepted"),
                Err(error) => {
                    assert!(!expected.is_empty(), "{body}: {error}");
                    assert!(error.message.contains(expected), "{body}: {error}");
                }
            }
        }
    }

    #[test]
    fn names_are_required_and_unique() {
        let unnamed = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nrules: []\n";
        assert!(
            parse_error(unnamed)
                .message
                .contains("metadata.name: Required value")
        );
        let slashed = cluster_role("a/b", "{}", "rules: []");
        assert!(
            parse_error(&slashed)
                .message
                .contains("may not contain '/'")
        );
        let twice = cluster_role("r", "{}", "rules: []") + &cluster_role("r", "{}", "rules: []");
        let error = parse_error(&twice);
        assert_eq!(error.line, Some(8));
        assert!(
            error
                .message
                .contains("ClusterRole \"r\" is defined twice (first at line 1)"),
            "{error}"
        );
        let twice = cluster_role("r", "{}", "rules: []")
            + &bind_user("b", "r", "u")
            + &bind_user("b", "r", "v");
        assert!(
            parse_error(&twice)
                .message
                .contains("ClusterRoleBinding \"b\" is defined twice")
        );
    }

    #[test]
    fn error_display_prefixes_the_line() {
        let error = PolicyError {
            line: Some(3),
            message: "bad".to_owned(),
        };
        assert_eq!(error.to_string(), "line 3: bad");
        let error = PolicyError {
            line: None,
            message: "bad".to_owned(),
        };
        assert_eq!(error.to_string(), "bad");
    }
}
