//! Upstox Market Data Feed V3: a zero-allocation decoder of `FeedResponse` frames
//! (`proto/MarketDataFeedV3.proto`, vendored with its provenance in `proto/README.md`).
//!
//! Only what tickguard acts on is read: the last traded price and time (`LTPC.ltp`, `LTPC.ltt`)
//! of every instrument, wherever the mode puts them (`ltpc`, `fullFeed.marketFF.ltpc`,
//! `fullFeed.indexFF.ltpc`, `firstLevelWithGreeks.ltpc`), the request mode, the frame's type and
//! server time, and `marketInfo.segmentStatus`. Everything else is **validated and skipped**:
//! a frame is accepted exactly when the reference decoder (prost, compiled from the same
//! `.proto`) accepts it, with the same semantics for what is read:
//!
//! - proto3 defaults: an absent field reads as zero, so `ltp == 0.0` means "no price";
//! - a singular field seen twice: the last wins; an embedded message seen twice: merged;
//! - a `oneof` member seen after another member: replaces it (its fields start from zero);
//! - unknown fields (a newer schema) are skipped; a known field with the wrong wire type, a
//!   truncated varint or length, a string that is not UTF-8, a stray end-group, a field number
//!   of 0 and nesting beyond 100 levels are errors, as in prost.
//!
//! `tests/upstox_decode.rs` checks this against frames built by Google's encoder from the
//! SDK's descriptor (`tests/fixtures/upstox/frames.json`) and, by proptest, against prost on
//! random well-formed messages and on arbitrary bytes (same accept/reject, same prices).
//!
//! Items are handed to a [`Sink`] **as each map entry is complete**, before the rest of the
//! frame is checked: a caller that must not act on part of a malformed frame (the session) buffers
//! them and applies them only when [`decode`] returns `Ok`. A map key repeated within one frame is
//! handed over each time; the reference keeps the last, so a caller keeps the last too.
//!
//! No allocation, no recursion beyond the schema's fixed depth (unknown groups are skipped with
//! an explicit depth budget), no panics on any input (`tests/upstox_decode.rs` proptest).

/// Nesting budget of the reference decoder (prost's recursion limit).
pub const RECURSION_LIMIT: u32 = 100;

/// Why a frame was rejected (stable names for the `[RECONNECT] event=malformed_frame` line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A varint longer than 10 bytes or ending past the buffer.
    Varint,
    /// A field key with field number 0, above `u32`, or wire type 6 / 7.
    Key,
    /// A length or fixed-size value past the end of its enclosing message.
    Truncated,
    /// A known field with another wire type than the schema's.
    WireType,
    /// A `string` field (a map key) that is not UTF-8.
    Utf8,
    /// An end-group without its start, or a group closed by another field number.
    Group,
    /// More than [`RECURSION_LIMIT`] levels of nesting.
    TooDeep,
}

impl DecodeError {
    /// Short name for logs and counters.
    pub fn kind(self) -> &'static str {
        match self {
            DecodeError::Varint => "pb_varint",
            DecodeError::Key => "pb_key",
            DecodeError::Truncated => "pb_truncated",
            DecodeError::WireType => "pb_wire_type",
            DecodeError::Utf8 => "pb_utf8",
            DecodeError::Group => "pb_group",
            DecodeError::TooDeep => "pb_too_deep",
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.kind())
    }
}

/// `FeedResponse.type`.
pub const TYPE_INITIAL_FEED: i32 = 0;
/// `FeedResponse.type`.
pub const TYPE_LIVE_FEED: i32 = 1;
/// `FeedResponse.type`.
pub const TYPE_MARKET_INFO: i32 = 2;

/// `MarketStatus` values.
pub mod status {
    /// Pre-open order entry started.
    pub const PRE_OPEN_START: i32 = 0;
    /// Pre-open order entry ended (matching).
    pub const PRE_OPEN_END: i32 = 1;
    /// Normal market open: continuous trading.
    pub const NORMAL_OPEN: i32 = 2;
    /// Normal market closed.
    pub const NORMAL_CLOSE: i32 = 3;
    /// Closing session started (closing-price orders only).
    pub const CLOSING_START: i32 = 4;
    /// Closing session ended.
    pub const CLOSING_END: i32 = 5;
}

/// Where an instrument's last price was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `Feed.ltpc` (mode `ltpc`).
    Ltpc,
    /// `Feed.fullFeed.marketFF.ltpc` (modes `full`, `full_d30`).
    MarketFull,
    /// `Feed.fullFeed.indexFF.ltpc` (an index in a full mode).
    IndexFull,
    /// `Feed.firstLevelWithGreeks.ltpc` (mode `option_greeks`).
    Greeks,
}

impl Via {
    /// The name the fixtures use.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Ltpc => "ltpc",
            Via::MarketFull => "marketFF",
            Via::IndexFull => "indexFF",
            Via::Greeks => "firstLevelWithGreeks",
        }
    }
}

/// A last traded price.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Last {
    /// `LTPC.ltp`, never 0.
    pub ltp: f64,
    /// `LTPC.ltt`: last trade time, ms since the Unix epoch (0: not given).
    pub ltt: i64,
    /// Where it was found.
    pub via: Via,
}

/// One entry of `FeedResponse.feeds`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry<'a> {
    /// The instrument key (`NSE_EQ|INE323A01026`), UTF-8 checked, borrowed from the frame.
    pub key: &'a [u8],
    /// `Feed.requestMode`.
    pub mode: i32,
    /// The last price, if the entry carries one (`ltp` present and not zero).
    pub last: Option<Last>,
}

/// What a frame says besides its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// `FeedResponse.type` ([`TYPE_LIVE_FEED`] ...).
    pub kind: i32,
    /// `FeedResponse.currentTs`, ms.
    pub current_ts: i64,
    /// Entries of `feeds` handed over.
    pub entries: u32,
    /// Whether `marketInfo` was present.
    pub market_info: bool,
}

/// Receives what a frame carries, in wire order.
pub trait Sink {
    /// One `feeds` entry, complete.
    fn entry(&mut self, e: &Entry<'_>);
    /// One `marketInfo.segmentStatus` entry: segment (`NSE_EQ`) and [`status`] value.
    fn segment(&mut self, _segment: &[u8], _status: i32) {}
}

/// Decodes one `FeedResponse` frame into `sink`.
pub fn decode<S: Sink + ?Sized>(frame: &[u8], sink: &mut S) -> Result<Summary, DecodeError> {
    let mut r = Reader { b: frame, i: 0 };
    let mut sum = Summary::default();
    let ctx = RECURSION_LIMIT;
    while r.more() {
        let (field, wt) = r.key()?;
        match field {
            1 => sum.kind = r.enum_field(wt)?,
            2 => {
                let mut m = r.message(wt, ctx)?;
                feed_entry(&mut m, ctx - 1, sink)?;
                sum.entries += 1;
            }
            3 => sum.current_ts = r.int64_field(wt)?,
            4 => {
                let mut m = r.message(wt, ctx)?;
                market_info(&mut m, ctx - 1, sink)?;
                sum.market_info = true;
            }
            _ => r.skip(field, wt, ctx)?,
        }
    }
    Ok(sum)
}

// ----- the reader ----------------------------------------------------------------------------

const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_START_GROUP: u8 = 3;
const WT_END_GROUP: u8 = 4;
const WT_FIXED32: u8 = 5;

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn more(&self) -> bool {
        self.i < self.b.len()
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let rest = self.b.get(self.i..).unwrap_or(&[]);
        // One-byte fast path: tags, lengths and small values.
        if let Some(&b) = rest.first() {
            if b < 0x80 {
                self.i += 1;
                return Ok(u64::from(b));
            }
        }
        let mut v: u64 = 0;
        for (k, &b) in rest.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7F) << (7 * k);
            if b < 0x80 {
                // The tenth byte may only carry the 64th bit.
                if k == 9 && b > 1 {
                    return Err(DecodeError::Varint);
                }
                self.i += k + 1;
                return Ok(v);
            }
        }
        Err(DecodeError::Varint)
    }

    #[inline]
    fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let k = self.varint()?;
        let k = u32::try_from(k).map_err(|_| DecodeError::Key)?;
        let wt = (k & 7) as u8;
        if wt > WT_FIXED32 || k >> 3 == 0 {
            return Err(DecodeError::Key);
        }
        Ok((k >> 3, wt))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.i.checked_add(n).ok_or(DecodeError::Truncated)?;
        let s = self.b.get(self.i..end).ok_or(DecodeError::Truncated)?;
        self.i = end;
        Ok(s)
    }

    #[inline]
    fn len_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        self.take(n)
    }

    #[inline]
    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }

    #[inline]
    fn double_field(&mut self, wt: u8) -> Result<f64, DecodeError> {
        if wt != WT_FIXED64 {
            return Err(DecodeError::WireType);
        }
        self.fixed64().map(f64::from_bits)
    }

    #[inline]
    fn int64_field(&mut self, wt: u8) -> Result<i64, DecodeError> {
        if wt != WT_VARINT {
            return Err(DecodeError::WireType);
        }
        // Two's complement, as the reference reads an int64.
        self.varint().map(|v| v as i64)
    }

    #[inline]
    fn enum_field(&mut self, wt: u8) -> Result<i32, DecodeError> {
        if wt != WT_VARINT {
            return Err(DecodeError::WireType);
        }
        // Open enums: any value, truncated to 32 bits as the reference does.
        self.varint().map(|v| v as i32)
    }

    /// A length-delimited message field: checks the wire type and the nesting budget `ctx`
    /// (that of the enclosing message), returns a reader over its bytes.
    #[inline]
    fn message(&mut self, wt: u8, ctx: u32) -> Result<Reader<'a>, DecodeError> {
        if wt != WT_LEN {
            return Err(DecodeError::WireType);
        }
        if ctx == 0 {
            return Err(DecodeError::TooDeep);
        }
        Ok(Reader { b: self.len_prefixed()?, i: 0 })
    }

    /// A `string` field.
    #[inline]
    fn string_field(&mut self, wt: u8) -> Result<&'a [u8], DecodeError> {
        if wt != WT_LEN {
            return Err(DecodeError::WireType);
        }
        let s = self.len_prefixed()?;
        if s.is_ascii() || core::str::from_utf8(s).is_ok() { Ok(s) } else { Err(DecodeError::Utf8) }
    }

    /// Skips an unknown field.
    fn skip(&mut self, field: u32, wt: u8, ctx: u32) -> Result<(), DecodeError> {
        if ctx == 0 {
            return Err(DecodeError::TooDeep);
        }
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_FIXED64 => self.take(8).map(drop),
            WT_LEN => self.len_prefixed().map(drop),
            WT_FIXED32 => self.take(4).map(drop),
            WT_START_GROUP => self.skip_group(field, ctx),
            _ => Err(DecodeError::Group),
        }
    }

    /// Skips the rest of a group opened by `field`, with an explicit stack of open groups
    /// (no recursion): each nested group costs one level of `ctx`, as in the reference.
    fn skip_group(&mut self, field: u32, ctx: u32) -> Result<(), DecodeError> {
        const MAX: usize = RECURSION_LIMIT as usize + 1;
        let mut open = [0u32; MAX];
        let mut depth = 1usize;
        open[0] = field;
        loop {
            let (f, wt) = self.key()?;
            // The field inside the innermost open group is skipped at ctx - depth.
            let level = ctx.saturating_sub(depth as u32);
            match wt {
                WT_END_GROUP => {
                    if f != open[depth - 1] {
                        return Err(DecodeError::Group);
                    }
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                WT_START_GROUP => {
                    if level == 0 || depth >= MAX {
                        return Err(DecodeError::TooDeep);
                    }
                    open[depth] = f;
                    depth += 1;
                }
                _ => {
                    if level == 0 {
                        return Err(DecodeError::TooDeep);
                    }
                    self.skip(f, wt, level)?;
                }
            }
        }
    }
}

// ----- the messages tickguard reads ----------------------------------------------------------

#[derive(Clone, Copy, Default)]
struct Ltpc {
    ltp: f64,
    ltt: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    None,
    Ltpc,
    /// `fullFeed` set, its own oneof not (yet).
    Full,
    MarketFull,
    IndexFull,
    Greeks,
}

/// A `Feed` as far as tickguard reads it: which oneof member, and that member's `ltpc` (if
/// the member has one).
struct FeedAcc {
    case: Case,
    ltpc: Option<Ltpc>,
    mode: i32,
}

impl FeedAcc {
    /// Switches the oneof to `case`; a different member starts from zero.
    fn switch(&mut self, case: Case) {
        if self.case != case {
            self.case = case;
            self.ltpc = if case == Case::Ltpc { Some(Ltpc::default()) } else { None };
        }
    }
    fn last(&self) -> Option<Last> {
        let via = match self.case {
            Case::Ltpc => Via::Ltpc,
            Case::MarketFull => Via::MarketFull,
            Case::IndexFull => Via::IndexFull,
            Case::Greeks => Via::Greeks,
            Case::None | Case::Full => return None,
        };
        let l = self.ltpc?;
        (l.ltp != 0.0).then_some(Last { ltp: l.ltp, ltt: l.ltt, via })
    }
}

/// A `feeds` map entry (`key = 1`, `value = 2`).
fn feed_entry<S: Sink + ?Sized>(r: &mut Reader<'_>, ctx: u32, sink: &mut S) -> Result<(), DecodeError> {
    let mut key: &[u8] = &[];
    let mut acc = FeedAcc { case: Case::None, ltpc: None, mode: 0 };
    while r.more() {
        let (field, wt) = r.key()?;
        match field {
            1 => key = r.string_field(wt)?,
            2 => {
                let mut m = r.message(wt, ctx)?;
                feed(&mut m, ctx - 1, &mut acc)?;
            }
            _ => r.skip(field, wt, ctx)?,
        }
    }
    sink.entry(&Entry { key, mode: acc.mode, last: acc.last() });
    Ok(())
}

/// `Feed`: oneof { ltpc = 1, fullFeed = 2, firstLevelWithGreeks = 3 }, requestMode = 4.
fn feed(r: &mut Reader<'_>, ctx: u32, acc: &mut FeedAcc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                let mut m = r.message(wt, ctx)?;
                acc.switch(Case::Ltpc);
                ltpc(&mut m, ctx - 1, acc.ltpc.get_or_insert_with(Ltpc::default))?;
            }
            2 => {
                let mut m = r.message(wt, ctx)?;
                if !matches!(acc.case, Case::Full | Case::MarketFull | Case::IndexFull) {
                    acc.switch(Case::Full);
                }
                full_feed(&mut m, ctx - 1, acc)?;
            }
            3 => {
                let mut m = r.message(wt, ctx)?;
                acc.switch(Case::Greeks);
                first_level_with_greeks(&mut m, ctx - 1, acc)?;
            }
            4 => acc.mode = r.enum_field(wt)?,
            _ => r.skip(field, wt, ctx)?,
        }
    }
    Ok(())
}

/// `FullFeed`: oneof { marketFF = 1, indexFF = 2 }.
fn full_feed(r: &mut Reader<'_>, ctx: u32, acc: &mut FeedAcc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        match field {
            1 => {
                let mut m = r.message(wt, ctx)?;
                acc.switch(Case::MarketFull);
                market_full_feed(&mut m, ctx - 1, acc)?;
            }
            2 => {
                let mut m = r.message(wt, ctx)?;
                acc.switch(Case::IndexFull);
                index_full_feed(&mut m, ctx - 1, acc)?;
            }
            _ => r.skip(field, wt, ctx)?,
        }
    }
    Ok(())
}

/// `MarketFullFeed`: ltpc = 1 is read; the rest is checked against the schema.
fn market_full_feed(r: &mut Reader<'_>, ctx: u32, acc: &mut FeedAcc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        if field == 1 {
            let mut m = r.message(wt, ctx)?;
            ltpc(&mut m, ctx - 1, acc.ltpc.get_or_insert_with(Ltpc::default))?;
        } else {
            r.checked(MARKET_FULL_FEED, field, wt, ctx)?;
        }
    }
    Ok(())
}

/// `IndexFullFeed`: ltpc = 1 is read; marketOHLC = 2 is checked.
fn index_full_feed(r: &mut Reader<'_>, ctx: u32, acc: &mut FeedAcc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        if field == 1 {
            let mut m = r.message(wt, ctx)?;
            ltpc(&mut m, ctx - 1, acc.ltpc.get_or_insert_with(Ltpc::default))?;
        } else {
            r.checked(INDEX_FULL_FEED, field, wt, ctx)?;
        }
    }
    Ok(())
}

/// `FirstLevelWithGreeks`: ltpc = 1 is read; the rest is checked.
fn first_level_with_greeks(r: &mut Reader<'_>, ctx: u32, acc: &mut FeedAcc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        if field == 1 {
            let mut m = r.message(wt, ctx)?;
            ltpc(&mut m, ctx - 1, acc.ltpc.get_or_insert_with(Ltpc::default))?;
        } else {
            r.checked(FIRST_LEVEL_WITH_GREEKS, field, wt, ctx)?;
        }
    }
    Ok(())
}

/// `LTPC`: ltp = 1 (double), ltt = 2 (int64) are read; ltq, cp, iep are checked.
#[inline]
fn ltpc(r: &mut Reader<'_>, ctx: u32, out: &mut Ltpc) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        match field {
            1 => out.ltp = r.double_field(wt)?,
            2 => out.ltt = r.int64_field(wt)?,
            _ => r.checked(LTPC, field, wt, ctx)?,
        }
    }
    Ok(())
}

/// `MarketInfo`: segmentStatus = 1 (map<string, MarketStatus>) is read; the other maps are
/// checked.
fn market_info<S: Sink + ?Sized>(r: &mut Reader<'_>, ctx: u32, sink: &mut S) -> Result<(), DecodeError> {
    while r.more() {
        let (field, wt) = r.key()?;
        if field == 1 {
            let mut e = r.message(wt, ctx)?;
            let mut seg: &[u8] = &[];
            let mut st = 0i32;
            while e.more() {
                let (f, w) = e.key()?;
                match f {
                    1 => seg = e.string_field(w)?,
                    2 => st = e.enum_field(w)?,
                    _ => e.skip(f, w, ctx - 1)?,
                }
            }
            sink.segment(seg, st);
        } else {
            r.checked(MARKET_INFO, field, wt, ctx)?;
        }
    }
    Ok(())
}

// ----- schema-checked skipping of what tickguard does not read -------------------------------

/// A field's type, as far as validation goes.
#[derive(Clone, Copy)]
enum Ty {
    /// int64, int32 enum, bool.
    Varint,
    /// double.
    F64,
    /// string.
    Str,
    /// An embedded message (or a map entry) with these fields.
    Msg(&'static [(u32, Ty)]),
}

static QUOTE: &[(u32, Ty)] = &[(1, Ty::Varint), (2, Ty::F64), (3, Ty::Varint), (4, Ty::F64)];
static MARKET_LEVEL: &[(u32, Ty)] = &[(1, Ty::Msg(QUOTE))];
static OPTION_GREEKS: &[(u32, Ty)] = &[(1, Ty::F64), (2, Ty::F64), (3, Ty::F64), (4, Ty::F64), (5, Ty::F64)];
static OHLC: &[(u32, Ty)] =
    &[(1, Ty::Str), (2, Ty::F64), (3, Ty::F64), (4, Ty::F64), (5, Ty::F64), (6, Ty::Varint), (7, Ty::Varint)];
static MARKET_OHLC: &[(u32, Ty)] = &[(1, Ty::Msg(OHLC))];
static DOUBLE_VALUE: &[(u32, Ty)] = &[(1, Ty::F64)];
static LTPC: &[(u32, Ty)] =
    &[(1, Ty::F64), (2, Ty::Varint), (3, Ty::Varint), (4, Ty::F64), (5, Ty::Msg(DOUBLE_VALUE))];
static MARKET_FULL_FEED: &[(u32, Ty)] = &[
    (1, Ty::Msg(LTPC)),
    (2, Ty::Msg(MARKET_LEVEL)),
    (3, Ty::Msg(OPTION_GREEKS)),
    (4, Ty::Msg(MARKET_OHLC)),
    (5, Ty::F64),
    (6, Ty::Varint),
    (7, Ty::F64),
    (8, Ty::F64),
    (9, Ty::F64),
    (10, Ty::F64),
    (11, Ty::F64),
    (12, Ty::F64),
    (13, Ty::Varint),
    (14, Ty::Varint),
    (15, Ty::Varint),
    (16, Ty::Varint),
];
static INDEX_FULL_FEED: &[(u32, Ty)] = &[(1, Ty::Msg(LTPC)), (2, Ty::Msg(MARKET_OHLC))];
static FIRST_LEVEL_WITH_GREEKS: &[(u32, Ty)] = &[
    (1, Ty::Msg(LTPC)),
    (2, Ty::Msg(QUOTE)),
    (3, Ty::Msg(OPTION_GREEKS)),
    (4, Ty::Varint),
    (5, Ty::F64),
    (6, Ty::F64),
];
static STATUS_INFO: &[(u32, Ty)] = &[(1, Ty::Str), (2, Ty::Varint)];
static SEGMENT_STATUS_ENTRY: &[(u32, Ty)] = &[(1, Ty::Str), (2, Ty::Varint)];
static STATUS_INFO_ENTRY: &[(u32, Ty)] = &[(1, Ty::Str), (2, Ty::Msg(STATUS_INFO))];
static MARKET_INFO: &[(u32, Ty)] =
    &[(1, Ty::Msg(SEGMENT_STATUS_ENTRY)), (2, Ty::Msg(STATUS_INFO_ENTRY)), (3, Ty::Msg(STATUS_INFO_ENTRY))];

impl Reader<'_> {
    /// Reads past field `field` of a message whose schema is `fields`, checking it as the
    /// reference decoder would (wire type, UTF-8, nested messages); unknown fields are skipped.
    /// `ctx` is the nesting budget of the enclosing message. The schema is at most five levels
    /// deep, so the recursion is bounded by it.
    fn checked(
        &mut self,
        fields: &'static [(u32, Ty)],
        field: u32,
        wt: u8,
        ctx: u32,
    ) -> Result<(), DecodeError> {
        let Some(&(_, ty)) = fields.iter().find(|(f, _)| *f == field) else {
            return self.skip(field, wt, ctx);
        };
        match ty {
            Ty::Varint => self.int64_field(wt).map(drop),
            Ty::F64 => self.double_field(wt).map(drop),
            Ty::Str => self.string_field(wt).map(drop),
            Ty::Msg(inner) => {
                let mut m = self.message(wt, ctx)?;
                while m.more() {
                    let (f, w) = m.key()?;
                    m.checked(inner, f, w, ctx - 1)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        entries: Vec<(Vec<u8>, i32, Option<Last>)>,
        segments: Vec<(Vec<u8>, i32)>,
    }

    impl Sink for Collect {
        fn entry(&mut self, e: &Entry<'_>) {
            self.entries.push((e.key.to_vec(), e.mode, e.last));
        }
        fn segment(&mut self, s: &[u8], st: i32) {
            self.segments.push((s.to_vec(), st));
        }
    }

    fn ld(field: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3 | 2) as u8, body.len() as u8];
        v.extend_from_slice(body);
        v
    }

    fn ltpc_bytes(ltp: f64, ltt: u8) -> Vec<u8> {
        let mut v = vec![0x09];
        v.extend_from_slice(&ltp.to_le_bytes());
        v.extend_from_slice(&[0x10, ltt]);
        v
    }

    #[test]
    fn oneof_switch_and_merge() {
        // Feed: ltpc(575) then fullFeed.marketFF without ltpc: the oneof now holds marketFF,
        // which has no price.
        let mut feed = ld(1, &ltpc_bytes(575.0, 5));
        feed.extend(ld(2, &ld(1, &[0x29, 0, 0, 0, 0, 0, 0, 0x14, 0x40])));
        let mut entry = ld(1, b"K");
        entry.extend(ld(2, &feed));
        let frame = ld(2, &entry);
        let mut c = Collect::default();
        decode(&frame, &mut c).expect("valid");
        assert_eq!(c.entries, vec![(b"K".to_vec(), 0, None)]);
        // marketFF twice: the ltpc of the first survives the merge.
        let mut full = ld(1, &ld(1, &ltpc_bytes(700.0, 7)));
        full.extend(ld(1, &[0x30, 1]));
        let mut entry = ld(1, b"K");
        entry.extend(ld(2, &ld(2, &full)));
        let mut c = Collect::default();
        decode(&ld(2, &entry), &mut c).expect("valid");
        assert_eq!(c.entries[0].2, Some(Last { ltp: 700.0, ltt: 7, via: Via::MarketFull }));
    }

    #[test]
    fn rejects_what_the_reference_rejects() {
        let mut c = Collect::default();
        assert_eq!(decode(&[0x08], &mut c), Err(DecodeError::Varint));
        assert_eq!(decode(&[0x00, 0x00], &mut c), Err(DecodeError::Key));
        assert_eq!(decode(&[0x0f], &mut c), Err(DecodeError::Key));
        assert_eq!(decode(&[0x12, 0x05, 0x0a], &mut c), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x09, 0, 0, 0, 0, 0, 0, 0, 0], &mut c), Err(DecodeError::WireType));
        assert_eq!(decode(&[0x12, 0x03, 0x0a, 0x01, 0xff], &mut c), Err(DecodeError::Utf8));
        assert_eq!(decode(&[0x2c], &mut c), Err(DecodeError::Group));
        assert_eq!(decode(&[0x2b, 0x34], &mut c), Err(DecodeError::Group));
        assert_eq!(decode(&[0x2b, 0x08, 0x01, 0x2c], &mut c), Ok(Summary::default()));
        let ten = [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(decode(&ten, &mut c), Err(DecodeError::Varint));
        let ten = [0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode(&ten, &mut c).map(|s| s.current_ts), Ok(-1));
        // Groups nested past the budget.
        let deep: Vec<u8> = std::iter::repeat_n(0x2b, 120).collect();
        assert_eq!(decode(&deep, &mut c), Err(DecodeError::TooDeep));
        assert!(c.entries.is_empty());
    }

    #[test]
    fn empty_frame_is_an_empty_initial_feed() {
        let mut c = Collect::default();
        assert_eq!(decode(&[], &mut c), Ok(Summary::default()));
    }
}
