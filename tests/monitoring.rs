//! The monitoring bundle of `deploy/monitoring/` works with the guard it watches: the alert rules
//! pass `promtool check rules`, every `kubelet_guard_*` metric a rule or a dashboard panel names is
//! one the guard registers (and every metric a running guard exports is in that list, so the list
//! is the guard's), and the certificate expiry gauge the expiry alerts read is set at start-up.
//!
//! `promtool` comes from the Debian package `prometheus`; `.ci/run` installs it and sets
//! `KUBELET_GUARD_REQUIRE_PROMTOOL=1`, so CI never skips the check. Elsewhere the test says on
//! stderr when it skips it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::guard::Cluster;
use support::kubelet::Auth;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn rule_file() -> Value {
    let path = monitoring_dir().join("prometheusrule.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the rules and of the dashboard's panels.
fn expressions() -> Vec<String> {
    let rules = rule_file();
    let mut exprs: Vec<String> = rules["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|group| group["rules"].as_array().unwrap())
        .map(|rule| rule["expr"].as_str().unwrap().to_owned())
        .collect();
    let path = monitoring_dir().join("kubelet-guard-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "the dashboard has its panels");
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has a query", panel["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|target| target["expr"].as_str().unwrap().to_owned()),
        );
    }
    exprs
}

/// The `kubelet_guard_*` names in `text`, histogram series reduced to their metric.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("kubelet_guard_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The metric names `src/metrics.rs` registers: its `"kubelet_guard_…"` string literals.
fn registered() -> BTreeSet<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
            .unwrap();
    source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|literal| {
            literal.starts_with("kubelet_guard_")
                && literal
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let required = std::env::var_os("KUBELET_GUARD_REQUIRE_PROMTOOL").is_some();
    if Command::new("promtool").arg("--version").output().is_err() {
        assert!(!required, "promtool is required but not on the PATH");
        eprintln!("promtool is not on the PATH: `promtool check rules` skipped");
        return;
    }
    // The PrometheusRule's spec is a plain rule file; JSON is YAML to promtool.
    let file = support::temp_dir("monitoring").join("rules.json");
    std::fs::write(&file, rule_file()["spec"].to_string()).unwrap();
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn every_alert_the_issue_asks_for_is_there() {
    let rules = rule_file();
    let alerts: BTreeSet<&str> = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule["alert"].as_str().unwrap())
        .collect();
    for alert in [
        "KubeletGuardDown",
        "KubeletGuardUnready",
        "KubeletGuardKubeletExposed",
        "KubeletGuardRefusalsRising",
        "KubeletGuardReviewErrors",
        "KubeletGuardAuditEventsDropped",
        "KubeletGuardUpstreamErrors",
        "KubeletGuardLockdownUnchecked",
        "KubeletGuardServingCertificateExpiresSoon",
        "KubeletGuardUpstreamCertificateExpiresSoon",
    ] {
        assert!(alerts.contains(alert), "{alert} in {alerts:?}");
    }
}

#[tokio::test]
async fn every_metric_in_a_rule_or_panel_is_one_the_guard_exports() {
    let registered = registered();
    assert!(
        registered.len() >= 15,
        "the registered names were found: {registered:?}"
    );

    // The list read from the source is the guard's: everything a running guard exports is in it.
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t", "agent", "", &[]);
    cluster.api.allow("agent", "get", "metrics");
    let (status, _) = cluster.get("/metrics", "t").await;
    assert!(status.is_success());
    let exported = metric_names(&cluster.metrics().await);
    assert!(
        exported.contains("kubelet_guard_requests_total"),
        "{exported:?}"
    );
    let unknown: Vec<&String> = exported.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "exported but not found in src/metrics.rs: {unknown:?}"
    );

    let mut named = BTreeSet::new();
    for expr in expressions() {
        named.extend(metric_names(&expr));
    }
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "named by deploy/monitoring but never exported by the guard: {missing:?}"
    );
}

/// The value of the sample `series` (name and labels, as exported) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn the_certificate_expiry_gauge_follows_the_certificates_in_use() {
    let cluster = Cluster::start_with_node_pki(Auth::Locked, "168h", &[]).await;
    let scrape = cluster.metrics().await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let upstream = sample(
        &scrape,
        r#"kubelet_guard_certificate_expiry_timestamp_seconds{certificate="upstream"}"#,
    )
    .unwrap_or_else(|| panic!("{scrape}"));
    let expected = (now + Duration::from_secs(168 * 3600)).as_secs_f64();
    assert!(
        (upstream - expected).abs() < 600.0,
        "the node-pki certificate expires in 168h: {upstream} vs {expected}"
    );
    let serving = sample(
        &scrape,
        r#"kubelet_guard_certificate_expiry_timestamp_seconds{certificate="serving"}"#,
    )
    .unwrap_or_else(|| panic!("{scrape}"));
    assert!(serving > now.as_secs_f64(), "{serving}");
}
