//! The workload's opt-in "sockhash" case (bpf/sockhash.bpf.c): releases of
//! socket references no lookup helper took.
//!
//! `bpf_map_lookup_elem()` on a SOCKHASH returns a socket with a reference
//! the program must drop with `bpf_sk_release()`, yet no lookup helper ran:
//! skprof counts such a release as *unmatched*, a class of its own. Each run
//! of the case's tc program (BPF_PROG_TEST_RUN, so the count is exact) takes
//! an established socket with `bpf_sk_lookup_tcp` and holds it while it
//! takes another established socket out of the SOCKHASH and releases it,
//! then releases the first: per run one acquire, two releases that drop a
//! reference, one of them unmatched.
//!
//! Its own BPF object, loaded only when asked for, so the other cases'
//! programs (and the figures tests expect of them) are unchanged. Config
//! and counters live in one-entry ARRAY maps read and written through map
//! syscalls: no mmap, no unsafe code.

use std::mem::{offset_of, size_of};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use super::fixture::Tuple;
use super::optin;
use crate::model::ids::SockClass;

crate::bpf::skeleton!(mod skel = "sockhash.skel.rs");

use skel::types::{wl_sockhash_config, wl_sockhash_counters};
use skel::SockhashSkel;

/// The SOCKHASH key of the socket the program takes out.
const SOCKHASH_KEY: u32 = 0;

/// What the case's program recorded, or the difference of two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SockhashCounters {
    pub runs: u64,
    pub ours: u64,
    pub lookup_misses: u64,
    pub lookup_hits: [u64; SockClass::COUNT],
    pub map_misses: u64,
    pub map_hits: [u64; SockClass::COUNT],
}

impl SockhashCounters {
    /// Decodes the map value (native-endian `struct wl_sockhash_counters`,
    /// all u64, so no padding), field by field at the C layout's offsets.
    fn from_bytes(b: &[u8]) -> Result<SockhashCounters> {
        ensure!(
            b.len() >= size_of::<wl_sockhash_counters>(),
            "wl_sockhash_results value is {} bytes, expected {}",
            b.len(),
            size_of::<wl_sockhash_counters>()
        );
        let u = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"));
        let arr = |off: usize| std::array::from_fn(|i| u(off + 8 * i));
        Ok(SockhashCounters {
            runs: u(offset_of!(wl_sockhash_counters, runs)),
            ours: u(offset_of!(wl_sockhash_counters, ours)),
            lookup_misses: u(offset_of!(wl_sockhash_counters, lookup_misses)),
            lookup_hits: arr(offset_of!(wl_sockhash_counters, lookup_hits)),
            map_misses: u(offset_of!(wl_sockhash_counters, map_misses)),
            map_hits: arr(offset_of!(wl_sockhash_counters, map_hits)),
        })
    }

    /// `self - earlier`, per counter (they only grow).
    pub fn since(&self, e: &SockhashCounters) -> SockhashCounters {
        let d = |a: u64, b: u64| a.wrapping_sub(b);
        SockhashCounters {
            runs: d(self.runs, e.runs),
            ours: d(self.ours, e.ours),
            lookup_misses: d(self.lookup_misses, e.lookup_misses),
            lookup_hits: std::array::from_fn(|i| d(self.lookup_hits[i], e.lookup_hits[i])),
            map_misses: d(self.map_misses, e.map_misses),
            map_hits: std::array::from_fn(|i| d(self.map_hits[i], e.map_hits[i])),
        }
    }

    /// `n` runs as the case intends: every run found both established
    /// sockets. (`runs` is not checked: BPF_PROG_TEST_RUN runs only ours,
    /// but an armed check is what says a run did the case.)
    pub fn check(&self, n: u64) -> Result<()> {
        let mut want = SockhashCounters {
            runs: self.runs,
            ours: n,
            ..Default::default()
        };
        want.lookup_hits[SockClass::Established.index()] = n;
        want.map_hits[SockClass::Established.index()] = n;
        if *self == want {
            return Ok(());
        }
        bail!(
            "expected {n} runs each finding an established socket with bpf_sk_lookup_tcp and \
             another in the SOCKHASH, the program saw {self:?}"
        )
    }
}

/// Serializes the config as the C `struct wl_sockhash_config` lays it out
/// (offsets from the generated type; padding stays zero).
fn config_bytes(armed: bool, tuple: &Tuple) -> Result<Vec<u8>> {
    let mut b = vec![0u8; size_of::<wl_sockhash_config>()];
    let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
    put(
        offset_of!(wl_sockhash_config, armed),
        &u32::from(armed).to_ne_bytes(),
    );
    put(
        offset_of!(wl_sockhash_config, key),
        &SOCKHASH_KEY.to_ne_bytes(),
    );
    optin::put_tuple(&mut b, offset_of!(wl_sockhash_config, tuple), tuple)?;
    Ok(b)
}

/// The loaded program, its SOCKHASH holding one end of a connection, and
/// the tuple of the other end for `bpf_sk_lookup_tcp`.
pub struct SockhashCase {
    // Field order is drop order: the object (and the map's hold on the
    // socket) first, then the sockets.
    skel: SockhashSkel<'static>,
    /// The server side of the connection: what `bpf_sk_lookup_tcp` finds.
    _server: TcpStream,
    /// The client side: the socket in the SOCKHASH. A different socket
    /// from the one looked up, so the unmatched release cannot be mistaken
    /// for the held reference's by a ledger that pairs by socket.
    _client: TcpStream,
    _listener: TcpListener,
    tuple: Tuple,
    /// Runs per round.
    pub per_round: u64,
}

impl SockhashCase {
    /// Loads the program, makes a connection on 127.0.0.1 and puts its
    /// client side in the SOCKHASH. Must run inside the workload's netns
    /// (the test runs look up in the calling thread's netns).
    pub fn create(per_round: u64) -> Result<SockhashCase> {
        ensure!(per_round >= 1, "sockhash runs per round must be at least 1");
        let skel = skel::SockhashSkelBuilder::default()
            .open(optin::object_storage())
            .context("open the sockhash BPF object")?
            .load()
            .context("load the sockhash BPF object (verifier)")?;

        let (listener, client, server) = optin::connection("sockhash")?;
        // sock_map_update_elem_sys() takes the fd as a u64 when the value
        // is 8 bytes.
        let fd = u64::try_from(client.as_raw_fd()).context("socket fd")?;
        skel.maps
            .wl_sockhash
            .update(
                &SOCKHASH_KEY.to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )
            .context("put the connected socket in the SOCKHASH (bpf_map_update_elem)")?;
        let tuple = Tuple {
            src: server.peer_addr()?,
            dst: server.local_addr()?,
        };
        Ok(SockhashCase {
            skel,
            _server: server,
            _client: client,
            _listener: listener,
            tuple,
            per_round,
        })
    }

    /// The program's running totals.
    pub fn counters(&self) -> Result<SockhashCounters> {
        SockhashCounters::from_bytes(&optin::entry0(&self.skel.maps.wl_sockhash_results)?)
    }

    /// Runs the program `n` times in one BPF_PROG_TEST_RUN and checks that
    /// each run did the case; returns the counters' change.
    pub fn run(&self, n: u64) -> Result<SockhashCounters> {
        let before = self.counters()?;
        optin::armed_run(
            &self.skel.progs.wl_sockhash_release,
            &self.tuple,
            n,
            |armed| {
                optin::set_entry0(
                    &self.skel.maps.wl_sockhash_cfg,
                    &config_bytes(armed, &self.tuple)?,
                )
            },
        )?;
        let delta = self.counters()?.since(&before);
        delta.check(n)?;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skel::types::wl_tuple;

    #[test]
    fn counters_decode_at_the_c_offsets() {
        let n = size_of::<wl_sockhash_counters>() / 8;
        assert_eq!(n, 3 + 2 * SockClass::COUNT + 1, "all u64, no padding");
        let bytes: Vec<u8> = (0..n as u64).flat_map(|i| i.to_ne_bytes()).collect();
        let c = SockhashCounters::from_bytes(&bytes).unwrap();
        assert_eq!((c.runs, c.ours, c.lookup_misses), (0, 1, 2));
        assert_eq!(c.lookup_hits[0], 3);
        assert_eq!(c.map_misses, 3 + SockClass::COUNT as u64);
        assert_eq!(c.map_hits[SockClass::COUNT - 1], n as u64 - 1);
        assert!(SockhashCounters::from_bytes(&bytes[..8]).is_err());
    }

    #[test]
    fn check_wants_both_sockets_found_every_run() {
        let mut d = SockhashCounters {
            runs: 7,
            ours: 5,
            ..Default::default()
        };
        d.lookup_hits[SockClass::Established.index()] = 5;
        d.map_hits[SockClass::Established.index()] = 5;
        d.check(5).unwrap();
        let mut miss = d;
        miss.map_hits[SockClass::Established.index()] = 4;
        miss.map_misses = 1;
        assert!(miss.check(5).is_err());
        assert!(d.check(6).is_err());
    }

    #[test]
    fn config_layout() {
        let t = Tuple {
            src: "127.0.0.1:40000".parse().unwrap(),
            dst: "127.0.0.2:8080".parse().unwrap(),
        };
        let b = config_bytes(true, &t).unwrap();
        assert_eq!(b.len(), size_of::<wl_sockhash_config>());
        assert_eq!(b[0..4], 1u32.to_ne_bytes());
        let tup = offset_of!(wl_sockhash_config, tuple);
        assert_eq!(b[tup..tup + 4], [127, 0, 0, 1]);
        let d = tup + offset_of!(wl_tuple, daddr);
        assert_eq!(b[d..d + 4], [127, 0, 0, 2]);
        let dp = tup + offset_of!(wl_tuple, dport);
        assert_eq!(b[dp..dp + 2], [0x1f, 0x90]);
        let v6 = Tuple {
            src: "[::1]:1".parse().unwrap(),
            dst: "[::1]:2".parse().unwrap(),
        };
        assert!(config_bytes(true, &v6).is_err());
    }
}
