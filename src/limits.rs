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
/// Most bytes READ of one `exchangeInfo` answer for the venue's symbol list
/// (`feed::venue_symbols`): Binance's whole spot list with every filter is about 10-15 MB,
/// read once a day. A bound on bytes read (and on the stored list's file size), not on memory:
/// the answer is streamed, never held whole (see [`EXCHANGE_INFO_CHUNK`] and
/// [`EXCHANGE_INFO_CARRY_MAX`] for the memory it takes).
pub const EXCHANGE_INFO_MAX_BYTES: usize = 48 * 1024 * 1024;
/// Most symbols kept from the venue's list (Binance lists about 3,500 spot symbols).
pub const VENUE_SYMBOLS_MAX: usize = 20_000;
/// Symbols the REST poller remembers as refused by the venue (`-1121`), left out of its batch
/// and re-tried one by one now and then: every instrument the cache can hold, so that every
/// offender is remembered.
pub const REST_REFUSED_MAX: usize = MAX_INSTRUMENTS;
/// Requests one REST poll may send while splitting batches refused for one of their symbols;
/// chunks left over count as REST errors for that poll and are asked for again at the next.
pub const REST_SPLIT_REQUESTS_MAX: usize = 64;
/// Closed position ids the journal remembers after the positions themselves are pruned
/// ([`CLOSED_REMEMBERED`]): how and when each closed, so that re-registering a closed id is
/// refused and a `[[positions]]` entry that closed long ago is never registered (and sold)
/// again. About 40 bytes each in memory (the id packed into 16 bytes), about 1.3 MiB when full,
/// and at most about 20 bytes each in the snapshot; the oldest closes are forgotten first.
pub const CLOSED_TOMBSTONES: usize = 32_768;
/// Symbols one Upstox instrument key can be watched under at once (a configured symbol and
/// the key registered as a symbol of its own); each gets the key's live prices.
pub const UPSTOX_KEY_SYMBOLS_MAX: usize = 4;
/// Upstox LTP requests in one poll, splitting refused batches included (`feed::upstox`).
pub const LTP_REQUESTS_PER_POLL: usize = 64;
/// Largest piece of the `exchangeInfo` answer in memory at once: the HTTP client's read buffer
/// (hyper's, bounded to this) and the pieces handed to the symbol-list scanner
/// (`feed::venue_symbols::ExchangeInfoScanner`). At least 8 KiB (hyper's minimum).
pub const EXCHANGE_INFO_CHUNK: usize = 32 * 1024;
/// The symbol-list scanner's carry-over buffer: the one `symbols[]` entry being read, kept
/// across chunk boundaries until it is whole (a Binance spot entry with every filter and
/// permission set is about 2-4 KB). An entry larger than this fails the fetch (the stored list
/// stays in use). With [`EXCHANGE_INFO_CHUNK`], the memory bound of one fetch besides the list.
pub const EXCHANGE_INFO_CARRY_MAX: usize = 64 * 1024;

/// Connections the API holds open at once (besides [`API_WAITING`]); each costs a task and
/// its buffers (about 30 KiB over TLS), never a thread.
pub const API_CONNECTIONS: usize = 128;
/// Connections one address may hold open (a browser opens about 6).
pub const API_CONNECTIONS_PER_PEER: usize = 16;
/// Connections past the caps that may still show the token and make room.
pub const API_WAITING: usize = 32;
/// Response bytes the API has in flight at once, over all connections.
pub const API_RESPONSE_BUDGET: usize = 4 * 1024 * 1024;
/// Addresses the API remembers (anonymous rate, failed credentials).
pub const API_PEERS: usize = 1024;
/// Threads of the engine runtime's blocking pool (journal writes on the close path); more
/// writes at once queue.
pub const ENGINE_BLOCKING_THREADS: usize = 4;

/// Idle kept-alive connections the brokers' pool keeps per host (`net::http::Pool`): enough
/// for a few closes at once; more at once open more, and the extra ones close when idle.
pub const BROKER_POOL_IDLE_PER_HOST: usize = 4;
/// An idle pooled broker connection is closed after this long unused. Longer than
/// [`BROKER_KEEP_WARM`], so the connection the keep-warm request uses never expires here.
pub const BROKER_POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(55);
/// Period of the brokers' keep-warm request (Binance `GET /api/v3/time`, Upstox
/// `GET /v2/user/profile`): well under the idle timeouts of the venues' front ends (60 s
/// and more for AWS and Cloudflare load balancers), so the pooled connection a close uses
/// is already open and its TLS session set up.
pub const BROKER_KEEP_WARM: std::time::Duration = std::time::Duration::from_secs(15);
/// Period of the background refresh of the Binance account balances (also refreshed after
/// every fill).
pub const BROKER_BALANCE_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);
/// A close is sized from the cached balance when it is younger than this (no request on the
/// close path); an older one is read again within the prepare budget (1.5 s), as before.
pub const BROKER_BALANCE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(30);
/// Batches the journal's writer thread holds queued (engine notices and commands, executor
/// intents and outcomes). The worst burst is a gap that decides every position at once: one
/// batch from the engine, then an intent and an outcome per position (2 × `MAX_POSITIONS`),
/// plus the commands and broker reports in flight (`COMMAND_QUEUE` each). Twice that, so a
/// burst never makes a submitter (the engine above all) wait for the disk; a batch is a few
/// hundred bytes, so a full queue is ~1 MiB at most.
pub const JOURNAL_QUEUE: usize = 2 * (2 * MAX_POSITIONS + 2 * COMMAND_QUEUE);
/// Configured positions registered at start-up without waiting for each answer: the journal
/// writer commits them together (one fsync per group instead of one per position), while the
/// waiting replies (one task each) stay bounded.
pub const STARTUP_REGISTRATIONS_IN_FLIGHT: usize = 32;

// ----- the LAN relay (src/relay) -----

/// Symbols the relay serves at once (its own index, never the guard's cache).
pub const RELAY_SYMBOLS: usize = 128;
/// Candle intervals one relay serves (`relay.intervals`).
pub const RELAY_INTERVALS: usize = 4;
/// Closed candles kept per symbol and interval: what a snapshot's `limit` and a resume can
/// reach back (Binance's `klines` gives up to 1 000 a call, so one call refills a ring).
pub const RELAY_RING: usize = 1000;
/// Live closed candles held per series while its backfill runs (released in order after it).
pub const RELAY_HELD: usize = 64;
/// Clients connected at once (as many as the API's connections).
pub const RELAY_CLIENTS: usize = 256;
/// Clients from one address at once.
pub const RELAY_CLIENTS_PER_PEER: usize = 32;
/// Symbols one client may ask for.
pub const RELAY_SYMBOLS_PER_CLIENT: usize = 64;
/// Largest client request frame, in bytes.
pub const RELAY_REQUEST_MAX: usize = 8 * 1024;
/// Upstream events (quotes, trades, klines, backfills) waiting for the relay's hub; the
/// upstream waits when it is full (counted as a blocking event), nothing is dropped.
pub const RELAY_INPUT_QUEUE: usize = 8192;
/// Commands (joins, leaves) waiting for the relay's hub.
pub const RELAY_COMMAND_QUEUE: usize = 256;
