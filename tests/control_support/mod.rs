//! An appliance in the test process (engine task, paper broker, control plane on a loopback
//! port) and a small HTTP/1.1 client over std sockets, for the `control_*` tests.
#![allow(dead_code)]

pub mod contract;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tickguard::broker::paper::Paper;
use tickguard::control::{self, Control, ControlConfig};
use tickguard::core::engine::{EngineConfig, FeedEvent};
use tickguard::core::price::Price;
use tickguard::core::types::InstrumentId;
use tickguard::runtime::board::PriceBoard;
use tickguard::runtime::clock::Clock;
use tickguard::runtime::{AppEngine, EngineHandle, engine_task};
use tokio::sync::watch;

/// The token every test appliance uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Thresholds short enough for tests.
pub fn fast_engine() -> EngineConfig {
    EngineConfig {
        stale_after: Duration::from_millis(800),
        expire_after: Duration::from_secs(3),
        blind_grace: Duration::from_millis(500),
        sweep_every: Duration::from_millis(100),
        max_close_attempts: 3,
        retry_initial: Duration::from_millis(150),
        retry_max: Duration::from_millis(300),
        jitter: 0.2,
        lookup_every: Duration::from_millis(300),
        rest_enabled: false,
        seed: 7,
        ..EngineConfig::default()
    }
}

/// A running appliance.
pub struct Appliance {
    /// The API's address.
    pub addr: SocketAddr,
    /// The engine.
    pub handle: EngineHandle,
    /// The runtime the engine and the broker run on.
    pub rt: tokio::runtime::Runtime,
    /// Prices the paper broker fills at.
    pub board: Arc<PriceBoard>,
    /// The engine's clock.
    pub clock: Clock,
    /// The paper broker's network (false: every order fails).
    pub network_up: Arc<AtomicBool>,
    /// The control plane.
    pub control: Option<Control>,
    feed_up: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Appliance {
    /// An appliance with `cfg` adjusted by `f` (listen address defaults to an ephemeral port).
    pub fn start_with(engine_cfg: EngineConfig, f: impl FnOnce(&mut ControlConfig)) -> Appliance {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = Clock::new();
        let engine: Box<AppEngine> = Box::new(AppEngine::new(engine_cfg, clock.now()));
        let (stop, stop_rx) = watch::channel(false);
        let board = Arc::new(PriceBoard::new(tickguard::limits::MAX_INSTRUMENTS));
        let network_up = Arc::new(AtomicBool::new(true));
        let handle = {
            let _g = rt.enter();
            let (task, handle, broker_rx) = engine_task(engine, clock, stop_rx);
            rt.spawn(task.run());
            let paper = Arc::new(Paper::new(Duration::from_millis(50), network_up.clone(), board.clone()));
            rt.spawn(tickguard::runtime::executor::run_executor(
                paper,
                broker_rx,
                handle.clone(),
                None,
                clock,
            ));
            handle
        };
        rt.block_on(handle.feed(FeedEvent::SubscribedAll));
        let mut cfg = ControlConfig::new("127.0.0.1:0".parse().expect("addr"), Some(TOKEN.to_string()));
        f(&mut cfg);
        let control = control::spawn(cfg, handle.clone(), None).expect("control plane");
        let addr = control.local_addr().expect("bound");
        Appliance {
            addr,
            handle,
            rt,
            board,
            clock,
            network_up,
            control: Some(control),
            feed_up: AtomicBool::new(true),
            stop,
        }
    }

    /// The default test appliance.
    pub fn start() -> Appliance {
        Appliance::start_with(fast_engine(), |_| {})
    }

    /// The instrument id of `symbol` (interned when new).
    pub fn instrument(&self, symbol: &str) -> InstrumentId {
        let s = symbol.to_string();
        self.rt
            .block_on(self.handle.inspect(move |e, _| e.cache().lookup(&s)))
            .flatten()
            .unwrap_or_else(|| panic!("{symbol} is not an instrument yet (register a position on it first)"))
    }

    /// A live tick with this bid.
    pub fn tick(&self, symbol: &str, bid: &str) {
        let id = self.instrument(symbol);
        let p = Price::parse(bid).expect("price");
        tickguard::runtime::sim::publish(&self.handle, &self.board, &self.clock, id, p);
    }

    /// A feed event.
    pub fn feed(&self, ev: FeedEvent) {
        match ev {
            FeedEvent::SubscribedAll | FeedEvent::Subscribed(_) => self.feed_up.store(true, Ordering::SeqCst),
            FeedEvent::Disconnected => self.feed_up.store(false, Ordering::SeqCst),
            _ => {}
        }
        self.rt.block_on(self.handle.feed(ev));
    }

    /// A request to the API.
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        http(self.addr, method, path, headers, body.map(str::as_bytes))
    }

    /// A request with the bearer token.
    pub fn authed(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        self.req(method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], body)
    }

    /// GET, expecting JSON.
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.req("GET", path, &[], None);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Registers a long position through the API.
    pub fn register(&self, id: &str, symbol: &str, entry: &str, sl: &str, tp: &str) -> Resp {
        let body = format!(
            r#"{{"id":"{id}","symbol":"{symbol}","side":"long","qty":"10","entry":"{entry}","stop_loss":"{sl}","take_profit":"{tp}"}}"#
        );
        let r = self.authed("POST", "/api/v1/positions", Some(&body));
        self.subscribe(symbol);
        r
    }

    /// The feed subscribes `symbol` (as a live session does for a newly registered one), when
    /// the feed is up.
    pub fn subscribe(&self, symbol: &str) {
        let s = symbol.to_string();
        let id = self.rt.block_on(self.handle.inspect(move |e, _| e.cache().lookup(&s))).flatten();
        if let (Some(id), true) = (id, self.feed_up.load(Ordering::SeqCst)) {
            self.rt.block_on(self.handle.feed(FeedEvent::Subscribed(id)));
        }
    }

    /// Waits until `f` holds for the status JSON, or panics after `within`.
    pub fn wait_status(&self, within: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.get_json("/api/v1/monitoring/status");
            if f(&v) {
                return v;
            }
            assert!(t0.elapsed() < within, "timed out waiting for {what}: {v}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The position's JSON.
    pub fn position(&self, id: &str) -> Value {
        self.get_json(&format!("/api/v1/positions/{id}"))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.control.take();
        let _ = self.stop.send(true);
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Parses one response from `raw` (which holds exactly one response).
pub fn parse_response(raw: &[u8]) -> Resp {
    parse_response_to(raw, "GET")
}

/// Parses one response to a request of `method` (a `HEAD` answer has no body).
pub fn parse_response_to(raw: &[u8], method: &str) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = raw[split + 4..].to_vec();
    let resp = Resp { status, headers, body };
    if let Some(n) =
        resp.header("content-length").and_then(|v| v.parse::<usize>().ok()).filter(|_| method != "HEAD")
    {
        assert_eq!(resp.body.len(), n, "Content-Length matches the body");
    }
    resp
}

/// One request over a fresh connection (`Connection: close`), read to the end.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    parse_response_to(&raw, method)
}

/// Raw bytes to the server; returns whatever it answers before closing (or the timeout).
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}
