//! Proves that the engine's per-event paths allocate nothing, on a full-size engine.
//!
//! This binary installs a counting global allocator (hence its own test binary). Counting is
//! armed per thread, so the test harness's own threads never disturb it. The engine is the
//! production size, `Engine<MAX_INSTRUMENTS, MAX_POSITIONS>`, boxed, with every instrument
//! quoted and every position slot taken; then many `on_tick` calls (including ticks that make
//! close decisions, one of which crosses a whole instrument's positions at once), `on_timer`
//! sweeps (staleness, blindness, retries, look-ups), broker outcomes and feed changes are
//! counted, phase by phase. Every count must be zero.

use std::time::Duration;

use tickguard::core::book::{PosState, PositionSpec};
use tickguard::core::engine::{
    Actions, BrokerReport, Command, Engine, EngineConfig, FeedEvent, Notice, OrderAction, Outcome,
};
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{
    BlindPolicy, ClientId, InstrumentId, PosIdx, PositionId, Quote, Side, Source, Symbol, Tick,
};
use tickguard::limits::{MAX_INSTRUMENTS, MAX_POSITIONS};

mod counting;
use counting::count;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

// ----- the scenario -------------------------------------------------------------------------

type Big = Engine<MAX_INSTRUMENTS, MAX_POSITIONS>;
type Out = Actions<MAX_POSITIONS>;

const T0: Timestamp = Timestamp::from_secs(10_000);
/// Positions on the first instrument; the rest get one instrument each.
const CROWD: usize = MAX_POSITIONS / 2;

fn price(cents: i64) -> Price {
    Price::from_units(cents * 1_000_000)
}

fn live(inst: usize, bid_cents: i64, at: Timestamp) -> Tick {
    let q = Quote {
        bid: Some(price(bid_cents)),
        ask: Some(price(bid_cents + 5)),
        last: Some(price(bid_cents + 2)),
        source: Source::Live,
        exch_ts: Some(1_700_000_000_000),
        dated: at,
    };
    Tick::new(InstrumentId(inst as u16), q)
}

fn symbol(i: usize) -> String {
    format!("SYM{i:04}")
}

/// Instrument of position `k`.
fn inst_of(k: usize) -> usize {
    if k < CROWD { 0 } else { k - CROWD + 1 }
}

fn setup(e: &mut Big, out: &mut Out) {
    for i in 0..MAX_INSTRUMENTS {
        let id = e.add_instrument(&symbol(i)).expect("room for every instrument");
        assert_eq!(usize::from(id.0), i);
    }
    assert!(e.add_instrument("ONE_TOO_MANY").is_err());
    for k in 0..MAX_POSITIONS {
        // Longs and shorts, stop 90.00 / target 110.00 around an entry of 100.00; a third
        // flatten when blind.
        let side = if k % 2 == 0 { Side::Long } else { Side::Short };
        let (sl, tp) = match side {
            Side::Long => (price(9_000), price(11_000)),
            Side::Short => (price(11_000), price(9_000)),
        };
        let spec = PositionSpec {
            id: PositionId::try_from(format!("p{k}").as_str()).expect("fits"),
            symbol: Symbol::try_from(symbol(inst_of(k)).as_str()).expect("fits"),
            side,
            qty: Qty::from_units(((k as i64 % 7) + 1) * 100_000_000),
            entry: price(10_000),
            stop_loss: Some(sl),
            take_profit: Some(tp),
            blind_policy: if k % 3 == 0 { BlindPolicy::Flatten } else { BlindPolicy::Alert },
        };
        e.on_command(T0, Command::Register(spec), out).expect("room for every position");
    }
    assert_eq!(e.book().active(), MAX_POSITIONS);
    e.on_feed(T0, FeedEvent::SubscribedAll, out);
    for i in 0..MAX_INSTRUMENTS {
        e.on_tick(T0, &live(i, 10_000, T0), out);
        assert!(out.orders.is_empty());
    }
    assert!(e.cache().iter().all(|(_, entry)| entry.quote.is_some()));
}

fn body() {
    let cfg = EngineConfig { rest_enabled: true, ..EngineConfig::default() };
    let mut e: Box<Big> = Box::new(Engine::new(cfg, T0));
    let mut out: Box<Out> = Box::new(Actions::new());
    setup(&mut e, &mut out);
    // Room for the reports, reserved before counting.
    let mut sent: Vec<(PosIdx, ClientId)> = Vec::with_capacity(MAX_POSITIONS);
    let mut now = T0;
    // The counter works on this thread.
    let (n, b) = count(|| Box::new(now));
    assert!(n >= 1 && *b == T0);

    // 1. Quiet ticks on every instrument, positions included: judged, never crossing.
    let (n, ()) = count(|| {
        for round in 0..20i64 {
            for i in 0..MAX_INSTRUMENTS {
                now = now + Duration::from_micros(50);
                let bid = 9_100 + (round * 37 + i as i64) % 1_800;
                e.on_tick(now, &live(i, bid, now), &mut out);
                assert!(out.orders.is_empty());
            }
        }
    });
    assert_eq!(n, 0, "quiet on_tick allocated");

    // 2. Timer sweeps, with prices going stale on the way (band notices).
    let (n, ()) = count(|| {
        for _ in 0..120 {
            now = now + Duration::from_millis(500);
            e.on_timer(now, &mut out);
        }
    });
    assert_eq!(n, 0, "on_timer sweeps allocated");

    // 3. A gap on the crowded instrument: a close decision for each of its positions, in one
    //    call.
    now = now + Duration::from_millis(1);
    let (n, ()) = count(|| {
        e.on_tick(now, &live(0, 5_000, now), &mut out);
        assert_eq!(out.orders.len(), CROWD);
        let decisions = out.notices.iter().filter(|n| matches!(n, Notice::Decision { .. })).count();
        assert_eq!(decisions, CROWD);
        for o in out.orders.iter() {
            if let OrderAction::Place { pos, client_id, .. } = o {
                sent.push((*pos, client_id.clone()));
            }
        }
    });
    assert_eq!(n, 0, "on_tick deciding {CROWD} closes allocated");

    // 4. One crossing tick per instrument for half of the others: one close decision each.
    //    The rest stay open, to go blind later.
    let (n, ()) = count(|| {
        for k in CROWD..CROWD + CROWD / 2 {
            now = now + Duration::from_micros(10);
            let bid = if k % 2 == 0 { 8_000 } else { 12_000 };
            e.on_tick(now, &live(inst_of(k), bid, now), &mut out);
            assert_eq!(out.orders.len(), 1);
            if let Some(OrderAction::Place { pos, client_id, .. }) = out.orders.first() {
                sent.push((*pos, client_id.clone()));
            }
        }
    });
    assert_eq!(n, 0, "on_tick deciding single closes allocated");
    assert_eq!(sent.len(), CROWD + CROWD / 2);

    // 5. Broker outcomes: rejections (backoff), unknowns (look-ups), partial fills (the
    //    remainder at once), working orders.
    let (n, ()) = count(|| {
        for (j, (pos, client_id)) in sent.iter().enumerate() {
            let outcome = match j % 4 {
                0 => Outcome::Rejected,
                1 => Outcome::Unknown,
                2 => Outcome::PartiallyFilled { executed: Qty::from_units(50_000_000), price: None },
                _ => Outcome::Working { executed: Qty::ZERO, price: None },
            };
            let r = BrokerReport { pos: *pos, client_id: client_id.clone(), outcome, sent_at: None };
            e.on_broker(now, &r, &mut out);
        }
    });
    assert_eq!(n, 0, "on_broker allocated");

    // 6. Sweeps with retries and look-ups due, the feed dropping, REST failing, prices
    //    expiring: blindness and blind flattens, CloseFailed after repeated rejections.
    let (n, ()) = count(|| {
        e.on_feed(now, FeedEvent::Disconnected, &mut out);
        for i in 0..=MAX_POSITIONS - CROWD {
            for _ in 0..3 {
                e.on_feed(now, FeedEvent::RestError(InstrumentId(i as u16)), &mut out);
            }
        }
        let mut reply: Out = Actions::new();
        for _ in 0..1_500u32 {
            now = now + Duration::from_millis(500);
            e.on_timer(now, &mut out);
            // Reject every new attempt so that retries keep coming, up to CloseFailed.
            for o in out.orders.iter() {
                if let OrderAction::Place { pos, client_id, .. } = o {
                    let r = BrokerReport {
                        pos: *pos,
                        client_id: client_id.clone(),
                        outcome: Outcome::Rejected,
                        sent_at: None,
                    };
                    e.on_broker(now, &r, &mut reply);
                }
            }
        }
    });
    assert_eq!(n, 0, "on_timer with retries, look-ups and blindness allocated");
    assert!(e.book().iter().any(|(_, p)| matches!(p.state, PosState::CloseFailed(_))));
    let flattened = e.book().iter().filter(|(_, p)| p.decision.is_some_and(|d| d.price.is_none())).count();
    assert!(flattened > 0, "blind flattens happened");

    // 7. Everything live again: a quiet tick everywhere once more.
    let (n, ()) = count(|| {
        e.on_feed(now, FeedEvent::SubscribedAll, &mut out);
        for i in 0..MAX_INSTRUMENTS {
            now = now + Duration::from_micros(50);
            e.on_tick(now, &live(i, 10_000, now), &mut out);
        }
        e.on_timer(now + Duration::from_secs(1), &mut out);
    });
    assert_eq!(n, 0, "on_tick after recovery allocated");
    assert_eq!(e.stats().notices_dropped, 0);
}

#[test]
fn engine_event_paths_allocate_nothing_on_a_full_engine() {
    // A roomy stack: the engine is built on the stack before it is boxed.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(body)
        .expect("spawn")
        .join()
        .expect("no allocation on the event paths");
}

#[test]
fn the_counter_counts() {
    let (n, v) = count(|| vec![1u8; 16]);
    assert!(n >= 1 && v.len() == 16);
}
