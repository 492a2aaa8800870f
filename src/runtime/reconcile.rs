//! Reconciliation: what the broker holds, compared with the book, at start-up and then
//! periodically. A position the account no longer holds at all (closed by the bot, by an
//! intraday square-off) is marked closed externally and never closed again.
//!
//! Conservative by design: only a holding of zero for a symbol ends its open positions (a
//! symbol missing from a non-exhaustive holdings list is unknown, not zero; a
//! partial holding could be another strategy's), positions with an order that may be working
//! are left to their order's outcome, and a failing reconciliation is retried and alerted on
//! but never blocks a close: it runs on its own task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::EngineHandle;
use crate::broker::Broker;
use crate::core::engine::Command;
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
pub async fn once<B: Broker>(broker: &B, engine: &EngineHandle) -> Result<usize, String> {
    let held = broker.holdings().await?;
    let exhaustive = broker.holdings_exhaustive();
    let open: Vec<(PositionId, String)> = engine
        .inspect(|e, _| {
            e.book()
                .iter()
                .filter(|(_, p)| p.state == crate::core::book::PosState::Open)
                .map(|(_, p)| (p.id.clone(), e.cache().symbol(p.instrument).to_string()))
                .collect()
        })
        .await
        .unwrap_or_default();
    let mut n = 0;
    for (id, symbol) in open {
        let holding = held.iter().find(|(s, _)| s.as_str() == symbol).map(|(_, q)| *q);
        let none_held = match holding {
            Some(q) => !q.is_positive(),
            // Missing: zero only where the list is exhaustive; otherwise unknown, leave it.
            None => exhaustive,
        };
        if !none_held {
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
