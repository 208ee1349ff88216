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
//! - [`refusals`]: from the same audit log, per caller, what the guard refused or would refuse
//!   once enforced (observe mode), and the grant that would allow it; with `--from-audit-log`
//!   alone (no `-f`, `--kubeconfig` or `--context`) this is the whole report;
//! - [`report`] and [`sarif`]: the `table`, `json` and `sarif` outputs.
//!
//! An input that cannot be audited is named on standard error in every output format and makes
//! the exit status 64; the report then never claims that nothing was found. A reader that closes
//! the output early (`| head`) ends the run quietly, with the audit's own exit status.
//!
//! Must not: decide RBAC itself (every decision is `authz::rbac`'s), or change a cluster: it only
//! lists, and `--emit-roles` writes files for a human to review and apply.

mod cluster;
mod findings;
mod input;
mod refusals;
mod report;
mod sarif;
mod suggest;
mod usage;

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use findings::{Finding, SUBRESOURCES, Severity, Subject, Via};
pub use refusals::{CallerRefusals, Need, Refusals, RefusedGroup, Unauthenticated};
pub use suggest::{Basis, NODE_PROXY_NOTE, SuggestedRule, Suggestion};

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
    /// kubelet-guard's audit log (JSON lines; `-` for standard input, e.g. from `kubectl logs`):
    /// per caller, what the guard refused or would refuse once enforced, and the grant that
    /// would allow it. With -f or --kubeconfig, suggestions also grant exactly what each
    /// subject used, instead of a guess.
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
    /// `--from-audit-log` holds no audit event: nothing to report on, which is not an all-clear.
    #[error(
        "--from-audit-log {}: no audit event in it (is --audit-log-path set on the guard?)",
        path.display()
    )]
    NoAuditEvents {
        /// The file, or `-`.
        path: PathBuf,
    },
    /// `-f -` and `--from-audit-log -` would both read standard input.
    #[error("-f - and --from-audit-log - cannot both read standard input")]
    StdinTwice,
    /// `--output sarif` with `--from-audit-log` alone: refusals are not code-scanning results.
    #[error(
        "--output sarif reports RBAC findings (give -f or --kubeconfig); the refusals of \
         --from-audit-log alone are a table or json"
    )]
    SarifWithoutFindings,
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

impl Outcome {
    /// 64 when an input could not be audited (the audit is incomplete, whatever it found), else 1
    /// when `--fail-on` tripped, else 0.
    pub fn exit_code(&self) -> u8 {
        match (self.input_errors, self.tripped) {
            (1.., _) => EXIT_INPUT,
            (0, true) => EXIT_FINDINGS,
            (0, false) => 0,
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

/// Runs the audit the flags describe, printing the report on standard output. A closed standard
/// output ends the report quietly.
pub async fn run(args: RbacAuditArgs) -> Result<Outcome, RbacAuditError> {
    let stdin_log = args
        .from_audit_log
        .as_ref()
        .is_some_and(|path| path.as_os_str() == usage::STDIN);
    if stdin_log && args.files.iter().any(|path| path.as_os_str() == "-") {
        return Err(RbacAuditError::StdinTwice);
    }
    let refusals_only = args.from_audit_log.is_some()
        && args.files.is_empty()
        && args.kubeconfig.is_none()
        && args.context.is_none();
    if refusals_only && args.output == OutputFormat::Sarif {
        return Err(RbacAuditError::SarifWithoutFindings);
    }
    let mut stdin = io::stdin().lock();
    let usage = match &args.from_audit_log {
        Some(path) => {
            let usage = usage::Usage::read(path, &mut stdin).map_err(|source| {
                RbacAuditError::AuditLog {
                    path: path.clone(),
                    source,
                }
            })?;
            if usage.events == 0 {
                return Err(RbacAuditError::NoAuditEvents { path: path.clone() });
            }
            Some(usage)
        }
        None => None,
    };
    let inputs = match (&usage, args.files.is_empty()) {
        (Some(usage), _) if refusals_only => {
            return report_refusals(&args, usage, &mut io::stdout().lock());
        }
        (_, true) => cluster::list(args.kubeconfig.as_deref(), args.context.as_deref()).await?,
        (_, false) => input::read_paths(&args.files, &mut stdin),
    };
    let mut stdout = io::stdout().lock();
    audit(&args, inputs, usage.as_ref(), &mut stdout)
}

/// `--from-audit-log` alone: the observed refusals, per caller.
fn report_refusals(
    args: &RbacAuditArgs,
    usage: &usage::Usage,
    out: &mut dyn Write,
) -> Result<Outcome, RbacAuditError> {
    let refusals = Refusals::gather(usage.events, &usage.refused);
    if let Some(dir) = &args.emit_roles {
        suggest::emit(dir, refusals.suggestions())
            .map_err(|(path, source)| RbacAuditError::EmitRoles { path, source })?;
    }
    let written = match args.output {
        OutputFormat::Table => refusals.table(out).and_then(|()| {
            if !usage.warnings.is_empty() {
                writeln!(out, "\nWarnings:")?;
            }
            for warning in &usage.warnings {
                writeln!(out, "  - {}", report::clean(warning))?;
            }
            Ok(())
        }),
        // `run` refuses sarif here: JSON is the machine-readable form of refusals.
        OutputFormat::Json | OutputFormat::Sarif => {
            report::refusals_json(out, &refusals, &usage.warnings)
        }
    };
    finish_output(written, out)?;
    Ok(Outcome {
        findings: 0,
        tripped: false,
        input_errors: 0,
    })
}

/// Audits loaded inputs: findings, suggestions, `--emit-roles`, then the report on `out`.
fn audit(
    args: &RbacAuditArgs,
    inputs: input::Inputs,
    usage: Option<&usage::Usage>,
    out: &mut dyn Write,
) -> Result<Outcome, RbacAuditError> {
    let input::Loaded {
        policy,
        policy_warnings,
        notes,
        errors: input_errors,
    } = inputs.finish();
    // Named on standard error first, in every format: a report on a file or a pipe (or cut
    // short by `head`) must not hide that the audit is incomplete.
    for error in &input_errors {
        eprintln!("kubelet-guard rbac-audit: {error}");
    }
    let mut evaluation = findings::evaluate(&policy, policy_warnings);
    suggest::attach(&mut evaluation.findings, usage);

    let mut warnings: Vec<String> = input_errors.iter().map(ToString::to_string).collect();
    warnings.extend(notes);
    warnings.append(&mut evaluation.warnings);
    if let Some(usage) = usage {
        warnings.extend(usage.warnings.iter().cloned());
    }
    if let Some(dir) = &args.emit_roles {
        suggest::emit(dir, suggest::of_findings(&evaluation.findings))
            .map_err(|(path, source)| RbacAuditError::EmitRoles { path, source })?;
    }

    let findings = &evaluation.findings;
    let refusals = usage.map(|usage| Refusals::gather(usage.events, &usage.refused));
    let incomplete = input_errors.len();
    let written = match args.output {
        OutputFormat::Table => {
            report::table(out, findings, &warnings, incomplete).and_then(|()| match &refusals {
                Some(refusals) => {
                    writeln!(out)?;
                    refusals.table(out)
                }
                None => Ok(()),
            })
        }
        OutputFormat::Json => report::json(out, findings, &warnings, refusals.as_ref()),
        OutputFormat::Sarif => sarif::write(out, findings, &warnings),
    };
    finish_output(written, out)?;

    let threshold = args.fail_on.threshold();
    Ok(Outcome {
        findings: findings.len(),
        tripped: threshold.is_some_and(|least| findings.iter().any(|f| f.severity >= least)),
        input_errors: incomplete,
    })
}

/// Flushes the report. A reader that went away (`| head`) is not an error: the report was for
/// it alone, and the exit status still says what the audit found.
fn finish_output(written: io::Result<()>, out: &mut dyn Write) -> Result<(), RbacAuditError> {
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(RbacAuditError::Output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_put_input_errors_before_findings() {
        let outcome = |tripped, input_errors| Outcome {
            findings: 1,
            tripped,
            input_errors,
        };
        assert_eq!(outcome(false, 0).exit_code(), 0);
        assert_eq!(outcome(true, 0).exit_code(), 1);
        assert_eq!(outcome(false, 2).exit_code(), 64);
        assert_eq!(outcome(true, 2).exit_code(), 64);
    }

    #[test]
    fn fail_on_none_never_trips() {
        assert_eq!(FailOn::None.threshold(), None);
        assert!(FailOn::Low.threshold() > Some(Severity::Info));
        assert!(FailOn::Critical.threshold() > FailOn::High.threshold());
    }
}
