//! `kubelet-guard node-pki`, the real binary as the DaemonSet's init container runs it: the
//! node-local CA and the guard's client certificate, file modes, idempotence, and every bad input
//! refused with exit status 64, naming the file, changing nothing. The guard refuses the node CA
//! as a caller CA at start-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// sysexits EX_USAGE.
const EXIT_CONFIG: i32 = 64;

/// Runs the binary with `args` and a cleared environment plus `env`.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("run kubelet-guard")
}

fn node_pki(dir: &Path, extra: &[&str]) -> Output {
    let dir = format!("--dir={}", dir.display());
    let mut args = vec!["node-pki", dir.as_str(), "--node-name=node-a"];
    args.extend_from_slice(extra);
    run(&args, &[])
}

/// Starts `node-pki` on `dir` for node-a, its output piped.
fn spawn_node_pki(dir: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(["node-pki", "--node-name=node-a"])
        .arg(format!("--dir={}", dir.display()))
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file of the directory with its content, to prove a refused run changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let content = std::fs::read(&path).unwrap();
            (path, content)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_first_run_makes_the_pki_and_a_second_keeps_it() {
    let dir = support::temp_dir("node-pki").join("pki");
    let first = node_pki(&dir, &[]);
    assert!(first.status.success(), "{}", text(&first));
    let said = text(&first);
    assert!(said.contains("created the node-local CA"), "{said}");
    assert!(
        said.contains("CN=kubelet-guard:node:node-a, O=kubelet-guard:nodes"),
        "{said}"
    );
    assert!(
        said.contains(&dir.join("ca.crt").display().to_string()),
        "{said}"
    );
    assert!(!said.contains("PRIVATE KEY"), "never prints a key: {said}");
    assert_eq!(mode(&dir), 0o700);
    for key in ["ca.key", "client.key", "client.crt"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let before = snapshot(&dir);

    let second = node_pki(&dir, &[]);
    assert!(second.status.success(), "{}", text(&second));
    let said = text(&second);
    assert!(said.contains("kept the node-local CA"), "{said}");
    assert!(said.contains("kept the client certificate"), "{said}");
    assert_eq!(snapshot(&dir), before, "an idempotent second run");
}

#[test]
fn a_run_waits_its_turn_behind_another_writer_of_the_directory() {
    let dir = support::temp_dir("node-pki-turn").join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    // Another writer (a guard renewing, a second init container) holds the directory's lock.
    let held = std::fs::File::open(&dir).unwrap();
    held.lock().unwrap();
    let mut waiting = spawn_node_pki(&dir);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let early = waiting.try_wait().unwrap();
    assert!(early.is_none(), "ran beside the other writer: {early:?}");
    assert!(
        !dir.join("ca.key").exists(),
        "wrote beside the other writer"
    );
    drop(held);
    let output = waiting.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("created the node-local CA"));
}

#[test]
fn concurrent_first_runs_make_one_ca_and_a_matching_pair() {
    let dir = support::temp_dir("node-pki-race").join("pki");
    let runs: Vec<_> = (0..8).map(|_| spawn_node_pki(&dir)).collect();
    let said: Vec<String> = runs
        .into_iter()
        .map(|run| {
            let output = run.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", text(&output));
            text(&output)
        })
        .collect();
    let created = said
        .iter()
        .filter(|s| s.contains("created the node-local CA"))
        .count();
    assert_eq!(created, 1, "{said:#?}");
    // A later run loads the CA (its key must match its certificate) and keeps everything.
    let after = node_pki(&dir, &[]);
    assert!(after.status.success(), "{}", text(&after));
    assert!(text(&after).contains("kept the client certificate"));
}

#[test]
fn every_flag_has_its_environment_twin() {
    let dir = support::temp_dir("node-pki-env").join("pki");
    let dir_text = dir.display().to_string();
    let output = run(
        &["node-pki"],
        &[
            ("KUBELET_GUARD_NODE_PKI_DIR", dir_text.as_str()),
            ("NODE_NAME", "node-b"),
            ("KUBELET_GUARD_NODE_PKI_VALIDITY", "1h"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("kubelet-guard:node:node-b"),
        "{}",
        text(&output)
    );
    let output = run(
        &["node-pki", &format!("--dir={dir_text}")],
        &[("KUBELET_GUARD_NODE_NAME", "node-b")],
    );
    assert!(
        text(&output).contains("kept the client certificate"),
        "{}",
        text(&output)
    );
}

#[test]
fn bad_input_exits_64_naming_the_file_and_changes_nothing() {
    // A CA key that belongs to another CA, and a corrupt file.
    let dir = support::temp_dir("node-pki-bad").join("pki");
    let other = support::temp_dir("node-pki-other").join("pki");
    assert!(node_pki(&dir, &[]).status.success());
    assert!(node_pki(&other, &[]).status.success());
    std::fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
    let before = snapshot(&dir);
    let refused = node_pki(&dir, &[]);
    assert_eq!(
        refused.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        text(&refused)
    );
    assert!(
        text(&refused).contains("ca.key: does not match ca.crt"),
        "{}",
        text(&refused)
    );
    assert_eq!(snapshot(&dir), before);

    std::fs::write(
        other.join("client.crt"),
        "-----BEGIN CERTIFICATE-----\nnope\n",
    )
    .unwrap();
    let before = snapshot(&other);
    let refused = node_pki(&other, &[]);
    assert_eq!(
        refused.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        text(&refused)
    );
    assert!(text(&refused).contains("client.crt"), "{}", text(&refused));
    assert_eq!(snapshot(&other), before);

    // A directory that cannot be made: its parent is a file.
    let file = support::temp_dir("node-pki-file").join("file");
    std::fs::write(&file, "x").unwrap();
    let refused = node_pki(&file.join("pki"), &[]);
    assert_eq!(
        refused.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        text(&refused)
    );
    assert!(
        text(&refused).contains(&file.display().to_string()),
        "{}",
        text(&refused)
    );

    // Flags.
    let fresh = support::temp_dir("node-pki-flags").join("pki");
    for (extra, flag) in [
        (&["--validity=5s"][..], "--validity"),
        (&["--validity=soon"][..], "--validity"),
        (&["--node-name=Node_A"][..], "--node-name"),
    ] {
        let dir = format!("--dir={}", fresh.display());
        let mut args = vec!["node-pki", dir.as_str()];
        args.extend_from_slice(extra);
        let refused = run(&args, &[]);
        assert_eq!(
            refused.status.code(),
            Some(EXIT_CONFIG),
            "{extra:?}: {}",
            text(&refused)
        );
        assert!(
            text(&refused).contains(flag),
            "{extra:?}: {}",
            text(&refused)
        );
        assert!(!fresh.exists(), "{extra:?} made the directory");
    }
}

/// Starts a guard on the node PKI in `dir` (and with `--client-ca-file` set to `client_ca`, if
/// given) and returns why it refused to start.
async fn refused_start(dir: &Path, client_ca: Option<&Path>) -> String {
    support::init();
    let ca = support::pki::Ca::new("cluster");
    let kubelet_ca = support::pki::Ca::new("kubelet");
    let api = support::apiserver::ApiServerDouble::start(&ca).await;
    let kubelet = support::kubelet::KubeletDouble::start(
        &kubelet_ca.server_cert("node-1", &["127.0.0.1"]),
        &kubelet_ca,
    )
    .await;
    let argv: Vec<String> = support::guard::flags(&ca, &kubelet_ca, &api, &kubelet, &[])
        .into_iter()
        // The node PKI replaces the upstream credential; `client_ca` replaces the caller CA.
        .filter(|flag| {
            let replaced = flag.starts_with("--upstream-client-")
                || (client_ca.is_some() && flag.starts_with("--client-ca-file"));
            !replaced
        })
        .chain([format!("--node-pki-dir={}", dir.display())])
        .chain(client_ca.map(|ca| format!("--client-ca-file={}", ca.display())))
        .collect();
    match support::guard::start_with_flags(&argv).await {
        Ok(_) => panic!("the guard started on {}", dir.display()),
        Err(refused) => refused,
    }
}

#[tokio::test]
async fn the_guard_refuses_the_node_ca_as_a_caller_ca() {
    let dir = support::temp_dir("node-pki-callers").join("pki");
    support::guard::make_node_pki(&dir, "node-1", "168h");
    let refused = refused_start(&dir, Some(&dir.join("ca.crt"))).await;
    assert!(
        refused.contains("must never be trusted for callers"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_node_pki_directory_not_yet_prepared_says_to_run_node_pki() {
    let dir = support::temp_dir("node-pki-missing").join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    let refused = refused_start(&dir, None).await;
    assert!(
        refused.contains("ca.crt: missing from --node-pki-dir")
            && refused.contains(&format!("kubelet-guard node-pki --dir {}", dir.display())),
        "{refused}"
    );
}

#[tokio::test]
async fn a_node_pki_directory_without_the_ca_key_is_refused_at_start() {
    // The guard could serve, but never renew: its certificate would expire days later.
    let dir = support::temp_dir("node-pki-no-key").join("pki");
    support::guard::make_node_pki(&dir, "node-1", "168h");
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let refused = refused_start(&dir, None).await;
    assert!(refused.contains("missing beside ca.crt"), "{refused}");
}
