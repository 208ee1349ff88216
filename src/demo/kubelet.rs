//! The demo's kubelet stand-in: NOT a kubelet. It answers the routes of a v1.36 kubelet with canned,
//! believable bodies behind mutual TLS, and a WebSocket exec that "runs" `id` and prints fake output,
//! so the demo can show what the guard lets through without a cluster. Like a kubelet locked to
//! its guard, it answers 401 to a caller without a client certificate, so the guard's lockdown
//! self-check finds it locked.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::forward::Body;

/// What the fake `id` prints.
pub const EXEC_OUTPUT: &str = "uid=0(root) gid=0(root) groups=0(root)\n";

/// Serves the stand-in on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, node: String) {
    let acceptor = TlsAcceptor::from(tls);
    let node: Arc<str> = node.into();
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, node) = (acceptor.clone(), Arc::clone(&node));
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let certified = tls.get_ref().1.peer_certificates().is_some();
            let service = service_fn(move |request| {
                let node = Arc::clone(&node);
                async move {
                    Ok::<_, Infallible>(if certified {
                        route(&node, request)
                    } else {
                        text(
                            StatusCode::UNAUTHORIZED,
                            "text/plain",
                            "Unauthorized".into(),
                        )
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

fn route(node: &str, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    let first = path.split('/').nth(1).unwrap_or_default();
    match first {
        "healthz" => text(StatusCode::OK, "text/plain", "ok".into()),
        "pods" | "runningpods" => text(StatusCode::OK, "application/json", pod_list()),
        "metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            format!(
                "# HELP kubelet_running_pods Number of pods running.\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods{{node=\"{node}\"}} 1\n"
            ),
        ),
        "stats" => text(
            StatusCode::OK,
            "application/json",
            format!(
                r#"{{"node":{{"nodeName":"{node}","cpu":{{"usageNanoCores":41000000}},"memory":{{"workingSetBytes":734003200}}}},"pods":[]}}"#
            ),
        ),
        "configz" | "flagz" | "statusz" => text(
            StatusCode::OK,
            "application/json",
            r#"{"kubeletconfig":{"port":10250,"readOnlyPort":0}}"#.into(),
        ),
        "containerLogs" => text(
            StatusCode::OK,
            "text/plain",
            "GET / 200\nGET /healthz 200\n".into(),
        ),
        "logs" => text(
            StatusCode::OK,
            "text/html",
            "<pre>\n<a href=\"syslog\">syslog</a>\n</pre>\n".into(),
        ),
        "exec" | "attach" => exec(request),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
    }
}

/// A WebSocket exec: the 101, one stdout frame of fake output, then a close.
fn exec(mut request: Request<Incoming>) -> Response<Body> {
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "Upgrade request required\n".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let protocol = request
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|offered| {
            offered
                .to_str()
                .ok()?
                .split(',')
                .map(str::trim)
                .find(|p| p.ends_with("channel.k8s.io"))
                .map(str::to_owned)
        });
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let mut stdout = vec![1u8];
        stdout.extend_from_slice(EXEC_OUTPUT.as_bytes());
        let _ = socket.send(Message::binary(stdout)).await;
        let _ = socket.close(None).await;
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

fn pod_list() -> String {
    r#"{"kind":"PodList","apiVersion":"v1","items":[{"metadata":{"name":"web","namespace":"default"},"spec":{"containers":[{"name":"app","image":"nginx"}]},"status":{"phase":"Running"}}]}"#.into()
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}
