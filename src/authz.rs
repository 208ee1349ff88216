//! May this caller do this: one `(verb, nodes/<subresource>)` review per check of the classified
//! request, in order, first allow wins (docs/kubelet-api.md section 1).
//!
//! A review that errors stops the walk at once: no fallback to a later check, nothing cached, and
//! the caller answers 500. This module decides only; it never picks a status code.

pub mod decisions;
pub mod rbac;

use std::sync::Arc;

use crate::authn::Identity;
use crate::kubelet_api::pod_scope::{PodAction, PodTarget};
use crate::kubelet_api::{Subresource, Verb};
use crate::review::ReviewError;
use decisions::DecisionCache;

/// One review's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The caller may.
    Allow {
        /// The authorizer's reason, possibly empty; shared, as a cached decision is read by every
        /// request it answers.
        reason: Arc<str>,
    },
    /// The caller may not.
    Deny {
        /// The authorizer's reason, possibly empty; shared, as a cached decision is read by every
        /// request it answers.
        reason: Arc<str>,
    },
}

/// The outcome of every check of one request.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Each check tried, in order, with its decision; the walk stops at the first allow.
    pub checks: Vec<(Subresource, Decision)>,
}

/// What one access review is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// `nodes/<subresource>` of the guard's node.
    Node(Subresource),
    /// `pods/<subresource>` of one pod (`--pod-scoped-authz`). Boxed: every cached decision's key
    /// holds a `Resource`, nearly always a node's, and the key is 32 bytes this way, not 72.
    Pod(Box<PodResource>),
}

/// The pod a pod-scoped check is about, and what is done to it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodResource {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// What is done to it.
    pub action: PodAction,
}

/// A review failed, so nothing was decided.
#[derive(Debug, thiserror::Error)]
#[error("reviewing {verb} {}/{} failed", resource.resource(), resource.subresource())]
pub struct AuthzError {
    /// The verb being checked.
    pub verb: Verb,
    /// The check whose review failed.
    pub resource: Resource,
    /// Why.
    #[source]
    pub source: ReviewError,
}

/// Walks a request's checks through the decision cache.
pub struct Authorizer {
    cache: DecisionCache,
}

impl Resource {
    /// A pod-scoped check of `target`.
    pub fn pod(target: &PodTarget<'_>) -> Self {
        Self::Pod(Box::new(PodResource {
            namespace: target.namespace.to_owned(),
            name: target.pod.to_owned(),
            action: target.action,
        }))
    }

    /// `nodes` or `pods`.
    pub fn resource(&self) -> &'static str {
        match self {
            Self::Node(_) => "nodes",
            Self::Pod(_) => "pods",
        }
    }

    /// The subresource checked.
    pub fn subresource(&self) -> &'static str {
        match self {
            Self::Node(subresource) => subresource.as_str(),
            Self::Pod(pod) => pod.action.subresource(),
        }
    }
}

impl Decision {
    /// Whether this decision allows.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

impl Verdict {
    /// The check that allowed the request, if one did.
    pub fn allowed_by(&self) -> Option<Subresource> {
        self.checks
            .iter()
            .find(|(_, decision)| decision.is_allow())
            .map(|(subresource, _)| *subresource)
    }
}

impl Authorizer {
    /// An authorizer over a decision cache.
    pub fn new(cache: DecisionCache) -> Self {
        Self { cache }
    }

    /// Forgets every cached decision (the policy they came from changed).
    pub fn forget(&self) {
        self.cache.forget();
    }

    /// Reviews `checks` in order until one allows.
    pub async fn authorize(
        &self,
        who: &Arc<Identity>,
        verb: Verb,
        checks: &[Subresource],
    ) -> Result<Verdict, AuthzError> {
        let mut verdict = Verdict {
            checks: Vec::with_capacity(checks.len()),
        };
        for &subresource in checks {
            let decision = self
                .cache
                .decide(who, verb, &Resource::Node(subresource))
                .await
                .map_err(|source| AuthzError {
                    verb,
                    resource: Resource::Node(subresource),
                    source,
                })?;
            let allowed = decision.is_allow();
            verdict.checks.push((subresource, decision));
            if allowed {
                break;
            }
        }
        Ok(verdict)
    }

    /// Reviews the namespaced permission a pod-scoped request needs (`--pod-scoped-authz`).
    pub async fn authorize_pod(
        &self,
        who: &Arc<Identity>,
        target: PodTarget<'_>,
    ) -> Result<Decision, AuthzError> {
        let verb = target.action.verb();
        let resource = Resource::pod(&target);
        self.cache
            .decide(who, verb, &resource)
            .await
            .map_err(|source| AuthzError {
                verb,
                resource,
                source,
            })
    }
}
