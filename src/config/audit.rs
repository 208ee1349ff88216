//! The audit flags of `serve`, named and defaulted as kube-apiserver's `--audit-log-*` and
//! `--audit-webhook-*` options (`k8s.io/apiserver/pkg/server/options/audit.go`), validated into
//! [`AuditSettings`] without touching a file: every error names its flag.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use crate::audit::sink::{AuditSettings, LogDestination, LogSettings, Rotation, WebhookSettings};

/// The audit flags of `kubelet-guard serve`, named as kube-apiserver names them.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Audit")]
pub struct AuditArgs {
    /// Audit log file (`-` for stdout); without it no audit log is written.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_PATH")]
    pub audit_log_path: Option<PathBuf>,
    /// Size in MiB at which the audit log is rotated (0: never rotate).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_MAXSIZE", default_value_t = 100)]
    pub audit_log_maxsize: u64,
    /// Rotated audit log files kept beside the log (0: keep all, as kube-apiserver).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_LOG_MAXBACKUP", default_value_t = 10)]
    pub audit_log_maxbackup: usize,
    /// Kubeconfig naming the audit webhook receiver (its cluster's `server` URL, CA and credentials).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_CONFIG_FILE")]
    pub audit_webhook_config_file: Option<PathBuf>,
    /// Most events in one webhook batch.
    #[arg(
        long,
        env = "KUBELET_GUARD_AUDIT_WEBHOOK_BATCH_MAX_SIZE",
        default_value_t = 400
    )]
    pub audit_webhook_batch_max_size: usize,
    /// Longest an event waits for its webhook batch to fill before the batch is sent anyway.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_BATCH_MAX_WAIT", default_value = "30s", value_parser = crate::config::parse_duration)]
    pub audit_webhook_batch_max_wait: Duration,
    /// Wait before the first retry of a failed webhook batch; each later retry waits 1.5 times longer.
    #[arg(long, env = "KUBELET_GUARD_AUDIT_WEBHOOK_INITIAL_BACKOFF", default_value = "10s", value_parser = crate::config::parse_duration)]
    pub audit_webhook_initial_backoff: Duration,
    /// Events each sink's queue holds before new events are dropped (and counted).
    #[arg(long, env = "KUBELET_GUARD_AUDIT_QUEUE_SIZE", default_value_t = 10000)]
    pub audit_queue_size: usize,
}

/// The flag names, for errors.
const LOG_PATH: &str = "--audit-log-path";
const LOG_MAXSIZE: &str = "--audit-log-maxsize";
const WEBHOOK_CONFIG: &str = "--audit-webhook-config-file";
const BATCH_MAX_SIZE: &str = "--audit-webhook-batch-max-size";
const BATCH_MAX_WAIT: &str = "--audit-webhook-batch-max-wait";
const INITIAL_BACKOFF: &str = "--audit-webhook-initial-backoff";
const QUEUE_SIZE: &str = "--audit-queue-size";

/// The largest `--audit-queue-size`.
const MAX_QUEUE_SIZE: usize = 1_000_000;

impl AuditArgs {
    /// Checks the flags without touching a file: every error names its flag.
    pub fn validate(self) -> Result<AuditSettings, ConfigError> {
        let queue_size = positive(self.audit_queue_size, QUEUE_SIZE)?;
        // Each queue also holds at most 64 MiB of events; beyond a million slots a count means
        // nothing more, and tokio's channel panics far above it.
        if queue_size.get() > MAX_QUEUE_SIZE {
            return Err(invalid(
                QUEUE_SIZE,
                format!("must be at most {MAX_QUEUE_SIZE}"),
            ));
        }
        let log = self
            .audit_log_path
            .map(|path| -> Result<LogSettings, ConfigError> {
                Ok(LogSettings {
                    destination: destination(path)?,
                    rotation: rotation(self.audit_log_maxsize, self.audit_log_maxbackup)?,
                })
            })
            .transpose()?;
        let webhook = self
            .audit_webhook_config_file
            .map(|config_file| -> Result<WebhookSettings, ConfigError> {
                if config_file.as_os_str().is_empty() {
                    return Err(invalid(WEBHOOK_CONFIG, "the path is empty".into()));
                }
                Ok(WebhookSettings {
                    config_file,
                    batch_max_size: positive(self.audit_webhook_batch_max_size, BATCH_MAX_SIZE)?,
                    batch_max_wait: nonzero(self.audit_webhook_batch_max_wait, BATCH_MAX_WAIT)?,
                    initial_backoff: nonzero(self.audit_webhook_initial_backoff, INITIAL_BACKOFF)?,
                })
            })
            .transpose()?;
        Ok(AuditSettings {
            log,
            webhook,
            queue_size,
        })
    }
}

/// `--audit-log-path`: `-` or a file whose name is UTF-8.
fn destination(path: PathBuf) -> Result<LogDestination, ConfigError> {
    if path.as_os_str() == "-" {
        return Ok(LogDestination::Stdout);
    }
    match path.file_name().map(|name| name.to_str()) {
        None => Err(invalid(
            LOG_PATH,
            format!("{} does not name a file", path.display()),
        )),
        Some(None) => Err(invalid(
            LOG_PATH,
            format!("{} does not have a UTF-8 file name", path.display()),
        )),
        Some(Some(_)) => Ok(LogDestination::File(path)),
    }
}

/// `--audit-log-maxsize` (MiB, 0 never) and `--audit-log-maxbackup` (0 keeps all).
fn rotation(max_mib: u64, max_backups: usize) -> Result<Option<Rotation>, ConfigError> {
    let Some(max_mib) = NonZeroU64::new(max_mib) else {
        return Ok(None);
    };
    let max_bytes = max_mib.get().checked_mul(1 << 20).and_then(NonZeroU64::new);
    let Some(max_bytes) = max_bytes else {
        return Err(invalid(
            LOG_MAXSIZE,
            format!("{max_mib} MiB does not fit in 64 bits of bytes"),
        ));
    };
    Ok(Some(Rotation {
        max_bytes,
        max_backups: NonZeroUsize::new(max_backups),
    }))
}

fn positive(value: usize, flag: &'static str) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| invalid(flag, "must be at least 1".into()))
}

fn nonzero(value: Duration, flag: &'static str) -> Result<Duration, ConfigError> {
    if value.is_zero() {
        return Err(invalid(flag, "must be longer than zero".into()));
    }
    Ok(value)
}

fn invalid(flag: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { flag, message }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        audit: AuditArgs,
    }

    fn parse(args: &[&str]) -> Result<AuditSettings, ConfigError> {
        let argv = std::iter::once("kubelet-guard").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().audit.validate()
    }

    fn flag_of(e: ConfigError) -> &'static str {
        match e {
            ConfigError::Invalid { flag, .. } | ConfigError::Missing { flag, .. } => flag,
        }
    }

    #[test]
    fn a_queue_size_past_a_million_is_refused() {
        assert!(parse(&["--audit-queue-size=1000000"]).is_ok());
        for huge in ["1000001", "2305843009213693952"] {
            let e = parse(&[&format!("--audit-queue-size={huge}")]).unwrap_err();
            assert_eq!(flag_of(e), QUEUE_SIZE);
        }
    }

    #[test]
    fn no_sink_flag_means_no_trail() {
        let settings = parse(&[]).unwrap();
        assert!(!settings.is_enabled());
        assert_eq!(settings.queue_size.get(), 10_000);
    }

    #[test]
    fn defaults_follow_the_flags_documentation() {
        let settings = parse(&[
            "--audit-log-path=/var/log/kubelet-guard/audit.log",
            "--audit-webhook-config-file=/etc/kubelet-guard/audit-webhook.yaml",
        ])
        .unwrap();
        let log = settings.log.unwrap();
        assert_eq!(
            log.destination,
            LogDestination::File("/var/log/kubelet-guard/audit.log".into())
        );
        assert_eq!(
            log.rotation,
            Some(Rotation {
                max_bytes: NonZeroU64::new(100 * 1024 * 1024).unwrap(),
                max_backups: NonZeroUsize::new(10),
            })
        );
        let webhook = settings.webhook.unwrap();
        assert_eq!(webhook.batch_max_size.get(), 400);
        assert_eq!(webhook.batch_max_wait, Duration::from_secs(30));
        assert_eq!(webhook.initial_backoff, Duration::from_secs(10));
    }

    #[test]
    fn dash_is_stdout_and_zeroes_mean_never_and_all() {
        let settings = parse(&[
            "--audit-log-path=-",
            "--audit-log-maxsize=0",
            "--audit-webhook-batch-max-wait=500ms",
        ])
        .unwrap();
        let log = settings.log.unwrap();
        assert_eq!(log.destination, LogDestination::Stdout);
        assert_eq!(log.rotation, None);

        let keep_all = parse(&["--audit-log-path=a.log", "--audit-log-maxbackup=0"]).unwrap();
        let rotation = keep_all.log.unwrap().rotation.unwrap();
        assert_eq!(rotation.max_backups, None);
        assert_eq!(rotation.max_bytes.get(), 100 << 20);
    }

    #[test]
    fn humantime_durations_parse() {
        let settings = parse(&[
            "--audit-webhook-config-file=w.yaml",
            "--audit-webhook-batch-max-wait=500ms",
            "--audit-webhook-initial-backoff=1m 30s",
        ])
        .unwrap();
        let webhook = settings.webhook.unwrap();
        assert_eq!(webhook.batch_max_wait, Duration::from_millis(500));
        assert_eq!(webhook.initial_backoff, Duration::from_secs(90));
    }

    #[test]
    fn webhook_durations_past_a_year_are_refused() {
        for flag in [BATCH_MAX_WAIT, INITIAL_BACKOFF] {
            let argv = ["kubelet-guard", &format!("{flag}=367d")];
            let Err(e) = Cli::try_parse_from(argv) else {
                panic!("{flag} took 367d");
            };
            let e = e.to_string();
            assert!(e.contains(flag) && e.contains("longer than a year"), "{e}");
        }
    }

    #[test]
    fn each_bad_value_names_its_flag() {
        for (args, flag) in [
            (&["--audit-queue-size=0"][..], QUEUE_SIZE),
            (&["--audit-log-path=/"][..], LOG_PATH),
            (&["--audit-log-path=logs/.."][..], LOG_PATH),
            (
                &[
                    "--audit-log-path=a.log",
                    "--audit-log-maxsize=18446744073709551615",
                ][..],
                LOG_MAXSIZE,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-batch-max-size=0",
                ][..],
                BATCH_MAX_SIZE,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-batch-max-wait=0s",
                ][..],
                BATCH_MAX_WAIT,
            ),
            (
                &[
                    "--audit-webhook-config-file=w",
                    "--audit-webhook-initial-backoff=0",
                ][..],
                INITIAL_BACKOFF,
            ),
        ] {
            let e = parse(args).expect_err("invalid");
            assert!(e.to_string().starts_with(flag), "{args:?}: {e}");
            assert_eq!(flag_of(e), flag, "{args:?}");
        }
    }
}
