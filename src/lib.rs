//! skprof: a live profiler for the BPF socket-lookup helpers.
//!
//! One lookup's path: `bpf/skprof.bpf.c` aggregates it in per-CPU maps →
//! `bpf::probes` reads and merges them into a `model::snapshot::Snapshot` →
//! `model` turns two snapshots into interval statistics → `cli` prints them.
pub mod attrib;
pub mod bpf;
pub mod cli;
pub mod error;
pub mod export;
pub mod kernel;
pub mod ksyms;
pub mod model;
pub mod record;
pub mod tui;
pub mod vm;
pub mod workload;
