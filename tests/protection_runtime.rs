//! Issue 12 over the real wiring (`runtime::app::run_with_edges`: journal, restore, engine task,
//! executor, control plane) with a scripted broker and feed, in-process:
//! - defect 7 (third part): a close decided while the market is closed is held until the open;
//!   it used to be sent at the open even if the trader sold by hand overnight. Now the executor
//!   reads the holdings right before sending it.
//! - defect 9 (last part): pruning old closed positions let a `[[positions]]` entry that closed
//!   long ago be registered and sold again. Now its id is remembered and the entry skipped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickguard::broker::{Broker, CloseOrder, Lookup};
use tickguard::core::engine::{FeedEvent, Outcome};
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{Quote, Source, Symbol, Tick};
use tickguard::runtime::EngineHandle;
use tickguard::runtime::app::{EdgeSpawner, EdgeWiring, Edges, run_with_edges};
use tokio::sync::{oneshot, watch};

/// A broker whose holdings the test sets; it records every order and fills it.
#[derive(Default)]
struct Scripted {
    placed: Mutex<Vec<CloseOrder>>,
    holds: Mutex<Option<Vec<(Symbol, Qty)>>>,
    exhaustive: AtomicBool,
}

impl Broker for Scripted {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        if let Ok(mut v) = self.placed.lock() {
            v.push(order.clone());
        }
        Outcome::Filled { executed: order.qty, price: order.price_hint }
    }
    async fn lookup(&self, _symbol: &str, _client_id: &str) -> Lookup {
        Lookup::Absent
    }
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        self.holds.lock().ok().and_then(|h| h.clone()).ok_or_else(|| "holdings down".to_string())
    }
    fn absent_after(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn holdings_exhaustive(&self) -> bool {
        self.exhaustive.load(Ordering::Relaxed)
    }
}

fn config(dir: &std::path::Path) -> tickguard::config::Config {
    config_with(dir, "")
}

fn config_with(dir: &std::path::Path, extra: &str) -> tickguard::config::Config {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let text = format!(
        r#"[api]
listen = "127.0.0.1:{port}"
[store]
dir = "{dir}/state"
[[positions]]
id = "night"
symbol = "BOSCHLTD"
side = "long"
qty = 10
entry = "735"
stop_loss = "698.25"
{extra}
"#,
        dir = dir.display()
    );
    tickguard::config::parse_str(&text, "test", std::iter::empty()).expect("config")
}

/// Starts the wiring; returns the handle, the stop sender and the run's join handle.
async fn start(
    broker: Arc<Scripted>,
    dir: &std::path::Path,
) -> (EngineHandle, watch::Sender<bool>, tokio::task::JoinHandle<std::process::ExitCode>) {
    start_on(broker, config(dir)).await
}

async fn start_on(
    broker: Arc<Scripted>,
    cfg: tickguard::config::Config,
) -> (EngineHandle, watch::Sender<bool>, tokio::task::JoinHandle<std::process::ExitCode>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    // The feed: up, market closed. The test drives prices and the open itself.
    let spawn: EdgeSpawner = Box::new(|w: EdgeWiring| {
        vec![tokio::spawn(async move {
            w.engine.feed(FeedEvent::SubscribedAll).await;
            w.engine.feed(FeedEvent::Market(false)).await;
        })]
    });
    let edges = Edges {
        broker,
        spawn,
        reconcile: false,
        products: None,
        symbols: None,
        recovered: None,
        ready_every: None,
    };
    let run = tokio::spawn(run_with_edges(cfg, stop_rx, Some(ready_tx), edges));
    let handle =
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.expect("ready in time").expect("ready");
    (handle, stop_tx, run)
}

async fn state_of(handle: &EngineHandle, id: &'static str) -> String {
    handle
        .inspect(move |e, _| {
            e.book().find(id).and_then(|i| e.book().get(i)).map(|p| match &p.state {
                tickguard::core::book::PosState::Closed { how, .. } => format!("closed:{}", how.as_str()),
                s => s.as_str().to_string(),
            })
        })
        .await
        .flatten()
        .unwrap_or_default()
}

async fn cross_while_closed(handle: &EngineHandle) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = handle.inspect(|e, _| e.cache().lookup("BOSCHLTD")).await.flatten().expect("watched");
    let now = tickguard::runtime::clock::Clock::new().now();
    let q = Quote {
        bid: Price::parse("690").ok(),
        ask: Price::parse("690.5").ok(),
        last: None,
        source: Source::Live,
        exch_ts: None,
        dated: now,
    };
    handle.ticks.push(Tick::new(id, q));
    for _ in 0..50 {
        if state_of(handle, "night").await == "closing" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the crossing was never decided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_07_held_close_is_not_sent_when_the_account_sold_overnight() {
    let dir = tempdir("held-sold");
    let broker = Arc::new(Scripted::default());
    broker.exhaustive.store(true, Ordering::Relaxed);
    let (handle, stop, run) = start(broker.clone(), &dir).await;
    cross_while_closed(&handle).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(broker.placed.lock().map(|v| v.is_empty()).unwrap_or(false), "held while closed");
    // Overnight the trader sold by hand: the account holds none.
    if let Ok(mut h) = broker.holds.lock() {
        *h = Some(vec![(Symbol::try_from("BOSCHLTD").expect("fits"), Qty::ZERO)]);
    }
    handle.feed(FeedEvent::Market(true)).await;
    let mut closed = String::new();
    for _ in 0..100 {
        closed = state_of(&handle, "night").await;
        if closed.starts_with("closed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(closed, "closed:external");
    assert!(broker.placed.lock().map(|v| v.is_empty()).unwrap_or(false), "nothing sold twice");
    let _ = stop.send(true);
    let _ = run.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_close_is_sent_when_holdings_cannot_be_read() {
    let dir = tempdir("held-unknown");
    let broker = Arc::new(Scripted::default());
    let (handle, stop, run) = start(broker.clone(), &dir).await;
    cross_while_closed(&handle).await;
    // Holdings down: a crossed stop never stays open on a guess.
    handle.feed(FeedEvent::Market(true)).await;
    let mut placed = 0;
    for _ in 0..100 {
        placed = broker.placed.lock().map(|v| v.len()).unwrap_or(0);
        if placed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(placed, 1);
    let _ = stop.send(true);
    let _ = run.await;
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defect_09_configured_position_closed_long_ago_is_never_registered_again() {
    use tickguard::core::book::ClosedHow;
    use tickguard::store::{Fsync, Journal, Record};
    let dir = tempdir("pruned-config");
    // The journal of a box that closed "night" long ago, then more positions than the book
    // remembers (`CLOSED_REMEMBERED`), so "night" itself was pruned from the state.
    {
        let (j, _) = Journal::open(&dir.join("state"), Fsync::Never, 64 * 1024).expect("journal");
        let reg = |id: &str, generation: u32| Record::Registered {
            id: id.into(),
            generation,
            symbol: "BOSCHLTD".into(),
            side: 0,
            qty: 1_000_000_000,
            entry: 73_500_000_000,
            stop_loss: Some(69_825_000_000),
            take_profit: None,
            blind: 0,
        };
        j.append_batch(&[reg("night", 1), tickguard::store::closed_record("night", ClosedHow::Filled)])
            .expect("append");
        // Enough that a compaction (every 64 KiB of journal) runs past the limit and prunes.
        let n = tickguard::limits::CLOSED_REMEMBERED + 1_500;
        for i in 0..n {
            let id = format!("later{i}");
            j.append_batch(&[
                reg(&id, 2 + i as u32),
                tickguard::store::closed_record(&id, ClosedHow::Withdrawn),
            ])
            .expect("append");
        }
        let st = j.state();
        assert!(
            !st.positions.contains_key("night"),
            "pruned from the state: {} positions",
            st.positions.len()
        );
        assert!(j.closed("night").is_some(), "but its id is remembered");
    }
    let broker = Arc::new(Scripted::default());
    let (handle, stop, run) = start_on(broker.clone(), config(&dir)).await;
    // The `[[positions]]` entry "night" was skipped: not in the book, nothing to sell.
    let known = handle.inspect(|e, _| e.book().find("night").is_some()).await;
    assert_eq!(known, Some(false), "a configured id that ever closed is never registered again");
    cross_and_wait(&handle).await;
    assert!(broker.placed.lock().map(|v| v.is_empty()).unwrap_or(false), "never sold twice");
    let _ = stop.send(true);
    let _ = run.await;
}

/// Pushes a crossing price for BOSCHLTD and gives the engine time to act on it.
async fn cross_and_wait(handle: &EngineHandle) {
    let Some(Some(id)) = handle.inspect(|e, _| e.cache().lookup("BOSCHLTD")).await else { return };
    let q = Quote {
        bid: Price::parse("690").ok(),
        ask: Price::parse("690.5").ok(),
        last: None,
        source: Source::Live,
        exch_ts: None,
        dated: tickguard::runtime::clock::Clock::new().now(),
    };
    handle.ticks.push(Tick::new(id, q));
    tokio::time::sleep(Duration::from_millis(300)).await;
}
