//! Scenario tests of the sans-IO engine on explicit, virtual time (no sleeps).
//!
//! A small harness ([`Sim`]) owns an engine, a virtual clock and the action buffer; it can jump
//! the clock to the engine's next deadline ([`Engine::poll_timeout`]) and call `on_timer`
//! there, like the runtime does, in a bounded loop. Every test asserts on the returned actions
//! (orders, notices) and on the state of the book.
//!
//! The tests are grouped by the bullets: every rung of the fallback ladder, the age
//! bands at their exact boundaries, long and short on bid and ask with touch triggers, gaps
//! past both levels, a late REST answer losing to a newer live tick, partial fills, working
//! orders never duplicated, unknown outcomes, blind `alert` versus `flatten`, the blind grace
//! at start-up, retries and `CloseFailed`, and the seed incident (BOSCHLTD) itself.

use core::time::Duration;

use tickguard::core::CoreError;
use tickguard::core::book::{ClosedHow, Decision, OrderPhase, PosState, PositionSpec};
use tickguard::core::engine::{
    Actions, Alarm, BrokerReport, CloseTarget, Command, Engine, EngineConfig, FeedEvent, Notice, OrderAction,
    Outcome, Reply,
};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{
    Band, BlindPolicy, ClientId, CloseReason, InstrumentId, PosIdx, PositionId, PriceSource, Quote, Rung,
    Side, Source, Symbol, Tick,
};

// ----- harness ---------------------------------------------------------------------------

/// Boot time of every engine here: far enough from zero that "dated 400 s ago" exists.
const T0: Timestamp = Timestamp::from_secs(10_000);
const NS: Duration = Duration::from_nanos(1);

fn s(secs: u64) -> Timestamp {
    T0 + Duration::from_secs(secs)
}
fn ms(millis: u64) -> Timestamp {
    T0 + Duration::from_millis(millis)
}
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
fn px(v: &str) -> Price {
    Price::parse(v).expect("valid price")
}
fn qty(v: &str) -> Qty {
    Qty::parse(v).expect("valid quantity")
}

/// The default settings with the jitter off, so that retry delays are exact.
fn cfg() -> EngineConfig {
    EngineConfig { jitter: 0.0, ..EngineConfig::default() }
}

/// Settings whose sweep runs on every `on_timer` call, for tests that probe a boundary one
/// nanosecond on each side.
fn cfg_every_call() -> EngineConfig {
    EngineConfig { sweep_every: NS, ..cfg() }
}

#[allow(clippy::too_many_arguments)]
fn spec(
    id: &str,
    symbol: &str,
    side: Side,
    q: &str,
    entry: &str,
    sl: Option<&str>,
    tp: Option<&str>,
    policy: BlindPolicy,
) -> PositionSpec {
    PositionSpec {
        id: PositionId::try_from(id).expect("id fits"),
        symbol: Symbol::try_from(symbol).expect("symbol fits"),
        side,
        qty: qty(q),
        entry: px(entry),
        stop_loss: sl.map(px),
        take_profit: tp.map(px),
        blind_policy: policy,
    }
}

fn long(id: &str, symbol: &str, sl: Option<&str>, tp: Option<&str>) -> PositionSpec {
    spec(id, symbol, Side::Long, "10", "100", sl, tp, BlindPolicy::Alert)
}

fn short(id: &str, symbol: &str, sl: Option<&str>, tp: Option<&str>) -> PositionSpec {
    spec(id, symbol, Side::Short, "10", "100", sl, tp, BlindPolicy::Alert)
}

fn quote(
    bid: Option<&str>,
    ask: Option<&str>,
    last: Option<&str>,
    source: Source,
    dated: Timestamp,
) -> Quote {
    Quote { bid: bid.map(px), ask: ask.map(px), last: last.map(px), source, exch_ts: None, dated }
}

/// What one engine call (or one run of timer calls) returned.
#[derive(Debug, Default)]
struct Step {
    orders: Vec<OrderAction>,
    notices: Vec<Notice>,
}

/// The fields of a `Place` order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    pos: PosIdx,
    client_id: ClientId,
    qty: Qty,
    reason: CloseReason,
    attempt: u16,
    side: Side,
}

impl Step {
    fn absorb<const M: usize>(&mut self, out: &Actions<M>) {
        self.orders.extend(out.orders.iter().cloned());
        self.notices.extend(out.notices.iter().copied());
    }
    fn places(&self) -> Vec<Placed> {
        self.orders
            .iter()
            .filter_map(|o| match o {
                OrderAction::Place { pos, client_id, qty, reason, attempt, side, .. } => Some(Placed {
                    pos: *pos,
                    client_id: client_id.clone(),
                    qty: *qty,
                    reason: *reason,
                    attempt: *attempt,
                    side: *side,
                }),
                OrderAction::Lookup { .. } => None,
            })
            .collect()
    }
    fn place(&self, pos: PosIdx) -> Option<Placed> {
        let all: Vec<Placed> = self.places().into_iter().filter(|p| p.pos == pos).collect();
        assert!(all.len() <= 1, "two orders for one position in one call: {all:?}");
        all.into_iter().next()
    }
    fn lookups(&self, pos: PosIdx) -> usize {
        self.orders.iter().filter(|o| matches!(o, OrderAction::Lookup { pos: p, .. } if *p == pos)).count()
    }
    fn decisions(&self, pos: PosIdx) -> Vec<Decision> {
        self.notices
            .iter()
            .filter_map(|n| match n {
                Notice::Decision { pos: p, decision } if *p == pos => Some(*decision),
                _ => None,
            })
            .collect()
    }
    fn decision(&self, pos: PosIdx) -> Option<Decision> {
        let all = self.decisions(pos);
        assert!(all.len() <= 1, "two decisions in one call: {all:?}");
        all.into_iter().next()
    }
    fn is_empty_step(&self) -> bool {
        self.orders.is_empty() && self.notices.is_empty()
    }
    fn has(&self, n: &Notice) -> bool {
        self.notices.contains(n)
    }
    fn count(&self, pred: impl Fn(&Notice) -> bool) -> usize {
        self.notices.iter().filter(|n| pred(n)).count()
    }
}

/// An engine on a virtual clock.
struct Sim<const N: usize, const M: usize> {
    e: Engine<N, M>,
    now: Timestamp,
    out: Actions<M>,
}

type Sim8 = Sim<8, 8>;

impl<const N: usize, const M: usize> Sim<N, M> {
    fn new(cfg: EngineConfig) -> Self {
        Sim { e: Engine::new(cfg, T0), now: T0, out: Actions::new() }
    }

    /// Moves the clock (never backwards) without calling the engine.
    fn at(&mut self, t: Timestamp) -> &mut Self {
        assert!(t >= self.now, "time went backwards: {t:?} < {:?}", self.now);
        self.now = t;
        self
    }

    fn step(&self) -> Step {
        let mut st = Step::default();
        st.absorb(&self.out);
        assert_eq!(self.out.notices_dropped, 0, "notices dropped");
        st
    }

    fn tick(&mut self, inst: InstrumentId, q: Quote) -> Step {
        self.tick_run(Tick::new(inst, q))
    }

    fn tick_run(&mut self, t: Tick) -> Step {
        self.e.on_tick(self.now, &t, &mut self.out);
        self.step()
    }

    /// A live bid/ask tick received now.
    fn live(&mut self, inst: InstrumentId, bid: &str, ask: &str) -> Step {
        let q = quote(Some(bid), Some(ask), None, Source::Live, self.now);
        self.tick(inst, q)
    }

    /// A live last-price-only tick received now.
    fn live_last(&mut self, inst: InstrumentId, last: &str) -> Step {
        let q = quote(None, None, Some(last), Source::Live, self.now);
        self.tick(inst, q)
    }

    /// A REST last-price answer to a request sent at `sent_at`, arriving now.
    fn rest(&mut self, inst: InstrumentId, last: &str, sent_at: Timestamp) -> Step {
        let q = quote(None, None, Some(last), Source::Rest, sent_at);
        self.tick(inst, q)
    }

    fn feed(&mut self, ev: FeedEvent) -> Step {
        self.e.on_feed(self.now, ev, &mut self.out);
        self.step()
    }

    fn cmd(&mut self, c: Command) -> (Result<Reply, CoreError>, Step) {
        let r = self.e.on_command(self.now, c, &mut self.out);
        (r, self.step())
    }

    fn register(&mut self, sp: PositionSpec) -> PosIdx {
        match self.cmd(Command::Register(sp)).0 {
            Ok(Reply::Registered { pos, .. }) => pos,
            other => panic!("register failed: {other:?}"),
        }
    }

    fn modify_sl(&mut self, id: &str, sl: &str) -> (Result<Reply, CoreError>, Step) {
        self.cmd(Command::Modify {
            id: PositionId::try_from(id).expect("id"),
            stop_loss: Some(Some(px(sl))),
            take_profit: None,
        })
    }

    fn inst(&self, symbol: &str) -> InstrumentId {
        self.e.cache().lookup(symbol).expect("known symbol")
    }

    /// A broker report for the position's current attempt.
    fn broker(&mut self, pos: PosIdx, outcome: Outcome) -> Step {
        let client_id = self.closing(pos).client_id.clone();
        self.broker_as(pos, client_id, outcome)
    }

    fn broker_as(&mut self, pos: PosIdx, client_id: ClientId, outcome: Outcome) -> Step {
        let r = BrokerReport { pos, client_id, outcome, sent_at: None };
        self.e.on_broker(self.now, &r, &mut self.out);
        self.step()
    }

    /// One `on_timer` call now.
    fn timer(&mut self) -> Step {
        self.e.on_timer(self.now, &mut self.out);
        self.step()
    }

    /// Jumps from deadline to deadline up to `until` (inclusive), calling `on_timer` at each,
    /// then leaves the clock at `until`. Bounded: panics if the engine keeps asking.
    fn run_until(&mut self, until: Timestamp) -> Step {
        let mut all = Step::default();
        for _ in 0..100_000 {
            let due = self.e.poll_timeout().max(self.now);
            if due > until {
                self.now = until;
                return all;
            }
            self.now = due;
            self.e.on_timer(self.now, &mut self.out);
            assert_eq!(self.out.notices_dropped, 0, "notices dropped");
            all.absorb(&self.out);
            assert!(self.e.poll_timeout() > self.now, "on_timer left work due at {:?}", self.now);
        }
        panic!("run_until did not reach {until:?}");
    }

    fn state(&self, pos: PosIdx) -> &PosState {
        &self.e.book().get(pos).expect("position").state
    }

    fn closing(&self, pos: PosIdx) -> &tickguard::core::book::Closing {
        self.state(pos).closing().expect("closing or close_failed")
    }

    fn filled(&self, pos: PosIdx) -> Qty {
        self.e.book().get(pos).expect("position").filled
    }
}

fn filled(executed: &str, price: &str) -> Outcome {
    Outcome::Filled { executed: qty(executed), price: Some(px(price)) }
}
fn partial(executed: &str, price: &str) -> Outcome {
    Outcome::PartiallyFilled { executed: qty(executed), price: Some(px(price)) }
}
fn working(executed: &str) -> Outcome {
    Outcome::Working { executed: qty(executed), price: None }
}

fn is_blind_notice(n: &Notice) -> bool {
    matches!(n, Notice::Blind { .. })
}
fn is_blind_policy(n: &Notice) -> bool {
    matches!(n, Notice::BlindPolicy { .. })
}

// ----- L1..L4: every rung of the ladder ----------------------------------------------------

#[test]
fn l1_live_tick_touching_the_stop_closes_at_once_with_source_live() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "BTCUSDT", Some("95"), Some("110")));
    let x = sim.inst("BTCUSDT");
    assert!(sim.feed(FeedEvent::SubscribedAll).is_empty_step());
    assert_eq!(sim.e.rung(x, sim.now), Rung::Live);

    sim.at(s(1));
    let st = sim.live(x, "95.01", "95.02");
    assert!(st.orders.is_empty() && st.decisions(pos).is_empty());
    assert_eq!(sim.state(pos), &PosState::Open);

    sim.at(s(2));
    let st = sim.live(x, "95.00", "95.10");
    let d = st.decision(pos).expect("decided on the tick");
    assert_eq!(
        d,
        Decision {
            reason: CloseReason::StopLoss,
            price: Some(px("95")),
            source: PriceSource::Live,
            age: Duration::ZERO,
            level: Some(px("95")),
            at: s(2),
        }
    );
    assert_eq!(
        st.orders,
        vec![OrderAction::Place {
            pos,
            client_id: ClientId::try_from("tg1-p1-1").expect("fits"),
            instrument: x,
            side: Side::Long,
            qty: qty("10"),
            reason: CloseReason::StopLoss,
            attempt: 1,
        }]
    );
    let c = sim.closing(pos);
    assert_eq!((c.attempt, c.sent_at, c.order), (1, s(2), OrderPhase::Sent));
    assert_eq!(sim.e.stats().decisions, 1);
    assert_eq!(sim.e.stats().orders_placed, 1);
}

#[test]
fn l2_rest_answer_closes_while_the_feed_is_down_with_source_rest() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg() });
    let pos = sim.register(long("p1", "BOSCHLTD", Some("698.25"), None));
    let x = sim.inst("BOSCHLTD");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    sim.live(x, "740", "740.5");

    sim.at(s(5));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Live,
        to: Rung::Rest,
        age: Some(secs(4)),
    }));
    assert_eq!(sim.e.rung(x, sim.now), Rung::Rest);

    // The REST request went out at 6 s; its answer arrives at 6.2 s and is dated 6 s.
    sim.at(ms(6_200));
    let st = sim.rest(x, "698.25", s(6));
    let d = st.decision(pos).expect("REST price touching the stop decides");
    assert_eq!(d.reason, CloseReason::StopLoss);
    assert_eq!(d.source, PriceSource::Rest);
    assert_eq!(d.age, Duration::from_millis(200));
    assert_eq!(d.price, Some(px("698.25")));
    assert_eq!(st.place(pos).expect("order").qty, qty("10"));
}

#[test]
fn l3_cached_price_closes_when_no_source_works_with_source_cache() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(10));
    sim.live(x, "95", "95.5");
    sim.at(s(12));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Live,
        to: Rung::Cache,
        age: Some(secs(2)),
    }));
    // Young price, but the live rung is not the acting one: the label is `cache`.
    sim.at(s(15));
    let (r, st) = sim.modify_sl("p1", "95");
    assert_eq!(r, Ok(Reply::Done { pos }));
    let d = st.decision(pos).expect("cached price touching the new stop decides");
    assert_eq!(
        (d.reason, d.source, d.age, d.price, d.level),
        (CloseReason::StopLoss, PriceSource::Cache, secs(5), Some(px("95")), Some(px("95")))
    );
    assert!(st.place(pos).is_some());
}

#[test]
fn l4_blind_needs_no_usable_price_and_no_working_source() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg_every_call() });
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    sim.live(x, "100", "100.5");
    sim.at(s(2));
    sim.feed(FeedEvent::Disconnected);
    // REST's first answer gets `stale_after` (30 s) from the drop.
    assert_eq!(sim.e.rung(x, sim.now), Rung::Rest);

    // REST pricing every 20 s: working, way past the live price's expiry, never blind.
    let mut t = 20;
    while t <= 1_000 {
        sim.at(s(t));
        sim.rest(x, "100", s(t));
        let st = sim.timer();
        assert_eq!(st.count(is_blind_notice), 0, "at {t} s");
        assert_eq!(sim.e.rung(x, sim.now), Rung::Rest, "at {t} s");
        t += 20;
    }

    // Two consecutive REST errors: still working.
    sim.feed(FeedEvent::RestError(x));
    let st = sim.feed(FeedEvent::RestError(x));
    assert_eq!(st.count(is_blind_notice), 0);
    // An answer resets the count.
    sim.feed(FeedEvent::RestOk(x));
    sim.feed(FeedEvent::RestError(x));
    let st = sim.feed(FeedEvent::RestError(x));
    assert_eq!(st.count(is_blind_notice), 0);
    assert!(sim.e.rest_working(x, sim.now));
    // The third consecutive error: no working source; the price (its age is 0 s) is usable.
    let st = sim.feed(FeedEvent::RestError(x));
    assert!(!sim.e.rest_working(x, sim.now));
    assert_eq!(sim.e.rung(x, sim.now), Rung::Cache);
    assert_eq!(st.count(is_blind_notice), 0);
    // The price expires: no source, no usable price: blind.
    sim.at(s(1_301));
    let st = sim.timer();
    assert_eq!(sim.e.rung(x, sim.now), Rung::Blind);
    assert!(st.has(&Notice::Blind { pos }));
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Cache,
        to: Rung::Blind,
        age: Some(secs(301))
    }));
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);

    // A source that prices again clears it.
    sim.at(s(1_302));
    sim.feed(FeedEvent::RestOk(x));
    sim.rest(x, "100", s(1_302));
    let st = sim.timer();
    assert!(st.has(&Notice::BlindCleared { pos }));
    assert_eq!(sim.e.rung(x, sim.now), Rung::Rest);
}

#[test]
fn rest_that_answers_but_never_prices_an_instrument_is_not_working_for_it() {
    // Defect 3 in the core: a REST source that answers (RestOk) but never carries this
    // instrument's price must not keep it on rung `rest` with no price for ever.
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg_every_call() });
    let pos = sim.register(long("p1", "DELISTED", Some("90"), None));
    let x = sim.inst("DELISTED");
    sim.at(s(1));
    sim.feed(FeedEvent::RestOk(x));
    assert_eq!(sim.e.rung(x, sim.now), Rung::Rest, "the first answer gets stale_after");
    sim.at(s(31));
    sim.feed(FeedEvent::RestOk(x));
    let st = sim.timer();
    assert_eq!(sim.e.rung(x, sim.now), Rung::Blind);
    assert!(st.has(&Notice::Blind { pos }) || sim.e.book().get(pos).is_some_and(|p| p.blind_since.is_some()));
}

#[test]
fn quiet_instrument_on_a_healthy_feed_is_stale_then_blind_once_its_price_expires() {
    // A subscribed instrument that stops pricing is stale after `stale_after` and, once its
    // price expires, has no usable price: blind after `blind_grace` more, whatever the feed's
    // state (the invariant: every open position has a usable price or is blind).
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(spec("p1", "QUIET", Side::Long, "1", "100", Some("90"), None, BlindPolicy::Alert));
    let x = sim.inst("QUIET");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    sim.live(x, "100", "100.5");
    let st = sim.run_until(s(300));
    assert_eq!(st.count(is_blind_notice), 0);
    assert!(st.has(&Notice::Band { instrument: x, band: Band::Stale, age: secs(30) }));
    assert_eq!(sim.e.rung(x, sim.now), Rung::Live);
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Stale);
    // Expired after 301 s; blind `blind_grace` (60 s) later, within one sweep.
    let st = sim.run_until(s(360));
    assert_eq!(st.count(is_blind_notice), 0);
    let st = sim.run_until(s(362));
    assert!(st.has(&Notice::Blind { pos }));
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);
    assert!(st.orders.is_empty(), "policy alert: nothing sent");
    assert_eq!(sim.state(pos), &PosState::Open);
}

#[test]
fn ladder_walks_down_and_back_up_with_fallback_notices() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg() });
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.live(x, "100", "100.5");

    sim.at(s(1));
    sim.feed(FeedEvent::Disconnected);
    for _ in 0..3 {
        sim.feed(FeedEvent::RestError(x));
    }
    assert_eq!(sim.e.rung(x, sim.now), Rung::Cache);
    // The rung changes from cache to blind when the price expires; the sweep says so.
    let st = sim.run_until(s(301));
    let rungs: Vec<(Rung, Rung)> = st
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::Fallback { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(rungs, vec![(Rung::Cache, Rung::Blind)]);
    assert_eq!(st.count(|n| *n == Notice::Blind { pos }), 1);

    sim.at(s(302));
    let st = sim.feed(FeedEvent::SubscribedAll);
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Blind,
        to: Rung::Live,
        age: Some(secs(302)),
    }));
    assert!(st.has(&Notice::BlindCleared { pos }));
}

// ----- age bands at their exact boundaries -------------------------------------------------

#[test]
fn age_bands_and_rungs_at_their_exact_boundaries() {
    let mut sim = Sim8::new(cfg());
    sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.at(s(100));
    sim.live(x, "100", "100.5");
    let dated = s(100);
    let band = |sim: &Sim8, t: Timestamp| sim.e.band(x, t);
    let rung = |sim: &Sim8, t: Timestamp| sim.e.rung(x, t);
    assert_eq!(band(&sim, dated), Some(Band::Live));
    assert_eq!(band(&sim, dated + secs(30) - NS), Some(Band::Live));
    assert_eq!(band(&sim, dated + secs(30)), Some(Band::Stale));
    assert_eq!(band(&sim, dated + secs(300)), Some(Band::Stale));
    assert_eq!(band(&sim, dated + secs(300) + NS), Some(Band::Expired));
    // Feed down and no REST: the cache rung up to and including expire_after, then blind.
    assert_eq!(rung(&sim, dated + secs(300)), Rung::Cache);
    assert_eq!(rung(&sim, dated + secs(300) + NS), Rung::Blind);
}

#[test]
fn band_notices_fire_at_exactly_stale_after_and_just_past_expire_after() {
    let mut sim = Sim8::new(cfg_every_call());
    sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(100));
    sim.live(x, "100", "100.5");
    let band_notices = |st: &Step| st.count(|n| matches!(n, Notice::Band { .. }));

    sim.at(s(130) - NS);
    assert_eq!(band_notices(&sim.timer()), 0);
    sim.at(s(130));
    let st = sim.timer();
    assert!(st.has(&Notice::Band { instrument: x, band: Band::Stale, age: secs(30) }));
    sim.at(s(400));
    assert_eq!(band_notices(&sim.timer()), 0);
    sim.at(s(400) + NS);
    let st = sim.timer();
    assert!(st.has(&Notice::Band { instrument: x, band: Band::Expired, age: secs(300) + NS }));
}

#[test]
fn cached_price_acts_at_exactly_expire_after_and_not_one_nanosecond_later() {
    let mut sim = Sim8::new(cfg());
    let a = sim.register(long("a", "X", Some("90"), None));
    let b = sim.register(long("b", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(10));
    sim.live(x, "95", "95.5");
    sim.at(s(11));
    sim.feed(FeedEvent::Disconnected);

    sim.at(s(310));
    let (_, st) = sim.modify_sl("a", "96");
    let d = st.decision(a).expect("a 300 s old price is still usable");
    assert_eq!((d.age, d.source), (secs(300), PriceSource::Cache));

    sim.at(s(310) + NS);
    let (r, st) = sim.modify_sl("b", "96");
    assert_eq!(r, Ok(Reply::Done { pos: b }));
    assert!(st.decisions(b).is_empty(), "an expired price is never acted on");
    assert_eq!(sim.state(b), &PosState::Open);
}

#[test]
fn tick_older_than_expire_after_is_cached_but_never_acted_on() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg() });
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.at(s(1_000));
    // A REST answer whose request went out 300 s and 1 ns ago.
    let st = sim.rest(x, "80", s(700) - NS);
    assert!(st.decisions(pos).is_empty() && st.orders.is_empty());
    assert_eq!(sim.e.cache().quote(x).and_then(|q| q.last), Some(px("80")));
    // Exactly 300 s old: acted on.
    let st = sim.rest(x, "80", s(700));
    let d = st.decision(pos).expect("300 s is within expire_after");
    assert_eq!((d.age, d.source), (secs(300), PriceSource::Rest));
}

#[test]
fn decision_label_is_cache_unless_the_rung_own_source_is_live_and_young() {
    // Decisions made on the cache (command or timer) say `live` only while the live rung acts
    // and the price is younger than stale_after; `rest` likewise; otherwise `cache`.
    let label = |feed_up: bool, rest: bool, src: Source, age: u64| {
        let mut sim = Sim8::new(EngineConfig { rest_enabled: rest, ..cfg() });
        let pos = sim.register(long("p1", "X", Some("90"), None));
        let x = sim.inst("X");
        sim.feed(FeedEvent::SubscribedAll);
        sim.at(s(10));
        sim.tick(x, quote(Some("95"), Some("95.5"), None, src, s(10)));
        if !feed_up {
            sim.feed(FeedEvent::Disconnected);
        }
        sim.at(s(10 + age));
        let (_, st) = sim.modify_sl("p1", "95");
        st.decision(pos).expect("decided").source
    };
    assert_eq!(label(true, false, Source::Live, 0), PriceSource::Live);
    assert_eq!(label(true, false, Source::Live, 29), PriceSource::Live);
    assert_eq!(label(true, false, Source::Live, 30), PriceSource::Cache);
    assert_eq!(label(false, false, Source::Live, 1), PriceSource::Cache);
    assert_eq!(label(false, true, Source::Rest, 1), PriceSource::Rest);
    assert_eq!(label(false, true, Source::Rest, 30), PriceSource::Cache);
    assert_eq!(label(false, true, Source::Live, 1), PriceSource::Cache);
    assert_eq!(label(true, true, Source::Rest, 1), PriceSource::Cache);
    assert_eq!(label(false, false, Source::Manual, 100), PriceSource::Manual);
}

// ----- long and short, bid and ask, touch --------------------------------------------------

#[test]
fn long_is_judged_on_the_bid_and_triggers_on_touch() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "X", Some("100"), Some("110")));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    // Ask and last at the stop, bid a cent above: nothing.
    let st = sim.tick(x, quote(Some("100.01"), Some("100"), Some("99"), Source::Live, sim.now));
    assert!(st.decisions(pos).is_empty());
    // Ask at the target, bid below it: nothing.
    sim.at(s(1));
    let st = sim.live(x, "109.99", "110");
    assert!(st.decisions(pos).is_empty());
    // Bid touching the target: take profit.
    sim.at(s(2));
    let st = sim.live(x, "110", "110.01");
    let d = st.decision(pos).expect("touch triggers");
    assert_eq!((d.reason, d.price, d.level), (CloseReason::TakeProfit, Some(px("110")), Some(px("110"))));
    assert_eq!(st.place(pos).expect("order").side, Side::Long);
}

#[test]
fn short_is_judged_on_the_ask_and_triggers_on_touch() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(short("s1", "X", Some("110"), Some("100")));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    // Bid at the stop, ask a cent below: nothing.
    let st = sim.live(x, "110", "109.99");
    assert!(st.decisions(pos).is_empty());
    // Bid at the target, ask a cent above: nothing.
    sim.at(s(1));
    let st = sim.live(x, "100", "100.01");
    assert!(st.decisions(pos).is_empty());
    // Ask touching the stop.
    sim.at(s(2));
    let st = sim.live(x, "109.5", "110");
    let d = st.decision(pos).expect("touch triggers");
    assert_eq!((d.reason, d.price, d.level), (CloseReason::StopLoss, Some(px("110")), Some(px("110"))));
    assert_eq!(st.place(pos).expect("order").side, Side::Short);
}

#[test]
fn short_take_profit_touched_on_the_ask() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(short("s1", "X", Some("110"), Some("100")));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    let st = sim.live(x, "99.5", "100");
    let d = st.decision(pos).expect("ask at the target");
    assert_eq!(d.reason, CloseReason::TakeProfit);
}

#[test]
fn missing_bid_or_ask_falls_back_to_the_last_price() {
    let mut sim = Sim8::new(cfg());
    let l = sim.register(long("l", "X", Some("100"), None));
    let sh = sim.register(short("sh", "X", Some("120"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    // Only an ask (no last): the long has no price at all; the short is judged on the ask.
    let st = sim.tick(x, quote(None, Some("99"), None, Source::Live, sim.now));
    assert!(st.decisions(l).is_empty() && st.decisions(sh).is_empty());
    // Ask present and last at the long's stop: the long falls back to last.
    sim.at(s(1));
    let st = sim.tick(x, quote(None, Some("119"), Some("100"), Source::Live, sim.now));
    assert_eq!(st.decision(l).map(|d| (d.reason, d.price)), Some((CloseReason::StopLoss, Some(px("100")))));
    assert!(st.decisions(sh).is_empty(), "the short uses its ask, 119");
    // No ask: the short falls back to last.
    sim.at(s(2));
    let st = sim.live_last(x, "120");
    assert_eq!(st.decision(sh).map(|d| (d.reason, d.price)), Some((CloseReason::StopLoss, Some(px("120")))));
}

#[test]
fn gap_past_both_levels_closes_once_labelled_stop_loss() {
    let mut sim = Sim8::new(cfg());
    let l = sim.register(long("l", "X", Some("95"), Some("105")));
    let sh = sim.register(short("sh", "X", Some("105"), Some("95")));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.live(x, "100", "100.1");
    // A coalesced run: the bid ran from 80 to 120 and the ask with it, ending at 100.
    let mut run = Tick::new(x, quote(Some("80"), Some("80.1"), None, Source::Live, ms(1)));
    assert!(run.coalesce(&quote(Some("120"), Some("120.1"), None, Source::Live, ms(2))));
    assert!(run.coalesce(&quote(Some("100"), Some("100.1"), None, Source::Live, ms(3))));
    sim.at(ms(3));
    let st = sim.tick_run(run);
    let dl = st.decision(l).expect("long decided");
    let ds = st.decision(sh).expect("short decided");
    // Crossing both: a stop, at the adverse extreme, never flattered as a take-profit.
    assert_eq!((dl.reason, dl.price, dl.level), (CloseReason::StopLoss, Some(px("80")), Some(px("95"))));
    assert_eq!((ds.reason, ds.price, ds.level), (CloseReason::StopLoss, Some(px("120.1")), Some(px("105"))));
    assert_eq!(st.places().len(), 2);
    // A later tick changes nothing: the decisions stand, no second order.
    sim.at(ms(4));
    let st = sim.live(x, "50", "50.1");
    assert!(st.notices.iter().all(|n| !matches!(n, Notice::Decision { .. })));
    assert!(st.orders.is_empty());
}

#[test]
fn coalesced_run_that_touched_the_stop_and_recovered_still_closes() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("l", "X", Some("95"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    let mut run = Tick::new(x, quote(Some("96"), Some("96.1"), None, Source::Live, ms(1)));
    run.coalesce(&quote(Some("95"), Some("95.1"), None, Source::Live, ms(2)));
    run.coalesce(&quote(Some("97"), Some("97.1"), None, Source::Live, ms(3)));
    sim.at(ms(5));
    let st = sim.tick_run(run);
    let d = st.decision(pos).expect("the dip is not missed");
    assert_eq!((d.price, d.age), (Some(px("95")), Duration::from_millis(2)));
}

#[test]
fn gap_crossing_every_position_on_one_instrument_loses_nothing() {
    // Eight positions, all on one instrument, fill the book; one tick crosses all of them.
    let mut sim = Sim8::new(cfg());
    let mut all = Vec::new();
    for i in 0..8 {
        let id = format!("p{i}");
        let sp = if i % 2 == 0 {
            long(&id, "X", Some("95"), None)
        } else {
            short(&id, "X", Some("130"), Some("96"))
        };
        all.push(sim.register(sp));
    }
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    assert_eq!(
        sim.cmd(Command::Register(long("p8", "X", Some("95"), None))).0,
        Err(CoreError::BookFull { capacity: 8 })
    );
    sim.at(s(1));
    let st = sim.live(x, "90", "90.05");
    assert_eq!(st.places().len(), 8, "an order for every position");
    for &p in &all {
        assert!(st.decision(p).is_some());
        assert!(st.place(p).is_some());
        assert!(matches!(sim.state(p), PosState::Closing(_)));
    }
}

#[test]
fn gap_crossing_every_position_of_a_full_size_book_on_one_instrument() {
    use tickguard::limits::{MAX_INSTRUMENTS, MAX_POSITIONS};
    type Big = Sim<MAX_INSTRUMENTS, MAX_POSITIONS>;
    let mut sim: Box<Big> = Box::new(Sim::new(cfg()));
    for i in 0..MAX_POSITIONS {
        sim.register(long(&format!("p{i}"), "ONE", Some("95"), None));
    }
    let x = sim.inst("ONE");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    let st = sim.live(x, "10", "10.5");
    assert_eq!(st.places().len(), MAX_POSITIONS);
    assert_eq!(st.count(|n| matches!(n, Notice::Decision { .. })), MAX_POSITIONS);
    assert_eq!(sim.e.stats().notices_dropped, 0);
}

// ----- a late REST answer loses to a newer live tick ---------------------------------------

#[test]
fn late_rest_answer_loses_to_a_newer_live_tick() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg() });
    let pos = sim.register(long("p1", "X", Some("100"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    // REST request sent at 9 s; a live tick arrives at 10 s; the REST answer (a crossing
    // price) arrives at 11 s, dated at its send time.
    sim.at(s(10));
    sim.live(x, "105", "105.1");
    sim.at(s(11));
    let st = sim.rest(x, "95", s(9));
    assert!(st.is_empty_step(), "superseded: no judgement");
    assert_eq!(sim.e.cache().quote(x).map(|q| q.source), Some(Source::Live));
    assert_eq!(sim.e.stats().ticks_superseded, 1);
    // Sent at the very instant the live tick arrived: the live price still wins.
    let st = sim.rest(x, "95", s(10));
    assert!(st.is_empty_step());
    assert_eq!(sim.e.stats().ticks_superseded, 2);
    assert_eq!(sim.state(pos), &PosState::Open);
    // Sent after the live tick: it is the newest price, and it is acted on.
    let st = sim.rest(x, "95", s(10) + NS);
    let d = st.decision(pos).expect("newer REST price acts");
    assert_eq!(d.source, PriceSource::Rest);
    assert_eq!(sim.e.cache().quote(x).map(|q| q.source), Some(Source::Rest));
}

#[test]
fn cached_quote_is_replaced_as_a_whole() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.live(x, "100", "100.5");
    sim.at(s(1));
    // A later quote with only a last price: the old bid is gone with the rest of the quote.
    sim.live_last(x, "95");
    let q = sim.e.cache().quote(x).copied().expect("quote");
    assert_eq!((q.bid, q.ask, q.last), (None, None, Some(px("95"))));
    // So a stop moved to 95 now judges the long on last (95), not on the old bid (100).
    let (_, st) = sim.modify_sl("p1", "95");
    assert_eq!(st.decision(pos).map(|d| d.price), Some(Some(px("95"))));
}

// ----- the close state machine: fills, working, unknown, retries ---------------------------

/// A feed-up engine with one long (qty 10, stop 95) already decided at 1 s.
fn decided(cfg: EngineConfig) -> (Sim8, PosIdx) {
    let mut sim = Sim8::new(cfg);
    let pos = sim.register(long("p1", "X", Some("95"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    let st = sim.live(x, "94", "94.1");
    assert!(st.place(pos).is_some());
    (sim, pos)
}

#[test]
fn partial_fills_send_the_remainder_never_the_full_quantity_again() {
    let (mut sim, pos) = decided(cfg());
    sim.at(ms(1_100));
    let st = sim.broker(pos, partial("4", "94"));
    assert!(st.has(&Notice::Fill { pos, qty: qty("4"), price: Some(px("94")), remaining: qty("6") }));
    let p2 = st.place(pos).expect("the remainder goes at once");
    assert_eq!((p2.qty, p2.attempt), (qty("6"), 2));
    assert_eq!(p2.client_id.as_str(), "tg1-p1-2");
    assert_eq!(sim.filled(pos), qty("4"));
    // Working with part done, then the rest.
    sim.at(ms(1_200));
    let st = sim.broker(pos, Outcome::Working { executed: qty("2"), price: Some(px("93")) });
    assert!(st.orders.is_empty());
    assert_eq!(sim.filled(pos), qty("6"));
    sim.at(ms(1_300));
    let st = sim.broker(pos, filled("6", "93"));
    assert!(st.has(&Notice::Fill { pos, qty: qty("4"), price: Some(px("93")), remaining: Qty::ZERO }));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert!(st.orders.is_empty());
    assert_eq!(sim.filled(pos), qty("10"));
    assert!(matches!(sim.state(pos), PosState::Closed { how: ClosedHow::Filled, .. }));
    let rec = sim.e.recent_closes().last().expect("recorded");
    // (4 * 94 + 6 * 93) / 10
    assert_eq!((rec.qty, rec.exit, rec.attempts), (qty("10"), Some(px("93.4")), 2));
    // Nothing more, whatever happens next.
    let st = sim.run_until(s(100));
    assert!(st.orders.is_empty());
}

#[test]
fn filled_never_exceeds_the_position_even_when_the_broker_overreports() {
    let (mut sim, pos) = decided(cfg());
    sim.at(ms(1_100));
    let st = sim.broker(pos, working("25"));
    assert_eq!(sim.filled(pos), qty("10"));
    assert!(st.has(&Notice::Fill { pos, qty: qty("10"), price: None, remaining: Qty::ZERO }));
    let st = sim.broker(pos, filled("30", "94"));
    assert_eq!(sim.filled(pos), qty("10"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert!(st.orders.is_empty());
}

#[test]
fn working_order_is_never_duplicated_only_looked_up() {
    let (mut sim, pos) = decided(cfg());
    // While the order is merely sent, time passing sends nothing.
    let st = sim.run_until(s(60));
    assert!(st.orders.is_empty());
    sim.at(s(61));
    let st = sim.broker(pos, working("0"));
    assert!(st.orders.is_empty());
    // Then only look-ups, once per lookup_every, never a new order.
    let st = sim.run_until(s(71));
    assert!(st.places().is_empty());
    // One look-up at a time: the next is due only once this one has reported.
    assert_eq!(st.lookups(pos), 1);
    for i in 0..9 {
        sim.broker(pos, working("0"));
        let st = sim.run_until(s(72 + i));
        assert!(st.places().is_empty());
        assert_eq!(st.lookups(pos), 1, "one look-up per report and lookup_every");
    }
    for o in &st.orders {
        assert_eq!(
            o,
            &OrderAction::Lookup {
                pos,
                client_id: ClientId::try_from("tg1-p1-1").expect("fits"),
                sent_at: s(1)
            }
        );
    }
    // The broker reporting working again, with progress, still sends nothing.
    let st = sim.broker(pos, working("3"));
    assert!(st.orders.is_empty());
    // A new decision cannot arise either: a crossing tick or an emergency close is refused.
    let x = sim.inst("X");
    sim.at(s(81));
    assert!(sim.live(x, "1", "1.1").orders.is_empty());
    let (r, st) = sim.cmd(Command::Close {
        target: CloseTarget::Id(PositionId::try_from("p1").expect("id")),
        reason: CloseReason::Emergency,
    });
    assert_eq!(r, Ok(Reply::Closing { decided: 0, already: 1 }));
    assert!(st.orders.is_empty());
    // Finished by the broker: closed.
    let st = sim.broker(pos, filled("10", "94"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert_eq!(sim.e.stats().orders_placed, 1);
}

#[test]
fn unknown_outcome_is_looked_up_and_resolved_before_any_new_order() {
    let (mut sim, pos) = decided(cfg());
    sim.at(s(6));
    let st = sim.broker(pos, Outcome::Unknown);
    assert!(st.has(&Notice::Unknown { pos, attempt: 1 }));
    assert!(st.orders.is_empty());
    assert_eq!(sim.closing(pos).order, OrderPhase::Unknown);
    // Operator actions that would forget the order are refused while it may be working.
    let id = || PositionId::try_from("p1").expect("id");
    assert_eq!(sim.cmd(Command::Resolve { id: id() }).0, Err(CoreError::OrderInFlight));
    assert_eq!(sim.cmd(Command::ClosedExternally { id: id() }).0, Err(CoreError::OrderInFlight));
    // Look-ups only.
    let st = sim.run_until(s(36));
    assert!(st.places().is_empty());
    // One look-up at a time (the next once this one reports): never two that could disagree.
    assert_eq!(st.lookups(pos), 1);
    // The look-up proves it absent (rejected): now, and only now, a retry after the backoff.
    let st = sim.broker(pos, Outcome::Rejected);
    assert!(st.has(&Notice::Retry { pos, attempt: 1, delay: secs(1) }));
    assert!(st.orders.is_empty());
    let st = sim.run_until(s(37));
    let p2 = st.place(pos).expect("retry");
    assert_eq!((p2.attempt, p2.qty), (2, qty("10")));
    assert_eq!(p2.client_id.as_str(), "tg1-p1-2");
}

#[test]
fn unknown_outcome_that_turns_out_filled_closes_without_another_order() {
    let (mut sim, pos) = decided(cfg());
    sim.at(s(2));
    sim.broker(pos, Outcome::Unknown);
    let st = sim.run_until(s(5));
    assert!(st.places().is_empty());
    let st = sim.broker(pos, filled("10", "94"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert!(sim.run_until(s(100)).orders.is_empty());
    assert_eq!(sim.e.stats().orders_placed, 1);
}

#[test]
fn stray_reports_are_ignored() {
    let (mut sim, pos) = decided(cfg());
    let other = ClientId::try_from("tg1-p1-9").expect("fits");
    let st = sim.broker_as(pos, other, filled("10", "94"));
    assert_eq!(st.notices, vec![Notice::StrayReport { pos }]);
    assert_eq!(sim.filled(pos), Qty::ZERO);
    assert_eq!(sim.closing(pos).order, OrderPhase::Sent);
    // Once rejected (waiting for the retry), a repeated report for that attempt is stray too.
    sim.broker(pos, Outcome::Rejected);
    let st = sim.broker(pos, Outcome::Rejected);
    assert_eq!(st.notices, vec![Notice::StrayReport { pos }]);
    assert_eq!(sim.closing(pos).failures, 1);
    // A report for a slot with no position.
    let st = sim.broker_as(PosIdx(7), ClientId::new(), Outcome::Unknown);
    assert!(st.is_empty_step());
}

#[test]
fn rejected_closes_back_off_then_close_failed_then_retry_at_the_slowest_cadence() {
    let (mut sim, pos) = decided(cfg());
    let x = sim.inst("X");
    // Feed gone and price expired by the time the retries run: retries need no fresh price.
    sim.feed(FeedEvent::Disconnected);
    let mut t = s(1);
    let mut delays = Vec::new();
    for attempt in 1..=5u16 {
        t = t + Duration::from_millis(100);
        sim.at(t);
        let st = sim.broker(pos, Outcome::Rejected);
        let delay = st
            .notices
            .iter()
            .find_map(|n| match n {
                Notice::Retry { pos: p, attempt: a, delay } if *p == pos && *a == attempt => Some(*delay),
                _ => None,
            })
            .expect("retry notice");
        delays.push(delay.as_secs());
        let failed_now = st.has(&Notice::CloseFailed { pos, attempts: 5 });
        assert_eq!(failed_now, attempt == 5, "CloseFailed exactly at the 5th failure");
        // Nothing before the delay, the next attempt exactly at it.
        let st = sim.run_until(t + delay - NS);
        assert!(st.places().is_empty());
        let st = sim.run_until(t + delay);
        let p = st.place(pos).expect("retry goes at its deadline");
        assert_eq!((p.attempt, p.qty), (attempt + 1, qty("10")));
        t = t + delay;
    }
    assert_eq!(delays, vec![1, 2, 4, 8, 30]);
    assert!(matches!(sim.state(pos), PosState::CloseFailed(_)));
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::CloseFailed);
    assert_eq!(sim.e.rung(x, sim.now), Rung::Cache);
    // Still failing: every retry waits the slowest delay, and CloseFailed is not repeated.
    for attempt in 6..=8u16 {
        t = t + Duration::from_millis(100);
        sim.at(t);
        let st = sim.broker(pos, Outcome::Rejected);
        assert!(st.has(&Notice::Retry { pos, attempt, delay: secs(30) }));
        assert_eq!(st.count(|n| matches!(n, Notice::CloseFailed { .. })), 0);
        let st = sim.run_until(t + secs(30));
        assert_eq!(st.place(pos).expect("retry").attempt, attempt + 1);
        t = t + secs(30);
    }
    // It finally fills: closed, and the alarm clears.
    let st = sim.broker(pos, filled("10", "50"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert_ne!(sim.e.alarm(sim.now).0, Alarm::CloseFailed);
    let rec = sim.e.recent_closes().last().expect("recorded");
    assert_eq!(rec.attempts, 9);
}

#[test]
fn jittered_retry_delays_stay_within_their_bounds() {
    let (mut sim, pos) = decided(EngineConfig { jitter: 0.5, max_close_attempts: 100, ..cfg() });
    let mut t = s(1);
    let mut seen = Vec::new();
    for n in 1..=12u32 {
        let st = sim.broker(pos, Outcome::Rejected);
        let delay = st
            .notices
            .iter()
            .find_map(|n| match n {
                Notice::Retry { delay, .. } => Some(*delay),
                _ => None,
            })
            .expect("retry");
        let base = secs(1u64 << (n - 1).min(10)).min(secs(30));
        assert!(
            delay >= base.mul_f64(0.5) && delay <= base.mul_f64(1.5).min(secs(30)),
            "delay {delay:?} for base {base:?}"
        );
        seen.push(delay);
        t = t + delay;
        let st = sim.run_until(t);
        assert!(st.place(pos).is_some());
    }
    seen.dedup();
    assert!(seen.len() > 6, "jitter spreads the delays: {seen:?}");
}

#[test]
fn attempt_that_ends_with_nothing_executed_is_a_failure_that_backs_off() {
    // A market order that expires unfilled (EXPIRED, executedQty 0) is reported as done
    // with nothing executed. It must count as a failed attempt with a backoff, or a venue
    // with no liquidity would get a new order on every report, in a tight loop, and the
    // position would never reach CloseFailed (the loudest alarm).
    let (mut sim, pos) = decided(EngineConfig { max_close_attempts: 2, ..cfg() });
    sim.at(ms(1_100));
    let st = sim.broker(pos, partial("0", "94"));
    assert!(st.orders.is_empty(), "no immediate resend: {st:?}");
    assert!(st.has(&Notice::Retry { pos, attempt: 1, delay: secs(1) }));
    let st = sim.run_until(ms(2_100));
    assert_eq!(st.place(pos).map(|p| p.attempt), Some(2));
    let st = sim.broker(pos, filled("0", "94"));
    assert!(st.orders.is_empty());
    assert!(st.has(&Notice::CloseFailed { pos, attempts: 2 }));
    // But progress is not a failure: a partial fill's remainder goes at once.
    let st = sim.run_until(ms(2_100) + secs(30));
    assert_eq!(st.place(pos).map(|p| p.attempt), Some(3));
    let st = sim.broker(pos, working("3"));
    assert!(st.orders.is_empty());
    let st = sim.broker(pos, partial("3", "94"));
    let p = st.place(pos).expect("remainder at once");
    assert_eq!((p.attempt, p.qty), (4, qty("7")));
}

#[test]
fn close_failed_position_is_resolved_by_the_operator_only_when_no_order_may_work() {
    let (mut sim, pos) = decided(EngineConfig { max_close_attempts: 1, ..cfg() });
    let id = || PositionId::try_from("p1").expect("id");
    // Sent: may be working.
    assert_eq!(sim.cmd(Command::Resolve { id: id() }).0, Err(CoreError::OrderInFlight));
    let st = sim.broker(pos, Outcome::Rejected);
    assert!(st.has(&Notice::CloseFailed { pos, attempts: 1 }));
    let (r, st) = sim.cmd(Command::Resolve { id: id() });
    assert_eq!(r, Ok(Reply::Done { pos }));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Resolved }));
    assert!(sim.run_until(s(600)).orders.is_empty());
    // Nothing to resolve on an open position.
    sim.register(long("p2", "X", Some("10"), None));
    assert_eq!(
        sim.cmd(Command::Resolve { id: PositionId::try_from("p2").expect("id") }).0,
        Err(CoreError::NotCloseFailed)
    );
}

#[test]
fn decision_stands_when_the_price_recovers() {
    let (mut sim, pos) = decided(cfg());
    let x = sim.inst("X");
    sim.broker(pos, Outcome::Rejected);
    sim.at(ms(1_500));
    // Back above the stop before the retry: still closing, the retry still goes.
    let st = sim.live(x, "120", "120.1");
    assert!(st.orders.is_empty() && st.decisions(pos).is_empty());
    let st = sim.run_until(s(3));
    let p = st.place(pos).expect("retry without a fresh decision");
    assert_eq!((p.reason, p.attempt), (CloseReason::StopLoss, 2));
    assert_eq!(sim.e.stats().decisions, 1);
}

// ----- blind: alert versus flatten, grace, start-up ----------------------------------------

#[test]
fn blind_alert_only_notifies_and_keeps_protecting() {
    let mut sim = Sim8::new(cfg_every_call());
    let pos = sim.register(long("p1", "X", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.live(x, "100", "100.5");
    sim.at(s(400));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Blind { pos }));
    sim.at(s(460));
    let st = sim.timer();
    assert!(st.has(&Notice::BlindPolicy { pos, policy: BlindPolicy::Alert, blind_for: secs(60) }));
    assert!(st.orders.is_empty());
    // Once per blind spell.
    sim.at(s(600));
    let st = sim.timer();
    assert_eq!(st.count(is_blind_policy), 0);
    assert_eq!(sim.state(pos), &PosState::Open);
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);
    // The price comes back crossed: the stop still works.
    sim.at(s(601));
    sim.feed(FeedEvent::SubscribedAll);
    let st = sim.live(x, "89", "89.5");
    assert_eq!(st.decision(pos).map(|d| d.reason), Some(CloseReason::StopLoss));
}

#[test]
fn blind_flatten_acts_exactly_at_the_end_of_its_grace() {
    let mut sim = Sim8::new(cfg_every_call());
    let pos = sim.register(spec("f1", "X", Side::Short, "3", "100", Some("110"), None, BlindPolicy::Flatten));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.live(x, "100", "100.5");
    // The price expires while the feed is up: stale, not blind. The feed drops at 400 s:
    // blind from that moment.
    sim.at(s(400));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Blind { pos }));
    assert_eq!(sim.e.book().get(pos).and_then(|p| p.blind_since), Some(s(400)));
    sim.at(s(460) - NS);
    let st = sim.timer();
    assert!(st.is_empty_step(), "grace not over: {st:?}");
    sim.at(s(460));
    let st = sim.timer();
    assert!(st.has(&Notice::BlindPolicy { pos, policy: BlindPolicy::Flatten, blind_for: secs(60) }));
    let d = st.decision(pos).expect("flatten decided");
    assert_eq!(
        d,
        Decision {
            reason: CloseReason::Blind,
            price: None,
            source: PriceSource::None,
            age: Duration::ZERO,
            level: None,
            at: s(460),
        }
    );
    let p = st.place(pos).expect("flatten order");
    assert_eq!((p.reason, p.qty, p.side, p.attempt), (CloseReason::Blind, qty("3"), Side::Short, 1));
    // Not twice.
    sim.at(s(500));
    assert!(sim.timer().orders.is_empty());
}

#[test]
fn blind_grace_at_start_up_is_never_shorter_than_expire_after_after_boot() {
    let mut sim = Sim8::new(cfg_every_call());
    let flat = spec("f1", "X", Side::Long, "1", "100", Some("90"), None, BlindPolicy::Flatten);
    let pos = sim.register(flat);
    // No feed, no REST, no price since boot: blind from the first sweep.
    let st = sim.timer();
    assert!(st.has(&Notice::Blind { pos }));
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);
    // blind_grace (60 s) has passed, but not expire_after (300 s) since boot.
    sim.at(s(60));
    assert_eq!(sim.timer().count(is_blind_policy), 0);
    sim.at(s(300) - NS);
    let st = sim.timer();
    assert!(st.is_empty_step(), "{st:?}");
    sim.at(s(300));
    let st = sim.timer();
    assert!(st.has(&Notice::BlindPolicy { pos, policy: BlindPolicy::Flatten, blind_for: secs(300) }));
    assert_eq!(st.place(pos).map(|p| p.reason), Some(CloseReason::Blind));
}

#[test]
fn blind_grace_starting_late_in_the_boot_window_counts_from_going_blind() {
    let mut sim = Sim8::new(cfg_every_call());
    sim.at(s(280));
    let pos = sim.register(spec("f1", "X", Side::Long, "1", "100", Some("90"), None, BlindPolicy::Flatten));
    let st = sim.timer();
    assert!(st.has(&Notice::Blind { pos }));
    // boot + expire_after (300 s) is not enough: 60 s from going blind (280 s) is 340 s.
    sim.at(s(300));
    assert_eq!(sim.timer().count(is_blind_policy), 0);
    sim.at(s(340) - NS);
    assert_eq!(sim.timer().count(is_blind_policy), 0);
    sim.at(s(340));
    let st = sim.timer();
    assert_eq!(st.count(is_blind_policy), 1);
    assert!(st.place(pos).is_some());
}

#[test]
fn blind_flatten_rejected_is_rejudged_on_a_fresh_price_and_reopens_between_levels() {
    let mut sim = Sim8::new(cfg());
    let pos =
        sim.register(spec("f1", "X", Side::Long, "5", "100", Some("90"), Some("110"), BlindPolicy::Flatten));
    let x = sim.inst("X");
    let st = sim.run_until(s(300));
    let first = st.place(pos).expect("blind flatten at boot + expire_after");
    assert_eq!(first.reason, CloseReason::Blind);
    // The venue rejects it: known not to have reached the market.
    sim.at(ms(300_200));
    sim.broker(pos, Outcome::Rejected);
    // The feed returns: still no price, so still blind (a connected feed is not a price).
    sim.at(ms(300_300));
    let st = sim.feed(FeedEvent::SubscribedAll);
    assert!(!st.has(&Notice::BlindCleared { pos }));
    // A fresh price between the levels re-opens the position and clears the blindness.
    sim.at(ms(300_400));
    let st = sim.live(x, "100", "100.5");
    assert!(st.has(&Notice::Rejudged { pos, price: px("100") }));
    sim.run_until(s(301));
    assert_eq!(sim.e.book().get(pos).and_then(|p| p.blind_since), None);
    assert!(st.orders.is_empty());
    assert_eq!(sim.state(pos), &PosState::Open);
    assert_eq!(sim.e.book().get(pos).and_then(|p| p.decision), None);
    // The pending retry is gone with the flatten.
    assert!(sim.run_until(s(400)).orders.is_empty());
    // Later the stop is touched: a new close, whose client ids never repeat the flatten's.
    sim.at(s(401));
    let st = sim.live(x, "90", "90.5");
    assert_eq!(st.decision(pos).map(|d| d.reason), Some(CloseReason::StopLoss));
    let second = st.place(pos).expect("stop close");
    assert_eq!(second.qty, qty("5"));
    assert_ne!(second.client_id, first.client_id, "a client id is never reused for a new order");
    assert_eq!(second.attempt, 2);
}

#[test]
fn blind_flatten_rejected_then_a_crossed_price_converts_it_to_a_stop_close() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(spec("f1", "X", Side::Long, "5", "100", Some("90"), None, BlindPolicy::Flatten));
    let x = sim.inst("X");
    let st = sim.run_until(s(300));
    assert!(st.place(pos).is_some());
    sim.at(ms(300_100));
    sim.broker(pos, partial("2", "91"));
    sim.broker(pos, Outcome::Rejected);
    sim.at(ms(300_200));
    sim.feed(FeedEvent::SubscribedAll);
    let st = sim.live(x, "85", "85.5");
    let d = st.decision(pos).expect("converted");
    assert_eq!((d.reason, d.price, d.source), (CloseReason::StopLoss, Some(px("85")), PriceSource::Live));
    let p = st.place(pos).expect("stop close at once");
    assert_eq!((p.reason, p.qty, p.attempt), (CloseReason::StopLoss, qty("3"), 3));
    // That decision stands: a recovery does not re-open it.
    sim.broker(pos, Outcome::Rejected);
    sim.at(ms(300_300));
    let st = sim.live(x, "100", "100.5");
    assert!(st.notices.iter().all(|n| !matches!(n, Notice::Rejudged { .. })));
    assert!(matches!(sim.state(pos), PosState::Closing(_)));
}

#[test]
fn blind_flatten_that_may_be_working_is_never_rejudged() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(spec("f1", "X", Side::Long, "5", "100", Some("90"), None, BlindPolicy::Flatten));
    let x = sim.inst("X");
    assert!(sim.run_until(s(300)).place(pos).is_some());
    sim.at(ms(300_100));
    sim.feed(FeedEvent::SubscribedAll);
    // Sent: a fresh price between the levels must not re-open it.
    let st = sim.live(x, "100", "100.5");
    assert!(st.notices.is_empty() && st.orders.is_empty());
    // Unknown: same.
    sim.broker(pos, Outcome::Unknown);
    sim.at(ms(300_200));
    let st = sim.live(x, "100.1", "100.6");
    assert!(st.notices.is_empty() && st.orders.is_empty());
    // Working: same.
    sim.broker(pos, working("1"));
    sim.at(ms(300_300));
    let st = sim.live(x, "100.2", "100.7");
    assert!(st.notices.is_empty() && st.orders.is_empty());
    assert!(matches!(sim.state(pos), PosState::Closing(_)));
}

#[test]
fn blind_flatten_rejected_is_not_rejudged_on_a_price_dated_before_the_decision() {
    let mut sim = Sim8::new(EngineConfig { rest_enabled: true, ..cfg() });
    let pos = sim.register(spec("f1", "X", Side::Long, "5", "100", Some("90"), None, BlindPolicy::Flatten));
    let x = sim.inst("X");
    for _ in 0..3 {
        sim.feed(FeedEvent::RestError(x));
    }
    let st = sim.run_until(s(300));
    assert!(st.place(pos).is_some());
    sim.at(ms(300_100));
    sim.broker(pos, Outcome::Rejected);
    // A REST answer to a request sent before the flatten was decided is not a fresh price.
    sim.at(ms(300_200));
    let st = sim.rest(x, "100", s(299));
    assert!(st.notices.iter().all(|n| !matches!(n, Notice::Rejudged { .. })));
    assert!(matches!(sim.state(pos), PosState::Closing(_)));
    // One sent after it is.
    let st = sim.rest(x, "100", ms(300_150));
    assert!(st.has(&Notice::Rejudged { pos, price: px("100") }));
}

// ----- commands and capacities -------------------------------------------------------------

#[test]
fn full_book_is_a_clear_error_and_closed_slots_are_reused() {
    let mut sim = Sim8::new(cfg());
    for i in 0..8 {
        sim.register(long(&format!("p{i}"), "X", Some("90"), None));
    }
    let (r, st) = sim.cmd(Command::Register(long("p8", "X", Some("90"), None)));
    assert_eq!(r, Err(CoreError::BookFull { capacity: 8 }));
    assert!(st.is_empty_step());
    assert_eq!(sim.e.book().active(), 8);
    // Withdraw one: its slot is reused.
    let (r, _) = sim.cmd(Command::Withdraw { id: PositionId::try_from("p3").expect("id") });
    assert_eq!(r, Ok(Reply::Done { pos: PosIdx(3) }));
    assert_eq!(sim.register(long("p8", "X", Some("90"), None)), PosIdx(3), "closed slot reused");
    assert_eq!(sim.e.book().active(), 8);
    assert_eq!(
        sim.cmd(Command::Register(long("p9", "X", Some("90"), None))).0,
        Err(CoreError::BookFull { capacity: 8 })
    );
}

#[test]
fn full_instrument_cache_is_a_clear_error() {
    let mut sim: Sim<4, 8> = Sim::new(cfg());
    for sym in ["A", "B", "C", "D"] {
        sim.register(long(sym, sym, Some("90"), None));
    }
    // The watch set is full before the cache: the registration is refused naming the limit,
    // never accepted unwatched.
    let (r, _) = sim.cmd(Command::Register(long("e", "E", Some("90"), None)));
    assert_eq!(r, Err(CoreError::WatchFull { limit: 4 }));
    assert_eq!(sim.e.book().active(), 4);
    // A known instrument still takes positions.
    sim.register(long("a2", "A", Some("90"), None));
}

#[test]
fn watch_limit_below_the_cache_refuses_a_new_instrument() {
    let mut sim = Sim8::new(EngineConfig { max_watched: 2, ..cfg() });
    sim.register(long("a", "A", Some("90"), None));
    sim.register(long("b", "B", Some("90"), None));
    let (r, _) = sim.cmd(Command::Register(long("c", "C", Some("90"), None)));
    assert_eq!(r, Err(CoreError::WatchFull { limit: 2 }));
    assert_eq!(sim.e.watched().count(), 2);
    let (r, _) = sim.cmd(Command::Register(long("a2", "A", Some("90"), None)));
    assert!(matches!(r, Ok(Reply::Registered { new_instrument: false, .. })));
}

#[test]
fn registration_is_idempotent_and_validated() {
    let mut sim = Sim8::new(cfg());
    let sp = long("p1", "X", Some("90"), Some("110"));
    let (r, _) = sim.cmd(Command::Register(sp.clone()));
    assert!(matches!(r, Ok(Reply::Registered { existed: false, new_instrument: true, .. })));
    let (r, _) = sim.cmd(Command::Register(sp.clone()));
    assert!(matches!(r, Ok(Reply::Registered { existed: true, .. })));
    let mut other = sp;
    other.qty = qty("11");
    assert_eq!(sim.cmd(Command::Register(other)).0, Err(CoreError::DuplicateId));
    let bad = long("p2", "X", Some("110"), Some("90"));
    assert_eq!(sim.cmd(Command::Register(bad)).0, Err(CoreError::BadLevels));
    let bad = short("p2", "X", Some("90"), Some("110"));
    assert_eq!(sim.cmd(Command::Register(bad)).0, Err(CoreError::BadLevels));
    assert_eq!(sim.e.book().active(), 1);
}

#[test]
fn registering_with_a_level_already_crossed_closes_at_once() {
    let mut sim = Sim8::new(cfg());
    sim.register(long("p0", "X", None, None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(5));
    sim.live(x, "80", "80.5");
    sim.at(s(6));
    let (r, st) = sim.cmd(Command::Register(long("p1", "X", Some("90"), None)));
    let Ok(Reply::Registered { pos, .. }) = r else { panic!("{r:?}") };
    let d = st.decision(pos).expect("closed at registration");
    assert_eq!((d.source, d.age), (PriceSource::Live, secs(1)));
    assert!(st.place(pos).is_some());
}

#[test]
fn emergency_close_by_symbol_decides_each_open_position_once() {
    let mut sim = Sim8::new(cfg());
    let a = sim.register(long("a", "X", Some("90"), None));
    let b = sim.register(short("b", "X", Some("110"), None));
    let c = sim.register(long("c", "Y", Some("90"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    sim.live(x, "100", "100.5");
    sim.at(s(2));
    let close = || Command::Close {
        target: CloseTarget::Symbol(Symbol::try_from("X").expect("sym")),
        reason: CloseReason::Emergency,
    };
    let (r, st) = sim.cmd(close());
    assert_eq!(r, Ok(Reply::Closing { decided: 2, already: 0 }));
    assert_eq!(st.places().len(), 2);
    let da = st.decision(a).expect("a");
    assert_eq!(
        (da.reason, da.price, da.source, da.level),
        (CloseReason::Emergency, Some(px("100")), PriceSource::Live, None)
    );
    assert_eq!(st.decision(b).map(|d| d.price), Some(Some(px("100.5"))));
    assert!(st.place(c).is_none());
    let (r, st) = sim.cmd(close());
    assert_eq!(r, Ok(Reply::Closing { decided: 0, already: 2 }));
    assert!(st.orders.is_empty());
    assert_eq!(
        sim.cmd(Command::Close {
            target: CloseTarget::Id(PositionId::try_from("zz").expect("id")),
            reason: CloseReason::Emergency
        })
        .0,
        Err(CoreError::UnknownPosition)
    );
}

#[test]
fn withdrawn_position_is_no_longer_protected_and_modify_needs_an_open_position() {
    let (mut sim, _) = decided(cfg());
    let id = |s: &str| PositionId::try_from(s).expect("id");
    assert_eq!(
        sim.cmd(Command::Modify { id: id("p1"), stop_loss: Some(None), take_profit: None }).0,
        Err(CoreError::NotOpen)
    );
    assert_eq!(sim.cmd(Command::Withdraw { id: id("p1") }).0, Err(CoreError::NotOpen));
    let q = sim.register(long("q1", "X", Some("50"), None));
    let (r, st) = sim.cmd(Command::Withdraw { id: id("q1") });
    assert_eq!(r, Ok(Reply::Done { pos: q }));
    assert!(st.has(&Notice::Closed { pos: q, how: ClosedHow::Withdrawn }));
    let x = sim.inst("X");
    sim.at(s(2));
    let st = sim.live(x, "10", "10.5");
    assert!(st.decisions(q).is_empty() && st.place(q).is_none());
}

#[test]
fn closed_externally_ends_protection_only_when_no_order_may_work() {
    let (mut sim, pos) = decided(cfg());
    let id = || PositionId::try_from("p1").expect("id");
    assert_eq!(sim.cmd(Command::ClosedExternally { id: id() }).0, Err(CoreError::OrderInFlight));
    sim.broker(pos, Outcome::Rejected);
    let (r, st) = sim.cmd(Command::ClosedExternally { id: id() });
    assert_eq!(r, Ok(Reply::Done { pos }));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::External }));
    assert!(sim.run_until(s(60)).orders.is_empty());
}

// ----- the seed incident: BOSCHLTD -----------------------------------------------------------

/// BOSCHLTD long, entry 735.00, protected by a wide stop at first; the feed is live.
fn boschltd(cfg: EngineConfig) -> (Sim8, PosIdx, InstrumentId) {
    let mut sim = Sim8::new(cfg);
    let pos = sim.register(spec(
        "bosch",
        "BOSCHLTD",
        Side::Long,
        "10",
        "735.00",
        Some("560.00"),
        None,
        BlindPolicy::Alert,
    ));
    let x = sim.inst("BOSCHLTD");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(60));
    sim.live(x, "740.00", "740.50");
    (sim, pos, x)
}

#[test]
fn seed_incident_boschltd_stop_crossed_while_feed_down_closes_from_cache() {
    let (mut sim, pos, x) = boschltd(cfg());
    // 11:24:00 the last live price, 575.00; 11:24:16 the feed drops (DNS failure).
    sim.at(s(100));
    let st = sim.live_last(x, "575.00");
    assert!(st.decisions(pos).is_empty(), "575 is above the 560 stop");
    sim.at(s(116));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Live,
        to: Rung::Cache,
        age: Some(secs(16)),
    }));
    // The price goes stale at 30 s; the engine says so.
    let st = sim.run_until(s(145));
    assert!(st.has(&Notice::Band { instrument: x, band: Band::Stale, age: secs(30) }));
    assert!(st.orders.is_empty());
    // 45 s after the last price the trader tightens the stop to 698.25: the cached 575.00
    // is below it, and the close goes at once, from the cache.
    let (r, st) = sim.modify_sl("bosch", "698.25");
    assert_eq!(r, Ok(Reply::Done { pos }));
    let d = st.decision(pos).expect("[SL] from the cache");
    assert_eq!(
        d,
        Decision {
            reason: CloseReason::StopLoss,
            price: Some(px("575.00")),
            source: PriceSource::Cache,
            age: secs(45),
            level: Some(px("698.25")),
            at: s(145),
        }
    );
    let p = st.place(pos).expect("close order");
    assert_eq!(
        (p.qty, p.side, p.reason, p.client_id.as_str()),
        (qty("10"), Side::Long, CloseReason::StopLoss, "tg1-bosch-1")
    );
    sim.at(ms(145_300));
    let st = sim.broker(pos, filled("10", "575.00"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    let rec = sim.e.recent_closes().last().expect("recorded").clone();
    assert_eq!(
        (rec.entry, rec.exit, rec.qty, rec.decision.source),
        (px("735.00"), Some(px("575.00")), qty("10"), PriceSource::Cache)
    );
    assert_eq!(sim.e.book().active(), 0);
}

#[test]
fn seed_incident_boschltd_last_live_tick_gapping_through_the_stop_closes_on_the_tick() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(spec(
        "bosch",
        "BOSCHLTD",
        Side::Long,
        "10",
        "735.00",
        Some("698.25"),
        None,
        BlindPolicy::Alert,
    ));
    let x = sim.inst("BOSCHLTD");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(60));
    sim.live(x, "720.00", "720.50");
    // The last tick before the drop is already through the stop: decided on that tick,
    // before the feed is even noticed down.
    sim.at(s(100));
    let st = sim.live_last(x, "575.00");
    let d = st.decision(pos).expect("[SL] on the tick");
    assert_eq!((d.price, d.source, d.level), (Some(px("575.00")), PriceSource::Live, Some(px("698.25"))));
    assert!(st.place(pos).is_some());
    sim.at(s(116));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.orders.is_empty(), "no second order when the feed drops");
    assert_eq!(sim.e.stats().decisions, 1);
}

#[test]
fn seed_incident_boschltd_stop_crossed_while_feed_down_closes_from_rest() {
    let (mut sim, pos, x) = boschltd(EngineConfig { rest_enabled: true, ..cfg() });
    assert!(sim.modify_sl("bosch", "698.25").0.is_ok());
    sim.at(s(116));
    let st = sim.feed(FeedEvent::Disconnected);
    assert!(st.has(&Notice::Fallback {
        instrument: x,
        from: Rung::Live,
        to: Rung::Rest,
        age: Some(secs(56)),
    }));
    // The WebSocket host is gone but REST works: its answer (sent at 120 s) crosses.
    sim.at(ms(120_400));
    let st = sim.rest(x, "575.00", s(120));
    let d = st.decision(pos).expect("[SL] from REST");
    assert_eq!(
        (d.price, d.source, d.age),
        (Some(px("575.00")), PriceSource::Rest, Duration::from_millis(400))
    );
    assert!(st.place(pos).is_some());
}

#[test]
fn seed_incident_boschltd_after_cache_expiry_is_blind_alerts_and_emergency_close_needs_no_price() {
    let (mut sim, pos, x) = boschltd(cfg());
    sim.at(s(100));
    sim.live_last(x, "575.00");
    sim.at(s(116));
    sim.feed(FeedEvent::Disconnected);
    // Five minutes without a price: expired, blind, alert after the grace.
    let st = sim.run_until(s(401));
    assert!(st.has(&Notice::Blind { pos }));
    assert!(st.orders.is_empty());
    let st = sim.run_until(s(461));
    assert_eq!(st.count(is_blind_policy), 1);
    assert!(st.orders.is_empty(), "alert is the default policy: no order");
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);
    // Tightening the stop now finds no usable price: nothing is decided on an expired one.
    let (_, st) = sim.modify_sl("bosch", "698.25");
    assert!(st.decisions(pos).is_empty());
    // The operator's emergency close by symbol goes without a price.
    let (r, st) = sim.cmd(Command::Close {
        target: CloseTarget::Symbol(Symbol::try_from("BOSCHLTD").expect("sym")),
        reason: CloseReason::Emergency,
    });
    assert_eq!(r, Ok(Reply::Closing { decided: 1, already: 0 }));
    let d = st.decision(pos).expect("emergency");
    assert_eq!((d.reason, d.price, d.source), (CloseReason::Emergency, None, PriceSource::None));
    assert_eq!(st.place(pos).map(|p| (p.reason, p.qty)), Some((CloseReason::Emergency, qty("10"))));
}

#[test]
fn seed_incident_kaynes_take_profit_touched_while_feed_down_closes_from_cache() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(spec(
        "kaynes",
        "KAYNES",
        Side::Long,
        "30",
        "190.00",
        Some("180.00"),
        Some("210.00"),
        BlindPolicy::Alert,
    ));
    let x = sim.inst("KAYNES");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(16));
    sim.live_last(x, "204.10");
    sim.at(s(17));
    sim.feed(FeedEvent::Disconnected);
    sim.at(s(26));
    let (_, st) = sim.cmd(Command::Modify {
        id: PositionId::try_from("kaynes").expect("id"),
        stop_loss: None,
        take_profit: Some(Some(px("197.76"))),
    });
    let d = st.decision(pos).expect("[TP] from the cache");
    assert_eq!(
        (d.reason, d.price, d.source, d.age, d.level),
        (CloseReason::TakeProfit, Some(px("204.10")), PriceSource::Cache, secs(10), Some(px("197.76")))
    );
}

// ----- issue 12: the core's share of the protection defects -----------------------------

#[test]
fn defect_11_late_fill_of_a_concluded_attempt_is_reconciled_not_sent_again() {
    // An overlapping look-up concluded attempt 1 absent; another finds it filled. The fill is
    // taken, and no second order sells the same quantity.
    let (mut sim, pos) = decided(cfg());
    sim.at(s(6));
    sim.broker(pos, Outcome::Unknown);
    sim.at(s(20));
    let st = sim.broker(pos, Outcome::Rejected); // "proven absent"
    assert!(st.has(&Notice::Retry { pos, attempt: 1, delay: secs(1) }));
    // Before the retry goes, the late answer: attempt 1 filled in full.
    sim.at(ms(20_500));
    let first = ClientId::try_from("tg1-p1-1").expect("fits");
    let st = sim.broker_as(pos, first, filled("10", "94"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert!(st.orders.is_empty());
    assert!(sim.run_until(s(60)).places().is_empty(), "no second sell");
    assert_eq!(sim.filled(pos), qty("10"));
    assert_eq!(sim.e.stats().late_reports, 1);
}

#[test]
fn defect_11_late_fill_of_the_previous_attempt_reduces_the_next_one() {
    let (mut sim, pos) = decided(cfg());
    sim.at(s(20));
    sim.broker(pos, Outcome::Rejected);
    // The retry goes: attempt 2 for the whole 10.
    let st = sim.run_until(s(22));
    let second = st.place(pos).expect("attempt 2");
    assert_eq!(second.attempt, 2);
    // Attempt 1 is found partly filled after all (4), while attempt 2 is in flight.
    let first = ClientId::try_from("tg1-p1-1").expect("fits");
    let st = sim.broker_as(pos, first, partial("4", "94"));
    assert!(st.has(&Notice::Fill { pos, qty: qty("4"), price: Some(px("94")), remaining: qty("6") }));
    // Attempt 2 fills 6 of its 10 (the venue sold what the account held): closed, exactly 10.
    let st = sim.broker(pos, partial("6", "94"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert_eq!(sim.filled(pos), qty("10"));
}

#[test]
fn unknown_outcome_past_the_alarm_is_loud_and_settled_by_the_operator() {
    let (mut sim, pos) = decided(EngineConfig { unknown_alarm: secs(60), ..cfg() });
    sim.at(s(6));
    sim.broker(pos, Outcome::Unknown);
    sim.at(s(60));
    assert_eq!(sim.e.unknown_overdue(sim.now), 0);
    assert_ne!(sim.e.alarm(sim.now).0, Alarm::CloseFailed);
    sim.at(s(62));
    assert_eq!(sim.e.unknown_overdue(sim.now), 1);
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::CloseFailed, "an unknown outcome needs the operator");
    let id = || PositionId::try_from("p1").expect("id");
    // Settling another attempt is refused, naming the current one.
    let (r, _) = sim.cmd(Command::Settle { id: id(), attempt: 2, executed: qty("0"), price: None });
    assert_eq!(r, Err(CoreError::WrongAttempt { current: 1 }));
    // The operator checked the venue: 4 of 10 executed. The remainder (6) goes at once.
    let (r, st) =
        sim.cmd(Command::Settle { id: id(), attempt: 1, executed: qty("4"), price: Some(px("94")) });
    assert_eq!(r, Ok(Reply::Done { pos }));
    let next = st.place(pos).expect("remainder");
    assert_eq!((next.attempt, next.qty), (2, qty("6")));
    assert_eq!(sim.filled(pos), qty("4"));
    assert_eq!(sim.e.unknown_overdue(sim.now), 0);
    let st = sim.broker(pos, filled("6", "94"));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
}

#[test]
fn settlement_of_a_full_fill_closes_the_position() {
    let (mut sim, pos) = decided(cfg());
    sim.at(s(6));
    sim.broker(pos, Outcome::Unknown);
    let id = PositionId::try_from("p1").expect("id");
    let (r, st) = sim.cmd(Command::Settle { id, attempt: 1, executed: qty("10"), price: None });
    assert_eq!(r, Ok(Reply::Done { pos }));
    assert!(st.has(&Notice::Closed { pos, how: ClosedHow::Filled }));
    assert!(st.orders.is_empty());
}

#[test]
fn defect_10_zero_price_is_dropped_for_that_instrument_and_never_triggers_a_stop() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "X", Some("95"), None));
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    sim.live(x, "100", "100.1");
    // An empty bid side (Binance sends 0): no decision, the ask is kept, counted.
    let st = sim.tick(x, quote(Some("0"), Some("100.2"), None, Source::Live, s(2)));
    assert!(st.decisions(pos).is_empty());
    assert_eq!(sim.e.stats().prices_dropped, 1);
    // A REST answer of zero: dropped whole.
    let st = sim.rest(x, "0", s(3));
    assert!(st.decisions(pos).is_empty());
    assert_eq!(sim.e.stats().prices_dropped, 2);
    assert_eq!(sim.state(pos), &PosState::Open);
    // A coalesced run holding a zero bid still judges on the real ones.
    let mut t = Tick::new(x, quote(Some("0"), Some("99"), None, Source::Live, s(4)));
    t.coalesce(&quote(Some("94"), Some("94.1"), None, Source::Live, s(5)));
    sim.at(s(5));
    let st = sim.tick_run(t);
    assert_eq!(st.decision(pos).and_then(|d| d.price), Some(px("94")));
}

#[test]
fn defect_05_a_closed_id_is_never_registered_again() {
    let mut sim = Sim8::new(cfg());
    let sp = long("p1", "X", Some("95"), None);
    sim.register(sp.clone());
    let (r, _) = sim.cmd(Command::Withdraw { id: PositionId::try_from("p1").expect("id") });
    assert!(r.is_ok());
    // The same body again (a bot reusing ids, or retrying a registration): refused.
    let (r, _) = sim.cmd(Command::Register(sp));
    assert_eq!(r, Err(CoreError::Closed));
}

#[test]
fn registration_taken_back_and_changes_put_back_when_the_journal_fails() {
    let mut sim = Sim8::new(cfg());
    let pos = sim.register(long("p1", "X", Some("95"), None));
    sim.e.forget(pos);
    assert!(sim.e.book().find("p1").is_none());
    let pos = sim.register(long("p1", "X", Some("95"), None));
    let saved = sim.e.book().get(pos).cloned().expect("there");
    let (r, _) = sim.cmd(Command::Withdraw { id: PositionId::try_from("p1").expect("id") });
    assert!(r.is_ok());
    sim.e.put_back(pos, saved);
    assert_eq!(sim.state(pos), &PosState::Open);
    // Still judged: linked to its instrument again.
    let x = sim.inst("X");
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(1));
    assert!(sim.live(x, "94", "94.1").place(pos).is_some());
}

#[test]
fn unpriced_position_on_a_connected_feed_is_blind_after_its_grace() {
    // Defects 1 to 3 in the core: subscribed, never priced (unknown or lower-case symbol,
    // never re-subscribed after a restart): blind after blind_grace, never "healthy".
    let mut sim = Sim8::new(EngineConfig { blind_grace: secs(10), ..cfg() });
    sim.feed(FeedEvent::SubscribedAll);
    sim.at(s(300));
    let pos = sim.register(long("p1", "NOPRICE", Some("95"), None));
    let x = sim.inst("NOPRICE");
    sim.feed(FeedEvent::Subscribed(x));
    let st = sim.run_until(s(309));
    assert_eq!(st.count(is_blind_notice), 0);
    let st = sim.run_until(s(311));
    assert!(st.has(&Notice::Blind { pos }));
    assert_eq!(sim.e.alarm(sim.now).0, Alarm::Blind);
    // While the market is closed the grace does not run; it restarts at the open.
    let mut sim = Sim8::new(EngineConfig { blind_grace: secs(10), ..cfg() });
    sim.feed(FeedEvent::SubscribedAll);
    sim.feed(FeedEvent::Market(false));
    let pos = sim.register(long("p1", "NOPRICE", Some("95"), None));
    let x = sim.inst("NOPRICE");
    sim.feed(FeedEvent::Subscribed(x));
    assert_eq!(sim.run_until(s(3_600)).count(is_blind_notice), 0);
    sim.feed(FeedEvent::Market(true));
    assert_eq!(sim.run_until(s(3_609)).count(is_blind_notice), 0);
    assert!(sim.run_until(s(3_611)).has(&Notice::Blind { pos }));
}
