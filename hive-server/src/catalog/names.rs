//! The names of the catalog's entries, kept between listings while the directory is unchanged.
//!
//! Creating, removing or renaming an entry changes the directory's modification and change
//! times. A listing first reads the identity of the directory at the catalog's path (device,
//! inode, size and both times) with one `stat`. When it equals the identity of the last scan,
//! the names of that scan are still the names on disk. A new scan of an empty directory would
//! take five system calls (open, `fstat`, two reads, close), and more for a large one.
//!
//! A directory mounted over the path, or a parent renamed, shows a different device or inode, so
//! it is scanned as well.

use std::{
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use super::{CatalogError, WorkerName, entry::FileIdentity};

/// The entry names of one catalog directory, scanned again only after it changed.
#[derive(Debug)]
pub(super) struct EntryNames {
    last: RwLock<Option<Scan>>,
    settle: Duration,
}

/// Sorted names from one scan, and the directory's identity just before it.
#[derive(Debug)]
struct Scan {
    identity: FileIdentity,
    names: Arc<[WorkerName]>,
}

impl EntryNames {
    /// Creates an empty record. A scan is kept only when the directory last changed at least
    /// `settle` before it, because a change within one timestamp tick of an earlier one can leave
    /// the times as they were.
    pub(super) fn new(settle: Duration) -> Self {
        Self {
            last: RwLock::new(None),
            settle,
        }
    }

    /// Returns the sorted entry names of `dir`: those of the last scan when the directory is
    /// unchanged since, else the ones `scan` reads now.
    pub(super) fn get(
        &self,
        dir: &Path,
        scan: impl FnOnce() -> Result<Vec<WorkerName>, CatalogError>,
    ) -> Result<Arc<[WorkerName]>, CatalogError> {
        let metadata = std::fs::metadata(dir).map_err(|e| CatalogError::io("read", dir, e))?;
        let identity = FileIdentity::of(&metadata);
        {
            let last = self.last.read().expect("catalog name lock poisoned");
            if let Some(last) = last.as_ref().filter(|last| last.identity == identity) {
                return Ok(Arc::clone(&last.names));
            }
        }

        let scanned_at = SystemTime::now();
        let mut names = scan()?;
        names.sort();
        let names: Arc<[WorkerName]> = names.into();
        let settled = identity.settled(scanned_at, self.settle);
        *self.last.write().expect("catalog name lock poisoned") = settled.then(|| Scan {
            identity,
            names: Arc::clone(&names),
        });
        Ok(names)
    }
}
