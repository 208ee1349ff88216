//! Fail closed: when the API server errors, is slow, or answers nonsense, nothing is forwarded, the
//! caller gets 500 in the kubelet's format, nothing is cached, and decisions cached before the
//! outage keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use support::guard::Cluster;

const TOKEN: &str = "t-agent";
const USER: &str = "agent";

async fn cluster(extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(extra).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "get", "*");
    cluster
}

fn authz_error(subresource: &str) -> String {
    format!(
        "Authorization error (user={USER}, verb=get, resource=nodes, subresource={subresource})"
    )
}

#[tokio::test]
async fn a_failing_access_review_is_a_500_without_fallback_and_is_not_cached() {
    // A 503 is tried again within the deadline: a short one keeps the answer prompt.
    let cluster = cluster(&["--apiserver-timeout=1s"]).await;
    // Authenticate first, so only the access review fails.
    cluster.get("/stats/summary", TOKEN).await;
    cluster.api.fail_with(Some(503));

    let (status, body) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, authz_error("pods"));
    let last =
        cluster.api.access_reviews().last().unwrap()["spec"]["resourceAttributes"]["subresource"]
            .clone();
    assert_eq!(last, "pods", "no fallback to nodes/proxy after an error");

    cluster.api.fail_with(None);
    let (status, _) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::OK, "the error was not cached");
    assert_eq!(
        cluster
            .kubelet
            .requests()
            .iter()
            .filter(|r| r.target == "/pods")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_passing_failure_is_tried_again_within_the_deadline() {
    let cluster = cluster(&[]).await;
    // An API server restarting (503), then overloaded (429): each review is tried again.
    cluster.api.fail_once(503);
    assert_eq!(cluster.get("/metrics", TOKEN).await.0, StatusCode::OK);
    cluster.api.fail_once(429);
    assert_eq!(cluster.get("/pods", TOKEN).await.0, StatusCode::OK);
    assert_eq!(
        cluster.api.token_reviews().len(),
        2,
        "the 503 and the answer"
    );
    assert_eq!(
        cluster.api.access_reviews().len(),
        3,
        "/metrics, then /pods twice"
    );
    // A refusal is final: no second review.
    cluster.api.fail_once(403);
    assert_eq!(
        cluster.get("/stats/summary", TOKEN).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(cluster.api.access_reviews().len(), 4);
}

#[tokio::test]
async fn a_slow_api_server_times_out_into_a_500() {
    let cluster = cluster(&["--apiserver-timeout=200ms"]).await;
    cluster.get("/metrics", TOKEN).await;
    cluster.api.set_delay(Duration::from_secs(2));
    let (status, body) =
        support::with_deadline("timeout", cluster.get("/stats/summary", TOKEN)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, authz_error("stats"));
    assert_eq!(
        cluster.kubelet.count(),
        1,
        "only the first request reached the kubelet"
    );
}

#[tokio::test]
async fn a_review_both_allowed_and_denied_is_an_error() {
    let cluster = cluster(&[]).await;
    cluster.api.sar_status_override(Some(
        json!({"allowed": true, "denied": true, "reason": "confused"}),
    ));
    let (status, body) = cluster.get("/metrics", TOKEN).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, authz_error("metrics"));
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn an_evaluation_error_without_allow_is_a_denial() {
    let cluster = cluster(&[]).await;
    cluster.api.sar_status_override(Some(
        json!({"allowed": false, "evaluationError": "webhook down"}),
    ));
    let (status, _) = cluster.get("/metrics", TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_failing_token_review_is_a_500_and_is_not_cached() {
    let cluster = cluster(&["--apiserver-timeout=1s"]).await;
    cluster.api.fail_with(Some(500));
    let (status, body) = cluster.get("/metrics", TOKEN).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(!body.contains(TOKEN));
    assert!(
        cluster.api.access_reviews().is_empty(),
        "nothing is authorized for an unknown caller"
    );
    cluster.api.fail_with(None);
    assert_eq!(cluster.get("/metrics", TOKEN).await.0, StatusCode::OK);
    let reviews = cluster.api.token_reviews().len();
    assert!(
        reviews >= 3,
        "tried again within the deadline, then asked again for the next request: {reviews}"
    );
}

#[tokio::test]
async fn cached_decisions_keep_working_while_the_api_server_is_down() {
    let cluster = cluster(&["--apiserver-timeout=1s"]).await;
    assert_eq!(cluster.get("/metrics", TOKEN).await.0, StatusCode::OK);
    cluster.api.fail_with(Some(503));
    assert_eq!(
        cluster.get("/metrics/cadvisor", TOKEN).await.0,
        StatusCode::OK
    );
    assert_eq!(
        cluster.get("/stats/summary", TOKEN).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_500() {
    let cluster = cluster(&["--apiserver-timeout=1s"]).await;
    let mut argv = cluster.flags(&[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kubeconfig = std::fs::read_to_string(cluster.api.write_kubeconfig()).unwrap();
    let moved = support::temp_dir("moved").join("kubeconfig");
    std::fs::write(
        &moved,
        kubeconfig.replace(&cluster.api.addr().port().to_string(), &port.to_string()),
    )
    .unwrap();
    argv.retain(|flag| !flag.starts_with("--kubeconfig="));
    argv.push(format!("--kubeconfig={}", moved.display()));
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    let (status, _, _) = support::with_deadline(
        "unreachable",
        cluster
            .client()
            .get(guard.proxy_addr, "/metrics", Some(TOKEN)),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(cluster.kubelet.count(), 0);
}
