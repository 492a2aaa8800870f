//! `tickguard demo`: the seed incident, replayed in a loop on a simulated feed and a paper
//! broker, with no network and no configuration file.
//!
//! One round (simulated wall clock in brackets; the incident is at 11:24:16):
//! - 0 s [11:24:06]: the bot registers four long positions; prices flow for BOSCHLTD,
//!   ADANIENT and KAYNES; RELIANCE ticks once and then stays quiet (stale; its price stays
//!   usable, `expire_after` = 9.5 s, until the outage).
//! - 2.5 s: ADANIENT rises through its take-profit: closed from a live tick.
//! - 10 s [11:24:16]: the last BOSCHLTD tick (575.00) falls through its stop at 698.25, and
//!   the feed and the network die together: the close fails at the broker and is retried
//!   with backoff until the network returns.
//! - 11.5 s: the trader tightens KAYNES's stop above its cached price: judged on the cache
//!   (`source=cache`, with its age), closed once the broker is reachable.
//! - ~11.5 s: REST has failed three times and RELIANCE's price has expired: no usable price and
//!   no source: blind;
//!   its `alert` policy acts after the grace.
//! - 15 s [11:24:21]: the network returns; retries fill; RELIANCE ticks again.
//! - 17 s: a one-screen summary; the next round starts at 18 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::board::PriceBoard;
use super::clock::Clock;
use super::sim::publish;
use super::{AppEngine, EngineHandle, engine_task};
use crate::broker::paper::Paper;
use crate::core::book::{PosState, PositionSpec};
use crate::core::engine::{Command, EngineConfig, FeedEvent};
use crate::core::price::{Price, Qty};
use crate::core::time::{Timestamp, millis};
use crate::core::types::{BlindPolicy, InstrumentId, PositionId, Side, Symbol};

const ROUND: f64 = 18.0;
const TP_CROSS_AT: f64 = 2.6;
const OUTAGE_AT: f64 = 10.0;
const TIGHTEN_AT: f64 = 11.5;
const OUTAGE_END: f64 = 15.0;
const BLIND_CHECK_AT: f64 = 14.6;
const SUMMARY_AT: f64 = 17.0;
const TICK_EVERY: f64 = 0.2;
const REST_EVERY: f64 = 0.5;
/// Simulated wall clock at the start of a round: 11:24:06, so the outage is at 11:24:16.
const ROUND_WALL_START_S: u64 = 11 * 3600 + 24 * 60 + 6;

/// The demo's relay: `[relay]`'s listen addresses, intervals and queues over the simulated
/// venue (exchange `sim`); `None` when the configuration turns it off
/// (`TICKGUARD_RELAY_ENABLED=false` with the demo's default on).
pub fn relay_settings(cfg: &crate::config::Config, relay_on: bool) -> Option<crate::relay::RelaySettings> {
    if !relay_on {
        return None;
    }
    let r = &cfg.relay;
    let local =
        crate::net::http::Endpoint { tls: false, host: "127.0.0.1".into(), port: 9, path: "/".into() };
    Some(crate::relay::RelaySettings {
        listen: r.listen,
        health_listen: r.health_enabled.then_some(r.health_listen),
        exchange: crate::relay::Exchange::Sim,
        ws: local.clone(),
        rest: local,
        token_file: None,
        instrument_keys: Default::default(),
        read_token: |_| Err("the demo has no token".into()),
        intervals: r.intervals.clone(),
        symbols: SYMBOLS.iter().map(|s| s.to_string()).collect(),
        closed_queue_max: r.closed_queue_max,
        open_queue_max: r.open_queue_max,
        breaker_recovery: r.breaker_recovery,
        close_delay: r.close_delay,
        stale_after: r.stale_after,
        silence_timeout: Duration::from_secs(10),
        reconnect_initial: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(2),
        origin_rule: None,
        seed: 1,
    })
}

/// The engine settings of the demo: the seed's thresholds, shortened so a round fits in 18 s.
pub fn demo_engine_config() -> EngineConfig {
    EngineConfig {
        stale_after: Duration::from_secs(2),
        // RELIANCE's one early tick must stay usable until the outage: a price expired for
        // `blind_grace` is blind whatever the feed's state, and the story wants it stale (quiet
        // on a healthy feed) until 10 s, blind once REST has failed (~11.5 s).
        expire_after: Duration::from_millis(9_500),
        blind_grace: Duration::from_secs(2),
        sweep_every: Duration::from_millis(250),
        max_close_attempts: 8,
        retry_initial: Duration::from_millis(500),
        retry_max: Duration::from_secs(2),
        jitter: 0.5,
        lookup_every: Duration::from_secs(1),
        rest_enabled: true,
        seed: 2026,
        ..EngineConfig::default()
    }
}

const SYMBOLS: [&str; 4] = ["BOSCHLTD", "ADANIENT", "KAYNES", "RELIANCE"];

fn p(s: &str) -> Price {
    Price::parse(s).unwrap_or(Price::ZERO)
}

fn spec(id: &str, symbol: &str, qty: &str, entry: &str, sl: &str, tp: &str) -> PositionSpec {
    PositionSpec {
        id: PositionId::try_from(id).unwrap_or_default(),
        symbol: Symbol::try_from(symbol).unwrap_or_default(),
        side: Side::Long,
        qty: Qty::parse(qty).unwrap_or(Qty::ZERO),
        entry: p(entry),
        stop_loss: Some(p(sl)),
        take_profit: Some(p(tp)),
        blind_policy: BlindPolicy::Alert,
    }
}

/// Scripted bid of each instrument at round time `t` (`None`: no tick).
fn scripted_bid(symbol: usize, t: f64, wiggle: i64) -> Option<Price> {
    let cents = |c: i64| Some(Price::from_units(c * 1_000_000));
    let feed_dead = t > OUTAGE_AT + 1e-9 && t < OUTAGE_END - 1e-9;
    if feed_dead {
        return None;
    }
    match symbol {
        // BOSCHLTD drifts down from 735 towards its stop, then the last tick gaps to 575.00.
        0 if t < OUTAGE_AT - 1e-9 => cents(73_500 - (t * 300.0) as i64 + wiggle),
        0 if t < OUTAGE_AT + 1e-9 => cents(57_500),
        0 => cents(57_800 + wiggle),
        // ADANIENT climbs through its take-profit at 2350 early in the round.
        1 if t < TP_CROSS_AT => cents(230_000 + (t * 2_000.0) as i64),
        1 => cents(235_200 + wiggle),
        // KAYNES sits at 204.10 (the seed's cached price) with a small wiggle.
        2 if t < OUTAGE_AT - 0.3 => cents(20_410 + wiggle.rem_euclid(3)),
        2 if t < OUTAGE_AT + 1e-9 => cents(20_410),
        2 => cents(20_430),
        // RELIANCE ticks once at the start, then only after the outage.
        3 if t < 1e-9 => cents(125_000),
        3 if t >= OUTAGE_END - 1e-9 => cents(125_100),
        _ => None,
    }
}

fn wall(t: f64) -> String {
    let s = ROUND_WALL_START_S + t.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Runs the demo until `run_for` passes or `shutdown` fires. Returns the number of rounds
/// whose summary was printed.
pub async fn run(run_for: Option<Duration>, shutdown: watch::Receiver<bool>) -> u32 {
    run_with(run_for, shutdown, None, None, None).await
}

/// As [`run`], driving `indicator` (the status LED and buzzer) from the engine as well.
pub async fn run_with(
    run_for: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
    indicator: Option<crate::indicator::Indicator>,
    listen: Option<std::net::SocketAddr>,
    relay: Option<crate::relay::RelaySettings>,
) -> u32 {
    let cfg = demo_engine_config();
    println!(
        "tickguard demo: the seed incident (feed and network die at 11:24:16), replayed every {ROUND} s"
    );
    println!(
        "  shortened thresholds: stale_after={}s expire_after={}s blind_grace={}s retry={}..{}s max_close_attempts={}",
        cfg.stale_after.as_secs_f64(),
        cfg.expire_after.as_secs_f64(),
        cfg.blind_grace.as_secs_f64(),
        cfg.retry_initial.as_secs_f64(),
        cfg.retry_max.as_secs_f64(),
        cfg.max_close_attempts
    );
    println!("  simulated feed, paper broker, no network; Ctrl-C stops. Logs on stderr.");
    let clock = Clock::new();
    let mut engine: Box<AppEngine> = Box::new(AppEngine::new(cfg, clock.now()));
    let mut ids = [InstrumentId(0); 4];
    for (i, s) in SYMBOLS.iter().enumerate() {
        if let Ok(id) = engine.add_instrument(s) {
            ids[i] = id;
        }
    }
    let (engine_shutdown_tx, engine_shutdown) = watch::channel(false);
    let (relay_stop_tx, relay_stop) = watch::channel(false);
    let (task, handle, broker_rx) = engine_task(engine, clock, engine_shutdown.clone());
    let board = Arc::new(PriceBoard::new(crate::limits::MAX_INSTRUMENTS));
    let network_up = Arc::new(AtomicBool::new(true));
    let engine_join = tokio::spawn(task.run());
    let paper = Arc::new(Paper::new(Duration::from_millis(200), network_up.clone(), board.clone()));
    let paper_join =
        tokio::spawn(crate::runtime::executor::run_executor(paper, broker_rx, handle.clone(), None, clock));
    handle.feed(FeedEvent::SubscribedAll).await;
    // The status page and API on `listen`, with a random token in a file (its own threads).
    let _control = listen.and_then(|addr| {
        crate::control::spawn_demo(addr, handle.clone()).map_err(|e| log::error!("[API] {e}")).ok()
    });
    // The LAN relay over the simulated venue: bots on the LAN (and `websocat`) see the
    // incident's quotes and candles, the outage as `status: stale` and its hole as a gap.
    let relay = relay.map(|settings| {
        let names = SYMBOLS.iter().zip(ids.iter()).map(|(s, id)| (s.to_string(), *id)).collect();
        let sim = crate::relay::sim::SimSource { board: board.clone(), names, up: network_up.clone() };
        let r =
            crate::relay::server::start(settings, crate::relay::server::Source::Sim(sim), relay_stop.clone());
        let _ = handle.status.relay.set(r.stats.clone());
        r
    });
    // The status LED and systemd's notifications both follow the engine loop's turns.
    let indicator_join = indicator.map(|i| tokio::spawn(i.run(handle.clone(), engine_shutdown.clone())));
    let notifier = super::notify::Notifier::from_env();
    let notify_join = tokio::spawn(notifier.clone().run(handle.clone(), engine_shutdown));
    notifier.ready("demo: replaying the seed incident on a simulated feed");

    let start = crate::bus::clock::mono();
    let deadline = run_for.map(|d| start + d);
    let mut rounds = 0u32;
    let script = async {
        let mut round = 1u32;
        loop {
            play_round(round, &handle, &board, &clock, &network_up, &ids).await;
            rounds = round;
            round += 1;
        }
    };
    tokio::select! {
        _ = script => {}
        _ = shutdown.changed() => {}
        _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
    }
    let _ = engine_shutdown_tx.send(true);
    let _ = relay_stop_tx.send(true);
    if let Some(t) = relay.and_then(|r| r.thread) {
        for _ in 0..400 {
            if t.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _ = notify_join.await;
    if let Some(j) = indicator_join {
        let _ = j.await;
    }
    let _ = engine_join.await;
    paper_join.abort();
    rounds
}

async fn play_round(
    round: u32,
    handle: &EngineHandle,
    board: &PriceBoard,
    clock: &Clock,
    network_up: &AtomicBool,
    ids: &[InstrumentId; 4],
) {
    let start = crate::bus::clock::mono();
    let at = |t: f64| start + Duration::from_secs_f64(t);
    let round_start = clock.now();
    let pid = |name: &str| format!("{name}-{round}");
    // Fresh prices first, so the new positions are judged on this round's prices.
    for (i, id) in ids.iter().enumerate() {
        if let Some(bid) = scripted_bid(i, 0.0, 0) {
            publish(handle, board, clock, *id, bid);
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let specs = [
        spec(&pid("bosch"), "BOSCHLTD", "10", "735.00", "698.25", "800.00"),
        spec(&pid("adani"), "ADANIENT", "5", "2300.00", "2250.00", "2350.00"),
        spec(&pid("kaynes"), "KAYNES", "20", "210.00", "190.00", "230.00"),
        spec(&pid("reliance"), "RELIANCE", "4", "1250.00", "1200.00", "1300.00"),
    ];
    for s in specs {
        if let Err(e) = handle.command(Command::Register(s.clone())).await {
            log::error!("demo: cannot register {}: {e}", s.id);
        }
    }
    let mut wiggle_rng = crate::core::backoff::Rng::new(u64::from(round));
    let mut t = TICK_EVERY;
    let mut next_rest = OUTAGE_AT + REST_EVERY;
    let mut outage = false;
    let mut tightened = false;
    let mut summarised = false;
    let mut blind_seen: Vec<(String, String)> = Vec::new();
    while t < ROUND {
        tokio::time::sleep_until(at(t)).await;
        if !outage && (t - OUTAGE_AT).abs() < 1e-9 {
            // The network dies with the feed; the last BOSCHLTD tick still gets through.
            network_up.store(false, Ordering::Relaxed);
            publish(handle, board, clock, ids[0], scripted_bid(0, t, 0).unwrap_or(Price::ZERO));
            tokio::time::sleep(Duration::from_millis(30)).await;
            handle.feed(FeedEvent::Disconnected).await;
            println!("[{}] demo: feed and network down (DNS failure)", wall(OUTAGE_AT));
            outage = true;
            t += TICK_EVERY;
            continue;
        }
        if outage && t >= next_rest - 1e-9 && t < OUTAGE_END - 1e-9 {
            // The REST poller fails too: no network.
            for id in ids {
                handle.feed(FeedEvent::RestError(*id)).await;
            }
            next_rest += REST_EVERY;
        }
        if outage && !tightened && t >= TIGHTEN_AT - 1e-9 {
            tightened = true;
            let cmd = Command::Modify {
                id: PositionId::try_from(pid("kaynes").as_str()).unwrap_or_default(),
                stop_loss: Some(Some(p("205.00"))),
                take_profit: None,
            };
            println!("[{}] demo: trader tightens KAYNES stop to 205.00 (cached price 204.10)", wall(t));
            if let Err(e) = handle.command(cmd).await {
                log::error!("demo: cannot tighten KAYNES: {e}");
            }
        }
        if outage && blind_seen.is_empty() && t >= BLIND_CHECK_AT - 1e-9 {
            blind_seen = handle
                .inspect(|e, now| {
                    e.book()
                        .iter()
                        .filter_map(|(_, p)| {
                            p.blind_since.map(|s| {
                                let how = if p.blind_acted { "alert raised" } else { "in grace" };
                                (
                                    p.id.to_string(),
                                    format!(
                                        "{} blind {:.1}s, {how}",
                                        e.cache().symbol(p.instrument),
                                        now.since(s).as_secs_f64()
                                    ),
                                )
                            })
                        })
                        .collect()
                })
                .await
                .unwrap_or_default();
        }
        if outage && t >= OUTAGE_END - 1e-9 {
            outage = false;
            network_up.store(true, Ordering::Relaxed);
            handle.feed(FeedEvent::SubscribedAll).await;
            for id in ids {
                handle.feed(FeedEvent::RestOk(*id)).await;
            }
            println!("[{}] demo: network and feed back", wall(t));
        }
        if !outage {
            let wiggle = (wiggle_rng.next_u64() % 41) as i64 - 20;
            for (i, id) in ids.iter().enumerate() {
                if let Some(bid) = scripted_bid(i, t, wiggle) {
                    publish(handle, board, clock, *id, bid);
                }
            }
        }
        if !summarised && t >= SUMMARY_AT - 1e-9 {
            summarised = true;
            let names: Vec<String> =
                ["bosch", "adani", "kaynes", "reliance"].iter().map(|n| pid(n)).collect();
            let blind = std::mem::take(&mut blind_seen);
            let summary = handle
                .inspect(move |e, now| summary(e, now, round, round_start, &names, &blind))
                .await
                .unwrap_or_default();
            println!("{summary}");
            // The bot withdraws what is left before the next round.
            for name in ["bosch", "adani", "kaynes", "reliance"] {
                let id = PositionId::try_from(pid(name).as_str()).unwrap_or_default();
                let _ = handle.command(Command::Withdraw { id }).await;
            }
        }
        t = ((t + TICK_EVERY) * 10.0).round() / 10.0;
    }
    tokio::time::sleep_until(at(ROUND)).await;
}

fn summary(
    e: &AppEngine,
    now: Timestamp,
    round: u32,
    round_start: Timestamp,
    ids: &[String],
    blind: &[(String, String)],
) -> String {
    use std::fmt::Write;
    let rel = |t: Timestamp| t.since(round_start).as_secs_f64();
    let mut s = String::new();
    let _ = writeln!(s, "== round {round} summary (incident at 11:24:16) ==");
    let _ = writeln!(
        s,
        "  {:<11} {:<9} {:<12} {:>8} {:>9} {:<6} {:>8} {:>9} {:>8} {:>7}",
        "position", "symbol", "reason", "decided", "price", "source", "age_ms", "exit", "attempts", "late_s"
    );
    for id in ids {
        let rec = e.recent_closes().rev().find(|r| r.id.as_str() == id);
        if let Some(r) = rec {
            let d = r.decision;
            let _ = writeln!(
                s,
                "  {:<11} {:<9} {:<12} {:>8} {:>9} {:<6} {:>8} {:>9} {:>8} {:>7.1}",
                id,
                e.cache().symbol(r.instrument),
                d.reason.as_str(),
                wall(rel(d.at)),
                d.price.map_or("-".into(), |p| p.to_string()),
                d.source.as_str(),
                millis(d.age),
                r.exit.map_or("-".into(), |p| p.to_string()),
                r.attempts,
                r.closed_at.since(d.at).as_secs_f64()
            );
            continue;
        }
        let Some(idx) = e.book().find(id) else { continue };
        let Some(pos) = e.book().get(idx) else { continue };
        let symbol = e.cache().symbol(pos.instrument);
        let state = match &pos.state {
            PosState::Open => "open (not crossed)".to_string(),
            PosState::Closing(c) => format!("closing, attempt {}", c.attempt),
            PosState::CloseFailed(c) => format!("CLOSE FAILED after {} attempts", c.attempt),
            PosState::Closed { how, .. } => format!("closed ({})", how.as_str()),
        };
        let _ = writeln!(s, "  {id:<11} {symbol:<9} {state}");
    }
    for (id, what) in blind {
        let _ = writeln!(s, "  {id:<11} {what} (blind: no usable price, feed and REST down)");
    }
    let _ = write!(s, "  at t+{:.1}s of the round", rel(now));
    s
}
