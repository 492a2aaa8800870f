//! The API's transport and token rules against the real binary (issue 13): what
//! `tickguard check-config` refuses (exit 78, naming the key and the fix), `tickguard run`
//! never refuses: it keeps protecting and serves the API on 127.0.0.1 (same port) only, with
//! the `api_config` alarm on `/ready`. `api.allow_plain_http` is warned about at every start,
//! and so is a secret file its group can read.
//!
//! Everything stays on 127.0.0.0/8: the non-loopback listen address is `0.0.0.0:PORT` (every
//! interface, so not loopback), and "serves on 127.0.0.1 only" is shown by 127.0.0.2:PORT,
//! which a `0.0.0.0` listener answers and a `127.0.0.1` one refuses.

#[path = "support/app.rs"]
mod app;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use app::App;

/// 64 hex digits, as `openssl rand -hex 32` writes them.
const STRONG: &str = "9d2f4c1a7b3e5d608f1e2c3b4a5968778695a4b3c2d1e0f9a8b7c6d5e4f30211";

fn test_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("api-transport").join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// A port free on every interface (bound on 0.0.0.0 for a moment).
fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes the token file with `mode`; returns its path.
fn token_file(dir: &Path, token: &str, mode: u32) -> PathBuf {
    let p = dir.join("api.token");
    std::fs::write(&p, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// A configuration on the simulator and the paper broker with one position far from its
/// stop, `api` lines under `[api]`.
fn write_config(dir: &Path, api: &str) -> PathBuf {
    let text = format!(
        "[api]\n{api}\n[store]\ndir = \"{}\"\nfsync = \"never\"\n[broker]\npaper_fill_delay_s = 0.05\n[sim]\nseed = 7\ntick_interval_s = 0.1\n\n[[positions]]\nid = \"guarded\"\nsymbol = \"BTCUSDT\"\nside = \"long\"\nqty = 1\nentry = 60000\nstop_loss = 1000\n",
        dir.join("state").display()
    );
    let path = dir.join("tickguard.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn check_config(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tickguard"))
        .arg("check-config")
        .arg(path)
        .env_clear()
        .output()
        .expect("run tickguard check-config")
}

/// One HTTP/1.1 request to `addr` (Connection: close), bounded by 3 s; the status and body,
/// or `None` when the connection is refused or nothing whole arrives in time.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Option<(u16, String)> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            addr.port(),
            body.len()
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.take(1 << 20).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_string());
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(3), work).await.ok().flatten()
}

/// Polls `GET path` on `addr` until it answers (at most `within`).
async fn wait_answer(addr: SocketAddr, path: &str, within: Duration) -> Option<(u16, String)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(a) = request(addr, "GET", path, None, "").await {
            return Some(a);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn local(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// `run` on a configuration `check-config` refuses: it protects, answers on 127.0.0.1:port
/// only, and `/ready` is 503 with `api_config` naming `key`. Returns the app (still running).
async fn expect_loopback_fallback(
    config: &Path,
    port: u16,
    token: Option<&str>,
    key: &str,
    event: &str,
) -> App {
    let app = App::start(config);
    let line = app
        .expect_from(
            0,
            "[API] fallback error",
            |l| l.contains("ERROR") && l.contains(&format!("[API] event={event} key={key}")),
            Duration::from_secs(10),
        )
        .await;
    assert!(line.text.contains(&format!("listen=127.0.0.1:{port}")), "{}", line.text);
    assert!(!line.text.contains(STRONG), "the token leaked: {}", line.text);

    // Serving on 127.0.0.1:port ...
    let lo = local([127, 0, 0, 1], port);
    let health = wait_answer(lo, "/health", Duration::from_secs(10)).await;
    assert!(matches!(health, Some((200, _))), "/health on {lo}: {health:?}\n{}", app.tail());
    // ... and nowhere else: 127.0.0.2 is refused (a 0.0.0.0 listener would answer it).
    assert_eq!(request(local([127, 0, 0, 2], port), "GET", "/health", None, "").await, None);

    // /ready says why, naming the key (the alarm of ControlConfig, shown by the server).
    let ready = request(lo, "GET", "/ready", None, "").await;
    let (status, body) = ready.unwrap_or_else(|| panic!("/ready did not answer\n{}", app.tail()));
    assert_eq!(status, 503, "/ready: {body}");
    assert!(body.contains("\"api_config\""), "no api_config check in /ready: {body}");
    let check = body.split("\"api_config\"").nth(1).unwrap_or("");
    assert!(check.contains(key), "api_config does not name {key}: {body}");

    // Protection goes on: the configured position is guarded and the emergency close, with the
    // right token, is answered (without a token the API is read-only: the engine alone guards).
    let Some(token) = token else {
        let positions = request(lo, "GET", "/api/v1/positions", None, "").await;
        assert!(
            matches!(&positions, Some((200, body)) if body.contains("guarded")),
            "{positions:?}\n{}",
            app.tail()
        );
        return app;
    };
    let close = request(
        lo,
        "POST",
        "/api/v1/monitoring/emergency-close-position",
        Some(token),
        "{\"symbol\": \"BTCUSDT\", \"reason\": \"emergency\"}",
    )
    .await;
    assert!(matches!(close, Some((200 | 202, _))), "emergency close: {close:?}\n{}", app.tail());
    app.expect_from(
        0,
        "[CLOSE] of the guarded position",
        |l| l.contains("[CLOSE]") && l.contains("guarded"),
        Duration::from_secs(5),
    )
    .await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_listen_without_tls_is_refused_by_check_config_and_narrowed_to_loopback_by_run() {
    let dir = test_dir();
    let port = free_port();
    let token = token_file(&dir, STRONG, 0o600);
    let config =
        write_config(&dir, &format!("listen = \"0.0.0.0:{port}\"\ntoken_file = \"{}\"\n", token.display()));

    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("config error: api.listen"), "{stderr}");
    assert!(stderr.contains("api.tls_cert") && stderr.contains("api.allow_plain_http = true"), "{stderr}");

    let app = expect_loopback_fallback(&config, port, Some(STRONG), "api.listen", "plain_http_refused").await;
    assert!(app.find_from(0, |l| l.contains("event=secret_readable")).is_none(), "0600 is not warned about");
    assert_eq!(app.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_token_is_refused_by_check_config_and_narrowed_to_loopback_by_run() {
    let dir = test_dir();
    let port = free_port();
    let short = "guessable-1";
    let token = token_file(&dir, short, 0o600);
    let config =
        write_config(&dir, &format!("listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n", token.display()));

    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("config error: api.token_file"), "{stderr}");
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");
    assert!(!stderr.contains(short), "the token leaked: {stderr}");

    let app = expect_loopback_fallback(&config, port, Some(short), "api.token_file", "weak_token").await;
    let line = app.find_from(0, |l| l.contains("event=weak_token")).map(|l| l.text).unwrap_or_default();
    assert!(line.contains("openssl rand -hex 32") && !line.contains(short), "{line}");
    assert_eq!(app.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_plain_http_and_a_group_readable_token_are_warned_about_at_start() {
    let dir = test_dir();
    let port = free_port();
    let token = token_file(&dir, STRONG, 0o640);
    let config = write_config(
        &dir,
        &format!(
            "listen = \"0.0.0.0:{port}\"\nallow_plain_http = true\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );

    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: api.allow_plain_http = true"), "{stderr}");
    assert!(stderr.contains(&format!("chmod 600 {}", token.display())), "{stderr}");

    let app = App::start(&config);
    let warn = app
        .expect_from(
            0,
            "[API] plain_http warning",
            |l| l.contains("WARN") && l.contains("[API] event=plain_http key=api.allow_plain_http"),
            Duration::from_secs(10),
        )
        .await;
    assert!(warn.text.contains("clear"), "{}", warn.text);
    let secret = app
        .expect_from(
            0,
            "[CONFIG] secret_readable warning",
            |l| l.contains("[CONFIG] event=secret_readable key=api.token_file"),
            Duration::from_secs(10),
        )
        .await;
    assert!(
        secret.text.contains(&token.display().to_string()) && secret.text.contains("chmod 600"),
        "{}",
        secret.text
    );
    assert!(secret.text.contains("0640"), "{}", secret.text);
    // No fallback: the API listens on every interface (127.0.0.2 answers too), no alarm.
    let other = local([127, 0, 0, 2], port);
    let health = wait_answer(other, "/health", Duration::from_secs(10)).await;
    assert!(matches!(health, Some((200, _))), "/health on {other}: {health:?}\n{}", app.tail());
    assert!(app.find_from(0, |l| l.contains("[API] event=plain_http_refused")).is_none(), "{}", app.tail());
    if let Some((_, body)) = request(local([127, 0, 0, 1], port), "GET", "/ready", None, "").await {
        assert!(!body.contains("\"api_config\""), "no alarm with allow_plain_http: {body}");
    }
    assert_eq!(app.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insecure_webhook_is_refused_by_check_config_and_logged_by_run() {
    let dir = test_dir();
    let port = free_port();
    let token = token_file(&dir, STRONG, 0o600);
    // 0.0.0.0 is not a loopback host for the rule, yet a connection to it stays on this box.
    let config = write_config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n[notify]\nwebhook_url = \"http://0.0.0.0:9/services/hook-secret-path\"\n",
            token.display()
        ),
    );
    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("config error: notify.webhook_url uses http:// to 0.0.0.0"), "{stderr}");
    assert!(!stderr.contains("hook-secret-path"), "the hook's secret leaked: {stderr}");

    let app = App::start(&config);
    let line = app
        .expect_from(
            0,
            "[CONFIG] insecure_url error",
            |l| l.contains("ERROR") && l.contains("[CONFIG] event=insecure_url key=notify.webhook_url"),
            Duration::from_secs(10),
        )
        .await;
    assert!(!line.text.contains("hook-secret-path"), "{}", line.text);
    // Protection and the API go on, without the API alarm (this is not an API problem).
    let lo = local([127, 0, 0, 1], port);
    let health = wait_answer(lo, "/health", Duration::from_secs(10)).await;
    assert!(matches!(health, Some((200, _))), "/health: {health:?}\n{}", app.tail());
    if let Some((_, body)) = request(lo, "GET", "/ready", None, "").await {
        assert!(!body.contains("\"api_config\""), "{body}");
    }
    assert_eq!(app.stop().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_file_leaves_a_read_only_api_on_loopback() {
    let dir = test_dir();
    let port = free_port();
    let missing = dir.join("no-such.token");
    let config = write_config(
        &dir,
        &format!(
            "listen = \"0.0.0.0:{port}\"\nallow_plain_http = true\nprotect_reads = false\ntoken_file = \"{}\"\n",
            missing.display()
        ),
    );
    // check-config cannot judge the token: a warning, not an error.
    let out = check_config(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: api.token_file") && stderr.contains("not checked"), "{stderr}");
    // run keeps protecting (it used to exit 78 here).
    let app = expect_loopback_fallback(&config, port, None, "api.token_file", "token_unreadable").await;
    assert_eq!(app.stop().await, Some(0));
}
