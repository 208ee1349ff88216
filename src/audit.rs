//! The audit trail: one `audit.k8s.io/v1` `Event` per kubelet call, in the shape kube-apiserver
//! writes at the Metadata level, so tools that read API-server audit (Falco's k8saudit plugin, SIEM
//! pipelines) read these too.
//!
//! This file owns the event's data model. Requests never wait on the trail: events go through a
//! bounded queue to a background writer, and what a full queue drops is counted and logged.

/// The JSON-lines log sink: a file with lumberjack-style rotation, or standard output.
mod file;
/// The rule that keeps credentials out of recorded commands and request URIs.
pub mod redact;
/// Command arguments joined as a shell would show them.
pub mod shell;
/// Flags and settings of the audit trail, and the [`sink::Auditor`] that queues events.
pub mod sink;
/// The batching `EventList` webhook sink.
mod webhook;

use std::collections::BTreeMap;

use serde::Serialize;

/// The `kind` of one event.
pub const EVENT_KIND: &str = "Event";
/// The `kind` of a batch of events.
pub const EVENT_LIST_KIND: &str = "EventList";
/// The API version of events and batches.
pub const API_VERSION: &str = "audit.k8s.io/v1";

/// Annotation: `allow` or `forbid`, as kube-apiserver's authorizer annotates.
pub const DECISION: &str = "authorization.k8s.io/decision";
/// Annotation: the authorizer's reason.
pub const REASON: &str = "authorization.k8s.io/reason";
/// Annotation: every check tried and its outcome, e.g. `pods=deny,proxy=allow`.
pub const CHECKS: &str = "kubelet-guard.io/checks";
/// Annotation: `true` when the `nodes/proxy` fallback decided.
pub const PROXY_FALLBACK: &str = "kubelet-guard.io/proxy-fallback";
/// Annotation: the upgrade protocol asked for (`websocket`, `spdy`, `other`).
pub const UPGRADE: &str = "kubelet-guard.io/upgrade";
/// Annotation: the `--pod-scoped-authz` check, e.g. `create pods/exec team-a/web=deny`.
pub const POD_CHECK: &str = "kubelet-guard.io/pod-check";
/// Annotation: the rollout mode's verdict when it differs from what happened (`observe` mode).
pub const OBSERVED: &str = "kubelet-guard.io/observe";
/// Annotation: bytes relayed to the kubelet over an upgraded stream.
pub const BYTES_TO_KUBELET: &str = "kubelet-guard.io/bytes-to-kubelet";
/// Annotation: bytes relayed to the caller over an upgraded stream, or of a forwarded response's
/// body.
pub const BYTES_TO_CALLER: &str = "kubelet-guard.io/bytes-to-caller";
/// Annotation: how a forwarded response's body ended (`complete`, `caller-closed`, `shutdown`,
/// `certificate-expired`, `error`).
pub const RESPONSE_END: &str = "kubelet-guard.io/response-end";
/// Annotation: how long an upgraded stream was open, in seconds to the millisecond (`1.500s`).
pub const STREAM_DURATION: &str = "kubelet-guard.io/stream-duration";
/// Annotation: how an upgraded stream ended (`caller-closed`, `kubelet-closed`, `shutdown`,
/// `certificate-expired`, `caller-unread`, `error`).
pub const STREAM_END: &str = "kubelet-guard.io/stream-end";
/// Annotation: the namespace of the pod the request acts on.
pub const POD_NAMESPACE: &str = "kubelet-guard.io/pod-namespace";
/// Annotation: the name of the pod the request acts on.
pub const POD_NAME: &str = "kubelet-guard.io/pod-name";
/// Annotation: the UID of the pod the request acts on, when the path has one.
pub const POD_UID: &str = "kubelet-guard.io/pod-uid";
/// Annotation: the container the request acts on, when the path names one.
pub const CONTAINER: &str = "kubelet-guard.io/container";
/// Annotation: the command of an exec or run, joined as a shell would show it, credentials
/// redacted.
pub const COMMAND: &str = "kubelet-guard.io/command";
/// Annotation: the ports of a port-forward, comma-separated (`8080,9090`).
pub const PORTS: &str = "kubelet-guard.io/ports";
/// Annotation: `true` when an exec or attach asks for stdin.
pub const STDIN: &str = "kubelet-guard.io/stdin";
/// Annotation: `true` when an exec or attach asks for stdout.
pub const STDOUT: &str = "kubelet-guard.io/stdout";
/// Annotation: `true` when an exec or attach asks for stderr.
pub const STDERR: &str = "kubelet-guard.io/stderr";
/// Annotation: `true` when an exec or attach asks for a terminal.
pub const TTY: &str = "kubelet-guard.io/tty";
/// Annotation: how the caller authenticated (`x509`, `token`, `anonymous`).
pub const AUTHENTICATION: &str = "kubelet-guard.io/authentication";
/// Annotation: the issuer of the caller's client certificate (`CN=kubernetes`).
pub const CERTIFICATE_ISSUER: &str = "kubelet-guard.io/client-certificate-issuer";
/// Annotation: the serial number of the caller's client certificate, lowercase hexadecimal.
pub const CERTIFICATE_SERIAL: &str = "kubelet-guard.io/client-certificate-serial";
/// Annotation: when the caller's client certificate expires (RFC 3339).
pub const CERTIFICATE_EXPIRY: &str = "kubelet-guard.io/client-certificate-expiry";

/// One audit event (`audit.k8s.io/v1` `Event`, Metadata level).
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Always [`EVENT_KIND`].
    pub kind: &'static str,
    /// Always [`API_VERSION`].
    pub api_version: &'static str,
    /// Always `Metadata`: no request or response bodies are recorded.
    pub level: &'static str,
    /// Unique per request; also sent to the caller as `Audit-ID`.
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// `ResponseStarted` (an upgrade's 101, a container log's headers) or `ResponseComplete`.
    pub stage: Stage,
    /// Path and query as received, with the credentials [`redact`] recognises redacted.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// The verb authorized (empty when refused before classification).
    pub verb: String,
    /// The caller, when authenticated.
    pub user: UserInfo,
    /// The peer address only; forwarded-for headers are not trusted.
    #[serde(rename = "sourceIPs")]
    pub source_ips: Vec<String>,
    /// The caller's `User-Agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The node and the subresource that decided (or was last checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectReference>,
    /// The status the caller received.
    pub response_status: ResponseStatus,
    /// When the request arrived (RFC 3339, microseconds).
    pub request_received_timestamp: String,
    /// When this stage was reached (RFC 3339, microseconds).
    pub stage_timestamp: String,
    /// Decision and kubelet-guard details; see the constants of this module.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<&'static str, String>,
}

impl Event {
    /// About how many bytes the event holds, in memory and once written: its strings, plus an
    /// allowance for the rest. What a queue's byte budget counts.
    pub fn weight(&self) -> usize {
        const REST: usize = 1024;
        let user = &self.user;
        REST + self.audit_id.len()
            + self.request_uri.len()
            + self.verb.len()
            + user.username.len()
            + user.uid.len()
            + user.groups.iter().map(String::len).sum::<usize>()
            + user
                .extra
                .iter()
                .map(|(key, values)| key.len() + values.iter().map(String::len).sum::<usize>())
                .sum::<usize>()
            + self.user_agent.as_ref().map_or(0, String::len)
            + self.response_status.message.as_ref().map_or(0, String::len)
            + self
                .annotations
                .iter()
                .map(|(key, value)| key.len() + value.len())
                .sum::<usize>()
    }
}

/// Audit stages used by the guard.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub enum Stage {
    /// The response headers were sent and the body keeps flowing (an upgraded stream, a
    /// container log).
    ResponseStarted,
    /// The exchange is over.
    ResponseComplete,
}

/// `authentication.k8s.io/v1` `UserInfo`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct UserInfo {
    /// User name; empty when not authenticated.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// User UID.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `audit.k8s.io/v1` `ObjectReference`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Always `nodes`.
    pub resource: &'static str,
    /// The node name.
    pub name: String,
    /// The subresource that decided, or the last one checked.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    /// Always `v1`.
    pub api_version: &'static str,
}

/// `meta/v1` `Status`, as much as an audit event carries.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ResponseStatus {
    /// Always an empty object, as kube-apiserver writes it.
    pub metadata: BTreeMap<String, String>,
    /// HTTP status code.
    pub code: u16,
    /// `Success` or `Failure` (only on failures, as kube-apiserver writes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// Machine-readable reason on failures (`Forbidden`, `Unauthorized`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Human-readable message on failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
