//! The skeleton's generated types as map bytes: which may be read from
//! bytes, which viewed as bytes to write, and tests that they match the
//! model's tables.

use std::mem::size_of;

use anyhow::{bail, Result};

use super::skel::types;

/// Map values this module reads as the skeleton's generated types.
///
/// # Safety
/// Implementors are `#[repr(C)]` and made only of integers, so every bit
/// pattern is a valid value.
pub(super) unsafe trait Pod: Copy {}
// SAFETY: generated from `struct skprof_hist` (u64 fields and a u64 array).
unsafe impl Pod for types::skprof_hist {}
// SAFETY: generated from `struct skprof_counters` (u64 arrays and fields).
unsafe impl Pod for types::skprof_counters {}
// SAFETY: generated from `struct skprof_hist_key` (u32 and u16 fields, no padding).
unsafe impl Pod for types::skprof_hist_key {}
// SAFETY: generated from `struct skprof_ref` (integers and a byte array).
unsafe impl Pod for types::skprof_ref {}
// SAFETY: generated from `struct skprof_event` (integers and skprof_ref).
unsafe impl Pod for types::skprof_event {}

// SAFETY: generated from `struct skprof_trace` (integers only).
unsafe impl Pod for types::skprof_trace {}
// SAFETY: generated from `struct skprof_calls` (u64 arrays only).
unsafe impl Pod for types::skprof_calls {}
// SAFETY: generated from `struct skprof_jit_table` (u32s and an array of
// u64/u64/u32/u32 ranges).
unsafe impl Pod for types::skprof_jit_table {}

/// Map values this module writes: their bytes can be viewed.
///
/// # Safety
/// Implementors are [`Pod`] and have no padding bytes.
pub(super) unsafe trait Bytes: Pod {}
// SAFETY: u32 n, u32 pad, then 24-byte ranges (u64, u64, u32, u32): no
// padding anywhere (size 8 + 512 * 24, checked in the tests).
unsafe impl Bytes for types::skprof_jit_table {}
// SAFETY: generated from skprof.bpf.c's .bss: two u32s.
unsafe impl Pod for types::bss {}
// SAFETY: two u32s, no padding (size checked in the tests).
unsafe impl Bytes for types::bss {}

/// The bytes of a map value to write.
pub(super) fn pod_bytes<T: Bytes>(v: &T) -> &[u8] {
    // SAFETY: T has no padding, so all its size_of::<T>() bytes are
    // initialized integers; the slice borrows `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

pub(super) fn read_pod<T: Pod>(bytes: &[u8]) -> Result<T> {
    if bytes.len() < size_of::<T>() {
        bail!(
            "map value is {} bytes, expected {}: probe object and skprof disagree",
            bytes.len(),
            size_of::<T>()
        );
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, T is Pod (any bit
    // pattern valid), and read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::super::load::JIT_RANGES;
    use super::*;
    use crate::model::hist;
    use crate::model::ids::{Helper, Outcome, SockClass};
    #[test]
    fn generated_enums_match_the_model() {
        for h in Helper::ALL {
            let c = match h {
                Helper::SkLookupTcp => types::skprof_helper::SKPROF_H_SK_LOOKUP_TCP,
                Helper::SkLookupUdp => types::skprof_helper::SKPROF_H_SK_LOOKUP_UDP,
                Helper::SkcLookupTcp => types::skprof_helper::SKPROF_H_SKC_LOOKUP_TCP,
                Helper::TcSkLookupTcp => types::skprof_helper::SKPROF_H_TC_SK_LOOKUP_TCP,
                Helper::TcSkLookupUdp => types::skprof_helper::SKPROF_H_TC_SK_LOOKUP_UDP,
                Helper::TcSkcLookupTcp => types::skprof_helper::SKPROF_H_TC_SKC_LOOKUP_TCP,
                Helper::XdpSkLookupTcp => types::skprof_helper::SKPROF_H_XDP_SK_LOOKUP_TCP,
                Helper::XdpSkLookupUdp => types::skprof_helper::SKPROF_H_XDP_SK_LOOKUP_UDP,
                Helper::XdpSkcLookupTcp => types::skprof_helper::SKPROF_H_XDP_SKC_LOOKUP_TCP,
                Helper::SockAddrSkLookupTcp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SK_LOOKUP_TCP
                }
                Helper::SockAddrSkLookupUdp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SK_LOOKUP_UDP
                }
                Helper::SockAddrSkcLookupTcp => {
                    types::skprof_helper::SKPROF_H_SOCK_ADDR_SKC_LOOKUP_TCP
                }
            };
            assert_eq!(c.0 as usize, h.index(), "{h:?}");
        }
        let o = |x: types::skprof_outcome| x.0 as usize;
        assert_eq!(o(types::skprof_outcome::SKPROF_O_HIT), Outcome::Hit.index());
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_NO_SOCKET),
            Outcome::NoSocket.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_LEN),
            Outcome::BadLen.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_NETNS),
            Outcome::BadNetns.index()
        );
        assert_eq!(
            o(types::skprof_outcome::SKPROF_O_BAD_FLAGS),
            Outcome::BadFlags.index()
        );
        let c = |x: types::skprof_sock_class| x.0 as usize;
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_LISTENER),
            SockClass::Listener.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_ESTABLISHED),
            SockClass::Established.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_TIME_WAIT),
            SockClass::TimeWait.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_REQUEST),
            SockClass::Request.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_UDP),
            SockClass::Udp.index()
        );
        assert_eq!(
            c(types::skprof_sock_class::SKPROF_C_OTHER),
            SockClass::Other.index()
        );
    }

    #[test]
    fn generated_types_have_the_model_sizes() {
        let h = types::skprof_hist::default();
        assert_eq!(h.slots.len(), hist::SLOTS);
        let c = types::skprof_counters::default();
        assert_eq!(c.unmatched_exit.len(), Helper::COUNT);
        assert_eq!(c.released.len(), SockClass::COUNT);
        assert_eq!(h.hits.len(), SockClass::COUNT);
    }

    #[test]
    fn bss_is_two_u32s() {
        assert_eq!(size_of::<types::bss>(), 8);
    }

    #[test]
    fn jit_table_has_no_padding() {
        assert_eq!(size_of::<types::skprof_jit_range>(), 24);
        assert_eq!(size_of::<types::skprof_jit_table>(), 8 + JIT_RANGES * 24);
    }

    #[test]
    fn read_pod_refuses_short_values() {
        assert!(read_pod::<types::skprof_counters>(&[0u8; 8]).is_err());
        let bytes = vec![0u8; size_of::<types::skprof_counters>()];
        assert_eq!(
            read_pod::<types::skprof_counters>(&bytes)
                .unwrap()
                .release_null,
            0
        );
    }
}
