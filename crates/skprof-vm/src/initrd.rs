//! A minimal busybox initrd for kernels whose virtio_pci/virtiofs are modules
//! (Debian 6.1 cloud). It insmods those modules, mounts the virtiofs tag
//! `hostroot` and `switch_root`s to the `init=` given on the kernel cmdline.
//!
//! The cpio archive is written here directly (newc format, uncompressed), so
//! building it needs neither `cpio` nor mknod rights for `/dev/console`, and
//! the kernel does not spend emulated cycles decompressing it.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// Modules the guest needs before it can mount its root: the virtio PCI
/// transport and virtiofs. (Network and everything else are modprobed after
/// `switch_root`, from the bind-mounted module tree.)
const ROOT_MODULES: [&str; 2] = ["virtio_pci", "virtiofs"];

/// Where busybox-static installs its binary (merged-/usr or not).
const BUSYBOX_PATHS: [&str; 3] = [
    "/bin/busybox",
    "/usr/bin/busybox",
    "/usr/lib/busybox/busybox",
];

/// The initrd's `/init`. Module paths are filled in at `@MODULES@`.
const INIT_TEMPLATE: &str = r#"#!/bin/busybox sh
# skprof-vm initrd: load virtio/virtiofs modules, mount the host's / (virtiofs
# tag "hostroot") and switch_root to the init= given on the kernel cmdline.
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
    echo "skprof-vm initrd: $*" >/dev/console
    poweroff -f
    sleep 60
}
mount -t proc proc /proc || fail "mount /proc"
for m in @MODULES@; do
    insmod "/modules/$m" || fail "insmod $m"
done
init=
for w in $(cat /proc/cmdline); do
    case "$w" in init=*) init="${w#init=}" ;; esac
done
[ -n "$init" ] || fail "no init= on the kernel cmdline"
mkdir -p /newroot
i=0
until mount -t virtiofs -o rw hostroot /newroot 2>/dev/null; do
    i=$((i + 1))
    [ "$i" -lt 50 ] || fail "mount virtiofs hostroot"
    usleep 100000
done
umount /proc
exec switch_root /newroot "$init"
"#;

/// Build the initrd for the module tree `moddir` (`.../lib/modules/<release>`
/// with modules.dep), or `None` if the root modules are all built in.
pub fn build(moddir: &Path) -> Result<Option<Vec<u8>>> {
    let dep_path = moddir.join("modules.dep");
    let dep =
        fs::read_to_string(&dep_path).with_context(|| format!("read {}", dep_path.display()))?;
    let builtin_path = moddir.join("modules.builtin");
    let builtin = fs::read_to_string(&builtin_path).unwrap_or_default();
    let Some(order) = load_order(&dep, &builtin, &ROOT_MODULES)? else {
        return Ok(None);
    };

    let busybox = find_static_busybox()?;
    let busybox_bin = fs::read(&busybox).with_context(|| format!("read {}", busybox.display()))?;

    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init's stdio before running /init.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox_bin);
    cpio.symlink("bin/sh", "busybox");

    let mut names = Vec::new();
    for rel in &order {
        let (name, data) = read_module(&moddir.join(rel))?;
        cpio.file(&format!("modules/{name}"), 0o644, &data);
        names.push(name);
    }
    let init = INIT_TEMPLATE.replace("@MODULES@", &names.join(" "));
    cpio.file("init", 0o755, init.as_bytes());
    Ok(Some(cpio.finish()))
}

/// Module name as the kernel sees it: file stem without `.ko[.xz]`, with
/// `-` and `_` equivalent.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files (paths relative to the module dir) to insmod, in
/// dependency order, so that `wanted` are all loaded; `None` if every wanted
/// module is built in. `dep` is modules.dep, `builtin` modules.builtin.
pub fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Option<Vec<String>>> {
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let path = path.trim().to_owned();
        let list = rest.split_whitespace().map(str::to_owned).collect();
        deps.insert(module_name(&path), (path, list));
    }
    let by_path: HashMap<&str, &Vec<String>> =
        deps.values().map(|(p, l)| (p.as_str(), l)).collect();

    fn visit(
        path: &str,
        by_path: &HashMap<&str, &Vec<String>>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        if let Some(list) = by_path.get(path) {
            for d in list.iter() {
                visit(d, by_path, seen, out);
            }
        }
        out.push(path.to_owned());
    }

    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in wanted {
        let name = w.replace('-', "_");
        if builtin.contains(&name) {
            continue;
        }
        let Some((path, _)) = deps.get(&name) else {
            bail!("module {w} is neither built in nor in modules.dep");
        };
        visit(path, &by_path, &mut seen, &mut out);
    }
    Ok((!out.is_empty()).then_some(out))
}

/// Read a module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz` (busybox insmod
/// cannot load compressed modules, and the kernel only can if built with
/// CONFIG_MODULE_DECOMPRESS). Returns the uncompressed file name and data.
fn read_module(path: &Path) -> Result<(String, Vec<u8>)> {
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("bad module path {}", path.display()))?;
    let tool = [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")]
        .into_iter()
        .find(|(ext, _)| file.ends_with(ext));
    match tool {
        None => {
            let data = fs::read(path).with_context(|| format!("read {}", path.display()))?;
            Ok((file.to_owned(), data))
        }
        Some((ext, tool)) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("run {tool} to decompress {}", path.display()))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok((file.trim_end_matches(ext).to_owned(), out.stdout))
        }
    }
}

/// The host's busybox, which must be static: the initrd has no libc.
fn find_static_busybox() -> Result<PathBuf> {
    for p in BUSYBOX_PATHS {
        let path = Path::new(p);
        let Ok(data) = fs::read(path) else { continue };
        if is_static_elf(&data) {
            return Ok(path.to_owned());
        }
    }
    bail!("no statically linked busybox found (install busybox-static)")
}

/// The host's busybox, static or not (the guest init runs it on the host's
/// root, libc included), if installed.
pub fn find_busybox() -> Option<PathBuf> {
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// True for an ELF64 little-endian executable without a PT_INTERP header.
fn is_static_elf(data: &[u8]) -> bool {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if data.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let off = phoff + i * usize::from(phentsize);
        u32_at(off).is_some_and(|p_type| p_type != 3 /* PT_INTERP */)
    })
}

/// A writer for the "newc" cpio format the kernel unpacks into its rootfs.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, 2, (0, 0), b"");
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100_000 | perm, 1, (0, 0), data);
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, 1, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020_000 | perm, 1, (major, minor), b"");
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Append the trailer and return the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), b"");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/fuse/fuse.ko:
kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
";

    fn pos(order: &[String], m: &str) -> usize {
        order
            .iter()
            .position(|p| module_name(p) == m)
            .unwrap_or_else(|| panic!("{m} missing from {order:?}"))
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let order = load_order(DEP, "", &ROOT_MODULES).unwrap().unwrap();
        assert_eq!(order.len(), 7, "{order:?}");
        assert!(pos(&order, "virtio") < pos(&order, "virtio_pci"));
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtio_pci"));
        assert!(pos(&order, "virtio_pci_modern_dev") < pos(&order, "virtio_pci"));
        assert!(pos(&order, "fuse") < pos(&order, "virtiofs"));
        assert!(pos(&order, "virtio_ring") < pos(&order, "virtiofs"));

        let net = load_order(DEP, "", &["virtio-net"]).unwrap().unwrap();
        assert_eq!(
            net,
            [
                "kernel/net/core/failover.ko.xz",
                "kernel/drivers/net/net_failover.ko.xz",
                "kernel/drivers/net/virtio_net.ko.xz"
            ]
        );
    }

    #[test]
    fn builtin_modules_need_no_initrd() {
        let builtin = "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/fuse/virtiofs.ko\n";
        assert_eq!(load_order("", builtin, &ROOT_MODULES).unwrap(), None);
        assert!(load_order("", "", &["nope"]).is_err());
    }

    #[test]
    fn cpio_entries_are_aligned_newc() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.char_dev("dev/console", 0o600, 5, 1);
        let data = c.finish();
        assert_eq!(data.len() % 4, 0);
        // Walk the archive back.
        let mut off = 0;
        let mut names = Vec::new();
        while off < data.len() {
            assert_eq!(&data[off..off + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&data[off + 6 + 8 * i..off + 14 + 8 * i]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, rmaj, namesize) = (field(1), field(6), field(9), field(11));
            let name = std::str::from_utf8(&data[off + 110..off + 110 + namesize - 1]).unwrap();
            names.push((name.to_owned(), mode, rmaj));
            off = (off + 110 + namesize).next_multiple_of(4);
            off = (off + size).next_multiple_of(4);
        }
        assert_eq!(off, data.len());
        assert_eq!(
            names,
            [
                ("bin".into(), 0o40755, 0),
                ("init".into(), 0o100755, 0),
                ("dev/console".into(), 0o20600, 5),
                ("TRAILER!!!".into(), 0, 0)
            ]
        );
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        // /bin/sh on any Debian host is dynamic.
        if let Ok(sh) = fs::read("/bin/sh") {
            assert!(!is_static_elf(&sh));
        }
    }
}
