//! One request's life, in the order docs/design.md gives: classify, authenticate, authorize, forward,
//! record. Also the one place where an error becomes a status code, a body in the kubelet's format
//! (docs/kubelet-api.md section 7) and a metric label.

mod record;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::admission::Ticket;
use crate::audit::sink::Auditor;
use crate::authn::{Authenticator, AuthnError, PeerCertificate};
use crate::authz::{Authorizer, AuthzError, Resource};
use crate::config::{Mode, NodeName};
use crate::forward::{self, Body, Credential, ForwardError, Forwarded, Upstream};
use crate::kubelet_api::pod_scope::{PodScope, pod_scope};
use crate::kubelet_api::{self, KubeletRequest, Rejection, Subresource, Verb};
use crate::metrics::{Metrics, Outcome};
use crate::tls::CallerTrust;
use record::{Arrival, Pending, Trail};

/// Everything a request needs, built once in `run()`.
pub struct State {
    /// Who is calling.
    pub authenticator: Authenticator,
    /// May they.
    pub authorizer: Authorizer,
    /// The kubelet.
    pub upstream: Arc<Upstream>,
    /// Counters.
    pub metrics: Metrics,
    /// The audit trail.
    pub audit: Auditor,
    /// Classifier options.
    pub classify: kubelet_api::Options,
    /// Enforce or observe.
    pub mode: Mode,
    /// With `--pod-scoped-authz`, the users exempt from it; `None` when it is off.
    pub pod_scope_exempt: Option<Vec<String>>,
    /// The node, for audit events.
    pub node: NodeName,
}

/// What is known about a caller's connection before any request.
#[derive(Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate's identity, read once per connection.
    pub certificate: PeerCertificate,
    /// With a verified certificate, its chain, verified again when `--client-ca-file` changes.
    pub trust: Option<Box<CallerTrust>>,
    /// When the client certificate expires ([`PeerCertificate::expires`]): the connection and
    /// its upgraded streams end then.
    pub expires: Option<tokio::time::Instant>,
    /// The connection's count against its source's unproven connections, proven by the first
    /// request that is allowed (not anonymously).
    pub admission: Ticket,
    /// The connection's own kubelet connection: HTTP/1.1 callers only.
    pub lane: Option<forward::Lane>,
}

/// Why a request was not forwarded, or not answered by the kubelet; says whose fault it was.
#[derive(Debug)]
enum Refusal {
    /// The caller sent a request-target or method the guard does not forward.
    Unclassifiable(Rejection),
    /// The caller is not authenticated.
    Unauthenticated(AuthnError),
    /// The caller is authenticated but no check allowed.
    Forbidden {
        user: String,
        verb: Verb,
        checks: Vec<Subresource>,
    },
    /// A pod-scoped request whose caller lacks the namespaced permission on the pod.
    PodForbidden {
        user: String,
        verb: Verb,
        resource: Resource,
    },
    /// A pod-scoped endpoint whose path names no pod the guard can check.
    PodUnnamed,
    /// The API server could not decide.
    Undecided { user: String, error: AuthzError },
    /// The kubelet failed.
    Upstream(ForwardError),
}

/// Runs the pipeline for one request and always produces a response.
pub async fn handle(state: &State, peer: &Peer, request: Request<Incoming>) -> Response<Body> {
    let arrival = Arrival::of(&request, state.audit.is_enabled());
    // Recorded when answered, or when dropped unanswered.
    let mut pending = Pending::new(state, peer, arrival);
    let trail = &mut pending.trail;
    let (mut response, outcome, stream) = match guard(state, peer, request, trail).await {
        Ok(Forwarded { response, stream }) => {
            trail.kubelet_answered = true;
            (response, Outcome::Allowed, stream)
        }
        Err(refusal) => {
            let (response, outcome, message) = refuse(&refusal, &state.metrics);
            trail.message = Some(message);
            (response, outcome, None)
        }
    };
    // Record: metrics, audit and the Audit-ID header, never a credential.
    pending.answered(outcome, &mut response, stream);
    response
}

/// The steps that can refuse, in order.
async fn guard(
    state: &State,
    peer: &Peer,
    request: Request<Incoming>,
    trail: &mut Trail,
) -> Result<Forwarded, Refusal> {
    // Classify first: a request-target that could be read two ways is refused before it costs a
    // review, and what is authorized below is exactly what is forwarded. Observe mode too.
    let classified = *trail.classified.insert(
        kubelet_api::classify(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
            state.classify,
        )
        .map_err(Refusal::Unclassifiable)?,
    );

    let decided = decide(state, peer, &request, classified, trail).await;
    trail.authorized = decided.is_ok();
    // Observe mode forwards callers without a certificate with their own credentials, so the
    // kubelet's native authorization decides; the guard's would-be refusal is only recorded.
    let credential =
        if state.mode == Mode::Observe && matches!(peer.certificate, PeerCertificate::Absent) {
            if let Err(refusal) = &decided {
                let answer = refusal.answer();
                trail.observed = Some(answer.outcome);
                trail.message = Some(answer.message);
            }
            Credential::Caller
        } else {
            decided?;
            Credential::Guard
        };

    // Forward; in enforce mode as the guard's own identity, the caller's credentials stay here.
    trail.forwarded = true;
    state
        .upstream
        .forward(
            request,
            classified.upgrade().is_some(),
            credential,
            peer.lane.as_ref(),
            peer.expires,
        )
        .await
        .map_err(Refusal::Upstream)
}

/// Authenticates the caller and walks the checks `classified` needs; `Ok` means some check
/// allowed. There is no way to `Ok` but through an allow.
async fn decide(
    state: &State,
    peer: &Peer,
    request: &Request<Incoming>,
    classified: KubeletRequest,
    trail: &mut Trail,
) -> Result<(), Refusal> {
    // Authenticate: the connection's certificate, else the bearer token. A certificate whose CA
    // has left --client-ca-file since the handshake no longer names anyone.
    if peer.trust.as_ref().is_some_and(|trust| !trust.holds()) {
        return Err(Refusal::Unauthenticated(AuthnError::UntrustedCertificate));
    }
    let who = trail.who.insert(
        state
            .authenticator
            .authenticate(&peer.certificate, request.headers())
            .await
            .map_err(Refusal::Unauthenticated)?,
    );
    // Authorize: the fine-grained subresource first, nodes/proxy only where the kubelet falls back.
    let verdict = state
        .authorizer
        .authorize(who, classified.verb(), classified.checks())
        .await
        .map_err(|error| Refusal::Undecided {
            user: who.name.clone(),
            error,
        })?;
    let allowed = verdict.allowed_by().is_some();
    trail.verdict = Some(verdict);
    if !allowed {
        return Err(Refusal::Forbidden {
            user: who.name.clone(),
            verb: classified.verb(),
            checks: classified.checks().to_vec(),
        });
    }
    // Allowed something, the connection leaves its source's count. A credential alone does not
    // earn that: every pod has a token and every node a certificate. Anyone may be anonymous.
    if !who.is_anonymous() {
        peer.admission.prove();
    }
    // Pod scope: exec, attach, port-forward, run and container logs also need the namespaced
    // permission the API server would require, unless the caller is the API server itself.
    let Some(exempt) = &state.pod_scope_exempt else {
        return Ok(());
    };
    // Only a verified certificate can be the API server: a token user of the same name is not.
    let certified = matches!(peer.certificate, PeerCertificate::Identity { .. });
    if certified && exempt.iter().any(|user| *user == who.name) {
        return Ok(());
    }
    let target = match pod_scope(request.uri().path(), request.uri().query()) {
        PodScope::None => return Ok(()),
        PodScope::Malformed => return Err(Refusal::PodUnnamed),
        PodScope::Pod(target) => target,
    };
    let decision = state
        .authorizer
        .authorize_pod(who, target)
        .await
        .map_err(|error| Refusal::Undecided {
            user: who.name.clone(),
            error,
        })?;
    let resource = Resource::pod(&target);
    let allowed = decision.is_allow();
    trail.pod = Some((resource.clone(), decision));
    if allowed {
        Ok(())
    } else {
        Err(Refusal::PodForbidden {
            user: who.name.clone(),
            verb: target.action.verb(),
            resource,
        })
    }
}

/// What the guard answers for one refusal: everything a new refusal must decide, in one place.
struct Answer {
    /// The status code, which follows whose fault it was.
    status: StatusCode,
    /// The `decision` label.
    outcome: Outcome,
    /// The one-line message, in the kubelet's words where the kubelet has words for it.
    message: String,
    /// Whether the body ends with a newline: the kubelet writes its 403 with one, its 401 and
    /// 500 without, and the guard's own 400 and 405 and the 502 and 504 with one.
    newline: bool,
    /// The `kind` of `kubelet_guard_upstream_errors_total`, for the kubelet's faults.
    upstream: Option<&'static str>,
}

impl Refusal {
    /// The answer to this refusal.
    fn answer(&self) -> Answer {
        let answer = |status, outcome, message: String, newline| Answer {
            status,
            outcome,
            message,
            newline,
            upstream: None,
        };
        match self {
            Self::Unclassifiable(rejection) => answer(
                if rejection.is_method() {
                    StatusCode::METHOD_NOT_ALLOWED
                } else {
                    StatusCode::BAD_REQUEST
                },
                Outcome::Rejected,
                rejection.to_string(),
                true,
            ),
            Self::Unauthenticated(AuthnError::Review(_)) => answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                Outcome::Error,
                "Authentication error: the token review failed".into(),
                false,
            ),
            Self::Unauthenticated(_) => answer(
                StatusCode::UNAUTHORIZED,
                Outcome::Unauthenticated,
                "Unauthorized".into(),
                false,
            ),
            Self::Forbidden { user, verb, checks } => {
                let checks: Vec<&str> = checks.iter().map(|s| s.as_str()).collect();
                answer(
                    StatusCode::FORBIDDEN,
                    Outcome::Forbidden,
                    format!(
                        "Forbidden (user={user}, verb={}, resource=nodes, subresource(s)=[{}])",
                        verb.as_str(),
                        checks.join(" ")
                    ),
                    true,
                )
            }
            Self::PodForbidden {
                user,
                verb,
                resource,
            } => answer(
                StatusCode::FORBIDDEN,
                Outcome::Forbidden,
                match resource {
                    Resource::Pod(pod) => format!(
                        "Forbidden (user={user}, verb={}, resource=pods, subresource(s)=[{}], namespace={}, name={})",
                        verb.as_str(),
                        resource.subresource(),
                        pod.namespace,
                        pod.name,
                    ),
                    Resource::Node(_) => format!("Forbidden (user={user}, verb={})", verb.as_str()),
                },
                true,
            ),
            Self::PodUnnamed => answer(
                StatusCode::BAD_REQUEST,
                Outcome::Rejected,
                "pod-scoped authorization: the path names no pod as the kubelet's route does \
                 (/exec/{namespace}/{pod}[/{uid}]/{container})"
                    .into(),
                true,
            ),
            Self::Undecided { user, error } => answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                Outcome::Error,
                format!(
                    "Authorization error (user={user}, verb={}, resource={}, subresource={})",
                    error.verb.as_str(),
                    error.resource.resource(),
                    error.resource.subresource()
                ),
                false,
            ),
            Self::Upstream(error) => {
                let (status, message, kind) = match error {
                    ForwardError::Timeout(_) => (
                        StatusCode::GATEWAY_TIMEOUT,
                        "Gateway Timeout: the kubelet did not answer in time",
                        Some("timeout"),
                    ),
                    ForwardError::Unreachable(_) => (
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway: the kubelet is unreachable",
                        Some("unreachable"),
                    ),
                    ForwardError::Refused => (
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway: the kubelet refused the guard's credential",
                        Some("refused"),
                    ),
                    // Ours, not the kubelet's: no upstream error to count.
                    ForwardError::Internal(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal Server Error: the request could not be forwarded",
                        None,
                    ),
                };
                Answer {
                    status,
                    outcome: Outcome::Allowed,
                    message: message.into(),
                    newline: true,
                    upstream: kind,
                }
            }
        }
    }
}

/// Logs and counts a refusal and builds its response; returns the response, the metric outcome
/// and the message.
fn refuse(refusal: &Refusal, metrics: &Metrics) -> (Response<Body>, Outcome, String) {
    match refusal {
        Refusal::Unauthenticated(AuthnError::Review(e)) => {
            tracing::warn!(error = %e, cause = %forward::Causes(e), "token review failed");
        }
        Refusal::Unauthenticated(e) => tracing::debug!(reason = %e, "unauthenticated"),
        Refusal::Undecided { user, error } => {
            tracing::warn!(
                error = %error,
                cause = %error.source,
                because = %forward::Causes(&error.source),
                user,
                "authorization failed"
            );
        }
        Refusal::Upstream(e) => {
            tracing::warn!(error = %e, cause = %forward::Causes(e), "forwarding failed");
        }
        _ => {}
    }
    let answer = refusal.answer();
    if let Some(kind) = answer.upstream {
        metrics.upstream_error(kind);
    }
    let body = if answer.newline {
        format!("{}\n", answer.message)
    } else {
        answer.message.clone()
    };
    (text(answer.status, body), answer.outcome, answer.message)
}

/// A plain-text response of the guard's own.
fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use http::{Method, Version};

    use super::*;
    use crate::authz::PodResource;
    use crate::kubelet_api::pod_scope::PodAction;
    use crate::review::ReviewError;

    /// What `refuse` answered: status, decision label, the body as sent, and the upstream errors
    /// it counted by kind.
    async fn refused(refusal: &Refusal) -> (StatusCode, Outcome, String, Vec<(String, u64)>) {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(registry.clone()).unwrap();
        let (response, outcome, message) = refuse(refusal, &metrics);
        let status = response.status();
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            body.trim_end_matches('\n'),
            message,
            "the message is the body"
        );
        let counted = registry
            .gather()
            .into_iter()
            .filter(|family| family.name() == "kubelet_guard_upstream_errors_total")
            .flat_map(|family| family.get_metric().to_vec())
            .map(|metric| {
                let kind = metric.get_label()[0].value().to_owned();
                (kind, metric.get_counter().get_value() as u64)
            })
            .collect();
        (status, outcome, body, counted)
    }

    fn undecided(source: ReviewError) -> Refusal {
        Refusal::Undecided {
            user: "alice".into(),
            error: AuthzError {
                verb: Verb::Get,
                resource: Resource::Node(Subresource::Metrics),
                source,
            },
        }
    }

    /// An error as the pooled client gives it for a kubelet that refuses connections.
    async fn unreachable() -> ForwardError {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let client =
            Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
        let error = client
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .expect_err("nothing listens");
        ForwardError::Unreachable(Box::new(error))
    }

    #[tokio::test]
    async fn the_callers_faults_are_4xx_in_the_kubelets_words() {
        let cases = [
            (
                Refusal::Unclassifiable(Rejection::DotSegment),
                StatusCode::BAD_REQUEST,
                Outcome::Rejected,
                format!("{}\n", Rejection::DotSegment),
            ),
            (
                Refusal::Unclassifiable(Rejection::MethodNotAllowed {
                    method: Method::OPTIONS,
                    version: Version::HTTP_11,
                }),
                StatusCode::METHOD_NOT_ALLOWED,
                Outcome::Rejected,
                format!(
                    "{}\n",
                    Rejection::MethodNotAllowed {
                        method: Method::OPTIONS,
                        version: Version::HTTP_11,
                    }
                ),
            ),
            (
                Refusal::Unauthenticated(AuthnError::InvalidToken),
                StatusCode::UNAUTHORIZED,
                Outcome::Unauthenticated,
                "Unauthorized".into(),
            ),
            (
                Refusal::Unauthenticated(AuthnError::NoCredentials),
                StatusCode::UNAUTHORIZED,
                Outcome::Unauthenticated,
                "Unauthorized".into(),
            ),
            (
                Refusal::Forbidden {
                    user: "alice".into(),
                    verb: Verb::Get,
                    checks: vec![Subresource::Metrics, Subresource::Proxy],
                },
                StatusCode::FORBIDDEN,
                Outcome::Forbidden,
                "Forbidden (user=alice, verb=get, resource=nodes, subresource(s)=[metrics proxy])\n"
                    .into(),
            ),
            (
                Refusal::PodForbidden {
                    user: "alice".into(),
                    verb: Verb::Create,
                    resource: Resource::Pod(Box::new(PodResource {
                        namespace: "team-a".into(),
                        name: "web-0".into(),
                        action: PodAction::Exec,
                    })),
                },
                StatusCode::FORBIDDEN,
                Outcome::Forbidden,
                "Forbidden (user=alice, verb=create, resource=pods, subresource(s)=[exec], \
                 namespace=team-a, name=web-0)\n"
                    .into(),
            ),
            (
                Refusal::PodUnnamed,
                StatusCode::BAD_REQUEST,
                Outcome::Rejected,
                "pod-scoped authorization: the path names no pod as the kubelet's route does \
                 (/exec/{namespace}/{pod}[/{uid}]/{container})\n"
                    .into(),
            ),
        ];
        for (refusal, status, outcome, body) in cases {
            let answered = refused(&refusal).await;
            assert_eq!(answered, (status, outcome, body, vec![]), "{refusal:?}");
        }
    }

    #[tokio::test]
    async fn a_failed_review_is_a_500_that_names_no_cause_to_the_caller() {
        let failures = [
            ReviewError::Timeout(Duration::from_secs(10)),
            ReviewError::Status {
                code: 503,
                message: "the server is shutting down".into(),
            },
            ReviewError::Inconsistent("both allowed and denied".into()),
        ];
        for failure in failures {
            let detail = failure.to_string();
            let (status, outcome, body, counted) = refused(&undecided(failure)).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(outcome, Outcome::Error);
            assert_eq!(
                body,
                "Authorization error (user=alice, verb=get, resource=nodes, subresource=metrics)"
            );
            assert!(counted.is_empty());
            assert!(!body.contains(&detail), "{detail}");
        }
        let (status, outcome, body, _) = refused(&Refusal::Unauthenticated(AuthnError::Review(
            ReviewError::Timeout(Duration::from_secs(10)),
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(outcome, Outcome::Error);
        assert_eq!(body, "Authentication error: the token review failed");
    }

    #[tokio::test]
    async fn the_status_of_a_forwarding_failure_follows_whose_fault_it_was() {
        let cases = [
            (
                unreachable().await,
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: the kubelet is unreachable\n",
                vec![("unreachable".to_owned(), 1)],
            ),
            (
                ForwardError::Refused,
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: the kubelet refused the guard's credential\n",
                vec![("refused".to_owned(), 1)],
            ),
            (
                ForwardError::Timeout(Duration::from_secs(30)),
                StatusCode::GATEWAY_TIMEOUT,
                "Gateway Timeout: the kubelet did not answer in time\n",
                vec![("timeout".to_owned(), 1)],
            ),
            (
                ForwardError::Internal("no client for callers"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error: the request could not be forwarded\n",
                vec![],
            ),
        ];
        for (error, status, body, counted) in cases {
            let refusal = Refusal::Upstream(error);
            // Authorized, so the decision label stays `allowed` whatever the kubelet did.
            let answered = refused(&refusal).await;
            assert_eq!(
                answered,
                (status, Outcome::Allowed, body.to_owned(), counted),
                "{refusal:?}"
            );
        }
    }
}
