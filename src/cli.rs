//! The `kubelet-guard` command line: its subcommands, and `serve --config FILE` filling in the
//! flags that neither the command line nor the environment set. Each subcommand's flags belong to
//! the module that runs it (`serve`'s to `config`), so this module is the top of the crate and
//! nothing below it imports it.

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;
use crate::demo::DemoArgs;
use crate::node_pki::NodePkiArgs;
use crate::rbac_audit::RbacAuditArgs;

mod file;
pub use file::CliError;

/// The command line of the `kubelet-guard` binary.
#[derive(Debug, Parser)]
#[command(
    name = "kubelet-guard",
    version,
    about = "An authorizing reverse proxy for the kubelet API",
    max_term_width = 100
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Which of `serve`'s values came from its `--config` file, and from which line.
    #[arg(skip)]
    pub from_file: file::FromFile,
}

/// The binary's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the guarded kubelet API.
    #[command(next_line_help = true)]
    Serve(Box<ServeArgs>),
    /// Show what the guard does, with no cluster: a kubelet stand-in, embedded mode, a tour.
    Demo(DemoArgs),
    /// Make or renew this node's kubelet-guard PKI: a node-local CA and the guard's client certificate.
    NodePki(NodePkiArgs),
    /// Audit RBAC for grants of the kubelet's subresources (above all nodes/proxy) and suggest least-privilege roles.
    RbacAudit(RbacAuditArgs),
}
