//! API load: a burst of identical requests from a new caller costs one TokenReview and one
//! SubjectAccessReview per subresource checked; cached decisions cost none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::guard::Cluster;

const BURST: usize = 100;

async fn burst(cluster: &Cluster, path: &str, token: &str) -> Vec<StatusCode> {
    let client = cluster.client();
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let (client, addr) = (client.clone(), cluster.addr());
            let (path, token) = (path.to_owned(), token.to_owned());
            tokio::spawn(async move { client.get(addr, &path, Some(&token)).await.0 })
        })
        .collect();
    let mut statuses = Vec::with_capacity(BURST);
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_from_a_new_caller_costs_one_review_of_each_kind() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t-burst", "scraper", "", &[]);
    cluster.api.allow("scraper", "get", "metrics");
    // Slow answers keep every request of the burst waiting on the same reviews.
    cluster.api.set_delay(Duration::from_millis(200));

    let statuses =
        support::with_deadline("burst", burst(&cluster, "/metrics/cadvisor", "t-burst")).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(cluster.api.token_reviews().len(), 1);
    assert_eq!(cluster.api.access_reviews().len(), 1);
    assert_eq!(cluster.kubelet.count(), BURST);

    // Cached: a second burst asks nothing.
    burst(&cluster, "/metrics", "t-burst").await;
    assert_eq!(
        (
            cluster.api.token_reviews().len(),
            cluster.api.access_reviews().len()
        ),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_denied_burst_through_the_fallback_costs_one_review_per_subresource() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t-nobody", "nobody", "", &[]);
    cluster.api.set_delay(Duration::from_millis(100));

    let statuses = support::with_deadline("burst", burst(&cluster, "/pods", "t-nobody")).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::FORBIDDEN),
        "{statuses:?}"
    );
    assert_eq!(cluster.api.token_reviews().len(), 1);
    let subresources: Vec<_> = cluster
        .api
        .access_reviews()
        .iter()
        .map(|r| {
            r["spec"]["resourceAttributes"]["subresource"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(subresources, ["pods", "proxy"]);
    assert_eq!(cluster.kubelet.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalid_tokens_are_cached_too() {
    let cluster = Cluster::start(&[]).await;
    let statuses = burst(&cluster, "/pods", "t-invalid").await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert_eq!(cluster.api.token_reviews().len(), 1);
}
