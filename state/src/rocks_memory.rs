//! One memory budget for every RocksDB database of the process.
//!
//! Entry points: [`set_memory_limit`] (at start-up, from `--state-memory-mb`) and
//! [`memory_usage`] (for metrics). Every store opened through [`crate::rocks`] or
//! [`crate::rocks_window`] uses the same block cache and the same write-buffer manager, which
//! charges every memtable to that cache. So the block cache, index and filter blocks and the
//! memtables of all stores (actives, standbys, warm-ups, every partition) stay within one bound,
//! however many partitions an instance hosts. This is what Kafka Streams users write a
//! `RocksDBConfigSetter` for (its "BoundedMemoryRocksDBConfig"); here it is the default.
//!
//! ```text
//!   limit ─┬─ LRU block cache, capacity = limit  ◀── data, index and filter blocks
//!          │                                     ◀── memtables (charged as dummy entries)
//!          └─ write-buffer manager, limit / 2    ─── flushes the largest memtable beyond it
//! ```
//!
//! The budget is process-wide (one instance per process) and can be changed while stores are
//! open: the cache and the manager are resized in place.

use std::sync::OnceLock;

use rocksdb::{Cache, WriteBufferManager};

/// The budget when nobody set one: `--state-memory-mb`'s default.
pub const DEFAULT_MEMORY_LIMIT_BYTES: usize = 256 << 20;
/// Below this, RocksDB would flush tiny memtables all the time.
pub const MIN_MEMORY_LIMIT_BYTES: usize = 16 << 20;
/// Memtable size of one store when the budget is large (RocksDB's default is 64 MiB; Kafka
/// Streams picks 16 MiB). A smaller budget gets smaller memtables: see [`write_buffer_bytes`].
const MAX_WRITE_BUFFER_BYTES: usize = 32 << 20;

struct Budget {
    cache: Cache,
    write_buffers: WriteBufferManager,
}

fn budget() -> &'static Budget {
    static BUDGET: OnceLock<Budget> = OnceLock::new();
    BUDGET.get_or_init(|| {
        let cache = Cache::new_lru_cache(DEFAULT_MEMORY_LIMIT_BYTES);
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            DEFAULT_MEMORY_LIMIT_BYTES / 2,
            false,
            cache.clone(),
        );
        Budget {
            cache,
            write_buffers,
        }
    })
}

/// The limit is below [`MIN_MEMORY_LIMIT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a RocksDB memory limit of {bytes} bytes is too small: at least {min} bytes")]
pub struct LimitTooSmall {
    pub bytes: usize,
    pub min: usize,
}

/// Bound the memory of every RocksDB store of this process (open or opened later) to `bytes`.
pub fn set_memory_limit(bytes: usize) -> Result<(), LimitTooSmall> {
    if bytes < MIN_MEMORY_LIMIT_BYTES {
        return Err(LimitTooSmall {
            bytes,
            min: MIN_MEMORY_LIMIT_BYTES,
        });
    }
    let b = budget();
    let mut cache = b.cache.clone();
    cache.set_capacity(bytes);
    b.write_buffers.set_buffer_size(bytes / 2);
    LIMIT.store(bytes, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

static LIMIT: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_MEMORY_LIMIT_BYTES);

/// The bound in force.
pub fn memory_limit() -> usize {
    LIMIT.load(std::sync::atomic::Ordering::Relaxed)
}

/// Memtable size of one store under the current budget: a store may use up to an eighth of
/// the memtable half of the budget before it flushes on its own, at most
/// [`MAX_WRITE_BUFFER_BYTES`].
pub(crate) fn write_buffer_bytes() -> usize {
    (memory_limit() / 16).clamp(1 << 20, MAX_WRITE_BUFFER_BYTES)
}

pub(crate) fn shared_cache() -> &'static Cache {
    &budget().cache
}

pub(crate) fn shared_write_buffers() -> &'static WriteBufferManager {
    &budget().write_buffers
}

/// What the budget holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    pub limit_bytes: usize,
    /// Everything charged to the shared cache: blocks and memtables.
    pub cache_bytes: usize,
    /// Of which memtables (the write-buffer manager's count).
    pub memtable_bytes: usize,
}

pub fn memory_usage() -> MemoryUsage {
    let b = budget();
    MemoryUsage {
        limit_bytes: memory_limit(),
        cache_bytes: b.cache.get_usage(),
        memtable_bytes: b.write_buffers.get_usage(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyValueStore, RocksDbStore};

    fn prop(s: &RocksDbStore, name: &str) -> u64 {
        s.property_u64(name).unwrap().unwrap()
    }

    /// One test, not several: the budget is process-wide, and parallel tests setting different
    /// limits would race.
    #[test]
    fn every_store_shares_one_budget_that_bounds_blocks_and_memtables() {
        assert_eq!(
            set_memory_limit(MIN_MEMORY_LIMIT_BYTES - 1),
            Err(LimitTooSmall {
                bytes: MIN_MEMORY_LIMIT_BYTES - 1,
                min: MIN_MEMORY_LIMIT_BYTES
            })
        );
        let limit = 32usize << 20;
        set_memory_limit(limit).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut stores: Vec<RocksDbStore> = (0..12)
            .map(|i| RocksDbStore::open(&tmp.path().join(format!("s-{i}")), "orders").unwrap())
            .collect();

        // RocksDB itself reports the budget as every database's block cache.
        for s in &stores {
            assert_eq!(prop(s, "rocksdb.block-cache-capacity"), limit as u64);
        }
        // Resized in place: stores already open follow.
        set_memory_limit(48 << 20).unwrap();
        assert_eq!(prop(&stores[0], "rocksdb.block-cache-capacity"), 48 << 20);
        set_memory_limit(limit).unwrap();

        // Each store alone stays under its own memtable size (2 MiB here), so only the shared
        // write-buffer manager can keep their sum under half the budget: 12 x 1.8 MiB = 21.6 MiB
        // would otherwise sit in memtables. Writes go round the stores, as events spread over
        // partitions do: the manager can only flush the database being written to.
        let own_buffer = write_buffer_bytes();
        assert_eq!(own_buffer, 2 << 20);
        let value = vec![7u8; 1024];
        let per_store = own_buffer * 9 / 10 / (value.len() + 16);
        for k in 0..per_store {
            for (i, s) in stores.iter_mut().enumerate() {
                s.put(format!("O-{i}-{k:08}").as_bytes(), &value).unwrap();
            }
        }
        // The manager switches memtables at once; the flushes run on RocksDB's two background
        // threads. Wait (with a deadline) for them to free the memory.
        let bound = (limit / 2 + own_buffer) as u64;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let in_memtables = loop {
            let sum: u64 = stores
                .iter()
                .map(|s| prop(s, "rocksdb.cur-size-all-mem-tables"))
                .sum();
            if sum <= bound || std::time::Instant::now() > deadline {
                break sum;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            in_memtables <= bound,
            "memtables hold {in_memtables} bytes, over half the {limit}-byte budget; {:?}",
            memory_usage()
        );
        // ... and what they hold is charged to the shared cache.
        let usage = memory_usage();
        assert!(usage.memtable_bytes > 0, "{usage:?}");
        assert!(
            prop(&stores[0], "rocksdb.block-cache-usage") >= usage.memtable_bytes as u64,
            "{usage:?}"
        );
        // Everything written is still there.
        assert_eq!(
            stores[11]
                .get(format!("O-11-{:08}", per_store - 1).as_bytes())
                .unwrap(),
            Some(value)
        );
    }
}
