//! # tickguard
//!
//! A risk watchdog appliance. It watches market data for the instruments of open positions
//! and closes a position through the broker when its stop-loss or take-profit is touched,
//! falling back from the live feed to REST, then to cached prices, and alerting loudly when it
//! is blind.
//!
//! What it promises:
//! - every price carries its receive (or REST send) time and source, and an expired price is
//!   never acted on;
//! - a crossed position gets exactly one close decision, and never two orders that may both be
//!   working;
//! - memory is fixed after start-up: every capacity is a constant in [`limits`];
//! - the per-tick path (decode, cache, judge) does not allocate.
//!
//! What it never does: guess a price it cannot date, silently leave a position unprotected,
//! or retry a close whose outcome is unknown without looking it up first.
//!
//! The [`core`] is sans-IO; the runtime ([`runtime`]) owns the clock, the channels and the
//! edges.
// `unsafe` is denied everywhere but in `feed::scan` (vector loads), where each block says
// why it is sound.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod broker;
pub mod bus;
pub mod config;
pub mod control;
pub mod core;
pub mod feed;
pub mod indicator;
pub mod limits;
pub mod net;
pub mod relay;
pub mod runtime;
pub mod store;
