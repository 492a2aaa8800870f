//! One bounded outbox per client, with a rule per message type, so that a slow client can hurt
//! nobody but itself:
//!
//! - **quotes** keep only the newest per symbol, **open-candle updates** replace each other
//!   (one slot each per symbol; at most `relay.open_queue_max` slots waiting, more are dropped
//!   and counted);
//! - **closed candles** (and snapshots, corrections, gaps, status) are never dropped: they
//!   queue in order up to `relay.closed_queue_max`; a client that falls further behind is
//!   marked overflowed, and its writer closes it with 1008 and its resume cursor.
//!
//! The hub pushes (one short lock per message); the client's writer task takes batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::stats::RelayStats;

/// A message in the ordered queue, with what it tells the resume cursor.
#[derive(Clone, Debug)]
pub struct Ordered {
    /// The encoded message.
    pub msg: Utf8Bytes,
    /// More messages of the same upstream event, in order (a backfill's bars, a resume):
    /// one entry of the queue, so that a burst the relay itself makes never counts as the
    /// client falling behind.
    pub rest: Vec<Utf8Bytes>,
    /// `(symbol slot, open time)` of the newest closed candle it carries, if any.
    pub cursor: Option<(u16, i64)>,
}

/// A message taken by the writer.
#[derive(Clone, Debug)]
pub struct Out {
    /// The encoded message.
    pub msg: Utf8Bytes,
    /// See [`Ordered::cursor`].
    pub cursor: Option<(u16, i64)>,
    /// When the upstream frame behind a quote arrived (for the latency histogram).
    pub recv: Option<Instant>,
}

#[derive(Debug)]
struct Latest {
    msg: Utf8Bytes,
    open_time: i64,
    recv: Option<Instant>,
}

/// Why an outbox is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The client fell more than `closed_queue_max` closed messages behind.
    Overflowed,
    /// The relay stops (SIGTERM).
    Shutdown,
}

#[derive(Debug)]
struct Inner {
    ordered: VecDeque<Ordered>,
    /// Slot `2k`: symbol `k`'s quote; `2k + 1`: its open candle.
    slots: Vec<Option<Latest>>,
    waiting: VecDeque<u16>,
    closing: Option<Closing>,
}

/// A client's outbox.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    closed_max: usize,
    open_max: usize,
    /// Quotes and open updates dropped because `open_queue_max` slots were waiting.
    pub dropped: AtomicU64,
    /// Times a push found a queue full (quotes and updates replaced in place do not count).
    pub blocking: AtomicU64,
    /// The relay's totals (`connector_queue_blocking_events_total`,
    /// `tickguard_relay_updates_dropped_total`), kept past the client's life.
    totals: Arc<RelayStats>,
}

impl Outbox {
    /// An outbox for a client of `symbols` symbols.
    pub fn new(symbols: usize, closed_max: usize, open_max: usize, totals: Arc<RelayStats>) -> Outbox {
        let mut slots = Vec::with_capacity(2 * symbols);
        slots.resize_with(2 * symbols, || None);
        Outbox {
            inner: Mutex::new(Inner {
                ordered: VecDeque::with_capacity(closed_max.min(64)),
                slots,
                waiting: VecDeque::with_capacity((2 * symbols).min(open_max)),
                closing: None,
            }),
            notify: Notify::new(),
            closed_max,
            open_max,
            dropped: AtomicU64::new(0),
            blocking: AtomicU64::new(0),
            totals,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Queues an ordered message. `false` when the client is (now) overflowed or closing: the
    /// message is not queued, and the writer closes the client with its cursor.
    pub fn push_ordered(&self, m: Ordered) -> bool {
        let ok = self.with(|i| {
            if i.closing.is_some() {
                return false;
            }
            if i.ordered.len() >= self.closed_max {
                i.closing = Some(Closing::Overflowed);
                return false;
            }
            // A closed candle supersedes the symbol's waiting open update of the same bar or
            // an earlier one (the client would otherwise see it after the close).
            if let Some((sym, t)) = m.cursor {
                let slot = 2 * usize::from(sym) + 1;
                if let Some(Some(l)) = i.slots.get(slot) {
                    if l.open_time <= t {
                        i.slots[slot] = None;
                    }
                }
            }
            i.ordered.push_back(m);
            true
        });
        if !ok {
            self.blocking.fetch_add(1, Ordering::Relaxed);
            self.totals.blocking.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        ok
    }

    fn push_latest(&self, slot: usize, msg: Utf8Bytes, open_time: i64, recv: Option<Instant>) {
        let dropped = self.with(|i| {
            if i.closing.is_some() || slot >= i.slots.len() {
                return false;
            }
            match &mut i.slots[slot] {
                Some(l) => {
                    if open_time >= l.open_time {
                        // The replaced one is superseded: the latency is the newest's own.
                        *l = Latest { msg, open_time, recv };
                    }
                    false
                }
                empty => {
                    if i.waiting.len() >= self.open_max {
                        return true;
                    }
                    *empty = Some(Latest { msg, open_time, recv });
                    i.waiting.push_back(slot as u16);
                    false
                }
            }
        });
        if dropped {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.blocking.fetch_add(1, Ordering::Relaxed);
            self.totals.dropped_updates.fetch_add(1, Ordering::Relaxed);
            self.totals.blocking.fetch_add(1, Ordering::Relaxed);
        } else {
            self.notify.notify_one();
        }
    }

    /// Symbol `sym`'s newest quote (replaces a waiting one).
    pub fn push_quote(&self, sym: u16, msg: Utf8Bytes, recv: Option<Instant>) {
        self.push_latest(2 * usize::from(sym), msg, i64::MIN, recv);
    }

    /// Symbol `sym`'s open candle (replaces a waiting update of the same or an earlier bar).
    pub fn push_open(&self, sym: u16, msg: Utf8Bytes, open_time: i64) {
        self.push_latest(2 * usize::from(sym) + 1, msg, open_time, None);
    }

    /// Marks the outbox closing (the relay stops); the writer says goodbye.
    pub fn close(&self, why: Closing) {
        self.with(|i| {
            if i.closing.is_none() {
                i.closing = Some(why);
            }
        });
        self.notify.notify_one();
    }

    /// Why the outbox closes, if it does.
    pub fn closing(&self) -> Option<Closing> {
        self.with(|i| i.closing)
    }

    /// Ordered messages waiting.
    pub fn depth_ordered(&self) -> usize {
        self.with(|i| i.ordered.len())
    }

    /// Quote and update slots waiting.
    pub fn depth_latest(&self) -> usize {
        self.with(|i| i.waiting.len())
    }

    /// Moves up to `max` messages into `batch`: ordered ones first (in order), then the
    /// waiting quotes and updates. Returns the closing reason once nothing ordered is left to
    /// send on an overflow (an overflowed client is closed without its backlog: the cursor
    /// tells it where to resume).
    pub fn take(&self, batch: &mut Vec<Out>, max: usize) -> Option<Closing> {
        self.with(|i| {
            if i.closing == Some(Closing::Overflowed) {
                i.ordered.clear();
                i.waiting.clear();
                i.slots.iter_mut().for_each(|s| *s = None);
                return Some(Closing::Overflowed);
            }
            while batch.len() < max {
                let Some(m) = i.ordered.pop_front() else { break };
                if m.rest.is_empty() {
                    batch.push(Out { msg: m.msg, cursor: m.cursor, recv: None });
                } else {
                    // The cursor goes with the last message of the group.
                    batch.push(Out { msg: m.msg, cursor: None, recv: None });
                    let n = m.rest.len();
                    for (k, r) in m.rest.into_iter().enumerate() {
                        batch.push(Out {
                            msg: r,
                            cursor: if k + 1 == n { m.cursor } else { None },
                            recv: None,
                        });
                    }
                }
            }
            while batch.len() < max {
                let Some(slot) = i.waiting.pop_front() else { break };
                if let Some(l) = i.slots.get_mut(usize::from(slot)).and_then(Option::take) {
                    batch.push(Out { msg: l.msg, cursor: None, recv: l.recv });
                }
            }
            if batch.is_empty() { i.closing } else { None }
        })
    }

    /// Waits until something is pushed or the outbox closes.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_string())
    }

    fn texts(o: &Outbox) -> Vec<String> {
        let mut b = Vec::new();
        o.take(&mut b, 100);
        b.into_iter().map(|x| x.msg.as_str().to_string()).collect()
    }

    #[tokio::test]
    async fn quotes_keep_the_newest_and_updates_replace_each_other() {
        let o = Outbox::new(2, 10, 10, Arc::default());
        let now = crate::bus::clock::mono();
        o.push_quote(0, m("q1"), Some(now));
        o.push_quote(0, m("q2"), Some(now));
        o.push_open(0, m("o1"), 60_000);
        o.push_open(0, m("o2"), 60_000);
        o.push_open(0, m("old"), 0);
        o.push_quote(1, m("r1"), Some(now));
        assert_eq!(texts(&o), ["q2", "o2", "r1"]);
    }

    #[tokio::test]
    async fn a_closed_candle_goes_first_and_drops_the_update_of_its_bar() {
        let o = Outbox::new(1, 10, 10, Arc::default());
        o.push_open(0, m("open-60000"), 60_000);
        assert!(o.push_ordered(Ordered {
            msg: m("closed-60000"),
            rest: Vec::new(),
            cursor: Some((0, 60_000))
        }));
        o.push_open(0, m("open-120000"), 120_000);
        assert_eq!(texts(&o), ["closed-60000", "open-120000"]);
    }

    #[tokio::test]
    async fn closed_candles_are_never_dropped_the_client_is_closed_instead() {
        let o = Outbox::new(1, 3, 10, Arc::default());
        for n in 0..3 {
            assert!(o.push_ordered(Ordered {
                msg: m(&n.to_string()),
                rest: Vec::new(),
                cursor: Some((0, n * 60_000))
            }));
        }
        assert!(!o.push_ordered(Ordered { msg: m("3"), rest: Vec::new(), cursor: Some((0, 180_000)) }));
        assert_eq!(o.closing(), Some(Closing::Overflowed));
        let mut b = Vec::new();
        assert_eq!(o.take(&mut b, 10), Some(Closing::Overflowed));
        assert!(b.is_empty());
        assert_eq!(o.blocking.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn waiting_slots_are_bounded_and_drops_counted() {
        let o = Outbox::new(4, 10, 2, Arc::default());
        let now = crate::bus::clock::mono();
        for s in 0..4 {
            o.push_quote(s, m("q"), Some(now));
        }
        assert_eq!(o.depth_latest(), 2);
        assert_eq!(o.dropped.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_burst_of_one_event_is_one_entry() {
        let o = Outbox::new(1, 2, 10, Arc::default());
        let rest: Vec<Utf8Bytes> = (1..1000).map(|n| m(&n.to_string())).collect();
        assert!(o.push_ordered(Ordered { msg: m("0"), rest, cursor: Some((0, 999)) }));
        assert!(o.push_ordered(Ordered { msg: m("next"), rest: Vec::new(), cursor: Some((0, 1000)) }));
        assert_eq!(o.closing(), None);
        let mut b = Vec::new();
        o.take(&mut b, 2000);
        assert_eq!(b.len(), 1001);
        assert_eq!(b[999].cursor, Some((0, 999)));
        assert!(b[..999].iter().all(|x| x.cursor.is_none()));
    }
}
