//! The pod a request to `exec`, `attach`, `portForward`, `run`, `containerLogs` or a container
//! log file acts on, split from the path exactly as the kubelet's routes split it
//! (`pkg/kubelet/server/server.go`), and the namespaced permission the API server would require
//! for the same action: what `--pod-scoped-authz` checks and what audit events name.
//!
//! Routes: `/exec|attach|run/{namespace}/{pod}[/{uid}]/{container}`,
//! `/portForward/{namespace}/{pod}[/{uid}]`, `/containerLogs/{namespace}/{pod}/{container}`.
//! Container log files, which the kubelet serves from `/var/log` under `/logs/`, are reached two
//! ways: its pod directories `/logs/pods/{namespace}_{pod}_{uid}[/{container}/…]` and its links
//! to each container's current file, `/logs/containers/{pod}_{namespace}_{container}-{id}.log`
//! (namespaces, pod and container names never hold `_`, so each name splits one way only). On a
//! kubelet with `enableSystemLogQuery`, `/logs/?query=…` serves a file too: a `query` value
//! holding `/` or `\` is a path under `/var/log`, read here as if it were the path. A path of
//! another shape (or with an empty segment) names no pod the guard can check, so it is refused;
//! so is a file query the guard cannot read exactly as the kubelet does (escaped, with dot or
//! empty segments, several files, or beside a path).

use super::Verb;
use super::query::parse_query;

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

/// Splits `path` (the request path) and `query` (after `?`) into the pod a request acts on.
pub fn pod_scope<'a>(path: &'a str, query: Option<&'a str>) -> PodScope<'a> {
    if let Some(file) = path.strip_prefix("/logs/") {
        return log_request(file, query);
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

/// A request under `/logs/`, `file` being its path there: the file the kubelet serves is the
/// path, or in query mode the one file its `query` values name.
fn log_request<'a>(file: &'a str, query: Option<&'a str>) -> PodScope<'a> {
    let pairs = query.map(parse_query).unwrap_or_default();
    let mut files = pairs
        .iter()
        .filter(|pair| pair.key == "query" && pair.value.contains(['/', '\\']));
    let Some(queried) = files.next() else {
        return log_path(file);
    };
    // Only an unescaped value is the same bytes here and in the kubelet's decoded query.
    let raw = queried.raw.split_once('=').map_or("", |(_, value)| value);
    if files.next().is_some() || !file.is_empty() || raw != queried.value {
        return PodScope::Malformed;
    }
    // The kubelet's file server cleans the path: leading slashes go, dot segments would move it.
    let raw = raw.trim_start_matches('/');
    if raw.contains('\\') || raw.split('/').any(|segment| matches!(segment, "." | "..")) {
        return PodScope::Malformed;
    }
    log_path(raw)
}

/// The pod of a file path under `/var/log`; other files (the node's own logs) name none.
fn log_path(file: &str) -> PodScope<'_> {
    if let Some(rest) = file.strip_prefix("pods/") {
        log_file(rest)
    } else if let Some(rest) = file.strip_prefix("containers/") {
        container_link(rest)
    } else {
        PodScope::None
    }
}

/// `{pod}_{namespace}_{container}-{container id}.log`, after `/logs/containers/`: the kubelet's
/// link to a container's current log file. The listing (empty) names no pod.
fn container_link(rest: &str) -> PodScope<'_> {
    if rest.is_empty() {
        return PodScope::None;
    }
    let Some(name) = rest.strip_suffix(".log").filter(|name| !name.contains('/')) else {
        return PodScope::Malformed;
    };
    let Some([pod, namespace, tail]) = underscored(name) else {
        return PodScope::Malformed;
    };
    let Some((container, _)) = tail
        .rsplit_once('-')
        .filter(|(container, id)| !container.is_empty() && !id.is_empty())
    else {
        return PodScope::Malformed;
    };
    PodScope::Pod(PodTarget {
        namespace,
        pod,
        uid: None,
        container: Some(container),
        action: PodAction::Log,
    })
}

/// `{namespace}_{pod}_{uid}[/{container}/…]`, after `/logs/pods/`: the listing of all pods'
/// directories (empty) names no pod.
fn log_file(rest: &str) -> PodScope<'_> {
    if rest.is_empty() {
        return PodScope::None;
    }
    let mut segments = rest.split('/');
    let directory = segments.next().unwrap_or_default();
    let Some([namespace, pod, uid]) = underscored(directory) else {
        return PodScope::Malformed;
    };
    let container = segments.next().filter(|container| !container.is_empty());
    PodScope::Pod(PodTarget {
        namespace,
        pod,
        uid: Some(uid),
        container,
        action: PodAction::Log,
    })
}

/// The three non-empty parts of a log file or directory name joined by `_`.
fn underscored(name: &str) -> Option<[&str; 3]> {
    let parts: [&str; 3] = name.split('_').collect::<Vec<_>>().try_into().ok()?;
    parts.iter().all(|part| !part.is_empty()).then_some(parts)
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
        checked_query(path, "")
    }

    fn checked_query<'a>(path: &'a str, query: &'a str) -> PodScope<'a> {
        match pod_scope(path, Some(query).filter(|query| !query.is_empty())) {
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
        let PodScope::Pod(exec) = pod_scope("/exec/ns/p/5f0c/app", None) else {
            panic!()
        };
        assert_eq!((exec.uid, exec.container), (Some("5f0c"), Some("app")));
        let PodScope::Pod(forward) = pod_scope("/portForward/ns/p/5f0c", None) else {
            panic!()
        };
        assert_eq!((forward.uid, forward.container), (Some("5f0c"), None));
        let PodScope::Pod(logs) = pod_scope("/containerLogs/ns/p/c", None) else {
            panic!()
        };
        assert_eq!((logs.uid, logs.container), (None, Some("c")));
    }

    #[test]
    fn container_log_files_name_their_pod() {
        let PodScope::Pod(file) = pod_scope("/logs/pods/team-a_web-0_6f1c-0001/app/0.log", None)
        else {
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
        let PodScope::Pod(dir) = pod_scope("/logs/pods/ns_p_u/", None) else {
            panic!()
        };
        assert_eq!((dir.pod, dir.container), ("p", None));
        assert_eq!(pod_scope("/logs/pods/", None), PodScope::None);
        for malformed in [
            "/logs/pods/ns_p",
            "/logs/pods/ns_p_u_x/c",
            "/logs/pods/_p_u/c",
        ] {
            assert_eq!(
                pod_scope(malformed, None),
                PodScope::Malformed,
                "{malformed}"
            );
        }
    }

    #[test]
    fn container_log_links_name_their_pod() {
        let PodScope::Pod(link) =
            pod_scope("/logs/containers/web-0_team-a_app-server-4f9a01.log", None)
        else {
            panic!()
        };
        assert_eq!(
            (link.namespace, link.pod, link.uid, link.container),
            ("team-a", "web-0", None, Some("app-server"))
        );
        assert_eq!(pod_scope("/logs/containers/", None), PodScope::None);
        for malformed in [
            "/logs/containers/web-0_team-a_app-4f9a",
            "/logs/containers/web-0_team-a.log",
            "/logs/containers/web-0_team-a_app.log",
            "/logs/containers/web-0_team-a_app-4f9a.log/x",
            "/logs/containers/web-0_team-a_x_app-4f9a.log",
            "/logs/containers/_team-a_app-4f9a.log",
        ] {
            assert_eq!(
                pod_scope(malformed, None),
                PodScope::Malformed,
                "{malformed}"
            );
        }
    }

    #[test]
    fn a_node_log_query_for_a_file_is_read_as_the_file_path() {
        assert_eq!(
            checked_query("/logs/", "query=pods/team-b_db-0_7a2d/db/0.log"),
            pod("team-b", "db-0", PodAction::Log)
        );
        assert_eq!(
            checked_query(
                "/logs/",
                "tailLines=5&query=/containers/db-0_team-b_db-7a.log"
            ),
            pod("team-b", "db-0", PodAction::Log)
        );
        // Services (the journal) and node files name no pod.
        for query in [
            "query=kubelet",
            "query=kubelet&query=containerd",
            "query=apt/history.log",
        ] {
            assert_eq!(pod_scope("/logs/", Some(query)), PodScope::None, "{query}");
        }
        for query in [
            "query=pods%2Fteam-b_db-0_7a2d%2Fdb%2F0.log",
            "query=x/../pods/team-b_db-0_7a2d/db/0.log",
            "query=./pods/team-b_db-0_7a2d/db/0.log",
            "query=pods\\team-b_db-0_7a2d\\db\\0.log",
            "query=syslog/x&query=pods/team-b_db-0_7a2d/db/0.log",
        ] {
            assert_eq!(
                pod_scope("/logs/", Some(query)),
                PodScope::Malformed,
                "{query}"
            );
        }
        // A path beside a file query: served as the path by a kubelet without query mode.
        assert_eq!(
            pod_scope("/logs/syslog", Some("query=pods/team-b_db-0_7a2d/db/0.log")),
            PodScope::Malformed
        );
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
            assert_eq!(pod_scope(path, None), PodScope::None, "{path}");
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
            assert_eq!(pod_scope(path, None), PodScope::Malformed, "{path}");
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
