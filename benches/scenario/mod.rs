//! The benchmark scenario shared by `benches/engine.rs` (criterion) and `examples/icount.rs`
//! (callgrind, driven by `scripts/bench-icount`), so both measure exactly the same thing.
//!
//! An `Engine<MAX_INSTRUMENTS, MAX_POSITIONS>` (1 024 instruments, 256 positions) with every
//! instrument interned and subscribed, and 256 positions spread over 192 instruments (64 of
//! them carry two positions, one long and one short). Every level is far from the price, so no
//! tick closes anything: this is the common path. Ticks are pre-built live bookTicker-like
//! quotes (bid and ask) in a ring; the measured step only stamps the tick's `dated`, advances
//! the clock and calls `on_tick`.

// Each of the two targets including this module uses a subset of it.
#![allow(dead_code)]

use std::hint::black_box;

use tickguard::core::book::PositionSpec;
use tickguard::core::engine::{Actions, Command, Engine, EngineConfig, FeedEvent};
use tickguard::core::price::{Price, Qty, SCALE};
use tickguard::core::time::Timestamp;
use tickguard::core::types::{BlindPolicy, PositionId, Quote, Side, Source, Symbol, Tick};
use tickguard::limits::{MAX_INSTRUMENTS, MAX_POSITIONS};

/// The engine at the appliance's real capacities.
pub type BenchEngine = Engine<MAX_INSTRUMENTS, MAX_POSITIONS>;
/// Its output buffer.
pub type BenchActions = Actions<MAX_POSITIONS>;

/// Instruments carrying at least one position (positions `k` and `k + 192` share one).
const HELD: usize = 192;
/// Spacing of held instruments over the id range (`0, 5, 10, ... 955`).
const HELD_STRIDE: usize = 5;
/// Passes over the instruments in the ring (different prices each pass). Kept small so the
/// ring (about 150 bytes a tick) adds little cache traffic of its own.
const ROUNDS: usize = 2;
/// Clock step between ticks: 1 µs (so 1 M ticks/s of feed time).
const TICK_EVERY_NS: u64 = 1_000;
/// Receive-to-engine latency: `now` is this much after the tick's `dated`.
const LATENCY_NS: u64 = 20_000;

/// Typical Binance decimal strings for the parsing benchmarks.
pub const PARSE_INPUTS: [&str; 2] = ["65432.10000000", "0.00001234"];
/// The same values as floats (what a protobuf venue sends), converted at scale 8.
pub const F64_INPUTS: [f64; 2] = [65432.1, 0.000_012_34];

/// Which instruments the tick ring covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    /// All 1 024 instruments (3 in 4 ticks hit an instrument without positions).
    All,
    /// Only the 192 instruments that carry positions (every tick judges 1 or 2 positions).
    Held,
}

/// Mid price of instrument `i` in units of 10^-8: from 0.0001 to about 100 000, so both
/// tiny and large prices appear.
fn base_units(i: usize) -> i64 {
    let mantissa = 1_000 + (i as i64 * 7_919) % 9_000; // 1 000 ..= 9 999
    let tier = (i % 9) as u32; // 10^-4 .. 10^4
    mantissa * 10_i64.pow(tier + 1)
}

/// The live state of one benchmark run.
pub struct Scenario {
    /// The engine (boxed: it is large).
    pub engine: Box<BenchEngine>,
    /// The output buffer (boxed: it holds room for 256 orders and 576 notices).
    pub actions: Box<BenchActions>,
    ring: Vec<Tick>,
    at: usize,
    clock_ns: u64,
}

impl Scenario {
    /// Builds the engine, registers the positions, builds the ring and runs one warm-up pass
    /// over it (so every ticked instrument has a cached quote and settled rung and band).
    pub fn new(ring: Ring) -> Scenario {
        let boot = Timestamp::from_secs(1);
        let mut engine: Box<BenchEngine> = Box::new(Engine::new(EngineConfig::default(), boot));
        let mut actions: Box<BenchActions> = Box::new(Actions::new());

        for i in 0..MAX_INSTRUMENTS {
            let id = engine.add_instrument(&symbol(i)).expect("room for every instrument");
            assert_eq!(usize::from(id.0), i);
        }
        engine.on_feed(boot, FeedEvent::SubscribedAll, &mut actions);

        for k in 0..MAX_POSITIONS {
            let inst = (k % HELD) * HELD_STRIDE;
            let base = base_units(inst);
            let side = if k % 2 == 0 { Side::Long } else { Side::Short };
            let (sl, tp) = match side {
                Side::Long => (base / 2, base * 2),
                Side::Short => (base * 2, base / 2),
            };
            let spec = PositionSpec {
                id: PositionId::try_from(format!("P{k:04}").as_str()).expect("short id"),
                symbol: Symbol::try_from(symbol(inst).as_str()).expect("short symbol"),
                side,
                qty: Qty::from_units(SCALE),
                entry: Price::from_units(base),
                stop_loss: Some(Price::from_units(sl)),
                take_profit: Some(Price::from_units(tp)),
                blind_policy: BlindPolicy::Alert,
            };
            engine.on_command(boot, Command::Register(spec), &mut actions).expect("registers");
        }
        assert_eq!(engine.book().active(), MAX_POSITIONS);

        let instruments: Vec<usize> = match ring {
            // An odd multiplier permutes 0..1024: feed order is not memory order.
            Ring::All => (0..MAX_INSTRUMENTS).map(|k| (k * 617) % MAX_INSTRUMENTS).collect(),
            Ring::Held => (0..HELD).map(|k| ((k * 61) % HELD) * HELD_STRIDE).collect(),
        };
        let mut ticks = Vec::with_capacity(ROUNDS * instruments.len());
        for round in 0..ROUNDS {
            for &i in &instruments {
                let base = base_units(i);
                // Within ±0.4 % of the mid; the spread is 0.01 %.
                let wobble = base / 1_000 * ((((round * 31 + i * 17) % 9) as i64) - 4);
                let bid = base + wobble;
                let ask = bid + (base / 10_000).max(1);
                let quote = Quote {
                    bid: Some(Price::from_units(bid)),
                    ask: Some(Price::from_units(ask)),
                    last: None,
                    source: Source::Live,
                    exch_ts: Some(1_700_000_000_000),
                    dated: boot, // stamped when sent
                };
                ticks.push(Tick::new(tickguard::core::types::InstrumentId(i as u16), quote));
            }
        }

        let mut s = Scenario { engine, actions, ring: ticks, at: 0, clock_ns: boot.as_nanos() };
        for _ in 0..s.ring.len() {
            s.step();
        }
        s.check();
        s
    }

    /// Ticks in the ring.
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Advances the clock and stamps the next tick of the ring; returns `now` and its index.
    #[inline(always)]
    fn advance(&mut self) -> (Timestamp, usize) {
        let i = self.at;
        self.at = if i + 1 == self.ring.len() { 0 } else { i + 1 };
        self.clock_ns += TICK_EVERY_NS;
        self.ring[i].quote.dated = Timestamp::from_nanos(self.clock_ns);
        (Timestamp::from_nanos(self.clock_ns + LATENCY_NS), i)
    }

    /// One measured step: the next tick through `Engine::on_tick`.
    #[inline(always)]
    pub fn step(&mut self) {
        let (now, i) = self.advance();
        self.engine.on_tick(now, black_box(&self.ring[i]), &mut self.actions);
        black_box(&mut *self.actions);
    }

    /// The same step without the engine call: the harness's own share, to subtract.
    #[inline(always)]
    pub fn step_noop(&mut self) {
        let (now, i) = self.advance();
        black_box((now, &self.ring[i]));
        black_box(&mut *self.actions);
    }

    /// Asserts the run stayed on the common path: every tick accepted, nothing decided.
    pub fn check(&self) {
        let st = self.engine.stats();
        assert_eq!(st.ticks_superseded, 0, "a tick lost to the cache");
        assert_eq!(st.decisions, 0, "a level was touched");
        assert!(self.actions.orders.is_empty() && self.actions.notices.is_empty());
        assert_eq!(self.engine.book().active(), MAX_POSITIONS);
    }

    /// Live ticks the engine accepted so far.
    pub fn ticks_accepted(&self) -> u64 {
        self.engine.stats().ticks[0]
    }
}

fn symbol(i: usize) -> String {
    format!("S{i:04}USDT")
}
