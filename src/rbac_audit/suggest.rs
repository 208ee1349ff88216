//! Suggestions: for each subject holding `nodes/proxy` (short of expected admin access), the
//! least-privilege ClusterRole that replaces the grant, and `--emit-roles` to write it.
//!
//! With `--from-audit-log`, the role grants exactly the subresources and verbs the subject used
//! (keeping `nodes/proxy` only for what reached it directly, such as `/exec`); without it, the
//! conservative default of metrics agents (`get` on `nodes/metrics`, `nodes/stats`, `nodes/pods`),
//! labelled as a guess. Emitted files are plain YAML, one ClusterRole and its ClusterRoleBinding
//! per subject, for a human to review and apply before removing the old grant.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::findings::{Finding, SUBRESOURCES, Severity, Subject, Via};
use super::usage::Usage;

/// What a suggestion is based on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    /// kubelet-guard's audit log: what the subject was seen using.
    AuditLog,
    /// No audit log: the conservative default of metrics agents.
    Guess,
}

/// One rule of a suggested ClusterRole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestedRule {
    /// Always the core group, `[""]`.
    pub api_groups: Vec<String>,
    /// `nodes/<subresource>`, in report order.
    pub resources: Vec<String>,
    /// Sorted.
    pub verbs: Vec<String>,
}

/// The least-privilege replacement of one subject's `nodes/proxy` grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Suggestion {
    /// What it is based on.
    pub basis: Basis,
    /// Name of the suggested ClusterRole and of its ClusterRoleBinding.
    pub cluster_role: String,
    /// Its rules; empty when the subject needs no kubelet access at all.
    pub rules: Vec<SuggestedRule>,
    /// The bindings and roles granting `nodes/proxy` today, to remove once it is applied.
    pub replaces: Vec<Via>,
    /// Why, in a sentence.
    pub note: String,
}

/// Said wherever a suggestion drops `nodes/proxy`.
pub const NODE_PROXY_NOTE: &str = "Dropping nodes/proxy also breaks scraping through the API \
     server's node proxy (/api/v1/nodes/NAME/proxy/...): the API server requires nodes/proxy for \
     it, whatever the kubelet allows. Scrape the node's address (https://NODE_IP:10250/...) \
     instead before removing the grant";

/// The default for subjects whose use is unknown: what metrics and pod-listing agents need.
const GUESS: [&str; 3] = ["metrics", "stats", "pods"];

/// Attaches a suggestion to every `nodes/proxy` finding short of expected admin access, but not
/// to a bootstrap role's subjects: what fixes theirs is the aggregated role, not a binding.
pub(super) fn attach(findings: &mut [Finding], usage: Option<&Usage>) {
    for finding in findings.iter_mut() {
        if finding.subresource == "nodes/proxy"
            && finding.severity != Severity::Info
            && !finding.subject.is_bootstrap_holders()
        {
            finding.suggestion = Some(suggest(&finding.subject, &finding.via, usage));
        }
    }
}

/// The suggestions of `findings`, with their subjects, for [`emit`].
pub(super) fn of_findings(findings: &[Finding]) -> impl Iterator<Item = (&Subject, &Suggestion)> {
    findings
        .iter()
        .filter_map(|finding| Some((&finding.subject, finding.suggestion.as_ref()?)))
}

/// The ClusterRole that would allow what `subject` was refused: `used` is subresource → verbs.
pub(super) fn for_refusals(
    subject: &Subject,
    used: &BTreeMap<String, BTreeSet<String>>,
) -> Suggestion {
    Suggestion {
        basis: Basis::AuditLog,
        cluster_role: role_name(subject),
        rules: rules(used),
        replaces: Vec::new(),
        note: "from the audit log: what this subject was refused, or would be once enforced; \
               grant it only if the caller should have it"
            .to_owned(),
    }
}

/// Writes one YAML file per suggestion with rules into `dir`, created if needed; returns the
/// files written, or the path that failed.
pub(super) fn emit<'a>(
    dir: &Path,
    suggestions: impl Iterator<Item = (&'a Subject, &'a Suggestion)>,
) -> Result<Vec<PathBuf>, (PathBuf, std::io::Error)> {
    std::fs::create_dir_all(dir).map_err(|e| (dir.to_owned(), e))?;
    let mut written = Vec::new();
    let mut taken = BTreeSet::new();
    for (subject, suggestion) in suggestions {
        if suggestion.rules.is_empty() {
            continue;
        }
        let stem = file_stem(&suggestion.cluster_role);
        let mut name = format!("{stem}.yaml");
        let mut counter = 1;
        while !taken.insert(name.clone()) {
            counter += 1;
            name = format!("{stem}-{counter}.yaml");
        }
        let path = dir.join(name);
        std::fs::write(&path, manifest(subject, suggestion)).map_err(|e| (path.clone(), e))?;
        written.push(path);
    }
    Ok(written)
}

/// The suggestion for one subject.
fn suggest(subject: &Subject, replaces: &[Via], usage: Option<&Usage>) -> Suggestion {
    let cluster_role = role_name(subject);
    let replaces = replaces.to_vec();
    let Some(usage) = usage else {
        let used = GUESS
            .iter()
            .map(|subresource| {
                (
                    (*subresource).to_owned(),
                    BTreeSet::from(["get".to_owned()]),
                )
            })
            .collect();
        let note = "a guess, since no --from-audit-log was given: the conservative default of \
                    metrics and pod-listing agents; run kubelet-guard in front of the kubelets \
                    and pass its audit log to know what this subject uses"
            .to_owned();
        let rules = rules(&used);
        return Suggestion {
            basis: Basis::Guess,
            note: with_node_proxy_note(note, &rules),
            cluster_role,
            rules,
            replaces,
        };
    };
    let used = usage.of(subject);
    let note = match (used.calls, used.through_proxy.is_empty()) {
        (0, _) => "the audit log records no kubelet call by this subject: remove its nodes/proxy \
                   grant"
            .to_owned(),
        (calls, true) => format!(
            "from the audit log: exactly the subresources and verbs this subject used ({calls} \
             calls)"
        ),
        (calls, false) => {
            let endpoints: Vec<&str> = used.through_proxy.iter().map(String::as_str).collect();
            format!(
                "from the audit log: exactly the subresources and verbs this subject used ({calls} \
                 calls); it still needs nodes/proxy for {}, which no fine-grained subresource \
                 replaces",
                endpoints.join(", ")
            )
        }
    };
    let rules = rules(&used.verbs);
    Suggestion {
        basis: Basis::AuditLog,
        note: with_node_proxy_note(note, &rules),
        cluster_role,
        rules,
        replaces,
    }
}

/// `note`, and when `rules` drop `nodes/proxy`, what that means for an agent that scrapes
/// through the API server's node proxy: the API server checks `nodes/proxy` itself, whatever the
/// kubelet (or the guard) would allow.
fn with_node_proxy_note(note: String, rules: &[SuggestedRule]) -> String {
    let keeps_proxy = rules
        .iter()
        .any(|rule| rule.resources.iter().any(|r| r == "nodes/proxy"));
    match keeps_proxy {
        true => note,
        false => format!("{note}. {NODE_PROXY_NOTE}"),
    }
}

/// Rules for `used` (subresource → verbs): one rule per distinct verb set, subresources in report
/// order.
fn rules(used: &BTreeMap<String, BTreeSet<String>>) -> Vec<SuggestedRule> {
    let mut by_verbs: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    let known = SUBRESOURCES.iter().map(|s| (*s).to_owned());
    let unknown = used
        .keys()
        .filter(|s| !SUBRESOURCES.contains(&s.as_str()))
        .cloned();
    for subresource in known.chain(unknown) {
        if let Some(verbs) = used.get(&subresource) {
            let verbs: Vec<String> = verbs.iter().cloned().collect();
            by_verbs
                .entry(verbs)
                .or_default()
                .push(format!("nodes/{subresource}"));
        }
    }
    let mut rules: Vec<SuggestedRule> = by_verbs
        .into_iter()
        .map(|(verbs, resources)| SuggestedRule {
            api_groups: vec![String::new()],
            resources,
            verbs,
        })
        .collect();
    rules.sort_by(|a, b| a.resources.cmp(&b.resources));
    rules
}

/// `kubelet-api:sa:<namespace>:<name>`, `kubelet-api:user:<name>`, `kubelet-api:group:<name>`,
/// kept usable as an object name (no `/` or `%`).
fn role_name(subject: &Subject) -> String {
    let name = match subject.kind.as_str() {
        "ServiceAccount" => format!("kubelet-api:sa:{}:{}", subject.namespace, subject.name),
        "User" => format!("kubelet-api:user:{}", subject.name),
        _ => format!("kubelet-api:group:{}", subject.name),
    };
    name.chars()
        .map(|c| match c {
            '/' | '%' => '-',
            c if c.is_control() || c.is_whitespace() => '-',
            c => c,
        })
        .take(253)
        .collect()
}

/// A portable file name for a role name.
fn file_stem(role: &str) -> String {
    role.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect()
}

/// The ClusterRole and ClusterRoleBinding of a suggestion, as YAML (scalars JSON-quoted, which
/// YAML reads as double-quoted strings).
fn manifest(subject: &Subject, suggestion: &Suggestion) -> String {
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let list = |items: &[String]| {
        let quoted: Vec<String> = items.iter().map(|item| quote(item)).collect();
        format!("[{}]", quoted.join(", "))
    };
    let comment = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let name = quote(&suggestion.cluster_role);
    let basis = match suggestion.basis {
        Basis::AuditLog => "audit-log",
        Basis::Guess => "guess",
    };
    let mut yaml = String::new();
    let _ = writeln!(
        yaml,
        "# Suggested by kubelet-guard rbac-audit for {}.",
        comment(&subject.to_string())
    );
    let _ = writeln!(yaml, "# Basis: {}.", comment(&suggestion.note));
    for via in &suggestion.replaces {
        let _ = writeln!(
            yaml,
            "# Replaces nodes/proxy from ClusterRoleBinding {} (ClusterRole {}, {}): remove it there once this is applied.",
            comment(&via.binding),
            comment(&via.role),
            comment(&via.location.to_string())
        );
    }
    let _ = write!(
        yaml,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\n  \
         labels:\n    app.kubernetes.io/managed-by: kubelet-guard-rbac-audit\n  annotations:\n    \
         kubelet-guard.io/suggestion-basis: {basis}\nrules:\n"
    );
    for rule in &suggestion.rules {
        let _ = write!(
            yaml,
            "- apiGroups: [\"\"]\n  resources: {}\n  verbs: {}\n",
            list(&rule.resources),
            list(&rule.verbs)
        );
    }
    let _ = write!(
        yaml,
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  \
         name: {name}\n  labels:\n    app.kubernetes.io/managed-by: kubelet-guard-rbac-audit\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\n\
         subjects:\n- kind: {}\n  name: {}\n",
        quote(&subject.kind),
        quote(&subject.name)
    );
    match subject.kind.as_str() {
        "ServiceAccount" => {
            let _ = writeln!(yaml, "  namespace: {}", quote(&subject.namespace));
        }
        _ => yaml.push_str("  apiGroup: rbac.authorization.k8s.io\n"),
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::rbac::Policy;

    fn account() -> Subject {
        Subject {
            kind: "ServiceAccount".to_owned(),
            name: "prom".to_owned(),
            namespace: "mon".to_owned(),
        }
    }

    #[test]
    fn the_guess_is_labelled_and_read_only() {
        let suggestion = suggest(&account(), &[], None);
        assert_eq!(suggestion.basis, Basis::Guess);
        assert_eq!(suggestion.cluster_role, "kubelet-api:sa:mon:prom");
        assert_eq!(suggestion.rules.len(), 1);
        assert_eq!(
            suggestion.rules[0].resources,
            ["nodes/metrics", "nodes/stats", "nodes/pods"]
        );
        assert_eq!(suggestion.rules[0].verbs, ["get"]);
        assert!(suggestion.note.starts_with("a guess"));
    }

    #[test]
    fn a_suggestion_that_drops_nodes_proxy_says_what_breaks_at_the_api_server() {
        let guess = suggest(&account(), &[], None);
        assert!(guess.note.ends_with(NODE_PROXY_NOTE), "{}", guess.note);
        let keeps = with_node_proxy_note(
            "kept".to_owned(),
            &rules(&BTreeMap::from([(
                "proxy".to_owned(),
                BTreeSet::from(["create".to_owned()]),
            )])),
        );
        assert_eq!(keeps, "kept");
    }

    #[test]
    fn rules_group_subresources_by_verbs() {
        let used = BTreeMap::from([
            ("stats".to_owned(), BTreeSet::from(["get".to_owned()])),
            (
                "proxy".to_owned(),
                BTreeSet::from(["create".to_owned(), "get".to_owned()]),
            ),
            ("metrics".to_owned(), BTreeSet::from(["get".to_owned()])),
        ]);
        let rules = rules(&used);
        let shape: Vec<_> = rules
            .iter()
            .map(|r| (r.resources.clone(), r.verbs.clone()))
            .collect();
        assert_eq!(
            shape,
            [
                (
                    vec!["nodes/metrics".to_owned(), "nodes/stats".to_owned()],
                    vec!["get".to_owned()]
                ),
                (
                    vec!["nodes/proxy".to_owned()],
                    vec!["create".to_owned(), "get".to_owned()]
                ),
            ]
        );
    }

    #[test]
    fn manifests_parse_as_the_policy_they_describe() {
        let mut subject = account();
        subject.name = "we\"ird: name # not a comment".to_owned();
        let suggestion = suggest(&subject, &[], None);
        let (policy, warnings) = Policy::parse(&manifest(&subject, &suggestion)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let grant = policy.bindings().next().unwrap();
        assert_eq!(grant.subject.name, subject.name);
        assert_eq!(grant.role, suggestion.cluster_role);
    }

    #[test]
    fn names_stay_valid_object_and_file_names() {
        let user = Subject {
            kind: "User".to_owned(),
            name: "https://issuer/#a b%".to_owned(),
            namespace: String::new(),
        };
        assert_eq!(role_name(&user), "kubelet-api:user:https:--issuer-#a-b-");
        assert_eq!(file_stem("kubelet-api:user:x#y"), "kubelet-api-user-x-y");
    }
}
