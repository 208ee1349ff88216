//! `kubelet-guard rbac-audit` outputs and exit statuses: the table, SARIF, `--fail-on`, malformed
//! inputs (file and line, the others still audited) and unusable flags. Every test runs the
//! binary as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::rbac_audit::{CHARTS, audit, chart, row, rows};

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubelet-guard-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
// Outputs

#[test]
fn the_table_is_worst_first_with_suggestions_warnings_and_a_summary() {
    let run = audit(
        &["-f", &chart("prometheus"), "-f", &chart("metrics-server")],
        None,
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("SEVERITY  SUBJECT"), "{}", run.stdout);
    assert!(
        lines[1].starts_with("critical  ServiceAccount monitoring/prometheus-server  nodes/proxy"),
        "{}",
        run.stdout
    );
    assert!(lines[2].starts_with("low       "), "{}", run.stdout);
    // Columns line up.
    let column = |line: &str| line.find("nodes/").unwrap();
    assert_eq!(column(lines[1]), column(lines[2]));
    assert_eq!(column(lines[1]), lines[0].find("SUBRESOURCE").unwrap());
    assert!(run.stdout.contains("Suggestions (least-privilege replacements of nodes/proxy):\n  ServiceAccount monitoring/prometheus-server:\n    ClusterRole kubelet-api:sa:monitoring:prometheus-server\n      get on nodes/metrics, nodes/stats, nodes/pods\n    a guess"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("\nWarnings:\n  - ClusterRoleBinding metrics-server:system:auth-delegator"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("\n3 findings: 1 critical, 2 low; 1 subject can run commands on nodes through nodes/proxy\n"), "{}", run.stdout);
}

#[test]
fn the_table_keeps_control_characters_from_the_input_off_the_terminal() {
    let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: star-proxy}\n\
         rules: [{apiGroups: [''], resources: ['*/proxy'], verbs: [get]}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n\
         metadata: {name: evil}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: star-proxy}\n\
         subjects: [{kind: User, name: \"alice\\e]0;pwned\\a\"}]\n";
    let run = audit(&["-f", "-"], Some(yaml));
    assert_eq!(run.status, 0, "{}", run.stderr);
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    assert!(
        run.stdout.contains("User alice?]0;pwned?"),
        "{}",
        run.stdout
    );
}

#[test]
fn sarif_output_locates_each_finding_at_its_binding() {
    let run = audit(&["-f", CHARTS, "-o", "sarif"], None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let sarif = run.json();
    assert_eq!(sarif["version"], "2.1.0");
    let run0 = &sarif["runs"][0];
    let rules: Vec<&str> = run0["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "kubelet-exec",
            "kubelet-sensitive",
            "kubelet-config",
            "kubelet-read",
            "kubelet-admin"
        ]
    );
    assert_eq!(
        run0["tool"]["driver"]["rules"][0]["properties"]["security-severity"],
        "9.1"
    );
    let results = run0["results"].as_array().unwrap();
    assert_eq!(results.len(), 11);
    let fluent = results
        .iter()
        .find(|r| r["properties"]["subject"]["name"] == "fluent-bit")
        .unwrap();
    assert_eq!(fluent["ruleId"], "kubelet-exec");
    assert_eq!(fluent["level"], "error");
    let location = &fluent["locations"][0];
    assert_eq!(
        location["physicalLocation"]["artifactLocation"]["uri"],
        "tests/fixtures/charts/fluent-bit/rendered.yaml"
    );
    assert_eq!(location["physicalLocation"]["region"]["startLine"], 62);
    assert_eq!(location["logicalLocations"][0]["name"], "fluent-bit");
    assert!(fluent["message"]["text"].as_str().unwrap().starts_with(
        "ServiceAccount logging/fluent-bit holds get, list, watch on nodes/proxy through ClusterRoleBinding fluent-bit"
    ));
    assert_eq!(
        fluent["partialFingerprints"]["subjectSubresource/v1"],
        "ServiceAccount/logging/fluent-bit/nodes/proxy"
    );
    let low = results
        .iter()
        .find(|r| r["properties"]["severity"] == "low")
        .unwrap();
    assert_eq!(
        (low["ruleId"].as_str(), low["level"].as_str()),
        (Some("kubelet-read"), Some("note"))
    );
    let notes = run0["invocations"][0]["toolExecutionNotifications"]
        .as_array()
        .unwrap();
    assert_eq!(notes.len(), 2, "the two missing roles of metrics-server");
}

// ---------------------------------------------------------------------------------------------
// --fail-on

#[test]
fn fail_on_gates_on_the_worst_finding() {
    let status = |args: &[&str]| audit(args, None).status;
    assert_eq!(status(&["-f", CHARTS]), 0, "--fail-on defaults to none");
    assert_eq!(status(&["-f", CHARTS, "--fail-on", "critical"]), 1);
    let stack = chart("kube-prometheus-stack");
    assert_eq!(status(&["-f", &stack, "--fail-on", "critical"]), 0);
    assert_eq!(status(&["-f", &stack, "--fail-on", "high"]), 0);
    assert_eq!(status(&["-f", &stack, "--fail-on", "medium"]), 0);
    assert_eq!(status(&["-f", &stack, "--fail-on", "low"]), 1);
    assert_eq!(status(&["-f", &stack, "--fail-on", "none"]), 0);
    assert_eq!(
        status(&["-f", &stack, "--fail-on", "bogus"]),
        64,
        "a bad flag"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed input

#[test]
fn malformed_files_are_reported_with_file_and_line_and_the_others_still_audited() {
    let dir = temp_dir("rbac-audit-malformed");
    std::fs::create_dir_all(dir.join("nested/.hidden")).unwrap();
    let fluent =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(chart("fluent-bit")))
            .unwrap();
    std::fs::write(dir.join("nested/fluent-bit.yaml"), &fluent).unwrap();
    std::fs::write(dir.join("nested/.hidden/ignored.yaml"), "kind: [broken\n").unwrap();
    std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
    std::fs::write(
        dir.join("a-syntax.yaml"),
        "apiVersion: v1\nkind: List\nitems: [unclosed\n",
    )
    .unwrap();
    let invalid = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: rbac.authorization.k8s.io/v1\n\
                   kind: ClusterRole\nmetadata: {name: bad}\nrules: [{apiGroups: [''], verbs: get}]\n";
    std::fs::write(dir.join("b-invalid.yaml"), invalid).unwrap();
    std::fs::write(
        dir.join("c-broken.json"),
        "{\"kind\": \"List\",\n\"items\": [}\n",
    )
    .unwrap();

    let dir_arg = dir.display().to_string();
    let run = audit(&["-f", &dir_arg, "-f", "missing.yaml", "-o", "json"], None);
    assert_eq!(
        run.status, 64,
        "an input could not be audited: {}",
        run.stderr
    );
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
    let warnings = warnings(&report);
    let at = |file: &str| format!("{dir_arg}/{file}");
    assert!(
        warnings[0].starts_with(&format!("{}:3: ", at("a-syntax.yaml"))),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].starts_with(&format!(
            "{}:4: ClusterRole \"bad\": invalid type",
            at("b-invalid.yaml")
        )),
        "{warnings:#?}"
    );
    assert!(
        warnings[2].starts_with(&format!("{}:2: invalid JSON", at("c-broken.json"))),
        "{warnings:#?}"
    );
    assert!(warnings[3].starts_with("missing.yaml: "), "{warnings:#?}");
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    // Machine output goes to a pipe: the errors are on standard error too.
    assert!(
        run.stderr.contains(&format!("{}:3: ", at("a-syntax.yaml"))),
        "{}",
        run.stderr
    );

    // Even with a tripped --fail-on the status is 64: the gate itself is misconfigured, and the
    // table says the audit is incomplete before anything else.
    let run = audit(&["-f", &dir_arg, "--fail-on", "critical"], None);
    assert_eq!(run.status, 64);
    assert!(run.stdout.starts_with("INCOMPLETE: "), "{}", run.stdout);
    assert!(
        run.stdout.contains("a-syntax.yaml:3: "),
        "the table lists it: {}",
        run.stdout
    );
    assert!(run.stderr.contains("a-syntax.yaml:3: "), "{}", run.stderr);
}

#[test]
fn an_input_that_cannot_be_audited_is_never_an_all_clear_in_any_format() {
    let dir = temp_dir("rbac-audit-unusable");
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    let unreadable = dir.join("a-directory.yaml");
    std::fs::create_dir_all(unreadable.join("inside")).unwrap();
    std::fs::write(unreadable.join("inside/broken.yaml"), "kind: [x\n").unwrap();
    for input in [
        "mistyped/path.yaml".to_owned(),
        broken.display().to_string(),
        unreadable.display().to_string(),
    ] {
        for format in ["table", "json", "sarif"] {
            let run = audit(&["-f", &input, "-o", format], None);
            assert_eq!(run.status, 64, "{input} {format}: {}", run.stderr);
            assert!(
                run.stderr.contains("kubelet-guard rbac-audit: ")
                    && run.stderr.contains(input.rsplit('/').next().unwrap()),
                "{input} {format}: standard error names it: {}",
                run.stderr
            );
            assert!(
                !run.stdout.contains("No subject is granted"),
                "{input} {format}: no all-clear: {}",
                run.stdout
            );
        }
    }
}

#[test]
fn a_reader_that_closes_the_pipe_ends_the_run_quietly() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let rendered =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(chart("fluent-bit")))
            .unwrap();
    for format in ["table", "json", "sarif"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
            .args(["rbac-audit", "-f", "-", "-o", format])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the input arrives, so the report is certainly written to a closed pipe.
        drop(child.stdout.take());
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(rendered.as_bytes()).unwrap();
        drop(stdin);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(0), "{format}: {stderr}");
        assert!(stderr.is_empty(), "{format}: quiet: {stderr}");
    }
}

#[test]
fn verbs_are_every_verb_granted_sorted() {
    let dir = temp_dir("rbac-audit-verbs");
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: agent}\n\
         rules:\n- apiGroups: ['']\n  resources: [nodes/proxy, nodes/metrics]\n  \
         verbs: [watch, get, list]\n- apiGroups: ['']\n  resources: [nodes/stats]\n  \
         verbs: [list, watch]\n---\napiVersion: rbac.authorization.k8s.io/v1\n\
         kind: ClusterRoleBinding\nmetadata: {name: agent}\nroleRef: {apiGroup: \
         rbac.authorization.k8s.io, kind: ClusterRole, name: agent}\nsubjects:\n\
         - {kind: ServiceAccount, name: agent, namespace: mon}\n",
    )
    .unwrap();
    let run = audit(&["-f", &policy.display().to_string(), "-o", "json"], None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.json();
    let verbs: Vec<(String, Value)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["subresource"].as_str().unwrap().to_owned(),
                f["verbs"].clone(),
            )
        })
        .collect();
    assert_eq!(
        verbs,
        [
            (
                "nodes/proxy".to_owned(),
                serde_json::json!(["get", "list", "watch"])
            ),
            (
                "nodes/metrics".to_owned(),
                serde_json::json!(["get", "list", "watch"])
            ),
        ],
        "list and watch alone (nodes/stats) grant nothing the kubelet asks about"
    );
    // execCapable is the subject's: true on its nodes/metrics finding too.
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["execCapable"] == true),
        "{report:#}"
    );
}

#[test]
fn unusable_flags_exit_64_before_auditing() {
    let run = audit(&["-f", CHARTS, "--from-audit-log", "no-such.log"], None);
    assert_eq!(run.status, 64);
    assert!(
        run.stderr.contains("--from-audit-log no-such.log: "),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let file = temp_dir("rbac-audit-emit-file").join("a-file");
    std::fs::write(&file, "").unwrap();
    let run = audit(
        &["-f", CHARTS, "--emit-roles", &file.display().to_string()],
        None,
    );
    assert_eq!(run.status, 64, "{}", run.stderr);
    assert!(run.stderr.contains("--emit-roles "), "{}", run.stderr);
    let run = audit(&["-f", CHARTS, "--kubeconfig", "x"], None);
    assert_eq!(
        run.status, 64,
        "-f and --kubeconfig exclude each other: {}",
        run.stderr
    );
}
