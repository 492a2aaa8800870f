//! Slow and half-open clients do not stop the API: 64 connections that never finish their
//! request head, and 64 that never finish their body, while other clients are served at
//! once; the stalled ones are cut at their time bound; past the connection cap the server
//! answers 503 at once instead of hanging.

mod control_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use control_support::{Appliance, TOKEN, fast_engine, http};
use tickguard::control::http::Limits;

fn stall(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("send");
    s
}

fn timed_get(addr: std::net::SocketAddr, path: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    let r = http(addr, "GET", path, &[], None);
    (r.status, t0.elapsed())
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

    // 64 heads that never end, 64 bodies that never come (with valid credentials, so the
    // handler reads them), 16 connections that send nothing at all.
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let mut held = Vec::new();
    for i in 0..64 {
        held.push(stall(
            a.addr,
            format!("GET /api/v1/monitoring/status HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ").as_bytes(),
        ));
    }
    for _ in 0..64 {
        let head = format!(
            "POST /api/v1/positions HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 200\r\n\r\n{{\"id\":"
        );
        held.push(stall(a.addr, head.as_bytes()));
    }
    for _ in 0..16 {
        held.push(TcpStream::connect(a.addr).expect("connect"));
    }
    std::thread::sleep(Duration::from_millis(300));

    // Everyone else is served, promptly.
    let mut worst = Duration::ZERO;
    for path in ["/health", "/api/v1/monitoring/connection-health", "/api/v1/monitoring/status", "/metrics"] {
        for _ in 0..5 {
            let (status, took) = timed_get(a.addr, path);
            assert_eq!(status, 200, "{path} while 144 clients stall");
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

    // The stalled ones are cut at their bound (408 for a started head or body, a plain close
    // for an idle connection) and their threads end.
    let t0 = Instant::now();
    let mut cut = 0;
    for mut s in held.drain(..) {
        s.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        cut += 1;
        if !out.is_empty() {
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 400"), "{text}");
        }
    }
    assert_eq!(cut, 144);
    assert!(t0.elapsed() < Duration::from_secs(8), "all cut within their bounds: {:?}", t0.elapsed());
    let metrics = http(a.addr, "GET", "/metrics", &[], None).text();
    let timeouts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tickguard_http_timeouts_total "))
        .and_then(|v| v.parse().ok())
        .expect("timeouts metric");
    assert!(timeouts >= 128, "head and body timeouts counted: {timeouts}");
    std::thread::sleep(Duration::from_millis(300));
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tickguard_http_connections_open "))
        .and_then(|v| v.parse().ok())
        .expect("open metric");
    assert!(open <= 2, "connections released: {open}");
}

#[test]
fn past_the_connection_cap_the_answer_is_an_immediate_503() {
    let limits = Limits { max_connections: 8, idle_timeout: Duration::from_secs(4), ..Limits::default() };
    let a = Appliance::start_with(fast_engine(), |c| c.limits = limits);
    let held: Vec<TcpStream> = (0..8).map(|_| stall(a.addr, b"GET /health HTTP/1.1\r\n")).collect();
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let r = http(a.addr, "GET", "/health", &[], None);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    drop(held);
    // Freed connections make room again.
    let t0 = Instant::now();
    loop {
        if http(a.addr, "GET", "/health", &[], None).status == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn past_the_handler_cap_the_answer_is_503_busy() {
    // Two handler slots, both held by emergency closes waiting for a fill that cannot come.
    let limits = Limits { max_active: 2, ..Limits::default() };
    let a = Appliance::start_with(fast_engine(), |c| c.limits = limits);
    for i in 0..2 {
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
    let r = http(a.addr, "GET", "/health", &[], None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("busy"));
    for w in waiters {
        assert_eq!(w.join().expect("thread").status, 202);
    }
    assert_eq!(http(a.addr, "GET", "/health", &[], None).status, 200);
}
