//! The Upstox per-tick path allocates nothing: frame bytes → protobuf decode → key lookup →
//! price conversion → tick queue (`feed::upstox::apply_frame`), for `ltpc`, `full`,
//! `option_greeks` and `market_info` frames, a frame of many instruments, a frame repeating a
//! key, and a malformed frame.
//!
//! This binary installs a counting global allocator (hence its own test binary); counting is
//! armed per thread. The scratch space (`FrameBuf`), the key table and the tick queue are
//! allocated once, before counting starts, as the session does once per run.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use support::upstox_feed::{feed_for, feed_frame, market_info_frame};
use tickguard::core::engine::EngineConfig;
use tickguard::core::types::InstrumentId;
use tickguard::feed::session::{Ctx, FeedShared};
use tickguard::feed::upstox::{FrameBuf, UpstoxShared, apply_frame};
use tickguard::feed::upstox_proto::{self, Entry, Sink};
use tickguard::runtime::clock::Clock;
use tickguard::runtime::{AppEngine, engine_task};

mod counting;
use counting::count;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

struct Nothing(u64);

impl Sink for Nothing {
    fn entry(&mut self, e: &Entry<'_>) {
        self.0 += e.key.len() as u64 + u64::from(e.last.is_some());
    }
}

fn key(i: usize) -> String {
    format!("NSE_EQ|INE{i:06}A01")
}

#[test]
fn the_upstox_per_tick_path_allocates_nothing() {
    let clock = Clock::new();
    let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
    let mut keys = BTreeMap::new();
    let mut ids = Vec::new();
    for i in 0..300 {
        let sym = format!("SYM{i:03}");
        ids.push((engine.add_instrument(&sym).expect("room"), sym.clone()));
        keys.insert(sym, key(i));
    }
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_task, handle, _broker) = engine_task(engine, clock, stop_rx);
    let shared = Arc::new(FeedShared::default());
    let ctx = Ctx { shared: shared.clone(), engine: handle.clone(), clock };
    let ux = UpstoxShared::new("/nonexistent".into(), keys);
    for (id, sym) in &ids {
        assert!(ux.add(*id, sym));
    }
    let segments = vec!["NSE_EQ".to_string()];
    let mut buf = FrameBuf::default();

    let one = |mode: &str, i: usize, ltp: f64| {
        feed_frame(1, vec![(key(i), feed_for(&key(i), mode, ltp, 1_767_765_256_000))])
    };
    let many = feed_frame(
        1,
        (0..200)
            .map(|i| {
                (key(i), feed_for(&key(i), "ltpc", 100.0 + i as f64 * 0.05, 1_767_765_256_000 + i as i64))
            })
            .collect(),
    );
    let mut repeated = one("ltpc", 7, 575.0);
    repeated.extend(one("ltpc", 7, 576.0)); // two entries of one key in one frame
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("ltpc", one("ltpc", 1, 575.0)),
        ("full", one("full", 2, 36123.45)),
        ("option_greeks", one("option_greeks", 3, 112.35)),
        ("market_info", market_info_frame(&[("NSE_EQ".into(), 2), ("NSE_FO".into(), 3)])),
        ("many", many),
        ("repeated_key", repeated),
        ("unknown_key", feed_frame(1, vec![("NSE_EQ|NOPE".into(), feed_for("NSE_EQ|NOPE", "ltpc", 1.0, 1))])),
        ("malformed", vec![0x12, 0x05, 0x0a]),
    ];
    // Warm-up: whatever is lazily set up (locks, the queue's slots) is set up here.
    for (_, f) in &frames {
        let _ = apply_frame(f, &ux, &ctx, &mut buf, &segments);
    }
    for (name, f) in &frames {
        let (n, (out, err)) = count(|| {
            let mut last = (Default::default(), None);
            for _ in 0..1000 {
                last = apply_frame(f, &ux, &ctx, &mut buf, &segments);
            }
            last
        });
        assert_eq!(n, 0, "{name}: {n} allocations in 1000 frames");
        match *name {
            "malformed" => assert!(err.is_some()),
            "many" => assert_eq!(out.ticks, 200),
            "repeated_key" => assert_eq!(out.ticks, 1, "the last entry of a key wins"),
            "market_info" => assert_eq!(out.market, Some(true)),
            "unknown_key" => assert_eq!(out.ticks, 0),
            _ => assert_eq!(out.ticks, 1, "{name}"),
        }
        // The decoder alone, too.
        let (n, _) = count(|| {
            let mut s = Nothing(0);
            for _ in 0..1000 {
                let _ = upstox_proto::decode(f, &mut s);
            }
            s.0
        });
        assert_eq!(n, 0, "{name}: decoder allocated");
    }
    let q = handle.ticks.stats();
    assert!(q.pushed > 200_000, "{q:?}");
    assert_eq!(buf_id_check(&ux), Some("NSE_EQ|INE000001A01".to_string()));
}

fn buf_id_check(ux: &UpstoxShared) -> Option<String> {
    ux.key_of(InstrumentId(1))
}
