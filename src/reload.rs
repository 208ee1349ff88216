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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    digests: Mutex<Vec<[u8; 32]>>,
}

/// What one poll found.
#[derive(Debug)]
pub enum Reload {
    /// Every file has the content already seen.
    Unchanged,
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
    /// Re-reads the files and takes a new value into use if their contents changed and load.
    fn poll(&self) -> Reload;
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
            digests: Mutex::new(contents.iter().map(|bytes| digest(bytes)).collect()),
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
            .digests
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
            .find(|(i, (_, digest))| seen.get(*i) != Some(digest))
            .map(|(_, (source, _))| source.flag)
        else {
            return Reload::Unchanged;
        };
        match (self.load)(&contents) {
            Ok(value) => {
                *seen = new_digests;
                self.current.store(Arc::new(value));
                Reload::Reloaded { flag: changed }
            }
            // Files read while a swap was under way (a certificate from one generation, its key
            // from the next) are not broken: the next poll reads them settled.
            Err(_) if !unchanged_since(&self.sources, &new_digests) => Reload::Unchanged,
            Err(e) => {
                // Remember broken contents too, so they are reported once, not at every poll.
                *seen = new_digests;
                Reload::Kept(e)
            }
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

/// Whether every source still has the content `digests` were taken of.
fn unchanged_since(sources: &[Source], digests: &[[u8; 32]]) -> bool {
    read_all(sources).is_ok_and(|contents| {
        contents
            .iter()
            .map(|bytes| digest(bytes))
            .eq(digests.iter().copied())
    })
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
        assert!(matches!(
            watched.poll(),
            Reload::Reloaded { flag: "--b-file" }
        ));
        assert_eq!(*watched.current(), 6);

        std::fs::write(&a, "x").unwrap();
        let Reload::Kept(err) = watched.poll() else {
            panic!("kept")
        };
        assert_eq!(err.flag, "--a-file");
        assert_eq!(*watched.current(), 6);
        for path in [a, b] {
            std::fs::remove_file(path).unwrap();
        }
    }
}
