//! Extract the uncompressed kernel from a bzImage, for PVH boot.
//!
//! Under TCG the bzImage's own decompressor is slow: it took ~1 s of every
//! 6.12 boot (zstd). qemu can instead load the uncompressed ELF `vmlinux`
//! directly through its PVH entry point (CONFIG_PVH, set in Debian's
//! kernels), so we decompress once, at cache time, with the host's tools.
//! This is only an optimisation: when it is not possible (no PVH note, no
//! decompressor installed) the bzImage is booted as usual.

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// The compressed payload of a bzImage and its uncompressed size.
fn payload(bz: &[u8]) -> Result<(&[u8], usize)> {
    let u16_at = |o: usize| bz.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        bz.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // Boot protocol header: "HdrS" at 0x202, version at 0x206; payload
    // fields since 2.08.
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage");
    }
    if u16_at(0x206).unwrap_or(0) < 0x208 {
        bail!("boot protocol too old for payload fields");
    }
    let setup_sects = match bz.get(0x1f1) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => bail!("truncated bzImage"),
    };
    let pm_start = (setup_sects + 1) * 512;
    let (Some(off), Some(len)) = (u32_at(0x248), u32_at(0x24c)) else {
        bail!("truncated bzImage");
    };
    let start = pm_start + off as usize;
    let data = bz
        .get(start..start + len as usize)
        .context("payload outside the bzImage")?;
    // The kernel build appends the uncompressed size (gzip has it anyway).
    let size = data
        .len()
        .checked_sub(4)
        .and_then(|i| u32_at_slice(&data[i..]))
        .context("payload too short")?;
    Ok((data, size as usize))
}

fn u32_at_slice(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(0..4)?.try_into().ok()?))
}

/// (tool, strip the appended size) for a payload's compression format.
fn decompressor(data: &[u8]) -> Option<(&'static str, bool)> {
    const FORMATS: [(&[u8], &str, bool); 4] = [
        (b"\x28\xb5\x2f\xfd", "zstd", true),
        (b"\x02\x21\x4c\x18", "lz4", true), // lz4 legacy frame
        (b"\xfd7zXZ\x00", "xz", true),
        (b"\x1f\x8b", "gzip", false), // its trailer holds the size
    ];
    FORMATS
        .iter()
        .find(|(magic, _, _)| data.starts_with(magic))
        .map(|&(_, tool, strip)| (tool, strip))
}

/// True if `elf` is an ELF64 with a Xen PHYS32_ENTRY note (PVH entry).
pub fn has_pvh_note(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| elf.get(o..).and_then(u32_at_slice);
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let (mut n, end) = (off as usize, (off + size) as usize);
        while n + 12 <= end {
            let (Some(namesz), Some(descsz), Some(typ)) = (u32_at(n), u32_at(n + 4), u32_at(n + 8))
            else {
                break;
            };
            let name = elf.get(n + 12..n + 12 + namesz as usize);
            // XEN_ELFNOTE_PHYS32_ENTRY = 18
            if typ == 18 && name == Some(b"Xen\0") {
                return true;
            }
            let align4 = |x: u32| (x as usize).next_multiple_of(4);
            n += 12 + align4(namesz) + align4(descsz);
        }
    }
    false
}

/// The uncompressed `vmlinux` of `bzimage` if it can boot through PVH and a
/// decompressor for it is installed; `Ok(None)` if not. `scratch` is a
/// directory for a temporary file.
pub fn extract_pvh(bzimage: &Path, scratch: &Path) -> Result<Option<Vec<u8>>> {
    let bz = fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let (data, size) = payload(&bz)?;
    let Some((tool, strip)) = decompressor(data) else {
        return Ok(None);
    };
    let input = if strip { &data[..data.len() - 4] } else { data };
    let tmp = scratch.join(".payload");
    fs::write(&tmp, input).with_context(|| format!("write {}", tmp.display()))?;
    let out = Command::new(tool).arg("-dc").arg(&tmp).output();
    let _ = fs::remove_file(&tmp);
    let Ok(out) = out else {
        return Ok(None); // decompressor not installed
    };
    if !out.status.success() || out.stdout.len() != size || !has_pvh_note(&out.stdout) {
        return Ok(None);
    }
    Ok(Some(out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats() {
        assert_eq!(decompressor(b"\x28\xb5\x2f\xfd...."), Some(("zstd", true)));
        assert_eq!(decompressor(b"\x1f\x8b\x08"), Some(("gzip", false)));
        assert_eq!(decompressor(b"BZh9"), None);
    }

    #[test]
    fn rejects_non_bzimages() {
        assert!(payload(b"hello").is_err());
        assert!(!has_pvh_note(b"\x7fELF\x02\x01"));
        assert!(!has_pvh_note(b""));
    }
}
