//! Bodies stream through the guard both ways (docs/kubelet-api.md sections 4 and 5): a followed
//! container log reaches the caller line by line while the kubelet still holds the rest, request
//! bodies (sized, chunked, 1 MiB) reach the kubelet intact, the kubelet's redirects come back
//! unfollowed, and a kubelet that is down or silent is the kubelet's fault: 502 and 504.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use kubelet_guard::Running;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use support::guard::{Cluster, flags, start_with_flags};
use support::kubelet::FOLLOW_LINES;
use support::with_deadline;

const TOKEN: &str = "t-operator";
const USER: &str = "system:serviceaccount:ops:operator";

/// A guard in front of the kubelet double; the operator may `verb` on `subresource`.
async fn cluster(verb: &str, subresource: &str) -> Cluster {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, verb, subresource);
    cluster
}

/// A second guard wired like `cluster`'s but with `--upstream` pointing at `upstream`.
async fn guard_in_front_of(cluster: &Cluster, upstream: &str, extra: &[&str]) -> Running {
    let (ca, kubelet_ca) = (&cluster.ca, &cluster.kubelet_ca);
    let mut argv = flags(ca, kubelet_ca, &cluster.api, &cluster.kubelet, extra);
    argv.retain(|flag| !flag.starts_with("--upstream="));
    argv.push(format!("--upstream={upstream}"));
    start_with_flags(&argv).await.unwrap()
}

/// A request with the operator's token and `body`.
fn request(method: &str, path: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut req = support::client::request(method, path, Some(TOKEN));
    *req.body_mut() = Full::new(body.into());
    req
}

/// Status and body text of `req` sent to `addr`.
async fn exchange(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    req: Request<Full<Bytes>>,
) -> (StatusCode, String) {
    let response = with_deadline("response", cluster.client().send(addr, req)).await;
    let status = response.status();
    let body = with_deadline("body", response.into_body().collect()).await;
    let body = body.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Reads body frames until a whole line has arrived.
async fn next_line(body: &mut Incoming) -> String {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let frame = with_deadline("next frame", body.frame()).await;
        let frame = frame.expect("the stream is still open").unwrap();
        line.extend_from_slice(&frame.into_data().expect("a data frame"));
    }
    String::from_utf8(line).unwrap()
}

/// Asserts the guard's own error: `status`, and one line that says what happened.
fn assert_one_line(status: StatusCode, body: &str, expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    let line = body.strip_suffix('\n').unwrap_or(body);
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line: {body:?}"
    );
}

#[tokio::test]
async fn a_followed_log_arrives_line_by_line_while_the_kubelet_holds_the_rest() {
    let cluster = cluster("get", "proxy").await;
    let path = "/containerLogs/default/web-0/web?follow=true&timestamps=true";
    let req = request("GET", path, Bytes::new());
    let response = with_deadline("headers", cluster.client().send(cluster.addr(), req)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();

    // The kubelet sends line 1 at once and each later line only when released.
    assert_eq!(next_line(&mut body).await, "line 1\n");
    for n in 2..=FOLLOW_LINES {
        cluster.kubelet.release_log_line();
        assert_eq!(next_line(&mut body).await, format!("line {n}\n"));
    }
    assert!(with_deadline("end", body.frame()).await.is_none());
    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, path);
}

#[tokio::test]
async fn request_bodies_reach_the_kubelet_intact() {
    let cluster = cluster("create", "*").await;
    let command = "/run/default/web-0/web?cmd=sh";
    let (status, body) = exchange(
        &cluster,
        cluster.addr(),
        request("POST", command, "ls -l /\n"),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "output of cmd=sh\n")
    );

    let large: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let summary = request("POST", "/stats/summary", large.clone());
    let (status, body) = exchange(&cluster, cluster.addr(), summary).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let chunked = format!(
        "POST /stats/summary?only_cpu_and_memory=true HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let answer = cluster
        .client()
        .raw(cluster.addr(), chunked.as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    let seen = cluster.kubelet.requests();
    let bodies: Vec<_> = seen
        .iter()
        .map(|r| (r.method.clone(), r.body.clone()))
        .collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[0], (Method::POST, Bytes::from_static(b"ls -l /\n")));
    assert_eq!(bodies[1].1.len(), large.len());
    assert!(bodies[1].1 == large, "1 MiB arrives byte for byte");
    assert_eq!(
        bodies[2],
        (Method::POST, Bytes::from_static(b"hello world"))
    );
}

#[tokio::test]
async fn the_kubelets_redirect_comes_back_unfollowed() {
    let cluster = cluster("get", "log").await;
    let (status, headers, body) = cluster
        .client()
        .get(cluster.addr(), "/logs", Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/logs/");
    assert_eq!(body, "<a href=\"/logs/\">Moved Permanently</a>.\n\n");
    let seen: Vec<_> = cluster
        .kubelet
        .requests()
        .into_iter()
        .map(|r| r.target)
        .collect();
    assert_eq!(seen, ["/logs"], "the guard asked once and did not follow");
}

#[tokio::test]
async fn an_unreachable_kubelet_is_a_502() {
    let cluster = cluster("get", "pods").await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let guard = guard_in_front_of(&cluster, &format!("https://127.0.0.1:{port}"), &[]).await;

    let (status, body) = exchange(
        &cluster,
        guard.proxy_addr,
        request("GET", "/pods", Bytes::new()),
    )
    .await;
    assert_one_line(status, &body, StatusCode::BAD_GATEWAY);
    assert_eq!(
        cluster.api.access_reviews().len(),
        1,
        "authorized before forwarding"
    );
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn a_silent_kubelet_is_a_504_after_the_upstream_timeout() {
    let cluster = cluster("get", "pods").await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("https://{}", silent.local_addr().unwrap());
    let (accepted, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // Hold every connection open and never write a byte.
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
            let _ = accepted.send(());
        }
    });
    let guard = guard_in_front_of(&cluster, &upstream, &["--upstream-timeout=300ms"]).await;

    let (status, body) = exchange(
        &cluster,
        guard.proxy_addr,
        request("GET", "/pods", Bytes::new()),
    )
    .await;
    assert_one_line(status, &body, StatusCode::GATEWAY_TIMEOUT);
    with_deadline("the guard connected", connections.recv())
        .await
        .expect("the silent kubelet was called");
    assert_eq!(cluster.kubelet.count(), 0);
}
