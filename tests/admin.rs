//! The admin listener: `/healthz` for liveness, `/readyz` once the guard serves, and `/metrics`
//! counting requests by decision with bounded labels, as Prometheus reads them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use http::StatusCode;
use support::guard::Cluster;

async fn admin_get(cluster: &Cluster, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(cluster.guard.admin_addr)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut tcp, request.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)
        .await
        .unwrap();
    answer
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
