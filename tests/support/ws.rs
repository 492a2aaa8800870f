//! A TLS WebSocket server on 127.0.0.1 speaking Binance's combined-stream protocol (enough of
//! it for tests): it records paths and text messages, answers `SUBSCRIBE`, `UNSUBSCRIBE`,
//! `LIST_SUBSCRIPTIONS`, `SET_PROPERTY` and `GET_PROPERTY`, pushes whatever the test asks, and
//! injects faults.
//!
//! Two ways to push: [`WsServer::push`] / [`WsServer::push_raw`] send a frame to every live
//! connection whatever it subscribed; [`WsServer::push_event`] and its helpers
//! ([`WsServer::push_trade`], [`WsServer::push_kline`], [`WsServer::push_book_ticker`]) send
//! an event only to the live connections currently subscribed to its stream (named in the
//! URL or by `SUBSCRIBE`, not `UNSUBSCRIBE`d since), wrapped as Binance does for each
//! connection: `{"stream":"<name>","data":<event>}` on a combined-stream connection
//! (`/stream?streams=...`), the bare event on a raw one (`/ws...`). Stream names are matched
//! exactly (Binance's are lower-case symbol + `@trade`, `@kline_<interval>`, `@bookTicker`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tungstenite::Message;

use super::fake_binance::Kline;
use super::json::{self, Json};
use super::net::{self, AbortOnDrop};
use super::wsio::{WsStream, close_frame};

/// Time allowed for the TLS handshake, then for the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// After the server sends a close frame, how long it waits for the client's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Name on the certificate presented for [`Fault::TlsFail`] (self-signed, unknown issuer).
const TLS_FAIL_NAME: &str = "tls-fail.invalid";

/// A fault to inject. [`WsServer::set_fault`] applies it to connections accepted afterwards,
/// [`WsServer::apply_now`] to the live ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Normal service. With `apply_now`: a `Silent` connection talks again.
    None,
    /// New connections: accepted, then reset at once (`SO_LINGER` 0 + drop → RST) before any
    /// TLS byte. Live ones: reset the TCP connection now (no TLS close_notify, no close frame).
    Reset,
    /// New connections: the TCP accept completes, then the TLS handshake presents a self-signed
    /// certificate for `tls-fail.invalid`, so a verifying client fails its handshake. Live ones:
    /// garbage (not a TLS record) is written under the TLS layer, then the connection is dropped,
    /// so the client's TLS read fails.
    TlsFail,
    /// New connections: complete TLS and WebSocket handshakes, then send a close frame with this
    /// code and reason. Live ones: send that close frame now. Either way the server waits up to
    /// 1 s for the client's close reply, then closes the connection.
    CloseWithError(u16, String),
    /// New connections: complete both handshakes, then never send anything (no replies, no
    /// pongs, no pushes) while still reading and recording. Live ones: go silent now.
    Silent,
    /// New connections: the listener is closed (connects fail with ECONNREFUSED) until the fault
    /// changes; it then listens on the same port again. See [`WsServer::listening`]: the switch
    /// happens on the server's task, shortly after `set_fault`. A connection that races the
    /// switch is reset. Live ones: closed at once (TCP FIN, no close frame).
    Refuse,
}

enum Cmd {
    Send(Message),
    Apply(Fault),
}

struct Conn {
    path: String,
    texts: Vec<String>,
    /// All SUBSCRIBE params so far, in order (unsubscribes not removed).
    subscribed: Vec<String>,
    /// Current subscriptions (SUBSCRIBE adds, UNSUBSCRIBE removes).
    current: Vec<String>,
    live: bool,
    cmd: mpsc::UnboundedSender<Cmd>,
}

struct State {
    fault: Fault,
    accepted: usize,
    conns: Vec<Conn>,
    pings: usize,
    pongs: usize,
    /// Last trade id handed out per symbol ([`WsServer::next_trade_id`]); last bookTicker `u`
    /// per `<symbol>@bookTicker`.
    trade_ids: std::collections::HashMap<String, u64>,
}

/// One trade for [`WsServer::push_trade`]: the event
/// `{"e":"trade","E":<now ms>,"s":"BTCUSDT","t":id,"p":"price","q":"qty","T":time_ms,
/// "m":buyer_maker,"M":true}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trade {
    /// Trade id (`t`).
    pub id: u64,
    /// Price text (`p`).
    pub price: String,
    /// Quantity text (`q`).
    pub qty: String,
    /// Trade time, ms (`T`).
    pub time_ms: u64,
    /// Whether the buyer was the maker (`m`; true = a taker sell).
    pub buyer_maker: bool,
}

impl Trade {
    /// A taker buy (`m` false).
    pub fn new(id: u64, price: &str, qty: &str, time_ms: u64) -> Trade {
        Trade { id, price: price.into(), qty: qty.into(), time_ms, buyer_maker: false }
    }
}

/// The trade event object (the `data` of a combined frame).
pub fn trade_event(symbol: &str, t: &Trade) -> String {
    format!(
        r#"{{"e":"trade","E":{},"s":{},"t":{},"p":{},"q":{},"T":{},"m":{},"M":true}}"#,
        net::now_ms(),
        json::quote(symbol),
        t.id,
        json::quote(&t.price),
        json::quote(&t.qty),
        t.time_ms,
        t.buyer_maker
    )
}

/// The kline event object (the `data` of a combined frame), `E` = now.
pub fn kline_event(symbol: &str, interval: &str, k: &Kline, closed: bool) -> String {
    format!(
        r#"{{"e":"kline","E":{},"s":{},"k":{}}}"#,
        net::now_ms(),
        json::quote(symbol),
        k.event_k(symbol, interval, closed)
    )
}

/// `btcusdt@trade` for `BTCUSDT`.
pub fn trade_stream(symbol: &str) -> String {
    format!("{}@trade", symbol.to_ascii_lowercase())
}

/// `btcusdt@kline_1m` for `BTCUSDT`, `1m`.
pub fn kline_stream(symbol: &str, interval: &str) -> String {
    format!("{}@kline_{interval}", symbol.to_ascii_lowercase())
}

/// `btcusdt@bookTicker` for `BTCUSDT`.
pub fn book_ticker_stream(symbol: &str) -> String {
    format!("{}@bookTicker", symbol.to_ascii_lowercase())
}

struct Shared {
    state: Mutex<State>,
    listening: Arc<AtomicBool>,
    refuse: watch::Sender<bool>,
    tls: Arc<rustls::ServerConfig>,
    tls_fail: Mutex<Option<Arc<rustls::ServerConfig>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tls_fail_config(&self) -> Arc<rustls::ServerConfig> {
        let mut slot = self.tls_fail.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| super::ca::self_signed_config(&[TLS_FAIL_NAME])).clone()
    }
}

/// The WebSocket server. Dropping it aborts the accept loop and every connection task.
pub struct WsServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
}

impl WsServer {
    /// Starts a server on `127.0.0.1:<ephemeral>` with this TLS config.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> WsServer {
        let listener = net::bind_loopback().await;
        let port = listener.local_addr().expect("local addr").port();
        let (refuse_tx, refuse_rx) = watch::channel(false);
        let listening = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                fault: Fault::None,
                accepted: 0,
                conns: Vec::new(),
                pings: 0,
                pongs: 0,
                trade_ids: std::collections::HashMap::new(),
            }),
            listening: listening.clone(),
            refuse: refuse_tx,
            tls,
            tls_fail: Mutex::new(None),
        });
        let s = shared.clone();
        let task =
            tokio::spawn(net::accept_loop(listener, refuse_rx, listening, move |tcp| serve(s.clone(), tcp)));
        WsServer { port, shared, _task: AbortOnDrop(task) }
    }

    /// `wss://localhost:<port>/stream?streams=<streams joined by '/'>`.
    pub fn url(&self, streams: &[&str]) -> String {
        format!("wss://localhost:{}/stream?streams={}", self.port, streams.join("/"))
    }

    /// Replaces the TLS config presented for [`Fault::TlsFail`] (default: self-signed for
    /// `tls-fail.invalid`), e.g. with [`super::ca::TestCa::bad_server_config`] for a CA-signed
    /// certificate with the wrong name.
    pub fn set_tls_fail_config(&self, tls: Arc<rustls::ServerConfig>) {
        *self.shared.tls_fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(tls);
    }

    /// Sets the fault for connections accepted from now on.
    pub fn set_fault(&self, fault: Fault) {
        let refuse = fault == Fault::Refuse;
        self.shared.lock().fault = fault;
        self.shared.refuse.send_replace(refuse);
    }

    /// Applies `fault` to every live connection now (the fault for new ones is unchanged).
    pub fn apply_now(&self, fault: Fault) {
        self.broadcast(|| Cmd::Apply(fault.clone()));
    }

    /// Sends a text frame to every live connection.
    pub fn push(&self, text: &str) {
        self.broadcast(|| Cmd::Send(Message::text(text)));
    }

    /// Sends any frame (binary, oversized, a raw frame…) to every live connection.
    pub fn push_raw(&self, msg: Message) {
        self.broadcast(|| Cmd::Send(msg.clone()));
    }

    /// Sends a ping (payload `tickguard-test`) to every live connection.
    pub fn send_ping(&self) {
        self.broadcast(|| Cmd::Send(Message::Ping(bytes::Bytes::from_static(b"tickguard-test"))));
    }

    /// Pushes `{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":<now ms>}}`.
    pub fn server_shutdown(&self) {
        self.push(&format!(
            r#"{{"stream":"!serverShutdown","data":{{"e":"serverShutdown","E":{}}}}}"#,
            net::now_ms()
        ));
    }

    /// Sends `event` (a JSON object) to every live connection currently subscribed to
    /// `stream`: `{"stream":<stream>,"data":<event>}` on a combined-stream connection, the bare
    /// event on a raw (`/ws...`) one. Returns how many connections it was sent to.
    pub fn push_event(&self, stream: &str, event: &str) -> usize {
        let st = self.shared.lock();
        let mut n = 0;
        for c in st.conns.iter().filter(|c| c.live && c.current.iter().any(|s| s == stream)) {
            let text = if c.path.starts_with("/ws") {
                event.to_owned()
            } else {
                format!(r#"{{"stream":{},"data":{event}}}"#, json::quote(stream))
            };
            if c.cmd.send(Cmd::Send(Message::text(text))).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Pushes a trade event of `symbol` to the subscribers of `<symbol lower-case>@trade`;
    /// returns how many connections it was sent to.
    pub fn push_trade(&self, symbol: &str, trade: &Trade) -> usize {
        self.push_event(&trade_stream(symbol), &trade_event(symbol, trade))
    }

    /// Pushes a kline event of `symbol` (`x` = `closed`) to the subscribers of
    /// `<symbol lower-case>@kline_<interval>`; returns how many connections it was sent to.
    pub fn push_kline(&self, symbol: &str, interval: &str, k: &Kline, closed: bool) -> usize {
        self.push_event(&kline_stream(symbol, interval), &kline_event(symbol, interval, k, closed))
    }

    /// Pushes `{"u":<n>,"s":symbol,"b":bid,"B":"1","a":ask,"A":"1"}` to the subscribers of
    /// `<symbol lower-case>@bookTicker` only (unlike [`WsServer::push`]); `u` counts 1, 2, ...
    /// per symbol (apart from the trade ids). Returns how many connections it was sent to.
    pub fn push_book_ticker(&self, symbol: &str, bid: &str, ask: &str) -> usize {
        let u = {
            let mut st = self.shared.lock();
            let u = st.trade_ids.entry(book_ticker_stream(symbol)).or_insert(0);
            *u += 1;
            *u
        };
        let event = format!(
            r#"{{"u":{u},"s":{},"b":{},"B":"1","a":{},"A":"1"}}"#,
            json::quote(symbol),
            json::quote(bid),
            json::quote(ask)
        );
        self.push_event(&book_ticker_stream(symbol), &event)
    }

    /// A fresh id for `symbol` (1, 2, ...), shared by the candle scripts so that trade ids
    /// keep increasing across them.
    pub fn next_trade_id(&self, symbol: &str) -> u64 {
        let mut st = self.shared.lock();
        let id = st.trade_ids.entry(symbol.to_owned()).or_insert(0);
        *id += 1;
        *id
    }

    /// How many live connections are currently subscribed to `stream`.
    pub fn subscribers(&self, stream: &str) -> usize {
        self.shared.lock().conns.iter().filter(|c| c.live && c.current.iter().any(|s| s == stream)).count()
    }

    /// Every stream some live connection is currently subscribed to, sorted, without repeats.
    pub fn live_streams(&self) -> Vec<String> {
        let st = self.shared.lock();
        let mut v: Vec<String> =
            st.conns.iter().filter(|c| c.live).flat_map(|c| c.current.iter().cloned()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Waits until every stream of `streams` has a live subscriber (true) or `timeout` passes
    /// (false). A subscription counts once its `SUBSCRIBE` is read, before it is acknowledged.
    pub async fn wait_subscribed(&self, streams: &[&str], timeout: Duration) -> bool {
        self.wait_for(|s| streams.iter().all(|x| s.subscribers(x) > 0), timeout).await
    }

    /// TCP connections accepted so far (including ones a fault reset or refused).
    pub fn connections(&self) -> usize {
        self.shared.lock().accepted
    }

    /// WebSocket connections still open (registered when the upgrade request is read, before
    /// the client sees `101`, so a `push` right after a client connects reaches it).
    pub fn live(&self) -> usize {
        self.shared.lock().conns.iter().filter(|c| c.live).count()
    }

    /// WebSocket upgrade requests read so far (= `paths().len()`); TCP connections a fault cut
    /// before that are only in [`WsServer::connections`].
    pub fn handshakes(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Request path and query of each WebSocket connection, in accept order.
    pub fn paths(&self) -> Vec<String> {
        self.shared.lock().conns.iter().map(|c| c.path.clone()).collect()
    }

    /// Per WebSocket connection (accept order): every SUBSCRIBE param so far, in order.
    pub fn subscriptions(&self) -> Vec<Vec<String>> {
        self.shared.lock().conns.iter().map(|c| c.subscribed.clone()).collect()
    }

    /// Per WebSocket connection (accept order): the current list, as `LIST_SUBSCRIPTIONS`
    /// answers it: the streams named in the URL (`/ws/<s>` or `?streams=a/b`), plus SUBSCRIBEs,
    /// minus UNSUBSCRIBEs.
    pub fn current_subscriptions(&self) -> Vec<Vec<String>> {
        self.shared.lock().conns.iter().map(|c| c.current.clone()).collect()
    }

    /// Per WebSocket connection (accept order): every text message received.
    pub fn messages(&self) -> Vec<Vec<String>> {
        self.shared.lock().conns.iter().map(|c| c.texts.clone()).collect()
    }

    /// Pings received from clients, all connections together.
    pub fn pings_received(&self) -> usize {
        self.shared.lock().pings
    }

    /// Pongs received from clients, all connections together.
    pub fn pongs_received(&self) -> usize {
        self.shared.lock().pongs
    }

    /// Whether the listener is open (false while [`Fault::Refuse`] is in force).
    pub fn listening(&self) -> bool {
        self.shared.listening.load(Ordering::SeqCst)
    }

    /// Polls `pred` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, pred: impl Fn(&WsServer) -> bool, timeout: Duration) -> bool {
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
        for c in st.conns.iter().filter(|c| c.live) {
            let _ = c.cmd.send(make());
        }
    }
}

/// One accepted TCP connection, from accept to close.
async fn serve(shared: Arc<Shared>, tcp: TcpStream) {
    let fault = {
        let mut st = shared.lock();
        st.accepted += 1;
        st.fault.clone()
    };
    let tls = match fault {
        Fault::Reset | Fault::Refuse => {
            net::reset(tcp);
            return;
        }
        Fault::TlsFail => shared.tls_fail_config(),
        _ => shared.tls.clone(),
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls).accept(tcp)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    if fault == Fault::TlsFail {
        // The client accepted a certificate it should not have; drop it anyway.
        return;
    }
    // The connection is registered when its request is read, before the client sees `101`, so
    // a push made as soon as the client is connected reaches it.
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let mut registered = None;
    let register = |path: &str| {
        let mut st = shared.lock();
        st.conns.push(Conn {
            path: path.to_owned(),
            texts: Vec::new(),
            subscribed: Vec::new(),
            current: streams_in_path(path),
            live: true,
            cmd: cmd_tx,
        });
        registered = Some(st.conns.len() - 1);
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, WsStream::accept_with(tls, register)).await;
    let Some(idx) = registered else { return };
    let mut ws = match handshake {
        Ok(Ok((ws, _path))) => ws,
        _ => {
            shared.lock().conns[idx].live = false;
            return;
        }
    };
    let mut how = run(&shared, idx, &mut ws, cmd_rx, fault).await;
    shared.lock().conns[idx].live = false;
    if ws.discard_output && matches!(how, End::Clean) {
        // Silent to the end: not even a TLS close_notify.
        how = End::Abrupt;
    }
    match how {
        End::Reset => {
            let (tcp, _) = ws.get_mut().get_mut();
            let _ = tcp.set_zero_linger();
        }
        End::Garbage => {
            let (tcp, _) = ws.get_mut().get_mut();
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::AsyncWriteExt::write_all(tcp, b"\x17\x03\x03\xff\xffnot-tls-garbage"),
            )
            .await;
        }
        End::Clean => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::AsyncWriteExt::shutdown(ws.get_mut()),
            )
            .await;
        }
        End::Abrupt => {}
    }
}

enum End {
    /// TLS close_notify, then FIN.
    Clean,
    /// FIN without close_notify.
    Abrupt,
    /// RST.
    Reset,
    /// Garbage under TLS, then FIN.
    Garbage,
}

async fn run(
    shared: &Shared,
    idx: usize,
    ws: &mut WsStream<TlsStream<TcpStream>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    fault: Fault,
) -> End {
    let mut closing: Option<Instant> = None;
    match fault {
        Fault::CloseWithError(code, reason) => {
            if ws.close(code, &reason).await.is_err() {
                return End::Abrupt;
            }
            closing = Some(Instant::now() + CLOSE_LINGER);
        }
        Fault::Silent => ws.discard_output = true,
        _ => {}
    }
    loop {
        let deadline = closing.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = ws.read_more() => {
                match r {
                    Ok(0) | Err(_) => return End::Abrupt,
                    Ok(_) => {}
                }
                // Bounded by the bytes just read: each message consumes some of them.
                loop {
                    match ws.next_buffered() {
                        Ok(Some(msg)) => {
                            if let Some(reply) = handle(shared, idx, msg) {
                                if ws.queue(Message::text(reply)).is_err() {
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = ws.flush_out().await;
                            return End::Clean;
                        }
                    }
                }
                if ws.flush_out().await.is_err() {
                    return End::Abrupt;
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return End::Abrupt };
                match cmd {
                    Cmd::Send(msg) => {
                        if closing.is_none() {
                            let _ = ws.queue(msg);
                            if ws.flush_out().await.is_err() {
                                return End::Abrupt;
                            }
                        }
                    }
                    Cmd::Apply(f) => match f {
                        Fault::None => ws.discard_output = false,
                        Fault::Silent => ws.discard_output = true,
                        Fault::Reset => return End::Reset,
                        Fault::Refuse => return End::Abrupt,
                        Fault::TlsFail => return End::Garbage,
                        Fault::CloseWithError(code, reason) => {
                            if closing.is_none() {
                                if ws.close(code, &reason).await.is_err() {
                                    return End::Abrupt;
                                }
                                closing = Some(Instant::now() + CLOSE_LINGER);
                            }
                        }
                    },
                }
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_some() => return End::Clean,
        }
    }
}

/// Streams named by the request path: `/ws/<stream>` or `/stream?streams=<s1>/<s2>...`.
fn streams_in_path(path: &str) -> Vec<String> {
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    if let Some(one) = p.strip_prefix("/ws/") {
        return vec![one.to_owned()];
    }
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("streams="))
        .flat_map(|v| v.split('/'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Records one received message; returns the text reply, if any.
fn handle(shared: &Shared, idx: usize, msg: Message) -> Option<String> {
    let mut st = shared.lock();
    match msg {
        Message::Ping(_) => {
            st.pings += 1;
            None
        }
        Message::Pong(_) => {
            st.pongs += 1;
            None
        }
        Message::Text(t) => {
            let text = t.as_str().to_owned();
            let conn = &mut st.conns[idx];
            conn.texts.push(text.clone());
            Some(control_reply(conn, &text))
        }
        Message::Binary(_) | Message::Close(_) | Message::Frame(_) => None,
    }
}

/// Binance's answer to a control message.
fn control_reply(conn: &mut Conn, text: &str) -> String {
    let Some(req) = Json::parse(text) else {
        return r#"{"error":{"code":3,"msg":"Invalid JSON: malformed request"}}"#.to_owned();
    };
    let id = req.get("id").cloned().unwrap_or(Json::Null);
    let error = |code: i32, msg: &str| {
        format!(r#"{{"error":{{"code":{code},"msg":{}}},"id":{id}}}"#, json::quote(msg))
    };
    let params = req.get("params");
    match req.get("method").and_then(Json::as_str) {
        Some("SUBSCRIBE") => {
            let Some(list) = params.and_then(Json::string_array) else {
                return error(2, "Invalid request: params must be an array of strings");
            };
            for s in list {
                conn.subscribed.push(s.clone());
                if !conn.current.contains(&s) {
                    conn.current.push(s);
                }
            }
            format!(r#"{{"result":null,"id":{id}}}"#)
        }
        Some("UNSUBSCRIBE") => {
            let Some(list) = params.and_then(Json::string_array) else {
                return error(2, "Invalid request: params must be an array of strings");
            };
            conn.current.retain(|s| !list.contains(s));
            format!(r#"{{"result":null,"id":{id}}}"#)
        }
        Some("LIST_SUBSCRIPTIONS") => {
            format!(r#"{{"result":{},"id":{id}}}"#, json::string_array(&conn.current))
        }
        Some("SET_PROPERTY") => format!(r#"{{"result":null,"id":{id}}}"#),
        Some("GET_PROPERTY") => format!(r#"{{"result":true,"id":{id}}}"#),
        _ => error(2, "Invalid request: unknown method"),
    }
}

/// `Close` frame helper for tests: a close frame with `code` and `reason`.
pub fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(close_frame(code, reason)))
}
