//! Driver of `scripts/bench-peers`: the same Binance `bookTicker` frames through tickguard's
//! decode-and-act path and through a `serde_json` decode into the same tick, counted under
//! callgrind (two run lengths differenced, like `scripts/bench-icount`) and timed natively.
//!
//! ```text
//! feed_peers gen <file>                 write the frames (one per line) the peers all read
//! feed_peers <mode> <file> <steps>      run one mode for `steps` frames (for callgrind)
//! feed_peers time <file> <steps> [rounds]  time every mode natively: best of `rounds` (3), ns per frame
//!
//! modes:
//!   tg          decode + symbol look-up + engine.on_tick (cache update + level checks)
//!   tg-decode   decode + symbol look-up into a Tick (no engine)
//!   decode      the decode alone (bytes → Frame)
//!   serde       serde_json decode + the same look-up into the same Tick (no engine)
//!   serde-full  serde_json decode + look-up + engine.on_tick
//!   noop        the loop alone (frame walk, clock), to subtract
//! ```
//!
//! The engine is the benchmark scenario of `benches/scenario/mod.rs` (1 024 instruments, 256
//! positions, levels far from the prices: the common path). The look-up is the feed
//! session's own (`FeedShared::lookup`).

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use serde::Deserialize;
use tickguard::core::price::Price;
use tickguard::core::time::Timestamp;
use tickguard::core::types::{InstrumentId, Quote, Source, Symbol, Tick};
use tickguard::feed::binance::{self, Frame};
use tickguard::feed::session::FeedShared;
use tickguard::limits::MAX_INSTRUMENTS;

#[path = "../benches/scenario/mod.rs"]
mod scenario;

const FRAMES: usize = 8 * MAX_INSTRUMENTS;

fn symbol(i: usize) -> String {
    format!("S{i:04}USDT")
}

/// Same prices as the scenario's (`base_units`), so no level is ever touched.
fn base_units(i: usize) -> i64 {
    let mantissa = 1_000 + (i as i64 * 7_919) % 9_000;
    let tier = (i % 9) as u32;
    mantissa * 10_i64.pow(tier + 1)
}

/// Fixed-point units (8 decimals) as Binance writes them: `"25.35190000"`.
fn decimal(units: i64) -> String {
    format!("{}.{:08}", units / 100_000_000, units % 100_000_000)
}

fn gen_frames() -> Vec<String> {
    let mut v = Vec::with_capacity(FRAMES);
    let mut u = 400_900_217u64;
    for round in 0..FRAMES / MAX_INSTRUMENTS {
        for k in 0..MAX_INSTRUMENTS {
            let i = (k * 617 + round * 13) % MAX_INSTRUMENTS;
            let base = base_units(i);
            let bid = base + base / 1_000 * ((((round * 31 + i * 17) % 9) as i64) - 4);
            let ask = bid + (base / 10_000).max(1);
            let s = symbol(i);
            v.push(format!(
                r#"{{"stream":"{}@bookTicker","data":{{"u":{u},"s":"{s}","b":"{}","B":"31.21000000","a":"{}","A":"40.66000000"}}}}"#,
                s.to_ascii_lowercase(),
                decimal(bid),
                decimal(ask)
            ));
            u += 1;
        }
    }
    v
}

#[derive(Deserialize)]
struct Combined<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    stream: &'a str,
    #[serde(borrow)]
    data: BookTicker<'a>,
}

/// Only the fields the tick needs; serde_json skips the others (`u`, `B`, `A`).
#[derive(Deserialize)]
struct BookTicker<'a> {
    s: &'a str,
    b: &'a str,
    a: &'a str,
}

struct Bench {
    frames: Vec<Vec<u8>>,
    shared: FeedShared,
    s: scenario::Scenario,
    at: usize,
    clock_ns: u64,
}

impl Bench {
    fn new(path: &str) -> Result<Bench, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        let frames: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
        if frames.is_empty() {
            return Err(format!("{path}: no frames"));
        }
        let insts: Vec<(InstrumentId, Symbol)> = (0..MAX_INSTRUMENTS)
            .map(|i| (InstrumentId(i as u16), Symbol::try_from(symbol(i).as_str()).unwrap_or_default()))
            .collect();
        let mut b = Bench {
            frames,
            shared: FeedShared::new(&insts),
            s: scenario::Scenario::new(scenario::Ring::All),
            at: 0,
            clock_ns: 10_000_000_000,
        };
        // Warm-up: every frame once through the full path.
        for _ in 0..b.frames.len() {
            b.step_tg();
        }
        Ok(b)
    }

    #[inline(always)]
    fn next(&mut self) -> (usize, Timestamp) {
        let i = self.at;
        self.at = if i + 1 == self.frames.len() { 0 } else { i + 1 };
        self.clock_ns += 1_000;
        (i, Timestamp::from_nanos(self.clock_ns))
    }

    /// tickguard: bytes → Frame → look-up → Tick.
    #[inline(always)]
    fn tg_tick(&self, i: usize, dated: Timestamp) -> Option<Tick> {
        match binance::decode(black_box(&self.frames[i])) {
            Ok(Frame::Quote { symbol, bid, ask, last, exch_ts }) => {
                let id = self.shared.lookup(symbol)?;
                Some(Tick::new(id, Quote { bid, ask, last, source: Source::Live, exch_ts, dated }))
            }
            _ => None,
        }
    }

    /// serde_json: bytes → struct → look-up → prices → Tick.
    #[inline(always)]
    fn serde_tick(&self, i: usize, dated: Timestamp) -> Option<Tick> {
        let c: Combined<'_> = serde_json::from_slice(black_box(&self.frames[i])).ok()?;
        let id = self.shared.lookup(c.data.s.as_bytes())?;
        let bid = Price::parse(c.data.b).ok();
        let ask = Price::parse(c.data.a).ok();
        Some(Tick::new(id, Quote { bid, ask, last: None, source: Source::Live, exch_ts: None, dated }))
    }

    #[inline(always)]
    fn act(&mut self, tick: Option<Tick>, dated: Timestamp) {
        if let Some(t) = tick {
            let now = Timestamp::from_nanos(dated.as_nanos() + 20_000);
            self.s.engine.on_tick(now, &t, &mut self.s.actions);
            black_box(&mut *self.s.actions);
        }
    }

    #[inline(never)]
    fn step_tg(&mut self) {
        let (i, dated) = self.next();
        let t = self.tg_tick(i, dated);
        self.act(t, dated);
    }

    #[inline(never)]
    fn step_tg_decode(&mut self) {
        let (i, dated) = self.next();
        black_box(self.tg_tick(i, dated));
    }

    #[inline(never)]
    fn step_decode(&mut self) {
        let (i, _) = self.next();
        let _ = black_box(binance::decode(black_box(&self.frames[i])));
    }

    #[inline(never)]
    fn step_serde(&mut self) {
        let (i, dated) = self.next();
        black_box(self.serde_tick(i, dated));
    }

    #[inline(never)]
    fn step_serde_full(&mut self) {
        let (i, dated) = self.next();
        let t = self.serde_tick(i, dated);
        self.act(t, dated);
    }

    #[inline(never)]
    fn step_noop(&mut self) {
        let (i, dated) = self.next();
        black_box((&self.frames[i], dated));
    }

    fn run(&mut self, mode: &str, steps: u64) -> Result<(), String> {
        let f: fn(&mut Bench) = match mode {
            "tg" => Bench::step_tg,
            "tg-decode" => Bench::step_tg_decode,
            "decode" => Bench::step_decode,
            "serde" => Bench::step_serde,
            "serde-full" => Bench::step_serde_full,
            "noop" => Bench::step_noop,
            _ => return Err(format!("unknown mode {mode}")),
        };
        for _ in 0..steps {
            f(self);
        }
        Ok(())
    }

    /// The engine stayed on the common path and every frame became a tick.
    fn check(&self, mode: &str) -> Result<(), String> {
        let st = self.s.engine.stats();
        if st.decisions != 0 || st.ticks_superseded != 0 {
            return Err(format!("{mode}: off the common path: {st:?}"));
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["gen", path] => {
            let text = gen_frames().join("\n") + "\n";
            std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))
        }
        ["time", path, steps, rest @ ..] => steps.parse::<u64>().map_err(|e| e.to_string()).and_then(|steps| {
            let rounds = match rest {
                [r] => r.parse::<u32>().map_err(|e| format!("rounds: {e}"))?,
                _ => 3,
            };
            let mut b = Bench::new(path)?;
            // Every mode produces the same ticks.
            for i in 0..b.frames.len() {
                let d = Timestamp::from_nanos(1);
                if b.tg_tick(i, d) != b.serde_tick(i, d) || b.tg_tick(i, d).is_none() {
                    return Err(format!("frame {i}: tickguard and serde_json disagree"));
                }
            }
            // Rounds go round the modes, so that a disturbance of the machine (another process,
            // a noisy neighbour) spoils one round of several modes, not every round of one.
            const MODES: [&str; 6] = ["noop", "decode", "tg-decode", "serde", "tg", "serde-full"];
            let mut best = [f64::MAX; MODES.len()];
            for _ in 0..rounds {
                for (mode, best) in MODES.iter().zip(best.iter_mut()) {
                    let t0 = Instant::now();
                    b.run(mode, steps)?;
                    *best = best.min(t0.elapsed().as_nanos() as f64 / steps as f64);
                }
            }
            for (mode, best) in MODES.iter().zip(best) {
                b.check(mode)?;
                println!("mode={mode} ns_per_frame={best:.1}");
            }
            Ok(())
        }),
        [mode, path, steps] => steps.parse::<u64>().map_err(|e| e.to_string()).and_then(|steps| {
            let mut b = Bench::new(path)?;
            b.run(mode, steps)?;
            b.check(mode)?;
            println!("mode={mode} steps={steps}");
            Ok(())
        }),
        _ => Err("usage: feed_peers gen <file> | feed_peers <tg|tg-decode|decode|serde|serde-full|noop|time> <file> <steps>".into()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feed_peers: {e}");
            ExitCode::from(1)
        }
    }
}
