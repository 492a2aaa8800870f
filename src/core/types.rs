//! Small domain types shared by the core and the edges.

use core::fmt;
use core::time::Duration;

use super::price::Price;
use super::time::Timestamp;
use crate::limits::{CLIENT_ID_MAX, POSITION_ID_MAX, SYMBOL_MAX};

/// An instrument symbol as the venue writes it (`BTCUSDT`, `BOSCHLTD`).
pub type Symbol = heapless::String<SYMBOL_MAX>;
/// A position id: 1 to 20 characters of `[A-Za-z0-9_-]`.
pub type PositionId = heapless::String<POSITION_ID_MAX>;
/// A broker client order id (`tg<gen>-<position>-<attempt>`).
pub type ClientId = heapless::String<CLIENT_ID_MAX>;

/// Index of an instrument in the price cache; stable for the life of the process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct InstrumentId(pub u16);

/// Index of a slot in the position book; stable while the position is in the book.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PosIdx(pub u16);

/// Long or short.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Side {
    /// Bought; closed by selling; judged on the bid.
    Long,
    /// Sold; closed by buying; judged on the ask.
    Short,
}

impl Side {
    /// Parses `long` / `short` (also `buy` / `sell`), in any case: the one side rule of every
    /// door (`core::spec`).
    pub fn parse(s: &str) -> Option<Side> {
        if ["long", "buy"].iter().any(|w| s.eq_ignore_ascii_case(w)) {
            Some(Side::Long)
        } else if ["short", "sell"].iter().any(|w| s.eq_ignore_ascii_case(w)) {
            Some(Side::Short)
        } else {
            None
        }
    }
    /// `long` or `short`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Long => "long",
            Side::Short => "short",
        }
    }
}

/// What a blind position does once `blind_grace` has passed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Hash)]
pub enum BlindPolicy {
    /// Alert loudly and keep waiting for a price (the default).
    #[default]
    Alert,
    /// Close the position at market without a price.
    Flatten,
}

impl BlindPolicy {
    /// Parses `alert` / `flatten`.
    pub fn parse(s: &str) -> Option<BlindPolicy> {
        match s {
            "alert" => Some(BlindPolicy::Alert),
            "flatten" => Some(BlindPolicy::Flatten),
            _ => None,
        }
    }
    /// `alert` or `flatten`.
    pub fn as_str(self) -> &'static str {
        match self {
            BlindPolicy::Alert => "alert",
            BlindPolicy::Flatten => "flatten",
        }
    }
}

/// Where a quote came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Source {
    /// The WebSocket feed; dated at receive time.
    Live,
    /// A REST last-price answer; dated at the request's send time.
    Rest,
    /// Entered by an operator.
    Manual,
}

impl Source {
    /// `live`, `rest` or `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Live => "live",
            Source::Rest => "rest",
            Source::Manual => "manual",
        }
    }
}

/// The rung of the fallback ladder (DESIGN.md §2) an instrument's price comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Rung {
    /// L1: the feed is connected and the instrument subscribed.
    Live,
    /// L2: the feed is down for it; REST polling is working.
    Rest,
    /// L3: no working source; the cached price is within `expire_after`.
    Cache,
    /// L4: no working source and no usable price.
    Blind,
}

impl Rung {
    /// `live`, `rest`, `cache` or `blind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Live => "live",
            Rung::Rest => "rest",
            Rung::Cache => "cache",
            Rung::Blind => "blind",
        }
    }
}

/// Age band of a price; one definition everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Band {
    /// Younger than `stale_after`.
    Live,
    /// From `stale_after` up to and including `expire_after`: usable, with a warning.
    Stale,
    /// Older than `expire_after`: never acted on.
    Expired,
}

impl Band {
    /// Classifies `age`.
    pub fn of(age: Duration, stale_after: Duration, expire_after: Duration) -> Band {
        if age < stale_after {
            Band::Live
        } else if age <= expire_after {
            Band::Stale
        } else {
            Band::Expired
        }
    }
    /// `live`, `stale` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Band::Live => "live",
            Band::Stale => "stale",
            Band::Expired => "expired",
        }
    }
}

/// How the price behind a decision reached it (the `source=` of `[SL]`/`[TP]` lines).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PriceSource {
    /// A live tick, or a cached live price while the feed is up and the price is young.
    Live,
    /// A REST answer.
    Rest,
    /// The cache, while no source is working or the price is stale.
    Cache,
    /// An operator-entered price.
    Manual,
    /// No price at all (blind flatten, emergency close without a usable price).
    None,
}

impl PriceSource {
    /// `live`, `rest`, `cache`, `manual` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Live => "live",
            PriceSource::Rest => "rest",
            PriceSource::Cache => "cache",
            PriceSource::Manual => "manual",
            PriceSource::None => "none",
        }
    }
}

/// Why a position is being closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CloseReason {
    /// The stop-loss was touched.
    StopLoss,
    /// The take-profit was touched.
    TakeProfit,
    /// An operator or the bot asked for it.
    Emergency,
    /// Blind past its grace with policy `flatten`.
    Blind,
}

impl CloseReason {
    /// `stop_loss`, `take_profit`, `emergency` or `blind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::StopLoss => "stop_loss",
            CloseReason::TakeProfit => "take_profit",
            CloseReason::Emergency => "emergency",
            CloseReason::Blind => "blind",
        }
    }
    /// The log tag of a decision for this reason.
    pub fn tag(self) -> &'static str {
        match self {
            CloseReason::StopLoss => "[SL]",
            CloseReason::TakeProfit => "[TP]",
            CloseReason::Emergency => "[CLOSE]",
            CloseReason::Blind => "[BLIND]",
        }
    }
}

/// A price quote as the cache holds it. Replaced as a whole by any quote dated later.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Quote {
    /// Best bid, if the source gives one.
    pub bid: Option<Price>,
    /// Best ask, if the source gives one.
    pub ask: Option<Price>,
    /// Last traded price, if the source gives one.
    pub last: Option<Price>,
    /// Where it came from.
    pub source: Source,
    /// The venue's own time for it (ms or µs since the Unix epoch, as the venue sends), if any.
    pub exch_ts: Option<i64>,
    /// When it is dated on the appliance's monotonic clock: receive time for live quotes,
    /// request send time for REST answers.
    pub dated: Timestamp,
}

impl Quote {
    /// The price a long is judged on: the bid, else the last.
    pub fn long_price(&self) -> Option<Price> {
        self.bid.or(self.last)
    }
    /// The price a short is judged on: the ask, else the last.
    pub fn short_price(&self) -> Option<Price> {
        self.ask.or(self.last)
    }
    /// The price `side` is judged on.
    pub fn price_for(&self, side: Side) -> Option<Price> {
        match side {
            Side::Long => self.long_price(),
            Side::Short => self.short_price(),
        }
    }
    /// True when a field is zero or negative (see [`Quote::sanitize`]).
    #[inline]
    pub fn has_unusable(&self) -> bool {
        self.bid.is_some_and(|p| !p.is_positive())
            || self.ask.is_some_and(|p| !p.is_positive())
            || self.last.is_some_and(|p| !p.is_positive())
    }
    /// Drops every zero or negative field; returns false when no price is left.
    pub fn sanitize(&mut self) -> bool {
        self.bid = usable(self.bid);
        self.ask = usable(self.ask);
        self.last = usable(self.last);
        self.bid.is_some() || self.ask.is_some() || self.last.is_some()
    }
    /// True when `self` should replace `older` in the cache: dated later, or dated at the same
    /// instant and not a REST answer over a live price (a REST price is dated at its send
    /// time, so on a tie the live price was received no earlier).
    pub fn supersedes(&self, older: &Quote) -> bool {
        self.dated > older.dated
            || (self.dated == older.dated && !(self.source == Source::Rest && older.source != Source::Rest))
    }
}

/// The lowest and highest judged prices for each side seen over a run of quotes that the
/// tick queue coalesced, so that a level touched between two engine turns is never missed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extremes {
    /// Lowest long-judged price (bid, else last).
    pub lo_long: Option<Price>,
    /// Highest long-judged price.
    pub hi_long: Option<Price>,
    /// Lowest short-judged price (ask, else last).
    pub lo_short: Option<Price>,
    /// Highest short-judged price.
    pub hi_short: Option<Price>,
}

/// A price the engine may judge on: a zero or negative one is no price (Binance sends `0`
/// for an empty book side; one bad field must not trigger every long stop).
#[inline]
fn usable(p: Option<Price>) -> Option<Price> {
    p.filter(|v| v.is_positive())
}

fn min_opt(a: Option<Price>, b: Option<Price>) -> Option<Price> {
    let b = usable(b);
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<Price>, b: Option<Price>) -> Option<Price> {
    let b = usable(b);
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

impl Extremes {
    /// The extremes of a single quote.
    pub fn of(q: &Quote) -> Extremes {
        let (l, s) = (usable(q.long_price()), usable(q.short_price()));
        Extremes { lo_long: l, hi_long: l, lo_short: s, hi_short: s }
    }
    /// Widens to include `q`.
    pub fn include(&mut self, q: &Quote) {
        let l = q.long_price();
        let s = q.short_price();
        self.lo_long = min_opt(self.lo_long, l);
        self.hi_long = max_opt(self.hi_long, l);
        self.lo_short = min_opt(self.lo_short, s);
        self.hi_short = max_opt(self.hi_short, s);
    }
    /// Widens to include another run's extremes.
    pub fn merge(&mut self, o: &Extremes) {
        self.lo_long = min_opt(self.lo_long, o.lo_long);
        self.hi_long = max_opt(self.hi_long, o.hi_long);
        self.lo_short = min_opt(self.lo_short, o.lo_short);
        self.hi_short = max_opt(self.hi_short, o.hi_short);
    }
    /// Lowest and highest price `side` was judged on.
    pub fn range(&self, side: Side) -> (Option<Price>, Option<Price>) {
        match side {
            Side::Long => (self.lo_long, self.hi_long),
            Side::Short => (self.lo_short, self.hi_short),
        }
    }
}

/// A tick for the engine: the newest quote of an instrument, and the extremes of every quote
/// coalesced into it since the engine last saw the instrument.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Tick {
    /// Which instrument.
    pub instrument: InstrumentId,
    /// The newest quote.
    pub quote: Quote,
    /// Extremes over the coalesced run (equal to the quote's own prices for a single tick).
    pub extremes: Extremes,
}

impl Tick {
    /// A tick of one quote.
    pub fn new(instrument: InstrumentId, quote: Quote) -> Tick {
        Tick { instrument, quote, extremes: Extremes::of(&quote) }
    }
    /// Folds a later quote of the same instrument into this tick. A quote dated before the
    /// held one is ignored (it would lose in the cache too) and `false` is returned.
    pub fn coalesce(&mut self, q: &Quote) -> bool {
        if !q.supersedes(&self.quote) {
            return false;
        }
        self.extremes.include(q);
        self.quote = *q;
        true
    }
    /// Folds a later tick of the same instrument (itself possibly coalesced) into this one;
    /// `false` when it is older than the held quote and was ignored.
    pub fn absorb(&mut self, later: &Tick) -> bool {
        if !later.quote.supersedes(&self.quote) {
            return false;
        }
        self.extremes.merge(&later.extremes);
        self.quote = later.quote;
        true
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
