//! `PositionBook<M>`: the protected positions and their close state machines, in fixed memory.
//!
//! ```text
//!  Open ──crossed / emergency / blind flatten──▶ Closing{attempt, client_id, sent_at, order}
//!   ▲                                              │  order: Sent → Working | Unknown → ...
//!   └── blind flatten re-judged on a fresh price ──┤  filled ─────────────▶ Closed(Filled)
//!       (only while no order may be working)       │  partially filled ───▶ next attempt, remainder
//!                                                  │  rejected ───────────▶ Waiting (backoff)
//!                                                  └─ max_close_attempts ─▶ CloseFailed (retries
//!                                                                             at the slowest backoff)
//! ```
//! Invariants kept by the engine and checked by the property tests: at most one order that may
//! be working per position; `filled <= qty`; a crossed position gets exactly one decision.

use core::time::Duration;

use super::CoreError;
use super::price::{Price, Qty};
use super::time::Timestamp;
use super::types::{BlindPolicy, ClientId, CloseReason, InstrumentId, PosIdx, PositionId, PriceSource, Side};

/// "No position" in the per-instrument lists.
pub(crate) const NIL: u16 = u16::MAX;

/// The decision to close, made once and never re-made (except a blind flatten that is
/// re-judged while it is known not to have reached the venue).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Why.
    pub reason: CloseReason,
    /// The price that crossed the level (none for a blind flatten).
    pub price: Option<Price>,
    /// How that price reached the decision.
    pub source: PriceSource,
    /// Age of that price when the decision was made.
    pub age: Duration,
    /// The level crossed (none for emergency and blind closes).
    pub level: Option<Price>,
    /// When the decision was made.
    pub at: Timestamp,
}

/// Where the current close attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderPhase {
    /// Handed to the broker; its outcome is not known yet.
    Sent,
    /// The broker holds it open (partly filled or resting): wait, never send another.
    Working,
    /// It may or may not have executed: the edge must resolve it before any new order.
    Unknown,
    /// No order can be working: the next attempt goes at `next_at`.
    Waiting,
}

/// A position being closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closing {
    /// Number of the current (or last) attempt; 1 for the first order.
    pub attempt: u16,
    /// Client id of the current (or last) attempt.
    pub client_id: ClientId,
    /// When the current attempt was sent.
    pub sent_at: Timestamp,
    /// Where the current attempt stands.
    pub order: OrderPhase,
    /// Quantity the current attempt asked for.
    pub order_qty: Qty,
    /// Quantity the current attempt is known to have executed.
    pub order_executed: Qty,
    /// Attempts that ended without executing anything.
    pub failures: u16,
    /// Next retry (`Waiting`) or next look-up (`Working`, `Unknown`).
    pub next_at: Timestamp,
}

/// The attempt before the current one, kept so that a late report about it (a look-up that
/// finds it filled after another concluded it absent) is reconciled, never ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrevAttempt {
    /// Its client id.
    pub client_id: ClientId,
    /// Quantity it asked for.
    pub order_qty: Qty,
    /// Quantity it is known to have executed.
    pub executed: Qty,
}

/// How a position ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedHow {
    /// Our close orders filled it.
    Filled,
    /// The broker shows it closed by someone else (the bot, a square-off).
    External,
    /// An operator marked it closed by hand.
    Resolved,
    /// Protection was withdrawn (the bot deleted it); nothing was sent.
    Withdrawn,
}

impl ClosedHow {
    /// `filled`, `external`, `resolved` or `withdrawn`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedHow::Filled => "filled",
            ClosedHow::External => "external",
            ClosedHow::Resolved => "resolved",
            ClosedHow::Withdrawn => "withdrawn",
        }
    }
}

/// The close state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PosState {
    /// Protected; no decision yet.
    Open,
    /// Decided; closing.
    Closing(Closing),
    /// `max_close_attempts` failed: loudest alert; still retrying at the slowest backoff
    /// until it closes or an operator resolves it.
    CloseFailed(Closing),
    /// Done.
    Closed {
        /// When.
        at: Timestamp,
        /// How.
        how: ClosedHow,
    },
}

impl PosState {
    /// `open`, `closing`, `close_failed` or `closed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PosState::Open => "open",
            PosState::Closing(_) => "closing",
            PosState::CloseFailed(_) => "close_failed",
            PosState::Closed { .. } => "closed",
        }
    }
    /// The close progress, in `Closing` and `CloseFailed`.
    pub fn closing(&self) -> Option<&Closing> {
        match self {
            PosState::Closing(c) | PosState::CloseFailed(c) => Some(c),
            _ => None,
        }
    }
    /// Mutable close progress.
    pub fn closing_mut(&mut self) -> Option<&mut Closing> {
        match self {
            PosState::Closing(c) | PosState::CloseFailed(c) => Some(c),
            _ => None,
        }
    }
    /// True once closed (in any way).
    pub fn is_terminal(&self) -> bool {
        matches!(self, PosState::Closed { .. })
    }
}

/// What the bot or the configuration asks to protect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PositionSpec {
    /// Unique id.
    pub id: PositionId,
    /// Instrument symbol as the venue writes it.
    pub symbol: crate::core::types::Symbol,
    /// Long or short.
    pub side: Side,
    /// Quantity held (positive).
    pub qty: Qty,
    /// Entry price.
    pub entry: Price,
    /// Stop-loss level, if any.
    pub stop_loss: Option<Price>,
    /// Take-profit level, if any.
    pub take_profit: Option<Price>,
    /// What to do when blind.
    pub blind_policy: BlindPolicy,
}

impl PositionSpec {
    /// Checks the spec on its own: id charset and length, positive quantity and entry, and
    /// levels on the right sides of each other.
    pub fn validate(&self) -> Result<(), CoreError> {
        if self.id.is_empty() || !self.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(CoreError::BadId);
        }
        if !self.qty.is_positive() {
            return Err(CoreError::BadQuantity);
        }
        if !self.entry.is_positive() {
            return Err(CoreError::BadPrice);
        }
        if self.stop_loss.is_some_and(|p| !p.is_positive())
            || self.take_profit.is_some_and(|p| !p.is_positive())
        {
            return Err(CoreError::BadPrice);
        }
        check_levels(self.side, self.stop_loss, self.take_profit)
    }
}

/// A long's stop must be below its target; a short's above.
pub fn check_levels(side: Side, sl: Option<Price>, tp: Option<Price>) -> Result<(), CoreError> {
    match (side, sl, tp) {
        (Side::Long, Some(s), Some(t)) if s >= t => Err(CoreError::BadLevels),
        (Side::Short, Some(s), Some(t)) if s <= t => Err(CoreError::BadLevels),
        _ => Ok(()),
    }
}

/// A protected position.
#[derive(Clone, Debug)]
pub struct Position {
    /// Unique id.
    pub id: PositionId,
    /// Registration number; makes client ids unique even if an id is reused later.
    pub generation: u32,
    /// Instrument.
    pub instrument: InstrumentId,
    /// Long or short.
    pub side: Side,
    /// Quantity held when registered.
    pub qty: Qty,
    /// Quantity our closes have executed so far (never above `qty`).
    pub filled: Qty,
    /// Entry price.
    pub entry: Price,
    /// Stop-loss level.
    pub stop_loss: Option<Price>,
    /// Take-profit level.
    pub take_profit: Option<Price>,
    /// What to do when blind.
    pub blind_policy: BlindPolicy,
    /// Close state machine.
    pub state: PosState,
    /// The close decision, once made.
    pub decision: Option<Decision>,
    /// Since when it has been blind, if it is.
    pub blind_since: Option<Timestamp>,
    /// True once its blind policy acted for the current blind spell.
    pub blind_acted: bool,
    /// Close orders sent over the position's whole life, through every decision: the
    /// attempts of a close that follows a re-judged blind flatten number on from it, so
    /// client ids never repeat (persist it with the position).
    pub attempts: u16,
    /// Sum of `price * qty` over fills (units of 10^-8), for the average exit price.
    pub exit_notional: i128,
    /// When it was registered (or restored: the start of its watch on this boot).
    pub registered_at: Timestamp,
    /// The attempt before the current one.
    pub prev_attempt: Option<PrevAttempt>,
    pub(crate) next: u16,
}

impl Position {
    /// A new open position from a validated spec.
    pub fn new(spec: &PositionSpec, instrument: InstrumentId, generation: u32, now: Timestamp) -> Position {
        Position {
            id: spec.id.clone(),
            generation,
            instrument,
            side: spec.side,
            qty: spec.qty,
            filled: Qty::ZERO,
            entry: spec.entry,
            stop_loss: spec.stop_loss,
            take_profit: spec.take_profit,
            blind_policy: spec.blind_policy,
            state: PosState::Open,
            decision: None,
            blind_since: None,
            blind_acted: false,
            attempts: 0,
            exit_notional: 0,
            registered_at: now,
            prev_attempt: None,
            next: NIL,
        }
    }
    /// Quantity still held.
    pub fn remaining(&self) -> Qty {
        self.qty.saturating_sub(self.filled)
    }
    /// Average exit price of the fills so far.
    pub fn avg_exit(&self) -> Option<Price> {
        if !self.filled.is_positive() {
            return None;
        }
        let units = self.exit_notional * i128::from(super::price::SCALE) / i128::from(self.filled.units());
        i64::try_from(units).ok().map(Price::from_units)
    }
    /// True when the same spec registered again would be a no-op.
    pub fn matches(&self, spec: &PositionSpec, symbol: &str, own_symbol: &str) -> bool {
        self.id == spec.id
            && symbol == own_symbol
            && self.side == spec.side
            && self.qty == spec.qty
            && self.entry == spec.entry
            && self.stop_loss == spec.stop_loss
            && self.take_profit == spec.take_profit
            && self.blind_policy == spec.blind_policy
    }
}

/// Up to `M` positions in stable slots. A closed position keeps its slot until room is
/// needed; then the one closed longest ago is evicted.
pub struct PositionBook<const M: usize> {
    slots: heapless::Vec<Option<Position>, M>,
}

impl<const M: usize> Default for PositionBook<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const M: usize> PositionBook<M> {
    /// An empty book.
    pub fn new() -> Self {
        PositionBook { slots: heapless::Vec::new() }
    }
    /// Capacity.
    pub const fn capacity(&self) -> usize {
        M
    }
    /// Positions not yet closed.
    pub fn active(&self) -> usize {
        self.iter().filter(|(_, p)| !p.state.is_terminal()).count()
    }
    /// The slot of the position with this id.
    pub fn find(&self, id: &str) -> Option<PosIdx> {
        self.iter().find(|(_, p)| p.id.as_str() == id).map(|(i, _)| i)
    }
    /// A position by slot.
    pub fn get(&self, idx: PosIdx) -> Option<&Position> {
        self.slots.get(usize::from(idx.0)).and_then(Option::as_ref)
    }
    /// A position by slot, mutably.
    pub fn get_mut(&mut self, idx: PosIdx) -> Option<&mut Position> {
        self.slots.get_mut(usize::from(idx.0)).and_then(Option::as_mut)
    }
    /// Every position with its slot.
    pub fn iter(&self) -> impl Iterator<Item = (PosIdx, &Position)> {
        self.slots.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (PosIdx(i as u16), p)))
    }
    /// Number of slots in use or once used (iteration bound).
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }
    /// Stores a position in a free slot, evicting the longest-closed one if needed.
    pub fn insert(&mut self, pos: Position) -> Result<PosIdx, CoreError> {
        let free = self.slots.iter().position(Option::is_none).or_else(|| {
            if self.slots.len() < M {
                None
            } else {
                // Evict the position closed longest ago.
                self.slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| match p.as_ref().map(|p| &p.state) {
                        Some(PosState::Closed { at, .. }) => Some((i, *at)),
                        _ => None,
                    })
                    .min_by_key(|(_, at)| *at)
                    .map(|(i, _)| i)
            }
        });
        match free {
            Some(i) => {
                self.slots[i] = Some(pos);
                Ok(PosIdx(i as u16))
            }
            None => {
                let i = self.slots.len();
                self.slots.push(Some(pos)).map_err(|_| CoreError::BookFull { capacity: M })?;
                Ok(PosIdx(i as u16))
            }
        }
    }
    /// Empties a slot.
    pub fn remove(&mut self, idx: PosIdx) -> Option<Position> {
        self.slots.get_mut(usize::from(idx.0)).and_then(Option::take)
    }
}
