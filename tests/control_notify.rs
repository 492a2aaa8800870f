//! Notifications against a loopback webhook receiver (and a loopback "Telegram"): each event
//! is delivered once, a failed delivery is retried, and a dead receiver never slows the
//! engine (its queue drops the oldest and counts them).

mod control_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use control_support::{Appliance, fast_engine};
use serde_json::{Map, Value};
use tickguard::control::notify::{Channel, Event, EventKind, QUEUE, Target};
use tickguard::core::engine::FeedEvent;

/// What the receiver got: (path, JSON body).
type Got = Arc<Mutex<Vec<(String, Value)>>>;

struct Receiver {
    addr: SocketAddr,
    got: Got,
    /// Requests to answer 503 before answering 200.
    fail_first: Arc<AtomicUsize>,
    /// Accept and never answer.
    dead: Arc<AtomicBool>,
}

fn read_request(s: &mut std::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            return Some((path, buf[end + 4..end + 4 + len].to_vec()));
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn receiver() -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let got: Got = Arc::new(Mutex::new(Vec::new()));
    let fail_first = Arc::new(AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let (g, f, d) = (got.clone(), fail_first.clone(), dead.clone());
    std::thread::spawn(move || {
        let mut parked = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            if d.load(Ordering::SeqCst) {
                parked.push(s); // never answered
                continue;
            }
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let Some((path, body)) = read_request(&mut s) else { continue };
            let fail = f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if fail {
                let _ = s.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if let Ok(mut g) = g.lock() {
                    g.push((path, v));
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    Receiver { addr, got, fail_first, dead }
}

fn counts(got: &Got, path_prefix: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (p, v) in got.lock().expect("lock").iter() {
        if !p.starts_with(path_prefix) {
            continue;
        }
        let k = v["event"].as_str().map(str::to_string).unwrap_or_else(|| {
            // Telegram: the kind is in the text.
            let t = v["text"].as_str().unwrap_or("");
            ["CLOSE FAILED", "BLIND", "feed down", "feed back", "closed"]
                .iter()
                .find(|w| t.contains(*w))
                .map_or("?", |w| w)
                .to_string()
        });
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[test]
fn each_event_is_delivered_once() {
    let rx = receiver();
    rx.fail_first.store(1, Ordering::SeqCst); // the first delivery is retried
    let webhook = format!("http://{}/hook", rx.addr);
    let tg = format!("http://{}", rx.addr);
    let a = Appliance::start_with(fast_engine(), move |c| {
        c.notify = vec![
            Target::Webhook(webhook),
            Target::Telegram {
                api_url: tg,
                token: "123456:ABC-def".into(),
                chat_id: "-1001234567890".into(),
            },
        ];
    });
    assert_eq!(a.register("bosch-1", "BOSCHLTD", "735", "698.25", "800").status, 201);
    assert_eq!(a.register("kaynes-1", "KAYNES", "210", "190", "230").status, 201);
    a.tick("BOSCHLTD", "735");
    a.tick("KAYNES", "210");
    std::thread::sleep(Duration::from_millis(300));

    // Feed down: reported after 3 s; with no REST source both positions go blind once the
    // cached prices expire (3 s) and the grace (0.5 s) passes.
    a.feed(FeedEvent::Disconnected);
    // Once the feed is back it keeps pricing: a position with no usable price for its grace
    // is blind whatever the feed's state, and that would be a (correct) third blind event.
    let wait = |what: &str, within: Duration, f: &dyn Fn(&BTreeMap<String, usize>) -> bool, ticking: bool| {
        let t0 = Instant::now();
        loop {
            if ticking {
                a.tick("BOSCHLTD", "735");
                a.tick("KAYNES", "210");
            }
            let c = counts(&rx.got, "/hook");
            if f(&c) {
                return c;
            }
            assert!(t0.elapsed() < within, "timed out waiting for {what}: {c:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait(
        "feed_down and two blind",
        Duration::from_secs(12),
        &|c| c.get("feed_down") == Some(&1) && c.get("blind") == Some(&2),
        false,
    );
    // Back: feed up once; a close filled; then a close that fails for good.
    a.feed(FeedEvent::SubscribedAll);
    a.tick("BOSCHLTD", "735");
    a.tick("KAYNES", "210");
    let r = a.authed("POST", "/api/v1/positions/bosch-1/close", Some("{}"));
    assert_eq!(r.status, 200, "{}", r.text());
    a.network_up.store(false, Ordering::SeqCst);
    assert_eq!(a.authed("POST", "/api/v1/positions/kaynes-1/close", Some("{}")).status, 202);
    let c = wait(
        "feed_up, close_done, close_failed",
        Duration::from_secs(10),
        &|c| {
            c.get("feed_up") == Some(&1)
                && c.get("close_done") == Some(&1)
                && c.get("close_failed") == Some(&1)
        },
        true,
    );
    // Nothing is repeated later.
    for _ in 0..30 {
        a.tick("BOSCHLTD", "735");
        a.tick("KAYNES", "210");
        std::thread::sleep(Duration::from_millis(50));
    }
    let later = counts(&rx.got, "/hook");
    assert_eq!(later, c, "each event once");
    let expected: BTreeMap<String, usize> =
        [("blind", 2), ("close_done", 1), ("close_failed", 1), ("feed_down", 1), ("feed_up", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(later, expected);
    // The payload.
    let got = rx.got.lock().expect("lock").clone();
    let done = got
        .iter()
        .find(|(p, v)| p == "/hook" && v["event"] == "close_done")
        .map(|(_, v)| v.clone())
        .expect("done");
    assert_eq!(done["id"], "bosch-1");
    assert_eq!(done["symbol"], "BOSCHLTD");
    assert_eq!(done["exit_price"], 735.0);
    assert_eq!(done["severity"], "info");
    assert!(done["timestamp"].as_str().is_some_and(|t| t.ends_with("+00:00")));
    let failed =
        got.iter().find(|(_, v)| v["event"] == "close_failed").map(|(_, v)| v.clone()).expect("failed");
    assert_eq!((failed["id"].as_str(), failed["severity"].as_str()), (Some("kaynes-1"), Some("critical")));
    // Telegram got the same events, on the bot's path, with the chat id.
    let tg: Vec<&(String, Value)> = got.iter().filter(|(p, _)| p.starts_with("/bot")).collect();
    assert_eq!(tg.len(), 6, "{tg:?}");
    assert!(
        tg.iter().all(|(p, v)| p == "/bot123456:ABC-def/sendMessage" && v["chat_id"] == "-1001234567890")
    );
    // Counters.
    let m = a.req("GET", "/metrics", &[], None).text();
    assert!(m.contains("tickguard_notify_sent_total{channel=\"webhook\"} 6"), "{m}");
    assert!(m.contains("tickguard_notify_sent_total{channel=\"telegram\"} 6"), "{m}");
    assert!(m.contains("tickguard_notify_dropped_total{channel=\"webhook\"} 0"), "{m}");
}

fn event(i: usize) -> Event {
    let mut f = Map::new();
    f.insert("n".into(), Value::from(i));
    Event { kind: EventKind::CloseDone, text: format!("event {i}"), fields: f, at: SystemTime::now() }
}

#[test]
fn a_dead_receiver_never_blocks_and_drops_the_oldest() {
    let rx = receiver();
    rx.dead.store(true, Ordering::SeqCst);
    let dns = tickguard::control::ControlConfig::new("127.0.0.1:0".parse().expect("addr"), None).dns;
    let ch = Channel::start(Target::Webhook(format!("http://{}/hook", rx.addr)), dns, None).expect("channel");
    let mut worst = Duration::ZERO;
    for i in 0..500 {
        let t0 = Instant::now();
        ch.push(event(i));
        worst = worst.max(t0.elapsed());
    }
    assert!(worst < Duration::from_millis(5), "a push waited {worst:?}");
    std::thread::sleep(Duration::from_millis(200));
    let dropped = ch.stats.dropped.load(Ordering::Relaxed);
    let queued = ch.stats.queued.load(Ordering::Relaxed);
    assert!(queued <= QUEUE as u64);
    assert!(dropped >= (500 - QUEUE - 1) as u64, "dropped {dropped}, queued {queued}");
    assert_eq!(ch.stats.sent.load(Ordering::Relaxed), 0);
}

#[test]
fn a_dead_receiver_does_not_slow_the_engine() {
    let rx = receiver();
    rx.dead.store(true, Ordering::SeqCst);
    let webhook = format!("http://{}/hook", rx.addr);
    let a = Appliance::start_with(fast_engine(), move |c| c.notify = vec![Target::Webhook(webhook)]);
    // Forty positions crossed one after another: forty close decisions and forty
    // close_done events for a receiver that never answers.
    for i in 0..40 {
        assert_eq!(a.register(&format!("q{i}"), &format!("S{i}"), "100", "95", "105").status, 201);
        a.tick(&format!("S{i}"), "100");
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let sym = format!("S{i}");
        let id = format!("q{i}");
        let t0 = Instant::now();
        a.tick(&sym, "94.5");
        loop {
            let id2 = id.clone();
            let decided =
                a.rt.block_on(a.handle.inspect(move |e, _| {
                    e.book().find(&id2).and_then(|x| e.book().get(x)).is_some_and(|p| p.decision.is_some())
                }))
                .unwrap_or(false);
            if decided {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(2), "{id} never decided");
            std::thread::sleep(Duration::from_millis(1));
        }
        worst = worst.max(t0.elapsed());
    }
    assert!(worst < Duration::from_millis(100), "slowest tick-to-decision {worst:?} with a dead receiver");
    // The events are there, waiting or dropped, never lost silently.
    let t0 = Instant::now();
    loop {
        let m = a.req("GET", "/metrics", &[], None).text();
        let v = |name: &str| -> u64 {
            m.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        let produced = v("tickguard_notify_events_total{event=\"close_done\"}");
        let accounted = v("tickguard_notify_queue_depth{channel=\"webhook\"}")
            + v("tickguard_notify_dropped_total{channel=\"webhook\"}")
            + 1;
        if produced == 40 && accounted >= 40 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "events not accounted for:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
