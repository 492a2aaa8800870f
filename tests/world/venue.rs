//! The fake venue of the in-process world: market prices, which symbols it trades, what the
//! account holds, and a scripted broker implementing `tickguard::broker::Broker` whose own
//! records (orders received, fills executed) are what the invariants read.
//!
//! Times are the current life's engine timestamps (`Clock::now()`); `life` numbers the
//! wiring's starts, so a record from a previous life is "long ago".

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tickguard::broker::{Broker, CloseOrder, Lookup};
use tickguard::core::engine::Outcome;
use tickguard::core::price::{Price, Qty};
use tickguard::core::time::Timestamp;
use tickguard::core::types::Symbol;
use tickguard::runtime::clock::Clock;

/// How the broker answers the next orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerMode {
    /// Filled at once, answered `Filled`.
    Fill,
    /// Refused (nothing executed), answered `Rejected`.
    Reject,
    /// The request times out (`Unknown`) and the order never reached the venue.
    TimeoutLost,
    /// The request times out (`Unknown`) but the order executed at once (a look-up finds it).
    TimeoutFilled,
    /// The request times out (`Unknown`); the order lands at the venue later (before
    /// `absent_after`) and fills: look-ups before that find nothing.
    LateFill,
}

/// An order as the venue received it.
#[derive(Clone, Debug)]
#[allow(dead_code)] // printed in failure logs (Debug)
pub struct OrderRec {
    pub life: u32,
    pub at: Timestamp,
    pub pos_id: String,
    pub client_id: String,
    pub symbol: String,
    pub qty: Qty,
    pub mode: BrokerMode,
}

/// A fill the venue executed.
#[derive(Clone, Debug)]
pub struct FillRec {
    pub pos_id: String,
    pub client_id: String,
    pub qty: Qty,
}

/// An order that timed out and lands later.
#[derive(Clone, Debug)]
struct Pending {
    life: u32,
    visible_at: Timestamp,
    client_id: String,
    pos_id: String,
    symbol: String,
    qty: Qty,
}

pub struct VenueState {
    /// The market: price of every symbol the venue trades (upper case).
    pub prices: BTreeMap<String, Price>,
    /// What the account holds, per symbol (signed).
    pub holdings: BTreeMap<String, Qty>,
    pub holdings_fail: bool,
    /// Order look-ups fail (the venue's order query is down): outcomes stay unknown.
    pub lookup_down: bool,
    pub mode: BrokerMode,
    pub orders: Vec<OrderRec>,
    pub fills: Vec<FillRec>,
    /// Client ids the venue knows, with their outcome.
    known: BTreeMap<String, Outcome>,
    pending: Vec<Pending>,
    pub life: u32,
    pub clock: Option<Clock>,
    /// Delay of a late fill after its send (below `absent_after`).
    pub late_by: Duration,
}

/// The venue, shared by the broker, the feed and the world's checks.
#[derive(Clone)]
pub struct Venue(pub Arc<Mutex<VenueState>>);

pub const ABSENT_AFTER: Duration = Duration::from_secs(2);

impl Venue {
    pub fn new(symbols: &[(&str, &str)]) -> Venue {
        let prices = symbols
            .iter()
            .map(|(s, p)| (s.to_string(), Price::parse(p).expect("price literal")))
            .collect::<BTreeMap<_, _>>();
        let holdings = prices.keys().map(|s| (s.clone(), Qty::parse("1000").expect("qty"))).collect();
        Venue(Arc::new(Mutex::new(VenueState {
            prices,
            holdings,
            holdings_fail: false,
            lookup_down: false,
            mode: BrokerMode::Fill,
            orders: Vec::new(),
            fills: Vec::new(),
            known: BTreeMap::new(),
            pending: Vec::new(),
            life: 0,
            clock: None,
            late_by: Duration::from_millis(800),
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, VenueState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The appliance's clock of this life (its origin is the life's start).
    pub fn set_clock(&self, clock: Clock) {
        self.lock().clock = Some(clock);
    }

    /// A new life of the wiring begins: every order still pending has landed meanwhile.
    pub fn begin_life(&self) {
        let mut s = self.lock();
        s.life += 1;
        s.clock = None;
        let pending = std::mem::take(&mut s.pending);
        for p in pending {
            s.execute(&p.pos_id, &p.client_id, &p.symbol, p.qty);
        }
    }

    pub fn price(&self, symbol: &str) -> Option<Price> {
        self.lock().prices.get(symbol).copied()
    }

    /// Total filled per position id (every incarnation of the id).
    pub fn filled_by_client_prefix(&self, pos_id: &str, generation: u32) -> Qty {
        let prefix = client_prefix(generation, pos_id);
        let s = self.lock();
        s.fills
            .iter()
            .filter(|f| f.pos_id == pos_id && f.client_id.starts_with(&prefix))
            .fold(Qty::ZERO, |a, f| a.checked_add(f.qty).unwrap_or(a))
    }
}

/// What every client id of one registration of `pos_id` starts with.
pub fn client_prefix(generation: u32, pos_id: &str) -> String {
    let a = tickguard::core::engine::client_id(generation, pos_id, 1);
    let b = tickguard::core::engine::client_id(generation, pos_id, 2);
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect()
}

impl VenueState {
    fn now(&self) -> Timestamp {
        self.clock.map_or(Timestamp::from_nanos(0), |c| c.now())
    }

    /// Lands pending orders whose time has come.
    fn settle(&mut self) {
        let (life, now) = (self.life, self.now());
        let (due, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.life != life || p.visible_at <= now);
        self.pending = keep;
        for p in due {
            self.execute(&p.pos_id, &p.client_id, &p.symbol, p.qty);
        }
    }

    /// Executes a market sell of `qty`: refused (nothing) when the account holds too little.
    fn execute(&mut self, pos_id: &str, client_id: &str, symbol: &str, qty: Qty) -> Outcome {
        let held = self.holdings.get(symbol).copied();
        let price = self.prices.get(symbol).copied();
        let outcome = match (held, price) {
            (Some(h), Some(p)) if h >= qty => {
                self.holdings.insert(symbol.to_string(), h.saturating_sub(qty));
                self.fills.push(FillRec {
                    pos_id: pos_id.to_string(),
                    client_id: client_id.to_string(),
                    qty,
                });
                Outcome::Filled { executed: qty, price: Some(p) }
            }
            _ => Outcome::Rejected,
        };
        self.known.insert(client_id.to_string(), outcome);
        outcome
    }
}

/// The scripted broker.
pub struct FakeBroker(pub Venue);

impl Broker for FakeBroker {
    async fn place(&self, order: &CloseOrder) -> Outcome {
        let mut s = self.0.lock();
        s.settle();
        let (life, now, mode) = (s.life, s.now(), s.mode);
        s.orders.push(OrderRec {
            life,
            at: now,
            pos_id: order.pos_id.to_string(),
            client_id: order.client_id.to_string(),
            symbol: order.symbol.to_string(),
            qty: order.qty,
            mode,
        });
        let (pid, cid, sym) = (order.pos_id.as_str(), order.client_id.as_str(), order.symbol.as_str());
        if !s.prices.contains_key(sym) {
            // -1121 Invalid symbol: refused, nothing executed.
            s.known.insert(cid.to_string(), Outcome::Rejected);
            return Outcome::Rejected;
        }
        match mode {
            BrokerMode::Fill => s.execute(pid, cid, sym, order.qty),
            BrokerMode::Reject => {
                s.known.insert(cid.to_string(), Outcome::Rejected);
                Outcome::Rejected
            }
            BrokerMode::TimeoutLost => Outcome::Unknown,
            BrokerMode::TimeoutFilled => {
                let _ = s.execute(pid, cid, sym, order.qty);
                Outcome::Unknown
            }
            BrokerMode::LateFill => {
                let visible_at = now + s.late_by;
                s.pending.push(Pending {
                    life,
                    visible_at,
                    client_id: cid.to_string(),
                    pos_id: pid.to_string(),
                    symbol: sym.to_string(),
                    qty: order.qty,
                });
                Outcome::Unknown
            }
        }
    }

    async fn lookup(&self, _symbol: &str, client_id: &str) -> Lookup {
        let mut s = self.0.lock();
        s.settle();
        if s.lookup_down {
            return Lookup::Failed("fake venue: order query unavailable".into());
        }
        match s.known.get(client_id) {
            // A refused order is not on the venue's books (Binance: -2013 "Order does not exist").
            Some(Outcome::Rejected) | None => Lookup::Absent,
            Some(o) => Lookup::Found(*o),
        }
    }

    async fn holdings(&self) -> Result<Vec<(Symbol, Qty)>, String> {
        let s = self.0.lock();
        if s.holdings_fail {
            return Err("fake venue: holdings unavailable".into());
        }
        Ok(s.holdings
            .iter()
            .filter_map(|(k, v)| Symbol::try_from(k.as_str()).ok().map(|k| (k, *v)))
            .collect())
    }

    fn absent_after(&self) -> Duration {
        ABSENT_AFTER
    }
}
