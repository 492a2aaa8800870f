//! The Binance side of the load tools (`examples/feed_load.rs` of `scripts/bench-feed`,
//! `tests/bench_close.rs` of `scripts/bench-close`): unmasked server frames, `bookTicker`
//! frames for numbered instruments, a ring of pre-built chunks, and the reader that answers the
//! client's SUBSCRIBE and pings. Included by `#[path]` in both.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// The symbol of instrument `i`.
pub fn symbol(i: usize) -> String {
    format!("S{i:04}USDT")
}

/// An unmasked server text frame.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 65_535 => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

pub fn book_ticker(i: usize, u: u64, bid: &str, ask: &str) -> String {
    let s = symbol(i);
    format!(
        r#"{{"stream":"{}@bookTicker","data":{{"u":{u},"s":"{s}","b":"{bid}","B":"12.34000000","a":"{ask}","A":"5.67800000"}}}}"#,
        s.to_ascii_lowercase()
    )
}

/// Chunks of about `chunk` bytes of frames cycling through every instrument with prices between the
/// levels (95.00 .. 105.00), and how many frames each holds.
pub fn ring(instruments: usize, chunk: usize) -> Vec<(Vec<u8>, u64)> {
    let mut chunks = Vec::new();
    let (mut cur, mut n) = (Vec::with_capacity(chunk + 1024), 0u64);
    let mut u = 1u64;
    for round in 0..8usize {
        for k in 0..instruments {
            // A scrambled order, so consecutive frames rarely hit the same instrument.
            let i = (k * 389 + round * 7) % instruments;
            let cents = 9_500 + ((i * 37 + round * 131) % 1_000);
            let bid = format!("{}.{:02}000000", cents / 100, cents % 100);
            let ask = format!("{}.{:02}000000", (cents + 1) / 100, (cents + 1) % 100);
            frame(&mut cur, book_ticker(i, u, &bid, &ask).as_bytes());
            u += 1;
            n += 1;
            if cur.len() >= chunk {
                chunks.push((std::mem::replace(&mut cur, Vec::with_capacity(chunk + 1024)), n));
                n = 0;
            }
        }
    }
    if !cur.is_empty() {
        chunks.push((cur, n));
    }
    chunks
}

/// Reads the client's frames: answers SUBSCRIBE with an ack and pings with a pong (via `ctl`).
pub async fn read_client<R: tokio::io::AsyncRead + Unpin>(
    mut r: R,
    ctl: mpsc::UnboundedSender<Vec<u8>>,
    acks: Arc<AtomicU64>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        loop {
            if buf.len() < 2 {
                break;
            }
            let op = buf[0] & 0x0F;
            let (mut hdr, mut len) = (2usize, usize::from(buf[1] & 0x7F));
            if len == 126 {
                if buf.len() < 4 {
                    break;
                }
                len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                hdr = 4;
            } else if len == 127 {
                if buf.len() < 10 {
                    break;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                len = u64::from_be_bytes(b) as usize;
                hdr = 10;
            }
            let masked = buf[1] & 0x80 != 0;
            let total = hdr + if masked { 4 } else { 0 } + len;
            if buf.len() < total {
                break;
            }
            let mut payload = buf[total - len..total].to_vec();
            if masked {
                let m = [buf[hdr], buf[hdr + 1], buf[hdr + 2], buf[hdr + 3]];
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            buf.drain(..total);
            match op {
                0x1 => {
                    let text = String::from_utf8_lossy(&payload);
                    if text.contains("\"SUBSCRIBE\"") {
                        let id: String = text
                            .split("\"id\":")
                            .nth(1)
                            .map(|t| t.chars().take_while(|c| c.is_ascii_digit()).collect())
                            .unwrap_or_default();
                        let mut out = Vec::new();
                        frame(&mut out, format!(r#"{{"result":null,"id":{id}}}"#).as_bytes());
                        let _ = ctl.send(out);
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                0x9 => {
                    let mut out = vec![0x8A, payload.len() as u8];
                    out.extend_from_slice(&payload);
                    let _ = ctl.send(out);
                }
                0x8 => return,
                _ => {}
            }
        }
    }
}

/// The value of ` key=` in a `stats` line (`?` when absent).
pub fn field(line: &str, key: &str) -> String {
    let pat = format!(" {key}=");
    line.find(&pat).map_or("?".into(), |i| line[i + pat.len()..].split(' ').next().unwrap_or("?").to_string())
}
