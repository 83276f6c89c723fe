//! The workload's opt-in "sites" case (bpf/sites.bpf.c): one tc program with
//! four lookup call sites (two in a `__noinline` subprogram, one on a branch
//! taken every third run) and two release sites, each counting its own
//! calls, hits and acquired references: the ground truth of skprof's
//! per-site figures (`stat --by site`, `annotate`).
//!
//! Per run: `main_tcp` finds an established socket (one reference), every
//! third run `main_udp` finds a UDP socket (no reference), both released at
//! `release_main`; odd runs `sub_skc` finds the established socket through
//! `bpf_skc_lookup_tcp` (one reference), even runs `sub_tcp` finds nothing;
//! what the subprogram found is released at `release_sub`.
//!
//! Its own BPF object, loaded only when asked for; config and counters in
//! one-entry ARRAY maps read and written through map syscalls.

use std::mem::{offset_of, size_of};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};

use anyhow::{bail, ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::Serialize;

use super::fixture::Tuple;
use super::optin;
use crate::model::ids::{Family, Outcome, Proto, SockClass};
use crate::model::tally::Tally;

crate::bpf::skeleton!(mod skel = "sites.skel.rs");

use skel::types::{wl_site_counts, wl_sites_config, wl_sites_counters};
use skel::SitesSkel;

/// The lookup sites, in `enum wl_site` order, by the marker of their line
/// (`SITE:<name>` in bpf/sites.bpf.c).
pub const LOOKUP_SITES: [&str; 4] = ["main_tcp", "main_udp", "sub_skc", "sub_tcp"];
/// The release sites, in `enum wl_release_site` order.
pub const RELEASE_SITES: [&str; 2] = ["release_main", "release_sub"];

/// One lookup site's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SiteCounts {
    pub calls: u64,
    pub hits: u64,
    pub acquired: u64,
}

/// What the program recorded, or the difference of two readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SitesCounters {
    pub runs: u64,
    pub lookup: [SiteCounts; 4],
    pub released: [u64; 2],
}

impl SitesCounters {
    /// Decodes the map value (native-endian `struct wl_sites_counters`, all
    /// u64) at the C layout's offsets.
    fn from_bytes(b: &[u8]) -> Result<SitesCounters> {
        ensure!(
            b.len() >= size_of::<wl_sites_counters>(),
            "wl_sites_results value is {} bytes, expected {}",
            b.len(),
            size_of::<wl_sites_counters>()
        );
        let u = |off: usize| u64::from_ne_bytes(b[off..off + 8].try_into().expect("8 bytes"));
        let site = |i: usize| {
            let base = offset_of!(wl_sites_counters, lookup) + i * size_of::<wl_site_counts>();
            SiteCounts {
                calls: u(base + offset_of!(wl_site_counts, calls)),
                hits: u(base + offset_of!(wl_site_counts, hits)),
                acquired: u(base + offset_of!(wl_site_counts, acquired)),
            }
        };
        let rel = offset_of!(wl_sites_counters, released);
        Ok(SitesCounters {
            runs: u(offset_of!(wl_sites_counters, runs)),
            lookup: std::array::from_fn(site),
            released: [u(rel), u(rel + 8)],
        })
    }

    /// `self - earlier`, per counter (they only grow).
    pub fn since(&self, e: &SitesCounters) -> SitesCounters {
        let d = |a: u64, b: u64| a.wrapping_sub(b);
        SitesCounters {
            runs: d(self.runs, e.runs),
            lookup: std::array::from_fn(|i| SiteCounts {
                calls: d(self.lookup[i].calls, e.lookup[i].calls),
                hits: d(self.lookup[i].hits, e.lookup[i].hits),
                acquired: d(self.lookup[i].acquired, e.lookup[i].acquired),
            }),
            released: [
                d(self.released[0], e.released[0]),
                d(self.released[1], e.released[1]),
            ],
        }
    }

    pub fn add(&mut self, o: &SitesCounters) {
        self.runs += o.runs;
        for (a, b) in self.lookup.iter_mut().zip(&o.lookup) {
            a.calls += b.calls;
            a.hits += b.hits;
            a.acquired += b.acquired;
        }
        self.released[0] += o.released[0];
        self.released[1] += o.released[1];
    }

    /// `n` runs numbered from `first` as the case intends (see the module
    /// documentation).
    pub fn check(&self, first: u64, n: u64) -> Result<()> {
        let runs = first..first + n;
        let udp = runs.clone().filter(|r| r % 3 == 0).count() as u64;
        let odd = runs.filter(|r| r % 2 == 1).count() as u64;
        let c = |calls, hits, acquired| SiteCounts {
            calls,
            hits,
            acquired,
        };
        let want = SitesCounters {
            runs: n,
            lookup: [
                c(n, n, n),
                c(udp, udp, 0),
                c(odd, odd, odd),
                c(n - odd, 0, 0),
            ],
            released: [n + udp, odd],
        };
        if *self == want {
            return Ok(());
        }
        bail!(
            "expected {want:?} of runs {first}..{}, the program saw {self:?}",
            first + n
        )
    }

    /// Each site by its marker, for reports.
    pub fn by_marker(&self) -> serde_json::Value {
        let mut lookups = serde_json::Map::new();
        for (name, c) in LOOKUP_SITES.iter().zip(&self.lookup) {
            lookups.insert(name.to_string(), serde_json::json!(c));
        }
        let mut releases = serde_json::Map::new();
        for (name, n) in RELEASE_SITES.iter().zip(&self.released) {
            releases.insert(name.to_string(), serde_json::json!(n));
        }
        serde_json::json!({ "runs": self.runs, "lookups": lookups, "releases": releases })
    }

    /// The calls as the workload's tally counts them (a tc program's).
    pub fn record(&self, tally: &mut Tally) {
        let l = &self.lookup;
        let mut hit =
            |proto, class, n| tally.record(Family::Tc, proto, Outcome::Hit, Some(class), n);
        hit(Proto::Tcp, SockClass::Established, l[0].hits);
        hit(Proto::Udp, SockClass::Udp, l[1].hits);
        hit(Proto::SkcTcp, SockClass::Established, l[2].hits);
        tally.record(Family::Tc, Proto::Tcp, Outcome::NoSocket, None, l[3].calls);
    }
}

/// Serializes the config as the C `struct wl_sites_config` lays it out.
fn config_bytes(armed: bool, tcp: &Tuple, udp: &Tuple, none: &Tuple) -> Result<Vec<u8>> {
    let mut b = vec![0u8; size_of::<wl_sites_config>()];
    b[offset_of!(wl_sites_config, armed)..][..4].copy_from_slice(&u32::from(armed).to_ne_bytes());
    optin::put_tuple(&mut b, offset_of!(wl_sites_config, tcp), tcp)?;
    optin::put_tuple(&mut b, offset_of!(wl_sites_config, udp), udp)?;
    optin::put_tuple(&mut b, offset_of!(wl_sites_config, none), none)?;
    Ok(b)
}

/// The loaded program and the sockets its lookups find.
pub struct SitesCase {
    skel: SitesSkel<'static>,
    _server: TcpStream,
    _client: TcpStream,
    _listener: TcpListener,
    _udp: UdpSocket,
    tcp: Tuple,
    udp: Tuple,
    none: Tuple,
    /// Runs per round.
    pub per_round: u64,
}

impl SitesCase {
    /// Loads the program and makes its sockets on 127.0.0.1. Must run
    /// inside the workload's netns (test runs look up in the calling
    /// thread's).
    pub fn create(per_round: u64) -> Result<SitesCase> {
        ensure!(per_round >= 1, "sites runs per round must be at least 1");
        let skel = skel::SitesSkelBuilder::default()
            .open(optin::object_storage())
            .context("open the sites BPF object")?
            .load()
            .context("load the sites BPF object (verifier)")?;
        let (listener, client, server) = optin::connection("sites")?;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("bind the sites case's UDP socket")?;
        let udp_tuple = Tuple {
            src: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
            dst: udp.local_addr()?,
        };
        // A port nothing listens on: the listener's port + 1 may be taken,
        // so the listener's own address from another source port, to a
        // port closed right after binding.
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?;
        Ok(SitesCase {
            skel,
            tcp: Tuple {
                src: server.peer_addr()?,
                dst: server.local_addr()?,
            },
            udp: udp_tuple,
            none: Tuple {
                src: SocketAddr::from((Ipv4Addr::LOCALHOST, 9)),
                dst: closed,
            },
            _server: server,
            _client: client,
            _listener: listener,
            _udp: udp,
            per_round,
        })
    }

    /// The program's running totals.
    pub fn counters(&self) -> Result<SitesCounters> {
        SitesCounters::from_bytes(&optin::entry0(&self.skel.maps.wl_sites_results)?)
    }

    /// Runs the program `n` times in one BPF_PROG_TEST_RUN and checks that
    /// every site saw what the case intends; returns the counters' change.
    pub fn run(&self, n: u64) -> Result<SitesCounters> {
        let before = self.counters()?;
        optin::armed_run(&self.skel.progs.wl_sites, &self.tcp, n, |armed| {
            optin::set_entry0(
                &self.skel.maps.wl_sites_cfg,
                &config_bytes(armed, &self.tcp, &self.udp, &self.none)?,
            )
        })?;
        let delta = self.counters()?.since(&before);
        delta.check(before.runs, n)?;
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_decode_at_the_c_offsets() {
        let n = size_of::<wl_sites_counters>() / 8;
        assert_eq!(n, 1 + 4 * 3 + 2, "all u64, no padding");
        let bytes: Vec<u8> = (0..n as u64).flat_map(|i| i.to_ne_bytes()).collect();
        let c = SitesCounters::from_bytes(&bytes).unwrap();
        assert_eq!(c.runs, 0);
        assert_eq!(
            c.lookup[0],
            SiteCounts {
                calls: 1,
                hits: 2,
                acquired: 3
            }
        );
        assert_eq!(c.lookup[3].acquired, 12);
        assert_eq!(c.released, [13, 14]);
        assert!(SitesCounters::from_bytes(&bytes[..8]).is_err());
    }

    #[test]
    fn check_follows_the_run_numbers() {
        // Runs 1..=5: udp on 3; odd 1, 3, 5.
        let c = |calls, hits, acquired| SiteCounts {
            calls,
            hits,
            acquired,
        };
        let d = SitesCounters {
            runs: 5,
            lookup: [c(5, 5, 5), c(1, 1, 0), c(3, 3, 3), c(2, 0, 0)],
            released: [6, 3],
        };
        d.check(1, 5).unwrap();
        assert!(d.check(0, 5).is_err());
        let mut t = Tally::default();
        d.record(&mut t);
        assert_eq!(t.total_calls(), 11);
    }
}
