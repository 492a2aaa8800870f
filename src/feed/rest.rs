//! The REST last-price fallback (L2 of the ladder).
//!
//! While the feed is down, one request every `feed.rest_poll_s` fetches the last price of
//! every instrument with an open position (`GET /api/v3/ticker/price`, one request for all:
//! weight 4, far inside Binance's budget) over the same DNS-fallback / TLS stack, so a dead
//! WebSocket host or a DNS outage (last-good addresses) still leaves prices. Answers are
//! dated at the request's **send** time; an answer still in flight when the feed returns is
//! discarded. 429 / 418 and `Retry-After` hold the poller off through a circuit breaker.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

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

/// A symbol the venue refused: left out of the batch, asked for alone at `next_try`.
#[derive(Clone, Debug)]
struct Refused {
    next_try: tokio::time::Instant,
    backoff: Duration,
}

/// What became of one poll's requests.
enum ChunkResult {
    /// HTTP 200: the prices read.
    Priced,
    /// The venue refused a symbol of a one-symbol chunk (code).
    Refused(i64),
    /// A batch refused for one of its symbols: split it.
    Split,
    /// Rate limited or failed: the cause (the rest of the poll is abandoned).
    Failed(String),
    /// The feed returned while the answer was in flight: discard the whole poll.
    Discarded,
}

/// Runs the poller until `stop` fires.
///
/// Per instrument: an error about one symbol never takes REST away from the others. A batch
/// that Binance refuses whole for one of its symbols (`-1121`) is halved until the offender is
/// alone; the offender is reported (`FeedEvent::RestError`, `[FALLBACK]
/// event=rest_symbol_refused`), left out of later batches, and asked for alone again after
/// [`REFUSED_RETRY_INITIAL`] (doubling up to [`REFUSED_RETRY_MAX`]); the rest are priced.
pub async fn run(cfg: RestConfig, connector: Connector, ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(120));
    let mut rng = Rng::new(ctx.clock.now().as_nanos());
    // Whether this outage's first answer was announced (with the address and how it was
    // resolved, so an operator sees REST working through a last-good address).
    let mut announced = false;
    // Symbols the venue refused, bounded by `REST_REFUSED_MAX` (at least every instrument
    // the cache can hold, so every offender is remembered).
    let mut refused: HashMap<String, Refused> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(cfg.every) => {}
        }
        if ctx.shared.live.load(Ordering::Relaxed) {
            announced = false;
            continue;
        }
        let wanted: Vec<(InstrumentId, String)> = ctx
            .engine
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
            .unwrap_or_default();
        // Forget refusals of symbols no longer wanted.
        refused.retain(|s, _| wanted.iter().any(|(_, w)| w == s));
        if wanted.is_empty() {
            continue;
        }
        let open = !breaker.allow(ctx.clock.now());
        ctx.engine.status.rest.breaker_open.store(open, Ordering::Relaxed);
        if open {
            continue;
        }
        let now = tokio::time::Instant::now();
        // The batch: every wanted symbol not refused. Refused symbols whose time has come are
        // asked for alone; the others are reported as REST errors without a request.
        let mut batch: Vec<usize> = Vec::with_capacity(wanted.len());
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        let mut skipped: Vec<usize> = Vec::new();
        for (i, (_, sym)) in wanted.iter().enumerate() {
            match refused.get(sym) {
                None => batch.push(i),
                Some(r) if r.next_try <= now => chunks.push(vec![i]),
                Some(_) => skipped.push(i),
            }
        }
        if !batch.is_empty() {
            chunks.push(batch);
        }
        let epoch = ctx.shared.epoch.load(Ordering::Relaxed);
        let t_poll = tokio::time::Instant::now();
        let mut got: Vec<InstrumentId> = Vec::with_capacity(wanted.len());
        let mut failed_idx: Vec<usize> = skipped;
        let mut failure: Option<String> = None;
        let mut discarded = false;
        let mut requests = 0usize;
        while let Some(chunk) = chunks.pop() {
            if requests >= SPLIT_REQUESTS_MAX || failure.is_some() {
                failed_idx.extend(chunk);
                continue;
            }
            requests += 1;
            let symbols: Vec<&str> = chunk.iter().map(|&i| wanted[i].1.as_str()).collect();
            let path = price_path(&cfg.endpoint.path, &symbols);
            let sent_at = ctx.clock.now();
            let t0 = tokio::time::Instant::now();
            ctx.engine.status.rest.polls.fetch_add(1, Ordering::Relaxed);
            let req = Req {
                method: "GET",
                path: &path,
                headers: &[],
                body: None,
                timeout: cfg.timeout,
                max_body: 256 * 1024,
            };
            let result = http::request(&connector, &cfg.endpoint, req).await;
            let ms = t0.elapsed().as_millis();
            let outcome = match result {
                Ok(ans) if ans.status == 200 => {
                    if ctx.shared.live.load(Ordering::Relaxed)
                        || ctx.shared.epoch.load(Ordering::Relaxed) != epoch
                    {
                        log::info!("[FALLBACK] event=rest_discarded reason=feed_returned time_ms={ms}");
                        ChunkResult::Discarded
                    } else {
                        breaker.on_success();
                        if !announced {
                            announced = true;
                            log::info!(
                                "[FALLBACK] event=rest_polling host={} addr={} dns={} every_ms={} instruments={} time_ms={ms}",
                                cfg.endpoint.host,
                                ans.addr,
                                ans.dns.label(),
                                cfg.every.as_millis(),
                                wanted.len()
                            );
                        }
                        let parsed = parse_prices(&ans.body, |sym, price| {
                            if let Some(&i) = chunk.iter().find(|&&i| wanted[i].1.as_bytes() == sym) {
                                let id = wanted[i].0;
                                let q = Quote {
                                    bid: None,
                                    ask: None,
                                    last: Some(price),
                                    source: Source::Rest,
                                    exch_ts: None,
                                    dated: sent_at,
                                };
                                ctx.engine.ticks.push(Tick::new(id, q));
                                got.push(id);
                            }
                        });
                        if let Err(e) = parsed {
                            log::warn!(
                                "[FALLBACK] event=rest_error cause=\"unreadable answer: {e}\" time_ms={ms}"
                            );
                        }
                        if chunk.len() == 1 && refused.remove(&wanted[chunk[0]].1).is_some() {
                            log::info!(
                                "[FALLBACK] event=rest_symbol_accepted symbol={} (the venue prices it again)",
                                wanted[chunk[0]].1
                            );
                        }
                        ChunkResult::Priced
                    }
                }
                Ok(ans) if ans.status == 429 || ans.status == 418 => {
                    let wait = Duration::from_secs(ans.retry_after.unwrap_or(60).clamp(1, 3600));
                    breaker.hold_off(ctx.clock.now(), wait);
                    ChunkResult::Failed(format!(
                        "HTTP {} (rate limited; holding off {} s)",
                        ans.status,
                        wait.as_secs()
                    ))
                }
                Ok(ans)
                    if ans.status == 400
                        && error_code(&ans.body).is_some_and(|c| SYMBOL_ERROR_CODES.contains(&c)) =>
                {
                    // The venue answered, so REST itself works: not a breaker failure.
                    breaker.on_success();
                    let code = error_code(&ans.body).unwrap_or(0);
                    if chunk.len() == 1 { ChunkResult::Refused(code) } else { ChunkResult::Split }
                }
                Ok(ans) => {
                    breaker.on_failure(ctx.clock.now(), &mut rng);
                    ChunkResult::Failed(format!("HTTP {}", ans.status))
                }
                Err(e) => {
                    breaker.on_failure(ctx.clock.now(), &mut rng);
                    ChunkResult::Failed(e.to_string())
                }
            };
            match outcome {
                ChunkResult::Priced => {}
                ChunkResult::Discarded => {
                    discarded = true;
                    break;
                }
                ChunkResult::Split => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    chunks.push(b.to_vec());
                    chunks.push(a.to_vec());
                }
                ChunkResult::Refused(code) => {
                    let i = chunk[0];
                    let sym = &wanted[i].1;
                    let backoff = match refused.get(sym) {
                        Some(r) => (r.backoff * 2).min(REFUSED_RETRY_MAX),
                        None => REFUSED_RETRY_INITIAL,
                    };
                    if refused.contains_key(sym) || refused.len() < crate::limits::REST_REFUSED_MAX {
                        refused.insert(
                            sym.clone(),
                            Refused { next_try: tokio::time::Instant::now() + backoff, backoff },
                        );
                    }
                    log::warn!(
                        "[FALLBACK] event=rest_symbol_refused symbol={sym} code={code} retry_ms={} (left out of the batch; the other instruments keep REST)",
                        backoff.as_millis()
                    );
                    failed_idx.push(i);
                }
                ChunkResult::Failed(cause) => {
                    failed_idx.extend(chunk);
                    failure = Some(cause);
                }
            }
        }
        if discarded {
            continue;
        }
        let ms = t_poll.elapsed().as_millis();
        if let Some(cause) = &failure {
            ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "[FALLBACK] event=rest_error instruments={} cause=\"{}\" time_ms={ms}",
                failed_idx.len(),
                cause.replace('"', "'")
            );
        }
        for (i, (id, sym)) in wanted.iter().enumerate() {
            if got.contains(id) {
                ctx.engine.feed(FeedEvent::RestOk(*id)).await;
            } else {
                if failure.is_none() && !failed_idx.contains(&i) {
                    log::warn!("[FALLBACK] event=rest_missing symbol={sym}");
                }
                ctx.engine.feed(FeedEvent::RestError(*id)).await;
            }
        }
        log::debug!(
            "[FALLBACK] event=rest_poll instruments={} answered={} requests={requests} time_ms={ms}",
            wanted.len(),
            got.len()
        );
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
