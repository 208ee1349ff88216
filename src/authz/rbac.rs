//! Kubernetes RBAC evaluated locally: the authorizer of embedded mode (`--rbac-policy-file`) and
//! the evaluator behind `kubelet-guard rbac-audit`.
//!
//! Owns: turning streams of `rbac.authorization.k8s.io/v1` objects into a validated [`Policy`],
//! flattening aggregated ClusterRoles, and answering whether some binding grants an identity a
//! resource request.
//!
//! Must not: read files, log, know HTTP or kubelet paths (the caller turns a request into a
//! [`ResourceRequest`]), or add implicit groups such as `system:authenticated` (the caller does).
//!
//! Scope is the RBAC authorizer's: a cluster-scoped request (`namespace: ""`, such as the kubelet's
//! `nodes/<subresource>`) is granted only by ClusterRoleBindings; a namespaced request (such as
//! `create` on `pods/exec` in `team-a`) by ClusterRoleBindings and by the RoleBindings of its
//! namespace, whose `roleRef` names a Role of that namespace or a ClusterRole. A Role or RoleBinding
//! whose rules cover `nodes` is reported, since it can never reach the kubelet.
//!
//! Follows Kubernetes, so a file means here what it would mean in a cluster:
//! - matching: `pkg/apis/rbac/v1/evaluation_helpers.go` (`VerbMatches`, `APIGroupMatches`,
//!   `ResourceMatches`, `ResourceNameMatches`) as combined by `RuleAllows` in
//!   `plugin/pkg/auth/authorizer/rbac/rbac.go`, and its `VisitRulesFor` for scope;
//! - subjects: `appliesToUser` in `rbac.go` (a RoleBinding's ServiceAccount subject without a
//!   namespace is in the binding's namespace), after the defaults of `pkg/apis/rbac/v1/defaults.go`;
//! - validation: `pkg/apis/rbac/validation/validation.go` (what the API server would reject, we
//!   reject); a namespaced object without `metadata.namespace` is taken to be in `default`;
//! - aggregation: `pkg/controller/clusterroleaggregation`, taken to its fixed point at parse time.
//!
//! A binding to a role that is not in the input grants nothing in a cluster. [`Policy::parse`]
//! (serving) rejects it, since in a policy file it is almost always a typo; with
//! [`MissingRoles::Report`] ([`Policy::parse_lenient`], [`PolicyBuilder`], used by auditing) it is
//! kept as an [`UnresolvedBinding`] and reported.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

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

/// A validated RBAC policy: every binding with the effective rules of its role.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    cluster_bindings: Vec<Binding>,
    role_bindings: Vec<Binding>,
    roles: Vec<RoleDefinition>,
    unresolved: Vec<UnresolvedBinding>,
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
    /// Namespace of the object; `""` for a cluster-scoped resource such as `nodes`.
    pub namespace: &'a str,
    /// Kubernetes verb, e.g. `get` or `create`.
    pub verb: &'a str,
}

/// The two kinds of binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BindingKind {
    /// Grants cluster-scoped requests and namespaced requests in every namespace.
    ClusterRoleBinding,
    /// Grants namespaced requests in its own namespace only.
    RoleBinding,
}

/// The two kinds of role a binding may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RoleKind {
    /// A cluster-wide role, possibly aggregated.
    ClusterRole,
    /// A role of one namespace; only a RoleBinding of that namespace can refer to it.
    Role,
}

/// Which binding, through which role, allowed a request (for audit records).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Name of the binding.
    pub binding: String,
    /// Name of the role it refers to.
    pub role: String,
    /// Whether the binding is a ClusterRoleBinding or a RoleBinding.
    pub binding_kind: BindingKind,
    /// Namespace of a RoleBinding; `""` for a ClusterRoleBinding.
    pub namespace: String,
    /// Whether the role is a ClusterRole or a Role.
    pub role_kind: RoleKind,
}

/// Where an object was read: a source (a file name, `""` for [`Policy::parse`]) and a line.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The file or listing the object came from; `""` when there was only one.
    pub source: String,
    /// 1-based line of the object's document; 0 when unknown (a cluster listing).
    pub line: usize,
}

/// One subject of one binding with the effective rules it is granted.
#[derive(Clone, Copy, Debug)]
pub struct SubjectGrant<'a> {
    /// Name of the binding.
    pub binding: &'a str,
    /// Name of the role it refers to.
    pub role: &'a str,
    /// The subject, with Kubernetes' defaults applied (`apiGroup` of users and groups filled in;
    /// a RoleBinding's ServiceAccount subject in the binding's namespace when it named none).
    pub subject: &'a Subject,
    /// The role's effective rules (for an aggregated role, the union of the selected roles' rules).
    pub rules: &'a [PolicyRule],
    /// Whether the binding is a ClusterRoleBinding or a RoleBinding.
    pub binding_kind: BindingKind,
    /// Namespace of a RoleBinding; `""` for a ClusterRoleBinding.
    pub namespace: &'a str,
    /// Whether the role is a ClusterRole or a Role.
    pub role_kind: RoleKind,
    /// Where the binding was read.
    pub location: &'a Location,
}

/// A ClusterRole or Role with its effective rules.
#[derive(Clone, Copy, Debug)]
pub struct RoleView<'a> {
    /// ClusterRole or Role.
    pub kind: RoleKind,
    /// Namespace of a Role; `""` for a ClusterRole.
    pub namespace: &'a str,
    /// Name of the role.
    pub name: &'a str,
    /// Its effective rules (an aggregated ClusterRole's are those of the roles it selects).
    pub rules: &'a [PolicyRule],
    /// Where the role was read.
    pub location: &'a Location,
}

/// A binding whose role is not in the input: in a cluster it grants nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct UnresolvedBinding {
    /// ClusterRoleBinding or RoleBinding.
    pub kind: BindingKind,
    /// Namespace of a RoleBinding; `""` for a ClusterRoleBinding.
    pub namespace: String,
    /// Name of the binding.
    pub name: String,
    /// Kind of the missing role.
    pub role_kind: RoleKind,
    /// Name of the missing role.
    pub role: String,
    /// The binding's subjects, defaulted as for resolved bindings.
    pub subjects: Vec<Subject>,
    /// Where the binding was read.
    pub location: Location,
}

/// Something loaded that grants less than it seems to. Never fatal.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyWarning {
    /// A Role, or a RoleBinding's role, covers `nodes`, which only a ClusterRoleBinding can grant.
    NamespacedNodes {
        /// `Role` or `RoleBinding`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A binding without subjects.
    NoSubjects {
        /// ClusterRoleBinding or RoleBinding.
        kind: BindingKind,
        /// Namespace of a RoleBinding; `""` for a ClusterRoleBinding.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// No ClusterRoleBinding, so nothing cluster-scoped is granted.
    NoClusterRoleBinding {
        /// Whether RoleBindings still grant namespaced requests.
        role_bindings: bool,
    },
    /// A namespaced object without `metadata.namespace`, taken to be in `default`.
    DefaultNamespace {
        /// `Role` or `RoleBinding`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where it was read.
        location: Location,
    },
    /// A binding whose role is not in the input ([`MissingRoles::Report`] only).
    MissingRole(Box<UnresolvedBinding>),
    /// An object defined twice ([`MissingRoles::Report`] only): the later definition is kept, as
    /// applying both to a cluster would.
    Redefined {
        /// Its kind.
        kind: &'static str,
        /// `namespace/name` or `name`.
        name: String,
        /// The definition dropped.
        first: Location,
        /// The definition kept.
        then: Location,
    },
}

/// What a binding to a role that is not in the input does to parsing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingRoles {
    /// Reject the input (serving: such a binding is almost always a typo). Also rejects an object
    /// defined twice.
    #[default]
    Reject,
    /// Keep the binding as unresolved, granting nothing, and warn (auditing). An object defined
    /// twice keeps its later definition, with a warning.
    Report,
}

/// One object of an input stream, before validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based line where its document starts; 0 when unknown (a cluster listing).
    pub line: usize,
    /// Its index in the `List` that held it, if any.
    pub item: Option<usize>,
    /// The object, or a `v1` `List` of objects.
    pub value: Value,
}

/// Builds a [`Policy`] from several sources (files, a cluster listing), each loaded whole or not
/// at all.
#[derive(Debug, Default)]
pub struct PolicyBuilder {
    objects: Objects,
    missing_roles: MissingRoles,
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
    /// (objects loaded but unable to grant what they seem to). A binding to a role that is not in
    /// the stream is an error.
    pub fn parse(yaml: &str) -> Result<(Policy, Vec<String>), PolicyError> {
        Self::parse_with(yaml, MissingRoles::Reject)
    }

    /// As [`Policy::parse`], except that a binding to a role that is not in the stream is kept as
    /// an [`UnresolvedBinding`] (granting nothing) with a warning, and an object defined twice
    /// keeps its later definition.
    pub fn parse_lenient(yaml: &str) -> Result<(Policy, Vec<String>), PolicyError> {
        Self::parse_with(yaml, MissingRoles::Report)
    }

    /// The first binding whose subjects include `who` and whose role has a rule allowing
    /// `request`, or `None` when nothing grants it: ClusterRoleBindings in input order, then, for
    /// a namespaced request, the RoleBindings of its namespace in input order.
    pub fn authorize(&self, who: &Identity, request: &ResourceRequest<'_>) -> Option<Grant> {
        let namespaced = self
            .role_bindings()
            .filter(|grant| !request.namespace.is_empty() && grant.namespace == request.namespace);
        self.bindings()
            .chain(namespaced)
            .filter(|grant| subject_matches(grant.subject, who))
            .find(|grant| grant.rules.iter().any(|rule| rule_allows(rule, request)))
            .map(|grant| Grant {
                binding: grant.binding.to_owned(),
                role: grant.role.to_owned(),
                binding_kind: grant.binding_kind,
                namespace: grant.namespace.to_owned(),
                role_kind: grant.role_kind,
            })
    }

    /// Every (ClusterRoleBinding, subject) pair in input order with the effective rules it grants:
    /// everything that can grant a cluster-scoped request such as `nodes/proxy`.
    pub fn bindings(&self) -> impl Iterator<Item = SubjectGrant<'_>> {
        subject_grants(&self.cluster_bindings)
    }

    /// Every (RoleBinding, subject) pair in input order with the effective rules it grants in its
    /// namespace.
    pub fn role_bindings(&self) -> impl Iterator<Item = SubjectGrant<'_>> {
        subject_grants(&self.role_bindings)
    }

    /// Every ClusterRole, then every Role, in input order, with its effective rules.
    pub fn roles(&self) -> impl Iterator<Item = RoleView<'_>> {
        self.roles.iter().map(|role| RoleView {
            kind: role.kind,
            namespace: &role.namespace,
            name: &role.name,
            rules: &role.rules,
            location: &role.location,
        })
    }

    /// The bindings whose role is not in the input ([`MissingRoles::Report`] only).
    pub fn unresolved_bindings(&self) -> &[UnresolvedBinding] {
        &self.unresolved
    }

    fn parse_with(
        yaml: &str,
        missing_roles: MissingRoles,
    ) -> Result<(Policy, Vec<String>), PolicyError> {
        let documents = documents(yaml)?;
        if documents.is_empty() {
            return Err(PolicyError::new(None, "the policy file holds no documents"));
        }
        let mut builder = PolicyBuilder::new(missing_roles);
        builder.add_source("", documents)?;
        let (policy, warnings) = builder.build()?;
        Ok((policy, warnings.iter().map(ToString::to_string).collect()))
    }
}

impl PolicyBuilder {
    /// An empty builder; `missing_roles` says what a binding to an absent role does.
    pub fn new(missing_roles: MissingRoles) -> PolicyBuilder {
        PolicyBuilder {
            objects: Objects::default(),
            missing_roles,
        }
    }

    /// Validates and adds every RBAC object of one source. A source holding an invalid object, a
    /// kind other than the four RBAC kinds and `List`, or a wrong `apiVersion` is rejected whole,
    /// and the builder is left as it was.
    pub fn add_source(
        &mut self,
        source: &str,
        documents: Vec<Document>,
    ) -> Result<(), PolicyError> {
        let mut objects = Objects::default();
        for document in documents {
            let origin = Origin {
                source,
                line: document.line,
                item: document.item,
            };
            objects.load(document.value, &origin)?;
        }
        self.objects.append(objects);
        Ok(())
    }

    /// Resolves every binding against the effective rules of its role.
    pub fn build(self) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        self.objects.into_policy(self.missing_roles)
    }
}

impl fmt::Display for Grant {
    /// `ClusterRoleBinding "b" of ClusterRole "r"`, or `RoleBinding "ns/b" of Role "r"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binding = qualified(&self.namespace, &self.binding);
        write!(
            f,
            "{} {binding:?} of {} {:?}",
            self.binding_kind, self.role_kind, self.role
        )
    }
}

impl BindingKind {
    /// `ClusterRoleBinding` or `RoleBinding`.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingKind::ClusterRoleBinding => "ClusterRoleBinding",
            BindingKind::RoleBinding => "RoleBinding",
        }
    }
}

impl fmt::Display for BindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RoleKind {
    /// `ClusterRole` or `Role`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::ClusterRole => "ClusterRole",
            RoleKind::Role => "Role",
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Location {
    /// `file:12`, `file` when the line is unknown, or `line 12` for a single unnamed source.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.source.as_str(), self.line) {
            ("", line) => write!(f, "line {line}"),
            (source, 0) => f.write_str(source),
            (source, line) => write!(f, "{source}:{line}"),
        }
    }
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyWarning::NamespacedNodes {
                kind,
                namespace,
                name,
            } => write!(
                f,
                "{kind} {namespace}/{name} cannot grant cluster-scoped nodes access; it grants \
                 only within namespace {namespace}"
            ),
            PolicyWarning::NoSubjects {
                kind,
                namespace,
                name,
            } => write!(
                f,
                "{kind} {} has no subjects; it grants nothing",
                qualified(namespace, name)
            ),
            PolicyWarning::NoClusterRoleBinding { role_bindings } => {
                let denied = if *role_bindings {
                    "every cluster-scoped request"
                } else {
                    "every request"
                };
                write!(
                    f,
                    "the policy has no ClusterRoleBinding; {denied} is denied"
                )
            }
            PolicyWarning::DefaultNamespace {
                kind,
                name,
                location,
            } => write!(
                f,
                "{kind} {name} ({location}) has no metadata.namespace; taken to be in \"default\""
            ),
            PolicyWarning::MissingRole(binding) => write!(
                f,
                "{} {} ({}) refers to {} {}, which is not in the input; it grants nothing",
                binding.kind,
                qualified(&binding.namespace, &binding.name),
                binding.location,
                binding.role_kind,
                binding.role
            ),
            PolicyWarning::Redefined {
                kind,
                name,
                first,
                then,
            } => write!(
                f,
                "{kind} {name} is defined twice ({first}, then {then}); the later definition is used"
            ),
        }
    }
}

impl PolicyError {
    fn new(line: Option<usize>, message: impl Into<String>) -> PolicyError {
        let message = message.into();
        PolicyError { line, message }
    }
}

/// The resource names a rule may grant a request on, [`rule_scope`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScope<'r> {
    /// Every object: the rule lists no `resourceNames`.
    Any,
    /// Only the objects listed in the rule's `resourceNames`.
    Only(&'r [String]),
}

/// Whether `rule` allows the resource request: Kubernetes' `RuleAllows` for resource requests.
///
/// Verbs and API groups match literally or through `*`. The resource matches as `*`, as the
/// combined `resource/subresource`, or as `*/subresource`; `nodes/*` is no wildcard. A rule with
/// `resourceNames` matches only those names. Non-resource-URL rules name no resources, so never match.
pub fn rule_allows(rule: &PolicyRule, request: &ResourceRequest<'_>) -> bool {
    match rule_scope(rule, request) {
        Some(NameScope::Any) => true,
        Some(NameScope::Only(names)) => names.iter().any(|listed| listed == request.name),
        None => false,
    }
}

/// [`rule_allows`] for every name at once: `None` when the rule does not allow the request's verb,
/// group and resource, else the names it allows them on (`request.name` is not looked at).
pub fn rule_scope<'r>(
    rule: &'r PolicyRule,
    request: &ResourceRequest<'_>,
) -> Option<NameScope<'r>> {
    let applies = holds(Some(&rule.verbs), request.verb)
        && holds(rule.api_groups.as_ref(), request.api_group)
        && resource_matches(rule, request);
    let scope = match rule.resource_names.as_deref() {
        None | Some([]) => NameScope::Any,
        Some(names) => NameScope::Only(names),
    };
    applies.then_some(scope)
}

/// Whether a binding subject denotes `who`: Kubernetes' `appliesToUser`, on a defaulted subject.
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

/// The API group that `User` and `Group` subjects and every `roleRef` belong to.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The namespace of a namespaced object that names none (`kubectl apply`'s default context).
const DEFAULT_NAMESPACE: &str = "default";

/// One binding resolved against its role.
#[derive(Clone, Debug)]
struct Binding {
    kind: BindingKind,
    namespace: String,
    name: String,
    role_kind: RoleKind,
    role: String,
    subjects: Vec<Subject>,
    rules: Vec<PolicyRule>,
    location: Location,
}

/// One role with its effective rules.
#[derive(Clone, Debug)]
struct RoleDefinition {
    kind: RoleKind,
    namespace: String,
    name: String,
    rules: Vec<PolicyRule>,
    location: Location,
}

/// Where an object came from: its source, its document's first line and, inside a List, its
/// item index.
#[derive(Clone, Copy)]
struct Origin<'s> {
    source: &'s str,
    line: usize,
    item: Option<usize>,
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
struct Located<T> {
    location: Location,
    object: T,
}

/// Everything loaded from the sources, before roles are resolved.
#[derive(Debug, Default)]
struct Objects {
    cluster_roles: Vec<Located<ClusterRole>>,
    cluster_bindings: Vec<Located<ClusterRoleBinding>>,
    roles: Vec<Located<Role>>,
    role_bindings: Vec<Located<RoleBinding>>,
    warnings: Vec<PolicyWarning>,
}

/// A binding of either kind, before its role is resolved.
struct RawBinding {
    kind: BindingKind,
    namespace: String,
    name: String,
    role_kind: RoleKind,
    role: String,
    subjects: Vec<Subject>,
    location: Location,
}

impl Objects {
    /// Checks `kind` and `apiVersion`, then validates the object (or List) and files it.
    fn load(&mut self, value: Value, origin: &Origin<'_>) -> Result<(), PolicyError> {
        let text = |field| value.get(field).and_then(Value::as_str).unwrap_or_default();
        let (api_version, kind) = (text("apiVersion").to_owned(), text("kind").to_owned());
        let what = format!("{kind} {:?}", object_name(&value));
        let location = origin.location();
        let invalid = |message: String| origin.error(format!("{what}: {message}"));
        match (kind.as_str(), api_version.as_str()) {
            ("List", "v1") if origin.item.is_none() => self.load_list(value, origin)?,
            ("ClusterRole", RBAC_V1) => {
                let role: ClusterRole = typed(value, &what, origin)?;
                check_cluster_role(&role).map_err(invalid)?;
                self.cluster_roles.push(Located {
                    location,
                    object: role,
                });
            }
            ("ClusterRoleBinding", RBAC_V1) => {
                let mut binding: ClusterRoleBinding = typed(value, &what, origin)?;
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
    fn append(&mut self, mut other: Objects) {
        self.cluster_roles.append(&mut other.cluster_roles);
        self.cluster_bindings.append(&mut other.cluster_bindings);
        self.roles.append(&mut other.roles);
        self.role_bindings.append(&mut other.role_bindings);
        self.warnings.append(&mut other.warnings);
    }

    /// Resolves every binding against the effective rules of its role.
    fn into_policy(
        self,
        missing_roles: MissingRoles,
    ) -> Result<(Policy, Vec<PolicyWarning>), PolicyError> {
        let mut warnings = self.warnings;
        let meta = |m: &ObjectMeta| qualified_meta(m);
        let cluster_roles = dedupe(
            self.cluster_roles,
            |r| meta(&r.metadata),
            "ClusterRole",
            missing_roles,
            &mut warnings,
        )?;
        let roles = dedupe(
            self.roles,
            |r| meta(&r.metadata),
            "Role",
            missing_roles,
            &mut warnings,
        )?;
        let cluster_bindings = dedupe(
            self.cluster_bindings,
            |b| meta(&b.metadata),
            "ClusterRoleBinding",
            missing_roles,
            &mut warnings,
        )?;
        let role_bindings = dedupe(
            self.role_bindings,
            |b| meta(&b.metadata),
            "RoleBinding",
            missing_roles,
            &mut warnings,
        )?;

        let cluster_index: BTreeMap<&str, &ClusterRole> = cluster_roles
            .iter()
            .map(|role| {
                (
                    role.object.metadata.name.as_deref().unwrap_or_default(),
                    &role.object,
                )
            })
            .collect();
        let role_index: BTreeMap<String, &Role> = roles
            .iter()
            .map(|role| (qualified_meta(&role.object.metadata), &role.object))
            .collect();

        let mut policy = Policy::default();
        for Located { location, object } in &cluster_roles {
            let name = object.metadata.name.clone().unwrap_or_default();
            let rules = effective_rules(&name, &cluster_index).unwrap_or_default();
            policy.roles.push(RoleDefinition {
                kind: RoleKind::ClusterRole,
                namespace: String::new(),
                name,
                rules,
                location: location.clone(),
            });
        }
        for Located { location, object } in &roles {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let name = object.metadata.name.clone().unwrap_or_default();
            let rules = object.rules.clone().unwrap_or_default();
            if covers_nodes(&rules) {
                warnings.push(PolicyWarning::NamespacedNodes {
                    kind: "Role",
                    namespace: namespace.clone(),
                    name: name.clone(),
                });
            }
            policy.roles.push(RoleDefinition {
                kind: RoleKind::Role,
                namespace,
                name,
                rules,
                location: location.clone(),
            });
        }

        let raw = cluster_bindings
            .into_iter()
            .map(RawBinding::from_cluster)
            .chain(role_bindings.into_iter().map(RawBinding::from_namespaced));
        for binding in raw {
            let rules = match binding.role_kind {
                RoleKind::ClusterRole => effective_rules(&binding.role, &cluster_index),
                RoleKind::Role => role_index
                    .get(&qualified(&binding.namespace, &binding.role))
                    .map(|role| role.rules.clone().unwrap_or_default()),
            };
            let Some(rules) = rules else {
                if missing_roles == MissingRoles::Reject {
                    let message = format!(
                        "{} {:?} refers to {} {:?}, which is not in the policy file",
                        binding.kind,
                        qualified(&binding.namespace, &binding.name),
                        binding.role_kind,
                        binding.role
                    );
                    return Err(PolicyError::new(Some(binding.location.line), message));
                }
                let unresolved = binding.unresolved();
                warnings.push(PolicyWarning::MissingRole(Box::new(unresolved.clone())));
                policy.unresolved.push(unresolved);
                continue;
            };
            if binding.kind == BindingKind::RoleBinding && covers_nodes(&rules) {
                warnings.push(PolicyWarning::NamespacedNodes {
                    kind: "RoleBinding",
                    namespace: binding.namespace.clone(),
                    name: binding.name.clone(),
                });
            }
            if binding.subjects.is_empty() {
                warnings.push(PolicyWarning::NoSubjects {
                    kind: binding.kind,
                    namespace: binding.namespace.clone(),
                    name: binding.name.clone(),
                });
            }
            let resolved = binding.resolve(rules);
            match resolved.kind {
                BindingKind::ClusterRoleBinding => policy.cluster_bindings.push(resolved),
                BindingKind::RoleBinding => policy.role_bindings.push(resolved),
            }
        }
        if policy.cluster_bindings.is_empty() {
            warnings.push(PolicyWarning::NoClusterRoleBinding {
                role_bindings: !policy.role_bindings.is_empty(),
            });
        }
        Ok((policy, warnings))
    }
}

impl RawBinding {
    fn from_cluster(located: Located<ClusterRoleBinding>) -> RawBinding {
        let Located { location, object } = located;
        RawBinding {
            kind: BindingKind::ClusterRoleBinding,
            namespace: String::new(),
            name: object.metadata.name.unwrap_or_default(),
            role_kind: RoleKind::ClusterRole,
            role: object.role_ref.name,
            subjects: object.subjects.unwrap_or_default(),
            location,
        }
    }

    fn from_namespaced(located: Located<RoleBinding>) -> RawBinding {
        let Located { location, object } = located;
        // Validated: the reference is to a Role or a ClusterRole.
        let role_kind = match object.role_ref.kind.as_str() {
            "Role" => RoleKind::Role,
            _ => RoleKind::ClusterRole,
        };
        RawBinding {
            kind: BindingKind::RoleBinding,
            namespace: object.metadata.namespace.unwrap_or_default(),
            name: object.metadata.name.unwrap_or_default(),
            role_kind,
            role: object.role_ref.name,
            subjects: object.subjects.unwrap_or_default(),
            location,
        }
    }

    fn resolve(self, rules: Vec<PolicyRule>) -> Binding {
        Binding {
            kind: self.kind,
            namespace: self.namespace,
            name: self.name,
            role_kind: self.role_kind,
            role: self.role,
            subjects: self.subjects,
            rules,
            location: self.location,
        }
    }

    fn unresolved(self) -> UnresolvedBinding {
        UnresolvedBinding {
            kind: self.kind,
            namespace: self.namespace,
            name: self.name,
            role_kind: self.role_kind,
            role: self.role,
            subjects: self.subjects,
            location: self.location,
        }
    }
}

/// Every (binding, subject) pair of `bindings`, in order.
fn subject_grants(bindings: &[Binding]) -> impl Iterator<Item = SubjectGrant<'_>> {
    bindings.iter().flat_map(|binding| {
        binding.subjects.iter().map(move |subject| SubjectGrant {
            binding: &binding.name,
            role: &binding.role,
            subject,
            rules: &binding.rules,
            binding_kind: binding.kind,
            namespace: &binding.namespace,
            role_kind: binding.role_kind,
            location: &binding.location,
        })
    })
}

/// Converts a document to its Kubernetes type, strictly as the API server's JSON decoding would.
fn typed<T: DeserializeOwned>(
    value: Value,
    what: &str,
    origin: &Origin<'_>,
) -> Result<T, PolicyError> {
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

/// `namespace/name`, or `name` for a cluster-scoped object.
fn qualified(namespace: &str, name: &str) -> String {
    match namespace {
        "" => name.to_owned(),
        namespace => format!("{namespace}/{name}"),
    }
}

/// [`qualified`] from an object's metadata.
fn qualified_meta(metadata: &ObjectMeta) -> String {
    qualified(
        metadata.namespace.as_deref().unwrap_or_default(),
        metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Drops all but one definition of each name: a second one is an error with
/// [`MissingRoles::Reject`], else the later one wins with a warning.
fn dedupe<T>(
    objects: Vec<Located<T>>,
    key: impl Fn(&T) -> String,
    kind: &'static str,
    missing_roles: MissingRoles,
    warnings: &mut Vec<PolicyWarning>,
) -> Result<Vec<Located<T>>, PolicyError> {
    let mut kept: Vec<Option<Located<T>>> = Vec::with_capacity(objects.len());
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for located in objects {
        let name = key(&located.object);
        let slot = kept.len();
        if let Some(first) = index.insert(name.clone(), slot) {
            let first = kept
                .get_mut(first)
                .and_then(Option::take)
                .map(|dropped| dropped.location)
                .unwrap_or_default();
            let then = located.location.clone();
            if missing_roles == MissingRoles::Reject {
                let message = format!("{kind} {name:?} is defined twice (first at {first})");
                return Err(PolicyError::new(Some(then.line), message));
            }
            warnings.push(PolicyWarning::Redefined {
                kind,
                name,
                first,
                then,
            });
        }
        kept.push(Some(located));
    }
    Ok(kept.into_iter().flatten().collect())
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

/// `ValidateClusterRole`, including its aggregation rule.
fn check_cluster_role(role: &ClusterRole) -> Result<(), String> {
    check_name("metadata.name", role.metadata.name.as_deref())?;
    for (index, rule) in role.rules.iter().flatten().enumerate() {
        check_rule(rule, false).map_err(|e| format!("rules[{index}].{e}"))?;
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

/// `ValidateRole`: a namespaced role's rules cannot name non-resource URLs.
fn check_role(role: &Role) -> Result<(), String> {
    check_name("metadata.name", role.metadata.name.as_deref())?;
    for (index, rule) in role.rules.iter().flatten().enumerate() {
        check_rule(rule, true).map_err(|e| format!("rules[{index}].{e}"))?;
    }
    Ok(())
}

/// `ValidateClusterRoleBinding` and `ValidateRoleBinding`, on a defaulted binding: a
/// ClusterRoleBinding refers to a ClusterRole, a RoleBinding to a Role or a ClusterRole.
fn check_binding(
    metadata: &ObjectMeta,
    role_ref: &RoleRef,
    subjects: &Option<Vec<Subject>>,
    namespaced: bool,
) -> Result<(), String> {
    check_name("metadata.name", metadata.name.as_deref())?;
    let RoleRef {
        api_group,
        kind,
        name,
    } = role_ref;
    ensure(
        api_group == RBAC_GROUP,
        &format!("roleRef.apiGroup: Unsupported value {api_group:?}"),
    )?;
    let (valid, expected) = match namespaced {
        true => (
            kind == "Role" || kind == "ClusterRole",
            "expected \"Role\" or \"ClusterRole\"",
        ),
        false => (kind == "ClusterRole", "expected \"ClusterRole\""),
    };
    ensure(
        valid,
        &format!("roleRef.kind: Unsupported value {kind:?}; {expected}"),
    )?;
    check_name("roleRef.name", Some(name))?;
    for (index, subject) in subjects.iter().flatten().enumerate() {
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

/// `validateRoleBindingSubject`, on a defaulted subject (a RoleBinding's ServiceAccount subjects
/// already carry the binding's namespace).
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

/// `validatePolicyRule`: catches, among others, a missing `apiGroups: [""]`.
fn check_rule(rule: &PolicyRule, namespaced: bool) -> Result<(), String> {
    let count = |list: &Option<Vec<String>>| list.as_ref().map_or(0, Vec::len);
    let (groups, resources) = (count(&rule.api_groups), count(&rule.resources));
    let names = count(&rule.resource_names);
    ensure(
        !rule.verbs.is_empty(),
        "verbs: Required value: verbs must contain at least one value",
    )?;
    if count(&rule.non_resource_urls) > 0 {
        ensure(
            !namespaced,
            "nonResourceURLs: namespaced rules cannot apply to non-resource URLs",
        )?;
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
fn effective_rules(root: &str, roles: &BTreeMap<&str, &ClusterRole>) -> Option<Vec<PolicyRule>> {
    roles.get(root)?;
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(name) = queue.pop_front() {
        let Some(role) = roles.get(name) else {
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
            for (selected, candidate) in roles {
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

/// Whether some rule could reach `nodes` if it were bound cluster-wide: a rule of the core group
/// (or `*`) naming `nodes`, a `nodes/` subresource, `*` or a `*/` subresource.
fn covers_nodes(rules: &[PolicyRule]) -> bool {
    rules.iter().any(|rule| {
        holds(rule.api_groups.as_ref(), "")
            && rule.resources.iter().flatten().any(|resource| {
                resource == "*"
                    || resource == "nodes"
                    || resource.starts_with("nodes/")
                    || resource.starts_with("*/")
            })
    })
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
            namespace: "",
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

    fn role(name: &str, namespace: &str, rules: &str) -> String {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, \
             namespace: {namespace}}}\nrules: {rules}\n---\n"
        )
    }

    fn role_binding(name: &str, namespace: &str, kind: &str, role: &str, subject: &str) -> String {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, \
             namespace: {namespace}}}\nroleRef: {{kind: {kind}, name: {role}}}\nsubjects: [{subject}]\n---\n"
        )
    }

    /// `request` in `namespace`.
    fn in_namespace<'a>(namespace: &'a str, request: ResourceRequest<'a>) -> ResourceRequest<'a> {
        ResourceRequest {
            namespace,
            ..request
        }
    }

    /// `create` on `pods/exec` of pod `web` in `namespace`: what `--pod-scoped-authz` asks.
    fn pod_exec(namespace: &str) -> ResourceRequest<'_> {
        ResourceRequest {
            api_group: "",
            resource: "pods",
            subresource: "exec",
            name: "web",
            namespace,
            verb: "create",
        }
    }

    const EXEC_RULES: &str = "[{apiGroups: [''], resources: [pods/exec], verbs: [create]}]";

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
            binding_kind: BindingKind::ClusterRoleBinding,
            namespace: String::new(),
            role_kind: RoleKind::ClusterRole,
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
    fn role_bindings_never_grant_nodes_and_are_reported() {
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
        assert_eq!(policy.role_bindings().count(), 1);
        assert_eq!(
            warnings,
            [
                "Role ns/viewer cannot grant cluster-scoped nodes access; it grants only within \
                 namespace ns",
                "RoleBinding ns/x cannot grant cluster-scoped nodes access; it grants only within \
                 namespace ns",
                "the policy has no ClusterRoleBinding; every cluster-scoped request is denied",
            ]
        );
    }

    #[test]
    fn role_bindings_without_nodes_rules_are_not_reported() {
        let yaml = role(
            "reader",
            "ns",
            "[{apiGroups: [''], resources: [pods/log], verbs: [get]}]",
        ) + &role_binding("b", "ns", "Role", "reader", "{kind: User, name: alice}");
        let (_, warnings) = parse(&yaml);
        assert_eq!(
            warnings,
            ["the policy has no ClusterRoleBinding; every cluster-scoped request is denied"]
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

    // --- namespaced requests: Roles and RoleBindings ---

    #[test]
    fn role_binding_to_a_role_grants_in_its_namespace_only() {
        let yaml = role("exec", "team-a", EXEC_RULES)
            + &role_binding("b", "team-a", "Role", "exec", "{kind: User, name: alice}");
        let (policy, _) = parse(&yaml);
        let grant = policy.authorize(&who("alice", &[]), &pod_exec("team-a"));
        let expected = Grant {
            binding: "b".to_owned(),
            role: "exec".to_owned(),
            binding_kind: BindingKind::RoleBinding,
            namespace: "team-a".to_owned(),
            role_kind: RoleKind::Role,
        };
        assert_eq!(grant, Some(expected));
        assert!(!alice_may(&policy, &pod_exec("team-b")));
        assert!(!alice_may(&policy, &pod_exec("")), "cluster-scoped");
        assert!(
            policy
                .authorize(&who("bob", &[]), &pod_exec("team-a"))
                .is_none()
        );
    }

    #[test]
    fn role_binding_to_a_cluster_role_grants_in_its_namespace_only() {
        let yaml = cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
            + &role_binding(
                "b",
                "team-a",
                "ClusterRole",
                "exec",
                "{kind: Group, name: devs}",
            );
        let (policy, _) = parse(&yaml);
        let dev = who("carol", &["devs"]);
        let grant = policy.authorize(&dev, &pod_exec("team-a")).unwrap();
        assert_eq!(grant.role_kind, RoleKind::ClusterRole);
        assert_eq!(
            grant.to_string(),
            "RoleBinding \"team-a/b\" of ClusterRole \"exec\""
        );
        assert!(policy.authorize(&dev, &pod_exec("team-b")).is_none());
    }

    #[test]
    fn role_bindings_never_grant_cluster_scoped_nodes() {
        let yaml = cluster_role("all", "{}", &grants("[\"*\"]"))
            + &role_binding(
                "b",
                "kube-system",
                "ClusterRole",
                "all",
                "{kind: User, name: alice}",
            );
        let (policy, _) = parse(&yaml);
        assert!(!alice_may(&policy, &node("proxy", "get")));
        // The same rules do grant namespaced core resources there.
        let pods = ResourceRequest {
            resource: "pods",
            ..in_namespace("kube-system", node("", "get"))
        };
        assert!(alice_may(&policy, &pods));
    }

    #[test]
    fn cluster_role_bindings_grant_namespaced_requests_everywhere() {
        let yaml = cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
            + &bind_user("b", "exec", "alice");
        let (policy, _) = parse(&yaml);
        for namespace in ["team-a", "team-b", "kube-system"] {
            let grant = policy.authorize(&who("alice", &[]), &pod_exec(namespace));
            assert_eq!(
                grant.map(|grant| grant.to_string()).as_deref(),
                Some("ClusterRoleBinding \"b\" of ClusterRole \"exec\"")
            );
        }
    }

    #[test]
    fn cluster_role_bindings_are_visited_before_role_bindings() {
        let yaml = role("exec", "team-a", EXEC_RULES)
            + &role_binding(
                "local",
                "team-a",
                "Role",
                "exec",
                "{kind: User, name: alice}",
            )
            + &cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
            + &bind_user("global", "exec", "alice");
        let (policy, _) = parse(&yaml);
        let grant = policy
            .authorize(&who("alice", &[]), &pod_exec("team-a"))
            .unwrap();
        assert_eq!(grant.binding, "global");
    }

    #[test]
    fn role_binding_cannot_use_a_role_of_another_namespace() {
        let yaml = role("exec", "team-b", EXEC_RULES)
            + &role_binding("b", "team-a", "Role", "exec", "{kind: User, name: alice}");
        let error = parse_error(&yaml);
        assert!(
            error
                .message
                .contains("RoleBinding \"team-a/b\" refers to Role \"exec\""),
            "{error}"
        );
    }

    #[test]
    fn role_binding_service_account_defaults_to_the_binding_namespace() {
        let yaml = role("exec", "team-a", EXEC_RULES)
            + &role_binding(
                "b",
                "team-a",
                "Role",
                "exec",
                "{kind: ServiceAccount, name: deployer}",
            );
        let (policy, _) = parse(&yaml);
        let account = who("system:serviceaccount:team-a:deployer", &[]);
        assert!(policy.authorize(&account, &pod_exec("team-a")).is_some());
        let grant = policy.role_bindings().next().unwrap();
        assert_eq!(grant.subject.namespace.as_deref(), Some("team-a"));
        let elsewhere = who("system:serviceaccount:team-b:deployer", &[]);
        assert!(policy.authorize(&elsewhere, &pod_exec("team-a")).is_none());
    }

    #[test]
    fn namespaced_objects_without_a_namespace_are_in_default() {
        let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: exec}\n\
                    rules: [{apiGroups: [''], resources: [pods/exec], verbs: [create]}]\n---\n\
                    apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b}\n\
                    roleRef: {kind: Role, name: exec}\nsubjects: [{kind: User, name: alice}]\n";
        let (policy, warnings) = parse(yaml);
        assert!(alice_may(&policy, &pod_exec("default")));
        assert_eq!(
            warnings[..2],
            [
                "Role exec (line 1) has no metadata.namespace; taken to be in \"default\"",
                "RoleBinding b (line 6) has no metadata.namespace; taken to be in \"default\"",
            ]
        );
    }

    #[test]
    fn role_and_role_binding_validation_follows_the_api_server() {
        let error = parse_error(&role("r", "ns", "[{nonResourceURLs: [/x], verbs: [get]}]"));
        assert!(
            error
                .message
                .contains("namespaced rules cannot apply to non-resource URLs"),
            "{error}"
        );
        let yaml = role("r", "ns", EXEC_RULES)
            + &role_binding("b", "ns", "Group", "r", "{kind: User, name: a}");
        let error = parse_error(&yaml);
        assert!(
            error.message.contains(
                "roleRef.kind: Unsupported value \"Group\"; expected \"Role\" or \"ClusterRole\""
            ),
            "{error}"
        );
        let yaml = role("r", "ns", EXEC_RULES)
            + &role_binding("b", "ns", "Role", "r", "{kind: Robot, name: a}");
        assert!(parse_error(&yaml).message.contains("subjects[0].kind"));
    }

    #[test]
    fn roles_lists_effective_rules() {
        let yaml = aggregated("agg", "{}", "[{matchLabels: {a: b}}]")
            + &cluster_role("leaf", "{a: b}", &grants("[nodes/log]"))
            + &role("exec", "team-a", EXEC_RULES);
        let (policy, _) = parse(&yaml);
        let listed: Vec<_> = policy
            .roles()
            .map(|role| {
                (
                    role.kind,
                    role.namespace,
                    role.name,
                    role.rules.len(),
                    role.location.line,
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                (RoleKind::ClusterRole, "", "agg", 1, 1),
                (RoleKind::ClusterRole, "", "leaf", 1, 10),
                (RoleKind::Role, "team-a", "exec", 1, 20),
            ]
        );
    }

    // --- rule_scope ---

    #[test]
    fn rule_scope_reports_the_names_a_rule_allows() {
        let named = rule(json!({
            "apiGroups": [""], "resources": ["nodes/proxy"], "resourceNames": ["a", "b"], "verbs": ["get"]
        }));
        let names = ["a".to_owned(), "b".to_owned()];
        assert_eq!(
            rule_scope(&named, &node("proxy", "get")),
            Some(NameScope::Only(&names[..]))
        );
        assert_eq!(rule_scope(&named, &node("proxy", "create")), None);
        let any = rule(json!({"apiGroups": [""], "resources": ["*"], "verbs": ["*"]}));
        assert_eq!(
            rule_scope(&any, &node("log", "delete")),
            Some(NameScope::Any)
        );
    }

    // --- lenient parsing and the builder ---

    #[test]
    fn lenient_parsing_reports_missing_roles() {
        let yaml = bind_user("b", "cluster-admin", "alice")
            + &role_binding(
                "rb",
                "kube-system",
                "Role",
                "gone",
                "{kind: User, name: bob}",
            )
            + &cluster_role("r", "{}", &grants("[nodes/metrics]"))
            + &bind_user("ok", "r", "carol");
        assert!(
            Policy::parse(&yaml).is_err(),
            "strict parsing must keep failing"
        );
        let (policy, warnings) = Policy::parse_lenient(&yaml).unwrap();
        assert_eq!(policy.bindings().count(), 1);
        assert!(!alice_may(&policy, &node("proxy", "get")));
        let unresolved: Vec<_> = policy
            .unresolved_bindings()
            .iter()
            .map(|b| {
                (
                    b.kind,
                    b.namespace.as_str(),
                    b.name.as_str(),
                    b.role_kind,
                    b.role.as_str(),
                    b.location.line,
                )
            })
            .collect();
        assert_eq!(
            unresolved,
            [
                (
                    BindingKind::ClusterRoleBinding,
                    "",
                    "b",
                    RoleKind::ClusterRole,
                    "cluster-admin",
                    1
                ),
                (
                    BindingKind::RoleBinding,
                    "kube-system",
                    "rb",
                    RoleKind::Role,
                    "gone",
                    13
                ),
            ]
        );
        assert_eq!(policy.unresolved_bindings()[0].subjects[0].name, "alice");
        assert_eq!(
            warnings,
            [
                "ClusterRoleBinding b (line 1) refers to ClusterRole cluster-admin, which is not in \
                 the input; it grants nothing",
                "RoleBinding kube-system/rb (line 13) refers to Role gone, which is not in the input; \
                 it grants nothing",
            ]
        );
    }

    #[test]
    fn lenient_parsing_keeps_the_later_definition() {
        let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
            + &cluster_role("r", "{}", &grants("[nodes/metrics]"))
            + &bind_user("b", "r", "alice");
        let (policy, warnings) = Policy::parse_lenient(&yaml).unwrap();
        assert!(alice_may(&policy, &node("metrics", "get")));
        assert!(!alice_may(&policy, &node("proxy", "get")));
        assert_eq!(
            warnings,
            ["ClusterRole r is defined twice (line 1, then line 11); the later definition is used"]
        );
    }

    #[test]
    fn builder_loads_a_source_whole_or_not_at_all() {
        let mut builder = PolicyBuilder::new(MissingRoles::Report);
        let good = documents(&(cluster_role("r", "{}", &grants("[nodes/proxy]")))).unwrap();
        builder.add_source("charts/a.yaml", good).unwrap();
        let bad =
            documents(&(bind_user("b", "r", "alice") + "apiVersion: v1\nkind: Pod\n")).unwrap();
        let error = builder.add_source("charts/b.yaml", bad).unwrap_err();
        assert_eq!(error.line, Some(13));
        let cross = documents(&bind_user("b", "r", "bob")).unwrap();
        builder.add_source("cluster", cross).unwrap();
        let (policy, warnings) = builder.build().unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let grants: Vec<_> = policy
            .bindings()
            .map(|grant| (grant.subject.name.as_str(), grant.location.to_string()))
            .collect();
        assert_eq!(grants, [("bob", "cluster:1".to_owned())]);
        assert_eq!(
            policy.roles().next().unwrap().location.to_string(),
            "charts/a.yaml:1"
        );
    }

    #[test]
    fn locations_print_compactly() {
        let at = |source: &str, line| {
            Location {
                source: source.to_owned(),
                line,
            }
            .to_string()
        };
        assert_eq!(at("", 3), "line 3");
        assert_eq!(at("a.yaml", 3), "a.yaml:3");
        assert_eq!(at("cluster", 0), "cluster");
    }
}
