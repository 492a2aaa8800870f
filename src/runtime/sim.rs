//! The simulated venue for `feed.venue = "sim"`: a seeded random walk per instrument, written
//! to the tick queue like a live feed and to the price board the paper broker fills at.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::EngineHandle;
use super::board::PriceBoard;
use super::clock::Clock;
use crate::core::backoff::Rng;
use crate::core::engine::FeedEvent;
use crate::core::price::Price;
use crate::core::types::{InstrumentId, Quote, Source, Tick};

/// A live quote with this bid and a one-tick-wide ask, dated now.
pub fn live_quote(clock: &Clock, bid: Price, spread: Price) -> Quote {
    let ask = bid.checked_add(spread).unwrap_or(bid);
    Quote {
        bid: Some(bid),
        ask: Some(ask),
        last: Some(bid),
        source: Source::Live,
        exch_ts: None,
        dated: clock.now(),
    }
}

/// Publishes one simulated quote to the engine and the board.
pub fn publish(handle: &EngineHandle, board: &PriceBoard, clock: &Clock, id: InstrumentId, bid: Price) {
    let spread = Price::from_units((bid.units() / 20_000).max(1));
    let q = live_quote(clock, bid, spread);
    board.set(id, bid, q.ask.unwrap_or(bid));
    handle.ticks.push(Tick::new(id, q));
}

/// A random-walk feed.
pub struct SimFeed {
    /// Instruments and their starting prices.
    pub instruments: Vec<(InstrumentId, Price)>,
    /// Time between ticks of each instrument.
    pub interval: Duration,
    /// Seed of the walk.
    pub seed: u64,
}

impl SimFeed {
    /// Runs until shutdown: subscribes everything, then ticks every instrument each interval,
    /// each step within ±0.1 %.
    pub async fn run(
        self,
        handle: EngineHandle,
        board: Arc<PriceBoard>,
        clock: Clock,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut rng = Rng::new(self.seed);
        let mut prices: Vec<(InstrumentId, i64)> =
            self.instruments.iter().map(|(i, p)| (*i, p.units().max(1))).collect();
        handle.feed(FeedEvent::SubscribedAll).await;
        let mut every = tokio::time::interval(self.interval.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => {}
            }
            for (id, units) in prices.iter_mut() {
                let step = (rng.next_u64() % 21) as i64 - 10; // -10..=10 basis points / 10
                // Steps of up to ±0.1 %, on a 0.01 tick.
                *units = ((*units + *units / 10_000 * step) / 1_000_000 * 1_000_000).max(1_000_000);
                publish(&handle, &board, &clock, *id, Price::from_units(*units));
            }
        }
    }
}
