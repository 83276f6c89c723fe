//! Format tests: round trips, and every kind of damaged file.

use std::path::PathBuf;

use super::*;
use crate::model::hist::LogHist;
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::{OutstandingRef, RunLeak, Tuple};
use crate::model::snapshot::{Cell, CellKey, ProgramRef, Snapshot};
use crate::model::tally::HelperTally;

/// A file of this test process, removed when dropped.
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(name: &str) -> Tmp {
        Tmp(std::env::temp_dir().join(format!(
            "skprof-record-unit-{}-{name}.skrec",
            std::process::id()
        )))
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn meta() -> Meta {
    Meta {
        skprof_version: "0.1.0".into(),
        kernel: "6.12.0-test".into(),
        probe_mode: "fentry".into(),
        hostname: "testhost".into(),
        start_unix_ms: 1_700_000_000_000,
        interval_ms: 1000,
        helpers: vec![
            Helper::SkLookupTcp,
            Helper::TcSkLookupTcp,
            Helper::TcSkLookupUdp,
        ],
        attribution_off: None,
        command: vec!["skprof".into(), "record".into(), "-o".into(), "x".into()],
    }
}

/// Deterministic latencies around `base` ns.
fn values(n: u64, base: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base + x % (base * 3)
        })
        .collect()
}

fn cell(n: u64, base: u64, seed: u64, hits: &[(SockClass, u64)], acq: &[(SockClass, u64)]) -> Cell {
    let mut c = Cell {
        calls: LogHist::from_values(&values(n, base, seed)).count,
        hist: LogHist::from_values(&values(n, base, seed)),
        ..Default::default()
    };
    for &(k, v) in hits {
        c.hits[k.index()] = v;
    }
    for &(k, v) in acq {
        c.acquired[k.index()] = v;
    }
    c
}

pub fn key(prog: u32, helper: Helper, outcome: Outcome) -> CellKey {
    CellKey {
        prog,
        helper,
        outcome,
        netns: 4_026_531_840,
        ifindex: 1,
        site: 0,
    }
}

pub fn label(slot: u32, id: u32, name: &str) -> ProgramRef {
    ProgramRef {
        slot,
        id,
        name: name.into(),
    }
}

/// Cumulative readings `0..n` of two programs (slots 1 and 2) and an
/// untraced caller, growing each interval: reading `i` has `i` rounds.
/// The summary of three `readings`, as a recording (cut off or not)
/// would give it: the report formats' tests start from it.
pub fn summary_of_three(truncated: bool) -> summary::Summary {
    summary::summarize(&Recording {
        path: "x".into(),
        format_version: 1,
        meta: meta(),
        intervals: readings(3),
        leaks: Vec::new(),
        workload: None,
        truncated,
        warning: None,
    })
    .unwrap()
}

pub fn readings(n: u64) -> Vec<Interval> {
    use SockClass::*;
    (0..n)
        .map(|i| {
            let mut s = Snapshot {
                mono_ns: 5_000_000 + i * 1_000_000_000,
                ..Default::default()
            };
            if i > 0 {
                // Each round: 100 established hits by slot 1 (acquired),
                // 50 listener hits by slot 2, 30 misses by slot 2, 7 bad
                // lengths from an untraced caller. The histograms are of
                // all rounds so far (cumulative).
                s.cells.insert(
                    key(1, Helper::TcSkLookupTcp, Outcome::Hit),
                    cell(
                        100 * i,
                        2000,
                        7,
                        &[(Established, 100 * i)],
                        &[(Established, 100 * i)],
                    ),
                );
                s.cells.insert(
                    key(2, Helper::TcSkLookupTcp, Outcome::Hit),
                    cell(50 * i, 1500, 11, &[(Listener, 50 * i)], &[]),
                );
                s.cells.insert(
                    key(2, Helper::TcSkLookupUdp, Outcome::NoSocket),
                    cell(30 * i, 900, 13, &[], &[]),
                );
                s.cells.insert(
                    key(0, Helper::SkLookupTcp, Outcome::BadLen),
                    cell(7 * i, 300, 17, &[], &[]),
                );
                s.holds
                    .insert(1, LogHist::from_values(&values(100 * i, 4000, 19)));
                s.counters.released[Established.index()] = 100 * i;
                s.counters.release_noop[Listener.index()] = 50 * i;
                s.counters.unmatched_exit[Helper::TcSkLookupUdp.index()] = i / 2;
            }
            Interval {
                unix_ms: 1_700_000_000_000 + i * 1000,
                snapshot: s,
                labels: vec![
                    label(0, 0, "(not traced)"),
                    label(1, 41, "tc_ingress"),
                    label(2, 42, "tc_egress"),
                ],
                forgotten: Vec::new(),
            }
        })
        .collect()
}

fn reference(sk: u64, prog_id: u32) -> OutstandingRef {
    OutstandingRef {
        sk,
        acquired_ns: 1_000_000,
        count: 1,
        prog_id,
        helper: Helper::TcSkLookupTcp,
        class: SockClass::Request,
        state: 12,
        tuple: Tuple::decode(&[10, 0, 0, 1, 10, 0, 0, 2, 0x9c, 0x40, 0, 80], 12),
        netns: 4_026_531_840,
        cpu: 1,
        refcnt: 3,
        stack_id: -14,
        site: 0,
    }
}

pub fn leaks() -> Leaks {
    Leaks {
        unix_ms: 1_700_000_005_000,
        run_leaks: vec![RunLeak {
            ts_ns: 2_000_000,
            prog_id: 41,
            prog_name: "tc_ingress[41]".into(),
            reference: reference(1, 41),
            site: None,
        }],
        ledger: Some(LedgerScan {
            now_ns: 3_000_000_000,
            // Sockets are numbered in order of first appearance in the
            // frame (kernel addresses are not recorded).
            refs: vec![reference(1, 41), reference(2, 0)],
        }),
    }
}

pub fn tally() -> HelperTally {
    let mut t = HelperTally::default();
    t.calls[Helper::TcSkLookupTcp.index()][Outcome::Hit.index()] = 150;
    t.hits[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 100;
    t.acquired[Helper::TcSkLookupTcp.index()][SockClass::Established.index()] = 100;
    t.released[SockClass::Established.index()] = 100;
    t.release_noop[SockClass::Listener.index()] = 50;
    t
}

/// Writes a full recording; returns the frame start offsets (after Meta).
pub fn write_full(path: &std::path::Path, n: u64) -> Vec<u64> {
    let mut w = Writer::create(path, &meta()).unwrap();
    let mut starts = Vec::new();
    for i in readings(n) {
        starts.push(w.bytes());
        w.append(&Frame::Interval(Box::new(i))).unwrap();
    }
    starts.push(w.bytes());
    w.append(&Frame::Leaks(leaks())).unwrap();
    starts.push(w.bytes());
    w.append(&Frame::Workload(Box::new(tally()))).unwrap();
    starts.push(w.bytes());
    w.finish().unwrap();
    starts
}

#[test]
fn round_trip_gives_identical_frames() {
    let t = Tmp::new("round-trip");
    write_full(&t.0, 4);
    let rec = Recording::load(&t.0).unwrap();
    assert_eq!(rec.format_version, FORMAT_VERSION);
    assert_eq!(rec.meta, meta());
    assert_eq!(rec.intervals, readings(4));
    assert_eq!(rec.leaks, vec![leaks()]);
    assert_eq!(rec.workload, Some(tally()));
    assert!(!rec.truncated);
    assert_eq!(rec.warning, None);
}

#[test]
fn kernel_socket_addresses_are_not_recorded() {
    let t = Tmp::new("sk-numbers");
    let mut l = leaks();
    l.run_leaks[0].reference.sk = 0xffff_8880_1234_5678;
    l.ledger.as_mut().unwrap().refs[0].sk = 0xffff_8880_1234_5678;
    l.ledger.as_mut().unwrap().refs[1].sk = 0xffff_8880_aaaa_0000;
    let mut w = Writer::create(&t.0, &meta()).unwrap();
    w.append(&Frame::Leaks(l)).unwrap();
    w.finish().unwrap();
    let bytes = std::fs::read(&t.0).unwrap();
    for sk in [0xffff_8880_1234_5678u64, 0xffff_8880_aaaa_0000] {
        let mut e = codec::Enc::default();
        e.var(sk);
        assert!(
            !bytes.windows(e.buf.len()).any(|x| x == e.buf),
            "{sk:#x} written"
        );
    }
    // Same socket, same number: the first reading's leaks() numbering.
    assert_eq!(Recording::load(&t.0).unwrap().leaks, vec![leaks()]);
}

#[test]
fn histograms_are_stored_compactly() {
    let t = Tmp::new("compact");
    let mut w = Writer::create(&t.0, &meta()).unwrap();
    let before = w.bytes();
    let i = readings(3).pop().unwrap();
    let samples: u64 = i.snapshot.cells.values().map(|c| c.hist.count).sum();
    w.append(&Frame::Interval(Box::new(i))).unwrap();
    let size = w.bytes() - before;
    // 5 histograms of 992 slots as u64 would be ~40 KB; the sparse form of
    // these few dozen non-empty slots is a few hundred bytes.
    assert!(size < 1000, "{size} bytes for {samples} samples");
}

#[test]
fn a_cut_anywhere_in_the_last_frame_keeps_every_earlier_frame() {
    let t = Tmp::new("cut-everywhere");
    let starts = write_full(&t.0, 3);
    let full = std::fs::read(&t.0).unwrap();
    let cut_file = Tmp::new("cut-everywhere-out");
    // The last frame is End; cut inside it and inside the Workload frame
    // before it, at every byte.
    let workload_start = starts[starts.len() - 2] as usize;
    for cut in workload_start..full.len() {
        std::fs::write(&cut_file.0, &full[..cut]).unwrap();
        let rec = Recording::load(&cut_file.0).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(rec.intervals, readings(3), "cut at {cut}");
        assert_eq!(rec.leaks, vec![leaks()], "cut at {cut}");
        let end_start = starts[starts.len() - 1] as usize;
        assert_eq!(rec.workload.is_some(), cut >= end_start, "cut at {cut}");
        assert!(rec.truncated, "cut at {cut}");
        let w = rec.warning.unwrap();
        assert!(w.contains(&*cut_file.0.to_string_lossy()), "{w}");
        if cut == workload_start || cut == end_start {
            assert!(w.contains("no End frame after byte"), "{w}");
        } else {
            assert!(w.contains("cut off inside the frame at byte"), "{w}");
        }
    }
    // And in the middle of the first interval: only Meta survives.
    let first = starts[0] as usize;
    for cut in first..starts[1] as usize {
        std::fs::write(&cut_file.0, &full[..cut]).unwrap();
        let rec = Recording::load(&cut_file.0).unwrap();
        assert!(rec.intervals.is_empty() && rec.truncated);
    }
}

fn load_err(bytes: &[u8], name: &str) -> (RecordError, String) {
    let t = Tmp::new(name);
    std::fs::write(&t.0, bytes).unwrap();
    let e = Recording::load(&t.0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&*t.0.to_string_lossy()),
        "names the file: {msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    (e, msg)
}

#[test]
fn an_empty_file_is_its_own_error() {
    let (e, msg) = load_err(b"", "empty");
    assert!(matches!(e, RecordError::Empty { .. }), "{e:?}");
    assert!(msg.ends_with("empty file, not a skprof recording"), "{msg}");
}

#[test]
fn other_files_are_not_recordings() {
    for (i, bytes) in [
        &b"hello, world\n"[..],
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0",
        b"SKPROF\0RED\x01\0",
        b"{\"type\":\"report\"}",
    ]
    .iter()
    .enumerate()
    {
        let (e, msg) = load_err(bytes, &format!("not-rec-{i}"));
        assert!(matches!(e, RecordError::NotRecording { .. }), "{e:?}");
        assert!(msg.contains("not a skprof recording"), "{msg}");
    }
}

#[test]
fn a_newer_format_version_is_refused() {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    b.extend_from_slice(&[0; 40]);
    let (e, msg) = load_err(&b, "future");
    assert!(
        matches!(e, RecordError::FutureVersion { version, .. } if version == FORMAT_VERSION + 1),
        "{e:?}"
    );
    assert!(msg.contains("is newer than this skprof reads"), "{msg}");
    // Version 0 was never written.
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&[0, 0]);
    let (e, msg) = load_err(&b, "version-0");
    assert!(
        matches!(e, RecordError::Corrupt { offset: 10, .. }),
        "{e:?}"
    );
    assert!(msg.contains("format version 0 does not exist"), "{msg}");
}

#[test]
fn a_file_cut_before_its_meta_frame_ends_is_truncated() {
    let t = Tmp::new("meta-cut-src");
    let meta_end = write_full(&t.0, 1)[0] as usize;
    let full = std::fs::read(&t.0).unwrap();
    // The magic alone, a partial version, a partial Meta frame.
    for cut in [MAGIC.len(), MAGIC.len() + 1, 12, 13, 20, meta_end - 1] {
        let (e, msg) = load_err(&full[..cut], &format!("meta-cut-{cut}"));
        assert!(
            matches!(e, RecordError::Truncated { .. }),
            "cut {cut}: {e:?}"
        );
        assert!(msg.contains(&format!("ends at byte {cut}")), "{msg}");
    }
    // Cut inside the magic: a prefix of the magic is still a recording.
    let (e, _) = load_err(&full[..5], "meta-cut-magic");
    assert!(matches!(e, RecordError::Truncated { .. }), "{e:?}");
}

#[test]
fn a_damaged_byte_is_reported_with_its_frame_offset() {
    let t = Tmp::new("corrupt-src");
    let starts = write_full(&t.0, 3);
    let full = std::fs::read(&t.0).unwrap();
    let second = starts[1] as usize;
    // In the payload of the second interval frame.
    let mut b = full.clone();
    b[second + 20] ^= 0x10;
    let (e, msg) = load_err(&b, "corrupt-payload");
    assert!(
        matches!(e, RecordError::Corrupt { offset, .. } if offset == second as u64),
        "{e:?}"
    );
    assert!(
        msg.contains(&format!(
            "corrupt recording at byte {second}: Interval frame fails its checksum"
        )),
        "{msg}"
    );
    // In its length field: the header checksum catches it (it must not
    // pass for a cut-off file).
    let mut b = full.clone();
    b[second + 2] ^= 0x01;
    let (e, msg) = load_err(&b, "corrupt-len");
    assert!(matches!(e, RecordError::Corrupt { .. }), "{e:?}");
    assert!(msg.contains("frame header fails its checksum"), "{msg}");
    // Bytes after the End frame.
    let mut b = full.clone();
    b.extend_from_slice(b"junk");
    let (e, msg) = load_err(&b, "after-end");
    assert!(matches!(e, RecordError::Corrupt { .. }), "{e:?}");
    assert!(msg.contains("data after the End frame"), "{msg}");
}

#[test]
fn no_damage_makes_the_reader_panic() {
    let t = Tmp::new("fuzz-src");
    write_full(&t.0, 2);
    let full = std::fs::read(&t.0).unwrap();
    let out = Tmp::new("fuzz-out");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for pos in 0..full.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = full.clone();
            b[pos] ^= flip;
            std::fs::write(&out.0, &b).unwrap();
            // Every byte is covered by the magic, the version or a CRC32,
            // which catches any change within one byte.
            assert!(
                Recording::load(&out.0).is_err(),
                "flip {flip:#x} at byte {pos} went unnoticed"
            );
        }
        // Random garbage from here on.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = full[..pos].to_vec();
        b.extend((0..64).map(|i| (x >> (i % 8 * 8)) as u8));
        std::fs::write(&out.0, &b).unwrap();
        let _ = Recording::load(&out.0);
    }
}

#[test]
fn frames_with_valid_checksums_but_bad_payloads_are_corrupt() {
    // A payload that passes its checksum but cannot decode (what a buggy
    // writer or a crafted file would give) is corrupt, not a panic.
    let t = Tmp::new("bad-payload");
    let w = Writer::create(&t.0, &meta()).unwrap();
    w.finish().unwrap();
    let mut b = std::fs::read(&t.0).unwrap();
    let end_start = b.len() - 16;
    b.truncate(end_start);
    let payload = [0xffu8; 3];
    let mut h = [0u8; 12];
    h[..4].copy_from_slice(&3u32.to_le_bytes());
    h[4] = 2;
    let crc = crc32fast::hash(&h[..8]);
    h[8..].copy_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(&h);
    b.extend_from_slice(&payload);
    b.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let (e, msg) = load_err(&b, "bad-payload-out");
    assert!(matches!(e, RecordError::Corrupt { .. }), "{e:?}");
    assert!(msg.contains("Interval frame: payload ends inside"), "{msg}");
    // An unknown frame kind.
    b[end_start + 4] = 9;
    let crc = crc32fast::hash(&b[end_start..end_start + 8]);
    b[end_start + 8..end_start + 12].copy_from_slice(&crc.to_le_bytes());
    let (_, msg) = load_err(&b, "unknown-kind");
    assert!(msg.contains("unknown frame kind 9"), "{msg}");
}

#[test]
fn writer_keeps_meta_and_end_to_itself() {
    let t = Tmp::new("writer-misuse");
    let mut w = Writer::create(&t.0, &meta()).unwrap();
    assert!(w.append(&Frame::Meta(meta())).is_err());
    assert!(w.append(&Frame::End).is_err());
    assert_eq!(w.frames(), 1);
}

#[test]
fn an_unwritable_path_is_a_one_line_error() {
    let e = Writer::create(
        std::path::Path::new("/nonexistent-skprof-dir/x.skrec"),
        &meta(),
    )
    .err()
    .unwrap();
    let msg = e.to_string();
    assert!(
        msg.starts_with("cannot open /nonexistent-skprof-dir/x.skrec: "),
        "{msg}"
    );
}

#[test]
fn the_reader_streams_frames_in_order() {
    let t = Tmp::new("stream");
    write_full(&t.0, 2);
    let mut r = Reader::open(&t.0).unwrap();
    assert_eq!(r.meta(), &meta());
    let kinds: Vec<u8> = r.frames().map(|f| f.unwrap().kind()).collect();
    assert_eq!(kinds, [2, 2, 3, 4, 5]);
    assert!(r.ended_cleanly() && !r.truncated());
    assert_eq!(r.frames_read(), 6);
    // Exhausted: stays exhausted.
    assert!(r.next_frame().unwrap().is_none());
}
