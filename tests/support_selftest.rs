//! Proves the shared test doubles speak their protocols, independent of kubelet-guard itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{self, Message};

use support::apiserver::ApiServerDouble;
use support::client::TlsClient;
use support::kubelet::{EXEC_GREETING, KubeletDouble};
use support::pki::Ca;
use support::with_deadline;

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

fn post_json(path: &str, bearer: Option<&str>, body: &Value) -> Request<Full<Bytes>> {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    if let Some(token) = bearer {
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

async fn post(
    client: &TlsClient,
    api: &ApiServerDouble,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> (StatusCode, Value) {
    let resp = client.send(api.addr(), post_json(path, bearer, body)).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn sar(user: &str, groups: &[&str], verb: &str, subresource: &str) -> Value {
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {
        "user": user, "uid": "u-1", "groups": groups, "extra": {},
        "resourceAttributes": {"group": "", "version": "v1", "resource": "nodes",
            "subresource": subresource, "name": "node-a", "verb": verb, "namespace": ""}}})
}

/// A kubelet, a CA for its clients, and a client holding the API server's kubelet-client cert.
async fn kubelet() -> (KubeletDouble, TlsClient, Ca) {
    support::init();
    let ca = Ca::new("kubelet-ca");
    let kubelet =
        KubeletDouble::start(&ca.server_cert("node-a", &["127.0.0.1", "localhost"]), &ca).await;
    let cert = ca.client_cert("kube-apiserver-kubelet-client", &["system:masters"]);
    let client = TlsClient::new(ca.cert_path(), Some(&cert));
    (kubelet, client, ca)
}

#[test]
fn pki_client_cert_carries_cn_and_every_org() {
    support::init();
    let ca = Ca::new("test-ca");
    let cert = ca.client_cert("alice", &["system:masters", "team-a", "team-b"]);
    assert!(cert.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        std::fs::read_to_string(&cert.cert_path).unwrap(),
        cert.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(&cert.key_path).unwrap(),
        cert.key_pem
    );
    let der = cert.cert_der();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn: Vec<_> = x509
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    let orgs: Vec<_> = x509
        .subject()
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["alice"]);
    assert_eq!(orgs, ["system:masters", "team-a", "team-b"]);
    // The re-signed certificate must still verify against the CA.
    let verifier = rustls::server::WebPkiClientVerifier::builder(ca.root_store())
        .build()
        .unwrap();
    let now = rustls_pki_types::UnixTime::now();
    verifier.verify_client_cert(&der, &[], now).unwrap();

    let server = ca.server_cert("node-a", &["127.0.0.1", "node-a.example"]);
    let der = server.cert_der();
    let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = format!(
        "{:?}",
        x509.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(
        sans.contains("IPAddress([127, 0, 0, 1])") && sans.contains("DNSName(\"node-a.example\")"),
        "{sans}"
    );
}

#[tokio::test]
async fn apiserver_token_review_roundtrip_and_bearer_check() {
    support::init();
    let ca = Ca::new("cluster-ca");
    let api = ApiServerDouble::start(&ca).await;
    api.add_token(
        "alice-token",
        "alice",
        "uid-alice",
        &["dev", "system:authenticated"],
    );
    let client = TlsClient::new(ca.cert_path(), None);
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": "alice-token", "audiences": ["https://kubernetes.default.svc"]}});
    let guard = Some(ApiServerDouble::GUARD_TOKEN);

    let (status, body) = with_deadline(
        "token review",
        post(&client, &api, TOKEN_REVIEWS, guard, &review),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["status"]["authenticated"], true);
    assert_eq!(body["status"]["user"]["username"], "alice");
    assert_eq!(
        body["status"]["user"]["groups"],
        json!(["dev", "system:authenticated"])
    );
    assert_eq!(
        body["status"]["audiences"],
        json!(["https://kubernetes.default.svc"])
    );

    let (status, body) = post(&client, &api, TOKEN_REVIEWS, Some("not-the-guard"), &review).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["code"], 401);

    let unknown = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "nope"}});
    let (status, body) = post(&client, &api, TOKEN_REVIEWS, guard, &unknown).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["status"]["authenticated"], false);
    assert!(body["status"].get("user").is_none());

    // h2 works too, and everything is recorded.
    let h2 = client.clone().http2();
    let resp = h2
        .send(api.addr(), post_json(TOKEN_REVIEWS, guard, &review))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(api.token_reviews().len(), 3, "the 401 is not a review");
    let auth: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| r.authorization.unwrap())
        .collect();
    assert_eq!(auth[1], "Bearer not-the-guard");
    assert_eq!(api.requests()[3].version, http::Version::HTTP_2);
    let (status, _, _) = client.get(api.addr(), "/api", guard).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn apiserver_access_review_rules_and_failures() {
    support::init();
    let ca = Ca::new("cluster-ca");
    let api = ApiServerDouble::start(&ca).await;
    let client = TlsClient::new(ca.cert_path(), None);
    let guard = Some(ApiServerDouble::GUARD_TOKEN);
    api.allow("metrics-readers", "get", "metrics");
    api.allow("admin", "*", "*");
    api.deny("mallory", "*", "*");

    let check = |user: &'static str,
                 groups: &'static [&'static str],
                 verb: &'static str,
                 sub: &'static str| {
        let (client, api) = (&client, &api);
        async move {
            post(
                client,
                api,
                ACCESS_REVIEWS,
                guard,
                &sar(user, groups, verb, sub),
            )
            .await
        }
    };
    let (status, body) = check("bob", &["metrics-readers"], "get", "metrics").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["status"]["allowed"], true);
    assert_eq!(body["spec"]["user"], "bob");
    let (_, body) = check("bob", &["metrics-readers"], "get", "proxy").await;
    assert_eq!(body["status"]["allowed"], false);
    assert!(body["status"].get("denied").is_none());
    let (_, body) = check("admin", &[], "create", "proxy").await;
    assert_eq!(body["status"]["allowed"], true);
    let (_, body) = check("mallory", &["admin"], "get", "pods").await;
    assert_eq!(
        body["status"],
        json!({"allowed": false, "denied": true, "reason": body["status"]["reason"]})
    );

    let mut pods = sar("admin", &[], "get", "");
    pods["spec"]["resourceAttributes"]["resource"] = json!("pods");
    let (_, body) = post(&client, &api, ACCESS_REVIEWS, guard, &pods).await;
    assert_eq!(body["status"]["allowed"], false);
    assert_eq!(api.mismatches().len(), 1);

    api.sar_status_override(Some(json!({"allowed": true, "denied": true})));
    let (_, body) = check("bob", &[], "get", "stats").await;
    assert_eq!(body["status"], json!({"allowed": true, "denied": true}));
    api.sar_status_override(None);

    api.fail_with(Some(503));
    let (status, body) = check("admin", &[], "get", "stats").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["reason"], "ServiceUnavailable");
    api.fail_with(None);

    api.set_delay(Duration::from_millis(50));
    let started = std::time::Instant::now();
    check("admin", &[], "get", "stats").await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(api.access_reviews().len(), 8);

    let kubeconfig = std::fs::read_to_string(api.write_kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&format!("server: https://127.0.0.1:{}", api.addr().port())));
    assert!(kubeconfig.contains(&format!("token: {}", ApiServerDouble::GUARD_TOKEN)));
    assert!(kubeconfig.contains(&ca.cert_path().display().to_string()));
}

#[tokio::test]
async fn kubelet_requires_a_client_certificate_or_a_token() {
    let (kubelet, client, ca) = kubelet().await;
    let stranger = Ca::new("other-ca").client_cert("eve", &[]);
    let req = support::client::request("GET", "/healthz", None);
    // As a Go kubelet (`tls.RequestClientCert`): the handshake completes, the request is a 401.
    let foreign = TlsClient::new(ca.cert_path(), Some(&stranger));
    let answer = foreign.try_send(kubelet.addr(), req).await.unwrap();
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    let anonymous = TlsClient::new(ca.cert_path(), None);
    let (status, _, _) = anonymous.get(kubelet.addr(), "/healthz", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = anonymous.get(kubelet.addr(), "/healthz", Some("t")).await;
    assert_eq!(status, StatusCode::OK);
    let recorded = kubelet.requests();
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|r| r.client_cn.is_none()));

    let (status, _, body) =
        with_deadline("healthz", client.get(kubelet.addr(), "/healthz", None)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let recorded = &kubelet.requests()[3];
    assert_eq!(
        recorded.client_cn.as_deref(),
        Some("kube-apiserver-kubelet-client")
    );
    assert_eq!(recorded.target, "/healthz");
}

#[tokio::test]
async fn kubelet_routes() {
    let (kubelet, client, _ca) = kubelet().await;
    let addr = kubelet.addr();
    let (status, headers, _) = client.get(addr, "/logs", None).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "/logs/");
    let (status, _, body) = client.get(addr, "/nope", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::NOT_FOUND, "404 page not found\n")
    );
    let (status, _, body) = client.get(addr, "/pods", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["kind"],
        "PodList"
    );
    let (status, _, body) = client.get(addr, "/metrics/cadvisor", None).await;
    assert!(status == StatusCode::OK && body.contains("# TYPE"));
    let (status, _, body) = client
        .get(addr, "/exec/default/web-0/web?command=sh", None)
        .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_REQUEST, "Upgrade request required\n")
    );
    let resp = client
        .send(
            addr,
            support::client::request("POST", "/run/default/web-0/web?cmd=ls", None),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        kubelet.requests()[5].target,
        "/run/default/web-0/web?cmd=ls"
    );
}

#[tokio::test]
async fn kubelet_websocket_exec_echoes_stdin() {
    let (kubelet, client, _ca) = kubelet().await;
    let path = "/exec/default/web-0/web?command=sh&stdin=1&stdout=1";
    let offered = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
    let (resp, mut ws) = with_deadline(
        "ws handshake",
        client.websocket(kubelet.addr(), path, Some("t"), &offered),
    )
    .await
    .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    let greeting = with_deadline("greeting", ws.next()).await.unwrap().unwrap();
    assert_eq!(
        greeting.into_data().as_ref(),
        [&[1u8][..], EXEC_GREETING].concat()
    );
    ws.send(Message::binary(b"\0ping".to_vec())).await.unwrap();
    let echo = with_deadline("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), b"\x01ping");
    ws.close(None).await.unwrap();
    assert_eq!(kubelet.upgrades_completed(), 1);
    assert_eq!(kubelet.requests()[0].headers["authorization"], "Bearer t");

    let err = client
        .websocket(kubelet.addr(), path, None, &["v9.example"])
        .await
        .unwrap_err();
    let tungstenite::Error::Http(resp) = err else {
        panic!("expected an HTTP error, got {err:?}");
    };
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn kubelet_spdy_upgrade_echoes_bytes() {
    let (kubelet, client, _ca) = kubelet().await;
    let offered = [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
    ];
    let (status, headers, upgraded) = with_deadline(
        "spdy",
        client.spdy(kubelet.addr(), "/portForward/default/web-0", None, &offered),
    )
    .await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(headers["x-stream-protocol-version"], "v4.channel.k8s.io");
    assert_eq!(headers["upgrade"], "SPDY/3.1");
    let mut io = TokioIo::new(upgraded.unwrap());
    io.write_all(b"spdy frame bytes").await.unwrap();
    let mut buf = [0u8; 16];
    with_deadline("echo", io.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"spdy frame bytes");
    assert_eq!(kubelet.upgrades_completed(), 1);
    assert_eq!(
        kubelet.requests()[0]
            .headers
            .get_all("x-stream-protocol-version")
            .iter()
            .count(),
        3
    );
}

async fn next_data(body: &mut hyper::body::Incoming) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

#[tokio::test]
async fn kubelet_log_follow_streams_one_line_per_release() {
    let (kubelet, client, _ca) = kubelet().await;
    let req = support::client::request("GET", "/containerLogs/default/web-0/web?follow=true", None);
    let resp = with_deadline("logs", client.send(kubelet.addr(), req)).await;
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    assert_eq!(
        with_deadline("line 1", next_data(&mut body)).await,
        "line 1\n"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), next_data(&mut body))
            .await
            .is_err(),
        "line 2 before release"
    );
    for n in 2..=5 {
        kubelet.release_log_line();
        assert_eq!(
            with_deadline("next line", next_data(&mut body)).await,
            format!("line {n}\n")
        );
    }
    assert!(with_deadline("end", body.frame()).await.is_none());
}

#[tokio::test]
async fn raw_requests_reach_the_kubelet_verbatim() {
    let (kubelet, client, _ca) = kubelet().await;
    let answer = with_deadline(
        "raw",
        client.raw(
            kubelet.addr(),
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("ok"),
        "{answer}"
    );
    let answer = client
        .raw(
            kubelet.addr(),
            b"GET http://localhost/pods HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(kubelet.requests()[1].target, "http://localhost/pods");
    let answer = client
        .raw(
            kubelet.addr(),
            b"GET /stats/%2E%2E/exec HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(kubelet.requests()[2].target, "/stats/%2E%2E/exec");
}
