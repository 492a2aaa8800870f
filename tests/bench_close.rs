//! Crossing-to-wire benchmark of `scripts/bench-close` (issue 14), an ignored test the script
//! runs in release: the real `tickguard run` binary, a loopback TLS WebSocket feed (Binance
//! combined-stream framing) and the fake Binance over TLS on 127.0.0.1 as its broker.
//! 1 024 instruments, 256 open positions, background `bookTicker` frames paced at
//! `BENCH_RATE` (default 200 000 /s); every `secs / crossings` one held instrument's bid
//! falls through its stop. The feed stamps the instant it writes that frame, the fake stamps
//! the instant the `POST /api/v3/order` for that symbol has arrived whole: crossing-to-wire is
//! the difference (one process, one monotonic clock). Also reported: the binary's own
//! tick-to-action histogram (frame received -> close order decided) from its `stats` line.
//!
//! Environment: `BENCH_BIN` (the binary), `BENCH_SECS` (default 8), `BENCH_CROSSINGS`
//! (default 64), `BENCH_RATE` (default 200000), `BENCH_FAULT` (passed as `--fault`, e.g.
//! `fsync-delay@100ms`). Prints one `bench-close:` result line. Only 127.0.0.1 is contacted;
//! every loop is bounded in time.

#[path = "support/binance_load.rs"]
mod binance_load;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use binance_load::{book_ticker, field, frame, read_client, ring, symbol};
use support::ca::TestCa;
use support::fake_binance::FakeBinance;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const INSTRUMENTS: usize = 1024;
const POSITIONS: usize = 256;

fn env_num(k: &str, d: f64) -> f64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn config(dir: &std::path::Path, ca: &std::path::Path, feed_port: u16, rest: &str) -> String {
    let api =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(18_000, |x| x.port());
    let key = dir.join("key");
    let secret = dir.join("secret");
    let _ = std::fs::write(&key, support::fake_binance::API_KEY);
    let _ = std::fs::write(&secret, support::fake_binance::SECRET);
    let mut s = format!(
        r#"[api]
listen = "127.0.0.1:{api}"
[feed]
venue = "binance"
ws_url = "wss://127.0.0.1:{feed_port}/stream"
rest_url = "https://127.0.0.1:9/"
silence_timeout_s = 10
rest_poll_s = 5
instruments = [{}]
[dns]
use_system = false
nameservers = ["127.0.0.1:9"]
timeout_s = 0.5
[tls]
extra_ca = "{}"
[cache]
stale_after_s = 30
expire_after_s = 300
[broker]
kind = "binance"
rest_url = "{rest}"
key_file = "{}"
secret_file = "{}"
[store]
dir = "{}"
"#,
        (0..INSTRUMENTS).map(|i| format!("\"{}\"", symbol(i))).collect::<Vec<_>>().join(","),
        ca.display(),
        key.display(),
        secret.display(),
        // BENCH_STATE_DIR puts the journal elsewhere (a tmpfs: the software path without the
        // disk's fsync).
        std::env::var_os("BENCH_STATE_DIR")
            .map_or_else(
                || dir.join("state"),
                |d| std::path::PathBuf::from(d).join(format!("tg-bench-{}", std::process::id()))
            )
            .display(),
    );
    for i in 0..POSITIONS {
        s.push_str(&format!(
            "[[positions]]\nid = \"p{i}\"\nsymbol = \"{}\"\nside = \"long\"\nqty = 1\nentry = \"100.00\"\nstop_loss = \"90.00\"\ntake_profit = \"110.00\"\n",
            symbol(i)
        ));
    }
    s
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by scripts/bench-close"]
async fn bench_close() {
    let bin = std::env::var("BENCH_BIN").unwrap_or_else(|_| "target/release/tickguard".into());
    let secs = env_num("BENCH_SECS", 8.0);
    let crossings = env_num("BENCH_CROSSINGS", 64.0) as usize;
    let rate = env_num("BENCH_RATE", 200_000.0);
    let fault = std::env::var("BENCH_FAULT").ok().filter(|f| !f.is_empty());
    assert!(crossings <= POSITIONS);

    let dir = support::test_dir("bench-close");
    let ca = TestCa::new(&dir);
    let fake = FakeBinance::start(ca.server_config(&["127.0.0.1"])).await;
    for i in 0..INSTRUMENTS {
        let base = format!("S{i:04}");
        fake.add_symbol(&symbol(i), &base, "USDT", "0.00001", "0.00001", "5", "89.5");
        if i < POSITIONS {
            fake.set_balance(&base, "1", "0");
        }
    }
    let tls = tokio_rustls::TlsAcceptor::from(ca.server_config(&["127.0.0.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cfg_path = dir.join("tickguard.toml");
    std::fs::write(&cfg_path, config(&dir, &ca.ca_path, port, &fake.base_url())).expect("config");

    let mut cmd = Command::new(&bin);
    cmd.args(["run", "--config"]).arg(&cfg_path);
    if let Some(f) = &fault {
        cmd.arg("--fault").arg(f);
    }
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    let pid = child.id();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        }
    });
    let tail = |lines: &Arc<Mutex<Vec<String>>>| {
        lines
            .lock()
            .map(|v| v.iter().rev().take(30).rev().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    };

    let result = tokio::time::timeout(Duration::from_secs_f64(secs + 60.0), async {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .map_err(|_| format!("no feed connection within 20 s:\n{}", tail(&lines)))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let mut s = tls.accept(tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.map_err(|e| e.to_string())?;
            if n == 0 || head.len() > 16 * 1024 {
                return Err("bad upgrade request".to_string());
            }
            head.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&head);
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").or_else(|| l.strip_prefix("sec-websocket-key: ")))
            .ok_or("no Sec-WebSocket-Key")?
            .trim()
            .to_string();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(resp.as_bytes()).await.map_err(|e| e.to_string())?;
        let (r, mut w) = tokio::io::split(s);
        let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let acks = Arc::new(AtomicU64::new(0));
        let rd = tokio::spawn(read_client(r, ctl_tx, acks.clone()));
        let want = INSTRUMENTS.div_ceil(200) as u64;
        let deadline = Instant::now() + Duration::from_secs(20);
        while acks.load(Ordering::Relaxed) < want {
            if Instant::now() > deadline {
                return Err(format!("only {} SUBSCRIBE acks:\n{}", acks.load(Ordering::Relaxed), tail(&lines)));
            }
            while let Ok(c) = ctl_rx.try_recv() {
                w.write_all(&c).await.map_err(|e| e.to_string())?;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while let Ok(c) = ctl_rx.try_recv() {
            w.write_all(&c).await.map_err(|e| e.to_string())?;
        }
        // Give the broker time to warm up (time sync, rules, balances) before pushing.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let chunks = ring(INSTRUMENTS, 16 * 1024);
        let push_for = Duration::from_secs_f64(secs);
        let every = push_for.div_f64((crossings + 1) as f64);
        let t0 = Instant::now();
        let mut next_cross = t0 + every;
        let (mut crossed, mut sent, mut k) = (0usize, 0u64, 0usize);
        let mut u = 1u64 << 40;
        let mut stamps: Vec<(String, Instant)> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= t0 + push_for {
                break;
            }
            while let Ok(c) = ctl_rx.try_recv() {
                w.write_all(&c).await.map_err(|e| e.to_string())?;
            }
            if crossed < crossings && now >= next_cross {
                let mut f = Vec::new();
                frame(&mut f, book_ticker(crossed, u, "89.50000000", "89.51000000").as_bytes());
                u += 1;
                stamps.push((symbol(crossed), Instant::now()));
                w.write_all(&f).await.map_err(|e| e.to_string())?;
                w.flush().await.map_err(|e| e.to_string())?;
                crossed += 1;
                sent += 1;
                next_cross += every;
            }
            // Paced background: never ahead of `rate` frames per second.
            let due = (now.duration_since(t0).as_secs_f64() * rate) as u64;
            if sent >= due {
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
            let (chunk, n) = &chunks[k % chunks.len()];
            w.write_all(chunk).await.map_err(|e| e.to_string())?;
            sent += n;
            k += 1;
        }
        let pushed = t0.elapsed().as_secs_f64();
        let _ = w.flush().await;
        // Let the last orders arrive.
        let wait_until = Instant::now() + Duration::from_secs(3);
        while fake.arrivals().len() < crossings && Instant::now() < wait_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rd.abort();
        Ok((stamps, sent, pushed))
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    // Shutdown flushes the journal (slow under an fsync delay) before the `stats` line.
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
    let _ = reader.join();
    if let (Some(path), Ok(v)) = (std::env::var_os("BENCH_LOG"), lines.lock()) {
        // The binary's whole log, for reading where the time went.
        let _ = std::fs::write(path, v.join("\n"));
    }
    let (stamps, sent, pushed) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("bench-close: {e}"),
        Err(_) => panic!("bench-close: timed out:\n{}", tail(&lines)),
    };
    let arrivals = fake.arrivals();
    let mut lat: Vec<f64> = Vec::new();
    for (sym, at) in &stamps {
        // The first order for the symbol is the close of its crossing.
        if let Some((_, _, arrived)) = arrivals.iter().find(|(s, _, _)| s == sym) {
            lat.push(arrived.saturating_duration_since(*at).as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let all = lines.lock().map(|v| v.clone()).unwrap_or_default();
    let stats = all.iter().rev().find(|l| l.contains(" stats ")).cloned().unwrap_or_default();
    println!(
        "bench-close: fault={} crossings={} orders={} frames_per_s={:.0} c2w_p50_us={:.0} c2w_p99_us={:.0} c2w_max_us={:.0} t2a_p50_us={} t2a_p99_us={} t2a_n={}",
        fault.as_deref().unwrap_or("none"),
        stamps.len(),
        lat.len(),
        sent as f64 / pushed,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        field(&stats, "tick_to_action_p50_us"),
        field(&stats, "tick_to_action_p99_us"),
        field(&stats, "tick_to_action_count"),
    );
    assert_eq!(
        lat.len(),
        stamps.len(),
        "an order for every crossing:\n{}",
        all.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n")
    );
}
