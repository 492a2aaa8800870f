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
use tokio::time::Instant;

use super::calendar::{Calendar, MarketState, WallClock};
use super::session::{Ctx, FeedShared};
use super::upstox_proto::{self as pb, Last, Sink};
use crate::core::backoff::{Backoff, CircuitBreaker, Rng};
use crate::core::engine::FeedEvent;
use crate::core::price::Price;
use crate::core::types::{InstrumentId, Quote, Source, Symbol, Tick};
use crate::limits::MAX_INSTRUMENTS;
use crate::net::http::{self, Connector, Endpoint, HttpError, Req};
use crate::net::ws::{self, Event, WsConn, WsError, WsLimits};

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
}

impl UpstoxConfig {
    /// Settings from the configuration (validated: an Upstox venue has a token file).
    pub fn from_config(cfg: &crate::config::Config, rest: Endpoint, seed: u64) -> UpstoxConfig {
        let mode = Mode::parse(&cfg.feed.mode).unwrap_or_default();
        UpstoxConfig {
            rest,
            token_file: cfg.feed.token_file.clone().unwrap_or_default(),
            mode,
            cap: cfg.feed.max_subscriptions.map_or(mode.cap(), usize::from).min(mode.cap()),
            silence_timeout: cfg.feed.silence_timeout,
            reconnect_initial: cfg.feed.reconnect_initial,
            reconnect_max: cfg.feed.reconnect_max,
            jitter: 0.5,
            connect_timeout: Duration::from_secs(10),
            control_spacing: Duration::from_millis(200),
            limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
            max_lifetime: None,
            rest_poll: cfg.feed.rest_poll,
            rest_timeout: cfg.feed.rest_poll.max(Duration::from_secs(2)),
            seed,
        }
    }
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
            let v = crate::config::read_secret(&self.path).map_err(|e| e.to_string())?;
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
/// is a key (`NSE_EQ|INE323A01026`) — [`crate::config::FeedConfig::instrument_key`]. Every
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

    /// `[feed.instrument_keys]`, plus every symbol of `feed.instruments` and `[[positions]]`
    /// that is itself a key.
    pub fn from_config(cfg: &crate::config::Config) -> InstrumentMap {
        let m = InstrumentMap::new(cfg.feed.instrument_keys.clone());
        for s in cfg.watched_symbols() {
            let _ = m.key(&s);
        }
        m
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
            token: Mutex::new(TokenFile { path: token_file, value: None, stamp: None }),
            venue_market: Mutex::new(None),
            market_changed: Notify::new(),
        }
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

// ----- the session ---------------------------------------------------------------------------

/// One connection.
struct Conn {
    ws: WsConn,
    opened: Instant,
    /// Instruments requested on this connection.
    requested: Vec<InstrumentId>,
    /// A frame arrived after the subscriptions were sent: the connection is live.
    live: bool,
    rng: Rng,
}

enum Ended {
    Stop,
    /// Lost; `healthy` when it was live for at least `reconnect_max`.
    Lost {
        cause: String,
        healthy: bool,
    },
    /// Closed on purpose to open the next one.
    Rotate,
}

enum OpenError {
    Auth { source: &'static str, status: u16 },
    Token(String),
    Failed(String),
}

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
) -> Result<String, OpenError> {
    let token = ux.token().map_err(OpenError::Token)?;
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
    let ans = http::request(connector, &cfg.rest, req)
        .await
        .map_err(|e| OpenError::Failed(format!("authorize: {e}")))?;
    match ans.status {
        200 => {
            let url = redirect_uri(&ans.body).ok_or_else(|| {
                OpenError::Failed("authorize: no authorized_redirect_uri in the answer".into())
            })?;
            log::info!(
                "[RECONNECT] event=authorized host={} addr={} dns={}",
                cfg.rest.host,
                ans.addr,
                ans.dns.label()
            );
            Ok(url)
        }
        401 => Err(OpenError::Auth { source: "authorize", status: 401 }),
        s => Err(OpenError::Failed(format!("authorize: HTTP {s}"))),
    }
}

async fn open(
    cfg: &UpstoxConfig,
    connector: &Connector,
    ux: &UpstoxShared,
    fresh_dns: bool,
    rng: &mut Rng,
) -> Result<Conn, OpenError> {
    let work = async {
        if fresh_dns {
            let _ = connector.resolver.resolve(&cfg.rest.host).await;
        }
        let url = authorize(cfg, connector, ux).await?;
        let ep = Endpoint::parse(&url).map_err(|e| OpenError::Failed(authorized_url_error(&e, &url)))?;
        let (stream, addr, resolved) =
            connector.connect(&ep, fresh_dns).await.map_err(|e| OpenError::Failed(e.to_string()))?;
        log::info!("[RECONNECT] event=connected host={} addr={addr} dns={}", ep.host, resolved.via.label());
        let ws = ws::connect(stream, &ep.host_header(), &ep.path, &[], cfg.limits, rng.next_u64())
            .await
            .map_err(|e| match e {
                WsError::Status { status: 401, .. } => OpenError::Auth { source: "feed", status: 401 },
                e => OpenError::Failed(format!("upgrade: {e}")),
            })?;
        Ok::<WsConn, OpenError>(ws)
    };
    let ws = tokio::time::timeout(cfg.connect_timeout, work).await.map_err(|_| {
        OpenError::Failed(format!("connect timeout after {} ms", cfg.connect_timeout.as_millis()))
    })??;
    let mut conn = Conn { ws, opened: Instant::now(), requested: Vec::new(), live: false, rng: rng.clone() };
    let _ = rng.next_u64();
    let subs = ux.subscriptions();
    let take = subs.len().min(cfg.cap);
    if take < subs.len() {
        log::error!(
            "[RECONNECT] event=subscription_cap cap={} mode={} requested={} (instruments past the cap are not subscribed)",
            cfg.cap,
            cfg.mode.as_str(),
            subs.len()
        );
    }
    let mut requests = 0;
    for (n, chunk) in subs[..take].chunks(SUBSCRIBE_BATCH).enumerate() {
        if n > 0 {
            tokio::time::sleep(cfg.control_spacing).await;
        }
        // A key watched under two symbols is asked for once.
        let mut keys: Vec<&str> = Vec::with_capacity(chunk.len());
        for (_, k) in chunk {
            if !keys.contains(&k.as_str()) {
                keys.push(k.as_str());
            }
        }
        let msg = control_message(&guid(&mut conn.rng), "sub", Some(cfg.mode), &keys);
        conn.ws
            .send_binary(msg.as_bytes())
            .await
            .map_err(|e| OpenError::Failed(format!("subscribe: {e}")))?;
        conn.requested.extend(chunk.iter().map(|(i, _)| *i));
        requests += 1;
    }
    log::info!(
        "[RECONNECT] event=subscribe_sent mode={} instruments={} requests={requests}",
        cfg.mode.as_str(),
        conn.requested.len()
    );
    Ok(conn)
}

fn mark_down(ctx: &Ctx, ux: &UpstoxShared) {
    ctx.shared.live.store(false, Ordering::Relaxed);
    ctx.shared.subscribed.store(0, Ordering::Relaxed);
    ux.set_venue_market(None);
}

/// Runs the feed session until `stop` fires. `added` brings instruments registered later.
pub async fn run(
    cfg: UpstoxConfig,
    connector: Connector,
    ctx: Ctx,
    ux: Arc<UpstoxShared>,
    mut added: mpsc::Receiver<(InstrumentId, Symbol)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(cfg.reconnect_initial, cfg.reconnect_max, cfg.jitter);
    let mut rng = Rng::new(cfg.seed);
    let mut buf = FrameBuf::default();
    loop {
        while let Ok((id, sym)) = added.try_recv() {
            add_instrument(&ctx, &ux, id, &sym);
        }
        if ctx.shared.auth_blocked.load(Ordering::SeqCst) {
            if !wait_for_new_token(&ctx, &ux, &mut stop).await {
                return;
            }
            backoff.reset();
            continue;
        }
        let attempt = backoff.attempt() + 1;
        let fresh_dns = attempt % 3 == 0;
        if fresh_dns {
            log::info!("[DNS] event=health_check host={} attempt={attempt}", cfg.rest.host);
        }
        let cause = match open(&cfg, &connector, &ux, fresh_dns, &mut rng).await {
            Ok(conn) => match read_loop(&cfg, &ctx, &ux, conn, &mut buf, &mut added, &mut stop).await {
                Ended::Stop => return,
                Ended::Rotate => {
                    mark_down(&ctx, &ux);
                    ctx.shared.rotations.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ended::Lost { cause, healthy } => {
                    if healthy {
                        backoff.reset();
                    }
                    Some(cause)
                }
            },
            Err(OpenError::Auth { source, status }) => {
                auth_failed(&ctx, &ux, source, status);
                None
            }
            Err(OpenError::Token(e)) => {
                token_unreadable(&ctx, &ux, &e);
                None
            }
            Err(OpenError::Failed(e)) => Some(e),
        };
        mark_down(&ctx, &ux);
        ctx.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        ctx.engine.feed(FeedEvent::Disconnected).await;
        let Some(cause) = cause else {
            // Authorization: no backoff, no retry; wait for a new token at the top.
            continue;
        };
        ctx.shared.network_errors.fetch_add(1, Ordering::Relaxed);
        let delay = backoff.next_delay(&mut rng);
        ctx.shared.attempts.store(u64::from(backoff.attempt()), Ordering::Relaxed);
        log::warn!(
            "[RECONNECT] attempt={} delay_ms={} cause=\"{}\"",
            backoff.attempt(),
            delay.as_millis(),
            cause.replace('"', "'")
        );
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
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

async fn read_loop(
    cfg: &UpstoxConfig,
    ctx: &Ctx,
    ux: &UpstoxShared,
    mut conn: Conn,
    buf: &mut FrameBuf,
    added: &mut mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let ping_every = cfg.silence_timeout / 3;
    let mut last_frame = Instant::now();
    let mut next_ping = last_frame + ping_every;
    let rotate_at = cfg.max_lifetime.map(|d| conn.opened + d);
    let mut outbox: std::collections::VecDeque<(InstrumentId, String)> = std::collections::VecDeque::new();
    let mut next_send = Instant::now();
    let segments = ux.keys.read().map(|t| t.segments()).unwrap_or_default();
    let mut market_seen: Option<bool> = None;
    let healthy = |conn: &Conn| conn.live && conn.opened.elapsed() >= cfg.reconnect_max;
    loop {
        let mut wake = (last_frame + cfg.silence_timeout).min(next_ping);
        if let Some(r) = rotate_at {
            wake = wake.min(r);
        }
        if !outbox.is_empty() {
            wake = wake.min(next_send);
        }
        let mut ping = false;
        let mut lost: Option<String> = None;
        let mut frame: Option<(FrameOutcome, Option<pb::DecodeError>)> = None;
        tokio::select! {
            biased;
            _ = stop.changed() => {
                conn.ws.close(1000).await;
                return Ended::Stop;
            }
            Some((id, sym)) = added.recv() => {
                if let Some(key) = add_instrument(ctx, ux, id, &sym) {
                    if conn.requested.len() >= cfg.cap {
                        log::error!(
                            "[RECONNECT] event=subscription_cap symbol={sym} cap={} mode={} (not subscribed: the connection is full)",
                            cfg.cap,
                            cfg.mode.as_str()
                        );
                    } else {
                        outbox.push_back((id, key));
                    }
                }
                continue;
            }
            r = tokio::time::timeout_at(wake, conn.ws.next()) => match r {
                Err(_) => {}
                Ok(Err(e)) => lost = Some(e.to_string()),
                Ok(Ok(ev)) => {
                    last_frame = Instant::now();
                    match ev {
                        Event::Binary(b) => frame = Some(apply_frame(b, ux, ctx, buf, &segments)),
                        Event::Text(_) => ctx.malformed("text"),
                        Event::Ping => ping = true,
                        Event::Pong => {}
                        Event::Close(code) => lost = Some(format!(
                            "closed by server (code {})",
                            code.map_or("none".into(), |c| c.to_string())
                        )),
                    }
                }
            }
        }
        if let Some((out, err)) = frame {
            if let Some(e) = err {
                ctx.malformed(e.kind());
            } else {
                if out.bad_prices > 0 {
                    ctx.malformed("bad_price");
                }
                if !conn.live {
                    conn.live = true;
                    ctx.shared.live.store(true, Ordering::Relaxed);
                    ctx.shared.epoch.fetch_add(1, Ordering::Relaxed);
                    ctx.shared.attempts.store(0, Ordering::Relaxed);
                    ctx.shared.subscribed.store(conn.requested.len() as u64, Ordering::Relaxed);
                    for id in &conn.requested {
                        ctx.engine.feed(FeedEvent::Subscribed(*id)).await;
                    }
                    log::info!(
                        "[RECONNECT] event=subscribed mode={} instruments={}",
                        cfg.mode.as_str(),
                        conn.requested.len()
                    );
                }
                if let Some(open) = out.market {
                    if market_seen != Some(open) {
                        market_seen = Some(open);
                        let list: Vec<String> = buf
                            .segments
                            .iter()
                            .filter(|(s, _)| segments.iter().any(|x| x == s.as_str()))
                            .map(|(s, st)| format!("{s}:{}", status_name(*st)))
                            .collect();
                        log::info!("[MARKET] event=venue_status open={open} segments={}", list.join(","));
                    }
                    ux.set_venue_market(Some(open));
                }
            }
        }
        if let Some(cause) = lost {
            if conn.ws.flush_control().await.is_ok() {
                conn.ws.close(1000).await;
            }
            return Ended::Lost { cause, healthy: healthy(&conn) };
        }
        if ping {
            if let Err(e) = conn.ws.flush_control().await {
                conn.ws.close(1000).await;
                return Ended::Lost { cause: format!("pong: {e}"), healthy: healthy(&conn) };
            }
        }
        let now = Instant::now();
        if now >= last_frame + cfg.silence_timeout {
            // Close our side before anything else is opened: one connection per app and user.
            conn.ws.close(1000).await;
            return Ended::Lost {
                cause: format!(
                    "silent for {} ms (no frame, no pong)",
                    now.saturating_duration_since(last_frame).as_millis()
                ),
                healthy: healthy(&conn),
            };
        }
        if now >= next_ping {
            next_ping = now + ping_every;
            if let Err(e) = conn.ws.send_ping(b"tg").await {
                conn.ws.close(1000).await;
                return Ended::Lost { cause: format!("ping: {e}"), healthy: healthy(&conn) };
            }
        }
        if !outbox.is_empty() && now >= next_send {
            let mut ids = Vec::new();
            let mut keys = Vec::new();
            while let Some((id, key)) = outbox.pop_front() {
                ids.push(id);
                keys.push(key);
                if keys.len() >= SUBSCRIBE_BATCH {
                    break;
                }
            }
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let msg = control_message(&guid(&mut conn.rng), "sub", Some(cfg.mode), &refs);
            if let Err(e) = conn.ws.send_binary(msg.as_bytes()).await {
                conn.ws.close(1000).await;
                return Ended::Lost { cause: format!("subscribe: {e}"), healthy: healthy(&conn) };
            }
            conn.requested.extend(ids.iter().copied());
            ctx.shared.subscribed.store(conn.requested.len() as u64, Ordering::Relaxed);
            if conn.live {
                for id in &ids {
                    ctx.engine.feed(FeedEvent::Subscribed(*id)).await;
                }
            }
            log::info!(
                "[RECONNECT] event=subscribed mode={} instruments={} (added)",
                cfg.mode.as_str(),
                ids.len()
            );
            next_send = now + cfg.control_spacing;
        }
        if rotate_at.is_some_and(|r| now >= r) {
            log::info!(
                "[RECONNECT] event=rotating cause=max_lifetime (closing this connection first: Upstox allows one per app and user)"
            );
            conn.ws.close(1000).await;
            return Ended::Rotate;
        }
    }
}

// ----- the LTP quote fallback ----------------------------------------------------------------

/// First wait before a key the venue refused is asked for again (alone); it doubles up to
/// [`LTP_REFUSED_RETRY_MAX`].
pub const LTP_REFUSED_RETRY_INITIAL: Duration = Duration::from_secs(30);
/// Longest wait before a refused key is asked for again.
pub const LTP_REFUSED_RETRY_MAX: Duration = Duration::from_secs(600);
/// Most LTP requests in one poll (splitting batches to find refused keys included): the
/// instruments left when it is reached get a REST error this round, and are asked next round.
pub const LTP_REQUESTS_PER_POLL: usize = crate::limits::LTP_REQUESTS_PER_POLL;

/// An instrument the poller asks for: its id, instrument key and symbol.
type Want = (InstrumentId, String, String);

/// A key the venue refused: left out of the batches until `retry_at`.
struct Refused {
    retry_at: Instant,
    backoff: Duration,
}

/// What became of one LTP request.
enum Batch {
    /// Answered (prices handed over, per-instrument status reported).
    Done,
    /// The feed came back while it was in flight: the poll ends, nothing applied.
    Discarded,
    /// The venue refused the request as such (a 4xx about its keys): split it, or refuse its
    /// one key.
    Refused { status: u16, code: String },
    /// The request failed as a whole (network, 5xx, 401, 429): the poll ends. `hold_off`:
    /// the venue asked for a pause (429); `breaker`: the failure counts for the breaker.
    Failed { cause: String, hold_off: Option<Duration>, breaker: bool },
}

/// Runs the LTP poller until `stop` fires.
///
/// Per instrument: every polled instrument gets `FeedEvent::RestOk` (priced by this answer)
/// or `FeedEvent::RestError` (not priced: missing from the answer, unreadable, refused, or the
/// request failed), so the engine can tell an instrument the venue never prices. A request
/// the venue refuses with a 4xx (one bad key fails Upstox's whole batch) is split in halves
/// until the offending key is alone; that key is logged (`[FALLBACK]
/// event=rest_symbol_refused`), left out of later batches and asked for alone again after
/// [`LTP_REFUSED_RETRY_INITIAL`] (doubling up to [`LTP_REFUSED_RETRY_MAX`]); the other
/// instruments keep their LTP. Every request counts in `status.rest.polls`, every failed or
/// refused one in `status.rest.errors` (the `tickguard_rest_*` metrics).
pub async fn run_ltp(
    cfg: UpstoxConfig,
    connector: Connector,
    ctx: Ctx,
    ux: Arc<UpstoxShared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(120));
    let mut rng = Rng::new(ctx.clock.now().as_nanos() ^ cfg.seed);
    let mut announced = false;
    let mut refused: HashMap<String, Refused> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(cfg.rest_poll) => {}
        }
        if ctx.shared.live.load(Ordering::Relaxed) {
            announced = false;
            continue;
        }
        if ctx.shared.auth_blocked.load(Ordering::SeqCst) {
            continue;
        }
        let wanted: Vec<(InstrumentId, String)> = ctx
            .engine
            .inspect(|e, _| {
                let mut v: Vec<(InstrumentId, String)> = e
                    .book()
                    .iter()
                    .filter(|(_, p)| !p.state.is_terminal())
                    .map(|(_, p)| (p.instrument, e.cache().symbol(p.instrument).to_string()))
                    .collect();
                v.sort();
                v.dedup();
                v
            })
            .await
            .unwrap_or_default();
        let mut unmapped: Vec<InstrumentId> = Vec::new();
        let mut due: Vec<Want> = Vec::new();
        let mut batched: Vec<Want> = Vec::new();
        let now = Instant::now();
        for (id, sym) in wanted {
            // The feed session maps instruments as they join; one it has not seen yet is
            // mapped here (the shared map resolves it the same way).
            let key = ux.key_of(id).or_else(|| if ux.add(id, &sym) { ux.key_of(id) } else { None });
            let Some(key) = key else {
                unmapped.push(id);
                continue;
            };
            match refused.get(&key) {
                Some(r) if now < r.retry_at => unmapped.push(id),
                Some(_) => due.push((id, key, sym)),
                None => batched.push((id, key, sym)),
            }
        }
        // Never priced by this source: no key, or refused by the venue and not yet due.
        for id in &unmapped {
            ctx.engine.feed(FeedEvent::RestError(*id)).await;
        }
        let open = !breaker.allow(ctx.clock.now());
        ctx.engine.status.rest.breaker_open.store(open, Ordering::Relaxed);
        if (batched.is_empty() && due.is_empty()) || open {
            continue;
        }
        let token = match ux.token() {
            Ok(t) => t,
            Err(e) => {
                token_unreadable(&ctx, &ux, &e);
                continue;
            }
        };
        let bearer = format!("Bearer {token}");
        let total = batched.len() + due.len();
        let mut queue: std::collections::VecDeque<Vec<Want>> =
            batched.chunks(LTP_MAX_KEYS).map(<[Want]>::to_vec).collect();
        // Refused keys due for another try go alone: they cannot fail anyone else's batch.
        queue.extend(due.into_iter().map(|w| vec![w]));
        let mut requests = 0usize;
        while let Some(batch) = queue.pop_front() {
            if requests >= LTP_REQUESTS_PER_POLL {
                let left: usize = batch.len() + queue.iter().map(Vec::len).sum::<usize>();
                log::warn!(
                    "[FALLBACK] event=rest_error instruments={left} cause=\"{LTP_REQUESTS_PER_POLL} requests this poll (splitting refused batches); the rest wait for the next poll\""
                );
                for (id, _, _) in batch.iter().chain(queue.iter().flatten()) {
                    ctx.engine.feed(FeedEvent::RestError(*id)).await;
                }
                break;
            }
            requests += 1;
            let t0 = Instant::now();
            let outcome =
                ltp_request(&cfg, &connector, &ctx, &ux, &bearer, &batch, &mut announced, total).await;
            let ms = t0.elapsed().as_millis();
            match outcome {
                Batch::Done => {
                    breaker.on_success();
                    for (_, key, sym) in &batch {
                        if refused.remove(key).is_some() {
                            log::info!("[FALLBACK] event=rest_symbol_accepted symbol={sym} key=\"{key}\"");
                        }
                    }
                }
                Batch::Discarded => {
                    log::info!("[FALLBACK] event=rest_discarded reason=feed_returned time_ms={ms}");
                    break;
                }
                Batch::Refused { status, code } if batch.len() > 1 => {
                    ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "[FALLBACK] event=rest_batch_refused instruments={} http={status} code={code} time_ms={ms} (split to find the refused key)",
                        batch.len()
                    );
                    let (a, b) = batch.split_at(batch.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Batch::Refused { status, code } => {
                    ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
                    for (id, key, sym) in &batch {
                        let backoff = match refused.get(key) {
                            Some(r) => (r.backoff * 2).min(LTP_REFUSED_RETRY_MAX),
                            None => LTP_REFUSED_RETRY_INITIAL,
                        };
                        if refused.contains_key(key) || refused.len() < crate::limits::REST_REFUSED_MAX {
                            refused
                                .insert(key.clone(), Refused { retry_at: Instant::now() + backoff, backoff });
                        }
                        log::warn!(
                            "[FALLBACK] event=rest_symbol_refused symbol={sym} key=\"{key}\" http={status} code={code} retry_ms={} (left out of the batch; the other instruments keep their LTP)",
                            backoff.as_millis()
                        );
                        ctx.engine.feed(FeedEvent::RestError(*id)).await;
                    }
                }
                Batch::Failed { cause, hold_off, breaker: counts } => {
                    ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
                    let left: usize = batch.len() + queue.iter().map(Vec::len).sum::<usize>();
                    log::warn!(
                        "[FALLBACK] event=rest_error instruments={left} cause=\"{}\" time_ms={ms}",
                        cause.replace('"', "'")
                    );
                    if counts {
                        breaker.on_failure(ctx.clock.now(), &mut rng);
                    }
                    if let Some(wait) = hold_off {
                        breaker.hold_off(ctx.clock.now(), wait);
                    }
                    for (id, _, _) in batch.iter().chain(queue.iter().flatten()) {
                        ctx.engine.feed(FeedEvent::RestError(*id)).await;
                    }
                    break;
                }
            }
        }
    }
}

/// One LTP request for `batch`: hands its prices to the engine and reports each instrument's
/// REST status when answered.
#[allow(clippy::too_many_arguments)]
async fn ltp_request(
    cfg: &UpstoxConfig,
    connector: &Connector,
    ctx: &Ctx,
    ux: &UpstoxShared,
    bearer: &str,
    batch: &[Want],
    announced: &mut bool,
    total: usize,
) -> Batch {
    let keys: Vec<&str> = batch.iter().map(|(_, k, _)| k.as_str()).collect();
    let path = ltp_path(&cfg.rest.path, &keys);
    let epoch = ctx.shared.epoch.load(Ordering::Relaxed);
    let sent_at = ctx.clock.now();
    let t0 = Instant::now();
    ctx.engine.status.rest.polls.fetch_add(1, Ordering::Relaxed);
    let req = Req {
        method: "GET",
        path: &path,
        headers: &[("authorization", bearer), ("accept", "application/json")],
        body: None,
        timeout: cfg.rest_timeout,
        max_body: 1024 * 1024,
    };
    let result = http::request(connector, &cfg.rest, req).await;
    let ms = t0.elapsed().as_millis();
    let ans = match result {
        Ok(ans) => ans,
        Err(e) => return Batch::Failed { cause: describe(&e), hold_off: None, breaker: true },
    };
    match ans.status {
        200 => {}
        401 => {
            auth_failed(ctx, ux, "ltp", 401);
            return Batch::Failed {
                cause: "HTTP 401 (authorization refused)".into(),
                hold_off: None,
                breaker: false,
            };
        }
        429 => {
            let wait = ans.retry_after.unwrap_or(60).clamp(1, 3600);
            return Batch::Failed {
                cause: format!("HTTP 429 (rate limited; holding off {wait} s)"),
                hold_off: Some(Duration::from_secs(wait)),
                breaker: false,
            };
        }
        s @ (400..=407 | 409..=499) => {
            let code =
                crate::broker::upstox::error_code(&ans.body).map_or_else(|| "none".to_string(), |(c, _)| c);
            return Batch::Refused { status: s, code };
        }
        s => return Batch::Failed { cause: format!("HTTP {s}"), hold_off: None, breaker: true },
    }
    if ctx.shared.live.load(Ordering::Relaxed) || ctx.shared.epoch.load(Ordering::Relaxed) != epoch {
        return Batch::Discarded;
    }
    if !*announced {
        *announced = true;
        log::info!(
            "[FALLBACK] event=rest_polling host={} addr={} dns={} every_ms={} instruments={total} time_ms={ms}",
            cfg.rest.host,
            ans.addr,
            ans.dns.label(),
            cfg.rest_poll.as_millis(),
        );
    }
    let scale_of = |id: InstrumentId| ux.keys.read().map_or(2, |t| t.scale(id));
    let mut got: Vec<InstrumentId> = Vec::with_capacity(batch.len());
    match parse_ltp(&ans.body) {
        Ok(prices) => {
            for (token, v) in prices {
                // Several instruments may share a key (a symbol and its key both registered).
                for (id, _, _) in batch.iter().filter(|(_, k, _)| *k == token) {
                    match Price::from_f64(v, scale_of(*id)) {
                        Ok(p) if p.is_positive() => {
                            let q = Quote {
                                bid: None,
                                ask: None,
                                last: Some(p),
                                source: Source::Rest,
                                exch_ts: None,
                                dated: sent_at,
                            };
                            ctx.engine.ticks.push(Tick::new(*id, q));
                            got.push(*id);
                        }
                        _ => log::warn!("[FALLBACK] event=rest_bad_price key={token}"),
                    }
                }
            }
        }
        Err(e) => {
            ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
            log::warn!("[FALLBACK] event=rest_error cause=\"unreadable answer: {e}\" time_ms={ms}");
        }
    }
    for (id, key, _) in batch {
        if got.contains(id) {
            ctx.engine.feed(FeedEvent::RestOk(*id)).await;
        } else {
            log::warn!("[FALLBACK] event=rest_missing key={key}");
            ctx.engine.feed(FeedEvent::RestError(*id)).await;
        }
    }
    Batch::Done
}

fn describe(e: &HttpError) -> String {
    e.to_string()
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
/// `map` is the venue-instrument map the broker shares ([`InstrumentMap::from_config`]).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: &crate::config::Config,
    rest: Endpoint,
    connector: Connector,
    shared: Arc<FeedShared>,
    ctx: Ctx,
    instruments: &[(InstrumentId, String)],
    added: mpsc::Receiver<(InstrumentId, Symbol)>,
    stop: watch::Receiver<bool>,
    seed: u64,
    map: Arc<InstrumentMap>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ucfg = UpstoxConfig::from_config(cfg, rest, seed);
    let ux = Arc::new(UpstoxShared::with_map(ucfg.token_file.clone(), map));
    for (id, sym) in instruments {
        shared.add(*id, Symbol::try_from(sym.as_str()).unwrap_or_default());
        if !ux.add(*id, sym) {
            log::error!("[RECONNECT] event=unmapped_symbol symbol={sym} (no Upstox instrument key)");
        }
    }
    let calendar = Calendar::parse(&cfg.feed.market_hours, &cfg.feed.holidays).unwrap_or_else(|e| {
        log::error!("[MARKET] event=calendar_invalid error=\"{e}\" (the market counts as always open)");
        Calendar::always()
    });
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
