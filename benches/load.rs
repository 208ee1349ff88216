//! Load harness: the guard binary as its own process between the API-server and kubelet doubles,
//! driven by keep-alive TLS clients on loopback, reporting throughput, latency percentiles and the
//! guard's resident memory and CPU time (from /proc). Run with `cargo bench --bench load`
//! (release build); `LOAD_SECONDS`, `LOAD_CONNECTIONS`, `LOAD_IDLE`, `LOAD_IDENTITIES` tune it.
//!
//! Phases: (1) cached scrapes: `LOAD_CONNECTIONS` connections GET /metrics with one token for
//! `LOAD_SECONDS`; (2) `LOAD_IDENTITIES` distinct tokens each make one request (filling both
//! caches); (3) `LOAD_IDLE` idle TLS connections held open. Memory is read after each phase.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::apiserver::ApiServerDouble;
use support::client::TlsClient;
use support::guard::flags;
use support::kubelet::KubeletDouble;
use support::pki::Ca;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    support::init();
    let seconds = setting("LOAD_SECONDS", 10);
    let connections = setting("LOAD_CONNECTIONS", 32);
    let idle = setting("LOAD_IDLE", 1000);
    let identities = setting("LOAD_IDENTITIES", 10_000);

    let ca = Ca::new("cluster");
    let kubelet_ca = Ca::new("kubelet");
    let api = ApiServerDouble::start(&ca).await;
    let kubelet = KubeletDouble::start(
        &kubelet_ca.server_cert("node-1", &["127.0.0.1"]),
        &kubelet_ca,
    )
    .await;
    api.add_token("t-scraper", "scraper", "", &[]);
    api.allow("system:authenticated", "get", "metrics");
    for n in 0..identities {
        api.add_token(&format!("t-{n}"), &format!("agent-{n}"), "", &[]);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut argv = flags(&ca, &kubelet_ca, &api, &kubelet, &[]);
    argv.retain(|f| !f.starts_with("--listen=") && !f.starts_with("--metrics-listen="));
    argv.push(format!("--listen=127.0.0.1:{port}"));
    argv.push(format!("--metrics-listen=127.0.0.1:{admin_port}"));
    let mut guard = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(&argv[1..])
        .env("KUBELET_GUARD_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the guard");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_ready(admin_port).await;
    let client = TlsClient::new(ca.cert_path(), None);
    println!("guard pid {}; {} after start", guard.id(), usage(&guard));

    // Phase 1: cached scrapes.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let cpu_before = cpu_seconds(&guard);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { scrape_until(&client, addr, deadline).await })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let cpu = cpu_seconds(&guard) - cpu_before;
    latencies.sort_unstable();
    let count = latencies.len();
    let pct = |p: f64| latencies[((count as f64 * p) as usize).min(count - 1)];
    println!(
        "cached scrapes: {count} requests in {seconds}s over {connections} connections = {:.0} req/s; latency p50 {:?} p99 {:?} max {:?}; guard CPU {:.2}s ({:.0}% of one core); {}",
        count as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        latencies[count - 1],
        cpu,
        cpu / seconds as f64 * 100.0,
        usage(&guard)
    );

    // Phase 2: many identities in the caches.
    let started = Instant::now();
    let per_task = identities / 16 + 1;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                // One keep-alive connection per task, so the phase measures cached identities,
                // not the churn of 10,000 TLS handshakes.
                let tls = client.connect(addr, b"http/1.1").await.expect("connect");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .expect("handshake");
                tokio::spawn(connection);
                for n in t * per_task..((t + 1) * per_task).min(identities) {
                    let request = http::Request::get("/metrics")
                        .header("host", "localhost")
                        .header("authorization", format!("Bearer t-{n}"))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let response = sender.send_request(request).await.expect("request");
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.expect("body");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "{identities} identities cached in {:?} ({} token reviews, {} access reviews); {}",
        started.elapsed(),
        api.token_reviews().len(),
        api.access_reviews().len(),
        usage(&guard)
    );

    // Phase 3: idle connections.
    let mut open = Vec::new();
    for _ in 0..idle {
        open.push(
            client
                .connect(addr, b"http/1.1")
                .await
                .expect("idle connection"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{idle} idle TLS connections open; {}", usage(&guard));
    drop(open);

    let _ = guard.kill();
    let _ = guard.wait();
}

async fn scrape_until(client: &TlsClient, addr: SocketAddr, deadline: Instant) -> Vec<Duration> {
    let tls = client.connect(addr, b"http/1.1").await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let request = http::Request::get("/metrics")
            .header("host", "localhost")
            .header("authorization", "Bearer t-scraper")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let started = Instant::now();
        let response = sender.send_request(request).await.expect("request");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
        latencies.push(started.elapsed());
    }
    latencies
}

async fn wait_ready(admin_port: u16) {
    support::with_deadline("the guard becomes ready", async {
        loop {
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await {
                tokio::io::AsyncWriteExt::write_all(
                    &mut tcp,
                    b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
                let mut answer = String::new();
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer).await;
                if answer.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// The guard's resident and peak memory.
fn usage(guard: &Child) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", guard.id())).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("?".into(), |l| l[name.len()..].trim().to_owned())
    };
    format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

/// The guard's user + system CPU time, in seconds.
fn cpu_seconds(guard: &Child) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", guard.id())).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |t| {
        t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}
