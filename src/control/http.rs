//! A small, bounded HTTP/1.1 server on its own threads, and the adapter that lets the API be
//! written against embedded-svc's HTTP server traits ([`Exchange`] implements
//! [`embedded_svc::http::server::Connection`]).
//!
//! Every resource a client can make the server hold is bounded:
//!
//! | what | bound |
//! |---|---|
//! | connections (one thread each, 256 KiB stack) | [`Limits::max_connections`]; beyond it a canned `503` and close |
//! | requests being handled at once (talking to the engine) | [`Limits::max_active`]; beyond it `503` + `Retry-After: 1` |
//! | request head (request line + headers) | [`Limits::max_head`] bytes, [`Limits::max_headers`] headers, else `431` |
//! | time to send a head, from its first byte | [`Limits::head_timeout`], else `408` and close |
//! | keep-alive idle time before the next request | [`Limits::idle_timeout`], then close |
//! | request body | up to [`Limits::max_body`]: received whole before a handler slot is taken, within [`Limits::body_timeout`]; larger: never read (the handler answers `413`, the connection closes); chunked bodies are refused with `411` |
//! | response body | buffered, at most [`Limits::max_response`] bytes |
//! | socket writes | [`Limits::write_timeout`] per write |
//!
//! A slow or half-open client therefore holds one connection thread until a timeout, never a
//! handler slot, and never memory beyond its head and body bounds. Why this is not tiny_http: see
//! `docs/architecture.md` ("Control plane").

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_svc::http::server::{Connection, Handler};
use embedded_svc::http::{Headers, Method, Query};
use embedded_svc::io::{ErrorType, Read as EioRead, Write as EioWrite};

/// Resource bounds of the server. See the module docs.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Most headers in one request (at most 64).
    pub max_headers: usize,
    /// Largest request body received before the handler runs; a larger one is left unread.
    pub max_body: usize,
    /// Largest response body the handler may write, in bytes.
    pub max_response: usize,
    /// Time allowed to send a whole request head, from its first byte.
    pub head_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time allowed to send a request body, from the handler's first read.
    pub body_timeout: Duration,
    /// Bound of one socket write.
    pub write_timeout: Duration,
    /// Open connections (threads) at most.
    pub max_connections: usize,
    /// Requests being handled at once at most.
    pub max_active: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: 48,
            max_body: 16 * 1024,
            max_response: 2 * 1024 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_active: 16,
            max_requests_per_connection: 10_000,
        }
    }
}

/// Counters of the server, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now.
    pub open_connections: AtomicUsize,
    /// Requests being handled now.
    pub active_requests: AtomicUsize,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections refused with `503` because [`Limits::max_connections`] were open.
    pub refused_connections: AtomicU64,
    /// Requests refused with `503` because [`Limits::max_active`] were being handled.
    pub busy: AtomicU64,
    /// Requests whose head or body did not arrive in time.
    pub timeouts: AtomicU64,
    /// Requests refused before the handler (malformed, too large, chunked, unknown method).
    pub rejected: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
}

impl HttpStats {
    fn count_status(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a read or write of an [`Exchange`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeError {
    /// The socket failed.
    Io(io::ErrorKind),
    /// The request body did not arrive within [`Limits::body_timeout`].
    TimedOut,
    /// The handler wrote more than [`Limits::max_response`].
    ResponseTooLarge,
    /// `initiate_response` was called twice.
    AlreadyResponding,
    /// A body write came before `initiate_response`.
    NotResponding,
    /// A response header contains a line break.
    BadHeader,
    /// The raw connection is not available through this adapter.
    Unsupported,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Io(k) => write!(f, "socket error: {k}"),
            ExchangeError::TimedOut => write!(f, "request body not received in time"),
            ExchangeError::ResponseTooLarge => write!(f, "response larger than the server's bound"),
            ExchangeError::AlreadyResponding => write!(f, "response already initiated"),
            ExchangeError::NotResponding => write!(f, "body written before the response was initiated"),
            ExchangeError::BadHeader => write!(f, "response header with a line break"),
            ExchangeError::Unsupported => write!(f, "raw connection access is not supported"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl embedded_svc::io::Error for ExchangeError {
    fn kind(&self) -> embedded_svc::io::ErrorKind {
        match self {
            ExchangeError::TimedOut => embedded_svc::io::ErrorKind::TimedOut,
            ExchangeError::Unsupported => embedded_svc::io::ErrorKind::Unsupported,
            ExchangeError::BadHeader => embedded_svc::io::ErrorKind::InvalidInput,
            _ => embedded_svc::io::ErrorKind::Other,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The socket: plain TCP or TLS over it.

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => &s.sock,
        }
    }
    fn secure(&self) -> bool {
        matches!(self, Io::Tls(_))
    }
    /// Reads into `buf` before `deadline`; `Ok(0)` is end of stream.
    fn read_by(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.tcp().set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let r = match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
            r => r,
        }
    }
    fn write_all_now(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.write_all(data),
            Io::Tls(s) => {
                s.write_all(data)?;
                s.flush()
            }
        }
    }
    fn close(&mut self) {
        if let Io::Tls(s) = self {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------
// Request head

/// The request line and headers, owned (copied out of the connection's buffer).
#[derive(Clone, Debug)]
pub struct Head {
    method: Method,
    method_name: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, String)>,
    content_length: usize,
    expect_continue: bool,
    keep_alive: bool,
    secure: bool,
    peer: SocketAddr,
}

impl Head {
    /// The method as sent (`GET`, `POST`, ...).
    pub fn method_name(&self) -> &str {
        &self.method_name
    }
    /// The request target without its query (`/api/v1/positions`).
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }
    /// The query string, without `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
    /// True when the request came over TLS.
    pub fn secure(&self) -> bool {
        self.secure
    }
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Every value of a header (case-insensitive name), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Headers for Head {
    /// A header's first value; the pseudo-header `:scheme` is `https` over TLS, else `http`
    /// (a client cannot send it: `:` is not allowed in an HTTP/1.1 header name).
    fn header(&self, name: &str) -> Option<&'_ str> {
        if name == ":scheme" {
            return Some(if self.secure { "https" } else { "http" });
        }
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Query for Head {
    fn uri(&self) -> &'_ str {
        &self.target
    }
    fn method(&self) -> Method {
        self.method
    }
}

fn parse_method(m: &str) -> Option<Method> {
    Some(match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "CONNECT" => Method::Connect,
        _ => return None,
    })
}

/// A request the server answers itself, before any handler.
struct Refusal {
    status: u16,
    detail: &'static str,
}

fn refuse(status: u16, detail: &'static str) -> Refusal {
    Refusal { status, detail }
}

/// Parses a complete head out of `buf[..n]`.
fn parse_head(
    buf: &[u8],
    limits: &Limits,
    secure: bool,
    peer: SocketAddr,
) -> Result<Option<(Head, usize)>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let max = limits.max_headers.clamp(1, slots.len());
    let mut req = httparse::Request::new(&mut slots[..max]);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_head {
                return Err(refuse(431, "request head too large"));
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(refuse(431, "too many request headers")),
        Err(_) => return Err(refuse(400, "malformed request")),
    };
    if n > limits.max_head {
        return Err(refuse(431, "request head too large"));
    }
    let method_name = req.method.unwrap_or("").to_string();
    let Some(method) = parse_method(&method_name) else {
        return Err(refuse(501, "method not implemented"));
    };
    let target = req.path.unwrap_or("").to_string();
    if !target.starts_with('/') {
        return Err(refuse(400, "request target must be an absolute path"));
    }
    let minor_version = req.version.unwrap_or(1);
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return Err(refuse(400, "header value is not UTF-8"));
        };
        headers.push((h.name.to_string(), v.trim().to_string()));
    }
    let mut head = Head {
        method,
        method_name,
        target,
        minor_version,
        headers,
        content_length: 0,
        expect_continue: false,
        keep_alive: true,
        secure,
        peer,
    };
    if head.header_values("transfer-encoding").next().is_some() {
        if head.header_values("content-length").next().is_some() {
            return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
        }
        return Err(refuse(411, "send the body with a Content-Length; chunked bodies are not accepted"));
    }
    let mut length: Option<usize> = None;
    for v in head.header_values("content-length") {
        let Ok(n) = v.parse::<u64>() else {
            return Err(refuse(400, "invalid Content-Length"));
        };
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if length.is_some_and(|l| l != n) {
            return Err(refuse(400, "conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    head.content_length = length.unwrap_or(0);
    head.expect_continue = head.header_values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"))
        && head.content_length > 0;
    let conn: Vec<String> = head
        .header_values("connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    head.keep_alive = if head.minor_version == 0 {
        conn.iter().any(|t| t == "keep-alive")
    } else {
        !conn.iter().any(|t| t == "close")
    };
    Ok(Some((head, n)))
}

// ---------------------------------------------------------------------------------------
// The exchange: one request and its response, as an embedded-svc `Connection`.

/// The request body as the handler reads it: bytes already buffered first, then the socket,
/// never past `Content-Length`, within the body deadline.
pub struct Body<'c> {
    io: &'c mut Io,
    buf: &'c mut Vec<u8>,
    left: usize,
    expect_continue: bool,
    deadline: Option<Instant>,
    body_timeout: Duration,
    timed_out: bool,
}

impl ErrorType for Body<'_> {
    type Error = ExchangeError;
}

impl EioRead for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> Result<usize, ExchangeError> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        if self.expect_continue {
            self.expect_continue = false;
            self.io
                .write_all_now(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| ExchangeError::Io(e.kind()))?;
        }
        let want = out.len().min(self.left);
        if !self.buf.is_empty() {
            let n = want.min(self.buf.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            self.left -= n;
            return Ok(n);
        }
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + self.body_timeout);
        match self.io.read_by(&mut out[..want], deadline) {
            Ok(0) => Err(ExchangeError::Io(io::ErrorKind::UnexpectedEof)),
            Ok(n) => {
                self.left -= n;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                self.timed_out = true;
                Err(ExchangeError::TimedOut)
            }
            Err(e) => Err(ExchangeError::Io(e.kind())),
        }
    }
}

impl EioWrite for Body<'_> {
    fn write(&mut self, _buf: &[u8]) -> Result<usize, ExchangeError> {
        Err(ExchangeError::Unsupported)
    }
    fn flush(&mut self) -> Result<(), ExchangeError> {
        Err(ExchangeError::Unsupported)
    }
}

struct ResponseHead {
    status: u16,
    headers: Vec<(String, String)>,
}

/// One request and its response. Implements embedded-svc's [`Connection`]: the handler reads
/// the head through [`Headers`]/[`Query`], the body through `read`, then calls
/// `initiate_response` and writes the body into a bounded buffer that the server sends with
/// a `Content-Length` once the handler returns.
pub struct Exchange<'c> {
    head: Head,
    body: Body<'c>,
    response: Option<ResponseHead>,
    out: Vec<u8>,
    max_response: usize,
}

impl Exchange<'_> {
    /// The request head.
    pub fn head(&self) -> &Head {
        &self.head
    }
}

impl ErrorType for Exchange<'_> {
    type Error = ExchangeError;
}

impl Headers for Exchange<'_> {
    fn header(&self, name: &str) -> Option<&'_ str> {
        self.head.header(name)
    }
}

impl Query for Exchange<'_> {
    fn uri(&self) -> &'_ str {
        self.head.uri()
    }
    fn method(&self) -> Method {
        self.head.method
    }
}

impl EioRead for Exchange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ExchangeError> {
        self.body.read(buf)
    }
}

impl EioWrite for Exchange<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, ExchangeError> {
        if self.response.is_none() {
            return Err(ExchangeError::NotResponding);
        }
        if self.out.len().saturating_add(buf.len()) > self.max_response {
            return Err(ExchangeError::ResponseTooLarge);
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), ExchangeError> {
        Ok(())
    }
}

impl<'c> Connection for Exchange<'c> {
    type Headers = Head;
    type Read = Body<'c>;
    type RawConnectionError = ExchangeError;
    type RawConnection = Body<'c>;

    fn split(&mut self) -> (&Self::Headers, &mut Self::Read) {
        (&self.head, &mut self.body)
    }

    fn initiate_response<'a>(
        &'a mut self,
        status: u16,
        _message: Option<&'a str>,
        headers: &'a [(&'a str, &'a str)],
    ) -> Result<(), ExchangeError> {
        if self.response.is_some() {
            return Err(ExchangeError::AlreadyResponding);
        }
        let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
        if headers.iter().any(|(k, v)| bad(k) || bad(v) || k.is_empty()) {
            return Err(ExchangeError::BadHeader);
        }
        let headers = headers
            .iter()
            .filter(|(k, _)| {
                !k.eq_ignore_ascii_case("content-length")
                    && !k.eq_ignore_ascii_case("connection")
                    && !k.eq_ignore_ascii_case("transfer-encoding")
            })
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        self.response = Some(ResponseHead { status: status.clamp(100, 599), headers });
        Ok(())
    }

    fn is_response_initiated(&self) -> bool {
        self.response.is_some()
    }

    fn raw_connection(&mut self) -> Result<&mut Self::RawConnection, ExchangeError> {
        Err(ExchangeError::Unsupported)
    }
}

/// The reason phrase of the statuses this server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

fn response_bytes(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    send_body: bool,
    close: bool,
) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "Content-Length: {}\r\n", body.len());
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if send_body {
        out.extend_from_slice(body);
    }
    out
}

fn simple_response(status: u16, detail: &str, close: bool, retry_after: bool) -> Vec<u8> {
    let body = format!("{{\"detail\":{}}}", json_string(detail));
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("Cache-Control".to_string(), "no-store".to_string()),
    ];
    if retry_after {
        headers.push(("Retry-After".to_string(), "1".to_string()));
    }
    response_bytes(status, &headers, body.as_bytes(), true, close)
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

// ---------------------------------------------------------------------------------------
// Server

/// A counted slot (connection or active request); released on drop.
struct Permit(Arc<HttpStatsSlot>);

/// Which counter a permit holds.
struct HttpStatsSlot {
    stats: Arc<HttpStats>,
    active: bool,
}

impl Permit {
    fn try_acquire(stats: &Arc<HttpStats>, active: bool, max: usize) -> Option<Permit> {
        let counter = if active { &stats.active_requests } else { &stats.open_connections };
        counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Permit(Arc::new(HttpStatsSlot { stats: stats.clone(), active })))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = if self.0.active { &self.0.stats.active_requests } else { &self.0.stats.open_connections };
        c.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running server. Dropping it stops accepting; open connections end at their next
/// request boundary or timeout.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// The server's counters.
    pub stats: Arc<HttpStats>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stops accepting connections and waits for the accept thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let wake = match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], a.port())),
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
            }
            a => a,
        };
        let woke = TcpStream::connect_timeout(&wake, Duration::from_millis(500)).is_ok();
        if let Some(j) = self.accept.take() {
            // Without the wake-up the thread stays in accept until the process ends; waiting
            // for it would hang the shutdown.
            if woke {
                let _ = j.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS configuration from a PEM certificate chain and a PEM private key.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("api.tls_cert = {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("api.tls_cert = {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("api.tls_cert = {}: no certificate in the file", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("api.tls_key = {}: no usable private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("api.tls_cert / api.tls_key do not form a usable pair: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `handler` on `listener` until the returned [`Server`] is stopped or dropped.
pub fn serve<H>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    handler: Arc<H>,
) -> io::Result<Server>
where
    H: for<'c> Handler<Exchange<'c>> + Sync + 'static,
{
    let addr = listener.local_addr()?;
    listener.set_nonblocking(false)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(HttpStats::default());
    let accept = {
        let stop = stop.clone();
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("tg-http-accept".into())
            .spawn(move || accept_loop(listener, tls, Arc::new(limits), handler, stats, stop))?
    };
    Ok(Server { addr, stop, accept: Some(accept), stats })
}

fn accept_loop<H>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<Limits>,
    handler: Arc<H>,
    stats: Arc<HttpStats>,
    stop: Arc<AtomicBool>,
) where
    H: for<'c> Handler<Exchange<'c>> + Sync + 'static,
{
    while !stop.load(Ordering::SeqCst) {
        let (sock, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("[API] event=accept_error cause=\"{e}\"");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        let Some(permit) = Permit::try_acquire(&stats, false, limits.max_connections) else {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            stats.count_status(503);
            refuse_now(sock, tls.is_some());
            continue;
        };
        let (tls, limits, handler, stats2, stop2) =
            (tls.clone(), limits.clone(), handler.clone(), stats.clone(), stop.clone());
        let spawned =
            std::thread::Builder::new().name("tg-http".into()).stack_size(256 * 1024).spawn(move || {
                let _permit = permit;
                serve_connection(sock, peer, tls, &limits, &*handler, &stats2, &stop2);
            });
        if let Err(e) = spawned {
            log::warn!("[API] event=thread_error cause=\"{e}\"");
        }
    }
}

/// Answers a connection over the cap without a thread: a canned 503 on a plain socket (the
/// kernel buffer of a new socket always has room for it), a plain close under TLS.
fn refuse_now(sock: TcpStream, tls: bool) {
    if !tls {
        let _ = sock.set_nonblocking(true);
        let mut s = &sock;
        let _ = s.write_all(&simple_response(503, "too many connections; retry shortly", true, true));
    }
    let _ = sock.shutdown(Shutdown::Both);
}

fn serve_connection<H>(
    sock: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &Limits,
    handler: &H,
    stats: &Arc<HttpStats>,
    stop: &AtomicBool,
) where
    H: for<'c> Handler<Exchange<'c>> + Sync,
{
    let _ = sock.set_write_timeout(Some(limits.write_timeout));
    let mut io = match tls {
        None => Io::Plain(sock),
        Some(cfg) => match rustls::ServerConnection::new(cfg) {
            Ok(c) => Io::Tls(Box::new(rustls::StreamOwned::new(c, sock))),
            Err(_) => return,
        },
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let mut served: u32 = 0;
    loop {
        // Wait for the next request: the idle bound until its first byte, then the head bound.
        let mut deadline = Instant::now() + limits.idle_timeout;
        let mut started = !buf.is_empty();
        if started {
            deadline = Instant::now() + limits.head_timeout;
        }
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, limits, io.secure(), peer) {
                    Ok(Some((head, n))) => {
                        buf.drain(..n);
                        break head;
                    }
                    Ok(None) => {}
                    Err(r) => {
                        stats.rejected.fetch_add(1, Ordering::Relaxed);
                        stats.count_status(r.status);
                        let _ = io.write_all_now(&simple_response(r.status, r.detail, true, false));
                        io.close();
                        return;
                    }
                }
            }
            if stop.load(Ordering::Relaxed) && !started {
                io.close();
                return;
            }
            let room = (limits.max_head + 1).saturating_sub(buf.len()).clamp(1, chunk.len());
            match io.read_by(&mut chunk[..room], deadline) {
                Ok(0) => {
                    io.close();
                    return;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if !started {
                        started = true;
                        deadline = Instant::now() + limits.head_timeout;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if started {
                        stats.timeouts.fetch_add(1, Ordering::Relaxed);
                        stats.count_status(408);
                        let _ = io.write_all_now(&simple_response(
                            408,
                            "request head not received in time",
                            true,
                            false,
                        ));
                    }
                    io.close();
                    return;
                }
                Err(e) => {
                    if io.secure() && e.kind() == io::ErrorKind::InvalidData {
                        stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    io.close();
                    return;
                }
            }
        };
        served += 1;
        // A body within bounds arrives whole before a handler slot is taken, so a client that
        // never finishes its body holds only its own connection.
        let mut expect_continue = head.expect_continue;
        if head.content_length <= limits.max_body && buf.len() < head.content_length {
            if expect_continue {
                expect_continue = false;
                if io.write_all_now(b"HTTP/1.1 100 Continue\r\n\r\n").is_err() {
                    io.close();
                    return;
                }
            }
            let deadline = Instant::now() + limits.body_timeout;
            while buf.len() < head.content_length {
                let want = (head.content_length - buf.len()).min(chunk.len());
                match io.read_by(&mut chunk[..want], deadline) {
                    Ok(0) => {
                        io.close();
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            stats.timeouts.fetch_add(1, Ordering::Relaxed);
                            stats.count_status(408);
                            let _ = io.write_all_now(&simple_response(
                                408,
                                "request body not received in time",
                                true,
                                false,
                            ));
                        }
                        io.close();
                        return;
                    }
                }
            }
        }
        let is_head = head.method == Method::Head;
        let mut keep =
            head.keep_alive && served < limits.max_requests_per_connection && !stop.load(Ordering::Relaxed);
        let Some(active) = Permit::try_acquire(stats, true, limits.max_active) else {
            stats.busy.fetch_add(1, Ordering::Relaxed);
            stats.count_status(503);
            let _ = io.write_all_now(&simple_response(503, "busy; retry shortly", true, true));
            io.close();
            return;
        };
        let content_length = head.content_length;
        let mut ex = Exchange {
            head,
            body: Body {
                io: &mut io,
                buf: &mut buf,
                left: content_length,
                expect_continue,
                deadline: None,
                body_timeout: limits.body_timeout,
                timed_out: false,
            },
            response: None,
            out: Vec::new(),
            max_response: limits.max_response,
        };
        let handled = handler.handle(&mut ex);
        drop(active);
        let Exchange { head, body, response, out, .. } = ex;
        if body.timed_out {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        let body_left = body.left;
        let expect_pending = body.expect_continue;
        // The response: what the handler said, or a 500 when it failed or said nothing.
        let (status, headers, payload) = match (handled, response) {
            (Ok(()), Some(r)) => (r.status, r.headers, out),
            (res, _) => {
                if let Err(e) = res {
                    log::warn!(
                        "[API] event=handler_error method={} path={} cause=\"{e:?}\"",
                        head.method_name,
                        head.path()
                    );
                }
                let body = b"{\"detail\":\"internal error\"}".to_vec();
                (500, vec![("Content-Type".to_string(), "application/json".to_string())], body)
            }
        };
        // A body the handler did not read is drained when it is small and already on its
        // way; otherwise (or when the client waits for 100-continue) the connection closes.
        if body_left > 0 {
            keep = keep
                && !expect_pending
                && body_left <= 16 * 1024
                && drain(&mut io, &mut buf, body_left, limits);
        }
        stats.count_status(status);
        let bytes = response_bytes(status, &headers, &payload, !is_head, !keep);
        if io.write_all_now(&bytes).is_err() || !keep {
            io.close();
            return;
        }
    }
}

/// Reads and discards `left` body bytes (already-buffered ones first) within a short bound.
fn drain(io: &mut Io, buf: &mut Vec<u8>, mut left: usize, limits: &Limits) -> bool {
    let n = left.min(buf.len());
    buf.drain(..n);
    left -= n;
    let deadline = Instant::now() + limits.body_timeout.min(Duration::from_secs(2));
    let mut scratch = [0u8; 2048];
    while left > 0 {
        let want = left.min(scratch.len());
        match io.read_by(&mut scratch[..want], deadline) {
            Ok(0) | Err(_) => return false,
            Ok(n) => left -= n,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn parses_a_head_and_its_framing() {
        let l = Limits::default();
        let raw = b"POST /api/v1/positions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"a\":1}";
        let (h, n) = parse_head(raw, &l, false, peer()).ok().flatten().expect("complete");
        assert_eq!(n, raw.len() - 7);
        assert_eq!(h.path(), "/api/v1/positions");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(h.content_length, 12);
        assert!(!h.keep_alive);
        assert_eq!(h.header("HOST"), Some("a"));
    }

    #[test]
    fn refuses_what_it_must() {
        let l = Limits::default();
        let code = |raw: &[u8]| match parse_head(raw, &l, false, peer()) {
            Err(r) => r.status,
            Ok(Some(_)) => 0,
            Ok(None) => 1,
        };
        assert_eq!(code(b"GET / HTTP/1.1\r\nHost: a\r\n"), 1, "partial");
        assert_eq!(code(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(code(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), 400);
        assert_eq!(code(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"), 400);
        assert_eq!(code(b"GET / HTTP/1.1\r\nContent-Length: -3\r\n\r\n"), 400);
        assert_eq!(code(b"BREW / HTTP/1.1\r\n\r\n"), 501);
        assert_eq!(code(b"GET http://x/ HTTP/1.1\r\n\r\n"), 400);
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(code(&big), 431);
        let many: String = (0..60).map(|i| format!("X{i}: 1\r\n")).collect();
        assert_eq!(code(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), 431);
        // A huge declared length is only a number: nothing is allocated for it.
        let (h, _) =
            parse_head(b"POST / HTTP/1.1\r\nContent-Length: 9000000000000000000\r\n\r\n", &l, false, peer())
                .ok()
                .flatten()
                .expect("complete");
        assert!(h.content_length > 16 * 1024);
    }

    #[test]
    fn http10_closes_unless_asked() {
        let l = Limits::default();
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n", &l, false, peer()).ok().flatten().expect("head");
        assert!(!h.keep_alive);
        let (h, _) = parse_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &l, false, peer())
            .ok()
            .flatten()
            .expect("head");
        assert!(h.keep_alive);
    }

    #[test]
    fn response_framing() {
        let b = response_bytes(404, &[("Content-Type".into(), "text/plain".into())], b"nope", true, true);
        let s = String::from_utf8(b).expect("utf8");
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(s.contains("Content-Length: 4\r\nConnection: close\r\n\r\nnope"));
        let b = response_bytes(200, &[], b"body", false, false);
        assert!(String::from_utf8(b).expect("utf8").ends_with("Content-Length: 4\r\n\r\n"));
    }
}
