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

/// What one script of a [`guest_batch`] printed, and its exit status.
pub struct Scenario {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `scripts` (name, `sh` script) one after another in one guest of the
/// `kernel` series, stopped after `timeout_s`: one boot for all of them
/// instead of one each (a boot and power-off take 5-10 s of emulation).
/// Each script runs in its own `sh`, in the order given, whatever the
/// previous one's exit status; its output and status come back by name.
/// Panics if the guest itself failed (harness error or timeout), with the
/// scripts' output so far.
pub fn guest_batch(
    kernel: &str,
    timeout_s: u32,
    scripts: &[(&str, String)],
) -> std::collections::BTreeMap<String, Scenario> {
    // The guest shares the host's /tmp.
    let dir = std::env::temp_dir().join(format!(
        "skprof-batch-{}-{}",
        std::process::id(),
        kernel.replace('.', "_")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the batch's temp dir");
    let d = dir.display();
    let mut main = String::new();
    for (name, script) in scripts {
        std::fs::write(dir.join(format!("{name}.sh")), script).expect("write a batch script");
        main += &format!(
            "sh {d}/{name}.sh </dev/null >{d}/{name}.out 2>{d}/{name}.err; echo $? >{d}/{name}.status\n"
        );
    }
    let out = guest_sh(kernel, timeout_s, &main);
    let read = |name: &str, ext: &str| {
        std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default()
    };
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        let so_far: String = scripts
            .iter()
            .map(|(name, _)| {
                format!(
                    "--- {name}: status {:?}\n{}\n{}\n",
                    read(name, "status").trim(),
                    read(name, "out"),
                    read(name, "err")
                )
            })
            .collect();
        panic!(
            "the {kernel} guest failed (skprof-vm status {code}: 124 a timeout, 125 a harness \
             failure): {}\n{so_far}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs = scripts
        .iter()
        .map(|(name, _)| {
            let status = read(name, "status")
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{kernel}: script {name} reported no status"));
            let run = Scenario {
                status,
                stdout: read(name, "out"),
                stderr: read(name, "err"),
            };
            (name.to_string(), run)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    runs
}

/// A named check of [`check_all`].
pub type Check<'a> = (&'a str, Box<dyn FnOnce() + 'a>);

/// Runs every check, even after one fails, then fails with the names of
/// those that did (each one's own message is printed as it panics): the
/// checks of one [`guest_batch`] are independent, and one failure must not
/// hide the others.
pub fn check_all(what: &str, checks: Vec<Check<'_>>) {
    let failed: Vec<&str> = checks
        .into_iter()
        .filter_map(|(name, check)| {
            eprintln!("{what}: checking {name}");
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
                .is_err()
                .then_some(name)
        })
        .collect();
    assert!(failed.is_empty(), "{what}: failed: {}", failed.join(", "));
}
