//! Snapshots of the engine and the JSON views built from them.
//!
//! [`snapshot`] runs on the engine task (inside an inspection) and only copies: quotes,
//! positions and recent closes into owned vectors. Everything else (wall-clock conversion,
//! distances, JSON) happens on the HTTP thread afterwards, so a page view costs the engine a
//! copy and nothing more.
//!
//! Prices are JSON numbers (as in the seed); times are ISO 8601 with an offset (UTC) like the
//! seed's `timestamp`, plus epoch seconds where the seed has them (`last_update`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::bus::AppEngine;
use crate::core::book::{ClosedHow, OrderPhase, PosState, Position};
use crate::core::engine::{Alarm, CloseRecord, EngineConfig, Stats};
use crate::core::price::{Price, Qty};
use crate::core::time::Timestamp;
use crate::core::types::{Band, InstrumentId, Quote, Rung, Side, Symbol};

/// Which parts of the engine a snapshot copies.
#[derive(Clone, Copy, Debug)]
pub struct Parts {
    /// Every instrument's quote, age, band and rung.
    pub instruments: bool,
    /// Every position in the book.
    pub positions: bool,
    /// The recent closes.
    pub recent: bool,
}

impl Parts {
    /// Everything.
    pub const ALL: Parts = Parts { instruments: true, positions: true, recent: true };
}

/// One instrument, as the engine sees it at the snapshot.
#[derive(Clone, Debug)]
pub struct InstSnap {
    /// Id.
    pub id: InstrumentId,
    /// Symbol.
    pub symbol: Symbol,
    /// Newest quote.
    pub quote: Option<Quote>,
    /// Its age.
    pub age: Option<Duration>,
    /// Its band.
    pub band: Option<Band>,
    /// Ladder rung.
    pub rung: Rung,
    /// Subscribed on a live session.
    pub live: bool,
    /// REST counts as working for it.
    pub rest_working: bool,
    /// Positions on it that are not closed.
    pub open_positions: u16,
}

/// One position with what the page needs of its instrument.
#[derive(Clone, Debug)]
pub struct PosSnap {
    /// The position.
    pub pos: Position,
    /// Its symbol.
    pub symbol: Symbol,
    /// Its instrument's newest quote.
    pub quote: Option<Quote>,
    /// That quote's age.
    pub age: Option<Duration>,
    /// That quote's band.
    pub band: Option<Band>,
    /// Its instrument's rung.
    pub rung: Rung,
}

/// A recent close with its symbol.
#[derive(Clone, Debug)]
pub struct CloseSnap {
    /// The record.
    pub rec: CloseRecord,
    /// Its symbol.
    pub symbol: Symbol,
}

/// A copy of what the control plane shows, taken between two engine events.
#[derive(Clone, Debug)]
pub struct Snap {
    /// Engine time of the snapshot.
    pub now: Timestamp,
    /// Wall clock at the same moment.
    pub wall: SystemTime,
    /// When the engine booted.
    pub boot: Timestamp,
    /// Engine settings (age bands, grace).
    pub cfg: EngineConfig,
    /// The feed session is up.
    pub feed_connected: bool,
    /// Instruments (if asked for).
    pub instruments: Vec<InstSnap>,
    /// Instruments in the cache.
    pub cached: usize,
    /// Newest quote date over all instruments.
    pub last_update: Option<Timestamp>,
    /// Positions (if asked for).
    pub positions: Vec<PosSnap>,
    /// Recent closes, oldest first (if asked for).
    pub recent: Vec<CloseSnap>,
    /// Alarm and whether it was acknowledged.
    pub alarm: (Alarm, bool),
    /// Counters.
    pub stats: Stats,
    /// Positions by state: open, closing, close_failed, closed.
    pub counts: [usize; 4],
    /// Positions that are blind now.
    pub blind: usize,
    /// Positions whose close attempt has had no known outcome past `broker.unknown_alarm_s`.
    pub unknown_overdue: usize,
    /// Largest price age among instruments with positions that are not closed.
    pub max_open_age: Option<Duration>,
    /// Instruments with open positions, by rung (live, rest, cache, blind).
    pub open_rungs: [usize; 4],
    /// Instruments with open positions, by band (live, stale, expired, no price).
    pub open_bands: [usize; 4],
}

fn rung_index(r: Rung) -> usize {
    match r {
        Rung::Live => 0,
        Rung::Rest => 1,
        Rung::Cache => 2,
        Rung::Blind => 3,
    }
}

/// Copies the engine's state (runs on the engine task).
pub fn snapshot(e: &AppEngine, now: Timestamp, parts: Parts) -> Snap {
    let wall = crate::bus::clock::wall_now();
    let cache = e.cache();
    let mut open_on = vec![0u16; cache.len()];
    let mut counts = [0usize; 4];
    let mut blind = 0;
    for (_, p) in e.book().iter() {
        let i = match p.state {
            PosState::Open => 0,
            PosState::Closing(_) => 1,
            PosState::CloseFailed(_) => 2,
            PosState::Closed { .. } => 3,
        };
        counts[i] += 1;
        if i < 3 {
            if let Some(n) = open_on.get_mut(usize::from(p.instrument.0)) {
                *n = n.saturating_add(1);
            }
            if p.blind_since.is_some() {
                blind += 1;
            }
        }
    }
    let mut instruments = Vec::new();
    let mut last_update: Option<Timestamp> = None;
    let mut max_open_age: Option<Duration> = None;
    let mut open_rungs = [0usize; 4];
    let mut open_bands = [0usize; 4];
    if parts.instruments {
        instruments.reserve(cache.len());
    }
    for (id, entry) in cache.iter() {
        let quote = entry.quote;
        if let Some(q) = quote {
            last_update = Some(last_update.map_or(q.dated, |t| t.max(q.dated)));
        }
        let open = open_on.get(usize::from(id.0)).copied().unwrap_or(0);
        let age = cache.age(id, now);
        let band = e.band(id, now);
        let rung = e.rung(id, now);
        if open > 0 {
            if let Some(a) = age {
                max_open_age = Some(max_open_age.map_or(a, |m| m.max(a)));
            }
            open_rungs[rung_index(rung)] += 1;
            let b = match band {
                Some(Band::Live) => 0,
                Some(Band::Stale) => 1,
                Some(Band::Expired) => 2,
                None => 3,
            };
            open_bands[b] += 1;
        }
        if parts.instruments {
            instruments.push(InstSnap {
                id,
                symbol: entry.symbol.clone(),
                quote,
                age,
                band,
                rung,
                live: e.is_live(id),
                rest_working: e.rest_working(id, now),
                open_positions: open,
            });
        }
    }
    let mut positions = Vec::new();
    if parts.positions {
        for (_, p) in e.book().iter() {
            let id = p.instrument;
            positions.push(PosSnap {
                pos: p.clone(),
                symbol: Symbol::try_from(cache.symbol(id)).unwrap_or_default(),
                quote: cache.quote(id).copied(),
                age: cache.age(id, now),
                band: e.band(id, now),
                rung: e.rung(id, now),
            });
        }
        positions.sort_by_key(|p| p.pos.registered_at);
    }
    let recent = if parts.recent {
        e.recent_closes()
            .map(|r| CloseSnap {
                rec: r.clone(),
                symbol: Symbol::try_from(cache.symbol(r.instrument)).unwrap_or_default(),
            })
            .collect()
    } else {
        Vec::new()
    };
    Snap {
        now,
        wall,
        boot: e.boot(),
        cfg: e.config().clone(),
        feed_connected: e.feed_connected(),
        instruments,
        cached: cache.iter().filter(|(_, en)| en.quote.is_some()).count(),
        last_update,
        positions,
        recent,
        alarm: e.alarm(now),
        stats: e.stats(),
        counts,
        blind,
        unknown_overdue: usize::from(e.unknown_overdue(now)),
        max_open_age,
        open_rungs,
        open_bands,
    }
}

// ---------------------------------------------------------------------------------------
// Time

impl Snap {
    /// The wall-clock time of an engine timestamp.
    pub fn wall_at(&self, t: Timestamp) -> SystemTime {
        if t <= self.now {
            self.wall.checked_sub(self.now.since(t)).unwrap_or(UNIX_EPOCH)
        } else {
            self.wall + t.since(self.now)
        }
    }
    /// ISO 8601 of an engine timestamp.
    pub fn iso(&self, t: Timestamp) -> String {
        iso8601(self.wall_at(t))
    }
    /// Epoch seconds of an engine timestamp.
    pub fn epoch(&self, t: Timestamp) -> f64 {
        epoch_seconds(self.wall_at(t))
    }
}

/// Seconds since the Unix epoch, with milliseconds.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// `2026-01-07T05:54:16.012+00:00` (UTC, milliseconds).
pub fn iso8601(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn secs3(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

fn num(p: Price) -> f64 {
    p.to_f64()
}

fn qnum(q: Qty) -> f64 {
    q.to_f64()
}

/// Profit of closing `qty` of a position entered at `entry` at `exit` (units of 10^-8 of the
/// quote currency, as a float).
pub fn pnl(side: Side, entry: Price, exit: Price, qty: Qty) -> f64 {
    let diff = match side {
        Side::Long => i128::from(exit.units()) - i128::from(entry.units()),
        Side::Short => i128::from(entry.units()) - i128::from(exit.units()),
    };
    let units = diff * i128::from(qty.units()) / i128::from(crate::core::price::SCALE);
    (units as f64) / (crate::core::price::SCALE as f64)
}

/// Rounds to cents for display of money amounts.
fn money(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------------------
// Views

/// `price_cache.cache_entries[SYMBOL]` of connection-health.
#[derive(Serialize, Clone, Debug)]
pub struct CacheEntry {
    /// Last traded price, else bid, else ask.
    pub price: Option<f64>,
    /// Age of the newest quote, seconds.
    pub age_seconds: Option<f64>,
    /// Older than `stale_after` (stale or expired).
    pub is_stale: bool,
    /// Older than `expire_after`: never acted on.
    pub is_expired: bool,
    /// `live`, `stale`, `expired` or `none`.
    pub band: &'static str,
    /// Where the newest quote came from: `live`, `rest`, `manual`.
    pub source: Option<&'static str>,
    /// Ladder rung: `live`, `rest`, `cache`, `blind`.
    pub rung: &'static str,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Positions on it not yet closed.
    pub open_positions: u16,
}

fn band_str(b: Option<Band>) -> &'static str {
    b.map_or("none", Band::as_str)
}

fn display_price(q: &Quote) -> Option<Price> {
    q.last.or(q.bid).or(q.ask)
}

/// The cache entry of one instrument.
pub fn cache_entry(i: &InstSnap) -> CacheEntry {
    CacheEntry {
        price: i.quote.as_ref().and_then(display_price).map(num),
        age_seconds: i.age.map(secs3),
        is_stale: matches!(i.band, Some(Band::Stale | Band::Expired)),
        is_expired: matches!(i.band, Some(Band::Expired)),
        band: band_str(i.band),
        source: i.quote.map(|q| q.source.as_str()),
        rung: i.rung.as_str(),
        bid: i.quote.and_then(|q| q.bid).map(num),
        ask: i.quote.and_then(|q| q.ask).map(num),
        open_positions: i.open_positions,
    }
}

/// A close decision.
#[derive(Serialize, Clone, Debug)]
pub struct DecisionView {
    /// `stop_loss`, `take_profit`, `emergency`, `blind`.
    pub reason: &'static str,
    /// The price that crossed (none for emergency/blind without a usable price).
    pub price: Option<f64>,
    /// `live`, `rest`, `cache`, `manual`, `none`.
    pub source: &'static str,
    /// Age of that price, ms.
    pub age_ms: u64,
    /// The level crossed.
    pub level: Option<f64>,
    /// When.
    pub decided_at: String,
}

/// Progress of a close.
#[derive(Serialize, Clone, Debug)]
pub struct CloseProgress {
    /// Attempt number.
    pub attempt: u16,
    /// `sent`, `working`, `unknown` or `waiting`.
    pub order: &'static str,
    /// Attempts that failed.
    pub failures: u16,
    /// Client id of the current attempt.
    pub client_id: String,
}

/// A position as the API and the page show it.
#[derive(Serialize, Clone, Debug)]
pub struct PositionView {
    /// Id.
    pub id: String,
    /// Symbol.
    pub symbol: String,
    /// `long` or `short`.
    pub side: &'static str,
    /// Quantity.
    pub qty: f64,
    /// Entry price.
    pub entry_price: f64,
    /// Stop-loss level.
    pub stop_loss: Option<f64>,
    /// Take-profit level.
    pub take_profit: Option<f64>,
    /// `alert` or `flatten`.
    pub blind_policy: &'static str,
    /// Upstox product (`D`, `I`, `MTF`), when given at registration.
    pub product: Option<String>,
    /// `open`, `closing`, `close_failed` or `closed`.
    pub status: &'static str,
    /// For closed positions: `filled`, `external`, `resolved`, `withdrawn`.
    pub closed_how: Option<&'static str>,
    /// The price the position is judged on now (bid for a long, ask for a short).
    pub current_price: Option<f64>,
    /// Its age, seconds.
    pub price_age_seconds: Option<f64>,
    /// `live`, `stale`, `expired` or `none`.
    pub band: &'static str,
    /// Ladder rung of its instrument.
    pub rung: &'static str,
    /// How far the price may move against the position before the stop, in percent of the
    /// price (negative: crossed).
    pub distance_to_stop_pct: Option<f64>,
    /// How far the price must move for the target, in percent (negative: crossed).
    pub distance_to_target_pct: Option<f64>,
    /// Profit at the current price, for what is still held.
    pub unrealized_pnl: Option<f64>,
    /// No usable price and no working source.
    pub blind: bool,
    /// For how long, seconds.
    pub blind_seconds: Option<f64>,
    /// The close decision, once made.
    pub decision: Option<DecisionView>,
    /// Close progress while closing.
    pub close: Option<CloseProgress>,
    /// Quantity our closes executed.
    pub filled_qty: f64,
    /// Average exit price of the fills.
    pub exit_price: Option<f64>,
    /// Realised profit of the fills.
    pub pnl: Option<f64>,
    /// When it was registered.
    pub registered_at: String,
    /// When it closed.
    pub closed_at: Option<String>,
}

fn pct(a: Price, b: Price) -> Option<f64> {
    let base = a.to_f64();
    (base > 0.0).then(|| ((b.to_f64() - base) / base * 10_000.0).round() / 100.0)
}

/// The view of one position.
pub fn position_view(s: &Snap, p: &PosSnap, product: Option<String>) -> PositionView {
    let pos = &p.pos;
    let judged = p.quote.and_then(|q| q.price_for(pos.side));
    let (to_stop, to_target) = match (judged, pos.side) {
        (Some(px), Side::Long) => {
            (pos.stop_loss.and_then(|sl| pct(px, sl).map(|v| -v)), pos.take_profit.and_then(|tp| pct(px, tp)))
        }
        (Some(px), Side::Short) => {
            (pos.stop_loss.and_then(|sl| pct(px, sl)), pos.take_profit.and_then(|tp| pct(px, tp).map(|v| -v)))
        }
        (None, _) => (None, None),
    };
    let live = !pos.state.is_terminal();
    let exit = pos.avg_exit();
    let (closed_how, closed_at) = match pos.state {
        PosState::Closed { at, how } => (Some(how.as_str()), Some(s.iso(at))),
        _ => (None, None),
    };
    PositionView {
        id: pos.id.to_string(),
        symbol: p.symbol.to_string(),
        side: pos.side.as_str(),
        qty: qnum(pos.qty),
        entry_price: num(pos.entry),
        stop_loss: pos.stop_loss.map(num),
        take_profit: pos.take_profit.map(num),
        blind_policy: pos.blind_policy.as_str(),
        product,
        status: pos.state.as_str(),
        closed_how,
        current_price: judged.map(num),
        price_age_seconds: p.age.map(secs3),
        band: band_str(p.band),
        rung: p.rung.as_str(),
        distance_to_stop_pct: if live { to_stop } else { None },
        distance_to_target_pct: if live { to_target } else { None },
        unrealized_pnl: match (live, judged) {
            (true, Some(px)) => Some(money(pnl(pos.side, pos.entry, px, pos.remaining()))),
            _ => None,
        },
        blind: live && pos.blind_since.is_some(),
        blind_seconds: pos.blind_since.filter(|_| live).map(|t| secs3(s.now.since(t))),
        decision: pos.decision.map(|d| DecisionView {
            reason: d.reason.as_str(),
            price: d.price.map(num),
            source: d.source.as_str(),
            age_ms: crate::core::time::millis(d.age),
            level: d.level.map(num),
            decided_at: s.iso(d.at),
        }),
        close: pos.state.closing().map(|c| CloseProgress {
            attempt: c.attempt,
            order: match c.order {
                OrderPhase::Sent => "sent",
                OrderPhase::Working => "working",
                OrderPhase::Unknown => "unknown",
                OrderPhase::Waiting => "waiting",
            },
            failures: c.failures,
            client_id: c.client_id.to_string(),
        }),
        filled_qty: qnum(pos.filled),
        exit_price: exit.map(num),
        pnl: exit.map(|x| money(pnl(pos.side, pos.entry, x, pos.filled))),
        registered_at: s.iso(pos.registered_at),
        closed_at,
    }
}

/// A recent close.
#[derive(Serialize, Clone, Debug)]
pub struct CloseView {
    /// Position id.
    pub id: String,
    /// Symbol.
    pub symbol: String,
    /// Side.
    pub side: &'static str,
    /// Quantity closed.
    pub qty: f64,
    /// Entry price.
    pub entry_price: f64,
    /// Average exit price.
    pub exit_price: Option<f64>,
    /// Realised profit.
    pub pnl: Option<f64>,
    /// Why: `stop_loss`, `take_profit`, `emergency`, `blind`.
    pub reason: &'static str,
    /// How the deciding price reached the decision.
    pub source: &'static str,
    /// The deciding price.
    pub decision_price: Option<f64>,
    /// Its age, ms.
    pub age_ms: u64,
    /// Orders sent.
    pub attempts: u16,
    /// When decided.
    pub decided_at: String,
    /// When closed.
    pub closed_at: String,
    /// Decision to close, seconds.
    pub late_seconds: f64,
}

/// The view of a recent close.
pub fn close_view(s: &Snap, c: &CloseSnap) -> CloseView {
    let r = &c.rec;
    CloseView {
        id: r.id.to_string(),
        symbol: c.symbol.to_string(),
        side: r.side.as_str(),
        qty: qnum(r.qty),
        entry_price: num(r.entry),
        exit_price: r.exit.map(num),
        pnl: r.exit.map(|x| money(pnl(r.side, r.entry, x, r.qty))),
        reason: r.decision.reason.as_str(),
        source: r.decision.source.as_str(),
        decision_price: r.decision.price.map(num),
        age_ms: crate::core::time::millis(r.decision.age),
        attempts: r.attempts,
        decided_at: s.iso(r.decision.at),
        closed_at: s.iso(r.closed_at),
        late_seconds: secs3(r.closed_at.since(r.decision.at)),
    }
}

/// `live`, `stale`, `blind` or `close_failed`.
pub fn alarm_str(a: Alarm) -> &'static str {
    match a {
        Alarm::Live => "live",
        Alarm::Stale => "stale",
        Alarm::Blind => "blind",
        Alarm::CloseFailed => "close_failed",
    }
}

/// Instruments with open positions by rung, as a JSON object.
pub fn rung_counts(s: &Snap) -> BTreeMap<&'static str, usize> {
    ["live", "rest", "cache", "blind"].into_iter().zip(s.open_rungs).collect()
}

/// The worst rung among instruments with open positions (`live` when there are none).
pub fn worst_rung(s: &Snap) -> &'static str {
    ["blind", "cache", "rest", "live"]
        .into_iter()
        .zip(s.open_rungs.iter().rev())
        .find(|(_, n)| **n > 0)
        .map_or("live", |(r, _)| r)
}

/// What a closed position's outcome was, for notifications and metrics.
pub fn closed_how(p: &Position) -> Option<ClosedHow> {
    match p.state {
        PosState::Closed { how, .. } => Some(how),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(UNIX_EPOCH), "1970-01-01T00:00:00.000+00:00");
        let t = UNIX_EPOCH + Duration::from_millis(1_767_765_256_012);
        assert_eq!(iso8601(t), "2026-01-07T05:54:16.012+00:00");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&iso8601(leap)[..10], "2000-02-29");
    }

    #[test]
    fn pnl_of_the_seed() {
        // BOSCHLTD: long 10 @ 735.00, closed at 575.00 (the seed answers -6195 for its own
        // quantity; the arithmetic is the same).
        let p = |s: &str| Price::parse(s).expect("price");
        let q = |s: &str| Qty::parse(s).expect("qty");
        assert_eq!(pnl(Side::Long, p("735.00"), p("575.00"), q("10")), -1600.0);
        assert_eq!(pnl(Side::Short, p("100"), p("90.5"), q("2")), 19.0);
    }

    #[test]
    fn worst_rung_order() {
        let mut s = snap_stub();
        assert_eq!(worst_rung(&s), "live");
        s.open_rungs = [3, 0, 1, 0];
        assert_eq!(worst_rung(&s), "cache");
        s.open_rungs = [3, 1, 0, 2];
        assert_eq!(worst_rung(&s), "blind");
    }

    fn snap_stub() -> Snap {
        Snap {
            now: Timestamp::ZERO,
            wall: UNIX_EPOCH,
            boot: Timestamp::ZERO,
            cfg: EngineConfig::default(),
            feed_connected: true,
            instruments: Vec::new(),
            cached: 0,
            last_update: None,
            positions: Vec::new(),
            recent: Vec::new(),
            alarm: (Alarm::Live, false),
            stats: Stats::default(),
            counts: [0; 4],
            blind: 0,
            unknown_overdue: 0,
            max_open_age: None,
            open_rungs: [0; 4],
            open_bands: [0; 4],
        }
    }
}
