//! The durable state of positions and closes: an append-only journal of postcard records,
//! each framed as `[len: u32 LE][crc32: u32 LE][payload]`, written **before** the action it
//! records (intent) and after (outcome), fsynced per `store.fsync` (default: every record).
//!
//! Past `store.max_journal_bytes` the folded state is written as a snapshot (temp file,
//! fsync, rename, directory fsync) and the journal restarts empty. Folding is idempotent
//! (every record sets absolute values), so a crash between the snapshot's rename and the
//! journal's truncation only replays records already in the snapshot.
//!
//! Recovery reads snapshot + journal, drops a torn or corrupt tail with a `[STORE]` warning
//! naming the offset (and truncates it away), and never panics on any bytes.
//!
//! One writer thread (`tg-journal`) does every write and fsync: callers hand batches over
//! through a bounded queue ([`JOURNAL_QUEUE`]) with an optional completion, and the writer
//! commits everything queued with one write and one fsync, in hand-over order (ordered group
//! commit; see [`Journal`]). The engine hands records over and never waits on the disk.
//!
//! A failed append (a write that failed midway, a failed fsync) is cut back to the last whole
//! record before the error reaches the caller, so a record answered with an error never comes
//! back and later records never sit behind a partial one; if the cut fails, every append is
//! refused until it succeeds ([`StoreError::Broken`]).
//!
//! A closed position's id outlives the position: the state keeps a bounded tombstone per
//! closed id ([`State::closed`], [`Journal::closed`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::core::engine::Outcome;
use crate::core::time::Timestamp;
use crate::limits::{CLOSED_REMEMBERED, CLOSED_TOMBSTONES, JOURNAL_QUEUE, MAX_RECORD};

/// One journal record. Prices and quantities are raw fixed-point units (10⁻⁸).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A position is protected.
    Registered {
        /// Position id.
        id: String,
        /// Registration number (client ids derive from it).
        generation: u32,
        /// Symbol.
        symbol: String,
        /// 0 long, 1 short.
        side: u8,
        /// Quantity.
        qty: i64,
        /// Entry price.
        entry: i64,
        /// Stop-loss.
        stop_loss: Option<i64>,
        /// Take-profit.
        take_profit: Option<i64>,
        /// 0 alert, 1 flatten.
        blind: u8,
    },
    /// Levels moved.
    Levels {
        /// Position id.
        id: String,
        /// Stop-loss.
        stop_loss: Option<i64>,
        /// Take-profit.
        take_profit: Option<i64>,
    },
    /// A close was decided.
    Decided {
        /// Position id.
        id: String,
        /// 0 stop_loss, 1 take_profit, 2 emergency, 3 blind.
        reason: u8,
        /// Price that crossed.
        price: Option<i64>,
        /// 0 live, 1 rest, 2 cache, 3 manual, 4 none.
        source: u8,
        /// Age of that price.
        age_ms: u64,
        /// Level crossed.
        level: Option<i64>,
    },
    /// A blind flatten was re-judged: open again.
    Reopened {
        /// Position id.
        id: String,
    },
    /// An order is about to be sent (written and synced before sending).
    Intent {
        /// Position id.
        id: String,
        /// Client id.
        client_id: String,
        /// Attempt number.
        attempt: u16,
        /// Quantity.
        qty: i64,
        /// Wall-clock send time, ms since the Unix epoch.
        sent_unix_ms: u64,
    },
    /// What became of an attempt.
    Outcome {
        /// Position id.
        id: String,
        /// Client id.
        client_id: String,
        /// 0 filled, 1 partially filled, 2 working, 3 rejected.
        kind: u8,
        /// Executed by this attempt (cumulative).
        executed: i64,
        /// Average price.
        price: Option<i64>,
    },
    /// The position ended (written by older versions; [`Journal::append`] writes a `Closed`
    /// record as [`Record::ClosedAt`], stamped with the wall clock).
    Closed {
        /// Position id.
        id: String,
        /// 0 filled, 1 external, 2 resolved, 3 withdrawn.
        how: u8,
    },
    // New variants go at the END only: postcard encodes a variant by its position, so
    // inserting one anywhere else would make every existing journal unreadable.
    /// The broker product of a position (Upstox `D` delivery, `I` intraday, `MTF`), so that a
    /// restored position closes with the product it was opened with.
    Product {
        /// Position id.
        id: String,
        /// The product, as the broker spells it.
        product: String,
    },
    /// The position ended, and when (the tombstone that keeps its id closed after pruning).
    ClosedAt {
        /// Position id.
        id: String,
        /// 0 filled, 1 external, 2 resolved, 3 withdrawn.
        how: u8,
        /// Wall-clock time of the close, ms since the Unix epoch.
        at_unix_ms: u64,
    },
}

impl Record {
    /// The position the record is about.
    pub fn id(&self) -> &str {
        match self {
            Record::Registered { id, .. }
            | Record::Levels { id, .. }
            | Record::Decided { id, .. }
            | Record::Reopened { id }
            | Record::Intent { id, .. }
            | Record::Outcome { id, .. }
            | Record::Closed { id, .. }
            | Record::Product { id, .. }
            | Record::ClosedAt { id, .. } => id,
        }
    }

    /// The journal record of a terminal or progress outcome (`Unknown` is not recorded).
    pub fn outcome(id: &str, client_id: &str, o: &Outcome) -> Option<Record> {
        let (kind, executed, price) = match *o {
            Outcome::Filled { executed, price } => (0, executed, price),
            Outcome::PartiallyFilled { executed, price } => (1, executed, price),
            Outcome::Working { executed, price } => (2, executed, price),
            Outcome::Rejected => (3, crate::core::price::Qty::ZERO, None),
            Outcome::Unknown => return None,
        };
        Some(Record::Outcome {
            id: id.into(),
            client_id: client_id.into(),
            kind,
            executed: executed.units(),
            price: price.map(|p| p.units()),
        })
    }
}

/// An attempt as the journal knows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AttemptState {
    /// Client id.
    pub client_id: String,
    /// Attempt number.
    pub attempt: u16,
    /// Quantity asked.
    pub qty: i64,
    /// Wall-clock send time.
    pub sent_unix_ms: u64,
    /// Last outcome kind recorded (`None`: sent, outcome unknown).
    pub kind: Option<u8>,
    /// Executed (cumulative).
    pub executed: i64,
    /// Average price.
    pub price: Option<i64>,
}

/// Everything the journal knows of one position, folded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PositionState {
    /// The `Registered` record.
    pub registered: Record,
    /// Current levels.
    pub stop_loss: Option<i64>,
    /// Current levels.
    pub take_profit: Option<i64>,
    /// The `Decided` record, if any.
    pub decided: Option<Record>,
    /// Attempts in order.
    pub attempts: Vec<AttemptState>,
    /// How it ended, if it did.
    pub closed: Option<u8>,
    /// Order of the last change (for forgetting the oldest closed positions).
    pub seq: u64,
    /// The broker product (`D`, `I`, `MTF` at Upstox) from the last [`Record::Product`].
    pub product: Option<String>,
}

impl PositionState {
    /// Executed quantity over all attempts.
    pub fn filled(&self) -> i64 {
        self.attempts.iter().map(|a| a.executed).sum()
    }
}

/// How a closed position ended and when: what the journal remembers of a closed id after the
/// position itself is pruned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedInfo {
    /// How it ended.
    pub how: ClosedHow,
    /// Wall-clock time of the close, ms since the Unix epoch; `0` when unknown (closed by a
    /// version that did not record the time).
    pub at_unix_ms: u64,
}

impl ClosedInfo {
    /// `filled`, `external`, `resolved` or `withdrawn`.
    pub fn how_str(&self) -> &'static str {
        self.how.as_str()
    }

    /// The close time as RFC 3339 UTC (`2026-12-03T18:05:35.123Z`), `None` when unknown.
    pub fn at_rfc3339(&self) -> Option<String> {
        (self.at_unix_ms != 0).then(|| rfc3339_ms(self.at_unix_ms))
    }

    /// `filled at 2026-12-03T18:05:35.123Z` (or `filled at an unknown time`): the `HOW at TIME`
    /// of the API's 409 detail `position ID closed (HOW at TIME); register with a new id`.
    pub fn describe(&self) -> String {
        match self.at_rfc3339() {
            Some(t) => format!("{} at {t}", self.how_str()),
            None => format!("{} at an unknown time", self.how_str()),
        }
    }
}

/// RFC 3339 UTC with milliseconds from Unix milliseconds (civil-from-days, proleptic Gregorian).
fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", sod / 3600, (sod / 60) % 60, sod % 60, ms % 1000)
}

fn how_of(code: u8) -> ClosedHow {
    match code {
        0 => ClosedHow::Filled,
        1 => ClosedHow::External,
        2 => ClosedHow::Resolved,
        _ => ClosedHow::Withdrawn,
    }
}

/// The ids of closed positions, kept after the positions themselves are pruned, at most
/// [`CLOSED_TOMBSTONES`] (the oldest closes are forgotten first).
///
/// Memory: an id of `[A-Za-z0-9_-]` up to 20 characters (every id the API and the
/// configuration accept) is packed exactly, without loss, into a `u128` (5 bits of length, 6 bits
/// per character), and how and when it closed into a `u64` (`at_unix_ms << 2 | how`): 24 bytes an
/// entry plus the B-tree's nodes, about 40 bytes. Any other id (only an older journal could
/// hold one) is kept as its text in `other`. Exact keys: a tombstone never matches another id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Tombstones {
    packed: BTreeMap<u128, u64>,
    other: BTreeMap<String, u64>,
}

const ID_ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";

fn pack_id(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    let mut key = b.len() as u128;
    for (i, c) in b.iter().enumerate() {
        let v = ID_ALPHABET.iter().position(|a| a == c)? as u128;
        key |= v << (5 + 6 * i);
    }
    Some(key)
}

fn unpack_id(key: u128) -> String {
    let len = (key & 0x1F) as usize;
    (0..len.min(20)).map(|i| ID_ALPHABET[((key >> (5 + 6 * i)) & 0x3F) as usize] as char).collect()
}

fn pack_closed(how: u8, at_unix_ms: u64) -> u64 {
    (at_unix_ms.min(u64::MAX >> 2) << 2) | u64::from(how.min(3))
}

fn unpack_closed(v: u64) -> ClosedInfo {
    ClosedInfo { how: how_of((v & 3) as u8), at_unix_ms: v >> 2 }
}

impl Tombstones {
    /// Tombstones held.
    pub fn len(&self) -> usize {
        self.packed.len() + self.other.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How and when `id` closed, if it did (and is still remembered).
    pub fn get(&self, id: &str) -> Option<ClosedInfo> {
        match pack_id(id) {
            Some(k) => self.packed.get(&k).copied().map(unpack_closed),
            None => self.other.get(id).copied().map(unpack_closed),
        }
    }

    /// Every remembered closed id with how and when it closed (ids in no particular order).
    pub fn iter(&self) -> impl Iterator<Item = (String, ClosedInfo)> + '_ {
        self.packed
            .iter()
            .map(|(k, v)| (unpack_id(*k), unpack_closed(*v)))
            .chain(self.other.iter().map(|(k, v)| (k.clone(), unpack_closed(*v))))
    }

    fn insert(&mut self, id: &str, how: u8, at_unix_ms: u64, cap: usize) {
        let v = pack_closed(how, at_unix_ms);
        match pack_id(id) {
            Some(k) => {
                self.packed.insert(k, v);
            }
            None => {
                self.other.insert(id.to_string(), v);
            }
        }
        if self.len() > cap {
            self.evict(cap);
        }
    }

    fn remove(&mut self, id: &str) {
        match pack_id(id) {
            Some(k) => {
                self.packed.remove(&k);
            }
            None => {
                self.other.remove(id);
            }
        }
    }

    /// Forgets the oldest closes (by close time) down to `cap - cap/16`, so that one pass over
    /// the set serves the next `cap/16` closes (the cost per close stays constant).
    fn evict(&mut self, cap: usize) {
        let keep = cap - cap / 16;
        let n = self.len().saturating_sub(keep);
        if n == 0 {
            return;
        }
        // Close time, then the key (`other` ids are rare: only an older journal holds one).
        let mut all: Vec<(u64, Result<u128, String>)> = self
            .packed
            .iter()
            .map(|(k, v)| (*v >> 2, Ok(*k)))
            .chain(self.other.iter().map(|(k, v)| (*v >> 2, Err(k.clone()))))
            .collect();
        all.select_nth_unstable(n - 1);
        for (_, k) in all.into_iter().take(n) {
            match k {
                Ok(k) => {
                    self.packed.remove(&k);
                }
                Err(s) => {
                    self.other.remove(&s);
                }
            }
        }
    }
}

/// The folded journal: the state recovery restores.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Positions by id.
    pub positions: BTreeMap<String, PositionState>,
    /// Highest registration number seen.
    pub max_generation: u32,
    seq: u64,
    /// Every closed id still remembered (kept after its position is pruned).
    pub tombstones: Tombstones,
}

impl State {
    /// How and when `id` closed, if a position with this id ever closed (and the close is among
    /// the last [`CLOSED_TOMBSTONES`]); `None` for an id that is open again or never closed.
    pub fn closed(&self, id: &str) -> Option<ClosedInfo> {
        self.tombstones.get(id)
    }

    /// Every remembered closed id with how and when it closed.
    pub fn closed_ids(&self) -> impl Iterator<Item = (String, ClosedInfo)> + '_ {
        self.tombstones.iter()
    }

    /// Applies one record. Idempotent: applying a record twice leaves the same state.
    pub fn apply(&mut self, r: &Record) {
        self.apply_capped(r, CLOSED_TOMBSTONES);
    }

    fn apply_capped(&mut self, r: &Record, cap: usize) {
        self.seq += 1;
        let seq = self.seq;
        if let Record::Registered { id, generation, stop_loss, take_profit, .. } = r {
            self.max_generation = self.max_generation.max(*generation);
            let fresh = PositionState {
                registered: r.clone(),
                stop_loss: *stop_loss,
                take_profit: *take_profit,
                decided: None,
                attempts: Vec::new(),
                closed: None,
                seq,
                product: None,
            };
            // A re-registration of the same id after it closed starts a new life (the API
            // refuses one with 409 and the configuration's is skipped; an older journal may hold
            // one): the id is open again, so it is no longer a tombstone.
            match self.positions.get(id) {
                Some(p) if p.registered == *r && p.closed.is_none() => {}
                _ => {
                    self.positions.insert(id.clone(), fresh);
                    self.tombstones.remove(id);
                }
            }
            return;
        }
        // A close is remembered by id even if the position itself is not (already pruned).
        match r {
            Record::Closed { id, how } => self.tombstones.insert(id, *how, 0, cap),
            Record::ClosedAt { id, how, at_unix_ms } => self.tombstones.insert(id, *how, *at_unix_ms, cap),
            _ => {}
        }
        let Some(p) = self.positions.get_mut(r.id()) else { return };
        p.seq = seq;
        match r {
            Record::Registered { .. } => {}
            Record::Levels { stop_loss, take_profit, .. } => {
                p.stop_loss = *stop_loss;
                p.take_profit = *take_profit;
            }
            Record::Decided { .. } => {
                if p.decided.is_none() || matches!(p.decided, Some(Record::Decided { reason: 3, .. })) {
                    p.decided = Some(r.clone());
                }
            }
            Record::Reopened { .. } => p.decided = None,
            Record::Intent { client_id, attempt, qty, sent_unix_ms, .. } => {
                if !p.attempts.iter().any(|a| a.client_id == *client_id) {
                    p.attempts.push(AttemptState {
                        client_id: client_id.clone(),
                        attempt: *attempt,
                        qty: *qty,
                        sent_unix_ms: *sent_unix_ms,
                        kind: None,
                        executed: 0,
                        price: None,
                    });
                }
            }
            Record::Outcome { client_id, kind, executed, price, .. } => {
                if let Some(a) = p.attempts.iter_mut().find(|a| a.client_id == *client_id) {
                    a.kind = Some(*kind);
                    a.executed = a.executed.max(*executed);
                    if price.is_some() {
                        a.price = *price;
                    }
                }
            }
            Record::Closed { how, .. } | Record::ClosedAt { how, .. } => p.closed = Some(*how),
            Record::Product { product, .. } => p.product = Some(product.clone()),
        }
    }

    /// Forgets the oldest closed positions beyond [`CLOSED_REMEMBERED`].
    fn prune(&mut self) {
        let closed: Vec<(u64, String)> = self
            .positions
            .iter()
            .filter(|(_, p)| p.closed.is_some())
            .map(|(id, p)| (p.seq, id.clone()))
            .collect();
        if closed.len() > CLOSED_REMEMBERED {
            let mut closed = closed;
            closed.sort();
            for (_, id) in closed.iter().take(closed.len() - CLOSED_REMEMBERED) {
                self.positions.remove(id);
            }
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("store {path}: {op}: {source}; check store.dir exists, is writable and has space")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("store: cannot encode a record: {0}")]
    Encode(String),
    /// A failed append could not be rolled back (the journal may end in a partial record):
    /// every append is refused until truncating the journal back to its last whole record
    /// succeeds, which each later append (and [`Journal::sync`]) tries again.
    #[error(
        "store {path}: journal refuses appends until it is repaired: {reason}; free space on store.dir or check the disk"
    )]
    Broken {
        /// The journal file.
        path: String,
        /// Why it broke.
        reason: String,
    },
    /// An intent refused because its position's registration is not in the journal (it failed
    /// and was taken back) or is another registration of the id: the order is not sent.
    #[error("store: {0}; the order is not sent")]
    Orphan(String),
}

impl crate::bus::error::EdgeError for StoreError {
    /// A file operation or a broken journal may pass (space freed, the disk back: each later
    /// append tries the repair again); a record that cannot be encoded, or an intent whose
    /// registration was taken back, never will.
    fn severity(&self) -> crate::bus::error::Severity {
        match self {
            StoreError::Io { .. } | StoreError::Broken { .. } => crate::bus::error::Severity::Recoverable,
            StoreError::Encode(_) | StoreError::Orphan(_) => crate::bus::error::Severity::Fatal,
        }
    }
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.display().to_string(), op, source }
}

/// When records are fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// After every record (default): nothing acknowledged is ever lost.
    Always,
    /// Never explicitly (tests, tmpfs).
    Never,
}

/// Faults injected into the journal's own file operations: the seam the failure tests use to
/// fail a write midway, an fsync or the truncation that rolls a failed write back, on any
/// filesystem. Install one with [`Journal::set_faults`]; a journal without one pays one branch
/// per write.
#[derive(Debug, Default)]
pub struct FaultPlan {
    writes: AtomicU64,
    fail_write_at: AtomicU64,
    fail_write_keep: AtomicU64,
    fail_fsyncs: AtomicU32,
    fail_truncates: AtomicU32,
    fsync_delay_ns: AtomicU64,
}

impl FaultPlan {
    /// A plan that injects nothing yet.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// The `nth` append write from now (1: the next one; one write per append or batch) puts
    /// its first `keep_bytes` bytes in the file, then fails with `ENOSPC`.
    pub fn fail_write(&self, nth: u64, keep_bytes: u64) {
        self.fail_write_keep.store(keep_bytes, Ordering::SeqCst);
        self.fail_write_at.store(self.writes.load(Ordering::SeqCst) + nth.max(1), Ordering::SeqCst);
    }

    /// The next `n` commit fsyncs (after an append) fail with `EIO`.
    pub fn fail_fsyncs(&self, n: u32) {
        self.fail_fsyncs.store(n, Ordering::SeqCst);
    }

    /// The next `n` truncations that roll a failed append back (or repair the journal) fail
    /// with `EIO`.
    pub fn fail_truncates(&self, n: u32) {
        self.fail_truncates.store(n, Ordering::SeqCst);
    }

    /// Every fsync of the journal (commit, sync, compaction, rollback) sleeps `delay` first: a
    /// slow SD card (`--fault fsync-delay@DURATION`). Zero: none.
    pub fn delay_fsyncs(&self, delay: std::time::Duration) {
        self.fsync_delay_ns.store(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    fn fsync_delay(&self) -> Option<std::time::Duration> {
        let ns = self.fsync_delay_ns.load(Ordering::SeqCst);
        (ns > 0).then(|| std::time::Duration::from_nanos(ns))
    }

    fn on_write(&self) -> Option<u64> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        (self.fail_write_at.load(Ordering::SeqCst) == n).then(|| self.fail_write_keep.load(Ordering::SeqCst))
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;
/// Frames a payload: `[len u32 LE][crc32 u32 LE][payload]`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// Reads framed records from `bytes`: the records read, and the offset of the first byte
/// that is not a complete, intact record (`bytes.len()` when all is well).
pub fn read_frames(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if len > MAX_RECORD || bytes.len() - at - 8 < len {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at += 8 + len;
    }
    (out, at)
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The folded state.
    pub state: State,
    /// Records replayed from the journal (after the snapshot).
    pub records: usize,
    /// Bytes dropped from a torn or corrupt tail, and where it started.
    pub dropped: Option<(u64, u64)>,
}

impl Recovered {
    /// How and when `id` closed, if a position with this id ever closed (see [`State::closed`]).
    pub fn closed(&self, id: &str) -> Option<ClosedInfo> {
        self.state.closed(id)
    }
}

const JOURNAL: &str = "journal.tg";
const SNAPSHOT: &str = "snapshot.tg";

/// What readers on other threads see of the journal (the engine's `closed`, the control plane's
/// `state`, `bytes`, `product`): updated by the writer thread after each write, and held only
/// for a look or an in-memory update, never across a write, an fsync or a compaction's IO.
struct View {
    state: State,
    /// Length of the journal's whole records.
    bytes: u64,
    /// Why the journal refuses appends, while it does.
    broken: Option<String>,
}

/// Counters of the writer thread (for metrics and tests).
#[derive(Debug, Default)]
pub struct JournalStats {
    queue_waits: AtomicU64,
    fsyncs: AtomicU64,
    groups: AtomicU64,
    batches: AtomicU64,
}

impl JournalStats {
    /// Times a submitter found the writer's queue full ([`JOURNAL_QUEUE`]) and had to wait for
    /// room (exported as `tickguard_journal_queue_waits_total`).
    pub fn queue_waits(&self) -> u64 {
        self.queue_waits.load(Ordering::Relaxed)
    }
    /// Commit fsyncs of the journal (one per group of batches).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
    /// Groups committed (one write and at most one fsync each).
    pub fn groups(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }
    /// Batches handed over.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// State shared by the [`Journal`] handle and its writer thread.
struct Shared {
    dir: PathBuf,
    fsync: Fsync,
    max_bytes: u64,
    view: Mutex<View>,
    faults: Mutex<Option<Arc<FaultPlan>>>,
    stats: JournalStats,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn faults(&self) -> Option<Arc<FaultPlan>> {
        self.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
    fn path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }
}

/// Where the answer of a batch goes once it is durable (or failed).
pub enum Done {
    /// Nobody waits: a failure is logged by the writer.
    Nothing,
    /// An async waiter (the engine's command tasks).
    Async(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// An async waiter that wants the error as text (the executor through [`OrderJournal`]).
    AsyncText(tokio::sync::oneshot::Sender<Result<(), String>>),
    /// A thread blocked in [`Journal::append_batch`] or [`Journal::sync`].
    Blocking(std::sync::mpsc::SyncSender<Result<(), StoreError>>),
}

impl Done {
    fn fire(self, r: Result<(), StoreError>, records: usize) {
        match self {
            Done::Nothing => {
                if let Err(e) = r {
                    log::error!("[STORE] event=write_failed records={records} error=\"{e}\"");
                }
            }
            Done::Async(tx) => {
                let _ = tx.send(r);
            }
            Done::AsyncText(tx) => {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }
            Done::Blocking(tx) => {
                let _ = tx.try_send(r);
            }
        }
    }
}

/// One hand-over to the writer thread: records to append in order (all or none), or an explicit
/// sync (`records` empty, `sync` set).
struct Job {
    records: Vec<Record>,
    sync: bool,
    /// A sync that is only a barrier: with [`Fsync::Always`] everything committed before it is
    /// already fsynced, so it needs no fsync of its own (see [`Journal::barrier`]).
    barrier: bool,
    /// An order's intent (from [`OrderJournal`]): refused unless its position's registration is
    /// in the journal (see [`Journal`]). Raw appends of records are not checked.
    guarded: bool,
    done: Done,
}

/// The writer thread's side: the only code that writes, truncates or fsyncs the journal.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    /// Length of the journal's whole records.
    bytes: u64,
    /// Journal length known durable (fsynced, or in a fsynced snapshot).
    durable_bytes: u64,
    /// Set when a failed append could not be rolled back: every append is refused until a
    /// truncation back to `durable_bytes` succeeds.
    broken: Option<String>,
}

fn io_again(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// The journal of one state directory.
///
/// **One writer thread** (`tg-journal`) owns every write, truncation and fsync. Callers hand
/// batches of records over through a bounded queue ([`JOURNAL_QUEUE`]) with an optional
/// completion; the writer takes everything queued, writes it in order with **one write and one
/// fsync** (ordered group commit), then answers every batch. Records reach the file in the order
/// they were handed over, so a decision handed over before its order's intent precedes it in the
/// file, and an intent handed over after a registration is durable only if the registration is.
///
/// A failed write or fsync fails every batch of its group (none of them is in the journal
/// afterwards; the file is cut back to its last durable length and the state folded again). An
/// intent whose position's registration is not in the journal (a registration that failed and
/// was taken back), or is of another registration (client id of another generation), is
/// refused: the executor then sends nothing.
pub struct Journal {
    shared: Arc<Shared>,
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))
}

/// Folds a snapshot (if any) and a journal's bytes: the state, the records replayed and the
/// length of the journal's whole records.
fn fold(snap_path: &Path, snapshot: Option<&[u8]>, journal: &[u8]) -> (State, usize, usize) {
    let mut state = State::default();
    if let Some(bytes) = snapshot {
        match read_snapshot(bytes) {
            Some(s) => state = s,
            None => log::error!(
                "[STORE] event=snapshot_corrupt file={} (ignored; replaying the journal alone)",
                snap_path.display()
            ),
        }
    }
    let (records, good) = read_frames(journal);
    for r in &records {
        state.apply(r);
    }
    (state, records.len(), good)
}

/// A `Closed` record as it is written: [`Record::ClosedAt`], stamped with `now`.
fn stamped(r: Record, now: u64) -> Record {
    match r {
        Record::Closed { id, how } => Record::ClosedAt { id, how, at_unix_ms: now },
        r => r,
    }
}

/// Awaits an answer of the writer thread (a [`Journal::handover`] or an
/// [`OrderJournal`](crate::bus::orders::OrderJournal) hand-over) without blocking the runtime:
/// on a blocking-pool thread, not as a plain `rx.await`. Why: a wait for the disk that the
/// runtime cannot see looks like idleness, and tokio's paused clock (the world simulator runs
/// the whole wiring under it) would jump past the fsync and fire every timer meanwhile; a
/// blocking task counts as work, as the inline fsync of the engine did before the writer
/// thread. The cost is one thread hand-off (tens of µs) per wait; the waiters of one group
/// are woken together.
pub async fn settled<T: Send + 'static>(rx: tokio::sync::oneshot::Receiver<T>) -> Option<T> {
    tokio::task::spawn_blocking(move || rx.blocking_recv().ok()).await.ok().flatten()
}

/// How long records nobody waits for (a decision, a re-open, a close notice) may stay written
/// but not fsynced, waiting for an awaited batch to share their fsync: the engine hands a
/// decision over just before the executor hands over its order's intent (microseconds later),
/// so a close costs one fsync, not two. Bounded so that they are durable soon anyway.
const DEFERRED_FSYNC: std::time::Duration = std::time::Duration::from_millis(2);

/// Process-wide fault plan installed into every journal opened from now on (the command line's
/// `--fault fsync-delay@...`; in-process tests of the whole wiring).
static ARMED: Mutex<Option<Arc<FaultPlan>>> = Mutex::new(None);

/// Installs `plan` into every journal opened from now on (`None`: none).
pub fn arm_fault_plan(plan: Option<Arc<FaultPlan>>) {
    *ARMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = plan;
}

/// `--fault fsync-delay@DURATION`: every fsync of every journal opened from now on sleeps
/// `delay` first (a slow SD card, reproducibly).
pub fn arm_fsync_delay(delay: std::time::Duration) {
    let plan = FaultPlan::new();
    plan.delay_fsyncs(delay);
    arm_fault_plan(Some(plan));
}

impl Journal {
    /// Opens (creating) the store in `dir`, recovers its state and starts its writer thread.
    pub fn open(dir: &Path, fsync: Fsync, max_bytes: u64) -> Result<(Journal, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
        let mut rec = Recovered::default();
        let snap = dir.join(SNAPSHOT);
        let snapshot = std::fs::read(&snap).ok();
        let jpath = dir.join(JOURNAL);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&jpath)
            .map_err(io(&jpath, "open journal"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&jpath, "read journal"))?;
        let (state, records, good) = fold(&snap, snapshot.as_deref(), &bytes);
        drop(snapshot);
        rec.state = state;
        rec.records = records;
        if good < bytes.len() {
            let dropped = (bytes.len() - good) as u64;
            log::warn!(
                "[STORE] event=torn_tail file={} offset={good} dropped_bytes={dropped} records_kept={records} (the tail was never acknowledged)",
                jpath.display(),
            );
            file.set_len(good as u64).map_err(io(&jpath, "truncate torn tail"))?;
            file.sync_all().map_err(io(&jpath, "fsync"))?;
            rec.dropped = Some((good as u64, dropped));
        }
        drop(bytes);
        let armed = ARMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fsync,
            max_bytes: max_bytes.max(4096),
            view: Mutex::new(View { state: rec.state.clone(), bytes: good as u64, broken: None }),
            faults: Mutex::new(armed),
            stats: JournalStats::default(),
        });
        let writer = Writer {
            shared: shared.clone(),
            file,
            bytes: good as u64,
            durable_bytes: good as u64,
            broken: None,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(JOURNAL_QUEUE);
        let thread = std::thread::Builder::new()
            .name("tg-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir, "start the journal writer thread"))?;
        let journal = Journal { shared, queue: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) };
        Ok((journal, rec))
    }

    /// Installs a [`FaultPlan`] (failure tests).
    pub fn set_faults(&self, plan: Arc<FaultPlan>) {
        *self.shared.faults.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(plan);
    }

    /// The writer thread's counters.
    pub fn stats(&self) -> &JournalStats {
        &self.shared.stats
    }

    fn path(&self) -> PathBuf {
        self.shared.path()
    }

    fn enqueue(&self, job: Job) {
        use std::sync::mpsc::TrySendError;
        let tx = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(tx) = tx else {
            return job.done.fire(Err(self.stopped()), job.records.len());
        };
        self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        let job = match tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => job,
            Err(TrySendError::Disconnected(job)) => {
                return job.done.fire(Err(self.stopped()), job.records.len());
            }
        };
        // The queue is full: wait for room (back-pressure, never a dropped record). Counted: a
        // wait here is a stall of the submitter (the engine, an order task) on the disk.
        self.shared.stats.queue_waits.fetch_add(1, Ordering::Relaxed);
        log::warn!(
            "[STORE] event=journal_queue_full capacity={JOURNAL_QUEUE} (the submitter waits for the disk)"
        );
        if let Err(std::sync::mpsc::SendError(job)) = tx.send(job) {
            job.done.fire(Err(self.stopped()), job.records.len());
        }
    }

    fn stopped(&self) -> StoreError {
        StoreError::Io {
            path: self.path().display().to_string(),
            op: "hand over",
            source: std::io::Error::other("the journal writer thread stopped"),
        }
    }

    /// Hands `records` over to the writer thread without waiting: they are appended in order, all
    /// or none, after everything handed over before them; `done` is answered once they are
    /// durable (per [`Fsync`]) or failed. Waits only while the queue is full (counted in
    /// [`JournalStats::queue_waits`]).
    pub fn submit(&self, records: Vec<Record>, done: Done) {
        if records.is_empty() {
            return done.fire(Ok(()), 0);
        }
        self.enqueue(Job { records, sync: false, barrier: false, guarded: false, done });
    }

    /// [`Journal::submit`] with a completion to await.
    pub fn handover(&self, records: Vec<Record>) -> tokio::sync::oneshot::Receiver<Result<(), StoreError>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(records, Done::Async(tx));
        rx
    }

    fn wait(&self, records: Vec<Record>, sync: bool, barrier: bool) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(Job { records, sync, barrier, guarded: false, done: Done::Blocking(tx) });
        rx.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Appends a record (durable on return with `Fsync::Always`), compacting when the journal
    /// has grown past its limit. A `Closed` record is written as [`Record::ClosedAt`] stamped
    /// with the wall clock. Blocks the calling thread until the writer thread has answered:
    /// for threads that may wait on the disk (tests, the control plane's own threads), never
    /// the engine.
    ///
    /// On an error nothing of the record is left in the journal: a write that failed midway is
    /// cut back to the last whole record (so later records never sit behind a partial one), and
    /// a failed fsync rolls back every record not yet durable. If that cut itself fails, this
    /// and every later append fail ([`StoreError::Broken`]) until a retry of the cut succeeds.
    pub fn append(&self, r: &Record) -> Result<(), StoreError> {
        self.append_batch(std::slice::from_ref(r))
    }

    /// Appends records in order with one write and one fsync for all of them (durable on return
    /// with `Fsync::Always`), compacting when the journal has grown past its limit. All or none:
    /// on an error none of them is in the journal (see [`Journal::append`]).
    pub fn append_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.wait(records.to_vec(), false, false)
    }

    /// Journal size in bytes (for metrics).
    pub fn bytes(&self) -> u64 {
        self.shared.view().bytes
    }

    /// A copy of the folded state (every record written, including those whose fsync is still
    /// under way).
    pub fn state(&self) -> State {
        self.shared.view().state.clone()
    }

    /// How and when `id` closed, if a position with this id ever closed (and the close is among
    /// the last [`CLOSED_TOMBSTONES`]). Current while running: every written `Closed` /
    /// `ClosedAt` record updates it, a new registration of the id clears it.
    pub fn closed(&self, id: &str) -> Option<ClosedInfo> {
        self.shared.view().state.closed(id)
    }

    /// The broker product journaled for `id` ([`Record::Product`]).
    pub fn product(&self, id: &str) -> Option<String> {
        self.shared.view().state.positions.get(id).and_then(|p| p.product.clone())
    }

    /// Why the journal refuses appends, while it does (see [`StoreError::Broken`]).
    pub fn broken(&self) -> Option<String> {
        self.shared.view().broken.clone()
    }

    /// Flushes everything to disk through the writer thread (graceful stop; the control plane's
    /// store probe). A broken journal is repaired first, or this fails. Blocks the caller.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.wait(Vec::new(), true, false)
    }

    /// Returns once everything handed over before it is durable: with [`Fsync::Always`] that
    /// needs no fsync of its own (every batch is answered after its group's fsync, and batches
    /// are committed in order), with [`Fsync::Never`] it fsyncs. A broken journal is repaired
    /// first, or this fails. Blocks the caller (the API's barrier after a command).
    pub fn barrier(&self) -> Result<(), StoreError> {
        self.wait(Vec::new(), true, true)
    }
}

impl Drop for Journal {
    /// Closes the queue and waits for the writer thread to finish what was handed over.
    fn drop(&mut self) {
        drop(self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = t.join();
        }
    }
}

/// A refused intent (see [`Journal`]): the position's registration is not in the journal.
fn orphan_intent(state: &State, pending: &BTreeMap<String, u32>, r: &Record) -> Option<String> {
    let Record::Intent { id, client_id, attempt, .. } = r else { return None };
    let generation =
        pending.get(id).copied().or_else(|| match state.positions.get(id).map(|p| &p.registered) {
            Some(Record::Registered { generation, .. }) => Some(*generation),
            _ => None,
        });
    match generation {
        None => {
            Some(format!("intent {client_id} for position {id}, whose registration is not in the journal"))
        }
        Some(g) if crate::core::engine::client_id(g, id, *attempt).as_str() != client_id => Some(format!(
            "intent {client_id} is not of position {id}'s registration in the journal (generation {g})"
        )),
        Some(_) => None,
    }
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut group: Vec<Job> = Vec::with_capacity(JOURNAL_QUEUE);
        loop {
            let first = if self.durable_bytes != self.bytes {
                // Records nobody waits for (a decision) are written but not fsynced yet: the
                // batch that usually follows at once (the order's intent, awaited) shares their
                // fsync. If none comes within `DEFERRED_FSYNC`, they are fsynced alone.
                match rx.recv_timeout(DEFERRED_FSYNC) {
                    Ok(job) => job,
                    Err(RecvTimeoutError::Timeout) => {
                        self.flush();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.flush();
                        break;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            group.push(first);
            // Everything queued meanwhile joins this group (ordered group commit).
            while group.len() < JOURNAL_QUEUE {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit(&mut group);
        }
    }

    /// Fsyncs records written without a waiter (see [`DEFERRED_FSYNC`]); on a failure they are
    /// cut away like any record not yet durable.
    fn flush(&mut self) {
        if self.durable_bytes == self.bytes || self.shared.fsync == Fsync::Never {
            return;
        }
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        match self.commit_fsync() {
            Ok(()) => self.durable_bytes = self.bytes,
            Err(e) => self.roll_back_to_durable(&format!("fsync failed ({e})"), 0),
        }
    }

    /// The commit fsync (with the injected failure and delay, if any).
    fn commit_fsync(&self) -> std::io::Result<()> {
        let faults = self.shared.faults();
        if faults.as_ref().is_some_and(|f| FaultPlan::take(&f.fail_fsyncs)) {
            Self::delay(&faults);
            return Err(std::io::Error::from_raw_os_error(EIO));
        }
        self.sync_journal(false)
    }

    fn err(&self, op: &'static str, e: &std::io::Error) -> StoreError {
        StoreError::Io { path: self.shared.path().display().to_string(), op, source: io_again(e) }
    }

    fn broken_err(&self) -> StoreError {
        StoreError::Broken {
            path: self.shared.path().display().to_string(),
            reason: self.broken.clone().unwrap_or_default(),
        }
    }

    /// Fails every job of `jobs` with an error made by `err`.
    fn fail(jobs: Vec<(Job, usize)>, err: impl Fn() -> StoreError) {
        for (job, n) in jobs {
            job.done.fire(Err(err()), n);
        }
    }

    /// One group: one write, one fsync, then every batch answered.
    fn commit(&mut self, group: &mut Vec<Job>) {
        self.shared.stats.groups.fetch_add(1, Ordering::Relaxed);
        let always = self.shared.fsync == Fsync::Always;
        let wants_sync = group.iter().any(|j| j.sync && !(j.barrier && always));
        if self.broken.is_some() {
            if let Err(e) = self.repair() {
                let jobs: Vec<(Job, usize)> = group.drain(..).map(|j| (j, 0)).collect();
                let reason = e.to_string();
                return Self::fail(jobs, || StoreError::Broken {
                    path: self.shared.path().display().to_string(),
                    reason: reason.clone(),
                });
            }
        }
        // Encode every batch; refuse the intents of positions the journal does not hold.
        let now = unix_ms();
        let mut framed = Vec::new();
        let mut accepted: Vec<(Job, usize)> = Vec::with_capacity(group.len());
        let mut applied: Vec<Record> = Vec::new();
        {
            let view = self.shared.view();
            let mut pending: BTreeMap<String, u32> = BTreeMap::new();
            for mut job in group.drain(..) {
                let records: Vec<Record> =
                    std::mem::take(&mut job.records).into_iter().map(|r| stamped(r, now)).collect();
                let n = records.len();
                let mut bytes = Vec::new();
                let mut refused = None;
                for r in &records {
                    if let Some(why) = job.guarded.then(|| orphan_intent(&view.state, &pending, r)).flatten()
                    {
                        refused = Some(StoreError::Orphan(why));
                        break;
                    }
                    match postcard::to_stdvec(r) {
                        Ok(p) => bytes.extend_from_slice(&frame(&p)),
                        Err(e) => {
                            refused = Some(StoreError::Encode(e.to_string()));
                            break;
                        }
                    }
                }
                if let Some(e) = refused {
                    log::error!("[STORE] event=batch_refused records={n} error=\"{e}\"");
                    job.done.fire(Err(e), n);
                    continue;
                }
                for r in &records {
                    if let Record::Registered { id, generation, .. } = r {
                        pending.insert(id.clone(), *generation);
                    }
                }
                framed.extend_from_slice(&bytes);
                applied.extend(records);
                accepted.push((job, n));
            }
        }
        let jpath = self.shared.path();
        if !framed.is_empty() {
            let start = self.bytes;
            if let Err(e) = self.write(&framed) {
                // The write may have put part of the group in the file: cut it back to the last
                // whole record, or recovery would stop at the partial one and drop every record
                // written after it. The state is untouched: nothing of the group was applied.
                let why = e.to_string();
                match self.truncate_and_sync(start) {
                    Ok(()) => log::error!(
                        "[STORE] event=append_rolled_back file={} offset={start} records={} error=\"{why}\" (nothing of it is in the journal; the callers are told it failed)",
                        jpath.display(),
                        applied.len()
                    ),
                    Err(e2) => {
                        self.break_journal(format!("append failed ({why}) and cutting it back failed ({e2})"))
                    }
                }
                return Self::fail(accepted, || self.err("append", &e));
            }
            self.bytes += framed.len() as u64;
            {
                let mut view = self.shared.view();
                for r in &applied {
                    view.state.apply(r);
                }
                view.bytes = self.bytes;
            }
            if self.shared.fsync == Fsync::Never {
                // Nothing more is promised without fsync: written is as durable as it gets.
                self.durable_bytes = self.bytes;
            }
            if self.bytes > self.shared.max_bytes {
                // The snapshot is fsynced before the journal is truncated: everything written
                // so far is durable after this. A compaction that fails leaves the journal whole
                // (the records are still in it, and this group goes on to its fsync): it is only
                // retried on the next group, never an error for this one.
                if let Err(e) = self.compact() {
                    log::error!(
                        "[STORE] event=compaction_failed error=\"{e}\" (the journal keeps every record; retried on the next append)"
                    );
                }
            }
        }
        let mut sync_result: Result<(), StoreError> = Ok(());
        // Someone waits for this group (a reply, an intent, an outcome, a sync): fsync now.
        // Otherwise (only notices) the fsync is deferred to the next group or `DEFERRED_FSYNC`.
        let awaited = accepted.iter().any(|(j, _)| j.sync || !matches!(j.done, Done::Nothing));
        if self.durable_bytes != self.bytes && awaited {
            // One fsync for the whole group (and any deferred records before it).
            self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
            match self.commit_fsync() {
                Ok(()) => self.durable_bytes = self.bytes,
                Err(e) => {
                    // Why not keep the records and only report the error: on Linux a failed
                    // fsync may have dropped the dirty pages while a later fsync succeeds, so
                    // the records are neither known durable nor known absent. Their callers are
                    // told "not durable" (503, the engine takes the change back, the order is not
                    // sent); a record kept in the file could still reach the disk and come back
                    // at the next start. Cutting them away makes the journal say exactly what
                    // was acknowledged.
                    let why = format!("fsync failed ({e})");
                    self.roll_back_to_durable(&why, applied.len());
                    return Self::fail(accepted, || self.err("fsync", &e));
                }
            }
        } else if wants_sync && self.durable_bytes == self.bytes {
            // An explicit sync (graceful stop, the store probe) with nothing new to commit.
            sync_result = self.sync_journal(true).map_err(|e| self.err("fsync", &e));
        }
        for (job, n) in accepted {
            let r = if job.sync {
                match &sync_result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(match e {
                        StoreError::Io { source, .. } => self.err("fsync", source),
                        _ => self.broken_err(),
                    }),
                }
            } else {
                Ok(())
            };
            job.done.fire(r, n);
        }
    }

    fn delay(faults: &Option<Arc<FaultPlan>>) {
        if let Some(d) = faults.as_ref().and_then(|f| f.fsync_delay()) {
            std::thread::sleep(d);
        }
    }

    /// Fsyncs the journal (after the injected delay, if any).
    fn sync_journal(&self, all: bool) -> std::io::Result<()> {
        Self::delay(&self.shared.faults());
        if all { self.file.sync_all() } else { self.file.sync_data() }
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(keep) = self.shared.faults().and_then(|f| f.on_write()) {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX).min(buf.len());
            self.file.write_all(&buf[..keep])?;
            return Err(std::io::Error::from_raw_os_error(ENOSPC));
        }
        self.file.write_all(buf)
    }

    /// Cuts the journal back to `len` and fsyncs the cut.
    fn truncate_and_sync(&mut self, len: u64) -> std::io::Result<()> {
        let faults = self.shared.faults();
        if faults.as_ref().is_some_and(|f| FaultPlan::take(&f.fail_truncates)) {
            return Err(std::io::Error::from_raw_os_error(EIO));
        }
        self.file.set_len(len)?;
        Self::delay(&faults);
        self.file.sync_all()
    }

    /// After a failed fsync: every record not yet durable is lost; cut the journal back to the
    /// durable length and fold the state again from disk.
    fn roll_back_to_durable(&mut self, why: &str, lost: usize) {
        let to = self.durable_bytes;
        match self.truncate_and_sync(to).map_err(|e| e.to_string()).and_then(|()| self.refold(to)) {
            Ok(()) => log::error!(
                "[STORE] event=append_rolled_back file={} offset={to} records={lost} error=\"{why}\" (records not yet durable are cut away; their callers are told they failed)",
                self.shared.path().display()
            ),
            Err(e) => self.break_journal(format!("{why} and cutting the journal back failed ({e})")),
        }
    }

    /// The journal may end in a partial record: refuse every append until it is repaired.
    fn break_journal(&mut self, reason: String) {
        self.bytes = self.durable_bytes;
        log::error!(
            "[STORE] event=journal_broken file={} offset={} error=\"{reason}\" (every append is refused until the journal is cut back to offset; retried on each append)",
            self.shared.path().display(),
            self.durable_bytes
        );
        let mut view = self.shared.view();
        view.bytes = self.bytes;
        view.broken = Some(reason.clone());
        drop(view);
        self.broken = Some(reason);
    }

    /// Cuts the journal back to its last durable length and folds the state again from disk.
    fn repair(&mut self) -> Result<(), StoreError> {
        let to = self.durable_bytes;
        let res = self.truncate_and_sync(to).map_err(|e| e.to_string()).and_then(|()| self.refold(to));
        match res {
            Ok(()) => {
                log::warn!(
                    "[STORE] event=journal_repaired file={} offset={} (appends are accepted again)",
                    self.shared.path().display(),
                    self.bytes
                );
                self.broken = None;
                self.shared.view().broken = None;
                Ok(())
            }
            Err(e) => Err(StoreError::Broken {
                path: self.shared.path().display().to_string(),
                reason: format!("{}; repair failed: {e}", self.broken.clone().unwrap_or_default()),
            }),
        }
    }

    /// Folds the snapshot and the first `len` bytes of the journal into the state, as recovery
    /// would: the in-memory state never keeps a record the journal lost.
    fn refold(&mut self, len: u64) -> Result<(), String> {
        let snap = self.shared.dir.join(SNAPSHOT);
        let snapshot = match std::fs::read(&snap) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("read snapshot: {e}")),
        };
        let mut bytes = Vec::new();
        File::open(self.shared.path())
            .and_then(|f| f.take(len).read_to_end(&mut bytes))
            .map_err(|e| format!("read journal: {e}"))?;
        let (state, _, good) = fold(&snap, snapshot.as_deref(), &bytes);
        if good as u64 != len {
            return Err(format!("journal holds {good} bytes of whole records, expected {len}"));
        }
        self.bytes = len;
        self.durable_bytes = len;
        let mut view = self.shared.view();
        view.state = state;
        view.bytes = len;
        Ok(())
    }

    /// Writes the folded state as a snapshot and empties the journal. The view is locked only
    /// to prune and encode the state, never across the snapshot's IO.
    fn compact(&mut self) -> Result<(), StoreError> {
        let (payload, positions, closed_ids) = {
            let mut view = self.shared.view();
            view.state.prune();
            let payload = postcard::to_stdvec(&view.state).map_err(|e| StoreError::Encode(e.to_string()))?;
            (payload, view.state.positions.len(), view.state.tombstones.len())
        };
        let dir = self.shared.dir.clone();
        let tmp = dir.join("snapshot.tmp");
        let snap = dir.join(SNAPSHOT);
        {
            let mut f = File::create(&tmp).map_err(io(&tmp, "create snapshot"))?;
            f.write_all(&frame_snapshot(&payload)).map_err(io(&tmp, "write snapshot"))?;
            Self::delay(&self.shared.faults());
            f.sync_all().map_err(io(&tmp, "fsync snapshot"))?;
        }
        std::fs::rename(&tmp, &snap).map_err(io(&snap, "rename snapshot"))?;
        sync_dir(&dir)?;
        // Everything written so far is in the fsynced snapshot: durable, whatever happens to
        // the journal's truncation below (a journal left whole replays over it harmlessly).
        self.durable_bytes = self.bytes;
        let jpath = self.shared.path();
        self.file.set_len(0).map_err(io(&jpath, "truncate journal"))?;
        self.bytes = 0;
        self.durable_bytes = 0;
        self.shared.view().bytes = 0;
        self.sync_journal(true).map_err(io(&jpath, "fsync journal"))?;
        log::info!(
            "[STORE] event=compacted snapshot_bytes={} positions={positions} closed_ids={closed_ids}",
            payload.len()
        );
        Ok(())
    }
}

/// Snapshot header from version 2 on: `TGSN`, the version (u32 LE), then the frame. A version 1
/// snapshot is the bare frame (its first four bytes, a length, are never `TGSN`: that would be a
/// 0.8 GB snapshot).
const SNAPSHOT_MAGIC: &[u8; 4] = b"TGSN";
/// Version 2: positions carry their product; the state carries the closed-id tombstones.
const SNAPSHOT_VERSION: u32 = 2;

fn frame_snapshot(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 16);
    v.extend_from_slice(SNAPSHOT_MAGIC);
    v.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    v.extend_from_slice(&frame(payload));
    v
}

fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

fn read_snapshot(bytes: &[u8]) -> Option<State> {
    if bytes.get(0..4) == Some(SNAPSHOT_MAGIC.as_slice()) {
        let version = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
        let payload = unframe(bytes.get(8..)?)?;
        return match version {
            2 => postcard::from_bytes(payload).ok(),
            _ => None,
        };
    }
    let payload = unframe(bytes)?;
    postcard::from_bytes::<legacy::StateV1>(payload).ok().map(legacy::StateV1::upgrade)
}

/// The version 1 snapshot (no header, no product, no tombstones), read for upgrades.
mod legacy {
    use super::*;

    /// A position as a version 1 snapshot holds it.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct PositionStateV1 {
        /// See [`PositionState`].
        pub registered: Record,
        /// See [`PositionState`].
        pub stop_loss: Option<i64>,
        /// See [`PositionState`].
        pub take_profit: Option<i64>,
        /// See [`PositionState`].
        pub decided: Option<Record>,
        /// See [`PositionState`].
        pub attempts: Vec<AttemptState>,
        /// See [`PositionState`].
        pub closed: Option<u8>,
        /// See [`PositionState`].
        pub seq: u64,
    }

    /// The folded state as a version 1 snapshot holds it.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
    pub struct StateV1 {
        /// See [`State`].
        pub positions: BTreeMap<String, PositionStateV1>,
        /// See [`State`].
        pub max_generation: u32,
        /// See [`State`].
        pub seq: u64,
    }

    impl StateV1 {
        /// The version 2 state: no product known; every closed position becomes a tombstone
        /// with an unknown close time.
        pub fn upgrade(self) -> State {
            let mut s = State { max_generation: self.max_generation, seq: self.seq, ..State::default() };
            for (id, p) in self.positions {
                if let Some(how) = p.closed {
                    s.tombstones.insert(&id, how, 0, CLOSED_TOMBSTONES);
                }
                s.positions.insert(
                    id,
                    PositionState {
                        registered: p.registered,
                        stop_loss: p.stop_loss,
                        take_profit: p.take_profit,
                        decided: p.decided,
                        attempts: p.attempts,
                        closed: p.closed,
                        seq: p.seq,
                        product: None,
                    },
                );
            }
            s
        }
    }
}
/// Wall-clock milliseconds since the Unix epoch (journal timestamps only; decisions never use
/// the wall clock).
pub fn unix_ms() -> u64 {
    crate::bus::clock::wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Placeholder time for recovered attempts: their send time on this boot's monotonic clock is
/// unknown, so recovery dates them at boot, which only ever makes the absent-only-after rule
/// wait longer.
pub const RECOVERED_SENT_AT: Timestamp = Timestamp::ZERO;

/// Renders records as text for `tickguard journal dump`.
pub fn dump(dir: &Path, out: &mut impl Write) -> Result<(), StoreError> {
    let snap = dir.join(SNAPSHOT);
    if let Ok(bytes) = std::fs::read(&snap) {
        match read_snapshot(&bytes) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "# snapshot {} ({} positions, {} closed ids remembered)",
                    snap.display(),
                    s.positions.len(),
                    s.tombstones.len()
                );
                for (id, p) in &s.positions {
                    let _ = writeln!(
                        out,
                        "snapshot id={id} closed={:?} filled={} attempts={} decided={} product={}",
                        p.closed,
                        p.filled(),
                        p.attempts.len(),
                        p.decided.is_some(),
                        p.product.as_deref().unwrap_or("-")
                    );
                }
            }
            None => {
                let _ = writeln!(out, "# snapshot {} is corrupt", snap.display());
            }
        }
    }
    let jpath = dir.join(JOURNAL);
    let bytes = std::fs::read(&jpath).map_err(io(&jpath, "read journal"))?;
    let (records, good) = read_frames(&bytes);
    let _ = writeln!(out, "# journal {} ({} records, {} bytes)", jpath.display(), records.len(), bytes.len());
    for r in &records {
        let _ = writeln!(out, "{r:?}");
    }
    if good < bytes.len() {
        let _ = writeln!(out, "# torn tail at offset {good}: {} bytes not readable", bytes.len() - good);
    }
    Ok(())
}

// ----- conversion between the journal and the engine ------------------------------------

use crate::core::book::{ClosedHow, Decision, OrderPhase, PositionSpec};
use crate::core::engine::{Restored, RestoredPhase};
use crate::core::price::{Price, Qty, notional};
use crate::core::types::{BlindPolicy, CloseReason, PriceSource, Side};

/// Journal code of a side.
pub fn side_code(s: Side) -> u8 {
    match s {
        Side::Long => 0,
        Side::Short => 1,
    }
}
/// Journal code of a close reason.
pub fn reason_code(r: CloseReason) -> u8 {
    match r {
        CloseReason::StopLoss => 0,
        CloseReason::TakeProfit => 1,
        CloseReason::Emergency => 2,
        CloseReason::Blind => 3,
    }
}
/// Journal code of a decision source.
pub fn source_code(s: PriceSource) -> u8 {
    match s {
        PriceSource::Live => 0,
        PriceSource::Rest => 1,
        PriceSource::Cache => 2,
        PriceSource::Manual => 3,
        PriceSource::None => 4,
    }
}
/// Journal code of how a position ended.
pub fn how_code(h: ClosedHow) -> u8 {
    match h {
        ClosedHow::Filled => 0,
        ClosedHow::External => 1,
        ClosedHow::Resolved => 2,
        ClosedHow::Withdrawn => 3,
    }
}

/// The `Registered` record of a spec.
pub fn registered(spec: &PositionSpec, generation: u32) -> Record {
    Record::Registered {
        id: spec.id.to_string(),
        generation,
        symbol: spec.symbol.to_string(),
        side: side_code(spec.side),
        qty: spec.qty.units(),
        entry: spec.entry.units(),
        stop_loss: spec.stop_loss.map(|p| p.units()),
        take_profit: spec.take_profit.map(|p| p.units()),
        blind: match spec.blind_policy {
            BlindPolicy::Alert => 0,
            BlindPolicy::Flatten => 1,
        },
    }
}

/// The `Product` record: the broker product (`D`, `I`, `MTF` at Upstox) of position `id`,
/// journaled with (or right after) its `Registered` record so a restored position closes with it.
pub fn product_record(id: &str, product: &str) -> Record {
    Record::Product { id: id.into(), product: product.into() }
}

/// The record of a position's end, stamped with the wall clock ([`Record::ClosedAt`]).
pub fn closed_record(id: &str, how: ClosedHow) -> Record {
    Record::ClosedAt { id: id.into(), how: how_code(how), at_unix_ms: unix_ms() }
}

/// The `Decided` record of a decision.
pub fn decided(id: &str, d: &Decision) -> Record {
    Record::Decided {
        id: id.into(),
        reason: reason_code(d.reason),
        price: d.price.map(|p| p.units()),
        source: source_code(d.source),
        age_ms: crate::core::time::millis(d.age),
        level: d.level.map(|p| p.units()),
    }
}

/// Rebuilds what the engine needs from a folded position; `None` if the record is unusable.
pub fn restored(p: &PositionState) -> Option<Restored> {
    let Record::Registered { id, generation, symbol, side, qty, entry, blind, .. } = &p.registered else {
        return None;
    };
    let spec = PositionSpec {
        id: id.as_str().try_into().ok()?,
        symbol: symbol.as_str().try_into().ok()?,
        side: if *side == 1 { Side::Short } else { Side::Long },
        qty: Qty::from_units(*qty),
        entry: Price::from_units(*entry),
        stop_loss: p.stop_loss.map(Price::from_units),
        take_profit: p.take_profit.map(Price::from_units),
        blind_policy: if *blind == 1 { BlindPolicy::Flatten } else { BlindPolicy::Alert },
    };
    let filled = Qty::from_units(p.filled());
    let exit_notional: i128 = p
        .attempts
        .iter()
        .map(|a| notional(Price::from_units(a.price.unwrap_or(*entry)), Qty::from_units(a.executed)))
        .sum();
    let attempts = p.attempts.iter().map(|a| a.attempt).max().unwrap_or(0);
    let decision = match &p.decided {
        Some(Record::Decided { reason, price, source, age_ms, level, .. }) => Some(Decision {
            reason: match reason {
                0 => CloseReason::StopLoss,
                1 => CloseReason::TakeProfit,
                3 => CloseReason::Blind,
                _ => CloseReason::Emergency,
            },
            price: price.map(Price::from_units),
            source: match source {
                0 => PriceSource::Live,
                1 => PriceSource::Rest,
                2 => PriceSource::Cache,
                3 => PriceSource::Manual,
                _ => PriceSource::None,
            },
            age: std::time::Duration::from_millis(*age_ms),
            level: level.map(Price::from_units),
            at: RECOVERED_SENT_AT,
        }),
        _ => None,
    };
    let failures = p
        .attempts
        .iter()
        .filter(|a| a.kind == Some(3) || (matches!(a.kind, Some(0) | Some(1)) && a.executed == 0))
        .count() as u16;
    let phase = if let Some(how) = p.closed {
        RestoredPhase::Closed(how_of(how))
    } else if decision.is_none() && p.attempts.iter().all(|a| a.kind.is_some() && a.kind != Some(2)) {
        RestoredPhase::Open
    } else {
        match p.attempts.last() {
            None => RestoredPhase::Closing {
                client_id: Default::default(),
                order: OrderPhase::Waiting,
                order_qty: Qty::ZERO,
                order_executed: Qty::ZERO,
                failures,
            },
            Some(a) => RestoredPhase::Closing {
                client_id: a.client_id.as_str().try_into().ok()?,
                order: match a.kind {
                    // Sent, outcome never recorded: it may have executed. Look it up first.
                    None => OrderPhase::Unknown,
                    Some(2) => OrderPhase::Working,
                    _ => OrderPhase::Waiting,
                },
                order_qty: Qty::from_units(a.qty),
                order_executed: Qty::from_units(a.executed),
                failures,
            },
        }
    };
    Some(Restored { spec, generation: *generation, filled, exit_notional, attempts, decision, phase })
}

fn intent_record(order: &crate::bus::orders::CloseOrder) -> Record {
    Record::Intent {
        id: order.pos_id.to_string(),
        client_id: order.client_id.to_string(),
        attempt: order.attempt,
        qty: order.qty.units(),
        sent_unix_ms: unix_ms(),
    }
}

impl crate::bus::orders::OrderJournal for Journal {
    fn intent(&self, order: &crate::bus::orders::CloseOrder, _sent_at: Timestamp) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.enqueue(Job {
            records: vec![intent_record(order)],
            sync: false,
            barrier: false,
            guarded: true,
            done: Done::Blocking(tx),
        });
        rx.recv().unwrap_or_else(|_| Err(self.stopped())).map_err(|e| e.to_string())
    }
    fn outcome(&self, pos_id: &str, client_id: &str, outcome: &Outcome) -> Result<(), String> {
        match Record::outcome(pos_id, client_id, outcome) {
            Some(r) => self.append(&r).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
    fn intent_handover(
        &self,
        order: &crate::bus::orders::CloseOrder,
        _sent_at: Timestamp,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Job {
            records: vec![intent_record(order)],
            sync: false,
            barrier: false,
            guarded: true,
            done: Done::AsyncText(tx),
        });
        rx
    }
    fn outcome_handover(
        &self,
        pos_id: &str,
        client_id: &str,
        outcome: &Outcome,
    ) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match Record::outcome(pos_id, client_id, outcome) {
            Some(r) => self.submit(vec![r], Done::AsyncText(tx)),
            None => {
                let _ = tx.send(Ok(()));
            }
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str) -> Record {
        Record::Registered {
            id: id.into(),
            generation: 7,
            symbol: "BOSCHLTD".into(),
            side: 0,
            qty: 10,
            entry: 735,
            stop_loss: Some(698),
            take_profit: None,
            blind: 0,
        }
    }

    #[test]
    fn folding_is_idempotent() {
        let recs = vec![
            reg("a"),
            Record::Decided {
                id: "a".into(),
                reason: 0,
                price: Some(575),
                source: 2,
                age_ms: 45_000,
                level: Some(698),
            },
            Record::Intent {
                id: "a".into(),
                client_id: "tg7-a-1".into(),
                attempt: 1,
                qty: 10,
                sent_unix_ms: 1,
            },
            Record::Outcome {
                id: "a".into(),
                client_id: "tg7-a-1".into(),
                kind: 1,
                executed: 4,
                price: Some(575),
            },
        ];
        let mut once = State::default();
        for r in &recs {
            once.apply(r);
        }
        let mut twice = once.clone();
        for r in &recs {
            twice.apply(r);
        }
        twice.seq = once.seq;
        for p in twice.positions.values_mut() {
            p.seq = 0;
        }
        let mut once2 = once.clone();
        for p in once2.positions.values_mut() {
            p.seq = 0;
        }
        assert_eq!(once2, twice);
        assert_eq!(once.positions["a"].filled(), 4);
        assert_eq!(once.max_generation, 7);
    }

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let r = reg("x");
        let payload = postcard::to_stdvec(&r).expect("encode");
        let mut bytes = frame(&payload);
        bytes.extend(frame(&payload));
        let (v, good) = read_frames(&bytes);
        assert_eq!((v.len(), good), (2, bytes.len()));
        let n = bytes.len();
        bytes[n - 1] ^= 0xFF;
        let (v, good) = read_frames(&bytes);
        assert_eq!((v.len(), good), (1, n / 2));
        assert_eq!(read_frames(&[0xFF; 7]).0.len(), 0);
        assert_eq!(read_frames(&[0xFF; 64]).0.len(), 0);
    }

    #[test]
    fn ids_pack_exactly() {
        for id in ["a", "0", "-", "_", "BTC-grid_0001", "zzzzzzzzzzzzzzzzzzzz", "AAAAAAAAAAAAAAAAAAAA"] {
            let k = pack_id(id).expect("packable");
            assert_eq!(unpack_id(k), id);
        }
        // Length is part of the key: "0" and "00" differ although '0' packs as zero.
        assert_ne!(pack_id("0"), pack_id("00"));
        assert_eq!(pack_id(""), None);
        assert_eq!(pack_id("has space"), None);
        assert_eq!(pack_id("123456789012345678901"), None);
        let mut t = Tombstones::default();
        t.insert("has space", 2, 7, 16);
        t.insert("0", 1, 8, 16);
        assert_eq!(t.get("has space"), Some(ClosedInfo { how: ClosedHow::Resolved, at_unix_ms: 7 }));
        assert_eq!(t.get("0"), Some(ClosedInfo { how: ClosedHow::External, at_unix_ms: 8 }));
        assert_eq!(t.get("00"), None);
    }

    #[test]
    fn tombstones_are_bounded_and_forget_the_oldest() {
        let cap = 64;
        let mut t = Tombstones::default();
        for i in 0..1000u64 {
            t.insert(&format!("id{i}"), 0, 1_000 + i, cap);
            assert!(t.len() <= cap);
        }
        assert!(t.get("id999").is_some());
        assert!(t.get("id0").is_none());
        // What is kept is the newest.
        let oldest_kept = t.iter().map(|(_, c)| c.at_unix_ms).min().expect("some");
        assert_eq!(oldest_kept, 1_000 + 1000 - t.len() as u64);
    }

    #[test]
    fn a_close_is_a_tombstone_and_a_new_life_clears_it() {
        let mut s = State::default();
        s.apply(&reg("a"));
        assert_eq!(s.closed("a"), None);
        s.apply(&Record::ClosedAt { id: "a".into(), how: 3, at_unix_ms: 1_764_785_135_123 });
        let c = s.closed("a").expect("closed");
        assert_eq!(c.how, ClosedHow::Withdrawn);
        assert_eq!(c.describe(), "withdrawn at 2025-12-03T18:05:35.123Z");
        // Replaying is idempotent.
        s.apply(&Record::ClosedAt { id: "a".into(), how: 3, at_unix_ms: 1_764_785_135_123 });
        assert_eq!(s.closed("a"), Some(c));
        s.apply(&reg("a"));
        assert_eq!(s.closed("a"), None, "registered again: open, not closed");
        // A close of a position already pruned is still remembered.
        s.apply(&Record::Closed { id: "gone".into(), how: 1 });
        assert_eq!(s.closed("gone").map(|c| (c.how, c.at_unix_ms)), Some((ClosedHow::External, 0)));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn snapshots_carry_product_and_tombstones() {
        let mut s = State::default();
        s.apply(&reg("a"));
        s.apply(&product_record("a", "MTF"));
        s.apply(&reg("b"));
        s.apply(&Record::ClosedAt { id: "b".into(), how: 0, at_unix_ms: 5 });
        let bytes = frame_snapshot(&postcard::to_stdvec(&s).expect("encode"));
        assert_eq!(&bytes[..4], SNAPSHOT_MAGIC);
        let back = read_snapshot(&bytes).expect("decode");
        assert_eq!(back, s);
        assert_eq!(back.positions["a"].product.as_deref(), Some("MTF"));
        // A version this build does not know is refused, not misread.
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(read_snapshot(&future).is_none());
        assert!(read_snapshot(&bytes[..bytes.len() - 1]).is_none());
    }
}
