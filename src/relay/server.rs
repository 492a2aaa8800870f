//! The relay's servers and its thread: the clients' WebSocket server (`relay.listen`), the
//! health server (`relay.health_listen`: `/health`, `/ready`, `/metrics`), the hub, the
//! upstream and its backfill worker, all on one thread (`tg-relay`) with its own runtime, so
//! that nothing the relay does can slow the guard's engine.
//!
//! Connections: at most [`RELAY_CLIENTS`] in all and [`RELAY_CLIENTS_PER_PEER`] from one
//! address (more are closed at once and counted); the handshake checks `Host` and `Origin`
//! with the control plane's rule; the request must come within [`REQUEST_WAIT`] and fit in
//! [`RELAY_REQUEST_MAX`] bytes. A failure to bind disables the relay (the health server, when
//! it could bind, says why); the guard is never touched.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request as HttpRequest, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::hub::{self, ClientEntry, Cmd, Hub, Input};
use super::outbox::{Closing, Outbox};
use super::protocol::{self, RequestError};
use super::stats::RelayStats;
use super::upstream::{self, Breaker, RelayBinance};
use super::{Exchange, RelaySettings};
use crate::bus::EngineHandle;
use crate::bus::clock::{Clock, mono};
use crate::bus::queue::TickQueue;
use crate::bus::status::Status;
use crate::core::engine::FeedEvent;
use crate::feed::session::{self, Ctx, FeedShared, Timing};
use crate::feed::upstox::{InstrumentMap, UpstoxShared};
use crate::limits::{
    RELAY_CLIENTS, RELAY_CLIENTS_PER_PEER, RELAY_COMMAND_QUEUE, RELAY_INPUT_QUEUE, RELAY_REQUEST_MAX,
    RELAY_SYMBOLS,
};
use crate::net::http::Connector;

/// Time a client has for its handshake and its request.
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// Time one batch of messages may take to be written to a client before it counts as gone.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);
/// Messages written per batch (one flush each).
pub const BATCH: usize = 64;
/// Connections the health server holds at once.
pub const HEALTH_CONNECTIONS: usize = 16;

/// What the relay's thread hands back.
pub struct Relay {
    /// Counters and views (the health server, the status page).
    pub stats: Arc<RelayStats>,
    /// The thread.
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// Where the relay's upstream comes from.
pub enum Source {
    /// The real venue of `RelaySettings::exchange`, dialled through this connector.
    Venue(Connector),
    /// The demo's simulated venue.
    Sim(super::sim::SimSource),
}

/// Starts the relay on its own thread. Never fails the caller: a relay that cannot start
/// says why in its stats (and the log) and leaves the guard alone.
pub fn start(cfg: RelaySettings, source: Source, stop: watch::Receiver<bool>) -> Relay {
    let stats = Arc::new(RelayStats::default());
    let st = stats.clone();
    let thread = std::thread::Builder::new().name("tg-relay".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                fail(&st, format!("runtime: {e}"));
                return;
            }
        };
        rt.block_on(run(cfg, source, st, stop));
    });
    match thread {
        Ok(t) => Relay { stats, thread: Some(t) },
        Err(e) => {
            fail(&stats, format!("thread: {e}"));
            Relay { stats, thread: None }
        }
    }
}

fn fail(stats: &RelayStats, why: String) {
    log::error!("[RELAY] event=disabled reason=\"{}\" (the guard is not affected)", why.replace('"', "'"));
    stats.running.store(false, Ordering::Relaxed);
    if let Ok(mut f) = stats.failure.lock() {
        *f = Some(why);
    }
}

/// The relay: binds, then runs the hub, the upstream, the backfill worker and the servers
/// until `stop` fires; then says goodbye to every client within `shutdown_grace`.
pub async fn run(
    cfg: RelaySettings,
    source: Source,
    stats: Arc<RelayStats>,
    mut stop: watch::Receiver<bool>,
) {
    let health = match cfg.health_listen {
        Some(a) => match TcpListener::bind(a).await {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("[RELAY] event=health_disabled listen={a} error=\"{e}\"");
                None
            }
        },
        None => None,
    };
    let (health_stop_tx, health_stop) = watch::channel(false);
    let health_task = health.map(|l| {
        tokio::spawn(serve_health(l, stats.clone(), cfg.exchange.name(), cfg.stale_after, health_stop))
    });
    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            fail(&stats, format!("relay.listen {}: {e}", cfg.listen));
            // The health server stays up to say so, until the process stops.
            let _ = stop.changed().await;
            let _ = health_stop_tx.send(true);
            if let Some(t) = health_task {
                let _ = t.await;
            }
            log::info!("Server shutdown complete");
            return;
        }
    };
    stats.running.store(true, Ordering::Relaxed);
    log::info!(
        "[RELAY] event=listening listen={} health={} exchange={} intervals={}",
        cfg.listen,
        cfg.health_listen.map_or("off".to_string(), |a| a.to_string()),
        cfg.exchange.name(),
        cfg.intervals.iter().map(|i| i.name()).collect::<Vec<_>>().join(",")
    );

    // The hub and its inputs.
    let (in_tx, in_rx) = mpsc::channel::<Input>(RELAY_INPUT_QUEUE);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>(RELAY_COMMAND_QUEUE);
    let (add_tx, add_rx) = mpsc::channel(RELAY_SYMBOLS);
    let (job_tx, job_rx) = mpsc::channel(2 * RELAY_SYMBOLS * crate::limits::RELAY_INTERVALS);
    let (hub_stop_tx, hub_stop) = watch::channel(false);
    let clock = Clock::new();
    let breaker = Arc::new(Breaker::new(cfg.breaker_recovery, clock, stats.clone(), cfg.seed));
    let hub = Hub::new(cfg.clone(), stats.clone(), add_tx, job_tx);
    let hub_task = tokio::spawn(hub::run(hub, in_rx, cmd_rx, hub_stop));

    // The upstream: the feed's session driver with the relay's own index and sink.
    let shared = Arc::new(FeedShared::default());
    let (req_tx, mut req_rx) = mpsc::channel(64);
    let engine = EngineHandle {
        ticks: Arc::new(TickQueue::new(RELAY_SYMBOLS)),
        requests: req_tx,
        status: Arc::new(Status::default()),
    };
    let ctx = Ctx { shared: shared.clone(), engine, clock };
    // The driver reports a lost connection as a feed event: here it goes to the relay's hub,
    // never to the guard's engine.
    let down_tx = in_tx.clone();
    let down_stats = stats.clone();
    let events = tokio::spawn(async move {
        while let Some(r) = req_rx.recv().await {
            match r {
                crate::bus::Request::Feed(FeedEvent::Disconnected) => {
                    down_stats.upstream_live.store(0, Ordering::Relaxed);
                    upstream::deliver(&down_tx, &down_stats, Input::Down).await;
                }
                // Upstox's venue reports each acknowledged instrument (Binance's relay venue
                // reports `Up` itself); the hub takes the first as the upstream being up.
                crate::bus::Request::Feed(FeedEvent::Subscribed(_)) => {
                    upstream::deliver(&down_tx, &down_stats, Input::Up).await;
                }
                _ => {}
            }
        }
    });
    let timing = Timing {
        silence_timeout: cfg.silence_timeout,
        reconnect_initial: cfg.reconnect_initial,
        reconnect_max: cfg.reconnect_max,
        jitter: 0.5,
        connect_timeout: Duration::from_secs(10),
        control_spacing: Duration::from_millis(250),
        max_lifetime: Some(Duration::from_secs(23 * 3600 + 30 * 60)),
        seed: cfg.seed,
    };
    let (up_stop_tx, up_stop) = watch::channel(false);
    let ticks = ctx.engine.ticks.clone();
    let mut tasks = vec![events];
    match (source, cfg.exchange) {
        (Source::Sim(sim), _) => {
            let names = sim.names.iter().map(|(n, _)| n.clone()).collect();
            tasks.push(tokio::spawn(super::sim::run(
                sim,
                add_rx,
                in_tx.clone(),
                stats.clone(),
                up_stop.clone(),
            )));
            tasks.push(tokio::spawn(super::sim::run_backfill(
                names,
                job_rx,
                in_tx.clone(),
                stats.clone(),
                up_stop,
            )));
        }
        (Source::Venue(connector), Exchange::Binance | Exchange::Sim) => {
            let venue = Arc::new(RelayBinance {
                endpoint: cfg.ws.clone(),
                intervals: cfg.intervals.clone(),
                timing,
                hub: in_tx.clone(),
                stats: stats.clone(),
                breaker: breaker.clone(),
            });
            tasks.push(tokio::spawn(session::run(venue, connector.clone(), ctx, add_rx, up_stop.clone())));
            tasks.push(tokio::spawn(upstream::run_backfill(
                upstream::RestSource::Binance,
                connector,
                cfg.rest.clone(),
                job_rx,
                in_tx.clone(),
                breaker.clone(),
                stats.clone(),
                up_stop,
            )));
        }
        (Source::Venue(connector), Exchange::Upstox) => {
            // The guard's Upstox venue on the relay's own connection, token and tick queue.
            let map = Arc::new(InstrumentMap::new(cfg.instrument_keys.clone()));
            let token_file = cfg.token_file.clone().unwrap_or_default();
            let ux = Arc::new(UpstoxShared::with_map(token_file.clone(), map.clone()));
            ux.set_reader(cfg.read_token);
            let ucfg = super::upstox::session_config(&cfg);
            let venue = Arc::new(crate::feed::upstox::UpstoxFeed::new(ucfg, ux).tagged("[RELAY]"));
            tasks.push(tokio::spawn(session::run(venue, connector.clone(), ctx, add_rx, up_stop.clone())));
            tasks.push(tokio::spawn(super::upstox::run_ticks(
                ticks,
                in_tx.clone(),
                stats.clone(),
                up_stop.clone(),
            )));
            let rest = super::upstox::UpstoxRest { token_file, read_token: cfg.read_token, map };
            tasks.push(tokio::spawn(upstream::run_backfill(
                upstream::RestSource::Upstox(rest),
                connector,
                cfg.rest.clone(),
                job_rx,
                in_tx.clone(),
                breaker.clone(),
                stats.clone(),
                up_stop,
            )));
        }
    }

    // Clients.
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let next_id = Arc::new(AtomicU64::new(1));
    let conns = Arc::new(tokio::sync::Semaphore::new(RELAY_CLIENTS));
    let mut gauge = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = gauge.tick() => breaker.refresh(),
            a = listener.accept() => {
                let Ok((sock, peer)) = a else { continue };
                let Ok(permit) = conns.clone().try_acquire_owned() else {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let ip = peer.ip().to_canonical();
                let admitted = {
                    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                    let n = p.entry(ip).or_insert(0);
                    if *n >= RELAY_CLIENTS_PER_PEER { false } else { *n += 1; true }
                };
                if !admitted {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let (cfg, stats, cmd_tx, peers) = (cfg.clone(), stats.clone(), cmd_tx.clone(), peers.clone());
                tokio::spawn(async move {
                    client(sock, peer, id, &cfg, &stats, &cmd_tx).await;
                    let _ = cmd_tx.send(Cmd::Leave { id }).await;
                    let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = p.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            p.remove(&ip);
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
    // Graceful stop: no new clients; each one gets what it holds, its cursor and a close
    // frame, within the grace.
    drop(listener);
    let _ = up_stop_tx.send(true);
    let _ = hub_stop_tx.send(true);
    let _ = hub_task.await;
    let deadline = mono() + cfg.shutdown_grace;
    while conns.available_permits() < RELAY_CLIENTS && mono() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = RELAY_CLIENTS - conns.available_permits();
    for t in tasks {
        t.abort();
    }
    let _ = health_stop_tx.send(true);
    if let Some(t) = health_task {
        let _ = t.await;
    }
    stats.running.store(false, Ordering::Relaxed);
    log::info!("[RELAY] event=stopped clients_left={left}");
    log::info!("Server shutdown complete");
}

/// Sends a refused request's `error` and the close frame 1008 (bounded by [`WRITE_WAIT`]).
async fn refuse_and_close<S>(tx: &mut S, error: Message)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let _ = tokio::time::timeout(WRITE_WAIT, async {
        let _ = tx.send(error).await;
        let close = CloseFrame { code: CloseCode::Policy, reason: "bad request".into() };
        let _ = tx.send(Message::Close(Some(close))).await;
    })
    .await;
}

/// The close frame of a client being let go: its cursor when it fits (a close reason holds
/// 123 bytes), else a pointer to the `bye` message that carries it.
fn close_frame(code: CloseCode, cursor: &str) -> CloseFrame {
    let reason = if cursor.len() + 12 <= 123 {
        format!("resume_from={cursor}")
    } else {
        "resume_from: see the bye message".to_string()
    };
    CloseFrame { code, reason: Utf8Bytes::from(reason) }
}

async fn client(
    sock: TcpStream,
    peer: SocketAddr,
    id: u64,
    cfg: &RelaySettings,
    stats_arc: &Arc<RelayStats>,
    cmds: &mpsc::Sender<Cmd>,
) {
    let stats: &RelayStats = stats_arc;
    let _ = sock.set_nodelay(true);
    let rule = cfg.origin_rule.clone();
    // tungstenite's callback type fixes the error response's type (an http::Response).
    #[allow(clippy::result_large_err)]
    let check = move |req: &WsRequest, resp: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
        match &rule {
            Some(r) if !r(h("host"), h("origin")) => {
                let mut e = ErrorResponse::new(Some("Host or Origin refused".into()));
                *e.status_mut() = hyper::StatusCode::FORBIDDEN;
                Err(e)
            }
            _ => Ok(resp),
        }
    };
    // Clients only send their request (at most RELAY_REQUEST_MAX): a small read buffer
    // (tungstenite's default of 128 KiB, zero-filled and resident, was 25 MiB at 200 clients
    // in scripts/bench-relay).
    let wcfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .max_message_size(Some(RELAY_REQUEST_MAX))
        .max_frame_size(Some(RELAY_REQUEST_MAX))
        .max_write_buffer_size(4 << 20);
    let ws = match tokio::time::timeout(
        REQUEST_WAIT,
        tokio_tungstenite::accept_hdr_async_with_config(sock, check, Some(wcfg)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        _ => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let epoch = stats.epoch.load(Ordering::Relaxed);
    let refuse = |e: RequestError| {
        stats.bad_requests.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "[RELAY] event=request_refused peer={peer} field={} error=\"{}\"",
            e.field,
            e.problem.replace('"', "'")
        );
        Message::text(protocol::error(epoch, &e))
    };
    // The request: the first text frame.
    let first = tokio::time::timeout(REQUEST_WAIT, async {
        loop {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t),
                Some(Ok(Message::Binary(_))) => {
                    return Err(RequestError {
                        field: "request",
                        problem: "must be a text frame of JSON".into(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    return Err(RequestError { field: "request", problem: format!("unreadable: {e}") });
                }
                None => {
                    return Err(RequestError { field: "request", problem: "closed before a request".into() });
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(RequestError { field: "request", problem: format!("none within {} s", REQUEST_WAIT.as_secs()) })
    });
    let req = first.and_then(|t| protocol::parse_request(t.as_bytes(), cfg.exchange, &cfg.intervals));
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            refuse_and_close(&mut tx, refuse(e)).await;
            return;
        }
    };
    let outbox =
        Arc::new(Outbox::new(req.symbols.len(), cfg.closed_queue_max, cfg.open_queue_max, stats_arc.clone()));
    let (reply_tx, reply_rx) = oneshot::channel();
    let names = req.symbols.clone();
    let entry = ClientEntry { id, outbox: outbox.clone(), peer, since: mono() };
    if cmds.send(Cmd::Join { client: entry, req, reply: reply_tx }).await.is_err() {
        return;
    }
    match reply_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            refuse_and_close(&mut tx, refuse(e)).await;
            return;
        }
        Err(_) => return,
    }
    stats.clients_total.fetch_add(1, Ordering::Relaxed);
    // The snapshot is already in the outbox: it is written before the next frame is read.
    let mut cursor: Vec<Option<i64>> = vec![None; names.len()];
    let mut batch = Vec::with_capacity(BATCH);
    let mut delivered = 0u64;
    let ending = loop {
        batch.clear();
        if let Some(why) = outbox.take(&mut batch, BATCH) {
            break Some(why);
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            let wrote = tokio::time::timeout(WRITE_WAIT, async {
                for o in batch.drain(..) {
                    if let Some((slot, t)) = o.cursor {
                        if let Some(c) = cursor.get_mut(usize::from(slot)) {
                            *c = Some(c.map_or(t, |x| x.max(t)));
                        }
                    }
                    if let Some(r) = o.recv {
                        stats.latency.observe(r.elapsed());
                    }
                    tx.feed(Message::Text(o.msg)).await?;
                }
                tx.flush().await
            })
            .await;
            match wrote {
                Ok(Ok(())) => {
                    delivered += n;
                    stats.delivered.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                // The client went away: it left, it is not slow.
                Ok(Err(_)) => break None,
                // A client that cannot take a batch within the bound is stuck: slow.
                Err(_) => break Some(Closing::Overflowed),
            }
        }
        tokio::select! {
            // Woken: let the hub finish its round first, so one flush carries what it queued
            // (a write per message per client was most of the relay's CPU in bench-relay).
            _ = outbox.wait() => tokio::task::yield_now().await,
            m = rx.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    let Some(why) = ending else {
        log::info!("[RELAY] event=client_left peer={peer} delivered={delivered}");
        return;
    };
    let pairs: Vec<(&str, i64)> =
        names.iter().zip(cursor.iter()).filter_map(|(s, c)| c.map(|t| (s.as_str(), t))).collect();
    let compact = {
        let mut s = String::from("{");
        for (n, (k, t)) in pairs.iter().enumerate() {
            if n > 0 {
                s.push(',');
            }
            s.push_str(&format!("\"{k}\":{t}"));
        }
        s.push('}');
        s
    };
    let (reason, code) = match why {
        Closing::Overflowed => {
            stats.slow_closed.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "[RELAY] event=slow_client_closed peer={peer} delivered={delivered} resume_from={compact}"
            );
            ("slow_consumer", CloseCode::Policy)
        }
        Closing::Shutdown => ("shutdown", CloseCode::Away),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = tx.send(Message::text(protocol::bye(epoch, reason, &pairs))).await;
        let _ = tx.send(Message::Close(Some(close_frame(code, &compact)))).await;
        // Wait (bounded) for the client's close reply so the frame is not lost to a reset.
        for _ in 0..64 {
            match rx.next().await {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

async fn serve_health(
    listener: TcpListener,
    stats: Arc<RelayStats>,
    exchange: &'static str,
    stale_after: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HEALTH_CONNECTIONS));
    loop {
        let (sock, _) = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: HttpRequest<Incoming>| {
                let stats = stats.clone();
                async move {
                    Ok::<_, Infallible>(health_answer(
                        &stats,
                        exchange,
                        stale_after,
                        req.method(),
                        req.uri().path(),
                    ))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(sock), svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            drop(permit);
        });
    }
}

fn health_answer(
    stats: &RelayStats,
    exchange: &str,
    stale_after: Duration,
    method: &hyper::Method,
    path: &str,
) -> Response<Full<Bytes>> {
    let json = |code: u16, body: String| {
        Response::builder()
            .status(code)
            .header("Content-Type", "application/json")
            .header("Cache-Control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return json(405, "{\"error\":\"method not allowed: GET\"}".into());
    }
    let running = stats.running.load(Ordering::Relaxed);
    let failure = stats.failure.lock().ok().and_then(|f| f.clone());
    let live = stats.upstream_live.load(Ordering::Relaxed) > 0;
    match path {
        "/health" => {
            let body = serde_json::json!({
                "status": if running { "healthy" } else { "unhealthy" },
                "relay": if running { "running" } else { "disabled" },
                "reason": failure,
                "exchange": exchange,
                "upstream": if live { "live" } else { "stale" },
                "clients": stats.clients.load(Ordering::Relaxed),
                "epoch": stats.epoch.load(Ordering::Relaxed),
            });
            json(if running { 200 } else { 503 }, body.to_string())
        }
        "/ready" => {
            let ms = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
            match stats.ready(ms) {
                Ok(()) => json(200, serde_json::json!({"status": "ready", "exchange": exchange}).to_string()),
                Err(why) => json(503, serde_json::json!({"status": "not_ready", "reason": why}).to_string()),
            }
        }
        "/metrics" => Response::builder()
            .status(200)
            .header("Content-Type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(stats.render(exchange))))
            .unwrap_or_default(),
        _ => json(404, "{\"error\":\"not found: /health, /ready, /metrics\"}".into()),
    }
}
