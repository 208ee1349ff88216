//! `rbac-audit` suggestions: from kubelet-guard's own audit events (`--from-audit-log`), exactly
//! what each `nodes/proxy` holder used; without them, a labelled guess; and `--emit-roles` files
//! that the embedded RBAC evaluator confirms grant exactly what was suggested, no more, no less.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use kubelet_guard::audit::{self, Event, ObjectReference, ResponseStatus, Stage, UserInfo};
use kubelet_guard::authn::Identity;
use kubelet_guard::authz::rbac::{Policy, ResourceRequest};
use kubelet_guard::rbac_audit::SUBRESOURCES;
use serde_json::{Value, json};

const KUBELET_VERBS: [&str; 5] = ["get", "create", "update", "patch", "delete"];

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubelet-guard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn audit(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .arg("rbac-audit")
        .args(["-f", "tests/fixtures/charts", "-o", "json"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

/// A call as the guard records it: what was asked, which check decided, and how.
struct Call<'a> {
    account: (&'a str, &'a str),
    uri: &'a str,
    verb: &'a str,
    checks: &'a [(&'a str, bool)],
    code: u16,
}

/// The `Event` kubelet-guard writes for `call` (the type of `src/audit.rs`, so this cannot drift).
fn event(call: &Call<'_>) -> Event {
    let (namespace, name) = call.account;
    let decided = call
        .checks
        .last()
        .map_or("", |(subresource, _)| subresource);
    let allowed = call.checks.last().is_some_and(|(_, allowed)| *allowed);
    let fallback = call.checks.len() == 2 && allowed && !call.checks[0].1;
    let checks: Vec<String> = call
        .checks
        .iter()
        .map(|(subresource, allowed)| {
            format!("{subresource}={}", if *allowed { "allow" } else { "deny" })
        })
        .collect();
    let mut annotations = BTreeMap::new();
    annotations.insert(
        audit::DECISION,
        if allowed { "allow" } else { "forbid" }.to_owned(),
    );
    annotations.insert(audit::CHECKS, checks.join(","));
    annotations.insert(audit::PROXY_FALLBACK, fallback.to_string());
    let failed = call.code >= 400;
    Event {
        kind: audit::EVENT_KIND,
        api_version: audit::API_VERSION,
        level: "Metadata",
        audit_id: format!("{name}-{}", call.uri.len()),
        stage: Stage::ResponseComplete,
        request_uri: call.uri.to_owned(),
        verb: call.verb.to_owned(),
        user: UserInfo {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: "0b5a6c3e".to_owned(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
            extra: BTreeMap::new(),
        },
        source_ips: vec!["10.0.3.7".to_owned()],
        user_agent: Some("agent/1.0".to_owned()),
        object_ref: Some(ObjectReference {
            resource: "nodes",
            name: "node-a".to_owned(),
            subresource: decided.to_owned(),
            api_version: "v1",
        }),
        response_status: ResponseStatus {
            metadata: BTreeMap::new(),
            code: call.code,
            status: failed.then_some("Failure"),
            reason: failed.then_some("Forbidden"),
            message: None,
        },
        request_received_timestamp: "2026-11-22T10:00:00.000000Z".to_owned(),
        stage_timestamp: "2026-11-22T10:00:00.002000Z".to_owned(),
        annotations,
    }
}

/// An audit log of what the chart agents did, plus noise the reader must survive.
fn audit_log(dir: &Path) -> PathBuf {
    let prometheus = ("monitoring", "prometheus-server");
    let datadog = ("datadog", "datadog");
    let fluent_bit = ("logging", "fluent-bit");
    let calls = [
        Call {
            account: prometheus,
            uri: "/metrics",
            verb: "get",
            checks: &[("metrics", true)],
            code: 200,
        },
        Call {
            account: prometheus,
            uri: "/metrics/cadvisor",
            verb: "get",
            checks: &[("metrics", true)],
            code: 200,
        },
        Call {
            account: prometheus,
            uri: "/stats/summary",
            verb: "get",
            checks: &[("stats", true)],
            code: 200,
        },
        // Listed pods through the nodes/proxy fallback: it needs only nodes/pods.
        Call {
            account: prometheus,
            uri: "/pods",
            verb: "get",
            checks: &[("pods", false), ("proxy", true)],
            code: 200,
        },
        Call {
            account: fluent_bit,
            uri: "/pods",
            verb: "get",
            checks: &[("pods", false), ("proxy", true)],
            code: 200,
        },
        Call {
            account: datadog,
            uri: "/metrics",
            verb: "get",
            checks: &[("metrics", true)],
            code: 200,
        },
        // Container logs are nodes/proxy itself: it must stay.
        Call {
            account: datadog,
            uri: "/containerLogs/default/web/nginx?tailLines=10",
            verb: "get",
            checks: &[("proxy", true)],
            code: 200,
        },
        // A refused exec is not a need.
        Call {
            account: datadog,
            uri: "/exec/default/web/nginx?command=id",
            verb: "create",
            checks: &[("proxy", false)],
            code: 403,
        },
    ];
    let mut lines: Vec<String> = calls
        .iter()
        .map(|call| serde_json::to_string(&event(call)).unwrap())
        .collect();
    // A request refused before authorization has no objectRef; another caller's calls; garbage.
    let mut unauthenticated = event(&calls[0]);
    unauthenticated.object_ref = None;
    unauthenticated.user = UserInfo::default();
    unauthenticated.response_status.code = 401;
    lines.push(serde_json::to_string(&unauthenticated).unwrap());
    lines.push(
        serde_json::to_string(&event(&Call {
            account: ("ops", "debugger"),
            ..calls[6]
        }))
        .unwrap(),
    );
    lines.push(String::new());
    lines.push("{\"truncated".to_owned());
    let path = dir.join("kubelet-guard-audit.log");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn suggestion<'a>(report: &'a Value, name: &str) -> &'a Value {
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["subject"]["name"] == name && f["subresource"] == "nodes/proxy")
        .unwrap_or_else(|| panic!("no nodes/proxy finding for {name}"));
    &finding["suggestion"]
}

/// (subresource, verb) pairs a suggestion's rules grant.
fn suggested(suggestion: &Value) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for rule in suggestion["rules"].as_array().unwrap() {
        for resource in rule["resources"].as_array().unwrap() {
            for verb in rule["verbs"].as_array().unwrap() {
                let subresource = resource.as_str().unwrap().strip_prefix("nodes/").unwrap();
                pairs.insert((subresource.to_owned(), verb.as_str().unwrap().to_owned()));
            }
        }
    }
    pairs
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(s, v)| ((*s).to_owned(), (*v).to_owned()))
        .collect()
}

/// Parses each emitted file with the embedded evaluator and checks that, for its subject, it
/// grants exactly the suggested pairs over every kubelet subresource and verb.
fn check_emitted(dir: &Path, report: &Value) -> usize {
    let mut checked = 0;
    for finding in report["findings"].as_array().unwrap() {
        let suggestion = &finding["suggestion"];
        if suggestion.is_null() || suggestion["rules"].as_array().unwrap().is_empty() {
            continue;
        }
        let role = suggestion["clusterRole"].as_str().unwrap();
        let file = dir.join(format!("{}.yaml", role.replace(':', "-")));
        let yaml =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let (policy, warnings) =
            Policy::parse(&yaml).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(warnings.is_empty(), "{}: {warnings:?}", file.display());
        let subject = &finding["subject"];
        let groups = [
            "system:serviceaccounts".to_owned(),
            "system:authenticated".to_owned(),
        ];
        let who = Identity::new(
            format!(
                "system:serviceaccount:{}:{}",
                subject["namespace"].as_str().unwrap(),
                subject["name"].as_str().unwrap()
            ),
            "",
            groups.clone(),
            BTreeMap::new(),
        );
        let expected = suggested(suggestion);
        for subresource in SUBRESOURCES {
            for verb in KUBELET_VERBS {
                let request = ResourceRequest {
                    api_group: "",
                    resource: "nodes",
                    subresource,
                    name: "node-a",
                    namespace: "",
                    verb,
                };
                let granted = policy.authorize(&who, &request).is_some();
                let wanted = expected.contains(&(subresource.to_owned(), verb.to_owned()));
                assert_eq!(
                    granted,
                    wanted,
                    "{}: {verb} nodes/{subresource}",
                    file.display()
                );
            }
        }
        // Nobody else gets anything from it.
        let stranger = Identity::new("system:serviceaccount:other:x", "", groups, BTreeMap::new());
        let metrics = ResourceRequest {
            api_group: "",
            resource: "nodes",
            subresource: "metrics",
            name: "n",
            namespace: "",
            verb: "get",
        };
        assert!(policy.authorize(&stranger, &metrics).is_none());
        checked += 1;
    }
    checked
}

#[test]
fn audit_log_suggestions_grant_exactly_what_each_subject_used() {
    let dir = temp_dir("rbac-audit-usage");
    let log = audit_log(&dir);
    let report = audit(&["--from-audit-log", &log.display().to_string()]);

    let prometheus = suggestion(&report, "prometheus-server");
    assert_eq!(prometheus["basis"], "audit-log");
    assert_eq!(
        prometheus["clusterRole"],
        "kubelet-api:sa:monitoring:prometheus-server"
    );
    assert_eq!(
        prometheus["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes/metrics", "nodes/stats", "nodes/pods"], "verbs": ["get"]}])
    );
    assert_eq!(prometheus["replaces"][0]["binding"], "prometheus-server");
    assert!(
        prometheus["note"].as_str().unwrap().contains("(4 calls)"),
        "{prometheus}"
    );

    let fluent_bit = suggestion(&report, "fluent-bit");
    assert_eq!(suggested(fluent_bit), pairs(&[("pods", "get")]));

    let datadog = suggestion(&report, "datadog");
    assert_eq!(
        suggested(datadog),
        pairs(&[("proxy", "get"), ("metrics", "get")])
    );
    let note = datadog["note"].as_str().unwrap();
    assert!(
        note.contains("still needs nodes/proxy for /containerLogs"),
        "{note}"
    );
    assert!(
        !note.contains("/api/v1/nodes/NAME/proxy/"),
        "kept nodes/proxy: nothing breaks at the API server: {note}"
    );
    // Dropping nodes/proxy says what breaks for agents scraping through the API server.
    for dropped in [prometheus, fluent_bit] {
        let note = dropped["note"].as_str().unwrap();
        assert!(
            note.contains("/api/v1/nodes/NAME/proxy/") && note.contains("node's address"),
            "{note}"
        );
    }

    let otel = suggestion(&report, "otel-collector-opentelemetry-collector");
    assert_eq!(otel["rules"], json!([]));
    assert!(
        otel["note"]
            .as_str()
            .unwrap()
            .contains("records no kubelet call"),
        "{otel}"
    );

    let warnings: Vec<&str> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    let bad_line = format!(
        "{}:12: skipped 1 lines that are not audit events",
        log.display()
    );
    assert!(
        warnings.iter().any(|w| w.starts_with(&bad_line)),
        "{warnings:#?}"
    );
}

#[test]
fn emitted_roles_grant_exactly_what_was_suggested() {
    let dir = temp_dir("rbac-audit-emit");
    let log = audit_log(&dir);
    let roles = dir.join("roles");
    let report = audit(&[
        "--from-audit-log",
        &log.display().to_string(),
        "--emit-roles",
        &roles.display().to_string(),
    ]);
    assert_eq!(
        check_emitted(&roles, &report),
        3,
        "prometheus, fluent-bit, datadog; otel needs none"
    );
    let mut files: Vec<String> = std::fs::read_dir(&roles)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "kubelet-api-sa-datadog-datadog.yaml",
            "kubelet-api-sa-logging-fluent-bit.yaml",
            "kubelet-api-sa-monitoring-prometheus-server.yaml",
        ]
    );
    let prometheus = std::fs::read_to_string(roles.join(&files[2])).unwrap();
    assert!(prometheus.starts_with(
        "# Suggested by kubelet-guard rbac-audit for ServiceAccount monitoring/prometheus-server.\n\
         # Basis: from the audit log"
    ), "{prometheus}");
    assert!(
        prometheus.contains("kubelet-guard.io/suggestion-basis: audit-log"),
        "{prometheus}"
    );
}

#[test]
fn without_an_audit_log_the_emitted_guess_is_labelled_and_exact() {
    let roles = temp_dir("rbac-audit-guess").join("roles");
    let report = audit(&["--emit-roles", &roles.display().to_string()]);
    assert_eq!(
        check_emitted(&roles, &report),
        4,
        "one per nodes/proxy holder of the charts"
    );
    let fluent =
        std::fs::read_to_string(roles.join("kubelet-api-sa-logging-fluent-bit.yaml")).unwrap();
    assert!(
        fluent.contains("# Basis: a guess, since no --from-audit-log was given"),
        "{fluent}"
    );
    assert!(
        fluent.contains("kubelet-guard.io/suggestion-basis: guess"),
        "{fluent}"
    );
    assert!(
        fluent.contains(
            "# Replaces nodes/proxy from ClusterRoleBinding fluent-bit (ClusterRole fluent-bit, \
         tests/fixtures/charts/fluent-bit/rendered.yaml:62)"
        ),
        "{fluent}"
    );
}
