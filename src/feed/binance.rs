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

use super::json::{JsonError, Value, for_each_member, parse_i64, walk_members};
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
    event_len(data).map(|(f, _)| f)
}

/// As [`event`], with the bytes the event object took.
fn event_len(data: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    let mut symbol = None;
    let mut bid = None;
    let mut ask = None;
    let mut last = None;
    let mut exch_ts = None;
    let mut kind: &[u8] = b"";
    let mut err = None;
    let len = walk_members(data, |k, v| {
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
        return Ok((Frame::ServerShutdown, len));
    }
    if bid.is_none() && ask.is_none() && last.is_none() {
        return if symbol.is_some() && !kind.is_empty() && kind != b"trade" && kind != b"aggTrade" {
            Ok((Frame::Other, len))
        } else if symbol.is_none() && kind.is_empty() {
            Err(DecodeError::MissingSymbol)
        } else {
            Err(DecodeError::MissingPrice)
        };
    }
    let symbol = symbol.ok_or(DecodeError::MissingSymbol)?;
    Ok((Frame::Quote { symbol, bid, ask, last, exch_ts }, len))
}

/// Index of the first `"` in `s`, or `None` when a backslash, a control byte or the end comes
/// first. Eight bytes at a time (SWAR): the lowest flagged byte of each has-byte test is exact,
/// so the lowest of their union is the first byte that matters.
fn find_quote(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let chunks = s.chunks_exact(8);
    let done = s.len() - chunks.remainder().len();
    for (n, chunk) in chunks.enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().ok()?);
        let q = v ^ (LO * u64::from(b'"'));
        let bs = v ^ (LO * u64::from(b'\\'));
        let m =
            ((q.wrapping_sub(LO) & !q) | (bs.wrapping_sub(LO) & !bs) | (v.wrapping_sub(LO * 0x20) & !v)) & HI;
        if m != 0 {
            let j = n * 8 + (m.trailing_zeros() / 8) as usize;
            return (s.get(j) == Some(&b'"')).then_some(j);
        }
    }
    for (j, &c) in s.iter().enumerate().skip(done) {
        if c == b'"' {
            return Some(j);
        }
        if c == b'\\' || c < 0x20 {
            return None;
        }
    }
    None
}

/// Length of the run of ASCII digits at the start of `s`, eight bytes at a time.
fn digit_run(s: &[u8]) -> usize {
    let chunks = s.chunks_exact(8);
    let done = s.len() - chunks.remainder().len();
    for (n, chunk) in chunks.enumerate() {
        let Ok(w) = chunk.try_into() else { return n * 8 };
        let t = u64::from_le_bytes(w) ^ 0x3030_3030_3030_3030;
        // A digit byte is 0..=9 after the xor: no high nibble, and none after adding 6 either.
        let m = (t | t.wrapping_add(0x0606_0606_0606_0606)) & 0xF0F0_F0F0_F0F0_F0F0;
        if m != 0 {
            return n * 8 + (m.trailing_zeros() / 8) as usize;
        }
    }
    done + s[done..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// A price string: `ddd` or `ddd.ddddddd` (at most 10 integer digits and 8 decimals, Binance's
/// own shape) computed directly; anything else through [`Price::parse_bytes`] (same result,
/// about five times the instructions).
fn price_fast(v: &[u8]) -> Result<Price, DecodeError> {
    const POW10: [i64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];
    let slow = || Price::parse_bytes(v).map_err(|_| DecodeError::BadPrice);
    // Binance's own shape first: eight decimals after the point, one to ten digits before it.
    if let (Some(dot), Some(frac)) = (v.len().checked_sub(9), v.len().checked_sub(8)) {
        if (1..=10).contains(&dot) && v[dot] == b'.' {
            if let Some(f) = eight_digits(&v[frac..]) {
                let mut units: i64 = 0;
                for &c in &v[..dot] {
                    let d = c.wrapping_sub(b'0');
                    if d > 9 {
                        return slow();
                    }
                    units = units * 10 + i64::from(d);
                }
                return Ok(Price::from_units(units * crate::core::price::SCALE + f));
            }
        }
    }
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &v[v.len()..]),
    };
    if int.is_empty() || int.len() > 10 || frac.len() > 8 || (frac.is_empty() && int.len() != v.len()) {
        return slow();
    }
    let mut units: i64 = 0;
    for &c in int {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return slow();
        }
        units = units * 10 + i64::from(d);
    }
    let f = match eight_digits(frac) {
        Some(f) => f,
        None => {
            let mut f: i64 = 0;
            for &c in frac {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    return slow();
                }
                f = f * 10 + i64::from(d);
            }
            f * POW10[8 - frac.len()]
        }
    };
    Ok(Price::from_units(units * crate::core::price::SCALE + f))
}

/// Exactly eight ASCII digits (Binance writes every price with eight decimals) as a number,
/// in a handful of word operations (the SWAR method of simdjson's
/// `parse_eight_digits_unrolled`). `None` for any other input.
fn eight_digits(s: &[u8]) -> Option<i64> {
    let mut w = [0u8; 8];
    w.copy_from_slice(s.get(..8).filter(|_| s.len() == 8)?);
    let v = u64::from_le_bytes(w);
    let all_digits = ((v & 0xF0F0_F0F0_F0F0_F0F0)
        | ((v.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4))
        == 0x3333_3333_3333_3333;
    if !all_digits {
        return None;
    }
    let v = ((v & 0x0F0F_0F0F_0F0F_0F0F).wrapping_mul(2561)) >> 8;
    let v = ((v & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601)) >> 16;
    let v = ((v & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001)) >> 32;
    i64::try_from(v).ok()
}

/// A spot `bookTicker` event with Binance's documented fields in their documented order,
/// `{"u":N,"s":"..","b":"..","B":"..","a":"..","A":".."}`: matched against that layout, with
/// no per-member dispatch (the hot path: some 500 instructions a frame fewer). `None` for any
/// other layout, which [`event_compact`] then reads member by member.
fn book_ticker_fixed(d: &[u8]) -> Option<(Frame<'_>, usize)> {
    let r = d.strip_prefix(br#"{"u":"#)?;
    let n = digit_run(r);
    if n == 0 {
        return None;
    }
    let r = r.get(n..)?.strip_prefix(br#","s":""#)?;
    let q = find_quote(r)?;
    let symbol = &r[..q];
    let r = r[q..].strip_prefix(br#"","b":""#)?;
    let q = find_quote(r)?;
    let bid = price_fast(&r[..q]).ok()?;
    let r = r[q..].strip_prefix(br#"","B":""#)?;
    let q = find_quote(r)?;
    let r = r[q..].strip_prefix(br#"","a":""#)?;
    let q = find_quote(r)?;
    let ask = price_fast(&r[..q]).ok()?;
    let r = r[q..].strip_prefix(br#"","A":""#)?;
    let q = find_quote(r)?;
    let r = r[q..].strip_prefix(br#""}"#)?;
    let len = d.len() - r.len();
    Some((Frame::Quote { symbol, bid: Some(bid), ask: Some(ask), last: None, exch_ts: None }, len))
}

/// One pass over an event object in Binance's compact shape: no whitespace, no escapes, no
/// nested values, string prices. `None` for anything else, and for any error: the general
/// path ([`event_len`]) then decides, so every result is the general path's.
fn event_compact(b: &[u8]) -> Option<(Frame<'_>, usize)> {
    if let Some(f) = book_ticker_fixed(b) {
        return Some(f);
    }
    if b.first() != Some(&b'{') || b.get(1) == Some(&b'}') {
        return None;
    }
    let (mut symbol, mut bid, mut ask, mut last, mut exch_ts) = (None, None, None, None, None);
    let mut kind: &[u8] = b"";
    let mut i = 1;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let k0 = i + 1;
        // Binance's keys are one letter: skip the scan for those.
        let k1 = match (b.get(k0), b.get(k0 + 1)) {
            (Some(&c), Some(&b'"')) if c != b'"' && c != b'\\' && c >= 0x20 => k0 + 1,
            _ => k0 + find_quote(b.get(k0..)?)?,
        };
        let key = &b[k0..k1];
        if b.get(k1 + 1) != Some(&b':') {
            return None;
        }
        i = k1 + 2;
        match *b.get(i)? {
            b'"' => {
                let v0 = i + 1;
                let v1 = v0 + find_quote(b.get(v0..)?)?;
                let v = &b[v0..v1];
                i = v1 + 1;
                match key {
                    b"s" => symbol = Some(v),
                    b"b" => bid = Some(price_fast(v).ok()?),
                    b"a" => ask = Some(price_fast(v).ok()?),
                    b"p" => last = Some(price_fast(v).ok()?),
                    b"e" => kind = v,
                    b"E" => exch_ts = None,
                    _ => {}
                }
            }
            c if c == b'-' || c.is_ascii_digit() => {
                let v0 = i;
                i += digit_run(b.get(i..)?);
                while b
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    i += 1;
                }
                match key {
                    b"E" => exch_ts = parse_i64(&b[v0..i]),
                    b"b" | b"p" => return None,
                    _ => {}
                }
            }
            c @ (b't' | b'f' | b'n') => {
                let word: &[u8] = match c {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if b.get(i..i + word.len()) != Some(word) || matches!(key, b"b" | b"a" | b"p") {
                    return None;
                }
                i += word.len();
                if key == b"E" {
                    exch_ts = None;
                }
            }
            _ => return None,
        }
        match b.get(i)? {
            b',' => i += 1,
            b'}' => break,
            _ => return None,
        }
    }
    let len = i + 1;
    if kind == b"serverShutdown" {
        return Some((Frame::ServerShutdown, len));
    }
    if bid.is_none() && ask.is_none() && last.is_none() {
        let other = symbol.is_some() && !kind.is_empty() && kind != b"trade" && kind != b"aggTrade";
        return other.then_some((Frame::Other, len));
    }
    Some((Frame::Quote { symbol: symbol?, bid, ask, last, exch_ts }, len))
}

/// The combined-stream frame exactly as Binance writes it, `{"stream":"<name>","data":{...}}`,
/// decoded in one pass: the general path below first skips `data` to find its end and then
/// walks it again, which doubled the per-frame cost (scripts/bench-peers). `None` (use the
/// general path) for any other shape, for `!serverShutdown`, and for any error, so results
/// are the general path's by construction.
fn combined_fast(frame: &[u8]) -> Option<Frame<'_>> {
    let rest = frame.strip_prefix(br#"{"stream":""#)?;
    let q = find_quote(rest)?;
    if rest.first() == Some(&b'!') {
        return None;
    }
    let data = rest[q + 1..].strip_prefix(br#","data":"#)?;
    let (f, len) = event_compact(data)?;
    let mut tail = data[len..].iter().filter(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'));
    (tail.next() == Some(&b'}') && tail.next().is_none()).then_some(f)
}

/// Decodes one text frame of a combined (`/stream?streams=`) or raw (`/ws/`) connection.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    if let Some(f) = combined_fast(frame) {
        return Ok(f);
    }
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

    #[test]
    fn fast_paths_agree_with_the_general_ones() {
        for (t, n) in [
            (&b"400900217,"[..], 9),
            (b"1}", 1),
            (b"", 0),
            (b"x", 0),
            (b"12345678", 8),
            (b"1234567890123456789a", 19),
            (b"123:", 3),
            (b"12/", 2),
        ] {
            assert_eq!(digit_run(t), n, "{:?}", String::from_utf8_lossy(t));
        }
        assert_eq!(eight_digits(b"35190000"), Some(35_190_000));
        assert_eq!(eight_digits(b"00000001"), Some(1));
        assert_eq!(eight_digits(b"99999999"), Some(99_999_999));
        for bad in [
            &b"3519000"[..],
            b"351900000",
            b"3519000a",
            b"3519/000",
            b"3519:000",
            b"\x00\x00\x00\x00\x00\x00\x00\x00",
        ] {
            assert_eq!(eight_digits(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        for v in ["0", "1", "25.35190000", "0.00009960", "9999999999.99999999", "1.5", "007.10"] {
            assert_eq!(
                price_fast(v.as_bytes()),
                Price::parse_bytes(v.as_bytes()).map_err(|_| DecodeError::BadPrice),
                "{v}"
            );
        }
        for v in ["", ".", "1.", ".5", "+1", "-1.5", "1.123456789", "12345678901", "1e5", "abc", "1.2.3"] {
            assert_eq!(
                price_fast(v.as_bytes()),
                Price::parse_bytes(v.as_bytes()).map_err(|_| DecodeError::BadPrice),
                "{v}"
            );
        }
        assert_eq!(find_quote(b"abc\"x"), Some(3));
        assert_eq!(find_quote(b"0123456789abcdef\"x"), Some(16));
        assert_eq!(find_quote(b"01234567\\\"x"), None);
        assert_eq!(find_quote(b"0123\n567\""), None);
        assert_eq!(find_quote(b"\xff\x80\xfe\"\x22"), Some(3));
        assert_eq!(find_quote(b"no quote at all, long enough"), None);
        for data in [
            &br#"{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}"#[..],
            br#"{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}"#,
            br#"{"e":"trade","E":"x","s":"X","p":"1.5"}"#,
            br#"{"e":"depthUpdate","s":"X","U":1}"#,
            br#"{"e":"serverShutdown","E":1}"#,
            br#"{"s":"X","b":"abc"}"#,
            br#"{"s":"X","b":12}"#,
            br#"{"b":"1"}"#,
        ] {
            let general = event_len(data).ok();
            if let Some(fast) = event_compact(data) {
                assert_eq!(Some(fast), general, "{}", String::from_utf8_lossy(data));
            }
            if let Some(fixed) = book_ticker_fixed(data) {
                assert_eq!(Some(fixed), general, "{}", String::from_utf8_lossy(data));
            }
        }
    }

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
