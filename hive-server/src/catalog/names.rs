//! The names of the catalog's entries, kept between reads while the directory is unchanged.
//!
//! An inotify watch on the catalog directory records every entry created, removed or renamed
//! there, by the hive or by anyone else. The kernel queues the event before the call that made
//! the change returns. So when a read finds the queue empty, the names it read last are still
//! the names on disk. That check is one `FIONREAD` query, where scanning the directory again
//! takes four system calls and grows with the number of entries.
//!
//! The query leaves the events queued, so concurrent readers need no lock for it. Only a reader
//! that finds events takes the write lock, removes them and scans the directory. Readers that
//! check the queue after that wait on the lock and get the new names.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::OwnedFd,
    path::Path,
    sync::{Arc, RwLock},
};

use rustix::{
    fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags},
    io::Errno,
};

use super::WorkerName;

/// Changes that add, remove or rename an entry, and the end of the directory itself.
const WATCHED: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF)
    .union(WatchFlags::ONLYDIR);

/// Events after which the watch no longer follows the directory at the catalog's path.
const WATCH_ENDED: ReadFlags = ReadFlags::DELETE_SELF
    .union(ReadFlags::MOVE_SELF)
    .union(ReadFlags::IGNORED)
    .union(ReadFlags::UNMOUNT);

/// The entry names of one catalog directory, read again only after it changed.
#[derive(Debug)]
pub(super) struct EntryNames {
    /// Non-blocking inotify descriptor watching the directory.
    watch: OwnedFd,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Sorted names as last read, or `None` before the first read and after a change.
    names: Option<Arc<[WorkerName]>>,
    /// Whether the watch stopped following the directory. Every read then scans it.
    ended: bool,
}

impl EntryNames {
    /// Starts watching `dir`. Fails when inotify is unavailable or its per-user limits are
    /// reached, and the catalog then scans the directory on every read.
    pub(super) fn watch(dir: &Path) -> io::Result<Self> {
        let watch = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)?;
        inotify::add_watch(&watch, dir, WATCHED)?;
        Ok(Self {
            watch,
            state: RwLock::new(State::default()),
        })
    }

    /// Returns the sorted entry names: the ones read last when the directory has not changed
    /// since, else the ones `scan` reads now.
    pub(super) fn get<E>(
        &self,
        scan: impl FnOnce() -> Result<Vec<WorkerName>, E>,
    ) -> Result<Arc<[WorkerName]>, E> {
        if !self.has_changes() {
            let state = self.state.read().expect("catalog name lock poisoned");
            if let Some(names) = &state.names {
                return Ok(Arc::clone(names));
            }
        }

        let mut state = self.state.write().expect("catalog name lock poisoned");
        if !state.ended {
            // Removed under the write lock, so no reader can find the queue empty and still
            // take the names from before the change.
            let change = self.take_changes();
            if change != Change::None {
                state.names = None;
            }
            if change == Change::WatchEnded {
                tracing::debug!("catalog directory no longer watched, scanning it on every read");
                state.ended = true;
            }
        }
        if let Some(names) = &state.names {
            return Ok(Arc::clone(names));
        }

        let mut names = scan()?;
        names.sort();
        let names: Arc<[WorkerName]> = names.into();
        if !state.ended {
            state.names = Some(Arc::clone(&names));
        }
        Ok(names)
    }

    /// Returns whether events are queued, without removing them. A failed query counts as a
    /// change, so the caller takes the path that reads the directory.
    fn has_changes(&self) -> bool {
        !matches!(rustix::io::ioctl_fionread(&self.watch), Ok(0))
    }

    /// Reads every queued event and returns the largest change among them.
    fn take_changes(&self) -> Change {
        let mut buffer = [MaybeUninit::<u8>::uninit(); 4096];
        let mut events = inotify::Reader::new(&self.watch, &mut buffer);
        let mut change = Change::None;
        loop {
            match events.next() {
                Ok(event) if event.events().intersects(WATCH_ENDED) => {
                    change = Change::WatchEnded;
                }
                Ok(_) => change = change.max(Change::Entries),
                Err(Errno::AGAIN) => return change,
                Err(Errno::INTR) => {}
                Err(error) => {
                    tracing::debug!(%error, "failed to read catalog directory events");
                    return Change::WatchEnded;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    None,
    Entries,
    WatchEnded,
}
