//! The workload's own cgroup v2 and network namespace.
//!
//! The cgroup only holds the two driver sockets of the cgroup programs: a
//! socket belongs to the cgroup its creator was in when it was created
//! (`cgroup_sk_alloc()`), and cgroup/connect4 and cgroup_skb/ingress run
//! for the sockets of the cgroup they are attached to. So the process is
//! moved in just for the creation of those sockets and moved back at once.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};

use super::sys;

/// Prefix of the cgroups the workload creates under the cgroup2 root.
pub const CGROUP_PREFIX: &str = "skprof-workload-";

/// Moving the whole process between cgroups is process-wide state: two
/// workloads set up at once (tests run in parallel threads) must not
/// interleave their moves, or one's sockets land in the other's cgroup.
static PROCESS_MOVE: Mutex<()> = Mutex::new(());

/// Distinguishes the cgroups of several workloads in one process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Mount point of the cgroup v2 hierarchy, from a /proc/self/mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape_mountinfo(p)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = oct.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The process's cgroup v2 path (relative to the hierarchy's root), from a
/// /proc/self/cgroup text: the "0::/path" line.
pub fn cgroup2_path_in(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
}

/// A cgroup v2 created for the workload, removed on drop.
pub struct WorkloadCgroup {
    path: PathBuf,
    /// Where the process was, to move it back to.
    original: PathBuf,
    dir: fs::File,
}

impl WorkloadCgroup {
    /// Creates `<cgroup2 root>/skprof-workload-<pid>-<n>`, first removing
    /// empty ones left by workload processes that were killed.
    pub fn create() -> Result<WorkloadCgroup> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
        let root = cgroup2_mount_in(&mountinfo).context(
            "no cgroup v2 hierarchy is mounted (cgroup/connect4 and cgroup_skb programs need one)",
        )?;
        let own = fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
        let rel = cgroup2_path_in(&own).context("/proc/self/cgroup has no cgroup v2 (0::) line")?;
        let original = root.join(rel.trim_start_matches('/'));

        remove_stale(&root);
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("{CGROUP_PREFIX}{pid}-{n}"));
        fs::create_dir(&path).with_context(|| format!("create cgroup {}", path.display()))?;
        let dir = match fs::File::open(&path) {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_dir(&path);
                return Err(e).with_context(|| format!("open cgroup {}", path.display()));
            }
        };
        Ok(WorkloadCgroup {
            path,
            original,
            dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory fd that cgroup attachments take.
    pub fn fd(&self) -> &fs::File {
        &self.dir
    }

    /// Runs `f` with the whole process inside this cgroup, then moves the
    /// process back to its original cgroup, whatever `f` returned.
    pub fn with_process_inside<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let _serial = PROCESS_MOVE.lock().unwrap_or_else(|p| p.into_inner());
        move_process(&self.path)
            .with_context(|| format!("move the process into cgroup {}", self.path.display()))?;
        let result = f();
        let back = move_process(&self.original).with_context(|| {
            format!(
                "move the process back to cgroup {}",
                self.original.display()
            )
        });
        match (result, back) {
            (Ok(v), Ok(())) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

impl Drop for WorkloadCgroup {
    fn drop(&mut self) {
        // The process left right after creating the driver sockets; make
        // sure anyway (rmdir fails while a task is inside).
        let _serial = PROCESS_MOVE.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(own) = fs::read_to_string("/proc/self/cgroup") {
            if let Some(rel) = cgroup2_path_in(&own) {
                if self.path.ends_with(rel.trim_start_matches('/')) {
                    let _ = move_process(&self.original);
                }
            }
        }
        // Sockets freed just before may still pin the cgroup for an RCU
        // grace period; rmdir of an empty cgroup succeeds regardless, but
        // retry briefly on EBUSY.
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        eprintln!(
            "skprof workload: could not remove cgroup {}",
            self.path.display()
        );
    }
}

fn move_process(cgroup: &Path) -> io::Result<()> {
    fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

/// Removes `skprof-workload-<pid>-*` cgroups whose process is gone (killed
/// before its Drop ran). rmdir only succeeds on an empty cgroup, so a live
/// one is never disturbed.
fn remove_stale(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

/// The workload's own network namespace: its sockets live there, so no
/// other socket can match its tuples and no other traffic reaches them.
pub struct Netns {
    fd: OwnedFd,
}

impl Netns {
    /// Creates a namespace with loopback up. The calling thread is back in
    /// its own namespace when this returns.
    pub fn create() -> Result<Netns> {
        let orig = sys::current_netns().context("open /proc/thread-self/ns/net")?;
        sys::unshare_netns().context("unshare(CLONE_NEWNET)")?;
        let guard = NetnsGuard { orig: Some(orig) };
        let fd = sys::current_netns().context("open the new netns")?;
        sys::set_interface_up("lo").context("set lo up in the workload netns")?;
        guard.leave()?;
        Ok(Netns { fd })
    }

    /// Moves the calling thread into this namespace until the guard is
    /// dropped or left.
    pub fn enter(&self) -> Result<NetnsGuard> {
        let orig = sys::current_netns().context("open /proc/thread-self/ns/net")?;
        sys::setns_net(self.fd.as_fd()).context("setns into the workload netns")?;
        Ok(NetnsGuard { orig: Some(orig) })
    }
}

/// Restores the thread's original network namespace.
pub struct NetnsGuard {
    orig: Option<OwnedFd>,
}

impl NetnsGuard {
    pub fn leave(mut self) -> Result<()> {
        let orig = self.orig.take().expect("guard left once");
        sys::setns_net(orig.as_fd()).context("setns back to the original netns")
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(orig) = self.orig.take() {
            if let Err(e) = sys::setns_net(orig.as_fd()) {
                // Cannot happen with a valid fd; report rather than panic
                // in a destructor (which may run during unwinding).
                eprintln!("skprof workload: cannot return to the original netns: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_in_hybrid_layout() {
        let mi = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw
27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_mount_in(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("25 30 0:23 / /x rw - tmpfs tmpfs rw\n"),
            None
        );
        let esc = "26 25 0:24 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(esc),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn parses_proc_cgroup() {
        assert_eq!(
            cgroup2_path_in("4:memory:/x\n0::/user.slice/session-1.scope\n"),
            Some("/user.slice/session-1.scope".to_string())
        );
        assert_eq!(cgroup2_path_in("0::/\n"), Some("/".to_string()));
        assert_eq!(cgroup2_path_in("1:cpu:/\n"), None);
    }
}
