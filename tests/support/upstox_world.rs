//! The loopback Upstox world of the binary's Upstox tests (`tests/upstox_edge.rs`,
//! `tests/protection_upstox.rs`): a [`Loopback`] (directory, CA, the system resolver and one
//! fallback), the fake Upstox feed and LTP quote ([`UpstoxFake`] on `api.upstox.test` and
//! `feed.upstox.test`) pricing the seed incident's instruments, the access token file, and the
//! configuration writer. Everything on 127.0.0.1.

use std::path::PathBuf;

use super::edge_world::Loopback;
use super::upstox_feed::{TOKEN, UpstoxFake};

/// BOSCHLTD's instrument key.
pub const BOSCH_KEY: &str = "NSE_EQ|INE323A01026";
/// ADANIENT's instrument key.
pub const ADANI_KEY: &str = "NSE_EQ|INE423A01024";
/// KAYNES's instrument key.
pub const KAYNES_KEY: &str = "NSE_EQ|INE918Z01012";

/// The world of one test.
pub struct UpstoxWorld {
    /// Directory, CA, DNS chain (one fallback).
    pub net: Loopback,
    /// The feed (authorize, LTP quote, Market Data Feed V3).
    pub up: UpstoxFake,
    /// `feed.token_file`, holding the fake's access token.
    pub token_file: PathBuf,
}

impl std::ops::Deref for UpstoxWorld {
    type Target = Loopback;
    fn deref(&self) -> &Loopback {
        &self.net
    }
}

/// What the Upstox tests' configurations differ in.
pub struct UpstoxSetup<'a> {
    /// `api.listen` port.
    pub api_port: u16,
    /// Whether the API has a `token_file` ([`super::edge_world::API_TOKEN`]).
    pub api_token: bool,
    /// `feed.market_hours`.
    pub market_hours: &'a str,
    /// More `[feed]` lines.
    pub extra_feed: &'a str,
    /// `cache.stale_after_s`.
    pub stale_after_s: f64,
    /// The body of `[broker]`.
    pub broker: &'a str,
    /// The `[[positions]]`.
    pub positions: &'a str,
}

impl UpstoxWorld {
    /// Starts the servers: BOSCHLTD at 730, ADANIENT at 2350, KAYNES at 5400; every feed
    /// connection is told these segments' `market` status first.
    pub async fn start(name: &str, market: &[(&str, i32)]) -> UpstoxWorld {
        let net = Loopback::start(name, 1).await;
        let up = UpstoxFake::start(
            net.ca.server_config(&["api.upstox.test"]),
            net.ca.server_config(&["feed.upstox.test"]),
            "feed.upstox.test",
        )
        .await;
        up.set_price(BOSCH_KEY, "BOSCHLTD", 730.0);
        up.set_price(ADANI_KEY, "ADANIENT", 2350.0);
        up.set_price(KAYNES_KEY, "KAYNES", 5400.0);
        up.set_market_on_connect(Some(market.to_vec()));
        let token_file = net.dir.join("upstox.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        UpstoxWorld { net, up, token_file }
    }

    /// Writes a configuration (the fake's LTP quote and feed, the three instrument keys,
    /// `KAYNES` watched, the DNS chain, the CA, `[sim] seed = 7`) and returns its path.
    pub fn config(&self, s: &UpstoxSetup) -> PathBuf {
        let api_token = if s.api_token {
            format!("token_file = \"{}\"\n", self.write_api_token().display())
        } else {
            String::new()
        };
        let text = format!(
            r#"
[api]
listen = "127.0.0.1:{api}"
{api_token}
[feed]
venue = "upstox"
rest_url = "{rest}"
token_file = "{token}"
instruments = ["KAYNES"]
silence_timeout_s = 1
reconnect_initial_s = 0.2
reconnect_max_s = 1.5
rest_poll_s = 0.3
market_hours = "{hours}"
{extra}

[feed.instrument_keys]
BOSCHLTD = "{BOSCH_KEY}"
ADANIENT = "{ADANI_KEY}"
KAYNES = "{KAYNES_KEY}"

{dns_tls}
[cache]
stale_after_s = {stale}
expire_after_s = 20
blind_grace_s = 5

[broker]
{broker}

[store]
dir = "{store}"

[sim]
seed = 7
{positions}
"#,
            api = s.api_port,
            rest = self.up.rest_url("api.upstox.test"),
            token = self.token_file.display(),
            hours = s.market_hours,
            extra = s.extra_feed,
            dns_tls = self.dns_tls_toml(),
            stale = s.stale_after_s,
            broker = s.broker,
            store = self.state_dir().display(),
            positions = s.positions,
        );
        self.write_config(&text)
    }
}
