//! Validation of decoded RBAC objects, as the API server would reject them
//! (`pkg/apis/rbac/validation/validation.go`): names, rules, aggregation selectors, role
//! references and subjects. Bindings are checked after defaulting, as the API server does.
//!
//! Must not: default anything, or know where an object came from; a check returns the offending
//! field and why, and `parse` names the object and its line.

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

use super::RBAC_GROUP;

/// `ValidateClusterRole`, including its aggregation rule.
pub(super) fn check_cluster_role(role: &ClusterRole) -> Result<(), String> {
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
pub(super) fn check_role(role: &Role) -> Result<(), String> {
    check_name("metadata.name", role.metadata.name.as_deref())?;
    for (index, rule) in role.rules.iter().flatten().enumerate() {
        check_rule(rule, true).map_err(|e| format!("rules[{index}].{e}"))?;
    }
    Ok(())
}

/// `ValidateClusterRoleBinding` and `ValidateRoleBinding`, on a defaulted binding: a
/// ClusterRoleBinding refers to a ClusterRole, a RoleBinding to a Role or a ClusterRole.
pub(super) fn check_binding(
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

#[cfg(test)]
mod tests {
    use crate::authz::rbac::Policy;
    use crate::authz::rbac::fixtures::*;

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
        ];
        for (rule, expected) in cases {
            let error = parse_error(&cluster_role("r", "{}", &format!("rules: [{rule}]")));
            assert!(error.message.contains(expected), "{rule}: {error}");
        }
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
    fn an_unknown_field_is_an_error_and_a_null_one_is_not() {
        let misspelled = cluster_role(
            "r",
            "{}",
            "rules:\n- apiGroups: [\"\"]\n  resources: [nodes/proxy]\n  resourceName: [node-a]\n  \
             verbs: [get]",
        );
        let error = parse_error(&misspelled);
        assert!(
            error
                .message
                .contains("unknown field \"rules[0].resourceName\""),
            "{error}"
        );
        let binding = bind_user("b", "r", "u").replace("subjects:", "subject:");
        let error = parse_error(&(cluster_role("r", "{}", "rules: []") + &binding));
        assert!(
            error.message.contains("unknown field \"subject\""),
            "{error}"
        );
        // kubectl's output holds nulls such as this; and every field the type has is fine.
        let listed = cluster_role("r", "{}", "rules: []").replace(
            "metadata:\n",
            "metadata:\n  creationTimestamp: null\n  resourceVersion: \"7\"\n  uid: u-1\n",
        );
        Policy::parse(&listed).unwrap_or_else(|e| panic!("{e}"));
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
}
