//! `--pod-scoped-authz`: exec, attach, port-forward, run and container logs also need the
//! namespaced permission on the pod named in the path, as the API server would require it,
//! except for the exempt users (the API server's own kubelet client).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use support::guard::Cluster;

const TOKEN: &str = "t-debugger";
const USER: &str = "debugger";

async fn cluster() -> Cluster {
    let cluster = Cluster::start(&[
        "--pod-scoped-authz",
        "--authorization-webhook-cache-unauthorized-ttl=0s",
    ])
    .await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "*", "proxy");
    cluster
}

fn pod_reviews(cluster: &Cluster) -> Vec<serde_json::Value> {
    cluster
        .api
        .access_reviews()
        .into_iter()
        .map(|r| r["spec"]["resourceAttributes"].clone())
        .filter(|a| a["resource"] == "pods")
        .collect()
}

#[tokio::test]
async fn exec_needs_create_on_pods_exec_in_the_pods_namespace() {
    let cluster = cluster().await;
    let target = "/exec/team-a/web/app?command=id&stdout=1";
    let refused = cluster
        .client()
        .websocket(cluster.addr(), target, Some(TOKEN), &["v5.channel.k8s.io"])
        .await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("exec was not refused")
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
    assert_eq!(
        body,
        "Forbidden (user=debugger, verb=create, resource=pods, subresource(s)=[exec], namespace=team-a, name=web)\n"
    );
    assert_eq!(cluster.kubelet.count(), 0);
    assert_eq!(
        pod_reviews(&cluster),
        [
            serde_json::json!({"group": "", "version": "v1", "resource": "pods", "subresource": "exec", "namespace": "team-a", "name": "web", "verb": "create"})
        ]
    );

    cluster.api.allow_pod(USER, "create", "exec", "team-b");
    let refused = cluster
        .client()
        .websocket(cluster.addr(), target, Some(TOKEN), &["v5.channel.k8s.io"])
        .await;
    assert!(
        refused.is_err(),
        "a grant in another namespace does not count"
    );
    cluster.api.allow_pod(USER, "create", "exec", "team-a");
    let (response, _) = cluster
        .client()
        .websocket(cluster.addr(), target, Some(TOKEN), &["v5.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
}

#[tokio::test]
async fn each_endpoint_needs_its_own_pod_permission() {
    let cluster = cluster().await;
    for (method, path, verb, subresource) in [
        ("GET", "/containerLogs/team-a/web/app", "get", "log"),
        ("POST", "/run/team-a/web/app?cmd=id", "create", "exec"),
        ("POST", "/portForward/team-a/web", "create", "portforward"),
        ("POST", "/attach/team-a/web/uid-1/app", "create", "attach"),
    ] {
        let response = cluster
            .client()
            .send(
                cluster.addr(),
                support::client::request(method, path, Some(TOKEN)),
            )
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let last = pod_reviews(&cluster).pop().unwrap();
        assert_eq!(
            (
                last["verb"].as_str().unwrap(),
                last["subresource"].as_str().unwrap()
            ),
            (verb, subresource),
            "{path}"
        );
        assert_eq!(last["name"], "web");
    }
    cluster.api.allow_pod(USER, "get", "log", "team-a");
    let (status, _) = cluster.get("/containerLogs/team-a/web/app", TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster.kubelet.count(), 1);
}

#[tokio::test]
async fn the_api_servers_client_is_exempt_and_odd_paths_are_refused() {
    let cluster = cluster().await;
    cluster
        .api
        .allow("kube-apiserver-kubelet-client", "*", "proxy");
    let apiserver = cluster.client_with_cert("kube-apiserver-kubelet-client", &[]);
    let (status, _, _) = apiserver
        .get(cluster.addr(), "/containerLogs/team-a/web/app", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        pod_reviews(&cluster).is_empty(),
        "the API server already authorized it"
    );

    let (status, body) = cluster.get("/containerLogs/team-a/web", TOKEN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(cluster.kubelet.count(), 1);
}

#[tokio::test]
async fn without_the_flag_no_pod_check_is_made() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "*", "proxy");
    assert_eq!(
        cluster.get("/containerLogs/team-a/web/app", TOKEN).await.0,
        StatusCode::OK
    );
    assert!(pod_reviews(&cluster).is_empty());
}

#[tokio::test]
async fn in_embedded_mode_a_rolebinding_in_the_pods_namespace_grants_the_pod_permission() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("pod-scope-embedded");
    let tokens = dir.join("tokens.csv");
    std::fs::write(&tokens, format!("{TOKEN},{USER},uid-1\n")).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: node-proxy}}\nrules: [{{apiGroups: [\"\"], resources: [nodes/proxy], verbs: [\"*\"]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: node-proxy}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-proxy}}\nsubjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {USER}}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: logs, namespace: team-a}}\nrules: [{{apiGroups: [\"\"], resources: [pods/log], verbs: [get]}}]\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: logs, namespace: team-a}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: logs}}\nsubjects: [{{kind: User, apiGroup: rbac.authorization.k8s.io, name: {USER}}}]\n"
        ),
    )
    .unwrap();
    let mut argv = cluster.flags(&["--pod-scoped-authz"]);
    argv.retain(|flag| !flag.starts_with("--kubeconfig="));
    argv.push(format!("--token-auth-file={}", tokens.display()));
    argv.push(format!("--rbac-policy-file={}", policy.display()));
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    let client = cluster.client();
    assert_eq!(
        client
            .get(
                guard.proxy_addr,
                "/containerLogs/team-a/web/app",
                Some(TOKEN)
            )
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        client
            .get(
                guard.proxy_addr,
                "/containerLogs/team-b/web/app",
                Some(TOKEN)
            )
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    guard.stop().await;
}
