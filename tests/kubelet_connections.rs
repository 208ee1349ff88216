//! How the guard's requests reach the kubelet: an HTTP/1.1 caller connection keeps one kubelet
//! connection for its requests (its lane), a kept connection the kubelet closed is replaced
//! without the caller noticing, and an HTTP/2 burst leaves only a bounded pool of idle kubelet
//! connections behind.
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

#[tokio::test]
async fn an_http2_burst_leaves_at_most_32_idle_kubelet_connections() {
    const BURST: usize = 48;
    let cluster = cluster().await;
    let tls = cluster
        .client()
        .connect(cluster.addr(), b"h2")
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    // Every stream's exchange is held at the kubelet until all are there: one kubelet connection
    // each, since HTTP/1.1 carries one exchange at a time.
    cluster.kubelet.hold_answers();
    let streams: Vec<_> = (0..BURST)
        .map(|_| {
            let mut sender = sender.clone();
            let request = http::Request::get("/metrics")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            tokio::spawn(async move {
                let response = sender.send_request(request).await.unwrap();
                let status = response.status();
                response.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    support::with_deadline("every stream at the kubelet", async {
        while cluster.kubelet.count() < BURST {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(cluster.kubelet.open_connections(), BURST);
    for _ in 0..BURST {
        cluster.kubelet.release_answer();
    }
    for stream in streams {
        assert_eq!(stream.await.unwrap(), StatusCode::OK);
    }
    // The pool keeps 32 for the next burst; the others close now, not a minute later.
    support::with_deadline("the pool's surplus closed", async {
        while cluster.kubelet.open_connections() > 32 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(cluster.kubelet.open_connections(), 32);
}
