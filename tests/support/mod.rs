//! Loopback test servers for integration tests of the network edge.
//!
//! Everything here binds to `127.0.0.1` only, every loop is bounded (by input, by a count or by
//! a timeout), and every server aborts its tokio tasks when dropped. Use it from an integration
//! test with `mod support;`.
//!
//! - [`ca::TestCa`]: a throw-away CA (rcgen) that writes `ca.pem` and issues rustls server configs.
//! - [`dns::DnsServer`]: a scriptable DNS server on UDP and TCP (same port).
//! - [`ws::WsServer`]: a TLS WebSocket server speaking Binance's combined-stream protocol.
//! - [`rest::RestServer`]: a TLS HTTP/1.1 server for `GET /api/v3/ticker/price`.
//! - [`wsio::WsStream`]: async WebSocket framing over any `AsyncRead + AsyncWrite` (tungstenite's
//!   state machine driven through an in-memory buffer), used by the server and by test clients.
//! - [`fake_binance::FakeBinance`] / [`fake_upstox::FakeUpstox`]: fake order APIs (signed
//!   orders, look-ups, balances; injectable faults) for the broker tests.
//! - [`upstox_feed::UpstoxFake`]: a fake Upstox (feed authorize, LTP quote, Market Data Feed V3
//!   over TLS with protobuf frames and faults).
//! - [`edge_world::BinanceEdge`] / [`upstox_world::UpstoxWorld`]: the loopback worlds (directory,
//!   CA, DNS chain, feed, configuration writer) of the binary's edge tests.
//! - [`json::Json`]: a small JSON reader/writer (the crate has no JSON dependency).
//! - [`relay_script::CandleScript`]: bars played as Binance `@trade` / `@kline_<i>` events on
//!   [`ws::WsServer`] and stored for `GET /api/v3/klines` on [`fake_binance::FakeBinance`].
#![allow(dead_code)]

pub mod app;
pub mod ca;
pub mod dns;
pub mod edge_world;
pub mod fake_binance;
pub mod fake_upstox;
pub mod guard;
pub mod json;
mod net;
pub mod relay_script;
pub mod rest;
pub mod upstox_feed;
pub mod upstox_world;
pub mod ws;
pub mod wsio;

/// A fresh, empty directory for one test under cargo's `CARGO_TARGET_TMPDIR`
/// (`<target>/tmp/<name>-<pid>-<n>`).
pub fn test_dir(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// Initialise `env_logger` for tests (`is_test(true)`); repeated calls are harmless.
pub fn init_logs() {
    let _ = env_logger::builder().is_test(true).try_init();
}
