//! `kubelet-guard node-pki`: the node-local CA and the guard's upstream client certificate
//! (docs/kubelet-api.md §9).
//!
//! The kubelet trusts this CA alone (`authentication.x509.clientCAFile`), so the one credential it
//! accepts is the one this node's guard holds: no other node, no `hostNetwork` pod and no
//! cluster-wide Secret has one. The CA is made once, in the directory, and its key never leaves
//! it; nothing here prints a key. The CA is never trusted for callers of the guard.
//!
//! Files in the directory (mode 0700): `ca.crt` (0644), `ca.key`, `client.crt` and `client.key`
//! (0600). Each is written to a temporary file beside it and renamed into place, so no reader ever
//! sees a half-written file. The client key is renamed before its certificate, and every reader
//! (the guard's reload, the next run here) refuses a certificate whose key does not match, so a
//! pair from two generations is never used: a run after a crash between the two renames issues a
//! new pair.
//!
//! Writers take turns: each holds an exclusive `flock` on the directory itself from its first read
//! to its last write, so two on one node (the init container and a running guard, two DaemonSets,
//! `node-pki` run by hand beside them) never interleave their files, and the second finds what the
//! first wrote. A writer that waits longer than [`TURN_WAIT`] gives up, naming the directory.
//!
//! Renewal rule, for this command and for the running guard alike: a client certificate is kept
//! while more than a third of its validity is left, and replaced otherwise.
//!
//! Must not: overwrite a CA it cannot read, or change anything when an input is bad.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{self, ConfigError, NodeName};
use crate::metrics::Metrics;
use crate::reload::{Poll, Reload};

/// Flags of `kubelet-guard node-pki`.
#[derive(Debug, Clone, Args)]
pub struct NodePkiArgs {
    /// Directory of the node-local CA and the guard's client certificate (made mode 0700).
    #[arg(long, env = "KUBELET_GUARD_NODE_PKI_DIR")]
    pub dir: PathBuf,
    /// Node the client certificate names (default: NODE_NAME, else the host name).
    #[arg(long, env = "KUBELET_GUARD_NODE_NAME")]
    pub node_name: Option<String>,
    /// Validity of an issued client certificate, at least 10s; it is renewed with a third left.
    #[arg(long, env = "KUBELET_GUARD_NODE_PKI_VALIDITY", default_value = "168h",
          value_parser = config::parse_duration)]
    pub validity: Duration,
}

/// Why the node PKI could not be made or kept. Every variant names the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A flag is unusable.
    #[error(transparent)]
    Flag(#[from] ConfigError),
    /// A file or the directory is unusable.
    #[error("{}: {message}", path.display())]
    File {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The files of one node PKI directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
    /// The CA certificate: the kubelet's `authentication.x509.clientCAFile`.
    pub ca_cert: PathBuf,
    /// The CA key.
    pub ca_key: PathBuf,
    /// The guard's client certificate towards the kubelet.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// What [`ensure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the CA was made now.
    pub ca_created: bool,
    /// Why a client certificate was issued now; `None` when the one there was kept.
    pub issued: Option<&'static str>,
    /// The subject of the client certificate in force.
    pub subject: String,
    /// When it expires.
    pub not_after: SystemTime,
    /// When it is due for renewal.
    pub renew_at: SystemTime,
}

/// The shortest validity accepted (tests shorten it; a real node keeps the default).
pub const MIN_VALIDITY: Duration = Duration::from_secs(10);

/// `node-pki --validity`'s default, also what the guard issues when its certificate is gone.
const DEFAULT_VALIDITY: Duration = Duration::from_secs(168 * 3600);

/// How long the CA is valid: it outlives every client certificate it will sign on this node.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How far before its issue a certificate is valid: a clock set back a little (NTP correcting a
/// node that booted fast) does not make the kubelet refuse the guard's new certificate.
const BACKDATE: Duration = Duration::from_secs(300);

/// The longest the renewal task sleeps: it looks again at least this often, so a clock set back
/// past a certificate's start is found within it.
const RECHECK: Duration = Duration::from_secs(3600);

/// The group every guard's identity carries: what the kubelet's Webhook authorization binds.
pub const GROUP: &str = "kubelet-guard:nodes";

impl Paths {
    /// The files in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ca_created {
            writeln!(f, "created the node-local CA (ECDSA P-256)")?;
        } else {
            writeln!(f, "kept the node-local CA")?;
        }
        match self.issued {
            Some(why) => write!(f, "issued a client certificate ({why})")?,
            None => write!(f, "kept the client certificate")?,
        }
        write!(
            f,
            ": {}, valid until {}, renewed after {}",
            self.subject,
            humantime::format_rfc3339_seconds(self.not_after),
            humantime::format_rfc3339_seconds(self.renew_at)
        )
    }
}

/// Runs `kubelet-guard node-pki`: makes or keeps the PKI and says what it did.
pub fn run(args: NodePkiArgs) -> Result<String, PkiError> {
    let node = NodeName::resolve(args.node_name, "--node-name")?;
    if args.validity < MIN_VALIDITY {
        return Err(ConfigError::Invalid {
            flag: "--validity",
            message: format!("must be at least {MIN_VALIDITY:?}"),
        }
        .into());
    }
    let paths = Paths::new(&args.dir);
    let outcome = ensure(&paths, &node, args.validity, SystemTime::now(), true)?;
    Ok(format!(
        "{}: {outcome}\nCA for the kubelet's authentication.x509.clientCAFile: {}",
        paths.dir.display(),
        paths.ca_cert.display()
    ))
}

/// Makes the CA if there is none (when `make_ca`: never at run time, where the guard has read the
/// CA it must never trust for callers) and issues a client certificate for `node` valid for
/// `validity` unless the one there is good and has more than a third of its validity left. Every
/// file there is read and checked before anything is written: bad input changes nothing.
pub fn ensure(
    paths: &Paths,
    node: &NodeName,
    validity: Duration,
    now: SystemTime,
    make_ca: bool,
) -> Result<Outcome, PkiError> {
    check_dir(&paths.dir)?;
    if make_ca && !paths.dir.exists() {
        make_dir(&paths.dir)?;
    }
    // At run time a directory that is gone is refused below, naming the CA.
    let _turn = if make_ca || paths.dir.is_dir() {
        Some(take_turn(&paths.dir)?)
    } else {
        None
    };
    // A CA key alone, with no certificate of either kind: a first run stopped between its
    // first two writes (the key goes first). No kubelet can trust a CA whose certificate was never
    // written, and nothing was signed with it: make it anew. Any other missing file is an error.
    let cut_short = make_ca
        && paths.ca_key.exists()
        && ![&paths.ca_cert, &paths.client_cert, &paths.client_key]
            .iter()
            .any(|file| file.exists());
    let ca = if cut_short { None } else { load_ca(paths)? };
    if ca.is_none() && !make_ca {
        return Err(file_error(
            &paths.ca_cert,
            "is gone: the guard makes no CA while it runs; run `kubelet-guard node-pki` and \
             restart it",
        ));
    }
    if let Some(ca) = &ca {
        check_ca_node(paths, ca, node)?;
    }
    let subject_cn = format!("kubelet-guard:node:{node}");
    let reissue = match &ca {
        None => Some("new CA"),
        Some(ca) => client_verdict(paths, ca, &subject_cn, now)?,
    };
    make_dir(&paths.dir)?;
    let (ca, ca_created) = match ca {
        Some(ca) => (ca, false),
        None => (create_ca(paths, node, now)?, true),
    };
    let subject = format!("CN={subject_cn}, O={GROUP}");
    let Some(why) = reissue else {
        let dates = read_client(paths)?.1;
        return Ok(Outcome {
            ca_created,
            issued: None,
            subject,
            not_after: dates.not_after,
            renew_at: dates.renew_at(),
        });
    };
    let dates = issue_client(paths, &ca, &subject_cn, validity, now)?;
    Ok(Outcome {
        ca_created,
        issued: Some(why),
        subject,
        not_after: dates.not_after,
        renew_at: dates.renew_at(),
    })
}

/// The client certificate's validity: when it is due for renewal, and the validity it was issued
/// for (what a renewal issues again: its length less the backdating).
pub fn client_dates(paths: &Paths) -> Result<(SystemTime, Duration), PkiError> {
    let dates = read_client(paths)?.1;
    let validity = dates.length().saturating_sub(BACKDATE).max(MIN_VALIDITY);
    Ok((dates.renew_at(), validity))
}

/// Keeps the guard's client certificate in `paths` renewed for as long as the guard runs: at each
/// certificate's renewal time (from its own dates) a new one is issued and `upstream` polled, so
/// the new pair is in use at once; connections made with the old one are retired with the old
/// client (`forward`), long before it expires.
pub async fn renew(
    paths: Paths,
    node: NodeName,
    upstream: Arc<dyn Poll>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    // After a failure, try again this soon (the old certificate is still valid for a third).
    const RETRY: Duration = Duration::from_secs(5);
    loop {
        let (wait, validity) = match client_dates(&paths) {
            Ok((renew_at, validity)) => (
                renew_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .min(RECHECK),
                Some(validity),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the node PKI's client certificate");
                (RETRY, None)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = crate::shutdown::stopped(&mut stop) => return,
        }
        // A certificate that is gone is issued anew, for the init container's default validity;
        // a CA that is gone is not made anew at run time: the guard read the one it must never
        // trust for callers at start.
        let validity = validity.unwrap_or(DEFAULT_VALIDITY);
        // Blocking: key generation, fsync, and a turn behind another writer of the directory.
        let (dir, name) = (paths.clone(), node.clone());
        let ensured = tokio::task::spawn_blocking(move || {
            ensure(&dir, &name, validity, SystemTime::now(), false)
        })
        .await;
        let ensured = match ensured {
            Ok(ensured) => ensured,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => return,
        };
        match ensured {
            Ok(outcome) if outcome.issued.is_some() => tracing::info!(%outcome, "node PKI"),
            Ok(outcome) => tracing::debug!(%outcome, "node PKI"),
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the guard's client certificate");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        // Its own files, each written whole and renamed into place: a short pause settles them.
        match crate::reload::settled(upstream.as_ref(), Duration::from_millis(50)).await {
            Reload::Reloaded { flag } => metrics.reload(flag, true),
            Reload::Unchanged | Reload::Changing { .. } => {}
            Reload::Kept(e) => {
                tracing::error!(error = %e, "the renewed client certificate did not load");
                metrics.reload(e.flag, false);
            }
        }
    }
}

/// Refuses to start on a directory that `node-pki` has not prepared (names the missing file and
/// the command that makes it), or that the guard could not renew its certificate from: the CA's
/// key must load and the directory take writes, or the certificate would expire days later.
pub fn check_issued(paths: &Paths) -> Result<(), PkiError> {
    for file in [&paths.ca_cert, &paths.client_cert, &paths.client_key] {
        if !file.exists() {
            return Err(file_error(
                file,
                format!(
                    "missing from --node-pki-dir: run `kubelet-guard node-pki --dir {} \
                     --node-name <node>` first (the DaemonSet's init container does)",
                    paths.dir.display()
                ),
            ));
        }
    }
    load_ca(paths)?;
    // In turn with other writers: two guards starting at once would race on the probe's name.
    let _turn = take_turn(&paths.dir)?;
    let probe = paths.dir.join(".write-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            file_error(
                &paths.dir,
                format!(
                    "the guard renews its client certificate here, and cannot write: {e}                      (mount --node-pki-dir read-write)"
                ),
            )
        })
}

/// The node-local CA's certificates, which sign the guard's own credential towards the kubelet
/// and must never admit a caller (`tls::reload::serving` refuses a caller CA bundle holding one).
pub fn node_ca(paths: &Paths) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    read_pem_certs(&paths.ca_cert)
}

/// The CA as read from its files.
struct Ca {
    cert: CertificateDer<'static>,
    key_pem: String,
}

/// A certificate's validity.
#[derive(Clone, Copy)]
struct Dates {
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Dates {
    fn of(cert: &X509Certificate<'_>) -> Self {
        let at = |seconds: i64| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or_default())
        };
        Self {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        }
    }

    fn length(self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Once less than a third of the validity is left.
    fn renew_at(self) -> SystemTime {
        self.not_after - self.length() / 3
    }
}

/// An existing path must be a directory; a missing one is made before anything is read.
fn check_dir(dir: &Path) -> Result<(), PkiError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(file_error(dir, "is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(file_error(dir, e)),
    }
}

/// How long a writer waits for its turn: another writer holds it for milliseconds (a key and
/// four small files), so this much means one is stuck.
const TURN_WAIT: Duration = Duration::from_secs(10);

/// Waits for the directory's lock (see the module docs), at most [`TURN_WAIT`], and holds it
/// until the handle is dropped. Creates nothing.
fn take_turn(dir: &Path) -> Result<std::fs::File, PkiError> {
    let handle =
        std::fs::File::open(dir).map_err(|e| file_error(dir, format!("cannot open: {e}")))?;
    let deadline = std::time::Instant::now() + TURN_WAIT;
    loop {
        match handle.try_lock() {
            Ok(()) => return Ok(handle),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(file_error(
                    dir,
                    format!(
                        "another writer (a second init container or guard, a `node-pki` run by \
                         hand) has held it for {TURN_WAIT:?}"
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(file_error(dir, format!("cannot lock: {e}")));
            }
        }
    }
}

/// Makes the directory if missing and restricts it to its owner.
fn make_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, format!("cannot create: {e}")))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| file_error(dir, format!("cannot restrict to mode 0700: {e}")))
}

/// The CA, if both its files exist and belong together; `None` if neither exists.
fn load_ca(paths: &Paths) -> Result<Option<Ca>, PkiError> {
    let cert = read_optional(&paths.ca_cert)?;
    let key = read_optional(&paths.ca_key)?;
    let (cert_pem, key_pem) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(file_error(&paths.ca_key, "missing beside ca.crt")),
        (None, Some(_)) => return Err(file_error(&paths.ca_cert, "missing beside ca.key")),
        (Some(cert), Some(key)) => (cert, key),
    };
    let cert = one_cert(&cert_pem, &paths.ca_cert)?;
    let parsed = parse(&cert, &paths.ca_cert)?;
    if !parsed.is_ca() {
        return Err(file_error(&paths.ca_cert, "is not a CA certificate"));
    }
    let key_pem = String::from_utf8(key_pem).map_err(|e| file_error(&paths.ca_key, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&paths.ca_key, e))?;
    if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
        return Err(file_error(&paths.ca_key, "does not match ca.crt"));
    }
    Ok(Some(Ca { cert, key_pem }))
}

/// Why the client certificate must be issued anew, or `None` to keep it. A file that does not
/// parse is an error; a pair that does not fit (another CA, another node, mismatched key, little
/// validity left) is replaced.
fn client_verdict(
    paths: &Paths,
    ca: &Ca,
    subject_cn: &str,
    now: SystemTime,
) -> Result<Option<&'static str>, PkiError> {
    let cert = read_optional(&paths.client_cert)?;
    let key = read_optional(&paths.client_key)?;
    let (Some(cert_pem), Some(key_pem)) = (cert, key) else {
        return Ok(Some("none yet"));
    };
    let cert = one_cert(&cert_pem, &paths.client_cert)?;
    let parsed = parse(&cert, &paths.client_cert)?;
    let key_pem = String::from_utf8(key_pem).map_err(|e| file_error(&paths.client_key, e))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| file_error(&paths.client_key, e))?;
    let ca_parsed = parse(&ca.cert, &paths.ca_cert)?;
    let cn = common_name(&parsed);
    let dates = Dates::of(&parsed);
    Ok(
        if parsed
            .verify_signature(Some(ca_parsed.public_key()))
            .is_err()
        {
            Some("the one there was not issued by ca.crt")
        } else if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            Some("the one there did not match its key")
        } else if cn != Some(subject_cn) {
            Some("the one there named another node")
        } else if now >= dates.renew_at() {
            Some("less than a third of its validity was left")
        } else if now < dates.not_before {
            Some("the one there is not valid yet: the clock was set back")
        } else {
            None
        },
    )
}

fn read_client(paths: &Paths) -> Result<(CertificateDer<'static>, Dates), PkiError> {
    let pem = std::fs::read(&paths.client_cert).map_err(|e| file_error(&paths.client_cert, e))?;
    let cert = one_cert(&pem, &paths.client_cert)?;
    let dates = Dates::of(&parse(&cert, &paths.client_cert)?);
    Ok((cert, dates))
}

/// The node CA's common name: it names the one node whose kubelet trusts it.
fn ca_common_name(node: &NodeName) -> String {
    format!("kubelet-guard node CA {node}")
}

/// Refuses a CA made for another node: a directory copied from another machine (a node image
/// baked after `node-pki` ran, a cloned disk) would share its CA with it, and root on either
/// node could then call both kubelets as their guard.
fn check_ca_node(paths: &Paths, ca: &Ca, node: &NodeName) -> Result<(), PkiError> {
    let parsed = parse(&ca.cert, &paths.ca_cert)?;
    let cn = common_name(&parsed);
    if cn == Some(ca_common_name(node).as_str()) {
        return Ok(());
    }
    Err(file_error(
        &paths.ca_cert,
        format!(
            "was made for another node ({}), not {node}: a directory copied from another \
             machine shares its CA with it, and root on either node could call both kubelets. \
             Remove {} (the next `node-pki` run makes this node its own CA) and restart the \
             kubelet so that it trusts the new one",
            cn.unwrap_or("no common name"),
            paths.dir.display()
        ),
    ))
}

fn create_ca(paths: &Paths, node: &NodeName, now: SystemTime) -> Result<Ca, PkiError> {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, ca_common_name(node));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kubelet-guard");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = timestamp(now - BACKDATE)?;
    params.not_after = timestamp(now + CA_VALIDITY)?;
    params.serial_number = Some(serial()?);
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| file_error(&paths.dir, e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| file_error(&paths.ca_cert, e))?;
    let key_pem = key.serialize_pem();
    write_atomic(&paths.ca_key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&paths.ca_cert, cert.pem().as_bytes(), 0o644)?;
    Ok(Ca {
        cert: cert.der().clone(),
        key_pem,
    })
}

fn issue_client(
    paths: &Paths,
    ca: &Ca,
    subject_cn: &str,
    validity: Duration,
    now: SystemTime,
) -> Result<Dates, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| file_error(&paths.ca_key, e))?;
    let issuer =
        Issuer::from_ca_cert_der(&ca.cert, ca_key).map_err(|e| file_error(&paths.ca_cert, e))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, subject_cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, GROUP);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    // Never past the CA's own end, which would make the certificate's last days unusable; a CA
    // that ends within the hour signs nothing more (its certificates would be due at once).
    let ca_end = Dates::of(&parse(&ca.cert, &paths.ca_cert)?).not_after;
    if ca_end < now + RECHECK {
        return Err(file_error(
            &paths.ca_cert,
            format!(
                "ends at {}: move {} aside, run `kubelet-guard node-pki` for a new CA, and give \
                 it to the kubelet",
                humantime::format_rfc3339_seconds(ca_end),
                paths.dir.display()
            ),
        ));
    }
    params.not_before = timestamp(now - BACKDATE)?;
    params.not_after = timestamp((now + validity).min(ca_end))?;
    params.serial_number = Some(serial()?);
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| file_error(&paths.dir, e))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| file_error(&paths.client_cert, e))?;
    // Key first: until the certificate follows, readers see a mismatched pair and keep the old.
    write_atomic(&paths.client_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(&paths.client_cert, cert.pem().as_bytes(), 0o600)?;
    Ok(Dates::of(&parse(cert.der(), &paths.client_cert)?))
}

/// Writes `bytes` to a new file beside `path` with `mode`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |name| name.to_string_lossy().into_owned());
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        file_error(path, format!("cannot write: {e}"))
    })
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(path, e)),
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = std::fs::read(path).map_err(|e| file_error(path, e))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))
}

fn one_cert(pem: &[u8], path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem)
        .map_err(|e| file_error(path, format!("not a PEM certificate: {e}")))
}

fn parse<'a>(der: &'a CertificateDer<'_>, path: &Path) -> Result<X509Certificate<'a>, PkiError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| file_error(path, format!("not an X.509 certificate: {e}")))
}

/// The subject's last common name, as Go's `pkix.Name` reads it; `None` if it has none in text.
fn common_name<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a str> {
    cert.subject()
        .iter_common_name()
        .last()
        .and_then(|cn| cn.as_str().ok())
}

fn timestamp(at: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let seconds = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| file_error(Path::new("--validity"), "the date is out of range"))
}

/// A random positive 128-bit serial number.
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| {
        file_error(
            Path::new("/dev/urandom"),
            "no randomness for a serial number",
        )
    })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "kubelet-guard-node-pki-{tag}-{}-{:?}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn node(name: &str) -> NodeName {
        NodeName::parse(name, "--node-name").unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn a_first_run_makes_the_ca_and_a_client_certificate_with_private_modes() {
        let paths = Paths::new(&temp("first").join("pki"));
        let now = SystemTime::now();
        let outcome = ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        assert!(outcome.ca_created);
        assert_eq!(outcome.issued, Some("new CA"));
        assert_eq!(
            outcome.subject,
            "CN=kubelet-guard:node:node-a, O=kubelet-guard:nodes"
        );
        assert_eq!(mode(&paths.dir), 0o700);
        assert_eq!(mode(&paths.ca_key), 0o600);
        assert_eq!(mode(&paths.client_key), 0o600);
        assert_eq!(mode(&paths.client_cert), 0o600);
        let (cert, dates) = read_client(&paths).unwrap();
        let parsed = parse(&cert, &paths.client_cert).unwrap();
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(
            dates.length(),
            WEEK + BACKDATE,
            "valid from five minutes before"
        );
        let printed = outcome.to_string();
        assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    }

    #[test]
    fn the_guard_makes_no_ca_while_it_runs() {
        let paths = Paths::new(&temp("no-new-ca").join("pki"));
        let now = SystemTime::now();
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        std::fs::remove_file(&paths.ca_cert).unwrap();
        std::fs::remove_file(&paths.ca_key).unwrap();
        let err = ensure(&paths, &node("node-a"), WEEK, now + WEEK, false).unwrap_err();
        assert!(
            err.to_string().contains("run `kubelet-guard node-pki`"),
            "{err}"
        );
        assert!(
            !paths.ca_cert.exists() && !paths.ca_key.exists(),
            "no CA was made"
        );
    }

    #[test]
    fn a_second_run_keeps_both_until_a_third_is_left() {
        let paths = Paths::new(&temp("keep"));
        let start = SystemTime::now();
        ensure(&paths, &node("node-a"), WEEK, start, true).unwrap();
        let ca = std::fs::read(&paths.ca_cert).unwrap();
        let client = std::fs::read(&paths.client_cert).unwrap();

        let later = ensure(&paths, &node("node-a"), WEEK, start + WEEK / 2, true).unwrap();
        assert_eq!((later.ca_created, later.issued), (false, None));
        assert_eq!(std::fs::read(&paths.client_cert).unwrap(), client);

        let late = ensure(&paths, &node("node-a"), WEEK, start + WEEK * 3 / 4, true).unwrap();
        assert_eq!(
            late.issued,
            Some("less than a third of its validity was left")
        );
        assert_ne!(std::fs::read(&paths.client_cert).unwrap(), client);
        assert_eq!(std::fs::read(&paths.ca_cert).unwrap(), ca, "the CA is kept");
    }

    #[test]
    fn a_ca_made_for_another_node_is_refused_and_a_mismatched_pair_reissued() {
        let paths = Paths::new(&temp("reissue"));
        let now = SystemTime::now();
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        let ca = std::fs::read(&paths.ca_cert).unwrap();
        // A directory copied to another machine (or a renamed node): never one CA for two nodes.
        for make_ca in [true, false] {
            let Err(refused) = ensure(&paths, &node("node-b"), WEEK, now, make_ca) else {
                panic!("node-b used node-a's CA");
            };
            let refused = refused.to_string();
            assert!(
                refused.contains(
                    "was made for another node (kubelet-guard node CA node-a), not node-b"
                ),
                "{refused}"
            );
        }
        assert_eq!(
            std::fs::read(&paths.ca_cert).unwrap(),
            ca,
            "nothing was changed"
        );

        // A crash between the two renames: the new key beside the old certificate.
        std::fs::write(
            &paths.client_key,
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        )
        .unwrap();
        let repaired = ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        assert_eq!(repaired.issued, Some("the one there did not match its key"));
        assert_eq!(
            ensure(&paths, &node("node-a"), WEEK, now, true)
                .unwrap()
                .issued,
            None
        );
    }

    #[test]
    fn two_nodes_get_two_cas_and_neither_signs_the_others_certificate() {
        let (a, b) = (Paths::new(&temp("node-a")), Paths::new(&temp("node-b")));
        let now = SystemTime::now();
        ensure(&a, &node("node-a"), WEEK, now, true).unwrap();
        ensure(&b, &node("node-b"), WEEK, now, true).unwrap();
        assert_ne!(
            std::fs::read(&a.ca_cert).unwrap(),
            std::fs::read(&b.ca_cert).unwrap()
        );
        // b's certificate dropped into a's directory is refused as not issued by a's CA.
        std::fs::copy(&b.client_cert, &a.client_cert).unwrap();
        std::fs::copy(&b.client_key, &a.client_key).unwrap();
        let outcome = ensure(&a, &node("node-a"), WEEK, now, true).unwrap();
        assert_eq!(
            outcome.issued,
            Some("the one there was not issued by ca.crt")
        );
    }

    #[test]
    fn bad_input_names_the_file_and_changes_nothing() {
        let now = SystemTime::now();
        let snapshot = |paths: &Paths| {
            [
                &paths.ca_cert,
                &paths.ca_key,
                &paths.client_cert,
                &paths.client_key,
            ]
            .map(|path| std::fs::read(path).ok())
        };
        // A CA key that belongs to another CA.
        let paths = Paths::new(&temp("mismatch"));
        let other = Paths::new(&temp("other"));
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        ensure(&other, &node("node-a"), WEEK, now, true).unwrap();
        std::fs::copy(&other.ca_key, &paths.ca_key).unwrap();
        let before = snapshot(&paths);
        let err = ensure(&paths, &node("node-a"), WEEK, now + WEEK, true).unwrap_err();
        assert!(
            err.to_string().contains("ca.key: does not match ca.crt"),
            "{err}"
        );
        assert_eq!(snapshot(&paths), before);

        // Corrupt files, each in turn.
        for file in ["ca.crt", "ca.key", "client.crt", "client.key"] {
            let paths = Paths::new(&temp("corrupt"));
            ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
            std::fs::write(paths.dir.join(file), "garbage\n").unwrap();
            let before = snapshot(&paths);
            let err = ensure(&paths, &node("node-a"), WEEK, now + WEEK, true).unwrap_err();
            assert!(err.to_string().contains(file), "{file}: {err}");
            assert_eq!(snapshot(&paths), before, "{file}");
        }

        // A CA certificate without its key.
        let paths = Paths::new(&temp("half-ca"));
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        std::fs::remove_file(&paths.ca_key).unwrap();
        let err = ensure(&paths, &node("node-a"), WEEK, now, true).unwrap_err();
        assert!(err.to_string().contains("ca.key: missing"), "{err}");

        // A directory that is a file.
        let file = temp("file");
        std::fs::write(&file, "x").unwrap();
        let err = ensure(&Paths::new(&file), &node("node-a"), WEEK, now, true).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = ensure(
            &Paths::new(&file.join("pki")),
            &node("node-a"),
            WEEK,
            now,
            true,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"x");
    }

    #[test]
    fn renewal_is_due_with_a_third_left() {
        let paths = Paths::new(&temp("dates"));
        let now = SystemTime::now();
        let outcome = ensure(&paths, &node("node-a"), Duration::from_secs(30), now, true).unwrap();
        let (renew_at, validity) = client_dates(&paths).unwrap();
        assert_eq!(
            validity,
            Duration::from_secs(30),
            "what a renewal issues again"
        );
        assert_eq!(renew_at, outcome.renew_at);
        // Valid from five minutes before its issue: a third of 330 s is left at renewal.
        assert_eq!(
            outcome.not_after.duration_since(renew_at).unwrap(),
            Duration::from_secs(110)
        );
    }

    #[test]
    fn a_clock_set_back_or_a_first_run_cut_short_is_repaired() {
        let paths = Paths::new(&temp("clock"));
        let now = SystemTime::now();
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        let client = std::fs::read(&paths.client_cert).unwrap();
        let slightly = ensure(&paths, &node("node-a"), WEEK, now - BACKDATE / 2, false).unwrap();
        assert_eq!(slightly.issued, None, "within the backdating");
        assert_eq!(std::fs::read(&paths.client_cert).unwrap(), client);
        let far = ensure(&paths, &node("node-a"), WEEK, now - 2 * BACKDATE, false).unwrap();
        assert_eq!(
            far.issued,
            Some("the one there is not valid yet: the clock was set back")
        );

        // The first run wrote ca.key, then stopped before ca.crt.
        let cut = Paths::new(&temp("cut-short"));
        ensure(&cut, &node("node-a"), WEEK, now, true).unwrap();
        for file in [&cut.ca_cert, &cut.client_cert, &cut.client_key] {
            std::fs::remove_file(file).unwrap();
        }
        let again = ensure(&cut, &node("node-a"), WEEK, now, true).unwrap();
        assert!(again.ca_created);
        let err = ensure(&cut, &node("node-a"), WEEK, now, false).map(|_| ());
        assert!(err.is_ok(), "the new pair loads: {err:?}");

        // A CA certificate lost later, beside what it signed: its key is kept, and so is the error.
        std::fs::remove_file(&cut.ca_cert).unwrap();
        let key = std::fs::read(&cut.ca_key).unwrap();
        let err = ensure(&cut, &node("node-a"), WEEK, now, true).unwrap_err();
        assert!(err.to_string().contains("missing beside ca.key"), "{err}");
        assert_eq!(std::fs::read(&cut.ca_key).unwrap(), key);
    }

    #[test]
    fn a_client_certificate_ends_with_its_ca_at_the_latest() {
        let paths = Paths::new(&temp("ca-end"));
        let now = SystemTime::now();
        ensure(&paths, &node("node-a"), WEEK, now, true).unwrap();
        let near_end = now + CA_VALIDITY - WEEK / 2;
        let outcome = ensure(&paths, &node("node-a"), WEEK, near_end, false).unwrap();
        assert!(outcome.issued.is_some());
        let ca_end =
            Dates::of(&parse(&load_ca(&paths).unwrap().unwrap().cert, &paths.ca_cert).unwrap())
                .not_after;
        assert_eq!(outcome.not_after, ca_end);
        let err = ensure(&paths, &node("node-a"), WEEK, ca_end - RECHECK / 2, false).unwrap_err();
        assert!(err.to_string().contains("for a new CA"), "{err}");
    }
}
