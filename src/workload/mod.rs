//! Built-in workload (being written).
