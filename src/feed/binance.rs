//! Binance spot market streams: combined-stream frames decoded into quotes without
//! allocating.
//!
//! ```text
//! {"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35","B":"31.2","a":"25.36","A":"40.6"}}
//! {"stream":"bnbusdt@trade","data":{"e":"trade","E":1672515782136,"s":"BNBUSDT","t":12345,"p":"0.001","q":"100",...}}
//! {"stream":"bnbusdt@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBUSDT","a":5933014,"p":"0.001",...}}
//! {"result":null,"id":1}                         (control reply)
//! {"error":{"code":2,"msg":"Invalid request"},"id":1}
//! {"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1672515782136}}
//! ```
//! `bookTicker` gives bid and ask and has no event time (staleness uses the receive time);
//! trades give the last price and carry the event time `E`. Unknown fields are ignored.

use super::json::{JsonError, Value, for_each_member, parse_i64};
use crate::core::price::Price;

/// A decoded frame. Borrowed from the frame bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A price update for `symbol`.
    Quote {
        /// Symbol as Binance writes it (`BTCUSDT`).
        symbol: &'a [u8],
        /// Best bid (bookTicker).
        bid: Option<Price>,
        /// Best ask (bookTicker).
        ask: Option<Price>,
        /// Last trade price (trade, aggTrade).
        last: Option<Price>,
        /// Event time (ms, or µs with `timeUnit=MICROSECOND`), when the stream has one.
        exch_ts: Option<i64>,
    },
    /// Reply to a control message (`SUBSCRIBE` ...).
    Ack {
        /// The request id, if numeric.
        id: Option<i64>,
    },
    /// An error reply.
    Error {
        /// Binance's error code, if given.
        code: Option<i64>,
        /// The request id, if numeric.
        id: Option<i64>,
    },
    /// The server will close this connection soon: open the next one now.
    ServerShutdown,
    /// A well-formed frame of a kind tickguard does not use (e.g. a depth update).
    Other,
}

/// Why a frame could not be decoded. Each kind is counted and logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Not a JSON object, truncated, or nested too deep.
    Json(JsonError),
    /// A price update without the symbol.
    MissingSymbol,
    /// A price update without any price.
    MissingPrice,
    /// A price field that is not a decimal string.
    BadPrice,
}

impl DecodeError {
    /// A short stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Json(JsonError::Truncated) => "truncated",
            DecodeError::Json(JsonError::Syntax) => "syntax",
            DecodeError::Json(JsonError::TooDeep) => "too_deep",
            DecodeError::MissingSymbol => "missing_symbol",
            DecodeError::MissingPrice => "missing_price",
            DecodeError::BadPrice => "bad_price",
        }
    }
}

fn price(v: Value<'_>) -> Result<Option<Price>, DecodeError> {
    match v {
        Value::Str(s) => Price::parse_bytes(s).map(Some).map_err(|_| DecodeError::BadPrice),
        Value::Null => Ok(None),
        _ => Err(DecodeError::BadPrice),
    }
}

fn int(v: Value<'_>) -> Option<i64> {
    match v {
        Value::Num(n) => parse_i64(n),
        _ => None,
    }
}

/// Decodes the event object of a stream (the `data` of a combined frame, or a raw-stream
/// frame).
fn event(data: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut symbol = None;
    let mut bid = None;
    let mut ask = None;
    let mut last = None;
    let mut exch_ts = None;
    let mut kind: &[u8] = b"";
    let mut err = None;
    for_each_member(data, |k, v| {
        let r = match k {
            b"s" => {
                if let Value::Str(s) = v {
                    symbol = Some(s);
                }
                Ok(())
            }
            b"b" => price(v).map(|p| bid = p),
            b"a" if !matches!(v, Value::Num(_)) => price(v).map(|p| ask = p),
            b"p" => price(v).map(|p| last = p),
            b"E" => {
                exch_ts = int(v);
                Ok(())
            }
            b"e" => {
                if let Value::Str(s) = v {
                    kind = s;
                }
                Ok(())
            }
            _ => Ok(()),
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                err = Some(e);
                false
            }
        }
    })
    .map_err(DecodeError::Json)?;
    if let Some(e) = err {
        return Err(e);
    }
    if kind == b"serverShutdown" {
        return Ok(Frame::ServerShutdown);
    }
    if bid.is_none() && ask.is_none() && last.is_none() {
        return if symbol.is_some() && !kind.is_empty() && kind != b"trade" && kind != b"aggTrade" {
            Ok(Frame::Other)
        } else if symbol.is_none() && kind.is_empty() {
            Err(DecodeError::MissingSymbol)
        } else {
            Err(DecodeError::MissingPrice)
        };
    }
    let symbol = symbol.ok_or(DecodeError::MissingSymbol)?;
    Ok(Frame::Quote { symbol, bid, ask, last, exch_ts })
}

/// Decodes one text frame of a combined (`/stream?streams=`) or raw (`/ws/`) connection.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut data = None;
    let mut stream: &[u8] = b"";
    let mut id = None;
    let mut is_reply = false;
    let mut error: Option<&[u8]> = None;
    let mut raw_event = false;
    for_each_member(frame, |k, v| {
        match (k, v) {
            (b"data", Value::Object(o)) => data = Some(o),
            (b"stream", Value::Str(s)) => stream = s,
            (b"result", _) => is_reply = true,
            (b"id", v) => id = int(v),
            (b"error", Value::Object(o)) => error = Some(o),
            (b"code", _) => is_reply = true,
            (b"e" | b"s" | b"u", _) => raw_event = true,
            _ => {}
        }
        true
    })
    .map_err(DecodeError::Json)?;
    if let Some(d) = data {
        if stream == b"!serverShutdown" {
            return Ok(Frame::ServerShutdown);
        }
        return event(d);
    }
    if let Some(e) = error {
        let mut code = None;
        let _ = for_each_member(e, |k, v| {
            if k == b"code" {
                code = int(v);
            }
            true
        });
        return Ok(Frame::Error { code, id });
    }
    if raw_event {
        return event(frame);
    }
    if is_reply {
        // `{"code":2,"msg":"...","id":1}` is the older error shape.
        let mut code = None;
        let _ = for_each_member(frame, |k, v| {
            if k == b"code" {
                code = int(v);
            }
            true
        });
        return Ok(match code {
            Some(_) => Frame::Error { code, id },
            None => Frame::Ack { id },
        });
    }
    Ok(Frame::Other)
}

/// Lower-case stream names for a symbol (`BTCUSDT` → `btcusdt@bookTicker`).
pub fn stream_name(symbol: &str, kind: &str) -> String {
    format!("{}@{kind}", symbol.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Price> {
        Price::parse(s).ok()
    }

    #[test]
    fn book_ticker() {
        let f = br#"{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#;
        assert_eq!(
            decode(f),
            Ok(Frame::Quote {
                symbol: b"BNBUSDT",
                bid: p("25.3519"),
                ask: p("25.3652"),
                last: None,
                exch_ts: None
            })
        );
    }

    #[test]
    fn trade_and_agg_trade() {
        let t = br#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#;
        assert_eq!(
            decode(t),
            Ok(Frame::Quote {
                symbol: b"BNBBTC",
                bid: None,
                ask: None,
                last: p("0.001"),
                exch_ts: Some(1_672_515_782_136)
            })
        );
        let a = br#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#;
        assert_eq!(
            decode(a),
            Ok(Frame::Quote {
                symbol: b"BNBBTC",
                bid: None,
                ask: None,
                last: p("0.001"),
                exch_ts: Some(1_672_515_782_136)
            })
        );
        // A raw-stream frame (no combined wrapper) decodes the same.
        let raw = br#"{"e":"trade","E":5,"s":"X","p":"1.5"}"#;
        assert!(matches!(decode(raw), Ok(Frame::Quote { last: Some(_), .. })));
    }

    #[test]
    fn control_frames() {
        assert_eq!(decode(br#"{"result":null,"id":1}"#), Ok(Frame::Ack { id: Some(1) }));
        assert_eq!(
            decode(br#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":7}"#),
            Ok(Frame::Error { code: Some(2), id: Some(7) })
        );
        assert_eq!(
            decode(br#"{"code":0,"msg":"Unknown property","id":3}"#),
            Ok(Frame::Error { code: Some(0), id: Some(3) })
        );
        assert_eq!(
            decode(br#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1}}"#),
            Ok(Frame::ServerShutdown)
        );
        assert_eq!(decode(br#"{"e":"serverShutdown","E":1}"#), Ok(Frame::ServerShutdown));
        assert_eq!(
            decode(br#"{"stream":"x@depth","data":{"e":"depthUpdate","s":"X","U":1}}"#),
            Ok(Frame::Other)
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(
            decode(b"{\"stream\":\"x\",\"data\":{\"s\":\"X\",\"b\":\"1.0"),
            Err(DecodeError::Json(JsonError::Truncated))
        );
        assert_eq!(decode(br#"{"data":{"s":"X","b":"abc"}}"#), Err(DecodeError::BadPrice));
        assert_eq!(decode(br#"{"data":{"s":"X","b":12.5}}"#), Err(DecodeError::BadPrice));
        assert_eq!(decode(br#"{"data":{"b":"1"}}"#), Err(DecodeError::MissingSymbol));
        assert_eq!(decode(br#"{"data":{"e":"trade","s":"X"}}"#), Err(DecodeError::MissingPrice));
        assert!(decode(b"\x00\x01binary").is_err());
        assert!(decode(b"").is_err());
    }

    #[test]
    fn stream_names() {
        assert_eq!(stream_name("BTCUSDT", "bookTicker"), "btcusdt@bookTicker");
    }
}
