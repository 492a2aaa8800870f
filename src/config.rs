//! Configuration: one TOML file plus `TICKGUARD_<SECTION>_<KEY>` environment overrides.
//!
//! One static schema, [`KEYS`], drives everything: which keys exist (anything else is an
//! error, with the nearest known key suggested), how a value is typed and checked, which
//! environment variables override what, and the key table of `docs/configuration.md` (a unit
//! test keeps the two in step). Positions come from `[[positions]]` tables, described by
//! [`POSITION_KEYS`]; they are file-only.
//!
//! The parsed document is walked by hand against the schema, so every error names the key
//! (`cache.stale_after_s`, `positions[1].stop_loss`), the value and the fix, on one line.
//! Every key has a default: an empty file, or no file at all, is a valid configuration.
//!
//! Secrets are never read here: the configuration holds their paths, and [`read_secret`]
//! reads one when an edge needs it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeInteger, DeTable, DeValue};

use crate::core::book::PositionSpec;
use crate::core::engine::EngineConfig;
use crate::core::spec::{Field, SpecRules};
use crate::core::types::PositionId;
use crate::limits::{MAX_INSTRUMENTS, MAX_POSITIONS, RELAY_INTERVALS, RELAY_SYMBOLS};
use crate::relay::candle::Interval;

/// Prefix of every environment override.
pub const ENV_PREFIX: &str = "TICKGUARD_";

/// Longest duration any `*_s` key accepts, in seconds (one day).
pub const MAX_SECS: f64 = 86_400.0;

/// The sections of the file, in documentation order (`[[positions]]` comes on top of these).
pub const SECTIONS: &[&str] =
    &["api", "feed", "dns", "tls", "cache", "broker", "store", "sim", "indicator", "notify", "relay"];

/// A configuration problem. The process exits with code 78 (`EX_CONFIG`) on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}:{line}:{column}: toml syntax error: {message}")]
    Parse {
        /// The file (or the origin label given to [`parse_str`]).
        path: String,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// What the TOML parser says.
        message: String,
    },
    /// A key (or section) the schema does not know.
    #[error("unknown key {key}: {fix}")]
    UnknownKey {
        /// The dotted key (`cache.stale_after`, `positions[0].stop`).
        key: String,
        /// The nearest known key, if one is close, and what to do.
        fix: String,
    },
    /// A value of the file that is of the wrong type or out of range, or that contradicts
    /// another key.
    #[error("{key} = {value}: {problem}; {fix}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// The value as written (or as computed, for counts).
        value: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A required key of a `[[positions]]` table is absent.
    #[error("{key} is missing: {fix}")]
    Missing {
        /// The dotted key (`positions[0].qty`).
        key: String,
        /// How to fix it.
        fix: String,
    },
    /// An environment override whose value does not fit its key.
    #[error("environment {var}={value:?} (key {key}): {problem}; {fix}")]
    Env {
        /// The variable.
        var: String,
        /// The key it overrides.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A `TICKGUARD_<SECTION>_...` variable of a known section that matches no key.
    #[error("unknown environment variable {var}: {fix}")]
    UnknownEnv {
        /// The variable.
        var: String,
        /// The nearest known variable, if one is close, and what to do.
        fix: String,
    },
    /// A secret or token file could not be used (its content is never shown).
    #[error("secret file {}: {problem}", path.display())]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// How a key's value is typed and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A URL whose scheme is one of these.
    Url(&'static [&'static str]),
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Count {
        /// Smallest accepted.
        min: u16,
        /// Largest accepted.
        max: u16,
    },
    /// Seconds, integer or decimal, at most [`MAX_SECS`]; held as a `Duration` (1 µs steps).
    Secs {
        /// Whether zero is accepted.
        allow_zero: bool,
    },
    /// A list of instrument symbols.
    Symbols,
    /// A file or directory path.
    Path,
    /// A path that may be absent.
    OptPath,
    /// An IP socket address (`ip:port`, `[v6]:port`).
    Addr,
    /// A list of DNS servers: `ip` (port 53) or `ip:port`, IPv4 or IPv6.
    Nameservers,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// An optional non-negative integer seed.
    Seed,
    /// An optional label: 1 to 31 bytes of printable ASCII (a GPIO chip label).
    Label,
    /// An optional integer in `min..=max`.
    OptCount {
        /// Smallest accepted.
        min: u16,
        /// Largest accepted.
        max: u16,
    },
    /// `true`, `false`, or absent.
    OptBool,
    /// A URL whose scheme is one of these, or absent.
    OptUrl(&'static [&'static str]),
    /// A Telegram chat id (`-1001234567890`, `@channel`), or absent.
    ChatId,
    /// A table of symbol = instrument key (`[feed.instrument_keys]`).
    KeyMap,
    /// A market-hours specification (`feed.market_hours`, see `feed::calendar`).
    MarketHours,
    /// A list of dates `YYYY-MM-DD`.
    Dates,
    /// A list of `Host` header values (`host`, `host:port`, `[v6]`, `[v6]:port`), or absent.
    Hosts,
    /// One of these words, or absent (a default computed from other keys).
    OptChoice(&'static [&'static str]),
    /// A non-empty list of candle intervals (`1m` ... `1d`, `relay::candle::Interval`).
    Intervals,
    /// An integer in `min..=max`, for capacities beyond `Count`'s range.
    Capacity {
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
}

impl Kind {
    /// The type as the documentation's key table writes it.
    pub fn type_name(self) -> String {
        match self {
            Kind::Url(schemes) => format!("url ({})", schemes.join(", ")),
            Kind::Bool => "bool".into(),
            Kind::Count { min, max } => format!("integer {min} to {max}"),
            Kind::Secs { allow_zero: true } => "number ≥ 0".into(),
            Kind::Secs { allow_zero: false } => "number > 0".into(),
            Kind::Symbols => "list of symbols".into(),
            Kind::Path => "path".into(),
            Kind::OptPath => "path, optional".into(),
            Kind::Addr => "socket address".into(),
            Kind::Nameservers => "list of addresses".into(),
            Kind::Choice(words) => words.join(" / "),
            Kind::Seed => "integer ≥ 0, optional".into(),
            Kind::Label => "string, optional".into(),
            Kind::OptUrl(schemes) => format!("url ({}), optional", schemes.join(", ")),
            Kind::ChatId => "chat id, optional".into(),
            Kind::KeyMap => "table of symbol = key".into(),
            Kind::MarketHours => "hours zone days".into(),
            Kind::Dates => "list of dates".into(),
            Kind::OptCount { min, max } => format!("integer {min} to {max}, optional"),
            Kind::OptBool => "bool, optional".into(),
            Kind::Hosts => "list of hosts, optional".into(),
            Kind::OptChoice(words) => format!("{}, optional", words.join(" / ")),
            Kind::Intervals => "list of intervals".into(),
            Kind::Capacity { min, max } => format!("integer {min} to {max}"),
        }
    }

    /// What a value of this kind is, for error messages ("expected ...").
    fn expects(self) -> String {
        match self {
            Kind::Url(_) => "a URL string".into(),
            Kind::Bool => "true or false".into(),
            Kind::Count { min, max } => format!("an integer from {min} to {max}"),
            Kind::Secs { .. } => "a number of seconds (integer or decimal)".into(),
            Kind::Symbols => "a list of symbol strings".into(),
            Kind::Path | Kind::OptPath => "a path string".into(),
            Kind::Addr => "an \"ip:port\" string".into(),
            Kind::Nameservers => "a list of address strings".into(),
            Kind::Choice(words) => format!("one of the strings {}", words.join(", ")),
            Kind::Seed => "a non-negative integer".into(),
            Kind::Label => "a string of printable ASCII".into(),
            Kind::OptUrl(_) => "a URL string".into(),
            Kind::ChatId => "a chat id (an integer, or a string like \"@channel\")".into(),
            Kind::KeyMap => "a table of SYMBOL = \"SEGMENT|KEY\" strings".into(),
            Kind::MarketHours => "a string like \"09:15-15:30 Asia/Kolkata Mon-Fri\" or \"always\"".into(),
            Kind::Dates => "a list of date strings like \"2026-01-26\"".into(),
            Kind::OptCount { min, max } => format!("an integer from {min} to {max}"),
            Kind::OptBool => "true or false".into(),
            Kind::Hosts => "a list of host strings (\"tickguard.lan\", \"192.168.1.20:8443\")".into(),
            Kind::OptChoice(words) => format!("one of the strings {}", words.join(", ")),
            Kind::Intervals => format!("a list of interval strings ({})", interval_names()),
            Kind::Capacity { min, max } => format!("an integer from {min} to {max}"),
        }
    }
}

/// One key of the schema.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Dotted name, `section.key`.
    pub name: &'static str,
    /// Type and checks.
    pub kind: Kind,
    /// The default, as the documentation writes it (`(none)` and `(empty)` for absent values;
    /// otherwise in the form an environment override takes).
    pub default: &'static str,
    /// Unit, or empty.
    pub unit: &'static str,
    /// What it does.
    pub meaning: &'static str,
    /// A TOML value that differs from the default, used in error messages' fixes.
    pub example: &'static str,
}

impl KeySpec {
    /// The section (`cache` of `cache.stale_after_s`).
    pub fn section(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(s, _)| s)
    }
    /// The key inside its section (`stale_after_s`).
    pub fn leaf(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(_, k)| k)
    }
    /// The environment variable overriding it (`TICKGUARD_CACHE_STALE_AFTER_S`).
    pub fn env_var(&self) -> String {
        env_var_name(self.name)
    }
    /// The example in the form an environment variable takes.
    fn env_example(&self) -> String {
        let e = self.example;
        let e = e.strip_prefix('[').and_then(|e| e.strip_suffix(']')).unwrap_or(e);
        e.replace('"', "").replace(", ", ",")
    }
}

/// The environment variable overriding the dotted `key`: `TICKGUARD_` then the key
/// uppercased with the dot replaced by `_`.
pub fn env_var_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "_").to_ascii_uppercase())
}

const fn key(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    unit: &'static str,
    meaning: &'static str,
    example: &'static str,
) -> KeySpec {
    KeySpec { name, kind, default, unit, meaning, example }
}

const SECS: Kind = Kind::Secs { allow_zero: false };
const SECS0: Kind = Kind::Secs { allow_zero: true };
const WS: Kind = Kind::Url(&["ws", "wss"]);
const HTTP: Kind = Kind::Url(&["http", "https"]);

/// The schema: every key of every section, in documentation order.
pub static KEYS: &[KeySpec] = &[
    key(
        "api.listen",
        Kind::Addr,
        "127.0.0.1:8000",
        "",
        "Address the HTTP API and status page listen on.",
        "\"0.0.0.0:8080\"",
    ),
    key(
        "api.token_file",
        Kind::OptPath,
        "(none)",
        "",
        "File holding the API bearer token.",
        "\"/etc/tickguard/api.token\"",
    ),
    key(
        "api.protect_reads",
        Kind::OptBool,
        "(not loopback)",
        "",
        "Require the token for position data (every read but the page, `/health`, `/ready` and `/metrics`); needs `api.token_file`. Default: on when `api.listen` is not a loopback address and `api.token_file` is set.",
        "true",
    ),
    key(
        "api.tls_cert",
        Kind::OptPath,
        "(none)",
        "",
        "PEM certificate chain: serve the API over HTTPS; needs `api.tls_key`.",
        "\"/etc/tickguard/api.crt\"",
    ),
    key(
        "api.tls_key",
        Kind::OptPath,
        "(none)",
        "",
        "PEM private key of `api.tls_cert`.",
        "\"/etc/tickguard/api.key\"",
    ),
    key(
        "api.allowed_hosts",
        Kind::Hosts,
        "(box's names)",
        "",
        "`Host` values the API answers (`host`, `host:port`, `[v6]` or `[v6]:port`); any other gets 421. Default: `localhost`, `127.0.0.1`, `[::1]`, every address of the box's interfaces and its host names, each with and without the port.",
        "[\"tickguard.lan\", \"192.168.1.20:8443\"]",
    ),
    key(
        "api.protect_metrics",
        Kind::OptBool,
        "(protect_reads as set)",
        "",
        "Require the token for `/metrics`. Default: the value `api.protect_reads` is set to in the file or environment (false when it is not set), so Prometheus scrapes keep working when reads become protected by default.",
        "true",
    ),
    key(
        "api.allow_plain_http",
        Kind::Bool,
        "false",
        "",
        "Accept serving plain HTTP on a non-loopback `api.listen` (the token and the login cross the LAN in clear; warned at every start). Without it and without `api.tls_cert`, `check-config` refuses such a listen address and `run` serves on 127.0.0.1 only, with an alarm.",
        "true",
    ),
    key(
        "api.hsts",
        Kind::Bool,
        "false",
        "",
        "Send `Strict-Transport-Security` over HTTPS. Off by default: with a self-signed certificate HSTS takes away the browser's click-through to the emergency close.",
        "true",
    ),
    key(
        "feed.venue",
        Kind::Choice(&["sim", "binance", "upstox"]),
        "sim",
        "",
        "Market-data source: the built-in random-walk simulator, Binance or Upstox.",
        "\"binance\"",
    ),
    key(
        "feed.ws_url",
        WS,
        "wss://stream.binance.com:9443/stream",
        "",
        "WebSocket endpoint of the live feed.",
        "\"wss://stream.binance.com:443/stream\"",
    ),
    key(
        "feed.rest_url",
        HTTP,
        "https://api.binance.com",
        "",
        "REST base URL of the price fallback (rung L2).",
        "\"https://api1.binance.com\"",
    ),
    key(
        "feed.instruments",
        Kind::Symbols,
        "(empty)",
        "",
        "Symbols to watch on top of the positions' own symbols.",
        "[\"BTCUSDT\", \"ETHUSDT\"]",
    ),
    key(
        "feed.silence_timeout_s",
        SECS,
        "10",
        "s",
        "A connected feed silent this long is treated as down.",
        "15",
    ),
    key("feed.reconnect_initial_s", SECS, "1", "s", "First delay before reconnecting the feed.", "2"),
    key(
        "feed.reconnect_max_s",
        SECS,
        "30",
        "s",
        "Longest delay between reconnects; at least `feed.reconnect_initial_s`.",
        "60",
    ),
    key("feed.rest_poll_s", SECS, "2", "s", "Period of REST price polling while the feed is down.", "5"),
    key(
        "feed.token_file",
        Kind::OptPath,
        "(none)",
        "",
        "File holding the feed's access token (Upstox).",
        "\"/etc/tickguard/feed.token\"",
    ),
    key(
        "feed.instrument_keys",
        Kind::KeyMap,
        "(empty)",
        "",
        "Upstox: the instrument key of each symbol used in `feed.instruments`, `[[positions]]` and the API (a symbol that already is a key maps to itself).",
        "{ BOSCHLTD = \"NSE_EQ|INE323A01026\" }",
    ),
    key(
        "feed.mode",
        Kind::Choice(&["ltpc", "full", "option_greeks"]),
        "ltpc",
        "",
        "Upstox subscription mode; the last price is read in every mode, `ltpc` is the lightest.",
        "\"full\"",
    ),
    key(
        "feed.max_subscriptions",
        Kind::OptCount { min: 1, max: 5000 },
        "(mode cap)",
        "",
        "Upstox: instruments one connection may subscribe; at most the venue's cap for `feed.mode` (ltpc 5000, option_greeks 3000, full 2000). More instruments than this is a start-up error.",
        "1500",
    ),
    key(
        "feed.market_hours",
        Kind::MarketHours,
        "09:15-15:30 Asia/Kolkata Mon-Fri",
        "",
        "When the market trades (Upstox): `HH:MM-HH:MM[,…] ZONE DAYS`, or `always` to turn the calendar off; the venue's market status overrides it while the feed is up.",
        "\"09:00-23:30 Asia/Kolkata Mon-Fri\"",
    ),
    key(
        "feed.holidays",
        Kind::Dates,
        "(empty)",
        "",
        "Exchange holidays (local dates) on which the calendar keeps the market closed.",
        "[\"2026-01-26\", \"2026-03-03\"]",
    ),
    key(
        "dns.use_system",
        Kind::Bool,
        "true",
        "",
        "Try the nameservers of `dns.resolv_conf` first; `dns.nameservers` are tried after them either way (only them when false).",
        "false",
    ),
    key(
        "dns.resolv_conf",
        Kind::Path,
        "/etc/resolv.conf",
        "",
        "The system resolver file read when `dns.use_system` is true.",
        "\"/run/systemd/resolve/resolv.conf\"",
    ),
    key(
        "dns.nameservers",
        Kind::Nameservers,
        "8.8.8.8, 1.1.1.1, 8.8.4.4, 1.0.0.1",
        "",
        "Fallback DNS servers, tried in order after the system resolver (or alone when `dns.use_system` is false): `ip` (port 53) or `ip:port`; IPv6 bare or as `[v6]:port`.",
        "[\"9.9.9.9\", \"[2620:fe::fe]:53\"]",
    ),
    key("dns.timeout_s", SECS, "5", "s", "Timeout of one DNS query.", "3"),
    key(
        "tls.extra_ca",
        Kind::OptPath,
        "(none)",
        "",
        "PEM file of extra CA certificates trusted on top of the built-in roots.",
        "\"/etc/tickguard/ca.pem\"",
    ),
    key(
        "cache.stale_after_s",
        SECS,
        "30",
        "s",
        "A price this old is stale: still usable, with a warning. Below `cache.expire_after_s`.",
        "20",
    ),
    key("cache.expire_after_s", SECS, "300", "s", "A price older than this is never acted on.", "120"),
    key(
        "cache.blind_grace_s",
        SECS0,
        "60",
        "s",
        "How long a position stays blind before its `blind_policy` acts.",
        "30",
    ),
    key(
        "broker.kind",
        Kind::Choice(&["paper", "binance", "upstox"]),
        "paper",
        "",
        "Where closing orders go: simulated fills, Binance or Upstox. A live kind must match `feed.venue`.",
        "\"binance\"",
    ),
    key(
        "broker.rest_url",
        HTTP,
        "https://api.binance.com",
        "",
        "REST base URL of the broker.",
        "\"https://api1.binance.com\"",
    ),
    key(
        "broker.order_url",
        HTTP,
        "https://api-hft.upstox.com",
        "",
        "Upstox: base URL of the v3 place-order API (order history and portfolio use `broker.rest_url`).",
        "\"https://api-sandbox.upstox.com\"",
    ),
    key(
        "broker.key_file",
        Kind::OptPath,
        "(none)",
        "",
        "File holding the broker API key (Upstox: the access token).",
        "\"/etc/tickguard/broker.key\"",
    ),
    key(
        "broker.secret_file",
        Kind::OptPath,
        "(none)",
        "",
        "File holding the broker API secret (Binance request signing).",
        "\"/etc/tickguard/broker.secret\"",
    ),
    key(
        "broker.token_file",
        Kind::OptPath,
        "(feed.token_file)",
        "",
        "Upstox: file holding the access token for orders; read again after a 401. Default: `feed.token_file`.",
        "\"/etc/tickguard/upstox.token\"",
    ),
    key(
        "broker.recv_window_ms",
        Kind::Count { min: 500, max: 5000 },
        "5000",
        "ms",
        "Binance: `recvWindow` of signed requests; an unknown close is proven absent only this long plus 2 s after its send.",
        "3000",
    ),
    key(
        "broker.max_close_attempts",
        Kind::Count { min: 1, max: 1000 },
        "5",
        "",
        "Failed attempts after which a close is reported `close_failed` (it keeps retrying slowly).",
        "8",
    ),
    key("broker.retry_initial_s", SECS, "1", "s", "First retry delay of a failed close.", "0.5"),
    key(
        "broker.retry_max_s",
        SECS,
        "30",
        "s",
        "Longest retry delay; at least `broker.retry_initial_s`.",
        "60",
    ),
    key(
        "broker.reconcile_every_s",
        SECS,
        "60",
        "s",
        "How often what the broker holds is compared with the book (positions the account holds exactly none of are closed externally).",
        "30",
    ),
    key(
        "broker.unknown_alarm_s",
        SECS,
        "60",
        "s",
        "A close attempt whose outcome stays unknown this long raises the close_failed alarm until an operator settles it (`POST /api/v1/positions/{id}/resolve` with the attempt).",
        "120",
    ),
    key(
        "broker.paper_fill_delay_s",
        SECS0,
        "0.2",
        "s",
        "Delay before the paper broker fills an order.",
        "0.5",
    ),
    key(
        "store.dir",
        Kind::Path,
        "./tickguard-state",
        "",
        "Directory of the journal and state files.",
        "\"/var/lib/tickguard\"",
    ),
    key(
        "store.fsync",
        Kind::Choice(&["always", "never"]),
        "always",
        "",
        "When journal records are fsynced: `always` (every record is on disk before it is acknowledged; concurrent writers share fsyncs) or `never` (tests, tmpfs; a power cut can lose acknowledged records).",
        "\"never\"",
    ),
    key(
        "store.max_journal_bytes",
        Kind::Seed,
        "1048576",
        "bytes",
        "Journal size past which it is compacted into a snapshot (at least 4096).",
        "4194304",
    ),
    key(
        "sim.seed",
        Kind::Seed,
        "(none)",
        "",
        "Seed of the simulator's random walk and of the engine's retry jitter; when absent the engine uses a fixed built-in seed.",
        "42",
    ),
    key("sim.tick_interval_s", SECS, "0.2", "s", "Period between two simulated ticks of an instrument.", "1"),
    key(
        "indicator.enabled",
        Kind::Bool,
        "false",
        "",
        "Drive the status LED and buzzer through the GPIO character device; when true a missing or busy chip is a start-up error.",
        "true",
    ),
    key(
        "indicator.board",
        Kind::Choice(&["auto", "rpi4", "rpi5", "qemu-virt", "custom"]),
        "auto",
        "",
        "Board profile naming the chip label and lines (see docs/board.md); `auto` reads the device tree; `custom` takes every line from the keys below.",
        "\"rpi5\"",
    ),
    key(
        "indicator.chip_label",
        Kind::Label,
        "(board)",
        "",
        "Label of the GPIO chip (`gpiodetect` shows it); overrides the board profile.",
        "\"pinctrl-rp1\"",
    ),
    key(
        "indicator.led_line",
        Kind::OptCount { min: 0, max: 1023 },
        "(board)",
        "",
        "Line offset of the status LED on that chip; overrides the board profile.",
        "17",
    ),
    key(
        "indicator.buzzer_line",
        Kind::OptCount { min: 0, max: 1023 },
        "(board)",
        "",
        "Line offset of the buzzer on that chip; overrides the board profile (`custom` without it: no buzzer).",
        "27",
    ),
    key(
        "indicator.active_low",
        Kind::OptBool,
        "(board)",
        "",
        "Whether the LED and buzzer are on when their lines are low; overrides the board profile.",
        "true",
    ),
    key(
        "notify.webhook_url",
        Kind::OptUrl(&["http", "https"]),
        "(none)",
        "",
        "POST a JSON event here on feed down/up, DNS fallback, blind, close done and close failed.",
        "\"https://hooks.example.com/tickguard\"",
    ),
    key(
        "notify.telegram_token_file",
        Kind::OptPath,
        "(none)",
        "",
        "File holding a Telegram bot token; with `notify.telegram_chat_id`, the same events go to that chat.",
        "\"/etc/tickguard/telegram.token\"",
    ),
    key(
        "notify.telegram_chat_id",
        Kind::ChatId,
        "(none)",
        "",
        "Telegram chat the bot writes to; needs `notify.telegram_token_file`.",
        "\"-1001234567890\"",
    ),
    key(
        "notify.telegram_api_url",
        HTTP,
        "https://api.telegram.org",
        "",
        "Base URL of the Telegram Bot API.",
        "\"https://tg-proxy.example.com\"",
    ),
    key(
        "relay.enabled",
        Kind::Bool,
        "false",
        "",
        "Serve the LAN relay: the venue's quotes and OHLCV candles to the bots of the LAN over WebSocket, from the relay's own upstream connection (see docs/relay.md).",
        "true",
    ),
    key(
        "relay.listen",
        Kind::Addr,
        "127.0.0.1:8765",
        "",
        "Address the relay's WebSocket server listens on (the OHLCV connector's `ws://HOST:8765`); must differ from `api.listen` and `relay.health_listen`.",
        "\"0.0.0.0:8765\"",
    ),
    key(
        "relay.health_listen",
        Kind::Addr,
        "127.0.0.1:8766",
        "",
        "Address of the relay's `/health`, `/ready` and `/metrics` (the connector's names).",
        "\"0.0.0.0:8766\"",
    ),
    key(
        "relay.health_enabled",
        Kind::Bool,
        "true",
        "",
        "Serve the relay's health server on `relay.health_listen`.",
        "false",
    ),
    key(
        "relay.exchange",
        Kind::OptChoice(&["binance", "upstox"]),
        "(feed.venue)",
        "",
        "The venue relayed. Default: `feed.venue` (required when the feed is the simulator). With `upstox`, `relay.token_file` is required.",
        "\"upstox\"",
    ),
    key(
        "relay.ws_url",
        Kind::OptUrl(&["ws", "wss"]),
        "(feed.ws_url or Binance's)",
        "",
        "WebSocket endpoint of the relay's upstream. Default: `feed.ws_url` when `relay.exchange` is the feed's venue, else `wss://stream.binance.com:9443/ws` (Upstox: not used, the authorize endpoint hands out the URL).",
        "\"wss://stream.binance.com:443/ws\"",
    ),
    key(
        "relay.rest_url",
        Kind::OptUrl(&["http", "https"]),
        "(feed.rest_url or the venue's)",
        "",
        "REST base URL of the relay's backfill (Binance klines, Upstox authorize and intraday candles). Default: `feed.rest_url` when `relay.exchange` is the feed's venue, else `https://api.binance.com` (Upstox: `https://api.upstox.com`).",
        "\"https://api1.binance.com\"",
    ),
    key(
        "relay.token_file",
        Kind::OptPath,
        "(none)",
        "",
        "Upstox: file holding the relay's own access token; required with `relay.exchange = \"upstox\"` and never `feed.token_file` (Upstox allows one market-data connection per app and user: the relay's would cut the guard's).",
        "\"/etc/tickguard/relay.token\"",
    ),
    key(
        "relay.intervals",
        Kind::Intervals,
        "1m",
        "",
        "Candle intervals the relay serves, each of `1m 3m 5m 15m 30m 1h 2h 4h 1d`, at most 4 (`limits::RELAY_INTERVALS`).",
        "[\"1m\", \"5m\"]",
    ),
    key(
        "relay.symbols",
        Kind::Symbols,
        "(empty)",
        "",
        "Symbols the relay subscribes and backfills from the start (Binance: upper-cased), at most 128 (`limits::RELAY_SYMBOLS`).",
        "[\"BTCUSDT\", \"ETHUSDT\"]",
    ),
    key(
        "relay.closed_queue_max",
        Kind::Capacity { min: 1, max: 100_000 },
        "1000",
        "",
        "Closed candles one client's outbox holds; a client that falls further behind is closed (1008) with its resume cursor (`CONNECTOR_CLOSED_QUEUE_MAXSIZE`).",
        "500",
    ),
    key(
        "relay.open_queue_max",
        Kind::Capacity { min: 1, max: 100_000 },
        "2000",
        "",
        "Quotes and open-candle updates one client's outbox holds (the newest replace older ones; `CONNECTOR_OPEN_QUEUE_MAXSIZE`).",
        "4000",
    ),
    key(
        "relay.breaker_recovery_s",
        SECS,
        "60",
        "s",
        "How long an upstream's open circuit breaker waits before a trial connection (`CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT`).",
        "30",
    ),
    key(
        "relay.close_delay_s",
        SECS,
        "2",
        "s",
        "A bar whose closing kline has not come this long after its end is closed from its trades (and corrected by REST); below the shortest of `relay.intervals`.",
        "5",
    ),
    key(
        "relay.stale_after_s",
        SECS,
        "30",
        "s",
        "A relayed symbol without a quote this long is not fresh (`/ready` fails).",
        "60",
    ),
];

/// The relay's Binance WebSocket endpoint when it does not share the feed's venue.
pub const RELAY_BINANCE_WS_URL: &str = "wss://stream.binance.com:9443/ws";
/// The relay's Binance REST base when it does not share the feed's venue.
pub const RELAY_BINANCE_REST_URL: &str = "https://api.binance.com";
/// The relay's Upstox REST base when it does not share the feed's venue.
pub const RELAY_UPSTOX_REST_URL: &str = "https://api.upstox.com";

/// The OHLCV connector's environment names and the relay keys they set (issue 15): the
/// connector's users keep their `.env`. Applied after the file and before the `TICKGUARD_*`
/// overrides, so `TICKGUARD_RELAY_*` wins for the same key. `CONNECTOR_WSS_PORT` and
/// `CONNECTOR_WSS_HEALTH_CHECK_PORT` set the port only (the host is kept).
pub const CONNECTOR_ENV: &[(&str, &str)] = &[
    ("CONNECTOR_WSS_PORT", "relay.listen"),
    ("CONNECTOR_WSS_HEALTH_CHECK_PORT", "relay.health_listen"),
    ("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "relay.health_enabled"),
    ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "relay.closed_queue_max"),
    ("CONNECTOR_OPEN_QUEUE_MAXSIZE", "relay.open_queue_max"),
    ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "relay.breaker_recovery_s"),
];

// The keys of a `[[positions]]` table are the keys of every position spec (the API's too):
// one table, in the one spec parser (`core::spec`).
pub use crate::core::spec::{SPEC_KEYS as POSITION_KEYS, SpecKey as PositionKey};

/// The market-data source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Venue {
    /// The built-in random-walk simulator (no network).
    #[default]
    Sim,
    /// Binance spot.
    Binance,
    /// Upstox.
    Upstox,
}

impl Venue {
    /// Parses `sim`, `binance` or `upstox`.
    pub fn parse(s: &str) -> Option<Venue> {
        match s {
            "sim" => Some(Venue::Sim),
            "binance" => Some(Venue::Binance),
            "upstox" => Some(Venue::Upstox),
            _ => None,
        }
    }
    /// `sim`, `binance` or `upstox`.
    pub fn as_str(self) -> &'static str {
        match self {
            Venue::Sim => "sim",
            Venue::Binance => "binance",
            Venue::Upstox => "upstox",
        }
    }
}

/// Where closing orders go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum BrokerKind {
    /// Simulated fills after `broker.paper_fill_delay_s`.
    #[default]
    Paper,
    /// Binance spot.
    Binance,
    /// Upstox.
    Upstox,
}

impl BrokerKind {
    /// Parses `paper`, `binance` or `upstox`.
    pub fn parse(s: &str) -> Option<BrokerKind> {
        match s {
            "paper" => Some(BrokerKind::Paper),
            "binance" => Some(BrokerKind::Binance),
            "upstox" => Some(BrokerKind::Upstox),
            _ => None,
        }
    }
    /// `paper`, `binance` or `upstox`.
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Paper => "paper",
            BrokerKind::Binance => "binance",
            BrokerKind::Upstox => "upstox",
        }
    }
}

/// `[api]`: the HTTP API and status page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// `api.listen`.
    pub listen: SocketAddr,
    /// `api.token_file`.
    pub token_file: Option<PathBuf>,
    /// `api.protect_reads` as set in the file or environment (`None`: not set; see
    /// [`ApiConfig::reads_protected`] for the value in force).
    pub protect_reads: Option<bool>,
    /// `api.tls_cert`.
    pub tls_cert: Option<PathBuf>,
    /// `api.tls_key`.
    pub tls_key: Option<PathBuf>,
    /// `api.allowed_hosts` (lower-cased); `None`: the server's default set.
    pub allowed_hosts: Option<Vec<String>>,
    /// `api.protect_metrics` as set (`None`: not set; see [`ApiConfig::metrics_protected`]).
    pub protect_metrics: Option<bool>,
    /// `api.allow_plain_http`.
    pub allow_plain_http: bool,
    /// `api.hsts`.
    pub hsts: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            token_file: None,
            protect_reads: None,
            tls_cert: None,
            tls_key: None,
            allowed_hosts: None,
            protect_metrics: None,
            allow_plain_http: false,
            hsts: false,
        }
    }
}

impl ApiConfig {
    /// Whether `api.listen` is a loopback address (127.0.0.0/8, `::1`, or either mapped into
    /// IPv6). `0.0.0.0` and `::` listen on every interface: not loopback.
    pub fn listen_is_loopback(&self) -> bool {
        self.listen.ip().to_canonical().is_loopback()
    }

    /// `api.protect_reads` in force: as set, else on when `api.listen` is not loopback and a
    /// token exists to protect reads with (without `api.token_file` the API is read-only and
    /// reads stay open, as before).
    pub fn reads_protected(&self) -> bool {
        self.protect_reads.unwrap_or(!self.listen_is_loopback() && self.token_file.is_some())
    }

    /// `api.protect_metrics` in force: as set, else the value `api.protect_reads` was set to
    /// (false when it was not set: the new default of reads leaves scrapes open).
    pub fn metrics_protected(&self) -> bool {
        self.protect_metrics.unwrap_or(self.protect_reads == Some(true))
    }
}

/// `[notify]`: where notifications go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyConfig {
    /// `notify.webhook_url`.
    pub webhook_url: Option<String>,
    /// `notify.telegram_token_file`.
    pub telegram_token_file: Option<PathBuf>,
    /// `notify.telegram_chat_id`.
    pub telegram_chat_id: Option<String>,
    /// `notify.telegram_api_url`.
    pub telegram_api_url: String,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhook_url: None,
            telegram_token_file: None,
            telegram_chat_id: None,
            telegram_api_url: "https://api.telegram.org".into(),
        }
    }
}

/// `[feed]`: market data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedConfig {
    /// `feed.venue`.
    pub venue: Venue,
    /// `feed.ws_url`.
    pub ws_url: String,
    /// `feed.rest_url`.
    pub rest_url: String,
    /// `feed.instruments`.
    pub instruments: Vec<String>,
    /// `feed.silence_timeout_s`.
    pub silence_timeout: Duration,
    /// `feed.reconnect_initial_s`.
    pub reconnect_initial: Duration,
    /// `feed.reconnect_max_s`.
    pub reconnect_max: Duration,
    /// `feed.rest_poll_s`.
    pub rest_poll: Duration,
    /// `feed.token_file`.
    pub token_file: Option<PathBuf>,
    /// `[feed.instrument_keys]`: symbol → Upstox instrument key.
    pub instrument_keys: std::collections::BTreeMap<String, String>,
    /// `feed.mode` (Upstox).
    pub mode: String,
    /// `feed.max_subscriptions`; `None`: the mode's cap.
    pub max_subscriptions: Option<u16>,
    /// `feed.market_hours`, as written (validated by `feed::calendar::Calendar::parse`).
    pub market_hours: String,
    /// `feed.holidays`.
    pub holidays: Vec<crate::feed::calendar::Date>,
}

impl FeedConfig {
    /// The Upstox instrument key of `symbol`: its `[feed.instrument_keys]` entry, or the symbol
    /// itself when it already is a key (`NSE_EQ|INE323A01026`).
    pub fn instrument_key<'a>(&'a self, symbol: &'a str) -> Option<&'a str> {
        self.instrument_keys
            .get(symbol)
            .map(String::as_str)
            .or_else(|| symbol.contains('|').then_some(symbol))
    }
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            venue: Venue::Sim,
            ws_url: "wss://stream.binance.com:9443/stream".into(),
            rest_url: "https://api.binance.com".into(),
            instruments: Vec::new(),
            silence_timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(30),
            rest_poll: Duration::from_secs(2),
            token_file: None,
            instrument_keys: std::collections::BTreeMap::new(),
            mode: "ltpc".into(),
            max_subscriptions: None,
            market_hours: "09:15-15:30 Asia/Kolkata Mon-Fri".into(),
            holidays: Vec::new(),
        }
    }
}

/// `[dns]`: name resolution for the network edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// `dns.use_system`.
    pub use_system: bool,
    /// `dns.resolv_conf`.
    pub resolv_conf: PathBuf,
    /// `dns.nameservers`.
    pub nameservers: Vec<SocketAddr>,
    /// `dns.timeout_s`.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    /// The resolver's own defaults (`net::dns::DnsConfig`).
    fn default() -> Self {
        let d = crate::net::dns::DnsConfig::default();
        DnsConfig {
            use_system: d.use_system,
            resolv_conf: d.resolv_conf,
            nameservers: d.nameservers,
            timeout: d.timeout,
        }
    }
}

/// `[tls]`: certificate trust for the network edge.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// `tls.extra_ca`.
    pub extra_ca: Option<PathBuf>,
}

/// `[cache]`: price age bands and blindness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// `cache.stale_after_s`.
    pub stale_after: Duration,
    /// `cache.expire_after_s`.
    pub expire_after: Duration,
    /// `cache.blind_grace_s`.
    pub blind_grace: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            stale_after: Duration::from_secs(30),
            expire_after: Duration::from_secs(300),
            blind_grace: Duration::from_secs(60),
        }
    }
}

/// `[broker]`: where and how closing orders are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `broker.kind`.
    pub kind: BrokerKind,
    /// `broker.rest_url`.
    pub rest_url: String,
    /// `broker.order_url`.
    pub order_url: String,
    /// `broker.key_file`.
    pub key_file: Option<PathBuf>,
    /// `broker.secret_file`.
    pub secret_file: Option<PathBuf>,
    /// `broker.token_file` (`None`: `feed.token_file`).
    pub token_file: Option<PathBuf>,
    /// `broker.recv_window_ms`.
    pub recv_window: Duration,
    /// `broker.max_close_attempts`.
    pub max_close_attempts: u16,
    /// `broker.retry_initial_s`.
    pub retry_initial: Duration,
    /// `broker.retry_max_s`.
    pub retry_max: Duration,
    /// `broker.paper_fill_delay_s`.
    pub paper_fill_delay: Duration,
    /// `broker.unknown_alarm_s`.
    pub unknown_alarm: Duration,
    /// `broker.reconcile_every_s`.
    pub reconcile_every: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Paper,
            rest_url: "https://api.binance.com".into(),
            order_url: "https://api-hft.upstox.com".into(),
            key_file: None,
            secret_file: None,
            token_file: None,
            recv_window: Duration::from_millis(5000),
            max_close_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            paper_fill_delay: Duration::from_millis(200),
            unknown_alarm: Duration::from_secs(60),
            reconcile_every: Duration::from_secs(60),
        }
    }
}

/// `[store]`: persistent state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// `store.dir`.
    pub dir: PathBuf,
    /// `store.fsync` (`always`).
    pub fsync_always: bool,
    /// `store.max_journal_bytes`.
    pub max_journal_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dir: PathBuf::from("./tickguard-state"),
            fsync_always: true,
            max_journal_bytes: crate::limits::MAX_JOURNAL_BYTES,
        }
    }
}

/// `[sim]`: the built-in simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// `sim.seed`.
    pub seed: Option<u64>,
    /// `sim.tick_interval_s`.
    pub tick_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig { seed: None, tick_interval: Duration::from_millis(200) }
    }
}

/// `[relay]`: the LAN relay (issue 15). Off by default; its settings struct
/// (`relay::RelaySettings`) is filled from this by `runtime::wiring::relay`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// `relay.enabled`.
    pub enabled: bool,
    /// `relay.listen`.
    pub listen: SocketAddr,
    /// `relay.health_listen`.
    pub health_listen: SocketAddr,
    /// `relay.health_enabled`.
    pub health_enabled: bool,
    /// `relay.exchange` as set (`None`: `feed.venue`; see [`Config::relay_exchange`]).
    pub exchange: Option<crate::relay::Exchange>,
    /// `relay.ws_url` as set (`None`: see [`Config::relay_ws_url`]).
    pub ws_url: Option<String>,
    /// `relay.rest_url` as set (`None`: see [`Config::relay_rest_url`]).
    pub rest_url: Option<String>,
    /// `relay.token_file`.
    pub token_file: Option<PathBuf>,
    /// `relay.intervals` (never empty, each once, in the order written).
    pub intervals: Vec<Interval>,
    /// `relay.symbols` (each once; upper-cased when the relay's venue is Binance).
    pub symbols: Vec<String>,
    /// `relay.closed_queue_max`.
    pub closed_queue_max: usize,
    /// `relay.open_queue_max`.
    pub open_queue_max: usize,
    /// `relay.breaker_recovery_s`.
    pub breaker_recovery: Duration,
    /// `relay.close_delay_s`.
    pub close_delay: Duration,
    /// `relay.stale_after_s`.
    pub stale_after: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8765)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 8766)),
            health_enabled: true,
            exchange: None,
            ws_url: None,
            rest_url: None,
            token_file: None,
            intervals: vec![Interval::M1],
            symbols: Vec::new(),
            closed_queue_max: 1000,
            open_queue_max: 2000,
            breaker_recovery: Duration::from_secs(60),
            close_delay: Duration::from_secs(2),
            stale_after: Duration::from_secs(30),
        }
    }
}

// `[indicator]`'s settings belong to the indicator edge; the configuration fills them.
pub use crate::indicator::{IndicatorBoard, IndicatorConfig};

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// `[api]`.
    pub api: ApiConfig,
    /// `[feed]`.
    pub feed: FeedConfig,
    /// `[dns]`.
    pub dns: DnsConfig,
    /// `[tls]`.
    pub tls: TlsConfig,
    /// `[cache]`.
    pub cache: CacheConfig,
    /// `[broker]`.
    pub broker: BrokerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[sim]`.
    pub sim: SimConfig,
    /// `[indicator]`.
    pub indicator: IndicatorConfig,
    /// `[notify]`.
    pub notify: NotifyConfig,
    /// `[relay]`.
    pub relay: RelayConfig,
    /// `[[positions]]`, in file order.
    pub positions: Vec<PositionSpec>,
    /// `[[positions]] product`, for the positions that set it (id, product).
    pub position_products: Vec<(PositionId, crate::broker::upstox::Product)>,
}

impl Config {
    /// The engine's settings: age bands, blind grace, close retries, whether a REST price
    /// source exists (Binance and Upstox: yes; the simulator: no) and the jitter seed
    /// (`sim.seed`, else the engine's fixed default).
    pub fn engine_config(&self) -> EngineConfig {
        let base = EngineConfig::default();
        EngineConfig {
            stale_after: self.cache.stale_after,
            expire_after: self.cache.expire_after,
            blind_grace: self.cache.blind_grace,
            max_close_attempts: self.broker.max_close_attempts,
            retry_initial: self.broker.retry_initial,
            retry_max: self.broker.retry_max,
            rest_enabled: self.feed.venue != Venue::Sim,
            seed: self.sim.seed.unwrap_or(base.seed),
            unknown_alarm: self.broker.unknown_alarm,
            max_watched: self.max_watched(),
            ..base
        }
    }

    /// Most instruments the watch set may hold: `MAX_INSTRUMENTS`, and for Upstox the
    /// subscription cap (`feed.max_subscriptions`, else the mode's). A registration beyond it
    /// is refused (507) rather than accepted unwatched.
    pub fn max_watched(&self) -> usize {
        let mut cap = crate::limits::MAX_INSTRUMENTS;
        if self.feed.venue == Venue::Upstox {
            let mode = crate::feed::upstox::Mode::parse(&self.feed.mode).unwrap_or_default();
            cap = cap.min(self.feed.max_subscriptions.map_or(mode.cap(), usize::from));
        } else if let Some(n) = self.feed.max_subscriptions {
            cap = cap.min(usize::from(n));
        }
        cap
    }

    /// `feed.instruments` followed by the symbols of the positions, in order, each once.
    pub fn watched_symbols(&self) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        let mut out: Vec<String> = Vec::new();
        let all = self
            .feed
            .instruments
            .iter()
            .map(String::as_str)
            .chain(self.positions.iter().map(|p| p.symbol.as_str()));
        for s in all {
            if seen.insert(s) {
                out.push(s.to_string());
            }
        }
        out
    }

    /// The venue the relay serves: `relay.exchange`, else `feed.venue` (`None` when that is
    /// the simulator: the relay then needs `relay.exchange`).
    pub fn relay_exchange(&self) -> Option<crate::relay::Exchange> {
        use crate::relay::Exchange;
        self.relay.exchange.or(match self.feed.venue {
            Venue::Sim => None,
            Venue::Binance => Some(Exchange::Binance),
            Venue::Upstox => Some(Exchange::Upstox),
        })
    }

    /// Whether the relay's venue is the feed's (its URLs then default to the feed's).
    fn relay_shares_feed_venue(&self) -> bool {
        use crate::relay::Exchange;
        matches!(
            (self.relay_exchange(), self.feed.venue),
            (Some(Exchange::Binance), Venue::Binance) | (Some(Exchange::Upstox), Venue::Upstox)
        )
    }

    /// `relay.ws_url` in force: as set, else `feed.ws_url` when the relay's venue is the
    /// feed's, else [`RELAY_BINANCE_WS_URL`] (Upstox does not use it: its authorize endpoint
    /// hands out the URL).
    pub fn relay_ws_url(&self) -> &str {
        match &self.relay.ws_url {
            Some(u) => u,
            None if self.relay_shares_feed_venue() => &self.feed.ws_url,
            None => RELAY_BINANCE_WS_URL,
        }
    }

    /// `relay.rest_url` in force: as set, else `feed.rest_url` when the relay's venue is the
    /// feed's, else the venue's ([`RELAY_BINANCE_REST_URL`], [`RELAY_UPSTOX_REST_URL`]).
    pub fn relay_rest_url(&self) -> &str {
        match &self.relay.rest_url {
            Some(u) => u,
            None if self.relay_shares_feed_venue() => &self.feed.rest_url,
            None if self.relay_exchange() == Some(crate::relay::Exchange::Upstox) => RELAY_UPSTOX_REST_URL,
            None => RELAY_BINANCE_REST_URL,
        }
    }

    /// One line for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        format!(
            "feed {} watching {} instrument(s), {} position(s), broker {}, api {}, store {}",
            self.feed.venue.as_str(),
            self.watched_symbols().len(),
            self.positions.len(),
            self.broker.kind.as_str(),
            self.api.listen,
            self.store.dir.display()
        )
    }
}

/// Loads `path` (or nothing: every key has a default) and applies the `TICKGUARD_*`
/// overrides found in `env` (pass `std::env::vars()`).
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    match path {
        None => parse_str("", "(no config file)", env),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|source| ConfigError::Read { path: p.to_path_buf(), source })?;
            parse_str(&text, &p.display().to_string(), env)
        }
    }
}

/// Parses `text` (named `origin` in syntax errors), applies the overrides of `env`, and
/// validates the result.
pub fn parse_str(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| syntax_error(text, origin, &e))?;
    let mut cfg = Config::default();
    apply_file(&mut cfg, doc.get_ref())?;
    let env: Vec<(String, String)> = env.into_iter().collect();
    apply_connector_env(&mut cfg, &env)?;
    apply_env(&mut cfg, env.iter().cloned())?;
    let credentials = env.iter().find(|(k, _)| k == CREDENTIALS_DIRECTORY).map(|(_, v)| v.as_str());
    resolve_credentials(&mut cfg, credentials);
    normalise_symbols(&mut cfg);
    check(&cfg)?;
    Ok(cfg)
}

/// The variable systemd sets for a unit with `LoadCredential=` (or `SetCredential=`): the
/// directory holding the credentials it passes.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The keys whose files hold secrets (checked for their mode at start-up, see
/// [`secret_problems`]); with `api.tls_cert` and `tls.extra_ca` these are the paths a
/// credential of systemd can stand for.
pub const SECRET_KEYS: &[&str] = &[
    "api.token_file",
    "api.tls_key",
    "feed.token_file",
    "broker.key_file",
    "broker.secret_file",
    "broker.token_file",
    "notify.telegram_token_file",
];

/// `LoadCredential=`: when `$CREDENTIALS_DIRECTORY` is set (systemd passes credentials to the
/// unit), a *relative* path of a secret key (or of `api.tls_cert`, `tls.extra_ca`) names a
/// credential: `token_file = "api.token"` is `$CREDENTIALS_DIRECTORY/api.token`. Absolute
/// paths are kept; without the variable relative paths keep meaning the working directory.
fn resolve_credentials(cfg: &mut Config, dir: Option<&str>) {
    let Some(dir) = dir.filter(|d| !d.is_empty()).map(Path::new) else {
        return;
    };
    let fields: [&mut Option<PathBuf>; 10] = [
        &mut cfg.api.token_file,
        &mut cfg.api.tls_key,
        &mut cfg.api.tls_cert,
        &mut cfg.feed.token_file,
        &mut cfg.broker.key_file,
        &mut cfg.broker.secret_file,
        &mut cfg.broker.token_file,
        &mut cfg.notify.telegram_token_file,
        &mut cfg.tls.extra_ca,
        &mut cfg.relay.token_file,
    ];
    for f in fields {
        if let Some(p) = f.as_mut().filter(|p| p.is_relative()) {
            *p = dir.join(&*p);
        }
    }
}

/// Binance's symbols are case-free: `btcusdt` is `BTCUSDT`, the name its frames carry, so
/// configured symbols are upper-cased (as registrations over the API are). Upstox instrument
/// keys and symbols are kept as written.
fn normalise_symbols(cfg: &mut Config) {
    // The relay's own symbols follow the relay's venue; each is kept once.
    if cfg.relay_exchange() == Some(crate::relay::Exchange::Binance) {
        for s in &mut cfg.relay.symbols {
            s.make_ascii_uppercase();
        }
    }
    let mut seen = std::collections::HashSet::new();
    cfg.relay.symbols.retain(|s| seen.insert(s.clone()));
    if cfg.feed.venue != Venue::Binance {
        return;
    }
    for s in &mut cfg.feed.instruments {
        s.make_ascii_uppercase();
    }
    for p in &mut cfg.positions {
        let upper = p.symbol.to_ascii_uppercase();
        if let Ok(sym) = crate::core::types::Symbol::try_from(upper.as_str()) {
            p.symbol = sym;
        }
    }
}

/// Reads a secret or token file, trimmed of surrounding whitespace. Errors name the path,
/// never the content.
pub fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let secret = |problem: String| ConfigError::Secret { path: path.to_path_buf(), problem };
    let text = std::fs::read_to_string(path).map_err(|e| secret(format!("cannot read it: {e}")))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(secret("is empty; write the secret into it".into()));
    }
    Ok(trimmed.to_string())
}

// ---------------------------------------------------------------------------------------
// Parsing

fn syntax_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Parse { path: origin.to_string(), line, column, message: e.message().replace('\n', " ") }
}

/// A problem with one value, before the key (and its origin) is attached.
struct Bad {
    /// Suffix of the key (`[3]` for the fourth item of a list), or empty.
    at: String,
    /// The offending item of a list, as written, when `at` is set.
    item: Option<String>,
    problem: String,
}

fn bad(problem: impl Into<String>) -> Bad {
    Bad { at: String::new(), item: None, problem: problem.into() }
}

fn bad_item(i: usize, item: String, problem: String) -> Bad {
    Bad { at: format!("[{i}]"), item: Some(item), problem }
}

/// A value as the configuration holds it, before it is stored in its field.
enum Val {
    Bool(bool),
    Count(u16),
    Secs(Duration),
    Text(String),
    Symbols(Vec<String>),
    Path(PathBuf),
    OptPath(Option<PathBuf>),
    Addr(SocketAddr),
    Addrs(Vec<SocketAddr>),
    Seed(Option<u64>),
    OptText(Option<String>),
    OptCount(Option<u16>),
    OptBool(Option<bool>),
    KeyMap(std::collections::BTreeMap<String, String>),
    Dates(Vec<crate::feed::calendar::Date>),
    Hosts(Option<Vec<String>>),
    Intervals(Vec<Interval>),
    Size(u32),
}

fn spec_of(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|s| s.name == name)
}

/// Entries of a table in the order they appear in the file (the parser sorts them by name).
fn in_file_order<'a, 'i>(t: &'a DeTable<'i>) -> Vec<(&'a str, &'a Spanned<DeValue<'i>>)> {
    let mut v: Vec<(usize, &'a str, &'a Spanned<DeValue<'i>>)> =
        t.iter().map(|(k, v)| (k.span().start, k.get_ref().as_ref(), v)).collect();
    v.sort_by_key(|e| e.0);
    v.into_iter().map(|(_, k, v)| (k, v)).collect()
}

fn apply_file(cfg: &mut Config, root: &DeTable<'_>) -> Result<(), ConfigError> {
    for (section, value) in in_file_order(root) {
        if section == "positions" {
            cfg.positions = parse_positions(value.get_ref())?;
            cfg.position_products = parse_products(value.get_ref(), &cfg.positions)?;
            continue;
        }
        if !SECTIONS.contains(&section) {
            return Err(unknown_section(section));
        }
        let DeValue::Table(table) = value.get_ref() else {
            return Err(ConfigError::Invalid {
                key: section.to_string(),
                value: render(value.get_ref()),
                problem: "must be a table".into(),
                fix: format!("write [{section}] on a line of its own and its keys below it"),
            });
        };
        for (leaf, v) in in_file_order(table) {
            let name = format!("{section}.{leaf}");
            let Some(spec) = spec_of(&name) else {
                return Err(unknown_key(&name));
            };
            let val = from_toml(spec, v.get_ref()).map_err(|b| ConfigError::Invalid {
                key: format!("{name}{}", b.at),
                value: b.item.unwrap_or_else(|| render(v.get_ref())),
                problem: b.problem,
                fix: format!("write it like {} = {}", spec.leaf(), spec.example),
            })?;
            assign(cfg, spec, val)?;
        }
    }
    Ok(())
}

fn apply_env(cfg: &mut Config, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if let Some(spec) = KEYS.iter().find(|s| s.env_var() == var) {
            let val = from_text(spec, &value).map_err(|b| ConfigError::Env {
                var: var.clone(),
                key: spec.name,
                value: shorten(&value),
                problem: match b.item {
                    None => b.problem,
                    Some(item) => format!("item {} ({item}): {}", b.at.trim_matches(['[', ']']), b.problem),
                },
                fix: format!("set it like {}={}", var, spec.env_example()),
            })?;
            assign(cfg, spec, val)?;
            continue;
        }
        let section = SECTIONS.iter().chain(&["positions"]).find(|s| {
            let up = s.to_ascii_uppercase();
            rest == up || rest.strip_prefix(&up).is_some_and(|r| r.starts_with('_'))
        });
        match section {
            None => {} // TICKGUARD_LOG and the like: not configuration keys.
            Some(&"positions") => {
                return Err(ConfigError::UnknownEnv {
                    var,
                    fix: "positions cannot be set from the environment; write [[positions]] tables in the config file".into(),
                });
            }
            Some(section) => {
                let names: Vec<String> = KEYS.iter().map(KeySpec::env_var).collect();
                let near = nearest(&var, names.iter().map(String::as_str));
                let known: Vec<String> =
                    KEYS.iter().filter(|s| s.section() == *section).map(KeySpec::env_var).collect();
                let fix = match near {
                    Some(n) => format!("did you mean {n}? otherwise unset it (known: {})", known.join(", ")),
                    None => format!("unset it or fix its spelling (known: {})", known.join(", ")),
                };
                return Err(ConfigError::UnknownEnv { var, fix });
            }
        }
    }
    Ok(())
}

/// The OHLCV connector's `CONNECTOR_*` variables ([`CONNECTOR_ENV`]), applied before the
/// `TICKGUARD_*` overrides (which therefore win). A bad value is an error naming the variable
/// and the key it maps to.
fn apply_connector_env(cfg: &mut Config, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (var, value) in env {
        let Some(&(var_name, key_name)) = CONNECTOR_ENV.iter().find(|(v, _)| v == var) else {
            continue;
        };
        let Some(spec) = spec_of(key_name) else { continue };
        let err = |problem: String, example: &str| ConfigError::Env {
            var: var_name.to_string(),
            key: spec.name,
            value: shorten(value),
            problem,
            fix: format!("set it like {var_name}={example}, or unset it"),
        };
        let text = value.trim();
        match key_name {
            "relay.listen" | "relay.health_listen" => {
                let port = text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    let example = if key_name == "relay.listen" { "8765" } else { "8766" };
                    err("expected a port from 1 to 65535".into(), example)
                })?;
                let addr = if key_name == "relay.listen" {
                    &mut cfg.relay.listen
                } else {
                    &mut cfg.relay.health_listen
                };
                addr.set_port(port);
            }
            _ => {
                // The connector's booleans may be spelt the Python way (`True`, `False`).
                let text = if spec.kind == Kind::Bool { text.to_ascii_lowercase() } else { text.to_string() };
                let val = from_text(spec, &text).map_err(|b| err(b.problem, &spec.env_example()))?;
                assign(cfg, spec, val)?;
            }
        }
    }
    Ok(())
}

fn int_of(i: &DeInteger<'_>) -> Result<i64, Bad> {
    i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| bad("integer out of range"))
}

fn from_toml(spec: &KeySpec, v: &DeValue<'_>) -> Result<Val, Bad> {
    match (spec.kind, v) {
        (Kind::Bool, DeValue::Boolean(b)) => Ok(Val::Bool(*b)),
        (Kind::Count { min, max }, DeValue::Integer(i)) => count(int_of(i)?, min, max),
        (Kind::Secs { allow_zero }, DeValue::Integer(i)) => {
            // Exact in f64 for anything below MAX_SECS; larger values fail the range check.
            secs(int_of(i)? as f64, allow_zero)
        }
        (Kind::Secs { allow_zero }, DeValue::Float(f)) => {
            let x: f64 = f.as_str().parse().map_err(|_| bad("not a number"))?;
            secs(x, allow_zero)
        }
        (Kind::Seed, DeValue::Integer(i)) => {
            let n = int_of(i)?;
            u64::try_from(n).map(|n| Val::Seed(Some(n))).map_err(|_| bad("must not be negative"))
        }
        (Kind::Symbols, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let shown = render(item.get_ref());
                let DeValue::String(s) = item.get_ref() else {
                    let problem = format!("expected a symbol string, found {}", type_word(item.get_ref()));
                    return Err(bad_item(i, shown, problem));
                };
                out.push(check_symbol(s).map_err(|b| bad_item(i, shown, b.problem))?);
            }
            Ok(Val::Symbols(out))
        }
        (Kind::Nameservers, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let shown = render(item.get_ref());
                let DeValue::String(s) = item.get_ref() else {
                    let problem = format!("expected an address string, found {}", type_word(item.get_ref()));
                    return Err(bad_item(i, shown, problem));
                };
                out.push(nameserver(s).map_err(|b| bad_item(i, shown, b.problem))?);
            }
            Ok(Val::Addrs(out))
        }
        (Kind::OptCount { min, max }, DeValue::Integer(i)) => match count(int_of(i)?, min, max)? {
            Val::Count(n) => Ok(Val::OptCount(Some(n))),
            _ => Err(bad(format!("must be from {min} to {max}"))),
        },
        (Kind::OptBool, DeValue::Boolean(b)) => Ok(Val::OptBool(Some(*b))),
        (Kind::Label, DeValue::String(s)) if s.is_empty() => {
            Err(bad("must not be empty (remove the key to use the board's)"))
        }
        (
            Kind::Url(_) | Kind::Choice(_) | Kind::Path | Kind::OptPath | Kind::Addr | Kind::Label,
            DeValue::String(s),
        ) => {
            if s.is_empty() {
                let absent = if spec.kind == Kind::OptPath { "remove the key for none, or " } else { "" };
                return Err(bad(format!("must not be empty ({absent}give a value)")));
            }
            from_text(spec, s)
        }
        (Kind::OptUrl(_) | Kind::ChatId, DeValue::String(s)) if s.is_empty() => {
            Err(bad("must not be empty (remove the key for none, or give a value)"))
        }
        (Kind::OptUrl(_) | Kind::ChatId, DeValue::String(s)) => from_text(spec, s),
        (Kind::ChatId, DeValue::Integer(i)) => from_text(spec, &int_of(i)?.to_string()),
        (Kind::KeyMap, DeValue::Table(t)) => {
            let mut out = std::collections::BTreeMap::new();
            for (sym, v) in in_file_order(t) {
                let DeValue::String(k) = v.get_ref() else {
                    return Err(Bad {
                        at: format!(".{sym}"),
                        item: Some(render(v.get_ref())),
                        problem: format!(
                            "expected an instrument key string, found {}",
                            type_word(v.get_ref())
                        ),
                    });
                };
                let (sym, k) = instrument_key_pair(sym, k).map_err(|b| Bad { at: format!(".{sym}"), ..b })?;
                out.insert(sym, k);
            }
            Ok(Val::KeyMap(out))
        }
        (Kind::MarketHours, DeValue::String(s)) => from_text(spec, s),
        (Kind::Capacity { min, max }, DeValue::Integer(i)) => capacity(int_of(i)?, min, max),
        (Kind::OptChoice(_), DeValue::String(s)) if s.is_empty() => {
            Err(bad("must not be empty (remove the key for the default, or give a value)"))
        }
        (Kind::OptChoice(_), DeValue::String(s)) => from_text(spec, s),
        (Kind::Intervals, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let shown = render(item.get_ref());
                let DeValue::String(s) = item.get_ref() else {
                    let problem = format!("expected an interval string, found {}", type_word(item.get_ref()));
                    return Err(bad_item(i, shown, problem));
                };
                push_interval(&mut out, s).map_err(|b| bad_item(i, shown, b.problem))?;
            }
            non_empty_intervals(out)
        }
        (Kind::Hosts, DeValue::Array(items)) => {
            if items.is_empty() {
                return Err(bad(
                    "an empty list would refuse every request (421); remove the key for the default set",
                ));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let shown = render(item.get_ref());
                let DeValue::String(s) = item.get_ref() else {
                    let problem = format!("expected a host string, found {}", type_word(item.get_ref()));
                    return Err(bad_item(i, shown, problem));
                };
                out.push(allowed_host(s).map_err(|b| bad_item(i, shown, b.problem))?);
            }
            Ok(Val::Hosts(Some(out)))
        }
        (Kind::Dates, DeValue::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let shown = render(item.get_ref());
                let text = match item.get_ref() {
                    DeValue::String(s) => s.to_string(),
                    DeValue::Datetime(d) => d.to_string(),
                    other => {
                        let problem =
                            format!("expected a date like \"2026-01-26\", found {}", type_word(other));
                        return Err(bad_item(i, shown, problem));
                    }
                };
                out.push(crate::feed::calendar::Date::parse(&text).map_err(|e| bad_item(i, shown, e))?);
            }
            Ok(Val::Dates(out))
        }
        (kind, v) => Err(bad(format!("expected {}, found {}", kind.expects(), type_word(v)))),
    }
}

/// Types `text` (an environment value, or a TOML string) by the key's kind.
fn from_text(spec: &KeySpec, text: &str) -> Result<Val, Bad> {
    match spec.kind {
        Kind::Url(schemes) => url(text, schemes).map(Val::Text),
        Kind::Bool => match text.trim() {
            "true" | "1" => Ok(Val::Bool(true)),
            "false" | "0" => Ok(Val::Bool(false)),
            _ => Err(bad("expected true or false")),
        },
        Kind::Count { min, max } => {
            let n: i64 = text.trim().parse().map_err(|_| bad(format!("expected {}", spec.kind.expects())))?;
            count(n, min, max)
        }
        Kind::Secs { allow_zero } => {
            let x: f64 = text.trim().parse().map_err(|_| bad("expected a number of seconds"))?;
            secs(x, allow_zero)
        }
        Kind::Symbols => {
            let mut out = Vec::new();
            for (i, item) in list_items(text).enumerate() {
                out.push(check_symbol(item).map_err(|b| bad_item(i, format!("{item:?}"), b.problem))?);
            }
            Ok(Val::Symbols(out))
        }
        Kind::Nameservers => {
            let mut out = Vec::new();
            for (i, item) in list_items(text).enumerate() {
                out.push(nameserver(item).map_err(|b| bad_item(i, format!("{item:?}"), b.problem))?);
            }
            Ok(Val::Addrs(out))
        }
        Kind::Path => {
            if text.is_empty() {
                Err(bad("must not be empty"))
            } else {
                Ok(Val::Path(PathBuf::from(text)))
            }
        }
        Kind::OptPath => Ok(Val::OptPath((!text.is_empty()).then(|| PathBuf::from(text)))),
        Kind::Addr => text.trim().parse::<SocketAddr>().map(Val::Addr).map_err(|_| {
            bad("not an ip:port address (write 127.0.0.1:8000 or [::1]:8000; host names are not accepted)")
        }),
        Kind::Choice(words) => {
            if words.contains(&text) {
                Ok(Val::Text(text.to_string()))
            } else {
                Err(bad(format!("must be one of {}", words.join(", "))))
            }
        }
        Kind::Seed => match text.trim() {
            "" | "none" => Ok(Val::Seed(None)),
            t => t
                .parse::<u64>()
                .map(|n| Val::Seed(Some(n)))
                .map_err(|_| bad("expected a non-negative integer")),
        },
        Kind::OptUrl(schemes) => match text.trim() {
            "" => Ok(Val::OptText(None)),
            t => url(t, schemes).map(|u| Val::OptText(Some(u))),
        },
        Kind::ChatId => match text.trim() {
            "" => Ok(Val::OptText(None)),
            t => {
                let digits = t.strip_prefix('-').unwrap_or(t);
                let numeric =
                    !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit());
                let name = t.strip_prefix('@').is_some_and(|n| {
                    (5..=32).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
                if numeric || name {
                    Ok(Val::OptText(Some(t.to_string())))
                } else {
                    Err(bad("not a Telegram chat id: an integer (-1001234567890) or @channelname"))
                }
            }
        },
        Kind::KeyMap => {
            let body = text.trim().trim_start_matches('{').trim_end_matches('}');
            let mut out = std::collections::BTreeMap::new();
            for (i, item) in list_items(body).enumerate() {
                let Some((sym, k)) = item.split_once('=') else {
                    return Err(bad_item(i, format!("{item:?}"), "expected SYMBOL=SEGMENT|KEY".into()));
                };
                let (sym, k) = instrument_key_pair(sym.trim(), k.trim().trim_matches('"'))
                    .map_err(|b| bad_item(i, format!("{item:?}"), b.problem))?;
                out.insert(sym, k);
            }
            Ok(Val::KeyMap(out))
        }
        Kind::MarketHours => crate::feed::calendar::Calendar::parse(text, &[])
            .map(|_| Val::Text(text.trim().to_string()))
            .map_err(bad),
        Kind::Dates => {
            let mut out = Vec::new();
            for (i, item) in list_items(text).enumerate() {
                out.push(
                    crate::feed::calendar::Date::parse(item)
                        .map_err(|e| bad_item(i, format!("{item:?}"), e))?,
                );
            }
            Ok(Val::Dates(out))
        }
        Kind::Label => {
            if text.is_empty() {
                Ok(Val::OptText(None))
            } else if text.len() > 31 || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                Err(bad("must be 1 to 31 bytes of printable ASCII (a GPIO chip label)"))
            } else {
                Ok(Val::OptText(Some(text.to_string())))
            }
        }
        Kind::OptCount { min, max } => match text.trim() {
            "" => Ok(Val::OptCount(None)),
            t => {
                let n: i64 = t.parse().map_err(|_| bad(format!("expected {}", spec.kind.expects())))?;
                match count(n, min, max)? {
                    Val::Count(n) => Ok(Val::OptCount(Some(n))),
                    _ => Err(bad(format!("must be from {min} to {max}"))),
                }
            }
        },
        Kind::OptBool => match text.trim() {
            "" => Ok(Val::OptBool(None)),
            "true" | "1" => Ok(Val::OptBool(Some(true))),
            "false" | "0" => Ok(Val::OptBool(Some(false))),
            _ => Err(bad("expected true or false")),
        },
        Kind::Hosts => {
            let mut out = Vec::new();
            for (i, item) in list_items(text).enumerate() {
                out.push(allowed_host(item).map_err(|b| bad_item(i, format!("{item:?}"), b.problem))?);
            }
            Ok(Val::Hosts((!out.is_empty()).then_some(out)))
        }
        Kind::OptChoice(words) => match text.trim() {
            "" => Ok(Val::OptText(None)),
            t if words.contains(&t) => Ok(Val::OptText(Some(t.to_string()))),
            _ => Err(bad(format!("must be one of {} (or empty for the default)", words.join(", ")))),
        },
        Kind::Intervals => {
            let mut out = Vec::new();
            for (i, item) in list_items(text).enumerate() {
                push_interval(&mut out, item).map_err(|b| bad_item(i, format!("{item:?}"), b.problem))?;
            }
            non_empty_intervals(out)
        }
        Kind::Capacity { min, max } => {
            let n: i64 = text.trim().parse().map_err(|_| bad(format!("expected {}", spec.kind.expects())))?;
            capacity(n, min, max)
        }
    }
}

/// The names of every relay interval, for messages (`1m, 3m, ..., 1d`).
fn interval_names() -> String {
    Interval::ALL.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
}

/// Adds one interval of `relay.intervals`, refusing unknown names and repeats.
fn push_interval(out: &mut Vec<Interval>, name: &str) -> Result<(), Bad> {
    let Some(i) = Interval::parse(name.trim()) else {
        return Err(bad(format!("{name:?} is not an interval: use one of {}", interval_names())));
    };
    if out.contains(&i) {
        return Err(bad(format!("{name:?} is listed twice: list each interval once")));
    }
    out.push(i);
    Ok(())
}

fn non_empty_intervals(out: Vec<Interval>) -> Result<Val, Bad> {
    if out.is_empty() {
        return Err(bad("must list at least one interval (the default is [\"1m\"])"));
    }
    Ok(Val::Intervals(out))
}

fn capacity(n: i64, min: u32, max: u32) -> Result<Val, Bad> {
    if n < i64::from(min) || n > i64::from(max) {
        return Err(bad(format!("must be from {min} to {max}")));
    }
    u32::try_from(n).map(Val::Size).map_err(|_| bad(format!("must be from {min} to {max}")))
}

/// One entry of `api.allowed_hosts`, as a `Host` header carries it: a DNS name or IPv4
/// address, optionally with `:port`, or a bracketed IPv6 address, optionally with `:port`.
/// Returned lower-cased (host names match case-insensitively).
fn allowed_host(s: &str) -> Result<String, Bad> {
    let s = s.trim();
    let fix = "write host, host:port, [v6] or [v6]:port (\"tickguard.lan\", \"192.168.1.20:8443\", \"[fd00::20]:8443\")";
    if s.contains('/') {
        return Err(bad(format!("{s:?} is not a host name: give the Host value, not a URL; {fix}")));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err(bad(format!("unclosed [ in an IPv6 host; {fix}")));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(format!("{v6:?} is not an IPv6 address; {fix}")));
        }
        match after {
            "" => (s, None),
            p => match p.strip_prefix(':') {
                Some(port) => (&s[..s.len() - p.len()], Some(port)),
                None => return Err(bad(format!("unexpected {p:?} after the IPv6 address; {fix}"))),
            },
        }
    } else {
        if s.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(bad(format!(
                "an IPv6 address must be in brackets, as a Host header writes it: [{s}]"
            )));
        }
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if let Some(p) = port {
        if !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(bad(format!("port {p:?} is not a port from 1 to 65535; {fix}")));
        }
    }
    if !host.starts_with('[') {
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !name_ok {
            return Err(bad(format!("{host:?} is not a host name or IPv4 address; {fix}")));
        }
    }
    Ok(s.to_ascii_lowercase())
}

fn list_items(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn count(n: i64, min: u16, max: u16) -> Result<Val, Bad> {
    if n < i64::from(min) || n > i64::from(max) {
        return Err(bad(format!("must be from {min} to {max}")));
    }
    u16::try_from(n).map(Val::Count).map_err(|_| bad(format!("must be from {min} to {max}")))
}

fn secs(x: f64, allow_zero: bool) -> Result<Val, Bad> {
    if !x.is_finite() {
        return Err(bad("not a finite number of seconds"));
    }
    if x < 0.0 {
        return Err(bad("must not be negative"));
    }
    if x > MAX_SECS {
        return Err(bad(format!("must be at most {MAX_SECS} s (one day)")));
    }
    // In range, so the cast cannot truncate; the resolution is one microsecond.
    let micros = (x * 1e6).round() as u64;
    if micros == 0 && !allow_zero {
        return Err(bad("must be above zero"));
    }
    Ok(Val::Secs(Duration::from_micros(micros)))
}

fn check_symbol(s: &str) -> Result<String, Bad> {
    // The one symbol rule, shared with positions and the API (`core::spec`).
    match crate::core::spec::symbol_problem(s) {
        Some(p) => Err(bad(p)),
        None => Ok(s.to_string()),
    }
}

/// One `SYMBOL = "SEGMENT|KEY"` pair of `[feed.instrument_keys]`.
fn instrument_key_pair(sym: &str, key: &str) -> Result<(String, String), Bad> {
    let sym = check_symbol(sym)?;
    let ok = key.split_once('|').is_some_and(|(seg, rest)| {
        !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && !rest.is_empty()
    }) && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ');
    if !ok {
        return Err(bad(format!(
            "{key:?} is not an Upstox instrument key: SEGMENT|ID, at most 64 printable bytes (\"NSE_EQ|INE323A01026\", \"NSE_INDEX|Nifty 50\")"
        )));
    }
    Ok((sym, key.to_string()))
}

fn nameserver(s: &str) -> Result<SocketAddr, Bad> {
    let s = s.trim();
    let addr =
        s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
    match addr {
        Some(a) if a.port() != 0 => Ok(a),
        Some(_) => Err(bad("port 0 is not a DNS port")),
        None => Err(bad(
            "not an IP address with an optional port (\"1.1.1.1\", \"1.1.1.1:53\", \"2606:4700::1111\", \"[2606:4700::1111]:53\"; no host names)",
        )),
    }
}

fn url(s: &str, schemes: &[&str]) -> Result<String, Bad> {
    let want = || schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ");
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(bad(format!("not a URL: it must start with {}", want())));
    };
    if !schemes.contains(&scheme) {
        return Err(bad(format!("scheme {scheme}:// not accepted: it must start with {}", want())));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("URL has no host"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("URL contains spaces or control characters"));
    }
    Ok(s.to_string())
}

/// Stores `v` in the field of `spec`.
fn assign(cfg: &mut Config, spec: &KeySpec, v: Val) -> Result<(), ConfigError> {
    match (spec.name, v) {
        ("api.listen", Val::Addr(a)) => cfg.api.listen = a,
        ("api.token_file", Val::OptPath(p)) => cfg.api.token_file = p,
        ("api.protect_reads", Val::OptBool(b)) => cfg.api.protect_reads = b,
        ("api.tls_cert", Val::OptPath(p)) => cfg.api.tls_cert = p,
        ("api.tls_key", Val::OptPath(p)) => cfg.api.tls_key = p,
        ("api.allowed_hosts", Val::Hosts(h)) => cfg.api.allowed_hosts = h,
        ("api.protect_metrics", Val::OptBool(b)) => cfg.api.protect_metrics = b,
        ("api.allow_plain_http", Val::Bool(b)) => cfg.api.allow_plain_http = b,
        ("api.hsts", Val::Bool(b)) => cfg.api.hsts = b,
        ("feed.venue", Val::Text(t)) => cfg.feed.venue = Venue::parse(&t).ok_or_else(|| mismatch(spec))?,
        ("feed.ws_url", Val::Text(t)) => cfg.feed.ws_url = t,
        ("feed.rest_url", Val::Text(t)) => cfg.feed.rest_url = t,
        ("feed.instruments", Val::Symbols(l)) => cfg.feed.instruments = l,
        ("feed.silence_timeout_s", Val::Secs(d)) => cfg.feed.silence_timeout = d,
        ("feed.reconnect_initial_s", Val::Secs(d)) => cfg.feed.reconnect_initial = d,
        ("feed.reconnect_max_s", Val::Secs(d)) => cfg.feed.reconnect_max = d,
        ("feed.rest_poll_s", Val::Secs(d)) => cfg.feed.rest_poll = d,
        ("feed.token_file", Val::OptPath(p)) => cfg.feed.token_file = p,
        ("feed.instrument_keys", Val::KeyMap(m)) => cfg.feed.instrument_keys = m,
        ("feed.mode", Val::Text(t)) => cfg.feed.mode = t,
        ("feed.max_subscriptions", Val::OptCount(n)) => cfg.feed.max_subscriptions = n,
        ("feed.market_hours", Val::Text(t)) => cfg.feed.market_hours = t,
        ("feed.holidays", Val::Dates(d)) => cfg.feed.holidays = d,
        ("dns.use_system", Val::Bool(b)) => cfg.dns.use_system = b,
        ("dns.resolv_conf", Val::Path(p)) => cfg.dns.resolv_conf = p,
        ("dns.nameservers", Val::Addrs(a)) => cfg.dns.nameservers = a,
        ("dns.timeout_s", Val::Secs(d)) => cfg.dns.timeout = d,
        ("tls.extra_ca", Val::OptPath(p)) => cfg.tls.extra_ca = p,
        ("cache.stale_after_s", Val::Secs(d)) => cfg.cache.stale_after = d,
        ("cache.expire_after_s", Val::Secs(d)) => cfg.cache.expire_after = d,
        ("cache.blind_grace_s", Val::Secs(d)) => cfg.cache.blind_grace = d,
        ("broker.kind", Val::Text(t)) => {
            cfg.broker.kind = BrokerKind::parse(&t).ok_or_else(|| mismatch(spec))?
        }
        ("broker.rest_url", Val::Text(t)) => cfg.broker.rest_url = t,
        ("broker.key_file", Val::OptPath(p)) => cfg.broker.key_file = p,
        ("broker.secret_file", Val::OptPath(p)) => cfg.broker.secret_file = p,
        ("broker.order_url", Val::Text(t)) => cfg.broker.order_url = t,
        ("broker.token_file", Val::OptPath(p)) => cfg.broker.token_file = p,
        ("broker.recv_window_ms", Val::Count(n)) => {
            cfg.broker.recv_window = Duration::from_millis(u64::from(n))
        }
        ("broker.max_close_attempts", Val::Count(n)) => cfg.broker.max_close_attempts = n,
        ("broker.retry_initial_s", Val::Secs(d)) => cfg.broker.retry_initial = d,
        ("broker.retry_max_s", Val::Secs(d)) => cfg.broker.retry_max = d,
        ("broker.paper_fill_delay_s", Val::Secs(d)) => cfg.broker.paper_fill_delay = d,
        ("broker.unknown_alarm_s", Val::Secs(d)) => cfg.broker.unknown_alarm = d,
        ("broker.reconcile_every_s", Val::Secs(d)) => cfg.broker.reconcile_every = d,
        ("store.dir", Val::Path(p)) => cfg.store.dir = p,
        ("store.fsync", Val::Text(t)) => cfg.store.fsync_always = t == "always",
        ("store.max_journal_bytes", Val::Seed(n)) => {
            cfg.store.max_journal_bytes = n.unwrap_or(crate::limits::MAX_JOURNAL_BYTES).max(4096)
        }
        ("sim.seed", Val::Seed(s)) => cfg.sim.seed = s,
        ("sim.tick_interval_s", Val::Secs(d)) => cfg.sim.tick_interval = d,
        ("indicator.enabled", Val::Bool(b)) => cfg.indicator.enabled = b,
        ("indicator.board", Val::Text(t)) => {
            cfg.indicator.board = IndicatorBoard::parse(&t).ok_or_else(|| mismatch(spec))?
        }
        ("indicator.chip_label", Val::OptText(t)) => cfg.indicator.chip_label = t,
        ("indicator.led_line", Val::OptCount(n)) => cfg.indicator.led_line = n,
        ("indicator.buzzer_line", Val::OptCount(n)) => cfg.indicator.buzzer_line = n,
        ("indicator.active_low", Val::OptBool(b)) => cfg.indicator.active_low = b,
        ("notify.webhook_url", Val::OptText(u)) => cfg.notify.webhook_url = u,
        ("notify.telegram_token_file", Val::OptPath(p)) => cfg.notify.telegram_token_file = p,
        ("notify.telegram_chat_id", Val::OptText(c)) => cfg.notify.telegram_chat_id = c,
        ("notify.telegram_api_url", Val::Text(u)) => cfg.notify.telegram_api_url = u,
        ("relay.enabled", Val::Bool(b)) => cfg.relay.enabled = b,
        ("relay.listen", Val::Addr(a)) => cfg.relay.listen = a,
        ("relay.health_listen", Val::Addr(a)) => cfg.relay.health_listen = a,
        ("relay.health_enabled", Val::Bool(b)) => cfg.relay.health_enabled = b,
        ("relay.exchange", Val::OptText(t)) => {
            cfg.relay.exchange = match t {
                None => None,
                Some(t) => Some(crate::relay::Exchange::parse(&t).ok_or_else(|| mismatch(spec))?),
            }
        }
        ("relay.ws_url", Val::OptText(u)) => cfg.relay.ws_url = u,
        ("relay.rest_url", Val::OptText(u)) => cfg.relay.rest_url = u,
        ("relay.token_file", Val::OptPath(p)) => cfg.relay.token_file = p,
        ("relay.intervals", Val::Intervals(l)) => cfg.relay.intervals = l,
        ("relay.symbols", Val::Symbols(l)) => cfg.relay.symbols = l,
        ("relay.closed_queue_max", Val::Size(n)) => {
            cfg.relay.closed_queue_max = usize::try_from(n).map_err(|_| mismatch(spec))?
        }
        ("relay.open_queue_max", Val::Size(n)) => {
            cfg.relay.open_queue_max = usize::try_from(n).map_err(|_| mismatch(spec))?
        }
        ("relay.breaker_recovery_s", Val::Secs(d)) => cfg.relay.breaker_recovery = d,
        ("relay.close_delay_s", Val::Secs(d)) => cfg.relay.close_delay = d,
        ("relay.stale_after_s", Val::Secs(d)) => cfg.relay.stale_after = d,
        // Unreachable while the schema and this table agree (a unit test checks every key).
        _ => return Err(mismatch(spec)),
    }
    Ok(())
}

/// The schema and [`assign`] disagree about a key: a bug, reported rather than panicking.
fn mismatch(spec: &KeySpec) -> ConfigError {
    ConfigError::Invalid {
        key: spec.name.to_string(),
        value: String::new(),
        problem: "internal error: the schema and the configuration struct disagree".into(),
        fix: "report this as a bug".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Positions

fn parse_positions(v: &DeValue<'_>) -> Result<Vec<PositionSpec>, ConfigError> {
    let DeValue::Array(items) = v else {
        return Err(ConfigError::Invalid {
            key: "positions".into(),
            value: render(v),
            problem: "must be a list of tables".into(),
            fix: "write each position as a [[positions]] table".into(),
        });
    };
    if items.len() > MAX_POSITIONS {
        return Err(ConfigError::Invalid {
            key: "positions".into(),
            value: format!("{} tables", items.len()),
            problem: format!("more than {MAX_POSITIONS} positions (limits::MAX_POSITIONS)"),
            fix: format!("configure at most {MAX_POSITIONS} positions"),
        });
    }
    let mut out: Vec<PositionSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let DeValue::Table(t) = item.get_ref() else {
            return Err(ConfigError::Invalid {
                key: format!("positions[{i}]"),
                value: render(item.get_ref()),
                problem: "must be a table".into(),
                fix: "write each position as a [[positions]] table".into(),
            });
        };
        let spec = parse_position(i, t)?;
        if let Some(j) = out.iter().position(|p| p.id == spec.id) {
            return Err(ConfigError::Invalid {
                key: format!("positions[{i}].id"),
                value: format!("{:?}", spec.id.as_str()),
                problem: format!("duplicate id: positions[{j}] has it too"),
                fix: "give every position a unique id".into(),
            });
        }
        out.push(spec);
    }
    Ok(out)
}

/// The `product` of each `[[positions]]` table that sets one (the tables were checked by
/// [`parse_positions`], in the same order as `positions`).
fn parse_products(
    v: &DeValue<'_>,
    positions: &[PositionSpec],
) -> Result<Vec<(PositionId, crate::broker::upstox::Product)>, ConfigError> {
    let DeValue::Array(items) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (i, (item, spec)) in items.iter().zip(positions).enumerate() {
        let DeValue::Table(t) = item.get_ref() else { continue };
        let p = PosTable { i, t };
        if let Some((text, v)) = p.string("product")? {
            let product = crate::broker::upstox::Product::parse(text).ok_or_else(|| {
                p.invalid(
                    "product",
                    v,
                    "must be D, I or MTF (delivery, intraday, margin trading facility)",
                    "write product = \"D\", product = \"I\" or product = \"MTF\"",
                )
            })?;
            out.push((spec.id.clone(), product));
        }
    }
    Ok(out)
}

fn pos_key(name: &str) -> &'static PositionKey {
    crate::core::spec::spec_key(name)
}

/// One `[[positions]]` table, with its index for error keys.
struct PosTable<'a, 'i> {
    i: usize,
    t: &'a DeTable<'i>,
}

impl<'a, 'i> PosTable<'a, 'i> {
    fn key(&self, name: &str) -> String {
        format!("positions[{}].{name}", self.i)
    }

    fn invalid(
        &self,
        name: &str,
        v: &DeValue<'_>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key: self.key(name),
            value: render(v),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    fn get(&self, name: &str) -> Result<Option<&'a DeValue<'i>>, ConfigError> {
        match self.t.get(name) {
            Some(v) => Ok(Some(v.get_ref())),
            None if pos_key(name).required => Err(missing(self, name)),
            None => Ok(None),
        }
    }

    fn string(&self, name: &str) -> Result<Option<(&'a str, &'a DeValue<'i>)>, ConfigError> {
        match self.get(name)? {
            None => Ok(None),
            Some(v @ DeValue::String(s)) => Ok(Some((s.as_ref(), v))),
            Some(v) => Err(self.invalid(
                name,
                v,
                format!("expected a string, found {}", type_word(v)),
                format!("write it like {name} = {}", pos_key(name).example),
            )),
        }
    }
}

fn parse_position(i: usize, t: &DeTable<'_>) -> Result<PositionSpec, ConfigError> {
    let p = PosTable { i, t };
    for (k, _) in in_file_order(t) {
        if !POSITION_KEYS.iter().any(|pk| pk.name == k) {
            let near = nearest(k, POSITION_KEYS.iter().map(|pk| pk.name));
            let names: Vec<&str> = POSITION_KEYS.iter().map(|pk| pk.name).collect();
            let fix = match near {
                Some(n) => format!(
                    "did you mean positions[{i}].{n}? otherwise remove it (position keys: {})",
                    names.join(", ")
                ),
                None => format!("remove it or fix its spelling (position keys: {})", names.join(", ")),
            };
            return Err(ConfigError::UnknownKey { key: p.key(k), fix });
        }
    }

    // One parser for every door (the API's too): what is accepted and what the problem is
    // called are decided in `core::spec`; here only the key and the value are named.
    let get = |k: &str| match t.get(k).map(|v| v.get_ref()) {
        None => Field::Absent,
        Some(DeValue::String(s)) => Field::Text(s.as_ref()),
        Some(DeValue::Integer(n)) => match i64::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) => Field::Whole(n),
            Err(_) => Field::Other("an integer out of range"),
        },
        Some(DeValue::Float(f)) => match f.as_str().parse::<f64>() {
            Ok(x) => Field::Fraction(x),
            Err(_) => Field::Other("a float out of range"),
        },
        Some(DeValue::Boolean(b)) => Field::Bool(*b),
        Some(v) => Field::Other(type_word(v)),
    };
    crate::core::spec::parse(get, &SpecRules::default()).map_err(|e| {
        if e.missing {
            return missing(&p, &e.field);
        }
        ConfigError::Invalid {
            key: p.key(&e.field),
            value: t.get(e.field.as_str()).map_or_else(String::new, |v| render(v.get_ref())),
            problem: e.problem,
            fix: e.fix,
        }
    })
}

fn missing(p: &PosTable<'_, '_>, name: &str) -> ConfigError {
    ConfigError::Missing {
        key: p.key(name),
        fix: format!("add {name} = {} to this [[positions]] table", pos_key(name).example),
    }
}

/// Refuses a position whose side the broker cannot close (a configuration error naming
/// `positions[N].side`): with `broker.kind = "binance"` (spot) a short, by the broker's own
/// rule (`broker::binance::check_side`), which the API applies to registrations too.
pub fn refuse_unclosable_sides(cfg: &Config) -> Result<(), ConfigError> {
    let Some(rule) = side_rule(cfg) else { return Ok(()) };
    for (i, p) in cfg.positions.iter().enumerate() {
        if let Err(why) = rule(p.side) {
            return Err(ConfigError::Invalid {
                key: format!("positions[{i}].side"),
                value: format!("{:?}", p.side.as_str()),
                problem: format!("position {}: {why}", p.id),
                fix: "protect only long positions with the binance broker, or use broker.kind = \"paper\""
                    .into(),
            });
        }
    }
    Ok(())
}

/// The side rule of the configured broker, if it cannot close every side.
pub fn side_rule(cfg: &Config) -> Option<crate::core::spec::SideRule> {
    (cfg.broker.kind == BrokerKind::Binance).then_some(crate::broker::binance::check_side as fn(_) -> _)
}

// ---------------------------------------------------------------------------------------
// Start-up checks: the API's transport and token, secret files, outbound URLs

/// How grave a start-up problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `check-config` exits 78 on it. Under `run` an API problem makes the API serve on
    /// 127.0.0.1 only with an alarm (protection never stops); an outbound URL problem is
    /// logged as an error at every start.
    Error,
    /// Printed by `check-config`, logged by `run` at every start.
    Warning,
}

/// A problem found by the start-up checks shared by `check-config` and `run`
/// ([`api_problems`], [`secret_problems`], [`outbound_problems`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The key to change.
    pub key: &'static str,
    /// The `event=` of its log line.
    pub event: &'static str,
    /// One line naming the key, what is wrong and the fix (never a secret, never a URL
    /// that may carry one).
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Bits of a token needed to resist guessing.
pub const MIN_TOKEN_BITS: u32 = 128;

/// Estimated strength of a token, in bits. The rule (docs/configuration.md, "Token
/// strength"): trailing `=` (base64 padding) is dropped; the alphabet is the smallest of
/// these that holds every character: digits (10), hex digits of one case (16), lower-case
/// letters and digits or upper-case letters and digits (36), letters and digits (62), the
/// base64 / base64url alphabet `A-Z a-z 0-9 + / - _` (64), anything else (95, printable
/// ASCII); each character counts log2 of that size, or log2 of the number of distinct
/// characters when fewer than 8 distinct characters are used (`aaaa…`, `abab…`).
pub fn token_bits(token: &str) -> u32 {
    let t = token.trim().trim_end_matches('=');
    let n = t.chars().count();
    if n == 0 {
        return 0;
    }
    let all = |f: fn(char) -> bool| t.chars().all(f);
    let class: u32 = if all(|c| c.is_ascii_digit()) {
        10
    } else if all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        || all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
    {
        16
    } else if all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        || all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        36
    } else if all(|c| c.is_ascii_alphanumeric()) {
        62
    } else if all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_')) {
        64
    } else {
        95
    };
    let distinct = t.chars().collect::<std::collections::BTreeSet<char>>().len();
    let size = if distinct < 8 { distinct as f64 } else { f64::from(class) };
    // At most a few hundred characters of a file: the product is far below u32::MAX.
    (n as f64 * size.log2()).floor().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// The API's transport and token rules, reading `api.token_file` for its strength. An
/// unreadable token file is a warning here (its strength is not checked); under `run` it
/// narrows the API to a read-only one on loopback, with the alarm.
pub fn api_problems(cfg: &Config) -> Vec<Problem> {
    let Some(path) = cfg.api.token_file.as_deref() else {
        return api_problems_for_token(cfg, None);
    };
    match read_secret(path) {
        Ok(t) => api_problems_for_token(cfg, Some(&t)),
        Err(e) => {
            let mut out = api_problems_for_token(cfg, None);
            out.push(Problem {
                severity: Severity::Warning,
                key: "api.token_file",
                event: "token_unchecked",
                message: format!(
                    "api.token_file: {e}; its strength was not checked (run the check as the service user, with $CREDENTIALS_DIRECTORY set if the unit passes it with LoadCredential=)"
                ),
            });
            out
        }
    }
}

/// As [`api_problems`], with the token already read (`None`: no `api.token_file`).
/// Errors: a non-loopback `api.listen` without `api.tls_cert` and without
/// `api.allow_plain_http = true`; a token below [`MIN_TOKEN_BITS`]. Warnings: plain HTTP
/// allowed on a non-loopback address; a non-loopback address without a token.
pub fn api_problems_for_token(cfg: &Config, token: Option<&str>) -> Vec<Problem> {
    let api = &cfg.api;
    let mut out = Vec::new();
    let lan = !api.listen_is_loopback();
    if lan && api.tls_cert.is_none() {
        if api.allow_plain_http {
            out.push(Problem {
                severity: Severity::Warning,
                key: "api.allow_plain_http",
                event: "plain_http",
                message: format!(
                    "api.allow_plain_http = true: the API serves plain HTTP on {} (not loopback), so the token and the login cross the network in clear; set api.tls_cert and api.tls_key to serve HTTPS",
                    api.listen
                ),
            });
        } else {
            out.push(Problem {
                severity: Severity::Error,
                key: "api.listen",
                event: "plain_http_refused",
                message: format!(
                    "api.listen = \"{}\" is not a loopback address and api.tls_cert is not set: the token and the login would cross the network in clear; set api.tls_cert and api.tls_key (HTTPS), or api.allow_plain_http = true to accept plain HTTP, or listen on 127.0.0.1",
                    api.listen
                ),
            });
        }
    }
    match (token, api.token_file.as_deref()) {
        (Some(t), Some(path)) => {
            let bits = token_bits(t);
            if bits < MIN_TOKEN_BITS {
                out.push(Problem {
                    severity: Severity::Error,
                    key: "api.token_file",
                    event: "weak_token",
                    message: format!(
                        "api.token_file {} holds a token of about {bits} bits, below the {MIN_TOKEN_BITS} needed to resist guessing; make one with `openssl rand -hex 32 > {}` (64 hex digits, 256 bits) and restart",
                        path.display(),
                        path.display()
                    ),
                });
            }
        }
        _ if lan => out.push(Problem {
            severity: Severity::Warning,
            key: "api.token_file",
            event: "reads_open",
            message: format!(
                "api.listen = \"{}\" is not a loopback address and api.token_file is not set: anyone who reaches it reads positions and P/L (changes are refused); set api.token_file (make one with `openssl rand -hex 32`)",
                api.listen
            ),
        }),
        _ => {}
    }
    out
}

/// The files of [`SECRET_KEYS`] that are set, with their key.
pub fn secret_files(cfg: &Config) -> Vec<(&'static str, &Path)> {
    let all: [(&'static str, Option<&PathBuf>); 7] = [
        ("api.token_file", cfg.api.token_file.as_ref()),
        ("api.tls_key", cfg.api.tls_key.as_ref()),
        ("feed.token_file", cfg.feed.token_file.as_ref()),
        ("broker.key_file", cfg.broker.key_file.as_ref()),
        ("broker.secret_file", cfg.broker.secret_file.as_ref()),
        ("broker.token_file", cfg.broker.token_file.as_ref()),
        ("notify.telegram_token_file", cfg.notify.telegram_token_file.as_ref()),
    ];
    all.into_iter().filter_map(|(k, p)| p.map(|p| (k, p.as_path()))).collect()
}

/// Warnings for secret files readable by their group or by others (mode `& 0o044`). A file
/// that cannot be inspected is left to the code that reads it.
pub fn secret_problems(cfg: &Config) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, path) in secret_files(cfg) {
        if !seen.insert(path) {
            continue;
        }
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o044 != 0 {
            let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
                (true, true) => "its group and others",
                (true, false) => "its group",
                _ => "others",
            };
            out.push(Problem {
                severity: Severity::Warning,
                key,
                event: "secret_readable",
                message: format!(
                    "{key} {} is readable by {who} (mode {mode:04o}); run `chmod 600 {}` (owned by the service user), or pass it with LoadCredential=",
                    path.display(),
                    path.display()
                ),
            });
        }
    }
    out
}

/// The host of a URL (`scheme://[user@]host[:port]/...`), without brackets for IPv6.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(hostport.split(':').next().unwrap_or(hostport))
}

/// Whether `host` (of a URL) is a loopback host: `localhost`, 127.0.0.0/8 or `::1`.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Outbound URLs that carry keys or tokens must use `https://` / `wss://` unless their host
/// is loopback (a local proxy, the tests' fakes): `feed.rest_url` and `feed.ws_url` with
/// Upstox (the access token), `broker.rest_url` with a live broker (keys, signatures,
/// token), `broker.order_url` with Upstox, `notify.webhook_url` (hook URLs carry their
/// secret in the path), `notify.telegram_api_url` with a Telegram bot (the token is in the
/// path), `relay.rest_url` in force with an enabled Upstox relay (its access token). The message names the key, the scheme and the host, never the whole URL.
pub fn outbound_problems(cfg: &Config) -> Vec<Problem> {
    let upstox_feed = cfg.feed.venue == Venue::Upstox;
    let live_broker = cfg.broker.kind != BrokerKind::Paper;
    let upstox_relay = cfg.relay.enabled && cfg.relay_exchange() == Some(crate::relay::Exchange::Upstox);
    let candidates: [(&'static str, Option<&str>, &str); 7] = [
        ("feed.rest_url", upstox_feed.then_some(cfg.feed.rest_url.as_str()), "the Upstox access token"),
        ("feed.ws_url", upstox_feed.then_some(cfg.feed.ws_url.as_str()), "the Upstox access token"),
        ("broker.rest_url", live_broker.then_some(cfg.broker.rest_url.as_str()), "the broker's key or token"),
        (
            "broker.order_url",
            (cfg.broker.kind == BrokerKind::Upstox).then_some(cfg.broker.order_url.as_str()),
            "the Upstox access token",
        ),
        ("notify.webhook_url", cfg.notify.webhook_url.as_deref(), "the hook's secret path"),
        (
            "notify.telegram_api_url",
            cfg.notify.telegram_token_file.is_some().then_some(cfg.notify.telegram_api_url.as_str()),
            "the Telegram bot token",
        ),
        ("relay.rest_url", upstox_relay.then(|| cfg.relay_rest_url()), "the relay's Upstox access token"),
    ];
    let mut out = Vec::new();
    for (key, url, what) in candidates {
        let Some(url) = url else { continue };
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        if matches!(scheme, "https" | "wss") {
            continue;
        }
        let host = url_host(url).unwrap_or("");
        if is_loopback_host(host) {
            continue;
        }
        let secure = if scheme == "ws" { "wss" } else { "https" };
        out.push(Problem {
            severity: Severity::Error,
            key,
            event: "insecure_url",
            message: format!(
                "{key} uses {scheme}:// to {host}, which is not a loopback host: it would send {what} in clear; use {secure}:// (plain {scheme}:// is accepted only to localhost, 127.0.0.0/8 or ::1)"
            ),
        });
    }
    out
}

/// Every start-up problem: [`api_problems`], [`outbound_problems`], [`secret_problems`], in
/// that order (`check-config` prints them all).
pub fn start_problems(cfg: &Config) -> Vec<Problem> {
    let mut out = api_problems(cfg);
    out.extend(outbound_problems(cfg));
    out.extend(secret_problems(cfg));
    out
}

// ---------------------------------------------------------------------------------------
// Cross-key checks

fn check(cfg: &Config) -> Result<(), ConfigError> {
    let ind = &cfg.indicator;
    if ind.enabled && ind.board == IndicatorBoard::Custom {
        let missing = if ind.chip_label.is_none() {
            Some(("indicator.chip_label", "chip_label = \"pinctrl-rp1\""))
        } else if ind.led_line.is_none() {
            Some(("indicator.led_line", "led_line = 17"))
        } else {
            None
        };
        if let Some((key, example)) = missing {
            return Err(ConfigError::Invalid {
                key: key.into(),
                value: "(none)".into(),
                problem: "indicator.board = \"custom\" has no profile to take it from".into(),
                fix: format!(
                    "set {example} under [indicator], or choose a board (rpi4, rpi5, qemu-virt, auto)"
                ),
            });
        }
    }
    if cfg.cache.stale_after >= cfg.cache.expire_after {
        return Err(ConfigError::Invalid {
            key: "cache.stale_after_s".into(),
            value: fmt_secs(cfg.cache.stale_after),
            problem: format!("must be below cache.expire_after_s ({})", fmt_secs(cfg.cache.expire_after)),
            fix: "lower stale_after_s or raise expire_after_s".into(),
        });
    }
    if cfg.feed.reconnect_max < cfg.feed.reconnect_initial {
        return Err(ConfigError::Invalid {
            key: "feed.reconnect_max_s".into(),
            value: fmt_secs(cfg.feed.reconnect_max),
            problem: format!(
                "must be at least feed.reconnect_initial_s ({})",
                fmt_secs(cfg.feed.reconnect_initial)
            ),
            fix: "raise reconnect_max_s or lower reconnect_initial_s".into(),
        });
    }
    if cfg.broker.retry_max < cfg.broker.retry_initial {
        return Err(ConfigError::Invalid {
            key: "broker.retry_max_s".into(),
            value: fmt_secs(cfg.broker.retry_max),
            problem: format!(
                "must be at least broker.retry_initial_s ({})",
                fmt_secs(cfg.broker.retry_initial)
            ),
            fix: "raise retry_max_s or lower retry_initial_s".into(),
        });
    }
    if cfg.api.protect_reads == Some(true) && cfg.api.token_file.is_none() {
        return Err(ConfigError::Invalid {
            key: "api.protect_reads".into(),
            value: "true".into(),
            problem: "needs api.token_file: there is no token to protect reads with".into(),
            fix: "set api.token_file or protect_reads = false".into(),
        });
    }
    if cfg.api.protect_metrics == Some(true) && cfg.api.token_file.is_none() {
        return Err(ConfigError::Invalid {
            key: "api.protect_metrics".into(),
            value: "true".into(),
            problem: "needs api.token_file: there is no token to protect /metrics with".into(),
            fix: "set api.token_file or protect_metrics = false".into(),
        });
    }
    if cfg.api.tls_cert.is_some() != cfg.api.tls_key.is_some() {
        let (key, other) = if cfg.api.tls_cert.is_some() {
            ("api.tls_cert", "api.tls_key")
        } else {
            ("api.tls_key", "api.tls_cert")
        };
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: "set".into(),
            problem: format!("needs {other}: HTTPS takes a certificate and its key"),
            fix: "set both api.tls_cert and api.tls_key, or neither (plain HTTP)".into(),
        });
    }
    if cfg.notify.telegram_token_file.is_some() != cfg.notify.telegram_chat_id.is_some() {
        let (key, other) = if cfg.notify.telegram_token_file.is_some() {
            ("notify.telegram_token_file", "notify.telegram_chat_id")
        } else {
            ("notify.telegram_chat_id", "notify.telegram_token_file")
        };
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: "set".into(),
            problem: format!("needs {other}: a Telegram bot writes to one chat"),
            fix: "set both notify.telegram_token_file and notify.telegram_chat_id, or neither".into(),
        });
    }
    if !cfg.dns.use_system && cfg.dns.nameservers.is_empty() {
        return Err(ConfigError::Invalid {
            key: "dns.nameservers".into(),
            value: "[]".into(),
            problem: "empty while dns.use_system = false: nothing to resolve names with".into(),
            fix: "list at least one nameserver or set use_system = true".into(),
        });
    }
    let live_match = match cfg.broker.kind {
        BrokerKind::Paper => true,
        BrokerKind::Binance => cfg.feed.venue == Venue::Binance,
        BrokerKind::Upstox => cfg.feed.venue == Venue::Upstox,
    };
    if !live_match {
        return Err(ConfigError::Invalid {
            key: "broker.kind".into(),
            value: format!("{:?}", cfg.broker.kind.as_str()),
            problem: format!(
                "a live broker must trade the venue the prices come from, but feed.venue = {:?}",
                cfg.feed.venue.as_str()
            ),
            fix: format!("set feed.venue = {:?} or broker.kind = \"paper\"", cfg.broker.kind.as_str()),
        });
    }
    if cfg.feed.venue == Venue::Upstox {
        check_upstox(cfg)?;
    }
    let watched = cfg.watched_symbols().len();
    if watched > MAX_INSTRUMENTS {
        return Err(ConfigError::Invalid {
            key: "feed.instruments".into(),
            value: format!("{watched} symbols with the positions' own"),
            problem: format!("more than {MAX_INSTRUMENTS} instruments (limits::MAX_INSTRUMENTS)"),
            fix: format!(
                "watch at most {MAX_INSTRUMENTS} distinct symbols in feed.instruments and [[positions]] together"
            ),
        });
    }
    check_relay(cfg)
}

/// Whether two listen addresses would take the same socket: the same port on the same
/// address, or on any address when either is unspecified (`0.0.0.0`, `::`). Port 0 (an
/// ephemeral port) never collides.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip().to_canonical() == b.ip().to_canonical()
            || a.ip().is_unspecified()
            || b.ip().is_unspecified())
}

/// Whether two configured paths name the same file: equal component by component, or the
/// same file once resolved (when both exist; neither is read).
fn same_file(a: &Path, b: &Path) -> bool {
    if a.components().eq(b.components()) {
        return true;
    }
    matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

/// `[relay]` checks. Always: the symbol and interval caps, `relay.close_delay_s` below the shortest
/// interval. With `relay.enabled`: a venue to relay, listen addresses apart from each other
/// and from `api.listen`, and an Upstox relay's own token file.
fn check_relay(cfg: &Config) -> Result<(), ConfigError> {
    let relay = &cfg.relay;
    if relay.symbols.len() > RELAY_SYMBOLS {
        return Err(ConfigError::Invalid {
            key: "relay.symbols".into(),
            value: format!("{} symbols", relay.symbols.len()),
            problem: format!("more than {RELAY_SYMBOLS} symbols (limits::RELAY_SYMBOLS)"),
            fix: format!("list at most {RELAY_SYMBOLS} symbols in relay.symbols"),
        });
    }
    if relay.intervals.len() > RELAY_INTERVALS {
        return Err(ConfigError::Invalid {
            key: "relay.intervals".into(),
            value: format!("{} intervals", relay.intervals.len()),
            problem: format!("more than {RELAY_INTERVALS} intervals (limits::RELAY_INTERVALS)"),
            fix: format!("list at most {RELAY_INTERVALS} intervals in relay.intervals"),
        });
    }
    if let Some(shortest) = relay.intervals.iter().min() {
        let len = Duration::from_millis(u64::try_from(shortest.millis()).unwrap_or(u64::MAX));
        if relay.close_delay >= len {
            return Err(ConfigError::Invalid {
                key: "relay.close_delay_s".into(),
                value: fmt_secs(relay.close_delay),
                problem: format!(
                    "must be below the shortest interval of relay.intervals ({shortest}, {} s): a bar would close after the next one ended",
                    fmt_secs(len)
                ),
                fix: "lower close_delay_s (the default is 2)".into(),
            });
        }
    }
    if !relay.enabled {
        return Ok(());
    }
    let Some(exchange) = cfg.relay_exchange() else {
        return Err(ConfigError::Invalid {
            key: "relay.exchange".into(),
            value: "(feed.venue = \"sim\")".into(),
            problem:
                "the relay is enabled but has no venue: it defaults to feed.venue, which is the simulator"
                    .into(),
            fix: "set relay.exchange = \"binance\" or \"upstox\" under [relay]".into(),
        });
    };
    let listens = [
        ("relay.listen", Some(relay.listen)),
        ("relay.health_listen", relay.health_enabled.then_some(relay.health_listen)),
    ];
    for (key, addr) in listens {
        let Some(addr) = addr else { continue };
        if same_socket(addr, cfg.api.listen) {
            return Err(ConfigError::Invalid {
                key: key.into(),
                value: format!("\"{addr}\""),
                problem: format!(
                    "takes the socket of api.listen ({}): both cannot listen there",
                    cfg.api.listen
                ),
                fix: format!(
                    "give {key} another port (the connector's are 8765 and 8766), or move api.listen"
                ),
            });
        }
    }
    if relay.health_enabled && same_socket(relay.listen, relay.health_listen) {
        return Err(ConfigError::Invalid {
            key: "relay.health_listen".into(),
            value: format!("\"{}\"", relay.health_listen),
            problem: format!("takes the socket of relay.listen ({})", relay.listen),
            fix:
                "give the health server another port (the connector's is 8766), or set health_enabled = false"
                    .into(),
        });
    }
    if exchange == crate::relay::Exchange::Upstox {
        let Some(token) = relay.token_file.as_deref() else {
            return Err(ConfigError::Invalid {
                key: "relay.token_file".into(),
                value: "(none)".into(),
                problem: "relay.exchange is upstox, which needs the relay's own access token".into(),
                fix: "set relay.token_file to a file holding the access token of an Upstox app or user other than the guard's".into(),
            });
        };
        if let Some(feed) = cfg.feed.token_file.as_deref().filter(|f| same_file(token, f)) {
            return Err(ConfigError::Invalid {
                key: "relay.token_file".into(),
                value: format!("{:?}", token.display().to_string()),
                problem: format!(
                    "is feed.token_file ({}): Upstox allows one market-data connection per app and user, so the relay's connection would cut the guard's feed",
                    feed.display()
                ),
                fix: "give the relay the token of another Upstox app or user, in its own file".into(),
            });
        }
    }
    Ok(())
}

/// Upstox feed checks: an instrument key for every symbol, the subscription cap. (The token
/// file is checked by `tickguard run`, which reads it.)
fn check_upstox(cfg: &Config) -> Result<(), ConfigError> {
    for sym in cfg.watched_symbols() {
        if cfg.feed.instrument_key(&sym).is_none() {
            return Err(ConfigError::Invalid {
                key: "feed.instrument_keys".into(),
                value: format!("(no key for {sym})"),
                problem: format!("symbol {sym} has no Upstox instrument key"),
                fix: format!("add {sym} = \"NSE_EQ|<ISIN>\" under [feed.instrument_keys]"),
            });
        }
    }
    let mode = crate::feed::upstox::Mode::parse(&cfg.feed.mode).unwrap_or_default();
    let venue_cap = mode.cap();
    if let Some(n) = cfg.feed.max_subscriptions {
        if usize::from(n) > venue_cap {
            return Err(ConfigError::Invalid {
                key: "feed.max_subscriptions".into(),
                value: n.to_string(),
                problem: format!(
                    "above Upstox's cap of {venue_cap} instrument keys per connection in mode {}",
                    mode.as_str()
                ),
                fix: format!("set max_subscriptions to at most {venue_cap}, or remove it"),
            });
        }
    }
    let cap = cfg.feed.max_subscriptions.map_or(venue_cap, usize::from);
    let watched = cfg.watched_symbols().len();
    if watched > cap {
        let (key, which) = match cfg.feed.max_subscriptions {
            Some(_) => ("feed.max_subscriptions", "feed.max_subscriptions"),
            None => ("feed.instruments", "Upstox's cap for the mode"),
        };
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: format!("{watched} instruments with the positions' own"),
            problem: format!(
                "more than the subscription cap of {cap} instrument keys per connection (mode {}, {which})",
                mode.as_str()
            ),
            fix: format!("watch at most {cap} instruments in feed.instruments and [[positions]] together"),
        });
    }
    Ok(())
}

fn fmt_secs(d: Duration) -> String {
    let micros = d.as_micros();
    if micros % 1_000_000 == 0 {
        format!("{}", micros / 1_000_000)
    } else {
        let s = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
        s.trim_end_matches('0').to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Messages

fn type_word(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// The value as TOML writes it, shortened for a one-line message.
fn render(v: &DeValue<'_>) -> String {
    fn go(v: &DeValue<'_>, out: &mut String) {
        use std::fmt::Write as _;
        if out.len() > 120 {
            return;
        }
        let _ = match v {
            DeValue::String(s) => write!(out, "{:?}", s.as_ref()),
            DeValue::Integer(i) => write!(out, "{i}"),
            DeValue::Float(f) => write!(out, "{f}"),
            DeValue::Boolean(b) => write!(out, "{b}"),
            DeValue::Datetime(d) => write!(out, "{d}"),
            DeValue::Array(a) => {
                out.push('[');
                for (n, item) in a.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    go(item.get_ref(), out);
                }
                out.push(']');
                Ok(())
            }
            DeValue::Table(t) => {
                out.push('{');
                for (n, (k, item)) in in_file_order(t).into_iter().enumerate() {
                    out.push_str(if n > 0 { ", " } else { " " });
                    out.push_str(k);
                    out.push_str(" = ");
                    go(item.get_ref(), out);
                }
                out.push_str(" }");
                Ok(())
            }
        };
    }
    let mut out = String::new();
    go(v, &mut out);
    shorten(&out)
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

fn unknown_section(name: &str) -> ConfigError {
    let mut all: Vec<&str> = SECTIONS.to_vec();
    all.push("positions");
    let fix = if let Some(spec) = KEYS.iter().find(|s| s.leaf() == name) {
        format!("did you mean {}? put it under [{}]", spec.name, spec.section())
    } else if let Some(n) = nearest(name, all.iter().copied()) {
        format!("did you mean [{n}]? otherwise remove it (sections: {}, [[positions]])", SECTIONS.join(", "))
    } else {
        format!("remove it or fix its spelling (sections: {}, [[positions]])", SECTIONS.join(", "))
    };
    ConfigError::UnknownKey { key: name.to_string(), fix }
}

fn unknown_key(name: &str) -> ConfigError {
    let (section, leaf) = name.split_once('.').unwrap_or(("", name));
    let known: Vec<&str> = KEYS.iter().filter(|s| s.section() == section).map(KeySpec::leaf).collect();
    let elsewhere = KEYS.iter().find(|s| s.leaf() == leaf);
    let fix = if let Some(spec) = elsewhere {
        format!("did you mean {}? it belongs in [{}]", spec.name, spec.section())
    } else if let Some(n) = nearest(name, KEYS.iter().map(|s| s.name)) {
        format!("did you mean {n}? otherwise remove it (keys of [{section}]: {})", known.join(", "))
    } else {
        format!("remove it or fix its spelling (keys of [{section}]: {})", known.join(", "))
    };
    ConfigError::UnknownKey { key: name.to_string(), fix }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 4);
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../docs/configuration.md");

    /// Splits a markdown table row into trimmed cells, honouring `\|`.
    fn cells(row: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut chars = row.trim().trim_start_matches('|').chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&'|') => {
                    cur.push('|');
                    chars.next();
                }
                '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
                c => cur.push(c),
            }
        }
        if !cur.trim().is_empty() {
            out.push(cur.trim().to_string());
        }
        out
    }

    fn plain(cell: &str) -> String {
        cell.replace('`', "")
    }

    fn doc_row(first: &str) -> Option<Vec<String>> {
        DOCS.lines()
            .filter(|l| l.trim_start().starts_with('|'))
            .map(cells)
            .find(|c| c.len() >= 4 && c.first().is_some_and(|k| plain(k) == first))
    }

    fn expected_row(s: &KeySpec) -> String {
        let default =
            if s.default.starts_with('(') { s.default.to_string() } else { format!("`{}`", s.default) };
        let unit = if s.unit.is_empty() { "" } else { s.unit };
        format!("| `{}` | {} | {} | {} | {} |", s.name, s.kind.type_name(), default, unit, s.meaning)
    }

    #[test]
    fn docs_table_matches_schema() {
        let mut missing = Vec::new();
        for s in KEYS {
            let ok = doc_row(s.name).is_some_and(|c| {
                c.len() >= 5
                    && plain(&c[1]) == s.kind.type_name()
                    && plain(&c[2]) == s.default
                    && plain(&c[3]) == s.unit
            });
            if !ok {
                missing.push(expected_row(s));
            }
        }
        assert!(
            missing.is_empty(),
            "docs/configuration.md is out of step with KEYS; expected rows:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn docs_position_table_matches_schema() {
        for k in POSITION_KEYS {
            let c = doc_row(k.name).unwrap_or_else(|| panic!("position key {} not documented", k.name));
            assert_eq!(plain(&c[1]), k.type_name, "type of {}", k.name);
            assert_eq!(plain(&c[2]), if k.required { "yes" } else { "no" }, "required of {}", k.name);
            assert_eq!(plain(&c[3]), k.default, "default of {}", k.name);
        }
    }

    #[test]
    fn docs_examples_are_valid() {
        let blocks: Vec<&str> =
            DOCS.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap_or("")).collect();
        assert!(!blocks.is_empty(), "docs/configuration.md has no toml example");
        for text in blocks {
            parse_str(text, "docs example", Vec::new())
                .unwrap_or_else(|e| panic!("docs/configuration.md example: {e}"));
        }
    }

    #[test]
    fn defaults_in_schema_are_the_struct_defaults() {
        let base = Config::default();
        for s in KEYS {
            let text = if s.default.starts_with('(') { "" } else { s.default };
            let v = from_text(s, text).unwrap_or_else(|b| panic!("default of {}: {}", s.name, b.problem));
            let mut cfg = base.clone();
            assign(&mut cfg, s, v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cfg, base, "default text of {} differs from Config::default()", s.name);
        }
    }

    #[test]
    fn every_key_is_settable_from_its_example() {
        for s in KEYS {
            let v = DeValue::parse(s.example).unwrap_or_else(|e| panic!("example of {}: {e}", s.name));
            let val =
                from_toml(s, v.get_ref()).unwrap_or_else(|b| panic!("example of {}: {}", s.name, b.problem));
            let mut cfg = Config::default();
            assign(&mut cfg, s, val).unwrap_or_else(|e| panic!("{e}"));
            assert_ne!(cfg, Config::default(), "example of {} does not change anything", s.name);
            // The same example through the environment.
            let val = from_text(s, &s.env_example())
                .unwrap_or_else(|b| panic!("env example of {}: {}", s.name, b.problem));
            let mut env_cfg = Config::default();
            assign(&mut env_cfg, s, val).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(env_cfg, cfg, "env and file forms of {} disagree", s.name);
        }
    }

    #[test]
    fn position_examples_parse() {
        let mut text = String::from("[[positions]]\n");
        for k in POSITION_KEYS {
            text.push_str(&format!("{} = {}\n", k.name, k.example));
        }
        let cfg = parse_str(&text, "t", Vec::new()).expect("examples form a valid position");
        assert_eq!(cfg.positions.len(), 1);
    }

    #[test]
    fn env_names() {
        assert_eq!(env_var_name("feed.ws_url"), "TICKGUARD_FEED_WS_URL");
        assert_eq!(env_var_name("cache.stale_after_s"), "TICKGUARD_CACHE_STALE_AFTER_S");
        for s in KEYS {
            assert!(SECTIONS.contains(&s.section()), "{} has an unknown section", s.name);
            assert!(!s.section().contains('_'), "section names must not contain _ (env mapping)");
        }
    }

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(nearest("cache.stale_after", KEYS.iter().map(|s| s.name)), Some("cache.stale_after_s"));
        assert_eq!(nearest("zzz", KEYS.iter().map(|s| s.name)), None);
    }

    // --- [relay] ------------------------------------------------------------------------

    fn env_of(env: &[(&str, &str)]) -> Vec<(String, String)> {
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn relay_ok(text: &str, env: &[(&str, &str)]) -> Config {
        parse_str(text, "t", env_of(env)).unwrap_or_else(|e| panic!("expected valid: {e}\n{text}"))
    }

    /// The one-line error of `text` with `env`; asserts it names every needle.
    fn relay_err(text: &str, env: &[(&str, &str)], needles: &[&str]) -> String {
        let msg = match parse_str(text, "t", env_of(env)) {
            Ok(_) => panic!("expected an error for:\n{text}\n{env:?}"),
            Err(e) => e.to_string(),
        };
        assert!(!msg.contains('\n'), "not one line: {msg}");
        for n in needles {
            assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
        }
        msg
    }

    const ON: &str = "[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\n";

    #[test]
    fn relay_defaults() {
        let cfg = relay_ok("", &[]);
        let r = &cfg.relay;
        assert_eq!(*r, RelayConfig::default());
        assert!(!r.enabled && r.health_enabled);
        assert_eq!(r.listen, SocketAddr::from(([127, 0, 0, 1], 8765)));
        assert_eq!(r.health_listen, SocketAddr::from(([127, 0, 0, 1], 8766)));
        assert_eq!((r.exchange, r.ws_url.as_deref(), r.rest_url.as_deref()), (None, None, None));
        assert_eq!(r.token_file, None);
        assert_eq!(r.intervals, vec![Interval::M1]);
        assert!(r.symbols.is_empty());
        assert_eq!((r.closed_queue_max, r.open_queue_max), (1000, 2000));
        assert_eq!(r.breaker_recovery, Duration::from_secs(60));
        assert_eq!(r.close_delay, Duration::from_secs(2));
        assert_eq!(r.stale_after, Duration::from_secs(30));
        // The simulator cannot be relayed: no venue in force.
        assert_eq!(cfg.relay_exchange(), None);
        assert_eq!(relay_ok("[relay]\n", &[]), Config::default());
        // Over a Binance feed: the feed's venue and URLs.
        let b = relay_ok(ON, &[]);
        assert_eq!(b.relay_exchange(), Some(crate::relay::Exchange::Binance));
        assert_eq!(b.relay_ws_url(), b.feed.ws_url);
        assert_eq!(b.relay_rest_url(), b.feed.rest_url);
        // Another venue: the venue's public endpoints.
        let u = relay_ok("[relay]\nexchange = \"binance\"\n", &[]);
        assert_eq!((u.relay_ws_url(), u.relay_rest_url()), (RELAY_BINANCE_WS_URL, RELAY_BINANCE_REST_URL));
        let u = relay_ok("[feed]\nvenue = \"binance\"\n[relay]\nexchange = \"upstox\"\n", &[]);
        assert_eq!(u.relay_rest_url(), RELAY_UPSTOX_REST_URL);
        let u = relay_ok("[relay]\nexchange = \"upstox\"\nrest_url = \"https://x.example\"\n", &[]);
        assert_eq!(u.relay_rest_url(), "https://x.example");
    }

    #[test]
    fn relay_keys_from_the_file_and_the_environment() {
        let text = "[relay]\nenabled = true\nexchange = \"binance\"\nlisten = \"0.0.0.0:9765\"\nhealth_listen = \"[::1]:9766\"\nhealth_enabled = false\nintervals = [\"1m\", \"1h\", \"1d\"]\nsymbols = [\"btcusdt\", \"ETHUSDT\", \"BTCUSDT\"]\nclosed_queue_max = 100000\nopen_queue_max = 1\nbreaker_recovery_s = 0.5\nclose_delay_s = 59.5\nstale_after_s = 10\n";
        let r = relay_ok(text, &[]).relay;
        assert!(r.enabled && !r.health_enabled);
        assert_eq!(r.listen, "0.0.0.0:9765".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r.health_listen, "[::1]:9766".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r.intervals, vec![Interval::M1, Interval::H1, Interval::D1]);
        // Binance symbols upper-cased, each once, in order.
        assert_eq!(r.symbols, vec!["BTCUSDT".to_string(), "ETHUSDT".into()]);
        assert_eq!((r.closed_queue_max, r.open_queue_max), (100_000, 1));
        assert_eq!(r.breaker_recovery, Duration::from_millis(500));
        assert_eq!(r.close_delay, Duration::from_millis(59_500));
        assert_eq!(r.stale_after, Duration::from_secs(10));
        // Upstox symbols and keys are kept as written.
        let r = relay_ok(
            "[relay]\nexchange = \"upstox\"\nsymbols = [\"NSE_EQ|INE323A01026\", \"Boschltd\"]\n",
            &[],
        )
        .relay;
        assert_eq!(r.symbols, vec!["NSE_EQ|INE323A01026".to_string(), "Boschltd".into()]);
        // TICKGUARD_RELAY_* overrides, like every key.
        let cfg = relay_ok(
            "",
            &[
                ("TICKGUARD_RELAY_ENABLED", "1"),
                ("TICKGUARD_RELAY_EXCHANGE", "binance"),
                ("TICKGUARD_RELAY_LISTEN", "127.0.0.1:0"),
                ("TICKGUARD_RELAY_HEALTH_LISTEN", "127.0.0.1:0"),
                ("TICKGUARD_RELAY_INTERVALS", "5m, 15m"),
                ("TICKGUARD_RELAY_SYMBOLS", "solusdt,BNBUSDT"),
                ("TICKGUARD_RELAY_WS_URL", "ws://127.0.0.1:9000/ws"),
                ("TICKGUARD_RELAY_REST_URL", "http://127.0.0.1:9001"),
                ("TICKGUARD_RELAY_TOKEN_FILE", "/t"),
                ("TICKGUARD_RELAY_CLOSED_QUEUE_MAX", "10"),
                ("TICKGUARD_RELAY_OPEN_QUEUE_MAX", "20"),
                ("TICKGUARD_RELAY_BREAKER_RECOVERY_S", "1.25"),
                ("TICKGUARD_RELAY_CLOSE_DELAY_S", "1"),
                ("TICKGUARD_RELAY_STALE_AFTER_S", "5"),
                ("TICKGUARD_RELAY_HEALTH_ENABLED", "false"),
            ],
        );
        let r = &cfg.relay;
        assert!(r.enabled && !r.health_enabled);
        assert_eq!(r.exchange, Some(crate::relay::Exchange::Binance));
        assert_eq!((r.listen.port(), r.health_listen.port()), (0, 0));
        assert_eq!(r.intervals, vec![Interval::M5, Interval::M15]);
        assert_eq!(r.symbols, vec!["SOLUSDT".to_string(), "BNBUSDT".into()]);
        assert_eq!(cfg.relay_ws_url(), "ws://127.0.0.1:9000/ws");
        assert_eq!(cfg.relay_rest_url(), "http://127.0.0.1:9001");
        assert_eq!(r.token_file.as_deref(), Some(Path::new("/t")));
        assert_eq!((r.closed_queue_max, r.open_queue_max), (10, 20));
        assert_eq!(r.breaker_recovery, Duration::from_millis(1250));
        assert_eq!((r.close_delay, r.stale_after), (Duration::from_secs(1), Duration::from_secs(5)));
        // An empty value clears an optional key back to its default.
        let cfg = relay_ok("[relay]\nexchange = \"upstox\"\n", &[("TICKGUARD_RELAY_EXCHANGE", "")]);
        assert_eq!(cfg.relay.exchange, None);
        // A misspelt relay variable is an error with the suggestion.
        relay_err(
            "",
            &[("TICKGUARD_RELAY_LISTN", "127.0.0.1:1")],
            &["TICKGUARD_RELAY_LISTN", "TICKGUARD_RELAY_LISTEN"],
        );
        // systemd credentials: a relative relay.token_file names one.
        let cfg = relay_ok(
            "[relay]\ntoken_file = \"relay.token\"\n",
            &[(CREDENTIALS_DIRECTORY, "/run/credentials/tickguard.service")],
        );
        assert_eq!(
            cfg.relay.token_file.as_deref(),
            Some(Path::new("/run/credentials/tickguard.service/relay.token"))
        );
    }

    #[test]
    fn relay_values_are_checked_naming_their_key() {
        let cases: &[(&str, &[&str])] = &[
            ("enabled = \"yes\"", &["relay.enabled", "true or false"]),
            ("listen = \"localhost:8765\"", &["relay.listen", "ip:port"]),
            ("listen = 8765", &["relay.listen", "found an integer"]),
            ("health_listen = \"127.0.0.1\"", &["relay.health_listen", "ip:port"]),
            ("health_enabled = 1", &["relay.health_enabled", "true or false"]),
            ("exchange = \"kraken\"", &["relay.exchange", "binance, upstox"]),
            ("exchange = \"\"", &["relay.exchange", "must not be empty"]),
            ("ws_url = \"https://stream.binance.com\"", &["relay.ws_url", "ws://"]),
            ("rest_url = \"wss://api.binance.com\"", &["relay.rest_url", "https://"]),
            ("token_file = \"\"", &["relay.token_file", "must not be empty"]),
            ("intervals = [\"2m\"]", &["relay.intervals[0]", "\"2m\" is not an interval", "1m, 3m"]),
            ("intervals = [\"1m\", \"1m\"]", &["relay.intervals[1]", "listed twice"]),
            ("intervals = []", &["relay.intervals", "at least one interval"]),
            ("intervals = \"1m\"", &["relay.intervals", "found a string"]),
            ("symbols = [\"BTC USDT\"]", &["relay.symbols[0]"]),
            ("closed_queue_max = 0", &["relay.closed_queue_max", "from 1 to 100000"]),
            ("closed_queue_max = 100001", &["relay.closed_queue_max", "from 1 to 100000"]),
            ("open_queue_max = -1", &["relay.open_queue_max", "from 1 to 100000"]),
            ("open_queue_max = 1.5", &["relay.open_queue_max", "found a float"]),
            ("breaker_recovery_s = 0", &["relay.breaker_recovery_s", "above zero"]),
            ("close_delay_s = -1", &["relay.close_delay_s", "negative"]),
            ("stale_after_s = \"30\"", &["relay.stale_after_s", "found a string"]),
            ("stale_after_s = 86401", &["relay.stale_after_s", "at most"]),
            ("listn = \"127.0.0.1:1\"", &["relay.listn", "did you mean relay.listen"]),
        ];
        for (line, needles) in cases {
            relay_err(&format!("[relay]\n{line}\n"), &[], needles);
        }
        // Through the environment: the variable and the key.
        relay_err(
            "",
            &[("TICKGUARD_RELAY_INTERVALS", "1m,7m")],
            &["TICKGUARD_RELAY_INTERVALS", "relay.intervals", "item 1", "\"7m\""],
        );
        relay_err(
            "",
            &[("TICKGUARD_RELAY_CLOSED_QUEUE_MAX", "lots")],
            &["TICKGUARD_RELAY_CLOSED_QUEUE_MAX", "relay.closed_queue_max", "an integer from 1 to 100000"],
        );
        relay_err(
            "",
            &[("TICKGUARD_RELAY_EXCHANGE", "sim")],
            &["TICKGUARD_RELAY_EXCHANGE", "relay.exchange"],
        );
        // The symbol cap, named with its limit (checked even while the relay is off).
        let many: Vec<String> = (0..=RELAY_SYMBOLS).map(|i| format!("\"S{i}\"")).collect();
        relay_err(
            &format!("[relay]\nsymbols = [{}]\n", many.join(", ")),
            &[],
            &["relay.symbols", "129 symbols", "RELAY_SYMBOLS"],
        );
        let at_cap: Vec<String> = (0..RELAY_SYMBOLS).map(|i| format!("\"S{i}\"")).collect();
        relay_ok(&format!("[relay]\nsymbols = [{}]\n", at_cap.join(", ")), &[]);
        // The build delay must end before the next bar does.
        relay_err("[relay]\nclose_delay_s = 60\n", &[], &["relay.close_delay_s", "1m", "60 s"]);
        relay_ok("[relay]\nintervals = [\"5m\"]\nclose_delay_s = 60\n", &[]);
        // The interval cap.
        let all: Vec<String> = Interval::ALL.iter().map(|i| format!("\"{i}\"")).collect();
        relay_err(
            &format!("[relay]\nintervals = [{}]\n", all.join(", ")),
            &[],
            &["relay.intervals", "10 intervals", "RELAY_INTERVALS"],
        );
        let four: Vec<String> =
            Interval::ALL[1..=RELAY_INTERVALS].iter().map(|i| format!("\"{i}\"")).collect();
        relay_ok(&format!("[relay]\nintervals = [{}]\n", four.join(", ")), &[]);
    }

    #[test]
    fn relay_cross_key_rules_name_the_key_and_the_fix() {
        // The sockets: apart from api.listen and from each other.
        relay_err(
            &format!("{ON}listen = \"127.0.0.1:8000\"\n"),
            &[],
            &["relay.listen", "api.listen", "another port"],
        );
        relay_err(
            &format!("{ON}listen = \"0.0.0.0:8000\"\n"),
            &[],
            &["relay.listen", "takes the socket of api.listen"],
        );
        relay_err(
            &format!("{ON}health_listen = \"127.0.0.1:8000\"\n"),
            &[],
            &["relay.health_listen", "api.listen"],
        );
        relay_err(
            &format!("{ON}health_listen = \"127.0.0.1:8765\"\n"),
            &[],
            &["relay.health_listen", "relay.listen", "health_enabled = false"],
        );
        // Not enabled, health off, other addresses, ephemeral ports: accepted.
        relay_ok("[relay]\nlisten = \"127.0.0.1:8000\"\nhealth_listen = \"127.0.0.1:8000\"\n", &[]);
        relay_ok(&format!("{ON}health_enabled = false\nhealth_listen = \"127.0.0.1:8765\"\n"), &[]);
        relay_ok(&format!("{ON}listen = \"127.0.0.2:8000\"\n"), &[]);
        relay_ok(&format!("{ON}listen = \"127.0.0.1:0\"\nhealth_listen = \"127.0.0.1:0\"\n"), &[]);
        // A venue to relay.
        relay_err(
            "[relay]\nenabled = true\n",
            &[],
            &["relay.exchange", "simulator", "relay.exchange = \"binance\""],
        );
        relay_ok("[relay]\nenabled = true\nexchange = \"binance\"\n", &[]);
        // Upstox: the relay's own token file, never the feed's.
        relay_err(
            "[relay]\nenabled = true\nexchange = \"upstox\"\n",
            &[],
            &["relay.token_file", "upstox", "Upstox app or user"],
        );
        relay_err(
            "[feed]\ntoken_file = \"/etc/tickguard/upstox.token\"\n[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"/etc/tickguard/./upstox.token\"\n",
            &[],
            &["relay.token_file", "feed.token_file", "one market-data connection per app and user"],
        );
        relay_ok(
            "[feed]\ntoken_file = \"/etc/tickguard/upstox.token\"\n[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"/etc/tickguard/relay.token\"\n",
            &[],
        );
        // The same file under two names (a symlink) is the same file.
        let dir = std::env::temp_dir().join(format!("tickguard-relay-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("feed.token"), "t").expect("file");
        std::os::unix::fs::symlink(dir.join("feed.token"), dir.join("relay.token")).expect("link");
        relay_err(
            &format!(
                "[feed]\ntoken_file = \"{}\"\n[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"{}\"\n",
                dir.join("feed.token").display(),
                dir.join("relay.token").display()
            ),
            &[],
            &["relay.token_file", "feed.token_file"],
        );
        let _ = std::fs::remove_dir_all(&dir);
        // A disabled Upstox relay is not checked.
        relay_ok("[relay]\nexchange = \"upstox\"\n", &[]);
        // An enabled Upstox relay's REST URL carries its token: https (or loopback) only.
        let cfg = relay_ok(
            "[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"/r\"\nrest_url = \"http://upstox.example\"\n",
            &[],
        );
        let p = outbound_problems(&cfg);
        assert!(p.iter().any(|p| p.key == "relay.rest_url" && p.message.contains("https://")), "{p:?}");
        let cfg = relay_ok(
            "[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"/r\"\nrest_url = \"http://127.0.0.1:9\"\n",
            &[],
        );
        assert!(outbound_problems(&cfg).is_empty());
    }

    #[test]
    fn connector_names_map_onto_relay_keys() {
        // Every name of the table is a relay key of the schema.
        for (var, key) in CONNECTOR_ENV {
            assert!(var.starts_with("CONNECTOR_") && key.starts_with("relay."), "{var} {key}");
            assert!(spec_of(key).is_some(), "{key}");
            assert!(DOCS.contains(&format!("| `{var}` | `{key}` |")), "{var} not documented");
        }
        let text = "[relay]\nlisten = \"0.0.0.0:1\"\nhealth_listen = \"192.168.1.5:2\"\n";
        let cfg = relay_ok(
            text,
            &[
                ("CONNECTOR_WSS_PORT", "9765"),
                ("CONNECTOR_WSS_HEALTH_CHECK_PORT", " 9766 "),
                ("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "false"),
                ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "500"),
                ("CONNECTOR_OPEN_QUEUE_MAXSIZE", "2500"),
                ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "60.0"),
            ],
        );
        let r = &cfg.relay;
        // The ports change, the hosts are kept.
        assert_eq!(r.listen, "0.0.0.0:9765".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r.health_listen, "192.168.1.5:9766".parse::<SocketAddr>().expect("addr"));
        assert!(!r.health_enabled);
        assert_eq!((r.closed_queue_max, r.open_queue_max), (500, 2500));
        assert_eq!(r.breaker_recovery, Duration::from_secs(60));
        assert!(!r.enabled, "the connector's names do not enable the relay");
        // The default host, and the other spellings of the boolean.
        let cfg = relay_ok("", &[("CONNECTOR_WSS_PORT", "8865")]);
        assert_eq!(cfg.relay.listen, "127.0.0.1:8865".parse::<SocketAddr>().expect("addr"));
        for (v, want) in [("1", true), ("0", false), ("True", true), ("FALSE", false), ("true", true)] {
            let cfg =
                relay_ok("[relay]\nhealth_enabled = false\n", &[("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", v)]);
            assert_eq!(cfg.relay.health_enabled, want, "{v}");
        }
        let cfg = relay_ok("", &[("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "2.5")]);
        assert_eq!(cfg.relay.breaker_recovery, Duration::from_millis(2500));
        // The environment beats the file.
        let cfg = relay_ok("[relay]\nclosed_queue_max = 100\n", &[("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "200")]);
        assert_eq!(cfg.relay.closed_queue_max, 200);
    }

    #[test]
    fn tickguard_names_win_over_connector_names() {
        // Whatever the order of the environment.
        let pairs: [[(&str, &str); 2]; 6] = [
            [("CONNECTOR_WSS_PORT", "9000"), ("TICKGUARD_RELAY_LISTEN", "127.0.0.3:9100")],
            [
                ("CONNECTOR_WSS_HEALTH_CHECK_PORT", "9001"),
                ("TICKGUARD_RELAY_HEALTH_LISTEN", "127.0.0.3:9101"),
            ],
            [("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "false"), ("TICKGUARD_RELAY_HEALTH_ENABLED", "true")],
            [("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "500"), ("TICKGUARD_RELAY_CLOSED_QUEUE_MAX", "700")],
            [("CONNECTOR_OPEN_QUEUE_MAXSIZE", "500"), ("TICKGUARD_RELAY_OPEN_QUEUE_MAX", "900")],
            [
                ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "60.0"),
                ("TICKGUARD_RELAY_BREAKER_RECOVERY_S", "5"),
            ],
        ];
        for pair in pairs {
            for env in [pair.to_vec(), pair.iter().rev().copied().collect::<Vec<_>>()] {
                let r = relay_ok("", &env).relay;
                match pair[0].0 {
                    "CONNECTOR_WSS_PORT" => assert_eq!(r.listen, "127.0.0.3:9100".parse().expect("addr")),
                    "CONNECTOR_WSS_HEALTH_CHECK_PORT" => {
                        assert_eq!(r.health_listen, "127.0.0.3:9101".parse().expect("addr"))
                    }
                    "CONNECTOR_WSS_HEALTH_CHECK_ENABLED" => assert!(r.health_enabled),
                    "CONNECTOR_CLOSED_QUEUE_MAXSIZE" => assert_eq!(r.closed_queue_max, 700),
                    "CONNECTOR_OPEN_QUEUE_MAXSIZE" => assert_eq!(r.open_queue_max, 900),
                    _ => assert_eq!(r.breaker_recovery, Duration::from_secs(5)),
                }
            }
        }
    }

    #[test]
    fn bad_connector_values_name_the_variable_and_the_key() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("CONNECTOR_WSS_PORT", "87650", "relay.listen", "port from 1 to 65535"),
            ("CONNECTOR_WSS_PORT", "0", "relay.listen", "port from 1 to 65535"),
            ("CONNECTOR_WSS_PORT", "127.0.0.1:8765", "relay.listen", "port"),
            (
                "CONNECTOR_WSS_HEALTH_CHECK_PORT",
                "http",
                "relay.health_listen",
                "CONNECTOR_WSS_HEALTH_CHECK_PORT=8766",
            ),
            ("CONNECTOR_WSS_HEALTH_CHECK_ENABLED", "yes", "relay.health_enabled", "true or false"),
            ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "0", "relay.closed_queue_max", "from 1 to 100000"),
            ("CONNECTOR_CLOSED_QUEUE_MAXSIZE", "500.0", "relay.closed_queue_max", "integer"),
            ("CONNECTOR_OPEN_QUEUE_MAXSIZE", "200000", "relay.open_queue_max", "from 1 to 100000"),
            ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "1m", "relay.breaker_recovery_s", "seconds"),
            ("CONNECTOR_CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "0", "relay.breaker_recovery_s", "above zero"),
        ];
        for (var, value, key, what) in cases {
            let msg = relay_err("", &[(var, value)], &[var, key, what]);
            assert!(msg.starts_with(&format!("environment {var}=")), "{msg}");
        }
        // Even when a TICKGUARD_* variable sets the same key: a bad value is a mistake to fix.
        relay_err(
            "",
            &[("CONNECTOR_WSS_PORT", "x"), ("TICKGUARD_RELAY_LISTEN", "127.0.0.1:9000")],
            &["CONNECTOR_WSS_PORT", "relay.listen"],
        );
        // Other CONNECTOR_* names are not ours: left alone.
        relay_ok("", &[("CONNECTOR_LOG_LEVEL", "debug"), ("CONNECTOR_EXCHANGES", "binance")]);
    }

    #[test]
    fn seconds_round_to_microseconds() {
        assert!(matches!(secs(0.2, false), Ok(Val::Secs(d)) if d == Duration::from_millis(200)));
        assert!(matches!(secs(1.5, false), Ok(Val::Secs(d)) if d == Duration::from_millis(1500)));
        assert!(secs(0.0, false).is_err());
        assert!(matches!(secs(0.0, true), Ok(Val::Secs(d)) if d.is_zero()));
        assert!(secs(-1.0, true).is_err());
        assert!(secs(f64::NAN, true).is_err());
        assert!(secs(MAX_SECS + 1.0, true).is_err());
        assert_eq!(fmt_secs(Duration::from_millis(1500)), "1.5");
        assert_eq!(fmt_secs(Duration::from_secs(300)), "300");
    }
}
