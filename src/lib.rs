//! skprof: a live profiler for the BPF socket-lookup helpers.
pub mod model;
pub mod vm;
pub mod workload;
