//! `PriceCache<N>`: the newest quote of up to `N` instruments, in fixed memory.

use core::time::Duration;

use heapless::index_map::FnvIndexMap;

use super::CoreError;
use super::time::Timestamp;
use super::types::{Band, InstrumentId, Quote, Symbol};

/// One instrument's entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The symbol as the venue writes it.
    pub symbol: Symbol,
    /// The newest quote, if any arrived.
    pub quote: Option<Quote>,
}

/// The newest quote per instrument. `N` must be a power of two (the symbol index is an FNV
/// hash map). Instruments are interned once and keep their [`InstrumentId`] for the life of
/// the process; nothing here allocates after construction.
pub struct PriceCache<const N: usize> {
    index: FnvIndexMap<Symbol, InstrumentId, N>,
    entries: heapless::Vec<Entry, N>,
}

impl<const N: usize> Default for PriceCache<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PriceCache<N> {
    /// An empty cache.
    pub fn new() -> Self {
        PriceCache { index: FnvIndexMap::new(), entries: heapless::Vec::new() }
    }

    /// Capacity.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Instruments known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no instrument is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The id of `symbol`, adding it if new. Errors when the symbol is too long or the cache
    /// is full.
    pub fn intern(&mut self, symbol: &str) -> Result<InstrumentId, CoreError> {
        if let Some(id) = self.index.get(symbol) {
            return Ok(*id);
        }
        if symbol.is_empty() {
            return Err(CoreError::BadSymbol);
        }
        let sym: Symbol = Symbol::try_from(symbol).map_err(|_| CoreError::BadSymbol)?;
        if self.entries.len() >= N {
            return Err(CoreError::CacheFull { capacity: N });
        }
        let id = InstrumentId(
            u16::try_from(self.entries.len()).map_err(|_| CoreError::CacheFull { capacity: N })?,
        );
        self.index.insert(sym.clone(), id).map_err(|_| CoreError::CacheFull { capacity: N })?;
        self.entries
            .push(Entry { symbol: sym, quote: None })
            .map_err(|_| CoreError::CacheFull { capacity: N })?;
        Ok(id)
    }

    /// The id of a known symbol.
    pub fn lookup(&self, symbol: &str) -> Option<InstrumentId> {
        self.index.get(symbol).copied()
    }

    /// The id of a known symbol given as bytes straight from a frame.
    pub fn lookup_bytes(&self, symbol: &[u8]) -> Option<InstrumentId> {
        core::str::from_utf8(symbol).ok().and_then(|s| self.lookup(s))
    }

    /// The symbol of an id.
    pub fn symbol(&self, id: InstrumentId) -> &str {
        self.entries.get(usize::from(id.0)).map_or("?", |e| e.symbol.as_str())
    }

    /// The newest quote of an instrument.
    pub fn quote(&self, id: InstrumentId) -> Option<&Quote> {
        self.entries.get(usize::from(id.0)).and_then(|e| e.quote.as_ref())
    }

    /// Stores `q` if it supersedes the held quote (it is dated later); returns whether it did.
    /// A REST answer dated at its send time therefore never replaces a live price received
    /// after that send time.
    pub fn update(&mut self, id: InstrumentId, q: &Quote) -> bool {
        let Some(e) = self.entries.get_mut(usize::from(id.0)) else {
            return false;
        };
        match &e.quote {
            Some(old) if !q.supersedes(old) => false,
            _ => {
                e.quote = Some(*q);
                true
            }
        }
    }

    /// Age of the instrument's quote at `now`, if it has one.
    pub fn age(&self, id: InstrumentId, now: Timestamp) -> Option<Duration> {
        self.quote(id).map(|q| now.since(q.dated))
    }

    /// Age band of the instrument's quote at `now` (`None` when it has never had one).
    pub fn band(&self, id: InstrumentId, now: Timestamp, stale: Duration, expire: Duration) -> Option<Band> {
        self.age(id, now).map(|a| Band::of(a, stale, expire))
    }

    /// Every known instrument with its entry, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (InstrumentId, &Entry)> {
        self.entries.iter().enumerate().map(|(i, e)| (InstrumentId(i as u16), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::price::Price;
    use crate::core::types::Source;

    fn q(price: &str, source: Source, at_ms: u64) -> Quote {
        let p = Price::parse(price).ok();
        Quote { bid: p, ask: p, last: None, source, exch_ts: None, dated: Timestamp::from_millis(at_ms) }
    }

    #[test]
    fn interns_and_bounds() {
        let mut c: PriceCache<4> = PriceCache::new();
        let a = c.intern("BTCUSDT").expect("room");
        assert_eq!(c.intern("BTCUSDT"), Ok(a));
        for s in ["A", "B", "C"] {
            c.intern(s).expect("room");
        }
        assert_eq!(c.intern("D"), Err(CoreError::CacheFull { capacity: 4 }));
        assert_eq!(c.intern(""), Err(CoreError::BadSymbol));
        assert_eq!(c.lookup_bytes(b"BTCUSDT"), Some(a));
        assert_eq!(c.lookup_bytes(b"\xff"), None);
        assert_eq!(c.symbol(a), "BTCUSDT");
        let long = "X".repeat(33);
        let mut c2: PriceCache<4> = PriceCache::new();
        assert_eq!(c2.intern(&long), Err(CoreError::BadSymbol));
    }

    #[test]
    fn newer_quote_wins_whatever_its_source() {
        let mut c: PriceCache<4> = PriceCache::new();
        let id = c.intern("X").expect("room");
        assert!(c.update(id, &q("10", Source::Live, 100)));
        // A REST answer sent before the live tick arrived loses.
        assert!(!c.update(id, &q("9", Source::Rest, 90)));
        // ... and on a tie too.
        assert!(!c.update(id, &q("9", Source::Rest, 100)));
        // A REST answer sent later wins, whole.
        assert!(c.update(id, &q("8", Source::Rest, 110)));
        assert_eq!(c.quote(id).map(|q| q.source), Some(Source::Rest));
        // A live tick at the same instant replaces the previous live one.
        assert!(c.update(id, &q("7", Source::Live, 110)));
        assert!(c.update(id, &q("6", Source::Live, 110)));
        assert_eq!(c.quote(id).and_then(|q| q.bid), Price::parse("6").ok());
    }

    #[test]
    fn bands_at_their_boundaries() {
        let mut c: PriceCache<4> = PriceCache::new();
        let id = c.intern("X").expect("room");
        c.update(id, &q("1", Source::Live, 0));
        let (s, e) = (Duration::from_secs(30), Duration::from_secs(300));
        let band = |ms| c.band(id, Timestamp::from_millis(ms), s, e);
        assert_eq!(band(29_999), Some(Band::Live));
        assert_eq!(band(30_000), Some(Band::Stale));
        assert_eq!(band(300_000), Some(Band::Stale));
        assert_eq!(band(300_001), Some(Band::Expired));
    }
}
