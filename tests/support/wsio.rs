//! Async WebSocket framing over any `AsyncRead + AsyncWrite`, for test servers and test clients.
//!
//! `tokio_tungstenite::WebSocketStream` is only usable through the `futures` `Stream`/`Sink`
//! traits, and this crate does not depend on `futures`. So this module drives tungstenite's own
//! (sync, non-blocking) state machine through an in-memory buffer ([`MemIo`]): bytes read from the
//! socket are fed in, frames are parsed out, and whatever tungstenite writes (messages, automatic
//! pongs, close replies) is collected and written to the socket by [`WsStream::flush_out`].
//!
//! [`WsStream::read_more`] is cancel-safe (a `select!` branch may drop it); the other async
//! methods are not.

use std::io::{self, Read, Write};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tungstenite::error::ProtocolError;
use tungstenite::handshake::HandshakeError;
use tungstenite::handshake::client::Response as ClientResponse;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error, Message, WebSocket};

/// Bytes read per socket read.
const READ_CHUNK: usize = 16 * 1024;
/// Most handshake rounds (each needs at least one byte from the peer).
const MAX_HANDSHAKE_ROUNDS: usize = 1024;

/// An in-memory non-blocking stream: reads drain `rx` (or return `WouldBlock`), writes append to
/// `tx`.
#[derive(Default)]
pub struct MemIo {
    rx: BytesMut,
    tx: Vec<u8>,
}

impl Read for MemIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rx.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.rx.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        self.rx.advance(n);
        Ok(n)
    }
}

impl Write for MemIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A WebSocket over an async byte stream `S` (e.g. a tokio-rustls stream).
pub struct WsStream<S> {
    io: S,
    ws: WebSocket<MemIo>,
    /// When set, everything the WebSocket would send (including pongs and close replies) is
    /// thrown away instead of written to the socket.
    pub discard_output: bool,
}

fn is_would_block(e: &Error) -> bool {
    matches!(e, Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// Default config for the test servers and clients: 16 MiB messages at most.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20))
}

async fn write_all_tx<S: AsyncWrite + Unpin>(io: &mut S, mem: &mut MemIo) -> io::Result<()> {
    if !mem.tx.is_empty() {
        let out = std::mem::take(&mut mem.tx);
        io.write_all(&out).await?;
        io.flush().await?;
    }
    Ok(())
}

async fn read_into<S: AsyncRead + Unpin>(io: &mut S, mem: &mut MemIo) -> io::Result<usize> {
    let mut buf = vec![0u8; READ_CHUNK];
    let n = io.read(&mut buf).await?;
    mem.rx.extend_from_slice(&buf[..n]);
    Ok(n)
}

fn eof_error() -> Error {
    Error::Io(io::ErrorKind::UnexpectedEof.into())
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Server side: completes the opening handshake and returns the stream and the request's
    /// path and query (e.g. `/stream?streams=btcusdt@bookTicker`). Wrap in a timeout.
    pub async fn accept(io: S) -> Result<(Self, String), Error> {
        Self::accept_with(io, |_| {}).await
    }

    /// As [`WsStream::accept`], calling `on_request(path_and_query)` once the request is read
    /// and before the `101` answer is sent (so a server can register the connection before the
    /// client can observe it).
    // The callback's signature is tungstenite's (`ErrorResponse` is large).
    #[allow(clippy::result_large_err)]
    pub async fn accept_with(mut io: S, on_request: impl FnOnce(&str)) -> Result<(Self, String), Error> {
        let mut path = String::new();
        let path_ref = &mut path;
        let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            *path_ref = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| req.uri().to_string());
            on_request(path_ref);
            Ok(resp)
        };
        let mut round = tungstenite::accept_hdr_with_config(MemIo::default(), callback, Some(config()));
        for _ in 0..MAX_HANDSHAKE_ROUNDS {
            match round {
                Ok(mut ws) => {
                    write_all_tx(&mut io, ws.get_mut()).await?;
                    return Ok((WsStream { io, ws, discard_output: false }, path));
                }
                Err(HandshakeError::Failure(e)) => return Err(e),
                Err(HandshakeError::Interrupted(mut mid)) => {
                    let mem = mid.get_mut().get_mut();
                    write_all_tx(&mut io, mem).await?;
                    if read_into(&mut io, mem).await? == 0 {
                        return Err(eof_error());
                    }
                    round = mid.handshake();
                }
            }
        }
        Err(Error::Io(io::Error::other("handshake too long")))
    }

    /// Client side: sends the opening handshake for `url` (e.g.
    /// `wss://localhost:9443/stream?streams=a/b`; the host part only fills the `Host` header) and
    /// waits for the answer. Wrap in a timeout.
    pub async fn connect(mut io: S, url: &str) -> Result<(Self, ClientResponse), Error> {
        let mut round = tungstenite::client::client_with_config(url, MemIo::default(), Some(config()));
        for _ in 0..MAX_HANDSHAKE_ROUNDS {
            match round {
                Ok((mut ws, resp)) => {
                    write_all_tx(&mut io, ws.get_mut()).await?;
                    return Ok((WsStream { io, ws, discard_output: false }, resp));
                }
                Err(HandshakeError::Failure(e)) => return Err(e),
                Err(HandshakeError::Interrupted(mut mid)) => {
                    let mem = mid.get_mut().get_mut();
                    write_all_tx(&mut io, mem).await?;
                    if read_into(&mut io, mem).await? == 0 {
                        return Err(eof_error());
                    }
                    round = mid.handshake();
                }
            }
        }
        Err(Error::Io(io::Error::other("handshake too long")))
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream (writing to it directly corrupts the WebSocket stream).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// Reads one chunk from the socket into the parse buffer; `Ok(0)` at end of stream.
    /// Cancel-safe.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        read_into(&mut self.io, self.ws.get_mut()).await
    }

    /// The next complete message already buffered, `Ok(None)` if more bytes are needed.
    /// `Err(ConnectionClosed)` once the close handshake is over.
    pub fn next_buffered(&mut self) -> Result<Option<Message>, Error> {
        match self.ws.read() {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_would_block(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Queues a message (written by the next [`WsStream::flush_out`]).
    pub fn queue(&mut self, msg: Message) -> Result<(), Error> {
        self.ws.write(msg)?;
        self.ws.flush()
    }

    /// Writes everything queued (messages, pongs, close replies) to the socket; with
    /// `discard_output` the bytes are dropped instead.
    pub async fn flush_out(&mut self) -> io::Result<()> {
        // Moves tungstenite's own buffer and pending pongs into `MemIo::tx`; errors (e.g. the
        // connection is closed) leave whatever was produced in `tx`.
        let _ = self.ws.flush();
        let mem = self.ws.get_mut();
        if self.discard_output {
            mem.tx.clear();
            return Ok(());
        }
        write_all_tx(&mut self.io, mem).await
    }

    /// Sends one message and flushes it.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        self.queue(msg)?;
        self.flush_out().await.map_err(Error::Io)
    }

    /// Sends a close frame (code, reason) and flushes it.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), Error> {
        self.send(Message::Close(Some(close_frame(code, reason)))).await
    }

    /// The next message; `None` after a completed close handshake. Pongs to received pings and
    /// close replies are sent on the way. An end of stream without a close handshake is an
    /// error. Wrap in a timeout.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        loop {
            match self.next_buffered() {
                Ok(Some(m)) => {
                    if let Err(e) = self.flush_out().await {
                        return Some(Err(Error::Io(e)));
                    }
                    return Some(Ok(m));
                }
                Ok(None) => {}
                Err(Error::ConnectionClosed) | Err(Error::AlreadyClosed) => {
                    let _ = self.flush_out().await;
                    return None;
                }
                Err(e) => return Some(Err(e)),
            }
            if let Err(e) = self.flush_out().await {
                return Some(Err(Error::Io(e)));
            }
            match self.read_more().await {
                Ok(0) => {
                    return if self.ws.can_read() {
                        Some(Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)))
                    } else {
                        None
                    };
                }
                Ok(_) => {}
                Err(e) => return Some(Err(Error::Io(e))),
            }
        }
    }

    /// The next text message, skipping pings and pongs; `None` on close or error.
    pub async fn recv_text(&mut self) -> Option<String> {
        loop {
            match self.recv().await? {
                Ok(Message::Text(t)) => return Some(t.as_str().to_owned()),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Binary(_) | Message::Close(_)) | Err(_) => return None,
            }
        }
    }

    /// Whether the WebSocket can still read (no close frame received yet).
    pub fn can_read(&self) -> bool {
        self.ws.can_read()
    }
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame { code: code.into(), reason: reason.to_owned().into() }
}
