//! One seeded scenario of the in-process world: random steps over the real wiring with fake
//! edges on tokio's paused (virtual) clock, the invariants checked after every step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tickguard::core::book::{OrderPhase, PosState};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::Side;

use crate::feed::Feed;
use crate::http;
use crate::venue::{BrokerMode, Venue, client_prefix};
use crate::wiring::{self, Life};

/// Symbols the fake venue trades; the first two are `feed.instruments`.
pub const VENUE: [&str; 4] = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"];
/// Settings the invariants are written against (also in the configuration below).
pub const EXPIRE_AFTER: Duration = Duration::from_secs(20);
pub const BLIND_GRACE: Duration = Duration::from_secs(10);
/// `broker.unknown_alarm_s` (default 60): an outcome unknown for longer must be alarmed.
pub const UNKNOWN_ALARM: Duration = Duration::from_secs(60);
const TOKEN: &str = "world-simulator-token-0123456789";

pub struct Rng(pub u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// The fault a scenario is about (the rows of docs/protection.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Baseline,
    FeedDrop,
    Silence,
    RestFailure,
    UnknownSymbol,
    BrokerTimeout,
    UnknownOutcome,
    LateFill,
    BrokerReject,
    Restart,
    MarketClosed,
    SoldByHand,
    /// The wall clock steps forward or back (seconds to hours) through the test clock
    /// (`runtime::clock::step_wall`), never the host's.
    WallStep,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Baseline,
        Kind::FeedDrop,
        Kind::Silence,
        Kind::RestFailure,
        Kind::UnknownSymbol,
        Kind::BrokerTimeout,
        Kind::UnknownOutcome,
        Kind::LateFill,
        Kind::BrokerReject,
        Kind::Restart,
        Kind::MarketClosed,
        Kind::SoldByHand,
        Kind::WallStep,
    ];
    /// The kinds drawn from a scenario's own random stream (the first 12, as before
    /// [`Kind::WallStep`] existed, so every seed kept in tests/world-regressions/ keeps its
    /// meaning); a side stream of the seed makes 1 in 13 scenarios a wall-step one instead.
    const CLASSIC: u64 = 12;
    /// The kind of scenario `seed`; consumes from `rng` exactly what it did before
    /// [`Kind::WallStep`] existed.
    pub fn of_seed(seed: u64, rng: &mut Rng) -> Kind {
        let classic = Kind::ALL[rng.below(Kind::CLASSIC) as usize];
        if Rng::new(seed ^ 0x5741_4C4C_5354_4550).below(13) == 0 { Kind::WallStep } else { classic }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Baseline => "no fault",
            Kind::FeedDrop => "feed drop (REST fallback)",
            Kind::Silence => "feed silence",
            Kind::RestFailure => "feed drop + DNS/REST failure",
            Kind::UnknownSymbol => "unknown/lowercase symbol registered",
            Kind::BrokerTimeout => "broker timeout (order lost)",
            Kind::UnknownOutcome => "unknown outcome (order filled)",
            Kind::LateFill => "unknown outcome, late fill",
            Kind::BrokerReject => "broker rejects",
            Kind::Restart => "restart",
            Kind::MarketClosed => "market close/open",
            Kind::SoldByHand => "holdings changed by hand",
            Kind::WallStep => "wall-clock step (±1 s to 12 h, test clock)",
        }
    }
}

/// An invariant that broke.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// What a scenario measured, for docs/protection.md.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Tick at the box → close order at the broker, ms (virtual time).
    pub tick_to_order_ms: Vec<u64>,
    /// Market crossing the level → close order at the broker, ms (virtual time).
    pub market_to_order_ms: Vec<u64>,
    /// Outcome of every position whose level the market crossed, by name.
    pub outcomes: BTreeMap<&'static str, usize>,
    pub steps: usize,
    pub lives: usize,
}

pub struct Report {
    pub seed: u64,
    pub kind: Kind,
    pub measured: Measured,
    pub violation: Option<(usize, Violation)>,
    pub log: Vec<String>,
    /// Violations skipped through `WORLD_SKIP` (exploration), first of each.
    pub skipped: Vec<(&'static str, String)>,
}

#[derive(Clone, Debug)]
struct Acked {
    symbol: String,
    qty: Qty,
    sl: Option<Price>,
    tp: Option<Price>,
    withdrawn: bool,
}

#[derive(Clone, Debug)]
struct PosView {
    id: String,
    generation: u32,
    symbol: String,
    side: Side,
    qty: Qty,
    sl: Option<Price>,
    tp: Option<Price>,
    state: &'static str,
    open: bool,
    terminal: bool,
    how: Option<&'static str>,
    blind: bool,
    blind_since: Option<Timestamp>,
    dated: Option<Timestamp>,
    registered_at: Timestamp,
    unknown_since: Option<Timestamp>,
}

struct View {
    now: Timestamp,
    market_open: bool,
    alarm: String,
    positions: Vec<PosView>,
}

async fn view(life: &Life) -> Option<View> {
    life.handle
        .inspect(|e, now| View {
            now,
            market_open: e.market_open(),
            alarm: format!("{:?}", e.alarm(now).0),
            positions: e
                .book()
                .iter()
                .map(|(_, p)| PosView {
                    id: p.id.to_string(),
                    generation: p.generation,
                    symbol: e.cache().symbol(p.instrument).to_string(),
                    side: p.side,
                    qty: p.qty,
                    sl: p.stop_loss,
                    tp: p.take_profit,
                    state: p.state.as_str(),
                    open: p.state == PosState::Open,
                    terminal: p.state.is_terminal(),
                    how: match p.state {
                        PosState::Closed { how, .. } => Some(how.as_str()),
                        _ => None,
                    },
                    blind: p.blind_since.is_some(),
                    blind_since: p.blind_since,
                    dated: e.cache().quote(p.instrument).map(|q| q.dated),
                    registered_at: p.registered_at,
                    unknown_since: p
                        .state
                        .closing()
                        .filter(|c| c.order == OrderPhase::Unknown)
                        .map(|c| c.sent_at),
                })
                .collect(),
        })
        .await
}

fn price(units: i64) -> Price {
    Price::from_units(units * tickguard::core::price::SCALE / 100)
}

fn fmt_price(p: Price) -> String {
    p.to_string()
}

/// The world of one scenario.
struct World {
    seed: u64,
    kind: Kind,
    rng: Rng,
    dir: std::path::PathBuf,
    cfg: tickguard::config::Config,
    venue: Venue,
    feed: Feed,
    acked: BTreeMap<String, Acked>,
    /// Every (id, generation) ever seen, with its quantity.
    seen: BTreeMap<(String, u32), Qty>,
    next_id: usize,
    /// Market crossings of open positions: (life, id, generation, at) → measured at the end.
    crossings: Vec<(u32, String, u32, Timestamp)>,
    measured: Measured,
    log: Vec<String>,
    step: usize,
    life_no: u32,
    /// Violations skipped (`WORLD_SKIP`), first of each.
    skipped: Vec<(&'static str, String)>,
    /// Symbols whose holdings were changed by hand.
    hand_sold: Vec<String>,
    /// Positions a crossing price reached (life, id, generation).
    reached: Vec<(u32, String, u32)>,
}

fn config(dir: &std::path::Path) -> Result<tickguard::config::Config, String> {
    std::fs::write(dir.join("token"), TOKEN).map_err(|e| e.to_string())?;
    let toml = format!(
        r#"[feed]
venue = "binance"
instruments = ["BTCUSDT", "ETHUSDT"]
silence_timeout_s = 3
rest_poll_s = 1
[cache]
stale_after_s = 5
expire_after_s = {expire}
blind_grace_s = {grace}
[broker]
kind = "paper"
retry_initial_s = 0.5
retry_max_s = 4
max_close_attempts = 4
[api]
listen = "127.0.0.1:0"
token_file = "{dir}/token"
[store]
dir = "{dir}/state"
[[positions]]
id = "cfg0"
symbol = "BTCUSDT"
side = "long"
qty = "1"
entry = "100"
stop_loss = "93"
take_profit = "107"
"#,
        expire = EXPIRE_AFTER.as_secs(),
        grace = BLIND_GRACE.as_secs(),
        dir = dir.display(),
    );
    tickguard::config::parse_str(&toml, "world.toml", std::iter::empty()).map_err(|e| e.to_string())
}

impl World {
    fn note(&mut self, s: String) {
        self.log.push(format!("[{}] {s}", self.step));
    }

    fn fail(&self, invariant: &'static str, detail: String) -> Violation {
        Violation { invariant, detail }
    }

    /// A broken invariant: `Err`, unless `WORLD_SKIP` lists it (exploration only: to see what
    /// else breaks behind a violation found everywhere); then it is noted once and skipped.
    fn flag(&mut self, invariant: &'static str, detail: String) -> Result<(), Violation> {
        let skip = std::env::var("WORLD_SKIP").is_ok_and(|v| v.split(',').any(|s| s.trim() == invariant));
        if !skip {
            return Err(self.fail(invariant, detail));
        }
        if !self.skipped.iter().any(|(i, _)| *i == invariant) {
            self.skipped.push((invariant, format!("step {}: {detail}", self.step)));
        }
        Ok(())
    }

    async fn api(&mut self, life: &Life, method: &str, path: &str, body: Option<String>) -> http::Answer {
        let a = http::call(life.addr, method, path, Some(TOKEN), body.clone()).await;
        let short: String = a.body.chars().take(160).collect();
        self.note(format!("{method} {path} {} -> {} {short}", body.unwrap_or_default(), a.status));
        a
    }

    fn fresh_id(&mut self) -> String {
        self.next_id += 1;
        format!("w{}", self.next_id)
    }

    // ----- steps ----------------------------------------------------------------------------

    async fn register(&mut self, life: &Life) -> Result<(), Violation> {
        let roll = self.rng.below(100);
        let (id, symbol) = if roll < 55 || self.acked.is_empty() {
            (self.fresh_id(), self.rng.pick(&VENUE).to_string())
        } else if roll < 65 || (self.kind == Kind::UnknownSymbol && roll < 80) {
            (self.fresh_id(), self.rng.pick(&VENUE).to_ascii_lowercase())
        } else if roll < 75 || (self.kind == Kind::UnknownSymbol && roll < 90) {
            (self.fresh_id(), "XYZUSDT".to_string())
        } else {
            // Reuse an id (a bot retrying, or reusing ids): same body.
            let keys: Vec<String> = self.acked.keys().cloned().collect();
            let id = self.rng.pick(&keys).clone();
            let a = self.acked[&id].clone();
            return self.register_body(life, &id, &a.symbol, a.qty, a.sl, a.tp).await;
        };
        const QTYS: [&str; 4] = ["0.5", "1", "2", "3.25"];
        let qty = Qty::parse(QTYS[self.rng.below(4) as usize]).unwrap_or(Qty::ZERO);
        let sl = Some(price(10_000 - 200 - 100 * self.rng.below(7) as i64));
        let tp = Some(price(10_000 + 200 + 100 * self.rng.below(7) as i64));
        self.register_body(life, &id, &symbol, qty, sl, tp).await
    }

    async fn register_body(
        &mut self,
        life: &Life,
        id: &str,
        symbol: &str,
        qty: Qty,
        sl: Option<Price>,
        tp: Option<Price>,
    ) -> Result<(), Violation> {
        let mut body =
            format!(r#"{{"id":"{id}","symbol":"{symbol}","side":"long","qty":"{qty}","entry":"100""#);
        if let Some(s) = sl {
            let _ = write!(body, r#","stop_loss":"{}""#, fmt_price(s));
        }
        if let Some(t) = tp {
            let _ = write!(body, r#","take_profit":"{}""#, fmt_price(t));
        }
        body.push('}');
        let before = view(life).await.ok_or_else(|| self.fail("engine", "no answer".into()))?;
        let closed_before =
            before.positions.iter().find(|p| p.id == id && p.terminal).map(|p| (p.generation, p.how));
        // The bot bought first, then registers (a retry of the same id buys nothing new).
        let upper = symbol.to_ascii_uppercase();
        let fresh = !self.acked.contains_key(id);
        if fresh {
            let mut v = self.venue.lock();
            if let Some(h) = v.holdings.get(&upper).copied() {
                v.holdings.insert(upper.clone(), h.checked_add(qty).unwrap_or(h));
            }
        }
        let a = self.api(life, "POST", "/api/v1/positions", Some(body)).await;
        if a.status == 200 || a.status == 201 {
            let prev_withdrawn = self.acked.get(id).is_some_and(|x| x.withdrawn);
            self.acked.insert(
                id.to_string(),
                Acked {
                    symbol: symbol.to_string(),
                    qty,
                    sl,
                    tp,
                    withdrawn: prev_withdrawn && a.status == 200,
                },
            );
            // An acknowledged registration protects the position: it must not be closed.
            let v = view(life).await.ok_or_else(|| self.fail("engine", "no answer".into()))?;
            if let Some(p) = v.positions.iter().find(|p| p.id == id) {
                if p.terminal && closed_before.is_some_and(|(g, _)| g == p.generation) {
                    return Err(self.fail(
                        "registration_acknowledged_unprotected",
                        format!(
                            "POST {id} (an id that closed before: {:?}) answered {} but the position stays {} ({}): nothing watches it",
                            closed_before.and_then(|(_, h)| h),
                            a.status,
                            p.state,
                            p.how.unwrap_or("-")
                        ),
                    ));
                }
            }
        } else if a.status == 0 || a.status >= 500 && a.status != 507 && a.status != 503 {
            return Err(self.fail("api", format!("POST {id}: {} {}", a.status, a.body)));
        }
        Ok(())
    }

    async fn modify(&mut self, life: &Life) -> Result<(), Violation> {
        let keys: Vec<String> =
            self.acked.iter().filter(|(_, a)| !a.withdrawn).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let id = self.rng.pick(&keys).clone();
        let sl = price(10_000 - 200 - 100 * self.rng.below(7) as i64);
        let tp = price(10_000 + 200 + 100 * self.rng.below(7) as i64);
        let body = format!(r#"{{"stop_loss":"{}","take_profit":"{}"}}"#, fmt_price(sl), fmt_price(tp));
        let a = self.api(life, "PATCH", &format!("/api/v1/positions/{id}"), Some(body)).await;
        if a.status == 200 {
            if let Some(x) = self.acked.get_mut(&id) {
                x.sl = Some(sl);
                x.tp = Some(tp);
            }
        }
        Ok(())
    }

    async fn withdraw(&mut self, life: &Life) -> Result<(), Violation> {
        let keys: Vec<String> =
            self.acked.iter().filter(|(_, a)| !a.withdrawn).map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let id = self.rng.pick(&keys).clone();
        let a = self.api(life, "DELETE", &format!("/api/v1/positions/{id}"), None).await;
        if a.status == 200 || a.status == 204 {
            if let Some(x) = self.acked.get_mut(&id) {
                x.withdrawn = true;
            }
        }
        Ok(())
    }

    /// The market moves one symbol; crossings of open positions are noted for the table.
    async fn move_price(&mut self, life: &Life) -> Result<(), Violation> {
        let sym = self.rng.pick(&VENUE).to_string();
        // Mostly near the entry, often through a level.
        let cents = 10_000 + (self.rng.below(2_000) as i64 - 1_000);
        let px = price(cents);
        self.venue.lock().prices.insert(sym.clone(), px);
        self.note(format!("market {sym} = {}", fmt_price(px)));
        let v = view(life).await.ok_or_else(|| self.fail("engine", "no answer".into()))?;
        if v.market_open {
            for p in v.positions.iter().filter(|p| p.open && p.symbol == sym) {
                let crossed = match p.side {
                    Side::Long => p.sl.is_some_and(|s| px <= s) || p.tp.is_some_and(|t| px >= t),
                    Side::Short => p.sl.is_some_and(|s| px >= s) || p.tp.is_some_and(|t| px <= t),
                };
                if crossed {
                    self.crossings.push((self.life_no, p.id.clone(), p.generation, v.now));
                }
            }
        }
        Ok(())
    }

    /// One fault toggled; `Some(ms)` when it was a wall-clock step of `ms`.
    fn set_fault(&mut self) -> Option<i64> {
        let r = self.rng.below(100);
        let mut f = self.feed.lock();
        let mut v = self.venue.lock();
        let mut wall = None;
        let what = match (self.kind, r) {
            (Kind::WallStep, 0..=29) => {
                // Forward or back by seconds, minutes or hours, as an NTP step or an RTC
                // corrected after boot would; through the test clock, never the host's.
                let (unit, most) = match self.rng.below(3) {
                    0 => (1_000i64, 59),
                    1 => (60_000, 59),
                    _ => (3_600_000, 12),
                };
                let mut ms = unit * (1 + self.rng.below(most) as i64) + self.rng.below(1_000) as i64;
                if self.rng.chance(50) {
                    ms = -ms;
                }
                tickguard::runtime::clock::step_wall(ms);
                wall = Some(ms);
                format!(
                    "wall clock stepped {ms:+} ms (now {:+} ms from the host's)",
                    tickguard::runtime::clock::wall_offset_ms()
                )
            }
            (Kind::FeedDrop, 0..=59) | (_, 0..=7) => {
                f.down = !f.down;
                format!("feed down={}", f.down)
            }
            (Kind::Silence, 0..=59) | (_, 8..=14) => {
                f.silent = !f.silent;
                format!("feed silent={}", f.silent)
            }
            (Kind::RestFailure, 0..=59) | (_, 15..=21) => {
                f.rest_down = !f.rest_down;
                if f.rest_down {
                    f.down = true;
                }
                format!("rest down={} feed down={}", f.rest_down, f.down)
            }
            (Kind::BrokerTimeout, 0..=59) | (_, 22..=27) => {
                v.mode = if v.mode == BrokerMode::TimeoutLost {
                    BrokerMode::Fill
                } else {
                    BrokerMode::TimeoutLost
                };
                format!("broker {:?}", v.mode)
            }
            (Kind::UnknownOutcome, 0..=59) | (_, 28..=33) => {
                v.mode = if v.mode == BrokerMode::TimeoutFilled {
                    BrokerMode::Fill
                } else {
                    BrokerMode::TimeoutFilled
                };
                format!("broker {:?}", v.mode)
            }
            (Kind::LateFill, 0..=59) | (_, 34..=39) => {
                v.mode = if v.mode == BrokerMode::LateFill { BrokerMode::Fill } else { BrokerMode::LateFill };
                format!("broker {:?}", v.mode)
            }
            (Kind::BrokerReject, 0..=59) | (_, 40..=45) => {
                v.mode = if v.mode == BrokerMode::Reject { BrokerMode::Fill } else { BrokerMode::Reject };
                format!("broker {:?}", v.mode)
            }
            (Kind::MarketClosed, 0..=59) | (_, 46..=51) => {
                f.market_open = !f.market_open;
                format!("market open={}", f.market_open)
            }
            (Kind::SoldByHand, 0..=59) | (_, 52..=57) => {
                let i = self.rng.below(VENUE.len() as u64) as usize;
                let sym = VENUE[i].to_string();
                let q = if self.rng.chance(50) { Qty::ZERO } else { Qty::parse("0.25").unwrap_or(Qty::ZERO) };
                v.holdings.insert(sym.clone(), q);
                self.hand_sold.push(sym.clone());
                format!("holdings {sym} = {q} (sold by hand)")
            }
            (_, 58..=59) => {
                v.holdings_fail = !v.holdings_fail;
                format!("holdings fail={}", v.holdings_fail)
            }
            (_, 60..=63) => {
                v.lookup_down = !v.lookup_down;
                format!("order look-ups fail={}", v.lookup_down)
            }
            _ => {
                // Heal everything.
                f.down = false;
                f.silent = false;
                f.rest_down = false;
                f.market_open = true;
                v.mode = BrokerMode::Fill;
                v.holdings_fail = false;
                v.lookup_down = false;
                "all faults healed".to_string()
            }
        };
        drop(v);
        drop(f);
        self.note(what);
        wall
    }

    /// What protection looks like now: the alarm and every position's state and blindness.
    async fn protection(&self, life: &Life) -> Option<(Timestamp, String, Vec<String>)> {
        let v = view(life).await?;
        let ps = v
            .positions
            .iter()
            .map(|p| {
                format!(
                    "{}#{} {} blind={} unknown_since={:?}",
                    p.id, p.generation, p.state, p.blind, p.unknown_since
                )
            })
            .collect();
        Some((v.now, v.alarm, ps))
    }

    /// A wall-clock step changes nothing in protection: the engine's ages, graces and
    /// deadlines are monotonic. Compared at the same virtual instant, after the runtime has
    /// had a chance to run whatever the step could have woken.
    async fn check_wall_step(
        &mut self,
        life: &Life,
        before: Option<(Timestamp, String, Vec<String>)>,
        ms: i64,
    ) -> Result<(), Violation> {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let after = self.protection(life).await;
        match (before, after) {
            (Some((t0, a0, p0)), Some((t1, a1, p1))) if t0 == t1 && (a0 != a1 || p0 != p1) => self.flag(
                "wall_step_changed_protection",
                format!("a wall-clock step of {ms:+} ms changed protection at the same instant: alarm {a0} -> {a1}; positions {p0:?} -> {p1:?}"),
            ),
            (_, None) => Err(self.fail("engine", "no answer after a wall-clock step".into())),
            (Some((t0, ..)), Some((t1, ..))) if t0 == t1 => {
                self.note("protection unchanged by the wall step".into());
                Ok(())
            }
            _ => {
                self.note("virtual time moved during the wall step: not compared".into());
                Ok(())
            }
        }
    }

    // ----- invariants -----------------------------------------------------------------------

    async fn check(&mut self, life: &Life) -> Result<(), Violation> {
        let v = view(life).await.ok_or_else(|| self.fail("engine", "the engine did not answer".into()))?;
        let ready = http::call(life.addr, "GET", "/ready", None, None).await;
        // The feed and the engine run while /ready is asked: a tick can price a blind position
        // between the view and the answer. /ready is held to a state only when the view taken
        // after it shows the same state (the same blind stretch, the same alarm), so a race of
        // the checker is never reported as a disagreement of the appliance.
        let after =
            view(life).await.ok_or_else(|| self.fail("engine", "the engine did not answer".into()))?;
        let blind_throughout = |p: &PosView| {
            p.blind_since.is_some()
                && after
                    .positions
                    .iter()
                    .any(|q| q.id == p.id && q.generation == p.generation && q.blind_since == p.blind_since)
        };
        let alarm_throughout = |a: &str| v.alarm == a && after.alarm == a;
        let opened_at = self.feed.lock().opened_at;
        let blind_alarm = v.alarm == "Blind" || v.alarm == "CloseFailed";
        for p in &v.positions {
            self.seen.entry((p.id.clone(), p.generation)).or_insert(p.qty);
        }
        // 1. Every open position has a usable price, or is blind within grace + 1 s.
        if v.market_open {
            for p in v.positions.iter().filter(|p| p.open) {
                let usable = p.dated.is_some_and(|d| v.now.since(d) <= EXPIRE_AFTER);
                if usable {
                    continue;
                }
                let mut since = p.registered_at.max(opened_at);
                if let Some(d) = p.dated {
                    since = since.max(d + EXPIRE_AFTER);
                }
                let unpriced = v.now.since(since);
                if unpriced <= BLIND_GRACE + Duration::from_secs(1) {
                    continue;
                }
                if !p.blind || !blind_alarm || (ready.status != 503 && blind_throughout(p)) {
                    let inv = if p.blind && blind_alarm {
                        "ready_disagrees_with_alarm"
                    } else {
                        "unpriced_not_blind"
                    };
                    self.flag(
                        inv,
                        format!(
                            "position {} ({}) has had no usable price for {:.1} s of open market (blind_grace {} s): blind={} alarm={} /ready={} {}",
                            p.id,
                            p.symbol,
                            unpriced.as_secs_f64(),
                            BLIND_GRACE.as_secs(),
                            p.blind,
                            v.alarm,
                            ready.status,
                            ready.body.chars().take(200).collect::<String>()
                        ),
                    )?;
                }
            }
        }
        // 2. /ready and the alarm agree.
        if let Some(p) = v.positions.iter().find(|p| blind_throughout(p) && !p.terminal) {
            if ready.status != 503 {
                self.flag(
                    "ready_disagrees_with_alarm",
                    format!(
                        "position {} ({}) is blind (alarm {}) but /ready answers {}",
                        p.id, p.symbol, v.alarm, ready.status
                    ),
                )?;
            }
        }
        if ready.status == 200 && alarm_throughout("Blind") {
            self.flag("ready_disagrees_with_alarm", format!("alarm {} but /ready 200", v.alarm))?;
        }
        if ready.status == 200 && alarm_throughout("CloseFailed") {
            // A crossed level whose close failed for good is not protection: /ready must not
            // call the appliance ready while the loudest alarm is on.
            self.flag(
                "ready_ignores_close_failed",
                format!(
                    "alarm CloseFailed but /ready 200 {}",
                    ready.body.chars().take(200).collect::<String>()
                ),
            )?;
        }
        // 2b. An outcome unknown for longer than unknown_alarm is loud.
        if let Some(p) = v.positions.iter().find(|p| {
            p.unknown_since.is_some_and(|s| v.now.since(s) > UNKNOWN_ALARM + Duration::from_secs(1))
        }) {
            let still_unknown = after
                .positions
                .iter()
                .any(|q| q.id == p.id && q.generation == p.generation && q.unknown_since == p.unknown_since);
            if still_unknown
                && ((alarm_throughout("Live") || alarm_throughout("Stale")) || ready.status == 200)
            {
                self.flag(
                    "unknown_outcome_silent",
                    format!(
                        "position {} has had an order of unknown outcome for {:.0} s; alarm {} /ready {}",
                        p.id,
                        p.unknown_since.map_or(0.0, |s| v.now.since(s).as_secs_f64()),
                        v.alarm,
                        ready.status
                    ),
                )?;
            }
        }
        // 2c. Reconciliation never invents a close: "closed externally" only where the account
        // was changed by hand.
        if let Some(p) = v
            .positions
            .iter()
            .find(|p| p.how == Some("external") && !self.hand_sold.contains(&p.symbol.to_ascii_uppercase()))
        {
            let d = format!(
                "position {} ({}) marked closed externally, but nobody touched the account's {}",
                p.id, p.symbol, p.symbol
            );
            self.flag("invented_external_close", d)?;
        }
        // 3. Fills for a position never exceed its quantity (the venue's own records).
        let seen: Vec<((String, u32), Qty)> = self.seen.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((id, generation), qty) in &seen {
            let filled = self.venue.filled_by_client_prefix(id, *generation);
            if filled > *qty {
                let d =
                    format!("position {id} (generation {generation}) qty {qty}: the venue filled {filled}");
                self.flag("overfilled", d)?;
            }
        }
        // 4. A crossing price at the box leads to a close order within 1 s.
        let due: Vec<crate::feed::Expect> = {
            let mut f = self.feed.lock();
            let (due, keep) = std::mem::take(&mut f.expects)
                .into_iter()
                .partition(|e| e.life != self.life_no || v.now.since(e.at) >= Duration::from_secs(1));
            f.expects = keep;
            due
        };
        let life_no = self.life_no;
        for e in due.into_iter().filter(|e| e.life == life_no) {
            self.reached.push((e.life, e.pos_id.clone(), e.generation));
            let prefix = client_prefix(e.generation, &e.pos_id);
            let order = self
                .venue
                .lock()
                .orders
                .iter()
                .filter(|o| {
                    o.life == e.life
                        && o.client_id.starts_with(&prefix)
                        && o.at + Duration::from_secs(1) >= e.at
                })
                .map(|o| o.at)
                .next();
            match order {
                Some(at) if at <= e.at + Duration::from_secs(1) => {
                    self.measured.tick_to_order_ms.push(at.since(e.at).as_millis() as u64);
                }
                _ => {
                    let now_p = v.positions.iter().find(|p| p.id == e.pos_id && p.generation == e.generation);
                    let excused = !v.market_open
                        || opened_at > e.at
                        || now_p.is_none_or(|p| matches!(p.how, Some("withdrawn" | "external" | "resolved")));
                    if !excused {
                        self.flag(
                            "crossing_not_closed",
                            format!(
                                "a {} price crossing position {} ({}) reached the box at {:?}; no close order at the broker within 1 s (state now {})",
                                e.source,
                                e.pos_id,
                                e.symbol,
                                e.at,
                                now_p.map_or("gone", |p| p.state)
                            ),
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Everything answered 2xx survived the restart.
    async fn check_durable(&mut self, life: &Life) -> Result<(), Violation> {
        let v = view(life).await.ok_or_else(|| self.fail("engine", "no answer after restart".into()))?;
        for (id, a) in &self.acked {
            let Some(p) = v.positions.iter().find(|p| &p.id == id) else {
                return Err(self.fail(
                    "acknowledged_lost",
                    format!("position {id} was acknowledged but is gone after the restart"),
                ));
            };
            if a.withdrawn && !p.terminal {
                return Err(self.fail(
                    "acknowledged_lost",
                    format!(
                        "position {id}: its withdrawal was acknowledged but it is {} after the restart",
                        p.state
                    ),
                ));
            }
            if p.open && (p.sl != a.sl || p.tp != a.tp || p.qty != a.qty) {
                return Err(self.fail(
                    "acknowledged_lost",
                    format!(
                        "position {id}: acknowledged levels {:?}/{:?} qty {} but after the restart {:?}/{:?} qty {}",
                        a.sl, a.tp, a.qty, p.sl, p.tp, p.qty
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Outcomes of crossed positions and market→order latencies (end of a life).
    async fn measure(&mut self, life: &Life) {
        let Some(v) = view(life).await else { return };
        for e in self.feed.lock().expects.iter() {
            self.reached.push((e.life, e.pos_id.clone(), e.generation));
        }
        let crossings: Vec<_> = std::mem::take(&mut self.crossings);
        let mut done: Vec<(String, u32)> = Vec::new();
        for (l, id, generation, first_at) in crossings.iter().cloned() {
            if l != self.life_no || done.contains(&(id.clone(), generation)) {
                continue;
            }
            done.push((id.clone(), generation));
            let prefix = client_prefix(generation, &id);
            let first = self
                .venue
                .lock()
                .orders
                .iter()
                .filter(|o| o.life == l && o.client_id.starts_with(&prefix) && o.at >= first_at)
                .map(|o| o.at)
                .next();
            if let Some(t) = first {
                // From the market crossing that led to it: the latest one before the order (a
                // price that moved back before any source delivered it crossed nothing).
                let at = crossings
                    .iter()
                    .filter(|(l2, i2, g2, a2)| *l2 == l && *i2 == id && *g2 == generation && *a2 <= t)
                    .map(|c| c.3)
                    .max()
                    .unwrap_or(first_at);
                self.measured.market_to_order_ms.push(t.since(at).as_millis() as u64);
            }
            let reached = self.reached.iter().any(|(l2, i2, g2)| *l2 == l && *i2 == id && *g2 == generation);
            let outcome = match v.positions.iter().find(|p| p.id == id && p.generation == generation) {
                Some(p) => match (p.state, p.how) {
                    ("closed", Some("filled")) => "closed (filled once)",
                    ("closed", Some("external")) => "closed externally",
                    ("closed", Some("withdrawn")) => "withdrawn",
                    ("closed", _) => "closed (resolved)",
                    ("close_failed", _) => "close failed (alarm)",
                    ("closing", _) => "closing (order out)",
                    _ if p.blind => "open, blind (alarm)",
                    _ if !reached => "open: the crossing never reached the box (moved back first)",
                    _ => "open, no order",
                },
                None => "gone",
            };
            *self.measured.outcomes.entry(outcome).or_insert(0) += 1;
        }
    }

    async fn one_step(&mut self, life: &Life) -> Result<bool, Violation> {
        let r = self.rng.below(100);
        // Wall-step scenarios restart more often: a journal written across steps back and
        // forth must restore whole.
        let restart_pct = match self.kind {
            Kind::Restart => 8,
            Kind::WallStep => 6,
            _ => 3,
        };
        match r {
            _ if r < restart_pct => return Ok(true),
            0..=19 => self.register(life).await?,
            20..=25 => self.modify(life).await?,
            26..=28 => self.withdraw(life).await?,
            29..=62 => self.move_price(life).await?,
            63..=84 => {
                let before = if self.kind == Kind::WallStep { self.protection(life).await } else { None };
                if let Some(ms) = self.set_fault() {
                    self.check_wall_step(life, before, ms).await?;
                }
            }
            _ => self.note("wait".into()),
        }
        let wait = match self.rng.below(4) {
            0 => Duration::from_millis(300 + self.rng.below(900)),
            1 => Duration::from_millis(1_200 + self.rng.below(2_000)),
            2 => Duration::from_secs(4 + self.rng.below(10)),
            _ => Duration::from_secs(12 + self.rng.below(30)),
        };
        tokio::time::sleep(wait).await;
        let t = std::time::Instant::now();
        self.check(life).await?;
        if std::env::var("WORLD_TIMING").is_ok() {
            eprintln!("check took {:?}", t.elapsed());
        }
        Ok(false)
    }
}

static WALL_TURNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A scenario's turn with the wall clock (see [`run`]): shared, or alone while it steps the
/// clock; puts the clock back when dropped, panics included.
struct WallTurn {
    _shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
    stepping: Option<std::sync::RwLockWriteGuard<'static, ()>>,
}

impl WallTurn {
    fn take(stepping: bool) -> WallTurn {
        if stepping {
            let g = WALL_TURNS.write().unwrap_or_else(|p| p.into_inner());
            tickguard::runtime::clock::reset_wall();
            WallTurn { _shared: None, stepping: Some(g) }
        } else {
            WallTurn { _shared: Some(WALL_TURNS.read().unwrap_or_else(|p| p.into_inner())), stepping: None }
        }
    }
}

impl Drop for WallTurn {
    fn drop(&mut self) {
        // Reset before the write guard is released (fields drop after this body).
        if self.stepping.is_some() {
            tickguard::runtime::clock::reset_wall();
        }
    }
}

/// Runs scenario `seed` with `steps` steps; never panics on a broken invariant (it is
/// reported with its step).
pub fn run(seed: u64, steps: usize) -> Report {
    let mut rng = Rng::new(seed);
    let kind = Kind::of_seed(seed, &mut rng);
    // The wall clock's step offset is process-wide: a scenario that steps it runs alone
    // (write), every other scenario shares (read), so no scenario sees another's step and each
    // wall-step scenario starts and ends on the host's time.
    let _wall = WallTurn::take(kind == Kind::WallStep);
    let dir = std::env::temp_dir().join(format!("tickguard-world-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut report = Report {
        seed,
        kind,
        measured: Measured::default(),
        violation: None,
        log: Vec::new(),
        skipped: Vec::new(),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        report.violation = Some((0, Violation { invariant: "setup", detail: e.to_string() }));
        return report;
    }
    let cfg = match config(&dir) {
        Ok(c) => c,
        Err(e) => {
            report.violation = Some((0, Violation { invariant: "setup", detail: e }));
            return report;
        }
    };
    let venue = Venue::new(&VENUE.map(|s| (s, "100")));
    let feed = Feed::default();
    feed.lock().market_open = true;
    let mut w = World {
        seed,
        kind,
        rng,
        dir: dir.clone(),
        cfg,
        venue,
        feed,
        acked: BTreeMap::new(),
        seen: BTreeMap::new(),
        next_id: 0,
        crossings: Vec::new(),
        measured: Measured::default(),
        log: Vec::new(),
        step: 0,
        life_no: 0,
        skipped: Vec::new(),
        hand_sold: Vec::new(),
        reached: Vec::new(),
    };
    let mut violation = None;
    'lives: for _life in 0..64 {
        if w.step >= steps {
            break;
        }
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build() {
            Ok(rt) => rt,
            Err(e) => {
                violation = Some((w.step, Violation { invariant: "setup", detail: e.to_string() }));
                break;
            }
        };
        let (res, restart) = rt.block_on(async {
            let t = std::time::Instant::now();
            let list_known = !(w.kind == Kind::UnknownSymbol && w.rng.chance(30));
            let life = wiring::start(&w.cfg, &w.venue, &w.feed, list_known).await;
            if std::env::var("WORLD_TIMING").is_ok() {
                eprintln!("start took {:?}", t.elapsed());
            }
            let life = match life {
                Ok(l) => l,
                Err(e) => return (Err(Violation { invariant: "start", detail: e }), false),
            };
            w.life_no = w.venue.lock().life;
            w.measured.lives += 1;
            w.note(format!("life {} started", w.life_no));
            {
                let mut f = w.feed.lock();
                f.opened_at = Timestamp::ZERO;
                f.expects.clear();
            }
            // Let the feed connect before anything is judged.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let mut res = if w.life_no > 1 { w.check_durable(&life).await } else { Ok(()) };
            if w.life_no == 1 {
                // Every scenario protects a few positions from the start.
                for _ in 0..2 + w.rng.below(2) {
                    if res.is_ok() {
                        res = w.register(&life).await;
                    }
                }
            }
            if res.is_ok() {
                res = w.check(&life).await;
            }
            let mut restart = false;
            while res.is_ok() && w.step < steps {
                w.step += 1;
                match w.one_step(&life).await {
                    Ok(true) => {
                        w.note("restart".into());
                        restart = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(v) => res = Err(v),
                }
            }
            w.measure(&life).await;
            let t = std::time::Instant::now();
            life.stop(w.rng.chance(20)).await;
            if std::env::var("WORLD_TIMING").is_ok() {
                eprintln!("stop took {:?}", t.elapsed());
            }
            (res, restart)
        });
        // The runtime (and with it the control plane's threads) ends in the background: the
        // next life listens on another port and nothing talks to this one again.
        let _ = std::thread::Builder::new().name("world-life-drop".into()).spawn(move || drop(rt));
        if let Err(v) = res {
            violation = Some((w.step, v));
            break 'lives;
        }
        if !restart {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&w.dir);
    let _ = w.seed;
    report.measured = std::mem::take(&mut w.measured);
    report.measured.steps = w.step;
    report.violation = violation;
    report.log = std::mem::take(&mut w.log);
    report.skipped = std::mem::take(&mut w.skipped);
    report
}
