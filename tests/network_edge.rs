//! The network edge end to end (issue 4, "What it must show"): the real `tickguard run` binary
//! against loopback servers of `tests/support/` — DNS servers it is pointed at through a test
//! `resolv.conf` ("system") and `dns.nameservers` (fallbacks), a TLS WebSocket server speaking
//! Binance's combined-stream protocol, and a TLS REST price server, all on 127.0.0.1 with a
//! throw-away CA (`tls.extra_ca`). Host names are `stream.test` and `api.test`: only the test
//! DNS servers know them, so every address the binary uses went through its own resolver chain.
//!
//! The binary's stderr is read on a thread into a shared buffer; the tests wait for log lines
//! (docs/logs.md is the contract they read). One case (4b) runs the same wiring in-process
//! (`runtime::app::run_config_with`) to move a stop through the engine handle, since the HTTP
//! API for it is another issue's.
//!
//! Every test is bounded (`LIMIT`) and stops the binary it started (SIGTERM, then kill on drop).

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::app::{App, Line, Log, field};
use support::dns::{Behavior, DnsServer, Transport};
use support::edge_world::{BinanceEdge, BinanceSetup, LOCALHOST, api_text, wait_subscribed};
use support::rest::{RestFault, RestServer};
use support::ws::{Fault, WsServer};

/// Bound of one whole test.
const LIMIT: Duration = Duration::from_secs(40);
/// The seed incident's position: BOSCHLTD long 10 at 735.00, stop 698.25, target 800.00.
const BOSCH: &str = r#"
[[positions]]
id = "bosch"
symbol = "BOSCHLTD"
side = "long"
qty = 10
entry = "735.00"
stop_loss = "698.25"
take_profit = "800.00"
"#;
/// Instruments watched on top of the positions' symbols.
const WATCHED: [&str; 3] = ["ADANIENT", "KAYNES", "RELIANCE"];

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

// ----- the loopback world ----------------------------------------------------------------

/// Three DNS servers (the "system" one named in a test resolv.conf, two fallbacks), the
/// WebSocket and CA of `support::edge_world`, and the REST price server, for one test.
struct World {
    edge: BinanceEdge,
    rest: RestServer,
}

impl std::ops::Deref for World {
    type Target = BinanceEdge;
    fn deref(&self) -> &BinanceEdge {
        &self.edge
    }
}

/// Timings and extras of one configuration.
struct Knobs {
    stale_after: f64,
    expire_after: f64,
    blind_grace: f64,
    extra: String,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs { stale_after: 5.0, expire_after: 20.0, blind_grace: 5.0, extra: String::new() }
    }
}

impl World {
    async fn new(name: &str) -> World {
        let edge = BinanceEdge::start(name, 2).await;
        let rest = RestServer::start(edge.ca.server_config(&["api.test"])).await;
        rest.set_price("BOSCHLTD", "730.00");
        for s in WATCHED {
            rest.set_price(s, "100.00");
        }
        World { edge, rest }
    }

    /// The first fallback resolver.
    fn fb1(&self) -> &DnsServer {
        &self.fallbacks[0]
    }

    /// The second fallback resolver.
    fn fb2(&self) -> &DnsServer {
        &self.fallbacks[1]
    }

    fn config(&self, k: &Knobs) -> PathBuf {
        self.edge.config(&BinanceSetup {
            rest_port: self.rest.port,
            instruments: &WATCHED,
            stale_after_s: k.stale_after,
            expire_after_s: k.expire_after,
            blind_grace_s: k.blind_grace,
            broker: "kind = \"paper\"\npaper_fill_delay_s = 0.05",
            tail: &format!("[sim]\nseed = 7\n{BOSCH}\n{}", k.extra),
        })
    }

    /// Every instrument's stream name, as the session must subscribe it.
    fn all_streams() -> HashSet<String> {
        WATCHED
            .iter()
            .chain(["BOSCHLTD"].iter())
            .map(|s| format!("{}@bookTicker", s.to_ascii_lowercase()))
            .collect()
    }
}

// The binary and its log: `support::app`.

/// `[RECONNECT] attempt=N delay_ms=D cause="..."` lines: (attempt, delay in ms, cause).
fn reconnects(lines: &[Line]) -> Vec<(u32, u64, String)> {
    lines
        .iter()
        .filter(|l| l.text.contains("[RECONNECT] attempt="))
        .filter_map(|l| {
            let attempt = field(&l.text, "attempt")?.parse().ok()?;
            let delay = field(&l.text, "delay_ms")?.parse().ok()?;
            let cause = l.text.split("cause=").nth(1).unwrap_or("").to_string();
            Some((attempt, delay, cause))
        })
        .collect()
}

/// Base of the n-th reconnect delay for `initial` 0.2 s and `max` 1.5 s: `0.2 × 2^(n-1)`,
/// capped. With jitter 0.5 the delay is within `[0.5, 1.5] ×` that, never above 1.5 s.
fn base_ms(attempt: u32) -> f64 {
    (200.0 * f64::from(1u32 << (attempt.max(1) - 1).min(16))).min(1500.0)
}

fn assert_backoff(seq: &[(u32, u64, String)], log: &str) {
    assert!(seq.len() >= 3, "at least three reconnects: {seq:?}\n{log}");
    for w in seq.windows(2) {
        assert!(w[1].0 == w[0].0 + 1 || w[1].0 == 1, "attempts count up: {seq:?}");
    }
    for (attempt, delay, _) in seq {
        let b = base_ms(*attempt);
        let (lo, hi) = (b * 0.5 - 1.0, (b * 1.5).min(1500.0) + 1.0);
        assert!(
            (lo..=hi).contains(&(*delay as f64)),
            "attempt {attempt}: delay {delay} ms outside [{lo}, {hi}]: {seq:?}"
        );
    }
    // Growing: attempt 3's window lies wholly above attempt 1's.
    let d = |n: u32| seq.iter().find(|(a, _, _)| *a == n).map(|(_, d, _)| *d);
    if let (Some(d1), Some(d3)) = (d(1), d(3)) {
        assert!(d3 > d1, "delays grow: {seq:?}");
    }
}

/// Every WebSocket connection that sent a SUBSCRIBE subscribed every instrument's stream.
fn assert_full_resubscription(ws: &WsServer) {
    let want = World::all_streams();
    let subs = ws.subscriptions();
    let with_any: Vec<&Vec<String>> = subs.iter().filter(|s| !s.is_empty()).collect();
    assert!(with_any.len() >= 2, "a reconnect subscribed again: {subs:?}");
    for s in with_any {
        let got: HashSet<String> = s.iter().cloned().collect();
        assert!(want.is_subset(&got), "connection subscribed {got:?}, want every stream {want:?}");
    }
    let last = subs.last().cloned().unwrap_or_default();
    let got: HashSet<String> = last.into_iter().collect();
    assert!(want.is_subset(&got), "the current connection subscribed {got:?}, want {want:?}");
}

// ----- 1. DNS fallback chain -------------------------------------------------------------

/// Issue 4, must-show 1: the system resolver (SERVFAIL) and the first fallback (no answer at
/// all: a dead server) fail, the second fallback answers (over TCP after a truncated UDP
/// answer): the feed connects and the `[DNS]` lines show the path taken, in order.
#[tokio::test]
async fn dns_system_and_first_fallback_fail_second_fallback_answers() {
    bounded(async {
        let w = World::new("dns-chain").await;
        w.system.set_default(Behavior::ServFail);
        w.fb1().set_default(Behavior::Drop);
        w.fb2().set_default(Behavior::Truncate(vec![LOCALHOST]));
        let app = App::start(&w.config(&Knobs::default()));
        wait_subscribed(&app, 0).await;
        let connected = app
            .expect_from(
                0,
                "feed connected",
                |l| l.contains("[RECONNECT] event=connected host=stream.test"),
                Duration::from_secs(1),
            )
            .await;
        assert!(connected.text.contains("addr=127.0.0.1:"), "{}", connected.text);
        let (sys, fb1, fb2) = (w.system.addr.to_string(), w.fb1().addr.to_string(), w.fb2().addr.to_string());
        let dns = |pred: &dyn Fn(&str) -> bool| {
            app.find_from(0, |l| l.contains("[DNS]") && l.contains("host=stream.test") && pred(l))
        };
        let a = dns(&|l| {
            l.contains("resolver=system")
                && l.contains(&format!("server={sys}"))
                && l.contains("result=error")
        });
        let b = dns(&|l| {
            l.contains("resolver=fallback")
                && l.contains(&format!("server={fb1}"))
                && l.contains("result=error")
        });
        let c = dns(&|l| {
            l.contains("resolver=fallback")
                && l.contains(&format!("server={fb2}"))
                && l.contains("result=ok addrs=127.0.0.1")
        });
        let (Some(a), Some(b), Some(c)) = (a, b, c) else {
            panic!("DNS path system error → fallback 1 error → fallback 2 ok not logged:\n{}", app.tail());
        };
        assert!(a.idx < b.idx && b.idx < c.idx, "path in order:\n{}\n{}\n{}", a.text, b.text, c.text);
        for l in [&a, &b, &c] {
            assert!(field(&l.text, "time_ms").is_some(), "time taken logged: {}", l.text);
        }
        // The dead first fallback cost about one dns.timeout_s (0.3 s), not more.
        let t: u64 = field(&b.text, "time_ms").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        assert!(t <= 800, "a dead resolver is bounded by dns.timeout_s: {}", b.text);
        // Truncated over UDP, answered over TCP.
        let q = w.fb2().queries();
        assert!(q.iter().any(|(n, t)| n == "stream.test" && *t == Transport::Udp), "{q:?}");
        assert!(
            q.iter().any(|(n, t)| n == "stream.test" && *t == Transport::Tcp),
            "TCP on truncation: {q:?}"
        );
        // The REST host and the feed host were both resolved at start-up.
        assert!(
            app.find_from(0, |l| l.contains("[DNS]")
                && l.contains("host=api.test")
                && l.contains("result=ok"))
                .is_some(),
            "{}",
            app.tail()
        );
        // And the feed carries prices: a quote through the stop closes the position.
        w.book_ticker("BOSCHLTD", "690.00", "690.50");
        let sl = app.expect_from(0, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(3)).await;
        assert!(sl.text.contains("price=690.00 source=live"), "{}", sl.text);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- 2. DNS outage after start-up ------------------------------------------------------

/// Issue 4, must-show 2: every resolver fails after start-up. The feed reconnects after a TCP
/// reset, and the REST poller polls while the WebSocket host refuses, both through the
/// addresses resolved before the outage (`dns=cached(..)` / `dns=last_good(..)`, and
/// `[DNS] resolver=last_good` on the health check of every third attempt).
#[tokio::test]
async fn dns_outage_after_start_reconnects_and_polls_through_last_good_addresses() {
    bounded(async {
        let w = World::new("dns-outage").await;
        let app = App::start(&w.config(&Knobs::default()));
        let mut from = wait_subscribed(&app, 0).await;
        w.book_ticker("BOSCHLTD", "730.00", "730.50");

        // DNS dies everywhere; the live connection is reset; new ones are refused for now.
        w.dns_all(Behavior::ServFail);
        for s in w.servers() {
            s.clear_queries();
        }
        let rest_before = w.rest.requests().len();
        w.ws.set_fault(Fault::Refuse);
        w.ws.apply_now(Fault::Reset);
        let lost = app
            .expect_from(
                from,
                "reconnect after the reset",
                |l| l.contains("[RECONNECT] attempt=1 "),
                Duration::from_secs(5),
            )
            .await;
        from = lost.idx;
        // REST polls while the WebSocket refuses: through the address resolved at start-up.
        assert!(
            w.rest.wait_for(|r| r.requests().len() >= rest_before + 2, Duration::from_secs(5)).await,
            "REST polled during the outage:\n{}",
            app.tail()
        );
        // The health check of the third attempt asks every resolver, which all fail, and falls
        // back to the last-good address at once.
        let lg = app
            .expect_rest_through_last_good(
                from,
                "BOSCHLTD",
                ("api.test", "stream.test"),
                Duration::from_secs(3),
                Duration::from_secs(8),
            )
            .await;
        assert!(lg.text.contains("result=ok addrs=127.0.0.1"), "{}", lg.text);
        assert!(field(&lg.text, "age_ms").is_some(), "{}", lg.text);
        assert!(
            w.system.queries().iter().any(|(n, _)| n == "stream.test")
                && w.fb1().queries().iter().any(|(n, _)| n == "stream.test")
                && w.fb2().queries().iter().any(|(n, _)| n == "stream.test"),
            "the health check asked every resolver"
        );
        // The WebSocket host is back (DNS still dead): the feed reconnects through a remembered
        // address and subscribes everything again.
        w.ws.set_fault(Fault::None);
        let connected = app
            .expect_from(
                lg.idx,
                "reconnected",
                |l| l.contains("[RECONNECT] event=connected host=stream.test"),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            connected.text.contains("dns=cached(") || connected.text.contains("dns=last_good("),
            "connected through a remembered address: {}",
            connected.text
        );
        wait_subscribed(&app, connected.idx).await;
        assert_full_resubscription(&w.ws);
        // Once live again the poller stops.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let n = w.rest.requests().len();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(w.rest.requests().len() <= n + 1, "REST stops once the feed is live");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- 3. connection faults --------------------------------------------------------------

/// Injects `fault` into the live connection and into new ones until three reconnects are
/// logged, then heals the server; checks the jittered, growing delays and the full
/// resubscription. Returns the app (still running) and the index of the fault's first line.
async fn fault_cycle(name: &str, fault: Fault, cause: &str) -> (World, App, Vec<Line>) {
    let w = World::new(name).await;
    let app = App::start(&w.config(&Knobs::default()));
    let from = wait_subscribed(&app, 0).await;
    let injected = app.len();
    w.ws.set_fault(fault.clone());
    w.ws.apply_now(fault);
    let third = app
        .expect_from(
            injected,
            "third reconnect",
            |l| l.contains("[RECONNECT] attempt=3 "),
            Duration::from_secs(10),
        )
        .await;
    w.ws.set_fault(Fault::None);
    let back = app
        .expect_from(
            third.idx,
            "subscribed again",
            |l| l.contains("[RECONNECT] event=subscribed"),
            Duration::from_secs(6),
        )
        .await;
    let lines = app.all_from(from, |l| l.contains("[RECONNECT]"));
    let seq = reconnects(&lines);
    let upto: Vec<(u32, u64, String)> =
        reconnects(&app.all_from(injected, |_| true)).into_iter().take_while(|(a, _, _)| *a <= 3).collect();
    assert_backoff(&upto, &app.tail());
    for (_, _, c) in &upto {
        assert!(
            c.contains(cause) || c.contains("TLS") || c.contains("socket"),
            "cause {c:?} should mention {cause:?}"
        );
    }
    assert!(upto.iter().any(|(_, _, c)| c.contains(cause)), "a cause mentions {cause:?}: {seq:?}");
    assert!(back.idx > third.idx);
    assert_full_resubscription(&w.ws);
    (w, app, lines)
}

/// All delays of the four fault tests together are jittered: not every delay is its base.
fn assert_jittered(seq: &[(u32, u64, String)]) {
    assert!(
        seq.iter().any(|(a, d, _)| (*d as f64 - base_ms(*a)).abs() > 2.0),
        "delays are jittered, not the bare exponential: {seq:?}"
    );
}

/// Issue 4, must-show 3: a TCP reset mid-stream (and resets of every new connection).
#[tokio::test]
async fn tcp_reset_mid_stream_reconnects_with_backoff_and_resubscribes() {
    bounded(async {
        let (_w, app, lines) = fault_cycle("fault-reset", Fault::Reset, "reset").await;
        assert_jittered(&reconnects(&lines));
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Issue 4, must-show 3: TLS failure — garbage under TLS on the live connection, then a
/// certificate from an unknown issuer on every new one.
#[tokio::test]
async fn tls_handshake_failure_reconnects_with_backoff_and_resubscribes() {
    bounded(async {
        let (_w, app, lines) =
            fault_cycle("fault-tls", Fault::TlsFail, "TLS handshake with stream.test failed").await;
        assert!(
            lines.iter().any(|l| l.text.contains("certificate") || l.text.contains("UnknownIssuer")),
            "the certificate problem is named"
        );
        assert_jittered(&reconnects(&lines));
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Issue 4, must-show 3: the server closes with an error frame (1008, as Binance does when the
/// message budget is exceeded).
#[tokio::test]
async fn close_with_error_frame_reconnects_with_backoff_and_resubscribes() {
    bounded(async {
        let (_w, app, lines) = fault_cycle(
            "fault-close",
            Fault::CloseWithError(1008, "Too many requests".into()),
            "closed by server (code 1008)",
        )
        .await;
        assert_jittered(&reconnects(&lines));
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Issue 4, must-show 3: a server that accepts and then never sends nor answers pings. The
/// session's own pings go unanswered and the silence is declared within
/// `silence_timeout_s + 1 s` of the server going quiet.
#[tokio::test]
async fn silent_server_is_detected_within_the_silence_timeout() {
    bounded(async {
        let w = World::new("fault-silent").await;
        let app = App::start(&w.config(&Knobs::default()));
        let from = wait_subscribed(&app, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pings_before = w.ws.pings_received();
        let quiet_at = Instant::now();
        w.ws.set_fault(Fault::Silent);
        w.ws.apply_now(Fault::Silent);
        let lost = app
            .expect_from(
                from,
                "silence declared",
                |l| l.contains("[RECONNECT] attempt=1 ") && l.contains("silent for"),
                Duration::from_secs(4),
            )
            .await;
        let took = lost.at.saturating_duration_since(quiet_at);
        assert!(
            took <= Duration::from_secs(2),
            "silence detected after {took:?} (> silence_timeout_s + 1 s): {}",
            lost.text
        );
        assert!(w.ws.pings_received() > pings_before, "the session pinged the quiet server");
        // New connections are silent too: each is caught, with growing delays.
        let third = app
            .expect_from(
                lost.idx,
                "third reconnect",
                |l| l.contains("[RECONNECT] attempt=3 "),
                Duration::from_secs(10),
            )
            .await;
        w.ws.set_fault(Fault::None);
        app.expect_from(
            third.idx,
            "subscribed again",
            |l| l.contains("[RECONNECT] event=subscribed"),
            Duration::from_secs(6),
        )
        .await;
        let seq: Vec<(u32, u64, String)> = reconnects(&app.all_from(lost.idx, |_| true))
            .into_iter()
            .take_while(|(a, _, _)| *a <= 3)
            .collect();
        assert_backoff(&seq, &app.tail());
        assert!(seq.iter().all(|(_, _, c)| c.contains("silent for")), "{seq:?}");
        // Every silent connection had subscribed everything; so has the healthy one.
        assert!(w.ws.subscriptions().len() >= 4, "{:?}", w.ws.subscriptions());
        assert_full_resubscription(&w.ws);
        assert_jittered(&seq);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- 4. the seed incident --------------------------------------------------------------

/// Kills the market-data path the way the seed incident did: every resolver fails, the
/// WebSocket host refuses (the live connection is closed), and optionally REST is down too.
fn network_dies(w: &World, rest_too: bool) {
    w.dns_all(Behavior::ServFail);
    w.feed_dies();
    if rest_too {
        w.rest.set_fault(RestFault::Refuse);
    }
}

/// Issue 4, must-show 4a: the feed dies with DNS and the price falls through the long's stop.
/// The close comes from a REST price (`source=rest`, 575.00) fetched through the address
/// remembered from before the outage, within one poll interval of the REST answer.
#[tokio::test]
async fn seed_incident_rest_price_through_last_good_address_closes_the_long() {
    bounded(async {
        let w = World::new("seed-rest").await;
        let app = App::start(&w.config(&Knobs::default()));
        wait_subscribed(&app, 0).await;
        w.book_ticker("BOSCHLTD", "730.00", "730.50");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cut = app.len();
        network_dies(&w, false);
        // The REST fallback takes over at 730 (no decision) through a remembered address, and
        // DNS is really gone: the feed's health check falls back to the last-good address.
        app.expect_rest_through_last_good(
            cut,
            "BOSCHLTD",
            ("api.test", "stream.test"),
            Duration::from_secs(3),
            Duration::from_secs(6),
        )
        .await;
        assert!(app.find_from(cut, |l| l.contains("[SL]")).is_none(), "no close at 730:\n{}", app.tail());

        // The price gaps to 575.00. The first poll answered after this carries it.
        let n = w.rest.requests().len();
        w.rest.set_price("BOSCHLTD", "575.00");
        assert!(
            w.rest.wait_for(|r| r.requests().len() > n, Duration::from_secs(2)).await,
            "REST still polled"
        );
        let answered = Instant::now();
        let sl = app.expect_from(cut, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(2)).await;
        assert!(
            sl.text.contains("[SL] id=bosch symbol=BOSCHLTD price=575.00 source=rest ")
                && sl.text.contains(" level=698.25 side=long qty=10"),
            "the decision names the REST price: {}",
            sl.text
        );
        let age: u64 = field(&sl.text, "age_ms").and_then(|v| v.parse().ok()).expect("age_ms");
        assert!(age < 300, "a REST price is dated at its send time: {}", sl.text);
        let lag = sl.at.saturating_duration_since(answered);
        assert!(
            lag <= Duration::from_millis(300),
            "decision {lag:?} after the REST answer (> one poll interval)"
        );
        let send = app
            .expect_from(
                sl.idx,
                "[CLOSE] send",
                |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=send"),
                Duration::from_secs(1),
            )
            .await;
        assert!(send.text.contains("order_side=sell qty=10 reason=stop_loss"), "{}", send.text);
        let closed = app
            .expect_from(
                sl.idx,
                "[CLOSE] closed",
                |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=closed"),
                Duration::from_secs(2),
            )
            .await;
        assert!(closed.text.contains("how=filled qty=10 exit=575.00"), "{}", closed.text);
        assert!(closed.text.contains("reason=stop_loss"), "{}", closed.text);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Log lines of the in-process run (4b), from the crate's own targets.
struct Capture(Log);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info && m.target().starts_with("tickguard")
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.push(format!("{:<5} {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

/// Issue 4, must-show 4b: REST is down too, and the trader tightens the stop above the cached
/// price: the close comes from the cache (`source=cache`) with the price's age.
///
/// The HTTP API that moves a stop belongs to issue 6 and is not in this build, so this case
/// runs the binary's own wiring in-process (`run_config_with`) and moves the stop through the
/// engine handle with the command that API sends (`Command::Modify`).
#[tokio::test]
async fn seed_incident_tightened_stop_closes_from_the_cache_when_rest_is_down_too() {
    use tickguard::core::engine::{Command, Reply};
    use tickguard::core::price::Price;
    use tickguard::core::types::{PositionId, PriceSource};

    bounded(async {
        let log = Log::default();
        let _ = log::set_boxed_logger(Box::new(Capture(log.clone())));
        log::set_max_level(log::LevelFilter::Info);
        let w = World::new("seed-cache").await;
        let cfg =
            tickguard::config::load(Some(&w.config(&Knobs::default())), std::iter::empty()).expect("config");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let app = tokio::spawn(tickguard::runtime::app::run_config_with(cfg, stop_rx, Some(ready_tx)));
        let handle = ready_rx.await.expect("engine handle");
        wait_subscribed(&log, 0).await;
        w.book_ticker("BOSCHLTD", "730.00", "730.50");
        let cached = |h: tickguard::runtime::EngineHandle| async move {
            h.inspect(|e, _| {
                e.cache()
                    .lookup("BOSCHLTD")
                    .and_then(|id| e.cache().quote(id))
                    .and_then(|q| q.bid)
                    .map(|b| b.to_string())
            })
            .await
            .flatten()
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        while cached(handle.clone()).await.as_deref() != Some("730.00") {
            assert!(Instant::now() < deadline, "the live price reached the engine");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let priced_at = Instant::now();
        let cut = log.len();
        network_dies(&w, true);
        // Feed gone, REST failing: the instrument falls to the cache rung.
        log.expect_from(
            cut,
            "[FALLBACK] to cache",
            |l| l.contains("[FALLBACK] symbol=BOSCHLTD") && l.contains("to=cache"),
            Duration::from_secs(5),
        )
        .await;
        assert!(log.find_from(cut, |l| l.contains("[SL]")).is_none(), "730 is above the stop");

        // The trader tightens the stop to 740.00, above the cached 730.00.
        let stop = Price::parse("740.00").expect("price");
        let id = PositionId::try_from("bosch").expect("id");
        let moved_at = Instant::now();
        let r = handle.command(Command::Modify { id, stop_loss: Some(Some(stop)), take_profit: None }).await;
        assert!(matches!(r, Ok(Reply::Done { .. })), "{r:?}");
        let d = handle
            .inspect(|e, _| e.book().find("bosch").and_then(|i| e.book().get(i)).and_then(|p| p.decision))
            .await
            .flatten()
            .expect("a close decision");
        assert_eq!(d.source, PriceSource::Cache, "{d:?}");
        assert_eq!(d.price.map(|p| p.to_string()).as_deref(), Some("730.00"));
        assert_eq!(d.level, Some(stop));
        let (lo, hi) = (
            moved_at.saturating_duration_since(priced_at),
            Instant::now().saturating_duration_since(priced_at),
        );
        assert!(
            d.age + Duration::from_millis(50) >= lo && d.age <= hi + Duration::from_millis(50),
            "age {:?} is the cached price's ({lo:?}..{hi:?})",
            d.age
        );
        let sl = log.expect_from(cut, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(1)).await;
        assert!(sl.text.contains("price=730.00 source=cache age_ms="), "{}", sl.text);
        assert!(sl.text.contains(" level=740.00 side=long qty=10"), "{}", sl.text);
        let age_ms: u128 = field(&sl.text, "age_ms").and_then(|v| v.parse().ok()).expect("age_ms");
        assert_eq!(age_ms, d.age.as_millis(), "{}", sl.text);
        let closed = log
            .expect_from(
                sl.idx,
                "[CLOSE] closed",
                |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=closed"),
                Duration::from_secs(2),
            )
            .await;
        assert!(closed.text.contains("how=filled qty=10 exit=730.00"), "{}", closed.text);
        assert!(log.find_from(cut, |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=send")).is_some());
        let _ = stop_tx.send(true);
        let code = tokio::time::timeout(Duration::from_secs(5), app).await.expect("stops").expect("joins");
        assert_eq!(code, std::process::ExitCode::SUCCESS);
    })
    .await;
}

/// `PATCH /api/v1/positions/{id}` on the binary's API (issue 6) with the bearer token; returns
/// the status code and the body.
async fn patch_position(port: u16, id: &str, body: &str) -> (u16, String) {
    api_text(port, "PATCH", &format!("/api/v1/positions/{id}"), body).await.expect("API listening")
}

/// Issue 4, must-show 4b through the binary's own API: REST is down too and the trader
/// tightens the stop with `PATCH /api/v1/positions/bosch` above the cached price; the close
/// comes from the cache (`source=cache`, with the price's age).
#[tokio::test]
async fn seed_incident_tightened_stop_over_the_api_closes_from_the_cache() {
    bounded(async {
        let w = World::new("seed-cache-api").await;
        let app = App::start(&w.config(&Knobs::default()));
        wait_subscribed(&app, 0).await;
        let priced = Instant::now();
        w.book_ticker("BOSCHLTD", "730.00", "730.50");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cut = app.len();
        network_dies(&w, true);
        app.expect_from(
            cut,
            "[FALLBACK] to cache",
            |l| l.contains("[FALLBACK] symbol=BOSCHLTD") && l.contains("to=cache"),
            Duration::from_secs(5),
        )
        .await;
        let moved = Instant::now();
        let (status, body) = patch_position(w.api_port.get(), "bosch", r#"{"stop_loss":"740.00"}"#).await;
        assert!((200..300).contains(&status), "PATCH answered {status}: {body}\n{}", app.tail());
        let sl = app.expect_from(cut, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(2)).await;
        assert!(sl.text.contains("price=730.00 source=cache age_ms="), "{}", sl.text);
        assert!(sl.text.contains(" level=740.00 side=long qty=10"), "{}", sl.text);
        let age: u128 = field(&sl.text, "age_ms").and_then(|v| v.parse().ok()).expect("age_ms");
        let (lo, hi) = (moved.saturating_duration_since(priced), sl.at.saturating_duration_since(priced));
        assert!(
            age + 50 >= lo.as_millis() && age <= hi.as_millis() + 50,
            "age_ms={age} is the cached price's age ({lo:?}..{hi:?})"
        );
        let closed = app
            .expect_from(
                sl.idx,
                "[CLOSE] closed",
                |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=closed"),
                Duration::from_secs(2),
            )
            .await;
        assert!(closed.text.contains("how=filled qty=10 exit=730.00"), "{}", closed.text);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Issue 4, must-show 4c: nothing answers past `cache.expire_after_s`: the positions go blind
/// and, after `cache.blind_grace_s`, their policies act — `flatten` sends a close, `alert`
/// only alerts.
#[tokio::test]
async fn seed_incident_nothing_answers_blind_policy_acts_after_grace() {
    bounded(async {
        let w = World::new("seed-blind").await;
        let knobs = Knobs {
            stale_after: 1.0,
            expire_after: 2.0,
            blind_grace: 1.0,
            extra: r#"
[[positions]]
id = "adani"
symbol = "ADANIENT"
side = "long"
qty = 4
entry = "100.00"
stop_loss = "90.00"
blind_policy = "alert"
"#
            .into(),
        };
        let cfg = w.config(&knobs);
        let text = std::fs::read_to_string(&cfg)
            .expect("config")
            .replace("take_profit = \"800.00\"\n", "take_profit = \"800.00\"\nblind_policy = \"flatten\"\n");
        std::fs::write(&cfg, text).expect("config");
        let app = App::start(&cfg);
        let from = wait_subscribed(&app, 0).await;
        let priced = Instant::now();
        w.book_ticker("BOSCHLTD", "730.00", "730.50");
        w.book_ticker("ADANIENT", "100.00", "100.10");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cut = app.len().max(from);
        network_dies(&w, true);
        let expired = app
            .expect_from(
                cut,
                "[CACHE] expired",
                |l| l.contains("[CACHE] symbol=BOSCHLTD band=expired"),
                Duration::from_secs(6),
            )
            .await;
        let blind = app
            .expect_from(
                cut,
                "[BLIND] blind",
                |l| l.contains("[BLIND] id=bosch symbol=BOSCHLTD state=blind"),
                Duration::from_secs(6),
            )
            .await;
        assert!(blind.text.contains("policy=flatten grace_ms=1000"), "{}", blind.text);
        // The price is dated when it is received, after `priced`: blind only past expire_after.
        assert!(
            blind.at.saturating_duration_since(priced) >= Duration::from_millis(1980),
            "blind only past expire_after"
        );
        assert!(expired.idx <= blind.idx + 2);
        let acting = app
            .expect_from(
                blind.idx,
                "[BLIND] acting",
                |l| l.contains("[BLIND] id=bosch symbol=BOSCHLTD state=acting"),
                Duration::from_secs(4),
            )
            .await;
        assert!(acting.text.contains("policy=flatten"), "{}", acting.text);
        let waited = acting.at.saturating_duration_since(blind.at);
        assert!(
            waited >= Duration::from_millis(900) && waited <= Duration::from_millis(2100),
            "the policy acts after blind_grace_s (1 s), took {waited:?}"
        );
        let blind_ms: u64 = field(&acting.text, "blind_ms").and_then(|v| v.parse().ok()).expect("blind_ms");
        assert!(blind_ms >= 1000, "{}", acting.text);
        let decision = app
            .expect_from(
                acting.idx,
                "flatten decision",
                |l| l.contains("action=flatten") && l.contains("id=bosch"),
                Duration::from_secs(1),
            )
            .await;
        assert!(decision.text.contains("price=none source=none"), "{}", decision.text);
        let send = app
            .expect_from(
                acting.idx,
                "[CLOSE] send",
                |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=send"),
                Duration::from_secs(1),
            )
            .await;
        assert!(send.text.contains("reason=blind"), "{}", send.text);
        // The alert-only position alerts and is left open.
        let alert = app
            .expect_from(
                cut,
                "[BLIND] acting alert",
                |l| l.contains("[BLIND] id=adani symbol=ADANIENT state=acting"),
                Duration::from_secs(3),
            )
            .await;
        assert!(alert.text.contains("policy=alert"), "{}", alert.text);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            app.find_from(0, |l| l.contains("[CLOSE] id=adani")).is_none(),
            "alert never closes:\n{}",
            app.tail()
        );
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- 5. hostile frames -----------------------------------------------------------------

/// Issue 4, must-show 5: malformed, truncated, deeply nested, oversized and binary frames never
/// crash the session. Each kind is counted and logged once; an oversized frame costs the
/// connection (limits are the venue's), which is reopened and resubscribed; prices flow
/// afterwards and the binary still exits cleanly.
#[tokio::test]
async fn malformed_truncated_oversized_and_binary_frames_never_crash_the_session() {
    bounded(async {
        let w = World::new("frames").await;
        let app = App::start(&w.config(&Knobs::default()));
        let from = wait_subscribed(&app, 0).await;
        let deep = format!("{{\"data\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        let frames = [
            "not json at all".to_string(),
            r#"{"stream":"boschltd@bookTicker","data":{"u":1,"s":"BOSCHLTD","b":"690.0"#.to_string(),
            r#"{"stream":"boschltd@bookTicker","data":{"u":1,"s":"BOSCHLTD","b":"abc","a":"1"}}"#.to_string(),
            r#"{"stream":"boschltd@bookTicker","data":{"u":1,"b":"690.00","a":"690.50"}}"#.to_string(),
            deep,
            "\u{0}\u{1}\u{2}".to_string(),
            String::new(),
            r#"{"stream":"x@depth","data":{"e":"depthUpdate","s":"BOSCHLTD","U":1,"b":[["1","2"]]}}"#
                .to_string(),
            r#"{"stream":"nope@bookTicker","data":{"u":1,"s":"NOPE","b":"1.00","a":"1.10"}}"#.to_string(),
        ];
        for f in &frames {
            w.ws.push(f);
            w.ws.push(f);
        }
        w.ws.push_raw(tungstenite::Message::Binary(bytes::Bytes::from_static(b"\x00\xff binary \x80")));
        for kind in ["syntax", "truncated", "bad_price", "missing_symbol", "too_deep", "binary"] {
            let l = app
                .expect_from(
                    from,
                    kind,
                    |l| {
                        l.contains("[RECONNECT] event=malformed_frame")
                            && l.contains(&format!("kind={kind} "))
                    },
                    Duration::from_secs(3),
                )
                .await;
            assert!(app.all_from(from, |x| x == l.text.as_str()).len() == 1, "logged once per kind");
        }
        // Still the same connection, still decoding.
        assert_eq!(w.ws.handshakes(), 1);
        assert!(app.find_from(from, |l| l.contains("[RECONNECT] attempt=")).is_none(), "{}", app.tail());
        // A frame over the 64 KiB limit: the connection goes, a new one subscribes everything.
        let big = format!(r#"{{"stream":"boschltd@bookTicker","data":{{"pad":"{}"}}}}"#, "x".repeat(70_000));
        w.ws.push(&big);
        let lost = app
            .expect_from(
                from,
                "oversized frame",
                |l| l.contains("[RECONNECT] attempt=1 ") && l.contains("exceeds the limit"),
                Duration::from_secs(3),
            )
            .await;
        wait_subscribed(&app, lost.idx).await;
        assert_full_resubscription(&w.ws);
        // Prices flow on the new connection: a quote through the stop closes the position.
        w.book_ticker("BOSCHLTD", "690.00", "690.50");
        let sl =
            app.expect_from(lost.idx, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(3)).await;
        assert!(sl.text.contains("price=690.00 source=live"), "{}", sl.text);
        app.expect_from(
            sl.idx,
            "closed",
            |l| l.contains("[CLOSE] id=bosch symbol=BOSCHLTD event=closed how=filled"),
            Duration::from_secs(2),
        )
        .await;
        let log = app.log.clone();
        assert_eq!(app.stop().await, Some(0));
        let app = log;
        let stats = app.find_from(0, |l| l.contains(" stats ")).expect("stats line at shutdown");
        let malformed: u64 =
            field(&stats.text, "feed_malformed").and_then(|v| v.parse().ok()).expect("feed_malformed");
        assert!(malformed >= 12, "{}", stats.text);
        let unknown: u64 =
            field(&stats.text, "feed_unknown_symbols").and_then(|v| v.parse().ok()).expect("unknown");
        assert_eq!(unknown, 2, "{}", stats.text);
        assert!(app.find_from(0, |l| l.contains("panicked")).is_none());
    })
    .await;
}

// ----- rotation --------------------------------------------------------------------------

/// `serverShutdown` (issue 4, "What to build"): the session opens and subscribes the next
/// connection before closing the old one, so the feed never leaves the live rung.
#[tokio::test]
async fn server_shutdown_rotates_without_a_gap() {
    bounded(async {
        let w = World::new("rotate").await;
        let app = App::start(&w.config(&Knobs::default()));
        let from = wait_subscribed(&app, 0).await;
        w.book_ticker("BOSCHLTD", "730.00", "730.50");
        tokio::time::sleep(Duration::from_millis(100)).await;
        w.ws.server_shutdown();
        let rotating = app
            .expect_from(
                from,
                "rotating",
                |l| l.contains("[RECONNECT] event=rotating cause=serverShutdown"),
                Duration::from_secs(3),
            )
            .await;
        let rotated = app
            .expect_from(
                rotating.idx,
                "rotated",
                |l| l.contains("[RECONNECT] event=rotated"),
                Duration::from_secs(5),
            )
            .await;
        assert!(
            app.find_from(rotating.idx, |l| l.contains("[RECONNECT] event=subscribed"))
                .is_some_and(|s| s.idx < rotated.idx),
            "the next connection is subscribed before the old one closes:\n{}",
            app.tail()
        );
        assert!(
            w.ws.wait_for(|s| s.live() == 1, Duration::from_secs(2)).await,
            "the old connection is closed"
        );
        assert_eq!(w.ws.handshakes(), 2);
        assert_full_resubscription(&w.ws);
        assert!(
            app.find_from(from, |l| l.contains("[RECONNECT] attempt=")).is_none(),
            "no reconnect:\n{}",
            app.tail()
        );
        assert!(
            app.find_from(from, |l| l.contains("[FALLBACK] symbol=BOSCHLTD from=live")).is_none(),
            "no gap:\n{}",
            app.tail()
        );
        w.book_ticker("BOSCHLTD", "690.00", "690.50");
        let sl = app
            .expect_from(rotated.idx, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(3))
            .await;
        assert!(sl.text.contains("price=690.00 source=live"), "{}", sl.text);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}
