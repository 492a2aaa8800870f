//! The Upstox market data feed (Market Data Feed V3), its REST fallback and its market clock.
//!
//! - **Authorize, then connect.** Before every connection, `GET /v3/feed/market-data-feed/authorize`
//!   (bearer token from `feed.token_file`) hands out a fresh `wss://` URL carrying a single-use
//!   code; both requests go through the appliance's own DNS-fallback and TLS stack. The URL is
//!   never logged (the code is a credential).
//! - **One connection.** Upstox allows one connection per app and user, so a reconnect or a
//!   rotation always closes the old connection before it authorizes the next (unlike Binance,
//!   where the next is opened first).
//! - **The session of the feed edge:** silence detection (any frame, our pings' pongs
//!   included), jittered exponential backoff reset only by a healthy connection, a DNS health
//!   check on every third attempt, and everything resubscribed on every connection.
//! - **Subscriptions** are JSON sent as *binary* frames (`{"guid","method":"sub","data":{"mode",
//!   "instrumentKeys"}}`), within the per-connection cap of the mode (`feed.mode`,
//!   `feed.max_subscriptions`; a configuration asking for more is refused at start-up).
//! - **Frames** are protobuf `FeedResponse`s, decoded without allocation by
//!   [`super::upstox_proto`]: the last price of every instrument in whatever mode carries it,
//!   with `ltt` as exchange time, dated at receive time. A frame is applied only once it has
//!   decoded whole (a malformed frame is counted and dropped, never half-applied).
//! - **Market status**: `market_info` frames override the calendar while this connection is up
//!   ([`super::calendar::MarketState`]); the calendar task turns both into
//!   `FeedEvent::Market`.
//! - **Authorization**: a 401 (expired or revoked token) is not a network fault. The feed and
//!   the REST fallback stop calling the network, raise `[AUTH]` (log, `FeedShared::auth_failures`,
//!   `FeedShared::auth_blocked`) and wait for the token file to change, then reload it and go on
//!   without a restart.
//! - **REST fallback** (rung L2): while the feed is down, the v3 LTP quote
//!   (`GET /v3/market-quote/ltp?instrument_key=…`, at most 500 keys a request) for the
//!   instruments with open positions, once every `feed.rest_poll_s`. The answer is keyed
//!   `NSE_EQ:BOSCHLTD`, so entries are matched on their `instrument_token`; it has no trade
//!   time, so each price is dated at the request's send time.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc, watch};

use super::calendar::{Calendar, MarketState, WallClock};
use super::error::{FeedError, PollError};
use super::rest;
use super::session::{self, Ctx, FeedShared, Gate, Rotation, Timing, Venue};
use super::upstox_proto::{self as pb, Last, Sink};
use crate::core::backoff::Rng;
use crate::core::engine::FeedEvent;
use crate::core::price::Price;
use crate::core::types::{InstrumentId, Quote, Source, Symbol, Tick};
use crate::limits::MAX_INSTRUMENTS;
use crate::net::http::{self, Connector, Endpoint, Req};
use crate::net::ws::{self, WsConn, WsError, WsLimits};

/// Instrument keys per subscribe request.
pub const SUBSCRIBE_BATCH: usize = 100;
/// Instrument keys per LTP quote request (Upstox's limit).
pub const LTP_MAX_KEYS: usize = 500;
/// Path of the feed's authorize endpoint under `feed.rest_url`.
pub const AUTHORIZE_PATH: &str = "/v3/feed/market-data-feed/authorize";
/// Path of the LTP quote under `feed.rest_url`.
pub const LTP_PATH: &str = "/v3/market-quote/ltp";
/// How often a blocked feed looks at the token file.
pub const TOKEN_POLL: Duration = Duration::from_millis(500);

/// Subscription mode (`feed.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Last traded price, time, quantity and close.
    #[default]
    Ltpc,
    /// Five-level depth, candles and the rest (`full_d5`).
    Full,
    /// Best bid/ask, greeks and the last price.
    OptionGreeks,
}

impl Mode {
    /// Parses the configuration (and wire) word.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "ltpc" => Some(Mode::Ltpc),
            "full" => Some(Mode::Full),
            "option_greeks" => Some(Mode::OptionGreeks),
            _ => None,
        }
    }
    /// The word sent in `data.mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ltpc => "ltpc",
            Mode::Full => "full",
            Mode::OptionGreeks => "option_greeks",
        }
    }
    /// Upstox's per-connection subscription cap for this mode used alone (PROTOCOLS.md §4:
    /// LTPC 5000, Option Greeks 3000, Full 2000 instrument keys).
    pub fn cap(self) -> usize {
        match self {
            Mode::Ltpc => 5000,
            Mode::OptionGreeks => 3000,
            Mode::Full => 2000,
        }
    }
}

/// Decimal places prices of an instrument key's segment are rounded to: currency derivatives
/// (`NCD_FO`, `BCD_FO`) quote to four, everything else to two.
pub fn price_scale(key: &str) -> u32 {
    match key.split('|').next().unwrap_or("") {
        "NCD_FO" | "BCD_FO" => 4,
        _ => 2,
    }
}

/// Settings of the Upstox feed.
#[derive(Clone, Debug)]
pub struct UpstoxConfig {
    /// `feed.rest_url`: base of the authorize and LTP endpoints.
    pub rest: Endpoint,
    /// `feed.token_file`.
    pub token_file: PathBuf,
    /// `feed.mode`.
    pub mode: Mode,
    /// Instrument keys one connection may subscribe.
    pub cap: usize,
    /// No frame for this long means the feed is silent (`feed.silence_timeout_s`).
    pub silence_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Slowest reconnect delay.
    pub reconnect_max: Duration,
    /// Jitter of the reconnect delays.
    pub jitter: f64,
    /// Bound of authorize + connect + TLS + upgrade.
    pub connect_timeout: Duration,
    /// Least time between two subscribe requests.
    pub control_spacing: Duration,
    /// Frame and message limits.
    pub limits: WsLimits,
    /// Close and reopen a connection this old (`None`: never; Upstox announces no lifetime).
    pub max_lifetime: Option<Duration>,
    /// REST poll period (`feed.rest_poll_s`).
    pub rest_poll: Duration,
    /// Bound of one REST request.
    pub rest_timeout: Duration,
    /// Seed of the jitter and of the frame masks.
    pub seed: u64,
    /// Reads the access token file (trimmed; an error names the path, never the content).
    /// The wiring passes the configuration's secret reader.
    pub read_token: ReadToken,
}

/// A reader of a secret file: its trimmed content, or why it cannot be had.
pub type ReadToken = fn(&std::path::Path) -> Result<String, String>;

/// The plain token reader (the file's content, trimmed; refused when empty), used until a
/// session or poller brings the configuration's reader ([`UpstoxConfig::read_token`]).
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("secret file {}: cannot read it: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("secret file {}: is empty; write the secret into it", path.display()));
    }
    Ok(t.to_string())
}

// ----- shared state --------------------------------------------------------------------------

/// Most symbols (instruments) one key can be watched under.
pub const KEY_IDS_MAX: usize = crate::limits::UPSTOX_KEY_SYMBOLS_MAX;
type KeyIds = heapless::Vec<InstrumentId, KEY_IDS_MAX>;

/// Instrument keys by id and ids by key.
#[derive(Default)]
struct KeyTable {
    /// Instruments by key: several symbols may name one instrument (a configured symbol and
    /// its key registered as a symbol of its own); each gets the key's prices.
    by_key: HashMap<String, KeyIds>,
    /// Indexed by instrument id: the key and its price scale.
    by_id: Vec<Option<(String, u32)>>,
}

impl KeyTable {
    fn insert(&mut self, id: InstrumentId, key: &str) {
        let i = usize::from(id.0);
        if self.by_id.len() <= i {
            self.by_id.resize(i + 1, None);
        }
        self.by_id[i] = Some((key.to_string(), price_scale(key)));
        let ids = self.by_key.entry(key.to_string()).or_default();
        if !ids.contains(&id) && ids.push(id).is_err() {
            log::error!(
                "[RECONNECT] event=unmapped_symbol key=\"{key}\" instrument={} (more than {KEY_IDS_MAX} symbols name this key; it gets no live price under this one)",
                id.0
            );
        }
    }
    fn key(&self, id: InstrumentId) -> Option<&str> {
        self.by_id.get(usize::from(id.0)).and_then(|k| k.as_ref()).map(|(k, _)| k.as_str())
    }
    fn scale(&self, id: InstrumentId) -> u32 {
        self.by_id.get(usize::from(id.0)).and_then(|k| k.as_ref()).map_or(2, |(_, s)| *s)
    }
    fn segments(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.by_key.keys().filter_map(|k| k.split('|').next()).map(str::to_string).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The access token file: read when it changes.
struct TokenFile {
    path: PathBuf,
    read: ReadToken,
    value: Option<String>,
    stamp: Option<(SystemTime, u64)>,
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TokenFile {
    /// The token, read again if the file changed since it was last read.
    fn current(&mut self) -> Result<String, String> {
        let stamp = file_stamp(&self.path);
        if self.value.is_none() || stamp != self.stamp {
            let v = (self.read)(&self.path)?;
            self.value = Some(v);
            self.stamp = stamp;
        }
        self.value.clone().ok_or_else(|| "no token".to_string())
    }
}

/// The one venue-instrument map of Upstox: symbol ↔ instrument key, shared (behind an `Arc`)
/// by the feed session's subscriptions, the LTP poller, the broker's orders and its
/// `holdings()` (so reconciliation reads what the account holds under the symbols the book
/// uses).
///
/// A symbol's key is its `[feed.instrument_keys]` entry, or the symbol itself when it already
/// is a key (`NSE_EQ|INE323A01026`) (the configuration's `FeedConfig::instrument_key`). Every
/// configured pair is known from the start; a symbol that is its own key becomes known the
/// first time it is resolved (a position registered on it: the feed session adds its
/// instrument). Symbols learned this way are bounded by [`MAX_INSTRUMENTS`].
#[derive(Debug, Default)]
pub struct InstrumentMap {
    configured: BTreeMap<String, String>,
    /// Symbols that are their own key, learned when resolved.
    learned: RwLock<BTreeMap<String, String>>,
}

impl InstrumentMap {
    /// A map of the configured `symbol → key` pairs.
    pub fn new(configured: BTreeMap<String, String>) -> InstrumentMap {
        InstrumentMap { configured, learned: RwLock::new(BTreeMap::new()) }
    }

    /// A map of these pairs (tests, tools).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> InstrumentMap {
        InstrumentMap::new(pairs.into_iter().map(|(s, k)| (s.to_string(), k.to_string())).collect())
    }

    /// The key of `symbol` (its configured key, or itself when it is a key), remembering a
    /// symbol that is its own key; `None` when the symbol has no key.
    pub fn key(&self, symbol: &str) -> Option<String> {
        if let Some(k) = self.configured.get(symbol) {
            return Some(k.clone());
        }
        if !symbol.contains('|') {
            return None;
        }
        let known = self.learned.read().map(|l| l.contains_key(symbol)).unwrap_or(false);
        if !known {
            let mut l = self.learned.write().unwrap_or_else(|p| p.into_inner());
            if l.len() < MAX_INSTRUMENTS {
                l.insert(symbol.to_string(), symbol.to_string());
            }
        }
        Some(symbol.to_string())
    }

    /// Every known `(symbol, key)` pair: the configured ones and the learned ones.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            self.configured.iter().map(|(s, k)| (s.clone(), k.clone())).collect();
        if let Ok(l) = self.learned.read() {
            v.extend(l.iter().map(|(s, k)| (s.clone(), k.clone())));
        }
        v
    }

    /// The symbols known for `key` (several symbols may name one instrument).
    pub fn symbols_of(&self, key: &str) -> Vec<String> {
        self.entries().into_iter().filter(|(_, k)| k == key).map(|(s, _)| s).collect()
    }
}

/// State of the Upstox edge shared by the session, the LTP poller and the calendar task.
pub struct UpstoxShared {
    keys: RwLock<KeyTable>,
    /// The venue-instrument map shared with the broker.
    map: Arc<InstrumentMap>,
    token: Mutex<TokenFile>,
    /// The venue's market status on the live connection (`None`: no word, or no connection).
    venue_market: Mutex<Option<bool>>,
    /// Wakes the calendar task when `venue_market` changes.
    market_changed: Notify,
}

impl UpstoxShared {
    /// Shared state for a token file and the configured symbol → key map.
    pub fn new(token_file: PathBuf, symbol_keys: BTreeMap<String, String>) -> UpstoxShared {
        UpstoxShared::with_map(token_file, Arc::new(InstrumentMap::new(symbol_keys)))
    }

    /// Shared state for a token file and the venue-instrument map shared with the broker.
    pub fn with_map(token_file: PathBuf, map: Arc<InstrumentMap>) -> UpstoxShared {
        UpstoxShared {
            keys: RwLock::new(KeyTable::default()),
            map,
            token: Mutex::new(TokenFile {
                path: token_file,
                read: read_token_file,
                value: None,
                stamp: None,
            }),
            venue_market: Mutex::new(None),
            market_changed: Notify::new(),
        }
    }

    /// Reads the token file with `read` from now on.
    pub fn set_reader(&self, read: ReadToken) {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).read = read;
    }

    /// The key of `symbol`: its configured key, or the symbol itself when it is a key.
    pub fn key_for_symbol(&self, symbol: &str) -> Option<String> {
        self.map.key(symbol)
    }

    /// The venue-instrument map.
    pub fn map(&self) -> &Arc<InstrumentMap> {
        &self.map
    }

    /// Maps `id` (watched as `symbol`) to its key; false when the symbol has none.
    pub fn add(&self, id: InstrumentId, symbol: &str) -> bool {
        let Some(key) = self.key_for_symbol(symbol) else { return false };
        if let Ok(mut t) = self.keys.write() {
            t.insert(id, &key);
        }
        true
    }

    /// The key of an instrument.
    pub fn key_of(&self, id: InstrumentId) -> Option<String> {
        self.keys.read().ok()?.key(id).map(str::to_string)
    }

    /// Every mapped instrument and its key, in id order.
    pub fn subscriptions(&self) -> Vec<(InstrumentId, String)> {
        let Ok(t) = self.keys.read() else { return Vec::new() };
        t.by_id
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((InstrumentId(u16::try_from(i).ok()?), k.as_ref()?.0.clone())))
            .collect()
    }

    /// Reads the token (again, if the file changed).
    pub fn token(&self) -> Result<String, String> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).current()
    }

    fn token_path(&self) -> PathBuf {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).path.clone()
    }

    fn token_stamp(&self) -> Option<(SystemTime, u64)> {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).stamp
    }

    /// The venue's word on the market (from the live connection).
    pub fn venue_market(&self) -> Option<bool> {
        *self.venue_market.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_venue_market(&self, v: Option<bool>) {
        let mut g = self.venue_market.lock().unwrap_or_else(|p| p.into_inner());
        if *g != v {
            *g = v;
            drop(g);
            self.market_changed.notify_one();
        }
    }
}

/// Raises the `[AUTH]` alert (once per rejected token) and blocks the network until the token
/// file changes.
fn auth_failed(ctx: &Ctx, ux: &UpstoxShared, source: &str, status: u16) {
    if !ctx.shared.auth_blocked.swap(true, Ordering::SeqCst) {
        let n = ctx.shared.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
        log::error!(
            "[AUTH] event=rejected source={source} status={status} token_file={} failures={n} (the Upstox access token is invalid or expired: write a fresh token into the file; tickguard reloads it without a restart and does not call the feed until then)",
            ux.token_path().display()
        );
    }
}

fn token_unreadable(ctx: &Ctx, ux: &UpstoxShared, why: &str) {
    if !ctx.shared.auth_blocked.swap(true, Ordering::SeqCst) {
        let n = ctx.shared.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
        log::error!(
            "[AUTH] event=token_unreadable token_file={} failures={n} error=\"{}\" (write the Upstox access token into the file; tickguard reads it when it changes)",
            ux.token_path().display(),
            why.replace('"', "'")
        );
    }
}

/// Waits until the token file changes (then reads it and unblocks: true) or `stop` fires
/// (false).
async fn wait_for_new_token(ctx: &Ctx, ux: &UpstoxShared, stop: &mut watch::Receiver<bool>) -> bool {
    let blocked_on = ux.token_stamp();
    loop {
        tokio::select! {
            _ = stop.changed() => return false,
            _ = tokio::time::sleep(TOKEN_POLL) => {}
        }
        let path = ux.token_path();
        let now = file_stamp(&path);
        if now.is_none() || now == blocked_on {
            continue;
        }
        match ux.token() {
            Ok(_) => {
                ctx.shared.auth_blocked.store(false, Ordering::SeqCst);
                log::warn!(
                    "[AUTH] event=token_reloaded token_file={} (trying the feed again)",
                    path.display()
                );
                return true;
            }
            Err(_) => continue,
        }
    }
}

// ----- wire messages -------------------------------------------------------------------------

/// A subscribe (or unsubscribe) request as Upstox takes it, to be sent as a binary frame.
pub fn control_message(guid: &str, method: &str, mode: Option<Mode>, keys: &[&str]) -> String {
    let q = |v: &str| serde_json::Value::String(v.to_string()).to_string();
    let list: Vec<String> = keys.iter().map(|k| q(k)).collect();
    let mode = mode.map_or(String::new(), |m| format!("\"mode\":{},", q(m.as_str())));
    format!(
        "{{\"guid\":{},\"method\":{},\"data\":{{{mode}\"instrumentKeys\":[{}]}}}}",
        q(guid),
        q(method),
        list.join(",")
    )
}

fn guid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// The authorize answer's `wss://` URL (`data.authorized_redirect_uri`, or the deprecated
/// `data.authorizedRedirectUri`).
pub fn redirect_uri(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let d = v.get("data")?;
    d.get("authorized_redirect_uri")
        .or_else(|| d.get("authorizedRedirectUri"))
        .and_then(|u| u.as_str())
        .map(str::to_string)
}

/// The error of an authorized URL that cannot be used, without the URL: it carries the
/// single-use code that opens the feed, so no message or log line ever shows it (nor its
/// host's path or query).
pub fn authorized_url_error(e: &str, url: &str) -> String {
    let why = if url.is_empty() { e.to_string() } else { e.replace(url, "") };
    let why = why.trim_start_matches([':', ' ']);
    format!("authorized URL (not shown: it carries the single-use code) is unusable: {why}")
}

/// Percent-encodes an instrument key for a query string (`|` and spaces and the rest).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An Upstox error body's first `errorCode` and `message` (`{"errors":[{"errorCode":..}]}`).
/// The broker reads the same bodies (`crate::broker::upstox` may use this one).
pub fn error_code(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.as_array()?.first()?;
    let code = e.get("errorCode").or_else(|| e.get("error_code"))?.as_str()?.to_string();
    let msg = e.get("message").and_then(serde_json::Value::as_str).unwrap_or("").to_string();
    Some((code, msg))
}

/// The LTP quote path for `keys` under the base path `base`.
pub fn ltp_path(base: &str, keys: &[&str]) -> String {
    let list: Vec<String> = keys.iter().map(|k| encode_key(k)).collect();
    format!("{}{LTP_PATH}?instrument_key={}", base.trim_end_matches('/'), list.join(","))
}

/// Parses an LTP quote answer into `(instrument_token, last_price)` pairs.
pub fn parse_ltp(body: &[u8]) -> Result<Vec<(String, f64)>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let data = v.get("data").and_then(|d| d.as_object()).ok_or("no data object")?;
    Ok(data
        .values()
        .filter_map(|e| {
            let token = e.get("instrument_token")?.as_str()?;
            let price = e.get("last_price")?.as_f64()?;
            Some((token.to_string(), price))
        })
        .collect())
}

// ----- the session: what Upstox's differs in -----------------------------------------------

/// Per-frame scratch space, allocated once per session so that a frame allocates nothing.
pub struct FrameBuf {
    /// Instruments updated by the frame, one slot each (the last entry of a key wins, as in
    /// the reference decoder's map).
    pending: Vec<(InstrumentId, Option<Last>)>,
    /// Per instrument id: (frame number, index in `pending`).
    slot: Vec<(u32, u32)>,
    frame_no: u32,
    unknown: u32,
    /// Segment statuses of a `market_info` frame (last wins per segment).
    segments: heapless::Vec<(heapless::String<24>, i32), 24>,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf {
            pending: Vec::with_capacity(MAX_INSTRUMENTS),
            slot: vec![(0, 0); MAX_INSTRUMENTS],
            frame_no: 0,
            unknown: 0,
            segments: heapless::Vec::new(),
        }
    }
}

struct FrameSink<'a> {
    keys: &'a KeyTable,
    buf: &'a mut FrameBuf,
}

impl Sink for FrameSink<'_> {
    fn entry(&mut self, e: &pb::Entry<'_>) {
        // The decoder checked the key is UTF-8.
        let ids = std::str::from_utf8(e.key).ok().and_then(|k| self.keys.by_key.get(k));
        let Some(ids) = ids else {
            self.buf.unknown += 1;
            return;
        };
        for &id in ids {
            self.one(id, e.last);
        }
    }
    fn segment(&mut self, segment: &[u8], status: i32) {
        let Ok(s) = std::str::from_utf8(segment) else { return };
        if let Some(e) = self.buf.segments.iter_mut().find(|(n, _)| n.as_str() == s) {
            e.1 = status;
        } else if let Ok(name) = heapless::String::try_from(s) {
            let _ = self.buf.segments.push((name, status));
        }
    }
}

impl FrameSink<'_> {
    /// One instrument's entry: the last entry of a key in a frame wins.
    fn one(&mut self, id: InstrumentId, last: Option<Last>) {
        let i = usize::from(id.0);
        let frame_no = self.buf.frame_no;
        match self.buf.slot.get_mut(i) {
            Some((f, at)) if *f == frame_no => {
                if let Some(p) = self.buf.pending.get_mut(*at as usize) {
                    p.1 = last;
                }
            }
            Some(s) => {
                if self.buf.pending.len() < self.buf.pending.capacity() {
                    *s = (frame_no, self.buf.pending.len() as u32);
                    self.buf.pending.push((id, last));
                }
            }
            None => self.buf.unknown += 1,
        }
    }
}

/// What one frame did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOutcome {
    /// Decoded whole.
    pub ok: bool,
    /// Ticks handed to the engine.
    pub ticks: u32,
    /// Entries whose price could not be held (not finite, not positive at the scale).
    pub bad_prices: u32,
    /// Whether the frame carried a market status for a segment of ours, and what it says.
    pub market: Option<bool>,
}

/// Decodes one frame and hands its prices to the engine: the per-tick path. Allocates nothing
/// (the scratch space is `buf`; the key table is read under a read lock).
pub fn apply_frame(
    bytes: &[u8],
    ux: &UpstoxShared,
    ctx: &Ctx,
    buf: &mut FrameBuf,
    segments: &[String],
) -> (FrameOutcome, Option<pb::DecodeError>) {
    let now = ctx.clock.now();
    ctx.shared.frames.fetch_add(1, Ordering::Relaxed);
    buf.frame_no = buf.frame_no.wrapping_add(1);
    if buf.frame_no == 0 {
        buf.slot.iter_mut().for_each(|s| *s = (0, 0));
        buf.frame_no = 1;
    }
    buf.pending.clear();
    buf.unknown = 0;
    buf.segments.clear();
    let Ok(keys) = ux.keys.read() else {
        return (FrameOutcome::default(), None);
    };
    let res = pb::decode(bytes, &mut FrameSink { keys: &keys, buf });
    if let Err(e) = res {
        return (FrameOutcome::default(), Some(e));
    }
    let mut out = FrameOutcome { ok: true, ..FrameOutcome::default() };
    for &(id, last) in &buf.pending {
        let Some(last) = last else { continue };
        match Price::from_f64(last.ltp, keys.scale(id)) {
            Ok(p) if p.is_positive() => {
                let q = Quote {
                    bid: None,
                    ask: None,
                    last: Some(p),
                    source: Source::Live,
                    exch_ts: (last.ltt != 0).then_some(last.ltt),
                    dated: now,
                };
                ctx.engine.ticks.push(Tick::new(id, q));
                out.ticks += 1;
            }
            _ => out.bad_prices += 1,
        }
    }
    drop(keys);
    if out.ticks > 0 {
        ctx.shared.ticks.fetch_add(u64::from(out.ticks), Ordering::Relaxed);
    }
    if buf.unknown > 0 {
        ctx.shared.unknown_symbols.fetch_add(u64::from(buf.unknown), Ordering::Relaxed);
    }
    let mut relevant = false;
    let mut open = false;
    for (seg, st) in &buf.segments {
        if segments.iter().any(|s| s == seg.as_str()) {
            relevant = true;
            open |= super::calendar::venue_status_open(*st);
        }
    }
    out.market = relevant.then_some(open);
    (out, None)
}

fn status_name(st: i32) -> &'static str {
    use pb::status::*;
    match st {
        PRE_OPEN_START => "PRE_OPEN_START",
        PRE_OPEN_END => "PRE_OPEN_END",
        NORMAL_OPEN => "NORMAL_OPEN",
        NORMAL_CLOSE => "NORMAL_CLOSE",
        CLOSING_START => "CLOSING_START",
        CLOSING_END => "CLOSING_END",
        _ => "UNKNOWN",
    }
}

async fn authorize(
    cfg: &UpstoxConfig,
    connector: &Connector,
    ux: &UpstoxShared,
) -> Result<String, FeedError> {
    let token = ux.token().map_err(FeedError::Token)?;
    let bearer = format!("Bearer {token}");
    let path = format!("{}{AUTHORIZE_PATH}", cfg.rest.path.trim_end_matches('/'));
    let req = Req {
        method: "GET",
        path: &path,
        headers: &[("authorization", &bearer), ("accept", "application/json")],
        body: None,
        timeout: cfg.connect_timeout,
        max_body: 64 * 1024,
    };
    let ans = http::request(connector, &cfg.rest, req).await.map_err(FeedError::Authorize)?;
    match ans.status {
        200 => {
            let url = redirect_uri(&ans.body).ok_or(FeedError::NoRedirect)?;
            log::info!(
                "[RECONNECT] event=authorized host={} addr={} dns={}",
                cfg.rest.host,
                ans.addr,
                ans.dns.label()
            );
            Ok(url)
        }
        401 => Err(FeedError::Unauthorized { what: "authorize", status: 401 }),
        s => Err(FeedError::AuthorizeStatus(s)),
    }
}

/// The Upstox venue of the feed session: authorize before every connection (a fresh `wss://`
/// URL with a single-use code), subscriptions as JSON in binary frames within the mode's cap,
/// protobuf frames (live at the first good frame; `market_info` overrides the calendar), one
/// connection at a time (rotation closes first), and a rejected token blocks the network
/// until the token file changes.
pub struct UpstoxFeed {
    cfg: UpstoxConfig,
    ux: Arc<UpstoxShared>,
    tag: &'static str,
}

impl UpstoxFeed {
    /// The venue for these settings and shared state.
    pub fn new(cfg: UpstoxConfig, ux: Arc<UpstoxShared>) -> UpstoxFeed {
        ux.set_reader(cfg.read_token);
        UpstoxFeed { cfg, ux, tag: "[RECONNECT]" }
    }
    /// The same venue whose session driver logs under `tag` (the LAN relay's `[RELAY]`).
    pub fn tagged(mut self, tag: &'static str) -> UpstoxFeed {
        self.tag = tag;
        self
    }
}

/// One Upstox connection.
pub struct UpstoxConn {
    /// Instruments requested on this connection.
    requested: Vec<InstrumentId>,
    /// A frame arrived after the subscriptions were sent: the connection is live.
    live: bool,
    rng: Rng,
    /// Segments of the subscribed keys (whose `market_info` status counts).
    segments: Vec<String>,
    /// The venue's last word on the market on this connection (logged on change).
    market_seen: Option<bool>,
}

impl Venue for UpstoxFeed {
    type Conn = UpstoxConn;
    type Scratch = FrameBuf;
    type Item = String;
    const ROTATION: Rotation = Rotation::CloseFirst;
    const BINARY_CONTROL: bool = true;
    const ADDED_BATCH: usize = SUBSCRIBE_BATCH;

    fn timing(&self) -> Timing {
        let c = &self.cfg;
        Timing {
            silence_timeout: c.silence_timeout,
            reconnect_initial: c.reconnect_initial,
            reconnect_max: c.reconnect_max,
            jitter: c.jitter,
            connect_timeout: c.connect_timeout,
            control_spacing: c.control_spacing,
            max_lifetime: c.max_lifetime,
            seed: c.seed,
        }
    }

    fn dns_host(&self) -> &str {
        &self.cfg.rest.host
    }

    fn log_tag(&self) -> &'static str {
        self.tag
    }

    fn scratch(&self) -> FrameBuf {
        FrameBuf::default()
    }

    async fn gate(&self, ctx: &Ctx, stop: &mut watch::Receiver<bool>) -> Gate {
        if !ctx.shared.auth_blocked.load(Ordering::SeqCst) {
            return Gate::Go;
        }
        if wait_for_new_token(ctx, &self.ux, stop).await { Gate::Unblocked } else { Gate::Stop }
    }

    async fn connect(
        &self,
        connector: &Connector,
        _ctx: &Ctx,
        fresh_dns: bool,
        rng: &mut Rng,
    ) -> Result<(WsConn, UpstoxConn), FeedError> {
        let cfg = &self.cfg;
        if fresh_dns {
            let _ = connector.resolver.resolve(&cfg.rest.host).await;
        }
        let url = authorize(cfg, connector, &self.ux).await?;
        let ep =
            Endpoint::parse(&url).map_err(|e| FeedError::AuthorizedUrl(authorized_url_error(&e, &url)))?;
        let (stream, addr, resolved) = connector.connect(&ep, fresh_dns).await.map_err(FeedError::Connect)?;
        log::info!("[RECONNECT] event=connected host={} addr={addr} dns={}", ep.host, resolved.via.label());
        let ws = ws::connect(stream, &ep.host_header(), &ep.path, &[], cfg.limits, rng.next_u64())
            .await
            .map_err(|e| match e {
                WsError::Status { status: 401, .. } => FeedError::Unauthorized { what: "feed", status: 401 },
                e => FeedError::Upgrade(e),
            })?;
        let conn = UpstoxConn {
            requested: Vec::new(),
            live: false,
            rng: rng.clone(),
            segments: self.ux.keys.read().map(|t| t.segments()).unwrap_or_default(),
            market_seen: None,
        };
        let _ = rng.next_u64();
        Ok((ws, conn))
    }

    fn subscriptions(&self, _ctx: &Ctx, conn: &mut UpstoxConn) -> Vec<String> {
        let cfg = &self.cfg;
        let subs = self.ux.subscriptions();
        let take = subs.len().min(cfg.cap);
        if take < subs.len() {
            log::error!(
                "[RECONNECT] event=subscription_cap cap={} mode={} requested={} (instruments past the cap are not subscribed)",
                cfg.cap,
                cfg.mode.as_str(),
                subs.len()
            );
        }
        let mut msgs = Vec::new();
        for chunk in subs[..take].chunks(SUBSCRIBE_BATCH) {
            // A key watched under two symbols is asked for once.
            let mut keys: Vec<&str> = Vec::with_capacity(chunk.len());
            for (_, k) in chunk {
                if !keys.contains(&k.as_str()) {
                    keys.push(k.as_str());
                }
            }
            msgs.push(control_message(&guid(&mut conn.rng), "sub", Some(cfg.mode), &keys));
            conn.requested.extend(chunk.iter().map(|(i, _)| *i));
        }
        msgs
    }

    fn subscribe_sent(&self, conn: &UpstoxConn, requests: usize) {
        log::info!(
            "[RECONNECT] event=subscribe_sent mode={} instruments={} requests={requests}",
            self.cfg.mode.as_str(),
            conn.requested.len()
        );
    }

    fn register(&self, ctx: &Ctx, id: InstrumentId, sym: &Symbol) -> Option<String> {
        add_instrument(ctx, &self.ux, id, sym)
    }

    fn admit(&self, conn: &UpstoxConn, sym: &Symbol) -> bool {
        if conn.requested.len() >= self.cfg.cap {
            log::error!(
                "[RECONNECT] event=subscription_cap symbol={sym} cap={} mode={} (not subscribed: the connection is full)",
                self.cfg.cap,
                self.cfg.mode.as_str()
            );
            return false;
        }
        true
    }

    fn added_message(&self, conn: &mut UpstoxConn, items: &[(InstrumentId, String)]) -> String {
        let refs: Vec<&str> = items.iter().map(|(_, k)| k.as_str()).collect();
        control_message(&guid(&mut conn.rng), "sub", Some(self.cfg.mode), &refs)
    }

    async fn added_sent(&self, ctx: &Ctx, conn: &mut UpstoxConn, ids: &[InstrumentId]) {
        conn.requested.extend(ids.iter().copied());
        ctx.shared.subscribed.store(conn.requested.len() as u64, Ordering::Relaxed);
        if conn.live {
            for id in ids {
                ctx.engine.feed(FeedEvent::Subscribed(*id)).await;
            }
        }
        log::info!(
            "[RECONNECT] event=subscribed mode={} instruments={} (added)",
            self.cfg.mode.as_str(),
            ids.len()
        );
    }

    async fn on_data(
        &self,
        ctx: &Ctx,
        conn: &mut UpstoxConn,
        buf: &mut FrameBuf,
        bytes: &[u8],
        binary: bool,
    ) -> bool {
        if !binary {
            ctx.malformed("text");
            return false;
        }
        let (out, err) = apply_frame(bytes, &self.ux, ctx, buf, &conn.segments);
        if let Some(e) = err {
            ctx.malformed(e.kind());
            return false;
        }
        if out.bad_prices > 0 {
            ctx.malformed("bad_price");
        }
        if !conn.live {
            conn.live = true;
            ctx.mark_live();
            ctx.shared.subscribed.store(conn.requested.len() as u64, Ordering::Relaxed);
            for id in &conn.requested {
                ctx.engine.feed(FeedEvent::Subscribed(*id)).await;
            }
            log::info!(
                "[RECONNECT] event=subscribed mode={} instruments={}",
                self.cfg.mode.as_str(),
                conn.requested.len()
            );
        }
        if let Some(open) = out.market {
            if conn.market_seen != Some(open) {
                conn.market_seen = Some(open);
                let list: Vec<String> = buf
                    .segments
                    .iter()
                    .filter(|(s, _)| conn.segments.iter().any(|x| x == s.as_str()))
                    .map(|(s, st)| format!("{s}:{}", status_name(*st)))
                    .collect();
                log::info!("[MARKET] event=venue_status open={open} segments={}", list.join(","));
            }
            self.ux.set_venue_market(Some(open));
        }
        false
    }

    fn is_live(&self, conn: &UpstoxConn) -> bool {
        conn.live
    }

    fn set_live(&self, conn: &mut UpstoxConn) {
        conn.live = true;
    }

    fn down(&self, _ctx: &Ctx) {
        self.ux.set_venue_market(None);
    }

    fn fatal(&self, ctx: &Ctx, e: &FeedError) -> bool {
        match e {
            FeedError::Unauthorized { what, status } => auth_failed(ctx, &self.ux, what, *status),
            FeedError::Token(why) => token_unreadable(ctx, &self.ux, why),
            _ => return false,
        }
        true
    }
}

/// Runs the Upstox feed session until `stop` fires ([`session::run`] with [`UpstoxFeed`]).
/// `added` brings instruments registered later.
pub async fn run(
    cfg: UpstoxConfig,
    connector: Connector,
    ctx: Ctx,
    ux: Arc<UpstoxShared>,
    added: mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: watch::Receiver<bool>,
) {
    session::run(Arc::new(UpstoxFeed::new(cfg, ux)), connector, ctx, added, stop).await;
}

fn add_instrument(ctx: &Ctx, ux: &UpstoxShared, id: InstrumentId, sym: &Symbol) -> Option<String> {
    ctx.shared.add(id, sym.clone());
    if ux.add(id, sym) {
        ux.key_of(id)
    } else {
        log::error!(
            "[RECONNECT] event=unmapped_symbol symbol={sym} (no Upstox instrument key: add it under [feed.instrument_keys]; it gets no live price)"
        );
        None
    }
}

// ----- the LTP quote fallback ----------------------------------------------------------------

/// First wait before a key the venue refused is asked for again (alone); it doubles up to
/// [`LTP_REFUSED_RETRY_MAX`].
pub const LTP_REFUSED_RETRY_INITIAL: Duration = rest::REFUSED_RETRY_INITIAL;
/// Longest wait before a refused key is asked for again.
pub const LTP_REFUSED_RETRY_MAX: Duration = rest::REFUSED_RETRY_MAX;
/// Most LTP requests in one poll (splitting batches to find refused keys included): the
/// instruments left when it is reached get a REST error this round, and are asked next round.
pub const LTP_REQUESTS_PER_POLL: usize = crate::limits::LTP_REQUESTS_PER_POLL;

/// Upstox's REST fallback: the v3 LTP quote, at most [`LTP_MAX_KEYS`] keys a request, with the
/// bearer token; a 4xx about its keys is a refusal (split to find the key), a 401 raises
/// `[AUTH]` and blocks the poller until the token file changes.
pub struct UpstoxPoller {
    cfg: UpstoxConfig,
    ux: Arc<UpstoxShared>,
}

impl UpstoxPoller {
    /// The poller for these settings and shared state.
    pub fn new(cfg: UpstoxConfig, ux: Arc<UpstoxShared>) -> UpstoxPoller {
        ux.set_reader(cfg.read_token);
        UpstoxPoller { cfg, ux }
    }
}

impl rest::Poller for UpstoxPoller {
    const BATCH_MAX: usize = LTP_MAX_KEYS;
    const REQUESTS_MAX: usize = LTP_REQUESTS_PER_POLL;

    fn endpoint(&self) -> &Endpoint {
        &self.cfg.rest
    }

    fn every(&self) -> Duration {
        self.cfg.rest_poll
    }

    fn blocked(&self, ctx: &Ctx) -> bool {
        ctx.shared.auth_blocked.load(Ordering::SeqCst)
    }

    fn name(&self, id: InstrumentId, symbol: &str) -> Option<String> {
        // The feed session maps instruments as they join; one it has not seen yet is mapped
        // here (the shared map resolves it the same way).
        let ux = &self.ux;
        ux.key_of(id).or_else(|| if ux.add(id, symbol) { ux.key_of(id) } else { None })
    }

    async fn request(&self, connector: &Connector, ctx: &Ctx, batch: &[rest::Want]) -> rest::Reply {
        let cfg = &self.cfg;
        let token = match self.ux.token() {
            Ok(t) => t,
            Err(e) => {
                token_unreadable(ctx, &self.ux, &e);
                return rest::Reply::Blocked;
            }
        };
        let bearer = format!("Bearer {token}");
        let keys: Vec<&str> = batch.iter().map(|w| w.name.as_str()).collect();
        let path = ltp_path(&cfg.rest.path, &keys);
        let req = Req {
            method: "GET",
            path: &path,
            headers: &[("authorization", &bearer), ("accept", "application/json")],
            body: None,
            timeout: cfg.rest_timeout,
            max_body: 1024 * 1024,
        };
        let ans = match http::request(connector, &cfg.rest, req).await {
            Ok(ans) => ans,
            Err(e) => return rest::Reply::Failed(PollError::Http(e)),
        };
        match ans.status {
            200 => {}
            401 => {
                auth_failed(ctx, &self.ux, "ltp", 401);
                return rest::Reply::Failed(PollError::Unauthorized);
            }
            429 => {
                let wait = Duration::from_secs(ans.retry_after.unwrap_or(60).clamp(1, 3600));
                return rest::Reply::Failed(PollError::RateLimited { status: 429, wait });
            }
            s @ (400..=407 | 409..=499) => {
                let code = error_code(&ans.body).map_or_else(|| "none".to_string(), |(c, _)| c);
                return rest::Reply::Refused { status: s, code };
            }
            s => return rest::Reply::Failed(PollError::Status(s)),
        }
        let (prices, unreadable) = match parse_ltp(&ans.body) {
            Ok(prices) => {
                let mut v = Vec::with_capacity(prices.len());
                for (token, ltp) in prices {
                    match Price::from_f64(ltp, price_scale(&token)) {
                        Ok(p) if p.is_positive() => v.push((token, p)),
                        _ => log::warn!("[FALLBACK] event=rest_bad_price key={token}"),
                    }
                }
                (v, None)
            }
            Err(e) => (Vec::new(), Some(e)),
        };
        rest::Reply::Priced {
            prices,
            unreadable,
            addr: ans.addr.to_string(),
            dns: ans.dns.label().to_string(),
        }
    }

    fn refused_fields(&self, w: &rest::Want, status: u16, code: &str) -> String {
        format!("symbol={} key=\"{}\" http={status} code={code}", w.symbol, w.name)
    }

    fn accepted_fields(&self, w: &rest::Want) -> String {
        format!("symbol={} key=\"{}\"", w.symbol, w.name)
    }

    fn missing_fields(&self, w: &rest::Want) -> String {
        format!("key={}", w.name)
    }
}

/// Runs the LTP poller until `stop` fires: [`rest::run`] with [`UpstoxPoller`] (one
/// fallback-poller shape for every venue; its rules are there).
pub async fn run_ltp(
    cfg: UpstoxConfig,
    connector: Connector,
    ctx: Ctx,
    ux: Arc<UpstoxShared>,
    stop: watch::Receiver<bool>,
) {
    rest::run(UpstoxPoller::new(cfg, ux), connector, ctx, stop).await;
}

// ----- the market clock ----------------------------------------------------------------------

/// Turns the calendar and the venue's market status into `FeedEvent::Market` for the engine,
/// evaluated every second (and at once when the venue's word changes).
pub async fn run_market(
    calendar: Calendar,
    wall: Arc<WallClock>,
    ctx: Ctx,
    ux: Arc<UpstoxShared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut state = MarketState::new(calendar);
    loop {
        state.set_venue(ux.venue_market());
        let w = wall.clone();
        let (unix_ms, synced) = tokio::task::spawn_blocking(move || w.now()).await.unwrap_or((0, false));
        if let Some((open, basis)) = state.changed(unix_ms, synced) {
            log::info!(
                "[MARKET] event={} basis={} clock_synced={synced}",
                if open { "open" } else { "closed" },
                basis.as_str()
            );
            ctx.engine.feed(FeedEvent::Market(open)).await;
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = ux.market_changed.notified() => {}
        }
    }
}

/// Everything the Upstox edge runs: the feed session, the LTP poller and the market clock.
/// `map` is the venue-instrument map the broker shares; `calendar` the market hours (the
/// wiring parses `feed.market_hours` and `feed.holidays`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    ucfg: UpstoxConfig,
    calendar: Calendar,
    connector: Connector,
    shared: Arc<FeedShared>,
    ctx: Ctx,
    instruments: &[(InstrumentId, String)],
    added: mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: watch::Receiver<bool>,
    map: Arc<InstrumentMap>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ux = Arc::new(UpstoxShared::with_map(ucfg.token_file.clone(), map));
    ux.set_reader(ucfg.read_token);
    for (id, sym) in instruments {
        shared.add(*id, Symbol::try_from(sym.as_str()).unwrap_or_default());
        if !ux.add(*id, sym) {
            log::error!("[RECONNECT] event=unmapped_symbol symbol={sym} (no Upstox instrument key)");
        }
    }
    let wall = Arc::new(WallClock::from_env());
    if wall.is_fake() {
        log::warn!(
            "[MARKET] event=fake_wall_clock ({} is set: tests only)",
            super::calendar::FAKE_WALL_CLOCK_ENV
        );
    }
    vec![
        tokio::spawn(run(ucfg.clone(), connector.clone(), ctx.clone(), ux.clone(), added, stop.clone())),
        tokio::spawn(run_ltp(ucfg, connector, ctx.clone(), ux.clone(), stop.clone())),
        tokio::spawn(run_market(calendar, wall, ctx, ux, stop)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_map_resolves_configured_symbols_and_keys() {
        let m = InstrumentMap::from_pairs([("BOSCHLTD", "NSE_EQ|INE323A01026")]);
        assert_eq!(m.key("BOSCHLTD").as_deref(), Some("NSE_EQ|INE323A01026"));
        assert_eq!(m.key("NOKEY"), None);
        assert_eq!(m.entries().len(), 1);
        // A symbol that is its own key is learned when resolved, once.
        assert_eq!(m.key("NSE_EQ|INE002A01018").as_deref(), Some("NSE_EQ|INE002A01018"));
        assert_eq!(m.key("NSE_EQ|INE002A01018").as_deref(), Some("NSE_EQ|INE002A01018"));
        assert_eq!(m.entries().len(), 2);
        assert_eq!(m.symbols_of("NSE_EQ|INE323A01026"), vec!["BOSCHLTD".to_string()]);
        // The feed's shared state resolves through the same map.
        let map = Arc::new(m);
        let ux = UpstoxShared::with_map("/nonexistent".into(), map.clone());
        assert!(ux.add(InstrumentId(3), "BOSCHLTD"));
        assert!(!ux.add(InstrumentId(4), "NOKEY"));
        assert_eq!(ux.key_of(InstrumentId(3)).as_deref(), Some("NSE_EQ|INE323A01026"));
        assert!(Arc::ptr_eq(ux.map(), &map));
    }

    #[test]
    fn wire_helpers() {
        let m =
            control_message("g-1", "sub", Some(Mode::Full), &["NSE_EQ|INE323A01026", "NSE_INDEX|Nifty 50"]);
        assert_eq!(
            m,
            r#"{"guid":"g-1","method":"sub","data":{"mode":"full","instrumentKeys":["NSE_EQ|INE323A01026","NSE_INDEX|Nifty 50"]}}"#
        );
        assert_eq!(
            ltp_path("/", &["NSE_EQ|INE323A01026", "NSE_INDEX|Nifty 50"]),
            "/v3/market-quote/ltp?instrument_key=NSE_EQ%7CINE323A01026,NSE_INDEX%7CNifty%2050"
        );
        let body = br#"{"status":"success","data":{"NSE_EQ:BOSCHLTD":{"last_price":575.0,"instrument_token":"NSE_EQ|INE323A01026","ltq":1,"volume":5,"cp":735.35}}}"#;
        assert_eq!(parse_ltp(body), Ok(vec![("NSE_EQ|INE323A01026".to_string(), 575.0)]));
        let auth = br#"{"status":"success","data":{"authorized_redirect_uri":"wss://x.test/feed?code=abc"}}"#;
        assert_eq!(redirect_uri(auth).as_deref(), Some("wss://x.test/feed?code=abc"));
        // An unusable authorized URL is reported without the URL (it carries the code).
        let bad = "ftp://x.test/feed?code=secret-code";
        let e = Endpoint::parse(bad).err().unwrap_or_default();
        let msg = authorized_url_error(&e, bad);
        assert!(!msg.contains("secret-code") && !msg.contains("x.test"), "{msg}");
        assert!(msg.contains("scheme"), "{msg}");
        assert_eq!(price_scale("NCD_FO|1234"), 4);
        assert_eq!(price_scale("NSE_EQ|INE323A01026"), 2);
        let mut rng = Rng::new(1);
        let g = guid(&mut rng);
        assert_eq!(g.len(), 36, "{g}");
    }
}
