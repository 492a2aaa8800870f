//! The brokers' settings from a loaded configuration: [`BinanceConfig`], the Binance
//! [`Credentials`] and [`UpstoxConfig`] (with its token). The broker modules hold only their
//! settings structs and import neither `config` nor `runtime`.

use std::sync::Arc;

use crate::broker::Secret;
use crate::broker::binance::{BinanceConfig, Credentials, MAX_RECV_WINDOW};
use crate::broker::upstox::UpstoxConfig;
use crate::config::{Config, ConfigError, read_secret};
use crate::feed::upstox::InstrumentMap;
use crate::net::http::Endpoint;

impl BinanceConfig {
    /// From `broker.rest_url` and `broker.recv_window_ms`.
    pub fn from_config(cfg: &Config) -> Result<BinanceConfig, ConfigError> {
        let rest = Endpoint::parse(&cfg.broker.rest_url).map_err(|e| ConfigError::Invalid {
            key: "broker.rest_url".into(),
            value: cfg.broker.rest_url.clone(),
            problem: e,
            fix: "set it like rest_url = \"https://api.binance.com\"".into(),
        })?;
        let mut c = BinanceConfig::new(rest);
        c.recv_window = cfg.broker.recv_window.min(MAX_RECV_WINDOW);
        c.symbols = cfg.watched_symbols();
        Ok(c)
    }
}

impl Credentials {
    /// Reads both files ([`read_secret`]); a missing key names the key to set.
    pub fn from_config(cfg: &Config) -> Result<Credentials, ConfigError> {
        let need = |key: &str, p: &Option<std::path::PathBuf>| {
            p.clone().ok_or_else(|| ConfigError::Missing {
                key: key.into(),
                fix: format!(
                    "broker.kind = \"binance\" signs its orders: set {key} to a file holding the {}",
                    if key.ends_with("key_file") { "API key" } else { "API secret" }
                ),
            })
        };
        let key = need("broker.key_file", &cfg.broker.key_file)?;
        let secret = need("broker.secret_file", &cfg.broker.secret_file)?;
        Ok(Credentials {
            api_key: Secret::new(read_secret(&key)?),
            secret: Secret::new(read_secret(&secret)?),
        })
    }
}

impl UpstoxConfig {
    /// From `broker.order_url`, `broker.rest_url`, `broker.token_file` (else
    /// `feed.token_file`) and the positions' `product`; `instrument_keys` is the shared
    /// venue-instrument map ([`InstrumentMap::from_config`]).
    pub fn from_config(
        cfg: &Config,
        instrument_keys: Arc<InstrumentMap>,
    ) -> Result<UpstoxConfig, ConfigError> {
        let ep = |key: &str, url: &str| {
            Endpoint::parse(url).map_err(|e| ConfigError::Invalid {
                key: key.into(),
                value: url.into(),
                problem: e,
                fix: "write an https:// URL".into(),
            })
        };
        let mut c = UpstoxConfig::new(
            ep("broker.order_url", &cfg.broker.order_url)?,
            ep("broker.rest_url", &cfg.broker.rest_url)?,
        );
        c.token_file = cfg.broker.token_file.clone().or_else(|| cfg.feed.token_file.clone());
        if c.token_file.is_none() {
            return Err(ConfigError::Missing {
                key: "broker.token_file".into(),
                fix: "broker.kind = \"upstox\" needs an access token: set broker.token_file (or feed.token_file)".into(),
            });
        }
        c.instrument_keys = instrument_keys;
        c.read_secret = |p| read_secret(p).map_err(|e| e.to_string());
        c.products = cfg.position_products.iter().map(|(id, p)| (id.to_string(), *p)).collect();
        Ok(c)
    }

    /// Reads the token file.
    pub fn read_token(&self) -> Result<Secret, ConfigError> {
        match &self.token_file {
            Some(p) => read_secret(p).map(Secret::new),
            None => Err(ConfigError::Missing {
                key: "broker.token_file".into(),
                fix: "set broker.token_file (or feed.token_file)".into(),
            }),
        }
    }
}
