//! The demo's tour: what each caller tries, what the guard answers and why, printed as ready-to-paste
//! `curl` commands, or run by `demo --check`, which fails if any answer differs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// The demo's callers, by the shell variable holding their token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Holds `get` on nodes/metrics and nodes/stats.
    MetricsAgent,
    /// Holds only `get` on nodes/proxy.
    LegacyAgent,
    /// Holds everything on the kubelet API.
    Admin,
    /// Sends no credentials.
    Nobody,
}

/// One stop of the tour.
pub struct Step {
    /// What the caller tries.
    pub title: &'static str,
    /// Who tries it.
    pub caller: Caller,
    /// The request-target.
    pub target: &'static str,
    /// Whether it is a WebSocket exec handshake.
    pub websocket: bool,
    /// What the guard answers.
    pub expect: StatusCode,
    /// Text the answer's body (or a WebSocket's output) must hold.
    pub shows: &'static str,
    /// Why.
    pub why: &'static str,
}

/// The tokens of the callers.
pub struct Tokens {
    /// The metrics agent's.
    pub metrics: String,
    /// The legacy agent's.
    pub legacy: String,
    /// The admin's.
    pub admin: String,
}

/// The tour, in order.
pub const STEPS: [Step; 7] = [
    Step {
        title: "The metrics agent scrapes cAdvisor metrics",
        caller: Caller::MetricsAgent,
        target: "/metrics/cadvisor",
        websocket: false,
        expect: StatusCode::OK,
        shows: "kubelet_running_pods",
        why: "allowed by `get` on nodes/metrics, its fine-grained permission",
    },
    Step {
        title: "The metrics agent tries to list pods",
        caller: Caller::MetricsAgent,
        target: "/pods",
        websocket: false,
        expect: StatusCode::FORBIDDEN,
        shows: "verb=get, resource=nodes, subresource(s)=[pods proxy]",
        why: "it holds neither nodes/pods nor nodes/proxy",
    },
    Step {
        title: "The legacy agent lists pods",
        caller: Caller::LegacyAgent,
        target: "/pods",
        websocket: false,
        expect: StatusCode::OK,
        shows: "\"kind\":\"PodList\"",
        why: "nodes/pods denies, then the kubelet's own fallback to nodes/proxy allows: nothing breaks",
    },
    Step {
        title: "The legacy agent opens a WebSocket exec",
        caller: Caller::LegacyAgent,
        target: "/exec/default/web/app?command=id&stdout=1",
        websocket: true,
        expect: StatusCode::FORBIDDEN,
        shows: "Forbidden (user=system:serviceaccount:logging:legacy-agent, verb=create",
        why: "the exec hole, closed: a WebSocket handshake is a GET, so a kubelet lets `get` on \
              nodes/proxy run commands; kubelet-guard requires `create`",
    },
    Step {
        title: "The admin opens the same WebSocket exec",
        caller: Caller::Admin,
        target: "/exec/default/web/app?command=id&stdout=1",
        websocket: true,
        expect: StatusCode::SWITCHING_PROTOCOLS,
        shows: "uid=0(root)",
        why: "`create` on nodes/proxy: the stand-in kubelet \"runs\" id and the bytes are relayed",
    },
    Step {
        title: "The metrics agent tries a path that reads two ways",
        caller: Caller::MetricsAgent,
        target: "/stats/%2E%2E/exec/default/web/app?command=id",
        websocket: false,
        expect: StatusCode::BAD_REQUEST,
        shows: "percent-escapes are refused in the path",
        why: "nodes/stats to a naive proxy, an exec to the kubelet: rejected before any review",
    },
    Step {
        title: "Someone without a token lists pods",
        caller: Caller::Nobody,
        target: "/pods",
        websocket: false,
        expect: StatusCode::UNAUTHORIZED,
        shows: "Unauthorized",
        why: "no credentials, and --anonymous-auth is off",
    },
];

/// Prints the tour as shell commands against the running guard.
pub fn print(guard: SocketAddr, ca: &Path, tokens: &Tokens) {
    println!("Paste these into another shell:\n");
    println!("  export CA='{}' GUARD='https://{guard}'", ca.display());
    println!(
        "  export METRICS_TOKEN='{}' LEGACY_TOKEN='{}' ADMIN_TOKEN='{}'\n",
        tokens.metrics, tokens.legacy, tokens.admin
    );
    for (n, step) in STEPS.iter().enumerate() {
        println!("{}. {} -> {}", n + 1, step.title, status_text(step.expect));
        println!("   ({})", step.why);
        println!("   {}\n", curl(step));
    }
}

/// Runs every step against the guard; returns the steps whose answer differed.
pub async fn check(guard: SocketAddr, ca: &Path, tokens: &Tokens) -> Result<Vec<String>, String> {
    let client = Client::new(guard, ca)?;
    let mut failures = Vec::new();
    for (n, step) in STEPS.iter().enumerate() {
        let token = match step.caller {
            Caller::MetricsAgent => Some(tokens.metrics.as_str()),
            Caller::LegacyAgent => Some(tokens.legacy.as_str()),
            Caller::Admin => Some(tokens.admin.as_str()),
            Caller::Nobody => None,
        };
        let answer = if step.websocket {
            client.exec(step.target, token).await
        } else {
            client.get(step.target, token).await
        };
        match answer {
            Ok((status, body)) if status == step.expect && body.contains(step.shows) => {
                println!("ok   {}. {} -> {}", n + 1, step.title, status_text(status));
            }
            Ok((status, body)) => {
                println!(
                    "FAIL {}. {} -> {} (expected {}): {}",
                    n + 1,
                    step.title,
                    status_text(status),
                    status_text(step.expect),
                    body.trim()
                );
                failures.push(step.title.to_owned());
            }
            Err(e) => {
                println!("FAIL {}. {}: {e}", n + 1, step.title);
                failures.push(step.title.to_owned());
            }
        }
    }
    Ok(failures)
}

fn curl(step: &Step) -> String {
    let auth = match step.caller {
        Caller::MetricsAgent => " -H \"Authorization: Bearer $METRICS_TOKEN\"",
        Caller::LegacyAgent => " -H \"Authorization: Bearer $LEGACY_TOKEN\"",
        Caller::Admin => " -H \"Authorization: Bearer $ADMIN_TOKEN\"",
        Caller::Nobody => "",
    };
    let upgrade = if step.websocket {
        " --http1.1 --max-time 2 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
         -H 'Sec-WebSocket-Key: a3ViZWxldC1ndWFyZC1kZW1v' -H 'Sec-WebSocket-Protocol: v5.channel.k8s.io'"
    } else {
        ""
    };
    format!(
        "curl -si --path-as-is --cacert \"$CA\"{auth}{upgrade} \"$GUARD{}\"",
        step.target
    )
}

fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

/// A TLS client trusting the demo CA.
struct Client {
    guard: SocketAddr,
    connector: TlsConnector,
}

impl Client {
    fn new(guard: SocketAddr, ca: &Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in crate::tls::load_certs(ca, "--demo-ca").map_err(|e| e.to_string())? {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            guard,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(&self) -> Result<TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect(self.guard)
            .await
            .map_err(|e| e.to_string())?;
        self.connector
            .connect(ServerName::IpAddress(self.guard.ip().into()), tcp)
            .await
            .map_err(|e| e.to_string())
    }

    async fn get(&self, target: &str, token: Option<&str>) -> Result<(StatusCode, String), String> {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(self.connect().await?))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = Request::get(target).header(header::HOST, self.guard.to_string());
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn exec(
        &self,
        target: &str,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), String> {
        let mut request = format!("wss://{}{target}", self.guard)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let headers = request.headers_mut();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("v5.channel.k8s.io"),
        );
        if let Some(token) = token {
            let value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| e.to_string())?;
            headers.insert(header::AUTHORIZATION, value);
        }
        match tokio_tungstenite::client_async(request, self.connect().await?).await {
            Ok((mut socket, response)) => {
                let mut output = String::new();
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Binary(frame) = message {
                        output
                            .push_str(&String::from_utf8_lossy(frame.get(1..).unwrap_or_default()));
                    }
                }
                Ok((response.status(), output))
            }
            Err(tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                Ok((response.status(), body))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
