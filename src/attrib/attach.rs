//! Where a traced program is attached, from BPF link info, and the names
//! shown for program and attach types.
//!
//! Only link-based attachments are visible this way (`BPF_LINK_CREATE`:
//! cgroup links, XDP links, TCX (6.6+), netkit, netns, sockmap). A program
//! attached through a legacy API (tc/XDP over netlink, `BPF_PROG_ATTACH` on
//! a cgroup) or only run through `BPF_PROG_TEST_RUN` has no link and is
//! shown as [`NOT_BY_LINK`].
#![allow(unsafe_code)] // libbpf's C name tables, for the type names

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use libbpf_rs::query::{LinkInfo, LinkTypeInfo};
use libbpf_rs::{ProgramAttachType, ProgramType};
use serde::Serialize;

/// The description of a program no BPF link points at.
pub const NOT_BY_LINK: &str =
    "not attached by link (legacy netlink/cgroup attach, or BPF_PROG_TEST_RUN only)";

/// One BPF link running a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attachment {
    /// tc through TCX (6.6+).
    Tcx {
        link_id: u32,
        ifindex: u32,
        ifname: Option<String>,
        /// "ingress" or "egress".
        direction: String,
    },
    Xdp {
        link_id: u32,
        ifindex: u32,
        ifname: Option<String>,
    },
    Netkit {
        link_id: u32,
        ifindex: u32,
        ifname: Option<String>,
        attach_type: String,
    },
    Cgroup {
        link_id: u32,
        cgroup_id: u64,
        /// Found by walking the cgroup v2 hierarchy (best effort).
        path: Option<String>,
        /// e.g. "cgroup_inet4_connect", "cgroup_inet_ingress".
        attach_type: String,
    },
    Netns {
        link_id: u32,
        /// Inode number of the network namespace (`ls -L -i /proc/PID/ns/net`).
        netns_ino: u32,
        attach_type: String,
    },
    Sockmap {
        link_id: u32,
        map_id: u32,
        attach_type: String,
    },
    Netfilter {
        link_id: u32,
        pf: u32,
        hooknum: u32,
        priority: i32,
    },
    Other {
        link_id: u32,
        link_type: String,
    },
}

fn on_if(f: &mut fmt::Formatter<'_>, ifindex: u32, ifname: &Option<String>) -> fmt::Result {
    match ifname {
        Some(n) => write!(f, "{n} (ifindex {ifindex})"),
        None => write!(f, "ifindex {ifindex}"),
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attachment::Tcx {
                ifindex,
                ifname,
                direction,
                ..
            } => {
                write!(f, "tcx {direction} on ")?;
                on_if(f, *ifindex, ifname)
            }
            Attachment::Xdp {
                ifindex, ifname, ..
            } => {
                f.write_str("xdp on ")?;
                on_if(f, *ifindex, ifname)
            }
            Attachment::Netkit {
                ifindex,
                ifname,
                attach_type,
                ..
            } => {
                write!(f, "{attach_type} on ")?;
                on_if(f, *ifindex, ifname)
            }
            Attachment::Cgroup {
                cgroup_id,
                path,
                attach_type,
                ..
            } => match path {
                Some(p) => write!(f, "{attach_type} on cgroup {p}"),
                None => write!(f, "{attach_type} on cgroup id {cgroup_id}"),
            },
            Attachment::Netns {
                netns_ino,
                attach_type,
                ..
            } => write!(f, "{attach_type} on netns {netns_ino}"),
            Attachment::Sockmap {
                map_id,
                attach_type,
                ..
            } => write!(f, "{attach_type} on sockmap map {map_id}"),
            Attachment::Netfilter {
                pf,
                hooknum,
                priority,
                ..
            } => write!(f, "netfilter pf {pf} hook {hooknum} priority {priority}"),
            Attachment::Other { link_id, link_type } => {
                write!(f, "{link_type} link {link_id}")
            }
        }
    }
}

/// One line for all of a program's attachments.
pub fn describe(attachments: &[Attachment]) -> String {
    if attachments.is_empty() {
        return NOT_BY_LINK.to_string();
    }
    attachments
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `CgroupInet4Connect` → `cgroup_inet4_connect` (libbpf's spelling).
pub fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub fn attach_type_name(t: &ProgramAttachType) -> String {
    snake_case(&format!("{t:?}"))
}

/// libbpf's names for program types (`libbpf_bpf_prog_type_str()`,
/// `bpftool prog` output), indexed by `enum bpf_prog_type`.
const PROG_TYPE_NAMES: [&str; 33] = [
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
];

pub fn prog_type_name(t: ProgramType) -> String {
    if t == ProgramType::Unknown {
        return "unknown".into();
    }
    PROG_TYPE_NAMES
        .get(t as usize)
        .map_or_else(|| format!("type {}", t as u32), |s| (*s).to_string())
}

/// Turns ids into names for descriptions: interfaces and cgroups.
#[derive(Debug, Default)]
pub struct Resolver {
    cgroup_root: Option<PathBuf>,
    cgroups: HashMap<u64, Option<String>>,
}

/// Cgroup directories visited at most per lookup: bounds the cost of a
/// lookup on a machine with a huge hierarchy.
const CGROUP_WALK_LIMIT: usize = 100_000;
const CGROUP_CACHE_LIMIT: usize = 4096;

impl Resolver {
    pub fn new() -> Resolver {
        let root = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        Resolver {
            cgroup_root: root,
            cgroups: HashMap::new(),
        }
    }

    /// The interface's name in our network namespace. An ifindex from link
    /// info is the device's in its own namespace: when the device lives in
    /// another one the name may be missing or another device's.
    pub fn ifname(&self, ifindex: u32) -> Option<String> {
        ifname_in(Path::new("/sys/class/net"), ifindex)
    }

    /// The cgroup's path, found by its id: on cgroup v2 a cgroup's id is
    /// its kernfs node id, which is the directory's inode number on 64-bit
    /// kernels (kernfs_id_ino(), include/linux/kernfs.h).
    pub fn cgroup_path(&mut self, cgroup_id: u64) -> Option<String> {
        if let Some(p) = self.cgroups.get(&cgroup_id) {
            return p.clone();
        }
        let found = self
            .cgroup_root
            .as_deref()
            .and_then(|root| find_cgroup(root, cgroup_id, CGROUP_WALK_LIMIT))
            .map(|p| p.display().to_string());
        if self.cgroups.len() >= CGROUP_CACHE_LIMIT {
            self.cgroups.clear();
        }
        self.cgroups.insert(cgroup_id, found.clone());
        found
    }

    /// The attachment a link describes, and the program it runs. Tracing,
    /// iterator, perf-event and similar links are no attach point of a
    /// program that calls the lookup helpers: `None`.
    pub fn attachment(&mut self, link: &LinkInfo) -> Option<(u32, Attachment)> {
        let link_id = link.id;
        let a = match &link.info {
            LinkTypeInfo::Tcx(t) => Attachment::Tcx {
                link_id,
                ifindex: t.ifindex,
                ifname: self.ifname(t.ifindex),
                direction: match t.attach_type {
                    ProgramAttachType::TcxIngress => "ingress".into(),
                    ProgramAttachType::TcxEgress => "egress".into(),
                    ref other => attach_type_name(other),
                },
            },
            LinkTypeInfo::Xdp(x) => Attachment::Xdp {
                link_id,
                ifindex: x.ifindex,
                ifname: self.ifname(x.ifindex),
            },
            LinkTypeInfo::Netkit(n) => Attachment::Netkit {
                link_id,
                ifindex: n.ifindex,
                ifname: self.ifname(n.ifindex),
                attach_type: attach_type_name(&n.attach_type),
            },
            LinkTypeInfo::Cgroup(c) => Attachment::Cgroup {
                link_id,
                cgroup_id: c.cgroup_id,
                path: self.cgroup_path(c.cgroup_id),
                attach_type: attach_type_name(&c.attach_type),
            },
            LinkTypeInfo::NetNs(n) => Attachment::Netns {
                link_id,
                netns_ino: n.ino,
                attach_type: attach_type_name(&n.attach_type),
            },
            LinkTypeInfo::SockMap(s) => Attachment::Sockmap {
                link_id,
                map_id: s.map_id,
                attach_type: attach_type_name(&s.attach_type),
            },
            LinkTypeInfo::Netfilter(n) => Attachment::Netfilter {
                link_id,
                pf: n.protocol_family,
                hooknum: n.hooknum,
                priority: n.priority,
            },
            LinkTypeInfo::Tracing(_)
            | LinkTypeInfo::RawTracepoint(_)
            | LinkTypeInfo::Iter(_)
            | LinkTypeInfo::StructOps(_)
            | LinkTypeInfo::KprobeMulti(_)
            | LinkTypeInfo::UprobeMulti(_)
            | LinkTypeInfo::PerfEvent(_) => return None,
            LinkTypeInfo::Unknown => Attachment::Other {
                link_id,
                link_type: "unknown".into(),
            },
        };
        Some((link.prog_id, a))
    }
}

/// The cgroup v2 mount point, from the text of /proc/self/mountinfo.
/// Parsed here rather than with procfs, whose `MountInfo` (0.18) keeps the
/// mount point's `\ooo` escapes.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mnt = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mnt)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push((d(1) * 64 + d(2) * 8 + d(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory under `root` (itself included) whose inode is `ino`,
/// breadth first, visiting at most `limit` directories.
pub fn find_cgroup(root: &Path, ino: u64, limit: usize) -> Option<PathBuf> {
    let mut queue = std::collections::VecDeque::from([root.to_path_buf()]);
    let mut visited = 0;
    while let Some(dir) = queue.pop_front() {
        visited += 1;
        if visited > limit {
            return None;
        }
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if meta.ino() == ino {
            return Some(dir);
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                queue.push_back(e.path());
            }
        }
    }
    None
}

/// The name of the interface with this ifindex under a /sys/class/net.
pub fn ifname_in(class_net: &Path, ifindex: u32) -> Option<String> {
    fs::read_dir(class_net).ok()?.flatten().find_map(|e| {
        let idx = fs::read_to_string(e.path().join("ifindex")).ok()?;
        (idx.trim().parse::<u32>().ok()? == ifindex)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_types_use_libbpf_spelling() {
        assert_eq!(
            attach_type_name(&ProgramAttachType::CgroupInet4Connect),
            "cgroup_inet4_connect"
        );
        assert_eq!(
            attach_type_name(&ProgramAttachType::CgroupInetIngress),
            "cgroup_inet_ingress"
        );
        assert_eq!(attach_type_name(&ProgramAttachType::SkLookup), "sk_lookup");
        assert_eq!(snake_case("TcxIngress"), "tcx_ingress");
    }

    #[test]
    fn prog_type_names_match_libbpf() {
        for v in 0..PROG_TYPE_NAMES.len() as u32 {
            let t = ProgramType::from(v);
            if t == ProgramType::Unknown {
                continue;
            }
            // SAFETY: libbpf_bpf_prog_type_str() takes any value and returns
            // NULL or a pointer to a static NUL-terminated string.
            let ptr = unsafe { libbpf_rs::libbpf_sys::libbpf_bpf_prog_type_str(v) };
            assert!(!ptr.is_null(), "libbpf knows type {v}");
            // SAFETY: non-null, static and NUL-terminated (above).
            let libbpf = unsafe { std::ffi::CStr::from_ptr(ptr) }.to_str().unwrap();
            assert_eq!(prog_type_name(t), libbpf, "type {v}");
        }
        assert_eq!(prog_type_name(ProgramType::SchedCls), "sched_cls");
        assert_eq!(
            prog_type_name(ProgramType::CgroupSockAddr),
            "cgroup_sock_addr"
        );
        assert_eq!(prog_type_name(ProgramType::Unknown), "unknown");
    }

    #[test]
    fn descriptions() {
        assert_eq!(describe(&[]), NOT_BY_LINK);
        let cg = Attachment::Cgroup {
            link_id: 3,
            cgroup_id: 4242,
            path: Some("/sys/fs/cgroup/skprof-workload-1-0".into()),
            attach_type: "cgroup_inet4_connect".into(),
        };
        assert_eq!(
            cg.to_string(),
            "cgroup_inet4_connect on cgroup /sys/fs/cgroup/skprof-workload-1-0"
        );
        let cg_unknown = Attachment::Cgroup {
            link_id: 3,
            cgroup_id: 4242,
            path: None,
            attach_type: "cgroup_inet_ingress".into(),
        };
        assert_eq!(
            cg_unknown.to_string(),
            "cgroup_inet_ingress on cgroup id 4242"
        );
        let tcx = Attachment::Tcx {
            link_id: 9,
            ifindex: 2,
            ifname: Some("eth0".into()),
            direction: "ingress".into(),
        };
        assert_eq!(tcx.to_string(), "tcx ingress on eth0 (ifindex 2)");
        let xdp = Attachment::Xdp {
            link_id: 10,
            ifindex: 7,
            ifname: None,
        };
        assert_eq!(xdp.to_string(), "xdp on ifindex 7");
        let ns = Attachment::Netns {
            link_id: 11,
            netns_ino: 4026531840,
            attach_type: "sk_lookup".into(),
        };
        assert_eq!(ns.to_string(), "sk_lookup on netns 4026531840");
        assert_eq!(
            describe(&[tcx, xdp]),
            "tcx ingress on eth0 (ifindex 2); xdp on ifindex 7"
        );
        let json = serde_json::to_value(&cg).unwrap();
        assert_eq!(json["kind"], "cgroup");
        assert_eq!(json["cgroup_id"], 4242);
        assert_eq!(json["attach_type"], "cgroup_inet4_connect");
    }

    #[test]
    fn finds_cgroup2_mount() {
        let m = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                 26 25 0:24 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let esc = "26 25 0:24 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(esc), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(
            cgroup2_mount("25 30 0:23 / / rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    #[test]
    fn finds_a_directory_by_inode() {
        let base = std::env::temp_dir().join(format!("skprof-attrib-cg-{}", std::process::id()));
        let deep = base.join("a/b/c");
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(base.join("d")).unwrap();
        let ino = fs::metadata(&deep).unwrap().ino();
        assert_eq!(find_cgroup(&base, ino, 100), Some(deep.clone()));
        let root_ino = fs::metadata(&base).unwrap().ino();
        assert_eq!(find_cgroup(&base, root_ino, 100), Some(base.clone()));
        // Over the visit limit: not found.
        assert_eq!(find_cgroup(&base, ino, 2), None);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn finds_an_interface_by_index() {
        let base = std::env::temp_dir().join(format!("skprof-attrib-net-{}", std::process::id()));
        for (name, idx) in [("lo", 1), ("veth0", 5)] {
            fs::create_dir_all(base.join(name)).unwrap();
            fs::write(base.join(name).join("ifindex"), format!("{idx}\n")).unwrap();
        }
        assert_eq!(ifname_in(&base, 5).as_deref(), Some("veth0"));
        assert_eq!(ifname_in(&base, 9), None);
        fs::remove_dir_all(&base).unwrap();
    }
}
