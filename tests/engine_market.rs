//! Market hours in the engine: a closed market's quiet feed raises no stale alarm and no
//! blindness, and a close decided while it is closed is held until the open.

use std::time::Duration;

use tickguard::core::book::{PosState, PositionSpec};
use tickguard::core::engine::{
    Actions, Alarm, Command, Engine, EngineConfig, FeedEvent, Notice, OrderAction,
};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{BlindPolicy, Quote, Side, Source, Tick};

type E = Engine<8, 8>;

fn p(s: &str) -> Price {
    Price::parse(s).expect("price")
}

fn setup() -> (E, Actions<8>) {
    let cfg = EngineConfig {
        stale_after: Duration::from_secs(30),
        expire_after: Duration::from_secs(300),
        blind_grace: Duration::from_secs(60),
        rest_enabled: false,
        ..EngineConfig::default()
    };
    let mut e = E::new(cfg, Timestamp::ZERO);
    let mut out = Actions::new();
    e.add_instrument("BOSCHLTD").expect("room");
    e.on_feed(Timestamp::ZERO, FeedEvent::SubscribedAll, &mut out);
    let spec = PositionSpec {
        id: "bosch".try_into().expect("id"),
        symbol: "BOSCHLTD".try_into().expect("symbol"),
        side: Side::Long,
        qty: Qty::parse("10").expect("qty"),
        entry: p("735"),
        stop_loss: Some(p("698.25")),
        take_profit: None,
        blind_policy: BlindPolicy::Flatten,
    };
    e.on_command(Timestamp::ZERO, Command::Register(spec), &mut out).expect("register");
    (e, out)
}

fn tick(e: &mut E, out: &mut Actions<8>, at: Timestamp, bid: &str) {
    let id = e.cache().lookup("BOSCHLTD").expect("known");
    let q =
        Quote { bid: Some(p(bid)), ask: None, last: None, source: Source::Live, exch_ts: None, dated: at };
    e.on_tick(at, &Tick::new(id, q), out);
}

#[test]
fn closed_market_is_quiet_not_stale_open_market_alarms() {
    let (mut e, mut out) = setup();
    tick(&mut e, &mut out, Timestamp::from_secs(1), "735");
    // 16:00 IST: the market closed at 15:30; the feed is silent for hours.
    e.on_feed(Timestamp::from_secs(2), FeedEvent::Market(false), &mut out);
    let late = Timestamp::from_secs(3 * 3600);
    e.on_timer(late, &mut out);
    assert_eq!(e.alarm(late).0, Alarm::Live, "no stale alarm while closed");
    assert!(!out.notices.iter().any(|n| matches!(n, Notice::Band { .. })), "{:?}", out.notices);
    // Even with the feed down and the price expired, a closed market is not blind.
    e.on_feed(late, FeedEvent::Disconnected, &mut out);
    e.on_timer(late + Duration::from_secs(120), &mut out);
    assert!(e.book().iter().all(|(_, p)| p.blind_since.is_none()));
    // 10:00 IST next day: open, the same silence is an alarm.
    let open = late + Duration::from_secs(3600);
    e.on_feed(open, FeedEvent::SubscribedAll, &mut out);
    e.on_feed(open, FeedEvent::Market(true), &mut out);
    e.on_timer(open + Duration::from_secs(1), &mut out);
    assert_eq!(e.alarm(open + Duration::from_secs(1)).0, Alarm::Stale);
}

#[test]
fn close_decided_while_closed_is_held_until_the_open() {
    let (mut e, mut out) = setup();
    e.on_feed(Timestamp::from_secs(1), FeedEvent::Market(false), &mut out);
    // A post-close print through the stop: the decision is made, the order is held.
    tick(&mut e, &mut out, Timestamp::from_secs(2), "575.00");
    assert!(out.orders.is_empty(), "{:?}", out.orders);
    assert!(out.notices.iter().any(|n| matches!(n, Notice::HeldForMarket { .. })));
    assert!(matches!(e.book().iter().next().map(|(_, p)| &p.state), Some(PosState::Closing(_))));
    for s in 3..100 {
        e.on_timer(Timestamp::from_secs(s), &mut out);
        assert!(out.orders.is_empty(), "nothing is sent while closed");
    }
    e.on_feed(Timestamp::from_secs(100), FeedEvent::Market(true), &mut out);
    let placed: Vec<_> = out.orders.iter().filter(|o| matches!(o, OrderAction::Place { .. })).collect();
    assert_eq!(placed.len(), 1, "sent at the open: {:?}", out.orders);
}
