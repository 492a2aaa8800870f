#![allow(dead_code)] // shared by tests/world.rs and tests/world_binary.rs, each using part of it
//! A small blocking HTTP/1.1 client for the control plane on 127.0.0.1 (one request per
//! connection, every read bounded by a timeout). Run from `spawn_blocking` in the paused
//! runtime: a blocking task holds tokio's virtual clock while the real API thread answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status and body of one answer (status 0: no answer).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let fail = |why: String| Answer { status: 0, body: why };
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let b = body.unwrap_or("");
    if body.is_some() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(b);
    if let Err(e) = s.write_all(req.as_bytes()) {
        return fail(format!("write: {e}"));
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..4096 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return fail(format!("read: {e}")),
        }
        if buf.len() > 4 << 20 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
    Answer { status, body }
}

/// The same from async code: on a blocking thread.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Answer {
    let (m, p, t) = (method.to_string(), path.to_string(), token.map(str::to_string));
    tokio::task::spawn_blocking(move || request(addr, &m, &p, t.as_deref(), body.as_deref()))
        .await
        .unwrap_or(Answer { status: 0, body: "join".into() })
}
