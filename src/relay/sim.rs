//! The demo's relay upstream: the simulated venue's price board (`tickguard demo`). Each
//! relayed symbol the demo trades gets a quote and a trade at its board price every
//! [`EVERY`]; the demo's outage (feed and network dead together) is the upstream's outage, so
//! relay clients see `status: stale` and, since a simulated venue keeps no history, an
//! announced gap for the bars it missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::hub::{BackfillError, BackfillJob, Input};
use super::protocol::QuoteFields;
use super::stats::RelayStats;
use super::upstream::deliver;
use crate::bus::board::PriceBoard;
use crate::bus::clock::{mono, wall_unix_ms};
use crate::core::price::Qty;
use crate::core::types::{InstrumentId, Side, Symbol};

/// Time between two simulated quotes of a symbol.
pub const EVERY: Duration = Duration::from_millis(250);

/// What the demo lends the relay.
#[derive(Clone)]
pub struct SimSource {
    /// The simulated prices.
    pub board: Arc<PriceBoard>,
    /// The demo's symbols and their ids on the board.
    pub names: Vec<(String, InstrumentId)>,
    /// False while the demo's network is down.
    pub up: Arc<AtomicBool>,
}

/// Quotes and trades from the board until `stop` fires.
pub async fn run(
    src: SimSource,
    mut add: mpsc::Receiver<(InstrumentId, Symbol)>,
    hub: mpsc::Sender<Input>,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut relayed: Vec<(u16, InstrumentId)> = Vec::new();
    let mut live = false;
    let mut every = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = every.tick() => {}
        }
        while let Ok((rid, sym)) = add.try_recv() {
            if let Some((_, bid)) = src.names.iter().find(|(n, _)| n.as_str() == sym.as_str()) {
                relayed.push((rid.0, *bid));
            }
        }
        let up = src.up.load(Ordering::Relaxed);
        if up != live {
            live = up;
            stats.upstream_live.store(u64::from(up), Ordering::Relaxed);
            deliver(&hub, &stats, if up { Input::Up } else { Input::Down }).await;
        }
        if !live {
            continue;
        }
        for (rid, bid) in &relayed {
            let (Some(b), Some(a)) =
                (src.board.fill_price(*bid, Side::Long), src.board.fill_price(*bid, Side::Short))
            else {
                continue;
            };
            let now = wall_unix_ms();
            deliver(
                &hub,
                &stats,
                Input::Quote {
                    sym: *rid,
                    q: QuoteFields { bid: Some(b), ask: Some(a), last: None, ts_event: None, ts_recv: now },
                    recv: mono(),
                },
            )
            .await;
            deliver(
                &hub,
                &stats,
                Input::Trade { sym: *rid, price: b, qty: Qty::from_units(100_000_000), t_ms: now },
            )
            .await;
        }
    }
}

/// The simulated venue keeps no history: a first fill is empty, a recovery cannot be
/// backfilled (its hole is announced as a gap); a symbol the demo does not trade is unknown.
pub async fn run_backfill(
    names: Vec<String>,
    mut jobs: mpsc::Receiver<BackfillJob>,
    hub: mpsc::Sender<Input>,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let job = tokio::select! {
            _ = stop.changed() => return,
            j = jobs.recv() => match j { Some(j) => j, None => return },
        };
        let result = if !names.contains(&job.symbol) {
            Err(BackfillError {
                unknown_symbol: true,
                why: "the demo trades BOSCHLTD, ADANIENT, KAYNES and RELIANCE".into(),
            })
        } else if job.from.is_none() {
            Ok((Vec::new(), true))
        } else {
            Err(BackfillError { unknown_symbol: false, why: "the simulated venue keeps no history".into() })
        };
        deliver(&hub, &stats, Input::Backfill { sym: job.sym, iv: job.iv, result }).await;
    }
}
