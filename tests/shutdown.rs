//! Graceful shutdown (issue 5, Operations): on `Running::stop` (SIGTERM in the binary) `/readyz`
//! turns 503 at once, the guarded listener refuses new connections, idle connections close,
//! requests in flight finish within `--shutdown-grace-period`, and whatever is still open at its
//! end (a followed log, an exec WebSocket) is closed; the binary then exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::guard::Cluster;
use support::kubelet::{FOLLOW_LINES, WEBSOCKET_PROTOCOLS};
use support::{DEADLINE, with_deadline};

const TOKEN: &str = "t-operator";
const USER: &str = "system:serviceaccount:ops:operator";
const FOLLOW: &str = "/containerLogs/default/web-0/web?follow=true";
const EXEC: &str = "/exec/default/web-0/web?command=sh&stdin=1&stdout=1&tty=1";

/// A guard with `extra` flags whose operator may read logs and exec.
async fn cluster(extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(extra).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, "create", "proxy");
    cluster.api.allow(USER, "get", "proxy");
    cluster
}

/// The status line of an admin GET.
async fn admin_status(addr: SocketAddr, path: &str) -> String {
    let answer = support::guard::admin_get(addr, path).await;
    answer.lines().next().unwrap_or_default().to_owned()
}

/// Reads body frames until a whole line has arrived; `None` if the body ended or broke first.
async fn next_line(body: &mut Incoming) -> Option<String> {
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        let frame = with_deadline("next frame", body.frame()).await?.ok()?;
        line.extend_from_slice(&frame.into_data().ok()?);
    }
    Some(String::from_utf8(line).unwrap())
}

/// Opens a followed log through the guard and reads its first line.
async fn follow(cluster: &Cluster) -> Incoming {
    let request = support::client::request("GET", FOLLOW, Some(TOKEN));
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(next_line(&mut body).await.as_deref(), Some("line 1\n"));
    body
}

#[tokio::test]
async fn draining_lets_requests_in_flight_finish_and_refuses_new_connections() {
    let cluster = cluster(&[]).await;
    let (proxy_addr, admin_addr) = (cluster.addr(), cluster.guard.admin_addr);
    let mut log = follow(&cluster).await;
    // An idle keep-alive connection, which draining closes at once.
    let tls = cluster
        .client()
        .connect(proxy_addr, b"http/1.1")
        .await
        .unwrap();
    let (mut idle, idle_connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let idle_connection = tokio::spawn(idle_connection);
    let mut request = support::client::request("GET", "/healthz", Some(TOKEN));
    request
        .headers_mut()
        .insert(http::header::HOST, "localhost".parse().unwrap());
    let response = idle.send_request(request).await.unwrap();
    response.into_body().collect().await.unwrap();

    let Cluster { guard, kubelet, .. } = cluster;
    let stopping = tokio::spawn(guard.stop());

    with_deadline("/readyz turns 503", async {
        while !admin_status(admin_addr, "/readyz").await.contains(" 503 ") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    with_deadline("new connections are refused", async {
        while tokio::net::TcpStream::connect(proxy_addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    with_deadline("the idle connection closes", idle_connection)
        .await
        .unwrap()
        .unwrap();

    // The followed log goes on to its end, and only then is the guard done.
    for n in 2..=FOLLOW_LINES {
        assert!(!stopping.is_finished(), "a request is still in flight");
        kubelet.release_log_line();
        assert_eq!(next_line(&mut log).await, Some(format!("line {n}\n")));
    }
    assert!(with_deadline("end of the log", log.frame()).await.is_none());
    with_deadline("the guard stops", stopping).await.unwrap();
}

#[tokio::test]
async fn streams_still_open_at_the_end_of_the_grace_period_are_closed() {
    let cluster = cluster(&["--shutdown-grace-period=200ms"]).await;
    let mut log = follow(&cluster).await;
    let client = cluster.client();
    let connect = client.websocket(cluster.addr(), EXEC, Some(TOKEN), &WEBSOCKET_PROTOCOLS);
    let (response, mut exec) = with_deadline("handshake", connect).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let greeting = with_deadline("greeting", exec.next()).await.unwrap();
    assert!(greeting.is_ok(), "{greeting:?}");

    let Cluster { guard, kubelet, .. } = cluster;
    with_deadline("the guard stops", guard.stop()).await;

    // Neither was let finish: the log never got its other lines, the exec session never ended.
    assert_eq!(next_line(&mut log).await, None, "the followed log is cut");
    loop {
        match with_deadline("the exec stream closes", exec.next()).await {
            None | Some(Err(_)) => break,
            Some(Ok(message)) => assert!(message.is_close(), "{message:?}"),
        }
    }
    drop(kubelet);
}

#[tokio::test]
async fn the_binary_drains_on_sigterm_and_exits_zero() {
    let cluster = cluster(&[]).await;
    let mut argv = cluster.flags(&["--log-format=json"]);
    argv.remove(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(&argv)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, logged) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let serving = |line: &str| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = &event["fields"];
        (fields["message"] == "kubelet-guard serving")
            .then(|| fields["proxy_addr"].as_str()?.parse::<SocketAddr>().ok())
            .flatten()
    };
    let addr = tokio::task::spawn_blocking(move || {
        let addr = logged
            .iter()
            .find_map(|line| serving(&line))
            .expect("the serving line");
        (addr, logged)
    });
    let (addr, logged) = with_deadline("the binary serves", addr).await.unwrap();

    // A followed log in flight when SIGTERM arrives still reaches its end.
    let request = support::client::request("GET", FOLLOW, Some(TOKEN));
    let response = cluster.client().send(addr, request).await;
    let mut log = response.into_body();
    assert_eq!(next_line(&mut log).await.as_deref(), Some("line 1\n"));
    assert!(support::sigterm(child.id()));
    with_deadline("the binary refuses new connections", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for n in 2..=FOLLOW_LINES {
        cluster.kubelet.release_log_line();
        assert_eq!(next_line(&mut log).await, Some(format!("line {n}\n")));
    }
    let status = tokio::task::spawn_blocking(move || {
        let waited = std::time::Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if waited.elapsed() > DEADLINE {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap()
    .expect("the binary exits");
    let log: Vec<String> = logged.try_iter().collect();
    assert_eq!(status.code(), Some(0), "{log:#?}");
}
