//! One request's life, in the order DESIGN.md gives: classify, authenticate, authorize, forward,
//! record. Also the one place where an error becomes a status code, a body in the kubelet's format
//! (KUBELET-API.md section 7) and a metric label.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::authn::{Authenticator, AuthnError, Identity, PeerCertificate};
use crate::authz::{Authorizer, AuthzError, Verdict};
use crate::forward::{Body, ForwardError, Upstream};
use crate::kubelet_api::{self, KubeletRequest, Rejection, Subresource, Verb};
use crate::metrics::{Metrics, Outcome};

/// Everything a request needs, built once in `run()`.
pub struct State {
    /// Who is calling.
    pub authenticator: Authenticator,
    /// May they.
    pub authorizer: Authorizer,
    /// The kubelet.
    pub upstream: Upstream,
    /// Counters.
    pub metrics: Metrics,
    /// Classifier options.
    pub classify: kubelet_api::Options,
}

/// What is known about a caller's connection before any request.
#[derive(Debug)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The client certificate's identity, read once per connection.
    pub certificate: PeerCertificate,
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
    /// The API server could not decide.
    Undecided { user: String, error: AuthzError },
    /// The kubelet failed.
    Upstream(ForwardError),
}

/// What is learnt about a request as it passes the steps; the record step reads it.
#[derive(Default)]
struct Trail {
    classified: Option<KubeletRequest>,
    who: Option<Arc<Identity>>,
    verdict: Option<Verdict>,
}

/// Runs the pipeline for one request and always produces a response.
pub async fn handle(state: &State, peer: &Peer, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut trail = Trail::default();
    let (response, outcome) = match guard(state, peer, request, &mut trail).await {
        Ok(response) => (response, Outcome::Allowed),
        Err(refusal) => refuse(&refusal),
    };

    // Record: one metric sample and one debug line per request, never a credential.
    let verb = trail.classified.as_ref().map_or("", |c| c.verb().as_str());
    let subresource = match (&trail.verdict, &trail.classified) {
        (Some(verdict), _) if verdict.allowed_by().is_some() => {
            verdict.allowed_by().map_or("", Subresource::as_str)
        }
        (_, Some(classified)) => classified.checks().last().map_or("", |s| s.as_str()),
        _ => "",
    };
    state
        .metrics
        .request(verb, subresource, outcome, response.status());
    tracing::debug!(
        peer = %peer.addr,
        %method,
        %path,
        user = trail.who.as_ref().map_or("", |who| who.name.as_str()),
        verb,
        subresource,
        decision = outcome.as_str(),
        status = response.status().as_u16(),
        "request"
    );
    response
}

/// The steps that can refuse, in order.
async fn guard(
    state: &State,
    peer: &Peer,
    request: Request<Incoming>,
    trail: &mut Trail,
) -> Result<Response<Body>, Refusal> {
    // Classify first: a request-target that could be read two ways is refused before it costs a
    // review, and what is authorized below is exactly what is forwarded.
    let classified = trail.classified.insert(
        kubelet_api::classify(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
            state.classify,
        )
        .map_err(Refusal::Unclassifiable)?,
    );

    // Authenticate: the connection's certificate, else the bearer token.
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

    // Forward as the guard's own identity; the caller's credentials stay here.
    state
        .upstream
        .forward(request, classified.upgrade().is_some())
        .await
        .map_err(Refusal::Upstream)
}

/// The response and metric outcome for a refusal.
fn refuse(refusal: &Refusal) -> (Response<Body>, Outcome) {
    match refusal {
        Refusal::Unclassifiable(rejection) => {
            let status = if rejection.is_method() {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::BAD_REQUEST
            };
            (text(status, format!("{rejection}\n")), Outcome::Rejected)
        }
        Refusal::Unauthenticated(AuthnError::Review(e)) => {
            tracing::warn!(error = %e, "token review failed");
            (
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Authentication error: the token review failed\n".into(),
                ),
                Outcome::Error,
            )
        }
        Refusal::Unauthenticated(e) => {
            tracing::debug!(reason = %e, "unauthenticated");
            (
                text(StatusCode::UNAUTHORIZED, "Unauthorized".into()),
                Outcome::Unauthenticated,
            )
        }
        Refusal::Forbidden { user, verb, checks } => {
            let checks: Vec<&str> = checks.iter().map(|s| s.as_str()).collect();
            let body = format!(
                "Forbidden (user={user}, verb={}, resource=nodes, subresource(s)=[{}])\n",
                verb.as_str(),
                checks.join(" ")
            );
            (text(StatusCode::FORBIDDEN, body), Outcome::Forbidden)
        }
        Refusal::Undecided { user, error } => {
            tracing::warn!(error = %error, cause = %error.source, user, "authorization failed");
            let body = format!(
                "Authorization error (user={user}, verb={}, resource=nodes, subresource={})",
                error.verb.as_str(),
                error.subresource.as_str()
            );
            (
                text(StatusCode::INTERNAL_SERVER_ERROR, body),
                Outcome::Error,
            )
        }
        Refusal::Upstream(e @ ForwardError::Timeout(_)) => {
            tracing::warn!(error = %e, "kubelet timed out");
            (
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Gateway Timeout: the kubelet did not answer in time\n".into(),
                ),
                Outcome::Allowed,
            )
        }
        Refusal::Upstream(e @ ForwardError::Unreachable(_)) => {
            tracing::warn!(error = %e, "kubelet unreachable");
            (
                text(
                    StatusCode::BAD_GATEWAY,
                    "Bad Gateway: the kubelet is unreachable\n".into(),
                ),
                Outcome::Allowed,
            )
        }
    }
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
