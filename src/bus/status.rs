//! Shared, lock-free status of the edges for the control plane, metrics and the indicator.
//! The engine's own state is read through [`super::EngineHandle::inspect`]; this holds what
//! lives outside the engine. The feed and the resolver are seen through [`FeedProbe`] and
//! [`DnsProbe`]: the bus knows neither edge, the edges implement the probes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Upper bounds (µs) of the tick-to-action latency histogram buckets.
pub const LATENCY_BUCKETS_US: [u64; 12] =
    [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000];

/// A fixed-bucket histogram with atomic counters (Prometheus style, cumulative on export).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
    /// Per-bucket counts (not cumulative; the last is `+Inf`), and the sum in µs.
    pub fn snapshot(&self) -> ([u64; 13], u64) {
        let mut c = [0u64; 13];
        for (o, a) in c.iter_mut().zip(self.counts.iter()) {
            *o = a.load(Ordering::Relaxed);
        }
        (c, self.sum_us.load(Ordering::Relaxed))
    }
    /// Approximate quantile `q` (0..1) as the upper bound of its bucket, in µs.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let (c, _) = self.snapshot();
        let total: u64 = c.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil() as u64;
        let mut acc = 0;
        for (i, n) in c.iter().enumerate() {
            acc += n;
            if acc >= want.max(1) {
                return Some(LATENCY_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }
}

/// Status shared by the runtime's parts.
#[derive(Default)]
pub struct Status {
    /// The live feed's state, when the venue is a real one.
    pub feed: OnceLock<Arc<dyn FeedProbe>>,
    /// The resolver, when the venue is a real one.
    pub resolver: OnceLock<Arc<dyn DnsProbe>>,
    /// The LAN relay, when `relay.enabled`.
    pub relay: OnceLock<Arc<dyn RelayProbe>>,
    /// Frame received → close order emitted.
    pub tick_to_action: Histogram,
    /// Turns of the engine loop (the watchdog and the LED heartbeat follow it).
    pub engine_turns: AtomicU64,
    /// Orders handed to the broker.
    pub orders_sent: AtomicU64,
    /// What the REST price poller reports (for `/metrics` and connection-health).
    pub rest: RestStats,
}

/// Counters of the REST price poller, kept by `src/feed/rest.rs`.
#[derive(Debug, Default)]
pub struct RestStats {
    /// Poll requests sent.
    pub polls: AtomicU64,
    /// Polls that failed (network, HTTP status, unreadable answer).
    pub errors: AtomicU64,
    /// True while the poller's circuit breaker holds requests back.
    pub breaker_open: AtomicBool,
}

/// A snapshot of the live feed's counters (see `feed::session::FeedShared`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// True while a session is up and subscribed.
    pub live: bool,
    /// Reconnect attempts since start.
    pub reconnects: u64,
    /// Current run of failed attempts.
    pub attempts: u64,
    /// Connection and protocol errors since start.
    pub network_errors: u64,
    /// Frames received.
    pub frames: u64,
    /// Price updates handed to the engine.
    pub ticks: u64,
    /// Frames that could not be decoded.
    pub malformed: u64,
    /// Quotes for symbols not subscribed.
    pub unknown_symbols: u64,
    /// Connection rotations.
    pub rotations: u64,
    /// Instruments subscribed on the live connection.
    pub subscribed: u64,
    /// Authorization failures since start.
    pub auth_failures: u64,
    /// True while the feed waits for a new token.
    pub auth_blocked: bool,
}

/// The LAN relay, as the status views see it (its own counters are on its health port).
pub trait RelayProbe: Send + Sync + 'static {
    /// Its state now.
    fn view(&self) -> RelayView;
}

/// One relay client on the status page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayClientRow {
    /// Its address.
    pub peer: String,
    /// Symbols it asked for.
    pub symbols: usize,
    /// Its interval.
    pub interval: String,
    /// Ordered messages waiting in its outbox.
    pub queued: usize,
    /// Seconds connected.
    pub age_s: u64,
}

/// The relay's state for the page and `/api/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayView {
    /// Running (false: it could not start, see `failure`).
    pub running: bool,
    /// Why it does not run.
    pub failure: Option<String>,
    /// Its upstream is subscribed.
    pub upstream_live: bool,
    /// Symbols relayed.
    pub symbols: usize,
    /// Clients now.
    pub clients: Vec<RelayClientRow>,
    /// Messages delivered since start.
    pub delivered: u64,
    /// Clients closed for falling behind.
    pub slow_closed: u64,
    /// Gaps announced.
    pub gaps: u64,
}

/// The live feed, as the status views see it.
pub trait FeedProbe: Send + Sync + 'static {
    /// Its counters now.
    fn stats(&self) -> FeedStats;
}

/// Counters of the DNS-fallback resolver (`net::dns`), for metrics and the status page.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Tries against the system resolver.
    pub system_tries: AtomicU64,
    /// System tries that failed.
    pub system_failures: AtomicU64,
    /// Tries against fallback nameservers.
    pub fallback_tries: AtomicU64,
    /// Answers that came from a fallback nameserver.
    pub fallback_answers: AtomicU64,
    /// Times the last-good address was used because nothing answered.
    pub last_good_uses: AtomicU64,
}

/// The resolver, as the status views see it.
pub trait DnsProbe: Send + Sync + 'static {
    /// Its counters.
    fn dns_stats(&self) -> &DnsStats;
}
