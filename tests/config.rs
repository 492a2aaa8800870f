//! Configuration: the public API (`tickguard::config`) and `tickguard check-config`.
//!
//! The binary tests rely on the `check-config` contract: `tickguard check-config FILE` loads
//! the file with `config::load(Some(path), std::env::vars())`, prints `config error: {err}` on
//! stderr and exits 78 on an error, and exits 0 on success.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tickguard::config::{self, BrokerKind, Config, ConfigError, Venue};
use tickguard::core::book::PositionSpec;
use tickguard::core::engine::EngineConfig;
use tickguard::core::price::{Price, Qty};
use tickguard::core::types::{BlindPolicy, Side};
use tickguard::limits::{MAX_INSTRUMENTS, MAX_POSITIONS};

const NO_ENV: [(String, String); 0] = [];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    config::parse_str(text, "test.toml", NO_ENV)
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    config::parse_str(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("expected a valid config, got: {e}\n{text}"))
}

/// The error message of an invalid config; asserts it is one line and names every `needle`.
fn err_env(text: &str, env: &[(&str, &str)], needles: &[&str]) -> String {
    let msg = match parse_env(text, env) {
        Ok(_) => panic!("expected an error for:\n{text}"),
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

fn price(s: &str) -> Price {
    Price::parse(s).expect("test price")
}

fn position(id: &str, symbol: &str, side: &str, sl: &str, tp: &str) -> String {
    format!(
        "[[positions]]\nid = \"{id}\"\nsymbol = \"{symbol}\"\nside = \"{side}\"\nqty = 1\nentry = 100\nstop_loss = {sl}\ntake_profit = {tp}\n"
    )
}

// --- the invalid configurations every layer must reject, with the key each must name ------

fn many_instruments(n: usize) -> String {
    let list: Vec<String> = (0..n).map(|i| format!("\"SYM{i}\"")).collect();
    format!("[feed]\ninstruments = [{}]\n", list.join(", "))
}

fn many_positions(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("[[positions]]\nid = \"p{i}\"\nsymbol = \"S{i}\"\nside = \"long\"\nqty = 1\nentry = 10\n")
        })
        .collect()
}

/// (name, file, key the error must name)
fn invalid_cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "stale >= expiry",
            "[cache]\nstale_after_s = 300\nexpire_after_s = 300\n".into(),
            "cache.stale_after_s",
        ),
        ("long inverted", position("a", "BTCUSDT", "long", "110", "100"), "positions[0].stop_loss"),
        (
            "short inverted",
            position("a", "BTCUSDT", "long", "90", "110") + &position("b", "ETHUSDT", "short", "90", "110"),
            "positions[1].stop_loss",
        ),
        (
            "non-positive qty",
            "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = 0\nentry = 1\n".into(),
            "positions[0].qty",
        ),
        (
            "unparseable price",
            "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = 1\nentry = \"12,5\"\n".into(),
            "positions[0].entry",
        ),
        (
            "duplicate ids",
            position("same", "BTCUSDT", "long", "90", "110")
                + &position("same", "ETHUSDT", "long", "90", "110"),
            "positions[1].id",
        ),
        ("too many instruments", many_instruments(MAX_INSTRUMENTS + 1), "feed.instruments"),
        ("too many positions", many_positions(MAX_POSITIONS + 1), "positions"),
        ("unknown key", "[cache]\nstale_after = 10\n".into(), "cache.stale_after"),
    ]
}

// --- defaults ------------------------------------------------------------------------------

#[test]
fn empty_file_and_no_file_are_the_defaults() {
    let empty = ok("");
    assert_eq!(empty, Config::default());
    let comments = ok("# nothing here\n\n");
    assert_eq!(comments, Config::default());
    let none = config::load(None, NO_ENV).expect("no file is valid");
    assert_eq!(none, Config::default());

    assert_eq!(empty.api.listen, "127.0.0.1:8000".parse::<SocketAddr>().expect("addr"));
    assert_eq!(empty.feed.venue, Venue::Sim);
    assert_eq!(empty.broker.kind, BrokerKind::Paper);
    assert_eq!(empty.cache.stale_after, Duration::from_secs(30));
    assert_eq!(empty.cache.expire_after, Duration::from_secs(300));
    assert_eq!(empty.broker.paper_fill_delay, Duration::from_millis(200));
    assert_eq!(empty.dns.nameservers.len(), 4);
    assert!(empty.positions.is_empty());
    assert!(empty.watched_symbols().is_empty());

    let e = empty.engine_config();
    let d = EngineConfig::default();
    assert_eq!(e.stale_after, d.stale_after);
    assert_eq!(e.expire_after, d.expire_after);
    assert_eq!(e.blind_grace, d.blind_grace);
    assert_eq!(e.max_close_attempts, d.max_close_attempts);
    assert_eq!(e.retry_initial, d.retry_initial);
    assert_eq!(e.retry_max, d.retry_max);
    assert!(!e.rest_enabled, "the simulator has no REST source");
    assert_eq!(e.seed, d.seed);
}

#[test]
fn empty_sections_are_valid() {
    let text = "[api]\n[feed]\n[dns]\n[tls]\n[cache]\n[broker]\n[store]\n[sim]\n";
    assert_eq!(ok(text), Config::default());
    assert_eq!(ok("positions = []\n"), Config::default());
}

// --- a full file ---------------------------------------------------------------------------

#[test]
fn full_fixture_loads() {
    let cfg = config::load(Some(&fixture("full.toml")), NO_ENV).expect("full.toml is valid");
    assert_eq!(cfg.api.listen, "0.0.0.0:8080".parse::<SocketAddr>().expect("addr"));
    assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("/etc/tickguard/api.token")));
    assert_eq!(cfg.api.protect_reads, Some(true));
    assert!(cfg.api.reads_protected());
    assert_eq!(cfg.api.protect_metrics, Some(false));
    assert!(!cfg.api.metrics_protected());
    assert!(cfg.api.hsts && !cfg.api.allow_plain_http);
    assert_eq!(cfg.api.tls_cert.as_deref(), Some(Path::new("/etc/tickguard/api.crt")));
    assert_eq!(
        cfg.api.allowed_hosts.as_deref(),
        Some(&["tickguard.lan".to_string(), "192.168.1.20:8080".into(), "[fd00::20]:8080".into()][..])
    );
    assert_eq!(cfg.feed.venue, Venue::Binance);
    assert_eq!(cfg.feed.reconnect_initial, Duration::from_millis(500));
    assert_eq!(cfg.feed.rest_poll, Duration::from_millis(2500));
    assert!(!cfg.dns.use_system);
    assert_eq!(cfg.tls.extra_ca.as_deref(), Some(Path::new("/etc/tickguard/ca.pem")));
    assert_eq!(cfg.cache.blind_grace, Duration::ZERO);
    assert_eq!(cfg.broker.kind, BrokerKind::Binance);
    assert_eq!(cfg.broker.max_close_attempts, 8);
    assert_eq!(cfg.broker.retry_initial, Duration::from_millis(250));
    assert_eq!(cfg.store.dir, PathBuf::from("/var/lib/tickguard"));
    assert_eq!(cfg.sim.seed, Some(42));
    assert_eq!(cfg.sim.tick_interval, Duration::from_secs(1));

    assert_eq!(cfg.positions.len(), 2);
    let btc = &cfg.positions[0];
    assert_eq!(btc.id.as_str(), "btc-1");
    assert_eq!(btc.side, Side::Long);
    assert_eq!(btc.qty, Qty::parse("0.5").expect("qty"));
    assert_eq!(btc.entry, price("60000"));
    assert_eq!(btc.stop_loss, Some(price("58000.5")));
    assert_eq!(btc.take_profit, Some(price("65000.12345678")));
    assert_eq!(btc.blind_policy, BlindPolicy::Alert);
    let bnb: &PositionSpec = &cfg.positions[1];
    assert_eq!(bnb.side, Side::Short);
    assert_eq!(bnb.qty, Qty::parse("3").expect("qty"));
    assert_eq!(bnb.entry, price("575.05"));
    assert_eq!(bnb.take_profit, None);
    assert_eq!(bnb.blind_policy, BlindPolicy::Flatten);

    // Instruments first, then the positions' symbols not already listed.
    assert_eq!(cfg.watched_symbols(), vec!["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"]);

    let e = cfg.engine_config();
    assert!(e.rest_enabled, "binance has a REST price source");
    assert_eq!(e.seed, 42);
    assert_eq!(e.stale_after, Duration::from_secs(20));
    assert_eq!(e.expire_after, Duration::from_secs(120));
    assert_eq!(e.blind_grace, Duration::ZERO);
    assert_eq!(e.max_close_attempts, 8);
    assert_eq!(e.retry_initial, Duration::from_millis(250));
    assert_eq!(e.retry_max, Duration::from_secs(20));
}

#[test]
fn upstox_venue_enables_rest() {
    let cfg = ok("[feed]\nvenue = \"upstox\"\n[broker]\nkind = \"upstox\"\n");
    assert!(cfg.engine_config().rest_enabled);
    assert_eq!(cfg.broker.kind, BrokerKind::Upstox);
}

// --- values --------------------------------------------------------------------------------

#[test]
fn seconds_take_integers_and_floats() {
    let cfg = ok("[cache]\nstale_after_s = 1.5\nexpire_after_s = 2\n");
    assert_eq!(cfg.cache.stale_after, Duration::from_millis(1500));
    assert_eq!(cfg.cache.expire_after, Duration::from_secs(2));
    let cfg = ok("[broker]\npaper_fill_delay_s = 0\n[sim]\ntick_interval_s = 0.05\n");
    assert_eq!(cfg.broker.paper_fill_delay, Duration::ZERO);
    assert_eq!(cfg.sim.tick_interval, Duration::from_millis(50));
}

#[test]
fn seconds_reject_bad_values() {
    err("[cache]\nstale_after_s = \"30\"\n", &["cache.stale_after_s", "\"30\"", "stale_after_s = 20"]);
    err("[cache]\nstale_after_s = 0\n", &["cache.stale_after_s", "above zero"]);
    err("[cache]\nblind_grace_s = -1\n", &["cache.blind_grace_s", "negative"]);
    err("[cache]\nexpire_after_s = 100000\n", &["cache.expire_after_s", "86400"]);
    err("[feed]\nrest_poll_s = nan\n", &["feed.rest_poll_s"]);
    err("[feed]\nsilence_timeout_s = true\n", &["feed.silence_timeout_s", "found a boolean"]);
}

#[test]
fn prices_take_integers_floats_and_strings() {
    let text = "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = \"0.00000001\"\nentry = 204.1\nstop_loss = 200\ntake_profit = \"210.12345678\"\n";
    let p = &ok(text).positions[0];
    assert_eq!(p.qty, Qty::from_units(1));
    assert_eq!(p.entry, price("204.1"));
    assert_eq!(p.stop_loss, Some(price("200")));
    assert_eq!(p.take_profit, Some(price("210.12345678")));
    // A float is rounded at 8 decimals, from its shortest decimal form.
    let p = &ok(&text.replace("entry = 204.1", "entry = 0.1")).positions[0];
    assert_eq!(p.entry, price("0.1"));
}

#[test]
fn prices_reject_bad_values() {
    let base = "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = 1\nentry = 100\n";
    err(&format!("{base}stop_loss = \"abc\"\n"), &["positions[0].stop_loss", "\"abc\"", "invalid price"]);
    err(&format!("{base}stop_loss = \"1.123456789\"\n"), &["positions[0].stop_loss", "8 decimal"]);
    err(&format!("{base}take_profit = -5\n"), &["positions[0].take_profit", "above zero"]);
    err(&format!("{base}take_profit = true\n"), &["positions[0].take_profit", "found a boolean"]);
    err(&base.replace("entry = 100", "entry = 0"), &["positions[0].entry", "above zero"]);
    err(&base.replace("qty = 1", "qty = -2.5"), &["positions[0].qty", "-2.5", "above zero"]);
    err(&base.replace("qty = 1", "qty = 0.0"), &["positions[0].qty"]);
    err(&base.replace("entry = 100", "entry = 1e12"), &["positions[0].entry", "too large"]);
}

#[test]
fn nameservers_take_ip_ip_port_and_v6() {
    let cfg = ok(
        "[dns]\nnameservers = [\"9.9.9.9\", \"1.1.1.1:5353\", \"[2606:4700::1111]:53\", \"2606:4700::1001\", \"[::1]:8053\"]\n",
    );
    let want: Vec<SocketAddr> =
        ["9.9.9.9:53", "1.1.1.1:5353", "[2606:4700::1111]:53", "[2606:4700::1001]:53", "[::1]:8053"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
    assert_eq!(cfg.dns.nameservers, want);
    err(
        "[dns]\nnameservers = [\"9.9.9.9\", \"dns.google\"]\n",
        &["dns.nameservers[1] = \"dns.google\"", "not an IP address"],
    );
    err("[dns]\nnameservers = [\"9.9.9.9:0\"]\n", &["dns.nameservers[0]", "port 0"]);
    err("[dns]\nnameservers = \"9.9.9.9\"\n", &["dns.nameservers", "found a string"]);
    err("[dns]\nuse_system = false\nnameservers = []\n", &["dns.nameservers", "use_system"]);
}

#[test]
fn urls_addresses_and_paths_are_checked() {
    err("[feed]\nws_url = \"https://stream.binance.com\"\n", &["feed.ws_url", "wss://"]);
    err("[feed]\nrest_url = \"wss://api.binance.com\"\n", &["feed.rest_url", "https://"]);
    err("[broker]\nrest_url = \"https://\"\n", &["broker.rest_url", "no host"]);
    err("[api]\nlisten = \"localhost:8000\"\n", &["api.listen", "localhost:8000"]);
    err("[api]\nlisten = 8000\n", &["api.listen", "found an integer"]);
    err("[store]\ndir = \"\"\n", &["store.dir", "empty"]);
    err("[tls]\nextra_ca = \"\"\n", &["tls.extra_ca", "empty"]);
    let cfg = ok("[feed]\nws_url = \"ws://127.0.0.1:9000/ws\"\n[api]\nlisten = \"[::1]:0\"\n");
    assert_eq!(cfg.feed.ws_url, "ws://127.0.0.1:9000/ws");
    assert_eq!(cfg.api.listen.port(), 0);
}

#[test]
fn words_are_checked() {
    err("[feed]\nvenue = \"kraken\"\n", &["feed.venue", "\"kraken\"", "sim, binance, upstox"]);
    err("[feed]\nvenue = 1\n", &["feed.venue", "found an integer"]);
    err("[broker]\nkind = \"live\"\n", &["broker.kind", "paper, binance, upstox"]);
    let base = "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nqty = 1\nentry = 100\n";
    err(&format!("{base}side = \"up\"\n"), &["positions[0].side", "\"up\"", "long or short"]);
    err(
        &format!("{base}side = \"long\"\nblind_policy = \"panic\"\n"),
        &["positions[0].blind_policy", "alert or flatten"],
    );
    let cfg = ok(&format!("{base}side = \"sell\"\n"));
    assert_eq!(cfg.positions[0].side, Side::Short);
}

#[test]
fn counts_are_checked() {
    assert_eq!(ok("[broker]\nmax_close_attempts = 1\n").broker.max_close_attempts, 1);
    err("[broker]\nmax_close_attempts = 0\n", &["broker.max_close_attempts", "1 to 1000"]);
    err("[broker]\nmax_close_attempts = 1.5\n", &["broker.max_close_attempts", "found a float"]);
    err("[sim]\nseed = -1\n", &["sim.seed", "negative"]);
}

#[test]
fn symbols_and_ids_are_checked() {
    let long = "X".repeat(33);
    err(&format!("[feed]\ninstruments = [\"BTCUSDT\", \"{long}\"]\n"), &["feed.instruments[1]", "33 bytes"]);
    err("[feed]\ninstruments = [\"BTC USDT\"]\n", &["feed.instruments[0]", "spaces"]);
    err("[feed]\ninstruments = [\"\"]\n", &["feed.instruments[0]", "empty"]);
    err("[feed]\ninstruments = [1]\n", &["feed.instruments[0]", "found an integer"]);
    let ok32 = "Y".repeat(32);
    ok(&format!("[feed]\ninstruments = [\"{ok32}\", \"NSE_EQ|INE002A01018\"]\n"));

    let p = |id: &str, sym: &str| {
        format!("[[positions]]\nid = \"{id}\"\nsymbol = \"{sym}\"\nside = \"long\"\nqty = 1\nentry = 1\n")
    };
    err(&p("a", &long), &["positions[0].symbol", "33 bytes"]);
    err(&p("has space", "X"), &["positions[0].id", "A-Z a-z 0-9 _ -"]);
    err(&p(&"i".repeat(21), "X"), &["positions[0].id", "1 to 20"]);
    err(&p("", "X"), &["positions[0].id"]);
    ok(&p(&"i".repeat(20), "X"));
    ok(&p("Az09_-", "X"));
}

#[test]
fn positions_need_their_required_keys() {
    let full = "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = 1\nentry = 1\n";
    for key in ["id", "symbol", "side", "qty", "entry"] {
        let text: String =
            full.lines().filter(|l| !l.starts_with(&format!("{key} ="))).map(|l| format!("{l}\n")).collect();
        err(&text, &[&format!("positions[0].{key}"), "missing"]);
    }
    err("positions = 3\n", &["positions", "[[positions]]"]);
    err("positions = [1]\n", &["positions[0]", "table"]);
}

// --- the listed invalid configurations -----------------------------------------------------

#[test]
fn invalid_configs_name_their_key() {
    for (name, text, key) in invalid_cases() {
        let msg = err(&text, &[key]);
        eprintln!("{name}: {msg}");
    }
}

#[test]
fn stale_at_or_above_expiry_is_rejected_with_the_fix() {
    let msg = err("[cache]\nstale_after_s = 300\n", &["cache.stale_after_s", "cache.expire_after_s"]);
    assert_eq!(
        msg,
        "cache.stale_after_s = 300: must be below cache.expire_after_s (300); lower stale_after_s or raise expire_after_s"
    );
    err("[cache]\nstale_after_s = 10\nexpire_after_s = 9.5\n", &["cache.stale_after_s", "9.5"]);
    ok("[cache]\nstale_after_s = 299.999\n");
}

#[test]
fn inverted_levels_are_rejected() {
    // Equal levels are inverted too.
    err(&position("a", "X", "long", "100", "100"), &["positions[0].stop_loss", "below its take_profit"]);
    err(&position("a", "X", "short", "100", "100"), &["positions[0].stop_loss", "above its take_profit"]);
    err(
        &position("a", "X", "short", "90", "110"),
        &["positions[0].stop_loss", "raise stop_loss or lower take_profit"],
    );
    ok(&position("a", "X", "long", "90", "110"));
    ok(&position("a", "X", "short", "110", "90"));
}

#[test]
fn capacities_are_enforced() {
    ok(&many_instruments(MAX_INSTRUMENTS));
    ok(&many_positions(MAX_POSITIONS));
    err(&many_instruments(MAX_INSTRUMENTS + 1), &["feed.instruments", "1024"]);
    err(&many_positions(MAX_POSITIONS + 1), &["positions", "256"]);
    // Instruments and positions' symbols count together; repeated symbols once.
    let text = many_instruments(MAX_INSTRUMENTS - 1) + &many_positions(2);
    err(&text, &["feed.instruments", "1025"]);
    let text = many_instruments(MAX_INSTRUMENTS)
        + "[[positions]]\nid = \"a\"\nsymbol = \"SYM0\"\nside = \"long\"\nqty = 1\nentry = 1\n";
    assert_eq!(ok(&text).watched_symbols().len(), MAX_INSTRUMENTS);
}

#[test]
fn duplicate_ids_name_both_tables() {
    let text = position("x", "A", "long", "1", "2")
        + &position("y", "B", "long", "1", "2")
        + &position("x", "C", "long", "1", "2");
    err(&text, &["positions[2].id", "positions[0]", "\"x\""]);
}

#[test]
fn unknown_keys_are_rejected_with_a_suggestion() {
    err("[chache]\nstale_after_s = 1\n", &["unknown key chache", "did you mean [cache]"]);
    err(
        "[cache]\nstale_after = 10\n",
        &["unknown key cache.stale_after", "did you mean cache.stale_after_s"],
    );
    err("[feed]\nstale_after_s = 10\n", &["unknown key feed.stale_after_s", "cache.stale_after_s"]);
    err("ws_url = \"wss://x\"\n", &["unknown key ws_url", "feed.ws_url"]);
    err("[feed]\nwhatever = 1\n", &["unknown key feed.whatever", "keys of [feed]"]);
    err("[[position]]\nid = \"a\"\n", &["unknown key position", "positions"]);
    let base = "[[positions]]\nid = \"a\"\nsymbol = \"X\"\nside = \"long\"\nqty = 1\nentry = 1\n";
    err(&format!("{base}stoploss = 5\n"), &["unknown key positions[0].stoploss", "positions[0].stop_loss"]);
    err("[cache]\nstale_after_s.x = 1\n", &["cache.stale_after_s", "found a table"]);
    err("cache = 5\n", &["cache = 5", "must be a table"]);
}

#[test]
fn cross_key_rules() {
    err(
        "[feed]\nreconnect_initial_s = 10\nreconnect_max_s = 5\n",
        &["feed.reconnect_max_s", "feed.reconnect_initial_s"],
    );
    err(
        "[broker]\nretry_initial_s = 10\nretry_max_s = 5\n",
        &["broker.retry_max_s", "broker.retry_initial_s"],
    );
    err("[api]\nprotect_reads = true\n", &["api.protect_reads", "api.token_file"]);
    err("[broker]\nkind = \"binance\"\n", &["broker.kind", "feed.venue"]);
    err("[feed]\nvenue = \"upstox\"\n[broker]\nkind = \"binance\"\n", &["broker.kind", "\"upstox\""]);
    ok("[feed]\nvenue = \"binance\"\n[broker]\nkind = \"paper\"\n");
}

#[test]
fn syntax_errors_give_the_line() {
    let e = parse("[cache]\nstale_after_s = 30\nexpire_after_s = = 5\n").expect_err("bad toml");
    let msg = e.to_string();
    assert!(matches!(e, ConfigError::Parse { line: 3, .. }), "{msg}");
    assert!(msg.starts_with("test.toml:3:"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    let e = parse("[cache]\nstale_after_s = 1\nstale_after_s = 2\n").expect_err("duplicate key");
    assert!(e.to_string().contains("test.toml:3:"), "{e}");
}

#[test]
fn unreadable_file_names_the_path() {
    let e = config::load(Some(Path::new("/nonexistent/tickguard.toml")), NO_ENV).expect_err("missing file");
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/tickguard.toml"), "{e}");
}

// --- environment overrides -----------------------------------------------------------------

#[test]
fn env_overrides_a_scalar() {
    let cfg = parse_env("[cache]\nstale_after_s = 20\n", &[("TICKGUARD_CACHE_STALE_AFTER_S", "12.5")])
        .expect("valid");
    assert_eq!(cfg.cache.stale_after, Duration::from_millis(12_500));
    let cfg = parse_env(
        "",
        &[
            ("TICKGUARD_FEED_WS_URL", "wss://example.test/ws"),
            ("TICKGUARD_API_PROTECT_READS", "true"),
            ("TICKGUARD_API_TOKEN_FILE", "/run/token"),
            ("TICKGUARD_BROKER_MAX_CLOSE_ATTEMPTS", "9"),
            ("TICKGUARD_SIM_SEED", "18446744073709551615"),
            ("TICKGUARD_FEED_VENUE", "binance"),
        ],
    )
    .expect("valid");
    assert_eq!(cfg.feed.ws_url, "wss://example.test/ws");
    assert_eq!(cfg.api.protect_reads, Some(true));
    assert_eq!(cfg.api.token_file.as_deref(), Some(Path::new("/run/token")));
    assert_eq!(cfg.broker.max_close_attempts, 9);
    assert_eq!(cfg.sim.seed, Some(u64::MAX));
    assert_eq!(cfg.feed.venue, Venue::Binance);
}

#[test]
fn env_empty_clears_optional_values() {
    let cfg = parse_env(
        "[tls]\nextra_ca = \"/ca.pem\"\n[sim]\nseed = 7\n",
        &[("TICKGUARD_TLS_EXTRA_CA", ""), ("TICKGUARD_SIM_SEED", "")],
    )
    .expect("valid");
    assert_eq!(cfg.tls.extra_ca, None);
    assert_eq!(cfg.sim.seed, None);
}

#[test]
fn env_overrides_a_list() {
    let cfg = parse_env(
        "[feed]\ninstruments = [\"XRPUSDT\"]\n",
        &[("TICKGUARD_FEED_INSTRUMENTS", "BTCUSDT, ETHUSDT,,")],
    )
    .expect("valid");
    assert_eq!(cfg.feed.instruments, vec!["BTCUSDT", "ETHUSDT"]);
    let cfg = parse_env("", &[("TICKGUARD_DNS_NAMESERVERS", "9.9.9.9,[2620:fe::fe]:53,2620:fe::9")])
        .expect("valid");
    let want: Vec<SocketAddr> = ["9.9.9.9:53", "[2620:fe::fe]:53", "[2620:fe::9]:53"]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    assert_eq!(cfg.dns.nameservers, want);
    let cfg = parse_env("", &[("TICKGUARD_FEED_INSTRUMENTS", "")]).expect("valid");
    assert!(cfg.feed.instruments.is_empty());
}

#[test]
fn bad_env_values_name_the_variable_and_the_key() {
    err_env(
        "",
        &[("TICKGUARD_CACHE_STALE_AFTER_S", "soon")],
        &["TICKGUARD_CACHE_STALE_AFTER_S", "cache.stale_after_s", "\"soon\""],
    );
    err_env(
        "",
        &[("TICKGUARD_API_PROTECT_READS", "yes")],
        &["TICKGUARD_API_PROTECT_READS", "api.protect_reads"],
    );
    err_env("", &[("TICKGUARD_FEED_VENUE", "kraken")], &["TICKGUARD_FEED_VENUE", "feed.venue"]);
    err_env(
        "",
        &[("TICKGUARD_DNS_NAMESERVERS", "1.1.1.1,nope")],
        &["TICKGUARD_DNS_NAMESERVERS", "dns.nameservers", "item 1"],
    );
    let long = "Z".repeat(40);
    err_env(
        "",
        &[("TICKGUARD_FEED_INSTRUMENTS", &format!("A,{long}"))],
        &["TICKGUARD_FEED_INSTRUMENTS", "feed.instruments"],
    );
    // Cross-key rules see the overridden values.
    err_env(
        "",
        &[("TICKGUARD_CACHE_EXPIRE_AFTER_S", "10")],
        &["cache.stale_after_s", "cache.expire_after_s (10)"],
    );
}

#[test]
fn unknown_env_of_a_known_section_is_an_error() {
    err_env(
        "",
        &[("TICKGUARD_CACHE_STALE_AFTER", "5")],
        &["TICKGUARD_CACHE_STALE_AFTER", "TICKGUARD_CACHE_STALE_AFTER_S"],
    );
    err_env("", &[("TICKGUARD_FEED", "x")], &["TICKGUARD_FEED"]);
    err_env("", &[("TICKGUARD_POSITIONS_0_ID", "a")], &["TICKGUARD_POSITIONS_0_ID", "[[positions]]"]);
    // Not a configuration section: left alone.
    let cfg = parse_env(
        "",
        &[
            ("TICKGUARD_LOG", "debug"),
            ("TICKGUARD_CONFIG", "/x"),
            ("PATH", "/bin"),
            ("TICKGUARD_feed_venue", "x"),
        ],
    )
    .expect("valid");
    assert_eq!(cfg, Config::default());
}

// --- secrets -------------------------------------------------------------------------------

fn temp_file(name: &str, content: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}-{}-{name}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn secrets_are_trimmed_and_never_shown() {
    let p = temp_file("key", b"  s3cr3t-value \n");
    assert_eq!(config::read_secret(&p).expect("readable"), "s3cr3t-value");

    let empty = temp_file("empty", b" \n\t");
    let e = config::read_secret(&empty).expect_err("empty secret").to_string();
    assert!(e.contains(&empty.display().to_string()) && e.contains("empty"), "{e}");

    let bad = temp_file("binary", b"s3cr3t\xff\xfe");
    let e = config::read_secret(&bad).expect_err("not utf-8").to_string();
    assert!(e.contains(&bad.display().to_string()), "{e}");
    assert!(!e.contains("s3cr3t"), "secret content leaked: {e}");

    let e = config::read_secret(Path::new("/nonexistent/secret")).expect_err("missing").to_string();
    assert!(e.contains("/nonexistent/secret"), "{e}");
}

// --- the binary ----------------------------------------------------------------------------

fn check_config(path: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickguard"));
    cmd.arg("check-config").arg(path).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tickguard check-config")
}

#[test]
fn check_config_accepts_valid_files() {
    let out = check_config(&fixture("full.toml"), &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let empty = temp_file("empty.toml", b"");
    let out = check_config(&empty, &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_exits_78_naming_the_key() {
    for (name, text, key) in invalid_cases() {
        let path = temp_file("invalid.toml", text.as_bytes());
        let out = check_config(&path, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{name}: stderr: {stderr}");
        assert!(stderr.contains("config error"), "{name}: {stderr}");
        assert!(stderr.contains(key), "{name}: stderr does not name {key}: {stderr}");
    }
}

#[test]
fn check_config_exits_78_on_bad_env_and_syntax() {
    let out = check_config(&fixture("full.toml"), &[("TICKGUARD_CACHE_STALE_AFTER_S", "soon")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.contains("TICKGUARD_CACHE_STALE_AFTER_S") && stderr.contains("cache.stale_after_s"),
        "{stderr}"
    );

    let bad = temp_file("syntax.toml", b"[cache\n");
    let out = check_config(&bad, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "stderr: {stderr}");
    assert!(stderr.contains(":1:"), "{stderr}");

    let out = check_config(Path::new("/nonexistent/tickguard.toml"), &[]);
    assert_eq!(out.status.code(), Some(78));
}

// --- [relay] and the OHLCV connector's CONNECTOR_* names ------------------------------------

#[test]
fn relay_section_and_connector_names_through_the_public_api() {
    let cfg = ok("");
    assert!(!cfg.relay.enabled);
    assert_eq!(cfg.relay.listen, "127.0.0.1:8765".parse::<SocketAddr>().expect("addr"));
    assert_eq!(cfg.relay.health_listen, "127.0.0.1:8766".parse::<SocketAddr>().expect("addr"));
    assert_eq!((cfg.relay.closed_queue_max, cfg.relay.open_queue_max), (1000, 2000));

    // The seed's .env, with one TICKGUARD_RELAY_* override winning over its CONNECTOR_* name.
    let cfg = parse_env(
        "[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\nlisten = \"0.0.0.0:1\"\nsymbols = [\"btcusdt\"]\n",
        &[
            ("CONNECTOR_WSS_PORT", "8765"),
            ("CONNECTOR_WSS_HEALTH_CHECK_PORT", "8766"),
            ("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "true"),
            ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "500"),
            ("CONNECTOR_OPEN_QUEUE_MAXSIZE", "2000"),
            ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "60.0"),
            ("TICKGUARD_RELAY_OPEN_QUEUE_MAX", "3000"),
        ],
    )
    .expect("valid");
    let r = &cfg.relay;
    assert_eq!(r.listen, "0.0.0.0:8765".parse::<SocketAddr>().expect("addr"));
    assert_eq!(r.health_listen, "127.0.0.1:8766".parse::<SocketAddr>().expect("addr"));
    assert!(r.health_enabled);
    assert_eq!((r.closed_queue_max, r.open_queue_max), (500, 3000));
    assert_eq!(r.breaker_recovery, Duration::from_secs(60));
    assert_eq!(r.symbols, vec!["BTCUSDT".to_string()]);
    assert_eq!(cfg.relay_exchange(), Some(tickguard::relay::Exchange::Binance));

    err_env(
        "",
        &[("CONNECTOR_OPEN_QUEUE_MAXSIZE", "lots")],
        &["CONNECTOR_OPEN_QUEUE_MAXSIZE", "relay.open_queue_max"],
    );
    err("[relay]\nintervals = [\"2m\"]\n", &["relay.intervals[0]", "2m"]);
    err(
        "[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\nlisten = \"127.0.0.1:8000\"\n",
        &["relay.listen", "api.listen"],
    );
}

/// A relay case for `check-config`: the file, the environment, what stderr must name.
type RelayCase = (String, Vec<(&'static str, &'static str)>, Vec<&'static str>);

#[test]
fn check_config_applies_the_relay_rules_and_connector_names() {
    let on = "[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\n";
    let valid = temp_file("relay.toml", on.as_bytes());
    let seed_env = [
        ("CONNECTOR_WSS_PORT", "8765"),
        ("CONNECTOR_WSS_HEALTH_CHECK_PORT", "8766"),
        ("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "true"),
        ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "500"),
        ("CONNECTOR_OPEN_QUEUE_MAXSIZE", "2000"),
        ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "60.0"),
    ];
    let out = check_config(&valid, &seed_env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    // (file, env, what stderr must name)
    let feed_token = "/etc/tickguard/upstox.token";
    let cases: Vec<RelayCase> = vec![
        (on.to_string(), vec![("CONNECTOR_WSS_PORT", "8000")], vec!["relay.listen", "api.listen"]),
        (on.to_string(), vec![("CONNECTOR_WSS_HEALTH_CHECK_PORT", "8765")], vec!["relay.health_listen"]),
        (
            on.to_string(),
            vec![("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "many")],
            vec!["CONNECTOR_CLOSED_QUEUE_MAXSIZE", "relay.closed_queue_max"],
        ),
        ("[relay]\nenabled = true\n".into(), vec![], vec!["relay.exchange"]),
        ("[relay]\nenabled = true\nexchange = \"upstox\"\n".into(), vec![], vec!["relay.token_file"]),
        (
            format!(
                "[feed]\ntoken_file = \"{feed_token}\"\n[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"{feed_token}\"\n"
            ),
            vec![],
            vec!["relay.token_file", "feed.token_file"],
        ),
    ];
    for (text, env, needles) in cases {
        let path = temp_file("relay-invalid.toml", text.as_bytes());
        let out = check_config(&path, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{text} {env:?}: stderr: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{text} {env:?}: stderr does not name {n}: {stderr}");
        }
    }
}
