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
/// How often what the broker holds is compared with the book, by default
/// (`broker.reconcile_every_s`).
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
    if cfg.relay.enabled {
        let r = &cfg.relay;
        let _ = write!(
            s,
            "\n  relay {} on {} (health {}) intervals={} symbols={} closed_queue_max={} open_queue_max={}",
            cfg.relay_exchange().map_or("(no venue)", |e| e.name()),
            r.listen,
            if r.health_enabled { r.health_listen.to_string() } else { "off".into() },
            r.intervals.iter().map(|i| i.name()).collect::<Vec<_>>().join(","),
            r.symbols.len(),
            r.closed_queue_max,
            r.open_queue_max
        );
    }
    s
}

/// `check-config`'s symbol check: every Binance symbol of the configuration against the
/// venue's list stored in the state directory (no network). An unknown symbol names its key;
/// with no stored list the symbols cannot be checked offline and pass (`run` checks them
/// against the venue and alarms on any it does not trade).
pub fn check_symbols(cfg: &Config) -> Result<(), String> {
    if cfg.feed.venue != Venue::Binance {
        return Ok(());
    }
    let list = match crate::feed::venue_symbols::VenueSymbols::load_for_check(&cfg.store.dir) {
        Ok(Some(l)) => l,
        Ok(None) => return Ok(()),
        Err(e) => return Err(format!("store.dir: the stored symbol list is unreadable: {e}")),
    };
    use crate::feed::venue_symbols::Verdict;
    for s in &cfg.feed.instruments {
        if list.verdict(s) == Verdict::NotTraded {
            return Err(format!("feed.instruments: {s} is not traded on binance"));
        }
    }
    for p in &cfg.positions {
        if list.verdict(&p.symbol) == Verdict::NotTraded {
            return Err(format!("positions: id={}: symbol: {} is not traded on binance", p.id, p.symbol));
        }
    }
    Ok(())
}

/// The API's symbol check for the network edge's venue (Binance: its full list).
fn symbol_gate(cfg: &Config, edge: Option<&super::edge::Edge>) -> Option<crate::control::SymbolGate> {
    use crate::control::SymbolVerdict;
    use crate::feed::venue_symbols::Verdict;
    let edge = edge.filter(|_| cfg.feed.venue == Venue::Binance)?;
    let list = edge.symbols.clone();
    Some(crate::control::SymbolGate {
        venue: "binance",
        uppercase: true,
        check: Arc::new(move |s: &str| match list.verdict(s) {
            Verdict::Traded => SymbolVerdict::Traded,
            Verdict::NotTraded => SymbolVerdict::NotTraded,
            Verdict::Unverified => SymbolVerdict::Unverified,
        }),
    })
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

/// What a running appliance is wired to: the broker and everything that feeds the engine.
/// [`run_config_with`] builds it from the configuration; tests build their own (a scripted
/// broker and feed on a virtual clock) and run the very same wiring through
/// [`run_with_edges`].
pub struct Edges<B: crate::broker::Broker> {
    /// The broker closing orders go to.
    pub broker: Arc<B>,
    /// Spawns the feed, the REST poller and any other edge task once the engine runs.
    pub spawn: EdgeSpawner,
    /// Whether what the broker holds is reconciled with the book (real brokers only).
    pub reconcile: bool,
    /// Where registrations' `product` goes (the Upstox broker).
    pub products: Option<crate::control::ProductSink>,
    /// How registrations' symbols are checked (the venue's list), if at all.
    pub symbols: Option<crate::control::SymbolGate>,
    /// Called once with what the journal recovered, before anything is sent (the Upstox
    /// broker learns the send times of journaled attempts and the positions' products).
    pub recovered: Option<RecoveredHook>,
    /// How long a `/ready` answer is reused (`None`: [`crate::control::api::READY_EVERY`]).
    /// The cache is a real-time rate limit: a world on a virtual clock, which compresses
    /// minutes into milliseconds, turns it off to hold `/ready` to each step's state.
    pub ready_every: Option<std::time::Duration>,
}

/// See [`Edges::recovered`].
pub type RecoveredHook = Box<dyn FnOnce(&crate::store::Recovered) + Send>;

/// Starts the edge tasks; called once, after recovery, with the watch set.
pub type EdgeSpawner = Box<dyn FnOnce(EdgeWiring) -> Vec<tokio::task::JoinHandle<()>> + Send>;

/// What the edge tasks get.
pub struct EdgeWiring {
    /// The engine's handle.
    pub engine: EngineHandle,
    /// The appliance's clock.
    pub clock: Clock,
    /// The watch set at start-up: every instrument of `feed.instruments` and of every position
    /// not closed, from the configuration and the journal alike (see [`watch_set`]).
    pub instruments: Vec<(crate::core::types::InstrumentId, String)>,
    /// Instruments that join the watch set later (registrations on a new instrument).
    pub added: tokio::sync::mpsc::Receiver<(crate::core::types::InstrumentId, crate::core::types::Symbol)>,
    /// Fires at shutdown.
    pub stop: watch::Receiver<bool>,
    /// The seed for jitter and simulated walks.
    pub seed: u64,
}

/// The set of instruments that must be watched, derived in one place: `feed.instruments`
/// (the configuration's explicit list) and the instrument of every position that is not
/// closed, whether it came from the configuration, the journal or the API. The feed
/// subscribes these, the REST poller asks for them and the brokers map them; instruments
/// that join later arrive through [`EdgeWiring::added`].
pub fn watch_set(engine: &AppEngine) -> Vec<(crate::core::types::InstrumentId, String)> {
    engine.watched().map(|id| (id, engine.cache().symbol(id).to_string())).collect()
}

/// As [`run_config`], handing the engine handle to `ready` once the configured positions are
/// registered (for in-process integration tests and tools that drive the engine directly).
pub async fn run_config_with(
    cfg: Config,
    stop: watch::Receiver<bool>,
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
        if let Err(e) = crate::config::refuse_unclosable_sides(&cfg) {
            return config_error(e);
        }
    }
    let seed = cfg.sim.seed.unwrap_or_else(entropy_seed);
    // The network edge (resolver, TLS) serves the feed, REST and the broker alike.
    let edge = match cfg.feed.venue {
        Venue::Sim => None,
        _ => match super::edge::Edge::new(&cfg, seed) {
            Ok(e) => Some(e),
            Err(e) => return config_error(e),
        },
    };
    let symbols = symbol_gate(&cfg, edge.as_ref());
    match (cfg.broker.kind, edge) {
        (BrokerKind::Binance, Some(edge)) => {
            let broker = match (
                crate::broker::binance::BinanceConfig::from_config(&cfg),
                crate::broker::binance::Credentials::from_config(&cfg),
            ) {
                (Ok(bc), Ok(creds)) => {
                    Arc::new(crate::broker::binance::Binance::new(bc, creds, edge.connector.clone()))
                }
                (Err(e), _) | (_, Err(e)) => return config_error(e),
            };
            let sync = broker.clone();
            let feed_cfg = cfg.clone();
            let spawn: EdgeSpawner = Box::new(move |w: EdgeWiring| {
                let mut jobs = vec![tokio::spawn(sync.run_time_sync(w.stop.clone()))];
                jobs.extend(edge.spawn(&feed_cfg, &w.instruments, w.engine, w.clock, w.added, w.stop));
                jobs
            });
            let edges = Edges {
                broker,
                spawn,
                reconcile: true,
                products: None,
                symbols,
                recovered: None,
                ready_every: None,
            };
            run_with_edges(cfg, stop, ready, edges).await
        }
        (BrokerKind::Upstox, Some(edge)) => {
            // One venue-instrument map (symbol ↔ instrument key) for the broker's orders and
            // holdings, the feed's subscriptions and the LTP poller (built by `Edge::new`).
            let keys = edge.upstox_keys.clone();
            let ucfg = match crate::broker::upstox::UpstoxConfig::from_config(&cfg, keys) {
                Ok(c) => c,
                Err(e) => return config_error(e),
            };
            let token = match ucfg.read_token() {
                Ok(t) => t,
                Err(e) => return config_error(e),
            };
            let broker = Arc::new(crate::broker::upstox::Upstox::new(ucfg, token, edge.connector.clone()));
            // Positions registered over the API carry their product to the broker.
            let sink = broker.clone();
            let products =
                Some(crate::control::ProductSink(Arc::new(move |id: &str, p| sink.set_product(id, p))));
            let feed_cfg = cfg.clone();
            let warm = broker.clone();
            let spawn: EdgeSpawner = Box::new(move |w: EdgeWiring| {
                // The order connections kept open: a close is one request on a warm connection.
                let mut jobs = vec![tokio::spawn(warm.run_keep_warm(w.stop.clone()))];
                jobs.extend(edge.spawn(&feed_cfg, &w.instruments, w.engine, w.clock, w.added, w.stop));
                jobs
            });
            // Attempts journaled before a restart: absence can still be proven in the same
            // session (never across one).
            let noted = broker.clone();
            let recovered: RecoveredHook = Box::new(move |rec: &crate::store::Recovered| {
                for (id, p) in &rec.state.positions {
                    if let Some(prod) = p.product.as_deref().and_then(crate::broker::upstox::Product::parse) {
                        noted.set_product(id, prod);
                    }
                    for a in &p.attempts {
                        noted.note_sent(&a.client_id, i64::try_from(a.sent_unix_ms).unwrap_or(i64::MAX));
                    }
                }
            });
            let edges = Edges {
                broker,
                spawn,
                reconcile: true,
                products,
                symbols,
                recovered: Some(recovered),
                ready_every: None,
            };
            run_with_edges(cfg, stop, ready, edges).await
        }
        (BrokerKind::Binance | BrokerKind::Upstox, None) => config_error(format!(
            "broker.kind = \"{}\" needs feed.venue = \"{}\"",
            cfg.broker.kind.as_str(),
            cfg.broker.kind.as_str()
        )),
        (_, edge) => {
            let board = Arc::new(PriceBoard::new(crate::limits::MAX_INSTRUMENTS));
            let paper = Arc::new(Paper::new(
                cfg.broker.paper_fill_delay,
                Arc::new(AtomicBool::new(true)),
                board.clone(),
            ));
            let feed_cfg = cfg.clone();
            let spawn: EdgeSpawner = Box::new(move |w: EdgeWiring| match (feed_cfg.feed.venue, edge) {
                (Venue::Binance | Venue::Upstox, Some(edge)) => {
                    edge.spawn(&feed_cfg, &w.instruments, w.engine, w.clock, w.added, w.stop)
                }
                _ => {
                    let starts = w
                        .instruments
                        .iter()
                        .map(|(id, sym)| {
                            let start = feed_cfg
                                .positions
                                .iter()
                                .find(|p| p.symbol.as_str() == sym)
                                .map_or(Price::from_units(100 * crate::core::price::SCALE), |p| p.entry);
                            (*id, start)
                        })
                        .collect::<Vec<_>>();
                    log::info!("sim: random walk over {} instruments, seed={}", starts.len(), w.seed);
                    let sim =
                        SimFeed { instruments: starts, interval: feed_cfg.sim.tick_interval, seed: w.seed };
                    vec![tokio::spawn(sim.run(w.engine, board, w.clock, w.stop))]
                }
            });
            let edges = Edges {
                broker: paper,
                spawn,
                reconcile: false,
                products: None,
                symbols,
                recovered: None,
                ready_every: None,
            };
            run_with_edges(cfg, stop, ready, edges).await
        }
    }
}

/// Runs the appliance's wiring on `edges` until `stop` fires: indicator, engine, journal
/// recovery, the broker executor, reconciliation, notifier, control plane, the edge tasks on
/// the watch set, then the configured positions. The same code runs `tickguard run` and the
/// in-process world simulator.
pub async fn run_with_edges<B: crate::broker::Broker>(
    cfg: Config,
    mut stop: watch::Receiver<bool>,
    ready: Option<oneshot::Sender<EngineHandle>>,
    edges: Edges<B>,
) -> ExitCode {
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
    for sym in cfg.watched_symbols() {
        if let Err(e) = engine.add_instrument(&sym) {
            return config_error(format!("feed.instruments: {sym}: {e}"));
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
    if let Some(hook) = edges.recovered {
        hook(&recovered);
    }
    // The watch set after the restore: restored positions are watched like configured ones.
    let instruments = watch_set(&engine);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut task, handle, broker_rx) = engine_task(engine, clock, stop_rx.clone());
    task.set_journal(journal.clone());
    let added = task.subscribe_new_instruments();
    let engine_join = tokio::spawn(task.run());
    let seed = cfg.sim.seed.unwrap_or_else(entropy_seed);
    let mut jobs = Vec::new();
    let order_journal: Arc<dyn crate::broker::OrderJournal> = journal.clone();
    let executor = tokio::spawn(crate::runtime::executor::run_executor(
        edges.broker.clone(),
        broker_rx,
        handle.clone(),
        Some(order_journal),
        clock,
    ));
    // The status LED and systemd's notifications both follow the engine loop's turns.
    if let Some(ind) = indicator {
        jobs.push(tokio::spawn(ind.run(handle.clone(), stop_rx.clone())));
    }
    let notifier = super::notify::Notifier::from_env();
    jobs.push(tokio::spawn(notifier.clone().run(handle.clone(), stop_rx.clone())));
    // The control plane (HTTP API, status page, metrics, notifications) on its own threads.
    let control_cfg = crate::control::ControlConfig::from_config(&cfg).map(|mut c| {
        c.products = edges.products.clone();
        c.symbols = edges.symbols.clone();
        if let Some(d) = edges.ready_every {
            c.ready_every = d;
        }
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
    // The LAN relay, on its own thread with its own upstream: whatever happens to it (a port
    // taken, bad clients, its venue down) the guard goes on.
    let relay = cfg.relay.enabled.then(|| start_relay(&cfg, seed, stop_rx.clone(), &handle));
    jobs.extend((edges.spawn)(EdgeWiring {
        engine: handle.clone(),
        clock,
        instruments,
        added,
        stop: stop_rx.clone(),
        seed,
    }));
    let mut registering = Vec::with_capacity(crate::limits::STARTUP_REGISTRATIONS_IN_FLIGHT);
    for spec in &cfg.positions {
        if recovered.state.positions.contains_key(spec.id.as_str()) {
            log::info!("[STORE] event=config_position_skipped id={} (the journal already knows it)", spec.id);
            continue;
        }
        if let Some(c) = journal.closed(spec.id.as_str()) {
            // Closed before, and pruned since: a configured position is never sold twice.
            log::warn!(
                "[STORE] event=config_position_skipped id={} closed={} closed_unix_ms={} (this id closed before; give the position a new id to protect it again)",
                spec.id,
                c.how_str(),
                c.at_unix_ms
            );
            continue;
        }
        if let Some(g) = &edges.symbols {
            // Never an exit for a symbol: that would take protection away from every other
            // position (and the unit does not restart on 78). Watched, alarmed, and blind
            // after its grace if it never prices.
            match (g.check)(&spec.symbol) {
                crate::control::SymbolVerdict::Traded => {}
                crate::control::SymbolVerdict::NotTraded => log::error!(
                    "[SYMBOLS] id={} symbol={} event=symbol_not_traded venue={} (not on the venue's list; watched, blind if it never prices)",
                    spec.id,
                    spec.symbol,
                    g.venue
                ),
                crate::control::SymbolVerdict::Unverified => log::warn!(
                    "[SYMBOLS] id={} symbol={} event=symbol_unverified venue={} (the venue's list is not known yet; watched, blind if it never prices)",
                    spec.id,
                    spec.symbol,
                    g.venue
                ),
            }
        }
        // Sent without waiting for the previous answer: the engine takes them in order and
        // the journal writer commits them together (one fsync for the lot instead of one per
        // position: 256 positions on a slow card would otherwise keep the disk busy for
        // 256 fsyncs, and a crossing's intent would queue behind them).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cmd = Command::Register(spec.clone());
        if handle.requests.send(crate::bus::Request::Command { cmd, reply: Some(tx) }).await.is_err() {
            let _ = stop_tx.send(true);
            return config_error(format!(
                "positions: id={}: {}",
                spec.id,
                crate::core::CoreError::EngineStopped
            ));
        }
        registering.push((spec.id.clone(), rx));
        if registering.len() >= crate::limits::STARTUP_REGISTRATIONS_IN_FLIGHT {
            if let Err(e) = answered(&mut registering).await {
                let _ = stop_tx.send(true);
                return config_error(e);
            }
        }
    }
    if let Err(e) = answered(&mut registering).await {
        let _ = stop_tx.send(true);
        return config_error(e);
    }
    // The recovered copy (tombstones included) is not needed any more.
    drop(recovered);
    // Reconciliation after the configured positions are in the book: its first pass judges
    // them too.
    if edges.reconcile {
        jobs.push(tokio::spawn(super::reconcile::run(
            edges.broker.clone(),
            handle.clone(),
            cfg.broker.reconcile_every,
            stop_rx.clone(),
        )));
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
    let started = crate::bus::clock::mono();
    let _ = stop.changed().await;
    let _ = stop_tx.send(true);
    for j in jobs {
        let _ = j.await;
    }
    let engine = engine_join.await.ok();
    executor.abort();
    if let Some(t) = relay.and_then(|r| r.thread) {
        // The relay says goodbye to its clients within its grace; bounded here too.
        for _ in 0..400 {
            if t.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    log_final_stats(&handle, engine.as_deref(), started.elapsed());
    log::info!("stopped");
    ExitCode::SUCCESS
}

/// Starts the relay (`[relay]`): its settings, the control plane's `Host`/`Origin` rule and a
/// connector of its own through the same resolver chain and TLS. A relay that cannot start is
/// logged and shown, never fatal.
fn start_relay(
    cfg: &Config,
    seed: u64,
    stop: watch::Receiver<bool>,
    handle: &EngineHandle,
) -> crate::relay::server::Relay {
    let hosts = crate::control::hosts::HostCheck::new(cfg.api.allowed_hosts.clone(), cfg.relay.listen.port());
    let rule: crate::relay::OriginRule = Arc::new(move |host: Option<&str>, origin: Option<&str>| {
        hosts.allows(host) && crate::control::auth::same_origin(origin, host, false)
    });
    let settings = crate::relay::RelaySettings::from_config(cfg, Some(rule), seed ^ 0x0052_656c_6179);
    let connector = super::edge::connector(cfg);
    let relay = match (settings, connector) {
        (Ok(s), Ok(c)) => crate::relay::server::start(s, crate::relay::server::Source::Venue(c), stop),
        (Err(e), _) | (_, Err(e)) => {
            let stats = Arc::new(crate::relay::stats::RelayStats::default());
            log::error!(
                "[RELAY] event=disabled reason=\"{}\" (the guard is not affected)",
                e.replace('"', "'")
            );
            if let Ok(mut f) = stats.failure.lock() {
                *f = Some(e);
            }
            crate::relay::server::Relay { stats, thread: None }
        }
    };
    let _ = handle.status.relay.set(relay.stats.clone());
    relay
}

/// One `stats` line at shutdown: feed counters, engine counters and the tick-to-action
/// latency (frame received → close order emitted; quantiles are histogram bucket bounds, so
/// `p50_us=50` reads "at most 50 µs"). Benchmarks and runbooks read it.
fn log_final_stats(handle: &EngineHandle, engine: Option<&AppEngine>, uptime: std::time::Duration) {
    let mut line = format!("stats uptime_ms={}", uptime.as_millis());
    if let Some(f) = handle.status.feed.get().map(|f| f.stats()) {
        let _ = write!(
            line,
            " feed_frames={} feed_ticks={} feed_malformed={} feed_unknown_symbols={} feed_reconnects={} feed_rotations={}",
            f.frames, f.ticks, f.malformed, f.unknown_symbols, f.reconnects, f.rotations
        );
        let _ = write!(line, " feed_auth_failures={}", f.auth_failures);
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

/// Where the engine's answer to a command arrives.
type ReplyRx = tokio::sync::oneshot::Receiver<Result<crate::core::engine::Reply, crate::core::CoreError>>;

/// Waits for the answers of the registrations sent at start-up, in order; the first refusal,
/// as the message of a configuration error.
async fn answered(registering: &mut Vec<(crate::core::types::PositionId, ReplyRx)>) -> Result<(), String> {
    for (id, rx) in registering.drain(..) {
        if let Err(e) = rx.await.unwrap_or(Err(crate::core::CoreError::EngineStopped)) {
            return Err(format!("positions: id={id}: {e}"));
        }
    }
    Ok(())
}
