//! The REST last-price fallback (L2 of the ladder), one poller for every venue ([`run`]).
//!
//! While the feed is down, every `feed.rest_poll_s` the poller asks the venue's REST API for
//! the last price of every instrument with an open position, over the same DNS-fallback / TLS
//! stack, so a dead WebSocket host or a DNS outage (last-good addresses) still leaves prices.
//! Answers are dated at the request's **send** time; an answer still in flight when the feed
//! returns is discarded. 429 / 418 and `Retry-After` hold the poller off through a circuit
//! breaker. A venue ([`Poller`]) says how instruments are named, how a request is asked and
//! read: Binance ([`BinancePoller`], here: `GET /api/v3/ticker/price`, one request for all,
//! weight 4, far inside Binance's budget) and Upstox (`super::upstox::UpstoxPoller`, the LTP
//! quote, 500 keys a request, with its bearer token).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::error::PollError;
use super::json::{Value, for_each_element, for_each_member};
use super::session::Ctx;
use crate::core::backoff::{CircuitBreaker, Rng};
use crate::core::engine::FeedEvent;
use crate::core::price::Price;
use crate::core::types::{InstrumentId, Quote, Source, Tick};
use crate::net::http::{self, Connector, Endpoint, Req};

/// Poller settings.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Base URL (`feed.rest_url`).
    pub endpoint: Endpoint,
    /// Poll period (`feed.rest_poll_s`).
    pub every: Duration,
    /// Bound of one request.
    pub timeout: Duration,
}

/// The path of a last-price request for `symbols` under the base path `base`.
pub fn price_path(base: &str, symbols: &[&str]) -> String {
    let base = base.trim_end_matches('/');
    match symbols {
        [one] => format!("{base}/api/v3/ticker/price?symbol={one}"),
        many => {
            let list: Vec<String> = many.iter().map(|s| format!("%22{s}%22")).collect();
            format!("{base}/api/v3/ticker/price?symbols=%5B{}%5D", list.join(","))
        }
    }
}

/// Parses an answer (an object or an array of `{"symbol","price"}`) into `(symbol, price)`.
pub fn parse_prices(body: &[u8], mut f: impl FnMut(&[u8], Price)) -> Result<(), String> {
    let mut one = |obj: &[u8]| {
        let mut sym = None;
        let mut price = None;
        let _ = for_each_member(obj, |k, v| {
            match (k, v) {
                (b"symbol", Value::Str(s)) => sym = Some(s),
                (b"price", Value::Str(p)) => price = Price::parse_bytes(p).ok(),
                _ => {}
            }
            true
        });
        if let (Some(s), Some(p)) = (sym, price) {
            f(s, p);
        }
    };
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map_or(&body[..0], |i| &body[i..]);
    match trimmed.first() {
        Some(b'[') => for_each_element(trimmed, |v| {
            if let Value::Object(o) = v {
                one(o);
            }
            true
        })
        .map_err(|e| format!("{e:?}")),
        Some(b'{') => {
            one(trimmed);
            Ok(())
        }
        _ => Err("not JSON".into()),
    }
}

/// Binance error codes that are about the symbols asked for, not about the request as a whole:
/// `-1121` "Invalid symbol." (a batch with one unknown name is refused whole) and `-1100`
/// "Illegal characters found in parameter 'symbols'". Such a batch is split.
pub const SYMBOL_ERROR_CODES: [i64; 2] = [-1121, -1100];

/// First delay before a refused symbol is asked for again, alone.
pub const REFUSED_RETRY_INITIAL: Duration = Duration::from_secs(30);
/// Longest delay between two tries of a refused symbol.
pub const REFUSED_RETRY_MAX: Duration = Duration::from_secs(600);
/// Most requests one poll sends while splitting batches; chunks left over are reported as
/// REST errors for this poll and asked for again at the next (offenders found meanwhile are
/// left out by then, so every poll makes progress).
pub const SPLIT_REQUESTS_MAX: usize = crate::limits::REST_SPLIT_REQUESTS_MAX;

/// The `code` of a Binance error body (`{"code":-1121,"msg":"Invalid symbol."}`).
pub fn error_code(body: &[u8]) -> Option<i64> {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace()).map_or(&body[..0], |i| &body[i..]);
    let mut code = None;
    let _ = for_each_member(trimmed, |k, v| {
        if let (b"code", Value::Num(n)) = (k, v) {
            code = super::json::parse_i64(n);
            return false;
        }
        true
    });
    code
}

// ----- the poller, one for every venue --------------------------------------------------------

/// An instrument the poller asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Its id.
    pub id: InstrumentId,
    /// What requests call it (Binance: the symbol; Upstox: the instrument key).
    pub name: String,
    /// Its symbol (for the log lines).
    pub symbol: String,
}

/// What one request came to (the venue reads the answer; the poller does the rest).
pub enum Reply {
    /// HTTP 200: the prices by request name (several wants may share a name), and why part of
    /// the answer could not be read, if so.
    Priced {
        /// `(name, price)` pairs.
        prices: Vec<(String, Price)>,
        /// The answer could not be read (none of it, or not all).
        unreadable: Option<String>,
        /// Address the answer came from (for `event=rest_polling`).
        addr: String,
        /// How that address was resolved.
        dns: String,
    },
    /// The venue refused the request for one of its names (a 4xx about the names): a batch is
    /// split until the offender is alone, which is then left out for a while.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The venue's error code.
        code: String,
    },
    /// The request failed as a whole: the poll ends (a rate limit holds the breaker off for
    /// the pause asked; a network or server failure counts for it).
    Failed(PollError),
    /// The poller may not call the network now (Upstox: the token is refused or unreadable,
    /// `[AUTH]` raised): the poll ends without a request.
    Blocked,
}

/// What a venue's REST fallback differs in: how instruments are named, how a request is made
/// and read, and a few log fields. [`run`] does the rest: the poll period, the outage check,
/// the circuit breaker, batches and their splitting, refused names and their retries, the
/// per-instrument `RestOk` / `RestError`, the status counters and the log lines.
pub trait Poller: Send + Sync + 'static {
    /// Most names in one request.
    const BATCH_MAX: usize;
    /// Most requests in one poll (splitting refused batches included).
    const REQUESTS_MAX: usize;
    /// The REST endpoint (for the log lines).
    fn endpoint(&self) -> &Endpoint;
    /// Poll period.
    fn every(&self) -> Duration;
    /// The poller waits (Upstox: for a new token).
    fn blocked(&self, _ctx: &Ctx) -> bool {
        false
    }
    /// The name requests use for the instrument `id` watched as `symbol`; `None` when the
    /// venue has none (a REST error for it, every poll).
    fn name(&self, id: InstrumentId, symbol: &str) -> Option<String>;
    /// Asks for `batch`.
    fn request(&self, connector: &Connector, ctx: &Ctx, batch: &[Want])
    -> impl Future<Output = Reply> + Send;
    /// The fields of `event=rest_symbol_refused` (after the event, before `retry_ms`).
    fn refused_fields(&self, w: &Want, status: u16, code: &str) -> String;
    /// The fields of `event=rest_symbol_accepted`.
    fn accepted_fields(&self, w: &Want) -> String;
    /// The fields of `event=rest_missing`.
    fn missing_fields(&self, w: &Want) -> String;
}

/// A name the venue refused: left out of the batches, asked for alone at `retry_at`.
#[derive(Clone, Debug)]
struct Refused {
    retry_at: tokio::time::Instant,
    backoff: Duration,
}

/// The instruments with open positions, as `(id, symbol)`.
async fn wanted(ctx: &Ctx) -> Vec<(InstrumentId, String)> {
    ctx.engine
        .inspect(|e, _| {
            let mut v: Vec<(InstrumentId, String)> = e
                .book()
                .iter()
                .filter(|(_, p)| !p.state.is_terminal())
                .map(|(_, p)| (p.instrument, e.cache().symbol(p.instrument).to_string()))
                .collect();
            v.sort();
            v.dedup();
            v
        })
        .await
        .unwrap_or_default()
}

/// Runs `venue`'s REST fallback until `stop` fires.
///
/// Per instrument: every polled instrument gets `FeedEvent::RestOk` (priced by this poll) or
/// `FeedEvent::RestError` (not priced: no name, missing from the answer, unreadable, refused,
/// or the request failed), so the engine can tell an instrument the venue never prices. An
/// error about one name never takes REST away from the others: a batch the venue refuses
/// whole for one of its names is halved until the offender is alone; the offender is reported
/// (`[FALLBACK] event=rest_symbol_refused`), left out of later batches, and asked for alone
/// again after [`REFUSED_RETRY_INITIAL`] (doubling up to [`REFUSED_RETRY_MAX`]). Every request
/// counts in `status.rest.polls`, every failed, refused or unreadable one in
/// `status.rest.errors`, and the breaker's state is `status.rest.breaker_open` (the
/// `tickguard_rest_*` metrics), for every venue.
pub async fn run<P: Poller>(venue: P, connector: Connector, ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(120));
    let mut rng = Rng::new(ctx.clock.now().as_nanos());
    let rest = &ctx.engine.status.rest;
    // Whether this outage's first answer was announced (with the address and how it was
    // resolved, so an operator sees REST working through a last-good address).
    let mut announced = false;
    // Names the venue refused, bounded by `REST_REFUSED_MAX` (at least every instrument the
    // cache can hold, so every offender is remembered).
    let mut refused: HashMap<String, Refused> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(venue.every()) => {}
        }
        if ctx.shared.live.load(Ordering::Relaxed) {
            announced = false;
            continue;
        }
        if venue.blocked(&ctx) {
            continue;
        }
        let wanted: Vec<(InstrumentId, String, Option<String>)> = wanted(&ctx)
            .await
            .into_iter()
            .map(|(id, symbol)| {
                let name = venue.name(id, &symbol);
                (id, symbol, name)
            })
            .collect();
        // Forget refusals of names no longer wanted.
        refused.retain(|n, _| wanted.iter().any(|(_, _, w)| w.as_ref() == Some(n)));
        let now = crate::bus::clock::mono();
        let mut unpriced: Vec<InstrumentId> = Vec::new();
        let mut due: Vec<Want> = Vec::new();
        let mut batched: Vec<Want> = Vec::new();
        for (id, symbol, name) in wanted {
            let Some(name) = name else {
                unpriced.push(id);
                continue;
            };
            match refused.get(&name) {
                Some(r) if now < r.retry_at => unpriced.push(id),
                Some(_) => due.push(Want { id, name, symbol }),
                None => batched.push(Want { id, name, symbol }),
            }
        }
        // Never priced by this source: no name, or refused by the venue and not yet due.
        for id in &unpriced {
            ctx.engine.feed(FeedEvent::RestError(*id)).await;
        }
        let open = !breaker.allow(ctx.clock.now());
        rest.breaker_open.store(open, Ordering::Relaxed);
        if (batched.is_empty() && due.is_empty()) || open {
            continue;
        }
        let total = batched.len() + due.len();
        let mut queue: VecDeque<Vec<Want>> =
            batched.chunks(P::BATCH_MAX.max(1)).map(<[Want]>::to_vec).collect();
        // Refused names due for another try go alone: they cannot fail anyone else's batch.
        queue.extend(due.into_iter().map(|w| vec![w]));
        let epoch = ctx.shared.epoch.load(Ordering::Relaxed);
        let t_poll = crate::bus::clock::mono();
        let mut requests = 0usize;
        let mut answered = 0usize;
        while let Some(batch) = queue.pop_front() {
            if requests >= P::REQUESTS_MAX {
                let left: usize = batch.len() + queue.iter().map(Vec::len).sum::<usize>();
                log::warn!(
                    "[FALLBACK] event=rest_error instruments={left} cause=\"{} requests this poll (splitting refused batches); the rest wait for the next poll\"",
                    P::REQUESTS_MAX
                );
                for w in batch.iter().chain(queue.iter().flatten()) {
                    ctx.engine.feed(FeedEvent::RestError(w.id)).await;
                }
                break;
            }
            requests += 1;
            let sent_at = ctx.clock.now();
            let t0 = crate::bus::clock::mono();
            rest.polls.fetch_add(1, Ordering::Relaxed);
            let reply = venue.request(&connector, &ctx, &batch).await;
            let ms = t0.elapsed().as_millis();
            match reply {
                Reply::Priced { prices, unreadable, addr, dns } => {
                    if ctx.shared.live.load(Ordering::Relaxed)
                        || ctx.shared.epoch.load(Ordering::Relaxed) != epoch
                    {
                        log::info!("[FALLBACK] event=rest_discarded reason=feed_returned time_ms={ms}");
                        break;
                    }
                    breaker.on_success();
                    if !announced {
                        announced = true;
                        log::info!(
                            "[FALLBACK] event=rest_polling host={} addr={addr} dns={dns} every_ms={} instruments={total} time_ms={ms}",
                            venue.endpoint().host,
                            venue.every().as_millis(),
                        );
                    }
                    let mut got: Vec<InstrumentId> = Vec::with_capacity(batch.len());
                    for (name, price) in &prices {
                        // Several instruments may share a name (a symbol and its key both
                        // registered).
                        for w in batch.iter().filter(|w| &w.name == name) {
                            let q = Quote {
                                bid: None,
                                ask: None,
                                last: Some(*price),
                                source: Source::Rest,
                                exch_ts: None,
                                dated: sent_at,
                            };
                            ctx.engine.ticks.push(Tick::new(w.id, q));
                            got.push(w.id);
                        }
                    }
                    if let Some(e) = unreadable {
                        rest.errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "[FALLBACK] event=rest_error cause=\"unreadable answer: {e}\" time_ms={ms}"
                        );
                    }
                    for w in &batch {
                        if got.contains(&w.id) {
                            answered += 1;
                            if refused.remove(&w.name).is_some() {
                                log::info!(
                                    "[FALLBACK] event=rest_symbol_accepted {}",
                                    venue.accepted_fields(w)
                                );
                            }
                            ctx.engine.feed(FeedEvent::RestOk(w.id)).await;
                        } else {
                            log::warn!("[FALLBACK] event=rest_missing {}", venue.missing_fields(w));
                            ctx.engine.feed(FeedEvent::RestError(w.id)).await;
                        }
                    }
                }
                Reply::Refused { status, code } if batch.len() > 1 => {
                    // The venue answered, so REST itself works: not a breaker failure.
                    breaker.on_success();
                    rest.errors.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "[FALLBACK] event=rest_batch_refused instruments={} http={status} code={code} time_ms={ms} (split to find the refused key)",
                        batch.len()
                    );
                    let (a, b) = batch.split_at(batch.len() / 2);
                    queue.push_front(b.to_vec());
                    queue.push_front(a.to_vec());
                }
                Reply::Refused { status, code } => {
                    breaker.on_success();
                    rest.errors.fetch_add(1, Ordering::Relaxed);
                    for w in &batch {
                        let backoff = match refused.get(&w.name) {
                            Some(r) => (r.backoff * 2).min(REFUSED_RETRY_MAX),
                            None => REFUSED_RETRY_INITIAL,
                        };
                        if refused.contains_key(&w.name) || refused.len() < crate::limits::REST_REFUSED_MAX {
                            refused.insert(
                                w.name.clone(),
                                Refused { retry_at: crate::bus::clock::mono() + backoff, backoff },
                            );
                        }
                        log::warn!(
                            "[FALLBACK] event=rest_symbol_refused {} retry_ms={} (left out of the batch; the other instruments keep REST)",
                            venue.refused_fields(w, status, &code),
                            backoff.as_millis()
                        );
                        ctx.engine.feed(FeedEvent::RestError(w.id)).await;
                    }
                }
                Reply::Failed(e) => {
                    rest.errors.fetch_add(1, Ordering::Relaxed);
                    let left: usize = batch.len() + queue.iter().map(Vec::len).sum::<usize>();
                    log::warn!(
                        "[FALLBACK] event=rest_error instruments={left} cause=\"{}\" time_ms={ms}",
                        e.to_string().replace('"', "'")
                    );
                    if e.counts_for_breaker() {
                        breaker.on_failure(ctx.clock.now(), &mut rng);
                    }
                    if let Some(wait) = e.hold_off() {
                        breaker.hold_off(ctx.clock.now(), wait);
                    }
                    for w in batch.iter().chain(queue.iter().flatten()) {
                        ctx.engine.feed(FeedEvent::RestError(w.id)).await;
                    }
                    break;
                }
                Reply::Blocked => break,
            }
        }
        rest.breaker_open.store(!breaker.allow(ctx.clock.now()), Ordering::Relaxed);
        log::debug!(
            "[FALLBACK] event=rest_poll instruments={total} answered={answered} requests={requests} time_ms={}",
            t_poll.elapsed().as_millis()
        );
    }
}

// ----- Binance's last-price request -----------------------------------------------------------

/// Binance's REST fallback: `GET /api/v3/ticker/price` for every wanted symbol in one request.
pub struct BinancePoller {
    cfg: RestConfig,
}

impl BinancePoller {
    /// The poller for these settings.
    pub fn new(cfg: RestConfig) -> BinancePoller {
        BinancePoller { cfg }
    }
}

impl Poller for BinancePoller {
    const BATCH_MAX: usize = usize::MAX;
    const REQUESTS_MAX: usize = SPLIT_REQUESTS_MAX;

    fn endpoint(&self) -> &Endpoint {
        &self.cfg.endpoint
    }

    fn every(&self) -> Duration {
        self.cfg.every
    }

    fn name(&self, _id: InstrumentId, symbol: &str) -> Option<String> {
        Some(symbol.to_string())
    }

    async fn request(&self, connector: &Connector, _ctx: &Ctx, batch: &[Want]) -> Reply {
        let symbols: Vec<&str> = batch.iter().map(|w| w.name.as_str()).collect();
        let path = price_path(&self.cfg.endpoint.path, &symbols);
        let req = Req {
            method: "GET",
            path: &path,
            headers: &[],
            body: None,
            timeout: self.cfg.timeout,
            max_body: 256 * 1024,
        };
        match http::request(connector, &self.cfg.endpoint, req).await {
            Ok(ans) if ans.status == 200 => {
                let mut prices = Vec::with_capacity(batch.len());
                let parsed = parse_prices(&ans.body, |sym, price| {
                    if let Some(w) = batch.iter().find(|w| w.name.as_bytes() == sym) {
                        prices.push((w.name.clone(), price));
                    }
                });
                Reply::Priced {
                    prices,
                    unreadable: parsed.err(),
                    addr: ans.addr.to_string(),
                    dns: ans.dns.label().to_string(),
                }
            }
            Ok(ans) if ans.status == 429 || ans.status == 418 => Reply::Failed(PollError::RateLimited {
                status: ans.status,
                wait: Duration::from_secs(ans.retry_after.unwrap_or(60).clamp(1, 3600)),
            }),
            Ok(ans)
                if ans.status == 400
                    && error_code(&ans.body).is_some_and(|c| SYMBOL_ERROR_CODES.contains(&c)) =>
            {
                Reply::Refused { status: 400, code: error_code(&ans.body).unwrap_or(0).to_string() }
            }
            Ok(ans) => Reply::Failed(PollError::Status(ans.status)),
            Err(e) => Reply::Failed(PollError::Http(e)),
        }
    }

    fn refused_fields(&self, w: &Want, _status: u16, code: &str) -> String {
        format!("symbol={} code={code}", w.symbol)
    }

    fn accepted_fields(&self, w: &Want) -> String {
        format!("symbol={} (the venue prices it again)", w.symbol)
    }

    fn missing_fields(&self, w: &Want) -> String {
        format!("symbol={}", w.symbol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_answers() {
        assert_eq!(price_path("/", &["BTCUSDT"]), "/api/v3/ticker/price?symbol=BTCUSDT");
        assert_eq!(price_path("/x/", &["A", "B"]), "/x/api/v3/ticker/price?symbols=%5B%22A%22,%22B%22%5D");
        let mut v = Vec::new();
        parse_prices(
            br#" [{"symbol":"A","price":"1.50"},{"symbol":"B","price":"bad"},{"symbol":"C","price":"2"}]"#,
            |s, p| v.push((s.to_vec(), p)),
        )
        .expect("array");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0], (b"A".to_vec(), Price::parse("1.5").expect("valid")));
        let mut n = 0;
        parse_prices(br#"{"symbol":"A","price":"575.00000000"}"#, |_, _| n += 1).expect("object");
        assert_eq!(n, 1);
        assert!(parse_prices(b"<html>", |_, _| {}).is_err());
    }

    #[test]
    fn zero_is_a_zero_price_and_unreadable_is_no_price() {
        // Binance writes 0 for what it has no price for; the engine drops a zero price for
        // that instrument only, so the parser hands it on as zero (never as an error that
        // would lose the other instruments of the answer). An unreadable price is no price,
        // never zero.
        let mut v = Vec::new();
        parse_prices(
            br#"[{"symbol":"A","price":"0.00000000"},{"symbol":"B","price":"99999999999999999999.0"},{"symbol":"C","price":"3.10000000"}]"#,
            |s, p| v.push((s.to_vec(), p)),
        )
        .expect("array");
        assert_eq!(
            v,
            vec![(b"A".to_vec(), Price::ZERO), (b"C".to_vec(), Price::parse("3.1").expect("valid"))]
        );
    }

    #[test]
    fn symbol_errors_are_told_from_request_errors() {
        assert_eq!(error_code(br#"{"code":-1121,"msg":"Invalid symbol."}"#), Some(-1121));
        assert_eq!(error_code(br#" {"msg":"x","code":-1100}"#), Some(-1100));
        assert_eq!(error_code(b"<html>"), None);
        assert!(SYMBOL_ERROR_CODES.contains(&-1121));
        assert!(!SYMBOL_ERROR_CODES.contains(&-1003));
    }
}
