//! The feed edge's errors: why a connection could not be opened or was lost, typed, each
//! saying whether trying again can help ([`crate::bus::error::EdgeError`]).
//!
//! The messages are the `cause="..."` of the `[RECONNECT]` lines (docs/logs.md), unchanged.

use crate::bus::error::{EdgeError, Severity};
use crate::net::http::HttpError;
use crate::net::ws::WsError;

/// Why a feed connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Resolve, TCP or TLS failed.
    #[error("{0}")]
    Connect(HttpError),
    /// Resolve + connect + TLS + upgrade (and Upstox's authorize) took too long.
    #[error("connect timeout after {0} ms")]
    ConnectTimeout(u128),
    /// The WebSocket upgrade failed.
    #[error("upgrade: {0}")]
    Upgrade(WsError),
    /// A subscription could not be sent.
    #[error("subscribe: {0}")]
    Subscribe(WsError),
    /// Reading the connection failed.
    #[error("{0}")]
    Read(WsError),
    /// Our answer to the server's ping could not be sent.
    #[error("pong: {0}")]
    Pong(WsError),
    /// Our ping could not be sent.
    #[error("ping: {0}")]
    Ping(WsError),
    /// The server closed the connection (close code, if any).
    #[error("closed by server (code {})", .0.map_or_else(|| "none".to_string(), |c| c.to_string()))]
    Closed(Option<u16>),
    /// No frame of any kind (not even a pong) for this many milliseconds.
    #[error("silent for {0} ms (no frame, no pong)")]
    Silent(u128),
    /// A replacement connection's subscriptions were not acknowledged in time.
    #[error("subscription acks timed out")]
    AckTimeout,
    /// Upstox's authorize request failed on the network.
    #[error("authorize: {0}")]
    Authorize(HttpError),
    /// Upstox's authorize request was answered with this status (not 200, not 401).
    #[error("authorize: HTTP {0}")]
    AuthorizeStatus(u16),
    /// Upstox's authorize answer carried no URL.
    #[error("authorize: no authorized_redirect_uri in the answer")]
    NoRedirect,
    /// The authorized URL could not be used (the message never shows the URL: it carries a
    /// single-use code).
    #[error("{0}")]
    AuthorizedUrl(String),
    /// The venue refused the access token (HTTP 401 from `what`): retrying cannot help until
    /// the token file changes.
    #[error("authorization refused by {what} (HTTP {status})")]
    Unauthorized {
        /// Which request was refused (`authorize`, `feed`, `ltp`).
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The access token file cannot be read.
    #[error("{0}")]
    Token(String),
}

impl EdgeError for FeedError {
    fn severity(&self) -> Severity {
        match self {
            // Until the token file changes, nothing on the network can help.
            FeedError::Unauthorized { .. } | FeedError::Token(_) => Severity::Fatal,
            _ => Severity::Recoverable,
        }
    }
}

/// Why a REST fallback request failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// Resolve, connect, TLS or the exchange failed.
    #[error("{0}")]
    Http(HttpError),
    /// Answered with an error status (5xx, or a 4xx not about the names asked for).
    #[error("HTTP {0}")]
    Status(u16),
    /// Rate limited (429, Binance's 418): hold off this long.
    #[error("HTTP {status} (rate limited; holding off {} s)", .wait.as_secs())]
    RateLimited {
        /// The HTTP status.
        status: u16,
        /// The pause the venue asked for (`Retry-After`, bounded).
        wait: std::time::Duration,
    },
    /// The access token was refused (Upstox, HTTP 401).
    #[error("HTTP 401 (authorization refused)")]
    Unauthorized,
}

impl PollError {
    /// Whether the failure counts for the circuit breaker (the venue did not answer, or
    /// answered with a server error; a rate limit holds the breaker off instead).
    pub fn counts_for_breaker(&self) -> bool {
        matches!(self, PollError::Http(_) | PollError::Status(_))
    }
    /// The pause the venue asked for, if any.
    pub fn hold_off(&self) -> Option<std::time::Duration> {
        match self {
            PollError::RateLimited { wait, .. } => Some(*wait),
            _ => None,
        }
    }
}

impl EdgeError for PollError {
    fn severity(&self) -> Severity {
        match self {
            PollError::Unauthorized => Severity::Fatal,
            _ => Severity::Recoverable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_severities() {
        assert_eq!(FeedError::Closed(Some(1008)).to_string(), "closed by server (code 1008)");
        assert_eq!(FeedError::Closed(None).to_string(), "closed by server (code none)");
        assert_eq!(FeedError::Silent(10_012).to_string(), "silent for 10012 ms (no frame, no pong)");
        assert_eq!(FeedError::ConnectTimeout(3000).to_string(), "connect timeout after 3000 ms");
        assert_eq!(FeedError::Subscribe(WsError::WriteTimeout).to_string(), "subscribe: write timed out");
        assert!(FeedError::Silent(1).recoverable());
        assert!(FeedError::AuthorizeStatus(503).recoverable());
        assert_eq!(FeedError::Unauthorized { what: "feed", status: 401 }.severity(), Severity::Fatal);
        assert_eq!(FeedError::Token("cannot read it".into()).severity(), Severity::Fatal);
        let limited = PollError::RateLimited { status: 418, wait: std::time::Duration::from_secs(60) };
        assert_eq!(limited.to_string(), "HTTP 418 (rate limited; holding off 60 s)");
        assert!(!limited.counts_for_breaker() && limited.recoverable());
        assert_eq!(PollError::Status(503).to_string(), "HTTP 503");
        assert!(PollError::Status(503).counts_for_breaker());
        assert_eq!(PollError::Unauthorized.severity(), Severity::Fatal);
    }
}
