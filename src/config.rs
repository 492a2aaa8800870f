//! Configuration: one TOML file plus `TICKGUARD_<SECTION>_<KEY>` environment overrides.
//! (Being written: see docs/configuration.md.)

use std::path::PathBuf;

/// A configuration problem. Exit code 78.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {}

/// Loads `path` (or nothing: every key has a default) and applies `env` overrides.
pub fn load(
    path: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let _ = (path, env.into_iter().count());
    Ok(Config {})
}
