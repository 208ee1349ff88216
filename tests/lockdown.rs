//! The kubelet answers to its own node's guard alone, and the guard proves it: the node-local
//! upstream credential, its renewal under load, and the lockdown self-check against a kubelet
//! double that is open, on webhook authentication, or locked to the node PKI's CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::guard::{Cluster, NODE, admin_get, make_node_pki, start_with_flags};
use support::kubelet::Auth;

const TOKEN: &str = "t-agent";
const USER: &str = "system:serviceaccount:monitoring:agent";
const GUARD_TOKEN: &str = "guard-sa-token";

fn allow_pods(cluster: &Cluster) {
    cluster.api.add_token(TOKEN, USER, "uid-agent", &[]);
    cluster.api.allow(USER, "get", "pods");
}

/// The values of `kubelet_guard_kubelet_exposed{credential}` for none, token, certificate and
/// read-only-port, once all four have one.
async fn exposed(cluster: &Cluster) -> (String, String, String, String) {
    support::with_deadline("the four lockdown gauges", async {
        loop {
            let metrics = cluster.metrics().await;
            let value = |credential: &str| {
                let prefix =
                    format!("kubelet_guard_kubelet_exposed{{credential=\"{credential}\"}} ");
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
            };
            if let (Some(none), Some(token), Some(certificate), Some(read_only_port)) = (
                value("none"),
                value("token"),
                value("certificate"),
                value("read-only-port"),
            ) {
                return (none, token, certificate, read_only_port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The gauge's lines, as `/metrics` shows them.
async fn gauges(cluster: &Cluster) -> String {
    let metrics = cluster.metrics().await;
    metrics
        .lines()
        .filter(|line| line.starts_with("kubelet_guard_kubelet_exposed{"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every request the kubelet double received without a client certificate: the probe's.
fn probes(cluster: &Cluster) -> Vec<support::kubelet::Recorded> {
    cluster
        .kubelet
        .requests()
        .into_iter()
        .filter(|r| r.client_cn.is_none())
        .collect()
}

#[tokio::test]
async fn an_open_kubelet_reads_exposed_and_require_keeps_the_guard_unready() {
    let cluster = Cluster::start_with_node_pki(
        Auth::Open,
        "168h",
        &[
            "--kubelet-lockdown=require",
            "--kubelet-lockdown-interval=1s",
        ],
    )
    .await;
    assert_eq!(
        exposed(&cluster).await,
        ("1".into(), "1".into(), "0".into(), "0".into())
    );
    let readyz = admin_get(cluster.guard.admin_addr, "/readyz").await;
    eprintln!(
        "open kubelet, require:\n{}\n{readyz}",
        gauges(&cluster).await
    );
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(readyz.contains("anonymous.enabled: false"), "{readyz}");
    assert!(readyz.contains("webhook.enabled: false"), "{readyz}");

    // The probe sent read-only GETs without a certificate: one bare, one with the guard's own
    // API-server token, never a caller's credential.
    let probes = probes(&cluster);
    assert!(probes.len() >= 2, "{probes:?}");
    for probe in &probes {
        assert_eq!(
            (probe.method.as_str(), probe.target.as_str()),
            ("GET", "/healthz")
        );
        let authorization = probe.headers.get(http::header::AUTHORIZATION);
        assert!(
            authorization.is_none() || authorization.unwrap() == &format!("Bearer {GUARD_TOKEN}"),
            "{probe:?}"
        );
    }
    assert!(
        probes
            .iter()
            .any(|p| p.headers.contains_key(http::header::AUTHORIZATION))
    );
    assert!(
        probes
            .iter()
            .any(|p| !p.headers.contains_key(http::header::AUTHORIZATION))
    );
}

#[tokio::test]
async fn a_locked_kubelet_reads_locked_and_require_turns_the_guard_ready() {
    let cluster =
        Cluster::start_with_node_pki(Auth::Locked, "168h", &["--kubelet-lockdown=require"]).await;
    assert_eq!(
        exposed(&cluster).await,
        ("0".into(), "0".into(), "0".into(), "0".into())
    );
    let readyz = support::with_deadline("ready", async {
        loop {
            let readyz = admin_get(cluster.guard.admin_addr, "/readyz").await;
            if readyz.starts_with("HTTP/1.1 200") {
                return readyz;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    eprintln!(
        "locked kubelet, require:\n{}\n{readyz}",
        gauges(&cluster).await
    );
    assert!(readyz.ends_with("ok\n"), "{readyz}");

    // The guard itself gets through, as this node's identity. Its own request besides the caller's
    // is the read of the kubelet's configuration, with no credential but its certificate.
    allow_pods(&cluster);
    let (status, body) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let guards: Vec<_> = cluster
        .kubelet
        .requests()
        .into_iter()
        .filter(|r| r.client_cn.is_some())
        .collect();
    let mut targets = Vec::new();
    for request in &guards {
        assert_eq!(
            request.client_cn,
            Some(format!("kubelet-guard:node:{NODE}")),
            "{request:?}"
        );
        assert!(
            !request.headers.contains_key(http::header::AUTHORIZATION),
            "{request:?}"
        );
        targets.push((request.method.as_str(), request.target.as_str()));
    }
    let (configz, forwarded): (Vec<_>, Vec<_>) =
        targets.into_iter().partition(|t| *t == ("GET", "/configz"));
    assert!(!configz.is_empty());
    assert_eq!(forwarded, [("GET", "/pods")]);
    for probe in probes(&cluster) {
        assert_eq!(
            (probe.method.as_str(), probe.target.as_str()),
            ("GET", "/healthz")
        );
    }
}

#[tokio::test]
async fn a_kubelet_that_also_trusts_the_cluster_ca_reads_exposed_to_certificates() {
    // Tokens and anonymous requests refused, but a cluster-CA client certificate (any agent's)
    // would get through: the kubelet names that CA in its certificate request.
    let cluster = Cluster::start_with_node_pki_trusting(
        Auth::Locked,
        "168h",
        &[
            "--kubelet-lockdown=require",
            "--kubelet-lockdown-interval=1s",
        ],
        true,
    )
    .await;
    assert_eq!(
        exposed(&cluster).await,
        ("0".into(), "0".into(), "1".into(), "0".into())
    );
    let readyz = admin_get(cluster.guard.admin_addr, "/readyz").await;
    eprintln!(
        "kubelet trusting the cluster CA too, require:\n{}\n{readyz}",
        gauges(&cluster).await
    );
    assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
    assert!(
        readyz.contains("trusts client certificates from CN=cluster:"),
        "names the CA, not the node PKI's: {readyz}"
    );
    assert!(readyz.contains("clientCAFile"), "{readyz}");
}

/// A locked kubelet and a guard that requires it, probing every 100 ms.
async fn requiring() -> Cluster {
    Cluster::start_with_node_pki(
        Auth::Locked,
        "168h",
        &[
            "--kubelet-lockdown=require",
            "--kubelet-lockdown-interval=100ms",
        ],
    )
    .await
}

/// Waits until the guard's `/readyz` answers 200.
async fn until_ready(cluster: &Cluster) {
    until_readyz(cluster, "HTTP/1.1 200").await;
}

/// Waits until the guard's `/readyz` answers 503 (readiness is held at the end of a probe round,
/// a moment after its gauges are set) and returns the answer.
async fn until_unready(cluster: &Cluster) -> String {
    until_readyz(cluster, "HTTP/1.1 503").await
}

async fn until_readyz(cluster: &Cluster, status_line: &str) -> String {
    support::with_deadline(status_line, async {
        loop {
            let readyz = admin_get(cluster.guard.admin_addr, "/readyz").await;
            if readyz.starts_with(status_line) {
                return readyz;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits until `kubelet_guard_kubelet_exposed{credential="read-only-port"}` reads `value`.
async fn read_only_port_reads(cluster: &Cluster, value: &str) {
    let line = format!("kubelet_guard_kubelet_exposed{{credential=\"read-only-port\"}} {value}");
    support::with_deadline(&line, async {
        while !cluster.metrics().await.lines().any(|l| l == line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_kubelet_serving_its_read_only_port_reads_exposed_until_it_stops() {
    let cluster = requiring().await;
    // Tokens and anonymous requests refused, but the port that takes no credential is open.
    cluster.kubelet.report_read_only_port(10255);
    read_only_port_reads(&cluster, "1").await;
    let readyz = until_unready(&cluster).await;
    eprintln!(
        "kubelet serving its read-only port, require:\n{}\n{readyz}",
        gauges(&cluster).await
    );
    assert!(readyz.contains("read-only port 10255"), "{readyz}");
    assert!(readyz.contains("readOnlyPort: 0"), "{readyz}");

    cluster.kubelet.report_read_only_port(0);
    read_only_port_reads(&cluster, "0").await;
    until_ready(&cluster).await;
}

#[tokio::test]
async fn a_kubelet_without_configz_is_asked_on_the_default_read_only_port() {
    let cluster = requiring().await;
    cluster.kubelet.answer_configz_with(StatusCode::NOT_FOUND);
    // A plain HTTP server on the kubelet's host and default read-only port, as the kubelet's own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:10255")
        .await
        .expect("127.0.0.1:10255 must be free for this test (something else listens there)");
    let (heads, mut asked) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await;
            let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
        }
    });
    read_only_port_reads(&cluster, "1").await;
    until_unready(&cluster).await;
    let head = asked.recv().await.expect("a request on the read-only port");
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );

    // Nothing listens there any more: a refused connection is locked.
    server.abort();
    let _ = server.await;
    read_only_port_reads(&cluster, "0").await;
    until_ready(&cluster).await;
}

#[tokio::test]
async fn a_configz_the_kubelet_fails_to_answer_keeps_the_last_verdict() {
    let cluster = requiring().await;
    cluster.kubelet.report_read_only_port(10266);
    read_only_port_reads(&cluster, "1").await;
    // The kubelet cannot authorize the guard's read for a while (its API server is away): that
    // proves nothing, and nothing is asked on port 10255 instead.
    cluster
        .kubelet
        .answer_configz_with(StatusCode::INTERNAL_SERVER_ERROR);
    let failed = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("kubelet_guard_upstream_errors_total{kind=\"lockdown-probe\"} ")
            })
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = failed(&cluster.metrics().await);
    support::with_deadline("three failed reads", async {
        while failed(&cluster.metrics().await) < before + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    read_only_port_reads(&cluster, "1").await;
    let readyz = until_unready(&cluster).await;
    assert!(readyz.contains("read-only port 10266"), "{readyz}");
}

#[tokio::test]
async fn a_kubelet_on_webhook_authentication_reads_exposed_to_tokens_only() {
    let cluster =
        Cluster::start_with_node_pki(Auth::Webhook, "168h", &["--kubelet-lockdown=warn"]).await;
    assert_eq!(
        exposed(&cluster).await,
        ("0".into(), "1".into(), "0".into(), "0".into())
    );
    // warn reports it but stays ready.
    let readyz = admin_get(cluster.guard.admin_addr, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
}

#[tokio::test]
async fn another_nodes_guard_certificate_is_refused_by_a_locked_kubelet() {
    let cluster = Cluster::start_with_node_pki(Auth::Locked, "168h", &[]).await;
    allow_pods(&cluster);
    let other = support::temp_dir("other-node").join("pki");
    make_node_pki(&other, "node-2", "168h");
    assert_ne!(
        std::fs::read(other.join("ca.crt")).unwrap(),
        std::fs::read(cluster.node_pki.as_ref().unwrap().join("ca.crt")).unwrap(),
        "two nodes, two CAs"
    );
    let mut argv: Vec<String> = cluster
        .flags(&[])
        .into_iter()
        .filter(|flag| !flag.starts_with("--upstream-client-"))
        .collect();
    argv.push(format!("--node-pki-dir={}", other.display()));
    let intruder = start_with_flags(&argv).await.unwrap();
    let (status, _, body) = cluster
        .client()
        .get(intruder.proxy_addr, "/pods", Some(TOKEN))
        .await;
    // The kubelet's 401 is to the guard's certificate, not the caller's token: a 502 that says so.
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        body,
        "Bad Gateway: the kubelet refused the guard's credential\n"
    );
    let metrics = admin_get(intruder.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("kubelet_guard_upstream_errors_total{kind=\"refused\"} 1"),
        "{metrics}"
    );
    assert!(
        cluster
            .kubelet
            .requests()
            .iter()
            .all(|r| r.client_cn.is_none()),
        "the kubelet served no request with the other node's certificate"
    );
    // Its own guard still gets through.
    let (status, _) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_kubelet_that_does_not_take_the_guards_certificate_yet_is_asked_on_the_default_port() {
    // The rollout's observe step: the kubelet does not trust this guard's node CA yet, so it
    // answers the guard's own GET /configz with 401. The read-only port still gets a verdict,
    // from port 10255, and nothing counts as a failed probe.
    let cluster = Cluster::start_with_node_pki(Auth::Locked, "168h", &[]).await;
    let other = support::temp_dir("not-yet-trusted").join("pki");
    make_node_pki(&other, "node-2", "168h");
    let mut argv: Vec<String> = cluster
        .flags(&[
            "--kubelet-lockdown=warn",
            "--kubelet-lockdown-interval=100ms",
        ])
        .into_iter()
        .filter(|flag| !flag.starts_with("--upstream-client-"))
        .collect();
    argv.push(format!("--node-pki-dir={}", other.display()));
    let guard = start_with_flags(&argv).await.unwrap();
    let metrics = support::with_deadline("a read-only-port verdict", async {
        loop {
            let metrics = admin_get(guard.admin_addr, "/metrics").await;
            if metrics.contains("kubelet_guard_kubelet_exposed{credential=\"read-only-port\"}") {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        !metrics.contains("kind=\"lockdown-probe\""),
        "a 401 to /configz is no failed probe: {metrics}"
    );
    let configz: Vec<_> = cluster
        .kubelet
        .requests()
        .into_iter()
        .filter(|r| r.target == "/configz")
        .collect();
    assert!(!configz.is_empty());
    assert!(configz.iter().all(|r| r.client_cn.is_none()), "{configz:?}");
}

#[tokio::test]
async fn the_guard_renews_its_certificate_under_load_without_a_failed_request() {
    // Valid 10 s: renewed after about 6.7 s, expired at 10 s; the load runs past both.
    let cluster = Cluster::start_with_node_pki(Auth::Locked, "10s", &[]).await;
    allow_pods(&cluster);
    let dir = cluster.node_pki.clone().unwrap();
    let first = std::fs::read(dir.join("client.crt")).unwrap();
    let started = Instant::now();
    let cluster = std::sync::Arc::new(cluster);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let cluster = std::sync::Arc::clone(&cluster);
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while started.elapsed() < Duration::from_secs(12) {
                let (status, body) = cluster.get("/pods", TOKEN).await;
                if status == StatusCode::OK {
                    ok += 1;
                } else {
                    failed.push(format!("{:?} {status} {body}", started.elapsed()));
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, Vec::new());
    for worker in workers {
        let (n, f) = worker.await.unwrap();
        ok += n;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok + failed.len() as u32
    );
    assert!(ok > 100, "only {ok} requests in 12 s");
    assert_ne!(
        std::fs::read(dir.join("client.crt")).unwrap(),
        first,
        "renewed"
    );
    let metrics = cluster.metrics().await;
    assert!(
        metrics.contains(
            "kubelet_guard_file_reloads_total{flag=\"--node-pki-dir\",result=\"success\"}"
        ),
        "{metrics}"
    );
    // Requests after the first certificate expired reached the kubelet (the double checks the
    // certificate's dates on every request).
    assert!(cluster.kubelet.count() > 0);
}

#[tokio::test]
async fn an_unreachable_kubelet_changes_nothing_and_is_counted() {
    let cluster = Cluster::start_with_node_pki(
        Auth::Locked,
        "168h",
        &[
            "--kubelet-lockdown=require",
            "--kubelet-lockdown-interval=100ms",
        ],
    )
    .await;
    assert_eq!(
        exposed(&cluster).await,
        ("0".into(), "0".into(), "0".into(), "0".into())
    );
    let admin = cluster.guard.admin_addr;
    drop(cluster.kubelet);
    let metrics = support::with_deadline("a failed probe", async {
        loop {
            let metrics = admin_get(admin, "/metrics").await;
            if metrics.contains("kubelet_guard_upstream_errors_total{kind=\"lockdown-probe\"}") {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        metrics.contains("kubelet_guard_kubelet_exposed{credential=\"none\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubelet_guard_kubelet_exposed{credential=\"token\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubelet_guard_kubelet_exposed{credential=\"read-only-port\"} 0"),
        "{metrics}"
    );
    let readyz = admin_get(admin, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
}

/// A guard without an API-server token of its own (a kubeconfig with none, outside a pod) could
/// never show that the kubelet refuses tokens: under `require` it does not start, and says why.
/// A `--kubeconfig` given for the probe's token must be readable, in embedded mode too.
#[tokio::test]
async fn require_without_a_token_of_its_own_is_refused_at_start() {
    let ca = support::pki::Ca::new("tokenless");
    let kubeconfig = support::temp_dir("kubeconfig").join("tokenless");
    let server = "https://127.0.0.1:9";
    std::fs::write(
        &kubeconfig,
        support::kubeconfig(server, ca.cert_path(), "{}"),
    )
    .unwrap();
    let cluster = Cluster::start(&[]).await;
    let tokenless = format!("--kubeconfig={}", kubeconfig.display());
    let refused = start_with_flags(&cluster.flags(&["--kubelet-lockdown=require", &tokenless]))
        .await
        .err()
        .expect("require without a token started");
    assert!(
        refused.contains("--kubelet-lockdown: require cannot be met"),
        "{refused}"
    );
    // warn starts, and skips the token probe: no probe carries a credential.
    let guard = start_with_flags(&cluster.flags(&["--kubelet-lockdown=warn", &tokenless]))
        .await
        .unwrap();
    support::with_deadline("a bare probe", async {
        while probes(&cluster).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        probes(&cluster)
            .iter()
            .all(|probe| !probe.headers.contains_key(http::header::AUTHORIZATION))
    );
    guard.stop().await;

    let dir = support::temp_dir("embedded-lockdown");
    let (tokens, policy) = (dir.join("tokens.csv"), dir.join("policy.yaml"));
    std::fs::write(&tokens, include_str!("../examples/embedded/tokens.csv")).unwrap();
    std::fs::write(&policy, include_str!("../examples/embedded/policy.yaml")).unwrap();
    let embedded = [
        "--kubelet-lockdown=warn".to_owned(),
        "--kubeconfig=/nonexistent/kubeconfig".to_owned(),
        format!("--token-auth-file={}", tokens.display()),
        format!("--rbac-policy-file={}", policy.display()),
    ];
    let embedded: Vec<&str> = embedded.iter().map(String::as_str).collect();
    let refused = start_with_flags(&cluster.flags(&embedded))
        .await
        .err()
        .expect("an unreadable --kubeconfig started");
    assert!(
        refused.contains("--kubeconfig /nonexistent/kubeconfig"),
        "{refused}"
    );

    // A token file that holds no token proves nothing: an empty bearer is refused by any kubelet.
    let empty = dir.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let with_empty_token = dir.join("kubeconfig-empty-token");
    let user = format!("{{tokenFile: {}}}", empty.display());
    let yaml = support::kubeconfig(server, ca.cert_path(), &user);
    std::fs::write(&with_empty_token, yaml).unwrap();
    let mut embedded = embedded.to_vec();
    let kubeconfig = format!("--kubeconfig={}", with_empty_token.display());
    embedded[0] = "--kubelet-lockdown=require";
    embedded[1] = &kubeconfig;
    let refused = start_with_flags(&cluster.flags(&embedded))
        .await
        .err()
        .expect("require with an empty token file started");
    assert!(
        refused.contains("require cannot be met")
            && refused.contains(&format!("token file {} is empty", empty.display())),
        "{refused}"
    );
    // Under warn it starts, and probes without a token rather than with an empty bearer: three
    // rounds, each of which would have had its token probe.
    let before = probes(&cluster).len();
    embedded[0] = "--kubelet-lockdown=warn";
    let mut warn = embedded.clone();
    warn.push("--kubelet-lockdown-interval=10ms");
    let guard = start_with_flags(&cluster.flags(&warn)).await.unwrap();
    support::with_deadline("three rounds of probes", async {
        while probes(&cluster).len() < before + 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    guard.stop().await;
    assert!(
        probes(&cluster)
            .iter()
            .all(|probe| !probe.headers.contains_key(http::header::AUTHORIZATION))
    );
}
