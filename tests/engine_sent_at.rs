//! `sent_at` taken once, where the request leaves (issue 14): the engine dates a close attempt
//! at its decision, and the broker's report of when the order request was handed to its
//! connection (`BrokerReport::sent_at`) replaces that date, so the absent-after rule counts
//! from the real send (after the intent's fsync and any connecting), never from before it.

use core::time::Duration;

use tickguard::core::book::PositionSpec;
use tickguard::core::engine::{
    Actions, BrokerReport, Command, Engine, EngineConfig, FeedEvent, OrderAction, Outcome, Reply,
};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{BlindPolicy, ClientId, PosIdx, PositionId, Quote, Side, Source, Symbol, Tick};

const T0: Timestamp = Timestamp::from_secs(10_000);

fn ms(m: u64) -> Timestamp {
    T0 + Duration::from_millis(m)
}

fn px(v: &str) -> Price {
    Price::parse(v).expect("price")
}

/// An engine with one long position on X (stop 95) crossed at 1 s; returns the attempt.
fn crossed() -> (Engine<8, 8>, Actions<8>, PosIdx, ClientId) {
    let mut e: Engine<8, 8> = Engine::new(EngineConfig { jitter: 0.0, ..EngineConfig::default() }, T0);
    let mut out: Actions<8> = Actions::new();
    let spec = PositionSpec {
        id: PositionId::try_from("p1").expect("id"),
        symbol: Symbol::try_from("X").expect("symbol"),
        side: Side::Long,
        qty: Qty::parse("10").expect("qty"),
        entry: px("100"),
        stop_loss: Some(px("95")),
        take_profit: None,
        blind_policy: BlindPolicy::Alert,
    };
    let pos = match e.on_command(T0, Command::Register(spec), &mut out) {
        Ok(Reply::Registered { pos, .. }) => pos,
        other => panic!("register: {other:?}"),
    };
    e.on_feed(T0, FeedEvent::SubscribedAll, &mut out);
    let x = e.cache().lookup("X").expect("instrument");
    let q = Quote {
        bid: Some(px("94")),
        ask: Some(px("94.1")),
        last: None,
        source: Source::Live,
        exch_ts: None,
        dated: ms(1000),
    };
    e.on_tick(ms(1000), &Tick::new(x, q), &mut out);
    let cid = out
        .orders
        .iter()
        .find_map(|o| match o {
            OrderAction::Place { pos: p, client_id, .. } if *p == pos => Some(client_id.clone()),
            _ => None,
        })
        .expect("a close is placed");
    (e, out, pos, cid)
}

/// The first look-up after an unknown outcome, running timers up to `until`.
fn first_lookup(
    e: &mut Engine<8, 8>,
    out: &mut Actions<8>,
    from: Timestamp,
    until: Timestamp,
) -> Option<Timestamp> {
    let mut now = from;
    for _ in 0..10_000 {
        let due = e.poll_timeout().max(now);
        if due > until {
            return None;
        }
        now = due;
        e.on_timer(now, out);
        for o in &out.orders {
            if let OrderAction::Lookup { sent_at, .. } = o {
                return Some(*sent_at);
            }
        }
    }
    None
}

#[test]
fn the_brokers_send_time_dates_the_attempt_for_the_absent_after_rule() {
    let (mut e, mut out, pos, cid) = crossed();
    // The request left 250 ms after the decision (fsync, connecting); the outcome is unknown.
    let sent = ms(1250);
    let r = BrokerReport { pos, client_id: cid, outcome: Outcome::Unknown, sent_at: Some(sent) };
    e.on_broker(ms(3000), &r, &mut out);
    let at = first_lookup(&mut e, &mut out, ms(3000), ms(120_000)).expect("a look-up follows");
    assert_eq!(at, sent, "the look-up carries the broker's send time, not the decision time");
}

#[test]
fn without_a_send_time_the_decision_time_stays() {
    let (mut e, mut out, pos, cid) = crossed();
    let r = BrokerReport { pos, client_id: cid, outcome: Outcome::Unknown, sent_at: None };
    e.on_broker(ms(3000), &r, &mut out);
    let at = first_lookup(&mut e, &mut out, ms(3000), ms(120_000)).expect("a look-up follows");
    assert_eq!(at, ms(1000));
}

#[test]
fn a_send_time_never_moves_the_attempt_earlier() {
    let (mut e, mut out, pos, cid) = crossed();
    let r = BrokerReport { pos, client_id: cid, outcome: Outcome::Unknown, sent_at: Some(ms(500)) };
    e.on_broker(ms(3000), &r, &mut out);
    let at = first_lookup(&mut e, &mut out, ms(3000), ms(120_000)).expect("a look-up follows");
    assert_eq!(at, ms(1000), "only ever later");
}
