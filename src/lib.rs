//! skprof: a live profiler for the BPF socket-lookup helpers.
//!
//! One lookup's path: `bpf/skprof.bpf.c` aggregates it in per-CPU maps →
//! `bpf::probes` (the seam) reads them into a `model::snapshot::Snapshot` →
//! `session` takes one `model::reading::Reading` per interval (the live
//! source, or a recording replayed) → `model` turns readings into windows
//! and statistics, worded once (`model::words`) → the faces print them:
//! `cli` (stat, leaks, export), `tui` (top), `record` (record, report).
//! `cli` only parses and dispatches; no face imports it.
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
