//! Files that change under a running guard: read at start-up (an error names the flag and the
//! file), then polled; a new content that loads replaces the old, one that does not keeps the
//! last good one, is logged, and is counted.
//!
//! One value may come from several files (a certificate, its key and a CA make one TLS
//! configuration): they are read together and the value is rebuilt when any of them changed, so a
//! certificate and its key are never mixed from two generations once both files are in place.
//!
//! Content is compared, not inodes or modification times: Kubernetes updates mounted Secrets and
//! ConfigMaps by swapping a symlink, which file watches and mtimes miss.
//!
//! A changed content is taken into use only once two reads a pause apart agree ([`settled`]): a
//! file edited in place can be read half-written, and a fragment that parses can grant more than
//! the whole (an RBAC rule cut before its `resourceNames`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// A file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {message}", path.display())]
pub struct FileError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

/// Parses one file's bytes into the value it configures.
pub type Parser<T> = fn(&[u8]) -> Result<T, String>;

/// One file a watched value is read from, and the flag that named it.
#[derive(Debug, Clone)]
pub struct Source {
    /// The flag, with its dashes; names the file in errors and metric labels.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
}

/// Builds a value from the contents of its sources, in the order they were given. An error names
/// the flag and file at fault.
type Loader<T> = Box<dyn Fn(&[Vec<u8>]) -> Result<T, FileError> + Send + Sync>;

/// The current value of one or more polled files.
pub struct Watched<T> {
    sources: Vec<Source>,
    load: Loader<T>,
    current: ArcSwap<T>,
    seen: Mutex<Seen>,
}

/// The digests of the contents a [`Watched`] last took in (or reported broken), and of a changed
/// content read once and waiting for a second read to agree.
struct Seen {
    taken: Vec<[u8; 32]>,
    changing: Option<Vec<[u8; 32]>>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Reload {
    /// Every file has the content already seen.
    Unchanged,
    /// A file has a content not seen at the previous poll: it may still be being written, so it
    /// is taken in only when the next poll reads the same. `flag` names the first such file.
    Changing {
        /// The flag of the first changed file.
        flag: &'static str,
    },
    /// A new value took effect; `flag` names the first file that changed.
    Reloaded {
        /// The flag of the first changed file.
        flag: &'static str,
    },
    /// A file could not be read or the new contents did not load: the last good value stays.
    Kept(FileError),
}

/// Something the reload task polls.
pub trait Poll: Send + Sync {
    /// Re-reads the files and takes a new value into use if their contents changed, read the same
    /// as at the previous poll, and load.
    fn poll(&self) -> Reload;
}

/// How often [`settled`] reads a changing file before leaving it to the next poll: a file still
/// changing after that many pauses is being rewritten continuously.
const SETTLE_READS: usize = 5;

/// Polls `file` until its contents hold still: a changed content is read again after `pause`,
/// and taken into use only if the second read agrees. `Changing` if it never held still.
pub async fn settled(file: &dyn Poll, pause: Duration) -> Reload {
    for _ in 1..SETTLE_READS {
        match file.poll() {
            Reload::Changing { .. } => tokio::time::sleep(pause).await,
            done => return done,
        }
    }
    file.poll()
}

impl Source {
    /// The file `path`, named by `flag`.
    pub fn new(flag: &'static str, path: &Path) -> Self {
        Self {
            flag,
            path: path.to_owned(),
        }
    }
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads and parses one file once; failure is a start-up error.
    pub fn load(flag: &'static str, path: &Path, parse: Parser<T>) -> Result<Self, FileError> {
        let source = Source::new(flag, path);
        Self::load_with(vec![source.clone()], move |contents| {
            let bytes = contents.first().map_or(&[][..], Vec::as_slice);
            parse(bytes).map_err(|message| error(source.flag, &source.path, message))
        })
    }

    /// Reads `sources` and builds the value with `load` once; failure is a start-up error.
    pub fn load_with(
        sources: Vec<Source>,
        load: impl Fn(&[Vec<u8>]) -> Result<T, FileError> + Send + Sync + 'static,
    ) -> Result<Self, FileError> {
        let contents = read_all(&sources)?;
        let value = load(&contents)?;
        Ok(Self {
            sources,
            load: Box::new(load),
            current: ArcSwap::from_pointee(value),
            seen: Mutex::new(Seen {
                taken: contents.iter().map(|bytes| digest(bytes)).collect(),
                changing: None,
            }),
        })
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

impl<T: Send + Sync + 'static> Poll for Watched<T> {
    fn poll(&self) -> Reload {
        // Held from the read to the store: two pollers of the same files (the reload task and
        // the node PKI's renewal) must not install what one read before the other's newer pair.
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let contents = match read_all(&self.sources) {
            Ok(contents) => contents,
            Err(e) => return Reload::Kept(e),
        };
        let new_digests: Vec<[u8; 32]> = contents.iter().map(|bytes| digest(bytes)).collect();
        let Some(changed) = self
            .sources
            .iter()
            .zip(&new_digests)
            .enumerate()
            .find(|(i, (_, digest))| seen.taken.get(*i) != Some(digest))
            .map(|(_, (source, _))| source.flag)
        else {
            seen.changing = None;
            return Reload::Unchanged;
        };
        // Read once: maybe half-written, or one file of a pair swapped and not yet the other.
        if seen.changing.as_ref() != Some(&new_digests) {
            seen.changing = Some(new_digests);
            return Reload::Changing { flag: changed };
        }
        seen.changing = None;
        // Broken contents are remembered too, so they are reported once, not at every poll.
        seen.taken = new_digests;
        match (self.load)(&contents) {
            Ok(value) => {
                self.current.store(Arc::new(value));
                Reload::Reloaded { flag: changed }
            }
            Err(e) => Reload::Kept(e),
        }
    }
}

/// Builds a [`FileError`].
pub fn error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> FileError {
    FileError {
        flag,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_all(sources: &[Source]) -> Result<Vec<Vec<u8>>, FileError> {
    sources
        .iter()
        .map(|source| std::fs::read(&source.path).map_err(|e| error(source.flag, &source.path, e)))
        .collect()
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(bytes: &[u8]) -> Result<u32, String> {
        std::str::from_utf8(bytes)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "kubelet-guard-reload-{}-{name}",
            std::process::id()
        ))
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_value_and_is_reported_once() {
        let path = temp("one");
        std::fs::write(&path, "1").unwrap();
        let watched = Watched::load("--number-file", &path, number).unwrap();
        assert_eq!(*watched.current(), 1);
        assert!(
            matches!(watched.poll(), Reload::Unchanged),
            "unchanged content is no change"
        );

        std::fs::write(&path, "two").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        let Reload::Kept(err) = watched.poll() else {
            panic!("a broken file is kept")
        };
        let err = err.to_string();
        assert!(
            err.starts_with("--number-file ") && err.contains("invalid digit"),
            "{err}"
        );
        assert_eq!(*watched.current(), 1);
        assert!(
            matches!(watched.poll(), Reload::Unchanged),
            "the same broken content is reported once"
        );

        std::fs::write(&path, "3").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        assert!(matches!(
            watched.poll(),
            Reload::Reloaded {
                flag: "--number-file"
            }
        ));
        assert_eq!(*watched.current(), 3);
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(watched.poll(), Reload::Kept(_)));
        assert!(Watched::load("--number-file", &path, number).is_err());
    }

    #[test]
    fn several_files_make_one_value_and_the_changed_one_is_named() {
        let (a, b) = (temp("a"), temp("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        let sources = vec![Source::new("--a-file", &a), Source::new("--b-file", &b)];
        let watched = Watched::load_with(sources.clone(), move |contents| {
            let mut sum = 0;
            for (source, bytes) in sources.iter().zip(contents) {
                sum += number(bytes).map_err(|e| error(source.flag, &source.path, e))?;
            }
            Ok(sum)
        })
        .unwrap();
        assert_eq!(*watched.current(), 3);

        std::fs::write(&b, "5").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        assert!(matches!(
            watched.poll(),
            Reload::Reloaded { flag: "--b-file" }
        ));
        assert_eq!(*watched.current(), 6);

        std::fs::write(&a, "x").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        let Reload::Kept(err) = watched.poll() else {
            panic!("kept")
        };
        assert_eq!(err.flag, "--a-file");
        assert_eq!(*watched.current(), 6);
        for path in [a, b] {
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_file_read_half_written_is_not_taken_in() {
        let path = temp("half");
        std::fs::write(&path, "1").unwrap();
        let watched = Watched::load("--number-file", &path, number).unwrap();

        // A writer part-way through "12345": "12" parses, but it is not what is being written.
        std::fs::write(&path, "12").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        assert_eq!(
            *watched.current(),
            1,
            "one read of a changed file is not enough"
        );
        std::fs::write(&path, "12345").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        assert_eq!(
            *watched.current(),
            1,
            "it changed again since the last read"
        );
        assert!(matches!(watched.poll(), Reload::Reloaded { .. }));
        assert_eq!(*watched.current(), 12345);

        // Back to content already taken in before the next read: nothing was taken in between.
        std::fs::write(&path, "7").unwrap();
        assert!(matches!(watched.poll(), Reload::Changing { .. }));
        std::fs::write(&path, "12345").unwrap();
        assert!(matches!(watched.poll(), Reload::Unchanged));
        std::fs::write(&path, "7").unwrap();
        assert!(
            matches!(watched.poll(), Reload::Changing { .. }),
            "a read of the old content forgot the change it had seen"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn settled_reads_until_two_reads_agree() {
        let path = temp("settled");
        std::fs::write(&path, "1").unwrap();
        let watched = Arc::new(Watched::load("--number-file", &path, number).unwrap());
        std::fs::write(&path, "2").unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(
            settled(watched.as_ref(), Duration::from_secs(1)).await,
            Reload::Reloaded { .. }
        ));
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "one pause between two reads"
        );
        assert_eq!(*watched.current(), 2);
        assert!(matches!(
            settled(watched.as_ref(), Duration::from_secs(1)).await,
            Reload::Unchanged
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
