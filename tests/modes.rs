//! Rollout modes: `--mode=observe` decides and records but lets the kubelet's own authorization
//! decide for token callers (forwarding their own token); certificate callers and ambiguous
//! targets are enforced in every mode. (Strict mode, `--proxy-fallback=false`, is in
//! tests/authorization.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use support::guard::Cluster;

const TOKEN: &str = "t-legacy-agent";

async fn observing() -> Cluster {
    let cluster = Cluster::start(&["--mode=observe"]).await;
    cluster.api.add_token(TOKEN, "legacy-agent", "", &[]);
    cluster.api.allow("legacy-agent", "get", "metrics");
    cluster
}

#[tokio::test]
async fn observe_mode_forwards_a_would_be_denial_with_the_callers_own_token() {
    let cluster = observing().await;
    let (status, _) = cluster.get("/pods", TOKEN).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the kubelet double answers; it decides in observe mode"
    );
    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(
        seen[0].client_cn, None,
        "not the guard's certificate: the kubelet must see the caller"
    );
    assert_eq!(
        cluster.api.access_reviews().len(),
        2,
        "the guard still decided: pods, then proxy"
    );

    let (status, _) = cluster.get("/metrics", TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = cluster.get("/stats/summary", "t-unknown").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an invalid token is the kubelet's to refuse"
    );

    let scrape = cluster.metrics().await;
    assert!(
        scrape.contains(r#"kubelet_guard_observed_refusals_total{decision="forbid"} 1"#),
        "{scrape}"
    );
    assert!(
        scrape.contains(r#"kubelet_guard_observed_refusals_total{decision="unauthenticated"} 1"#),
        "{scrape}"
    );
}

#[tokio::test]
async fn observe_mode_still_enforces_certificate_callers_and_canonical_targets() {
    let cluster = observing().await;
    let apiserver = cluster.client_with_cert("kube-apiserver-kubelet-client", &[]);
    let (status, _, _) = apiserver.get(cluster.addr(), "/pods", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the guard cannot present the caller's certificate"
    );

    let raw = cluster
        .client()
        .raw(cluster.addr(), format!("GET /stats/%2E%2E/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
        .await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn enforce_mode_is_the_default_and_never_forwards_the_callers_token() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, "legacy-agent", "", &[]);
    cluster.api.allow("legacy-agent", "get", "pods");
    assert_eq!(cluster.get("/pods", TOKEN).await.0, StatusCode::OK);
    assert_eq!(
        cluster.get("/metrics", TOKEN).await.0,
        StatusCode::FORBIDDEN
    );
    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].client_cn.as_deref(), Some("kubelet-guard"));
    assert!(!seen[0].headers.contains_key("authorization"));
}
