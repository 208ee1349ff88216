//! The guard's audit log file as a test reads it: the `--audit-log-path` flag that turns it on,
//! and the events written to it, waited for with a deadline.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// An audit log file in a fresh temp directory.
pub struct AuditLog {
    path: PathBuf,
    flag: String,
}

impl AuditLog {
    /// A log file that does not exist yet.
    pub fn new() -> AuditLog {
        let path = super::temp_dir("audit").join("audit.log");
        let flag = format!("--audit-log-path={}", path.display());
        AuditLog { path, flag }
    }

    /// `--audit-log-path=<the file>`.
    pub fn flag(&self) -> &str {
        &self.flag
    }

    /// The file's whole text (empty before the first event).
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    fn written(&self) -> Vec<Value> {
        written_to(&self.path)
    }

    /// Waits until the log holds at least `count` events and returns them all, in order.
    pub async fn events(&self, count: usize) -> Vec<Value> {
        super::with_deadline("audit events are written", async {
            loop {
                let events = self.written();
                if events.len() >= count {
                    return events;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }

    /// Waits until an event for which `wanted` holds is written and returns the first such.
    pub async fn find(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        super::with_deadline(what, async {
            loop {
                let found = self.written().into_iter().find(|event| wanted(event));
                if let Some(event) = found {
                    return event;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

/// The events written to the file at `path` so far, in order. The guard writes a batch through a
/// buffer that may reach the file in pieces, so a last line without its newline is still being
/// written and is left for the next read.
pub fn written_to(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event is JSON"))
        .collect()
}
