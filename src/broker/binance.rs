//! Binance spot: closing orders over the project's own DNS/TLS stack ([`Connector`]).
//!
//! Every private request is signed: HMAC-SHA256 of the exact parameter string sent, keyed by
//! the API secret, appended as `signature`, with `timestamp` (local wall clock plus the offset
//! learned from `GET /api/v3/time`) and `recvWindow` (at most [`MAX_RECV_WINDOW`]). The API
//! key goes in the `X-MBX-APIKEY` header. Neither the key, the secret nor a signature is ever
//! logged or put into an error.
//!
//! A close is a `MARKET` order for the smaller of the remaining position and the free balance
//! of the base asset (`GET /api/v3/account`), rounded down to the symbol's `LOT_SIZE` step
//! (`GET /api/v3/exchangeInfo`, cached), with `newClientOrderId` = the attempt's client id.
//!
//! **Warm path.** Requests go over a pool of kept-alive TLS connections ([`Pool`]), kept warm
//! by [`Binance::run_time_sync`]: `GET /api/v3/time` every [`BROKER_KEEP_WARM`] (15 s, under
//! the venue front end's idle timeout; it re-learns the time offset too), and the account
//! balances read every [`BROKER_BALANCE_REFRESH`] and after every fill. A close sizes from a
//! cached balance younger than [`BROKER_BALANCE_MAX_AGE`], so on a warm broker it is one
//! `POST /api/v3/order` on an open connection. A balance older than that (or dropped after a
//! fill or an unknown outcome) is read on the close path within `prepare_budget` (1.5 s) as
//! before, and past it the position's own quantity is sent (docs/operations.md).
//! How each answer maps to an [`Outcome`] is in [`place_outcome`] and the table of
//! `docs/operations.md` ("Broker error mapping"): nothing that may have reached the matching
//! engine is ever reported as failed.
//!
//! Binance rejects a duplicate client id only while the first order is open, so a filled
//! market close is not protected by its id: an unknown attempt is resolved by
//! `GET /api/v3/order?origClientOrderId=` ([`Broker::lookup`]), and "does not exist" (-2013)
//! proves absence only once [`Broker::absent_after`] (`recvWindow` + margin ≤ 2 s) has passed
//! since the send; `runtime::executor::resolve` enforces that.
//!
//! Spot cannot close a short: a short position with this broker is a configuration error
//! ([`check_side`], applied by the configuration and the API at the door) and [`Broker::place`] refuses one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use ring::hmac;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Broker, BrokerError, CloseOrder, Lookup, Placed, Secret};
use crate::bus::clock::Clock;
use crate::core::backoff::CircuitBreaker;
use crate::core::engine::Outcome;
use crate::core::price::{Price, Qty, SCALE, notional};
use crate::core::time::Timestamp;
use crate::core::types::{Side, Symbol};
use crate::limits::{
    BROKER_BALANCE_MAX_AGE, BROKER_BALANCE_REFRESH, BROKER_KEEP_WARM, BROKER_POOL_IDLE_PER_HOST,
    BROKER_POOL_IDLE_TIMEOUT,
};
use crate::net::http::{Answer, Connector, Endpoint, HttpError, Pool, Req};

/// Largest `recvWindow` tickguard sends (Binance accepts up to 60 s; a short window bounds how
/// long an unknown close stays unknown).
pub const MAX_RECV_WINDOW: Duration = Duration::from_millis(5000);
/// Largest margin added to `recvWindow` before a look-up that finds nothing proves absence.
pub const MAX_ABSENT_MARGIN: Duration = Duration::from_secs(2);
/// Longest client order id Binance accepts (`^[a-zA-Z0-9-_]{1,36}$`).
pub const CLIENT_ID_MAX: usize = 36;
/// Largest order answer read.
const ORDER_BODY_MAX: usize = 64 * 1024;
/// Largest account / exchangeInfo answer read.
const INFO_BODY_MAX: usize = 4 * 1024 * 1024;

/// Error codes after which the outcome of an order is unknown (the request may have reached
/// the matching engine): -1006 unexpected response from the message bus, -1007 timeout
/// waiting for the backend.
pub const UNKNOWN_CODES: [i64; 2] = [-1006, -1007];
/// Credential errors (logged under `[AUTH]`): -1022 invalid signature, -2014 bad API-key
/// format, -2015 invalid API key, IP or permissions.
pub const AUTH_CODES: [i64; 3] = [-1022, -2014, -2015];
/// "Order does not exist" on a query.
pub const NO_SUCH_ORDER: i64 = -2013;
/// Timestamp outside `recvWindow` (or ahead of the server): the time offset is re-learned.
pub const BAD_TIMESTAMP: i64 = -1021;

/// Settings of the Binance broker.
#[derive(Clone, Debug)]
pub struct BinanceConfig {
    /// `broker.rest_url`.
    pub rest: Endpoint,
    /// `broker.recv_window_ms`, clamped to [`MAX_RECV_WINDOW`].
    pub recv_window: Duration,
    /// Added to `recv_window` for [`Broker::absent_after`]; clamped to [`MAX_ABSENT_MARGIN`].
    pub absent_margin: Duration,
    /// Bound of one order request (after it, the outcome is unknown).
    pub order_timeout: Duration,
    /// Bound of one look-up, account, exchangeInfo or time request.
    pub query_timeout: Duration,
    /// Most time spent reading the account and the symbol's filters before an order; past
    /// it the order goes with what is known (the position's quantity, unrounded if need be).
    pub prepare_budget: Duration,
    /// Period of the server-time refresh ([`Binance::run_time_sync`]); an offset older than
    /// twice this is refreshed before the next signed request.
    pub time_refresh: Duration,
    /// Period of the keep-warm request ([`Binance::run_time_sync`]; default
    /// [`BROKER_KEEP_WARM`]).
    pub keep_warm: Duration,
    /// Period of the background balance refresh (default [`BROKER_BALANCE_REFRESH`]).
    pub balance_refresh: Duration,
    /// A cached balance younger than this sizes a close without a request (default
    /// [`BROKER_BALANCE_MAX_AGE`]).
    pub balance_max_age: Duration,
    /// Hold-off after a 429 without `Retry-After`.
    pub hold_off_429: Duration,
    /// Hold-off after a 418 (IP ban) without `Retry-After`.
    pub hold_off_418: Duration,
    /// Symbols whose holdings [`Broker::holdings`] must always report (their filters are
    /// loaded on demand): the configuration's watched symbols. Symbols closed through this
    /// broker are added as they are first used.
    pub symbols: Vec<String>,
}

impl BinanceConfig {
    /// Defaults around `rest`: 5 s window, 2 s margin, 5 s order / 3 s query timeouts.
    pub fn new(rest: Endpoint) -> BinanceConfig {
        BinanceConfig {
            rest,
            recv_window: MAX_RECV_WINDOW,
            absent_margin: MAX_ABSENT_MARGIN,
            order_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(3),
            prepare_budget: Duration::from_millis(1500),
            time_refresh: Duration::from_secs(60),
            keep_warm: BROKER_KEEP_WARM,
            balance_refresh: BROKER_BALANCE_REFRESH,
            balance_max_age: BROKER_BALANCE_MAX_AGE,
            hold_off_429: Duration::from_secs(30),
            hold_off_418: Duration::from_secs(120),
            symbols: Vec::new(),
        }
    }
}

/// The API key and secret, read from `broker.key_file` and `broker.secret_file`
/// (`runtime::wiring::broker`).
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Sent as `X-MBX-APIKEY`.
    pub api_key: Secret,
    /// Signs every private request.
    pub secret: Secret,
}

/// The hex HMAC-SHA256 of `payload` keyed by `secret`: Binance's `signature`.
pub fn sign(secret: &str, payload: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex(hmac::sign(&key, payload.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// True for a client order id Binance accepts: 1 to 36 characters of `[A-Za-z0-9_-]`, the
/// one client-id rule (`core::spec::valid_client_id`).
pub use crate::core::spec::valid_client_id;

/// Spot cannot close a short (it would need a margin account): `Err` with the reason for a
/// short, for the runtime to refuse a registration with this broker.
pub fn check_side(side: Side) -> Result<(), &'static str> {
    match side {
        Side::Long => Ok(()),
        Side::Short => Err(
            "broker.kind = \"binance\" trades spot, which cannot close a short position (that needs a margin account)",
        ),
    }
}

/// The filters of a symbol that shape a market close (from `exchangeInfo`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// `baseAsset`: what a long position holds.
    pub base_asset: String,
    /// `LOT_SIZE.stepSize` (zero: none). A `MARKET_LOT_SIZE` step, when set, is used if larger.
    pub step: Qty,
    /// The larger of `LOT_SIZE.minQty` and `MARKET_LOT_SIZE.minQty`.
    pub min_qty: Qty,
    /// The smaller of the `maxQty` of both (none when neither is set).
    pub max_qty: Option<Qty>,
    /// `NOTIONAL.minNotional` (or `MIN_NOTIONAL`) when it applies to market orders.
    pub min_notional: Option<Price>,
}

impl Rules {
    /// Reads the rules of `symbol` from an `exchangeInfo` answer.
    pub fn parse(symbol: &str, body: &[u8]) -> Result<Rules, BrokerError> {
        let bad = |why: String| BrokerError::Unreadable { what: format!("exchangeInfo {symbol}"), why };
        let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
        let s = v
            .get("symbols")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|s| s.get("symbol").and_then(Value::as_str) == Some(symbol)))
            .ok_or_else(|| bad(format!("no symbol {symbol}")))?;
        let base_asset =
            s.get("baseAsset").and_then(Value::as_str).ok_or_else(|| bad("no baseAsset".into()))?.to_string();
        let mut r =
            Rules { base_asset, step: Qty::ZERO, min_qty: Qty::ZERO, max_qty: None, min_notional: None };
        let qty = |f: &Value, k: &str| f.get(k).and_then(Value::as_str).and_then(|t| Qty::parse(t).ok());
        let price = |f: &Value, k: &str| f.get(k).and_then(Value::as_str).and_then(|t| Price::parse(t).ok());
        let applies = |f: &Value, k: &str| f.get(k).and_then(Value::as_bool).unwrap_or(true);
        for f in s.get("filters").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            match f.get("filterType").and_then(Value::as_str) {
                Some("LOT_SIZE" | "MARKET_LOT_SIZE") => {
                    // Market orders obey both filters; MARKET_LOT_SIZE's step is usually 0.
                    r.step = r.step.max(qty(f, "stepSize").unwrap_or(Qty::ZERO));
                    r.min_qty = r.min_qty.max(qty(f, "minQty").unwrap_or(Qty::ZERO));
                    if let Some(m) = qty(f, "maxQty").filter(|m| m.is_positive()) {
                        r.max_qty = Some(r.max_qty.map_or(m, |x| x.min(m)));
                    }
                }
                Some("NOTIONAL") if applies(f, "applyMinToMarket") => {
                    r.min_notional = price(f, "minNotional").filter(|p| p.is_positive());
                }
                Some("MIN_NOTIONAL") if applies(f, "applyToMarket") && r.min_notional.is_none() => {
                    r.min_notional = price(f, "minNotional").filter(|p| p.is_positive());
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

/// What a close can send, given the account and the symbol's filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// Send a market order for this quantity (at most the one asked for).
    Send(Qty),
    /// Nothing sellable is held: the account holds less than one lot (or less than the
    /// minimum notional) of what is left, e.g. because fees were taken in the base asset.
    /// Nothing is sent and the remainder counts as closed (a warning is logged).
    Dust,
    /// The sellable balance is locked in other open orders: nothing can be sold now.
    Locked,
}

/// The close size: the smaller of `want` and the free balance, capped at the filters'
/// `maxQty` and rounded **down** to the lot step; [`Sizing::Dust`] when that is below the
/// minimum quantity or notional (judged at `price`, when known) and the locked balance would
/// not make it sellable either, [`Sizing::Locked`] when it would. With no balance known (the
/// account could not be read) the position's own quantity is used; with no rules known it
/// goes unrounded.
pub fn close_size(
    want: Qty,
    balance: Option<(Qty, Qty)>,
    rules: Option<&Rules>,
    price: Option<Price>,
) -> Sizing {
    let cap = |q: Qty| {
        let q = match rules.and_then(|r| r.max_qty) {
            Some(max) => q.min(max),
            None => q,
        };
        q.round_down_to(rules.map_or(Qty::ZERO, |r| r.step))
    };
    let sellable = |q: Qty| {
        q.is_positive()
            && rules.is_none_or(|r| q >= r.min_qty)
            && match (rules.and_then(|r| r.min_notional), price) {
                (Some(min), Some(p)) => notional(p, q) >= i128::from(min.units()),
                _ => true,
            }
    };
    match balance {
        None => {
            let q = cap(want);
            if sellable(q) { Sizing::Send(q) } else { Sizing::Dust }
        }
        Some((free, locked)) => {
            let q = cap(want.min(free));
            if sellable(q) {
                return Sizing::Send(q);
            }
            let total = free.checked_add(locked).unwrap_or(free);
            if sellable(cap(want.min(total))) { Sizing::Locked } else { Sizing::Dust }
        }
    }
}

/// A Binance error body: `{"code":-2010,"msg":"..."}`.
pub fn error_code(body: &[u8]) -> Option<(i64, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_i64()?;
    let msg = v.get("msg").and_then(Value::as_str).unwrap_or("").to_string();
    Some((code, msg))
}

/// The outcome an order JSON (a place answer, or a query) describes: `FILLED` → filled;
/// `NEW`, `PARTIALLY_FILLED`, `PENDING_NEW`, `PENDING_CANCEL` → working; `EXPIRED`,
/// `EXPIRED_IN_MATCH`, `CANCELED`, `REJECTED` → partly filled, or rejected with nothing
/// executed (filled if everything was). The price is `cummulativeQuoteQty / executedQty`.
/// `None` when the JSON is not an order.
pub fn order_outcome(body: &[u8]) -> Option<Outcome> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).and_then(|t| Qty::parse(t).ok());
    let status = v.get("status")?.as_str()?;
    let executed = field("executedQty")?;
    let orig = field("origQty");
    let price = field("cummulativeQuoteQty").and_then(|q| average_price(q, executed));
    Some(match status {
        "FILLED" => Outcome::Filled { executed, price },
        "NEW" | "PARTIALLY_FILLED" | "PENDING_NEW" | "PENDING_CANCEL" => Outcome::Working { executed, price },
        "EXPIRED" | "EXPIRED_IN_MATCH" | "CANCELED" | "REJECTED" => {
            if !executed.is_positive() {
                Outcome::Rejected
            } else if orig.is_some_and(|o| executed >= o) {
                Outcome::Filled { executed, price }
            } else {
                Outcome::PartiallyFilled { executed, price }
            }
        }
        _ => return None,
    })
}

/// `quote / executed` as a price (`None` when nothing executed or the quote is unusable).
fn average_price(quote: Qty, executed: Qty) -> Option<Price> {
    if !executed.is_positive() || !quote.is_positive() {
        return None;
    }
    let units = i128::from(quote.units()) * i128::from(SCALE) / i128::from(executed.units());
    i64::try_from(units).ok().map(Price::from_units)
}

/// How the answer to `POST /api/v3/order` maps to an outcome (the table in
/// docs/operations.md): 200 → the order's state ([`order_outcome`]; unreadable → unknown);
/// 5xx, 408, -1006, -1007 and "Duplicate order sent." (an order with this id is open) →
/// unknown; 429 / 418 → rejected (refused before processing; the caller holds off); any
/// other 4xx → rejected; anything else → unknown.
pub fn place_outcome(status: u16, body: &[u8]) -> Outcome {
    match status {
        200 => order_outcome(body).unwrap_or(Outcome::Unknown),
        429 | 418 => Outcome::Rejected,
        408 => Outcome::Unknown,
        500..=599 => Outcome::Unknown,
        400..=499 => match error_code(body) {
            Some((code, _)) if UNKNOWN_CODES.contains(&code) => Outcome::Unknown,
            Some((_, msg)) if msg.contains("Duplicate order sent") => Outcome::Unknown,
            _ => Outcome::Rejected,
        },
        _ => Outcome::Unknown,
    }
}

/// How the answer to `GET /api/v3/order` maps to a look-up: 200 → found (unreadable →
/// failed); -2013 → absent; anything else (5xx, 429, -1021, ...) → failed, nothing learned.
pub fn lookup_outcome(status: u16, body: &[u8]) -> Lookup {
    match status {
        200 => match order_outcome(body) {
            Some(o) => Lookup::Found(o),
            None => Lookup::Failed("order query answer is not an order".into()),
        },
        _ => match error_code(body) {
            Some((NO_SUCH_ORDER, _)) if (400..500).contains(&status) => Lookup::Absent,
            Some((code, msg)) => Lookup::Failed(format!("HTTP {status} code {code}: {msg}")),
            None => Lookup::Failed(format!("HTTP {status}")),
        },
    }
}

/// A venue's error answer as a [`BrokerError::Venue`].
fn venue_error(what: &str, a: &Answer) -> BrokerError {
    BrokerError::Venue {
        what: what.to_string(),
        status: a.status,
        code: error_code(&a.body).map(|(c, m)| (c.to_string(), m)),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn wall_ms() -> i64 {
    crate::bus::clock::wall_unix_ms()
}

struct State {
    /// Server time minus local wall time, ms.
    offset_ms: i64,
    /// When the offset was learned (`None`: never, or invalidated by -1021).
    synced: Option<Instant>,
    /// `exchangeInfo` rules per symbol.
    rules: HashMap<String, Rules>,
    /// Opened by 429/418 `Retry-After`; while open nothing is sent.
    breaker: CircuitBreaker,
    /// The last account read and when it was read (dropped after a fill or an unknown
    /// outcome: the balance has changed, or may have).
    account: Option<(Account, Timestamp)>,
}

/// The Binance spot broker. Share it behind an `Arc`.
pub struct Binance {
    cfg: BinanceConfig,
    pool: Pool,
    /// Wakes the background refresh (after a fill).
    refresh: tokio::sync::Notify,
    /// The configured symbols' rules were loaded by the background refresh (once).
    rules_preloaded: std::sync::atomic::AtomicBool,
    api_key: Secret,
    key: hmac::Key,
    clock: Clock,
    state: Mutex<State>,
}

impl std::fmt::Debug for Binance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binance").field("rest", &self.cfg.rest.host).field("api_key", &self.api_key).finish()
    }
}

impl Binance {
    /// A broker sending through `conn`, signing with `creds`.
    pub fn new(cfg: BinanceConfig, creds: Credentials, conn: Connector) -> Binance {
        let mut cfg = cfg;
        cfg.recv_window = cfg.recv_window.clamp(Duration::from_millis(1), MAX_RECV_WINDOW);
        cfg.absent_margin = cfg.absent_margin.min(MAX_ABSENT_MARGIN);
        let key = hmac::Key::new(hmac::HMAC_SHA256, creds.secret.expose().as_bytes());
        Binance {
            cfg,
            pool: Pool::new(conn, BROKER_POOL_IDLE_PER_HOST, BROKER_POOL_IDLE_TIMEOUT),
            refresh: tokio::sync::Notify::new(),
            rules_preloaded: std::sync::atomic::AtomicBool::new(false),
            api_key: creds.api_key,
            key,
            clock: Clock::new(),
            state: Mutex::new(State {
                offset_ms: 0,
                synced: None,
                rules: HashMap::new(),
                breaker: CircuitBreaker::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(60)),
                account: None,
            }),
        }
    }

    /// Connections (TCP + TLS handshakes) opened so far by this broker's pool.
    pub fn connections_opened(&self) -> u64 {
        self.pool.connections_opened()
    }

    /// The cached account if it is younger than `max_age`.
    fn fresh_account(&self, max_age: Duration) -> Option<Account> {
        let now = self.clock.now();
        let st = self.lock();
        st.account.as_ref().filter(|(_, at)| now.since(*at) <= max_age).map(|(a, _)| a.clone())
    }

    /// Age of the cached account, if one is cached.
    pub fn account_age(&self) -> Option<Duration> {
        let now = self.clock.now();
        self.lock().account.as_ref().map(|(_, at)| now.since(*at))
    }

    /// Forgets the cached account (its balances changed, or may have) and wakes the
    /// background refresh.
    fn account_changed(&self) {
        self.lock().account = None;
        self.refresh.notify_one();
    }

    /// The settings in force (after clamping).
    pub fn config(&self) -> &BinanceConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The learned server-time offset in ms (server minus local), if any.
    pub fn time_offset_ms(&self) -> Option<i64> {
        let st = self.lock();
        st.synced.map(|_| st.offset_ms)
    }

    /// How long requests are still held off after a 429/418, if they are.
    pub fn held_off(&self) -> Option<Duration> {
        let now = self.clock.now();
        let mut st = self.lock();
        match st.breaker.state(now) {
            crate::core::backoff::BreakerState::Open { until } => Some(until.since(now)),
            _ => None,
        }
    }

    /// The cached rules of `symbol`, if loaded.
    pub fn cached_rules(&self, symbol: &str) -> Option<Rules> {
        self.lock().rules.get(symbol).cloned()
    }

    fn path(&self, p: &str) -> String {
        let base = self.cfg.rest.path.split('?').next().unwrap_or("").trim_end_matches('/');
        format!("{base}{p}")
    }

    /// Sends one request; a 429/418 holds every request off for `Retry-After` (or the
    /// configured default), a -1021 forgets the time offset.
    async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<String>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, HttpError> {
        let mut headers: Vec<(&str, &str)> = vec![("x-mbx-apikey", self.api_key.expose())];
        if body.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        let req = Req {
            method,
            path: path_and_query,
            headers: &headers,
            body: body.map(Bytes::from),
            timeout,
            max_body,
        };
        let answer = self.pool.request(&self.cfg.rest, req).await?;
        self.observe(&answer);
        Ok(answer)
    }

    fn observe(&self, a: &Answer) {
        let now = self.clock.now();
        if a.status == 429 || a.status == 418 {
            let default = if a.status == 418 { self.cfg.hold_off_418 } else { self.cfg.hold_off_429 };
            let wait = a.retry_after.map_or(default, Duration::from_secs);
            log::warn!(
                "[CLOSE] event=rate_limited venue=binance http={} retry_after_ms={} (nothing is sent until then)",
                a.status,
                wait.as_millis()
            );
            self.lock().breaker.hold_off(now, wait);
            return;
        }
        let code = error_code(&a.body).map(|(c, _)| c);
        let mut st = self.lock();
        st.breaker.on_success();
        if code == Some(BAD_TIMESTAMP) {
            st.synced = None;
        }
    }

    /// A signed request: `params` plus `signature`, in the query (GET) or the body (POST).
    async fn signed(
        &self,
        method: &str,
        path: &str,
        params: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, HttpError> {
        let sig = hex(hmac::sign(&self.key, params.as_bytes()).as_ref());
        let full = format!("{params}&signature={sig}");
        if method == "GET" {
            self.send(method, &format!("{}?{full}", self.path(path)), None, timeout, max_body).await
        } else {
            self.send(method, &self.path(path), Some(full), timeout, max_body).await
        }
    }

    /// `timestamp` for a request whose life began at `at`: local wall time then, plus the
    /// server-time offset.
    fn timestamp_at(&self, at: Instant) -> i64 {
        let back = i64::try_from(at.elapsed().as_millis()).unwrap_or(0);
        wall_ms() - back + self.lock().offset_ms
    }

    fn needs_sync(&self) -> bool {
        let st = self.lock();
        st.synced.is_none_or(|t| t.elapsed() > self.cfg.time_refresh * 2)
    }

    /// Learns the server-time offset from `GET /api/v3/time` (server time minus the local
    /// wall time at the middle of the round trip) and returns it in ms.
    pub async fn sync_time(&self) -> Result<i64, BrokerError> {
        let t0 = wall_ms();
        let i0 = crate::bus::clock::mono();
        let a = self.send("GET", &self.path("/api/v3/time"), None, self.cfg.query_timeout, 4096).await?;
        if a.status != 200 {
            return Err(venue_error("GET /api/v3/time", &a));
        }
        let server = serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| v.get("serverTime").and_then(Value::as_i64))
            .ok_or_else(|| BrokerError::Unreadable {
                what: "GET /api/v3/time".into(),
                why: "no serverTime in the answer".into(),
            })?;
        let rtt = i64::try_from(i0.elapsed().as_millis()).unwrap_or(i64::MAX);
        let offset = server - (t0 + rtt / 2);
        {
            let mut st = self.lock();
            st.offset_ms = offset;
            st.synced = Some(crate::bus::clock::mono());
        }
        if rtt > 1000 {
            log::warn!(
                "[CLOSE] event=time_sync venue=binance offset_ms={offset} rtt_ms={rtt} (slow: offset uncertain)"
            );
        } else {
            log::debug!("[CLOSE] event=time_sync venue=binance offset_ms={offset} rtt_ms={rtt}");
        }
        Ok(offset)
    }

    /// Keeps the broker warm until `stop`: the server-time offset learned now, then every
    /// `time_refresh` or [`BROKER_KEEP_WARM`] (15 s) whichever is shorter, which also keeps
    /// a pooled connection open (its `GET /api/v3/time` is the keep-warm request: weight 1,
    /// harmless, and well within the venue front end's idle timeout); the configured
    /// symbols' rules loaded; the account balances read now, every
    /// [`BROKER_BALANCE_REFRESH`] (10 s) and at once after every fill (a close sizes from a
    /// balance younger than [`BROKER_BALANCE_MAX_AGE`] without a request). Nothing is sent
    /// while a 429/418 hold-off lasts.
    pub async fn run_time_sync(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let warm = self.cfg.time_refresh.min(self.cfg.keep_warm).max(Duration::from_millis(100));
        let mut next_time = crate::bus::clock::mono();
        let mut next_balance = next_time;
        loop {
            if self.held_off().is_none() {
                let now = crate::bus::clock::mono();
                if now >= next_time {
                    if let Err(e) = self.sync_time().await {
                        log::warn!("[CLOSE] event=time_sync_failed venue=binance cause=\"{e}\"");
                    }
                    next_time = crate::bus::clock::mono() + warm;
                }
                if now >= next_balance || self.account_age().is_none() {
                    self.refresh_account().await;
                    next_balance = crate::bus::clock::mono() + self.cfg.balance_refresh;
                }
            }
            let wake = next_time.min(next_balance).max(crate::bus::clock::mono() + Duration::from_millis(50));
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.refresh.notified() => { next_balance = crate::bus::clock::mono(); }
            }
        }
    }

    /// Loads the configured symbols' rules (the first time) and reads the account into
    /// the cache; a failure is logged and the cache left as it is (it ages out).
    async fn refresh_account(&self) {
        // Once: a symbol whose rules fail is tried again when it is used, never every refresh.
        let first = !self.rules_preloaded.swap(true, std::sync::atomic::Ordering::Relaxed);
        for s in self.cfg.symbols.iter().filter(|_| first) {
            if self.cached_rules(s).is_none() {
                if let Err(e) = self.rules(s).await {
                    log::warn!("[CLOSE] event=rules_unknown venue=binance symbol={s} cause=\"{e}\"");
                }
            }
        }
        if let Err(e) = self.account_within(self.cfg.query_timeout).await {
            log::warn!("[CLOSE] event=balance_refresh_failed venue=binance cause=\"{e}\"");
        }
    }

    /// The rules of `symbol`: cached, else `GET /api/v3/exchangeInfo?symbol=` (then cached).
    pub async fn rules(&self, symbol: &str) -> Result<Rules, BrokerError> {
        if let Some(r) = self.cached_rules(symbol) {
            return Ok(r);
        }
        let path = format!("{}?symbol={}", self.path("/api/v3/exchangeInfo"), enc(symbol));
        let a = self.send("GET", &path, None, self.cfg.query_timeout, INFO_BODY_MAX).await?;
        if a.status != 200 {
            return Err(venue_error(&format!("exchangeInfo {symbol}"), &a));
        }
        let r = Rules::parse(symbol, &a.body)?;
        self.lock().rules.insert(symbol.to_string(), r.clone());
        Ok(r)
    }

    /// Loads the rules of `symbols` and the time offset, at start-up. Failures are returned
    /// together (each is retried on first use).
    pub async fn prepare(&self, symbols: &[&str]) -> Result<(), BrokerError> {
        let mut errors = Vec::new();
        if let Err(e) = self.sync_time().await {
            errors.push(e);
        }
        for s in symbols {
            if let Err(e) = self.rules(s).await {
                errors.push(e);
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(BrokerError::Several(errors)) }
    }

    /// Balances from `GET /api/v3/account` (signed, `omitZeroBalances=true`): asset →
    /// (free, locked). An asset not listed holds nothing; an asset whose amount cannot be read
    /// is left out (see [`Binance::account`] to tell the two apart).
    pub async fn balances(&self) -> Result<HashMap<String, (Qty, Qty)>, BrokerError> {
        self.account_within(self.cfg.query_timeout).await.map(|a| a.balances)
    }

    /// The account's balances, and the assets whose amount could not be read.
    pub async fn account(&self) -> Result<Account, BrokerError> {
        self.account_within(self.cfg.query_timeout).await
    }

    async fn account_within(&self, timeout: Duration) -> Result<Account, BrokerError> {
        if let Some(wait) = self.held_off() {
            return Err(BrokerError::HeldOff { ms: wait.as_millis() });
        }
        self.sync_if_needed().await;
        let ts = self.timestamp_at(crate::bus::clock::mono());
        let params =
            format!("omitZeroBalances=true&recvWindow={}&timestamp={ts}", self.cfg.recv_window.as_millis());
        let a = self.signed("GET", "/api/v3/account", &params, timeout, INFO_BODY_MAX).await?;
        if a.status != 200 {
            self.log_auth(&a, "account");
            return Err(venue_error("account", &a));
        }
        let acct = Account::parse(&a.body)?;
        let at = self.clock.now();
        self.lock().account = Some((acct.clone(), at));
        Ok(acct)
    }
    async fn sync_if_needed(&self) {
        if self.needs_sync() {
            let budget = self.cfg.prepare_budget;
            match tokio::time::timeout(budget, self.sync_time()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::warn!("[CLOSE] event=time_sync_failed venue=binance cause=\"{e}\""),
                Err(_) => log::warn!(
                    "[CLOSE] event=time_sync_failed venue=binance cause=\"no answer within {} ms\"",
                    budget.as_millis()
                ),
            }
        }
    }

    fn log_auth(&self, a: &Answer, what: &str) {
        let code = error_code(&a.body);
        if a.status == 401 || code.as_ref().is_some_and(|(c, _)| AUTH_CODES.contains(c)) {
            let (c, m) = code.unwrap_or((0, String::new()));
            log::error!(
                "[AUTH] venue=binance request={what} http={} code={c} msg=\"{m}\" (check broker.key_file, broker.secret_file and the key's IP and trading permissions)",
                a.status
            );
        }
    }

    /// The account's balance of `symbol`'s base asset and the symbol's rules, within the
    /// prepare budget (whatever is not known by then is `None`).
    async fn prepare_order(&self, symbol: &str) -> (Option<Rules>, Option<(Qty, Qty)>) {
        let deadline = crate::bus::clock::mono() + self.cfg.prepare_budget;
        let rules = match tokio::time::timeout_at(deadline, self.rules(symbol)).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(e)) => {
                log::warn!("[CLOSE] event=rules_unknown venue=binance symbol={symbol} cause=\"{e}\"");
                None
            }
            Err(_) => {
                log::warn!("[CLOSE] event=rules_unknown venue=binance symbol={symbol} cause=\"timeout\"");
                None
            }
        };
        let Some(r) = rules else { return (None, None) };
        let left = deadline.saturating_duration_since(crate::bus::clock::mono());
        // A balance read in the background within the bound: no request on the close path.
        let cached = self.fresh_account(self.cfg.balance_max_age);
        let read = async {
            match cached {
                Some(a) => Ok(a),
                None => self.account_within(left.max(Duration::from_millis(1))).await,
            }
        };
        let balance = match tokio::time::timeout(left, read).await {
            Ok(Ok(acct)) => match acct.balance(&r.base_asset) {
                Some(b) => Some(b),
                None => {
                    // Unreadable (e.g. beyond what 64-bit fixed point holds): unknown, never
                    // zero. Zero would size the close as dust and report it filled with
                    // nothing sold; the position's own quantity is sent instead, which the
                    // venue refuses if the account does not hold it (safe either way).
                    log::warn!(
                        "[CLOSE] event=balance_unknown venue=binance symbol={symbol} asset={} cause=\"unreadable amount\" (sending the position's quantity)",
                        r.base_asset
                    );
                    None
                }
            },
            Ok(Err(e)) => {
                log::warn!(
                    "[CLOSE] event=balance_unknown venue=binance symbol={symbol} cause=\"{e}\" (sending the position's quantity)"
                );
                None
            }
            Err(_) => {
                log::warn!(
                    "[CLOSE] event=balance_unknown venue=binance symbol={symbol} cause=\"timeout\" (sending the position's quantity)"
                );
                None
            }
        };
        (Some(r), balance)
    }
}

/// An account answer: balances per asset, and the assets whose amounts could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Asset → (free, locked), for every asset whose amounts were read.
    pub balances: HashMap<String, (Qty, Qty)>,
    /// Assets listed with an amount that cannot be read (beyond what 64-bit fixed point
    /// holds, about 92 billion units, or not a decimal): their balance is **unknown**.
    pub unreadable: Vec<String>,
}

impl Account {
    /// Parses `GET /api/v3/account`.
    pub fn parse(body: &[u8]) -> Result<Account, BrokerError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| BrokerError::Unreadable { what: "account".into(), why: format!("not JSON: {e}") })?;
        let mut out = Account::default();
        for b in v.get("balances").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(asset) = b.get("asset").and_then(Value::as_str) else { continue };
            let q = |k: &str| b.get(k).and_then(Value::as_str).and_then(|t| Qty::parse(t).ok());
            match (q("free"), q("locked")) {
                (Some(free), Some(locked)) => {
                    out.balances.insert(asset.to_string(), (free, locked));
                }
                _ => out.unreadable.push(asset.to_string()),
            }
        }
        Ok(out)
    }

    /// The balance of `asset`: zero when the account does not list it (Binance omits zero
    /// balances), `None` when it is listed with an amount that cannot be read.
    pub fn balance(&self, asset: &str) -> Option<(Qty, Qty)> {
        if self.unreadable.iter().any(|a| a == asset) {
            return None;
        }
        Some(self.balances.get(asset).copied().unwrap_or((Qty::ZERO, Qty::ZERO)))
    }
}

impl Binance {
    /// The close itself ([`Broker::place_stamped`]); `sent` gets the time each order request
    /// is handed to its connection (the last one when a -1021 re-send repeats it).
    async fn close(&self, order: &CloseOrder, sent: &mut Option<Instant>) -> Outcome {
        // The order's `timestamp` is the moment this call began (just after the executor's
        // send time and journal write), so the venue stops accepting it `recvWindow` later
        // whatever the preparation below costs: `absent_after` stays true.
        let entry = crate::bus::clock::mono();
        let (id, cid, sym) = (&order.pos_id, order.client_id.as_str(), order.symbol.as_str());
        if let Err(why) = check_side(order.side) {
            log::error!(
                "[CLOSE] event=refused venue=binance id={id} symbol={sym} client_id={cid} cause=\"{why}\""
            );
            return Outcome::Rejected;
        }
        if !valid_client_id(cid) {
            log::error!(
                "[CLOSE] event=refused venue=binance id={id} client_id={cid} cause=\"client id is not 1-36 chars of [A-Za-z0-9_-]\""
            );
            return Outcome::Rejected;
        }
        if let Some(wait) = self.held_off() {
            log::warn!(
                "[CLOSE] event=held_off venue=binance id={id} client_id={cid} remaining_ms={} (rate limited; not sent)",
                wait.as_millis()
            );
            return Outcome::Rejected;
        }
        self.sync_if_needed().await;
        let ts = self.timestamp_at(entry);
        let (rules, balance) = self.prepare_order(sym).await;
        if let Some(wait) = self.held_off() {
            // The preparation itself was rate limited: sending now would dig the hole deeper.
            log::warn!(
                "[CLOSE] event=held_off venue=binance id={id} client_id={cid} remaining_ms={} (rate limited; not sent)",
                wait.as_millis()
            );
            return Outcome::Rejected;
        }
        let qty = match close_size(order.qty, balance, rules.as_ref(), order.price_hint) {
            Sizing::Send(q) => q,
            Sizing::Dust => {
                let (free, locked) = balance.unwrap_or((Qty::ZERO, Qty::ZERO));
                log::warn!(
                    "[CLOSE] event=nothing_to_sell venue=binance id={id} symbol={sym} client_id={cid} qty={} free={free} locked={locked} step={} (less than one lot or the minimum notional is held: counted closed, nothing sent)",
                    order.qty,
                    rules.as_ref().map_or(Qty::ZERO, |r| r.step)
                );
                return Outcome::Filled { executed: order.qty, price: None };
            }
            Sizing::Locked => {
                let (free, locked) = balance.unwrap_or((Qty::ZERO, Qty::ZERO));
                log::error!(
                    "[CLOSE] event=balance_locked venue=binance id={id} symbol={sym} client_id={cid} qty={} free={free} locked={locked} (the base asset is held by other open orders; cancel them)",
                    order.qty
                );
                return Outcome::Rejected;
            }
        };
        if qty < order.qty {
            let (free, _) = balance.unwrap_or((order.qty, Qty::ZERO));
            log::warn!(
                "[CLOSE] event=close_capped venue=binance id={id} symbol={sym} client_id={cid} position_qty={} free={free} sending={qty} (balance below the position, or lot rounding)",
                order.qty
            );
        }
        // A -1021 ("timestamp outside of recvWindow": the local wall clock stepped, or the
        // venue's did) is refused before processing: nothing was placed. Waiting for the
        // executor's retry back-off would leave a crossed stop open for that long, so the
        // offset is learned again at once and the same order (same client id) is sent once
        // more. It carries the timestamp of this call's entry again (re-based on the new
        // offset), so the venue still stops accepting it `recvWindow` after entry: the
        // absent-only-after rule holds for the attempt whichever send reached the venue. One
        // re-send only: a second -1021 is a rejection, as before. A -1021 on the balance read
        // above already forgot the offset: it is learned again before the first send.
        let mut ts = ts;
        if self.needs_sync() {
            self.sync_if_needed().await;
            ts = self.timestamp_at(entry);
        }
        let mut resent = false;
        let a = loop {
            let params = format!(
                "symbol={}&side=SELL&type=MARKET&quantity={qty}&newClientOrderId={}&newOrderRespType=FULL&recvWindow={}&timestamp={ts}",
                enc(sym),
                enc(cid),
                self.cfg.recv_window.as_millis()
            );
            // The attempt's one send time, taken as the request is handed to its pooled
            // connection (the handshakes and the intent's fsync are behind it).
            *sent = Some(self.clock.instant(self.clock.now()));
            let answer =
                self.signed("POST", "/api/v3/order", &params, self.cfg.order_timeout, ORDER_BODY_MAX).await;
            let a = match answer {
                Ok(a) => a,
                Err(e) if e.not_sent() => {
                    log::warn!(
                        "[CLOSE] event=not_sent venue=binance id={id} client_id={cid} cause=\"{e}\" outcome=rejected"
                    );
                    return Outcome::Rejected;
                }
                Err(e) => {
                    log::warn!(
                        "[CLOSE] event=no_answer venue=binance id={id} client_id={cid} cause=\"{e}\" outcome=unknown (looked up before anything is re-sent)"
                    );
                    return Outcome::Unknown;
                }
            };
            let bad_time = a.status != 200 && error_code(&a.body).is_some_and(|(c, _)| c == BAD_TIMESTAMP);
            if !bad_time || resent {
                break a;
            }
            resent = true;
            // `observe` forgot the offset on the -1021: learn it again now (bounded).
            self.sync_if_needed().await;
            if self.needs_sync() {
                log::warn!(
                    "[CLOSE] event=time_resend venue=binance id={id} client_id={cid} sent=false cause=\"-1021 and the server time could not be learned again\""
                );
                break a;
            }
            ts = self.timestamp_at(entry);
            log::warn!(
                "[CLOSE] event=time_resend venue=binance id={id} client_id={cid} sent=true offset_ms={} (-1021: not processed; server time learned again, same order sent once more)",
                self.lock().offset_ms
            );
        };
        let outcome = place_outcome(a.status, &a.body);
        match (a.status, error_code(&a.body)) {
            (200, _) => log::debug!(
                "[CLOSE] event=answer venue=binance id={id} client_id={cid} http=200 outcome={outcome:?}"
            ),
            (s, code) => {
                self.log_auth(&a, "order");
                let (c, m) = code.unwrap_or((0, String::new()));
                log::warn!(
                    "[CLOSE] event=answer venue=binance id={id} client_id={cid} http={s} code={c} msg=\"{m}\" outcome={}",
                    if outcome == Outcome::Unknown { "unknown" } else { "rejected" }
                );
            }
        }
        outcome
    }
}

impl Broker for Binance {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        self.place_stamped(order).await.outcome
    }

    async fn place_stamped(&self, order: &CloseOrder) -> Placed {
        let mut sent = None;
        let outcome = self.close(order, &mut sent).await;
        if sent.is_some() && outcome != Outcome::Rejected {
            // Something may have executed: the cached balance is stale. It is dropped (the
            // next close reads it again within the budget unless the background refresh,
            // woken now, has it first).
            self.account_changed();
        }
        Placed { outcome, sent }
    }

    async fn lookup(&self, symbol: &str, client_id: &str) -> Lookup {
        if let Some(wait) = self.held_off() {
            return Lookup::Failed(format!("held off after a rate limit for {} ms", wait.as_millis()));
        }
        self.sync_if_needed().await;
        let ts = self.timestamp_at(crate::bus::clock::mono());
        let params = format!(
            "symbol={}&origClientOrderId={}&recvWindow={}&timestamp={ts}",
            enc(symbol),
            enc(client_id),
            self.cfg.recv_window.as_millis()
        );
        match self.signed("GET", "/api/v3/order", &params, self.cfg.query_timeout, ORDER_BODY_MAX).await {
            Ok(a) => {
                if a.status != 200 {
                    self.log_auth(&a, "order_query");
                }
                lookup_outcome(a.status, &a.body)
            }
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }

    /// Per symbol of `BinanceConfig::symbols` and every symbol whose rules are loaded: free +
    /// locked of its base asset. Symbols sharing a base asset (BTCUSDT, BTCFDUSD) each report
    /// the whole balance of that asset. Fails (rather than leave a symbol out) when the rules of
    /// a configured symbol cannot be loaded.
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        for s in &self.cfg.symbols {
            self.rules(s).await.map_err(|e| e.to_string())?;
        }
        let acct = self.account().await.map_err(|e| e.to_string())?;
        let rules: Vec<(String, String)> =
            self.lock().rules.iter().map(|(s, r)| (s.clone(), r.base_asset.clone())).collect();
        let mut out = Vec::with_capacity(rules.len());
        for (sym, base) in rules {
            // An amount that cannot be read is unknown: the symbol is left out (Binance's list
            // is not exhaustive, so reconciliation leaves its positions alone), never
            // reported as zero, which would mark them closed externally.
            let Some((free, locked)) = acct.balance(&base) else {
                log::warn!(
                    "[CLOSE] event=balance_unknown venue=binance symbol={sym} asset={base} cause=\"unreadable amount\" (left out of the holdings)"
                );
                continue;
            };
            if let Ok(s) = Symbol::try_from(sym.as_str()) {
                out.push((s, free.checked_add(locked).unwrap_or(free)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn absent_after(&self) -> Duration {
        self.cfg.recv_window + self.cfg.absent_margin
    }
}
