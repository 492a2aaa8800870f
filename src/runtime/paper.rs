//! The paper broker: fills closing orders at the last simulated price after a delay, and can
//! be told that the network is down (orders are then refused before reaching the "venue",
//! which the engine treats as *rejected*). Used by the demo and `run` with `broker.kind = paper`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::board::PriceBoard;
use super::{BrokerRequest, EngineHandle, Request};
use crate::core::engine::{BrokerReport, Outcome};
use crate::core::types::ClientId;

/// Paper broker settings and shared switches.
#[derive(Clone)]
pub struct Paper {
    /// Delay from order to fill.
    pub fill_delay: Duration,
    /// When false, orders fail as if the connection were refused.
    pub network_up: Arc<AtomicBool>,
    /// Prices to fill at.
    pub board: Arc<PriceBoard>,
}

impl Paper {
    /// Serves broker requests until the channel closes.
    pub async fn run(self, mut rx: mpsc::Receiver<BrokerRequest>, engine: EngineHandle) {
        // Outcomes of every order this session, for look-ups (bounded by the orders sent,
        // which the engine bounds by positions x attempts).
        let book: Arc<std::sync::Mutex<HashMap<ClientId, Outcome>>> = Arc::default();
        while let Some(req) = rx.recv().await {
            let me = self.clone();
            let engine = engine.clone();
            let book = book.clone();
            // Each order completes on its own task so this loop never waits on the engine.
            tokio::spawn(async move {
                let report = match req {
                    BrokerRequest::Place { pos, client_id, instrument, side, qty, .. } => {
                        let outcome = if !me.network_up.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Outcome::Rejected
                        } else {
                            tokio::time::sleep(me.fill_delay).await;
                            match me.board.fill_price(instrument, side) {
                                Some(price) => Outcome::Filled { executed: qty, price: Some(price) },
                                None => Outcome::Rejected,
                            }
                        };
                        if let Ok(mut b) = book.lock() {
                            b.insert(client_id.clone(), outcome);
                        }
                        BrokerReport { pos, client_id, outcome }
                    }
                    BrokerRequest::Lookup { pos, client_id, .. } => {
                        let known = book.lock().ok().and_then(|b| b.get(&client_id).copied());
                        BrokerReport { pos, client_id, outcome: known.unwrap_or(Outcome::Rejected) }
                    }
                };
                let _ = engine.requests.send(Request::Broker(report)).await;
            });
        }
    }
}
