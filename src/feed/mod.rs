//! Venue feeds: decoders (sans-IO) and, later, the sessions that carry them.

pub mod binance;
pub mod calendar;
pub mod json;
pub mod rest;
pub mod scan;
pub mod session;
pub mod symbols;
pub mod upstox;
pub mod upstox_proto;
pub mod venue_symbols;
