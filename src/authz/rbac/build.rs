//! From loaded objects to a [`Policy`]: the [`PolicyBuilder`] that gathers sources, and the
//! resolution of every binding against the effective rules of its role.
//!
//! Owns the bookkeeping that differs between strict and lenient parsing ([`MissingRoles`]): an
//! object defined twice and a binding to a role that is not in the input are errors with
//! [`MissingRoles::Reject`], and warnings (later definition kept, binding kept as an
//! [`UnresolvedBinding`]) with [`MissingRoles::Report`]. Also owns the text of every
//! [`PolicyWarning`].
//!
//! Must not: read documents or validate objects (`parse` and `validate` did, per source).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::aggregate::effective_rules;
use super::matching::covers_nodes;
use super::parse::{Located, Objects, Origin};
use super::{
    Binding, BindingKind, Document, Location, MissingRoles, Policy, PolicyBuilder, PolicyError,
    PolicyWarning, RoleDefinition, RoleKind, UnresolvedBinding, qualified,
};

impl PolicyBuilder {
    /// An empty builder; `missing_roles` says what a binding to an absent role does.
    pub fn new(missing_roles: MissingRoles) -> PolicyBuilder {
        PolicyBuilder {
            objects: Objects::default(),
            missing_roles,
            stored_aggregates: false,
        }
    }

    /// Lets an aggregated ClusterRole also grant the rules stored in it, on top of what its
    /// selectors find in the input: auditing. In an export they are what the aggregation
    /// controller filled in from roles that may not be in the input; in a chart the controller
    /// will replace them, and an audit would rather report too much than miss a grant. Never for
    /// serving: Kubernetes grants only what the selectors find.
    pub fn with_stored_aggregates(mut self) -> PolicyBuilder {
        self.stored_aggregates = true;
        self
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
        self.objects
            .into_policy(self.missing_roles, self.stored_aggregates)
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
            PolicyWarning::AggregatedIntoBootstrap {
                name,
                into,
                location,
            } => write!(
                f,
                "ClusterRole {name} ({location}) covers nodes and is labelled to be aggregated \
                 into the bootstrap ClusterRole{} {}: every subject a ClusterRoleBinding binds \
                 to {} in the cluster gains what it grants",
                if into.len() == 1 { "" } else { "s" },
                into.join(", "),
                if into.len() == 1 { "it" } else { "them" },
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
    /// Resolves every binding against the effective rules of its role.
    fn into_policy(
        self,
        missing_roles: MissingRoles,
        stored_aggregates: bool,
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
            let rules =
                effective_rules(&name, &cluster_index, stored_aggregates).unwrap_or_default();
            let into = aggregated_into(object.metadata.labels.as_ref());
            if !into.is_empty() && covers_nodes(&rules) {
                warnings.push(PolicyWarning::AggregatedIntoBootstrap {
                    name: name.clone(),
                    into,
                    location: location.clone(),
                });
            }
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
                RoleKind::ClusterRole => {
                    effective_rules(&binding.role, &cluster_index, stored_aggregates)
                }
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

/// The bootstrap ClusterRoles of every cluster that `labels` aggregate a ClusterRole into: the
/// `rbac.authorization.k8s.io/aggregate-to-<role>: "true"` labels their selectors match, and
/// onwards, as `view` itself is aggregated into `edit`, and `edit` into `admin`.
fn aggregated_into(labels: Option<&BTreeMap<String, String>>) -> Vec<&'static str> {
    let labelled = |role: &str| {
        labels
            .and_then(|labels| {
                labels.get(&format!("rbac.authorization.k8s.io/aggregate-to-{role}"))
            })
            .is_some_and(|value| value == "true")
    };
    let view = labelled("view");
    let edit = view || labelled("edit");
    let admin = edit || labelled("admin");
    [(admin, "admin"), (edit, "edit"), (view, "view")]
        .into_iter()
        .filter_map(|(into, role)| into.then_some(role))
        .collect()
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

#[cfg(test)]
mod tests {
    use crate::authz::rbac::fixtures::*;
    use crate::authz::rbac::*;

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
}
