//! Embedded mode: the static token file (`--token-auth-file`) and the RBAC policy file
//! (`--rbac-policy-file`) as the same reviewers the API server provides, so caching, coalescing,
//! metrics and audit behave identically in both modes. Either can be combined with the other
//! mode's half (static tokens with SubjectAccessReview, or TokenReview with local RBAC).
//!
//! Both files are polled by the reload task (`reload`): an edit that parses takes effect, one that
//! does not keeps the last good content.

use std::sync::Arc;

use crate::authn::Identity;
use crate::authn::static_tokens::StaticTokens;
use crate::authn::token::{TokenOutcome, TokenReviewer};
use crate::authz::decisions::AccessReviewer;
use crate::authz::rbac::{Policy, ResourceRequest};
use crate::authz::{Decision, Resource};
use crate::config::NodeName;
use crate::kubelet_api::Verb;
use crate::reload::Watched;
use crate::review::ReviewFuture;

/// The token file, reviewed locally.
pub struct TokenFile(pub Arc<Watched<StaticTokens>>);

/// The RBAC policy file, evaluated locally for one node.
pub struct PolicyFile {
    /// The policy in force.
    pub policy: Arc<Watched<Policy>>,
    /// The node every request is about.
    pub node: NodeName,
}

/// Parses a token file's bytes (the reload parser of `--token-auth-file`).
pub fn parse_tokens(bytes: &[u8]) -> Result<StaticTokens, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    StaticTokens::parse(text).map_err(|e| e.to_string())
}

/// Parses a policy file's bytes (the reload parser of `--rbac-policy-file`), logging what it
/// loads but ignores.
pub fn parse_policy(bytes: &[u8]) -> Result<Policy, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let (policy, warnings) = Policy::parse(text).map_err(|e| e.to_string())?;
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

impl AccessReviewer for PolicyFile {
    fn review<'a>(
        &'a self,
        who: &'a Identity,
        verb: Verb,
        resource: &'a Resource,
    ) -> ReviewFuture<'a, Decision> {
        let (namespace, name) = match resource {
            Resource::Node(_) => ("", self.node.as_str()),
            Resource::Pod {
                namespace, name, ..
            } => (namespace.as_str(), name.as_str()),
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
                reason: format!("RBAC: allowed by {grant}").into(),
            },
            None => Decision::Deny { reason: "".into() },
        };
        Box::pin(std::future::ready(Ok(decision)))
    }
}
