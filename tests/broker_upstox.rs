//! The Upstox broker (issue 5) against the fake order API of `tests/support/fake_upstox.rs` on
//! loopback TLS: the v3 place-order body with a unique tag per attempt, look-up by tag before
//! anything is re-sent, the session rule (no absence proven across a session boundary), 401
//! handling with a token file read again, and the error mapping.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::json;
use support::ca::TestCa;
use support::fake_upstox::{FakeUpstox, TOKEN, UFault};
use tickguard::broker::upstox::{Product, Upstox, UpstoxConfig, history_outcome, session_day};
use tickguard::broker::{Broker, CloseOrder, Lookup, Secret};
use tickguard::core::engine::{Outcome, client_id};
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{CloseReason, InstrumentId, PositionId, Side, Symbol};
use tickguard::feed::upstox::InstrumentMap;
use tickguard::net::http::Endpoint;
use tickguard::runtime::clock::Clock;
use tickguard::runtime::executor::resolve;

const LIMIT: Duration = Duration::from_secs(30);
const KEY: &str = "NSE_EQ|INE323A01026";

fn q(s: &str) -> Qty {
    Qty::parse(s).expect("decimal")
}

struct World {
    dir: std::path::PathBuf,
    fake: FakeUpstox,
    broker: Upstox,
}

async fn world(name: &str, tweak: impl FnOnce(&mut UpstoxConfig)) -> World {
    support::init_logs();
    let dir = support::test_dir(name);
    let ca = TestCa::new(&dir);
    let fake = FakeUpstox::start(ca.server_config(&["127.0.0.1"])).await;
    fake.set_price(KEY, 735.5);
    let ep = Endpoint::parse(&fake.base_url()).expect("url");
    let mut cfg = UpstoxConfig::new(ep.clone(), ep);
    cfg.instrument_keys = Arc::new(InstrumentMap::from_pairs([("BOSCHLTD", KEY)]));
    cfg.confirm_delay = Duration::from_millis(10);
    let token = dir.join("upstox.token");
    std::fs::write(&token, format!("{TOKEN}\n")).expect("write token");
    cfg.token_file = Some(token);
    tweak(&mut cfg);
    let broker = Upstox::new(cfg, Secret::new(TOKEN), ca.tickguard_connector());
    World { dir, fake, broker }
}

fn order(pos: &str, attempt: u16, qty: &str, side: Side) -> CloseOrder {
    CloseOrder {
        client_id: client_id(1, pos, attempt),
        pos_id: PositionId::try_from(pos).expect("id"),
        attempt,
        instrument: InstrumentId(0),
        symbol: Symbol::try_from("BOSCHLTD").expect("symbol"),
        side,
        qty: q(qty),
        reason: CloseReason::StopLoss,
        price_hint: None,
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

fn filled(qty: &str, price: &str) -> Outcome {
    Outcome::Filled { executed: q(qty), price: Some(Price::parse(price).expect("price")) }
}

#[tokio::test]
async fn place_sends_the_v3_body_with_a_unique_tag_per_attempt() {
    bounded(async {
        let w = world("ux-place", |_| {}).await;
        w.broker.set_product("bosch", Product::I);
        let a1 = order("bosch", 1, "10", Side::Long);
        assert_eq!(w.broker.place(&a1).await, filled("10", "735.5"));
        let a2 = order("bosch", 2, "4", Side::Short);
        assert_eq!(w.broker.place(&a2).await, filled("4", "735.5"));
        let bodies = w.fake.place_bodies();
        assert_eq!(
            bodies[0],
            json!({
                "quantity": 10, "product": "I", "validity": "DAY", "price": 0, "tag": "tg1-bosch-1",
                "instrument_token": KEY, "order_type": "MARKET", "transaction_type": "SELL",
                "disclosed_quantity": 0, "trigger_price": 0, "is_amo": false, "slice": true
            })
        );
        assert_eq!(bodies[1]["transaction_type"], "BUY");
        assert_eq!(bodies[1]["tag"], "tg1-bosch-2");
        assert_ne!(bodies[0]["tag"], bodies[1]["tag"]);
        // A position without a product of its own closes as delivery (D).
        let other = order("other", 1, "1", Side::Long);
        assert_eq!(w.broker.place(&other).await, filled("1", "735.5"));
        assert_eq!(w.fake.place_bodies()[2]["product"], "D");
        // Each attempt was looked up by its tag after being placed.
        assert_eq!(w.fake.requests().iter().filter(|r| *r == "GET /v2/order/history").count(), 3);
    })
    .await;
}

#[tokio::test]
async fn lookup_by_tag_resolves_a_lost_answer_without_a_second_order() {
    bounded(async {
        let w = world("ux-lost", |c| c.order_timeout = Duration::from_millis(500)).await;
        let clock = Clock::new();
        for (i, fault) in [
            UFault::LostAfterPlace,
            UFault::TimeoutAfterPlace(Duration::from_secs(3)),
            UFault::ServerErrorAfterPlace(503),
        ]
        .into_iter()
        .enumerate()
        {
            let o = order(&format!("p{i}"), 1, "10", Side::Long);
            let sent_at = clock.now();
            w.fake.push_fault(fault.clone());
            assert_eq!(w.broker.place(&o).await, Outcome::Unknown, "{fault:?}");
            assert_eq!(
                resolve(&w.broker, &clock, "BOSCHLTD", &o.client_id, sent_at).await,
                filled("10", "735.5")
            );
            assert_eq!(w.fake.orders_with_tag(&o.client_id).len(), 1, "{fault:?}");
        }
        assert_eq!(w.fake.orders().len(), 3);
    })
    .await;
}

#[tokio::test]
async fn absence_is_proven_only_in_the_same_session_after_the_window() {
    bounded(async {
        static NOW: AtomicI64 = AtomicI64::new(0);
        fn wall() -> i64 {
            NOW.load(Ordering::SeqCst)
        }
        // 10:00 IST on some day.
        let morning = 20_780 * 86_400_000_i64 - 19_800_000 + 10 * 3_600_000;
        NOW.store(morning, Ordering::SeqCst);
        let w = world("ux-session", |c| {
            c.order_timeout = Duration::from_millis(400);
            c.absent_margin = Duration::from_millis(200);
        })
        .await;
        let broker = w.broker.with_wall_clock(wall);
        assert_eq!(broker.absent_after(), Duration::from_millis(600));
        let clock = Clock::new();
        // Refused by the front end (not placed), answer 503: unknown.
        let o = order("bosch", 1, "10", Side::Long);
        let sent_at = clock.now();
        w.fake.push_fault(UFault::Status(503));
        assert_eq!(broker.place(&o).await, Outcome::Unknown);
        // "Order not found", but too early to conclude anything.
        assert_eq!(broker.lookup("BOSCHLTD", &o.client_id).await, Lookup::Absent);
        assert_eq!(resolve(&broker, &clock, "BOSCHLTD", &o.client_id, sent_at).await, Outcome::Unknown);
        tokio::time::sleep(Duration::from_millis(650)).await;
        // Same session, past the window, two agreeing look-ups: proven absent.
        assert_eq!(resolve(&broker, &clock, "BOSCHLTD", &o.client_id, sent_at).await, Outcome::Rejected);
        // An empty `data` list is read the same way as UDAPI100010.
        w.fake.set_empty_when_not_found(true);
        assert_eq!(broker.lookup("BOSCHLTD", &o.client_id).await, Lookup::Absent);
        // Past midnight IST the history of yesterday is gone: never absent, never re-sent.
        NOW.store(morning + 15 * 3_600_000, Ordering::SeqCst);
        assert_ne!(session_day(morning), session_day(morning + 15 * 3_600_000));
        assert!(matches!(broker.lookup("BOSCHLTD", &o.client_id).await, Lookup::Failed(_)));
        assert_eq!(resolve(&broker, &clock, "BOSCHLTD", &o.client_id, sent_at).await, Outcome::Unknown);
        // A tag this process never sent (sent before a restart) is never proven absent...
        assert!(matches!(broker.lookup("BOSCHLTD", "tg1-bosch-9").await, Lookup::Failed(_)));
        // ...unless the journal tells when it was sent, in this session.
        broker.note_sent("tg1-bosch-9", morning + 15 * 3_600_000 - 1000);
        assert_eq!(broker.lookup("BOSCHLTD", "tg1-bosch-9").await, Lookup::Absent);
        assert!(w.fake.orders().is_empty());
    })
    .await;
}

#[tokio::test]
async fn unauthorized_is_rejected_and_the_token_file_is_read_again() {
    bounded(async {
        let w = world("ux-401", |_| {}).await;
        // The token was rotated at Upstox; the file still holds the old one.
        w.fake.set_token("rotated-token");
        let o = order("bosch", 1, "10", Side::Long);
        assert_eq!(w.broker.place(&o).await, Outcome::Rejected);
        assert!(w.fake.orders().is_empty());
        assert!(matches!(w.broker.lookup("BOSCHLTD", &o.client_id).await, Lookup::Failed(_)));
        // The operator writes the new token to the file: the next request uses it.
        std::fs::write(w.dir.join("upstox.token"), "rotated-token\n").expect("write token");
        let o2 = order("bosch", 2, "10", Side::Long);
        assert_eq!(w.broker.place(&o2).await, filled("10", "735.5"));
        assert_eq!(w.fake.orders().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn rejections_open_orders_and_rate_limits() {
    bounded(async {
        let w = world("ux-map", |_| {}).await;
        // Validation errors: not placed.
        w.fake.push_fault(UFault::Reject("UDAPI1052".into(), "The instrument_token is invalid".into()));
        assert_eq!(w.broker.place(&order("a", 1, "10", Side::Long)).await, Outcome::Rejected);
        // Placed, then rejected by the exchange / RMS: the confirming look-up says so.
        w.fake.push_fault(UFault::RmsReject);
        assert_eq!(w.broker.place(&order("b", 1, "10", Side::Long)).await, Outcome::Rejected);
        // Placed and still open: working; completed later, the look-up finds it filled.
        w.fake.push_fault(UFault::Open);
        let c = order("c", 1, "10", Side::Long);
        assert_eq!(w.broker.place(&c).await, Outcome::Working { executed: Qty::ZERO, price: None });
        w.fake.complete(&c.client_id);
        assert_eq!(w.broker.lookup("BOSCHLTD", &c.client_id).await, Lookup::Found(filled("10", "735.5")));
        // 429: refused before processing, rejected, and nothing is sent until Retry-After.
        w.fake.push_fault(UFault::RateLimit(1));
        assert_eq!(w.broker.place(&order("d", 1, "10", Side::Long)).await, Outcome::Rejected);
        assert!(w.broker.held_off().is_some());
        let before = w.fake.requests().len();
        assert_eq!(w.broker.place(&order("d", 2, "10", Side::Long)).await, Outcome::Rejected);
        assert_eq!(w.fake.requests().len(), before);
        // Fractional quantities and unknown instruments never leave the appliance.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(w.broker.place(&order("e", 1, "2.5", Side::Long)).await, Outcome::Rejected);
        let mut unknown = order("f", 1, "1", Side::Long);
        unknown.symbol = Symbol::try_from("NOSUCH").expect("symbol");
        assert_eq!(w.broker.place(&unknown).await, Outcome::Rejected);
        assert_eq!(w.fake.requests().len(), before);
        assert_eq!(w.fake.orders().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn holdings_sum_long_term_holdings_and_day_positions() {
    bounded(async {
        let w = world("ux-holdings", |_| {}).await;
        w.fake.set_portfolio(KEY, 10, -4);
        w.fake.set_portfolio("NSE_EQ|INE002A01018", 0, 3);
        let h = w.broker.holdings().await.expect("holdings");
        let sym = |s: &str| Symbol::try_from(s).expect("symbol");
        assert_eq!(h, vec![(sym("BOSCHLTD"), q("6")), (sym("NSE_EQ|INE002A01018"), q("3"))]);
    })
    .await;
}

#[test]
fn history_of_a_sliced_order_is_summed() {
    let body = br#"{"status":"success","data":[
        {"order_id":"1","status":"put order req received","quantity":1800,"filled_quantity":0,"average_price":0.0},
        {"order_id":"2","status":"put order req received","quantity":200,"filled_quantity":0,"average_price":0.0},
        {"order_id":"1","status":"complete","quantity":1800,"filled_quantity":1800,"average_price":100.0},
        {"order_id":"2","status":"open","quantity":200,"filled_quantity":100,"average_price":101.0}]}"#;
    let price = |s: &str| Some(Price::parse(s).expect("price"));
    assert_eq!(
        history_outcome(body),
        Some(Some(Outcome::Working { executed: q("1900"), price: price("100.0526") }))
    );
    let done = br#"{"status":"success","data":[
        {"order_id":"1","status":"complete","quantity":1800,"filled_quantity":1800,"average_price":100.0},
        {"order_id":"2","status":"cancelled","quantity":200,"filled_quantity":0,"average_price":0.0}]}"#;
    assert_eq!(
        history_outcome(done),
        Some(Some(Outcome::PartiallyFilled { executed: q("1800"), price: price("100") }))
    );
    assert_eq!(history_outcome(br#"{"status":"success","data":[]}"#), Some(None));
    assert_eq!(history_outcome(b"garbage"), None);
}
