//! The relay's settings (`relay::RelaySettings`) from a loaded configuration: `[relay]`, with
//! the feed's reconnect and silence periods (the relay's upstream uses the same session
//! driver).

use std::time::Duration;

use crate::config::Config;
use crate::net::http::Endpoint;
use crate::relay::{OriginRule, RelaySettings};

/// How long clients have to get their close frame on SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

impl RelaySettings {
    /// The relay of a loaded (and checked) configuration. `origin_rule` is the control plane's
    /// `Host`/`Origin` rule; `seed` seeds the relay's jitter and masks. An error (a venue
    /// missing, an endpoint that does not parse) names the key; it disables the relay, never
    /// the guard.
    pub fn from_config(
        cfg: &Config,
        origin_rule: Option<OriginRule>,
        seed: u64,
    ) -> Result<RelaySettings, String> {
        let r = &cfg.relay;
        let exchange = cfg.relay_exchange().ok_or_else(|| {
            "relay.exchange: not set and feed.venue is the simulator; set relay.exchange = \"binance\" or \"upstox\""
                .to_string()
        })?;
        let endpoint =
            |key: &str, url: &str| Endpoint::parse(url).map_err(|e| format!("{key} = {url:?}: {e}"));
        let ws = endpoint("relay.ws_url", cfg.relay_ws_url())?;
        let rest = endpoint("relay.rest_url", cfg.relay_rest_url())?;
        Ok(RelaySettings {
            listen: r.listen,
            health_listen: r.health_enabled.then_some(r.health_listen),
            exchange,
            ws,
            rest,
            token_file: r.token_file.clone(),
            instrument_keys: cfg.feed.instrument_keys.clone(),
            read_token: |p| crate::config::read_secret(p).map_err(|e| e.to_string()),
            intervals: r.intervals.clone(),
            symbols: r.symbols.clone(),
            closed_queue_max: r.closed_queue_max,
            open_queue_max: r.open_queue_max,
            breaker_recovery: r.breaker_recovery,
            close_delay: r.close_delay,
            stale_after: r.stale_after,
            silence_timeout: cfg.feed.silence_timeout,
            reconnect_initial: cfg.feed.reconnect_initial,
            reconnect_max: cfg.feed.reconnect_max,
            shutdown_grace: SHUTDOWN_GRACE,
            origin_rule,
            seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use super::*;
    use crate::relay::Exchange;
    use crate::relay::candle::Interval;

    fn cfg(text: &str) -> Config {
        crate::config::parse_str(text, "t", Vec::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_over_a_binance_feed() {
        let c = cfg("[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\nsymbols = [\"btcusdt\"]\n");
        let s = RelaySettings::from_config(&c, None, 7).expect("settings");
        assert_eq!(s.listen, "127.0.0.1:8765".parse::<SocketAddr>().expect("addr"));
        assert_eq!(s.health_listen, Some("127.0.0.1:8766".parse::<SocketAddr>().expect("addr")));
        assert_eq!(s.exchange, Exchange::Binance);
        // The feed's venue: the feed's endpoints.
        assert_eq!(s.ws, Endpoint::parse(&c.feed.ws_url).expect("ws"));
        assert_eq!(s.rest, Endpoint::parse(&c.feed.rest_url).expect("rest"));
        assert_eq!(s.intervals, vec![Interval::M1]);
        assert_eq!(s.symbols, vec!["BTCUSDT".to_string()]);
        assert_eq!((s.closed_queue_max, s.open_queue_max), (1000, 2000));
        assert_eq!(s.breaker_recovery, Duration::from_secs(60));
        assert_eq!(s.close_delay, Duration::from_secs(2));
        assert_eq!(s.stale_after, Duration::from_secs(30));
        assert_eq!(s.silence_timeout, c.feed.silence_timeout);
        assert_eq!(s.reconnect_initial, c.feed.reconnect_initial);
        assert_eq!(s.reconnect_max, c.feed.reconnect_max);
        assert_eq!(s.shutdown_grace, Duration::from_secs(2));
        assert!(s.origin_rule.is_none() && s.token_file.is_none());
        assert_eq!(s.seed, 7);
    }

    #[test]
    fn another_venue_takes_its_own_defaults_and_the_keys_as_set() {
        let c = cfg(
            "[relay]\nenabled = true\nexchange = \"binance\"\nhealth_enabled = false\nintervals = [\"5m\", \"1h\"]\nclosed_queue_max = 500\nopen_queue_max = 4000\nbreaker_recovery_s = 1.5\n[feed]\nreconnect_initial_s = 0.5\n",
        );
        let rule: OriginRule = Arc::new(|_, _| true);
        let s = RelaySettings::from_config(&c, Some(rule), 1).expect("settings");
        assert_eq!(s.ws, Endpoint::parse("wss://stream.binance.com:9443/ws").expect("ws"));
        assert_eq!(s.rest, Endpoint::parse("https://api.binance.com").expect("rest"));
        assert_eq!(s.health_listen, None);
        assert_eq!(s.intervals, vec![Interval::M5, Interval::H1]);
        assert_eq!((s.closed_queue_max, s.open_queue_max), (500, 4000));
        assert_eq!(s.breaker_recovery, Duration::from_millis(1500));
        assert_eq!(s.reconnect_initial, Duration::from_millis(500));
        assert!(s.origin_rule.is_some_and(|r| r(None, None)));

        let c = cfg(
            "[relay]\nenabled = true\nexchange = \"binance\"\nws_url = \"ws://127.0.0.1:9000/ws\"\nrest_url = \"http://127.0.0.1:9001\"\n",
        );
        let s = RelaySettings::from_config(&c, None, 1).expect("settings");
        assert_eq!((s.ws.host.as_str(), s.ws.port, s.ws.tls), ("127.0.0.1", 9000, false));
        assert_eq!((s.rest.host.as_str(), s.rest.port), ("127.0.0.1", 9001));
    }

    #[test]
    fn an_upstox_relay_over_a_binance_feed() {
        let c = cfg(
            "[feed]\nvenue = \"binance\"\n[relay]\nenabled = true\nexchange = \"upstox\"\ntoken_file = \"/etc/tickguard/relay.token\"\nsymbols = [\"NSE_EQ|INE323A01026\", \"Boschltd\"]\n",
        );
        let s = RelaySettings::from_config(&c, None, 1).expect("settings");
        assert_eq!(s.exchange, Exchange::Upstox);
        assert_eq!(s.rest, Endpoint::parse("https://api.upstox.com").expect("rest"));
        assert_eq!(s.token_file.as_deref(), Some(std::path::Path::new("/etc/tickguard/relay.token")));
        // Upstox symbols and keys are kept as written.
        assert_eq!(s.symbols, vec!["NSE_EQ|INE323A01026".to_string(), "Boschltd".into()]);
    }

    #[test]
    fn no_venue_is_an_error_naming_the_key() {
        // A disabled relay over the simulator loads; its settings cannot be made.
        let c = cfg("");
        let e = RelaySettings::from_config(&c, None, 1).expect_err("no venue");
        assert!(e.contains("relay.exchange"), "{e}");
    }
}
