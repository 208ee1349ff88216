//! What each caller used, read from kubelet-guard's own audit log (`--from-audit-log`): JSON lines
//! of the `audit.k8s.io/v1` `Event`s that `audit` defines, or `EventList` batches as the webhook
//! sink posts them.
//!
//! A call counts when it went through: the guard allowed it (`authorization.k8s.io/decision:
//! allow`), or observe mode forwarded it and the kubelet did not refuse it. Its subresource is the
//! one that decided (`objectRef.subresource`), except when the `nodes/proxy` fallback decided: then
//! the caller needs only the fine-grained subresource checked first (`kubelet-guard.io/checks`).
//! Lines that are not events are reported with their line number and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::findings::Subject;
use crate::audit;
use crate::authn::Identity;
use crate::authz::rbac;

/// The calls of one audit log.
pub(super) struct Usage {
    calls: Vec<Call>,
    /// Lines that could not be read, with their numbers.
    pub(super) warnings: Vec<String>,
}

/// What one subject used.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Used {
    /// Subresource (`metrics`) → verbs used on it.
    pub(super) verbs: BTreeMap<String, BTreeSet<String>>,
    /// Endpoints reached through `nodes/proxy` itself (`/exec`, `/containerLogs`), which no
    /// fine-grained subresource replaces.
    pub(super) through_proxy: BTreeSet<String>,
    /// How many calls counted.
    pub(super) calls: usize,
}

/// At most this many unreadable lines are reported one by one.
const REPORTED_LINES: usize = 10;

impl Usage {
    /// Reads an audit log file.
    pub(super) fn read(path: &Path) -> std::io::Result<Usage> {
        let text = std::fs::read_to_string(path)?;
        Ok(Usage::parse(&path.display().to_string(), &text))
    }

    /// Reads the lines of an audit log named `source` (for warnings).
    pub(super) fn parse(source: &str, text: &str) -> Usage {
        let mut usage = Usage {
            calls: Vec::new(),
            warnings: Vec::new(),
        };
        let mut unreadable = 0;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Recorded>(line) {
                Ok(recorded) if recorded.kind == audit::EVENT_LIST_KIND => {
                    usage
                        .calls
                        .extend(recorded.items.iter().filter_map(Call::of));
                }
                Ok(recorded) => usage.calls.extend(Call::of(&recorded)),
                Err(e) => {
                    unreadable += 1;
                    if unreadable <= REPORTED_LINES {
                        let line = index + 1;
                        usage
                            .warnings
                            .push(format!("{source}:{line}: not an audit event, skipped: {e}"));
                    }
                }
            }
        }
        if unreadable > REPORTED_LINES {
            usage.warnings.push(format!(
                "{source}: {} more lines were not audit events",
                unreadable - REPORTED_LINES
            ));
        }
        usage
    }

    /// What `subject` used: the calls of every identity the subject denotes (a group's members).
    pub(super) fn of(&self, subject: &Subject) -> Used {
        let subject = subject.to_rbac();
        let mut used = Used::default();
        for call in self
            .calls
            .iter()
            .filter(|call| rbac::subject_matches(&subject, &call.who))
        {
            used.calls += 1;
            used.verbs
                .entry(call.subresource.clone())
                .or_default()
                .insert(call.verb.clone());
            if call.subresource == "proxy" {
                used.through_proxy.insert(call.endpoint.clone());
            }
        }
        used
    }
}

/// One call that went through.
struct Call {
    who: Identity,
    subresource: String,
    verb: String,
    endpoint: String,
}

impl Call {
    /// The call an event records, if it is a kubelet call that went through.
    fn of(event: &Recorded) -> Option<Call> {
        let object = event.object_ref.as_ref()?;
        let annotation = |key: &str| event.annotations.get(key).map(String::as_str);
        let allowed = annotation(audit::DECISION) == Some("allow");
        let forwarded = annotation(audit::OBSERVED).is_some()
            && !matches!(event.response_status.code, 401 | 403);
        let usable = object.resource == "nodes"
            && !object.subresource.is_empty()
            && !event.verb.is_empty()
            && !event.user.username.is_empty();
        if !usable || !(allowed || forwarded) {
            return None;
        }
        let mut subresource = object.subresource.clone();
        if subresource == "proxy" && annotation(audit::PROXY_FALLBACK) == Some("true") {
            // `pods=deny,proxy=allow`: the caller needs only what was checked first.
            let first = annotation(audit::CHECKS)
                .and_then(|checks| checks.split(',').next())
                .and_then(|check| check.split('=').next())
                .filter(|first| !first.is_empty() && *first != "proxy");
            if let Some(first) = first {
                first.clone_into(&mut subresource);
            }
        }
        let path = event.request_uri.split('?').next().unwrap_or_default();
        let endpoint = path.split('/').find(|segment| !segment.is_empty());
        Some(Call {
            who: Identity {
                name: event.user.username.clone(),
                uid: String::new(),
                groups: event.user.groups.clone(),
                extra: BTreeMap::new(),
            },
            subresource,
            verb: event.verb.clone(),
            endpoint: format!("/{}", endpoint.unwrap_or_default()),
        })
    }
}

/// The fields of an `audit::Event` (or `EventList`) this module reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    verb: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    user: RecordedUser,
    #[serde(default)]
    object_ref: Option<RecordedObject>,
    #[serde(default)]
    response_status: RecordedStatus,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    items: Vec<Recorded>,
}

#[derive(Default, Deserialize)]
struct RecordedUser {
    #[serde(default)]
    username: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Deserialize)]
struct RecordedObject {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
}

#[derive(Default, Deserialize)]
struct RecordedStatus {
    #[serde(default)]
    code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, verb: &str, subresource: &str, decision: &str, extra: &str) -> String {
        format!(
            r#"{{"kind":"Event","verb":"{verb}","requestURI":"/x","user":{{"username":"{user}","groups":["g"]}},"objectRef":{{"resource":"nodes","name":"n","subresource":"{subresource}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"annotations":{{"authorization.k8s.io/decision":"{decision}"{extra}}}}}"#
        )
    }

    fn subject(kind: &str, name: &str, namespace: &str) -> Subject {
        Subject {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    #[test]
    fn denied_calls_do_not_count() {
        let log = event("alice", "get", "metrics", "allow", "")
            + "\n"
            + &event("alice", "create", "proxy", "forbid", "");
        let used = Usage::parse("a.log", &log).of(&subject("User", "alice", ""));
        assert_eq!(used.calls, 1);
        assert_eq!(used.verbs.keys().collect::<Vec<_>>(), ["metrics"]);
    }

    #[test]
    fn fallback_calls_count_for_the_fine_grained_subresource() {
        let extra = r#","kubelet-guard.io/proxy-fallback":"true","kubelet-guard.io/checks":"pods=deny,proxy=allow""#;
        let log = event("alice", "get", "proxy", "allow", extra);
        let used = Usage::parse("a.log", &log).of(&subject("User", "alice", ""));
        assert_eq!(used.verbs.keys().collect::<Vec<_>>(), ["pods"]);
        assert!(used.through_proxy.is_empty());
    }

    #[test]
    fn groups_and_service_accounts_match_their_members() {
        let log = event(
            "system:serviceaccount:mon:prom",
            "get",
            "stats",
            "allow",
            "",
        );
        let usage = Usage::parse("a.log", &log);
        assert_eq!(usage.of(&subject("ServiceAccount", "prom", "mon")).calls, 1);
        assert_eq!(
            usage.of(&subject("ServiceAccount", "prom", "other")).calls,
            0
        );
        assert_eq!(usage.of(&subject("Group", "g", "")).calls, 1);
    }

    #[test]
    fn unreadable_lines_are_reported_with_their_number() {
        let log = format!("{}\n\nnot json\n", event("a", "get", "stats", "allow", ""));
        let usage = Usage::parse("a.log", &log);
        assert_eq!(usage.calls.len(), 1);
        assert_eq!(usage.warnings.len(), 1);
        assert!(
            usage.warnings[0].starts_with("a.log:3: "),
            "{:?}",
            usage.warnings
        );
    }
}
