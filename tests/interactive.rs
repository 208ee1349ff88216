//! An interactive exec: keystrokes cross both of the guard's legs at once. With Nagle's algorithm
//! on either leg, a keystroke sent while the previous one is unacknowledged waits for the peer's
//! delayed ACK (40 ms or more on Linux) whenever the program answers nothing until Enter, as a
//! shell reading a password does. The kubelet double plays such a program (`command=line`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::time::{Duration, Instant};

use http::StatusCode;
use hyper_util::rt::TokioIo;
use support::guard::Cluster;
use support::with_deadline;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Far below Linux's shortest delayed ACK (40 ms): a line slower than this waited for one.
const NO_DELAYED_ACK: Duration = Duration::from_millis(20);

#[tokio::test]
async fn keystrokes_through_an_upgraded_stream_wait_for_no_delayed_ack() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.add_token("t-admin", "admin", "uid", &[]);
    cluster.api.allow("admin", "create", "proxy");
    let (status, _, upgraded) = cluster
        .client()
        .spdy(
            cluster.addr(),
            "/exec/default/web-0/web?command=line&stdin=1&stdout=1&tty=1",
            Some("t-admin"),
            &["v4.channel.k8s.io"],
        )
        .await;
    assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(upgraded.unwrap());
    let mut lines = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        // One keystroke per write, a moment apart, as a person types (a pasted line would go
        // out in one segment and prove nothing).
        for key in b"ls -l" {
            io.write_all(&[*key]).await.unwrap();
            io.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let typed = started.elapsed();
        io.write_all(b"\n").await.unwrap();
        io.flush().await.unwrap();
        let mut echo = [0u8; 6];
        with_deadline("the line's echo", io.read_exact(&mut echo))
            .await
            .unwrap();
        assert_eq!(&echo, b"ls -l\n");
        lines.push(started.elapsed() - typed);
    }
    lines.sort_unstable();
    let (median, worst) = (lines[lines.len() / 2], lines[lines.len() - 1]);
    eprintln!("Enter to echo over 30 lines: median {median:?}, worst {worst:?}");
    assert!(
        median < NO_DELAYED_ACK,
        "median {median:?}: a leg waits for delayed ACKs"
    );
}
