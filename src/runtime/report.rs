//! Log lines: one per event, a tag first, then `key=value` fields (see docs/logs.md).

use std::fmt::Write as _;

use log::{error, info, warn};

use crate::core::book::ClosedHow;
use crate::core::engine::{Engine, Notice, OrderAction};
use crate::core::time::{Timestamp, millis};
use crate::core::types::{BlindPolicy, CloseReason, PosIdx, Rung};

/// `id=<id> symbol=<symbol>` of a position, or `pos=<slot>` if it is gone.
fn who<const N: usize, const M: usize>(e: &Engine<N, M>, pos: PosIdx) -> String {
    match e.book().get(pos) {
        Some(p) => format!("id={} symbol={}", p.id, e.cache().symbol(p.instrument)),
        None => format!("pos={}", pos.0),
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "none".to_string(), |v| v.to_string())
}

/// Logs one engine notice.
pub fn log_notice<const N: usize, const M: usize>(e: &Engine<N, M>, now: Timestamp, n: &Notice) {
    match n {
        Notice::Decision { pos, decision: d } => {
            let mut line = format!(
                "{} {} price={} source={} age_ms={} level={}",
                d.reason.tag(),
                who(e, *pos),
                opt(d.price),
                d.source.as_str(),
                millis(d.age),
                opt(d.level)
            );
            if let Some(p) = e.book().get(*pos) {
                let _ = write!(line, " side={} qty={}", p.side, p.remaining());
            }
            match d.reason {
                CloseReason::StopLoss | CloseReason::TakeProfit => warn!("{line}"),
                CloseReason::Emergency => warn!("{line} reason=emergency"),
                CloseReason::Blind => error!("{line} action=flatten"),
            }
        }
        Notice::Fallback { instrument, from, to, age } => {
            let line = format!(
                "[FALLBACK] symbol={} from={} to={} age_ms={}",
                e.cache().symbol(*instrument),
                from.as_str(),
                to.as_str(),
                opt(age.map(millis))
            );
            if *to == Rung::Live { info!("{line}") } else { warn!("{line}") }
        }
        Notice::Band { instrument, band, age } => {
            let line = format!(
                "[CACHE] symbol={} band={} age_ms={} stale_after_ms={} expire_after_ms={}",
                e.cache().symbol(*instrument),
                band.as_str(),
                millis(*age),
                millis(e.config().stale_after),
                millis(e.config().expire_after)
            );
            if *band == crate::core::types::Band::Live { info!("{line}") } else { warn!("{line}") }
        }
        Notice::Blind { pos } => {
            let policy = e.book().get(*pos).map_or(BlindPolicy::Alert, |p| p.blind_policy);
            warn!(
                "[BLIND] {} state=blind policy={} grace_ms={}",
                who(e, *pos),
                policy.as_str(),
                millis(e.config().blind_grace)
            );
        }
        Notice::BlindPolicy { pos, policy, blind_for } => error!(
            "[BLIND] {} state=acting policy={} blind_ms={}",
            who(e, *pos),
            policy.as_str(),
            millis(*blind_for)
        ),
        Notice::BlindCleared { pos } => info!("[BLIND] {} state=cleared", who(e, *pos)),
        Notice::Rejudged { pos, price } => warn!(
            "[BLIND] {} state=rejudged price={price} (flatten never reached the venue; position protected again)",
            who(e, *pos)
        ),
        Notice::Fill { pos, qty, price, remaining } => {
            info!("[CLOSE] {} event=fill qty={qty} price={} remaining={remaining}", who(e, *pos), opt(*price))
        }
        Notice::Closed { pos, how } => {
            let mut line = format!("[CLOSE] {} event=closed how={}", who(e, *pos), how.as_str());
            if let Some(p) = e.book().get(*pos) {
                let attempts = e.recent_closes().rev().find(|r| r.id == p.id).map_or(0, |r| r.attempts);
                if *how == ClosedHow::Filled {
                    let _ = write!(line, " qty={} exit={} attempts={attempts}", p.filled, opt(p.avg_exit()));
                }
                if let Some(d) = p.decision {
                    let _ = write!(line, " reason={} late_ms={}", d.reason.as_str(), millis(now.since(d.at)));
                }
            }
            info!("{line}");
        }
        Notice::Retry { pos, attempt, delay } => {
            warn!("[CLOSE] {} event=retry failed_attempt={attempt} delay_ms={}", who(e, *pos), millis(*delay))
        }
        Notice::Unknown { pos, attempt } => warn!(
            "[CLOSE] {} event=unknown attempt={attempt} (looking it up before any new order)",
            who(e, *pos)
        ),
        Notice::CloseFailed { pos, attempts } => error!(
            "[CLOSE] {} event=close_failed attempts={attempts} (still retrying at the slowest backoff; operator action needed)",
            who(e, *pos)
        ),
        Notice::HeldForMarket { pos } => warn!(
            "[CLOSE] {} event=held_for_market (market closed: the close goes at the open)",
            who(e, *pos)
        ),
        Notice::StrayReport { pos } => {
            warn!("[CLOSE] {} event=stray_report (not the current attempt; ignored)", who(e, *pos))
        }
        Notice::Overfill { pos, excess } => error!(
            "[CLOSE] {} event=overfill excess={excess} (broker reported more than the position; clamped)",
            who(e, *pos)
        ),
    }
}

/// Logs an order the engine asked for, before it goes to the broker.
pub fn log_order<const N: usize, const M: usize>(e: &Engine<N, M>, o: &OrderAction) {
    match o {
        OrderAction::Place { pos, client_id, side, qty, reason, attempt, .. } => info!(
            "[CLOSE] {} event=send attempt={attempt} client_id={client_id} order_side={} qty={qty} reason={}",
            who(e, *pos),
            match side {
                crate::core::types::Side::Long => "sell",
                crate::core::types::Side::Short => "buy",
            },
            reason.as_str()
        ),
        OrderAction::Lookup { pos, client_id, .. } => {
            info!("[CLOSE] {} event=lookup client_id={client_id}", who(e, *pos))
        }
    }
}

/// Sets up `env_logger`: stderr, level `info` unless `RUST_LOG` says otherwise, one line per
/// event as `<UTC time> <LEVEL> <message>`.
pub fn init_logging() {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or("info");
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, record| {
            writeln!(buf, "{} {:<5} {}", buf.timestamp_millis(), record.level(), record.args())
        })
        .try_init();
}
