//! The `calls` array (`BPF_F_MMAPABLE`): every call by (CPU, program
//! slot, helper), read through a shared mapping.
#![allow(unsafe_code)] // the calls array is read through mmap and atomics on its raw memory

use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Result};

use super::skel::types;
use crate::model::ids::Helper;

/// Program slots the `calls` array has room for (`SKPROF_MAX_PROGS`).
pub(super) const CALL_SLOTS: usize = 256;

/// The `calls` map (`BPF_F_MMAPABLE`) mapped into our memory, so a reading
/// takes no system call per element. Unmapped on drop.
pub(super) struct CallsMap {
    ptr: *mut u64,
    /// Bytes mapped.
    len: usize,
    cpus: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is
// only read (and zeroed for freed slots) through `&self`/`&mut self`, with
// atomic accesses, so moving it to another thread is sound.
unsafe impl Send for CallsMap {}

impl CallsMap {
    /// u64s in one `struct skprof_calls`.
    const WORDS: usize = size_of::<types::skprof_calls>() / 8;

    pub(super) fn map(fd: std::os::fd::BorrowedFd<'_>, cpus: usize) -> Result<CallsMap> {
        let bytes = cpus * CALL_SLOTS * Helper::COUNT * size_of::<types::skprof_calls>();
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = bytes.div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of an mmapable BPF array's fd, of
        // the size the kernel allocated for it (max_entries x value size,
        // rounded up to pages); we own the returned region until munmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!("mmap map calls: {}", std::io::Error::last_os_error());
        }
        Ok(CallsMap {
            ptr: ptr.cast(),
            len,
            cpus,
        })
    }

    /// The counter at `word` of element (cpu, slot, helper).
    fn word(&self, cpu: usize, slot: usize, helper: usize, word: usize) -> &AtomicU64 {
        let i = ((cpu * CALL_SLOTS + slot) * Helper::COUNT + helper) * Self::WORDS + word;
        assert!(i * 8 < self.len, "calls index out of the mapping");
        // SAFETY: `i` is inside the mapping (checked), u64-aligned (the
        // mapping is page-aligned and values are 136 = 17 x 8 bytes), and
        // the kernel writes these words concurrently, which atomic loads
        // and stores of the same width tolerate.
        unsafe { AtomicU64::from_ptr(self.ptr.add(i)) }
    }

    /// Every (slot, helper) with calls, summed over CPUs: outcomes, hits
    /// and acquired, as `struct skprof_calls` lays them out.
    pub(super) fn read(&self) -> Vec<(u32, Helper, [u64; Self::WORDS])> {
        let mut out = Vec::new();
        for slot in 0..CALL_SLOTS {
            for (h, helper) in Helper::ALL.iter().enumerate() {
                let mut sum = [0u64; Self::WORDS];
                for cpu in 0..self.cpus {
                    for (w, x) in sum.iter_mut().enumerate() {
                        *x += self.word(cpu, slot, h, w).load(Ordering::Relaxed);
                    }
                }
                if sum.iter().any(|&x| x != 0) {
                    out.push((slot as u32, *helper, sum));
                }
            }
        }
        out
    }

    /// Zeroes a freed slot's counters, so its next program starts from 0.
    pub(super) fn forget(&mut self, slot: usize) {
        if slot >= CALL_SLOTS {
            return;
        }
        for cpu in 0..self.cpus {
            for h in 0..Helper::COUNT {
                for w in 0..Self::WORDS {
                    self.word(cpu, slot, h, w).store(0, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for CallsMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the region mmap returned, mapped
        // once and unmapped only here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
