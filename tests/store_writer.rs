//! Issue 14, the journal writer thread: one thread (`tg-journal`) owns every append and fsync;
//! the engine hands records over and never waits on the disk, a reply that promises durability
//! waits for its record's fsync, an order waits for its intent's fsync, and concurrent batches
//! share one write and one fsync (ordered group commit).
//!
//! The in-process tests run the real wiring (`runtime::app::run_with_edges`: journal, engine
//! task, executor) with a scripted broker; the slow disk is `FaultPlan::delay_fsyncs` (what
//! `--fault fsync-delay@DURATION` arms), armed for every journal this process opens, so the
//! tests of this file take turns (`SERIAL`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickguard::broker::{Broker, CloseOrder, Lookup};
use tickguard::core::CoreError;
use tickguard::core::book::PositionSpec;
use tickguard::core::engine::{Command, FeedEvent, Outcome};
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{BlindPolicy, Quote, Side, Source, Symbol, Tick};
use tickguard::runtime::EngineHandle;
use tickguard::runtime::app::{EdgeSpawner, EdgeWiring, Edges, run_with_edges};
use tickguard::store::{FaultPlan, Fsync, Journal, Record};
use tokio::sync::{oneshot, watch};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A broker that records every order and fills it.
#[derive(Default)]
struct Scripted {
    placed: Mutex<Vec<(Instant, CloseOrder)>>,
}

impl Scripted {
    fn placed_for(&self, id: &str) -> usize {
        self.placed.lock().map(|v| v.iter().filter(|(_, o)| o.pos_id.as_str() == id).count()).unwrap_or(0)
    }
}

impl Broker for Scripted {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        if let Ok(mut v) = self.placed.lock() {
            v.push((Instant::now(), order.clone()));
        }
        Outcome::Filled { executed: order.qty, price: order.price_hint }
    }
    async fn lookup(&self, _symbol: &str, _client_id: &str) -> Lookup {
        Lookup::Absent
    }
    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        Err("not asked".into())
    }
    fn absent_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("writer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

const TOKEN: &str = "writer-test-token-0123456789abcdef";

/// The API port of a test's configuration (written next to it).
fn api_port(dir: &std::path::Path) -> u16 {
    std::fs::read_to_string(dir.join("port")).ok().and_then(|s| s.trim().parse().ok()).expect("port file")
}

/// `POST path body` with the token over plain HTTP on 127.0.0.1: the status code.
fn http_post(port: u16, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// One configured position, `b` on BBB (stop 90); the API on a free port with a token.
fn config(dir: &std::path::Path) -> tickguard::config::Config {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    std::fs::write(dir.join("port"), port.to_string()).expect("port file");
    std::fs::write(dir.join("token"), TOKEN).expect("token file");
    let text = format!(
        r#"[api]
listen = "127.0.0.1:{port}"
token_file = "{dir}/token"
[store]
dir = "{dir}/state"
[[positions]]
id = "b"
symbol = "BBB"
side = "long"
qty = 10
entry = "100"
stop_loss = "90"
"#,
        dir = dir.display()
    );
    tickguard::config::parse_str(&text, "test", std::iter::empty()).expect("config")
}

async fn start(
    broker: Arc<Scripted>,
    dir: &std::path::Path,
) -> (EngineHandle, watch::Sender<bool>, tokio::task::JoinHandle<std::process::ExitCode>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    // The feed: up, market open. The test drives prices itself.
    let spawn: EdgeSpawner = Box::new(|w: EdgeWiring| {
        vec![tokio::spawn(async move {
            w.engine.feed(FeedEvent::SubscribedAll).await;
            w.engine.feed(FeedEvent::Market(true)).await;
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
    let run = tokio::spawn(run_with_edges(config(dir), stop_rx, Some(ready_tx), edges));
    let handle =
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.expect("ready in time").expect("ready");
    (handle, stop_tx, run)
}

async fn state_of(handle: &EngineHandle, id: &'static str) -> String {
    handle
        .inspect(move |e, _| {
            e.book().find(id).and_then(|i| e.book().get(i)).map(|p| p.state.as_str().to_string())
        })
        .await
        .flatten()
        .unwrap_or_default()
}

async fn wait_state(handle: &EngineHandle, id: &'static str, want: &str, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if state_of(handle, id).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

async fn push_bid(handle: &EngineHandle, symbol: &'static str, bid: &str) {
    let mut id = None;
    for _ in 0..500 {
        id = handle.inspect(move |e, _| e.cache().lookup(symbol)).await.flatten();
        if id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let id = id.expect("watched");
    let q = Quote {
        bid: Price::parse(bid).ok(),
        ask: Price::parse(bid).ok(),
        last: None,
        source: Source::Live,
        exch_ts: None,
        dated: tickguard::runtime::clock::Clock::new().now(),
    };
    handle.ticks.push(Tick::new(id, q));
}

fn spec(id: &str, symbol: &str) -> PositionSpec {
    PositionSpec {
        id: id.try_into().expect("id"),
        symbol: Symbol::try_from(symbol).expect("symbol"),
        side: Side::Long,
        qty: Qty::parse("10").expect("qty"),
        entry: Price::parse("100").expect("entry"),
        stop_loss: Price::parse("90").ok(),
        take_profit: None,
        blind_policy: BlindPolicy::Alert,
    }
}

fn journal_records(dir: &std::path::Path) -> Vec<Record> {
    let bytes = std::fs::read(dir.join("state").join("journal.tg")).expect("journal");
    tickguard::store::read_frames(&bytes).0
}

/// (1) A registration waiting 300 ms for its fsync does not stop the engine: a crossing on
/// another instrument is decided within a few milliseconds meanwhile. And (4): the decision's
/// record precedes its order's intent in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // `SERIAL` serializes whole tests, each on its own runtime
async fn the_engine_judges_ticks_while_a_registration_waits_for_its_fsync() {
    let _serial = serial();
    let delay = Duration::from_millis(300);
    let plan = FaultPlan::new();
    plan.delay_fsyncs(delay);
    tickguard::store::arm_fault_plan(Some(plan));
    let dir = tempdir("slow");
    let broker = Arc::new(Scripted::default());
    let (handle, stop, run) = start(broker.clone(), &dir).await;
    tickguard::store::arm_fault_plan(None);
    assert!(wait_state(&handle, "b", "open", Duration::from_secs(5)).await, "b registered at start-up");

    // A registration of `a` on another instrument: its answer waits for its fsync (300 ms).
    let h = handle.clone();
    let t_reg = Instant::now();
    let reg = tokio::spawn(async move {
        let r = h.command(Command::Register(spec("a", "AAA"))).await;
        (r, t_reg.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Meanwhile `b` crosses its stop.
    let t0 = Instant::now();
    push_bid(&handle, "BBB", "85").await;
    assert!(wait_state(&handle, "b", "closing", Duration::from_secs(2)).await, "b's crossing decided");
    let decided = t0.elapsed();
    assert!(!reg.is_finished(), "the registration is still waiting for its fsync");
    let (r, answered) = reg.await.expect("register task");
    assert!(matches!(r, Ok(tickguard::core::engine::Reply::Registered { .. })), "{r:?}");
    eprintln!(
        "fsync delay {delay:?}: b's crossing decided {decided:?} after its tick while a's registration waited; a answered after {answered:?}"
    );
    assert!(decided < Duration::from_millis(100), "decided within the delay: {decided:?}");
    assert!(answered >= delay - Duration::from_millis(50), "the answer waited for the fsync: {answered:?}");
    // b's order leaves once its intent is durable (another fsync), exactly once.
    let t = Instant::now();
    while broker.placed_for("b") == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(broker.placed_for("b"), 1);
    assert!(wait_state(&handle, "b", "closed", Duration::from_secs(5)).await);
    let _ = stop.send(true);
    let _ = run.await;

    // (4) Order in the file: b's decision, then its intent, then its outcome; a's registration is there.
    let recs = journal_records(&dir);
    let at = |f: &dyn Fn(&Record) -> bool| recs.iter().position(f);
    let decided_at = at(&|r| matches!(r, Record::Decided { id, .. } if id == "b")).expect("decided record");
    let intent_at = at(&|r| matches!(r, Record::Intent { id, .. } if id == "b")).expect("intent record");
    let outcome_at = at(&|r| matches!(r, Record::Outcome { id, .. } if id == "b")).expect("outcome record");
    assert!(decided_at < intent_at && intent_at < outcome_at, "{recs:?}");
    assert!(recs.iter().any(|r| matches!(r, Record::Registered { id, .. } if id == "a")));
}

/// (2) A registration whose fsync fails is answered NotDurable and is not in the book; a close a
/// tick decided for it meanwhile sends nothing (its intent is refused: the registration it
/// depends on is not in the journal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // `SERIAL` serializes whole tests, each on its own runtime
async fn a_registration_whose_fsync_fails_is_not_durable_and_never_sells() {
    let _serial = serial();
    let plan = FaultPlan::new();
    plan.delay_fsyncs(Duration::from_millis(300));
    tickguard::store::arm_fault_plan(Some(plan.clone()));
    let dir = tempdir("failed");
    let broker = Arc::new(Scripted::default());
    let (handle, stop, run) = start(broker.clone(), &dir).await;
    tickguard::store::arm_fault_plan(None);
    assert!(wait_state(&handle, "b", "open", Duration::from_secs(5)).await, "b registered at start-up");

    plan.fail_fsyncs(1);
    // Through the API: the answer is 503 (NotDurable).
    let port = api_port(&dir);
    let reg = tokio::task::spawn_blocking(move || {
        http_post(
            port,
            "/api/v1/positions",
            r#"{"id":"a","symbol":"AAA","side":"long","qty":10,"entry":100,"stop_loss":90}"#,
        )
    });
    // While the registration waits for its (failing) fsync, `a` crosses: the engine decides.
    tokio::time::sleep(Duration::from_millis(20)).await;
    push_bid(&handle, "AAA", "85").await;
    let decided = wait_state(&handle, "a", "closing", Duration::from_millis(250)).await;
    let status = reg.await.expect("register task");
    assert_eq!(status, 503, "a registration whose fsync failed is answered 503 (NotDurable)");
    assert_eq!(state_of(&handle, "a").await, "", "not in the book after the failed fsync");
    // Whatever was decided for it, nothing leaves.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(broker.placed_for("a"), 0, "no order for a registration that was taken back");
    assert!(decided, "a's crossing was decided while its registration waited (its intent then refused)");

    // A retry registers it anew (durable this time), and a crossing sells it exactly once.
    let r = handle.command(Command::Register(spec("a", "AAA"))).await;
    assert!(r.is_ok(), "{r:?}");
    assert_ne!(r, Err(CoreError::NotDurable));
    push_bid(&handle, "AAA", "84").await;
    let t = Instant::now();
    while broker.placed_for("a") == 0 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(broker.placed_for("a"), 1);
    let _ = stop.send(true);
    let _ = run.await;
}

/// (3) Group commit: batches handed over while an fsync is under way share the next one.
#[test]
fn concurrent_batches_share_fsyncs() {
    let _serial = serial();
    let dir = tempdir("group");
    let (j, _) = Journal::open(&dir, Fsync::Always, 1 << 30).expect("open");
    let j = Arc::new(j);
    let plan = FaultPlan::new();
    plan.delay_fsyncs(Duration::from_millis(40));
    j.set_faults(plan);
    let n = 32;
    let barrier = Arc::new(std::sync::Barrier::new(n));
    let writers: Vec<_> = (0..n)
        .map(|i| {
            let (j, barrier) = (j.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                j.append_batch(&[
                    Record::Reopened { id: format!("r{i}") },
                    Record::Reopened { id: format!("s{i}") },
                ])
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer").expect("append");
    }
    let fsyncs = j.stats().fsyncs();
    eprintln!("{n} concurrent batches: {fsyncs} fsyncs, {} groups", j.stats().groups());
    assert!(fsyncs < n as u64 / 4, "{fsyncs} fsyncs for {n} batches");
    assert_eq!(j.stats().queue_waits(), 0);
    drop(j);
    let (_, rec) = Journal::open(&dir, Fsync::Always, 1 << 30).expect("reopen");
    assert_eq!(rec.records, 2 * n);

    // Async hand-overs without a thread each: one completion per batch, in order in the file.
    let (j, _) = Journal::open(&dir, Fsync::Always, 1 << 30).expect("reopen");
    let plan = FaultPlan::new();
    plan.delay_fsyncs(Duration::from_millis(40));
    j.set_faults(plan);
    let before = j.stats().fsyncs();
    let rxs: Vec<_> = (0..n).map(|i| j.handover(vec![Record::Reopened { id: format!("h{i}") }])).collect();
    for rx in rxs {
        rx.blocking_recv().expect("answered").expect("durable");
    }
    assert!(j.stats().fsyncs() - before <= 2, "{} fsyncs", j.stats().fsyncs() - before);
    drop(j);
    let bytes = std::fs::read(dir.join("journal.tg")).expect("journal");
    let ids: Vec<String> = tickguard::store::read_frames(&bytes)
        .0
        .iter()
        .filter(|r| r.id().starts_with('h'))
        .map(|r| r.id().to_string())
        .collect();
    assert_eq!(ids, (0..n).map(|i| format!("h{i}")).collect::<Vec<_>>(), "in hand-over order");
}

/// `barrier` (what the API waits on after a command) costs no fsync of its own with
/// `Fsync::Always`: every batch is answered after its group's fsync. `sync` (the store probe)
/// does fsync.
#[test]
fn a_barrier_needs_no_fsync_of_its_own() {
    let _serial = serial();
    let dir = tempdir("barrier");
    let (j, _) = Journal::open(&dir, Fsync::Always, 1 << 30).expect("open");
    j.append(&Record::Reopened { id: "x".into() }).expect("append");
    let before = j.stats().fsyncs();
    let t0 = Instant::now();
    j.barrier().expect("barrier");
    assert_eq!(j.stats().fsyncs(), before, "no commit fsync for a barrier");
    let plan = FaultPlan::new();
    plan.delay_fsyncs(Duration::from_millis(100));
    j.set_faults(plan);
    let t1 = Instant::now();
    j.barrier().expect("barrier");
    assert!(t1.elapsed() < Duration::from_millis(50), "a barrier waits for no fsync: {:?}", t1.elapsed());
    let t2 = Instant::now();
    j.sync().expect("sync");
    assert!(t2.elapsed() >= Duration::from_millis(100), "sync fsyncs: {:?}", t2.elapsed());
    eprintln!("barrier {:?}, sync {:?}", t0.elapsed(), t2.elapsed());
    drop(j);
    // With Fsync::Never a barrier fsyncs.
    let (j, _) = Journal::open(&dir, Fsync::Never, 1 << 30).expect("reopen");
    let plan = FaultPlan::new();
    plan.delay_fsyncs(Duration::from_millis(60));
    j.set_faults(plan);
    j.append(&Record::Reopened { id: "y".into() }).expect("append");
    let t3 = Instant::now();
    j.barrier().expect("barrier");
    assert!(t3.elapsed() >= Duration::from_millis(60), "Fsync::Never: the barrier fsyncs");
}

/// A close costs one fsync, not two: the decision's record (nobody waits for it) is written at
/// once and its fsync deferred, so the order's intent, handed over microseconds later, shares
/// it. With every fsync delayed 200 ms, the order reaches the broker about 200 ms after the
/// crossing, not 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // `SERIAL` serializes whole tests, each on its own runtime
async fn a_close_waits_for_one_fsync() {
    let _serial = serial();
    let delay = Duration::from_millis(200);
    let plan = FaultPlan::new();
    plan.delay_fsyncs(delay);
    tickguard::store::arm_fault_plan(Some(plan));
    let dir = tempdir("one-fsync");
    let broker = Arc::new(Scripted::default());
    let (handle, stop, run) = start(broker.clone(), &dir).await;
    tickguard::store::arm_fault_plan(None);
    assert!(wait_state(&handle, "b", "open", Duration::from_secs(5)).await, "b registered at start-up");
    // Let every start-up record settle.
    tokio::time::sleep(delay + Duration::from_millis(100)).await;
    let t0 = Instant::now();
    push_bid(&handle, "BBB", "85").await;
    let mut placed = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if let Some((at, _)) = broker.placed.lock().ok().and_then(|v| v.first().cloned()) {
            placed = Some(at.duration_since(t0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let placed = placed.expect("b's order reached the broker");
    eprintln!("fsync delay {delay:?}: crossing to order at the broker {placed:?}");
    assert!(placed >= delay, "the order waited for its intent's fsync: {placed:?}");
    assert!(placed < delay + delay / 2, "one fsync, not two: {placed:?}");
    let _ = stop.send(true);
    let _ = run.await;
}
