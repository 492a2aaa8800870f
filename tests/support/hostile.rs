//! Client-side plumbing of the hostile-LAN tier (`tests/hostile_lan.rs`): sockets bound to a
//! chosen 127.0.0.0/8 source address (plain or TLS), a small HTTP/1.1 response reader that
//! copes with pipelining and chunked bodies, the process sampler (`/proc/PID/status`: threads and
//! RSS every ~100 ms), the server-side socket states of `/proc/net/tcp`, the unit's limits read
//! from `systemd/tickguard.service`, the tick-to-action histogram of `/metrics`, and the summary
//! table.
//!
//! Every address used is checked to be in 127.0.0.0/8 ([`loopback`]); every loop is bounded by
//! a count and a deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest response body the reader keeps (the API's largest answer is far smaller).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest response head the reader accepts.
pub const MAX_HEAD: usize = 64 * 1024;

/// Any byte stream the clients use (plain TCP or TLS over it).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A boxed [`Io`].
pub type BoxIo = Box<dyn Io>;
/// A client TLS stream over TCP.
pub type TlsTcp = tokio_rustls::client::TlsStream<TcpStream>;

/// An Ethernet LAN's TCP segment size (1500-byte MTU), for the slow readers' sockets.
pub const LAN_MSS: i32 = 1448;

/// `TCP_MAXSEG` on a socket not yet connected: the segment size it announces, so the peer's
/// kernel sizes its send buffer as for a LAN peer rather than for loopback's 64 KiB segments.
pub fn clamp_mss(sock: &TcpSocket, mss: i32) -> io::Result<()> {
    let mss = u32::try_from(mss).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    socket2::SockRef::from(sock).set_tcp_mss(mss)
}

/// `addr` itself, after checking that it is in 127.0.0.0/8 (the tier never leaves loopback).
pub fn loopback(addr: Ipv4Addr) -> Ipv4Addr {
    assert_eq!(addr.octets()[0], 127, "the hostile tier uses 127.0.0.0/8 only, not {addr}");
    addr
}

/// `127.0.0.<last>`.
pub fn lo(last: u8) -> Ipv4Addr {
    loopback(Ipv4Addr::new(127, 0, 0, last))
}

/// The API under attack: its port on 127.0.0.1, the client TLS config (trusting its
/// self-signed certificate) when it serves HTTPS, and the right token.
#[derive(Clone)]
pub struct Target {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Client TLS config when the API serves HTTPS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The right token.
    pub token: String,
}

impl Target {
    /// The API's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The `Host` value of a legitimate client.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `"TLS"` or `"plain"`.
    pub fn mode(&self) -> &'static str {
        if self.tls.is_some() { "TLS" } else { "plain" }
    }

    /// A TCP connection from `src` (bound before connecting), with a small receive buffer when
    /// `rcvbuf` is set; at most `within`.
    pub async fn tcp_from(
        &self,
        src: Ipv4Addr,
        rcvbuf: Option<u32>,
        within: Duration,
    ) -> io::Result<TcpStream> {
        let src = loopback(src);
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((src, 0)))?;
        if let Some(n) = rcvbuf {
            sock.set_recv_buffer_size(n)?;
            // With a small receive buffer (a slow reader), a LAN's segment size too: loopback's
            // 64 KiB MSS lets the server's kernel queue megabytes per connection, which no
            // Ethernet peer would let it do.
            clamp_mss(&sock, LAN_MSS)?;
        }
        match tokio::time::timeout(within, sock.connect(self.addr())).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// The TLS handshake over `tcp`, at most `within`.
    pub async fn tls_over(&self, tcp: TcpStream, within: Duration) -> io::Result<TlsTcp> {
        let Some(cfg) = self.tls.clone() else {
            return Err(io::Error::other("plain target"));
        };
        let connector = tokio_rustls::TlsConnector::from(cfg);
        match tokio::time::timeout(within, connector.connect(server_name(), tcp)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
        }
    }

    /// A connection from `src` ready for HTTP (TLS handshake done when the API serves HTTPS),
    /// at most `within` in all.
    pub async fn open_from(&self, src: Ipv4Addr, within: Duration) -> io::Result<BoxIo> {
        let t0 = Instant::now();
        let tcp = self.tcp_from(src, None, within).await?;
        let _ = tcp.set_nodelay(true);
        if self.tls.is_some() {
            let left = within.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
            Ok(Box::new(self.tls_over(tcp, left).await?))
        } else {
            Ok(Box::new(tcp))
        }
    }

    /// One request on a fresh connection from `src` (`Connection: close`), the token sent when
    /// `auth`; the answer and the time from connect to the whole answer.
    pub async fn call(
        &self,
        src: Ipv4Addr,
        method: &str,
        path: &str,
        auth: bool,
        body: Option<&str>,
        within: Duration,
    ) -> Result<(Resp, Duration), String> {
        let t0 = Instant::now();
        let io = self.open_from(src, within).await.map_err(|e| format!("connect: {e}"))?;
        let mut c = HttpConn::new(io);
        let mut headers: Vec<(String, String)> = vec![("Connection".into(), "close".into())];
        if auth {
            headers.push(("Authorization".into(), format!("Bearer {}", self.token)));
        }
        let req = request(method, path, &self.host(), &headers, body);
        c.send(&req).await.map_err(|e| format!("send: {e}"))?;
        let left = within.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
        let r = c.read_response(left, method == "HEAD").await.map_err(|e| format!("answer: {e}"))?;
        Ok((r, t0.elapsed()))
    }
}

impl Target {
    /// Writes `bytes` on a fresh connection from `src` and reads up to `n` answers in order,
    /// at most `within` in all; the answers read and what stopped the reading early, if anything.
    pub async fn exchange(
        &self,
        src: Ipv4Addr,
        bytes: &[u8],
        n: usize,
        within: Duration,
    ) -> (Vec<Resp>, Option<String>) {
        let t0 = Instant::now();
        let io = match self.open_from(src, within).await {
            Ok(io) => io,
            Err(e) => return (Vec::new(), Some(format!("connect: {e}"))),
        };
        let mut c = HttpConn::new(io);
        if let Err(e) = c.send_within(bytes, within).await {
            return (Vec::new(), Some(format!("send: {e}")));
        }
        let mut out = Vec::new();
        for _ in 0..n {
            let left = within.saturating_sub(t0.elapsed()).max(Duration::from_millis(1));
            match c.read_response(left, false).await {
                Ok(r) => out.push(r),
                Err(e) => {
                    let k = out.len() + 1;
                    return (out, Some(format!("answer {k}: {e}")));
                }
            }
        }
        (out, None)
    }
}

/// The TLS server name the clients ask for (the certificate covers `localhost` and 127.0.0.1).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap_or_else(|_| ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()))
}

/// A self-signed certificate for `localhost` and `127.0.0.1` written to `dir/api.crt` and
/// `dir/api.key`, and a client config trusting exactly it.
pub fn self_signed_api_cert(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, Arc<rustls::ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write api.crt");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write api.key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("trust the API certificate");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (cert, key, Arc::new(cfg))
}

/// The bytes of a ClientHello for `cfg` (what a TLS client sends first), for sending slowly.
pub fn client_hello(cfg: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(cfg.clone(), server_name()).expect("client connection");
    let mut out = Vec::new();
    while conn.wants_write() {
        if conn.write_tls(&mut out).is_err() {
            break;
        }
    }
    out
}

/// An HTTP/1.1 request's bytes (`Content-Length` added for a body).
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        s.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    s.push_str("\r\n");
    if let Some(b) = body {
        s.push_str(b);
    }
    s.into_bytes()
}

/// A response.
#[derive(Clone, Debug, Default)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value (name case-free).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// One HTTP/1.1 client connection: writes requests, reads responses in order.
pub struct HttpConn {
    io: BoxIo,
    buf: Vec<u8>,
    eof: bool,
}

impl HttpConn {
    /// Wraps a connection.
    pub fn new(io: BoxIo) -> HttpConn {
        HttpConn { io, buf: Vec::new(), eof: false }
    }

    /// Writes `bytes` (and flushes).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes `bytes` with a deadline.
    pub async fn send_within(&mut self, bytes: &[u8], within: Duration) -> io::Result<()> {
        match tokio::time::timeout(within, self.send(bytes)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out()),
        }
    }

    async fn fill(&mut self, deadline: tokio::time::Instant) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Err(timed_out()),
        };
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn need(&mut self, n: usize, deadline: tokio::time::Instant) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill(deadline).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-response"));
            }
        }
        Ok(())
    }

    async fn line(&mut self, deadline: tokio::time::Instant) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::other("line too long"));
            }
            if self.fill(deadline).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed mid-line"));
            }
        }
    }

    /// Reads one whole response (head and body), at most `within`; `head_only` for an answer to
    /// `HEAD`.
    pub async fn read_response(&mut self, within: Duration, head_only: bool) -> io::Result<Resp> {
        let deadline = tokio::time::Instant::now() + within;
        let (status, headers, used) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 96];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect::<Vec<_>>();
                    break (r.code.unwrap_or(0), headers, n);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(io::Error::other("response head too large"));
                    }
                    if self.fill(deadline).await? == 0 {
                        let e =
                            if self.buf.is_empty() { "closed before any answer" } else { "closed mid-head" };
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
                    }
                }
                Err(e) => return Err(io::Error::other(format!("bad response head: {e}"))),
            }
        };
        self.buf.drain(..used);
        let mut resp = Resp { status, headers, body: Vec::new() };
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        let chunked =
            resp.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            loop {
                let size_line = self.line(deadline).await?;
                let hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(hex, 16).map_err(|_| io::Error::other("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to an empty line.
                    for _ in 0..64 {
                        if self.line(deadline).await?.is_empty() {
                            return Ok(resp);
                        }
                    }
                    return Err(io::Error::other("too many trailers"));
                }
                if resp.body.len() + size > MAX_BODY {
                    return Err(io::Error::other("body too large"));
                }
                self.need(size + 2, deadline).await?;
                resp.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        }
        if let Some(cl) = resp.header("content-length") {
            let n: usize = cl.trim().parse().map_err(|_| io::Error::other("bad content-length"))?;
            if n > MAX_BODY {
                return Err(io::Error::other("body too large"));
            }
            self.need(n, deadline).await?;
            resp.body = self.buf.drain(..n).collect();
            return Ok(resp);
        }
        // Until the close.
        while self.fill(deadline).await? > 0 {
            if self.buf.len() > MAX_BODY {
                return Err(io::Error::other("body too large"));
            }
        }
        resp.body = std::mem::take(&mut self.buf);
        Ok(resp)
    }

    /// Waits until the peer closes (EOF or reset), at most `within`; true when it closed.
    /// Bytes that arrive meanwhile are dropped.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        for _ in 0..100_000 {
            self.buf.clear();
            match self.fill(deadline).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
        false
    }
}

/// The process's figures sampled every ~100 ms.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Samples taken.
    pub n: usize,
    /// Most threads seen.
    pub max_threads: u64,
    /// Most RSS seen (KiB).
    pub max_rss_kib: u64,
    /// The process vanished (or turned zombie) while sampled.
    pub died: bool,
    /// Samples over the thread limit.
    pub over_threads: usize,
    /// Samples over the memory limit.
    pub over_rss: usize,
}

/// Samples `/proc/PID/status` every ~100 ms on its own thread until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Samples>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// `(threads, rss KiB, state char)` of a process, from `/proc/PID/status`.
pub fn proc_status(pid: u32) -> Option<(u64, u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut threads = None;
    let mut rss = 0;
    let mut state = '?';
    for l in text.lines() {
        if let Some(v) = l.strip_prefix("Threads:") {
            threads = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("VmRSS:") {
            rss = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("State:") {
            state = v.trim().chars().next().unwrap_or('?');
        }
    }
    Some((threads?, rss, state))
}

impl Sampler {
    /// Starts sampling `pid` against `tasks_max` threads and `memory_max` bytes; stops by
    /// itself after `bound`.
    pub fn start(pid: u32, tasks_max: u64, memory_max: u64, bound: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Samples::default()));
        let (s, l) = (stop.clone(), live.clone());
        let handle = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < bound {
                let mut g = l.lock().unwrap_or_else(|p| p.into_inner());
                match proc_status(pid) {
                    Some((threads, rss, state)) if state != 'Z' && state != 'X' => {
                        g.n += 1;
                        g.max_threads = g.max_threads.max(threads);
                        g.max_rss_kib = g.max_rss_kib.max(rss);
                        if threads >= tasks_max {
                            g.over_threads += 1;
                        }
                        if rss * 1024 >= memory_max {
                            g.over_rss += 1;
                        }
                    }
                    _ => g.died = true,
                }
                drop(g);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler { stop, live, handle: Some(handle) }
    }

    /// The figures so far.
    pub fn now(&self) -> Samples {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops sampling; the figures.
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.now()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `TasksMax` and `MemoryMax` (bytes) of the shipped unit `systemd/tickguard.service`, read now.
pub fn unit_limits() -> (u64, u64) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/tickguard.service");
    let text = std::fs::read_to_string(&path).expect("read systemd/tickguard.service");
    let mut tasks = None;
    let mut mem = None;
    for l in text.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("TasksMax=") {
            tasks = v.trim().parse::<u64>().ok();
        } else if let Some(v) = l.strip_prefix("MemoryMax=") {
            mem = parse_bytes(v.trim());
        }
    }
    (tasks.expect("TasksMax=N in the unit"), mem.expect("MemoryMax=N[KMG] in the unit"))
}

/// `32M` → bytes (systemd's base-1024 suffixes).
pub fn parse_bytes(v: &str) -> Option<u64> {
    let (num, mul) = match v.chars().last()? {
        'K' | 'k' => (&v[..v.len() - 1], 1u64 << 10),
        'M' | 'm' => (&v[..v.len() - 1], 1 << 20),
        'G' | 'g' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// `(le="0.01" bucket, count)` of `tickguard_tick_to_action_seconds` in a `/metrics` text.
pub fn tick_to_action(metrics: &str) -> Option<(u64, u64)> {
    let mut le10 = None;
    let mut count = None;
    for l in metrics.lines() {
        if let Some(v) = l.strip_prefix("tickguard_tick_to_action_seconds_bucket{le=\"0.01\"} ") {
            le10 = v.trim().parse::<f64>().ok().map(|f| f as u64);
        } else if let Some(v) = l.strip_prefix("tickguard_tick_to_action_seconds_count ") {
            count = v.trim().parse::<f64>().ok().map(|f| f as u64);
        }
    }
    Some((le10?, count?))
}

/// TCP states of `/proc/net/tcp`.
pub mod tcp_state {
    /// ESTABLISHED.
    pub const ESTABLISHED: u8 = 0x01;
    /// CLOSE_WAIT (the peer closed, the owner did not yet).
    pub const CLOSE_WAIT: u8 = 0x08;
}

/// The server side of every connection to `127.0.0.1:port` in `/proc/net/tcp`: peer address
/// → `(state, bytes queued to send)`. Sockets still in the accept queue count too.
pub fn server_sockets(port: u16) -> HashMap<SocketAddr, (u8, u64)> {
    let mut out = HashMap::new();
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return out };
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (Some(local), Some(remote)) = (hex_addr(f[1]), hex_addr(f[2])) else { continue };
        if local.port() != port || local.ip() != std::net::IpAddr::V4(Ipv4Addr::LOCALHOST) {
            continue;
        }
        let state = u8::from_str_radix(f[3], 16).unwrap_or(0);
        let tx = f[4].split(':').next().and_then(|t| u64::from_str_radix(t, 16).ok()).unwrap_or(0);
        if state != 0x0A {
            out.insert(remote, (state, tx));
        }
    }
    out
}

fn hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // /proc/net/tcp prints the address as the host-order u32 of network-order bytes.
    let b = ip.to_le_bytes();
    Some(SocketAddr::from((Ipv4Addr::new(b[0], b[1], b[2], b[3]), port)))
}

/// Server-side sockets the server holds (established or half-closed by the client).
pub fn held(states: &HashMap<SocketAddr, (u8, u64)>) -> usize {
    states.values().filter(|(s, _)| *s == tcp_state::ESTABLISHED || *s == tcp_state::CLOSE_WAIT).count()
}

/// One row of the summary table.
#[derive(Clone, Debug)]
pub struct Row {
    /// The attack or check.
    pub attack: String,
    /// Passed?
    pub ok: bool,
    /// Its figures.
    pub figures: String,
}

/// The summary table of one mode, as text.
pub fn table(mode: &str, rows: &[Row]) -> String {
    let w = rows.iter().map(|r| r.attack.len()).max().unwrap_or(6).max(6);
    let mut s = format!("hostile LAN, API over {mode}\n  {:<w$}  result  figures\n", "attack");
    for r in rows {
        s.push_str(&format!(
            "  {:<w$}  {:<6}  {}\n",
            r.attack,
            if r.ok { "pass" } else { "FAIL" },
            r.figures
        ));
    }
    s
}

/// A tiny deterministic jitter source (xorshift), so the attackers do not move in lock-step.
pub fn jitter(seed: u64, max_ms: u64) -> Duration {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(x % max_ms.max(1))
}

/// Percentile `p` (0..=100) of durations (sorted in place); zero when empty.
pub fn percentile(v: &mut [Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() - 1) * p.min(100)) / 100;
    v[i]
}

/// `n` in milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The binary under test: `HOSTILE_BIN` when set (e.g. `target/release/tickguard`, or an older
/// build to compare with), else cargo's build of this tree.
pub fn binary() -> std::path::PathBuf {
    match std::env::var_os("HOSTILE_BIN") {
        Some(p) if !p.is_empty() => p.into(),
        _ => env!("CARGO_BIN_EXE_tickguard").into(),
    }
}

/// A running `tickguard run` of [`binary`], its stderr collected line by line; killed on drop.
pub struct Proc {
    /// The process.
    pub child: std::process::Child,
    /// Its stderr.
    pub log: crate::support::app::Log,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `tickguard run --config <config>`; `HOSTILE_ECHO` set echoes its log.
    pub fn start(config: &std::path::Path) -> Proc {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut cmd = Command::new(binary());
        cmd.args(["run", "--config"]).arg(config);
        for (k, _) in std::env::vars() {
            if k.starts_with("TICKGUARD_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "warn,tickguard=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tickguard");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = crate::support::app::Log::default();
        let sink = log.clone();
        let echo = std::env::var_os("HOSTILE_ECHO").is_some();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("{line}");
                }
                sink.push(line);
            }
        });
        Proc { child, log, reader: Some(reader) }
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits (5 s at most) for the exit; the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// How it ended, if it did (`exit code N` or `signal N`).
    pub fn ended(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt;
        let s = self.child.try_wait().ok()??;
        Some(match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "ended".into(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
