//! The README's first command: `kubelet-guard demo --check` runs the tour against a kubelet
//! stand-in in embedded mode and exits 0 only if every answer is the one the tour promises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_tour_shows_the_exec_hole_closed() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
        .args(["demo", "--check"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("kubelet STAND-IN (not a real kubelet)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok   4. The legacy agent opens a WebSocket exec -> 403 Forbidden"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("ok   5. The admin opens the same WebSocket exec -> 101 Switching Protocols"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("\nok   ").count(), 7, "{stdout}");
    // A newcomer's first command logs no error: the stand-in is locked to the guard as a
    // kubelet should be, so the lockdown self-check has nothing to report.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("ERROR"), "{stderr}");
}
