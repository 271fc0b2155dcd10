//! A wake-up signal that costs one atomic load to fire while no task waits on it.
//!
//! Every job records a few events and most jobs are never followed, so the registry and each
//! job fire a signal many times per request. `Notify::notify_waiters` takes a lock on each
//! call, so [`Signal::fire`] skips it when no task is watching.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, futures::Notified};

/// Signal that wakes the tasks watching it.
#[derive(Debug, Default)]
pub(super) struct Signal {
    notify: Notify,
    /// Number of live [`Watch`] guards.
    watchers: AtomicUsize,
}

impl Signal {
    /// Wakes every task waiting on a [`Watch::changed`] future of this signal.
    ///
    /// Call it after the change is visible to watchers, for example after releasing the lock
    /// the change was made under.
    pub(super) fn fire(&self) {
        // SeqCst pairs with the increment in `watch`: a watcher whose increment comes after
        // this load checks the state after the change, so it needs no wake-up.
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Starts watching. Create the guard before checking the state, then wait on
    /// [`Watch::changed`] when the state has nothing new.
    pub(super) fn watch(&self) -> Watch<'_> {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        Watch { signal: self }
    }
}

/// Guard of a task watching a [`Signal`].
pub(super) struct Watch<'a> {
    signal: &'a Signal,
}

impl Watch<'_> {
    /// Returns a future that completes at the next [`Signal::fire`]. A fire between this call
    /// and the first poll still completes it.
    pub(super) fn changed(&self) -> Notified<'_> {
        self.signal.notify.notified()
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.signal.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}
