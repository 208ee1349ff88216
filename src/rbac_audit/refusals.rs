//! Observed refusals: from kubelet-guard's audit log, per caller, the requests the guard refused
//! or, in `--mode=observe`, would have refused (`kubelet-guard.io/observe: would-forbid`), how
//! many, by verb and resource, and the least-privilege grant that would allow them. This is the
//! table to read before switching a node from observe to enforce.
//!
//! A request counts when the guard's authorization said no: the `authorization.k8s.io/decision`
//! annotation is `forbid` (enforced, or observed), or the `--pod-scoped-authz` check denied
//! (`kubelet-guard.io/pod-check: ... =deny`). What it needs is the first subresource the guard
//! checked (`kubelet-guard.io/checks`): `nodes/pods` for `/pods`, not the `nodes/proxy` fallback.
//! Callers the guard could not authenticate (`would-unauthenticated`) have no name to grant to:
//! they are counted by source address and user agent. Failed reviews are counted, not blamed.
//!
//! Must not: decide anything itself; the audit log holds the guard's decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use serde::Serialize;

use super::findings::Subject;
use super::suggest::{self, SuggestedRule, Suggestion};
use super::usage::Recorded;
use crate::audit;

/// One refused (or would-be refused) request.
pub(super) struct Refused {
    who: Caller,
    verb: String,
    /// What would allow it: `nodes/pods`, or `pods/exec` with its namespace.
    need: Need,
    path: String,
}

/// Who was refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    /// An authenticated caller: the user name the guard authorized.
    User(String),
    /// A caller the guard could not authenticate: where it came from.
    Unauthenticated { source: String, agent: String },
    /// The API server could not review the request: nobody's fault to grant away.
    Undecided,
}

/// The permission a refused request lacked.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Need {
    /// `nodes/<subresource>`, or `pods/<subresource>` for a pod check.
    pub resource: String,
    /// The namespace of a pod check; empty for node subresources.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// Everything one caller was refused, with the grant that would allow it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallerRefusals {
    /// The user name, as the guard authenticated it.
    pub user: String,
    /// The RBAC subject that name denotes.
    pub subject: Subject,
    /// How many requests were refused.
    pub requests: usize,
    /// By verb and resource, in order.
    pub refused: Vec<RefusedGroup>,
    /// The ClusterRole that would allow the node subresources (none when only pod checks failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
    /// Namespaced rules the pod checks of `--pod-scoped-authz` need: namespace and rule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaced: Vec<(String, SuggestedRule)>,
}

/// The requests of one caller refused for one verb and resource.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedGroup {
    /// The verb authorized.
    pub verb: String,
    /// What it lacked.
    #[serde(flatten)]
    pub need: Need,
    /// How many.
    pub count: usize,
    /// Distinct paths, first few only.
    pub paths: Vec<String>,
}

/// Callers the guard could not authenticate, by where they came from.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unauthenticated {
    /// The peer address.
    pub source: String,
    /// The `User-Agent`, if any.
    pub user_agent: String,
    /// How many requests.
    pub requests: usize,
}

/// The whole observed-refusals report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusals {
    /// Audit events read.
    pub events: usize,
    /// Per caller, most refused first.
    pub callers: Vec<CallerRefusals>,
    /// Callers without valid credentials.
    pub unauthenticated: Vec<Unauthenticated>,
    /// Requests whose review failed (API server errors), not attributed to anyone.
    pub undecided: usize,
}

/// One caller's refusals: (verb, need) → (count, first distinct paths).
type Groups<'a> = BTreeMap<(&'a str, &'a Need), (usize, BTreeSet<&'a str>)>;

/// Distinct paths kept per group.
const PATHS_KEPT: usize = 3;

impl Refused {
    /// The refusal an event records, if it records one.
    pub(super) fn of(event: &Recorded) -> Option<Refused> {
        let observed = event.annotation(audit::OBSERVED);
        let forbidden = event.annotation(audit::DECISION) == Some("forbid");
        let pod_denied = event
            .annotation(audit::POD_CHECK)
            .filter(|check| check.ends_with("=deny"));
        let path = event.path().to_owned();
        let user = event.user.username.clone();
        let who = match observed {
            Some("would-unauthenticated") => Caller::Unauthenticated {
                source: event.source_ips.first().cloned().unwrap_or_default(),
                agent: event.user_agent.clone().unwrap_or_default(),
            },
            Some("would-error") => Caller::Undecided,
            _ if user.is_empty() => return None,
            _ => Caller::User(user),
        };
        let (verb, need) = match (&who, pod_denied) {
            // The node check allowed, the pod check did not: the verb is the pod check's.
            (Caller::User(_), Some(check)) if !forbidden => {
                let verb = check.split(' ').next().unwrap_or_default().to_owned();
                (verb, pod_need(check)?)
            }
            (Caller::User(_), _) if forbidden => (event.verb.clone(), node_need(event)?),
            (Caller::User(_), _) => return None,
            _ => (event.verb.clone(), Need::default()),
        };
        Some(Refused {
            who,
            verb,
            need,
            path,
        })
    }
}

impl Refusals {
    /// Gathers `refused` per caller.
    pub(super) fn gather(events: usize, refused: &[Refused]) -> Refusals {
        let mut users: BTreeMap<&str, Groups<'_>> = BTreeMap::new();
        let mut unauthenticated: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut undecided = 0;
        for refusal in refused {
            match &refusal.who {
                Caller::User(user) => {
                    let group = users
                        .entry(user)
                        .or_default()
                        .entry((&refusal.verb, &refusal.need))
                        .or_default();
                    group.0 += 1;
                    if group.1.len() < PATHS_KEPT {
                        group.1.insert(&refusal.path);
                    }
                }
                Caller::Unauthenticated { source, agent } => {
                    *unauthenticated.entry((source, agent)).or_default() += 1;
                }
                Caller::Undecided => undecided += 1,
            }
        }
        let mut callers: Vec<CallerRefusals> = users
            .into_iter()
            .map(|(user, groups)| caller(user, groups))
            .collect();
        callers.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.user.cmp(&b.user)));
        let mut unauthenticated: Vec<Unauthenticated> = unauthenticated
            .into_iter()
            .map(|((source, agent), requests)| Unauthenticated {
                source: source.to_owned(),
                user_agent: agent.to_owned(),
                requests,
            })
            .collect();
        unauthenticated.sort_by_key(|unknown| std::cmp::Reverse(unknown.requests));
        Refusals {
            events,
            callers,
            unauthenticated,
            undecided,
        }
    }

    /// The callers whose node-subresource suggestions `--emit-roles` writes.
    pub(super) fn suggestions(&self) -> impl Iterator<Item = (&Subject, &Suggestion)> {
        self.callers
            .iter()
            .filter_map(|caller| Some((&caller.subject, caller.suggestion.as_ref()?)))
    }

    /// Writes the table: one row per caller, verb and resource, then the grants.
    pub(super) fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        if self.callers.is_empty() && self.unauthenticated.is_empty() {
            writeln!(
                out,
                "No request was refused, or would have been refused in observe mode, among {} \
                 audit events.",
                self.events
            )?;
        } else {
            writeln!(
                out,
                "Refused, or would be refused once enforced (from {} audit events):",
                self.events
            )?;
            let header = ["USER", "REFUSED", "VERB", "RESOURCE", "PATHS"].map(str::to_owned);
            let mut rows = Vec::new();
            for caller in &self.callers {
                for (index, group) in caller.refused.iter().enumerate() {
                    let resource = match group.need.namespace.as_str() {
                        "" => group.need.resource.clone(),
                        namespace => format!("{} in {namespace}", group.need.resource),
                    };
                    let user = match index {
                        0 => caller.user.clone(),
                        _ => String::new(),
                    };
                    let cells = [
                        user,
                        group.count.to_string(),
                        group.verb.clone(),
                        resource,
                        group.paths.join(", "),
                    ];
                    rows.push(cells.map(|cell| super::report::clean(&cell)));
                }
            }
            for unknown in &self.unauthenticated {
                let who = format!(
                    "(no valid credentials) from {} {}",
                    unknown.source, unknown.user_agent
                );
                let cells = [
                    who,
                    unknown.requests.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ];
                rows.push(cells.map(|cell| super::report::clean(&cell)));
            }
            super::report::columns(out, &header, &rows)?;
        }
        if !self.callers.is_empty() {
            writeln!(out, "\nLeast-privilege grants that would allow them:")?;
        }
        for caller in &self.callers {
            writeln!(
                out,
                "  {}:",
                super::report::clean(&caller.subject.to_string())
            )?;
            if let Some(suggestion) = &caller.suggestion {
                super::report::suggestion(out, suggestion)?;
            }
            for (namespace, rule) in &caller.namespaced {
                writeln!(
                    out,
                    "    Role in namespace {}\n      {} on {}",
                    super::report::clean(namespace),
                    rule.verbs.join(", "),
                    super::report::clean(&rule.resources.join(", "))
                )?;
            }
        }
        if self.undecided > 0 {
            writeln!(
                out,
                "\n{} requests could not be reviewed (API server errors): no grant decides them.",
                self.undecided
            )?;
        }
        Ok(())
    }
}

/// The permission a node-subresource refusal lacked: the first subresource checked, since the
/// `nodes/proxy` fallback is exactly what least privilege avoids.
fn node_need(event: &Recorded) -> Option<Need> {
    let first = event
        .annotation(audit::CHECKS)
        .and_then(|checks| checks.split(',').next())
        .and_then(|check| check.split('=').next())
        .filter(|first| !first.is_empty())
        .map(str::to_owned)
        .or_else(|| Some(event.object_ref.as_ref()?.subresource.clone()))
        .filter(|subresource| !subresource.is_empty())?;
    Some(Need {
        resource: format!("nodes/{first}"),
        namespace: String::new(),
    })
}

/// The permission a pod check lacked, from `create pods/exec team-a/web=deny`.
fn pod_need(check: &str) -> Option<Need> {
    let mut words = check.split(' ');
    let (_verb, resource, pod) = (words.next()?, words.next()?, words.next()?);
    let namespace = pod.split('/').next().filter(|ns| !ns.is_empty())?;
    Some(Need {
        resource: resource.to_owned(),
        namespace: namespace.to_owned(),
    })
}

/// One caller's groups and the grants that would allow them.
fn caller(user: &str, groups: Groups<'_>) -> CallerRefusals {
    let subject = subject_of(user);
    let mut nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pods: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut requests = 0;
    for ((verb, need), (count, paths)) in groups {
        requests += count;
        match need.resource.strip_prefix("nodes/") {
            Some(subresource) if need.namespace.is_empty() => {
                nodes
                    .entry(subresource.to_owned())
                    .or_default()
                    .insert(verb.to_owned());
            }
            _ => {
                pods.entry((need.namespace.clone(), need.resource.clone()))
                    .or_default()
                    .insert(verb.to_owned());
            }
        }
        refused.push(RefusedGroup {
            verb: verb.to_owned(),
            need: need.clone(),
            count,
            paths: paths.into_iter().map(str::to_owned).collect(),
        });
    }
    let suggestion = (!nodes.is_empty()).then(|| suggest::for_refusals(&subject, &nodes));
    let namespaced = pods
        .into_iter()
        .map(|((namespace, resource), verbs)| {
            let rule = SuggestedRule {
                api_groups: vec![String::new()],
                resources: vec![resource],
                verbs: verbs.into_iter().collect(),
            };
            (namespace, rule)
        })
        .collect();
    CallerRefusals {
        user: user.to_owned(),
        subject,
        requests,
        refused,
        suggestion,
        namespaced,
    }
}

/// The RBAC subject a user name denotes: `system:serviceaccount:<ns>:<name>` is a
/// ServiceAccount, anything else a User.
fn subject_of(user: &str) -> Subject {
    let account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty());
    match account {
        Some((namespace, name)) => Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        },
        None => Subject {
            kind: "User".to_owned(),
            name: user.to_owned(),
            namespace: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(json: &str) -> Recorded {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_first_check_is_what_is_needed_not_the_fallback() {
        let event = recorded(
            r#"{"kind":"Event","verb":"get","requestURI":"/pods?x=1","user":{"username":"system:serviceaccount:mon:agent"},"objectRef":{"resource":"nodes","subresource":"proxy"},"annotations":{"authorization.k8s.io/decision":"forbid","kubelet-guard.io/checks":"pods=deny,proxy=deny","kubelet-guard.io/observe":"would-forbid"}}"#,
        );
        let refused = Refused::of(&event).unwrap();
        assert_eq!(refused.need.resource, "nodes/pods");
        assert_eq!(refused.path, "/pods");
        let report = Refusals::gather(1, &[refused]);
        let caller = &report.callers[0];
        assert_eq!(caller.subject.to_string(), "ServiceAccount mon/agent");
        let rules = &caller.suggestion.as_ref().unwrap().rules;
        assert_eq!(rules[0].resources, ["nodes/pods"]);
        assert_eq!(rules[0].verbs, ["get"]);
    }

    #[test]
    fn allowed_requests_are_not_refusals_but_failed_pod_checks_are() {
        let allowed = recorded(
            r#"{"kind":"Event","verb":"create","requestURI":"/exec/a/b/c","user":{"username":"u"},"annotations":{"authorization.k8s.io/decision":"allow","kubelet-guard.io/checks":"proxy=allow"}}"#,
        );
        assert!(Refused::of(&allowed).is_none());
        let pod = recorded(
            r#"{"kind":"Event","verb":"create","requestURI":"/exec/team-a/web/c","user":{"username":"u"},"annotations":{"authorization.k8s.io/decision":"allow","kubelet-guard.io/pod-check":"create pods/exec team-a/web=deny"}}"#,
        );
        let refused = Refused::of(&pod).unwrap();
        assert_eq!(
            refused.need,
            Need {
                resource: "pods/exec".to_owned(),
                namespace: "team-a".to_owned()
            }
        );
        let report = Refusals::gather(2, &[refused]);
        assert!(report.callers[0].suggestion.is_none());
        assert_eq!(report.callers[0].namespaced[0].0, "team-a");
    }

    #[test]
    fn unauthenticated_callers_are_counted_by_source() {
        let event = recorded(
            r#"{"kind":"Event","verb":"get","requestURI":"/metrics","user":{"username":""},"sourceIPs":["10.0.0.7"],"userAgent":"curl/8","annotations":{"kubelet-guard.io/observe":"would-unauthenticated"}}"#,
        );
        let report = Refusals::gather(1, &[Refused::of(&event).unwrap()]);
        assert!(report.callers.is_empty());
        assert_eq!(report.unauthenticated[0].source, "10.0.0.7");
        assert_eq!(report.unauthenticated[0].requests, 1);
    }
}
