//! What the VM tests share (each test crate that needs it has `mod common;`).
// Each test crate compiles its own copy and uses only part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

pub const SKPROF_VM: &str = env!("CARGO_BIN_EXE_skprof-vm");

/// Runs `script` under `sh -c` in a Debian guest of the `kernel` series
/// (6.1 or 6.12) that shares this machine's `/`, stopped after `timeout_s`.
pub fn guest_sh(kernel: &str, timeout_s: u32, script: &str) -> Output {
    Command::new(SKPROF_VM)
        .args([
            "run",
            "--kernel",
            kernel,
            "--timeout",
            &timeout_s.to_string(),
        ])
        .args(["--", "sh", "-c", script])
        .output()
        .expect("run skprof-vm")
}

/// Shell lines (for a `format!` script) that wait up to 5 s for the
/// programs whose names start with one of `prefixes` (a `grep -E`
/// alternation, e.g. `fentry|fexit|kprobe|kretprobe`) and an underscore to
/// go away, then print `after PROGRAMS LINKS`: what is still loaded and
/// how many BPF links exist. "after 0 0" means skprof detached everything.
pub fn detach_check(prefixes: &str) -> String {
    format!(
        "probes() {{ bpftool prog show 2>/dev/null | grep -cE 'name ({prefixes})_' ; }}
i=0
while [ \"$(probes)\" != 0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo \"after $(probes) $(bpftool link show 2>/dev/null | grep -c '^[0-9]')\"
"
    )
}
