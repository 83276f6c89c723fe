//! skprof: a live profiler for the BPF socket-lookup helpers.
//!
//! One lookup's path: `bpf/skprof.bpf.c` aggregates it in per-CPU maps →
//! `bpf::probes` reads and merges them into a `model::snapshot::Snapshot` →
//! `model` turns two snapshots into interval statistics → `cli` prints them.
//!
//! `model` and `record` are the core: no BPF, no terminal, no sockets. They
//! build alone with `--no-default-features` (the fuzz target's build).
#![deny(unsafe_code)]
#[cfg(feature = "bpf")]
pub mod attrib;
#[cfg(feature = "bpf")]
pub mod bpf;
#[cfg(feature = "bpf")]
pub mod cli;
pub mod duration;
pub mod error;
#[cfg(feature = "bpf")]
pub mod export;
#[cfg(feature = "bpf")]
pub mod kernel;
#[cfg(feature = "bpf")]
pub mod ksyms;
pub mod model;
pub mod record;
#[cfg(feature = "bpf")]
pub mod session;
#[cfg(feature = "bpf")]
pub mod tui;
#[cfg(feature = "bpf")]
pub mod workload;

/// Without BPF only the workload's tally, which recordings carry.
#[cfg(not(feature = "bpf"))]
pub mod workload {
    mod tally;
    pub use tally::{HelperTally, Tally};
}
