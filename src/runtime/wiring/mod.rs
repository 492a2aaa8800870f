//! Wiring: every edge's settings struct filled from the loaded configuration (`from_config`).
//! The edges know only their own settings; `config` knows the file; this is where the two
//! meet, above both.

pub mod broker;
pub mod control;
mod relay;
