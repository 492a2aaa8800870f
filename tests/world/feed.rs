//! The fake feed and REST poller of the in-process world: one task that plays the venue's
//! WebSocket session (subscribe, frames every second, drops, silence) and its REST fallback
//! (per-instrument answers while the session is down), pushing `Tick`s through
//! `EngineHandle::ticks` and `FeedEvent`s through `EngineHandle::feed`, on the virtual clock.
//!
//! Before every tick it asks the engine which open positions that price crosses: each is an
//! expectation (a close order must reach the broker within 1 s) that the world checks.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tickguard::core::engine::FeedEvent;
use tickguard::core::price::Price;
use tickguard::core::time::Timestamp;
use tickguard::core::types::{InstrumentId, Quote, Side, Source, Symbol, Tick};
use tickguard::runtime::EngineHandle;
use tickguard::runtime::clock::Clock;
use tokio::sync::{mpsc, watch};

use crate::venue::Venue;

/// A crossing price that reached the box: a close order must follow within 1 s.
#[derive(Clone, Debug)]
pub struct Expect {
    pub life: u32,
    pub pos_id: String,
    pub generation: u32,
    pub symbol: String,
    pub at: Timestamp,
    pub source: &'static str,
}

#[derive(Default)]
pub struct FeedState {
    /// The session is dropped and reconnecting fails.
    pub down: bool,
    /// The session stays up but no frame arrives.
    pub silent: bool,
    /// Every REST request fails (DNS or network).
    pub rest_down: bool,
    /// The market is open (reported by the feed as the venue's market status).
    pub market_open: bool,
    /// When the engine was last told the market opened (this life).
    pub opened_at: Timestamp,
    /// Expectations recorded by the pusher.
    pub expects: Vec<Expect>,
    /// Instruments the feed was given (start-up list and live additions).
    pub watching: Vec<(InstrumentId, String)>,
    /// Ticks pushed this life.
    pub pushed: u64,
}

#[derive(Clone, Default)]
pub struct Feed(pub Arc<Mutex<FeedState>>);

impl Feed {
    pub fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct FeedParams {
    pub frame_every: Duration,
    pub silence_timeout: Duration,
    pub rest_poll: Duration,
}

fn quote(p: Price, source: Source, dated: Timestamp) -> Quote {
    Quote { bid: Some(p), ask: Some(p), last: Some(p), source, exch_ts: None, dated }
}

fn crosses(side: Side, sl: Option<Price>, tp: Option<Price>, px: Price) -> bool {
    match side {
        Side::Long => sl.is_some_and(|s| px <= s) || tp.is_some_and(|t| px >= t),
        Side::Short => sl.is_some_and(|s| px >= s) || tp.is_some_and(|t| px <= t),
    }
}

/// Pushes one tick, recording the expectations it creates.
#[allow(clippy::too_many_arguments)]
async fn push(
    handle: &EngineHandle,
    feed: &Feed,
    life: u32,
    clock: Clock,
    id: InstrumentId,
    sym: &str,
    px: Price,
    source: Source,
) {
    let open = handle
        .inspect(move |e, _| {
            if !e.market_open() {
                return Vec::new();
            }
            e.book()
                .iter()
                .filter(|(_, p)| p.instrument == id && p.state == tickguard::core::book::PosState::Open)
                .map(|(_, p)| (p.id.to_string(), p.generation, p.side, p.stop_loss, p.take_profit))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
    let now = clock.now();
    {
        let mut f = feed.lock();
        for (pos_id, generation, side, sl, tp) in open {
            if crosses(side, sl, tp, px) {
                let source = if source == Source::Live { "live" } else { "rest" };
                f.expects.push(Expect { life, pos_id, generation, symbol: sym.to_string(), at: now, source });
            }
        }
        f.pushed += 1;
    }
    handle.ticks.push(Tick::new(id, quote(px, source, now)));
}

/// The feed task: runs until `stop`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    feed: Feed,
    venue: Venue,
    params: FeedParams,
    handle: EngineHandle,
    clock: Clock,
    instruments: Vec<(InstrumentId, String)>,
    mut added: mpsc::Receiver<(InstrumentId, Symbol)>,
    mut stop: watch::Receiver<bool>,
) {
    let life = venue.lock().life;
    feed.lock().watching = instruments;
    let mut connected = false;
    let mut last_frame = clock.now();
    let mut next_rest = clock.now();
    let mut market_reported = true; // the engine starts with the market open
    for _round in 0..u64::MAX {
        // New instruments from registrations.
        while let Ok((id, sym)) = added.try_recv() {
            feed.lock().watching.push((id, sym.to_string()));
            if connected {
                handle.feed(FeedEvent::Subscribed(id)).await;
            }
        }
        let (down, silent, rest_down, market) = {
            let f = feed.lock();
            (f.down, f.silent, f.rest_down, f.market_open)
        };
        if market != market_reported {
            handle.feed(FeedEvent::Market(market)).await;
            market_reported = market;
            if market {
                feed.lock().opened_at = clock.now();
            }
        }
        let now = clock.now();
        if connected && (down || (silent && now.since(last_frame) >= params.silence_timeout)) {
            handle.feed(FeedEvent::Disconnected).await;
            connected = false;
        }
        if !connected && !down && !silent {
            handle.feed(FeedEvent::SubscribedAll).await;
            connected = true;
        }
        let watching = feed.lock().watching.clone();
        if connected && !silent {
            last_frame = now;
            for (id, sym) in &watching {
                if let Some(px) = venue.price(sym) {
                    push(&handle, &feed, life, clock, *id, sym, px, Source::Live).await;
                }
            }
        }
        if !connected && now >= next_rest {
            next_rest = now + params.rest_poll;
            // Per instrument: an error about one symbol never takes REST from the others.
            for (id, sym) in &watching {
                match venue.price(sym) {
                    Some(px) if !rest_down => {
                        handle.feed(FeedEvent::RestOk(*id)).await;
                        push(&handle, &feed, life, clock, *id, sym, px, Source::Rest).await;
                    }
                    _ => handle.feed(FeedEvent::RestError(*id)).await,
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(params.frame_every) => {}
        }
    }
}
