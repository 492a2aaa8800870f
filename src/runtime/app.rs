//! `tickguard run`: the appliance on a configuration file.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::sync::watch;

use super::board::PriceBoard;
use super::clock::Clock;
use super::sim::SimFeed;
use super::{AppEngine, engine_task};
use crate::broker::paper::Paper;
use crate::config::{BrokerKind, Config, Venue};
use crate::core::engine::Command;
use crate::core::price::Price;

/// Exit code of a configuration error.
pub const EXIT_CONFIG: u8 = 78;

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
pub async fn run_config(cfg: Config, mut stop: watch::Receiver<bool>) -> ExitCode {
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut task, handle, broker_rx) = engine_task(engine, clock, stop_rx.clone());
    let added = task.subscribe_new_instruments();
    let board = Arc::new(PriceBoard::new(crate::limits::MAX_INSTRUMENTS));
    let engine_join = tokio::spawn(task.run());
    let paper =
        Arc::new(Paper::new(cfg.broker.paper_fill_delay, Arc::new(AtomicBool::new(true)), board.clone()));
    let paper_join = tokio::spawn(crate::broker::run_executor(paper, broker_rx, handle.clone(), None, clock));
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
        if let Err(e) = handle.command(Command::Register(spec.clone())).await {
            let _ = stop_tx.send(true);
            return config_error(format!("positions: id={}: {e}", spec.id));
        }
    }
    let _ = stop.changed().await;
    let _ = stop_tx.send(true);
    for j in jobs {
        let _ = j.await;
    }
    let _ = engine_join.await;
    paper_join.abort();
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// A seed from the OS (for jitter and the simulated walk), without a crate: the standard
/// library's randomly keyed hasher.
pub fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
