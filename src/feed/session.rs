//! The feed session driver, one for every venue: resolve → TCP → TLS → WebSocket → subscribe
//! → read, for ever. A venue ([`Venue`]: `super::binance::BinanceFeed`,
//! `super::upstox::UpstoxFeed`) says only what differs: where to connect (Upstox authorizes
//! first), its subscription messages, how a frame is decoded, and how it rotates.
//!
//! - Answers pings, sends its own every third of `silence_timeout`, and declares the feed
//!   silent when no frame of any kind arrives within `silence_timeout` (a half-open TCP
//!   connection is caught, not waited out).
//! - Reconnects with the core's jittered exponential backoff (reset once a connection has been
//!   live and up for `reconnect_max`), checks DNS afresh on every third attempt, and
//!   resubscribes everything.
//! - Paces control frames (subscribes) `control_spacing` apart.
//! - Rotates before the venue's connection lifetime: Binance ([`Rotation::Overlap`]) opens and
//!   subscribes the next connection before it closes the old one (also on `serverShutdown`);
//!   Upstox ([`Rotation::CloseFirst`]) allows one connection per app and user, so it closes
//!   first.
//! - Yields to the runtime every [`YIELD_EVERY`] frames, so a busy feed never starves the
//!   engine's task on the same thread.
//! - A fatal error ([`FeedError`] with `Severity::Fatal`: Upstox's 401 or an unreadable token)
//!   is not retried: the venue blocks until its token changes ([`Venue::gate`]).
//! - Every state change reaches the engine as a [`FeedEvent`]; `[RECONNECT]` lines say
//!   attempt, delay and cause.
//!
//! The per-frame path (bytes → decode → symbol lookup → tick queue) does not allocate.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::error::FeedError;
use super::symbols::SymbolIndex;
use crate::bus::EngineHandle;
use crate::bus::clock::{Clock, mono};
use crate::bus::error::{EdgeError, Severity};
use crate::core::backoff::{Backoff, Rng};
use crate::core::engine::FeedEvent;
use crate::core::types::{InstrumentId, Symbol};
use crate::net::http::Connector;
use crate::net::ws::{Event, WsConn};

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

impl Ctx {
    /// Counts a frame that could not be decoded; logs the first of each kind.
    pub(crate) fn malformed(&self, kind: &'static str) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
        let first = self.shared.malformed_logged.lock().map(|mut s| s.insert(kind)).unwrap_or(false);
        if first {
            log::warn!("[RECONNECT] event=malformed_frame kind={kind} (counted; logged once per kind)");
        }
    }

    /// The connection became live: the shared state says so, the REST answers sent before are
    /// discarded (a new epoch) and the failure run is over.
    pub(crate) fn mark_live(&self) {
        self.shared.live.store(true, Ordering::Relaxed);
        self.shared.epoch.fetch_add(1, Ordering::Relaxed);
        self.shared.attempts.store(0, Ordering::Relaxed);
    }
}

/// The timings of a session (each venue fills them from its settings).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// No frame for this long means the feed is silent (`feed.silence_timeout_s`).
    pub silence_timeout: Duration,
    /// First reconnect delay (`feed.reconnect_initial_s`).
    pub reconnect_initial: Duration,
    /// Slowest reconnect delay (`feed.reconnect_max_s`); a connection live this long resets
    /// the backoff.
    pub reconnect_max: Duration,
    /// Jitter of the reconnect delays.
    pub jitter: f64,
    /// Bound of (authorize +) connect + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Least time between two control messages (subscribes).
    pub control_spacing: Duration,
    /// Rotate a connection this old (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// Seed of the jitter and of the frame masks.
    pub seed: u64,
}

/// How a venue replaces a connection before its lifetime ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Open and subscribe the next connection, then close the old one (no gap; Binance).
    Overlap,
    /// Close the old connection, then open the next (one connection per app and user; Upstox).
    CloseFirst,
}

/// Whether the session may try the network now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go on.
    Go,
    /// The venue was blocked and is not any more (a new token): try again with a fresh backoff.
    Unblocked,
    /// `stop` fired while waiting.
    Stop,
}

/// What differs between venues; the driver ([`run`]) does the rest. The per-frame method
/// ([`Venue::on_data`]) must not allocate.
pub trait Venue: Send + Sync + 'static {
    /// Per-connection state of the venue (pending acknowledgements, requested instruments ...).
    type Conn: Send + 'static;
    /// Per-session scratch space, allocated once, so that a frame allocates nothing.
    type Scratch: Send + 'static;
    /// What an instrument added later is subscribed under (a symbol, an instrument key).
    type Item: Send + 'static;
    /// How a connection is rotated.
    const ROTATION: Rotation;
    /// Control messages go as binary frames (Upstox) or text frames (Binance).
    const BINARY_CONTROL: bool;
    /// Instruments added later that one control message may carry.
    const ADDED_BATCH: usize;

    /// The session's timings.
    fn timing(&self) -> Timing;
    /// The tag of the driver's log lines: `[RECONNECT]` for the guard's feed; the LAN relay's
    /// own upstream says `[RELAY]`, so that its reconnects are never read as the guard's.
    fn log_tag(&self) -> &'static str {
        "[RECONNECT]"
    }
    /// The host of the `[DNS] event=health_check` line.
    fn dns_host(&self) -> &str;
    /// A fresh scratch space.
    fn scratch(&self) -> Self::Scratch;
    /// Waits while the venue is blocked (Upstox: a rejected token, until the file changes).
    fn gate(&self, ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> impl Future<Output = Gate> + Send;
    /// Resolves (and authorizes), connects, does TLS and the WebSocket upgrade. Bounded by the
    /// driver with `connect_timeout`.
    fn connect(
        &self,
        connector: &Connector,
        ctx: &Ctx,
        fresh_dns: bool,
        rng: &mut Rng,
    ) -> impl Future<Output = Result<(WsConn, Self::Conn), FeedError>> + Send;
    /// The subscription messages for every instrument, recorded in `conn` as requested.
    fn subscriptions(&self, ctx: &Ctx, conn: &mut Self::Conn) -> Vec<String>;
    /// The subscriptions of a new connection were sent, in `requests` messages.
    fn subscribe_sent(&self, _conn: &Self::Conn, _requests: usize) {}
    /// An instrument registered (at start, between connections or live): what it is subscribed
    /// under, `None` when the venue cannot carry it (logged).
    fn register(&self, ctx: &Ctx, id: InstrumentId, sym: &Symbol) -> Option<Self::Item>;
    /// Whether the live connection takes one more instrument (Upstox: its subscription cap).
    fn admit(&self, _conn: &Self::Conn, _sym: &Symbol) -> bool {
        true
    }
    /// The control message subscribing `items` on the live connection (recorded in `conn`).
    fn added_message(&self, conn: &mut Self::Conn, items: &[(InstrumentId, Self::Item)]) -> String;
    /// `added_message` for `ids` was sent.
    fn added_sent(
        &self,
        ctx: &Ctx,
        conn: &mut Self::Conn,
        ids: &[InstrumentId],
    ) -> impl Future<Output = ()> + Send;
    /// One data frame (text or binary): decode, hand its prices to the engine, follow the
    /// subscription state. Returns true when the server announced its shutdown.
    fn on_data(
        &self,
        ctx: &Ctx,
        conn: &mut Self::Conn,
        scratch: &mut Self::Scratch,
        bytes: &[u8],
        binary: bool,
    ) -> impl Future<Output = bool> + Send;
    /// The connection is live (subscribed).
    fn is_live(&self, conn: &Self::Conn) -> bool;
    /// Every subscription sent on `conn` was acknowledged (a replacement waits for this).
    fn acked(&self, _conn: &Self::Conn) -> bool {
        true
    }
    /// Marks a replacement connection live (its acknowledgements do not start a new epoch).
    fn set_live(&self, conn: &mut Self::Conn);
    /// The feed went down (beyond `live` and `subscribed`, which the driver clears).
    fn down(&self, _ctx: &Ctx) {}
    /// A fatal error: block the network (Upstox: raise `[AUTH]`, wait for a new token). True
    /// when the venue now blocks ([`Venue::gate`] waits); false to back off and retry.
    fn fatal(&self, _ctx: &Ctx, _e: &FeedError) -> bool {
        false
    }
}

/// One open connection.
pub struct Session<C> {
    ws: WsConn,
    /// The venue's state of this connection.
    venue: C,
    opened: Instant,
}

enum Ended {
    Stop,
    /// The connection is gone; `healthy` when it had been live and up for at least
    /// `reconnect_max` (only then is the backoff reset).
    Lost {
        cause: FeedError,
        healthy: bool,
    },
    /// Closed on purpose to open the next one ([`Rotation::CloseFirst`]).
    Rotate,
}

async fn send_control<V: Venue>(ws: &mut WsConn, msg: &str) -> Result<(), FeedError> {
    let r = if V::BINARY_CONTROL {
        ws.send_binary(msg.as_bytes()).await
    } else {
        ws.send_text(msg.as_bytes()).await
    };
    r.map_err(FeedError::Subscribe)
}

async fn open<V: Venue>(
    venue: &V,
    connector: &Connector,
    ctx: &Ctx,
    fresh_dns: bool,
    rng: &mut Rng,
) -> Result<Session<V::Conn>, FeedError> {
    let t = venue.timing();
    let (ws, conn) = tokio::time::timeout(t.connect_timeout, venue.connect(connector, ctx, fresh_dns, rng))
        .await
        .map_err(|_| FeedError::ConnectTimeout(t.connect_timeout.as_millis()))??;
    let mut s = Session { ws, venue: conn, opened: mono() };
    let msgs = venue.subscriptions(ctx, &mut s.venue);
    for (n, msg) in msgs.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(t.control_spacing).await;
        }
        send_control::<V>(&mut s.ws, msg).await?;
    }
    venue.subscribe_sent(&s.venue, msgs.len());
    Ok(s)
}

/// Opens a replacement connection and waits (bounded) for its subscriptions to be
/// acknowledged, handing its quotes on meanwhile.
async fn open_replacement<V: Venue>(
    venue: Arc<V>,
    connector: Connector,
    ctx: Ctx,
) -> Result<Session<V::Conn>, FeedError> {
    let t = venue.timing();
    let mut rng = Rng::new(t.seed ^ ctx.clock.now().as_nanos());
    let mut s = open(&*venue, &connector, &ctx, false, &mut rng).await?;
    let mut scratch = venue.scratch();
    // The feed is live already: this connection's acknowledgements start no new epoch.
    venue.set_live(&mut s.venue);
    let deadline = mono() + t.connect_timeout;
    while !venue.acked(&s.venue) {
        let ev = tokio::time::timeout_at(deadline, s.ws.next())
            .await
            .map_err(|_| FeedError::AckTimeout)?
            .map_err(FeedError::Read)?;
        let mut ping = false;
        match ev {
            Event::Text(b) => {
                venue.on_data(&ctx, &mut s.venue, &mut scratch, b, false).await;
            }
            Event::Binary(b) => {
                venue.on_data(&ctx, &mut s.venue, &mut scratch, b, true).await;
            }
            Event::Ping => ping = true,
            Event::Close(c) => return Err(FeedError::Closed(c)),
            Event::Pong => {}
        }
        if ping {
            s.ws.flush_control().await.map_err(FeedError::Pong)?;
        }
    }
    Ok(s)
}

fn mark_down<V: Venue>(venue: &V, ctx: &Ctx) {
    ctx.shared.live.store(false, Ordering::Relaxed);
    ctx.shared.subscribed.store(0, Ordering::Relaxed);
    venue.down(ctx);
}

/// Runs `venue`'s session until `stop` fires. `added` brings instruments registered later,
/// which are subscribed on the live connection and on every reconnect.
pub async fn run<V: Venue>(
    venue: Arc<V>,
    connector: Connector,
    ctx: Ctx,
    mut added: mpsc::Receiver<(InstrumentId, Symbol)>,
    mut stop: watch::Receiver<bool>,
) {
    let t = venue.timing();
    let mut backoff = Backoff::new(t.reconnect_initial, t.reconnect_max, t.jitter);
    let mut rng = Rng::new(t.seed);
    let mut scratch = venue.scratch();
    loop {
        while let Ok((id, sym)) = added.try_recv() {
            let _ = venue.register(&ctx, id, &sym);
        }
        match venue.gate(&ctx, &mut stop).await {
            Gate::Go => {}
            Gate::Unblocked => {
                backoff.reset();
                continue;
            }
            Gate::Stop => return,
        }
        // The logged attempt, the backoff step and the every-third DNS check count the same
        // thing: failures since the last healthy connection. (A separate counter, zeroed after
        // a subscribed connection, logged "attempt=1" twice and ran one step behind the
        // backoff; found by tests/network_edge.rs.)
        let attempt = backoff.attempt() + 1;
        let fresh_dns = attempt % 3 == 0;
        if fresh_dns {
            log::info!("[DNS] event=health_check host={} attempt={attempt}", venue.dns_host());
        }
        let cause = match open(&*venue, &connector, &ctx, fresh_dns, &mut rng).await {
            Ok(s) => {
                match read_loop(&venue, &connector, &ctx, s, &mut scratch, &mut added, &mut stop).await {
                    Ended::Stop => return,
                    Ended::Rotate => {
                        mark_down(&*venue, &ctx);
                        ctx.shared.rotations.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Ended::Lost { cause, healthy } => {
                        if healthy {
                            backoff.reset();
                        }
                        cause
                    }
                }
            }
            Err(e) => e,
        };
        let blocked = cause.severity() == Severity::Fatal && venue.fatal(&ctx, &cause);
        mark_down(&*venue, &ctx);
        ctx.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        ctx.engine.feed(FeedEvent::Disconnected).await;
        if blocked {
            // No backoff, no retry: the gate waits for what unblocks the venue.
            continue;
        }
        ctx.shared.network_errors.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.next_delay(&mut rng);
        ctx.shared.attempts.store(u64::from(backoff.attempt()), Ordering::Relaxed);
        log::warn!(
            "{} attempt={} delay_ms={} cause=\"{}\"",
            venue.log_tag(),
            backoff.attempt(),
            delay.as_millis(),
            cause.to_string().replace('"', "'")
        );
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Frames the read loop handles before it lets other tasks (the engine) run. The engine task
/// shares the feed's thread, so a crossing tick waits for the frames read after it up to the
/// next yield: at 64 that was up to ~25 µs of decoding on an x86 core (tick-to-action p99 50–250 µs
/// in scripts/bench-feed, mean 11–15 µs); at 16 the p99 is ≤ 25 µs and the mean 5 µs, for some
/// 15 % fewer frames per second under a flood (2.0–2.2 M/s instead of 2.3–2.6 M/s).
pub const YIELD_EVERY: u32 = 16;

/// A connection that was live and stayed up for `reconnect_max` resets the backoff. A server
/// that accepts the subscriptions and then drops every connection at once (e.g. closing with
/// 1008 over the message budget) must not be redialled at the first delay for ever: Binance
/// bans an IP past 300 connection attempts in 5 minutes.
fn healthy<V: Venue>(venue: &V, s: &Session<V::Conn>) -> bool {
    venue.is_live(&s.venue) && s.opened.elapsed() >= venue.timing().reconnect_max
}

/// Closes our side and reports the connection lost.
async fn lost<V: Venue>(venue: &V, mut s: Session<V::Conn>, cause: FeedError) -> Ended {
    s.ws.close(1000).await;
    Ended::Lost { cause, healthy: healthy(venue, &s) }
}

async fn read_loop<V: Venue>(
    venue: &Arc<V>,
    connector: &Connector,
    ctx: &Ctx,
    mut s: Session<V::Conn>,
    scratch: &mut V::Scratch,
    added: &mut mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let t = venue.timing();
    let ping_every = t.silence_timeout / 3;
    let mut last_frame = mono();
    let mut next_ping = last_frame + ping_every;
    let mut rotate_at = t.max_lifetime.map(|d| s.opened + d);
    let mut rotation: Option<tokio::task::JoinHandle<Result<Session<V::Conn>, FeedError>>> = None;
    let mut outbox: VecDeque<(InstrumentId, V::Item)> = VecDeque::new();
    let mut next_send = mono();
    // Frames handled since this task last yielded. While frames are buffered `next()` never
    // waits, and tokio's budget only forces a yield every 128 socket reads (some 10 000
    // frames), so under a flood the engine task, which shares the thread, ran a crossing tick
    // tens of milliseconds late (p99 ≤ 50 ms in scripts/bench-feed). Yielding every
    // `YIELD_EVERY` frames bounds that wait to a few hundred microseconds. (Upstox's copy of
    // this loop had lost the yield: tests/upstox_session.rs floods it.)
    let mut since_yield = 0u32;
    loop {
        since_yield += 1;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let mut wake = (last_frame + t.silence_timeout).min(next_ping);
        if let (Some(r), None) = (rotate_at, rotation.as_ref()) {
            wake = wake.min(r);
        }
        if !outbox.is_empty() {
            wake = wake.min(next_send);
        }
        let mut ping = false;
        let mut shutdown = false;
        let mut gone: Option<FeedError> = None;
        tokio::select! {
            biased;
            _ = stop.changed() => {
                s.ws.close(1000).await;
                return Ended::Stop;
            }
            r = async { match rotation.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                rotation = None;
                match r {
                    Ok(Ok(new)) => {
                        s.ws.close(1000).await;
                        s = new;
                        last_frame = mono();
                        next_ping = last_frame + ping_every;
                        rotate_at = t.max_lifetime.map(|d| s.opened + d);
                        ctx.shared.rotations.fetch_add(1, Ordering::Relaxed);
                        log::info!("{} event=rotated (new connection subscribed before the old one closed)", venue.log_tag());
                    }
                    Ok(Err(e)) => {
                        log::warn!("{} event=rotation_failed cause=\"{e}\" (keeping the current connection)", venue.log_tag());
                        rotate_at = Some(mono() + t.reconnect_max);
                    }
                    Err(e) => {
                        log::warn!("{} event=rotation_failed cause=\"{e}\"", venue.log_tag());
                        rotate_at = Some(mono() + t.reconnect_max);
                    }
                }
                continue;
            }
            Some((id, sym)) = added.recv() => {
                if let Some(item) = venue.register(ctx, id, &sym) {
                    if venue.admit(&s.venue, &sym) {
                        outbox.push_back((id, item));
                    }
                }
                continue;
            }
            r = tokio::time::timeout_at(wake, s.ws.next()) => match r {
                Err(_) => {}
                Ok(Err(e)) => gone = Some(FeedError::Read(e)),
                Ok(Ok(ev)) => {
                    last_frame = mono();
                    match ev {
                        Event::Text(b) => shutdown = venue.on_data(ctx, &mut s.venue, scratch, b, false).await,
                        Event::Binary(b) => shutdown = venue.on_data(ctx, &mut s.venue, scratch, b, true).await,
                        Event::Ping => ping = true,
                        Event::Pong => {}
                        Event::Close(code) => gone = Some(FeedError::Closed(code)),
                    }
                }
            }
        }
        if let Some(cause) = gone {
            if s.ws.flush_control().await.is_ok() {
                s.ws.close(1000).await;
            }
            return Ended::Lost { cause, healthy: healthy(&**venue, &s) };
        }
        if ping {
            if let Err(e) = s.ws.flush_control().await {
                return lost(&**venue, s, FeedError::Pong(e)).await;
            }
        }
        let now = mono();
        if now >= last_frame + t.silence_timeout {
            // Close our side before anything else is opened (Upstox: one connection per app
            // and user).
            let ms = now.saturating_duration_since(last_frame).as_millis();
            return lost(&**venue, s, FeedError::Silent(ms)).await;
        }
        if now >= next_ping {
            next_ping = now + ping_every;
            if let Err(e) = s.ws.send_ping(b"tg").await {
                return lost(&**venue, s, FeedError::Ping(e)).await;
            }
        }
        if !outbox.is_empty() && now >= next_send {
            let n = outbox.len().min(V::ADDED_BATCH.max(1));
            let items: Vec<(InstrumentId, V::Item)> = outbox.drain(..n).collect();
            let msg = venue.added_message(&mut s.venue, &items);
            if let Err(e) = send_control::<V>(&mut s.ws, &msg).await {
                return lost(&**venue, s, e).await;
            }
            let ids: Vec<InstrumentId> = items.iter().map(|(i, _)| *i).collect();
            venue.added_sent(ctx, &mut s.venue, &ids).await;
            next_send = now + t.control_spacing;
        }
        let due = rotate_at.is_some_and(|r| now >= r);
        match V::ROTATION {
            Rotation::Overlap => {
                if (shutdown || due) && rotation.is_none() {
                    log::info!(
                        "{} event=rotating cause={} (opening the next connection first)",
                        venue.log_tag(),
                        if shutdown { "serverShutdown" } else { "max_lifetime" }
                    );
                    rotation =
                        Some(tokio::spawn(open_replacement(venue.clone(), connector.clone(), ctx.clone())));
                }
            }
            Rotation::CloseFirst => {
                if due || shutdown {
                    log::info!(
                        "{} event=rotating cause={} (closing this connection first: Upstox allows one per app and user)",
                        venue.log_tag(),
                        if shutdown { "serverShutdown" } else { "max_lifetime" }
                    );
                    s.ws.close(1000).await;
                    return Ended::Rotate;
                }
            }
        }
    }
}

impl crate::bus::status::FeedProbe for FeedShared {
    fn stats(&self) -> crate::bus::status::FeedStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::bus::status::FeedStats {
            live: self.live.load(Ordering::Relaxed),
            reconnects: n(&self.reconnects),
            attempts: n(&self.attempts),
            network_errors: n(&self.network_errors),
            frames: n(&self.frames),
            ticks: n(&self.ticks),
            malformed: n(&self.malformed),
            unknown_symbols: n(&self.unknown_symbols),
            rotations: n(&self.rotations),
            subscribed: n(&self.subscribed),
            auth_failures: n(&self.auth_failures),
            auth_blocked: self.auth_blocked.load(Ordering::Relaxed),
        }
    }
}
