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
            "t0=$(cat /proc/uptime); sh {d}/{name}.sh </dev/null >{d}/{name}.out 2>{d}/{name}.err; \
             echo $? >{d}/{name}.status; echo \"$t0 $(cat /proc/uptime)\" >{d}/{name}.time\n"
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
    // Where a guest's time goes, in guest seconds (emulated time, so
    // comparable between scenarios of one run): printed with the test's
    // output.
    for (name, _) in scripts {
        let t: Vec<f64> = read(name, "time")
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [start, _, end, _] = t[..] {
            eprintln!("guest_batch {kernel} {name}: {:.1} s", end - start);
        }
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

/// The files one guest run leaves in its directory (the guest shares the
/// host's `/tmp`).
pub struct Outputs {
    pub dir: PathBuf,
    pub kernel: String,
    /// The guest script's stdout: `status NAME CODE` lines.
    pub log: String,
}

impl Outputs {
    /// Runs `script` in a guest of the `kernel` series, stopped after
    /// `timeout_s`, writing its files into `dir` (the guest shares the
    /// host's /tmp). Panics with its output if the script failed.
    pub fn run(kernel: &str, timeout_s: u32, dir: PathBuf, script: &str) -> Outputs {
        let run = guest_sh(kernel, timeout_s, script);
        let out = Outputs {
            dir,
            kernel: kernel.to_string(),
            log: format!(
                "{}\n{}",
                String::from_utf8_lossy(&run.stdout),
                String::from_utf8_lossy(&run.stderr)
            ),
        };
        assert!(
            run.status.success(),
            "{kernel}: guest script failed ({:?}):\n{}",
            run.status.code(),
            out.log
        );
        out
    }

    pub fn read(&self, name: &str) -> String {
        let p = self.dir.join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {}: {e}\nguest log:\n{}",
                self.kernel,
                p.display(),
                self.log
            )
        })
    }

    /// The exit code the script logged for `name`.
    pub fn status(&self, name: &str) -> i32 {
        let prefix = format!("status {name} ");
        self.log
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or_else(|| panic!("{}: no status of {name}:\n{}", self.kernel, self.log))
    }

    /// An exit code that must be 0, with that process's stderr if not.
    pub fn ok(&self, name: &str, stderr_file: &str) {
        assert_eq!(
            self.status(name),
            0,
            "{}: {name} failed: {}",
            self.kernel,
            self.read(stderr_file)
        );
    }
}

/// `skprof ARGS` run on the host, with backtraces on (a panic must show
/// where).
pub fn skprof(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_skprof"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run skprof")
}

/// A command's stderr as text.
pub fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A JSON count (panics with the value when it is not one).
pub fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The JSON objects among the lines of `text` (a command's `--json`
/// output).
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

/// Shell functions for guest scripts that wait on files and processes:
/// `lines FILE PATTERN` (matching lines, 0 when none or no file),
/// `atleast FILE PATTERN N`, and `waitfor WHAT PID CMD...` (until CMD
/// succeeds, 3 min at most, while PID lives; exits 91 if it died, 90 on
/// time-out).
pub const SH_WAITFOR: &str = r#"lines() { n=$(grep -c "$2" "$1" 2>/dev/null); echo "${n:-0}"; }
atleast() { [ "$(lines "$1" "$2")" -ge "$3" ]; }
waitfor() {
  what=$1; pid=$2; shift 2; i=0
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "DIED $what"; exit 91; fi
    i=$((i+1)); if [ $i -gt 1800 ]; then echo "TIMEOUT $what"; exit 90; fi
    sleep 0.1
  done
}
"#;
