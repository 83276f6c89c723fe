//! Arbitrary bytes as a recording: the reader, the summary (deltas,
//! percentiles), the text reports and a comparison, as `skprof report` runs
//! them (see `skprof::record::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    skprof::record::fuzzing::exercise(data);
});
