//! The Upstox session in-process, against the fake Upstox (`tests/support/upstox_feed.rs`):
//!
//! - rotation (a connection past `max_lifetime`) and reconnects close the old connection before
//!   the next is authorized and opened: the fake never sees two at once, and every connection
//!   presents its own freshly issued code;
//! - the fake itself: a single-use code, `sub` answered with a snapshot in the requested mode,
//!   `change_mode` and `unsub` honoured, requests taken as binary frames only — checked with
//!   tickguard's own WebSocket client and decoder.
//!
//! Everything runs on 127.0.0.1, bounded by `LIMIT`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::ca::TestCa;
use support::dns::{Behavior, DnsServer};
use support::upstox_feed::{TOKEN, UpstoxFake};
use tickguard::core::engine::EngineConfig;
use tickguard::feed::session::{Ctx, FeedShared};
use tickguard::feed::upstox::{self, Mode, UpstoxConfig, UpstoxShared};
use tickguard::feed::upstox_proto::{self as pb, Entry, Sink};
use tickguard::net::dns::{DnsConfig, Resolver};
use tickguard::net::http::{self, Connector, Endpoint, Req};
use tickguard::net::tls::TlsClient;
use tickguard::net::ws::{self, Event, WsLimits};
use tickguard::runtime::clock::Clock;
use tickguard::runtime::{AppEngine, engine_task};

const LIMIT: Duration = Duration::from_secs(30);
const KEYS: [(&str, &str); 3] = [
    ("BOSCHLTD", "NSE_EQ|INE323A01026"),
    ("ADANIENT", "NSE_EQ|INE423A01024"),
    ("NIFTY", "NSE_INDEX|Nifty 50"),
];

struct World {
    dir: std::path::PathBuf,
    _dns: DnsServer,
    up: UpstoxFake,
    connector: Connector,
}

async fn world(name: &str) -> World {
    support::init_logs();
    let dir = support::test_dir(name);
    let ca = TestCa::new(&dir);
    let dns = DnsServer::start().await;
    dns.set_default(Behavior::Answer(vec![std::net::Ipv4Addr::LOCALHOST]));
    let up = UpstoxFake::start(
        ca.server_config(&["api.upstox.test"]),
        ca.server_config(&["feed.upstox.test"]),
        "feed.upstox.test",
    )
    .await;
    up.set_price(KEYS[0].1, "BOSCHLTD", 730.0);
    up.set_price(KEYS[1].1, "ADANIENT", 2350.0);
    up.set_price(KEYS[2].1, "Nifty 50", 26178.7);
    let resolver = Resolver::new(DnsConfig {
        use_system: false,
        resolv_conf: "/nonexistent".into(),
        nameservers: vec![dns.addr],
        timeout: Duration::from_millis(300),
        cap: Duration::from_secs(1),
    });
    let connector = Connector {
        resolver: Arc::new(resolver),
        tls: TlsClient::new(Some(&ca.ca_path)).expect("tls"),
        connect_timeout: Duration::from_secs(2),
        fresh: Duration::from_secs(150),
    };
    World { dir, _dns: dns, up, connector }
}

#[tokio::test]
async fn rotation_and_reconnects_close_the_old_connection_first() {
    tokio::time::timeout(LIMIT, async {
        let w = world("upstox-rotation").await;
        let token = w.dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let clock = Clock::new();
        let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
        let mut map = BTreeMap::new();
        let mut ids = Vec::new();
        for (sym, key) in KEYS {
            ids.push((engine.add_instrument(sym).expect("room"), sym));
            map.insert(sym.to_string(), key.to_string());
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (task, handle, _broker) = engine_task(engine, clock, stop_rx.clone());
        let engine_job = tokio::spawn(task.run());
        let shared = Arc::new(FeedShared::default());
        let ctx = Ctx { shared: shared.clone(), engine: handle, clock };
        let ux = Arc::new(UpstoxShared::new(token.clone(), map));
        for (id, sym) in &ids {
            assert!(ux.add(*id, sym));
        }
        let cfg = UpstoxConfig {
            rest: Endpoint::parse(&w.up.rest_url("api.upstox.test")).expect("url"),
            token_file: token,
            mode: Mode::Full,
            cap: 2000,
            silence_timeout: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(500),
            jitter: 0.5,
            connect_timeout: Duration::from_secs(3),
            control_spacing: Duration::from_millis(50),
            limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
            max_lifetime: Some(Duration::from_millis(700)),
            rest_poll: Duration::from_secs(1),
            rest_timeout: Duration::from_secs(2),
            seed: 11,
            read_token: upstox::read_token_file,
        };
        let (_added_tx, added_rx) = tokio::sync::mpsc::channel(8);
        let session = tokio::spawn(upstox::run(cfg, w.connector.clone(), ctx, ux, added_rx, stop_rx));
        // Rotations on their own, then a drop in the middle of one connection.
        assert!(w.up.wait_for(|u| u.conns().len() >= 3, Duration::from_secs(10)).await, "{:?}", w.up.conns());
        w.up.apply_now(support::upstox_feed::FeedFault::Reset);
        assert!(w.up.wait_for(|u| u.conns().len() >= 5, Duration::from_secs(10)).await, "{:?}", w.up.conns());
        assert!(shared.rotations.load(Ordering::Relaxed) >= 2, "rotated");
        assert_eq!(w.up.max_concurrent(), 1, "never two connections at once");
        assert_eq!(w.up.concurrent_rejections(), 0);
        assert_eq!(w.up.code_rejections(), 0, "no code used twice");
        let conns = w.up.conns();
        let mut codes: Vec<&str> = conns.iter().map(|c| c.code.as_str()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), conns.len(), "each connection its own code");
        // A connection the reset cut before it subscribed (possible on a loaded machine) sent
        // nothing; at most that one. Every other one subscribed every key.
        let unsubscribed = conns.iter().filter(|c| !c.live && c.requests.is_empty()).count();
        assert!(unsubscribed <= 1, "only the reset connection may have subscribed nothing: {conns:?}");
        for c in conns.iter().filter(|c| !c.live && !c.requests.is_empty()) {
            for (_, key) in KEYS {
                assert_eq!(c.subscribed.get(key).map(String::as_str), Some("full"), "{c:?}");
            }
        }
        let _ = stop_tx.send(true);
        let _ = session.await;
        let _ = engine_job.await;
    })
    .await
    .expect("bounded");
}

#[derive(Default)]
struct Got(Vec<(String, i32, Option<f64>, Option<&'static str>)>);

impl Sink for Got {
    fn entry(&mut self, e: &Entry<'_>) {
        self.0.push((
            String::from_utf8_lossy(e.key).into_owned(),
            e.mode,
            e.last.map(|l| l.ltp),
            e.last.map(|l| l.via.as_str()),
        ));
    }
}

/// The next binary frame, decoded; `None` when nothing comes within `wait`.
async fn next_frame(conn: &mut ws::WsConn, wait: Duration) -> Option<Got> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = tokio::time::timeout_at(deadline, conn.next()).await.ok()?.ok()?;
        if let Event::Binary(b) = ev {
            let mut g = Got::default();
            pb::decode(b, &mut g).expect("the fake sends valid frames");
            return Some(g);
        }
        let _ = conn.flush_control().await;
    }
}

#[tokio::test]
async fn the_fake_upstox_honours_sub_change_mode_unsub_and_single_use_codes() {
    tokio::time::timeout(LIMIT, async {
        let w = world("upstox-fake").await;
        let rest = Endpoint::parse(&w.up.rest_url("api.upstox.test")).expect("url");
        let bearer = format!("Bearer {TOKEN}");
        let req = Req {
            method: "GET",
            path: upstox::AUTHORIZE_PATH,
            headers: &[("authorization", &bearer)],
            body: None,
            timeout: Duration::from_secs(3),
            max_body: 4096,
        };
        let ans = http::request(&w.connector, &rest, req.clone()).await.expect("authorize");
        assert_eq!(ans.status, 200);
        let url = upstox::redirect_uri(&ans.body).expect("url");
        let ep = Endpoint::parse(&url).expect("wss");
        let connect = |ep: Endpoint| {
            let c = w.connector.clone();
            async move {
                let (s, _, _) = c.connect(&ep, false).await.expect("tcp+tls");
                ws::connect(
                    s,
                    &ep.host_header(),
                    &ep.path,
                    &[],
                    WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
                    5,
                )
                .await
            }
        };
        let mut conn = connect(ep.clone()).await.expect("upgrade");
        let (bosch, nifty) = (KEYS[0].1, KEYS[2].1);
        conn.send_binary(upstox::control_message("g1", "sub", Some(Mode::Ltpc), &[bosch, nifty]).as_bytes())
            .await
            .expect("sub");
        let snap = next_frame(&mut conn, Duration::from_secs(2)).await.expect("snapshot");
        assert!(snap.0.contains(&(bosch.to_string(), 0, Some(730.0), Some("ltpc"))), "{:?}", snap.0);
        // change_mode to full: a snapshot in full (an index in indexFF), then ticks in full.
        conn.send_binary(
            upstox::control_message("g2", "change_mode", Some(Mode::Full), &[bosch, nifty]).as_bytes(),
        )
        .await
        .expect("change_mode");
        let snap = next_frame(&mut conn, Duration::from_secs(2)).await.expect("snapshot");
        assert!(snap.0.contains(&(bosch.to_string(), 1, Some(730.0), Some("marketFF"))), "{:?}", snap.0);
        assert!(snap.0.contains(&(nifty.to_string(), 1, Some(26178.7), Some("indexFF"))), "{:?}", snap.0);
        w.up.tick(bosch, 729.5);
        let t = next_frame(&mut conn, Duration::from_secs(2)).await.expect("tick");
        assert_eq!(t.0, vec![(bosch.to_string(), 1, Some(729.5), Some("marketFF"))]);
        // unsub: no more ticks of it.
        conn.send_binary(upstox::control_message("g3", "unsub", None, &[bosch]).as_bytes())
            .await
            .expect("unsub");
        tokio::time::sleep(Duration::from_millis(100)).await;
        w.up.tick(bosch, 729.0);
        assert!(next_frame(&mut conn, Duration::from_millis(400)).await.is_none(), "unsubscribed");
        // A text frame is recorded and ignored.
        conn.send_text(b"{\"method\":\"sub\"}").await.expect("text");
        assert!(
            w.up.wait_for(|u| u.conns().first().is_some_and(|c| c.texts == 1), Duration::from_secs(2)).await
        );
        conn.close(1000).await;
        // The code is single-use: the same URL again is refused before any WebSocket byte.
        assert!(w.up.wait_for(|u| u.live() == 0, Duration::from_secs(2)).await);
        match connect(ep).await {
            Err(ws::WsError::Status { status: 403, .. }) => {}
            other => panic!("a used code must be refused: {:?}", other.map(|_| ())),
        }
        assert_eq!(w.up.code_rejections(), 1);
        // A wrong token: 401.
        let bad = "Bearer nope".to_string();
        let ans = http::request(&w.connector, &rest, Req { headers: &[("authorization", &bad)], ..req })
            .await
            .expect("answer");
        assert_eq!(ans.status, 401);
        assert!(String::from_utf8_lossy(&ans.body).contains("UDAPI100050"));
        // The LTP quote is keyed SEGMENT:SYMBOL, with the instrument token inside.
        let path = upstox::ltp_path("/", &[bosch, nifty]);
        let ltp = Req {
            method: "GET",
            path: &path,
            headers: &[("authorization", &bearer)],
            body: None,
            timeout: Duration::from_secs(3),
            max_body: 65536,
        };
        let ans = http::request(&w.connector, &rest, ltp).await.expect("ltp");
        let body = String::from_utf8_lossy(&ans.body).into_owned();
        assert!(body.contains("\"NSE_EQ:BOSCHLTD\"") && body.contains("\"NSE_INDEX:Nifty 50\""), "{body}");
        let mut prices = upstox::parse_ltp(&ans.body).expect("parse");
        prices.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(prices, vec![(bosch.to_string(), 729.0), (nifty.to_string(), 26178.7)]);
    })
    .await
    .expect("bounded");
}

/// A busy Upstox feed must not starve the engine's thread: the session, the engine task and a
/// probe task share one current-thread runtime (as in `tickguard run`), while the fake (on its
/// own thread) keeps the socket full of 64-instrument frames. Between two turns of the probe the
/// session may handle a bounded number of frames (it yields every `YIELD_EVERY` frames, as
/// Binance's does). Without the yield, tokio's budget alone let it handle thousands of frames
/// (one budget unit per socket read) before anything else ran: a crossing tick waited tens of
/// milliseconds for the engine.
#[test]
fn a_flooding_upstox_feed_yields_to_the_engine_task() {
    const FLOOD_KEYS: usize = 64;
    const FRAMES: u64 = 6_000;
    const AHEAD: u64 = 2_000;
    let keys: Vec<(String, String)> =
        (0..FLOOD_KEYS).map(|i| (format!("FLOOD{i}"), format!("NSE_EQ|INE{i:06}A01026"))).collect();
    let shared = Arc::new(FeedShared::default());
    let (setup_tx, setup_rx) = std::sync::mpsc::channel::<(Connector, String, std::path::PathBuf)>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // The fake Upstox (and its DNS) on a thread and runtime of their own.
    let fake = {
        let keys = keys.clone();
        let shared = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let w = world("upstox-flood").await;
                for (sym, key) in &keys {
                    w.up.set_price(key, sym, 100.0);
                }
                let _ = setup_tx.send((w.connector.clone(), w.up.rest_url("api.upstox.test"), w.dir.clone()));
                let start = tokio::time::Instant::now();
                let bound = Duration::from_secs(25);
                let live = w.up.wait_for(|u| u.live() >= 1, Duration::from_secs(10)).await;
                assert!(live, "the session connected");
                let feeds: Vec<(String, support::upstox_feed::pb::Feed)> = keys
                    .iter()
                    .map(|(_, k)| {
                        (k.clone(), support::upstox_feed::feed_for(k, "ltpc", 101.5, 1_700_000_000_000))
                    })
                    .collect();
                let frame = support::upstox_feed::feed_frame(1, feeds);
                let mut pushed = 0u64;
                while pushed < FRAMES && start.elapsed() < bound {
                    // Keep the socket full, but at most AHEAD frames ahead of the reader.
                    if pushed < shared.frames.load(Ordering::Relaxed) + AHEAD {
                        for _ in 0..64 {
                            w.up.push_raw(&frame);
                        }
                        pushed += 64;
                    }
                    tokio::task::yield_now().await;
                    if pushed >= shared.frames.load(Ordering::Relaxed) + AHEAD {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                // Keep the fake up until the reader is done.
                let _ =
                    tokio::task::spawn_blocking(move || done_rx.recv_timeout(Duration::from_secs(30))).await;
            });
        })
    };
    let (connector, rest_url, dir) = setup_rx.recv_timeout(LIMIT).expect("the fake started");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (max_frames, max_gap) = rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let token = dir.join("token");
            std::fs::write(&token, TOKEN).expect("token");
            let clock = Clock::new();
            let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
            let mut map = BTreeMap::new();
            let mut ids = Vec::new();
            for (sym, key) in &keys {
                ids.push((engine.add_instrument(sym).expect("room"), sym.clone()));
                map.insert(sym.clone(), key.clone());
            }
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let (task, handle, _broker) = engine_task(engine, clock, stop_rx.clone());
            let engine_job = tokio::spawn(task.run());
            let ctx = Ctx { shared: shared.clone(), engine: handle, clock };
            let ux = Arc::new(UpstoxShared::new(token.clone(), map));
            for (id, sym) in &ids {
                assert!(ux.add(*id, sym));
            }
            let cfg = UpstoxConfig {
                rest: Endpoint::parse(&rest_url).expect("url"),
                token_file: token,
                mode: Mode::Ltpc,
                cap: 5000,
                silence_timeout: Duration::from_secs(5),
                reconnect_initial: Duration::from_millis(100),
                reconnect_max: Duration::from_millis(500),
                jitter: 0.5,
                connect_timeout: Duration::from_secs(3),
                control_spacing: Duration::from_millis(50),
                limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
                max_lifetime: None,
                rest_poll: Duration::from_secs(1),
                rest_timeout: Duration::from_secs(2),
                seed: 12,
                read_token: upstox::read_token_file,
            };
            let (_added_tx, added_rx) = tokio::sync::mpsc::channel(8);
            let session = tokio::spawn(upstox::run(cfg, connector, ctx, ux, added_rx, stop_rx));
            // The probe: another task on the same thread, counting the frames the session handled
            // between two of its turns.
            let probe = {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut last = shared.frames.load(Ordering::Relaxed);
                    let mut last_turn = std::time::Instant::now();
                    let (mut max_frames, mut max_gap) = (0u64, Duration::ZERO);
                    let end = tokio::time::Instant::now() + Duration::from_secs(25);
                    while shared.frames.load(Ordering::Relaxed) < FRAMES - 64
                        && tokio::time::Instant::now() < end
                    {
                        tokio::task::yield_now().await;
                        let f = shared.frames.load(Ordering::Relaxed);
                        let t = std::time::Instant::now();
                        // Count only while flooding (the snapshot and the connection before).
                        if f > 100 {
                            max_frames = max_frames.max(f - last);
                            max_gap = max_gap.max(t - last_turn);
                        }
                        last = f;
                        last_turn = t;
                    }
                    (max_frames, max_gap)
                })
            };
            let got = probe.await.expect("probe");
            assert!(shared.frames.load(Ordering::Relaxed) >= FRAMES - 64, "the flood arrived");
            let _ = stop_tx.send(true);
            let _ = session.await;
            let _ = engine_job.await;
            got
        })
        .await
        .expect("bounded")
    });
    let _ = done_tx.send(());
    let _ = fake.join();
    eprintln!(
        "flood: at most {max_frames} frames between two turns of another task (longest gap {max_gap:?})"
    );
    // The session yields every YIELD_EVERY frames; the probe may need two of its yields to get
    // a turn. Before the Upstox session shared the driver, it handled 534 frames (72 ms in a
    // debug build) between two turns.
    let bound = 4 * u64::from(tickguard::feed::session::YIELD_EVERY);
    assert!(
        max_frames <= bound,
        "the session handled {max_frames} frames (for {max_gap:?}) without letting another task run"
    );
}

/// The LTP poller reports into the status the `tickguard_rest_*` metrics read
/// (`EngineHandle::status.rest`): every request in `polls`, every failed one in `errors`, and
/// the breaker's state in `breaker_open` — the same counters as Binance's poller.
#[tokio::test]
async fn the_upstox_ltp_poller_counts_polls_errors_and_its_breaker_in_the_shared_status() {
    use tickguard::core::book::PositionSpec;
    use tickguard::core::engine::Command;
    use tickguard::core::price::{Price, Qty};
    use tickguard::core::types::{BlindPolicy, PositionId, Side, Symbol};
    tokio::time::timeout(LIMIT, async {
        let w = world("upstox-ltp-status").await;
        let token = w.dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let clock = Clock::new();
        let mut engine = Box::new(AppEngine::new(EngineConfig::default(), clock.now()));
        let mut map = BTreeMap::new();
        for (sym, key) in KEYS {
            engine.add_instrument(sym).expect("room");
            map.insert(sym.to_string(), key.to_string());
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (task, handle, _broker) = engine_task(engine, clock, stop_rx.clone());
        let engine_job = tokio::spawn(task.run());
        let spec = PositionSpec {
            id: PositionId::try_from("bosch").expect("id"),
            symbol: Symbol::try_from("BOSCHLTD").expect("symbol"),
            side: Side::Long,
            qty: Qty::from_units(10 * 100_000_000),
            entry: Price::parse("735.00").expect("price"),
            stop_loss: Some(Price::parse("600.00").expect("price")),
            take_profit: None,
            blind_policy: BlindPolicy::Alert,
        };
        handle.command(Command::Register(spec)).await.expect("registered");
        let status = handle.status.clone();
        // The feed is down (nothing runs it): the poller is on.
        let shared = Arc::new(FeedShared::default());
        let ctx = Ctx { shared, engine: handle, clock };
        let ux = Arc::new(UpstoxShared::new(token.clone(), map));
        let cfg = UpstoxConfig {
            rest: Endpoint::parse(&w.up.rest_url("api.upstox.test")).expect("url"),
            token_file: token,
            mode: Mode::Ltpc,
            cap: 5000,
            silence_timeout: Duration::from_secs(1),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(500),
            jitter: 0.5,
            connect_timeout: Duration::from_secs(3),
            control_spacing: Duration::from_millis(50),
            limits: WsLimits { max_frame: 1 << 20, max_message: 1 << 20 },
            max_lifetime: None,
            rest_poll: Duration::from_millis(100),
            rest_timeout: Duration::from_secs(2),
            seed: 13,
            read_token: upstox::read_token_file,
        };
        let poller = tokio::spawn(upstox::run_ltp(cfg, w.connector.clone(), ctx, ux, stop_rx));
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        // Answered polls count.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while load(&status.rest.polls) < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(load(&status.rest.polls) >= 2, "polls counted");
        assert_eq!(load(&status.rest.errors), 0, "answered polls are no errors");
        assert!(!status.rest.breaker_open.load(Ordering::Relaxed));
        // The venue fails: errors count, and after three the breaker opens.
        w.up.set_api_fault(support::upstox_feed::ApiFault::Status(503));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !status.rest.breaker_open.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(status.rest.breaker_open.load(Ordering::Relaxed), "the breaker opened");
        assert!(load(&status.rest.errors) >= 3, "failed polls counted: {}", load(&status.rest.errors));
        let _ = stop_tx.send(true);
        let _ = poller.await;
        let _ = engine_job.await;
    })
    .await
    .expect("bounded");
}
