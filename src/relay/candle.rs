//! Candles, sans-IO: keyed by `(exchange, symbol, interval, open_time)`, open or closed, with a
//! revision and the source they were built from.

use std::fmt;

/// A candle interval the relay serves (Binance's kline intervals up to a day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    /// One second (Binance spot's `1s` klines: quick bars for tests and scalping bots).
    S1,
    /// One minute.
    M1,
    /// Three minutes.
    M3,
    /// Five minutes.
    M5,
    /// Fifteen minutes.
    M15,
    /// Thirty minutes.
    M30,
    /// One hour.
    H1,
    /// Two hours.
    H2,
    /// Four hours.
    H4,
    /// One day (UTC).
    D1,
}

impl Interval {
    /// Every interval, shortest first.
    pub const ALL: [Interval; 10] = [
        Interval::S1,
        Interval::M1,
        Interval::M3,
        Interval::M5,
        Interval::M15,
        Interval::M30,
        Interval::H1,
        Interval::H2,
        Interval::H4,
        Interval::D1,
    ];
    /// The name clients and Binance use (`1m`, `1h`, `1d`).
    pub fn name(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M3 => "3m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::M30 => "30m",
            Interval::H1 => "1h",
            Interval::H2 => "2h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }
    /// From a name (`1m` ... `1d`).
    pub fn parse(s: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.name() == s)
    }
    /// Length in milliseconds.
    pub fn millis(self) -> i64 {
        const M: i64 = 60_000;
        match self {
            Interval::S1 => 1000,
            Interval::M1 => M,
            Interval::M3 => 3 * M,
            Interval::M5 => 5 * M,
            Interval::M15 => 15 * M,
            Interval::M30 => 30 * M,
            Interval::H1 => 60 * M,
            Interval::H2 => 120 * M,
            Interval::H4 => 240 * M,
            Interval::D1 => 1440 * M,
        }
    }
    /// The open time of the bar holding `t_ms` (Unix milliseconds).
    pub fn floor(self, t_ms: i64) -> i64 {
        t_ms - t_ms.rem_euclid(self.millis())
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

use std::collections::VecDeque;

use crate::core::price::{Price, Qty};
use crate::limits::{RELAY_HELD, RELAY_RING};

/// Most missing bars a live close fills in before it (each from what the relay holds, checked
/// by REST); a longer hole is announced as a gap.
pub const FILL_MAX: usize = 16;

/// Where a candle's values came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The venue's kline stream (`@kline_<i>`).
    Kline,
    /// Built by the relay from trades (Binance `@trade`, Upstox last traded prices): a kline
    /// that did not arrive in time, or a venue without one.
    Trades,
    /// The venue's REST candles (backfill or correction): authoritative for closed candles.
    Rest,
}

impl Source {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Source::Kline => "kline",
            Source::Trades => "trades",
            Source::Rest => "rest",
        }
    }
}

/// One candle of a series (the exchange, symbol and interval are the series').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candle {
    /// Open time, Unix milliseconds (the key within its series).
    pub open_time: i64,
    /// Open.
    pub open: Price,
    /// High.
    pub high: Price,
    /// Low.
    pub low: Price,
    /// Close (the last price while open).
    pub close: Price,
    /// Base volume.
    pub volume: Qty,
    /// Closed: final unless corrected with a higher revision.
    pub closed: bool,
    /// 1 for the first closed version; each correction adds one. 0 while open.
    pub revision: u32,
    /// Where the values came from.
    pub source: Source,
}

impl Candle {
    /// A candle of one price (a first trade, or a bar without trades at the last close).
    pub fn flat(open_time: i64, price: Price, volume: Qty, source: Source) -> Candle {
        Candle {
            open_time,
            open: price,
            high: price,
            low: price,
            close: price,
            volume,
            closed: false,
            revision: 0,
            source,
        }
    }
    /// Same prices and volume (what a correction changes).
    pub fn same_values(&self, o: &Candle) -> bool {
        (self.open, self.high, self.low, self.close, self.volume)
            == (o.open, o.high, o.low, o.close, o.volume)
    }
    fn add_trade(&mut self, price: Price, qty: Qty) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume = self.volume.checked_add(qty).unwrap_or(self.volume);
    }
}

/// What a series change means for the clients, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// The open bar changed (clients keep only the newest).
    Open(Candle),
    /// A bar closed (revision 1), in order of open time.
    Closed(Candle),
    /// A closed bar's values changed: the same open time with a higher revision.
    Corrected(Candle),
    /// Bars from `from` to `to` (open times, inclusive) are missing and will not come.
    Gap {
        /// First missing open time.
        from: i64,
        /// Last missing open time.
        to: i64,
    },
}

/// Counters of a series' filtering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeriesCounts {
    /// Closed candles received again with the same values (a kline after its backfill, a
    /// REST answer repeating what was sent): filtered, never sent twice.
    pub duplicates: u64,
    /// Trades older than the last closed bar (ignored).
    pub late_trades: u64,
    /// Bars closed by the clock from trades because their kline did not come in time.
    pub built: u64,
    /// Closed bars whose values REST changed.
    pub corrections: u64,
}

/// One symbol and interval: the open bar and a ring of closed bars, in open-time order.
///
/// Rules (each answers a peer's known failure):
/// - closed bars are appended in open-time order only, each at most once per revision;
///   a repeat with the same values is counted as a duplicate and dropped;
/// - a bar whose kline has not closed `close_delay` after its end is closed from trades
///   ([`Source::Trades`]) and marked for a REST check, which wins with a higher revision
///   when it differs;
/// - while a backfill runs ([`Series::begin_backfill`]), live closed bars are held and
///   released after the backfill's bars, so bars go out in order; a hole that neither
///   fills is announced as an [`Emit::Gap`], never left silent;
/// - a live closed bar never skips one: a bar missing before it (its kline lost) is closed
///   first from what the relay holds (trades, or flat at the last close), marked for the REST
///   check; a hole longer than [`FILL_MAX`] bars is announced as a gap instead.
#[derive(Debug)]
pub struct Series {
    interval: Interval,
    ring: VecDeque<Candle>,
    /// The open bar as the kline stream last gave it.
    kline: Option<Candle>,
    /// The open bar as built from trades.
    built: Option<Candle>,
    /// The bar before the open one: it ended, its closing kline has not come yet, and the
    /// clock closes it from what it holds once `close_delay` has passed (trades of the next
    /// bar often start before the previous bar's kline closes).
    prev: Option<Candle>,
    /// The last open time of a gap announced after the last closed bar: bars up to it are
    /// known missing, not to be filled.
    gap_to: Option<i64>,
    held: VecDeque<Candle>,
    backfilling: bool,
    /// Open times of bars closed from trades and not yet checked against REST.
    unchecked: u32,
    /// Counters.
    pub counts: SeriesCounts,
}

impl Series {
    /// An empty series (the ring's memory is taken now, once).
    pub fn new(interval: Interval) -> Series {
        Series {
            interval,
            ring: VecDeque::with_capacity(RELAY_RING),
            kline: None,
            built: None,
            prev: None,
            gap_to: None,
            held: VecDeque::with_capacity(RELAY_HELD),
            backfilling: false,
            unchecked: 0,
            counts: SeriesCounts::default(),
        }
    }
    /// The interval.
    pub fn interval(&self) -> Interval {
        self.interval
    }
    /// The last closed bar.
    pub fn last_closed(&self) -> Option<&Candle> {
        self.ring.back()
    }
    /// Closed bars held.
    pub fn len(&self) -> usize {
        self.ring.len()
    }
    /// True when no closed bar is held.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
    /// True while a backfill runs.
    pub fn backfilling(&self) -> bool {
        self.backfilling
    }
    /// True when bars closed from trades wait for a REST check.
    pub fn needs_check(&self) -> bool {
        self.unchecked > 0
    }
    /// The open bar (kline and trades merged), if any.
    pub fn open(&self) -> Option<Candle> {
        merge(self.kline, self.built)
    }
    /// The last `limit` closed bars, oldest first.
    pub fn snapshot(&self, limit: usize) -> impl Iterator<Item = &Candle> {
        self.ring.iter().skip(self.ring.len().saturating_sub(limit))
    }
    /// What a client holding every closed bar up to `cursor` (an open time) missed, oldest
    /// first: the closed bars after it, with a [`Emit::Gap`] wherever bars are missing (the
    /// ring no longer reaches back that far, or a hole announced during an outage).
    pub fn since(&self, cursor: i64, out: &mut Vec<Emit>) {
        let iv = self.interval.millis();
        let mut expect = cursor.saturating_add(iv);
        let start = self.ring.partition_point(|c| c.open_time <= cursor);
        for c in self.ring.range(start..) {
            if c.open_time > expect {
                out.push(Emit::Gap { from: expect, to: c.open_time - iv });
            }
            out.push(Emit::Closed(*c));
            expect = c.open_time + iv;
        }
    }

    /// Starts a backfill: live closed bars are held until [`Series::on_rest`] or
    /// [`Series::backfill_failed`].
    pub fn begin_backfill(&mut self) {
        self.backfilling = true;
    }

    /// The open time from which a backfill should ask (the bar after the last closed one), or
    /// `None` when the series has none yet (ask for the last `RELAY_RING` bars).
    pub fn backfill_from(&self) -> Option<i64> {
        self.ring.back().map(|c| c.open_time + self.interval.millis())
    }

    /// The open time of the last bar accounted for: the last closed one, or the end of a gap
    /// announced after it.
    fn covered(&self) -> Option<i64> {
        match (self.ring.back().map(|l| l.open_time), self.gap_to) {
            (Some(l), Some(g)) => Some(l.max(g)),
            (l, g) => l.or(g),
        }
    }

    /// The open bar `bar` begins: the one open before it (if older) becomes `prev`, and a
    /// `prev` still open from before that is closed now from what it holds.
    fn roll_to(&mut self, bar: i64, out: &mut Vec<Emit>) {
        let older = merge(self.kline.filter(|k| k.open_time < bar), self.built.filter(|b| b.open_time < bar));
        let Some(older) = older else { return };
        if self.kline.is_some_and(|k| k.open_time < bar) {
            self.kline = None;
        }
        if self.built.is_some_and(|b| b.open_time < bar) {
            self.built = None;
        }
        if let Some(p) = self.prev.take() {
            if p.open_time < older.open_time {
                self.close_built(p, out);
            }
        }
        self.prev = Some(older);
    }

    /// A kline from the stream (open update or closing).
    pub fn on_kline(&mut self, mut k: Candle, out: &mut Vec<Emit>) {
        k.source = Source::Kline;
        if self.ring.back().is_some_and(|l| k.open_time <= l.open_time) {
            if k.closed {
                self.correct(k, out);
            }
            return;
        }
        if !k.closed {
            if self.prev.is_some_and(|p| p.open_time == k.open_time) {
                // An update of the bar that just ended: it is `prev` now.
                if let Some(p) = &mut self.prev {
                    *p = merge(Some(k), self.built.filter(|b| b.open_time == k.open_time)).unwrap_or(k);
                }
                return;
            }
            self.roll_to(k.open_time, out);
            if self.kline.is_none_or(|o| o.open_time <= k.open_time) {
                self.kline = Some(k);
                if let Some(o) = self.open() {
                    out.push(Emit::Open(o));
                }
            }
            return;
        }
        k.revision = 1;
        if self.prev.is_some_and(|p| p.open_time <= k.open_time) {
            self.prev = None;
        }
        if self.kline.is_some_and(|o| o.open_time <= k.open_time) {
            self.kline = None;
        }
        if self.built.is_some_and(|o| o.open_time <= k.open_time) {
            self.built = None;
        }
        self.push_closed(k, out);
    }

    /// A trade at `t_ms`.
    pub fn on_trade(&mut self, price: Price, qty: Qty, t_ms: i64, out: &mut Vec<Emit>) {
        let bar = self.interval.floor(t_ms);
        if self.ring.back().is_some_and(|l| bar <= l.open_time)
            || self.held.back().is_some_and(|l| bar <= l.open_time)
        {
            self.counts.late_trades += 1;
            return;
        }
        if let Some(p) = &mut self.prev {
            if p.open_time == bar {
                // A late trade of the bar that just ended (within the build delay).
                p.add_trade(price, qty);
                return;
            }
            if bar < p.open_time {
                self.counts.late_trades += 1;
                return;
            }
        }
        self.roll_to(bar, out);
        match &mut self.built {
            Some(b) if b.open_time == bar => b.add_trade(price, qty),
            Some(b) if b.open_time > bar => {
                self.counts.late_trades += 1;
                return;
            }
            _ => self.built = Some(Candle::flat(bar, price, qty, Source::Trades)),
        }
        if let Some(o) = self.open() {
            out.push(Emit::Open(o));
        }
    }

    /// The clock: closes, from what the relay has, every bar that ended `close_delay` ago
    /// without its closing kline. `live` says the upstream is up (an outage is backfilled
    /// instead, and bars without any trade are only made up while it is live).
    pub fn on_clock(&mut self, now_ms: i64, close_delay_ms: i64, live: bool, out: &mut Vec<Emit>) {
        if self.backfilling || !live {
            return;
        }
        let iv = self.interval.millis();
        for _ in 0..FILL_MAX {
            let next = match self.covered() {
                Some(l) => l + iv,
                None => match [self.prev, self.kline, self.built].iter().flatten().map(|c| c.open_time).min()
                {
                    Some(t) => t,
                    None => return,
                },
            };
            if now_ms < next + iv + close_delay_ms {
                return;
            }
            let Some(c) = self.take_bar(next) else { return };
            self.close_built(c, out);
        }
    }

    /// What the relay holds of bar `t` (from `prev`, or the open bar), taken out; else a flat
    /// bar at the last close (the venue's own rule for a bar without trades). `None` when
    /// there is nothing to build it from.
    fn take_bar(&mut self, t: i64) -> Option<Candle> {
        if self.prev.is_some_and(|p| p.open_time < t) {
            self.prev = None;
        }
        if let Some(p) = self.prev.filter(|p| p.open_time == t) {
            self.prev = None;
            return Some(p);
        }
        let k = self.kline.filter(|k| k.open_time == t);
        let b = self.built.filter(|b| b.open_time == t);
        if let Some(m) = merge(k, b) {
            if k.is_some() {
                self.kline = None;
            }
            if b.is_some() {
                self.built = None;
            }
            return Some(m);
        }
        self.ring.back().map(|l| Candle::flat(t, l.close, Qty::ZERO, Source::Trades))
    }

    /// Closes a bar the relay built (no closing kline came): tagged `trades`, checked by REST.
    fn close_built(&mut self, mut c: Candle, out: &mut Vec<Emit>) {
        c.source = Source::Trades;
        c.closed = true;
        c.revision = 1;
        self.counts.built += 1;
        self.unchecked = self.unchecked.saturating_add(1);
        self.push_closed(c, out);
    }

    /// Closed bars from REST (oldest first; an unclosed last bar is skipped by the caller).
    /// New bars are appended in order, changed ones corrected, then the bars held during
    /// the backfill are released. `complete` says the answer reached the present (else the
    /// rest of the hole comes with the next call).
    pub fn on_rest(&mut self, candles: &[Candle], complete: bool, out: &mut Vec<Emit>) {
        for c in candles {
            let mut c = *c;
            c.source = Source::Rest;
            c.closed = true;
            if self.ring.back().is_some_and(|l| c.open_time <= l.open_time) {
                self.correct(c, out);
            } else {
                c.revision = 1;
                // REST's bars are the venue's record: appended as they come (Binance lists
                // every bar, traded or not).
                if self.prev.is_some_and(|p| p.open_time <= c.open_time) {
                    self.prev = None;
                }
                self.append(c, out);
            }
        }
        self.unchecked = 0;
        if complete {
            self.release_held(out);
        }
    }

    /// The backfill could not be done (the breaker opened, the venue refused): the hole up
    /// to the first held bar (or the open bar) is announced as a gap and the held bars go
    /// out.
    pub fn backfill_failed(&mut self, now_ms: i64, out: &mut Vec<Emit>) {
        let iv = self.interval.millis();
        if let Some(last) = self.ring.back().map(|c| c.open_time) {
            let next = self
                .held
                .front()
                .map(|h| h.open_time)
                .or_else(|| merge_oldest(self.kline, self.built).map(|o| o.open_time))
                .unwrap_or_else(|| self.interval.floor(now_ms));
            if next > last + iv {
                // The ring continues after the hole: announced now, and again to a client
                // resuming across it (`since`).
                out.push(Emit::Gap { from: last + iv, to: next - iv });
                self.gap_to = Some(next - iv);
            }
        }
        self.release_held(out);
    }

    fn release_held(&mut self, out: &mut Vec<Emit>) {
        self.backfilling = false;
        while let Some(h) = self.held.pop_front() {
            self.push_in_order(h, out);
        }
    }

    /// A closed bar from the stream or the clock.
    fn push_closed(&mut self, c: Candle, out: &mut Vec<Emit>) {
        if self.backfilling {
            if self.held.len() == RELAY_HELD {
                // Held bars are bounded: the oldest goes; its open time is then missing
                // unless the backfill brings it (announced as a gap if not).
                self.held.pop_front();
            }
            self.held.push_back(c);
            return;
        }
        self.push_in_order(c, out);
    }

    /// Appends a live closed bar after closing (or announcing) any bar missing before it.
    fn push_in_order(&mut self, c: Candle, out: &mut Vec<Emit>) {
        let iv = self.interval.millis();
        if self.ring.back().is_some_and(|l| c.open_time <= l.open_time) {
            self.correct(c, out);
            return;
        }
        let Some(last) = self.covered().filter(|l| *l < c.open_time) else {
            self.append(c, out);
            return;
        };
        let missing = (c.open_time - last) / iv - 1;
        if missing > FILL_MAX as i64 {
            out.push(Emit::Gap { from: last + iv, to: c.open_time - iv });
        } else {
            let mut t = last + iv;
            while t < c.open_time {
                if let Some(mut m) = self.take_bar(t) {
                    m.source = Source::Trades;
                    m.closed = true;
                    m.revision = 1;
                    self.counts.built += 1;
                    self.unchecked = self.unchecked.saturating_add(1);
                    self.append(m, out);
                }
                t += iv;
            }
        }
        self.append(c, out);
    }

    fn append(&mut self, c: Candle, out: &mut Vec<Emit>) {
        if self.gap_to.is_some_and(|g| c.open_time > g) {
            self.gap_to = None;
        }
        if self.ring.len() == RELAY_RING {
            self.ring.pop_front();
        }
        self.ring.push_back(c);
        out.push(Emit::Closed(c));
    }

    /// A closed bar at or before the last closed one: a duplicate, or a correction.
    fn correct(&mut self, mut c: Candle, out: &mut Vec<Emit>) {
        let Ok(i) = self.ring.binary_search_by_key(&c.open_time, |x| x.open_time) else {
            // Older than the ring, or inside a gap already announced: nothing to correct.
            self.counts.duplicates += 1;
            return;
        };
        let have = self.ring[i];
        if have.same_values(&c) {
            // A REST check re-reading bars it agrees with is no duplicate from the venue's
            // stream; only those are counted.
            if c.source != Source::Rest {
                self.counts.duplicates += 1;
            }
            return;
        }
        // A kline after its bar was closed from trades or corrected by REST: REST wins for
        // closed candles; a kline only corrects a bar built from trades.
        if c.source == Source::Kline && have.source != Source::Trades {
            self.counts.duplicates += 1;
            return;
        }
        c.closed = true;
        c.revision = have.revision + 1;
        self.ring[i] = c;
        self.counts.corrections += 1;
        out.push(Emit::Corrected(c));
    }
}

/// The open bar from the kline and the trades of the same bar: the kline's open, the widest
/// range, the newest close and the larger volume.
fn merge(k: Option<Candle>, b: Option<Candle>) -> Option<Candle> {
    match (k, b) {
        (Some(k), Some(b)) if k.open_time == b.open_time => Some(Candle {
            high: k.high.max(b.high),
            low: k.low.min(b.low),
            close: b.close,
            volume: k.volume.max(b.volume),
            ..k
        }),
        (Some(k), Some(b)) => Some(if k.open_time > b.open_time { k } else { b }),
        (k, b) => k.or(b),
    }
}

/// The older of the two open bars (the one the clock closes first).
fn merge_oldest(k: Option<Candle>, b: Option<Candle>) -> Option<Candle> {
    match (k, b) {
        (Some(k), Some(b)) if k.open_time == b.open_time => merge(Some(k), Some(b)),
        (Some(k), Some(b)) => Some(if k.open_time < b.open_time { k } else { b }),
        (k, b) => k.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: i64 = 60_000;

    fn p(x: i64) -> Price {
        Price::from_units(x * 100_000_000)
    }

    fn bar(t: i64, o: i64, h: i64, l: i64, c: i64, v: i64, closed: bool) -> Candle {
        Candle {
            open_time: t,
            open: p(o),
            high: p(h),
            low: p(l),
            close: p(c),
            volume: Qty::from_units(v * 100_000_000),
            closed,
            revision: 0,
            source: Source::Kline,
        }
    }

    fn closed(out: &[Emit]) -> Vec<(i64, u32, Source)> {
        out.iter()
            .filter_map(|e| match e {
                Emit::Closed(c) | Emit::Corrected(c) => Some((c.open_time, c.revision, c.source)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_closing_kline_closes_once_and_its_repeat_is_a_duplicate() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_kline(bar(0, 1, 2, 1, 2, 5, false), &mut out);
        assert!(matches!(out[0], Emit::Open(_)));
        out.clear();
        s.on_kline(bar(0, 1, 3, 1, 2, 6, true), &mut out);
        assert_eq!(closed(&out), [(0, 1, Source::Kline)]);
        out.clear();
        s.on_kline(bar(0, 1, 3, 1, 2, 6, true), &mut out);
        assert!(out.is_empty());
        assert_eq!(s.counts.duplicates, 1);
        assert!(s.open().is_none());
    }

    #[test]
    fn a_missing_kline_is_built_from_trades_then_corrected_by_rest() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_rest(&[bar(0, 1, 1, 1, 1, 1, true)], true, &mut out);
        out.clear();
        s.on_trade(p(10), Qty::from_units(1), IV + 5, &mut out);
        s.on_trade(p(12), Qty::from_units(1), IV + 9_000, &mut out);
        s.on_trade(p(9), Qty::from_units(1), IV + 50_000, &mut out);
        assert_eq!(out.iter().filter(|e| matches!(e, Emit::Open(_))).count(), 3);
        out.clear();
        // Not yet: the build delay runs.
        s.on_clock(2 * IV + 500, 1000, true, &mut out);
        assert!(out.is_empty());
        s.on_clock(2 * IV + 1000, 1000, true, &mut out);
        assert_eq!(closed(&out), [(IV, 1, Source::Trades)]);
        let Emit::Closed(c) = out[0] else { panic!("{out:?}") };
        assert_eq!((c.open, c.high, c.low, c.close), (p(10), p(12), p(9), p(9)));
        assert!(s.needs_check());
        out.clear();
        // REST differs (the true volume): a correction with a higher revision.
        s.on_rest(&[bar(IV, 10, 12, 9, 9, 30, true)], true, &mut out);
        assert_eq!(closed(&out), [(IV, 2, Source::Rest)]);
        assert!(!s.needs_check());
        out.clear();
        // The late kline agrees with REST: filtered.
        s.on_kline(bar(IV, 10, 12, 9, 9, 30, true), &mut out);
        assert!(out.is_empty());
        // A later kline that disagrees never overrides REST.
        s.on_kline(bar(IV, 10, 13, 9, 9, 30, true), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_bar_without_trades_closes_flat_at_the_last_close() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_rest(&[bar(0, 1, 2, 1, 7, 1, true)], true, &mut out);
        out.clear();
        s.on_clock(3 * IV + 10, 5, true, &mut out);
        assert_eq!(closed(&out), [(IV, 1, Source::Trades), (2 * IV, 1, Source::Trades)]);
        let Emit::Closed(c) = out[1] else { panic!() };
        assert_eq!((c.open, c.close, c.volume), (p(7), p(7), Qty::ZERO));
        // While the upstream is down nothing is made up: the outage is backfilled instead.
        let mut s = Series::new(Interval::M1);
        s.on_rest(&[bar(0, 1, 2, 1, 7, 1, true)], true, &mut out);
        out.clear();
        s.on_clock(3 * IV + 10, 5, false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn live_bars_wait_for_the_backfill_and_go_out_after_it_in_order() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_rest(&[bar(0, 1, 1, 1, 1, 1, true)], true, &mut out);
        out.clear();
        s.begin_backfill();
        assert_eq!(s.backfill_from(), Some(IV));
        s.on_kline(bar(3 * IV, 4, 4, 4, 4, 1, true), &mut out);
        assert!(closed(&out).is_empty(), "held while backfilling");
        s.on_rest(
            &[
                bar(IV, 2, 2, 2, 2, 1, true),
                bar(2 * IV, 3, 3, 3, 3, 1, true),
                bar(3 * IV, 4, 4, 4, 4, 1, true),
            ],
            true,
            &mut out,
        );
        assert_eq!(
            closed(&out),
            [(IV, 1, Source::Rest), (2 * IV, 1, Source::Rest), (3 * IV, 1, Source::Rest)]
        );
        assert_eq!(s.counts.duplicates, 1, "the held kline repeated REST's bar");
        assert!(!s.backfilling());
    }

    #[test]
    fn a_failed_backfill_announces_the_gap_then_releases_held_bars() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_rest(&[bar(0, 1, 1, 1, 1, 1, true)], true, &mut out);
        out.clear();
        s.begin_backfill();
        s.on_kline(bar(4 * IV, 5, 5, 5, 5, 1, true), &mut out);
        s.backfill_failed(5 * IV, &mut out);
        assert_eq!(out[0], Emit::Gap { from: IV, to: 3 * IV });
        assert_eq!(closed(&out), [(4 * IV, 1, Source::Kline)]);
        // A client resuming from before the hole is told of it again.
        let mut again = Vec::new();
        s.since(0, &mut again);
        assert_eq!(again[0], Emit::Gap { from: IV, to: 3 * IV });
        assert!(matches!(again[1], Emit::Closed(c) if c.open_time == 4 * IV));
        again.clear();
        s.since(4 * IV, &mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn snapshots_and_resumes_come_from_the_ring() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        let bars: Vec<Candle> = (0..10).map(|i| bar(i * IV, 1, 1, 1, 1, 1, true)).collect();
        s.on_rest(&bars, true, &mut out);
        let snap: Vec<i64> = s.snapshot(3).map(|c| c.open_time).collect();
        assert_eq!(snap, [7 * IV, 8 * IV, 9 * IV]);
        out.clear();
        s.since(6 * IV, &mut out);
        assert_eq!(closed(&out).iter().map(|c| c.0).collect::<Vec<_>>(), [7 * IV, 8 * IV, 9 * IV]);
        // The ring is bounded: the oldest bars go, and a resume from before them is a gap.
        let many: Vec<Candle> =
            (10..(RELAY_RING as i64 + 20)).map(|i| bar(i * IV, 1, 1, 1, 1, 1, true)).collect();
        s.on_rest(&many, true, &mut out);
        assert_eq!(s.len(), RELAY_RING);
        out.clear();
        s.since(0, &mut out);
        assert_eq!(out[0], Emit::Gap { from: IV, to: 19 * IV });
    }

    #[test]
    fn a_bar_whose_kline_never_closes_is_not_lost_when_the_next_one_trades_early() {
        let mut s = Series::new(Interval::M1);
        let mut out = Vec::new();
        s.on_rest(&[bar(0, 1, 1, 1, 1, 1, true)], true, &mut out);
        out.clear();
        // Bar 1 trades and gets kline updates, but its closing kline never comes.
        s.on_kline(bar(IV, 5, 5, 5, 5, 1, false), &mut out);
        s.on_trade(p(6), Qty::from_units(1), IV + 30_000, &mut out);
        // Bar 2 trades within the build delay of bar 1's end.
        s.on_trade(p(7), Qty::from_units(1), 2 * IV + 10, &mut out);
        s.on_kline(bar(2 * IV, 7, 7, 7, 7, 1, false), &mut out);
        // A late trade of bar 1 still counts for it.
        s.on_trade(p(4), Qty::from_units(1), IV + 59_000, &mut out);
        out.clear();
        s.on_clock(2 * IV + 1_000, 1_000, true, &mut out);
        let got = closed(&out);
        assert_eq!(got, [(IV, 1, Source::Trades)]);
        let Emit::Closed(c) = out[0] else { panic!() };
        assert_eq!((c.open, c.high, c.low, c.close), (p(5), p(6), p(4), p(4)));
        // Bar 2 is still open.
        assert_eq!(s.open().map(|o| o.open_time), Some(2 * IV));

        // And when bar 2's closing kline beats the clock to bar 1: bar 1 is closed first.
        let mut s = Series::new(Interval::M1);
        s.on_rest(&[bar(0, 1, 1, 1, 1, 1, true)], true, &mut out);
        out.clear();
        s.on_trade(p(6), Qty::from_units(1), IV + 30_000, &mut out);
        s.on_trade(p(7), Qty::from_units(1), 2 * IV + 10, &mut out);
        out.clear();
        s.on_kline(bar(2 * IV, 7, 8, 7, 8, 3, true), &mut out);
        assert_eq!(closed(&out), [(IV, 1, Source::Trades), (2 * IV, 1, Source::Kline)]);
        assert!(s.needs_check());
        // A hole too long to fill is announced.
        out.clear();
        s.on_kline(bar(100 * IV, 7, 8, 7, 8, 3, true), &mut out);
        assert_eq!(out[0], Emit::Gap { from: 3 * IV, to: 99 * IV });
    }
}
