//! Upgrades need `create` (docs/kubelet-api.md section 2): a WebSocket or SPDY handshake to `exec`,
//! `attach` or `portForward` from a caller with only `get` on `nodes/proxy` (the grant many Helm
//! charts hand out) is refused with the kubelet's 403 and never reaches the kubelet; with `create`
//! the kubelet's 101 and the stream behind it are relayed unchanged. Any `Upgrade` or
//! `Connection: upgrade` asks for `create` whatever the path, and so does any request to a
//! streaming endpoint whatever its method.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use support::guard::Cluster;
use support::kubelet::{EXEC_GREETING, SPDY_PROTOCOLS, WEBSOCKET_PROTOCOLS};
use support::with_deadline;

/// Holds `get` on `nodes/proxy` only.
const READER: (&str, &str) = ("t-reader", "system:serviceaccount:monitoring:chart");
/// Holds `create` on `nodes/proxy`.
const RUNNER: (&str, &str) = ("t-runner", "system:serviceaccount:ops:debugger");

/// One target per upgrade endpoint, as kubectl sends them.
const STREAMS: [&str; 3] = [
    "/exec/default/web-0/web?command=sh&stdin=1&stdout=1&tty=1",
    "/attach/default/web-0/web?stdin=1&stdout=1&stderr=1",
    "/portForward/default/web-0?ports=8080",
];

/// A guard whose denials are not cached, so every refused request shows its own review.
async fn cluster() -> Cluster {
    let cluster = Cluster::start(&["--authorization-webhook-cache-unauthorized-ttl=0s"]).await;
    for ((token, user), verb) in [(READER, "get"), (RUNNER, "create")] {
        cluster.api.add_token(token, user, "uid", &[]);
        cluster.api.allow(user, verb, "proxy");
    }
    cluster
}

/// The kubelet's 403 body.
fn forbidden(user: &str, verb: &str, subresources: &str) -> String {
    format!(
        "Forbidden (user={user}, verb={verb}, resource=nodes, subresource(s)=[{subresources}])\n"
    )
}

/// The (verb, subresource) of every access review, in order.
fn reviewed(cluster: &Cluster) -> Vec<(String, String)> {
    let attributes = |r: &serde_json::Value| {
        let a = &r["spec"]["resourceAttributes"];
        let field = |name: &str| a[name].as_str().unwrap().to_owned();
        (field("verb"), field("subresource"))
    };
    cluster
        .api
        .access_reviews()
        .iter()
        .map(attributes)
        .collect()
}

fn repeated(verb: &str, subresource: &str, n: usize) -> Vec<(String, String)> {
    vec![(verb.to_owned(), subresource.to_owned()); n]
}

/// A request with a bearer token and extra headers.
fn request(
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut req = support::client::request(method, path, Some(token));
    for (name, value) in headers {
        let name = header::HeaderName::from_bytes(name.as_bytes()).unwrap();
        req.headers_mut()
            .append(name, HeaderValue::from_str(value).unwrap());
    }
    req
}

/// An RFC 6455 opening handshake (as `client.websocket` sends it), for reading a refusal's body.
fn websocket_handshake(path: &str, token: &str) -> Request<Full<Bytes>> {
    let protocols = WEBSOCKET_PROTOCOLS.join(", ");
    request(
        "GET",
        path,
        token,
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", &protocols),
        ],
    )
}

/// A SPDY/3.1 upgrade (as `client.spdy` sends it), for reading a refusal's body.
fn spdy_handshake(path: &str, token: &str) -> Request<Full<Bytes>> {
    let mut headers = vec![("connection", "Upgrade"), ("upgrade", "SPDY/3.1")];
    headers.extend(SPDY_PROTOCOLS.map(|p| ("x-stream-protocol-version", p)));
    request("POST", path, token, &headers)
}

/// Sends `req` on a fresh connection and returns status and body text.
async fn exchange(cluster: &Cluster, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let response = with_deadline("request", cluster.client().send(cluster.addr(), req)).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The answer to raw HTTP/1.1 request bytes: status code and body text.
async fn raw(cluster: &Cluster, request: &str) -> (u16, String) {
    let answer = cluster
        .client()
        .raw(cluster.addr(), request.as_bytes())
        .await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[tokio::test]
async fn a_get_grant_on_nodes_proxy_opens_no_stream() {
    let cluster = cluster().await;
    let (token, user) = READER;
    let expected = forbidden(user, "create", "proxy");
    for path in STREAMS {
        for (kind, handshake) in [
            ("websocket", websocket_handshake(path, token)),
            ("spdy", spdy_handshake(path, token)),
        ] {
            let (status, body) = exchange(&cluster, handshake).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{kind} {path}: {body}");
            assert_eq!(body, expected, "{kind} {path}");
        }
    }
    assert_eq!(
        cluster.kubelet.count(),
        0,
        "no handshake reaches the kubelet"
    );
    assert_eq!(reviewed(&cluster), repeated("create", "proxy", 6));
}

#[tokio::test]
async fn a_create_grant_relays_websocket_handshakes_and_frames_unchanged() {
    let cluster = cluster().await;
    for (n, path) in STREAMS.into_iter().enumerate() {
        let client = cluster.client();
        let connect = client.websocket(cluster.addr(), path, Some(RUNNER.0), &WEBSOCKET_PROTOCOLS);
        let (response, mut ws) = with_deadline("handshake", connect).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

        let seen = &cluster.kubelet.requests()[n];
        assert_eq!((&seen.method, seen.target.as_str()), (&Method::GET, path));
        assert_eq!(seen.headers["upgrade"], "websocket");
        assert_eq!(
            seen.headers["sec-websocket-protocol"],
            WEBSOCKET_PROTOCOLS.join(", ")
        );
        assert!(seen.headers.get("authorization").is_none());
        assert_eq!(seen.client_cn.as_deref(), Some("kubelet-guard"));
        let accept = derive_accept_key(seen.headers["sec-websocket-key"].as_bytes());
        assert_eq!(response.headers()["sec-websocket-accept"], accept.as_str());
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "v5.channel.k8s.io"
        );

        let greeting = with_deadline("greeting", ws.next()).await.unwrap().unwrap();
        assert_eq!(greeting.into_data(), [&[1u8][..], EXEC_GREETING].concat());
        ws.send(Message::binary(b"\0echo ok\n".to_vec()))
            .await
            .unwrap();
        let echo = with_deadline("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echo.into_data().as_ref(), b"\x01echo ok\n");
        ws.close(None).await.unwrap();
        let closed = with_deadline("close", async {
            while let Some(Ok(message)) = ws.next().await {
                assert!(message.is_close(), "only the close reply remains");
            }
        });
        closed.await;
        assert_eq!(cluster.kubelet.upgrades_completed(), n + 1, "{path}");
    }
    assert!(reviewed(&cluster).iter().all(|(verb, _)| verb == "create"));
}

#[tokio::test]
async fn a_create_grant_relays_spdy_handshakes_and_bytes_unchanged() {
    let cluster = cluster().await;
    for (n, path) in STREAMS.into_iter().enumerate() {
        let client = cluster.client();
        let handshake = client.spdy(cluster.addr(), path, Some(RUNNER.0), &SPDY_PROTOCOLS);
        let (status, headers, upgraded) = with_deadline("handshake", handshake).await;
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS, "{path}");
        assert_eq!(headers["x-stream-protocol-version"], "v4.channel.k8s.io");
        assert_eq!(headers["upgrade"], "SPDY/3.1");

        let seen = &cluster.kubelet.requests()[n];
        assert_eq!((&seen.method, seen.target.as_str()), (&Method::POST, path));
        let offered: Vec<_> = seen
            .headers
            .get_all("x-stream-protocol-version")
            .iter()
            .collect();
        assert_eq!(offered, SPDY_PROTOCOLS, "every offer, in order");

        let mut io = TokioIo::new(upgraded.unwrap());
        let frame = b"\x80\x03\x00\x01\x00\x00\x00\x0asyn stream";
        io.write_all(frame).await.unwrap();
        let mut echo = vec![0u8; frame.len()];
        with_deadline("echo", io.read_exact(&mut echo))
            .await
            .unwrap();
        assert_eq!(echo, frame);
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        with_deadline("kubelet closes", io.read_to_end(&mut rest))
            .await
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(cluster.kubelet.upgrades_completed(), n + 1, "{path}");
    }
    assert!(reviewed(&cluster).iter().all(|(verb, _)| verb == "create"));
}

#[tokio::test]
async fn an_upgrade_on_any_path_needs_create() {
    let cluster = cluster().await;
    let (token, user) = ("t-scraper", "system:serviceaccount:monitoring:prometheus");
    cluster.api.add_token(token, user, "uid", &[]);
    cluster.api.allow(user, "get", "metrics");
    let upgrade = || {
        let headers = [("connection", "Upgrade"), ("upgrade", "websocket")];
        request("GET", "/metrics", token, &headers)
    };

    let (status, body) = exchange(&cluster, upgrade()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, forbidden(user, "create", "metrics"));
    assert_eq!(cluster.kubelet.count(), 0);
    assert_eq!(reviewed(&cluster), repeated("create", "metrics", 1));

    cluster.api.allow(user, "create", "metrics");
    let (status, body) = exchange(&cluster, upgrade()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the kubelet declines to switch: {body}"
    );
    assert!(body.contains("kubelet_running_pods"), "{body}");
    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/metrics");
    assert_eq!(seen[0].headers["upgrade"], "websocket");
    assert_eq!(reviewed(&cluster), repeated("create", "metrics", 2));
}

#[tokio::test]
async fn either_upgrade_header_alone_asks_for_an_upgrade() {
    let cluster = cluster().await;
    let (token, user) = ("t-viewer", "system:serviceaccount:ops:viewer");
    cluster.api.add_token(token, user, "uid", &[]);
    cluster.api.allow(user, "get", "*");
    for signal in ["Upgrade: websocket", "Connection: upgrade", "Upgrade: h2c"] {
        let request = format!(
            "GET /pods HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n{signal}\r\n\r\n"
        );
        let (status, body) = raw(&cluster, &request).await;
        assert_eq!(status, 403, "{signal}: {body}");
        assert_eq!(body, forbidden(user, "create", "pods proxy"), "{signal}");
    }
    assert_eq!(cluster.kubelet.count(), 0);
    let pair = [
        repeated("create", "pods", 1),
        repeated("create", "proxy", 1),
    ]
    .concat();
    assert_eq!(
        reviewed(&cluster),
        [pair.clone(), pair.clone(), pair].concat()
    );

    let (status, body) = cluster.get("/pods", token).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "without either header it is a get: {body}"
    );
    assert_eq!(cluster.kubelet.count(), 1);
}

#[tokio::test]
async fn streaming_endpoints_need_create_whatever_the_method() {
    let cluster = cluster().await;
    let plain = [
        ("GET", "/exec/default/web-0/web?command=id"),
        ("GET", "/attach/default/web-0/web?stdout=1"),
        ("GET", "/portForward/default/web-0?ports=80"),
        ("POST", "/run/default/web-0/web?cmd=id"),
    ];
    let (token, user) = READER;
    for (method, path) in plain {
        let (status, body) = exchange(&cluster, request(method, path, token, &[])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
        assert_eq!(body, forbidden(user, "create", "proxy"), "{method} {path}");
    }
    assert_eq!(cluster.kubelet.count(), 0);
    assert_eq!(reviewed(&cluster), repeated("create", "proxy", plain.len()));

    // With `create`, each reaches the kubelet, which answers for itself.
    for (method, path) in plain {
        let (status, body) = exchange(&cluster, request(method, path, RUNNER.0, &[])).await;
        let expected = match method {
            "GET" => (StatusCode::BAD_REQUEST, "Upgrade request required\n".into()),
            _ => (StatusCode::OK, "output of cmd=id\n".to_owned()),
        };
        assert_eq!((status, body), expected, "{method} {path}");
    }
    let seen: Vec<_> = cluster
        .kubelet
        .requests()
        .iter()
        .map(|r| (r.method.to_string(), r.target.clone()))
        .collect();
    let sent: Vec<_> = plain
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(seen, sent);
}
