//! Which checks decide: the fine-grained subresource first, `nodes/proxy` only where the kubelet
//! falls back (and never in strict mode), first allow wins, and a denial in the kubelet's format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use http::StatusCode;
use support::guard::Cluster;

const TOKEN: &str = "t-agent";
const USER: &str = "system:serviceaccount:kube-system:agent";

async fn cluster(extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(extra).await;
    cluster.api.add_token(TOKEN, USER, "uid-agent", &[]);
    cluster
}

/// The (verb, subresource) of every access review, in order.
fn reviewed(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .api
        .access_reviews()
        .iter()
        .map(|r| {
            let attributes = &r["spec"]["resourceAttributes"];
            (
                attributes["verb"].as_str().unwrap().to_owned(),
                attributes["subresource"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(v, s)| ((*v).to_owned(), (*s).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_fine_grained_subresource_is_checked_first_and_alone_when_it_allows() {
    let cluster = cluster(&[]).await;
    cluster.api.allow(USER, "get", "pods");
    let (status, body) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"kind\":\"PodList\""), "{body}");
    assert_eq!(reviewed(&cluster), pairs(&[("get", "pods")]));
}

#[tokio::test]
async fn legacy_proxy_grants_still_read_what_the_kubelet_lets_them() {
    let cluster = cluster(&[]).await;
    cluster.api.allow(USER, "get", "proxy");
    for path in ["/pods", "/runningpods/", "/healthz", "/configz"] {
        let (status, body) = cluster.get(path, TOKEN).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    assert_eq!(
        reviewed(&cluster),
        pairs(&[
            ("get", "pods"),
            ("get", "proxy"),
            ("get", "healthz"),
            ("get", "configz")
        ]),
        "the (pods, proxy) decisions of /pods are cached for /runningpods/"
    );
    assert_eq!(cluster.kubelet.count(), 4);
}

#[tokio::test]
async fn paths_without_a_fallback_are_never_opened_by_nodes_proxy() {
    let cluster = cluster(&[]).await;
    cluster.api.allow(USER, "*", "proxy");
    for (path, subresource) in [
        ("/stats/summary", "stats"),
        ("/metrics/cadvisor", "metrics"),
        ("/logs/syslog", "log"),
        ("/statusz", "statusz"),
        ("/flagz", "configz"),
    ] {
        let (status, body) = cluster.get(path, TOKEN).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body,
            format!(
                "Forbidden (user={USER}, verb=get, resource=nodes, subresource(s)=[{subresource}])\n"
            ),
            "{path}"
        );
    }
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn strict_mode_drops_the_proxy_fallback() {
    let cluster = cluster(&["--proxy-fallback=false"]).await;
    cluster.api.allow(USER, "get", "proxy");
    let (status, body) = cluster.get("/pods", TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        format!("Forbidden (user={USER}, verb=get, resource=nodes, subresource(s)=[pods])\n")
    );
    assert_eq!(reviewed(&cluster), pairs(&[("get", "pods")]));
    // What only nodes/proxy can authorize still needs it.
    let (status, _) = cluster.get("/containerLogs/default/web/app", TOKEN).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_denial_names_every_subresource_tried_and_reaches_no_kubelet() {
    let cluster = cluster(&[]).await;
    let (status, body) = cluster.get("/healthz/ping", TOKEN).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        format!(
            "Forbidden (user={USER}, verb=get, resource=nodes, subresource(s)=[healthz proxy])\n"
        )
    );
    assert_eq!(
        reviewed(&cluster),
        pairs(&[("get", "healthz"), ("get", "proxy")])
    );
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test]
async fn methods_map_to_the_kubelets_verbs() {
    let cluster = cluster(&[]).await;
    cluster.api.allow(USER, "*", "*");
    for (method, path, verb, subresource) in [
        ("POST", "/stats/summary", "create", "stats"),
        ("PUT", "/debug/flags/v", "update", "proxy"),
        ("PATCH", "/configz", "patch", "configz"),
        ("DELETE", "/metrics/slis", "delete", "metrics"),
        (
            "POST",
            "/checkpoint/default/web/app",
            "create",
            "checkpoint",
        ),
    ] {
        let before = cluster.api.access_reviews().len();
        let response = cluster
            .client()
            .send(
                cluster.addr(),
                support::client::request(method, path, Some(TOKEN)),
            )
            .await;
        assert_ne!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let reviews = reviewed(&cluster);
        assert_eq!(
            reviews[before..],
            pairs(&[(verb, subresource)])[..],
            "{method} {path}"
        );
    }
    let methods: Vec<String> = cluster
        .kubelet
        .requests()
        .iter()
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["POST", "PUT", "PATCH", "DELETE", "POST"]);
}

#[tokio::test]
async fn allowed_and_denied_answers_are_cached_for_their_own_lifetimes() {
    let cluster = cluster(&["--authorization-webhook-cache-unauthorized-ttl=0s"]).await;
    cluster.api.allow(USER, "get", "metrics");
    for _ in 0..3 {
        assert_eq!(cluster.get("/metrics", TOKEN).await.0, StatusCode::OK);
        assert_eq!(
            cluster.get("/stats/summary", TOKEN).await.0,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        reviewed(&cluster),
        pairs(&[
            ("get", "metrics"),
            ("get", "stats"),
            ("get", "stats"),
            ("get", "stats")
        ]),
        "allows are kept, denials (ttl 0s) are asked again"
    );
    assert_eq!(
        cluster.api.token_reviews().len(),
        1,
        "the token's review is cached"
    );
}
