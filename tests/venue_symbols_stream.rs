//! The venue's symbol list is fetched streamed and bounded (`feed::venue_symbols`,
//! `net::http::request_streaming`): real TLS on 127.0.0.1 through tickguard's own HTTP client,
//! answers framed by `Content-Length` and by `chunked` transfer-encoding, written in odd-sized
//! pieces so that TLS records and chunks cut tokens anywhere; the result must equal the
//! whole-buffer parser's. The byte cap and the timeout of the streamed exchange hold, and one
//! fetch of a realistic 12 MB answer is measured (peak heap of the fetching thread, by a
//! counting allocator, hence its own test binary) against the former whole-answer path.
//!
//! Every test is bounded in time (`LIMIT`); the server runs on its own thread (its memory, the
//! 12 MB answer included, is not counted) and stops when dropped.

#[allow(dead_code)]
#[path = "support/ca.rs"]
mod ca;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickguard::feed::venue_symbols::{EXCHANGE_INFO_QUERY, SymbolList, VenueSymbols, parse_exchange_info};
use tickguard::limits::{EXCHANGE_INFO_CHUNK, EXCHANGE_INFO_MAX_BYTES};
use tickguard::net::http::{self, Connector, Endpoint, HttpError, Req};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound of one whole test.
const LIMIT: Duration = Duration::from_secs(60);

// ----- peak heap of the current thread --------------------------------------------------

/// Forwards to the system allocator; while armed on a thread, tracks that thread's live heap
/// bytes and their peak.
struct Peak;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static TOP: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations during thread teardown are not ours.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            TOP.with(|t| t.set(t.get().max(live)));
        }
    });
}

// SAFETY: every method forwards to the system allocator unchanged; tracking only touches
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Both blocks may exist at once (a moving realloc): counted as such.
        track(new_size as isize);
        track(-(layout.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// Runs `f` with tracking armed on this thread; returns the peak of the heap it added.
fn peak_of<R>(f: impl FnOnce() -> R) -> (usize, R) {
    LIVE.with(|l| l.set(0));
    TOP.with(|t| t.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (usize::try_from(TOP.with(Cell::get)).unwrap_or(0), r)
}

// ----- answers in Binance's layout -------------------------------------------------------

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

/// One `symbols` entry as Binance writes it (every field of the documented answer; the
/// permission sets list the trading groups, which is most of the real answer's size).
fn entry(out: &mut String, name: &str, base: &str, quote: &str, status: &str, groups: usize) {
    out.push_str(&format!(
        r#"{{"symbol":"{name}","status":"{status}","baseAsset":"{base}","baseAssetPrecision":8,"quoteAsset":"{quote}","quotePrecision":8,"quoteAssetPrecision":8,"baseCommissionPrecision":8,"quoteCommissionPrecision":8,"orderTypes":["LIMIT","LIMIT_MAKER","MARKET","STOP_LOSS","STOP_LOSS_LIMIT","TAKE_PROFIT","TAKE_PROFIT_LIMIT"],"icebergAllowed":true,"ocoAllowed":true,"otoAllowed":true,"quoteOrderQtyMarketAllowed":true,"allowTrailingStop":true,"cancelReplaceAllowed":true,"amendAllowed":true,"isSpotTradingAllowed":true,"isMarginTradingAllowed":false,"filters":[{{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"}},{{"filterType":"LOT_SIZE","minQty":"0.00001000","maxQty":"9000.00000000","stepSize":"0.00001000"}},{{"filterType":"ICEBERG_PARTS","limit":10}},{{"filterType":"MARKET_LOT_SIZE","minQty":"0.00000000","maxQty":"83.43029702","stepSize":"0.00000000"}},{{"filterType":"TRAILING_DELTA","minTrailingAboveDelta":10,"maxTrailingAboveDelta":2000,"minTrailingBelowDelta":10,"maxTrailingBelowDelta":2000}},{{"filterType":"PERCENT_PRICE_BY_SIDE","bidMultiplierUp":"5","bidMultiplierDown":"0.2","askMultiplierUp":"5","askMultiplierDown":"0.2","avgPriceMins":5}},{{"filterType":"NOTIONAL","minNotional":"5.00000000","applyMinToMarket":true,"maxNotional":"9000000.00000000","applyMaxToMarket":false,"avgPriceMins":5}},{{"filterType":"MAX_NUM_ORDERS","maxNumOrders":200}},{{"filterType":"MAX_NUM_ALGO_ORDERS","maxNumAlgoOrders":5}}],"permissions":[],"permissionSets":[["SPOT","MARGIN""#
    ));
    for g in 0..groups {
        out.push_str(&format!(r#","TRD_GRP_{:03}""#, 4 + g));
    }
    out.push_str(r#"]],"defaultSelfTradePreventionMode":"EXPIRE_MAKER","allowedSelfTradePreventionModes":["EXPIRE_TAKER","EXPIRE_MAKER","EXPIRE_BOTH","DECREMENT"]}"#);
}

/// A whole `exchangeInfo?permissions=SPOT` answer of at least `size` bytes.
fn answer(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = String::with_capacity(size + 8192);
    out.push_str(r#"{"timezone":"UTC","serverTime":1764777600123,"rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000},{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,"limit":100},{"rateLimitType":"ORDERS","interval":"DAY","intervalNum":1,"limit":200000},{"rateLimitType":"RAW_REQUESTS","interval":"MINUTE","intervalNum":5,"limit":61000}],"exchangeFilters":[],"symbols":["#);
    let quotes = ["USDT", "BTC", "FDUSD", "TRY", "EUR", "BNB", "USDC"];
    let mut i = 0usize;
    while out.len() < size {
        if i > 0 {
            out.push(',');
        }
        let base: String = [i / 676 % 26, i / 26 % 26, i % 26, rng.below(26)]
            .iter()
            .map(|d| char::from(b'A' + *d as u8))
            .collect();
        let quote = quotes[rng.below(quotes.len())];
        let status = if rng.below(8) == 0 { "BREAK" } else { "TRADING" };
        entry(&mut out, &format!("{base}{quote}"), &base, quote, status, 60 + rng.below(120));
        i += 1;
    }
    out.push_str("],\"sors\":[]}");
    out.into_bytes()
}

// ----- a loopback HTTPS server on its own thread ------------------------------------------

/// How the server answers.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// 200 with `Content-Length`, written in pieces of 1..=`max_write` bytes.
    Length { max_write: usize },
    /// 200 with `Transfer-Encoding: chunked`, chunks of 1..=`max_chunk` bytes.
    Chunked { max_chunk: usize },
    /// This status (`Content-Length`).
    Status(u16),
    /// 200 with `Content-Length`, half the body, then silence (for 10 s).
    Stall,
}

struct Server {
    port: u16,
    /// Request lines received.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    fn start(ca: &ca::TestCa, body: Arc<Vec<u8>>, mode: Mode) -> Server {
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
        let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = requests.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let mut tasks = tokio::task::JoinSet::new();
                let end = tokio::time::sleep(LIMIT);
                tokio::pin!(end);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = &mut end => break,
                        a = listener.accept() => {
                            let Ok((tcp, _)) = a else { continue };
                            let (acceptor, body, seen) = (acceptor.clone(), body.clone(), seen.clone());
                            tasks.spawn(async move {
                                let Ok(tls) = acceptor.accept(tcp).await else { return };
                                serve(tls, &body, mode, &seen).await;
                            });
                        }
                    }
                }
                tasks.abort_all();
            });
        });
        Server { port, requests, stop: Some(stop), thread: Some(thread) }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&format!("https://127.0.0.1:{}", self.port)).expect("url")
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    body: &[u8],
    mode: Mode,
    seen: &Mutex<Vec<String>>,
) {
    // The request head, bounded in size and time.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or("").to_string();
    seen.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    let mut rng = Rng(body.len() as u64);
    let (status, chunked) = match mode {
        Mode::Status(code) => (code, false),
        Mode::Chunked { .. } => (200, true),
        Mode::Length { .. } | Mode::Stall => (200, false),
    };
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {}", body.len())
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut at = 0;
    while at < body.len() {
        let n = match mode {
            Mode::Length { max_write } => 1 + rng.below(max_write),
            Mode::Chunked { max_chunk } => 1 + rng.below(max_chunk),
            Mode::Status(_) => body.len(),
            Mode::Stall => {
                let _ = s.write_all(&body[..body.len() / 2]).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_secs(10)).await;
                return;
            }
        };
        let piece = &body[at..(at + n).min(body.len())];
        let ok = if chunked {
            s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.is_ok()
                && s.write_all(piece).await.is_ok()
                && s.write_all(b"\r\n").await.is_ok()
        } else {
            s.write_all(piece).await.is_ok()
        };
        if !ok {
            return;
        }
        at += piece.len();
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

// ----- the tests ---------------------------------------------------------------------------

fn world(name: &str) -> (std::path::PathBuf, ca::TestCa) {
    let dir =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let ca = ca::TestCa::new(&dir);
    (dir, ca)
}

/// A single-threaded runtime: everything the client does runs on the test's own thread (so
/// the counting allocator sees all of it).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn fetch(rt: &tokio::runtime::Runtime, conn: &Connector, ep: &Endpoint) -> Result<SymbolList, String> {
    rt.block_on(async {
        tokio::time::timeout(LIMIT, VenueSymbols::fetch(conn, ep)).await.expect("bounded by LIMIT")
    })
}

/// Same list as the whole-buffer parser (`fetched_unix_ms` aside), over both framings and
/// writes cut anywhere: 1-byte chunks, odd sizes, TLS records split mid-token.
#[test]
fn streamed_fetch_equals_the_whole_parse_over_length_and_chunked_framing() {
    let (dir, ca) = world("vs-stream-equal");
    let conn = ca.tickguard_connector();
    let rt = runtime();
    let body = Arc::new(answer(400_000, 11));
    let want = parse_exchange_info(&body, 0).expect("the answer is valid");
    assert!(want.symbols.len() > 50 && want.traded() < want.symbols.len(), "{}", want.symbols.len());
    // 1-byte chunks of a 400 kB answer take long in a debug build: a shorter answer for them.
    let short = Arc::new(answer(40_000, 12));
    let want_short = parse_exchange_info(&short, 0).expect("the answer is valid");
    for (mode, body, want) in [
        (Mode::Length { max_write: 3 }, &body, &want),
        (Mode::Length { max_write: 5000 }, &body, &want),
        (Mode::Length { max_write: 200_000 }, &body, &want),
        (Mode::Chunked { max_chunk: 1 }, &short, &want_short),
        (Mode::Chunked { max_chunk: 37 }, &body, &want),
        (Mode::Chunked { max_chunk: 70_000 }, &body, &want),
    ] {
        let server = Server::start(&ca, body.clone(), mode);
        let got = fetch(&rt, &conn, &server.endpoint()).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert_eq!(got.symbols, want.symbols, "{mode:?}");
        assert!(got.fetched_unix_ms > 1_700_000_000_000, "stamped with the wall clock");
        let requests = server.requests.lock().map(|r| r.clone()).unwrap_or_default();
        assert_eq!(requests, vec![format!("GET {EXCHANGE_INFO_QUERY} HTTP/1.1")], "{mode:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An error answer is an error naming its status and quoting the head of its body; a cut
/// answer (the server stops sending, `Content-Length` not reached) is an error, never a
/// partial list; the streamed exchange keeps its byte cap and its timeout.
#[test]
fn streamed_exchange_keeps_its_bounds() {
    let (dir, ca) = world("vs-stream-bounds");
    let conn = ca.tickguard_connector();
    let rt = runtime();
    let small = Arc::new(
        br#"{"code":-1003,"msg":"Too much request weight used; banned until 1764777600000."}"#.to_vec(),
    );
    let server = Server::start(&ca, small, Mode::Status(418));
    let e = fetch(&rt, &conn, &server.endpoint()).expect_err("418");
    assert!(e.starts_with("HTTP 418: {\"code\":-1003"), "{e}");
    drop(server);

    let body = Arc::new(answer(300_000, 5));
    let server = Server::start(&ca, body.clone(), Mode::Chunked { max_chunk: 9000 });
    // The byte cap: more than `max_body` is an error, and no more than it reached the caller.
    let mut seen = 0usize;
    let req = Req {
        method: "GET",
        path: "/api/v3/exchangeInfo",
        headers: &[],
        body: None,
        timeout: Duration::from_secs(20),
        max_body: 100_000,
    };
    let r = rt.block_on(http::request_streaming(
        &conn,
        &server.endpoint(),
        req,
        EXCHANGE_INFO_CHUNK,
        |head, piece| {
            assert_eq!(head.status, 200);
            assert!(piece.len() <= EXCHANGE_INFO_CHUNK, "pieces of at most the chunk size");
            seen += piece.len();
            Ok(())
        },
    ));
    assert!(matches!(r, Err(HttpError::Exchange { .. })), "{r:?}");
    assert!(seen <= 100_000, "{seen} bytes handed over past the cap");
    // An error from the consumer ends the exchange with its text.
    let req = Req { max_body: EXCHANGE_INFO_MAX_BYTES, ..req_of(Duration::from_secs(20)) };
    let r = rt
        .block_on(http::request_streaming(&conn, &server.endpoint(), req, 8192, |_, _| Err("enough".into())));
    assert!(matches!(&r, Err(HttpError::Exchange { why, .. }) if why == "enough"), "{r:?}");
    drop(server);

    // The timeout bounds the whole exchange, body included.
    let server = Server::start(&ca, body, Mode::Stall);
    let t0 = std::time::Instant::now();
    let r = rt.block_on(http::request_streaming(
        &conn,
        &server.endpoint(),
        req_of(Duration::from_millis(800)),
        EXCHANGE_INFO_CHUNK,
        |_, _| Ok(()),
    ));
    assert!(matches!(r, Err(HttpError::Timeout { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

fn req_of(timeout: Duration) -> Req<'static> {
    Req {
        method: "GET",
        path: EXCHANGE_INFO_QUERY,
        headers: &[],
        body: None,
        timeout,
        max_body: EXCHANGE_INFO_MAX_BYTES,
    }
}

/// One fetch of a realistic 12 MB answer over TLS: the streamed path's peak heap (the fetching
/// thread's, the resulting list included) against the former path (`http::request` reading
/// the whole answer, then `parse_exchange_info`). Run with `--nocapture` for the numbers.
#[test]
fn one_fetch_of_a_12_mb_answer_has_a_small_peak() {
    let (dir, ca) = world("vs-stream-peak");
    let conn = ca.tickguard_connector();
    let rt = runtime();
    let body = Arc::new(answer(12 * 1000 * 1000, 42));
    let server = Server::start(&ca, body.clone(), Mode::Length { max_write: 64 * 1024 });
    let ep = server.endpoint();
    // Warm-up (lazy runtime and TLS state), not counted.
    fetch(&rt, &conn, &ep).expect("warm-up fetch");

    let (streamed, list) = peak_of(|| fetch(&rt, &conn, &ep));
    let list = list.expect("streamed fetch");
    let (whole, old) = peak_of(|| {
        rt.block_on(async {
            let ans = http::request(&conn, &ep, req_of(Duration::from_secs(60))).await.expect("whole answer");
            parse_exchange_info(&ans.body, 0)
        })
    });
    let old = old.expect("whole parse");
    assert_eq!(list.symbols, old.symbols);
    let (list_only, _) = peak_of(|| parse_exchange_info(&body, 0).map(|l| l.symbols.len()));
    eprintln!(
        "exchangeInfo {} bytes, {} symbols: peak heap of one fetch+parse: streamed {} KiB, whole answer {} KiB (the list alone {} KiB)",
        body.len(),
        list.symbols.len(),
        streamed / 1024,
        whole / 1024,
        list_only / 1024
    );
    assert!(whole > body.len(), "the former path held the answer whole ({whole} bytes)");
    assert!(
        streamed < list_only + 1024 * 1024,
        "streamed peak {streamed} bytes is the list ({list_only}) plus less than 1 MiB of buffers"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
