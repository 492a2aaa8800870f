//! The venue's list of symbols (Binance spot), for checking symbols at the door.
//!
//! The whole list comes from `GET /api/v3/exchangeInfo?permissions=SPOT` — never with
//! `symbols=[...]`, which Binance refuses whole (`-1121`) when one name in it is unknown. It
//! is fetched at start-up and then every `every` (daily in production) by
//! [`VenueSymbols::refresh_loop`]; a failed fetch is retried with a bounded backoff
//! ([`RETRY_INITIAL`] doubling to [`RETRY_MAX`]). Every good answer is stored in the state
//! directory ([`FILE_NAME`], written to a temporary file, fsynced, renamed, directory fsynced),
//! and loaded from there at start-up ([`VenueSymbols::open`]), so a start during a DNS outage
//! still knows the list. A missing or corrupt file is an empty list (logged), never an error:
//! the appliance must start whatever the state of this file.
//!
//! The answer is large (10-15 MB with every filter) and the appliance runs under
//! `MemoryMax` (48M), so it is never held whole: it is streamed ([`http::request_streaming`], in
//! pieces of at most [`crate::limits::EXCHANGE_INFO_CHUNK`] bytes) through
//! [`ExchangeInfoScanner`], whose memory is a constant (one `symbols` entry carried over chunk
//! boundaries, at most [`crate::limits::EXCHANGE_INFO_CARRY_MAX`] bytes). At most
//! [`crate::limits::EXCHANGE_INFO_MAX_BYTES`] are read, and at most
//! [`crate::limits::VENUE_SYMBOLS_MAX`] symbols are kept.
//!
//! Log lines (docs/logs.md): `[SYMBOLS] event=loaded|refreshed|refresh_failed|stored|store_failed`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::json::{MAX_DEPTH, Value, for_each_element, for_each_member};
use crate::limits::{
    EXCHANGE_INFO_CARRY_MAX, EXCHANGE_INFO_CHUNK, EXCHANGE_INFO_MAX_BYTES, SYMBOL_MAX, VENUE_SYMBOLS_MAX,
};
use crate::net::http::{self, Connector, Endpoint, Req};

/// The stored list's file name in the state directory.
pub const FILE_NAME: &str = "symbols-binance.txt";
/// First line of the stored list (format version 1).
const MAGIC: &str = "tickguard-venue-symbols v1 venue=binance";
/// First retry delay of a failed fetch.
pub const RETRY_INITIAL: Duration = Duration::from_secs(5);
/// Longest retry delay of a failed fetch.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// Bound of one fetch (the answer is about 10 MB).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The request: spot symbols only, the whole list (never `symbols=[...]`).
pub const EXCHANGE_INFO_QUERY: &str = "/api/v3/exchangeInfo?permissions=SPOT";

/// What the venue's list says about a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On the list with status `TRADING`.
    Traded,
    /// Not on the list, or on it with another status (`BREAK`, `HALT`, ...).
    NotTraded,
    /// No list is known yet (never fetched and nothing stored): cannot tell.
    Unverified,
}

/// One list: symbol (upper case) → whether its status is `TRADING`, and when it was fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolList {
    /// Symbol → traded.
    pub symbols: HashMap<String, bool>,
    /// Wall-clock time of the fetch (milliseconds since the Unix epoch).
    pub fetched_unix_ms: u64,
}

impl SymbolList {
    /// The verdict for `symbol` (compared upper-case).
    pub fn verdict(&self, symbol: &str) -> Verdict {
        match self.symbols.get(&symbol.to_ascii_uppercase()) {
            Some(true) => Verdict::Traded,
            _ => Verdict::NotTraded,
        }
    }

    /// Symbols with status `TRADING`.
    pub fn traded(&self) -> usize {
        self.symbols.values().filter(|t| **t).count()
    }
}

/// A symbol as the list keeps it: 1..=[`SYMBOL_MAX`] bytes of `[A-Za-z0-9_-]`, upper-cased.
fn clean_symbol(s: &[u8]) -> Option<String> {
    if s.is_empty() || s.len() > SYMBOL_MAX {
        return None;
    }
    if !s.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-') {
        return None;
    }
    std::str::from_utf8(s).ok().map(str::to_ascii_uppercase)
}

/// What the `symbols` entries of an answer gave so far. Shared by [`parse_exchange_info`] and
/// [`ExchangeInfoScanner`], so that both judge an entry alike.
#[derive(Debug, Default)]
struct Collector {
    symbols: HashMap<String, bool>,
    skipped: usize,
    too_many: bool,
}

impl Collector {
    /// One element of `symbols`: an object with a `symbol` and a `status` is kept, anything
    /// else is counted as skipped. `false` when the list is full: the answer is refused.
    fn element(&mut self, v: Value<'_>) -> bool {
        let Value::Object(o) = v else {
            self.skipped += 1;
            return true;
        };
        let (mut sym, mut status) = (None, None);
        // Only this entry's own members: a `status` inside its `filters` or any other nested
        // value is skipped whole by the walk, never read as the entry's status.
        let _ = for_each_member(o, |k, v| {
            match (k, v) {
                (b"symbol", Value::Str(s)) => sym = Some(s),
                (b"status", Value::Str(s)) => status = Some(s),
                _ => {}
            }
            sym.is_none() || status.is_none()
        });
        match (sym.and_then(clean_symbol), status) {
            (Some(s), Some(st)) => {
                if self.symbols.len() >= VENUE_SYMBOLS_MAX {
                    self.too_many = true;
                    return false;
                }
                self.symbols.insert(s, st == b"TRADING");
            }
            _ => self.skipped += 1,
        }
        true
    }

    fn too_many_error() -> String {
        format!("more than {VENUE_SYMBOLS_MAX} symbols (limits::VENUE_SYMBOLS_MAX)")
    }

    /// The list, once the whole `symbols` array was read.
    fn finish(self, fetched_unix_ms: u64) -> Result<SymbolList, String> {
        if self.too_many {
            return Err(Self::too_many_error());
        }
        if self.symbols.is_empty() {
            return Err(format!("no symbol in the answer ({} unreadable entries)", self.skipped));
        }
        if self.skipped > 0 {
            log::warn!("[SYMBOLS] event=entries_skipped venue=binance skipped={}", self.skipped);
        }
        Ok(SymbolList { symbols: self.symbols, fetched_unix_ms })
    }
}

/// Parses a whole `exchangeInfo` answer: every element of its `symbols` array with a `symbol`
/// and a `status`. Fails on anything that is not such an object, on an empty list (an answer
/// without a single symbol is not a list to trust) and on more than [`VENUE_SYMBOLS_MAX`]
/// symbols. The fetch streams the answer through [`ExchangeInfoScanner`] instead, which keeps
/// these semantics (property-tested against this parser) without holding the answer.
pub fn parse_exchange_info(body: &[u8], fetched_unix_ms: u64) -> Result<SymbolList, String> {
    let trimmed = match body.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => &body[i..],
        None => return Err("empty answer".into()),
    };
    let mut array = None;
    for_each_member(trimmed, |k, v| {
        if k == b"symbols" {
            if let Value::Array(a) = v {
                array = Some(a);
            }
            return false;
        }
        true
    })
    .map_err(|e| format!("not a JSON object: {e:?}"))?;
    let Some(array) = array else { return Err("no \"symbols\" array".into()) };
    let mut found = Collector::default();
    for_each_element(array, |v| found.element(v))
        .map_err(|e| format!("unreadable \"symbols\" array: {e:?}"))?;
    found.finish(fetched_unix_ms)
}

/// Where [`ExchangeInfoScanner`] is in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Before the top-level object (whitespace).
    Start,
    /// After the top-level `{`: a key or `}`.
    Open,
    /// After a member's `,`: a key.
    NextKey,
    /// In a top-level key.
    Key,
    /// After a top-level key: `:`.
    Colon,
    /// After `:`: a top-level member's value.
    Value,
    /// In a string value.
    Str,
    /// In an object or array value (`depth` brackets open).
    Nested,
    /// In `true`, `false` or `null`.
    Word,
    /// In a number.
    Number,
    /// After a top-level member's value: `,` or `}`.
    AfterMember,
    /// After the `[` of `symbols`: an element or `]`.
    ArrayOpen,
    /// An element of `symbols`.
    Element,
    /// After an element of `symbols`: `,` or `]`.
    AfterElement,
    /// The `symbols` array is read; the rest of the answer is ignored.
    Done,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// An incremental reader of an `exchangeInfo` answer, fed piece by piece as the answer
/// arrives ([`ExchangeInfoScanner::feed`], then [`ExchangeInfoScanner::finish`]), so that the
/// answer (10-15 MB) is never held whole. Its memory is a constant: the one `symbols` entry
/// being read is carried over chunk boundaries in a buffer of
/// [`EXCHANGE_INFO_CARRY_MAX`] bytes (an entry is 2-4 KB; a larger one fails the fetch), and is
/// judged whole by the same code as [`parse_exchange_info`]; everything else (the top-level
/// `timezone`, `serverTime`, `rateLimits`, `exchangeFilters`, ...) is skipped byte by byte,
/// strings and nesting tracked, with the same syntax rules and depth bound
/// ([`super::json::MAX_DEPTH`]) as the whole-buffer walk. Only the top-level `symbols` array's
/// own entries count, so a `status` nested in an entry or elsewhere is never taken for one.
///
/// Same results as [`parse_exchange_info`] on the same bytes, however they are cut (the
/// property tests of this module check it), with two differences that are both refusals: an entry
/// larger than [`EXCHANGE_INFO_CARRY_MAX`] is refused, and a refused answer may be refused
/// for another of its faults (the first met in reading order).
#[derive(Debug)]
pub struct ExchangeInfoScanner {
    at: At,
    /// Open brackets in the value being skipped (the `symbols` array itself counts as one).
    depth: usize,
    /// Depth at which the value being skipped ends (0 top-level, 1 in `symbols`).
    base: usize,
    in_str: bool,
    esc: bool,
    /// The first bytes of the top-level key being read, and its length.
    key: [u8; 7],
    key_len: usize,
    word: &'static [u8],
    word_at: usize,
    in_array: bool,
    /// Copying the current `symbols` element (an object) into `carry`.
    carrying: bool,
    carry: Vec<u8>,
    found: Collector,
    /// Bytes fed so far (for error messages).
    pos: usize,
    failed: Option<String>,
}

impl Default for ExchangeInfoScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ExchangeInfoScanner {
    /// A scanner at the start of an answer (allocates its carry buffer once).
    pub fn new() -> ExchangeInfoScanner {
        ExchangeInfoScanner {
            at: At::Start,
            depth: 0,
            base: 0,
            in_str: false,
            esc: false,
            key: [0; 7],
            key_len: 0,
            word: b"",
            word_at: 0,
            in_array: false,
            carrying: false,
            carry: Vec::with_capacity(EXCHANGE_INFO_CARRY_MAX),
            found: Collector::default(),
            pos: 0,
            failed: None,
        }
    }

    /// Reads the next piece of the answer. After an `Err` every further call fails alike.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut i = 0;
        while i < chunk.len() {
            if self.at == At::Done {
                // Nothing after the `symbols` array is read (as the whole-buffer parser).
                self.pos += chunk.len() - i;
                return Ok(());
            }
            match self.step(chunk[i]) {
                Ok(true) => {
                    i += 1;
                    self.pos += 1;
                }
                Ok(false) => {}
                Err(e) => {
                    let e = format!("{e} (at byte {})", self.pos);
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The list, once the whole answer was fed.
    pub fn finish(self, fetched_unix_ms: u64) -> Result<SymbolList, String> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.at {
            At::Done => self.found.finish(fetched_unix_ms),
            At::Start => Err("empty answer".into()),
            at => Err(format!("truncated answer: it ends at byte {} ({at:?})", self.pos)),
        }
    }

    /// What an error is about (worded as [`parse_exchange_info`] words it).
    fn what(&self) -> &'static str {
        if self.in_array { "unreadable \"symbols\" array" } else { "not a JSON object" }
    }

    fn syntax(&self, b: u8) -> String {
        format!("{}: unexpected byte {:?}", self.what(), char::from(b))
    }

    /// Reads one byte; `Ok(false)` when the byte ends a number and must be read again in the
    /// next state.
    fn step(&mut self, b: u8) -> Result<bool, String> {
        match self.at {
            At::Start if b.is_ascii_whitespace() => {}
            At::Start if b == b'{' => self.at = At::Open,
            At::Open | At::NextKey | At::Colon | At::Value | At::AfterMember if is_ws(b) => {}
            At::ArrayOpen | At::Element | At::AfterElement if is_ws(b) => {}
            At::Open if b == b'}' => return Err("no \"symbols\" array".into()),
            At::Open | At::NextKey if b == b'"' => {
                self.at = At::Key;
                (self.key_len, self.esc) = (0, false);
            }
            At::Key => {
                if !self.esc && b == b'"' {
                    self.at = At::Colon;
                    return Ok(true);
                }
                if !self.esc && b < 0x20 {
                    return Err(self.syntax(b));
                }
                self.esc = !self.esc && b == b'\\';
                if let Some(k) = self.key.get_mut(self.key_len) {
                    *k = b;
                }
                self.key_len = self.key_len.saturating_add(1);
            }
            At::Colon if b == b':' => self.at = At::Value,
            At::Value if self.key_len == 7 && &self.key == b"symbols" => {
                if b != b'[' {
                    return Err("no \"symbols\" array".into());
                }
                (self.at, self.in_array, self.depth) = (At::ArrayOpen, true, 1);
            }
            At::Value | At::Element => self.start_value(b)?,
            At::Str => {
                if !self.esc && b == b'"' {
                    self.value_done()?;
                } else if !self.esc && b < 0x20 {
                    return Err(self.syntax(b));
                } else {
                    self.esc = !self.esc && b == b'\\';
                }
            }
            At::Nested => self.nested(b)?,
            At::Word => {
                if self.word.get(self.word_at) != Some(&b) {
                    return Err(self.syntax(b));
                }
                self.word_at += 1;
                if self.word_at == self.word.len() {
                    self.value_done()?;
                }
            }
            At::Number => {
                if !(b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) {
                    self.value_done()?;
                    return Ok(false);
                }
            }
            At::AfterMember if b == b',' => self.at = At::NextKey,
            At::AfterMember if b == b'}' => return Err("no \"symbols\" array".into()),
            At::ArrayOpen if b == b']' => self.at = At::Done,
            At::ArrayOpen => {
                self.at = At::Element;
                return Ok(false);
            }
            At::AfterElement if b == b',' => self.at = At::Element,
            At::AfterElement if b == b']' => self.at = At::Done,
            At::Done => {}
            _ => return Err(self.syntax(b)),
        }
        Ok(true)
    }

    /// The first byte of a value (a top-level member's or an element's).
    fn start_value(&mut self, b: u8) -> Result<(), String> {
        self.base = usize::from(self.in_array);
        match b {
            b'"' => (self.at, self.esc) = (At::Str, false),
            b'{' | b'[' => {
                (self.at, self.in_str, self.esc) = (At::Nested, false, false);
                self.depth = self.base + 1;
                if self.in_array && b == b'{' {
                    self.carrying = true;
                    self.carry.clear();
                    self.carry.push(b);
                }
            }
            b't' => (self.at, self.word, self.word_at) = (At::Word, b"true", 1),
            b'f' => (self.at, self.word, self.word_at) = (At::Word, b"false", 1),
            b'n' => (self.at, self.word, self.word_at) = (At::Word, b"null", 1),
            b'-' | b'0'..=b'9' => self.at = At::Number,
            _ => return Err(self.syntax(b)),
        }
        Ok(())
    }

    /// One byte of an object or array being skipped (and carried, for a `symbols` entry).
    fn nested(&mut self, b: u8) -> Result<(), String> {
        if self.carrying {
            if self.carry.len() >= EXCHANGE_INFO_CARRY_MAX {
                return Err(format!(
                    "a \"symbols\" entry is larger than {EXCHANGE_INFO_CARRY_MAX} bytes (limits::EXCHANGE_INFO_CARRY_MAX)"
                ));
            }
            self.carry.push(b);
        }
        if self.in_str {
            if !self.esc && b == b'"' {
                self.in_str = false;
            } else if !self.esc && b < 0x20 {
                return Err(self.syntax(b));
            } else {
                self.esc = !self.esc && b == b'\\';
            }
            return Ok(());
        }
        match b {
            b'"' => (self.in_str, self.esc) = (true, false),
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(format!("{}: nested deeper than {MAX_DEPTH}", self.what()));
                }
            }
            // Any closing bracket closes one level, as the whole-buffer walk does.
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == self.base {
                    self.value_done()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A value ended: judge it if it is a `symbols` element.
    fn value_done(&mut self) -> Result<(), String> {
        if !self.in_array {
            self.at = At::AfterMember;
            return Ok(());
        }
        self.at = At::AfterElement;
        if !self.carrying {
            // A string, number, literal or array: not an entry (counted as skipped).
            self.found.element(Value::Null);
            return Ok(());
        }
        self.carrying = false;
        if self.found.element(Value::Object(&self.carry)) { Ok(()) } else { Err(Collector::too_many_error()) }
    }
}

/// The stored form: a header line, `SYMBOL T|N` per symbol (sorted), and a trailer with the
/// count, so a truncated file is recognised as corrupt.
pub fn encode(list: &SymbolList) -> String {
    let mut names: Vec<(&String, &bool)> = list.symbols.iter().collect();
    names.sort();
    let mut out = String::with_capacity(16 * names.len() + 128);
    out.push_str(&format!("{MAGIC} fetched_unix_ms={}\n", list.fetched_unix_ms));
    for (s, t) in &names {
        out.push_str(s);
        out.push_str(if **t { " T\n" } else { " N\n" });
    }
    out.push_str(&format!("end count={}\n", names.len()));
    out
}

/// Reads the stored form; `Err` names what is wrong with it.
pub fn decode(text: &str) -> Result<SymbolList, String> {
    let mut lines = text.lines();
    let head = lines.next().ok_or("empty file")?;
    let ms = head
        .strip_prefix(MAGIC)
        .and_then(|r| r.trim().strip_prefix("fetched_unix_ms="))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or("not a symbol list (bad header)")?;
    let mut symbols = HashMap::new();
    for line in lines {
        if let Some(n) = line.strip_prefix("end count=") {
            let n: usize = n.parse().map_err(|_| "bad trailer")?;
            if n != symbols.len() {
                return Err(format!("trailer says {n} symbols, file holds {}", symbols.len()));
            }
            if symbols.is_empty() {
                return Err("no symbol".into());
            }
            return Ok(SymbolList { symbols, fetched_unix_ms: ms });
        }
        if symbols.len() >= VENUE_SYMBOLS_MAX {
            return Err(format!("more than {VENUE_SYMBOLS_MAX} symbols"));
        }
        let (s, t) = line.split_once(' ').ok_or_else(|| format!("bad line {line:?}"))?;
        let s = clean_symbol(s.as_bytes()).ok_or_else(|| format!("bad symbol {s:?}"))?;
        let traded = match t {
            "T" => true,
            "N" => false,
            _ => return Err(format!("bad status in line {line:?}")),
        };
        symbols.insert(s, traded);
    }
    Err("truncated (no trailer)".into())
}

/// Writes `list` to `dir/FILE_NAME` atomically: a temporary file, fsync, rename, fsync of the
/// directory. A crash at any point leaves either the old file or the new one.
pub fn store(dir: &Path, list: &SymbolList) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(list).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Reads `dir/FILE_NAME`: `Ok(None)` when there is none, `Err` when it cannot be read or is
/// corrupt. Bounded: a file larger than [`EXCHANGE_INFO_MAX_BYTES`] is corrupt.
pub fn read_stored(dir: &Path) -> Result<Option<SymbolList>, String> {
    let path = dir.join(FILE_NAME);
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) if m.len() > EXCHANGE_INFO_MAX_BYTES as u64 => {
            return Err(format!("{}: {} bytes is too large", path.display(), m.len()));
        }
        Ok(_) => {}
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(&text).map(Some).map_err(|e| format!("{}: {e}", path.display()))
}

fn now_unix_ms() -> u64 {
    crate::bus::clock::wall_now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The venue's symbol list, shared (as `Arc`) by the edge, the control plane and the status
/// page. Reads never wait on the network: the list is swapped whole after each good fetch.
#[derive(Debug)]
pub struct VenueSymbols {
    dir: PathBuf,
    list: RwLock<Option<Arc<SymbolList>>>,
    failures: AtomicU32,
}

impl VenueSymbols {
    /// Loads the list stored in `state_dir`. Never fails: a missing or corrupt file leaves the
    /// list unknown (every verdict [`Verdict::Unverified`] until the first good fetch), logged.
    pub fn open(state_dir: &Path) -> Arc<VenueSymbols> {
        let list = match read_stored(state_dir) {
            Ok(Some(l)) => {
                log::info!(
                    "[SYMBOLS] event=loaded venue=binance source=stored symbols={} traded={} fetched_unix_ms={} file={}",
                    l.symbols.len(),
                    l.traded(),
                    l.fetched_unix_ms,
                    state_dir.join(FILE_NAME).display()
                );
                Some(Arc::new(l))
            }
            Ok(None) => {
                log::info!(
                    "[SYMBOLS] event=loaded venue=binance source=none symbols=0 file={} (none stored yet: symbols are unverified until the first fetch)",
                    state_dir.join(FILE_NAME).display()
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "[SYMBOLS] event=loaded venue=binance source=corrupt symbols=0 cause=\"{}\" (ignored: symbols are unverified until the first fetch)",
                    e.replace('"', "'")
                );
                None
            }
        };
        Arc::new(VenueSymbols {
            dir: state_dir.to_path_buf(),
            list: RwLock::new(list),
            failures: AtomicU32::new(0),
        })
    }

    /// An unknown list that reads nothing (for a venue without one: every verdict is
    /// [`Verdict::Unverified`]). [`VenueSymbols::install`] would still store into `state_dir`.
    pub fn empty(state_dir: &Path) -> Arc<VenueSymbols> {
        Arc::new(VenueSymbols {
            dir: state_dir.to_path_buf(),
            list: RwLock::new(None),
            failures: AtomicU32::new(0),
        })
    }

    /// For `check-config` (no network, no logging): the list stored in `state_dir`, if any.
    /// `Ok(None)`: nothing stored (symbols cannot be verified offline); `Err`: the file is
    /// unreadable or corrupt.
    pub fn load_for_check(state_dir: &Path) -> Result<Option<SymbolList>, String> {
        read_stored(state_dir)
    }

    fn current(&self) -> Option<Arc<SymbolList>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the list says about `symbol` (compared upper-case).
    pub fn verdict(&self, symbol: &str) -> Verdict {
        match self.current() {
            None => Verdict::Unverified,
            Some(l) => l.verdict(symbol),
        }
    }

    /// Symbols on the list (any status); 0 while none is known.
    pub fn symbols_on_list(&self) -> usize {
        self.current().map_or(0, |l| l.symbols.len())
    }

    /// When the list in use was fetched from the venue (it may have been loaded from the state
    /// directory); `None` while none is known.
    pub fn fetched_at(&self) -> Option<SystemTime> {
        self.current().map(|l| UNIX_EPOCH + Duration::from_millis(l.fetched_unix_ms))
    }

    /// Fetches that failed in a row since the last good one (0 after a good fetch), for the
    /// status page and metrics: a list that cannot be refreshed for days goes stale.
    pub fn refresh_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Replaces the list in use and stores it (a failed write is logged; the new list is used
    /// anyway).
    pub fn install(&self, list: SymbolList) {
        match store(&self.dir, &list) {
            Ok(path) => log::info!(
                "[SYMBOLS] event=stored venue=binance symbols={} file={}",
                list.symbols.len(),
                path.display()
            ),
            Err(e) => log::error!(
                "[SYMBOLS] event=store_failed venue=binance file={} error=\"{e}\" (the new list is used, but a restart during a DNS outage would not have it)",
                self.dir.join(FILE_NAME).display()
            ),
        }
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(list));
    }

    /// One fetch of the whole list from `rest` (`feed.rest_url`), streamed: the answer is read
    /// in pieces of at most [`EXCHANGE_INFO_CHUNK`] bytes through an [`ExchangeInfoScanner`],
    /// never held whole; at most [`EXCHANGE_INFO_MAX_BYTES`] are read, within [`FETCH_TIMEOUT`].
    pub async fn fetch(connector: &Connector, rest: &Endpoint) -> Result<SymbolList, String> {
        let base = rest.path.split('?').next().unwrap_or("").trim_end_matches('/');
        let path = format!("{base}{EXCHANGE_INFO_QUERY}");
        let req = Req {
            method: "GET",
            path: &path,
            headers: &[],
            body: None,
            timeout: FETCH_TIMEOUT,
            max_body: EXCHANGE_INFO_MAX_BYTES,
        };
        /// Bytes of an error answer quoted in the error.
        const QUOTED: usize = 200;
        let mut scanner = ExchangeInfoScanner::new();
        let mut quoted: Vec<u8> = Vec::new();
        let head = http::request_streaming(connector, rest, req, EXCHANGE_INFO_CHUNK, |head, piece| {
            if head.status == 200 {
                scanner.feed(piece)
            } else {
                let room = QUOTED.saturating_sub(quoted.len());
                quoted.extend_from_slice(&piece[..piece.len().min(room)]);
                Ok(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        if head.status != 200 {
            return Err(format!("HTTP {}: {}", head.status, String::from_utf8_lossy(&quoted)));
        }
        scanner.finish(now_unix_ms())
    }

    /// Fetches the list at once, then every `every`; a failed fetch is retried after
    /// [`RETRY_INITIAL`], doubling up to [`RETRY_MAX`] (never longer than `every`). Each good
    /// answer is installed and stored. Returns when `stop` fires.
    pub async fn refresh_loop(
        self: Arc<Self>,
        connector: Connector,
        rest: Endpoint,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut retry = RETRY_INITIAL;
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let t0 = crate::bus::clock::mono();
            let result = tokio::select! {
                _ = stop.changed() => return,
                r = Self::fetch(&connector, &rest) => r,
            };
            let ms = t0.elapsed().as_millis();
            let wait = match result {
                Ok(list) => {
                    log::info!(
                        "[SYMBOLS] event=refreshed venue=binance host={} symbols={} traded={} time_ms={ms}",
                        rest.host,
                        list.symbols.len(),
                        list.traded()
                    );
                    self.install(list);
                    failures = 0;
                    self.failures.store(0, Ordering::Relaxed);
                    retry = RETRY_INITIAL;
                    every
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.failures.store(failures, Ordering::Relaxed);
                    let wait = retry.min(every.max(Duration::from_millis(1)));
                    log::warn!(
                        "[SYMBOLS] event=refresh_failed venue=binance host={} failures={failures} retry_ms={} symbols={} cause=\"{}\" time_ms={ms}",
                        rest.host,
                        wait.as_millis(),
                        self.symbols_on_list(),
                        e.replace('"', "'")
                    );
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = br#"{"timezone":"UTC","serverTime":1,"rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000}],"exchangeFilters":[],
      "symbols":[
        {"symbol":"BTCUSDT","status":"TRADING","baseAsset":"BTC","filters":[{"filterType":"LOT_SIZE","minQty":"0.00001000","stepSize":"0.00001000"}],"permissionSets":[["SPOT","MARGIN"]]},
        {"symbol":"ethusdt","status":"TRADING","baseAsset":"ETH","filters":[]},
        {"symbol":"LUNAUSDT","status":"BREAK","baseAsset":"LUNA","filters":[]},
        {"status":"TRADING"},
        {"symbol":"BAD SYMBOL","status":"TRADING"},
        7
      ]}"#;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tickguard-vs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn parses_exchange_info_and_judges_symbols() {
        let l = parse_exchange_info(INFO, 42).expect("valid answer");
        assert_eq!(l.symbols.len(), 3);
        assert_eq!(l.traded(), 2);
        assert_eq!(l.fetched_unix_ms, 42);
        assert_eq!(l.verdict("BTCUSDT"), Verdict::Traded);
        assert_eq!(l.verdict("btcusdt"), Verdict::Traded, "compared upper-case");
        assert_eq!(l.verdict("EthUsdt"), Verdict::Traded);
        assert_eq!(l.verdict("LUNAUSDT"), Verdict::NotTraded, "status BREAK is not traded");
        assert_eq!(l.verdict("NOSUCHPAIR"), Verdict::NotTraded);
        assert_eq!(l.verdict(""), Verdict::NotTraded);
    }

    /// An answer with one symbol more than [`VENUE_SYMBOLS_MAX`].
    fn too_many() -> String {
        let mut body = String::from(r#"{"symbols":["#);
        for i in 0..=VENUE_SYMBOLS_MAX {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#"{{"symbol":"S{i}USDT","status":"TRADING"}}"#));
        }
        body.push_str("]}");
        body
    }

    #[test]
    fn bounds_the_symbol_count() {
        let e = parse_exchange_info(too_many().as_bytes(), 0).expect_err("too many");
        assert!(e.contains("VENUE_SYMBOLS_MAX"), "{e}");
    }

    #[test]
    fn storage_round_trip() {
        let d = dir("roundtrip");
        let l = parse_exchange_info(INFO, 1_700_000_000_123).expect("valid");
        store(&d, &l).expect("stored");
        assert!(!d.join(format!("{FILE_NAME}.tmp")).exists(), "temp file renamed away");
        let back = read_stored(&d).expect("readable").expect("present");
        assert_eq!(back, l);
        let vs = VenueSymbols::open(&d);
        assert_eq!(vs.symbols_on_list(), 3);
        assert_eq!(vs.verdict("btcusdt"), Verdict::Traded);
        assert_eq!(vs.verdict("LUNAUSDT"), Verdict::NotTraded);
        assert_eq!(vs.fetched_at(), Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)));
        assert_eq!(VenueSymbols::load_for_check(&d).expect("ok").map(|l| l.symbols.len()), Some(3));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_or_corrupt_file_is_an_unknown_list() {
        let d = dir("corrupt");
        let vs = VenueSymbols::open(&d);
        assert_eq!(vs.verdict("BTCUSDT"), Verdict::Unverified);
        assert_eq!((vs.symbols_on_list(), vs.fetched_at()), (0, None));
        assert_eq!(VenueSymbols::load_for_check(&d), Ok(None));
        let good = encode(&parse_exchange_info(INFO, 5).expect("valid"));
        // Truncated (a torn write of an older tickguard, or a disk fault), garbage, a count
        // that does not match, a bad line.
        let cut = &good[..good.len() - 10];
        for bad in [
            cut.to_string(),
            "garbage\n".to_string(),
            good.replace("end count=3", "end count=4"),
            good.replace("BTCUSDT T", "BTCUSDT X"),
            String::new(),
        ] {
            std::fs::write(d.join(FILE_NAME), &bad).expect("write");
            let vs = VenueSymbols::open(&d);
            assert_eq!(vs.verdict("BTCUSDT"), Verdict::Unverified, "{bad:?}");
            assert_eq!(vs.symbols_on_list(), 0);
            assert!(VenueSymbols::load_for_check(&d).is_err(), "{bad:?}");
        }
        // A good fetch replaces it.
        let vs = VenueSymbols::open(&d);
        vs.install(parse_exchange_info(INFO, 9).expect("valid"));
        assert_eq!(vs.verdict("ETHUSDT"), Verdict::Traded);
        assert_eq!(read_stored(&d).expect("ok").map(|l| l.fetched_unix_ms), Some(9));
        let _ = std::fs::remove_dir_all(&d);
    }

    // ----- the streaming scanner against the whole-buffer parser --------------------------

    /// Feeds `body` cut at `cuts` (positions, any order, out of range ignored).
    fn scan_cut(body: &[u8], cuts: &[usize]) -> Result<SymbolList, String> {
        let mut at: Vec<usize> = cuts.iter().copied().filter(|c| *c < body.len()).collect();
        at.sort_unstable();
        let mut sc = ExchangeInfoScanner::new();
        let mut from = 0;
        for c in at.into_iter().chain([body.len()]) {
            if sc.feed(&body[from..c]).is_err() {
                break;
            }
            from = c;
        }
        sc.finish(7)
    }

    /// Feeds `body` in pieces of `n` bytes.
    fn scan_chunks(body: &[u8], n: usize) -> Result<SymbolList, String> {
        let mut sc = ExchangeInfoScanner::new();
        for piece in body.chunks(n) {
            if sc.feed(piece).is_err() {
                break;
            }
        }
        sc.finish(7)
    }

    /// The scanner agrees with [`parse_exchange_info`]: the same list, or both refuse.
    fn same(body: &[u8], got: &Result<SymbolList, String>) {
        match (parse_exchange_info(body, 7), got) {
            (Ok(a), Ok(b)) => assert_eq!(&a, b, "{}", String::from_utf8_lossy(body)),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("whole {a:?} vs streamed {b:?} on {}", String::from_utf8_lossy(body)),
        }
    }

    /// A deterministic generator for bodies of Binance's layout (proptest's own RNG, seeded).
    struct Gen(proptest::test_runner::TestRng);

    impl Gen {
        fn new(seed: u64) -> Gen {
            let bytes: Vec<u8> = seed.to_le_bytes().iter().chain(&(!seed).to_le_bytes()).copied().collect();
            Gen(proptest::test_runner::TestRng::from_seed(
                proptest::test_runner::RngAlgorithm::XorShift,
                &bytes,
            ))
        }
        fn below(&mut self, n: u64) -> u64 {
            proptest::prelude::RngCore::next_u64(&mut self.0) % n.max(1)
        }
        fn pick<'a>(&mut self, of: &[&'a str]) -> &'a str {
            of[self.below(of.len() as u64) as usize]
        }
    }

    /// An `exchangeInfo` answer in Binance's layout, with the traps the scanner must not fall
    /// into: `status` and `symbol` keys nested in filters and in the top-level members before
    /// `symbols`, brackets and escaped quotes inside strings, `permissionSets` arrays of arrays,
    /// entries with `status` first, non-object and incomplete entries, duplicates, lower case.
    fn layout(g: &mut Gen, n: usize) -> String {
        let ws = |g: &mut Gen| [" ", "", "\n  ", "\t", "\r\n"][g.below(5) as usize];
        let mut b = String::from("{\"timezone\":\"UTC\",\"serverTime\":1764777600123,");
        b.push_str(r#""rateLimits":[{"rateLimitType":"REQUEST_WEIGHT","interval":"MINUTE","intervalNum":1,"limit":6000},"#);
        b.push_str(r#"{"rateLimitType":"ORDERS","interval":"SECOND","intervalNum":10,"limit":100,"status":"TRADING"}],"#);
        b.push_str(r#""exchangeFilters":[{"filterType":"EXCHANGE_MAX_NUM_ORDERS","symbol":"NOTME","maxNumOrders":1000}],"#);
        if g.below(3) == 0 {
            b.push_str(r#""symbol":"EVILUSDT","status":"TRADING","symbolsX":[{"symbol":"X"}],"note":"a \"}]\" [{","flag":true,"none":null,"neg":-1.5e-3,"#);
        }
        b.push_str("\"symbols\":");
        b.push_str(ws(g));
        b.push('[');
        for i in 0..n {
            if i > 0 {
                b.push(',');
            }
            b.push_str(ws(g));
            let sym = format!(
                "{}{}",
                g.pick(&["BTC", "eth", "Luna", "BNB", "X_1", "A-B"]),
                g.pick(&["USDT", "BTC", "fdusd"])
            );
            let status = g.pick(&["TRADING", "BREAK", "HALT", "TRADING", "END_OF_DAY"]);
            let filters = r#""filters":[{"filterType":"PRICE_FILTER","minPrice":"0.01000000","maxPrice":"1000000.00000000","tickSize":"0.01000000"},{"filterType":"LOT_SIZE","minQty":"0.00001000","maxQty":"9000.00000000","stepSize":"0.00001000"},{"filterType":"X_TRAP","status":"HALT","symbol":"TRAPUSDT","inner":{"status":"BREAK"}},{"filterType":"ICEBERG_PARTS","limit":10},{"filterType":"MAX_NUM_ORDERS","maxNumOrders":200}]"#;
            let perms = r#""permissionSets":[["SPOT","MARGIN","TRD_GRP_004","TRD_GRP_005"],["TRD_GRP_006"]],"permissions":[],"orderTypes":["LIMIT","LIMIT_MAKER","MARKET","STOP_LOSS_LIMIT"]"#;
            match g.below(12) {
                0 => b.push('7'),
                1 => b.push_str(r#""a string ]} entry""#),
                2 => b.push_str(r#"[{"symbol":"INARRAY","status":"TRADING"}]"#),
                3 => b.push_str(&format!(r#"{{"filters":[{{"status":"TRADING"}}],"symbol":"{sym}"}}"#)),
                4 => b.push_str(&format!(r#"{{"status":"{status}",{perms},"symbol":"{sym}",{filters}}}"#)),
                5 => b.push_str(&format!(r#"{{"symbol":"BAD {sym}","status":"{status}"}}"#)),
                6 => b.push_str(&format!(r#"{{"symbol":7,"status":"TRADING","x":"{sym}"}}"#)),
                _ => b.push_str(&format!(
                    r#"{{"symbol":"{sym}","status":"{status}","baseAsset":"B","baseAssetPrecision":8,"quoteAsset":"Q","icebergAllowed":true,"ocoAllowed":{},"isSpotTradingAllowed":true,"quoteOrderQtyMarketAllowed":null,{filters},{perms},"defaultSelfTradePreventionMode":"EXPIRE_MAKER","note":"esc \\\" ] }} [ {{ \\\\"}}"#,
                    g.below(2) == 0
                )),
            }
        }
        b.push_str(ws(g));
        b.push(']');
        if g.below(2) == 0 {
            b.push_str(r#","after":{"symbols":[{"symbol":"LATEUSDT","status":"TRADING"}]}"#);
        }
        b.push('}');
        b.push_str(ws(g));
        b
    }

    #[test]
    fn scanner_equals_the_whole_buffer_parser_at_every_cut() {
        // Every single cut and every fixed chunk size from 1 to 97 bytes, on the unit test's
        // answer and on generated ones (real layout, every trap).
        let mut bodies = vec![INFO.to_vec()];
        for seed in 1..=6u64 {
            bodies.push(layout(&mut Gen::new(seed), 6).into_bytes());
        }
        for body in &bodies {
            let whole = parse_exchange_info(body, 7);
            assert!(whole.is_ok(), "{whole:?}: {}", String::from_utf8_lossy(body));
            for k in 0..=body.len() {
                same(body, &scan_cut(body, &[k]));
            }
            for n in 1..=97 {
                same(body, &scan_chunks(body, n));
            }
        }
    }

    #[test]
    fn scanner_ignores_nested_status_and_symbol_keys() {
        let body =
            br#"{"rateLimits":[{"status":"TRADING","symbol":"RLUSDT"}],"symbol":"TOPUSDT","status":"TRADING",
            "symbols":[{"symbol":"AUSDT","filters":[{"status":"TRADING"}],"permissionSets":[["SPOT"]]},
                       {"symbol":"BUSDT","status":"BREAK","filters":[{"status":"TRADING","symbol":"CUSDT"}]},
                       {"filters":[{"symbol":"DUSDT","status":"TRADING"}]}]}"#;
        let l = scan_chunks(body, 3).expect("valid");
        assert_eq!(l.symbols.len(), 1, "{l:?}");
        assert_eq!(l.verdict("BUSDT"), Verdict::NotTraded, "its own status, not its filter's");
        for s in ["AUSDT", "CUSDT", "DUSDT", "RLUSDT", "TOPUSDT"] {
            assert!(!l.symbols.contains_key(s), "{s} is not a symbols entry");
        }
        same(body, &Ok(l));
    }

    #[test]
    fn refuses_answers_that_are_not_a_list() {
        // Both the whole-buffer parser and the scanner, fed in pieces of every size.
        for bad in [
            &b""[..],
            b"  \n",
            b"<html>",
            br#"{"code":-1121,"msg":"Invalid symbol."}"#,
            br#"{"symbols":[]}"#,
            br#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING"}"#,
            br#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING"},]}"#,
            br#"{"symbols":"BTCUSDT"}"#,
            br#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING"} {"symbol":"ETHUSDT","status":"TRADING"}]}"#,
            br#"{"a":tru,"symbols":[{"symbol":"BTCUSDT","status":"TRADING"}]}"#,
            b"{\"a\":\"bad\x01string\",\"symbols\":[{\"symbol\":\"BTCUSDT\",\"status\":\"TRADING\"}]}",
            br#"{"a":[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]],"symbols":[{"symbol":"BTCUSDT","status":"TRADING"}]}"#,
            br#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING","f":[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}]}"#,
        ] {
            assert!(parse_exchange_info(bad, 0).is_err(), "{}", String::from_utf8_lossy(bad));
            for n in [1, 2, 5, 4096] {
                let got = scan_chunks(bad, n);
                assert!(got.is_err(), "{n}: {got:?} {}", String::from_utf8_lossy(bad));
                same(bad, &got);
            }
        }
    }

    #[test]
    fn scanner_accepts_nesting_up_to_the_parsers_bound() {
        // 16 levels in a top-level member; 16 counting the `symbols` array and the entry.
        let body = format!(
            r#"{{"a":{}1{},"symbols":[{{"symbol":"BTCUSDT","status":"TRADING","f":{}1{}}}]}}"#,
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH),
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        for n in [1, 3, 4096] {
            let got = scan_chunks(body.as_bytes(), n);
            assert!(got.is_ok(), "{got:?}");
            same(body.as_bytes(), &got);
        }
    }

    #[test]
    fn scanner_bounds_its_memory_and_the_symbol_count() {
        // One entry larger than the carry buffer is refused, and the buffer never grew.
        let mut body = String::from(r#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING","pad":""#);
        body.push_str(&"x".repeat(EXCHANGE_INFO_CARRY_MAX));
        body.push_str(r#""}]}"#);
        let mut sc = ExchangeInfoScanner::new();
        let mut err = None;
        for piece in body.as_bytes().chunks(EXCHANGE_INFO_CHUNK) {
            if let Err(e) = sc.feed(piece) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(sc.carry.capacity(), EXCHANGE_INFO_CARRY_MAX, "the carry buffer never grows");
        assert!(err.is_some_and(|e| e.contains("EXCHANGE_INFO_CARRY_MAX")));
        assert!(sc.feed(b"]}").is_err(), "a failed scanner stays failed");
        // Too many symbols: refused as the whole-buffer parser refuses them.
        let e = scan_chunks(too_many().as_bytes(), EXCHANGE_INFO_CHUNK).expect_err("too many");
        assert!(e.contains("VENUE_SYMBOLS_MAX"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Random real-layout answers, cut at random places, truncated or with one byte
        /// changed: the scanner gives what the whole-buffer parser gives.
        #[test]
        fn scanner_equals_the_parser_on_random_cuts(
            seed in 1u64..u64::MAX,
            n in 0usize..14,
            cuts in proptest::collection::vec(0usize..6000, 0..40),
            change in proptest::option::of((0usize..6000, proptest::prelude::any::<u8>())),
            cut_off in proptest::option::of(0usize..6000),
        ) {
            let mut body = layout(&mut Gen::new(seed), n).into_bytes();
            same(&body, &scan_cut(&body, &cuts));
            if let Some((at, byte)) = change {
                let at = at % body.len();
                body[at] = byte;
                same(&body, &scan_cut(&body, &cuts));
            }
            if let Some(len) = cut_off {
                body.truncate(len % (body.len() + 1));
                same(&body, &scan_cut(&body, &cuts));
            }
        }
    }
}
