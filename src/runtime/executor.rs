//! The executor: carries the engine's order actions out through a broker, journaling each
//! attempt's intent **before** the order is sent and its outcome after, and resolving unknown
//! outcomes by look-up only: an attempt counts as absent (so that a new one may be sent) only
//! once the venue can no longer accept it ([`Broker::absent_after`] past its send time) **and**
//! two look-ups at most 1 s apart agree.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::bus::clock::Clock;
use crate::bus::orders::{CloseOrder, Lookup, OrderJournal};
use crate::bus::{BrokerRequest, EngineHandle, Request};
use crate::core::engine::{BrokerReport, Outcome};
use crate::core::time::Timestamp;

/// Resolves an attempt by look-up with the absent-only-after rule: returns the venue's state,
/// [`Outcome::Rejected`] when it is proven absent, or [`Outcome::Unknown`] when nothing can be
/// concluded yet.
pub async fn resolve<B: Broker>(
    broker: &B,
    clock: &Clock,
    symbol: &str,
    client_id: &str,
    sent_at: Timestamp,
) -> Outcome {
    match broker.lookup(symbol, client_id).await {
        Lookup::Found(o) => o,
        Lookup::Failed(why) => {
            log::warn!("[CLOSE] event=lookup_failed client_id={client_id} cause=\"{why}\"");
            Outcome::Unknown
        }
        Lookup::Absent => {
            let earliest = sent_at + broker.absent_after();
            let now = clock.now();
            if now < earliest {
                // The venue could still accept it: absence now proves nothing.
                return Outcome::Unknown;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match broker.lookup(symbol, client_id).await {
                Lookup::Absent => {
                    log::info!(
                        "[CLOSE] event=proven_absent client_id={client_id} (two look-ups agree, {} ms after send)",
                        clock.now().since(sent_at).as_millis()
                    );
                    Outcome::Rejected
                }
                Lookup::Found(o) => o,
                Lookup::Failed(_) => Outcome::Unknown,
            }
        }
    }
}

/// Whether the account is known to hold exactly none of `order`'s symbol (a complete answer
/// listing it at zero). An answer that failed or leaves the symbol out is not "none": the
/// close is sent (the safe side: a crossed stop never stays open on a guess).
async fn holds_none<B: Broker>(broker: &B, order: &CloseOrder) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), broker.holdings()).await {
        Ok(Ok(held)) => match held.iter().find(|(s, _)| *s == order.symbol) {
            Some((_, q)) => q.units() == 0,
            None => broker.holdings_exhaustive(),
        },
        Ok(Err(e)) => {
            log::warn!(
                "[CLOSE] id={} event=held_close_holdings_unknown cause=\"{}\" (sending)",
                order.pos_id,
                e.replace('"', "'")
            );
            false
        }
        Err(_) => {
            log::warn!(
                "[CLOSE] id={} event=held_close_holdings_unknown cause=\"timeout\" (sending)",
                order.pos_id
            );
            false
        }
    }
}

/// Journals an attempt's outcome: handed to the journal's writer thread (group commit with
/// every other writer), awaited without holding a thread.
async fn record_outcome(
    journal: &Option<Arc<dyn OrderJournal>>,
    pos_id: &str,
    client_id: &str,
    outcome: Outcome,
) {
    let Some(j) = journal.as_ref() else { return };
    let r = crate::store::settled(j.outcome_handover(pos_id, client_id, &outcome))
        .await
        .unwrap_or_else(|| Err("the journal writer stopped".to_string()));
    if let Err(e) = r {
        log::error!("[STORE] event=outcome_not_written id={pos_id} error=\"{e}\"");
    }
}

/// Carries the engine's order actions out through `broker`, journaling each attempt.
pub async fn run_executor<B: Broker>(
    broker: Arc<B>,
    mut rx: mpsc::Receiver<BrokerRequest>,
    engine: EngineHandle,
    journal: Option<Arc<dyn OrderJournal>>,
    clock: Clock,
) {
    while let Some(req) = rx.recv().await {
        let broker = broker.clone();
        let engine = engine.clone();
        let journal = journal.clone();
        // Each order runs on its own task, so this loop never waits on the venue or the engine.
        tokio::spawn(async move {
            let report = match req {
                BrokerRequest::Place { pos, order, check_holdings } => {
                    if check_holdings && holds_none(broker.as_ref(), &order).await {
                        // Held overnight and sold by hand meanwhile: sending would sell what
                        // the account no longer holds. Nothing is sent: the attempt is
                        // reported not executed and the position closed externally.
                        log::warn!(
                            "[CLOSE] id={} symbol={} client_id={} event=held_close_not_sent (the account holds none at the open; closed externally)",
                            order.pos_id,
                            order.symbol,
                            order.client_id
                        );
                        record_outcome(&journal, &order.pos_id, &order.client_id, Outcome::Rejected).await;
                        let report = BrokerReport {
                            pos,
                            client_id: order.client_id.clone(),
                            outcome: Outcome::Rejected,
                            sent_at: None,
                        };
                        let _ = engine.requests.send(Request::Broker(report)).await;
                        let cmd = crate::core::engine::Command::ClosedExternally { id: order.pos_id.clone() };
                        let _ = engine.requests.send(Request::Command { cmd, reply: None }).await;
                        return;
                    }
                    let sent_at = clock.now();
                    // Handed to the journal's writer thread and awaited until it is fsynced
                    // (no order leaves before its intent is durable); the engine never waits,
                    // and concurrent orders share one fsync (ordered group commit).
                    let journaled = match journal.as_ref() {
                        Some(j) => crate::store::settled(j.intent_handover(&order, sent_at))
                            .await
                            .unwrap_or_else(|| Err("the journal writer stopped".to_string())),
                        None => Ok(()),
                    };
                    let sending = journaled.is_ok();
                    if sending {
                        super::crash_point(super::CrashPoint::IntentSynced);
                    }
                    // The send time is the broker's, taken as the request leaves (after the
                    // fsync above and any connecting); the engine dates the attempt with it.
                    let mut sent_at = None;
                    let outcome = match journaled {
                        Ok(()) => {
                            let placed = broker.place_stamped(&order).await;
                            sent_at = placed.sent.map(|i| clock.at(i));
                            placed.outcome
                        }
                        Err(e) => {
                            // Not sent: nothing can have executed. The engine backs off and retries.
                            log::error!(
                                "[STORE] event=intent_not_written id={} client_id={} error=\"{e}\" (order not sent)",
                                order.pos_id,
                                order.client_id
                            );
                            Outcome::Rejected
                        }
                    };
                    if sending {
                        super::crash_point(super::CrashPoint::Sent);
                    }
                    record_outcome(&journal, &order.pos_id, &order.client_id, outcome).await;
                    BrokerReport { pos, client_id: order.client_id, outcome, sent_at }
                }
                BrokerRequest::Lookup { pos, pos_id, client_id, symbol, sent_at } => {
                    let outcome = resolve(broker.as_ref(), &clock, &symbol, &client_id, sent_at).await;
                    if outcome != Outcome::Unknown {
                        record_outcome(&journal, &pos_id, &client_id, outcome).await;
                    }
                    BrokerReport { pos, client_id, outcome, sent_at: None }
                }
            };
            let _ = engine.requests.send(Request::Broker(report)).await;
        });
    }
}
