//! `rbac-audit` without `-f` lists the cluster's RBAC: ClusterRoles, ClusterRoleBindings, Roles
//! and RoleBindings of every namespace, page by page, through `--kubeconfig` and `--context`,
//! against an API-server double speaking the `rbac.authorization.k8s.io/v1` list API over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Every request target the double answered, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// Starts the double; `forbidden` makes every list answer 403, as for a caller without `list`.
async fn api_server(forbidden: bool) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let target = request.uri().to_string();
                    log.lock().unwrap().push(target.clone());
                    async move { Ok::<_, Infallible>(answer(&target, forbidden)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn answer(target: &str, forbidden: bool) -> Response<Full<Bytes>> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let kind = path.rsplit('/').next().unwrap_or_default();
    let body = if forbidden {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": format!("{kind} is forbidden: User \"auditor\" cannot list resource \"{kind}\"")})
    } else {
        let continued = query.contains("continue=page-2");
        let (items, next) = match (path, continued) {
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", false) => (
                json!([{"metadata": {"name": "prometheus-server"},
                        "rules": [{"apiGroups": [""], "resources": ["nodes/proxy", "nodes/metrics"], "verbs": ["get", "list"]}]}]),
                "page-2",
            ),
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", true) => (
                json!([{"metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                                  {"nonResourceURLs": ["*"], "verbs": ["*"]}]}]),
                "",
            ),
            ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", _) => (
                json!([
                    {"metadata": {"name": "prometheus-server"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "prometheus-server"},
                     "subjects": [{"kind": "ServiceAccount", "name": "prometheus-server", "namespace": "monitoring"}]},
                    {"metadata": {"name": "cluster-admin"},
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]}
                ]),
                "",
            ),
            ("/apis/rbac.authorization.k8s.io/v1/roles", _) => (
                json!([{"metadata": {"name": "debug", "namespace": "team-a"},
                        "rules": [{"apiGroups": [""], "resources": ["*/proxy"], "verbs": ["get"]}]}]),
                "",
            ),
            ("/apis/rbac.authorization.k8s.io/v1/rolebindings", _) => (
                json!([{"metadata": {"name": "debug", "namespace": "team-a"},
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debug"},
                        "subjects": [{"kind": "User", "name": "carol"}]}]),
                "",
            ),
            _ => {
                return status(
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "code": 404}),
                );
            }
        };
        // List items carry no kind or apiVersion, as the API server writes them.
        let list_kind = match kind {
            "clusterroles" => "ClusterRoleList",
            "clusterrolebindings" => "ClusterRoleBindingList",
            "roles" => "RoleList",
            _ => "RoleBindingList",
        };
        json!({"kind": list_kind, "apiVersion": "rbac.authorization.k8s.io/v1",
               "metadata": {"resourceVersion": "42", "continue": next}, "items": items})
    };
    let code = if forbidden {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    status(code, body)
}

fn status(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A kubeconfig whose current context is unreachable and whose `double` context is the double.
fn kubeconfig(addr: SocketAddr) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kubelet-guard-rbac-audit-cluster-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: double\n  cluster: {{server: \"http://{addr}\"}}\n\
         - name: nowhere\n  cluster: {{server: \"http://127.0.0.1:1\"}}\n\
         users:\n- name: auditor\n  user: {{token: auditor-token}}\n\
         contexts:\n- name: double\n  context: {{cluster: double, user: auditor}}\n\
         - name: nowhere\n  context: {{cluster: nowhere, user: auditor}}\n\
         current-context: nowhere\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn audit(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
            .arg("rbac-audit")
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8(output.stdout).unwrap(),
            String::from_utf8(output.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_is_listed_page_by_page_and_audited() {
    let (addr, seen) = api_server(false).await;
    let config = kubeconfig(addr).display().to_string();
    let args = [
        "--kubeconfig",
        &config,
        "--context",
        "double",
        "-o",
        "json",
        "--fail-on",
        "critical",
    ];
    let (status, stdout, stderr) = audit(args.map(str::to_owned).to_vec()).await;
    assert_eq!(
        status, 1,
        "a critical finding trips --fail-on: {stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();

    let findings = report["findings"].as_array().unwrap();
    let proxy = &findings[0];
    assert_eq!(
        proxy["subject"],
        json!({"kind": "ServiceAccount", "name": "prometheus-server", "namespace": "monitoring"})
    );
    assert_eq!(proxy["subresource"], "nodes/proxy");
    assert_eq!(proxy["severity"], "critical");
    assert_eq!(
        proxy["via"],
        json!([{"binding": "prometheus-server", "role": "prometheus-server", "location": "cluster"}])
    );
    assert_eq!(findings[1]["subresource"], "nodes/metrics");
    // The second page's cluster-admin reaches system:masters: expected admin access.
    let masters: Vec<&Value> = findings
        .iter()
        .filter(|f| f["subject"]["name"] == "system:masters")
        .collect();
    assert_eq!(masters.len(), 10);
    assert!(masters.iter().all(|f| f["severity"] == "info"));
    assert_eq!(findings.len(), 12);

    let warnings = report["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].as_str().unwrap().starts_with(
        "RoleBinding team-a/debug (cluster) refers to Role debug, which covers nodes/proxy: ineffective"
    ), "{warnings:#?}");

    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|t| t.split('?').next().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "/apis/rbac.authorization.k8s.io/v1/roles",
            "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        ]
    );
    assert!(seen[1].contains("continue=page-2"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_listing_fails_with_the_api_servers_reason() {
    let (addr, _) = api_server(true).await;
    let config = kubeconfig(addr).display().to_string();
    let args = ["--kubeconfig", &config, "--context", "double"];
    let (status, stdout, stderr) = audit(args.map(str::to_owned).to_vec()).await;
    assert_eq!(
        status, 64,
        "an audit that could not list the cluster is incomplete, not a finding: {stdout}\n{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("listing the cluster's RBAC: list clusterroles: "),
        "{stderr}"
    );
    assert!(stderr.contains("cannot list resource"), "{stderr}");

    let (status, _, stderr) =
        audit(vec!["--kubeconfig".into(), "/no/such/kubeconfig".into()]).await;
    assert_eq!(
        status, 64,
        "an unreadable --kubeconfig is a bad flag: {stderr}"
    );
    assert!(
        stderr.contains("--kubeconfig: /no/such/kubeconfig"),
        "{stderr}"
    );
}
