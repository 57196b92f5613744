//! One RocksDB iterator kept by the window store's writer between its reads.
//!
//! Creating a RocksDB iterator costs allocations and a reference to the database's current
//! version; the SMS and approval topologies read a window store several times per event, so a
//! fresh iterator per read was a measurable share of the stream thread. An iterator reads the
//! database as it was when it was created, so the cache is dropped on every write
//! ([`IteratorCache::invalidate`], called by every `&mut` method of the store) and the next read
//! creates a new one: between two commits (the transactional layer writes RocksDB only then)
//! every read shares one iterator. Query threads never use it (their readers create their own).
//!
//! The iterator borrows the database it reads, which lives in the same `Arc<Shared>` the store
//! holds: [`self_cell`] keeps the two together without `unsafe` here.

use std::cell::RefCell;
use std::sync::Arc;

use rocksdb::DBRawIterator;

use super::Shared;
use crate::store::StoreError;

self_cell::self_cell!(
    /// The shared database and an iterator over it.
    struct Kept {
        owner: Arc<Shared>,
        #[covariant]
        dependent: DBRawIterator,
    }
);

/// At most one kept iterator over the store's database.
pub(super) struct IteratorCache {
    shared: Arc<Shared>,
    kept: RefCell<Option<Kept>>,
}

impl IteratorCache {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        IteratorCache {
            shared,
            kept: RefCell::new(None),
        }
    }

    /// Forget the kept iterator: the database changed, and it would not see the change.
    pub(super) fn invalidate(&mut self) {
        *self.kept.get_mut() = None;
    }

    /// Run `read` with the kept iterator (created first if there is none). An iterator that
    /// failed is not kept.
    pub(super) fn with<R>(
        &self,
        read: impl FnOnce(&Shared, &mut DBRawIterator<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut slot = self.kept.borrow_mut();
        let kept = slot
            .get_or_insert_with(|| Kept::new(Arc::clone(&self.shared), |s| s.db.raw_iterator()));
        let result = kept.with_dependent_mut(|shared, it| read(shared, it));
        if result.is_err() {
            *slot = None;
        }
        result
    }
}
