//! Files that change under a running guard: read at start-up (an error names the flag and the
//! file), then polled; a new content that parses replaces the old, one that does not keeps the
//! last good one, is logged, and is counted.
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

/// Parses a file's bytes into the value it configures.
pub type Parser<T> = fn(&[u8]) -> Result<T, String>;

/// The current value of a polled file.
pub struct Watched<T> {
    flag: &'static str,
    path: PathBuf,
    parse: Parser<T>,
    current: ArcSwap<T>,
    digest: Mutex<[u8; 32]>,
}

/// Something the reload task polls.
pub trait Poll: Send + Sync {
    /// Re-reads the file: `Ok(true)` when a new value took effect, `Ok(false)` when unchanged.
    fn poll(&self) -> Result<bool, FileError>;
    /// The flag that named the file, for logs and metric labels.
    fn flag(&self) -> &'static str;
}

impl<T: Send + Sync> Watched<T> {
    /// Reads and parses the file once; failure is a start-up error.
    pub fn load(flag: &'static str, path: &Path, parse: Parser<T>) -> Result<Self, FileError> {
        let bytes = std::fs::read(path).map_err(|e| error(flag, path, e))?;
        let value = parse(&bytes).map_err(|message| error(flag, path, message))?;
        Ok(Self {
            flag,
            path: path.to_owned(),
            parse,
            current: ArcSwap::from_pointee(value),
            digest: Mutex::new(digest(&bytes)),
        })
    }

    /// The value in force.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }
}

impl<T: Send + Sync> Poll for Watched<T> {
    fn poll(&self) -> Result<bool, FileError> {
        let bytes = std::fs::read(&self.path).map_err(|e| error(self.flag, &self.path, e))?;
        let new_digest = digest(&bytes);
        let mut seen = self
            .digest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *seen == new_digest {
            return Ok(false);
        }
        // Remember the broken content too, so it is reported once, not at every poll.
        *seen = new_digest;
        let value =
            (self.parse)(&bytes).map_err(|message| error(self.flag, &self.path, message))?;
        self.current.store(Arc::new(value));
        Ok(true)
    }

    fn flag(&self) -> &'static str {
        self.flag
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

fn error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> FileError {
    FileError {
        flag,
        path: path.to_owned(),
        message: message.to_string(),
    }
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

    #[test]
    fn a_bad_edit_keeps_the_last_good_value_and_is_reported_once() {
        let path =
            std::env::temp_dir().join(format!("kubelet-guard-reload-{}", std::process::id()));
        std::fs::write(&path, "1").unwrap();
        let watched = Watched::load("--number-file", &path, number).unwrap();
        assert_eq!(*watched.current(), 1);
        assert!(!watched.poll().unwrap(), "unchanged content is no change");

        std::fs::write(&path, "two").unwrap();
        let err = watched.poll().unwrap_err().to_string();
        assert!(
            err.starts_with("--number-file ") && err.contains("invalid digit"),
            "{err}"
        );
        assert_eq!(*watched.current(), 1);
        assert!(
            !watched.poll().unwrap(),
            "the same broken content is reported once"
        );

        std::fs::write(&path, "3").unwrap();
        assert!(watched.poll().unwrap());
        assert_eq!(*watched.current(), 3);
        std::fs::remove_file(&path).unwrap();
        assert!(watched.poll().is_err());
        assert!(Watched::load("--number-file", &path, number).is_err());
    }
}
