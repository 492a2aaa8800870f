//! Driver for `scripts/bench-icount-upstox`: decodes Upstox `FeedResponse` frames for a given
//! number of steps, to be counted under `valgrind --tool=callgrind`. Two run lengths are
//! differenced by the script, so set-up cost (process start, fixture parsing) cancels.
//!
//! The frames are the reference frames of `tests/fixtures/upstox/frames.json`, built by Google's
//! protobuf encoder from the Upstox SDK's descriptor: `ltpc_one` (one instrument, mode `ltpc`,
//! 67 bytes) and `full_market` (one instrument, mode `full`: five depth levels, greeks, three
//! candles; 520 bytes).
//!
//! ```text
//! icount_upstox <mode> <steps>
//!   decode_ltpc   upstox_proto::decode of the ltpc frame (entry handed to a sink)
//!   decode_full   upstox_proto::decode of the full frame
//!   apply_ltpc    feed::upstox::apply_frame of the ltpc frame: decode, key lookup, price
//!                 conversion (Price::from_f64 at scale 2), tick queued for the engine
//!   apply_full    the same for the full frame
//!   noop          the loop and the sink without decoding (harness share, to subtract)
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use tickguard::core::engine::EngineConfig;
use tickguard::feed::session::{Ctx, FeedShared};
use tickguard::feed::upstox::{FrameBuf, UpstoxShared, apply_frame};
use tickguard::feed::upstox_proto::{self, Entry, Sink};
use tickguard::runtime::clock::Clock;
use tickguard::runtime::{AppEngine, engine_task};

struct Acc(u64);

impl Sink for Acc {
    #[inline(never)]
    fn entry(&mut self, e: &Entry<'_>) {
        self.0 = self.0.wrapping_add(e.key.len() as u64 ^ e.last.map_or(0, |l| l.ltp.to_bits()));
    }
}

fn frame(name: &str) -> Vec<u8> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/upstox/frames.json")).expect("fixtures");
    let hex = v["frames"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .and_then(|f| f["hex"].as_str())
        .expect("frame");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

#[inline(never)]
fn run_decode(bytes: &[u8], steps: u64) -> u64 {
    let mut acc = Acc(0);
    for _ in 0..steps {
        let _ = black_box(upstox_proto::decode(black_box(bytes), &mut acc));
    }
    acc.0
}

#[inline(never)]
fn run_noop(bytes: &[u8], steps: u64) -> u64 {
    let mut acc = Acc(0);
    for _ in 0..steps {
        let b = black_box(bytes);
        acc.0 = acc.0.wrapping_add(b.len() as u64);
    }
    acc.0
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(steps)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: icount_upstox <decode_ltpc|decode_full|apply_ltpc|apply_full|noop> <steps>");
        return ExitCode::from(2);
    };
    let ltpc = frame("ltpc_one");
    let full = frame("full_market");
    match mode.as_str() {
        "decode_ltpc" => println!("mode={mode} steps={steps} acc={}", run_decode(&ltpc, steps)),
        "decode_full" => println!("mode={mode} steps={steps} acc={}", run_decode(&full, steps)),
        "noop" => println!("mode={mode} steps={steps} acc={}", run_noop(&ltpc, steps)),
        "apply_ltpc" | "apply_full" => {
            let bytes = if mode == "apply_ltpc" { &ltpc } else { &full };
            let clock = Clock::new();
            let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
            let id = engine.add_instrument("BOSCHLTD").expect("room");
            let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let (_task, handle, _broker) = engine_task(engine, clock, stop_rx);
            let ctx = Ctx { shared: Arc::new(FeedShared::default()), engine: handle.clone(), clock };
            let mut keys = BTreeMap::new();
            keys.insert("BOSCHLTD".to_string(), "NSE_EQ|INE323A01026".to_string());
            let ux = UpstoxShared::new("/nonexistent".into(), keys);
            ux.add(id, "BOSCHLTD");
            let segments = vec!["NSE_EQ".to_string()];
            let mut buf = FrameBuf::default();
            let mut ticks = 0u64;
            for _ in 0..steps {
                let (out, _) = apply_frame(black_box(bytes), &ux, &ctx, &mut buf, &segments);
                ticks += u64::from(out.ticks);
            }
            println!("mode={mode} steps={steps} ticks={ticks} queued={}", handle.ticks.stats().pushed);
        }
        _ => {
            eprintln!("unknown mode {mode}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
