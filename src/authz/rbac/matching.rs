//! Whether a rule allows a resource request and whether a binding subject denotes an identity:
//! Kubernetes' `RuleAllows` (`pkg/apis/rbac/v1/evaluation_helpers.go`, `VerbMatches`,
//! `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`) and `appliesToUser`
//! (`plugin/pkg/auth/authorizer/rbac/rbac.go`), on defaulted subjects.
//!
//! Must not: know about bindings, scope or input order (the evaluation entry points in the module
//! root do).

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};

use super::ResourceRequest;
use crate::authn::Identity;

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
pub(super) fn covers_nodes(rules: &[PolicyRule]) -> bool {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::authz::rbac::RBAC_GROUP;
    use crate::authz::rbac::fixtures::*;

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
}
