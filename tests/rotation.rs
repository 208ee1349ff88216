//! Certificate rotation (issue 5, Operations): the serving certificate and key, the client CA,
//! the upstream CA and the upstream client certificate are re-read when their content changes,
//! the way Kubernetes updates a mounted Secret (files behind a `..data` symlink that is swapped
//! in one rename). New connections get the new material, open connections and requests in flight
//! are not dropped, and a broken file keeps the last good material and is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use kubelet_guard::Running;
use support::client::TlsClient;
use support::guard::{Cluster, NODE, start_with_flags};
use support::pki::{Ca, CertKey};
use support::with_deadline;

const TOKEN: &str = "t-scraper";
const USER: &str = "system:serviceaccount:monitoring:prometheus";

/// A directory laid out as the kubelet mounts a Secret: `name -> ..data/name`, `..data -> gen-N`.
struct Volume {
    dir: PathBuf,
    generation: AtomicUsize,
}

impl Volume {
    fn new(tag: &str) -> Volume {
        Volume {
            dir: support::temp_dir(tag),
            generation: AtomicUsize::new(0),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a new generation of `files` and swaps it in with one rename.
    fn publish(&self, files: &[(&str, &str)]) {
        let n = self.generation.fetch_add(1, Ordering::SeqCst);
        let generation = self.dir.join(format!("gen-{n}"));
        std::fs::create_dir(&generation).unwrap();
        for (name, contents) in files {
            std::fs::write(generation.join(name), contents).unwrap();
            let link = self.dir.join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), link).unwrap();
            }
        }
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

/// `argv` with `flag` set to `value` in place of whatever it had.
fn with_flag(mut argv: Vec<String>, flag: &str, value: &Path) -> Vec<String> {
    argv.retain(|arg| !arg.starts_with(&format!("{flag}=")));
    argv.push(format!("{flag}={}", value.display()));
    argv
}

/// A guard over `cluster` whose `--client-ca-file` is `volume`'s `ca.crt`, re-read every 20 ms;
/// `edit` changes the other flags first.
async fn guard_reading_client_ca(
    cluster: &Cluster,
    volume: &Volume,
    edit: impl FnOnce(Vec<String>) -> Vec<String>,
) -> Running {
    let argv = cluster.flags(&["--tls-reload-interval=20ms"]);
    start_with_flags(&with_flag(
        edit(argv),
        "--client-ca-file",
        &volume.path("ca.crt"),
    ))
    .await
    .unwrap()
}

/// The guard's `/metrics` text.
async fn metrics(guard: &Running) -> String {
    support::guard::admin_get(guard.admin_addr, "/metrics").await
}

/// The value of the sample `series` (name and labels exactly as rendered), 0 if absent.
async fn sample(guard: &Running, series: &str) -> u64 {
    metrics(guard)
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `series` reaches `at_least`.
async fn wait_for_sample(guard: &Running, series: &str, at_least: u64) {
    with_deadline(series, async {
        while sample(guard, series).await < at_least {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The leaf certificate a fresh connection to `addr` is served.
async fn served_certificate(client: &TlsClient, addr: SocketAddr) -> Vec<u8> {
    let tls = client.connect(addr, b"http/1.1").await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Waits until fresh connections are served `expected`.
async fn wait_for_certificate(client: &TlsClient, addr: SocketAddr, expected: &CertKey) {
    let expected = expected.cert_der().to_vec();
    with_deadline("the new serving certificate", async {
        while served_certificate(client, addr).await != expected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn serving_files(cert: &CertKey) -> [(&'static str, &str); 2] {
    [("tls.crt", &cert.cert_pem), ("tls.key", &cert.key_pem)]
}

/// Requests made by the load, and the ones that did not get a 200.
#[derive(Default)]
struct Load {
    done: AtomicUsize,
    failed: AtomicUsize,
    /// Requests on the one keep-alive connection.
    kept: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    /// Waits until `more` requests beyond the current count are done.
    async fn wait_for_more(&self, more: usize) {
        let target = self.done.load(Ordering::SeqCst) + more;
        with_deadline("the load to go on", async {
            while self.done.load(Ordering::SeqCst) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "get", "metrics");
    let serving = Volume::new("serving");
    let first = cluster.ca.server_cert(NODE, &["127.0.0.1", "localhost"]);
    serving.publish(&serving_files(&first));
    let upstream = Volume::new("upstream-credential");
    let identity = cluster.kubelet_ca.client_cert("kubelet-guard", &[]);
    upstream.publish(&serving_files(&identity));

    let argv = cluster.flags(&["--tls-reload-interval=20ms"]);
    let argv = with_flag(argv, "--tls-cert-file", &serving.path("tls.crt"));
    let argv = with_flag(argv, "--tls-private-key-file", &serving.path("tls.key"));
    let argv = with_flag(
        argv,
        "--upstream-client-cert-file",
        &upstream.path("tls.crt"),
    );
    let argv = with_flag(
        argv,
        "--upstream-client-key-file",
        &upstream.path("tls.key"),
    );
    let guard = start_with_flags(&argv).await.unwrap();
    let addr = guard.proxy_addr;
    let client = cluster.client();
    assert_eq!(
        served_certificate(&client, addr).await,
        first.cert_der().to_vec()
    );

    // Load: fresh connections in a loop, plus one keep-alive connection that must survive.
    let load = Arc::new(Load::default());
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (load, client) = (Arc::clone(&load), client.clone());
        workers.push(tokio::spawn(async move {
            while !load.stop.load(Ordering::SeqCst) {
                let request = support::client::request("GET", "/metrics", Some(TOKEN));
                let ok = match client.try_send(addr, request).await {
                    Ok(response) => {
                        response.status() == StatusCode::OK
                            && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    load.failed.fetch_add(1, Ordering::SeqCst);
                }
                load.done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let tls = client.connect(addr, b"http/1.1").await.unwrap();
    let kept_certificate = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut kept, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let keep_alive = {
        let load = Arc::clone(&load);
        tokio::spawn(async move {
            while !load.stop.load(Ordering::SeqCst) {
                let mut request = support::client::request("GET", "/metrics", Some(TOKEN));
                request
                    .headers_mut()
                    .insert(http::header::HOST, "localhost".parse().unwrap());
                let response = kept.send_request(request).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                response.into_body().collect().await.unwrap();
                load.kept.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    load.wait_for_more(20).await;

    // Rotate both the serving certificate and the guard's own credential towards the kubelet.
    let second = cluster
        .ca
        .server_cert("node-1-rotated", &["127.0.0.1", "localhost"]);
    let rotated_identity = cluster.kubelet_ca.client_cert("kubelet-guard-rotated", &[]);
    serving.publish(&serving_files(&second));
    upstream.publish(&serving_files(&rotated_identity));
    wait_for_certificate(&client, addr, &second).await;
    let kept_before = load.kept.load(Ordering::SeqCst);
    with_deadline("the kubelet sees the rotated client certificate", async {
        loop {
            let last = cluster.kubelet.requests().last().unwrap().client_cn.clone();
            if last.as_deref() == Some("kubelet-guard-rotated") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    load.wait_for_more(20).await;

    // A broken certificate keeps the last good one, is counted, and fails nothing.
    serving.publish(&[
        ("tls.crt", "not a certificate\n"),
        ("tls.key", &second.key_pem),
    ]);
    wait_for_sample(
        &guard,
        r#"kubelet_guard_file_reloads_total{flag="--tls-cert-file",result="error"}"#,
        1,
    )
    .await;
    load.wait_for_more(20).await;
    assert_eq!(
        served_certificate(&client, addr).await,
        second.cert_der().to_vec()
    );

    with_deadline(
        "the keep-alive connection serves after the rotation",
        async {
            while load.kept.load(Ordering::SeqCst) <= kept_before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    keep_alive.await.unwrap();
    assert_eq!(kept_certificate, first.cert_der().to_vec());
    assert_eq!(
        load.failed.load(Ordering::SeqCst),
        0,
        "of {} requests",
        load.done.load(Ordering::SeqCst)
    );
    let reloads = metrics(&guard).await;
    for (series, expected) in [
        (r#"flag="--tls-cert-file",result="success"}"#, 1),
        (r#"flag="--tls-cert-file",result="error"}"#, 1),
        (r#"flag="--upstream-client-cert-file",result="success"}"#, 1),
    ] {
        let line = reloads
            .lines()
            .find(|line| line.contains(series))
            .unwrap_or_else(|| panic!("{series} in {reloads}"));
        assert!(line.ends_with(&format!(" {expected}")), "{line}");
    }
    guard.stop().await;
}

#[tokio::test]
async fn a_rotated_client_ca_admits_certificates_of_the_new_ca() {
    let cluster = Cluster::start(&[]).await;
    let next_ca = Ca::new("cluster-next");
    cluster.api.allow("kube-apiserver-next", "get", "metrics");
    let volume = Volume::new("client-ca");
    volume.publish(&[("ca.crt", &cluster.ca.cert_pem())]);
    let guard = guard_reading_client_ca(&cluster, &volume, |argv| argv).await;
    let next_client = TlsClient::new(
        cluster.ca.cert_path(),
        Some(&next_ca.client_cert("kube-apiserver-next", &[])),
    );
    let request = || support::client::request("GET", "/metrics", None);
    assert!(
        next_client
            .try_send(guard.proxy_addr, request())
            .await
            .is_err(),
        "a certificate of an unknown CA is refused in the handshake"
    );

    // The bundle during a CA rotation: old and new.
    volume.publish(&[(
        "ca.crt",
        &format!("{}{}", cluster.ca.cert_pem(), next_ca.cert_pem()),
    )]);
    with_deadline("the new client CA", async {
        loop {
            if let Ok(response) = next_client.try_send(guard.proxy_addr, request()).await {
                assert_eq!(response.status(), StatusCode::OK);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (status, _, _) = cluster
        .client_with_cert("system:node:node-1", &["system:nodes"])
        .get(guard.proxy_addr, "/healthz", None)
        .await;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "the old CA still admits");
    guard.stop().await;
}

#[tokio::test]
async fn a_rotated_upstream_ca_is_used_for_new_kubelet_connections() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "get", "metrics");
    let wrong = Ca::new("not-the-kubelets");
    let volume = Volume::new("upstream-ca");
    volume.publish(&[("ca.crt", &wrong.cert_pem())]);
    let argv = cluster.flags(&["--tls-reload-interval=20ms"]);
    let guard = start_with_flags(&with_flag(
        argv,
        "--upstream-ca-file",
        &volume.path("ca.crt"),
    ))
    .await
    .unwrap();
    let client = cluster.client();
    let (status, _, _) = client.get(guard.proxy_addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the kubelet is not trusted"
    );

    volume.publish(&[("ca.crt", &cluster.kubelet_ca.cert_pem())]);
    with_deadline("the new upstream CA", async {
        while client
            .get(guard.proxy_addr, "/metrics", Some(TOKEN))
            .await
            .0
            != StatusCode::OK
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A broken CA keeps the good one.
    volume.publish(&[("ca.crt", "-----BEGIN CERTIFICATE-----\nbroken\n")]);
    wait_for_sample(
        &guard,
        r#"kubelet_guard_file_reloads_total{flag="--upstream-ca-file",result="error"}"#,
        1,
    )
    .await;
    let (status, _, _) = client.get(guard.proxy_addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    guard.stop().await;
}

#[tokio::test]
async fn a_client_ca_reloaded_with_the_node_ca_in_it_keeps_the_last_good_one() {
    let cluster = Cluster::start(&[]).await;
    let pki = support::temp_dir("rotation-node-pki").join("pki");
    support::guard::make_node_pki(&pki, "node-1", "168h");
    let volume = Volume::new("client-ca-node-pki");
    volume.publish(&[("ca.crt", &cluster.ca.cert_pem())]);
    let guard = guard_reading_client_ca(&cluster, &volume, |argv| {
        argv.into_iter()
            .filter(|flag| !flag.starts_with("--upstream-client-"))
            .chain([format!("--node-pki-dir={}", pki.display())])
            .collect()
    })
    .await;
    // The node-local CA signs the guard's own credential: it must never admit a caller, not even
    // when an edit of the bundle brings it in after start-up.
    let node_ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    volume.publish(&[("ca.crt", &format!("{}{node_ca}", cluster.ca.cert_pem()))]);
    wait_for_sample(
        &guard,
        r#"kubelet_guard_file_reloads_total{flag="--client-ca-file",result="error"}"#,
        1,
    )
    .await;
    guard.stop().await;
}

#[tokio::test]
async fn a_ca_removed_from_the_client_bundle_stops_admitting_its_open_connections() {
    let cluster = Cluster::start(&[]).await;
    let other = Ca::new("cluster-other");
    cluster.api.allow("scraper-other", "get", "metrics");
    let volume = Volume::new("client-ca-removed");
    volume.publish(&[(
        "ca.crt",
        &format!("{}{}", cluster.ca.cert_pem(), other.cert_pem()),
    )]);
    let log = support::audit_log::AuditLog::new();
    let guard = guard_reading_client_ca(&cluster, &volume, |mut argv| {
        argv.push(log.flag().to_owned());
        argv
    })
    .await;
    let client = TlsClient::new(
        cluster.ca.cert_path(),
        Some(&other.client_cert("scraper-other", &[])),
    );
    let mut kept = client.keep_alive(guard.proxy_addr).await;
    let scrape = || {
        let mut request = support::client::request("GET", "/metrics", None);
        request
            .headers_mut()
            .insert(http::header::HOST, "localhost".parse().unwrap());
        request
    };
    let status = kept.send_request(scrape()).await.unwrap().status();
    assert_eq!(status, StatusCode::OK);
    // A target read two ways is refused before authentication; its event names the certificate
    // while its CA is trusted, and nobody after.
    let confused = || support::client::request("GET", "/stats/%2e%2e/exec/a/b/c", None);
    let named = |events: Vec<serde_json::Value>| {
        let event = events
            .into_iter()
            .rev()
            .find(|e| e["responseStatus"]["code"] == 400)
            .unwrap();
        event["user"]["username"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let status = kept.send_request(confused()).await.unwrap().status();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(named(log.events(2).await), "scraper-other");

    // The other CA leaves the bundle (it was compromised, say). The kubelet verifies a caller's
    // chain against its current bundle on every request; so does the guard.
    volume.publish(&[("ca.crt", &cluster.ca.cert_pem())]);
    wait_for_sample(
        &guard,
        r#"kubelet_guard_file_reloads_total{flag="--client-ca-file",result="success"}"#,
        1,
    )
    .await;
    let status = kept.send_request(scrape()).await.unwrap().status();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "on the connection it opened before"
    );
    let status = kept.send_request(confused()).await.unwrap().status();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        named(log.events(4).await),
        "",
        "a CA no longer trusted names nobody"
    );
    // A certificate of a CA still in the bundle is still admitted.
    let cluster_client = TlsClient::new(
        cluster.ca.cert_path(),
        Some(&cluster.ca.client_cert("scraper-other", &[])),
    );
    let (status, _, _) = cluster_client.get(guard.proxy_addr, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    guard.stop().await;
}
