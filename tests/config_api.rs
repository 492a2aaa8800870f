//! The API's configuration rules (issue 13): `api.allowed_hosts`, the defaults of
//! `api.protect_reads` / `api.protect_metrics`, `api.allow_plain_http`, `api.hsts`; the
//! start-up checks shared by `check-config` and `run` (transport, token strength, secret file
//! modes, outbound URLs); `$CREDENTIALS_DIRECTORY`. The `run` side is tests/api_transport.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use tickguard::config::{self, Config, ConfigError, Problem, Severity};

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    config::parse_str(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn ok(text: &str) -> Config {
    parse_env(text, &[]).unwrap_or_else(|e| panic!("expected a valid config, got: {e}\n{text}"))
}

fn ok_env(text: &str, env: &[(&str, &str)]) -> Config {
    parse_env(text, env).unwrap_or_else(|e| panic!("expected a valid config, got: {e}\n{text}"))
}

/// The one-line error of an invalid config, which must name every needle.
fn err_env(text: &str, env: &[(&str, &str)], needles: &[&str]) -> String {
    let msg = match parse_env(text, env) {
        Ok(_) => panic!("expected an error for:\n{text}\nenv {env:?}"),
        Err(e) => e.to_string(),
    };
    assert!(!msg.contains('\n'), "error is not one line: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    msg
}

fn err(text: &str, needles: &[&str]) -> String {
    err_env(text, &[], needles)
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-api-tests").join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `content` to `dir/name` with `mode`; returns the path.
fn secret(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// 64 hex digits: what `openssl rand -hex 32` writes (256 bits).
const STRONG: &str = "3f9a1c0b7e5d2a4869f0c1b3e7d5a2941c0b7e5d2a4869f03f9a1c0b7e5d2a48";

fn problems_of(list: &[Problem], sev: Severity) -> Vec<&Problem> {
    list.iter().filter(|p| p.severity == sev).collect()
}

// --- api.allowed_hosts ---------------------------------------------------------------------

#[test]
fn allowed_hosts_accept_names_addresses_and_ports() {
    let cfg = ok(
        "[api]\nallowed_hosts = [\"TickGuard.LAN\", \"tickguard.lan:8443\", \"192.168.1.20\", \"192.168.1.20:8443\", \"[::1]\", \"[fd00::20]:8443\", \"localhost\"]\n",
    );
    let hosts = cfg.api.allowed_hosts.expect("set");
    assert_eq!(
        hosts,
        [
            "tickguard.lan",
            "tickguard.lan:8443",
            "192.168.1.20",
            "192.168.1.20:8443",
            "[::1]",
            "[fd00::20]:8443",
            "localhost"
        ]
    );
    // The same list from the environment.
    let env = ok_env("", &[("TICKGUARD_API_ALLOWED_HOSTS", "tickguard.lan, [fd00::20]:8443")]);
    assert_eq!(env.api.allowed_hosts.expect("set"), ["tickguard.lan", "[fd00::20]:8443"]);
    // Unset (or an empty variable): the server's default set.
    assert_eq!(ok("").api.allowed_hosts, None);
    assert_eq!(ok_env("", &[("TICKGUARD_API_ALLOWED_HOSTS", "")]).api.allowed_hosts, None);
}

#[test]
fn bad_allowed_hosts_name_the_key_and_the_entry() {
    for (entry, why) in [
        ("http://tickguard.lan", "not a host name"),
        ("tickguard.lan:0", "port"),
        ("tickguard.lan:99999", "port"),
        ("tickguard.lan:", "port"),
        ("fd00::20", "brackets"),
        ("[fd00::zz]:80", "IPv6"),
        ("[fd00::20", "unclosed"),
        ("[::1]x", "unexpected"),
        ("bad host", "not a host name"),
        ("-lead.lan", "not a host name"),
        ("a..b", "not a host name"),
        ("", "not a host name"),
    ] {
        let text = format!("[api]\nallowed_hosts = [\"ok.lan\", {entry:?}]\n");
        err(&text, &["api.allowed_hosts[1]", &format!("{entry:?}"), why]);
    }
    err_env(
        "",
        &[("TICKGUARD_API_ALLOWED_HOSTS", "ok.lan,bad host")],
        &["TICKGUARD_API_ALLOWED_HOSTS", "api.allowed_hosts", "bad host"],
    );
    err("[api]\nallowed_hosts = []\n", &["api.allowed_hosts", "421", "remove the key"]);
    err("[api]\nallowed_hosts = [8000]\n", &["api.allowed_hosts[0]", "host string"]);
    err("[api]\nallowed_hosts = \"tickguard.lan\"\n", &["api.allowed_hosts", "list of host strings"]);
}

// --- protect_reads / protect_metrics defaults ----------------------------------------------

#[test]
fn protect_reads_defaults_on_when_not_loopback() {
    let token = "token_file = \"/etc/tickguard/api.token\"\n";
    // Loopback: reads open, as before.
    for listen in ["127.0.0.1:8000", "127.0.0.2:8000", "[::1]:8000"] {
        let cfg = ok(&format!("[api]\nlisten = \"{listen}\"\n{token}"));
        assert!(cfg.api.listen_is_loopback(), "{listen}");
        assert_eq!(cfg.api.protect_reads, None);
        assert!(!cfg.api.reads_protected(), "{listen}");
        assert!(!cfg.api.metrics_protected(), "{listen}");
    }
    // Not loopback, with a token: reads protected, metrics still open (scrapes keep working).
    for listen in ["0.0.0.0:8000", "192.168.1.20:8443", "[::]:8000", "[fd00::20]:8000"] {
        let cfg = ok(&format!("[api]\nlisten = \"{listen}\"\n{token}"));
        assert!(!cfg.api.listen_is_loopback(), "{listen}");
        assert!(cfg.api.reads_protected(), "{listen}");
        assert!(!cfg.api.metrics_protected(), "{listen}");
    }
    // Not loopback without a token: the API is read-only and reads stay open.
    let cfg = ok("[api]\nlisten = \"0.0.0.0:8000\"\n");
    assert!(!cfg.api.reads_protected());
    // Explicit values win.
    let cfg = ok(&format!("[api]\nlisten = \"0.0.0.0:8000\"\nprotect_reads = false\n{token}"));
    assert_eq!(cfg.api.protect_reads, Some(false));
    assert!(!cfg.api.reads_protected() && !cfg.api.metrics_protected());
    let cfg = ok(&format!("[api]\nprotect_reads = true\n{token}"));
    assert!(cfg.api.reads_protected());
    assert!(cfg.api.metrics_protected(), "protect_metrics follows an explicit protect_reads = true");
    let cfg = ok(&format!("[api]\nprotect_reads = true\nprotect_metrics = false\n{token}"));
    assert!(cfg.api.reads_protected() && !cfg.api.metrics_protected());
    let cfg = ok(&format!("[api]\nlisten = \"0.0.0.0:8000\"\nprotect_metrics = true\n{token}"));
    assert!(cfg.api.reads_protected() && cfg.api.metrics_protected());
    let env =
        ok_env("", &[("TICKGUARD_API_PROTECT_METRICS", "true"), ("TICKGUARD_API_TOKEN_FILE", "/run/t")]);
    assert_eq!(env.api.protect_metrics, Some(true));
    // protect_metrics = true needs a token, like protect_reads = true.
    err("[api]\nprotect_metrics = true\n", &["api.protect_metrics", "api.token_file"]);
    err("[api]\nprotect_reads = true\n", &["api.protect_reads", "api.token_file"]);
}

#[test]
fn plain_http_and_hsts_keys() {
    let cfg = ok("[api]\nallow_plain_http = true\nhsts = true\n");
    assert!(cfg.api.allow_plain_http && cfg.api.hsts);
    let d = ok("");
    assert!(!d.api.allow_plain_http && !d.api.hsts);
    let env = ok_env("", &[("TICKGUARD_API_ALLOW_PLAIN_HTTP", "1"), ("TICKGUARD_API_HSTS", "true")]);
    assert!(env.api.allow_plain_http && env.api.hsts);
    err("[api]\nhsts = \"yes\"\n", &["api.hsts", "true or false"]);
    err_env("", &[("TICKGUARD_API_ALLOW_PLAIN_HTTP", "maybe")], &["api.allow_plain_http"]);
}

// --- transport ------------------------------------------------------------------------------

#[test]
fn a_lan_listen_without_tls_is_an_error_naming_the_key_and_the_fix() {
    let cfg = ok("[api]\nlisten = \"0.0.0.0:8000\"\n");
    let p = config::api_problems(&cfg);
    let errors = problems_of(&p, Severity::Error);
    assert_eq!(errors.len(), 1, "{p:?}");
    assert_eq!(errors[0].key, "api.listen");
    for needle in ["api.listen", "0.0.0.0:8000", "api.tls_cert", "api.allow_plain_http = true", "127.0.0.1"] {
        assert!(errors[0].message.contains(needle), "{} lacks {needle}", errors[0].message);
    }
    // allow_plain_http: a warning naming the key instead.
    let cfg = ok("[api]\nlisten = \"0.0.0.0:8000\"\nallow_plain_http = true\n");
    let p = config::api_problems(&cfg);
    assert!(problems_of(&p, Severity::Error).is_empty(), "{p:?}");
    let warn: Vec<_> = p.iter().filter(|w| w.key == "api.allow_plain_http").collect();
    assert_eq!(warn.len(), 1, "{p:?}");
    assert!(warn[0].message.contains("clear") && warn[0].message.contains("api.tls_cert"), "{}", warn[0]);
    // HTTPS, or a loopback listen: no transport problem.
    let tls = "tls_cert = \"/etc/tickguard/api.crt\"\ntls_key = \"/etc/tickguard/api.key\"\n";
    let cfg = ok(&format!("[api]\nlisten = \"192.168.1.20:8443\"\n{tls}"));
    assert!(
        config::api_problems(&cfg).iter().all(|p| p.key != "api.listen" && p.key != "api.allow_plain_http")
    );
    for listen in ["127.0.0.1:8000", "127.9.9.9:8000", "[::1]:8000"] {
        let cfg = ok(&format!("[api]\nlisten = \"{listen}\"\n"));
        assert_eq!(config::api_problems(&cfg), vec![], "{listen}");
    }
    // allow_plain_http on loopback warns about nothing.
    assert_eq!(config::api_problems(&ok("[api]\nallow_plain_http = true\n")), vec![]);
}

#[test]
fn a_lan_listen_without_token_warns_that_reads_are_open() {
    let tls = "tls_cert = \"/c\"\ntls_key = \"/k\"\n";
    let cfg = ok(&format!("[api]\nlisten = \"0.0.0.0:8443\"\n{tls}"));
    let p = config::api_problems(&cfg);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].severity, p[0].key, p[0].event), (Severity::Warning, "api.token_file", "reads_open"));
    assert!(p[0].message.contains("openssl rand -hex 32"), "{}", p[0]);
}

// --- token strength -------------------------------------------------------------------------

#[test]
fn token_bits_follow_the_documented_rule() {
    // hex: 4 bits a character.
    assert_eq!(config::token_bits(STRONG), 256);
    assert_eq!(config::token_bits(&STRONG[..32]), 128);
    assert_eq!(config::token_bits(&STRONG[..31]), 124);
    assert_eq!(config::token_bits(&STRONG[..32].to_ascii_uppercase()), 128);
    // digits: log2(10).
    assert_eq!(config::token_bits("0123456789012345678901234567890123456789"), 132);
    // lower-case alphanumerics: log2(36) = 5.17.
    assert_eq!(config::token_bits("k3j9x0q2m7w4z8p1r6t5y2u3"), 124);
    // base64 of 16 bytes (`openssl rand -base64 16`): the padding does not count; without
    // `+ / - _` the alphabet is the 62 letters and digits (5.95 bits).
    assert_eq!(config::token_bits("q83vEjRWeJq83vEjRWeJqw=="), 130);
    assert_eq!(config::token_bits("q83v+jRWeJq83vEjRWe/qw=="), 132);
    // base64url alphabet: 6 bits.
    assert_eq!(config::token_bits("edge-world-test-token-0123456789"), 192);
    // anything else: log2(95).
    assert_eq!(config::token_bits("p@ss word!"), 65);
    // Fewer than 8 distinct characters: log2 of their number.
    assert_eq!(config::token_bits(&"a".repeat(200)), 0);
    assert_eq!(config::token_bits(&"ab".repeat(100)), 200);
    assert_eq!(config::token_bits(&"ab".repeat(50)), 100);
    assert_eq!(config::token_bits(""), 0);
    assert_eq!(config::token_bits(" \n"), 0);
}

#[test]
fn a_short_token_is_an_error_naming_how_to_make_one() {
    let dir = temp_dir();
    let short = secret(&dir, "short.token", "changeme-1234\n", 0o600);
    let cfg = ok(&format!("[api]\ntoken_file = \"{}\"\n", short.display()));
    let p = config::api_problems(&cfg);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].severity, p[0].key, p[0].event), (Severity::Error, "api.token_file", "weak_token"));
    for needle in ["api.token_file", "128", "openssl rand -hex 32", &short.display().to_string()] {
        assert!(p[0].message.contains(needle), "{} lacks {needle}", p[0]);
    }
    assert!(!p[0].message.contains("changeme"), "the token leaked: {}", p[0]);
    // The same check with the token already read (what `run` does).
    assert_eq!(config::api_problems_for_token(&cfg, Some("changeme-1234")), p);
    // A strong token: nothing.
    let strong = secret(&dir, "strong.token", &format!("{STRONG}\n"), 0o600);
    let cfg = ok(&format!("[api]\ntoken_file = \"{}\"\n", strong.display()));
    assert_eq!(config::api_problems(&cfg), vec![]);
    // Both problems at once on a LAN listen.
    let cfg = ok(&format!("[api]\nlisten = \"0.0.0.0:8000\"\ntoken_file = \"{}\"\n", short.display()));
    let keys: Vec<_> =
        problems_of(&config::api_problems(&cfg), Severity::Error).iter().map(|p| p.key).collect();
    assert_eq!(keys, ["api.listen", "api.token_file"]);
    // An unreadable token file: a warning (its strength is unknown), not an error.
    let cfg = ok("[api]\ntoken_file = \"/nonexistent/api.token\"\n");
    let p = config::api_problems(&cfg);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].severity, p[0].event), (Severity::Warning, "token_unchecked"));
}

// --- secret files ---------------------------------------------------------------------------

#[test]
fn secret_files_readable_by_group_or_others_are_warned_about() {
    let dir = temp_dir();
    let api = secret(&dir, "api.token", STRONG, 0o644);
    let feed = secret(&dir, "feed.token", "x", 0o640);
    let key = secret(&dir, "broker.key", "x", 0o604);
    let sec = secret(&dir, "broker.secret", "x", 0o600);
    let tg = secret(&dir, "telegram.token", "x", 0o400);
    let tls = secret(&dir, "api.key", "x", 0o660);
    let text = format!(
        "[api]\ntoken_file = \"{}\"\ntls_cert = \"/c\"\ntls_key = \"{}\"\n[feed]\ntoken_file = \"{}\"\n[broker]\nkey_file = \"{}\"\nsecret_file = \"{}\"\n[notify]\ntelegram_token_file = \"{}\"\ntelegram_chat_id = 42\n",
        api.display(),
        tls.display(),
        feed.display(),
        key.display(),
        sec.display(),
        tg.display()
    );
    let cfg = ok(&text);
    let p = config::secret_problems(&cfg);
    let keys: Vec<_> = p.iter().map(|w| w.key).collect();
    assert_eq!(keys, ["api.token_file", "api.tls_key", "feed.token_file", "broker.key_file"], "{p:?}");
    for w in &p {
        assert_eq!((w.severity, w.event), (Severity::Warning, "secret_readable"));
        assert!(w.message.contains("chmod 600"), "{w}");
    }
    assert!(p[0].message.contains(&api.display().to_string()) && p[0].message.contains("0644"), "{}", p[0]);
    assert!(p[0].message.contains("its group and others"), "{}", p[0]);
    assert!(p[2].message.contains("by its group (mode 0640)"), "{}", p[2]);
    assert!(p[3].message.contains("by others (mode 0604)"), "{}", p[3]);
    // Every secret key is inspected (SECRET_KEYS is the documented list).
    let all = ok(&text.replacen("[broker]\n", "[broker]\ntoken_file = \"/b\"\n", 1));
    let keys: Vec<_> = config::secret_files(&all).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, config::SECRET_KEYS);
    // broker.token_file defaults to feed.token_file: the file is named once.
    let cfg = ok(&format!(
        "[feed]\ntoken_file = \"{}\"\n[broker]\ntoken_file = \"{}\"\n",
        feed.display(),
        feed.display()
    ));
    assert_eq!(config::secret_problems(&cfg).len(), 1);
    // Missing files are left to the code that reads them.
    assert_eq!(config::secret_problems(&ok("[api]\ntoken_file = \"/nonexistent/t\"\n")), vec![]);
}

// --- outbound URLs --------------------------------------------------------------------------

#[test]
fn outbound_urls_carrying_secrets_must_be_https_except_to_loopback() {
    let upstox = "[feed]\nvenue = \"upstox\"\ntoken_file = \"/t\"\n";
    let cases: Vec<(String, &str)> = vec![
        (format!("{upstox}rest_url = \"http://api.upstox.com\"\n"), "feed.rest_url"),
        (format!("{upstox}ws_url = \"ws://feed.example.com/ws\"\n"), "feed.ws_url"),
        ("[feed]\nvenue = \"binance\"\n[broker]\nkind = \"binance\"\nrest_url = \"http://api.binance.com\"\n".into(), "broker.rest_url"),
        (format!("{upstox}[broker]\nkind = \"upstox\"\norder_url = \"http://api-hft.upstox.com\"\n"), "broker.order_url"),
        ("[notify]\nwebhook_url = \"http://hooks.example.com/services/T0/B0/hook-secret\"\n".into(), "notify.webhook_url"),
        (
            "[notify]\ntelegram_token_file = \"/t\"\ntelegram_chat_id = 1\ntelegram_api_url = \"http://tg-proxy.lan\"\n".into(),
            "notify.telegram_api_url",
        ),
    ];
    for (text, key) in &cases {
        let p = config::outbound_problems(&ok(text));
        assert_eq!(p.len(), 1, "{key}: {p:?}");
        assert_eq!((p[0].severity, p[0].key, p[0].event), (Severity::Error, *key, "insecure_url"));
        assert!(p[0].message.contains(key) && p[0].message.contains("loopback"), "{}", p[0]);
        assert!(!p[0].message.contains("hook-secret"), "the URL's path leaked: {}", p[0]);
    }
    // Loopback hosts (the tests' fakes, a local proxy) and https/wss are fine.
    for url in [
        "http://127.0.0.1:9000",
        "http://127.3.4.5:1/x",
        "http://localhost:8080/hook",
        "http://[::1]:8080",
        "http://user@127.0.0.1:80/",
        "https://hooks.example.com/x",
    ] {
        let p = config::outbound_problems(&ok(&format!("[notify]\nwebhook_url = \"{url}\"\n")));
        assert_eq!(p, vec![], "{url}");
    }
    let p = config::outbound_problems(&ok(
        "[feed]\nvenue = \"upstox\"\ntoken_file = \"/t\"\nws_url = \"ws://127.0.0.1:9/ws\"\nrest_url = \"http://127.0.0.1:9\"\n[broker]\nkind = \"upstox\"\nrest_url = \"http://127.0.0.1:9\"\norder_url = \"http://localhost:9\"\n",
    ));
    assert_eq!(p, vec![]);
    // URLs that carry no secret are not judged: Binance market data, the paper broker, a
    // Telegram URL without a bot.
    let p = config::outbound_problems(&ok(
        "[feed]\nvenue = \"binance\"\nws_url = \"ws://stream.example.com/ws\"\nrest_url = \"http://api.example.com\"\n[broker]\nrest_url = \"http://api.example.com\"\n[notify]\ntelegram_api_url = \"http://tg.example.com\"\n",
    ));
    assert_eq!(p, vec![]);
    assert!(config::is_loopback_host("LOCALHOST") && config::is_loopback_host("::1"));
    assert!(!config::is_loopback_host("0.0.0.0") && !config::is_loopback_host("localhost.example.com"));
}

// --- $CREDENTIALS_DIRECTORY -----------------------------------------------------------------

#[test]
fn relative_secret_paths_name_systemd_credentials() {
    let text = "[api]\ntoken_file = \"api.token\"\ntls_cert = \"api.crt\"\ntls_key = \"/etc/tickguard/api.key\"\n[feed]\ntoken_file = \"feed.token\"\n[broker]\nkey_file = \"broker.key\"\nsecret_file = \"broker.secret\"\n[notify]\ntelegram_token_file = \"telegram.token\"\ntelegram_chat_id = 1\n[tls]\nextra_ca = \"ca.pem\"\n";
    let cfg = ok_env(text, &[("CREDENTIALS_DIRECTORY", "/run/credentials/tickguard.service")]);
    let cred = |name: &str| Some(Path::new("/run/credentials/tickguard.service").join(name));
    assert_eq!(cfg.api.token_file, cred("api.token"));
    assert_eq!(cfg.api.tls_cert, cred("api.crt"));
    assert_eq!(cfg.api.tls_key.as_deref(), Some(Path::new("/etc/tickguard/api.key")), "absolute kept");
    assert_eq!(cfg.feed.token_file, cred("feed.token"));
    assert_eq!(cfg.broker.key_file, cred("broker.key"));
    assert_eq!(cfg.broker.secret_file, cred("broker.secret"));
    assert_eq!(cfg.notify.telegram_token_file, cred("telegram.token"));
    assert_eq!(cfg.tls.extra_ca, cred("ca.pem"));
    // The variable set through the environment override works the same way.
    let cfg = ok_env(
        "",
        &[("TICKGUARD_API_TOKEN_FILE", "api.token"), ("CREDENTIALS_DIRECTORY", "/run/credentials/x")],
    );
    assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("/run/credentials/x/api.token")));
    // Without the variable (or with it empty) relative paths are kept as written.
    let cfg = ok(text);
    assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("api.token")));
    let cfg = ok_env(text, &[("CREDENTIALS_DIRECTORY", "")]);
    assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("api.token")));
}

// --- check-config ---------------------------------------------------------------------------

fn check_config(text: &str, env: &[(&str, &str)]) -> Output {
    let dir = temp_dir();
    let path = dir.join("tickguard.toml");
    std::fs::write(&path, text).expect("write config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickguard"));
    cmd.arg("check-config").arg(&path).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tickguard check-config")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_refuses_the_transport_and_token_rules_with_78() {
    let out = check_config("[api]\nlisten = \"0.0.0.0:8000\"\n", &[]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{e}");
    assert!(e.contains("config error: api.listen") && e.contains("api.allow_plain_http = true"), "{e}");

    let dir = temp_dir();
    let short = secret(&dir, "api.token", "hunter2hunter2", 0o600);
    let out = check_config(&format!("[api]\ntoken_file = \"{}\"\n", short.display()), &[]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{e}");
    assert!(e.contains("config error: api.token_file") && e.contains("openssl rand -hex 32"), "{e}");
    assert!(!e.contains("hunter2"), "the token leaked: {e}");

    let out =
        check_config("[notify]\nwebhook_url = \"http://hooks.example.com/services/secret-path\"\n", &[]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{e}");
    assert!(e.contains("config error: notify.webhook_url") && !e.contains("secret-path"), "{e}");
}

#[test]
fn check_config_warns_but_accepts_plain_http_and_readable_secrets() {
    let dir = temp_dir();
    let token = secret(&dir, "api.token", STRONG, 0o644);
    let out = check_config(
        &format!(
            "[api]\nlisten = \"0.0.0.0:8000\"\nallow_plain_http = true\ntoken_file = \"{}\"\n",
            token.display()
        ),
        &[],
    );
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(e.contains("warning: api.allow_plain_http = true"), "{e}");
    assert!(e.contains(&format!("warning: api.token_file {} is readable", token.display())), "{e}");
    assert!(e.contains(&format!("chmod 600 {}", token.display())), "{e}");
}

#[test]
fn check_config_reads_a_credential_from_credentials_directory() {
    let dir = temp_dir();
    secret(&dir, "api.token", "short", 0o400);
    let text = "[api]\ntoken_file = \"api.token\"\n";
    let cred = dir.display().to_string();
    let out = check_config(text, &[("CREDENTIALS_DIRECTORY", &cred)]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "the credential was read and judged weak: {e}");
    assert!(e.contains(&format!("{cred}/api.token")), "{e}");
    secret(&dir, "api.token", STRONG, 0o400);
    let out = check_config(text, &[("CREDENTIALS_DIRECTORY", &cred)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
