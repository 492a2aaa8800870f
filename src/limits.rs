//! Every capacity of tickguard, in one place.
//!
//! Memory is fixed after start-up: each bounded structure takes its size from here, and a
//! configuration asking for more is a start-up error naming the capacity. Changing a number
//! here is the only way to change how much the appliance can hold.

/// Instruments the price cache can hold (a power of two: the cache's symbol index is a
/// heapless FNV index map).
pub const MAX_INSTRUMENTS: usize = 1024;
/// Positions the book can hold at once (open, closing, or closed and not yet evicted).
pub const MAX_POSITIONS: usize = 256;
/// Slots of the feed's symbol index (`feed::symbols`): a power of two, at least twice
/// [`MAX_INSTRUMENTS`] so that open addressing stays at most half full.
pub const SYMBOL_SLOTS: usize = 2 * MAX_INSTRUMENTS;
/// Longest instrument symbol, in bytes (`BTCUSDT`, `BOSCHLTD`, `NIFTY24DEC24000CE`).
pub const SYMBOL_MAX: usize = 32;
/// Longest position id, in bytes, of `[A-Za-z0-9_-]`.
pub const POSITION_ID_MAX: usize = 20;
/// Longest broker client order id (Binance: `^[a-zA-Z0-9-_]{1,36}$`).
pub const CLIENT_ID_MAX: usize = 36;
/// Notices one engine call can return beyond which they are counted as dropped.
/// Sized so that every position can report two events in one call (a gap through all of them).
pub const NOTICE_CAP: usize = 2 * MAX_POSITIONS + 64;
/// Closes remembered for the status page and the demo summary.
pub const RECENT_CLOSES: usize = 32;
/// Commands (API, operator, broker reports, feed events) waiting for the engine. Senders wait
/// when it is full: commands are never dropped.
pub const COMMAND_QUEUE: usize = 64;
/// Consecutive REST errors or timeouts after which an instrument's REST source counts as failing.
pub const REST_FAILING_AFTER: u8 = 3;
/// Closed positions the journal remembers (so a configured position closed before a restart
/// is never reopened); the oldest are forgotten first.
pub const CLOSED_REMEMBERED: usize = 4096;
/// Largest journal record accepted when reading (a larger length field is a torn tail).
pub const MAX_RECORD: usize = 4096;
/// Journal size past which it is compacted into a snapshot.
pub const MAX_JOURNAL_BYTES: u64 = 1024 * 1024;
