//! A TLS HTTP/1.1 server on 127.0.0.1 serving Binance's `GET /api/v3/ticker/price` (a batch
//! with one unknown name is refused whole with `-1121`, as Binance does) and the whole
//! `GET /api/v3/exchangeInfo` list (every symbol with a price, status `TRADING`).
//!
//! Hand-written: one request per connection, head read until `\r\n\r\n` (16 KiB at most), answer
//! with `Content-Length` and `Connection: close`, then TLS close_notify and FIN.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::json::{self, Json};
use super::net::{self, AbortOnDrop};

/// Largest request head accepted; a longer one gets 431 and the connection is closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Time allowed for the TLS handshake and for the request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A fault to inject into requests accepted from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestFault {
    /// Normal service.
    None,
    /// Every request is answered with this status and a Binance-style error body
    /// (`429`/`418` also carry `Retry-After: 1`).
    Status(u16),
    /// Every request is answered normally after this delay.
    Delay(Duration),
    /// The request is read, then the connection is closed without an answer (TLS close_notify
    /// and FIN, no HTTP bytes).
    Drop,
    /// The listener is closed (ECONNREFUSED) until the fault changes; see
    /// [`RestServer::listening`]. A connection that races the switch is reset.
    Refuse,
}

struct State {
    prices: BTreeMap<String, String>,
    requests: Vec<String>,
    fault: RestFault,
    accepted: usize,
}

struct Shared {
    state: Mutex<State>,
    listening: Arc<AtomicBool>,
    refuse: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The REST server. Dropping it aborts every task.
pub struct RestServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
    _task: AbortOnDrop,
}

impl RestServer {
    /// Starts a server on `127.0.0.1:<ephemeral>` with this TLS config and no prices.
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> RestServer {
        let listener = net::bind_loopback().await;
        let port = listener.local_addr().expect("local addr").port();
        let (refuse_tx, refuse_rx) = watch::channel(false);
        let listening = Arc::new(AtomicBool::new(true));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                prices: BTreeMap::new(),
                requests: Vec::new(),
                fault: RestFault::None,
                accepted: 0,
            }),
            listening: listening.clone(),
            refuse: refuse_tx,
        });
        let acceptor = TlsAcceptor::from(tls);
        let s = shared.clone();
        let task = tokio::spawn(net::accept_loop(listener, refuse_rx, listening, move |tcp| {
            serve(s.clone(), acceptor.clone(), tcp)
        }));
        RestServer { port, shared, _task: AbortOnDrop(task) }
    }

    /// `https://localhost:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Sets the price of `symbol`. A plain decimal is padded to 8 decimals as Binance writes it
    /// (`"575.00"` → `"575.00000000"`); anything else is served verbatim.
    pub fn set_price(&self, symbol: &str, price: &str) {
        self.shared.lock().prices.insert(symbol.to_owned(), binance_decimal(price));
    }

    /// Forgets the price of `symbol` (it becomes an invalid symbol).
    pub fn remove_price(&self, symbol: &str) {
        self.shared.lock().prices.remove(symbol);
    }

    /// Request lines received so far (e.g. `GET /api/v3/ticker/price?symbol=X HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().accepted
    }

    /// Sets the fault for requests accepted from now on.
    pub fn set_fault(&self, fault: RestFault) {
        let refuse = fault == RestFault::Refuse;
        self.shared.lock().fault = fault;
        self.shared.refuse.send_replace(refuse);
    }

    /// Whether the listener is open (false while [`RestFault::Refuse`] is in force).
    pub fn listening(&self) -> bool {
        self.shared.listening.load(Ordering::SeqCst)
    }

    /// Polls `pred` every 10 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, pred: impl Fn(&RestServer) -> bool, timeout: Duration) -> bool {
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

/// `"575.00"` → `"575.00000000"`; non-decimals unchanged.
fn binance_decimal(p: &str) -> String {
    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() >= 8 {
        return p.to_owned();
    }
    format!("{int}.{frac:0<8}")
}

async fn serve(shared: Arc<Shared>, acceptor: TlsAcceptor, tcp: TcpStream) {
    shared.lock().accepted += 1;
    let Ok(Ok(mut tls)) = tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await else {
        return;
    };
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tls)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            let resp = response(431, r#"{"code":-1000,"msg":"Request head too large."}"#);
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.write_all(&resp)).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
        _ => return,
    };
    let line = head.lines().next().unwrap_or("").to_owned();
    let fault = {
        let mut st = shared.lock();
        st.requests.push(line.clone());
        st.fault.clone()
    };
    let resp = match fault {
        RestFault::Drop | RestFault::Refuse => {
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
        RestFault::Status(code) => fault_response(code),
        RestFault::Delay(d) => {
            tokio::time::sleep(d).await;
            route(&shared, &line)
        }
        RestFault::None => route(&shared, &line),
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, tls.write_all(&resp)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
    }
}

/// Reads until `\r\n\r\n`: `Ok(Some(head))`, `Ok(None)` if longer than [`MAX_HEAD`], `Err` on
/// I/O error or end of stream.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() <= MAX_HEAD {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i;
            if end > MAX_HEAD {
                return Ok(None);
            }
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
    }
    Ok(None)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn response(code: u16, body: &str) -> Vec<u8> {
    let retry = if code == 429 || code == 418 { "Retry-After: 1\r\n" } else { "" };
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json;charset=UTF-8\r\n{retry}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    )
    .into_bytes()
}

fn fault_response(code: u16) -> Vec<u8> {
    let body = match code {
        429 => {
            r#"{"code":-1003,"msg":"Too many requests; current limit of IP is 6000 request weight per 1 MINUTE."}"#
        }
        418 => r#"{"code":-1003,"msg":"Way too many requests; IP banned."}"#,
        503 => {
            r#"{"code":-1008,"msg":"Server is currently overloaded with other requests. Please try again in a few minutes."}"#
        }
        _ => r#"{"code":-1000,"msg":"An unknown error occurred while processing the request."}"#,
    };
    response(code, body)
}

fn invalid_symbol() -> Vec<u8> {
    response(400, r#"{"code":-1121,"msg":"Invalid symbol."}"#)
}

fn price_object(symbol: &str, price: &str) -> String {
    format!(r#"{{"symbol":{},"price":{}}}"#, json::quote(symbol), json::quote(price))
}

/// Percent-decodes `%XX` (a malformed escape is kept as is).
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
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(shared: &Shared, line: &str) -> Vec<u8> {
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/api/v3/exchangeInfo" && method == "GET" && !query.contains("symbol") {
        let st = shared.lock();
        let items: Vec<String> = st
            .prices
            .keys()
            .map(|s| format!(r#"{{"symbol":{},"status":"TRADING","filters":[]}}"#, json::quote(s)))
            .collect();
        return response(200, &format!(r#"{{"timezone":"UTC","symbols":[{}]}}"#, items.join(",")));
    }
    if path != "/api/v3/ticker/price" {
        return response(404, r#"{"code":-1000,"msg":"Not found."}"#);
    }
    if method != "GET" {
        return response(405, r#"{"code":-1000,"msg":"Method not allowed."}"#);
    }
    let mut symbol = None;
    let mut symbols = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "symbol" => symbol = Some(percent_decode(v)),
            "symbols" => symbols = Some(percent_decode(v)),
            _ => {}
        }
    }
    let st = shared.lock();
    match (symbol, symbols) {
        (Some(_), Some(_)) => {
            response(400, r#"{"code":-1101,"msg":"Combination of optional parameters invalid."}"#)
        }
        (Some(sym), None) => match st.prices.get(&sym) {
            Some(p) => response(200, &price_object(&sym, p)),
            None => invalid_symbol(),
        },
        (None, Some(list)) => {
            let Some(list) = Json::parse(&list).and_then(|j| j.string_array()) else {
                return response(
                    400,
                    r#"{"code":-1100,"msg":"Illegal characters found in parameter 'symbols'."}"#,
                );
            };
            let mut items = Vec::with_capacity(list.len());
            for sym in &list {
                match st.prices.get(sym) {
                    Some(p) => items.push(price_object(sym, p)),
                    None => return invalid_symbol(),
                }
            }
            response(200, &format!("[{}]", items.join(",")))
        }
        (None, None) => {
            let items: Vec<String> = st.prices.iter().map(|(s, p)| price_object(s, p)).collect();
            response(200, &format!("[{}]", items.join(",")))
        }
    }
}
