//! The relay's own upstream: the feed's session driver ([`crate::feed::session::run`]), the
//! same resolver and TLS, but its own connection, its own symbol index and its own sink (the
//! relay's hub, never the guard's engine). One upstream per relay, shared by every client.
//!
//! - Binance ([`RelayBinance`]): `<sym>@bookTicker`, `<sym>@trade` and `<sym>@kline_<i>` for
//!   every relayed symbol and interval.
//! - Backfill ([`run_backfill`]): `GET /api/v3/klines` (up to 1 000 bars a call, weight 2),
//!   one call at a time, through the upstream's circuit breaker.
//! - The breaker ([`Breaker`], the core's): opened by failed connections and REST errors,
//!   it holds connection attempts and REST calls back for `relay.breaker_recovery_s`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::candle::{Candle, Interval, Source};
use super::hub::{BackfillError, BackfillJob, Input};
use super::protocol::QuoteFields;
use super::stats::RelayStats;
use crate::bus::clock::{Clock, mono, wall_unix_ms};
use crate::core::backoff::{CircuitBreaker, Rng};
use crate::core::price::{Price, Qty};
use crate::core::types::{InstrumentId, Symbol};
use crate::feed::error::FeedError;
use crate::feed::session::{Ctx, Gate, Rotation, Timing, Venue};
use crate::net::http::{self, Connector, Endpoint, Req};
use crate::net::ws::{self, WsConn, WsLimits};

/// Consecutive failures (connections, REST calls) that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// Bars one `klines` call asks for (Binance's maximum).
pub const KLINES_LIMIT: usize = 1000;
/// Tries of one backfill before its hole is announced as a gap.
pub const BACKFILL_TRIES: u32 = 3;

/// The upstream's circuit breaker, shared by its WebSocket and REST sides.
pub struct Breaker {
    inner: Mutex<CircuitBreaker>,
    rng: Mutex<Rng>,
    clock: Clock,
    stats: Arc<RelayStats>,
}

impl Breaker {
    /// A closed breaker that opens for `recovery` after [`BREAKER_THRESHOLD`] failures.
    pub fn new(recovery: Duration, clock: Clock, stats: Arc<RelayStats>, seed: u64) -> Breaker {
        Breaker {
            inner: Mutex::new(CircuitBreaker::new(BREAKER_THRESHOLD, recovery, recovery)),
            rng: Mutex::new(Rng::new(seed)),
            clock,
            stats,
        }
    }
    fn with<T>(&self, f: impl FnOnce(&mut CircuitBreaker) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut g);
        let gauge = g.gauge(self.clock.now());
        self.stats.breaker.store(gauge, Ordering::Relaxed);
        r
    }
    /// True when a connection or call may go now.
    pub fn allow(&self) -> bool {
        self.with(|b| b.allow(self.clock.now()))
    }
    /// A success closes it.
    pub fn success(&self) {
        self.with(CircuitBreaker::on_success);
    }
    /// A failure (counted as a connection error).
    pub fn failure(&self) {
        self.stats.connection_errors.fetch_add(1, Ordering::Relaxed);
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.stats.breaker.load(Ordering::Relaxed);
        self.with(|b| b.on_failure(self.clock.now(), &mut rng));
        if was == 0 && self.stats.breaker.load(Ordering::Relaxed) == 1 {
            log::warn!(
                "[RELAY] event=breaker_open (the upstream failed {BREAKER_THRESHOLD} times in a row; held back)"
            );
        }
    }
    /// The venue asked us to wait (`Retry-After`).
    pub fn hold_off(&self, wait: Duration) {
        self.with(|b| b.hold_off(self.clock.now(), wait));
    }
    /// Refreshes the gauge (an open breaker turns half-open by time alone).
    pub fn refresh(&self) {
        self.with(|_| ());
    }
    /// Waits until a try is allowed or `stop` fires (false then).
    pub async fn wait(&self, stop: &mut watch::Receiver<bool>) -> bool {
        for _ in 0..100_000 {
            if *stop.borrow() {
                return false;
            }
            if self.allow() {
                return true;
            }
            tokio::select! {
                _ = stop.changed() => return false,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        false
    }
}

/// Hands an event to the hub: at once when there is room, else waits (the upstream's read
/// pauses) and counts a blocking event. Nothing is dropped.
pub async fn deliver(tx: &mpsc::Sender<Input>, stats: &RelayStats, ev: Input) {
    match tx.try_send(ev) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(ev)) => {
            stats.blocking.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(ev).await;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// The relay's Binance venue for the session driver.
pub struct RelayBinance {
    /// The WebSocket endpoint.
    pub endpoint: Endpoint,
    /// Intervals relayed (a kline stream each).
    pub intervals: Vec<Interval>,
    /// Timings.
    pub timing: Timing,
    /// The hub.
    pub hub: mpsc::Sender<Input>,
    /// Counters.
    pub stats: Arc<RelayStats>,
    /// The breaker.
    pub breaker: Arc<Breaker>,
}

/// One relay connection: the instruments of each unacknowledged request.
pub struct RelayConn {
    pending: HashMap<i64, usize>,
    next_id: i64,
    live: bool,
}

impl RelayBinance {
    fn streams(&self, sym: &str) -> Vec<String> {
        let s = sym.to_ascii_lowercase();
        let mut v = vec![format!("{s}@bookTicker"), format!("{s}@trade")];
        v.extend(self.intervals.iter().map(|i| format!("{s}@kline_{i}")));
        v
    }
    fn subscribe(&self, syms: &[(InstrumentId, Symbol)], conn: &mut RelayConn) -> Vec<String> {
        // 200 streams a message, within Binance's 1 024 streams a connection (128 symbols ×
        // (2 + 4 intervals) = 768).
        let per = (200 / (2 + self.intervals.len())).max(1);
        syms.chunks(per)
            .map(|chunk| {
                let id = conn.next_id;
                conn.next_id += 1;
                let params: Vec<String> =
                    chunk.iter().flat_map(|(_, s)| self.streams(s)).map(|s| format!("\"{s}\"")).collect();
                conn.pending.insert(id, chunk.len());
                format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":{id}}}", params.join(","))
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct Kline<'a> {
    #[serde(rename = "t")]
    open_time: i64,
    #[serde(rename = "i", borrow)]
    interval: &'a str,
    #[serde(rename = "o", borrow)]
    open: &'a str,
    #[serde(rename = "h", borrow)]
    high: &'a str,
    #[serde(rename = "l", borrow)]
    low: &'a str,
    #[serde(rename = "c", borrow)]
    close: &'a str,
    #[serde(rename = "v", borrow)]
    volume: &'a str,
    #[serde(rename = "x")]
    closed: bool,
}

/// One Binance frame, raw (`/ws`) or combined (`/stream`: `{"stream":..,"data":{..}}`).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "e", borrow, default)]
    event: Option<&'a str>,
    #[serde(rename = "s", borrow, default)]
    symbol: Option<&'a str>,
    #[serde(rename = "b", borrow, default)]
    bid: Option<&'a str>,
    #[serde(rename = "a", borrow, default)]
    ask: Option<&'a str>,
    #[serde(rename = "p", borrow, default)]
    price: Option<&'a str>,
    #[serde(rename = "q", borrow, default)]
    qty: Option<&'a str>,
    #[serde(rename = "T", default)]
    trade_time: Option<i64>,
    #[serde(rename = "E", default)]
    event_time: Option<i64>,
    #[serde(rename = "k", borrow, default)]
    kline: Option<Kline<'a>>,
    #[serde(borrow, default)]
    data: Option<Box<Frame<'a>>>,
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    result: Option<serde_json::Value>,
}

fn price(s: &str) -> Option<Price> {
    Price::parse(s).ok()
}

/// A kline's bar, parsed (`None`: a malformed field).
fn kline_candle(k: &Kline<'_>) -> Option<Candle> {
    Some(Candle {
        open_time: k.open_time,
        open: price(k.open)?,
        high: price(k.high)?,
        low: price(k.low)?,
        close: price(k.close)?,
        volume: Qty::parse(k.volume).ok()?,
        closed: k.closed,
        revision: 0,
        source: Source::Kline,
    })
}

impl Venue for RelayBinance {
    type Conn = RelayConn;
    type Scratch = ();
    type Item = Symbol;
    const ROTATION: Rotation = Rotation::Overlap;
    const BINARY_CONTROL: bool = false;
    const ADDED_BATCH: usize = 8;

    fn timing(&self) -> Timing {
        self.timing
    }
    fn log_tag(&self) -> &'static str {
        "[RELAY]"
    }
    fn dns_host(&self) -> &str {
        &self.endpoint.host
    }
    fn scratch(&self) {}
    async fn gate(&self, _ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Gate {
        if self.breaker.wait(stop).await { Gate::Go } else { Gate::Stop }
    }
    async fn connect(
        &self,
        connector: &Connector,
        ctx: &Ctx,
        fresh_dns: bool,
        _rng: &mut Rng,
    ) -> Result<(WsConn, RelayConn), FeedError> {
        let ep = &self.endpoint;
        let r = async {
            let (stream, addr, _) = connector.connect(ep, fresh_dns).await.map_err(FeedError::Connect)?;
            log::info!("[RELAY] event=upstream_connected host={} addr={addr}", ep.host);
            let limits = WsLimits { max_frame: 64 * 1024, max_message: 64 * 1024 };
            ws::connect(
                stream,
                &ep.host_header(),
                &ep.path,
                &[],
                limits,
                self.timing.seed ^ ctx.clock.now().as_nanos(),
            )
            .await
            .map_err(FeedError::Upgrade)
        }
        .await;
        match r {
            Ok(ws) => Ok((ws, RelayConn { pending: HashMap::new(), next_id: 1, live: false })),
            Err(e) => {
                self.breaker.failure();
                Err(e)
            }
        }
    }
    fn subscriptions(&self, ctx: &Ctx, conn: &mut RelayConn) -> Vec<String> {
        let insts = ctx.shared.instruments();
        self.subscribe(&insts, conn)
    }
    fn register(&self, ctx: &Ctx, id: InstrumentId, sym: &Symbol) -> Option<Symbol> {
        ctx.shared.add(id, sym.clone());
        Some(sym.clone())
    }
    fn added_message(&self, conn: &mut RelayConn, items: &[(InstrumentId, Symbol)]) -> String {
        self.subscribe(items, conn).join("")
    }
    async fn added_sent(&self, _ctx: &Ctx, _conn: &mut RelayConn, _ids: &[InstrumentId]) {}
    async fn on_data(&self, ctx: &Ctx, conn: &mut RelayConn, _: &mut (), bytes: &[u8], binary: bool) -> bool {
        if binary {
            ctx.malformed("binary");
            return false;
        }
        ctx.shared.frames.fetch_add(1, Ordering::Relaxed);
        let recv = mono();
        let Ok(f) = serde_json::from_slice::<Frame<'_>>(bytes) else {
            ctx.malformed("relay_json");
            return false;
        };
        let f = match f.data {
            Some(d) => *d,
            None => f,
        };
        if let Some(id) = f.id {
            if f.error.is_some() {
                conn.pending.remove(&id);
                log::warn!("[RELAY] event=venue_error request_id={id}");
            } else if (f.result.is_some() || f.event.is_none())
                && conn.pending.remove(&id).is_some()
                && !conn.live
            {
                // The first acknowledgement of a connection: the upstream is live.
                conn.live = true;
                ctx.mark_live();
                self.breaker.success();
                deliver(&self.hub, &self.stats, Input::Up).await;
            }
            return false;
        }
        if f.event == Some("serverShutdown") {
            return true;
        }
        let Some(sym) = f.symbol.and_then(|s| ctx.shared.lookup(s.as_bytes())) else {
            if f.symbol.is_some() {
                ctx.shared.unknown_symbols.fetch_add(1, Ordering::Relaxed);
            }
            return false;
        };
        let ev = match (f.event, &f.kline) {
            (Some("kline"), Some(k)) => {
                let (Some(iv), Some(c)) = (Interval::parse(k.interval), kline_candle(k)) else {
                    ctx.malformed("relay_kline");
                    return false;
                };
                Input::Kline { sym: sym.0, iv, candle: c }
            }
            (Some("trade"), _) => {
                let (Some(p), Some(q), Some(t)) =
                    (f.price.and_then(price), f.qty.and_then(|q| Qty::parse(q).ok()), f.trade_time)
                else {
                    ctx.malformed("relay_trade");
                    return false;
                };
                Input::Trade { sym: sym.0, price: p, qty: q, t_ms: t }
            }
            (None | Some("bookTicker"), _) => {
                let (Some(b), Some(a)) = (f.bid.and_then(price), f.ask.and_then(price)) else {
                    ctx.malformed("relay_quote");
                    return false;
                };
                ctx.shared.ticks.fetch_add(1, Ordering::Relaxed);
                Input::Quote {
                    sym: sym.0,
                    q: QuoteFields {
                        bid: Some(b),
                        ask: Some(a),
                        last: None,
                        ts_event: f.event_time,
                        ts_recv: wall_unix_ms(),
                    },
                    recv,
                }
            }
            _ => return false,
        };
        deliver(&self.hub, &self.stats, ev).await;
        false
    }
    fn is_live(&self, conn: &RelayConn) -> bool {
        conn.live
    }
    fn acked(&self, conn: &RelayConn) -> bool {
        conn.pending.is_empty()
    }
    fn set_live(&self, conn: &mut RelayConn) {
        conn.live = true;
    }
}

/// One row of a `klines` answer: open time, OHLCV, close time, and what the relay ignores.
type KlineRow<'a> = (
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
    serde::de::IgnoredAny,
);

/// Parses a `klines` answer into closed bars (the unclosed last one is left out). The bool
/// says whether the answer reached the present.
pub fn parse_klines(body: &[u8], now_ms: i64, limit: usize) -> Result<(Vec<Candle>, bool), String> {
    let rows: Vec<KlineRow<'_>> = serde_json::from_slice(body).map_err(|e| format!("klines answer: {e}"))?;
    let n = rows.len();
    let mut out = Vec::with_capacity(n);
    let mut reached_open_bar = false;
    for r in &rows {
        if r.6 >= now_ms {
            reached_open_bar = true;
            continue;
        }
        let p = |s: &str| Price::parse(s).map_err(|e| format!("klines price {s:?}: {e}"));
        out.push(Candle {
            open_time: r.0,
            open: p(r.1)?,
            high: p(r.2)?,
            low: p(r.3)?,
            close: p(r.4)?,
            volume: Qty::parse(r.5).map_err(|e| format!("klines volume {:?}: {e}", r.5))?,
            closed: true,
            revision: 0,
            source: Source::Rest,
        });
    }
    Ok((out, reached_open_bar || n < limit))
}

/// Where the backfill asks: Binance's `klines`, or Upstox's intraday candles (with the
/// relay's own token).
pub enum RestSource {
    /// `GET /api/v3/klines` (weight 2 for up to 1 000 bars).
    Binance,
    /// `GET /v3/historical-candle/intraday/{key}/{unit}/{n}` (today's bars, newest first).
    Upstox(super::upstox::UpstoxRest),
}

impl RestSource {
    /// The path and the `Authorization` header of a job.
    fn request(&self, job: &BackfillJob) -> Result<(String, Option<String>), BackfillError> {
        match self {
            RestSource::Binance => {
                let start = job.from.unwrap_or_else(|| {
                    job.iv.floor(wall_unix_ms()) - (KLINES_LIMIT as i64 - 1) * job.iv.millis()
                });
                Ok((
                    format!(
                        "/api/v3/klines?symbol={}&interval={}&limit={KLINES_LIMIT}&startTime={start}",
                        job.symbol, job.iv
                    ),
                    None,
                ))
            }
            RestSource::Upstox(u) => u.request(job),
        }
    }
    /// The closed bars of an answer, and whether they reach the present.
    fn parse(&self, body: &[u8], job: &BackfillJob) -> Result<(Vec<Candle>, bool), String> {
        let now = wall_unix_ms();
        match self {
            RestSource::Binance => parse_klines(body, now, KLINES_LIMIT),
            RestSource::Upstox(_) => super::upstox::parse_intraday(body, now, job.iv, job.from),
        }
    }
    /// The venue refused the symbol itself.
    fn unknown_symbol(&self, status: u16, body: &str) -> bool {
        match self {
            RestSource::Binance => status == 400 && body.contains("-1121"),
            RestSource::Upstox(_) => status == 400 && body.contains("UDAPI100011"),
        }
    }
}

/// Answers the hub's backfill jobs, one REST call at a time.
#[allow(clippy::too_many_arguments)]
pub async fn run_backfill(
    source: RestSource,
    connector: Connector,
    rest: Endpoint,
    mut jobs: mpsc::Receiver<BackfillJob>,
    hub: mpsc::Sender<Input>,
    breaker: Arc<Breaker>,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            _ = stop.changed() => return,
            j = jobs.recv() => match j { Some(j) => j, None => return },
        };
        let mut last = String::new();
        let mut result = None;
        for attempt in 0..BACKFILL_TRIES {
            if attempt > 0 {
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(Duration::from_millis(250 << attempt)) => {}
                }
            }
            if !breaker.wait(&mut stop).await {
                return;
            }
            let (path, auth) = match source.request(&job) {
                Ok(x) => x,
                Err(e) => {
                    result = Some(Err(e));
                    break;
                }
            };
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("Authorization", a.as_str()), ("Accept", "application/json")],
                None => Vec::new(),
            };
            let req = Req {
                method: "GET",
                path: &path,
                headers: &headers,
                body: None,
                timeout: Duration::from_secs(10),
                max_body: 1 << 20,
            };
            match http::request(&connector, &rest, req).await {
                Ok(a) if a.status == 200 => match source.parse(&a.body, &job) {
                    Ok(r) => {
                        breaker.success();
                        result = Some(Ok(r));
                        break;
                    }
                    Err(e) => {
                        breaker.failure();
                        last = e;
                    }
                },
                Ok(a) => {
                    let body = String::from_utf8_lossy(&a.body);
                    if source.unknown_symbol(a.status, &body) {
                        let mut why = format!("HTTP {} {body}", a.status);
                        why.truncate(200);
                        result = Some(Err(BackfillError { unknown_symbol: true, why }));
                        break;
                    }
                    if matches!(a.status, 418 | 429) {
                        breaker.hold_off(Duration::from_secs(a.retry_after.unwrap_or(60)));
                    }
                    breaker.failure();
                    last = format!("HTTP {}", a.status);
                }
                Err(e) => {
                    breaker.failure();
                    last = e.to_string();
                }
            }
        }
        let result = result.unwrap_or(Err(BackfillError { unknown_symbol: false, why: last }));
        deliver(&hub, &stats, Input::Backfill { sym: job.sym, iv: job.iv, result }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klines_rows_parse_and_the_open_bar_is_left_out() {
        let body = br#"[[60000,"1.0","2.0","0.5","1.5","10",119999,"1",2,"1","1","0"],[120000,"1.5","1.6","1.4","1.5","3",179999,"1",2,"1","1","0"]]"#;
        let (c, complete) = parse_klines(body, 150_000, 1000).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].open_time, 60_000);
        assert!(complete);
        assert!(parse_klines(b"{\"code\":-1121}", 0, 1000).is_err());
    }
}
