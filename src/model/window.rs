//! Cumulative readings into windows, written once for every face: slots
//! freed since the previous reading leave every earlier reading (their
//! aggregates were deleted and the slot may hold another program now), then
//! the readings are subtracted.

use super::snapshot::Snapshot;

/// A window's figures: the difference of two readings and its length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub delta: Snapshot,
    pub secs: f64,
}

/// The first and the previous reading of a run of readings.
#[derive(Debug, Clone, Default)]
pub struct Window {
    first: Option<Snapshot>,
    prev: Option<Snapshot>,
    cur: Option<Snapshot>,
}

fn step(cur: &Snapshot, earlier: &Snapshot) -> Step {
    Step {
        delta: cur.delta(earlier),
        secs: cur.mono_ns.saturating_sub(earlier.mono_ns) as f64 / 1e9,
    }
}

impl Window {
    /// Takes the next cumulative reading, `freed` the slots freed since the
    /// previous one; returns the interval since the previous reading
    /// (`None` for the first).
    pub fn push(&mut self, cur: Snapshot, freed: &[u32]) -> Option<Step> {
        if let Some(f) = &mut self.first {
            f.forget_slots(freed);
        }
        if let Some(mut prev) = self.cur.take() {
            prev.forget_slots(freed);
            self.prev = Some(prev);
        }
        if self.first.is_none() {
            self.first = Some(cur.clone());
        }
        self.cur = Some(cur);
        self.last()
    }

    /// The last interval: the newest reading against the one before.
    pub fn last(&self) -> Option<Step> {
        Some(step(self.cur.as_ref()?, self.prev.as_ref()?))
    }

    /// Everything since the first reading.
    pub fn since_first(&self) -> Option<Step> {
        let cur = self.cur.as_ref()?;
        self.prev.as_ref()?;
        Some(step(cur, self.first.as_ref()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hist::LogHist;
    use crate::model::ids::{Helper, Outcome};
    use crate::model::snapshot::{Cell, CellKey};

    fn reading(mono_s: u64, cells: &[(u32, u64)]) -> Snapshot {
        let mut s = Snapshot {
            mono_ns: mono_s * 1_000_000_000,
            ..Default::default()
        };
        for &(prog, calls) in cells {
            let key = CellKey {
                prog,
                helper: Helper::TcSkLookupTcp,
                outcome: Outcome::Hit,
                netns: 0,
                ifindex: 0,
                site: 0,
            };
            let hist = LogHist::from_dense(calls, 0, 0, 0, &[]);
            s.cells.insert(
                key,
                Cell {
                    calls,
                    hist,
                    ..Default::default()
                },
            );
        }
        s
    }

    fn calls(s: &Snapshot) -> u64 {
        s.cells.values().map(|c| c.calls).sum()
    }

    #[test]
    fn intervals_and_totals() {
        let mut w = Window::default();
        assert!(w.push(reading(0, &[(1, 5)]), &[]).is_none());
        let s = w.push(reading(2, &[(1, 12)]), &[]).unwrap();
        assert_eq!((calls(&s.delta), s.secs), (7, 2.0));
        let s = w.push(reading(3, &[(1, 20)]), &[]).unwrap();
        assert_eq!(calls(&s.delta), 8);
        let t = w.since_first().unwrap();
        assert_eq!((calls(&t.delta), t.secs), (15, 3.0));
    }

    #[test]
    fn a_freed_slot_starts_from_zero_and_its_next_program_is_new() {
        let mut w = Window::default();
        w.push(reading(0, &[(1, 5), (2, 3)]), &[]);
        w.push(reading(1, &[(1, 9), (2, 4)]), &[]);
        // Slot 2's program went away; a new one took the slot and made 2
        // calls: nothing is subtracted from them.
        let s = w.push(reading(2, &[(1, 10), (2, 2)]), &[2]).unwrap();
        assert_eq!(calls(&s.delta), 3);
        assert_eq!(calls(&w.since_first().unwrap().delta), 7);
    }
}
