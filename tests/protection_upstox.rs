//! Issue 12, the Upstox edge and reconciliation: regression tests named for the issue's defects.
//!
//! - Through the real `tickguard run` binary on loopback (the fake Upstox feed and LTP quote of
//!   `tests/support/upstox_feed.rs`, the fake order and portfolio API of
//!   `tests/support/fake_upstox.rs`, loopback DNS, a throw-away CA): defect 6 (a symbol mapped
//!   only through `[feed.instrument_keys]` and registered over the API), defect 7 (an Upstox
//!   short is a negative holding, not "holds none"), and the per-key LTP fallback (one key the
//!   venue refuses never takes the LTP away from the others).
//! - In process: reconciliation (`runtime::reconcile::once`) against the real Upstox broker
//!   on partial or failed portfolio answers, and against a scripted broker whose holdings answer
//!   is held until a registration is made; the frame path (`feed::upstox::apply_frame`) with a
//!   zero and a negative price in a frame of several instruments.
//!
//! Reconciliation runs once at start-up (then every 60 s): the binary tests restart the
//! appliance on its journal so that the positions exist when it runs. Every test is bounded.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::app::App;
use support::ca::TestCa;
use support::edge_world::{api_text, wait_subscribed};
use support::fake_upstox::FakeUpstox;
use support::guard::free_port;
use support::upstox_feed::{FeedFault, TOKEN, feed_for, feed_frame, status};
use support::upstox_world::{ADANI_KEY, BOSCH_KEY, KAYNES_KEY, UpstoxSetup, UpstoxWorld};
use tickguard::broker::upstox::{Upstox, UpstoxConfig};
use tickguard::broker::{Broker, CloseOrder, Lookup, Secret};
use tickguard::core::book::{PosState, PositionSpec};
use tickguard::core::engine::{Command, EngineConfig, Outcome};
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{BlindPolicy, PositionId, Side, Symbol};
use tickguard::feed::session::{Ctx, FeedShared};
use tickguard::feed::upstox::{FrameBuf, InstrumentMap, UpstoxShared, apply_frame};
use tickguard::net::http::Endpoint;
use tickguard::runtime::clock::Clock;
use tickguard::runtime::{AppEngine, EngineHandle, engine_task, reconcile};

const LIMIT: Duration = Duration::from_secs(60);
/// A key the venue does not know (its LTP quote refuses any request naming it).
const BAD_KEY: &str = "NSE_EQ|INE000X99999";
/// 10:00 IST on a Wednesday: the market is open.
const WALL: &str = "2026-01-07T10:00:00+05:30";

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f).await.expect("test exceeded its time limit");
}

// ----- the loopback world ----------------------------------------------------------------

/// `support::upstox_world` (NSE_EQ open on every feed connection) and the fake order and
/// portfolio API on `broker.upstox.test`.
struct World {
    upstox: UpstoxWorld,
    /// The order and portfolio API.
    broker: FakeUpstox,
    api_port: u16,
}

impl std::ops::Deref for World {
    type Target = UpstoxWorld;
    fn deref(&self) -> &UpstoxWorld {
        &self.upstox
    }
}

impl World {
    async fn new(name: &str) -> World {
        let upstox = UpstoxWorld::start(name, &[("NSE_EQ", status::NORMAL_OPEN)]).await;
        let broker = FakeUpstox::start(upstox.ca.server_config(&["broker.upstox.test"])).await;
        broker.set_token(TOKEN);
        broker.set_price(BOSCH_KEY, 690.0);
        broker.set_price(ADANI_KEY, 2350.0);
        broker.set_price(KAYNES_KEY, 5400.0);
        World { upstox, broker, api_port: free_port() }
    }

    /// `broker_kind`: `upstox` (the fake order API) or `paper`; `positions`: `[[positions]]`.
    fn config(&self, broker_kind: &str, positions: &str) -> PathBuf {
        let broker = format!(
            "kind = \"{broker_kind}\"\nrest_url = \"https://broker.upstox.test:{bport}\"\norder_url = \"https://broker.upstox.test:{bport}\"\npaper_fill_delay_s = 0.05",
            bport = self.broker.port,
        );
        self.upstox.config(&UpstoxSetup {
            api_port: self.api_port,
            api_token: true,
            market_hours: "09:15-15:30 Asia/Kolkata Mon-Fri",
            extra_feed: "",
            stale_after_s: 5.0,
            broker: &broker,
            positions,
        })
    }

    /// A request to the binary's API with the bearer token: (status, body). Retries (bounded)
    /// until the API accepts a connection.
    async fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        for _ in 0..100 {
            match api_text(self.api_port, method, path, body).await {
                Some(answer) => return answer,
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("the API on 127.0.0.1:{} never accepted a connection", self.api_port);
    }

    /// Waits until both portfolio reads were asked `n` times at least.
    async fn wait_portfolio_reads(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.broker.portfolio_reads(true) >= n && self.broker.portfolio_reads(false) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The account no longer holds ADANIENT (sold by hand): restarts the appliance on
    /// `config` and waits for the start-up reconciliation to close the `adani` position
    /// externally (which shows it ran and judged the book), then 300 ms more.
    async fn restart_after_adani_sold(&self, config: &Path) -> App {
        self.broker.set_portfolio(ADANI_KEY, 0, 0);
        let reads = self.broker.portfolio_reads(false);
        let app = start_app(config);
        assert!(
            self.wait_portfolio_reads(reads + 1, Duration::from_secs(10)).await,
            "reconciled at start-up"
        );
        app.expect_from(0, "adani closed externally", closed_externally("adani"), Duration::from_secs(5))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        app
    }

    /// The API shows position `id` open.
    async fn assert_open(&self, id: &str) {
        let (code, pos) = self.api("GET", &format!("/api/v1/positions/{id}"), "").await;
        assert_eq!(code, 200, "{pos}");
        assert!(pos.contains("\"open\""), "still open: {pos}");
    }

    /// Waits (5 s at most) until the broker has an order.
    async fn wait_orders(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.broker.orders().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn start_app(config: &Path) -> App {
    App::start_with_env(config, &[("TICKGUARD_FAKE_WALL_CLOCK", WALL)], "PROTECTION_UPSTOX_ECHO")
}

fn closed_externally(id: &str) -> impl Fn(&str) -> bool {
    let pat = format!("[CLOSE] id={id} ");
    move |l: &str| l.contains(&pat) && l.contains("event=closed_externally")
}

/// A configured long on ADANIENT: after a restart, the account holds none of it any more
/// (sold by hand), so reconciliation closing it externally shows that reconciliation ran and
/// judged the book.
const ADANI: &str = r#"
[[positions]]
id = "adani"
symbol = "ADANIENT"
side = "long"
qty = 4
entry = "2300.00"
stop_loss = "2200.00"
"#;

// ----- defect 6 ---------------------------------------------------------------------------

/// BOSCHLTD is mapped only through `[feed.instrument_keys]` (not in `feed.instruments`, in no
/// `[[positions]]`) and registered over the API. After a restart, reconciliation reads the
/// account's 10 shares under BOSCHLTD (not under its key) and leaves it open; when its stop is
/// crossed, the close order reaches the broker with BOSCHLTD's `instrument_token`.
///
/// This morning the broker's map was built from the configuration's symbols only: holdings
/// came back under `NSE_EQ|INE323A01026`, BOSCHLTD was missing from an "exhaustive" list, and
/// the position was closed externally at start-up (and a close would have been refused: "no
/// instrument_token for the symbol").
#[tokio::test]
async fn defect_06_symbol_mapped_only_through_instrument_keys_closes_with_its_token() {
    bounded(async {
        let w = World::new("pu-defect06").await;
        w.broker.set_portfolio(BOSCH_KEY, 10, 0);
        w.broker.set_portfolio(ADANI_KEY, 4, 0);
        let config = w.config("upstox", ADANI);
        let app = start_app(&config);
        wait_subscribed(&app, 0).await;
        let body = r#"{"id":"bosch-api","symbol":"BOSCHLTD","side":"long","qty":10,"entry":"735.00","stop_loss":"698.25"}"#;
        let (code, answer) = w.api("POST", "/api/v1/positions", body).await;
        assert_eq!(code, 201, "registered: {answer}");
        assert_eq!(app.stop().await, Some(0));

        // Overnight, ADANIENT was sold by hand; BOSCHLTD is still held.
        let app = w.restart_after_adani_sold(&config).await;
        assert!(
            app.find_from(0, closed_externally("bosch-api")).is_none(),
            "BOSCHLTD is held (10): never closed externally:\n{}",
            app.tail()
        );
        w.assert_open("bosch-api").await;

        // The stop is crossed on the live feed: one close order, with BOSCHLTD's token.
        assert!(
            w.up.wait_for(
                |u| u.conns().last().is_some_and(|c| c.subscribed.contains_key(BOSCH_KEY)),
                Duration::from_secs(10)
            )
            .await,
            "BOSCHLTD subscribed after the restart: {:?}",
            w.up.conns()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.up.tick(BOSCH_KEY, 690.0);
        app.expect_from(0, "[SL] bosch-api", |l| l.contains("[SL] id=bosch-api"), Duration::from_secs(5)).await;
        w.wait_orders().await;
        let orders = w.broker.orders();
        assert_eq!(orders.len(), 1, "one close order: {orders:?}\n{}", app.tail());
        assert_eq!(orders[0].instrument_token, BOSCH_KEY);
        assert_eq!((orders[0].side.as_str(), orders[0].quantity), ("SELL", 10));
        app.expect_from(
            0,
            "bosch-api closed",
            |l| l.contains("[CLOSE] id=bosch-api ") && l.contains("event=closed") && l.contains("how=filled"),
            Duration::from_secs(5),
        )
        .await;
        assert!(app.find_from(0, |l| l.contains("event=refused") && l.contains("bosch-api")).is_none());
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- defect 7 ---------------------------------------------------------------------------

/// A short on BOSCHLTD: the account's day position is -10 (Upstox signs short-term positions).
/// Reconciliation at start-up closes the long whose holding went to zero (ADANIENT) and leaves
/// the short alone. This morning a negative holding read as "holds none" and the short was
/// closed externally (its stop never judged again).
#[tokio::test]
async fn defect_07_upstox_short_is_not_closed_externally() {
    bounded(async {
        let w = World::new("pu-defect07-short").await;
        w.broker.set_portfolio(BOSCH_KEY, 0, -10);
        w.broker.set_portfolio(ADANI_KEY, 4, 0);
        let positions = format!(
            "{ADANI}\n[[positions]]\nid = \"bosch-short\"\nsymbol = \"BOSCHLTD\"\nside = \"short\"\nqty = 10\nentry = \"735.00\"\nstop_loss = \"760.00\"\n"
        );
        let config = w.config("upstox", &positions);
        let app = start_app(&config);
        wait_subscribed(&app, 0).await;
        let (code, _) = w.api("GET", "/api/v1/positions/bosch-short", "").await;
        assert_eq!(code, 200);
        assert!(app_never_closed_externally(&app, "bosch-short"), "{}", app.tail());
        assert_eq!(app.stop().await, Some(0));

        let app = w.restart_after_adani_sold(&config).await;
        assert!(
            app_never_closed_externally(&app, "bosch-short"),
            "a short (-10) is held, not none:\n{}",
            app.tail()
        );
        w.assert_open("bosch-short").await;
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

fn app_never_closed_externally(app: &App, id: &str) -> bool {
    app.find_from(0, closed_externally(id)).is_none()
}

// ----- in-process reconciliation ------------------------------------------------------------

fn spec(id: &str, symbol: &str, side: Side, qty: &str) -> PositionSpec {
    let entry = Price::parse("100").expect("price");
    PositionSpec {
        id: PositionId::try_from(id).expect("id"),
        symbol: Symbol::try_from(symbol).expect("symbol"),
        side,
        qty: Qty::parse(qty).expect("qty"),
        entry,
        stop_loss: None,
        take_profit: None,
        blind_policy: BlindPolicy::Alert,
    }
}

/// An engine task with these positions registered.
/// An engine task with these positions registered (nothing here closes: the broker's
/// requests are kept, never read).
struct Running {
    handle: EngineHandle,
    stop: tokio::sync::watch::Sender<bool>,
    job: tokio::task::JoinHandle<Box<AppEngine>>,
    _broker: tokio::sync::mpsc::Receiver<tickguard::runtime::BrokerRequest>,
}

async fn engine_with(specs: &[PositionSpec]) -> Running {
    let clock = Clock::new();
    let engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (task, handle, broker_rx) = engine_task(engine, clock, stop_rx);
    let job = tokio::spawn(task.run());
    for s in specs {
        handle.command(Command::Register(s.clone())).await.expect("registered");
    }
    Running { handle, stop, job, _broker: broker_rx }
}

async fn state(handle: &EngineHandle, id: &str) -> Option<PosState> {
    let id = id.to_string();
    handle
        .inspect(move |e, _| e.book().iter().find(|(_, p)| p.id.as_str() == id).map(|(_, p)| p.state.clone()))
        .await
        .flatten()
}

/// The real Upstox broker against the fake portfolio API: a failed portfolio read (either of
/// the two) and a partial answer (a row whose quantity or instrument cannot be read) are
/// errors, and nothing is closed externally; once the answer is whole, exactly-zero holdings
/// close and the rest stay. This morning an unreadable quantity read as 0 and a row without
/// an instrument left its symbol missing from an "exhaustive" list: both were closed.
#[tokio::test]
async fn defect_07_partial_or_failed_holdings_never_close_externally() {
    bounded(async {
        support::init_logs();
        let dir = support::test_dir("pu-defect07-partial");
        let ca = TestCa::new(&dir);
        let fake = FakeUpstox::start(ca.server_config(&["127.0.0.1"])).await;
        let ep = Endpoint::parse(&fake.base_url()).expect("url");
        let mut cfg = UpstoxConfig::new(ep.clone(), ep);
        cfg.instrument_keys = Arc::new(InstrumentMap::from_pairs([
            ("BOSCHLTD", BOSCH_KEY),
            ("ADANIENT", ADANI_KEY),
            ("KAYNES", KAYNES_KEY),
        ]));
        let broker = Upstox::new(cfg, Secret::new(support::fake_upstox::TOKEN), ca.tickguard_connector());
        let Running { handle, stop, job, _broker } = engine_with(&[
            spec("bosch", "BOSCHLTD", Side::Long, "10"),
            spec("adani", "ADANIENT", Side::Long, "4"),
            spec("kaynes", "KAYNES", Side::Long, "2"),
        ])
        .await;
        // The account: BOSCHLTD 10 (long-term), ADANIENT 4 (today), KAYNES sold (0).
        fake.set_portfolio(KAYNES_KEY, 0, 0);
        let all_open = |h: EngineHandle| async move {
            for id in ["bosch", "adani", "kaynes"] {
                assert_eq!(state(&h, id).await, Some(PosState::Open), "{id}");
            }
        };

        // Either read fails: an error, nothing judged.
        for holdings in [true, false] {
            fake.set_portfolio_status(holdings, Some(503));
            let r = reconcile::once(&broker, &handle).await;
            assert!(r.is_err(), "a failed read is an error: {r:?}");
            fake.set_portfolio_status(holdings, None);
            all_open(handle.clone()).await;
        }
        // BOSCHLTD's holding row with a quantity that cannot be read ("10" as a string).
        fake.set_portfolio_extra_rows(
            true,
            Some(vec![json!({"instrument_token": BOSCH_KEY, "quantity": "10", "product": "D"})]),
        );
        fake.set_portfolio_extra_rows(
            false,
            Some(vec![json!({"instrument_token": ADANI_KEY, "quantity": 4, "product": "D"})]),
        );
        let r = reconcile::once(&broker, &handle).await;
        assert!(r.is_err(), "an unreadable quantity is not zero: {r:?}");
        all_open(handle.clone()).await;
        // ADANIENT's day position row without its instrument: the answer is partial.
        fake.set_portfolio_extra_rows(
            true,
            Some(vec![json!({"instrument_token": BOSCH_KEY, "quantity": 10})]),
        );
        fake.set_portfolio_extra_rows(
            false,
            Some(vec![json!({"trading_symbol": "ADANIENT", "quantity": 4, "product": "D"})]),
        );
        let r = reconcile::once(&broker, &handle).await;
        assert!(r.is_err(), "a row without its instrument makes the answer partial: {r:?}");
        all_open(handle.clone()).await;

        // Whole again: only KAYNES (exactly zero) is closed externally.
        fake.set_portfolio_extra_rows(
            false,
            Some(vec![json!({"instrument_token": ADANI_KEY, "quantity": 4, "product": "D"})]),
        );
        let r = reconcile::once(&broker, &handle).await;
        assert_eq!(r, Ok(1), "KAYNES alone holds none");
        assert_eq!(state(&handle, "bosch").await, Some(PosState::Open));
        assert_eq!(state(&handle, "adani").await, Some(PosState::Open));
        assert_ne!(state(&handle, "kaynes").await, Some(PosState::Open));
        let _ = stop.send(true);
        let _ = job.await;
    })
    .await;
}

/// A broker whose holdings answer is the account as it was when the request was sent (it
/// holds none of anything), delivered only once the test says so.
struct HeldAnswer {
    asked: tokio::sync::Notify,
    release: tokio::sync::Notify,
    answer: Vec<(Symbol, Qty)>,
}

impl Broker for HeldAnswer {
    async fn place(&self, _order: &CloseOrder) -> Outcome {
        Outcome::Rejected
    }
    async fn lookup(&self, _symbol: &str, _client_id: &str) -> Lookup {
        Lookup::Failed("not here".into())
    }
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        self.asked.notify_one();
        self.release.notified().await;
        Ok(self.answer.clone())
    }
    fn absent_after(&self) -> Duration {
        Duration::ZERO
    }
    fn holdings_exhaustive(&self) -> bool {
        true
    }
}

/// A position registered while a holdings request is in flight is not in the answer (the bot
/// bought it after the account was read): it is never judged on that answer. The one
/// registered before the request, at zero, is. This morning the book was listed after the
/// answer came back, so the new position read as "holds none" and was closed externally.
#[tokio::test]
async fn defect_07_registration_during_a_holdings_request_is_not_closed() {
    bounded(async {
        let Running { handle, stop, job, _broker } =
            engine_with(&[spec("early", "AAA", Side::Long, "1")]).await;
        let sym = |s: &str| Symbol::try_from(s).expect("symbol");
        let broker = Arc::new(HeldAnswer {
            asked: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
            answer: vec![(sym("AAA"), Qty::ZERO), (sym("BBB"), Qty::ZERO)],
        });
        let run = {
            let (b, h) = (broker.clone(), handle.clone());
            tokio::spawn(async move { reconcile::once(b.as_ref(), &h).await })
        };
        tokio::time::timeout(Duration::from_secs(5), broker.asked.notified()).await.expect("holdings asked");
        handle.command(Command::Register(spec("late", "BBB", Side::Long, "1"))).await.expect("registered");
        assert_eq!(state(&handle, "late").await, Some(PosState::Open));
        broker.release.notify_one();
        let n = tokio::time::timeout(Duration::from_secs(5), run).await.expect("done").expect("joined");
        assert_eq!(n, Ok(1), "only the position registered before the request is judged");
        assert_eq!(state(&handle, "late").await, Some(PosState::Open), "registered during the request");
        assert_ne!(state(&handle, "early").await, Some(PosState::Open), "held none, registered before");
        let _ = stop.send(true);
        let _ = job.await;
    })
    .await;
}

// ----- the LTP fallback, per key -----------------------------------------------------------

/// The feed is down, so prices come from the LTP quote. One position is on a key the venue
/// refuses (Upstox fails the whole request on one bad key): the poller splits the batch,
/// reports the offender (`[FALLBACK] event=rest_symbol_refused`) and keeps BOSCHLTD priced, so
/// its stop closes it on the REST price; the REST counters move. This morning every LTP
/// request carried the bad key and failed whole: no REST price for anyone.
#[tokio::test]
async fn defect_04_upstox_one_refused_key_keeps_ltp_for_the_others() {
    bounded(async {
        let w = World::new("pu-defect04-ltp").await;
        w.up.refuse_ltp_key(BAD_KEY);
        w.up.set_feed_fault(FeedFault::Refuse);
        let positions = format!(
            "{ADANI}\n[[positions]]\nid = \"bosch\"\nsymbol = \"BOSCHLTD\"\nside = \"long\"\nqty = 10\nentry = \"735.00\"\nstop_loss = \"698.25\"\n\n[[positions]]\nid = \"unknown\"\nsymbol = \"{BAD_KEY}\"\nside = \"long\"\nqty = 1\nentry = \"100.00\"\nstop_loss = \"90.00\"\n"
        );
        let app = start_app(&w.config("paper", &positions));
        app.expect_from(
            0,
            "REST polling",
            |l| l.contains("[FALLBACK] event=rest_polling") || l.contains("[FALLBACK] event=rest_error"),
            Duration::from_secs(10),
        )
        .await;
        w.up.set_price(BOSCH_KEY, "BOSCHLTD", 690.0);
        let sl = app.expect_from(0, "[SL] bosch", |l| l.contains("[SL] id=bosch "), Duration::from_secs(5)).await;
        assert!(sl.text.contains("source=rest"), "{}", sl.text);
        let refused = app
            .find_from(0, |l| l.contains("[FALLBACK] event=rest_symbol_refused"))
            .expect("the refused key is reported");
        assert!(refused.text.contains(&format!("symbol={BAD_KEY} ")), "{}", refused.text);
        assert!(refused.text.contains("code=UDAPI1011"), "{}", refused.text);
        assert!(app.find_from(0, |l| l.contains("[SL] id=adani") || l.contains("[SL] id=unknown")).is_none());
        // The refused key is never priced: it goes blind after its grace (5 s), loudly.
        let blind = app
            .expect_from(0, "[BLIND] unknown", |l| l.contains("[BLIND] id=unknown "), Duration::from_secs(10))
            .await;
        assert!(blind.text.contains("state=blind"), "{}", blind.text);
        assert!(app.find_from(0, |l| l.contains("[BLIND] id=adani ")).is_none(), "ADANIENT keeps its LTP");
        let (code, metrics) = w.api("GET", "/metrics", "").await;
        assert_eq!(code, 200);
        let value = |name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        assert!(value("tickguard_rest_polls_total") > 0, "{metrics}");
        assert!(value("tickguard_rest_errors_total") > 0, "the refusals count: {metrics}");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}

// ----- zero prices in a frame ----------------------------------------------------------------

/// One Upstox frame carries many instruments: a zero (no price, proto3's default) and a
/// negative LTP drop those instruments only; the others are handed to the engine. (A guard:
/// this held already this morning.)
#[test]
fn defect_10_zero_or_negative_price_in_an_upstox_frame_drops_that_instrument_only() {
    let clock = Clock::new();
    let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
    let mut keys = BTreeMap::new();
    let mut ids = Vec::new();
    for (sym, key) in [("BOSCHLTD", BOSCH_KEY), ("ADANIENT", ADANI_KEY), ("KAYNES", KAYNES_KEY)] {
        ids.push((engine.add_instrument(sym).expect("room"), sym));
        keys.insert(sym.to_string(), key.to_string());
    }
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_task, handle, _broker) = engine_task(engine, clock, stop_rx);
    let shared = Arc::new(FeedShared::default());
    let ctx = Ctx { shared: shared.clone(), engine: handle.clone(), clock };
    let ux = UpstoxShared::new("/nonexistent".into(), keys);
    for (id, sym) in &ids {
        assert!(ux.add(*id, sym));
    }
    let frame = feed_frame(
        1,
        vec![
            (BOSCH_KEY.into(), feed_for(BOSCH_KEY, "ltpc", 0.0, 1)),
            (ADANI_KEY.into(), feed_for(ADANI_KEY, "full", 2350.5, 1)),
            (KAYNES_KEY.into(), feed_for(KAYNES_KEY, "ltpc", -5.0, 1)),
        ],
    );
    let before = handle.ticks.stats().pushed;
    let (out, err) = apply_frame(&frame, &ux, &ctx, &mut FrameBuf::default(), &["NSE_EQ".to_string()]);
    assert!(err.is_none(), "{err:?}");
    assert!(out.ok);
    assert_eq!(out.ticks, 1, "ADANIENT's price passes: {out:?}");
    assert_eq!(handle.ticks.stats().pushed - before, 1);
    assert_eq!(shared.ticks.load(Ordering::Relaxed), 1);
}

/// One instrument watched under two symbols (its configured symbol, and its key registered as
/// a symbol of its own): one frame entry prices both. This morning the key table kept one
/// instrument per key, so the second symbol registered silently took the other's prices away.
#[test]
fn defect_06_a_key_watched_under_two_symbols_prices_both() {
    let clock = Clock::new();
    let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
    let by_symbol = engine.add_instrument("BOSCHLTD").expect("room");
    let by_key = engine.add_instrument(BOSCH_KEY).expect("room");
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (_task, handle, _broker) = engine_task(engine, clock, stop_rx);
    let shared = Arc::new(FeedShared::default());
    let ctx = Ctx { shared: shared.clone(), engine: handle.clone(), clock };
    let map = Arc::new(InstrumentMap::from_pairs([("BOSCHLTD", BOSCH_KEY)]));
    let ux = UpstoxShared::with_map("/nonexistent".into(), map.clone());
    assert!(ux.add(by_symbol, "BOSCHLTD"));
    assert!(ux.add(by_key, BOSCH_KEY));
    let frame = feed_frame(1, vec![(BOSCH_KEY.into(), feed_for(BOSCH_KEY, "ltpc", 690.0, 1))]);
    let before = handle.ticks.stats().pushed;
    let (out, err) = apply_frame(&frame, &ux, &ctx, &mut FrameBuf::default(), &["NSE_EQ".to_string()]);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(out.ticks, 2, "both symbols priced: {out:?}");
    assert_eq!(handle.ticks.stats().pushed - before, 2);
    // The broker's side of the same map knows both symbols by the one key.
    let mut symbols = map.symbols_of(BOSCH_KEY);
    symbols.sort();
    assert_eq!(symbols, vec!["BOSCHLTD".to_string(), BOSCH_KEY.to_string()]);
}

// ----- defect 6 (product) -----------------------------------------------------------------

/// Defect 6b through the binary: a position registered over the API with `"product":"I"`
/// (intraday) closed as delivery after a restart, because the product was not journaled. Now it
/// is on disk before the 201, and after kill -9 the close order carries `product=I`.
#[tokio::test]
async fn defect_06_intraday_product_survives_kill_9() {
    bounded(async {
        let w = World::new("pu-defect06-product").await;
        w.broker.set_portfolio(BOSCH_KEY, 0, 10);
        w.broker.set_portfolio(ADANI_KEY, 4, 0);
        let config = w.config("upstox", ADANI);
        let mut app = start_app(&config);
        wait_subscribed(&app, 0).await;
        let body = r#"{"id":"bosch-mis","symbol":"BOSCHLTD","side":"long","qty":10,"entry":"735.00","stop_loss":"698.25","product":"I"}"#;
        let (code, answer) = w.api("POST", "/api/v1/positions", body).await;
        assert_eq!(code, 201, "registered: {answer}");
        let _ = app.child.kill(); // SIGKILL right after the 201
        let _ = app.child.wait();
        let app = start_app(&config);
        assert!(
            w.up.wait_for(
                |u| u.conns().last().is_some_and(|c| c.subscribed.contains_key(BOSCH_KEY)),
                Duration::from_secs(10)
            )
            .await,
            "BOSCHLTD subscribed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.up.tick(BOSCH_KEY, 690.0);
        w.wait_orders().await;
        let orders = w.broker.orders();
        assert_eq!(orders.len(), 1, "one close order: {orders:?}\n{}", app.tail());
        assert_eq!(orders[0].product, "I", "the intraday product survived the kill: {orders:?}");
        assert_eq!(app.stop().await, Some(0));
    })
    .await;
}
