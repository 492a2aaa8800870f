//! Slow, half-open and crowding clients do not stop the API (hyper's server on its own
//! runtime, `src/control/server.rs`):
//! - 112 connections from seven other 127.0.0.x addresses (slow heads, bodies that never
//!   come, silent sockets) while others are served at once; each is cut at its time bound;
//! - past the connection caps (in all and per address) a request without credentials is
//!   answered `503` at once, and one with the right token closes the oldest unauthenticated
//!   connection and is served;
//! - every anonymous handler busy: `503 busy`, while the right token has slots of its own and
//!   `/health` answers from the watcher without a handler.

mod control_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use control_support::{Appliance, TOKEN, fast_engine, http};
use tickguard::control::server::Limits;

/// A connection to `addr` from the source address `127.0.0.<src>`.
fn connect_from(src: u8, addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, src), 0)).into()).expect("bind the source address");
    s.connect_timeout(&addr.into(), Duration::from_secs(5)).expect("connect");
    s.into()
}

fn stall_from(src: u8, addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = connect_from(src, addr);
    if !bytes.is_empty() {
        s.write_all(bytes).expect("send");
    }
    s
}

fn timed_get(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let r = http(addr, "GET", path, &[], None);
    (r.status, t0.elapsed())
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let m = http(addr, "GET", "/metrics", &[], None).text();
    m.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Reads what the server sends until it closes (bounded), as text.
fn drain(mut s: TcpStream, limit: Duration) -> String {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn stalled_clients_do_not_stop_the_api() {
    let limits = Limits {
        head_timeout: Duration::from_secs(3),
        body_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(3),
        ..Limits::default()
    };
    let a = Appliance::start_with(fast_engine(), |c| c.limits = limits);
    assert_eq!(a.register("p1", "BOSCHLTD", "735", "698.25", "800").status, 201);

    // From 127.0.0.2 ..= 127.0.0.8, 16 each (the per-address cap): 64 heads that never end,
    // 32 bodies that never come (with valid credentials, so the handler reads them), 16
    // connections that send nothing at all.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let src = |i: usize| 2 + u8::try_from(i % 7).unwrap_or(0);
    let mut heads = Vec::new();
    let mut bodies = Vec::new();
    let mut silent = Vec::new();
    for i in 0..64 {
        let head = format!("GET /api/v1/monitoring/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow-{i}: ");
        heads.push(stall_from(src(i), a.addr, head.as_bytes()));
    }
    for i in 64..96 {
        let head = format!(
            "POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 200\r\n\r\n{{\"id\":"
        );
        bodies.push(stall_from(src(i), a.addr, head.as_bytes()));
    }
    for i in 96..112 {
        silent.push(stall_from(src(i), a.addr, b""));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(a.addr, "tickguard_http_connections_open"), 113.0, "112 held + this scrape");

    // Everyone else is served, promptly.
    let mut worst = Duration::ZERO;
    for path in ["/health", "/api/v1/monitoring/connection-health", "/api/v1/monitoring/status", "/metrics"] {
        for _ in 0..5 {
            let (status, took) = timed_get(a.addr, path);
            assert_eq!(status, 200, "{path} while 112 clients stall");
            worst = worst.max(took);
        }
    }
    assert!(worst < Duration::from_millis(500), "slowest answer {worst:?} while clients stall");
    let r = a.authed(
        "POST",
        "/api/v1/monitoring/emergency-close-position",
        Some(r#"{"symbol":"BOSCHLTD","reason":"emergency"}"#),
    );
    assert!(r.status == 200 || r.status == 202, "an emergency close still goes through: {}", r.text());

    // The stalled ones are cut at their bound: a started head or a silent socket is closed,
    // a body that does not come is answered 408.
    let t0 = Instant::now();
    for s in heads.into_iter().chain(silent) {
        let text = drain(s, Duration::from_secs(8));
        assert!(text.is_empty(), "a head that never ends gets no answer, only the close: {text}");
    }
    for s in bodies {
        let text = drain(s, Duration::from_secs(8));
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "all cut within their bounds: {:?}", t0.elapsed());
    assert!(metric(a.addr, "tickguard_http_timeouts_total") >= 112.0, "every cut counted");
    std::thread::sleep(Duration::from_millis(300));
    assert!(metric(a.addr, "tickguard_http_connections_open") <= 2.0, "connections released");
}

#[test]
fn past_the_caps_the_right_token_makes_room() {
    let limits = Limits {
        max_connections: 8,
        max_per_peer: 4,
        max_waiting: 2,
        max_waiting_per_peer: 1,
        idle_timeout: Duration::from_secs(6),
        ..Limits::default()
    };
    let a = Appliance::start_with(fast_engine(), |c| c.limits = limits);
    // Per address: the fifth connection from 127.0.0.2 waits; without credentials it is
    // answered 503 at once.
    let own: Vec<TcpStream> = (0..4).map(|_| stall_from(2, a.addr, b"")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fifth = connect_from(2, a.addr);
    fifth.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("send");
    let text = drain(fifth, Duration::from_secs(3));
    assert!(text.starts_with("HTTP/1.1 503") && text.contains("Retry-After: 1"), "{text}");
    // Fill the rest: 8 in all.
    let others: Vec<TcpStream> = (0..4).map(|_| stall_from(3, a.addr, b"")).collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let r = http(a.addr, "GET", "/health", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    // The right token gets in: the oldest unauthenticated connection is closed for it.
    let t0 = Instant::now();
    let r = a.authed("GET", "/api/v1/monitoring/status", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    let mut own = own;
    let oldest = own.remove(0);
    assert_eq!(drain(oldest, Duration::from_secs(2)), "", "the oldest idle connection was closed");
    assert!(metric(a.addr, "tickguard_http_evicted_total") >= 1.0);
    // The waiting slots: the evicted connection's slot went to the authenticated one, which
    // has closed since, so one normal slot is free, then two waiting ones. A silent waiting
    // connection gives its slot to a newcomer; one that has spoken (half a head) keeps it, and
    // with every waiting slot held by such, a newcomer is closed at once (a canned 503 over
    // plain HTTP).
    std::thread::sleep(Duration::from_millis(200));
    let w1 = stall_from(4, a.addr, b"");
    let w2 = stall_from(5, a.addr, b"GET /health HTTP/1.1\r\n");
    let w3 = stall_from(7, a.addr, b"");
    std::thread::sleep(Duration::from_millis(100));
    let mut newcomer = connect_from(6, a.addr);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drain(w3, Duration::from_secs(2)), "", "the silent waiting connection made room");
    let _ = newcomer.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let text = drain(newcomer, Duration::from_secs(2));
    assert!(text.starts_with("HTTP/1.1 503"), "a waiting connection without credentials: {text}");
    let w3 = stall_from(7, a.addr, b"GET /health HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(100));
    let mut over = connect_from(8, a.addr);
    let _ = over.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let text = drain(over, Duration::from_secs(2));
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 503"), "{text}");
    drop((own, others, w1, w2, w3));
    // Freed connections make room again.
    let t0 = Instant::now();
    loop {
        // (Refused connections are reset: read raw, not with the panicking helper.)
        let out = control_support::raw(
            a.addr,
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        );
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(a.addr, "tickguard_http_refused_total{cause=\"connections\"}") >= 1.0);
    assert!(metric(a.addr, "tickguard_http_refused_total{cause=\"waiting\"}") >= 2.0);
}

#[test]
fn busy_handlers_never_take_the_right_tokens_slots() {
    // One anonymous handler slot, two for credentials; both credential slots held by closes
    // waiting for a fill that cannot come.
    let limits = Limits { max_active: 1, max_active_authed: 2, ..Limits::default() };
    let a = Appliance::start_with(fast_engine(), |c| c.limits = limits);
    for i in 0..3 {
        assert_eq!(a.register(&format!("w{i}"), &format!("SYM{i}"), "100", "90", "110").status, 201);
    }
    a.network_up.store(false, std::sync::atomic::Ordering::SeqCst);
    let addr = a.addr;
    let waiters: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let auth = format!("Bearer {TOKEN}");
                http(
                    addr,
                    "POST",
                    &format!("/api/v1/positions/w{i}/close"),
                    &[("Authorization", &auth)],
                    Some(b"{}"),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let r = a.authed("POST", "/api/v1/positions/w2/close", Some("{}"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("busy"));
    // Anonymous reads have their own slot, and /health needs none.
    assert_eq!(http(a.addr, "GET", "/api/v1/monitoring/status", &[], None).status, 200);
    assert_eq!(http(a.addr, "GET", "/health", &[], None).status, 200);
    for w in waiters {
        assert_eq!(w.join().expect("thread").status, 202);
    }
    assert!(metric(a.addr, "tickguard_http_refused_total{cause=\"busy\"}") >= 1.0);
}
