//! Giving the C heap's freed memory back to the operating system.
//!
//! librdkafka and RocksDB allocate with glibc's `malloc` (paystream's own code uses mimalloc, see
//! `src/bin/paystream.rs`). glibc serves their threads from several arenas and returns an
//! arena's free memory to the system only from the top of its heap, so after a burst (a restore,
//! a fetch response of megabytes freed record by record, a flush) the pages stay resident though
//! free, and the RSS of an instance stays near its high-water mark. A thread of its own calls
//! `malloc_trim(0)` every `--heap-trim-interval-ms` (default 200): glibc then releases
//! (`madvise(MADV_DONTNEED)`) the free pages of every arena. Figures: BENCHMARKS.md, "Trimming
//! the C heap".

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it walks it.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Start the trimming thread; it stops once `shutdown` is cancelled. `every`: `None` trims
/// nothing (no thread).
pub fn start(every: Option<Duration>, shutdown: CancellationToken) {
    let Some(every) = every.filter(|d| !d.is_zero()) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(move || {
            while !shutdown.is_cancelled() {
                std::thread::sleep(every);
                trim();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the heap trimming thread; RSS may stay high");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == name)
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4_096
    }

    #[test]
    fn the_trimming_thread_runs_until_shutdown_and_none_starts_when_off() {
        let before = threads_named("malloc-trim");
        start(None, CancellationToken::new());
        start(Some(Duration::ZERO), CancellationToken::new());
        assert_eq!(threads_named("malloc-trim"), before, "off: no thread");
        let shutdown = CancellationToken::new();
        start(Some(Duration::from_millis(5)), shutdown.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        // The thread names itself once it runs.
        while threads_named("malloc-trim") == before {
            assert!(Instant::now() < deadline, "no trimming thread");
            std::thread::sleep(Duration::from_millis(5));
        }
        shutdown.cancel();
        while threads_named("malloc-trim") > before {
            assert!(
                Instant::now() < deadline,
                "the thread outlived its shutdown"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Library tests use the system allocator (glibc's malloc), as librdkafka and RocksDB do.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_gives_freed_pages_of_a_threads_arena_back() {
        let freed = std::thread::spawn(|| {
            // 64 MiB in small blocks (below the mmap threshold, so in this thread's arena); the
            // last one stays, so the arena's top cannot shrink by itself.
            let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 4_000]).collect();
            let keep = blocks.pop();
            drop(blocks);
            let before = rss_bytes();
            trim();
            let after = rss_bytes();
            drop(keep);
            before.saturating_sub(after)
        })
        .join()
        .expect("join");
        assert!(
            freed > 32 << 20,
            "a trim released {} MiB of 64 MiB freed",
            freed >> 20
        );
    }
}
