//! What the opt-in cases (`sockhash`, `sites`) share: a tc program with its
//! config and counters in one-entry ARRAY maps, run armed through
//! BPF_PROG_TEST_RUN on a crafted frame.

use anyhow::{ensure, Context, Result};
use libbpf_rs::{Map, MapCore, MapFlags, OpenObject, ProgramInput, ProgramMut};

use std::mem::{offset_of, MaybeUninit};
use std::net::{Ipv4Addr, TcpListener, TcpStream};

use super::bpf::wl_tuple;
use super::fixture::{wait_for_tcp_state, Tuple, TCP_ESTABLISHED};
use super::packet;
use crate::model::ids::Proto;

const TC_ACT_OK: u32 = 0;

/// Storage for a skeleton's object: the skeleton borrows it for its whole
/// life, so it is leaked (a few dozen bytes, once per case) rather than
/// made self-referential with unsafe code, as `bpf::load` does.
pub fn object_storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// A TCP connection on 127.0.0.1, established: (listener, client side,
/// server side). `case` names the case in errors.
pub fn connection(case: &str) -> Result<(TcpListener, TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .with_context(|| format!("bind the {case} case's listener on 127.0.0.1"))?;
    let client = TcpStream::connect(listener.local_addr()?)
        .with_context(|| format!("connect for the {case} case"))?;
    let (server, _) = listener
        .accept()
        .with_context(|| format!("accept for the {case} case"))?;
    wait_for_tcp_state(server.local_addr()?, server.peer_addr()?, TCP_ESTABLISHED)
        .with_context(|| format!("wait for the {case} case's connection"))?;
    Ok((listener, client, server))
}

/// Writes `t` as a `struct wl_tuple` at `at` of a config's bytes (the
/// opt-in cases look up IPv4 tuples only).
pub fn put_tuple(b: &mut [u8], at: usize, t: &Tuple) -> Result<()> {
    ensure!(
        t.src.is_ipv4() && t.dst.is_ipv4(),
        "the opt-in cases' tuples are IPv4: {} -> {}",
        t.src,
        t.dst
    );
    let w = super::wl_tuple_of(t);
    let mut put =
        |off: usize, bytes: &[u8]| b[at + off..at + off + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(wl_tuple, saddr), &w.saddr[0].to_ne_bytes());
    put(offset_of!(wl_tuple, daddr), &w.daddr[0].to_ne_bytes());
    put(offset_of!(wl_tuple, sport), &w.sport.to_ne_bytes());
    put(offset_of!(wl_tuple, dport), &w.dport.to_ne_bytes());
    Ok(())
}

/// Entry 0 of a one-entry ARRAY map, as bytes.
pub fn entry0(map: &Map<'_>) -> Result<Vec<u8>> {
    let name = map.name().to_string_lossy().into_owned();
    map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .with_context(|| format!("read {name}"))?
        .with_context(|| format!("{name} has no entry 0"))
}

/// Writes entry 0 of a one-entry ARRAY map.
pub fn set_entry0(map: &Map<'_>, value: &[u8]) -> Result<()> {
    map.update(&0u32.to_ne_bytes(), value, MapFlags::ANY)
        .with_context(|| format!("write {}", map.name().to_string_lossy()))
}

/// Runs `prog` `n` times in one BPF_PROG_TEST_RUN on a TCP frame of
/// `tuple`, armed by `arm(true)` before and disarmed after whatever
/// happened; it must return TC_ACT_OK.
pub fn armed_run(
    prog: &ProgramMut<'_>,
    tuple: &Tuple,
    n: u64,
    arm: impl Fn(bool) -> Result<()>,
) -> Result<()> {
    arm(true)?;
    let frame = packet::craft(Proto::Tcp, tuple.src, tuple.dst);
    let out = test_run(prog, &frame, n, TC_ACT_OK);
    arm(false)?;
    out
}

/// Runs `prog` `repeat` times in one BPF_PROG_TEST_RUN on `frame`; it must
/// return `want`.
pub fn test_run(prog: &ProgramMut<'_>, frame: &[u8], repeat: u64, want: u32) -> Result<()> {
    let name = prog.name().to_string_lossy().into_owned();
    let input = ProgramInput {
        data_in: Some(frame),
        repeat: u32::try_from(repeat).context("too many runs for one test run")?,
        ..Default::default()
    };
    let out = prog
        .test_run(input)
        .with_context(|| format!("BPF_PROG_TEST_RUN {name} (repeat {repeat})"))?;
    ensure!(
        out.return_value == want,
        "BPF_PROG_TEST_RUN {name}: returned {}, expected {want}",
        out.return_value
    );
    Ok(())
}
