//! Load generator of `scripts/bench-relay` (issue 15): the real `tickguard run` binary guarding
//! its positions over a bench-feed style Binance feed **and** serving the LAN relay to 200
//! WebSocket clients, each subscribed to all 50 relayed symbols, against a loopback fake
//! Binance (TLS WebSocket for the feed and for the relay's upstream, TLS REST for the relay's
//! `klines` backfill).
//!
//! ```text
//! relay_load --bin target/release/tickguard [--warmup 5] [--window 20] [--clients 200]
//!            [--symbols 50] [--quote-hz 10] [--trade-hz 5] [--instruments 256]
//!            [--positions 256] [--crossings 256] [--feed-rate 2000] [--tick-ms 1]
//!            [--phases both|relay|guard]
//!            [--dir target/bench-relay]
//! ```
//!
//! Two phases, each with a fresh binary and the same guard feed: `relay` (relay enabled, its
//! upstream sending `--quote-hz` bookTicker quotes and `--trade-hz` trades per symbol per second
//! plus one 1m kline update per symbol per second, and the clients reading as fast as they can)
//! and `guard` (relay disabled, no clients). The guard's feed pushes `--feed-rate` frames/s of
//! the bench-feed frames (`tests/support/binance_load.rs`) and, during the window, drives
//! `--crossings` positions through their stops (the binary's tick-to-action histogram fills
//! from those; its `stats` line at SIGTERM is read as in bench-feed).
//!
//! Latency: the relay's upstream writes quote number `n` with bid `100.<n as 8 digits>` and
//! notes the instant it wrote it; a client maps the bid it receives back to `n`, so the figure
//! is upstream frame written -> client message read, both ends in this process. Clients come
//! from 127.0.1.x source addresses, 30 a source (the relay admits 32 per peer address).
//!
//! Only 127.0.0.0/8 is contacted; every loop is bounded in count and time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[path = "../tests/support/binance_load.rs"]
mod binance_load;
#[allow(dead_code)]
#[path = "../tests/support/ca.rs"]
mod ca;
#[allow(dead_code)]
#[path = "../tests/support/fake_binance.rs"]
mod fake_binance;
#[allow(dead_code)]
#[path = "../tests/support/json.rs"]
mod json;
#[allow(dead_code)]
#[path = "../tests/support/net.rs"]
mod net;
#[allow(dead_code)]
#[path = "../tests/support/wsio.rs"]
mod wsio;

use binance_load::{book_ticker, field, frame, ring, symbol};
use fake_binance::{FakeBinance, Kline};
use wsio::WsStream;

/// Clients per source address (the relay admits `limits::RELAY_CLIENTS_PER_PEER` = 32).
const PER_SOURCE: usize = 30;
/// Latency samples one client keeps at most.
const SAMPLES_PER_CLIENT: usize = 400_000;

struct Args {
    bin: PathBuf,
    dir: PathBuf,
    warmup: f64,
    window: f64,
    clients: usize,
    symbols: usize,
    quote_hz: f64,
    trade_hz: f64,
    instruments: usize,
    positions: usize,
    crossings: usize,
    feed_rate: f64,
    /// The feeds' send tick: what is due is written once per tick.
    tick: Duration,
    phases: String,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bin: PathBuf::from("target/release/tickguard"),
        dir: PathBuf::from("target/bench-relay"),
        warmup: 5.0,
        window: 20.0,
        clients: 200,
        symbols: 50,
        quote_hz: 10.0,
        trade_hz: 5.0,
        instruments: 256,
        positions: 256,
        crossings: 256,
        feed_rate: 2000.0,
        tick: Duration::from_millis(1),
        phases: "both".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let (k, val) = (&pair[0], pair.get(1).ok_or_else(|| format!("{} needs a value", pair[0]))?);
        let num = || val.parse::<f64>().map_err(|_| format!("{k}: not a number: {val}"));
        match k.as_str() {
            "--bin" => a.bin = PathBuf::from(val),
            "--dir" => a.dir = PathBuf::from(val),
            "--warmup" => a.warmup = num()?,
            "--window" => a.window = num()?,
            "--clients" => a.clients = num()? as usize,
            "--symbols" => a.symbols = num()? as usize,
            "--quote-hz" => a.quote_hz = num()?,
            "--trade-hz" => a.trade_hz = num()?,
            "--instruments" => a.instruments = num()? as usize,
            "--positions" => a.positions = num()? as usize,
            "--crossings" => a.crossings = num()? as usize,
            "--feed-rate" => a.feed_rate = num()?,
            "--tick-ms" => a.tick = Duration::from_secs_f64(num()?.clamp(0.1, 1000.0) / 1000.0),
            "--phases" => a.phases = val.clone(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let ok = (1..=250).contains(&a.clients)
        && (1..=64).contains(&a.symbols)
        && a.crossings <= a.positions
        && a.positions <= a.instruments
        && a.positions <= 256
        && a.instruments <= 1024
        && (1.0..=120.0).contains(&a.window)
        && (0.0..=60.0).contains(&a.warmup)
        && (0.0..=100.0).contains(&a.quote_hz)
        && (0.0..=100.0).contains(&a.trade_hz)
        && (0.0..=200_000.0).contains(&a.feed_rate)
        && ["both", "relay", "guard"].contains(&a.phases.as_str());
    if !ok {
        return Err("need clients 1..=250, symbols 1..=64, crossings <= positions <= min(256, instruments), instruments <= 1024, \
                    window 1..=120 s, warmup <= 60 s, rates within bounds, phases both|relay|guard"
            .into());
    }
    Ok(a)
}

/// Everything the feeds, the clients and the driver share in one phase.
struct Shared {
    base: Instant,
    stop: AtomicBool,
    window_start: OnceLock<Instant>,
    in_window: AtomicBool,
    /// Quote number -> nanoseconds after `base` it was written, plus one (0: not written).
    sent_at: Vec<AtomicU64>,
    quotes_sent: AtomicU64,
    trades_sent: AtomicU64,
    klines_sent: AtomicU64,
    feed_frames: AtomicU64,
    crossings_sent: AtomicU64,
    feed_acks: AtomicU64,
    relay_acks: AtomicU64,
    joined: AtomicU64,
    delivered: AtomicU64,
    delivered_quotes: AtomicU64,
    unmatched_quotes: AtomicU64,
    closes_1008: AtomicU64,
    other_closes: AtomicU64,
    byes: AtomicU64,
    errors: AtomicU64,
    ended: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl Shared {
    fn new(quote_capacity: usize) -> Shared {
        Shared {
            base: Instant::now(),
            stop: AtomicBool::new(false),
            window_start: OnceLock::new(),
            in_window: AtomicBool::new(false),
            sent_at: (0..quote_capacity).map(|_| AtomicU64::new(0)).collect(),
            quotes_sent: AtomicU64::new(0),
            trades_sent: AtomicU64::new(0),
            klines_sent: AtomicU64::new(0),
            feed_frames: AtomicU64::new(0),
            crossings_sent: AtomicU64::new(0),
            feed_acks: AtomicU64::new(0),
            relay_acks: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivered_quotes: AtomicU64::new(0),
            unmatched_quotes: AtomicU64::new(0),
            closes_1008: AtomicU64::new(0),
            other_closes: AtomicU64::new(0),
            byes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
        }
    }
    fn n(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// (`VmHWM`, `VmRSS`) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_default();
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (kib("VmHWM:"), kib("VmRSS:"))
}

/// CPU clock ticks (user + system) of a process's threads: (threads named `tg-relay*`, all).
/// `pid` 0: this process.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let base = if pid == 0 { "/proc/self/task".to_string() } else { format!("/proc/{pid}/task") };
    let (mut relay, mut all) = (0, 0);
    for t in std::fs::read_dir(&base).into_iter().flatten().flatten().take(4096) {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |x| x.1);
        let f: Vec<u64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
        let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
        all += ticks;
        if comm.starts_with("tg-relay") {
            relay += ticks;
        }
    }
    (relay, all)
}

/// The `id` of a SUBSCRIBE request.
fn subscribe_id(text: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v["method"] == "SUBSCRIBE").then(|| v["id"].as_i64()).flatten()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The guard's feed: bench-feed frames at `--feed-rate`, crossings in the window.
    Guard,
    /// The relay's upstream: quotes, trades and klines for the relayed symbols.
    Relay,
}

/// Per-role state of what to send next.
struct Gen {
    role: Role,
    chunks: Vec<(Vec<u8>, u64)>,
    chunk: usize,
    owed: f64,
    next_cross: usize,
    update_id: u64,
    quote_owed: f64,
    trade_owed: f64,
    quote_rr: usize,
    trade_rr: usize,
    trade_id: u64,
    last_second: i64,
    bar: i64,
}

impl Gen {
    fn new(role: Role, a: &Args) -> Gen {
        let chunks = if role == Role::Guard { ring(a.instruments, 1024) } else { Vec::new() };
        Gen {
            role,
            chunks,
            chunk: 0,
            owed: 0.0,
            next_cross: 0,
            update_id: 1 << 40,
            quote_owed: 0.0,
            trade_owed: 0.0,
            quote_rr: 0,
            trade_rr: 0,
            trade_id: 1,
            last_second: unix_ms() / 1000,
            bar: unix_ms() / 60_000 * 60_000,
        }
    }

    /// The bytes due this tick (raw server frames).
    fn due(&mut self, a: &Args, sh: &Shared, out: &mut Vec<u8>) {
        match self.role {
            Role::Guard => self.guard(a, sh, out),
            Role::Relay => self.relay(a, sh, out),
        }
    }

    fn guard(&mut self, a: &Args, sh: &Shared, out: &mut Vec<u8>) {
        if let Some(ws) = sh.window_start.get() {
            let every = Duration::from_secs_f64(a.window).div_f64((a.crossings + 1) as f64);
            while self.next_cross < a.crossings
                && Instant::now() >= *ws + every * (self.next_cross as u32 + 1)
            {
                // Instrument k carries position p<k>: its bid falls through the stop (90.00).
                let text = book_ticker(self.next_cross, self.update_id, "89.50000000", "89.51000000");
                frame(out, text.as_bytes());
                self.update_id += 1;
                self.next_cross += 1;
                sh.crossings_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.owed += a.feed_rate * a.tick.as_secs_f64();
        let mut chunks = 0;
        while self.owed >= 1.0 && !self.chunks.is_empty() && chunks < 10_000 {
            let (bytes, n) = &self.chunks[self.chunk % self.chunks.len()];
            out.extend_from_slice(bytes);
            self.owed -= *n as f64;
            self.chunk += 1;
            chunks += 1;
            sh.feed_frames.fetch_add(*n, Ordering::Relaxed);
        }
    }

    fn relay(&mut self, a: &Args, sh: &Shared, out: &mut Vec<u8>) {
        let now = unix_ms();
        let per_tick = a.symbols as f64 * a.tick.as_secs_f64();
        self.quote_owed += a.quote_hz * per_tick;
        self.trade_owed += a.trade_hz * per_tick;
        while self.quote_owed >= 1.0 {
            self.quote_owed -= 1.0;
            let n = sh.quotes_sent.load(Ordering::Relaxed);
            let Some(slot) = sh.sent_at.get(n as usize) else { break };
            let i = self.quote_rr % a.symbols;
            self.quote_rr += 1;
            frame(out, book_ticker(i, n + 1, &format!("100.{n:08}"), "100.50000000").as_bytes());
            // Written right after this tick's frames are built (well under a millisecond).
            slot.store(sh.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
            sh.quotes_sent.fetch_add(1, Ordering::Relaxed);
        }
        while self.trade_owed >= 1.0 {
            self.trade_owed -= 1.0;
            let i = self.trade_rr % a.symbols;
            self.trade_rr += 1;
            let s = symbol(i);
            let text = format!(
                r#"{{"stream":"{}@trade","data":{{"e":"trade","E":{now},"s":"{s}","t":{},"p":"100.{:02}000000","q":"1.00000000","T":{now},"m":true,"M":true}}}}"#,
                s.to_ascii_lowercase(),
                self.trade_id,
                self.trade_id % 50
            );
            frame(out, text.as_bytes());
            self.trade_id += 1;
            sh.trades_sent.fetch_add(1, Ordering::Relaxed);
        }
        // Once a second a 1m kline update per symbol; at the minute, each bar's closing kline.
        let second = now / 1000;
        if second != self.last_second {
            self.last_second = second;
            let bar = now / 60_000 * 60_000;
            let closing = (bar != self.bar).then_some(self.bar);
            self.bar = bar;
            for i in 0..a.symbols {
                let s = symbol(i);
                let mut kline = |open: i64, closed: bool| {
                    let k = Kline::new("1m", open as u64, "100.00", "100.49", "100.00", "100.25", "10");
                    let text = format!(
                        r#"{{"stream":"{}@kline_1m","data":{{"e":"kline","E":{now},"s":"{s}","k":{}}}}}"#,
                        s.to_ascii_lowercase(),
                        k.event_k(&s, "1m", closed)
                    );
                    frame(out, text.as_bytes());
                    sh.klines_sent.fetch_add(1, Ordering::Relaxed);
                };
                if let Some(open) = closing {
                    kline(open, true);
                }
                kline(bar, false);
            }
        }
    }
}

/// One upstream connection (the guard's feed or the relay's): accepts it, acknowledges its
/// SUBSCRIBE requests like Binance (`{"result":null,"id":N}`), and sends what its role owes
/// every `--tick-ms` once the first request is acknowledged, until `stop` or `limit`.
async fn upstream(
    listener: std::net::TcpListener,
    tls: TlsAcceptor,
    a: Arc<Args>,
    sh: Arc<Shared>,
    role: Role,
    limit: Duration,
) -> Result<(), String> {
    let hard = Instant::now() + limit;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(30), listener.accept())
        .await
        .map_err(|_| "tickguard did not connect within 30 s")?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(Duration::from_secs(5), tls.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out")?
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), WsStream::accept(tls))
        .await
        .map_err(|_| "WebSocket upgrade timed out")?
        .map_err(|e| format!("upgrade: {e}"))?;
    let acks = if role == Role::Guard { &sh.feed_acks } else { &sh.relay_acks };
    let mut source = Gen::new(role, &a);
    let mut next = tokio::time::Instant::now() + a.tick;
    let mut out = Vec::with_capacity(64 * 1024);
    while !sh.stop.load(Ordering::Relaxed) && Instant::now() < hard {
        tokio::select! {
            r = ws.read_more() => {
                match r {
                    Ok(0) | Err(_) => return Err("tickguard closed the connection".into()),
                    Ok(_) => {}
                }
                for _ in 0..4096 {
                    match ws.next_buffered() {
                        Ok(Some(Message::Text(t))) => {
                            if let Some(id) = subscribe_id(t.as_str()) {
                                let ack = Message::text(format!(r#"{{"result":null,"id":{id}}}"#));
                                ws.queue(ack).map_err(|e| e.to_string())?;
                                acks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
                ws.flush_out().await.map_err(|e| e.to_string())?;
            }
            _ = tokio::time::sleep_until(next) => {
                next += a.tick;
                if acks.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                out.clear();
                source.due(&a, &sh, &mut out);
                if !out.is_empty() {
                    let io = ws.get_mut();
                    io.write_all(&out).await.map_err(|e| e.to_string())?;
                    io.flush().await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

/// Runs [`upstream`] on its own thread and runtime (its send instants stay close to the
/// socket whatever the clients do).
fn spawn_upstream(
    listener: std::net::TcpListener,
    tls: TlsAcceptor,
    a: Arc<Args>,
    sh: Arc<Shared>,
    role: Role,
    limit: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let stop = sh.clone();
        // Once the phase is over, the binary's SIGTERM closing the connection is no failure.
        rt.block_on(upstream(listener, tls, a, sh, role, limit))
            .or_else(|e| if stop.stop.load(Ordering::Relaxed) { Ok(()) } else { Err(e) })
    })
}

/// The quote number a relay quote's bid carries (`100.<n as 8 digits>`, trailing zeros trimmed
/// or not).
fn quote_number(msg: &str) -> Option<usize> {
    let at = msg.find("\"bid\":\"")? + 7;
    let bid = &msg[at..at + msg[at..].find('"')?];
    let (int, frac) = bid.split_once('.').unwrap_or((bid, ""));
    if int != "100" || frac.len() > 8 {
        return None;
    }
    let mut n = 0usize;
    for k in 0..8 {
        n = n * 10 + frac.as_bytes().get(k).map_or(0, |b| usize::from(b.wrapping_sub(b'0')).min(9));
    }
    Some(n)
}

/// One relay client: connects from its 127.0.1.x source, sends the request, reads as fast as
/// it can until `stop`, counting messages, quote latencies (in the window), byes and closes.
async fn client(k: usize, port: u16, request: Arc<String>, sh: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let source = Ipv4Addr::new(127, 0, 1, (k / PER_SOURCE + 1) as u8);
    let connected = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((source, 0)))?;
        let tcp = sock.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        tcp.set_nodelay(true)?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/"), tcp)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>(ws)
    };
    let Ok(Ok(mut ws)) = tokio::time::timeout(Duration::from_secs(10), connected).await else {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if ws.send(Message::text(request.as_str())).await.is_err() {
        sh.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut lat: Vec<u32> = Vec::with_capacity(64 * 1024);
    let mut first = true;
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        match m {
            Some(Ok(Message::Text(t))) => {
                let now = Instant::now();
                if first {
                    first = false;
                    sh.joined.fetch_add(1, Ordering::Relaxed);
                }
                let t = t.as_str();
                if !sh.in_window.load(Ordering::Relaxed) {
                    if t.contains("\"type\":\"bye\"") {
                        sh.byes.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                sh.delivered.fetch_add(1, Ordering::Relaxed);
                if t.starts_with("{\"type\":\"quote\"") {
                    sh.delivered_quotes.fetch_add(1, Ordering::Relaxed);
                    let sent = quote_number(t)
                        .and_then(|n| sh.sent_at.get(n))
                        .map_or(0, |s| s.load(Ordering::Relaxed));
                    if sent == 0 {
                        sh.unmatched_quotes.fetch_add(1, Ordering::Relaxed);
                    } else if lat.len() < SAMPLES_PER_CLIENT {
                        let got = now.duration_since(sh.base).as_nanos() as u64;
                        lat.push((got.saturating_sub(sent - 1) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                } else if t.contains("\"type\":\"bye\"") {
                    sh.byes.fetch_add(1, Ordering::Relaxed);
                } else if t.contains("\"type\":\"error\"") {
                    sh.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(f))) => {
                if f.as_ref().is_some_and(|f| f.code == CloseCode::Policy) {
                    sh.closes_1008.fetch_add(1, Ordering::Relaxed);
                } else {
                    sh.other_closes.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => {
                sh.ended.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    if let Ok(mut all) = sh.latencies_us.lock() {
        all.extend_from_slice(&lat);
    }
}

struct Ports {
    api: u16,
    feed: u16,
    relay_ws: u16,
    relay_health: u16,
    upstream: u16,
    rest: u16,
}

fn config(a: &Args, relay: bool, p: &Ports, ca: &std::path::Path, state: &std::path::Path) -> String {
    let list = |n: usize| (0..n).map(|i| format!("\"{}\"", symbol(i))).collect::<Vec<_>>().join(",");
    let mut s = String::new();
    s += &format!("[api]\nlisten = \"127.0.0.1:{}\"\n", p.api);
    s += &format!(
        "[feed]\nvenue = \"binance\"\nws_url = \"wss://127.0.0.1:{}/stream\"\nrest_url = \"https://127.0.0.1:9/\"\n",
        p.feed
    );
    s += &format!("silence_timeout_s = 10\nrest_poll_s = 5\ninstruments = [{}]\n", list(a.instruments));
    s += "[dns]\nuse_system = false\nnameservers = [\"127.0.0.1:9\"]\ntimeout_s = 0.5\n";
    s += &format!("[tls]\nextra_ca = \"{}\"\n", ca.display());
    s += "[cache]\nstale_after_s = 30\nexpire_after_s = 300\n";
    s += "[broker]\nkind = \"paper\"\npaper_fill_delay_s = 0.01\n";
    s += &format!("[store]\ndir = \"{}\"\n", state.display());
    if relay {
        s += &format!(
            "[relay]\nenabled = true\nlisten = \"127.0.0.1:{}\"\nhealth_listen = \"127.0.0.1:{}\"\n",
            p.relay_ws, p.relay_health
        );
        s += &format!(
            "ws_url = \"wss://127.0.0.1:{}/stream\"\nrest_url = \"https://127.0.0.1:{}\"\nintervals = [\"1m\"]\nsymbols = [{}]\n",
            p.upstream,
            p.rest,
            list(a.symbols)
        );
    }
    for i in 0..a.positions {
        s += &format!(
            "[[positions]]\nid = \"p{i}\"\nsymbol = \"{}\"\nside = \"long\"\nqty = 1\nentry = \"100.00\"\nstop_loss = \"90.00\"\ntake_profit = \"110.00\"\n",
            symbol(i)
        );
    }
    s
}

/// The relay's `/metrics` text (plain HTTP/1.0 on the health port).
fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.take(4 << 20).read_to_string(&mut text);
    text
}

/// A sample metric's value (the first line starting with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Upper bound (s) of the bucket holding quantile `q` of a Prometheus histogram.
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|r| {
            let (le, rest) = r.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets.iter().find(|b| b.1 >= q * total).map_or(f64::NAN, |b| b.0)
}

fn pct(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Default)]
struct Phase {
    t2a: [String; 4],
    decisions: usize,
    crossings: u64,
    feed_rate: f64,
    hwm_kib: u64,
    rss_median_kib: f64,
    /// CPU over the window, % of one core: the relay's thread, the whole binary, this tool.
    cpu: [f64; 3],
    relay: Option<RelayFigures>,
}

#[derive(Default)]
struct RelayFigures {
    joined: u64,
    delivered: u64,
    quotes: u64,
    rate_median: f64,
    offered: [f64; 3],
    lat_ms: [f64; 4],
    samples: usize,
    unmatched: u64,
    closes_1008: u64,
    other_closes: u64,
    byes: u64,
    errors: u64,
    ended: u64,
    own_p50_p99: [f64; 2],
    blocking: f64,
    depth_open: f64,
    refused_log: usize,
    slow_log: usize,
}

/// The binary's stderr lines, as read so far.
type Log = Arc<Mutex<Vec<String>>>;

fn start_binary(bin: &std::path::Path, cfg: &std::path::Path) -> Result<(Child, Log), String> {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e} (build it with cargo build --release)", bin.display()))?;
    let lines: Log = Arc::default();
    let sink = lines.clone();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok).take(10_000_000) {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        }
    });
    Ok((child, lines))
}

fn stop_binary(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits (bounded) until `done`, failing early when the binary exits.
async fn wait_for(
    what: &str,
    within: Duration,
    child: &mut Child,
    lines: &Mutex<Vec<String>>,
    done: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while !done() {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            let log = lines
                .lock()
                .map(|v| v.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n"))
                .unwrap_or_default();
            return Err(format!(
                "{what}: not within {} s{}; log tail:\n{log}",
                within.as_secs(),
                if exited { " (tickguard exited)" } else { "" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn phase(a: Arc<Args>, relay: bool) -> Result<Phase, String> {
    let dir = a.dir.join(if relay { "relay" } else { "guard" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ca = ca::TestCa::new(&dir);
    let tls = ca.server_config(&["127.0.0.1"]);
    let acceptor = TlsAcceptor::from(tls.clone());
    let total = a.warmup + a.window + 60.0;
    let sh =
        Arc::new(Shared::new(if relay { (a.quote_hz * a.symbols as f64 * total) as usize + 1 } else { 0 }));
    let bind = || -> Result<(std::net::TcpListener, u16), String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        Ok((l, port))
    };
    let (feed_l, feed) = bind()?;
    let (up_l, upstream_port) = bind()?;
    let rest = FakeBinance::start(tls).await;
    let bar = unix_ms() / 60_000 * 60_000;
    for i in 0..a.symbols {
        let rows = (1..=3)
            .rev()
            .map(|k| {
                Kline::new("1m", (bar - k * 60_000) as u64, "100.00", "100.49", "100.00", "100.25", "10")
            })
            .collect();
        rest.set_klines(&symbol(i), "1m", rows);
    }
    let ports = Ports {
        api: free_port()?,
        feed,
        relay_ws: free_port()?,
        relay_health: free_port()?,
        upstream: upstream_port,
        rest: rest.port,
    };
    let cfg = dir.join("tickguard.toml");
    std::fs::write(&cfg, config(&a, relay, &ports, &ca.ca_path, &dir.join("state")))
        .map_err(|e| e.to_string())?;
    let limit = Duration::from_secs_f64(total);
    let (mut child, lines) = start_binary(&a.bin, &cfg)?;
    let pid = child.id();
    let guard_feed = spawn_upstream(feed_l, acceptor.clone(), a.clone(), sh.clone(), Role::Guard, limit);
    let relay_feed = relay.then(|| spawn_upstream(up_l, acceptor, a.clone(), sh.clone(), Role::Relay, limit));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let result = async {
        let want = a.instruments.div_ceil(200) as u64;
        wait_for("the guard's subscriptions", Duration::from_secs(30), &mut child, &lines, || {
            Shared::n(&sh.feed_acks) >= want
        })
        .await?;
        if relay {
            wait_for(
                "the relay's upstream subscription",
                Duration::from_secs(30),
                &mut child,
                &lines,
                || Shared::n(&sh.relay_acks) >= 1,
            )
            .await?;
            // The relay backfills its symbols before it admits clients (at most 5 s).
            tokio::time::sleep(Duration::from_millis(500)).await;
            let request = Arc::new(format!(
                r#"{{"exchange":"binance","contract_type":"spot","symbols":[{}],"limit":0}}"#,
                (0..a.symbols).map(|i| format!("\"{}\"", symbol(i))).collect::<Vec<_>>().join(",")
            ));
            for k in 0..a.clients {
                tasks.push(tokio::spawn(client(
                    k,
                    ports.relay_ws,
                    request.clone(),
                    sh.clone(),
                    stop_rx.clone(),
                )));
            }
            wait_for("every client's first message", Duration::from_secs(30), &mut child, &lines, || {
                Shared::n(&sh.joined) + Shared::n(&sh.errors) >= a.clients as u64
            })
            .await?;
        }
        tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
        // The window.
        let start = Instant::now();
        let _ = sh.window_start.set(start);
        sh.in_window.store(true, Ordering::Relaxed);
        let (q0, f0) = (Shared::n(&sh.quotes_sent), Shared::n(&sh.feed_frames));
        let (t0, k0) = (Shared::n(&sh.trades_sent), Shared::n(&sh.klines_sent));
        let mut rates = Vec::new();
        let mut rss = Vec::new();
        let mut last = (start, 0u64);
        let (cpu_relay0, cpu_all0) = cpu_ticks(pid);
        let cpu_self0 = cpu_ticks(0).1;
        let seconds = a.window.ceil() as u32;
        for s in 1..=seconds {
            let at = start + Duration::from_secs_f64((f64::from(s)).min(a.window));
            tokio::time::sleep_until(at.into()).await;
            let d = Shared::n(&sh.delivered);
            let now = Instant::now();
            rates.push((d - last.1) as f64 / now.duration_since(last.0).as_secs_f64());
            last = (now, d);
            rss.push(memory_kib(pid).1 as f64);
        }
        sh.in_window.store(false, Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        let (cpu_relay1, cpu_all1) = cpu_ticks(pid);
        // Clock ticks are 1/100 s on Linux.
        let pct = |t: u64| t as f64 / secs;
        let mut p = Phase {
            cpu: [pct(cpu_relay1 - cpu_relay0), pct(cpu_all1 - cpu_all0), pct(cpu_ticks(0).1 - cpu_self0)],
            crossings: Shared::n(&sh.crossings_sent),
            feed_rate: (Shared::n(&sh.feed_frames) - f0) as f64 / secs,
            rss_median_kib: median(&mut rss),
            ..Phase::default()
        };
        if relay {
            // Latencies are merged below, once the clients stop.
            let text = metrics(ports.relay_health);
            p.relay = Some(RelayFigures {
                joined: Shared::n(&sh.joined),
                delivered: Shared::n(&sh.delivered),
                quotes: Shared::n(&sh.delivered_quotes),
                rate_median: median(&mut rates),
                offered: [
                    (Shared::n(&sh.quotes_sent) - q0) as f64 / secs,
                    (Shared::n(&sh.trades_sent) - t0) as f64 / secs,
                    (Shared::n(&sh.klines_sent) - k0) as f64 / secs,
                ],
                unmatched: Shared::n(&sh.unmatched_quotes),
                closes_1008: Shared::n(&sh.closes_1008),
                other_closes: Shared::n(&sh.other_closes),
                byes: Shared::n(&sh.byes),
                errors: Shared::n(&sh.errors),
                ended: Shared::n(&sh.ended),
                own_p50_p99: [
                    histogram_quantile(&text, "connector_quote_latency_seconds", 0.5) * 1000.0,
                    histogram_quantile(&text, "connector_quote_latency_seconds", 0.99) * 1000.0,
                ],
                blocking: metric(&text, "connector_queue_blocking_events_total"),
                depth_open: metric(&text, "connector_queue_depth_open"),
                ..RelayFigures::default()
            });
        }
        // The last crossings' fills, then the peak.
        tokio::time::sleep(Duration::from_millis(700)).await;
        p.hwm_kib = memory_kib(pid).0;
        Ok::<Phase, String>(p)
    }
    .await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    sh.stop.store(true, Ordering::Relaxed);
    stop_binary(&mut child);
    let guard_end = guard_feed.join().map_err(|_| "guard feed thread panicked".to_string()).and_then(|r| r);
    if let Some(t) = relay_feed {
        let _ = t.join();
    }
    let mut p = result?;
    if let Err(e) = guard_end {
        eprintln!("relay_load: guard feed: {e}");
    }
    let all = lines.lock().map(|v| v.clone()).unwrap_or_default();
    let _ = std::fs::write(dir.join("tickguard.log"), all.join("\n"));
    let stats = all.iter().rev().find(|l| l.contains(" stats ")).cloned().unwrap_or_default();
    p.t2a =
        ["tick_to_action_count", "tick_to_action_p50_us", "tick_to_action_p99_us", "tick_to_action_mean_us"]
            .map(|k| field(&stats, k));
    p.decisions = all.iter().filter(|l| l.contains("[SL] ")).count();
    if let Some(r) = p.relay.as_mut() {
        let mut lat = std::mem::take(&mut *sh.latencies_us.lock().map_err(|_| "poisoned")?);
        lat.sort_unstable();
        r.samples = lat.len();
        r.lat_ms = [pct(&lat, 0.5), pct(&lat, 0.99), pct(&lat, 0.999), pct(&lat, 1.0)];
        r.refused_log = all.iter().filter(|l| l.contains("event=request_refused")).count();
        r.slow_log = all.iter().filter(|l| l.contains("event=slow_client_closed")).count();
    }
    Ok(p)
}

fn print(a: &Args, with: Option<&Phase>, without: Option<&Phase>) {
    let mib = |k: f64| k / 1024.0;
    println!(
        "bench-relay: {} clients x {} symbols (interval 1m), upstream {} quotes/s + {} trades/s + 1 kline/s per symbol \
         written every {} ms; guard: {} instruments at {} frames/s, {} positions, {} crossings; window {} s after {} s warm-up",
        a.clients,
        a.symbols,
        a.quote_hz,
        a.trade_hz,
        a.tick.as_secs_f64() * 1000.0,
        a.instruments,
        a.feed_rate,
        a.positions,
        a.crossings,
        a.window,
        a.warmup
    );
    if let Some(p) = with {
        if let Some(r) = &p.relay {
            println!(
                "  upstream offered (window)        quotes {:.0}/s, trades {:.0}/s, klines {:.0}/s",
                r.offered[0], r.offered[1], r.offered[2]
            );
            println!(
                "  messages delivered to clients    {} in the window: median {:.0}/s (per-second samples), mean {:.0}/s; quotes {} ({:.0}/s)",
                r.delivered,
                r.rate_median,
                r.delivered as f64 / a.window,
                r.quotes,
                r.quotes as f64 / a.window
            );
            println!(
                "  quote latency upstream write -> client read, n={}: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (goal p99 <= 5 ms: {})",
                r.samples,
                r.lat_ms[0],
                r.lat_ms[1],
                r.lat_ms[2],
                r.lat_ms[3],
                if r.lat_ms[1] <= 5.0 { "met" } else { "NOT met" }
            );
            println!(
                "  relay's own connector_quote_latency_seconds (since start, bucket bounds): p50 <= {:.1} ms, p99 <= {:.1} ms",
                r.own_p50_p99[0], r.own_p50_p99[1]
            );
            println!(
                "  clients: {}/{} joined; 1008 closes {}, other closes {}, bye {}, errors {}, dropped connections {}, \
                 slow_client_closed log lines {}, refused requests {}; quotes with no send record {}",
                r.joined,
                a.clients,
                r.closes_1008,
                r.other_closes,
                r.byes,
                r.errors,
                r.ended,
                r.slow_log,
                r.refused_log,
                r.unmatched
            );
            println!(
                "  relay metrics at the end of the window: connector_queue_blocking_events_total {}, connector_queue_depth_open {}",
                r.blocking, r.depth_open
            );
        }
        println!(
            "  tickguard RSS with the relay     VmHWM {:.2} MiB, VmRSS median {:.2} MiB (goal <= 32 MiB: {})",
            mib(p.hwm_kib as f64),
            mib(p.rss_median_kib),
            if mib(p.hwm_kib as f64) <= 32.0 { "met" } else { "NOT met" }
        );
    }
    if let Some(p) = without {
        println!(
            "  tickguard RSS without the relay  VmHWM {:.2} MiB, VmRSS median {:.2} MiB",
            mib(p.hwm_kib as f64),
            mib(p.rss_median_kib)
        );
    }
    for (name, p) in [("with the relay   ", with), ("without the relay", without)] {
        if let Some(p) = p {
            println!(
                "  CPU {name} (window, % of one core): tickguard {:.0} % (relay thread {:.0} %), this load tool {:.0} %",
                p.cpu[1], p.cpu[0], p.cpu[2]
            );
        }
    }
    for (name, p) in [("with the relay   ", with), ("without the relay", without)] {
        if let Some(p) = p {
            println!(
                "  guard tick-to-action {name} n={}: p50 <= {} us, p99 <= {} us, mean {} us; [SL] {} of {} crossings; feed {:.0} frames/s",
                p.t2a[0], p.t2a[1], p.t2a[2], p.t2a[3], p.decisions, p.crossings, p.feed_rate
            );
        }
    }
    if let (Some(w), Some(o)) = (with, without) {
        let (x, y) =
            (w.t2a[2].parse::<f64>().unwrap_or(f64::NAN), o.t2a[2].parse::<f64>().unwrap_or(f64::NAN));
        println!(
            "  guard tick-to-action p99 ratio with/without the relay: {:.2} (goal <= 1.2: {})",
            x / y,
            if x / y <= 1.2 { "met" } else { "NOT met" }
        );
    }
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("relay_load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay_load: {e}");
            return ExitCode::from(1);
        }
    };
    let run = |relay: bool| -> Option<Phase> {
        match rt.block_on(phase(a.clone(), relay)) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("relay_load: {} phase: {e}", if relay { "relay" } else { "guard" });
                None
            }
        }
    };
    let with = (a.phases != "guard").then(|| run(true)).flatten();
    let without = (a.phases != "relay").then(|| run(false)).flatten();
    print(&a, with.as_ref(), without.as_ref());
    let failed = (a.phases != "guard" && with.is_none()) || (a.phases != "relay" && without.is_none());
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
