//! The world simulator, in process: seeded random scenarios over the real runtime wiring
//! (`runtime::app::run_with_edges`: journal, restore, watch set, engine task, broker executor,
//! reconciliation, control plane with its real HTTP API on 127.0.0.1) with fake edges
//! (tests/world/venue.rs: a scripted broker and the market; tests/world/feed.rs: feed session
//! and REST fallback) on tokio's paused clock, one runtime per life of the appliance (a restart
//! drops it: kill -9, or SIGTERM first). After every step the invariants of issue 12 are
//! checked (tests/world/scenario.rs). One scenario in 13 steps the wall clock
//! (`runtime::clock::step_wall`, process-wide): it runs alone, the others wait or hold it off
//! (a read/write lock in scenario.rs), and it puts the wall clock back when it ends.
//!
//! - `WORLD_SCENARIOS=N` (default 100; scripts/world-test: 1000) scenarios from
//!   `WORLD_BASE_SEED` (default: the time), two at a time;
//!   `WORLD_SEED=N` replays one scenario and prints its step log (`WORLD_STEPS`, default 40).
//! - Failing seeds are kept in tests/world-regressions/seeds.txt, run every time.
//! - `WORLD_WRITE_DOCS=1` regenerates docs/protection.md (scripts/world-test sets it).
//! - `WORLD_SKIP=invariant,...` (exploration only, never in CI): notes those violations once
//!   and goes on, to see what else breaks behind a violation found everywhere.

#[path = "world/feed.rs"]
mod feed;
#[path = "world/http.rs"]
mod http;
#[path = "world/scenario.rs"]
mod scenario;
#[path = "world/venue.rs"]
mod venue;
#[path = "world/wiring.rs"]
mod wiring;

use std::collections::BTreeMap;
use std::time::Instant;

use scenario::{Kind, Report};

const STEPS: usize = 40;

fn env_u64(k: &str) -> Option<u64> {
    std::env::var(k).ok().and_then(|v| v.trim().parse().ok())
}

fn describe(r: &Report) -> String {
    match &r.violation {
        None => format!("seed {} ({}) ok", r.seed, r.kind.name()),
        Some((step, v)) => format!(
            "seed {} ({}): invariant {} broke at step {step}: {}\n  replay: WORLD_SEED={} cargo test --locked --test world -- world_replay --nocapture",
            r.seed,
            r.kind.name(),
            v.invariant,
            v.detail,
            r.seed
        ),
    }
}

fn regression_seeds() -> Vec<(u64, String)> {
    let text = include_str!("world-regressions/seeds.txt");
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let (n, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            n.parse().ok().map(|n| (n, rest.trim().to_string()))
        })
        .collect()
}

/// Seeds that once broke an invariant: each must pass now.
#[test]
fn world_regression_seeds() {
    if env_u64("WORLD_SEED").is_some() {
        return;
    }
    let mut bad = Vec::new();
    let seeds = regression_seeds();
    for (seed, why) in &seeds {
        let r = scenario::run(*seed, STEPS);
        if r.violation.is_some() {
            bad.push(format!("{}\n  (kept because: {why})", describe(&r)));
        }
    }
    println!("world regression seeds: {} run, {} failing", seeds.len(), bad.len());
    assert!(bad.is_empty(), "regression seeds failing:\n{}", bad.join("\n"));
}

/// `WORLD_SEED=N`: one scenario, with its step log.
#[test]
fn world_replay() {
    let Some(seed) = env_u64("WORLD_SEED") else { return };
    let r = scenario::run(seed, env_u64("WORLD_STEPS").map_or(STEPS, |v| v as usize));
    for l in &r.log {
        println!("  {l}");
    }
    println!("{:?}", r.measured);
    assert!(r.violation.is_none(), "{}", describe(&r));
}

/// Many random scenarios; every violation is reported with its seed.
#[test]
fn world_random_scenarios() {
    if env_u64("WORLD_SEED").is_some() {
        return;
    }
    let n = env_u64("WORLD_SCENARIOS").unwrap_or(100);
    let base = env_u64("WORLD_BASE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    });
    println!("world: {n} scenarios from base seed {base} (replay one with WORLD_SEED=N)");
    let t0 = Instant::now();
    // Two scenarios at a time: each has its own runtime, state directory and API port, and
    // most of a scenario's wall time is the API's real round trips, not CPU.
    let next = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..n {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = scenario::run(base.wrapping_add(i), STEPS);
                    if let Some((_, v)) = &r.violation {
                        println!("  VIOLATION {}: {}", v.invariant, describe(&r));
                    }
                    for (inv, d) in &r.skipped {
                        println!("  skipped (WORLD_SKIP) seed {} {inv}: {d}", r.seed);
                    }
                    done.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                }
            });
        }
    });
    let mut reports = done.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|r| r.seed);
    let secs = t0.elapsed().as_secs_f64();
    let failed: Vec<&Report> = reports.iter().filter(|r| r.violation.is_some()).collect();
    let steps: usize = reports.iter().map(|r| r.measured.steps).sum();
    let lives: usize = reports.iter().map(|r| r.measured.lives).sum();
    println!(
        "world: {n} scenarios, {steps} steps, {} restarts in {secs:.1} s; {} with a violation",
        lives.saturating_sub(reports.len()),
        failed.len()
    );
    let per_kind: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{}: {}", k.name(), reports.iter().filter(|r| r.kind == *k).count()))
        .collect();
    println!("  scenarios per fault: {}", per_kind.join("; "));
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for r in &failed {
        if let Some((_, v)) = &r.violation {
            by.entry(v.invariant).or_default().push(r.seed);
        }
    }
    for (inv, seeds) in &by {
        println!("  {inv}: {} scenario(s), e.g. seeds {:?}", seeds.len(), &seeds[..seeds.len().min(5)]);
    }
    if std::env::var("WORLD_WRITE_DOCS").is_ok_and(|v| v == "1") {
        match write_docs(&reports, secs) {
            Ok(p) => println!("world: wrote {p}"),
            Err(e) => println!("world: docs/protection.md not written: {e}"),
        }
    }
    if let Ok(path) = std::env::var("WORLD_SUMMARY") {
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::write(
            path,
            format!(
                "{old}in_process_scenarios={n}\nin_process_steps={steps}\nin_process_seconds={secs:.1}\nin_process_violations={}\n",
                failed.len()
            ),
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {n} scenarios broke an invariant:\n{}",
        failed.len(),
        failed.iter().map(|r| describe(r)).collect::<Vec<_>>().join("\n")
    );
}

fn quantiles(v: &[u64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    format!("{} / {}", s[s.len() / 2], s[s.len() - 1])
}

const LEAD_BEGIN: &str =
    "<!-- violations: begin (kept across regenerations; the lead fills in the fixes) -->";
const LEAD_END: &str = "<!-- violations: end -->";

fn write_docs(reports: &[Report], secs: f64) -> Result<String, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("docs/protection.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let kept = match (old.find(LEAD_BEGIN), old.find(LEAD_END)) {
        (Some(a), Some(b)) if b > a => old[a + LEAD_BEGIN.len()..b].to_string(),
        _ => "\n_(none recorded yet)_\n".to_string(),
    };
    let binary = std::fs::read_to_string(root.join("target/world/binary.md")).unwrap_or_else(|_| {
        "_(not run in this regeneration: `scripts/world-test` runs it first)_\n".to_string()
    });
    let mut rows = String::new();
    for k in Kind::ALL {
        let rs: Vec<&Report> = reports.iter().filter(|r| r.kind == k).collect();
        let tick: Vec<u64> = rs.iter().flat_map(|r| r.measured.tick_to_order_ms.iter().copied()).collect();
        let market: Vec<u64> =
            rs.iter().flat_map(|r| r.measured.market_to_order_ms.iter().copied()).collect();
        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &rs {
            for (o, n) in &r.measured.outcomes {
                *outcomes.entry(o).or_insert(0) += n;
            }
        }
        let out = outcomes.iter().map(|(o, n)| format!("{o}: {n}")).collect::<Vec<_>>().join("; ");
        let bad = rs.iter().filter(|r| r.violation.is_some()).count();
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            k.name(),
            rs.len(),
            tick.len(),
            quantiles(&tick),
            quantiles(&market),
            if out.is_empty() { "–".into() } else { out },
            bad
        ));
    }
    let mut found: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in reports {
        if let Some((step, v)) = &r.violation {
            let e = found.entry(v.invariant).or_default();
            if e.len() < 3 {
                e.push(format!("seed {} step {step}: {}", r.seed, v.detail));
            }
        }
    }
    let mut found_s = String::new();
    for (inv, ex) in &found {
        found_s.push_str(&format!("- `{inv}`\n"));
        for e in ex {
            found_s.push_str(&format!("  - {}\n", e.replace('\n', " ")));
        }
    }
    if found_s.is_empty() {
        found_s.push_str("- none in this run\n");
    }
    let n = reports.len();
    let skip = std::env::var("WORLD_SKIP").map_or_else(|_| "not set".to_string(), |v| format!("`{v}`"));
    let doc = format!(
        r#"# Protection under faults (generated)

**Generated by the world simulator** (`scripts/world-test`; `WORLD_WRITE_DOCS=1 cargo test
--locked --test world`): do not edit by hand, except between the `violations` markers below.

Every row is a kind of fault the simulator injects into seeded random scenarios (registrations
through the HTTP API — good, lowercase, unknown and reused ids —, level changes, withdrawals,
market moves, feed drops and silence, DNS/REST failures, broker timeouts, unknown outcomes and
late fills, rejects, holdings sold by hand, market close/open, restarts, wall-clock steps of
±1 s to 12 h through the test clock `runtime::clock::step_wall`). After every step it
checks: every open position has a usable price (younger than `cache.expire_after_s`) or is
blind within `cache.blind_grace_s` + 1 s of open-market time, with the alarm and `/ready` 503
saying so; `/ready` and the alarm agree; an outcome unknown past `broker.unknown_alarm_s` is
alarmed; fills never exceed a position's quantity (from the fake venue's own records); a
crossing price from any working source reaching the engine leads to a close order at the
broker within 1 s; everything answered 2xx survives a restart; a wall-clock step changes
nothing in protection (alarm, states, blindness at the same virtual instant).

## In process (virtual clock)

{n} scenarios this run ({secs:.0} s wall time), 40 steps each. Times are virtual (tokio's paused
clock): they measure the protection logic, not the machine. *tick → order*: from the crossing
price reaching the engine to the close order at the broker; *market → order*: from the market
crossing the level to the order (includes waiting for the next frame or REST poll, and, when
the scenario's random faults left no working source, waiting for one: the long maxima).
"never reached the box": the market moved back before any source delivered the crossing price.
`WORLD_SKIP` (exploration only) was {skip}.
Median / max, ms.

| fault | scenarios | crossings at the box | tick → order (ms) | market → order (ms) | outcome of crossed positions | scenarios with a violation |
|---|---|---|---|---|---|---|
{rows}
Invariant violations in this run (first examples; replay with `WORLD_SEED=N`):

{found_s}
## Through the real binary (kill -9, loopback fakes)

{binary}
## Scenarios per CI run

`TIERS=world scripts/test` runs `scripts/world-test`: the in-process world
(`WORLD_SCENARIOS`, default 1000 there; {n} in this run) plus the regression seeds of
tests/world-regressions/seeds.txt, and the real-binary world (`WORLD_BINARY_SCENARIOS`,
default 50). A plain `cargo test` runs 100 in-process scenarios and the regression seeds.

## Violations found and their fixes

{LEAD_BEGIN}{kept}{LEAD_END}
"#
    );
    std::fs::write(&path, doc).map_err(|e| e.to_string())?;
    Ok(path.display().to_string())
}
