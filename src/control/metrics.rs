//! `/metrics` in the Prometheus text format (0.0.4). Every name starts with `tickguard_`;
//! `docs/metrics.md` lists each with its help text (a test keeps the two in step).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::notify::KINDS;
use super::server::HttpStats;
use super::views::Snap;
use super::watch::{REASONS, RESULTS, WatchState};
use crate::bus::queue::QueueStats;
use crate::bus::status::{LATENCY_BUCKETS_US, Status};
use crate::core::engine::Alarm;

/// What one scrape reads.
pub struct Inputs<'a> {
    /// The engine's snapshot (`None`: the engine did not answer).
    pub snap: Option<&'a Snap>,
    /// The runtime's lock-free status.
    pub status: &'a Status,
    /// Tick queue depth.
    pub queue_depth: usize,
    /// Tick queue counters.
    pub queue: QueueStats,
    /// Messages waiting in the engine's command queue.
    pub command_queue: usize,
    /// The HTTP server's counters.
    pub http: Option<&'a HttpStats>,
    /// The watcher's counters and the notifier.
    pub watch: &'a WatchState,
    /// Journal size, when a journal is attached.
    pub journal_bytes: Option<u64>,
    /// Journal fsyncs and writer-queue waits, when a journal is attached.
    pub journal_counters: Option<(u64, u64)>,
    /// `feed.venue`.
    pub venue: &'a str,
    /// A configuration alarm of the API (loopback-only fallback).
    pub config_alarm: bool,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Renders every metric.
pub fn render(i: &Inputs<'_>) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.family("tickguard_build_info", "gauge", "Version and venue of this build; always 1.");
    o.sample("tickguard_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("venue", i.venue)], 1);
    o.one(
        "tickguard_engine_responding",
        "gauge",
        "1 when the engine answered this scrape's inspection in time.",
        u8::from(i.snap.is_some()),
    );
    o.one(
        "tickguard_engine_turns_total",
        "counter",
        "Turns of the engine loop (stops growing when the engine is stalled).",
        load(&i.status.engine_turns),
    );
    if let Some(s) = i.snap {
        engine_metrics(&mut o, s);
    }
    // Feed, DNS, REST.
    let feed = i.status.feed.get().map(|f| f.stats());
    o.one(
        "tickguard_feed_reconnects_total",
        "counter",
        "Reconnect attempts of the live feed session (0 on the simulator).",
        feed.map_or(0, |f| f.reconnects),
    );
    o.one(
        "tickguard_feed_reconnect_attempts",
        "gauge",
        "Failed connection attempts in the current run (0 while connected).",
        feed.map_or(0, |f| f.attempts),
    );
    o.one(
        "tickguard_feed_network_errors_total",
        "counter",
        "Connection and protocol errors of the live feed.",
        feed.map_or(0, |f| f.network_errors),
    );
    o.one(
        "tickguard_feed_frames_total",
        "counter",
        "Frames received from the live feed.",
        feed.map_or(0, |f| f.frames),
    );
    o.one(
        "tickguard_feed_malformed_total",
        "counter",
        "Feed frames that could not be decoded.",
        feed.map_or(0, |f| f.malformed),
    );
    let dns = i.status.resolver.get().map(|r| r.dns_stats());
    o.family(
        "tickguard_dns_queries_total",
        "counter",
        "Name resolutions tried, by resolver (system or fallback).",
    );
    o.sample(
        "tickguard_dns_queries_total",
        &[("resolver", "system")],
        dns.map_or(0, |d| load(&d.system_tries)),
    );
    o.sample(
        "tickguard_dns_queries_total",
        &[("resolver", "fallback")],
        dns.map_or(0, |d| load(&d.fallback_tries)),
    );
    o.one(
        "tickguard_dns_system_failures_total",
        "counter",
        "Resolutions the system resolver failed.",
        dns.map_or(0, |d| load(&d.system_failures)),
    );
    o.one(
        "tickguard_dns_fallback_answers_total",
        "counter",
        "Names resolved by a fallback server after the system resolver failed.",
        dns.map_or(0, |d| load(&d.fallback_answers)),
    );
    o.one(
        "tickguard_dns_last_good_uses_total",
        "counter",
        "Connections made to a last-good address because no resolver answered.",
        dns.map_or(0, |d| load(&d.last_good_uses)),
    );
    o.one(
        "tickguard_rest_polls_total",
        "counter",
        "REST price polls sent while the feed was down.",
        load(&i.status.rest.polls),
    );
    o.one(
        "tickguard_rest_errors_total",
        "counter",
        "REST price polls that failed.",
        load(&i.status.rest.errors),
    );
    o.one(
        "tickguard_rest_breaker_open",
        "gauge",
        "1 while the REST poller's circuit breaker holds requests back.",
        u8::from(i.status.rest.breaker_open.load(Ordering::Relaxed)),
    );
    // Closes.
    o.family("tickguard_close_decisions_total", "counter", "Close decisions, by reason.");
    for (r, c) in REASONS.iter().zip(&i.watch.decisions).take(4) {
        o.sample("tickguard_close_decisions_total", &[("reason", r)], load(c));
    }
    o.family(
        "tickguard_closes_total",
        "counter",
        "Positions closed, by decision reason and result (filled, external, resolved, withdrawn).",
    );
    for (r, row) in REASONS.iter().zip(&i.watch.closes) {
        for (res, c) in RESULTS.iter().zip(row) {
            o.sample("tickguard_closes_total", &[("reason", r), ("result", res)], load(c));
        }
    }
    o.family("tickguard_close_failed_total", "counter", "Positions that reached close_failed, by reason.");
    for (r, c) in REASONS.iter().zip(&i.watch.close_failed).take(4) {
        o.sample("tickguard_close_failed_total", &[("reason", r)], load(c));
    }
    o.one(
        "tickguard_orders_sent_total",
        "counter",
        "Close orders and look-ups handed to the broker.",
        load(&i.status.orders_sent),
    );
    // Queues.
    o.one(
        "tickguard_tick_queue_depth",
        "gauge",
        "Instruments with a tick waiting for the engine.",
        i.queue_depth,
    );
    o.one(
        "tickguard_tick_queue_pushed_total",
        "counter",
        "Ticks pushed into the tick queue.",
        i.queue.pushed,
    );
    o.one(
        "tickguard_tick_queue_coalesced_total",
        "counter",
        "Ticks folded into a waiting tick of the same instrument (extremes kept).",
        i.queue.coalesced,
    );
    o.family("tickguard_tick_queue_dropped_total", "counter", "Ticks dropped by the tick queue, by cause.");
    o.sample("tickguard_tick_queue_dropped_total", &[("cause", "stale")], i.queue.stale);
    o.sample("tickguard_tick_queue_dropped_total", &[("cause", "rejected")], i.queue.rejected);
    o.one(
        "tickguard_command_queue_depth",
        "gauge",
        "Commands, feed events, broker reports and inspections waiting for the engine.",
        i.command_queue,
    );
    // Latency.
    let (counts, sum_us) = i.status.tick_to_action.snapshot();
    o.family(
        "tickguard_tick_to_action_seconds",
        "histogram",
        "Live frame received to close order emitted, for ticks that caused an order.",
    );
    let mut acc = 0u64;
    for (b, c) in LATENCY_BUCKETS_US.iter().zip(counts.iter()) {
        acc += c;
        let le = format!("{}", *b as f64 / 1e6);
        o.sample("tickguard_tick_to_action_seconds_bucket", &[("le", &le)], acc);
    }
    acc += counts[LATENCY_BUCKETS_US.len()];
    o.sample("tickguard_tick_to_action_seconds_bucket", &[("le", "+Inf")], acc);
    o.sample("tickguard_tick_to_action_seconds_sum", &[], sum_us as f64 / 1e6);
    o.sample("tickguard_tick_to_action_seconds_count", &[], acc);
    if let Some(b) = i.journal_bytes {
        o.one("tickguard_journal_bytes", "gauge", "Size of the journal on disk.", b);
    }
    if let Some((fsyncs, waits)) = i.journal_counters {
        o.one(
            "tickguard_journal_fsyncs_total",
            "counter",
            "Fsyncs of the journal by its writer thread (one per group of records committed together).",
            fsyncs,
        );
        o.one(
            "tickguard_journal_queue_waits_total",
            "counter",
            "Times a writer had to wait for room in the journal writer's queue (the disk far behind).",
            waits,
        );
    }
    // Notifications.
    o.family("tickguard_notify_events_total", "counter", "Events noticed for notification, by kind.");
    for (k, c) in KINDS.iter().zip(&i.watch.notifier.produced) {
        o.sample("tickguard_notify_events_total", &[("event", k.as_str())], load(c));
    }
    o.family("tickguard_notify_sent_total", "counter", "Notifications delivered, by channel.");
    o.family(
        "tickguard_notify_failed_total",
        "counter",
        "Notifications given up after every retry, by channel.",
    );
    o.family(
        "tickguard_notify_dropped_total",
        "counter",
        "Notifications dropped because the channel's queue was full.",
    );
    o.family("tickguard_notify_queue_depth", "gauge", "Notifications waiting, by channel.");
    for c in &i.watch.notifier.channels {
        let l = [("channel", c.name())];
        o.sample("tickguard_notify_sent_total", &l, load(&c.stats.sent));
        o.sample("tickguard_notify_failed_total", &l, load(&c.stats.failed));
        o.sample("tickguard_notify_dropped_total", &l, load(&c.stats.dropped));
        o.sample("tickguard_notify_queue_depth", &l, load(&c.stats.queued));
    }
    // HTTP.
    if let Some(h) = i.http {
        o.one(
            "tickguard_http_connections_open",
            "gauge",
            "Open connections to the API.",
            h.open_connections.load(Ordering::Relaxed),
        );
        o.family("tickguard_http_responses_total", "counter", "API responses, by status class.");
        for (cls, c) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(&h.responses) {
            o.sample("tickguard_http_responses_total", &[("code", cls)], load(c));
        }
        o.family(
            "tickguard_http_refused_total",
            "counter",
            "Requests answered 503 at a bound, by cause (connections, busy).",
        );
        o.sample("tickguard_http_refused_total", &[("cause", "connections")], load(&h.refused_connections));
        o.sample("tickguard_http_refused_total", &[("cause", "busy")], load(&h.busy));
        o.sample("tickguard_http_refused_total", &[("cause", "waiting")], load(&h.waiting_refused));
        o.sample("tickguard_http_refused_total", &[("cause", "host")], load(&h.wrong_host));
        o.sample("tickguard_http_refused_total", &[("cause", "rate")], load(&h.throttled));
        o.one(
            "tickguard_http_timeouts_total",
            "counter",
            "Connections or requests cut at a deadline (TLS handshake, head, body, response write).",
            load(&h.timeouts),
        );
        o.one(
            "tickguard_http_auth_failures_total",
            "counter",
            "Wrong bearer tokens and failed logins (answered after a growing per-address delay).",
            load(&h.auth_failures),
        );
        o.one(
            "tickguard_http_evicted_total",
            "counter",
            "Unauthenticated connections closed to make room for a request with credentials.",
            load(&h.evicted),
        );
        o.one(
            "tickguard_http_tls_failures_total",
            "counter",
            "TLS handshakes that failed.",
            load(&h.tls_failures),
        );
        o.one(
            "tickguard_http_response_bytes_in_flight",
            "gauge",
            "Response bytes being written now, over all connections.",
            h.response_bytes_in_flight.load(Ordering::Relaxed),
        );
    }
    o.one(
        "tickguard_api_config_alarm",
        "gauge",
        "1 while the API serves on loopback only because of a configuration problem (see /ready).",
        u8::from(i.config_alarm),
    );
    if let Some(sync) = clock_synchronized() {
        o.one(
            "tickguard_clock_synchronized",
            "gauge",
            "1 when the system clock is synchronised (systemd-timesyncd).",
            u8::from(sync),
        );
    }
    o.0
}

fn clock_synchronized() -> Option<bool> {
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        Some(true)
    } else if std::path::Path::new("/run/systemd/timesync").exists() {
        Some(false)
    } else {
        None
    }
}

fn engine_metrics(o: &mut Out, s: &Snap) {
    o.family("tickguard_ticks_total", "counter", "Ticks accepted into the price cache, by source.");
    for (src, n) in ["live", "rest", "manual"].iter().zip(s.stats.ticks) {
        o.sample("tickguard_ticks_total", &[("source", src)], n);
    }
    o.one(
        "tickguard_ticks_superseded_total",
        "counter",
        "Ticks that lost to a newer cached quote (e.g. a REST answer older than a live tick).",
        s.stats.ticks_superseded,
    );
    o.one(
        "tickguard_feed_connected",
        "gauge",
        "1 while the live feed session is up.",
        u8::from(s.feed_connected),
    );
    o.one(
        "tickguard_price_age_max_seconds",
        "gauge",
        "Largest price age among instruments with open positions (0 when none; -1 when one has never had a price).",
        match (s.max_open_age, s.open_bands[3]) {
            (_, n) if n > 0 => -1.0,
            (Some(a), _) => a.as_secs_f64(),
            (None, _) => 0.0,
        },
    );
    o.family("tickguard_price_age_seconds", "gauge", "Age of each instrument's newest price.");
    for inst in &s.instruments {
        if let Some(a) = inst.age {
            o.sample("tickguard_price_age_seconds", &[("symbol", &inst.symbol)], a.as_secs_f64());
        }
    }
    o.family(
        "tickguard_open_instruments",
        "gauge",
        "Instruments with open positions, by ladder rung (live, rest, cache, blind).",
    );
    for (r, n) in ["live", "rest", "cache", "blind"].iter().zip(s.open_rungs) {
        o.sample("tickguard_open_instruments", &[("rung", r)], n);
    }
    o.family(
        "tickguard_open_instruments_by_band",
        "gauge",
        "Instruments with open positions, by price age band (live, stale, expired, none).",
    );
    for (b, n) in ["live", "stale", "expired", "none"].iter().zip(s.open_bands) {
        o.sample("tickguard_open_instruments_by_band", &[("band", b)], n);
    }
    o.one(
        "tickguard_rest_failing_instruments",
        "gauge",
        "Instruments with open positions whose REST source counts as failing (3 errors in a row).",
        if s.cfg.rest_enabled {
            s.instruments.iter().filter(|i| i.open_positions > 0 && !i.rest_working).count()
        } else {
            0
        },
    );
    o.family("tickguard_positions", "gauge", "Positions in the book, by state.");
    for (st, n) in ["open", "closing", "close_failed", "closed"].iter().zip(s.counts) {
        o.sample("tickguard_positions", &[("state", st)], n);
    }
    o.one(
        "tickguard_blind_positions",
        "gauge",
        "Positions that are blind: no usable price and no working source, or no usable price for blind_grace.",
        s.blind,
    );
    o.one(
        "tickguard_close_outcome_unknown_positions",
        "gauge",
        "Positions whose close attempt has had no known outcome for longer than broker.unknown_alarm_s (settle them).",
        s.unknown_overdue,
    );
    o.family(
        "tickguard_alarm",
        "gauge",
        "The indicator's state (1 for the current one): live, stale, blind, close_failed.",
    );
    for (name, a) in [
        ("live", Alarm::Live),
        ("stale", Alarm::Stale),
        ("blind", Alarm::Blind),
        ("close_failed", Alarm::CloseFailed),
    ] {
        o.sample("tickguard_alarm", &[("state", name)], u8::from(s.alarm.0 == a));
    }
    o.one(
        "tickguard_alarm_acknowledged",
        "gauge",
        "1 when the operator silenced the current alarm.",
        u8::from(s.alarm.1),
    );
    o.one(
        "tickguard_engine_close_decisions_total",
        "counter",
        "Close decisions made by the engine.",
        s.stats.decisions,
    );
    o.one(
        "tickguard_close_orders_total",
        "counter",
        "Close orders placed by the engine.",
        s.stats.orders_placed,
    );
    o.one(
        "tickguard_close_attempt_failures_total",
        "counter",
        "Close attempts that failed (rejected, or done with nothing executed).",
        s.stats.close_failures,
    );
    o.one(
        "tickguard_closes_filled_total",
        "counter",
        "Positions fully closed by our orders.",
        s.stats.closes_done,
    );
    o.one(
        "tickguard_notices_dropped_total",
        "counter",
        "Engine notices dropped (log lines lost).",
        s.stats.notices_dropped,
    );
    o.one(
        "tickguard_prices_dropped_total",
        "counter",
        "Quotes that carried a zero or negative price (that price was dropped, for that instrument only).",
        s.stats.prices_dropped,
    );
    o.one(
        "tickguard_late_broker_reports_total",
        "counter",
        "Broker answers about an earlier or concluded attempt whose fills were reconciled.",
        s.stats.late_reports,
    );
}
