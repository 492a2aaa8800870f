//! Brokers: one trait (place a closing order, look an order up, read what the account holds)
//! and the executor that carries the engine's order actions out through it.
//!
//! The executor journals every attempt's intent **before** the order is sent and its outcome
//! after, and resolves unknown outcomes by look-up only: an attempt counts as absent (so that
//! a new one may be sent) only once the venue can no longer accept it
//! ([`Broker::absent_after`] past its send time) **and** two look-ups at most 1 s apart agree.

pub mod binance;
pub mod paper;
pub mod upstox;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::engine::{BrokerReport, Outcome};
use crate::core::price::Qty;
use crate::core::time::Timestamp;
use crate::core::types::{ClientId, CloseReason, InstrumentId, PositionId, Side, Symbol};
use crate::runtime::clock::Clock;
use crate::runtime::{BrokerRequest, EngineHandle, Request};

/// A market order closing (part of) a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseOrder {
    /// Client id of this attempt (journaled before sending).
    pub client_id: ClientId,
    /// Position id.
    pub pos_id: PositionId,
    /// Attempt number.
    pub attempt: u16,
    /// Instrument id.
    pub instrument: InstrumentId,
    /// Venue symbol.
    pub symbol: Symbol,
    /// Side of the position (the order goes the other way).
    pub side: Side,
    /// Quantity to close.
    pub qty: Qty,
    /// Why.
    pub reason: CloseReason,
    /// The price the position is judged on now (the paper broker fills at it when it has no
    /// simulated price of its own).
    pub price_hint: Option<crate::core::price::Price>,
}

/// What a look-up found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The venue knows the order; this is its state.
    Found(Outcome),
    /// The venue says it has no such order.
    Absent,
    /// The look-up itself failed (network, 5xx): nothing learned.
    Failed(String),
}

/// A venue's order API.
pub trait Broker: Send + Sync + 'static {
    /// Sends a market order closing `order.qty`. Never fails: a failure before the request
    /// can have reached the venue is [`Outcome::Rejected`]; anything after sending whose
    /// result is not known (timeout, 5xx, connection lost) is [`Outcome::Unknown`].
    fn place(&self, order: &CloseOrder) -> impl Future<Output = Outcome> + Send;
    /// Looks an attempt up by its client id.
    fn lookup(&self, symbol: &str, client_id: &str) -> impl Future<Output = Lookup> + Send;
    /// What the account holds, per symbol (for reconciliation).
    fn holdings(&self) -> impl Future<Output = Result<Vec<(Symbol, Qty)>, String>> + Send;
    /// How long after its send time an order can still be accepted by the venue
    /// (Binance: `recvWindow` plus a margin); a look-up that finds nothing earlier proves
    /// nothing.
    fn absent_after(&self) -> Duration;
    /// True when [`Broker::holdings`] lists every instrument the account could hold, so that
    /// a symbol missing from it is held at zero. No real broker claims it any more: a missing
    /// symbol is unknown, and only an explicit zero is "holds none" (Upstox lists every symbol
    /// of its instrument map, at zero when not held; Binance lists the base assets it could
    /// read). Reconciliation and the held-close check leave a position alone on unknown.
    fn holdings_exhaustive(&self) -> bool {
        false
    }
}

/// A credential read from a file (`config::read_secret`): its `Debug` never shows it, and
/// nothing in the brokers formats it into a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The credential itself, for a request header or a signing key only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One of the brokers, chosen at start-up by `broker.kind` ([`Broker`] is not object-safe:
/// its methods return `impl Future`, so the runtime holds this enum instead of a trait object).
pub enum AnyBroker {
    /// Simulated fills.
    Paper(paper::Paper),
    /// Binance spot.
    Binance(binance::Binance),
    /// Upstox.
    Upstox(upstox::Upstox),
}

impl Broker for AnyBroker {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        match self {
            AnyBroker::Paper(b) => b.place(order).await,
            AnyBroker::Binance(b) => b.place(order).await,
            AnyBroker::Upstox(b) => b.place(order).await,
        }
    }
    async fn lookup(&self, symbol: &str, client_id: &str) -> Lookup {
        match self {
            AnyBroker::Paper(b) => b.lookup(symbol, client_id).await,
            AnyBroker::Binance(b) => b.lookup(symbol, client_id).await,
            AnyBroker::Upstox(b) => b.lookup(symbol, client_id).await,
        }
    }
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        match self {
            AnyBroker::Paper(b) => b.holdings().await,
            AnyBroker::Binance(b) => b.holdings().await,
            AnyBroker::Upstox(b) => b.holdings().await,
        }
    }
    fn absent_after(&self) -> Duration {
        match self {
            AnyBroker::Paper(b) => b.absent_after(),
            AnyBroker::Binance(b) => b.absent_after(),
            AnyBroker::Upstox(b) => b.absent_after(),
        }
    }

    fn holdings_exhaustive(&self) -> bool {
        match self {
            AnyBroker::Paper(b) => b.holdings_exhaustive(),
            AnyBroker::Binance(b) => b.holdings_exhaustive(),
            AnyBroker::Upstox(b) => b.holdings_exhaustive(),
        }
    }
}

/// Where intents and outcomes are recorded before and after each order.
pub trait OrderJournal: Send + Sync + 'static {
    /// Records that `order` is about to be sent; must be durable before returning `Ok`.
    fn intent(&self, order: &CloseOrder, sent_at: Timestamp) -> Result<(), String>;
    /// Records what became of an attempt.
    fn outcome(&self, pos_id: &str, client_id: &str, outcome: &Outcome) -> Result<(), String>;
}

/// Resolves an attempt by look-up with the absent-only-after rule: returns the venue's state,
/// [`Outcome::Rejected`] when it is proven absent, or [`Outcome::Unknown`] when nothing can be
/// concluded yet.
pub async fn resolve<B: Broker>(
    broker: &B,
    clock: &Clock,
    symbol: &str,
    client_id: &str,
    sent_at: Timestamp,
) -> Outcome {
    match broker.lookup(symbol, client_id).await {
        Lookup::Found(o) => o,
        Lookup::Failed(why) => {
            log::warn!("[CLOSE] event=lookup_failed client_id={client_id} cause=\"{why}\"");
            Outcome::Unknown
        }
        Lookup::Absent => {
            let earliest = sent_at + broker.absent_after();
            let now = clock.now();
            if now < earliest {
                // The venue could still accept it: absence now proves nothing.
                return Outcome::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match broker.lookup(symbol, client_id).await {
                Lookup::Absent => {
                    log::info!(
                        "[CLOSE] event=proven_absent client_id={client_id} (two look-ups agree, {} ms after send)",
                        clock.now().since(sent_at).as_millis()
                    );
                    Outcome::Rejected
                }
                Lookup::Found(o) => o,
                Lookup::Failed(_) => Outcome::Unknown,
            }
        }
    }
}

/// Whether the account is known to hold exactly none of `order`'s symbol (a complete answer
/// listing it at zero). An answer that failed or leaves the symbol out is not "none": the
/// close is sent (the safe side: a crossed stop never stays open on a guess).
async fn holds_none<B: Broker>(broker: &B, order: &CloseOrder) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), broker.holdings()).await {
        Ok(Ok(held)) => match held.iter().find(|(s, _)| *s == order.symbol) {
            Some((_, q)) => q.units() == 0,
            None => broker.holdings_exhaustive(),
        },
        Ok(Err(e)) => {
            log::warn!(
                "[CLOSE] id={} event=held_close_holdings_unknown cause=\"{}\" (sending)",
                order.pos_id,
                e.replace('"', "'")
            );
            false
        }
        Err(_) => {
            log::warn!(
                "[CLOSE] id={} event=held_close_holdings_unknown cause=\"timeout\" (sending)",
                order.pos_id
            );
            false
        }
    }
}

/// Journals an attempt's outcome on a blocking thread (group commit with other writers).
async fn record_outcome(
    journal: &Option<Arc<dyn OrderJournal>>,
    pos_id: &str,
    client_id: &str,
    outcome: Outcome,
) {
    let Some(j) = journal.clone() else { return };
    let (p, c) = (pos_id.to_string(), client_id.to_string());
    let r = tokio::task::spawn_blocking(move || j.outcome(&p, &c, &outcome))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(e) = r {
        log::error!("[STORE] event=outcome_not_written id={pos_id} error=\"{e}\"");
    }
}

/// Carries the engine's order actions out through `broker`, journaling each attempt.
pub async fn run_executor<B: Broker>(
    broker: Arc<B>,
    mut rx: mpsc::Receiver<BrokerRequest>,
    engine: EngineHandle,
    journal: Option<Arc<dyn OrderJournal>>,
    clock: Clock,
) {
    while let Some(req) = rx.recv().await {
        let broker = broker.clone();
        let engine = engine.clone();
        let journal = journal.clone();
        // Each order runs on its own task, so this loop never waits on the venue or the engine.
        tokio::spawn(async move {
            let report = match req {
                BrokerRequest::Place { pos, order, check_holdings } => {
                    if check_holdings && holds_none(broker.as_ref(), &order).await {
                        // Held overnight and sold by hand meanwhile: sending would sell what
                        // the account no longer holds. Nothing is sent: the attempt is
                        // reported not executed and the position closed externally.
                        log::warn!(
                            "[CLOSE] id={} symbol={} client_id={} event=held_close_not_sent (the account holds none at the open; closed externally)",
                            order.pos_id,
                            order.symbol,
                            order.client_id
                        );
                        record_outcome(&journal, &order.pos_id, &order.client_id, Outcome::Rejected).await;
                        let report = BrokerReport {
                            pos,
                            client_id: order.client_id.clone(),
                            outcome: Outcome::Rejected,
                        };
                        let _ = engine.requests.send(Request::Broker(report)).await;
                        let cmd = crate::core::engine::Command::ClosedExternally { id: order.pos_id.clone() };
                        let _ = engine.requests.send(Request::Command { cmd, reply: None }).await;
                        return;
                    }
                    let sent_at = clock.now();
                    // On a blocking thread: the fsync must not stall the runtime (the engine),
                    // and concurrent orders share one fsync (the journal's group commit).
                    let journaled = match journal.clone() {
                        Some(j) => {
                            let o = order.clone();
                            tokio::task::spawn_blocking(move || j.intent(&o, sent_at))
                                .await
                                .unwrap_or_else(|e| Err(e.to_string()))
                        }
                        None => Ok(()),
                    };
                    let outcome = match journaled {
                        Ok(()) => broker.place(&order).await,
                        Err(e) => {
                            // Not sent: nothing can have executed. The engine backs off and retries.
                            log::error!(
                                "[STORE] event=intent_not_written id={} client_id={} error=\"{e}\" (order not sent)",
                                order.pos_id,
                                order.client_id
                            );
                            Outcome::Rejected
                        }
                    };
                    record_outcome(&journal, &order.pos_id, &order.client_id, outcome).await;
                    BrokerReport { pos, client_id: order.client_id, outcome }
                }
                BrokerRequest::Lookup { pos, pos_id, client_id, symbol, sent_at } => {
                    let outcome = resolve(broker.as_ref(), &clock, &symbol, &client_id, sent_at).await;
                    if outcome != Outcome::Unknown {
                        record_outcome(&journal, &pos_id, &client_id, outcome).await;
                    }
                    BrokerReport { pos, client_id, outcome }
                }
            };
            let _ = engine.requests.send(Request::Broker(report)).await;
        });
    }
}
