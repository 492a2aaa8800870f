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
