//! `--pod-scoped-authz`: the pod a request to `exec`, `attach`, `portForward`, `run` or
//! `containerLogs` acts on, split from the path exactly as the kubelet's routes split it
//! (`pkg/kubelet/server/server.go`), and the namespaced permission the API server would require
//! for the same action.
//!
//! Routes: `/exec|attach|run/{namespace}/{pod}[/{uid}]/{container}`,
//! `/portForward/{namespace}/{pod}[/{uid}]`, `/containerLogs/{namespace}/{pod}/{container}`. A path
//! of another shape (or with an empty segment) names no pod the guard can check, so it is refused.

use super::Verb;

/// The namespaced action a kubelet request performs on a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodAction {
    /// `create` on `pods/exec` (`/exec` and `/run`).
    Exec,
    /// `create` on `pods/attach`.
    Attach,
    /// `create` on `pods/portforward`.
    PortForward,
    /// `get` on `pods/log` (`/containerLogs`).
    Log,
}

/// The pod a request acts on, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodTarget<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's name.
    pub pod: &'a str,
    /// What the request does to it.
    pub action: PodAction,
}

/// What a path says about pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodScope<'a> {
    /// Not an endpoint that acts on one pod.
    None,
    /// An endpoint acting on this pod.
    Pod(PodTarget<'a>),
    /// A pod endpoint whose path does not have the route's shape.
    Malformed,
}

impl PodAction {
    /// The verb the API server requires.
    pub fn verb(self) -> Verb {
        match self {
            Self::Log => Verb::Get,
            Self::Exec | Self::Attach | Self::PortForward => Verb::Create,
        }
    }

    /// The `pods` subresource.
    pub fn subresource(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
            Self::Log => "log",
        }
    }
}

/// Splits `path` (the request path, without query) into the pod it acts on.
pub fn pod_scope(path: &str) -> PodScope<'_> {
    let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
    let (action, lengths): (PodAction, &[usize]) = match segments.next() {
        Some("exec" | "run") => (PodAction::Exec, &[3, 4]),
        Some("attach") => (PodAction::Attach, &[3, 4]),
        Some("portForward") => (PodAction::PortForward, &[2, 3]),
        Some("containerLogs") => (PodAction::Log, &[3]),
        _ => return PodScope::None,
    };
    let rest: Vec<&str> = segments.collect();
    if !lengths.contains(&rest.len()) || rest.iter().any(|segment| segment.is_empty()) {
        return PodScope::Malformed;
    }
    match rest.as_slice() {
        [namespace, pod, ..] => PodScope::Pod(PodTarget {
            namespace,
            pod,
            action,
        }),
        _ => PodScope::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &'static str, pod: &'static str, action: PodAction) -> PodScope<'static> {
        PodScope::Pod(PodTarget {
            namespace,
            pod,
            action,
        })
    }

    #[test]
    fn pods_are_split_as_the_kubelets_routes_split_them() {
        assert_eq!(
            pod_scope("/exec/team-a/web/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(
            pod_scope("/exec/team-a/web/5f0c/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(
            pod_scope("/run/team-a/web/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(
            pod_scope("/attach/ns/p/c"),
            pod("ns", "p", PodAction::Attach)
        );
        assert_eq!(
            pod_scope("/portForward/ns/p"),
            pod("ns", "p", PodAction::PortForward)
        );
        assert_eq!(
            pod_scope("/portForward/ns/p/uid"),
            pod("ns", "p", PodAction::PortForward)
        );
        assert_eq!(
            pod_scope("/containerLogs/ns/p/c"),
            pod("ns", "p", PodAction::Log)
        );
    }

    #[test]
    fn other_paths_name_no_pod_and_odd_shapes_are_malformed() {
        for path in [
            "/pods",
            "/metrics",
            "/stats/summary",
            "/logs/syslog",
            "/execx/ns/p/c",
            "/",
        ] {
            assert_eq!(pod_scope(path), PodScope::None, "{path}");
        }
        for path in [
            "/exec",
            "/exec/ns",
            "/exec/ns/p",
            "/exec/ns/p/u/c/x",
            "/exec/ns/p/c/",
            "/portForward/ns",
            "/containerLogs/ns/p/u/c",
        ] {
            assert_eq!(pod_scope(path), PodScope::Malformed, "{path}");
        }
    }

    #[test]
    fn actions_need_what_the_api_server_requires() {
        assert_eq!(
            (PodAction::Exec.verb(), PodAction::Exec.subresource()),
            (Verb::Create, "exec")
        );
        assert_eq!(
            (
                PodAction::PortForward.verb(),
                PodAction::PortForward.subresource()
            ),
            (Verb::Create, "portforward")
        );
        assert_eq!(
            (PodAction::Log.verb(), PodAction::Log.subresource()),
            (Verb::Get, "log")
        );
    }
}
