//! Debian kernel selection, download and the on-disk kernel cache.
//!
//! The Debian mirror carries several point releases of a series at once and
//! drops old ones, so we never pin an exact package: at fetch time we pick the
//! newest package of the series that `apt-cache` offers. Once a kernel is
//! unpacked in the cache, runs use the newest cached one and do no apt work.
//!
//! Cache layout (`$SKPROF_CACHE_DIR`, else `$HOME/.cache/skprof`):
//!
//! ```text
//! kernels/.lock                      flock(2) serialising downloads
//! kernels/<package>/boot/vmlinuz-<release>
//! kernels/<package>/lib/modules/<release>/   (with modules.dep from depmod)
//! kernels/<package>/skprof-initrd.cpio       (only if virtiofs is modular)
//! kernels/<package>/skprof-vmlinux           (uncompressed, for PVH boot)
//! kernels/<package>/.skprof-ready            (written last: entry complete)
//! ```
#![allow(unsafe_code)] // flock, which std does not wrap before Rust 1.89

use std::{
    cmp::Ordering,
    fmt,
    fs::{self, File},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
};

use anyhow::{bail, Context, Result};

use super::{initrd, vmlinux};

/// Marker file written once a cache entry is fully unpacked and prepared.
const READY_MARKER: &str = ".skprof-ready";
/// Name of the initrd built into a cache entry for kernels that need one.
pub const INITRD_NAME: &str = "skprof-initrd.cpio";
/// Name of the uncompressed kernel extracted into a cache entry.
pub const VMLINUX_NAME: &str = "skprof-vmlinux";

/// A Debian kernel series we know how to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    /// `linux-image-6.1.0-N-cloud-amd64` (bookworm). virtio_pci and virtiofs
    /// are modules, so it boots through a small busybox initrd.
    V6_1,
    /// `linux-image-6.12.N+debNN-cloud-amd64` (bookworm security/updates).
    /// virtiofs is built in: boots with no initrd.
    V6_12,
}

impl Kernel {
    /// All known series, oldest first.
    pub const ALL: [Kernel; 2] = [Kernel::V6_1, Kernel::V6_12];

    /// The series as written on the command line ("6.1", "6.12").
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::V6_1 => "6.1",
            Kernel::V6_12 => "6.12",
        }
    }

    /// POSIX extended regex for `apt-cache search --names-only`.
    pub fn apt_regex(self) -> &'static str {
        match self {
            Kernel::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
            Kernel::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-cloud-amd64$",
        }
    }

    /// The version part of a package name of this series
    /// (`linux-image-6.1.0-56-cloud-amd64` -> `6.1.0-56`), or `None` if the
    /// name does not belong to the series (e.g. `-dbg`, `-unsigned`, `-rt`).
    /// This is the same language as [`Kernel::apt_regex`], checked by hand so
    /// that we don't trust apt's output blindly.
    pub fn package_version(self, package: &str) -> Option<&str> {
        let version = package
            .strip_prefix("linux-image-")?
            .strip_suffix("-cloud-amd64")?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let ok = match self {
            Kernel::V6_1 => version.strip_prefix("6.1.0-").is_some_and(all_digits),
            Kernel::V6_12 => version
                .strip_prefix("6.12.")
                .and_then(|rest| rest.split_once("+deb"))
                .is_some_and(|(n, d)| all_digits(n) && all_digits(d)),
        };
        ok.then_some(version)
    }

    /// The series a package name belongs to, if any.
    pub fn of_package(package: &str) -> Option<Kernel> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.package_version(package).is_some())
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kernel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "6.1" => Ok(Kernel::V6_1),
            "6.12" => Ok(Kernel::V6_12),
            _ => bail!("unknown kernel series {s:?} (known: 6.1, 6.12)"),
        }
    }
}

/// Compare two Debian version strings the way dpkg does (`verrevcmp`):
/// non-digit runs compare character-wise with `~` sorting before everything
/// (even the end of the string) and letters before other characters; digit
/// runs compare numerically. So `6.12.99` < `6.12.100` and `6.1.0-9` <
/// `6.1.0-56`, which a lexical comparison gets wrong.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit prefix.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ca, cb) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ca != cb {
                return ca.cmp(&cb);
            }
            i += 1;
            j += 1;
        }
        // Digit run: skip leading zeros, then longer run wins, then lexical.
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        let (da, db) = (&a[si..i], &b[sj..j]);
        match da.len().cmp(&db.len()).then_with(|| da.cmp(db)) {
            Ordering::Equal => {}
            other => return other,
        }
    }
    Ordering::Equal
}

/// The newest package of `kernel` in `apt-cache search` output
/// (`name - description` lines, in no particular order).
pub fn newest_package(kernel: Kernel, apt_cache_output: &str) -> Option<String> {
    apt_cache_output
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| Some((kernel.package_version(name)?, name)))
        .max_by(|(va, _), (vb, _)| compare_versions(va, vb))
        .map(|(_, name)| name.to_owned())
}

/// A bootable kernel: image, optional initrd and optional module tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    /// Human-readable name used in messages (`uname -r` for Debian kernels).
    pub release: String,
    /// What qemu's `-kernel` gets: a bzImage, or for cached Debian kernels
    /// the uncompressed ELF vmlinux (PVH boot, ~1 s faster under TCG).
    pub vmlinuz: PathBuf,
    /// initrd to pass with `-initrd`; it must mount the virtiofs tag
    /// `hostroot` and `switch_root` to the `init=` of the kernel cmdline.
    pub initrd: Option<PathBuf>,
    /// A `lib/modules` directory (containing `<release>/`) that the guest
    /// bind-mounts over `/lib/modules`, so modprobe works in the guest
    /// without installing the kernel on the host.
    pub modules: Option<PathBuf>,
}

impl KernelImage {
    /// A kernel image given by path (`--kernel PATH`). If it sits in an
    /// unpacked package or root tree (`<root>/boot/vmlinuz-<release>` next to
    /// `<root>/lib/modules/<release>`), that module tree is used too.
    pub fn from_path(vmlinuz: &Path, initrd: Option<&Path>) -> Result<KernelImage> {
        if !vmlinuz.is_file() {
            bail!("kernel image {} not found", vmlinuz.display());
        }
        let vmlinuz = vmlinuz
            .canonicalize()
            .with_context(|| format!("resolve {}", vmlinuz.display()))?;
        let initrd = initrd
            .map(|p| {
                p.canonicalize()
                    .with_context(|| format!("initrd {}", p.display()))
            })
            .transpose()?;
        let file_name = vmlinuz.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let release = file_name.strip_prefix("vmlinuz-").map(str::to_owned);
        let modules = release.as_deref().and_then(|rel| {
            let root = vmlinuz.parent()?.parent()?;
            ["lib/modules", "usr/lib/modules"]
                .iter()
                .map(|m| root.join(m))
                .find(|m| m.join(rel).is_dir())
        });
        Ok(KernelImage {
            release: release.unwrap_or_else(|| file_name.to_owned()),
            vmlinuz,
            initrd,
            modules,
        })
    }
}

/// A prepared kernel package in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKernel {
    pub series: Kernel,
    /// Debian package name, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The unpacked package root.
    pub dir: PathBuf,
    pub image: KernelImage,
}

/// The kernel cache directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// `$SKPROF_CACHE_DIR`, else `$HOME/.cache/skprof`.
    pub fn from_env() -> Result<Cache> {
        if let Some(dir) = std::env::var_os("SKPROF_CACHE_DIR").filter(|d| !d.is_empty()) {
            return Ok(Cache::new(dir));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("neither SKPROF_CACHE_DIR nor HOME is set")?;
        Ok(Cache::new(PathBuf::from(home).join(".cache/skprof")))
    }

    /// A cache rooted at `root`. A relative root is made absolute: the guest
    /// bind-mounts module trees from it by path.
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where unpacked kernels live.
    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    /// All complete cache entries, sorted by series then version (newest
    /// last). A missing cache directory is just an empty cache.
    pub fn list(&self) -> Result<Vec<CachedKernel>> {
        let dir = self.kernels_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("read {}", dir.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Some(series) = Kernel::of_package(&name) else {
                continue;
            };
            let path = entry.path();
            if !path.join(READY_MARKER).is_file() {
                continue;
            }
            out.push(cached_entry(series, &name, &path));
        }
        out.sort_by(|a, b| {
            a.series.cmp(&b.series).then_with(|| {
                compare_versions(
                    a.series.package_version(&a.package).unwrap_or(""),
                    b.series.package_version(&b.package).unwrap_or(""),
                )
            })
        });
        Ok(out)
    }

    /// The newest cached kernel of `series`, if any.
    pub fn newest_cached(&self, series: Kernel) -> Result<Option<CachedKernel>> {
        Ok(self.list()?.into_iter().rev().find(|k| k.series == series))
    }

    /// The kernel to boot for `series`: the newest cached one (no apt work at
    /// all), else the newest one apt offers, downloaded and prepared.
    pub fn resolve(&self, series: Kernel) -> Result<CachedKernel> {
        if let Some(k) = self.newest_cached(series)? {
            return Ok(k);
        }
        self.fetch(series, false)
    }

    /// Make sure the newest package of `series` that apt offers is in the
    /// cache (download and prepare it if not). With `update`, run
    /// `apt-get update` first; without, only if apt knows no package.
    pub fn fetch(&self, series: Kernel, update: bool) -> Result<CachedKernel> {
        let kdir = self.kernels_dir();
        fs::create_dir_all(&kdir).with_context(|| format!("create {}", kdir.display()))?;
        // Serialise fetches (parallel tests, several users of one cache).
        let _lock = FileLock::exclusive(&kdir.join(".lock"))?;
        remove_stale_partials(&kdir);

        let mut updated = false;
        if update {
            apt_update()?;
            updated = true;
        }
        let package = match newest_apt_package(series)? {
            Some(p) => p,
            None if !updated => {
                apt_update()?;
                updated = true;
                newest_apt_package(series)?.with_context(|| {
                    format!("apt knows no package matching {}", series.apt_regex())
                })?
            }
            None => bail!("apt knows no package matching {}", series.apt_regex()),
        };
        let dest = kdir.join(&package);
        if dest.join(READY_MARKER).is_file() {
            return Ok(cached_entry(series, &package, &dest));
        }

        let pid = std::process::id();
        let dl = kdir.join(format!(".download-{pid}"));
        let unpack = kdir.join(format!(".unpack-{package}-{pid}"));
        let result = (|| -> Result<()> {
            fs::create_dir_all(&dl).with_context(|| format!("create {}", dl.display()))?;
            let deb = match apt_download(&package, &dl) {
                Ok(deb) => deb,
                // The lists may be stale (the mirror dropped that version).
                Err(_) if !updated => {
                    apt_update()?;
                    apt_download(&package, &dl)?
                }
                Err(e) => return Err(e),
            };
            prepare_package(&deb, &package, &unpack)
                .with_context(|| format!("prepare {package}"))?;
            if dest.exists() {
                fs::remove_dir_all(&dest)
                    .with_context(|| format!("remove incomplete {}", dest.display()))?;
            }
            fs::rename(&unpack, &dest)
                .with_context(|| format!("rename {} to {}", unpack.display(), dest.display()))?;
            Ok(())
        })();
        // Best effort: the download dir and any half-built tree are garbage.
        let _ = fs::remove_dir_all(&dl);
        let _ = fs::remove_dir_all(&unpack);
        result?;
        Ok(cached_entry(series, &package, &dest))
    }
}

fn cached_entry(series: Kernel, package: &str, dir: &Path) -> CachedKernel {
    let release = package.strip_prefix("linux-image-").unwrap_or(package);
    let initrd = dir.join(INITRD_NAME);
    let vmlinux = dir.join(VMLINUX_NAME);
    let vmlinuz = if vmlinux.is_file() {
        vmlinux
    } else {
        dir.join("boot").join(format!("vmlinuz-{release}"))
    };
    let modules = modules_root(dir);
    CachedKernel {
        series,
        package: package.to_owned(),
        dir: dir.to_owned(),
        image: KernelImage {
            release: release.to_owned(),
            vmlinuz,
            initrd: initrd.is_file().then_some(initrd),
            modules,
        },
    }
}

/// `lib/modules` of an unpacked package (bookworm packages still ship
/// `/lib/modules`; newer ones may use `/usr/lib/modules`).
fn modules_root(dir: &Path) -> Option<PathBuf> {
    ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| dir.join(m))
        .find(|m| m.is_dir())
}

/// Unpack `deb` into `unpack`, generate modules.dep (Debian runs depmod in
/// the package's postinst, so the .deb has none) and build the initrd if the
/// kernel needs one. Writes the ready marker last.
fn prepare_package(deb: &Path, package: &str, unpack: &Path) -> Result<()> {
    let release = package.strip_prefix("linux-image-").unwrap_or(package);
    run_cmd(
        Command::new("dpkg-deb").arg("-x").arg(deb).arg(unpack),
        &format!("unpack {package}"),
    )?;
    let vmlinuz = unpack.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no boot/vmlinuz-{release}");
    }
    let modules = modules_root(unpack).with_context(|| format!("{package} has no lib/modules"))?;
    // depmod -b BASE wants BASE/lib/modules/<release>.
    let base = modules
        .parent()
        .and_then(Path::parent)
        .context("module tree has no base directory")?;
    run_cmd(
        Command::new("depmod").arg("-b").arg(base).arg(release),
        &format!("depmod {release}"),
    )?;
    if let Some(cpio) = initrd::build(&modules.join(release))
        .with_context(|| format!("build initrd for {release}"))?
    {
        let path = unpack.join(INITRD_NAME);
        fs::write(&path, cpio).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(elf) = vmlinux::extract_pvh(&vmlinuz, unpack)
        .with_context(|| format!("extract vmlinux from {}", vmlinuz.display()))?
    {
        let path = unpack.join(VMLINUX_NAME);
        fs::write(&path, elf).with_context(|| format!("write {}", path.display()))?;
    }
    let marker = unpack.join(READY_MARKER);
    fs::write(&marker, format!("{package}\n"))
        .with_context(|| format!("write {}", marker.display()))
}

/// Remove half-done downloads/unpacks from interrupted fetches (we hold the
/// lock, so nobody else is working on them).
fn remove_stale_partials(kdir: &Path) {
    let Ok(entries) = fs::read_dir(kdir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".download-") || name.starts_with(".unpack-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn newest_apt_package(series: Kernel) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only", series.apt_regex()])
        .output()
        .context("run apt-cache search")?;
    if !out.status.success() {
        bail!(
            "apt-cache search failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(newest_package(
        series,
        &String::from_utf8_lossy(&out.stdout),
    ))
}

fn apt_update() -> Result<()> {
    run_cmd(
        Command::new("apt-get").args(["-q", "update"]),
        "apt-get update",
    )
}

/// `apt-get download` `package` into `dir`; returns the .deb path.
fn apt_download(package: &str, dir: &Path) -> Result<PathBuf> {
    let step = format!("download {package}");
    run_cmd(
        Command::new("apt-get")
            .args(["-q", "download", package])
            .current_dir(dir),
        &step,
    )?;
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .with_context(|| format!("{step}: no .deb in {}", dir.display()))
}

/// Run a command to completion; on failure the error names `step` and
/// carries the tail of its output.
fn run_cmd(cmd: &mut Command, step: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{step}: cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        if text.trim().is_empty() {
            text = String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let tail: Vec<&str> = text.trim().lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{step}: {} ({})", tail.join(" / "), out.status);
    }
    Ok(())
}

/// An exclusive `flock(2)` held until drop.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open lock {}", path.display()))?;
        // SAFETY: flock on a valid open fd; blocks until we own the lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("lock {}", path.display()));
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: valid fd; closing it would release the lock anyway.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        use Ordering::*;
        assert_eq!(compare_versions("6.12.99+deb12", "6.12.100+deb12"), Less);
        assert_eq!(
            compare_versions("6.12.117+deb12", "6.12.100+deb12"),
            Greater
        );
        assert_eq!(compare_versions("6.1.0-9", "6.1.0-56"), Less);
        assert_eq!(compare_versions("6.1.0-56", "6.1.0-56"), Equal);
        assert_eq!(compare_versions("6.1.0-056", "6.1.0-56"), Equal);
        assert_eq!(compare_versions("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_versions("1.0", "1.0a"), Less);
        assert_eq!(compare_versions("1.0a", "1.0+"), Less);
        assert_eq!(compare_versions("1.0", "1.0.1"), Less);
        assert_eq!(compare_versions("6.12.117+deb12", "6.12.117+deb13"), Less);
    }

    const APT_61: &str = "\
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-9-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-cloud-amd64-dbg - Debug symbols for linux-image-6.1.0-56-cloud-amd64
linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-100-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.1.0-53-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
";

    const APT_612: &str = "\
linux-image-6.12-cloud-amd64 - Linux for x86-64 cloud (meta-package)
linux-image-6.12.99+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64-dbg - Debug symbols
linux-image-6.12.100+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.117+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-6.12.999+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.115+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
";

    #[test]
    fn newest_package_picks_numeric_max_of_series() {
        assert_eq!(
            newest_package(Kernel::V6_1, APT_61).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            newest_package(Kernel::V6_12, APT_612).as_deref(),
            Some("linux-image-6.12.117+deb12-cloud-amd64")
        );
        // Series don't leak into each other.
        assert_eq!(newest_package(Kernel::V6_12, APT_61), None);
        assert_eq!(newest_package(Kernel::V6_1, APT_612), None);
        assert_eq!(newest_package(Kernel::V6_1, ""), None);
    }

    #[test]
    fn package_names_are_validated() {
        assert_eq!(
            Kernel::V6_1.package_version("linux-image-6.1.0-56-cloud-amd64"),
            Some("6.1.0-56")
        );
        assert_eq!(
            Kernel::V6_12.package_version("linux-image-6.12.117+deb12-cloud-amd64"),
            Some("6.12.117+deb12")
        );
        for bad in [
            "linux-image-6.1.0-56-amd64",
            "linux-image-6.1.0--cloud-amd64",
            "linux-image-6.1.0-5x-cloud-amd64",
            "linux-image-6.12-cloud-amd64",
            "linux-image-6.12.117-cloud-amd64",
            "linux-image-6.12.117+deb-cloud-amd64",
        ] {
            assert_eq!(Kernel::of_package(bad), None, "{bad}");
        }
        assert_eq!(
            Kernel::of_package("linux-image-6.12.117+deb12-cloud-amd64"),
            Some(Kernel::V6_12)
        );
    }

    #[test]
    fn series_parse_round_trips() {
        for k in Kernel::ALL {
            assert_eq!(k.as_str().parse::<Kernel>().ok(), Some(k));
        }
        assert!("6.2".parse::<Kernel>().is_err());
    }

    #[test]
    fn cache_lists_only_ready_entries_newest_last() {
        let root = std::env::temp_dir().join(format!("skprof-cache-test-{}", std::process::id()));
        let kdir = root.join("kernels");
        for (pkg, ready) in [
            ("linux-image-6.1.0-9-cloud-amd64", true),
            ("linux-image-6.1.0-56-cloud-amd64", true),
            ("linux-image-6.1.0-57-cloud-amd64", false),
            ("linux-image-6.12.99+deb12-cloud-amd64", true),
            ("not-a-kernel", true),
        ] {
            let d = kdir.join(pkg);
            fs::create_dir_all(d.join("lib/modules")).unwrap();
            if ready {
                fs::write(d.join(READY_MARKER), "").unwrap();
            }
        }
        let cache = Cache::new(&root);
        let list = cache.list().unwrap();
        let names: Vec<&str> = list.iter().map(|k| k.package.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-6.1.0-9-cloud-amd64",
                "linux-image-6.1.0-56-cloud-amd64",
                "linux-image-6.12.99+deb12-cloud-amd64"
            ]
        );
        let newest = cache.newest_cached(Kernel::V6_1).unwrap().unwrap();
        assert_eq!(newest.image.release, "6.1.0-56-cloud-amd64");
        assert_eq!(
            newest.image.vmlinuz,
            kdir.join("linux-image-6.1.0-56-cloud-amd64/boot/vmlinuz-6.1.0-56-cloud-amd64")
        );
        assert_eq!(
            newest.image.modules,
            Some(kdir.join("linux-image-6.1.0-56-cloud-amd64/lib/modules"))
        );
        assert_eq!(newest.image.initrd, None);
        fs::remove_dir_all(&root).unwrap();
    }
}
