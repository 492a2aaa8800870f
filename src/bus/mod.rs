//! The bus: what the edges and the engine task share, below both. The engine handle (the
//! sending ends into the engine task), its requests, the orders it hands to the executor, the
//! order journal trait, the tick queue, the clock and the shared status of the edges.
//!
//! It imports only `limits` and `core`; every edge (`net`, `feed`, `broker`, `store`,
//! `control`, `indicator`) imports it, and nothing here knows any edge.

pub mod board;
pub mod clock;
pub mod error;
pub mod orders;
pub mod queue;
pub mod status;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::core::CoreError;
use crate::core::engine::{BrokerReport, Command, Engine, FeedEvent, Reply};
use crate::core::time::Timestamp;
use crate::core::types::{ClientId, PosIdx, Symbol};
use crate::limits::{MAX_INSTRUMENTS, MAX_POSITIONS};
use queue::TickQueue;

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
    /// The journal could not make a command's records durable: take the command back and
    /// answer `NotDurable` (sent by the engine task's own wait for the journal).
    Undo(Undo),
}

/// A command taken back after its records failed to become durable ([`Request::Undo`]).
pub struct Undo {
    /// Position slot.
    pub pos: PosIdx,
    /// The position id and registration the command was about (the slot must still hold it).
    pub id: crate::core::types::PositionId,
    /// Its registration number.
    pub generation: u32,
    /// `None`: forget a new registration; `Some`: put the position back as it was saved.
    pub saved: Option<Box<crate::core::book::Position>>,
    /// Where the `NotDurable` answer goes.
    pub reply: Option<oneshot::Sender<Result<Reply, CoreError>>>,
}

/// An order for the broker executor, with names resolved.
#[derive(Clone, Debug)]
pub enum BrokerRequest {
    /// Journal, then send a closing market order.
    Place {
        /// Position slot (echoed in the report).
        pos: PosIdx,
        /// The order.
        order: orders::CloseOrder,
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
