//! Runs of the `kubelet-guard rbac-audit` binary as a user would make them, and the rendered
//! charts under tests/fixtures/charts.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What one run of `kubelet-guard rbac-audit` left behind.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}\nstdout: {}\nstderr: {}", self.stdout, self.stderr))
    }
}

pub fn audit(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .arg("rbac-audit")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

pub const CHARTS: &str = "tests/fixtures/charts";

pub fn chart(name: &str) -> String {
    format!("{CHARTS}/{name}/rendered.yaml")
}

/// The findings of `report` as (subject, subresource, verbs, severity) rows.
pub fn rows(report: &Value) -> Vec<(String, String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let subject = &f["subject"];
            let who = match subject["namespace"].as_str().unwrap() {
                "" => format!(
                    "{} {}",
                    subject["kind"].as_str().unwrap(),
                    subject["name"].as_str().unwrap()
                ),
                ns => format!(
                    "{} {ns}/{}",
                    subject["kind"].as_str().unwrap(),
                    subject["name"].as_str().unwrap()
                ),
            };
            let verbs: Vec<&str> = f["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            (
                who,
                f["subresource"].as_str().unwrap().to_owned(),
                verbs.join(","),
                f["severity"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn row(
    who: &str,
    subresource: &str,
    verbs: &str,
    severity: &str,
) -> (String, String, String, String) {
    (
        who.to_owned(),
        subresource.to_owned(),
        verbs.to_owned(),
        severity.to_owned(),
    )
}
