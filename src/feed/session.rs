//! The feed session: resolve → TCP → TLS → WebSocket → subscribe → read, for ever.
//!
//! - Answers pings, sends its own every third of `silence_timeout`, and declares the feed
//!   silent when no frame of any kind arrives within `silence_timeout` (a half-open TCP
//!   connection is caught, not waited out).
//! - Reconnects with the core's jittered exponential backoff (reset once a connection has been
//!   subscribed and up for `reconnect_max`), checks DNS afresh on every third attempt, and
//!   resubscribes everything.
//! - Paces control frames (subscribes) `control_spacing` apart, within Binance's 5 messages/s.
//! - Rotates before the venue's connection lifetime (24 h) or on `serverShutdown` without a
//!   gap: the next connection is opened and subscribed before the old one is closed.
//! - Every state change reaches the engine as a [`FeedEvent`]; `[RECONNECT]` lines say
//!   attempt, delay and cause.
//!
//! The per-frame path (bytes → decode → symbol lookup → tick queue) does not allocate.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::binance::{self, Frame};
use super::symbols::SymbolIndex;
use crate::core::backoff::{Backoff, Rng};
use crate::core::engine::FeedEvent;
use crate::core::types::{InstrumentId, Quote, Source, Symbol, Tick};
use crate::net::http::{Connector, Endpoint};
use crate::net::ws::{self, Event, WsConn, WsLimits};
use crate::runtime::EngineHandle;
use crate::runtime::clock::Clock;

/// Session settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The WebSocket endpoint (`feed.ws_url`).
    pub endpoint: Endpoint,
    /// No frame for this long means the feed is silent (`feed.silence_timeout_s`).
    pub silence_timeout: Duration,
    /// First reconnect delay (`feed.reconnect_initial_s`).
    pub reconnect_initial: Duration,
    /// Slowest reconnect delay (`feed.reconnect_max_s`).
    pub reconnect_max: Duration,
    /// Jitter of the reconnect delays.
    pub jitter: f64,
    /// Streams per symbol (`bookTicker`).
    pub streams: Vec<String>,
    /// Open the next connection after this long (Binance cuts at 24 h).
    pub max_lifetime: Duration,
    /// Streams per SUBSCRIBE message.
    pub subscribe_batch: usize,
    /// Least time between two control messages.
    pub control_spacing: Duration,
    /// Bound of connect + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Frame and message limits.
    pub limits: WsLimits,
    /// Seed of the jitter and of the frame masks.
    pub seed: u64,
}

impl SessionConfig {
    /// Defaults for Binance spot streams at `endpoint`.
    pub fn binance(endpoint: Endpoint, seed: u64) -> SessionConfig {
        SessionConfig {
            endpoint,
            silence_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            jitter: 0.5,
            streams: vec!["bookTicker".into()],
            max_lifetime: Duration::from_secs(23 * 3600 + 30 * 60),
            subscribe_batch: 200,
            control_spacing: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            limits: WsLimits { max_frame: 64 * 1024, max_message: 64 * 1024 },
            seed,
        }
    }
}

/// State shared by the session, the REST poller and the status views.
#[derive(Default)]
pub struct FeedShared {
    /// True while a session is up and subscribed.
    pub live: AtomicBool,
    /// Incremented each time the feed becomes live (REST answers sent before are discarded).
    pub epoch: AtomicU64,
    /// Reconnect attempts since start.
    pub reconnects: AtomicU64,
    /// Current run of failed attempts.
    pub attempts: AtomicU64,
    /// Connection and protocol errors since start.
    pub network_errors: AtomicU64,
    /// Frames received.
    pub frames: AtomicU64,
    /// Price updates handed to the engine.
    pub ticks: AtomicU64,
    /// Frames that could not be decoded.
    pub malformed: AtomicU64,
    /// Quotes for symbols we did not subscribe.
    pub unknown_symbols: AtomicU64,
    /// Connection rotations (24 h limit or `serverShutdown`).
    pub rotations: AtomicU64,
    /// Instruments subscribed on the live connection.
    pub subscribed: AtomicU64,
    /// Authorization failures (Upstox: HTTP 401, an expired or revoked access token) since
    /// start; each raised an `[AUTH]` alert.
    pub auth_failures: AtomicU64,
    /// True while the feed waits for a new token: the network is not retried until the token
    /// file changes (metrics and the status page show it).
    pub auth_blocked: AtomicBool,
    /// Subscribed symbols by their bytes (as frames carry them): the per-frame look-up is one
    /// acquire load and five integer compares, with no lock, no UTF-8 check and no `memcmp`
    /// (scripts/bench-peers).
    symbols: SymbolIndex,
    malformed_logged: Mutex<HashSet<&'static str>>,
}

impl FeedShared {
    /// Shared state for these instruments.
    pub fn new(instruments: &[(InstrumentId, Symbol)]) -> FeedShared {
        FeedShared { symbols: SymbolIndex::new(instruments), ..FeedShared::default() }
    }
    /// Adds an instrument to subscribe. `false` when the index is full (it holds as many
    /// instruments as the price cache, so the engine refuses the instrument first).
    pub fn add(&self, id: InstrumentId, sym: Symbol) -> bool {
        let added = self.symbols.insert(id, &sym);
        if !added {
            log::warn!("[RECONNECT] event=symbol_refused symbol={sym} reason=index_full");
        }
        added
    }
    /// Instruments to subscribe, in id order.
    pub fn instruments(&self) -> Vec<(InstrumentId, Symbol)> {
        self.symbols.entries()
    }
    /// The instrument subscribed under `sym` (the per-frame look-up; benchmarks call it too).
    #[inline]
    pub fn lookup(&self, sym: &[u8]) -> Option<InstrumentId> {
        self.symbols.get(sym)
    }
}

/// Everything a connection needs to hand frames on.
#[derive(Clone)]
pub struct Ctx {
    /// Shared state.
    pub shared: Arc<FeedShared>,
    /// The engine.
    pub engine: EngineHandle,
    /// The clock.
    pub clock: Clock,
}

struct Conn {
    ws: WsConn,
    pending: HashMap<i64, Vec<InstrumentId>>,
    next_id: i64,
    opened: Instant,
    subscribed_any: bool,
}

enum Ended {
    Stop,
    /// The connection is gone; `healthy` when it had been subscribed and up for at least
    /// `reconnect_max` (only then is the backoff reset).
    Lost {
        cause: String,
        healthy: bool,
    },
}

impl Ctx {
    /// Handles one text frame; returns true when the server announced its shutdown.
    async fn on_text(
        &self,
        bytes: &[u8],
        conn_pending: &mut HashMap<i64, Vec<InstrumentId>>,
        subscribed_any: &mut bool,
    ) -> bool {
        let now = self.clock.now();
        self.shared.frames.fetch_add(1, Ordering::Relaxed);
        match binance::decode(bytes) {
            Ok(Frame::Quote { symbol, bid, ask, last, exch_ts }) => {
                let Some(id) = self.shared.lookup(symbol) else {
                    self.shared.unknown_symbols.fetch_add(1, Ordering::Relaxed);
                    return false;
                };
                let q = Quote { bid, ask, last, source: Source::Live, exch_ts, dated: now };
                self.engine.ticks.push(Tick::new(id, q));
                self.shared.ticks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Frame::Ack { id: Some(id) }) => {
                if let Some(insts) = conn_pending.remove(&id) {
                    if !*subscribed_any {
                        *subscribed_any = true;
                        self.shared.live.store(true, Ordering::Relaxed);
                        self.shared.epoch.fetch_add(1, Ordering::Relaxed);
                        self.shared.attempts.store(0, Ordering::Relaxed);
                    }
                    self.shared.subscribed.fetch_add(insts.len() as u64, Ordering::Relaxed);
                    for i in &insts {
                        self.engine.feed(FeedEvent::Subscribed(*i)).await;
                    }
                    log::info!("[RECONNECT] event=subscribed request_id={id} instruments={}", insts.len());
                }
            }
            Ok(Frame::Ack { id: None }) | Ok(Frame::Other) => {}
            Ok(Frame::Error { code, id }) => {
                let insts = id.and_then(|i| conn_pending.remove(&i)).map_or(0, |v| v.len());
                log::warn!(
                    "[RECONNECT] event=venue_error code={} request_id={} instruments={insts}",
                    code.map_or("none".into(), |c| c.to_string()),
                    id.map_or("none".into(), |c| c.to_string())
                );
            }
            Ok(Frame::ServerShutdown) => return true,
            Err(e) => self.malformed(e.kind()),
        }
        false
    }

    /// Counts a frame that could not be decoded; logs the first of each kind.
    pub(crate) fn malformed(&self, kind: &'static str) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
        let first = self.shared.malformed_logged.lock().map(|mut s| s.insert(kind)).unwrap_or(false);
        if first {
            log::warn!("[RECONNECT] event=malformed_frame kind={kind} (counted; logged once per kind)");
        }
    }
}

/// Builds the SUBSCRIBE messages for `insts`, `batch` streams each.
fn subscribe_messages(
    cfg: &SessionConfig,
    insts: &[(InstrumentId, Symbol)],
    next_id: &mut i64,
) -> Vec<(i64, Vec<InstrumentId>, String)> {
    let per = (cfg.subscribe_batch / cfg.streams.len().max(1)).max(1);
    insts
        .chunks(per)
        .map(|chunk| {
            let id = *next_id;
            *next_id += 1;
            let params: Vec<String> = chunk
                .iter()
                .flat_map(|(_, s)| {
                    cfg.streams.iter().map(move |k| format!("\"{}\"", binance::stream_name(s, k)))
                })
                .collect();
            let msg = format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":{id}}}", params.join(","));
            (id, chunk.iter().map(|(i, _)| *i).collect(), msg)
        })
        .collect()
}

async fn open(
    cfg: &SessionConfig,
    connector: &Connector,
    fresh_dns: bool,
    ctx: &Ctx,
) -> Result<Conn, String> {
    let ep = &cfg.endpoint;
    let work = async {
        let (stream, addr, resolved) = connector.connect(ep, fresh_dns).await.map_err(|e| e.to_string())?;
        log::info!("[RECONNECT] event=connected host={} addr={addr} dns={}", ep.host, resolved.via.label());
        let ws = ws::connect(
            stream,
            &ep.host_header(),
            &ep.path,
            &[],
            cfg.limits,
            cfg.seed ^ ctx.clock.now().as_nanos(),
        )
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
        Ok::<WsConn, String>(ws)
    };
    let ws = tokio::time::timeout(cfg.connect_timeout, work)
        .await
        .map_err(|_| format!("connect timeout after {} ms", cfg.connect_timeout.as_millis()))??;
    let mut conn =
        Conn { ws, pending: HashMap::new(), next_id: 1, opened: Instant::now(), subscribed_any: false };
    let insts = ctx.shared.instruments();
    let msgs = subscribe_messages(cfg, &insts, &mut conn.next_id);
    for (n, (id, ids, msg)) in msgs.into_iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(cfg.control_spacing).await;
        }
        conn.pending.insert(id, ids);
        conn.ws.send_text(msg.as_bytes()).await.map_err(|e| format!("subscribe: {e}"))?;
    }
    Ok(conn)
}

/// Opens a replacement connection and waits (bounded) for its subscriptions to be
/// acknowledged, handing its quotes on meanwhile.
async fn open_replacement(cfg: SessionConfig, connector: Connector, ctx: Ctx) -> Result<Conn, String> {
    let mut conn = open(&cfg, &connector, false, &ctx).await?;
    let deadline = Instant::now() + cfg.connect_timeout;
    while !conn.pending.is_empty() {
        let ev = tokio::time::timeout_at(deadline, conn.ws.next())
            .await
            .map_err(|_| "subscription acks timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let mut ping = false;
        match ev {
            Event::Text(b) => {
                let mut any = true;
                ctx.on_text(b, &mut conn.pending, &mut any).await;
            }
            Event::Ping => ping = true,
            Event::Close(c) => return Err(format!("closed by server (code {})", c.unwrap_or(0))),
            _ => {}
        }
        if ping {
            conn.ws.flush_control().await.map_err(|e| e.to_string())?;
        }
    }
    conn.subscribed_any = true;
    Ok(conn)
}

/// Runs the session until `stop` fires. `added` brings instruments registered later, which
/// are subscribed on the live connection and on every reconnect.
pub async fn run(
    cfg: SessionConfig,
    connector: Connector,
    ctx: Ctx,
    mut added: mpsc::Receiver<(InstrumentId, Symbol)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.reconnect_initial, cfg.reconnect_max, cfg.jitter);
    let mut rng = Rng::new(cfg.seed);
    loop {
        // The logged attempt, the backoff step and the every-third DNS check count the same
        // thing: failures since the last healthy connection. (A separate counter, zeroed after
        // a subscribed connection, logged "attempt=1" twice and ran one step behind the
        // backoff; found by tests/network_edge.rs.)
        let attempt = backoff.attempt() + 1;
        let fresh_dns = attempt % 3 == 0;
        if fresh_dns {
            log::info!("[DNS] event=health_check host={} attempt={attempt}", cfg.endpoint.host);
        }
        let cause = match open(&cfg, &connector, fresh_dns, &ctx).await {
            Ok(conn) => match read_loop(&cfg, &connector, &ctx, conn, &mut added, &mut stop).await {
                Ended::Stop => return,
                Ended::Lost { cause, healthy } => {
                    if healthy {
                        backoff.reset();
                    }
                    cause
                }
            },
            Err(e) => e,
        };
        ctx.shared.live.store(false, Ordering::Relaxed);
        ctx.shared.subscribed.store(0, Ordering::Relaxed);
        ctx.shared.network_errors.fetch_add(1, Ordering::Relaxed);
        ctx.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        ctx.engine.feed(FeedEvent::Disconnected).await;
        let delay = backoff.next_delay(&mut rng);
        ctx.shared.attempts.store(u64::from(backoff.attempt()), Ordering::Relaxed);
        log::warn!(
            "[RECONNECT] attempt={} delay_ms={} cause=\"{}\"",
            backoff.attempt(),
            delay.as_millis(),
            cause.replace('"', "'")
        );
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Frames the read loop handles before it lets other tasks (the engine) run.
const YIELD_EVERY: u32 = 64;

/// A connection that was subscribed and stayed up for `reconnect_max` resets the backoff. A
/// server that accepts the subscriptions and then drops every connection at once (e.g. closing
/// with 1008 over the message budget) must not be redialled at the first delay for ever:
/// Binance bans an IP past 300 connection attempts in 5 minutes.
fn healthy(cfg: &SessionConfig, conn: &Conn) -> bool {
    conn.subscribed_any && conn.opened.elapsed() >= cfg.reconnect_max
}

async fn read_loop(
    cfg: &SessionConfig,
    connector: &Connector,
    ctx: &Ctx,
    mut conn: Conn,
    added: &mut mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ping_every = cfg.silence_timeout / 3;
    let mut last_frame = Instant::now();
    let mut next_ping = last_frame + ping_every;
    let mut rotate_at = conn.opened + cfg.max_lifetime;
    let mut rotation: Option<tokio::task::JoinHandle<Result<Conn, String>>> = None;
    let mut outbox: VecDeque<(i64, Vec<InstrumentId>, String)> = VecDeque::new();
    let mut next_send = Instant::now();
    // Frames handled since this task last yielded. While frames are buffered `next()` never
    // waits, and tokio's budget only forces a yield every 128 socket reads (some 10 000
    // frames), so under a flood the engine task, which shares the thread, ran a crossing tick
    // tens of milliseconds late (p99 ≤ 50 ms in scripts/bench-feed). Yielding every
    // `YIELD_EVERY` frames bounds that wait to a few hundred microseconds.
    let mut since_yield = 0u32;
    loop {
        since_yield += 1;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let silence_at = last_frame + cfg.silence_timeout;
        let mut wake = silence_at.min(next_ping);
        if rotation.is_none() {
            wake = wake.min(rotate_at);
        }
        if !outbox.is_empty() {
            wake = wake.min(next_send);
        }
        let mut ping = false;
        let mut shutdown = false;
        let mut lost: Option<String> = None;
        tokio::select! {
            biased;
            _ = stop.changed() => {
                conn.ws.close(1000).await;
                return Ended::Stop;
            }
            r = async { match rotation.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                rotation = None;
                match r {
                    Ok(Ok(new)) => {
                        conn.ws.close(1000).await;
                        conn = new;
                        last_frame = Instant::now();
                        next_ping = last_frame + ping_every;
                        rotate_at = conn.opened + cfg.max_lifetime;
                        ctx.shared.rotations.fetch_add(1, Ordering::Relaxed);
                        log::info!("[RECONNECT] event=rotated (new connection subscribed before the old one closed)");
                    }
                    Ok(Err(e)) => {
                        log::warn!("[RECONNECT] event=rotation_failed cause=\"{e}\" (keeping the current connection)");
                        rotate_at = Instant::now() + cfg.reconnect_max;
                    }
                    Err(e) => {
                        log::warn!("[RECONNECT] event=rotation_failed cause=\"{e}\"");
                        rotate_at = Instant::now() + cfg.reconnect_max;
                    }
                }
                continue;
            }
            Some((id, sym)) = added.recv() => {
                ctx.shared.add(id, sym.clone());
                let msgs = subscribe_messages(cfg, &[(id, sym)], &mut conn.next_id);
                outbox.extend(msgs);
                continue;
            }
            r = tokio::time::timeout_at(wake, conn.ws.next()) => match r {
                Err(_) => {}
                Ok(Err(e)) => lost = Some(e.to_string()),
                Ok(Ok(ev)) => {
                    last_frame = Instant::now();
                    match ev {
                        Event::Text(b) => shutdown = ctx.on_text(b, &mut conn.pending, &mut conn.subscribed_any).await,
                        Event::Binary(_) => ctx.malformed("binary"),
                        Event::Ping => ping = true,
                        Event::Pong => {}
                        Event::Close(code) => lost = Some(format!("closed by server (code {})", code.map_or("none".into(), |c| c.to_string()))),
                    }
                }
            }
        }
        if let Some(cause) = lost {
            if conn.ws.flush_control().await.is_ok() {
                conn.ws.close(1000).await;
            }
            return Ended::Lost { cause, healthy: healthy(cfg, &conn) };
        }
        if ping {
            if let Err(e) = conn.ws.flush_control().await {
                return Ended::Lost { cause: format!("pong: {e}"), healthy: healthy(cfg, &conn) };
            }
        }
        let now = Instant::now();
        if now >= last_frame + cfg.silence_timeout {
            return Ended::Lost {
                cause: format!(
                    "silent for {} ms (no frame, no pong)",
                    now.saturating_duration_since(last_frame).as_millis()
                ),
                healthy: healthy(cfg, &conn),
            };
        }
        if now >= next_ping {
            next_ping = now + ping_every;
            if let Err(e) = conn.ws.send_ping(b"tg").await {
                return Ended::Lost { cause: format!("ping: {e}"), healthy: healthy(cfg, &conn) };
            }
        }
        if !outbox.is_empty() && now >= next_send {
            if let Some((id, ids, msg)) = outbox.pop_front() {
                conn.pending.insert(id, ids);
                if let Err(e) = conn.ws.send_text(msg.as_bytes()).await {
                    return Ended::Lost { cause: format!("subscribe: {e}"), healthy: healthy(cfg, &conn) };
                }
                next_send = now + cfg.control_spacing;
            }
        }
        if (shutdown || now >= rotate_at) && rotation.is_none() {
            log::info!(
                "[RECONNECT] event=rotating cause={} (opening the next connection first)",
                if shutdown { "serverShutdown" } else { "max_lifetime" }
            );
            rotation = Some(tokio::spawn(open_replacement(cfg.clone(), connector.clone(), ctx.clone())));
        }
    }
}
