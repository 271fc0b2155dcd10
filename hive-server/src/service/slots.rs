//! Counting limits on work in progress, for shedding load without waiting.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// A fixed number of slots that requests take without waiting. A request that finds no free
/// slot is rejected.
///
/// Cheaper than a semaphore for this use: taking and returning a slot are single atomic
/// operations, while returning a semaphore permit takes the semaphore's waiter lock.
#[derive(Debug)]
pub(super) struct Slots {
    in_use: AtomicUsize,
    limit: usize,
}

impl Slots {
    /// Creates `limit` free slots.
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            in_use: AtomicUsize::new(0),
            limit,
        })
    }

    /// Returns the number of slots.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a slot, or returns `None` when all are taken.
    pub(super) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                (in_use < self.limit).then_some(in_use + 1)
            })
            .ok()?;
        Some(Slot {
            slots: Arc::clone(self),
        })
    }
}

/// A taken slot, returned when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2);
        let first = slots.try_take().expect("first slot");
        let _second = slots.try_take().expect("second slot");
        assert!(slots.try_take().is_none());

        drop(first);
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn zero_slots_reject_everything() {
        let slots = Slots::new(0);
        assert!(slots.try_take().is_none());
    }
}
