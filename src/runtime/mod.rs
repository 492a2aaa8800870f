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
pub mod board;
pub mod clock;
pub mod demo;
pub mod edge;
pub mod notify;
pub mod queue;
pub mod reconcile;
pub mod report;
pub mod signals;
pub mod sim;
pub mod status;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::core::CoreError;
use crate::core::engine::{Actions, BrokerReport, Command, Engine, FeedEvent, Notice, OrderAction, Reply};
use crate::core::time::Timestamp;
use crate::core::types::{ClientId, InstrumentId, PosIdx, Symbol, Tick};
use crate::limits::{COMMAND_QUEUE, MAX_INSTRUMENTS, MAX_POSITIONS};
use clock::Clock;
use queue::TickQueue;

/// Faults injected on purpose, for tests of the watchdog and the indicator
/// (`--fault engine-hang@DURATION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Stall the engine loop for ever this long after its start.
    pub engine_hang: Option<std::time::Duration>,
}

static FAULTS: std::sync::OnceLock<Faults> = std::sync::OnceLock::new();

/// Arms `faults` for every engine task this process builds from now on (the command line's
/// `--fault`). The first call wins; returns whether this one did.
pub fn arm_faults(faults: Faults) -> bool {
    FAULTS.set(faults).is_ok()
}

/// The engine at the appliance's capacities.
pub type AppEngine = Engine<MAX_INSTRUMENTS, MAX_POSITIONS>;

/// A look at the engine's state, run on the engine task between two events.
pub type Inspect = Box<dyn FnOnce(&AppEngine, Timestamp) + Send>;

/// A message to the engine task other than a tick.
pub enum Request {
    /// A command, with an optional channel for the reply.
    Command {
        /// The command.
        cmd: Command,
        /// Where the reply goes.
        reply: Option<oneshot::Sender<Result<Reply, CoreError>>>,
    },
    /// A feed or REST source change.
    Feed(FeedEvent),
    /// A broker outcome.
    Broker(BrokerReport),
    /// A read-only look at the state (status page, demo summary).
    Inspect(Inspect),
}

/// An order for the broker executor, with names resolved.
#[derive(Clone, Debug)]
pub enum BrokerRequest {
    /// Journal, then send a closing market order.
    Place {
        /// Position slot (echoed in the report).
        pos: PosIdx,
        /// The order.
        order: crate::broker::CloseOrder,
        /// The close was held for the market's open: what the account holds is checked right
        /// before sending (the trader may have sold by hand meanwhile).
        check_holdings: bool,
    },
    /// Look an attempt up.
    Lookup {
        /// Position slot.
        pos: PosIdx,
        /// Position id (for the journal).
        pos_id: crate::core::types::PositionId,
        /// Client id.
        client_id: ClientId,
        /// Venue symbol.
        symbol: Symbol,
        /// When it was sent.
        sent_at: Timestamp,
    },
}

/// The sending ends the edges use to reach the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    /// Ticks (coalescing; never blocks).
    pub ticks: Arc<TickQueue>,
    /// Everything else (bounded; senders wait when full).
    pub requests: mpsc::Sender<Request>,
    /// Status of the edges (feed, DNS, latency, engine heartbeat).
    pub status: Arc<status::Status>,
}

impl EngineHandle {
    /// Sends a command and waits for the engine's reply.
    pub async fn command(&self, cmd: Command) -> Result<Reply, CoreError> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Command { cmd, reply: Some(tx) }).await.is_err() {
            return Err(CoreError::EngineStopped);
        }
        rx.await.unwrap_or(Err(CoreError::EngineStopped))
    }
    /// Reports a feed event.
    pub async fn feed(&self, ev: FeedEvent) {
        let _ = self.requests.send(Request::Feed(ev)).await;
    }
    /// Runs `f` on the engine task and returns its result.
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AppEngine, Timestamp) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let job: Inspect = Box::new(move |e, now| {
            let _ = tx.send(f(e, now));
        });
        self.requests.send(Request::Inspect(job)).await.ok()?;
        rx.await.ok()
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
                let r = self.command(now, cmd).await;
                if let Some(tx) = reply {
                    let _ = tx.send(r);
                }
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

    /// Runs a command. Everything it changes is on disk before the reply: its own record and
    /// the records of its notices go in one write; when that write fails, a change that would
    /// take protection away (registration, withdrawal, resolve, settlement, closed
    /// externally) is taken back and the answer is `NotDurable` (503: retry). A close it
    /// decided goes ahead all the same: the safe side of a journal failure is to close.
    async fn command(&mut self, now: Timestamp, cmd: Command) -> Result<Reply, CoreError> {
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
                return Err(CoreError::Closed);
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
        let mut r = self.engine.on_command(now, cmd, &mut self.out);
        let Some(j) = self.journal.clone() else {
            self.note_new_instrument(&r);
            self.dispatch(now).await;
            return r;
        };
        let mut recs: Vec<crate::store::Record> = Vec::new();
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
        let mut written = true;
        if let (Ok(_), Some((pos_id, client_id, mut outcome))) = (&r, settle) {
            // The settlement is the attempt's outcome, as if the venue had said it.
            if let crate::core::engine::Outcome::Filled { price, .. }
            | crate::core::engine::Outcome::PartiallyFilled { price, .. } = &mut outcome
            {
                *price = settle_price;
            }
            let j2 = j.clone();
            let write = tokio::task::spawn_blocking(move || {
                crate::broker::OrderJournal::outcome(j2.as_ref(), &pos_id, &client_id, &outcome)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = write {
                log::error!("[STORE] event=write_failed what=settlement error=\"{e}\"");
                written = false;
            }
        }
        recs.extend(self.notice_records());
        if written {
            if let Err(e) = j.append_batch(&recs) {
                log::error!("[STORE] event=write_failed records={} error=\"{e}\"", recs.len());
                written = false;
            }
        }
        if !written && r.is_ok() {
            match (&r, saved) {
                (Ok(Reply::Registered { pos, existed: false, .. }), _) => {
                    // Not on disk: not registered. The retry registers (and writes) it anew.
                    self.engine.forget(*pos);
                    self.out.orders.clear();
                }
                (Ok(Reply::Done { pos }), Some(saved)) if !modify => {
                    self.engine.put_back(*pos, saved);
                    self.out.orders.clear();
                }
                _ => {}
            }
            r = Err(CoreError::NotDurable);
        }
        self.note_new_instrument(&r);
        self.dispatch_with(now, false).await;
        r
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
        self.dispatch_with(now, true).await;
    }

    async fn dispatch_with(&mut self, now: Timestamp, journal: bool) {
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
            let recs = self.notice_records();
            if let Err(e) = j.append_batch(&recs) {
                log::error!("[STORE] event=write_failed records={} error=\"{e}\"", recs.len());
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
            if self.broker.send(req).await.is_err() {
                log::error!("[CLOSE] event=broker_gone (broker task stopped; orders cannot be sent)");
            }
        }
    }
}
