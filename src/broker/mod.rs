//! Brokers: one trait (place a closing order, look an order up, read what the account holds)
//! and its venues. The executor that carries the engine's order actions out through it, with
//! its journaling and absent-only-after rule, is `runtime::executor`.

pub mod binance;
pub mod paper;
pub mod upstox;

use std::future::Future;
use std::time::Duration;

use crate::core::engine::Outcome;
use crate::core::price::Qty;
use crate::core::types::Symbol;

// The order types and the journal trait live in the bus (the executor in `runtime` and the
// store use them too); re-exported here where the brokers' callers have always found them.
pub use crate::bus::orders::{CloseOrder, Lookup, OrderJournal};

/// Why a broker request failed: typed, and [`crate::bus::error::EdgeError`] says whether
/// trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The HTTP exchange failed (resolve, connect, TLS, timeout, connection lost); boxed, as
    /// the resolver's error is large.
    #[error(transparent)]
    Http(Box<crate::net::http::HttpError>),
    /// Nothing is sent while a 429/418 hold-off lasts.
    #[error("held off after a rate limit for {ms} ms")]
    HeldOff {
        /// What is left of it.
        ms: u128,
    },
    /// The venue answered with an error status.
    #[error("{what}: HTTP {status}{}", code.as_ref().map(|(c, m)| format!(" code {c}: {m}")).unwrap_or_default())]
    Venue {
        /// The request (`account`, `exchangeInfo BTCUSDT`, ...).
        what: String,
        /// HTTP status.
        status: u16,
        /// The venue's error code and message, if it gave them.
        code: Option<(String, String)>,
    },
    /// The answer could not be read.
    #[error("{what}: {why}")]
    Unreadable {
        /// The request or document.
        what: String,
        /// Why.
        why: String,
    },
    /// No credential to send with (a missing or unreadable token file).
    #[error("no credential: {0}")]
    NoCredential(String),
    /// Several requests failed (start-up preparation).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<BrokerError>),
}

impl From<crate::net::http::HttpError> for BrokerError {
    fn from(e: crate::net::http::HttpError) -> Self {
        BrokerError::Http(Box::new(e))
    }
}

impl crate::bus::error::EdgeError for BrokerError {
    /// Credentials refused (401/403, Binance -1022/-2014/-2015) or missing, and requests the
    /// venue refuses as malformed (other 4xx) are fatal: the same request cannot succeed.
    /// The network, a timeout, a 5xx, a 429/418 hold-off and an unreadable answer are
    /// recoverable.
    fn severity(&self) -> crate::bus::error::Severity {
        use crate::bus::error::Severity;
        match self {
            BrokerError::Http(e) => e.severity(),
            BrokerError::HeldOff { .. } | BrokerError::Unreadable { .. } => Severity::Recoverable,
            BrokerError::Venue { status, .. } => match status {
                408 | 418 | 429 | 500..=599 => Severity::Recoverable,
                400..=499 => Severity::Fatal,
                _ => Severity::Recoverable,
            },
            BrokerError::NoCredential(_) => Severity::Fatal,
            BrokerError::Several(v) => {
                if v.iter().all(|e| e.severity() == Severity::Fatal) && !v.is_empty() {
                    Severity::Fatal
                } else {
                    Severity::Recoverable
                }
            }
        }
    }
}

/// What [`Broker::place_stamped`] reports: the outcome and when the order request left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placed {
    /// What became of the order.
    pub outcome: Outcome,
    /// Taken immediately before the order request was handed to its (pooled, usually already
    /// open) connection: the one send time of the attempt, from which the absent-after rule
    /// counts. The last send when one was repeated (a -1021 re-send); `None` when nothing
    /// was sent. The executor turns it into the engine's time base (`Clock::at`).
    pub sent: Option<tokio::time::Instant>,
}

/// A venue's order API.
pub trait Broker: Send + Sync + 'static {
    /// Sends a market order closing `order.qty`. Never fails: a failure before the request
    /// can have reached the venue is [`Outcome::Rejected`]; anything after sending whose
    /// result is not known (timeout, 5xx, connection lost) is [`Outcome::Unknown`].
    fn place(&self, order: &CloseOrder) -> impl Future<Output = Outcome> + Send;
    /// As [`Broker::place`], with the time the request left ([`Placed::sent`]). The default
    /// (brokers without their own) stamps the call's start: earlier than the real send, as
    /// the executor's own stamp was; the real brokers stamp right before the write.
    fn place_stamped(&self, order: &CloseOrder) -> impl Future<Output = Placed> + Send {
        async move {
            let clock = crate::bus::clock::Clock::new();
            let sent = clock.instant(clock.now());
            Placed { outcome: self.place(order).await, sent: Some(sent) }
        }
    }
    /// Looks an attempt up by its client id.
    fn lookup(&self, symbol: &str, client_id: &str) -> impl Future<Output = Lookup> + Send;
    /// What the account holds, per symbol (for reconciliation).
    fn holdings(&self) -> impl Future<Output = Result<Vec<(Symbol, Qty)>, String>> + Send;
    /// How long after its send time an order can still be accepted by the venue
    /// (Binance: `recvWindow` plus a margin); a look-up that finds nothing earlier proves
    /// nothing.
    fn absent_after(&self) -> Duration;
    /// True when [`Broker::holdings`] lists every instrument the account could hold, so that
    /// a symbol missing from it is held at zero. No real broker claims it any more: a missing
    /// symbol is unknown, and only an explicit zero is "holds none" (Upstox lists every symbol
    /// of its instrument map, at zero when not held; Binance lists the base assets it could
    /// read). Reconciliation and the held-close check leave a position alone on unknown.
    fn holdings_exhaustive(&self) -> bool {
        false
    }
}

/// A credential read from a file (`config::read_secret`): its `Debug` never shows it, and
/// nothing in the brokers formats it into a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The credential itself, for a request header or a signing key only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One of the brokers, chosen at start-up by `broker.kind` ([`Broker`] is not object-safe:
/// its methods return `impl Future`, so the runtime holds this enum instead of a trait object).
// One instance per process, behind an `Arc`: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyBroker {
    /// Simulated fills.
    Paper(paper::Paper),
    /// Binance spot.
    Binance(binance::Binance),
    /// Upstox.
    Upstox(upstox::Upstox),
}

impl Broker for AnyBroker {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        match self {
            AnyBroker::Paper(b) => b.place(order).await,
            AnyBroker::Binance(b) => b.place(order).await,
            AnyBroker::Upstox(b) => b.place(order).await,
        }
    }
    async fn place_stamped(&self, order: &CloseOrder) -> Placed {
        match self {
            AnyBroker::Paper(b) => b.place_stamped(order).await,
            AnyBroker::Binance(b) => b.place_stamped(order).await,
            AnyBroker::Upstox(b) => b.place_stamped(order).await,
        }
    }
    async fn lookup(&self, symbol: &str, client_id: &str) -> Lookup {
        match self {
            AnyBroker::Paper(b) => b.lookup(symbol, client_id).await,
            AnyBroker::Binance(b) => b.lookup(symbol, client_id).await,
            AnyBroker::Upstox(b) => b.lookup(symbol, client_id).await,
        }
    }
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        match self {
            AnyBroker::Paper(b) => b.holdings().await,
            AnyBroker::Binance(b) => b.holdings().await,
            AnyBroker::Upstox(b) => b.holdings().await,
        }
    }
    fn absent_after(&self) -> Duration {
        match self {
            AnyBroker::Paper(b) => b.absent_after(),
            AnyBroker::Binance(b) => b.absent_after(),
            AnyBroker::Upstox(b) => b.absent_after(),
        }
    }

    fn holdings_exhaustive(&self) -> bool {
        match self {
            AnyBroker::Paper(b) => b.holdings_exhaustive(),
            AnyBroker::Binance(b) => b.holdings_exhaustive(),
            AnyBroker::Upstox(b) => b.holdings_exhaustive(),
        }
    }
}
