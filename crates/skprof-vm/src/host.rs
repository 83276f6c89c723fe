//! The host side of a run: virtiofsd and qemu command lines, and a guard
//! that always kills and reaps them.
#![allow(unsafe_code)] // termios, fork-time prctl, kill and ioctl, which std does not wrap

use std::{
    fs::File,
    io,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use super::guest::ROOT_TAG;

/// Where Debian's qemu-system-x86 package ships the (C) virtiofsd.
pub const VIRTIOFSD_PATHS: [&str; 3] = [
    "/usr/lib/qemu/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/virtiofsd",
];

/// Find virtiofsd (`$SKPROF_VIRTIOFSD` overrides).
pub fn virtiofsd_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SKPROF_VIRTIOFSD").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    VIRTIOFSD_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("virtiofsd not found (install qemu-system-x86)")
}

/// virtiofsd arguments sharing the host's `/`.
///
/// - `cache=always`: the guest caches dentries and attributes instead of
///   revalidating them on every access, which makes each exec of a host
///   binary ~0.08 s instead of ~0.4 s (`cache=auto`). Safe because the host
///   does not change the files the guest reads while a job runs.
/// - `sandbox=chroot`: the default `namespace` sandbox fails in containers
///   (pivot_root: EBUSY); chroot into `/` is all we need.
pub fn virtiofsd_args(socket: &Path) -> Vec<String> {
    vec![
        format!("--socket-path={}", socket.display()),
        "-o".into(),
        "source=/".into(),
        "-o".into(),
        "cache=always".into(),
        "-o".into(),
        "sandbox=chroot".into(),
    ]
}

/// What qemu needs to boot one run.
#[derive(Debug, Clone)]
pub struct QemuSpec<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_mib: u64,
    pub cpus: u32,
    pub vfs_socket: &'a Path,
    pub console_log: &'a Path,
    /// Add a second serial port (ttyS1) wired to qemu's stdio for the job.
    pub job_stdio: bool,
    /// Don't let ^C on the host terminal kill qemu (interactive mode: it
    /// belongs to the guest's job).
    pub stdio_no_signal: bool,
    pub forwards: &'a [(u16, u16)],
    /// Virtual time counted in instructions (see `qemu_args`).
    pub icount: bool,
}

/// Escape a value for qemu's `key=value,...` option syntax.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The qemu-system-x86_64 argument list.
///
/// - `-accel tcg,thread=single`: KVM does not work on our hosts, and
///   multi-threaded TCG occasionally panicked the guest at boot (`Oops:
///   int3` in `sched_clock_cpu`, 2 of ~70 boots; single-threaded: 0 of 20).
/// - memfd-backed shared guest RAM: vhost-user (virtiofsd) must map it.
/// - `-nodefaults -display none`: no VGA, NIC, floppy or monitor; the only
///   devices are the ones below.
/// - ttyS0 (the kernel console) goes to a file we read for diagnosis; ttyS1
///   (console mode only) carries the job's output to our stdout.
/// - With `icount`, `-icount shift=0,sleep=off`: the guest's clock advances
///   1 ns per instruction executed, and jumps over idle time. Timing in
///   the guest then counts instructions, exactly and the same on every run
///   whatever the host is doing (an emulated instruction counter where the
///   VM has no PMU); it weighs every instruction alike, so it is not time.
///   Needs single-threaded TCG, which we use anyway. Debian's 6.1 kernel
///   stops bringing up a second CPU under it (its clock stops at
///   "smp: Bringing up secondary CPUs"; 6.12 boots): one CPU there.
/// - `-cpu max,-erms,-fsrm`: with ERMS/FSRM the kernel clears and copies
///   memory with `rep stosb`/`rep movsb`, which qemu 7.2 emulates one byte
///   per iteration; without them it uses `rep stosq` and word loops. The
///   verifier copies its states and BPF maps are zeroed that way: loading
///   skprof's probes takes half the time on 6.1 (13 s instead of 27), a
///   quarter less on 6.12. What a traced lookup executes has no such
///   copies: `--icount` bench figures are the same with either CPU (within
///   the 2 instructions the latency sampler moves them).
pub fn qemu_args(q: &QemuSpec) -> Vec<String> {
    let mem = format!("{}M", q.mem_mib);
    let mut a: Vec<String> = [
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max,-erms,-fsrm",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut push = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    push("-smp", q.cpus.to_string());
    if q.icount {
        push("-icount", "shift=0,sleep=off".into());
    }
    push("-m", mem.clone());
    push(
        "-object",
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
    );
    push("-machine", "pc,memory-backend=mem".into());
    push(
        "-chardev",
        format!(
            "socket,id=vfs,path={}",
            opt_escape(&q.vfs_socket.to_string_lossy())
        ),
    );
    push(
        "-device",
        format!("vhost-user-fs-pci,chardev=vfs,tag={ROOT_TAG}"),
    );
    push(
        "-chardev",
        format!(
            "file,id=con,path={}",
            opt_escape(&q.console_log.to_string_lossy())
        ),
    );
    push("-serial", "chardev:con".into());
    if q.job_stdio {
        let signal = if q.stdio_no_signal { "off" } else { "on" };
        push("-chardev", format!("stdio,id=job,signal={signal}"));
        push("-serial", "chardev:job".into());
    }
    if !q.forwards.is_empty() {
        let mut netdev = String::from("user,id=n0");
        for (h, g) in q.forwards {
            // Host side on loopback only: never expose the guest.
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        push("-netdev", netdev);
        push("-device", "virtio-net-pci,netdev=n0".into());
    }
    push("-kernel", q.vmlinuz.to_string_lossy().into_owned());
    if let Some(initrd) = q.initrd {
        push("-initrd", initrd.to_string_lossy().into_owned());
    }
    push("-append", q.cmdline.to_owned());
    a
}

/// How a child's stdio is wired.
pub enum Io {
    Null,
    Inherit,
    File(File),
}

impl Io {
    fn stdio(self) -> Stdio {
        match self {
            Io::Null => Stdio::null(),
            Io::Inherit => Stdio::inherit(),
            Io::File(f) => Stdio::from(f),
        }
    }
}

/// A spawned helper process, killed and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
    /// Leader of its own process group: kill the whole group.
    group: bool,
    reaped: bool,
}

/// Owns virtiofsd and qemu: whatever happens (error, panic, timeout) they
/// are SIGKILLed and reaped when this is dropped, and a terminal qemu put in
/// raw mode is restored. If our whole process dies instead (SIGINT,
/// SIGKILL), PR_SET_PDEATHSIG kills them.
#[derive(Default)]
pub struct Procs {
    procs: Vec<Proc>,
    termios: Option<libc::termios>,
}

/// Handle to a process owned by [`Procs`].
#[derive(Debug, Clone, Copy)]
pub struct ProcId(usize);

impl Procs {
    /// Save the terminal state of stdin, restored on drop.
    pub fn save_terminal(&mut self) {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut t) } == 0 {
            self.termios = Some(t);
        }
    }

    /// Spawn `cmd`. `own_group` puts it in a new process group (not for a
    /// process that must read the terminal: background groups get SIGTTIN).
    pub fn spawn(
        &mut self,
        name: &'static str,
        mut cmd: Command,
        stdin: Io,
        stdout: Io,
        stderr: Io,
        own_group: bool,
    ) -> Result<ProcId> {
        cmd.stdin(stdin.stdio())
            .stdout(stdout.stdio())
            .stderr(stderr.stdio());
        if own_group {
            cmd.process_group(0);
        }
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Note: fires when the spawning *thread* exits; run() keeps
                // that thread busy until the children are reaped.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
        self.procs.push(Proc {
            name,
            child,
            group: own_group,
            reaped: false,
        });
        Ok(ProcId(self.procs.len() - 1))
    }

    /// Non-blocking: the exit status if the process has exited.
    pub fn try_wait(&mut self, id: ProcId) -> Result<Option<std::process::ExitStatus>> {
        let p = &mut self.procs[id.0];
        let st = p
            .child
            .try_wait()
            .with_context(|| format!("wait for {}", p.name))?;
        if st.is_some() {
            p.reaped = true;
        }
        Ok(st)
    }

    /// SIGKILL (its group) and reap.
    pub fn kill(&mut self, id: ProcId) {
        kill_proc(&mut self.procs[id.0]);
    }
}

fn kill_proc(p: &mut Proc) {
    if p.reaped {
        // Its pid may be reused already; the group may still hold children,
        // but neither virtiofsd (chroot sandbox) nor qemu forks.
        return;
    }
    let pid = p.child.id() as libc::pid_t;
    // SAFETY: kill(2) on a pid (or group) we spawned and have not reaped.
    unsafe {
        libc::kill(if p.group { -pid } else { pid }, libc::SIGKILL);
    }
    let _ = p.child.wait();
    p.reaped = true;
}

impl Drop for Procs {
    fn drop(&mut self) {
        // qemu first (spawned last), then virtiofsd.
        for p in self.procs.iter_mut().rev() {
            kill_proc(p);
        }
        if let Some(t) = self.termios.take() {
            // SAFETY: restoring a termios obtained from tcgetattr on fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// The host terminal's size, if stdout or stdin is a terminal.
pub fn terminal_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        // SAFETY: TIOCGWINSZ fills a winsize struct or fails.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty on fd 0 has no memory effects.
    unsafe { libc::isatty(0) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(fwd: &'a [(u16, u16)], initrd: Option<&'a Path>, job: bool) -> QemuSpec<'a> {
        QemuSpec {
            vmlinuz: Path::new("/c/boot/vmlinuz-6.1"),
            initrd,
            cmdline: "console=ttyS0 init=/tmp/x/init",
            mem_mib: 2048,
            cpus: 2,
            vfs_socket: Path::new("/tmp/x/vfs.sock"),
            console_log: Path::new("/tmp/x/console.log"),
            job_stdio: job,
            stdio_no_signal: false,
            forwards: fwd,
            icount: false,
        }
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn qemu_args_minimal() {
        let a = qemu_args(&spec(&[], None, false));
        assert_eq!(after(&a, "-accel"), ["tcg,thread=single"]);
        assert_eq!(after(&a, "-m"), ["2048M"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-cpu"), ["max,-erms,-fsrm"]);
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=2048M,share=on"]
        );
        assert_eq!(after(&a, "-serial"), ["chardev:con"]);
        assert_eq!(
            after(&a, "-device"),
            ["vhost-user-fs-pci,chardev=vfs,tag=hostroot"]
        );
        assert!(after(&a, "-initrd").is_empty());
        assert!(after(&a, "-netdev").is_empty());
        assert!(after(&a, "-icount").is_empty());
        assert_eq!(after(&a, "-append"), ["console=ttyS0 init=/tmp/x/init"]);
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(a.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn qemu_args_full() {
        let a = qemu_args(&spec(
            &[(8080, 80), (2222, 22)],
            Some(Path::new("/c/i.cpio")),
            true,
        ));
        assert_eq!(after(&a, "-initrd"), ["/c/i.cpio"]);
        assert_eq!(after(&a, "-serial"), ["chardev:con", "chardev:job"]);
        assert_eq!(
            after(&a, "-netdev"),
            ["user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22"]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "vhost-user-fs-pci,chardev=vfs,tag=hostroot",
                "virtio-net-pci,netdev=n0"
            ]
        );
        assert!(after(&a, "-chardev").contains(&"stdio,id=job,signal=on"));
    }

    #[test]
    fn qemu_args_icount() {
        let a = qemu_args(&QemuSpec {
            icount: true,
            ..spec(&[], None, false)
        });
        assert_eq!(after(&a, "-icount"), ["shift=0,sleep=off"]);
        assert_eq!(after(&a, "-accel"), ["tcg,thread=single"]);
        assert_eq!(after(&a, "-cpu"), ["max,-erms,-fsrm"]);
    }

    #[test]
    fn qemu_option_commas_are_escaped() {
        assert_eq!(opt_escape("/a,b"), "/a,,b");
    }
}
