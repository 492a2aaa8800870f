//! The LAN relay (`[relay]`, off by default): the OHLCV connector's quotes and candles served
//! from the box to the trader's bots over WebSocket, with its own upstream connection(s).
//!
//! - [`candle`]: sans-IO candle lifecycle (kline, trades, REST; revisions; the closed ring).
//! - [`protocol`]: the client's request (every error names its field) and the messages.
//! - [`outbox`]: one bounded outbox per client with a rule per message type.
//! - [`hub`]: the one task that owns the series and fans out to the clients.
//! - [`upstream`]: the relay's own venue sessions (the feed's session driver, resolver and TLS)
//!   and its REST backfill.
//! - [`server`]: the WebSocket server and the health server (`/health`, `/ready`, `/metrics`).
//!
//! Isolation from the guard: the relay runs on its own thread and runtime, its symbols live
//! in its own index (never the guard's cache, subscriptions, `/ready`, alarm or blind rules),
//! and every failure (bind, client input, upstream) degrades the relay only.

pub mod candle;
pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod server;
pub mod sim;
pub mod stats;
pub mod upstox;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::net::http::Endpoint;

/// The venue a relay serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// Binance spot (`contract_type` `spot`).
    Binance,
    /// Upstox (`contract_type` `equity`).
    Upstox,
    /// The demo's simulated venue (`tickguard demo`; `contract_type` `spot`). Never
    /// configurable: [`Exchange::parse`] knows only the real venues.
    Sim,
}

impl Exchange {
    /// The name clients send in `exchange`.
    pub fn name(self) -> &'static str {
        match self {
            Exchange::Binance => "binance",
            Exchange::Upstox => "upstox",
            Exchange::Sim => "sim",
        }
    }
    /// The `contract_type` the relay serves for this venue.
    pub fn contract_type(self) -> &'static str {
        match self {
            Exchange::Binance | Exchange::Sim => "spot",
            Exchange::Upstox => "equity",
        }
    }
    /// From a name (`binance`, `upstox`).
    pub fn parse(s: &str) -> Option<Exchange> {
        match s {
            "binance" => Some(Exchange::Binance),
            "upstox" => Some(Exchange::Upstox),
            _ => None,
        }
    }
}

/// Checks a client's `Host` and `Origin` (the control plane's rules, wired by `runtime`):
/// `(host, origin) -> allowed`.
pub type OriginRule = Arc<dyn Fn(Option<&str>, Option<&str>) -> bool + Send + Sync>;

/// Settings of the relay (`[relay]`; filled by `runtime::wiring::relay`).
#[derive(Clone)]
pub struct RelaySettings {
    /// `relay.listen`: the clients' WebSocket server.
    pub listen: SocketAddr,
    /// `relay.health_listen` (`None` when `relay.health_enabled = false`).
    pub health_listen: Option<SocketAddr>,
    /// `relay.exchange`: the venue relayed.
    pub exchange: Exchange,
    /// The venue's WebSocket endpoint (`relay.ws_url`; Binance).
    pub ws: Endpoint,
    /// The venue's REST endpoint (`relay.rest_url`): klines / intraday candles.
    pub rest: Endpoint,
    /// `relay.token_file` (Upstox: the relay's own app, never the guard's token).
    pub token_file: Option<PathBuf>,
    /// Upstox: `symbol → instrument key` (`[feed.instrument_keys]`); a symbol that is itself
    /// a key (`NSE_EQ|INE002A01018`) needs no entry.
    pub instrument_keys: std::collections::BTreeMap<String, String>,
    /// Upstox: how the token file is read (the configuration's secret reader).
    pub read_token: crate::feed::upstox::ReadToken,
    /// `relay.intervals`: the candle intervals served (each a `@kline_<i>` stream per symbol).
    pub intervals: Vec<candle::Interval>,
    /// `relay.symbols`: symbols subscribed (and backfilled) from the start.
    pub symbols: Vec<String>,
    /// `relay.closed_queue_max`: closed candles one client's outbox holds.
    pub closed_queue_max: usize,
    /// `relay.open_queue_max`: quotes and open-candle updates one client's outbox holds.
    pub open_queue_max: usize,
    /// `relay.breaker_recovery_s`: how long an open breaker waits before a trial connection.
    pub breaker_recovery: Duration,
    /// `relay.close_delay_s`: a bar with no closing kline is closed this long after its end.
    pub close_delay: Duration,
    /// `relay.stale_after_s`: a relayed symbol without a quote this long is not ready.
    pub stale_after: Duration,
    /// No upstream frame for this long means the upstream is silent (`feed.silence_timeout_s`).
    pub silence_timeout: Duration,
    /// First and slowest reconnect delays (`feed.reconnect_initial_s`, `feed.reconnect_max_s`).
    pub reconnect_initial: Duration,
    /// See `reconnect_initial`.
    pub reconnect_max: Duration,
    /// Stop grace: clients get their close frame within this (SIGTERM).
    pub shutdown_grace: Duration,
    /// The control plane's `Host`/`Origin` rule.
    pub origin_rule: Option<OriginRule>,
    /// Seed of jitter and masks.
    pub seed: u64,
}

impl std::fmt::Debug for RelaySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySettings")
            .field("listen", &self.listen)
            .field("health_listen", &self.health_listen)
            .field("exchange", &self.exchange)
            .field("intervals", &self.intervals)
            .field("symbols", &self.symbols)
            .field("closed_queue_max", &self.closed_queue_max)
            .field("open_queue_max", &self.open_queue_max)
            .finish_non_exhaustive()
    }
}
