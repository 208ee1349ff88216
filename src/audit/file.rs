//! The audit log sink: one JSON `Event` per line, appended to `--audit-log-path` or written to
//! standard output (`-`), as kube-apiserver's log backend writes them (`format=json`).
//!
//! Rotation follows lumberjack, which kube-apiserver uses: before a line would take the file past
//! `--audit-log-maxsize`, the file is renamed beside itself to `<name>-<UTC time><ext>`
//! (`audit.log` → `audit-2026-11-23T09-20-51.123.log`), a fresh file is opened, and the oldest
//! backups beyond `--audit-log-maxbackup` are deleted. Timestamps, not numbers, so names match what
//! log shippers already expect from kube-apiserver; two rotations within one millisecond (only
//! tiny test limits do that) take the next free millisecond, so no backup is ever overwritten and
//! names still sort oldest first. A single line longer than the limit is written whole into a
//! fresh file. New files are created mode 0600: events name users and carry exec command lines.
//!
//! Writes are blocking file I/O, so each batch of queued events is written on tokio's blocking
//! pool and flushed once at the end of the batch. This module never logs event contents.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use super::Event;
use super::sink::{AuditError, LogDestination, LogSettings, Rotation, Throttle};
use crate::shutdown::stopped;

/// The audit log: a rotating file or a stream such as standard output.
pub(crate) struct LogSink {
    output: Output,
    /// Reused for each line's JSON.
    line: Vec<u8>,
}

enum Output {
    /// Standard output or an injected writer: each batch goes out in one `write_all`, so lines
    /// stay whole among other writers of standard output (std's `Stdout` locks per call).
    Stream(Box<dyn Write + Send>),
    File(RotatingFile),
}

/// `audit.log` and its rotated backups.
struct RotatingFile {
    path: PathBuf,
    names: BackupNames,
    rotation: Option<Rotation>,
    out: BufWriter<File>,
    /// Bytes in the current file, including what `out` still buffers.
    size: u64,
    /// Time in the newest backup name this process made, so the next one is later.
    last_backup: Option<SystemTime>,
}

/// How backups of one log file are named: `<stem>-<timestamp><ext>` in the file's directory.
struct BackupNames {
    dir: PathBuf,
    stem: String,
    ext: String,
}

/// Most events written (and flushed) as one batch.
const WRITE_BATCH: usize = 512;

/// Length of `2026-11-23T09-20-51.123`.
const TIMESTAMP_LEN: usize = 23;

const FLAG: &str = "--audit-log-path";

impl LogSink {
    /// Opens the configured destination: the file is created (0600) or appended to.
    pub(crate) fn open(settings: &LogSettings) -> Result<Self, AuditError> {
        match &settings.destination {
            LogDestination::Stdout => Ok(Self::stream(Box::new(io::stdout()))),
            LogDestination::File(path) => Ok(Self {
                output: Output::File(RotatingFile::open(path, settings.rotation)?),
                line: Vec::new(),
            }),
        }
    }

    /// A sink writing to `writer` with no rotation (standard output, tests).
    pub(crate) fn stream(writer: Box<dyn Write + Send>) -> Self {
        Self {
            output: Output::Stream(writer),
            line: Vec::new(),
        }
    }

    /// Writes one line per event, rotating as needed, then flushes.
    pub(crate) fn write_batch(&mut self, events: &[Arc<Event>]) -> io::Result<()> {
        match &mut self.output {
            Output::Stream(out) => {
                self.line.clear();
                for event in events {
                    serde_json::to_writer(&mut self.line, &**event)?;
                    self.line.push(b'\n');
                }
                out.write_all(&self.line)?;
                out.flush()
            }
            Output::File(file) => {
                for event in events {
                    self.line.clear();
                    serde_json::to_writer(&mut self.line, &**event)?;
                    self.line.push(b'\n');
                    file.write_line(&self.line)?;
                }
                file.out.flush()
            }
        }
    }
}

/// Writes queued events until shutdown, then writes what was queued before it and returns.
pub(crate) async fn run(
    mut sink: LogSink,
    mut queue: mpsc::Receiver<Arc<Event>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let report = Throttle::new(Duration::from_secs(1));
    loop {
        let first = tokio::select! {
            biased;
            () = stopped(&mut shutdown) => None,
            event = queue.recv() => event,
        };
        let Some(first) = first else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        match write(sink, batch, &report).await {
            Some(open) => sink = open,
            None => return,
        }
    }
    // Events recorded from now on are refused (and counted as dropped); the rest is written.
    queue.close();
    loop {
        let mut batch = Vec::new();
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        match write(sink, batch, &report).await {
            Some(open) => sink = open,
            None => return,
        }
    }
}

/// Writes one batch on the blocking pool; `None` when the sink is lost (the write panicked).
async fn write(mut sink: LogSink, batch: Vec<Arc<Event>>, report: &Throttle) -> Option<LogSink> {
    let written = tokio::task::spawn_blocking(move || {
        let result = sink.write_batch(&batch);
        (sink, result, batch.len())
    })
    .await;
    match written {
        Ok((sink, Ok(()), _)) => Some(sink),
        Ok((sink, Err(error), events)) => {
            if let Some(held) = report.allow(std::time::Instant::now()) {
                tracing::error!(%error, events, failed_batches_not_reported = held, "audit log write failed");
            }
            Some(sink)
        }
        Err(error) => {
            tracing::error!(%error, "audit log writer stopped");
            None
        }
    }
}

impl RotatingFile {
    fn open(path: &Path, rotation: Option<Rotation>) -> Result<Self, AuditError> {
        let fail = |message: String| AuditError {
            flag: FLAG,
            path: path.to_owned(),
            message,
        };
        let names =
            BackupNames::of(path).ok_or_else(|| fail("does not name a UTF-8 file".into()))?;
        let file = open_append(path).map_err(|e| fail(e.to_string()))?;
        let size = file.metadata().map_err(|e| fail(e.to_string()))?.len();
        Ok(Self {
            path: path.to_owned(),
            names,
            rotation,
            out: BufWriter::new(file),
            size,
            last_backup: None,
        })
    }

    /// Appends `line`, first rotating if it would take a non-empty file past the limit.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
        if let Some(rotation) = self.rotation
            && self.size > 0
            && self.size.saturating_add(len) > rotation.max_bytes.get()
        {
            self.rotate(rotation)?;
        }
        self.out.write_all(line)?;
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// Renames the file to a backup, opens a fresh one, and deletes backups beyond the limit.
    fn rotate(&mut self, rotation: Rotation) -> io::Result<()> {
        self.out.flush()?;
        let mut at = clamp(SystemTime::now());
        if let Some(last) = self.last_backup {
            at = at.max(last + Duration::from_millis(1));
        }
        let mut backup = self.names.backup(at);
        while backup.exists() {
            at += Duration::from_millis(1);
            backup = self.names.backup(at);
        }
        std::fs::rename(&self.path, &backup)?;
        self.last_backup = Some(at);
        self.out = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        if let Some(keep) = rotation.max_backups {
            for old in self.names.oldest_beyond(keep.get())? {
                if let Err(error) = std::fs::remove_file(&old) {
                    tracing::warn!(%error, backup = %old.display(), "could not delete an old audit log");
                }
            }
        }
        Ok(())
    }
}

impl BackupNames {
    /// Splits `dir/audit.log` into `dir`, `audit` and `.log`, as lumberjack does (Go's
    /// `filepath.Ext`); `None` when the path has no UTF-8 file name.
    fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let (stem, ext) = match name.rfind('.') {
            Some(dot) => name.split_at(dot),
            None => (name, ""),
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        Some(Self {
            dir,
            stem: stem.to_owned(),
            ext: ext.to_owned(),
        })
    }

    /// `dir/<stem>-2026-11-23T09-20-51.123<ext>` for `at` in UTC.
    fn backup(&self, at: SystemTime) -> PathBuf {
        self.dir
            .join(format!("{}-{}{}", self.stem, timestamp(at), self.ext))
    }

    /// The backups in the directory, oldest first, except the newest `keep`.
    fn oldest_beyond(&self, keep: usize) -> io::Result<Vec<PathBuf>> {
        let mut backups: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stamp) = name.to_str().and_then(|name| self.timestamp_in(name)) else {
                continue;
            };
            backups.push((stamp.to_owned(), entry.path()));
        }
        // Fixed-width timestamps sort lexically in time order.
        backups.sort();
        let excess = backups.len().saturating_sub(keep);
        Ok(backups
            .into_iter()
            .take(excess)
            .map(|(_, path)| path)
            .collect())
    }

    /// The timestamp in `name` when `name` is one of this file's backups.
    fn timestamp_in<'a>(&self, name: &'a str) -> Option<&'a str> {
        let stamp = name
            .strip_prefix(self.stem.as_str())?
            .strip_prefix('-')?
            .strip_suffix(self.ext.as_str())?;
        is_timestamp(stamp).then_some(stamp)
    }
}

/// `2026-11-23T09-20-51.123`: lumberjack's backup time format, UTC.
fn timestamp(at: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_millis(clamp(at)).to_string();
    rfc3339.trim_end_matches('Z').replace(':', "-")
}

/// Whether `s` has the shape [`timestamp`] writes.
fn is_timestamp(s: &str) -> bool {
    s.len() == TIMESTAMP_LEN
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 13 | 16 => b == b'-',
            10 => b == b'T',
            19 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// Times before 1970 (a broken clock) as 1970: the formatter cannot write them.
fn clamp(at: SystemTime) -> SystemTime {
    at.max(UNIX_EPOCH)
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;

    use super::*;
    use crate::audit::sink::tests::event;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stream_gets_one_json_object_per_line() {
        let out = Shared::default();
        let mut sink = LogSink::stream(Box::new(out.clone()));
        let events: Vec<_> = (0..3).map(|n| Arc::new(event(n))).collect();
        sink.write_batch(&events).unwrap();
        sink.write_batch(&events[..1]).unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["kind"], "Event");
        assert_eq!(lines[0]["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(lines[1]["auditID"], "00000000-0000-4000-8000-000000000001");
        assert_eq!(lines[3]["auditID"], lines[0]["auditID"]);
    }

    #[test]
    fn backups_are_named_like_lumberjack_in_utc() {
        let names = BackupNames::of(Path::new("/var/log/audit.log")).unwrap();
        let at = UNIX_EPOCH + Duration::from_millis(1_795_425_651_123);
        assert_eq!(
            names.backup(at),
            Path::new("/var/log/audit-2026-11-23T09-20-51.123.log")
        );
        let bare = BackupNames::of(Path::new("audit")).unwrap();
        assert_eq!(
            bare.backup(UNIX_EPOCH),
            Path::new("./audit-1970-01-01T00-00-00.000")
        );
    }

    #[test]
    fn only_this_files_backups_are_recognised() {
        let names = BackupNames::of(Path::new("audit.log")).unwrap();
        assert_eq!(
            names.timestamp_in("audit-2026-11-23T09-20-51.123.log"),
            Some("2026-11-23T09-20-51.123")
        );
        for other in [
            "audit.log",
            "audit-2026-11-23T09-20-51.123.log.gz",
            "audit-2026-11-23T09-20-51.log",
            "other-2026-11-23T09-20-51.123.log",
            "audit-2026-11-23T09:20:51.123.log",
        ] {
            assert_eq!(names.timestamp_in(other), None, "{other}");
        }
    }

    #[test]
    fn rotation_keeps_the_newest_backups_and_never_overwrites_one() {
        let dir =
            std::env::temp_dir().join(format!("kubelet-guard-audit-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.log");
        let line_len = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let rotation = Rotation {
            max_bytes: std::num::NonZeroU64::new(line_len * 2).unwrap(),
            max_backups: std::num::NonZeroUsize::new(3),
        };
        let mut file = RotatingFile::open(&path, Some(rotation)).unwrap();
        // Ten lines, two per file, rotated faster than the clock's millisecond.
        for n in 0..10 {
            let mut line = serde_json::to_vec(&event(n)).unwrap();
            line.push(b'\n');
            file.write_line(&line).unwrap();
        }
        file.out.flush().unwrap();

        let names = BackupNames::of(&path).unwrap();
        let mut backups: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| names.timestamp_in(name).is_some())
            .collect();
        backups.sort();
        assert_eq!(backups.len(), 3, "{backups:?}");
        // The newest backup holds events 6 and 7; the live file 8 and 9.
        let newest = std::fs::read_to_string(dir.join(&backups[2])).unwrap();
        assert!(newest.contains("000000000006") && newest.contains("000000000007"));
        let live = std::fs::read_to_string(&path).unwrap();
        assert_eq!(live.lines().count(), 2);
        assert!(live.contains("000000000009"));
        let oldest = std::fs::read_to_string(dir.join(&backups[0])).unwrap();
        assert!(
            oldest.contains("000000000002"),
            "events 0 and 1 went with the oldest"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
