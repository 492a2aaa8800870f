//! Venue feeds: decoders (sans-IO) and, later, the sessions that carry them.

pub mod binance;
pub mod json;
pub mod rest;
pub mod session;
