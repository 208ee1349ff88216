//! What the kubelet receives: the guard's own identity and the caller's request, never the
//! caller's credentials, identity assertions or hop-by-hop fields.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use support::guard::Cluster;

const TOKEN: &str = "t-secret-caller-token";

#[tokio::test]
async fn the_kubelet_sees_the_guards_identity_and_none_of_the_callers() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token(TOKEN, "alice", "", &[]);
    cluster.api.allow("alice", "get", "proxy");

    let mut request = support::client::request(
        "GET",
        "/containerLogs/default/web/app?tailLines=10&timestamps=true",
        Some(TOKEN),
    );
    for (name, value) in [
        ("impersonate-user", "system:admin"),
        ("impersonate-group", "system:masters"),
        ("impersonate-uid", "0"),
        ("impersonate-extra-scopes", "all"),
        ("x-remote-user", "system:admin"),
        ("x-remote-group", "system:masters"),
        ("x-remote-extra-scopes", "all"),
        ("proxy-authorization", "Basic YWRtaW46YWRtaW4="),
        ("connection", "x-private"),
        ("x-private", "hop-by-hop"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("accept", "text/plain"),
        ("user-agent", "kubectl/v1.33"),
        ("x-custom", "kept"),
    ] {
        request.headers_mut().append(name, value.parse().unwrap());
    }
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::OK);

    let seen = cluster.kubelet.requests();
    assert_eq!(seen.len(), 1);
    let seen = &seen[0];
    assert_eq!(
        seen.client_cn.as_deref(),
        Some("kubelet-guard"),
        "the guard calls as itself"
    );
    assert_eq!(
        seen.target,
        "/containerLogs/default/web/app?tailLines=10&timestamps=true"
    );
    for (name, _) in &seen.headers {
        let name = name.as_str();
        assert!(
            !(name.starts_with("impersonate-")
                || name.starts_with("x-remote-")
                || [
                    "authorization",
                    "proxy-authorization",
                    "x-private",
                    "keep-alive",
                    "te"
                ]
                .contains(&name)),
            "the kubelet received {name}"
        );
    }
    for value in seen.headers.values() {
        assert!(
            !value
                .as_bytes()
                .windows(TOKEN.len())
                .any(|w| w == TOKEN.as_bytes()),
            "the caller's token leaked"
        );
    }
    assert_eq!(seen.headers["accept"], "text/plain");
    assert_eq!(seen.headers["user-agent"], "kubectl/v1.33");
    assert_eq!(seen.headers["x-custom"], "kept");
}

#[tokio::test]
async fn a_token_credential_replaces_the_callers_token_and_is_reread_when_it_rotates() {
    let token_file = support::temp_dir("upstream-token").join("token");
    std::fs::write(&token_file, "guard-upstream-token\n").unwrap();
    let cluster = Cluster::start(&[]).await;
    let mut argv = cluster.flags(&[]);
    argv.retain(|flag| !flag.starts_with("--upstream-client-"));
    argv.push(format!("--upstream-token-file={}", token_file.display()));
    argv.push("--tls-reload-interval=20ms".into());
    let guard = support::guard::start_with_flags(&argv).await.unwrap();
    cluster.api.add_token(TOKEN, "alice", "", &[]);
    cluster.api.allow("alice", "get", "metrics");
    let client = cluster.client();

    let (status, _, _) = client.get(guard.proxy_addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = cluster.kubelet.requests();
    assert_eq!(seen[0].client_cn, None);
    assert_eq!(
        seen[0].headers["authorization"],
        "Bearer guard-upstream-token"
    );

    let scrape = support::guard::admin_get(guard.admin_addr, "/metrics").await;
    assert!(
        !scrape.contains(r#"certificate_expiry_timestamp_seconds{certificate="upstream"}"#),
        "a token has no expiry to show, and no 0 to alert on:\n{scrape}"
    );

    std::fs::write(&token_file, "rotated-token").unwrap();
    support::with_deadline("the rotated token reaches the kubelet", async {
        loop {
            client.get(guard.proxy_addr, "/metrics", Some(TOKEN)).await;
            let seen = cluster.kubelet.requests();
            if seen.last().unwrap().headers["authorization"] == "Bearer rotated-token" {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;

    guard.stop().await;
}
