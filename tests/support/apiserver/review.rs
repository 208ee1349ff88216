//! How the API server double decides: TokenReview status from the scripted tokens (with
//! audience intersection, as the API server's authenticator does), SubjectAccessReview status
//! from the scripted rules (deny wins, then allow, else no opinion), for core `v1` `nodes` (the
//! node checks) and namespaced `pods` (the pod checks of `--pod-scoped-authz`).

use serde_json::{Value, json};

use super::State;

/// A scripted rule: `subject` is a user name or a group; `verb` and `subresource` may be `*`;
/// `namespace` is empty for `nodes` rules and names the namespace of a `pods` rule.
pub(super) struct Rule {
    subject: String,
    verb: String,
    subresource: String,
    namespace: String,
}

impl Rule {
    pub(super) fn new(subject: &str, verb: &str, subresource: &str) -> Rule {
        Rule::in_namespace(subject, verb, subresource, "")
    }

    pub(super) fn in_namespace(
        subject: &str,
        verb: &str,
        subresource: &str,
        namespace: &str,
    ) -> Rule {
        Rule {
            subject: subject.to_owned(),
            verb: verb.to_owned(),
            subresource: subresource.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    pub(super) fn matches(
        &self,
        user: &str,
        groups: &[&str],
        verb: &str,
        subresource: &str,
        namespace: &str,
    ) -> bool {
        (self.subject == user || groups.contains(&self.subject.as_str()))
            && (self.verb == "*" || self.verb == verb)
            && (self.subresource == "*" || self.subresource == subresource)
            && self.namespace == namespace
    }

    pub(super) fn describe(&self) -> String {
        let Rule {
            subject,
            verb,
            subresource,
            namespace,
        } = self;
        format!(
            "rule (subject={subject}, verb={verb}, subresource={subresource}, namespace={namespace:?})"
        )
    }
}

/// The `status` of a TokenReview.
pub(super) fn token_review_status(st: &State, review: &Value) -> Value {
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let requested: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    // kube-apiserver reports every token it does not authenticate with an error: its bearer
    // token authenticator's "invalid bearer token" at least.
    let Some(identity) = st.tokens.get(token) else {
        return json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"});
    };
    let audiences = match (&identity.audiences, requested.is_empty()) {
        (None, true) => vec!["https://kubernetes.default.svc.cluster.local".to_owned()],
        (None, false) => requested,
        (Some(own), true) => own.clone(),
        (Some(own), false) => requested.into_iter().filter(|a| own.contains(a)).collect(),
    };
    if audiences.is_empty() {
        return json!({"authenticated": false, "error": "[invalid bearer token, token audiences is invalid for the target audiences]"});
    }
    json!({
        "authenticated": true,
        "user": {
            "username": identity.username,
            "uid": identity.uid,
            "groups": identity.groups,
            "extra": identity.extra,
        },
        "audiences": audiences,
    })
}

/// The `status` of a SubjectAccessReview; records attributes other than core `v1` `nodes`.
pub(super) fn access_review_status(st: &mut State, review: &Value) -> Value {
    if let Some(status) = &st.sar_status {
        return status.clone();
    }
    let spec = &review["spec"];
    let attrs = &spec["resourceAttributes"];
    let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let (group, version, resource) = (
        field(&attrs["group"]),
        field(&attrs["version"]),
        field(&attrs["resource"]),
    );
    let namespace = field(&attrs["namespace"]);
    let scoped_right = match resource.as_str() {
        "nodes" => namespace.is_empty(),
        "pods" => !namespace.is_empty() && !field(&attrs["name"]).is_empty(),
        _ => false,
    };
    if !attrs.is_object() || !group.is_empty() || version != "v1" || !scoped_right {
        st.mismatches.push(format!(
            "expected core v1 nodes, got group={group:?} version={version:?} resource={resource:?}"
        ));
        return json!({"allowed": false, "reason": "the double only authorizes core v1 nodes"});
    }
    let user = field(&spec["user"]);
    let groups: Vec<&str> = spec["groups"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let (verb, subresource) = (field(&attrs["verb"]), field(&attrs["subresource"]));
    if let Some(rule) = st
        .deny
        .iter()
        .find(|r| r.matches(&user, &groups, &verb, &subresource, &namespace))
    {
        return json!({"allowed": false, "denied": true, "reason": format!("denied by {}", rule.describe())});
    }
    if let Some(rule) = st
        .allow
        .iter()
        .find(|r| r.matches(&user, &groups, &verb, &subresource, &namespace))
    {
        return json!({"allowed": true, "reason": format!("allowed by {}", rule.describe())});
    }
    json!({"allowed": false, "reason": "no rule of the double matched"})
}
