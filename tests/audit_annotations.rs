//! Audit events a SIEM can use without parsing URLs (issue 14): the target pod, what was run, how
//! the caller authenticated and how an upgraded stream ended, each as a `kubelet-guard.io/`
//! annotation of the events written for real requests through the guard.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::{Duration, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use support::apiserver::TokenIdentity;
use support::audit_log::AuditLog;
use support::guard::Cluster;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "t-debugger";
const USER: &str = "system:serviceaccount:ops:debugger";

/// A guard writing `log`, with `extra` flags, whose token caller may do anything on the node.
async fn cluster(log: &AuditLog, extra: &[&str]) -> Cluster {
    let mut flags = vec![log.flag()];
    flags.extend_from_slice(extra);
    let cluster = Cluster::start(&flags).await;
    cluster.api.add_token(TOKEN, USER, "uid-7", &["ops"]);
    cluster.api.allow(USER, "*", "*");
    cluster
}

/// The first event whose `requestURI` is `target`, at `stage`.
async fn event(log: &AuditLog, target: &str, stage: &str) -> Value {
    log.find(&format!("the {stage} event of {target}"), |event| {
        event["requestURI"] == target && event["stage"] == stage
    })
    .await
}

/// The annotations of `event` whose names start with `kubelet-guard.io/` and are in `names`.
fn annotations(event: &Value, names: &[&str]) -> Value {
    let all = event["annotations"].as_object().unwrap();
    let picked: serde_json::Map<String, Value> = names
        .iter()
        .map(|name| format!("kubelet-guard.io/{name}"))
        .filter_map(|name| all.get(&name).map(|value| (name, value.clone())))
        .collect();
    Value::Object(picked)
}

const POD: [&str; 4] = ["pod-namespace", "pod-name", "pod-uid", "container"];

#[tokio::test]
async fn the_target_pod_is_the_one_the_pod_check_reads() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--pod-scoped-authz"]).await;
    cluster.api.allow_pod(USER, "create", "exec", "team-a");
    let target = "/exec/team-a/web-0/6f1c-0001/app?command=id&output=1";
    let _socket = cluster.exec_websocket(target, TOKEN).await;

    let started = event(&log, target, "ResponseStarted").await;
    assert_eq!(
        annotations(&started, &POD),
        json!({
            "kubelet-guard.io/pod-namespace": "team-a",
            "kubelet-guard.io/pod-name": "web-0",
            "kubelet-guard.io/pod-uid": "6f1c-0001",
            "kubelet-guard.io/container": "app",
        })
    );
    assert_eq!(
        started["annotations"]["kubelet-guard.io/pod-check"], "create pods/exec team-a/web-0=allow",
        "the pod the check allowed is the pod the event names"
    );
}

#[tokio::test]
async fn a_refusal_by_the_pod_check_is_a_forbid_with_its_reason() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--pod-scoped-authz"]).await;
    // Allowed every node subresource, but no pod's log in team-b.
    let logs = "/containerLogs/team-b/web-0/app";
    assert_eq!(cluster.get(logs, TOKEN).await.0, StatusCode::FORBIDDEN);

    let refused = event(&log, logs, "ResponseComplete").await;
    let annotations = &refused["annotations"];
    assert_eq!(annotations["kubelet-guard.io/checks"], "proxy=allow");
    assert_eq!(
        annotations["kubelet-guard.io/pod-check"],
        "get pods/log team-b/web-0=deny"
    );
    assert_eq!(
        annotations["authorization.k8s.io/decision"], "forbid",
        "a SIEM reading the decision must see the refusal"
    );
    assert_eq!(
        annotations["authorization.k8s.io/reason"],
        "no rule of the double matched"
    );
}

#[tokio::test]
async fn a_pod_check_that_never_decided_is_not_recorded_as_an_allow() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--pod-scoped-authz", "--apiserver-timeout=1s"]).await;
    cluster.api.allow_pod(USER, "get", "log", "team-a");
    // The token and the node-level check are cached by a first read; then the API server fails.
    let first = "/containerLogs/team-a/web-0/app";
    assert_eq!(cluster.get(first, TOKEN).await.0, StatusCode::OK);
    cluster.api.fail_with(Some(500));
    let logs = "/containerLogs/team-a/web-1/app";
    assert_eq!(
        cluster.get(logs, TOKEN).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    let refused = event(&log, logs, "ResponseComplete").await;
    let annotations = &refused["annotations"];
    assert_eq!(annotations["kubelet-guard.io/checks"], "proxy=allow");
    assert_eq!(
        annotations["authorization.k8s.io/decision"], "forbid",
        "never forwarded: the pod review failed"
    );
    let reason = annotations["authorization.k8s.io/reason"].as_str().unwrap();
    assert!(reason.starts_with("Authorization error"), "{reason}");
}

#[tokio::test]
async fn a_path_without_a_pod_uid_names_no_uid() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let logs = "/containerLogs/team-a/web-0/app?tailLines=10";
    assert_eq!(cluster.get(logs, TOKEN).await.0, StatusCode::OK);
    let exec = "/exec/team-a/web-0/app?command=id&output=1";
    let _socket = cluster.exec_websocket(exec, TOKEN).await;
    assert_eq!(cluster.get("/metrics", TOKEN).await.0, StatusCode::OK);

    let expected = json!({
        "kubelet-guard.io/pod-namespace": "team-a",
        "kubelet-guard.io/pod-name": "web-0",
        "kubelet-guard.io/container": "app",
    });
    let read = event(&log, logs, "ResponseComplete").await;
    assert_eq!(annotations(&read, &POD), expected);
    let started = event(&log, exec, "ResponseStarted").await;
    assert_eq!(annotations(&started, &POD), expected);
    let scrape = event(&log, "/metrics", "ResponseComplete").await;
    assert_eq!(
        annotations(&scrape, &POD),
        json!({}),
        "a scrape names no pod"
    );
}

#[tokio::test]
async fn a_container_log_file_names_its_pod_from_the_directory() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let file = "/logs/pods/team-a_web-0_6f1c-0001/app/0.log";
    assert_eq!(cluster.get(file, TOKEN).await.0, StatusCode::OK);
    let read = event(&log, file, "ResponseComplete").await;
    assert_eq!(
        annotations(&read, &POD),
        json!({
            "kubelet-guard.io/pod-namespace": "team-a",
            "kubelet-guard.io/pod-name": "web-0",
            "kubelet-guard.io/pod-uid": "6f1c-0001",
            "kubelet-guard.io/container": "app",
        })
    );
}

#[tokio::test]
async fn the_command_is_decoded_and_quoted_as_a_shell_shows_it() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    // `+` and `%20` are spaces, `%22` and `%27` quotes, `%25` a percent sign, an empty argument.
    let exec = "/exec/team-a/web-0/app?command=sh&command=-c\
                &command=echo+%22it%27s+here%22%20%3E%20/tmp/out%20%26%26%20cat%20/tmp/out\
                &command=&command=100%25&output=1";
    let _socket = cluster.exec_websocket(exec, TOKEN).await;
    // /run reads its first `cmd` and splits it at each space, as the kubelet does.
    let run = "/run/team-a/web-0/app?cmd=ls+-l%20%2Fvar%2Flog";
    let response = cluster
        .client()
        .send(
            cluster.addr(),
            support::client::request("POST", run, Some(TOKEN)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let started = event(&log, exec, "ResponseStarted").await;
    assert_eq!(
        started["annotations"]["kubelet-guard.io/command"],
        r#"sh -c 'echo "it'\''s here" > /tmp/out && cat /tmp/out' '' 100%"#
    );
    assert_eq!(
        started["requestURI"], exec,
        "without a credential, the URI is recorded as sent"
    );
    let ran = event(&log, run, "ResponseComplete").await;
    assert_eq!(
        ran["annotations"]["kubelet-guard.io/command"],
        "ls -l /var/log"
    );
}

#[tokio::test]
async fn the_requested_streams_are_recorded_for_exec_and_attach() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let exec = "/exec/team-a/web-0/app?command=sh&input=1&output=1&tty=1";
    let _exec = cluster.exec_websocket(exec, TOKEN).await;
    let attach = "/attach/team-a/web-0/app?output=1&error=1";
    let _attach = cluster.exec_websocket(attach, TOKEN).await;

    let streams = ["stdin", "stdout", "stderr", "tty"];
    let started = event(&log, exec, "ResponseStarted").await;
    assert_eq!(
        annotations(&started, &streams),
        json!({
            "kubelet-guard.io/stdin": "true",
            "kubelet-guard.io/stdout": "true",
            "kubelet-guard.io/stderr": "false",
            "kubelet-guard.io/tty": "true",
        })
    );
    let attached = event(&log, attach, "ResponseStarted").await;
    assert_eq!(
        annotations(&attached, &streams),
        json!({
            "kubelet-guard.io/stdin": "false",
            "kubelet-guard.io/stdout": "true",
            "kubelet-guard.io/stderr": "true",
            "kubelet-guard.io/tty": "false",
        })
    );
    assert!(
        attached["annotations"]
            .get("kubelet-guard.io/command")
            .is_none(),
        "an attach runs nothing"
    );
}

#[tokio::test]
async fn a_port_forward_records_its_ports() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let forward = "/portForward/team-a/web-0?port=8080,9090&port=53";
    let _socket = cluster.exec_websocket(forward, TOKEN).await;
    let started = event(&log, forward, "ResponseStarted").await;
    assert_eq!(
        started["annotations"]["kubelet-guard.io/ports"],
        "8080,9090,53"
    );
    assert_eq!(
        annotations(&started, &POD),
        json!({
            "kubelet-guard.io/pod-namespace": "team-a",
            "kubelet-guard.io/pod-name": "web-0",
        })
    );
}

#[tokio::test]
async fn the_authentication_is_x509_token_or_anonymous() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--anonymous-auth"]).await;
    cluster.api.allow("prometheus", "get", "metrics");
    cluster
        .api
        .allow("system:unauthenticated", "get", "healthz");
    let certified = cluster.client_with_cert("prometheus", &["monitoring"]);
    assert_eq!(
        certified.get(cluster.addr(), "/metrics", None).await.0,
        StatusCode::OK
    );
    assert_eq!(cluster.get("/pods", TOKEN).await.0, StatusCode::OK);
    assert_eq!(
        cluster
            .client()
            .get(cluster.addr(), "/healthz", None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        cluster.get("/stats/summary", "t-unknown").await.0,
        StatusCode::UNAUTHORIZED
    );
    // A token whose review names the anonymous user is still a token.
    cluster
        .api
        .add_token("t-named-anonymous", "system:anonymous", "", &[]);
    cluster.api.allow("system:anonymous", "get", "configz");
    assert_eq!(
        cluster.get("/configz", "t-named-anonymous").await.0,
        StatusCode::OK
    );

    let authentication =
        |event: &Value| event["annotations"]["kubelet-guard.io/authentication"].clone();
    let scrape = event(&log, "/metrics", "ResponseComplete").await;
    assert_eq!(authentication(&scrape), "x509");
    let listed = event(&log, "/pods", "ResponseComplete").await;
    assert_eq!(authentication(&listed), "token");
    let probed = event(&log, "/healthz", "ResponseComplete").await;
    assert_eq!(authentication(&probed), "anonymous");
    let named = event(&log, "/configz", "ResponseComplete").await;
    assert_eq!(authentication(&named), "token");
    let refused = event(&log, "/stats/summary", "ResponseComplete").await;
    assert_eq!(
        authentication(&refused),
        Value::Null,
        "a caller that did not authenticate has no method"
    );
    for event in [&listed, &probed] {
        assert_eq!(
            annotations(event, &["client-certificate-issuer"]),
            json!({}),
            "no certificate, no certificate details"
        );
    }
}

#[tokio::test]
async fn a_certificate_caller_is_named_by_issuer_serial_and_expiry() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    cluster.api.allow("prometheus", "get", "metrics");
    let certificate = cluster.ca.client_cert("prometheus", &["monitoring"]);
    let caller = support::client::TlsClient::new(cluster.ca.cert_path(), Some(&certificate));
    assert_eq!(
        caller.get(cluster.addr(), "/metrics", None).await.0,
        StatusCode::OK
    );

    let der = certificate.cert_der();
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let expiry = UNIX_EPOCH
        + Duration::from_secs(parsed.validity().not_after.timestamp().try_into().unwrap());
    let scrape = event(&log, "/metrics", "ResponseComplete").await;
    assert_eq!(
        annotations(
            &scrape,
            &[
                "authentication",
                "client-certificate-issuer",
                "client-certificate-serial",
                "client-certificate-expiry"
            ]
        ),
        json!({
            "kubelet-guard.io/authentication": "x509",
            "kubelet-guard.io/client-certificate-issuer": "CN=cluster",
            "kubelet-guard.io/client-certificate-serial": format!("{:x}", parsed.tbs_certificate.serial),
            "kubelet-guard.io/client-certificate-expiry": humantime::format_rfc3339_seconds(expiry).to_string(),
        })
    );
    let fingerprint: String = ring::digest::digest(&ring::digest::SHA256, &der)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(
        scrape["user"],
        json!({
            "username": "prometheus",
            "groups": ["monitoring", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/credential-id": [format!("X509SHA256={fingerprint}")]},
        }),
        "as kube-apiserver's x509 authenticator names the credential"
    );
}

#[tokio::test]
async fn a_bound_tokens_credential_id_node_and_pod_come_through_in_user_extra() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let identity = TokenIdentity::bound_service_account(
        "system:serviceaccount:monitoring:prometheus",
        "prometheus-0",
    );
    let extra = identity.extra.clone();
    cluster.api.add_token_with("t-bound", identity);
    cluster
        .api
        .allow("system:serviceaccounts", "get", "metrics");
    assert_eq!(cluster.get("/metrics", "t-bound").await.0, StatusCode::OK);

    let scrape = event(&log, "/metrics", "ResponseComplete").await;
    assert_eq!(scrape["user"]["extra"], json!(extra));
    assert_eq!(
        scrape["annotations"]["kubelet-guard.io/authentication"],
        "token"
    );
    let reviewed = &cluster.api.access_reviews()[0]["spec"]["extra"];
    assert_eq!(
        *reviewed,
        json!(extra),
        "the same extra went into the access review"
    );
}

#[tokio::test]
async fn a_stream_ends_as_the_caller_or_the_kubelet_closed_it() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let hung_up = "/exec/team-a/web-0/app?command=top&output=1";
    let socket = cluster.exec_websocket(hung_up, TOKEN).await;
    drop(socket);
    let ended = event(&log, hung_up, "ResponseComplete").await;
    assert_eq!(
        ended["annotations"]["kubelet-guard.io/stream-end"],
        "caller-closed"
    );

    // After a close handshake the server closes first (RFC 6455 section 7.1.1): here the kubelet.
    let finished = "/exec/team-a/web-0/app?command=true&output=1";
    let mut socket = cluster.exec_websocket(finished, TOKEN).await;
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    let ended = event(&log, finished, "ResponseComplete").await;
    assert_eq!(
        ended["annotations"]["kubelet-guard.io/stream-end"],
        "kubelet-closed"
    );
    drop(socket);
}

#[tokio::test]
async fn a_caller_that_keeps_its_end_of_a_finished_stream_does_not_keep_the_stream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let log = AuditLog::new();
    let cluster = cluster(&log, &[]).await;
    let target = "/exec/team-a/web-0/app?command=true&output=1";
    let mut socket = cluster.exec_websocket(target, TOKEN).await;
    // A masked close frame written under the WebSocket library, which would otherwise close the
    // connection itself: the kubelet answers and closes, the caller never closes, never sends.
    let tls = socket.get_mut();
    tls.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await.unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest).await.unwrap();
    assert_eq!(
        rest.first(),
        Some(&0x88),
        "the kubelet's close frame, then EOF"
    );
    let ended = event(&log, target, "ResponseComplete").await;
    assert_eq!(
        ended["annotations"]["kubelet-guard.io/stream-end"],
        "kubelet-closed"
    );
    drop(socket);
}

/// A port-forward through `cluster` whose caller writes without end: the kubelet double echoes
/// every byte, so the guard always has something to send back. Returns what the caller reads.
async fn flooded(
    cluster: &Cluster,
    target: &str,
) -> (
    tokio::io::ReadHalf<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let (status, _, upgraded) = cluster
        .client()
        .spdy(cluster.addr(), target, Some(TOKEN), &["portforward.k8s.io"])
        .await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let (reader, mut writer) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded.unwrap()));
    let flood = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        while writer.write_all(&chunk).await.is_ok() {}
    });
    (reader, flood)
}

#[tokio::test]
async fn a_stream_whose_caller_reads_nothing_is_closed_after_the_unread_timeout() {
    use tokio::io::AsyncReadExt;
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--stream-unread-timeout=2s"]).await;
    // A quiet stream (a shell waiting for a command) owes the caller nothing: it stays open.
    let quiet = "/exec/team-a/web-0/app?command=sh&input=1&output=1";
    let mut shell = cluster.exec_websocket(quiet, TOKEN).await;

    // Two callers that never stop sending. One reads nothing back. The other reads 128 KiB every
    // eighth of a second, far less than the guard could send, so the guard's writes to it wait
    // for seconds at a time; it still keeps its stream for three such timeouts.
    let (slow, never) = ("/portForward/team-a/web-0", "/portForward/team-a/web-1");
    let started = tokio::time::Instant::now();
    let (mut reader, slow_flood) = flooded(&cluster, slow).await;
    let (_unread, never_flood) = flooded(&cluster, never).await;
    let reading = tokio::spawn(async move {
        let mut chunk = vec![0u8; 128 * 1024];
        loop {
            tokio::time::sleep(Duration::from_millis(125)).await;
            reader.read_exact(&mut chunk).await.unwrap();
        }
    });
    let cut = event(&log, never, "ResponseComplete").await;
    assert_eq!(
        cut["annotations"]["kubelet-guard.io/stream-end"],
        "caller-unread"
    );
    assert_eq!(cluster.limit_hits("stream-unread").await, 1);
    tokio::time::sleep_until(started + Duration::from_secs(6)).await;
    assert!(!reading.is_finished(), "the slow reader still reads");
    reading.abort();
    slow_flood.abort();
    never_flood.abort();
    let ended = event(&log, slow, "ResponseComplete").await;
    assert_eq!(
        ended["annotations"]["kubelet-guard.io/stream-end"], "caller-closed",
        "open until its caller went"
    );

    shell.send(Message::binary(b"\0ls".to_vec())).await.unwrap();
    let echoed = shell.next().await.unwrap().unwrap();
    assert_eq!(
        echoed.into_data().as_ref(),
        b"\x01ls",
        "the quiet stream is open after the others ended"
    );
}

#[tokio::test]
async fn a_stream_cut_at_shutdown_ends_as_shutdown_and_is_still_written() {
    let log = AuditLog::new();
    let cluster = cluster(&log, &["--shutdown-grace-period=200ms"]).await;
    let target = "/exec/team-a/web-0/app?command=sh&input=1&output=1";
    let mut socket = cluster.exec_websocket(target, TOKEN).await;
    socket
        .send(Message::binary(b"\x00still here\n".to_vec()))
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();

    support::with_deadline("the guard stops", cluster.guard.stop()).await;
    let text = log.text();
    let closed: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["stage"] == "ResponseComplete")
        .collect();
    assert_eq!(closed.len(), 1, "written before the guard stopped:\n{text}");
    assert_eq!(
        closed[0]["annotations"]["kubelet-guard.io/stream-end"],
        "shutdown"
    );
}
