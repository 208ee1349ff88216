//! The example events of docs/audit.md are real: each one is made here by a real request through
//! the guard, and must equal the one the document shows once the values that change from run to
//! run (audit ID, timestamps, certificate serial and expiry, stream duration and byte counts) are
//! set to the document's. When they differ, the failure prints the events to paste.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use support::apiserver::TokenIdentity;
use support::audit_log::AuditLog;
use support::guard::Cluster;
use tokio_tungstenite::tungstenite;

const DOC: &str = include_str!("../docs/audit.md");

/// The run-to-run values of one example, as the document shows them.
struct Fixed {
    audit_id: &'static str,
    received: &'static str,
    stage: &'static str,
}

/// The example event named `name` in docs/audit.md (the JSON block after its marker).
fn documented(name: &str) -> Option<Value> {
    let marker = format!("<!-- example: {name} -->");
    let after = &DOC[DOC.find(&marker)? + marker.len()..];
    let body = &after[after.find("```json\n")? + "```json\n".len()..];
    serde_json::from_str(&body[..body.find("\n```")?]).ok()
}

/// `event` with its run-to-run values set to `fixed`'s and the document's.
fn normalized(mut event: Value, fixed: &Fixed) -> Value {
    event["auditID"] = json!(fixed.audit_id);
    event["requestReceivedTimestamp"] = json!(fixed.received);
    event["stageTimestamp"] = json!(fixed.stage);
    let annotations = event["annotations"].as_object_mut().unwrap();
    for (name, value) in [
        (
            "kubelet-guard.io/client-certificate-serial",
            "4b1d9e07c3a25f68",
        ),
        (
            "kubelet-guard.io/client-certificate-expiry",
            "2027-05-04T09:00:00Z",
        ),
        ("kubelet-guard.io/stream-duration", "4.182s"),
        ("kubelet-guard.io/bytes-to-kubelet", "36"),
        ("kubelet-guard.io/bytes-to-caller", "1873"),
    ] {
        if annotations.contains_key(name) {
            annotations.insert(name.to_owned(), json!(value));
        }
    }
    // A certificate's fingerprint changes with every test run's keys.
    let credential = &mut event["user"]["extra"]["authentication.kubernetes.io/credential-id"];
    if let Some(id) = credential.get_mut(0)
        && id.as_str().is_some_and(|id| id.starts_with("X509SHA256="))
    {
        *id = json!("X509SHA256=9c2e5f0a41d7b3e8a6f1c4d9b2e7a0f3c8d5e1b6a9f4c7d2e0b3a8f5c1d6e9b4");
    }
    event
}

#[tokio::test]
async fn the_documented_examples_are_what_the_guard_writes() {
    let mut written: Vec<(&str, Value)> = Vec::new();

    // Enforce mode: a scrape, a refused exec, an allowed exec stream.
    let log = AuditLog::new();
    let cluster = Cluster::start(&[log.flag()]).await;
    let prometheus = "system:serviceaccount:monitoring:prometheus";
    cluster.api.add_token_with(
        "t-prometheus",
        TokenIdentity::bound_service_account(prometheus, "prometheus-0"),
    );
    cluster.api.allow(prometheus, "get", "metrics");
    let legacy = "system:serviceaccount:monitoring:legacy-agent";
    cluster.api.add_token_with(
        "t-legacy",
        TokenIdentity::bound_service_account(legacy, "legacy-agent-7d9f8"),
    );
    cluster.api.allow(legacy, "get", "proxy");
    cluster
        .api
        .allow("kube-apiserver-kubelet-client", "create", "proxy");

    let mut scrape = support::client::request("GET", "/metrics/cadvisor", Some("t-prometheus"));
    scrape
        .headers_mut()
        .insert("user-agent", "Prometheus/3.5.0".parse().unwrap());
    let scraped = cluster.client().send(cluster.addr(), scrape).await;
    assert_eq!(scraped.status(), StatusCode::OK);
    // Read whole, so its event says `complete`, not that the caller left.
    http_body_util::BodyExt::collect(scraped.into_body())
        .await
        .unwrap();
    let refused = "/exec/team-a/web-0/app?command=sh&command=-c\
                   &command=cat%20/var/run/secrets/kubernetes.io/serviceaccount/token\
                   &input=1&output=1&tty=1";
    let answer = cluster
        .client()
        .websocket(
            cluster.addr(),
            refused,
            Some("t-legacy"),
            &["v5.channel.k8s.io"],
        )
        .await;
    assert!(
        matches!(&answer, Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::FORBIDDEN)
    );
    let allowed = "/exec/team-a/web-0/app?command=sh&command=-c&command=ls%20-la%20/data\
                   &input=1&output=1&error=1";
    let apiserver =
        cluster.client_with_cert("kube-apiserver-kubelet-client", &["kubeadm:cluster-admins"]);
    let (_, mut socket) = apiserver
        .websocket(cluster.addr(), allowed, None, &["v5.channel.k8s.io"])
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();
    socket
        .send(tungstenite::Message::binary(b"\x00exit\n".to_vec()))
        .await
        .unwrap();
    socket.next().await.unwrap().unwrap();
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    let events = log.events(4).await;
    let fixed = [
        (
            "metrics-scrape",
            "0c9e2b7a-41d8-4f63-9a15-d27e8b3c6f40",
            "2026-05-04T09:12:01.204513Z",
            "2026-05-04T09:12:01.209870Z",
        ),
        (
            "refused-exec",
            "7f3a1d62-9b0e-4c5a-8e27-3b6d1f9c0a84",
            "2026-05-04T09:13:44.018276Z",
            "2026-05-04T09:13:44.019105Z",
        ),
        (
            "exec-stream-started",
            "e2b84c19-5d7a-4f0e-b3c6-9a1d8f2e7c55",
            "2026-05-04T09:14:33.360114Z",
            "2026-05-04T09:14:33.369042Z",
        ),
        (
            "exec-stream-complete",
            "e2b84c19-5d7a-4f0e-b3c6-9a1d8f2e7c55",
            "2026-05-04T09:14:33.360114Z",
            "2026-05-04T09:14:37.551206Z",
        ),
    ];
    for ((name, audit_id, received, stage), event) in fixed.into_iter().zip(events) {
        let fixed = Fixed {
            audit_id,
            received,
            stage,
        };
        written.push((name, normalized(event, &fixed)));
    }

    // Observe mode: a would-be refusal, forwarded with the caller's own token.
    let log = AuditLog::new();
    let observing = Cluster::start(&[log.flag(), "--mode=observe"]).await;
    observing.api.add_token_with(
        "t-legacy",
        TokenIdentity::bound_service_account(legacy, "legacy-agent-7d9f8"),
    );
    observing.api.allow(legacy, "get", "metrics");
    assert_eq!(observing.get("/pods", "t-legacy").await.0, StatusCode::OK);
    let event = log.events(1).await.remove(0);
    let fixed = Fixed {
        audit_id: "3a5c7e91-0b2d-4f68-8c4a-6e1f9d3b5a72",
        received: "2026-05-04T09:20:05.731650Z",
        stage: "2026-05-04T09:20:05.742318Z",
    };
    written.push(("observe-refusal", normalized(event, &fixed)));

    let differing: Vec<String> = written
        .iter()
        .filter(|(name, event)| documented(name).as_ref() != Some(event))
        .map(|(name, event)| {
            format!(
                "<!-- example: {name} -->\n```json\n{}\n```\n",
                serde_json::to_string_pretty(event).unwrap()
            )
        })
        .collect();
    assert!(
        differing.is_empty(),
        "docs/audit.md differs from what the guard writes; paste:\n\n{}",
        differing.join("\n")
    );
}
