//! HTTP/1.1 requests over the project's own DNS-fallback and TLS stack (hyper's connection-
//! level client; one connection per request, bounded in time and size).

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
    /// True when the request cannot have reached the server.
    pub fn not_sent(&self) -> bool {
        matches!(self, HttpError::Resolve(_) | HttpError::Connect { .. } | HttpError::Tls(_))
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
