//! The API's HTTP/1.1 server: hyper's, on a thread and a current-thread tokio runtime of its
//! own (never the engine's), with the bounds a hostile LAN needs, over plain TCP and TLS
//! alike.
//!
//! | what | bound |
//! |---|---|
//! | connections | [`Limits::max_connections`] in all, [`Limits::max_per_peer`] from one address |
//! | an address at its cap | its oldest connection that is idle, unauthenticated and older than [`WAITING_GRACE`] is closed for the new one |
//! | waiting slots full | the oldest waiting connection that has not sent a byte is closed for the newcomer |
//! | past those caps | [`Limits::max_waiting`] more (at most [`Limits::max_waiting_per_peer`] per address), each with [`Limits::waiting_timeout`] to show the right token or session: then the oldest unauthenticated connection not in a request is closed to make room; without credentials: `503` and close. Beyond: closed at once |
//! | TLS handshake | within [`Limits::head_timeout`] of the accept (a ClientHello sent a byte at a time is cut there) |
//! | a request head | [`Limits::max_head`] bytes, [`Limits::max_headers`] headers (hyper answers `431`); whole within [`Limits::head_timeout`] from its first byte, else the connection is closed |
//! | keep-alive idle | [`Limits::idle_timeout`] |
//! | request body | [`Limits::max_body`] (`413`; a larger `Content-Length` is never read; chunked bodies are counted as they come), whole within [`Limits::body_timeout`] (`408`) |
//! | a response | written whole within [`Limits::write_timeout`] from its first byte, else the connection is closed |
//! | response bytes in flight | [`Limits::response_budget`] over all connections; a response that does not fit is a `503` |
//! | handlers running | [`Limits::max_active`] for requests without credentials, [`Limits::max_active_authed`] more reserved for the right token or session: a flood of anonymous requests never takes the emergency close's slot; a request waits for a slot at most [`AUTHED_SLOT_WAIT`] (with credentials) or [`OPEN_SLOT_WAIT`], then `503 busy` |
//! | anonymous requests | [`Limits::peer_rate`] per second per address (burst twice that), else `429` |
//! | wrong tokens and logins | each peer's failures answered after a growing delay ([`failure_delay`]); the right token is never delayed; logged as one `[AUTH]` summary per [`AUTH_SUMMARY_EVERY`] |
//!
//! Deadlines live in [`Guarded`], a wrapper of the connection's IO: hyper has no body or
//! write deadline and its `header_read_timeout` is one timer from idle, so the server keeps
//! one deadline per connection that follows the request's phase (idle, head, handling,
//! writing) and fails the IO when it passes.
//!
//! Threads: the server's own (the runtime), plus at most `max_active + max_active_authed`
//! handler threads (tokio's blocking pool, bounded), which wait for the engine or the disk.
//! Nothing on the close path (the engine, order tasks, journal writes) shares any of them.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::api::{Answer, Api, COMMON_HEADERS, Method, Req};
use super::auth::Credential;
use super::hosts::HostCheck;

/// Resource bounds of the server. See the module docs.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Most headers in one request.
    pub max_headers: usize,
    /// Largest request body.
    pub max_body: usize,
    /// Largest response body, in bytes.
    pub max_response: usize,
    /// Time for a whole request head from its first byte; also for a TLS handshake.
    pub head_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Time for a whole request body, from the end of its head.
    pub body_timeout: Duration,
    /// Time for a whole response to be written, from its first byte.
    pub write_timeout: Duration,
    /// Open connections at most (besides the waiting ones).
    pub max_connections: usize,
    /// Open connections from one address at most (besides the waiting ones).
    pub max_per_peer: usize,
    /// Connections past the caps that may show credentials.
    pub max_waiting: usize,
    /// Waiting connections from one address at most.
    pub max_waiting_per_peer: usize,
    /// Time a waiting connection has for its TLS handshake and its first request head.
    pub waiting_timeout: Duration,
    /// Handlers running at once for requests without credentials.
    pub max_active: usize,
    /// Handlers running at once reserved for requests with the right token or a session.
    pub max_active_authed: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: u32,
    /// Response bytes in flight (written or waiting to be), over all connections.
    pub response_budget: usize,
    /// Requests per second one address may send without credentials (burst: twice this).
    pub peer_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: 48,
            max_body: super::api::MAX_BODY,
            max_response: 2 * 1024 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: crate::limits::API_CONNECTIONS,
            max_per_peer: crate::limits::API_CONNECTIONS_PER_PEER,
            max_waiting: crate::limits::API_WAITING,
            max_waiting_per_peer: 2,
            waiting_timeout: Duration::from_secs(3),
            max_active: 4,
            max_active_authed: 4,
            max_requests_per_connection: 10_000,
            response_budget: crate::limits::API_RESPONSE_BUDGET,
            peer_rate: 20,
        }
    }
}

/// Counters of the server, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections open now (waiting ones included).
    pub open_connections: AtomicUsize,
    /// Requests being handled now.
    pub active_requests: AtomicUsize,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at once because every slot, waiting ones included, was taken.
    pub refused_connections: AtomicU64,
    /// Requests refused with `503` because every handler slot was taken.
    pub busy: AtomicU64,
    /// Connections or requests cut at a deadline (handshake, head, body, write).
    pub timeouts: AtomicU64,
    /// Requests refused before the API (malformed, too large, `421`).
    pub rejected: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// Requests refused with `421` (a `Host` not served: DNS rebinding).
    pub wrong_host: AtomicU64,
    /// Requests refused with `429` (an address over its anonymous rate).
    pub throttled: AtomicU64,
    /// Wrong bearer tokens and failed logins.
    pub auth_failures: AtomicU64,
    /// Unauthenticated connections closed to make room for one with credentials.
    pub evicted: AtomicU64,
    /// Waiting connections refused (`503`) because their first request had no credentials.
    pub waiting_refused: AtomicU64,
    /// Response bytes in flight now.
    pub response_bytes_in_flight: AtomicUsize,
}

impl HttpStats {
    fn count_status(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// An address at its cap replaces only its connections older than this.
pub const WAITING_GRACE: Duration = Duration::from_millis(500);

/// How long a request with credentials waits for a handler slot before `503 busy`.
pub const AUTHED_SLOT_WAIT: Duration = Duration::from_millis(500);
/// How long a request without credentials waits for a handler slot before `503 busy`.
pub const OPEN_SLOT_WAIT: Duration = Duration::from_millis(100);

/// How often failed credentials are summarised in the log (one line per period at most).
pub const AUTH_SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// Failures of one address forgotten after this long without a new one.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Failures of one address answered without delay.
pub const FREE_FAILURES: u32 = 5;
/// The longest delay of a failed credential.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);

/// The delay before answering the `n`-th failure (1-based) of one address: none for the
/// first [`FREE_FAILURES`] (a mistyped token), then 100 ms doubling per failure up to
/// [`MAX_FAILURE_DELAY`]. At the cap one address tests at most one token per 8 s per
/// connection it holds (at most [`Limits::max_per_peer`]): about 10^5 guesses a week
/// against a 128-bit token.
pub fn failure_delay(n: u32) -> Duration {
    if n <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let steps = (n - FREE_FAILURES - 1).min(10);
    Duration::from_millis(100u64 << steps).min(MAX_FAILURE_DELAY)
}

// ---------------------------------------------------------------------------------------
// Per-address state: anonymous rate, failed credentials.

/// The client a connection counts against: its IPv4 address, or the /64 of its IPv6 address
/// (one LAN host can take any number of addresses in its /64 by itself, so per-address caps
/// and rates hold per /64). An IPv4-mapped IPv6 address counts as the IPv4 address.
pub fn client(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V4(a) => IpAddr::V4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = a.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Peer {
    tokens: f64,
    refilled: Instant,
    failures: u32,
    last_failure: Instant,
    seen: Instant,
}

struct Peers {
    map: HashMap<IpAddr, Peer>,
    /// Failures since the last summary, by address (bounded like `map`).
    unreported: HashMap<IpAddr, u64>,
    unreported_total: u64,
}

impl Peers {
    fn new() -> Peers {
        Peers { map: HashMap::new(), unreported: HashMap::new(), unreported_total: 0 }
    }

    fn entry(&mut self, ip: IpAddr, now: Instant, burst: f64) -> &mut Peer {
        if !self.map.contains_key(&ip) && self.map.len() >= crate::limits::API_PEERS {
            // Full: forget the address seen least recently (its rate and failures restart;
            // an address that keeps guessing keeps being seen, so it is not the one).
            if let Some(old) = self.map.iter().min_by_key(|(_, p)| p.seen).map(|(k, _)| *k) {
                self.map.remove(&old);
            }
        }
        let p = self.map.entry(ip).or_insert(Peer {
            tokens: burst,
            refilled: now,
            failures: 0,
            last_failure: now,
            seen: now,
        });
        p.seen = now;
        p
    }

    /// Takes one anonymous request from the address's bucket; false when it is empty.
    fn allow(&mut self, ip: IpAddr, rate: u32, now: Instant) -> bool {
        let burst = f64::from(rate.max(1)) * 2.0;
        let p = self.entry(ip, now, burst);
        let dt = now.saturating_duration_since(p.refilled).as_secs_f64();
        p.tokens = (p.tokens + dt * f64::from(rate.max(1))).min(burst);
        p.refilled = now;
        if p.tokens >= 1.0 {
            p.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a failure; returns the delay to answer it after.
    fn failure(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let p = self.entry(ip, now, 0.0);
        if now.saturating_duration_since(p.last_failure) > FAILURE_MEMORY {
            p.failures = 0;
        }
        p.failures = p.failures.saturating_add(1);
        p.last_failure = now;
        let n = p.failures;
        if self.unreported.len() < crate::limits::API_PEERS || self.unreported.contains_key(&ip) {
            *self.unreported.entry(ip).or_insert(0) += 1;
        }
        self.unreported_total += 1;
        failure_delay(n)
    }

    /// One summary line of the failures since the last one, if any.
    fn summary(&mut self) -> Option<String> {
        if self.unreported_total == 0 {
            return None;
        }
        let mut v: Vec<(IpAddr, u64)> = self.unreported.drain().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let peers = v.len();
        let top: Vec<String> = v.iter().take(8).map(|(ip, n)| format!("{ip}:{n}")).collect();
        let total = std::mem::take(&mut self.unreported_total);
        Some(format!(
            "[AUTH] event=credentials_refused count={total} peers={peers} top={} window_s={}",
            top.join(","),
            AUTH_SUMMARY_EVERY.as_secs()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Connections: slots, waiting, eviction.

struct Conn {
    peer: IpAddr,
    opened: Instant,
    waiting: bool,
    authed: bool,
    /// In a request (from its head to its answer).
    busy: bool,
    /// A request head has arrived on it.
    headed: bool,
    /// A byte has arrived on it (a ClientHello or a request): set by [`FirstRead`].
    spoke: Arc<std::sync::atomic::AtomicBool>,
    kill: Arc<Notify>,
}

#[derive(Default)]
struct Conns {
    next: u64,
    live: HashMap<u64, Conn>,
    normal: usize,
    waiting: usize,
    per_peer: HashMap<IpAddr, (usize, usize)>,
}

enum Admit {
    Normal(u64),
    Waiting(u64),
    Refused,
}

impl Conns {
    fn admit(&mut self, peer: IpAddr, l: &Limits, kill: Arc<Notify>) -> Admit {
        let (n, w) = self.per_peer.get(&peer).copied().unwrap_or((0, 0));
        let waiting = if self.normal < l.max_connections && n < l.max_per_peer {
            false
        } else if self.normal < l.max_connections && self.replace_own_idle(peer) {
            // This address is at its own cap: its oldest connection that is neither in a
            // request nor authenticated (idle, mid-head, or waiting out a failed guess) and
            // older than WAITING_GRACE is closed for the new one. An address only ever
            // replaces its own connections, and a guesser on the operator's address cannot
            // hold that address's slots against the emergency close.
            false
        } else if self.waiting < l.max_waiting && w < l.max_waiting_per_peer {
            true
        } else if self.replace_silent_waiting(peer, w >= l.max_waiting_per_peer) {
            // Waiting slots full: the oldest one that has not sent a single byte is closed for
            // this one, so silent sockets from many addresses cannot hold every waiting slot
            // against the operator, whose ClientHello or request comes right after its
            // connect (and a connection that has spoken is never taken this way).
            true
        } else {
            return Admit::Refused;
        };
        self.next += 1;
        let id = self.next;
        let e = self.per_peer.entry(peer).or_insert((0, 0));
        if waiting {
            e.1 += 1;
            self.waiting += 1;
        } else {
            e.0 += 1;
            self.normal += 1;
        }
        self.live.insert(
            id,
            Conn {
                peer,
                opened: crate::bus::clock::mono_std(),
                waiting,
                authed: false,
                busy: false,
                headed: false,
                spoke: Arc::default(),
                kill,
            },
        );
        if waiting { Admit::Waiting(id) } else { Admit::Normal(id) }
    }

    fn release(&mut self, id: u64) {
        let Some(c) = self.live.remove(&id) else { return };
        let gone = match self.per_peer.get_mut(&c.peer) {
            Some(e) => {
                if c.waiting {
                    e.1 = e.1.saturating_sub(1);
                } else {
                    e.0 = e.0.saturating_sub(1);
                }
                *e == (0, 0)
            }
            None => false,
        };
        if gone {
            self.per_peer.remove(&c.peer);
        }
        if c.waiting {
            self.waiting = self.waiting.saturating_sub(1);
        } else {
            self.normal = self.normal.saturating_sub(1);
        }
    }

    /// A waiting connection showed credentials: it becomes a normal one, and the oldest
    /// unauthenticated connection that is not in a request is closed to make room.
    fn promote(&mut self, id: u64) -> bool {
        let evicted = self.close_oldest(|k, c| k != id && !c.authed && !c.busy && !c.waiting);
        if let Some(c) = self.live.get_mut(&id) {
            if c.waiting {
                c.waiting = false;
                let peer = c.peer;
                self.waiting = self.waiting.saturating_sub(1);
                self.normal += 1;
                if let Some(e) = self.per_peer.get_mut(&peer) {
                    e.1 = e.1.saturating_sub(1);
                    e.0 += 1;
                }
            }
        }
        evicted
    }

    /// Closes the oldest connection of `peer` that is not waiting, not in a request, not
    /// authenticated and older than [`WAITING_GRACE`]; false when there is none.
    fn replace_own_idle(&mut self, peer: IpAddr) -> bool {
        self.close_oldest(|_, c| {
            c.peer == peer && !c.waiting && !c.busy && !c.authed && c.opened.elapsed() >= WAITING_GRACE
        })
    }

    /// Closes the oldest waiting connection (of `peer` when `own`) that has not sent a byte;
    /// false when there is none.
    fn replace_silent_waiting(&mut self, peer: IpAddr, own: bool) -> bool {
        self.close_oldest(|_, c| c.waiting && !c.spoke.load(Ordering::Relaxed) && (!own || c.peer == peer))
    }

    /// Closes the oldest connection that `pick` accepts (its task ends at once, its slot is
    /// free now); false when there is none.
    fn close_oldest(&mut self, pick: impl Fn(u64, &Conn) -> bool) -> bool {
        let victim =
            self.live.iter().filter(|(k, c)| pick(**k, c)).min_by_key(|(_, c)| c.opened).map(|(k, _)| *k);
        let Some(v) = victim else { return false };
        if let Some(c) = self.live.get(&v) {
            c.kill.notify_one();
        }
        self.release(v);
        true
    }

    fn set(&mut self, id: u64, busy: bool, authed: bool) {
        if let Some(c) = self.live.get_mut(&id) {
            c.busy = busy;
            c.headed |= busy;
            c.authed |= authed;
        }
    }

    fn is_waiting(&self, id: u64) -> bool {
        self.live.get(&id).is_some_and(|c| c.waiting)
    }
}

// ---------------------------------------------------------------------------------------
// The deadline of a connection, following its phase.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests (or before the first).
    Idle,
    /// A request head has begun.
    Head,
    /// The API is answering (it bounds its own waits; the body read has its own deadline).
    Handling,
    /// The answer is being written.
    Writing,
}

struct PhaseState {
    phase: Phase,
    deadline: Option<Instant>,
    /// Bytes of the current answer's body; the answer is written once this many bytes went
    /// out and a flush completed.
    body_len: usize,
    written: usize,
    /// The answer's share of the response budget.
    permit: Option<Budget>,
}

/// A share of the response budget, counted in [`HttpStats::response_bytes_in_flight`] while
/// it is held.
struct Budget {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
    stats: Arc<HttpStats>,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.stats.response_bytes_in_flight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Shared {
    state: Mutex<PhaseState>,
    limits: Limits,
    stats: Arc<HttpStats>,
    /// The time for the first head when the connection is waiting.
    first_head: Duration,
    first: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut PhaseState) -> T) -> Option<T> {
        self.state.lock().ok().map(|mut s| f(&mut s))
    }
    fn handling(&self) {
        self.with(|s| {
            s.phase = Phase::Handling;
            s.deadline = None;
        });
    }
    fn writing(&self, body_len: usize, permit: Option<Budget>) {
        let d = crate::bus::clock::mono_std() + self.limits.write_timeout;
        self.with(|s| {
            s.phase = Phase::Writing;
            s.deadline = Some(d);
            s.body_len = body_len;
            s.written = 0;
            s.permit = permit;
        });
    }
}

/// The connection's IO with its deadline (see the module docs).
pub struct Guarded<T> {
    inner: T,
    shared: Arc<Shared>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl<T> Guarded<T> {
    /// Starts in the idle phase: the first request has the idle time to begin (the waiting
    /// time for a waiting connection).
    fn new(inner: T, shared: Arc<Shared>) -> Guarded<T> {
        let idle = crate::bus::clock::mono_std() + shared.limits.idle_timeout.min(shared.first_head);
        shared.with(|s| s.deadline = Some(idle));
        Guarded { inner, shared, sleep: Box::pin(tokio::time::sleep_until(idle.into())), armed: Some(idle) }
    }

    /// `Err` once the phase's deadline has passed; else arms the timer so the task wakes at
    /// the deadline.
    fn overdue(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(d) = self.shared.with(|s| s.deadline).flatten() else { return Ok(()) };
        if crate::bus::clock::mono_std() >= d {
            self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(io::ErrorKind::TimedOut.into());
        }
        if self.armed != Some(d) {
            self.sleep.as_mut().reset(d.into());
            self.armed = Some(d);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.overdue(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let head_timeout = if this.shared.first.swap(false, Ordering::Relaxed) {
                this.shared.first_head
            } else {
                this.shared.limits.head_timeout
            };
            this.shared.with(|s| {
                if s.phase == Phase::Idle {
                    // The first byte of a request head: the head's deadline starts.
                    s.phase = Phase::Head;
                    s.deadline = Some(crate::bus::clock::mono_std() + head_timeout);
                }
            });
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.overdue(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.shared.with(|s| s.written = s.written.saturating_add(n));
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(e) = this.overdue(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.shared.with(|s| s.written = s.written.saturating_add(n));
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Err(e) = this.overdue(cx) {
            return Poll::Ready(Err(e));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            let idle = crate::bus::clock::mono_std() + this.shared.limits.idle_timeout;
            this.shared.with(|s| {
                if s.phase == Phase::Writing && s.written >= s.body_len {
                    // The answer is out: its bytes leave the budget, the idle time starts.
                    s.phase = Phase::Idle;
                    s.deadline = Some(idle);
                    s.permit = None;
                }
            });
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// The server.

/// What the server serves beyond [`Limits`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `api.allowed_hosts` (`None`: the default set, see [`super::hosts`]).
    pub allowed_hosts: Option<Vec<String>>,
    /// `api.hsts`: `Strict-Transport-Security` over TLS.
    pub hsts: bool,
}

struct Ctx {
    api: Arc<Api>,
    limits: Limits,
    stats: Arc<HttpStats>,
    hosts: HostCheck,
    hsts: bool,
    peers: Mutex<Peers>,
    conns: Mutex<Conns>,
    open_slots: Arc<Semaphore>,
    authed_slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
}

/// A running server. Dropping it stops it: the runtime ends, every connection closes.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
    /// The server's counters.
    pub stats: Arc<HttpStats>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
    /// Stops the server and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TLS configuration from a PEM certificate chain and a PEM private key.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
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
    // Bounded session cache: a client reconnecting resumes instead of a full handshake.
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
    Ok(Arc::new(cfg))
}

/// Serves `api` on `listener` until the returned [`Server`] is stopped or dropped.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    api: Arc<Api>,
    opts: Options,
) -> io::Result<Server> {
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stats = Arc::new(HttpStats::default());
    let stop = Arc::new(Notify::new());
    let handlers = limits.max_active + limits.max_active_authed;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(handlers.max(1))
        .thread_keep_alive(Duration::from_secs(10))
        .thread_name("tg-api-handler")
        // Virtual size; pages are touched only as deep as a handler goes (serde_json stops
        // nesting at 128 levels, which a debug build needs about 1 MiB for).
        .thread_stack_size(2 * 1024 * 1024)
        .build()?;
    let ctx = Arc::new(Ctx {
        api,
        hosts: HostCheck::new(opts.allowed_hosts, addr.port()),
        hsts: opts.hsts,
        stats: stats.clone(),
        peers: Mutex::new(Peers::new()),
        conns: Mutex::new(Conns::default()),
        open_slots: Arc::new(Semaphore::new(limits.max_active)),
        authed_slots: Arc::new(Semaphore::new(limits.max_active_authed)),
        budget: Arc::new(Semaphore::new(limits.response_budget.div_ceil(1024))),
        limits,
    });
    let stop2 = stop.clone();
    let thread =
        std::thread::Builder::new().name("tg-api".into()).stack_size(512 * 1024).spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("[API] event=listen_failed error={e}");
                        return;
                    }
                };
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                tokio::spawn(summaries(ctx.clone()));
                tokio::select! {
                    () = stop2.notified() => {}
                    () = accept_loop(listener, acceptor, ctx) => {}
                }
            });
            // Dropping the runtime cancels every connection task.
            rt.shutdown_timeout(Duration::from_secs(1));
        })?;
    Ok(Server { addr, stop, thread: Some(thread), stats })
}

async fn summaries(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(AUTH_SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let line = ctx.peers.lock().ok().and_then(|mut p| p.summary());
        if let Some(l) = line {
            log::warn!("{l}");
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors or the like: back off instead of spinning.
                log::warn!("[API] event=accept_failed error={e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        ctx.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Notify::new());
        let admit = match ctx.conns.lock() {
            Ok(mut c) => c.admit(client(peer), &ctx.limits, kill.clone()),
            Err(_) => Admit::Refused,
        };
        let (id, waiting) = match admit {
            Admit::Normal(id) => (id, false),
            Admit::Waiting(id) => (id, true),
            Admit::Refused => {
                ctx.stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                if tls.is_none() {
                    // Plain HTTP: a canned answer if the socket takes it at once, then close.
                    let _ = tcp.try_write(REFUSED);
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let spoke = ctx.conns.lock().ok().and_then(|c| c.live.get(&id).map(|c| c.spoke.clone()));
        let tcp = FirstRead { inner: tcp, spoke: spoke.unwrap_or_default() };
        let ctx2 = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            ctx2.stats.open_connections.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = kill.notified() => {
                    ctx2.stats.evicted.fetch_add(1, Ordering::Relaxed);
                }
                () = connection(tcp, peer, id, waiting, tls, ctx2.clone()) => {}
            }
            if let Ok(mut c) = ctx2.conns.lock() {
                c.release(id);
            }
            ctx2.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 44\r\n\r\n{\"detail\":\"too many connections; try again\"}";

/// The raw socket, noting its first byte (see [`Conn::spoke`]).
struct FirstRead<T> {
    inner: T,
    spoke: Arc<std::sync::atomic::AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.spoke.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstRead<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn connection(
    tcp: FirstRead<tokio::net::TcpStream>,
    peer: SocketAddr,
    id: u64,
    waiting: bool,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<Ctx>,
) {
    let first_head = if waiting { ctx.limits.waiting_timeout } else { ctx.limits.head_timeout };
    let shared = Arc::new(Shared {
        state: Mutex::new(PhaseState {
            phase: Phase::Idle,
            deadline: None,
            body_len: 0,
            written: 0,
            permit: None,
        }),
        limits: ctx.limits.clone(),
        stats: ctx.stats.clone(),
        first_head,
        first: std::sync::atomic::AtomicBool::new(true),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_headers(ctx.limits.max_headers)
        .max_buf_size(ctx.limits.max_head.max(8192))
        .header_read_timeout(None)
        // As the server before hyper wrote them (`Content-Type`, `Retry-After`): scripts that
        // grep a raw answer keep working.
        .title_case_headers(true)
        .half_close(false)
        .keep_alive(true)
        .pipeline_flush(true);
    let requests = Arc::new(AtomicU64::new(0));
    let svc = |secure: bool| {
        let (ctx, shared) = (ctx.clone(), shared.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ctx, shared, requests) = (ctx.clone(), shared.clone(), requests.clone());
            async move {
                Ok::<_, std::convert::Infallible>(
                    serve_one(req, peer, id, secure, ctx, shared, requests).await,
                )
            }
        })
    };
    match tls {
        None => {
            let io = Guarded::new(tcp, shared.clone());
            let _ = builder.serve_connection(TokioIo::new(io), svc(false)).await;
        }
        Some(acc) => {
            // The handshake is bounded as a whole: a ClientHello sent a byte at a time is
            // cut at the deadline, whatever each read does.
            let tls_stream = match tokio::time::timeout(first_head, acc.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(_)) => {
                    ctx.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(_) => {
                    ctx.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let io = Guarded::new(tls_stream, shared.clone());
            let _ = builder.serve_connection(TokioIo::new(io), svc(true)).await;
        }
    }
}

type Body = Full<Bytes>;

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    req: Request<Incoming>,
    peer: SocketAddr,
    id: u64,
    secure: bool,
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    requests: Arc<AtomicU64>,
) -> Response<Body> {
    shared.handling();
    if let Ok(mut c) = ctx.conns.lock() {
        c.set(id, true, false);
    }
    let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
    let (answer, close) = answer(req, peer, id, secure, &ctx, n).await;
    if let Ok(mut c) = ctx.conns.lock() {
        c.set(id, false, false);
    }
    ctx.stats.count_status(answer.status);
    finish(answer, close, secure, &ctx, &shared)
}

/// Turns an answer into a response within the response budget.
fn finish(a: Answer, close: bool, secure: bool, ctx: &Ctx, shared: &Shared) -> Response<Body> {
    let mut a = a;
    if a.body.len() > ctx.limits.max_response {
        a = Answer::detail(500, "response larger than the server's bound");
    }
    let kib = u32::try_from(a.body.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let permit = match ctx.budget.clone().try_acquire_many_owned(kib) {
        Ok(p) => {
            let bytes = a.body.len();
            ctx.stats.response_bytes_in_flight.fetch_add(bytes, Ordering::Relaxed);
            Some(Budget { _permit: p, bytes, stats: ctx.stats.clone() })
        }
        Err(_) => {
            ctx.stats.busy.fetch_add(1, Ordering::Relaxed);
            a = Answer::detail(503, "too many answers in flight; try again").header("Retry-After", "1");
            None
        }
    };
    let body_len = a.body.len();
    let mut b = Response::builder().status(a.status);
    if let Some(h) = b.headers_mut() {
        let mut put = |k: &str, v: &str| {
            if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                h.append(k, v);
            }
        };
        put("Content-Type", a.ctype);
        for (k, v) in COMMON_HEADERS {
            put(k, v);
        }
        for (k, v) in &a.headers {
            put(k, v);
        }
        if secure && ctx.hsts {
            put("Strict-Transport-Security", "max-age=31536000");
        }
        if close {
            put("Connection", "close");
        }
    }
    shared.writing(body_len, permit);
    b.body(Full::new(Bytes::from(a.body))).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The answer to one request, and whether to close the connection after it.
async fn answer(
    req: Request<Incoming>,
    peer: SocketAddr,
    id: u64,
    secure: bool,
    ctx: &Arc<Ctx>,
    n: u64,
) -> (Answer, bool) {
    let close_after = n >= u64::from(ctx.limits.max_requests_per_connection);
    let (parts, body) = req.into_parts();
    // (Both framings at once: hyper reads the body as chunked and closes the connection after
    // the answer, as RFC 9112 says, so nothing can be smuggled behind it.)
    // 1. Host: a name that is not this box's is a page re-resolved onto it (DNS rebinding).
    let host = parts.headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok());
    if !ctx.hosts.allows(host) {
        ctx.stats.wrong_host.fetch_add(1, Ordering::Relaxed);
        ctx.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return (
            Answer::detail(
                421,
                "Host is not one of this box's names (api.allowed_hosts): refused as a possible DNS rebinding",
            ),
            true,
        );
    }
    let r = Req {
        method: Method::of(&parts.method),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
        headers: parts.headers,
        secure,
        peer,
    };
    let api = ctx.api.clone();
    let cred = api.credential(&r);
    let authed = matches!(cred, Credential::Bearer | Credential::Session);
    // 2. A connection past the caps is served only with credentials, and then makes room.
    let waiting = ctx.conns.lock().is_ok_and(|c| c.is_waiting(id));
    if waiting {
        if authed {
            // The evicted connection's task counts itself (`evicted`) as it ends.
            if let Ok(mut c) = ctx.conns.lock() {
                c.promote(id);
            }
        } else {
            ctx.stats.waiting_refused.fetch_add(1, Ordering::Relaxed);
            return (Answer::detail(503, "too many connections; try again").header("Retry-After", "1"), true);
        }
    }
    if authed {
        if let Ok(mut c) = ctx.conns.lock() {
            c.set(id, true, true);
        }
    }
    // 3. Anonymous requests are rated per address.
    if !authed {
        let ok = ctx
            .peers
            .lock()
            .is_ok_and(|mut p| p.allow(client(peer), ctx.limits.peer_rate, crate::bus::clock::mono_std()));
        if !ok {
            ctx.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return (
                Answer::detail(429, "too many requests from this address; slow down")
                    .header("Retry-After", "1"),
                close_after,
            );
        }
    }
    // 4. A wrong bearer token is a guess: counted, answered late.
    if api.wrong_bearer(&r, cred) {
        let a = match api.check(&r, cred) {
            Ok(_) => Answer::detail(401, "wrong credentials")
                .header("WWW-Authenticate", "Bearer realm=\"tickguard\""),
            Err(a) => a,
        };
        return (failed(ctx, peer, id, a).await, close_after);
    }
    // 5. The API's own checks, in the documented order.
    let ticket = match api.check(&r, cred) {
        Ok(t) => t,
        Err(a) => return (a, close_after),
    };
    // 6. The body, within its bounds.
    let body = if ticket.needs_body {
        match read_body(body, &ctx.limits, &ctx.stats).await {
            Ok(b) => Some(b),
            Err(a) => return (a, true),
        }
    } else {
        drop(body);
        None
    };
    let login = r.method == Method::Post && r.path().trim_end_matches('/') == "/api/v1/session";
    // 7. Answers that need neither the engine nor the disk, here.
    if ticket.inline {
        let a = api.respond(&r, ticket, body);
        if login && a.status == 401 {
            return (failed(ctx, peer, id, a).await, close_after);
        }
        return (a, close_after);
    }
    if let Some(a) = inline_probe(&api, &r) {
        return (a, close_after);
    }
    // 8. The rest waits for the engine or the disk: on a bounded handler thread, from the
    // pool of its kind (the right token never queues behind anonymous load).
    // A request waits a bounded time for a slot (a task, no thread: the waiting ones are
    // bounded by the connection caps): the bot's registrations and the emergency close ride
    // out a burst instead of being refused at once.
    let (slots, wait) =
        if authed { (&ctx.authed_slots, AUTHED_SLOT_WAIT) } else { (&ctx.open_slots, OPEN_SLOT_WAIT) };
    let Ok(Ok(permit)) = tokio::time::timeout(wait, slots.clone().acquire_owned()).await else {
        ctx.stats.busy.fetch_add(1, Ordering::Relaxed);
        return (Answer::detail(503, "the API is busy; try again").header("Retry-After", "1"), close_after);
    };
    ctx.stats.active_requests.fetch_add(1, Ordering::Relaxed);
    let a = tokio::task::spawn_blocking(move || {
        let a = api.respond(&r, ticket, body);
        drop(permit);
        a
    })
    .await
    .unwrap_or_else(|_| Answer::detail(500, "internal error"));
    ctx.stats.active_requests.fetch_sub(1, Ordering::Relaxed);
    (a, close_after)
}

/// `/health` from the watcher's heartbeat and a `/ready` computed less than a second ago:
/// answered here, no handler thread, no engine.
fn inline_probe(api: &Api, r: &Req) -> Option<Answer> {
    if !matches!(r.method, Method::Get | Method::Head) {
        return None;
    }
    match r.path().trim_end_matches('/') {
        "/health" => api.health_inline(false),
        "/api/v1/monitoring/health" => api.health_inline(true),
        "/ready" => api.ready_cached(),
        _ => None,
    }
}

async fn failed(ctx: &Ctx, peer: SocketAddr, id: u64, a: Answer) -> Answer {
    ctx.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
    let delay = ctx
        .peers
        .lock()
        .map_or(Duration::ZERO, |mut p| p.failure(client(peer), crate::bus::clock::mono_std()));
    if !delay.is_zero() {
        // A connection waiting out its delay is not in a request that matters: it is the first
        // to be closed when the right token needs room (a guesser on the operator's own address
        // cannot hold its per-address slots against the emergency close).
        if let Ok(mut c) = ctx.conns.lock() {
            c.set(id, false, false);
        }
        tokio::time::sleep(delay).await;
    }
    a
}

/// Bytes of a body over the bound that are still read (and dropped) before the `413`, so a
/// client that sends a little too much reads the answer instead of a reset.
pub const DRAIN_OVER: usize = 64 * 1024;

async fn read_body(mut body: Incoming, l: &Limits, stats: &HttpStats) -> Result<Vec<u8>, Answer> {
    let read = async {
        let mut got = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return Err(Answer::detail(400, "request body could not be read"));
            };
            let Ok(data) = frame.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen <= l.max_body {
                got.extend_from_slice(&data);
            } else if seen > l.max_body + DRAIN_OVER {
                break;
            }
        }
        if seen > l.max_body {
            return Err(Answer::detail(413, format!("request body over {} bytes", l.max_body)));
        }
        Ok(got)
    };
    match tokio::time::timeout(l.body_timeout, read).await {
        Err(_) => {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            Err(Answer::detail(408, "request body not received in time"))
        }
        Ok(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_64() {
        let a: SocketAddr = "[fd00:1:2:3:aaaa::1]:5000".parse().expect("addr");
        let b: SocketAddr = "[fd00:1:2:3:bbbb::9]:6000".parse().expect("addr");
        let c: SocketAddr = "[fd00:1:2:4::1]:6000".parse().expect("addr");
        assert_eq!(client(a), client(b), "one /64, one client");
        assert_ne!(client(a), client(c));
        let m: SocketAddr = "[::ffff:192.168.1.7]:80".parse().expect("addr");
        assert_eq!(client(m), IpAddr::from([192, 168, 1, 7]));
        assert_eq!(client("127.0.0.2:1".parse().expect("addr")), IpAddr::from([127, 0, 0, 2]));
    }

    #[test]
    fn failure_delays_grow_and_are_capped() {
        assert_eq!(failure_delay(1), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES + 1), Duration::from_millis(100));
        assert_eq!(failure_delay(FREE_FAILURES + 2), Duration::from_millis(200));
        assert_eq!(failure_delay(10_000), MAX_FAILURE_DELAY);
        let mut last = Duration::ZERO;
        for n in 0..100 {
            let d = failure_delay(n);
            assert!(d >= last);
            last = d;
        }
    }

    #[test]
    fn anonymous_rate_per_address() {
        let mut p = Peers::new();
        let t0 = crate::bus::clock::mono_std();
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let allowed = (0..100).filter(|_| p.allow(a, 10, t0)).count();
        assert_eq!(allowed, 20, "burst of twice the rate");
        assert!(p.allow(b, 10, t0), "another address has its own bucket");
        assert!(p.allow(a, 10, t0 + Duration::from_millis(150)), "refilled at the rate");
    }

    #[test]
    fn failures_are_summarised_not_logged_one_by_one() {
        let mut p = Peers::new();
        let t0 = crate::bus::clock::mono_std();
        let a: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..1000 {
            p.failure(a, t0);
        }
        p.failure([127, 0, 0, 3].into(), t0);
        let line = p.summary().expect("a summary");
        assert!(
            line.contains("count=1001") && line.contains("peers=2") && line.contains("127.0.0.2:1000"),
            "{line}"
        );
        assert_eq!(p.summary(), None, "nothing new: no line");
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let mut p = Peers::new();
        let t0 = crate::bus::clock::mono_std();
        for i in 0..(crate::limits::API_PEERS as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            p.allow(ip, 10, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(p.map.len() <= crate::limits::API_PEERS);
    }

    #[test]
    fn connection_slots_waiting_and_eviction() {
        let l = Limits {
            max_connections: 2,
            max_per_peer: 2,
            max_waiting: 1,
            max_waiting_per_peer: 1,
            ..Limits::default()
        };
        let mut c = Conns::default();
        let a: IpAddr = [127, 0, 0, 2].into();
        let k = || Arc::new(Notify::new());
        let Admit::Normal(first) = c.admit(a, &l, k()) else { panic!("first is normal") };
        let Admit::Normal(_) = c.admit(a, &l, k()) else { panic!("second is normal") };
        let Admit::Waiting(w) = c.admit(a, &l, k()) else { panic!("third waits") };
        if let Some(x) = c.live.get(&w) {
            x.spoke.store(true, Ordering::Relaxed);
        }
        assert!(matches!(c.admit(a, &l, k()), Admit::Refused));
        assert!(c.is_waiting(w));
        assert!(c.promote(w), "the oldest unauthenticated connection makes room");
        assert!(!c.is_waiting(w));
        assert!(!c.live.contains_key(&first));
        assert_eq!((c.normal, c.waiting), (2, 0));
        // An authenticated or busy connection is never the one closed.
        let Admit::Waiting(w2) = c.admit(a, &l, k()) else { panic!("waits again") };
        let ids: Vec<u64> = c.live.keys().copied().filter(|k| *k != w2).collect();
        for id in &ids {
            c.set(*id, false, true);
        }
        assert!(!c.promote(w2), "no unauthenticated connection to close");
    }

    #[test]
    fn silent_waiting_connections_make_room() {
        let l = Limits {
            max_connections: 1,
            max_per_peer: 1,
            max_waiting: 1,
            max_waiting_per_peer: 1,
            ..Limits::default()
        };
        let mut c = Conns::default();
        let k = || Arc::new(Notify::new());
        let (a, b, d): (IpAddr, IpAddr, IpAddr) =
            ([127, 0, 0, 2].into(), [127, 0, 0, 3].into(), [127, 0, 0, 4].into());
        let Admit::Normal(_) = c.admit(a, &l, k()) else { panic!("normal") };
        let Admit::Waiting(w) = c.admit(b, &l, k()) else { panic!("waits") };
        if let Some(x) = c.live.get(&w) {
            x.spoke.store(true, Ordering::Relaxed);
        }
        assert!(matches!(c.admit(d, &l, k()), Admit::Refused), "one that has spoken is never taken");
        if let Some(x) = c.live.get(&w) {
            x.spoke.store(false, Ordering::Relaxed);
        }
        let Admit::Waiting(w2) = c.admit(d, &l, k()) else { panic!("the silent one made room") };
        assert!(!c.live.contains_key(&w) && c.is_waiting(w2));
        assert_eq!(c.waiting, 1);
    }
}
