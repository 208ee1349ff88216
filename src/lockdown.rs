//! The kubelet lockdown self-check (docs/kubelet-api.md §9): proof that the kubelet answers to this
//! node's guard alone, so nothing on the node's network walks around the guard.
//!
//! At start and then every `--kubelet-lockdown-interval`, the guard calls its kubelet **without
//! its client certificate**, with a read-only `GET /healthz` on a connection of its own: once with
//! no credential and once with the guard's own API-server bearer token (skipped, and said once,
//! when it has none; with `require` the guard then does not start, as nothing could prove the
//! kubelet refuses tokens). A 401, or a handshake the kubelet refuses for want of a client certificate,
//! means locked; any other HTTP answer means exposed. A kubelet that cannot be reached changes
//! nothing and is counted in `kubelet_guard_upstream_errors_total{kind="lockdown-probe"}`.
//!
//! The read-only port takes no credential at all, so it is read from the kubelet's running
//! configuration instead: `GET /configz` as the guard itself (its one request with the guard's
//! credential), where `kubeletconfig.readOnlyPort` other than 0 (v1beta1 omits 0) means exposed:
//! credential `read-only-port`. A kubelet whose `/configz` is a 404 (debugging handlers off), or
//! a 401 (it does not take the guard's certificate yet), is asked on the default read-only port, 10255 on the kubelet's host: a kubelet's `ok` from
//! `/healthz` there means exposed, a refused connection locked; a read-only port moved elsewhere
//! goes unseen on such a kubelet. Any other answer to `/configz` tells nothing.
//!
//! With the node PKI (`--node-pki-dir`), the first probe's handshake also says which client CAs
//! the kubelet trusts: a Go TLS server names every CA of its client CA pool in its certificate
//! request. Any CA besides the node PKI's means a certificate the guard never issued reaches the
//! kubelet: credential `certificate`. Without the node PKI the guard cannot tell a CA of its own
//! from one it shares (a cluster CA that also issued its certificate), and does not check.
//!
//! Reported in `kubelet_guard_kubelet_exposed{credential}`, logged at ERROR when a credential is
//! first seen to get through (with the kubelet setting to change) and at INFO when it stops; with
//! `--kubelet-lockdown=require`, `/readyz` answers 503 until every check has found it locked.
//!
//! Must not: send any caller's credential, or any request but those GETs; the `/healthz` probes
//! never carry the guard's client certificate (one carries its API-server token, on purpose).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::AlertDescription;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use x509_parser::prelude::FromDer;

use crate::apiserver::OwnToken;
use crate::config::{self, Lockdown};
use crate::forward::{ForwardError, Upstream};
use crate::metrics::{Metrics, Readiness};

/// The path probed: read-only, never streaming, cheap for the kubelet.
pub const PROBE_PATH: &str = "/healthz";

/// Where the kubelet shows the configuration it runs with (KubeletConfiguration v1beta1, under
/// `kubeletconfig`).
const CONFIGZ_PATH: &str = "/configz";

/// The most of `/configz` read: a kubelet's is a few KiB.
const CONFIGZ_LIMIT: usize = 1 << 20;

/// The kubelet's `--read-only-port` default, asked when its configuration cannot be read.
const DEFAULT_READ_ONLY_PORT: u16 = 10255;

/// How long one probe may take at most.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the self-check needs.
pub struct Probe {
    /// The kubelet: address, server name and the CA that verifies it.
    pub upstream: config::UpstreamSettings,
    /// The kubelet as the guard reaches it, for the read of its configuration.
    pub kubelet: Arc<Upstream>,
    /// The guard's own API-server token, if it has one.
    pub token: Option<OwnToken>,
    /// The node PKI's CA, the one client CA a locked kubelet names; empty without the node PKI.
    pub node_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `warn` or `require` (`off` never starts the probe).
    pub mode: Lockdown,
    /// Where the gauge and the probe's failures are counted.
    pub metrics: Metrics,
    /// Held back under `require` while the kubelet is exposed.
    pub ready: Readiness,
}

/// What the kubelet did with a request that lacked the guard's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Refused it: 401, or a handshake refused for want of a client certificate.
    Locked,
    /// Answered it with this status.
    Exposed(StatusCode),
    /// Named client CAs besides the node PKI's (these, one per line).
    TrustsOthers(String),
    /// Serves its read-only port, this one.
    ReadOnly(u16),
}

/// One probe's verdict, and the client CAs the kubelet named in its handshake (`None` if it asked
/// for no client certificate).
#[derive(Debug)]
pub struct Probed {
    /// What the kubelet did with the request.
    pub verdict: Verdict,
    /// The DER subjects of the CAs the kubelet said it trusts for client certificates.
    pub client_cas: Option<Vec<Vec<u8>>>,
}

/// A probe that learned nothing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The upstream CA file is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// No connection, or no answer.
    #[error("the kubelet could not be probed: {0}")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer in time.
    #[error("the kubelet did not answer the probe within {0:?}")]
    Timeout(Duration),
}

/// The probes, by the `credential` label they report under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Credential {
    None,
    Token,
    /// Not a request of its own: the client CAs named in the `None` probe's handshake.
    Certificate,
    /// The read-only port, which takes none.
    ReadOnlyPort,
}

impl Credential {
    fn label(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Token => "token",
            Self::Certificate => "certificate",
            Self::ReadOnlyPort => "read-only-port",
        }
    }

    /// What to change on the kubelet when this probe gets through.
    fn advice(self) -> &'static str {
        match self {
            Self::None => {
                "the kubelet answers requests that carry no credential: set \
                 authentication.anonymous.enabled: false in its KubeletConfiguration"
            }
            Self::Token => {
                "the kubelet accepts bearer tokens, so every hostNetwork pod with a token walks \
                 around the guard: set authentication.webhook.enabled: false and \
                 authentication.x509.clientCAFile to the node PKI's ca.crt in its \
                 KubeletConfiguration"
            }
            Self::Certificate => {
                "the kubelet trusts client certificates the guard did not issue, so their holders \
                 walk around the guard: set authentication.x509.clientCAFile (and no \
                 --client-ca-file flag) to the node PKI's ca.crt alone, and restart the kubelet"
            }
            Self::ReadOnlyPort => {
                "the kubelet serves its read-only port, which answers without any credential: set \
                 readOnlyPort: 0 (and no --read-only-port flag) in its KubeletConfiguration, and \
                 restart the kubelet"
            }
        }
    }
}

/// Why the guard is unready under `require` before the first probe has answered; held from start.
pub const UNPROVEN: &str = "the kubelet lockdown is not proven yet (--kubelet-lockdown=require)";

/// Probes every `interval` until `stop`, keeping the gauge, the log and readiness up to date
/// (under `require`, readiness is held with [`UNPROVEN`] before this starts).
pub async fn run(probe: Probe, interval: Duration, mut stop: watch::Receiver<bool>) {
    let require = probe.mode == Lockdown::Require;
    // Under `require` there is always a token: `start` refuses to start without one.
    if probe.token.is_none() {
        tracing::info!(
            "the guard has no API-server token of its own: the lockdown probe with a bearer token \
             is skipped"
        );
    }
    let mut credentials = vec![Credential::None];
    if probe.token.is_some() {
        credentials.push(Credential::Token);
    }
    credentials.push(Credential::ReadOnlyPort);
    let own: Vec<Vec<u8>> = probe
        .node_ca
        .iter()
        .filter_map(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, ca)| ca.subject().as_raw().to_vec())
        .collect();
    if own.is_empty() {
        tracing::warn!(
            "without --node-pki-dir the lockdown probe cannot tell the guard's client CA from one \
             the kubelet shares with others: whether the kubelet trusts certificates the guard \
             never issued is not checked"
        );
    } else {
        credentials.push(Credential::Certificate);
    }
    // The last verdict per credential: None until one probe got an answer.
    let mut known: Vec<Option<Verdict>> = vec![None; credentials.len()];
    loop {
        // One round: at most a probe's timeout per check, and shutdown does not wait for it.
        let round = async {
            // The client CAs the kubelet named in the first probe's handshake, if it answered.
            let mut named = None;
            for (credential, known) in credentials.iter().zip(known.iter_mut()) {
                let outcome = match credential {
                    Credential::None => probe.check(None).await.map(|probed| {
                        named = Some(probed.client_cas);
                        probed.verdict
                    }),
                    Credential::Token => match probe.token.as_ref().map(OwnToken::read) {
                        Some(Ok(token)) => {
                            probe.check(Some(&token)).await.map(|probed| probed.verdict)
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%error, "the guard's own API-server token cannot be read");
                            continue;
                        }
                        None => continue,
                    },
                    Credential::Certificate => {
                        let Some(named) = &named else {
                            continue;
                        };
                        trusted_besides(named.as_deref(), &own)
                    }
                    Credential::ReadOnlyPort => probe.read_only_port().await,
                };
                match outcome {
                    Ok(verdict) => {
                        report(&probe.metrics, *credential, known.as_ref(), &verdict);
                        *known = Some(verdict);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, credential = credential.label(), "lockdown probe failed");
                        probe.metrics.upstream_error("lockdown-probe");
                    }
                }
            }
        };
        tokio::select! {
            () = round => {}
            () = crate::shutdown::stopped(&mut stop) => return,
        }
        if require {
            probe.ready.hold(hold_reason(&credentials, &known));
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}

impl Probe {
    /// One probe: `GET /healthz` without a client certificate, with `bearer` if given, on a
    /// connection of its own (a pooled one could have been made with the guard's certificate).
    pub async fn check(&self, bearer: Option<&str>) -> Result<Probed, ProbeError> {
        let mut tls = crate::tls::client_without_certificate(&self.upstream.ca)?;
        let named = Arc::new(NamedClientCas::default());
        tls.client_auth_cert_resolver = named.clone();
        let authority = self.upstream.authority.clone();
        let server_name = self.upstream.server_name.clone();
        let mut request = probe_request(authority.as_str())?;
        if let Some(token) = bearer {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| ProbeError::Unreachable(Box::new(e)))?;
            value.set_sensitive(true);
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        let exchange = async move {
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(Arc::new(tls))
                .connect(server_name, tcp)
                .await?;
            Ok(send(stream, request).await?.status())
        };
        let verdict = match self.in_time(exchange).await? {
            Ok(StatusCode::UNAUTHORIZED) => Verdict::Locked,
            Ok(status) => Verdict::Exposed(status),
            Err(e) if refused_for_want_of_a_certificate(e.as_ref()) => Verdict::Locked,
            Err(e) => return Err(ProbeError::Unreachable(e)),
        };
        let client_cas = named
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        Ok(Probed {
            verdict,
            client_cas,
        })
    }

    /// Whether the kubelet serves its read-only port, as its `/configz` says; where it has none
    /// (a 404: debugging handlers off) or does not take the guard's certificate (a 401), as the
    /// default port answers. Any other failure tells nothing, so the last verdict stands.
    async fn read_only_port(&self) -> Result<Verdict, ProbeError> {
        let timeout = self.upstream.timeout.min(PROBE_TIMEOUT);
        let (status, body) = match self
            .kubelet
            .get_as_guard(CONFIGZ_PATH, CONFIGZ_LIMIT, timeout)
            .await
        {
            Ok(answer) => answer,
            Err(ForwardError::Timeout(timeout)) => return Err(ProbeError::Timeout(timeout)),
            Err(error) => return Err(ProbeError::Unreachable(Box::new(error))),
        };
        match status {
            StatusCode::OK => match configured_read_only_port(&body) {
                Some(0) => Ok(Verdict::Locked),
                Some(port) => Ok(Verdict::ReadOnly(port)),
                None => Err(ProbeError::Unreachable(
                    "the kubelet's /configz holds no KubeletConfiguration it can read".into(),
                )),
            },
            // No /configz (debugging handlers off), or no read of it for the guard: a kubelet that
            // does not take the guard's certificate yet (the rollout's observe step).
            StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED => {
                self.answers_on(DEFAULT_READ_ONLY_PORT).await
            }
            status => Err(ProbeError::Unreachable(
                format!(
                    "the kubelet answered {} to the guard's own GET /configz",
                    status.as_u16()
                )
                .into(),
            )),
        }
    }

    /// Whether a kubelet answers plain HTTP on `port` of the kubelet's host: a refused connection
    /// is locked, a kubelet's `ok` from `/healthz` exposed, anything else tells nothing.
    async fn answers_on(&self, port: u16) -> Result<Verdict, ProbeError> {
        let address = format!("{}:{port}", self.upstream.authority.host());
        let request = probe_request(&address)?;
        let exchange = async {
            let tcp = match TcpStream::connect(address.as_str()).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(None),
                tcp => tcp?,
            };
            let response = send(tcp, request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), 64).collect().await?;
            Ok(Some((status, body.to_bytes())))
        };
        match self.in_time(exchange).await? {
            Ok(None) => Ok(Verdict::Locked),
            Ok(Some((StatusCode::OK, body))) if body.as_ref() == b"ok" => {
                Ok(Verdict::ReadOnly(port))
            }
            Ok(Some((status, _))) => Err(ProbeError::Unreachable(
                format!(
                    "{address} answered {} to GET {PROBE_PATH}, not as a kubelet does",
                    status.as_u16()
                )
                .into(),
            )),
            Err(e) => Err(ProbeError::Unreachable(e)),
        }
    }

    /// `exchange`'s outcome, unless it takes longer than a probe may.
    async fn in_time<T>(
        &self,
        exchange: impl Future<Output = Result<T, BoxError>>,
    ) -> Result<Result<T, BoxError>, ProbeError> {
        let timeout = self.upstream.timeout.min(PROBE_TIMEOUT);
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ProbeError::Timeout(timeout))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A probe's `GET /healthz` to `host`, with no credential.
fn probe_request(host: &str) -> Result<Request<Empty<Bytes>>, ProbeError> {
    Request::get(PROBE_PATH)
        .header(header::HOST, host)
        .header(header::USER_AGENT, "kubelet-guard lockdown probe")
        .body(Empty::new())
        .map_err(|e| ProbeError::Unreachable(Box::new(e)))
}

/// Sends `request` as the one exchange of an HTTP/1.1 connection over `io`.
async fn send<S>(io: S, request: Request<Empty<Bytes>>) -> Result<Response<Incoming>, BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender.send_request(request).await?)
}

/// The read-only port in a kubelet's `/configz` (0: none), or `None` if the body is no
/// KubeletConfiguration v1beta1: that omits a `readOnlyPort` of 0, but never its `port`.
fn configured_read_only_port(body: &[u8]) -> Option<u16> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let config = value.get("kubeletconfig")?.as_object()?;
    config.get("port")?.as_u64()?;
    match config.get("readOnlyPort") {
        None => Some(0),
        Some(port) => port.as_u64().and_then(|port| u16::try_from(port).ok()),
    }
}

/// Presents no client certificate, and keeps the CA names of the kubelet's certificate request.
#[derive(Debug, Default)]
struct NamedClientCas(std::sync::Mutex<Option<Vec<Vec<u8>>>>);

impl rustls::client::ResolvesClientCert for NamedClientCas {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(
            root_hint_subjects
                .iter()
                .map(|name| name.to_vec())
                .collect(),
        );
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// The verdict on the client CAs a kubelet named (`None`: it asked for no client certificate, so
/// it takes none): locked if each is one of the `own` subjects (DER).
fn trusted_besides(named: Option<&[Vec<u8>]>, own: &[Vec<u8>]) -> Result<Verdict, ProbeError> {
    let Some(named) = named else {
        return Ok(Verdict::Locked);
    };
    if named.is_empty() {
        // A Go server names its whole client CA pool; a server that names none could trust any.
        return Err(ProbeError::Unreachable(
            "the kubelet asked for a client certificate without naming the CAs it trusts".into(),
        ));
    }
    let others: Vec<String> = named
        .iter()
        .filter(|name| !own.contains(name))
        .map(|name| {
            x509_parser::x509::X509Name::from_der(name).map_or_else(
                |_| "(an unreadable name)".to_owned(),
                |(_, n)| n.to_string(),
            )
        })
        .collect();
    Ok(if others.is_empty() {
        Verdict::Locked
    } else {
        Verdict::TrustsOthers(others.join("\n"))
    })
}

/// Exports one verdict and logs a change.
fn report(metrics: &Metrics, credential: Credential, before: Option<&Verdict>, now: &Verdict) {
    let label = credential.label();
    match now {
        Verdict::Exposed(status) => {
            metrics.kubelet_exposed(label, true);
            if !matches!(before, Some(Verdict::Exposed(_))) {
                tracing::error!(
                    credential = label,
                    status = status.as_u16(),
                    "the kubelet is reachable around the guard: {}",
                    credential.advice()
                );
            }
        }
        Verdict::ReadOnly(port) => {
            metrics.kubelet_exposed(label, true);
            if before != Some(now) {
                tracing::error!(
                    credential = label,
                    port,
                    "the kubelet is reachable around the guard: {}",
                    credential.advice()
                );
            }
        }
        Verdict::TrustsOthers(names) => {
            metrics.kubelet_exposed(label, true);
            if before != Some(now) {
                tracing::error!(
                    credential = label,
                    client_cas = %names,
                    "the kubelet is reachable around the guard: {}",
                    credential.advice()
                );
            }
        }
        Verdict::Locked => {
            metrics.kubelet_exposed(label, false);
            if before != Some(&Verdict::Locked) {
                tracing::info!(
                    credential = label,
                    "the kubelet is locked to the guard for this credential"
                );
            }
        }
    }
}

/// Why readiness is held under `require`, or `None` once every probe found the kubelet locked.
fn hold_reason(credentials: &[Credential], known: &[Option<Verdict>]) -> Option<String> {
    let mut reasons = Vec::new();
    for (credential, verdict) in credentials.iter().zip(known) {
        match verdict {
            Some(Verdict::Locked) => {}
            Some(Verdict::Exposed(status)) => reasons.push(format!(
                "the kubelet answered {} to a probe with credential {}: {}",
                status.as_u16(),
                credential.label(),
                credential.advice()
            )),
            Some(Verdict::ReadOnly(port)) => reasons.push(format!(
                "the kubelet serves its read-only port {port}: {}",
                credential.advice()
            )),
            Some(Verdict::TrustsOthers(names)) => reasons.push(format!(
                "the kubelet trusts client certificates from {}: {}",
                names.replace('\n', ", "),
                credential.advice()
            )),
            None => reasons.push(format!(
                "the kubelet lockdown is not proven yet for credential {}",
                credential.label()
            )),
        }
    }
    (!reasons.is_empty()).then(|| format!("{} (--kubelet-lockdown=require)", reasons.join("; ")))
}

/// Whether `error` is the kubelet refusing the handshake for want of a client certificate: the
/// TLS alert `certificate_required` (TLS 1.3) or `bad_certificate` (TLS 1.2), as Go's server sends
/// them. `handshake_failure` says the two sides agreed on no parameters: it proves nothing.
fn refused_for_want_of_a_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::AlertReceived(
                    AlertDescription::CertificateRequired | AlertDescription::BadCertificate
                )
            );
        }
        // io::Error's source() skips the error it wraps; look at that one too.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && refused_for_want_of_a_certificate(inner)
        {
            return true;
        }
        next = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_handshake_is_locked_and_other_failures_are_not() {
        let refused = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert!(refused_for_want_of_a_certificate(&refused));
        let untrusted = std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(!refused_for_want_of_a_certificate(&untrusted));
        let refused_connection = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!refused_for_want_of_a_certificate(&refused_connection));
    }

    #[test]
    fn readiness_is_held_until_every_probe_is_locked() {
        let both = [Credential::None, Credential::Token];
        let reason = hold_reason(&both, &[Some(Verdict::Locked), None]).unwrap();
        assert!(
            reason.contains("not proven yet for credential token"),
            "{reason}"
        );
        let reason = hold_reason(
            &both,
            &[
                Some(Verdict::Locked),
                Some(Verdict::Exposed(StatusCode::FORBIDDEN)),
            ],
        )
        .unwrap();
        assert!(reason.contains("answered 403") && reason.contains("webhook.enabled: false"));
        assert_eq!(
            hold_reason(&both, &[Some(Verdict::Locked), Some(Verdict::Locked)]),
            None
        );
    }

    #[test]
    fn the_read_only_port_is_read_from_a_kubelets_configuration_only() {
        let port = |body: &str| configured_read_only_port(body.as_bytes());
        // v1beta1 omits a read-only port of 0.
        assert_eq!(port(r#"{"kubeletconfig":{"port":10250}}"#), Some(0));
        assert_eq!(
            port(r#"{"kubeletconfig":{"port":10250,"readOnlyPort":0}}"#),
            Some(0)
        );
        assert_eq!(
            port(r#"{"kubeletconfig":{"port":10250,"readOnlyPort":10255}}"#),
            Some(10255)
        );
        for unreadable in [
            "",
            "ok",
            r#"{"componentconfig":{"port":10250}}"#,
            r#"{"kubeletconfig":"x"}"#,
            // Not a kubelet's: v1beta1 always has its port.
            r#"{"kubeletconfig":{}}"#,
            r#"{"kubeletconfig":{"readOnlyPort":10255}}"#,
            r#"{"kubeletconfig":{"port":10250,"readOnlyPort":"10255"}}"#,
            r#"{"kubeletconfig":{"port":10250,"readOnlyPort":-1}}"#,
            r#"{"kubeletconfig":{"port":10250,"readOnlyPort":65536}}"#,
        ] {
            assert_eq!(port(unreadable), None, "{unreadable}");
        }
        let reason = hold_reason(
            &[Credential::ReadOnlyPort],
            &[Some(Verdict::ReadOnly(10255))],
        )
        .unwrap();
        assert!(
            reason.contains("read-only port 10255") && reason.contains("readOnlyPort: 0"),
            "{reason}"
        );
    }

    #[test]
    fn a_handshake_failure_proves_nothing() {
        let failure = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        ));
        assert!(!refused_for_want_of_a_certificate(&failure));
        let tls12 = std::io::Error::other(rustls::Error::AlertReceived(
            AlertDescription::BadCertificate,
        ));
        assert!(refused_for_want_of_a_certificate(&tls12));
    }

    #[test]
    fn a_kubelet_naming_no_client_ca_proves_nothing_and_one_asking_for_none_takes_none() {
        let own = [b"node CA".to_vec()];
        assert_eq!(trusted_besides(None, &own).unwrap(), Verdict::Locked);
        let err = trusted_besides(Some(&[]), &own).unwrap_err().to_string();
        assert!(err.contains("without naming the CAs"), "{err}");
        assert_eq!(trusted_besides(Some(&own), &own).unwrap(), Verdict::Locked);
        assert!(matches!(
            trusted_besides(Some(&[own[0].clone(), b"x".to_vec()]), &own).unwrap(),
            Verdict::TrustsOthers(_)
        ));
    }
}
