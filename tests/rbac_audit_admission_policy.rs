//! The admission policy of `deploy/policies/` flags exactly the roles that grant `nodes/proxy`:
//! its CEL expressions (match conditions, variables, validation, message, audit annotation) are
//! run with a CEL interpreter against sample roles and the rendered charts of
//! `tests/fixtures/charts/`, and cross-checked with kubelet-guard's RBAC evaluator, so the policy
//! cannot silently rot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::{Context, Program, Value as Cel};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kubelet_guard::authz::rbac::{self, ResourceRequest};
use serde_json::{Value, json};

/// The policy and its binding, parsed.
struct Policy {
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    validation: Program,
    message_expression: Program,
    message: String,
    audit_annotation: Program,
    binding: Value,
}

/// What the policy says about one request.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// A match condition left it out.
    NotMatched,
    /// Matched and valid.
    Admitted,
    /// Matched and flagged, with the message and the audit annotation.
    Flagged { message: String, annotation: String },
}

fn policy_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/policies/nodes-proxy-grants.yaml")
}

fn compile(expression: &Value) -> Program {
    let source = expression.as_str().expect("an expression is a string");
    Program::compile(source).unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn load_policy() -> Policy {
    let text = std::fs::read_to_string(policy_path()).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(documents.len(), 2, "the policy and its binding");
    let (policy, binding) = (&documents[0], &documents[1]);
    assert_eq!(policy["kind"], "ValidatingAdmissionPolicy");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    let spec = &policy["spec"];
    let validations = spec["validations"].as_array().unwrap();
    assert_eq!(validations.len(), 1);
    let annotations = spec["auditAnnotations"].as_array().unwrap();
    Policy {
        match_conditions: spec["matchConditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|condition| compile(&condition["expression"]))
            .collect(),
        variables: spec["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|variable| {
                let name = variable["name"].as_str().unwrap().to_owned();
                (name, compile(&variable["expression"]))
            })
            .collect(),
        validation: compile(&validations[0]["expression"]),
        message_expression: compile(&validations[0]["messageExpression"]),
        message: validations[0]["message"].as_str().unwrap().to_owned(),
        audit_annotation: compile(&annotations[0]["valueExpression"]),
        binding: binding.clone(),
    }
}

impl Policy {
    /// Evaluates the policy as the API server would for `object`, sent by `username`.
    fn review(&self, object: &Value, username: &str) -> Verdict {
        let mut context = Context::default();
        context.add_variable("object", object).unwrap();
        context.add_variable("oldObject", Value::Null).unwrap();
        let request = json!({"operation": "CREATE", "userInfo": {"username": username}});
        context.add_variable("request", &request).unwrap();
        for condition in &self.match_conditions {
            match condition.execute(&context) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Verdict::NotMatched,
                other => panic!("a match condition answered {other:?}"),
            }
        }
        // Variables are evaluated in order, each seeing the ones before it.
        let mut variables: HashMap<String, Cel> = HashMap::new();
        for (name, program) in &self.variables {
            let mut scope = Context::default();
            scope.add_variable("object", object).unwrap();
            scope.add_variable("request", &request).unwrap();
            scope.add_variable_from_value("variables", variables.clone());
            let value = program
                .execute(&scope)
                .unwrap_or_else(|e| panic!("variable {name}: {e:?}"));
            variables.insert(name.clone(), value);
        }
        context.add_variable_from_value("variables", variables);
        let text = |program: &Program| match program.execute(&context) {
            Ok(Cel::String(text)) => Arc::unwrap_or_clone(text),
            Ok(Cel::Null) => String::new(),
            other => panic!("expected a string, got {other:?}"),
        };
        match self.validation.execute(&context) {
            Ok(Cel::Bool(true)) => {
                assert_eq!(
                    text(&self.audit_annotation),
                    "",
                    "annotation without a flag"
                );
                Verdict::Admitted
            }
            Ok(Cel::Bool(false)) => Verdict::Flagged {
                message: text(&self.message_expression),
                annotation: text(&self.audit_annotation),
            },
            other => panic!("the validation answered {other:?}"),
        }
    }

    fn flags(&self, object: &Value) -> bool {
        matches!(self.review(object, "alice"), Verdict::Flagged { .. })
    }
}

/// Whether kubelet-guard's evaluator says some rule of `role` grants `nodes/proxy` with any verb.
fn evaluator_grants_proxy(role: &Value) -> bool {
    let rules: Vec<PolicyRule> =
        serde_json::from_value(role.get("rules").cloned().unwrap_or(json!([]))).unwrap();
    rules.iter().any(|rule| {
        rule.verbs.iter().any(|verb| {
            let request = ResourceRequest {
                api_group: "",
                resource: "nodes",
                subresource: "proxy",
                name: "",
                namespace: "",
                verb,
            };
            rbac::rule_scope(rule, &request).is_some()
        })
    })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    })
}

/// Sample roles: (name, rules, whether the policy must flag them).
fn samples() -> Vec<(&'static str, Value, bool)> {
    let rule = |groups: Value, resources: Value, verbs: Value| json!([{"apiGroups": groups, "resources": resources, "verbs": verbs}]);
    vec![
        (
            "direct",
            rule(json!([""]), json!(["nodes/proxy"]), json!(["get"])),
            true,
        ),
        (
            "among others",
            rule(json!([""]), json!(["pods", "nodes/proxy"]), json!(["list"])),
            true,
        ),
        (
            "star-slash-proxy",
            rule(json!([""]), json!(["*/proxy"]), json!(["get"])),
            true,
        ),
        (
            "core star",
            rule(json!([""]), json!(["*"]), json!(["get"])),
            true,
        ),
        (
            "every group star",
            rule(json!(["*"]), json!(["*"]), json!(["*"])),
            true,
        ),
        (
            "every group proxy",
            rule(json!(["*"]), json!(["nodes/proxy"]), json!(["create"])),
            true,
        ),
        (
            "restricted to a node",
            json!([{"apiGroups": [""], "resources": ["nodes/proxy"], "resourceNames": ["n1"], "verbs": ["get"]}]),
            true,
        ),
        (
            "nodes slash star is no wildcard",
            rule(json!([""]), json!(["nodes/*"]), json!(["get"])),
            false,
        ),
        (
            "fine-grained",
            rule(
                json!([""]),
                json!(["nodes/metrics", "nodes/stats", "nodes/pods"]),
                json!(["get"]),
            ),
            false,
        ),
        (
            "bare nodes",
            rule(json!([""]), json!(["nodes"]), json!(["get", "list"])),
            false,
        ),
        (
            "other group",
            rule(json!(["apps"]), json!(["*"]), json!(["*"])),
            false,
        ),
        (
            "other group proxy",
            rule(
                json!(["example.com"]),
                json!(["nodes/proxy"]),
                json!(["get"]),
            ),
            false,
        ),
        (
            "services proxy only",
            rule(json!([""]), json!(["services/proxy"]), json!(["get"])),
            false,
        ),
        (
            "non-resource URLs",
            json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
            false,
        ),
        ("no rules", Value::Null, false),
    ]
}

#[test]
fn sample_roles_are_flagged_exactly_when_they_grant_nodes_proxy() {
    let policy = load_policy();
    for (name, rules, expected) in samples() {
        let mut role = cluster_role(name, rules);
        if role["rules"].is_null() {
            role.as_object_mut().unwrap().remove("rules");
        }
        assert_eq!(policy.flags(&role), expected, "{name}");
        assert_eq!(
            evaluator_grants_proxy(&role),
            expected,
            "evaluator disagrees on {name}"
        );
    }
}

#[test]
fn roles_are_checked_like_cluster_roles() {
    let policy = load_policy();
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "debug", "namespace": "team-a"},
        "rules": [{"apiGroups": [""], "resources": ["*/proxy"], "verbs": ["get"]}],
    });
    let Verdict::Flagged {
        message,
        annotation,
    } = policy.review(&role, "alice")
    else {
        panic!("a Role granting */proxy is flagged");
    };
    assert!(
        message.starts_with("Role team-a/debug grants nodes/proxy"),
        "{message}"
    );
    assert_eq!(annotation, "Role debug grants nodes/proxy");
}

#[test]
fn messages_name_the_role_and_the_fine_grained_subresources() {
    let policy = load_policy();
    let role = cluster_role(
        "prometheus-server",
        json!([
            {"apiGroups": [""], "resources": ["nodes", "nodes/proxy"], "verbs": ["get", "list", "watch"]}
        ]),
    );
    let Verdict::Flagged {
        message,
        annotation,
    } = policy.review(&role, "alice")
    else {
        panic!("flagged");
    };
    assert!(
        message.starts_with("ClusterRole prometheus-server grants nodes/proxy"),
        "{message}"
    );
    for subresource in [
        "nodes/metrics",
        "nodes/stats",
        "nodes/pods",
        "nodes/log",
        "nodes/healthz",
    ] {
        assert!(message.contains(subresource), "{subresource}: {message}");
        assert!(
            policy.message.contains(subresource),
            "static message: {subresource}"
        );
    }
    assert_eq!(
        annotation,
        "ClusterRole prometheus-server grants nodes/proxy"
    );
}

#[test]
fn bootstrap_reconciliation_and_aggregated_roles_are_not_matched() {
    let policy = load_policy();
    let admin = cluster_role(
        "cluster-admin",
        json!([
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}
        ]),
    );
    assert_eq!(
        policy.review(&admin, "system:apiserver"),
        Verdict::NotMatched
    );
    assert!(
        policy.flags(&admin),
        "anyone else writing cluster-admin's rules is flagged"
    );

    let mut aggregated = admin;
    aggregated["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {"rbac.example.com/aggregate": "true"}}]});
    assert_eq!(policy.review(&aggregated, "alice"), Verdict::NotMatched);
}

#[test]
fn chart_roles_are_flagged_as_the_evaluator_and_the_audit_see_them() {
    let policy = load_policy();
    let charts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/charts");
    let mut flagged = Vec::new();
    let mut checked = 0;
    for chart in std::fs::read_dir(&charts).unwrap() {
        let file = chart.unwrap().path().join("rendered.yaml");
        if !file.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for role in documents
            .iter()
            .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
        {
            checked += 1;
            let name = role["metadata"]["name"].as_str().unwrap().to_owned();
            let flags = policy.flags(role);
            assert_eq!(
                flags,
                evaluator_grants_proxy(role),
                "{}: {name}",
                file.display()
            );
            if flags {
                flagged.push(name);
            }
        }
    }
    flagged.sort();
    assert!(checked >= 8, "only {checked} roles in the fixtures");
    assert_eq!(
        flagged,
        [
            "datadog",
            "fluent-bit",
            "otel-collector-opentelemetry-collector",
            "prometheus-server"
        ]
    );
}

#[test]
fn the_binding_warns_and_audits_by_default() {
    let policy = load_policy();
    let binding = &policy.binding;
    assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
    assert_eq!(
        binding["spec"]["policyName"],
        "nodes-proxy-grants.kubelet-guard.io"
    );
    assert_eq!(
        binding["spec"]["validationActions"],
        json!(["Warn", "Audit"])
    );
    let readme = std::fs::read_to_string(policy_path().with_file_name("README.md")).unwrap();
    assert!(
        readme.contains("validationActions: [Deny, Audit]"),
        "Deny is documented"
    );
}
