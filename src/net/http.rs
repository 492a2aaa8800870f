//! HTTP/1.1 requests over the project's own DNS-fallback and TLS stack, bounded in time and
//! size: [`request`] / [`request_streaming`] open one connection per request (hyper's
//! connection-level client); [`Pool`] keeps connections open between requests (hyper-util's
//! pooled client over the same [`Connector`]), for the brokers, whose closes must not pay a
//! TCP and TLS handshake each.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use tokio::net::TcpStream;

use super::dns::{Resolved, Resolver};
use super::tls::TlsClient;
use super::ws::Stream;

/// An endpoint parsed from a configured URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `https`/`wss` (true) or `http`/`ws`.
    pub tls: bool,
    /// Hostname (or IP literal) used for DNS, SNI and the Host header.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query of the URL (`/` if none).
    pub path: String,
}

impl Endpoint {
    /// Parses `scheme://host[:port][/path]` for http, https, ws and wss.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") | Some("wss") => true,
            Some("http") | Some("ws") => false,
            _ => return Err(format!("{url}: scheme must be http, https, ws or wss")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
        Ok(Endpoint { tls, host, port, path })
    }
    /// The Host header value.
    pub fn host_header(&self) -> String {
        let h = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default { h } else { format!("{h}:{}", self.port) }
    }
}

/// Why a request failed. `Resolve`, `Connect` and `Tls` are known not to have reached the
/// server; a failure after sending may or may not have been processed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No address for the host.
    #[error(transparent)]
    Resolve(#[from] super::dns::DnsError),
    /// Every address refused or timed out.
    #[error("connect to {host}:{port} failed: {why}")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Why.
        why: String,
    },
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The request was (possibly) sent but no complete answer arrived in time.
    #[error("no answer from {host} within {ms} ms")]
    Timeout {
        /// Host.
        host: String,
        /// The bound.
        ms: u128,
    },
    /// The exchange failed after connecting.
    #[error("HTTP exchange with {host} failed: {why}")]
    Exchange {
        /// Host.
        host: String,
        /// Why.
        why: String,
    },
}

impl HttpError {
    /// True when the request cannot have reached the server: only errors that happen before a
    /// connection exists (resolution, TCP connect, TLS handshake). Every other error (a
    /// timeout, a connection lost while writing or reading, an unreadable answer) may come
    /// after the request's first byte was written, so the venue may have processed it.
    pub fn not_sent(&self) -> bool {
        matches!(self, HttpError::Resolve(_) | HttpError::Connect { .. } | HttpError::Tls(_))
    }
}

impl crate::bus::error::EdgeError for HttpError {
    /// A TLS set-up error (bad `tls.extra_ca`, a host that is no TLS name) cannot heal by
    /// itself; everything else is the network's or the peer's state: recoverable.
    fn severity(&self) -> crate::bus::error::Severity {
        use crate::bus::error::Severity;
        match self {
            HttpError::Tls(super::tls::TlsError::ExtraCa { .. } | super::tls::TlsError::BadName(_)) => {
                Severity::Fatal
            }
            _ => Severity::Recoverable,
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (at most the client's limit).
    pub body: Bytes,
    /// `Retry-After` in seconds, if given.
    pub retry_after: Option<u64>,
    /// The address the request went to.
    pub addr: SocketAddr,
    /// How that address was found (a fallback resolver, the last-good cache ...).
    pub dns: super::dns::Via,
}

/// Opens TCP (+TLS) connections through the resolver.
#[derive(Clone)]
pub struct Connector {
    /// The resolver (last-good aware).
    pub resolver: Arc<Resolver>,
    /// TLS settings.
    pub tls: TlsClient,
    /// Bound of one TCP connect.
    pub connect_timeout: Duration,
    /// A background-refreshed address younger than this is used without a query.
    pub fresh: Duration,
}

impl Connector {
    /// Resolves (or forces a fresh resolution with `fresh_dns`) and connects, trying each
    /// address; returns the stream, the address used and how it was resolved.
    pub async fn connect(
        &self,
        ep: &Endpoint,
        fresh_dns: bool,
    ) -> Result<(Stream, SocketAddr, Resolved), HttpError> {
        let resolved = if fresh_dns {
            self.resolver.resolve(&ep.host).await?
        } else {
            self.resolver.addrs_for(&ep.host, self.fresh).await?
        };
        let mut why = String::from("no address");
        for ip in &resolved.addrs {
            let addr = SocketAddr::new(*ip, ep.port);
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    let stream = if ep.tls {
                        Stream::Tls(Box::new(self.tls.connect(&ep.host, tcp).await?))
                    } else {
                        Stream::Plain(tcp)
                    };
                    return Ok((stream, addr, resolved));
                }
                Ok(Err(e)) => why = format!("{addr}: {e}"),
                Err(_) => why = format!("{addr}: connect timeout"),
            }
        }
        Err(HttpError::Connect { host: ep.host.clone(), port: ep.port, why })
    }
}

/// One HTTP request.
#[derive(Clone, Debug)]
pub struct Req<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// Extra headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// Body, if any.
    pub body: Option<Bytes>,
    /// Bound of the whole exchange.
    pub timeout: Duration,
    /// Largest body read.
    pub max_body: usize,
}

/// The head of an answer: its status and what tickguard reads from its headers.
#[derive(Clone, Debug)]
pub struct Head {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` in seconds, if given.
    pub retry_after: Option<u64>,
    /// The address the request went to.
    pub addr: SocketAddr,
    /// How that address was found (a fallback resolver, the last-good cache ...).
    pub dns: super::dns::Via,
}

/// Aborts the connection's driver task when dropped: on success, on an error and when the
/// exchange's timeout drops it, so no connection outlives its request.
struct Driver(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one request (`Connection: close`) and reads the answer, bounded by `req.timeout` as
/// a whole and `req.max_body` bytes.
pub async fn request(conn: &Connector, ep: &Endpoint, req: Req<'_>) -> Result<Answer, HttpError> {
    let max_body = req.max_body;
    exchange(conn, ep, req, None, |head, body, host| async move {
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| HttpError::Exchange { host, why: e.to_string() })?
            .to_bytes();
        Ok(Answer {
            status: head.status,
            body,
            retry_after: head.retry_after,
            addr: head.addr,
            dns: head.dns,
        })
    })
    .await
}

/// As [`request`], but the body is never held whole: it is handed to `on_chunk` piece by piece
/// as it arrives (`Content-Length` or `chunked`; hyper decodes the framing), in pieces of at
/// most `chunk` bytes, and hyper's read buffer is bounded by `chunk` too (at least 8 KiB, hyper's
/// minimum), so the memory one answer takes is about `chunk` whatever its size. Same bounds as
/// [`request`]: `req.timeout` for the whole exchange and `req.max_body` bytes read (more is an
/// error). `on_chunk` sees the head with each piece (an error answer's body is handed over too);
/// an `Err` from it ends the exchange with [`HttpError::Exchange`] carrying its text.
pub async fn request_streaming(
    conn: &Connector,
    ep: &Endpoint,
    req: Req<'_>,
    chunk: usize,
    mut on_chunk: impl FnMut(&Head, &[u8]) -> Result<(), String>,
) -> Result<Head, HttpError> {
    let max_body = req.max_body;
    let chunk = chunk.max(8192);
    exchange(conn, ep, req, Some(chunk), |head, body, host| async move {
        let mut body = Limited::new(body, max_body);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| HttpError::Exchange { host: host.clone(), why: e.to_string() })?;
            let Ok(data) = frame.into_data() else { continue };
            for piece in data.chunks(chunk) {
                on_chunk(&head, piece).map_err(|why| HttpError::Exchange { host: host.clone(), why })?;
            }
        }
        Ok(head)
    })
    .await
}

/// The exchange shared by [`request`] and [`request_streaming`]: connects (outside the
/// timeout, which [`Connector::connect`] bounds itself), then, bounded by `req.timeout` as a
/// whole, sends the request and reads the head; `read_body(head, body, host)` reads the body.
/// `read_buf` bounds hyper's read buffer (`None`: hyper's default, about 400 KiB).
async fn exchange<T, F, Fut>(
    conn: &Connector,
    ep: &Endpoint,
    req: Req<'_>,
    read_buf: Option<usize>,
    read_body: F,
) -> Result<T, HttpError>
where
    F: FnOnce(Head, hyper::body::Incoming, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, HttpError>>,
{
    let Req { method, path: path_and_query, headers, body, timeout, max_body: _ } = req;
    let host = ep.host.clone();
    let (stream, addr, resolved) = conn.connect(ep, false).await?;
    let exchange = async {
        let io = hyper_util::rt::TokioIo::new(stream);
        let mut builder = hyper::client::conn::http1::Builder::new();
        if let Some(max) = read_buf {
            builder.max_buf_size(max.max(8192));
        }
        let (mut sender, connection) = builder
            .handshake::<_, Full<Bytes>>(io)
            .await
            .map_err(|e| HttpError::Exchange { host: host.clone(), why: e.to_string() })?;
        let _driver = Driver(tokio::spawn(connection));
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", ep.host_header())
            .header("connection", "close")
            .header("user-agent", concat!("tickguard/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| HttpError::Exchange { host: host.clone(), why: e.to_string() })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Exchange { host: host.clone(), why: e.to_string() })?;
        let head = Head {
            status: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
            addr,
            dns: resolved.via,
        };
        read_body(head, resp.into_body(), host.clone()).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { host, ms: timeout.as_millis() }),
    }
}

// ----- the pool ------------------------------------------------------------------------

/// Where a pooled connection went (handed to each answer through hyper-util's `extra`).
#[derive(Clone, Debug)]
struct ConnInfo {
    addr: SocketAddr,
    via: super::dns::Via,
}

/// A connection opened by [`Connector`] for the pool: hyper's IO traits over the stream.
pub struct PooledIo {
    io: hyper_util::rt::TokioIo<Stream>,
    info: ConnInfo,
}

impl hyper_util::client::legacy::connect::Connection for PooledIo {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new().extra(self.info.clone())
    }
}

impl hyper::rt::Read for PooledIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PooledIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// [`Connector`] as the tower `Service<Uri>` hyper-util's pool connects through: the same
/// DNS fallback (last-good aware), connect timeout per address, SNI and certificate name =
/// the URI's host. Counts the connections it opened (TCP, and TLS handshakes included).
#[derive(Clone)]
pub struct PoolConnector {
    conn: Connector,
    opened: Arc<std::sync::atomic::AtomicU64>,
}

impl tower_service::Service<hyper::Uri> for PoolConnector {
    type Response = PooledIo;
    type Error = HttpError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<PooledIo, HttpError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), HttpError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let conn = self.conn.clone();
        let opened = self.opened.clone();
        Box::pin(async move {
            let ep = Endpoint::parse(&uri.to_string()).map_err(|why| HttpError::Connect {
                host: uri.host().unwrap_or("").to_string(),
                port: uri.port_u16().unwrap_or(0),
                why,
            })?;
            let (stream, addr, resolved) = conn.connect(&ep, false).await?;
            opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(PooledIo {
                io: hyper_util::rt::TokioIo::new(stream),
                info: ConnInfo { addr, via: resolved.via },
            })
        })
    }
}

/// Kept-alive HTTP/1.1 connections to the hosts of one edge (hyper-util's pooled client over
/// [`Connector`]): at most `max_idle_per_host` idle connections per host, each closed after
/// `idle_timeout` unused. Cheap to clone (one pool).
///
/// **Never two sends of one request.** hyper-util re-sends a request only when hyper handed
/// it back untouched: a pooled connection found closed *before the request's first byte was
/// written* (`retry_canceled_requests`, on by default, and only on a reused connection).
/// Once any byte may have been written, the error is returned, never retried. A request the
/// pool reports failed is therefore sent at most once, and [`HttpError::not_sent`] stays
/// honest: only a failure of the connector itself (no address, refused, TLS) is classified
/// as not sent; a failure on a pooled connection (even one hyper-util would call
/// "canceled") is [`HttpError::Exchange`], i.e. possibly sent.
#[derive(Clone)]
pub struct Pool {
    client: hyper_util::client::legacy::Client<PoolConnector, Full<Bytes>>,
    opened: Arc<std::sync::atomic::AtomicU64>,
}

impl Pool {
    /// A pool connecting through `conn`.
    pub fn new(conn: Connector, max_idle_per_host: usize, idle_timeout: Duration) -> Pool {
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let connector = PoolConnector { conn, opened: opened.clone() };
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(max_idle_per_host)
            .retry_canceled_requests(true)
            .build(connector);
        Pool { client, opened }
    }

    /// How many connections (TCP + TLS handshakes) the pool has opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one request on a pooled connection (opening one if none is idle) and reads the
    /// answer; the connection goes back to the pool once the body is read. Bounded by
    /// `req.timeout` as a whole (connecting included) and `req.max_body` bytes.
    pub async fn request(&self, ep: &Endpoint, req: Req<'_>) -> Result<Answer, HttpError> {
        let Req { method, path, headers, body, timeout, max_body } = req;
        let host = ep.host.clone();
        let exchange = |why: String| HttpError::Exchange { host: host.clone(), why };
        let scheme = if ep.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{}{path}", ep.host_header());
        let mut r = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", ep.host_header())
            .header("user-agent", concat!("tickguard/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.body(Full::new(body.unwrap_or_default())).map_err(|e| exchange(e.to_string()))?;
        let work = async {
            let resp = self.client.request(r).await.map_err(|e| classify(&host, e))?;
            let info = resp.extensions().get::<ConnInfo>().cloned();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = Limited::new(resp.into_body(), max_body)
                .collect()
                .await
                .map_err(|e| exchange(e.to_string()))?
                .to_bytes();
            let (addr, dns) = match info {
                Some(i) => (i.addr, i.via),
                None => (SocketAddr::from(([0, 0, 0, 0], ep.port)), super::dns::Via::Literal),
            };
            Ok(Answer { status, body, retry_after, addr, dns })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout { host, ms: timeout.as_millis() }),
        }
    }
}

/// A pooled client's error as an [`HttpError`]. A connector failure carries the connector's
/// own error (resolve / connect / TLS: nothing was written). Anything else happened on a
/// connection, where the request may have been written in part or whole: an exchange error
/// (possibly sent). hyper-util's "canceled" (hyper gave the request back unwritten) is not
/// told apart publicly, so it is counted possibly sent too: safe, an order is looked up.
fn classify(host: &str, e: hyper_util::client::legacy::Error) -> HttpError {
    if e.is_connect() {
        let inner = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<HttpError>());
        return match inner {
            Some(HttpError::Resolve(d)) => {
                HttpError::Connect { host: host.to_string(), port: 0, why: d.to_string() }
            }
            Some(HttpError::Connect { host, port, why }) => {
                HttpError::Connect { host: host.clone(), port: *port, why: why.clone() }
            }
            Some(HttpError::Tls(t)) => {
                HttpError::Connect { host: host.to_string(), port: 0, why: t.to_string() }
            }
            _ => HttpError::Connect { host: host.to_string(), port: 0, why: chain(&e) },
        };
    }
    HttpError::Exchange { host: host.to_string(), why: chain(&e) }
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    let mut n = 0;
    while let Some(c) = cur {
        if n >= 8 {
            break;
        }
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
        n += 1;
    }
    s
}

/// True when `host` is an IP literal.
pub fn is_ip(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("wss://stream.binance.com:9443/stream").expect("valid");
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (true, "stream.binance.com", 9443, "/stream")
        );
        assert_eq!(e.host_header(), "stream.binance.com:9443");
        let e = Endpoint::parse("https://api.binance.com").expect("valid");
        assert_eq!((e.port, e.path.as_str(), e.host_header().as_str()), (443, "/", "api.binance.com"));
        let e = Endpoint::parse("http://[::1]:8080/x?y=1").expect("valid");
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("::1", 8080, "/x?y=1"));
        assert_eq!(e.host_header(), "[::1]:8080");
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }
}
