//! `kubelet-guard rbac-audit` on files: the rendered RBAC of five real charts and the RBAC rules of
//! issue 6 one by one (what is granted, to whom, through what, how severe). Every test runs the
//! binary as a user would; the outputs, `--fail-on` and malformed input are in
//! `rbac_audit_outputs.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::Path;

use serde_json::Value;
use support::rbac_audit::{CHARTS, audit, chart, row, rows};

fn find<'a>(report: &'a Value, who_name: &str, subresource: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"]["name"] == who_name && f["subresource"] == subresource)
        .unwrap_or_else(|| panic!("no finding for {who_name} {subresource}"))
}

fn warnings(report: &Value) -> Vec<String> {
    report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Five real charts

#[test]
fn five_charts_are_audited_per_subject_and_subresource() {
    let run = audit(&["-f", CHARTS, "--output", "json"], None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.json();
    let mut found = rows(&report);
    let expected = [
        row(
            "ServiceAccount datadog/datadog",
            "nodes/proxy",
            "get",
            "critical",
        ),
        row(
            "ServiceAccount logging/fluent-bit",
            "nodes/proxy",
            "get,list,watch",
            "critical",
        ),
        row(
            "ServiceAccount observability/otel-collector-opentelemetry-collector",
            "nodes/proxy",
            "get",
            "critical",
        ),
        row(
            "ServiceAccount monitoring/prometheus-server",
            "nodes/proxy",
            "get,list,watch",
            "critical",
        ),
        row(
            "ServiceAccount datadog/datadog",
            "nodes/metrics",
            "get",
            "low",
        ),
        row(
            "ServiceAccount datadog/datadog",
            "nodes/stats",
            "get",
            "low",
        ),
        row("ServiceAccount datadog/datadog", "nodes/spec", "get", "low"),
        row(
            "ServiceAccount monitoring/kube-prometheus-stack-prometheus",
            "nodes/metrics",
            "get,list,watch",
            "low",
        ),
        row(
            "ServiceAccount kube-system/metrics-server",
            "nodes/metrics",
            "get",
            "low",
        ),
        row(
            "ServiceAccount observability/otel-collector-opentelemetry-collector",
            "nodes/stats",
            "get,list,watch",
            "low",
        ),
        row(
            "ServiceAccount monitoring/prometheus-server",
            "nodes/metrics",
            "get,list,watch",
            "low",
        ),
    ];
    assert_eq!(
        found, expected,
        "worst first, then by subject, then by subresource"
    );

    // Every (subject, subresource) pair appears exactly once.
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    assert_eq!(found.len(), expected.len());

    // `list` and `watch` on nodes/proxy are not kubelet verbs: only `get` is reported.
    let prometheus = find(&report, "prometheus-server", "nodes/proxy");
    assert_eq!(prometheus["execCapable"], true);
    assert_eq!(prometheus["resourceNames"], serde_json::json!([]));
    assert_eq!(prometheus["via"][0]["binding"], "prometheus-server");
    assert_eq!(prometheus["via"][0]["role"], "prometheus-server");
    assert_eq!(
        prometheus["via"][0]["location"],
        "tests/fixtures/charts/prometheus/rendered.yaml:72"
    );
    // execCapable is about the subject, on each of its findings.
    assert_eq!(
        find(&report, "prometheus-server", "nodes/metrics")["execCapable"],
        true
    );
    assert_eq!(
        find(&report, "kube-prometheus-stack-prometheus", "nodes/metrics")["execCapable"],
        false
    );

    // Every nodes/proxy holder gets a suggestion, labelled as a guess without an audit log.
    for finding in report["findings"].as_array().unwrap() {
        let suggestion = &finding["suggestion"];
        if finding["subresource"] == "nodes/proxy" {
            assert_eq!(suggestion["basis"], "guess");
            assert_eq!(
                suggestion["rules"][0]["resources"],
                serde_json::json!(["nodes/metrics", "nodes/stats", "nodes/pods"])
            );
            assert_eq!(suggestion["rules"][0]["verbs"], serde_json::json!(["get"]));
        } else {
            assert!(suggestion.is_null(), "{finding}");
        }
    }

    // metrics-server binds two roles the chart does not ship: reported, granting nothing.
    let warnings = warnings(&report);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].starts_with(
        "ClusterRoleBinding metrics-server:system:auth-delegator (tests/fixtures/charts/metrics-server/rendered.yaml:72) \
         refers to ClusterRole system:auth-delegator, which is not in the input"
    ), "{warnings:#?}");
    assert!(warnings[1].starts_with(
        "RoleBinding kube-system/metrics-server-auth-reader (tests/fixtures/charts/metrics-server/rendered.yaml:112) \
         refers to Role extension-apiserver-authentication-reader, which is not in the input"
    ), "{warnings:#?}");
}

#[test]
fn helm_template_output_is_read_from_standard_input() {
    let rendered =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(chart("fluent-bit")))
            .unwrap();
    let run = audit(&["-f", "-", "-o", "json"], Some(&rendered));
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        rows(&report),
        [row(
            "ServiceAccount logging/fluent-bit",
            "nodes/proxy",
            "get,list,watch",
            "critical"
        )]
    );
    assert_eq!(
        find(&report, "fluent-bit", "nodes/proxy")["via"][0]["location"],
        "-:62"
    );
}

// ---------------------------------------------------------------------------------------------
// The RBAC rules of issue 6

/// ClusterRoles and bindings exercising each rule; `kubectl get -o json`-style for one of them.
const RULES: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: star-proxy}
rules: [{apiGroups: [""], resources: ["*/proxy"], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: nodes-star}
rules: [{apiGroups: [""], resources: ["nodes/*"], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: core-star}
rules: [{apiGroups: [""], resources: ["*"], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: other-group}
rules: [{apiGroups: [apps, metrics.k8s.io], resources: ["*", nodes/proxy], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: named-nodes}
rules: [{apiGroups: ["*"], resources: [nodes/proxy], resourceNames: [node-b, node-a], verbs: [create]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: writer}
rules:
- {apiGroups: [""], resources: [nodes/proxy, nodes/stats], verbs: [update, patch]}
- {apiGroups: [""], resources: [nodes/log, nodes/checkpoint, nodes/configz, nodes/healthz, nodes/statusz], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: aggregated}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {example.com/kubelet: "true"}}]
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: middle, labels: {example.com/kubelet: "true"}}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {example.com/leaf: "true"}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: leaf, labels: {example.com/leaf: "true"}}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: cluster-admin}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}]
---
{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "List", "items": [
 {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "a"},
  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "star-proxy"},
  "subjects": [{"kind": "User", "name": "alice"}]}]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: b}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodes-star}
subjects: [{kind: User, name: bob}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: c}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: core-star}
subjects: [{kind: Group, name: ops}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: d}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: other-group}
subjects: [{kind: User, name: dave}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: named-nodes}
subjects: [{kind: ServiceAccount, name: debugger, namespace: tools}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: f}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: writer}
subjects: [{kind: User, name: frank}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: g}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: aggregated}
subjects: [{kind: User, name: grace}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: g2}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: star-proxy}
subjects: [{kind: User, name: grace}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: cluster-admin}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects: [{kind: Group, name: "system:masters"}, {kind: User, name: admin}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: dangling}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:kubelet-api-admin"}
subjects: [{kind: User, name: henry}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: local-proxy, namespace: tools}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: leaf}
subjects: [{kind: ServiceAccount, name: debugger}]
"#;

#[test]
fn rbac_rules_are_evaluated_as_kubernetes_does() {
    let run = audit(&["-f", "-", "-o", "json"], Some(RULES));
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.json();
    let found = rows(&report);
    let has = |who: &str, subresource: &str| found.iter().any(|r| r.0 == who && r.1 == subresource);

    // `*/<sub>` matches every resource's subresource, nodes included; `nodes/*` is no wildcard.
    assert!(found.contains(&row("User alice", "nodes/proxy", "get", "critical")));
    assert!(
        !found.iter().any(|r| r.0 == "User bob"),
        "nodes/* granted something: {found:?}"
    );
    // `*` resources in the core group match every kubelet subresource.
    for subresource in [
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
    ] {
        assert!(
            has("Group ops", &format!("nodes/{subresource}")),
            "{subresource}"
        );
    }
    // apiGroups must hold "" or "*".
    assert!(!found.iter().any(|r| r.0 == "User dave"), "{found:?}");
    // resourceNames restrict, and are reported sorted.
    let named = find(&report, "debugger", "nodes/proxy");
    assert_eq!(
        named["resourceNames"],
        serde_json::json!(["node-a", "node-b"])
    );
    assert_eq!(
        named["severity"], "critical",
        "create on nodes/proxy is exec"
    );
    // Severities: other writes high, nodes/log and nodes/checkpoint high, configz medium.
    assert!(found.contains(&row("User frank", "nodes/proxy", "patch,update", "high")));
    assert!(found.contains(&row("User frank", "nodes/stats", "patch,update", "high")));
    assert!(found.contains(&row("User frank", "nodes/log", "get", "high")));
    assert!(found.contains(&row("User frank", "nodes/checkpoint", "get", "high")));
    assert!(found.contains(&row("User frank", "nodes/configz", "get", "medium")));
    assert!(found.contains(&row("User frank", "nodes/healthz", "get", "low")));
    assert!(found.contains(&row("User frank", "nodes/statusz", "get", "low")));
    assert_eq!(
        find(&report, "frank", "nodes/proxy")["execCapable"],
        false,
        "update is not exec"
    );
    // Aggregation is transitive, `*` is kept as `*`, and every granting binding is listed.
    let grace = find(&report, "grace", "nodes/proxy");
    assert_eq!(grace["verbs"], serde_json::json!(["*", "get"]));
    let via: Vec<(&str, &str)> = grace["via"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["binding"].as_str().unwrap(), v["role"].as_str().unwrap()))
        .collect();
    assert_eq!(via, [("g", "aggregated"), ("g2", "star-proxy")]);
    // system:masters and bootstrap admin roles are expected admin access.
    assert!(found.contains(&row("Group system:masters", "nodes/proxy", "*", "info")));
    assert!(found.contains(&row("User admin", "nodes/proxy", "*", "info")));
    assert!(find(&report, "admin", "nodes/proxy")["suggestion"].is_null());

    let warnings = warnings(&report);
    // A binding to an absent role grants nothing, and is reported.
    assert!(!found.iter().any(|r| r.0 == "User henry"));
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("ClusterRoleBinding dangling (-:")
                && w.contains(
                    "refers to ClusterRole system:kubelet-api-admin, which is not in the input"
                )
                && w.contains("a bootstrap ClusterRole that grants nodes/proxy in every cluster")),
        "{warnings:#?}"
    );
    // RoleBindings never grant cluster-scoped nodes access: reported as ineffective.
    assert!(
        !found
            .iter()
            .any(|r| r.0 == "ServiceAccount tools/debugger" && r.2.contains('*'))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("RoleBinding tools/local-proxy (-:")
                && w.contains("refers to ClusterRole leaf, which covers nodes/proxy: ineffective")),
        "{warnings:#?}"
    );
}

/// `kubectl get clusterrole node-debug -o yaml` and its binding: an aggregated role whose
/// selected roles are not in the input, with the rules the aggregation controller filled in.
const EXPORTED_AGGREGATE: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-debug}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {acme.io/debug: "true"}}]
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: node-debug}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-debug}
subjects: [{kind: ServiceAccount, name: dbg, namespace: ops}]
"#;

#[test]
fn an_aggregated_role_grants_the_rules_stored_in_it() {
    let run = audit(
        &["-f", "-", "-o", "json", "--fail-on", "critical"],
        Some(EXPORTED_AGGREGATE),
    );
    let report = run.json();
    let found = find(&report, "dbg", "nodes/proxy");
    assert_eq!(found["severity"], "critical", "{found:#}");
    assert_ne!(run.status, 0, "--fail-on critical passed: {}", run.stderr);
}

/// A chart that binds nothing, but labels a role into `view` (as metrics-server's
/// `system:aggregated-metrics-reader` is, with `nodes` of `metrics.k8s.io`, not the kubelet's).
const AGGREGATED_INTO_VIEW: &str = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: debug-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy, nodes/metrics], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: aggregated-metrics-reader
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [metrics.k8s.io], resources: [pods, nodes], verbs: [get, list, watch]}]
"#;

#[test]
fn a_chart_role_aggregated_into_view_is_a_finding_of_views_subjects() {
    let run = audit(
        &["-f", "-", "-o", "json", "--fail-on", "critical"],
        Some(AGGREGATED_INTO_VIEW),
    );
    assert_eq!(run.status, 1, "--fail-on critical passed: {}", run.stderr);
    let report = run.json();
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{findings:#?}");
    let proxy = find(&report, "view", "nodes/proxy");
    assert_eq!(
        proxy["subject"],
        serde_json::json!({"kind": "ClusterRole", "name": "view", "namespace": ""})
    );
    assert_eq!(proxy["severity"], "critical");
    assert_eq!(proxy["execCapable"], true);
    assert_eq!(
        proxy["via"],
        serde_json::json!([{"binding": "", "role": "debug-view", "location": "-:1"}])
    );
    // No ClusterRoleBinding to suggest for a bootstrap role's subjects: the fix is the label.
    assert!(proxy.get("suggestion").is_none(), "{proxy:#}");
    assert_eq!(find(&report, "view", "nodes/metrics")["severity"], "low");
    let warnings = warnings(&report);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("ClusterRole debug-view (-:1)")
                && w.contains("aggregated into the bootstrap ClusterRoles admin, edit, view")),
        "{warnings:#?}"
    );
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("aggregated-metrics-reader")),
        "{warnings:#?}"
    );

    let table = audit(&["-f", "-"], Some(AGGREGATED_INTO_VIEW));
    assert!(
        table.stdout.lines().any(|line| line.starts_with("critical")
            && line.contains("ClusterRole view")
            && line.ends_with("debug-view (aggregated)")),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains("Suggestions"), "{}", table.stdout);

    let sarif = audit(&["-f", "-", "-o", "sarif"], Some(AGGREGATED_INTO_VIEW)).json();
    let result = sarif["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ruleId"] == "kubelet-exec")
        .unwrap_or_else(|| panic!("no kubelet-exec result: {sarif:#}"));
    assert_eq!(
        result["locations"][0]["logicalLocations"],
        serde_json::json!([{"name": "debug-view", "kind": "ClusterRole"}])
    );
    let text = result["message"]["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "ClusterRole view holds get on nodes/proxy through ClusterRole debug-view"
        ),
        "{text}"
    );
}

/// A cluster's listing: the bootstrap roles as the aggregation controller left them, each holding
/// the chart role's rule, `view` labelled into `edit` and `edit` into `admin`.
const BOOTSTRAP_AFTER_AGGREGATION: &str = r#"---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: view
  labels: {rbac.authorization.k8s.io/aggregate-to-edit: "true"}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}}]
rules: [{apiGroups: [""], resources: [nodes/proxy, nodes/metrics], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: edit
  labels: {rbac.authorization.k8s.io/aggregate-to-admin: "true"}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {rbac.authorization.k8s.io/aggregate-to-edit: "true"}}]
rules: [{apiGroups: [""], resources: [nodes/proxy, nodes/metrics], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: admin}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {rbac.authorization.k8s.io/aggregate-to-admin: "true"}}]
rules: [{apiGroups: [""], resources: [nodes/proxy, nodes/metrics], verbs: [get]}]
"#;

#[test]
fn in_a_clusters_listing_the_aggregated_role_is_reported_once() {
    let listing = format!("{AGGREGATED_INTO_VIEW}{BOOTSTRAP_AFTER_AGGREGATION}");
    let report = audit(&["-f", "-", "-o", "json"], Some(&listing)).json();
    let findings: Vec<(String, String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["subject"]["name"].as_str().unwrap().to_owned(),
                f["subresource"].as_str().unwrap().to_owned(),
                f["via"][0]["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        findings,
        [
            ("view".into(), "nodes/proxy".into(), "debug-view".into()),
            ("view".into(), "nodes/metrics".into(), "debug-view".into()),
        ]
    );
    let warnings = warnings(&report);
    let aggregated: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("labelled to be aggregated"))
        .collect();
    assert_eq!(aggregated.len(), 1, "{warnings:#?}");
    assert!(
        aggregated[0].starts_with("ClusterRole debug-view"),
        "{warnings:#?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.ends_with("only through the bootstrap roles its roles are aggregated into")),
        "{warnings:#?}"
    );

    // Without the chart role, the listing's view is reported, for its own subjects (and so for
    // edit's and admin's); edit, which view reaches with the same rules, is not.
    let report = audit(
        &["-f", "-", "-o", "json"],
        Some(BOOTSTRAP_AFTER_AGGREGATION),
    )
    .json();
    let proxy = find(&report, "view", "nodes/proxy");
    assert_eq!(
        proxy["via"],
        serde_json::json!([{"binding": "", "role": "view", "location": "-:2"}])
    );
    assert_eq!(report["findings"].as_array().unwrap().len(), 2);
}

#[test]
fn a_view_that_grants_more_than_what_is_aggregated_into_it_is_reported() {
    // A chart's own `view`, labelled into `edit` as the bootstrap one is, with a rule of its own.
    let chart = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: view
  labels: {rbac.authorization.k8s.io/aggregate-to-edit: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [create]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: metrics-view
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [""], resources: [nodes/metrics], verbs: [get]}]
"#;
    let run = audit(
        &["-f", "-", "-o", "json", "--fail-on", "critical"],
        Some(chart),
    );
    assert_eq!(run.status, 1, "{}", run.stdout);
    let report = run.json();
    // Its own subjects hold its rules first (and edit's and admin's after them).
    let proxy = find(&report, "view", "nodes/proxy");
    assert_eq!(proxy["severity"], "critical");
    assert_eq!(proxy["via"][0]["role"], "view");
    assert_eq!(find(&report, "view", "nodes/metrics")["severity"], "low");

    // Covered verb by verb and node by node: `list` everywhere and `get` on one node do not
    // cover `get` everywhere.
    let listing = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: view
  labels: {rbac.authorization.k8s.io/aggregate-to-edit: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: lister
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: one-node
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy], resourceNames: [n1], verbs: [get]}]
"#;
    let report = audit(&["-f", "-", "-o", "json"], Some(listing)).json();
    let proxy = find(&report, "view", "nodes/proxy");
    assert_eq!(proxy["resourceNames"], serde_json::json!([]), "{proxy:#}");
    let via: Vec<&str> = proxy["via"]
        .as_array()
        .unwrap()
        .iter()
        .map(|via| via["role"].as_str().unwrap())
        .collect();
    assert!(via.contains(&"view"), "{via:?}");
}

#[test]
fn an_admin_role_aggregated_into_view_is_no_expected_admin_access() {
    let chart = r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:kubelet-api-admin
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules: [{apiGroups: [""], resources: [nodes/proxy], verbs: ["*"]}]
"#;
    let run = audit(
        &["-f", "-", "-o", "json", "--fail-on", "critical"],
        Some(chart),
    );
    assert_eq!(run.status, 1, "{}", run.stdout);
    assert_eq!(
        find(&run.json(), "view", "nodes/proxy")["severity"],
        "critical"
    );
}

#[test]
fn a_bare_json_array_of_objects_is_audited_as_a_list() {
    // `kubectl get clusterroles,clusterrolebindings -o json | jq .items`
    let items = r#"[
  {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
   "metadata": {"name": "exec"},
   "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]},
  {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
   "metadata": {"name": "exec"},
   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "exec"},
   "subjects": [{"kind": "User", "name": "erin"}]}
]"#;
    let run = audit(&["-f", "-", "-o", "json"], Some(items));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert_eq!(
        find(&run.json(), "erin", "nodes/proxy")["severity"],
        "critical"
    );
}

#[test]
fn expected_admin_access_never_trips_fail_on() {
    let admins = RULES
        .split("---")
        .filter(|doc| doc.contains("cluster-admin"))
        .collect::<Vec<_>>()
        .join("---");
    let run = audit(
        &["-f", "-", "--fail-on", "low", "-o", "json"],
        Some(&admins),
    );
    assert_eq!(run.status, 0, "{}", run.stdout);
    let report = run.json();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] == "info")
    );
    assert_eq!(
        report["findings"].as_array().unwrap().len(),
        20,
        "2 subjects x 10 subresources"
    );
}
