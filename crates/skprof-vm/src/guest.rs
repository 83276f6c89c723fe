//! The guest side: the generated PID-1 shell script and the kernel cmdline.
//!
//! The job never travels on the kernel cmdline (which has no quoting and a
//! length limit): it is written as a properly quoted script into the run's
//! host temp dir, which the guest sees at the same path because it uses the
//! host's `/` as its root.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

/// Guest hostname, so prompts and logs show where a command ran.
pub const HOSTNAME: &str = "skprof-vm";
/// virtiofs tag of the host's `/`.
pub const ROOT_TAG: &str = "hostroot";
/// The serial port that carries the job's output in console mode; ttyS0 is
/// the kernel console, so kernel messages never mix into the job's output.
pub const JOB_TTY: &str = "/dev/ttyS1";

/// Files in the run's temp dir that the guest writes and the host reads.
pub mod files {
    pub const INIT: &str = "init";
    pub const STARTED: &str = "started";
    pub const STATUS: &str = "status";
    pub const INIT_ERROR: &str = "init-error";
    pub const STDOUT: &str = "stdout";
    pub const STDERR: &str = "stderr";
}

/// Where the job's stdio goes in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestIo {
    /// stdout/stderr to files in the temp dir, stdin from /dev/null.
    Capture,
    /// stdout+stderr to [`JOB_TTY`] in raw mode (byte-exact), stdin
    /// /dev/null.
    Stream,
    /// [`JOB_TTY`] as the job's controlling terminal for stdin/out/err, in
    /// cooked mode with the host terminal's size.
    Interactive { rows: u16, cols: u16 },
}

/// Everything the guest init needs to know.
#[derive(Debug, Clone)]
pub struct GuestPlan {
    /// The run's temp dir (shared with the host).
    pub workdir: PathBuf,
    /// The job's working directory.
    pub cwd: PathBuf,
    pub argv: Vec<String>,
    /// The job's complete environment (it starts from `env -i`).
    pub env: Vec<(String, String)>,
    /// `lib/modules` tree to bind-mount over `/lib/modules`.
    pub modules: Option<PathBuf>,
    /// Configure the virtio-net interface with qemu's slirp defaults.
    pub net: bool,
    /// A busybox binary to run init's helpers (mount, ip, stty, env, ...):
    /// under TCG an exec of static busybox costs ~0.02 s against ~0.1 s for
    /// the dynamically linked util-linux/iproute2 tools, which makes init
    /// about a second faster. `None`: use the tools from PATH.
    pub busybox: Option<PathBuf>,
    pub io: GuestIo,
}

/// Quote `s` for a POSIX shell: unchanged if it has only safe characters,
/// else in single quotes (with `'` written as `'\''`).
pub fn sh_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn path_str(p: &Path) -> Result<&str> {
    match p.to_str() {
        Some(s) => Ok(s),
        None => bail!("path {} is not UTF-8", p.display()),
    }
}

/// The guest's PID 1: mounts the API filesystems, bind-mounts the kernel's
/// modules, brings up `lo` (and the NIC if asked), runs the job in a clean
/// environment, records its exit status and powers off. Mandatory steps that
/// fail write `init-error` and power off without running the job.
pub fn init_script(plan: &GuestPlan) -> Result<String> {
    if plan.argv.is_empty() {
        bail!("empty job command");
    }
    if let Some((k, _)) = plan
        .env
        .iter()
        .find(|(k, _)| k.is_empty() || k.contains('='))
    {
        bail!("invalid environment variable name {k:?}");
    }
    let t = sh_quote(path_str(&plan.workdir)?);
    let b = match &plan.busybox {
        Some(bb) => format!("{} ", sh_quote(path_str(bb)?)),
        None => String::new(),
    };
    let mut s = String::new();
    // `writeln!` into a String cannot fail; ignore its Result.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(s, $($arg)*); };
    }
    line!("#!/bin/sh");
    line!("# skprof-vm guest init (PID 1), generated for one job.");
    line!("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    line!("T={t}");
    line!("halt_vm() {{");
    line!("    {b}sync");
    // busybox poweroff -f is reboot(2) right away; sysrq needs nothing but
    // /proc. PID 1 must not exit (that would be a panic), hence the sleep.
    if !b.is_empty() {
        line!("    {b}poweroff -f");
    }
    line!("    echo o >/proc/sysrq-trigger");
    line!("    {b}sleep 60");
    line!("}}");
    line!("fail() {{");
    line!("    echo \"skprof-vm init: $*\" >&2");
    line!("    echo \"$*\" >\"$T/{}\"", files::INIT_ERROR);
    line!("    halt_vm");
    line!("}}");
    line!("opt() {{ {b}mount \"$@\" 2>/dev/null || true; }}");
    line!("{b}mount -t proc proc /proc || fail 'mount /proc'");
    line!("{b}mount -t sysfs sysfs /sys || fail 'mount /sys'");
    line!("{b}mount -t devtmpfs devtmpfs /dev || fail 'mount /dev'");
    line!("{b}mkdir -p /dev/pts /dev/shm");
    line!("opt -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts");
    line!("opt -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm");
    line!("{b}mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run || fail 'mount /run'");
    line!("opt -t cgroup2 cgroup2 /sys/fs/cgroup");
    line!("{b}mount -t bpf -o mode=700 bpf /sys/fs/bpf || fail 'mount bpffs on /sys/fs/bpf'");
    line!("opt -t debugfs debugfs /sys/kernel/debug");
    line!("opt -t tracefs tracefs /sys/kernel/tracing");
    if let Some(m) = &plan.modules {
        let m = sh_quote(path_str(m)?);
        // A host without any kernel installed has no /lib/modules; the
        // mountpoint must exist (this creates an empty dir on the host).
        line!("[ -d /lib/modules ] || {b}mkdir -p /lib/modules || fail 'mkdir /lib/modules'");
        line!("{b}mount -o bind {m} /lib/modules || fail 'bind-mount '{m}' on /lib/modules'");
    }
    line!("echo {HOSTNAME} >/proc/sys/kernel/hostname");
    line!("{b}ip link set lo up || fail 'ip link set lo up'");
    if plan.net {
        line!("modprobe -q virtio_net");
        line!("IF=");
        line!("for i in 1 2 3 4 5 6 7 8 9 10; do");
        line!("    for d in /sys/class/net/*; do");
        line!("        [ \"${{d##*/}}\" = lo ] || {{ IF=${{d##*/}}; break; }}");
        line!("    done");
        line!("    [ -n \"$IF\" ] && break");
        line!("    {b}sleep 0.1");
        line!("done");
        line!("[ -n \"$IF\" ] || fail 'no network interface (virtio_net)'");
        // qemu user networking (slirp) defaults: guest 10.0.2.15/24, gateway
        // and host 10.0.2.2.
        line!("{b}ip addr add 10.0.2.15/24 dev \"$IF\" && {b}ip link set \"$IF\" up \\");
        line!("    && {b}ip route add default via 10.0.2.2 || fail \"configure $IF\"");
    }
    let cwd = sh_quote(path_str(&plan.cwd)?);
    line!("cd {cwd} || fail 'cd '{cwd}");

    // Not busybox's env: with its preferred-applets build it would run its
    // own `sh`, `stat`, `modprobe`... instead of the host's tools.
    let mut cmd = String::from("env -i");
    for (k, v) in &plan.env {
        cmd.push(' ');
        cmd.push_str(&sh_quote(&format!("{k}={v}")));
    }
    for a in &plan.argv {
        cmd.push(' ');
        cmd.push_str(&sh_quote(a));
    }
    line!(": >\"$T/{}\"", files::STARTED);
    match plan.io {
        GuestIo::Capture => {
            line!(
                "( exec {cmd} ) </dev/null >\"$T/{}\" 2>\"$T/{}\"",
                files::STDOUT,
                files::STDERR
            );
        }
        // stty runs inside the redirections: a serial tty's window size is
        // lost when its last open file is closed.
        GuestIo::Stream => {
            line!(
                "( {b}stty -F {JOB_TTY} raw -echo 2>/dev/null; exec {cmd} ) </dev/null >{JOB_TTY} 2>&1"
            );
        }
        GuestIo::Interactive { rows, cols } => {
            // -onlcr: qemu leaves OPOST on for the host terminal, which
            // already turns \n into \r\n. A new session with the port as
            // controlling tty, so the shell gets job control and ^C reaches
            // the job (util-linux setsid: busybox's has no -w).
            line!(
                "( {b}stty sane -onlcr rows {rows} cols {cols} 2>/dev/null; \
                 exec setsid -w -c {cmd} ) <{JOB_TTY} >{JOB_TTY} 2>&1"
            );
        }
    }
    // The host reads this only after qemu exited: no need for atomicity.
    line!("echo $? >\"$T/{}\"", files::STATUS);
    line!("halt_vm");
    Ok(s)
}

/// The kernel cmdline: serial console on ttyS0, the host's `/` over virtiofs
/// as root, our script as init. `quiet` keeps the console log to warnings
/// and errors; `panic=-1` turns a guest panic into a reboot, which
/// `-no-reboot` turns into a qemu exit instead of a hang until the timeout.
/// `no_timer_check`: under TCG on a loaded host the emulated timer can miss
/// the boot-time IRQ check, and the kernel panics ("IO-APIC + timer doesn't
/// work", seen with 4 busy processes on 2 cores); the check only guards
/// against broken hardware timers, which qemu's are not.
/// `tsc=reliable`: the 6.1 kernel's TSC synchronization check fails between
/// TCG's vCPUs ("Marking TSC unstable due to TSCs unsynchronized") and it
/// falls back to the HPET, so every clock read (each `bpf_ktime_get_ns()`
/// of the probes) becomes an emulated MMIO access of about 250 ns. No real
/// host times lookups with the HPET, and 6.12 keeps the TSC, so the
/// benchmark would compare the kernels' clocks, not the probes. TCG derives
/// every vCPU's TSC from one host clock: they are in sync.
pub fn kernel_cmdline(init: &Path) -> Result<String> {
    let init = path_str(init)?;
    if init.chars().any(|c| c.is_whitespace() || c == '"') {
        bail!("init path {init:?} cannot go on the kernel cmdline");
    }
    Ok(format!(
        "console=ttyS0 root={ROOT_TAG} rootfstype=virtiofs rw quiet panic=-1 no_timer_check \
         tsc=reliable init={init}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn quoting_is_minimal_and_safe() {
        assert_eq!(sh_quote("uname"), "uname");
        assert_eq!(sh_quote("-r"), "-r");
        assert_eq!(sh_quote("/a/b.c"), "/a/b.c");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn quoting_round_trips_through_sh() {
        let args = [
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "$HOME `id` $(id)",
            "back\\slash",
            "new\nline",
            "",
            "*",
            "'",
            "a=b",
        ];
        let script: Vec<String> = std::iter::once("printf '%s\\0'".to_owned())
            .chain(args.iter().map(|a| sh_quote(a)))
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script.join(" "))
            .output()
            .unwrap();
        let got: Vec<&str> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .split_terminator('\0')
            .collect();
        assert_eq!(got, args);
    }

    fn plan(io: GuestIo) -> GuestPlan {
        GuestPlan {
            workdir: "/tmp/skprof-vm-1-2".into(),
            cwd: "/work/my dir".into(),
            argv: vec!["sh".into(), "-c".into(), "echo 'hi there'; exit 7".into()],
            env: vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("SKPROF_X".into(), "a b".into()),
            ],
            modules: Some("/c/k/lib/modules".into()),
            net: false,
            busybox: None,
            io,
        }
    }

    #[test]
    fn script_runs_job_quoted_in_clean_env() {
        let s = init_script(&plan(GuestIo::Capture)).unwrap();
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("T=/tmp/skprof-vm-1-2\n"));
        assert!(s.contains("mount -t bpf -o mode=700 bpf /sys/fs/bpf"));
        assert!(s.contains("mount -o bind /c/k/lib/modules /lib/modules"));
        assert!(s.contains("ip link set lo up"));
        assert!(s.contains("cd '/work/my dir' ||"));
        assert!(s.contains(
            r#"( exec env -i PATH=/usr/bin:/bin 'SKPROF_X=a b' sh -c 'echo '\''hi there'\''; exit 7' ) </dev/null >"$T/stdout" 2>"$T/stderr""#
        ));
        assert!(s.contains(r#"echo $? >"$T/status""#));
        assert!(!s.contains("busybox"));
        assert!(!s.contains("virtio_net"));
        // The job line comes after the started marker and before poweroff.
        let started = s.find(": >\"$T/started\"").unwrap();
        let job = s.find("( exec env -i").unwrap();
        let status = s.find("\"$T/status\"").unwrap();
        assert!(started < job && job < status);
        assert!(s.trim_end().ends_with("halt_vm"));
    }

    #[test]
    fn script_is_valid_sh() {
        for io in [
            GuestIo::Capture,
            GuestIo::Stream,
            GuestIo::Interactive { rows: 24, cols: 80 },
        ] {
            let mut p = plan(io);
            p.net = true;
            let s = init_script(&p).unwrap();
            let out = Command::new("sh")
                .arg("-n")
                .arg("-c")
                .arg(&s)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{s}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn busybox_runs_the_helpers() {
        let mut p = plan(GuestIo::Capture);
        p.busybox = Some("/usr/bin/busybox".into());
        p.net = true;
        let s = init_script(&p).unwrap();
        for cmd in [
            "/usr/bin/busybox mount -t proc proc /proc",
            "/usr/bin/busybox mount -o bind /c/k/lib/modules /lib/modules",
            "/usr/bin/busybox ip link set lo up",
            "/usr/bin/busybox ip addr add 10.0.2.15/24",
            "( exec env -i PATH=",
            "/usr/bin/busybox poweroff -f",
        ] {
            assert!(s.contains(cmd), "{cmd}");
        }
    }

    #[test]
    fn console_modes_use_the_job_tty() {
        let s = init_script(&plan(GuestIo::Stream)).unwrap();
        assert!(s.contains("( stty -F /dev/ttyS1 raw -echo 2>/dev/null; exec env -i "));
        assert!(s.contains(") </dev/null >/dev/ttyS1 2>&1"));
        let s = init_script(&plan(GuestIo::Interactive {
            rows: 40,
            cols: 120,
        }))
        .unwrap();
        assert!(s.contains(
            "( stty sane -onlcr rows 40 cols 120 2>/dev/null; exec setsid -w -c env -i "
        ));
        assert!(s.contains(") </dev/ttyS1 >/dev/ttyS1 2>&1"));
    }

    #[test]
    fn net_config_uses_slirp_defaults() {
        let mut p = plan(GuestIo::Capture);
        p.net = true;
        let s = init_script(&p).unwrap();
        assert!(s.contains("modprobe -q virtio_net"));
        assert!(s.contains("ip addr add 10.0.2.15/24 dev \"$IF\""));
        assert!(s.contains("ip route add default via 10.0.2.2"));
    }

    #[test]
    fn bad_jobs_are_rejected() {
        let mut p = plan(GuestIo::Capture);
        p.argv.clear();
        assert!(init_script(&p).is_err());
        let mut p = plan(GuestIo::Capture);
        p.env.push(("A=B".into(), "c".into()));
        assert!(init_script(&p).is_err());
    }

    #[test]
    fn cmdline_has_console_root_and_init() {
        let c = kernel_cmdline(Path::new("/tmp/skprof-vm-1-2/init")).unwrap();
        assert_eq!(
            c,
            "console=ttyS0 root=hostroot rootfstype=virtiofs rw quiet panic=-1 no_timer_check \
             tsc=reliable init=/tmp/skprof-vm-1-2/init"
        );
        assert!(kernel_cmdline(Path::new("/tmp/a b/init")).is_err());
    }
}
