//! `tickguard run`: the appliance on a configuration file.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::{oneshot, watch};

use super::board::PriceBoard;
use super::clock::Clock;
use super::sim::SimFeed;
use super::{AppEngine, EngineHandle, engine_task};
use crate::broker::paper::Paper;
use crate::config::{BrokerKind, Config, Venue};
use crate::core::engine::Command;
use crate::core::price::Price;
use crate::store::{Fsync, Journal};

/// Exit code of a configuration error.
pub const EXIT_CONFIG: u8 = 78;
/// Exit code of a runtime failure.
pub const EXIT_RUNTIME: u8 = 1;

/// A short human summary of a validated configuration (for `check-config` and start-up).
pub fn summary(cfg: &Config) -> String {
    let mut s = cfg.summary();
    for p in &cfg.positions {
        let _ = write!(
            s,
            "\n  position {} {} {} qty={} entry={} stop_loss={} take_profit={} blind_policy={}",
            p.id,
            p.symbol,
            p.side,
            p.qty,
            p.entry,
            p.stop_loss.map_or("-".into(), |v| v.to_string()),
            p.take_profit.map_or("-".into(), |v| v.to_string()),
            p.blind_policy.as_str()
        );
    }
    s
}

fn config_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("config error: {msg}");
    ExitCode::from(EXIT_CONFIG)
}

/// Runs the appliance until SIGINT / SIGTERM.
pub async fn run(path: &Path) -> ExitCode {
    let cfg = match crate::config::load(Some(path), std::env::vars()) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    let (sig_tx, sig_rx) = watch::channel(false);
    tokio::spawn(super::signals::stop_on_signal(sig_tx));
    run_config(cfg, sig_rx).await
}

/// Runs the appliance on a loaded configuration until `stop` fires.
pub async fn run_config(cfg: Config, stop: watch::Receiver<bool>) -> ExitCode {
    run_config_with(cfg, stop, None).await
}

/// As [`run_config`], handing the engine handle to `ready` once the configured positions are
/// registered (for in-process integration tests and tools that drive the engine directly).
pub async fn run_config_with(
    cfg: Config,
    mut stop: watch::Receiver<bool>,
    ready: Option<oneshot::Sender<EngineHandle>>,
) -> ExitCode {
    if cfg.feed.venue == Venue::Upstox {
        return config_error(
            "feed.venue = \"upstox\": the Upstox feed is not in this build; use \"binance\" or \"sim\"",
        );
    }
    if cfg.broker.kind != BrokerKind::Paper {
        return config_error(format!(
            "broker.kind = \"{}\": this build closes through the paper broker only; set broker.kind = \"paper\"",
            cfg.broker.kind.as_str()
        ));
    }
    log::info!("tickguard {} starting: {}", env!("CARGO_PKG_VERSION"), cfg.summary());
    let clock = Clock::new();
    let mut engine: Box<AppEngine> = Box::new(AppEngine::new(cfg.engine_config(), clock.now()));
    let mut instruments = Vec::new();
    for sym in cfg.watched_symbols() {
        match engine.add_instrument(&sym) {
            Ok(id) => instruments.push((id, sym)),
            Err(e) => return config_error(format!("feed.instruments: {sym}: {e}")),
        }
    }
    // Recovery: the journal wins over the configuration.
    let (journal, recovered) =
        match Journal::open(&cfg.store.dir, Fsync::Always, crate::limits::MAX_JOURNAL_BYTES) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("store error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
    let journal = Arc::new(journal);
    let mut restored = 0usize;
    for (id, p) in &recovered.state.positions {
        match crate::store::restored(p) {
            Some(r) => match engine.restore(clock.now(), &r) {
                Ok(_) => {
                    restored += 1;
                    log::info!("[STORE] event=restored id={id} state={:?}", r.phase);
                }
                Err(e) => log::error!("[STORE] event=restore_failed id={id} error=\"{e}\""),
            },
            None => log::error!("[STORE] event=restore_failed id={id} error=\"unreadable record\""),
        }
    }
    engine.ensure_generation_above(recovered.state.max_generation);
    log::info!(
        "[STORE] event=recovered dir={} positions={restored} journal_records={}",
        cfg.store.dir.display(),
        recovered.records
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut task, handle, broker_rx) = engine_task(engine, clock, stop_rx.clone());
    task.set_journal(journal.clone());
    let added = task.subscribe_new_instruments();
    let board = Arc::new(PriceBoard::new(crate::limits::MAX_INSTRUMENTS));
    let engine_join = tokio::spawn(task.run());
    let paper =
        Arc::new(Paper::new(cfg.broker.paper_fill_delay, Arc::new(AtomicBool::new(true)), board.clone()));
    let order_journal: Arc<dyn crate::broker::OrderJournal> = journal.clone();
    let paper_join = tokio::spawn(crate::broker::run_executor(
        paper,
        broker_rx,
        handle.clone(),
        Some(order_journal),
        clock,
    ));
    let seed = cfg.sim.seed.unwrap_or_else(entropy_seed);
    let mut jobs = Vec::new();
    match cfg.feed.venue {
        Venue::Sim => {
            let starts = instruments
                .iter()
                .map(|(id, sym)| {
                    let start = cfg
                        .positions
                        .iter()
                        .find(|p| p.symbol.as_str() == sym)
                        .map_or(Price::from_units(100 * crate::core::price::SCALE), |p| p.entry);
                    (*id, start)
                })
                .collect::<Vec<_>>();
            log::info!("sim: random walk over {} instruments, seed={seed}", starts.len());
            let sim = SimFeed { instruments: starts, interval: cfg.sim.tick_interval, seed };
            jobs.push(tokio::spawn(sim.run(handle.clone(), board, clock, stop_rx.clone())));
            drop(added);
        }
        Venue::Binance | Venue::Upstox => {
            let edge = match super::edge::Edge::new(&cfg, seed) {
                Ok(e) => e,
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return config_error(e);
                }
            };
            jobs.extend(edge.spawn(&cfg, &instruments, handle.clone(), clock, added, stop_rx.clone()));
        }
    }
    for spec in &cfg.positions {
        if recovered.state.positions.contains_key(spec.id.as_str()) {
            log::info!("[STORE] event=config_position_skipped id={} (the journal already knows it)", spec.id);
            continue;
        }
        if let Err(e) = handle.command(Command::Register(spec.clone())).await {
            let _ = stop_tx.send(true);
            return config_error(format!("positions: id={}: {e}", spec.id));
        }
    }
    if let Some(tx) = ready {
        let _ = tx.send(handle.clone());
    }
    let started = tokio::time::Instant::now();
    let _ = stop.changed().await;
    let _ = stop_tx.send(true);
    for j in jobs {
        let _ = j.await;
    }
    let engine = engine_join.await.ok();
    paper_join.abort();
    log_final_stats(&handle, engine.as_deref(), started.elapsed());
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// One `stats` line at shutdown: feed counters, engine counters and the tick-to-action
/// latency (frame received → close order emitted; quantiles are histogram bucket bounds, so
/// `p50_us=50` reads "at most 50 µs"). Benchmarks and runbooks read it.
fn log_final_stats(handle: &EngineHandle, engine: Option<&AppEngine>, uptime: std::time::Duration) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut line = format!("stats uptime_ms={}", uptime.as_millis());
    if let Some(f) = handle.status.feed.get() {
        let _ = write!(
            line,
            " feed_frames={} feed_ticks={} feed_malformed={} feed_unknown_symbols={} feed_reconnects={} feed_rotations={}",
            f.frames.load(Relaxed),
            f.ticks.load(Relaxed),
            f.malformed.load(Relaxed),
            f.unknown_symbols.load(Relaxed),
            f.reconnects.load(Relaxed),
            f.rotations.load(Relaxed)
        );
    }
    if let Some(e) = engine {
        let s = e.stats();
        let _ = write!(
            line,
            " engine_ticks_live={} engine_ticks_rest={} engine_ticks_superseded={} decisions={} orders={}",
            s.ticks[0], s.ticks[1], s.ticks_superseded, s.decisions, s.orders_placed
        );
    }
    let h = &handle.status.tick_to_action;
    let (counts, sum_us) = h.snapshot();
    let n: u64 = counts.iter().sum();
    let q = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
    let _ = write!(
        line,
        " tick_to_action_count={n} tick_to_action_mean_us={} tick_to_action_p50_us={} tick_to_action_p99_us={}",
        sum_us.checked_div(n).map_or_else(|| "none".to_string(), |v| v.to_string()),
        q(h.quantile_us(0.5)),
        q(h.quantile_us(0.99))
    );
    log::info!("{line}");
}

/// A seed from the OS (for jitter and the simulated walk), without a crate: the standard
/// library's randomly keyed hasher.
pub fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
