//! The pod a request to `exec`, `attach`, `portForward`, `run`, `containerLogs` or a container
//! log file acts on, split from the path exactly as the kubelet's routes split it
//! (`pkg/kubelet/server/server.go`), and the namespaced permission the API server would require
//! for the same action: what `--pod-scoped-authz` checks and what audit events name.
//!
//! Routes: `/exec|attach|run/{namespace}/{pod}[/{uid}]/{container}`,
//! `/portForward/{namespace}/{pod}[/{uid}]`, `/containerLogs/{namespace}/{pod}/{container}`, and
//! the kubelet's log directory `/logs/pods/{namespace}_{pod}_{uid}[/{container}/…]` (namespaces
//! and pod names never hold `_`, so the directory name splits one way only). A path of another
//! shape (or with an empty segment) names no pod the guard can check, so it is refused.

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
    /// The pod's UID, when the path has one.
    pub uid: Option<&'a str>,
    /// The container, when the path names one.
    pub container: Option<&'a str>,
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
    if let Some(rest) = path.strip_prefix("/logs/pods/") {
        return log_file(rest);
    }
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
    let target = |namespace, pod, uid, container| {
        PodScope::Pod(PodTarget {
            namespace,
            pod,
            uid,
            container,
            action,
        })
    };
    match (action, rest.as_slice()) {
        (PodAction::PortForward, [namespace, pod]) => target(namespace, pod, None, None),
        (PodAction::PortForward, [namespace, pod, uid]) => target(namespace, pod, Some(*uid), None),
        (_, [namespace, pod, container]) => target(namespace, pod, None, Some(*container)),
        (_, [namespace, pod, uid, container]) => {
            target(namespace, pod, Some(*uid), Some(*container))
        }
        _ => PodScope::Malformed,
    }
}

/// `/logs/pods/{namespace}_{pod}_{uid}[/{container}/…]`, after `/logs/pods/`: the listing of all
/// pods' directories (empty) names no pod.
fn log_file(rest: &str) -> PodScope<'_> {
    if rest.is_empty() {
        return PodScope::None;
    }
    let mut segments = rest.split('/');
    let directory = segments.next().unwrap_or_default();
    let mut parts = directory.split('_');
    let (Some(namespace), Some(pod), Some(uid), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return PodScope::Malformed;
    };
    if [namespace, pod, uid].iter().any(|part| part.is_empty()) {
        return PodScope::Malformed;
    }
    let container = segments.next().filter(|container| !container.is_empty());
    PodScope::Pod(PodTarget {
        namespace,
        pod,
        uid: Some(uid),
        container,
        action: PodAction::Log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(namespace: &'static str, pod: &'static str, action: PodAction) -> PodScope<'static> {
        PodScope::Pod(PodTarget {
            namespace,
            pod,
            uid: None,
            container: None,
            action,
        })
    }

    /// Namespace, pod and action only: what `--pod-scoped-authz` checks.
    fn checked(path: &str) -> PodScope<'_> {
        match pod_scope(path) {
            PodScope::Pod(target) => PodScope::Pod(PodTarget {
                uid: None,
                container: None,
                ..target
            }),
            other => other,
        }
    }

    #[test]
    fn uid_and_container_are_read_where_the_route_has_them() {
        let PodScope::Pod(exec) = pod_scope("/exec/ns/p/5f0c/app") else {
            panic!()
        };
        assert_eq!((exec.uid, exec.container), (Some("5f0c"), Some("app")));
        let PodScope::Pod(forward) = pod_scope("/portForward/ns/p/5f0c") else {
            panic!()
        };
        assert_eq!((forward.uid, forward.container), (Some("5f0c"), None));
        let PodScope::Pod(logs) = pod_scope("/containerLogs/ns/p/c") else {
            panic!()
        };
        assert_eq!((logs.uid, logs.container), (None, Some("c")));
    }

    #[test]
    fn container_log_files_name_their_pod() {
        let PodScope::Pod(file) = pod_scope("/logs/pods/team-a_web-0_6f1c-0001/app/0.log") else {
            panic!()
        };
        assert_eq!(
            (
                file.namespace,
                file.pod,
                file.uid,
                file.container,
                file.action
            ),
            (
                "team-a",
                "web-0",
                Some("6f1c-0001"),
                Some("app"),
                PodAction::Log
            )
        );
        let PodScope::Pod(dir) = pod_scope("/logs/pods/ns_p_u/") else {
            panic!()
        };
        assert_eq!((dir.pod, dir.container), ("p", None));
        assert_eq!(pod_scope("/logs/pods/"), PodScope::None);
        for malformed in [
            "/logs/pods/ns_p",
            "/logs/pods/ns_p_u_x/c",
            "/logs/pods/_p_u/c",
        ] {
            assert_eq!(pod_scope(malformed), PodScope::Malformed, "{malformed}");
        }
    }

    #[test]
    fn pods_are_split_as_the_kubelets_routes_split_them() {
        assert_eq!(
            checked("/exec/team-a/web/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(
            checked("/exec/team-a/web/5f0c/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(
            checked("/run/team-a/web/app"),
            pod("team-a", "web", PodAction::Exec)
        );
        assert_eq!(checked("/attach/ns/p/c"), pod("ns", "p", PodAction::Attach));
        assert_eq!(
            checked("/portForward/ns/p"),
            pod("ns", "p", PodAction::PortForward)
        );
        assert_eq!(
            checked("/portForward/ns/p/uid"),
            pod("ns", "p", PodAction::PortForward)
        );
        assert_eq!(
            checked("/containerLogs/ns/p/c"),
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
