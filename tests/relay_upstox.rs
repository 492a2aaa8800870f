//! An Upstox relay through the real binary: the guard watches Binance, the relay serves an
//! Upstox instrument from its own connection (its own token file, the Market Data Feed V3
//! over the fake), with its snapshot backfilled from the intraday candle API. The relay's
//! symbol never reaches the guard's cache or subscriptions.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::app::App;
use support::fake_upstox::IntradayCandle;
use support::guard::{GuardWorld, free_port};
use support::upstox_feed::{TOKEN, UpstoxFake};
use tokio_tungstenite::tungstenite::Message;

const KEY: &str = "NSE_EQ|INE002A01018";

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).ok(),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

/// Reads until a message matches (bounded by `within` and 500 messages).
async fn until(ws: &mut Ws, within: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    for _ in 0..500 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = next_json(ws, left).await?;
        if pred(&m) {
            return Some(m);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstox_relay_serves_its_own_connection_with_backfilled_candles() {
    let w = GuardWorld::new("relay_upstox").await;
    let tls = w.ca.server_config(&["127.0.0.1"]);
    let up = UpstoxFake::start(tls.clone(), tls, "127.0.0.1").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let bar = now - now % 60_000;
    let candles: Vec<IntradayCandle> = (1..=5u64)
        .rev()
        .map(|k| {
            let p = 2400.0 + k as f64;
            IntradayCandle::new(bar - k * 60_000, p, p + 2.0, p - 1.0, p + 1.0, 1000 * k)
        })
        .collect();
    up.set_intraday(KEY, candles.clone());
    std::fs::write(w.dir.join("relay.token"), format!("{TOKEN}\n")).expect("token");
    let (port, health) = (free_port(), free_port());
    let extra = format!(
        r#"
[relay]
enabled = true
exchange = "upstox"
listen = "127.0.0.1:{port}"
health_listen = "127.0.0.1:{health}"
rest_url = "{rest}"
token_file = "{dir}/relay.token"
intervals = ["1m"]
"#,
        rest = up.rest_url("127.0.0.1"),
        dir = w.dir.display()
    );
    let cfg = w.config("state", &extra);
    let app = App::start(&cfg);
    assert!(w.api_up(Duration::from_secs(20)).await, "{}", app.tail());

    let mut ws = None;
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if let Ok((s, _)) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}"), tcp).await {
                ws = Some(s);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = ws.expect("the relay listens");
    let req = format!(r#"{{"exchange":"upstox","contract_type":"equity","symbols":["{KEY}"],"limit":2}}"#);
    ws.send(Message::text(req)).await.expect("send");

    // The snapshot: the last two closed bars, from the intraday candle API.
    let snap = next_json(&mut ws, Duration::from_secs(10)).await.expect("snapshot");
    assert_eq!(snap["type"], "snapshot", "{snap}");
    assert_eq!(snap["exchange"], "upstox");
    assert_eq!(snap["symbol"], KEY);
    let got: Vec<(i64, String, String)> = snap["candles"]
        .as_array()
        .expect("candles")
        .iter()
        .map(|c| {
            (
                c["open_time"].as_i64().unwrap_or(0),
                c["close"].as_str().unwrap_or("").to_string(),
                c["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let want: Vec<(i64, String, String)> = candles[3..]
        .iter()
        .map(|c| (c.open_ms as i64, format!("{:.2}", c.close), "rest".to_string()))
        .collect();
    assert_eq!(got, want, "{snap}");
    assert!(up.intraday_reads() >= 1);

    // Live: the relay's own Upstox connection carries the instrument's ticks, as quotes and
    // as the open bar built from last traded prices.
    let mut quote = None;
    let mut open = None;
    for _ in 0..40 {
        up.tick(KEY, 2501.5);
        if let Some(m) =
            until(&mut ws, Duration::from_millis(250), |m| m["type"] == "quote" || m["type"] == "candle")
                .await
        {
            if m["type"] == "quote" {
                quote = Some(m);
            } else if m["closed"] == false {
                open = Some(m);
            }
        }
        if quote.is_some() && open.is_some() {
            break;
        }
    }
    let quote = quote.unwrap_or_else(|| {
        panic!("a quote from the relay's Upstox connection (open {open:?})\n{}", app.tail())
    });
    // Upstox's feed as the guard decodes it: the last traded price and its time.
    assert_eq!(quote["last"], "2501.50", "{quote}");
    assert!(quote["bid"].is_null() && quote["ask"].is_null(), "{quote}");
    assert!(quote["ts_event"].is_i64(), "{quote}");
    assert!(quote["ts_recv"].is_i64());
    let open = open.expect("the open bar");
    assert_eq!(open["close"], "2501.50", "{open}");
    assert_eq!(open["source"], "trades");

    // The relay has its own connection to Upstox; the guard (on Binance) never saw the key.
    assert!(up.live() >= 1);
    // The relay's views refresh every second.
    let mut ch = Value::Null;
    for _ in 0..40 {
        let (code, body) = w.api("GET", "/api/v1/monitoring/connection-health", None).await;
        assert_eq!(code, 200);
        ch = body;
        if ch["relay"]["symbols"] == 1 && ch["relay"]["clients"].as_array().is_some_and(|c| c.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ch["price_cache"]["cache_entries"].get(KEY).is_none(), "{ch}");
    assert_eq!(ch["relay"]["running"], true, "{ch}");
    assert_eq!(ch["relay"]["symbols"], 1, "{ch}");
    assert_eq!(ch["relay"]["clients"][0]["interval"], "1m", "{ch}");
    // The guard's feed subscribes its own instrument only.
    assert_eq!(ch["websocket"]["subscribed_symbols"], 1, "{ch}");
    assert!(!w.streams().iter().any(|s| s.contains("ine002a01018")));
    // The guard's readiness is its own: the relay's symbol (never quoted to the guard) does
    // not make it blind or unready.
    let (code, ready) = w.api("GET", "/ready", None).await;
    assert_eq!(code, 200, "{ready}");
    app.stop().await;
}
