//! `kubelet-guard rbac-audit`: finds every RBAC grant of the kubelet's `nodes/<subresource>`,
//! above all `nodes/proxy` (`get` on it is command execution in every container on every node,
//! through a WebSocket exec), says what each subject really needs, and writes the least-privilege
//! ClusterRoles that replace the grants.
//!
//! One stage per module, in the order they run:
//! - [`input`]: `-f` files, directories and standard input, or a cluster's listing, into one
//!   [`Policy`] parsed leniently (a binding to an absent role is reported, not fatal; a malformed
//!   file is reported with its line and the others are still audited);
//! - [`findings`]: for each subject and kubelet subresource, what the embedded evaluator
//!   (`authz::rbac`) grants, with a severity; ineffective RoleBindings and bindings to absent roles
//!   become warnings;
//! - [`usage`] and [`suggest`]: what each `nodes/proxy` holder used, from kubelet-guard's own audit
//!   log (or a labelled guess), and the ClusterRole that replaces the grant (`--emit-roles`);
//! - [`report`] and [`sarif`]: the `table`, `json` and `sarif` outputs.
//!
//! Must not: decide RBAC itself (every decision is `authz::rbac`'s), or change a cluster: it only
//! lists, and `--emit-roles` writes files for a human to review and apply.

mod cluster;
mod findings;
mod input;
mod report;
mod sarif;
mod suggest;
mod usage;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use findings::{Finding, SUBRESOURCES, Severity, Subject, Via};
pub use suggest::{Basis, SuggestedRule, Suggestion};

/// Exit status when a finding is at or above `--fail-on`.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit status when an input could not be audited (sysexits EX_USAGE, as for bad flags).
pub const EXIT_INPUT: u8 = 64;

/// Flags of `kubelet-guard rbac-audit`.
#[derive(Debug, Clone, Args)]
pub struct RbacAuditArgs {
    /// RBAC objects to audit: a YAML or JSON file (a stream of objects or Lists), a directory
    /// (read recursively), or `-` for standard input. Repeatable. Without it, the cluster's
    /// ClusterRoles, ClusterRoleBindings, Roles and RoleBindings are listed.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// kubeconfig of the cluster to list (default: $KUBECONFIG, ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "FILE", conflicts_with = "files")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME", conflicts_with = "files")]
    pub context: Option<String>,
    /// kubelet-guard's audit log (JSON lines): suggestions then grant exactly the subresources and
    /// verbs each subject used, instead of a guess.
    #[arg(long, value_name = "FILE")]
    pub from_audit_log: Option<PathBuf>,
    /// Write each suggested ClusterRole and its ClusterRoleBinding into this directory as YAML.
    #[arg(long, value_name = "DIR")]
    pub emit_roles: Option<PathBuf>,
    /// Output format: a table for terminals (worst first), JSON, or SARIF for code scanning.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Exit with status 1 when any finding is at or above this severity.
    #[arg(long, value_enum, default_value_t = FailOn::None)]
    pub fail_on: FailOn,
}

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns, worst first, then suggestions and warnings.
    Table,
    /// `{"findings": [...], "warnings": [...]}`.
    Json,
    /// SARIF 2.1.0, for code scanning in CI.
    Sarif,
}

/// `--fail-on`: the least severity that fails the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    /// Command execution on nodes (`nodes/proxy` with `get`, `create` or `*`).
    Critical,
    /// Also other writes, `nodes/log` and `nodes/checkpoint`.
    High,
    /// Also `nodes/configz`.
    Medium,
    /// Also read-only monitoring subresources.
    Low,
    /// Never (expected admin access, severity `info`, never fails either).
    None,
}

/// What an audit found, for the exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How many findings were reported.
    pub findings: usize,
    /// Whether some finding is at or above `--fail-on`.
    pub tripped: bool,
    /// How many inputs (files, documents) could not be audited; each is in the report.
    pub input_errors: usize,
}

/// Why an audit could not run or finish. Malformed inputs are not errors: they are reported and
/// counted in [`Outcome::input_errors`].
#[derive(Debug, thiserror::Error)]
pub enum RbacAuditError {
    /// `--from-audit-log` cannot be read.
    #[error("--from-audit-log {}: {source}", path.display())]
    AuditLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `--emit-roles` cannot be written.
    #[error("--emit-roles {}: {source}", path.display())]
    EmitRoles {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `--kubeconfig` (or the default configuration) is unusable.
    #[error("--kubeconfig: {0}")]
    Kubeconfig(String),
    /// The cluster's RBAC could not be listed.
    #[error("listing the cluster's RBAC: {0}")]
    Cluster(String),
    /// The report could not be written to standard output.
    #[error("writing the report: {0}")]
    Output(#[source] io::Error),
}

impl RbacAuditError {
    /// Whether a flag names something unusable (exit 64) rather than the cluster or the
    /// environment failing (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::AuditLog { .. } | Self::EmitRoles { .. } | Self::Kubeconfig(_)
        )
    }
}

impl Outcome {
    /// 1 when `--fail-on` tripped, else 64 when an input could not be audited, else 0.
    pub fn exit_code(&self) -> u8 {
        match (self.tripped, self.input_errors) {
            (true, _) => EXIT_FINDINGS,
            (false, 0) => 0,
            (false, _) => EXIT_INPUT,
        }
    }
}

impl FailOn {
    /// The least severity that fails the run, if any does.
    pub fn threshold(self) -> Option<Severity> {
        match self {
            FailOn::Critical => Some(Severity::Critical),
            FailOn::High => Some(Severity::High),
            FailOn::Medium => Some(Severity::Medium),
            FailOn::Low => Some(Severity::Low),
            FailOn::None => None,
        }
    }
}

/// Runs the audit the flags describe, printing the report on standard output.
pub async fn run(args: RbacAuditArgs) -> Result<Outcome, RbacAuditError> {
    let inputs = match args.files.is_empty() {
        true => cluster::list(args.kubeconfig.as_deref(), args.context.as_deref()).await?,
        false => input::read_paths(&args.files, &mut io::stdin().lock()),
    };
    let mut stdout = io::stdout().lock();
    let outcome = audit(&args, inputs, &mut stdout)?;
    stdout.flush().map_err(RbacAuditError::Output)?;
    Ok(outcome)
}

/// Audits loaded inputs: findings, suggestions, `--emit-roles`, then the report on `out`.
fn audit(
    args: &RbacAuditArgs,
    inputs: input::Inputs,
    out: &mut dyn Write,
) -> Result<Outcome, RbacAuditError> {
    let input::Loaded {
        policy,
        policy_warnings,
        notes,
        errors: input_errors,
    } = inputs.finish();
    let usage = match &args.from_audit_log {
        Some(path) => {
            Some(
                usage::Usage::read(path).map_err(|source| RbacAuditError::AuditLog {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        None => None,
    };
    let mut evaluation = findings::evaluate(&policy, policy_warnings);
    suggest::attach(&mut evaluation.findings, usage.as_ref());

    let mut warnings: Vec<String> = input_errors.iter().map(ToString::to_string).collect();
    warnings.extend(notes);
    warnings.append(&mut evaluation.warnings);
    if let Some(usage) = &usage {
        warnings.extend(usage.warnings.iter().cloned());
    }
    if let Some(dir) = &args.emit_roles {
        suggest::emit(dir, &evaluation.findings)
            .map_err(|(path, source)| RbacAuditError::EmitRoles { path, source })?;
    }

    let findings = &evaluation.findings;
    match args.output {
        OutputFormat::Table => report::table(out, findings, &warnings),
        OutputFormat::Json => report::json(out, findings, &warnings),
        OutputFormat::Sarif => sarif::write(out, findings, &warnings),
    }
    .map_err(RbacAuditError::Output)?;
    if args.output != OutputFormat::Table {
        // Machine output goes to a file or a pipe: make unaudited inputs visible in CI logs too.
        for error in &input_errors {
            eprintln!("kubelet-guard rbac-audit: {error}");
        }
    }

    let threshold = args.fail_on.threshold();
    Ok(Outcome {
        findings: findings.len(),
        tripped: threshold.is_some_and(|least| findings.iter().any(|f| f.severity >= least)),
        input_errors: input_errors.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_put_findings_before_input_errors() {
        let outcome = |tripped, input_errors| Outcome {
            findings: 1,
            tripped,
            input_errors,
        };
        assert_eq!(outcome(false, 0).exit_code(), 0);
        assert_eq!(outcome(true, 0).exit_code(), 1);
        assert_eq!(outcome(false, 2).exit_code(), 64);
        assert_eq!(outcome(true, 2).exit_code(), 1);
    }

    #[test]
    fn fail_on_none_never_trips() {
        assert_eq!(FailOn::None.threshold(), None);
        assert!(FailOn::Low.threshold() > Some(Severity::Info));
        assert!(FailOn::Critical.threshold() > FailOn::High.threshold());
    }
}
