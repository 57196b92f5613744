//! Why a store directory could not be opened, and the one rule that follows: **a store is wiped
//! only when its contents are proven unusable.**
//!
//! Entry point: [`OpenFailure`] (carried by [`StoreError::Open`]) and
//! [`OpenFailure::is_unusable`]. Opening a store can fail because of the files (RocksDB reports
//! corruption, or the directory holds a paystream [`StoreFormat`] this binary cannot read) or
//! because of the world around them (the database lock is still held, the process is out of
//! file handles, the disk is full, any other I/O error). Only the first kind is answered by
//! deleting the directory and restoring it from the changelog; the second is reported and
//! retried by the owner, since deleting data cannot fix it (and, with a lock held, the reopen
//! would fail the same way afterwards).
//!
//! ```text
//! open ──Ok──────────────────────────────────────────▶ store
//!   └─Err(Open{failure}) ── failure.is_unusable()? ──yes──▶ destroy dir, open empty, restore
//!                                                  └─no───▶ report + retry with backoff
//! ```

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// Why opening a store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// The database's lock is held: by a handle still open in this process (RocksDB: "lock hold
    /// by current process") or by another process ("While lock file"). Retry.
    Locked,
    /// The process or the system ran out of file handles (`EMFILE`, `ENFILE`). Retry.
    TooManyOpenFiles,
    /// The disk is full or the quota is exhausted (`ENOSPC`, `EDQUOT`). Retry.
    DiskFull,
    /// Any other error (I/O, busy, timed out, an option RocksDB refuses, ...). Nothing proves
    /// the files bad, so: retry, never wipe.
    Io,
    /// RocksDB found the files corrupt. Wipe and restore.
    Corrupt,
    /// The directory holds a store format this binary cannot read. Wipe and restore.
    UnsupportedFormat,
}

impl OpenFailure {
    /// Whether the store's files are proven unusable, so that wiping them (and restoring from
    /// the changelog) is the answer. Everything else is retried and the files are left alone.
    pub fn is_unusable(self) -> bool {
        matches!(self, OpenFailure::Corrupt | OpenFailure::UnsupportedFormat)
    }

    /// A stable snake_case name (logs, `/health`).
    pub fn code(self) -> &'static str {
        match self {
            OpenFailure::Locked => "locked",
            OpenFailure::TooManyOpenFiles => "too_many_open_files",
            OpenFailure::DiskFull => "disk_full",
            OpenFailure::Io => "io",
            OpenFailure::Corrupt => "corrupt",
            OpenFailure::UnsupportedFormat => "unsupported_format",
        }
    }
}

impl fmt::Display for OpenFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Classify an error message of the storage engine or the OS by the `strerror` text it carries.
/// Resource exhaustion is looked for first: a lock that could not be taken because no file
/// handle was left is a handle problem, not a lock held by someone.
pub fn classify_message(message: &str) -> OpenFailure {
    let m = message.to_ascii_lowercase();
    if m.contains("too many open files") {
        OpenFailure::TooManyOpenFiles
    } else if m.contains("no space left on device") || m.contains("disk quota exceeded") {
        OpenFailure::DiskFull
    } else if m.contains("lock hold by current process")
        || m.contains("while lock file")
        || m.contains("resource temporarily unavailable")
    {
        OpenFailure::Locked
    } else {
        OpenFailure::Io
    }
}

/// Classify a filesystem error met while opening (creating the directory, reading the format
/// marker). Never [`OpenFailure::is_unusable`]: an I/O error says nothing about the contents.
pub fn classify_io(e: &io::Error) -> OpenFailure {
    // EMFILE and ENFILE have the same numbers on Linux and the BSDs; std has no kind for them.
    #[cfg(unix)]
    if matches!(e.raw_os_error(), Some(23 | 24)) {
        return OpenFailure::TooManyOpenFiles;
    }
    match e.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => OpenFailure::DiskFull,
        io::ErrorKind::WouldBlock => OpenFailure::Locked,
        _ => match classify_message(&e.to_string()) {
            OpenFailure::Locked | OpenFailure::Io => OpenFailure::Io,
            other => other,
        },
    }
}

/// Name of the format marker inside a store directory (RocksDB ignores files it does not know).
pub const FORMAT_FILE: &str = ".paystream-format";
const FORMAT_TMP_FILE: &str = ".paystream-format.tmp";

/// The layout of a store directory this binary writes and reads: `1` is one RocksDB database per
/// store and partition, key-value keys as given, window keys prefixed by their segment id
/// (`rocks_window`), values in the [`crate::codec`] format. A binary that changes the layout
/// bumps it; an older binary then finds a format it cannot read and restores from the changelog
/// instead of misreading the files.
pub const STORE_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FormatFile {
    format: u32,
}

/// The format marker of a store directory.
pub struct StoreFormat;

impl StoreFormat {
    /// Check `dir`'s marker before opening. `Ok` when it is [`STORE_FORMAT`] or missing (a new
    /// store, or one written before markers existed: format 1). An unknown version or a marker
    /// that cannot be parsed is [`OpenFailure::UnsupportedFormat`]; an I/O error is classified by
    /// [`classify_io`].
    pub fn check(dir: &Path, store: &str) -> Result<(), StoreError> {
        let path = dir.join(FORMAT_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(open_error(store, dir, classify_io(&e), "read format", e)),
        };
        match serde_json::from_slice::<FormatFile>(&bytes) {
            Ok(f) if f.format == STORE_FORMAT => Ok(()),
            Ok(f) => Err(open_error(
                store,
                dir,
                OpenFailure::UnsupportedFormat,
                "check format",
                format!(
                    "store format {} (this binary reads {STORE_FORMAT})",
                    f.format
                ),
            )),
            Err(e) => Err(open_error(
                store,
                dir,
                OpenFailure::UnsupportedFormat,
                "check format",
                format!("unreadable format marker: {e}"),
            )),
        }
    }

    /// Write the marker (atomically: temp file, fsync, rename) if `dir` has none yet.
    pub fn ensure(dir: &Path, store: &str) -> Result<(), StoreError> {
        let path = dir.join(FORMAT_FILE);
        if path.exists() {
            return Ok(());
        }
        let tmp = dir.join(FORMAT_TMP_FILE);
        let body = format!("{{\"format\":{STORE_FORMAT}}}");
        File::create(&tmp)
            .and_then(|mut f| f.write_all(body.as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| open_error(store, dir, classify_io(&e), "write format", e))
    }

    /// Write `format` as the marker of `dir`, whatever it holds (tests, migrations).
    pub fn write_version(dir: &Path, format: u32) -> io::Result<()> {
        fs::write(dir.join(FORMAT_FILE), format!("{{\"format\":{format}}}"))
    }
}

/// A [`StoreError::Open`].
pub fn open_error(
    store: &str,
    dir: &Path,
    failure: OpenFailure,
    what: &str,
    cause: impl fmt::Display,
) -> StoreError {
    StoreError::Open {
        store: store.to_owned(),
        dir: dir.to_owned(),
        failure,
        message: format!("{what}: {cause}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_and_os_messages_are_classified() {
        let cases = [
            ("IO error: lock hold by current process, acquire time 1 acquiring thread 2: /s/LOCK: No locks available", OpenFailure::Locked),
            ("IO error: While lock file: /s/LOCK: Resource temporarily unavailable", OpenFailure::Locked),
            ("IO error: While open a file for appending: /s/000012.log: Too many open files", OpenFailure::TooManyOpenFiles),
            ("IO error: While lock file: /s/LOCK: Too many open files", OpenFailure::TooManyOpenFiles),
            ("IO error: While appending to file: /s/MANIFEST-000005: No space left on device", OpenFailure::DiskFull),
            ("IO error: Disk quota exceeded", OpenFailure::DiskFull),
            ("IO error: No such file or directory", OpenFailure::Io),
            ("Invalid argument: Compression type LZ4 is not linked with the binary.", OpenFailure::Io),
        ];
        for (message, want) in cases {
            assert_eq!(classify_message(message), want, "{message}");
        }
    }

    #[test]
    fn only_corruption_and_unknown_formats_are_unusable() {
        use OpenFailure::*;
        for f in [Locked, TooManyOpenFiles, DiskFull, Io] {
            assert!(!f.is_unusable(), "{f}");
        }
        for f in [Corrupt, UnsupportedFormat] {
            assert!(f.is_unusable(), "{f}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn os_errors_are_classified_and_never_unusable() {
        let cases = [
            (
                io::Error::from_raw_os_error(24),
                OpenFailure::TooManyOpenFiles,
            ),
            (
                io::Error::from_raw_os_error(23),
                OpenFailure::TooManyOpenFiles,
            ),
            (io::Error::from_raw_os_error(28), OpenFailure::DiskFull),
            (io::Error::from_raw_os_error(13), OpenFailure::Io),
            (
                io::Error::from(io::ErrorKind::StorageFull),
                OpenFailure::DiskFull,
            ),
            (
                io::Error::other("lock hold by current process"),
                OpenFailure::Io,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(classify_io(&e), want, "{e}");
            assert!(!classify_io(&e).is_unusable());
        }
    }

    #[test]
    fn format_marker_missing_current_unknown_and_garbled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        StoreFormat::check(dir, "s").unwrap();
        StoreFormat::ensure(dir, "s").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(FORMAT_FILE)).unwrap(),
            r#"{"format":1}"#
        );
        StoreFormat::check(dir, "s").unwrap();
        for body in [&b"{\"format\":2}"[..], b"{\"form", b""] {
            fs::write(dir.join(FORMAT_FILE), body).unwrap();
            let err = StoreFormat::check(dir, "s").unwrap_err();
            assert!(err.is_unusable(), "{err}");
        }
        // `ensure` never overwrites a marker it did not write.
        StoreFormat::ensure(dir, "s").unwrap();
        assert_eq!(fs::read(dir.join(FORMAT_FILE)).unwrap(), b"");
    }
}
