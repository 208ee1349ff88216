//! Micro-benchmarks of the per-request work that is not I/O: classification, header hygiene and
//! the token digest that keys the cache. Run with `cargo bench --bench pipeline`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use kubelet_guard::authn::token::TokenDigest;
use kubelet_guard::forward::request_headers;
use kubelet_guard::kubelet_api::{Options, classify};

fn main() {
    divan::main();
}

fn scrape_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImFiYyJ9.payload.signature"),
    );
    headers.insert("user-agent", HeaderValue::from_static("Prometheus/3.0.0"));
    headers.insert(
        "accept",
        HeaderValue::from_static(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ),
    );
    headers.insert("accept-encoding", HeaderValue::from_static("gzip"));
    headers.insert(
        "x-prometheus-scrape-timeout-seconds",
        HeaderValue::from_static("10"),
    );
    headers
}

#[divan::bench(args = ["/metrics/cadvisor", "/pods", "/exec/default/web/app?command=sh&stdin=1&stdout=1&tty=1", "/stats/summary?only_cpu_and_memory=true"])]
fn classify_target(bencher: divan::Bencher<'_, '_>, target: &str) {
    let uri: Uri = target.parse().unwrap();
    let headers = scrape_headers();
    bencher.bench(|| {
        classify(
            &Method::GET,
            divan::black_box(&uri),
            Version::HTTP_11,
            &headers,
            Options::default(),
        )
    });
}

#[divan::bench]
fn sanitize_request_headers(bencher: divan::Bencher<'_, '_>) {
    let headers = scrape_headers();
    bencher.bench(|| request_headers(divan::black_box(&headers), false));
}

#[divan::bench]
fn digest_token(bencher: divan::Bencher<'_, '_>) {
    let token = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImFiYyJ9.".repeat(20);
    bencher.bench(|| TokenDigest::of(divan::black_box(&token)));
}
