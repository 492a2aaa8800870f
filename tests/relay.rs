//! The LAN relay through the real binary (`tickguard run` with `[relay]`), against the fake
//! venue on loopback, with real WebSocket clients.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use support::app::App;
use support::guard::{GuardWorld, free_port};
use tokio_tungstenite::tungstenite::Message;

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    within: Duration,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??.ok()?;
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).ok();
        }
        if let Message::Close(c) = m {
            return Some(serde_json::json!({"type":"__close","frame": format!("{c:?}")}));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_the_seed_request_gets_a_snapshot_then_quotes() {
    let w = GuardWorld::new("relay_smoke").await;
    let (port, health) = (free_port(), free_port());
    let extra = format!(
        r#"
[relay]
enabled = true
listen = "127.0.0.1:{port}"
health_listen = "127.0.0.1:{health}"
ws_url = "wss://127.0.0.1:{ws}/stream"
rest_url = "{rest}"
intervals = ["1s", "1m"]
close_delay_s = 0.3
"#,
        ws = w.ws.port,
        rest = w.fake.base_url()
    );
    let cfg = w.config("state", &extra);
    let app = App::start(&cfg);
    assert!(w.api_up(Duration::from_secs(20)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}"), tcp).await.expect("connect");
    ws.send(Message::text(
        r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3,"interval":"1s"}"#,
    ))
    .await
    .unwrap();
    for _ in 0..40 {
        w.ws.push_book_ticker("BTCUSDT", "100.5", "100.6");
        let m = next_json(&mut ws, Duration::from_millis(500)).await;
        eprintln!("{m:?}");
    }
    eprintln!("{}", app.log.tail());
    app.stop().await;
}
