//! The LAN relay's upstream side through the real binary (`tickguard run` with `[relay]`):
//! its own fake Binance WebSocket (refused or cut without touching the guard's feed) and its
//! own fake REST klines, 1 s candles on the wall clock, real WebSocket clients on loopback.
//!
//! - an upstream outage backfilled from REST (every closed candle once, in order, announced
//!   `stale` then `live`), and the same with REST failing too (an explicit `gap`);
//! - a kline that never arrives (closed from trades, then corrected by REST with revision 2);
//! - duplicates (a closing kline after REST delivered the same bar) filtered and counted;
//! - a slow client (closed with 1008 and its cursor; a reading client unaffected);
//! - the upstream's circuit breaker opening and closing (`/metrics`, `/ready`).
//!
//! The tests run one at a time (they are timed on the wall clock); each is bounded.

#[path = "support/relay.rs"]
mod relay_client;
mod support;

use relay_client::{RelayConf, http_get};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::app::App;
use support::fake_binance::{self, FakeBinance, Kline, Route};
use support::guard::{GuardWorld, free_port};
use support::relay_script::CandleScript;
use support::ws::{Fault, WsServer};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The tests are timed on the wall clock: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Sleeps until wall time `t_ms` (Unix ms).
async fn sleep_until_ms(t_ms: u64) {
    let now = now_ms();
    if t_ms > now {
        tokio::time::sleep(Duration::from_millis(t_ms - now)).await;
    }
}

/// The values of the bar of `sym` opening at `open` (what the venue "traded").
fn bar_values(sym: &str, open: u64) -> [String; 5] {
    let salt = sym.bytes().map(u64::from).sum::<u64>() % 7;
    let base = 100 + (open / 1000 + salt) % 50;
    [
        format!("{base}.5"),
        format!("{}.25", base + 2),
        format!("{}.75", base - 2),
        format!("{}.5", base + 1),
        "4".to_string(),
    ]
}

/// Plays one bar (`trades`, open updates and, when `close`, the closing kline) on the
/// upstream, storing it in REST first when `store`.
fn play_bar(up: &WsServer, rest: &FakeBinance, sym: &str, open: u64, close: bool, store: bool) {
    let v = bar_values(sym, open);
    let mut s = CandleScript::new(up, sym, "1s").close(close);
    if store {
        s = s.store_in(rest);
    }
    s.play(&[(open, &v[0], &v[1], &v[2], &v[3], &v[4])]);
}

/// When, after a bar ends, the market plays it (its trades, updates and closing kline).
const PLAY_AT_MS: u64 = 50;
/// `relay.close_delay_s` of the tests, in ms.
const CLOSE_DELAY_MS: u64 = 500;

/// The bar-per-second market: just after each second ends (+ [`PLAY_AT_MS`]) it plays the
/// bar of that second for every symbol (trades, open updates, the closing kline), storing it
/// in REST first; a quote pump every 200 ms keeps the upstream from going silent and the
/// symbols fresh.
struct Market {
    up: Arc<WsServer>,
    rest: Arc<FakeBinance>,
    /// Bars are not played (the test plays them itself).
    paused: AtomicBool,
    /// Bars are pushed on the WebSocket (else only stored in REST).
    push: AtomicBool,
    /// Open times played (or stored) per symbol.
    played: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl Market {
    fn record(&self, sym: &str, open: u64) {
        self.played.lock().unwrap().entry(sym.to_string()).or_default().push(open);
    }
    fn played(&self, sym: &str) -> Vec<u64> {
        self.played.lock().unwrap().get(sym).cloned().unwrap_or_default()
    }
}

fn start_market(m: Arc<Market>, symbols: Vec<String>) -> (JoinHandle<()>, JoinHandle<()>) {
    let m2 = m.clone();
    let syms = symbols.clone();
    let bars = tokio::spawn(async move {
        for _ in 0..600 {
            let next = (now_ms() / 1000 + 1) * 1000 + PLAY_AT_MS;
            sleep_until_ms(next).await;
            if m.paused.load(Ordering::SeqCst) {
                continue;
            }
            // The bar that just ended.
            let open = now_ms() / 1000 * 1000 - 1000;
            let push = m.push.load(Ordering::SeqCst);
            for s in &syms {
                let v = bar_values(s, open);
                let script = CandleScript::new(&m.up, s, "1s").store_in(&m.rest);
                if push {
                    script.play(&[(open, &v[0], &v[1], &v[2], &v[3], &v[4])]);
                } else {
                    let k = Kline::new("1s", open, &v[0], &v[1], &v[2], &v[3], &v[4]);
                    m.rest.add_klines(s, "1s", &[k]);
                }
                m.record(s, open);
            }
        }
    });
    let quotes = tokio::spawn(async move {
        for _ in 0..3000 {
            for s in &symbols {
                m2.up.push_book_ticker(s, "100.5", "100.6");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bars, quotes)
}

/// The guard, the relay's own upstream (WebSocket + REST), the binary.
struct Rig {
    _w: GuardWorld,
    m: Arc<Market>,
    app: App,
    port: u16,
    health: u16,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn rig(name: &str, symbols: &[&str], extra: &str) -> Rig {
    let w = GuardWorld::new(name).await;
    let tls = w.ca.server_config(&["127.0.0.1"]);
    let up = Arc::new(WsServer::start(tls.clone()).await);
    let rest = Arc::new(FakeBinance::start(tls).await);
    for s in symbols {
        rest.set_klines(s, "1s", Vec::new());
    }
    let (port, health) = (free_port(), free_port());
    let cfg = RelayConf::new(port, health, up.port, &rest.base_url())
        .symbols(symbols)
        .close_delay(CLOSE_DELAY_MS as f64 / 1000.0)
        .line(extra)
        .toml();
    let path = w.config("state", &cfg);
    let m = Arc::new(Market {
        up,
        rest,
        paused: AtomicBool::new(false),
        push: AtomicBool::new(true),
        played: Mutex::new(BTreeMap::new()),
    });
    let app = App::start(&path);
    let (bars, quotes) = start_market(m.clone(), symbols.iter().map(|s| s.to_string()).collect());
    let rig = Rig { _w: w, m, app, port, health, tasks: vec![bars, quotes] };
    // The relay is up when its health server says its upstream is live.
    let t0 = Instant::now();
    loop {
        let (code, body) = http_get(rig.health, "/health").await;
        if code == 200 && body.contains("\"upstream\":\"live\"") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "relay not live: {code} {body}\n{}", rig.app.tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig
}

/// The value of the first sample of `name` whose labels contain `labels` on `/metrics`.
async fn metric(port: u16, name: &str, labels: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    for l in body.lines() {
        let Some(rest) = l.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse().ok()) {
            return v;
        }
    }
    panic!("no metric {name}{{{labels}}} in:\n{body}");
}

/// A client whose messages a task collects (a close frame as `{"type":"__close"}`).
struct Client {
    msgs: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request(symbols: &[&str], extra: &str) -> String {
    let list = symbols.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(",");
    format!(
        r#"{{"exchange":"binance","contract_type":"spot","symbols":[{list}],"limit":0,"interval":"1s"{extra}}}"#
    )
}

async fn connect(port: u16, rcvbuf: Option<u32>, req: &str) -> WebSocketStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    let tcp = sock.connect(([127, 0, 0, 1], port).into()).await.expect("tcp");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}"), tcp).await.expect("connect");
    ws.send(Message::text(req)).await.expect("request");
    ws
}

fn collect(mut ws: WebSocketStream<tokio::net::TcpStream>) -> Client {
    let msgs = Arc::new(Mutex::new(Vec::new()));
    let sink = msgs.clone();
    let task = tokio::spawn(async move {
        for _ in 0..1_000_000 {
            let v = match ws.next().await {
                // Quotes are not kept (a flood would fill the memory).
                Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"quote""#) => continue,
                Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
                Some(Ok(Message::Close(c))) => serde_json::json!({
                    "type": "__close",
                    "code": c.as_ref().map(|c| u16::from(c.code)),
                    "reason": c.as_ref().map(|c| c.reason.to_string()),
                }),
                Some(Ok(_)) => continue,
                _ => {
                    sink.lock().unwrap().push(serde_json::json!({"type": "__eof"}));
                    return;
                }
            };
            sink.lock().unwrap().push(v);
        }
    });
    Client { msgs, task }
}

impl Client {
    async fn join(port: u16, symbols: &[&str]) -> Client {
        collect(connect(port, None, &request(symbols, "")).await)
    }
    fn all(&self) -> Vec<Value> {
        self.msgs.lock().unwrap().clone()
    }
    /// Waits until `pred` holds on the messages so far; panics with them when it does not.
    async fn wait(&self, what: &str, within: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let all = self.all();
            if pred(&all) {
                return all;
            }
            if t0.elapsed() > within {
                panic!("{what}: not within {within:?}; messages:\n{}", dump(&all));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn dump(msgs: &[Value]) -> String {
    msgs.iter()
        .filter(|m| m["type"] != "quote" && !(m["type"] == "candle" && m["closed"] == false))
        .map(short)
        .collect::<Vec<_>>()
        .join("\n")
}

fn short(m: &Value) -> String {
    match m["type"].as_str() {
        Some("candle") => format!(
            "candle {} {} rev {} {} o={} h={} l={} c={} v={} seq={}",
            m["symbol"].as_str().unwrap_or(""),
            m["open_time"],
            m["revision"],
            m["source"].as_str().unwrap_or(""),
            m["open"].as_str().unwrap_or(""),
            m["high"].as_str().unwrap_or(""),
            m["low"].as_str().unwrap_or(""),
            m["close"].as_str().unwrap_or(""),
            m["volume"].as_str().unwrap_or(""),
            m["seq"],
        ),
        _ => m.to_string(),
    }
}

/// A closed candle (revision ≥ 1) as received.
#[derive(Clone, Debug)]
struct Closed {
    idx: usize,
    sym: String,
    open: u64,
    rev: u64,
    source: String,
    vals: [String; 5],
}

fn closed(msgs: &[Value]) -> Vec<Closed> {
    msgs.iter()
        .enumerate()
        .filter(|(_, m)| m["type"] == "candle" && m["closed"] == true)
        .map(|(idx, m)| Closed {
            idx,
            sym: m["symbol"].as_str().unwrap_or("").to_string(),
            open: m["open_time"].as_u64().unwrap_or(0),
            rev: m["revision"].as_u64().unwrap_or(0),
            source: m["source"].as_str().unwrap_or("").to_string(),
            vals: ["open", "high", "low", "close", "volume"].map(|k| m[k].as_str().unwrap_or("").to_string()),
        })
        .collect()
}

fn closed_of(msgs: &[Value], sym: &str) -> Vec<Closed> {
    closed(msgs).into_iter().filter(|c| c.sym == sym).collect()
}

/// The relay prints prices as decimals: compare numerically.
fn same(a: &[String; 5], b: &[String; 5]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.parse::<f64>().ok() == y.parse::<f64>().ok())
}

/// Checks the rules every client's closed-candle stream of one symbol obeys: no
/// `(open_time, revision)` twice, revisions of one bar increasing, and first versions
/// (revision 1) in contiguous open-time order, holes only where a `gap` announced them.
fn check_stream(msgs: &[Value], sym: &str) {
    let mut seen = HashSet::new();
    let mut last_rev: HashMap<u64, u64> = HashMap::new();
    let mut expect: Option<u64> = None;
    for (i, m) in msgs.iter().enumerate() {
        if m["symbol"] != sym {
            continue;
        }
        match m["type"].as_str() {
            Some("gap") => {
                let (from, to) = (m["from"].as_u64().unwrap(), m["to"].as_u64().unwrap());
                if let Some(e) = expect {
                    assert_eq!(from, e, "gap #{i} starts where the stream stopped:\n{}", dump(msgs));
                }
                assert!(to >= from);
                expect = Some(to + 1000);
            }
            Some("candle") if m["closed"] == true => {
                let (t, r) = (m["open_time"].as_u64().unwrap(), m["revision"].as_u64().unwrap());
                assert!(seen.insert((t, r)), "#{i}: {t} revision {r} twice:\n{}", dump(msgs));
                if let Some(p) = last_rev.get(&t) {
                    assert!(r > *p, "#{i}: {t} revision {r} after {p}:\n{}", dump(msgs));
                }
                last_rev.insert(t, r);
                if r == 1 {
                    if let Some(e) = expect {
                        assert_eq!(
                            t,
                            e,
                            "#{i}: closed candles contiguous (no unannounced hole):\n{}",
                            dump(msgs)
                        );
                    }
                    expect = Some(t + 1000);
                }
            }
            _ => {}
        }
    }
}

/// The newest version of each closed bar received.
fn finals(msgs: &[Value], sym: &str) -> BTreeMap<u64, Closed> {
    let mut out: BTreeMap<u64, Closed> = BTreeMap::new();
    for c in closed_of(msgs, sym) {
        if out.get(&c.open).is_none_or(|o| o.rev < c.rev) {
            out.insert(c.open, c);
        }
    }
    out
}

fn status_at(msgs: &[Value], status: &str, after: usize) -> Option<usize> {
    msgs.iter()
        .enumerate()
        .skip(after)
        .find(|(_, m)| m["type"] == "status" && m["status"] == status)
        .map(|(i, _)| i)
}

/// Cuts the relay's upstream (live connections closed, new ones refused) for `secs`, while
/// bars keep being stored in REST; then lets it back.
async fn outage(r: &Rig, secs: u64) {
    r.m.push.store(false, Ordering::SeqCst);
    r.m.up.set_fault(Fault::Refuse);
    r.m.up.apply_now(Fault::Refuse);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    r.m.up.set_fault(Fault::None);
    r.m.push.store(true, Ordering::SeqCst);
}

const SYM: &str = "BTCUSDT";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_is_announced_and_backfilled_from_rest_once_in_order() {
    let _serial = SERIAL.lock().await;
    let t_start = Instant::now();
    let r = rig("relay_up_outage", &[SYM], "breaker_recovery_s = 1").await;
    let c = Client::join(r.port, &[SYM]).await;
    c.wait("3 closed candles", Duration::from_secs(8), |m| closed(m).len() >= 3).await;
    let ok_before = metric(r.health, "connector_rest_backfills_total", "result=\"ok\"").await;

    outage(&r, 3).await;
    let all = c
        .wait("stale, then live, then 2 live candles", Duration::from_secs(15), |m| {
            status_at(m, "stale", 0)
                .and_then(|s| status_at(m, "live", s))
                .is_some_and(|l| closed(m).iter().filter(|x| x.idx > l).count() >= 2)
        })
        .await;
    check_stream(&all, SYM);
    let stale = status_at(&all, "stale", 0).unwrap();
    let live = status_at(&all, "live", stale).unwrap();
    let before = closed_of(&all[..stale], SYM).last().unwrap().open;
    assert!(all[stale]["since"].as_u64().is_some(), "{}", all[stale]);
    assert!(!all.iter().any(|m| m["type"] == "gap"), "no gap when REST answers:\n{}", dump(&all));
    // The bars of the outage (stored in REST only) arrived once each, from REST, after the
    // stale status and before the live one, with the venue's values.
    let outage_bars: Vec<Closed> =
        closed_of(&all, SYM).into_iter().filter(|x| x.idx > stale && x.idx < live).collect();
    assert!(outage_bars.len() >= 2, "the outage's bars backfilled:\n{}", dump(&all));
    assert_eq!(outage_bars[0].open, before + 1000, "{}", dump(&all));
    assert!(outage_bars.iter().filter(|x| x.source == "rest").count() >= 2, "{}", dump(&all));
    for x in &outage_bars {
        assert!(same(&x.vals, &bar_values(SYM, x.open)), "{x:?}");
    }
    // Every bar played has its venue values in the end, and the live stream continues.
    let f = finals(&all, SYM);
    let last = *f.keys().last().unwrap();
    for t in r.m.played(SYM).into_iter().filter(|t| *t > before && *t <= last) {
        let x = f.get(&t).unwrap_or_else(|| panic!("bar {t} missing:\n{}", dump(&all)));
        assert!(same(&x.vals, &bar_values(SYM, t)), "{x:?}");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ok_after = metric(r.health, "connector_rest_backfills_total", "result=\"ok\"").await;
    assert!(ok_after > ok_before, "backfills ok {ok_before} -> {ok_after}");
    eprintln!("outage test: {:?}", t_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outage_with_rest_failing_announces_a_gap() {
    let _serial = SERIAL.lock().await;
    let t_start = Instant::now();
    let r = rig("relay_up_gap", &[SYM], "breaker_recovery_s = 1").await;
    let c = Client::join(r.port, &[SYM]).await;
    c.wait("3 closed candles", Duration::from_secs(8), |m| closed(m).len() >= 3).await;
    let errors_before = metric(r.health, "connector_rest_backfills_total", "result=\"error\"").await;

    r.m.push.store(false, Ordering::SeqCst);
    r.m.up.set_fault(Fault::Refuse);
    r.m.up.apply_now(Fault::Refuse);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every try of the recovery's backfill fails.
    for _ in 0..upstream_tries() {
        r.m.rest.push_fault(Route::Klines, fake_binance::Fault::Status(503));
    }
    r.m.up.set_fault(Fault::None);
    r.m.push.store(true, Ordering::SeqCst);

    let all = c
        .wait("stale, gap, live, then 2 live candles", Duration::from_secs(20), |m| {
            status_at(m, "stale", 0)
                .and_then(|s| status_at(m, "live", s))
                .is_some_and(|l| closed(m).iter().filter(|x| x.idx > l).count() >= 2)
        })
        .await;
    check_stream(&all, SYM);
    let stale = status_at(&all, "stale", 0).unwrap();
    let live = status_at(&all, "live", stale).unwrap();
    let before = closed_of(&all[..stale], SYM).last().unwrap().open;
    let gaps: Vec<(usize, &Value)> = all.iter().enumerate().filter(|(_, m)| m["type"] == "gap").collect();
    assert_eq!(gaps.len(), 1, "one gap:\n{}", dump(&all));
    let (gi, g) = gaps[0];
    assert!(gi > stale && gi < live, "the gap between stale and live:\n{}", dump(&all));
    assert_eq!(g["from"].as_u64(), Some(before + 1000), "{g}");
    let to = g["to"].as_u64().unwrap();
    // The gap covers the outage: at least the 3 s of refused upstream.
    assert!(to >= before + 3000, "{g}");
    // And the next closed candle follows it.
    let next = closed_of(&all, SYM).into_iter().find(|x| x.idx > gi).unwrap();
    assert_eq!(next.open, to + 1000, "{}", dump(&all));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let errors_after = metric(r.health, "connector_rest_backfills_total", "result=\"error\"").await;
    assert!(errors_after > errors_before);
    eprintln!("gap test: {:?}", t_start.elapsed());
}

/// Tries of one backfill before it gives up (`relay::upstream::BACKFILL_TRIES`).
fn upstream_tries() -> u32 {
    tickguard::relay::upstream::BACKFILL_TRIES
}

/// Pauses the market until the start of a fresh second `x` (+ 150 ms) and returns `x`: the
/// market has played every bar before it.
async fn pause_at_next_second(m: &Market) -> u64 {
    // Just after the market played a bar: pause; the next bar to open is ours.
    let x = (now_ms() / 1000 + 1) * 1000;
    sleep_until_ms(x + PLAY_AT_MS + 150).await;
    m.paused.store(true, Ordering::SeqCst);
    x
}

/// The venue's true bar `x`, different from what its trades make (a higher high, twice the
/// volume).
fn true_bar(sym: &str, x: u64) -> [String; 5] {
    let v = bar_values(sym, x);
    let high: f64 = v[1].parse::<f64>().unwrap() + 5.0;
    [v[0].clone(), format!("{high}"), v[2].clone(), v[3].clone(), "8".to_string()]
}

/// Bar `x` gets its trades and open updates just after it ends, never its closing kline;
/// REST holds the venue's true bar. The next bar's trades and updates come
/// `next_trades_after_ms` after bar `x` ended (busy market: within the close delay), its
/// closing kline just after it ends.
async fn missing_kline(name: &str, next_trades_after_ms: u64) {
    let t_start = Instant::now();
    let r = rig(name, &[SYM], "").await;
    let c = Client::join(r.port, &[SYM]).await;
    c.wait("2 closed candles", Duration::from_secs(8), |m| closed(m).len() >= 2).await;
    let x = pause_at_next_second(&r.m).await;
    let y = x + 1000;
    let t = true_bar(SYM, x);
    r.m.rest.add_klines(SYM, "1s", &[Kline::new("1s", x, &t[0], &t[1], &t[2], &t[3], &t[4])]);
    sleep_until_ms(y + PLAY_AT_MS).await;
    play_bar(&r.m.up, &r.m.rest, SYM, x, false, false);
    // Bar y: trades and updates, then its closing kline when it ends.
    sleep_until_ms(y + next_trades_after_ms).await;
    play_bar(&r.m.up, &r.m.rest, SYM, y, false, true);
    sleep_until_ms(y + 1000 + PLAY_AT_MS).await;
    let v = bar_values(SYM, y);
    r.m.up.push_kline(SYM, "1s", &Kline::new("1s", y, &v[0], &v[1], &v[2], &v[3], &v[4]), true);
    r.m.record(SYM, y);
    // The market goes on from bar y + 1 (it plays it at y + 2000 + PLAY_AT_MS).
    sleep_until_ms(y + 1000 + PLAY_AT_MS + 200).await;
    r.m.paused.store(false, Ordering::SeqCst);

    let all = c
        .wait("bar x corrected (or 3 bars after it)", Duration::from_secs(10), |m| {
            let cl = closed(m);
            cl.iter().filter(|c| c.open > y).count() >= 3
                || (cl.iter().any(|c| c.open == x && c.rev == 2) && cl.iter().any(|c| c.open > y))
        })
        .await;
    check_stream(&all, SYM);
    let xs: Vec<Closed> = closed_of(&all, SYM).into_iter().filter(|c| c.open == x).collect();
    assert_eq!(xs.len(), 2, "bar x once from trades, once corrected:\n{}", dump(&all));
    assert_eq!((xs[0].rev, xs[0].source.as_str()), (1, "trades"), "{:?}", xs[0]);
    let from_trades = bar_values(SYM, x);
    assert!(same(&xs[0].vals, &from_trades), "built from the trades: {:?}", xs[0]);
    assert_eq!((xs[1].rev, xs[1].source.as_str()), (2, "rest"), "{:?}", xs[1]);
    assert!(same(&xs[1].vals, &t), "REST's values: {:?}", xs[1]);
    let ys: Vec<Closed> = closed_of(&all, SYM).into_iter().filter(|c| c.open == y).collect();
    assert!(!ys.is_empty() && same(&ys.last().unwrap().vals, &bar_values(SYM, y)), "{ys:?}");
    eprintln!("{name}: {:?}", t_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kline_that_never_arrives_is_built_from_trades_then_corrected_by_rest() {
    let _serial = SERIAL.lock().await;
    // The next bar is quiet until after the close delay.
    missing_kline("relay_up_missing_quiet", CLOSE_DELAY_MS + 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kline_that_never_arrives_while_the_next_bar_trades_is_not_lost() {
    let _serial = SERIAL.lock().await;
    // The next bar's trades come within the close delay, as on a busy market.
    missing_kline("relay_up_missing_busy", 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_kline_after_rest_delivered_the_bar_is_a_counted_duplicate() {
    let _serial = SERIAL.lock().await;
    let t_start = Instant::now();
    let r = rig("relay_up_dups", &[SYM], "breaker_recovery_s = 1").await;
    let c = Client::join(r.port, &[SYM]).await;
    c.wait("2 closed candles", Duration::from_secs(8), |m| closed(m).len() >= 2).await;
    // An outage: its bars reach the clients from REST.
    outage(&r, 2).await;
    let all = c
        .wait("stale, live", Duration::from_secs(15), |m| {
            status_at(m, "stale", 0).and_then(|s| status_at(m, "live", s)).is_some()
        })
        .await;
    let stale = status_at(&all, "stale", 0).unwrap();
    let from_rest: Vec<Closed> =
        closed_of(&all, SYM).into_iter().filter(|x| x.idx > stale && x.source == "rest").collect();
    assert!(!from_rest.is_empty(), "{}", dump(&all));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let dups_before = metric(r.health, "connector_duplicates_filtered_total", "binance").await;
    let n_before = c.all().len();
    // The venue's closing klines of those bars come late, same values.
    for x in &from_rest {
        let v = bar_values(SYM, x.open);
        let k = Kline::new("1s", x.open, &v[0], &v[1], &v[2], &v[3], &v[4]);
        assert_eq!(r.m.up.push_kline(SYM, "1s", &k, true), 1);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = c.all();
    check_stream(&all, SYM);
    let again: Vec<String> = all[n_before..]
        .iter()
        .filter(|m| m["type"] == "candle" && m["closed"] == true)
        .filter(|m| from_rest.iter().any(|x| m["open_time"].as_u64() == Some(x.open)))
        .map(short)
        .collect();
    assert!(again.is_empty(), "sent again: {again:?}");
    let dups_after = metric(r.health, "connector_duplicates_filtered_total", "binance").await;
    assert!(
        dups_after >= dups_before + from_rest.len() as f64,
        "duplicates {dups_before} -> {dups_after} after {} late klines",
        from_rest.len()
    );
    eprintln!("dups test: {:?}", t_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_closed_with_its_cursor_and_a_reading_one_is_not() {
    let _serial = SERIAL.lock().await;
    slow_client(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_counts_a_queue_blocking_event() {
    let _serial = SERIAL.lock().await;
    slow_client(true).await;
}

/// A client that stops reading while closed candles come (3 symbols, 1 s bars) and a quote
/// flood fills its socket, next to a reading client; `blocking`: also check that
/// `connector_queue_blocking_events_total` counted it.
async fn slow_client(blocking: bool) {
    let t_start = Instant::now();
    let syms = ["BTCUSDT", "ETHUSDT", "BNBUSDT"];
    let r = rig("relay_up_slow", &syms, "closed_queue_max = 5").await;
    let reader = Client::join(r.port, &syms).await;
    // The slow one: a small receive buffer, and it stops reading after its request.
    let mut slow = connect(r.port, Some(4096), &request(&syms, "")).await;
    reader.wait("2 closed candles", Duration::from_secs(8), |m| closed(m).len() >= 2).await;
    let blocking_before = metric(r.health, "connector_queue_blocking_events_total", "").await;
    let slow_before = metric(r.health, "tickguard_relay_slow_clients_closed_total", "").await;
    // A flood of quotes fills the slow client's socket (its writer then waits), while
    // closed candles (3 a second) pile up in its outbox.
    let stop = Arc::new(AtomicBool::new(false));
    let (m, s2) = (r.m.clone(), stop.clone());
    let flood = tokio::spawn(async move {
        for n in 0..2000u64 {
            if s2.load(Ordering::SeqCst) {
                return;
            }
            for k in 0..50u64 {
                for s in syms {
                    m.up.push_book_ticker(s, &format!("{}.{}", 100 + k, n % 100), "300.5");
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let t0 = Instant::now();
    loop {
        let d = metric(r.health, "connector_queue_depth_closed", "").await;
        if d >= 5.0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the slow client's outbox never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One more second of closed candles: it overflows.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let _ = flood.await;
    // It reads again: what was on the way, then its goodbye and 1008.
    let mut got = Vec::new();
    let mut close = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Close(c)))) => {
                close = c;
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    let bye = got.iter().find(|m| m["type"] == "bye").cloned();
    let bye = bye.unwrap_or_else(|| panic!("no bye; close {close:?}; got:\n{}", dump(&got)));
    assert_eq!(bye["reason"], "slow_consumer", "{bye}");
    let close = close.unwrap_or_else(|| panic!("no close frame after {bye}"));
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    // Its cursor: the last closed candle it was given, per symbol.
    for s in syms {
        let last = closed_of(&got, s).last().map(|c| c.open);
        assert_eq!(bye["resume_from"][s].as_u64(), last, "{s}: {bye}\n{}", dump(&got));
    }
    // The reading client was never closed and keeps getting every closed candle.
    let n = reader.all().len();
    let all = reader
        .wait("2 more closed candles each", Duration::from_secs(6), |m| {
            syms.iter().all(|s| closed_of(&m[n..], s).len() >= 2)
        })
        .await;
    assert!(!all.iter().any(|m| m["type"] == "bye" || m["type"] == "__close"), "{}", dump(&all));
    for s in syms {
        check_stream(&all, s);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let slow_after = metric(r.health, "tickguard_relay_slow_clients_closed_total", "").await;
    let blocking_after = metric(r.health, "connector_queue_blocking_events_total", "").await;
    assert!(slow_after >= slow_before + 1.0, "slow clients closed {slow_before} -> {slow_after}");
    assert!(
        !blocking || blocking_after > blocking_before,
        "blocking events {blocking_before} -> {blocking_after}"
    );
    eprintln!("slow test: {:?}", t_start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_breaker_opens_after_three_failures_and_closes_when_it_is_back() {
    let _serial = SERIAL.lock().await;
    let t_start = Instant::now();
    let r = rig("relay_up_breaker", &[SYM], "breaker_recovery_s = 1\nstale_after_s = 2").await;
    let t0 = Instant::now();
    loop {
        let (code, body) = http_get(r.health, "/ready").await;
        if code == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "/ready {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(r.health, "connector_circuit_breaker_state", "exchange=\"binance\"").await, 0.0);
    let errors_before = metric(r.health, "connector_connection_errors_total", "binance").await;
    r.m.up.set_fault(Fault::Refuse);
    r.m.up.apply_now(Fault::Refuse);
    let t0 = Instant::now();
    let ready_when_open = loop {
        if metric(r.health, "connector_circuit_breaker_state", "exchange=\"binance\"").await == 1.0 {
            break http_get(r.health, "/ready").await;
        }
        assert!(t0.elapsed() < Duration::from_secs(8), "the breaker never opened\n{}", r.app.tail());
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert_eq!(ready_when_open.0, 503, "{ready_when_open:?}");
    let errors = metric(r.health, "connector_connection_errors_total", "binance").await;
    assert!(errors >= errors_before + 3.0, "connection errors {errors_before} -> {errors}");
    r.m.up.set_fault(Fault::None);
    let t0 = Instant::now();
    loop {
        let state = metric(r.health, "connector_circuit_breaker_state", "exchange=\"binance\"").await;
        let (code, body) = http_get(r.health, "/ready").await;
        if state == 0.0 && code == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "breaker {state}, /ready {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("breaker test: {:?}", t_start.elapsed());
}
