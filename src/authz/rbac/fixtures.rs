//! Builders of RBAC YAML, requests and identities shared by the unit tests of every part of
//! `rbac`.
//!
//! Compiled only under `#[cfg(test)]` (see the `mod` line in `rbac.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, Subject};
use serde_json::Value;

use super::{Policy, PolicyError, ResourceRequest};
use crate::authn::Identity;

pub(super) fn who(name: &str, groups: &[&str]) -> Identity {
    Identity::new(
        name,
        "",
        groups
            .iter()
            .map(|group| (*group).to_owned())
            .collect::<Vec<_>>(),
        BTreeMap::new(),
    )
}

pub(super) fn node(subresource: &'static str, verb: &'static str) -> ResourceRequest<'static> {
    ResourceRequest {
        api_group: "",
        resource: "nodes",
        subresource,
        name: "node-a",
        namespace: "",
        verb,
    }
}

pub(super) fn rule(value: Value) -> PolicyRule {
    serde_json::from_value(value).unwrap()
}

pub(super) fn subject(value: Value) -> Subject {
    serde_json::from_value(value).unwrap()
}

pub(super) fn parse(yaml: &str) -> (Policy, Vec<String>) {
    Policy::parse(yaml).unwrap_or_else(|e| panic!("{e}"))
}

pub(super) fn parse_error(yaml: &str) -> PolicyError {
    Policy::parse(yaml).map(|_| ()).unwrap_err()
}

pub(super) fn cluster_role(name: &str, labels: &str, body: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\n  \
         labels: {labels}\n{body}\n---\n"
    )
}

pub(super) fn grants(resources: &str) -> String {
    format!("rules:\n- apiGroups: [\"\"]\n  resources: {resources}\n  verbs: [get]")
}

pub(super) fn bind_user(binding: &str, role: &str, user: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: \
         {binding}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: \
         {role}\nsubjects:\n- kind: User\n  name: {user}\n---\n"
    )
}

/// `policy` allows `request` for user `alice`, through some binding.
pub(super) fn alice_may(policy: &Policy, request: &ResourceRequest<'_>) -> bool {
    policy.authorize(&who("alice", &[]), request).is_some()
}

pub(super) fn role(name: &str, namespace: &str, rules: &str) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, \
         namespace: {namespace}}}\nrules: {rules}\n---\n"
    )
}

pub(super) fn role_binding(
    name: &str,
    namespace: &str,
    kind: &str,
    role: &str,
    subject: &str,
) -> String {
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, \
         namespace: {namespace}}}\nroleRef: {{kind: {kind}, name: {role}}}\nsubjects: [{subject}]\n---\n"
    )
}

/// `request` in `namespace`.
pub(super) fn in_namespace<'a>(
    namespace: &'a str,
    request: ResourceRequest<'a>,
) -> ResourceRequest<'a> {
    ResourceRequest {
        namespace,
        ..request
    }
}

/// `create` on `pods/exec` of pod `web` in `namespace`: what `--pod-scoped-authz` asks.
pub(super) fn pod_exec(namespace: &str) -> ResourceRequest<'_> {
    ResourceRequest {
        api_group: "",
        resource: "pods",
        subresource: "exec",
        name: "web",
        namespace,
        verb: "create",
    }
}

pub(super) const EXEC_RULES: &str = "[{apiGroups: [''], resources: [pods/exec], verbs: [create]}]";

pub(super) fn aggregated(name: &str, labels: &str, selectors: &str) -> String {
    // Its own rules grant everything: the controller overwrites them, so they must not count.
    let body = format!(
        "aggregationRule:\n  clusterRoleSelectors: {selectors}\n\
         rules: [{{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}]"
    );
    cluster_role(name, labels, &body)
}
