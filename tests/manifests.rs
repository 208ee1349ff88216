//! The manifests of `deploy/` keep the invariants issue 5 states, so a later edit cannot silently
//! break them: every YAML file parses; the DaemonSet runs on the host network on every node
//! (tolerations, `system-node-critical`), answers its probes on the admin listener, has requests
//! and a memory limit, and no container is privileged, writable or holding a capability; the
//! service account is bound to `system:auth-delegator` only and nothing in the base grants more;
//! the agent roles never need `nodes/proxy`; and every `--flag` the manifests pass is one that
//! `kubelet-guard serve --help` lists. When `kubectl` is on the PATH, every overlay is rendered
//! with `kubectl kustomize` and the rendered output is checked the same way (the test says so on
//! stderr when it skips that part).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const NAMESPACE: &str = "kubelet-guard";
const OVERLAYS: [&str; 3] = ["observe", "enforce", "strict"];

// ---------------------------------------------------------------------------------------------
// Loading

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// Every `.yaml`/`.yml` file under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The documents of one YAML stream, as JSON values.
fn parse_stream(text: &str, origin: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text).unwrap_or_else(|e| panic!("{origin}: {e}"))
}

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_stream(&text, &path.display().to_string())
}

/// Every document of every YAML file under `dir`.
fn load_dir(dir: &Path) -> Vec<Value> {
    yaml_files(dir).iter().flat_map(|path| load(path)).collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("")
}

fn of_kind<'a>(docs: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    docs.iter().filter(|doc| kind(doc) == wanted).collect()
}

fn str_list(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------------
// The flags `serve` knows

/// Long flag names (`--listen`, …) listed by `kubelet-guard serve --help`.
fn serve_flags() -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .expect("run kubelet-guard serve --help");
    assert!(output.status.success(), "serve --help failed: {output:?}");
    let help = String::from_utf8(output.stdout).unwrap();
    let flags: BTreeSet<String> = help
        .lines()
        .map(str::trim_start)
        // Flag definitions start their line: `--listen <LISTEN>`, `-h, --help`.
        .filter(|line| line.starts_with("--") || line.starts_with("-h, --"))
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with("--")))
        .map(|word| {
            word.split(['<', '[', '=', ','])
                .next()
                .unwrap_or(word)
                .to_owned()
        })
        .collect();
    assert!(
        flags.contains("--listen") && flags.contains("--upstream"),
        "could not read the flags of `serve --help`:\n{help}"
    );
    flags
}

/// The flags among `args` (after the `serve` subcommand) that `serve` does not know, and args
/// that are not in the `--flag=value` form the manifests use throughout.
fn unknown_flags(args: &[&str], known: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for arg in args {
        if *arg == "serve" {
            continue;
        }
        if !arg.starts_with("--") {
            problems.push(format!(
                "argument {arg:?} is not a --flag=value (separate values are not used here)"
            ));
            continue;
        }
        let flag = arg.split('=').next().unwrap_or(arg);
        if !known.contains(flag) {
            problems.push(format!(
                "{flag} (in {arg:?}) is not a flag of `kubelet-guard serve --help`"
            ));
        }
    }
    problems
}

/// The value of `--flag=value` in `args`, if present (the last one wins, as with clap).
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let prefix = format!("{flag}=");
    args.iter().rev().find_map(|arg| arg.strip_prefix(&prefix))
}

fn port_of(address: &str) -> Option<u64> {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The DaemonSet

fn containers(pod: &Value) -> Vec<&Value> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|key| pod[*key].as_array())
        .flatten()
        .collect()
}

/// Every invariant of the guard's DaemonSet; an empty list when it holds them all.
fn check_daemonset(ds: &Value, known: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |message: String| problems.push(message);
    let pod = &ds["spec"]["template"]["spec"];

    if pod["hostNetwork"] != json!(true) {
        fail("hostNetwork must be true: the guard answers on the node's address".into());
    }
    if pod["dnsPolicy"] != json!("ClusterFirstWithHostNet") {
        fail("dnsPolicy must be ClusterFirstWithHostNet (host network pod)".into());
    }
    for key in ["hostPID", "hostIPC"] {
        if pod[key] == json!(true) {
            fail(format!("{key} must not be set"));
        }
    }
    if pod["priorityClassName"] != json!("system-node-critical") {
        fail("priorityClassName must be system-node-critical".into());
    }
    let tolerates_all = pod["tolerations"].as_array().is_some_and(|tolerations| {
        tolerations.iter().any(|t| {
            t["operator"] == json!("Exists") && t.get("key").is_none() && t.get("effect").is_none()
        })
    });
    if !tolerates_all {
        fail("tolerations must include `- operator: Exists` (every taint)".into());
    }
    let strategy = &ds["spec"]["updateStrategy"];
    if strategy["type"] != json!("RollingUpdate")
        || strategy["rollingUpdate"]["maxUnavailable"] != json!(1)
    {
        fail("updateStrategy must be RollingUpdate with maxUnavailable: 1".into());
    }
    if !matches!(
        strategy["rollingUpdate"].get("maxSurge"),
        None | Some(Value::Null)
    ) && strategy["rollingUpdate"]["maxSurge"] != json!(0)
        && strategy["rollingUpdate"]["maxSurge"] != json!("0%")
    {
        fail("maxSurge must be 0: a surge pod cannot bind the host port 10250".into());
    }
    let pod_seccomp = &pod["securityContext"]["seccompProfile"]["type"];

    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == json!(name)).cloned();

    let all = containers(pod);
    if all.is_empty() {
        fail("the pod has no container".into());
    }
    for container in all {
        let cname = container["name"].as_str().unwrap_or("?");
        let mut fail = |message: String| problems.push(format!("container {cname}: {message}"));
        let sc = &container["securityContext"];

        if sc["privileged"] == json!(true) {
            fail("must not be privileged".into());
        }
        if sc["allowPrivilegeEscalation"] != json!(false) {
            fail("allowPrivilegeEscalation must be false".into());
        }
        if sc["readOnlyRootFilesystem"] != json!(true) {
            fail("readOnlyRootFilesystem must be true".into());
        }
        if !str_list(&sc["capabilities"]["drop"]).contains(&"ALL") {
            fail("capabilities.drop must contain ALL".into());
        }
        // uid 0 reads the kubelet's root-owned 0600 key as its owner: no capability is needed
        // (see the comment in deploy/base/daemonset.yaml).
        if !str_list(&sc["capabilities"]["add"]).is_empty() {
            fail("must add no capability (uid 0 reads the root-owned key as owner)".into());
        }
        let seccomp = &sc["seccompProfile"]["type"];
        if !(seccomp == "RuntimeDefault" || (seccomp.is_null() && pod_seccomp == "RuntimeDefault"))
        {
            fail("seccompProfile must be RuntimeDefault (pod or container)".into());
        }

        let resources = &container["resources"];
        for path in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
            if resources.pointer(path).is_none_or(Value::is_null) {
                fail(format!("resources{} must be set", path.replace('/', ".")));
            }
        }

        let mounts = container["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for mount in &mounts {
            let is_host_path = mount["name"]
                .as_str()
                .and_then(&volume)
                .is_some_and(|v| v.get("hostPath").is_some());
            if is_host_path && mount["readOnly"] != json!(true) {
                fail(format!(
                    "hostPath mount {} must be readOnly",
                    mount["mountPath"]
                ));
            }
        }
        // The volume that holds a path, if any.
        let volume_of = |path: &str| {
            mounts
                .iter()
                .filter(|m| {
                    m["mountPath"].as_str().is_some_and(|mp| {
                        path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
                    })
                })
                .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))
                .and_then(|m| m["name"].as_str())
                .and_then(&volume)
        };

        let env = container["env"].as_array().cloned().unwrap_or_default();
        for (var, field) in [("NODE_NAME", "spec.nodeName"), ("NODE_IP", "status.hostIP")] {
            let ok = env.iter().any(|e| {
                e["name"] == json!(var) && e["valueFrom"]["fieldRef"]["fieldPath"] == json!(field)
            });
            if !ok {
                fail(format!(
                    "env {var} must come from the downward API ({field})"
                ));
            }
        }

        let args = str_list(&container["args"]);
        if args.first() != Some(&"serve") {
            fail("args must start with the `serve` subcommand".into());
        }
        problems.extend(
            unknown_flags(&args, known)
                .into_iter()
                .map(|p| format!("container {cname}: {p}")),
        );
        let mut fail = |message: String| problems.push(format!("container {cname}: {message}"));
        let expect = [
            ("--listen", "$(NODE_IP):10250"),
            ("--upstream", "https://127.0.0.1:10250"),
            ("--upstream-server-name", "$(NODE_NAME)"),
            ("--node-name", "$(NODE_NAME)"),
        ];
        for (flag, value) in expect {
            if flag_value(&args, flag) != Some(value) {
                fail(format!("args must contain {flag}={value}"));
            }
        }
        // Every file a flag names lies on a mounted volume (catches a path typo on either side).
        for arg in &args {
            let Some((flag, path)) = arg.split_once('=') else {
                continue;
            };
            if (flag.ends_with("-file") || flag == "--kubeconfig") && volume_of(path).is_none() {
                fail(format!("{flag}={path} is on no volume mount"));
            }
        }
        for flag in ["--tls-cert-file", "--tls-private-key-file"] {
            let from_host = flag_value(&args, flag)
                .and_then(&volume_of)
                .is_some_and(|v| v.get("hostPath").is_some());
            if !from_host {
                fail(format!(
                    "{flag} must be the kubelet's file, from a hostPath mount"
                ));
            }
        }
        for flag in ["--upstream-client-cert-file", "--upstream-client-key-file"] {
            let from_secret = flag_value(&args, flag)
                .and_then(&volume_of)
                .is_some_and(|v| v.get("secret").is_some());
            if !from_secret {
                fail(format!("{flag} must come from a Secret volume"));
            }
        }

        // Probes on the admin listener (--metrics-listen), which must be reachable by the
        // kubelet's prober: with hostNetwork, the pod IP is the node IP.
        let metrics_listen = flag_value(&args, "--metrics-listen").unwrap_or("127.0.0.1:9250");
        let admin_port = port_of(metrics_listen);
        let probe_host_ok = |probe: &Value| {
            let host = probe["httpGet"]["host"].as_str();
            match metrics_listen.rsplit_once(':').map(|(h, _)| h) {
                Some("$(NODE_IP)" | "0.0.0.0" | "[::]") => host.is_none(),
                Some("127.0.0.1") => host == Some("127.0.0.1"),
                _ => false,
            }
        };
        let ports = container["ports"].as_array().cloned().unwrap_or_default();
        for (probe_key, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let probe = &container[probe_key];
            if probe["httpGet"]["path"] != json!(path) {
                fail(format!("{probe_key} must be an httpGet of {path}"));
                continue;
            }
            let port = match &probe["httpGet"]["port"] {
                Value::Number(n) => n.as_u64(),
                Value::String(named) => ports
                    .iter()
                    .find(|p| p["name"] == json!(named))
                    .and_then(|p| p["containerPort"].as_u64()),
                _ => None,
            };
            if port.is_none() || port != admin_port {
                fail(format!(
                    "{probe_key} must probe the admin port of --metrics-listen={metrics_listen}"
                ));
            }
            if probe["httpGet"]["scheme"].as_str().unwrap_or("HTTP") != "HTTP" {
                fail(format!("{probe_key}: the admin listener is plain HTTP"));
            }
            if !probe_host_ok(probe) {
                fail(format!(
                    "{probe_key} cannot reach --metrics-listen={metrics_listen}"
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// RBAC

/// Rules that grant a wildcard or `nodes/proxy`.
fn broad_rules(role: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for key in [
            "verbs",
            "resources",
            "apiGroups",
            "nonResourceURLs",
            "resourceNames",
        ] {
            if str_list(&rule[key]).iter().any(|v| v.contains('*')) {
                problems.push(format!("{} {}: `*` in {key}", kind(role), name(role)));
            }
        }
        if str_list(&rule["resources"]).contains(&"nodes/proxy") {
            problems.push(format!("{} {}: grants nodes/proxy", kind(role), name(role)));
        }
    }
    if role.get("aggregationRule").is_some() {
        problems.push(format!(
            "{} {}: aggregates other roles",
            kind(role),
            name(role)
        ));
    }
    problems
}

/// The base's RBAC: the service account bound to system:auth-delegator only, the upstream
/// identity (User kubelet-guard) to system:kubelet-api-admin only, and no role granting more.
fn check_base_rbac(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for role in of_kind(docs, "ClusterRole")
        .into_iter()
        .chain(of_kind(docs, "Role"))
    {
        problems.extend(broad_rules(role));
    }
    let is_guard_sa = |s: &Value| {
        s["kind"] == json!("ServiceAccount")
            && s["name"] == json!("kubelet-guard")
            && s["namespace"] == json!(NAMESPACE)
    };
    let is_upstream_user =
        |s: &Value| s["kind"] == json!("User") && s["name"] == json!("kubelet-guard");

    let bindings: Vec<&Value> = of_kind(docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(docs, "RoleBinding"))
        .collect();
    let mut sa_roles = Vec::new();
    let mut user_roles = Vec::new();
    for binding in &bindings {
        let role = binding["roleRef"]["name"].as_str().unwrap_or("");
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        for subject in &subjects {
            if is_guard_sa(subject) {
                sa_roles.push(role.to_owned());
            } else if is_upstream_user(subject) {
                user_roles.push(role.to_owned());
            } else {
                problems.push(format!(
                    "{} {}: unexpected subject {subject}",
                    kind(binding),
                    name(binding)
                ));
            }
        }
        if subjects.len() != 1 {
            problems.push(format!(
                "{} {}: one subject per binding",
                kind(binding),
                name(binding)
            ));
        }
    }
    if sa_roles != ["system:auth-delegator"] {
        problems.push(format!(
            "the ServiceAccount kubelet-guard/kubelet-guard must be bound to system:auth-delegator \
             only (TokenReview and SubjectAccessReview create), found {sa_roles:?}"
        ));
    }
    if user_roles != ["system:kubelet-api-admin"] {
        problems.push(format!(
            "the upstream identity (User kubelet-guard) must be bound to \
             system:kubelet-api-admin only, found {user_roles:?}"
        ));
    }
    let service_accounts: Vec<&str> = of_kind(docs, "ServiceAccount")
        .into_iter()
        .map(name)
        .collect();
    if service_accounts != ["kubelet-guard"] {
        problems.push(format!(
            "expected the one ServiceAccount kubelet-guard, found {service_accounts:?}"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Static checks of the files

#[test]
fn every_yaml_file_under_deploy_parses_into_kubernetes_documents() {
    let files = yaml_files(&deploy_dir());
    assert!(
        files.len() >= 8,
        "too few YAML files under deploy/: {files:?}"
    );
    let mut problems = Vec::new();
    for file in &files {
        let docs = load(file);
        if docs.is_empty() {
            problems.push(format!("{}: no document", file.display()));
        }
        for doc in &docs {
            if doc["apiVersion"].as_str().is_none() || kind(doc).is_empty() {
                problems.push(format!(
                    "{}: a document without apiVersion and kind",
                    file.display()
                ));
            }
        }
    }
    assert_no_problems("deploy/ YAML", &problems);
}

#[test]
fn kustomizations_list_every_file_of_their_directory_and_every_overlay_exists() {
    let base = deploy_dir().join("base");
    let kustomization = &load(&base.join("kustomization.yaml"))[0];
    assert_eq!(kustomization["namespace"], json!(NAMESPACE));
    let listed: BTreeSet<&str> = str_list(&kustomization["resources"]).into_iter().collect();
    for file in yaml_files(&base) {
        let file_name = file.file_name().unwrap().to_str().unwrap();
        if file_name != "kustomization.yaml" {
            assert!(
                listed.contains(file_name),
                "deploy/base/{file_name} is not in deploy/base/kustomization.yaml: it would never be applied"
            );
        }
    }
    for overlay in OVERLAYS {
        let path = deploy_dir()
            .join("overlays")
            .join(overlay)
            .join("kustomization.yaml");
        let docs = load(&path);
        assert_eq!(kind(&docs[0]), "Kustomization", "{}", path.display());
    }
}

#[test]
fn the_base_daemonset_keeps_its_invariants() {
    let docs = load_dir(&deploy_dir().join("base"));
    let daemonsets = of_kind(&docs, "DaemonSet");
    assert_eq!(daemonsets.len(), 1, "deploy/base has one DaemonSet");
    let ds = daemonsets[0];
    assert_no_problems(
        "deploy/base DaemonSet",
        &check_daemonset(ds, &serve_flags()),
    );

    // Namespaced objects are in the guard's namespace, and the pod runs as the bound account.
    for doc in &docs {
        if !matches!(
            kind(doc),
            "Namespace" | "ClusterRoleBinding" | "ClusterRole" | "Kustomization"
        ) {
            assert_eq!(
                doc["metadata"]["namespace"],
                json!(NAMESPACE),
                "{}",
                name(doc)
            );
        }
    }
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        json!("kubelet-guard")
    );
    // Host network and hostPath need the Pod Security "privileged" level on the namespace.
    let namespace = of_kind(&docs, "Namespace");
    assert_eq!(namespace.len(), 1);
    assert_eq!(
        namespace[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        json!("privileged")
    );
}

#[test]
fn base_rbac_is_no_broader_than_stated() {
    let docs = load_dir(&deploy_dir().join("base"));
    assert_no_problems("deploy/base RBAC", &check_base_rbac(&docs));
}

#[test]
fn agent_roles_are_read_only_and_never_need_nodes_proxy() {
    let docs = load_dir(&deploy_dir().join("agents"));
    let roles = of_kind(&docs, "ClusterRole");
    assert!(
        roles.len() >= 4,
        "one role per agent (Prometheus, metrics-server, OpenTelemetry, Fluent Bit)"
    );
    let kubelet_subresources = [
        "nodes/metrics",
        "nodes/stats",
        "nodes/pods",
        "nodes/log",
        "nodes/healthz",
    ];
    let mut problems = Vec::new();
    for role in &roles {
        problems.extend(broad_rules(role));
        let mut grants_kubelet = false;
        for rule in role["rules"].as_array().into_iter().flatten() {
            for verb in str_list(&rule["verbs"]) {
                if !matches!(verb, "get" | "list" | "watch") {
                    problems.push(format!(
                        "ClusterRole {}: verb {verb} is not read-only",
                        name(role)
                    ));
                }
            }
            if rule.get("nonResourceURLs").is_some() {
                problems.push(format!("ClusterRole {}: nonResourceURLs", name(role)));
            }
            grants_kubelet |= str_list(&rule["resources"])
                .iter()
                .any(|r| kubelet_subresources.contains(r));
        }
        if !grants_kubelet {
            problems.push(format!(
                "ClusterRole {}: grants no kubelet subresource",
                name(role)
            ));
        }
        let bound = of_kind(&docs, "ClusterRoleBinding")
            .iter()
            .any(|b| b["roleRef"]["name"] == role["metadata"]["name"]);
        if !bound {
            problems.push(format!(
                "ClusterRole {}: no ClusterRoleBinding uses it",
                name(role)
            ));
        }
    }
    assert_no_problems("deploy/agents", &problems);
}

/// The flags the overlays add (JSON patches on the DaemonSet's args) are flags `serve` knows.
#[test]
fn every_flag_in_base_and_overlays_is_a_flag_of_serve() {
    let known = serve_flags();
    let mut args: Vec<String> = Vec::new();
    let base = load_dir(&deploy_dir().join("base"));
    for ds in of_kind(&base, "DaemonSet") {
        for container in containers(&ds["spec"]["template"]["spec"]) {
            args.extend(str_list(&container["args"]).into_iter().map(str::to_owned));
        }
    }
    let mut overlay_flags = 0;
    for overlay in OVERLAYS {
        let path = deploy_dir()
            .join("overlays")
            .join(overlay)
            .join("kustomization.yaml");
        let kustomization = &load(&path)[0];
        for patch in kustomization["patches"].as_array().into_iter().flatten() {
            let Some(text) = patch["patch"].as_str() else {
                continue;
            };
            for doc in parse_stream(text, &path.display().to_string()) {
                for op in doc.as_array().into_iter().flatten() {
                    if let Some(value) = op["value"].as_str().filter(|v| v.starts_with("--")) {
                        args.push(value.to_owned());
                        overlay_flags += 1;
                    }
                }
            }
        }
    }
    assert!(
        overlay_flags >= 3,
        "each overlay adds its flags by a JSON patch"
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_no_problems("flags in deploy/", &unknown_flags(&args, &known));
}

// ---------------------------------------------------------------------------------------------
// The checkers themselves catch what they are for

#[test]
fn the_checks_catch_a_broken_daemonset_a_typo_and_a_broad_role() {
    let known = serve_flags();
    let docs = load_dir(&deploy_dir().join("base"));
    let good = of_kind(&docs, "DaemonSet")[0].clone();
    assert!(check_daemonset(&good, &known).is_empty());

    let mut bad = good;
    let pod = &mut bad["spec"]["template"]["spec"];
    pod["hostNetwork"] = json!(false);
    pod["tolerations"] =
        json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]);
    let container = &mut pod["containers"][0];
    container["securityContext"]["privileged"] = json!(true);
    container["securityContext"]["readOnlyRootFilesystem"] = json!(false);
    container["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    container["resources"]["limits"] = json!({});
    container["readinessProbe"]["httpGet"]["port"] = json!(10250);
    container["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--tls-cert-flie=/var/lib/kubelet/pki/kubelet.crt"));
    let problems = check_daemonset(&bad, &known).join("\n");
    for expected in [
        "hostNetwork",
        "tolerations",
        "privileged",
        "readOnlyRootFilesystem",
        "no capability",
        "resources.limits.memory",
        "readinessProbe",
        "--tls-cert-flie",
    ] {
        assert!(
            problems.contains(expected),
            "missed {expected}:\n{problems}"
        );
    }

    let mut rbac = docs;
    rbac.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "too-much"},
        "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["*"]}],
    }));
    rbac.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "sa-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "kubelet-guard", "namespace": NAMESPACE}],
    }));
    let problems = check_base_rbac(&rbac).join("\n");
    for expected in ["`*` in verbs", "grants nodes/proxy", "cluster-admin"] {
        assert!(
            problems.contains(expected),
            "missed {expected}:\n{problems}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rendered overlays

/// `kubectl kustomize DIR`, or `None` when kubectl is not installed.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running kubectl: {e}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    Some(parse_stream(
        &text,
        &format!("kubectl kustomize {}", dir.display()),
    ))
}

#[test]
fn every_overlay_renders_with_kubectl_kustomize_and_keeps_the_invariants() {
    let known = serve_flags();
    let mut dirs = vec![("base".to_owned(), deploy_dir().join("base"))];
    for overlay in OVERLAYS {
        dirs.push((
            overlay.to_owned(),
            deploy_dir().join("overlays").join(overlay),
        ));
    }
    for (label, dir) in dirs {
        let Some(docs) = kustomize(&dir) else {
            eprintln!(
                "skipped: kubectl not found, overlays not rendered (static checks still ran)"
            );
            return;
        };
        let daemonsets = of_kind(&docs, "DaemonSet");
        assert_eq!(daemonsets.len(), 1, "{label}: one DaemonSet");
        let ds = daemonsets[0];
        assert_no_problems(
            &format!("{label}: rendered DaemonSet"),
            &check_daemonset(ds, &known),
        );
        assert_no_problems(&format!("{label}: rendered RBAC"), &check_base_rbac(&docs));
        for doc in &docs {
            if !matches!(
                kind(doc),
                "Namespace" | "ClusterRoleBinding" | "ClusterRole"
            ) {
                assert_eq!(
                    doc["metadata"]["namespace"],
                    json!(NAMESPACE),
                    "{label}: {} {}",
                    kind(doc),
                    name(doc)
                );
            }
        }

        let args = str_list(&ds["spec"]["template"]["spec"]["containers"][0]["args"]);
        let modes: Vec<&str> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--mode="))
            .collect();
        let fallback = flag_value(&args, "--proxy-fallback");
        let (want_modes, want_fallback): (&[&str], Option<&str>) = match label.as_str() {
            "base" => (&[], None),
            "observe" => (&["observe"], None),
            "enforce" => (&["enforce"], None),
            "strict" => (&["enforce"], Some("false")),
            _ => unreachable!(),
        };
        assert_eq!(modes, want_modes, "{label}: --mode");
        assert_eq!(fallback, want_fallback, "{label}: --proxy-fallback");
        eprintln!("rendered {label}: {} objects, args {args:?}", docs.len());
    }
}
