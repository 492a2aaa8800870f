//! The REST last-price fallback (L2 of the ladder).
//!
//! While the feed is down, one request every `feed.rest_poll_s` fetches the last price of
//! every instrument with an open position (`GET /api/v3/ticker/price`, one request for all:
//! weight 4, far inside Binance's budget) over the same DNS-fallback / TLS stack, so a dead
//! WebSocket host or a DNS outage (last-good addresses) still leaves prices. Answers are
//! dated at the request's **send** time; an answer still in flight when the feed returns is
//! discarded. 429 / 418 and `Retry-After` hold the poller off through a circuit breaker.

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

/// Runs the poller until `stop` fires.
pub async fn run(cfg: RestConfig, connector: Connector, ctx: Ctx, mut stop: watch::Receiver<bool>) {
    let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(120));
    let mut rng = Rng::new(ctx.clock.now().as_nanos());
    // Whether this outage's first answer was announced (with the address and how it was
    // resolved, so an operator sees REST working through a last-good address).
    let mut announced = false;
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
        if wanted.is_empty() {
            continue;
        }
        let open = !breaker.allow(ctx.clock.now());
        ctx.engine.status.rest.breaker_open.store(open, Ordering::Relaxed);
        if open {
            continue;
        }
        let symbols: Vec<&str> = wanted.iter().map(|(_, s)| s.as_str()).collect();
        let path = price_path(&cfg.endpoint.path, &symbols);
        let epoch = ctx.shared.epoch.load(Ordering::Relaxed);
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
        let failed = match result {
            Ok(ans) if ans.status == 200 => {
                if ctx.shared.live.load(Ordering::Relaxed)
                    || ctx.shared.epoch.load(Ordering::Relaxed) != epoch
                {
                    log::info!("[FALLBACK] event=rest_discarded reason=feed_returned time_ms={ms}");
                    continue;
                }
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
                let mut got: Vec<InstrumentId> = Vec::with_capacity(wanted.len());
                let parsed = parse_prices(&ans.body, |sym, price| {
                    if let Some((id, _)) = wanted.iter().find(|(_, s)| s.as_bytes() == sym) {
                        let q = Quote {
                            bid: None,
                            ask: None,
                            last: Some(price),
                            source: Source::Rest,
                            exch_ts: None,
                            dated: sent_at,
                        };
                        ctx.engine.ticks.push(Tick::new(*id, q));
                        got.push(*id);
                    }
                });
                if let Err(e) = parsed {
                    log::warn!("[FALLBACK] event=rest_error cause=\"unreadable answer: {e}\" time_ms={ms}");
                }
                for (id, sym) in &wanted {
                    if got.contains(id) {
                        ctx.engine.feed(FeedEvent::RestOk(*id)).await;
                    } else {
                        log::warn!("[FALLBACK] event=rest_missing symbol={sym}");
                        ctx.engine.feed(FeedEvent::RestError(*id)).await;
                    }
                }
                log::debug!(
                    "[FALLBACK] event=rest_poll instruments={} answered={} time_ms={ms}",
                    wanted.len(),
                    got.len()
                );
                None
            }
            Ok(ans) if ans.status == 429 || ans.status == 418 => {
                let wait = Duration::from_secs(ans.retry_after.unwrap_or(60).clamp(1, 3600));
                breaker.hold_off(ctx.clock.now(), wait);
                Some(format!("HTTP {} (rate limited; holding off {} s)", ans.status, wait.as_secs()))
            }
            Ok(ans) => {
                breaker.on_failure(ctx.clock.now(), &mut rng);
                Some(format!("HTTP {}", ans.status))
            }
            Err(e) => {
                breaker.on_failure(ctx.clock.now(), &mut rng);
                Some(e.to_string())
            }
        };
        if let Some(cause) = failed {
            ctx.engine.status.rest.errors.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "[FALLBACK] event=rest_error instruments={} cause=\"{}\" time_ms={ms}",
                wanted.len(),
                cause.replace('"', "'")
            );
            for (id, _) in &wanted {
                ctx.engine.feed(FeedEvent::RestError(*id)).await;
            }
        }
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
}
