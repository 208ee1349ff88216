//! Load harness: the guard binary as its own process in embedded mode (a static token file and an
//! RBAC policy file, so no API server is involved) in front of the kubelet double, driven by
//! keep-alive TLS clients on loopback, reporting throughput, latency percentiles and the guard's
//! resident memory and CPU time (from /proc). Run with `cargo bench --bench load` (release build).
//!
//! Phases of the first guard: (1) cached scrapes: `LOAD_CONNECTIONS` (32) connections GET
//! /metrics with one token for `LOAD_SECONDS` (10), or exactly `LOAD_REQUESTS` each when set;
//! (2) `LOAD_IDENTITIES` (10,000) distinct tokens each make one request over 16 keep-alive
//! connections, filling both caches; (3) `LOAD_IDLE` (1,000) idle TLS connections held open;
//! (4) `LOAD_KEPT` (as many as idle ones) keep-alive connections idle after one request each.
//! Memory is read after each phase.
//!
//! Then hostile callers, each against a fresh guard (so its peak memory is the flood's) while a
//! scraper on 127.0.0.1 keeps going, from 127.0.0.2: 1,500 silent TCP connections; 300 TLS
//! connections each sending an unfinished 1 MB request head; 2,000 silent connections to the
//! admin listener while `/healthz` is probed. Each reports the guard's peak RSS, the scraper's
//! failed requests and its slowest one. `LOAD_FLOODS=0` skips them.
//!
//! `KUBELET_GUARD` names another build of the guard to run, such as the image's
//! (`cargo build --profile dist`: `target/dist/kubelet-guard`).
//!
//! `LOAD_WRAPPER` runs the guard under a command, for example
//! `LOAD_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=/tmp/guard.cg"` with
//! `LOAD_REQUESTS=200 LOAD_CONNECTIONS=4 LOAD_IDENTITIES=0 LOAD_IDLE=0 LOAD_FLOODS=0`: instruction
//! counts per request that the machine's noise does not move.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use support::apiserver::ApiServerDouble;
use support::client::TlsClient;
use support::guard::flags;
use support::kubelet::KubeletDouble;
use support::pki::Ca;
use tokio::io::AsyncWriteExt;

/// Grants every authenticated user `get` on `nodes/metrics`.
const POLICY: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: scrape\nrules:\n- apiGroups: [\"\"]\n  resources: [nodes/metrics]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: scrape\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: scrape\nsubjects:\n- kind: Group\n  name: system:authenticated\n  apiGroup: rbac.authorization.k8s.io\n";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The doubles and files every guard of the run shares.
struct Bench {
    ca: Ca,
    kubelet_ca: Ca,
    api: ApiServerDouble,
    kubelet: KubeletDouble,
    tokens: std::path::PathBuf,
    policy: std::path::PathBuf,
}

/// A scraper task, and its tally: requests sent, failed, and the slowest.
type Scraper = (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<(u64, u64, Duration)>>,
);

/// A guard process and where it listens.
struct Guard {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

#[tokio::main]
async fn main() {
    support::init();
    let seconds = setting("LOAD_SECONDS", 10);
    let requests = setting("LOAD_REQUESTS", 0);
    let connections = setting("LOAD_CONNECTIONS", 32);
    let idle = setting("LOAD_IDLE", 1000);
    let identities = setting("LOAD_IDENTITIES", 10_000);
    let kept_alive = setting("LOAD_KEPT", idle);

    let ca = Ca::new("cluster");
    let kubelet_ca = Ca::new("kubelet");
    let api = ApiServerDouble::start(&ca).await;
    let kubelet = KubeletDouble::start(
        &kubelet_ca.server_cert("node-1", &["127.0.0.1"]),
        &kubelet_ca,
    )
    .await;
    let dir = support::temp_dir("load");
    let tokens = dir.join("tokens.csv");
    let mut csv = String::from("t-scraper,scraper,uid-scraper\n");
    for n in 0..identities {
        csv.push_str(&format!(
            "t-{n},agent-{n},uid-{n},\"system:serviceaccounts,system:serviceaccounts:monitoring\"\n"
        ));
    }
    std::fs::write(&tokens, csv).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let bench = Bench {
        ca,
        kubelet_ca,
        api,
        kubelet,
        tokens,
        policy,
    };

    // The idle connections all come from 127.0.0.1 and never authenticate: let them all in.
    let guard = bench
        .start_guard(&["--max-unauthenticated-connections-per-source=9999"])
        .await;
    let client = TlsClient::new(bench.ca.cert_path(), None);
    println!(
        "guard pid {}; {} after start",
        guard.child.id(),
        usage(&guard.child)
    );

    // Phase 1: cached scrapes.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu_before = cpu_seconds(&guard.child);
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let client = client.clone();
            let addr = guard.addr;
            tokio::spawn(async move { scrape(&client, addr, deadline, requests).await })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&guard.child) - cpu_before;
    latencies.sort_unstable();
    let count = latencies.len();
    let pct = |p: f64| latencies[((count as f64 * p) as usize).min(count - 1)];
    println!(
        "cached scrapes: {count} requests in {took:.1}s over {connections} connections = {:.0} req/s; latency p50 {:?} p99 {:?} max {:?}; guard CPU {cpu:.2}s ({:.1} µs/request); {}",
        count as f64 / took,
        pct(0.50),
        pct(0.99),
        latencies[count - 1],
        cpu * 1e6 / count as f64,
        usage(&guard.child)
    );

    // Phase 2: many identities in the caches.
    if identities > 0 {
        let started = Instant::now();
        let per_task = identities / 16 + 1;
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let client = client.clone();
                let addr = guard.addr;
                tokio::spawn(async move {
                    // One keep-alive connection per task, so the phase measures cached
                    // identities, not the churn of 10,000 TLS handshakes.
                    let mut sender = client.keep_alive(addr).await;
                    for n in t * per_task..((t + 1) * per_task).min(identities) {
                        assert_eq!(get(&mut sender, &format!("t-{n}")).await, 200);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        println!(
            "{identities} identities cached in {:?}; {}",
            started.elapsed(),
            usage(&guard.child)
        );
    }

    // Phase 3: idle connections.
    let mut open = Vec::new();
    for _ in 0..idle {
        open.push(
            client
                .connect(guard.addr, b"http/1.1")
                .await
                .expect("idle connection"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{idle} idle TLS connections open; {}", usage(&guard.child));
    drop(open);

    // Phase 4: keep-alive connections idle after one request each (each keeps its kubelet
    // connection, its lane).
    let mut kept = Vec::new();
    for _ in 0..kept_alive {
        let mut sender = client.keep_alive(guard.addr).await;
        assert_eq!(get(&mut sender, "t-scraper").await, 200);
        kept.push(sender);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "{kept_alive} keep-alive connections idle after one request each; {}",
        usage(&guard.child)
    );
    drop(kept);
    guard.stop();

    if setting("LOAD_FLOODS", 1) > 0 {
        bench.floods().await;
    }
}

impl Bench {
    /// Starts a guard process with the shared files and `extra` flags, and waits until it is ready.
    async fn start_guard(&self, extra: &[&str]) -> Guard {
        let port = free_port();
        let admin_port = free_port();
        let mut argv = flags(&self.ca, &self.kubelet_ca, &self.api, &self.kubelet, extra);
        argv.retain(|f| {
            !f.starts_with("--listen=")
                && !f.starts_with("--metrics-listen=")
                && !f.starts_with("--kubeconfig=")
        });
        argv.push(format!("--listen=127.0.0.1:{port}"));
        argv.push(format!("--metrics-listen=127.0.0.1:{admin_port}"));
        argv.push(format!("--token-auth-file={}", self.tokens.display()));
        argv.push(format!("--rbac-policy-file={}", self.policy.display()));
        let wrapper = std::env::var("LOAD_WRAPPER").unwrap_or_default();
        let mut command: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
        command.push(
            std::env::var("KUBELET_GUARD")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kubelet-guard").to_owned()),
        );
        command.extend(argv.into_iter().skip(1));
        let child = Command::new(&command[0])
            .args(&command[1..])
            .env("KUBELET_GUARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the guard");
        wait_ready(admin_port).await;
        Guard {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
        }
    }

    /// The hostile callers of issue 10, each against a fresh guard.
    async fn floods(&self) {
        let attacker: IpAddr = "127.0.0.2".parse().unwrap();
        let client = TlsClient::new(self.ca.cert_path(), None);
        let flood = client.clone().with_source(attacker);

        let guard = self.start_guard(&["--max-connections=1000"]).await;
        let scraper = spawn_scraper(&client, guard.addr);
        let mut held = Vec::new();
        for _ in 0..1500 {
            if let Ok(tcp) = flood.tcp(guard.addr).await {
                held.push(tcp);
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        report("1,500 silent connections from 127.0.0.2", &guard, scraper).await;
        drop(held);
        guard.stop();

        let guard = self.start_guard(&[]).await;
        let scraper = spawn_scraper(&client, guard.addr);
        let mut held = Vec::new();
        let megabyte = vec![b'a'; 1 << 20];
        for _ in 0..300 {
            let Ok(mut tls) = flood.connect(guard.addr, b"http/1.1").await else {
                continue;
            };
            let _ = tls
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nX-Padding: ")
                .await;
            // Written in the background: the guard stops reading at its head limit.
            held.push(tokio::spawn({
                let megabyte = megabyte.clone();
                async move {
                    let _ = tls.write_all(&megabyte).await;
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(tls);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        report("300 unfinished 1 MB heads from 127.0.0.2", &guard, scraper).await;
        for task in held {
            task.abort();
        }
        guard.stop();

        let guard = self.start_guard(&[]).await;
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(tcp) = flood.tcp(guard.admin).await {
                held.push(tcp);
            }
        }
        let mut slowest = Duration::ZERO;
        let mut failed = 0;
        for _ in 0..20 {
            let started = Instant::now();
            let health = tokio::time::timeout(Duration::from_secs(5), async {
                support::guard::admin_get(guard.admin, "/healthz").await
            })
            .await;
            if !health.is_ok_and(|h| h.starts_with("HTTP/1.1 200")) {
                failed += 1;
            }
            slowest = slowest.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "2,000 silent admin connections from 127.0.0.2: /healthz failed {failed} of 20, slowest {slowest:?}; {}",
            usage(&guard.child)
        );
        drop(held);
        guard.stop();
    }
}

impl Guard {
    /// Stops the guard as the kubelet's node would (SIGTERM), so a `LOAD_WRAPPER` such as
    /// callgrind writes its profile; killed if it has not exited within 30 s.
    fn stop(mut self) {
        support::sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scraper on 127.0.0.1, one new connection per request, until aborted: its failures and its
/// slowest request.
fn spawn_scraper(client: &TlsClient, addr: SocketAddr) -> Scraper {
    let tally = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64, Duration::ZERO)));
    let (client, shared) = (client.clone(), std::sync::Arc::clone(&tally));
    let task = tokio::spawn(async move {
        loop {
            let started = Instant::now();
            let request = support::client::request("GET", "/metrics", Some("t-scraper"));
            let ok = tokio::time::timeout(Duration::from_secs(5), client.try_send(addr, request))
                .await
                .is_ok_and(|r| r.is_ok_and(|r| r.status() == 200));
            {
                let mut tally = shared.lock().unwrap();
                tally.0 += 1;
                tally.1 += u64::from(!ok);
                tally.2 = tally.2.max(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (task, tally)
}

async fn report(what: &str, guard: &Guard, (task, tally): Scraper) {
    task.abort();
    let _ = task.await;
    let (sent, failed, slowest) = *tally.lock().unwrap();
    println!(
        "{what}: scraper failed {failed} of {sent}, slowest {slowest:?}; {}",
        usage(&guard.child)
    );
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    token: &str,
) -> u16 {
    let request = http::Request::get("/metrics")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("request");
    let status = response.status().as_u16();
    response.into_body().collect().await.expect("body");
    status
}

/// Scrapes over one keep-alive connection until `deadline`, or `count` times when not zero.
async fn scrape(
    client: &TlsClient,
    addr: SocketAddr,
    deadline: Instant,
    count: u64,
) -> Vec<Duration> {
    let mut sender = client.keep_alive(addr).await;
    let mut latencies = Vec::new();
    while if count > 0 {
        (latencies.len() as u64) < count
    } else {
        Instant::now() < deadline
    } {
        let started = Instant::now();
        assert_eq!(get(&mut sender, "t-scraper").await, 200);
        latencies.push(started.elapsed());
    }
    latencies
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_ready(admin_port: u16) {
    // A guard under valgrind starts slowly.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
            // Not listening yet is no failure: try again.
            if tokio::net::TcpStream::connect(admin).await.is_ok() {
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    support::guard::admin_get(admin, "/readyz"),
                )
                .await;
                if answer.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the guard becomes ready");
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
    // RssFile is the binary's pages mapped from the page cache (shared, reclaimable); RssAnon is
    // what the guard allocated.
    format!(
        "RSS {} (peak {}; anonymous {}, file {})",
        field("VmRSS:"),
        field("VmHWM:"),
        field("RssAnon:"),
        field("RssFile:")
    )
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
