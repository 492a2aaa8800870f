//! A fake Binance spot REST API on 127.0.0.1 over TLS: signed `POST /api/v3/order` (MARKET
//! only), `GET /api/v3/order`, `GET /api/v3/account`, `GET /api/v3/exchangeInfo` (one symbol,
//! `symbols=[...]` — refused whole with `-1121` when one name is unknown, as Binance does — or
//! the whole list, e.g. with `permissions=SPOT`), `GET /api/v3/ticker/price` (one symbol, a
//! `symbols=[...]` batch — again `-1121` whole for one unknown name — or all) and
//! `GET /api/v3/time`. It can stand in for both `feed.rest_url` and `broker.rest_url`.
//!
//! Like the exchange it checks the `X-MBX-APIKEY` header (-2015), the HMAC-SHA256 `signature`
//! over the query string followed by the body (-1022) and `timestamp` against `recvWindow`
//! (-1021, with an adjustable clock skew); it accepts a client order id again once the first
//! order with it is no longer open (a duplicate of an **open** order is -2010 "Duplicate order
//! sent."), applies `LOT_SIZE`, `NOTIONAL` and the balances (-1013, -2010), and keeps every
//! fill so that tests can count them. An order is processed completely **before** any byte of
//! the answer is written, so it executes even when the client's connection dies.
//!
//! Faults are queued per route ([`FakeBinance::push_fault`]) and each is used by one request.
//! Hand-written HTTP/1.1 with keep-alive: requests follow each other on one connection until
//! the client asks `Connection: close`, a fault ends it, or it stays idle longer than
//! [`FakeBinance::set_idle_close`] (default 60 s); head up to 16 KiB, body by `Content-Length`
//! up to 64 KiB. It counts the TCP connections it accepts and the TLS handshakes it completes
//! ([`FakeBinance::connections`]) and stamps each order's arrival ([`FakeBinance::arrivals`]).
//!
//! `GET /api/v3/klines` (the relay's backfill) answers from a per-(symbol, interval) store the
//! test fills ([`FakeBinance::set_klines`], [`FakeBinance::add_klines`], or
//! `relay_script::CandleScript::store_in`): `startTime` / `endTime` select by open time
//! (inclusive), `limit` defaults to 500 and may not exceed 1000 (`-1130`, 400); rows are
//! Binance's arrays `[open_ms,"o","h","l","c","v",close_ms,"quote_vol",trades,"taker_base",
//! "taker_quote","0"]`, oldest first. Without `startTime` the newest `limit` rows (up to
//! `endTime`) are answered, as Binance does. Faults: [`Route::Klines`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ring::hmac;
use tickguard::core::price::{Price, Qty, SCALE, notional};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::json::quote;
use super::net::{self, AbortOnDrop};

/// The API key the fake accepts by default.
pub const API_KEY: &str = "fake-api-key-0123456789";
/// The API secret the fake verifies signatures with by default.
pub const SECRET: &str = "fake-secret-abcdefghijklmnopqrstuvwxyz";
/// Largest request head read.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read.
pub const MAX_BODY: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A route of the fake, for [`FakeBinance::push_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/v3/order`.
    Order,
    /// `GET /api/v3/order`.
    Query,
    /// `GET /api/v3/account`.
    Account,
    /// `GET /api/v3/exchangeInfo`.
    ExchangeInfo,
    /// `GET /api/v3/time`.
    Time,
    /// `GET /api/v3/ticker/price`.
    Ticker,
    /// `GET /api/v3/klines` (public, unsigned).
    Klines,
}

/// A fault for one request of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with a Binance error body; the request is **not** processed.
    Status(u16),
    /// 429 or 418 with `Retry-After: secs`; not processed.
    RateLimit {
        /// 429 or 418.
        status: u16,
        /// `Retry-After` in seconds.
        retry_after: u64,
    },
    /// HTTP 400 with this code and message; not processed.
    Reject(i64, String),
    /// Processed (an order fills), then the connection stays open without an answer for this
    /// long (or until the client hangs up): the client times out after the venue accepted.
    TimeoutAfterFill(Duration),
    /// Processed, then the connection is closed without an answer.
    LostAfterFill,
    /// Processed, then answered after this delay.
    Slow(Duration),
    /// Processed, then answered with this 5xx status (Binance: "execution status unknown").
    ServerErrorAfterFill(u16),
    /// An order executes only this quantity and is `EXPIRED` (no liquidity).
    Partial(Qty),
    /// An order stays `NEW` (open, nothing executed); see [`FakeBinance::fill_open`].
    StayOpen,
}

/// Binance's kline intervals: `1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M`.
pub const KLINE_INTERVALS: [&str; 16] =
    ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"];

/// The length of a kline interval in ms (`None` for `1M`, whose length varies, and for
/// anything that is not a Binance interval).
pub fn interval_ms(interval: &str) -> Option<u64> {
    const MIN: u64 = 60_000;
    Some(match interval {
        "1s" => 1_000,
        "1m" => MIN,
        "3m" => 3 * MIN,
        "5m" => 5 * MIN,
        "15m" => 15 * MIN,
        "30m" => 30 * MIN,
        "1h" => 60 * MIN,
        "2h" => 120 * MIN,
        "4h" => 240 * MIN,
        "6h" => 360 * MIN,
        "8h" => 480 * MIN,
        "12h" => 720 * MIN,
        "1d" => 1440 * MIN,
        "3d" => 3 * 1440 * MIN,
        "1w" => 7 * 1440 * MIN,
        _ => return None,
    })
}

/// One candle, as `GET /api/v3/klines` answers it and as a `kline` stream event carries it
/// (`k` of the event; see `ws::WsServer::push_kline`). Prices and volumes are kept as the
/// decimal texts the venue would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kline {
    /// Open time, ms (`t`; row field 0).
    pub open_ms: u64,
    /// Close time, ms: open + interval − 1 (`T`; row field 6).
    pub close_ms: u64,
    /// `o`.
    pub open: String,
    /// `h`.
    pub high: String,
    /// `l`.
    pub low: String,
    /// `c`.
    pub close: String,
    /// Base asset volume (`v`).
    pub volume: String,
    /// Quote asset volume (`q`; row field 7).
    pub quote_volume: String,
    /// Number of trades (`n`; row field 8).
    pub trades: u64,
    /// First trade id (`f`; -1 without trades).
    pub first_trade_id: i64,
    /// Last trade id (`L`; -1 without trades).
    pub last_trade_id: i64,
    /// Taker buy base volume (`V`; row field 9).
    pub taker_base: String,
    /// Taker buy quote volume (`Q`; row field 10).
    pub taker_quote: String,
}

impl Kline {
    /// A candle of `interval` opening at `open_ms` (close = open + interval − 1) with these
    /// texts; quote volume and taker volumes `"0"`, no trades (`n` 0, `f`/`L` -1).
    /// Panics on an interval without a fixed length (`1M`) or an unknown one.
    pub fn new(interval: &str, open_ms: u64, o: &str, h: &str, l: &str, c: &str, v: &str) -> Kline {
        let len = interval_ms(interval).expect("a kline interval of fixed length");
        Kline {
            open_ms,
            close_ms: open_ms + len - 1,
            open: o.into(),
            high: h.into(),
            low: l.into(),
            close: c.into(),
            volume: v.into(),
            quote_volume: "0".into(),
            trades: 0,
            first_trade_id: -1,
            last_trade_id: -1,
            taker_base: "0".into(),
            taker_quote: "0".into(),
        }
    }

    /// The REST row: `[open_ms,"o","h","l","c","v",close_ms,"q",n,"V","Q","0"]`.
    pub fn rest_row(&self) -> String {
        format!(
            r#"[{},{},{},{},{},{},{},{},{},{},{},"0"]"#,
            self.open_ms,
            quote(&self.open),
            quote(&self.high),
            quote(&self.low),
            quote(&self.close),
            quote(&self.volume),
            self.close_ms,
            quote(&self.quote_volume),
            self.trades,
            quote(&self.taker_base),
            quote(&self.taker_quote),
        )
    }

    /// The `k` object of a kline event: `{"t":..,"T":..,"s":symbol,"i":interval,"f":..,"L":..,
    /// "o":..,"c":..,"h":..,"l":..,"v":..,"n":..,"x":closed,"q":..,"V":..,"Q":..,"B":"0"}`.
    pub fn event_k(&self, symbol: &str, interval: &str, closed: bool) -> String {
        format!(
            r#"{{"t":{},"T":{},"s":{},"i":{},"f":{},"L":{},"o":{},"c":{},"h":{},"l":{},"v":{},"n":{},"x":{closed},"q":{},"V":{},"Q":{},"B":"0"}}"#,
            self.open_ms,
            self.close_ms,
            quote(symbol),
            quote(interval),
            self.first_trade_id,
            self.last_trade_id,
            quote(&self.open),
            quote(&self.close),
            quote(&self.high),
            quote(&self.low),
            quote(&self.volume),
            self.trades,
            quote(&self.quote_volume),
            quote(&self.taker_base),
            quote(&self.taker_quote),
        )
    }
}

/// A symbol the fake trades.
#[derive(Clone, Debug)]
pub struct SymbolSpec {
    /// `baseAsset`.
    pub base: String,
    /// `quoteAsset`.
    pub quote: String,
    /// `LOT_SIZE.stepSize`.
    pub step: Qty,
    /// `LOT_SIZE.minQty`.
    pub min_qty: Qty,
    /// `NOTIONAL.minNotional` (applies to market orders).
    pub min_notional: Price,
    /// The price market orders fill at.
    pub price: Price,
}

/// One execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Symbol.
    pub symbol: String,
    /// `newClientOrderId` of the order.
    pub client_id: String,
    /// `BUY` or `SELL`.
    pub side: String,
    /// Executed quantity.
    pub qty: Qty,
    /// Price.
    pub price: Price,
    /// The order's id.
    pub order_id: u64,
}

/// An order as the fake keeps it.
#[derive(Clone, Debug)]
pub struct Order {
    /// `orderId`.
    pub id: u64,
    /// Symbol.
    pub symbol: String,
    /// `clientOrderId`.
    pub client_id: String,
    /// `BUY` / `SELL`.
    pub side: String,
    /// `origQty`.
    pub orig: Qty,
    /// `executedQty`.
    pub executed: Qty,
    /// `cummulativeQuoteQty`.
    pub quote: Qty,
    /// `FILLED`, `NEW`, `EXPIRED`, ...
    pub status: String,
    /// `transactTime` (ms).
    pub time: u64,
}

struct State {
    api_key: String,
    secret: String,
    symbols: BTreeMap<String, SymbolSpec>,
    balances: BTreeMap<String, (Qty, Qty)>,
    orders: Vec<Order>,
    fills: Vec<Fill>,
    faults: HashMap<Route, VecDeque<Fault>>,
    requests: Vec<String>,
    queries: Vec<String>,
    raw_balances: BTreeMap<String, (String, String)>,
    listed_only: BTreeMap<String, String>,
    skew_ms: i64,
    next_id: u64,
    signature_errors: usize,
    timestamp_errors: usize,
    tcp_accepted: usize,
    tls_handshakes: usize,
    open_now: usize,
    idle_close: Duration,
    keep_alive: bool,
    arrivals: Vec<(String, String, std::time::Instant)>,
    /// `GET /api/v3/klines` store: (symbol, interval) → open time → candle.
    klines: HashMap<(String, String), BTreeMap<u64, Kline>>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake exchange. Dropping it aborts every task.
pub struct FakeBinance {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
    _refuse: watch::Sender<bool>,
}

impl FakeBinance {
    /// Starts on `127.0.0.1:<ephemeral>` with this TLS config, the default key and secret, no
    /// symbols and no balances.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> FakeBinance {
        let listener = net::bind_loopback().await;
        let port = listener.local_addr().expect("local addr").port();
        let (refuse_tx, refuse_rx) = watch::channel(false);
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                api_key: API_KEY.into(),
                secret: SECRET.into(),
                symbols: BTreeMap::new(),
                balances: BTreeMap::new(),
                orders: Vec::new(),
                fills: Vec::new(),
                faults: HashMap::new(),
                requests: Vec::new(),
                queries: Vec::new(),
                raw_balances: BTreeMap::new(),
                listed_only: BTreeMap::new(),
                skew_ms: 0,
                next_id: 1000,
                signature_errors: 0,
                timestamp_errors: 0,
                tcp_accepted: 0,
                tls_handshakes: 0,
                open_now: 0,
                idle_close: Duration::from_secs(60),
                keep_alive: true,
                arrivals: Vec::new(),
                klines: HashMap::new(),
            }),
        });
        let acceptor = TlsAcceptor::from(tls);
        let s = shared.clone();
        let task = tokio::spawn(net::accept_loop(listener, refuse_rx, listening, move |tcp| {
            serve(s.clone(), acceptor.clone(), tcp)
        }));
        FakeBinance { port, shared, _task: AbortOnDrop(task), _refuse: refuse_tx }
    }

    /// (TCP connections accepted, TLS handshakes completed, connections open now).
    pub fn connections(&self) -> (usize, usize, usize) {
        let st = self.shared.lock();
        (st.tcp_accepted, st.tls_handshakes, st.open_now)
    }

    /// Closes a connection that waits longer than `d` for its next request (as a venue's
    /// front end does with idle keep-alive connections).
    pub fn set_idle_close(&self, d: Duration) {
        self.shared.lock().idle_close = d;
    }

    /// `false`: answer every request with `Connection: close` and close (one request per
    /// connection, as the fake used to).
    pub fn set_keep_alive(&self, on: bool) {
        self.shared.lock().keep_alive = on;
    }

    /// Every `POST /api/v3/order` as it arrived: (symbol, client order id, the instant its
    /// request was read whole).
    pub fn arrivals(&self) -> Vec<(String, String, std::time::Instant)> {
        self.shared.lock().arrivals.clone()
    }

    /// `https://127.0.0.1:<port>` (the TLS config must cover `127.0.0.1`).
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Adds (or replaces) a symbol: `step`/`min_qty` of `LOT_SIZE`, `min_notional`, fill `price`.
    #[allow(clippy::too_many_arguments)] // one positional call per symbol reads best in tests
    pub fn add_symbol(
        &self,
        symbol: &str,
        base: &str,
        quote: &str,
        step: &str,
        min_qty: &str,
        min_notional: &str,
        price: &str,
    ) {
        let q = |s: &str| Qty::parse(s).expect("decimal");
        let p = |s: &str| Price::parse(s).expect("decimal");
        self.shared.lock().symbols.insert(
            symbol.into(),
            SymbolSpec {
                base: base.into(),
                quote: quote.into(),
                step: q(step),
                min_qty: q(min_qty),
                min_notional: p(min_notional),
                price: p(price),
            },
        );
    }

    /// Sets the fill price of `symbol`.
    pub fn set_price(&self, symbol: &str, price: &str) {
        if let Some(s) = self.shared.lock().symbols.get_mut(symbol) {
            s.price = Price::parse(price).expect("decimal");
        }
    }

    /// Sets the free and locked balance of `asset`.
    pub fn set_balance(&self, asset: &str, free: &str, locked: &str) {
        let q = |s: &str| Qty::parse(s).expect("decimal");
        self.shared.lock().balances.insert(asset.into(), (q(free), q(locked)));
    }

    /// Makes the account answer show `asset` with these texts verbatim (e.g.
    /// `"99999999999.00000000"`, beyond what a 64-bit fixed-point quantity holds) while the
    /// exchange keeps trading against the balance set by [`FakeBinance::set_balance`].
    pub fn set_balance_text(&self, asset: &str, free: &str, locked: &str) {
        self.shared.lock().raw_balances.insert(asset.into(), (free.into(), locked.into()));
    }

    /// Lists `symbol` in the whole `exchangeInfo` with this `status` (e.g. `BREAK`) without
    /// trading it.
    pub fn list_symbol(&self, symbol: &str, status: &str) {
        self.shared.lock().listed_only.insert(symbol.into(), status.into());
    }

    /// Removes `symbol` (it becomes an invalid symbol everywhere).
    pub fn remove_symbol(&self, symbol: &str) {
        let mut st = self.shared.lock();
        st.symbols.remove(symbol);
        st.listed_only.remove(symbol);
    }

    /// The query strings (percent-decoded) of the requests of `method path`, oldest first.
    pub fn queries(&self, method: &str, path: &str) -> Vec<String> {
        let want = format!("{method} {path}?");
        self.shared.lock().queries.iter().filter_map(|q| q.strip_prefix(&want).map(str::to_string)).collect()
    }

    /// Free and locked balance of `asset`.
    pub fn balance(&self, asset: &str) -> (Qty, Qty) {
        self.shared.lock().balances.get(asset).copied().unwrap_or((Qty::ZERO, Qty::ZERO))
    }

    /// Queues `fault` for the next request of `route`.
    pub fn push_fault(&self, route: Route, fault: Fault) {
        self.shared.lock().faults.entry(route).or_default().push_back(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Shifts the fake's clock by `ms` (server time = local time + `ms`).
    pub fn set_clock_skew_ms(&self, ms: i64) {
        self.shared.lock().skew_ms = ms;
    }

    /// Replaces the key and secret the fake accepts.
    pub fn set_credentials(&self, api_key: &str, secret: &str) {
        let mut st = self.shared.lock();
        st.api_key = api_key.into();
        st.secret = secret.into();
    }

    /// Every execution so far.
    pub fn fills(&self) -> Vec<Fill> {
        self.shared.lock().fills.clone()
    }

    /// Executions of `client_id`.
    pub fn fills_of(&self, client_id: &str) -> Vec<Fill> {
        self.shared.lock().fills.iter().filter(|f| f.client_id == client_id).cloned().collect()
    }

    /// Total executed quantity on `symbol`.
    pub fn filled_qty(&self, symbol: &str) -> Qty {
        let st = self.shared.lock();
        Qty::from_units(st.fills.iter().filter(|f| f.symbol == symbol).map(|f| f.qty.units()).sum())
    }

    /// Every order so far, oldest first.
    pub fn orders(&self) -> Vec<Order> {
        self.shared.lock().orders.clone()
    }

    /// Request lines received, with the query and body parameters `signature` removed
    /// (`POST /api/v3/order`, `GET /api/v3/account`, ...: path only).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many requests of this method and path arrived.
    pub fn count(&self, method: &str, path: &str) -> usize {
        let want = format!("{method} {path}");
        self.shared.lock().requests.iter().filter(|r| **r == want).count()
    }

    /// Requests refused for a bad signature (-1022) / timestamp (-1021).
    pub fn auth_errors(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.signature_errors, st.timestamp_errors)
    }

    /// Fills an order left open by [`Fault::StayOpen`] (the whole remaining quantity).
    pub fn fill_open(&self, client_id: &str) -> bool {
        let mut st = self.shared.lock();
        let Some(i) = st.orders.iter().rposition(|o| o.client_id == client_id && o.status == "NEW") else {
            return false;
        };
        let o = st.orders[i].clone();
        let Some(spec) = st.symbols.get(&o.symbol).cloned() else { return false };
        let left = o.orig.saturating_sub(o.executed);
        let quote_amt = Qty::from_units(notional(spec.price, left) as i64);
        // The locked base is released as it sells.
        if let Some(b) = st.balances.get_mut(&spec.base) {
            b.1 = b.1.saturating_sub(left);
        }
        let qb = st.balances.entry(spec.quote.clone()).or_insert((Qty::ZERO, Qty::ZERO));
        qb.0 = qb.0.checked_add(quote_amt).unwrap_or(qb.0);
        let ord = &mut st.orders[i];
        ord.executed = ord.orig;
        ord.quote = ord.quote.checked_add(quote_amt).unwrap_or(ord.quote);
        ord.status = "FILLED".into();
        st.fills.push(Fill {
            symbol: o.symbol.clone(),
            client_id: o.client_id.clone(),
            side: o.side.clone(),
            qty: left,
            price: spec.price,
            order_id: o.id,
        });
        true
    }

    /// Replaces the candles `GET /api/v3/klines` serves for `symbol` and `interval` (any
    /// order; one per open time, the last wins). A symbol with stored candles is valid for
    /// that route even when [`FakeBinance::add_symbol`] never named it.
    pub fn set_klines(&self, symbol: &str, interval: &str, klines: Vec<Kline>) {
        let map = klines.into_iter().map(|k| (k.open_ms, k)).collect();
        self.shared.lock().klines.insert((symbol.into(), interval.into()), map);
    }

    /// Adds candles to that store, replacing any with the same open time (a correction).
    pub fn add_klines(&self, symbol: &str, interval: &str, klines: &[Kline]) {
        let mut st = self.shared.lock();
        let map = st.klines.entry((symbol.into(), interval.into())).or_default();
        for k in klines {
            map.insert(k.open_ms, k.clone());
        }
    }

    /// The candles stored for `symbol` and `interval`, oldest first.
    pub fn klines(&self, symbol: &str, interval: &str) -> Vec<Kline> {
        let st = self.shared.lock();
        st.klines
            .get(&(symbol.to_string(), interval.to_string()))
            .map_or_else(Vec::new, |m| m.values().cloned().collect())
    }

    /// Polls `pred` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, pred: impl Fn(&FakeBinance) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ----- HTTP plumbing (also used by the fake Upstox) --------------------------------------

/// A parsed request.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// The raw query (without `?`).
    pub query: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// A query or body parameter (percent-decoded), body first.
    pub fn param(&self, name: &str) -> Option<String> {
        params(&self.body).into_iter().chain(params(&self.query)).find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// `k=v&k=v` → pairs, percent-decoded.
pub fn params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Percent-decodes `%XX` and `+` (a malformed escape is kept).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                if let Some(v) = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request (head up to [`MAX_HEAD`], body by `Content-Length` up to
/// [`MAX_BODY`]); `None` on a malformed or oversized request or a hang-up.
pub async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Option<HttpRequest> {
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    if len > MAX_BODY {
        return None;
    }
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(HttpRequest { method, path, query, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// The reason phrase of a status.
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A whole HTTP/1.1 answer with `Content-Length` that keeps the connection open.
pub fn response_keep(code: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json;charset=UTF-8\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        reason(code),
        body.len()
    )
    .into_bytes()
}

/// A whole HTTP/1.1 answer with `Content-Length` and `Connection: close`.
pub fn response(code: u16, body: &str, retry_after: Option<u64>) -> Vec<u8> {
    let retry = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json;charset=UTF-8\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    )
    .into_bytes()
}

/// Writes `bytes` then closes (TLS close_notify, FIN), bounded.
pub async fn answer<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    if tokio::time::timeout(IO_TIMEOUT, s.write_all(bytes)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
    }
}

/// Holds the connection open without answering for `d` or until the peer hangs up.
pub async fn hold<S: AsyncRead + Unpin>(s: &mut S, d: Duration) {
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(d, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Binance's fixed 8-decimal text of a quantity or price.
pub fn dec8(units: i64) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let a = units.unsigned_abs();
    let s = SCALE as u64;
    format!("{sign}{}.{:08}", a / s, a % s)
}

fn now_ms() -> i64 {
    i64::try_from(net::now_ms()).unwrap_or(i64::MAX)
}

fn err_body(code: i64, msg: &str) -> String {
    format!(r#"{{"code":{code},"msg":{}}}"#, quote(msg))
}

// ----- the exchange ----------------------------------------------------------------------

/// Counts a connection open while it lives.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.open_now = st.open_now.saturating_sub(1);
    }
}

async fn serve(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    {
        let mut st = shared.lock();
        st.tcp_accepted += 1;
        st.open_now += 1;
    }
    let _open = OpenGuard(shared.clone());
    let Ok(Ok(mut tls)) = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await else { return };
    shared.lock().tls_handshakes += 1;
    // Bounded: at most this many requests per connection (far more than any test sends).
    for _ in 0..100_000 {
        let idle = shared.lock().idle_close;
        let Ok(Some(req)) = tokio::time::timeout(idle, read_request(&mut tls)).await else {
            // Idle too long, or the client hung up: close (TLS close_notify, FIN).
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        };
        if !serve_one(&shared, &mut tls, req).await {
            return;
        }
    }
}

/// Serves one request; `true` when the connection stays open for the next.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    tls: &mut S,
    req: HttpRequest,
) -> bool {
    let keep = shared.lock().keep_alive
        && !req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let route = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/api/v3/order") => Some(Route::Order),
        ("GET", "/api/v3/order") => Some(Route::Query),
        ("GET", "/api/v3/account") => Some(Route::Account),
        ("GET", "/api/v3/exchangeInfo") => Some(Route::ExchangeInfo),
        ("GET", "/api/v3/time") => Some(Route::Time),
        ("GET", "/api/v3/ticker/price") => Some(Route::Ticker),
        ("GET", "/api/v3/klines") => Some(Route::Klines),
        _ => None,
    };
    let fault = {
        let mut st = shared.lock();
        if route == Some(Route::Order) {
            let arrived = std::time::Instant::now();
            st.arrivals.push((
                req.param("symbol").unwrap_or_default(),
                req.param("newClientOrderId").unwrap_or_default(),
                arrived,
            ));
        }
        st.requests.push(format!("{} {}", req.method, req.path));
        if !req.path.starts_with("/api/v3/order") && req.path != "/api/v3/account" {
            let q = percent_decode(&req.query);
            st.queries.push(format!("{} {}?{q}", req.method, req.path));
        }
        route.and_then(|r| st.faults.get_mut(&r).and_then(VecDeque::pop_front))
    };
    // Faults that refuse the request before it is processed.
    match &fault {
        Some(Fault::Status(code)) => {
            let body = match code {
                503 => err_body(
                    -1008,
                    "Server is currently overloaded with other requests. Please try again in a few minutes.",
                ),
                _ => err_body(-1000, "An unknown error occurred while processing the request."),
            };
            answer(tls, &response(*code, &body, None)).await;
            return false;
        }
        Some(Fault::RateLimit { status, retry_after }) => {
            let body = err_body(
                -1003,
                "Too many requests; current limit of IP is 6000 request weight per 1 MINUTE.",
            );
            answer(tls, &response(*status, &body, Some(*retry_after))).await;
            return false;
        }
        Some(Fault::Reject(code, msg)) => {
            answer(tls, &response(400, &err_body(*code, msg), None)).await;
            return false;
        }
        _ => {}
    }
    // Processed completely before anything is written.
    let (status, body) = match route {
        None => (404, err_body(-1000, "Not found.")),
        Some(Route::Time) => (200, format!(r#"{{"serverTime":{}}}"#, now_ms() + shared.lock().skew_ms)),
        Some(Route::ExchangeInfo) => exchange_info(shared, &req),
        Some(Route::Ticker) => ticker(shared, &req),
        Some(Route::Klines) => klines(shared, &req),
        Some(r) => match check_signed(shared, &req) {
            Err(e) => e,
            Ok(()) => match r {
                Route::Order => place(shared, &req, fault.as_ref()),
                Route::Query => query(shared, &req),
                _ => account(shared, &req),
            },
        },
    };
    match fault {
        Some(Fault::TimeoutAfterFill(d)) => hold(tls, d).await,
        Some(Fault::LostAfterFill) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        }
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            answer(tls, &response(status, &body, None)).await;
        }
        Some(Fault::ServerErrorAfterFill(code)) => {
            let body = err_body(-1000, "An unknown error occurred while processing the request.");
            answer(tls, &response(code, &body, None)).await;
        }
        _ if keep => {
            let bytes = response_keep(status, &body);
            return matches!(tokio::time::timeout(IO_TIMEOUT, tls.write_all(&bytes)).await, Ok(Ok(())))
                && matches!(tokio::time::timeout(IO_TIMEOUT, tls.flush()).await, Ok(Ok(())));
        }
        _ => answer(tls, &response(status, &body, None)).await,
    }
    false
}

/// Removes the `signature` parameter from a parameter string; returns (rest, signature).
fn strip_signature(s: &str) -> (String, Option<String>) {
    let mut sig = None;
    let rest: Vec<&str> = s
        .split('&')
        .filter(|kv| {
            if let Some(v) = kv.strip_prefix("signature=") {
                sig = Some(v.to_string());
                false
            } else {
                true
            }
        })
        .collect();
    (rest.join("&"), sig)
}

fn check_signed(shared: &Shared, req: &HttpRequest) -> Result<(), (u16, String)> {
    let mut st = shared.lock();
    if req.header("x-mbx-apikey") != Some(st.api_key.as_str()) {
        return Err((401, err_body(-2015, "Invalid API-key, IP, or permissions for action.")));
    }
    let (q, sig_q) = strip_signature(&req.query);
    let (b, sig_b) = strip_signature(&req.body);
    let Some(sig) = sig_q.or(sig_b) else {
        return Err((
            400,
            err_body(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."),
        ));
    };
    // totalParams: the query string concatenated with the body.
    let total = format!("{q}{b}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, st.secret.as_bytes());
    let want: String =
        hmac::sign(&key, total.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    if !sig.eq_ignore_ascii_case(&want) {
        st.signature_errors += 1;
        return Err((400, err_body(-1022, "Signature for this request is not valid.")));
    }
    let ts: Option<i64> = req.param("timestamp").and_then(|t| t.parse().ok());
    let window: i64 = req.param("recvWindow").and_then(|t| t.parse().ok()).unwrap_or(5000);
    let server = now_ms() + st.skew_ms;
    match ts {
        None => Err((
            400,
            err_body(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed."),
        )),
        Some(_) if window > 60_000 => Err((400, err_body(-1131, "recvWindow must be less than 60000"))),
        Some(t) if t > server + 1000 || server - t > window => {
            st.timestamp_errors += 1;
            Err((400, err_body(-1021, "Timestamp for this request is outside of the recvWindow.")))
        }
        Some(_) => Ok(()),
    }
}

fn symbol_json(sym: &str, s: &SymbolSpec) -> String {
    format!(
        r#"{{"symbol":{sym},"status":"TRADING","baseAsset":{base},"baseAssetPrecision":8,"quoteAsset":{quote},"quotePrecision":8,"orderTypes":["LIMIT","MARKET"],"filters":[{{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"}},{{"filterType":"LOT_SIZE","minQty":"{min}","maxQty":"9000.00000000","stepSize":"{step}"}},{{"filterType":"MARKET_LOT_SIZE","minQty":"0.00000000","maxQty":"100.00000000","stepSize":"0.00000000"}},{{"filterType":"NOTIONAL","minNotional":"{notional}","applyMinToMarket":true,"maxNotional":"9000000.00000000","applyMaxToMarket":false,"avgPriceMins":5}}],"permissions":[],"permissionSets":[["SPOT"]]}}"#,
        sym = quote(sym),
        base = quote(&s.base),
        quote = quote(&s.quote),
        min = dec8(s.min_qty.units()),
        step = dec8(s.step.units()),
        notional = dec8(s.min_notional.units()),
    )
}

/// `["A","B"]` (percent-decoded) → names; `None` if it is not such a list.
fn symbol_list(v: &str) -> Option<Vec<String>> {
    let inner = v.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(|s| s.trim().strip_prefix('"').and_then(|s| s.strip_suffix('"')).map(str::to_string))
        .collect()
}

fn exchange_info(shared: &Shared, req: &HttpRequest) -> (u16, String) {
    let st = shared.lock();
    let items: Vec<String> = match (req.param("symbol"), req.param("symbols")) {
        (Some(_), Some(_)) => {
            return (400, err_body(-1101, "Combination of optional parameters invalid."));
        }
        (Some(sym), None) => match st.symbols.get(&sym) {
            Some(s) => vec![symbol_json(&sym, s)],
            None => return (400, err_body(-1121, "Invalid symbol.")),
        },
        (None, Some(list)) => {
            let Some(list) = symbol_list(&list) else {
                return (400, err_body(-1100, "Illegal characters found in parameter 'symbols'."));
            };
            let mut v = Vec::new();
            for sym in &list {
                match st.symbols.get(sym) {
                    Some(s) => v.push(symbol_json(sym, s)),
                    // One unknown name refuses the whole request, as on Binance.
                    None => return (400, err_body(-1121, "Invalid symbol.")),
                }
            }
            v
        }
        (None, None) => {
            // The whole list (`permissions=SPOT` or none: every symbol here is spot).
            let mut v: Vec<String> = st.symbols.iter().map(|(sym, s)| symbol_json(sym, s)).collect();
            for (sym, status) in &st.listed_only {
                v.push(format!(
                    r#"{{"symbol":{},"status":{},"baseAsset":"X","quoteAsset":"USDT","filters":[],"permissionSets":[["SPOT"]]}}"#,
                    quote(sym),
                    quote(status)
                ));
            }
            v
        }
    };
    let body = format!(
        r#"{{"timezone":"UTC","serverTime":{now},"rateLimits":[],"exchangeFilters":[],"symbols":[{}]}}"#,
        items.join(","),
        now = now_ms() + st.skew_ms,
    );
    (200, body)
}

fn ticker(shared: &Shared, req: &HttpRequest) -> (u16, String) {
    let st = shared.lock();
    let item = |sym: &str, s: &SymbolSpec| {
        format!(r#"{{"symbol":{},"price":"{}"}}"#, quote(sym), dec8(s.price.units()))
    };
    match (req.param("symbol"), req.param("symbols")) {
        (Some(_), Some(_)) => (400, err_body(-1101, "Combination of optional parameters invalid.")),
        (Some(sym), None) => match st.symbols.get(&sym) {
            Some(s) => (200, item(&sym, s)),
            None => (400, err_body(-1121, "Invalid symbol.")),
        },
        (None, Some(list)) => {
            let Some(list) = symbol_list(&list) else {
                return (400, err_body(-1100, "Illegal characters found in parameter 'symbols'."));
            };
            let mut v = Vec::new();
            for sym in &list {
                match st.symbols.get(sym) {
                    Some(s) => v.push(item(sym, s)),
                    None => return (400, err_body(-1121, "Invalid symbol.")),
                }
            }
            (200, format!("[{}]", v.join(",")))
        }
        (None, None) => {
            let v: Vec<String> = st.symbols.iter().map(|(sym, s)| item(sym, s)).collect();
            (200, format!("[{}]", v.join(",")))
        }
    }
}

/// `GET /api/v3/klines`: Binance's validation order (symbol, interval, limit, times), then the
/// stored candles by open time.
fn klines(shared: &Shared, req: &HttpRequest) -> (u16, String) {
    let bad = |code: i64, msg: &str| (400, err_body(code, msg));
    let missing = |name: &str| {
        bad(-1102, &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."))
    };
    let Some(sym) = req.param("symbol").filter(|s| !s.is_empty()) else { return missing("symbol") };
    let Some(interval) = req.param("interval").filter(|s| !s.is_empty()) else {
        return missing("interval");
    };
    let number = |name: &str| -> Result<Option<i64>, (u16, String)> {
        match req.param(name) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                bad(
                    -1100,
                    &format!(
                        "Illegal characters found in parameter '{name}'; legal range is '^-?[0-9]{{1,20}}$'."
                    ),
                )
            }),
        }
    };
    let (limit, start, end) = match (number("limit"), number("startTime"), number("endTime")) {
        (Ok(l), Ok(s), Ok(e)) => (l, s, e),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    let st = shared.lock();
    let known = st.symbols.contains_key(&sym) || st.klines.keys().any(|(s, _)| *s == sym);
    if !known {
        return bad(-1121, "Invalid symbol.");
    }
    if !KLINE_INTERVALS.contains(&interval.as_str()) {
        return bad(-1120, "Invalid interval.");
    }
    let limit = match limit {
        None => 500,
        Some(l) if (1..=1000).contains(&l) => l as usize,
        Some(_) => return bad(-1130, "Data sent for parameter 'limit' is not valid."),
    };
    if let (Some(s), Some(e)) = (start, end) {
        if s > e {
            return bad(-1023, "Start time is greater than end time.");
        }
    }
    let lo = start.map_or(0, |s| u64::try_from(s).unwrap_or(0));
    let hi = end.map_or(u64::MAX, |e| u64::try_from(e).unwrap_or(0));
    let empty = BTreeMap::new();
    let map = st.klines.get(&(sym, interval)).unwrap_or(&empty);
    let in_range = map.range(lo..=hi).map(|(_, k)| k);
    let rows: Vec<String> = if start.is_some() {
        in_range.take(limit).map(Kline::rest_row).collect()
    } else {
        // Without startTime Binance answers the newest `limit` (up to endTime), oldest first.
        let mut newest: Vec<String> = in_range.rev().take(limit).map(Kline::rest_row).collect();
        newest.reverse();
        newest
    };
    (200, format!("[{}]", rows.join(",")))
}

fn account(shared: &Shared, req: &HttpRequest) -> (u16, String) {
    let st = shared.lock();
    let omit = req.param("omitZeroBalances").as_deref() == Some("true");
    let items: Vec<String> = st
        .balances
        .iter()
        .filter(|(_, (f, l))| !omit || f.is_positive() || l.is_positive())
        .map(|(a, (f, l))| {
            let (f, l) = match st.raw_balances.get(a) {
                Some((f, l)) => (f.clone(), l.clone()),
                None => (dec8(f.units()), dec8(l.units())),
            };
            format!(r#"{{"asset":{},"free":"{f}","locked":"{l}"}}"#, quote(a))
        })
        .collect();
    (
        200,
        format!(
            r#"{{"makerCommission":10,"takerCommission":10,"canTrade":true,"canWithdraw":true,"canDeposit":true,"accountType":"SPOT","balances":[{}],"permissions":["SPOT"],"uid":1}}"#,
            items.join(",")
        ),
    )
}

fn order_json(o: &Order, fills: Option<&[Fill]>) -> String {
    let fills = fills.map(|f| {
        let items: Vec<String> = f
            .iter()
            .enumerate()
            .map(|(i, f)| {
                format!(
                    r#"{{"price":"{}","qty":"{}","commission":"0.00000000","commissionAsset":"BNB","tradeId":{}}}"#,
                    dec8(f.price.units()),
                    dec8(f.qty.units()),
                    f.order_id * 10 + i as u64
                )
            })
            .collect();
        format!(r#","fills":[{}]"#, items.join(","))
    });
    format!(
        r#"{{"symbol":{},"orderId":{},"orderListId":-1,"clientOrderId":{},"transactTime":{},"price":"0.00000000","origQty":"{}","executedQty":"{}","origQuoteOrderQty":"0.00000000","cummulativeQuoteQty":"{}","status":{},"timeInForce":"GTC","type":"MARKET","side":{},"workingTime":{},"selfTradePreventionMode":"EXPIRE_MAKER"{}}}"#,
        quote(&o.symbol),
        o.id,
        quote(&o.client_id),
        o.time,
        dec8(o.orig.units()),
        dec8(o.executed.units()),
        dec8(o.quote.units()),
        quote(&o.status),
        quote(&o.side),
        o.time,
        fills.unwrap_or_default()
    )
}

fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn place(shared: &Shared, req: &HttpRequest, fault: Option<&Fault>) -> (u16, String) {
    let mut st = shared.lock();
    let bad = |code: i64, msg: &str| (400, err_body(code, msg));
    let Some(sym) = req.param("symbol") else {
        return bad(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.");
    };
    let Some(spec) = st.symbols.get(&sym).cloned() else { return bad(-1121, "Invalid symbol.") };
    let side = req.param("side").unwrap_or_default();
    if side != "BUY" && side != "SELL" {
        return bad(-1100, "Illegal characters found in parameter 'side'.");
    }
    if req.param("type").as_deref() != Some("MARKET") {
        return bad(-1116, "Invalid orderType.");
    }
    let Some(qty) = req.param("quantity").and_then(|q| Qty::parse(&q).ok()).filter(|q| q.is_positive())
    else {
        return bad(
            -1100,
            "Illegal characters found in parameter 'quantity'; legal range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.",
        );
    };
    let client_id = match req.param("newClientOrderId") {
        Some(c) if valid_client_id(&c) => c,
        Some(_) => {
            return bad(
                -1100,
                "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[a-zA-Z0-9-_]{1,36}$'.",
            );
        }
        None => format!("fake-{}", st.next_id),
    };
    if qty < spec.min_qty || (spec.step.is_positive() && qty.units() % spec.step.units() != 0) {
        return bad(-1013, "Filter failure: LOT_SIZE");
    }
    if notional(spec.price, qty) < i128::from(spec.min_notional.units()) {
        return bad(-1013, "Filter failure: NOTIONAL");
    }
    if st
        .orders
        .iter()
        .any(|o| o.client_id == client_id && (o.status == "NEW" || o.status == "PARTIALLY_FILLED"))
    {
        return bad(-2010, "Duplicate order sent.");
    }
    let (sell_asset, buy_asset) = if side == "SELL" {
        (spec.base.clone(), spec.quote.clone())
    } else {
        (spec.quote.clone(), spec.base.clone())
    };
    let cost = |q: Qty| if side == "SELL" { q } else { Qty::from_units(notional(spec.price, q) as i64) };
    let gain = |q: Qty| if side == "SELL" { Qty::from_units(notional(spec.price, q) as i64) } else { q };
    let free = st.balances.get(&sell_asset).map_or(Qty::ZERO, |b| b.0);
    if free < cost(qty) {
        return bad(-2010, "Account has insufficient balance for requested action.");
    }
    let executed = match fault {
        Some(Fault::Partial(q)) => (*q).min(qty),
        Some(Fault::StayOpen) => Qty::ZERO,
        _ => qty,
    };
    let status = match fault {
        Some(Fault::StayOpen) => "NEW",
        _ if executed < qty => "EXPIRED",
        _ => "FILLED",
    };
    st.next_id += 1;
    let id = st.next_id;
    let time = u64::try_from(now_ms() + st.skew_ms).unwrap_or(0);
    {
        let b = st.balances.entry(sell_asset.clone()).or_insert((Qty::ZERO, Qty::ZERO));
        b.0 = b.0.saturating_sub(cost(executed));
        if status == "NEW" {
            // An open order locks what it may sell.
            b.0 = b.0.saturating_sub(cost(qty));
            b.1 = b.1.checked_add(cost(qty)).unwrap_or(b.1);
        }
    }
    let g = st.balances.entry(buy_asset).or_insert((Qty::ZERO, Qty::ZERO));
    g.0 = g.0.checked_add(gain(executed)).unwrap_or(g.0);
    let quote_amt = Qty::from_units(notional(spec.price, executed) as i64);
    let order = Order {
        id,
        symbol: sym.clone(),
        client_id: client_id.clone(),
        side: side.clone(),
        orig: qty,
        executed,
        quote: quote_amt,
        status: status.into(),
        time,
    };
    let mut fills = Vec::new();
    if executed.is_positive() {
        let f = Fill { symbol: sym, client_id, side, qty: executed, price: spec.price, order_id: id };
        st.fills.push(f.clone());
        fills.push(f);
    }
    let full = req.param("newOrderRespType").as_deref() != Some("ACK");
    let body = order_json(&order, full.then_some(fills.as_slice()));
    st.orders.push(order);
    (200, body)
}

fn query(shared: &Shared, req: &HttpRequest) -> (u16, String) {
    let st = shared.lock();
    let Some(sym) = req.param("symbol") else {
        return (
            400,
            err_body(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."),
        );
    };
    let found =
        match (req.param("orderId").and_then(|i| i.parse::<u64>().ok()), req.param("origClientOrderId")) {
            (Some(id), _) => st.orders.iter().rfind(|o| o.id == id && o.symbol == sym),
            (None, Some(cid)) => st.orders.iter().rfind(|o| o.client_id == cid && o.symbol == sym),
            (None, None) => {
                return (
                    400,
                    err_body(
                        -1102,
                        "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!",
                    ),
                );
            }
        };
    match found {
        Some(o) => (200, order_json(o, None)),
        None => (400, err_body(-2013, "Order does not exist.")),
    }
}
