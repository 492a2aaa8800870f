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
use super::scan::{self, plain_end, plain_start};
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
#[inline(always)]
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
#[inline(always)]
fn eight_digits(s: &[u8]) -> Option<i64> {
    let w: [u8; 8] = s.try_into().ok()?;
    let t = u64::from_le_bytes(w) ^ ZEROS;
    (non_digit_bytes(t) == 0).then(|| digit_values(t))
}

/// Eight ASCII zeros: xor a word of digits with it to get their values.
const ZEROS: u64 = 0x3030_3030_3030_3030;

/// The bytes of `t` (a word xor [`ZEROS`]) that were not ASCII digits, flagged in their high
/// nibble: a digit is 0 to 9 after the xor, with no high nibble, and none after adding 6
/// either. (A carry out of a byte happens only above a byte that is flagged itself.)
#[inline(always)]
fn non_digit_bytes(t: u64) -> u64 {
    (t | t.wrapping_add(0x0606_0606_0606_0606)) & 0xF0F0_F0F0_F0F0_F0F0
}

/// Eight digit values (0 to 9, one a byte, the first digit in the lowest byte) as a number.
#[inline(always)]
fn digit_values(v: u64) -> i64 {
    let v = (v.wrapping_mul(10) + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v.wrapping_mul(100) + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    let v = v.wrapping_mul(10_000) + (v >> 32);
    (v & 0xFFFF_FFFF) as i64
}

/// The little-endian word of `b[i..i + 8]`, if there are eight bytes there.
#[inline(always)]
fn word(b: &[u8], i: usize) -> Option<u64> {
    let w: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(w))
}

/// Where the run of ASCII digits starting at `b[i]` ends.
#[inline(always)]
fn digits_end(b: &[u8], mut i: usize) -> usize {
    if let Some(m) = scan::non_digits(b, i) {
        if m != 0 {
            return i + scan::first(m);
        }
    }
    while let Some(v) = word(b, i) {
        let m = non_digit_bytes(v ^ ZEROS);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + b.get(i..).map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
}

/// `d{1,10}.dddddddd` at `b[i..]` (Binance's shape of every price and quantity: eight
/// decimals, always), as units of 10⁻⁸ and the index after it; `None` for any other shape.
#[inline(always)]
fn decimal8(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let end = digits_end(b, i) + 9;
    decimal8_in(b, i, end).map(|v| (v, end))
}

/// `lit` at `b[i..]`: the index after it.
#[inline(always)]
fn lit<const N: usize>(b: &[u8], i: usize, lit: &[u8; N]) -> Option<usize> {
    (b.get(i..i.checked_add(N)?)? == lit).then_some(i + N)
}

/// A spot `bookTicker` event at `b[i..]`, with Binance's documented fields in their
/// documented order and shape, `{"u":N,"s":"..","b":"d.dddddddd","B":"..","a":"..","A":".."}`:
/// matched against that layout with no per-member dispatch, the prices read in place and the
/// other strings only checked to be plain (the hot path: scripts/bench-peers). The frame and
/// the index after the event; `None` for any other layout or shape, which [`event_compact`]
/// and then the general path read member by member.
#[inline(always)]
fn book_ticker_at(b: &[u8], i: usize) -> Option<(Frame<'_>, usize)> {
    let i = lit(b, i, br#"{"u":"#)?;
    let j = digits_end(b, i);
    if j == i {
        return None;
    }
    let i = lit(b, j, br#","s":""#)?;
    let j = plain_end(b, i)?;
    let symbol = b.get(i..j)?;
    let i = lit(b, j, br#"","b":""#)?;
    let (bid, i) = decimal8(b, i)?;
    let i = lit(b, i, br#"","B":""#)?;
    let i = lit(b, plain_end(b, i)?, br#"","a":""#)?;
    let (ask, i) = decimal8(b, i)?;
    let i = lit(b, i, br#"","A":""#)?;
    let i = lit(b, plain_end(b, i)?, br#""}"#)?;
    let quote = Frame::Quote {
        symbol,
        bid: Some(Price::from_units(bid)),
        ask: Some(Price::from_units(ask)),
        last: None,
        exch_ts: None,
    };
    Some((quote, i))
}

/// [`book_ticker_at`] on an event object alone (a raw-stream frame, or `data`).
fn book_ticker_fixed(d: &[u8]) -> Option<(Frame<'_>, usize)> {
    book_ticker_at(d, 0)
}

/// `d{1,10}.dddddddd` filling exactly `b[start..end]`, as units of 10⁻⁸. Every byte it
/// accepts is a digit or the point, so a field read this way needs no scan for quotes,
/// escapes or control bytes.
#[inline(always)]
fn decimal8_in(b: &[u8], start: usize, end: usize) -> Option<i64> {
    let n = end.checked_sub(start)?.checked_sub(9)?;
    if n == 0 || n > 8 {
        return long_decimal8_in(b, start, n);
    }
    if b.get(start + n) != Some(&b'.') {
        return None;
    }
    let int = word(b, start)? ^ ZEROS;
    let frac = word(b, start + n + 1)? ^ ZEROS;
    // Only the first `n` bytes of `int` are integer digits: shifted up, the others fall out,
    // leaving an eight-digit number behind zeros.
    let keep = 8 * (8 - n) as u32;
    if non_digit_bytes(frac) != 0 || non_digit_bytes(int) << keep != 0 {
        return None;
    }
    Some(digit_values(int << keep) * crate::core::price::SCALE + digit_values(frac))
}

/// [`decimal8_in`] with nine or ten integer digits (`n`), digit by digit.
fn long_decimal8_in(b: &[u8], start: usize, n: usize) -> Option<i64> {
    if !(9..=10).contains(&n) || b.get(start + n) != Some(&b'.') {
        return None;
    }
    let digits =
        |s: &[u8]| s.iter().try_fold(0, |v, &c| c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0')));
    let int = digits(b.get(start..start + n)?)?;
    let frac = digits(b.get(start + n + 1..start + n + 9)?)?;
    Some(int * crate::core::price::SCALE + frac)
}

/// A whole combined-stream `bookTicker` frame in Binance's own layout,
/// `{"stream":"<name>","data":{"u":N,"s":"..","b":"d.dddddddd","B":"..","a":"d.dddddddd","A":".."}}`
/// with plain strings and nothing after the last brace: the hot path (scripts/bench-peers).
///
/// Where each field ends depends on where the one before it ended, so reading the frame
/// from the start is one long chain of dependent scans. This reads it as two chains the CPU
/// runs side by side: forward from the start (stream, `u`, symbol) and backward from the end
/// (A, ask, B). The bid is what lies between them, and must be a decimal exactly filling it,
/// so the pieces tile the frame: every byte is checked to be a literal piece, a digit, or
/// part of a plain string. `None` for anything else, which
/// [`combined_fast`] and then the general path read; tests check that the results are the
/// general path's.
#[inline(always)]
fn combined_book_ticker(f: &[u8]) -> Option<Frame<'_>> {
    // Backward.
    let a_end = f.len().checked_sub(3)?;
    if f.get(a_end..)? != br#""}}"# {
        return None;
    }
    let ask_end = plain_start(f, a_end)?.checked_sub(6)?;
    lit(f, ask_end, br#"","A":""#)?;
    let ask = plain_start(f, ask_end)? + 1;
    let b_end = ask.checked_sub(7)?;
    lit(f, b_end, br#"","a":""#)?;
    let b_start = plain_start(f, b_end)? + 1;
    // Forward.
    let i = lit(f, 0, br#"{"stream":""#)?;
    let u = lit(f, plain_end(f, i)?, br#"","data":{"u":"#)?;
    let u_end = digits_end(f, u);
    if u_end == u {
        return None;
    }
    let sym = lit(f, u_end, br#","s":""#)?;
    let sym_end = plain_end(f, sym)?;
    let bid = lit(f, sym_end, br#"","b":""#)?;
    // Where they meet: the bid fills what lies between, up to `","B":"` before B's value.
    let bid_end = b_start.checked_sub(7)?;
    lit(f, bid_end, br#"","B":""#)?;
    Some(Frame::Quote {
        symbol: f.get(sym..sym_end)?,
        bid: Some(Price::from_units(decimal8_in(f, bid, bid_end)?)),
        ask: Some(Price::from_units(decimal8_in(f, ask, ask_end)?)),
        last: None,
        exch_ts: None,
    })
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
                i = digits_end(b, i);
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
    let i = lit(frame, 0, br#"{"stream":""#)?;
    let rest = frame.get(i..)?;
    let q = find_quote(rest)?;
    if rest.first() == Some(&b'!') {
        return None;
    }
    let i = lit(frame, i + q, br#"","data":"#)?;
    let data = frame.get(i..)?;
    let (f, len) = event_compact(data)?;
    let tail = data.get(len..)?;
    if tail == b"}" {
        return Some(f);
    }
    let mut tail = tail.iter().filter(|c| !matches!(c, b' ' | b'\n' | b'\r' | b'\t'));
    (tail.next() == Some(&b'}') && tail.next().is_none()).then_some(f)
}

/// Decodes one text frame of a combined (`/stream?streams=`) or raw (`/ws/`) connection.
pub fn decode(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match combined_book_ticker(frame) {
        Some(f) => Ok(f),
        None => decode_other(frame),
    }
}

/// [`decode`] of every frame that is not a combined `bookTicker` in Binance's layout. Kept out
/// of line, and marked cold, so that the fast path's registers and stack frame are its own
/// (23 instructions a frame fewer; trade streams, not the default, pay a call).
#[cold]
#[inline(never)]
fn decode_other(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match combined_fast(frame) {
        Some(f) => Ok(f),
        None => decode_general(frame),
    }
}

/// [`decode`] without the fast paths: what they must agree with.
fn decode_general(frame: &[u8]) -> Result<Frame<'_>, DecodeError> {
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

// ----- the session: what Binance's differs in ------------------------------------------------

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::error::FeedError;
use super::session::{self, Ctx, Gate, Rotation, Timing, Venue};
use crate::core::backoff::Rng;
use crate::core::engine::FeedEvent;
use crate::core::types::{InstrumentId, Quote, Source, Symbol, Tick};
use crate::net::http::{Connector, Endpoint};
use crate::net::ws::{self, WsConn, WsLimits};

/// Settings of the Binance feed session.
#[derive(Clone, Debug)]
pub struct BinanceConfig {
    /// The WebSocket endpoint (`feed.ws_url`).
    pub endpoint: Endpoint,
    /// No frame for this long means the feed is silent (`feed.silence_timeout_s`).
    pub silence_timeout: Duration,
    /// First reconnect delay (`feed.reconnect_initial_s`).
    pub reconnect_initial: Duration,
    /// Slowest reconnect delay (`feed.reconnect_max_s`).
    pub reconnect_max: Duration,
    /// Jitter of the reconnect delays.
    pub jitter: f64,
    /// Streams per symbol (`bookTicker`).
    pub streams: Vec<String>,
    /// Open the next connection after this long (Binance cuts at 24 h).
    pub max_lifetime: Duration,
    /// Streams per SUBSCRIBE message.
    pub subscribe_batch: usize,
    /// Least time between two control messages (within Binance's 5 messages/s).
    pub control_spacing: Duration,
    /// Bound of connect + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Frame and message limits.
    pub limits: WsLimits,
    /// Seed of the jitter and of the frame masks.
    pub seed: u64,
}

impl BinanceConfig {
    /// Defaults for Binance spot streams at `endpoint`.
    pub fn new(endpoint: Endpoint, seed: u64) -> BinanceConfig {
        BinanceConfig {
            endpoint,
            silence_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            jitter: 0.5,
            streams: vec!["bookTicker".into()],
            max_lifetime: Duration::from_secs(23 * 3600 + 30 * 60),
            subscribe_batch: 200,
            control_spacing: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(10),
            limits: WsLimits { max_frame: 64 * 1024, max_message: 64 * 1024 },
            seed,
        }
    }
}

/// The Binance venue of the feed session: a fixed endpoint, JSON `SUBSCRIBE` text frames
/// acknowledged by id (the connection is live at the first acknowledgement), combined-stream
/// text frames, and rotation with the next connection opened first.
pub struct BinanceFeed {
    cfg: BinanceConfig,
}

impl BinanceFeed {
    /// The venue for these settings.
    pub fn new(cfg: BinanceConfig) -> BinanceFeed {
        BinanceFeed { cfg }
    }

    /// Builds the SUBSCRIBE messages for `insts`, `subscribe_batch` streams each, recording
    /// each message's instruments under its request id.
    fn subscribe_messages(&self, insts: &[(InstrumentId, Symbol)], conn: &mut BinanceConn) -> Vec<String> {
        let per = (self.cfg.subscribe_batch / self.cfg.streams.len().max(1)).max(1);
        insts
            .chunks(per)
            .map(|chunk| {
                let id = conn.next_id;
                conn.next_id += 1;
                let params: Vec<String> = chunk
                    .iter()
                    .flat_map(|(_, s)| {
                        self.cfg.streams.iter().map(move |k| format!("\"{}\"", stream_name(s, k)))
                    })
                    .collect();
                conn.pending.insert(id, chunk.iter().map(|(i, _)| *i).collect());
                format!("{{\"method\":\"SUBSCRIBE\",\"params\":[{}],\"id\":{id}}}", params.join(","))
            })
            .collect()
    }
}

/// One Binance connection: the instruments of each unacknowledged request.
pub struct BinanceConn {
    pending: HashMap<i64, Vec<InstrumentId>>,
    next_id: i64,
    subscribed_any: bool,
}

impl Venue for BinanceFeed {
    type Conn = BinanceConn;
    type Scratch = ();
    type Item = Symbol;
    const ROTATION: Rotation = Rotation::Overlap;
    const BINARY_CONTROL: bool = false;
    const ADDED_BATCH: usize = 1;

    fn timing(&self) -> Timing {
        Timing {
            silence_timeout: self.cfg.silence_timeout,
            reconnect_initial: self.cfg.reconnect_initial,
            reconnect_max: self.cfg.reconnect_max,
            jitter: self.cfg.jitter,
            connect_timeout: self.cfg.connect_timeout,
            control_spacing: self.cfg.control_spacing,
            max_lifetime: Some(self.cfg.max_lifetime),
            seed: self.cfg.seed,
        }
    }

    fn dns_host(&self) -> &str {
        &self.cfg.endpoint.host
    }

    fn scratch(&self) {}

    async fn gate(&self, _ctx: &Ctx, _stop: &mut watch::Receiver<bool>) -> Gate {
        Gate::Go
    }

    async fn connect(
        &self,
        connector: &Connector,
        ctx: &Ctx,
        fresh_dns: bool,
        _rng: &mut Rng,
    ) -> Result<(WsConn, BinanceConn), FeedError> {
        let ep = &self.cfg.endpoint;
        let (stream, addr, resolved) = connector.connect(ep, fresh_dns).await.map_err(FeedError::Connect)?;
        log::info!("[RECONNECT] event=connected host={} addr={addr} dns={}", ep.host, resolved.via.label());
        let ws = ws::connect(
            stream,
            &ep.host_header(),
            &ep.path,
            &[],
            self.cfg.limits,
            self.cfg.seed ^ ctx.clock.now().as_nanos(),
        )
        .await
        .map_err(FeedError::Upgrade)?;
        Ok((ws, BinanceConn { pending: HashMap::new(), next_id: 1, subscribed_any: false }))
    }

    fn subscriptions(&self, ctx: &Ctx, conn: &mut BinanceConn) -> Vec<String> {
        let insts = ctx.shared.instruments();
        self.subscribe_messages(&insts, conn)
    }

    fn register(&self, ctx: &Ctx, id: InstrumentId, sym: &Symbol) -> Option<Symbol> {
        ctx.shared.add(id, sym.clone());
        Some(sym.clone())
    }

    fn added_message(&self, conn: &mut BinanceConn, items: &[(InstrumentId, Symbol)]) -> String {
        self.subscribe_messages(items, conn).join("")
    }

    async fn added_sent(&self, _ctx: &Ctx, _conn: &mut BinanceConn, _ids: &[InstrumentId]) {}

    async fn on_data(
        &self,
        ctx: &Ctx,
        conn: &mut BinanceConn,
        _: &mut (),
        bytes: &[u8],
        binary: bool,
    ) -> bool {
        if binary {
            ctx.malformed("binary");
            return false;
        }
        let now = ctx.clock.now();
        ctx.shared.frames.fetch_add(1, Ordering::Relaxed);
        match decode(bytes) {
            Ok(Frame::Quote { symbol, bid, ask, last, exch_ts }) => {
                let Some(id) = ctx.shared.lookup(symbol) else {
                    ctx.shared.unknown_symbols.fetch_add(1, Ordering::Relaxed);
                    return false;
                };
                let q = Quote { bid, ask, last, source: Source::Live, exch_ts, dated: now };
                ctx.engine.ticks.push(Tick::new(id, q));
                ctx.shared.ticks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Frame::Ack { id: Some(id) }) => {
                if let Some(insts) = conn.pending.remove(&id) {
                    if !conn.subscribed_any {
                        conn.subscribed_any = true;
                        ctx.mark_live();
                    }
                    ctx.shared.subscribed.fetch_add(insts.len() as u64, Ordering::Relaxed);
                    for i in &insts {
                        ctx.engine.feed(FeedEvent::Subscribed(*i)).await;
                    }
                    log::info!("[RECONNECT] event=subscribed request_id={id} instruments={}", insts.len());
                }
            }
            Ok(Frame::Ack { id: None }) | Ok(Frame::Other) => {}
            Ok(Frame::Error { code, id }) => {
                let insts = id.and_then(|i| conn.pending.remove(&i)).map_or(0, |v| v.len());
                log::warn!(
                    "[RECONNECT] event=venue_error code={} request_id={} instruments={insts}",
                    code.map_or("none".into(), |c| c.to_string()),
                    id.map_or("none".into(), |c| c.to_string())
                );
            }
            Ok(Frame::ServerShutdown) => return true,
            Err(e) => ctx.malformed(e.kind()),
        }
        false
    }

    fn is_live(&self, conn: &BinanceConn) -> bool {
        conn.subscribed_any
    }

    fn acked(&self, conn: &BinanceConn) -> bool {
        conn.pending.is_empty()
    }

    fn set_live(&self, conn: &mut BinanceConn) {
        conn.subscribed_any = true;
    }
}

/// Runs the Binance feed session until `stop` fires ([`session::run`] with [`BinanceFeed`]).
pub async fn run(
    cfg: BinanceConfig,
    connector: Connector,
    ctx: Ctx,
    added: mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: watch::Receiver<bool>,
) {
    session::run(Arc::new(BinanceFeed::new(cfg)), connector, ctx, added, stop).await;
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
            assert_eq!(digits_end(t, 0), n, "{:?}", String::from_utf8_lossy(t));
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
        // The whole-frame fast path reads it, and agrees with the general path.
        let fast = combined_book_ticker(f);
        assert!(fast.is_some());
        assert_eq!(fast.map(Ok), Some(decode_general(f)));
        for v in
            ["0.00009960", "9999999999.99999999", "12345678.00000001", "123456789.10000000", "1.00000000"]
        {
            let f = format!(
                r#"{{"stream":"x@bookTicker","data":{{"u":1,"s":"X","b":"{v}","B":"1.00000000","a":"{v}","A":"2.00000000"}}}}"#
            );
            let want = Frame::Quote { symbol: b"X", bid: p(v), ask: p(v), last: None, exch_ts: None };
            assert_eq!(combined_book_ticker(f.as_bytes()), Some(want), "{v}");
            assert_eq!(decode_general(f.as_bytes()), Ok(want), "{v}");
        }
    }

    #[test]
    fn an_empty_book_side_is_a_zero_price_and_the_other_side_still_counts() {
        // Binance sends "0.00000000" for an empty side of the book. The decoder hands it on as
        // a zero price (the engine drops that side only, counted); rejecting the whole frame
        // would lose the other side's price too. Every path (whole-frame fast path, raw
        // stream fixed layout, general) agrees.
        let zero = p("0");
        assert_eq!(zero, Some(Price::ZERO));
        for (bid, ask) in [("0.00000000", "25.36520000"), ("25.35190000", "0.00000000"), ("0", "1.5")] {
            let data =
                format!(r#"{{"u":1,"s":"X","b":"{bid}","B":"0.00000000","a":"{ask}","A":"0.00000000"}}"#);
            let f = format!(r#"{{"stream":"x@bookTicker","data":{data}}}"#);
            let want = Frame::Quote { symbol: b"X", bid: p(bid), ask: p(ask), last: None, exch_ts: None };
            assert_eq!(decode(f.as_bytes()), Ok(want), "{f}");
            assert_eq!(decode_general(f.as_bytes()), Ok(want), "{f}");
            if let Some(fast) = combined_book_ticker(f.as_bytes()) {
                assert_eq!(fast, want, "{f}");
            }
            assert_eq!(decode(data.as_bytes()), Ok(want), "raw stream: {data}");
        }
        let t = br#"{"stream":"x@trade","data":{"e":"trade","E":1,"s":"X","t":1,"p":"0.00000000","q":"1","T":1}}"#;
        assert!(matches!(decode(t), Ok(Frame::Quote { last: Some(l), .. }) if l == Price::ZERO));
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
