//! The annotations that spare an audit reader from parsing URLs: the pod a request acts on, what
//! it asks the kubelet to run, and how the caller authenticated. Computed only when an audit sink
//! is enabled.
//!
//! The pod comes from [`pod_scope`], the same split `--pod-scoped-authz` checks, so the two
//! always agree; what was run from [`stream_request`], which reads the query as the kubelet does.
//! Recorded commands go through [`redact`](crate::audit::redact) first.

use std::collections::BTreeMap;

use crate::audit;
use crate::audit::redact::redact_arguments;
use crate::audit::shell::shell_join;
use crate::authn::{Identity, PeerCertificate};
use crate::kubelet_api::pod_scope::{PodScope, pod_scope};
use crate::kubelet_api::query::{parse_query, stream_request};

/// Adds the pod that `target` (a classified request-target) acts on and what it asks for.
pub(super) fn target(annotations: &mut BTreeMap<&'static str, String>, target: &str) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let PodScope::Pod(pod) = pod_scope(path, Some(query)) else {
        return;
    };
    annotations.insert(audit::POD_NAMESPACE, pod.namespace.to_owned());
    annotations.insert(audit::POD_NAME, pod.pod.to_owned());
    if let Some(uid) = pod.uid {
        annotations.insert(audit::POD_UID, uid.to_owned());
    }
    if let Some(container) = pod.container {
        annotations.insert(audit::CONTAINER, container.to_owned());
    }
    let asked = stream_request(path, &parse_query(query));
    if let Some(command) = asked.command {
        annotations.insert(audit::COMMAND, shell_join(&redact_arguments(&command)));
    }
    if let Some(streams) = asked.streams {
        for (name, requested) in [
            (audit::STDIN, streams.stdin),
            (audit::STDOUT, streams.stdout),
            (audit::STDERR, streams.stderr),
            (audit::TTY, streams.tty),
        ] {
            annotations.insert(name, requested.to_string());
        }
    }
    if !asked.ports.is_empty() {
        let ports: Vec<String> = asked.ports.iter().map(u16::to_string).collect();
        annotations.insert(audit::PORTS, ports.join(","));
    }
}

/// Adds how `who` authenticated: the connection's certificate, a token, or no credential.
pub(super) fn authentication(
    annotations: &mut BTreeMap<&'static str, String>,
    certificate: &PeerCertificate,
    who: &Identity,
) {
    // The certificate is tried first: a caller with a usable one is always its identity.
    let method = match certificate {
        PeerCertificate::Identity {
            not_after, issued, ..
        } => {
            annotations.insert(audit::CERTIFICATE_ISSUER, issued.issuer.clone());
            annotations.insert(audit::CERTIFICATE_SERIAL, issued.serial.clone());
            annotations.insert(
                audit::CERTIFICATE_EXPIRY,
                humantime::format_rfc3339_seconds(*not_after).to_string(),
            );
            "x509"
        }
        _ if who.is_anonymous() => "anonymous",
        _ => "token",
    };
    annotations.insert(audit::AUTHENTICATION, method.to_owned());
}
