//! Callers may speak h2 (docs/kubelet-api.md section 2): they get the same answers as over HTTP/1.1,
//! the guard always talks HTTP/1.1 to the kubelet, and an HTTP/2 extended CONNECT (RFC 8441, a
//! WebSocket over h2), which the guard's h2 settings allow, is refused with 405 before any review
//! and never reaches the kubelet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::ext::Protocol;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, oneshot};

use support::client::TlsClient;
use support::guard::Cluster;
use support::with_deadline;

const TOKEN: &str = "t-agent";
const USER: &str = "system:serviceaccount:kube-system:node-agent";

/// The agent may `get` `nodes/pods` and `nodes/stats`, nothing else.
async fn cluster() -> Cluster {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, "get", "pods");
    cluster.api.allow(USER, "get", "stats");
    cluster
}

/// What a caller can observe of one answer.
#[derive(Debug, PartialEq)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

async fn ask(client: &TlsClient, cluster: &Cluster, method: &str, path: &str) -> (Answer, Version) {
    let req = support::client::request(method, path, Some(TOKEN));
    let response = with_deadline("response", client.send(cluster.addr(), req)).await;
    let version = response.version();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let answer = Answer {
        status: parts.status,
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    (answer, version)
}

/// An h2 connection to the guard, and whether the guard's SETTINGS enable extended CONNECT.
async fn h2_connection(cluster: &Cluster) -> (SendRequest<Full<Bytes>>, bool) {
    let tls = cluster
        .client()
        .connect(cluster.addr(), b"h2")
        .await
        .unwrap();
    let (mut sender, mut connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    // Drive the connection; answer questions about the peer's settings between steps.
    let (ask, mut asked) = mpsc::unbounded_channel::<oneshot::Sender<bool>>();
    tokio::spawn(std::future::poll_fn(move |cx| {
        while let Poll::Ready(Some(reply)) = asked.poll_recv(cx) {
            let _ = reply.send(connection.is_extended_connect_protocol_enabled());
        }
        Pin::new(&mut connection).poll(cx)
    }));
    // A server's SETTINGS precede its first response: after one answer they have been applied.
    let mut warmup = support::client::request("GET", &authority_uri(cluster, "/healthz"), None);
    *warmup.version_mut() = Version::HTTP_2;
    let response = with_deadline("warm-up", sender.send_request(warmup))
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "no credentials, no review"
    );
    let (reply, enabled) = oneshot::channel();
    ask.send(reply).unwrap();
    (sender, with_deadline("settings", enabled).await.unwrap())
}

fn authority_uri(cluster: &Cluster, path: &str) -> String {
    format!("https://localhost:{}{path}", cluster.addr().port())
}

#[tokio::test]
async fn h2_callers_get_the_same_answers_as_http1_callers() {
    let cluster = cluster().await;
    let h1 = cluster.client();
    let h2 = cluster.client().http2();
    let cases = [
        ("GET", "/pods"),
        ("GET", "/stats/summary?only_cpu_and_memory=true"),
        ("GET", "/configz"),
        ("POST", "/pods"),
        ("GET", "/exec/default/web-0/web?command=id"),
        ("GET", "/stats/%2E%2E/exec/default/web-0/web"),
        ("GET", "/stats/./summary"),
        ("OPTIONS", "/pods"),
        ("DELETE", "/metrics/slis"),
    ];
    for (method, path) in cases {
        let before = cluster.kubelet.count();
        let (over_h1, v1) = ask(&h1, &cluster, method, path).await;
        let forwarded_h1 = cluster.kubelet.count() - before;
        let (over_h2, v2) = ask(&h2, &cluster, method, path).await;
        let forwarded_h2 = cluster.kubelet.count() - before - forwarded_h1;
        assert_eq!((v1, v2), (Version::HTTP_11, Version::HTTP_2));
        assert_eq!(over_h2, over_h1, "{method} {path}");
        assert_eq!(forwarded_h2, forwarded_h1, "{method} {path}");
    }
    let statuses: Vec<_> = cluster
        .kubelet
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        statuses,
        [
            "/pods",
            "/pods",
            "/stats/summary?only_cpu_and_memory=true",
            "/stats/summary?only_cpu_and_memory=true"
        ],
        "only the allowed reads were forwarded, once per caller"
    );
}

#[tokio::test]
async fn the_guard_speaks_http1_to_the_kubelet_for_h2_callers() {
    let cluster = cluster().await;
    let (answer, version) = ask(&cluster.client().http2(), &cluster, "GET", "/pods").await;
    assert_eq!((answer.status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(
        answer.body.contains("\"kind\":\"PodList\""),
        "{}",
        answer.body
    );
    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].target, "/pods");
    assert_eq!(seen[0].client_cn.as_deref(), Some("kubelet-guard"));

    let (answer, _) = ask(&cluster.client().http2(), &cluster, "GET", "/configz").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.body,
        format!(
            "Forbidden (user={USER}, verb=get, resource=nodes, subresource(s)=[configz proxy])\n"
        )
    );
    assert_eq!(cluster.kubelet.count(), 1);
}

#[tokio::test]
async fn an_h2_extended_connect_is_refused_without_a_review() {
    let cluster = cluster().await;
    // Even a caller allowed everything: the kubelet cannot serve a WebSocket over h2.
    cluster.api.allow(USER, "*", "*");
    let (mut sender, enabled) = h2_connection(&cluster).await;
    assert!(
        enabled,
        "the guard announces SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    let mut connect = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(authority_uri(
            &cluster,
            "/exec/default/web-0/web?command=sh&stdin=1&stdout=1",
        ))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "v5.channel.k8s.io")
        .body(Full::new(Bytes::new()))
        .unwrap();
    connect
        .extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let response = with_deadline("CONNECT", sender.send_request(connect))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.ends_with('\n') && body.lines().count() == 1,
        "{body:?}"
    );
    assert!(body.contains("CONNECT"), "says what was refused: {body:?}");

    assert!(cluster.api.token_reviews().is_empty(), "no token review");
    assert!(cluster.api.access_reviews().is_empty(), "no access review");
    assert_eq!(cluster.kubelet.count(), 0, "the kubelet is untouched");
}

/// An h2 request's URI carries its `:authority` (hyper builds it from the pseudo-headers), but
/// its event records the path and query, and the pod and command it names, as over HTTP/1.1.
#[tokio::test]
async fn an_h2_requests_event_records_its_path_pod_and_command() {
    let log = support::audit_log::AuditLog::new();
    let cluster = Cluster::start(&[log.flag()]).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, "create", "proxy");
    let run = "/run/default/web-0/web?cmd=id";
    let (answer, version) = ask(&cluster.client().http2(), &cluster, "POST", run).await;
    assert_eq!((answer.status, version), (StatusCode::OK, Version::HTTP_2));
    let event = &log.events(1).await[0];
    assert_eq!(event["requestURI"], run);
    let annotations = &event["annotations"];
    assert_eq!(annotations["kubelet-guard.io/pod-namespace"], "default");
    assert_eq!(annotations["kubelet-guard.io/pod-name"], "web-0");
    assert_eq!(annotations["kubelet-guard.io/container"], "web");
    assert_eq!(annotations["kubelet-guard.io/command"], "id");
}
