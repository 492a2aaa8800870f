//! The Upstox edge end to end (issue 8): the real `tickguard run` binary against the fake
//! Upstox of `tests/support/upstox_feed.rs` (feed authorize, LTP quote, Market Data Feed V3 over
//! TLS with protobuf frames) and loopback DNS servers, all on 127.0.0.1 with a throw-away CA.
//! Host names (`api.upstox.test`, `feed.upstox.test`) are known only to the test DNS servers,
//! so every address the binary uses went through its own resolver chain.
//!
//! The binary's stderr is read on a thread; the tests wait for log lines (docs/logs.md).
//! `TICKGUARD_FAKE_WALL_CLOCK` sets the wall time the market calendar reads (16:00 or 10:00
//! IST, or the seed incident's 11:24 IST). Every test is bounded (`LIMIT`) and stops the binary
//! it started (SIGTERM, then kill on drop).

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::app::{App, field};
use support::dns::Behavior;
use support::edge_world::{LOCALHOST, wait_subscribed};
use support::guard::free_port;
use support::upstox_feed::{FeedFault, TOKEN, status};
use support::upstox_world::{ADANI_KEY, BOSCH_KEY, KAYNES_KEY, UpstoxSetup, UpstoxWorld};

const LIMIT: Duration = Duration::from_secs(45);
/// The seed incident's positions: BOSCHLTD long 10 at 735.00 with its stop at 698.25, and
/// ADANIENT long 4 at 2300.00 with a take-profit at 2400.00.
const POSITIONS: &str = r#"
[[positions]]
id = "bosch"
symbol = "BOSCHLTD"
side = "long"
qty = 10
entry = "735.00"
stop_loss = "698.25"

[[positions]]
id = "adani"
symbol = "ADANIENT"
side = "long"
qty = 4
entry = "2300.00"
stop_loss = "2200.00"
take_profit = "2400.00"
"#;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

// ----- the loopback world: `support::upstox_world` -----------------------------------------

struct Knobs {
    stale_after: f64,
    market_hours: &'static str,
    extra_feed: String,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            stale_after: 5.0,
            market_hours: "09:15-15:30 Asia/Kolkata Mon-Fri",
            extra_feed: String::new(),
        }
    }
}

/// The world of one test, with both segments open on every feed connection.
async fn world(name: &str) -> UpstoxWorld {
    UpstoxWorld::start(name, &[("NSE_EQ", status::NORMAL_OPEN), ("NSE_FO", status::NORMAL_OPEN)]).await
}

/// The paper broker, the seed incident's positions, an API on a free port (no token).
fn config(w: &UpstoxWorld, k: &Knobs) -> PathBuf {
    w.config(&UpstoxSetup {
        api_port: free_port(),
        api_token: false,
        market_hours: k.market_hours,
        extra_feed: &k.extra_feed,
        stale_after_s: k.stale_after,
        broker: "kind = \"paper\"\npaper_fill_delay_s = 0.05",
        positions: POSITIONS,
    })
}

// The binary and its log: `support::app`.

/// `tickguard run` with the wall clock faked (market hours are judged on it).
fn start_app(config: &Path, wall_clock: &str) -> App {
    App::start_with_env(config, &[("TICKGUARD_FAKE_WALL_CLOCK", wall_clock)], "UPSTOX_EDGE_ECHO")
}

/// A market open/closed line of the calendar task.
fn market_line(l: &str) -> bool {
    l.contains("[MARKET] event=open ") || l.contains("[MARKET] event=closed ")
}

const ALL_KEYS: [&str; 3] = [BOSCH_KEY, ADANI_KEY, KAYNES_KEY];

fn subscribed_all(c: &support::upstox_feed::FeedConn) -> bool {
    ALL_KEYS.iter().all(|k| c.subscribed.contains_key(*k))
}

// ----- the seed incident, Upstox edition -------------------------------------------------

/// At 11:24:16 IST the WebSocket dies and DNS fails. The LTP quote, reached through the
/// address remembered from before, shows BOSCHLTD at 575.00: the long is closed on that REST
/// price (`[SL] ... price=575.00 source=rest`) with exactly one close order, ADANIENT's
/// take-profit (crossed during the outage too) closes, and when the feed returns it uses a
/// fresh authorize URL and subscribes every instrument again, on one connection at a time.
#[tokio::test]
async fn seed_incident_upstox_edition() {
    bounded(async {
        let w = world("upstox-seed").await;
        let app = start_app(&config(&w, &Knobs::default()), "2026-01-07T11:23:40+05:30");
        let from = wait_subscribed(&app, 0).await;
        app.expect_from(0, "[MARKET] open", |l| l.contains("[MARKET] event=open"), Duration::from_secs(3))
            .await;
        assert!(
            w.up.wait_for(|u| u.conns().last().is_some_and(subscribed_all), Duration::from_secs(3)).await
        );
        w.up.tick(BOSCH_KEY, 730.0);
        w.up.tick(ADANI_KEY, 2350.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(app.find_from(0, |l| l.contains("[SL]") || l.contains("[TP]")).is_none(), "{}", app.tail());

        // 11:24:16: the feed dies, and DNS with it (every resolver fails).
        let cut = app.len().max(from);
        let codes_before = w.up.issued_codes().len();
        let conns_before = w.up.conns().len();
        w.dns_all(Behavior::ServFail);
        w.up.set_feed_fault(FeedFault::Refuse);
        w.up.apply_now(FeedFault::Refuse);
        // REST takes over through a remembered address; DNS is really gone: the health check
        // on the third attempt falls back to last-good.
        app.expect_rest_through_last_good(
            cut,
            "BOSCHLTD",
            ("api.upstox.test", "api.upstox.test"),
            Duration::from_secs(4),
            Duration::from_secs(8),
        )
        .await;
        assert!(app.find_from(cut, |l| l.contains("[SL]")).is_none(), "no close at 730:\n{}", app.tail());

        // The prices gap: BOSCHLTD to 575.00 through its stop, ADANIENT through its target.
        let n = w.up.api_requests().iter().filter(|r| r.contains("/v3/market-quote/ltp")).count();
        w.up.set_price(BOSCH_KEY, "BOSCHLTD", 575.0);
        w.up.set_price(ADANI_KEY, "ADANIENT", 2412.5);
        let sl = app.expect_from(cut, "[SL]", |l| l.contains("[SL] id=bosch"), Duration::from_secs(3)).await;
        assert!(
            sl.text.contains("[SL] id=bosch symbol=BOSCHLTD price=575.00 source=rest ")
                && sl.text.contains(" level=698.25 side=long qty=10"),
            "the decision names the REST price: {}",
            sl.text
        );
        let age: u64 = field(&sl.text, "age_ms").and_then(|v| v.parse().ok()).expect("age_ms");
        assert!(age < 1000, "a REST price is dated at its send time: {}", sl.text);
        assert!(
            w.up.api_requests().iter().filter(|r| r.contains("/v3/market-quote/ltp")).count() > n,
            "the price came from an LTP quote"
        );
        let ltp_req =
            w.up.api_requests().into_iter().rfind(|r| r.contains("/v3/market-quote/ltp")).expect("ltp");
        assert!(ltp_req.contains("NSE_EQ%7CINE323A01026"), "keys are sent URL-encoded: {ltp_req}");
        let tp = app.expect_from(cut, "[TP]", |l| l.contains("[TP] id=adani"), Duration::from_secs(3)).await;
        assert!(tp.text.contains("symbol=ADANIENT price=2412.50 source=rest "), "{}", tp.text);
        assert!(tp.text.contains(" level=2400.00 side=long qty=4"), "{}", tp.text);
        for id in ["bosch", "adani"] {
            let closed = app
                .expect_from(
                    cut,
                    "[CLOSE] closed",
                    |l| l.contains(&format!("[CLOSE] id={id} ")) && l.contains("event=closed"),
                    Duration::from_secs(3),
                )
                .await;
            assert!(closed.text.contains("how=filled"), "{}", closed.text);
        }
        let closed = app
            .find_from(cut, |l| l.contains("[CLOSE] id=bosch") && l.contains("event=closed"))
            .expect("closed");
        assert!(closed.text.contains("qty=10 exit=575.00"), "{}", closed.text);

        // The feed and DNS come back: a fresh authorize URL, every instrument subscribed again.
        let back = app.len();
        w.dns_all(Behavior::Answer(vec![LOCALHOST]));
        w.up.set_feed_fault(FeedFault::None);
        wait_subscribed(&app, back).await;
        assert!(
            w.up.wait_for(
                |u| u.conns().last().is_some_and(subscribed_all) && u.conns().len() > conns_before,
                Duration::from_secs(3)
            )
            .await,
            "resubscribed: {:?}",
            w.up.conns()
        );
        let conns = w.up.conns();
        let issued = w.up.issued_codes();
        let last = conns.last().expect("a connection");
        let at = issued.iter().position(|c| *c == last.code).expect("an issued code");
        assert!(at >= codes_before, "the new connection used a code issued after the outage began");
        let mut codes: Vec<&str> = conns.iter().map(|c| c.code.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), conns.len(), "every connection presented its own code");
        assert_eq!(w.up.code_rejections(), 0, "no code was ever reused");
        assert!(
            issued.len() > codes_before + 1,
            "every reconnect attempt authorized afresh: {}",
            issued.len()
        );
        assert_eq!(w.up.max_concurrent(), 1, "one connection at a time");
        assert_eq!(w.up.concurrent_rejections(), 0);
        for (method, mode, _) in &last.requests {
            assert_eq!((method.as_str(), mode.as_deref()), ("sub", Some("ltpc")));
        }

        // Exactly one close order per position reached the broker.
        let sends = app.all_from(0, |l| l.contains("[CLOSE] id=bosch") && l.contains("event=send"));
        assert_eq!(sends.len(), 1, "one close order for BOSCHLTD:\n{}", app.tail());
        assert!(sends[0].text.contains("order_side=sell qty=10 reason=stop_loss"), "{}", sends[0].text);
        let sends = app.all_from(0, |l| l.contains("[CLOSE] id=adani") && l.contains("event=send"));
        assert_eq!(sends.len(), 1, "one close order for ADANIENT");
        assert!(sends[0].text.contains("reason=take_profit"), "{}", sends[0].text);
        let log = app.log.clone();
        assert_eq!(app.stop().await, Some(0));
        let stats = log.find_from(0, |l| l.contains(" stats ")).expect("stats line");
        assert!(stats.text.contains("feed_auth_failures=0"), "{}", stats.text);
    })
    .await;
}

// ----- market hours ----------------------------------------------------------------------

/// 16:00 IST on a Wednesday, the feed connected and silent after its snapshot: the market is
/// closed by the calendar, so the price ageing past `stale_after` raises no stale alarm.
#[tokio::test]
async fn market_closed_at_1600_ist_a_silent_feed_raises_no_stale_alarm() {
    bounded(async {
        let w = world("upstox-closed").await;
        w.up.set_market_on_connect(None);
        let app = start_app(
            &config(&w, &Knobs { stale_after: 1.0, ..Knobs::default() }),
            "2026-01-07T16:00:00+05:30",
        );
        let from = wait_subscribed(&app, 0).await;
        let m = app.expect_from(0, "[MARKET]", market_line, Duration::from_secs(3)).await;
        assert!(m.text.contains("[MARKET] event=closed basis=calendar clock_synced=true"), "{}", m.text);
        // Three times stale_after of silence (pings and pongs only).
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            app.find_from(0, |l| l.contains("[CACHE]") && l.contains("band=stale")).is_none(),
            "no stale alarm while the market is closed:\n{}",
            app.tail()
        );
        assert!(
            app.find_from(from, |l| (l.contains("[FALLBACK]") && !l.contains(" to=live "))
                || l.contains("[RECONNECT] attempt="))
                .is_none(),
            "{}",
            app.tail()
        );
        assert_eq!(w.up.conns().len(), 1, "the quiet connection stayed up");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// The same silence at 10:00 IST is an alarm: the market is open.
#[tokio::test]
async fn market_open_at_1000_ist_a_silent_feed_is_a_stale_alarm() {
    bounded(async {
        let w = world("upstox-open").await;
        w.up.set_market_on_connect(None);
        let app = start_app(
            &config(&w, &Knobs { stale_after: 1.0, ..Knobs::default() }),
            "2026-01-07T10:00:00+05:30",
        );
        let from = wait_subscribed(&app, 0).await;
        let m = app.expect_from(0, "[MARKET]", market_line, Duration::from_secs(3)).await;
        assert!(m.text.contains("[MARKET] event=open basis=calendar"), "{}", m.text);
        let stale = app
            .expect_from(
                from,
                "[CACHE] stale",
                |l| l.contains("[CACHE] symbol=BOSCHLTD band=stale"),
                Duration::from_secs(4),
            )
            .await;
        assert!(stale.text.contains("stale_after_ms=1000"), "{}", stale.text);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// A clock that is not synchronized counts as market open (16:00 on an unsynced clock alarms),
/// and the venue's `market_info` overrides the calendar while connected (10:00 on an exchange
/// holiday the configuration does not list: NORMAL_CLOSE, no alarm).
#[tokio::test]
async fn unsynced_clock_counts_as_open_and_market_info_overrides_the_calendar() {
    bounded(async {
        let w = world("upstox-unsynced").await;
        w.up.set_market_on_connect(None);
        let app = start_app(
            &config(&w, &Knobs { stale_after: 1.0, ..Knobs::default() }),
            "2026-01-07T16:00:00+05:30,unsynced",
        );
        let from = wait_subscribed(&app, 0).await;
        let m = app.expect_from(0, "[MARKET]", market_line, Duration::from_secs(3)).await;
        assert!(m.text.contains("[MARKET] event=open basis=unsynced_clock clock_synced=false"), "{}", m.text);
        app.expect_from(
            from,
            "[CACHE] stale",
            |l| l.contains("[CACHE] symbol=BOSCHLTD band=stale"),
            Duration::from_secs(4),
        )
        .await;
        assert_eq!(app.stop().await, Some(0));

        let w = world("upstox-holiday").await;
        w.up.set_market_on_connect(Some(vec![
            ("NSE_EQ", status::NORMAL_CLOSE),
            ("MCX_FO", status::NORMAL_OPEN),
        ]));
        let app = start_app(
            &config(&w, &Knobs { stale_after: 1.0, ..Knobs::default() }),
            "2026-01-07T10:00:00+05:30",
        );
        wait_subscribed(&app, 0).await;
        let v = app
            .expect_from(
                0,
                "venue status",
                |l| l.contains("[MARKET] event=venue_status"),
                Duration::from_secs(3),
            )
            .await;
        assert!(
            v.text.contains("open=false segments=NSE_EQ:NORMAL_CLOSE"),
            "only our segments count: {}",
            v.text
        );
        app.expect_from(
            0,
            "[MARKET] closed by the venue",
            |l| l.contains("[MARKET] event=closed basis=venue"),
            Duration::from_secs(3),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            app.find_from(0, |l| l.contains("[CACHE]") && l.contains("band=stale")).is_none(),
            "{}",
            app.tail()
        );
        // The exchange opens after all: the venue says so, and the silence becomes an alarm.
        let open = app.len();
        w.up.market_info(&[("NSE_EQ", status::NORMAL_OPEN)]);
        app.expect_from(
            open,
            "[MARKET] open by the venue",
            |l| l.contains("[MARKET] event=open basis=venue"),
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- authorization ---------------------------------------------------------------------

/// A refused token stops the network (no authorize retries, no LTP polling) with an `[AUTH]`
/// alert; writing a good token into the file resumes without a restart. A token that expires
/// later (the server stops accepting it) does the same again.
#[tokio::test]
async fn refused_token_stops_retrying_alerts_and_reloads_the_file() {
    bounded(async {
        let w = world("upstox-auth").await;
        std::fs::write(&w.token_file, "an-expired-token\n").expect("token");
        let app = start_app(&config(&w, &Knobs::default()), "2026-01-07T10:00:00+05:30");
        let auth = app
            .expect_from(
                0,
                "[AUTH] rejected",
                |l| l.contains("[AUTH] event=rejected"),
                Duration::from_secs(5),
            )
            .await;
        assert!(auth.text.contains("source=authorize status=401"), "{}", auth.text);
        assert!(auth.text.contains(&format!("token_file={}", w.token_file.display())), "{}", auth.text);
        assert!(auth.text.contains("failures=1"), "{}", auth.text);
        assert!(!auth.text.contains("an-expired-token"), "the token is never logged");
        // The network is left alone while the token is bad.
        let requests = w.up.api_requests().len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            w.up.api_requests().len(),
            requests,
            "no retry with a refused token: {:?}",
            w.up.api_requests()
        );
        assert_eq!(w.up.feed_accepted(), 0);
        assert!(
            app.find_from(0, |l| l.contains("[RECONNECT] attempt=")).is_none(),
            "no backoff loop:\n{}",
            app.tail()
        );

        // The operator writes a fresh token: picked up without a restart.
        let fixed = app.len();
        std::fs::write(&w.token_file, format!("{TOKEN}\n")).expect("token");
        app.expect_from(
            fixed,
            "[AUTH] reloaded",
            |l| l.contains("[AUTH] event=token_reloaded"),
            Duration::from_secs(3),
        )
        .await;
        wait_subscribed(&app, fixed).await;

        // Later the token expires at Upstox: the next connection is refused, alert again.
        let again = app.len();
        w.up.set_token("test-access-token-2");
        w.up.apply_now(FeedFault::Close(1000));
        let auth = app
            .expect_from(
                again,
                "[AUTH] rejected again",
                |l| l.contains("[AUTH] event=rejected"),
                Duration::from_secs(5),
            )
            .await;
        assert!(auth.text.contains("failures=2"), "{}", auth.text);
        std::fs::write(&w.token_file, "test-access-token-2\n").expect("token");
        wait_subscribed(&app, auth.idx).await;
        let log = app.log.clone();
        assert_eq!(app.stop().await, Some(0));
        let stats = log.find_from(0, |l| l.contains(" stats ")).expect("stats line");
        assert!(stats.text.contains("feed_auth_failures=2"), "{}", stats.text);
    })
    .await;
}

// ----- subscription caps, faults ---------------------------------------------------------

/// A configuration asking for more instruments than the connection's cap is a start-up error
/// naming the cap.
#[test]
fn over_cap_configuration_is_a_startup_error_naming_the_cap() {
    let dir = support::test_dir("upstox-cap");
    let token = dir.join("t");
    std::fs::write(&token, "x").expect("token");
    let cfg = dir.join("c.toml");
    let text = format!(
        "[feed]\nvenue = \"upstox\"\ntoken_file = \"{}\"\nmode = \"full\"\nmax_subscriptions = 2\ninstruments = [\"NSE_EQ|A1\", \"NSE_EQ|A2\", \"NSE_EQ|A3\"]\n",
        token.display()
    );
    std::fs::write(&cfg, text).expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_tickguard"))
        .args(["check-config"])
        .arg(&cfg)
        .env_remove("TICKGUARD_FAKE_WALL_CLOCK")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("subscription cap of 2 instrument keys per connection (mode full"), "{err}");
    // Above Upstox's own cap for the mode.
    let text = format!(
        "[feed]\nvenue = \"upstox\"\ntoken_file = \"{}\"\nmode = \"full\"\nmax_subscriptions = 2500\n",
        token.display()
    );
    std::fs::write(&cfg, text).expect("config");
    let out =
        Command::new(env!("CARGO_BIN_EXE_tickguard")).args(["check-config"]).arg(&cfg).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("above Upstox's cap of 2000 instrument keys per connection in mode full"), "{err}");
    // A symbol without an instrument key.
    let text = format!(
        "[feed]\nvenue = \"upstox\"\ntoken_file = \"{}\"\ninstruments = [\"BOSCHLTD\"]\n",
        token.display()
    );
    std::fs::write(&cfg, text).expect("config");
    let out =
        Command::new(env!("CARGO_BIN_EXE_tickguard")).args(["check-config"]).arg(&cfg).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("symbol BOSCHLTD has no Upstox instrument key"), "{err}");
}

/// A venue whose cap is lower than ours refuses the subscription (close 1008): the session
/// backs off instead of hammering it; a dropped and a stalled connection are reconnected and
/// resubscribed with fresh codes, one connection at a time.
#[tokio::test]
async fn venue_refusal_drop_and_stall_reconnect_one_connection_at_a_time() {
    bounded(async {
        let w = world("upstox-faults").await;
        let app = start_app(&config(&w, &Knobs::default()), "2026-01-07T10:00:00+05:30");
        let from = wait_subscribed(&app, 0).await;
        // Drop (TCP reset).
        w.up.apply_now(FeedFault::Reset);
        let lost = app
            .expect_from(
                from,
                "reconnect after reset",
                |l| l.contains("[RECONNECT] attempt=1 "),
                Duration::from_secs(4),
            )
            .await;
        let from = wait_subscribed(&app, lost.idx).await;
        // Stall: nothing at all, pongs included: caught by the silence timeout (1 s).
        let stalled = Instant::now();
        w.up.apply_now(FeedFault::Stall);
        let silent = app
            .expect_from(
                from,
                "silence",
                |l| l.contains("[RECONNECT] attempt=") && l.contains("silent for"),
                Duration::from_secs(4),
            )
            .await;
        let took = silent.at.saturating_duration_since(stalled);
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "silence caught in {took:?}"
        );
        let from = wait_subscribed(&app, silent.idx).await;
        // The venue's cap drops below what we subscribe: refused, backing off.
        w.up.set_cap(2);
        w.up.apply_now(FeedFault::Close(1000));
        let refused = app
            .expect_from(
                from,
                "cap refusal",
                |l| l.contains("[RECONNECT] attempt=") && l.contains("code 1008"),
                Duration::from_secs(5),
            )
            .await;
        let again = app
            .expect_from(
                refused.idx + 1,
                "second refusal",
                |l| l.contains("[RECONNECT] attempt=") && l.contains("code 1008"),
                Duration::from_secs(5),
            )
            .await;
        let a1: u32 = field(&refused.text, "attempt").and_then(|v| v.parse().ok()).expect("attempt");
        let a2: u32 = field(&again.text, "attempt").and_then(|v| v.parse().ok()).expect("attempt");
        assert_eq!(a2, a1 + 1, "the backoff grows: {}\n{}", refused.text, again.text);
        assert!(w.up.conns().iter().any(|c| c.over_cap));
        w.up.set_cap(5000);
        wait_subscribed(&app, again.idx).await;
        assert_eq!(w.up.max_concurrent(), 1, "one connection at a time");
        assert_eq!(w.up.concurrent_rejections(), 0);
        assert_eq!(w.up.code_rejections(), 0);
        assert!(w.up.conns().iter().all(|c| c.texts == 0), "requests go as binary frames");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}
