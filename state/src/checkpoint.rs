//! Checkpoint files: how far a store directory's local state is known to be durable.
//!
//! Entry point: [`Checkpoint`]. Each store directory (one store of one partition) may hold a
//! [`CHECKPOINT_FILE`] recording the changelog offset from which a restore must resume: every
//! changelog record below it is in the local files. The owner writes it only after
//! [`KeyValueStore::flush`](crate::store::KeyValueStore::flush), so it never claims more than the
//! disk holds. The local files may hold *more* (RocksDB flushes on its own); replaying a few
//! records again is harmless because applying a changelog record is idempotent.
//!
//! A missing or unreadable checkpoint is not an error: it just means "restore from the beginning
//! of the changelog", which is always correct, only slower. So [`Checkpoint::read`] turns a corrupt
//! file into `Ok(None)` and a warning rather than a failure that would stop the task.
//!
//! The file is small JSON, `{"version":1,"changelog_offset":N}`, so an operator can read it with
//! `cat` during an incident. It is written atomically (temp file, fsync, rename, fsync of the
//! directory): a crash leaves either the old checkpoint or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Name of the checkpoint file inside a store directory. RocksDB ignores files it does not know,
/// so the checkpoint can sit next to the database files.
pub const CHECKPOINT_FILE: &str = ".checkpoint";

/// Temporary name used while writing; renamed over [`CHECKPOINT_FILE`] once complete.
const CHECKPOINT_TMP_FILE: &str = ".checkpoint.tmp";

/// The file format version this binary writes and reads.
const CHECKPOINT_VERSION: u32 = 1;

/// The changelog position up to which a store directory is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The next changelog offset to restore from (one past the last record the files hold).
    pub changelog_offset: i64,
}

/// On-disk form; `version` lets a future format be told apart instead of misread.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    version: u32,
    changelog_offset: i64,
}

impl Checkpoint {
    /// A checkpoint at `changelog_offset`.
    pub fn new(changelog_offset: i64) -> Self {
        Self { changelog_offset }
    }

    /// The checkpoint in `dir`, if there is a valid one.
    ///
    /// Missing file (or missing directory) → `Ok(None)`. A file that cannot be parsed, has an
    /// unknown version or a negative offset → `Ok(None)` and a warning: restore from scratch.
    /// Only an I/O failure other than "not found" is an error, since it likely means the disk
    /// is in trouble and writing the store will fail too.
    pub fn read(dir: &Path) -> Result<Option<Checkpoint>, StoreError> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(dir, "read checkpoint", &path, e)),
        };
        match serde_json::from_slice::<CheckpointFile>(&bytes) {
            Ok(file) if file.version == CHECKPOINT_VERSION && file.changelog_offset >= 0 => {
                Ok(Some(Checkpoint::new(file.changelog_offset)))
            }
            Ok(file) => {
                tracing::warn!(
                    path = %path.display(),
                    version = file.version,
                    changelog_offset = file.changelog_offset,
                    "ignoring checkpoint with unsupported version or negative offset; restoring from scratch"
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "ignoring unreadable checkpoint; restoring from scratch"
                );
                Ok(None)
            }
        }
    }

    /// Write this checkpoint into `dir` atomically, replacing any previous one.
    ///
    /// `dir` must exist (it is the store's directory). Steps: write a temp file, fsync it, rename
    /// it over the checkpoint, fsync the directory so the rename itself survives a power loss.
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        debug_assert!(
            self.changelog_offset >= 0,
            "checkpoint offset must be non-negative, got {}",
            self.changelog_offset
        );
        let tmp = dir.join(CHECKPOINT_TMP_FILE);
        let path = dir.join(CHECKPOINT_FILE);
        let body = serde_json::to_vec(&CheckpointFile {
            version: CHECKPOINT_VERSION,
            changelog_offset: self.changelog_offset,
        })
        .map_err(|e| io_error(dir, "encode checkpoint", &path, io::Error::other(e)))?;

        let mut file =
            File::create(&tmp).map_err(|e| io_error(dir, "create checkpoint", &tmp, e))?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(dir, "write checkpoint", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| io_error(dir, "rename checkpoint", &path, e))?;
        sync_dir(dir)
    }

    /// Delete the checkpoint in `dir` (a no-op when there is none), e.g. before wiping the store or
    /// when the local state can no longer be trusted.
    pub fn remove(dir: &Path) -> Result<(), StoreError> {
        let path = dir.join(CHECKPOINT_FILE);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(dir, "remove checkpoint", &path, e)),
        }
    }
}

/// Make a rename or removal in `dir` durable. Directories cannot be opened for fsync on Windows;
/// there the rename is as durable as the OS makes it.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, "sync store directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn io_error(dir: &Path, what: &str, path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        store: dir.display().to_string(),
        context: format!("{what} {}", path.display()),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        Checkpoint::new(42).write(dir.path()).unwrap();
        assert_eq!(
            Checkpoint::read(dir.path()).unwrap(),
            Some(Checkpoint::new(42))
        );
        let text = fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, r#"{"version":1,"changelog_offset":42}"#);
    }

    #[test]
    fn missing_file_and_missing_dir_are_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        assert_eq!(Checkpoint::read(&dir.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn corrupt_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        for body in [
            &b"{\"version\":1,\"changelog_of"[..],
            b"",
            b"\xff\xfe garbage",
            b"{\"version\":2,\"changelog_offset\":7}",
            b"{\"version\":1,\"changelog_offset\":-1}",
            b"{\"version\":1}",
        ] {
            fs::write(&path, body).unwrap();
            assert_eq!(
                Checkpoint::read(dir.path()).unwrap(),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn overwrite_replaces_atomically_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        Checkpoint::new(1).write(dir.path()).unwrap();
        // A temp file left behind by a crash mid-write must not matter.
        fs::write(dir.path().join(CHECKPOINT_TMP_FILE), b"half").unwrap();
        assert_eq!(
            Checkpoint::read(dir.path()).unwrap(),
            Some(Checkpoint::new(1))
        );
        Checkpoint::new(1_000_000).write(dir.path()).unwrap();
        assert_eq!(
            Checkpoint::read(dir.path()).unwrap(),
            Some(Checkpoint::new(1_000_000))
        );
        assert!(!dir.path().join(CHECKPOINT_TMP_FILE).exists());
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        Checkpoint::new(5).write(dir.path()).unwrap();
        Checkpoint::remove(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()).unwrap(), None);
        Checkpoint::remove(dir.path()).unwrap();
    }

    #[test]
    fn write_into_missing_dir_is_an_io_error_with_context() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = Checkpoint::new(5).write(&missing).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("create checkpoint"), "{err}");
    }
}
