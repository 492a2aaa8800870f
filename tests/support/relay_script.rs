//! Candle scripts for the relay's tests: a list of bars `(open_ms, o, h, l, c, v)` played on the
//! fake Binance WebSocket ([`WsServer`]) as `@trade` and `@kline_<interval>` events, and stored
//! (optionally) in the fake REST API ([`FakeBinance`]) for `GET /api/v3/klines`.
//!
//! Per bar, in this order (each frame goes only to the connections subscribed to its stream):
//!
//! 1. four trades at `o`, `h`, `l`, `c` (times `open`, `open + len/4`, `open + len/2`,
//!    `open + 3·len/4`), the volume split evenly (the remainder on the last; trades of zero
//!    quantity are left out, so a bar with `v` = 0 has none), each followed by an open kline
//!    update (`x` false) of the bar so far (high/low/close/volume of the trades up to then);
//! 2. the closing kline (`x` true) with the bar's own texts, `n`, `f`/`L`, `q` (Σ price·qty)
//!    and taker volumes (every trade is a taker buy, so `V` = `v` and `Q` = `q`).
//!
//! [`CandleScript::trades`], [`CandleScript::updates`] and [`CandleScript::close`] switch
//! each kind off (e.g. `close(false)`: the closing kline never arrives — a relay must close
//! the bar from trades and later take the REST candle). Trade ids continue per symbol across
//! scripts ([`WsServer::next_trade_id`]).

use tickguard::core::price::{Price, Qty, notional};

use super::fake_binance::{FakeBinance, Kline, dec8, interval_ms};
use super::ws::{Trade, WsServer};

/// `(open_ms, open, high, low, close, volume)`.
pub type Bar<'a> = (u64, &'a str, &'a str, &'a str, &'a str, &'a str);

/// What one [`CandleScript::play`] pushed.
#[derive(Clone, Debug, Default)]
pub struct Played {
    /// The closed candle of each bar (as pushed with `x` true, or as it would have been).
    pub klines: Vec<Kline>,
    /// Every trade, in push order.
    pub trades: Vec<Trade>,
    /// Frames sent: per frame, how many connections it reached, summed.
    pub delivered: usize,
    /// Frames built (trades + kline updates + closing klines), whether anyone was subscribed or not.
    pub frames: usize,
}

/// A candle script for one symbol and interval; see the module documentation.
pub struct CandleScript<'a> {
    ws: &'a WsServer,
    rest: Option<&'a FakeBinance>,
    symbol: String,
    interval: String,
    trades: bool,
    updates: bool,
    close: bool,
}

impl<'a> CandleScript<'a> {
    /// A script for `symbol` (upper case, e.g. `BTCUSDT`) and `interval` (e.g. `1m`; an
    /// interval of fixed length) pushing trades, updates and closing klines.
    pub fn new(ws: &'a WsServer, symbol: &str, interval: &str) -> CandleScript<'a> {
        assert!(interval_ms(interval).is_some(), "a kline interval of fixed length: {interval}");
        CandleScript {
            ws,
            rest: None,
            symbol: symbol.into(),
            interval: interval.into(),
            trades: true,
            updates: true,
            close: true,
        }
    }

    /// Also stores each bar's closed candle in `rest` (added to what it holds, same open time
    /// replaced) before anything of the bar is pushed, so a backfill racing the frames finds it.
    pub fn store_in(mut self, rest: &'a FakeBinance) -> Self {
        self.rest = Some(rest);
        self
    }

    /// Whether trade events are pushed (default true).
    pub fn trades(mut self, on: bool) -> Self {
        self.trades = on;
        self
    }

    /// Whether open kline updates (`x` false) are pushed (default true).
    pub fn updates(mut self, on: bool) -> Self {
        self.updates = on;
        self
    }

    /// Whether the closing kline (`x` true) is pushed (default true).
    pub fn close(mut self, on: bool) -> Self {
        self.close = on;
        self
    }

    /// Plays `bars` in order; see the module documentation.
    pub fn play(&self, bars: &[Bar<'_>]) -> Played {
        let mut out = Played::default();
        for &bar in bars {
            self.play_bar(bar, &mut out);
        }
        out
    }

    fn play_bar(&self, (open_ms, o, h, l, c, v): Bar<'_>, out: &mut Played) {
        let (sym, iv) = (self.symbol.as_str(), self.interval.as_str());
        let len = interval_ms(iv).unwrap_or(60_000);
        let units = Qty::parse(v).expect("volume: a decimal with at most 8 places").units();
        let share = units / 4;
        let qtys = [share, share, share, units - 3 * share];
        let prices = [o, h, l, c];
        let price = |s: &str| Price::parse(s).expect("price: a decimal with at most 8 places");

        // The trades of the bar and the closed candle they make.
        let mut trades = Vec::new();
        for (i, (p, q)) in prices.iter().zip(qtys).enumerate() {
            if q > 0 {
                let id = self.ws.next_trade_id(sym);
                trades.push(Trade::new(id, p, &dec8(q), open_ms + len * i as u64 / 4));
            }
        }
        let mut closed = Kline::new(iv, open_ms, o, h, l, c, v);
        fill_from_trades(&mut closed, &trades);
        if let Some(rest) = self.rest {
            rest.add_klines(sym, iv, std::slice::from_ref(&closed));
        }

        // Frames: trade, update, trade, update, ..., closing kline.
        let mut send = |n: usize| {
            out.frames += 1;
            out.delivered += n;
        };
        for i in 0..trades.len() {
            if self.trades {
                send(self.ws.push_trade(sym, &trades[i]));
            }
            if self.updates {
                let so_far = &trades[..=i];
                let hi = so_far.iter().max_by_key(|t| price(&t.price)).map_or(o, |t| t.price.as_str());
                let lo = so_far.iter().min_by_key(|t| price(&t.price)).map_or(o, |t| t.price.as_str());
                let vol: i64 = so_far.iter().map(|t| Qty::parse(&t.qty).map_or(0, Qty::units)).sum();
                let mut k = Kline::new(iv, open_ms, o, hi, lo, &trades[i].price, &dec8(vol));
                fill_from_trades(&mut k, so_far);
                send(self.ws.push_kline(sym, iv, &k, false));
            }
        }
        if self.close {
            send(self.ws.push_kline(sym, iv, &closed, true));
        }
        out.trades.extend(trades);
        out.klines.push(closed);
    }
}

/// Sets `n`, `f`, `L`, `q`, `V`, `Q` of `k` from `trades` (all taker buys).
fn fill_from_trades(k: &mut Kline, trades: &[Trade]) {
    let Some((first, last)) = trades.first().zip(trades.last()) else { return };
    k.trades = trades.len() as u64;
    k.first_trade_id = first.id as i64;
    k.last_trade_id = last.id as i64;
    let quote: i128 = trades
        .iter()
        .map(|t| {
            let p = Price::parse(&t.price).unwrap_or(Price::ZERO);
            notional(p, Qty::parse(&t.qty).unwrap_or(Qty::ZERO))
        })
        .sum();
    k.quote_volume = dec8(i64::try_from(quote).unwrap_or(i64::MAX));
    k.taker_base = k.volume.clone();
    k.taker_quote = k.quote_volume.clone();
}
