//! The watcher: one thread that looks at the engine every [`PERIOD`] (one inspection, a copy
//! of the positions' states) and turns changes into notifications and into the close
//! counters of `/metrics`.
//!
//! Each change is reported once: a position is tracked by id and registration number, so a
//! decision, a close failure, a blind spell and a close are each seen once per position
//! (a new blind spell after the position recovered is a new event). The feed is reported down
//! once it has been down for [`FEED_DOWN_AFTER`], and up again only after a down was reported.
//! DNS fallbacks are reported at most once per [`DNS_EVERY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::bridge::Bridge;
use super::notify::{Event, EventKind, Notifier};
use crate::core::book::{ClosedHow, PosState};
use crate::core::price::{Price, Qty};
use crate::core::types::{CloseReason, PositionId, PriceSource, Side, Symbol};

/// How often the watcher looks.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How long the feed must be down before it is reported.
pub const FEED_DOWN_AFTER: Duration = Duration::from_secs(3);
/// At most one DNS-fallback notification per this period.
pub const DNS_EVERY: Duration = Duration::from_secs(60);

/// Close reasons in counter order (`none`: closed without a decision, e.g. externally).
pub const REASONS: [&str; 5] = ["stop_loss", "take_profit", "emergency", "blind", "none"];
/// Close results in counter order.
pub const RESULTS: [&str; 4] = ["filled", "external", "resolved", "withdrawn"];

fn reason_index(r: Option<CloseReason>) -> usize {
    match r {
        Some(CloseReason::StopLoss) => 0,
        Some(CloseReason::TakeProfit) => 1,
        Some(CloseReason::Emergency) => 2,
        Some(CloseReason::Blind) => 3,
        None => 4,
    }
}

fn result_index(h: ClosedHow) -> usize {
    match h {
        ClosedHow::Filled => 0,
        ClosedHow::External => 1,
        ClosedHow::Resolved => 2,
        ClosedHow::Withdrawn => 3,
    }
}

/// Counters the watcher keeps and `/metrics` reads, plus the notifier.
#[derive(Default)]
pub struct WatchState {
    /// Close decisions seen, by reason.
    pub decisions: [AtomicU64; 5],
    /// Positions closed, by reason and result.
    pub closes: [[AtomicU64; 4]; 5],
    /// Positions that reached `close_failed`, by reason.
    pub close_failed: [AtomicU64; 5],
    /// Looks at the engine that got no answer in time.
    pub missed: AtomicU64,
    /// The notification channels.
    pub notifier: Notifier,
    /// The last look at the engine that got an answer ([`WatchState::beat`]).
    pub last_beat: std::sync::Mutex<Option<Beat>>,
}

/// What the watcher saw at its last answered look: `/health` answers from it.
#[derive(Clone, Copy, Debug)]
pub struct Beat {
    /// When.
    pub at: Instant,
    /// The alarm (`live`, `stale`, `blind`, ...).
    pub alarm: &'static str,
    /// Positions not closed.
    pub open: usize,
}

impl WatchState {
    /// The last answered look, if any.
    pub fn beat(&self) -> Option<Beat> {
        *self.last_beat.lock().ok()?
    }
    fn set_beat(&self, b: Beat) {
        if let Ok(mut s) = self.last_beat.lock() {
            *s = Some(b);
        }
    }
}

/// What the watcher copies of one position.
struct Obs {
    id: PositionId,
    generation: u32,
    symbol: Symbol,
    side: Side,
    qty: Qty,
    entry: Price,
    state: u8,
    how: Option<ClosedHow>,
    reason: Option<CloseReason>,
    price: Option<Price>,
    source: Option<PriceSource>,
    blind: bool,
    /// The current attempt's outcome has been unknown past `broker.unknown_alarm_s`.
    unknown: bool,
    exit: Option<Price>,
    filled: Qty,
    attempts: u16,
}

#[derive(Default, Clone, Copy)]
struct Seen {
    decided: bool,
    failed: bool,
    blind: bool,
    closed: bool,
    alive: bool,
}

/// The running watcher.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching.
    pub fn start(bridge: Bridge, state: Arc<WatchState>) -> std::io::Result<Watcher> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread =
            std::thread::Builder::new().name("tg-watch".into()).spawn(move || run(&bridge, &state, &s))?;
        Ok(Watcher { stop, thread: Some(thread) })
    }
    /// Stops the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn observe(bridge: &Bridge) -> Option<(bool, Vec<Obs>, &'static str, usize)> {
    bridge
        .inspect(|e, now| {
            let obs = e
                .book()
                .iter()
                .map(|(_, p)| Obs {
                    id: p.id.clone(),
                    generation: p.generation,
                    symbol: Symbol::try_from(e.cache().symbol(p.instrument)).unwrap_or_default(),
                    side: p.side,
                    qty: p.qty,
                    entry: p.entry,
                    state: match p.state {
                        PosState::Open => 0,
                        PosState::Closing(_) => 1,
                        PosState::CloseFailed(_) => 2,
                        PosState::Closed { .. } => 3,
                    },
                    how: match p.state {
                        PosState::Closed { how, .. } => Some(how),
                        _ => None,
                    },
                    reason: p.decision.map(|d| d.reason),
                    price: p.decision.and_then(|d| d.price),
                    source: p.decision.map(|d| d.source),
                    blind: p.blind_since.is_some() && !p.state.is_terminal(),
                    unknown: e.is_unknown_overdue(p, now),
                    exit: p.avg_exit(),
                    filled: p.filled,
                    attempts: p.attempts,
                })
                .collect();
            (e.feed_connected(), obs, super::views::alarm_str(e.alarm(now).0), e.book().active())
        })
        .ok()
}

fn fields(o: &Obs) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(o.id.as_str()));
    m.insert("symbol".into(), json!(o.symbol.as_str()));
    m.insert("side".into(), json!(o.side.as_str()));
    m.insert("qty".into(), json!(o.qty.to_f64()));
    m.insert("entry_price".into(), json!(o.entry.to_f64()));
    if let Some(r) = o.reason {
        m.insert("reason".into(), json!(r.as_str()));
    }
    m
}

fn event(kind: EventKind, text: String, fields: Map<String, Value>) -> Event {
    Event { kind, text, fields, at: crate::bus::clock::wall_now() }
}

fn run(bridge: &Bridge, state: &WatchState, stop: &AtomicBool) {
    let mut seen: HashMap<(PositionId, u32), Seen> = HashMap::new();
    let mut down_since: Option<Instant> = None;
    let mut down_sent = false;
    let mut dns_seen: Option<u64> = None;
    let mut dns_last: Option<Instant> = None;
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        // The first look at once: `/health` answers from it.
        if !first {
            std::thread::sleep(PERIOD);
        }
        first = false;
        let Some((connected, obs, alarm, open)) = observe(bridge) else {
            state.missed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        state.set_beat(Beat { at: crate::bus::clock::mono_std(), alarm, open });
        let n = &state.notifier;
        // The feed.
        if connected {
            if down_sent {
                let secs = down_since.map_or(0, |t| t.elapsed().as_secs());
                n.notify(event(EventKind::FeedUp, format!("live feed back after {secs} s"), Map::new()));
            }
            down_since = None;
            down_sent = false;
        } else {
            let since = *down_since.get_or_insert_with(Instant::now);
            if !down_sent && since.elapsed() >= FEED_DOWN_AFTER {
                down_sent = true;
                let open = obs.iter().filter(|o| o.state < 3).count();
                let mut f = Map::new();
                f.insert("open_positions".into(), json!(open));
                n.notify(event(
                    EventKind::FeedDown,
                    format!(
                        "live feed down for {} s; {open} open position(s) on REST / cached prices",
                        since.elapsed().as_secs()
                    ),
                    f,
                ));
            }
        }
        // DNS fallbacks (only with a real venue).
        if let Some(r) = bridge.engine.status.resolver.get() {
            let used = r.dns_stats().fallback_answers.load(Ordering::Relaxed)
                + r.dns_stats().last_good_uses.load(Ordering::Relaxed);
            let before = *dns_seen.get_or_insert(used);
            if used > before && dns_last.is_none_or(|t| t.elapsed() >= DNS_EVERY) {
                dns_seen = Some(used);
                dns_last = Some(crate::bus::clock::mono_std());
                let mut f = Map::new();
                f.insert(
                    "fallback_answers".into(),
                    json!(r.dns_stats().fallback_answers.load(Ordering::Relaxed)),
                );
                f.insert(
                    "last_good_uses".into(),
                    json!(r.dns_stats().last_good_uses.load(Ordering::Relaxed)),
                );
                n.notify(event(
                    EventKind::DnsFallback,
                    format!("system DNS failing: {} name(s) resolved through fallback servers or the last-good cache", used - before),
                    f,
                ));
            }
        }
        // Positions.
        for s in seen.values_mut() {
            s.alive = false;
        }
        for o in &obs {
            let s = seen.entry((o.id.clone(), o.generation)).or_default();
            s.alive = true;
            let r = reason_index(o.reason);
            if o.reason.is_some() && !s.decided {
                s.decided = true;
                state.decisions[r].fetch_add(1, Ordering::Relaxed);
            }
            if o.state == 2 && !s.failed {
                s.failed = true;
                state.close_failed[r].fetch_add(1, Ordering::Relaxed);
                let mut f = fields(o);
                f.insert("attempts".into(), json!(o.attempts));
                n.notify(event(
                    EventKind::CloseFailed,
                    format!(
                        "CLOSE FAILED for {} {} ({} {}) after {} attempts: still retrying slowly; check the broker, resolve by hand if it is closed",
                        o.id,
                        o.symbol,
                        o.side.as_str(),
                        o.qty,
                        o.attempts
                    ),
                    f,
                ));
            }
            if o.unknown && o.state != 2 && !s.failed {
                // As loud as a close that failed for good: a person must settle it.
                s.failed = true;
                state.close_failed[r].fetch_add(1, Ordering::Relaxed);
                let mut f = fields(o);
                f.insert("attempts".into(), json!(o.attempts));
                f.insert("outcome".into(), json!("unknown"));
                n.notify(event(
                    EventKind::CloseFailed,
                    format!(
                        "CLOSE OUTCOME UNKNOWN for {} {} ({} {}), attempt {}: check the venue's order history and settle it (POST /api/v1/positions/{}/resolve with the attempt and what it executed)",
                        o.id,
                        o.symbol,
                        o.side.as_str(),
                        o.qty,
                        o.attempts,
                        o.id
                    ),
                    f,
                ));
            }
            if o.blind && !s.blind {
                s.blind = true;
                n.notify(event(
                    EventKind::Blind,
                    format!("{} {} is BLIND: no usable price (no working source, or none priced it for its grace)", o.id, o.symbol),
                    fields(o),
                ));
            } else if !o.blind {
                s.blind = false;
            }
            if let (Some(how), false) = (o.how, s.closed) {
                s.closed = true;
                state.closes[r][result_index(how)].fetch_add(1, Ordering::Relaxed);
                if how != ClosedHow::Withdrawn {
                    let mut f = fields(o);
                    f.insert("how".into(), json!(how.as_str()));
                    f.insert("exit_price".into(), json!(o.exit.map(Price::to_f64)));
                    f.insert("filled_qty".into(), json!(o.filled.to_f64()));
                    f.insert("decision_price".into(), json!(o.price.map(Price::to_f64)));
                    f.insert("source".into(), json!(o.source.map(PriceSource::as_str)));
                    let pnl = o.exit.map(|x| super::views::pnl(o.side, o.entry, x, o.filled));
                    f.insert("pnl".into(), json!(pnl.map(|v| (v * 100.0).round() / 100.0)));
                    let what = match (how, o.exit) {
                        (ClosedHow::Filled, Some(x)) => format!(
                            "closed {} {} ({}) at {x}, pnl {:.2}",
                            o.id,
                            o.symbol,
                            o.reason.map_or("close", CloseReason::as_str),
                            pnl.unwrap_or(0.0)
                        ),
                        (ClosedHow::Filled, None) => format!("closed {} {}", o.id, o.symbol),
                        (ClosedHow::External, _) => {
                            format!("{} {} was closed outside tickguard", o.id, o.symbol)
                        }
                        _ => format!("{} {} marked closed by an operator", o.id, o.symbol),
                    };
                    n.notify(event(EventKind::CloseDone, what, f));
                }
            }
        }
        seen.retain(|_, s| s.alive);
    }
}
