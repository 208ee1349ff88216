//! Unit tests of the evaluation entry points: which binding grants what, in which scope and in
//! which order, and how errors and locations print.
//!
//! Compiled only under `#[cfg(test)]` (see the `mod` line in `rbac.rs`).

use super::fixtures::*;
use super::*;

// --- Policy::parse and authorize ---

#[test]
fn binding_grants_its_role_to_its_subject() {
    let yaml =
        cluster_role("proxy", "{}", &grants("[nodes/proxy]")) + &bind_user("b", "proxy", "alice");
    let (policy, warnings) = parse(&yaml);
    assert!(warnings.is_empty(), "{warnings:?}");
    let grant = policy.authorize(&who("alice", &[]), &node("proxy", "get"));
    let expected = Grant {
        binding: "b".to_owned(),
        role: "proxy".to_owned(),
        binding_kind: BindingKind::ClusterRoleBinding,
        namespace: String::new(),
        role_kind: RoleKind::ClusterRole,
    };
    assert_eq!(grant, Some(expected));
    assert_eq!(
        policy.authorize(&who("bob", &[]), &node("proxy", "get")),
        None
    );
    assert!(!alice_may(&policy, &node("proxy", "create")));
    assert!(!alice_may(&policy, &node("log", "get")));
}

#[test]
fn resource_names_may_cover_several_resources() {
    // Kubernetes' validation accepts resourceNames with more than one resource.
    let rules = "rules:\n- apiGroups: [\"\"]\n  resources: [nodes/proxy, nodes/log]\n  \
                 resourceNames: [node-a]\n  verbs: [get]";
    let yaml = cluster_role("r", "{}", rules) + &bind_user("b", "r", "alice");
    let (policy, _) = parse(&yaml);
    assert!(alice_may(&policy, &node("proxy", "get")));
    assert!(alice_may(&policy, &node("log", "get")));
    let elsewhere = ResourceRequest {
        name: "node-b",
        ..node("proxy", "get")
    };
    assert!(!alice_may(&policy, &elsewhere));
}

#[test]
fn a_cluster_scoped_objects_namespace_is_ignored_as_the_api_server_ignores_it() {
    // `b` in `monitoring` and `b` are one ClusterRoleBinding: the second is a duplicate, and with
    // duplicates allowed the later one wins, so mallory's subject list is replaced.
    let namespaced = bind_user("b", "proxy", "mallory").replace(
        "metadata:\n  name: b\n",
        "metadata:\n  name: b\n  namespace: monitoring\n",
    );
    let yaml = cluster_role("proxy", "{}", &grants("[nodes/proxy]"))
        + &namespaced
        + &bind_user("b", "proxy", "alice");
    let error = parse_error(&yaml);
    assert!(
        error
            .message
            .contains("ClusterRoleBinding \"b\" is defined twice"),
        "{error}"
    );
    let (policy, warnings) = Policy::parse_lenient(&yaml).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(alice_may(&policy, &node("proxy", "get")));
    assert_eq!(
        policy.authorize(&who("mallory", &[]), &node("proxy", "get")),
        None
    );
}

#[test]
fn first_granting_binding_in_file_order_is_reported() {
    let yaml = cluster_role("logs", "{}", &grants("[nodes/log]"))
        + &cluster_role("all", "{}", &grants("[\"*\"]"))
        + &bind_user("logs-only", "logs", "alice")
        + &bind_user("everything", "all", "alice")
        + &bind_user("again", "all", "alice");
    let (policy, _) = parse(&yaml);
    let proxy = policy.authorize(&who("alice", &[]), &node("proxy", "get"));
    assert_eq!(
        proxy.map(|grant| grant.binding),
        Some("everything".to_owned())
    );
    let log = policy.authorize(&who("alice", &[]), &node("log", "get"));
    assert_eq!(log.map(|grant| grant.binding), Some("logs-only".to_owned()));
}

#[test]
fn group_binding_to_system_authenticated_grants_authenticated_callers() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/healthz]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
           roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
           subjects:\n- {kind: Group, name: 'system:authenticated', apiGroup: rbac.authorization.k8s.io}\n";
    let (policy, _) = parse(&yaml);
    let request = node("healthz", "get");
    assert!(
        policy
            .authorize(&who("x", &["system:authenticated"]), &request)
            .is_some()
    );
    assert!(policy.authorize(&who("x", &[]), &request).is_none());
}

#[test]
fn service_account_binding_grants_the_account() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/metrics]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
           roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
           subjects:\n- {kind: ServiceAccount, name: prom, namespace: monitoring}\n";
    let (policy, _) = parse(&yaml);
    let request = node("metrics", "get");
    let account = who(
        "system:serviceaccount:monitoring:prom",
        &["system:serviceaccounts"],
    );
    assert!(policy.authorize(&account, &request).is_some());
    assert!(policy.authorize(&who("prom", &[]), &request).is_none());
}

#[test]
fn subject_and_role_ref_api_groups_are_defaulted() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
           roleRef: {kind: ClusterRole, name: r}\nsubjects:\n- {kind: User, name: alice}\n";
    let (policy, _) = parse(&yaml);
    assert!(alice_may(&policy, &node("proxy", "get")));
    let grant = policy.bindings().next().unwrap();
    assert_eq!(grant.subject.api_group.as_deref(), Some(RBAC_GROUP));
}

#[test]
fn role_bindings_never_grant_nodes_and_are_reported() {
    let yaml = cluster_role("r", "{}", &grants("[\"*\"]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
           metadata: {name: x, namespace: ns}\n\
           roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\n\
           subjects:\n- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}\n---\n\
           apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: viewer, namespace: ns}\n\
           rules: [{apiGroups: [''], resources: ['*'], verbs: ['*']}]\n";
    let (policy, warnings) = parse(&yaml);
    assert!(!alice_may(&policy, &node("proxy", "get")));
    assert_eq!(policy.bindings().count(), 0);
    assert_eq!(policy.role_bindings().count(), 1);
    assert_eq!(
        warnings,
        [
            "Role ns/viewer cannot grant cluster-scoped nodes access; it grants only within \
             namespace ns",
            "RoleBinding ns/x cannot grant cluster-scoped nodes access; it grants only within \
             namespace ns",
            "the policy has no ClusterRoleBinding; every cluster-scoped request is denied",
        ]
    );
}

#[test]
fn role_bindings_without_nodes_rules_are_not_reported() {
    let yaml = role(
        "reader",
        "ns",
        "[{apiGroups: [''], resources: [pods/log], verbs: [get]}]",
    ) + &role_binding("b", "ns", "Role", "reader", "{kind: User, name: alice}");
    let (_, warnings) = parse(&yaml);
    assert_eq!(
        warnings,
        ["the policy has no ClusterRoleBinding; every cluster-scoped request is denied"]
    );
}

#[test]
fn binding_to_missing_role_is_an_error_naming_both() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]")) + &bind_user("b", "nope", "alice");
    let error = parse_error(&yaml);
    assert_eq!(error.line, Some(11));
    assert!(
        error.message.contains("ClusterRoleBinding \"b\""),
        "{error}"
    );
    assert!(error.message.contains("ClusterRole \"nope\""), "{error}");
}

#[test]
fn bindings_lists_every_subject_with_effective_rules() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
           roleRef: {kind: ClusterRole, name: r}\n\
           subjects: [{kind: User, name: alice}, {kind: Group, name: ops}]\n";
    let (policy, _) = parse(&yaml);
    let listed: Vec<_> = policy
        .bindings()
        .map(|grant| {
            (
                grant.binding,
                grant.role,
                grant.subject.name.as_str(),
                grant.rules.len(),
            )
        })
        .collect();
    assert_eq!(listed, [("b", "r", "alice", 1), ("b", "r", "ops", 1)]);
}

#[test]
fn binding_without_subjects_is_reported() {
    let yaml = cluster_role("r", "{}", &grants("[nodes/proxy]"))
        + "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\n\
           roleRef: {kind: ClusterRole, name: r}\n";
    let (policy, warnings) = parse(&yaml);
    assert_eq!(policy.bindings().count(), 0);
    assert_eq!(
        warnings,
        ["ClusterRoleBinding b has no subjects; it grants nothing"]
    );
}

// --- namespaced requests: Roles and RoleBindings ---

#[test]
fn role_binding_to_a_role_grants_in_its_namespace_only() {
    let yaml = role("exec", "team-a", EXEC_RULES)
        + &role_binding("b", "team-a", "Role", "exec", "{kind: User, name: alice}");
    let (policy, _) = parse(&yaml);
    let grant = policy.authorize(&who("alice", &[]), &pod_exec("team-a"));
    let expected = Grant {
        binding: "b".to_owned(),
        role: "exec".to_owned(),
        binding_kind: BindingKind::RoleBinding,
        namespace: "team-a".to_owned(),
        role_kind: RoleKind::Role,
    };
    assert_eq!(grant, Some(expected));
    assert!(!alice_may(&policy, &pod_exec("team-b")));
    assert!(!alice_may(&policy, &pod_exec("")), "cluster-scoped");
    assert!(
        policy
            .authorize(&who("bob", &[]), &pod_exec("team-a"))
            .is_none()
    );
}

#[test]
fn role_binding_to_a_cluster_role_grants_in_its_namespace_only() {
    let yaml = cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
        + &role_binding(
            "b",
            "team-a",
            "ClusterRole",
            "exec",
            "{kind: Group, name: devs}",
        );
    let (policy, _) = parse(&yaml);
    let dev = who("carol", &["devs"]);
    let grant = policy.authorize(&dev, &pod_exec("team-a")).unwrap();
    assert_eq!(grant.role_kind, RoleKind::ClusterRole);
    assert_eq!(
        grant.to_string(),
        "RoleBinding \"team-a/b\" of ClusterRole \"exec\""
    );
    assert!(policy.authorize(&dev, &pod_exec("team-b")).is_none());
}

#[test]
fn role_bindings_never_grant_cluster_scoped_nodes() {
    let yaml = cluster_role("all", "{}", &grants("[\"*\"]"))
        + &role_binding(
            "b",
            "kube-system",
            "ClusterRole",
            "all",
            "{kind: User, name: alice}",
        );
    let (policy, _) = parse(&yaml);
    assert!(!alice_may(&policy, &node("proxy", "get")));
    // The same rules do grant namespaced core resources there.
    let pods = ResourceRequest {
        resource: "pods",
        ..in_namespace("kube-system", node("", "get"))
    };
    assert!(alice_may(&policy, &pods));
}

#[test]
fn cluster_role_bindings_grant_namespaced_requests_everywhere() {
    let yaml = cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
        + &bind_user("b", "exec", "alice");
    let (policy, _) = parse(&yaml);
    for namespace in ["team-a", "team-b", "kube-system"] {
        let grant = policy.authorize(&who("alice", &[]), &pod_exec(namespace));
        assert_eq!(
            grant.map(|grant| grant.to_string()).as_deref(),
            Some("ClusterRoleBinding \"b\" of ClusterRole \"exec\"")
        );
    }
}

#[test]
fn cluster_role_bindings_are_visited_before_role_bindings() {
    let yaml = role("exec", "team-a", EXEC_RULES)
        + &role_binding(
            "local",
            "team-a",
            "Role",
            "exec",
            "{kind: User, name: alice}",
        )
        + &cluster_role("exec", "{}", &format!("rules: {EXEC_RULES}"))
        + &bind_user("global", "exec", "alice");
    let (policy, _) = parse(&yaml);
    let grant = policy
        .authorize(&who("alice", &[]), &pod_exec("team-a"))
        .unwrap();
    assert_eq!(grant.binding, "global");
}

#[test]
fn role_binding_cannot_use_a_role_of_another_namespace() {
    let yaml = role("exec", "team-b", EXEC_RULES)
        + &role_binding("b", "team-a", "Role", "exec", "{kind: User, name: alice}");
    let error = parse_error(&yaml);
    assert!(
        error
            .message
            .contains("RoleBinding \"team-a/b\" refers to Role \"exec\""),
        "{error}"
    );
}

#[test]
fn role_binding_service_account_defaults_to_the_binding_namespace() {
    let yaml = role("exec", "team-a", EXEC_RULES)
        + &role_binding(
            "b",
            "team-a",
            "Role",
            "exec",
            "{kind: ServiceAccount, name: deployer}",
        );
    let (policy, _) = parse(&yaml);
    let account = who("system:serviceaccount:team-a:deployer", &[]);
    assert!(policy.authorize(&account, &pod_exec("team-a")).is_some());
    let grant = policy.role_bindings().next().unwrap();
    assert_eq!(grant.subject.namespace.as_deref(), Some("team-a"));
    let elsewhere = who("system:serviceaccount:team-b:deployer", &[]);
    assert!(policy.authorize(&elsewhere, &pod_exec("team-a")).is_none());
}

#[test]
fn namespaced_objects_without_a_namespace_are_in_default() {
    let yaml = "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: exec}\n\
                rules: [{apiGroups: [''], resources: [pods/exec], verbs: [create]}]\n---\n\
                apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: b}\n\
                roleRef: {kind: Role, name: exec}\nsubjects: [{kind: User, name: alice}]\n";
    let (policy, warnings) = parse(yaml);
    assert!(alice_may(&policy, &pod_exec("default")));
    assert_eq!(
        warnings[..2],
        [
            "Role exec (line 1) has no metadata.namespace; taken to be in \"default\"",
            "RoleBinding b (line 6) has no metadata.namespace; taken to be in \"default\"",
        ]
    );
}

#[test]
fn roles_lists_effective_rules() {
    let yaml = aggregated("agg", "{}", "[{matchLabels: {a: b}}]")
        + &cluster_role("leaf", "{a: b}", &grants("[nodes/log]"))
        + &role("exec", "team-a", EXEC_RULES);
    let (policy, _) = parse(&yaml);
    let listed: Vec<_> = policy
        .roles()
        .map(|role| {
            (
                role.kind,
                role.namespace,
                role.name,
                role.rules.len(),
                role.location.line,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (RoleKind::ClusterRole, "", "agg", 1, 1),
            (RoleKind::ClusterRole, "", "leaf", 1, 10),
            (RoleKind::Role, "team-a", "exec", 1, 20),
        ]
    );
}

// --- errors and locations ---

#[test]
fn error_display_prefixes_the_line() {
    let error = PolicyError {
        line: Some(3),
        message: "bad".to_owned(),
    };
    assert_eq!(error.to_string(), "line 3: bad");
    let error = PolicyError {
        line: None,
        message: "bad".to_owned(),
    };
    assert_eq!(error.to_string(), "bad");
}

#[test]
fn locations_print_compactly() {
    let at = |source: &str, line| {
        Location {
            source: source.to_owned(),
            line,
        }
        .to_string()
    };
    assert_eq!(at("", 3), "line 3");
    assert_eq!(at("a.yaml", 3), "a.yaml:3");
    assert_eq!(at("cluster", 0), "cluster");
}

#[test]
fn a_role_aggregated_into_a_bootstrap_role_that_covers_nodes_is_named() {
    let into_view = "{rbac.authorization.k8s.io/aggregate-to-view: 'true'}";
    let into_both = "{rbac.authorization.k8s.io/aggregate-to-edit: 'true', \
                     rbac.authorization.k8s.io/aggregate-to-admin: 'true'}";
    let yaml = cluster_role("viewers-exec", into_view, &grants("[nodes/proxy]"))
        + &cluster_role("editors-all", into_both, &grants("['*']"))
        + &cluster_role("viewers-pods", into_view, &grants("[pods]"))
        + &cluster_role(
            "not-aggregated",
            "{rbac.authorization.k8s.io/aggregate-to-view: 'false'}",
            &grants("[nodes/proxy]"),
        )
        + &bind_user("b", "viewers-pods", "alice");
    let (_, warnings) = parse(&yaml);
    let named: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("labelled to be aggregated"))
        .collect();
    assert_eq!(
        named,
        [
            // view's rules flow on into edit, and edit's into admin.
            "ClusterRole viewers-exec (line 1) covers nodes and is labelled to be aggregated into \
             the bootstrap ClusterRoles admin, edit, view: every subject a ClusterRoleBinding \
             binds to them in the cluster gains what it grants",
            "ClusterRole editors-all (line 11) covers nodes and is labelled to be aggregated into \
             the bootstrap ClusterRoles admin, edit: every subject a ClusterRoleBinding binds to \
             them in the cluster gains what it grants",
        ],
        "{warnings:#?}"
    );
}
