//! Who an instance is across restarts: its process id (kept in the state directory), and how
//! caught up the stores it left on disk are, so the group can hand those partitions back to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use paystream_state::checkpoint::Checkpoint;

use crate::engine::task::store_dir;

/// The state directory could not be used for the process id.
#[derive(Debug, thiserror::Error)]
#[error("state directory {path}: {source}")]
pub struct IdentityError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The instance's stable identity, kept in `<state-dir>/<app-id>/process-id` so a restarted
/// instance is recognised (it gets back the partitions whose stores it still has, and its
/// transactional id fences its own earlier incarnation).
pub fn process_id(state_dir: &Path, application_id: &str) -> Result<String, IdentityError> {
    let dir = state_dir.join(application_id);
    let path = dir.join("process-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_owned();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let err = |source| IdentityError {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = format!("{:x}-{:x}", nanos, std::process::id());
    std::fs::write(&path, &id).map_err(err)?;
    Ok(id)
}

/// Changelog offsets of the stores left on disk by an earlier run (from their checkpoints),
/// per partition: the smallest over `stores`, and only where every one of them has one.
pub fn checkpointed_positions(
    state_dir: &Path,
    application_id: &str,
    stores: &[String],
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    'partitions: for p in 0..partitions {
        let mut min: Option<i64> = None;
        for s in stores {
            let dir = store_dir(state_dir, application_id, p, s);
            match Checkpoint::read(&dir) {
                Ok(Some(c)) => {
                    min = Some(min.map_or(c.changelog_offset, |m| m.min(c.changelog_offset)))
                }
                _ => continue 'partitions,
            }
        }
        if let Some(m) = min {
            out.insert(p, m);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_id_survives_a_restart_and_positions_need_every_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = process_id(dir.path(), "app").unwrap();
        assert_eq!(process_id(dir.path(), "app").unwrap(), a);
        for (p, store, offset) in [(0, "orders", 10), (0, "sms", 7), (1, "orders", 5)] {
            let d = store_dir(dir.path(), "app", p, store);
            std::fs::create_dir_all(&d).unwrap();
            Checkpoint::new(offset).write(&d).unwrap();
        }
        let stores = ["orders".to_owned(), "sms".to_owned()];
        let got = checkpointed_positions(dir.path(), "app", &stores, 3);
        assert_eq!(
            got,
            BTreeMap::from([(0, 7)]),
            "partition 1 lacks an sms checkpoint"
        );
    }
}
