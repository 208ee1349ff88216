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
//! pool and flushed once at the end of the batch. A write that fails (a full disk) loses the
//! events it carried and those still buffered, counted in
//! `kubelet_guard_audit_events_dropped_total{reason="write-error"}`; the next line reopens the
//! file (recreating it if it was deleted or moved away) and starts on a line of its own, so a
//! torn line never swallows the next event. A file deleted or moved away without a failed write
//! (logrotate's `create`) is let go at the next batch, and the path opened again. This module
//! never logs event contents.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tokio::sync::watch;

use super::Event;
use super::sink::{AuditError, LogDestination, LogSettings, Queue, Rotation, Throttle};
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
    /// `None` after a failed write, until the next line reopens the file.
    out: Option<BufWriter<File>>,
    /// Lines `out` holds that no flush has written yet: lost if the file fails.
    unflushed: usize,
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

/// Events a batch could not write, and the last error.
#[derive(Debug)]
pub(crate) struct Lost {
    pub(crate) events: usize,
    pub(crate) error: io::Error,
}

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

    /// Writes one line per event, rotating as needed, then flushes; a failed line does not stop
    /// the lines after it.
    pub(crate) fn write_batch(&mut self, events: &[Arc<Event>]) -> Result<(), Lost> {
        let lost = |events, error| Err(Lost { events, error });
        match &mut self.output {
            Output::Stream(out) => {
                self.line.clear();
                for event in events {
                    if let Err(e) = serde_json::to_writer(&mut self.line, &**event) {
                        return lost(events.len(), e.into());
                    }
                    self.line.push(b'\n');
                }
                match out.write_all(&self.line).and_then(|()| out.flush()) {
                    Ok(()) => Ok(()),
                    Err(e) => lost(events.len(), e),
                }
            }
            Output::File(file) => {
                file.follow_path();
                let (mut count, mut failed) = (0, None);
                for event in events {
                    self.line.clear();
                    if let Err(e) = serde_json::to_writer(&mut self.line, &**event) {
                        (count, failed) = (count + 1, Some(e.into()));
                        continue;
                    }
                    self.line.push(b'\n');
                    if let Err(e) = file.write_line(&self.line) {
                        (count, failed) = (count + 1 + file.fail(), Some(e));
                    }
                }
                if let Err(e) = file.flush() {
                    (count, failed) = (count + file.fail(), Some(e));
                }
                failed.map_or(Ok(()), |error| lost(count, error))
            }
        }
    }
}

/// Writes queued events until shutdown, then writes what was queued before it and returns.
pub(crate) async fn run(
    mut sink: LogSink,
    mut queue: Queue,
    mut shutdown: watch::Receiver<bool>,
    lost: IntCounter,
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
        let mut batch = vec![first.event];
        while batch.len() < WRITE_BATCH {
            match queue.try_recv() {
                Some(queued) => batch.push(queued.event),
                None => break,
            }
        }
        match write(sink, batch, &report, &lost).await {
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
                Some(queued) => batch.push(queued.event),
                None => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        match write(sink, batch, &report, &lost).await {
            Some(open) => sink = open,
            None => return,
        }
    }
}

/// Writes one batch on the blocking pool; `None` when the sink is lost (the write panicked).
async fn write(
    mut sink: LogSink,
    batch: Vec<Arc<Event>>,
    report: &Throttle,
    lost: &IntCounter,
) -> Option<LogSink> {
    let written = tokio::task::spawn_blocking(move || {
        let result = sink.write_batch(&batch);
        (sink, result, batch.len())
    })
    .await;
    match written {
        Ok((sink, Ok(()), _)) => Some(sink),
        Ok((sink, Err(Lost { events, error }), batch)) => {
            lost.inc_by(u64::try_from(events).unwrap_or(u64::MAX));
            if let Some(held) = report.allow(std::time::Instant::now()) {
                tracing::error!(%error, events, batch, failed_batches_not_reported = held, "audit log write failed: events lost");
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
        let mut file = Self {
            path: path.to_owned(),
            names,
            rotation,
            out: None,
            unflushed: 0,
            size: 0,
            last_backup: None,
        };
        file.reopen().map_err(|e| fail(e.to_string()))?;
        Ok(file)
    }

    /// Opens the file for appending (creating it if it is gone), ending a torn last line first.
    fn reopen(&mut self) -> io::Result<&mut BufWriter<File>> {
        let mut file = open_append(&self.path)?;
        self.size = file.metadata()?.len();
        if self.size > 0 && !ends_a_line(&self.path)? {
            file.write_all(b"\n")?;
            self.size += 1;
        }
        self.unflushed = 0;
        Ok(self.out.insert(BufWriter::new(file)))
    }

    /// Lets go of the open file when the path no longer names it (deleted, or moved away as
    /// logrotate's `create` does): the next line opens the path again, so nothing is written on
    /// unseen. The open file holds no unflushed line between batches.
    fn follow_path(&mut self) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let Some(out) = &self.out else {
                return;
            };
            let same = match (std::fs::metadata(&self.path), out.get_ref().metadata()) {
                (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
                _ => false,
            };
            if !same {
                let unflushed = self.fail();
                debug_assert_eq!(unflushed, 0, "every batch ends flushed");
            }
        }
    }

    /// Gives up the open file after a failed write, with what it still buffered; how many lines
    /// that lost. The next line reopens it.
    fn fail(&mut self) -> usize {
        if let Some(out) = self.out.take() {
            // Not dropped as it is: a `BufWriter` flushes on drop, and these lines count as lost.
            let _ = out.into_parts();
        }
        std::mem::take(&mut self.unflushed)
    }

    /// Writes what is buffered.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        self.unflushed = 0;
        Ok(())
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
        let out = match &mut self.out {
            Some(out) => out,
            None => self.reopen()?,
        };
        out.write_all(line)?;
        // `BufWriter` writes its buffer out by itself when a line does not fit: what it holds now
        // is all that is unflushed.
        self.unflushed = match out.buffer().len() {
            0 => 0,
            held if held == line.len() => 1,
            _ => self.unflushed + 1,
        };
        self.size = self.size.saturating_add(len);
        Ok(())
    }

    /// Renames the file to a backup, opens a fresh one, and deletes backups beyond the limit. A
    /// file someone else moved or deleted is not renamed: the fresh one replaces it.
    fn rotate(&mut self, rotation: Rotation) -> io::Result<()> {
        self.flush()?;
        let mut at = clamp(SystemTime::now());
        if let Some(last) = self.last_backup {
            at = at.max(last + Duration::from_millis(1));
        }
        let mut backup = self.names.backup(at);
        while backup.exists() {
            at += Duration::from_millis(1);
            backup = self.names.backup(at);
        }
        match std::fs::rename(&self.path, &backup) {
            Ok(()) => self.last_backup = Some(at),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.out = None;
        self.reopen()?;
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

/// Whether the file at `path` ends with a newline.
fn ends_a_line(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
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

    /// A fresh directory for one test.
    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kubelet-guard-audit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file_sink(path: &Path, rotation: Option<Rotation>) -> LogSink {
        LogSink {
            output: Output::File(RotatingFile::open(path, rotation).unwrap()),
            line: Vec::new(),
        }
    }

    #[test]
    fn events_that_cannot_be_written_are_counted_as_lost() {
        // Every write to /dev/full fails with ENOSPC.
        let mut sink = file_sink(Path::new("/dev/full"), None);
        let events: Vec<_> = (0..3).map(|n| Arc::new(event(n))).collect();
        let lost = sink.write_batch(&events).unwrap_err();
        assert_eq!(lost.events, 3, "{lost:?}");
        assert_eq!(sink.write_batch(&events[..1]).unwrap_err().events, 1);
    }

    #[test]
    fn a_log_deleted_under_the_guard_is_recreated_and_a_torn_line_ended() {
        let dir = scratch("deleted");
        let path = dir.join("audit.log");
        // A line a full disk cut short, from before this process.
        std::fs::write(&path, b"{\"kind\":\"Ev").unwrap();
        let line_len = serde_json::to_vec(&event(0)).unwrap().len() as u64 + 1;
        let rotation = Rotation {
            max_bytes: std::num::NonZeroU64::new(line_len * 3).unwrap(),
            max_backups: None,
        };
        let mut sink = file_sink(&path, Some(rotation));
        let one = |n| vec![Arc::new(event(n))];
        sink.write_batch(&one(1)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[1]).is_ok());

        // Someone deletes the live file; the next rotation finds nothing to rename.
        std::fs::remove_file(&path).unwrap();
        for n in 2..6 {
            sink.write_batch(&one(n)).unwrap();
        }
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.contains("000000000005"), "{live}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_moved_away_or_deleted_is_opened_again_at_the_next_batch() {
        let dir = scratch("moved");
        let path = dir.join("audit.log");
        let mut sink = file_sink(&path, None);
        let one = |n| vec![Arc::new(event(n))];
        sink.write_batch(&one(1)).unwrap();
        // logrotate's `create`: the file is renamed, and a new one made at the path.
        let rotated = dir.join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::write(&path, b"").unwrap();
        sink.write_batch(&one(2)).unwrap();
        std::fs::remove_file(&path).unwrap();
        sink.write_batch(&one(3)).unwrap();
        sink.write_batch(&one(4)).unwrap();
        let ids = |file: &Path| -> Vec<u64> {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|line| {
                    let event: serde_json::Value = serde_json::from_str(line).unwrap();
                    let id = event["auditID"].as_str().unwrap();
                    id.rsplit('-').next().unwrap().parse().unwrap()
                })
                .collect()
        };
        assert_eq!(ids(&rotated), [1]);
        assert_eq!(ids(&path), [3, 4], "2 went to the file deleted after it");
        std::fs::remove_dir_all(&dir).unwrap();
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
        let dir = scratch("rotation");
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
        file.flush().unwrap();

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
