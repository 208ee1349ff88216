//! The `kubelet-guard` binary: argv → `Config` → `run`, tracing, the crypto provider, exit codes
//! (0 clean stop, 64 bad configuration, 1 anything else).

use std::io::IsTerminal;
use std::process::ExitCode;

use kubelet_guard::cli::{Cli, CliError, Command};
use kubelet_guard::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Exit status for a configuration the operator must fix (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliError::Flags(e)) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(CliError::Flags(e)) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    match cli.command {
        Command::Serve(args) => {
            init_tracing(args.log_format, "info");
            let config = match args.validate() {
                Ok(config) => config,
                Err(e) => {
                    let at = cli.from_file.locate(e.flag());
                    return fail(EXIT_CONFIG, &format_args!("{at}{e}"));
                }
            };
            raise_open_files(config.limits.max_connections);
            run(serve(config))
        }
        Command::Demo(args) => {
            init_tracing(LogFormat::Text, "warn");
            run(async {
                match kubelet_guard::demo::run(args).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(1, &e),
                }
            })
        }
        Command::NodePki(args) => {
            init_tracing(LogFormat::Text, "warn");
            match kubelet_guard::node_pki::run(args) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_CONFIG, &e),
            }
        }
        Command::RbacAudit(args) => {
            init_tracing(LogFormat::Text, "warn");
            run(async {
                match kubelet_guard::rbac_audit::run(args).await {
                    Ok(outcome) => ExitCode::from(outcome.exit_code()),
                    // Exit 1 says a finding tripped --fail-on; an audit that could not finish
                    // (a flag, an input, the cluster's listing, the report) is never that.
                    Err(e) => fail(EXIT_CONFIG, &e),
                }
            })
        }
    }
}

/// Installs ring as the process's one crypto provider and runs `command` on a multi-threaded
/// runtime.
fn run(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a crypto provider was already installed");
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => fail(1, &e),
    }
}

async fn serve(config: kubelet_guard::config::Config) -> ExitCode {
    let mut running = match kubelet_guard::start(config).await {
        Ok(running) => running,
        Err(e) if e.is_configuration() => return fail(EXIT_CONFIG, &e),
        Err(e) => return fail(1, &e),
    };
    let failed = tokio::select! {
        () = kubelet_guard::stop_signal() => None,
        task = running.failed() => Some(task),
    };
    match failed {
        None => tracing::info!("shutting down"),
        Some(task) => tracing::error!(
            task,
            "stopped unexpectedly (a bug: please report it); shutting down so that the guard is \
             restarted"
        ),
    }
    running.stop().await;
    match failed {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::from(1),
    }
}

/// Logs to stderr at `default_level`, or as `KUBELET_GUARD_LOG` (an env-filter directive) says.
/// Colour only when stderr is a terminal: a log collector or a file would keep the escape bytes.
/// Standard output stays free for what a command prints (the audit log with `--audit-log-path=-`).
fn init_tracing(format: LogFormat, default_level: &str) {
    // rustls warns, through `log`, about every client that sends an IP address as its server
    // name (OpenSSL does): a caller's quirk, not the operator's concern.
    let default = || EnvFilter::new(format!("{default_level},rustls=error"));
    let filter = match std::env::var("KUBELET_GUARD_LOG") {
        Err(_) => default(),
        Ok(directives) => EnvFilter::try_new(&directives).unwrap_or_else(|e| {
            // Said before logging starts: a typo must not silently leave the default level.
            eprintln!(
                "kubelet-guard: KUBELET_GUARD_LOG={directives:?} is not a log filter ({e}); \
                 logging at {default_level}"
            );
            default()
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does for the kubelet:
/// container runtimes may start a process at 1024 (containerd 2.0 does), and every caller
/// connection takes a file, with its kubelet connection another. Warns, naming the flag, when even
/// the hard limit is short of what `--max-connections` needs.
fn raise_open_files(max_connections: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let open_files = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit to its maximum");
            limit.current
        }
    };
    // `None` is unlimited. Two files per connection, and room for the guard's own.
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(256);
    if let Some(open_files) = open_files.filter(|open_files| *open_files < needed) {
        tracing::warn!(
            open_files,
            needed,
            "--max-connections={max_connections} needs more open files than the process may have: \
             connections past the limit fail to be accepted"
        );
    }
}

fn fail(code: u8, error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("kubelet-guard: {error}");
    ExitCode::from(code)
}
