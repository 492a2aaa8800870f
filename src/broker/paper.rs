//! The paper broker: fills closing orders at the last simulated price after a delay; partial
//! fills on request; and a network switch so the demo can show a close that fails while the
//! network is down (orders are refused before reaching the "venue": *rejected*).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Broker, CloseOrder, Lookup};
use crate::bus::board::PriceBoard;
use crate::core::engine::Outcome;
use crate::core::price::Qty;
use crate::core::types::{ClientId, Symbol};

/// Paper broker settings and shared switches.
pub struct Paper {
    /// Delay from order to fill.
    pub fill_delay: Duration,
    /// When false, orders fail as if the connection were refused.
    pub network_up: Arc<AtomicBool>,
    /// Prices to fill at.
    pub board: Arc<PriceBoard>,
    /// Fill only this fraction (percent) of each order (100 = full fills).
    pub fill_percent: u8,
    orders: Mutex<HashMap<ClientId, Outcome>>,
}

impl Paper {
    /// A paper broker filling fully after `fill_delay`.
    pub fn new(fill_delay: Duration, network_up: Arc<AtomicBool>, board: Arc<PriceBoard>) -> Paper {
        Paper { fill_delay, network_up, board, fill_percent: 100, orders: Mutex::new(HashMap::new()) }
    }
}

impl Broker for Paper {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        if !self.network_up.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Outcome::Rejected;
        }
        tokio::time::sleep(self.fill_delay).await;
        let outcome = match self.board.fill_price(order.instrument, order.side).or(order.price_hint) {
            Some(price) if self.fill_percent >= 100 => {
                Outcome::Filled { executed: order.qty, price: Some(price) }
            }
            Some(price) => {
                let part = order.qty.units() / 100 * i64::from(self.fill_percent);
                Outcome::PartiallyFilled { executed: Qty::from_units(part), price: Some(price) }
            }
            None => Outcome::Rejected,
        };
        if let Ok(mut m) = self.orders.lock() {
            m.insert(order.client_id.clone(), outcome);
        }
        outcome
    }

    async fn lookup(&self, _symbol: &str, client_id: &str) -> Lookup {
        match self.orders.lock().ok().and_then(|m| m.get(client_id).copied()) {
            Some(o) => Lookup::Found(o),
            None => Lookup::Absent,
        }
    }

    /// The paper account answers for no symbol: an empty list, in which every symbol is
    /// unknown (never "holds none"), so reconciliation can never close a paper position.
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        Ok(Vec::new())
    }

    fn absent_after(&self) -> Duration {
        Duration::ZERO
    }
}
