//! The observe phase names who would be refused: a guard in `--mode=observe` writes its audit
//! events (to a file, or as JSON lines on standard output for `kubectl logs`), and
//! `kubelet-guard rbac-audit --from-audit-log FILE|-` turns them into the table an operator reads
//! before enforcing: per user, what would be refused, how often, by verb and resource, and the
//! least-privilege grant that would allow it. The events are the guard's own, from real requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;
use support::DEADLINE;
use support::apiserver::ApiServerDouble;
use support::client::TlsClient;
use support::guard::{Cluster, NODE, flags};
use support::kubelet::KubeletDouble;
use support::pki::Ca;
use support::rbac_audit::audit;

const LEGACY: &str = "t-legacy";
const ALICE: &str = "t-alice";

/// Scripts the API server double: a legacy agent allowed only `nodes/metrics`, a user allowed
/// nothing.
fn script(api: &ApiServerDouble) {
    api.add_token(LEGACY, "system:serviceaccount:mon:legacy", "", &[]);
    api.allow("system:serviceaccount:mon:legacy", "get", "metrics");
    api.add_token(ALICE, "alice", "", &["devs"]);
}

/// Requests observe mode forwards but enforce mode would refuse (and one it allows): the legacy
/// agent lists pods twice and reads stats once, alice reads the kubelet's configuration, a
/// stranger's token is invalid. Returns how many were made.
async fn exercise(client: &TlsClient, addr: std::net::SocketAddr) -> usize {
    let requests = [
        ("/metrics", LEGACY),
        ("/pods", LEGACY),
        ("/pods?fieldSelector=x", LEGACY),
        ("/stats/summary", LEGACY),
        ("/configz", ALICE),
        ("/metrics", "t-stranger"),
    ];
    for (path, token) in requests {
        let (status, _, _) = client.get(addr, path, Some(token)).await;
        assert!(
            status.is_success(),
            "observe mode forwards {path}: {status}"
        );
    }
    requests.len()
}

/// Waits until `log` holds `count` lines.
async fn lines(log: &Path, count: usize) -> String {
    support::with_deadline("audit events in the log", async {
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.lines().count() >= count {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The refusals table's rows of named users: (user, count, verb, resource), users carried down.
fn table_rows(table: &str) -> Vec<(String, String, String, String)> {
    let mut rows = Vec::new();
    let mut user = String::new();
    let body = table
        .lines()
        .skip_while(|line| !line.starts_with("USER"))
        .skip(1)
        .take_while(|line| !line.is_empty() && !line.starts_with("(no valid credentials)"));
    for line in body {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let (who, rest) = match line.starts_with(' ') {
            true => (user.clone(), &cells[..]),
            false => (cells[0].to_owned(), &cells[1..]),
        };
        user.clone_from(&who);
        if rest.len() >= 3 {
            rows.push((
                who,
                rest[0].to_owned(),
                rest[1].to_owned(),
                rest[2].to_owned(),
            ));
        }
    }
    rows
}

fn check_table(stdout: &str) {
    assert_eq!(
        table_rows(stdout),
        [
            (
                "system:serviceaccount:mon:legacy".to_owned(),
                "2".to_owned(),
                "get".to_owned(),
                "nodes/pods".to_owned()
            ),
            (
                "system:serviceaccount:mon:legacy".to_owned(),
                "1".to_owned(),
                "get".to_owned(),
                "nodes/stats".to_owned()
            ),
            (
                "alice".to_owned(),
                "1".to_owned(),
                "get".to_owned(),
                "nodes/configz".to_owned()
            ),
        ],
        "{stdout}"
    );
    assert!(
        stdout.contains("(no valid credentials) from 127.0.0.1"),
        "{stdout}"
    );
    // The grants: the fine-grained subresources, never the nodes/proxy fallback.
    let grants = stdout
        .split("Least-privilege grants that would allow them:")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        grants.contains(
            "  ServiceAccount mon/legacy:\n    ClusterRole kubelet-api:sa:mon:legacy\n      get on nodes/stats, nodes/pods\n"
        ),
        "{grants}"
    );
    assert!(
        grants.contains(
            "  User alice:\n    ClusterRole kubelet-api:user:alice\n      get on nodes/configz\n"
        ),
        "{grants}"
    );
    assert!(!grants.contains("nodes/proxy"), "{grants}");
}

#[tokio::test]
async fn rbac_audit_names_who_observe_mode_would_refuse_from_the_guards_audit_file() {
    let log = support::temp_dir("observe-refusals").join("audit.log");
    let flag = format!("--audit-log-path={}", log.display());
    let cluster = Cluster::start(&["--mode=observe", &flag]).await;
    script(&cluster.api);
    let made = exercise(&cluster.client(), cluster.addr()).await;
    lines(&log, made).await;

    let path = log.display().to_string();
    let run = audit(&["--from-audit-log", &path], None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    check_table(&run.stdout);
    assert!(
        run.stdout.starts_with(&format!(
            "Refused, or would be refused once enforced (from {made} audit events)"
        )),
        "{}",
        run.stdout
    );

    let run = audit(&["--from-audit-log", &path, "-o", "json"], None);
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.json();
    let callers = &report["observedRefusals"]["callers"];
    assert_eq!(callers[0]["user"], "system:serviceaccount:mon:legacy");
    assert_eq!(callers[0]["requests"], 3);
    assert_eq!(
        callers[0]["refused"][0]["paths"],
        serde_json::json!(["/pods"]),
        "paths without their query, each once"
    );
    assert_eq!(
        callers[0]["suggestion"]["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["nodes/stats", "nodes/pods"], "verbs": ["get"]}])
    );
    assert_eq!(
        report["observedRefusals"]["unauthenticated"][0]["requests"],
        1
    );

    // The emitted role is the suggestion, for a human to apply.
    let roles = support::temp_dir("observe-refusals-roles");
    let run = audit(
        &[
            "--from-audit-log",
            &path,
            "--emit-roles",
            &roles.display().to_string(),
        ],
        None,
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let emitted = std::fs::read_to_string(roles.join("kubelet-api-sa-mon-legacy.yaml")).unwrap();
    assert!(
        emitted.contains("resources: [\"nodes/stats\", \"nodes/pods\"]"),
        "{emitted}"
    );
}

#[tokio::test]
async fn kubectl_logs_of_an_observing_guard_piped_to_rbac_audit_name_the_same_callers() {
    support::init();
    let ca = Ca::new("cluster");
    let kubelet_ca = Ca::new("kubelet");
    let api = ApiServerDouble::start(&ca).await;
    script(&api);
    let kubelet = KubeletDouble::start(
        &kubelet_ca.server_cert(NODE, &["127.0.0.1", "localhost"]),
        &kubelet_ca,
    )
    .await;
    let argv = flags(
        &ca,
        &kubelet_ca,
        &api,
        &kubelet,
        &["--mode=observe", "--audit-log-path=-", "--log-format=json"],
    );
    // The binary as the DaemonSet runs it: audit events on stdout, JSON logs on stderr.
    let mut guard = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(&argv[1..])
        .env("KUBELET_GUARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, stderr_lines) = mpsc::channel();
    let stderr = BufReader::new(guard.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let addr = loop {
        let line = stderr_lines
            .recv_timeout(DEADLINE)
            .expect("the guard logs that it serves");
        let parsed: Value = serde_json::from_str(&line).expect("JSON log lines");
        logs.push(line);
        if parsed["fields"]["message"] == "kubelet-guard serving" {
            break parsed["fields"]["proxy_addr"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        }
    };
    let mut stdout = guard.stdout.take().unwrap();
    let made = exercise(&TlsClient::new(ca.cert_path(), None), addr).await;

    // SIGTERM: the guard drains its audit queue and exits, closing its stdout.
    assert!(support::sigterm(guard.id()));
    let mut audit_lines = String::new();
    stdout.read_to_string(&mut audit_lines).unwrap();
    assert_eq!(guard.wait().unwrap().code(), Some(0));
    logs.extend(std::iter::from_fn(|| {
        stderr_lines.recv_timeout(DEADLINE).ok()
    }));

    // Standard output is audit events only, one whole JSON object per line.
    let events: Vec<Value> = audit_lines
        .lines()
        .map(|line| serde_json::from_str(line).expect("an audit event per line"))
        .collect();
    assert_eq!(events.len(), made, "{audit_lines}");
    assert!(events.iter().all(|event| event["kind"] == "Event"));
    assert!(events.iter().any(|event| {
        event["user"]["username"] == "alice"
            && event["annotations"]["kubelet-guard.io/observe"] == "would-forbid"
    }));

    // `kubectl logs` interleaves both streams: log lines are skipped and counted.
    let mixed: String = logs
        .iter()
        .map(String::as_str)
        .chain(audit_lines.lines())
        .flat_map(|line| [line, "\n"])
        .collect();
    let run = audit(&["--from-audit-log", "-"], Some(&mixed));
    assert_eq!(run.status, 0, "{}", run.stderr);
    check_table(&run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "standard input:1: skipped {} lines that are not audit events",
            logs.len()
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn an_audit_log_without_events_is_an_error_not_an_all_clear() {
    let dir = support::temp_dir("observe-refusals-empty");
    let empty = dir.join("audit.log");
    std::fs::write(&empty, "kubelet-guard serving\n").unwrap();
    for path in [empty.display().to_string(), "no-such.log".to_owned()] {
        let run = audit(&["--from-audit-log", &path], None);
        assert_eq!(run.status, 64, "{path}: {}", run.stderr);
        assert!(run.stderr.contains("--from-audit-log"), "{}", run.stderr);
        assert!(run.stdout.is_empty(), "{}", run.stdout);
    }
    let run = audit(&["--from-audit-log", "-", "-f", "-"], Some(""));
    assert_eq!(run.status, 64, "{}", run.stderr);
    assert!(run.stderr.contains("standard input"), "{}", run.stderr);
    let run = audit(&["--from-audit-log", "-", "-o", "sarif"], Some(""));
    assert_eq!(run.status, 64, "{}", run.stderr);
    assert!(run.stderr.contains("--output sarif"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}
