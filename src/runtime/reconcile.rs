//! Reconciliation: what the broker holds, compared with the book, at start-up and then
//! periodically. A position the account no longer holds at all (closed by the bot, by an
//! intraday square-off) is marked closed externally and never closed again.
//!
//! Conservative by design: only a holding of exactly zero for a symbol, in a whole answer
//! requested after the position was registered, ends its open positions (a symbol missing
//! from the list is unknown, not zero; a short is a negative holding, not none; a partial
//! holding could be another strategy's), positions with an order that may be working
//! are left to their order's outcome, and a failing reconciliation is retried and alerted on
//! but never blocks a close: it runs on its own task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::EngineHandle;
use crate::broker::Broker;
use crate::core::engine::Command;
use crate::core::price::Qty;
use crate::core::time::Timestamp;
use crate::core::types::PositionId;

/// Runs reconciliation now and then every `every` until `stop` fires.
pub async fn run<B: Broker>(
    broker: Arc<B>,
    engine: EngineHandle,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        match once(broker.as_ref(), &engine).await {
            Ok(n) => {
                if failures > 0 {
                    log::info!("[CLOSE] event=reconcile_recovered after_failures={failures}");
                }
                failures = 0;
                if n > 0 {
                    log::warn!("[CLOSE] event=reconciled closed_externally={n}");
                }
            }
            Err(e) => {
                failures += 1;
                log::error!(
                    "[CLOSE] event=reconcile_failed failures={failures} cause=\"{}\" (closes are not affected; retrying)",
                    e.replace('"', "'")
                );
            }
        }
        let wait = if failures > 0 { every.min(Duration::from_secs(15)) } else { every };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One comparison; returns how many positions were marked closed externally.
///
/// The open positions are listed (with the engine's time) **before** the holdings request is
/// sent, and only positions registered before that time are judged: an answer requested
/// before a position existed says nothing about it (a registration made while the request is
/// in flight is not in the list at all). A position is closed externally only when the
/// answer came back whole (a failed or partial answer is an error: nothing is judged) and
/// shows exactly zero for its symbol. Holdings are signed: a short reads negative, which is
/// not "holds none". A symbol missing from the answer is unknown, whatever the broker: the
/// brokers list every symbol they can answer for explicitly, zero included.
pub async fn once<B: Broker>(broker: &B, engine: &EngineHandle) -> Result<usize, String> {
    let listed = engine
        .inspect(|e, now| {
            let open: Vec<(PositionId, String, Timestamp)> = e
                .book()
                .iter()
                .filter(|(_, p)| p.state == crate::core::book::PosState::Open)
                .map(|(_, p)| (p.id.clone(), e.cache().symbol(p.instrument).to_string(), p.registered_at))
                .collect();
            (open, now)
        })
        .await;
    // No answer from the engine (shutting down): nothing to judge, and nothing is asked.
    let Some((open, asked_at)) = listed else { return Ok(0) };
    // Asked even with nothing open: a refused token or an unreachable broker is an alert
    // now, not at the next stop.
    let held = broker.holdings().await?;
    let mut n = 0;
    for (id, symbol, registered_at) in open {
        if registered_at > asked_at {
            // Cannot happen (the list was taken at `asked_at`); kept as the rule's statement.
            continue;
        }
        let holding = held.iter().find(|(s, _)| s.as_str() == symbol).map(|(_, q)| *q);
        // Exactly zero ends it; a short (negative), a long, or no word at all leaves it.
        if holding != Some(Qty::ZERO) {
            continue;
        }
        match engine.command(Command::ClosedExternally { id: id.clone() }).await {
            Ok(_) => {
                n += 1;
                log::warn!(
                    "[CLOSE] id={id} symbol={symbol} event=closed_externally (the account holds none; never closed again)"
                );
            }
            Err(e) => log::info!("[CLOSE] id={id} event=reconcile_skipped reason=\"{e}\""),
        }
    }
    Ok(n)
}
