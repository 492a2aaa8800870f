//! A stalled engine turns into bounded `503`s, never into hung API threads: the page, the
//! metrics and the probes still answer, and say so.

mod control_support;

use std::time::{Duration, Instant};

use control_support::{Appliance, http};

#[test]
fn a_stalled_engine_is_reported_not_waited_for() {
    // This binary holds only this test: the fault is process-wide.
    tickguard::runtime::arm_faults(tickguard::runtime::Faults {
        engine_hang: Some(Duration::from_millis(800)),
        ..Default::default()
    });
    let a = Appliance::start();
    assert_eq!(http(a.addr, "GET", "/health", &[], None).status, 200);
    // `/health` answers from the watcher's last look (no engine round-trip of its own): it
    // turns 503 once that look is older than HEARTBEAT_STALE, each answer at once.
    let t0 = Instant::now();
    let r = loop {
        let t = Instant::now();
        let r = http(a.addr, "GET", "/health", &[], None);
        assert!(t.elapsed() < Duration::from_millis(500), "each probe answers at once: {:?}", t.elapsed());
        if r.status == 503 {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "a stalled engine never reported: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    };
    let hung_at = Duration::from_millis(800);
    assert!(
        t0.elapsed() <= hung_at + tickguard::control::api::HEARTBEAT_STALE + Duration::from_secs(1),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(r.json()["engine"]["responding"], false);
    // Several at once, more than the engine's queue: all bounded.
    let addr = a.addr;
    let t0 = Instant::now();
    let many: Vec<_> = (0..12)
        .map(|_| std::thread::spawn(move || http(addr, "GET", "/api/v1/monitoring/status", &[], None).status))
        .collect();
    for m in many {
        assert_eq!(m.join().expect("thread"), 503);
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(http(a.addr, "GET", "/", &[], None).status, 200, "the page still loads and shows the loss");
    let m = http(a.addr, "GET", "/metrics", &[], None);
    assert_eq!(m.status, 200);
    assert!(m.text().contains("tickguard_engine_responding 0"), "{}", m.text());
    let ready = http(a.addr, "GET", "/ready", &[], None);
    assert_eq!(ready.status, 503);
}
