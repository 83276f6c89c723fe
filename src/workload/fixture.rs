//! The sockets the cases look up, and the driver sockets of the cgroup
//! programs, all in the workload's own network namespace.
//!
//! Methods that create sockets or read /proc/thread-self/net must run with
//! the calling thread inside that namespace (`Netns::enter`).

use std::fs;
use std::io::{self, Read};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::cases::{Ip, Target};
use super::cgroup::WorkloadCgroup;
use super::sys;

/// Port nothing is bound to in the workload's netns (below the ephemeral
/// range, so no socket of ours gets it either); also the source port of
/// tuples aimed at listeners and UDP sockets.
pub const UNUSED_PORT: u16 = 9;
/// Destination of the connect() calls that drive cgroup/connect4. A UDP
/// connect() only sets the peer, so nothing needs to listen there.
pub const CONNECT_PORT: u16 = 7;
/// A TIME_WAIT socket lives TCP_TIMEWAIT_LEN (60 s, not tunable on 6.1):
/// make a fresh one when the current one is older than this.
const TIME_WAIT_MAX_AGE: Duration = Duration::from_secs(30);
/// The request socket lives for the listener's TCP_DEFER_ACCEPT period
/// (hours, see `Request::create`); renew it well before.
const REQUEST_MAX_AGE: Duration = Duration::from_secs(1800);
/// How long to wait for a socket to reach the state a case needs.
const STATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Datagrams in flight to the ingress socket at once: far below its
/// receive buffer, so none is dropped.
pub const INGRESS_BATCH: u64 = 64;

/// A lookup tuple: `src` is the remote end (the packet's source), `dst`
/// the local socket's address, as `bpf_sock_tuple` has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The per-family TCP state of /proc/net/tcp{,6} (`st` column).
pub(super) const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3; // how request sockets are listed
const TCP_TIME_WAIT: u8 = 6;

struct TimeWait {
    tuple: Tuple,
    created: Instant,
}

impl TimeWait {
    /// Connects to `listener`, closes the client first, then the server:
    /// the client's side ends in TIME_WAIT (an inet_timewait_sock).
    fn create(listener: &TcpListener) -> Result<TimeWait> {
        let server_addr = listener.local_addr()?;
        let client = TcpStream::connect(server_addr).context("connect for the TIME_WAIT socket")?;
        let (mut server, _) = listener
            .accept()
            .context("accept for the TIME_WAIT socket")?;
        let client_addr = client.local_addr()?;
        drop(client);
        // Wait for the client's FIN, so the server's close is a passive one.
        server.set_read_timeout(Some(STATE_TIMEOUT))?;
        let mut buf = [0u8; 16];
        let n = server.read(&mut buf).context("wait for the client's FIN")?;
        if n != 0 {
            bail!("unexpected data on the TIME_WAIT connection");
        }
        drop(server);
        wait_for_tcp_state(client_addr, server_addr, TCP_TIME_WAIT)
            .context("wait for the client side to enter TIME_WAIT")?;
        Ok(TimeWait {
            tuple: Tuple {
                src: server_addr,
                dst: client_addr,
            },
            created: Instant::now(),
        })
    }
}

struct Request {
    listener: TcpListener,
    client: TcpStream,
    tuple: Tuple,
    created: Instant,
}

impl Request {
    /// A listener with TCP_DEFER_ACCEPT drops the client's bare final ACK
    /// (tcp_check_req()), so the connection stays a request socket
    /// (NEW_SYN_RECV) while the client believes it is established. With a
    /// large deferral (capped at 255 SYN-ACK timeouts, hours) it neither
    /// expires nor resends during a run.
    fn create() -> Result<Request> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind the request listener")?;
        sys::set_int_sockopt(
            listener.as_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            i32::MAX,
        )
        .context("set TCP_DEFER_ACCEPT")?;
        let mut r = Request {
            client: TcpStream::connect(listener.local_addr()?)
                .context("connect for the request socket")?,
            tuple: Tuple {
                src: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                dst: listener.local_addr()?,
            },
            listener,
            created: Instant::now(),
        };
        r.tuple.src = r.client.local_addr()?;
        wait_for_tcp_state(r.tuple.dst, r.tuple.src, TCP_SYN_RECV)
            .context("wait for the request socket (TCP_DEFER_ACCEPT)")?;
        Ok(r)
    }

    fn renew(&mut self) -> Result<()> {
        let old = std::mem::replace(
            &mut self.client,
            TcpStream::connect(self.listener.local_addr()?)
                .context("connect for the request socket")?,
        );
        // A RST from the old client frees its request socket now.
        let _ = sys::set_linger_zero(old.as_fd());
        drop(old);
        self.tuple.src = self.client.local_addr()?;
        self.created = Instant::now();
        wait_for_tcp_state(self.tuple.dst, self.tuple.src, TCP_SYN_RECV)
            .context("wait for the request socket (TCP_DEFER_ACCEPT)")
    }
}

struct V6 {
    listener: TcpListener,
    _client: TcpStream,
    server: TcpStream,
    udp: UdpSocket,
}

/// The sockets that make the cgroup programs run.
pub struct Drivers {
    /// connect() of this UDP socket runs cgroup/connect4 once.
    pub connect: UdpSocket,
    pub connect_cookie: u64,
    pub connect_to: SocketAddr,
    /// Each datagram it receives runs cgroup_skb/ingress once.
    pub ingress_rx: UdpSocket,
    pub ingress_cookie: u64,
    pub ingress_port: u16,
    /// Sends to `ingress_rx`; outside the cgroup, so only delivery counts.
    pub ingress_tx: UdpSocket,
}

pub struct Fixture {
    listener: TcpListener,
    _est_client: TcpStream,
    est_server: TcpStream,
    udp: UdpSocket,
    time_wait: TimeWait,
    request: Request,
    v6: Option<V6>,
    /// Why the IPv6 cases are skipped, if they are.
    pub no_ipv6: Option<String>,
    /// The cgroup programs' driver sockets, if they run.
    pub drivers: Option<Drivers>,
}

impl Fixture {
    /// Creates every socket. Must run inside the workload netns; the
    /// driver sockets, only with a cgroup, are created with the process
    /// inside it.
    pub fn create(cgroup: Option<&WorkloadCgroup>) -> Result<Fixture> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("bind the TCP listener on 127.0.0.1")?;
        let est_client =
            TcpStream::connect(listener.local_addr()?).context("connect to the TCP listener")?;
        let (est_server, _) = listener
            .accept()
            .context("accept the established connection")?;
        wait_for_tcp_state(
            est_server.local_addr()?,
            est_server.peer_addr()?,
            TCP_ESTABLISHED,
        )
        .context("wait for the established connection")?;
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .context("bind the UDP socket on 127.0.0.1")?;
        let time_wait = TimeWait::create(&listener)?;
        let request = Request::create()?;
        let (v6, no_ipv6) = match create_v6() {
            Ok(v6) => (Some(v6), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };

        let drivers = cgroup.map(create_drivers).transpose()?;
        Ok(Fixture {
            listener,
            _est_client: est_client,
            est_server,
            udp,
            time_wait,
            request,
            v6,
            no_ipv6,
            drivers,
        })
    }

    pub fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    /// Renews the TIME_WAIT or request socket if it may expire soon. Must
    /// run inside the workload netns.
    pub fn refresh(&mut self, target: Target) -> Result<()> {
        self.refresh_older_than(target, TIME_WAIT_MAX_AGE, REQUEST_MAX_AGE)
    }

    /// `refresh` with explicit ages (zero forces a renewal).
    pub fn refresh_older_than(
        &mut self,
        target: Target,
        tw_age: Duration,
        req_age: Duration,
    ) -> Result<()> {
        match target {
            Target::TimeWait if self.time_wait.created.elapsed() >= tw_age => {
                // The old one expires by itself within 60 s.
                self.time_wait =
                    TimeWait::create(&self.listener).context("renew the TIME_WAIT socket")?;
            }
            Target::Request if self.request.created.elapsed() >= req_age => {
                self.request.renew().context("renew the request socket")?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The tuple of a case.
    pub fn tuple(&self, ip: Ip, target: Target) -> Result<Tuple> {
        let any_src = |addr: SocketAddr| SocketAddr::new(addr.ip(), UNUSED_PORT);
        let server = |s: &TcpStream| -> Result<Tuple> {
            Ok(Tuple {
                src: s.peer_addr()?,
                dst: s.local_addr()?,
            })
        };
        match ip {
            Ip::V4 => Ok(match target {
                Target::Listener => {
                    let dst = self.listener.local_addr()?;
                    Tuple {
                        src: any_src(dst),
                        dst,
                    }
                }
                Target::Established => server(&self.est_server)?,
                Target::TimeWait => self.time_wait.tuple,
                Target::Request => self.request.tuple,
                Target::UdpBound => {
                    let dst = self.udp.local_addr()?;
                    Tuple {
                        src: any_src(dst),
                        dst,
                    }
                }
                Target::Unused => {
                    let a = SocketAddr::from((Ipv4Addr::LOCALHOST, UNUSED_PORT));
                    Tuple { src: a, dst: a }
                }
            }),
            Ip::V6 => {
                let v6 = self.v6.as_ref().ok_or_else(|| {
                    anyhow!(
                        "no IPv6 sockets: {}",
                        self.no_ipv6.as_deref().unwrap_or("?")
                    )
                })?;
                Ok(match target {
                    Target::Listener => {
                        let dst = v6.listener.local_addr()?;
                        Tuple {
                            src: any_src(dst),
                            dst,
                        }
                    }
                    Target::Established => server(&v6.server)?,
                    Target::UdpBound => {
                        let dst = v6.udp.local_addr()?;
                        Tuple {
                            src: any_src(dst),
                            dst,
                        }
                    }
                    Target::Unused => {
                        let a = SocketAddr::from((Ipv6Addr::LOCALHOST, UNUSED_PORT));
                        Tuple { src: a, dst: a }
                    }
                    Target::TimeWait | Target::Request => bail!("no IPv6 {target:?} socket"),
                })
            }
        }
    }
}

fn create_drivers(cgroup: &WorkloadCgroup) -> Result<Drivers> {
    let (connect, ingress_rx) = cgroup.with_process_inside(|| {
        let connect =
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind the connect4 driver socket")?;
        let rx =
            UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind the ingress driver socket")?;
        Ok((connect, rx))
    })?;
    let ingress_tx =
        UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind the ingress sender socket")?;
    ingress_tx
        .connect(ingress_rx.local_addr()?)
        .context("connect the ingress sender")?;
    ingress_rx.set_read_timeout(Some(STATE_TIMEOUT))?;
    Ok(Drivers {
        connect_cookie: sys::socket_cookie(connect.as_fd())
            .context("SO_COOKIE of the connect4 driver")?,
        connect_to: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, CONNECT_PORT)),
        connect,
        ingress_cookie: sys::socket_cookie(ingress_rx.as_fd())
            .context("SO_COOKIE of the ingress driver")?,
        ingress_port: ingress_rx.local_addr()?.port(),
        ingress_rx,
        ingress_tx,
    })
}

fn create_v6() -> Result<V6> {
    let listener =
        TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).context("bind a TCP listener on [::1]")?;
    let client = TcpStream::connect(listener.local_addr()?).context("connect to [::1]")?;
    let (server, _) = listener.accept().context("accept on [::1]")?;
    let udp = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).context("bind a UDP socket on [::1]")?;
    Ok(V6 {
        listener,
        _client: client,
        server,
        udp,
    })
}

/// One row of /proc/net/tcp: local and remote address and the `st` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
}

/// Parses /proc/net/tcp or tcp6. Addresses are printed as the raw
/// in-memory words (`%08X` of each __be32), ports in host order.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpRow> {
    fn addr(s: &str) -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let words: Option<Vec<u32>> = (0..ip.len() / 8)
            .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
            .collect();
        let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let ip = match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace().skip(1);
            let local = addr(f.next()?)?;
            let remote = addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            Some(TcpRow {
                local,
                remote,
                state,
            })
        })
        .collect()
}

/// Waits until /proc/thread-self/net/tcp lists (local, remote) in `state`.
pub(super) fn wait_for_tcp_state(local: SocketAddr, remote: SocketAddr, state: u8) -> Result<()> {
    let path = match local {
        SocketAddr::V4(_) => "/proc/thread-self/net/tcp",
        SocketAddr::V6(_) => "/proc/thread-self/net/tcp6",
    };
    let deadline = Instant::now() + STATE_TIMEOUT;
    loop {
        let text = fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        let row = parse_proc_net_tcp(&text)
            .into_iter()
            .find(|r| r.local == local && r.remote == remote);
        if row.is_some_and(|r| r.state == state) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "{local} <- {remote} is in state {} after {STATE_TIMEOUT:?}, wanted {state}",
                row.map_or("(absent)".to_string(), |r| r.state.to_string())
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends `n` datagrams to the ingress socket and receives them all, in
/// batches: each one received has been through cgroup_skb/ingress, so
/// when this returns every run it caused is counted.
pub fn drive_ingress(d: &Drivers, n: u64) -> Result<()> {
    let mut left = n;
    let mut buf = [0u8; 64];
    while left > 0 {
        let batch = left.min(INGRESS_BATCH);
        for _ in 0..batch {
            d.ingress_tx
                .send(b"skprof")
                .context("send to the ingress driver socket")?;
        }
        for i in 0..batch {
            d.ingress_rx.recv(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    anyhow!("datagram {i} of {batch} did not arrive at the ingress driver socket (lost?)")
                }
                _ => anyhow!(e).context("receive on the ingress driver socket"),
            })?;
        }
        left -= batch;
    }
    Ok(())
}

/// Calls connect() `n` times on the connect4 driver socket: each call runs
/// cgroup/connect4 once, synchronously.
pub fn drive_connect(d: &Drivers, n: u64) -> Result<()> {
    for _ in 0..n {
        d.connect
            .connect(d.connect_to)
            .context("connect() the connect4 driver socket")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_rows() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let text = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: {lo:08X}:1F90 {lo:08X}:9C40 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n"
        );
        let rows = parse_proc_net_tcp(&text);
        assert_eq!(
            rows,
            vec![TcpRow {
                local: "127.0.0.1:8080".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
                state: 6
            }]
        );
        let w: Vec<String> = Ipv6Addr::LOCALHOST
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let a = w.concat();
        let text6 = format!("header\n   0: {a}:0050 {a}:0009 0A 0\n");
        let rows = parse_proc_net_tcp(&text6);
        assert_eq!(rows[0].local, "[::1]:80".parse::<SocketAddr>().unwrap());
        assert_eq!(rows[0].state, 10);
    }
}
