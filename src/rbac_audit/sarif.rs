//! The `sarif` output: SARIF 2.1.0 (OASIS), as code-scanning services such as GitHub's read it.
//!
//! One rule per severity; one result per finding, located at its bindings (file and line when the
//! input was a file, the binding's name always; for a role aggregated into a bootstrap role, the
//! role), with `properties.security-severity` on the rules so that scanners rank them, and a
//! fingerprint per subject and subresource so that a result keeps its identity across runs. Warnings become tool notifications of the invocation.

use std::io::{self, Write};

use serde_json::{Value, json};

use super::findings::{Finding, Severity, Via};

/// The SARIF version written.
const VERSION: &str = "2.1.0";

/// Where the SARIF 2.1.0 schema lives.
const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// A SARIF rule: one per severity.
struct Rule {
    severity: Severity,
    id: &'static str,
    name: &'static str,
    description: &'static str,
    /// SARIF `level` of its results.
    level: &'static str,
    /// `security-severity` (0-10), by which code scanning ranks results.
    security: Option<&'static str>,
}

/// The rules, worst first.
const RULES: [Rule; 5] = [
    Rule {
        severity: Severity::Critical,
        id: "kubelet-exec",
        name: "NodesProxyExec",
        description: "get, create or * on nodes/proxy: command execution in every container on every \
             reachable node (a WebSocket exec needs only get)",
        level: "error",
        security: Some("9.1"),
    },
    Rule {
        severity: Severity::High,
        id: "kubelet-sensitive",
        name: "KubeletSensitiveAccess",
        description: "writes to kubelet subresources, node logs (nodes/log) or container checkpoints \
             (nodes/checkpoint)",
        level: "error",
        security: Some("7.5"),
    },
    Rule {
        severity: Severity::Medium,
        id: "kubelet-config",
        name: "KubeletConfigurationRead",
        description: "the kubelet's configuration (nodes/configz)",
        level: "warning",
        security: Some("5.0"),
    },
    Rule {
        severity: Severity::Low,
        id: "kubelet-read",
        name: "KubeletMonitoringRead",
        description: "read-only monitoring subresources of the kubelet",
        level: "note",
        security: Some("2.0"),
    },
    Rule {
        severity: Severity::Info,
        id: "kubelet-admin",
        name: "ExpectedAdminAccess",
        description: "expected admin access: system:masters or a bootstrap admin role",
        level: "note",
        security: None,
    },
];

/// Writes one SARIF log with one run.
pub(super) fn write(
    out: &mut dyn Write,
    findings: &[Finding],
    warnings: &[String],
) -> io::Result<()> {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|rule| {
            let Rule {
                id,
                name,
                description,
                level,
                security,
                ..
            } = rule;
            let mut properties = json!({"tags": ["security", "kubernetes", "rbac"]});
            if let Some(score) = security {
                properties["security-severity"] = json!(score);
            }
            json!({
                "id": id,
                "name": name,
                "shortDescription": {"text": description},
                "defaultConfiguration": {"level": level},
                "properties": properties,
            })
        })
        .collect();
    let results: Vec<Value> = findings.iter().map(result).collect();
    let notifications: Vec<Value> = warnings
        .iter()
        .map(|warning| json!({"level": "warning", "message": {"text": warning}}))
        .collect();
    let log = json!({
        "$schema": SCHEMA,
        "version": VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "kubelet-guard rbac-audit",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
        }],
    });
    serde_json::to_writer_pretty(&mut *out, &log)?;
    writeln!(out)
}

/// The result of one finding.
fn result(finding: &Finding) -> Value {
    let (index, id, level) = RULES
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.severity == finding.severity)
        .map_or((3, "kubelet-read", "note"), |(index, rule)| {
            (index, rule.id, rule.level)
        });
    let via: Vec<String> = finding
        .via
        .iter()
        .map(|via| match via.binding.as_str() {
            "" => format!(
                "ClusterRole {}, labelled to be aggregated into it, so every subject a \
                 ClusterRoleBinding binds to it in a cluster holds this",
                via.role
            ),
            binding => format!("ClusterRoleBinding {binding} -> ClusterRole {}", via.role),
        })
        .collect();
    let mut text = format!(
        "{} holds {} on {} through {}",
        finding.subject,
        finding.verbs.join(", "),
        finding.subresource,
        via.join(", ")
    );
    if let Some(suggestion) = &finding.suggestion {
        let granted: Vec<String> = suggestion
            .rules
            .iter()
            .map(|rule| format!("{} on {}", rule.verbs.join(", "), rule.resources.join(", ")))
            .collect();
        match granted.is_empty() {
            true => text.push_str(&format!(
                ". Suggested: remove the grant ({})",
                suggestion.note
            )),
            false => text.push_str(&format!(
                ". Suggested: replace it with ClusterRole {} granting {} ({})",
                suggestion.cluster_role,
                granted.join("; "),
                suggestion.note
            )),
        }
    }
    json!({
        "ruleId": id,
        "ruleIndex": index,
        "level": level,
        "message": {"text": text},
        "locations": finding.via.iter().map(location).collect::<Vec<_>>(),
        "partialFingerprints": {
            "subjectSubresource/v1": format!(
                "{}/{}/{}/{}",
                finding.subject.kind, finding.subject.namespace, finding.subject.name,
                finding.subresource
            ),
        },
        "properties": {
            "severity": finding.severity,
            "subject": finding.subject,
            "subresource": finding.subresource,
            "verbs": finding.verbs,
            "resourceNames": finding.resource_names,
            "execCapable": finding.exec_capable,
            "suggestion": finding.suggestion,
        },
    })
}

/// Where a binding was read (or, for an aggregated role, the role): a file and line when it came
/// from a file, always its name.
fn location(via: &Via) -> Value {
    let logical = match via.binding.as_str() {
        "" => json!([{"name": via.role, "kind": "ClusterRole"}]),
        binding => json!([{"name": binding, "kind": "ClusterRoleBinding"}]),
    };
    let source = via.location.source.as_str();
    if matches!(source, "" | "-" | "cluster") {
        return json!({"logicalLocations": logical});
    }
    let uri: String = source
        .replace('\\', "/")
        .replace('%', "%25")
        .replace(' ', "%20");
    let mut physical = json!({"artifactLocation": {"uri": uri}});
    if via.location.line > 0 {
        physical["region"] = json!({"startLine": via.location.line});
    }
    json!({"physicalLocation": physical, "logicalLocations": logical})
}
