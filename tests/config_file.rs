//! `serve --config FILE` (issue 5, Operations): a YAML file keyed by the flags' names without
//! dashes. Flags win over the environment, the environment over the file, the file over defaults;
//! an unknown key, a value its flag would refuse, or a list for a one-value flag is an exit-64
//! error naming the file and the line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use kubelet_guard::cli::{Cli, CliError, Command};
use kubelet_guard::config::ServeArgs;
use support::DEADLINE;

/// Writes `yaml` to a fresh file.
fn file(yaml: &str) -> PathBuf {
    let path = support::temp_dir("config-file").join("guard.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `serve --config=<path>` plus `flags`, parsed as the binary does.
fn parse(path: &Path, flags: &[&str]) -> Result<ServeArgs, CliError> {
    let mut argv = vec![
        "kubelet-guard".to_owned(),
        "serve".to_owned(),
        format!("--config={}", path.display()),
    ];
    argv.extend(flags.iter().map(|flag| (*flag).to_owned()));
    let cli = Cli::parse_args(argv)?;
    let Command::Serve(args) = cli.command else {
        panic!("not serve")
    };
    Ok(*args)
}

/// The line and message of a file error.
fn file_error(result: Result<ServeArgs, CliError>) -> (u64, String) {
    match result {
        Err(CliError::File { line, message, .. }) => (line, message),
        Err(other) => panic!("not a file error: {other}"),
        Ok(args) => panic!("accepted: {args:?}"),
    }
}

const COMPLETE: &str = "\
# The guard on node-1.
listen: 10.0.0.10:10250
tls-cert-file: /var/lib/kubelet/pki/kubelet.crt
tls-private-key-file: /var/lib/kubelet/pki/kubelet.key
upstream-ca-file: /etc/kubernetes/pki/ca.crt
upstream-token-file: /var/run/secrets/guard/token
node-name: node-1
idle-timeout: 2m
http2-max-streams: 100
anonymous-auth: true
auth-token-audiences: [https://kubernetes.default.svc, api]
tls-cipher-suites:
  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
  - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
";

#[test]
fn the_file_sets_what_flags_do_not() {
    let args = parse(&file(COMPLETE), &[]).unwrap();
    assert_eq!(args.listen.unwrap().to_string(), "10.0.0.10:10250");
    assert_eq!(args.http2_max_streams, 100);
    assert!(args.anonymous_auth);
    assert_eq!(args.tls_cipher_suites.len(), 2);
    let config = args.validate().unwrap();
    assert_eq!(config.limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(
        config.apiserver.audiences,
        ["https://kubernetes.default.svc", "api"]
    );
    assert_eq!(config.node_name.as_str(), "node-1");
    assert_eq!(
        config.serving.cert,
        Path::new("/var/lib/kubelet/pki/kubelet.crt")
    );
    // Untouched flags keep their defaults.
    assert_eq!(config.limits.max_connections, 10_000);
}

#[test]
fn an_empty_list_is_the_empty_flag_not_the_default() {
    let args = parse(&file("pod-scope-exempt-users: []\n"), &[]).unwrap();
    let flag = Cli::parse_args(["kubelet-guard", "serve", "--pod-scope-exempt-users="]).unwrap();
    let Command::Serve(flag) = flag.command else {
        panic!("not serve")
    };
    assert_eq!(args.pod_scope_exempt_users, flag.pod_scope_exempt_users);
    assert_ne!(
        args.pod_scope_exempt_users,
        parse(&file("# nothing\n"), &[])
            .unwrap()
            .pod_scope_exempt_users,
        "[] exempts no one, the default exempts the API server"
    );
}

#[test]
fn flags_win_over_the_file() {
    let args = parse(
        &file(COMPLETE),
        &[
            "--listen=127.0.0.1:10250",
            "--idle-timeout=5s",
            "--auth-token-audiences=other",
            "--anonymous-auth=false",
        ],
    )
    .unwrap();
    assert_eq!(args.listen.unwrap().to_string(), "127.0.0.1:10250");
    assert_eq!(args.idle_timeout, Duration::from_secs(5));
    assert_eq!(args.auth_token_audiences, ["other"]);
    assert!(!args.anonymous_auth);
    assert_eq!(
        args.http2_max_streams, 100,
        "the rest still comes from the file"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let path = file("listen: 127.0.0.1:10250\n\nlisten-address: 0.0.0.0:10250\n");
    let (line, message) = file_error(parse(&path, &[]));
    assert_eq!(line, 3);
    assert!(message.contains("\"listen-address\""), "{message}");
    let shown = parse(&path, &[]).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("--config {}:3: ", path.display())),
        "{shown}"
    );

    // Neither dashes nor the file itself can be keys.
    for yaml in ["--listen: 127.0.0.1:1\n", "config: other.yaml\n"] {
        let (line, _) = file_error(parse(&file(yaml), &[]));
        assert_eq!(line, 1, "{yaml}");
    }
}

/// A number is first what the file says (`1.10` is no `1.1`), then what YAML makes of it.
#[test]
fn numbers_keep_their_spelling_where_the_flag_takes_text() {
    let args = parse(
        &file(
            "node-name: &n 1.10\nupstream-server-name: *n\nauth-token-audiences: [1.10, 0x1F, x]\n\
             max-connections: 1_000\nmax-request-header-bytes: 0x10000\nanonymous-auth: yes\n\
             kubeconfig: 0x1F\nupstream-ca-file: !!int \"0x1F\"\n",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(args.node_name.as_deref(), Some("1.10"));
    assert_eq!(args.upstream_server_name.as_deref(), Some("1.10"));
    assert_eq!(args.kubeconfig.unwrap(), Path::new("0x1F"));
    assert_eq!(args.upstream_ca_file.unwrap(), Path::new("31"));
    assert_eq!(args.auth_token_audiences, ["1.10", "0x1F", "x"]);
    assert_eq!(args.max_connections, 1_000);
    assert_eq!(args.max_request_header_bytes, 0x10000);
    assert!(args.anonymous_auth);
    let (line, message) = file_error(parse(&file("\nidle-timeout: 90\n"), &[]));
    assert_eq!(line, 2, "{message}");
    assert!(message.contains("--idle-timeout"), "{message}");
}

#[test]
fn values_are_checked_by_their_flags_parser_with_their_line() {
    for (yaml, line, says) in [
        (
            "node-name: n\nmax-connections: many\n",
            2,
            "--max-connections",
        ),
        ("idle-timeout: soon\n", 1, "--idle-timeout"),
        ("mode: watch\n", 1, "--mode"),
        (
            "\n\ntls-min-version: VersionTLS10\n",
            3,
            "--tls-min-version",
        ),
        (
            "tls-cipher-suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            1,
            "--tls-cipher-suites",
        ),
        ("listen: [127.0.0.1:1, 127.0.0.1:2]\n", 1, "takes one value"),
        (
            "listen:\n  host: 127.0.0.1\n",
            2,
            "expected a value or a list of values",
        ),
        ("node-name: n\nlisten:\n", 2, "no value"),
        ("auth-token-audiences: [a, [b]]\n", 1, "plain values only"),
        (
            "tls-cipher-suites:\n- TLS_AES_128_GCM_SHA256\n- RC4\n",
            3,
            "--tls-cipher-suites",
        ),
    ] {
        let (at, message) = file_error(parse(&file(yaml), &[]));
        assert_eq!(at, line, "{yaml}: {message}");
        assert!(message.contains(says), "{yaml}: {message}");
        assert!(!message.contains('\n'), "one line: {message}");
    }
}

#[test]
fn a_file_that_is_not_a_mapping_is_an_error() {
    let (line, _) = file_error(parse(&file("listen: [unclosed\n"), &[]));
    assert!(line >= 1);
    let (_, message) = file_error(parse(&file("- listen\n"), &[]));
    assert!(message.contains("mapping"), "{message}");
    let (line, message) = file_error(parse(&file("node-name: a\nnode-name: b\n"), &[]));
    assert_eq!(line, 2);
    assert!(message.contains("duplicate"), "{message}");
    let (line, message) = file_error(parse(&support::temp_dir("none").join("absent.yaml"), &[]));
    assert_eq!(line, 0);
    assert!(message.contains("No such file"), "{message}");
    assert!(
        parse(&file("# nothing yet\n"), &[]).is_ok(),
        "an empty file sets nothing"
    );
}

/// Runs the binary with `args` and only `env`; exit code and stderr.
fn run(args: &[String], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Process::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the binary did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn the_binary_reads_the_file_below_the_environment() {
    // Every value here is refused by validation, so the binary exits before reading a file, and
    // which flag it names shows where the value in force came from.
    let path = file("upstream-timeout: 0s\nnode-name: node-1\n");
    let args = vec![
        "serve".to_owned(),
        format!("--config={}", path.display()),
        "--tls-cert-file=c".to_owned(),
        "--tls-private-key-file=k".to_owned(),
        "--upstream-ca-file=ca".to_owned(),
        "--upstream-token-file=t".to_owned(),
        "--apiserver-timeout=0s".to_owned(),
    ];
    let (code, stderr) = run(&args, &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "--config {}:1: --upstream-timeout",
            path.display()
        )),
        "from the file, which is named with the line: {stderr}"
    );

    let (code, stderr) = run(&args, &[("KUBELET_GUARD_UPSTREAM_TIMEOUT", "5s")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--apiserver-timeout") && !stderr.contains("--upstream-timeout"),
        "the environment wins: {stderr}"
    );
    assert!(
        !stderr.contains("--config"),
        "a flag's error does not name the file: {stderr}"
    );

    let (code, stderr) = run(
        &args,
        &[
            ("KUBELET_GUARD_UPSTREAM_TIMEOUT", "5s"),
            ("KUBELET_GUARD_APISERVER_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--apiserver-timeout"),
        "the flag wins: {stderr}"
    );

    let unknown = file("node-name: node-1\nlisen: 127.0.0.1:10250\n");
    let (code, stderr) = run(
        &[
            "serve".to_owned(),
            format!("--config={}", unknown.display()),
        ],
        &[],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2: ", unknown.display())) && stderr.contains("lisen"),
        "{stderr}"
    );
}
