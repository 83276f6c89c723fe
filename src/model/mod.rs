//! The pure core: no I/O, fed with snapshots read from the BPF maps (or a
//! recording) and unit-tested with recorded data.
pub mod annotate;
pub mod clock;
pub mod hist;
pub mod ids;
pub mod leak_watch;
pub mod ledger;
pub mod ledger_model;
pub mod reading;
pub mod sites;
pub mod snapshot;
pub mod tally;
pub mod window;
pub mod words;
