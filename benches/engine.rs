//! Criterion benchmarks of the engine hot path: `Engine::on_tick` at the appliance's real
//! capacities (1 024 instruments, 256 positions) and price parsing.
//!
//! Run: `cargo bench --bench engine`. Figures and the instruction-count companion
//! (`scripts/bench-icount`) are in `docs/performance.md`. Nothing here asserts a timing.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tickguard::core::price::Price;

mod scenario;

use scenario::{F64_INPUTS, PARSE_INPUTS, Ring, Scenario};

fn on_tick(c: &mut Criterion) {
    let mut g = c.benchmark_group("on_tick");
    g.throughput(Throughput::Elements(1));
    for (name, ring) in
        [("1024i_256p/all_instruments", Ring::All), ("1024i_256p/held_instruments", Ring::Held)]
    {
        let mut s = Scenario::new(ring);
        g.bench_function(name, |b| b.iter(|| s.step()));
        s.check();
    }
    // The same loop without the engine call: the harness's own share.
    let mut s = Scenario::new(Ring::All);
    g.bench_function("harness_only", |b| b.iter(|| s.step_noop()));
    g.finish();
}

fn price(c: &mut Criterion) {
    let mut g = c.benchmark_group("price");
    g.throughput(Throughput::Elements(1));
    for text in PARSE_INPUTS {
        g.bench_function(format!("parse/{text}"), |b| b.iter(|| Price::parse(black_box(text))));
    }
    for v in F64_INPUTS {
        g.bench_function(format!("from_f64/{v}"), |b| b.iter(|| Price::from_f64(black_box(v), black_box(8))));
    }
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the build machine has two shared cores.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = on_tick, price
}
criterion_main!(benches);
