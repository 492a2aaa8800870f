//! A fake Upstox order API on 127.0.0.1 over TLS: `POST /v3/order/place`,
//! `GET /v2/order/history?tag=`, and the two portfolio reads tickguard uses
//! (`/v2/portfolio/long-term-holdings`, `/v2/portfolio/short-term-positions`).
//!
//! Every request needs `Authorization: Bearer <token>` (else 401, `UDAPI100050`). A placed
//! market order completes at the instrument's price unless a fault says otherwise; like
//! Upstox, a duplicate `tag` is **not** rejected. An order is stored before any byte of the
//! answer is written. A tag with no order is answered 400 `UDAPI100010` "Order not found" (or
//! an empty `data` list, [`FakeUpstox::set_empty_when_not_found`]).
//!
//! The relay's backfill: `GET /v3/historical-candle/intraday/{instrument_key}/{unit}/{interval}`
//! (the key percent-decoded, e.g. `NSE_EQ%7CINE848E01016`) answers the candles the test stored
//! for that key, unit and interval ([`FakeUpstox::set_intraday_candles`]), newest first, as
//! `{"status":"success","data":{"candles":[["2025-01-02T09:15:00+05:30",open,high,low,close,
//! volume,oi],...]}}` (time: the candle's open in IST). An instrument with nothing stored under
//! any unit is 400 `UDAPI100011` "Invalid Instrument key"; a unit/interval outside
//! `minutes/1..300`, `hours/1..5`, `days/1` is 400 `UDAPI100036`. Faults:
//! [`FakeUpstox::push_candles_fault`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::fake_binance::{answer, hold, read_request, response};
use super::net::{self, AbortOnDrop};

/// The token the fake accepts by default.
pub const TOKEN: &str = "fake-upstox-access-token";

/// A fault for the next `POST /v3/order/place`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UFault {
    /// Answer this status; the order is **not** placed.
    Status(u16),
    /// 429 with `Retry-After`; not placed.
    RateLimit(u64),
    /// 400 with this error code and message; not placed.
    Reject(String, String),
    /// Placed (and executed), then the connection is closed without an answer.
    LostAfterPlace,
    /// Placed, then no answer for this long.
    TimeoutAfterPlace(Duration),
    /// Placed, then answered with this 5xx.
    ServerErrorAfterPlace(u16),
    /// Placed but stays `open` (nothing filled).
    Open,
    /// Placed, then rejected by the exchange / RMS (`rejected`, nothing filled).
    RmsReject,
}

/// An order as the fake keeps it.
#[derive(Clone, Debug)]
pub struct UOrder {
    /// `order_id`.
    pub order_id: String,
    /// `tag`.
    pub tag: String,
    /// `instrument_token`.
    pub instrument_token: String,
    /// `quantity`.
    pub quantity: i64,
    /// `product`.
    pub product: String,
    /// `transaction_type`.
    pub side: String,
    /// Latest status.
    pub status: String,
    /// `filled_quantity`.
    pub filled: i64,
    /// `average_price`.
    pub average_price: f64,
}

/// One candle of the intraday candle API: `[time, open, high, low, close, volume, oi]`.
#[derive(Clone, Debug, PartialEq)]
pub struct IntradayCandle {
    /// Open time, ms since the epoch (answered as IST text, `2025-01-02T09:15:00+05:30`).
    pub open_ms: u64,
    /// Open.
    pub open: f64,
    /// High.
    pub high: f64,
    /// Low.
    pub low: f64,
    /// Close.
    pub close: f64,
    /// Volume.
    pub volume: u64,
    /// Open interest.
    pub oi: u64,
}

impl IntradayCandle {
    /// A candle with open interest 0.
    pub fn new(open_ms: u64, open: f64, high: f64, low: f64, close: f64, volume: u64) -> IntradayCandle {
        IntradayCandle { open_ms, open, high, low, close, volume, oi: 0 }
    }

    /// The answer's row: `["<IST time>",o,h,l,c,v,oi]`.
    pub fn row(&self) -> Value {
        json!([ist_time(self.open_ms), self.open, self.high, self.low, self.close, self.volume, self.oi])
    }
}

/// `ms` as Upstox writes candle times: `YYYY-MM-DDTHH:MM:SS+05:30` (IST).
pub fn ist_time(ms: u64) -> String {
    let secs = ms / 1000 + 5 * 3600 + 30 * 60;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+05:30", rem / 3600, rem % 3600 / 60, rem % 60)
}

const INTRADAY_PREFIX: &str = "/v3/historical-candle/intraday/";

struct State {
    token: String,
    prices: BTreeMap<String, f64>,
    orders: Vec<UOrder>,
    bodies: Vec<Value>,
    faults: VecDeque<UFault>,
    requests: Vec<String>,
    holdings: HashMap<String, i64>,
    positions: HashMap<String, i64>,
    empty_when_not_found: bool,
    next_id: u64,
    /// Per portfolio read (`true`: long-term holdings): answer this status instead.
    portfolio_status: HashMap<bool, u16>,
    /// Per portfolio read: answer these raw `data` rows instead (unreadable rows).
    portfolio_raw: HashMap<bool, Vec<Value>>,
    /// (instrument key, unit, interval) → candles, as stored.
    intraday: HashMap<(String, String, String), Vec<IntradayCandle>>,
    /// Faults for the next intraday candle requests.
    candle_faults: VecDeque<UFault>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake. Dropping it aborts every task.
pub struct FakeUpstox {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
    _refuse: watch::Sender<bool>,
}

impl FakeUpstox {
    /// Starts on `127.0.0.1:<ephemeral>` with [`TOKEN`] and no instruments.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> FakeUpstox {
        let listener = net::bind_loopback().await;
        let port = listener.local_addr().expect("local addr").port();
        let (refuse_tx, refuse_rx) = watch::channel(false);
        let listening = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                token: TOKEN.into(),
                prices: BTreeMap::new(),
                orders: Vec::new(),
                bodies: Vec::new(),
                faults: VecDeque::new(),
                requests: Vec::new(),
                holdings: HashMap::new(),
                positions: HashMap::new(),
                empty_when_not_found: false,
                next_id: 250_000_000_000_000,
                portfolio_status: HashMap::new(),
                portfolio_raw: HashMap::new(),
                intraday: HashMap::new(),
                candle_faults: VecDeque::new(),
            }),
        });
        let acceptor = TlsAcceptor::from(tls);
        let s = shared.clone();
        let task = tokio::spawn(net::accept_loop(listener, refuse_rx, listening, move |tcp| {
            serve(s.clone(), acceptor.clone(), tcp)
        }));
        FakeUpstox { port, shared, _task: AbortOnDrop(task), _refuse: refuse_tx }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Sets the price market orders on `instrument_token` fill at.
    pub fn set_price(&self, instrument_token: &str, price: f64) {
        self.shared.lock().prices.insert(instrument_token.into(), price);
    }

    /// Replaces the accepted token (a rotation).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.into();
    }

    /// Queues a fault for the next place request.
    pub fn push_fault(&self, f: UFault) {
        self.shared.lock().faults.push_back(f);
    }

    /// Answer an unknown tag with `200` and an empty list instead of 400 `UDAPI100010`.
    pub fn set_empty_when_not_found(&self, on: bool) {
        self.shared.lock().empty_when_not_found = on;
    }

    /// Sets the long-term holding / day position of an instrument.
    pub fn set_portfolio(&self, instrument_token: &str, holding: i64, position: i64) {
        let mut st = self.shared.lock();
        st.holdings.insert(instrument_token.into(), holding);
        st.positions.insert(instrument_token.into(), position);
    }

    /// Answers the long-term holdings (`holdings = true`) or the day positions read with
    /// `status` (`None`: answers normally again).
    pub fn set_portfolio_status(&self, holdings: bool, status: Option<u16>) {
        let mut st = self.shared.lock();
        match status {
            Some(s) => st.portfolio_status.insert(holdings, s),
            None => st.portfolio_status.remove(&holdings),
        };
    }

    /// Answers that portfolio read with these raw rows appended to the real ones (`None`:
    /// the real rows only).
    pub fn set_portfolio_extra_rows(&self, holdings: bool, rows: Option<Vec<Value>>) {
        let mut st = self.shared.lock();
        match rows {
            Some(r) => st.portfolio_raw.insert(holdings, r),
            None => st.portfolio_raw.remove(&holdings),
        };
    }

    /// How many times a portfolio read (`holdings = true`: long-term holdings) was asked.
    pub fn portfolio_reads(&self, holdings: bool) -> usize {
        let path = if holdings {
            "GET /v2/portfolio/long-term-holdings"
        } else {
            "GET /v2/portfolio/short-term-positions"
        };
        self.shared.lock().requests.iter().filter(|r| *r == path).count()
    }

    /// Replaces the candles `GET /v3/historical-candle/intraday/{instrument_key}/{unit}/{interval}`
    /// answers (any order: answered newest first; one per open time, the last wins).
    pub fn set_intraday_candles(
        &self,
        instrument_key: &str,
        unit: &str,
        interval: &str,
        candles: Vec<IntradayCandle>,
    ) {
        let mut by_time: BTreeMap<u64, IntradayCandle> = BTreeMap::new();
        for c in candles {
            by_time.insert(c.open_ms, c);
        }
        self.shared
            .lock()
            .intraday
            .insert((instrument_key.into(), unit.into(), interval.into()), by_time.into_values().collect());
    }

    /// Adds candles to that store (`minutes/1` and others alike), replacing the same open time.
    pub fn add_intraday_candles(
        &self,
        instrument_key: &str,
        unit: &str,
        interval: &str,
        candles: &[IntradayCandle],
    ) {
        let mut st = self.shared.lock();
        let list = st.intraday.entry((instrument_key.into(), unit.into(), interval.into())).or_default();
        for c in candles {
            list.retain(|x| x.open_ms != c.open_ms);
            list.push(c.clone());
        }
        list.sort_by_key(|c| c.open_ms);
    }

    /// Queues a fault for the next intraday candle request (authorised ones only): `Status`,
    /// `RateLimit`, `Reject` refuse it; `LostAfterPlace` closes without an answer;
    /// `TimeoutAfterPlace(d)` holds it unanswered; `ServerErrorAfterPlace(code)` answers that
    /// 5xx; `Open` and `RmsReject` mean nothing here.
    pub fn push_candles_fault(&self, f: UFault) {
        self.shared.lock().candle_faults.push_back(f);
    }

    /// How many intraday candle requests arrived for `instrument_key` (any unit and interval,
    /// authorised or not; the key compared percent-decoded).
    pub fn intraday_reads(&self, instrument_key: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter_map(|r| r.strip_prefix("GET ")?.strip_prefix(INTRADAY_PREFIX))
            .filter(|rest| {
                let key = rest.split('/').next().unwrap_or_default();
                super::fake_binance::percent_decode(key) == instrument_key
            })
            .count()
    }

    /// Every order so far.
    pub fn orders(&self) -> Vec<UOrder> {
        self.shared.lock().orders.clone()
    }

    /// Orders carrying `tag`.
    pub fn orders_with_tag(&self, tag: &str) -> Vec<UOrder> {
        self.shared.lock().orders.iter().filter(|o| o.tag == tag).cloned().collect()
    }

    /// The JSON bodies of every place request that reached the fake (authorised or not).
    pub fn place_bodies(&self) -> Vec<Value> {
        self.shared.lock().bodies.clone()
    }

    /// Request lines (`METHOD path`, no query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Completes an open order at the instrument's price.
    pub fn complete(&self, tag: &str) {
        let mut st = self.shared.lock();
        let prices = st.prices.clone();
        for o in st.orders.iter_mut().filter(|o| o.tag == tag && o.status == "open") {
            o.status = "complete".into();
            o.filled = o.quantity;
            o.average_price = prices.get(&o.instrument_token).copied().unwrap_or(0.0);
        }
    }
}

fn err(code: &str, msg: &str) -> String {
    json!({"status":"error","errors":[{"errorCode":code,"message":msg,"propertyPath":null,"invalidValue":null,"error_code":code,"property_path":null,"invalid_value":null}]}).to_string()
}

fn history_entry(o: &UOrder, status: &str, filled: i64, avg: f64) -> Value {
    json!({
        "exchange": "NSE", "price": 0.0, "product": o.product, "quantity": o.quantity, "status": status,
        "tag": o.tag, "validity": "DAY", "average_price": avg, "disclosed_quantity": 0,
        "exchange_order_id": null, "exchange_timestamp": null, "instrument_token": o.instrument_token,
        "is_amo": false, "status_message": null, "order_id": o.order_id, "order_request_id": "1",
        "order_type": "MARKET", "parent_order_id": "NA", "trading_symbol": "X", "tradingsymbol": "X",
        "order_timestamp": "2026-11-23 10:15:00", "filled_quantity": filled, "transaction_type": o.side,
        "trigger_price": 0.0, "placed_by": "TEST", "variety": "SIMPLE"
    })
}

async fn serve(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let io = Duration::from_secs(10);
    let Ok(Ok(mut tls)) = tokio::time::timeout(io, acceptor.accept(tcp)).await else { return };
    let Ok(Some(req)) = tokio::time::timeout(io, read_request(&mut tls)).await else { return };
    let is_place = req.method == "POST" && req.path == "/v3/order/place";
    let is_candles = req.method == "GET" && req.path.starts_with(INTRADAY_PREFIX);
    let (fault, authorised) = {
        let mut st = shared.lock();
        st.requests.push(format!("{} {}", req.method, req.path));
        if is_place {
            if let Ok(v) = serde_json::from_str::<Value>(&req.body) {
                st.bodies.push(v);
            }
        }
        let ok = req.header("authorization") == Some(format!("Bearer {}", st.token).as_str());
        let fault = match (ok, is_place, is_candles) {
            (true, true, _) => st.faults.pop_front(),
            (true, _, true) => st.candle_faults.pop_front(),
            _ => None,
        };
        (fault, ok)
    };
    if !authorised {
        let body = err("UDAPI100050", "Invalid token used to access API");
        return answer(&mut tls, &response(401, &body, None)).await;
    }
    match &fault {
        Some(UFault::Status(code)) => {
            return answer(&mut tls, &response(*code, &err("UDAPI100500", "Something went wrong"), None))
                .await;
        }
        Some(UFault::RateLimit(secs)) => {
            return answer(
                &mut tls,
                &response(429, &err("UDAPI10005", "Too Many Request Sent"), Some(*secs)),
            )
            .await;
        }
        Some(UFault::Reject(code, msg)) => {
            return answer(&mut tls, &response(400, &err(code, msg), None)).await;
        }
        _ => {}
    }
    let (status, body) = match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/v3/order/place") => place(&shared, &req.body, fault.as_ref()),
        ("GET", "/v2/order/history") => history(&shared, &req),
        ("GET", "/v2/portfolio/long-term-holdings") => portfolio(&shared, true),
        ("GET", "/v2/portfolio/short-term-positions") => portfolio(&shared, false),
        ("GET", p) if is_candles => intraday(&shared, &p[INTRADAY_PREFIX.len()..]),
        _ => (404, err("UDAPI10000", "This request is not supported by Upstox API")),
    };
    match fault {
        Some(UFault::LostAfterPlace) => {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncWriteExt::shutdown(&mut tls))
                    .await;
        }
        Some(UFault::TimeoutAfterPlace(d)) => hold(&mut tls, d).await,
        Some(UFault::ServerErrorAfterPlace(code)) => {
            answer(&mut tls, &response(code, &err("UDAPI100500", "Something went wrong"), None)).await;
        }
        _ => answer(&mut tls, &response(status, &body, None)).await,
    }
}

fn place(shared: &Shared, body: &str, fault: Option<&UFault>) -> (u16, String) {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return (400, err("UDAPI100038", "Invalid input passed to the API"));
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(instrument), Some(product), Some(side), Some(order_type), Some(quantity)) = (
        s("instrument_token"),
        s("product"),
        s("transaction_type"),
        s("order_type"),
        v.get("quantity").and_then(Value::as_i64),
    ) else {
        return (400, err("UDAPI100036", "Invalid Input"));
    };
    if !["D", "I", "MTF"].contains(&product.as_str()) || order_type != "MARKET" || quantity <= 0 {
        return (400, err("UDAPI100036", "Invalid Input"));
    }
    let mut st = shared.lock();
    let Some(price) = st.prices.get(&instrument).copied() else {
        return (400, err("UDAPI1052", "The instrument_token is invalid"));
    };
    st.next_id += 1;
    let (status, filled, avg) = match fault {
        Some(UFault::Open) => ("open", 0, 0.0),
        Some(UFault::RmsReject) => ("rejected", 0, 0.0),
        _ => ("complete", quantity, price),
    };
    let order_id = st.next_id.to_string();
    st.orders.push(UOrder {
        order_id: order_id.clone(),
        tag: s("tag").unwrap_or_default(),
        instrument_token: instrument,
        quantity,
        product,
        side,
        status: status.into(),
        filled,
        average_price: avg,
    });
    (200, json!({"status":"success","data":{"order_ids":[order_id]},"metadata":{"latency":12}}).to_string())
}

fn history(shared: &Shared, req: &super::fake_binance::HttpRequest) -> (u16, String) {
    let st = shared.lock();
    let tag = super::fake_binance::params(&req.query).into_iter().find(|(k, _)| k == "tag").map(|(_, v)| v);
    let Some(tag) = tag else { return (400, err("UDAPI100036", "Invalid Input")) };
    let mut data = Vec::new();
    for o in st.orders.iter().filter(|o| o.tag == tag) {
        data.push(history_entry(o, "put order req received", 0, 0.0));
        data.push(history_entry(o, &o.status, o.filled, o.average_price));
    }
    if data.is_empty() && !st.empty_when_not_found {
        return (400, err("UDAPI100010", "Order not found"));
    }
    (200, json!({"status":"success","data":data}).to_string())
}

fn portfolio(shared: &Shared, holdings: bool) -> (u16, String) {
    let st = shared.lock();
    if let Some(s) = st.portfolio_status.get(&holdings) {
        return (*s, err("UDAPI100500", "Something went wrong"));
    }
    let map = if holdings { &st.holdings } else { &st.positions };
    let mut data: Vec<Value> =
        map.iter().map(|(k, q)| json!({"instrument_token": k, "quantity": q, "product": "D"})).collect();
    if let Some(extra) = st.portfolio_raw.get(&holdings) {
        data.extend(extra.iter().cloned());
    }
    (200, json!({"status":"success","data":data}).to_string())
}

/// `GET /v3/historical-candle/intraday/{key}/{unit}/{interval}`; `rest` is what follows
/// `/intraday/`.
fn intraday(shared: &Shared, rest: &str) -> (u16, String) {
    let parts: Vec<&str> = rest.split('/').collect();
    let [key, unit, interval] = parts[..] else {
        return (404, err("UDAPI10000", "This request is not supported by Upstox API"));
    };
    let key = super::fake_binance::percent_decode(key);
    let max = match unit {
        "minutes" => 300,
        "hours" => 5,
        "days" => 1,
        _ => 0,
    };
    if !interval.parse::<u32>().is_ok_and(|i| (1..=max).contains(&i)) {
        return (400, err("UDAPI100036", "Invalid Input"));
    }
    let st = shared.lock();
    if !st.intraday.keys().any(|(k, _, _)| *k == key) {
        return (400, err("UDAPI100011", "Invalid Instrument key"));
    }
    let rows: Vec<Value> = st
        .intraday
        .get(&(key, unit.to_string(), interval.to_string()))
        .map(|list| list.iter().rev().map(IntradayCandle::row).collect())
        .unwrap_or_default();
    (200, json!({"status":"success","data":{"candles":rows}}).to_string())
}
