//! Start-up while the kubelet still holds the address (issue 5, Operations): the guard does not
//! exit into a restart loop but retries binding `--listen` with backoff; its admin listener is up
//! meanwhile, `/readyz` answering 503 until the address is bound, and requests succeed after.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::guard::{Cluster, start_with_flags};
use support::with_deadline;

/// The status line of an admin GET.
async fn admin_status(addr: SocketAddr, path: &str) -> String {
    let answer = support::guard::admin_get(addr, path).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

/// The guard's flags with `--listen` at `addr`.
fn listening_at(cluster: &Cluster, addr: SocketAddr) -> Vec<String> {
    let mut argv = cluster.flags(&[]);
    argv.retain(|arg| !arg.starts_with("--listen="));
    argv.push(format!("--listen={addr}"));
    argv
}

#[tokio::test]
async fn a_held_address_is_retried_until_free_and_readiness_waits_for_it() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t-1", "scraper", "", &[]);
    cluster.api.allow("scraper", "get", "metrics");
    // The kubelet, not yet moved to 127.0.0.1.
    let kubelet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = kubelet.local_addr().unwrap();

    let guard = with_deadline("start-up", start_with_flags(&listening_at(&cluster, addr)))
        .await
        .expect("an address in use is not a start-up error");
    assert_eq!(guard.proxy_addr, addr);
    assert_eq!(
        admin_status(guard.admin_addr, "/healthz").await,
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        admin_status(guard.admin_addr, "/readyz").await,
        "HTTP/1.1 503 Service Unavailable"
    );

    drop(kubelet);
    with_deadline("/readyz turns 200 once bound", async {
        while admin_status(guard.admin_addr, "/readyz").await != "HTTP/1.1 200 OK" {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, _, body) = cluster.client().get(addr, "/metrics", Some("t-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    guard.stop().await;
}

#[tokio::test]
async fn stopping_while_the_address_is_held_ends_the_retries() {
    let cluster = Cluster::start(&[]).await;
    let kubelet = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let guard = start_with_flags(&listening_at(&cluster, kubelet.local_addr().unwrap()))
        .await
        .unwrap();
    with_deadline("stop", guard.stop()).await;
    drop(kubelet);
}
