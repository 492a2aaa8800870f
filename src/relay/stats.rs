//! The relay's counters, exported on its own health port under the OHLCV connector's metric
//! names (so the seed's alert rules and Grafana panels work unchanged), and read by the status
//! page.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of `connector_quote_latency_seconds`: the seed's alert asks whether
/// the p95 is above 2 s, so the buckets reach past it.
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0];

/// A fixed-bucket latency histogram with atomic counters.
#[derive(Debug, Default)]
pub struct Latency {
    counts: [AtomicU64; 15],
    sum_ns: AtomicU64,
}

impl Latency {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_S.iter().position(|b| s <= *b).unwrap_or(LATENCY_BUCKETS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// One client, as the status page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientView {
    /// Its address.
    pub peer: String,
    /// Symbols asked for.
    pub symbols: usize,
    /// Interval.
    pub interval: &'static str,
    /// Ordered messages waiting in its outbox.
    pub queued: usize,
    /// Seconds connected.
    pub age_s: u64,
}

/// One relayed symbol's freshness (for `/ready`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolView {
    /// The symbol.
    pub symbol: String,
    /// Milliseconds since its last quote (`None`: none yet).
    pub quote_age_ms: Option<u64>,
    /// Closed candles held (first interval).
    pub candles: usize,
}

/// Counters and gauges of the relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Whether the relay runs (false: disabled, or it could not bind).
    pub running: AtomicBool,
    /// Why it does not run, when it should.
    pub failure: Mutex<Option<String>>,
    /// `connector_quotes_processed_total`: upstream quotes handled.
    pub quotes: AtomicU64,
    /// Upstream trades handled.
    pub trades: AtomicU64,
    /// Upstream klines handled.
    pub klines: AtomicU64,
    /// `connector_active_connections`: live upstream connections.
    pub upstream_live: AtomicU64,
    /// `connector_circuit_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub breaker: AtomicU8,
    /// `connector_queue_depth_closed`: the deepest client's ordered outbox.
    pub depth_closed: AtomicU64,
    /// `connector_queue_depth_open`: the most quotes and open updates waiting for one client.
    pub depth_open: AtomicU64,
    /// `connector_queue_blocking_events_total`: pushes that found a queue full (a client's
    /// outbox, or the hub's input: the upstream then waits).
    pub blocking: AtomicU64,
    /// `connector_quote_latency_seconds`: upstream frame to the client's socket.
    pub latency: Latency,
    /// `connector_duplicates_filtered_total`.
    pub duplicates: AtomicU64,
    /// `connector_rest_backfills_total{result="ok"}`.
    pub backfills_ok: AtomicU64,
    /// `connector_rest_backfills_total{result="error"}`.
    pub backfills_failed: AtomicU64,
    /// `connector_connection_errors_total`: upstream connection and REST errors.
    pub connection_errors: AtomicU64,
    /// Closed candles built from trades (their kline did not come in time).
    pub built: AtomicU64,
    /// Closed candles corrected (a higher revision sent).
    pub corrections: AtomicU64,
    /// Gaps announced.
    pub gaps: AtomicU64,
    /// Clients connected now (`tickguard_relay_clients`).
    pub clients: AtomicU64,
    /// Clients accepted since start.
    pub clients_total: AtomicU64,
    /// Connections refused before a request (caps, `Host`/`Origin`, no handshake).
    pub refused: AtomicU64,
    /// Requests refused (a field was wrong).
    pub bad_requests: AtomicU64,
    /// Clients closed with 1008 because they fell behind.
    pub slow_closed: AtomicU64,
    /// Quotes and open updates dropped for slow clients (only the newest was kept).
    pub dropped_updates: AtomicU64,
    /// Messages written to clients.
    pub delivered: AtomicU64,
    /// Unix ms since which the upstream is down (0: live).
    pub stale_since: AtomicI64,
    /// The relay's epoch (its start, Unix ms).
    pub epoch: AtomicI64,
    /// Clients, refreshed by the hub every second.
    pub client_views: Mutex<Vec<ClientView>>,
    /// Symbols, refreshed by the hub every second.
    pub symbol_views: Mutex<Vec<SymbolView>>,
}

impl RelayStats {
    /// Whether the relay is ready: running, its upstream breaker closed and live, and every
    /// relayed symbol quoted within `stale_after_ms`. The reason when it is not.
    pub fn ready(&self, stale_after_ms: u64) -> Result<(), String> {
        if !self.running.load(Ordering::Relaxed) {
            let why = self.failure.lock().map(|f| f.clone()).unwrap_or_default();
            return Err(why.unwrap_or_else(|| "the relay is not running".into()));
        }
        if self.breaker.load(Ordering::Relaxed) != 0 {
            return Err("the upstream's circuit breaker is open".into());
        }
        if self.upstream_live.load(Ordering::Relaxed) == 0 {
            return Err("the upstream is not connected".into());
        }
        let views = self.symbol_views.lock().map(|v| v.clone()).unwrap_or_default();
        let stale: Vec<String> = views
            .iter()
            .filter(|s| s.quote_age_ms.is_none_or(|a| a > stale_after_ms))
            .map(|s| s.symbol.clone())
            .collect();
        if !stale.is_empty() {
            return Err(format!("no fresh quote for {}", stale.join(", ")));
        }
        Ok(())
    }

    /// The Prometheus exposition of the relay (the connector's names, then the relay's own).
    pub fn render(&self, exchange: &str) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut o = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, u64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        let none = String::new();
        let ex = format!("{{exchange=\"{exchange}\"}}");
        metric(
            "connector_quotes_processed_total",
            "counter",
            "Upstream quotes handled.",
            &[(ex.clone(), n(&self.quotes))],
        );
        metric(
            "connector_active_connections",
            "gauge",
            "Live connections to exchanges.",
            &[(ex.clone(), n(&self.upstream_live))],
        );
        metric(
            "connector_circuit_breaker_state",
            "gauge",
            "Upstream circuit breaker: 0 closed, 1 open, 2 half-open.",
            &[(ex.clone(), u64::from(self.breaker.load(Ordering::Relaxed)))],
        );
        metric(
            "connector_queue_depth_closed",
            "gauge",
            "Closed candles (and other ordered messages) waiting in the deepest client outbox.",
            &[(none.clone(), n(&self.depth_closed))],
        );
        metric(
            "connector_queue_depth_open",
            "gauge",
            "Quotes and open-candle updates waiting for the busiest client.",
            &[(none.clone(), n(&self.depth_open))],
        );
        metric(
            "connector_queue_blocking_events_total",
            "counter",
            "Pushes that found a queue full.",
            &[(none.clone(), n(&self.blocking))],
        );
        metric(
            "connector_duplicates_filtered_total",
            "counter",
            "Closed candles received again with the same values, not sent again.",
            &[(ex.clone(), n(&self.duplicates))],
        );
        metric(
            "connector_rest_backfills_total",
            "counter",
            "REST candle backfills by result.",
            &[
                (format!("{{exchange=\"{exchange}\",result=\"ok\"}}"), n(&self.backfills_ok)),
                (format!("{{exchange=\"{exchange}\",result=\"error\"}}"), n(&self.backfills_failed)),
            ],
        );
        metric(
            "connector_connection_errors_total",
            "counter",
            "Upstream connection and REST errors.",
            &[(ex.clone(), n(&self.connection_errors))],
        );
        metric(
            "tickguard_relay_clients",
            "gauge",
            "Relay clients connected now.",
            &[(none.clone(), n(&self.clients))],
        );
        metric(
            "tickguard_relay_clients_total",
            "counter",
            "Relay clients accepted since start.",
            &[(none.clone(), n(&self.clients_total))],
        );
        metric(
            "tickguard_relay_refused_total",
            "counter",
            "Relay connections refused before a request (caps, Host/Origin, no handshake).",
            &[(none.clone(), n(&self.refused))],
        );
        metric(
            "tickguard_relay_bad_requests_total",
            "counter",
            "Relay requests refused, each with an error naming its field.",
            &[(none.clone(), n(&self.bad_requests))],
        );
        metric(
            "tickguard_relay_slow_clients_closed_total",
            "counter",
            "Relay clients closed with 1008 because they fell behind.",
            &[(none.clone(), n(&self.slow_closed))],
        );
        metric(
            "tickguard_relay_updates_dropped_total",
            "counter",
            "Quotes and open updates dropped for slow clients (open_queue_max slots waiting).",
            &[(none.clone(), n(&self.dropped_updates))],
        );
        metric(
            "tickguard_relay_messages_total",
            "counter",
            "Messages written to relay clients.",
            &[(none.clone(), n(&self.delivered))],
        );
        metric(
            "tickguard_relay_candles_built_total",
            "counter",
            "Closed candles built from trades because their kline did not come in time.",
            &[(ex.clone(), n(&self.built))],
        );
        metric(
            "tickguard_relay_candles_corrected_total",
            "counter",
            "Closed candles sent again with a higher revision.",
            &[(ex.clone(), n(&self.corrections))],
        );
        metric("tickguard_relay_gaps_total", "counter", "Gaps announced to clients.", &[(ex, n(&self.gaps))]);
        let _ = writeln!(
            o,
            "# HELP connector_quote_latency_seconds Upstream frame to the client's socket.\n# TYPE connector_quote_latency_seconds histogram"
        );
        let mut acc = 0u64;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            acc += self.latency.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(o, "connector_quote_latency_seconds_bucket{{le=\"{le}\"}} {acc}");
        }
        acc += self.latency.counts[LATENCY_BUCKETS_S.len()].load(Ordering::Relaxed);
        let _ = writeln!(o, "connector_quote_latency_seconds_bucket{{le=\"+Inf\"}} {acc}");
        let sum = self.latency.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            o,
            "connector_quote_latency_seconds_sum {sum}\nconnector_quote_latency_seconds_count {acc}"
        );
        o
    }
}

impl crate::bus::status::RelayProbe for RelayStats {
    fn view(&self) -> crate::bus::status::RelayView {
        let clients = self
            .client_views
            .lock()
            .map(|v| {
                v.iter()
                    .map(|c| crate::bus::status::RelayClientRow {
                        peer: c.peer.clone(),
                        symbols: c.symbols,
                        interval: c.interval.to_string(),
                        queued: c.queued,
                        age_s: c.age_s,
                    })
                    .collect()
            })
            .unwrap_or_default();
        crate::bus::status::RelayView {
            running: self.running.load(Ordering::Relaxed),
            failure: self.failure.lock().ok().and_then(|f| f.clone()),
            upstream_live: self.upstream_live.load(Ordering::Relaxed) > 0,
            symbols: self.symbol_views.lock().map(|v| v.len()).unwrap_or(0),
            clients,
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_closed: self.slow_closed.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
        }
    }
}
