//! Property tests of the engine over random sequences of ticks, timers, commands, feed events
//! and broker outcomes, on virtual time.
//!
//! A harness drives an `Engine<8, 8>` and a model venue: every `Place` becomes a venue order,
//! and broker outcomes are generated from the venue's view (an order executes only what it
//! asked for, and what executed cannot be un-executed), sometimes over-reported, sometimes
//! addressed to the wrong attempt. After every engine call it checks:
//!
//! - **one decision**: an open position never holds a usable cached price that touches one of
//!   its levels (so a crossed position is always decided), a tick that crosses an open
//!   position decides it in that very call, and a position never gets a second stop, target or
//!   emergency decision (a blind flatten may precede one, as the re-judging rule allows);
//! - **fills**: filled quantity never exceeds the position, equals the fills reported, and what
//!   the venue executed over all orders of a position never exceeds the position;
//! - **one order**: never two venue orders possibly working for one position, never a new order
//!   while one may work, at most one order action per position per call, client ids never
//!   reused, look-ups only for the order that may be working;
//! - **capacities**: a full book refuses a registration with `BookFull` and nothing is lost;
//!   no notice is dropped; `CloseFailed` only after `max_close_attempts` failures.
//!
//! Half of the cases put every position on one instrument, so one tick can cross all of them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use tickguard::core::CoreError;
use tickguard::core::book::{OrderPhase, PosState, PositionSpec};
use tickguard::core::engine::{
    Actions, BrokerReport, CloseTarget, Command, Engine, EngineConfig, FeedEvent, Notice, OrderAction,
    Outcome, Reply,
};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{
    BlindPolicy, ClientId, CloseReason, InstrumentId, PosIdx, PositionId, Quote, Side, Source, Symbol, Tick,
};

const M: usize = 8;
const T0: Timestamp = Timestamp::from_secs(10_000);
const SYMBOLS: [&str; 3] = ["A", "B", "C"];
const IDS: usize = 16;

/// Short thresholds so that staleness, expiry, blindness and retries all happen within a
/// couple of hundred steps.
fn config(rest_enabled: bool) -> EngineConfig {
    EngineConfig {
        stale_after: Duration::from_secs(3),
        expire_after: Duration::from_secs(30),
        blind_grace: Duration::from_secs(6),
        sweep_every: Duration::from_millis(500),
        max_close_attempts: 3,
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(8),
        jitter: 0.5,
        lookup_every: Duration::from_secs(1),
        rest_enabled,
        seed: 7,
        ..EngineConfig::default()
    }
}

/// A price on a small grid (90.00 + k/2) so that levels are touched often and exactly.
fn grid(k: u8) -> Price {
    Price::from_units(9_000_000_000 + i64::from(k) * 50_000_000)
}

// ----- operations ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct QuoteGen {
    bid: Option<u8>,
    spread: Option<u8>,
    last: Option<u8>,
}

#[derive(Clone, Debug)]
enum Op {
    /// Let time pass, calling `on_timer` at the engine's deadlines on the way.
    Advance(u64),
    /// Jump to the next deadline.
    Timer,
    /// A (possibly coalesced) tick, dated `age_ms` before now.
    Tick {
        sym: usize,
        run: Vec<QuoteGen>,
        source: Source,
        age_ms: u64,
    },
    Feed(u8, usize),
    Register {
        id: usize,
        sym: usize,
        long: bool,
        qty: u8,
        sl: Option<u8>,
        tp: Option<u8>,
        flatten: bool,
    },
    Modify {
        id: usize,
        sl: Option<Option<u8>>,
        tp: Option<Option<u8>>,
    },
    Close {
        id: usize,
        by_symbol: bool,
    },
    Resolve(usize),
    External(usize),
    Withdraw(usize),
    /// A broker outcome for a venue order (`pick` among those that may be working), or a
    /// stray report.
    Broker {
        pick: usize,
        kind: u8,
        frac: u8,
        stray: bool,
    },
}

/// A grid step for a price: mostly near the entry (20), sometimes anywhere.
fn price_step() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 14u8..=26, 1 => 0u8..=40]
}

fn quote_gen() -> impl Strategy<Value = QuoteGen> {
    (
        proptest::option::weighted(0.9, price_step()),
        proptest::option::weighted(0.9, 0u8..=3),
        proptest::option::weighted(0.5, price_step()),
    )
        .prop_map(|(bid, spread, last)| QuoteGen { bid, spread, last })
}

/// Stop and target for a side: mostly valid (a long's stop below the entry, its target above;
/// a short's the other way), sometimes anything (refused when inverted).
fn levels(long: bool) -> impl Strategy<Value = (Option<u8>, Option<u8>)> {
    let below = proptest::option::weighted(0.85, 4u8..=19);
    let above = proptest::option::weighted(0.85, 21u8..=36);
    let sane = (below, above).prop_map(move |(b, a)| if long { (b, a) } else { (a, b) });
    let any_level = || proptest::option::weighted(0.8, 0u8..=40);
    prop_oneof![9 => sane, 1 => (any_level(), any_level())]
}

/// How often each kind of operation comes up.
#[derive(Clone, Copy, Debug)]
struct Mix {
    advance_small: u32,
    advance_big: u32,
    tick: u32,
    feed: u32,
    register: u32,
    broker: u32,
    /// Weight of `Rejected` among broker outcomes (the others weigh 1 each).
    reject: u32,
    flatten: f64,
}

/// Everything, often.
const BUSY: Mix = Mix {
    advance_small: 5,
    advance_big: 1,
    tick: 8,
    feed: 3,
    register: 6,
    broker: 7,
    reject: 1,
    flatten: 0.5,
};

/// Few prices, long silences, the feed often down, venues rejecting: blindness, flattens,
/// re-judging, retries and `CloseFailed`.
const BLIND: Mix = Mix {
    advance_small: 3,
    advance_big: 3,
    tick: 2,
    feed: 3,
    register: 4,
    broker: 6,
    reject: 4,
    flatten: 0.9,
};

fn op(mix: Mix) -> impl Strategy<Value = Op> {
    let source = prop_oneof![
        7 => Just(Source::Live),
        2 => Just(Source::Rest),
        1 => Just(Source::Manual),
    ];
    let age = prop_oneof![6 => Just(0u64), 3 => 0u64..5_000, 1 => 0u64..40_000];
    let feed = prop_oneof![
        3 => Just(0u8),
        3 => Just(1u8),
        1 => Just(2u8),
        1 => Just(3u8),
        3 => Just(4u8),
    ];
    let register = (0..IDS, 0..SYMBOLS.len(), any::<bool>(), 1u8..=10, proptest::bool::weighted(mix.flatten))
        .prop_flat_map(|(id, sym, long, qty, flatten)| {
            levels(long).prop_map(move |(sl, tp)| Op::Register { id, sym, long, qty, sl, tp, flatten })
        });
    let kind = prop_oneof![
        1 => Just(0u8),
        1 => Just(1u8),
        1 => Just(2u8),
        mix.reject => Just(3u8),
        1 => Just(4u8),
        1 => Just(5u8),
    ];
    let any_level = || proptest::option::of(proptest::option::weighted(0.8, 0u8..=40));
    prop_oneof![
        mix.advance_small => (0u64..2_000).prop_map(Op::Advance),
        mix.advance_big => (2_000u64..45_000).prop_map(Op::Advance),
        1 => Just(Op::Timer),
        mix.tick => (0..SYMBOLS.len(), proptest::collection::vec(quote_gen(), 1..=3), source, age)
            .prop_map(|(sym, run, source, age_ms)| Op::Tick { sym, run, source, age_ms }),
        mix.feed => (feed, 0..SYMBOLS.len()).prop_map(|(k, s)| Op::Feed(k, s)),
        mix.register => register,
        1 => (0..IDS, any_level(), any_level()).prop_map(|(id, sl, tp)| Op::Modify { id, sl, tp }),
        1 => (0..IDS, any::<bool>()).prop_map(|(id, by_symbol)| Op::Close { id, by_symbol }),
        1 => (0..IDS).prop_map(Op::Resolve),
        1 => (0..IDS).prop_map(Op::External),
        1 => (0..IDS).prop_map(Op::Withdraw),
        mix.broker => (any::<usize>(), kind, any::<u8>(), proptest::bool::weighted(0.1))
            .prop_map(|(pick, kind, frac, stray)| Op::Broker { pick, kind, frac, stray }),
    ]
}

// ----- the harness --------------------------------------------------------------------------

/// A position's identity across slot reuse: its slot and its registration number.
type Key = (u16, u32);

#[derive(Debug, Default)]
struct Track {
    qty: Qty,
    fills: Qty,
    level_decisions: u32,
    closed: bool,
}

#[derive(Debug)]
struct VenueOrder {
    key: Key,
    pos: PosIdx,
    client_id: ClientId,
    qty: Qty,
    executed: Qty,
    done: bool,
}

/// A position as it was before a call.
#[derive(Clone, Debug)]
struct Snap {
    key: Key,
    state: PosState,
    blind_decision_at: Option<Timestamp>,
    instrument: InstrumentId,
    side: Side,
    sl: Option<Price>,
    tp: Option<Price>,
}

struct Harness {
    e: Engine<8, M>,
    out: Actions<M>,
    now: Timestamp,
    cfg: EngineConfig,
    one_instrument: bool,
    tracks: HashMap<Key, Track>,
    venue: Vec<VenueOrder>,
    client_ids: HashSet<ClientId>,
}

fn crosses(side: Side, sl: Option<Price>, tp: Option<Price>, lo: Price, hi: Price) -> bool {
    match side {
        Side::Long => sl.is_some_and(|s| lo <= s) || tp.is_some_and(|t| hi >= t),
        Side::Short => sl.is_some_and(|s| hi >= s) || tp.is_some_and(|t| lo <= t),
    }
}

/// The cache's rule, restated: dated later wins; on a tie a REST answer loses to a non-REST
/// price.
fn newer(q: &Quote, old: Option<&Quote>) -> bool {
    old.is_none_or(|o| {
        q.dated > o.dated || (q.dated == o.dated && !(q.source == Source::Rest && o.source != Source::Rest))
    })
}

impl Harness {
    fn new(rest_enabled: bool, one_instrument: bool) -> Self {
        let cfg = config(rest_enabled);
        Harness {
            e: Engine::new(cfg.clone(), T0),
            out: Actions::new(),
            now: T0,
            cfg,
            one_instrument,
            tracks: HashMap::new(),
            venue: Vec::new(),
            client_ids: HashSet::new(),
        }
    }

    fn symbol(&self, sym: usize) -> &'static str {
        if self.one_instrument { SYMBOLS[0] } else { SYMBOLS[sym % SYMBOLS.len()] }
    }

    fn id(i: usize) -> PositionId {
        PositionId::try_from(format!("p{i}").as_str()).expect("fits")
    }

    fn key_of(&self, pos: PosIdx) -> Option<Key> {
        self.e.book().get(pos).map(|p| (pos.0, p.generation))
    }

    fn snapshot(&self) -> HashMap<Key, Snap> {
        self.e
            .book()
            .iter()
            .map(|(idx, p)| {
                let key = (idx.0, p.generation);
                let blind_decision_at = p.decision.filter(|d| d.reason == CloseReason::Blind).map(|d| d.at);
                let snap = Snap {
                    key,
                    state: p.state.clone(),
                    blind_decision_at,
                    instrument: p.instrument,
                    side: p.side,
                    sl: p.stop_loss,
                    tp: p.take_profit,
                };
                (key, snap)
            })
            .collect()
    }

    fn live_orders(&self, key: Key) -> usize {
        self.venue.iter().filter(|o| o.key == key && !o.done).count()
    }

    fn executed_total(&self, key: Key) -> Qty {
        self.venue
            .iter()
            .filter(|o| o.key == key)
            .fold(Qty::ZERO, |a, o| a.checked_add(o.executed).expect("sum"))
    }

    // ----- one step ----------------------------------------------------------------------

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Advance(ms) => {
                let target = self.now + Duration::from_millis(*ms);
                // At most a few deadlines on the way, then one call at the target (the engine
                // may be called late).
                for _ in 0..4 {
                    let due = self.e.poll_timeout().max(self.now);
                    if due > target {
                        break;
                    }
                    self.now = due;
                    self.timer()?;
                }
                self.now = target;
                self.timer()
            }
            Op::Timer => {
                let due = self.e.poll_timeout().max(self.now);
                if due <= self.now + Duration::from_secs(120) {
                    self.now = due;
                }
                self.timer()
            }
            Op::Tick { sym, run, source, age_ms } => self.tick(*sym, run, *source, *age_ms),
            Op::Feed(kind, sym) => {
                let inst = self.e.cache().lookup(self.symbol(*sym));
                let ev = match (kind, inst) {
                    (0, _) => FeedEvent::SubscribedAll,
                    (1, _) => FeedEvent::Disconnected,
                    (2, Some(i)) => FeedEvent::Subscribed(i),
                    (3, Some(i)) => FeedEvent::RestOk(i),
                    (_, Some(i)) => FeedEvent::RestError(i),
                    (_, None) => return Ok(()),
                };
                let pre = self.snapshot();
                self.e.on_feed(self.now, ev, &mut self.out);
                self.check(&pre)
            }
            Op::Register { id, sym, long, qty, sl, tp, flatten } => {
                let spec = PositionSpec {
                    id: Self::id(*id),
                    symbol: Symbol::try_from(self.symbol(*sym)).expect("fits"),
                    side: if *long { Side::Long } else { Side::Short },
                    qty: Qty::from_units(i64::from(*qty) * 100_000_000),
                    entry: grid(20),
                    stop_loss: sl.map(grid),
                    take_profit: tp.map(grid),
                    blind_policy: if *flatten { BlindPolicy::Flatten } else { BlindPolicy::Alert },
                };
                self.register(spec)
            }
            Op::Modify { id, sl, tp } => {
                let cmd = Command::Modify {
                    id: Self::id(*id),
                    stop_loss: sl.map(|l| l.map(grid)),
                    take_profit: tp.map(|l| l.map(grid)),
                };
                self.command(cmd).map(|_| ())
            }
            Op::Close { id, by_symbol } => {
                let target = if *by_symbol {
                    CloseTarget::Symbol(Symbol::try_from(self.symbol(*id)).expect("fits"))
                } else {
                    CloseTarget::Id(Self::id(*id))
                };
                self.command(Command::Close { target, reason: CloseReason::Emergency }).map(|_| ())
            }
            Op::Resolve(id) => self.ending(Command::Resolve { id: Self::id(*id) }, *id),
            Op::External(id) => self.ending(Command::ClosedExternally { id: Self::id(*id) }, *id),
            Op::Withdraw(id) => self.ending(Command::Withdraw { id: Self::id(*id) }, *id),
            Op::Broker { pick, kind, frac, stray } => self.broker(*pick, *kind, *frac, *stray),
        }
    }

    fn timer(&mut self) -> Result<(), TestCaseError> {
        let pre = self.snapshot();
        self.e.on_timer(self.now, &mut self.out);
        self.check(&pre)
    }

    fn tick(
        &mut self,
        sym: usize,
        run: &[QuoteGen],
        source: Source,
        age_ms: u64,
    ) -> Result<(), TestCaseError> {
        let Some(inst) = self.e.cache().lookup(self.symbol(sym)) else {
            return Ok(());
        };
        let last_dated = self.now - Duration::from_millis(age_ms);
        let n = run.len() as u64;
        let mut tick: Option<Tick> = None;
        for (i, g) in run.iter().enumerate() {
            let bid = g.bid.map(grid);
            let q = Quote {
                bid,
                ask: match (g.bid, g.spread) {
                    (Some(b), Some(s)) => Some(grid(b.saturating_add(s))),
                    _ => g.spread.map(|s| grid(20u8.saturating_add(s))),
                },
                last: g.last.map(grid),
                source,
                exch_ts: None,
                dated: last_dated - Duration::from_nanos(n - 1 - i as u64),
            };
            match &mut tick {
                None => tick = Some(Tick::new(inst, q)),
                Some(t) => {
                    prop_assert!(t.coalesce(&q));
                }
            }
        }
        let Some(tick) = tick else { return Ok(()) };
        let pre = self.snapshot();
        let accepted = newer(&tick.quote, self.e.cache().quote(inst));
        let judged = accepted && self.now.since(tick.quote.dated) <= self.cfg.expire_after;
        self.e.on_tick(self.now, &tick, &mut self.out);
        self.check(&pre)?;
        if !judged {
            prop_assert!(self.out.is_empty(), "a superseded or expired tick acted: {:?}", self.out.notices);
            return Ok(());
        }
        // Every position on the instrument that the run crossed is decided in this call (or,
        // for a blind flatten that never reached the venue, re-judged).
        for s in pre.values().filter(|s| s.instrument == inst) {
            let (Some(lo), Some(hi)) = tick.extremes.range(s.side) else {
                continue;
            };
            let hit = crosses(s.side, s.sl, s.tp, lo, hi);
            let pos = PosIdx(s.key.0);
            let decided = self.out.notices.iter().any(
                |n| matches!(n, Notice::Decision { pos: p, decision } if *p == pos && decision.reason != CloseReason::Blind),
            );
            let rejudged =
                self.out.notices.iter().any(|n| matches!(n, Notice::Rejudged { pos: p, .. } if *p == pos));
            let waiting_flatten = s.blind_decision_at.is_some_and(|at| tick.quote.dated > at)
                && s.state.closing().is_some_and(|c| c.order == OrderPhase::Waiting);
            match (&s.state, hit) {
                (PosState::Open, true) => prop_assert!(decided, "crossed, not decided: {s:?}"),
                (PosState::Open, false) => prop_assert!(!decided && !rejudged),
                (_, true) if waiting_flatten => {
                    prop_assert!(decided, "flatten not converted: {s:?}")
                }
                (_, false) if waiting_flatten => {
                    prop_assert!(rejudged, "flatten not re-judged: {s:?}")
                }
                _ => prop_assert!(!decided && !rejudged, "{s:?} decided again"),
            }
        }
        Ok(())
    }

    fn register(&mut self, spec: PositionSpec) -> Result<(), TestCaseError> {
        let active = self.e.book().active();
        let known = self.e.book().find(&spec.id).is_some();
        let closed = self
            .e
            .book()
            .find(&spec.id)
            .and_then(|i| self.e.book().get(i))
            .is_some_and(|p| p.state.is_terminal());
        let valid = spec.validate().is_ok();
        let r = self.command(Command::Register(spec))?;
        match r {
            Err(CoreError::BookFull { capacity }) => {
                prop_assert_eq!(capacity, M);
                prop_assert_eq!(active, M, "BookFull with room");
            }
            Ok(Reply::Registered { existed: false, .. }) => {
                prop_assert!(active < M && !known && valid);
            }
            Ok(Reply::Registered { existed: true, .. }) | Err(CoreError::DuplicateId) => {
                prop_assert!(known && !closed)
            }
            // A closed id is never registered again (a retried registration must not sell twice).
            Err(CoreError::Closed) => prop_assert!(closed),
            Err(e) => prop_assert!(!valid, "valid spec refused: {e:?}"),
            Ok(other) => prop_assert!(false, "unexpected reply {other:?}"),
        }
        if valid && !known && active < M {
            prop_assert!(matches!(r, Ok(Reply::Registered { existed: false, .. })), "{r:?}");
        }
        let added = usize::from(matches!(r, Ok(Reply::Registered { existed: false, .. })));
        prop_assert_eq!(self.e.book().active(), active + added, "a registration lost a position");
        Ok(())
    }

    fn command(&mut self, cmd: Command) -> Result<Result<Reply, CoreError>, TestCaseError> {
        let pre = self.snapshot();
        let r = self.e.on_command(self.now, cmd, &mut self.out);
        self.check(&pre)?;
        Ok(r)
    }

    /// Resolve, ClosedExternally, Withdraw: accepted only when no order may be working.
    fn ending(&mut self, cmd: Command, id: usize) -> Result<(), TestCaseError> {
        let key = self.e.book().find(&Self::id(id)).and_then(|p| self.key_of(p));
        let r = self.command(cmd)?;
        if let (Ok(_), Some(key)) = (r, key) {
            prop_assert_eq!(self.live_orders(key), 0, "ended with an order working");
            prop_assert!(self.e.book().get(PosIdx(key.0)).is_some_and(|p| p.state.is_terminal()));
        }
        Ok(())
    }

    fn broker(&mut self, pick: usize, kind: u8, frac: u8, stray: bool) -> Result<(), TestCaseError> {
        let open: Vec<usize> = (0..self.venue.len()).filter(|&i| !self.venue[i].done).collect();
        if stray || open.is_empty() {
            // A report no attempt is waiting for: an old attempt's id, or a made-up one. An old
            // attempt's report tells the venue's truth (late answers are reconciled, so they
            // must not change what is already known); a made-up id claims a huge fill.
            let (pos, client_id, outcome) = match self.venue.iter().filter(|o| o.done).nth(pick % 7) {
                Some(o) if o.executed.is_positive() => (
                    o.pos,
                    o.client_id.clone(),
                    Outcome::PartiallyFilled { executed: o.executed, price: None },
                ),
                Some(o) => (o.pos, o.client_id.clone(), Outcome::Rejected),
                None => (
                    PosIdx((pick % M) as u16),
                    ClientId::try_from("tg0-nobody-1").expect("fits"),
                    Outcome::Filled { executed: Qty::from_units(1_000_000_000), price: None },
                ),
            };
            let before: Vec<_> = self.e.book().iter().map(|(_, p)| (p.state.clone(), p.filled)).collect();
            let pre = self.snapshot();
            let r = BrokerReport { pos, client_id, outcome, sent_at: None };
            self.e.on_broker(self.now, &r, &mut self.out);
            self.check(&pre)?;
            let after: Vec<_> = self.e.book().iter().map(|(_, p)| (p.state.clone(), p.filled)).collect();
            prop_assert_eq!(before, after, "a stray report changed the book");
            prop_assert!(self.out.orders.is_empty());
            return Ok(());
        }
        let i = open[pick % open.len()];
        let (q, e0) = (self.venue[i].qty, self.venue[i].executed);
        let part = Qty::from_units(q.units() * i64::from(frac) / 255).max(e0);
        let (outcome, executed, done) = match kind {
            0 => (Outcome::Filled { executed: q, price: Some(grid(10)) }, q, true),
            1 => (Outcome::PartiallyFilled { executed: part, price: Some(grid(11)) }, part, true),
            2 => (Outcome::Working { executed: part, price: None }, part, false),
            3 if e0.is_positive() => (Outcome::PartiallyFilled { executed: e0, price: None }, e0, true),
            3 => (Outcome::Rejected, Qty::ZERO, true),
            4 => (Outcome::Unknown, e0, false),
            // The adapter over-reports: the venue filled the order, the report says twice.
            _ => (Outcome::Filled { executed: Qty::from_units(q.units() * 2), price: None }, q, true),
        };
        let o = &mut self.venue[i];
        o.executed = executed;
        o.done = done;
        let r = BrokerReport { pos: o.pos, client_id: o.client_id.clone(), outcome, sent_at: None };
        let pre = self.snapshot();
        self.e.on_broker(self.now, &r, &mut self.out);
        prop_assert!(
            !self.out.notices.iter().any(|n| matches!(n, Notice::StrayReport { .. })),
            "the engine lost track of an order that may be working: {r:?}"
        );
        self.check(&pre)?;
        // An attempt over with nothing executed is a failure: it backs off (a Retry, no order
        // in the same call) instead of looping orders into a market that does not fill them.
        if done && !executed.is_positive() {
            let pos = r.pos;
            prop_assert!(
                self.out.notices.iter().any(|n| matches!(n, Notice::Retry { pos: p, .. } if *p == pos)),
                "no backoff after an attempt that executed nothing: {:?}",
                r
            );
            prop_assert!(!self.out.orders.iter().any(|o| o.pos() == pos), "resent at once: {:?}", r);
        }
        Ok(())
    }

    // ----- the invariants ----------------------------------------------------------------

    fn check(&mut self, pre: &HashMap<Key, Snap>) -> Result<(), TestCaseError> {
        let max_attempts = self.cfg.max_close_attempts;
        prop_assert_eq!(self.out.notices_dropped, 0);
        prop_assert_eq!(self.e.stats().notices_dropped, 0);
        prop_assert!(self.now >= T0);

        // New positions.
        for (idx, p) in self.e.book().iter() {
            let key = (idx.0, p.generation);
            self.tracks.entry(key).or_insert_with(|| Track { qty: p.qty, ..Track::default() });
        }

        // Notices.
        let notices = self.out.notices.clone();
        for n in &notices {
            match n {
                Notice::Fill { pos, qty, .. } => {
                    let key = self.key_of(*pos).expect("fill for a known position");
                    let t = self.tracks.get_mut(&key).expect("tracked");
                    t.fills = t.fills.checked_add(*qty).expect("sum");
                    prop_assert!(t.fills <= t.qty, "fills {:?} past the position {:?}", t.fills, t.qty);
                }
                Notice::Decision { pos, decision } => {
                    let key = self.key_of(*pos).expect("decision for a known position");
                    let before = pre.get(&key);
                    let was_open = before.is_none_or(|s| s.state == PosState::Open);
                    if decision.reason == CloseReason::Blind {
                        prop_assert!(was_open, "flatten decided on a closing position");
                        prop_assert!(decision.price.is_none());
                    } else {
                        let converted = before.is_some_and(|s| {
                            s.blind_decision_at.is_some()
                                && s.state.closing().is_some_and(|c| c.order == OrderPhase::Waiting)
                        });
                        prop_assert!(was_open || converted, "decided again: {before:?}");
                        let t = self.tracks.get_mut(&key).expect("tracked");
                        t.level_decisions += 1;
                        prop_assert_eq!(t.level_decisions, 1, "a second decision for {:?}", key);
                    }
                }
                Notice::Rejudged { pos, .. } => {
                    let key = self.key_of(*pos).expect("known");
                    let s = pre.get(&key).expect("existed before");
                    prop_assert!(s.blind_decision_at.is_some());
                    prop_assert!(s.state.closing().is_some_and(|c| c.order == OrderPhase::Waiting));
                    prop_assert_eq!(&self.e.book().get(*pos).expect("pos").state, &PosState::Open);
                }
                Notice::CloseFailed { pos, .. } => {
                    let c = self.e.book().get(*pos).and_then(|p| p.state.closing().cloned());
                    prop_assert!(c.is_some_and(|c| c.failures >= max_attempts));
                }
                _ => {}
            }
        }

        // Orders: one per position per call; a new order only when nothing may be working.
        let orders = self.out.orders.clone();
        let mut seen = HashSet::new();
        for o in &orders {
            prop_assert!(seen.insert(o.pos()), "two order actions for {:?} in one call", o.pos());
            let p = self.e.book().get(o.pos()).expect("order for a known position");
            let key = (o.pos().0, p.generation);
            match o {
                OrderAction::Place { client_id, qty, instrument, side, .. } => {
                    prop_assert_eq!(self.live_orders(key), 0, "a second order may be working");
                    prop_assert!(qty.is_positive());
                    prop_assert_eq!(*qty, p.remaining(), "not the remainder");
                    let total = self.executed_total(key).checked_add(*qty).expect("sum");
                    prop_assert!(total <= p.qty, "could close more than the position");
                    prop_assert_eq!((*instrument, *side), (p.instrument, p.side));
                    prop_assert!(self.client_ids.insert(client_id.clone()), "client id {} reused", client_id);
                    let c = p.state.closing().expect("closing");
                    prop_assert_eq!(c.order, OrderPhase::Sent);
                    prop_assert_eq!(&c.client_id, client_id);
                    self.venue.push(VenueOrder {
                        key,
                        pos: o.pos(),
                        client_id: client_id.clone(),
                        qty: *qty,
                        executed: Qty::ZERO,
                        done: false,
                    });
                }
                OrderAction::Lookup { client_id, .. } => {
                    let live: Vec<&VenueOrder> =
                        self.venue.iter().filter(|v| v.key == key && !v.done).collect();
                    prop_assert_eq!(live.len(), 1, "look-up with no order working");
                    prop_assert_eq!(&live[0].client_id, client_id);
                }
            }
        }

        // The book.
        for (idx, p) in self.e.book().iter() {
            let key = (idx.0, p.generation);
            prop_assert!(p.filled <= p.qty);
            prop_assert!(self.live_orders(key) <= 1);
            prop_assert!(self.executed_total(key) <= p.qty, "venue executed more than the position");
            let t = self.tracks.get_mut(&key).expect("tracked");
            prop_assert_eq!(t.fills, p.filled, "filled differs from the fills reported");
            if t.closed {
                prop_assert!(p.state.is_terminal(), "a closed position came back");
            }
            match &p.state {
                PosState::Closed { how, .. } => {
                    t.closed = true;
                    if *how == tickguard::core::book::ClosedHow::Filled {
                        prop_assert_eq!(p.filled, p.qty);
                    }
                    prop_assert_eq!(self.venue.iter().filter(|v| v.key == key && !v.done).count(), 0);
                }
                PosState::CloseFailed(c) => prop_assert!(c.failures >= max_attempts),
                PosState::Closing(c) => prop_assert!(c.failures < max_attempts),
                PosState::Open => {
                    prop_assert!(p.decision.is_none());
                    prop_assert_eq!(self.venue.iter().filter(|v| v.key == key && !v.done).count(), 0);
                    // Never an open position with a usable price touching its levels.
                    if let Some(q) = self.e.cache().quote(p.instrument) {
                        if self.now.since(q.dated) <= self.cfg.expire_after {
                            if let Some(price) = q.price_for(p.side) {
                                prop_assert!(
                                    !crosses(p.side, p.stop_loss, p.take_profit, price, price),
                                    "open position {} with a crossing usable price {:?}",
                                    p.id,
                                    q
                                );
                            }
                        }
                    }
                }
            }
            if let Some(c) = p.state.closing() {
                if c.order != OrderPhase::Waiting {
                    let live: Vec<&VenueOrder> =
                        self.venue.iter().filter(|v| v.key == key && !v.done).collect();
                    prop_assert_eq!(live.len(), 1, "order {:?} not at the venue", c.order);
                    prop_assert_eq!(&live[0].client_id, &c.client_id);
                } else {
                    prop_assert_eq!(self.live_orders(key), 0, "waiting while an order may work");
                }
            }
        }
        prop_assert!(self.e.book().active() <= M);
        Ok(())
    }
}

fn run(rest_enabled: bool, one_instrument: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut h = Harness::new(rest_enabled, one_instrument);
    for op in ops {
        h.apply(op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_safety_property(
        rest_enabled in any::<bool>(),
        one_instrument in any::<bool>(),
        ops in proptest::collection::vec(op(BUSY), 1..200),
    ) {
        run(rest_enabled, one_instrument, &ops)?;
    }

    #[test]
    fn random_blind_spells_keep_every_safety_property(
        rest_enabled in proptest::bool::weighted(0.3),
        one_instrument in any::<bool>(),
        ops in proptest::collection::vec(op(BLIND), 1..200),
    ) {
        run(rest_enabled, one_instrument, &ops)?;
    }
}
