//! Exact counts of what the workload did, for comparison with the probes.

use std::collections::BTreeMap;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::model::ids::{Family, Helper, Outcome, Proto, SockClass};

/// What the workload's programs did, as recorded by their own counters and
/// checked against the plan. Zero counts are not stored, so two tallies of
/// the same work compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Rounds completed (a stopped run may also hold a partial round).
    pub rounds: u64,
    /// Program runs that performed a lookup (one lookup per run).
    pub runs: BTreeMap<Family, u64>,
    /// Lookup helper calls by how they ended.
    pub calls: BTreeMap<(Family, Proto, Outcome), u64>,
    /// Lookups that returned a socket, by its class.
    pub hits: BTreeMap<(Family, Proto, SockClass), u64>,
    /// Of those, the ones that took a reference (`SockClass::refcounted`).
    pub acquired: BTreeMap<(Family, Proto, SockClass), u64>,
    /// `bpf_sk_release()` calls that dropped a reference (unmatched ones
    /// included, as skprof's `release.dropped` counts them).
    pub released: BTreeMap<SockClass, u64>,
    /// `bpf_sk_release()` calls on a socket holding no reference (no-op).
    pub release_noop: BTreeMap<SockClass, u64>,
    /// Of `released`, the references no lookup helper took (sockets taken
    /// out of a SOCKHASH): what skprof calls unmatched releases.
    pub release_unmatched: BTreeMap<SockClass, u64>,
}

fn add<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, n: u64) {
    if n != 0 {
        *map.entry(key).or_insert(0) += n;
    }
}

impl Tally {
    /// Records `n` lookups of one (family, proto) ending in `outcome`, and
    /// for hits the release the workload programs always do.
    pub fn record(
        &mut self,
        family: Family,
        proto: Proto,
        outcome: Outcome,
        class: Option<SockClass>,
        n: u64,
    ) {
        add(&mut self.runs, family, n);
        add(&mut self.calls, (family, proto, outcome), n);
        if outcome == Outcome::Hit {
            let class = class.unwrap_or(SockClass::Other);
            add(&mut self.hits, (family, proto, class), n);
            if class.refcounted() {
                add(&mut self.acquired, (family, proto, class), n);
                add(&mut self.released, class, n);
            } else {
                add(&mut self.release_noop, class, n);
            }
        }
    }

    /// Records `n` releases of `class` sockets whose reference came from
    /// no lookup helper (`bpf_map_lookup_elem` on a SOCKHASH): they drop a
    /// reference nothing in `acquired` took.
    pub fn record_unmatched_release(&mut self, class: SockClass, n: u64) {
        if class.refcounted() {
            add(&mut self.released, class, n);
            add(&mut self.release_unmatched, class, n);
        } else {
            add(&mut self.release_noop, class, n);
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.rounds += other.rounds;
        for (&k, &n) in &other.runs {
            add(&mut self.runs, k, n);
        }
        for (&k, &n) in &other.calls {
            add(&mut self.calls, k, n);
        }
        for (&k, &n) in &other.hits {
            add(&mut self.hits, k, n);
        }
        for (&k, &n) in &other.acquired {
            add(&mut self.acquired, k, n);
        }
        for (&k, &n) in &other.released {
            add(&mut self.released, k, n);
        }
        for (&k, &n) in &other.release_noop {
            add(&mut self.release_noop, k, n);
        }
        for (&k, &n) in &other.release_unmatched {
            add(&mut self.release_unmatched, k, n);
        }
    }

    pub fn calls(&self, family: Family, proto: Proto, outcome: Outcome) -> u64 {
        self.calls
            .get(&(family, proto, outcome))
            .copied()
            .unwrap_or(0)
    }

    pub fn hits(&self, family: Family, proto: Proto, class: SockClass) -> u64 {
        self.hits.get(&(family, proto, class)).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    /// Calls made by one family's program.
    pub fn family_calls(&self, family: Family) -> u64 {
        self.calls
            .iter()
            .filter(|((f, _, _), _)| *f == family)
            .map(|(_, n)| n)
            .sum()
    }

    /// The same counts per traced kernel function. `has_tc_variants`:
    /// whether the kernel has `bpf_tc_*` (else tc calls land in the
    /// generic functions).
    pub fn by_helper(&self, has_tc_variants: bool) -> HelperTally {
        let mut t = HelperTally::default();
        let h = |f, p| Helper::for_call(f, p, has_tc_variants).index();
        for (&(f, p, o), &n) in &self.calls {
            t.calls[h(f, p)][o.index()] += n;
        }
        for (&(f, p, c), &n) in &self.hits {
            t.hits[h(f, p)][c.index()] += n;
        }
        for (&(f, p, c), &n) in &self.acquired {
            t.acquired[h(f, p)][c.index()] += n;
        }
        for (&c, &n) in &self.released {
            t.released[c.index()] += n;
        }
        for (&c, &n) in &self.release_noop {
            t.release_noop[c.index()] += n;
        }
        for (&c, &n) in &self.release_unmatched {
            t.release_unmatched[c.index()] += n;
        }
        t
    }
}

/// `Tally` per kernel function, shaped like `skprof_counters` (indexed by
/// `Helper::index`, `Outcome::index`, `SockClass::index`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelperTally {
    pub calls: [[u64; Outcome::COUNT]; Helper::COUNT],
    pub hits: [[u64; SockClass::COUNT]; Helper::COUNT],
    pub acquired: [[u64; SockClass::COUNT]; Helper::COUNT],
    pub released: [u64; SockClass::COUNT],
    pub release_noop: [u64; SockClass::COUNT],
    /// Of `released`, references no lookup helper took. (Recordings do not
    /// carry it yet: src/record's codec writes the fields above.)
    pub release_unmatched: [u64; SockClass::COUNT],
}

impl HelperTally {
    pub fn calls(&self, helper: Helper, outcome: Outcome) -> u64 {
        self.calls[helper.index()][outcome.index()]
    }

    pub fn total_calls(&self, helper: Helper) -> u64 {
        self.calls[helper.index()].iter().sum()
    }

    pub fn hits(&self, helper: Helper, class: SockClass) -> u64 {
        self.hits[helper.index()][class.index()]
    }

    pub fn acquired(&self, helper: Helper, class: SockClass) -> u64 {
        self.acquired[helper.index()][class.index()]
    }

    /// Helpers with at least one call, in index order.
    pub fn helpers(&self) -> impl Iterator<Item = Helper> + '_ {
        Helper::ALL.into_iter().filter(|h| self.total_calls(*h) > 0)
    }
}

// JSON: lists of records with non-zero counts, named like the rest of
// skprof ({"family":"tc","proto":"skc_tcp","outcome":"hit","count":100}),
// since JSON object keys cannot be tuples.

struct Records<'a, K, R>(&'a BTreeMap<K, u64>, fn(&K, u64) -> R);

impl<K, R: Serialize> Serialize for Records<'_, K, R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, &n) in self.0 {
            seq.serialize_element(&(self.1)(k, n))?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct FamilyCount {
    family: Family,
    count: u64,
}
#[derive(Serialize)]
struct CallCount {
    family: Family,
    proto: Proto,
    outcome: Outcome,
    count: u64,
}
#[derive(Serialize)]
struct ClassCount3 {
    family: Family,
    proto: Proto,
    class: SockClass,
    count: u64,
}
#[derive(Serialize)]
struct ClassCount {
    class: SockClass,
    count: u64,
}

impl Serialize for Tally {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(9))?;
        m.serialize_entry("rounds", &self.rounds)?;
        m.serialize_entry("total_calls", &self.total_calls())?;
        m.serialize_entry(
            "runs",
            &Records(&self.runs, |&family, count| FamilyCount { family, count }),
        )?;
        m.serialize_entry(
            "calls",
            &Records(&self.calls, |&(family, proto, outcome), count| CallCount {
                family,
                proto,
                outcome,
                count,
            }),
        )?;
        let class3: fn(&(Family, Proto, SockClass), u64) -> ClassCount3 =
            |&(family, proto, class), count| ClassCount3 {
                family,
                proto,
                class,
                count,
            };
        m.serialize_entry("hits", &Records(&self.hits, class3))?;
        m.serialize_entry("acquired", &Records(&self.acquired, class3))?;
        let class1: fn(&SockClass, u64) -> ClassCount = |&class, count| ClassCount { class, count };
        m.serialize_entry("released", &Records(&self.released, class1))?;
        m.serialize_entry("release_noop", &Records(&self.release_noop, class1))?;
        m.serialize_entry(
            "release_unmatched",
            &Records(&self.release_unmatched, class1),
        )?;
        m.end()
    }
}

/// Every class (zeros included) as {"listener": n, ...}.
struct ByClass<'a>(&'a [u64; SockClass::COUNT]);

impl Serialize for ByClass<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(SockClass::COUNT))?;
        for c in SockClass::ALL {
            m.serialize_entry(c.name(), &self.0[c.index()])?;
        }
        m.end()
    }
}

/// Every outcome (zeros included) as {"hit": n, ...}.
struct ByOutcome<'a>(&'a [u64; Outcome::COUNT]);

impl Serialize for ByOutcome<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Outcome::COUNT))?;
        for o in Outcome::ALL {
            m.serialize_entry(o.name(), &self.0[o.index()])?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct HelperRow<'a> {
    calls: u64,
    outcomes: ByOutcome<'a>,
    hits_by_class: ByClass<'a>,
    acquired: u64,
    acquired_by_class: ByClass<'a>,
}

struct HelperRows<'a>(&'a HelperTally);

impl Serialize for HelperRows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let mut m = s.serialize_map(None)?;
        for h in t.helpers() {
            let i = h.index();
            let row = HelperRow {
                calls: t.total_calls(h),
                outcomes: ByOutcome(&t.calls[i]),
                hits_by_class: ByClass(&t.hits[i]),
                acquired: t.acquired[i].iter().sum(),
                acquired_by_class: ByClass(&t.acquired[i]),
            };
            m.serialize_entry(h.function(), &row)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct Release<'a> {
    dropped: u64,
    noop: u64,
    dropped_by_class: ByClass<'a>,
    noop_by_class: ByClass<'a>,
    unmatched: u64,
    unmatched_by_class: ByClass<'a>,
}

/// JSON, shaped like the interval rows of `skprof stat --json`:
/// `{"helpers": {"bpf_sk_lookup_tcp": {"calls", "outcomes": {...},
/// "hits_by_class": {...}, "acquired", "acquired_by_class": {...}}, ...},
/// "release": {"dropped", "noop", "dropped_by_class", "noop_by_class",
/// "unmatched", "unmatched_by_class"}}`, with only the functions that were
/// called. `dropped` includes the unmatched releases, as in `stat`.
impl Serialize for HelperTally {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("helpers", &HelperRows(self))?;
        m.serialize_entry(
            "release",
            &Release {
                dropped: self.released.iter().sum(),
                noop: self.release_noop.iter().sum(),
                dropped_by_class: ByClass(&self.released),
                noop_by_class: ByClass(&self.release_noop),
                unmatched: self.release_unmatched.iter().sum(),
                unmatched_by_class: ByClass(&self.release_unmatched),
            },
        )?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tally {
        let mut t = Tally::default();
        t.record(
            Family::Tc,
            Proto::SkcTcp,
            Outcome::Hit,
            Some(SockClass::TimeWait),
            10,
        );
        t.record(
            Family::Tc,
            Proto::Tcp,
            Outcome::Hit,
            Some(SockClass::Listener),
            5,
        );
        t.record(Family::Xdp, Proto::Udp, Outcome::BadLen, None, 7);
        t.record(
            Family::Generic,
            Proto::Tcp,
            Outcome::Hit,
            Some(SockClass::Established),
            3,
        );
        t.record(Family::Generic, Proto::Tcp, Outcome::NoSocket, None, 0);
        t.rounds = 1;
        t
    }

    #[test]
    fn record_derives_refs_from_the_class() {
        let t = sample();
        assert_eq!(t.total_calls(), 25);
        assert_eq!(t.hits(Family::Tc, Proto::SkcTcp, SockClass::TimeWait), 10);
        assert_eq!(
            t.acquired
                .get(&(Family::Tc, Proto::SkcTcp, SockClass::TimeWait)),
            Some(&10)
        );
        assert_eq!(
            t.acquired
                .get(&(Family::Tc, Proto::Tcp, SockClass::Listener)),
            None
        );
        assert_eq!(t.released.get(&SockClass::TimeWait), Some(&10));
        assert_eq!(t.released.get(&SockClass::Established), Some(&3));
        assert_eq!(t.release_noop.get(&SockClass::Listener), Some(&5));
        assert_eq!(t.runs.get(&Family::Tc), Some(&15));
        assert_eq!(t.family_calls(Family::Xdp), 7);
        assert!(
            !t.calls
                .contains_key(&(Family::Generic, Proto::Tcp, Outcome::NoSocket)),
            "zeros are not stored"
        );
        // Every hit is released: acquired == released, the rest are no-ops.
        let hits: u64 = t.hits.values().sum();
        let rel: u64 = t.released.values().sum::<u64>() + t.release_noop.values().sum::<u64>();
        assert_eq!(hits, rel);
        let acq: u64 = t.acquired.values().sum();
        assert_eq!(acq, t.released.values().sum::<u64>());
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = sample();
        a.merge(&sample());
        assert_eq!(a.rounds, 2);
        assert_eq!(a.total_calls(), 50);
        assert_eq!(a.calls(Family::Xdp, Proto::Udp, Outcome::BadLen), 14);
        assert_eq!(a.released.get(&SockClass::TimeWait), Some(&20));
        let mut b = Tally::default();
        b.merge(&sample());
        assert_eq!(b, sample());
    }

    #[test]
    fn by_helper_maps_families_to_functions() {
        let t = sample();
        let with = t.by_helper(true);
        assert_eq!(with.calls(Helper::TcSkcLookupTcp, Outcome::Hit), 10);
        assert_eq!(with.calls(Helper::TcSkLookupTcp, Outcome::Hit), 5);
        assert_eq!(with.calls(Helper::XdpSkLookupUdp, Outcome::BadLen), 7);
        assert_eq!(with.calls(Helper::SkLookupTcp, Outcome::Hit), 3);
        assert_eq!(
            with.acquired(Helper::TcSkcLookupTcp, SockClass::TimeWait),
            10
        );
        assert_eq!(with.helpers().count(), 4);
        // Without bpf_tc_*, tc's calls land in the generic functions.
        let without = t.by_helper(false);
        assert_eq!(without.total_calls(Helper::TcSkLookupTcp), 0);
        assert_eq!(without.calls(Helper::SkLookupTcp, Outcome::Hit), 8);
        assert_eq!(without.hits(Helper::SkcLookupTcp, SockClass::TimeWait), 10);
        assert_eq!(without.released, with.released);
        let sum = |h: &HelperTally| Helper::ALL.iter().map(|&x| h.total_calls(x)).sum::<u64>();
        assert_eq!(sum(&with), t.total_calls());
        assert_eq!(sum(&without), t.total_calls());
    }

    #[test]
    fn json_shape() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["rounds"], 1);
        assert_eq!(v["total_calls"], 25);
        let calls = v["calls"].as_array().unwrap();
        assert!(calls.iter().any(|c| c["family"] == "tc"
            && c["proto"] == "skc_tcp"
            && c["outcome"] == "hit"
            && c["count"] == 10));
        assert_eq!(v["released"][0]["class"], "established");
        let h = serde_json::to_value(sample().by_helper(true)).unwrap();
        let helpers = h["helpers"].as_object().unwrap();
        assert_eq!(helpers.len(), 4, "only the functions called: {h}");
        let xdp = &helpers["bpf_xdp_sk_lookup_udp"];
        assert_eq!(xdp["calls"], 7);
        assert_eq!(xdp["outcomes"]["bad_len"], 7);
        assert_eq!(xdp["outcomes"]["hit"], 0, "every outcome is present");
        let tc = &helpers["bpf_tc_skc_lookup_tcp"];
        assert_eq!(tc["hits_by_class"]["time_wait"], 10);
        assert_eq!(tc["hits_by_class"]["other"], 0);
        assert_eq!(tc["acquired"], 10);
        assert_eq!(tc["acquired_by_class"]["time_wait"], 10);
        assert_eq!(helpers["bpf_tc_sk_lookup_tcp"]["acquired"], 0);
        assert_eq!(h["release"]["dropped"], 13);
        assert_eq!(h["release"]["noop"], 5);
        assert_eq!(h["release"]["dropped_by_class"]["established"], 3);
        assert_eq!(h["release"]["unmatched"], 0);
        assert_eq!(h["release"]["unmatched_by_class"]["established"], 0);
    }

    #[test]
    fn unmatched_releases_drop_references_no_lookup_took() {
        let mut t = sample();
        t.record_unmatched_release(SockClass::Established, 4);
        assert_eq!(t.released.get(&SockClass::Established), Some(&7));
        assert_eq!(t.release_unmatched.get(&SockClass::Established), Some(&4));
        // Acquired is unchanged: released = acquired + unmatched.
        let acq: u64 = t.acquired.values().sum();
        let rel: u64 = t.released.values().sum();
        assert_eq!(rel, acq + 4);
        assert_eq!(t.total_calls(), 25, "not a lookup helper call");
        let mut m = Tally::default();
        m.merge(&t);
        assert_eq!(m, t);
        let h = serde_json::to_value(t.by_helper(true)).unwrap();
        assert_eq!(h["release"]["dropped"], 17);
        assert_eq!(h["release"]["unmatched"], 4);
        assert_eq!(h["release"]["unmatched_by_class"]["established"], 4);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["release_unmatched"][0]["count"], 4);
        // A socket holding no reference: a no-op release, not unmatched.
        let mut u = Tally::default();
        u.record_unmatched_release(SockClass::Listener, 2);
        assert!(u.release_unmatched.is_empty());
        assert_eq!(u.release_noop.get(&SockClass::Listener), Some(&2));
    }
}
