//! The sans-IO protection core: plain Rust over fixed-size (heapless) types.
//!
//! Nothing here performs IO, reads a clock, draws OS randomness or allocates after
//! construction: time is an argument ([`time::Timestamp`]), randomness is a seeded
//! generator ([`backoff::Rng`]), and every collection has a compile-time capacity
//! ([`crate::limits`]). The edges (feed, broker, store, control, indicator) feed events in
//! and carry the returned actions out.

pub mod backoff;
pub mod book;
pub mod cache;
pub mod engine;
pub mod price;
pub mod spec;
pub mod time;
pub mod types;

use core::fmt;

/// Why the core refused something. Small and `Copy`; the edges add context (key, field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreError {
    /// The book holds its maximum of open positions.
    BookFull {
        /// The capacity.
        capacity: usize,
    },
    /// The cache holds its maximum of instruments.
    CacheFull {
        /// The capacity.
        capacity: usize,
    },
    /// Empty, too long, or otherwise unusable symbol.
    BadSymbol,
    /// Position id empty, too long, or not `[A-Za-z0-9_-]`.
    BadId,
    /// Quantity not positive.
    BadQuantity,
    /// A price not positive.
    BadPrice,
    /// A long's stop at or above its target, or a short's at or below.
    BadLevels,
    /// Another position has this id with a different spec.
    DuplicateId,
    /// No such position.
    UnknownPosition,
    /// The position is not open (closing or closed).
    NotOpen,
    /// The position has not failed to close.
    NotCloseFailed,
    /// An order for the position may still be working.
    OrderInFlight,
    /// The instrument cannot join the watch set: `limit` instruments are watched already
    /// (`MAX_INSTRUMENTS` or `feed.max_subscriptions`).
    WatchFull {
        /// The limit reached.
        limit: usize,
    },
    /// The id belongs to a position that has closed: a new registration needs a new id.
    Closed,
    /// A settlement named an attempt other than the position's current one.
    WrongAttempt {
        /// The current attempt.
        current: u16,
    },
    /// The engine task has stopped (shutting down).
    EngineStopped,
    /// Accepted, but the journal could not record it: not acknowledged as durable (the
    /// position is protected in memory; retry the request).
    NotDurable,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::BookFull { capacity } => write!(f, "position book full (capacity {capacity})"),
            CoreError::CacheFull { capacity } => write!(f, "instrument cache full (capacity {capacity})"),
            CoreError::BadSymbol => write!(f, "symbol must be 1 to {} bytes", crate::limits::SYMBOL_MAX),
            CoreError::BadId => write!(
                f,
                "position id must be 1 to {} characters of A-Z a-z 0-9 _ -",
                crate::limits::POSITION_ID_MAX
            ),
            CoreError::BadQuantity => write!(f, "quantity must be positive"),
            CoreError::BadPrice => write!(f, "prices must be positive"),
            CoreError::BadLevels => write!(
                f,
                "levels inverted: a long's stop_loss must be below its take_profit, a short's above"
            ),
            CoreError::DuplicateId => write!(f, "a different position already has this id"),
            CoreError::UnknownPosition => write!(f, "no such position"),
            CoreError::NotOpen => write!(f, "position is not open (closing or closed)"),
            CoreError::NotCloseFailed => write!(f, "position is not in close_failed"),
            CoreError::OrderInFlight => write!(f, "an order for this position may still be working"),
            CoreError::WatchFull { limit } => {
                write!(f, "watch set full: {limit} instruments are watched already (the limit)")
            }
            CoreError::Closed => write!(f, "position is closed; register with a new id"),
            CoreError::WrongAttempt { current } => {
                write!(f, "that is not the current attempt (the current attempt is {current})")
            }
            CoreError::EngineStopped => write!(f, "the engine has stopped"),
            CoreError::NotDurable => {
                write!(f, "protected in memory but not written to the journal (store failing); retry")
            }
        }
    }
}

impl std::error::Error for CoreError {}
