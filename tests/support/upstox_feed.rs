//! A fake Upstox on 127.0.0.1: the REST API (feed authorize, LTP quote) and the Market Data
//! Feed V3 WebSocket, both over TLS, for the Upstox integration tests.
//!
//! - `GET /v3/feed/market-data-feed/authorize` with `Authorization: Bearer <token>`: a fresh
//!   `wss://<feed host>:<port>/v3/feed/market-data-feed?requestId=N&code=<uuid>` each call (the
//!   code is single-use); 401 with Upstox's error body for any other token.
//! - `GET /v3/market-quote/ltp?instrument_key=K1,K2,…` (bearer): `data` keyed
//!   `SEGMENT:SYMBOL` with `instrument_token`, `last_price`, `ltq`, `volume`, `cp`; at most 500
//!   keys (400 beyond).
//! - The WebSocket upgrade checks the code: unknown or already used → HTTP 403 before any
//!   WebSocket byte; a second connection while one is open → 403 too (one connection per app and
//!   user; counted in [`UpstoxFake::concurrent_rejections`]).
//! - Requests arrive as JSON in **binary** frames: `sub` (adds keys at a mode, answers with an
//!   `initial_feed` snapshot of the keys' current prices), `unsub`, `change_mode`; a `sub` past
//!   the connection's cap ([`UpstoxFake::set_cap`]) is refused by closing with 1008. Text frames
//!   are recorded and ignored.
//! - Frames are protobuf `FeedResponse`s built with prost from the messages in [`pb`] (declared
//!   from `proto/MarketDataFeedV3.proto`): ticks in each subscriber's mode (`ltpc`, `full` →
//!   `marketFF` or `indexFF` for `NSE_INDEX`, `option_greeks` → `firstLevelWithGreeks`),
//!   `market_info`, or raw bytes; [`UpstoxFake::play`] runs a script of them.
//! - Faults: the API can answer a status, delay or refuse; the feed can refuse or reset new
//!   connections, and drop, stall (go silent, pongs included) or close live ones.
//!
//! Every loop is bounded and every task is aborted when the fake is dropped.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tungstenite::Message;

use super::json::{self, Json};
use super::net::{self, AbortOnDrop};
use super::wsio::WsStream;

/// The protobuf messages of `proto/MarketDataFeedV3.proto`, declared for prost field by field.
pub mod pb {
    #![allow(missing_docs, clippy::enum_variant_names)]
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ltpc {
        #[prost(double, tag = "1")]
        pub ltp: f64,
        #[prost(int64, tag = "2")]
        pub ltt: i64,
        #[prost(int64, tag = "3")]
        pub ltq: i64,
        #[prost(double, tag = "4")]
        pub cp: f64,
        #[prost(message, optional, tag = "5")]
        pub iep: Option<DoubleValue>,
    }
    /// `google.protobuf.DoubleValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DoubleValue {
        #[prost(double, tag = "1")]
        pub value: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MarketLevel {
        #[prost(message, repeated, tag = "1")]
        pub bid_ask_quote: Vec<Quote>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MarketOhlc {
        #[prost(message, repeated, tag = "1")]
        pub ohlc: Vec<Ohlc>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Quote {
        #[prost(int64, tag = "1")]
        pub bid_q: i64,
        #[prost(double, tag = "2")]
        pub bid_p: f64,
        #[prost(int64, tag = "3")]
        pub ask_q: i64,
        #[prost(double, tag = "4")]
        pub ask_p: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OptionGreeks {
        #[prost(double, tag = "1")]
        pub delta: f64,
        #[prost(double, tag = "2")]
        pub theta: f64,
        #[prost(double, tag = "3")]
        pub gamma: f64,
        #[prost(double, tag = "4")]
        pub vega: f64,
        #[prost(double, tag = "5")]
        pub rho: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Ohlc {
        #[prost(string, tag = "1")]
        pub interval: String,
        #[prost(double, tag = "2")]
        pub open: f64,
        #[prost(double, tag = "3")]
        pub high: f64,
        #[prost(double, tag = "4")]
        pub low: f64,
        #[prost(double, tag = "5")]
        pub close: f64,
        #[prost(int64, tag = "6")]
        pub vol: i64,
        #[prost(int64, tag = "7")]
        pub ts: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MarketFullFeed {
        #[prost(message, optional, tag = "1")]
        pub ltpc: Option<Ltpc>,
        #[prost(message, optional, tag = "2")]
        pub market_level: Option<MarketLevel>,
        #[prost(message, optional, tag = "3")]
        pub option_greeks: Option<OptionGreeks>,
        #[prost(message, optional, tag = "4")]
        pub market_ohlc: Option<MarketOhlc>,
        #[prost(double, tag = "5")]
        pub atp: f64,
        #[prost(int64, tag = "6")]
        pub vtt: i64,
        #[prost(double, tag = "7")]
        pub oi: f64,
        #[prost(double, tag = "8")]
        pub iv: f64,
        #[prost(double, tag = "9")]
        pub tbq: f64,
        #[prost(double, tag = "10")]
        pub tsq: f64,
        #[prost(double, tag = "11")]
        pub iep: f64,
        #[prost(double, tag = "12")]
        pub rp: f64,
        #[prost(int64, tag = "13")]
        pub ieq: i64,
        #[prost(int64, tag = "14")]
        pub iiq_total: i64,
        #[prost(int64, tag = "15")]
        pub iiq_m: i64,
        #[prost(bool, tag = "16")]
        pub cas_eligible: bool,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct IndexFullFeed {
        #[prost(message, optional, tag = "1")]
        pub ltpc: Option<Ltpc>,
        #[prost(message, optional, tag = "2")]
        pub market_ohlc: Option<MarketOhlc>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FullFeed {
        #[prost(oneof = "FullFeedUnion", tags = "1, 2")]
        pub full_feed_union: Option<FullFeedUnion>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum FullFeedUnion {
        #[prost(message, tag = "1")]
        MarketFf(MarketFullFeed),
        #[prost(message, tag = "2")]
        IndexFf(IndexFullFeed),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FirstLevelWithGreeks {
        #[prost(message, optional, tag = "1")]
        pub ltpc: Option<Ltpc>,
        #[prost(message, optional, tag = "2")]
        pub first_depth: Option<Quote>,
        #[prost(message, optional, tag = "3")]
        pub option_greeks: Option<OptionGreeks>,
        #[prost(int64, tag = "4")]
        pub vtt: i64,
        #[prost(double, tag = "5")]
        pub oi: f64,
        #[prost(double, tag = "6")]
        pub iv: f64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Feed {
        #[prost(oneof = "FeedUnion", tags = "1, 2, 3")]
        pub feed_union: Option<FeedUnion>,
        #[prost(int32, tag = "4")]
        pub request_mode: i32,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum FeedUnion {
        #[prost(message, tag = "1")]
        Ltpc(Ltpc),
        #[prost(message, tag = "2")]
        FullFeed(FullFeed),
        #[prost(message, tag = "3")]
        FirstLevelWithGreeks(FirstLevelWithGreeks),
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusInfo {
        #[prost(string, tag = "1")]
        pub status: String,
        #[prost(int64, tag = "2")]
        pub updated_time: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MarketInfo {
        #[prost(map = "string, int32", tag = "1")]
        pub segment_status: HashMap<String, i32>,
        #[prost(map = "string, message", tag = "2")]
        pub cas_market_status: HashMap<String, StatusInfo>,
        #[prost(map = "string, message", tag = "3")]
        pub pre_open_session_status: HashMap<String, StatusInfo>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FeedResponse {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(map = "string, message", tag = "2")]
        pub feeds: HashMap<String, Feed>,
        #[prost(int64, tag = "3")]
        pub current_ts: i64,
        #[prost(message, optional, tag = "4")]
        pub market_info: Option<MarketInfo>,
    }
}

/// `MarketStatus` values.
pub mod status {
    pub const PRE_OPEN_START: i32 = 0;
    pub const PRE_OPEN_END: i32 = 1;
    pub const NORMAL_OPEN: i32 = 2;
    pub const NORMAL_CLOSE: i32 = 3;
    pub const CLOSING_START: i32 = 4;
    pub const CLOSING_END: i32 = 5;
}

/// The token the fake accepts until [`UpstoxFake::set_token`] says otherwise.
pub const TOKEN: &str = "test-access-token-1";
/// Time allowed for TLS and request heads.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new feed connection waits for a closing one to finish before it counts as a
/// second concurrent connection.
const CLOSE_GRACE: Duration = Duration::from_millis(750);
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;

/// A fault of the REST API, for requests accepted from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiFault {
    None,
    /// Every request answered with this status (Upstox-style error body).
    Status(u16),
    /// Every request answered after this delay.
    Delay(Duration),
    /// The listener is closed (ECONNREFUSED).
    Refuse,
}

/// A fault of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedFault {
    None,
    /// New connections: refused (listener closed). Live ones: closed (FIN) at once.
    Refuse,
    /// New connections: TCP reset before TLS. Live ones: TCP reset now.
    Reset,
    /// New connections: nothing is ever sent (no pongs either). Live ones: go silent now.
    Stall,
    /// Live ones: a close frame with this code.
    Close(u16),
}

/// A step of a script for [`UpstoxFake::play`].
#[derive(Clone, Debug)]
pub enum Step {
    /// A live tick of `key` at `ltp` to every subscriber of the key, in its mode.
    Tick(String, f64),
    /// A `market_info` frame.
    MarketInfo(Vec<(String, i32)>),
    /// A binary frame as is.
    Raw(Vec<u8>),
    /// A pause.
    Sleep(Duration),
    /// A fault applied to the live connections.
    Fault(FeedFault),
}

#[derive(Clone, Debug)]
struct Instrument {
    symbol: String,
    ltp: f64,
    ltt: i64,
}

/// One feed connection as the fake saw it.
#[derive(Clone, Debug, Default)]
pub struct FeedConn {
    /// The single-use code it presented.
    pub code: String,
    /// Every request (`method`, mode, keys), in order.
    pub requests: Vec<(String, Option<String>, Vec<String>)>,
    /// Subscriptions now: key → mode.
    pub subscribed: BTreeMap<String, String>,
    /// Text frames received (Upstox takes binary only).
    pub texts: usize,
    pub live: bool,
    /// Refused for going over the cap.
    pub over_cap: bool,
}

enum Cmd {
    Frame(Vec<u8>),
    Tick(String),
    Apply(FeedFault),
}

struct State {
    token: String,
    instruments: BTreeMap<String, Instrument>,
    api_fault: ApiFault,
    feed_fault: FeedFault,
    cap: usize,
    market_on_connect: Option<Vec<(String, i32)>>,
    issued: Vec<String>,
    used: Vec<String>,
    next_request: u64,
    api_requests: Vec<String>,
    authorizations: usize,
    unauthorized: usize,
    conns: Vec<FeedConn>,
    cmds: Vec<Option<mpsc::UnboundedSender<Cmd>>>,
    code_rejections: usize,
    concurrent_rejections: usize,
    max_concurrent: usize,
    feed_accepted: usize,
    /// Keys the LTP quote refuses: a request naming any of them is answered 400 whole.
    ltp_refused: Vec<String>,
    /// Intraday 1-minute candles per instrument key (`set_intraday`), oldest first.
    intraday: BTreeMap<String, Vec<super::fake_upstox::IntradayCandle>>,
    intraday_reads: usize,
}

struct Shared {
    state: Mutex<State>,
    feed_host: String,
    feed_port: u16,
    api_refuse: watch::Sender<bool>,
    feed_refuse: watch::Sender<bool>,
    api_listening: Arc<AtomicBool>,
    feed_listening: Arc<AtomicBool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The fake. Dropping it aborts every task.
pub struct UpstoxFake {
    /// Port of the REST API on 127.0.0.1.
    pub api_port: u16,
    /// Port of the feed on 127.0.0.1.
    pub feed_port: u16,
    shared: Arc<Shared>,
    _api: AbortOnDrop,
    _feed: AbortOnDrop,
}

impl UpstoxFake {
    /// Starts the API (TLS config `api_tls`) and the feed (`feed_tls`, handing out URLs for
    /// `feed_host`), accepting [`TOKEN`], cap 5000, no instruments.
    pub async fn start(
        api_tls: Arc<rustls::ServerConfig>,
        feed_tls: Arc<rustls::ServerConfig>,
        feed_host: &str,
    ) -> UpstoxFake {
        let api_l = net::bind_loopback().await;
        let feed_l = net::bind_loopback().await;
        let api_port = api_l.local_addr().expect("addr").port();
        let feed_port = feed_l.local_addr().expect("addr").port();
        let (api_refuse, api_rx) = watch::channel(false);
        let (feed_refuse, feed_rx) = watch::channel(false);
        let api_listening = Arc::new(AtomicBool::new(true));
        let feed_listening = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                token: TOKEN.into(),
                instruments: BTreeMap::new(),
                api_fault: ApiFault::None,
                feed_fault: FeedFault::None,
                cap: 5000,
                market_on_connect: None,
                issued: Vec::new(),
                used: Vec::new(),
                next_request: 1,
                api_requests: Vec::new(),
                authorizations: 0,
                unauthorized: 0,
                conns: Vec::new(),
                cmds: Vec::new(),
                code_rejections: 0,
                concurrent_rejections: 0,
                max_concurrent: 0,
                feed_accepted: 0,
                ltp_refused: Vec::new(),
                intraday: BTreeMap::new(),
                intraday_reads: 0,
            }),
            feed_host: feed_host.into(),
            feed_port,
            api_refuse,
            feed_refuse,
            api_listening: api_listening.clone(),
            feed_listening: feed_listening.clone(),
        });
        let (s, acc) = (shared.clone(), TlsAcceptor::from(api_tls));
        let api = tokio::spawn(net::accept_loop(api_l, api_rx, api_listening, move |tcp| {
            serve_api(s.clone(), acc.clone(), tcp)
        }));
        let (s, acc) = (shared.clone(), TlsAcceptor::from(feed_tls));
        let feed = tokio::spawn(net::accept_loop(feed_l, feed_rx, feed_listening, move |tcp| {
            serve_feed(s.clone(), acc.clone(), tcp)
        }));
        UpstoxFake { api_port, feed_port, shared, _api: AbortOnDrop(api), _feed: AbortOnDrop(feed) }
    }

    /// `https://<host>:<api port>`.
    pub fn rest_url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.api_port)
    }

    /// The token accepted from now on (anything else gets 401).
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.into();
    }

    /// The LTP quote refuses `key`: any request naming it is answered 400 `UDAPI1011` whole.
    pub fn refuse_ltp_key(&self, key: &str) {
        self.shared.lock().ltp_refused.push(key.into());
    }

    /// Sets an instrument's trading symbol (for the LTP answer's `SEGMENT:SYMBOL`) and last
    /// price; later ticks of it use this price.
    pub fn set_price(&self, key: &str, symbol: &str, ltp: f64) {
        let mut st = self.shared.lock();
        let e = st.instruments.entry(key.into()).or_insert(Instrument { symbol: symbol.into(), ltp, ltt: 0 });
        e.symbol = symbol.into();
        e.ltp = ltp;
        e.ltt = net::now_ms() as i64;
    }

    /// The 1-minute intraday candles of `key` (`GET /v3/historical-candle/intraday/{key}/minutes/1`,
    /// answered newest first in IST, as Upstox does).
    pub fn set_intraday(&self, key: &str, candles: Vec<super::fake_upstox::IntradayCandle>) {
        self.shared.lock().intraday.insert(key.into(), candles);
    }

    /// Intraday candle requests answered so far.
    pub fn intraday_reads(&self) -> usize {
        self.shared.lock().intraday_reads
    }

    /// Subscription cap per connection (a `sub` going past it is refused with a close 1008).
    pub fn set_cap(&self, cap: usize) {
        self.shared.lock().cap = cap;
    }

    /// A `market_info` frame sent to every new connection first, as Upstox does.
    pub fn set_market_on_connect(&self, segments: Option<Vec<(&str, i32)>>) {
        self.shared.lock().market_on_connect =
            segments.map(|v| v.into_iter().map(|(s, st)| (s.to_string(), st)).collect());
    }

    pub fn set_api_fault(&self, f: ApiFault) {
        let refuse = f == ApiFault::Refuse;
        self.shared.lock().api_fault = f;
        self.shared.api_refuse.send_replace(refuse);
    }

    /// Fault for feed connections accepted from now on.
    pub fn set_feed_fault(&self, f: FeedFault) {
        let refuse = f == FeedFault::Refuse;
        self.shared.lock().feed_fault = f;
        self.shared.feed_refuse.send_replace(refuse);
    }

    /// Applies `f` to the live feed connections.
    pub fn apply_now(&self, f: FeedFault) {
        self.broadcast(|| Cmd::Apply(f.clone()));
    }

    /// Sets `key`'s price and sends a live tick of it to its subscribers, each in its mode.
    pub fn tick(&self, key: &str, ltp: f64) {
        {
            let mut st = self.shared.lock();
            let sym = key.rsplit('|').next().unwrap_or(key).to_string();
            let e = st.instruments.entry(key.into()).or_insert(Instrument { symbol: sym, ltp, ltt: 0 });
            e.ltp = ltp;
            e.ltt = net::now_ms() as i64;
        }
        self.broadcast(|| Cmd::Tick(key.into()));
    }

    /// Sends a `market_info` frame to every live connection.
    pub fn market_info(&self, segments: &[(&str, i32)]) {
        let v: Vec<(String, i32)> = segments.iter().map(|(s, st)| (s.to_string(), *st)).collect();
        let bytes = market_info_frame(&v);
        self.broadcast(|| Cmd::Frame(bytes.clone()));
    }

    /// Sends raw bytes as a binary frame to every live connection.
    pub fn push_raw(&self, bytes: &[u8]) {
        self.broadcast(|| Cmd::Frame(bytes.to_vec()));
    }

    /// Runs a script.
    pub async fn play(&self, steps: &[Step]) {
        for s in steps {
            match s {
                Step::Tick(k, p) => self.tick(k, *p),
                Step::MarketInfo(v) => {
                    let bytes = market_info_frame(v);
                    self.broadcast(|| Cmd::Frame(bytes.clone()));
                }
                Step::Raw(b) => self.push_raw(b),
                Step::Sleep(d) => tokio::time::sleep(*d).await,
                Step::Fault(f) => self.apply_now(f.clone()),
            }
        }
    }

    /// Every feed connection the fake upgraded, in order.
    pub fn conns(&self) -> Vec<FeedConn> {
        self.shared.lock().conns.clone()
    }
    /// Feed connections open now.
    pub fn live(&self) -> usize {
        self.shared.lock().conns.iter().filter(|c| c.live).count()
    }
    /// Most feed connections open at once.
    pub fn max_concurrent(&self) -> usize {
        self.shared.lock().max_concurrent
    }
    /// Upgrades refused because another connection was open.
    pub fn concurrent_rejections(&self) -> usize {
        self.shared.lock().concurrent_rejections
    }
    /// Upgrades refused for an unknown or used code.
    pub fn code_rejections(&self) -> usize {
        self.shared.lock().code_rejections
    }
    /// Codes handed out by authorize, in order.
    pub fn issued_codes(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
    }
    /// Successful authorizations.
    pub fn authorizations(&self) -> usize {
        self.shared.lock().authorizations
    }
    /// Requests answered 401.
    pub fn unauthorized(&self) -> usize {
        self.shared.lock().unauthorized
    }
    /// Request lines of the API, in order.
    pub fn api_requests(&self) -> Vec<String> {
        self.shared.lock().api_requests.clone()
    }
    /// TCP connections accepted by the feed listener.
    pub fn feed_accepted(&self) -> usize {
        self.shared.lock().feed_accepted
    }
    pub fn feed_listening(&self) -> bool {
        self.shared.feed_listening.load(Ordering::SeqCst)
    }
    pub fn api_listening(&self) -> bool {
        self.shared.api_listening.load(Ordering::SeqCst)
    }

    /// Polls `pred` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, pred: impl Fn(&UpstoxFake) -> bool, timeout: Duration) -> bool {
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

    fn broadcast(&self, mut make: impl FnMut() -> Cmd) {
        let st = self.shared.lock();
        for (c, tx) in st.conns.iter().zip(st.cmds.iter()) {
            if let (true, Some(tx)) = (c.live, tx) {
                let _ = tx.send(make());
            }
        }
    }
}

// ----- frames --------------------------------------------------------------------------------

fn mode_number(mode: &str) -> i32 {
    match mode {
        "full" => 1,
        "option_greeks" => 2,
        "full_d30" => 3,
        _ => 0,
    }
}

/// The `Feed` of one instrument in `mode`.
pub fn feed_for(key: &str, mode: &str, ltp: f64, ltt: i64) -> pb::Feed {
    let ltpc = pb::Ltpc { ltp, ltt, ltq: 1, cp: ltp, iep: None };
    let union = match mode {
        "full" | "full_d30" if key.starts_with("NSE_INDEX|") || key.starts_with("BSE_INDEX|") => {
            pb::FeedUnion::FullFeed(pb::FullFeed {
                full_feed_union: Some(pb::FullFeedUnion::IndexFf(pb::IndexFullFeed {
                    ltpc: Some(ltpc),
                    market_ohlc: None,
                })),
            })
        }
        "full" | "full_d30" => {
            let levels = if mode == "full" { 5 } else { 30 };
            let quotes = (1..=levels)
                .map(|i| pb::Quote {
                    bid_q: 10 * i,
                    bid_p: ltp - 0.05 * i as f64,
                    ask_q: 12 * i,
                    ask_p: ltp + 0.05 * i as f64,
                })
                .collect();
            pb::FeedUnion::FullFeed(pb::FullFeed {
                full_feed_union: Some(pb::FullFeedUnion::MarketFf(pb::MarketFullFeed {
                    ltpc: Some(ltpc),
                    market_level: Some(pb::MarketLevel { bid_ask_quote: quotes }),
                    option_greeks: Some(pb::OptionGreeks::default()),
                    market_ohlc: Some(pb::MarketOhlc {
                        ohlc: vec![pb::Ohlc {
                            interval: "1d".into(),
                            open: ltp,
                            high: ltp,
                            low: ltp,
                            close: ltp,
                            vol: 1000,
                            ts: ltt,
                        }],
                    }),
                    atp: ltp,
                    vtt: 1000,
                    tbq: 5000.0,
                    tsq: 4000.0,
                    ..pb::MarketFullFeed::default()
                })),
            })
        }
        "option_greeks" => pb::FeedUnion::FirstLevelWithGreeks(pb::FirstLevelWithGreeks {
            ltpc: Some(ltpc),
            first_depth: Some(pb::Quote { bid_q: 75, bid_p: ltp - 0.05, ask_q: 75, ask_p: ltp + 0.05 }),
            option_greeks: Some(pb::OptionGreeks {
                delta: 0.5,
                theta: -1.0,
                gamma: 0.01,
                vega: 2.0,
                rho: 0.1,
            }),
            vtt: 1000,
            oi: 10.0,
            iv: 0.2,
        }),
        _ => pb::FeedUnion::Ltpc(ltpc),
    };
    pb::Feed { feed_union: Some(union), request_mode: mode_number(mode) }
}

/// A `FeedResponse` of `type` with these feeds, as bytes.
pub fn feed_frame(kind: i32, feeds: Vec<(String, pb::Feed)>) -> Vec<u8> {
    pb::FeedResponse {
        r#type: kind,
        feeds: feeds.into_iter().collect::<HashMap<_, _>>(),
        current_ts: net::now_ms() as i64,
        market_info: None,
    }
    .encode_to_vec()
}

/// A `market_info` `FeedResponse`, as bytes.
pub fn market_info_frame(segments: &[(String, i32)]) -> Vec<u8> {
    pb::FeedResponse {
        r#type: 2,
        feeds: HashMap::new(),
        current_ts: net::now_ms() as i64,
        market_info: Some(pb::MarketInfo {
            segment_status: segments.iter().cloned().collect(),
            ..pb::MarketInfo::default()
        }),
    }
    .encode_to_vec()
}

// ----- the REST API --------------------------------------------------------------------------

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn response(code: u16, body: &str) -> Vec<u8> {
    let retry = if code == 429 { "Retry-After: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    )
    .into_bytes()
}

fn error_body(code: &str, msg: &str) -> String {
    format!(
        r#"{{"status":"error","errors":[{{"errorCode":{},"message":{},"propertyPath":null,"invalidValue":null,"error_code":{},"property_path":null,"invalid_value":null}}]}}"#,
        json::quote(code),
        json::quote(msg),
        json::quote(code)
    )
}

fn unauthorized() -> Vec<u8> {
    response(401, &error_body("UDAPI100050", "Invalid token used to access API"))
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 2048];
    while buf.len() <= MAX_HEAD {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(None)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn uuid(n: u64) -> String {
    let a = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ net::now_ms();
    format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xfff, n & 0xfff, n)
}

async fn serve_api(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let mut buf = Vec::with_capacity(1024);
    let Ok(Ok(Some(end))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut tls, &mut buf)).await
    else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let line = head.lines().next().unwrap_or("").to_owned();
    let fault = {
        let mut st = shared.lock();
        st.api_requests.push(line.clone());
        st.api_fault.clone()
    };
    let resp = match fault {
        ApiFault::Refuse => return,
        ApiFault::Status(code) => response(code, &error_body("UDAPI100500", "Something went wrong")),
        ApiFault::Delay(d) => {
            tokio::time::sleep(d).await;
            route(&shared, &line, &head)
        }
        ApiFault::None => route(&shared, &line, &head),
    };
    if tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.write_all(&resp)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
}

fn route(shared: &Shared, line: &str, head: &str) -> Vec<u8> {
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut st = shared.lock();
    let bearer = header(head, "authorization").and_then(|v| v.strip_prefix("Bearer "));
    let authorized = bearer == Some(st.token.as_str());
    match (method, path) {
        ("GET", "/v3/feed/market-data-feed/authorize") => {
            if !authorized {
                st.unauthorized += 1;
                return unauthorized();
            }
            let n = st.next_request;
            st.next_request += 1;
            let code = uuid(n);
            st.issued.push(code.clone());
            st.authorizations += 1;
            let url = format!(
                "wss://{}:{}/v3/feed/market-data-feed?requestId={}&code={code}",
                shared.feed_host,
                shared.feed_port,
                uuid(n + 1_000_000)
            );
            response(
                200,
                &format!(
                    r#"{{"status":"success","data":{{"authorized_redirect_uri":{},"authorizedRedirectUri":{}}}}}"#,
                    json::quote(&url),
                    json::quote(&url)
                ),
            )
        }
        ("GET", "/v3/market-quote/ltp") => {
            if !authorized {
                st.unauthorized += 1;
                return unauthorized();
            }
            let keys: Vec<String> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("instrument_key="))
                .flat_map(|v| v.split(','))
                .map(percent_decode)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() || keys.len() > 500 {
                return response(400, &error_body("UDAPI1087", "Invalid instrument key count (1 to 500)"));
            }
            // Like Upstox, one invalid key fails the whole request.
            if keys.iter().any(|k| st.ltp_refused.contains(k)) {
                return response(400, &error_body("UDAPI1011", "Invalid Instrument key"));
            }
            let mut items = Vec::new();
            for k in &keys {
                if let Some(i) = st.instruments.get(k) {
                    let seg = k.split('|').next().unwrap_or("");
                    items.push(format!(
                        r#"{}:{{"last_price":{},"instrument_token":{},"ltq":1,"volume":12345,"cp":{}}}"#,
                        json::quote(&format!("{seg}:{}", i.symbol)),
                        i.ltp,
                        json::quote(k),
                        i.ltp
                    ));
                }
            }
            response(200, &format!(r#"{{"status":"success","data":{{{}}}}}"#, items.join(",")))
        }
        ("GET", p) if p.starts_with("/v3/historical-candle/intraday/") => {
            if !authorized {
                st.unauthorized += 1;
                return unauthorized();
            }
            st.intraday_reads += 1;
            let rest = &p["/v3/historical-candle/intraday/".len()..];
            let Some(key) = rest.strip_suffix("/minutes/1").map(percent_decode) else {
                return response(
                    400,
                    &error_body("UDAPI100036", "Invalid unit or interval (the fake serves minutes/1)"),
                );
            };
            let Some(candles) = st.intraday.get(&key) else {
                return response(400, &error_body("UDAPI100011", "Invalid Instrument key"));
            };
            let rows: Vec<String> = candles.iter().rev().map(|c| c.row().to_string()).collect();
            response(200, &format!(r#"{{"status":"success","data":{{"candles":[{}]}}}}"#, rows.join(",")))
        }
        _ => response(404, &error_body("UDAPI100060", "Resource not Found.")),
    }
}

// ----- the feed ------------------------------------------------------------------------------

/// A stream with bytes already read put back in front.
struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_feed(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    let fault = {
        let mut st = shared.lock();
        st.feed_accepted += 1;
        st.feed_fault.clone()
    };
    if matches!(fault, FeedFault::Reset | FeedFault::Refuse) {
        net::reset(tcp);
        return;
    }
    let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let mut buf = Vec::with_capacity(1024);
    let Ok(Ok(Some(end))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut tls, &mut buf)).await
    else {
        return;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let target = head.lines().next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_owned();
    let code = target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("code="))
        .unwrap_or("")
        .to_owned();
    // The code: issued, never used.
    let code_ok = {
        let mut st = shared.lock();
        let ok = st.issued.contains(&code) && !st.used.contains(&code);
        if ok {
            st.used.push(code.clone());
        } else {
            st.code_rejections += 1;
        }
        ok
    };
    if !code_ok {
        let resp = response(403, &error_body("UDAPI100068", "Invalid or expired authorization code"));
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.write_all(&resp)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        return;
    }
    // One connection per app and user: a connection still closing gets a short grace.
    let deadline = Instant::now() + CLOSE_GRACE;
    while shared.lock().conns.iter().any(|c| c.live) {
        if Instant::now() >= deadline {
            shared.lock().concurrent_rejections += 1;
            let resp = response(403, &error_body("UDAPI100072", "Connection limit exceeded"));
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.write_all(&resp)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let idx = {
        let mut st = shared.lock();
        st.conns.push(FeedConn { code, live: true, ..FeedConn::default() });
        st.cmds.push(Some(tx));
        let live = st.conns.iter().filter(|c| c.live).count();
        st.max_concurrent = st.max_concurrent.max(live);
        st.conns.len() - 1
    };
    let io = Prefixed { prefix: buf, at: 0, inner: tls };
    let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, WsStream::accept(io)).await;
    if let Ok(Ok((mut ws, _))) = ws {
        run_feed(&shared, idx, &mut ws, rx, fault).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), ws.get_mut().shutdown()).await;
    }
    let mut st = shared.lock();
    st.conns[idx].live = false;
    st.cmds[idx] = None;
}

enum After {
    Go,
    End,
}

type FeedIo = Prefixed<tokio_rustls::server::TlsStream<TcpStream>>;

async fn run_feed(
    shared: &Shared,
    idx: usize,
    ws: &mut WsStream<FeedIo>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    fault: FeedFault,
) {
    if fault == FeedFault::Stall {
        ws.discard_output = true;
    }
    let first = shared.lock().market_on_connect.clone();
    if let Some(segs) = first {
        let _ = ws.send(Message::binary(market_info_frame(&segs))).await;
    }
    // Bounded by the peer: each turn consumes bytes it sent or a command the test queued.
    loop {
        tokio::select! {
            r = ws.read_more() => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                loop {
                    match ws.next_buffered() {
                        Ok(Some(msg)) => {
                            let replies = handle(shared, idx, msg);
                            for r in replies {
                                match r {
                                    Reply::Frame(b) => {
                                        let _ = ws.queue(Message::binary(b));
                                    }
                                    Reply::Close(code, why) => {
                                        let _ = ws.close(code, &why).await;
                                        tokio::time::sleep(Duration::from_millis(200)).await;
                                        return;
                                    }
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = ws.flush_out().await;
                            return;
                        }
                    }
                }
                if ws.flush_out().await.is_err() {
                    return;
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return };
                if let After::End = command(shared, idx, ws, cmd).await {
                    return;
                }
            }
        }
    }
}

async fn command(shared: &Shared, idx: usize, ws: &mut WsStream<FeedIo>, cmd: Cmd) -> After {
    match cmd {
        Cmd::Frame(b) => {
            if ws.send(Message::binary(b)).await.is_err() {
                return After::End;
            }
        }
        Cmd::Tick(key) => {
            let frame = {
                let st = shared.lock();
                let Some(mode) = st.conns[idx].subscribed.get(&key).cloned() else { return After::Go };
                let Some(i) = st.instruments.get(&key) else { return After::Go };
                feed_frame(1, vec![(key.clone(), feed_for(&key, &mode, i.ltp, i.ltt))])
            };
            if ws.send(Message::binary(frame)).await.is_err() {
                return After::End;
            }
        }
        Cmd::Apply(f) => match f {
            FeedFault::None => ws.discard_output = false,
            FeedFault::Stall => ws.discard_output = true,
            FeedFault::Refuse => return After::End,
            FeedFault::Reset => {
                let _ = ws.get_mut().inner.get_mut().0.set_zero_linger();
                return After::End;
            }
            FeedFault::Close(code) => {
                let _ = ws.close(code, "closed by the test").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                return After::End;
            }
        },
    }
    After::Go
}

enum Reply {
    Frame(Vec<u8>),
    Close(u16, String),
}

fn handle(shared: &Shared, idx: usize, msg: Message) -> Vec<Reply> {
    let mut st = shared.lock();
    let text = match msg {
        Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
        Message::Text(_) => {
            st.conns[idx].texts += 1;
            return Vec::new();
        }
        _ => return Vec::new(),
    };
    let Some(req) = Json::parse(&text) else { return Vec::new() };
    let method = req.get("method").and_then(Json::as_str).unwrap_or("").to_string();
    let data = req.get("data");
    let mode = data.and_then(|d| d.get("mode")).and_then(Json::as_str).map(str::to_string);
    let keys = data.and_then(|d| d.get("instrumentKeys")).and_then(Json::string_array).unwrap_or_default();
    let cap = st.cap;
    let st = &mut *st;
    let conn = &mut st.conns[idx];
    conn.requests.push((method.clone(), mode.clone(), keys.clone()));
    match method.as_str() {
        "sub" => {
            let mode = mode.unwrap_or_else(|| "ltpc".into());
            let after =
                keys.iter().filter(|k| !conn.subscribed.contains_key(*k)).count() + conn.subscribed.len();
            if after > cap {
                conn.over_cap = true;
                return vec![Reply::Close(
                    1008,
                    format!("subscription limit of {cap} instrument keys exceeded"),
                )];
            }
            for k in &keys {
                conn.subscribed.insert(k.clone(), mode.clone());
            }
            let feeds: Vec<(String, pb::Feed)> = keys
                .iter()
                .filter_map(|k| st.instruments.get(k).map(|i| (k.clone(), feed_for(k, &mode, i.ltp, i.ltt))))
                .collect();
            vec![Reply::Frame(feed_frame(0, feeds))]
        }
        "unsub" => {
            for k in &keys {
                conn.subscribed.remove(k);
            }
            Vec::new()
        }
        "change_mode" => {
            let Some(mode) = mode else { return Vec::new() };
            for k in &keys {
                if let Some(m) = conn.subscribed.get_mut(k) {
                    *m = mode.clone();
                }
            }
            let feeds: Vec<(String, pb::Feed)> = keys
                .iter()
                .filter(|k| conn.subscribed.contains_key(*k))
                .filter_map(|k| st.instruments.get(k).map(|i| (k.clone(), feed_for(k, &mode, i.ltp, i.ltt))))
                .collect();
            vec![Reply::Frame(feed_frame(0, feeds))]
        }
        _ => Vec::new(),
    }
}
