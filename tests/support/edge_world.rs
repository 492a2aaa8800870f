//! The loopback world of the binary's edge tests (`tests/network_edge.rs`,
//! `tests/protection_binance.rs`, and through [`Loopback`] `tests/support/upstox_world.rs`):
//! a test directory, a throw-away CA, a DNS chain (a "system" resolver named in a test
//! resolv.conf and fallbacks in `dns.nameservers`), a TLS WebSocket server speaking Binance's
//! combined stream on `stream.test`, the configuration writer, and a small client for the
//! binary's HTTP API. Everything on 127.0.0.1; only the test DNS servers know the host names.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::app::Log;
use super::ca::TestCa;
use super::dns::{Behavior, DnsServer};
use super::guard::free_port;
use super::ws::{Fault, WsServer};

/// 127.0.0.1, what every test DNS server answers.
pub const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Bearer token of the binary's API (`api.token_file`) in every edge world.
pub const API_TOKEN: &str = "edge-world-test-token-0123456789";

/// The directory, the CA and the DNS chain of one test.
pub struct Loopback {
    /// The test's directory (configuration, resolv.conf, `state/`).
    pub dir: PathBuf,
    /// The CA the binary trusts (`tls.extra_ca`).
    pub ca: TestCa,
    /// The "system" resolver, named in the test resolv.conf.
    pub system: DnsServer,
    /// The fallbacks (`dns.nameservers`), in order.
    pub fallbacks: Vec<DnsServer>,
}

impl Loopback {
    /// A fresh directory and CA, the system resolver and `fallbacks` fallback resolvers, every
    /// one answering 127.0.0.1 for every name.
    pub async fn start(name: &str, fallbacks: usize) -> Loopback {
        let dir = super::test_dir(name);
        let ca = TestCa::new(&dir);
        let system = DnsServer::start().await;
        let mut servers = Vec::with_capacity(fallbacks);
        for _ in 0..fallbacks {
            servers.push(DnsServer::start().await);
        }
        let net = Loopback { dir, ca, system, fallbacks: servers };
        net.dns_all(Behavior::Answer(vec![LOCALHOST]));
        net
    }

    /// Every DNS server: the system resolver, then the fallbacks.
    pub fn servers(&self) -> impl Iterator<Item = &DnsServer> {
        std::iter::once(&self.system).chain(&self.fallbacks)
    }

    /// Sets the behaviour of every DNS server for every name.
    pub fn dns_all(&self, b: Behavior) {
        for s in self.servers() {
            s.set_default(b.clone());
        }
    }

    /// The `[dns]` and `[tls]` sections of a configuration (writes the test resolv.conf naming
    /// the system resolver).
    pub fn dns_tls_toml(&self) -> String {
        let resolv = self.system.write_resolv_conf(&self.dir);
        let nameservers: Vec<String> = self.fallbacks.iter().map(|s| format!("\"{}\"", s.addr)).collect();
        format!(
            "[dns]\nuse_system = true\nresolv_conf = \"{}\"\nnameservers = [{}]\ntimeout_s = 0.3\n\n[tls]\nextra_ca = \"{}\"\n",
            resolv.display(),
            nameservers.join(", "),
            self.ca.ca_path.display(),
        )
    }

    /// The state directory (`store.dir`), the same for every configuration of the world (a
    /// restart finds what the last run stored).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes [`API_TOKEN`] to `api.token` and returns its path.
    pub fn write_api_token(&self) -> PathBuf {
        let token = self.dir.join("api.token");
        std::fs::write(&token, API_TOKEN).expect("write token");
        token
    }

    /// Writes `text` as the world's `tickguard.toml` and returns its path.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("tickguard.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// The Binance edge: a [`Loopback`] and the WebSocket feed on `stream.test`. The REST side on
/// `api.test` (a price server or the fake Binance) is the test's own.
pub struct BinanceEdge {
    /// Directory, CA, DNS chain.
    pub net: Loopback,
    /// The feed.
    pub ws: WsServer,
    /// `api.listen` port of the last configuration written.
    pub api_port: Cell<u16>,
}

impl std::ops::Deref for BinanceEdge {
    type Target = Loopback;
    fn deref(&self) -> &Loopback {
        &self.net
    }
}

/// What the Binance edge tests' configurations differ in.
pub struct BinanceSetup<'a> {
    /// Port of `https://api.test:PORT` (`feed.rest_url`).
    pub rest_port: u16,
    /// `feed.instruments` (the line is left out when empty).
    pub instruments: &'a [&'a str],
    /// `cache.stale_after_s`.
    pub stale_after_s: f64,
    /// `cache.expire_after_s`.
    pub expire_after_s: f64,
    /// `cache.blind_grace_s`.
    pub blind_grace_s: f64,
    /// The body of `[broker]`.
    pub broker: &'a str,
    /// What follows `[store]`: `[sim]`, `[[positions]]`, more sections.
    pub tail: &'a str,
}

impl BinanceEdge {
    /// A [`Loopback`] with `fallbacks` fallback resolvers and the WebSocket server.
    pub async fn start(name: &str, fallbacks: usize) -> BinanceEdge {
        let net = Loopback::start(name, fallbacks).await;
        let ws = WsServer::start(net.ca.server_config(&["stream.test"])).await;
        BinanceEdge { net, ws, api_port: Cell::new(0) }
    }

    /// Writes a configuration (`wss://stream.test`, `https://api.test`, the DNS chain, the CA,
    /// an API on a free port with [`API_TOKEN`]) and returns its path.
    pub fn config(&self, s: &BinanceSetup) -> PathBuf {
        let api = free_port();
        self.api_port.set(api);
        let token = self.write_api_token();
        let instruments = if s.instruments.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = s.instruments.iter().map(|i| format!("\"{i}\"")).collect();
            format!("instruments = [{}]\n", quoted.join(", "))
        };
        let text = format!(
            r#"
[api]
listen = "127.0.0.1:{api}"
token_file = "{token}"

[feed]
venue = "binance"
ws_url = "wss://stream.test:{ws}/stream"
rest_url = "https://api.test:{rest}"
{instruments}silence_timeout_s = 1
reconnect_initial_s = 0.2
reconnect_max_s = 1.5
rest_poll_s = 0.3

{dns_tls}
[cache]
stale_after_s = {stale}
expire_after_s = {expire}
blind_grace_s = {grace}

[broker]
{broker}

[store]
dir = "{store}"

{tail}
"#,
            token = token.display(),
            ws = self.ws.port,
            rest = s.rest_port,
            dns_tls = self.dns_tls_toml(),
            stale = s.stale_after_s,
            expire = s.expire_after_s,
            grace = s.blind_grace_s,
            broker = s.broker,
            store = self.state_dir().display(),
            tail = s.tail,
        );
        self.write_config(&text)
    }

    /// Pushes a `bookTicker` to every feed connection.
    pub fn book_ticker(&self, symbol: &str, bid: &str, ask: &str) {
        self.ws.push(&book_ticker(symbol, bid, ask));
    }

    /// The WebSocket host refuses and the live connection is closed: the feed is down.
    pub fn feed_dies(&self) {
        self.ws.set_fault(Fault::Refuse);
        self.ws.apply_now(Fault::Refuse);
    }
}

/// A Binance combined-stream `bookTicker` frame.
pub fn book_ticker(symbol: &str, bid: &str, ask: &str) -> String {
    format!(
        r#"{{"stream":"{}@bookTicker","data":{{"u":1,"s":"{symbol}","b":"{bid}","B":"3.5","a":"{ask}","A":"2.0"}}}}"#,
        symbol.to_ascii_lowercase()
    )
}

/// Waits (10 s at most) for the feed to be up and subscribed, from line `from` on; returns the
/// index after that line.
pub async fn wait_subscribed(log: &Log, from: usize) -> usize {
    let l = log
        .expect_from(
            from,
            "[RECONNECT] event=subscribed",
            |l| l.contains("[RECONNECT] event=subscribed"),
            Duration::from_secs(10),
        )
        .await;
    l.idx + 1
}

/// One request to the binary's API on `127.0.0.1:port` with [`API_TOKEN`], over a fresh
/// connection: the status code (0 if unreadable) and the body. `None` if no connection could
/// be made within 3 s or the request could not be sent (nothing reached the API).
pub async fn api_text(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let connect = tokio::net::TcpStream::connect((LOCALHOST, port));
    let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
        return None;
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Some((status, text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string())))
}
