//! Warm broker connections (issue 14): the Binance broker's pooled, kept-warm TLS connections
//! and background balances, against the fake exchange on loopback TLS, which counts the TCP
//! connections it accepts and the TLS handshakes it completes.
//!
//! - a close on a warm broker is one `POST /api/v3/order` on an already open connection: no
//!   new handshake, no `/account` (or any other) request on the close path;
//! - a pooled connection the venue closed while idle is replaced, and the order is sent once;
//! - the pool stays bounded (at most `BROKER_POOL_IDLE_PER_HOST` idle connections);
//! - a balance older than its bound is read again in the background, and after every fill.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::ca::TestCa;
use support::fake_binance::{API_KEY, FakeBinance, SECRET};
use tickguard::broker::binance::{Binance, BinanceConfig, Credentials};
use tickguard::broker::{Broker, CloseOrder, Secret};
use tickguard::core::engine::{Outcome, client_id};
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{CloseReason, InstrumentId, PositionId, Side, Symbol};
use tickguard::limits::BROKER_POOL_IDLE_PER_HOST;
use tickguard::net::http::Endpoint;
use tokio::sync::watch;

const LIMIT: Duration = Duration::from_secs(30);

fn q(s: &str) -> Qty {
    Qty::parse(s).expect("decimal")
}

struct World {
    _dir: std::path::PathBuf,
    _ca: TestCa,
    fake: FakeBinance,
    broker: Arc<Binance>,
    _stop: watch::Sender<bool>,
}

/// A fake with BTCUSDT and 2 BTC; the broker's background loop (`run_time_sync`) runs when
/// `warm` is set.
async fn world(name: &str, warm: bool, tweak: impl FnOnce(&mut BinanceConfig)) -> World {
    support::init_logs();
    let dir = support::test_dir(name);
    let ca = TestCa::new(&dir);
    let fake = FakeBinance::start(ca.server_config(&["127.0.0.1"])).await;
    fake.add_symbol("BTCUSDT", "BTC", "USDT", "0.00001", "0.00001", "5", "60000");
    fake.set_balance("BTC", "2", "0");
    let mut cfg = BinanceConfig::new(Endpoint::parse(&fake.base_url()).expect("url"));
    cfg.order_timeout = Duration::from_secs(2);
    cfg.query_timeout = Duration::from_secs(2);
    cfg.symbols = vec!["BTCUSDT".into()];
    tweak(&mut cfg);
    let creds = Credentials { api_key: Secret::new(API_KEY), secret: Secret::new(SECRET) };
    let broker = Arc::new(Binance::new(cfg, creds, ca.tickguard_connector()));
    let (stop_tx, stop_rx) = watch::channel(false);
    if warm {
        tokio::spawn(broker.clone().run_time_sync(stop_rx));
    }
    World { _dir: dir, _ca: ca, fake, broker, _stop: stop_tx }
}

fn order(pos: &str, attempt: u16, qty: &str) -> CloseOrder {
    CloseOrder {
        client_id: client_id(1, pos, attempt),
        pos_id: PositionId::try_from(pos).expect("id"),
        attempt,
        instrument: InstrumentId(0),
        symbol: Symbol::try_from("BTCUSDT").expect("symbol"),
        side: Side::Long,
        qty: q(qty),
        reason: CloseReason::StopLoss,
        price_hint: Some(Price::parse("60000").expect("price")),
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

fn filled(qty: &str) -> Outcome {
    Outcome::Filled { executed: q(qty), price: Some(Price::parse("60000").expect("price")) }
}

/// Waits until the background loop has learned the time, loaded the rules and read the
/// account.
async fn wait_warm(w: &World) {
    assert!(
        w.fake
            .wait_for(
                |f| f.count("GET", "/api/v3/account") >= 1 && f.count("GET", "/api/v3/time") >= 1,
                Duration::from_secs(5)
            )
            .await,
        "the broker warmed up: {:?}",
        w.fake.requests()
    );
    for _ in 0..100 {
        if w.broker.account_age().is_some() && w.broker.cached_rules("BTCUSDT").is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no cached account or rules");
}

#[tokio::test]
async fn a_close_on_a_warm_broker_is_one_request_on_an_open_connection() {
    bounded(async {
        let w = world("pool-warm", true, |_| {}).await;
        wait_warm(&w).await;
        let (tcp0, tls0, _) = w.fake.connections();
        assert!(tls0 >= 1, "the background requests opened a connection");
        let before = w.fake.requests().len();
        let placed = w.broker.place_stamped(&order("btc-1", 1, "1")).await;
        assert_eq!(placed.outcome, filled("1"));
        assert!(placed.sent.is_some(), "the send time is reported");
        let (tcp1, tls1, _) = w.fake.connections();
        assert_eq!((tcp1, tls1), (tcp0, tls0), "no new TCP connection or TLS handshake for the close");
        let during: Vec<String> = w.fake.requests()[before..].to_vec();
        // The fill wakes the balance refresh: anything after the order is background work.
        assert_eq!(during.first().map(String::as_str), Some("POST /api/v3/order"), "{during:?}");
        assert_eq!(w.fake.count("POST", "/api/v3/order"), 1);
        assert_eq!(w.fake.fills_of(client_id(1, "btc-1", 1).as_str()).len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_connection_closed_by_the_venue_while_idle_is_replaced_and_nothing_is_sent_twice() {
    bounded(async {
        let w = world("pool-idle-closed", false, |_| {}).await;
        w.fake.set_idle_close(Duration::from_millis(200));
        w.broker.sync_time().await.expect("time");
        w.broker.rules("BTCUSDT").await.expect("rules");
        let (tcp0, _, _) = w.fake.connections();
        assert_eq!(tcp0, 1, "one kept-alive connection for both requests");
        // The venue closes the idle connection; the client's pool notices and drops it.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(w.fake.connections().2, 0, "the fake closed its idle connection");
        for attempt in 1..=3u16 {
            let o = order("btc-1", attempt, "0.1");
            assert_eq!(w.broker.place(&o).await, filled("0.1"), "attempt {attempt}");
            assert_eq!(w.fake.fills_of(o.client_id.as_str()).len(), 1, "sent once");
            // Let the venue close it again before the next attempt.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        assert_eq!(w.fake.count("POST", "/api/v3/order"), 3, "every order sent exactly once");
        let (tcp1, tls1, _) = w.fake.connections();
        assert!(tcp1 > tcp0 && tls1 >= tcp1 - 1, "closed connections were replaced ({tcp1} TCP, {tls1} TLS)");
    })
    .await;
}

#[tokio::test]
async fn the_pool_stays_bounded() {
    bounded(async {
        let w = world("pool-bounded", false, |_| {}).await;
        // 24 requests at once need up to 24 connections; afterwards at most
        // BROKER_POOL_IDLE_PER_HOST stay open.
        let mut tasks = Vec::new();
        for _ in 0..24 {
            let b = w.broker.clone();
            tasks.push(tokio::spawn(async move { b.sync_time().await.is_ok() }));
        }
        for t in tasks {
            assert!(t.await.expect("task"), "time request");
        }
        let (tcp, _, _) = w.fake.connections();
        assert!(tcp > BROKER_POOL_IDLE_PER_HOST, "the burst opened {tcp} connections");
        let mut open = usize::MAX;
        for _ in 0..100 {
            open = w.fake.connections().2;
            if open <= BROKER_POOL_IDLE_PER_HOST {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(open <= BROKER_POOL_IDLE_PER_HOST, "{open} connections left open");
        // And they are used again.
        let before = w.fake.connections().0;
        w.broker.sync_time().await.expect("time");
        assert_eq!(w.fake.connections().0, before, "an idle pooled connection was reused");
    })
    .await;
}

#[tokio::test]
async fn balances_are_refreshed_in_the_background_and_after_fills() {
    bounded(async {
        let w = world("pool-balance", true, |c| {
            c.balance_refresh = Duration::from_millis(300);
            c.balance_max_age = Duration::from_millis(600);
        })
        .await;
        wait_warm(&w).await;
        let first = w.fake.count("GET", "/api/v3/account");
        // Older than the bound would be reached within 600 ms: the background reads it again.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let later = w.fake.count("GET", "/api/v3/account");
        assert!(later >= first + 2, "refreshed in the background ({first} -> {later})");
        let age = w.broker.account_age().expect("cached");
        assert!(age <= Duration::from_millis(600), "the cached balance stays within its bound: {age:?}");
        // A fill drops the cached balance and wakes the refresh at once.
        let before = w.fake.count("GET", "/api/v3/account");
        let before_requests = w.fake.requests().len();
        assert_eq!(w.broker.place(&order("btc-1", 1, "0.5")).await, filled("0.5"));
        assert_eq!(
            w.fake.requests().get(before_requests).map(String::as_str),
            Some("POST /api/v3/order"),
            "no request before the order on the close path"
        );
        assert!(
            w.fake.wait_for(|f| f.count("GET", "/api/v3/account") > before, Duration::from_millis(250)).await,
            "the fill woke a balance refresh"
        );
        // The next close sizes from the refreshed balance (1.5 BTC left): 2 is capped.
        for _ in 0..50 {
            if w.broker.account_age().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(w.broker.place(&order("btc-2", 1, "2")).await, filled("1.5"));
    })
    .await;
}

#[tokio::test]
async fn without_a_cached_balance_the_close_reads_it_within_the_budget_as_before() {
    bounded(async {
        let w = world("pool-cold", false, |_| {}).await;
        assert_eq!(w.broker.place(&order("btc-1", 1, "3")).await, filled("2"), "capped at the balance read");
        assert_eq!(w.fake.count("GET", "/api/v3/account"), 1);
        assert_eq!(w.fake.connections().1, 1, "time, rules, account and order share one connection");
    })
    .await;
}
