//! Payload encoding of the recording frames (see `docs/recording-format.md`):
//! LEB128 varints, length-prefixed UTF-8 strings, sparse histograms and
//! bit-masked count arrays. Pure; the decoder never panics or allocates
//! more than the payload could describe, whatever the bytes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::hist::{LogHist, SLOTS};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};
use crate::model::snapshot::{Cell, CellKey, Counters, ProgramRef, Snapshot};
use crate::model::tally::HelperTally;

use super::{Interval, Leaks, LedgerScan, Meta};

/// Longest string a payload may hold (program names, kernel releases and
/// command lines are far shorter): a guard against absurd lengths.
const MAX_STR: usize = 1 << 16;

/// Where in a payload decoding failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset within the payload.
    pub at: usize,
    pub what: String,
}

pub type DResult<T> = Result<T, DecodeError>;

/// Appends encoded values to a payload.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn var(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// Signed values, zigzag-mapped so small negatives stay short.
    pub fn ivar(&mut self, v: i64) {
        self.var(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn str(&mut self, s: &str) {
        // Longer strings are cut (at a char boundary) rather than making
        // the file unreadable.
        let mut end = s.len().min(MAX_STR);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.var(end as u64);
        self.buf.extend_from_slice(&s.as_bytes()[..end]);
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A count array as a bit mask of its non-zero entries, then those
    /// entries: most are zero (a helper's hits are of one or two classes).
    pub fn arr(&mut self, a: &[u64]) {
        debug_assert!(a.len() <= 64);
        let mask = a
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0)
            .fold(0u64, |m, (i, _)| m | 1 << i);
        self.var(mask);
        for &v in a.iter().filter(|&&v| v != 0) {
            self.var(v);
        }
    }

    pub fn hist(&mut self, h: &LogHist) {
        self.var(h.count);
        self.var(h.sum_ns);
        self.var(h.max_ns);
        self.var(h.overflow);
        self.var(h.slots.len() as u64);
        // Slots ascend: each is stored as its gap from the previous + 1.
        let mut next = 0u64;
        for &(s, c) in &h.slots {
            self.var(u64::from(s) - next);
            self.var(c);
            next = u64::from(s) + 1;
        }
    }
}

/// Reads encoded values from a payload.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The recording's format version: what older files lack is filled in.
    version: u16,
}

impl<'a> Dec<'a> {
    /// A payload of the format version this skprof writes.
    #[cfg(test)]
    pub fn new(buf: &'a [u8]) -> Self {
        Dec::of_version(buf, super::file::FORMAT_VERSION)
    }

    pub fn of_version(buf: &'a [u8], version: u16) -> Self {
        Dec {
            buf,
            pos: 0,
            version,
        }
    }

    pub fn err<T>(&self, what: impl Into<String>) -> DResult<T> {
        Err(DecodeError {
            at: self.pos,
            what: what.into(),
        })
    }

    pub fn u8(&mut self, what: &str) -> DResult<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err(format!("payload ends inside {what}")),
        }
    }

    pub fn var(&mut self, what: &str) -> DResult<u64> {
        // Most values (slot gaps, small counts) take one byte.
        if let Some(&b) = self.buf.get(self.pos) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        let start = self.pos;
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            // The 10th byte may only carry the top bit of a u64.
            if shift == 63 && b > 1 {
                self.pos = start;
                return self.err(format!("{what}: varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.pos = start;
        self.err(format!("{what}: varint longer than 10 bytes"))
    }

    pub fn ivar(&mut self, what: &str) -> DResult<i64> {
        let z = self.var(what)?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    pub fn u32(&mut self, what: &str) -> DResult<u32> {
        let start = self.pos;
        let v = self.var(what)?;
        u32::try_from(v).or_else(|_| {
            self.pos = start;
            self.err(format!("{what}: {v} does not fit 32 bits"))
        })
    }

    pub fn u16(&mut self, what: &str) -> DResult<u16> {
        let start = self.pos;
        let v = self.var(what)?;
        u16::try_from(v).or_else(|_| {
            self.pos = start;
            self.err(format!("{what}: {v} does not fit 16 bits"))
        })
    }

    pub fn bool(&mut self, what: &str) -> DResult<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            b => {
                self.pos -= 1;
                self.err(format!("{what}: {b} is not a boolean"))
            }
        }
    }

    /// A collection length, checked against the bytes left (each element
    /// takes at least `min_size` bytes), so corrupt lengths cannot make us
    /// allocate.
    pub fn len(&mut self, what: &str, min_size: usize) -> DResult<usize> {
        let start = self.pos;
        let n = self.var(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            self.pos = start;
            return self.err(format!("{what}: {n} elements do not fit the payload"));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self, n: usize, what: &str) -> DResult<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return self.err(format!("payload ends inside {what}"));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    pub fn str(&mut self, what: &str) -> DResult<String> {
        let n = self.len(what, 1)?;
        if n > MAX_STR {
            return self.err(format!("{what}: string of {n} bytes"));
        }
        let start = self.pos;
        let b = self.bytes(n, what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => {
                self.pos = start;
                self.err(format!("{what}: not UTF-8"))
            }
        }
    }

    pub fn arr<const N: usize>(&mut self, what: &str) -> DResult<[u64; N]> {
        let start = self.pos;
        let mask = self.var(what)?;
        if N < 64 && mask >> N != 0 {
            self.pos = start;
            return self.err(format!("{what}: mask {mask:#x} names entries past {N}"));
        }
        let mut a = [0u64; N];
        for (i, v) in a.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *v = self.var(what)?;
            }
        }
        Ok(a)
    }

    pub fn helper(&mut self, what: &str) -> DResult<Helper> {
        let b = self.u8(what)?;
        Helper::from_index(usize::from(b)).map_or_else(
            || {
                self.pos -= 1;
                self.err(format!("{what}: unknown helper id {b}"))
            },
            Ok,
        )
    }

    pub fn outcome(&mut self) -> DResult<Outcome> {
        let b = self.u8("outcome")?;
        Outcome::from_index(usize::from(b)).map_or_else(
            || {
                self.pos -= 1;
                self.err(format!("unknown outcome id {b}"))
            },
            Ok,
        )
    }

    pub fn class(&mut self) -> DResult<SockClass> {
        let b = self.u8("socket class")?;
        SockClass::ALL.get(usize::from(b)).copied().map_or_else(
            || {
                self.pos -= 1;
                self.err(format!("unknown socket class id {b}"))
            },
            Ok,
        )
    }

    pub fn hist(&mut self) -> DResult<LogHist> {
        let count = self.var("histogram count")?;
        let sum_ns = self.var("histogram sum")?;
        let max_ns = self.var("histogram max")?;
        let overflow = self.var("histogram overflow")?;
        let n = self.len("histogram slots", 2)?;
        let mut slots = Vec::with_capacity(n);
        let mut next = 0u64;
        for _ in 0..n {
            let start = self.pos;
            let slot = next.saturating_add(self.var("histogram slot")?);
            if slot >= SLOTS as u64 {
                self.pos = start;
                return self.err(format!("histogram slot {slot} out of range"));
            }
            let c = self.var("histogram slot count")?;
            slots.push((slot as u16, c));
            next = slot + 1;
        }
        Ok(LogHist {
            count,
            sum_ns,
            max_ns,
            overflow,
            slots,
        })
    }

    /// Fails unless the whole payload was read: trailing bytes mean the
    /// writer and this reader disagree about the layout.
    pub fn finish(&self) -> DResult<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            self.err(format!(
                "{} unexpected bytes at the end of the frame",
                self.buf.len() - self.pos
            ))
        }
    }
}

// ---- Meta ----

pub fn enc_meta(e: &mut Enc, m: &Meta) {
    e.str(&m.skprof_version);
    e.str(&m.kernel);
    e.str(&m.probe_mode);
    e.str(&m.hostname);
    e.var(m.start_unix_ms);
    e.var(m.interval_ms);
    e.var(m.helpers.len() as u64);
    for h in &m.helpers {
        e.u8(h.index() as u8);
    }
    match &m.attribution_off {
        Some(why) => {
            e.u8(1);
            e.str(why);
        }
        None => e.u8(0),
    }
    e.var(m.command.len() as u64);
    for a in &m.command {
        e.str(a);
    }
}

pub fn dec_meta(d: &mut Dec) -> DResult<Meta> {
    let skprof_version = d.str("skprof version")?;
    let kernel = d.str("kernel release")?;
    let probe_mode = d.str("probe mode")?;
    let hostname = d.str("hostname")?;
    let start_unix_ms = d.var("start time")?;
    let interval_ms = d.var("interval")?;
    let n = d.len("helper list", 1)?;
    let helpers = (0..n)
        .map(|_| d.helper("helper list"))
        .collect::<DResult<Vec<_>>>()?;
    let attribution_off = if d.bool("attribution flag")? {
        Some(d.str("attribution note")?)
    } else {
        None
    };
    let n = d.len("command line", 1)?;
    let command = (0..n)
        .map(|_| d.str("command line"))
        .collect::<DResult<Vec<_>>>()?;
    Ok(Meta {
        skprof_version,
        kernel,
        probe_mode,
        hostname,
        start_unix_ms,
        interval_ms,
        helpers,
        attribution_off,
        command,
    })
}

// ---- Interval ----

fn enc_counters(e: &mut Enc, c: &Counters) {
    e.arr(&c.released);
    e.arr(&c.release_noop);
    e.var(c.release_null);
    e.arr(&c.unmatched_exit);
    e.arr(&c.evicted_entry);
    e.arr(&c.release_unmatched);
    e.var(c.ledger_full);
    e.var(c.events_dropped);
    e.var(c.run_table_full);
    e.var(c.hists_full);
    e.var(c.run_refs_full);
}

fn dec_counters(d: &mut Dec) -> DResult<Counters> {
    Ok(Counters {
        released: d.arr("released")?,
        release_noop: d.arr("release_noop")?,
        release_null: d.var("release_null")?,
        unmatched_exit: d.arr("unmatched_exit")?,
        evicted_entry: d.arr("evicted_entry")?,
        release_unmatched: d.arr("release_unmatched")?,
        ledger_full: d.var("ledger_full")?,
        events_dropped: d.var("events_dropped")?,
        run_table_full: d.var("run_table_full")?,
        hists_full: d.var("hists_full")?,
        // Version 1 kept no run-local ledger.
        run_refs_full: if d.version >= 2 {
            d.var("run_refs_full")?
        } else {
            0
        },
        // Recordings keep no call sites.
        ..Counters::default()
    })
}

pub fn enc_snapshot(e: &mut Enc, s: &Snapshot) {
    e.var(s.mono_ns);
    e.var(s.cells.len() as u64);
    for (k, c) in &s.cells {
        e.var(u64::from(k.prog));
        e.u8(k.helper.index() as u8);
        e.u8(k.outcome.index() as u8);
        e.var(u64::from(k.netns));
        e.var(u64::from(k.ifindex));
        e.var(c.calls);
        e.hist(&c.hist);
        e.arr(&c.hits);
        e.arr(&c.acquired);
    }
    e.var(s.holds.len() as u64);
    for (&slot, h) in &s.holds {
        e.var(u64::from(slot));
        e.hist(h);
    }
    enc_counters(e, &s.counters);
    e.var(s.recursion_misses);
}

pub fn dec_snapshot(d: &mut Dec) -> DResult<Snapshot> {
    let mono_ns = d.var("reading time")?;
    // A cell is at least 12 bytes (key 5, histogram 5, two masks).
    let n = d.len("cells", 12)?;
    let mut cells = BTreeMap::new();
    for _ in 0..n {
        let start = d.pos;
        let key = CellKey {
            prog: d.u32("program slot")?,
            helper: d.helper("cell helper")?,
            outcome: d.outcome()?,
            netns: d.u32("netns")?,
            ifindex: d.u32("ifindex")?,
            site: 0,
        };
        // Version 1 timed every call: its histogram counted them all.
        let calls = if d.version >= 2 {
            Some(d.var("calls")?)
        } else {
            None
        };
        let hist = d.hist()?;
        let cell = Cell {
            calls: calls.unwrap_or(hist.count),
            hist,
            hits: d.arr("hits")?,
            acquired: d.arr("acquired")?,
        };
        if cells.insert(key, cell).is_some() {
            d.pos = start;
            return d.err("the same cell twice");
        }
    }
    let n = d.len("hold histograms", 6)?;
    let mut holds = BTreeMap::new();
    for _ in 0..n {
        let start = d.pos;
        let slot = d.u32("hold slot")?;
        if holds.insert(slot, d.hist()?).is_some() {
            d.pos = start;
            return d.err(format!("hold histogram of slot {slot} twice"));
        }
    }
    Ok(Snapshot {
        mono_ns,
        cells,
        holds,
        counters: dec_counters(d)?,
        recursion_misses: d.var("recursion misses")?,
        ..Snapshot::default()
    })
}

pub fn enc_interval(e: &mut Enc, i: &Interval) {
    e.var(i.unix_ms);
    enc_snapshot(e, &i.snapshot);
    e.var(i.labels.len() as u64);
    for p in &i.labels {
        e.var(u64::from(p.slot));
        e.var(u64::from(p.id));
        e.str(&p.name);
    }
    e.var(i.forgotten.len() as u64);
    for &s in &i.forgotten {
        e.var(u64::from(s));
    }
}

pub fn dec_interval(d: &mut Dec) -> DResult<Interval> {
    let unix_ms = d.var("wall-clock time")?;
    let snapshot = dec_snapshot(d)?;
    let n = d.len("program labels", 3)?;
    let labels = (0..n)
        .map(|_| {
            Ok(ProgramRef {
                slot: d.u32("label slot")?,
                id: d.u32("program id")?,
                name: d.str("program name")?,
            })
        })
        .collect::<DResult<Vec<_>>>()?;
    let n = d.len("forgotten slots", 1)?;
    let forgotten = (0..n)
        .map(|_| d.u32("forgotten slot"))
        .collect::<DResult<Vec<_>>>()?;
    Ok(Interval {
        unix_ms,
        snapshot,
        labels,
        forgotten,
    })
}

// ---- Leaks ----

/// Kernel socket addresses are not written (a recording may be shared):
/// each distinct socket of a frame gets a number from 1 instead, which
/// keeps "same socket" readable.
struct SockIds(Vec<u64>);

impl SockIds {
    fn id(&mut self, sk: u64) -> u64 {
        match self.0.iter().position(|&s| s == sk) {
            Some(i) => i as u64 + 1,
            None => {
                self.0.push(sk);
                self.0.len() as u64
            }
        }
    }
}

fn enc_tuple(e: &mut Enc, t: &Tuple) {
    match t {
        Tuple::V4 {
            saddr,
            daddr,
            sport,
            dport,
        } => {
            e.u8(4);
            e.bytes(&saddr.octets());
            e.bytes(&daddr.octets());
            e.var(u64::from(*sport));
            e.var(u64::from(*dport));
        }
        Tuple::V6 {
            saddr,
            daddr,
            sport,
            dport,
        } => {
            e.u8(6);
            e.bytes(&saddr.octets());
            e.bytes(&daddr.octets());
            e.var(u64::from(*sport));
            e.var(u64::from(*dport));
        }
        Tuple::Other { len } => {
            e.u8(0);
            e.u8(*len);
        }
    }
}

fn dec_tuple(d: &mut Dec) -> DResult<Tuple> {
    match d.u8("tuple kind")? {
        4 => {
            let a: [u8; 4] = d.bytes(4, "tuple")?.try_into().unwrap_or_default();
            let b: [u8; 4] = d.bytes(4, "tuple")?.try_into().unwrap_or_default();
            Ok(Tuple::V4 {
                saddr: Ipv4Addr::from(a),
                daddr: Ipv4Addr::from(b),
                sport: d.u16("source port")?,
                dport: d.u16("destination port")?,
            })
        }
        6 => {
            let a: [u8; 16] = d.bytes(16, "tuple")?.try_into().unwrap_or_default();
            let b: [u8; 16] = d.bytes(16, "tuple")?.try_into().unwrap_or_default();
            Ok(Tuple::V6 {
                saddr: Ipv6Addr::from(a),
                daddr: Ipv6Addr::from(b),
                sport: d.u16("source port")?,
                dport: d.u16("destination port")?,
            })
        }
        0 => Ok(Tuple::Other {
            len: d.u8("tuple length")?,
        }),
        k => {
            d.pos -= 1;
            d.err(format!("unknown tuple kind {k}"))
        }
    }
}

fn enc_ref(e: &mut Enc, r: &OutstandingRef, ids: &mut SockIds) {
    e.var(ids.id(r.sk));
    e.var(r.acquired_ns);
    e.var(u64::from(r.count));
    e.var(u64::from(r.prog_id));
    e.u8(r.helper.index() as u8);
    e.u8(r.class.index() as u8);
    e.u8(r.state);
    enc_tuple(e, &r.tuple);
    e.var(u64::from(r.netns));
    e.var(u64::from(r.cpu));
    e.var(u64::from(r.refcnt));
    e.ivar(i64::from(r.stack_id));
}

fn dec_ref(d: &mut Dec) -> DResult<OutstandingRef> {
    Ok(OutstandingRef {
        sk: d.var("socket number")?,
        acquired_ns: d.var("acquire time")?,
        count: d.u32("reference count")?,
        prog_id: d.u32("program id")?,
        helper: d.helper("reference helper")?,
        class: d.class()?,
        state: d.u8("socket state")?,
        tuple: dec_tuple(d)?,
        netns: d.u32("netns")?,
        cpu: d.u16("cpu")?,
        refcnt: d.u32("refcnt")?,
        stack_id: {
            let start = d.pos;
            let v = d.ivar("stack id")?;
            i32::try_from(v).or_else(|_| {
                d.pos = start;
                d.err(format!("stack id {v} does not fit 32 bits"))
            })?
        },
        site: 0,
    })
}

pub fn enc_leaks(e: &mut Enc, l: &Leaks) {
    let mut ids = SockIds(Vec::new());
    e.var(l.unix_ms);
    e.var(l.run_leaks.len() as u64);
    for r in &l.run_leaks {
        e.var(r.ts_ns);
        e.var(u64::from(r.prog_id));
        e.str(&r.prog_name);
        enc_ref(e, &r.reference, &mut ids);
    }
    match &l.ledger {
        Some(scan) => {
            e.u8(1);
            e.var(scan.now_ns);
            e.var(scan.refs.len() as u64);
            for r in &scan.refs {
                enc_ref(e, r, &mut ids);
            }
        }
        None => e.u8(0),
    }
}

pub fn dec_leaks(d: &mut Dec) -> DResult<Leaks> {
    let unix_ms = d.var("wall-clock time")?;
    // A reference is at least 13 bytes, a run leak 16.
    let n = d.len("run leaks", 16)?;
    let run_leaks = (0..n)
        .map(|_| {
            Ok(RunLeak {
                ts_ns: d.var("leak time")?,
                prog_id: d.u32("program id")?,
                prog_name: d.str("program name")?,
                reference: dec_ref(d)?,
                site: None,
            })
        })
        .collect::<DResult<Vec<_>>>()?;
    let ledger = if d.bool("ledger flag")? {
        let now_ns = d.var("scan time")?;
        let n = d.len("outstanding references", 13)?;
        let refs = (0..n).map(|_| dec_ref(d)).collect::<DResult<Vec<_>>>()?;
        Some(LedgerScan { now_ns, refs })
    } else {
        None
    };
    Ok(Leaks {
        unix_ms,
        run_leaks,
        ledger,
    })
}

// ---- Workload ----

pub fn enc_workload(e: &mut Enc, t: &HelperTally) {
    for h in 0..Helper::COUNT {
        e.arr(&t.calls[h]);
        e.arr(&t.hits[h]);
        e.arr(&t.acquired[h]);
    }
    e.arr(&t.released);
    e.arr(&t.release_noop);
}

pub fn dec_workload(d: &mut Dec) -> DResult<HelperTally> {
    let mut t = HelperTally::default();
    for h in 0..Helper::COUNT {
        t.calls[h] = d.arr("workload calls")?;
        t.hits[h] = d.arr("workload hits")?;
        t.acquired[h] = d.arr("workload acquired")?;
    }
    t.released = d.arr("workload released")?;
    t.release_noop = d.arr("workload no-op releases")?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        let vals = [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ];
        let mut e = Enc::default();
        for v in vals {
            e.var(v);
        }
        for v in [0i64, -1, 1, -64, 64, i32::MIN as i64, i64::MIN, i64::MAX] {
            e.ivar(v);
        }
        assert_eq!(e.buf[..4], [0, 1, 127, 0x80]);
        let mut d = Dec::new(&e.buf);
        for v in vals {
            assert_eq!(d.var("x").unwrap(), v);
        }
        for v in [0i64, -1, 1, -64, 64, i32::MIN as i64, i64::MIN, i64::MAX] {
            assert_eq!(d.ivar("x").unwrap(), v);
        }
        d.finish().unwrap();
    }

    #[test]
    fn overlong_and_cut_varints_are_errors() {
        let eleven = [0xffu8; 11];
        assert!(Dec::new(&eleven)
            .var("x")
            .unwrap_err()
            .what
            .contains("64 bits"));
        let cut = [0x80u8];
        let e = Dec::new(&cut).var("the count").unwrap_err();
        assert_eq!(e.what, "payload ends inside the count");
        // 2^64 does not fit.
        let mut big = [0xffu8; 10];
        big[9] = 0x02;
        assert!(Dec::new(&big).var("x").is_err());
    }

    #[test]
    fn lengths_beyond_the_payload_are_refused_before_allocating() {
        let mut e = Enc::default();
        e.var(u64::MAX / 2);
        let err = Dec::new(&e.buf).len("cells", 12).unwrap_err();
        assert!(err.what.contains("do not fit the payload"), "{err:?}");
    }

    #[test]
    fn sparse_arrays_store_only_non_zero_entries() {
        let mut e = Enc::default();
        e.arr(&[0, 0, 5, 0, 0, 0]);
        assert_eq!(e.buf, [0b100, 5]);
        let a: [u64; 6] = Dec::new(&e.buf).arr("a").unwrap();
        assert_eq!(a, [0, 0, 5, 0, 0, 0]);
        // A mask naming an entry past the array's end.
        assert!(Dec::new(&[0b100_0000, 1]).arr::<6>("a").is_err());
    }

    #[test]
    fn histograms_are_sparse_and_round_trip() {
        let h = LogHist::from_values(&[1, 2, 2, 1000, 1001, 50_000, 1 << 36]);
        let mut e = Enc::default();
        e.hist(&h);
        // 7 values in 5 slots: a handful of bytes, not 992 slots.
        assert!(e.buf.len() < 40, "{} bytes", e.buf.len());
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.hist().unwrap(), h);
        d.finish().unwrap();
    }

    #[test]
    fn a_slot_past_the_last_is_an_error() {
        let mut e = Enc::default();
        for v in [1, 1, 1, 0, 1] {
            e.var(v);
        }
        e.var(SLOTS as u64);
        e.var(1);
        let err = Dec::new(&e.buf).hist().unwrap_err();
        assert!(err.what.contains("out of range"), "{err:?}");
    }

    #[test]
    fn strings_must_be_utf8() {
        let mut e = Enc::default();
        e.var(2);
        e.bytes(&[0xc3, 0x28]);
        assert!(Dec::new(&e.buf)
            .str("name")
            .unwrap_err()
            .what
            .contains("UTF-8"));
    }

    #[test]
    fn tuples_round_trip() {
        for t in [
            Tuple::decode(&[10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0, 80], 12),
            Tuple::decode(&[0xfe; 36], 36),
            Tuple::Other { len: 7 },
        ] {
            let mut e = Enc::default();
            enc_tuple(&mut e, &t);
            assert_eq!(dec_tuple(&mut Dec::new(&e.buf)).unwrap(), t);
        }
    }
}
