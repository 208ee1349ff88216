//! The `table` and `json` outputs.
//!
//! The table is for a terminal: findings worst first in aligned columns, then the suggestions,
//! the warnings and a one-line summary. Every cell is stripped of control characters, since names
//! come from the audited input. The JSON is `{"findings": [...], "warnings": [...]}` with the
//! finding fields of [`Finding`], plus `"observedRefusals"` with `--from-audit-log`.

use std::io::{self, Write};

use serde::Serialize;

use super::findings::{Finding, Severity, Via};
use super::refusals::Refusals;
use super::suggest::Suggestion;

/// Writes the findings as a table, then suggestions, warnings and a summary. `incomplete`
/// inputs could not be audited: then no headline says that nothing was found.
pub(super) fn table(
    out: &mut dyn Write,
    findings: &[Finding],
    warnings: &[String],
    incomplete: usize,
) -> io::Result<()> {
    if incomplete > 0 {
        writeln!(
            out,
            "INCOMPLETE: {incomplete} input(s) could not be audited (see the warnings); what \
             follows covers only what could be read."
        )?;
    }
    if findings.is_empty() && incomplete == 0 {
        writeln!(
            out,
            "No subject is granted any kubelet subresource (nodes/<subresource>)."
        )?;
    } else if !findings.is_empty() {
        let header = [
            "SEVERITY",
            "SUBJECT",
            "SUBRESOURCE",
            "VERBS",
            "NODES",
            "VIA",
        ]
        .map(str::to_owned);
        let rows: Vec<[String; 6]> = findings.iter().map(row).collect();
        columns(out, &header, &rows)?;
    }

    let suggested: Vec<&Finding> = findings.iter().filter(|f| f.suggestion.is_some()).collect();
    if !suggested.is_empty() {
        writeln!(
            out,
            "\nSuggestions (least-privilege replacements of nodes/proxy):"
        )?;
    }
    for finding in suggested {
        let Some(suggested) = &finding.suggestion else {
            continue;
        };
        writeln!(out, "  {}:", clean(&finding.subject.to_string()))?;
        suggestion(out, suggested)?;
    }

    if !warnings.is_empty() {
        writeln!(out, "\nWarnings:")?;
        for warning in warnings {
            writeln!(out, "  - {}", clean(warning))?;
        }
    }
    writeln!(out, "\n{}", summary(findings))
}

/// Writes `{"findings": [...], "warnings": [...]}`, and `"observedRefusals"` with
/// `--from-audit-log`.
pub(super) fn json(
    out: &mut dyn Write,
    findings: &[Finding],
    warnings: &[String],
    refusals: Option<&Refusals>,
) -> io::Result<()> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Report<'a> {
        findings: &'a [Finding],
        warnings: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        observed_refusals: Option<&'a Refusals>,
    }
    let report = Report {
        findings,
        warnings,
        observed_refusals: refusals,
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}

/// Writes `{"observedRefusals": {...}, "warnings": [...]}`, for `--from-audit-log` alone.
pub(super) fn refusals_json(
    out: &mut dyn Write,
    refusals: &Refusals,
    warnings: &[String],
) -> io::Result<()> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Report<'a> {
        observed_refusals: &'a Refusals,
        warnings: &'a [String],
    }
    let report = Report {
        observed_refusals: refusals,
        warnings,
    };
    serde_json::to_writer_pretty(&mut *out, &report)?;
    writeln!(out)
}

/// `7 findings: 2 critical, 1 high, 3 low, 1 info; 2 subjects can run commands on nodes`.
fn summary(findings: &[Finding]) -> String {
    let counts: Vec<String> = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ]
    .into_iter()
    .filter_map(|severity| {
        let count = findings.iter().filter(|f| f.severity == severity).count();
        (count > 0).then(|| format!("{count} {severity}"))
    })
    .collect();
    let mut exec: Vec<_> = findings
        .iter()
        .filter(|f| f.exec_capable)
        .map(|f| &f.subject)
        .collect();
    exec.sort();
    exec.dedup();
    let plural = |n: usize, word: &str| match n {
        1 => format!("1 {word}"),
        n => format!("{n} {word}s"),
    };
    match findings.len() {
        0 => "0 findings".to_owned(),
        n => format!(
            "{}: {}; {} can run commands on nodes through nodes/proxy",
            plural(n, "finding"),
            counts.join(", "),
            plural(exec.len(), "subject")
        ),
    }
}

/// Writes `header` and `rows` in aligned columns (cells already cleaned).
pub(super) fn columns<const N: usize>(
    out: &mut dyn Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = header.clone().map(|cell| cell.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if index + 1 < row.len() {
                let pad = width - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Writes one suggestion, indented under its subject: the ClusterRole, its rules, its note.
pub(super) fn suggestion(out: &mut dyn Write, suggestion: &Suggestion) -> io::Result<()> {
    if suggestion.rules.is_empty() {
        writeln!(out, "    no kubelet access needed")?;
    } else {
        writeln!(out, "    ClusterRole {}", clean(&suggestion.cluster_role))?;
    }
    for rule in &suggestion.rules {
        writeln!(
            out,
            "      {} on {}",
            rule.verbs.join(", "),
            clean(&rule.resources.join(", "))
        )?;
    }
    writeln!(out, "    {}", clean(&suggestion.note))
}

/// The table cells of one finding.
fn row(finding: &Finding) -> [String; 6] {
    let nodes = match finding.resource_names.is_empty() {
        true => "*".to_owned(),
        false => finding.resource_names.join(","),
    };
    let via: Vec<String> = finding.via.iter().map(Via::to_string).collect();
    [
        finding.severity.to_string(),
        finding.subject.to_string(),
        finding.subresource.clone(),
        finding.verbs.join(","),
        nodes,
        via.join(", "),
    ]
    .map(|cell| clean(&cell))
}

/// `text` without control characters, which could drive the terminal.
pub(super) fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
