//! Embedded mode: the static token file and the RBAC policy file stand in for TokenReview and
//! SubjectAccessReview (together, with no API server at all, or each with the other's cluster
//! half), are validated at start-up, and are reloaded with keep-last-good semantics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::{Path, PathBuf};

use http::StatusCode;
use support::guard::Cluster;

const POLICY: &str = include_str!("../examples/embedded/policy.yaml");
const TOKENS: &str = include_str!("../examples/embedded/tokens.csv");
const METRICS: &str = "example-metrics-agent-token";
const LEGACY: &str = "example-legacy-agent-token";
const ADMIN: &str = "example-admin-token";

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// The cluster's flags with the embedded files, and without `--kubeconfig` when both are given.
fn embedded_flags(cluster: &Cluster, tokens: Option<&Path>, policy: Option<&Path>) -> Vec<String> {
    let mut argv = cluster.flags(&["--tls-reload-interval=20ms"]);
    if tokens.is_some() && policy.is_some() {
        argv.retain(|flag| !flag.starts_with("--kubeconfig="));
    }
    argv.extend(tokens.map(|p| format!("--token-auth-file={}", p.display())));
    argv.extend(policy.map(|p| format!("--rbac-policy-file={}", p.display())));
    argv
}

#[tokio::test]
async fn the_example_files_alone_decide_without_any_api_server() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("embedded");
    let argv = embedded_flags(
        &cluster,
        Some(&write(&dir, "tokens.csv", TOKENS)),
        Some(&write(&dir, "policy.yaml", POLICY)),
    );
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    let client = cluster.client();
    let get = |path: &'static str, token: &'static str| {
        let client = client.clone();
        async move { client.get(guard.proxy_addr, path, Some(token)).await.0 }
    };

    assert_eq!(get("/metrics/cadvisor", METRICS).await, StatusCode::OK);
    assert_eq!(get("/stats/summary", METRICS).await, StatusCode::OK);
    assert_eq!(get("/pods", METRICS).await, StatusCode::FORBIDDEN);
    assert_eq!(
        get("/pods", LEGACY).await,
        StatusCode::OK,
        "the legacy grant reads /pods through the fallback"
    );
    assert_eq!(get("/metrics", LEGACY).await, StatusCode::FORBIDDEN);
    assert_eq!(
        get("/containerLogs/default/web/app", ADMIN).await,
        StatusCode::OK
    );
    assert_eq!(get("/pods", "not-a-token").await, StatusCode::UNAUTHORIZED);

    let exec = "/exec/default/web/app?command=id&stdout=1";
    let refused = client
        .websocket(guard.proxy_addr, exec, Some(LEGACY), &["v5.channel.k8s.io"])
        .await;
    let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
        panic!("the legacy agent's exec was not refused")
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (response, _) = client
        .websocket(guard.proxy_addr, exec, Some(ADMIN), &["v5.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    assert!(cluster.api.requests().is_empty(), "no API server was asked");
    guard.stop().await;
}

#[tokio::test]
async fn each_file_combines_with_the_other_modes_half() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("mixed");
    cluster.api.add_token("t-cluster", "kubelet-admin", "", &[]);
    cluster.api.allow(
        "system:serviceaccount:monitoring:metrics-agent",
        "get",
        "metrics",
    );

    // Static tokens, SubjectAccessReview.
    let guard = support::guard::start_with_flags(&embedded_flags(
        &cluster,
        Some(&write(&dir, "tokens.csv", TOKENS)),
        None,
    ))
    .await
    .unwrap();
    let (status, _, _) = cluster
        .client()
        .get(guard.proxy_addr, "/metrics", Some(METRICS))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(cluster.api.token_reviews().is_empty());
    assert_eq!(cluster.api.access_reviews().len(), 1);
    guard.stop().await;

    // TokenReview, local RBAC.
    let guard = support::guard::start_with_flags(&embedded_flags(
        &cluster,
        None,
        Some(&write(&dir, "policy.yaml", POLICY)),
    ))
    .await
    .unwrap();
    let (status, _, _) = cluster
        .client()
        .get(guard.proxy_addr, "/logs/syslog", Some("t-cluster"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster.api.token_reviews().len(), 1);
    assert_eq!(
        cluster.api.access_reviews().len(),
        1,
        "no new SubjectAccessReview"
    );
    guard.stop().await;
}

#[tokio::test]
async fn an_edit_takes_effect_and_a_broken_one_keeps_the_last_good_policy() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("reload");
    let policy = write(&dir, "policy.yaml", POLICY);
    let mut argv = embedded_flags(
        &cluster,
        Some(&write(&dir, "tokens.csv", TOKENS)),
        Some(&policy),
    );
    argv.push("--authorization-webhook-cache-authorized-ttl=0s".into());
    argv.push("--authorization-webhook-cache-unauthorized-ttl=0s".into());
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    let client = cluster.client();
    assert_eq!(
        client.get(guard.proxy_addr, "/pods", Some(METRICS)).await.0,
        StatusCode::FORBIDDEN
    );

    std::fs::write(
        &policy,
        POLICY.replace(
            r#"resources: ["nodes/metrics", "nodes/stats"]"#,
            r#"resources: ["nodes/metrics", "nodes/stats", "nodes/pods"]"#,
        ),
    )
    .unwrap();
    support::with_deadline("the edit takes effect", async {
        while client.get(guard.proxy_addr, "/pods", Some(METRICS)).await.0 != StatusCode::OK {
            tokio::task::yield_now().await;
        }
    })
    .await;

    std::fs::write(
        &policy,
        "kind: ClusterRoleBinding\nroleRef: {name: missing}\n",
    )
    .unwrap();
    let metrics_text = || support::guard::admin_get(guard.admin_addr, "/metrics");
    support::with_deadline("the broken edit is counted", async {
        while !metrics_text().await.contains(
            r#"kubelet_guard_file_reloads_total{flag="--rbac-policy-file",result="error"} 1"#,
        ) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        client.get(guard.proxy_addr, "/pods", Some(METRICS)).await.0,
        StatusCode::OK,
        "the last good policy is kept"
    );
    guard.stop().await;
}

#[tokio::test]
async fn broken_files_stop_the_start_with_the_flag_file_and_line() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("broken");
    let tokens = write(&dir, "tokens.csv", TOKENS);
    for (content, expected) in [
        (
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: r}\nrules: [{apiGroups: [\"\"], resources: [nodes/proxy], verbs: [get], resourceName: [n]}]\n",
            "resourceName",
        ),
        (
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            "line 2",
        ),
        ("rules: [\n", "line"),
    ] {
        let policy = write(&dir, "policy.yaml", content);
        let err = support::guard::start_with_flags(&embedded_flags(
            &cluster,
            Some(&tokens),
            Some(&policy),
        ))
        .await
        .err()
        .unwrap();
        assert!(
            err.contains("--rbac-policy-file")
                && err.contains(&policy.display().to_string())
                && err.contains(expected),
            "{err}"
        );
    }
    let tokens = write(&dir, "empty.csv", "# nothing\n");
    let err = support::guard::start_with_flags(&embedded_flags(&cluster, Some(&tokens), None))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("--token-auth-file") && err.contains("no tokens"),
        "{err}"
    );
}
