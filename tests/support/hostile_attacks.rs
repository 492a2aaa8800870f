//! The attackers of the hostile-LAN tier (`tests/hostile_lan.rs`), each bounded in count and
//! time, each against the API on 127.0.0.1 from a chosen 127.0.0.0/8 source address:
//! refreshed idle connections, byte-by-byte heads (plain, TLS ClientHello, TLS head), slow
//! readers of large pipelined answers, wrong-token guessing, a `/ready` flood. Each returns
//! what it saw; the test decides what passes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::hostile::{
    BoxIo, HttpConn, Target, client_hello, held, jitter, request, server_sockets, tcp_state,
};

/// Counters of the idle-connection flood (shared with its tasks while it runs).
#[derive(Default, Debug)]
pub struct IdleStats {
    /// Connections established.
    pub connects: AtomicU64,
    /// Connects refused, timed out or handshakes failed.
    pub failed: AtomicU64,
    /// Connections the server closed (then re-opened).
    pub server_closed: AtomicU64,
    /// Open now (client view).
    pub open: AtomicI64,
    /// Most open at once (client view).
    pub max_open: AtomicI64,
    /// Keep-alive requests answered before idling.
    pub answered: AtomicU64,
}

impl IdleStats {
    fn opened(&self) {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_open.fetch_max(n, Ordering::Relaxed);
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Idle connections: `peers` lists each source address and how many connections it keeps.
/// Even-numbered connections never send a byte (no ClientHello either); odd ones send one
/// keep-alive `GET /health` (after the TLS handshake) and then idle. A connection the server
/// closes is opened again after 0.5-1.5 s; everything ends at `until`.
pub async fn idle_flood(t: Target, peers: Vec<(Ipv4Addr, usize)>, until: Instant, stats: Arc<IdleStats>) {
    let mut set = JoinSet::new();
    let mut i = 0u64;
    for (src, n) in peers {
        for _ in 0..n {
            let (t, stats) = (t.clone(), stats.clone());
            let k = i;
            i += 1;
            set.spawn(async move {
                // Ramp up over about 2 s.
                tokio::time::sleep(Duration::from_millis((k % 200) * 10)).await;
                for round in 0..2_000u64 {
                    if Instant::now() >= until {
                        break;
                    }
                    let left = until.saturating_duration_since(Instant::now());
                    let Ok(tcp) = t.tcp_from(src, None, Duration::from_secs(2).min(left)).await else {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(700) + jitter(k * 7919 + round, 600)).await;
                        continue;
                    };
                    stats.opened();
                    let mut conn = if k % 2 == 1 {
                        let io: Result<BoxIo, _> = if t.tls.is_some() {
                            t.tls_over(tcp, Duration::from_secs(3)).await.map(|s| Box::new(s) as BoxIo)
                        } else {
                            Ok(Box::new(tcp) as BoxIo)
                        };
                        let Ok(io) = io else {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            stats.open.fetch_sub(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(700) + jitter(k * 31 + round, 600))
                                .await;
                            continue;
                        };
                        let mut c = HttpConn::new(io);
                        let req = request("GET", "/health", &t.host(), &[], None);
                        if c.send_within(&req, Duration::from_secs(2)).await.is_ok()
                            && c.read_response(Duration::from_secs(3), false).await.is_ok()
                        {
                            stats.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        c
                    } else {
                        HttpConn::new(Box::new(tcp))
                    };
                    let left = until.saturating_duration_since(Instant::now());
                    let closed = conn.closed_within(left).await;
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    drop(conn);
                    if !closed {
                        break;
                    }
                    stats.server_closed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500) + jitter(k * 131 + round, 1_000)).await;
                }
            });
        }
    }
    while set.join_next().await.is_some() {}
}

/// What a byte-by-byte sender sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowKind {
    /// A plain-TCP request head.
    PlainHead,
    /// A TLS ClientHello.
    TlsHello,
    /// A request head inside an established TLS session (one record per byte).
    TlsHead,
}

/// How one slow sender ended.
#[derive(Clone, Debug)]
pub struct SlowOutcome {
    /// What it sent.
    pub kind: SlowKind,
    /// When the server cut it, from its first byte (the TLS handshake's first byte for
    /// [`SlowKind::TlsHead`]); `None`: still open at the bound.
    pub cut_after: Option<Duration>,
    /// Bytes sent.
    pub sent: usize,
    /// The status line's code when the server answered before closing.
    pub status: Option<u16>,
    /// A setup failure (connect or handshake), if any.
    pub setup_error: Option<String>,
}

/// One slow sender from `src`: a byte every `interval`, a head that would never end within
/// `bound`; ends when the server closes or answers, or at `bound`.
pub async fn slow_head(
    t: Target,
    src: Ipv4Addr,
    kind: SlowKind,
    interval: Duration,
    bound: Duration,
) -> SlowOutcome {
    let mut out = SlowOutcome { kind, cut_after: None, sent: 0, status: None, setup_error: None };
    let t0 = Instant::now();
    let tcp = match t.tcp_from(src, None, Duration::from_secs(3)).await {
        Ok(s) => s,
        Err(e) => {
            out.setup_error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let _ = tcp.set_nodelay(true);
    let head = format!(
        "GET /api/v1/monitoring/status HTTP/1.1\r\nHost: {}\r\nX-Slow: {}",
        t.host(),
        "a".repeat(400)
    )
    .into_bytes();
    let (io, bytes, first): (BoxIo, Vec<u8>, Instant) = match kind {
        SlowKind::PlainHead => (Box::new(tcp), head, Instant::now()),
        SlowKind::TlsHello => {
            let Some(cfg) = t.tls.clone() else {
                out.setup_error = Some("plain target".into());
                return out;
            };
            (Box::new(tcp), client_hello(&cfg), Instant::now())
        }
        SlowKind::TlsHead => match t.tls_over(tcp, Duration::from_secs(3)).await {
            Ok(s) => (Box::new(s), head, t0),
            Err(e) => {
                out.setup_error = Some(format!("handshake: {e}"));
                return out;
            }
        },
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    let deadline = first + bound;
    let mut got = Vec::new();
    let mut next = Instant::now();
    let mut buf = [0u8; 4096];
    for _ in 0..100_000 {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if now >= next && out.sent < bytes.len() {
            let b = &bytes[out.sent..out.sent + 1];
            let w = tokio::time::timeout(Duration::from_secs(2), async {
                wr.write_all(b).await?;
                wr.flush().await
            })
            .await;
            if !matches!(w, Ok(Ok(()))) {
                out.cut_after = Some(first.elapsed());
                break;
            }
            out.sent += 1;
            next += interval;
        }
        let wake = tokio::time::Instant::from_std(next.min(deadline));
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    out.cut_after = Some(first.elapsed());
                    break;
                }
                Ok(n) => {
                    got.extend_from_slice(&buf[..n.min(4096)]);
                    if got.len() > 64 * 1024 {
                        got.truncate(64 * 1024);
                    }
                }
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    out.status = status_of(&got);
    out
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(bytes.get(..12)?).ok()?;
    s.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The server-side sockets of the API port, refreshed every second by [`watch_sockets`].
#[derive(Default, Debug)]
pub struct SocketView {
    /// When the last scan was taken.
    pub at: Option<Instant>,
    /// Peer address → `(state, bytes queued to send)`.
    pub map: std::collections::HashMap<SocketAddr, (u8, u64)>,
    /// Most server-side sockets held at once (established or half-closed by the client).
    pub max_held: usize,
    /// Most bytes queued to send, summed over the sockets, at one scan.
    pub max_tx: u64,
    /// Scans taken.
    pub scans: usize,
}

/// Scans `/proc/net/tcp` every second for the API port until `until`.
pub async fn watch_sockets(port: u16, view: Arc<Mutex<SocketView>>, until: Instant) {
    for _ in 0..10_000 {
        if Instant::now() >= until {
            break;
        }
        let map = tokio::task::spawn_blocking(move || server_sockets(port)).await.unwrap_or_default();
        let h = held(&map);
        let tx = map.values().map(|(_, t)| *t).sum();
        {
            let mut v = view.lock().unwrap_or_else(|p| p.into_inner());
            v.max_held = v.max_held.max(h);
            v.max_tx = v.max_tx.max(tx);
            v.map = map;
            v.at = Some(Instant::now());
            v.scans += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How one slow reader ended.
#[derive(Clone, Debug, Default)]
pub struct ReaderOutcome {
    /// When the server let go of the connection (closed it, or its socket left ESTABLISHED),
    /// from the moment the requests were sent; `None`: still held at the bound.
    pub cut_after: Option<Duration>,
    /// Bytes read (1 a second).
    pub read: usize,
    /// Bytes the server had queued to this reader, at most.
    pub peak_queued: u64,
    /// The first answer's code (plain mode, once 12 bytes were read).
    pub status: Option<u16>,
    /// A setup failure, if any.
    pub setup_error: Option<String>,
}

/// A slow reader from `src`: a small receive buffer, the `paths` asked for in one pipelined
/// write, then one byte a second read from the TCP socket (under the TLS layer for HTTPS),
/// until the server lets go or `bound`.
pub async fn slow_reader(
    t: Target,
    src: Ipv4Addr,
    paths: Vec<&'static str>,
    bound: Duration,
    view: Arc<Mutex<SocketView>>,
) -> ReaderOutcome {
    let mut out = ReaderOutcome::default();
    let tcp = match t.tcp_from(src, Some(2048), Duration::from_secs(3)).await {
        Ok(s) => s,
        Err(e) => {
            out.setup_error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let me = match tcp.local_addr() {
        Ok(a) => a,
        Err(e) => {
            out.setup_error = Some(format!("local_addr: {e}"));
            return out;
        }
    };
    let mut reqs = Vec::new();
    for p in &paths {
        reqs.extend_from_slice(&request("GET", p, &t.host(), &[], None));
    }
    let tcp = if t.tls.is_some() {
        let mut tls = match t.tls_over(tcp, Duration::from_secs(3)).await {
            Ok(s) => s,
            Err(e) => {
                out.setup_error = Some(format!("handshake: {e}"));
                return out;
            }
        };
        let w = tokio::time::timeout(Duration::from_secs(3), async {
            tls.write_all(&reqs).await?;
            tls.flush().await
        })
        .await;
        if !matches!(w, Ok(Ok(()))) {
            out.setup_error = Some("could not send the requests".into());
            return out;
        }
        tls.into_inner().0
    } else {
        let mut tcp = tcp;
        if !matches!(tokio::time::timeout(Duration::from_secs(3), tcp.write_all(&reqs)).await, Ok(Ok(()))) {
            out.setup_error = Some("could not send the requests".into());
            return out;
        }
        tcp
    };
    let t0 = Instant::now();
    let mut first = Vec::new();
    for _ in 0..(bound.as_secs() + 2) {
        if t0.elapsed() >= bound {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut b = [0u8; 1];
        match tcp.try_read(&mut b) {
            Ok(0) => {
                out.cut_after = Some(t0.elapsed());
                break;
            }
            Ok(_) => {
                out.read += 1;
                if first.len() < 12 {
                    first.push(b[0]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                out.cut_after = Some(t0.elapsed());
                break;
            }
        }
        let v = view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = v.at.filter(|at| *at > t0 + Duration::from_millis(500)) {
            match v.map.get(&me) {
                Some((s, q)) if *s == tcp_state::ESTABLISHED || *s == tcp_state::CLOSE_WAIT => {
                    out.peak_queued = out.peak_queued.max(*q);
                }
                _ => {
                    out.cut_after = Some(at.saturating_duration_since(t0));
                    break;
                }
            }
        }
    }
    if t.tls.is_none() {
        out.status = status_of(&first);
    }
    out
}

/// What the guessing saw.
#[derive(Clone, Debug, Default)]
pub struct GuessStats {
    /// Wrong-credential requests written.
    pub sent: usize,
    /// Answers read.
    pub answered: usize,
    /// Requests the server held past the client's 3 s patience (throttled).
    pub held: usize,
    /// Requests lost when the server closed the connection before answering them.
    pub dropped: usize,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Connections opened (the server may close them).
    pub conns: usize,
    /// Connects that failed.
    pub connect_failed: usize,
    /// How long it ran.
    pub elapsed: Duration,
}

impl GuessStats {
    /// Guesses the server took (answered, or held past the client's patience).
    pub fn taken(&self) -> usize {
        self.answered + self.held
    }
}

/// Wrong credentials from `src` over `conns` keep-alive connections, `batch` requests pipelined
/// per write, until the server has taken `total` (answered them or held them past 3 s) or
/// `bound`: logins (`POST /api/v1/session` with a wrong token) and wrong bearer tokens
/// (`POST /api/v1/alerts/ack`), alternately. Requests lost to a closed connection are sent again.
pub async fn guess(
    t: Target,
    src: Ipv4Addr,
    total: usize,
    conns: usize,
    batch: usize,
    bound: Duration,
) -> GuessStats {
    let t0 = Instant::now();
    let deadline = t0 + bound;
    let seq = Arc::new(AtomicUsize::new(0));
    let out = Arc::new(Mutex::new(GuessStats::default()));
    let taken = |out: &Mutex<GuessStats>| out.lock().unwrap_or_else(|p| p.into_inner()).taken();
    let mut set = JoinSet::new();
    for c in 0..conns {
        let (t, seq, out) = (t.clone(), seq.clone(), out.clone());
        set.spawn(async move {
            for round in 0..100_000u64 {
                if Instant::now() >= deadline || taken(&out) >= total {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let io = match t.open_from(src, Duration::from_secs(2).min(left)).await {
                    Ok(io) => io,
                    Err(_) => {
                        out.lock().unwrap_or_else(|p| p.into_inner()).connect_failed += 1;
                        tokio::time::sleep(Duration::from_millis(100) + jitter(c as u64 * 17 + round, 200))
                            .await;
                        continue;
                    }
                };
                out.lock().unwrap_or_else(|p| p.into_inner()).conns += 1;
                let mut conn = HttpConn::new(io);
                for _ in 0..100_000 {
                    let have = taken(&out);
                    if Instant::now() >= deadline || have >= total {
                        break;
                    }
                    let n = batch.min(total - have);
                    let first = seq.fetch_add(n, Ordering::Relaxed);
                    let mut bytes = Vec::new();
                    for k in first..first + n {
                        let wrong = format!("wrong-guess-{k:08}-0123456789abcdef");
                        let req = if k % 2 == 0 {
                            let body = format!(r#"{{"token":"{wrong}"}}"#);
                            request("POST", "/api/v1/session", &t.host(), &[], Some(&body))
                        } else {
                            let h = vec![("Authorization".to_string(), format!("Bearer {wrong}"))];
                            request("POST", "/api/v1/alerts/ack", &t.host(), &h, Some("{}"))
                        };
                        bytes.extend_from_slice(&req);
                    }
                    if conn.send_within(&bytes, Duration::from_secs(2)).await.is_err() {
                        break;
                    }
                    out.lock().unwrap_or_else(|p| p.into_inner()).sent += n;
                    let mut broken = false;
                    for i in 0..n {
                        let left =
                            deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
                        match conn.read_response(Duration::from_secs(3).min(left), false).await {
                            Ok(r) => {
                                let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
                                g.answered += 1;
                                *g.statuses.entry(r.status).or_default() += 1;
                                if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                    g.dropped += n - i - 1;
                                    broken = true;
                                    break;
                                }
                            }
                            Err(e) => {
                                let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
                                if e.kind() == std::io::ErrorKind::TimedOut {
                                    g.held += n - i;
                                } else {
                                    g.dropped += n - i;
                                }
                                broken = true;
                                break;
                            }
                        }
                    }
                    if broken {
                        break;
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let mut g = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    g.elapsed = t0.elapsed();
    g
}

/// What the `/ready` flood saw.
#[derive(Clone, Debug, Default)]
pub struct FloodStats {
    /// Requests answered.
    pub answered: usize,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Connections opened.
    pub conns: usize,
    /// Requests with no answer (closed, timed out).
    pub failed: usize,
    /// Answer times (at most 200 000 kept).
    pub latencies: Vec<Duration>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// `conns` keep-alive connections from `src` asking `GET /ready` back to back for `dur`.
pub async fn ready_flood(t: Target, src: Ipv4Addr, conns: usize, dur: Duration) -> FloodStats {
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let out = Arc::new(Mutex::new(FloodStats::default()));
    let mut set = JoinSet::new();
    for c in 0..conns {
        let (t, out) = (t.clone(), out.clone());
        set.spawn(async move {
            for round in 0..10_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(io) = t.open_from(src, Duration::from_secs(2).min(left)).await else {
                    out.lock().unwrap_or_else(|p| p.into_inner()).failed += 1;
                    tokio::time::sleep(Duration::from_millis(50) + jitter(c as u64 * 13 + round, 100)).await;
                    continue;
                };
                out.lock().unwrap_or_else(|p| p.into_inner()).conns += 1;
                let mut conn = HttpConn::new(io);
                let req = request("GET", "/ready", &t.host(), &[], None);
                for _ in 0..1_000_000 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let s = Instant::now();
                    let r = match conn.send_within(&req, Duration::from_secs(2)).await {
                        Ok(()) => conn.read_response(Duration::from_secs(3), false).await,
                        Err(e) => Err(e),
                    };
                    let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(r) => {
                            g.answered += 1;
                            *g.statuses.entry(r.status).or_default() += 1;
                            if g.latencies.len() < 200_000 {
                                g.latencies.push(s.elapsed());
                            }
                            if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                break;
                            }
                        }
                        Err(_) => {
                            g.failed += 1;
                            break;
                        }
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let mut g = out.lock().unwrap_or_else(|p| p.into_inner()).clone();
    g.elapsed = t0.elapsed();
    g
}

/// `{code: count, ...}` as `401×9000 429×1000`.
pub fn statuses(m: &BTreeMap<u16, usize>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}x{v}")).collect::<Vec<_>>().join(" ")
}
