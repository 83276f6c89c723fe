//! The exporter's HTTP endpoint: a small HTTP/1.1 server on std, serving
//! the exposition the collector last rendered.
//!
//! Why hand-rolled: three read-only routes and one response per connection
//! need no framework, and every scrape is a copy of bytes rendered once per
//! collection (never a map read), so a scrape costs the same whatever the
//! scrape rate. A fixed pool of worker threads serves connections from a
//! bounded queue; when the queue is full the acceptor answers 503 at once
//! instead of letting connections pile up (memory stays bounded).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// Content types of the two text formats.
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8192;
/// Connections waiting for a worker, at most.
const QUEUE: usize = 1024;
/// A client that sends nothing, or reads nothing, is dropped after this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Pending connections the kernel queues for the acceptor. std's
/// `TcpListener::bind` asks for 128: a burst of scrapers (or a slow,
/// preempted acceptor) past that has SYNs dropped and waits a whole SYN
/// retransmission (1 s, then 3 s). The kernel caps this at somaxconn.
pub const BACKLOG: i32 = 4096;

/// Binds a listening socket with [`BACKLOG`] (and SO_REUSEADDR, so a
/// restarted daemon need not wait for TIME_WAIT to clear).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// A rendered body, gzipped on first demand (once per collection).
#[derive(Debug, Default)]
pub struct Body {
    pub bytes: Vec<u8>,
    gz: OnceLock<Vec<u8>>,
}

impl Body {
    pub fn new(bytes: Vec<u8>) -> Body {
        Body {
            bytes,
            gz: OnceLock::new(),
        }
    }

    fn gzipped(&self) -> &[u8] {
        self.gz.get_or_init(|| gzip(&self.bytes))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use flate2::{write::GzEncoder, Compression};
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 8), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// What the server serves: the last exposition, and whether the last
/// collection worked (`/healthz`).
#[derive(Debug, Default)]
pub struct Published {
    pub openmetrics: Body,
    pub prometheus: Body,
    pub healthy: bool,
}

/// Shared between the collector (writer) and the workers (readers).
pub type Shared = Arc<RwLock<Arc<Published>>>;

/// The parts of a request the routes look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub accept: String,
    pub accept_encoding: String,
}

/// Parses a request head (up to the blank line). `None`: not HTTP.
pub fn parse_request(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    let version = first.next()?;
    if !version.starts_with("HTTP/1.") || first.next().is_some() || method.is_empty() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let (mut accept, mut accept_encoding) = (String::new(), String::new());
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("accept") {
            accept = v.trim().to_string();
        } else if k.eq_ignore_ascii_case("accept-encoding") {
            accept_encoding = v.trim().to_string();
        }
    }
    Some(Request {
        method,
        path,
        accept,
        accept_encoding,
    })
}

/// Whether a comma-separated header lists `token` with a non-zero weight.
fn accepts(header: &str, token: &str) -> bool {
    header.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        let zero = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f64>().ok())
                .is_some_and(|q| q == 0.0)
        });
        name.eq_ignore_ascii_case(token) && !zero
    })
}

/// A response, before the bytes go out.
#[derive(Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'static str,
    pub gzip: bool,
    pub body: &'a [u8],
    /// HEAD: headers only.
    pub head_only: bool,
}

/// Routes a request (pure: the content is given).
pub fn respond<'a>(req: &Request, content: &'a Published) -> Response<'a> {
    let plain = |status, body: &'static [u8]| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        gzip: false,
        body,
        head_only: req.method == "HEAD",
    };
    if req.method != "GET" && req.method != "HEAD" {
        return plain(405, b"only GET and HEAD\n");
    }
    match req.path.as_str() {
        "/metrics" => {
            let openmetrics = accepts(&req.accept, "application/openmetrics-text");
            let body = if openmetrics {
                &content.openmetrics
            } else {
                &content.prometheus
            };
            let gzip = accepts(&req.accept_encoding, "gzip");
            Response {
                status: 200,
                content_type: if openmetrics {
                    OPENMETRICS_TYPE
                } else {
                    PROMETHEUS_TYPE
                },
                gzip,
                body: if gzip { body.gzipped() } else { &body.bytes },
                head_only: req.method == "HEAD",
            }
        }
        "/" => plain(
            200,
            b"skprof exporter: metrics at /metrics, health at /healthz\n",
        ),
        "/healthz" if content.healthy => plain(200, b"ok\n"),
        "/healthz" => plain(503, b"the last collection failed\n"),
        _ => plain(404, b"not found: try /metrics\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The response's bytes on the wire.
pub fn encode_response(r: &Response<'_>) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cache-Control: no-store\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.gzip {
        head += "Content-Encoding: gzip\r\n";
    }
    if r.status == 405 {
        head += "Allow: GET, HEAD\r\n";
    }
    head += "\r\n";
    let mut out = head.into_bytes();
    if !r.head_only {
        out.extend_from_slice(r.body);
    }
    out
}

/// Reads a request head: up to the blank line, at most [`MAX_HEAD`] bytes.
fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn serve(mut s: TcpStream, shared: &Shared) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let bytes = match read_head(&mut s).as_deref().and_then(parse_request) {
        Some(req) => {
            // Hold the lock only to clone the Arc: a slow client never
            // blocks the collector's next publish.
            let content = shared.read().map(|g| Arc::clone(&g)).ok();
            match content {
                Some(c) => encode_response(&respond(&req, &c)),
                None => encode_response(&Response {
                    status: 503,
                    content_type: "text/plain; charset=utf-8",
                    gzip: false,
                    body: b"no exposition\n",
                    head_only: false,
                }),
            }
        }
        None => encode_response(&Response {
            status: 400,
            content_type: "text/plain; charset=utf-8",
            gzip: false,
            body: b"bad request\n",
            head_only: false,
        }),
    };
    // A client that went away is not our problem.
    let _ = s.write_all(&bytes);
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// A running server: an acceptor thread and a pool of workers.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Requests served and refused (queue full).
    pub served: Arc<AtomicU64>,
    pub refused: Arc<AtomicU64>,
}

impl Server {
    /// Serves `shared` on `listener` with `workers` threads.
    pub fn start(listener: TcpListener, shared: Shared, workers: usize) -> Result<Server> {
        let addr = listener
            .local_addr()
            .context("read the listening address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (tx, rx): (SyncSender<TcpStream>, Receiver<TcpStream>) = mpsc::sync_channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let (rx, shared, served) = (Arc::clone(&rx), Arc::clone(&shared), Arc::clone(&served));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("skprof-http-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for the next
                        // connection; a closed channel ends the worker.
                        let next = rx.lock().map(|r| r.recv());
                        match next {
                            Ok(Ok(s)) => {
                                serve(s, &shared);
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => break,
                        }
                    })
                    .context("start an HTTP worker thread")?,
            );
        }
        let (stop2, refused2) = (Arc::clone(&stop), Arc::clone(&refused));
        threads.push(
            std::thread::Builder::new()
                .name("skprof-http-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if stop2.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(s) = conn else { continue };
                        match tx.try_send(s) {
                            Ok(()) => {}
                            Err(TrySendError::Full(mut s)) => {
                                refused2.fetch_add(1, Ordering::Relaxed);
                                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                                let _ = s.write_all(&encode_response(&Response {
                                    status: 503,
                                    content_type: "text/plain; charset=utf-8",
                                    gzip: false,
                                    body: b"busy\n",
                                    head_only: false,
                                }));
                            }
                            Err(TrySendError::Disconnected(_)) => break,
                        }
                    }
                    // Dropping `tx` here ends the workers once the queue
                    // is drained.
                })
                .context("start the HTTP acceptor thread")?,
        );
        Ok(Server {
            addr,
            stop,
            threads,
            served,
            refused,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, finishes the queued requests, joins the threads.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor blocked in accept(): connect to ourselves (a
        // wildcard address is reached through loopback).
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Published {
        Published {
            openmetrics: Body::new(b"om # EOF\n".to_vec()),
            prometheus: Body::new(b"text\n".to_vec()),
            healthy: true,
        }
    }

    fn req(method: &str, path: &str, accept: &str, enc: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            accept: accept.into(),
            accept_encoding: enc.into(),
        }
    }

    #[test]
    fn parses_prometheus_scrape_requests() {
        let head = "GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9435\r\nAccept: \
                    application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\
                    accept-encoding: gzip\r\nUser-Agent: Prometheus/2.42.0";
        let r = parse_request(head).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
        assert!(accepts(&r.accept, "application/openmetrics-text"));
        assert!(accepts(&r.accept_encoding, "gzip"));
        assert!(!accepts("gzip;q=0, identity", "gzip"));
        assert_eq!(parse_request("garbage"), None);
        assert_eq!(parse_request("GET / HTTP/1.1 extra"), None);
        assert_eq!(parse_request("GET / SPDY/3"), None);
    }

    #[test]
    fn negotiates_format_and_encoding() {
        let p = published();
        let om = respond(
            &req("GET", "/metrics", "application/openmetrics-text", ""),
            &p,
        );
        assert_eq!((om.status, om.content_type), (200, OPENMETRICS_TYPE));
        assert_eq!(om.body, b"om # EOF\n");
        let text = respond(&req("GET", "/metrics", "*/*", ""), &p);
        assert_eq!(text.content_type, PROMETHEUS_TYPE);
        assert_eq!(text.body, b"text\n");
        let gz = respond(&req("GET", "/metrics", "", "gzip, deflate"), &p);
        assert!(gz.gzip);
        let mut d = flate2::read::GzDecoder::new(gz.body);
        let mut back = String::new();
        d.read_to_string(&mut back).unwrap();
        assert_eq!(back, "text\n");
        let head = respond(&req("HEAD", "/metrics", "", ""), &p);
        let wire = encode_response(&head);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("Content-Length: 5\r\n") && wire.ends_with("\r\n\r\n"));
    }

    #[test]
    fn routes_and_errors() {
        let mut p = published();
        assert_eq!(respond(&req("POST", "/metrics", "", ""), &p).status, 405);
        assert_eq!(respond(&req("GET", "/nope", "", ""), &p).status, 404);
        assert_eq!(respond(&req("GET", "/healthz", "", ""), &p).status, 200);
        p.healthy = false;
        assert_eq!(respond(&req("GET", "/healthz", "", ""), &p).status, 503);
        let wire = encode_response(&respond(&req("PUT", "/", "", ""), &p));
        assert!(String::from_utf8(wire)
            .unwrap()
            .starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    }

    /// The server for real on loopback: concurrent clients, each response
    /// whole, and shutdown joins every thread.
    #[test]
    fn serves_concurrent_clients_then_shuts_down() {
        let shared: Shared = Arc::new(RwLock::new(Arc::new(published())));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let server = Server::start(listener, Arc::clone(&shared), 3).unwrap();
        let addr = server.local_addr();
        let clients: Vec<_> = (0..40)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(
                        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text\r\n\r\n",
                    )
                    .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    out
                })
            })
            .collect();
        for c in clients {
            let out = c.join().unwrap();
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
            assert!(out.ends_with("\r\n\r\nom # EOF\n"), "{out}");
        }
        // A new exposition is served once published.
        *shared.write().unwrap() = Arc::new(Published {
            openmetrics: Body::new(b"two\n".to_vec()),
            ..published()
        });
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("\r\n\r\ntwo\n"), "{out}");
        // Counted once the worker is done: read after the threads joined.
        let served = Arc::clone(&server.served);
        server.shutdown();
        assert_eq!(served.load(Ordering::Relaxed), 41);
        assert!(TcpStream::connect(addr).is_err(), "still listening");
    }
}
