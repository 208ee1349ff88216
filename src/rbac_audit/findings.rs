//! Evaluation: for each subject and kubelet subresource, what the policy grants, with a severity.
//!
//! Every grant is the embedded evaluator's answer ([`rbac::rule_scope`] on the effective rules of
//! each ClusterRoleBinding, aggregation included): this module only asks it, per rule and per verb
//! the rule lists, about `nodes/<subresource>` for each subresource the kubelet checks, and
//! gathers the answers per subject. RoleBindings are asked the same question and, since they can
//! never grant cluster-scoped `nodes`, reported as ineffective when the answer is yes. A
//! ClusterRole labelled to be aggregated into `view`, `edit` or `admin` is asked too, on behalf of
//! whoever is bound to that bootstrap role in a cluster (a subject of kind `ClusterRole`): a chart
//! that ships one grants them, whatever it binds.
//!
//! Severity (issue 6): `critical` for `get`, `create` or `*` on `nodes/proxy` (command execution
//! on every reachable node), `high` for other writes or `nodes/log` / `nodes/checkpoint`, `medium`
//! for `nodes/configz`, `low` for read-only monitoring subresources, and `info` for expected admin
//! access (`system:masters`, or a grant only through a bootstrap admin role).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject as RbacSubject};
use serde::{Serialize, Serializer};

use super::suggest::Suggestion;
use crate::authz::rbac::{
    self, Location, NameScope, Policy, PolicyWarning, ResourceRequest, RoleKind, SubjectGrant,
    UnresolvedBinding,
};

/// The `nodes` subresources the kubelet authorizes, in report order.
pub const SUBRESOURCES: [&str; 10] = [
    "proxy",
    "metrics",
    "stats",
    "log",
    "pods",
    "healthz",
    "configz",
    "spec",
    "checkpoint",
    "statusz",
];

/// A binding subject: who a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`; or `ClusterRole` for whoever a ClusterRoleBinding
    /// binds, in any cluster, to the bootstrap role `view`, `edit` or `admin` (named by `name`),
    /// when a role in the input is labelled to be aggregated into it (and `view` flows on into
    /// `edit`, `edit` into `admin`).
    pub kind: String,
    /// Its name.
    pub name: String,
    /// A ServiceAccount's namespace; `""` for users and groups.
    pub namespace: String,
}

/// How much a finding matters, least first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Expected admin access; never trips `--fail-on`.
    Info,
    /// Read-only monitoring subresources.
    Low,
    /// The kubelet's configuration (`nodes/configz`).
    Medium,
    /// Writes other than exec, node logs (`nodes/log`), container checkpoints.
    High,
    /// Command execution in every container on every reachable node.
    Critical,
}

/// One binding that grants a finding's access, through one role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Via {
    /// The ClusterRoleBinding; empty on the finding of a `ClusterRole` subject, where `role` is
    /// the role aggregated into it and no binding in the input is involved.
    pub binding: String,
    /// The ClusterRole it refers to.
    pub role: String,
    /// Where the binding was read (`file:line`, or `cluster`).
    #[serde(serialize_with = "display")]
    pub location: Location,
}

/// What one subject can do with one kubelet subresource.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// Who.
    pub subject: Subject,
    /// The subresource, e.g. `nodes/proxy`.
    pub subresource: String,
    /// Every verb the policy grants on the subresource, sorted, as the roles list them
    /// (`get,list,watch` stays `get,list,watch`; `*` is kept as `*`), so a finding matches the role
    /// to edit. A finding exists only when one of them is a verb the kubelet asks about.
    pub verbs: Vec<String>,
    /// The node names the grant is restricted to; empty when unrestricted.
    pub resource_names: Vec<String>,
    /// Every binding and role that grants it.
    pub via: Vec<Via>,
    /// How much it matters.
    pub severity: Severity,
    /// A property of the subject, repeated on each of its findings: whether the subject can run
    /// commands in containers through `nodes/proxy` (`get`, `create` or `*` on it, through any
    /// binding). True on a subject's `nodes/metrics` finding too when the subject also holds
    /// `nodes/proxy`: fixing this finding alone does not clear it.
    pub exec_capable: bool,
    /// The least-privilege replacement, on a subject's `nodes/proxy` finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
}

/// Findings and warnings of one evaluation.
pub(super) struct Evaluation {
    /// Worst first, then by subject, then in [`SUBRESOURCES`] order.
    pub(super) findings: Vec<Finding>,
    /// What grants less than it seems to (ineffective RoleBindings, bindings to absent roles).
    pub(super) warnings: Vec<String>,
}

/// The verbs the kubelet asks about (docs/kubelet-api.md), and `*`.
const KUBELET_VERBS: [&str; 6] = ["get", "create", "update", "patch", "delete", "*"];

/// The verbs that make `nodes/proxy` command execution: a WebSocket exec needs only `get`.
const EXEC_VERBS: [&str; 3] = ["get", "create", "*"];

/// Verbs that write.
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "*"];

/// Bootstrap ClusterRoles whose holders are expected to have kubelet access.
const ADMIN_ROLES: [&str; 2] = ["cluster-admin", "system:kubelet-api-admin"];

/// The subject kind standing for whoever is bound to a bootstrap role a role is aggregated into.
const BOOTSTRAP_HOLDERS: &str = "ClusterRole";

/// The group that is superuser by construction.
const MASTERS: &str = "system:masters";

/// Evaluates every ClusterRoleBinding subject against every kubelet subresource.
pub(super) fn evaluate(policy: &Policy, policy_warnings: Vec<PolicyWarning>) -> Evaluation {
    let mut held: BTreeMap<(Subject, usize), Access> = BTreeMap::new();
    for grant in policy.bindings() {
        let subject = Subject::of(grant.subject);
        for (index, access) in accesses(grant.rules) {
            let entry = held.entry((subject.clone(), index)).or_default();
            entry.merge(access);
            entry.via.insert(Via::of(&grant));
        }
    }
    // A ClusterRole labelled into the bootstrap roles grants their subjects in every cluster,
    // bound or not in the input: a finding of the narrowest role its labels reach.
    let aggregated = aggregated(policy, &policy_warnings);
    for (labelled, granted) in &aggregated {
        let (name, location) = (labelled.name, labelled.location);
        // A bootstrap role's own rules reach its own subjects first.
        let holders = match BOOTSTRAP_CHAIN.contains(&name) {
            true => name,
            false => labelled.into,
        };
        let subject = Subject::holders_of(holders);
        for (index, access) in accesses(granted) {
            let entry = held.entry((subject.clone(), index)).or_default();
            entry.merge(access);
            entry.via.insert(Via {
                binding: String::new(),
                role: name.to_owned(),
                location: location.clone(),
            });
        }
    }
    let exec_capable: BTreeSet<&Subject> = held
        .iter()
        .filter(|((_, index), access)| *index == 0 && access.has_any(&EXEC_VERBS))
        .map(|((subject, _), _)| subject)
        .collect();
    let mut ranked: Vec<(usize, Finding)> = held
        .iter()
        .map(|((subject, index), access)| {
            let subresource = SUBRESOURCES.get(*index).copied().unwrap_or_default();
            let finding = Finding {
                subject: subject.clone(),
                subresource: format!("nodes/{subresource}"),
                verbs: access.verbs.iter().cloned().collect(),
                resource_names: match access.unrestricted {
                    true => Vec::new(),
                    false => access.names.iter().cloned().collect(),
                },
                via: access.via.iter().cloned().collect(),
                severity: severity(subject, subresource, access),
                exec_capable: exec_capable.contains(subject),
                suggestion: None,
            };
            (*index, finding)
        })
        .collect();
    ranked.sort_by(|(a_index, a), (b_index, b)| {
        (b.severity.cmp(&a.severity))
            .then_with(|| a.subject.cmp(&b.subject))
            .then_with(|| a_index.cmp(b_index))
    });

    let kept: BTreeSet<&str> = aggregated
        .iter()
        .map(|(labelled, _)| labelled.name)
        .collect();
    let mut warnings = Vec::new();
    for warning in &policy_warnings {
        match warning {
            PolicyWarning::AggregatedIntoBootstrap { name, .. }
                if !kept.contains(name.as_str()) => {}
            // Replaced by the precise account of `ineffective` below.
            PolicyWarning::NamespacedNodes { .. } => {}
            PolicyWarning::MissingRole(binding) => warnings.push(missing_role(binding)),
            PolicyWarning::NoClusterRoleBinding { .. } => warnings.push(
                match kept.is_empty() {
                    true => {
                        "the input holds no ClusterRoleBinding: nothing in it can grant \
                             kubelet access"
                    }
                    false => {
                        "the input holds no ClusterRoleBinding: it grants kubelet access \
                              only through the bootstrap roles its roles are aggregated into"
                    }
                }
                .to_owned(),
            ),
            other => warnings.push(other.to_string()),
        }
    }
    warnings.extend(ineffective(policy));
    Evaluation {
        findings: ranked.into_iter().map(|(_, finding)| finding).collect(),
        warnings,
    }
}

/// The bootstrap roles aggregated into one another, narrowest first: `view` is labelled into
/// `edit`, `edit` into `admin`.
const BOOTSTRAP_CHAIN: [&str; 3] = ["view", "edit", "admin"];

/// A ClusterRole labelled to be aggregated into the bootstrap roles.
struct Labelled<'a> {
    name: &'a str,
    /// The narrowest bootstrap role its labels reach.
    into: &'static str,
    location: &'a Location,
}

/// The ClusterRoles labelled into the bootstrap roles that cover nodes, with their effective
/// rules. `view` or `edit` itself (in a cluster's listing, covering nodes once a role is
/// aggregated into it) only when it grants more of the kubelet than the roles that reach it
/// together: those are the ones to report, not each link of the chain after them.
fn aggregated<'a>(
    policy: &'a Policy,
    warnings: &'a [PolicyWarning],
) -> Vec<(Labelled<'a>, &'a [PolicyRule])> {
    let rank = |role: &str| BOOTSTRAP_CHAIN.iter().position(|link| *link == role);
    let labelled: Vec<(Labelled<'a>, &'a [PolicyRule])> = warnings
        .iter()
        .filter_map(|warning| match warning {
            PolicyWarning::AggregatedIntoBootstrap {
                name,
                into,
                location,
            } => {
                let role = policy
                    .roles()
                    .find(|role| role.kind == RoleKind::ClusterRole && role.name == name)?;
                let labelled = Labelled {
                    name: name.as_str(),
                    into: into.last()?,
                    location,
                };
                Some((labelled, role.rules))
            }
            _ => None,
        })
        .collect();
    let redundant: Vec<bool> = labelled
        .iter()
        .map(|(link, rules)| {
            let Some(own) = rank(link.name) else {
                return false;
            };
            let reaching: Vec<&[PolicyRule]> = labelled
                .iter()
                .filter(|(other, _)| {
                    other.name != link.name && rank(other.into).is_some_and(|at| at <= own)
                })
                .map(|(_, rules)| *rules)
                .collect();
            !reaching.is_empty() && covered(rules, &reaching.concat())
        })
        .collect();
    labelled
        .into_iter()
        .zip(redundant)
        .filter_map(|(entry, redundant)| (!redundant).then_some(entry))
        .collect()
}

/// Whether the rules `by` grant everything the rules `these` grant on the kubelet's
/// subresources: each verb the kubelet asks about on each subresource, on the same nodes or more
/// (`*` in `by` standing for every verb).
fn covered(these: &[PolicyRule], by: &[PolicyRule]) -> bool {
    let by = scopes(by);
    scopes(these)
        .into_iter()
        .filter(|((_, verb), _)| KUBELET_VERBS.contains(verb))
        .all(|((index, verb), scope)| {
            let mut held = [by.get(&(index, verb)), by.get(&(index, "*"))]
                .into_iter()
                .flatten();
            match scope {
                NodeScope::Any => held.any(|by| *by == NodeScope::Any),
                NodeScope::Names(names) => {
                    let mut reached = BTreeSet::new();
                    for by in held {
                        match by {
                            NodeScope::Any => return true,
                            NodeScope::Names(by) => reached.extend(by.iter().copied()),
                        }
                    }
                    names.is_subset(&reached)
                }
            }
        })
}

/// On which nodes a verb is granted.
#[derive(Debug, PartialEq)]
enum NodeScope<'a> {
    Any,
    Names(BTreeSet<&'a str>),
}

/// What `rules` grant per kubelet subresource (by index in [`SUBRESOURCES`]) and verb.
fn scopes(rules: &[PolicyRule]) -> BTreeMap<(usize, &str), NodeScope<'_>> {
    let mut granted: BTreeMap<(usize, &str), NodeScope<'_>> = BTreeMap::new();
    for (index, verb, scope) in grants(rules) {
        let entry = granted
            .entry((index, verb.as_str()))
            .or_insert_with(|| NodeScope::Names(BTreeSet::new()));
        match (scope, &mut *entry) {
            (NameScope::Any, _) => *entry = NodeScope::Any,
            (NameScope::Only(names), NodeScope::Names(held)) => {
                held.extend(names.iter().map(String::as_str));
            }
            (NameScope::Only(_), NodeScope::Any) => {}
        }
    }
    granted
}

impl Subject {
    /// The finding subject of a binding subject.
    pub(super) fn of(subject: &RbacSubject) -> Subject {
        let namespace = match subject.kind.as_str() {
            "ServiceAccount" => subject.namespace.clone().unwrap_or_default(),
            _ => String::new(),
        };
        Subject {
            kind: subject.kind.clone(),
            name: subject.name.clone(),
            namespace,
        }
    }

    /// Whoever a ClusterRoleBinding binds to the bootstrap ClusterRole `role` in a cluster.
    fn holders_of(role: &str) -> Subject {
        Subject {
            kind: BOOTSTRAP_HOLDERS.to_owned(),
            name: role.to_owned(),
            namespace: String::new(),
        }
    }

    /// Whether this stands for the subjects of a bootstrap role rather than for one subject.
    pub(super) fn is_bootstrap_holders(&self) -> bool {
        self.kind == BOOTSTRAP_HOLDERS
    }

    /// The binding subject, defaulted as the evaluator expects (for [`rbac::subject_matches`]).
    pub(super) fn to_rbac(&self) -> RbacSubject {
        let service_account = self.kind == "ServiceAccount";
        RbacSubject {
            kind: self.kind.clone(),
            name: self.name.clone(),
            namespace: service_account.then(|| self.namespace.clone()),
            api_group: (!service_account).then(|| "rbac.authorization.k8s.io".to_owned()),
        }
    }
}

impl fmt::Display for Subject {
    /// `ServiceAccount monitoring/prometheus`, `User alice`, `Group ops`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace.as_str() {
            "" => write!(f, "{} {}", self.kind, self.name),
            namespace => write!(f, "{} {namespace}/{}", self.kind, self.name),
        }
    }
}

impl Severity {
    /// `critical`, `high`, `medium`, `low` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Via {
    /// `binding -> role`, or `role (aggregated)` without a binding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.binding.as_str() {
            "" => write!(f, "{} (aggregated)", self.role),
            binding => write!(f, "{binding} -> {}", self.role),
        }
    }
}

impl Via {
    fn of(grant: &SubjectGrant<'_>) -> Via {
        Via {
            binding: grant.binding.to_owned(),
            role: grant.role.to_owned(),
            location: grant.location.clone(),
        }
    }
}

/// What one subject holds on one subresource, gathered over rules and bindings.
#[derive(Default)]
struct Access {
    verbs: BTreeSet<String>,
    names: BTreeSet<String>,
    unrestricted: bool,
    via: BTreeSet<Via>,
}

impl Access {
    fn merge(&mut self, other: Access) {
        self.verbs.extend(other.verbs);
        self.names.extend(other.names);
        self.unrestricted |= other.unrestricted;
    }

    fn has_any(&self, verbs: &[&str]) -> bool {
        self.verbs.iter().any(|verb| verbs.contains(&verb.as_str()))
    }
}

/// Each grant of `rules` on a kubelet subresource: its index in [`SUBRESOURCES`], the verb, and
/// on which nodes, as the evaluator answers once per rule, subresource and verb the rule lists.
fn grants(rules: &[PolicyRule]) -> impl Iterator<Item = (usize, &String, NameScope<'_>)> {
    SUBRESOURCES
        .iter()
        .enumerate()
        .flat_map(move |(index, subresource)| {
            rules.iter().flat_map(move |rule| {
                rule.verbs.iter().filter_map(move |verb| {
                    let request = ResourceRequest {
                        api_group: "",
                        resource: "nodes",
                        subresource,
                        name: "",
                        namespace: "",
                        verb,
                    };
                    Some((index, verb, rbac::rule_scope(rule, &request)?))
                })
            })
        })
}

/// What `rules` grant on each kubelet subresource (by index in [`SUBRESOURCES`]); only
/// subresources with a verb the kubelet asks about are kept.
fn accesses(rules: &[PolicyRule]) -> BTreeMap<usize, Access> {
    let mut granted: BTreeMap<usize, Access> = BTreeMap::new();
    for (index, verb, scope) in grants(rules) {
        let access = granted.entry(index).or_default();
        access.verbs.insert(verb.clone());
        match scope {
            NameScope::Any => access.unrestricted = true,
            NameScope::Only(names) => access.names.extend(names.iter().cloned()),
        }
    }
    // Verbs the kubelet never asks about (`list`, `watch`) are reported, not found on their own.
    granted.retain(|_, access| access.has_any(&KUBELET_VERBS));
    granted
}

/// The severity of `access` to `nodes/<subresource>` for `subject`.
fn severity(subject: &Subject, subresource: &str, access: &Access) -> Severity {
    let masters = subject.kind == "Group" && subject.name == MASTERS;
    // Only a binding to an admin role is expected access: one aggregated into `view` is not.
    let admin_role = !access.via.is_empty()
        && access
            .via
            .iter()
            .all(|via| !via.binding.is_empty() && ADMIN_ROLES.contains(&via.role.as_str()));
    if masters || admin_role {
        Severity::Info
    } else if subresource == "proxy" && access.has_any(&EXEC_VERBS) {
        Severity::Critical
    } else if access.has_any(&WRITE_VERBS) || matches!(subresource, "log" | "checkpoint") {
        Severity::High
    } else if subresource == "configz" {
        Severity::Medium
    } else {
        Severity::Low
    }
}

/// One warning per RoleBinding whose role would grant kubelet subresources if it were bound
/// cluster-wide: it grants none of them.
fn ineffective(policy: &Policy) -> Vec<String> {
    let mut by_binding: BTreeMap<(&str, &str), (&SubjectGrant<'_>, BTreeSet<usize>)> =
        BTreeMap::new();
    let grants: Vec<SubjectGrant<'_>> = policy.role_bindings().collect();
    for grant in &grants {
        let subresources: BTreeSet<usize> = accesses(grant.rules).into_keys().collect();
        if !subresources.is_empty() {
            by_binding
                .entry((grant.namespace, grant.binding))
                .or_insert((grant, BTreeSet::new()))
                .1
                .extend(subresources);
        }
    }
    by_binding
        .into_values()
        .map(|(grant, subresources)| {
            let covered: Vec<String> = subresources
                .into_iter()
                .filter_map(|index| SUBRESOURCES.get(index))
                .map(|subresource| format!("nodes/{subresource}"))
                .collect();
            format!(
                "RoleBinding {}/{} ({}) refers to {} {}, which covers {}: ineffective, since \
                 only a ClusterRoleBinding can grant the kubelet's cluster-scoped nodes \
                 subresources",
                grant.namespace,
                grant.binding,
                grant.location,
                grant.role_kind,
                grant.role,
                covered.join(", ")
            )
        })
        .collect()
}

/// The warning for a binding to a role that is not in the input.
fn missing_role(binding: &UnresolvedBinding) -> String {
    let name = match binding.namespace.as_str() {
        "" => binding.name.clone(),
        namespace => format!("{namespace}/{}", binding.name),
    };
    let subjects: Vec<String> = binding
        .subjects
        .iter()
        .map(|subject| Subject::of(subject).to_string())
        .collect();
    let bootstrap =
        ADMIN_ROLES.contains(&binding.role.as_str()) && binding.role_kind == RoleKind::ClusterRole;
    let hint = match bootstrap {
        true => format!(
            "; {} is a bootstrap ClusterRole that grants nodes/proxy in every cluster: audit the \
             cluster to see this grant",
            binding.role
        ),
        false => String::new(),
    };
    format!(
        "{} {name} ({}) refers to {} {}, which is not in the input, so it is audited as granting \
         nothing (subjects: {}){hint}",
        binding.kind,
        binding.location,
        binding.role_kind,
        binding.role,
        subjects.join(", ")
    )
}

/// Serializes with `Display`.
fn display<S: Serializer, T: fmt::Display>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}
