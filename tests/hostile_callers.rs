//! Hostile callers: floods from a second address (127.0.0.2) while a scraper on 127.0.0.1 keeps
//! going, the admin listener under a silent flood, client certificates that expire on kept-alive
//! and resumed connections, a subject with two CNs, exemptions that only a certificate earns, a
//! bearer token hidden in a WebSocket subprotocol, forwarding headers, container log files under
//! `--pod-scoped-authz`, revocation through the embedded files, and audit events under a flood.
//! Memory under these floods is measured by the load harness, not here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use support::guard::{Cluster, admin_get};
use support::with_deadline;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "t-scraper";
const USER: &str = "system:serviceaccount:monitoring:scraper";
const ATTACKER: &str = "127.0.0.2";

async fn cluster(extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(extra).await;
    cluster.api.add_token(TOKEN, USER, "uid-scraper", &[]);
    cluster.api.allow(USER, "get", "metrics");
    cluster
}

fn attacker() -> IpAddr {
    ATTACKER.parse().unwrap()
}

/// `n` scrapes of `/metrics` from 127.0.0.1, each on a new connection: how many failed, and the
/// slowest.
async fn scrape(cluster: &Cluster, n: usize) -> (usize, Duration) {
    let client = cluster.client();
    let (mut failed, mut slowest) = (0, Duration::ZERO);
    for _ in 0..n {
        let started = Instant::now();
        let request = support::client::request("GET", "/metrics", Some(TOKEN));
        match tokio::time::timeout(
            Duration::from_secs(5),
            client.try_send(cluster.addr(), request),
        )
        .await
        {
            Ok(Ok(response)) if response.status() == StatusCode::OK => {}
            _ => failed += 1,
        }
        slowest = slowest.max(started.elapsed());
    }
    (failed, slowest)
}

#[tokio::test]
async fn silent_connections_from_another_address_leave_the_scraper_its_slots() {
    let cluster = cluster(&[
        "--max-connections=100",
        "--max-unauthenticated-connections-per-source=20",
    ])
    .await;
    let flood = cluster.client().with_source(attacker());
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Ok(tcp) = flood.tcp(cluster.addr()).await {
            held.push(tcp);
        }
    }
    with_deadline("the flood is refused", async {
        while cluster.limit_hits("unauthenticated-per-source").await < 280 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (failed, slowest) = scrape(&cluster, 50).await;
    eprintln!("silent flood: 0 of 50 scrapes may fail; {failed} failed, slowest {slowest:?}");
    assert_eq!(failed, 0);
    drop(held);
}

/// A credential the cluster accepts is not yet a reason to let a connection past its source's cap:
/// any pod has a service-account token, and any node a client certificate. Only a caller allowed
/// something leaves the count.
#[tokio::test]
async fn only_an_authorized_caller_leaves_its_sources_count() {
    let cluster = cluster(&["--max-unauthenticated-connections-per-source=2"]).await;
    cluster.api.add_token(
        "t-nobody",
        "system:serviceaccount:default:nobody",
        "uid",
        &[],
    );
    let held_open = |client: support::client::TlsClient, token: Option<&'static str>| {
        let addr = cluster.addr();
        async move {
            let mut tls = client.connect(addr, b"http/1.1").await.ok()?;
            if let Some(token) = token {
                let request = format!(
                    "GET /metrics HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                tls.write_all(request.as_bytes()).await.ok()?;
                let mut answer = [0u8; 12];
                tokio::io::AsyncReadExt::read_exact(&mut tls, &mut answer)
                    .await
                    .ok()?;
                return Some((tls, String::from_utf8_lossy(&answer).into_owned()));
            }
            Some((tls, String::new()))
        }
    };
    // A token that authenticates but is allowed nothing: its connections stay counted.
    let token = cluster.client().with_source(attacker());
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tls, answer) = held_open(token.clone(), Some("t-nobody")).await.unwrap();
        assert_eq!(answer, "HTTP/1.1 403");
        held.push(tls);
    }
    let third = held_open(token.clone(), Some("t-nobody")).await;
    assert!(third.is_none(), "a third connection was admitted");
    assert_eq!(cluster.limit_hits("unauthenticated-per-source").await, 1);
    drop(held);

    // A node's certificate from the cluster's CA, allowed nothing on this node: the same.
    let node = cluster
        .client_with_cert("system:node:other", &["system:nodes"])
        .with_source(attacker());
    with_deadline("the token's connections are let go", async {
        loop {
            let first = held_open(node.clone(), None).await;
            let second = held_open(node.clone(), None).await;
            if first.is_some() && second.is_some() {
                let third = held_open(node.clone(), None).await;
                assert!(
                    third.is_none(),
                    "a third certificate connection was admitted"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Allowed, the scraper's connections leave the count: more than two stay open (once the
    // certificate connections just dropped have been let go).
    let scraper = cluster.client().with_source(attacker());
    let mut held = Vec::new();
    with_deadline("three allowed connections", async {
        while held.len() < 3 {
            match held_open(scraper.clone(), Some(TOKEN)).await {
                Some((tls, answer)) => {
                    assert_eq!(answer, "HTTP/1.1 200");
                    held.push(tls);
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
}

#[tokio::test]
async fn unfinished_heads_from_another_address_do_not_stop_the_scraper() {
    let cluster = cluster(&["--max-unauthenticated-connections-per-source=20"]).await;
    let flood = cluster.client().with_source(attacker());
    let padding = "a".repeat(60 << 10);
    let mut held = Vec::new();
    for _ in 0..60 {
        let Ok(mut tls) = flood.connect(cluster.addr(), b"http/1.1").await else {
            continue;
        };
        let head = format!("GET /metrics HTTP/1.1\r\nHost: node\r\nX-Padding: {padding}");
        if tls.write_all(head.as_bytes()).await.is_ok() {
            held.push(tls);
        }
    }
    let (failed, slowest) = scrape(&cluster, 50).await;
    eprintln!(
        "head flood: {} held, {failed} of 50 scrapes failed, slowest {slowest:?}",
        held.len()
    );
    assert_eq!(failed, 0);
    assert!(cluster.limit_hits("unauthenticated-per-source").await >= 40);

    // A head over the limit is refused with 431, as the kubelet refuses one over its own.
    let answer = cluster
        .client()
        .raw(
            cluster.addr(),
            format!("GET /metrics HTTP/1.1\r\nHost: node\r\nX-Padding: {padding}{padding}\r\n\r\n")
                .as_bytes(),
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:.60}");
}

#[tokio::test]
async fn the_admin_listener_answers_health_probes_through_a_silent_flood() {
    let cluster = cluster(&[]).await;
    let admin = cluster.guard.admin_addr;
    let flood = cluster.client().with_source(attacker());
    let mut held = Vec::new();
    for _ in 0..600 {
        if let Ok(tcp) = flood.tcp(admin).await {
            held.push(tcp);
        }
    }
    let started = Instant::now();
    let health = admin_get(admin, "/healthz").await;
    eprintln!("admin flood: /healthz in {:?}", started.elapsed());
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = admin_get(admin, "/metrics").await;
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kubelet_guard_limit_hits_total{limit=\"admin-per-source\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 500, "{refused} refused");
    drop(held);

    // A silent connection within the caps is closed by the head timeout.
    let mut silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        let mut buf = [0u8; 16];
        tokio::io::AsyncReadExt::read(&mut silent, &mut buf).await
    })
    .await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
}

/// A client with a certificate for user `short-lived`, valid 3 s more, allowed `verb` on the
/// node's `subresource`.
fn short_lived_client(
    cluster: &Cluster,
    verb: &str,
    subresource: &str,
) -> support::client::TlsClient {
    cluster.api.allow("short-lived", verb, subresource);
    let cert = cluster
        .ca
        .client_cert_with(&["short-lived"], Some(Duration::from_secs(3)));
    support::client::TlsClient::new(cluster.ca.cert_path(), Some(&cert))
}

#[tokio::test]
async fn an_exec_stream_ends_when_its_client_certificate_expires() {
    use futures_util::StreamExt;
    let cluster = cluster(&[]).await;
    let client = short_lived_client(&cluster, "create", "proxy");
    let target = "/exec/team-a/web-0/app?command=sh&input=1&output=1";
    let (response, mut socket) = client
        .websocket(cluster.addr(), target, None, &["v5.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let started = Instant::now();
    socket.next().await.unwrap().unwrap();
    // The shell would go on for ever: the guard cuts it about a second after notAfter.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its certificate");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_on_a_kept_alive_and_a_resumed_connection() {
    let cluster = cluster(&[]).await;
    let client = short_lived_client(&cluster, "get", "metrics");

    // A kept-alive connection: served while the certificate is valid, closed at its expiry.
    let tls = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = support::client::request("GET", "/metrics", None);
    assert_eq!(
        sender.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );
    // A second connection now leaves a session to resume later.
    let (status, _, _) = client.get(cluster.addr(), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let closed = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(closed.is_ok(), "the connection outlived its certificate");
    assert!(cluster.limit_hits("certificate-expired").await >= 1);

    // A resumed session carries the certificate it was made with: refused all the same.
    let tls = client.connect(cluster.addr(), b"http/1.1").await;
    let outcome = match tls {
        Err(e) => format!("handshake refused: {e}"),
        Ok(tls) => {
            let resumed = tls.get_ref().1.handshake_kind();
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(connection);
            let request = support::client::request("GET", "/metrics", None);
            let status = sender.send_request(request).await.unwrap().status();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{resumed:?}");
            format!("{resumed:?}: {status}")
        }
    };
    eprintln!("after expiry: {outcome}");
}

#[tokio::test]
async fn a_resumed_session_is_refused_once_its_client_ca_has_expired() {
    // The client CA bundle: the cluster CA, and a CA that expires in 3 s whose leaf does not.
    let short = support::pki::Ca::valid_for("short-lived-ca", Some(Duration::from_secs(3)));
    let bundle = support::temp_dir("bundle").join("client-ca.crt");
    let cluster = Cluster::start(&[]).await;
    std::fs::write(
        &bundle,
        format!("{}{}", cluster.ca.cert_pem(), short.cert_pem()),
    )
    .unwrap();
    let mut argv = cluster.flags(&[]);
    argv.retain(|flag| !flag.starts_with("--client-ca-file="));
    argv.push(format!("--client-ca-file={}", bundle.display()));
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    cluster.api.allow("agent", "get", "metrics");
    let client = support::client::TlsClient::new(
        cluster.ca.cert_path(),
        Some(&short.client_cert("agent", &[])),
    );
    let (status, _, _) = client.get(guard.proxy_addr, "/metrics", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a full handshake while the CA is valid"
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    // The session made while the CA was valid resumes without the chain being verified by TLS.
    let tls = client.connect(guard.proxy_addr, b"http/1.1").await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = support::client::request("GET", "/metrics", None);
    assert_eq!(
        sender.send_request(request).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "the CA expired: the chain admits no one"
    );
    guard.stop().await;
}

#[tokio::test]
async fn of_two_common_names_the_last_is_the_user() {
    let cluster = cluster(&["--pod-scoped-authz"]).await;
    cluster.api.allow("bob", "create", "proxy");
    let cert = cluster
        .ca
        .client_cert_with(&["kube-apiserver-kubelet-client", "bob"], None);
    let client = support::client::TlsClient::new(cluster.ca.cert_path(), Some(&cert));
    let (status, _, body) = client
        .get(cluster.addr(), "/exec/default/web-0/web?command=id", None)
        .await;
    // bob is not the API server: its pod permission is checked, and it has none.
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let users: Vec<String> = cluster
        .api
        .access_reviews()
        .iter()
        .map(|r| r["spec"]["user"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !users.is_empty() && users.iter().all(|u| u == "bob"),
        "{users:?}"
    );
}

#[tokio::test]
async fn parameters_in_a_form_body_on_a_streaming_endpoint_are_refused_unforwarded() {
    let cluster = cluster(&[]).await;
    cluster.api.allow(USER, "create", "proxy");
    // The kubelet would run the body's `cmd`, not the query's that the audit would record.
    let mut request =
        support::client::request("POST", "/run/default/web-0/web?cmd=id", Some(TOKEN));
    *request.body_mut() = Full::new(Bytes::from_static(b"cmd=cat+/etc/shadow"));
    request.headers_mut().insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(cluster.kubelet.requests().is_empty(), "forwarded");
    // The same command in the query alone goes through.
    let request = support::client::request("POST", "/run/default/web-0/web?cmd=id", Some(TOKEN));
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn only_a_certificate_earns_the_pod_scope_exemption() {
    let cluster = cluster(&["--pod-scoped-authz"]).await;
    let name = "kube-apiserver-kubelet-client";
    cluster
        .api
        .add_token("t-impostor", name, "uid-impostor", &[]);
    cluster.api.allow(name, "create", "proxy");
    let run = "/run/default/web-0/web?cmd=id";
    let request = support::client::request("POST", run, Some("t-impostor"));
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a token user of that name"
    );

    let apiserver = cluster.client_with_cert(name, &[]);
    let request = support::client::request("POST", run, None);
    let response = apiserver.send(cluster.addr(), request).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the API server's certificate"
    );
}

#[tokio::test]
async fn a_bearer_token_subprotocol_never_reaches_the_kubelet() {
    let cluster = cluster(&[]).await;
    cluster.api.allow("admin", "create", "proxy");
    let admin = cluster.client_with_cert("admin", &[]);
    let secret = "base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu";
    let (response, _ws) = admin
        .websocket(
            cluster.addr(),
            "/exec/default/web-0/web?command=id&stdout=1",
            None,
            &[secret, "v5.channel.k8s.io", "v4.channel.k8s.io"],
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let seen = cluster.kubelet.requests();
    let offered: Vec<_> = seen[0]
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(offered, ["v5.channel.k8s.io, v4.channel.k8s.io"]);
}

#[tokio::test]
async fn forwarding_headers_are_not_passed_on_as_if_the_guard_vouched_for_them() {
    let cluster = cluster(&[]).await;
    let mut request = support::client::request("GET", "/metrics", Some(TOKEN));
    for (name, value) in [
        ("x-forwarded-for", "10.0.0.1"),
        ("x-forwarded-host", "apiserver"),
        ("forwarded", "for=10.0.0.1"),
        ("x-real-ip", "10.0.0.1"),
    ] {
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = &cluster.kubelet.requests()[0];
    for name in [
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the kubelet"
        );
    }
}

#[tokio::test]
async fn container_log_files_need_the_pods_log_permission_under_pod_scope() {
    let cluster = cluster(&["--pod-scoped-authz"]).await;
    cluster.api.allow(USER, "get", "log");
    cluster.api.allow_pod(USER, "get", "log", "team-a");
    let (allowed, _) = cluster
        .get("/logs/pods/team-a_web-0_6f1c/web/0.log", TOKEN)
        .await;
    assert_eq!(allowed, StatusCode::OK);
    let (refused, body) = cluster
        .get("/logs/pods/team-b_db-0_7a2d/db/0.log", TOKEN)
        .await;
    assert_eq!(refused, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("db-0"), "{body}");
    // The same files through the kubelet's links to them and through its node log query.
    let (linked, _) = cluster
        .get("/logs/containers/web-0_team-a_web-6f1c.log", TOKEN)
        .await;
    assert_eq!(linked, StatusCode::OK);
    for target in [
        "/logs/containers/db-0_team-b_db-7a2d.log",
        "/logs/?query=pods/team-b_db-0_7a2d/db/0.log",
    ] {
        let (refused, body) = cluster.get(target, TOKEN).await;
        assert_eq!(refused, StatusCode::FORBIDDEN, "{target}: {body}");
        assert!(body.contains("db-0"), "{target}: {body}");
    }
    // A file query the guard cannot read as the kubelet would is refused, not guessed at.
    let (escaped, _) = cluster
        .get("/logs/?query=pods%2Fteam-b_db-0_7a2d%2Fdb%2F0.log", TOKEN)
        .await;
    assert_eq!(escaped, StatusCode::BAD_REQUEST);
    // Node log files name no pod and need only nodes/log.
    let (node_log, _) = cluster.get("/logs/syslog", TOKEN).await;
    assert_eq!(node_log, StatusCode::OK);
}

#[tokio::test]
async fn a_removed_token_or_grant_stops_working_at_the_next_reload() {
    let cluster = Cluster::start(&[]).await;
    let dir = support::temp_dir("revocation");
    let tokens = dir.join("tokens.csv");
    let policy = dir.join("policy.yaml");
    let grant = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: scrape\nrules:\n- apiGroups: [\"\"]\n  resources: [nodes/metrics]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: scrape\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: scrape\nsubjects:\n- kind: User\n  name: alice\n  apiGroup: rbac.authorization.k8s.io\n";
    let unbound = grant.split("---").next().unwrap();
    std::fs::write(&tokens, "t-alice,alice,uid-alice\nt-bob,bob,uid-bob\n").unwrap();
    std::fs::write(&policy, grant).unwrap();
    let mut argv = cluster.flags(&["--tls-reload-interval=50ms"]);
    argv.retain(|flag| !flag.starts_with("--kubeconfig="));
    argv.push(format!("--token-auth-file={}", tokens.display()));
    argv.push(format!("--rbac-policy-file={}", policy.display()));
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    let client = cluster.client();
    let get = |token: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(guard.proxy_addr, "/metrics", Some(token))
                .await
                .0
        }
    };
    assert_eq!(get("t-alice").await, StatusCode::OK, "cached from now on");

    std::fs::write(&policy, unbound).unwrap();
    with_deadline("the grant is revoked", async {
        while get("t-alice").await != StatusCode::FORBIDDEN {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    std::fs::write(&policy, grant).unwrap();
    with_deadline("the grant is back", async {
        while get("t-alice").await != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    std::fs::write(&tokens, "t-bob,bob,uid-bob\n").unwrap();
    with_deadline("the token is revoked", async {
        while get("t-alice").await != StatusCode::UNAUTHORIZED {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_exec_keeps_its_audit_events_through_a_flood_of_unauthenticated_requests() {
    let receiver =
        support::audit_receiver::AuditReceiver::start(&support::pki::Ca::new("audit")).await;
    receiver.stall(true);
    let webhook = format!(
        "--audit-webhook-config-file={}",
        receiver.write_kubeconfig().display()
    );
    let cluster = cluster(&[
        &webhook,
        "--audit-webhook-batch-max-size=1",
        "--audit-queue-size=8",
    ])
    .await;
    cluster.api.allow("admin", "create", "proxy");
    let flood = cluster.client().with_source(attacker());
    for _ in 0..40 {
        let (status, _, _) = flood.get(cluster.addr(), "/metrics", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let admin = cluster.client_with_cert("admin", &[]);
    let (response, ws) = admin
        .websocket(
            cluster.addr(),
            "/exec/default/web-0/web?command=id&stdout=1",
            None,
            &["v5.channel.k8s.io"],
        )
        .await
        .unwrap();
    let audit_id = response.headers()["audit-id"].to_str().unwrap().to_owned();
    drop(ws);
    for _ in 0..40 {
        flood.get(cluster.addr(), "/metrics", None).await;
    }
    // Both of the exec's events are queued before the flood's are let through.
    let metrics = cluster.metrics().await;
    assert!(
        !metrics.contains(
            "kubelet_guard_audit_events_dropped_total{reason=\"reserved-for-authenticated\"} 0"
        ),
        "{metrics}"
    );
    receiver.stall(false);
    let stages = with_deadline("the exec's two events", async {
        loop {
            let stages: Vec<String> = receiver
                .batches()
                .iter()
                .flat_map(|batch| batch["items"].as_array().cloned().unwrap_or_default())
                .filter(|event| event["auditID"] == audit_id.as_str())
                .map(|event| event["stage"].as_str().unwrap_or_default().to_owned())
                .collect();
            if stages.len() == 2 {
                return stages;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(stages, ["ResponseStarted", "ResponseComplete"]);
    assert!(metrics.contains("kubelet_guard_audit_events_dropped_total{reason=\"queue-full\"} 0"));
}

#[tokio::test]
async fn a_spray_of_random_tokens_gets_a_bounded_number_of_token_reviews_at_once() {
    let cluster = cluster(&[]).await;
    cluster
        .api
        .allow("kube-apiserver-kubelet-client", "get", "metrics");
    cluster.api.set_delay(Duration::from_millis(1500));
    let before = cluster.api.requests().len();
    let arrived = || cluster.api.requests().len() - before;
    let client = cluster.client().with_source(attacker());
    let sprayed = 48;
    let answers: Vec<_> = (0..sprayed)
        .map(|n| {
            let (client, addr) = (client.clone(), cluster.addr());
            tokio::spawn(async move {
                let token = format!("random-{n}");
                let request = support::client::request("GET", "/metrics", Some(&token));
                client.send(addr, request).await.status()
            })
        })
        .collect();
    let turns = kubelet_guard::apiserver::MAX_IN_FLIGHT;
    with_deadline("the first turn of reviews", async {
        while arrived() < turns {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The rest of the spray waits; a caller already authenticated is not held back behind it.
    let api_server = cluster.client_with_cert("kube-apiserver-kubelet-client", &[]);
    let addr = cluster.addr();
    let scrape = tokio::spawn(async move { api_server.get(addr, "/metrics", None).await.0 });
    with_deadline("the API server's own review", async {
        while arrived() <= turns {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let next = &cluster.api.requests()[before + turns];
    assert!(
        next.target.contains("subjectaccessreviews"),
        "the next call is the authenticated caller's review, not the spray's: {}",
        next.target
    );
    assert_eq!(
        with_deadline("the scrape", scrape).await.unwrap(),
        StatusCode::OK
    );
    // The spray waits its turn within --apiserver-timeout and is reviewed, not refused.
    for answer in answers {
        let status = with_deadline("an answer", answer).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(arrived(), sprayed + 1);
}
