//! `tickguard run` (placeholder while the configuration module lands).
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;

/// Summary.
pub fn summary(_cfg: &Config) -> String {
    String::new()
}

/// Run.
pub async fn run(_path: &Path) -> ExitCode {
    ExitCode::from(1)
}
