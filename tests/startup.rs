//! A broken configuration stops the binary before it serves (parse once, at the edge): exit status 64 and
//! a message on stderr naming the flag and, for files, the file. `serve --help` documents every
//! flag in a line and its `KUBELET_GUARD_*` environment twin, and the twins are checked like the
//! flags. Every run is the real binary with a cleared environment, killed if still up after 10 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use support::DEADLINE;
use support::pki::{Ca, CertKey};

/// sysexits EX_USAGE.
const EXIT_CONFIG: i32 = 64;
/// The fixture's API server: nothing listens there, and nothing in these tests calls it.
const API_SERVER: &str = "https://127.0.0.1:6443";

/// Valid files for every flag, so each test breaks exactly one thing.
struct Fixture {
    dir: PathBuf,
    ca: Ca,
    serving: CertKey,
    other: CertKey,
    kubelet_ca: Ca,
    upstream: CertKey,
    kubeconfig: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = support::temp_dir("startup");
        let ca = Ca::new("cluster");
        let kubelet_ca = Ca::new("kubelet");
        let kubeconfig = dir.join("kubeconfig");
        let yaml = support::kubeconfig(API_SERVER, ca.cert_path(), "{token: t}");
        std::fs::write(&kubeconfig, yaml).unwrap();
        Fixture {
            serving: ca.server_cert("node-1", &["127.0.0.1"]),
            other: ca.server_cert("node-2", &["127.0.0.1"]),
            upstream: kubelet_ca.client_cert("kubelet-guard", &[]),
            dir,
            ca,
            kubelet_ca,
            kubeconfig,
        }
    }

    /// `serve` with a complete, valid set of flags on ephemeral loopback ports.
    fn args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        [
            ("--listen", "127.0.0.1:0".to_owned()),
            ("--metrics-listen", "127.0.0.1:0".to_owned()),
            ("--tls-cert-file", path(&self.serving.cert_path)),
            ("--tls-private-key-file", path(&self.serving.key_path)),
            ("--client-ca-file", path(self.ca.cert_path())),
            ("--upstream", "https://127.0.0.1:10250".to_owned()),
            ("--upstream-ca-file", path(self.kubelet_ca.cert_path())),
            (
                "--upstream-client-cert-file",
                path(&self.upstream.cert_path),
            ),
            ("--upstream-client-key-file", path(&self.upstream.key_path)),
            ("--kubeconfig", path(&self.kubeconfig)),
            ("--node-name", "node-1".to_owned()),
        ]
        .into_iter()
        .fold(vec!["serve".to_owned()], |mut args, (flag, value)| {
            args.push(format!("{flag}={value}"));
            args
        })
    }

    /// Writes `contents` to a file in the fixture's directory.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// `args` with `flag` removed, then set to `value` if given.
fn set(mut args: Vec<String>, flag: &str, value: Option<&Path>) -> Vec<String> {
    args.retain(|arg| !arg.starts_with(&format!("{flag}=")));
    if let Some(value) = value {
        args.push(format!("{flag}={}", value.display()));
    }
    args
}

/// Reads `pipe` to its end on a thread; the text arrives when the process has closed it.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// Starts the binary with `args` and only the environment variables in `env`.
fn spawn(args: &[String], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"));
    command.args(args);
    spawn_command(command, env)
}

/// Starts `command` with only the environment variables in `env` and its output on pipes.
fn spawn_command(mut command: Command, env: &[(&str, &str)]) -> Child {
    command
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the binary to completion: exit code, stdout, stderr. Kills it and fails after 10 s.
fn run(args: &[String], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = spawn(args, env);
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let Ok(stderr) = stderr.recv_timeout(DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still running after {DEADLINE:?}: {args:?}");
    };
    let stdout = stdout.recv_timeout(DEADLINE).unwrap_or_default();
    let code = child.wait().unwrap().code().expect("exited, not signalled");
    (code, stdout, stderr)
}

/// Starts the binary, returns its "serving" log line (if one comes within 10 s) and kills it.
fn serving_line(args: &[String], env: &[(&str, &str)]) -> Option<String> {
    let lines = lines_until_serving(args, env);
    lines
        .last()
        .filter(|line| line.contains("kubelet-guard serving"))
        .cloned()
}

/// Starts the binary with stderr on a pipe (not a terminal), returns its stderr lines up to and
/// including the "serving" line (or all it wrote within 10 s) and kills it.
fn lines_until_serving(args: &[String], env: &[(&str, &str)]) -> Vec<String> {
    lines_until_serving_then(args, env, |_| ()).0
}

/// As [`lines_until_serving`], and what `look` finds in the binary once it has logged them,
/// before it is killed.
fn lines_until_serving_then<T>(
    args: &[String],
    env: &[(&str, &str)],
    look: impl FnOnce(&Child) -> T,
) -> (Vec<String>, T) {
    lines_until_child_serves(spawn(args, env), look)
}

/// As [`lines_until_serving_then`], for a binary already started as `child`.
fn lines_until_child_serves<T>(
    mut child: Child,
    look: impl FnOnce(&Child) -> T,
) -> (Vec<String>, T) {
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(DEADLINE) {
        let serving = line.contains("kubelet-guard serving");
        seen.push(line);
        if serving {
            break;
        }
    }
    let found = look(&child);
    let _ = child.kill();
    let _ = child.wait();
    (seen, found)
}

/// Asserts exit status 64 and a stderr that contains every one of `names`.
fn assert_refused(args: &[String], env: &[(&str, &str)], names: &[&str]) {
    let (code, _, stderr) = run(args, env);
    assert_eq!(code, EXIT_CONFIG, "{args:?}: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "stderr names {name}: {stderr}");
    }
    assert!(
        !stderr.contains("kubelet-guard serving"),
        "refused before serving: {stderr}"
    );
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn the_fixture_starts_a_guard() {
    let fixture = Fixture::new();
    let serving = serving_line(&fixture.args(), &[]);
    assert!(
        serving.is_some(),
        "the valid flags serve: so every refusal below is its flag's"
    );
}

/// The names of the running binary's threads that serve caller connections once it serves,
/// looked at until there are `expected` of them or 10 s have passed: a thread names itself
/// (its `comm`, at most 15 bytes: "guard-worker-N") only once it runs, which may be after the
/// binary logs that it serves.
fn worker_threads(args: &[String], expected: usize) -> Vec<String> {
    let (logged, names) = lines_until_serving_then(args, &[], |child| {
        let started = std::time::Instant::now();
        loop {
            let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim_end().to_owned())
                .filter(|name| name.starts_with("guard-worker-"))
                .collect();
            if names.len() == expected || started.elapsed() > DEADLINE {
                names.sort();
                return names;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    });
    assert!(
        logged
            .last()
            .is_some_and(|line| line.contains("kubelet-guard serving")),
        "the binary did not serve: {logged:#?}"
    );
    names
}

#[test]
fn worker_threads_sets_how_many_threads_serve_callers() {
    let fixture = Fixture::new();
    let mut args = fixture.args();
    args.push("--worker-threads=3".into());
    assert_eq!(
        worker_threads(&args, 3),
        ["guard-worker-0", "guard-worker-1", "guard-worker-2"]
    );
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        worker_threads(&fixture.args(), cpus).len(),
        cpus,
        "one per CPU"
    );
    // One CPU each: no more workers than the CPUs the process may run on (which a CPU quota,
    // unlike `available_parallelism`, does not lower).
    let allowed = rustix::thread::sched_getaffinity(None).unwrap().count();
    let mut pinned = fixture.args();
    pinned.push(format!("--worker-threads={}", allowed + 1));
    pinned.push("--worker-cpu-affinity".into());
    assert_refused(&pinned, &[], &["--worker-cpu-affinity", "--worker-threads"]);
    // Before any port is bound: with the admin port taken, the threads are still what it names.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for arg in &mut pinned {
        if arg.starts_with("--metrics-listen=") {
            *arg = format!("--metrics-listen={}", taken.local_addr().unwrap());
        }
    }
    let (code, _, stderr) = run(&pinned, &[]);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(
        stderr.contains("--worker-cpu-affinity") && !stderr.contains("--metrics-listen"),
        "refused before binding: {stderr}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_escapes() {
    let fixture = Fixture::new();
    let lines = lines_until_serving(&fixture.args(), &[]);
    assert!(
        lines
            .last()
            .is_some_and(|line| line.contains("kubelet-guard serving")),
        "{lines:?}"
    );
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an ANSI escape in {line:?}");
    }
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
    let fixture = Fixture::new();
    // Started at a soft limit of 512 files, as a container runtime may start it at 1024.
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -Sn 512 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(fixture.args());
    let (logged, limits) = lines_until_child_serves(spawn_command(command, &[]), |child| {
        std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap()
    });
    assert!(
        logged
            .last()
            .is_some_and(|line| line.contains("kubelet-guard serving")),
        "{logged:#?}"
    );
    let open_files: Vec<&str> = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (soft, hard) = (open_files[3], open_files[4]);
    assert_eq!(soft, hard, "{limits}");
    assert_ne!(
        soft, "512",
        "this machine's hard limit is 512: the test shows nothing"
    );
}

#[test]
fn a_log_filter_that_does_not_parse_is_said_not_ignored() {
    let fixture = Fixture::new();
    let lines = lines_until_serving(&fixture.args(), &[("KUBELET_GUARD_LOG", "info,x=[")]);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("KUBELET_GUARD_LOG=\"info,x=[\" is not a log filter")),
        "{lines:?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|line| line.contains("kubelet-guard serving")),
        "it serves at the default level: {lines:?}"
    );
}

#[test]
fn listen_is_the_node_address_or_required_never_a_wildcard() {
    let fixture = Fixture::new();
    let without = set(fixture.args(), "--listen", None);
    assert_refused(&without, &[], &["--listen", "NODE_IP"]);
    assert_refused(&without, &[("NODE_IP", "node-1")], &["--listen", "NODE_IP"]);

    // An address of the loopback range nothing else on the machine uses, on the kubelet's port.
    let serving = serving_line(&without, &[("NODE_IP", "127.83.41.7")]);
    let serving = serving.expect("NODE_IP alone is enough to serve");
    assert!(serving.contains("127.83.41.7:10250"), "{serving}");
}

#[test]
fn serving_files_that_cannot_be_used_are_named() {
    let f = Fixture::new();
    let missing = f.dir.join("missing.crt");
    let garbled = f.file(
        "garbled.crt",
        "-----BEGIN CERTIFICATE-----\nnot*base64!\n-----END CERTIFICATE-----\n",
    );
    let no_pem = f.file("empty.crt", "just text\n");
    let key = display(&f.serving.key_path);
    assert_refused(
        &set(f.args(), "--tls-cert-file", None),
        &[],
        &["--tls-cert-file"],
    );
    for (flag, path) in [
        ("--tls-cert-file", &missing),
        ("--tls-cert-file", &garbled),
        ("--tls-cert-file", &no_pem),
        ("--tls-private-key-file", &garbled),
        ("--client-ca-file", &garbled),
        ("--upstream-ca-file", &missing),
        ("--upstream-client-cert-file", &no_pem),
    ] {
        assert_refused(
            &set(f.args(), flag, Some(path)),
            &[],
            &[flag, &display(path)],
        );
    }
    // A key from another certificate: the key's flag and file, and the certificate it misses.
    let mismatched = set(f.args(), "--tls-private-key-file", Some(&f.other.key_path));
    let other_key = display(&f.other.key_path);
    assert_refused(
        &mismatched,
        &[],
        &["--tls-private-key-file", &other_key, "--tls-cert-file"],
    );
    assert_ne!(other_key, key);
}

#[test]
fn a_node_name_that_no_node_can_have_is_refused() {
    let f = Fixture::new();
    assert_refused(
        &set(f.args(), "--node-name", Some(Path::new(""))),
        &[],
        &["--node-name"],
    );
    assert_refused(
        &set(f.args(), "--node-name", Some(Path::new("Node_1"))),
        &[],
        &["--node-name"],
    );
    let unnamed = set(f.args(), "--node-name", None);
    assert_refused(
        &unnamed,
        &[("NODE_NAME", "")],
        &["--node-name", "NODE_NAME"],
    );
    assert_refused(
        &unnamed,
        &[("KUBELET_GUARD_NODE_NAME", "Bad_Name")],
        &["--node-name"],
    );
}

/// Without `--node-name` and `NODE_NAME` the guard names its node after the host, as the
/// kubelet does (docs/kubelet-api.md section 1 mentions only the flag and `NODE_NAME`).
#[test]
fn without_a_node_name_the_host_name_is_used() {
    let f = Fixture::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim().to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    let unnamed = set(f.args(), "--node-name", None);
    if !valid {
        assert_refused(&unnamed, &[], &["--node-name", "host name"]);
        return;
    }
    let serving = serving_line(&unnamed, &[("KUBELET_GUARD_LOG_FORMAT", "json")]);
    let serving = serving.expect("the guard serves under the host's name");
    assert!(
        serving.contains(&format!("\"node\":\"{host}\"")),
        "{serving}"
    );
}

#[test]
fn unusable_upstream_and_apiserver_settings_are_named() {
    let f = Fixture::new();
    let http = set(
        f.args(),
        "--upstream",
        Some(Path::new("http://127.0.0.1:10250")),
    );
    assert_refused(&http, &[], &["--upstream", "https"]);
    let missing = f.dir.join("no-kubeconfig");
    let kubeconfig = set(f.args(), "--kubeconfig", Some(&missing));
    assert_refused(&kubeconfig, &[], &["--kubeconfig", &display(&missing)]);
    let soon = set(f.args(), "--apiserver-timeout", Some(Path::new("soon")));
    assert_refused(&soon, &[], &["--apiserver-timeout", "soon"]);

    let empty = f.file("token", "\n");
    let token = set(
        set(f.args(), "--upstream-client-cert-file", None),
        "--upstream-client-key-file",
        None,
    );
    let token = set(token, "--upstream-token-file", Some(&empty));
    assert_refused(&token, &[], &["--upstream-token-file", &display(&empty)]);
}

/// `--kubelet-lockdown=require` needs the guard's own API-server token to probe the kubelet with:
/// none, or a token file with nothing in it, is a configuration that can never turn ready.
#[test]
fn a_lockdown_that_cannot_be_proven_is_refused() {
    let f = Fixture::new();
    let require = set(f.args(), "--kubelet-lockdown", Some(Path::new("require")));
    let empty = f.file("empty-token", "");
    let empty_file = format!("{{tokenFile: {}}}", empty.display());
    let empty_file_says = format!("{} is empty", display(&empty));
    for (name, user, says) in [
        ("tokenless", "{}", "no API-server token"),
        ("empty-inline-token", "{token: \"\"}", "no API-server token"),
        (
            "empty-token-file",
            empty_file.as_str(),
            empty_file_says.as_str(),
        ),
    ] {
        let yaml = support::kubeconfig(API_SERVER, f.ca.cert_path(), user);
        let args = set(require.clone(), "--kubeconfig", Some(&f.file(name, &yaml)));
        assert_refused(&args, &[], &["--kubelet-lockdown", says]);
    }
}

#[test]
fn environment_twins_are_checked_like_their_flags() {
    let f = Fixture::new();
    let missing = f.dir.join("missing.pem");
    let missing = display(&missing);
    for (flag, variable, value) in [
        ("--node-name", "KUBELET_GUARD_NODE_NAME", "Bad_Name"),
        (
            "--upstream",
            "KUBELET_GUARD_UPSTREAM",
            "http://127.0.0.1:10250",
        ),
        (
            "--apiserver-timeout",
            "KUBELET_GUARD_APISERVER_TIMEOUT",
            "soon",
        ),
        (
            "--tls-cert-file",
            "KUBELET_GUARD_TLS_CERT_FILE",
            missing.as_str(),
        ),
        ("--kubeconfig", "KUBELET_GUARD_KUBECONFIG", missing.as_str()),
    ] {
        let args = set(f.args(), flag, None);
        assert_refused(&args, &[(variable, value)], &[flag]);
    }
}

#[test]
fn help_describes_every_flag_and_its_environment_twin() {
    let (code, top, _) = run(&["--help".to_owned()], &[]);
    assert_eq!(code, 0, "{top}");
    assert!(top.contains("serve"), "{top}");

    let (code, help, stderr) = run(&["serve".to_owned(), "--help".to_owned()], &[]);
    assert_eq!(code, 0, "{stderr}");
    let flags = flag_blocks(&help);
    for expected in Fixture::new().args().iter().skip(1) {
        let name = expected.split('=').next().unwrap();
        assert!(
            flags.iter().any(|(flag, _)| flag == name),
            "{name} in help: {help}"
        );
    }
    for (flag, block) in flags.iter().filter(|(flag, _)| flag != "--help") {
        let description = block.get(1).map_or("", |line| line.trim());
        assert!(
            !description.is_empty() && !description.starts_with('['),
            "{flag} has a one-line description: {block:?}"
        );
        let twin = format!(
            "KUBELET_GUARD_{}",
            flag[2..].replace('-', "_").to_uppercase()
        );
        assert!(
            block
                .iter()
                .any(|line| line.contains(&format!("[env: {twin}="))),
            "{flag} has the environment twin {twin}: {block:?}"
        );
    }
}

#[test]
fn help_fits_100_columns_under_headings() {
    for flag in ["-h", "--help"] {
        let (code, help, stderr) = run(&["serve".to_owned(), flag.to_owned()], &[]);
        assert_eq!(code, 0, "{stderr}");
        for line in help.lines() {
            assert!(
                line.chars().count() <= 100,
                "serve {flag}: {} columns: {line:?}",
                line.chars().count()
            );
        }
        for heading in [
            "Listening and TLS:",
            "Callers:",
            "Authorization:",
            "API server:",
            "Upstream kubelet:",
            "Embedded mode (no API server):",
            "Audit:",
            "Limits:",
            "Operations:",
        ] {
            assert!(
                help.lines().any(|line| line == heading),
                "serve {flag} has the heading {heading:?}: {help}"
            );
        }
        for required in [
            "--listen",
            "--tls-cert-file",
            "--tls-private-key-file",
            "--upstream-ca-file",
        ] {
            let block = flag_blocks(&help)
                .into_iter()
                .find(|(name, _)| name == required)
                .unwrap();
            assert!(
                block.1[1].trim().starts_with("Required"),
                "serve {flag} marks {required} required: {block:?}"
            );
        }
    }
}

/// Splits clap's long help into (flag, lines of its entry).
fn flag_blocks(help: &str) -> Vec<(String, Vec<&str>)> {
    let mut blocks: Vec<(String, Vec<&str>)> = Vec::new();
    for line in help.lines() {
        let entry = line.trim_start().trim_start_matches("-h, ");
        if entry.starts_with("--") {
            let flag = entry.split([' ', '=', '[', '<']).next().unwrap().to_owned();
            blocks.push((flag, vec![line]));
        } else if let Some((_, block)) = blocks.last_mut() {
            block.push(line);
        }
    }
    blocks
}
