//! The admin listener: `/healthz` for liveness, `/readyz` once the guard serves, and `/metrics`
//! counting requests by decision with bounded labels, as Prometheus reads them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use support::guard::Cluster;

async fn admin_get(cluster: &Cluster, path: &str) -> String {
    support::guard::admin_get(cluster.guard.admin_addr, path).await
}

#[tokio::test]
async fn health_and_readiness_answer_over_plain_http() {
    let cluster = Cluster::start(&[]).await;
    assert!(
        admin_get(&cluster, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        admin_get(&cluster, "/readyz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        admin_get(&cluster, "/nothing")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test]
async fn requests_are_counted_by_decision_without_paths_or_users() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .api
        .add_token("t-1", "system:serviceaccount:ns:scraper", "", &[]);
    cluster
        .api
        .allow("system:serviceaccount:ns:scraper", "get", "metrics");
    assert_eq!(cluster.get("/metrics", "t-1").await.0, StatusCode::OK);
    assert_eq!(
        cluster.get("/metrics/probes", "t-1").await.0,
        StatusCode::OK
    );
    assert_eq!(cluster.get("/pods", "t-1").await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        cluster.get("/pods", "t-unknown").await.0,
        StatusCode::UNAUTHORIZED
    );
    let raw = cluster
        .client()
        .raw(
            cluster.addr(),
            b"GET /stats/%2e%2e/pods HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");

    let scrape = cluster.metrics().await;
    for line in [
        r#"kubelet_guard_requests_total{code="200",decision="allow",subresource="metrics",verb="get"} 2"#,
        r#"kubelet_guard_requests_total{code="403",decision="forbid",subresource="proxy",verb="get"} 1"#,
        r#"kubelet_guard_requests_total{code="401",decision="unauthenticated",subresource="proxy",verb="get"} 1"#,
        r#"kubelet_guard_requests_total{code="400",decision="reject",subresource="",verb=""} 1"#,
    ] {
        assert!(scrape.contains(line), "missing {line} in\n{scrape}");
    }
    assert!(
        !scrape.contains("scraper") && !scrape.contains("/pods"),
        "labels are bounded:\n{scrape}"
    );
}

#[tokio::test]
async fn every_metric_family_is_exported_and_counts_what_it_names() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t-legacy", "legacy", "", &[]);
    cluster.api.allow("legacy", "get", "proxy");
    assert_eq!(cluster.get("/pods", "t-legacy").await.0, StatusCode::OK);
    assert_eq!(cluster.get("/pods", "t-legacy").await.0, StatusCode::OK);
    let refused = cluster
        .client()
        .websocket(
            cluster.addr(),
            "/exec/ns/pod/c?command=id",
            Some("t-legacy"),
            &["v5.channel.k8s.io"],
        )
        .await;
    assert!(refused.is_err());

    let scrape = cluster.metrics().await;
    for expected in [
        r#"kubelet_guard_proxy_fallback_total{subresource="pods"} 2"#,
        r#"kubelet_guard_upgrades_total{decision="forbid",protocol="websocket"} 1"#,
        r#"kubelet_guard_authorization_cache_requests_total{cache="token",result="miss"} 1"#,
        r#"kubelet_guard_authorization_cache_requests_total{cache="token",result="hit"} 2"#,
        r#"kubelet_guard_authorization_cache_requests_total{cache="sar",result="miss"} 3"#,
        r#"kubelet_guard_authorization_cache_requests_total{cache="sar",result="hit"} 2"#,
        r#"kubelet_guard_apiserver_request_duration_seconds_count{api="tokenreview",code="201"} 1"#,
        r#"kubelet_guard_apiserver_request_duration_seconds_count{api="subjectaccessreview",code="201"} 3"#,
        r#"kubelet_guard_request_duration_seconds_count{decision="allow"} 2"#,
        r#"kubelet_guard_open_connections "#,
        "kubelet_guard_audit_events_dropped_total{reason=\"queue-full\"} 0",
        r#"kubelet_guard_build_info{version=""#,
    ] {
        assert!(scrape.contains(expected), "missing {expected} in\n{scrape}");
    }
}

#[tokio::test]
async fn kubelet_failures_are_counted_by_kind() {
    let cluster = Cluster::start(&[]).await;
    let mut argv = cluster.flags(&[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    argv.retain(|flag| !flag.starts_with("--upstream="));
    argv.push(format!("--upstream=https://127.0.0.1:{port}"));
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    cluster.api.add_token("t", "u", "", &[]);
    cluster.api.allow("u", "get", "metrics");
    let (status, _, _) = cluster
        .client()
        .get(guard.proxy_addr, "/metrics", Some("t"))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let scrape = support::guard::admin_get(guard.admin_addr, "/metrics").await;
    assert!(
        scrape.contains(r#"kubelet_guard_upstream_errors_total{kind="unreachable"} 1"#),
        "{scrape}"
    );
}
