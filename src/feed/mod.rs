//! Venue feeds. One session driver ([`session::run`]: resolve, connect, TLS, upgrade, paced
//! subscriptions, heartbeat, silence, jittered reconnect, rotation, yield) and one REST
//! fallback poller ([`rest::run`]: period, breaker, batches and their splitting, refused
//! names, per-instrument status, counters) serve every venue; [`binance`] and [`upstox`] hold
//! only what differs (endpoints and the authorize step, subscription messages, frame decoding,
//! how a request is asked and read). The feed edge imports neither `config` nor `runtime`:
//! `runtime::edge` fills its settings from the configuration.

pub mod binance;
pub mod calendar;
pub mod error;
pub mod json;
pub mod rest;
pub mod scan;
pub mod session;
pub mod symbols;
pub mod upstox;
pub mod upstox_proto;
pub mod venue_symbols;
