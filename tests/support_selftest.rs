//! Self-test of the loopback test servers in `tests/support/`, with plain clients written here:
//! a tokio-rustls client trusting the test CA, WebSocket framing over it, raw DNS messages built
//! with hickory-proto, and raw HTTP/1.1 over TLS. Every test is bounded by a timeout.

mod support;

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tungstenite::Message as WsMessage;

use support::ca::{self, TestCa};
use support::dns::{Behavior, DnsServer, Transport};
use support::fake_binance::{self, FakeBinance, Kline, Route};
use support::fake_upstox::{self, FakeUpstox, IntradayCandle, UFault};
use support::json::Json;
use support::relay_script::CandleScript;
use support::rest::{RestFault, RestServer};
use support::ws::{Fault, Trade, WsServer};
use support::wsio::WsStream;

const TEST_LIMIT: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_secs(3);

/// Runs a test body under [`TEST_LIMIT`].
async fn bounded<F: Future<Output = ()>>(f: F) {
    support::init_logs();
    tokio::time::timeout(TEST_LIMIT, f).await.expect("test took too long");
}

async fn step<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("step timed out")
}

fn new_ca(name: &str) -> TestCa {
    TestCa::new(&support::test_dir(name))
}

async fn tls_connect(ca: &TestCa, port: u16, host: &str) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    ca.connector().connect(ca::server_name(host), tcp).await
}

async fn ws_connect(ca: &TestCa, server: &WsServer, streams: &[&str]) -> WsStream<TlsStream<TcpStream>> {
    let tls = step(tls_connect(ca, server.port, "localhost")).await.expect("tls connect");
    let (ws, resp) = step(WsStream::connect(tls, &server.url(streams))).await.expect("ws handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// `GET target` over TLS; returns (status, body).
async fn https_get(ca: &TestCa, port: u16, target: &str) -> io::Result<(u16, String)> {
    https_get_with(ca, port, target, "").await
}

/// [`https_get`] with extra header lines (each ending in `\r\n`).
async fn https_get_with(ca: &TestCa, port: u16, target: &str, headers: &str) -> io::Result<(u16, String)> {
    let mut tls = tls_connect(ca, port, "localhost").await?;
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: localhost:{port}\r\n{headers}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tls.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no head: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    assert!(head.contains("Connection: close"));
    Ok((status, body.to_owned()))
}

fn dns_query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    m
}

async fn udp_ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let bytes = dns_query(name, qtype).to_vec().expect("encode");
    sock.send_to(&bytes, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).await.expect("recv");
    Message::from_vec(&buf[..n]).expect("decode answer")
}

async fn tcp_ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut tcp = TcpStream::connect(server).await.expect("tcp connect");
    let bytes = dns_query(name, qtype).to_vec().expect("encode");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    tcp.write_all(&framed).await.expect("send");
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.expect("read len");
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tcp.read_exact(&mut buf).await.expect("read answer");
    Message::from_vec(&buf).expect("decode answer")
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

// ----- CA and REST ---------------------------------------------------------------------

#[tokio::test]
async fn ca_writes_pem_and_certifies_names_and_ips() {
    bounded(async {
        let ca = new_ca("ca");
        let pem = std::fs::read_to_string(&ca.ca_path).expect("ca.pem");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pem, ca.ca_pem);
        let server = RestServer::start(ca.server_config(&["localhost", "127.0.0.1"])).await;
        server.set_price("BNBUSDT", "575.00");
        for host in ["localhost", "127.0.0.1"] {
            let mut tls =
                step(tls_connect(&ca, server.port, host)).await.expect("handshake with the CA's cert");
            tls.write_all(b"GET /api/v3/ticker/price?symbol=BNBUSDT HTTP/1.1\r\n\r\n").await.expect("write");
            let mut out = String::new();
            step(tls.read_to_string(&mut out)).await.expect("read");
            assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        }
        // A name the certificate does not cover fails.
        let err = step(tls_connect(&ca, server.port, "example.com")).await;
        assert!(err.is_err());
    })
    .await;
}

#[tokio::test]
async fn bad_and_self_signed_configs_fail_the_handshake() {
    bounded(async {
        let ca = new_ca("bad");
        let bad = RestServer::start(ca.bad_server_config()).await;
        let err = step(tls_connect(&ca, bad.port, "localhost")).await.expect_err("wrong name must fail");
        assert!(err.to_string().contains("certificate"), "{err}");
        // ... yet the same certificate is fine for its own name.
        assert!(step(tls_connect(&ca, bad.port, ca::WRONG_NAME)).await.is_ok());
        let stranger = RestServer::start(ca::self_signed_config(&["localhost"])).await;
        let err =
            step(tls_connect(&ca, stranger.port, "localhost")).await.expect_err("unknown issuer must fail");
        assert!(err.to_string().contains("certificate"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn rest_serves_prices_like_binance() {
    bounded(async {
        let ca = new_ca("rest");
        let server = RestServer::start(ca.server_config(&["localhost"])).await;
        server.set_price("BNBUSDT", "575.00");
        server.set_price("BTCUSDT", "97000.12345678");
        server.set_price("ODD", "not-a-number");

        let (status, body) =
            step(https_get(&ca, server.port, "/api/v3/ticker/price?symbol=BNBUSDT")).await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"symbol":"BNBUSDT","price":"575.00000000"}"#);

        let raw = r#"/api/v3/ticker/price?symbols=["BTCUSDT","BNBUSDT"]"#;
        let (status, body) = step(https_get(&ca, server.port, raw)).await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            r#"[{"symbol":"BTCUSDT","price":"97000.12345678"},{"symbol":"BNBUSDT","price":"575.00000000"}]"#
        );
        let encoded = "/api/v3/ticker/price?symbols=%5B%22BNBUSDT%22%2C%22ODD%22%5D";
        let (status, body) = step(https_get(&ca, server.port, encoded)).await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(
            body,
            r#"[{"symbol":"BNBUSDT","price":"575.00000000"},{"symbol":"ODD","price":"not-a-number"}]"#
        );

        let invalid = r#"{"code":-1121,"msg":"Invalid symbol."}"#;
        let (status, body) =
            step(https_get(&ca, server.port, "/api/v3/ticker/price?symbol=NOPE")).await.expect("get");
        assert_eq!((status, body.as_str()), (400, invalid));
        let (status, body) =
            step(https_get(&ca, server.port, r#"/api/v3/ticker/price?symbols=["BNBUSDT","NOPE"]"#))
                .await
                .expect("get");
        assert_eq!((status, body.as_str()), (400, invalid));

        let (status, body) = step(https_get(&ca, server.port, "/api/v3/ticker/price")).await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(Json::parse(&body).and_then(|j| j.as_array().map(<[Json]>::len)), Some(3));
        let (status, _) = step(https_get(&ca, server.port, "/api/v3/nothing")).await.expect("get");
        assert_eq!(status, 404);

        let reqs = server.requests();
        assert_eq!(reqs.len(), 7);
        assert_eq!(reqs[0], "GET /api/v3/ticker/price?symbol=BNBUSDT HTTP/1.1");
        assert_eq!(server.connections(), 7);
    })
    .await;
}

#[tokio::test]
async fn rest_faults() {
    bounded(async {
        let ca = new_ca("rest-faults");
        let server = RestServer::start(ca.server_config(&["localhost"])).await;
        server.set_price("BNBUSDT", "575");
        let target = "/api/v3/ticker/price?symbol=BNBUSDT";

        server.set_fault(RestFault::Status(503));
        let (status, body) = step(https_get(&ca, server.port, target)).await.expect("get");
        assert_eq!(status, 503);
        assert!(body.contains("-1008"));
        server.set_fault(RestFault::Status(429));
        let (status, _) = step(https_get(&ca, server.port, target)).await.expect("get");
        assert_eq!(status, 429);

        server.set_fault(RestFault::Delay(Duration::from_millis(300)));
        let t0 = Instant::now();
        let (status, _) = step(https_get(&ca, server.port, target)).await.expect("get");
        assert_eq!(status, 200);
        assert!(t0.elapsed() >= Duration::from_millis(300));

        server.set_fault(RestFault::Drop);
        let err = step(https_get(&ca, server.port, target)).await;
        assert!(err.is_err(), "no answer expected: {err:?}");
        assert_eq!(server.requests().len(), 4, "the dropped request was read");

        server.set_fault(RestFault::Refuse);
        assert!(server.wait_for(|s| !s.listening(), STEP).await);
        let err = step(TcpStream::connect((Ipv4Addr::LOCALHOST, server.port))).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);

        server.set_fault(RestFault::None);
        assert!(server.wait_for(|s| s.listening(), STEP).await);
        let (status, body) = step(https_get(&ca, server.port, target)).await.expect("get");
        assert_eq!((status, body.as_str()), (200, r#"{"symbol":"BNBUSDT","price":"575.00000000"}"#));
    })
    .await;
}

// ----- WebSocket -----------------------------------------------------------------------

async fn recv_text(ws: &mut WsStream<TlsStream<TcpStream>>) -> String {
    step(ws.recv_text()).await.expect("a text message")
}

#[tokio::test]
async fn ws_speaks_the_combined_stream_protocol() {
    bounded(async {
        let ca = new_ca("ws");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let mut ws = ws_connect(&ca, &server, &["btcusdt@bookTicker"]).await;
        assert_eq!(server.paths(), vec!["/stream?streams=btcusdt@bookTicker".to_owned()]);
        assert_eq!((server.connections(), server.live()), (1, 1));

        let sub = r#"{"method":"SUBSCRIBE","params":["bnbusdt@trade","ethusdt@aggTrade"],"id":1}"#;
        step(ws.send(WsMessage::text(sub))).await.expect("send");
        assert_eq!(recv_text(&mut ws).await, r#"{"result":null,"id":1}"#);
        let unsub = r#"{"method":"UNSUBSCRIBE","params":["ethusdt@aggTrade"],"id":2}"#;
        step(ws.send(WsMessage::text(unsub))).await.expect("send");
        assert_eq!(recv_text(&mut ws).await, r#"{"result":null,"id":2}"#);
        let list = r#"{"method":"LIST_SUBSCRIPTIONS","id":"abc"}"#;
        step(ws.send(WsMessage::text(list))).await.expect("send");
        assert_eq!(
            recv_text(&mut ws).await,
            r#"{"result":["btcusdt@bookTicker","bnbusdt@trade"],"id":"abc"}"#
        );
        step(ws.send(WsMessage::text("nonsense"))).await.expect("send");
        assert!(recv_text(&mut ws).await.contains(r#""code":3"#));
        assert_eq!(
            server.subscriptions(),
            vec![vec!["bnbusdt@trade".to_owned(), "ethusdt@aggTrade".to_owned()]]
        );
        assert_eq!(server.messages()[0].len(), 4);

        let tick = r#"{"stream":"btcusdt@bookTicker","data":{"u":1,"s":"BTCUSDT","b":"1.0","B":"2","a":"1.1","A":"3"}}"#;
        server.push(tick);
        assert_eq!(recv_text(&mut ws).await, tick);
        server.push_raw(WsMessage::binary(vec![1u8, 2, 3]));
        match step(ws.recv()).await {
            Some(Ok(WsMessage::Binary(b))) => assert_eq!(&b[..], &[1, 2, 3]),
            other => panic!("expected binary, got {other:?}"),
        }

        // Client ping → pong with the same payload.
        step(ws.send(WsMessage::Ping(bytes::Bytes::from_static(b"hi")))).await.expect("ping");
        match step(ws.recv()).await {
            Some(Ok(WsMessage::Pong(p))) => assert_eq!(&p[..], b"hi"),
            other => panic!("expected pong, got {other:?}"),
        }
        assert_eq!(server.pings_received(), 1);

        // Server ping → the client sees it and (automatically) pongs.
        server.send_ping();
        match step(ws.recv()).await {
            Some(Ok(WsMessage::Ping(_))) => {}
            other => panic!("expected ping, got {other:?}"),
        }
        assert!(server.wait_for(|s| s.pongs_received() == 1, STEP).await);

        server.server_shutdown();
        let text = recv_text(&mut ws).await;
        let j = Json::parse(&text).expect("json");
        assert_eq!(j.get("stream").and_then(Json::as_str), Some("!serverShutdown"));
        assert_eq!(
            j.get("data").and_then(|d| d.get("e")).and_then(Json::as_str),
            Some("serverShutdown")
        );

        // A second connection is recorded separately; a clean client close ends it.
        let mut ws2 = ws_connect(&ca, &server, &["a@trade", "b@trade"]).await;
        server.push("first"); // reaches a client as soon as its handshake is done
        assert_eq!(recv_text(&mut ws2).await, "first");
        assert!(server.wait_for(|s| s.live() == 2, STEP).await);
        assert_eq!(server.paths()[1], "/stream?streams=a@trade/b@trade");
        assert_eq!(server.subscriptions()[1], Vec::<String>::new());
        assert_eq!(
            server.current_subscriptions()[1],
            vec!["a@trade".to_owned(), "b@trade".to_owned()]
        );
        step(ws2.close(1000, "bye")).await.expect("close");
        match step(ws2.recv()).await {
            Some(Ok(WsMessage::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
            other => panic!("expected close reply, got {other:?}"),
        }
        assert!(server.wait_for(|s| s.live() == 1, STEP).await);
        drop(ws);
        assert!(server.wait_for(|s| s.live() == 0, STEP).await);
        assert_eq!(server.connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn ws_fault_silent() {
    bounded(async {
        let ca = new_ca("ws-silent");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        server.set_fault(Fault::Silent);
        let mut ws = ws_connect(&ca, &server, &["x@trade"]).await;
        step(ws.send(WsMessage::Ping(bytes::Bytes::from_static(b"p")))).await.expect("ping");
        step(ws.send(WsMessage::text(r#"{"method":"SUBSCRIBE","params":["y@trade"],"id":7}"#)))
            .await
            .expect("send");
        server.push("{}");
        assert!(
            tokio::time::timeout(Duration::from_millis(500), ws.recv()).await.is_err(),
            "a silent server sends nothing, not even a pong"
        );
        assert_eq!(server.pings_received(), 1);
        assert_eq!(server.subscriptions(), vec![vec!["y@trade".to_owned()]]);

        // apply_now(None) makes it talk again.
        server.apply_now(Fault::None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        step(ws.send(WsMessage::Ping(bytes::Bytes::from_static(b"q")))).await.expect("ping");
        match step(ws.recv()).await {
            Some(Ok(WsMessage::Pong(p))) => assert_eq!(&p[..], b"q"),
            other => panic!("expected pong, got {other:?}"),
        }

        // apply_now(Silent) on a live connection.
        server.apply_now(Fault::Silent);
        tokio::time::sleep(Duration::from_millis(50)).await;
        step(ws.send(WsMessage::Ping(bytes::Bytes::from_static(b"r")))).await.expect("ping");
        assert!(tokio::time::timeout(Duration::from_millis(500), ws.recv()).await.is_err());
    })
    .await;
}

#[tokio::test]
async fn ws_fault_reset() {
    bounded(async {
        let ca = new_ca("ws-reset");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let mut live = ws_connect(&ca, &server, &["x@trade"]).await;

        server.set_fault(Fault::Reset);
        let err = step(tls_connect(&ca, server.port, "localhost")).await.expect_err("reset during handshake");
        assert!(
            matches!(err.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof),
            "{err:?}"
        );
        assert_eq!(server.connections(), 2);

        server.apply_now(Fault::Reset);
        match step(live.recv()).await {
            Some(Err(tungstenite::Error::Io(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}")
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        assert!(server.wait_for(|s| s.live() == 0, STEP).await);
    })
    .await;
}

#[tokio::test]
async fn ws_fault_close_with_error() {
    bounded(async {
        let ca = new_ca("ws-close");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let mut live = ws_connect(&ca, &server, &["x@trade"]).await;

        server.set_fault(Fault::CloseWithError(1008, "Too many requests".into()));
        let mut ws = ws_connect(&ca, &server, &["x@trade"]).await;
        match step(ws.recv()).await {
            Some(Ok(WsMessage::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1008);
                assert_eq!(f.reason.as_str(), "Too many requests");
            }
            other => panic!("expected close 1008, got {other:?}"),
        }
        assert!(step(ws.recv()).await.is_none(), "close handshake completes");

        server.apply_now(Fault::CloseWithError(1001, "going away".into()));
        match step(live.recv()).await {
            Some(Ok(WsMessage::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
        assert!(server.wait_for(|s| s.live() == 0, STEP).await);
    })
    .await;
}

#[tokio::test]
async fn ws_fault_tls_fail() {
    bounded(async {
        let ca = new_ca("ws-tls");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let mut live = ws_connect(&ca, &server, &["x@trade"]).await;

        server.set_fault(Fault::TlsFail);
        let err = step(tls_connect(&ca, server.port, "localhost")).await.expect_err("bad certificate");
        assert!(err.to_string().contains("certificate"), "{err}");

        server.apply_now(Fault::TlsFail);
        match step(live.recv()).await {
            Some(Err(_)) => {}
            other => panic!("expected a TLS error, got {other:?}"),
        }

        // A CA-signed certificate with the wrong name fails too.
        server.set_tls_fail_config(ca.bad_server_config());
        let err = step(tls_connect(&ca, server.port, "localhost")).await.expect_err("wrong name");
        assert!(err.to_string().contains("certificate"), "{err}");

        server.set_fault(Fault::None);
        let _ok = ws_connect(&ca, &server, &["x@trade"]).await;
    })
    .await;
}

#[tokio::test]
async fn ws_fault_refuse() {
    bounded(async {
        let ca = new_ca("ws-refuse");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let mut live = ws_connect(&ca, &server, &["x@trade"]).await;

        server.set_fault(Fault::Refuse);
        assert!(server.wait_for(|s| !s.listening(), STEP).await);
        let err = step(TcpStream::connect((Ipv4Addr::LOCALHOST, server.port))).await.expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        // The live connection is untouched by set_fault...
        server.push("still here");
        assert_eq!(recv_text(&mut live).await, "still here");
        // ...and closed by apply_now.
        server.apply_now(Fault::Refuse);
        assert!(!matches!(step(live.recv()).await, Some(Ok(_))));

        server.set_fault(Fault::None);
        assert!(server.wait_for(|s| s.listening(), STEP).await);
        let _again = ws_connect(&ca, &server, &["x@trade"]).await;
        assert_eq!(server.handshakes(), 2);
    })
    .await;
}

// ----- DNS -----------------------------------------------------------------------------

#[tokio::test]
async fn dns_answers_and_errors() {
    bounded(async {
        let dns = DnsServer::start().await;
        assert_eq!(dns.addr.ip(), Ipv4Addr::LOCALHOST);
        let ip1 = Ipv4Addr::new(127, 0, 0, 1);
        let ip2 = Ipv4Addr::new(127, 0, 0, 2);
        dns.set("Stream.Binance.com.", Behavior::Answer(vec![ip1, ip2]));
        dns.set("fail.test", Behavior::ServFail);
        dns.set("gone.test", Behavior::NxDomain);

        let m = step(udp_ask(dns.addr, "stream.BINANCE.com.", RecordType::A)).await;
        assert_eq!(m.metadata.id, 0x4242);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(a_records(&m), vec![ip1, ip2]);
        assert!(m.answers.iter().all(|r| r.ttl == 1));

        let m = step(udp_ask(dns.addr, "stream.binance.com", RecordType::AAAA)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());

        let m = step(udp_ask(dns.addr, "fail.test.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = step(udp_ask(dns.addr, "fail.test.", RecordType::AAAA)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let m = step(udp_ask(dns.addr, "gone.test.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());

        // Unknown names: NXDOMAIN by default, then whatever set_default says.
        let m = step(udp_ask(dns.addr, "other.test.", RecordType::A)).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        dns.set_default(Behavior::Answer(vec![ip2]));
        let m = step(udp_ask(dns.addr, "other.test.", RecordType::A)).await;
        assert_eq!(a_records(&m), vec![ip2]);

        // TCP answers too, on the same port.
        let m = step(tcp_ask(dns.addr, "stream.binance.com.", RecordType::A)).await;
        assert_eq!(a_records(&m), vec![ip1, ip2]);

        let q = dns.queries();
        assert_eq!(q.len(), 8);
        assert_eq!(q[0], ("stream.binance.com".to_owned(), Transport::Udp));
        assert_eq!(q[7], ("stream.binance.com".to_owned(), Transport::Tcp));
        assert_eq!(dns.query_log()[1].qtype, RecordType::AAAA);
        dns.clear_queries();
        assert!(dns.queries().is_empty());
    })
    .await;
}

#[tokio::test]
async fn dns_delay_drop_and_truncate() {
    bounded(async {
        let dns = DnsServer::start().await;
        let ip = Ipv4Addr::new(127, 0, 0, 9);
        dns.set(
            "slow.test",
            Behavior::Delay(Duration::from_millis(300), Box::new(Behavior::Answer(vec![ip]))),
        );
        dns.set("lost.test", Behavior::Drop);
        dns.set("big.test", Behavior::Truncate(vec![ip]));

        // A delayed answer does not hold up others.
        let t0 = Instant::now();
        let (slow, fast) = tokio::join!(
            async {
                let m = step(udp_ask(dns.addr, "slow.test.", RecordType::A)).await;
                (m, t0.elapsed())
            },
            async {
                let m = step(udp_ask(dns.addr, "big.test.", RecordType::A)).await;
                (m, t0.elapsed())
            }
        );
        assert!(slow.1 >= Duration::from_millis(300), "{:?}", slow.1);
        assert!(fast.1 < slow.1, "fast {:?} slow {:?}", fast.1, slow.1);
        assert_eq!(a_records(&slow.0), vec![ip]);

        // Truncate: TC=1 and no records over UDP; the client retries over TCP.
        let m = fast.0;
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let m = step(tcp_ask(dns.addr, "big.test.", RecordType::A)).await;
        assert!(!m.metadata.truncation);
        assert_eq!(a_records(&m), vec![ip]);

        // Drop: nothing comes back (UDP or TCP).
        assert!(
            tokio::time::timeout(Duration::from_millis(500), udp_ask(dns.addr, "lost.test.", RecordType::A))
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), tcp_ask(dns.addr, "lost.test.", RecordType::A))
                .await
                .is_err()
        );
        let transports: Vec<Transport> =
            dns.queries().into_iter().filter(|(n, _)| n == "big.test").map(|(_, t)| t).collect();
        assert_eq!(transports, vec![Transport::Udp, Transport::Tcp]);
    })
    .await;
}

#[tokio::test]
async fn resolv_conf_lists_ip_and_port() {
    bounded(async {
        let dir = support::test_dir("resolv");
        let dns = DnsServer::start().await;
        let other: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
        let path = support::dns::write_resolv_conf(&dir, &[dns.addr, other]);
        let text = std::fs::read_to_string(path).expect("read");
        assert_eq!(text, format!("nameserver 127.0.0.1:{}\nnameserver 127.0.0.1:5353\n", dns.addr.port()));
    })
    .await;
}

/// The resolver library the crate uses (hickory-resolver) gets along with the server,
/// including its retry over TCP on a truncated UDP answer.
#[tokio::test]
async fn dns_works_with_hickory_resolver() {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    bounded(async {
        let dns = DnsServer::start().await;
        let ip = Ipv4Addr::new(127, 0, 0, 7);
        dns.set("ok.test", Behavior::Answer(vec![ip]));
        dns.set("big.test", Behavior::Truncate(vec![ip]));
        dns.set("fail.test", Behavior::ServFail);
        let mut udp = ConnectionConfig::udp();
        udp.port = dns.addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = dns.addr.port();
        let ns = NameServerConfig::new(dns.addr.ip(), true, vec![udp, tcp]);
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(1);
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        let resolver = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .expect("resolver");

        for name in ["ok.test.", "big.test."] {
            let found: Vec<std::net::IpAddr> =
                step(resolver.lookup_ip(name)).await.expect("lookup").iter().collect();
            assert_eq!(found, vec![std::net::IpAddr::V4(ip)], "{name}");
        }
        let big: Vec<(RecordType, Transport)> = dns
            .query_log()
            .into_iter()
            .filter(|q| q.name == "big.test")
            .map(|q| (q.qtype, q.transport))
            .collect();
        assert!(big.contains(&(RecordType::A, Transport::Udp)), "{big:?}");
        assert!(big.contains(&(RecordType::A, Transport::Tcp)), "{big:?}");
        assert!(step(resolver.lookup_ip("fail.test.")).await.is_err());
    })
    .await;
}

// ----- The relay's venue: trade / kline streams, candle scripts, candle REST ------------

type Client = WsStream<TlsStream<TcpStream>>;

/// A raw-stream connection (`/ws`, no stream in the URL).
async fn ws_connect_raw(ca: &TestCa, server: &WsServer) -> Client {
    let tls = step(tls_connect(ca, server.port, "localhost")).await.expect("tls connect");
    let url = format!("wss://localhost:{}/ws", server.port);
    let (ws, resp) = step(WsStream::connect(tls, &url)).await.expect("ws handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Sends a SUBSCRIBE with `id` and checks Binance's acknowledgement.
async fn subscribe(ws: &mut Client, streams: &[&str], id: u32) {
    let params: Vec<String> = streams.iter().map(|s| format!("\"{s}\"")).collect();
    let msg = format!(r#"{{"method":"SUBSCRIBE","params":[{}],"id":{id}}}"#, params.join(","));
    step(ws.send(WsMessage::text(msg))).await.expect("send");
    assert_eq!(recv_text(ws).await, format!(r#"{{"result":null,"id":{id}}}"#));
}

/// `text` with the value of `"E":` replaced by 0 (the event time is the wall clock).
fn zero_event_time(text: &str) -> String {
    let Some(i) = text.find(r#""E":"#) else { return text.to_owned() };
    let start = i + 4;
    let end = start + text[start..].find(|c: char| !c.is_ascii_digit()).expect("digits end");
    assert!(end > start, "E has digits: {text}");
    format!("{}0{}", &text[..start], &text[end..])
}

fn field<'a>(j: &'a Json, path: &[&str]) -> &'a Json {
    path.iter().fold(j, |j, k| j.get(k).unwrap_or_else(|| panic!("no {k} in {path:?}")))
}

fn text_of<'a>(j: &'a Json, path: &[&str]) -> &'a str {
    let v = field(j, path);
    v.as_str().or_else(|| v.as_num()).unwrap_or_else(|| panic!("{path:?} is not a string or number"))
}

#[tokio::test]
async fn ws_trades_and_klines_reach_only_their_subscribers() {
    bounded(async {
        let ca = new_ca("ws-relay");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        // A: combined, bookTicker in the URL, trade + kline by SUBSCRIBE (the relay's way).
        let mut a = ws_connect(&ca, &server, &["btcusdt@bookTicker"]).await;
        subscribe(&mut a, &["btcusdt@trade", "btcusdt@kline_1m"], 1).await;
        // B: raw `/ws`, trades only.
        let mut b = ws_connect_raw(&ca, &server).await;
        subscribe(&mut b, &["btcusdt@trade"], 7).await;
        // C: another symbol.
        let mut c = ws_connect(&ca, &server, &["ethusdt@trade"]).await;

        assert_eq!(server.subscribers("btcusdt@trade"), 2);
        assert_eq!(server.subscribers("btcusdt@kline_1m"), 1);
        assert_eq!(server.subscribers("btcusdt@kline_5m"), 0);
        assert_eq!(
            server.live_streams(),
            ["btcusdt@bookTicker", "btcusdt@kline_1m", "btcusdt@trade", "ethusdt@trade"]
        );
        assert!(server.wait_subscribed(&["btcusdt@trade", "btcusdt@kline_1m"], STEP).await);
        assert!(!server.wait_subscribed(&["btcusdt@kline_1h"], Duration::from_millis(50)).await);

        // Trade: combined frame to A, bare event to B, nothing to C.
        let trade = Trade { id: 12345, price: "0.001".into(), qty: "100".into(), time_ms: 123456785, buyer_maker: true };
        assert_eq!(server.push_trade("BTCUSDT", &trade), 2);
        let event = r#"{"e":"trade","E":0,"s":"BTCUSDT","t":12345,"p":"0.001","q":"100","T":123456785,"m":true,"M":true}"#;
        assert_eq!(
            zero_event_time(&recv_text(&mut a).await),
            format!(r#"{{"stream":"btcusdt@trade","data":{event}}}"#)
        );
        assert_eq!(zero_event_time(&recv_text(&mut b).await), event);

        // Kline: A only.
        let mut k = Kline::new("1m", 1_700_000_040_000, "1", "3", "0.5", "2", "10");
        (k.first_trade_id, k.last_trade_id, k.trades) = (1, 2, 2);
        (k.quote_volume, k.taker_base, k.taker_quote) = ("1".into(), "1".into(), "1".into());
        assert_eq!(server.push_kline("BTCUSDT", "1m", &k, false), 1);
        assert_eq!(
            zero_event_time(&recv_text(&mut a).await),
            r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":0,"s":"BTCUSDT","k":{"t":1700000040000,"T":1700000099999,"s":"BTCUSDT","i":"1m","f":1,"L":2,"o":"1","c":"2","h":"3","l":"0.5","v":"10","n":2,"x":false,"q":"1","V":"1","Q":"1","B":"0"}}}"#
        );
        assert_eq!(server.push_kline("BTCUSDT", "1m", &k, true), 1);
        let closed = Json::parse(&recv_text(&mut a).await).expect("json");
        assert_eq!(field(&closed, &["data", "k", "x"]), &Json::Bool(true));
        assert_eq!(server.push_kline("BTCUSDT", "5m", &k, true), 0, "nobody on 5m");

        // What C and B got next proves they got nothing of the above (frames keep their order).
        assert_eq!(server.push_trade("ETHUSDT", &Trade::new(1, "2000", "1", 5)), 1);
        let eth = Json::parse(&recv_text(&mut c).await).expect("json");
        assert_eq!(text_of(&eth, &["stream"]), "ethusdt@trade");
        assert_eq!(text_of(&eth, &["data", "s"]), "ETHUSDT");
        assert_eq!(server.push_trade("BTCUSDT", &Trade::new(12346, "0.002", "1", 6)), 2);
        let next = Json::parse(&recv_text(&mut b).await).expect("json");
        assert_eq!((text_of(&next, &["e"]), text_of(&next, &["t"])), ("trade", "12346"));
        assert_eq!(text_of(&Json::parse(&recv_text(&mut a).await).expect("json"), &["data", "t"]), "12346");

        // bookTicker to its subscribers only; `push` still reaches everyone.
        assert_eq!(server.push_book_ticker("BTCUSDT", "100.5", "100.6"), 1);
        let bt = Json::parse(&recv_text(&mut a).await).expect("json");
        assert_eq!(text_of(&bt, &["stream"]), "btcusdt@bookTicker");
        assert_eq!((text_of(&bt, &["data", "b"]), text_of(&bt, &["data", "a"])), ("100.5", "100.6"));
        server.push("everyone");
        for ws in [&mut a, &mut b, &mut c] {
            assert_eq!(recv_text(ws).await, "everyone");
        }

        // UNSUBSCRIBE stops delivery; a closed connection no longer counts.
        let unsub = r#"{"method":"UNSUBSCRIBE","params":["btcusdt@kline_1m"],"id":2}"#;
        step(a.send(WsMessage::text(unsub))).await.expect("send");
        assert_eq!(recv_text(&mut a).await, r#"{"result":null,"id":2}"#);
        assert_eq!(server.push_kline("BTCUSDT", "1m", &k, true), 0);
        drop(b);
        assert!(server.wait_for(|s| s.subscribers("btcusdt@trade") == 1, STEP).await);
        assert_eq!(server.subscriptions()[0], ["btcusdt@trade", "btcusdt@kline_1m"]);
    })
    .await;
}

#[tokio::test]
async fn candle_script_plays_trades_and_klines_and_stores_the_closed_ones() {
    bounded(async {
        let ca = new_ca("ws-script");
        let server = WsServer::start(ca.server_config(&["localhost"])).await;
        let rest = FakeBinance::start(ca.server_config(&["localhost"])).await;
        let mut ws = ws_connect(&ca, &server, &[]).await;
        subscribe(&mut ws, &["btcusdt@trade", "btcusdt@kline_1m"], 1).await;

        let t0 = 1_700_000_040_000u64;
        let played = CandleScript::new(&server, "BTCUSDT", "1m")
            .store_in(&rest)
            .play(&[(t0, "100", "110", "90", "105", "4"), (t0 + 60_000, "105", "105", "105", "105", "0")]);
        // Bar 1: 4 trades + 4 updates + the close; bar 2 (no volume): the close only.
        assert_eq!((played.frames, played.delivered, played.trades.len()), (10, 10, 4));
        let ids: Vec<u64> = played.trades.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        let times: Vec<u64> = played.trades.iter().map(|t| t.time_ms).collect();
        assert_eq!(times, [t0, t0 + 15_000, t0 + 30_000, t0 + 45_000]);

        let mut frames = Vec::new();
        for _ in 0..10 {
            frames.push(Json::parse(&recv_text(&mut ws).await).expect("json"));
        }
        let kinds: Vec<&str> = frames.iter().map(|f| text_of(f, &["data", "e"])).collect();
        assert_eq!(
            kinds,
            ["trade", "kline", "trade", "kline", "trade", "kline", "trade", "kline", "kline", "kline"]
        );
        let prices: Vec<&str> =
            frames.iter().step_by(2).take(4).map(|f| text_of(f, &["data", "p"])).collect();
        assert_eq!(prices, ["100", "110", "90", "105"]);
        let qty = |f: &Json| text_of(f, &["data", "q"]).to_owned();
        assert_eq!(qty(&frames[0]), "1.00000000");
        // The update after the second trade: high 110, low 100, close 110, volume 2.
        let k = |i: usize, key: &str| text_of(&frames[i], &["data", "k", key]).to_owned();
        assert_eq!(
            [k(3, "o"), k(3, "h"), k(3, "l"), k(3, "c"), k(3, "v"), k(3, "n")],
            ["100", "110", "100", "110", "2.00000000", "2"]
        );
        assert_eq!(field(&frames[3], &["data", "k", "x"]), &Json::Bool(false));
        // The closing kline: the bar's own texts, 4 trades 1..4, q = 100 + 110 + 90 + 105.
        assert_eq!(field(&frames[8], &["data", "k", "x"]), &Json::Bool(true));
        assert_eq!(
            [
                k(8, "o"),
                k(8, "h"),
                k(8, "l"),
                k(8, "c"),
                k(8, "v"),
                k(8, "n"),
                k(8, "f"),
                k(8, "L"),
                k(8, "q")
            ],
            ["100", "110", "90", "105", "4", "4", "1", "4", "405.00000000"]
        );
        assert_eq!((k(8, "t"), k(8, "T")), (t0.to_string(), (t0 + 59_999).to_string()));
        assert_eq!(
            (k(9, "n"), k(9, "f"), k(9, "L"), k(9, "v")),
            ("0".into(), "-1".into(), "-1".into(), "0".into())
        );
        assert_eq!(rest.klines("BTCUSDT", "1m"), played.klines);

        // Without the closing kline (it "never arrives"): trades and updates only, ids go on;
        // the REST store still gets the candle.
        let t2 = t0 + 120_000;
        let played = CandleScript::new(&server, "BTCUSDT", "1m")
            .store_in(&rest)
            .close(false)
            .updates(false)
            .play(&[(t2, "1", "2", "0.5", "1.5", "0.00000004")]);
        assert_eq!(played.frames, 4);
        for want in 5..=8u64 {
            let f = Json::parse(&recv_text(&mut ws).await).expect("json");
            assert_eq!(
                (text_of(&f, &["data", "e"]), text_of(&f, &["data", "t"])),
                ("trade", want.to_string().as_str())
            );
        }
        assert_eq!(rest.klines("BTCUSDT", "1m").len(), 3);
        // Nothing else was sent: the next frame is this marker.
        server.push("marker");
        assert_eq!(recv_text(&mut ws).await, "marker");
        // Klines only, nobody subscribed to 5m: built but delivered to no one.
        let played =
            CandleScript::new(&server, "BTCUSDT", "5m").trades(false).play(&[(t0, "1", "1", "1", "1", "1")]);
        assert_eq!((played.frames, played.delivered), (5, 0));
    })
    .await;
}

#[tokio::test]
async fn rest_klines_like_binance() {
    bounded(async {
        let ca = new_ca("rest-klines");
        let rest = FakeBinance::start(ca.server_config(&["localhost"])).await;
        let t0 = 1_700_000_040_000u64;
        let t = |i: u64| t0 + i * 60_000;
        let candles: Vec<Kline> =
            (0..5).map(|i| Kline::new("1m", t(i), "1", "2", "0.5", &format!("1.{i}"), "10")).collect();
        rest.set_klines("BTCUSDT", "1m", candles);
        let (ca, port) = (&ca, rest.port);
        let get = |q: String| async move { https_get(ca, port, &format!("/api/v3/klines?{q}")).await };
        let opens = |body: &str| -> Vec<u64> {
            let j = Json::parse(body).expect("json");
            let rows = j.as_array().expect("array");
            rows.iter()
                .map(|r| r.as_array().expect("row")[0].as_num().expect("open").parse().expect("u64"))
                .collect()
        };

        let (status, body) = step(get("symbol=BTCUSDT&interval=1m".into())).await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(opens(&body), [t(0), t(1), t(2), t(3), t(4)]);
        assert!(body.starts_with(&format!(
            r#"[[{},"1","2","0.5","1.0","10",{},"0",0,"0","0","0"],"#,
            t(0),
            t(0) + 59_999
        )));

        let (_, body) = step(get(format!("symbol=BTCUSDT&interval=1m&startTime={}&endTime={}", t(1), t(3))))
            .await
            .expect("get");
        assert_eq!(opens(&body), [t(1), t(2), t(3)]);
        let (_, body) = step(get(format!("symbol=BTCUSDT&interval=1m&startTime={}&limit=2", t(1) - 1)))
            .await
            .expect("get");
        assert_eq!(opens(&body), [t(1), t(2)]);
        let (_, body) =
            step(get(format!("symbol=BTCUSDT&interval=1m&endTime={}&limit=2", t(3)))).await.expect("get");
        assert_eq!(opens(&body), [t(2), t(3)], "without startTime: the newest up to endTime");
        let (_, body) = step(get("symbol=BTCUSDT&interval=5m".into())).await.expect("get");
        assert_eq!(body, "[]");
        let (status, _) = step(get("symbol=BTCUSDT&interval=1m&limit=1000".into())).await.expect("get");
        assert_eq!(status, 200);

        for (query, code) in [
            ("symbol=BTCUSDT&interval=1m&limit=1001", -1130),
            ("symbol=BTCUSDT&interval=1m&limit=0", -1130),
            ("symbol=BTCUSDT&interval=7m", -1120),
            ("symbol=NOPE&interval=1m", -1121),
            ("interval=1m", -1102),
            ("symbol=BTCUSDT", -1102),
            ("symbol=BTCUSDT&interval=1m&startTime=x", -1100),
            ("symbol=BTCUSDT&interval=1m&startTime=2&endTime=1", -1023),
        ] {
            let (status, body) = step(get(query.into())).await.expect("get");
            assert_eq!(status, 400, "{query}");
            assert!(body.starts_with(&format!(r#"{{"code":{code},"msg":"#)), "{query}: {body}");
        }

        // The default limit is 500: the oldest 500 from startTime, else the newest 500.
        let many: Vec<Kline> = (0..600).map(|i| Kline::new("1m", t(i), "1", "1", "1", "1", "1")).collect();
        rest.set_klines("ETHUSDT", "1m", many);
        let (_, body) = step(get(format!("symbol=ETHUSDT&interval=1m&startTime={t0}"))).await.expect("get");
        let got = opens(&body);
        assert_eq!((got.len(), got[0], got[499]), (500, t(0), t(499)));
        let (_, body) = step(get("symbol=ETHUSDT&interval=1m".into())).await.expect("get");
        let got = opens(&body);
        assert_eq!((got.len(), got[0], got[499]), (500, t(100), t(599)));

        // A correction replaces the candle with the same open time.
        rest.add_klines("BTCUSDT", "1m", &[Kline::new("1m", t(2), "1", "9", "0.1", "8", "99")]);
        let stored = rest.klines("BTCUSDT", "1m");
        assert_eq!((stored.len(), stored[2].high.as_str(), stored[2].volume.as_str()), (5, "9", "99"));

        // Faults of the route, one request each.
        rest.push_fault(Route::Klines, fake_binance::Fault::Status(503));
        rest.push_fault(Route::Klines, fake_binance::Fault::RateLimit { status: 429, retry_after: 1 });
        let q = || "symbol=BTCUSDT&interval=1m&limit=1".to_owned();
        assert_eq!(step(get(q())).await.expect("get").0, 503);
        let (status, body) = step(get(q())).await.expect("get");
        assert_eq!((status, body.contains("-1003")), (429, true));
        assert_eq!(step(get(q())).await.expect("get").0, 200);

        // Counted per path; queries kept.
        assert_eq!(rest.count("GET", "/api/v3/klines"), 19);
        let queries = rest.queries("GET", "/api/v3/klines");
        assert_eq!(queries.len(), 19);
        assert_eq!(queries[1], format!("symbol=BTCUSDT&interval=1m&startTime={}&endTime={}", t(1), t(3)));
    })
    .await;
}

#[tokio::test]
async fn upstox_intraday_candles() {
    bounded(async {
        assert_eq!(fake_upstox::ist_time(1_735_789_500_000), "2025-01-02T09:15:00+05:30");
        assert_eq!(fake_upstox::ist_time(1_709_231_399_000), "2024-02-29T23:59:59+05:30");
        assert_eq!(fake_upstox::ist_time(0), "1970-01-01T05:30:00+05:30");

        let ca = new_ca("upstox-candles");
        let fake = FakeUpstox::start(ca.server_config(&["localhost"])).await;
        let key = "NSE_EQ|INE848E01016";
        let t0 = 1_735_789_500_000u64; // 2025-01-02 09:15 IST
        fake.set_intraday_candles(
            key,
            "minutes",
            "1",
            vec![
                IntradayCandle::new(t0 + 60_000, 2305.3, 2307.05, 2301.0, 2304.65, 559_982),
                IntradayCandle::new(t0, 2309.1, 2310.75, 2305.25, 2305.3, 740_124),
            ],
        );
        let auth = format!("Authorization: Bearer {}\r\n", fake_upstox::TOKEN);
        let path = "/v3/historical-candle/intraday/NSE_EQ%7CINE848E01016/minutes/1";
        let (ca, port) = (&ca, fake.port);
        let get = |target: &str, headers: String| {
            let target = target.to_owned();
            async move { https_get_with(ca, port, &target, &headers).await }
        };

        let (status, body) = step(get(path, auth.clone())).await.expect("get");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "success");
        assert_eq!(
            v["data"]["candles"],
            serde_json::json!([
                ["2025-01-02T09:16:00+05:30", 2305.3, 2307.05, 2301.0, 2304.65, 559_982, 0],
                ["2025-01-02T09:15:00+05:30", 2309.1, 2310.75, 2305.25, 2305.3, 740_124, 0]
            ]),
            "newest first"
        );

        let (status, body) = step(get(path, String::new())).await.expect("get");
        assert_eq!((status, body.contains("UDAPI100050")), (401, true), "{body}");
        let (status, body) =
            step(get("/v3/historical-candle/intraday/NSE_EQ%7CNOPE/minutes/1", auth.clone()))
                .await
                .expect("get");
        assert_eq!((status, body.contains("UDAPI100011")), (400, true), "{body}");
        let (status, body) =
            step(get("/v3/historical-candle/intraday/NSE_EQ%7CINE848E01016/minutes/301", auth.clone()))
                .await
                .expect("get");
        assert_eq!((status, body.contains("UDAPI100036")), (400, true), "{body}");
        let (status, body) =
            step(get("/v3/historical-candle/intraday/NSE_EQ%7CINE848E01016/hours/1", auth.clone()))
                .await
                .expect("get");
        assert_eq!((status, body.as_str()), (200, r#"{"status":"success","data":{"candles":[]}}"#));

        // Faults, one request each, authorised requests only.
        fake.push_candles_fault(UFault::Status(503));
        fake.push_candles_fault(UFault::RateLimit(2));
        assert_eq!(step(get(path, auth.clone())).await.expect("get").0, 503);
        assert_eq!(step(get(path, auth.clone())).await.expect("get").0, 429);
        fake.push_candles_fault(UFault::LostAfterPlace);
        assert!(step(get(path, auth.clone())).await.is_err(), "closed without an answer");
        fake.add_intraday_candles(key, "minutes", "1", &[IntradayCandle::new(t0, 1.0, 2.0, 0.5, 1.5, 7)]);
        let (status, body) = step(get(path, auth.clone())).await.expect("get");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (status, v["data"]["candles"][1][1].as_f64(), v["data"]["candles"][1][5].as_u64()),
            (200, Some(1.0), Some(7))
        );

        assert_eq!(fake.intraday_reads(key), 8);
        assert_eq!(fake.intraday_reads("NSE_EQ|NOPE"), 1);
    })
    .await;
}
