//! The relay's Upstox upstream: the guard's own Upstox venue ([`UpstoxFeed`], the same
//! session driver, protobuf decoder and authorization) on the relay's own connection, with
//! the relay's own token (`relay.token_file`: Upstox allows one market-data connection per
//! app and user, so the relay never uses the guard's). Quotes and last traded prices reach the
//! relay's own tick queue and become quotes and trades for the hub; candles are built from
//! the last traded prices and backfilled from Upstox's intraday candle API.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::RelaySettings;
use super::candle::{Candle, Interval, Source};
use super::hub::{BackfillError, BackfillJob, Input};
use super::protocol::QuoteFields;
use super::stats::RelayStats;
use super::upstream::deliver;
use crate::bus::clock::{mono, wall_unix_ms};
use crate::bus::queue::TickQueue;
use crate::core::price::{Price, Qty};
use crate::core::types::Tick;
use crate::feed::upstox::{InstrumentMap, Mode, ReadToken, UpstoxConfig};
use crate::limits::RELAY_SYMBOLS;
use crate::net::ws::WsLimits;

/// The session settings of the relay's Upstox connection (`ltpc` mode: the last traded price
/// and time, what the guard's decoder reads).
pub fn session_config(cfg: &RelaySettings) -> UpstoxConfig {
    UpstoxConfig {
        rest: cfg.rest.clone(),
        token_file: cfg.token_file.clone().unwrap_or_default(),
        mode: Mode::Ltpc,
        cap: Mode::Ltpc.cap().min(RELAY_SYMBOLS),
        silence_timeout: cfg.silence_timeout,
        reconnect_initial: cfg.reconnect_initial,
        reconnect_max: cfg.reconnect_max,
        jitter: 0.5,
        connect_timeout: std::time::Duration::from_secs(10),
        control_spacing: std::time::Duration::from_millis(200),
        limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
        max_lifetime: None,
        rest_poll: std::time::Duration::from_secs(3600),
        rest_timeout: std::time::Duration::from_secs(10),
        seed: cfg.seed,
        read_token: cfg.read_token,
    }
}

/// Turns the relay's tick queue (filled by the Upstox venue) into quotes and trades for the
/// hub: a quote when both sides are known, a trade at each new last traded price (its
/// quantity is not carried: volume comes from the REST candles).
pub async fn run_ticks(
    ticks: Arc<TickQueue>,
    hub: mpsc::Sender<Input>,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf: Vec<Tick> = Vec::with_capacity(RELAY_SYMBOLS);
    let mut last: Vec<Option<(Price, Option<i64>)>> = vec![None; RELAY_SYMBOLS];
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.notified() => {}
        }
        buf.clear();
        ticks.drain_into(&mut buf);
        for t in &buf {
            let sym = t.instrument.0;
            let q = &t.quote;
            let now = wall_unix_ms();
            // Upstox's feed (as the guard decodes it) carries the last traded price and its
            // time: the quote says so, with bid and ask `null`.
            let fields =
                QuoteFields { bid: q.bid, ask: q.ask, last: q.last, ts_event: q.exch_ts, ts_recv: now };
            deliver(&hub, &stats, Input::Quote { sym, q: fields, recv: mono() }).await;
            if let Some(p) = q.last {
                let seen = last.get(usize::from(sym)).copied().flatten();
                if seen != Some((p, q.exch_ts)) {
                    if let Some(s) = last.get_mut(usize::from(sym)) {
                        *s = Some((p, q.exch_ts));
                    }
                    let t_ms = q.exch_ts.filter(|t| *t > 1_000_000_000_000).unwrap_or(now);
                    deliver(&hub, &stats, Input::Trade { sym, price: p, qty: Qty::ZERO, t_ms }).await;
                }
            }
        }
        stats.trades.load(Ordering::Relaxed);
    }
}

/// The intraday candle API's unit and count for an interval (`None`: Upstox has no such bar).
pub fn unit(iv: Interval) -> Option<(&'static str, u32)> {
    match iv {
        Interval::S1 => None,
        Interval::M1 => Some(("minutes", 1)),
        Interval::M3 => Some(("minutes", 3)),
        Interval::M5 => Some(("minutes", 5)),
        Interval::M15 => Some(("minutes", 15)),
        Interval::M30 => Some(("minutes", 30)),
        Interval::H1 => Some(("hours", 1)),
        Interval::H2 => Some(("hours", 2)),
        Interval::H4 => Some(("hours", 4)),
        Interval::D1 => Some(("days", 1)),
    }
}

/// What the backfill needs to ask Upstox.
pub struct UpstoxRest {
    /// The relay's token file.
    pub token_file: std::path::PathBuf,
    /// How to read it.
    pub read_token: ReadToken,
    /// Symbol → instrument key.
    pub map: Arc<InstrumentMap>,
}

fn encode_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 8);
    for b in k.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl UpstoxRest {
    /// The path and `Authorization` header of a job.
    pub fn request(&self, job: &BackfillJob) -> Result<(String, Option<String>), BackfillError> {
        let Some((unit, n)) = unit(job.iv) else {
            return Err(BackfillError {
                unknown_symbol: false,
                why: format!("Upstox has no {} candles", job.iv),
            });
        };
        let Some(key) = self.map.key(&job.symbol) else {
            return Err(BackfillError {
                unknown_symbol: true,
                why: format!("{} has no Upstox instrument key ([feed.instrument_keys])", job.symbol),
            });
        };
        let token = (self.read_token)(&self.token_file)
            .map_err(|e| BackfillError { unknown_symbol: false, why: format!("relay.token_file: {e}") })?;
        Ok((
            format!("/v3/historical-candle/intraday/{}/{unit}/{n}", encode_key(&key)),
            Some(format!("Bearer {}", token.trim())),
        ))
    }
}

#[derive(Deserialize)]
struct Intraday {
    data: IntradayData,
}

#[derive(Deserialize)]
struct IntradayData {
    candles: Vec<(String, f64, f64, f64, f64, f64, serde::de::IgnoredAny)>,
}

/// `2025-01-02T09:15:00+05:30` → Unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &s[19..];
    let rest = rest.strip_prefix('.').map_or(rest, |r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    let offset_min = match rest.as_bytes().first() {
        None | Some(b'Z') => 0,
        Some(b'+') | Some(b'-') => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            let oh = rest.get(1..3)?.parse::<i64>().ok()?;
            let om = rest.get(4..6)?.parse::<i64>().ok()?;
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = crate::feed::calendar::days_from_civil(
        i32::try_from(y).ok()?,
        u8::try_from(mo).ok()?,
        u8::try_from(d).ok()?,
    );
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) - offset_min * 60) * 1000)
}

/// The closed bars of an intraday answer at or after `from`, oldest first (today's bars
/// only: always complete).
pub fn parse_intraday(
    body: &[u8],
    now_ms: i64,
    iv: Interval,
    from: Option<i64>,
) -> Result<(Vec<Candle>, bool), String> {
    let a: Intraday = serde_json::from_slice(body).map_err(|e| format!("intraday candles: {e}"))?;
    let mut out = Vec::with_capacity(a.data.candles.len());
    for (t, o, h, l, c, v, _) in a.data.candles.iter().rev() {
        let open_time = parse_time(t).ok_or_else(|| format!("intraday candle time {t:?}"))?;
        if open_time + iv.millis() > now_ms || from.is_some_and(|f| open_time < f) {
            continue;
        }
        let p = |x: f64| Price::from_f64(x, 2).map_err(|e| format!("intraday price {x}: {e}"));
        out.push(Candle {
            open_time,
            open: p(*o)?,
            high: p(*h)?,
            low: p(*l)?,
            close: p(*c)?,
            volume: Qty::from_f64(*v, 0).map_err(|e| format!("intraday volume {v}: {e}"))?,
            closed: true,
            revision: 0,
            source: Source::Rest,
        });
    }
    Ok((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ist_times_and_intraday_answers() {
        assert_eq!(parse_time("1970-01-01T05:30:00+05:30"), Some(0));
        assert_eq!(parse_time("2025-01-02T09:15:00+05:30"), Some(1_735_789_500_000));
        assert_eq!(parse_time("2025-01-02T03:45:00Z"), Some(1_735_789_500_000));
        assert_eq!(parse_time("junk"), None);
        let body = br#"{"status":"success","data":{"candles":[["2025-01-02T09:16:00+05:30",2.0,3.0,1.0,2.5,10,0],["2025-01-02T09:15:00+05:30",1.0,2.0,0.5,1.5,7,0]]}}"#;
        let (c, done) = parse_intraday(body, 1_735_789_620_000, Interval::M1, None).unwrap();
        assert!(done);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].open_time, 1_735_789_500_000);
        assert_eq!(c[1].close.to_string(), "2.50");
        // The bar still open is left out; `from` skips older ones.
        let (c, _) = parse_intraday(body, 1_735_789_600_000, Interval::M1, None).unwrap();
        assert_eq!(c.len(), 1);
        let (c, _) = parse_intraday(body, 1_735_789_620_000, Interval::M1, Some(1_735_789_560_000)).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(encode_key("NSE_EQ|INE 1"), "NSE_EQ%7CINE%201");
    }
}
