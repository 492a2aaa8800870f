//! The engine: the single owner of prices, positions and close state.
//!
//! # Contract
//! - **Inputs**, each with the current monotonic time `now`, which never goes backwards
//!   between calls:
//!   - [`Engine::on_tick`] for every (possibly coalesced) quote from the feed or the REST poller;
//!   - [`Engine::on_timer`] whenever [`Engine::poll_timeout`] has passed (and may be called
//!     more often);
//!   - [`Engine::on_command`] for registrations, level changes, manual closes and operator
//!     actions;
//!   - [`Engine::on_broker`] for every outcome of an order the engine asked for;
//!   - [`Engine::on_feed`] for every change of the feed or REST source.
//! - **Outputs**: each call clears the [`Actions`] buffer it is given and fills it. `orders`
//!   has room for one order action per position, so a gap that crosses every position at once
//!   loses nothing; `notices` are for logs, metrics and alerts and are counted when dropped.
//!   The caller carries out the orders (journal first, then send) before the next call.
//! - **Promises**: no IO, no clock reads, no heap allocation, work per call bounded by the
//!   positions on the ticked instrument (`on_tick`) or by `M` (every other call). A crossed
//!   position gets exactly one close decision; at most one order per position may be working;
//!   filled quantity never exceeds the position.

use core::fmt::Write;
use core::time::Duration;

use super::CoreError;
use super::backoff::Rng;
use super::book::{
    ClosedHow, Closing, Decision, NIL, OrderPhase, PosState, Position, PositionBook, PositionSpec,
    check_levels,
};
use super::cache::PriceCache;
use super::price::{Price, Qty, notional};
use super::time::Timestamp;
use super::types::{
    Band, BlindPolicy, ClientId, CloseReason, InstrumentId, PosIdx, PositionId, PriceSource, Rung, Side,
    Source, Symbol, Tick,
};
use crate::limits::{NOTICE_CAP, RECENT_CLOSES, REST_FAILING_AFTER};

/// A look-up that has not reported after this long is issued again.
const LOOKUP_OVERDUE: Duration = Duration::from_secs(60);

/// Engine settings (from the configuration; shortened in the demo).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A price this old is stale (warn, LED).
    pub stale_after: Duration,
    /// A price older than this is never acted on.
    pub expire_after: Duration,
    /// How long a position stays blind before its blind policy acts.
    pub blind_grace: Duration,
    /// Period of the sweep that catches staleness, blindness and cache-rung decisions.
    pub sweep_every: Duration,
    /// Failed attempts after which a close is `CloseFailed`.
    pub max_close_attempts: u16,
    /// First retry delay of a failed close.
    pub retry_initial: Duration,
    /// Slowest retry delay (and the cadence once `CloseFailed`).
    pub retry_max: Duration,
    /// Jitter of the retry delays (0.5 = ±50 %).
    pub jitter: f64,
    /// Cadence of order look-ups while an order is working or unknown.
    pub lookup_every: Duration,
    /// Whether a REST price source exists for this venue.
    pub rest_enabled: bool,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// An attempt whose outcome stays unknown this long counts in the alarm
    /// (`broker.unknown_alarm_s`): the operator must settle it.
    pub unknown_alarm: Duration,
    /// Most instruments the watch set may hold (`feed.max_subscriptions`, at most `N`).
    pub max_watched: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            stale_after: Duration::from_secs(30),
            expire_after: Duration::from_secs(300),
            blind_grace: Duration::from_secs(60),
            sweep_every: Duration::from_millis(500),
            max_close_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            jitter: 0.5,
            lookup_every: Duration::from_secs(1),
            rest_enabled: false,
            seed: 0x7469_636b_6775_6172,
            unknown_alarm: Duration::from_secs(60),
            max_watched: usize::MAX,
        }
    }
}

/// An order the edge must carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderAction {
    /// Journal this attempt, then send a market order closing `qty` of the position.
    Place {
        /// Which position.
        pos: PosIdx,
        /// Client id of this attempt (journaled before sending).
        client_id: ClientId,
        /// Instrument to trade.
        instrument: InstrumentId,
        /// Side of the position (the order goes the other way).
        side: Side,
        /// Quantity to close: what remains, never the full quantity again after a fill.
        qty: Qty,
        /// Why.
        reason: CloseReason,
        /// Attempt number (1 for the first).
        attempt: u16,
    },
    /// Look the attempt up at the broker and report what it finds.
    Lookup {
        /// Which position.
        pos: PosIdx,
        /// Client id to look up.
        client_id: ClientId,
        /// When it was sent (the edge decides when "absent" can be believed).
        sent_at: Timestamp,
    },
}

impl OrderAction {
    /// The position it concerns.
    pub fn pos(&self) -> PosIdx {
        match self {
            OrderAction::Place { pos, .. } | OrderAction::Lookup { pos, .. } => *pos,
        }
    }
}

/// Something worth a log line, a metric or an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A close was decided (`[SL]`, `[TP]`, `[CLOSE]`, `[BLIND]` by reason).
    Decision {
        /// Which position.
        pos: PosIdx,
        /// The decision.
        decision: Decision,
    },
    /// An instrument with open positions moved between ladder rungs (`[FALLBACK]`).
    Fallback {
        /// Which instrument.
        instrument: InstrumentId,
        /// Previous rung.
        from: Rung,
        /// New rung.
        to: Rung,
        /// Age of the cached price, if any.
        age: Option<Duration>,
    },
    /// An instrument with open positions changed age band (`[CACHE]`).
    Band {
        /// Which instrument.
        instrument: InstrumentId,
        /// New band.
        band: Band,
        /// Age of the price.
        age: Duration,
    },
    /// A position went blind (`[BLIND]`).
    Blind {
        /// Which position.
        pos: PosIdx,
    },
    /// A blind position's grace passed and its policy acted (`[BLIND]`).
    BlindPolicy {
        /// Which position.
        pos: PosIdx,
        /// The policy that acted.
        policy: BlindPolicy,
        /// How long it had been blind.
        blind_for: Duration,
    },
    /// A blind position has a price source again.
    BlindCleared {
        /// Which position.
        pos: PosIdx,
    },
    /// A blind flatten that never reached the venue was re-judged on a fresh price and the
    /// position is open again.
    Rejudged {
        /// Which position.
        pos: PosIdx,
        /// The fresh price.
        price: Price,
    },
    /// Part or all of a close executed (`[CLOSE]`).
    Fill {
        /// Which position.
        pos: PosIdx,
        /// Quantity executed by this report.
        qty: Qty,
        /// At what price, if known.
        price: Option<Price>,
        /// Quantity still held.
        remaining: Qty,
    },
    /// The position is fully closed (`[CLOSE]`).
    Closed {
        /// Which position.
        pos: PosIdx,
        /// How.
        how: ClosedHow,
    },
    /// A close attempt failed; the next goes after `delay` (`[CLOSE]`).
    Retry {
        /// Which position.
        pos: PosIdx,
        /// The attempt that failed.
        attempt: u16,
        /// Delay before the next.
        delay: Duration,
    },
    /// A close attempt's outcome is unknown: it is being looked up (`[CLOSE]`).
    Unknown {
        /// Which position.
        pos: PosIdx,
        /// The attempt.
        attempt: u16,
    },
    /// `max_close_attempts` failed: loudest alert (`[CLOSE]`).
    CloseFailed {
        /// Which position.
        pos: PosIdx,
        /// Attempts so far.
        attempts: u16,
    },
    /// A close was decided while the market is closed: held until it opens (`[CLOSE]`).
    HeldForMarket {
        /// Which position.
        pos: PosIdx,
    },
    /// A broker report did not match the position's current attempt; ignored (`[CLOSE]`).
    StrayReport {
        /// Which position.
        pos: PosIdx,
    },
    /// A fill would have taken the filled quantity past the position; clamped (`[CLOSE]`).
    Overfill {
        /// Which position.
        pos: PosIdx,
        /// The excess that was ignored.
        excess: Qty,
    },
}

/// What one engine call asks the edge to do.
pub struct Actions<const M: usize> {
    /// Orders: at most one per position per call.
    pub orders: heapless::Vec<OrderAction, M>,
    /// Notices for logs, metrics and alerts.
    pub notices: heapless::Vec<Notice, NOTICE_CAP>,
    /// Notices dropped because `notices` was full (cumulative until the caller resets it).
    pub notices_dropped: u32,
}

impl<const M: usize> Default for Actions<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const M: usize> Actions<M> {
    /// An empty buffer.
    pub fn new() -> Self {
        Actions { orders: heapless::Vec::new(), notices: heapless::Vec::new(), notices_dropped: 0 }
    }
    fn clear(&mut self) {
        self.orders.clear();
        self.notices.clear();
    }
    fn notice(&mut self, n: Notice) {
        if self.notices.push(n).is_err() {
            self.notices_dropped = self.notices_dropped.saturating_add(1);
        }
    }
    fn order(&mut self, o: OrderAction) {
        // Room is guaranteed: one action per position per call and capacity M. Should that
        // ever be broken, the position stays in its state and the next timer retries.
        let _ = self.orders.push(o);
    }
    /// True when the call produced nothing.
    pub fn is_empty(&self) -> bool {
        self.orders.is_empty() && self.notices.is_empty()
    }
}

/// What a broker said about one close attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done, fully executed: `executed` is the attempt's total.
    Filled {
        /// Total executed by this attempt.
        executed: Qty,
        /// Average price, if known.
        price: Option<Price>,
    },
    /// Done, partly executed (e.g. EXPIRED with `executedQty` below the quantity): the
    /// remainder is closed by the next attempt, at once. Done with nothing executed counts
    /// as a failed attempt (backoff, `CloseFailed`), like `Rejected`.
    PartiallyFilled {
        /// Total executed by this attempt.
        executed: Qty,
        /// Average price, if known.
        price: Option<Price>,
    },
    /// Still open at the broker: wait, look it up again, never send another.
    Working {
        /// Executed so far.
        executed: Qty,
        /// Average price so far, if known.
        price: Option<Price>,
    },
    /// Known not executed (rejected, or looked up and proven absent).
    Rejected,
    /// May or may not have executed (timeout, 5xx, connection lost after sending).
    Unknown,
}

/// A broker outcome for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerReport {
    /// Which position.
    pub pos: PosIdx,
    /// Which attempt.
    pub client_id: ClientId,
    /// What happened.
    pub outcome: Outcome,
    /// When the broker handed the order request to its connection (a place that sent one):
    /// the attempt's send time for the absent-after rule, replacing the decision time the
    /// attempt was dated with. `None`: nothing sent, or a look-up.
    pub sent_at: Option<Timestamp>,
}

/// A change in the price sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    /// The feed session is up and every instrument is subscribed.
    SubscribedAll,
    /// One instrument was subscribed on the live session.
    Subscribed(InstrumentId),
    /// The feed session is down (or silent).
    Disconnected,
    /// A REST answer arrived for the instrument.
    RestOk(InstrumentId),
    /// A REST request for the instrument failed or timed out.
    RestError(InstrumentId),
    /// The market opened (`true`) or closed (`false`), from the venue's market status or the
    /// calendar (an unsynced clock must report open). While closed, a quiet feed is normal:
    /// prices are not stale, positions are not blind, and a close decided is held, with its
    /// own alert, until the open instead of being retried into rejections.
    Market(bool),
}

/// How a recovered position stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoredPhase {
    /// Protected, no decision.
    Open,
    /// Decided; the last attempt is in `order` (`Waiting`: none may be working).
    Closing {
        /// Client id of the last attempt (empty when none was sent).
        client_id: ClientId,
        /// Where it stands.
        order: OrderPhase,
        /// Quantity it asked for.
        order_qty: Qty,
        /// Quantity it is known to have executed.
        order_executed: Qty,
        /// Attempts that failed.
        failures: u16,
    },
    /// Ended.
    Closed(ClosedHow),
}

/// A position recovered from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    /// What was registered (with the current levels).
    pub spec: PositionSpec,
    /// Its registration number.
    pub generation: u32,
    /// Executed by our closes so far.
    pub filled: Qty,
    /// Sum of price × qty of those fills.
    pub exit_notional: i128,
    /// Orders sent so far.
    pub attempts: u16,
    /// The decision, if made.
    pub decision: Option<Decision>,
    /// Where it stands.
    pub phase: RestoredPhase,
}

/// Which positions a manual close is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseTarget {
    /// One position.
    Id(PositionId),
    /// Every open position on a symbol.
    Symbol(Symbol),
}

/// A request to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Protect a position.
    Register(PositionSpec),
    /// Move levels (`Some(None)` removes a level, `None` leaves it).
    Modify {
        /// Which position.
        id: PositionId,
        /// New stop-loss.
        stop_loss: Option<Option<Price>>,
        /// New take-profit.
        take_profit: Option<Option<Price>>,
    },
    /// Stop protecting an open position (nothing is sent).
    Withdraw {
        /// Which position.
        id: PositionId,
    },
    /// Close now, whatever the price.
    Close {
        /// Which positions.
        target: CloseTarget,
        /// Why (the API's `reason`).
        reason: CloseReason,
    },
    /// An operator marks a `CloseFailed` position closed by hand.
    Resolve {
        /// Which position.
        id: PositionId,
    },
    /// An operator settles an attempt whose outcome the appliance could not learn, after
    /// checking the venue: `executed` of the attempt's quantity executed (at `price`). A
    /// shortfall re-opens the close for the remainder only.
    Settle {
        /// Which position.
        id: PositionId,
        /// The attempt settled (must be the current one).
        attempt: u16,
        /// Quantity that attempt executed in total.
        executed: Qty,
        /// Its average price, if known.
        price: Option<Price>,
    },
    /// The broker shows the position closed elsewhere.
    ClosedExternally {
        /// Which position.
        id: PositionId,
    },
    /// Silence the buzzer until the alarm state changes.
    AckAlerts,
}

/// The engine's answer to a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Registered (or already registered with the same spec).
    Registered {
        /// Its slot.
        pos: PosIdx,
        /// Its instrument.
        instrument: InstrumentId,
        /// True when the instrument was new (the feed must subscribe it).
        new_instrument: bool,
        /// True when this exact spec was already registered.
        existed: bool,
    },
    /// Done for one position.
    Done {
        /// Its slot.
        pos: PosIdx,
    },
    /// Closes decided for this many positions (others on the symbol were already closing).
    Closing {
        /// Newly decided.
        decided: u16,
        /// Already closing.
        already: u16,
    },
    /// Alerts acknowledged.
    Acked,
}

/// What the LED and buzzer should say, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alarm {
    /// A close failed for good: buzzer until acknowledged.
    CloseFailed,
    /// A position is blind.
    Blind,
    /// A price is stale or the feed is down.
    Stale,
    /// All prices live.
    Live,
}

/// A close remembered for the page and the demo summary.
#[derive(Clone, Debug)]
pub struct CloseRecord {
    /// Position id.
    pub id: PositionId,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Side.
    pub side: Side,
    /// Quantity closed.
    pub qty: Qty,
    /// Entry price.
    pub entry: Price,
    /// The decision.
    pub decision: Decision,
    /// Average exit price.
    pub exit: Option<Price>,
    /// Orders sent.
    pub attempts: u16,
    /// When it closed.
    pub closed_at: Timestamp,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ticks accepted, by source: live, rest, manual.
    pub ticks: [u64; 3],
    /// Ticks that lost to a newer cached quote.
    pub ticks_superseded: u64,
    /// Close decisions made.
    pub decisions: u64,
    /// Close orders placed.
    pub orders_placed: u64,
    /// Positions fully closed by our orders.
    pub closes_done: u64,
    /// Close attempts that failed.
    pub close_failures: u64,
    /// Notices dropped.
    pub notices_dropped: u64,
    /// Quotes that carried a zero or negative price (that field was dropped; a quote left
    /// with no price at all was dropped whole).
    pub prices_dropped: u64,
    /// Broker reports for an earlier attempt, or for a concluded one, whose fills were
    /// reconciled instead of ignored.
    pub late_reports: u64,
}

#[derive(Clone, Copy, Debug)]
struct InstState {
    head: u16,
    subscribed: bool,
    rest_failures: u8,
    rung: Rung,
    band: Option<Band>,
    /// In the watch set (configured, or carrying a position that is not closed).
    watched: bool,
    /// When REST last priced it.
    rest_priced: Option<Timestamp>,
    /// Since when REST has been asked to price it (it lost its live source, or was added).
    rest_from: Timestamp,
}

/// The protection engine over `N` instruments and `M` positions. See the module docs for the
/// contract.
pub struct Engine<const N: usize, const M: usize> {
    cfg: EngineConfig,
    cache: PriceCache<N>,
    inst: heapless::Vec<InstState, N>,
    book: PositionBook<M>,
    feed_connected: bool,
    market_open: bool,
    boot: Timestamp,
    next_sweep: Timestamp,
    rng: Rng,
    next_generation: u32,
    recent: heapless::Deque<CloseRecord, RECENT_CLOSES>,
    acked: Option<(u16, u16)>,
    stats: Stats,
    /// When the market last opened (boot, if open then): an unpriced position's grace
    /// counts from here at the earliest, so closed hours never count.
    market_opened_at: Timestamp,
    watched: usize,
}

impl<const N: usize, const M: usize> Engine<N, M> {
    /// A new engine booted at `boot`.
    pub fn new(cfg: EngineConfig, boot: Timestamp) -> Self {
        let rng = Rng::new(cfg.seed);
        Engine {
            cfg,
            cache: PriceCache::new(),
            inst: heapless::Vec::new(),
            book: PositionBook::new(),
            feed_connected: false,
            market_open: true,
            boot,
            next_sweep: boot,
            rng,
            next_generation: 1,
            recent: heapless::Deque::new(),
            acked: None,
            stats: Stats::default(),
            market_opened_at: boot,
            watched: 0,
        }
    }

    // ----- accessors ---------------------------------------------------------------------

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// The price cache.
    pub fn cache(&self) -> &PriceCache<N> {
        &self.cache
    }
    /// The position book.
    pub fn book(&self) -> &PositionBook<M> {
        &self.book
    }
    /// Closes remembered, oldest first.
    pub fn recent_closes(&self) -> impl DoubleEndedIterator<Item = &CloseRecord> {
        self.recent.iter()
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// True while the feed session is up.
    pub fn feed_connected(&self) -> bool {
        self.feed_connected
    }
    /// True unless the venue or the calendar says the market is closed.
    pub fn market_open(&self) -> bool {
        self.market_open
    }
    /// When the engine booted.
    pub fn boot(&self) -> Timestamp {
        self.boot
    }
    /// Registration number the next position gets (persisted by the journal so client ids
    /// never repeat across restarts).
    pub fn next_generation(&self) -> u32 {
        self.next_generation
    }
    /// Raises the next registration number (recovery).
    pub fn ensure_generation_above(&mut self, g: u32) {
        self.next_generation = self.next_generation.max(g.saturating_add(1));
    }
    /// Whether the instrument is subscribed on a live session.
    pub fn is_live(&self, id: InstrumentId) -> bool {
        self.feed_connected && self.inst.get(usize::from(id.0)).is_some_and(|s| s.subscribed)
    }
    /// Whether the instrument's REST source counts as working at `now`: fewer than
    /// `REST_FAILING_AFTER` consecutive errors **and** it has priced the instrument within
    /// `stale_after` (or was asked to less than `stale_after` ago: the first answer gets that
    /// long). A source that answers for other instruments but never for this one (unknown or
    /// delisted symbol) is not working for it.
    pub fn rest_working(&self, id: InstrumentId, now: Timestamp) -> bool {
        self.cfg.rest_enabled
            && self.inst.get(usize::from(id.0)).is_some_and(|s| {
                s.rest_failures < REST_FAILING_AFTER
                    && match s.rest_priced {
                        Some(t) if t >= s.rest_from => now.since(t) <= self.cfg.stale_after,
                        _ => now.since(s.rest_from) < self.cfg.stale_after,
                    }
            })
    }

    /// Adds an instrument to the watch set (configuration); returns its id.
    pub fn add_instrument(&mut self, symbol: &str) -> Result<InstrumentId, CoreError> {
        let id = self.intern(symbol)?;
        self.watch(id)?;
        Ok(id)
    }

    /// Interns an instrument without watching it (a restored closed position).
    fn intern(&mut self, symbol: &str) -> Result<InstrumentId, CoreError> {
        let id = self.cache.intern(symbol)?;
        let now = self.boot;
        while self.inst.len() <= usize::from(id.0) {
            let fresh = InstState {
                head: NIL,
                subscribed: false,
                rest_failures: 0,
                rung: Rung::Live,
                band: None,
                watched: false,
                rest_priced: None,
                rest_from: now,
            };
            self.inst.push(fresh).map_err(|_| CoreError::CacheFull { capacity: N })?;
        }
        Ok(id)
    }

    /// Puts an interned instrument in the watch set; `Ok(true)` when it joined just now.
    fn watch(&mut self, id: InstrumentId) -> Result<bool, CoreError> {
        let limit = self.cfg.max_watched.min(N);
        let watched = self.watched;
        let Some(s) = self.inst.get_mut(usize::from(id.0)) else {
            return Err(CoreError::CacheFull { capacity: N });
        };
        if s.watched {
            return Ok(false);
        }
        if watched >= limit {
            return Err(CoreError::WatchFull { limit });
        }
        s.watched = true;
        self.watched += 1;
        Ok(true)
    }

    /// Whether a registration on `symbol` could join the watch set now.
    fn can_watch(&self, symbol: &str) -> Result<(), CoreError> {
        let limit = self.cfg.max_watched.min(N);
        let known = self.cache.lookup(symbol);
        let watched = known.and_then(|id| self.inst.get(usize::from(id.0))).is_some_and(|s| s.watched);
        if watched {
            return Ok(());
        }
        if self.watched >= limit {
            return Err(CoreError::WatchFull { limit });
        }
        if known.is_none() && self.cache.len() >= N {
            return Err(CoreError::CacheFull { capacity: N });
        }
        Ok(())
    }

    /// The watch set: every instrument the feed must subscribe and the REST poller price.
    pub fn watched(&self) -> impl Iterator<Item = InstrumentId> + '_ {
        self.inst.iter().enumerate().filter(|(_, s)| s.watched).map(|(i, _)| InstrumentId(i as u16))
    }

    /// Since when the position has lacked a usable price, while the market is open (its
    /// registration or restore, the market's open, or the moment its last price expired,
    /// whichever is latest); `None` while it has one or the market is closed.
    pub fn unpriced_since(&self, idx: PosIdx, now: Timestamp) -> Option<Timestamp> {
        if !self.market_open {
            return None;
        }
        let p = self.book.get(idx)?;
        let mut since = p.registered_at.max(self.market_opened_at);
        if let Some(q) = self.cache.quote(p.instrument) {
            let age = now.since(q.dated);
            if age <= self.cfg.expire_after && q.price_for(p.side).is_some() {
                return None;
            }
            since = since.max(q.dated + self.cfg.expire_after);
        }
        Some(since)
    }

    /// Positions whose current attempt has had no known outcome for longer than
    /// `unknown_alarm` (sent or unknown): the operator must settle them.
    pub fn unknown_overdue(&self, now: Timestamp) -> u16 {
        let mut n = 0u16;
        for (_, p) in self.book.iter() {
            if self.is_unknown_overdue(p, now) {
                n = n.saturating_add(1);
            }
        }
        n
    }

    /// Whether `p`'s current attempt is overdue (see [`Engine::unknown_overdue`]).
    pub fn is_unknown_overdue(&self, p: &Position, now: Timestamp) -> bool {
        p.state.closing().is_some_and(|c| {
            matches!(c.order, OrderPhase::Sent | OrderPhase::Unknown)
                && now.since(c.sent_at) > self.cfg.unknown_alarm
        })
    }

    /// The ladder rung an instrument's price comes from at `now`.
    pub fn rung(&self, id: InstrumentId, now: Timestamp) -> Rung {
        if self.is_live(id) {
            Rung::Live
        } else if self.rest_working(id, now) {
            Rung::Rest
        } else if self.cache.age(id, now).is_some_and(|a| a <= self.cfg.expire_after) {
            Rung::Cache
        } else {
            Rung::Blind
        }
    }

    /// Age band of an instrument's price at `now`.
    pub fn band(&self, id: InstrumentId, now: Timestamp) -> Option<Band> {
        self.cache.band(id, now, self.cfg.stale_after, self.cfg.expire_after)
    }

    /// What the LED and buzzer should show, and whether the operator silenced it.
    pub fn alarm(&self, now: Timestamp) -> (Alarm, bool) {
        let (failed, blind) = self.alarm_counts(now);
        let alarm = if failed > 0 {
            Alarm::CloseFailed
        } else if blind > 0 {
            Alarm::Blind
        } else if !self.feed_connected
            || (self.market_open
                && self.book.iter().any(|(_, p)| {
                    !p.state.is_terminal()
                        && (self.rung(p.instrument, now) != Rung::Live
                            || self.band(p.instrument, now).is_some_and(|b| b != Band::Live))
                }))
        {
            // A closed market's quiet feed is normal: only a feed that is down is a fault then.
            Alarm::Stale
        } else {
            Alarm::Live
        };
        (alarm, self.acked == Some((failed, blind)) && alarm <= Alarm::Blind)
    }

    /// `close_failed` positions (with attempts overdue an outcome: both need the operator)
    /// and blind ones.
    fn alarm_counts(&self, now: Timestamp) -> (u16, u16) {
        let mut failed = 0u16;
        let mut blind = 0u16;
        for (_, p) in self.book.iter() {
            if matches!(p.state, PosState::CloseFailed(_)) || self.is_unknown_overdue(p, now) {
                failed += 1;
            }
            if p.blind_since.is_some() && !p.state.is_terminal() {
                blind += 1;
            }
        }
        (failed, blind)
    }

    /// The next time [`Engine::on_timer`] has work: the earliest of the sweep and every
    /// position's retry or look-up deadline.
    pub fn poll_timeout(&self) -> Timestamp {
        let mut t = self.next_sweep;
        for (_, p) in self.book.iter() {
            if let Some(c) = p.state.closing() {
                if c.order != OrderPhase::Sent {
                    t = t.min(c.next_at);
                }
            }
        }
        t
    }

    // ----- inputs ------------------------------------------------------------------------

    /// A quote arrived. Updates the cache if it is the newest, then judges every position on
    /// the instrument against the extremes of the (coalesced) tick.
    pub fn on_tick(&mut self, now: Timestamp, tick: &Tick, out: &mut Actions<M>) {
        out.clear();
        let id = tick.instrument;
        let Some(st) = self.inst.get(usize::from(id.0)).copied() else {
            return;
        };
        if tick.quote.has_unusable() {
            // A zero or negative price is no price: drop that field (for this instrument
            // only), and the whole quote when nothing is left. The tick's extremes already
            // leave such prices out (`Extremes`).
            self.stats.prices_dropped += 1;
            let mut clean = *tick;
            if !clean.quote.sanitize() {
                return;
            }
            self.on_tick(now, &clean, out);
            return;
        }
        if !self.cache.update(id, &tick.quote) {
            self.stats.ticks_superseded += 1;
            return;
        }
        let src = match tick.quote.source {
            Source::Live => 0,
            Source::Rest => 1,
            Source::Manual => 2,
        };
        self.stats.ticks[src] += 1;
        if src == 1 {
            if let Some(s) = self.inst.get_mut(usize::from(id.0)) {
                s.rest_priced = Some(tick.quote.dated.max(s.rest_priced.unwrap_or(tick.quote.dated)));
            }
        }
        if st.head == NIL {
            return;
        }
        let age = now.since(tick.quote.dated);
        if age > self.cfg.expire_after {
            return;
        }
        // While the feed is live for the instrument and its band was live, this fresh tick
        // cannot change rung or band: skip the re-classification (the hot path).
        let steady = self.feed_connected
            && st.subscribed
            && st.rung == Rung::Live
            && st.band == Some(Band::Live)
            && age < self.cfg.stale_after;
        if !steady {
            self.note_instrument(id, now, out);
        }
        let source = match tick.quote.source {
            Source::Live => PriceSource::Live,
            Source::Rest => PriceSource::Rest,
            Source::Manual => PriceSource::Manual,
        };
        let mut cur = st.head;
        while cur != NIL {
            let idx = PosIdx(cur);
            let Some(p) = self.book.get(idx) else { break };
            let next = p.next;
            let (lo, hi) = tick.extremes.range(p.side);
            // Inline pre-check: an open position whose levels are not touched needs nothing.
            let touched = match (p.side, lo, hi) {
                (Side::Long, Some(lo), Some(hi)) => {
                    p.stop_loss.is_some_and(|s| lo <= s) || p.take_profit.is_some_and(|t| hi >= t)
                }
                (Side::Short, Some(lo), Some(hi)) => {
                    p.stop_loss.is_some_and(|s| hi >= s) || p.take_profit.is_some_and(|t| lo <= t)
                }
                _ => false,
            };
            if touched || p.state != PosState::Open {
                self.judge(idx, now, lo, hi, source, age, tick.quote.dated, out);
            }
            cur = next;
        }
        self.flush_dropped(out);
    }

    /// Time passed. Runs the sweep when due (ladder rungs, age bands, blindness, decisions on
    /// cached prices) and every due retry and look-up.
    pub fn on_timer(&mut self, now: Timestamp, out: &mut Actions<M>) {
        out.clear();
        let sweep = now >= self.next_sweep;
        if sweep {
            self.next_sweep = now + self.cfg.sweep_every;
        }
        self.service_all(now, sweep, out);
    }

    /// The feed or REST source changed. Re-evaluates every position at once.
    pub fn on_feed(&mut self, now: Timestamp, ev: FeedEvent, out: &mut Actions<M>) {
        out.clear();
        match ev {
            FeedEvent::SubscribedAll => {
                self.feed_connected = true;
                for s in self.inst.iter_mut() {
                    s.subscribed = true;
                }
            }
            FeedEvent::Subscribed(id) => {
                self.feed_connected = true;
                if let Some(s) = self.inst.get_mut(usize::from(id.0)) {
                    s.subscribed = true;
                }
            }
            FeedEvent::Disconnected => {
                if self.feed_connected {
                    // REST is asked from now on: its first answer gets `stale_after`.
                    for s in self.inst.iter_mut().filter(|s| s.subscribed) {
                        s.rest_from = now;
                    }
                }
                self.feed_connected = false;
                for s in self.inst.iter_mut() {
                    s.subscribed = false;
                }
            }
            FeedEvent::RestOk(id) => {
                if let Some(s) = self.inst.get_mut(usize::from(id.0)) {
                    s.rest_failures = 0;
                }
            }
            FeedEvent::RestError(id) => {
                if let Some(s) = self.inst.get_mut(usize::from(id.0)) {
                    s.rest_failures = s.rest_failures.saturating_add(1);
                }
            }
            FeedEvent::Market(open) => {
                let opened = open && !self.market_open;
                self.market_open = open;
                if opened {
                    self.market_opened_at = now;
                }
                if opened {
                    // Held closes go now.
                    for i in 0..self.book.slot_count() {
                        if let Some(c) =
                            self.book.get_mut(PosIdx(i as u16)).and_then(|p| p.state.closing_mut())
                        {
                            if c.order == OrderPhase::Waiting {
                                c.next_at = now;
                            }
                        }
                    }
                }
            }
        }
        self.service_all(now, true, out);
    }

    /// A broker outcome for a close attempt.
    pub fn on_broker(&mut self, now: Timestamp, report: &BrokerReport, out: &mut Actions<M>) {
        out.clear();
        let idx = report.pos;
        let Some(p) = self.book.get_mut(idx) else {
            return;
        };
        let Some(c) = p.state.closing_mut() else {
            out.notice(Notice::StrayReport { pos: idx });
            return;
        };
        if c.client_id != report.client_id || c.order == OrderPhase::Waiting {
            // Not the attempt in flight: a late answer about an earlier attempt, or about
            // this one after it was concluded (an overlapping look-up found it absent). What
            // it executed is real: reconcile it, never ignore it, so the next attempt never
            // sells it again.
            self.late_report(idx, now, report, out);
            self.flush_dropped(out);
            return;
        }
        if let Some(t) = report.sent_at {
            // The one send time, taken by the broker where the request left: later than the
            // decision (the intent's fsync and any connecting came first). Only ever moved
            // later, so the absent-after window never shrinks.
            if t > c.sent_at {
                c.sent_at = t;
            }
        }
        match report.outcome {
            Outcome::Working { executed, price } => {
                self.apply_fill(idx, executed, price, out);
                let next = now + self.cfg.lookup_every;
                if let Some(c) = self.closing_mut(idx) {
                    c.order = OrderPhase::Working;
                    c.next_at = next;
                }
            }
            Outcome::Filled { executed, price } | Outcome::PartiallyFilled { executed, price } => {
                self.apply_fill(idx, executed, price, out);
                let done = self.book.get(idx).is_some_and(|p| !p.remaining().is_positive());
                let nothing = self
                    .book
                    .get(idx)
                    .and_then(|p| p.state.closing())
                    .is_some_and(|c| !c.order_executed.is_positive());
                if done {
                    self.finish(idx, now, ClosedHow::Filled, out);
                } else if nothing {
                    // Over with nothing executed (a market order EXPIRED unfilled, executedQty
                    // 0): that is a failed attempt, not progress. Resending at once would loop
                    // orders into a market with no liquidity without any backoff, and the
                    // position would never reach CloseFailed, the loudest alarm.
                    self.attempt_failed(idx, now, out);
                } else if let Some(c) = self.closing_mut(idx) {
                    // The remainder goes at once: a partial fill is progress, not a failure.
                    c.order = OrderPhase::Waiting;
                    c.next_at = now;
                    self.place(idx, now, out);
                }
            }
            Outcome::Rejected => self.attempt_failed(idx, now, out),
            Outcome::Unknown => {
                let attempt = c.attempt;
                let first = c.order != OrderPhase::Unknown;
                c.order = OrderPhase::Unknown;
                c.next_at = now + self.cfg.lookup_every;
                if first {
                    // Said once per attempt; the look-ups that follow are logged by the edge.
                    out.notice(Notice::Unknown { pos: idx, attempt });
                }
            }
        }
        self.flush_dropped(out);
    }

    /// A command from the API, the operator or the configuration.
    pub fn on_command(
        &mut self,
        now: Timestamp,
        cmd: Command,
        out: &mut Actions<M>,
    ) -> Result<Reply, CoreError> {
        out.clear();
        let r = match cmd {
            Command::Register(spec) => self.register(now, &spec, out),
            Command::Modify { id, stop_loss, take_profit } => {
                let idx = self.book.find(&id).ok_or(CoreError::UnknownPosition)?;
                let p = self.book.get_mut(idx).ok_or(CoreError::UnknownPosition)?;
                if p.state != PosState::Open {
                    return Err(CoreError::NotOpen);
                }
                let sl = stop_loss.unwrap_or(p.stop_loss);
                let tp = take_profit.unwrap_or(p.take_profit);
                if sl.is_some_and(|v| !v.is_positive()) || tp.is_some_and(|v| !v.is_positive()) {
                    return Err(CoreError::BadPrice);
                }
                check_levels(p.side, sl, tp)?;
                p.stop_loss = sl;
                p.take_profit = tp;
                self.judge_cached(idx, now, out);
                Ok(Reply::Done { pos: idx })
            }
            Command::Withdraw { id } => {
                let idx = self.book.find(&id).ok_or(CoreError::UnknownPosition)?;
                if self.book.get(idx).is_some_and(|p| p.state != PosState::Open) {
                    return Err(CoreError::NotOpen);
                }
                self.finish(idx, now, ClosedHow::Withdrawn, out);
                Ok(Reply::Done { pos: idx })
            }
            Command::Close { target, reason } => self.close_now(now, &target, reason, out),
            Command::Resolve { id } => {
                let idx = self.book.find(&id).ok_or(CoreError::UnknownPosition)?;
                let p = self.book.get(idx).ok_or(CoreError::UnknownPosition)?;
                match &p.state {
                    PosState::CloseFailed(c) | PosState::Closing(c) if c.order == OrderPhase::Waiting => {}
                    PosState::CloseFailed(_) | PosState::Closing(_) => return Err(CoreError::OrderInFlight),
                    _ => return Err(CoreError::NotCloseFailed),
                }
                self.finish(idx, now, ClosedHow::Resolved, out);
                Ok(Reply::Done { pos: idx })
            }
            Command::Settle { id, attempt, executed, price } => {
                self.settle(now, &id, attempt, executed, price, out)
            }
            Command::ClosedExternally { id } => {
                let idx = self.book.find(&id).ok_or(CoreError::UnknownPosition)?;
                let p = self.book.get(idx).ok_or(CoreError::UnknownPosition)?;
                if p.state.is_terminal() {
                    return Err(CoreError::NotOpen);
                }
                if p.state.closing().is_some_and(|c| c.order != OrderPhase::Waiting) {
                    // Our own order may be what closed it: let its outcome say so.
                    return Err(CoreError::OrderInFlight);
                }
                self.finish(idx, now, ClosedHow::External, out);
                Ok(Reply::Done { pos: idx })
            }
            Command::AckAlerts => {
                self.acked = Some(self.alarm_counts(now));
                Ok(Reply::Acked)
            }
        };
        self.flush_dropped(out);
        r
    }

    /// Puts a position recovered from the journal back into the book (before the engine
    /// starts acting). An attempt whose outcome is unknown comes back as `Unknown` and is
    /// looked up before anything else is sent; its send time on this boot's clock is taken
    /// as `now`, which only ever makes the absent-only-after rule wait longer.
    pub fn restore(&mut self, now: Timestamp, r: &Restored) -> Result<PosIdx, CoreError> {
        r.spec.validate()?;
        if self.book.find(&r.spec.id).is_some() {
            return Err(CoreError::DuplicateId);
        }
        let terminal = matches!(r.phase, RestoredPhase::Closed(_));
        let instrument =
            if terminal { self.intern(&r.spec.symbol)? } else { self.add_instrument(&r.spec.symbol)? };
        let mut pos = Position::new(&r.spec, instrument, r.generation, now);
        pos.filled = r.filled.min(pos.qty);
        pos.exit_notional = r.exit_notional;
        pos.attempts = r.attempts;
        pos.decision = r.decision;
        let max_attempts = self.cfg.max_close_attempts.max(1);
        pos.state = match &r.phase {
            RestoredPhase::Open => PosState::Open,
            RestoredPhase::Closed(how) => PosState::Closed { at: now, how: *how },
            RestoredPhase::Closing { client_id, order, order_qty, order_executed, failures } => {
                let c = Closing {
                    attempt: r.attempts,
                    client_id: client_id.clone(),
                    sent_at: now,
                    order: *order,
                    order_qty: *order_qty,
                    order_executed: *order_executed,
                    failures: *failures,
                    next_at: now,
                };
                if *failures >= max_attempts { PosState::CloseFailed(c) } else { PosState::Closing(c) }
            }
        };
        if pos.decision.is_none() && pos.state.closing().is_some() {
            // A close in flight always has a decision; without one keep it closing anyway
            // (safe side: never forget a close that may have been sent).
            pos.decision = Some(Decision {
                reason: CloseReason::Emergency,
                price: None,
                source: PriceSource::None,
                age: Duration::ZERO,
                level: None,
                at: now,
            });
        }
        let idx = self.book.insert(pos)?;
        self.ensure_generation_above(r.generation);
        if !terminal {
            self.link(idx);
        }
        Ok(idx)
    }

    // ----- internals ---------------------------------------------------------------------

    fn register(
        &mut self,
        now: Timestamp,
        spec: &PositionSpec,
        out: &mut Actions<M>,
    ) -> Result<Reply, CoreError> {
        spec.validate()?;
        if let Some(idx) = self.book.find(&spec.id) {
            let p = self.book.get(idx).ok_or(CoreError::UnknownPosition)?;
            if p.state.is_terminal() {
                // A closed id is never re-opened, even with the same body: a bot retrying a
                // registration that timed out after an instant close must not get a second
                // sell. A new registration needs a new id.
                return Err(CoreError::Closed);
            }
            let own = self.cache.symbol(p.instrument);
            return if p.matches(spec, &spec.symbol, own) {
                Ok(Reply::Registered {
                    pos: idx,
                    instrument: p.instrument,
                    new_instrument: false,
                    existed: true,
                })
            } else {
                Err(CoreError::DuplicateId)
            };
        }
        if self.book.active() >= M {
            return Err(CoreError::BookFull { capacity: M });
        }
        // Never accepted unwatched: the instrument joins the watch set or the registration is
        // refused, naming the limit.
        self.can_watch(&spec.symbol)?;
        let instrument = self.intern(&spec.symbol)?;
        let joined = self.watch(instrument)?;
        let generation = self.next_generation;
        let pos = Position::new(spec, instrument, generation, now);
        let idx = self.book.insert(pos)?;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.link(idx);
        // A position registered with its level already crossed is closed at once.
        self.judge_cached(idx, now, out);
        Ok(Reply::Registered { pos: idx, instrument, new_instrument: joined, existed: false })
    }

    fn settle(
        &mut self,
        now: Timestamp,
        id: &str,
        attempt: u16,
        executed: Qty,
        price: Option<Price>,
        out: &mut Actions<M>,
    ) -> Result<Reply, CoreError> {
        let idx = self.book.find(id).ok_or(CoreError::UnknownPosition)?;
        let p = self.book.get(idx).ok_or(CoreError::UnknownPosition)?;
        let c = p.state.closing().ok_or(if p.state.is_terminal() {
            CoreError::NotOpen
        } else {
            CoreError::NotCloseFailed
        })?;
        if c.attempt != attempt || c.client_id.is_empty() {
            return Err(CoreError::WrongAttempt { current: c.attempt });
        }
        if executed.units() < 0 || executed > c.order_qty {
            return Err(CoreError::BadQuantity);
        }
        // The operator's word replaces the unknown: the attempt is over with `executed`.
        self.apply_fill(idx, executed, price, out);
        let done = self.book.get(idx).is_some_and(|p| !p.remaining().is_positive());
        if done {
            self.finish(idx, now, ClosedHow::Filled, out);
        } else if let Some(c) = self.closing_mut(idx) {
            // A shortfall re-opens the close for the remainder only, at once.
            c.order = OrderPhase::Waiting;
            c.next_at = now;
            self.place(idx, now, out);
        }
        Ok(Reply::Done { pos: idx })
    }

    /// Takes back a registration the journal could not record (the caller answers 503 and
    /// the bot retries): the position leaves the book as if never registered.
    pub fn forget(&mut self, idx: PosIdx) {
        self.unlink(idx);
        self.book.remove(idx);
    }

    /// Puts a position back as it was before a command the journal could not record
    /// (withdraw, resolve, closed externally, settle): memory never runs ahead of the disk
    /// for an acknowledged change, and an unrecorded close stays protected.
    pub fn put_back(&mut self, idx: PosIdx, saved: Position) {
        let was_linked = self.book.get(idx).is_some_and(|p| !p.state.is_terminal());
        let linked = !saved.state.is_terminal();
        if was_linked {
            self.unlink(idx);
        }
        if let Some(p) = self.book.get_mut(idx) {
            *p = saved;
            p.next = NIL;
        }
        if linked {
            self.link(idx);
        }
    }

    fn close_now(
        &mut self,
        now: Timestamp,
        target: &CloseTarget,
        reason: CloseReason,
        out: &mut Actions<M>,
    ) -> Result<Reply, CoreError> {
        let mut decided = 0u16;
        let mut already = 0u16;
        let mut found = false;
        for i in 0..self.book.slot_count() {
            let idx = PosIdx(i as u16);
            let Some(p) = self.book.get(idx) else { continue };
            let hit = match target {
                CloseTarget::Id(id) => p.id == *id,
                CloseTarget::Symbol(s) => self.cache.symbol(p.instrument) == s.as_str(),
            };
            if !hit || p.state.is_terminal() {
                continue;
            }
            found = true;
            if p.state != PosState::Open {
                already += 1;
                continue;
            }
            let inst = p.instrument;
            let side = p.side;
            let (price, source, age) = match self.cache.quote(inst) {
                Some(q) if now.since(q.dated) <= self.cfg.expire_after => {
                    (q.price_for(side), self.label(inst, now), now.since(q.dated))
                }
                _ => (None, PriceSource::None, Duration::ZERO),
            };
            let d = Decision { reason, price, source, age, level: None, at: now };
            self.decide(idx, now, d, out);
            decided += 1;
        }
        if !found {
            return Err(CoreError::UnknownPosition);
        }
        Ok(Reply::Closing { decided, already })
    }

    fn closing_mut(&mut self, idx: PosIdx) -> Option<&mut Closing> {
        self.book.get_mut(idx).and_then(|p| p.state.closing_mut())
    }

    fn flush_dropped(&mut self, out: &mut Actions<M>) {
        if out.notices_dropped > 0 {
            self.stats.notices_dropped += u64::from(out.notices_dropped);
            out.notices_dropped = 0;
        }
    }

    fn link(&mut self, idx: PosIdx) {
        let Some(p) = self.book.get(idx) else { return };
        let inst = usize::from(p.instrument.0);
        let head = self.inst.get(inst).map_or(NIL, |s| s.head);
        if let Some(p) = self.book.get_mut(idx) {
            p.next = head;
        }
        if let Some(s) = self.inst.get_mut(inst) {
            s.head = idx.0;
        }
    }

    fn unlink(&mut self, idx: PosIdx) {
        let Some(p) = self.book.get(idx) else { return };
        let inst = usize::from(p.instrument.0);
        let after = p.next;
        let Some(head) = self.inst.get(inst).map(|s| s.head) else { return };
        if head == idx.0 {
            if let Some(s) = self.inst.get_mut(inst) {
                s.head = after;
            }
        } else {
            let mut cur = head;
            while cur != NIL {
                let next = self.book.get(PosIdx(cur)).map_or(NIL, |p| p.next);
                if next == idx.0 {
                    if let Some(p) = self.book.get_mut(PosIdx(cur)) {
                        p.next = after;
                    }
                    break;
                }
                cur = next;
            }
        }
        if let Some(p) = self.book.get_mut(idx) {
            p.next = NIL;
        }
    }

    /// `source=` of a decision made from the cache (timer, command): `live` or `rest` only
    /// while that source is the acting rung and the price is young; otherwise `cache`.
    fn label(&self, id: InstrumentId, now: Timestamp) -> PriceSource {
        let Some(q) = self.cache.quote(id) else { return PriceSource::None };
        let young = now.since(q.dated) < self.cfg.stale_after;
        match (self.rung(id, now), q.source) {
            (_, Source::Manual) => PriceSource::Manual,
            (Rung::Live, Source::Live) if young => PriceSource::Live,
            (Rung::Rest, Source::Rest) if young => PriceSource::Rest,
            _ => PriceSource::Cache,
        }
    }

    /// Judges a position on the cached quote, if it is usable.
    fn judge_cached(&mut self, idx: PosIdx, now: Timestamp, out: &mut Actions<M>) {
        let Some(p) = self.book.get(idx) else { return };
        let inst = p.instrument;
        let side = p.side;
        let Some(q) = self.cache.quote(inst).copied() else { return };
        let age = now.since(q.dated);
        if age > self.cfg.expire_after {
            return;
        }
        let price = q.price_for(side);
        let source = self.label(inst, now);
        self.judge(idx, now, price, price, source, age, q.dated, out);
    }

    /// Judges one position on a price range (`lo..=hi` of the side's judged price). Makes the
    /// decision for an open position whose level is touched; re-judges a blind flatten that
    /// is known not to have reached the venue when the price is newer than its decision.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &mut self,
        idx: PosIdx,
        now: Timestamp,
        lo: Option<Price>,
        hi: Option<Price>,
        source: PriceSource,
        age: Duration,
        dated: Timestamp,
        out: &mut Actions<M>,
    ) {
        let Some(p) = self.book.get(idx) else { return };
        let (Some(lo), Some(hi)) = (lo, hi) else { return };
        let rejudge = match &p.state {
            PosState::Open => false,
            PosState::Closing(c) | PosState::CloseFailed(c) => {
                let blind = p.decision.is_some_and(|d| d.reason == CloseReason::Blind && dated > d.at);
                if !(blind && c.order == OrderPhase::Waiting) {
                    return;
                }
                true
            }
            PosState::Closed { .. } => return,
        };
        // Touch triggers. A long loses when the bid falls to its stop and wins when it rises to
        // its target; a short the other way round. A gap through both (possible within a
        // coalesced run) is labelled a stop: the close is the same, and the label must not
        // flatter the outcome.
        let (sl_hit, tp_hit) = match p.side {
            Side::Long => (p.stop_loss.map(|s| (lo <= s, s, lo)), p.take_profit.map(|t| (hi >= t, t, hi))),
            Side::Short => (p.stop_loss.map(|s| (hi >= s, s, hi)), p.take_profit.map(|t| (lo <= t, t, lo))),
        };
        let hit = match (sl_hit, tp_hit) {
            (Some((true, level, price)), _) => Some((CloseReason::StopLoss, level, price)),
            (_, Some((true, level, price))) => Some((CloseReason::TakeProfit, level, price)),
            _ => None,
        };
        match (hit, rejudge) {
            (Some((reason, level, price)), false) => {
                let d = Decision { reason, price: Some(price), source, age, level: Some(level), at: now };
                self.decide(idx, now, d, out);
            }
            (Some((reason, level, price)), true) => {
                // The flatten becomes a level close; that decision stands from now on.
                let d = Decision { reason, price: Some(price), source, age, level: Some(level), at: now };
                if let Some(p) = self.book.get_mut(idx) {
                    p.decision = Some(d);
                }
                self.stats.decisions += 1;
                out.notice(Notice::Decision { pos: idx, decision: d });
                self.place(idx, now, out);
            }
            (None, true) => {
                // Between the levels again and no order can be working: back to protection.
                if let Some(p) = self.book.get_mut(idx) {
                    p.state = PosState::Open;
                    p.decision = None;
                    p.blind_since = None;
                    p.blind_acted = false;
                }
                out.notice(Notice::Rejudged { pos: idx, price: lo });
            }
            (None, false) => {}
        }
    }

    /// Records a decision on an open position and sends its first attempt.
    fn decide(&mut self, idx: PosIdx, now: Timestamp, d: Decision, out: &mut Actions<M>) {
        let Some(p) = self.book.get_mut(idx) else { return };
        if p.state != PosState::Open {
            return;
        }
        p.decision = Some(d);
        // Number the attempts on from every order the position ever sent: a blind flatten
        // re-judged back to open has sent orders already, and a client id must never be
        // reused (the edge journals client ids and looks them up before any resend; a reused
        // id would match the flatten's old order instead of this close's new one).
        let attempt = p.attempts;
        p.state = PosState::Closing(Closing {
            attempt,
            client_id: ClientId::new(),
            sent_at: now,
            order: OrderPhase::Waiting,
            order_qty: Qty::ZERO,
            order_executed: Qty::ZERO,
            failures: 0,
            next_at: now,
        });
        self.stats.decisions += 1;
        out.notice(Notice::Decision { pos: idx, decision: d });
        self.place(idx, now, out);
    }

    /// Sends the next attempt of a closing position whose previous attempt is over.
    fn place(&mut self, idx: PosIdx, now: Timestamp, out: &mut Actions<M>) {
        let Some(p) = self.book.get_mut(idx) else { return };
        let remaining = p.remaining();
        let reason = p.decision.map_or(CloseReason::Emergency, |d| d.reason);
        let (id, generation, instrument, side) = (p.id.clone(), p.generation, p.instrument, p.side);
        let Some(c) = p.state.closing_mut() else { return };
        if c.order != OrderPhase::Waiting {
            return; // never a second order while one may be working
        }
        if !remaining.is_positive() {
            self.finish(idx, now, ClosedHow::Filled, out);
            return;
        }
        if !self.market_open {
            // The venue would reject it: hold the decided close until the market opens.
            if c.next_at != Timestamp::NEVER {
                c.next_at = Timestamp::NEVER;
                out.notice(Notice::HeldForMarket { pos: idx });
            }
            return;
        }
        if !c.client_id.is_empty() {
            p.prev_attempt = Some(super::book::PrevAttempt {
                client_id: c.client_id.clone(),
                order_qty: c.order_qty,
                executed: c.order_executed,
            });
        }
        c.attempt = c.attempt.saturating_add(1);
        p.attempts = c.attempt;
        c.client_id = client_id(generation, &id, c.attempt);
        c.sent_at = now;
        c.order = OrderPhase::Sent;
        c.order_qty = remaining;
        c.order_executed = Qty::ZERO;
        c.next_at = Timestamp::NEVER;
        let action = OrderAction::Place {
            pos: idx,
            client_id: c.client_id.clone(),
            instrument,
            side,
            qty: remaining,
            reason,
            attempt: c.attempt,
        };
        self.stats.orders_placed += 1;
        out.order(action);
    }

    /// A report that is not about the attempt in flight (see [`Engine::on_broker`]).
    fn late_report(&mut self, idx: PosIdx, now: Timestamp, report: &BrokerReport, out: &mut Actions<M>) {
        let (executed, price, working) = match report.outcome {
            Outcome::Filled { executed, price } | Outcome::PartiallyFilled { executed, price } => {
                (executed, price, false)
            }
            Outcome::Working { executed, price } => (executed, price, true),
            Outcome::Rejected | Outcome::Unknown => {
                out.notice(Notice::StrayReport { pos: idx });
                return;
            }
        };
        let Some(p) = self.book.get_mut(idx) else { return };
        let current = p.state.closing().is_some_and(|c| c.client_id == report.client_id);
        if current {
            // The attempt was concluded (absent or failed) and the next one is not sent yet:
            // take its fills, and if it is still working at the venue, wait for it again.
            self.stats.late_reports += 1;
            self.apply_fill(idx, executed, price, out);
            if working {
                let next = now + self.cfg.lookup_every;
                if let Some(c) = self.closing_mut(idx) {
                    c.order = OrderPhase::Working;
                    c.next_at = next;
                }
            } else if self.book.get(idx).is_some_and(|p| !p.remaining().is_positive()) {
                self.finish(idx, now, ClosedHow::Filled, out);
            }
            return;
        }
        let Some(prev) = p.prev_attempt.as_mut().filter(|a| a.client_id == report.client_id) else {
            out.notice(Notice::StrayReport { pos: idx });
            return;
        };
        let executed = executed.min(prev.order_qty);
        let delta = executed.saturating_sub(prev.executed);
        if !delta.is_positive() {
            return;
        }
        prev.executed = executed;
        self.stats.late_reports += 1;
        let remaining_before = p.remaining();
        let applied = delta.min(remaining_before);
        let excess = delta.saturating_sub(applied);
        p.filled = p.filled.checked_add(applied).unwrap_or(p.qty).min(p.qty);
        p.exit_notional += notional(price.unwrap_or(p.entry), applied);
        let remaining = p.remaining();
        let waiting = p.state.closing().is_some_and(|c| c.order == OrderPhase::Waiting);
        out.notice(Notice::Fill { pos: idx, qty: applied, price, remaining });
        if excess.is_positive() {
            // Both attempts executed: the venue sold more than the position. Loud; the
            // operator must buy the excess back.
            out.notice(Notice::Overfill { pos: idx, excess });
        }
        if waiting && !remaining.is_positive() {
            self.finish(idx, now, ClosedHow::Filled, out);
        }
    }

    /// Applies an attempt's cumulative executed quantity, clamped so that filled never
    /// exceeds the order or the position.
    fn apply_fill(&mut self, idx: PosIdx, executed: Qty, price: Option<Price>, out: &mut Actions<M>) {
        let Some(p) = self.book.get_mut(idx) else { return };
        let remaining_before = p.remaining();
        let entry = p.entry;
        let Some(c) = p.state.closing_mut() else { return };
        let executed = executed.min(c.order_qty);
        let delta = executed.saturating_sub(c.order_executed);
        if !delta.is_positive() {
            return;
        }
        let applied = delta.min(remaining_before);
        let excess = delta.saturating_sub(applied);
        c.order_executed = c.order_executed.checked_add(delta).unwrap_or(c.order_executed);
        p.filled = p.filled.checked_add(applied).unwrap_or(p.qty).min(p.qty);
        p.exit_notional += notional(price.unwrap_or(entry), applied);
        let remaining = p.remaining();
        out.notice(Notice::Fill { pos: idx, qty: applied, price, remaining });
        if excess.is_positive() {
            out.notice(Notice::Overfill { pos: idx, excess });
        }
    }

    fn attempt_failed(&mut self, idx: PosIdx, now: Timestamp, out: &mut Actions<M>) {
        let max_attempts = self.cfg.max_close_attempts.max(1);
        let retry_max = self.cfg.retry_max;
        let Some(p) = self.book.get_mut(idx) else { return };
        let Some(c) = p.state.closing_mut() else { return };
        c.failures = c.failures.saturating_add(1);
        c.order = OrderPhase::Waiting;
        let failures = c.failures;
        let attempt = c.attempt;
        self.stats.close_failures += 1;
        let newly_failed = failures >= max_attempts && matches!(p.state, PosState::Closing(_));
        let failed_for_good = failures >= max_attempts;
        if newly_failed {
            if let PosState::Closing(c) = core::mem::replace(&mut p.state, PosState::Open) {
                p.state = PosState::CloseFailed(c);
            }
            out.notice(Notice::CloseFailed { pos: idx, attempts: attempt });
        }
        let base = if failed_for_good {
            retry_max
        } else {
            let shift = u32::from(failures.saturating_sub(1)).min(30);
            self.cfg.retry_initial.saturating_mul(1u32 << shift).min(retry_max)
        };
        let j = self.cfg.jitter.clamp(0.0, 1.0);
        let delay = base.mul_f64(1.0 - j + 2.0 * j * self.rng.next_unit()).min(retry_max);
        if let Some(c) = self.closing_mut(idx) {
            c.next_at = now + delay;
        }
        out.notice(Notice::Retry { pos: idx, attempt, delay });
    }

    /// Ends a position: unlinks it, records closes, and says so.
    fn finish(&mut self, idx: PosIdx, now: Timestamp, how: ClosedHow, out: &mut Actions<M>) {
        self.unlink(idx);
        let Some(p) = self.book.get_mut(idx) else { return };
        let attempts = p.state.closing().map_or(0, |c| c.attempt);
        p.state = PosState::Closed { at: now, how };
        p.blind_since = None;
        if how == ClosedHow::Filled {
            self.stats.closes_done += 1;
        }
        if let (ClosedHow::Filled | ClosedHow::Resolved, Some(decision)) = (how, p.decision) {
            let rec = CloseRecord {
                id: p.id.clone(),
                instrument: p.instrument,
                side: p.side,
                qty: p.filled,
                entry: p.entry,
                decision,
                exit: p.avg_exit(),
                attempts,
                closed_at: now,
            };
            if self.recent.is_full() {
                self.recent.pop_front();
            }
            let _ = self.recent.push_back(rec);
        }
        out.notice(Notice::Closed { pos: idx, how });
    }

    /// Notes rung and band changes of an instrument with positions.
    fn note_instrument(&mut self, id: InstrumentId, now: Timestamp, out: &mut Actions<M>) {
        let rung = self.rung(id, now);
        let band = self.band(id, now);
        let age = self.cache.age(id, now);
        let Some(st) = self.inst.get_mut(usize::from(id.0)) else { return };
        if st.rung != rung {
            out.notice(Notice::Fallback { instrument: id, from: st.rung, to: rung, age });
            st.rung = rung;
        }
        if st.band != band {
            if let (Some(b), Some(a)) = (band, age) {
                // While the market is closed, prices ageing is normal: no stale warnings.
                if (st.band.is_some() || b != Band::Live) && (self.market_open || b == Band::Live) {
                    out.notice(Notice::Band { instrument: id, band: b, age: a });
                }
            }
            st.band = band;
        }
    }

    /// One pass over the book: per instrument rungs and bands (on a sweep), blindness and
    /// cached-price decisions (on a sweep), and due retries and look-ups (always).
    fn service_all(&mut self, now: Timestamp, sweep: bool, out: &mut Actions<M>) {
        for i in 0..self.book.slot_count() {
            let idx = PosIdx(i as u16);
            let Some(p) = self.book.get(idx) else { continue };
            if p.state.is_terminal() {
                continue;
            }
            if sweep {
                let inst = p.instrument;
                self.note_instrument(inst, now, out);
                self.sweep_blind(idx, now, out);
                // A position that just placed its blind flatten has its one action this call.
                if !out.orders.iter().any(|o| o.pos() == idx) {
                    self.judge_cached(idx, now, out);
                }
            }
            if out.orders.iter().any(|o| o.pos() == idx) {
                continue;
            }
            self.service_deadline(idx, now, out);
        }
        self.flush_dropped(out);
    }

    fn sweep_blind(&mut self, idx: PosIdx, now: Timestamp, out: &mut Actions<M>) {
        let Some(p) = self.book.get(idx) else { return };
        // A closed market has no prices to miss: nobody is blind until it opens. A position
        // with no usable price for `blind_grace` is blind whatever its rung says: a feed that
        // is up but never prices the instrument (unknown or delisted symbol), or a REST source
        // that answers for others only, leaves it as unwatched as a dead feed does.
        let unpriced = self.unpriced_since(idx, now).is_some_and(|t| now.since(t) >= self.cfg.blind_grace);
        let blind = self.market_open && (unpriced || self.rung(p.instrument, now) == Rung::Blind);
        let grace_end =
            |since: Timestamp| (since + self.cfg.blind_grace).max(self.boot + self.cfg.expire_after);
        let Some(p) = self.book.get_mut(idx) else { return };
        match (blind, p.blind_since) {
            (true, None) => {
                p.blind_since = Some(now);
                out.notice(Notice::Blind { pos: idx });
            }
            (true, Some(since)) if !p.blind_acted && now >= grace_end(since) => {
                p.blind_acted = true;
                let policy = p.blind_policy;
                out.notice(Notice::BlindPolicy { pos: idx, policy, blind_for: now.since(since) });
                if policy == BlindPolicy::Flatten && p.state == PosState::Open {
                    let d = Decision {
                        reason: CloseReason::Blind,
                        price: None,
                        source: PriceSource::None,
                        age: Duration::ZERO,
                        level: None,
                        at: now,
                    };
                    self.decide(idx, now, d, out);
                }
            }
            (false, Some(_)) => {
                p.blind_since = None;
                p.blind_acted = false;
                out.notice(Notice::BlindCleared { pos: idx });
            }
            _ => {}
        }
    }

    fn service_deadline(&mut self, idx: PosIdx, now: Timestamp, out: &mut Actions<M>) {
        let lookup_every = self.cfg.lookup_every;
        let Some(c) = self.closing_mut(idx) else { return };
        if now < c.next_at {
            return;
        }
        match c.order {
            OrderPhase::Waiting => self.place(idx, now, out),
            OrderPhase::Working | OrderPhase::Unknown => {
                // One look-up at a time: the next is due once this one reports (its report
                // sets the next deadline). Two overlapping look-ups could disagree (one
                // concluding "absent" while the other finds a fill) and a new attempt would
                // follow the first. The long deadline only covers a report that never comes.
                c.next_at = now + LOOKUP_OVERDUE.max(lookup_every);
                let a = OrderAction::Lookup { pos: idx, client_id: c.client_id.clone(), sent_at: c.sent_at };
                out.order(a);
            }
            OrderPhase::Sent => {}
        }
    }
}

/// `tg<generation base36>-<position id>-<attempt>`: at most 36 characters of `[A-Za-z0-9_-]`.
pub fn client_id(generation: u32, id: &str, attempt: u16) -> ClientId {
    let mut digits = [0u8; 7];
    let mut n = generation;
    let mut len = 0;
    loop {
        let d = (n % 36) as u8;
        digits[len] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        len += 1;
        n /= 36;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    let mut s = ClientId::new();
    let _ = s.push_str("tg");
    for &d in digits[..len].iter().rev() {
        let _ = s.push(char::from(d));
    }
    let _ = write!(s, "-{id}-{attempt}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_fit_the_venue_charset() {
        assert_eq!(client_id(1, "bosch", 1).as_str(), "tg1-bosch-1");
        assert_eq!(client_id(36, "a", 12).as_str(), "tg10-a-12");
        let long = client_id(u32::MAX, "abcdefghij0123456789", u16::MAX);
        assert!(long.len() <= 36, "{long}");
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
