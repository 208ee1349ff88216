//! Limits that keep a misbehaving caller from hurting the node, each hit counted in
//! `kubelet_guard_limit_hits_total{limit}`: `--max-connections`, a header read timeout against
//! slow callers, `--max-request-header-bytes` (64 KiB by default), an idle timeout for keep-alive
//! connections that never cuts a request in flight, and HTTP/2's concurrent-stream limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

use support::guard::Cluster;
use support::kubelet::FOLLOW_LINES;
use support::with_deadline;

const TOKEN: &str = "t-operator";
const USER: &str = "system:serviceaccount:ops:operator";
const FOLLOW: &str = "/containerLogs/default/web-0/web?follow=true";

async fn cluster(extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(extra).await;
    cluster.api.add_token(TOKEN, USER, "uid", &[]);
    cluster.api.allow(USER, "get", "proxy");
    cluster
}

/// Waits until `limit` was hit at least `at_least` times.
async fn wait_for_hits(cluster: &Cluster, limit: &str, at_least: u64) {
    with_deadline(limit, async {
        while cluster.limit_hits(limit).await < at_least {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Reads until the peer closes; what arrived before.
async fn read_to_close(tls: &mut TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    let mut answer = Vec::new();
    with_deadline("the guard closes the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    answer
}

#[tokio::test]
async fn connections_over_the_maximum_are_closed_at_once() {
    let cluster = cluster(&[
        "--max-connections=2",
        "--max-unauthenticated-connections-per-source=1",
    ])
    .await;
    // Three addresses, so that the per-source cap (one each) is not what closes the third.
    let from = |source: &str| cluster.client().with_source(source.parse().unwrap());
    let client = from("127.0.0.1");
    let first = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    let _second = from("127.0.0.2")
        .connect(cluster.addr(), b"http/1.1")
        .await
        .unwrap();

    assert!(
        from("127.0.0.3")
            .connect(cluster.addr(), b"http/1.1")
            .await
            .is_err(),
        "the third connection is closed before its handshake"
    );
    assert_eq!(cluster.limit_hits("max-connections").await, 1);
    assert_eq!(cluster.limit_hits("unauthenticated-per-source").await, 0);

    // A slot frees when a connection closes.
    drop(first);
    with_deadline("a slot frees", async {
        loop {
            let request = support::client::request("GET", "/healthz", Some(TOKEN));
            if let Ok(response) = client.try_send(cluster.addr(), request).await {
                assert_eq!(response.status(), StatusCode::OK);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_caller_too_slow_to_send_its_headers_is_disconnected() {
    let cluster = cluster(&["--header-read-timeout=200ms"]).await;
    let client = cluster.client();
    let mut slow = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    slow.flush().await.unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(cluster.limit_hits("header-read-timeout").await, 1);

    // A caller that sends its headers in time is answered.
    let (status, _, _) = client.get(cluster.addr(), "/healthz", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cluster.limit_hits("header-read-timeout").await, 1);
}

#[tokio::test]
async fn a_head_started_on_an_idle_keep_alive_connection_has_its_own_deadline() {
    // The idle timeout is far beyond the test's deadline: only the head timer can close it.
    let cluster = cluster(&["--header-read-timeout=300ms", "--idle-timeout=1h"]).await;
    let client = cluster.client();
    let mut tls = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    with_deadline("the first answer", async {
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"ok") {
            let n = tls.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed after the first request");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(answer.starts_with(b"HTTP/1.1 200 "));

    // Idle for a while, then half a head: cut at its own deadline, not the idle timeout.
    tokio::time::sleep(Duration::from_millis(450)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let answer = read_to_close(&mut tls).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(cluster.limit_hits("header-read-timeout").await, 1);
    assert_eq!(cluster.limit_hits("idle-timeout").await, 0);
}

#[tokio::test]
async fn request_heads_over_the_limit_are_refused() {
    let cluster = cluster(&[]).await;
    let client = cluster.client();
    let head = |size: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Padding: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(size)
        )
    };
    // Under the limit: read by the guard, which then wants credentials.
    let answer = client.raw(cluster.addr(), head(60 << 10).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:.80}");

    // Over it: 431, as the kubelet answers. The guard stops reading, so write while reading.
    let tls = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let big = head(70 << 10);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(big.as_bytes()).await;
        write
    });
    let mut answer = Vec::new();
    with_deadline("the 431", async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer}"
    );
    drop(read);
    writer.abort();
    wait_for_hits(&cluster, "header-size", 1).await;

    // The kubelet's own 1 MiB, when an operator asks for it.
    let cluster = Cluster::start(&["--max-request-header-bytes=1048576"]).await;
    let answer = cluster
        .client()
        .raw(cluster.addr(), head(900 << 10).as_bytes())
        .await;
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer:.80}");
}

#[tokio::test]
async fn idle_connections_are_closed_but_requests_in_flight_are_not() {
    let cluster = cluster(&["--idle-timeout=200ms"]).await;
    let client = cluster.client();

    // A followed log that stays quiet for longer than the idle timeout.
    let request = support::client::request("GET", FOLLOW, Some(TOKEN));
    let response = client.send(cluster.addr(), request).await;
    let mut log = response.into_body();
    let first = with_deadline("line 1", log.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "line 1\n");

    // A keep-alive connection that goes idle after one request.
    let tls = client.connect(cluster.addr(), b"http/1.1").await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut request = support::client::request("GET", "/healthz", Some(TOKEN));
    request
        .headers_mut()
        .insert(http::header::HOST, "localhost".parse().unwrap());
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    with_deadline("the idle connection is closed", connection)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cluster.limit_hits("idle-timeout").await, 1);

    // The log, opened before that connection and quiet since, still streams.
    for n in 2..=FOLLOW_LINES {
        cluster.kubelet.release_log_line();
        let frame = with_deadline("next line", log.frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("line {n}\n"));
    }
    assert_eq!(cluster.limit_hits("idle-timeout").await, 1);
}

/// HTTP/2 frame types used below (RFC 9113 section 6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// `REFUSED_STREAM`.
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(tls: &mut TlsStream<tokio::net::TcpStream>) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    with_deadline("a frame", tls.read_exact(&mut head))
        .await
        .unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    with_deadline("a payload", tls.read_exact(&mut payload))
        .await
        .unwrap();
    (head[3], head[4], stream, payload)
}

/// A GET of `path` as one HPACK block without Huffman coding or indexing (RFC 7541).
fn get(path: &str) -> Vec<u8> {
    let literal = |out: &mut Vec<u8>, value: &str| {
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
    };
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.push(0x04); // :path, literal value
    literal(&mut block, path);
    block.push(0x01); // :authority
    literal(&mut block, "localhost");
    block.extend_from_slice(&[0x0f, 0x08]); // authorization (static index 23)
    literal(&mut block, &format!("Bearer {TOKEN}"));
    block
}

#[tokio::test]
async fn http2_streams_over_the_limit_are_refused() {
    let cluster = cluster(&["--http2-max-streams=2"]).await;
    let mut tls = h2_caller(&cluster, &[]).await;

    // The limit is announced in the guard's first SETTINGS, which takes effect once acknowledged.
    let (kind, flags, _, settings) = read_frame(&mut tls).await;
    assert_eq!((kind, flags), (SETTINGS, 0));
    let announced = settings.chunks(6).find_map(|setting| {
        (u16::from_be_bytes([setting[0], setting[1]]) == MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
    });
    assert_eq!(announced, Some(2));
    tls.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();

    // Two followed logs stay open; a caller ignoring the limit opens a third.
    for stream in [1, 3, 5] {
        // END_STREAM | END_HEADERS
        tls.write_all(&frame(HEADERS, 0x5, stream, &get(FOLLOW)))
            .await
            .unwrap();
    }
    let mut answered = Vec::new();
    let refused = loop {
        let (kind, _, stream, payload) = read_frame(&mut tls).await;
        match kind {
            HEADERS => answered.push(stream),
            RST_STREAM => break (stream, u32::from_be_bytes(payload[..4].try_into().unwrap())),
            GOAWAY => panic!("the connection was closed: {payload:?}"),
            _ => {}
        }
    };
    assert_eq!(refused, (5, REFUSED_STREAM));
    with_deadline("both open streams are answered", async {
        while answered.len() < 2 {
            let (kind, _, stream, _) = read_frame(&mut tls).await;
            if kind == HEADERS {
                answered.push(stream);
            }
        }
    })
    .await;
    answered.sort_unstable();
    assert_eq!(answered, [1, 3]);
    assert_eq!(cluster.limit_hits("http2-max-streams").await, 1);
}

/// `SETTINGS_INITIAL_WINDOW_SIZE`.
const INITIAL_WINDOW_SIZE: u16 = 0x4;
const DATA: u8 = 0x0;
const WINDOW_UPDATE: u8 = 0x8;

/// SETTINGS that give every stream a window of zero: the guard may send headers but no byte of
/// a body until the caller opens the stream's window.
fn shut_windows() -> Vec<u8> {
    let mut window = INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
    window.extend(0u32.to_be_bytes());
    window
}

/// Reads frames until a DATA frame on `stream`; its payload.
async fn data_on(tls: &mut TlsStream<tokio::net::TcpStream>, stream: u32) -> Vec<u8> {
    loop {
        let (kind, _, on, payload) = read_frame(tls).await;
        if kind == DATA && on == stream {
            return payload;
        }
    }
}

/// Opens an HTTP/2 connection and sends the preface with `settings`, and nothing more: unless the
/// test writes them, no SETTINGS ack, no PING ack, no WINDOW_UPDATE.
async fn h2_caller(cluster: &Cluster, settings: &[u8]) -> TlsStream<tokio::net::TcpStream> {
    let mut tls = cluster
        .client()
        .connect(cluster.addr(), b"h2")
        .await
        .unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, settings));
    tls.write_all(&hello).await.unwrap();
    tls
}

/// A caller whose windows are shut and whose stream 1, a `/healthz`, can get no byte of its body.
async fn stalled_healthz(cluster: &Cluster) -> TlsStream<tokio::net::TcpStream> {
    let mut tls = h2_caller(cluster, &shut_windows()).await;
    tls.write_all(&frame(HEADERS, 0x5, 1, &get("/healthz")))
        .await
        .unwrap();
    tls
}

/// HTTP/2 flow control bounds what a caller can make the guard hold of request bodies it has not
/// read (none is read before the request is authorized): the protocol's default 64 KiB a stream
/// and a connection, not hyper's 1 MiB of each.
#[tokio::test]
async fn http2_windows_stay_at_the_protocol_default() {
    let cluster = cluster(&[]).await;
    let mut tls = h2_caller(&cluster, &[]).await;
    let (kind, flags, _, settings) = read_frame(&mut tls).await;
    assert_eq!((kind, flags), (SETTINGS, 0));
    for setting in settings.chunks(6) {
        let id = u16::from_be_bytes([setting[0], setting[1]]);
        let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
        assert!(
            id != INITIAL_WINDOW_SIZE || value <= 65_535,
            "stream window {value}"
        );
    }
    // Whatever the guard sends at the start arrives before the answer to a PING.
    tls.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    tls.write_all(&frame(PING, 0, 0, b"window?!"))
        .await
        .unwrap();
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut tls).await;
        assert!(
            !(kind == WINDOW_UPDATE && stream == 0),
            "the connection window was opened by {payload:?}"
        );
        if kind == PING && flags == 0x1 {
            break;
        }
    }
}

/// A caller that vanishes without a word (a node that lost power, a dropped NAT entry) gives its
/// slot back: the guard turns TCP keep-alive on for every caller connection, as Go's listeners
/// do, so the kernel's keep-alive timer runs on it while it is quiet.
#[tokio::test]
async fn caller_connections_have_tcp_keep_alive() {
    let cluster = cluster(&[]).await;
    let tls = cluster
        .client()
        .connect(cluster.addr(), b"http/1.1")
        .await
        .unwrap();
    let (guard, caller) = (
        format!(":{:04X}", cluster.addr().port()),
        format!(":{:04X}", tls.get_ref().0.local_addr().unwrap().port()),
    );
    // /proc/net/tcp: slot, local and remote address, state (`01`: established), queues, then the
    // timer that runs (`02`: keep-alive) and in how many ticks it fires: within 15 s (1,500 at
    // USER_HZ 100), not the kernel's default two hours.
    with_deadline("the keep-alive timer", async {
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            let timer = table.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() > 5
                    && fields[1].ends_with(&guard)
                    && fields[2].ends_with(&caller)
                    && fields[3] == "01")
                    .then(|| fields[5].to_owned())
            });
            if let Some((kind, when)) = timer.as_deref().and_then(|timer| timer.split_once(':'))
                && kind == "02"
            {
                let ticks = u64::from_str_radix(when, 16).unwrap();
                assert!(ticks <= 1_500, "keep-alive fires in {ticks} ticks");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drop(tls);
}

#[tokio::test]
async fn a_response_the_caller_never_lets_through_closes_its_connection() {
    let cluster = cluster(&["--idle-timeout=1s"]).await;
    let mut tls = stalled_healthz(&cluster).await;
    let answer = read_to_close(&mut tls).await;
    assert!(!answer.is_empty(), "the guard answered the head at least");
    assert_eq!(cluster.limit_hits("response-unread").await, 1);
}

/// HTTP/1.1 pipelining: a caller that sends request after request and reads none of the answers
/// stops the guard reading once its answers fill the socket; the connection then idles, and is
/// closed a head's time after its graceful shutdown, whose answer the caller does not read either.
#[tokio::test]
async fn a_pipelining_caller_that_reads_nothing_keeps_no_connection() {
    let cluster = cluster(&["--idle-timeout=1s", "--header-read-timeout=1s"]).await;
    cluster.api.allow(USER, "get", "log");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let tcp = socket.connect(cluster.addr()).await.unwrap();
    let mut tls = cluster.client().handshake(tcp, b"http/1.1").await.unwrap();
    // Answers of 16 KiB each fill the guard's socket within a few hundred requests.
    let file = "a".repeat(16_000);
    let requests =
        format!("GET /logs/{file} HTTP/1.1\r\nHost: node\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .repeat(10);
    with_deadline("the guard stops reading", async {
        while tokio::time::timeout(Duration::from_secs(1), tls.write_all(requests.as_bytes()))
            .await
            .is_ok()
        {}
    })
    .await;
    with_deadline("the connection is closed", async {
        while !cluster
            .metrics()
            .await
            .contains("\nkubelet_guard_open_connections 0\n")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Which limit closes it depends on where the socket filled (between answers: idle; during
    // one: unread); one of them did.
    let hits =
        cluster.limit_hits("idle-timeout").await + cluster.limit_hits("response-unread").await;
    assert_eq!(hits, 1);
    drop(tls);
}

#[tokio::test]
async fn an_idle_caller_that_ignores_the_shutdown_is_closed_anyway() {
    let cluster = cluster(&["--idle-timeout=300ms", "--header-read-timeout=300ms"]).await;
    // HTTP/2's graceful shutdown waits for the caller to acknowledge a PING; this one never does.
    let mut tls = h2_caller(&cluster, &[]).await;
    read_to_close(&mut tls).await;
    assert_eq!(cluster.limit_hits("idle-timeout").await, 1);
}

#[tokio::test]
async fn a_stalled_stream_beside_a_quiet_followed_log_is_not_cut() {
    let cluster = cluster(&["--idle-timeout=200ms"]).await;
    // Stream 1's window stays shut; stream 3, a followed log, is read.
    let mut tls = stalled_healthz(&cluster).await;
    tls.write_all(&frame(HEADERS, 0x5, 3, &get(FOLLOW)))
        .await
        .unwrap();
    tls.write_all(&frame(WINDOW_UPDATE, 0, 3, &1_000_000u32.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(data_on(&mut tls, 3).await, b"line 1\n");
    // The log is quiet for five idle timeouts: the connection is still in use.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kubelet.release_log_line();
    assert_eq!(data_on(&mut tls, 3).await, b"line 2\n");
    assert_eq!(cluster.limit_hits("response-unread").await, 0);
}
