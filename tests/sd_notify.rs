//! The systemd contract of the binary: `READY=1` even with the feed unreachable, regular
//! `WATCHDOG=1` while the engine loop turns and none once it is stalled (`--fault`),
//! `STOPPING=1` on SIGTERM; and `systemd-analyze verify` of the shipped unit prints nothing.
//!
//! The test owns the notification socket (`NOTIFY_SOCKET`) and runs the real binary.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `WATCHDOG_USEC` given to the binary: keep-alives every 250 ms.
const WATCHDOG_USEC: u64 = 1_000_000;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("tg-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A `run` configuration whose feed, REST and DNS are all unreachable.
fn unreachable_config(dir: &Path) -> PathBuf {
    let port = closed_port();
    let path = dir.join("tickguard.toml");
    let mut f = std::fs::File::create(&path).expect("create config");
    write!(
        f,
        r#"[feed]
venue = "binance"
ws_url = "ws://127.0.0.1:{port}/stream"
rest_url = "http://127.0.0.1:{port}"
[dns]
use_system = false
nameservers = ["127.0.0.1:9"]
[store]
dir = "{}"
[[positions]]
id = "btc-1"
symbol = "BTCUSDT"
side = "long"
qty = "0.5"
entry = "60000"
stop_loss = "58000"
"#,
        dir.join("state").display()
    )
    .expect("write config");
    path
}

/// The binary, started with the notification socket at `sock` and `extra` arguments.
struct Guarded {
    child: Child,
    rx: UnixDatagram,
    log: PathBuf,
}

impl Guarded {
    fn start(dir: &Path, extra: &[&str]) -> Guarded {
        let sock = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&sock).expect("bind notify socket");
        rx.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let config = unreachable_config(dir);
        let log = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_tickguard"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start tickguard");
        Guarded { child, rx, log }
    }

    /// Every datagram received within `d`, with its arrival time.
    fn collect(&self, d: Duration) -> Vec<(Instant, String)> {
        let until = Instant::now() + d;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.rx.recv(&mut buf) {
                out.push((Instant::now(), String::from_utf8_lossy(&buf[..n]).into_owned()));
            }
        }
        out
    }

    /// Waits up to `d` for a datagram containing `what`; returns those seen until then.
    fn wait_for(&self, what: &str, d: Duration) -> (bool, Vec<String>) {
        let until = Instant::now() + d;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.rx.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = m.contains(what);
                seen.push(m);
                if hit {
                    return (true, seen);
                }
            }
        }
        (false, seen)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "kill {sig}");
    }

    fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn watchdogs(msgs: &[(Instant, String)]) -> usize {
    msgs.iter().filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1")).count()
}

#[test]
fn ready_with_the_feed_unreachable_then_keepalives_then_stopping() {
    let dir = TempDir::new("sdn-ready");
    let mut g = Guarded::start(dir.path(), &[]);
    let (ready, seen) = g.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready, "no READY=1 with the feed unreachable; got {seen:?}\nstderr:\n{}", g.stderr());

    let msgs = g.collect(Duration::from_secs(3));
    let n = watchdogs(&msgs);
    // Every 250 ms; at least half of that on a busy machine.
    assert!(n >= 6, "only {n} WATCHDOG=1 in 3 s; got {msgs:?}\nstderr:\n{}", g.stderr());
    let longest_gap = msgs
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    assert!(
        longest_gap < Duration::from_micros(WATCHDOG_USEC),
        "a keep-alive gap of {longest_gap:?} would let systemd's watchdog fire"
    );
    let status: Vec<&str> =
        seen.iter().map(String::as_str).chain(msgs.iter().map(|(_, m)| m.as_str())).collect();
    assert!(
        status.iter().any(|m| m.contains("STATUS=") && m.contains("feed down")),
        "no STATUS= saying the feed is down: {status:?}"
    );

    g.signal("-TERM");
    let (stopping, seen) = g.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(stopping, "no STOPPING=1 after SIGTERM; got {seen:?}");
    let status = g.wait_exit(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "graceful stop\nstderr:\n{}", g.stderr());
}

#[test]
fn no_keepalive_once_the_engine_loop_is_stalled() {
    let dir = TempDir::new("sdn-hang");
    let g = Guarded::start(dir.path(), &["--fault", "engine-hang@2s"]);
    let (ready, seen) = g.wait_for("READY=1", Duration::from_secs(20));
    assert!(ready, "no READY=1; got {seen:?}\nstderr:\n{}", g.stderr());
    let before = g.collect(Duration::from_millis(1200));
    assert!(watchdogs(&before) >= 2, "keep-alives before the stall: {before:?}");

    // The loop stops at 2 s (within one sweep); give it a second more, then watch.
    let settle = g.collect(Duration::from_secs(2));
    let after = g.collect(Duration::from_secs(2));
    assert_eq!(
        watchdogs(&after),
        0,
        "WATCHDOG=1 while the engine loop is stalled: {after:?}\nstderr:\n{}",
        g.stderr()
    );
    let all: Vec<&String> = settle.iter().chain(after.iter()).map(|(_, m)| m).collect();
    assert!(
        all.iter().any(|m| m.contains("STATUS=engine loop stalled")),
        "no STATUS= about the stall: {all:?}"
    );
    let log = g.stderr();
    assert!(log.contains("[FAULT] event=engine_hang"), "stderr:\n{log}");
    assert!(log.contains("[WATCHDOG] event=engine_stalled"), "stderr:\n{log}");
    // Dropping `g` kills the hung process, as systemd's watchdog would.
}

/// A root for `systemd-analyze verify --root`: the host's systemd units, the binary at the
/// unit's `ExecStart=` path and `unit_text` as tickguard.service.
fn verify_root(dir: &Path, unit_text: &str) -> PathBuf {
    let root = dir.join("root");
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir units");
    for host in ["/usr/lib/systemd/system", "/lib/systemd/system"] {
        if let Ok(rd) = std::fs::read_dir(host) {
            for e in rd.flatten() {
                let to = units.join(e.file_name());
                if e.path().is_file() && !to.exists() {
                    let _ = std::fs::copy(e.path(), to);
                }
            }
            break;
        }
    }
    let bin = root.join("usr/bin/tickguard");
    std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir bin");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_tickguard"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_tickguard"), &bin).expect("copy binary");
    }
    std::fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir etc");
    std::fs::write(root.join("etc/systemd/system/tickguard.service"), unit_text).expect("unit");
    root
}

fn verify(root: &Path) -> String {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("tickguard.service")
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze is installed (Debian package systemd)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn systemd_analyze_verify_prints_nothing_for_the_shipped_unit() {
    let unit = include_str!("../systemd/tickguard.service");
    let dir = TempDir::new("sdn-verify");
    let out = verify(&verify_root(dir.path(), unit));
    assert!(out.trim().is_empty(), "systemd-analyze verify printed:\n{out}");

    // The check has teeth: a bad value only warns (exit 0) but prints.
    let bad = unit.replace("WatchdogSec=10s", "WatchdogSec=ten seconds");
    let dir = TempDir::new("sdn-verify-bad");
    let out = verify(&verify_root(dir.path(), &bad));
    assert!(out.contains("ten seconds"), "a bad WatchdogSec= went unnoticed: {out:?}");
}

#[test]
fn the_unit_keeps_its_promises() {
    let unit = include_str!("../systemd/tickguard.service");
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "RestartSec=",
        "StartLimitIntervalSec=0",
        "RestartPreventExitStatus=78",
        "StateDirectory=tickguard",
        "User=tickguard",
        "SupplementaryGroups=gpio",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "MemoryMax=",
        "ExecStart=/usr/bin/tickguard run --config /etc/tickguard/tickguard.toml",
    ] {
        assert!(unit.contains(line), "tickguard.service lacks {line:?}");
    }
}
