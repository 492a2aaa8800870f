//! A WebSocket client of our own over any byte stream, thin and allocation-free per frame.
//!
//! The handshake uses tungstenite's key helpers and httparse; framing is done here over one
//! fixed buffer sized to the venue's largest message, so reading a frame and handing its
//! payload to the decoder never allocates. Server frames must be unmasked and unextended
//! (we offer no extensions); client frames are masked. [`WsConn::next`] only reads, so it is
//! cancel-safe and can race a timer; pongs and close replies are queued and sent by
//! [`WsConn::flush_control`].

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::core::backoff::Rng;

/// A TCP stream, with or without TLS.
pub enum Stream {
    /// `ws://` / `http://`.
    Plain(TcpStream),
    /// `wss://` / `https://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why the WebSocket failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// Reading or writing the socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Eof,
    /// The upgrade answer was not `101 Switching Protocols`.
    #[error("upgrade refused: HTTP {status}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// `Location` of a redirect, if any.
        location: Option<String>,
    },
    /// The upgrade answer was malformed or its accept key wrong.
    #[error("bad upgrade answer: {0}")]
    Handshake(&'static str),
    /// A frame broke the protocol (masked, reserved bits, bad control frame ...).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A frame or message larger than the configured limit.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(u64),
    /// A write did not finish in time (peer not reading).
    #[error("write timed out")]
    WriteTimeout,
}

/// A received event. Payload slices borrow the connection's buffer until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message.
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping (its pong is queued: call [`WsConn::flush_control`]).
    Ping,
    /// A pong.
    Pong,
    /// The peer sent a close frame (its code, if any); our close reply is queued.
    Close(Option<u16>),
}

/// Limits of one connection.
#[derive(Clone, Copy, Debug)]
pub struct WsLimits {
    /// Largest frame payload accepted.
    pub max_frame: usize,
    /// Largest (reassembled) message accepted.
    pub max_message: usize,
}

/// An upgraded WebSocket connection.
pub struct WsConn {
    io: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    frag: Vec<u8>,
    frag_opcode: Option<u8>,
    limits: WsLimits,
    control: Vec<u8>,
    wbuf: Vec<u8>,
    rng: Rng,
    write_timeout: Duration,
}

const MAX_HEAD: usize = 16 * 1024;

/// Performs the HTTP upgrade on `io` and returns the connection.
pub async fn connect(
    mut io: Stream,
    host_header: &str,
    path: &str,
    headers: &[(&str, &str)],
    limits: WsLimits,
    seed: u64,
) -> Result<WsConn, WsError> {
    let key = tungstenite::handshake::client::generate_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: tickguard/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    io.flush().await?;
    let cap = limits.max_message.max(limits.max_frame) + 14 + MAX_HEAD;
    let mut buf = vec![0u8; cap];
    let mut end = 0;
    let head_len = loop {
        if end >= MAX_HEAD {
            return Err(WsError::Handshake("answer head larger than 16 KiB"));
        }
        let n = io.read(&mut buf[end..MAX_HEAD]).await?;
        if n == 0 {
            return Err(WsError::Eof);
        }
        end += n;
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::to_owned)
                };
                if status != 101 {
                    return Err(WsError::Status { status, location: header("location") });
                }
                let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
                if header("sec-websocket-accept").as_deref() != Some(want.as_str()) {
                    return Err(WsError::Handshake("wrong Sec-WebSocket-Accept"));
                }
                if header("sec-websocket-extensions").is_some() {
                    return Err(WsError::Handshake("server chose an extension we did not offer"));
                }
                break len;
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => return Err(WsError::Handshake("malformed HTTP answer")),
        }
    };
    Ok(WsConn {
        io,
        buf,
        start: head_len,
        end,
        frag: Vec::with_capacity(limits.max_message),
        frag_opcode: None,
        limits,
        control: Vec::with_capacity(256),
        wbuf: Vec::with_capacity(1024),
        rng: Rng::new(seed),
        write_timeout: Duration::from_secs(5),
    })
}

impl WsConn {
    /// Bytes waiting in the read buffer (for tests).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Reads the next event. Cancel-safe: it only reads.
    pub async fn next(&mut self) -> Result<Event<'_>, WsError> {
        loop {
            if let Some((hdr, len, fin, opcode)) = self.parse_header()? {
                let total = hdr + len;
                if self.end - self.start >= total {
                    let p0 = self.start + hdr;
                    self.start += total;
                    match opcode {
                        0x9 => {
                            // Pong echoes the ping's payload.
                            self.control.clear();
                            push_frame_header(&mut self.control, 0xA, len);
                            let mask = self.rng.next_u64() as u32;
                            push_masked(&mut self.control, &self.buf[p0..p0 + len], mask);
                            return Ok(Event::Ping);
                        }
                        0xA => return Ok(Event::Pong),
                        0x8 => {
                            let code =
                                (len >= 2).then(|| u16::from_be_bytes([self.buf[p0], self.buf[p0 + 1]]));
                            self.control.clear();
                            push_frame_header(&mut self.control, 0x8, 2);
                            let mask = self.rng.next_u64() as u32;
                            push_masked(&mut self.control, &code.unwrap_or(1000).to_be_bytes(), mask);
                            return Ok(Event::Close(code));
                        }
                        0x1 | 0x2 if fin && self.frag_opcode.is_none() => {
                            let payload = &self.buf[p0..p0 + len];
                            return Ok(if opcode == 0x1 {
                                Event::Text(payload)
                            } else {
                                Event::Binary(payload)
                            });
                        }
                        0x1 | 0x2 if self.frag_opcode.is_none() => {
                            self.frag.clear();
                            self.frag.extend_from_slice(&self.buf[p0..p0 + len]);
                            self.frag_opcode = Some(opcode);
                        }
                        0x0 => {
                            let Some(op) = self.frag_opcode else {
                                return Err(WsError::Protocol("continuation without a first fragment"));
                            };
                            if self.frag.len() + len > self.limits.max_message {
                                return Err(WsError::TooLarge((self.frag.len() + len) as u64));
                            }
                            self.frag.extend_from_slice(&self.buf[p0..p0 + len]);
                            if fin {
                                self.frag_opcode = None;
                                return Ok(if op == 0x1 {
                                    Event::Text(&self.frag)
                                } else {
                                    Event::Binary(&self.frag)
                                });
                            }
                        }
                        _ => return Err(WsError::Protocol("unexpected opcode")),
                    }
                    continue;
                }
            }
            self.fill().await?;
        }
    }

    /// Parses the frame header at `start`, if complete: (header length, payload length, fin, opcode).
    fn parse_header(&self) -> Result<Option<(usize, usize, bool, u8)>, WsError> {
        let b = &self.buf[self.start..self.end];
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        if b[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = b[0] & 0x0F;
        if b[1] & 0x80 != 0 {
            return Err(WsError::Protocol("server frames must not be masked"));
        }
        let (hdr, len) = match b[1] & 0x7F {
            126 => {
                if b.len() < 4 {
                    return Ok(None);
                }
                (4, u64::from(u16::from_be_bytes([b[2], b[3]])))
            }
            127 => {
                if b.len() < 10 {
                    return Ok(None);
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[2..10]);
                (10, u64::from_be_bytes(a))
            }
            n => (2, u64::from(n)),
        };
        if opcode >= 0x8 && (len > 125 || !fin) {
            return Err(WsError::Protocol("bad control frame"));
        }
        if len > self.limits.max_frame as u64 {
            return Err(WsError::TooLarge(len));
        }
        Ok(Some((hdr, len as usize, fin, opcode)))
    }

    /// Reads more bytes, compacting the buffer first when needed.
    async fn fill(&mut self) -> Result<(), WsError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() || self.start > self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(WsError::TooLarge(self.buf.len() as u64));
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(WsError::Eof);
        }
        self.end += n;
        Ok(())
    }

    /// Sends any queued pong or close reply.
    pub async fn flush_control(&mut self) -> Result<(), WsError> {
        if self.control.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(self.write_timeout, async {
            self.io.write_all(&self.control).await?;
            self.io.flush().await
        })
        .await;
        self.control.clear();
        match r {
            Ok(r) => r.map_err(WsError::Io),
            Err(_) => Err(WsError::WriteTimeout),
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), WsError> {
        self.wbuf.clear();
        push_frame_header(&mut self.wbuf, opcode, payload.len());
        let mask = self.rng.next_u64() as u32;
        push_masked(&mut self.wbuf, payload, mask);
        let r = tokio::time::timeout(self.write_timeout, async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        })
        .await;
        match r {
            Ok(r) => r.map_err(WsError::Io),
            Err(_) => Err(WsError::WriteTimeout),
        }
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<(), WsError> {
        self.send(0x1, text).await
    }
    /// Sends a binary message.
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), WsError> {
        self.send(0x2, data).await
    }
    /// Sends a ping.
    pub async fn send_ping(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(0x9, &payload[..payload.len().min(125)]).await
    }
    /// Sends a close frame (best effort) and shuts the stream down.
    pub async fn close(&mut self, code: u16) {
        let _ = self.send(0x8, &code.to_be_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_millis(200), self.io.shutdown()).await;
    }
}

/// Client frame header with the mask bit set (the 4 mask bytes follow via [`push_masked`]).
fn push_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

fn push_masked(out: &mut Vec<u8>, payload: &[u8], mask: u32) {
    let m = mask.to_be_bytes();
    out.extend_from_slice(&m);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
}
