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
//! rejects it (and an object defined twice), for checking a file; with [`MissingRoles::Report`]
//! ([`Policy::parse_lenient`], [`PolicyBuilder`]: serving and auditing) it is kept as an
//! [`UnresolvedBinding`] and reported, and the later of two definitions counts, as in a cluster.
//! Serving must: a file edited to revoke a grant by deleting its role is valid, and refusing it
//! would keep the last good file, grant included.
//!
//! Layout, in the order a policy is built: `parse` reads the YAML stream into documents and loads
//! each object (defaulted as the API server would); `validate` rejects what the API server would;
//! `build` resolves bindings against their roles (strictly or leniently) into a [`Policy`];
//! `aggregate` computes a ClusterRole's effective rules; `matching` answers whether a rule or a
//! subject applies to a request. This file holds the public types and the evaluation entry points.

mod aggregate;
mod build;
#[cfg(test)]
mod fixtures;
mod matching;
mod parse;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use serde_json::Value;

use crate::authn::Identity;
use parse::Objects;

pub use matching::{NameScope, rule_allows, rule_scope, subject_matches};
pub use parse::documents;

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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// The role's effective rules (for an aggregated role, the union of the selected roles' rules,
    /// and of its stored rules when auditing: `PolicyBuilder::with_stored_aggregates`).
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
    /// Its effective rules (an aggregated ClusterRole's are those of the roles it selects, and
    /// its stored rules when auditing).
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

/// Something loaded that grants otherwise than it seems to: less (a namespaced grant of nodes, a
/// binding to a missing role), or more (a role aggregated into the bootstrap roles). Never fatal.
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
    /// A ClusterRole that covers `nodes` is labelled to be aggregated into bootstrap roles of
    /// every cluster (`admin`, `edit`, `view`): whoever is bound to those gains what it grants.
    AggregatedIntoBootstrap {
        /// Its name.
        name: String,
        /// The bootstrap roles its labels name.
        into: Vec<&'static str>,
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
    /// Reject the input (checking a file: such a binding is usually a typo). Also rejects an
    /// object defined twice.
    #[default]
    Reject,
    /// Keep the binding as unresolved, granting nothing, and warn (serving, auditing). An object
    /// defined twice keeps its later definition, with a warning.
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
    stored_aggregates: bool,
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

impl PolicyError {
    fn new(line: Option<usize>, message: impl Into<String>) -> PolicyError {
        let message = message.into();
        PolicyError { line, message }
    }
}

/// The API group that `User` and `Group` subjects and every `roleRef` belong to.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

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

/// `namespace/name`, or `name` for a cluster-scoped object.
fn qualified(namespace: &str, name: &str) -> String {
    match namespace {
        "" => name.to_owned(),
        namespace => format!("{namespace}/{name}"),
    }
}

/// `line N: ` when the line is known.
fn line_prefix(line: &Option<usize>) -> String {
    line.map(|line| format!("line {line}: "))
        .unwrap_or_default()
}
