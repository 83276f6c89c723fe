//! Program slots: the small numbers the attribution probes stamp on every
//! run (`prog_slot` in `struct skprof_run`), 1..SKPROF_MAX_PROGS-1; 0 means
//! "not attributed".
//!
//! A freed slot is not handed out again in the same rescan: the caller
//! deletes the slot's per-slot data after the rescan returns, and must not
//! delete data a new program already wrote under the reused number.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAllocator {
    free: BTreeSet<u32>,
    /// Freed during the current rescan; free again at the next one.
    quarantined: Vec<u32>,
    capacity: u32,
}

impl SlotAllocator {
    /// Slots `1..=capacity`, capacity clamped to `1..=max_slot`.
    pub fn new(capacity: usize, max_slot: u32) -> SlotAllocator {
        let capacity = u32::try_from(capacity).unwrap_or(u32::MAX).min(max_slot);
        SlotAllocator {
            free: (1..=capacity).collect(),
            quarantined: Vec::new(),
            capacity,
        }
    }

    /// How many programs can be traced at once.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The lowest free slot.
    pub fn alloc(&mut self) -> Option<u32> {
        self.free.pop_first()
    }

    /// Gives a slot back for reuse after the next `begin_rescan`.
    pub fn release(&mut self, slot: u32) {
        debug_assert!(slot >= 1 && slot <= self.capacity, "slot {slot}");
        debug_assert!(!self.free.contains(&slot) && !self.quarantined.contains(&slot));
        self.quarantined.push(slot);
    }

    /// Gives a slot back for immediate reuse: it was allocated in this
    /// rescan and nothing ran under it (its attach failed).
    pub fn unalloc(&mut self, slot: u32) {
        debug_assert!(!self.free.contains(&slot));
        self.free.insert(slot);
    }

    /// Starts a rescan: slots freed by the previous one become usable.
    pub fn begin_rescan(&mut self) {
        self.free.extend(self.quarantined.drain(..));
    }

    /// Slots neither free nor quarantined.
    pub fn in_use(&self) -> usize {
        self.capacity as usize - self.free.len() - self.quarantined.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_first_within_capacity() {
        let mut s = SlotAllocator::new(3, 255);
        assert_eq!(s.capacity(), 3);
        assert_eq!(s.alloc(), Some(1));
        assert_eq!(s.alloc(), Some(2));
        assert_eq!(s.alloc(), Some(3));
        assert_eq!(s.alloc(), None);
        assert_eq!(s.in_use(), 3);
    }

    #[test]
    fn capacity_is_clamped_to_the_slot_range() {
        assert_eq!(SlotAllocator::new(10_000, 255).capacity(), 255);
        assert_eq!(SlotAllocator::new(usize::MAX, 255).capacity(), 255);
        let mut none = SlotAllocator::new(0, 255);
        assert_eq!(none.alloc(), None);
    }

    #[test]
    fn freed_slots_wait_for_the_next_rescan() {
        let mut s = SlotAllocator::new(2, 255);
        s.begin_rescan();
        let a = s.alloc().unwrap();
        let b = s.alloc().unwrap();
        s.release(a);
        // Same rescan: the freed slot is not reused.
        assert_eq!(s.alloc(), None);
        assert_eq!(s.in_use(), 1);
        s.begin_rescan();
        assert_eq!(s.alloc(), Some(a));
        s.release(b);
        s.release(a);
        s.begin_rescan();
        assert_eq!(s.in_use(), 0);
        assert_eq!(s.alloc(), Some(1));
    }

    #[test]
    fn unalloc_is_immediate() {
        let mut s = SlotAllocator::new(2, 255);
        let a = s.alloc().unwrap();
        s.unalloc(a);
        assert_eq!(s.alloc(), Some(a));
    }
}
