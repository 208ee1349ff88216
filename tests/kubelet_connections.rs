//! How the guard's requests reach the kubelet: an HTTP/1.1 caller connection keeps one kubelet
//! connection for its requests (its lane), and a kept connection the kubelet closed is replaced
//! without the caller noticing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use support::guard::Cluster;

const TOKEN: &str = "t-scraper";
const USER: &str = "system:serviceaccount:monitoring:scraper";

async fn cluster() -> Cluster {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, "get", "metrics");
    cluster
}

/// One scrape on `sender`; its status.
async fn scrape(sender: &mut SendRequest<Empty<Bytes>>) -> StatusCode {
    let request = http::Request::get("/metrics")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Empty::new())
        .unwrap();
    let response = support::with_deadline("a scrape", sender.send_request(request))
        .await
        .unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn a_caller_connection_keeps_one_kubelet_connection_for_its_requests() {
    let cluster = cluster().await;
    let mut first = cluster.client().keep_alive(cluster.addr()).await;
    for _ in 0..5 {
        assert_eq!(scrape(&mut first).await, StatusCode::OK);
    }
    assert_eq!(cluster.kubelet.connections(), 1, "five requests, one lane");

    let mut second = cluster.client().keep_alive(cluster.addr()).await;
    for _ in 0..3 {
        assert_eq!(scrape(&mut second).await, StatusCode::OK);
        assert_eq!(scrape(&mut first).await, StatusCode::OK);
    }
    assert_eq!(
        cluster.kubelet.connections(),
        2,
        "one lane per caller connection"
    );
    assert_eq!(cluster.kubelet.count(), 11);
}

#[tokio::test]
async fn a_kubelet_connection_closed_after_a_response_is_replaced_unnoticed() {
    let cluster = cluster().await;
    let mut caller = cluster.client().keep_alive(cluster.addr()).await;
    assert_eq!(scrape(&mut caller).await, StatusCode::OK);
    cluster.kubelet.close_after_each_response();
    for _ in 0..4 {
        assert_eq!(scrape(&mut caller).await, StatusCode::OK);
    }
    // The first lane served the first two requests; each later one needed a new connection.
    assert_eq!(cluster.kubelet.connections(), 4);
    assert!(
        !caller.is_closed(),
        "the caller's own connection stays open"
    );
}
