//! The runtime around the sans-IO core: the clock, the channels, and the engine task that
//! owns all state. Feeds, pollers, the broker and the control plane talk to it only through
//! bounded channels; a page view is a message, never a lock held during IO.
//!
//! ```text
//!  feed / REST ──Tick──▶ TickQueue (coalescing, one slot per instrument) ──┐
//!  feed events ───────▶ mpsc(COMMAND_QUEUE) ─────────────────────────────────┤
//!  commands, inspects ▶ mpsc(COMMAND_QUEUE) ─────────────────────────────────┼─▶ engine task
//!  broker reports ────▶ mpsc(COMMAND_QUEUE) ─────────────────────────────────┘      │
//!                                  broker requests ◀── mpsc(COMMAND_QUEUE) ◀──────────┘
//! ```
//! Every channel except the tick queue applies back-pressure instead of dropping: commands,
//! feed events and broker outcomes are never lost.

pub mod app;
pub mod demo;
pub mod edge;
pub mod executor;
pub mod notify;
pub mod reconcile;
pub mod report;
pub mod signals;
pub mod sim;
pub mod wiring;

// The bus (engine handle, requests, clock, tick queue, status, price board) lives in
// `crate::bus`, below the edges; these re-exports keep the runtime's old paths.
pub use crate::bus::{AppEngine, BrokerRequest, EngineHandle, Inspect, Request, board, clock, queue, status};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::core::CoreError;
use crate::core::engine::{Actions, Command, Notice, OrderAction, Reply};
use crate::core::time::Timestamp;
use crate::core::types::{InstrumentId, PosIdx, Symbol, Tick};
use crate::limits::{COMMAND_QUEUE, MAX_INSTRUMENTS, MAX_POSITIONS};
use clock::Clock;
use queue::TickQueue;

/// Faults injected on purpose, for tests of the watchdog and the indicator
/// (`--fault engine-hang@DURATION`), of a slow disk (`--fault fsync-delay@DURATION`) and of a
/// crash at a named point of a close (`--fault crash@intent-synced`, `--fault crash@sent`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Stall the engine loop for ever this long after its start.
    pub engine_hang: Option<std::time::Duration>,
    /// Every fsync of the journal sleeps this long first (a slow SD card).
    pub fsync_delay: Option<std::time::Duration>,
    /// The process aborts (as a kill -9 would stop it) the first time a close reaches this point.
    pub crash_at: Option<CrashPoint>,
}

/// A point of a close where `--fault crash@POINT` aborts the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The order's intent is fsynced; the order is not sent yet (`intent-synced`).
    IntentSynced,
    /// The order was sent and answered; its outcome is not journaled yet (`sent`).
    Sent,
}

static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();

/// Arms `faults` for every engine task this process builds from now on (the command line's
/// `--fault`). The first call wins; returns whether this one did.
pub fn arm_faults(faults: Faults) -> bool {
    let first = FAULTS.set(faults).is_ok();
    if let (true, Some(d)) = (first, faults.fsync_delay) {
        crate::store::arm_fsync_delay(d);
    }
    first
}

/// `--fault crash@POINT`: aborts the process at `point` (no destructor, no flush, no further
/// record: what a kill -9 leaves).
pub(crate) fn crash_point(point: CrashPoint) {
    if FAULTS.get().and_then(|f| f.crash_at) == Some(point) {
        log::error!("[FAULT] event=crash point={point:?} (--fault crash: the process aborts here)");
        std::process::abort();
    }
}

/// Answers a command (if anyone waits for the answer).
fn answer(reply: Option<oneshot::Sender<Result<Reply, CoreError>>>, r: Result<Reply, CoreError>) {
    if let Some(tx) = reply {
        let _ = tx.send(r);
    }
}

/// The engine task: owns the engine, turns inputs into engine calls and carries out the
/// actions (logs them, hands orders to the broker).
pub struct EngineTask {
    engine: Box<AppEngine>,
    clock: Clock,
    ticks: Arc<TickQueue>,
    requests: mpsc::Receiver<Request>,
    broker: mpsc::Sender<BrokerRequest>,
    shutdown: watch::Receiver<bool>,
    drained: Vec<Tick>,
    out: Box<Actions<MAX_POSITIONS>>,
    status: Arc<status::Status>,
    /// The journal, when the store is enabled.
    journal: Option<Arc<crate::store::Journal>>,
    /// Instruments first seen in a registration go here so the feed subscribes them live.
    /// Capacity `MAX_INSTRUMENTS`: each instrument is sent at most once, so it never fills.
    new_instruments: Option<mpsc::Sender<(InstrumentId, Symbol)>>,
    /// Fault injection: the loop stops turning at this time (`--fault engine-hang@...`).
    hang_at: Option<Timestamp>,
    /// Positions whose close was held for the market's open (their next order checks holdings).
    held: std::collections::HashSet<PosIdx>,
    /// The engine's own request channel (weak: it never keeps the engine alive), for the
    /// take-back of a command the journal could not make durable ([`Request::Undo`]).
    own: mpsc::WeakSender<Request>,
}

/// Builds the engine task and the handle the edges use. Orders come out of `broker_rx`.
pub fn engine_task(
    engine: Box<AppEngine>,
    clock: Clock,
    shutdown: watch::Receiver<bool>,
) -> (EngineTask, EngineHandle, mpsc::Receiver<BrokerRequest>) {
    let ticks = Arc::new(TickQueue::new(MAX_INSTRUMENTS));
    let status = Arc::new(status::Status::default());
    let (req_tx, req_rx) = mpsc::channel(COMMAND_QUEUE);
    let (broker_tx, broker_rx) = mpsc::channel(COMMAND_QUEUE);
    let task = EngineTask {
        engine,
        clock,
        ticks: ticks.clone(),
        requests: req_rx,
        broker: broker_tx,
        shutdown,
        drained: Vec::with_capacity(MAX_INSTRUMENTS),
        out: Box::new(Actions::new()),
        new_instruments: None,
        hang_at: FAULTS.get().and_then(|f| f.engine_hang).map(|d| {
            let at = clock.now().as_nanos().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            Timestamp::from_nanos(at)
        }),
        journal: None,
        status: status.clone(),
        held: std::collections::HashSet::new(),
        own: req_tx.downgrade(),
    };
    (task, EngineHandle { ticks, requests: req_tx, status }, broker_rx)
}

impl EngineTask {
    /// Journals commands and decisions to `journal` from now on.
    pub fn set_journal(&mut self, journal: Arc<crate::store::Journal>) {
        self.journal = Some(journal);
    }

    /// Returns the receiver of instruments first seen in registrations (for the feed).
    pub fn subscribe_new_instruments(&mut self) -> mpsc::Receiver<(InstrumentId, Symbol)> {
        let (tx, rx) = mpsc::channel(MAX_INSTRUMENTS);
        self.new_instruments = Some(tx);
        rx
    }

    /// Fault injection: the loop stops turning for ever `after` from now (at its first turn
    /// past that time, within one sweep). The process stays up; only the watchdog (or a kill)
    /// ends it.
    pub fn hang_after(&mut self, after: std::time::Duration) {
        let now = self.clock.now().as_nanos();
        let after = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        self.hang_at = Some(Timestamp::from_nanos(now.saturating_add(after)));
    }

    /// Runs until shutdown is signalled; returns the engine for a final look.
    pub async fn run(mut self) -> Box<AppEngine> {
        loop {
            if self.hang_at.is_some_and(|t| self.clock.now() >= t) {
                log::error!(
                    "[FAULT] event=engine_hang (--fault engine-hang: the engine loop stops turning for ever)"
                );
                std::future::pending::<()>().await;
            }
            self.status.engine_turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let wake = self.clock.instant(self.engine.poll_timeout());
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => break,
                req = self.requests.recv() => match req {
                    Some(r) => self.handle(r).await,
                    None => break,
                },
                _ = self.ticks.notified() => self.drain_ticks().await,
                _ = tokio::time::sleep_until(wake) => {
                    let now = self.clock.now();
                    self.engine.on_timer(now, &mut self.out);
                    self.dispatch(now).await;
                }
            }
        }
        self.engine
    }

    async fn drain_ticks(&mut self) {
        self.drained.clear();
        self.ticks.drain_into(&mut self.drained);
        for i in 0..self.drained.len() {
            let tick = self.drained[i];
            let now = self.clock.now();
            self.engine.on_tick(now, &tick, &mut self.out);
            if !self.out.orders.is_empty() && tick.quote.source == crate::core::types::Source::Live {
                // Frame received (the tick's date) to close action emitted.
                let latency = self.clock.now().since(tick.quote.dated);
                self.status.tick_to_action.observe(latency);
            }
            if !self.out.is_empty() {
                self.dispatch(now).await;
            }
        }
    }

    async fn handle(&mut self, req: Request) {
        let now = self.clock.now();
        match req {
            Request::Command { cmd, reply } => {
                self.command(now, cmd, reply).await;
                return;
            }
            Request::Undo(u) => {
                self.undo(u);
                return;
            }
            Request::Feed(ev) => self.engine.on_feed(now, ev, &mut self.out),
            Request::Broker(rep) => self.engine.on_broker(now, &rep, &mut self.out),
            Request::Inspect(f) => {
                f(&self.engine, now);
                return;
            }
        }
        self.dispatch(now).await;
    }

    /// Runs a command. Everything it changes is on disk before the reply, without the engine
    /// waiting for the disk: its own record and the records of its notices are handed to the
    /// journal's writer thread as one batch, and a task of its own awaits that batch's fsync,
    /// then answers (and hands the command's own orders to the executor). When the batch fails,
    /// a change that would take protection away (registration, withdrawal, resolve, settlement,
    /// closed externally) is taken back on the engine task ([`Request::Undo`]: `forget` a new
    /// registration, `put_back` the saved position), its orders are dropped, and the answer is
    /// `NotDurable` (503: retry). A modification or a manual close is not taken back (a close it
    /// decided goes ahead: the safe side of a journal failure is to close); it is answered
    /// `NotDurable` all the same.
    ///
    /// Why answering later stays safe while the engine goes on judging ticks:
    /// - The reply is the only promise, and it still comes after the fsync.
    /// - A registration in flight can be judged and closed by a tick before its record is
    ///   durable. Its decision and its order's intent are handed to the writer *after* the
    ///   registration (the engine hands the batch over before it dispatches anything, and the
    ///   executor hands the intent over after it receives the order), so they land in the same
    ///   group or a later one. If the registration's fsync fails, its group is rolled back and
    ///   the writer refuses every later intent whose position's registration is not in the
    ///   journal (or is another generation of the id): no order leaves for a registration that
    ///   was taken back, and a stale intent can never ride on a re-registration of the id.
    /// - The command's own orders (a settlement's next attempt, a manual close, a registration
    ///   already crossed) are held by the waiting task and sent only once the batch is durable
    ///   (or, for a change that is not taken back, once it failed): an order never leaves for a
    ///   state the engine then takes back.
    /// - The take-back runs on the engine task, and only if the slot still holds the same
    ///   registration (id and generation); in the meantime the position was terminal
    ///   (withdraw, resolve, closed externally, filled) or waiting for its held order, so no
    ///   other order can have been decided for it.
    async fn command(
        &mut self,
        now: Timestamp,
        cmd: Command,
        reply: Option<oneshot::Sender<Result<Reply, CoreError>>>,
    ) {
        let target = match &cmd {
            Command::Withdraw { id }
            | Command::Resolve { id }
            | Command::ClosedExternally { id }
            | Command::Settle { id, .. }
            | Command::Modify { id, .. } => self.engine.book().find(id),
            _ => None,
        };
        if let (Command::Register(spec), Some(j)) = (&cmd, &self.journal) {
            if self.engine.book().find(&spec.id).is_none() && j.closed(&spec.id).is_some() {
                // Closed before and pruned from the book since: still closed.
                return answer(reply, Err(CoreError::Closed));
            }
        }
        let saved = target.and_then(|i| self.engine.book().get(i).cloned());
        let settle = match (&cmd, &saved) {
            (Command::Settle { executed, .. }, Some(p)) => p.state.closing().map(|c| {
                let outcome = if !executed.is_positive() {
                    crate::core::engine::Outcome::Rejected
                } else if *executed >= c.order_qty {
                    crate::core::engine::Outcome::Filled { executed: *executed, price: None }
                } else {
                    crate::core::engine::Outcome::PartiallyFilled { executed: *executed, price: None }
                };
                (p.id.to_string(), c.client_id.to_string(), outcome)
            }),
            _ => None,
        };
        let settle_price = match &cmd {
            Command::Settle { price, .. } => *price,
            _ => None,
        };
        let modify = matches!(cmd, Command::Modify { .. });
        let r = self.engine.on_command(now, cmd, &mut self.out);
        let Some(j) = self.journal.clone() else {
            self.note_new_instrument(&r);
            self.dispatch(now).await;
            return answer(reply, r);
        };
        let mut recs: Vec<crate::store::Record> = Vec::new();
        if let (Ok(_), Some((pos_id, client_id, mut outcome))) = (&r, settle) {
            // The settlement is the attempt's outcome, as if the venue had said it.
            if let crate::core::engine::Outcome::Filled { price, .. }
            | crate::core::engine::Outcome::PartiallyFilled { price, .. } = &mut outcome
            {
                *price = settle_price;
            }
            recs.extend(crate::store::Record::outcome(&pos_id, &client_id, &outcome));
        }
        match &r {
            Ok(Reply::Registered { pos, existed: false, .. }) => {
                if let Some(p) = self.engine.book().get(*pos) {
                    recs.push(crate::store::registered(&self.spec_of(p), p.generation));
                }
            }
            Ok(Reply::Done { pos }) if modify => {
                if let Some(p) = self.engine.book().get(*pos) {
                    recs.push(crate::store::Record::Levels {
                        id: p.id.to_string(),
                        stop_loss: p.stop_loss.map(|v| v.units()),
                        take_profit: p.take_profit.map(|v| v.units()),
                    });
                }
            }
            _ => {}
        }
        recs.extend(self.notice_records());
        self.note_new_instrument(&r);
        if recs.is_empty() || r.is_err() {
            // Nothing promised: hand any records over without waiting.
            j.submit(recs, crate::store::Done::Nothing);
            self.dispatch_with(now, false, false).await;
            return answer(reply, r);
        }
        let undo = match (&r, saved) {
            (Ok(Reply::Registered { pos, existed: false, .. }), _) => {
                self.engine.book().get(*pos).map(|p| crate::bus::Undo {
                    pos: *pos,
                    id: p.id.clone(),
                    generation: p.generation,
                    saved: None,
                    reply: None,
                })
            }
            (Ok(Reply::Done { pos }), Some(saved)) if !modify => Some(crate::bus::Undo {
                pos: *pos,
                id: saved.id.clone(),
                generation: saved.generation,
                saved: Some(Box::new(saved)),
                reply: None,
            }),
            _ => None,
        };
        let n = recs.len();
        // Handed over before anything is dispatched: every later record (a tick's decision on
        // this position, its order's intent) lands after these in the journal.
        let durable = j.handover(recs);
        let held = self.dispatch_with(now, false, true).await;
        let broker = self.broker.clone();
        let engine = self.own.clone();
        tokio::spawn(async move {
            let written = match crate::store::settled(durable).await {
                Some(r) => r.map_err(|e| e.to_string()),
                None => Err("the journal writer stopped before answering".to_string()),
            };
            let e = match written {
                Ok(()) => {
                    for req in held {
                        if broker.send(req).await.is_err() {
                            log::error!(
                                "[CLOSE] event=broker_gone (broker task stopped; orders cannot be sent)"
                            );
                        }
                    }
                    return answer(reply, r);
                }
                Err(e) => e,
            };
            log::error!("[STORE] event=write_failed what=command records={n} error=\"{e}\"");
            match undo {
                Some(mut u) => {
                    // Not on disk: taken back on the engine task, which answers NotDurable.
                    // The command's own orders are dropped with it.
                    u.reply = reply;
                    if let Some(tx) = engine.upgrade() {
                        let _ = tx.send(Request::Undo(u)).await;
                    }
                }
                None => {
                    // Nothing to take back (a modification): its close goes ahead.
                    for req in held {
                        let _ = broker.send(req).await;
                    }
                    answer(reply, Err(CoreError::NotDurable));
                }
            }
        });
    }

    /// Takes back a command whose records failed to become durable, if the slot still holds
    /// the same registration, and answers `NotDurable`.
    fn undo(&mut self, u: crate::bus::Undo) {
        let same =
            self.engine.book().get(u.pos).is_some_and(|p| p.id == u.id && p.generation == u.generation);
        if same {
            match u.saved {
                // Not on disk: not registered. The retry registers (and writes) it anew.
                None => self.engine.forget(u.pos),
                Some(saved) => self.engine.put_back(u.pos, *saved),
            }
            log::warn!(
                "[STORE] event=command_taken_back id={} (its records are not durable; answered 503)",
                u.id
            );
        } else {
            log::warn!(
                "[STORE] event=command_not_taken_back id={} (the slot changed meanwhile; answered 503)",
                u.id
            );
        }
        if let Some(tx) = u.reply {
            let _ = tx.send(Err(CoreError::NotDurable));
        }
    }

    /// The engine record of a position as a spec (for the journal).
    fn spec_of(&self, p: &crate::core::book::Position) -> crate::core::book::PositionSpec {
        crate::core::book::PositionSpec {
            id: p.id.clone(),
            symbol: Symbol::try_from(self.engine.cache().symbol(p.instrument)).unwrap_or_default(),
            side: p.side,
            qty: p.qty,
            entry: p.entry,
            stop_loss: p.stop_loss,
            take_profit: p.take_profit,
            blind_policy: p.blind_policy,
        }
    }

    /// Tells the feed about an instrument that joined the watch set.
    fn note_new_instrument(&self, r: &Result<Reply, CoreError>) {
        if let (Ok(Reply::Registered { instrument, new_instrument: true, .. }), Some(tx)) =
            (r, &self.new_instruments)
        {
            let sym = Symbol::try_from(self.engine.cache().symbol(*instrument)).unwrap_or_default();
            let _ = tx.try_send((*instrument, sym));
        }
    }

    /// The journal records of the last engine call's notices (decisions, re-opens, closes).
    fn notice_records(&self) -> Vec<crate::store::Record> {
        self.out
            .notices
            .iter()
            .filter_map(|n| match n {
                Notice::Decision { pos, decision } => {
                    self.engine.book().get(*pos).map(|p| crate::store::decided(&p.id, decision))
                }
                Notice::Rejudged { pos, .. } => self
                    .engine
                    .book()
                    .get(*pos)
                    .map(|p| crate::store::Record::Reopened { id: p.id.to_string() }),
                Notice::Closed { pos, how } => {
                    self.engine.book().get(*pos).map(|p| crate::store::closed_record(&p.id, *how))
                }
                _ => None,
            })
            .collect()
    }

    /// Carries out the actions of the last engine call: log, then hand orders to the broker.
    async fn dispatch(&mut self, now: Timestamp) {
        self.dispatch_with(now, true, false).await;
    }

    /// Logs the notices, hands their records to the journal (when `journal`; never waiting for
    /// the disk), then hands the orders to the executor, or returns them when `hold` (a command
    /// whose records are not durable yet sends them once they are).
    async fn dispatch_with(&mut self, now: Timestamp, journal: bool, hold: bool) -> Vec<BrokerRequest> {
        let mut held = Vec::new();
        for n in self.out.notices.iter() {
            report::log_notice(&self.engine, now, n);
            match n {
                Notice::HeldForMarket { pos } => {
                    self.held.insert(*pos);
                }
                Notice::Closed { pos, .. } => {
                    self.held.remove(pos);
                }
                _ => {}
            }
        }
        if let (Some(j), true) = (&self.journal, journal) {
            // Decisions before their orders: the executor journals each order's intent next.
            // One write and one fsync for the whole call (a gap through every position is one
            // fsync, not one per position).
            // Handed over without waiting: the writer logs a failure (the close goes ahead all
            // the same: the safe side of a journal failure is to close).
            let recs = self.notice_records();
            if !recs.is_empty() {
                j.submit(recs, crate::store::Done::Nothing);
            }
        }
        for i in 0..self.out.orders.len() {
            let o = self.out.orders[i].clone();
            report::log_order(&self.engine, &o);
            let req = match o {
                OrderAction::Place { pos, client_id, instrument, side, qty, reason, attempt } => {
                    let symbol = Symbol::try_from(self.engine.cache().symbol(instrument)).unwrap_or_default();
                    let pos_id = self.engine.book().get(pos).map(|p| p.id.clone()).unwrap_or_default();
                    let price_hint = self.engine.cache().quote(instrument).and_then(|q| q.price_for(side));
                    let order = crate::broker::CloseOrder {
                        client_id,
                        pos_id,
                        attempt,
                        instrument,
                        symbol,
                        side,
                        qty,
                        reason,
                        price_hint,
                    };
                    let check_holdings = self.held.remove(&pos);
                    BrokerRequest::Place { pos, order, check_holdings }
                }
                OrderAction::Lookup { pos, client_id, sent_at } => {
                    let p = self.engine.book().get(pos);
                    let pos_id = p.map(|p| p.id.clone()).unwrap_or_default();
                    let symbol = p
                        .and_then(|p| Symbol::try_from(self.engine.cache().symbol(p.instrument)).ok())
                        .unwrap_or_default();
                    BrokerRequest::Lookup { pos, pos_id, client_id, symbol, sent_at }
                }
            };
            // Back-pressure, never a drop: an order that cannot be handed over would leave a
            // crossed stop open.
            self.status.orders_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if hold {
                held.push(req);
            } else if self.broker.send(req).await.is_err() {
                log::error!("[CLOSE] event=broker_gone (broker task stopped; orders cannot be sent)");
            }
        }
        held
    }
}
