//! Issue 12, the Binance edge, through the real `tickguard run` binary on loopback: a test
//! DNS chain (a "system" resolver named in a test resolv.conf and one fallback), a TLS
//! WebSocket server speaking Binance's combined stream (`stream.test`), and the fake Binance
//! (`tests/support/fake_binance.rs`, `api.test`) standing in for both `feed.rest_url` (the
//! REST last-price fallback and the `exchangeInfo` symbol list) and `broker.rest_url` (signed
//! orders, account). Every test is bounded (`LIMIT`) and stops the binary it started.
//!
//! - defect 4: one unknown symbol in the REST batch (`-1121` for the whole `symbols=[...]`)
//!   must not take REST away from the other positions;
//! - defect 10: a balance the broker cannot read (over ~92 billion units) is unknown, never
//!   zero: the close is sized at the position's quantity and really sells;
//! - the venue's symbol list is stored in the state directory and loaded from there when the
//!   appliance starts during a DNS outage.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::app::App;
use support::dns::Behavior;
use support::edge_world::{BinanceEdge, BinanceSetup, LOCALHOST, api_text, wait_subscribed};
use support::fake_binance::{API_KEY, FakeBinance, SECRET};
use tickguard::core::price::Qty;
use tickguard::feed::venue_symbols::{FILE_NAME, VenueSymbols, Verdict};

/// Bound of one whole test.
const LIMIT: Duration = Duration::from_secs(45);
const ECHO: &str = "PROTECTION_BINANCE_ECHO";

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

fn q(s: &str) -> Qty {
    Qty::parse(s).expect("decimal")
}

/// The loopback world of one test: `support::edge_world` with one fallback resolver, and the
/// fake Binance on `api.test`.
struct World {
    edge: BinanceEdge,
    fake: FakeBinance,
}

impl std::ops::Deref for World {
    type Target = BinanceEdge;
    fn deref(&self) -> &BinanceEdge {
        &self.edge
    }
}

impl World {
    async fn new(name: &str) -> World {
        let edge = BinanceEdge::start(name, 1).await;
        let fake = FakeBinance::start(edge.ca.server_config(&["api.test"])).await;
        fake.add_symbol("BTCUSDT", "BTC", "USDT", "0.00001", "0.00001", "5", "60000");
        fake.add_symbol("ETHUSDT", "ETH", "USDT", "0.0001", "0.0001", "5", "3000");
        fake.list_symbol("LUNAUSDT", "BREAK");
        fake.set_balance("BTC", "2", "0");
        World { edge, fake }
    }

    /// A configuration with these `[[positions]]`; the state directory is the same for every
    /// configuration of the world (a restart finds what the last run stored).
    fn config(&self, positions: &str) -> PathBuf {
        let key = self.dir.join("broker.key");
        let secret = self.dir.join("broker.secret");
        std::fs::write(&key, API_KEY).expect("write key");
        std::fs::write(&secret, SECRET).expect("write secret");
        let broker = format!(
            "kind = \"binance\"\nrest_url = \"https://api.test:{rest}\"\nkey_file = \"{key}\"\nsecret_file = \"{secret}\"",
            rest = self.fake.port,
            key = key.display(),
            secret = secret.display(),
        );
        self.edge.config(&BinanceSetup {
            rest_port: self.fake.port,
            instruments: &[],
            stale_after_s: 5.0,
            expire_after_s: 20.0,
            blind_grace_s: 2.0,
            broker: &broker,
            tail: positions,
        })
    }
}

fn position(id: &str, symbol: &str, qty: &str, entry: &str, stop: &str) -> String {
    format!(
        "[[positions]]\nid = \"{id}\"\nsymbol = \"{symbol}\"\nside = \"long\"\nqty = {qty}\nentry = \"{entry}\"\nstop_loss = \"{stop}\"\n\n"
    )
}

/// `POST /api/v1/positions` on the binary's API with the bearer token; the status code and
/// the body (0 and empty if the API did not answer).
async fn post_position(port: u16, body: &str) -> (u16, String) {
    api_text(port, "POST", "/api/v1/positions", body).await.unwrap_or((0, String::new()))
}

/// Waits (bounded) until the API answers, then posts `body`.
async fn post_when_up(port: u16, body: &str) -> (u16, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = post_position(port, body).await;
        if r.0 != 0 || std::time::Instant::now() >= deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The queries of the whole-list `exchangeInfo` fetches (not the broker's `symbol=X`).
fn list_fetches(fake: &FakeBinance) -> Vec<String> {
    fake.queries("GET", "/api/v3/exchangeInfo").into_iter().filter(|q| !q.contains("symbol")).collect()
}

/// Defect 4: the feed dies; of two positions, one is on a symbol the venue does not know, so
/// Binance refuses the whole `ticker/price?symbols=[...]` batch with 400 `-1121`. The offender
/// is reported and left out; the good position keeps its REST prices and closes when its stop
/// is crossed through REST.
///
/// Fails on the code as it was: the poller treated the 400 as a failure of every instrument
/// (`event=rest_error instruments=2 cause="HTTP 400"`), so BTCUSDT never got a REST price and
/// its crossed stop was never judged.
#[tokio::test]
async fn defect_04_one_unknown_symbol_in_the_rest_batch_keeps_rest_for_the_others() {
    bounded(async {
        let w = World::new("pb-defect04").await;
        let positions = position("good", "BTCUSDT", "1", "60000.00", "55000.00")
            + &position("bad", "NOSUCHUSDT", "1", "10.00", "5.00");
        let app = App::start_with_env(&w.config(&positions), &[], ECHO);
        wait_subscribed(&app, 0).await;
        w.book_ticker("BTCUSDT", "60000.00000000", "60001.00000000");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut = app.len();
        w.feed_dies();
        app.expect_from(
            cut,
            "[FALLBACK] to rest",
            |l| l.contains("[FALLBACK] symbol=BTCUSDT from=live to=rest"),
            Duration::from_secs(4),
        )
        .await;
        let refused = app
            .expect_from(
                cut,
                "rest_symbol_refused",
                |l| l.contains("[FALLBACK] event=rest_symbol_refused symbol=NOSUCHUSDT code=-1121"),
                Duration::from_secs(4),
            )
            .await;
        // The good symbol keeps being priced through REST, alone, after the refusal.
        let polled = |f: &FakeBinance| {
            f.queries("GET", "/api/v3/ticker/price").iter().filter(|q| *q == "symbol=BTCUSDT").count()
        };
        let n = polled(&w.fake);
        assert!(
            w.fake.wait_for(|f| polled(f) >= n + 2, Duration::from_secs(3)).await,
            "BTCUSDT is still polled alone: {:?}\n{}",
            w.fake.queries("GET", "/api/v3/ticker/price"),
            app.tail()
        );
        // Later batches leave the offender out: after the poll that found it, it is asked for
        // only alone (and not before its retry delay of 30 s).
        let queries = w.fake.queries("GET", "/api/v3/ticker/price");
        let batches_with_it =
            queries.iter().filter(|q| q.starts_with("symbols=") && q.contains("NOSUCHUSDT")).count();
        assert_eq!(batches_with_it, 1, "one batch found the offender, none after it: {queries:?}");
        assert!(
            app.find_from(refused.idx + 1, |l| l.contains("event=rest_error") && l.contains("HTTP 400"))
                .is_none(),
            "no REST error for the whole batch:\n{}",
            app.tail()
        );
        // The stop is crossed through REST: the good position closes and really sells.
        w.fake.set_price("BTCUSDT", "50000");
        let sl = app
            .expect_from(
                cut,
                "[SL] good",
                |l| l.contains("[SL] id=good symbol=BTCUSDT"),
                Duration::from_secs(4),
            )
            .await;
        assert!(sl.text.contains("source=rest"), "decided on a REST price: {}", sl.text);
        app.expect_from(
            sl.idx,
            "[CLOSE] closed",
            |l| l.contains("[CLOSE] id=good symbol=BTCUSDT event=closed"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(w.fake.filled_qty("BTCUSDT"), q("1"), "the close sold the position");
        assert!(app.find_from(0, |l| l.contains("[SL] id=bad")).is_none(), "{}", app.tail());
        assert!(w.fake.fills().iter().all(|f| f.symbol == "BTCUSDT"), "{:?}", w.fake.fills());
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Defect 4, several offenders: two unknown symbols among four. The batch is halved until
/// each offender is alone; both are reported, later polls ask for the two good symbols in one
/// batch without them, and a stop crossed on either good symbol closes through REST.
#[tokio::test]
async fn rest_batch_with_two_unknown_symbols_is_split_and_prices_the_rest() {
    bounded(async {
        let w = World::new("pb-two-unknown").await;
        w.fake.set_balance("ETH", "5", "0");
        let positions = position("btc", "BTCUSDT", "1", "60000.00", "55000.00")
            + &position("eth", "ETHUSDT", "2", "3000.00", "2500.00")
            + &position("nosuch", "NOSUCHUSDT", "1", "10.00", "5.00")
            + &position("foobar", "FOOBARUSDT", "1", "10.00", "5.00");
        let app = App::start_with_env(&w.config(&positions), &[], ECHO);
        wait_subscribed(&app, 0).await;
        w.book_ticker("BTCUSDT", "60000.00000000", "60001.00000000");
        w.book_ticker("ETHUSDT", "3000.00000000", "3000.10000000");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut = app.len();
        w.feed_dies();
        for bad in ["NOSUCHUSDT", "FOOBARUSDT"] {
            let want = format!("[FALLBACK] event=rest_symbol_refused symbol={bad} code=-1121");
            app.expect_from(cut, "rest_symbol_refused", |l| l.contains(&want), Duration::from_secs(4)).await;
        }
        // From the next poll on: the good symbols in one batch, the offenders left out.
        let n = w.fake.queries("GET", "/api/v3/ticker/price").len();
        assert!(
            w.fake
                .wait_for(|f| f.queries("GET", "/api/v3/ticker/price").len() >= n + 3, Duration::from_secs(3))
                .await,
            "REST still polled:\n{}",
            app.tail()
        );
        let later: Vec<String> = w.fake.queries("GET", "/api/v3/ticker/price").split_off(n + 1);
        assert!(
            later.iter().all(|q| !q.contains("NOSUCHUSDT") && !q.contains("FOOBARUSDT")),
            "offenders left out of the batch: {later:?}"
        );
        assert!(
            later.iter().all(|q| q.starts_with("symbols=") && q.contains("BTCUSDT") && q.contains("ETHUSDT")),
            "the good symbols stay in one batch: {later:?}"
        );
        // ETH crosses its stop through REST and closes; BTC stays open.
        w.fake.set_price("ETHUSDT", "2400");
        let sl = app
            .expect_from(
                cut,
                "[SL] eth",
                |l| l.contains("[SL] id=eth symbol=ETHUSDT"),
                Duration::from_secs(4),
            )
            .await;
        assert!(sl.text.contains("source=rest"), "{}", sl.text);
        assert!(
            w.fake.wait_for(|f| f.filled_qty("ETHUSDT") == q("2"), Duration::from_secs(5)).await,
            "ETH sold: {:?}\n{}",
            w.fake.fills(),
            app.tail()
        );
        assert!(app.find_from(0, |l| l.contains("[SL] id=btc")).is_none(), "{}", app.tail());
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// Defect 10: the account lists the base asset with an amount beyond what 64-bit fixed point
/// holds (`99999999999.00000000`). A crossed stop must send the position's quantity (the venue
/// refuses if the account does not hold it), never report the close filled with nothing sold,
/// and reconciliation must never read that balance as zero ("closed externally").
///
/// Fails on the code as it was: the unreadable balance was read as zero, the close sized as
/// dust (`event=nothing_to_sell`) and reported filled with no order sent; reconciliation saw
/// BTCUSDT at zero and marked the position closed externally.
#[tokio::test]
async fn defect_10_unparseable_balance_is_unknown_never_dust() {
    bounded(async {
        let w = World::new("pb-defect10").await;
        w.fake.set_balance_text("BTC", "99999999999.00000000", "0.00000000");
        let app = App::start_with_env(
            &w.config(&position("btc", "BTCUSDT", "1", "60000.00", "55000.00")),
            &[],
            ECHO,
        );
        wait_subscribed(&app, 0).await;
        w.book_ticker("BTCUSDT", "60000.00000000", "60001.00000000");
        // Long enough for the start-up reconciliation to have read the holdings.
        assert!(
            w.fake.wait_for(|f| f.count("GET", "/api/v3/account") >= 1, Duration::from_secs(5)).await,
            "the account was read:\n{}",
            app.tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            app.find_from(0, |l| l.contains("closed_externally") && l.contains("id=btc")).is_none(),
            "an unreadable balance is not 'holds none':\n{}",
            app.tail()
        );
        w.fake.set_price("BTCUSDT", "50000");
        w.book_ticker("BTCUSDT", "50000.00000000", "50001.00000000");
        let sl = app
            .expect_from(0, "[SL] btc", |l| l.contains("[SL] id=btc symbol=BTCUSDT"), Duration::from_secs(4))
            .await;
        let closed = app
            .expect_from(
                sl.idx,
                "[CLOSE] closed",
                |l| l.contains("[CLOSE] id=btc symbol=BTCUSDT event=closed"),
                Duration::from_secs(5),
            )
            .await;
        assert!(closed.text.contains("qty=1"), "{}", closed.text);
        assert!(
            app.find_from(0, |l| l.contains("event=nothing_to_sell")).is_none(),
            "never sized as dust:\n{}",
            app.tail()
        );
        app.expect_from(
            0,
            "balance_unknown",
            |l| l.contains("event=balance_unknown venue=binance symbol=BTCUSDT") && l.contains("unreadable"),
            Duration::from_secs(1),
        )
        .await;
        let orders = w.fake.orders();
        assert_eq!(orders.len(), 1, "{orders:?}");
        assert_eq!(orders[0].orig, q("1"), "the position's quantity was sent");
        assert_eq!(w.fake.filled_qty("BTCUSDT"), q("1"), "and really sold");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

/// The venue's symbol list survives in the state directory: a first run fetches
/// `exchangeInfo?permissions=SPOT` (the whole list, never `symbols=[...]`) and stores it; a
/// second run, started while every resolver is dead, loads it from there (its verdicts work
/// with no network), keeps retrying the fetch with a backoff, says loudly that the position
/// has no price (`[BLIND]`), and once DNS answers again fetches and stores the list and
/// protects the position from live prices.
///
/// Fails on the code as it was: there was no symbol list at all.
#[tokio::test]
async fn start_during_dns_outage_uses_the_stored_symbol_list() {
    bounded(async {
        let w = World::new("pb-dns-symbols").await;
        let cfg = w.config(&position("btc", "BTCUSDT", "1", "60000.00", "55000.00"));
        // First run: fetched and stored.
        let app = App::start_with_env(&cfg, &[], ECHO);
        app.expect_from(
            0,
            "[SYMBOLS] loaded none",
            |l| l.contains("[SYMBOLS] event=loaded venue=binance source=none"),
            Duration::from_secs(5),
        )
        .await;
        app.expect_from(
            0,
            "[SYMBOLS] stored",
            |l| l.contains("[SYMBOLS] event=stored venue=binance symbols=3"),
            Duration::from_secs(10),
        )
        .await;
        // (The broker asks for its symbols' filters with `symbol=X`; the list is the rest.)
        let fetches = list_fetches(&w.fake);
        assert_eq!(fetches, vec!["permissions=SPOT".to_string()], "the whole spot list, once");
        assert!(
            w.fake.queries("GET", "/api/v3/exchangeInfo").iter().all(|q| !q.contains("symbols=")),
            "never symbols=[...]"
        );
        assert_eq!(app.stop().await, Some(0));
        let stored = std::fs::read(w.state_dir().join(FILE_NAME)).expect("the list is stored");

        // Second run: every resolver is dead.
        w.dns_all(Behavior::ServFail);
        let app = App::start_with_env(&cfg, &[], ECHO);
        let loaded = app
            .expect_from(
                0,
                "[SYMBOLS] loaded stored",
                |l| l.contains("[SYMBOLS] event=loaded venue=binance source=stored symbols=3 traded=2"),
                Duration::from_secs(5),
            )
            .await;
        app.expect_from(
            loaded.idx,
            "[SYMBOLS] refresh_failed",
            |l| l.contains("[SYMBOLS] event=refresh_failed venue=binance host=api.test failures=1 retry_ms=5000 symbols=3"),
            Duration::from_secs(10),
        )
        .await;
        // The failed fetch left the stored list alone, and its verdicts need no network.
        assert_eq!(std::fs::read(w.state_dir().join(FILE_NAME)).expect("still stored"), stored);
        let vs = VenueSymbols::open(&w.state_dir());
        assert_eq!(vs.verdict("btcusdt"), Verdict::Traded);
        assert_eq!(vs.verdict("ETHUSDT"), Verdict::Traded);
        assert_eq!(vs.verdict("LUNAUSDT"), Verdict::NotTraded, "listed, status BREAK");
        assert_eq!(vs.verdict("NOSUCHUSDT"), Verdict::NotTraded);
        // The API checks symbols at the door against the stored list, with no network.
        let port = w.api_port.get();
        let (status, body) = post_when_up(
            port,
            r#"{"id":"nosuch","symbol":"NOSUCHUSDT","side":"long","qty":"1","entry":"10","stop_loss":"5"}"#,
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("symbol: NOSUCHUSDT is not traded on binance"), "{body}");
        assert!(body.contains(r#""field":"symbol""#), "{body}");
        let (status, body) = post_when_up(
            port,
            r#"{"id":"luna","symbol":"lunausdt","side":"long","qty":"1","entry":"10","stop_loss":"5"}"#,
        )
        .await;
        assert_eq!(status, 400, "listed but not trading: {body}");
        let (status, body) = post_when_up(
            port,
            r#"{"id":"eth","symbol":"ethusdt","side":"long","qty":"1","entry":"3000","stop_loss":"2500"}"#,
        )
        .await;
        assert_eq!(status, 201, "traded (case-free): {body}");
        assert_eq!(list_fetches(&w.fake).len(), 1, "nothing reached the venue");
        // No price can reach the position: it is blind, loudly, after its grace.
        app.expect_from(
            0,
            "[BLIND] btc",
            |l| l.contains("[BLIND] id=btc symbol=BTCUSDT state=blind"),
            Duration::from_secs(8),
        )
        .await;
        // DNS answers again: the retry (5 s after the first failure) fetches and stores the
        // list, and the feed comes back.
        let back = app.len();
        w.dns_all(Behavior::Answer(vec![LOCALHOST]));
        app.expect_from(
            back,
            "[SYMBOLS] refreshed",
            |l| l.contains("[SYMBOLS] event=refreshed venue=binance host=api.test symbols=3"),
            Duration::from_secs(15),
        )
        .await;
        app.expect_from(
            back,
            "[SYMBOLS] stored",
            |l| l.contains("[SYMBOLS] event=stored venue=binance symbols=3"),
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(list_fetches(&w.fake).len(), 2);
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}
