//! The control plane's HTTP API over real sockets: every endpoint, each error in the
//! documented order, credentials, and a contract check of every response against
//! `docs/openapi.yaml`.

mod control_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use control_support::contract::Contract;
use control_support::{Appliance, Resp, TOKEN, http, raw};
use serde_json::{Value, json};

/// Sends a request, checks the answer against the contract, returns it.
fn call(
    a: &Appliance,
    c: &Contract,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let r = a.req(method, path, headers, body);
    c.check(method, path, &r);
    r
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn authed(a: &Appliance, c: &Contract, method: &str, path: &str, body: Option<&str>) -> Resp {
    let b = bearer();
    call(a, c, method, path, &[("Authorization", &b), ("Content-Type", "application/json")], body)
}

const BOSCH: &str = r#"{"id":"bosch-1","symbol":"BOSCHLTD","side":"long","qty":10,"entry":"735.00","stop_loss":698.25,"take_profit":"800"}"#;

#[test]
fn contract_every_endpoint() {
    let a = Appliance::start();
    let c = Contract::load();

    // Page, probes, metrics, the description itself.
    let r = call(&a, &c, "GET", "/", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<title>tickguard</title>"));
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(csp.contains("script-src 'sha256-") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(call(&a, &c, "GET", "/health", &[], None).status, 200);
    let ready = call(&a, &c, "GET", "/ready", &[], None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    let m = call(&a, &c, "GET", "/metrics", &[], None);
    assert_eq!(m.status, 200);
    assert!(m.text().contains("tickguard_feed_connected 1"), "{}", m.text());
    let y = call(&a, &c, "GET", "/api/v1/openapi.yaml", &[], None);
    assert!(y.text().starts_with("openapi: 3."));
    let h = call(&a, &c, "GET", "/api/v1/monitoring/health", &[], None);
    assert_eq!(h.json()["status"], "healthy");
    let head = a.req("HEAD", "/api/v1/monitoring/health", &[], None);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");

    // Registration: 201, then 200 for the same body, 409 for another, 400 naming the field.
    let r = authed(&a, &c, "POST", "/api/v1/positions", Some(BOSCH));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("location"), Some("/api/v1/positions/bosch-1"));
    let p = r.json();
    assert_eq!(
        (p["id"].as_str(), p["status"].as_str(), p["stop_loss"].as_f64()),
        (Some("bosch-1"), Some("open"), Some(698.25))
    );
    assert_eq!(authed(&a, &c, "POST", "/api/v1/positions", Some(BOSCH)).status, 200);
    let other = BOSCH.replace("\"qty\":10", "\"qty\":11");
    let r = authed(&a, &c, "POST", "/api/v1/positions", Some(&other));
    assert_eq!(r.status, 409, "{}", r.text());
    let bad = BOSCH.replace("\"side\":\"long\"", "\"side\":\"up\"");
    let r = authed(&a, &c, "POST", "/api/v1/positions", Some(&bad));
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("side")), "{}", r.text());
    let inverted = BOSCH.replace("\"take_profit\":\"800\"", "\"take_profit\":\"600\"");
    let r = authed(&a, &c, "POST", "/api/v1/positions", Some(&inverted.replace("bosch-1", "bosch-9")));
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("stop_loss")), "{}", r.text());
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/positions",
        Some(r#"{"symbol":"X","side":"long","qty":1,"entry":1,"stopp":2}"#),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("stopp")), "{}", r.text());
    // Without an id one is made.
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/positions",
        Some(
            r#"{"symbol":"KAYNES","side":"buy","qty":"20","entry":210,"stop_loss":190,"take_profit":230,"product":"I"}"#,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let kaynes_id = r.json()["id"].as_str().expect("id").to_string();
    assert_eq!(r.json()["product"], "I");

    // Reads of positions.
    let list = call(&a, &c, "GET", "/api/v1/positions", &[], None).json();
    assert_eq!(list["positions"].as_array().map(Vec::len), Some(2));
    assert_eq!(list["capacity"], 256);
    assert_eq!(call(&a, &c, "GET", "/api/v1/positions?status=open", &[], None).status, 200);
    assert_eq!(call(&a, &c, "GET", "/api/v1/positions?status=nope", &[], None).status, 400);
    assert_eq!(call(&a, &c, "GET", "/api/v1/positions/bosch-1", &[], None).status, 200);
    let r = call(&a, &c, "GET", "/api/v1/positions/nobody", &[], None);
    assert_eq!(r.status, 404);

    // Prices, and the seed's monitoring views.
    a.subscribe("BOSCHLTD");
    a.subscribe("KAYNES");
    a.tick("BOSCHLTD", "735.00");
    a.tick("KAYNES", "204.10");
    std::thread::sleep(Duration::from_millis(50));
    let ch = call(&a, &c, "GET", "/api/v1/monitoring/connection-health", &[], None).json();
    assert_eq!(ch["websocket"]["connected"], true);
    assert_eq!(ch["price_cache"]["cached_symbols"], 2);
    assert_eq!(ch["price_cache"]["cache_entries"]["KAYNES"]["price"], 204.1);
    assert_eq!(ch["price_cache"]["cache_entries"]["KAYNES"]["is_stale"], false);
    let st = call(&a, &c, "GET", "/api/v1/monitoring/status", &[], None).json();
    assert_eq!(st["open_trades"].as_array().map(Vec::len), Some(2));
    let b = st["open_trades"]
        .as_array()
        .and_then(|v| v.iter().find(|p| p["id"] == "bosch-1"))
        .cloned()
        .expect("bosch");
    assert_eq!(b["current_price"], 735.0);
    assert_eq!(b["distance_to_stop_pct"], 5.0);

    // Levels move.
    let r = authed(
        &a,
        &c,
        "PATCH",
        "/api/v1/positions/bosch-1",
        Some(r#"{"stop_loss":"700.5","take_profit":null}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((r.json()["stop_loss"].as_f64(), r.json()["take_profit"].is_null()), (Some(700.5), true));
    let r = authed(&a, &c, "PATCH", "/api/v1/positions/bosch-1", Some(r#"{"stop_loss":-1}"#));
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("stop_loss")));
    assert_eq!(authed(&a, &c, "PATCH", "/api/v1/positions/nobody", Some(r#"{"stop_loss":1}"#)).status, 404);

    // The seed's smoke test, with a token: exactly the seed's 404.
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/monitoring/emergency-close-position",
        Some(r#"{"symbol": "INVALID", "reason": "test"}"#),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), r#"{"detail":"No open trade found for INVALID"}"#);
    // A known symbol with a bad reason: the field is named.
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/monitoring/emergency-close-position",
        Some(r#"{"symbol":"BOSCHLTD","reason":"test"}"#),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("reason")));
    // The real thing: filled within the wait, 200 with the seed's fields.
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/monitoring/emergency-close-position",
        Some(r#"{"symbol":"BOSCHLTD","reason":"stop_loss"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "success");
    assert_eq!(v["symbol"], "BOSCHLTD");
    assert_eq!(v["entry_price"], 735.0);
    assert_eq!(v["exit_price"], 735.0, "the paper broker fills at the bid");
    assert_eq!(v["pnl"], 0.0);
    assert_eq!(v["reason"], "stop_loss");
    assert_eq!(v["message"], "Position BOSCHLTD closed successfully");
    let st = a.wait_status(Duration::from_secs(2), "the close in recent closes", |s| {
        s["trades"]["recent_closes"].as_array().is_some_and(|v| v.iter().any(|c| c["id"] == "bosch-1"))
    });
    c.check("GET", "/api/v1/monitoring/status", &a.req("GET", "/api/v1/monitoring/status", &[], None));
    assert_eq!(st["trades"]["recent_closes"][0]["reason"], "stop_loss");

    // The broker unreachable: 202 closing, exit_price null; the position is then stuck closing.
    a.network_up.store(false, Ordering::SeqCst);
    let r = authed(
        &a,
        &c,
        "POST",
        &format!("/api/v1/positions/{kaynes_id}/close"),
        Some(r#"{"reason":"emergency"}"#),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!((r.json()["status"].as_str(), r.json()["exit_price"].is_null()), (Some("closing"), true));
    let r = authed(&a, &c, "PATCH", &format!("/api/v1/positions/{kaynes_id}"), Some(r#"{"stop_loss":191}"#));
    assert_eq!(r.status, 409, "{}", r.text());
    let r = authed(&a, &c, "DELETE", &format!("/api/v1/positions/{kaynes_id}"), None);
    assert_eq!(r.status, 409, "{}", r.text());
    // Three failed attempts: close_failed, the loudest alarm; resolve by hand.
    let t0 = Instant::now();
    loop {
        let p = a.position(&kaynes_id);
        if p["status"] == "close_failed" && p["close"]["order"] == "waiting" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "never close_failed: {p}");
        std::thread::sleep(Duration::from_millis(30));
    }
    let st = a.get_json("/api/v1/monitoring/status");
    assert_eq!(st["alarm"]["state"], "close_failed");
    let r = authed(&a, &c, "POST", "/api/v1/alerts/ack", None);
    assert_eq!((r.status, r.json()["acknowledged"].as_bool()), (200, Some(true)), "{}", r.text());
    let r = authed(&a, &c, "POST", &format!("/api/v1/positions/{kaynes_id}/resolve"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["status"].as_str(), r.json()["closed_how"].as_str()),
        (Some("closed"), Some("resolved"))
    );
    assert_eq!(authed(&a, &c, "POST", &format!("/api/v1/positions/{kaynes_id}/resolve"), None).status, 409);
    assert_eq!(authed(&a, &c, "POST", "/api/v1/positions/nobody/resolve", None).status, 404);
    assert_eq!(authed(&a, &c, "POST", "/api/v1/positions/nobody/close", None).status, 404);
    a.network_up.store(true, Ordering::SeqCst);

    // Withdrawal of an open position.
    let r = authed(&a, &c, "POST", "/api/v1/positions", Some(&BOSCH.replace("bosch-1", "bosch-2")));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = authed(&a, &c, "POST", "/api/v1/positions/bosch-2/resolve", None);
    assert_eq!(r.status, 409, "an open position is not resolved by hand: {}", r.text());
    let r = authed(&a, &c, "DELETE", "/api/v1/positions/bosch-2", None);
    assert_eq!((r.status, r.json()["closed_how"].as_str()), (200, Some("withdrawn")), "{}", r.text());
    assert_eq!(authed(&a, &c, "DELETE", "/api/v1/positions/bosch-2", None).status, 409);
    assert_eq!(authed(&a, &c, "DELETE", "/api/v1/positions/nobody", None).status, 404);

    // The page's session: log in, act with cookie + CSRF, log out.
    let s = call(&a, &c, "GET", "/api/v1/session", &[], None).json();
    assert_eq!(s["authenticated"], false);
    let r = call(
        &a,
        &c,
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        Some(r#"{"token":"wrong"}"#),
    );
    assert_eq!(r.status, 401);
    assert_eq!(call(&a, &c, "POST", "/api/v1/session", &[], Some("{}")).status, 400);
    let r = call(&a, &c, "POST", "/api/v1/session", &[], Some(&json!({"token": TOKEN}).to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r.header("set-cookie").expect("cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().expect("cookie").to_string();
    let csrf = r.json()["csrf_token"].as_str().expect("csrf").to_string();
    let s = call(&a, &c, "GET", "/api/v1/session", &[("Cookie", &cookie)], None).json();
    assert_eq!((s["authenticated"].as_bool(), s["csrf_token"].as_str()), (Some(true), Some(csrf.as_str())));
    let r = call(&a, &c, "POST", "/api/v1/alerts/ack", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 401, "a cookie without its CSRF token is no credential");
    let r = call(&a, &c, "POST", "/api/v1/alerts/ack", &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], None);
    assert_eq!(r.status, 200, "{}", r.text());
    let origin = format!("http://{}", a.addr);
    let r = call(
        &a,
        &c,
        "POST",
        "/api/v1/alerts/ack",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", &origin)],
        None,
    );
    assert_eq!(r.status, 200, "same origin passes: {}", r.text());
    let r = call(&a, &c, "DELETE", "/api/v1/session", &[("Cookie", &cookie)], None);
    assert_eq!(r.status, 200);
    assert!(r.header("set-cookie").is_some_and(|v| v.contains("Max-Age=0")));
    let r = call(&a, &c, "POST", "/api/v1/alerts/ack", &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], None);
    assert_eq!(r.status, 401, "logged out");

    // Every documented operation was exercised.
    let missing: Vec<_> = c.operations().difference(&c.seen()).cloned().collect();
    assert!(missing.is_empty(), "operations of docs/openapi.yaml never exercised: {missing:?}");
}

#[test]
fn checks_run_in_the_documented_order() {
    let a = Appliance::start();
    let c = Contract::load();
    let path = "/api/v1/monitoring/emergency-close-position";
    let b = bearer();
    let evil = "http://evil.example";
    // 405 before anything else, with Allow.
    let r = call(&a, &c, "GET", path, &[], None);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(call(&a, &c, "DELETE", path, &[("Origin", evil)], Some("x")).status, 405);
    // 401 before 403 (a cross-origin request without credentials).
    let r = call(&a, &c, "POST", path, &[("Origin", evil)], Some("not json"));
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(call(&a, &c, "POST", path, &[("Authorization", "Bearer wrong")], Some("{}")).status, 401);
    // 403 before 413.
    let big = "x".repeat(17 * 1024);
    assert_eq!(
        call(&a, &c, "POST", path, &[("Authorization", &b), ("Origin", evil)], Some(&big)).status,
        403
    );
    // 413 before 400 (bad JSON).
    assert_eq!(call(&a, &c, "POST", path, &[("Authorization", &b)], Some(&big)).status, 413);
    // 400 bad JSON before 404.
    let r = call(&a, &c, "POST", path, &[("Authorization", &b)], Some("{\"symbol\": "));
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].as_str().is_some_and(|d| d.starts_with("invalid JSON")), "{}", r.text());
    // 404 (unknown symbol) before 400 (bad field).
    let r = call(
        &a,
        &c,
        "POST",
        path,
        &[("Authorization", &b)],
        Some(r#"{"symbol":"NOPE","reason":"whatever"}"#),
    );
    assert_eq!(r.text(), r#"{"detail":"No open trade found for NOPE"}"#);
    // 400 naming the field.
    assert_eq!(a.register("p1", "BOSCHLTD", "735", "698.25", "800").status, 201);
    let r = call(
        &a,
        &c,
        "POST",
        path,
        &[("Authorization", &b)],
        Some(r#"{"symbol":"BOSCHLTD","reason":"whatever"}"#),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("reason")));
    let r = call(&a, &c, "POST", path, &[("Authorization", &b)], Some(r#"{"reason":"emergency"}"#));
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("symbol")));
    // Unknown paths are 404 whatever the method.
    assert_eq!(a.req("POST", "/api/v2/whatever", &[], None).status, 404);
}

#[test]
fn hostile_framing_is_refused_and_the_server_stays_up() {
    let a = Appliance::start();
    let b = bearer();
    // A declared length of 9 EB: refused from the header, nothing allocated for it (tiny_http
    // 0.12 aborts the process on exactly this request).
    let r = control_support::parse_response(&raw(
        a.addr,
        format!(
            "POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {b}\r\nContent-Length: 9000000000000000000\r\n\r\nabc"
        )
        .as_bytes(),
        Duration::from_secs(5),
    ));
    assert_eq!(r.status, 413);
    // Chunked bodies are read within the body bound (credentials are checked first); both
    // framings at once: 400. A header flood: 431. Garbage: 400. HTTP/2 preface: refused.
    let code =
        |bytes: &[u8]| control_support::parse_response(&raw(a.addr, bytes, Duration::from_secs(5))).status;
    assert_eq!(code(b"POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), 401);
    let body = r#"{"id":"chunky","symbol":"BTCUSDT","side":"long","qty":1,"entry":60000,"stop_loss":58000}"#;
    let (first, second) = body.split_at(20);
    let chunked = format!(
        "POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {b}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    assert_eq!(code(chunked.as_bytes()), 201, "a chunked registration is served");
    let mut big = format!(
        "POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {b}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        big.extend_from_slice(b"400\r\n");
        big.extend(std::iter::repeat_n(b' ', 0x400));
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(code(&big), 413, "a chunked body over the bound");
    // Both framings: read as chunked (RFC 9112), never as a success, and the connection closes.
    let both = raw(
        a.addr,
        b"POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&both);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    let mut flood = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ".to_vec();
    flood.extend(std::iter::repeat_n(b'a', 64 * 1024));
    // 431, or a reset when the client is still sending as the server closes.
    let flooded = raw(a.addr, &flood, Duration::from_secs(5));
    assert!(
        flooded.is_empty() || String::from_utf8_lossy(&flooded).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&flooded)
    );
    // A TLS hello on the plain port: 400 or closed, never served.
    let hello = raw(a.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", Duration::from_secs(5));
    let hello = String::from_utf8_lossy(&hello);
    assert!(hello.is_empty() || hello.starts_with("HTTP/1.1 400"), "{hello}");
    let h2 = raw(a.addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Duration::from_secs(5));
    let h2 = String::from_utf8_lossy(&h2);
    assert!(
        h2.is_empty() || h2.starts_with("HTTP/1.1 4") || h2.starts_with("HTTP/1.1 505"),
        "HTTP/2 preface: {h2}"
    );
    assert_eq!(code(b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 404);
    assert_eq!(code(b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), 405);
    // A Host that is not the box's: 421 before anything else (DNS rebinding).
    assert_eq!(code(b"GET /api/v1/positions HTTP/1.1\r\nHost: attacker.example\r\n\r\n"), 421);
    assert_eq!(code(b"GET /nope HTTP/1.1\r\nHost: attacker.example:80\r\n\r\n"), 421);
    // JSON nested 8 000 deep (within the body bound): 400, not a crash.
    let deep = format!("{{\"id\":{}{}}}", "[".repeat(8000), "]".repeat(8000));
    let deep_req = format!(
        "POST /api/v1/positions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {b}\r\nContent-Length: {}\r\n\r\n{deep}",
        deep.len()
    );
    assert_eq!(code(deep_req.as_bytes()), 400);
    // Still serving.
    assert_eq!(http(a.addr, "GET", "/health", &[], None).status, 200);
}

#[test]
fn keep_alive_and_pipelining() {
    use std::io::{Read, Write};
    let a = Appliance::start();
    let mut s = std::net::TcpStream::connect(a.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    // Two requests in one write, then a third on the same connection.
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /api/v1/monitoring/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let t0 = Instant::now();
    while got.windows(8).filter(|w| *w == b"HTTP/1.1").count() < 2 || !got.ends_with(b"}") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0 && t0.elapsed() < Duration::from_secs(5), "closed early");
        got.extend_from_slice(&buf[..n]);
        if got.windows(8).filter(|w| *w == b"HTTP/1.1").count() >= 2 && got.ends_with(b"}") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(!text.contains("Connection: close"), "kept alive: {text}");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read");
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn a_full_book_is_507_naming_the_capacity() {
    let a = Appliance::start();
    let c = Contract::load();
    for i in 0..tickguard::limits::MAX_POSITIONS {
        let r = a.register(&format!("p{i}"), "BTCUSDT", "60000", "58000", "65000");
        assert_eq!(r.status, 201, "{i}: {}", r.text());
    }
    let r = authed(
        &a,
        &c,
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"one-more","symbol":"BTCUSDT","side":"long","qty":1,"entry":60000}"#),
    );
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.json()["capacity"], 256);
    assert!(r.json()["detail"].as_str().is_some_and(|d| d.contains("capacity 256")));
    // Idempotent repeats still answer 200 with a full book.
    assert_eq!(a.register("p0", "BTCUSDT", "60000", "58000", "65000").status, 200);
}

#[test]
fn protected_reads_and_read_only_mode() {
    let a = Appliance::start_with(control_support::fast_engine(), |c| c.protect_reads = true);
    assert_eq!(a.req("GET", "/api/v1/monitoring/status", &[], None).status, 401);
    // Prometheus keeps scraping when reads are protected; `api.protect_metrics` closes it.
    assert_eq!(a.req("GET", "/metrics", &[], None).status, 200);
    let m = Appliance::start_with(control_support::fast_engine(), |c| {
        c.protect_reads = true;
        c.protect_metrics = true;
    });
    assert_eq!(m.req("GET", "/metrics", &[], None).status, 401);
    assert_eq!(m.authed("GET", "/metrics", None).status, 200);
    assert_eq!(a.authed("GET", "/api/v1/monitoring/status", None).status, 200);
    assert_eq!(a.req("GET", "/", &[], None).status, 200, "the page loads, then asks for the token");
    assert_eq!(a.req("GET", "/health", &[], None).status, 200);
    assert_eq!(a.req("GET", "/ready", &[], None).status, 200);

    let ro = Appliance::start_with(control_support::fast_engine(), |c| c.token = None);
    let r = ro.authed("POST", "/api/v1/alerts/ack", None);
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].as_str().is_some_and(|d| d.contains("read-only")), "{}", r.text());
    assert_eq!(ro.req("POST", "/api/v1/session", &[], Some(r#"{"token":""}"#)).status, 401);
    assert_eq!(ro.req("GET", "/api/v1/monitoring/status", &[], None).status, 200);
}

#[test]
fn readiness_follows_price_sources_and_the_store() {
    let dir = std::env::temp_dir().join(format!("tg-ready-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = dir.clone();
    let a = Appliance::start_with(control_support::fast_engine(), move |c| {
        c.store = tickguard::control::StoreProbe::Dir(store);
    });
    let r = a.req("GET", "/ready", &[], None);
    assert_eq!(r.status, 503);
    assert!(
        r.json()["checks"]["store"].as_str().is_some_and(|s| s.contains("does not exist")),
        "{}",
        r.text()
    );
    std::fs::create_dir_all(&dir).expect("mkdir");
    // `/ready` is computed at most once a second.
    let fresh = || std::thread::sleep(tickguard::control::api::READY_EVERY);
    fresh();
    assert_eq!(a.req("GET", "/ready", &[], None).status, 200);
    assert_eq!(a.register("r1", "ETHUSDT", "3000", "2900", "3100").status, 201);
    a.tick("ETHUSDT", "3000");
    fresh();
    assert_eq!(a.req("GET", "/ready", &[], None).status, 200);
    a.feed(tickguard::core::engine::FeedEvent::Disconnected);
    fresh();
    let r = a.req("GET", "/ready", &[], None);
    assert_eq!(r.status, 503);
    assert!(
        r.json()["checks"]["price_sources"].as_str().is_some_and(|s| s.contains("ETHUSDT (cache)")),
        "{}",
        r.text()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn https_with_a_certificate() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let dir = std::env::temp_dir().join(format!("tg-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("cert");
    let (cert, key) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert, ck.cert.pem()).expect("write");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
    let tls = Some((cert.clone(), key.clone()));
    let a = Appliance::start_with(control_support::fast_engine(), move |c| c.tls = tls);
    let tls2 = Some((cert.clone(), key.clone()));
    let hsts = Appliance::start_with(control_support::fast_engine(), move |c| {
        c.tls = tls2;
        c.hsts = true;
    });

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let over_tls = |addr: std::net::SocketAddr, req: String| {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
        let sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(req.as_bytes()).expect("send");
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out);
        control_support::parse_response(&out)
    };
    let body = json!({"token": TOKEN}).to_string();
    let login = |addr: std::net::SocketAddr| {
        format!(
            "POST /api/v1/session HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: https://localhost:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            addr.port(),
            addr.port(),
            body.len()
        )
    };
    let r = over_tls(a.addr, login(a.addr));
    assert_eq!(r.status, 200, "{}", r.text());
    // Under TLS the session cookie is `__Host-` prefixed and Secure.
    let cookie = r.header("set-cookie").unwrap_or_default().to_string();
    assert!(cookie.starts_with("__Host-tg_session=") && cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("Path=/") && !cookie.to_ascii_lowercase().contains("domain="), "{cookie}");
    assert_eq!(r.header("strict-transport-security"), None, "HSTS only with api.hsts");
    let r = over_tls(hsts.addr, login(hsts.addr));
    assert_eq!(r.header("strict-transport-security"), Some("max-age=31536000"), "api.hsts = true");
    // A plain `tg_session` cookie (set over plain HTTP by anyone on the LAN) is no session
    // over TLS.
    let sid = cookie.split(['=', ';']).nth(1).unwrap_or_default().to_string();
    let probe = |name: &str| {
        over_tls(
            a.addr,
            format!(
                "GET /api/v1/session HTTP/1.1\r\nHost: localhost:{}\r\nCookie: {name}={sid}\r\nConnection: close\r\n\r\n",
                a.addr.port()
            ),
        )
        .json()["authenticated"]
            .clone()
    };
    assert_eq!(probe("__Host-tg_session"), json!(true));
    assert_eq!(probe("tg_session"), json!(false));
    // A ClientHello sent a byte at a time is cut at the head deadline, whatever each read does.
    let tls3 = Some((cert.clone(), key.clone()));
    let slow = Appliance::start_with(control_support::fast_engine(), move |c| {
        c.tls = tls3;
        c.limits.head_timeout = Duration::from_secs(2);
    });
    let mut s = std::net::TcpStream::connect(slow.addr).expect("connect");
    let t0 = std::time::Instant::now();
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    let mut cut = None;
    for b in hello.iter().cycle().take(40) {
        if s.write_all(&[*b]).is_err() {
            cut = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        s.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 64];
        let closed = matches!(s.read(&mut buf), Ok(0));
        s.set_nonblocking(false).expect("blocking");
        if closed {
            cut = Some(t0.elapsed());
            break;
        }
    }
    let cut = cut.expect("a byte-by-byte handshake was never cut");
    assert!(cut < Duration::from_millis(3500), "cut after {cut:?}, bound 2 s");
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = raw(a.addr, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", Duration::from_secs(3));
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "no plain answer on the TLS port");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_tls_files_are_a_configuration_error() {
    let mut cfg = tickguard::control::ControlConfig::new("127.0.0.1:0".parse().expect("addr"), None);
    cfg.tls = Some(("/nonexistent/api.crt".into(), "/nonexistent/api.key".into()));
    let a = Appliance::start();
    let e = tickguard::control::spawn(cfg, a.handle.clone(), None).err().expect("an error");
    assert!(e.contains("api.tls_cert"), "{e}");
}

#[test]
fn json_numbers_and_strings_are_exact_prices() {
    let a = Appliance::start();
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"btc-1","symbol":"BTCUSDT","side":"short","qty":0.5,"entry":"60000.12345678","stop_loss":61000,"take_profit":"59000.5"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["entry_price"], 60000.12345678);
    assert_eq!(v["qty"], 0.5);
    assert_eq!(v["side"], "short");
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"x","symbol":"X","side":"long","qty":"1.123456789","entry":1}"#),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("qty")), "{}", r.text());
}

#[test]
fn a_registered_product_reaches_the_broker() {
    use std::sync::{Arc, Mutex};
    use tickguard::broker::upstox::Product;
    let got: Arc<Mutex<Vec<(String, Product)>>> = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let a = Appliance::start_with(control_support::fast_engine(), move |c| {
        c.products = Some(tickguard::control::ProductSink(Arc::new(move |id: &str, p: Product| {
            g.lock().expect("lock").push((id.to_string(), p));
        })));
    });
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"u1","symbol":"NSE_EQ|INE002A01018","side":"long","qty":5,"entry":2900,"stop_loss":2850,"product":"MTF"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["product"], "MTF");
    assert_eq!(got.lock().expect("lock").as_slice(), &[("u1".to_string(), Product::Mtf)]);
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"u2","symbol":"X","side":"long","qty":5,"entry":1,"product":"CNC"}"#),
    );
    assert_eq!((r.status, r.json()["field"].as_str()), (400, Some("product")));
}
