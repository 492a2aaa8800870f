//! The relay's wire protocol: the client's request (every error names its field and says what
//! was wrong) and the messages the relay sends (`docs/relay.md` has their JSON schemas).
//!
//! The request is the OHLCV connector's, plus `interval` and `resume_from`:
//! `{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3}`.
//! Every message carries `type`, the relay's `epoch` (its start, Unix ms: a new epoch means
//! sequence numbers restarted) and, on a stream, `stream` and its `seq`.

use std::fmt::Write as _;

use serde_json::Value;

use super::Exchange;
use super::candle::{Candle, Interval};
use crate::core::price::Price;
use crate::limits::{RELAY_RING, RELAY_SYMBOLS_PER_CLIENT, SYMBOL_MAX};

/// The fields a request may carry.
pub const REQUEST_FIELDS: [&str; 6] =
    ["exchange", "contract_type", "symbols", "limit", "interval", "resume_from"];

/// A client's request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The venue.
    pub exchange: Exchange,
    /// Symbols, as the venue writes them (Binance: upper case), without repeats.
    pub symbols: Vec<String>,
    /// Closed candles in the snapshot of each symbol.
    pub limit: usize,
    /// The candle interval.
    pub interval: Interval,
    /// Per symbol, the open time of the last closed candle the client holds (a reconnect).
    pub resume_from: Vec<(String, i64)>,
}

/// A refused request: the field and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The field (`request` when the whole frame is wrong).
    pub field: &'static str,
    /// What was wrong, and what is expected.
    pub problem: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

fn err(field: &'static str, problem: impl Into<String>) -> RequestError {
    RequestError { field, problem: problem.into() }
}

/// Characters a relayed symbol may hold: letters, digits and `_ - . | :` (Upstox instrument
/// keys are `NSE_EQ|INE...`). No quote, backslash or control character, so a symbol is
/// written into a message as it is.
pub fn symbol_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= SYMBOL_MAX
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'|' | b':'))
}

fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Parses and checks a request frame for a relay serving `served` at `intervals`.
pub fn parse_request(
    bytes: &[u8],
    served: Exchange,
    intervals: &[Interval],
) -> Result<Request, RequestError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        err(
            "request",
            format!(
                "not JSON ({e}); send {{\"exchange\":\"{}\",\"contract_type\":\"{}\",\"symbols\":[\"...\"],\"limit\":3}}",
                served.name(),
                served.contract_type()
            ),
        )
    })?;
    let Value::Object(map) = v else {
        return Err(err("request", "must be a JSON object with exchange, contract_type, symbols and limit"));
    };
    for k in map.keys() {
        if !REQUEST_FIELDS.contains(&k.as_str()) {
            let mut name = k.clone();
            name.truncate(40);
            return Err(err(
                "request",
                format!("unknown field {name:?}; the fields are {}", REQUEST_FIELDS.join(", ")),
            ));
        }
    }
    let exchange = match map.get("exchange") {
        None => return Err(err("exchange", format!("missing; this relay serves \"{}\"", served.name()))),
        Some(Value::String(s)) => match s == served.name() {
            true => served,
            false => {
                return Err(err(
                    "exchange",
                    format!(
                        "{} is not relayed here; this relay serves \"{}\"",
                        short(&Value::String(s.clone())),
                        served.name()
                    ),
                ));
            }
        },
        Some(other) => return Err(err("exchange", format!("must be a string, got {}", short(other)))),
    };
    match map.get("contract_type") {
        None => {}
        Some(Value::String(s)) if s == exchange.contract_type() => {}
        Some(other) => {
            return Err(err(
                "contract_type",
                format!(
                    "{} is not relayed for {}; use \"{}\"",
                    short(other),
                    exchange.name(),
                    exchange.contract_type()
                ),
            ));
        }
    }
    let symbols = match map.get("symbols") {
        None => return Err(err("symbols", "missing; a list of 1 to 64 symbols, e.g. [\"BTCUSDT\"]")),
        Some(Value::Array(a)) => {
            if a.is_empty() {
                return Err(err("symbols", "is empty; list 1 to 64 symbols"));
            }
            if a.len() > RELAY_SYMBOLS_PER_CLIENT {
                return Err(err("symbols", format!("lists {}; at most {RELAY_SYMBOLS_PER_CLIENT}", a.len())));
            }
            let mut out: Vec<String> = Vec::with_capacity(a.len());
            for s in a {
                let Value::String(s) = s else {
                    return Err(err("symbols", format!("each must be a string, got {}", short(s))));
                };
                let s = if exchange == Exchange::Binance { s.to_ascii_uppercase() } else { s.clone() };
                if !symbol_ok(&s)
                    || (exchange == Exchange::Binance && !s.bytes().all(|b| b.is_ascii_alphanumeric()))
                {
                    return Err(err(
                        "symbols",
                        format!(
                            "{} is not a symbol: 1 to {SYMBOL_MAX} of {}",
                            short(&Value::String(s)),
                            if exchange == Exchange::Binance {
                                "A-Z 0-9"
                            } else {
                                "letters, digits, _ - . | :"
                            }
                        ),
                    ));
                }
                if out.contains(&s) {
                    return Err(err("symbols", format!("{s} is listed twice")));
                }
                out.push(s);
            }
            out
        }
        Some(other) => {
            return Err(err("symbols", format!("must be a list of strings, got {}", short(other))));
        }
    };
    let limit = match map.get("limit") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(n) if n as usize <= RELAY_RING => n as usize,
            _ => {
                return Err(err(
                    "limit",
                    format!("must be an integer from 0 to {RELAY_RING}, got {}", short(v)),
                ));
            }
        },
    };
    let names = || intervals.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
    let interval = match map.get("interval") {
        // The connector's default, `1m`, when it is served; else the first served.
        None if intervals.contains(&Interval::M1) || intervals.is_empty() => Interval::M1,
        None => intervals[0],
        Some(Value::String(s)) => match Interval::parse(s) {
            Some(i) if intervals.contains(&i) => i,
            Some(_) => {
                return Err(err(
                    "interval",
                    format!("{s:?} is not served here (relay.intervals); one of {}", names()),
                ));
            }
            None => {
                return Err(err(
                    "interval",
                    format!("{} is not an interval; one of {}", short(&Value::String(s.clone())), names()),
                ));
            }
        },
        Some(other) => {
            return Err(err("interval", format!("must be a string like \"1m\", got {}", short(other))));
        }
    };
    let cursor = |v: &Value| v.as_i64().filter(|t| *t >= 0 && interval.floor(*t) == *t);
    let resume_from = match map.get("resume_from") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Number(n)) => {
            let Some(t) = cursor(&Value::Number(n.clone())) else {
                return Err(err(
                    "resume_from",
                    format!(
                        "{n} is not an open time of a {interval} candle (Unix ms, a multiple of the interval)"
                    ),
                ));
            };
            symbols.iter().map(|s| (s.clone(), t)).collect()
        }
        Some(Value::Object(m)) => {
            let mut out = Vec::with_capacity(m.len());
            for (k, v) in m {
                let k = if exchange == Exchange::Binance { k.to_ascii_uppercase() } else { k.clone() };
                if out.iter().any(|(s, _): &(String, i64)| *s == k) {
                    return Err(err("resume_from", format!("names {k} twice")));
                }
                if !symbols.contains(&k) {
                    return Err(err(
                        "resume_from",
                        format!("names {}, which is not in symbols", short(&Value::String(k))),
                    ));
                }
                let Some(t) = cursor(v) else {
                    return Err(err(
                        "resume_from",
                        format!("{k}: {} is not an open time of a {interval} candle (Unix ms)", short(v)),
                    ));
                };
                out.push((k, t));
            }
            out
        }
        Some(other) => {
            return Err(err(
                "resume_from",
                format!(
                    "must be an open time (Unix ms) or an object of symbol to open time, got {}",
                    short(other)
                ),
            ));
        }
    };
    Ok(Request { exchange, symbols, limit, interval, resume_from })
}

/// The fields every message of one symbol's streams carries.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The relay's epoch.
    pub epoch: i64,
    /// The venue.
    pub exchange: Exchange,
    /// The symbol.
    pub symbol: &'a str,
}

fn head(out: &mut String, kind: &str, h: &Head<'_>, stream: &str, seq: u64) {
    let _ = write!(
        out,
        "{{\"type\":\"{kind}\",\"epoch\":{},\"exchange\":\"{}\",\"symbol\":\"{}\",\"stream\":\"{}{stream}\",\"seq\":{seq}",
        h.epoch,
        h.exchange.name(),
        h.symbol,
        h.symbol
    );
}

fn candle_fields(out: &mut String, c: &Candle, iv: Interval) {
    let _ = write!(
        out,
        "\"open_time\":{},\"close_time\":{},\"open\":\"{}\",\"high\":\"{}\",\"low\":\"{}\",\"close\":\"{}\",\"volume\":\"{}\",\"closed\":{},\"revision\":{},\"source\":\"{}\"",
        c.open_time,
        c.open_time + iv.millis() - 1,
        c.open,
        c.high,
        c.low,
        c.close,
        c.volume,
        c.closed,
        c.revision,
        c.source.name()
    );
}

/// `candle`: an open update, a closed candle or a correction (a higher `revision`).
pub fn candle(h: &Head<'_>, iv: Interval, seq: u64, c: &Candle) -> String {
    let mut out = String::with_capacity(320);
    head(&mut out, "candle", h, &format_args!("@{iv}").to_string(), seq);
    let _ = write!(out, ",\"interval\":\"{iv}\",");
    candle_fields(&mut out, c, iv);
    out.push('}');
    out
}

/// `snapshot`: the last closed candles of one symbol, oldest first (the first message of a
/// stream).
pub fn snapshot<'c>(
    h: &Head<'_>,
    iv: Interval,
    seq: u64,
    candles: impl Iterator<Item = &'c Candle>,
) -> String {
    let mut out = String::with_capacity(256);
    head(&mut out, "snapshot", h, &format_args!("@{iv}").to_string(), seq);
    let _ = write!(out, ",\"interval\":\"{iv}\",\"candles\":[");
    for (n, c) in candles.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('{');
        candle_fields(&mut out, c, iv);
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `gap`: closed candles from `from` to `to` (open times, inclusive) are missing and will not
/// come.
pub fn gap(h: &Head<'_>, iv: Interval, seq: u64, from: i64, to: i64) -> String {
    let mut out = String::with_capacity(200);
    head(&mut out, "gap", h, &format_args!("@{iv}").to_string(), seq);
    let _ = write!(out, ",\"interval\":\"{iv}\",\"from\":{from},\"to\":{to}}}");
    out
}

/// What a `quote` carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuoteFields {
    /// Best bid (`null` when the venue's stream gives none: Upstox's last-traded feed).
    pub bid: Option<Price>,
    /// Best ask (likewise).
    pub ask: Option<Price>,
    /// Last traded price (`null` for Binance's `bookTicker`).
    pub last: Option<Price>,
    /// The venue's time, when it gives one (Unix ms).
    pub ts_event: Option<i64>,
    /// When the relay received it (Unix ms).
    pub ts_recv: i64,
}

fn opt_price(out: &mut String, name: &str, p: Option<Price>) {
    match p {
        Some(p) => {
            let _ = write!(out, ",\"{name}\":\"{p}\"");
        }
        None => {
            let _ = write!(out, ",\"{name}\":null");
        }
    }
}

/// `quote`: best bid and ask, or the last traded price, with the venue's time when it gives
/// one.
pub fn quote(h: &Head<'_>, seq: u64, q: &QuoteFields) -> String {
    let mut out = String::with_capacity(220);
    head(&mut out, "quote", h, "@quote", seq);
    opt_price(&mut out, "bid", q.bid);
    opt_price(&mut out, "ask", q.ask);
    opt_price(&mut out, "last", q.last);
    out.push_str(",\"ts_event\":");
    match q.ts_event {
        Some(t) => {
            let _ = write!(out, "{t}");
        }
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"ts_recv\":{}}}", q.ts_recv);
    out
}

/// `status`: the upstream is `stale` (down since `since`) or `live` again.
pub fn status(epoch: i64, exchange: Exchange, seq: u64, live: bool, since: i64) -> String {
    format!(
        "{{\"type\":\"status\",\"epoch\":{epoch},\"exchange\":\"{}\",\"stream\":\"status\",\"seq\":{seq},\"status\":\"{}\",\"since\":{since}}}",
        exchange.name(),
        if live { "live" } else { "stale" }
    )
}

/// `error`: the request was refused; the connection closes after it.
pub fn error(epoch: i64, e: &RequestError) -> String {
    format!(
        "{{\"type\":\"error\",\"epoch\":{epoch},\"field\":\"{}\",\"error\":{}}}",
        e.field,
        serde_json::Value::String(e.problem.clone())
    )
}

/// `bye`: the connection is about to close (`reason`: `shutdown`, `slow_consumer`), with the
/// cursor to resume from: per symbol, the open time of the last closed candle delivered.
pub fn bye(epoch: i64, reason: &str, cursor: &[(&str, i64)]) -> String {
    let mut out = format!("{{\"type\":\"bye\",\"epoch\":{epoch},\"reason\":\"{reason}\",\"resume_from\":{{");
    for (n, (s, t)) in cursor.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{s}\":{t}");
    }
    out.push_str("}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: [Interval; 2] = [Interval::M1, Interval::M5];

    fn p(s: &str) -> Result<Request, RequestError> {
        parse_request(s.as_bytes(), Exchange::Binance, &IV)
    }

    #[test]
    fn the_seed_request_parses() {
        let r =
            p(r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3}"#).unwrap();
        assert_eq!(r.symbols, ["BTCUSDT"]);
        assert_eq!(r.limit, 3);
        assert_eq!(r.interval, Interval::M1);
        assert!(r.resume_from.is_empty());
    }

    #[test]
    fn each_error_names_its_field() {
        for (req, field) in [
            ("[1]", "request"),
            ("{", "request"),
            (r#"{"exchange":"binance","symbols":["A"],"colour":1}"#, "request"),
            (r#"{"symbols":["A"]}"#, "exchange"),
            (r#"{"exchange":"kraken","symbols":["A"]}"#, "exchange"),
            (r#"{"exchange":"binance","contract_type":"futures","symbols":["A"]}"#, "contract_type"),
            (r#"{"exchange":"binance"}"#, "symbols"),
            (r#"{"exchange":"binance","symbols":[]}"#, "symbols"),
            (r#"{"exchange":"binance","symbols":["BTC USDT"]}"#, "symbols"),
            (r#"{"exchange":"binance","symbols":["A","a"]}"#, "symbols"),
            (r#"{"exchange":"binance","symbols":["A"],"limit":-1}"#, "limit"),
            (r#"{"exchange":"binance","symbols":["A"],"limit":1001}"#, "limit"),
            (r#"{"exchange":"binance","symbols":["A"],"limit":"3"}"#, "limit"),
            (r#"{"exchange":"binance","symbols":["A"],"interval":"1h"}"#, "interval"),
            (r#"{"exchange":"binance","symbols":["A"],"interval":"7m"}"#, "interval"),
            (r#"{"exchange":"binance","symbols":["A"],"resume_from":{"B":60000}}"#, "resume_from"),
            (r#"{"exchange":"binance","symbols":["A"],"resume_from":61000}"#, "resume_from"),
        ] {
            let e = p(req).expect_err(req);
            assert_eq!(e.field, field, "{req}: {e}");
            assert!(!e.problem.is_empty());
        }
    }

    #[test]
    fn resume_cursors_per_symbol_or_for_all() {
        let r = p(r#"{"exchange":"binance","symbols":["a","b"],"resume_from":120000}"#).unwrap();
        assert_eq!(r.resume_from, [("A".to_string(), 120_000), ("B".to_string(), 120_000)]);
        let r = p(r#"{"exchange":"binance","symbols":["A","B"],"interval":"5m","resume_from":{"b":300000}}"#)
            .unwrap();
        assert_eq!(r.resume_from, [("B".to_string(), 300_000)]);
    }

    #[test]
    fn messages_are_json() {
        let h = Head { epoch: 7, exchange: Exchange::Binance, symbol: "BTCUSDT" };
        let c = Candle::flat(
            60_000,
            crate::core::price::Price::from_units(100),
            crate::core::price::Qty::ZERO,
            super::super::candle::Source::Rest,
        );
        for m in [
            candle(&h, Interval::M1, 3, &c),
            snapshot(&h, Interval::M1, 1, [c, c].iter()),
            gap(&h, Interval::M1, 2, 0, 60_000),
            quote(
                &h,
                4,
                &QuoteFields { bid: Some(Price::from_units(1)), ts_recv: 9, ..QuoteFields::default() },
            ),
            status(7, Exchange::Binance, 1, false, 5),
            error(7, &err("limit", "bad \"x\"")),
            bye(7, "shutdown", &[("BTCUSDT", 60_000)]),
        ] {
            let v: Value = serde_json::from_str(&m).unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(v["epoch"], 7, "{m}");
        }
    }
}
