//! Wiring of the real network edge: resolver (with background refresh of every host the
//! appliance needs), TLS, the feed session and the REST poller.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::bus::EngineHandle;
use crate::bus::clock::Clock;
use crate::config::Config;
use crate::core::types::{InstrumentId, Symbol};
use crate::feed::binance::{self, BinanceConfig};
use crate::feed::calendar::Calendar;
use crate::feed::rest::{self, RestConfig};
use crate::feed::session::{Ctx, FeedShared};
use crate::feed::upstox::{InstrumentMap, Mode, UpstoxConfig};
use crate::feed::venue_symbols::VenueSymbols;
use crate::net::dns::{DnsConfig, Resolver};
use crate::net::http::{Connector, Endpoint};
use crate::net::tls::TlsClient;
use crate::net::ws::WsLimits;

/// Every host is re-resolved this often in the background.
pub const DNS_REFRESH: Duration = Duration::from_secs(120);
/// The venue's symbol list (Binance) is fetched at start-up and then this often.
pub const SYMBOLS_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Bound of one whole resolution: one `dns.timeout_s` per resolver in the chain (the system
/// resolver and each of `dns.nameservers`), so that every resolver gets its try, but never more
/// than 10 s (or one try, if `dns.timeout_s` is longer): a dead resolver list must not stall a
/// reconnect. (It was twice one try: with two dead resolvers first, the answering third was
/// never asked.)
pub fn resolution_cap(cfg: &Config) -> Duration {
    let resolvers = cfg.dns.nameservers.len() + usize::from(cfg.dns.use_system);
    let all = cfg.dns.timeout.saturating_mul(u32::try_from(resolvers.max(1)).unwrap_or(u32::MAX));
    all.min(Duration::from_secs(10).max(cfg.dns.timeout))
}

// ----- the feed's settings, filled from the configuration (the feed edge knows no `config`) --

/// Binance's session settings: its defaults, with the configured timings.
pub fn binance_config(cfg: &Config, endpoint: Endpoint, seed: u64) -> BinanceConfig {
    let mut b = BinanceConfig::new(endpoint, seed);
    b.silence_timeout = cfg.feed.silence_timeout;
    b.reconnect_initial = cfg.feed.reconnect_initial;
    b.reconnect_max = cfg.feed.reconnect_max;
    b
}

/// The REST last-price poller's settings (Binance).
pub fn rest_config(cfg: &Config, endpoint: Endpoint) -> RestConfig {
    RestConfig {
        endpoint,
        every: cfg.feed.rest_poll,
        timeout: cfg.feed.rest_poll.max(Duration::from_secs(2)),
    }
}

/// The Upstox feed's settings (validated: an Upstox venue has a token file).
pub fn upstox_config(cfg: &Config, rest: Endpoint, seed: u64) -> UpstoxConfig {
    let mode = Mode::parse(&cfg.feed.mode).unwrap_or_default();
    UpstoxConfig {
        rest,
        token_file: cfg.feed.token_file.clone().unwrap_or_default(),
        mode,
        cap: cfg.feed.max_subscriptions.map_or(mode.cap(), usize::from).min(mode.cap()),
        silence_timeout: cfg.feed.silence_timeout,
        reconnect_initial: cfg.feed.reconnect_initial,
        reconnect_max: cfg.feed.reconnect_max,
        jitter: 0.5,
        connect_timeout: Duration::from_secs(10),
        control_spacing: Duration::from_millis(200),
        limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
        max_lifetime: None,
        rest_poll: cfg.feed.rest_poll,
        rest_timeout: cfg.feed.rest_poll.max(Duration::from_secs(2)),
        seed,
        read_token: |p| crate::config::read_secret(p).map_err(|e| e.to_string()),
    }
}

/// Upstox's venue-instrument map: `[feed.instrument_keys]`, plus every symbol of
/// `feed.instruments` and `[[positions]]` that is itself a key.
pub fn instrument_map(cfg: &Config) -> InstrumentMap {
    let m = InstrumentMap::new(cfg.feed.instrument_keys.clone());
    for s in cfg.watched_symbols() {
        let _ = m.key(&s);
    }
    m
}

/// The market calendar of `feed.market_hours` and `feed.holidays` (always open, loudly, when
/// it cannot be read).
pub fn calendar(cfg: &Config) -> Calendar {
    Calendar::parse(&cfg.feed.market_hours, &cfg.feed.holidays).unwrap_or_else(|e| {
        log::error!("[MARKET] event=calendar_invalid error=\"{e}\" (the market counts as always open)");
        Calendar::always()
    })
}

/// Connections through the configured resolver chain (`[dns]`) and TLS (`[tls]`): the feed,
/// REST, the broker and the relay's upstream all dial through one of these.
pub fn connector(cfg: &Config) -> Result<Connector, String> {
    let dns = DnsConfig {
        use_system: cfg.dns.use_system,
        resolv_conf: cfg.dns.resolv_conf.clone(),
        nameservers: cfg.dns.nameservers.clone(),
        timeout: cfg.dns.timeout,
        cap: resolution_cap(cfg),
    };
    let tls = TlsClient::new(cfg.tls.extra_ca.as_deref()).map_err(|e| e.to_string())?;
    Ok(Connector {
        resolver: Arc::new(Resolver::new(dns)),
        tls,
        connect_timeout: Duration::from_secs(5),
        fresh: DNS_REFRESH + Duration::from_secs(30),
    })
}

/// The network edge, ready to spawn.
pub struct Edge {
    /// Connections through the resolver and TLS.
    pub connector: Connector,
    /// Feed state shared with the status views.
    pub shared: Arc<FeedShared>,
    /// The venue's symbol list (Binance; loaded from `store.dir`, refreshed by
    /// [`Edge::spawn`]). For another venue it stays empty: every verdict is `Unverified`.
    pub symbols: Arc<VenueSymbols>,
    /// Upstox's venue-instrument map (symbol ↔ instrument key), shared by the feed session,
    /// the LTP poller and the Upstox broker (empty for another venue).
    pub upstox_keys: Arc<InstrumentMap>,
    ws: Endpoint,
    rest: Endpoint,
    seed: u64,
}

impl Edge {
    /// Builds the resolver, TLS client and endpoints from the configuration.
    pub fn new(cfg: &Config, seed: u64) -> Result<Edge, String> {
        let ws = Endpoint::parse(&cfg.feed.ws_url).map_err(|e| format!("feed.ws_url = {e}"))?;
        let rest = Endpoint::parse(&cfg.feed.rest_url).map_err(|e| format!("feed.rest_url = {e}"))?;
        let connector = connector(cfg)?;
        // The stored list is read even before the network is up, so a start during a DNS
        // outage still checks symbols. Only Binance has one; another venue's edge never reads
        // nor writes the file.
        let symbols = if cfg.feed.venue == crate::config::Venue::Binance {
            VenueSymbols::open(&cfg.store.dir)
        } else {
            VenueSymbols::empty(&cfg.store.dir)
        };
        let upstox_keys = Arc::new(instrument_map(cfg));
        Ok(Edge { connector, shared: Arc::new(FeedShared::default()), symbols, upstox_keys, ws, rest, seed })
    }

    /// Spawns the DNS refresher, the feed session and the REST poller.
    pub fn spawn(
        self,
        cfg: &Config,
        instruments: &[(InstrumentId, String)],
        engine: EngineHandle,
        clock: Clock,
        added: mpsc::Receiver<(InstrumentId, Symbol)>,
        stop: watch::Receiver<bool>,
    ) -> Vec<JoinHandle<()>> {
        for (id, sym) in instruments {
            self.shared.add(*id, Symbol::try_from(sym.as_str()).unwrap_or_default());
        }
        // Upstox hands out its WebSocket host with each authorization: only the REST host is
        // known in advance.
        let mut hosts = vec![self.rest.host.clone()];
        if cfg.feed.venue != crate::config::Venue::Upstox {
            hosts.push(self.ws.host.clone());
        }
        if let Ok(b) = Endpoint::parse(&cfg.broker.rest_url) {
            if cfg.broker.kind != crate::config::BrokerKind::Paper {
                hosts.push(b.host);
            }
        }
        hosts.sort();
        hosts.dedup();
        let _ = engine.status.feed.set(self.shared.clone());
        let _ = engine.status.resolver.set(self.connector.resolver.clone());
        let ctx = Ctx { shared: self.shared.clone(), engine, clock };
        if cfg.feed.venue == crate::config::Venue::Upstox {
            let mut jobs = vec![tokio::spawn(self.connector.resolver.clone().refresh_loop(
                hosts,
                DNS_REFRESH,
                stop.clone(),
            ))];
            jobs.extend(crate::feed::upstox::spawn(
                upstox_config(cfg, self.rest.clone(), self.seed),
                calendar(cfg),
                self.connector.clone(),
                self.shared.clone(),
                ctx,
                instruments,
                added,
                stop,
                self.upstox_keys.clone(),
            ));
            return jobs;
        }
        let scfg = binance_config(cfg, self.ws.clone(), self.seed);
        let rcfg = rest_config(cfg, self.rest.clone());
        vec![
            tokio::spawn(self.symbols.clone().refresh_loop(
                self.connector.clone(),
                self.rest.clone(),
                SYMBOLS_REFRESH,
                stop.clone(),
            )),
            tokio::spawn(self.connector.resolver.clone().refresh_loop(hosts, DNS_REFRESH, stop.clone())),
            tokio::spawn(binance::run(scfg, self.connector.clone(), ctx.clone(), added, stop.clone())),
            tokio::spawn(rest::run(rest::BinancePoller::new(rcfg), self.connector.clone(), ctx, stop)),
        ]
    }
}
