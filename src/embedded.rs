//! Embedded mode: the static token file (`--token-auth-file`) and the RBAC policy file
//! (`--rbac-policy-file`) as the same reviewers the API server provides, so caching, coalescing,
//! metrics and audit behave identically in both modes. Either can be combined with the other
//! mode's half (static tokens with SubjectAccessReview, or TokenReview with local RBAC).
//!
//! Both files are polled by the reload task (`reload`): an edit that parses takes effect, one that
//! does not keeps the last good content.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::authn::Identity;
use crate::authn::static_tokens::StaticTokens;
use crate::authn::token::{TokenOutcome, TokenReviewer};
use crate::authz::decisions::AccessReviewer;
use crate::authz::rbac::{Grant, Policy, ResourceRequest};
use crate::authz::{Decision, Resource};
use crate::config::NodeName;
use crate::kubelet_api::Verb;
use crate::reload::Watched;
use crate::review::ReviewFuture;

/// The token file, reviewed locally.
pub struct TokenFile(pub Arc<Watched<StaticTokens>>);

/// The RBAC policy file, evaluated locally for one node.
pub struct PolicyFile {
    policy: Arc<Watched<Policy>>,
    node: NodeName,
    /// Reasons by grant: a reason is its grant's alone, so the decisions one grant makes share
    /// one text (10,000 cached decisions kept 10,000 copies of one sentence, 1 MiB).
    reasons: Mutex<HashMap<Grant, Arc<str>>>,
}

/// How many reasons are kept before they are dropped all at once: more than any policy has
/// bindings, so only a long run of reloads that rename bindings reaches it.
const MAX_REASONS: usize = 4096;

/// Parses a token file's bytes (the reload parser of `--token-auth-file`).
pub fn parse_tokens(bytes: &[u8]) -> Result<StaticTokens, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    StaticTokens::parse(text).map_err(|e| e.to_string())
}

/// Parses a policy file's bytes (the reload parser of `--rbac-policy-file`), logging what it
/// loads but ignores.
pub fn parse_policy(bytes: &[u8]) -> Result<Policy, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    // Leniently: a binding whose role was deleted grants nothing, and of two definitions the
    // later counts, as in a cluster. Refusing either would keep the last good file on a reload,
    // and with it the grant the edit meant to revoke.
    let (policy, warnings) = Policy::parse_lenient(text).map_err(|e| e.to_string())?;
    for warning in warnings {
        tracing::warn!(flag = "--rbac-policy-file", "{warning}");
    }
    Ok(policy)
}

impl TokenReviewer for TokenFile {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a, TokenOutcome> {
        let outcome = match self.0.current().lookup(token) {
            Some(identity) => TokenOutcome::Authenticated(Arc::clone(identity)),
            None => TokenOutcome::Rejected,
        };
        Box::pin(std::future::ready(Ok(outcome)))
    }
}

impl PolicyFile {
    /// Evaluates `policy` for `node`.
    pub fn new(policy: Arc<Watched<Policy>>, node: NodeName) -> Self {
        Self {
            policy,
            node,
            reasons: Mutex::default(),
        }
    }

    /// The reason of an allow by `grant`.
    fn reason(&self, grant: Grant) -> Arc<str> {
        let mut reasons = self
            .reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if reasons.len() >= MAX_REASONS && !reasons.contains_key(&grant) {
            reasons.clear();
        }
        Arc::clone(
            reasons
                .entry(grant)
                .or_insert_with_key(|grant| format!("RBAC: allowed by {grant}").into()),
        )
    }
}

impl AccessReviewer for PolicyFile {
    fn review<'a>(
        &'a self,
        who: &'a Identity,
        verb: Verb,
        resource: &'a Resource,
    ) -> ReviewFuture<'a, Decision> {
        let (namespace, name) = match resource {
            Resource::Node(_) => ("", self.node.as_str()),
            Resource::Pod(pod) => (pod.namespace.as_str(), pod.name.as_str()),
        };
        let request = ResourceRequest {
            api_group: "",
            resource: resource.resource(),
            subresource: resource.subresource(),
            name,
            namespace,
            verb: verb.as_str(),
        };
        let decision = match self.policy.current().authorize(who, &request) {
            Some(grant) => Decision::Allow {
                reason: self.reason(grant),
            },
            None => Decision::Deny { reason: "".into() },
        };
        Box::pin(std::future::ready(Ok(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet_api::Subresource;

    const POLICY: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: scrape\nrules:\n- apiGroups: [\"\"]\n  resources: [nodes/metrics]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: scrapers\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: scrape\nsubjects:\n- kind: Group\n  name: system:authenticated\n  apiGroup: rbac.authorization.k8s.io\n";

    /// `POLICY` written to a file named after `test`, loaded as the guard loads it.
    fn policy_file(test: &str) -> (std::path::PathBuf, Arc<Watched<Policy>>, PolicyFile) {
        let path = std::env::temp_dir().join(format!(
            "kubelet-guard-embedded-{test}-{}.yaml",
            std::process::id()
        ));
        std::fs::write(&path, POLICY).unwrap();
        let policy = Arc::new(Watched::load("--rbac-policy-file", &path, parse_policy).unwrap());
        let file = PolicyFile::new(Arc::clone(&policy), NodeName::parse("n", "f").unwrap());
        (path, policy, file)
    }

    /// An authenticated user named `name`.
    fn user(name: &str) -> Identity {
        Identity::new(
            name,
            "",
            ["system:authenticated".to_owned()],
            Default::default(),
        )
    }

    #[tokio::test]
    async fn the_decisions_of_one_grant_share_its_reason() {
        let (path, _, file) = policy_file("reason");
        std::fs::remove_file(&path).unwrap();
        let reason = async |name: &str, subresource| {
            let who = user(name);
            let resource = Resource::Node(subresource);
            match file.review(&who, Verb::Get, &resource).await.unwrap() {
                Decision::Allow { reason } => Some(reason),
                Decision::Deny { .. } => None,
            }
        };
        let alice = reason("alice", Subresource::Metrics).await.unwrap();
        let bob = reason("bob", Subresource::Metrics).await.unwrap();
        assert_eq!(
            &*alice,
            "RBAC: allowed by ClusterRoleBinding \"scrapers\" of ClusterRole \"scrape\""
        );
        assert!(Arc::ptr_eq(&alice, &bob));
        assert!(reason("alice", Subresource::Stats).await.is_none());
    }

    #[tokio::test]
    async fn deleting_a_role_revokes_what_its_bindings_granted() {
        use crate::reload::{Poll, Reload};
        let (path, policy, file) = policy_file("revoke");
        let alice = user("alice");
        let metrics = Resource::Node(crate::kubelet_api::Subresource::Metrics);
        let allowed = async || {
            matches!(
                file.review(&alice, Verb::Get, &metrics).await.unwrap(),
                Decision::Allow { .. }
            )
        };
        assert!(allowed().await);

        // The binding stays, its ClusterRole goes: valid in a cluster, where it grants nothing.
        let binding = POLICY.split("---\n").nth(1).unwrap();
        std::fs::write(&path, binding).unwrap();
        assert!(matches!(policy.poll(), Reload::Changing { .. }));
        let reloaded = policy.poll();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(reloaded, Reload::Reloaded { .. }), "{reloaded:?}");
        assert!(!allowed().await, "the deleted role still grants");
    }
}
