//! skprof-vm: run one command under a real Debian kernel in qemu; the
//! harness skprof's VM tests and scripts use (a dev tool, not part of the
//! `skprof` binary).
//!
//! Why: the BPF programs we profile need fentry/fexit and kprobes, which the
//! development hosts' kernels refuse, and KVM does not work there. So we boot
//! Debian cloud kernels under qemu's software emulation (TCG) with the host's
//! `/` shared read-write over virtiofs as the guest's root: the guest runs the
//! host-built binaries (including `cargo test` binaries) with no image to
//! build, in the caller's working directory, and writes results straight into
//! the host filesystem.
//!
//! ```no_run
//! use skprof_vm::{self as vm, Job, Kernel, VmConfig};
//! let out = vm::run(&VmConfig::new(Kernel::V6_12), &Job::new(["uname", "-r"]))?;
//! assert_eq!(out.status, 0);
//! # anyhow::Ok(())
//! ```
//!
//! One run: a fresh temp dir under /tmp holds the generated guest init
//! script, the virtiofsd socket, the console log and the job's output and
//! exit status. virtiofsd and qemu are always killed and reaped; the temp dir
//! is removed unless `SKPROF_VM_KEEP=1`. Runs are independent, so several
//! may run at once (e.g. tests in parallel threads).
//!
//! The guest's init bind-mounts the kernel's module tree over `/lib/modules`
//! (guest-side only), so modprobe works without installing the kernel on the
//! host. On a host without `/lib/modules` that creates the empty directory
//! (the mountpoint) on the host.
//!
//! Environment knobs: `SKPROF_CACHE_DIR` (kernel cache, default
//! `~/.cache/skprof`), `SKPROF_VM_KEEP=1` (keep the temp dir),
//! `SKPROF_VM_APPEND` (extra kernel cmdline, e.g. `loglevel=7` to see the
//! boot), `SKPROF_QEMU` / `SKPROF_VIRTIOFSD` (binaries to use).

mod guest;
mod host;
mod initrd;
mod kernel;
mod vmlinux;

use std::{
    ffi::OsStr,
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

pub use guest::{kernel_cmdline, sh_quote};
pub use kernel::{
    compare_versions, newest_package, Cache, CachedKernel, Kernel, KernelImage, INITRD_NAME,
    VMLINUX_NAME,
};

use guest::{files, GuestIo, GuestPlan};
use host::{Io, Procs, QemuSpec};

/// Default per-run timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default guest memory in MiB.
pub const DEFAULT_MEM_MIB: u64 = 2048;
/// Default number of guest CPUs. With `thread=single` TCG they share one host
/// thread, but two CPUs still exercise per-CPU code paths (maps, RCU).
pub const DEFAULT_CPUS: u32 = 2;
/// Console lines quoted in errors.
const CONSOLE_TAIL_LINES: usize = 40;
/// How often the host polls qemu, virtiofsd and the guest's marker files.
const POLL: Duration = Duration::from_millis(10);
/// How long qemu may outlive virtiofsd (it exits first at poweroff).
const VIRTIOFSD_GRACE: Duration = Duration::from_secs(3);

/// Which kernel to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// The newest cached (else downloaded) Debian kernel of a series.
    Debian(Kernel),
    /// A given image (`--kernel PATH [--initrd F]`) or an already resolved
    /// cache entry.
    Image(KernelImage),
}

impl From<Kernel> for KernelSource {
    fn from(k: Kernel) -> Self {
        KernelSource::Debian(k)
    }
}

impl From<KernelImage> for KernelSource {
    fn from(k: KernelImage) -> Self {
        KernelSource::Image(k)
    }
}

/// The machine to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: KernelSource,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    pub cpus: u32,
    /// After this, qemu and virtiofsd are killed and the run fails.
    pub timeout: Duration,
    /// TCP forwards `(host_port, guest_port)` over qemu user networking; the
    /// host side listens on 127.0.0.1 only. Non-empty adds a virtio-net NIC
    /// that the guest configures as 10.0.2.15/24 (gateway 10.0.2.2).
    pub forwards: Vec<(u16, u16)>,
    /// Count virtual time in instructions (qemu `-icount`; see
    /// `host::qemu_args`): for deterministic benchmarks, not for tests
    /// that wait on real time.
    pub icount: bool,
}

impl VmConfig {
    /// Defaults: 2 GiB, 2 CPUs, 300 s timeout, no network.
    pub fn new(kernel: impl Into<KernelSource>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            mem_mib: DEFAULT_MEM_MIB,
            cpus: DEFAULT_CPUS,
            timeout: DEFAULT_TIMEOUT,
            forwards: Vec::new(),
            icount: false,
        }
    }
}

/// Where the job's output goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// stdout and stderr are captured into [`VmOutcome`]; stdin is empty.
    #[default]
    Capture,
    /// stdout and stderr stream live to our stdout (through a second serial
    /// port, so kernel messages don't mix in). If our stdin is a terminal the
    /// job gets it as its controlling terminal (an interactive shell works;
    /// ^C goes to the guest job, not to qemu); otherwise like `Stream`.
    Console,
    /// stdout and stderr stream live to our stdout; stdin is empty and our
    /// terminal is left alone (for tests that want live output).
    Stream,
}

/// One command to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    pub argv: Vec<String>,
    /// Extra environment, on top of (and overriding) what is passed through
    /// from the caller: PATH, HOME, TERM, RUST_BACKTRACE, RUST_LOG, SKPROF_*.
    pub env: Vec<(String, String)>,
    /// Working directory in the guest; default: the caller's current dir.
    pub cwd: Option<PathBuf>,
    pub output: Output,
}

impl Job {
    pub fn new<I, S>(argv: I) -> Job
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Job {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Job::default()
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Job {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Job {
        self.cwd = Some(dir.into());
        self
    }

    pub fn output(mut self, output: Output) -> Job {
        self.output = output;
        self
    }
}

/// Result of a completed run (the job ran and its status came back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOutcome {
    /// The job's exit status (128+N if killed by signal N).
    pub status: i32,
    /// Captured stdout/stderr (empty in console mode).
    pub stdout: String,
    pub stderr: String,
    /// The guest's serial console (ttyS0) log, for diagnosis.
    pub console: String,
    /// `uname -r` of the booted kernel (or the image name).
    pub kernel: String,
    /// qemu start to job start.
    pub boot_ms: u64,
    /// The whole [`run`] call (kernel lookup, boot, job, shutdown).
    pub total_ms: u64,
}

/// Failures of the guest, distinguishable from harness setup errors.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM timed out after {secs} s (kernel {kernel}); last console lines:\n{console_tail}")]
    Timeout {
        secs: u64,
        kernel: String,
        console_tail: String,
    },
    #[error("{reason} (kernel {kernel}); last console lines:\n{console_tail}")]
    Guest {
        reason: String,
        kernel: String,
        console_tail: String,
    },
}

/// True if `err` (or its cause) is a [`VmError::Timeout`].
pub fn is_timeout(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref::<VmError>(), Some(VmError::Timeout { .. }))
}

/// Parse a memory size: `2G`, `512M`, `1024` (MiB), `1.5G` not supported.
pub fn parse_mem(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad memory size {s:?} (e.g. 2G, 512M)"))?;
    let mib = n
        .checked_mul(mult)
        .with_context(|| format!("memory size {s:?} too large"))?;
    if mib < 128 {
        bail!("memory size {s:?} too small (min 128M)");
    }
    Ok(mib)
}

/// The last `n` lines of `text`.
fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The console tail quoted in errors.
fn console_tail(console: &str) -> String {
    let tail = tail_lines(console, CONSOLE_TAIL_LINES);
    if tail.trim().is_empty() {
        "(console empty: the kernel runs with `quiet`; try SKPROF_VM_APPEND=loglevel=7)".into()
    } else {
        tail
    }
}

/// Why the guest stopped without a status, judging from its console.
fn panic_reason(console: &str) -> Option<String> {
    let line = console.lines().find(|l| l.contains("Kernel panic"))?;
    let what = line
        .split_once("Kernel panic - not syncing: ")
        .map_or("", |(_, w)| w.trim());
    Some(if what.is_empty() {
        "guest kernel panicked".to_owned()
    } else {
        format!("guest kernel panicked: {what}")
    })
}

/// Env passed into the guest: PATH, HOME, TERM, RUST_BACKTRACE, RUST_LOG and
/// SKPROF_* from `caller`, then `extra` (overriding).
fn job_env<I>(caller: I, extra: &[(String, String)]) -> Vec<(String, String)>
where
    I: IntoIterator<Item = (String, String)>,
{
    const PASS: [&str; 5] = ["PATH", "HOME", "TERM", "RUST_BACKTRACE", "RUST_LOG"];
    let mut env: Vec<(String, String)> = caller
        .into_iter()
        .filter(|(k, _)| PASS.contains(&k.as_str()) || k.starts_with("SKPROF_"))
        .collect();
    env.sort();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    for (k, v) in extra {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// The run's temp dir; removed on drop unless `SKPROF_VM_KEEP=1`.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

/// Prefix of run temp dirs: `/tmp/skprof-vm-<pid>-<seq>-<nanos>`.
const WORKDIR_PREFIX: &str = "skprof-vm-";
/// Marker in a temp dir kept on purpose (`SKPROF_VM_KEEP=1`).
const KEEP_MARKER: &str = "KEEP";

impl WorkDir {
    fn create() -> Result<WorkDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let base = PathBuf::from("/tmp");
        remove_stale_workdirs(&base);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..100 {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!(
                "{WORKDIR_PREFIX}{}-{seq}-{nanos:08x}",
                std::process::id()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let keep = std::env::var_os("SKPROF_VM_KEEP").is_some_and(|v| v == "1");
                    if keep {
                        let _ = fs::write(path.join(KEEP_MARKER), "");
                    }
                    return Ok(WorkDir { path, keep });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("create {}", path.display())),
            }
        }
        bail!("cannot create a unique temp dir under /tmp")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("skprof-vm: kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Remove temp dirs of runs whose process died without cleaning up
/// (SIGKILL, SIGTERM): their pid is gone and they were not kept on purpose.
fn remove_stale_workdirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(WORKDIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !Path::new(&format!("/proc/{pid}")).exists() && !path.join(KEEP_MARKER).exists() {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Boot a VM, run `job` in it and return its outcome.
///
/// Errors: harness setup (kernel download, virtiofsd, qemu start) with
/// context naming the step; [`VmError::Timeout`] after `cfg.timeout`;
/// [`VmError::Guest`] if the guest panicked, its init failed or it stopped
/// without reporting the job's status.
pub fn run(cfg: &VmConfig, job: &Job) -> Result<VmOutcome> {
    let t0 = Instant::now();
    let image = match &cfg.kernel {
        KernelSource::Debian(series) => {
            Cache::from_env()?
                .resolve(*series)
                .with_context(|| format!("get kernel {series}"))?
                .image
        }
        KernelSource::Image(image) => image.clone(),
    };
    let cwd = match &job.cwd {
        Some(c) => c.clone(),
        None => std::env::current_dir().context("current directory")?,
    };
    // Declared before `procs` so it is dropped (removed) after they are dead.
    let work = WorkDir::create()?;

    let interactive = job.output == Output::Console && host::stdin_is_tty();
    let io = match job.output {
        Output::Capture => GuestIo::Capture,
        Output::Console if interactive => {
            let (rows, cols) = host::terminal_size().unwrap_or((24, 80));
            GuestIo::Interactive { rows, cols }
        }
        Output::Console | Output::Stream => GuestIo::Stream,
    };
    let caller_env = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let plan = GuestPlan {
        workdir: work.path.clone(),
        cwd,
        argv: job.argv.clone(),
        env: job_env(caller_env, &job.env),
        modules: image.modules.clone(),
        net: !cfg.forwards.is_empty(),
        busybox: initrd::find_busybox(),
        io,
    };
    let init_path = work.file(files::INIT);
    write_executable(&init_path, &guest::init_script(&plan)?).context("write guest init script")?;
    let mut cmdline = kernel_cmdline(&init_path)?;
    // Debugging aid, e.g. SKPROF_VM_APPEND="loglevel=7" to see the boot.
    if let Some(extra) = std::env::var("SKPROF_VM_APPEND")
        .ok()
        .filter(|e| !e.is_empty())
    {
        cmdline.push(' ');
        cmdline.push_str(&extra);
    }

    let mut procs = Procs::default();
    let boot_step = format!("boot {}", image.release);

    // virtiofsd first: qemu connects to its socket at startup.
    let socket = work.file("vfs.sock");
    let vfs_log = work.file("virtiofsd.log");
    let virtiofsd = {
        let mut cmd = Command::new(host::virtiofsd_path()?);
        cmd.args(host::virtiofsd_args(&socket));
        let log = fs::File::create(&vfs_log).context("start virtiofsd: create log")?;
        procs
            .spawn("virtiofsd", cmd, Io::Null, Io::Null, Io::File(log), true)
            .context("start virtiofsd")?
    };
    let wait_start = Instant::now();
    while !socket.exists() {
        if let Some(st) = procs.try_wait(virtiofsd)? {
            bail!(
                "start virtiofsd: exited ({st}): {}",
                tail_lines(&read_lossy(&vfs_log), 5)
            );
        }
        if wait_start.elapsed() > Duration::from_secs(10) {
            bail!("start virtiofsd: no socket after 10 s");
        }
        thread::sleep(Duration::from_millis(2));
    }

    let console_log = work.file("console.log");
    let qemu_log = work.file("qemu.log");
    let spec = QemuSpec {
        vmlinuz: &image.vmlinuz,
        initrd: image.initrd.as_deref(),
        cmdline: &cmdline,
        mem_mib: cfg.mem_mib,
        cpus: cfg.cpus,
        vfs_socket: &socket,
        console_log: &console_log,
        job_stdio: job.output != Output::Capture,
        stdio_no_signal: interactive,
        forwards: &cfg.forwards,
        icount: cfg.icount,
    };
    let qemu = {
        let mut cmd = Command::new(qemu_binary());
        cmd.args(host::qemu_args(&spec));
        let log = fs::File::create(&qemu_log).context("start qemu: create log")?;
        let (stdin, stdout) = match job.output {
            Output::Capture => (Io::Null, Io::Null),
            _ if interactive => (Io::Inherit, Io::Inherit),
            Output::Console | Output::Stream => (Io::Null, Io::Inherit),
        };
        if interactive {
            procs.save_terminal();
        }
        // An interactive qemu must stay in our (foreground) process group to
        // read the terminal.
        procs
            .spawn("qemu", cmd, stdin, stdout, Io::File(log), !interactive)
            .context("start qemu")?
    };
    let qemu_start = Instant::now();
    let started_marker = work.file(files::STARTED);
    let mut boot_ms = None;
    let mut vfs_exit = None;

    let guest_err = |reason: String| -> anyhow::Error {
        let console = read_lossy(&console_log).replace('\r', "");
        anyhow::Error::new(VmError::Guest {
            reason,
            kernel: image.release.clone(),
            console_tail: console_tail(&console),
        })
        .context(boot_step.clone())
    };

    let qemu_status = loop {
        if let Some(st) = procs.try_wait(qemu)? {
            break st;
        }
        if boot_ms.is_none() && started_marker.exists() {
            boot_ms = Some(qemu_start.elapsed());
        }
        // virtiofsd exits by itself when qemu closes the vhost-user socket
        // at poweroff, possibly before we see qemu exit; only if qemu keeps
        // running without it is that a failure.
        if vfs_exit.is_none() {
            vfs_exit = procs.try_wait(virtiofsd)?.map(|st| (st, Instant::now()));
        }
        if let Some((st, when)) = vfs_exit {
            if when.elapsed() > VIRTIOFSD_GRACE {
                procs.kill(qemu);
                return Err(guest_err(format!(
                    "virtiofsd exited ({st}) while the VM was running: {}",
                    tail_lines(&read_lossy(&vfs_log), 5)
                )));
            }
        }
        if qemu_start.elapsed() >= cfg.timeout {
            procs.kill(qemu);
            procs.kill(virtiofsd);
            let console = read_lossy(&console_log).replace('\r', "");
            return Err(anyhow::Error::new(VmError::Timeout {
                secs: cfg.timeout.as_secs(),
                kernel: image.release.clone(),
                console_tail: console_tail(&console),
            })
            .context(boot_step));
        }
        thread::sleep(POLL);
    };
    procs.kill(virtiofsd);
    drop(procs);
    let boot_ms = boot_ms.unwrap_or_else(|| qemu_start.elapsed());

    let console = read_lossy(&console_log).replace('\r', "");
    let status_text = read_lossy(&work.file(files::STATUS));
    let status = match status_text.trim().parse::<i32>() {
        Ok(s) => s,
        Err(_) => {
            let init_error = read_lossy(&work.file(files::INIT_ERROR));
            let reason = if !init_error.trim().is_empty() {
                format!("guest init failed: {}", init_error.trim())
            } else if let Some(reason) = panic_reason(&console) {
                reason
            } else if !qemu_status.success() {
                let msg = format!(
                    "qemu failed ({qemu_status}): {}",
                    tail_lines(read_lossy(&qemu_log).trim(), 5)
                );
                if console.trim().is_empty() {
                    // It never got to boot: nothing from the guest to show.
                    return Err(anyhow::anyhow!(msg).context(boot_step));
                }
                msg
            } else {
                "VM stopped without reporting the job's exit status".to_owned()
            };
            return Err(guest_err(reason));
        }
    };
    Ok(VmOutcome {
        status,
        stdout: read_lossy(&work.file(files::STDOUT)),
        stderr: read_lossy(&work.file(files::STDERR)),
        console,
        kernel: image.release.clone(),
        boot_ms: u64::try_from(boot_ms.as_millis()).unwrap_or(u64::MAX),
        total_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// `$SKPROF_QEMU` or `qemu-system-x86_64` from PATH.
fn qemu_binary() -> PathBuf {
    std::env::var_os("SKPROF_QEMU")
        .filter(|q| !q.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

/// Resolve a `--kernel` argument: a series ("6.1", "6.12") or a path.
pub fn kernel_source(arg: &str, initrd: Option<&Path>) -> Result<KernelSource> {
    if let Ok(series) = arg.parse::<Kernel>() {
        if initrd.is_some() {
            bail!("--initrd only goes with --kernel PATH");
        }
        return Ok(KernelSource::Debian(series));
    }
    if !Path::new(arg).exists() && !arg.contains('/') {
        bail!("--kernel {arg:?}: not a known series (6.1, 6.12) nor an existing file");
    }
    Ok(KernelSource::Image(KernelImage::from_path(
        Path::new(OsStr::new(arg)),
        initrd,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn env_is_filtered_and_extended() {
        let caller = vec![
            kv("PATH", "/p"),
            kv("HOME", "/root"),
            kv("SECRET", "x"),
            kv("SKPROF_X", "1"),
            kv("RUST_LOG", "debug"),
            kv("LD_PRELOAD", "evil.so"),
        ];
        let env = job_env(caller, &[kv("SKPROF_X", "2"), kv("EXTRA", "e")]);
        assert_eq!(
            env,
            [
                kv("HOME", "/root"),
                kv("PATH", "/p"),
                kv("RUST_LOG", "debug"),
                kv("SKPROF_X", "2"),
                kv("EXTRA", "e"),
            ]
        );
        let env = job_env(Vec::new(), &[]);
        assert_eq!(env[0].0, "PATH");
        assert!(env[0].1.contains("/usr/bin"));
    }

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem("2G").unwrap(), 2048);
        assert_eq!(parse_mem("512M").unwrap(), 512);
        assert_eq!(parse_mem("1024").unwrap(), 1024);
        assert!(parse_mem("1.5G").is_err());
        assert!(parse_mem("64M").is_err());
        assert!(parse_mem("lots").is_err());
    }

    #[test]
    fn panics_are_summarised() {
        let console = "[ 5.1] sysrq: Trigger a crash\n\
                       [ 5.2] Kernel panic - not syncing: sysrq triggered crash\n\
                       [ 5.3] CPU: 1 PID: 113\n";
        assert_eq!(
            panic_reason(console).as_deref(),
            Some("guest kernel panicked: sysrq triggered crash")
        );
        assert_eq!(panic_reason("all fine\n"), None);
        assert!(console_tail("").starts_with("(console empty"));
    }

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 5), "");
    }

    #[test]
    fn kernel_args() {
        assert_eq!(
            kernel_source("6.1", None).unwrap(),
            KernelSource::Debian(Kernel::V6_1)
        );
        assert!(kernel_source("6.1", Some(Path::new("/x"))).is_err());
        assert!(kernel_source("5.10", None).is_err());
    }

    #[test]
    fn timeouts_are_recognised_through_context() {
        let e = anyhow::Error::new(VmError::Timeout {
            secs: 3,
            kernel: "k".into(),
            console_tail: "t".into(),
        })
        .context("boot k");
        assert!(is_timeout(&e));
        assert!(format!("{e:#}").starts_with("boot k: VM timed out after 3 s"));
        assert!(!is_timeout(&anyhow::anyhow!("other")));
    }
}
