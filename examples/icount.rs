//! Driver for `scripts/bench-icount`: runs the engine benchmark scenario (or price parsing)
//! for a given number of steps, to be counted under `valgrind --tool=callgrind`. Two run
//! lengths are differenced by the script, so set-up cost cancels.
//!
//! ```text
//! icount <mode> <steps>
//!   tick      on_tick, ring over all 1 024 instruments (256 positions on 192 of them)
//!   held      on_tick, ring over the 192 instruments carrying positions only
//!   noop      the tick loop without the on_tick call (harness share, to subtract)
//!   parse     Price::parse, alternating "65432.10000000" and "0.00001234"
//!   from_f64  Price::from_f64 at scale 8, alternating 65432.1 and 0.00001234
//! ```

use std::hint::black_box;
use std::process::ExitCode;

use tickguard::core::price::Price;

#[path = "../benches/scenario/mod.rs"]
mod scenario;

use scenario::{F64_INPUTS, PARSE_INPUTS, Ring, Scenario};

#[inline(never)]
fn run_ticks(s: &mut Scenario, steps: u64) {
    for _ in 0..steps {
        s.step();
    }
}

#[inline(never)]
fn run_noop(s: &mut Scenario, steps: u64) {
    for _ in 0..steps {
        s.step_noop();
    }
}

#[inline(never)]
fn run_parse(steps: u64) -> i64 {
    let mut acc = 0i64;
    for k in 0..steps {
        let text = PARSE_INPUTS[(k & 1) as usize];
        acc = acc.wrapping_add(Price::parse(black_box(text)).map_or(0, Price::units));
    }
    acc
}

#[inline(never)]
fn run_from_f64(steps: u64) -> i64 {
    let mut acc = 0i64;
    for k in 0..steps {
        let v = F64_INPUTS[(k & 1) as usize];
        acc = acc.wrapping_add(Price::from_f64(black_box(v), black_box(8)).map_or(0, Price::units));
    }
    acc
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(steps)) = (args.get(1), args.get(2).and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: icount <tick|held|noop|parse|from_f64> <steps>");
        return ExitCode::from(2);
    };
    match mode.as_str() {
        "tick" | "held" | "noop" => {
            let ring = if mode == "held" { Ring::Held } else { Ring::All };
            let mut s = Scenario::new(ring);
            let before = s.ticks_accepted();
            if mode == "noop" {
                run_noop(&mut s, steps);
            } else {
                run_ticks(&mut s, steps);
            }
            s.check();
            let accepted = s.ticks_accepted() - before;
            println!("mode={mode} steps={steps} ring={} accepted={accepted}", s.ring_len());
        }
        "parse" => println!("mode=parse steps={steps} acc={}", run_parse(steps)),
        "from_f64" => println!("mode=from_f64 steps={steps} acc={}", run_from_f64(steps)),
        _ => {
            eprintln!("unknown mode {mode}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
