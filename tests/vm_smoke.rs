//! Boots each Debian kernel series once in qemu (TCG) and checks the guest
//! environment the harness promises. One boot per kernel: every check runs
//! in the same job, which records its findings in a host temp dir (the guest
//! shares the host's `/`) and ends with a known exit status and output.
//!
//! Kernels are downloaded into the cache on first use (needs the Debian
//! mirror); later runs need no network.

use std::{
    fs,
    io::Read,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use skprof_vm::{self as vm, Job, Kernel, VmConfig};

/// The job: record facts about the guest in `$1`, serve one TCP connection
/// on the forwarded port, then exit 7 with known output.
const CHECK_SCRIPT: &str = r#"
d=$1
uname -r >"$d/uname"
pwd >"$d/pwd"
printf '%s' "$2" >"$d/arg"
printf '%s' "$SKPROF_X" >"$d/skprof_x"
printf '%s' "$HOME" >"$d/home"
env | sort >"$d/env"
hostname >"$d/hostname"
stat -f -c %t /sys/fs/bpf >"$d/bpffs"
cat /sys/class/net/lo/flags >"$d/lo_flags"
modprobe sch_ingress && modprobe veth && echo ok >"$d/modprobe"
ls /sys/module >"$d/modules"
ip -4 -o addr show >"$d/addrs"
# One connection through the host forward (the host retries until served).
echo hello-from-guest | timeout 60 busybox nc -l -p 8080
echo out
echo err >&2
exit 7
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Connect to the forwarded port until the guest's server answers.
fn fetch_greeting(port: u16, deadline: Instant) -> Option<String> {
    while Instant::now() < deadline {
        // slirp accepts on the host side even before the guest listens, then
        // closes: retry until data arrives.
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            // Long: under load a TCG guest can take seconds to answer, and
            // abandoning a connection the guest accepted loses its one reply.
            let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = String::new();
            if s.read_to_string(&mut buf).is_ok() && !buf.is_empty() {
                return Some(buf);
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
    None
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("guest wrote no {name}: {e}"))
}

fn smoke(kernel: Kernel) {
    let dir = std::env::temp_dir().join(format!("skprof-smoke-{}-{}", std::process::id(), kernel));
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("check.sh");
    fs::write(&script, CHECK_SCRIPT).unwrap();

    let port = free_port();
    let mut cfg = VmConfig::new(kernel);
    cfg.timeout = Duration::from_secs(180);
    cfg.forwards = vec![(port, 8080)];
    let odd_arg = "two  spaces, 'single' \"double\" $HOME `x` \\ end";
    let job = Job::new([
        "sh".to_owned(),
        script.to_string_lossy().into_owned(),
        dir.to_string_lossy().into_owned(),
        odd_arg.to_owned(),
    ])
    .env("SKPROF_X", "1");

    let runner = thread::spawn(move || vm::run(&cfg, &job));
    let greeting = fetch_greeting(port, Instant::now() + Duration::from_secs(150));
    let out = runner
        .join()
        .expect("vm::run panicked")
        .unwrap_or_else(|e| panic!("{kernel}: {e:#}"));
    eprintln!(
        "{kernel}: {} booted in {} ms, run took {} ms",
        out.kernel, out.boot_ms, out.total_ms
    );
    let ctx = format!(
        "{kernel}: console:\n{}\nstderr:\n{}",
        out.console, out.stderr
    );

    // Exit status and output propagation.
    assert_eq!(out.status, 7, "{ctx}");
    assert_eq!(out.stdout, "out\n", "{ctx}");
    assert_eq!(out.stderr, "err\n", "{ctx}");

    // The selected series booted.
    let uname = read(&dir, "uname");
    assert!(
        uname.starts_with(&format!("{}.", kernel.as_str())),
        "{kernel}: uname -r = {uname:?}"
    );
    assert_eq!(uname.trim(), out.kernel);

    // cwd, args and environment.
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(PathBuf::from(read(&dir, "pwd").trim()), cwd);
    assert_eq!(read(&dir, "arg"), odd_arg);
    assert_eq!(read(&dir, "skprof_x"), "1");
    assert_eq!(
        read(&dir, "home"),
        std::env::var("HOME").unwrap_or_default()
    );
    let env = read(&dir, "env");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    assert_eq!(read(&dir, "hostname").trim(), "skprof-vm");

    // bpffs, loopback, modules.
    // BPF_FS_MAGIC (coreutils 9.1 prints its name as UNKNOWN).
    assert_eq!(read(&dir, "bpffs").trim(), "cafe4a11");
    let flags = read(&dir, "lo_flags");
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is not up (flags {flags:#x})");
    assert_eq!(read(&dir, "modprobe").trim(), "ok", "{ctx}");
    let modules = read(&dir, "modules");
    assert!(modules.lines().any(|m| m == "sch_ingress"), "{modules}");
    assert!(modules.lines().any(|m| m == "veth"), "{modules}");

    // Networking through the host forward.
    assert!(
        read(&dir, "addrs").contains("10.0.2.15/24"),
        "{}",
        read(&dir, "addrs")
    );
    assert_eq!(greeting.as_deref(), Some("hello-from-guest\n"), "{ctx}");

    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn smoke_6_1() {
    smoke(Kernel::V6_1);
}

#[test]
fn smoke_6_12() {
    smoke(Kernel::V6_12);
}

/// A hung job is killed at the timeout and reported as such.
#[test]
fn timeout_is_reported() {
    let mut cfg = VmConfig::new(Kernel::V6_12);
    cfg.timeout = Duration::from_secs(3);
    let err = vm::run(&cfg, &Job::new(["sleep", "1000"])).unwrap_err();
    assert!(vm::is_timeout(&err), "{err:#}");
    assert!(
        format!("{err:#}").contains("VM timed out after 3 s"),
        "{err:#}"
    );
}
