//! The relay's hub: one task owns every symbol's series and the client registry, takes the
//! upstream's events and the clients' joins, and fans each message out, encoded once, into the
//! clients' outboxes.
//!
//! Ordering per client and series: the snapshot (or the resumed candles) first, then live
//! messages; a symbol whose first backfill is still running holds its joiners (bounded by
//! [`JOIN_WAIT`]) so that a snapshot is never empty for want of waiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::candle::{Candle, Emit, Interval, Series};
use super::outbox::{Closing, Ordered, Outbox};
use super::protocol::{self, Head, Request, RequestError};
use super::stats::{ClientView, RelayStats, SymbolView};
use super::{Exchange, RelaySettings};
use crate::bus::clock::{mono, wall_unix_ms};
use crate::core::price::{Price, Qty};
use crate::core::types::{InstrumentId, Symbol};
use crate::limits::{RELAY_CLIENTS, RELAY_SYMBOLS};

/// Longest a join waits for its symbols' first backfill before its snapshot goes out with
/// what the relay holds.
pub const JOIN_WAIT: Duration = Duration::from_secs(5);
/// The hub's clock tick: bars are closed by the clock, gauges refreshed.
pub const TICK: Duration = Duration::from_millis(200);
/// Least time between two open-candle updates of one series (a newer one waits for the
/// clock; closes and new bars go at once).
pub const OPEN_EVERY: Duration = Duration::from_millis(250);
/// Least time between two REST checks of one series' bars built from trades.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// An event from the upstream.
#[derive(Debug)]
pub enum Input {
    /// Best bid and ask.
    Quote {
        /// Symbol index.
        sym: u16,
        /// Bid, ask, last, the venue's time and the receive time (Unix ms).
        q: protocol::QuoteFields,
        /// When the frame arrived (monotonic, for the latency histogram).
        recv: Instant,
    },
    /// A trade (or Upstox's last traded price).
    Trade {
        /// Symbol index.
        sym: u16,
        /// Price.
        price: Price,
        /// Quantity (0 when the venue does not say).
        qty: Qty,
        /// Trade time (Unix ms).
        t_ms: i64,
    },
    /// A kline update or close.
    Kline {
        /// Symbol index.
        sym: u16,
        /// Interval.
        iv: Interval,
        /// The bar (closed when the venue says so).
        candle: Candle,
    },
    /// The upstream is subscribed (again).
    Up,
    /// The upstream connection is lost.
    Down,
    /// A REST answer for one series.
    Backfill {
        /// Symbol index.
        sym: u16,
        /// Interval.
        iv: Interval,
        /// The closed bars (oldest first) and whether they reach the present, or why not.
        result: Result<(Vec<Candle>, bool), BackfillError>,
    },
}

/// Why a backfill failed.
#[derive(Clone, Debug)]
pub struct BackfillError {
    /// The venue refused the symbol itself (e.g. Binance `-1121`): retrying cannot help.
    pub unknown_symbol: bool,
    /// What happened.
    pub why: String,
}

/// A REST job for the upstream's backfill worker.
#[derive(Clone, Debug)]
pub struct BackfillJob {
    /// Symbol index.
    pub sym: u16,
    /// Symbol.
    pub symbol: String,
    /// Interval.
    pub iv: Interval,
    /// First open time wanted (`None`: the last [`crate::limits::RELAY_RING`] bars).
    pub from: Option<i64>,
}

/// A connected client, as the server hands it over.
pub struct ClientEntry {
    /// Unique id.
    pub id: u64,
    /// Its outbox.
    pub outbox: Arc<Outbox>,
    /// Its address.
    pub peer: SocketAddr,
    /// When it connected.
    pub since: Instant,
}

/// A command from the server.
pub enum Cmd {
    /// A client's request: the reply says whether it was taken.
    Join {
        /// The client.
        client: ClientEntry,
        /// Its request.
        req: Request,
        /// The answer.
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    /// A client left.
    Leave {
        /// Its id.
        id: u64,
    },
}

struct Sym {
    name: String,
    series: Vec<Series>,
    /// Per interval: the stream's sequence (ordered messages).
    seq: Vec<u64>,
    quote_seq: u64,
    last_quote: Option<(Utf8Bytes, Instant)>,
    /// The symbol's clients: id, the client's slot for it, interval index and its outbox
    /// (held here so a fan-out is a walk of this list, no look-up per message).
    clients: Vec<(u64, u16, usize, Arc<Outbox>)>,
    /// Per interval: when the last open update went out, and whether a newer one waits for
    /// the clock ([`OPEN_EVERY`]).
    open_sent: Vec<Instant>,
    open_due: Vec<bool>,
    /// Per interval: a REST job is out.
    in_flight: Vec<bool>,
    /// Per interval: the first backfill has answered (or failed).
    ready: Vec<bool>,
    /// Per interval: counted in `Hub::recovering` (a backfill after the upstream came back).
    recovering: Vec<bool>,
    next_check: Vec<Instant>,
    unknown: Option<String>,
}

struct Client {
    entry: ClientEntry,
    syms: Vec<u16>,
    iv: usize,
}

struct Pending {
    client: ClientEntry,
    req: Request,
    reply: oneshot::Sender<Result<(), RequestError>>,
    deadline: Instant,
}

/// The hub's state.
pub struct Hub {
    cfg: RelaySettings,
    stats: Arc<RelayStats>,
    epoch: i64,
    syms: Vec<Sym>,
    by_name: HashMap<String, u16>,
    clients: HashMap<u64, Client>,
    pending: Vec<Pending>,
    live: bool,
    /// Series still backfilling after the upstream came back (status `live` once none).
    recovering: usize,
    status_seq: u64,
    add: mpsc::Sender<(InstrumentId, Symbol)>,
    jobs: mpsc::Sender<BackfillJob>,
    emits: Vec<Emit>,
    last_views: Instant,
}

fn series_idx(cfg: &RelaySettings, iv: Interval) -> Option<usize> {
    cfg.intervals.iter().position(|i| *i == iv)
}

impl Hub {
    /// A hub for these settings; `add` subscribes a new symbol upstream, `jobs` asks the
    /// backfill worker.
    pub fn new(
        cfg: RelaySettings,
        stats: Arc<RelayStats>,
        add: mpsc::Sender<(InstrumentId, Symbol)>,
        jobs: mpsc::Sender<BackfillJob>,
    ) -> Hub {
        let epoch = wall_unix_ms();
        stats.epoch.store(epoch, Ordering::Relaxed);
        stats.stale_since.store(epoch, Ordering::Relaxed);
        Hub {
            cfg,
            stats,
            epoch,
            syms: Vec::with_capacity(RELAY_SYMBOLS),
            by_name: HashMap::with_capacity(RELAY_SYMBOLS),
            clients: HashMap::new(),
            pending: Vec::new(),
            live: false,
            recovering: 0,
            status_seq: 0,
            add,
            jobs,
            emits: Vec::with_capacity(64),
            last_views: mono(),
        }
    }

    /// The relay's epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The symbol's index, registering it (subscribed upstream and backfilled) when new.
    /// `None` when the relay serves [`RELAY_SYMBOLS`] already.
    pub fn symbol(&mut self, name: &str) -> Option<u16> {
        if let Some(i) = self.by_name.get(name) {
            return Some(*i);
        }
        if self.syms.len() >= RELAY_SYMBOLS {
            return None;
        }
        let idx = self.syms.len() as u16;
        let n = self.cfg.intervals.len();
        self.syms.push(Sym {
            name: name.to_string(),
            series: self.cfg.intervals.iter().map(|i| Series::new(*i)).collect(),
            seq: vec![0; n],
            quote_seq: 0,
            last_quote: None,
            clients: Vec::new(),
            in_flight: vec![false; n],
            ready: vec![false; n],
            recovering: vec![false; n],
            open_sent: vec![mono(); n],
            open_due: vec![false; n],
            next_check: vec![mono(); n],
            unknown: None,
        });
        self.by_name.insert(name.to_string(), idx);
        let sym = Symbol::try_from(name).unwrap_or_default();
        if self.add.try_send((InstrumentId(idx), sym)).is_err() {
            log::warn!("[RELAY] event=subscribe_queue_full symbol={name}");
        }
        for i in 0..n {
            self.syms[usize::from(idx)].series[i].begin_backfill();
            self.job(idx, i, true);
        }
        Some(idx)
    }

    fn job(&mut self, sym: u16, i: usize, initial: bool) {
        let s = &mut self.syms[usize::from(sym)];
        if s.in_flight[i] {
            return;
        }
        let iv = self.cfg.intervals[i];
        // A check of bars built from trades reaches back a few bars; a recovery starts after
        // the last closed bar; the first fill takes the last ring's worth.
        let from = if initial {
            s.series[i].backfill_from()
        } else if s.series[i].needs_check() {
            s.series[i].last_closed().map(|c| c.open_time - 4 * iv.millis())
        } else {
            s.series[i].backfill_from()
        };
        let job = BackfillJob { sym, symbol: s.name.clone(), iv, from };
        match self.jobs.try_send(job) {
            Ok(()) => s.in_flight[i] = true,
            Err(_) => {
                self.stats.blocking.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn head(&self, sym: u16) -> Head<'_> {
        Head { epoch: self.epoch, exchange: self.cfg.exchange, symbol: &self.syms[usize::from(sym)].name }
    }

    /// Handles one upstream event.
    pub fn input(&mut self, ev: Input) {
        match ev {
            Input::Quote { sym, q, recv } => {
                let Some(s) = self.syms.get_mut(usize::from(sym)) else { return };
                self.stats.quotes.fetch_add(1, Ordering::Relaxed);
                s.quote_seq += 1;
                let h = Head { epoch: self.epoch, exchange: self.cfg.exchange, symbol: &s.name };
                let msg = Utf8Bytes::from(protocol::quote(&h, s.quote_seq, &q));
                for (_, slot, _, out) in &s.clients {
                    out.push_quote(*slot, msg.clone(), Some(recv));
                }
                s.last_quote = Some((msg, recv));
            }
            Input::Trade { sym, price, qty, t_ms } => {
                let Some(s) = self.syms.get_mut(usize::from(sym)) else { return };
                self.stats.trades.fetch_add(1, Ordering::Relaxed);
                let mut emits = std::mem::take(&mut self.emits);
                for i in 0..s.series.len() {
                    emits.clear();
                    self.syms[usize::from(sym)].series[i].on_trade(price, qty, t_ms, &mut emits);
                    self.fan_out(sym, i, &emits);
                }
                self.emits = emits;
            }
            Input::Kline { sym, iv, candle } => {
                let Some(i) = series_idx(&self.cfg, iv) else { return };
                if usize::from(sym) >= self.syms.len() {
                    return;
                }
                self.stats.klines.fetch_add(1, Ordering::Relaxed);
                let mut emits = std::mem::take(&mut self.emits);
                emits.clear();
                self.syms[usize::from(sym)].series[i].on_kline(candle, &mut emits);
                self.fan_out(sym, i, &emits);
                self.emits = emits;
            }
            Input::Up => {
                if self.live {
                    return;
                }
                self.live = true;
                self.stats.upstream_live.store(1, Ordering::Relaxed);
                log::info!(
                    "[RELAY] event=upstream_up exchange={} (backfilling before live bars resume)",
                    self.cfg.exchange.name()
                );
                // Every series backfills the bars missed while down before live closed bars
                // go out (those are held meanwhile).
                self.recovering = 0;
                for s in 0..self.syms.len() {
                    for i in 0..self.cfg.intervals.len() {
                        self.syms[s].series[i].begin_backfill();
                        self.job(s as u16, i, true);
                        if !self.syms[s].recovering[i] {
                            self.syms[s].recovering[i] = true;
                            self.recovering += 1;
                        }
                    }
                }
                if self.recovering == 0 {
                    self.announce(true);
                }
            }
            Input::Down => {
                if !self.live {
                    return;
                }
                self.live = false;
                self.stats.upstream_live.store(0, Ordering::Relaxed);
                log::warn!(
                    "[RELAY] event=upstream_down exchange={} (clients told: status stale)",
                    self.cfg.exchange.name()
                );
                self.announce(false);
            }
            Input::Backfill { sym, iv, result } => self.backfilled(sym, iv, result),
        }
    }

    fn backfilled(&mut self, sym: u16, iv: Interval, result: Result<(Vec<Candle>, bool), BackfillError>) {
        let Some(i) = series_idx(&self.cfg, iv) else { return };
        let Some(s) = self.syms.get_mut(usize::from(sym)) else { return };
        s.in_flight[i] = false;
        let mut emits = std::mem::take(&mut self.emits);
        emits.clear();
        let mut again = false;
        match result {
            Ok((candles, complete)) => {
                self.stats.backfills_ok.fetch_add(1, Ordering::Relaxed);
                s.series[i].on_rest(&candles, complete, &mut emits);
                again = !complete;
                if again {
                    s.series[i].begin_backfill();
                }
            }
            Err(e) => {
                self.stats.backfills_failed.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "[RELAY] event=backfill_failed symbol={} interval={iv} cause=\"{}\"",
                    s.name,
                    e.why.replace('"', "'")
                );
                if e.unknown_symbol {
                    s.unknown = Some(e.why.clone());
                }
                s.series[i].backfill_failed(wall_unix_ms(), &mut emits);
            }
        }
        s.ready[i] = true;
        self.fan_out(sym, i, &emits);
        self.emits = emits;
        if again {
            self.job(sym, i, true);
        } else if std::mem::take(&mut self.syms[usize::from(sym)].recovering[i]) && self.recovering > 0 {
            self.recovering -= 1;
            if self.recovering == 0 && self.live {
                self.announce(true);
            }
        }
        self.serve_pending(false);
    }

    fn announce(&mut self, live: bool) {
        let now = wall_unix_ms();
        let since = if live {
            self.stats.stale_since.store(0, Ordering::Relaxed);
            now
        } else {
            self.stats.stale_since.store(now, Ordering::Relaxed);
            now
        };
        self.status_seq += 1;
        let msg =
            Utf8Bytes::from(protocol::status(self.epoch, self.cfg.exchange, self.status_seq, live, since));
        for c in self.clients.values() {
            // A client that cannot take it is marked overflowed (its writer closes it).
            let _ = c.entry.outbox.push_ordered(Ordered { msg: msg.clone(), rest: Vec::new(), cursor: None });
        }
    }

    /// Sends a series' changes to its clients.
    fn fan_out(&mut self, sym: u16, i: usize, emits: &[Emit]) {
        if emits.is_empty() {
            return;
        }
        let iv = self.cfg.intervals[i];
        // Encoded once for every client; the ordered ones of this event go as one entry.
        let mut ordered: Vec<Utf8Bytes> = Vec::new();
        let mut cursor: Option<i64> = None;
        let mut open: Option<(Utf8Bytes, i64)> = None;
        {
            let s = &mut self.syms[usize::from(sym)];
            let h = Head { epoch: self.epoch, exchange: self.cfg.exchange, symbol: &s.name };
            for e in emits {
                match e {
                    Emit::Open(c) => {
                        open = Some((Utf8Bytes::from(protocol::candle(&h, iv, s.seq[i], c)), c.open_time));
                    }
                    Emit::Closed(c) | Emit::Corrected(c) => {
                        s.seq[i] += 1;
                        if matches!(e, Emit::Corrected(_)) {
                            self.stats.corrections.fetch_add(1, Ordering::Relaxed);
                        }
                        if c.source == super::candle::Source::Trades {
                            self.stats.built.fetch_add(1, Ordering::Relaxed);
                        }
                        ordered.push(Utf8Bytes::from(protocol::candle(&h, iv, s.seq[i], c)));
                        cursor = cursor.max(Some(c.open_time));
                    }
                    Emit::Gap { from, to } => {
                        s.seq[i] += 1;
                        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                        log::warn!("[RELAY] event=gap symbol={} interval={iv} from={from} to={to}", s.name);
                        ordered.push(Utf8Bytes::from(protocol::gap(&h, iv, s.seq[i], *from, *to)));
                        cursor = cursor.max(Some(*to));
                    }
                }
            }
        }
        // Open updates go out at most every OPEN_EVERY per series (one per trade was a third
        // of all traffic in scripts/bench-relay); a newer one waits for the clock, and a
        // closed bar or a new bar goes at once.
        let now = mono();
        let s = &mut self.syms[usize::from(sym)];
        if let Some((_, t)) = &open {
            let new_bar = s.series[i].last_closed().is_some_and(|l| *t == l.open_time + iv.millis());
            if ordered.is_empty() && !new_bar && now.saturating_duration_since(s.open_sent[i]) < OPEN_EVERY {
                s.open_due[i] = true;
                open = None;
            } else {
                s.open_sent[i] = now;
                s.open_due[i] = false;
            }
        }
        let mut group = ordered.into_iter();
        let first = group.next();
        let rest: Vec<Utf8Bytes> = group.collect();
        for (_, slot, ci, out) in &s.clients {
            if *ci != i {
                continue;
            }
            if let Some(m) = &first {
                // A client that cannot take it is marked overflowed: its writer closes it
                // with its cursor.
                let _ = out.push_ordered(Ordered {
                    msg: m.clone(),
                    rest: rest.clone(),
                    cursor: cursor.map(|t| (*slot, t)),
                });
            }
            if let Some((m, t)) = &open {
                out.push_open(*slot, m.clone(), *t);
            }
        }
        // Duplicates and the like are counted by the series; the totals are summed in
        // `refresh_views`.
    }

    /// Sends a series' open bar that waited for [`OPEN_EVERY`].
    fn flush_open(&mut self, sym: u16, i: usize, now: Instant) {
        let iv = self.cfg.intervals[i];
        let s = &mut self.syms[usize::from(sym)];
        s.open_due[i] = false;
        s.open_sent[i] = now;
        let Some(o) = s.series[i].open() else { return };
        let h = Head { epoch: self.epoch, exchange: self.cfg.exchange, symbol: &s.name };
        let msg = Utf8Bytes::from(protocol::candle(&h, iv, s.seq[i], &o));
        for (_, slot, ci, out) in &s.clients {
            if *ci == i {
                out.push_open(*slot, msg.clone(), o.open_time);
            }
        }
    }

    /// A client's request. Symbols the relay did not serve yet are subscribed and backfilled
    /// first; the join then waits (at most [`JOIN_WAIT`]) for their first backfill.
    pub fn join(
        &mut self,
        client: ClientEntry,
        req: Request,
        reply: oneshot::Sender<Result<(), RequestError>>,
    ) {
        if self.clients.len() >= RELAY_CLIENTS {
            let _ = reply.send(Err(RequestError {
                field: "request",
                problem: format!("the relay serves {RELAY_CLIENTS} clients already; try again later"),
            }));
            return;
        }
        for s in &req.symbols {
            if self.symbol(s).is_none() {
                let _ = reply.send(Err(RequestError {
                    field: "symbols",
                    problem: format!(
                        "{s}: the relay serves {RELAY_SYMBOLS} symbols already (limits::RELAY_SYMBOLS)"
                    ),
                }));
                return;
            }
        }
        self.pending.push(Pending { client, req, reply, deadline: mono() + JOIN_WAIT });
        self.serve_pending(false);
    }

    fn serve_pending(&mut self, timer: bool) {
        if self.pending.is_empty() {
            return;
        }
        let now = mono();
        let mut k = 0;
        while k < self.pending.len() {
            let p = &self.pending[k];
            let i = series_idx(&self.cfg, p.req.interval).unwrap_or(0);
            let ready = p
                .req
                .symbols
                .iter()
                .all(|s| self.by_name.get(s).is_some_and(|x| self.syms[usize::from(*x)].ready[i]));
            if ready || (timer && now >= p.deadline) {
                let p = self.pending.swap_remove(k);
                self.admit(p);
            } else {
                k += 1;
            }
        }
    }

    fn admit(&mut self, p: Pending) {
        let Pending { client, req, reply, .. } = p;
        let i = series_idx(&self.cfg, req.interval).unwrap_or(0);
        let iv = self.cfg.intervals[i];
        // A symbol the venue does not know is refused, naming it.
        for s in &req.symbols {
            if let Some(why) = self.by_name.get(s).and_then(|x| self.syms[usize::from(*x)].unknown.clone()) {
                let _ = reply.send(Err(RequestError {
                    field: "symbols",
                    problem: format!("{s}: the venue does not know it ({why})"),
                }));
                return;
            }
        }
        let mut syms = Vec::with_capacity(req.symbols.len());
        let mut emits = Vec::new();
        for (slot, name) in req.symbols.iter().enumerate() {
            let Some(&x) = self.by_name.get(name) else { continue };
            syms.push(x);
            let s = &self.syms[usize::from(x)];
            let h = self.head(x);
            let series = &s.series[i];
            // Catch-up messages carry the stream's current seq: live ones continue from it.
            let seq = s.seq[i];
            let out = &client.outbox;
            match req.resume_from.iter().find(|(n, _)| n == name) {
                Some((_, cursor)) => {
                    emits.clear();
                    series.since(*cursor, &mut emits);
                    // The catch-up of one symbol is one entry of the outbox.
                    let mut msgs = Vec::with_capacity(emits.len());
                    let mut cur = None;
                    for e in &emits {
                        let (m, t) = match e {
                            Emit::Closed(c) | Emit::Corrected(c) => {
                                (protocol::candle(&h, iv, seq, c), c.open_time)
                            }
                            Emit::Gap { from, to } => (protocol::gap(&h, iv, seq, *from, *to), *to),
                            Emit::Open(_) => continue,
                        };
                        msgs.push(Utf8Bytes::from(m));
                        cur = cur.max(Some(t));
                    }
                    let mut it = msgs.into_iter();
                    if let Some(first) = it.next() {
                        out.push_ordered(Ordered {
                            msg: first,
                            rest: it.collect(),
                            cursor: cur.map(|t| (slot as u16, t)),
                        });
                    }
                }
                None => {
                    let last = series.snapshot(req.limit).last().map(|c| c.open_time);
                    let m = protocol::snapshot(&h, iv, seq, series.snapshot(req.limit));
                    out.push_ordered(Ordered {
                        msg: Utf8Bytes::from(m),
                        rest: Vec::new(),
                        cursor: last.map(|t| (slot as u16, t)),
                    });
                }
            }
            if let Some(o) = series.open() {
                out.push_open(slot as u16, Utf8Bytes::from(protocol::candle(&h, iv, seq, &o)), o.open_time);
            }
            // The latest quote, replayed (not timed: its age is not the relay's latency).
            if let Some((q, _)) = &s.last_quote {
                out.push_quote(slot as u16, q.clone(), None);
            }
        }
        // Stale until the upstream is up and every series has caught up.
        if !self.live || self.recovering > 0 {
            let since = self.stats.stale_since.load(Ordering::Relaxed);
            let m = protocol::status(self.epoch, self.cfg.exchange, self.status_seq, false, since);
            client.outbox.push_ordered(Ordered { msg: Utf8Bytes::from(m), rest: Vec::new(), cursor: None });
        }
        for (slot, x) in syms.iter().enumerate() {
            self.syms[usize::from(*x)].clients.push((client.id, slot as u16, i, client.outbox.clone()));
        }
        log::info!(
            "[RELAY] event=client_joined peer={} symbols={} interval={iv} resume={}",
            client.peer,
            req.symbols.len(),
            !req.resume_from.is_empty()
        );
        self.clients.insert(client.id, Client { entry: client, syms, iv: i });
        self.stats.clients.store(self.clients.len() as u64, Ordering::Relaxed);
        let _ = reply.send(Ok(()));
    }

    /// A client left.
    pub fn leave(&mut self, id: u64) {
        if let Some(c) = self.clients.remove(&id) {
            for x in &c.syms {
                self.syms[usize::from(*x)].clients.retain(|(cid, _, _, _)| *cid != id);
            }
        }
        self.pending.retain(|p| p.client.id != id);
        self.stats.clients.store(self.clients.len() as u64, Ordering::Relaxed);
    }

    /// The clock: closes bars by the clock, asks REST to check bars built from trades, serves
    /// joins that waited too long, and refreshes the gauges and views.
    pub fn tick(&mut self) {
        let now_ms = wall_unix_ms();
        let delay = i64::try_from(self.cfg.close_delay.as_millis()).unwrap_or(i64::MAX);
        let now = mono();
        let mut emits = std::mem::take(&mut self.emits);
        for s in 0..self.syms.len() {
            for i in 0..self.cfg.intervals.len() {
                emits.clear();
                self.syms[s].series[i].on_clock(now_ms, delay, self.live, &mut emits);
                self.fan_out(s as u16, i, &emits);
                if self.syms[s].open_due[i]
                    && now.saturating_duration_since(self.syms[s].open_sent[i]) >= OPEN_EVERY
                {
                    self.flush_open(s as u16, i, now);
                }
                let sy = &self.syms[s];
                if self.live && sy.series[i].needs_check() && !sy.in_flight[i] && now >= sy.next_check[i] {
                    self.syms[s].next_check[i] = now + CHECK_EVERY;
                    self.job(s as u16, i, false);
                }
            }
        }
        self.emits = emits;
        self.serve_pending(true);
        if now.saturating_duration_since(self.last_views) >= Duration::from_secs(1) {
            self.last_views = now;
            self.refresh_views();
        }
    }

    fn refresh_views(&mut self) {
        let now = mono();
        let (mut deep, mut wide) = (0usize, 0usize);
        let mut views = Vec::with_capacity(self.clients.len());
        for c in self.clients.values() {
            let o = &c.entry.outbox;
            let q = o.depth_ordered();
            deep = deep.max(q);
            wide = wide.max(o.depth_latest());
            views.push(ClientView {
                peer: c.entry.peer.to_string(),
                symbols: c.syms.len(),
                interval: self.cfg.intervals[c.iv].name(),
                queued: q,
                age_s: now.saturating_duration_since(c.entry.since).as_secs(),
            });
        }
        self.stats.depth_closed.store(deep as u64, Ordering::Relaxed);
        self.stats.depth_open.store(wide as u64, Ordering::Relaxed);
        if let Ok(mut v) = self.stats.client_views.lock() {
            *v = views;
        }
        let dups: u64 = self.syms.iter().flat_map(|s| s.series.iter()).map(|s| s.counts.duplicates).sum();
        self.stats.duplicates.store(dups, Ordering::Relaxed);
        let syms: Vec<SymbolView> = self
            .syms
            .iter()
            .map(|s| SymbolView {
                symbol: s.name.clone(),
                quote_age_ms: s
                    .last_quote
                    .as_ref()
                    .map(|(_, t)| now.saturating_duration_since(*t).as_millis() as u64),
                candles: s.series.first().map_or(0, Series::len),
            })
            .collect();
        if let Ok(mut v) = self.stats.symbol_views.lock() {
            *v = syms;
        }
    }

    /// Marks every client's outbox closing (SIGTERM): each writer sends what it holds, then
    /// its cursor and a close frame.
    pub fn shutdown(&mut self) {
        for c in self.clients.values() {
            c.entry.outbox.close(Closing::Shutdown);
        }
        for p in self.pending.drain(..) {
            let _ = p
                .reply
                .send(Err(RequestError { field: "request", problem: "the relay is shutting down".into() }));
        }
    }

    /// The symbol names of a client's slots (for its cursor).
    pub fn exchange(&self) -> Exchange {
        self.cfg.exchange
    }
}

/// Runs the hub until `stop` fires: upstream events, commands and the clock.
pub async fn run(
    mut hub: Hub,
    mut input: mpsc::Receiver<Input>,
    mut cmds: mpsc::Receiver<Cmd>,
    mut stop: watch::Receiver<bool>,
) {
    // Symbols configured in `relay.symbols` are subscribed and backfilled from the start.
    for s in hub.cfg.symbols.clone() {
        if hub.symbol(&s).is_none() {
            log::warn!("[RELAY] event=symbol_refused symbol={s} reason=relay_full");
        }
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => {
                hub.shutdown();
                return;
            }
            Some(c) = cmds.recv() => match c {
                Cmd::Join { client, req, reply } => hub.join(client, req, reply),
                Cmd::Leave { id } => hub.leave(id),
            },
            // The clock before the upstream: a flood of quotes never holds bars open.
            _ = tick.tick() => hub.tick(),
            Some(ev) = input.recv() => {
                hub.input(ev);
                // Drain what is already queued before the clock gets a look in.
                for _ in 0..256 {
                    match input.try_recv() {
                        Ok(ev) => hub.input(ev),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}
