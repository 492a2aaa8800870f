//! What the engine task hands the executor and the executor hands a broker: the closing order,
//! what a look-up found, and the journal every attempt is recorded in before it is sent.

use crate::core::engine::Outcome;
use crate::core::price::Qty;
use crate::core::time::Timestamp;
use crate::core::types::{ClientId, CloseReason, InstrumentId, PositionId, Side, Symbol};

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

/// Where intents and outcomes are recorded before and after each order.
pub trait OrderJournal: Send + Sync + 'static {
    /// Records that `order` is about to be sent; must be durable before returning `Ok`.
    fn intent(&self, order: &CloseOrder, sent_at: Timestamp) -> Result<(), String>;
    /// Records what became of an attempt.
    fn outcome(&self, pos_id: &str, client_id: &str, outcome: &Outcome) -> Result<(), String>;
    /// Hands the intent over without blocking the caller's thread; the receiver is answered once
    /// it is durable (or failed). Default: the blocking [`OrderJournal::intent`], answered at once.
    fn intent_handover(
        &self,
        order: &CloseOrder,
        sent_at: Timestamp,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(self.intent(order, sent_at));
        rx
    }
    /// Hands an outcome over without blocking the caller's thread (see
    /// [`OrderJournal::intent_handover`]).
    fn outcome_handover(
        &self,
        pos_id: &str,
        client_id: &str,
        outcome: &Outcome,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(self.outcome(pos_id, client_id, outcome));
        rx
    }
}
