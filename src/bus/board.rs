//! A shared board of the latest simulated prices: the simulated feed writes it, the paper
//! broker fills at it. Fixed size, lock-free.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::core::price::Price;
use crate::core::types::{InstrumentId, Side};

/// Latest bid and ask per instrument id (0 = none).
pub struct PriceBoard {
    bids: Vec<AtomicI64>,
    asks: Vec<AtomicI64>,
}

impl PriceBoard {
    /// A board for ids `0..capacity`.
    pub fn new(capacity: usize) -> PriceBoard {
        PriceBoard {
            bids: (0..capacity).map(|_| AtomicI64::new(0)).collect(),
            asks: (0..capacity).map(|_| AtomicI64::new(0)).collect(),
        }
    }
    /// Records the latest bid and ask.
    pub fn set(&self, id: InstrumentId, bid: Price, ask: Price) {
        let i = usize::from(id.0);
        if let (Some(b), Some(a)) = (self.bids.get(i), self.asks.get(i)) {
            b.store(bid.units(), Ordering::Relaxed);
            a.store(ask.units(), Ordering::Relaxed);
        }
    }
    /// The price a close of `side` fills at: the bid for a long (we sell), the ask for a short.
    pub fn fill_price(&self, id: InstrumentId, side: Side) -> Option<Price> {
        let i = usize::from(id.0);
        let v = match side {
            Side::Long => self.bids.get(i),
            Side::Short => self.asks.get(i),
        }?
        .load(Ordering::Relaxed);
        (v > 0).then(|| Price::from_units(v))
    }
}
