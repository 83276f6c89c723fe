//! What the VM tests share (each test crate that needs it has `mod common;`).
// Each test crate compiles its own copy and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `skprof-vm` binary (crates/skprof-vm): `$SKPROF_VM` if set, else
/// built on first use beside the `skprof` under test (same target directory
/// and profile). It is another package of the workspace, so cargo gives
/// these tests no `CARGO_BIN_EXE_` path for it; building it here (a no-op
/// when it is up to date) also keeps a stale one from being run.
pub fn skprof_vm() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("SKPROF_VM") {
            return PathBuf::from(p);
        }
        let skprof = Path::new(env!("CARGO_BIN_EXE_skprof"));
        let profile_dir = skprof.parent().expect("skprof's directory");
        let target_dir = profile_dir.parent().expect("the target directory");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(p) => p,
            None => panic!("{}: no profile directory", skprof.display()),
        };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--profile", profile])
            .args(["-p", "skprof-vm", "--bin", "skprof-vm"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo to build skprof-vm");
        let bin = profile_dir.join("skprof-vm");
        assert!(
            status.success() && bin.is_file(),
            "could not build {} (`cargo build -p skprof-vm` failed; \
             or set SKPROF_VM to a built skprof-vm)",
            bin.display()
        );
        bin
    })
}

/// Runs `script` under `sh -c` in a Debian guest of the `kernel` series
/// (6.1 or 6.12) that shares this machine's `/`, stopped after `timeout_s`.
pub fn guest_sh(kernel: &str, timeout_s: u32, script: &str) -> Output {
    Command::new(skprof_vm())
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
