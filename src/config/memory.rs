//! Memory settings of `paystream run`: the RocksDB budget (`--state-memory-mb`) and how often the
//! C heap is trimmed (`--heap-trim-interval-ms`).

use std::time::Duration;

use super::{invalid, ConfigError, FileConfig, RunArgs};

/// `--state-memory-mb`'s default.
pub const DEFAULT_STATE_MEMORY_MB: u64 = 256;
/// `--heap-trim-interval-ms`'s default: 5 trims a second took 40–60 MiB off the ingest's peak
/// RSS at no measurable cost (BENCHMARKS.md, "Trimming the C heap").
pub const DEFAULT_HEAP_TRIM_INTERVAL_MS: u64 = 200;
/// Longest `--heap-trim-interval-ms`.
const MAX_HEAP_TRIM_INTERVAL_MS: u64 = 60_000;

impl RunArgs {
    pub(super) fn state_memory(&self, file: &FileConfig) -> Result<usize, ConfigError> {
        let mb = self
            .state_memory_mb
            .or(file.state_memory_mb)
            .unwrap_or(DEFAULT_STATE_MEMORY_MB);
        if !(16..=1 << 20).contains(&mb) {
            return Err(invalid(
                "state-memory-mb",
                format!("{mb} is outside 16..=1048576 (16 MiB to 1 TiB)"),
            ));
        }
        usize::try_from(mb << 20).map_err(|_| {
            invalid(
                "state-memory-mb",
                format!("{mb} MiB does not fit in memory"),
            )
        })
    }

    /// `None`: never trim (0).
    pub(super) fn heap_trim_interval(
        &self,
        file: &FileConfig,
    ) -> Result<Option<Duration>, ConfigError> {
        let ms = self
            .heap_trim_interval_ms
            .or(file.heap_trim_interval_ms)
            .unwrap_or(DEFAULT_HEAP_TRIM_INTERVAL_MS);
        if ms > MAX_HEAP_TRIM_INTERVAL_MS {
            return Err(invalid(
                "heap-trim-interval-ms",
                format!("{ms} is over {MAX_HEAP_TRIM_INTERVAL_MS} (0 turns trimming off)"),
            ));
        }
        Ok((ms > 0).then(|| Duration::from_millis(ms)))
    }
}
