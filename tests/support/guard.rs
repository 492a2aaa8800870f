//! A whole loopback Binance world for the real `tickguard run` binary: a TLS WebSocket feed
//! ([`super::ws::WsServer`]), a fake Binance serving orders, look-ups, balances, the REST
//! last price and the full `exchangeInfo` ([`super::fake_binance::FakeBinance`]), a throw-away
//! CA, and a small async client for the binary's HTTP API. Everything on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ca::TestCa;
use super::fake_binance::{self, FakeBinance};
use super::ws::WsServer;

/// The API token of every world.
pub const TOKEN: &str = "guard-world-token-0123456789abcdef";

/// Symbols the fake trades: symbol, base asset, balance held.
pub const SYMBOLS: [(&str, &str, &str); 4] = [
    ("BTCUSDT", "BTC", "1"),
    ("ETHUSDT", "ETH", "10"),
    ("BNBUSDT", "BNB", "10"),
    ("NOPRICEUSDT", "NOPRICE", "10"),
];

/// The world of one test.
pub struct GuardWorld {
    /// Its directory.
    pub dir: PathBuf,
    /// The CA the binary trusts.
    pub ca: TestCa,
    /// The feed.
    pub ws: WsServer,
    /// The venue (broker, REST prices, `exchangeInfo`).
    pub fake: FakeBinance,
    /// The API's port.
    pub api_port: u16,
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A Binance combined-stream `bookTicker` frame.
pub fn book_ticker(symbol: &str, bid: &str, ask: &str) -> String {
    format!(
        r#"{{"stream":"{}@bookTicker","data":{{"u":1,"s":"{symbol}","b":"{bid}","B":"1","a":"{ask}","A":"1"}}}}"#,
        symbol.to_ascii_lowercase()
    )
}

impl GuardWorld {
    /// Starts the servers; every symbol of [`SYMBOLS`] is listed and trading, priced at 100.
    pub async fn new(name: &str) -> GuardWorld {
        let dir = super::test_dir(name);
        let ca = TestCa::new(&dir);
        let tls = ca.server_config(&["127.0.0.1"]);
        let ws = WsServer::start(tls.clone()).await;
        let fake = FakeBinance::start(tls).await;
        for (s, base, held) in SYMBOLS {
            fake.add_symbol(s, base, "USDT", "0.00001", "0.00001", "1", "100.00");
            fake.set_balance(base, held, "0");
        }
        std::fs::write(dir.join("key"), fake_binance::API_KEY).expect("key file");
        std::fs::write(dir.join("secret"), format!("{}\n", fake_binance::SECRET)).expect("secret file");
        std::fs::write(dir.join("api.token"), TOKEN).expect("token file");
        GuardWorld { dir, ca, ws, fake, api_port: free_port() }
    }

    /// Writes a configuration on this world's state directory (`state`), with `extra` TOML
    /// appended (more sections or `[[positions]]`), and returns its path.
    pub fn config(&self, state: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"[api]
listen = "127.0.0.1:{api}"
token_file = "{dir}/api.token"

[feed]
venue = "binance"
ws_url = "wss://127.0.0.1:{ws}/stream"
rest_url = "{venue}"
instruments = ["BTCUSDT"]
silence_timeout_s = 2
reconnect_initial_s = 0.1
reconnect_max_s = 0.5
rest_poll_s = 0.3

[dns]
use_system = false
nameservers = ["127.0.0.1:9"]
timeout_s = 0.2

[tls]
extra_ca = "{ca}"

[cache]
stale_after_s = 2
expire_after_s = 5
blind_grace_s = 1

[broker]
kind = "binance"
rest_url = "{venue}"
key_file = "{dir}/key"
secret_file = "{dir}/secret"
recv_window_ms = 500
retry_initial_s = 0.1
retry_max_s = 0.5
unknown_alarm_s = 1

[store]
dir = "{dir}/{state}"
{extra}
"#,
            api = self.api_port,
            dir = self.dir.display(),
            ws = self.ws.port,
            venue = self.fake.base_url(),
            ca = self.ca.ca_path.display(),
        );
        let path = self.dir.join(format!("{state}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Pushes a `bookTicker` to every feed connection.
    pub fn price(&self, symbol: &str, bid: &str, ask: &str) {
        self.ws.push(&book_ticker(symbol, bid, ask));
    }

    /// One API request with the token; `(status, JSON body or Null)`.
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        api_request(self.api_port, method, path, body).await
    }

    /// Waits until the API answers (the binary has started), at most `within`.
    pub async fn api_up(&self, within: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < within {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.api_port)).await.is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Every stream the feed's connections asked for (connection paths and SUBSCRIBE
    /// messages), lower case.
    pub fn streams(&self) -> Vec<String> {
        let mut out: Vec<String> = self.ws.subscriptions().into_iter().flatten().collect();
        for p in self.ws.paths() {
            if let Some((_, q)) = p.split_once("streams=") {
                out.extend(q.split('/').map(str::to_string));
            }
        }
        out.iter().map(|s| s.to_ascii_lowercase()).collect()
    }
}

/// One request to the API on `127.0.0.1:port` with the world's token, over a fresh connection.
pub async fn api_request(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let connect = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    let Ok(Ok(mut tcp)) = tokio::time::timeout(Duration::from_secs(3), connect).await else {
        return (0, Value::Null);
    };
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return (0, Value::Null);
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json =
        text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
    (status, json)
}
