//! No token in the audit trail, even one inside the command of an exec or run (issue 14): the
//! command annotation and the `requestURI` carry `<redacted>` in its place, while the kubelet
//! still runs the command as it was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use futures_util::StreamExt;
use http::StatusCode;
use support::audit_log::AuditLog;
use support::guard::Cluster;

const TOKEN: &str = "t-caller-own-token";
const USER: &str = "system:serviceaccount:ops:debugger";

#[tokio::test]
async fn a_token_in_a_command_is_redacted_in_the_event_and_run_as_sent() {
    let log = AuditLog::new();
    let cluster = Cluster::start(&[log.flag()]).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    cluster.api.allow(USER, "create", "proxy");
    let exec = "/exec/team-a/web-0/app?command=curl&command=-H\
                &command=Authorization%3A%20Bearer%20xyz-secret-1\
                &command=--token%3Dsecret-2&command=https%3A%2F%2Fapi.internal&output=1";
    let mut socket = cluster.exec_websocket(exec, TOKEN).await;
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    let run = "/run/team-a/web-0/app?cmd=mysql+--password+secret-3+-e+status";
    let response = cluster
        .client()
        .send(
            cluster.addr(),
            support::client::request("POST", run, Some(TOKEN)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let events = log.events(3).await;
    let (started, closed, ran) = (&events[0], &events[1], &events[2]);
    for event in [started, closed] {
        assert_eq!(
            event["annotations"]["kubelet-guard.io/command"],
            "curl -H 'Authorization: Bearer <redacted>' '--token=<redacted>' https://api.internal"
        );
        assert_eq!(
            event["requestURI"],
            "/exec/team-a/web-0/app?command=curl&command=-H\
             &command=Authorization%3A+Bearer+%3Credacted%3E\
             &command=--token%3D%3Credacted%3E&command=https%3A%2F%2Fapi.internal&output=1",
            "the pairs that carried a credential are re-encoded, the rest is as sent"
        );
    }
    assert_eq!(
        ran["annotations"]["kubelet-guard.io/command"],
        "mysql --password '<redacted>' -e status"
    );
    assert_eq!(
        ran["requestURI"],
        "/run/team-a/web-0/app?cmd=mysql+--password+%3Credacted%3E+-e+status"
    );

    let trail = log.text();
    for secret in ["xyz-secret-1", "secret-2", "secret-3", TOKEN] {
        assert!(
            !trail.contains(secret),
            "{secret} in the audit log:\n{trail}"
        );
    }
    let forwarded: Vec<String> = cluster
        .kubelet
        .requests()
        .into_iter()
        .map(|request| request.target)
        .collect();
    assert_eq!(
        forwarded,
        [exec, run],
        "the kubelet runs the command as it was sent"
    );
}

/// A target in absolute or authority form is refused, and its event says what was asked but
/// for the password in its user information.
#[tokio::test]
async fn a_password_in_a_targets_user_information_is_not_recorded() {
    let log = AuditLog::new();
    let cluster = Cluster::start(&[log.flag()]).await;
    cluster.api.add_token(TOKEN, USER, "", &[]);
    let targets = [
        (
            "CONNECT",
            "alice:s3cr3t-1@localhost:10250",
            "localhost:10250",
        ),
        (
            "GET",
            "https://bob:s3cr3t-2@localhost/metrics?x=1",
            "/metrics?x=1",
        ),
    ];
    for (method, target, _) in targets {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
             Connection: close\r\n\r\n"
        );
        let answer = cluster
            .client()
            .raw(cluster.addr(), request.as_bytes())
            .await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{target}: {answer}");
    }
    let events = log.events(targets.len()).await;
    for (event, (method, _, recorded)) in events.iter().zip(targets) {
        assert_eq!(event["requestURI"], recorded, "{method}");
        assert_eq!(event["responseStatus"]["code"], 400, "{method}");
    }
    let trail = log.text();
    assert!(!trail.contains("s3cr3t"), "{trail}");
    assert_eq!(cluster.kubelet.count(), 0);
}
