//! What the fuzz target `recording_reader` (`fuzz/`, `scripts/fuzz`) runs
//! on each input, here so that the regression tests of its findings run
//! the very same code.
//!
//! An input goes through everything `skprof report` does with a file: the
//! reader, the summary (interval deltas, totals, percentiles), every text
//! rendering, and a comparison with a reference recording both ways. Almost
//! any change to a recording fails a checksum, so each input is also run
//! again with its frame checksums made right: that is what reaches the
//! payload decoder and the computations with arbitrary values.

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use super::compare::compare;
use super::render::{self, Format};
use super::summary::{Summary, SummaryBuilder};
use super::synth::{Spec, Synth};
use super::{Frame, Reader, MAGIC};

/// The text formats of a report (the figures are not rendered: too slow
/// for a fuzzer's loop, and drawn from the same summary).
const TEXT_FORMATS: [Format; 3] = [Format::Json, Format::Csv, Format::Md];

/// Runs one fuzz input. Errors are expected; a panic, an abort, an
/// allocation beyond the fuzzer's limit or a hang is a bug.
pub fn exercise(data: &[u8]) {
    let mut fixed = data.to_vec();
    if fix_checksums(&mut fixed) && fixed != data {
        // As given: a checksum fails somewhere, so the reader is all there
        // is to run.
        if let Ok(mut r) = Reader::from_bytes(data, Path::new("fuzz")) {
            while let Ok(Some(_)) = r.next_frame() {}
        }
    }
    report(&fixed);
    // A source shorter than it claims to be: lengths are only trusted as
    // far as bytes arrive.
    if let Ok(mut r) = Reader::from_reader(&fixed[..], u64::MAX, Path::new("fuzz")) {
        while let Ok(Some(_)) = r.next_frame() {}
    }
}

/// As `skprof report`, from bytes, keeping the frames read before an error
/// (so the summary sees whatever decodes), then compared with a reference
/// recording both ways.
fn report(data: &[u8]) {
    let Some(s) = summary(data) else { return };
    for f in TEXT_FORMATS {
        let _ = render::summary(&s, f);
    }
    let base = reference();
    let c = compare("base", base, "new", &s, Some(5.0), 1);
    for f in TEXT_FORMATS {
        let _ = render::comparison(&c, f);
    }
    let c = compare("base", &s, "new", base, Some(5.0), 1);
    let _ = render::comparison(&c, Format::Md);
}

/// The summary of a recording in memory; `None` when it has no complete
/// interval or no valid header and `Meta` frame.
pub fn summary(data: &[u8]) -> Option<Summary> {
    summary_from(Reader::from_bytes(data, Path::new("fuzz.skrec")).ok()?)
}

fn summary_from(mut reader: Reader<impl Read>) -> Option<Summary> {
    let mut b = SummaryBuilder::new(reader.format_version(), reader.meta().clone());
    for frame in reader.frames() {
        match frame {
            Ok(Frame::Interval(i)) => b.push_interval(*i),
            Ok(Frame::Leaks(l)) => b.push_leaks(l),
            Ok(Frame::Workload(t)) => b.set_workload(*t),
            Ok(Frame::Meta(_) | Frame::End) => {}
            Err(_) => break,
        }
    }
    b.finish(reader.truncated())
}

/// A small synthetic recording's summary, to compare inputs with.
fn reference() -> &'static Summary {
    static REF: OnceLock<Summary> = OnceLock::new();
    REF.get_or_init(|| {
        let spec = Spec {
            samples: 5_000,
            intervals: 4,
            interval_ms: 1000,
            programs: 3,
            seed: 7,
        };
        let synth = Synth::new(spec);
        let mut b = SummaryBuilder::new(1, synth.meta());
        for frame in synth {
            match frame {
                Frame::Interval(i) => b.push_interval(*i),
                Frame::Leaks(l) => b.push_leaks(l),
                _ => {}
            }
        }
        b.finish(false)
            .expect("a synthetic recording has intervals")
    })
}

/// Rewrites the checksums of every frame of a recording whose header and
/// length fit the data, so that the decoder sees the payloads. Returns
/// whether there was a frame to fix.
pub fn fix_checksums(b: &mut [u8]) -> bool {
    const HEAD: usize = MAGIC.len() + 2;
    if b.len() < HEAD || b[..MAGIC.len()] != MAGIC[..] {
        return false;
    }
    let mut at = HEAD;
    let mut fixed = false;
    while at + 12 <= b.len() {
        let len = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        let crc = crc32fast::hash(&b[at..at + 8]);
        b[at + 8..at + 12].copy_from_slice(&crc.to_le_bytes());
        fixed = true;
        let Some(end) = (at + 12).checked_add(len).filter(|&e| e + 4 <= b.len()) else {
            break;
        };
        let crc = crc32fast::hash(&b[at + 12..end]);
        b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        at = end + 4;
    }
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{write_full, Tmp};

    /// The seed corpus under `fuzz/seeds/recording_reader`: what each file
    /// holds, regenerated here. `SKPROF_BLESS_FUZZ_SEEDS=1` rewrites them.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        let t = Tmp::new("fuzz-seed-unit");
        write_full(&t.0, 3);
        let unit = std::fs::read(&t.0).unwrap();
        // Cut inside its Workload frame: a recording killed mid-write.
        let cut = unit[..unit.len() - 30].to_vec();
        let synth = |spec: Spec, name: &str| {
            let t = Tmp::new(name);
            crate::record::synth::write(&t.0, &spec).unwrap();
            std::fs::read(&t.0).unwrap()
        };
        let small = Spec {
            samples: 20_000,
            intervals: 3,
            interval_ms: 1000,
            programs: 3,
            seed: 3,
        };
        vec![
            ("unit-fixture.skrec", unit),
            ("unit-fixture-cut.skrec", cut),
            (
                "synth-3-intervals.skrec",
                synth(small.clone(), "fuzz-seed-a"),
            ),
            (
                "synth-7-programs.skrec",
                synth(
                    Spec {
                        samples: 900,
                        intervals: 2,
                        interval_ms: 250,
                        programs: 7,
                        seed: 11,
                    },
                    "fuzz-seed-b",
                ),
            ),
        ]
    }

    fn seed_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/recording_reader")
    }

    #[test]
    fn the_fuzz_seeds_are_current_recordings() {
        let dir = seed_dir();
        let bless = std::env::var_os("SKPROF_BLESS_FUZZ_SEEDS").is_some();
        let mut total = 0;
        for (name, bytes) in seeds() {
            let path = dir.join(name);
            if bless {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} is not what the format writes now: rerun with SKPROF_BLESS_FUZZ_SEEDS=1",
                path.display()
            );
            total += bytes.len();
            let s = summary(&bytes).unwrap_or_else(|| panic!("{name}: no summary"));
            assert_eq!(s.truncated, name.contains("cut"), "{name}");
            exercise(&bytes);
        }
        assert!(total < 50_000, "seeds of {total} bytes");
    }

    #[test]
    fn fixing_checksums_lets_a_changed_payload_reach_the_decoder() {
        let t = Tmp::new("fuzz-fix-checksums");
        write_full(&t.0, 2);
        let mut b = std::fs::read(&t.0).unwrap();
        let at = MAGIC.len() + 2 + 12;
        b[at] ^= 0x55;
        let e = Reader::from_bytes(&b, Path::new("x")).err().unwrap();
        assert!(e.to_string().contains("fails its checksum"), "{e}");
        assert!(fix_checksums(&mut b));
        let e = Reader::from_bytes(&b, Path::new("x")).err().unwrap();
        assert!(e.to_string().contains("Meta frame:"), "{e}");
        assert!(!fix_checksums(&mut [0u8; 3]));
    }
}
