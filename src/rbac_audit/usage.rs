//! What each caller used, read from kubelet-guard's own audit log (`--from-audit-log`): JSON lines
//! of the `audit.k8s.io/v1` `Event`s that `audit` defines, or `EventList` batches as the webhook
//! sink posts them.
//!
//! A call counts when it went through: the guard allowed it (`authorization.k8s.io/decision:
//! allow`), or observe mode forwarded it and the kubelet did not refuse it. Its subresource is the
//! one that decided (`objectRef.subresource`), except when the `nodes/proxy` fallback decided: then
//! the caller needs only the fine-grained subresource checked first (`kubelet-guard.io/checks`).
//! Lines that are not events (the guard's log lines, when `kubectl logs` mixes them in) are
//! skipped and counted. The same pass gathers the requests the guard refused, or would have
//! refused in observe mode, for [`super::refusals`].
//!
//! The file may be `-`, standard input: `kubectl logs ds/kubelet-guard | kubelet-guard rbac-audit
//! --from-audit-log -`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::findings::Subject;
use super::refusals::Refused;
use crate::audit;
use crate::authn::Identity;
use crate::authz::rbac;

/// The calls of one audit log.
pub(super) struct Usage {
    calls: Vec<Call>,
    /// Requests refused, or that observe mode would have refused, in log order.
    pub(super) refused: Vec<Refused>,
    /// How many audit events the log held.
    pub(super) events: usize,
    /// Lines skipped because they are not audit events, with their numbers.
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

/// The `--from-audit-log` value that means standard input.
pub(super) const STDIN: &str = "-";

impl Usage {
    /// Reads an audit log file, or standard input for `-`.
    pub(super) fn read(path: &Path, stdin: &mut dyn Read) -> std::io::Result<Usage> {
        if path.as_os_str() == STDIN {
            let mut text = String::new();
            stdin.read_to_string(&mut text)?;
            return Ok(Usage::parse("standard input", &text));
        }
        let text = std::fs::read_to_string(path)?;
        Ok(Usage::parse(&path.display().to_string(), &text))
    }

    /// Reads the lines of an audit log named `source` (for warnings).
    pub(super) fn parse(source: &str, text: &str) -> Usage {
        let mut usage = Usage {
            calls: Vec::new(),
            refused: Vec::new(),
            events: 0,
            warnings: Vec::new(),
        };
        let mut skipped = Vec::new();
        // A stream's or a log's start and end are two events with one audit ID and one call: it
        // counts once, from whichever is read first (a stream still open has only its start).
        let mut seen = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let recorded = match serde_json::from_str::<Recorded>(line) {
                Ok(recorded) => recorded,
                Err(e) => {
                    skipped.push((index + 1, e.to_string()));
                    continue;
                }
            };
            let events = match recorded.kind.as_str() {
                audit::EVENT_LIST_KIND => recorded.items,
                audit::EVENT_KIND => vec![recorded],
                other => {
                    skipped.push((index + 1, format!("a JSON object of kind {other:?}")));
                    continue;
                }
            };
            for event in &events {
                usage.events += 1;
                let repeated = if event.audit_id.is_empty() {
                    // No ID to pair them by: the start is the one left out.
                    event.stage == "ResponseStarted"
                } else {
                    !seen.insert(event.audit_id.clone())
                };
                if repeated {
                    continue;
                }
                usage.calls.extend(Call::of(event));
                usage.refused.extend(Refused::of(event));
            }
        }
        if let Some((line, why)) = skipped.first() {
            usage.warnings.push(format!(
                "{source}:{line}: skipped {} lines that are not audit events (log lines?), the \
                 first here: {why}",
                skipped.len()
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
            who: Identity::new(
                event.user.username.clone(),
                "",
                event.user.groups.as_slice(),
                BTreeMap::new(),
            ),
            subresource,
            verb: event.verb.clone(),
            endpoint: format!("/{}", endpoint.unwrap_or_default()),
        })
    }
}

/// The fields of an `audit::Event` (or `EventList`) this module and `refusals` read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Recorded {
    #[serde(default)]
    kind: String,
    #[serde(default, rename = "auditID")]
    audit_id: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    pub(super) verb: String,
    #[serde(default, rename = "requestURI")]
    pub(super) request_uri: String,
    #[serde(default)]
    pub(super) user: RecordedUser,
    #[serde(default, rename = "sourceIPs")]
    pub(super) source_ips: Vec<String>,
    #[serde(default)]
    pub(super) user_agent: Option<String>,
    #[serde(default)]
    pub(super) object_ref: Option<RecordedObject>,
    #[serde(default)]
    pub(super) response_status: RecordedStatus,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
    #[serde(default)]
    items: Vec<Recorded>,
}

/// The caller an event names.
#[derive(Default, Deserialize)]
pub(super) struct RecordedUser {
    #[serde(default)]
    pub(super) username: String,
    #[serde(default)]
    pub(super) groups: Vec<String>,
}

/// The node and subresource an event names.
#[derive(Deserialize)]
pub(super) struct RecordedObject {
    #[serde(default)]
    pub(super) resource: String,
    #[serde(default)]
    pub(super) subresource: String,
}

/// The status the caller received.
#[derive(Default, Deserialize)]
pub(super) struct RecordedStatus {
    #[serde(default)]
    pub(super) code: u16,
}

impl Recorded {
    /// The annotation `key`, if the event has it.
    pub(super) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// The request's path, without its query.
    pub(super) fn path(&self) -> &str {
        self.request_uri.split('?').next().unwrap_or_default()
    }
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
    fn a_stream_started_and_completed_is_one_call_and_one_still_open_is_one_too() {
        let with_id = |id: &str| {
            event("alice", "get", "proxy", "allow", "").replacen(
                r#""kind":"Event""#,
                &format!(r#""kind":"Event","auditID":"{id}""#),
                1,
            )
        };
        // Started and completed, then one whose end is not in the log yet.
        let log = [with_id("a"), with_id("a"), with_id("b")].join("\n");
        let usage = Usage::parse("a.log", &log);
        assert_eq!(usage.events, 3);
        assert_eq!(usage.of(&subject("User", "alice", "")).calls, 2);
        // Without IDs, the start is left out.
        let complete = event("alice", "get", "proxy", "allow", "");
        let started = complete.replacen(
            r#""kind":"Event""#,
            r#""kind":"Event","stage":"ResponseStarted""#,
            1,
        );
        let usage = Usage::parse("a.log", &(started + "\n" + &complete));
        assert_eq!(usage.of(&subject("User", "alice", "")).calls, 1);
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
    fn lines_that_are_not_events_are_skipped_and_counted() {
        let log = format!(
            "{}\n\nnot json\n{{\"level\":\"INFO\",\"fields\":{{}}}}\n",
            event("a", "get", "stats", "allow", "")
        );
        let usage = Usage::parse("a.log", &log);
        assert_eq!(usage.calls.len(), 1);
        assert_eq!(usage.events, 1);
        assert_eq!(usage.warnings.len(), 1);
        assert!(
            usage.warnings[0].starts_with("a.log:3: skipped 2 lines"),
            "{:?}",
            usage.warnings
        );
    }
}
