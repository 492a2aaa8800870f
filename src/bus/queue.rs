//! The tick queue into the engine: bounded by construction and coalescing.
//!
//! One slot per instrument. A tick for an instrument that already has one waiting is folded
//! into it: the newest quote wins, and the lowest and highest judged prices of every quote
//! folded in are kept, so a level touched between two engine turns is still seen. A full
//! queue therefore never drops a crossing; what it drops is intermediate quotes, counted as
//! `coalesced`. A quote older than the one waiting is dropped and counted as `stale`.
//! Nothing here allocates after construction.

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::core::types::Tick;

struct Inner {
    slots: Vec<Option<Tick>>,
    dirty: Vec<u16>,
    stats: QueueStats,
}

/// Counters of the tick queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ticks pushed.
    pub pushed: u64,
    /// Ticks folded into a waiting tick of the same instrument.
    pub coalesced: u64,
    /// Ticks dropped because a newer quote was already waiting.
    pub stale: u64,
    /// Ticks for an instrument id beyond the capacity (a bug in the caller).
    pub rejected: u64,
}

/// A coalescing queue of ticks, one slot per instrument.
pub struct TickQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl TickQueue {
    /// A queue for instrument ids `0..capacity`.
    pub fn new(capacity: usize) -> TickQueue {
        TickQueue {
            inner: Mutex::new(Inner {
                slots: vec![None; capacity],
                dirty: Vec::with_capacity(capacity),
                stats: QueueStats::default(),
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the slots inconsistent (each update is
        // a plain store), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a tick, folding it into one already waiting for the instrument.
    pub fn push(&self, tick: Tick) {
        {
            let mut g = self.lock();
            let inner = &mut *g;
            inner.stats.pushed += 1;
            let i = usize::from(tick.instrument.0);
            match inner.slots.get_mut(i) {
                None => {
                    inner.stats.rejected += 1;
                    return;
                }
                Some(slot @ None) => {
                    *slot = Some(tick);
                    // Each id is in `dirty` at most once, so this never grows past capacity.
                    inner.dirty.push(tick.instrument.0);
                }
                Some(Some(waiting)) => {
                    if waiting.absorb(&tick) {
                        inner.stats.coalesced += 1;
                    } else {
                        inner.stats.stale += 1;
                    }
                }
            }
        }
        self.notify.notify_one();
    }

    /// Moves every waiting tick into `out` (in arrival order of their first quote).
    /// `out` should have capacity for every instrument so that this does not allocate.
    pub fn drain_into(&self, out: &mut Vec<Tick>) {
        let mut g = self.lock();
        let inner = &mut *g;
        for id in inner.dirty.drain(..) {
            if let Some(t) = inner.slots.get_mut(usize::from(id)).and_then(Option::take) {
                out.push(t);
            }
        }
    }

    /// Instruments with a tick waiting.
    pub fn depth(&self) -> usize {
        self.lock().dirty.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> QueueStats {
        self.lock().stats
    }

    /// Waits until a tick may be waiting.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::price::Price;
    use crate::core::time::Timestamp;
    use crate::core::types::{InstrumentId, Quote, Side, Source};

    fn tick(id: u16, bid: &str, at: u64, source: Source) -> Tick {
        let b = Price::parse(bid).ok();
        let q =
            Quote { bid: b, ask: b, last: None, source, exch_ts: None, dated: Timestamp::from_millis(at) };
        Tick::new(InstrumentId(id), q)
    }

    #[test]
    fn coalesces_keeping_the_extremes() {
        let q = TickQueue::new(4);
        q.push(tick(1, "100", 1, Source::Live));
        q.push(tick(1, "90", 2, Source::Live)); // dips through a stop at 95 ...
        q.push(tick(1, "101", 3, Source::Live)); // ... and recovers before the engine looks
        q.push(tick(2, "5", 3, Source::Live));
        q.push(tick(1, "50", 1, Source::Rest)); // a REST answer sent before the live ticks
        let mut out = Vec::with_capacity(4);
        q.drain_into(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].quote.bid, Price::parse("101").ok());
        assert_eq!(out[0].extremes.range(Side::Long), (Price::parse("90").ok(), Price::parse("101").ok()));
        assert_eq!(q.stats(), QueueStats { pushed: 5, coalesced: 2, stale: 1, rejected: 0 });
        assert_eq!(q.depth(), 0);
        q.push(tick(9, "1", 1, Source::Live));
        assert_eq!(q.stats().rejected, 1);
    }
}
