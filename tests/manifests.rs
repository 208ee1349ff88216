//! The manifests of `deploy/` keep their invariants, so a later edit cannot silently break them:
//! every YAML file parses; the DaemonSet runs on the host network on every node (tolerations,
//! `system-node-critical`), answers its probes on the admin listener, has requests and a memory
//! limit, no container is privileged, writable or holding a capability, and every container runs
//! as uid and gid 0 with no supplemental group or fsGroup (the node's keys stay root-only); the
//! guard's upstream credential is its node's own (the `node-pki` init container,
//! `serve --node-pki-dir`): no Secret, no credential shared by every node, and no host directory
//! that holds a node credential (the kubelet's serving certificate and key are mounted as single
//! files, never `/var/lib/kubelet/pki`); strict requires the kubelet lockdown, observe and enforce
//! warn; the service account is bound to `system:auth-delegator` only, the node identities' group
//! `kubelet-guard:nodes` to `system:kubelet-api-admin` only, and nothing in the base grants more;
//! the agent roles never need `nodes/proxy`; the kubelet snippets of `deploy/kubelet/` all set the
//! same lock; and every `--flag` the manifests pass is one that `kubelet-guard serve --help` (or
//! `node-pki --help`, for the init container) lists. When `kubectl` is on the PATH, every overlay is
//! rendered with `kubectl kustomize` and the rendered output is checked the same way (the test says
//! so on stderr when it skips that part).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

const NAMESPACE: &str = "kubelet-guard";
const OVERLAYS: [&str; 3] = ["observe", "enforce", "strict"];
/// The node's own PKI (the node-local CA and the guard's upstream certificate), a host directory
/// written by the `node-pki` init container and by the guard when it renews its certificate.
const NODE_PKI_DIR: &str = "/var/lib/kubelet-guard/pki";
/// The node's group, which every guard's certificate names (`O=`), bound to what the kubelet checks.
const NODE_GROUP: &str = "kubelet-guard:nodes";
/// Files on a kubeadm node that no volume may expose, not even through a directory that holds
/// them: the node's own API-server credential and kubeconfig, and the cluster CA's key.
const HOST_CREDENTIALS: [&str; 3] = [
    "/var/lib/kubelet/pki/kubelet-client-current.pem",
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/pki/ca.key",
];
/// Upstream credentials shared by every node, which the node PKI replaces.
const SHARED_UPSTREAM_FLAGS: [&str; 3] = [
    "--upstream-client-cert-file",
    "--upstream-client-key-file",
    "--upstream-token-file",
];

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

/// The node-side files of `deploy/kubelet/`: configuration for the kubelet and the node's
/// distribution (K3s, RKE2, nodeadm), not objects for the API server.
fn is_node_side(path: &Path) -> bool {
    path.starts_with(deploy_dir().join("kubelet"))
}

/// The one document of a YAML file.
fn load_one(path: &Path) -> Value {
    let mut docs = load(path);
    assert_eq!(docs.len(), 1, "{}: one document", path.display());
    docs.remove(0)
}

// ---------------------------------------------------------------------------------------------
// The flags `serve` and `node-pki` know

/// Long flag names (`--listen`, …) listed by `kubelet-guard <subcommand> --help`; `expected` are
/// flags it must list, to be sure the help was read.
fn subcommand_flags(subcommand: &str, expected: &[&str]) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args([subcommand, "--help"])
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("run kubelet-guard {subcommand} --help: {e}"));
    assert!(
        output.status.success(),
        "{subcommand} --help failed: {output:?}"
    );
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
        expected.iter().all(|flag| flags.contains(*flag)),
        "could not read the flags of `{subcommand} --help` (expected {expected:?}):\n{help}"
    );
    flags
}

/// Long flag names listed by `kubelet-guard serve --help`.
fn serve_flags() -> BTreeSet<String> {
    subcommand_flags("serve", &["--listen", "--upstream", "--node-pki-dir"])
}

/// Long flag names listed by `kubelet-guard node-pki --help` (the init container).
fn node_pki_flags() -> BTreeSet<String> {
    subcommand_flags("node-pki", &["--dir", "--node-name"])
}

/// The flags among `args` (after the `serve` or `node-pki` subcommand) that the subcommand does
/// not know, and args that are not in the `--flag=value` form the manifests use throughout.
fn unknown_flags(args: &[&str], known: &BTreeSet<String>) -> Vec<String> {
    let subcommand = match args.first().copied() {
        Some("node-pki") => "node-pki",
        _ => "serve",
    };
    let mut problems = Vec::new();
    for arg in args {
        if *arg == "serve" || *arg == "node-pki" {
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
                "{flag} (in {arg:?}) is not a flag of `kubelet-guard {subcommand} --help`"
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

/// The subcommand each container of `pod[key]` runs (its first argument).
fn subcommands<'a>(pod: &'a Value, key: &str) -> Vec<&'a str> {
    pod[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["args"][0].as_str().unwrap_or(""))
        .collect()
}

/// The volume of `volumes` that holds `path` inside `container`, if any (the longest mount path
/// that contains it).
fn volume_of<'a>(container: &Value, volumes: &'a [Value], path: &str) -> Option<&'a Value> {
    let mount = container["volumeMounts"]
        .as_array()?
        .iter()
        .filter(|m| {
            m["mountPath"].as_str().is_some_and(|mp| {
                path == mp || path.starts_with(&format!("{}/", mp.trim_end_matches('/')))
            })
        })
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))?;
    volumes.iter().find(|v| v["name"] == mount["name"])
}

/// Whether `container` mounts the node PKI directory from the host at its own path, read-write.
fn mounts_node_pki_read_write(container: &Value, volumes: &[Value]) -> bool {
    let from_host = volume_of(container, volumes, NODE_PKI_DIR)
        .is_some_and(|v| v["hostPath"]["path"] == json!(NODE_PKI_DIR));
    let read_write = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["mountPath"] == json!(NODE_PKI_DIR) && m["readOnly"] != json!(true));
    from_host && read_write
}

/// Whether `container` sets `var` from the downward API field `field`.
fn downward_env(container: &Value, var: &str, field: &str) -> bool {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["name"] == json!(var) && e["valueFrom"]["fieldRef"]["fieldPath"] == json!(field))
}

/// Every invariant of the guard's DaemonSet; an empty list when it holds them all.
fn check_daemonset(
    ds: &Value,
    serve_known: &BTreeSet<String>,
    node_pki_known: &BTreeSet<String>,
) -> Vec<String> {
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
    // The node's credentials (the kubelet's serving key, the node CA's key) stay readable by root
    // only: no group or fsGroup of the pod may open them to a non-root id, which any pod of the
    // cluster could also run as (deploy/README.md, "Why the guard runs as root").
    for key in ["supplementalGroups", "fsGroup"] {
        if !pod["securityContext"][key].is_null() {
            fail(format!(
                "securityContext.{key} must not be set: the node's keys stay root-only"
            ));
        }
    }

    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    // No Secret: each node's guard has its own credential (node-pki); nothing is shared by every
    // node. No host directory but the node PKI: the kubelet's files are mounted one by one, so no
    // volume can expose a node credential kept next to them.
    for v in &volumes {
        let vname = v["name"].as_str().unwrap_or("?");
        let secret_source = v["projected"]["sources"]
            .as_array()
            .is_some_and(|sources| sources.iter().any(|s| s.get("secret").is_some()));
        if v.get("secret").is_some() || secret_source {
            fail(format!(
                "volume {vname}: a Secret volume; the guard's upstream credential is its node's \
                 own (node-pki), never one Secret shared by every node"
            ));
        }
        let Some(path) = v["hostPath"]["path"].as_str() else {
            continue;
        };
        let host_type = v["hostPath"]["type"].as_str().unwrap_or("");
        if path == NODE_PKI_DIR {
            if host_type != "DirectoryOrCreate" {
                fail(format!(
                    "volume {vname}: hostPath {NODE_PKI_DIR} must be type DirectoryOrCreate"
                ));
            }
            continue;
        }
        for credential in HOST_CREDENTIALS {
            let parent = format!("{}/", path.trim_end_matches('/'));
            if credential == path || credential.starts_with(&parent) {
                fail(format!(
                    "volume {vname}: hostPath {path} exposes {credential}; mount single files \
                     (never the whole /var/lib/kubelet/pki or /etc/kubernetes)"
                ));
            }
        }
        if host_type != "File" {
            fail(format!(
                "volume {vname}: hostPath {path} must be type File (one file); only \
                 {NODE_PKI_DIR} is a directory, found type {host_type:?}"
            ));
        }
    }
    let node_pki_volume = volumes
        .iter()
        .any(|v| v["hostPath"]["path"] == json!(NODE_PKI_DIR));
    if !node_pki_volume {
        fail(format!(
            "no hostPath volume for the node PKI directory {NODE_PKI_DIR}"
        ));
    }
    // The node's CA and the guard's certificate exist before the guard starts.
    let init = subcommands(pod, "initContainers");
    if init != ["node-pki"] {
        fail(format!(
            "initContainers must be one container running `node-pki` (the node's CA and the \
             guard's certificate), found {init:?}"
        ));
    }
    let main = subcommands(pod, "containers");
    if main != ["serve"] {
        fail(format!(
            "containers must be one container running `serve`, found {main:?}"
        ));
    }

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
        // Explicitly root (the image's own user is nonroot, 65532, which cannot read those keys),
        // set on the pod or the container.
        for key in ["runAsUser", "runAsGroup"] {
            let id = if sc[key].is_null() {
                &pod["securityContext"][key]
            } else {
                &sc[key]
            };
            if id != &json!(0) {
                fail(format!(
                    "{key} must be 0 (pod or container): the node's keys are root-only, found {id}"
                ));
            }
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

        // Host paths are read-only, but for the node PKI directory, which node-pki and the
        // guard's renewal write.
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let host_path = volumes
                .iter()
                .find(|v| v["name"] == mount["name"])
                .and_then(|v| v["hostPath"]["path"].as_str());
            let Some(host_path) = host_path else {
                continue;
            };
            if host_path != NODE_PKI_DIR && mount["readOnly"] != json!(true) {
                fail(format!(
                    "hostPath mount {} must be readOnly",
                    mount["mountPath"]
                ));
            }
        }

        if !downward_env(container, "NODE_NAME", "spec.nodeName") {
            fail("env NODE_NAME must come from the downward API (spec.nodeName)".into());
        }

        let args = str_list(&container["args"]);
        let subcommand_problems = match args.first().copied() {
            Some("serve") => check_serve(container, &volumes, &args, serve_known),
            Some("node-pki") => check_node_pki(container, &volumes, &args, node_pki_known),
            _ => vec![
                "args must start with the `serve` subcommand (or `node-pki`, for the init \
                 container)"
                    .to_owned(),
            ],
        };
        problems.extend(
            subcommand_problems
                .into_iter()
                .map(|p| format!("container {cname}: {p}")),
        );
    }
    problems
}

/// The invariants of the guard's own container, `serve`.
fn check_serve(
    container: &Value,
    volumes: &[Value],
    args: &[&str],
    known: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = unknown_flags(args, known);
    let mut fail = |message: String| problems.push(message);

    if !downward_env(container, "NODE_IP", "status.hostIP") {
        fail("env NODE_IP must come from the downward API (status.hostIP)".into());
    }
    let expect = [
        ("--listen", "$(NODE_IP):10250"),
        ("--upstream", "https://127.0.0.1:10250"),
        ("--upstream-server-name", "$(NODE_NAME)"),
        ("--node-name", "$(NODE_NAME)"),
        ("--node-pki-dir", NODE_PKI_DIR),
    ];
    for (flag, value) in expect {
        if flag_value(args, flag) != Some(value) {
            fail(format!("args must contain {flag}={value}"));
        }
    }
    // clap refuses a flag given twice, so an overlay must replace a base argument, not add a
    // second one.
    let mut seen = BTreeSet::new();
    for arg in args.iter().skip(1) {
        let flag = arg.split('=').next().unwrap_or(arg);
        if !seen.insert(flag) {
            fail(format!(
                "{flag} is given more than once (replace the base's argument instead)"
            ));
        }
    }
    // Every file a flag names lies on a mounted volume (catches a path typo on either side).
    for arg in args {
        let Some((flag, path)) = arg.split_once('=') else {
            continue;
        };
        if (flag.ends_with("-file") || flag.ends_with("-dir") || flag == "--kubeconfig")
            && volume_of(container, volumes, path).is_none()
        {
            fail(format!("{flag}={path} is on no volume mount"));
        }
    }
    for flag in ["--tls-cert-file", "--tls-private-key-file"] {
        let from_host = flag_value(args, flag)
            .and_then(|path| volume_of(container, volumes, path))
            .is_some_and(|v| v.get("hostPath").is_some());
        if !from_host {
            fail(format!(
                "{flag} must be the kubelet's file, from a hostPath mount"
            ));
        }
    }
    // The upstream credential is the node's own, from the node PKI; nothing shared by every node.
    for flag in SHARED_UPSTREAM_FLAGS {
        if flag_value(args, flag).is_some() {
            fail(format!(
                "{flag} must not be set: the guard calls its kubelet with its node's own \
                 certificate (--node-pki-dir)"
            ));
        }
    }
    if !mounts_node_pki_read_write(container, volumes) {
        fail(format!(
            "must mount {NODE_PKI_DIR} read-write from the host (the guard renews its \
             certificate there)"
        ));
    }
    let lockdown: Vec<&str> = args
        .iter()
        .filter_map(|arg| arg.strip_prefix("--kubelet-lockdown="))
        .collect();
    if !matches!(lockdown.as_slice(), ["warn" | "require"]) {
        fail(format!(
            "args must contain --kubelet-lockdown=warn or =require once, found {lockdown:?}"
        ));
    }

    // Probes on the admin listener (--metrics-listen), which must be reachable by the
    // kubelet's prober: with hostNetwork, the pod IP is the node IP.
    let metrics_listen = flag_value(args, "--metrics-listen").unwrap_or("127.0.0.1:9250");
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
    problems
}

/// The invariants of the init container, `node-pki`: it writes the node PKI directory the guard
/// reads, for the node it runs on.
fn check_node_pki(
    container: &Value,
    volumes: &[Value],
    args: &[&str],
    known: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = unknown_flags(args, known);
    let mut fail = |message: String| problems.push(message);
    for (flag, value) in [("--dir", NODE_PKI_DIR), ("--node-name", "$(NODE_NAME)")] {
        if flag_value(args, flag) != Some(value) {
            fail(format!("args must contain {flag}={value}"));
        }
    }
    if !mounts_node_pki_read_write(container, volumes) {
        fail(format!(
            "must mount {NODE_PKI_DIR} read-write from the host (it writes the node's CA there)"
        ));
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

/// The base's RBAC: the service account bound to system:auth-delegator only, the node identities'
/// group (kubelet-guard:nodes) to system:kubelet-api-admin only, and no role granting more.
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
    // A group, not a user: one binding for every node's own identity (kubelet-guard:node:<node>).
    let is_node_group = |s: &Value| {
        s["kind"] == json!("Group")
            && s["name"] == json!(NODE_GROUP)
            && s["apiGroup"] == json!("rbac.authorization.k8s.io")
    };

    let bindings: Vec<&Value> = of_kind(docs, "ClusterRoleBinding")
        .into_iter()
        .chain(of_kind(docs, "RoleBinding"))
        .collect();
    let mut sa_roles = Vec::new();
    let mut group_roles = Vec::new();
    for binding in &bindings {
        let role = binding["roleRef"]["name"].as_str().unwrap_or("");
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        for subject in &subjects {
            if is_guard_sa(subject) {
                sa_roles.push(role.to_owned());
            } else if is_node_group(subject) {
                group_roles.push(role.to_owned());
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
    if group_roles != ["system:kubelet-api-admin"] {
        problems.push(format!(
            "the node identities' group ({NODE_GROUP}) must be bound to system:kubelet-api-admin \
             only, found {group_roles:?}"
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

/// Problems of a document that must be a Secret-free manifest: a Secret, or a kustomization that
/// generates one.
fn secret_problems(doc: &Value, origin: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if kind(doc) == "Secret" {
        problems.push(format!(
            "{origin}: Secret {}: no credential is shared by every node",
            name(doc)
        ));
    }
    if doc.get("secretGenerator").is_some() {
        problems.push(format!(
            "{origin}: a secretGenerator: no credential is shared by every node"
        ));
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// The kubelet's side (deploy/kubelet/)

/// What a KubeletConfiguration (or nodeadm's `spec.kubelet.config`) must set to lock the kubelet
/// to its guard.
fn lock_problems(config: &Value) -> Vec<String> {
    let want = [
        ("/address", json!("127.0.0.1")),
        ("/readOnlyPort", json!(0)),
        (
            "/authentication/x509/clientCAFile",
            json!(format!("{NODE_PKI_DIR}/ca.crt")),
        ),
        ("/authentication/webhook/enabled", json!(false)),
        ("/authentication/anonymous/enabled", json!(false)),
        ("/authorization/mode", json!("Webhook")),
    ];
    want.iter()
        .filter(|(pointer, value)| config.pointer(pointer) != Some(value))
        .map(|(pointer, value)| {
            format!(
                "{pointer} must be {value}, found {}",
                config
                    .pointer(pointer)
                    .map_or_else(|| "nothing".to_owned(), Value::to_string)
            )
        })
        .collect()
}

/// A kubelet drop-in or configuration file needs both, or the kubelet refuses it.
fn kubelet_configuration_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if doc["apiVersion"] != json!("kubelet.config.k8s.io/v1beta1") {
        problems.push("apiVersion must be kubelet.config.k8s.io/v1beta1".to_owned());
    }
    if kind(doc) != "KubeletConfiguration" {
        problems.push("kind must be KubeletConfiguration".to_owned());
    }
    problems
}

/// The JSON-patch operations of an overlay's own patches (strategic-merge patches are skipped).
fn overlay_patch_ops(overlay: &str) -> Vec<Value> {
    let path = deploy_dir()
        .join("overlays")
        .join(overlay)
        .join("kustomization.yaml");
    let kustomization = &load(&path)[0];
    let mut ops = Vec::new();
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        let Some(text) = patch["patch"].as_str() else {
            continue;
        };
        for doc in parse_stream(text, &path.display().to_string()) {
            ops.extend(doc.as_array().into_iter().flatten().cloned());
        }
    }
    ops
}

/// The base DaemonSet's pod spec.
fn base_pod() -> Value {
    let docs = load_dir(&deploy_dir().join("base"));
    let daemonsets = of_kind(&docs, "DaemonSet");
    assert_eq!(daemonsets.len(), 1, "deploy/base has one DaemonSet");
    daemonsets[0]["spec"]["template"]["spec"].clone()
}

// ---------------------------------------------------------------------------------------------
// Static checks of the files

#[test]
fn every_yaml_file_under_deploy_parses_into_kubernetes_documents() {
    // deploy/kubelet/ holds node-side files (K3s and RKE2 configuration has no apiVersion):
    // the_kubelet_snippets_lock_the_kubelet_to_its_node_ca checks those.
    let files: Vec<PathBuf> = yaml_files(&deploy_dir())
        .into_iter()
        .filter(|file| !is_node_side(file))
        .collect();
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
        &check_daemonset(ds, &serve_flags(), &node_pki_flags()),
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

#[test]
fn no_secret_and_no_shared_upstream_credential_anywhere_in_deploy() {
    let mut problems = Vec::new();
    for file in yaml_files(&deploy_dir()) {
        if is_node_side(&file) {
            continue;
        }
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in SHARED_UPSTREAM_FLAGS
            .iter()
            .copied()
            .chain(["kubelet-guard-upstream"])
        {
            if text.contains(needle) {
                problems.push(format!(
                    "{origin}: mentions {needle}, the credential every node used to share"
                ));
            }
        }
        for doc in load(&file) {
            problems.extend(secret_problems(&doc, &origin));
        }
    }
    assert_no_problems("deploy/ credentials", &problems);
}

#[test]
fn the_guard_mounts_the_kubelets_serving_pair_never_its_pki_directory() {
    let pod = base_pod();
    let host_paths: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    let kubelet_paths: BTreeSet<&str> = host_paths
        .iter()
        .copied()
        .filter(|p| *p == "/var/lib/kubelet" || p.starts_with("/var/lib/kubelet/"))
        .collect();
    assert_eq!(
        kubelet_paths,
        BTreeSet::from([
            "/var/lib/kubelet/pki/kubelet.crt",
            "/var/lib/kubelet/pki/kubelet.key"
        ]),
        "from /var/lib/kubelet the guard mounts its serving certificate and key, one file each \
         (the directory also holds kubelet-client-current.pem, the node's own API-server \
         credential)"
    );
    for path in &host_paths {
        assert!(
            !"/var/lib/kubelet/pki/kubelet-client-current.pem"
                .starts_with(&format!("{}/", path.trim_end_matches('/'))),
            "hostPath {path} exposes the node's API-server credential"
        );
    }
}

#[test]
fn the_node_pki_init_container_prepares_what_serve_uses() {
    let pod = base_pod();
    let init = pod["initContainers"].as_array().expect("initContainers");
    assert_eq!(init.len(), 1, "one init container, node-pki");
    let dir_arg = format!("--dir={NODE_PKI_DIR}");
    assert_eq!(
        str_list(&init[0]["args"]),
        ["node-pki", dir_arg.as_str(), "--node-name=$(NODE_NAME)"],
        "node-pki creates the node's CA and the guard's certificate in {NODE_PKI_DIR}"
    );
    let serve_args = str_list(&pod["containers"][0]["args"]);
    assert_eq!(serve_args.first(), Some(&"serve"));
    assert_eq!(
        flag_value(&serve_args, "--node-pki-dir"),
        Some(NODE_PKI_DIR),
        "serve takes its upstream certificate from the directory node-pki writes"
    );
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    for container in [&init[0], &pod["containers"][0]] {
        assert!(
            mounts_node_pki_read_write(container, &volumes),
            "container {} mounts {NODE_PKI_DIR} read-write from the host",
            container["name"]
        );
    }
    let node_pki = volumes
        .iter()
        .find(|v| v["hostPath"]["path"] == json!(NODE_PKI_DIR))
        .expect("a hostPath volume for the node PKI");
    assert_eq!(node_pki["hostPath"]["type"], json!("DirectoryOrCreate"));
}

#[test]
fn the_node_identities_are_bound_by_their_group_to_kubelet_api_admin() {
    let docs = load_dir(&deploy_dir().join("base"));
    let bindings: Vec<&Value> = of_kind(&docs, "ClusterRoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == json!("system:kubelet-api-admin"))
        .collect();
    assert_eq!(bindings.len(), 1, "one binding to system:kubelet-api-admin");
    assert_eq!(bindings[0]["roleRef"]["kind"], json!("ClusterRole"));
    assert_eq!(
        bindings[0]["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": NODE_GROUP}]),
        "the GROUP of every node's guard certificate, not a user shared by all nodes"
    );
}

#[test]
fn every_overlay_writes_audit_events_to_standard_output_and_logs_stay_json() {
    let pod = base_pod();
    let base_args = str_list(&pod["containers"][0]["args"]);
    for arg in ["--log-format=json", "--audit-log-path=-"] {
        assert!(
            base_args.contains(&arg),
            "the base (so every overlay) has {arg}: {base_args:?}"
        );
    }
    for overlay in OVERLAYS {
        let audit_ops: Vec<Value> = overlay_patch_ops(overlay)
            .into_iter()
            .filter(|op| {
                op["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("--audit"))
            })
            .collect();
        assert_eq!(
            audit_ops,
            Vec::<Value>::new(),
            "{overlay} keeps the base's audit sink"
        );
    }
    let added: Vec<Value> = overlay_patch_ops("observe")
        .into_iter()
        .filter(|op| op["op"] == json!("add"))
        .map(|op| op["value"].clone())
        .collect();
    assert!(added.contains(&json!("--mode=observe")), "{added:?}");
}

#[test]
fn strict_requires_the_kubelet_lockdown_and_the_other_overlays_keep_the_base_warn() {
    let pod = base_pod();
    let base_args = str_list(&pod["containers"][0]["args"]);
    let base_lockdown: Vec<&str> = base_args
        .iter()
        .copied()
        .filter(|arg| arg.starts_with("--kubelet-lockdown="))
        .collect();
    assert_eq!(base_lockdown, ["--kubelet-lockdown=warn"], "the base warns");
    let args_prefix = "/spec/template/spec/containers/0/args/";
    for overlay in OVERLAYS {
        let ops = overlay_patch_ops(overlay);
        let lockdown_ops: Vec<&Value> = ops
            .iter()
            .filter(|op| {
                op["value"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("--kubelet-lockdown="))
            })
            .collect();
        if overlay != "strict" {
            assert!(
                lockdown_ops.is_empty(),
                "{overlay} keeps the base's --kubelet-lockdown=warn: {lockdown_ops:?}"
            );
            continue;
        }
        // serve takes a flag once: strict replaces the base's argument, at its index, guarded by
        // a `test` op so that kustomize fails instead of patching another argument.
        assert!(
            !lockdown_ops.iter().any(|op| op["op"] == json!("add")),
            "strict must replace --kubelet-lockdown, not add a second one: {lockdown_ops:?}"
        );
        let replace = lockdown_ops
            .iter()
            .find(|op| op["op"] == json!("replace"))
            .expect("strict replaces --kubelet-lockdown=warn");
        assert_eq!(replace["value"], json!("--kubelet-lockdown=require"));
        let path = replace["path"].as_str().unwrap();
        let index: usize = path
            .strip_prefix(args_prefix)
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("strict replaces an argument of the guard: {path}"));
        assert_eq!(
            base_args.get(index),
            Some(&"--kubelet-lockdown=warn"),
            "strict's replace at {path} must hit the base's --kubelet-lockdown=warn"
        );
        assert!(
            lockdown_ops.iter().any(|op| op["op"] == json!("test")
                && op["path"] == json!(path)
                && op["value"] == json!("--kubelet-lockdown=warn")),
            "strict guards its replace with a `test` op on {path}"
        );
    }
}

#[test]
fn the_kubelet_snippets_lock_the_kubelet_to_its_node_ca() {
    let dir = deploy_dir().join("kubelet");
    let mut problems = Vec::new();
    let mut report = |file: &str, found: Vec<String>| {
        problems.extend(found.into_iter().map(|p| format!("{file}: {p}")));
    };

    // kubeadm's config.yaml fields and the drop-in for --config-dir.
    for file in ["90-kubelet-guard.conf", "kubeadm-kubelet-config.yaml"] {
        let config = load_one(&dir.join(file));
        report(file, kubelet_configuration_problems(&config));
        report(file, lock_problems(&config));
    }
    // The observe phase's drop-in turns token authentication back on, and nothing else.
    let file = "95-kubelet-guard-observe.conf";
    let mut observe = load_one(&dir.join(file));
    report(file, kubelet_configuration_problems(&observe));
    if let Some(fields) = observe.as_object_mut() {
        fields.remove("apiVersion");
        fields.remove("kind");
    }
    if observe != json!({"authentication": {"webhook": {"enabled": true}}}) {
        report(
            file,
            vec![format!(
                "must set authentication.webhook.enabled: true and nothing else, found {observe}"
            )],
        );
    }
    // EKS on Amazon Linux 2023: nodeadm's NodeConfig.
    let file = "eks-al2023-nodeconfig.yaml";
    let node_config = load_one(&dir.join(file));
    if node_config["apiVersion"] != json!("node.eks.aws/v1alpha1")
        || kind(&node_config) != "NodeConfig"
    {
        report(
            file,
            vec!["must be a node.eks.aws/v1alpha1 NodeConfig".into()],
        );
    }
    report(
        file,
        lock_problems(&node_config["spec"]["kubelet"]["config"]),
    );

    // K3s and RKE2: the same lock as kubelet arguments, the servers' egress mode, the observe
    // phase's override.
    let client_ca_arg = format!("client-ca-file={NODE_PKI_DIR}/ca.crt");
    let lock_args: BTreeSet<String> = [
        "address=127.0.0.1",
        "read-only-port=0",
        client_ca_arg.as_str(),
        "authentication-token-webhook=false",
        "anonymous-auth=false",
        "authorization-mode=Webhook",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for distro in ["k3s", "rke2"] {
        let file = format!("{distro}/90-kubelet-guard.yaml");
        let main = load_one(&dir.join(&file));
        let args: BTreeSet<String> = str_list(&main["kubelet-arg+"])
            .into_iter()
            .map(str::to_owned)
            .collect();
        if args != lock_args || main.as_object().map_or(0, |m| m.len()) != 1 {
            report(
                &file,
                vec![format!(
                    "must append exactly {lock_args:?} to kubelet-arg (kubelet-arg+), found {main}"
                )],
            );
        }
        let file = format!("{distro}/91-kubelet-guard-server.yaml");
        let server = load_one(&dir.join(&file));
        if server != json!({"egress-selector-mode": "disabled"}) {
            report(
                &file,
                vec![format!(
                    "must set egress-selector-mode: disabled and nothing else, found {server}"
                )],
            );
        }
        let file = format!("{distro}/95-kubelet-guard-observe.yaml");
        let observe = load_one(&dir.join(&file));
        if observe != json!({"kubelet-arg+": ["authentication-token-webhook=true"]}) {
            report(
                &file,
                vec![format!(
                    "must append authentication-token-webhook=true only, found {observe}"
                )],
            );
        }
    }
    assert_no_problems("deploy/kubelet", &problems);
}

/// The flags the manifests pass are flags their subcommand knows: `serve` for the guard and the
/// overlays' JSON patches on its args, `node-pki` for the init container.
#[test]
fn every_flag_in_base_and_overlays_is_a_flag_of_its_subcommand() {
    let serve_known = serve_flags();
    let node_pki_known = node_pki_flags();
    let mut serve_args: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    let base = load_dir(&deploy_dir().join("base"));
    for ds in of_kind(&base, "DaemonSet") {
        for container in containers(&ds["spec"]["template"]["spec"]) {
            let args = str_list(&container["args"]);
            if args.first() == Some(&"node-pki") {
                problems.extend(unknown_flags(&args, &node_pki_known));
            } else {
                serve_args.extend(args.into_iter().map(str::to_owned));
            }
        }
    }
    let mut overlay_flags = 0;
    for overlay in OVERLAYS {
        for op in overlay_patch_ops(overlay) {
            if let Some(value) = op["value"].as_str().filter(|v| v.starts_with("--")) {
                serve_args.push(value.to_owned());
                overlay_flags += 1;
            }
        }
    }
    assert!(
        overlay_flags >= 3,
        "each overlay adds its flags by a JSON patch"
    );
    let serve_args: Vec<&str> = serve_args.iter().map(String::as_str).collect();
    problems.extend(unknown_flags(&serve_args, &serve_known));
    assert_no_problems("flags in deploy/", &problems);
}

// ---------------------------------------------------------------------------------------------
// The checkers themselves catch what they are for

#[test]
fn the_checks_catch_a_broken_daemonset_a_typo_and_a_broad_role() {
    let serve_known = serve_flags();
    let node_pki_known = node_pki_flags();
    let docs = load_dir(&deploy_dir().join("base"));
    let good = of_kind(&docs, "DaemonSet")[0].clone();
    assert!(check_daemonset(&good, &serve_known, &node_pki_known).is_empty());

    let mut bad = good.clone();
    let pod = &mut bad["spec"]["template"]["spec"];
    pod["hostNetwork"] = json!(false);
    pod["tolerations"] =
        json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]);
    // A non-root guard given the keys through a group.
    pod["securityContext"]["supplementalGroups"] = json!([65532]);
    let container = &mut pod["containers"][0];
    container["securityContext"]["privileged"] = json!(true);
    container["securityContext"]["readOnlyRootFilesystem"] = json!(false);
    container["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    container["resources"]["limits"] = json!({});
    container["readinessProbe"]["httpGet"]["port"] = json!(10250);
    container["securityContext"]["runAsUser"] = json!(65532);
    container["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--tls-cert-flie=/var/lib/kubelet/pki/kubelet.crt"));
    let problems = check_daemonset(&bad, &serve_known, &node_pki_known).join("\n");
    for expected in [
        "hostNetwork",
        "tolerations",
        "privileged",
        "readOnlyRootFilesystem",
        "no capability",
        "resources.limits.memory",
        "readinessProbe",
        "--tls-cert-flie",
        "runAsUser must be 0",
        "supplementalGroups must not be set",
    ] {
        assert!(
            problems.contains(expected),
            "missed {expected}:\n{problems}"
        );
    }

    // The shared credential and the whole kubelet PKI directory, as the guard once had them,
    // without the node PKI, and a flag given twice.
    let mut shared = good;
    let pod = &mut shared["spec"]["template"]["spec"];
    pod.as_object_mut().unwrap().remove("initContainers");
    pod["volumes"].as_array_mut().unwrap().extend([
        json!({"name": "kubelet-pki", "hostPath": {"path": "/var/lib/kubelet/pki", "type": "Directory"}}),
        json!({"name": "upstream-client", "secret": {"secretName": "kubelet-guard-upstream"}}),
    ]);
    let container = &mut pod["containers"][0];
    container["volumeMounts"].as_array_mut().unwrap().extend([
        json!({"name": "kubelet-pki", "mountPath": "/var/lib/kubelet/pki", "readOnly": true}),
        json!({"name": "upstream-client", "mountPath": "/etc/kubelet-guard/upstream", "readOnly": true}),
    ]);
    container["args"].as_array_mut().unwrap().extend([
        json!("--upstream-client-cert-file=/etc/kubelet-guard/upstream/tls.crt"),
        json!("--kubelet-lockdown=require"),
    ]);
    let problems = check_daemonset(&shared, &serve_known, &node_pki_known).join("\n");
    for expected in [
        "exposes /var/lib/kubelet/pki/kubelet-client-current.pem",
        "must be type File",
        "a Secret volume",
        "--upstream-client-cert-file must not be set",
        "initContainers must be one container running `node-pki`",
        "--kubelet-lockdown is given more than once",
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
    rbac.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "shared-upstream"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubelet-guard"}],
    }));
    let problems = check_base_rbac(&rbac).join("\n");
    for expected in [
        "`*` in verbs",
        "grants nodes/proxy",
        "cluster-admin",
        "shared-upstream: unexpected subject",
    ] {
        assert!(
            problems.contains(expected),
            "missed {expected}:\n{problems}"
        );
    }
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kubelet-guard-upstream"}});
    assert!(!secret_problems(&secret, "test").is_empty());

    let open = json!({
        "address": "0.0.0.0",
        "readOnlyPort": 10255,
        "authentication": {"x509": {"clientCAFile": "/etc/kubernetes/pki/ca.crt"}, "webhook": {"enabled": true}},
        "authorization": {"mode": "Webhook"},
    });
    let problems = lock_problems(&open).join("\n");
    for expected in [
        "/address",
        "/readOnlyPort",
        "/authentication/x509/clientCAFile",
        "/authentication/webhook/enabled",
        "/authentication/anonymous/enabled",
    ] {
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
    let serve_known = serve_flags();
    let node_pki_known = node_pki_flags();
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
            &check_daemonset(ds, &serve_known, &node_pki_known),
        );
        assert_no_problems(&format!("{label}: rendered RBAC"), &check_base_rbac(&docs));
        let secrets: Vec<String> = docs
            .iter()
            .flat_map(|doc| secret_problems(doc, &label))
            .collect();
        assert_no_problems(&format!("{label}: rendered Secrets"), &secrets);
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
        let lockdown: Vec<&str> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--kubelet-lockdown="))
            .collect();
        let (want_modes, want_fallback, want_lockdown): (&[&str], Option<&str>, &[&str]) =
            match label.as_str() {
                "base" => (&[], None, &["warn"]),
                "observe" => (&["observe"], None, &["warn"]),
                "enforce" => (&["enforce"], None, &["warn"]),
                "strict" => (&["enforce"], Some("false"), &["require"]),
                _ => unreachable!(),
            };
        assert_eq!(modes, want_modes, "{label}: --mode");
        assert_eq!(
            flag_value(&args, "--audit-log-path"),
            Some("-"),
            "{label}: every rollout phase writes an audit trail"
        );
        assert_eq!(fallback, want_fallback, "{label}: --proxy-fallback");
        assert_eq!(lockdown, want_lockdown, "{label}: --kubelet-lockdown");
        assert_eq!(
            flag_value(&args, "--node-pki-dir"),
            Some(NODE_PKI_DIR),
            "{label}: --node-pki-dir"
        );
        eprintln!("rendered {label}: {} objects, args {args:?}", docs.len());
    }
}
