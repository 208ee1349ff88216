//! ClusterRole aggregation (`pkg/controller/clusterroleaggregation`), taken to its fixed point at
//! parse time: the effective rules of a ClusterRole, following `aggregationRule` label selectors.
//!
//! Must not: validate selectors (`validate` rejected the invalid ones before this runs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The rules a ClusterRole grants, or `None` when no such role exists.
///
/// A role without an aggregation rule grants its own rules. An aggregated role grants the rules
/// of every non-aggregated role reachable through its selectors, following selected aggregated
/// roles too, each visited once: the least fixed point the aggregation controller converges to
/// from empty rules (its own `rules` field is the controller's output, so it is ignored unless
/// `stored`: see `PolicyBuilder::with_stored_aggregates`).
pub(super) fn effective_rules(
    root: &str,
    roles: &BTreeMap<&str, &ClusterRole>,
    stored: bool,
) -> Option<Vec<PolicyRule>> {
    roles.get(root)?;
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(name) = queue.pop_front() {
        let Some(role) = roles.get(name) else {
            continue;
        };
        let aggregation = role.aggregation_rule.as_ref();
        if aggregation.is_none() || stored {
            for rule in role.rules.iter().flatten() {
                if !rules.contains(rule) {
                    rules.push(rule.clone());
                }
            }
        }
        let Some(aggregation) = aggregation else {
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

#[cfg(test)]
mod tests {
    use crate::authz::rbac::fixtures::*;

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
    fn an_audit_also_counts_the_rules_stored_in_an_aggregated_role() {
        // An export of one aggregated role: its selected roles are not in the input, its stored
        // rules (everything) are what the controller filled in.
        let yaml = aggregated("agg", "{}", "[{matchLabels: {nobody: here}}]")
            + &bind_user("b", "agg", "alice");
        let mut builder =
            crate::authz::rbac::PolicyBuilder::new(crate::authz::rbac::MissingRoles::Report)
                .with_stored_aggregates();
        builder
            .add_source("export", crate::authz::rbac::documents(&yaml).unwrap())
            .unwrap();
        let (policy, _) = builder.build().unwrap();
        assert!(alice_may(&policy, &node("proxy", "get")));
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
}
