//! Client helpers for the LAN relay's tests (`tests/relay.rs`, read-only for others): a real
//! WebSocket client of the relay (connect, send the request, read JSON messages with a
//! deadline, collect until a predicate, see the close frame), a `[relay]` configuration
//! snippet builder, a small HTTP GET for the relay's health port, and wall-clock helpers for
//! bars of real seconds.
//!
//! Self-contained (only external crates), so it can be included either as
//! `support::relay` or with `#[path = "support/relay.rs"] mod relay_client;`. Everything talks
//! to 127.0.0.1 only and every wait is bounded.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The OHLCV connector's request, as the seed writes it.
pub const SEED_REQUEST: &str =
    r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3}"#;

/// Longest a connect (TCP and handshake) may take.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// What the relay sent: a JSON text message, a close frame, or the end of the stream
/// (without a close frame, or an error).
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A text frame, parsed.
    Json(Value),
    /// A text frame that is not JSON (a relay bug; kept for the failure message).
    Text(String),
    /// A close frame: code and reason (`None` when the frame carried no code).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame, or failed.
    End(String),
}

impl Frame {
    /// The JSON message, if it is one.
    pub fn json(&self) -> Option<&Value> {
        match self {
            Frame::Json(v) => Some(v),
            _ => None,
        }
    }
    /// The message's `type` (`""` when not a JSON message).
    pub fn kind(&self) -> &str {
        self.json().and_then(|v| v["type"].as_str()).unwrap_or("")
    }
}

/// A refused handshake: the HTTP status (0 when no HTTP answer) and what happened.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status of the refusal (403 for a refused `Origin`), 0 without one.
    pub status: u16,
    /// The error, for messages.
    pub error: String,
}

/// A WebSocket client of the relay.
pub struct RelayClient {
    ws: WebSocketStream<TcpStream>,
    /// Every frame read so far, in order (for failure messages).
    pub seen: Vec<Frame>,
    /// Set once a close frame or the end was read.
    pub ended: bool,
}

impl RelayClient {
    /// Connects to `ws://127.0.0.1:port` (no `Origin`).
    pub async fn connect(port: u16) -> Result<RelayClient, Refused> {
        RelayClient::connect_with(port, &[]).await
    }

    /// Connects with extra handshake headers (e.g. `("Origin", "http://evil.example")`).
    pub async fn connect_with(port: u16, headers: &[(&str, &str)]) -> Result<RelayClient, Refused> {
        let refused = |status: u16, error: String| Refused { status, error };
        let mut req = format!("ws://127.0.0.1:{port}/")
            .into_client_request()
            .map_err(|e| refused(0, format!("request: {e}")))?;
        for (k, v) in headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| refused(0, format!("header {k}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|e| refused(0, format!("header {k}: {e}")))?;
            req.headers_mut().insert(name, value);
        }
        let go = async {
            let tcp =
                TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| refused(0, format!("tcp: {e}")))?;
            let _ = tcp.set_nodelay(true);
            match tokio_tungstenite::client_async(req, tcp).await {
                Ok((ws, _)) => Ok(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    Err(refused(resp.status().as_u16(), format!("HTTP {}", resp.status())))
                }
                Err(e) => Err(refused(0, format!("handshake: {e}"))),
            }
        };
        let ws = tokio::time::timeout(CONNECT_WAIT, go)
            .await
            .map_err(|_| refused(0, format!("no handshake within {CONNECT_WAIT:?}")))??;
        Ok(RelayClient { ws, seen: Vec::new(), ended: false })
    }

    /// Connects and sends `request` (a text frame).
    pub async fn request(port: u16, request: &str) -> RelayClient {
        let mut c = match RelayClient::connect(port).await {
            Ok(c) => c,
            Err(e) => panic!("connect to the relay on {port}: {e:?}"),
        };
        c.send(request).await;
        c
    }

    /// Sends one text frame (bounded).
    pub async fn send(&mut self, text: &str) {
        let r = tokio::time::timeout(CONNECT_WAIT, self.ws.send(Message::text(text))).await;
        assert!(matches!(r, Ok(Ok(()))), "send {text:?}: {r:?}");
    }

    /// Sends one binary frame (bounded).
    pub async fn send_binary(&mut self, bytes: &[u8]) {
        let r = tokio::time::timeout(CONNECT_WAIT, self.ws.send(Message::binary(bytes.to_vec()))).await;
        assert!(matches!(r, Ok(Ok(()))), "send binary: {r:?}");
    }

    /// The next frame that matters (text or close; pings and pongs are skipped), or `None`
    /// when nothing came within `within`. After the end, always [`Frame::End`].
    pub async fn next(&mut self, within: Duration) -> Option<Frame> {
        if self.ended {
            return Some(Frame::End("already ended".into()));
        }
        let deadline = Instant::now() + within;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => Frame::End("stream ended".into()),
                Ok(Some(Err(e))) => Frame::End(format!("error: {e}")),
                Ok(Some(Ok(Message::Text(t)))) => match serde_json::from_str::<Value>(t.as_str()) {
                    Ok(v) => Frame::Json(v),
                    Err(_) => Frame::Text(t.as_str().to_string()),
                },
                Ok(Some(Ok(Message::Close(c)))) => {
                    Frame::Close(c.map(|c| (u16::from(c.code), c.reason.as_str().to_string())))
                }
                Ok(Some(Ok(Message::Binary(b)))) => Frame::Text(format!("<binary {} bytes>", b.len())),
                Ok(Some(Ok(_))) => continue,
            };
            if matches!(m, Frame::Close(_) | Frame::End(_)) {
                self.ended = true;
            }
            if matches!(m, Frame::Close(_)) {
                // Answer the close frame as a client does (tungstenite queued the reply).
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
            }
            self.seen.push(m.clone());
            return Some(m);
        }
    }

    /// The next JSON message within `within` (`None`: none came, or the connection ended).
    pub async fn next_json(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await? {
                Frame::Json(v) => return Some(v),
                Frame::Text(_) => continue,
                Frame::Close(_) | Frame::End(_) => return None,
            }
        }
    }

    /// Reads frames until one satisfies `until` (included), the connection ends (the close
    /// frame or end included) or `within` passes. Returns what was read by this call.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        mut until: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(f) = self.next(left).await else { return out };
            let stop = until(&f) || matches!(f, Frame::Close(_) | Frame::End(_));
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    /// As [`RelayClient::collect_until`], for a JSON message satisfying `pred`; panics with
    /// what was read when none came.
    pub async fn expect_json(
        &mut self,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let got = self.collect_until(within, |f| f.json().is_some_and(&pred)).await;
        match got.last().and_then(Frame::json) {
            Some(v) if pred(v) => v.clone(),
            _ => panic!("no {what} within {within:?}; read: {}", brief(&got)),
        }
    }

    /// Sends a close frame (1000) and waits (bounded) for the end.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }

    /// Drops the TCP connection without a close frame (a client that vanished).
    pub fn drop_abruptly(self) {
        drop(self);
    }
}

/// Frames in short, for failure messages.
pub fn brief(frames: &[Frame]) -> String {
    let mut s = String::new();
    for f in frames {
        let line = match f {
            Frame::Json(v) => {
                let t = v.to_string();
                if t.len() > 300 { format!("{}…", &t[..300]) } else { t }
            }
            other => format!("{other:?}"),
        };
        let _ = writeln!(s, "  {line}");
    }
    s
}

/// Closed candles among `frames` (`type` `candle` with `closed` true).
pub fn closed_candles(frames: &[Frame]) -> Vec<Value> {
    frames
        .iter()
        .filter_map(Frame::json)
        .filter(|v| v["type"] == "candle" && v["closed"] == true)
        .cloned()
        .collect()
}

/// The `[relay]` section of a test configuration.
#[derive(Clone, Debug)]
pub struct RelayConf {
    /// `relay.listen` port.
    pub port: u16,
    /// `relay.health_listen` port.
    pub health: u16,
    /// The fake WebSocket venue's port (`relay.ws_url = wss://127.0.0.1:<ws>/stream`).
    pub ws: u16,
    /// The fake REST venue (`relay.rest_url`).
    pub rest: String,
    /// `relay.intervals`.
    pub intervals: Vec<String>,
    /// `relay.symbols` (empty: not written).
    pub symbols: Vec<String>,
    /// `relay.close_delay_s`.
    pub close_delay_s: f64,
    /// `relay.stale_after_s` (`None`: not written).
    pub stale_after_s: Option<f64>,
    /// More lines of `[relay]`, written as they are.
    pub extra: Vec<String>,
}

impl RelayConf {
    /// A relay on `port` (health on `health`) over the fake venue (`ws` port, `rest` base
    /// URL), serving `1s` bars closed 0.3 s after their end.
    pub fn new(port: u16, health: u16, ws: u16, rest: &str) -> RelayConf {
        RelayConf {
            port,
            health,
            ws,
            rest: rest.to_string(),
            intervals: vec!["1s".into()],
            symbols: Vec::new(),
            close_delay_s: 0.3,
            stale_after_s: None,
            extra: Vec::new(),
        }
    }
    /// `relay.intervals`, in this order.
    pub fn intervals(mut self, iv: &[&str]) -> Self {
        self.intervals = iv.iter().map(|s| s.to_string()).collect();
        self
    }
    /// `relay.symbols`.
    pub fn symbols(mut self, s: &[&str]) -> Self {
        self.symbols = s.iter().map(|s| s.to_string()).collect();
        self
    }
    /// `relay.close_delay_s`.
    pub fn close_delay(mut self, s: f64) -> Self {
        self.close_delay_s = s;
        self
    }
    /// `relay.stale_after_s`.
    pub fn stale_after(mut self, s: f64) -> Self {
        self.stale_after_s = Some(s);
        self
    }
    /// One more `key = value` line of `[relay]`.
    pub fn line(mut self, l: &str) -> Self {
        self.extra.push(l.to_string());
        self
    }
    /// The TOML text (`[relay]` and its keys).
    pub fn toml(&self) -> String {
        let list = |v: &[String]| v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ");
        let mut t = format!(
            r#"
[relay]
enabled = true
listen = "127.0.0.1:{port}"
health_listen = "127.0.0.1:{health}"
ws_url = "wss://127.0.0.1:{ws}/stream"
rest_url = "{rest}"
intervals = [{intervals}]
close_delay_s = {delay}
"#,
            port = self.port,
            health = self.health,
            ws = self.ws,
            rest = self.rest,
            intervals = list(&self.intervals),
            delay = self.close_delay_s
        );
        if !self.symbols.is_empty() {
            let _ = writeln!(t, "symbols = [{}]", list(&self.symbols));
        }
        if let Some(s) = self.stale_after_s {
            let _ = writeln!(t, "stale_after_s = {s}");
        }
        for l in &self.extra {
            let _ = writeln!(t, "{l}");
        }
        t
    }
}

/// `GET path` on `127.0.0.1:port` (the relay's health server): `(status, body)`; `(0, "")`
/// when nothing answered within 3 s.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    let go = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw).await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), go).await.ok().flatten().unwrap_or((0, String::new()))
}

/// Polls `GET path` every 100 ms until `ok(status, body)`, at most `within`; the last answer.
pub async fn http_until(
    port: u16,
    path: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let (s, b) = http_get(port, path).await;
        if ok(s, &b) || Instant::now() >= deadline {
            return (s, b);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The open time of the bar of `len_ms` holding now.
pub fn bar_now(len_ms: u64) -> u64 {
    let t = now_ms();
    t - t % len_ms
}

/// Sleeps until wall time `t_ms` (at most 70 s; no sleep when it has passed).
pub async fn sleep_until_ms(t_ms: u64) {
    let now = now_ms();
    if t_ms > now {
        tokio::time::sleep(Duration::from_millis((t_ms - now).min(70_000))).await;
    }
}

/// A decimal text as a number (the relay writes prices its own way: compare numbers).
pub fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(f64::NAN),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        _ => f64::NAN,
    }
}
