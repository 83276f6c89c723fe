//! Packets for BPF_PROG_TEST_RUN of the tc and XDP programs.
//!
//! The programs take their tuple from the config, not from the packet, but
//! the packet is a well-formed frame carrying that same tuple (Ethernet,
//! IPv4 or IPv6, TCP or UDP, valid checksums), so whatever else inspects
//! the test run's skb or xdp_buff sees the flow being looked up.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::model::ids::Proto;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Locally administered MAC addresses: never real hardware.
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const UDP_PAYLOAD: &[u8] = b"skprof";

/// A frame from `src` to `dst` (the lookup tuple's direction: `src` is the
/// remote peer, `dst` the local socket), TCP (a bare ACK) for the TCP
/// lookups, UDP for the UDP one. The workload's tuples never mix families;
/// if given a mix, the IPv4 address is v4-mapped into an IPv6 frame.
pub fn craft(proto: Proto, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let l4 = match proto {
        Proto::Udp => udp_header(src.port(), dst.port()),
        Proto::Tcp | Proto::SkcTcp => tcp_ack(src.port(), dst.port()),
    };
    let next = match proto {
        Proto::Udp => IPPROTO_UDP,
        Proto::Tcp | Proto::SkcTcp => IPPROTO_TCP,
    };
    let mut frame = Vec::with_capacity(14 + 40 + l4.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let total = (20 + l4.len()) as u16;
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = 64;
            ip[9] = next;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            frame.extend_from_slice(&ip);
            let mut pseudo = [0u8; 12];
            pseudo[0..4].copy_from_slice(&s.octets());
            pseudo[4..8].copy_from_slice(&d.octets());
            pseudo[9] = next;
            pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            frame.extend_from_slice(&with_l4_checksum(l4, next, &pseudo));
        }
        (s, d) => {
            let (s, d) = (as_v6(s), as_v6(d));
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip[6] = next;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            frame.extend_from_slice(&ip);
            let mut pseudo = [0u8; 40];
            pseudo[0..16].copy_from_slice(&s.octets());
            pseudo[16..32].copy_from_slice(&d.octets());
            pseudo[32..36].copy_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo[39] = next;
            frame.extend_from_slice(&with_l4_checksum(l4, next, &pseudo));
        }
    }
    frame
}

fn as_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

fn tcp_ack(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1u32.to_be_bytes()); // seq
    h[8..12].copy_from_slice(&1u32.to_be_bytes()); // ack
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = 0x10; // ACK
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h
}

fn udp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&((8 + UDP_PAYLOAD.len()) as u16).to_be_bytes());
    h.extend_from_slice(UDP_PAYLOAD);
    h
}

fn with_l4_checksum(mut l4: Vec<u8>, next: u8, pseudo: &[u8]) -> Vec<u8> {
    let mut c = checksum(&[pseudo, &l4]);
    let at = if next == IPPROTO_UDP {
        // UDP sends 0 as "no checksum": a computed 0 goes out as 0xffff.
        if c == 0 {
            c = 0xffff;
        }
        6
    } else {
        16
    };
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// The Internet checksum (RFC 1071) of the concatenated parts; each part
/// but the last must have an even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for w in &mut chunks {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: [u8; 4], p: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::from(a), p))
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&[&data]), !0xddf2);
    }

    #[test]
    fn ipv4_tcp_frame_is_well_formed() {
        let f = craft(Proto::Tcp, v4([127, 0, 0, 1], 9), v4([127, 0, 0, 1], 40000));
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[14..34];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 40);
        assert_eq!(ip[9], 6);
        assert_eq!(checksum(&[ip]), 0, "IPv4 header checksum verifies");
        let tcp = &f[34..];
        assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 9);
        assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 40000);
        assert_eq!(tcp[13], 0x10);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        assert_eq!(checksum(&[&pseudo, tcp]), 0, "TCP checksum verifies");
    }

    #[test]
    fn ipv4_udp_frame_is_well_formed() {
        let f = craft(Proto::Udp, v4([127, 0, 0, 1], 9), v4([127, 0, 0, 1], 5353));
        let udp = &f[34..];
        assert_eq!(udp.len(), 8 + UDP_PAYLOAD.len());
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
        assert_ne!(u16::from_be_bytes([udp[6], udp[7]]), 0);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17, 0, udp.len() as u8]);
        assert_eq!(checksum(&[&pseudo, udp]), 0, "UDP checksum verifies");
    }

    #[test]
    fn ipv6_frames_are_well_formed() {
        let s = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        let d = SocketAddr::from((Ipv6Addr::LOCALHOST, 8080));
        for (proto, next, l4len) in [
            (Proto::SkcTcp, 6u8, 20usize),
            (Proto::Udp, 17, 8 + UDP_PAYLOAD.len()),
        ] {
            let f = craft(proto, s, d);
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            assert_eq!(f.len(), 14 + 40 + l4len);
            let ip = &f[14..54];
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, l4len);
            assert_eq!(ip[6], next);
            assert_eq!(&ip[24..40], &Ipv6Addr::LOCALHOST.octets());
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&ip[8..40]);
            pseudo.extend_from_slice(&(l4len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, next]);
            assert_eq!(checksum(&[&pseudo, &f[54..]]), 0);
        }
    }
}
