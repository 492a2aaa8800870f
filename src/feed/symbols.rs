//! The feed's symbol → instrument index: written rarely (at start-up, and when an instrument
//! is registered over the API), read for every frame by the feed session.
//!
//! A `RwLock<HashMap>` costs two atomic read-modify-writes per frame (lock and unlock) plus
//! the hash; this table costs one acquire load. It is a fixed array of
//! [`SYMBOL_SLOTS`](crate::limits::SYMBOL_SLOTS) slots, open addressing with linear probing,
//! insert-only (instruments are never removed: their ids are stable for the life of the
//! process). A key is the symbol's length plus four words that together hold every byte of
//! it (see [`key`]), so a look-up compares five integers and never calls `memcmp`.
//!
//! Concurrency without `unsafe`: writers take a mutex (which also holds the list of entries
//! for [`SymbolIndex::entries`]); a slot's words are stored before its tag, and the tag with
//! `Release`. A reader loads the tag with `Acquire`: a non-empty tag therefore comes with its
//! words. A slot's words never change once its tag is set (re-adding a symbol only changes
//! the id in the tag), so a reader can never see a key torn between two symbols.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::core::types::{InstrumentId, Symbol};
use crate::limits::{MAX_INSTRUMENTS, SYMBOL_MAX, SYMBOL_SLOTS};

const _: () = assert!(SYMBOL_SLOTS.is_power_of_two() && SYMBOL_SLOTS >= 2 * MAX_INSTRUMENTS);
const _: () = assert!(SYMBOL_MAX <= 32);

/// Tag of a used slot: bit 31 set, the key's length in bits 16..24, the instrument id below.
const USED: u32 = 1 << 31;
const LEN_SHIFT: u32 = 16;

#[derive(Default)]
struct Slot {
    tag: AtomicU32,
    words: [AtomicU64; 4],
}

/// Symbol bytes → instrument, bounded at [`MAX_INSTRUMENTS`] entries.
pub struct SymbolIndex {
    slots: Box<[Slot; SYMBOL_SLOTS]>,
    entries: Mutex<Vec<(InstrumentId, Symbol)>>,
}

impl Default for SymbolIndex {
    fn default() -> SymbolIndex {
        let slots: Box<[Slot]> = (0..SYMBOL_SLOTS).map(|_| Slot::default()).collect();
        let slots = match slots.try_into() {
            Ok(s) => s,
            Err(_) => unreachable!("the iterator yields exactly SYMBOL_SLOTS slots"),
        };
        SymbolIndex { slots, entries: Mutex::new(Vec::with_capacity(MAX_INSTRUMENTS)) }
    }
}

fn le64(s: &[u8], at: usize) -> u64 {
    s.get(at..at + 8).and_then(|w| w.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn le32(s: &[u8], at: usize) -> u64 {
    s.get(at..at + 4).and_then(|w| w.try_into().ok()).map_or(0, |w| u64::from(u32::from_le_bytes(w)))
}

/// Four words that, with the length, determine every byte of `s` (`s.len() <= 32`): fixed-size
/// loads that overlap instead of a padded copy.
///
/// - 24..=32 bytes: bytes 0..8, the last 8, 8..16 and 16..24 (the last 8 start at or after 16);
/// - 17..=23: bytes 0..8, the last 8 (starting at 9..=15) and 8..16;
/// - 8..=16: bytes 0..8 and the last 8 (starting at or before 8);
/// - 4..=7: bytes 0..4 and the last 4 (starting at or before 4);
/// - 1..=3: bytes 0, len/2 and len-1 (for 3: 0, 1, 2; for 2: 0, 1, 1).
///
/// Two symbols of equal length with equal words are therefore equal.
#[inline(always)]
fn key(s: &[u8]) -> [u64; 4] {
    let n = s.len();
    match n {
        24.. => [le64(s, 0), le64(s, n - 8), le64(s, 8), le64(s, 16)],
        17..=23 => [le64(s, 0), le64(s, n - 8), le64(s, 8), 0],
        8..=16 => [le64(s, 0), le64(s, n - 8), 0, 0],
        4..=7 => [le32(s, 0), le32(s, n - 4), 0, 0],
        1..=3 => [u64::from(s[0]) | u64::from(s[n / 2]) << 8 | u64::from(s[n - 1]) << 16, 0, 0, 0],
        0 => [0; 4],
    }
}

/// The home slot of a key: from its first two words and length only (every byte of keys up to
/// 16 bytes; longer keys that agree there merely probe further).
#[inline(always)]
fn home(k: &[u64; 4], len: usize) -> usize {
    let h = (k[0] ^ k[1].rotate_left(29) ^ len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> (64 - SYMBOL_SLOTS.trailing_zeros())) as usize
}

impl SymbolIndex {
    /// An index holding `instruments`.
    pub fn new(instruments: &[(InstrumentId, Symbol)]) -> SymbolIndex {
        let s = SymbolIndex::default();
        for (id, sym) in instruments {
            s.insert(*id, sym);
        }
        s
    }

    /// The slot holding `s`, or the empty slot where it would go; `None` when neither exists
    /// (the table is full and `s` is not in it).
    #[inline(always)]
    fn probe(&self, s: &[u8]) -> Option<(&Slot, u32)> {
        if s.len() > SYMBOL_MAX {
            return None;
        }
        let k = key(s);
        let len = (s.len() as u32) << LEN_SHIFT;
        let mut i = home(&k, s.len());
        let long = s.len() > 16;
        for _ in 0..SYMBOL_SLOTS {
            let slot = &self.slots[i];
            let tag = slot.tag.load(Ordering::Acquire);
            if tag == 0 {
                return Some((slot, 0));
            }
            if tag & !USED & !0xFFFF == len {
                let w = |j: usize| slot.words[j].load(Ordering::Relaxed) ^ k[j];
                // Keys of up to 16 bytes have zero third and fourth words.
                if w(0) | w(1) == 0 && (!long || w(2) | w(3) == 0) {
                    return Some((slot, tag));
                }
            }
            i = (i + 1) & (SYMBOL_SLOTS - 1);
        }
        None
    }

    /// The instrument subscribed under `s` (the per-frame look-up).
    #[inline]
    pub fn get(&self, s: &[u8]) -> Option<InstrumentId> {
        match self.probe(s) {
            Some((_, tag)) if tag != 0 => Some(InstrumentId(tag as u16)),
            _ => None,
        }
    }

    /// Adds `sym` as `id` (or moves it to `id` when already there). `false` when the index
    /// already holds [`MAX_INSTRUMENTS`] other symbols, or `sym` is empty.
    pub fn insert(&self, id: InstrumentId, sym: &Symbol) -> bool {
        let Ok(mut entries) = self.entries.lock() else { return false };
        let s = sym.as_bytes();
        let Some((slot, tag)) = self.probe(s).filter(|_| !s.is_empty()) else { return false };
        let fresh = tag == 0;
        if fresh {
            if entries.len() >= MAX_INSTRUMENTS {
                return false;
            }
            for (w, k) in slot.words.iter().zip(key(s)) {
                w.store(k, Ordering::Relaxed);
            }
            entries.push((id, sym.clone()));
        } else if let Some(e) = entries.iter_mut().find(|(_, e)| e == sym) {
            e.0 = id;
        }
        slot.tag.store(USED | (s.len() as u32) << LEN_SHIFT | u32::from(id.0), Ordering::Release);
        true
    }

    /// Every entry, in id order.
    pub fn entries(&self) -> Vec<(InstrumentId, Symbol)> {
        let mut v = self.entries.lock().map(|e| e.clone()).unwrap_or_default();
        v.sort_by_key(|(i, _)| *i);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Symbol {
        Symbol::try_from(s).unwrap_or_default()
    }

    #[test]
    fn every_length_round_trips_and_near_misses_do_not_match() {
        let idx = SymbolIndex::default();
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
        for len in 1..=SYMBOL_MAX {
            let s = std::str::from_utf8(&alphabet[..len]).unwrap_or_default();
            assert!(idx.insert(InstrumentId(len as u16 - 1), &sym(s)));
        }
        for len in 1..=SYMBOL_MAX {
            let s = &alphabet[..len];
            assert_eq!(idx.get(s), Some(InstrumentId(len as u16 - 1)), "{len}");
            // One byte changed anywhere is another symbol.
            for at in 0..len {
                let mut t = s.to_vec();
                t[at] = b'a';
                assert_eq!(idx.get(&t), None, "len {len} at {at}");
            }
        }
        assert_eq!(idx.get(b""), None);
        assert_eq!(idx.get(&[b'A'; 40]), None);
    }

    #[test]
    fn holds_max_instruments_and_refuses_one_more() {
        let idx = SymbolIndex::default();
        for i in 0..MAX_INSTRUMENTS {
            assert!(idx.insert(InstrumentId(i as u16), &sym(&format!("S{i:04}USDT"))));
        }
        assert!(!idx.insert(InstrumentId(0), &sym("ONEMORE")));
        // Re-adding a known symbol is not a new entry.
        assert!(idx.insert(InstrumentId(7), &sym("S0000USDT")));
        for i in 1..MAX_INSTRUMENTS {
            assert_eq!(idx.get(format!("S{i:04}USDT").as_bytes()), Some(InstrumentId(i as u16)));
        }
        assert_eq!(idx.get(b"S0000USDT"), Some(InstrumentId(7)));
        assert_eq!(idx.get(b"ONEMORE"), None);
        assert_eq!(idx.entries().len(), MAX_INSTRUMENTS);
    }

    #[test]
    fn readers_on_other_threads_see_inserts_whole() {
        let idx = std::sync::Arc::new(SymbolIndex::default());
        let r = idx.clone();
        let reader = std::thread::spawn(move || {
            let names: Vec<String> = (0..64u16).map(|i| format!("R{i:03}")).collect();
            let mut seen = 0;
            for _ in 0..1_000_000 {
                for (i, name) in names.iter().enumerate() {
                    if let Some(id) = r.get(name.as_bytes()) {
                        assert_eq!(id, InstrumentId(i as u16));
                        seen += 1;
                    }
                }
                if r.get(b"R063").is_some() {
                    break;
                }
            }
            seen
        });
        for i in 0..64u16 {
            idx.insert(InstrumentId(i), &sym(&format!("R{i:03}")));
        }
        assert!(reader.join().unwrap_or(0) > 0);
    }
}
