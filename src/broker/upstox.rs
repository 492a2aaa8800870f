//! Upstox: closing orders through the v3 place-order API (`broker.order_url`, by default the
//! HFT host) and look-ups through the order history (`broker.rest_url`), with the bearer token
//! of `broker.token_file` (default `feed.token_file`).
//!
//! Each attempt carries a unique `tag` (its client id). Upstox does not reject a duplicate
//! tag, so the tag is no idempotency key: an attempt whose outcome is unknown is looked up by
//! tag (`GET /v2/order/history?tag=`) before anything else is sent. Upstox keeps order history
//! for the trading session only, so "no order with this tag" proves absence only for an
//! attempt this process sent (or was told of, [`Upstox::note_sent`]) **in the current
//! session** (the IST calendar day) and that never got an order id back; any other empty
//! answer is a failed look-up, the attempt stays unknown and is never re-sent: the position is
//! reconciled against what the account holds instead ([`Broker::holdings`]).
//!
//! A 401 is a credentials problem (`[AUTH]`, error): the order is rejected (not processed) and
//! the token file is read again before the next request, so a token rotated on disk is
//! picked up without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Broker, BrokerError, CloseOrder, Lookup, Secret};
use crate::bus::clock::Clock;
use crate::core::backoff::{BreakerState, CircuitBreaker};
use crate::core::engine::Outcome;
use crate::core::price::{Price, Qty, SCALE};
use crate::core::types::{Side, Symbol};
use crate::feed::upstox::InstrumentMap;
use crate::limits::{BROKER_KEEP_WARM, BROKER_POOL_IDLE_PER_HOST, BROKER_POOL_IDLE_TIMEOUT};
use crate::net::http::{Answer, Connector, Endpoint, HttpError, Pool, Req};

/// Default of `broker.order_url`.
pub const DEFAULT_ORDER_URL: &str = "https://api-hft.upstox.com";
/// Upstox's "order not found" error code.
pub const ORDER_NOT_FOUND: &str = "UDAPI100010";
/// Offset of Indian Standard Time from UTC, ms (UTC+05:30).
pub const IST_OFFSET_MS: i64 = 19_800_000;
const DAY_MS: i64 = 86_400_000;
const BODY_MAX: usize = 1024 * 1024;

/// Upstox's product of a position: delivery, intraday or margin trading facility.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Product {
    /// `D`: delivery.
    #[default]
    D,
    /// `I`: intraday (squared off by the broker near the close).
    I,
    /// `MTF`: margin trading facility.
    Mtf,
}

impl Product {
    /// Parses `D`, `I` or `MTF`.
    pub fn parse(s: &str) -> Option<Product> {
        match s {
            "D" => Some(Product::D),
            "I" => Some(Product::I),
            "MTF" => Some(Product::Mtf),
            _ => None,
        }
    }
    /// `D`, `I` or `MTF`.
    pub fn as_str(self) -> &'static str {
        match self {
            Product::D => "D",
            Product::I => "I",
            Product::Mtf => "MTF",
        }
    }
}

/// The Upstox trading session (IST calendar day number) of a Unix time in ms.
pub fn session_day(unix_ms: i64) -> i64 {
    (unix_ms + IST_OFFSET_MS).div_euclid(DAY_MS)
}

fn wall_ms() -> i64 {
    crate::bus::clock::wall_unix_ms()
}

/// Settings of the Upstox broker.
#[derive(Clone, Debug)]
pub struct UpstoxConfig {
    /// `broker.order_url`: v3 place order.
    pub order: Endpoint,
    /// `broker.rest_url`: order history and portfolio.
    pub rest: Endpoint,
    /// The token file, read again after a 401 (`None`: the token given is all there is).
    pub token_file: Option<PathBuf>,
    /// Symbol ↔ Upstox `instrument_token` (`NSE_EQ|INE...`): the venue-instrument map shared
    /// with the feed session and the LTP poller. A symbol that already is an instrument key
    /// (contains `|`) maps to itself.
    pub instrument_keys: Arc<InstrumentMap>,
    /// Product of positions with none of their own.
    pub default_product: Product,
    /// Product per position id (`[[positions]] product`).
    pub products: HashMap<String, Product>,
    /// Bound of one place request (after it, the outcome is unknown).
    pub order_timeout: Duration,
    /// Bound of one look-up or portfolio request.
    pub query_timeout: Duration,
    /// Added to `order_timeout` for [`Broker::absent_after`].
    pub absent_margin: Duration,
    /// Hold-off after a 429 without `Retry-After`.
    pub hold_off_429: Duration,
    /// Pause before the look-up that follows a placed order (its fill state).
    pub confirm_delay: Duration,
    /// Reads a secret file (the token, again after a 401): the configuration's own reader
    /// (mode checks, trimming) when wired by `runtime::wiring::broker`, else a plain read.
    pub read_secret: fn(&std::path::Path) -> Result<String, String>,
}

/// A plain read of a secret file, trimmed (the default [`UpstoxConfig::read_secret`]).
pub fn read_secret_plain(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() { Err(format!("{}: empty", path.display())) } else { Ok(t.to_string()) }
}

impl UpstoxConfig {
    /// Defaults around the two endpoints: 5 s order / 3 s query timeouts, 5 s margin.
    pub fn new(order: Endpoint, rest: Endpoint) -> UpstoxConfig {
        UpstoxConfig {
            order,
            rest,
            token_file: None,
            instrument_keys: Arc::new(InstrumentMap::default()),
            default_product: Product::D,
            products: HashMap::new(),
            order_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(3),
            absent_margin: Duration::from_secs(5),
            hold_off_429: Duration::from_secs(10),
            confirm_delay: Duration::from_millis(150),
            read_secret: read_secret_plain,
        }
    }

    /// Reads the token file again (after a 401) with [`UpstoxConfig::read_secret`].
    pub fn load_token(&self) -> Result<Secret, String> {
        match &self.token_file {
            Some(p) => (self.read_secret)(p).map(Secret::new),
            None => Err("no broker.token_file (or feed.token_file) to read the token from".into()),
        }
    }
}

/// An Upstox error body's first `errorCode` and `message`.
pub fn error_code(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("errors")?.as_array()?.first()?;
    let code = e.get("errorCode").or_else(|| e.get("error_code"))?.as_str()?.to_string();
    let msg = e.get("message").and_then(Value::as_str).unwrap_or("").to_string();
    Some((code, msg))
}

/// The order ids of a successful place answer (`{"status":"success","data":{"order_ids":[..]}}`).
pub fn placed_ids(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("status")?.as_str()? != "success" {
        return None;
    }
    let data = v.get("data")?;
    let ids: Vec<String> = match data.get("order_ids").and_then(Value::as_array) {
        Some(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        None => vec![data.get("order_id")?.as_str()?.to_string()],
    };
    if ids.is_empty() { None } else { Some(ids) }
}

/// Statuses after which an Upstox order changes no more.
pub const TERMINAL: [&str; 3] = ["complete", "rejected", "cancelled"];

/// What an order-history answer says of a tag: `None` when unreadable, `Some(None)` when no
/// order carries it, else the attempt's outcome over all its orders (a sliced order is
/// several): each order's last history entry is its state; any not terminal → working;
/// all terminal → filled (everything executed), partly filled, or rejected (nothing).
pub fn history_outcome(body: &[u8]) -> Option<Option<Outcome>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let entries = v.get("data")?.as_array()?;
    // order id → (status, quantity, filled, average price), the last entry winning.
    let mut orders: Vec<(String, String, i64, i64, f64)> = Vec::new();
    for e in entries {
        let Some(id) = e.get("order_id").and_then(Value::as_str) else { continue };
        let status = e.get("status").and_then(Value::as_str).unwrap_or("").to_ascii_lowercase();
        let qty = e.get("quantity").and_then(Value::as_i64).unwrap_or(0);
        let filled = e.get("filled_quantity").and_then(Value::as_i64).unwrap_or(0);
        let avg = e.get("average_price").and_then(Value::as_f64).unwrap_or(0.0);
        match orders.iter_mut().find(|o| o.0 == id) {
            Some(o) => *o = (id.to_string(), status, qty, filled, avg),
            None => orders.push((id.to_string(), status, qty, filled, avg)),
        }
    }
    if orders.is_empty() {
        return Some(None);
    }
    let total: i64 = orders.iter().map(|o| o.2).sum();
    let filled: i64 = orders.iter().map(|o| o.3).sum();
    let value: f64 = orders.iter().map(|o| o.3 as f64 * o.4).sum();
    let executed = Qty::from_units(filled.saturating_mul(SCALE));
    let price = if filled > 0 { Price::from_f64(value / filled as f64, 4).ok() } else { None };
    let open = orders.iter().any(|o| !TERMINAL.contains(&o.1.as_str()));
    Some(Some(if open {
        Outcome::Working { executed, price }
    } else if filled <= 0 {
        Outcome::Rejected
    } else if filled >= total {
        Outcome::Filled { executed, price }
    } else {
        Outcome::PartiallyFilled { executed, price }
    }))
}

/// An attempt this process knows the send session of.
#[derive(Clone, Debug)]
struct Attempt {
    /// [`session_day`] of the send.
    day: i64,
    /// Order ids Upstox returned (empty: none seen).
    order_ids: Vec<String>,
}

struct State {
    token: Option<Secret>,
    breaker: CircuitBreaker,
    products: HashMap<String, Product>,
    attempts: HashMap<String, Attempt>,
}

/// The Upstox broker. Share it behind an `Arc`.
pub struct Upstox {
    cfg: UpstoxConfig,
    pool: Pool,
    clock: Clock,
    wall: fn() -> i64,
    state: Mutex<State>,
}

impl std::fmt::Debug for Upstox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstox")
            .field("order", &self.cfg.order.host)
            .field("rest", &self.cfg.rest.host)
            .finish()
    }
}

impl Upstox {
    /// A broker sending through `conn` with `token` (read again from `cfg.token_file` after
    /// a 401).
    pub fn new(cfg: UpstoxConfig, token: Secret, conn: Connector) -> Upstox {
        let products = cfg.products.clone();
        Upstox {
            cfg,
            pool: Pool::new(conn, BROKER_POOL_IDLE_PER_HOST, BROKER_POOL_IDLE_TIMEOUT),
            clock: Clock::new(),
            wall: wall_ms,
            state: Mutex::new(State {
                token: Some(token),
                breaker: CircuitBreaker::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(60)),
                products,
                attempts: HashMap::new(),
            }),
        }
    }

    /// Replaces the wall clock (Unix ms) that dates sessions (tests).
    pub fn with_wall_clock(mut self, wall: fn() -> i64) -> Upstox {
        self.wall = wall;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections (TCP + TLS handshakes) opened so far by this broker's pool.
    pub fn connections_opened(&self) -> u64 {
        self.pool.connections_opened()
    }

    /// Keeps the pooled connections to both hosts (`broker.order_url`, `broker.rest_url`)
    /// open until `stop`: every [`BROKER_KEEP_WARM`] (15 s, under the front ends' idle
    /// timeouts) a `GET /v2/user/profile` on each (read-only; whatever it answers, the
    /// connection stays warm). Nothing is sent while a 429 hold-off lasts.
    pub async fn run_keep_warm(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            // First wait: the start-up requests (holdings, reconciliation) open the connections.
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                _ = tokio::time::sleep(BROKER_KEEP_WARM) => {}
            }
            if self.held_off().is_none() {
                let eps = if self.cfg.order == self.cfg.rest {
                    vec![&self.cfg.order]
                } else {
                    vec![&self.cfg.order, &self.cfg.rest]
                };
                for ep in eps {
                    if let Err(e) =
                        self.send(ep, "GET", "/v2/user/profile", None, self.cfg.query_timeout).await
                    {
                        log::debug!(
                            "[CLOSE] event=keep_warm_failed venue=upstox host={} cause=\"{e}\"",
                            ep.host
                        );
                    }
                }
            }
        }
    }

    /// Sets the product of a position registered at run time.
    pub fn set_product(&self, pos_id: &str, product: Product) {
        self.lock().products.insert(pos_id.to_string(), product);
    }

    /// Tells the broker that the attempt `tag` was sent at `unix_ms` (from the journal, after
    /// a restart), so that a look-up finding nothing can prove it absent in that session.
    pub fn note_sent(&self, tag: &str, unix_ms: i64) {
        self.lock()
            .attempts
            .entry(tag.to_string())
            .or_insert(Attempt { day: session_day(unix_ms), order_ids: Vec::new() });
    }

    /// How long requests are still held off after a 429, if they are.
    pub fn held_off(&self) -> Option<Duration> {
        let now = self.clock.now();
        match self.lock().breaker.state(now) {
            BreakerState::Open { until } => Some(until.since(now)),
            _ => None,
        }
    }

    fn token(&self) -> Result<Secret, BrokerError> {
        if let Some(t) = self.lock().token.clone() {
            return Ok(t);
        }
        let t = self.cfg.load_token().map_err(BrokerError::NoCredential)?;
        self.lock().token = Some(t.clone());
        Ok(t)
    }

    async fn send(
        &self,
        ep: &Endpoint,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let token = match self.token() {
            Ok(t) => t,
            Err(e) => {
                log::error!("[AUTH] venue=upstox event=no_token cause=\"{e}\"");
                return Err(HttpError::Connect {
                    host: ep.host.clone(),
                    port: ep.port,
                    why: "no access token".into(),
                });
            }
        };
        let bearer = format!("Bearer {}", token.expose());
        let mut headers: Vec<(&str, &str)> = vec![("authorization", &bearer), ("accept", "application/json")];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let base = ep.path.split('?').next().unwrap_or("").trim_end_matches('/');
        let full = format!("{base}{path}");
        let req = Req {
            method,
            path: &full,
            headers: &headers,
            body: body.map(Bytes::from),
            timeout,
            max_body: BODY_MAX,
        };
        let a = self.pool.request(ep, req).await?;
        self.observe(&a, method, path);
        Ok(a)
    }

    fn observe(&self, a: &Answer, method: &str, path: &str) {
        let what = path.split('?').next().unwrap_or(path);
        match a.status {
            401 => {
                let (code, msg) = error_code(&a.body).unwrap_or_default();
                log::error!(
                    "[AUTH] venue=upstox request=\"{method} {what}\" http=401 code={code} msg=\"{msg}\" (the access token is invalid or expired; write a fresh one to the token file: it is read again before the next request)"
                );
                if self.cfg.token_file.is_some() {
                    self.lock().token = None;
                }
            }
            429 => {
                let wait = a.retry_after.map_or(self.cfg.hold_off_429, Duration::from_secs);
                log::warn!(
                    "[CLOSE] event=rate_limited venue=upstox http=429 retry_after_ms={} (nothing is sent until then)",
                    wait.as_millis()
                );
                let now = self.clock.now();
                self.lock().breaker.hold_off(now, wait);
            }
            _ => self.lock().breaker.on_success(),
        }
    }

    /// The instrument token of `symbol`.
    fn instrument(&self, symbol: &str) -> Option<String> {
        self.cfg.instrument_keys.key(symbol)
    }

    /// Absence of `tag` in the history proves something only for an attempt known to have
    /// been sent in this session and never acknowledged with an order id.
    fn absent_or_failed(&self, tag: &str) -> Lookup {
        let today = session_day((self.wall)());
        match self.lock().attempts.get(tag) {
            Some(a) if !a.order_ids.is_empty() => Lookup::Failed(format!(
                "tag {tag} was placed as order(s) {} but the order history does not show it: not absent",
                a.order_ids.join(",")
            )),
            Some(a) if a.day == today => Lookup::Absent,
            Some(a) => Lookup::Failed(format!(
                "tag {tag} was sent in an earlier session (IST day {} vs {today}); Upstox keeps order history for the session only, so it is never re-sent: reconcile against positions",
                a.day
            )),
            None => Lookup::Failed(format!(
                "tag {tag} was not sent by this process (before a restart?); its absence cannot be proven without its send session: reconcile against positions"
            )),
        }
    }

    async fn history(&self, tag: &str) -> Lookup {
        if let Some(wait) = self.held_off() {
            return Lookup::Failed(format!("held off after a rate limit for {} ms", wait.as_millis()));
        }
        let path = format!("/v2/order/history?tag={}", enc(tag));
        match self.send(&self.cfg.rest, "GET", &path, None, self.cfg.query_timeout).await {
            Err(e) => Lookup::Failed(e.to_string()),
            Ok(a) if a.status == 200 => match history_outcome(&a.body) {
                None => Lookup::Failed("order history answer is unreadable".into()),
                Some(Some(o)) => Lookup::Found(o),
                Some(None) => self.absent_or_failed(tag),
            },
            Ok(a) => match error_code(&a.body) {
                Some((code, _)) if code == ORDER_NOT_FOUND && (400..500).contains(&a.status) => {
                    self.absent_or_failed(tag)
                }
                Some((code, msg)) => Lookup::Failed(format!("HTTP {} {code}: {msg}", a.status)),
                None => Lookup::Failed(format!("HTTP {}", a.status)),
            },
        }
    }

    async fn portfolio(&self, path: &str) -> Result<Vec<(String, i64)>, BrokerError> {
        let a = self.send(&self.cfg.rest, "GET", path, None, self.cfg.query_timeout).await?;
        if a.status != 200 {
            return Err(BrokerError::Venue {
                what: path.to_string(),
                status: a.status,
                code: error_code(&a.body),
            });
        }
        let v: Value = serde_json::from_slice(&a.body)
            .map_err(|e| BrokerError::Unreadable { what: path.to_string(), why: format!("not JSON: {e}") })?;
        portfolio_rows(path, &v)
    }
}

/// The `(instrument_token, quantity)` rows of a portfolio answer (`{"data":[{..}, ..]}`),
/// quantities signed (a short day position is negative). All or nothing: a row whose
/// instrument or quantity cannot be read fails the whole answer — a number that cannot be
/// read is unknown, never zero, and a list missing a row could be read as "holds none".
pub fn portfolio_rows(path: &str, v: &Value) -> Result<Vec<(String, i64)>, BrokerError> {
    let bad = |why: String| BrokerError::Unreadable { what: path.to_string(), why };
    let rows = v.get("data").and_then(Value::as_array).ok_or_else(|| bad("no data".into()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let Some(key) = r.get("instrument_token").and_then(Value::as_str) else {
            return Err(bad(format!("row {i} has no readable instrument_token (answer partial)")));
        };
        let q = r.get("quantity");
        // Whole units; an integral float (`10.0`) is accepted, nothing else.
        let qty = q.and_then(Value::as_i64).or_else(|| {
            let f = q?.as_f64()?;
            (f.fract() == 0.0 && f.abs() < 1e15).then_some(f as i64)
        });
        let Some(qty) = qty else {
            return Err(bad(format!("row {i} ({key}) has no readable quantity (answer partial)")));
        };
        out.push((key.to_string(), qty));
    }
    Ok(out)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn enc(s: &str) -> String {
    use std::fmt::Write as _;
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

impl Upstox {
    /// The close itself ([`Broker::place_stamped`]); `sent` gets the time the order request
    /// is handed to its connection.
    async fn close(&self, order: &CloseOrder, sent: &mut Option<tokio::time::Instant>) -> Outcome {
        let (id, tag, sym) = (&order.pos_id, order.client_id.as_str(), order.symbol.as_str());
        if let Some(wait) = self.held_off() {
            log::warn!(
                "[CLOSE] event=held_off venue=upstox id={id} client_id={tag} remaining_ms={} (rate limited; not sent)",
                wait.as_millis()
            );
            return Outcome::Rejected;
        }
        let Some(instrument) = self.instrument(sym) else {
            log::error!(
                "[CLOSE] event=refused venue=upstox id={id} symbol={sym} client_id={tag} cause=\"no instrument_token for the symbol\""
            );
            return Outcome::Rejected;
        };
        let units = order.qty.units();
        let quantity = if units > 0 && units % SCALE == 0 { i32::try_from(units / SCALE).ok() } else { None };
        let Some(quantity) = quantity else {
            log::error!(
                "[CLOSE] event=refused venue=upstox id={id} client_id={tag} qty={} cause=\"Upstox quantities are whole units\"",
                order.qty
            );
            return Outcome::Rejected;
        };
        let product = self.lock().products.get(id.as_str()).copied().unwrap_or(self.cfg.default_product);
        let side = match order.side {
            Side::Long => "SELL",
            Side::Short => "BUY",
        };
        let body = json!({
            "quantity": quantity,
            "product": product.as_str(),
            "validity": "DAY",
            "price": 0,
            "tag": tag,
            "instrument_token": instrument,
            "order_type": "MARKET",
            "transaction_type": side,
            "disclosed_quantity": 0,
            "trigger_price": 0,
            "is_amo": false,
            "slice": true,
        })
        .to_string();
        // Dated before sending: a look-up after a lost answer must know the send session.
        let day = session_day((self.wall)());
        self.lock().attempts.insert(tag.to_string(), Attempt { day, order_ids: Vec::new() });
        *sent = Some(self.clock.instant(self.clock.now()));
        let answer =
            self.send(&self.cfg.order, "POST", "/v3/order/place", Some(body), self.cfg.order_timeout).await;
        let a = match answer {
            Ok(a) => a,
            Err(e) if e.not_sent() => {
                log::warn!(
                    "[CLOSE] event=not_sent venue=upstox id={id} client_id={tag} cause=\"{e}\" outcome=rejected"
                );
                return Outcome::Rejected;
            }
            Err(e) => {
                log::warn!(
                    "[CLOSE] event=no_answer venue=upstox id={id} client_id={tag} cause=\"{e}\" outcome=unknown (looked up by tag before anything is re-sent)"
                );
                return Outcome::Unknown;
            }
        };
        match a.status {
            200 => {
                let Some(ids) = placed_ids(&a.body) else {
                    log::warn!(
                        "[CLOSE] event=answer venue=upstox id={id} client_id={tag} http=200 outcome=unknown cause=\"unreadable answer\""
                    );
                    return Outcome::Unknown;
                };
                log::info!(
                    "[CLOSE] event=placed venue=upstox id={id} client_id={tag} order_ids={}",
                    ids.join(",")
                );
                if let Some(at) = self.lock().attempts.get_mut(tag) {
                    at.order_ids = ids;
                }
                tokio::time::sleep(self.cfg.confirm_delay).await;
                match self.history(tag).await {
                    Lookup::Found(o) => o,
                    _ => Outcome::Working { executed: Qty::ZERO, price: None },
                }
            }
            500..=599 | 408 => {
                log::warn!(
                    "[CLOSE] event=answer venue=upstox id={id} client_id={tag} http={} outcome=unknown",
                    a.status
                );
                Outcome::Unknown
            }
            400..=499 => {
                let (code, msg) = error_code(&a.body).unwrap_or_default();
                log::warn!(
                    "[CLOSE] event=answer venue=upstox id={id} client_id={tag} http={} code={code} msg=\"{msg}\" outcome=rejected",
                    a.status
                );
                Outcome::Rejected
            }
            s => {
                log::warn!(
                    "[CLOSE] event=answer venue=upstox id={id} client_id={tag} http={s} outcome=unknown"
                );
                Outcome::Unknown
            }
        }
    }
}

impl Broker for Upstox {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        self.place_stamped(order).await.outcome
    }

    async fn place_stamped(&self, order: &CloseOrder) -> super::Placed {
        let mut sent = None;
        let outcome = self.close(order, &mut sent).await;
        super::Placed { outcome, sent }
    }

    async fn lookup(&self, _symbol: &str, client_id: &str) -> Lookup {
        self.history(client_id).await
    }

    /// Net quantity per symbol of the venue-instrument map: long-term holdings plus the day's
    /// positions (`/v2/portfolio/long-term-holdings`, `/v2/portfolio/short-term-positions`),
    /// signed (a short is negative). Every symbol the map knows is listed, at zero when neither
    /// list holds its key (both lists are the whole account); an instrument held under no known
    /// symbol is listed under its key. All or nothing: when either call fails or a row cannot
    /// be read, the answer is an error (a partial answer must never read as "holds none").
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        if let Some(wait) = self.held_off() {
            return Err(format!("held off after a rate limit for {} ms", wait.as_millis()));
        }
        let mut by_key: HashMap<String, i64> = HashMap::new();
        for path in ["/v2/portfolio/long-term-holdings", "/v2/portfolio/short-term-positions"] {
            for (k, q) in self.portfolio(path).await.map_err(|e| e.to_string())? {
                let e = by_key.entry(k).or_insert(0);
                *e = e.checked_add(q).ok_or_else(|| format!("{path}: quantity overflow"))?;
            }
        }
        let units = |q: i64| {
            q.checked_mul(SCALE).map(Qty::from_units).ok_or_else(|| format!("quantity {q} out of range"))
        };
        let known = self.cfg.instrument_keys.entries();
        let mut out: Vec<(Symbol, Qty)> = Vec::new();
        for (sym, key) in &known {
            let q = by_key.get(key).copied().unwrap_or(0);
            if let Ok(s) = Symbol::try_from(sym.as_str()) {
                out.push((s, units(q)?));
            }
        }
        // Instruments held under no known symbol are reported by their key (a symbol that is
        // itself an instrument key names them that way).
        for (key, q) in by_key {
            if !known.iter().any(|(_, k)| *k == key) {
                if let Ok(s) = Symbol::try_from(key.as_str()) {
                    out.push((s, units(q)?));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        Ok(out)
    }

    fn absent_after(&self) -> Duration {
        self.cfg.order_timeout + self.cfg.absent_margin
    }

    /// False: every symbol the venue-instrument map knows is listed explicitly (zero
    /// included), so a symbol missing from the list has no instrument key here: unknown.
    fn holdings_exhaustive(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portfolio_rows_are_signed_and_all_or_nothing() {
        let ok = json!({"data":[
            {"instrument_token":"NSE_EQ|A","quantity":10},
            {"instrument_token":"NSE_EQ|B","quantity":-4},
            {"instrument_token":"NSE_EQ|C","quantity":3.0}]});
        assert_eq!(
            portfolio_rows("/p", &ok).expect("rows"),
            vec![("NSE_EQ|A".to_string(), 10), ("NSE_EQ|B".to_string(), -4), ("NSE_EQ|C".to_string(), 3)]
        );
        for bad in [
            json!({"data":[{"instrument_token":"NSE_EQ|A","quantity":"10"}]}),
            json!({"data":[{"instrument_token":"NSE_EQ|A"}]}),
            json!({"data":[{"instrument_token":"NSE_EQ|A","quantity":2.5}]}),
            json!({"data":[{"quantity":10}]}),
            json!({"data":null}),
        ] {
            assert!(portfolio_rows("/p", &bad).is_err(), "{bad}");
        }
    }
}
