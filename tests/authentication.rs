//! Who the guard believes is calling: bearer tokens through TokenReview, client certificates from
//! the client CA (CN and every O), nothing else, and anonymous only when allowed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use serde_json::json;
use support::client::TlsClient;
use support::guard::{Cluster, NODE};
use support::pki::Ca;

#[tokio::test]
async fn a_reviewed_token_is_the_caller_in_every_access_review() {
    let cluster = Cluster::start(&["--auth-token-audiences=kubelet,other"]).await;
    cluster.api.add_token(
        "t-prom",
        "system:serviceaccount:monitoring:prometheus",
        "uid-1",
        &["system:serviceaccounts"],
    );
    cluster.api.allow(
        "system:serviceaccount:monitoring:prometheus",
        "get",
        "metrics",
    );

    let (status, body) = cluster.get("/metrics", "t-prom").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("kubelet_running_pods"),
        "the kubelet's metrics come back: {body}"
    );

    let reviews = cluster.api.token_reviews();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["spec"]["token"], "t-prom");
    assert_eq!(reviews[0]["spec"]["audiences"], json!(["kubelet", "other"]));
    let sar = &cluster.api.access_reviews()[0]["spec"];
    assert_eq!(sar["user"], "system:serviceaccount:monitoring:prometheus");
    assert_eq!(sar["uid"], "uid-1");
    assert_eq!(
        sar["groups"],
        json!(["system:serviceaccounts", "system:authenticated"])
    );
    assert_eq!(
        sar["resourceAttributes"],
        json!({"group": "", "version": "v1", "resource": "nodes", "subresource": "metrics", "name": NODE, "verb": "get"})
    );
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some("Bearer guard-sa-token"))
    );
}

#[tokio::test]
async fn unknown_and_malformed_credentials_get_the_kubelets_401() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.allow("*", "*", "*");
    for (header, reviews) in [
        (Some("Bearer nobody"), 1),
        (Some("Basic dXNlcjpwdw=="), 0),
        (None, 0),
    ] {
        let mut request = support::client::request("GET", "/pods", None);
        if let Some(value) = header {
            request
                .headers_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let before = cluster.api.token_reviews().len();
        let response = cluster.client().send(cluster.addr(), request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"Unauthorized");
        assert_eq!(
            cluster.api.token_reviews().len() - before,
            reviews,
            "{header:?}"
        );
    }
    assert!(
        cluster.api.access_reviews().is_empty(),
        "no one unauthenticated is authorized"
    );
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn a_client_certificate_names_user_and_groups_and_beats_a_token() {
    let cluster = Cluster::start(&[]).await;
    cluster
        .api
        .allow("kube-apiserver-kubelet-client", "get", "proxy");
    let apiserver = cluster.client_with_cert(
        "kube-apiserver-kubelet-client",
        &["kubeadm:cluster-admins", "system:masters"],
    );

    let (status, _, body) = apiserver
        .get(
            cluster.addr(),
            "/containerLogs/default/web/app",
            Some("ignored"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        cluster.api.token_reviews().is_empty(),
        "a verified certificate needs no token review"
    );
    let sar = &cluster.api.access_reviews()[0]["spec"];
    assert_eq!(sar["user"], "kube-apiserver-kubelet-client");
    assert_eq!(
        sar["groups"],
        json!([
            "kubeadm:cluster-admins",
            "system:masters",
            "system:authenticated"
        ])
    );
    assert_eq!(sar["resourceAttributes"]["subresource"], "proxy");
}

#[tokio::test]
async fn a_certificate_from_a_foreign_ca_is_refused() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.allow("*", "*", "*");
    let foreign = Ca::new("foreign");
    let impostor = TlsClient::new(
        cluster.ca.cert_path(),
        Some(&foreign.client_cert("kube-apiserver-kubelet-client", &["system:masters"])),
    );
    let result = impostor
        .try_send(
            cluster.addr(),
            support::client::request("GET", "/pods", None),
        )
        .await;
    assert!(
        result.is_err(),
        "the handshake must fail, got {:?}",
        result.map(|r| r.status())
    );
    assert!(cluster.api.access_reviews().is_empty());
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn anonymous_callers_are_refused_unless_allowed_and_then_still_authorized() {
    let off = Cluster::start(&[]).await;
    off.api.allow("system:anonymous", "*", "*");
    let (status, _, _) = off.client().get(off.addr(), "/healthz", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let on = Cluster::start(&[
        "--anonymous-auth",
        "--authorization-webhook-cache-unauthorized-ttl=0s",
    ])
    .await;
    let (status, _, body) = on.client().get(on.addr(), "/healthz", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource(s)=[healthz proxy])\n"
    );
    on.api.allow("system:unauthenticated", "get", "healthz");
    let (status, _, body) = on.client().get(on.addr(), "/healthz", None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let reviews = on.api.access_reviews();
    let sar = &reviews.last().unwrap()["spec"];
    assert_eq!(sar["user"], "system:anonymous");
    assert_eq!(sar["groups"], json!(["system:unauthenticated"]));
}

/// A browser cannot set headers, so Kubernetes also reads a WebSocket request's token from a
/// `base64url.bearer.authorization.k8s.io.<token>` subprotocol, after the `Authorization` header.
/// An invalid one is a 401 even where anonymous callers may exec, as the kubelet answers; on a
/// request that is no WebSocket upgrade it is no credential at all, as there.
#[tokio::test]
async fn a_websocket_bearer_subprotocol_is_the_callers_token() {
    use base64::Engine;
    use tokio_tungstenite::tungstenite::Error;

    let cluster = Cluster::start(&[
        "--anonymous-auth",
        "--authorization-webhook-cache-unauthorized-ttl=0s",
    ])
    .await;
    cluster.api.add_token("t-browser", "alice", "", &[]);
    cluster.api.allow("alice", "create", "proxy");
    cluster
        .api
        .allow("system:unauthenticated", "create", "proxy");
    let bearer = |token: &str| {
        format!(
            "base64url.bearer.authorization.k8s.io.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
        )
    };
    let exec = "/exec/default/web-0/web?command=id&stdout=1";
    let handshake = async |protocols: &[&str]| match cluster
        .client()
        .websocket(cluster.addr(), exec, None, protocols)
        .await
    {
        Ok((response, _)) => response.status(),
        Err(Error::Http(response)) => response.status(),
        Err(e) => panic!("{protocols:?}: {e}"),
    };

    let valid = bearer("t-browser");
    assert_eq!(
        handshake(&[&valid, "v5.channel.k8s.io"]).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
    let reviews = cluster.api.access_reviews();
    assert_eq!(reviews.last().unwrap()["spec"]["user"], "alice");
    // The kubelet gets the other subprotocols, and no credential of the caller's.
    let forwarded = &cluster.kubelet.requests()[0];
    let offered: Vec<_> = forwarded
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(offered, ["v5.channel.k8s.io"]);
    assert!(!forwarded.headers.contains_key(http::header::AUTHORIZATION));

    let invalid = bearer("t-unknown");
    let (other, twice) = (bearer("t-other"), format!("{valid}, {valid}"));
    for protocols in [
        &[invalid.as_str(), "v5.channel.k8s.io"][..],
        &[valid.as_str()],
        &[twice.as_str(), "v5.channel.k8s.io"],
        &[valid.as_str(), other.as_str(), "v5.channel.k8s.io"],
        &[
            "base64url.bearer.authorization.k8s.io.dA=",
            "v5.channel.k8s.io",
        ],
    ] {
        assert_eq!(
            handshake(protocols).await,
            StatusCode::UNAUTHORIZED,
            "{protocols:?}"
        );
    }
    assert_eq!(cluster.kubelet.count(), 1, "only alice's exec");

    let mut request = support::client::request("GET", "/healthz", None);
    let offered = format!("{valid}, v5.channel.k8s.io");
    request
        .headers_mut()
        .insert("sec-websocket-protocol", offered.parse().unwrap());
    let response = cluster.client().send(cluster.addr(), request).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let reviews = cluster.api.access_reviews();
    assert_eq!(reviews.last().unwrap()["spec"]["user"], "system:anonymous");
}
