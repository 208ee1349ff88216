//! The kubelet's upgrade handshakes and what runs after the `101`.
//!
//! WebSocket per RFC 6455 section 4.2.2 with the k8s `*.channel.k8s.io` subprotocols (one leading
//! channel byte per binary message: 0 stdin, 1 stdout); SPDY/3.1 as `k8s.io/apimachinery`'s
//! `httpstream.Handshake` answers it (`X-Stream-Protocol-Version` negotiation, 403 on no match).
//! Both pick the first protocol the client offers that the kubelet supports.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{Body, EXEC_GREETING, SPDY_PROTOCOLS, Shared, WEBSOCKET_PROTOCOLS, empty, text};

/// `/exec`, `/attach`, `/portForward`: 400 unless the request asks for a WebSocket or SPDY/3.1.
pub(super) fn upgrade<B>(shared: Arc<Shared>, mut req: Request<B>) -> Response<Body> {
    let upgrade = header_values(req.headers(), header::UPGRADE);
    let wants = |proto: &str| upgrade.iter().any(|v| v.eq_ignore_ascii_case(proto));
    if wants("websocket") {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                "missing Sec-WebSocket-Key\n",
            );
        };
        let accept = derive_accept_key(key.as_bytes());
        let offered = header_values(req.headers(), header::SEC_WEBSOCKET_PROTOCOL);
        let chosen = offered
            .iter()
            .find(|p| WEBSOCKET_PROTOCOLS.contains(&p.as_str()));
        if !offered.is_empty() && chosen.is_none() {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                "requested protocol(s) are not supported\n",
            );
        }
        let mut resp = switching(&[(header::UPGRADE, "websocket")]);
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_ACCEPT,
            accept.parse().expect("accept key"),
        );
        if let Some(proto) = chosen {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                proto.parse().expect("protocol"),
            );
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            shared.upgrades.fetch_add(1, Ordering::SeqCst);
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let mut greeting = vec![1u8];
            greeting.extend_from_slice(EXEC_GREETING);
            if ws.send(Message::binary(greeting)).await.is_err() {
                return;
            }
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(data) = msg
                    && data.first() == Some(&0)
                {
                    let mut out = data.to_vec();
                    out[0] = 1;
                    if ws.send(Message::binary(out)).await.is_err() {
                        break;
                    }
                }
            }
            // As Go's tls.Conn.Close does when the kubelet ends the stream: close_notify first.
            let _ = tokio::io::AsyncWriteExt::shutdown(ws.get_mut()).await;
        });
        resp
    } else if wants("SPDY/3.1") {
        let offered = header_values(req.headers(), "x-stream-protocol-version");
        let chosen = offered
            .iter()
            .find(|p| SPDY_PROTOCOLS.contains(&p.as_str()));
        if !offered.is_empty() && chosen.is_none() {
            return text(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                &format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {SPDY_PROTOCOLS:?}\n"
                ),
            );
        }
        let mut resp = switching(&[(header::UPGRADE, "SPDY/3.1")]);
        if let Some(proto) = chosen {
            resp.headers_mut().insert(
                "x-stream-protocol-version",
                proto.parse().expect("protocol"),
            );
        }
        // `command=line`: a program reading a terminal in canonical mode, which answers nothing
        // until a whole line has arrived (so the kubelet's side only ACKs each keystroke).
        let by_line = req
            .uri()
            .query()
            .is_some_and(|q| q.contains("command=line"));
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            shared.upgrades.fetch_add(1, Ordering::SeqCst);
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            if by_line {
                echo_lines(&mut reader, &mut writer).await;
            } else {
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut writer).await;
        });
        resp
    } else {
        text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "Upgrade request required\n",
        )
    }
}

/// Echoes each complete line, and nothing before it.
async fn echo_lines(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            return;
        }
        line.extend_from_slice(&buf[..n]);
        while let Some(end) = line.iter().position(|b| *b == b'\n') {
            let rest = line.split_off(end + 1);
            if writer.write_all(&line).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            line = rest;
        }
    }
}

fn switching(headers: &[(header::HeaderName, &'static str)]) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    for (name, value) in headers {
        resp.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(value));
    }
    resp
}

/// Every comma-separated value of every `name` header, trimmed.
fn header_values(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}
