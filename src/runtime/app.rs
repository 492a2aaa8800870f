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
/// How often what the broker holds is compared with the book.
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

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
        // The feed's access token must be readable at start-up; a token that Upstox refuses
        // later is an [AUTH] alert at run time, fixed by rewriting the file (no restart).
        match &cfg.feed.token_file {
            None => {
                return config_error(
                    "feed.token_file is missing: feed.venue = \"upstox\" needs the access token; set token_file = \"/etc/tickguard/feed.token\" under [feed]",
                );
            }
            Some(path) => {
                if let Err(e) = crate::config::read_secret(path) {
                    return config_error(format!("feed.token_file: {e}"));
                }
            }
        }
    }
    if cfg.broker.kind == BrokerKind::Binance {
        // Spot cannot close a short: refuse it at start-up rather than fail at the stop.
        if let Err(e) = crate::broker::binance::refuse_short_positions(&cfg.positions) {
            return config_error(e);
        }
    }
    log::info!("tickguard {} starting: {}", env!("CARGO_PKG_VERSION"), cfg.summary());
    let indicator = match crate::indicator::Indicator::start(&cfg.indicator) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("start-up error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
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
    let (journal, recovered) = match Journal::open(
        &cfg.store.dir,
        if cfg.store.fsync_always { Fsync::Always } else { Fsync::Never },
        cfg.store.max_journal_bytes,
    ) {
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
    let seed = cfg.sim.seed.unwrap_or_else(entropy_seed);
    let mut jobs = Vec::new();
    // The network edge (resolver, TLS) serves the feed, REST and the broker alike.
    let edge = match cfg.feed.venue {
        Venue::Sim => None,
        _ => match super::edge::Edge::new(&cfg, seed) {
            Ok(e) => Some(e),
            Err(e) => {
                let _ = stop_tx.send(true);
                return config_error(e);
            }
        },
    };
    let order_journal: Arc<dyn crate::broker::OrderJournal> = journal.clone();
    let mut products: Option<crate::control::ProductSink> = None;
    let paper_join = match (cfg.broker.kind, &edge) {
        (BrokerKind::Binance, Some(edge)) => {
            let broker = match (
                crate::broker::binance::BinanceConfig::from_config(&cfg),
                crate::broker::binance::Credentials::from_config(&cfg),
            ) {
                (Ok(bc), Ok(creds)) => {
                    Arc::new(crate::broker::binance::Binance::new(bc, creds, edge.connector.clone()))
                }
                (Err(e), _) | (_, Err(e)) => {
                    let _ = stop_tx.send(true);
                    return config_error(e);
                }
            };
            jobs.push(tokio::spawn(broker.clone().run_time_sync(stop_rx.clone())));
            jobs.push(tokio::spawn(super::reconcile::run(
                broker.clone(),
                handle.clone(),
                RECONCILE_EVERY,
                stop_rx.clone(),
            )));
            tokio::spawn(crate::broker::run_executor(
                broker,
                broker_rx,
                handle.clone(),
                Some(order_journal),
                clock,
            ))
        }
        (BrokerKind::Upstox, Some(edge)) => {
            let keys: std::collections::HashMap<String, String> = cfg
                .watched_symbols()
                .into_iter()
                .filter_map(|s| cfg.feed.instrument_key(&s).map(|k| (s.clone(), k.to_string())))
                .collect();
            let ucfg = match crate::broker::upstox::UpstoxConfig::from_config(&cfg, keys) {
                Ok(c) => c,
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return config_error(e);
                }
            };
            let token = match ucfg.read_token() {
                Ok(t) => t,
                Err(e) => {
                    let _ = stop_tx.send(true);
                    return config_error(e);
                }
            };
            let broker = Arc::new(crate::broker::upstox::Upstox::new(ucfg, token, edge.connector.clone()));
            // Positions registered over the API carry their product to the broker.
            let sink = broker.clone();
            products =
                Some(crate::control::ProductSink(Arc::new(move |id: &str, p| sink.set_product(id, p))));
            // Attempts journaled before a restart: absence can still be proven in the same
            // session (never across one).
            for p in recovered.state.positions.values() {
                for a in &p.attempts {
                    broker.note_sent(&a.client_id, i64::try_from(a.sent_unix_ms).unwrap_or(i64::MAX));
                }
            }
            jobs.push(tokio::spawn(super::reconcile::run(
                broker.clone(),
                handle.clone(),
                RECONCILE_EVERY,
                stop_rx.clone(),
            )));
            tokio::spawn(crate::broker::run_executor(
                broker,
                broker_rx,
                handle.clone(),
                Some(order_journal),
                clock,
            ))
        }
        (BrokerKind::Binance | BrokerKind::Upstox, None) => {
            let _ = stop_tx.send(true);
            return config_error(format!(
                "broker.kind = \"{}\" needs feed.venue = \"{}\"",
                cfg.broker.kind.as_str(),
                cfg.broker.kind.as_str()
            ));
        }
        _ => {
            let paper = Arc::new(Paper::new(
                cfg.broker.paper_fill_delay,
                Arc::new(AtomicBool::new(true)),
                board.clone(),
            ));
            tokio::spawn(crate::broker::run_executor(
                paper,
                broker_rx,
                handle.clone(),
                Some(order_journal),
                clock,
            ))
        }
    };
    // The status LED and systemd's notifications both follow the engine loop's turns.
    if let Some(ind) = indicator {
        jobs.push(tokio::spawn(ind.run(handle.clone(), stop_rx.clone())));
    }
    let notifier = super::notify::Notifier::from_env();
    jobs.push(tokio::spawn(notifier.clone().run(handle.clone(), stop_rx.clone())));
    // The control plane (HTTP API, status page, metrics, notifications) on its own threads.
    let control_cfg = crate::control::ControlConfig::from_config(&cfg).map(|mut c| {
        c.products = products.take();
        c
    });
    let control = match control_cfg {
        Ok(c) => crate::control::spawn(c, handle.clone(), Some(journal.clone())).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let _control = match control {
        Ok(c) => c,
        Err(e) => {
            let _ = stop_tx.send(true);
            return config_error(e);
        }
    };
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
            if let Some(edge) = edge {
                jobs.extend(edge.spawn(&cfg, &instruments, handle.clone(), clock, added, stop_rx.clone()));
            }
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
    // Recovery and registration are done: ready, whatever the feed's state.
    notifier.ready(&format!(
        "guarding {} position(s); feed {} connecting",
        cfg.positions.len(),
        cfg.feed.venue.as_str()
    ));
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
        let _ = write!(line, " feed_auth_failures={}", f.auth_failures.load(Relaxed));
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
