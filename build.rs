//! Compiles every `bpf/*.bpf.c` into a libbpf skeleton in `$OUT_DIR`.
#[cfg(feature = "bpf")]
use std::{env, ffi::OsStr, fs, path::PathBuf};

#[cfg(feature = "bpf")]
use libbpf_cargo::SkeletonBuilder;

/// Without the `bpf` feature (the fuzz build) there is nothing to compile.
#[cfg(not(feature = "bpf"))]
fn main() {}

#[cfg(feature = "bpf")]
fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let bpf_dir = PathBuf::from("bpf");
    println!("cargo:rerun-if-changed=bpf");
    let mut sources: Vec<PathBuf> = fs::read_dir(&bpf_dir)
        .expect("read bpf/")
        .map(|e| e.expect("read bpf/ entry").path())
        .collect();
    sources.sort();
    for path in &sources {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for src in sources.iter().filter(|p| {
        p.file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.ends_with(".bpf.c"))
    }) {
        let name = src
            .file_name()
            .and_then(OsStr::to_str)
            .and_then(|n| n.strip_suffix(".bpf.c"))
            .expect("bpf source name");
        let skel = out.join(format!("{name}.skel.rs"));
        SkeletonBuilder::new()
            .source(src)
            .clang_args([
                "-I",
                "bpf",
                "-Wall",
                "-Wno-unused-function",
                "-O2",
                "-g",
                // v3: 32-bit subregisters and jumps (5.1+) and atomic fetch ops (5.12+),
                // which the ledger uses; every supported kernel (6.1+) has them.
                "-mcpu=v3",
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building BPF skeleton for {}: {e:#}", src.display()));
    }
}
