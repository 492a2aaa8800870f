//! Load generator of `scripts/bench-feed`: a loopback TLS WebSocket server that speaks just
//! enough of Binance's combined-stream protocol (upgrade, SUBSCRIBE acks, pongs) and pushes
//! `bookTicker` frames for 1 024 instruments as fast as the client reads them, against the
//! real `tickguard run` binary protecting 256 open positions.
//!
//! ```text
//! feed_load --bin target/release/tickguard [--secs 10] [--instruments 1024] [--positions 256]
//!           [--crossings 128] [--dir target/bench-feed]
//! ```
//!
//! It writes a CA, a certificate for 127.0.0.1 and a configuration under `--dir`, starts the
//! binary, waits for its subscriptions, then pushes for `--secs` seconds. Every
//! `secs / crossings` one held instrument's bid drops through its position's stop, so the
//! binary decides a close under full load (its tick-to-action histogram fills from those).
//! At the end it reads the binary's peak RSS (`VmHWM` of `/proc/<pid>/status`), stops it with
//! SIGTERM and reads its `stats` line. Only 127.0.0.1 is ever contacted; every loop is
//! bounded in time.
//!
//! The frames and the client reader are shared with `scripts/bench-close`
//! (`tests/support/binance_load.rs`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[path = "../tests/support/binance_load.rs"]
mod binance_load;
use binance_load::{book_ticker, field, frame, read_client, ring, symbol};

struct Args {
    bin: PathBuf,
    secs: f64,
    instruments: usize,
    positions: usize,
    crossings: usize,
    dir: PathBuf,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        bin: PathBuf::from("target/release/tickguard"),
        secs: 10.0,
        instruments: 1024,
        positions: 256,
        crossings: 128,
        dir: PathBuf::from("target/bench-feed"),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).ok_or_else(|| format!("{} needs a value", v[i]))?;
        let num = || val.parse::<f64>().map_err(|_| format!("{}: not a number: {val}", v[i]));
        match v[i].as_str() {
            "--bin" => a.bin = PathBuf::from(val),
            "--secs" => a.secs = num()?,
            "--instruments" => a.instruments = num()? as usize,
            "--positions" => a.positions = num()? as usize,
            "--crossings" => a.crossings = num()? as usize,
            "--dir" => a.dir = PathBuf::from(val),
            other => return Err(format!("unknown argument {other}")),
        }
        i += 2;
    }
    if a.positions > a.instruments || a.crossings > a.positions || a.instruments > 1024 || a.positions > 256 {
        return Err("need crossings <= positions <= 256 and positions <= instruments <= 1024".into());
    }
    Ok(a)
}

/// CA + leaf for 127.0.0.1; writes `ca.pem`, returns the server config.
fn tls(dir: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let e = |x: rcgen::Error| x.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "tickguard bench CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().map_err(e)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).map_err(|x| x.to_string())?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    leaf.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
    let leaf_key = KeyPair::generate().map_err(e)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|x| x.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|x| x.to_string())?;
    Ok(Arc::new(cfg))
}

fn config(a: &Args, port: u16) -> String {
    let api =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(18_000, |x| x.port());
    let mut s = format!(
        r#"[api]
listen = "127.0.0.1:{api}"
[feed]
venue = "binance"
ws_url = "wss://127.0.0.1:{port}/stream"
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
kind = "paper"
paper_fill_delay_s = 0.01
[store]
dir = "{}"
"#,
        (0..a.instruments).map(|i| format!("\"{}\"", symbol(i))).collect::<Vec<_>>().join(","),
        a.dir.join("ca.pem").display(),
        a.dir.join("state").display(),
    );
    for i in 0..a.positions {
        s.push_str(&format!(
            "[[positions]]\nid = \"p{i}\"\nsymbol = \"{}\"\nside = \"long\"\nqty = 1\nentry = \"100.00\"\nstop_loss = \"90.00\"\ntake_profit = \"110.00\"\n",
            symbol(i)
        ));
    }
    s
}

/// `VmHWM`, `VmRSS`, `RssAnon` and `RssFile` of a process, in KiB.
fn rss_kib(pid: u32) -> [u64; 4] {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    [get("VmHWM:"), get("VmRSS:"), get("RssAnon:"), get("RssFile:")]
}

async fn run(a: Args) -> Result<(), String> {
    std::fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let _ = std::fs::remove_dir_all(a.dir.join("state"));
    let tls = tokio_rustls::TlsAcceptor::from(tls(&a.dir)?);
    let listener =
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let cfg_path = a.dir.join("tickguard.toml");
    std::fs::write(&cfg_path, config(&a, port)).map_err(|e| e.to_string())?;

    let mut child = Command::new(&a.bin)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e} (build it with cargo build --release)", a.bin.display()))?;
    let pid = child.id();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut v) = sink.lock() {
                v.push(l);
            }
        }
    });
    let result = drive(&a, &listener, &tls, pid, &lines).await;
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
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
    let (sent, secs, [hwm_kib, rss_kib, anon_kib, file_kib]) = result?;
    let all = lines.lock().map(|v| v.clone()).unwrap_or_default();
    let stats = all.iter().rev().find(|l| l.contains(" stats ")).cloned().unwrap_or_default();
    let decisions = all.iter().filter(|l| l.contains("[SL] ")).count();
    let closed = all.iter().filter(|l| l.contains("event=closed how=filled")).count();
    let reconnects = all.iter().filter(|l| l.contains("[RECONNECT] attempt=")).count();
    let frames: f64 = field(&stats, "feed_frames").parse().unwrap_or(0.0);
    let ticks: f64 = field(&stats, "engine_ticks_live").parse().unwrap_or(0.0);
    println!(
        "bench-feed: {} instruments, {} open positions, {secs:.2} s of pushing",
        a.instruments, a.positions
    );
    println!("  frames sent by the server      {sent:>12}   {:>12.0} /s", sent as f64 / secs);
    println!("  frames decoded by tickguard    {frames:>12.0}   {:>12.0} /s", frames / secs);
    println!("  ticks judged by the engine     {ticks:>12.0}   {:>12.0} /s (after coalescing)", ticks / secs);
    println!("  stop crossings pushed          {:>12}", a.crossings);
    println!("  [SL] decisions / fills         {decisions:>12} / {closed}");
    println!("  reconnects during the run      {reconnects:>12}");
    println!(
        "  tick-to-action (frame received -> close order), n={}: p50 <= {} us, p99 <= {} us, mean {} us",
        field(&stats, "tick_to_action_count"),
        field(&stats, "tick_to_action_p50_us"),
        field(&stats, "tick_to_action_p99_us"),
        field(&stats, "tick_to_action_mean_us")
    );
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  peak RSS (VmHWM) {:.2} MiB; at the end RSS {:.2} MiB = anonymous {:.2} MiB + file-backed {:.2} MiB (program text, libc)",
        mib(hwm_kib),
        mib(rss_kib),
        mib(anon_kib),
        mib(file_kib)
    );
    println!("  stats line: {}", stats.split(" stats ").nth(1).unwrap_or("(none)"));
    if decisions != a.crossings {
        return Err(format!("expected {} [SL] decisions, saw {decisions}", a.crossings));
    }
    Ok(())
}

/// Accepts the binary's connection, waits for its subscriptions, pushes; returns frames sent,
/// seconds pushed, and the binary's memory figures (KiB, see [`rss_kib`]) at the end.
async fn drive(
    a: &Args,
    listener: &TcpListener,
    tls: &tokio_rustls::TlsAcceptor,
    pid: u32,
    lines: &Arc<Mutex<Vec<String>>>,
) -> Result<(u64, f64, [u64; 4]), String> {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
        .await
        .map_err(|_| {
            let log = lines.lock().map(|v| v.join("\n")).unwrap_or_default();
            format!("tickguard did not connect within 15 s:\n{log}")
        })?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut s = tokio::time::timeout(Duration::from_secs(5), tls.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out")?
        .map_err(|e| format!("TLS: {e}"))?;
    // The upgrade request.
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .map_err(|_| "no upgrade request")?
            .map_err(|e| e.to_string())?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err("bad upgrade request".into());
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
    let reader = tokio::spawn(read_client(r, ctl_tx, acks.clone()));
    let want_acks = a.instruments.div_ceil(200) as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while acks.load(Ordering::Relaxed) < want_acks {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {want_acks} SUBSCRIBE messages arrived",
                acks.load(Ordering::Relaxed)
            ));
        }
        while let Ok(c) = ctl_rx.try_recv() {
            w.write_all(&c).await.map_err(|e| e.to_string())?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Ok(c) = ctl_rx.try_recv() {
        w.write_all(&c).await.map_err(|e| e.to_string())?;
    }
    // Let the binary take in the acks before the flood.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let chunks = ring(a.instruments, 64 * 1024);
    let push_for = Duration::from_secs_f64(a.secs);
    let every = push_for.div_f64((a.crossings + 1) as f64);
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let mut next_cross = t0 + every;
    let (mut crossed, mut sent, mut k) = (0usize, 0u64, 0usize);
    let mut u = 1u64 << 40;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= t0 + push_for {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        while let Ok(c) = ctl_rx.try_recv() {
            w.write_all(&c).await.map_err(|e| e.to_string())?;
        }
        if crossed < a.crossings && now >= next_cross {
            // Instrument `crossed` carries position p<crossed>: its bid falls through 90.00.
            let mut f = Vec::new();
            frame(&mut f, book_ticker(crossed, u, "89.50000000", "89.51000000").as_bytes());
            u += 1;
            w.write_all(&f).await.map_err(|e| e.to_string())?;
            crossed += 1;
            sent += 1;
            next_cross += every;
        }
        let (chunk, n) = &chunks[k % chunks.len()];
        w.write_all(chunk).await.map_err(|e| e.to_string())?;
        sent += n;
        k += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    w.flush().await.map_err(|e| e.to_string())?;
    // Let the last frames and fills through, then read the peak RSS.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mem = rss_kib(pid);
    reader.abort();
    Ok((sent, secs, mem))
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("feed_load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("feed_load: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feed_load: {e}");
            ExitCode::from(1)
        }
    }
}
