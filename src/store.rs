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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::core::engine::Outcome;
use crate::core::time::Timestamp;
use crate::limits::{CLOSED_REMEMBERED, MAX_RECORD};

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
    /// The position ended.
    Closed {
        /// Position id.
        id: String,
        /// 0 filled, 1 external, 2 resolved, 3 withdrawn.
        how: u8,
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
            | Record::Closed { id, .. } => id,
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
}

impl PositionState {
    /// Executed quantity over all attempts.
    pub fn filled(&self) -> i64 {
        self.attempts.iter().map(|a| a.executed).sum()
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
}

impl State {
    /// Applies one record. Idempotent: applying a record twice leaves the same state.
    pub fn apply(&mut self, r: &Record) {
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
            };
            // A re-registration of the same id after it closed starts a new life.
            match self.positions.get(id) {
                Some(p) if p.registered == *r && p.closed.is_none() => {}
                _ => {
                    self.positions.insert(id.clone(), fresh);
                }
            }
            return;
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
            Record::Closed { how, .. } => p.closed = Some(*how),
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

const JOURNAL: &str = "journal.tg";
const SNAPSHOT: &str = "snapshot.tg";

struct Inner {
    file: File,
    bytes: u64,
    state: State,
    /// Records written so far (the group-commit sequence).
    written: u64,
}

/// The journal of one state directory.
pub struct Journal {
    dir: PathBuf,
    fsync: Fsync,
    max_bytes: u64,
    inner: Mutex<Inner>,
    /// Group commit: the highest record sequence known durable, and the handle fsynced. Writers
    /// append under `inner`, then fsync outside it; one fsync covers every record written
    /// before it, so concurrent writers (the executor's order tasks) share fsyncs.
    synced: Mutex<u64>,
    sync_file: File,
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))
}

impl Journal {
    /// Opens (creating) the store in `dir` and recovers its state.
    pub fn open(dir: &Path, fsync: Fsync, max_bytes: u64) -> Result<(Journal, Recovered), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir, "create directory"))?;
        let mut rec = Recovered::default();
        let snap = dir.join(SNAPSHOT);
        if let Ok(bytes) = std::fs::read(&snap) {
            match read_snapshot(&bytes) {
                Some(s) => rec.state = s,
                None => log::error!(
                    "[STORE] event=snapshot_corrupt file={} (ignored; replaying the journal alone)",
                    snap.display()
                ),
            }
        }
        let jpath = dir.join(JOURNAL);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&jpath)
            .map_err(io(&jpath, "open journal"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(&jpath, "read journal"))?;
        let (records, good) = read_frames(&bytes);
        for r in &records {
            rec.state.apply(r);
        }
        rec.records = records.len();
        if good < bytes.len() {
            let dropped = (bytes.len() - good) as u64;
            log::warn!(
                "[STORE] event=torn_tail file={} offset={good} dropped_bytes={dropped} records_kept={} (the tail was never acknowledged)",
                jpath.display(),
                records.len()
            );
            file.set_len(good as u64).map_err(io(&jpath, "truncate torn tail"))?;
            file.sync_all().map_err(io(&jpath, "fsync"))?;
            rec.dropped = Some((good as u64, dropped));
        }
        let sync_file = file.try_clone().map_err(io(&jpath, "duplicate handle"))?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            fsync,
            max_bytes: max_bytes.max(4096),
            inner: Mutex::new(Inner { file, bytes: good as u64, state: rec.state.clone(), written: 0 }),
            synced: Mutex::new(0),
            sync_file,
        };
        Ok((journal, rec))
    }

    /// Appends a record (durable on return with `Fsync::Always`), compacting when the journal
    /// has grown past its limit.
    pub fn append(&self, r: &Record) -> Result<(), StoreError> {
        self.append_batch(std::slice::from_ref(r))
    }

    /// Appends records in order with one fsync for all of them (durable on return with
    /// `Fsync::Always`), compacting when the journal has grown past its limit.
    pub fn append_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut framed = Vec::new();
        for r in records {
            let payload = postcard::to_stdvec(r).map_err(|e| StoreError::Encode(e.to_string()))?;
            framed.extend_from_slice(&frame(&payload));
        }
        let jpath = self.dir.join(JOURNAL);
        let seq = {
            let mut g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.file.write_all(&framed).map_err(io(&jpath, "append"))?;
            g.bytes += framed.len() as u64;
            for r in records {
                g.state.apply(r);
            }
            g.written += records.len() as u64;
            if g.bytes > self.max_bytes {
                // The snapshot is fsynced before the journal is truncated: everything written
                // so far is durable after this.
                self.compact(&mut g)?;
            }
            g.written
        };
        if self.fsync == Fsync::Always {
            self.sync_upto(seq)?;
        }
        Ok(())
    }

    /// Makes every record up to `seq` durable, sharing one fsync among concurrent writers.
    fn sync_upto(&self, seq: u64) -> Result<(), StoreError> {
        let mut synced = self.synced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *synced >= seq {
            return Ok(());
        }
        let target = self.inner.lock().map(|g| g.written).unwrap_or(seq).max(seq);
        self.sync_file.sync_data().map_err(io(&self.dir.join(JOURNAL), "fsync"))?;
        *synced = target;
        Ok(())
    }

    /// Journal size in bytes (for metrics).
    pub fn bytes(&self) -> u64 {
        self.inner.lock().map(|g| g.bytes).unwrap_or(0)
    }

    /// A copy of the folded state.
    pub fn state(&self) -> State {
        self.inner.lock().map(|g| g.state.clone()).unwrap_or_default()
    }

    /// Flushes everything to disk (graceful stop).
    pub fn sync(&self) -> Result<(), StoreError> {
        let g = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.file.sync_all().map_err(io(&self.dir.join(JOURNAL), "fsync"))
    }

    fn compact(&self, g: &mut Inner) -> Result<(), StoreError> {
        g.state.prune();
        let payload = postcard::to_stdvec(&g.state).map_err(|e| StoreError::Encode(e.to_string()))?;
        let tmp = self.dir.join("snapshot.tmp");
        let snap = self.dir.join(SNAPSHOT);
        {
            let mut f = File::create(&tmp).map_err(io(&tmp, "create snapshot"))?;
            f.write_all(&frame_snapshot(&payload)).map_err(io(&tmp, "write snapshot"))?;
            f.sync_all().map_err(io(&tmp, "fsync snapshot"))?;
        }
        std::fs::rename(&tmp, &snap).map_err(io(&snap, "rename snapshot"))?;
        sync_dir(&self.dir)?;
        let jpath = self.dir.join(JOURNAL);
        g.file.set_len(0).map_err(io(&jpath, "truncate journal"))?;
        g.file.sync_all().map_err(io(&jpath, "fsync journal"))?;
        log::info!(
            "[STORE] event=compacted snapshot_bytes={} positions={}",
            payload.len(),
            g.state.positions.len()
        );
        g.bytes = 0;
        Ok(())
    }
}

fn frame_snapshot(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn read_snapshot(bytes: &[u8]) -> Option<State> {
    if bytes.len() < 8 {
        return None;
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| postcard::from_bytes(payload).ok()).flatten()
}

/// Wall-clock milliseconds since the Unix epoch (journal timestamps only; decisions never use
/// the wall clock).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
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
                let _ = writeln!(out, "# snapshot {} ({} positions)", snap.display(), s.positions.len());
                for (id, p) in &s.positions {
                    let _ = writeln!(
                        out,
                        "snapshot id={id} closed={:?} filled={} attempts={} decided={}",
                        p.closed,
                        p.filled(),
                        p.attempts.len(),
                        p.decided.is_some()
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
        RestoredPhase::Closed(match how {
            0 => ClosedHow::Filled,
            1 => ClosedHow::External,
            2 => ClosedHow::Resolved,
            _ => ClosedHow::Withdrawn,
        })
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

impl crate::broker::OrderJournal for Journal {
    fn intent(&self, order: &crate::broker::CloseOrder, _sent_at: Timestamp) -> Result<(), String> {
        self.append(&Record::Intent {
            id: order.pos_id.to_string(),
            client_id: order.client_id.to_string(),
            attempt: order.attempt,
            qty: order.qty.units(),
            sent_unix_ms: unix_ms(),
        })
        .map_err(|e| e.to_string())
    }
    fn outcome(&self, pos_id: &str, client_id: &str, outcome: &Outcome) -> Result<(), String> {
        match Record::outcome(pos_id, client_id, outcome) {
            Some(r) => self.append(&r).map_err(|e| e.to_string()),
            None => Ok(()),
        }
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
}
