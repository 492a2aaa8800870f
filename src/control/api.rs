//! The HTTP API and the status page, written against embedded-svc's HTTP server traits: one
//! [`Api`] value is a [`Handler`] for any [`Connection`].
//!
//! Checks run in this order, so scripts and tests can rely on the status: `404` (no such
//! path), `405` (method), `401` (credentials), `403` (another page's `Origin`), `413` (body
//! over [`MAX_BODY`]), `400` (not JSON), then each endpoint's own (`404` unknown symbol or
//! id, `400` naming the bad field, `409`, `507`). See `docs/api.md`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::auth::{self, Auth, Credential};
use super::bridge::{Bridge, BridgeError};
use super::metrics;
use super::server::HttpStats;
use super::views::{self, Parts, PosSnap, Snap};
use super::watch::WatchState;
use super::{Journal, StoreProbe};
use crate::core::CoreError;
use crate::core::book::{PosState, PositionSpec};
use crate::core::engine::{CloseTarget, Command, Reply as EngineReply};
use crate::core::price::{Price, Qty, SCALE};
use crate::core::spec;
use crate::core::types::{CloseReason, PositionId, Symbol};
use crate::limits::{MAX_POSITIONS, SYMBOL_MAX};

/// Largest request body accepted (`413` beyond).
pub const MAX_BODY: usize = 16 * 1024;
/// `/health` answers `503` when the watcher's last look at the engine is older than this.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(2);
/// `/ready` is computed at most once per this period.
pub const READY_EVERY: Duration = Duration::from_secs(1);
/// How long an emergency close waits for its fill before answering `202`.
pub const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// The status page, embedded.
pub const PAGE: &str = include_str!("page.html");
/// The OpenAPI description the API is tested against.
pub const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// An answer before it is written.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// `Content-Type`.
    pub ctype: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// Headers of this answer (the server adds the common ones).
    pub headers: Vec<(&'static str, String)>,
}

/// The methods the API knows (anything else is answered `405` on a known path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
    /// `OPTIONS`.
    Options,
    /// Any other method.
    Other,
}

impl Method {
    /// The method of a request line.
    pub fn of(m: &hyper::Method) -> Method {
        match *m {
            hyper::Method::GET => Method::Get,
            hyper::Method::HEAD => Method::Head,
            hyper::Method::POST => Method::Post,
            hyper::Method::PUT => Method::Put,
            hyper::Method::PATCH => Method::Patch,
            hyper::Method::DELETE => Method::Delete,
            hyper::Method::OPTIONS => Method::Options,
            _ => Method::Other,
        }
    }
}

/// A request as the API sees it: its head; the body comes separately, read by the server
/// within its bounds.
#[derive(Debug)]
pub struct Req {
    /// The method.
    pub method: Method,
    /// The request target (path and query).
    pub target: String,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// Whether the request came over TLS.
    pub secure: bool,
    /// The client's address.
    pub peer: std::net::SocketAddr,
}

impl Req {
    /// A header's first value, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The path, without query.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }
}

/// A request that passed the checks that need no body: what the server does next.
#[derive(Debug)]
pub struct Ticket {
    route: Route,
    /// The request's credential.
    pub cred: Credential,
    /// Whether the body must be read (`POST`, `PATCH`, `PUT`).
    pub needs_body: bool,
    /// Whether the answer needs neither the engine nor the disk (answered on the server's
    /// own thread).
    pub inline: bool,
}

impl Answer {
    /// A JSON answer.
    pub fn json<T: Serialize>(status: u16, v: &T) -> Answer {
        let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{\"detail\":\"internal error\"}".to_vec());
        Answer { status, ctype: "application/json", body, headers: Vec::new() }
    }
    /// `{"detail": msg}` with this status.
    pub fn detail(status: u16, msg: impl Into<String>) -> Answer {
        Answer::json(status, &json!({ "detail": msg.into() }))
    }
    fn field(field: &str, msg: impl std::fmt::Display) -> Answer {
        Answer::json(400, &json!({ "detail": format!("{field}: {msg}"), "field": field }))
    }
    /// Adds a header.
    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Answer {
        self.headers.push((k, v.into()));
        self
    }
    fn engine(e: BridgeError) -> Answer {
        Answer::detail(503, format!("{e}; the appliance may be overloaded or stopping"))
            .header("Retry-After", "1")
    }
}

/// The routes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Page,
    Health,
    Ready,
    Metrics,
    OpenApi,
    MonHealth,
    ConnHealth,
    MonStatus,
    EmergencyClose,
    Positions,
    Position(String),
    Resolve(String),
    ClosePosition(String),
    AlertsAck,
    Session,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Always open (page, liveness, readiness).
    Open,
    /// Open unless `api.protect_reads`.
    Read,
    /// Needs the bearer token or a session with its CSRF token.
    Mutation,
    /// The login itself (the token is in the body).
    Login,
    /// `/metrics`: open unless `api.protect_metrics` (so a Prometheus scrape keeps working
    /// when reads are protected by default on a LAN address).
    Metrics,
}

fn route(path: &str) -> Option<Route> {
    let p = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    Some(match p {
        "/" | "/index.html" => Route::Page,
        "/health" => Route::Health,
        "/ready" => Route::Ready,
        "/metrics" => Route::Metrics,
        "/api/v1/openapi.yaml" => Route::OpenApi,
        "/api/v1/monitoring/health" => Route::MonHealth,
        "/api/v1/monitoring/connection-health" => Route::ConnHealth,
        "/api/v1/monitoring/status" => Route::MonStatus,
        "/api/v1/monitoring/emergency-close-position" => Route::EmergencyClose,
        "/api/v1/positions" => Route::Positions,
        "/api/v1/alerts/ack" => Route::AlertsAck,
        "/api/v1/session" => Route::Session,
        _ => {
            let rest = p.strip_prefix("/api/v1/positions/")?;
            let mut parts = rest.split('/');
            let id = percent_decode(parts.next()?)?;
            match (parts.next(), parts.next()) {
                (None, _) => Route::Position(id),
                (Some("resolve"), None) => Route::Resolve(id),
                (Some("close"), None) => Route::ClosePosition(id),
                _ => return None,
            }
        }
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn allowed(r: &Route) -> &'static [Method] {
    use Method::*;
    match r {
        Route::Page | Route::Health | Route::Ready | Route::Metrics | Route::OpenApi => &[Get, Head],
        Route::MonHealth | Route::ConnHealth | Route::MonStatus => &[Get, Head],
        Route::EmergencyClose | Route::Resolve(_) | Route::ClosePosition(_) | Route::AlertsAck => &[Post],
        Route::Positions => &[Get, Head, Post],
        Route::Position(_) => &[Get, Head, Patch, Delete],
        Route::Session => &[Get, Head, Post, Delete],
    }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
        Method::Put => "PUT",
        Method::Options => "OPTIONS",
        Method::Other => "OTHER",
    }
}

fn access(r: &Route, m: Method) -> Access {
    match (r, m) {
        (Route::Page | Route::Health | Route::Ready, _) => Access::Open,
        (Route::Metrics, _) => Access::Metrics,
        (Route::Session, _) => Access::Login,
        (_, Method::Get | Method::Head) => Access::Read,
        _ => Access::Mutation,
    }
}

/// Everything the API serves from.
pub struct Api {
    bridge: Bridge,
    auth: Auth,
    protect_reads: bool,
    protect_metrics: bool,
    journal: Option<Arc<dyn Journal>>,
    store: StoreProbe,
    venue: &'static str,
    products: Mutex<BTreeMap<String, String>>,
    watch: Arc<WatchState>,
    product_sink: Option<super::ProductSink>,
    symbols: Option<super::SymbolGate>,
    side_rule: Option<crate::core::spec::SideRule>,
    http: OnceLock<Arc<HttpStats>>,
    started: Instant,
    ids: AtomicU64,
    csp: String,
    /// The last `/ready` answer and when it was computed: computed at most once a second.
    ready_cache: Mutex<Option<(Instant, Answer)>>,
    /// A configuration problem of the API's transport or token (loopback-only fallback).
    alarm: Option<String>,
    ready_every: Duration,
}

/// What [`Api::new`] needs.
pub struct ApiConfig {
    /// The engine.
    pub bridge: Bridge,
    /// The API token, if configured.
    pub token: Option<String>,
    /// `api.protect_reads`.
    pub protect_reads: bool,
    /// `api.protect_metrics`.
    pub protect_metrics: bool,
    /// The configuration alarm of [`super::ControlConfig::alarm`].
    pub alarm: Option<String>,
    /// How long a `/ready` answer is reused.
    pub ready_every: Duration,
    /// The journal, once the store provides one.
    pub journal: Option<Arc<dyn Journal>>,
    /// How `/ready` checks the store when there is no journal.
    pub store: StoreProbe,
    /// `feed.venue`.
    pub venue: &'static str,
    /// Shared with the watcher (close counters, notifier stats).
    pub watch: Arc<WatchState>,
    /// Where registrations' `product` goes (the Upstox broker).
    pub products: Option<super::ProductSink>,
    /// How registrations' symbols are checked at the door.
    pub symbols: Option<super::SymbolGate>,
    /// A side the broker cannot close, refused at the door ([`super::ControlConfig::side_rule`]).
    pub side_rule: Option<crate::core::spec::SideRule>,
}

impl Api {
    /// The API over `cfg`.
    pub fn new(cfg: ApiConfig) -> Api {
        Api {
            bridge: cfg.bridge,
            auth: Auth::new(cfg.token),
            protect_reads: cfg.protect_reads,
            protect_metrics: cfg.protect_metrics,
            journal: cfg.journal,
            store: cfg.store,
            venue: cfg.venue,
            products: Mutex::new(BTreeMap::new()),
            watch: cfg.watch,
            product_sink: cfg.products,
            symbols: cfg.symbols,
            side_rule: cfg.side_rule,
            http: OnceLock::new(),
            started: crate::bus::clock::mono_std(),
            ids: AtomicU64::new(0),
            csp: page_csp(PAGE),
            ready_cache: Mutex::new(None),
            alarm: cfg.alarm,
            ready_every: cfg.ready_every,
        }
    }

    /// Gives the API the server's counters (for `/metrics`).
    pub fn set_http_stats(&self, s: Arc<HttpStats>) {
        let _ = self.http.set(s);
    }

    /// The request's credential (bearer token, or session cookie with its CSRF token).
    pub fn credential(&self, req: &Req) -> Credential {
        self.auth.check(
            req.header("Authorization"),
            req.header("Cookie").and_then(|c| auth::session_cookie(c, req.secure)),
            req.header(auth::CSRF_HEADER),
        )
    }

    /// Whether the request carries a bearer token that is wrong (a guess).
    pub fn wrong_bearer(&self, req: &Req, cred: Credential) -> bool {
        cred != Credential::Bearer && req.header("Authorization").and_then(auth::bearer).is_some()
    }

    /// The checks that need no body, in the documented order: `404`, `405`, `401`, `403`,
    /// `413` (from `Content-Length`; the body is then never read).
    pub fn check(&self, req: &Req, cred: Credential) -> Result<Ticket, Answer> {
        let method = req.method;
        let Some(r) = route(req.path()) else {
            return Err(Answer::detail(404, "Not Found"));
        };
        let ok_methods = allowed(&r);
        if !ok_methods.contains(&method) {
            let allow: Vec<&str> = ok_methods.iter().map(|m| method_name(*m)).collect();
            return Err(Answer::detail(405, "Method Not Allowed").header("Allow", allow.join(", ")));
        }
        let secure = req.secure;
        let acc = access(&r, method);
        let unauthorized = || {
            let why = if self.auth.has_token() {
                "missing or wrong credentials: send Authorization: Bearer <token>, or log in on the status page"
            } else {
                "no api.token_file is configured: the API is read-only"
            };
            Answer::detail(401, why).header("WWW-Authenticate", "Bearer realm=\"tickguard\"")
        };
        match acc {
            Access::Mutation if !matches!(cred, Credential::Bearer | Credential::Session) => {
                return Err(unauthorized());
            }
            Access::Read if self.protect_reads && cred == Credential::None => return Err(unauthorized()),
            Access::Metrics if self.protect_metrics && cred == Credential::None => return Err(unauthorized()),
            _ => {}
        }
        if !auth::same_origin(req.header("Origin"), req.header("Host"), secure) {
            return Err(Answer::detail(403, "cross-origin request refused: Origin differs from Host"));
        }
        let len = req.header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0);
        if len > MAX_BODY as u64 {
            return Err(Answer::detail(413, format!("request body over {MAX_BODY} bytes")));
        }
        let needs_body = matches!(method, Method::Post | Method::Patch | Method::Put);
        // Answered without the engine or the disk: the page, the description, the session.
        let inline = matches!(r, Route::Page | Route::OpenApi | Route::Session);
        Ok(Ticket { route: r, cred, needs_body, inline })
    }

    /// The answer to a checked request and its body (`None` when the method has none).
    /// May wait for the engine or the disk (bounded): the server runs it off its own thread
    /// unless [`Ticket::inline`].
    pub fn respond(&self, req: &Req, t: Ticket, body: Option<Vec<u8>>) -> Answer {
        let method = req.method;
        let secure = req.secure;
        let query = req.target.split_once('?').map(|(_, q)| q.to_string());
        let r = t.route;
        let json_body = |b: &Option<Vec<u8>>| -> Result<Map<String, Value>, Answer> {
            let bytes = b.as_deref().unwrap_or(&[]);
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Map::new());
            }
            match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(Answer::detail(400, "invalid JSON: the body must be a JSON object")),
                Err(e) => Err(Answer::detail(400, format!("invalid JSON: {e}"))),
            }
        };
        match (r, method) {
            (Route::Page, _) => self.page(),
            (Route::Health, _) => self.health(false),
            (Route::MonHealth, _) => self.health(true),
            (Route::Ready, _) => self.ready(),
            (Route::Metrics, _) => self.metrics(),
            (Route::OpenApi, _) => Answer {
                status: 200,
                ctype: "application/yaml",
                body: OPENAPI.as_bytes().to_vec(),
                headers: Vec::new(),
            },
            (Route::ConnHealth, _) => self.connection_health(),
            (Route::MonStatus, _) => self.status(),
            (Route::EmergencyClose, _) => match json_body(&body) {
                Ok(m) => self.emergency_close(&m),
                Err(a) => a,
            },
            (Route::Positions, Method::Post) => match json_body(&body) {
                Ok(m) => self.register(&m),
                Err(a) => a,
            },
            (Route::Positions, _) => self.list_positions(query.as_deref()),
            (Route::Position(id), Method::Patch) => match json_body(&body) {
                Ok(m) => self.modify(&id, &m),
                Err(a) => a,
            },
            (Route::Position(id), Method::Delete) => self.withdraw(&id),
            (Route::Position(id), _) => self.get_position(&id),
            (Route::Resolve(id), _) => match json_body(&body) {
                Ok(m) if m.contains_key("attempt") => self.settle(&id, &m),
                Ok(m) if m.is_empty() => self.resolve(&id),
                Ok(m) => match m.keys().find(|k| !["note"].contains(&k.as_str())) {
                    Some(k) => Answer::field(k, "unknown field (fields: attempt, executed_qty, price, note)"),
                    None => self.resolve(&id),
                },
                Err(a) => a,
            },
            (Route::ClosePosition(id), _) => match json_body(&body) {
                Ok(m) => self.close_one(&id, &m),
                Err(a) => a,
            },
            (Route::AlertsAck, _) => self.ack(),
            (Route::Session, Method::Post) => match json_body(&body) {
                Ok(m) => self.login(&m, secure),
                Err(a) => a,
            },
            (Route::Session, Method::Delete) => {
                if let Some(sid) = req.header("Cookie").and_then(|c| auth::session_cookie(c, secure)) {
                    self.auth.logout(sid);
                }
                Answer::json(200, &json!({"authenticated": false}))
                    .header("Set-Cookie", auth::clear_cookie(secure))
            }
            (Route::Session, _) => {
                let csrf = req
                    .header("Cookie")
                    .and_then(|c| auth::session_cookie(c, secure))
                    .and_then(|s| self.auth.session_csrf(s));
                Answer::json(
                    200,
                    &json!({"authenticated": csrf.is_some(), "csrf_token": csrf, "token_configured": self.auth.has_token()}),
                )
            }
        }
    }

    // ----- pages and probes ------------------------------------------------------------

    fn page(&self) -> Answer {
        Answer {
            status: 200,
            ctype: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
            headers: Vec::new(),
        }
        .header("Content-Security-Policy", self.csp.clone())
    }

    /// `/health` (and the seed's `/api/v1/monitoring/health`) from the watcher's last look at
    /// the engine, without a round-trip of its own: a flood of probes costs the engine
    /// nothing. `None` before the watcher's first look (then [`Api::respond`] asks the
    /// engine itself).
    pub fn health_inline(&self, seed_shape: bool) -> Option<Answer> {
        let beat = self.watch.beat()?;
        let age = beat.at.elapsed();
        Some(if age <= HEARTBEAT_STALE {
            let status = if seed_shape { "healthy" } else { "ok" };
            Answer::json(200, &self.health_body(status, Some(beat.alarm), Some(beat.open), None))
        } else {
            let why = format!("the engine has not answered the watcher for {:.1} s", age.as_secs_f64());
            Answer::json(503, &self.health_body("unhealthy", None, None, Some(why)))
                .header("Retry-After", "1")
        })
    }

    fn health_body(
        &self,
        status: &str,
        alarm: Option<&str>,
        open: Option<usize>,
        detail: Option<String>,
    ) -> Value {
        let turns = self.bridge.engine.status.engine_turns.load(Ordering::Relaxed);
        json!({
            "status": status,
            "timestamp": views::iso8601(crate::bus::clock::wall_now()),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "engine": {"responding": alarm.is_some(), "turns": turns},
            "alarm": alarm,
            "open_positions": open,
            "detail": detail,
            "config_alarm": self.alarm,
        })
    }

    fn health(&self, seed_shape: bool) -> Answer {
        if let Some(a) = self.health_inline(seed_shape) {
            return a;
        }
        let engine = self.bridge.inspect(|e, now| (views::alarm_str(e.alarm(now).0), e.book().active()));
        let body = |status: &str, alarm: Option<&str>, open: Option<usize>, detail: Option<String>| {
            self.health_body(status, alarm, open, detail)
        };
        match engine {
            Ok((alarm, open)) => {
                let status = if seed_shape { "healthy" } else { "ok" };
                Answer::json(200, &body(status, Some(alarm), Some(open), None))
            }
            Err(e) => Answer::json(503, &body("unhealthy", None, None, Some(e.to_string())))
                .header("Retry-After", "1"),
        }
    }

    /// The last `/ready` answer if it is younger than [`READY_EVERY`]: `/ready` is computed
    /// at most once a second, however many ask.
    pub fn ready_cached(&self) -> Option<Answer> {
        let c = self.ready_cache.lock().ok()?;
        c.as_ref().filter(|(at, _)| at.elapsed() < self.ready_every).map(|(_, a)| a.clone())
    }

    fn ready(&self) -> Answer {
        if let Some(a) = self.ready_cached() {
            return a;
        }
        let a = self.ready_now();
        if let Ok(mut c) = self.ready_cache.lock() {
            *c = Some((crate::bus::clock::mono_std(), a.clone()));
        }
        a
    }

    fn ready_now(&self) -> Answer {
        let snap = self.bridge.inspect(|e, now| views::snapshot(e, now, Parts::ALL));
        let mut checks = BTreeMap::new();
        let mut ready = true;
        if let Some(alarm) = &self.alarm {
            // The API fell back to loopback only: protection runs, the configuration needs a
            // person.
            ready = false;
            checks.insert("api_config", alarm.clone());
        }
        match &snap {
            Ok(s) => {
                checks.insert("engine", "ok".to_string());
                let mut without: Vec<String> = s
                    .instruments
                    .iter()
                    .filter(|i| {
                        i.open_positions > 0
                            && !matches!(
                                i.rung,
                                crate::core::types::Rung::Live | crate::core::types::Rung::Rest
                            )
                    })
                    .map(|i| format!("{} ({})", i.symbol, i.rung.as_str()))
                    .collect();
                without.sort();
                if without.is_empty() {
                    checks.insert("price_sources", "ok".to_string());
                } else {
                    ready = false;
                    checks.insert(
                        "price_sources",
                        format!("no working price source for {}", without.join(", ")),
                    );
                }
            }
            Err(e) => {
                ready = false;
                checks.insert("engine", e.to_string());
                checks.insert("price_sources", "unknown".to_string());
            }
        }
        // Every position watched, or named: blind ones (whatever their rung says: a feed that
        // is up but never prices an instrument leaves it as unwatched as a dead one) and
        // closes whose outcome has stayed unknown past `broker.unknown_alarm_s`.
        let named = self.bridge.inspect(|e, now| {
            let mut blind = Vec::new();
            let mut unknown = Vec::new();
            for (_, p) in e.book().iter() {
                if p.state.is_terminal() {
                    continue;
                }
                if p.blind_since.is_some() {
                    blind.push(format!("{} ({})", p.id, e.cache().symbol(p.instrument)));
                }
                if e.is_unknown_overdue(p, now) {
                    let attempt = p.state.closing().map_or(0, |c| c.attempt);
                    unknown.push(format!("{} (attempt {attempt})", p.id));
                } else if let crate::core::book::PosState::CloseFailed(c) = &p.state {
                    // A close that failed for good: the alarm says close_failed, so does /ready.
                    unknown.push(format!("{} (close_failed after {} attempts)", p.id, c.attempt));
                }
            }
            (blind, unknown)
        });
        match named {
            Ok((blind, unknown)) => {
                if blind.is_empty() {
                    checks.insert("positions_priced", "ok".to_string());
                } else {
                    ready = false;
                    checks.insert("positions_priced", format!("blind: {}", blind.join(", ")));
                }
                if unknown.is_empty() {
                    checks.insert("close_outcomes", "ok".to_string());
                } else {
                    ready = false;
                    checks.insert(
                        "close_outcomes",
                        format!(
                            "closes that need a person (unknown past broker.unknown_alarm_s: settle after checking the venue; close_failed: resolve): {}",
                            unknown.join(", ")
                        ),
                    );
                }
            }
            Err(e) => {
                ready = false;
                checks.insert("engine", e.to_string());
                checks.insert("price_sources", "unknown".to_string());
            }
        }
        let store = match &self.journal {
            Some(j) => j.writable(),
            None => self.store.check(),
        };
        match store {
            Ok(()) => {
                checks.insert("store", "ok".to_string());
            }
            Err(e) => {
                ready = false;
                checks.insert("store", e);
            }
        }
        Answer::json(if ready { 200 } else { 503 }, &json!({"ready": ready, "checks": checks}))
    }

    fn metrics(&self) -> Answer {
        let snap = self
            .bridge
            .inspect(|e, now| {
                views::snapshot(e, now, Parts { instruments: true, positions: false, recent: false })
            })
            .ok();
        let journal_bytes = self.journal.as_ref().and_then(|j| j.bytes());
        let journal_counters = self.journal.as_ref().and_then(|j| j.counters());
        let text = metrics::render(&metrics::Inputs {
            snap: snap.as_ref(),
            status: &self.bridge.engine.status,
            queue_depth: self.bridge.engine.ticks.depth(),
            queue: self.bridge.engine.ticks.stats(),
            command_queue: crate::limits::COMMAND_QUEUE
                .saturating_sub(self.bridge.engine.requests.capacity()),
            http: self.http.get().map(|h| &**h),
            config_alarm: self.alarm.is_some(),
            watch: &self.watch,
            journal_bytes,
            journal_counters,
            venue: self.venue,
        });
        Answer {
            status: 200,
            ctype: "text/plain; version=0.0.4; charset=utf-8",
            body: text.into_bytes(),
            headers: Vec::new(),
        }
    }

    // ----- monitoring (the seed's endpoints) -------------------------------------------

    fn snap(&self, parts: Parts) -> Result<Snap, Answer> {
        self.bridge.inspect(move |e, now| views::snapshot(e, now, parts)).map_err(Answer::engine)
    }

    fn connection_health(&self) -> Answer {
        let s = match self.snap(Parts { instruments: true, positions: false, recent: false }) {
            Ok(s) => s,
            Err(a) => return a,
        };
        let status = &self.bridge.engine.status;
        let feed = status.feed.get().map(|f| f.stats());
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let subscribed = match feed {
            Some(f) => f.subscribed,
            None => s.instruments.iter().filter(|i| i.live).count() as u64,
        };
        let mut entries = BTreeMap::new();
        for i in &s.instruments {
            entries.insert(i.symbol.to_string(), views::cache_entry(i));
        }
        let failing: Vec<String> = s
            .instruments
            .iter()
            .filter(|i| s.cfg.rest_enabled && i.open_positions > 0 && !i.rest_working)
            .map(|i| i.symbol.to_string())
            .collect();
        let dns = status.resolver.get().map(|r| {
            let st = r.dns_stats();
            json!({
                "system_tries": load(&st.system_tries),
                "system_failures": load(&st.system_failures),
                "fallback_tries": load(&st.fallback_tries),
                "fallback_answers": load(&st.fallback_answers),
                "last_good_uses": load(&st.last_good_uses),
            })
        });
        let rest = &status.rest;
        // The LAN relay (`null` when it is off): its own counters are on its health port.
        let relay = status.relay.get().map(|r| {
            let v = r.view();
            json!({
                "running": v.running,
                "failure": v.failure,
                "upstream_live": v.upstream_live,
                "symbols": v.symbols,
                "clients": v.clients.iter().map(|c| json!({
                    "peer": c.peer,
                    "symbols": c.symbols,
                    "interval": c.interval,
                    "queued": c.queued,
                    "age_seconds": c.age_s,
                })).collect::<Vec<_>>(),
                "delivered": v.delivered,
                "slow_closed": v.slow_closed,
                "gaps": v.gaps,
            })
        });
        let body = json!({
            "timestamp": views::iso8601(s.wall),
            "websocket": {
                "connected": s.feed_connected,
                "subscribed_symbols": subscribed,
                "reconnect_attempts": feed.map_or(0, |f| f.attempts),
                "network_errors": feed.map_or(0, |f| f.network_errors),
                "reconnects_total": feed.map_or(0, |f| f.reconnects),
                "venue": self.venue,
            },
            "price_cache": {
                "cached_symbols": s.cached,
                "last_update": s.last_update.map(|t| s.epoch(t)),
                "cache_entries": entries,
                "stale_after_seconds": s.cfg.stale_after.as_secs_f64(),
                "expire_after_seconds": s.cfg.expire_after.as_secs_f64(),
            },
            "source": if s.feed_connected { "live" } else if s.cfg.rest_enabled { "rest" } else { "cache" },
            "ladder": {
                "rung": views::worst_rung(&s),
                "instruments_by_rung": views::rung_counts(&s),
            },
            "dns": dns,
            "rest_fallback": {
                "enabled": s.cfg.rest_enabled,
                "failing_symbols": failing,
                "polls": load(&rest.polls),
                "errors": load(&rest.errors),
                "breaker_open": rest.breaker_open.load(Ordering::Relaxed),
            },
            "relay": relay,
        });
        Answer::json(200, &body)
    }

    fn product_of(&self, id: &str) -> Option<String> {
        self.products
            .lock()
            .ok()
            .and_then(|m| m.get(id).cloned())
            .or_else(|| self.journal.as_ref().and_then(|j| j.product_of(id)))
    }

    fn status(&self) -> Answer {
        let s = match self.snap(Parts::ALL) {
            Ok(s) => s,
            Err(a) => return a,
        };
        let open: Vec<views::PositionView> = s
            .positions
            .iter()
            .filter(|p| !p.pos.state.is_terminal())
            .map(|p| views::position_view(&s, p, self.product_of(&p.pos.id)))
            .collect();
        let recent: Vec<views::CloseView> = s.recent.iter().rev().map(|c| views::close_view(&s, c)).collect();
        let body = json!({
            "timestamp": views::iso8601(s.wall),
            "open_trades": open,
            "trades": {
                "open": s.counts[0],
                "closing": s.counts[1],
                "close_failed": s.counts[2],
                "closed": s.counts[3],
                "decisions": s.stats.decisions,
                "closes_done": s.stats.closes_done,
                "recent_closes": recent,
            },
            "alarm": {"state": views::alarm_str(s.alarm.0), "acknowledged": s.alarm.1},
            "feed": {
                "connected": s.feed_connected,
                "venue": self.venue,
                "rung": views::worst_rung(&s),
                "instruments_by_rung": views::rung_counts(&s),
                "stale_after_seconds": s.cfg.stale_after.as_secs_f64(),
                "expire_after_seconds": s.cfg.expire_after.as_secs_f64(),
            },
            "clock": clock_state(s.wall),
            "uptime_seconds": s.now.since(s.boot).as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "config_alarm": self.alarm,
        });
        Answer::json(200, &body)
    }

    // ----- closes ------------------------------------------------------------------------

    fn emergency_close(&self, m: &Map<String, Value>) -> Answer {
        let symbol = match m.get("symbol") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= SYMBOL_MAX => s.clone(),
            Some(Value::String(_)) => {
                return Answer::field("symbol", format!("must be 1 to {SYMBOL_MAX} bytes"));
            }
            Some(_) => return Answer::field("symbol", "must be a string"),
            None => return Answer::field("symbol", "is required"),
        };
        let sym = symbol.clone();
        let targets = match self.bridge.inspect(move |e, _| {
            e.book()
                .iter()
                .filter(|(_, p)| !p.state.is_terminal() && e.cache().symbol(p.instrument) == sym)
                .map(|(_, p)| (p.id.clone(), p.generation))
                .collect::<Vec<_>>()
        }) {
            Ok(t) => t,
            Err(e) => return Answer::engine(e),
        };
        let not_found = || Answer::detail(404, format!("No open trade found for {symbol}"));
        if targets.is_empty() {
            return not_found();
        }
        let reason = match parse_reason(m.get("reason")) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let Ok(target_sym) = Symbol::try_from(symbol.as_str()) else {
            return not_found();
        };
        match self.bridge.command(Command::Close { target: CloseTarget::Symbol(target_sym), reason }) {
            Ok(Ok(_)) => {}
            Ok(Err(CoreError::UnknownPosition)) => return not_found(),
            Ok(Err(e)) => return core_field_error(e),
            Err(e) => return Answer::engine(e),
        }
        self.await_closes(&symbol, reason, &targets)
    }

    fn close_one(&self, id: &str, m: &Map<String, Value>) -> Answer {
        let pid = id.to_string();
        let found = match self.bridge.inspect(move |e, _| {
            e.book().find(&pid).and_then(|i| e.book().get(i)).map(|p| {
                (
                    p.id.clone(),
                    p.generation,
                    e.cache().symbol(p.instrument).to_string(),
                    p.state.is_terminal(),
                )
            })
        }) {
            Ok(f) => f,
            Err(e) => return Answer::engine(e),
        };
        let Some((pid, generation, symbol, terminal)) = found else {
            return Answer::detail(404, format!("No position {id}"));
        };
        if terminal {
            return Answer::detail(409, format!("position {id} is already closed"));
        }
        let reason = match parse_reason(m.get("reason")) {
            Ok(r) => r,
            Err(a) => return a,
        };
        match self.bridge.command(Command::Close { target: CloseTarget::Id(pid.clone()), reason }) {
            Ok(Ok(_)) => {}
            Ok(Err(CoreError::UnknownPosition)) => return Answer::detail(404, format!("No position {id}")),
            Ok(Err(e)) => return core_field_error(e),
            Err(e) => return Answer::engine(e),
        }
        self.await_closes(&symbol, reason, &[(pid, generation)])
    }

    /// Waits (bounded by [`CLOSE_WAIT`]) for every target to close, then answers 200 with the
    /// fills, or 202 `closing` with `exit_price: null`.
    fn await_closes(&self, symbol: &str, reason: CloseReason, targets: &[(PositionId, u32)]) -> Answer {
        let deadline = crate::bus::clock::mono_std() + CLOSE_WAIT;
        loop {
            let t = targets.to_vec();
            let snap = self.bridge.inspect(move |e, now| {
                let s = views::snapshot(e, now, Parts { instruments: false, positions: false, recent: true });
                let found: Vec<Option<PosSnap>> = t
                    .iter()
                    .map(|(id, generation)| {
                        e.book()
                            .find(id)
                            .and_then(|i| e.book().get(i))
                            .filter(|p| p.generation == *generation)
                            .map(|p| PosSnap {
                                pos: p.clone(),
                                symbol: Symbol::try_from(e.cache().symbol(p.instrument)).unwrap_or_default(),
                                quote: e.cache().quote(p.instrument).copied(),
                                age: e.cache().age(p.instrument, now),
                                band: e.band(p.instrument, now),
                                rung: e.rung(p.instrument, now),
                            })
                    })
                    .collect();
                (s, found)
            });
            let (s, found) = match snap {
                Ok(x) => x,
                Err(e) => return Answer::engine(e),
            };
            let done = found.iter().all(|p| p.as_ref().is_none_or(|p| p.pos.state.is_terminal()));
            if done || crate::bus::clock::mono_std() >= deadline {
                return close_answer(&s, symbol, reason, targets, &found, done);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ack(&self) -> Answer {
        match self.bridge.command(Command::AckAlerts) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return core_field_error(e),
            Err(e) => return Answer::engine(e),
        }
        match self.bridge.inspect(|e, now| e.alarm(now)) {
            Ok((a, acked)) => {
                Answer::json(200, &json!({"acknowledged": acked, "alarm": views::alarm_str(a)}))
            }
            Err(e) => Answer::engine(e),
        }
    }

    fn login(&self, m: &Map<String, Value>, secure: bool) -> Answer {
        let Some(Value::String(tok)) = m.get("token") else {
            return Answer::field("token", "is required (the content of api.token_file)");
        };
        match self.auth.login(tok) {
            Some((sid, csrf)) => Answer::json(200, &json!({"authenticated": true, "csrf_token": csrf}))
                .header("Set-Cookie", auth::set_cookie(&sid, secure)),
            // Counted and delayed by the server, and logged there as one summary line per
            // period (`[AUTH] event=credentials_refused`), never a line per failure.
            None => {
                Answer::detail(401, "wrong token").header("WWW-Authenticate", "Bearer realm=\"tickguard\"")
            }
        }
    }

    // ----- positions ---------------------------------------------------------------------

    fn position_snap(&self, id: &str) -> Result<Option<(Snap, PosSnap)>, BridgeError> {
        let pid = id.to_string();
        self.bridge.inspect(move |e, now| {
            let s = views::snapshot(e, now, Parts { instruments: false, positions: false, recent: false });
            let p = e.book().find(&pid).and_then(|i| e.book().get(i)).map(|p| PosSnap {
                pos: p.clone(),
                symbol: Symbol::try_from(e.cache().symbol(p.instrument)).unwrap_or_default(),
                quote: e.cache().quote(p.instrument).copied(),
                age: e.cache().age(p.instrument, now),
                band: e.band(p.instrument, now),
                rung: e.rung(p.instrument, now),
            });
            p.map(|p| (s, p))
        })
    }

    fn position_answer(&self, status: u16, id: &str) -> Answer {
        match self.position_snap(id) {
            Ok(Some((s, p))) => Answer::json(status, &views::position_view(&s, &p, self.product_of(id))),
            Ok(None) => Answer::detail(404, format!("No position {id}")),
            Err(e) => Answer::engine(e),
        }
    }

    fn list_positions(&self, query: Option<&str>) -> Answer {
        let want =
            query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("status=")).map(str::to_string));
        if let Some(w) = &want {
            if !["open", "closing", "close_failed", "closed", "active"].contains(&w.as_str()) {
                return Answer::field("status", "must be one of open, closing, close_failed, closed, active");
            }
        }
        let s = match self.snap(Parts { instruments: false, positions: true, recent: false }) {
            Ok(s) => s,
            Err(a) => return a,
        };
        let list: Vec<views::PositionView> = s
            .positions
            .iter()
            .filter(|p| match want.as_deref() {
                None => true,
                Some("active") => !p.pos.state.is_terminal(),
                Some(w) => p.pos.state.as_str() == w,
            })
            .map(|p| views::position_view(&s, p, self.product_of(&p.pos.id)))
            .collect();
        Answer::json(200, &json!({"positions": list, "capacity": MAX_POSITIONS}))
    }

    fn get_position(&self, id: &str) -> Answer {
        self.position_answer(200, id)
    }

    fn sync_journal(&self) -> Result<(), Answer> {
        match &self.journal {
            None => Ok(()),
            Some(j) => j.sync(Duration::from_secs(2)).map_err(|e| {
                Answer::detail(
                    503,
                    format!("accepted and protected, but the journal could not confirm it on disk ({e}); repeat the same request"),
                )
                .header("Retry-After", "1")
            }),
        }
    }

    fn register(&self, m: &Map<String, Value>) -> Answer {
        let (spec, product) = match self.parse_spec(m) {
            Ok(x) => x,
            Err(a) => return a,
        };
        let id = spec.id.to_string();
        if let Some(p) = &product {
            let known = self.product_of(&id);
            if known.as_ref().is_some_and(|k| k != p) {
                return Answer::detail(
                    409,
                    format!("position {id} is registered with product {}", known.unwrap_or_default()),
                );
            }
        }
        let reply = match self.bridge.command(Command::Register(spec)) {
            Ok(r) => r,
            Err(e) => return Answer::engine(e),
        };
        let status = match reply {
            Ok(EngineReply::Registered { existed: true, .. }) => 200,
            Ok(_) => 201,
            Err(CoreError::DuplicateId) => {
                return Answer::detail(
                    409,
                    format!(
                        "position {id} is already registered with a different body; PATCH moves its levels"
                    ),
                );
            }
            Err(CoreError::BookFull { capacity }) => {
                return Answer::json(
                    507,
                    &json!({"detail": format!("position book full (capacity {capacity}); close or withdraw positions first"), "capacity": capacity}),
                );
            }
            Err(CoreError::CacheFull { capacity }) => {
                return Answer::json(
                    507,
                    &json!({"detail": format!("instrument cache full (capacity {capacity}); no new symbol can be watched"), "capacity": capacity}),
                );
            }
            Err(CoreError::WatchFull { limit }) => {
                return Answer::json(
                    507,
                    &json!({"detail": format!("watch set full: {limit} instruments are watched (the limit: MAX_INSTRUMENTS or feed.max_subscriptions); no new instrument can be watched, so the position is not accepted"), "capacity": limit}),
                );
            }
            Err(CoreError::Closed) => return self.closed_id(&id),
            Err(e) => return core_field_error(e),
        };
        if let (Some(p), Some(j)) = (&product, &self.journal) {
            // Written on a repeat too (200): a retry after a 503 must leave it on disk.
            // The product decides how the close is placed after a restart too: on disk first.
            if let Err(e) = j.product(&id, p) {
                return Answer::detail(
                    503,
                    format!("registered, but its product could not be written to the journal ({e}); repeat the same request"),
                )
                .header("Retry-After", "1");
            }
        }
        if let Some(p) = product {
            if let (Some(sink), Some(prod)) = (&self.product_sink, crate::broker::upstox::Product::parse(&p))
            {
                (sink.0)(&id, prod);
            }
            if let Ok(mut map) = self.products.lock() {
                if map.len() >= 2 * MAX_POSITIONS {
                    if let Some(k) = map.keys().next().cloned() {
                        map.remove(&k);
                    }
                }
                map.insert(id.clone(), p);
            }
        }
        if let Err(a) = self.sync_journal() {
            return a;
        }
        self.position_answer(status, &id).header("Location", format!("/api/v1/positions/{id}"))
    }

    /// `409` for a registration on the id of a position that has closed.
    fn closed_id(&self, id: &str) -> Answer {
        let from_journal = self.journal.as_ref().and_then(|j| j.closed(id));
        let (how, at) = match from_journal {
            Some((how, ms)) => (how.to_string(), views::iso8601(UNIX_EPOCH + Duration::from_millis(ms))),
            None => match self.position_snap(id) {
                Ok(Some((s, p))) => {
                    let v = views::position_view(&s, &p, None);
                    (
                        v.closed_how.unwrap_or("closed").to_string(),
                        v.closed_at.unwrap_or_else(|| "unknown time".into()),
                    )
                }
                _ => ("closed".to_string(), "unknown time".to_string()),
            },
        };
        Answer::json(
            409,
            &json!({"detail": format!("position {id} closed ({how} at {at}); register with a new id"), "field": "id"}),
        )
    }

    fn parse_spec(&self, m: &Map<String, Value>) -> Result<(PositionSpec, Option<String>), Answer> {
        // One parser for every door (the configuration's too): `core::spec`.
        if let Some((k, near)) = spec::unknown_key(m.keys().map(String::as_str)) {
            let names: Vec<&str> = spec::SPEC_KEYS.iter().map(|k| k.name).collect();
            let hint = near.map(|n| format!("did you mean {n}? ")).unwrap_or_default();
            return Err(Answer::field(k, format!("unknown field ({hint}fields: {})", names.join(", "))));
        }
        let default_id = {
            let n = self.ids.fetch_add(1, Ordering::Relaxed);
            let r = auth::random_hex(4).unwrap_or_default();
            format!("api-{r}-{n}")
        };
        let rules = spec::SpecRules {
            uppercase_symbols: self.symbols.as_ref().is_some_and(|g| g.uppercase),
            default_id: Some(default_id),
            side_rule: self.side_rule,
        };
        let get = |k: &str| match m.get(k) {
            None => spec::Field::Absent,
            Some(Value::Null) => spec::Field::Null,
            Some(Value::String(s)) => spec::Field::Text(s),
            Some(Value::Bool(b)) => spec::Field::Bool(*b),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => spec::Field::Whole(i),
                (None, Some(x)) => spec::Field::Fraction(x),
                (None, None) => spec::Field::Other("a number out of range"),
            },
            Some(Value::Array(_)) => spec::Field::Other("a list"),
            Some(Value::Object(_)) => spec::Field::Other("an object"),
        };
        let spec = spec::parse(get, &rules).map_err(|e| Answer::field(&e.field, e.problem))?;
        let product = match m.get("product") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if ["D", "I", "MTF"].contains(&s.as_str()) => Some(s.clone()),
            Some(_) => return Err(Answer::field("product", "must be D, I or MTF (Upstox)")),
        };
        if let Some(g) = &self.symbols {
            match (g.check)(&spec.symbol) {
                super::SymbolVerdict::Traded => {}
                super::SymbolVerdict::NotTraded => {
                    return Err(Answer::field(
                        "symbol",
                        format!("{} is not traded on {}", spec.symbol, g.venue),
                    ));
                }
                super::SymbolVerdict::Unverified => log::warn!(
                    "[SYMBOLS] id={} symbol={} event=symbol_unverified venue={} (the venue's list is not known yet; watched, blind if it never prices)",
                    spec.id,
                    spec.symbol,
                    g.venue
                ),
            }
        }
        Ok((spec, product))
    }

    fn modify(&self, id: &str, m: &Map<String, Value>) -> Answer {
        if let Some(k) = m.keys().find(|k| !["stop_loss", "take_profit"].contains(&k.as_str())) {
            return Answer::field(
                k,
                "unknown field (PATCH moves stop_loss and take_profit; null removes one)",
            );
        }
        if m.is_empty() {
            return Answer::detail(
                400,
                "nothing to change: send stop_loss and/or take_profit (null removes a level)",
            );
        }
        let level = |k: &str| -> Result<Option<Option<Price>>, Answer> {
            match m.get(k) {
                None => Ok(None),
                Some(Value::Null) => Ok(Some(None)),
                v => match decimal(v) {
                    Ok(Some(u)) if u > 0 => Ok(Some(Some(Price::from_units(u)))),
                    Ok(_) => Err(Answer::field(k, "must be above zero")),
                    Err(e) => Err(Answer::field(k, e)),
                },
            }
        };
        let (stop_loss, take_profit) = match (level("stop_loss"), level("take_profit")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), _) | (_, Err(a)) => return a,
        };
        let Ok(pid) = PositionId::try_from(id) else {
            return Answer::detail(404, format!("No position {id}"));
        };
        match self.bridge.command(Command::Modify { id: pid, stop_loss, take_profit }) {
            Ok(Ok(_)) => {
                if let Err(a) = self.sync_journal() {
                    return a;
                }
                self.position_answer(200, id)
            }
            Ok(Err(CoreError::UnknownPosition)) => Answer::detail(404, format!("No position {id}")),
            Ok(Err(CoreError::NotOpen)) => self.conflict(id, "its levels can no longer move"),
            Ok(Err(e)) => core_field_error(e),
            Err(e) => Answer::engine(e),
        }
    }

    fn conflict(&self, id: &str, what: &str) -> Answer {
        let state = self.position_snap(id).ok().flatten().map_or("unknown", |(_, p)| p.pos.state.as_str());
        Answer::json(409, &json!({"detail": format!("position {id} is {state}: {what}"), "status": state}))
    }

    fn withdraw(&self, id: &str) -> Answer {
        let Ok(pid) = PositionId::try_from(id) else {
            return Answer::detail(404, format!("No position {id}"));
        };
        match self.bridge.command(Command::Withdraw { id: pid }) {
            Ok(Ok(_)) => {
                if let Err(a) = self.sync_journal() {
                    return a;
                }
                self.position_answer(200, id)
            }
            Ok(Err(CoreError::UnknownPosition)) => Answer::detail(404, format!("No position {id}")),
            Ok(Err(CoreError::NotDurable)) => core_field_error(CoreError::NotDurable),
            Ok(Err(_)) => self.conflict(id, "protection cannot be withdrawn while it is closing or closed"),
            Err(e) => Answer::engine(e),
        }
    }

    /// Settles an attempt whose outcome stayed unknown, after the operator checked the venue.
    fn settle(&self, id: &str, m: &Map<String, Value>) -> Answer {
        const KNOWN: [&str; 4] = ["attempt", "executed_qty", "price", "note"];
        if let Some(k) = m.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Answer::field(k, format!("unknown field (fields: {})", KNOWN.join(", ")));
        }
        let attempt = match m.get("attempt") {
            Some(Value::Number(n)) => match n.as_u64().and_then(|v| u16::try_from(v).ok()) {
                Some(a) if a > 0 => a,
                _ => return Answer::field("attempt", "must be a whole number from 1 to 65535"),
            },
            _ => return Answer::field("attempt", "must be a whole number (the attempt being settled)"),
        };
        let executed = match decimal(m.get("executed_qty")) {
            Ok(Some(u)) if u >= 0 => Qty::from_units(u),
            Ok(Some(_)) => return Answer::field("executed_qty", "must be zero or more"),
            Ok(None) => return Answer::field("executed_qty", "is required (\"0\" when nothing executed)"),
            Err(e) => return Answer::field("executed_qty", e),
        };
        let price = match decimal(m.get("price")) {
            Ok(Some(u)) if u > 0 => Some(Price::from_units(u)),
            Ok(Some(_)) => return Answer::field("price", "must be above zero"),
            Ok(None) => None,
            Err(e) => return Answer::field("price", e),
        };
        let note = match m.get("note") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) if s.len() <= 200 => s.replace(['"', '\n', '\r'], " "),
            Some(_) => return Answer::field("note", "must be a string of at most 200 characters"),
        };
        let Ok(pid) = PositionId::try_from(id) else {
            return Answer::detail(404, format!("No position {id}"));
        };
        match self.bridge.command(Command::Settle { id: pid, attempt, executed, price }) {
            Ok(Ok(_)) => {
                log::warn!(
                    "[CLOSE] id={id} event=settled_by_operator attempt={attempt} executed_qty={executed} note=\"{note}\""
                );
                if let Err(a) = self.sync_journal() {
                    return a;
                }
                self.position_answer(200, id)
            }
            Ok(Err(CoreError::UnknownPosition)) => Answer::detail(404, format!("No position {id}")),
            Ok(Err(CoreError::NotDurable)) => core_field_error(CoreError::NotDurable),
            Ok(Err(CoreError::WrongAttempt { current })) => Answer::json(
                409,
                &json!({"detail": format!("position {id}: attempt {attempt} is not the current one (the current attempt is {current})"), "field": "attempt"}),
            ),
            Ok(Err(CoreError::BadQuantity)) => {
                Answer::field("executed_qty", "must not exceed the attempt's quantity")
            }
            Ok(Err(_)) => self.conflict(id, "only a closing position's current attempt can be settled"),
            Err(e) => Answer::engine(e),
        }
    }

    fn resolve(&self, id: &str) -> Answer {
        let Ok(pid) = PositionId::try_from(id) else {
            return Answer::detail(404, format!("No position {id}"));
        };
        match self.bridge.command(Command::Resolve { id: pid }) {
            Ok(Ok(_)) => {
                log::warn!("[CLOSE] id={id} event=resolved_by_operator");
                if let Err(a) = self.sync_journal() {
                    return a;
                }
                self.position_answer(200, id)
            }
            Ok(Err(CoreError::UnknownPosition)) => Answer::detail(404, format!("No position {id}")),
            Ok(Err(CoreError::OrderInFlight)) => {
                self.conflict(id, "an order may still be working; resolve once it is known not to be")
            }
            Ok(Err(CoreError::NotDurable)) => core_field_error(CoreError::NotDurable),
            Ok(Err(_)) => self.conflict(
                id,
                "only a close_failed position (or a closing one with no order that may be working) is resolved by hand",
            ),
            Err(e) => Answer::engine(e),
        }
    }
}

fn core_field_error(e: CoreError) -> Answer {
    if e == CoreError::NotDurable {
        return Answer::detail(503, format!("{e}; repeat the same request")).header("Retry-After", "1");
    }
    let field = match e {
        CoreError::BadSymbol => "symbol",
        CoreError::BadId => "id",
        CoreError::BadQuantity => "qty",
        CoreError::BadPrice => "entry",
        CoreError::BadLevels => "stop_loss",
        _ => return Answer::detail(409, e.to_string()),
    };
    Answer::field(field, e)
}

fn parse_reason(v: Option<&Value>) -> Result<CloseReason, Answer> {
    match v {
        None | Some(Value::Null) => Ok(CloseReason::Emergency),
        Some(Value::String(s)) => match s.as_str() {
            "stop_loss" => Ok(CloseReason::StopLoss),
            "take_profit" => Ok(CloseReason::TakeProfit),
            "emergency" => Ok(CloseReason::Emergency),
            _ => Err(Answer::field("reason", "must be one of stop_loss, take_profit, emergency")),
        },
        Some(_) => Err(Answer::field("reason", "must be one of stop_loss, take_profit, emergency")),
    }
}

/// A price or quantity from JSON: an integer (exact), a number with decimals (rounded
/// half-to-even at 8 places, like the configuration's floats) or a decimal string (exact).
fn decimal(v: Option<&Value>) -> Result<Option<i64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return i.checked_mul(SCALE).map(Some).ok_or_else(|| "too large".to_string());
            }
            let x = n.as_f64().ok_or("not a number")?;
            Price::from_f64(x, 8).map(|p| Some(p.units())).map_err(|e| e.to_string())
        }
        Some(Value::String(s)) => {
            Price::parse(s.trim()).map(|p| Some(p.units())).map_err(|e| format!("invalid decimal: {e}"))
        }
        Some(_) => Err("must be a number or a decimal string".into()),
    }
}

#[derive(Serialize)]
struct ClosedPosition {
    id: String,
    qty: f64,
    entry_price: f64,
    exit_price: Option<f64>,
    pnl: Option<f64>,
    status: &'static str,
    closed_how: Option<&'static str>,
    attempts: u16,
}

fn close_answer(
    s: &Snap,
    symbol: &str,
    reason: CloseReason,
    targets: &[(PositionId, u32)],
    found: &[Option<PosSnap>],
    done: bool,
) -> Answer {
    let mut rows = Vec::new();
    let (mut qty_sum, mut entry_sum, mut exit_sum, mut filled_sum, mut pnl_sum) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut all_filled = true;
    for ((id, _), p) in targets.iter().zip(found) {
        let row = match p {
            Some(p) => {
                let pos = &p.pos;
                let exit = pos.avg_exit();
                let pnl = exit.map(|x| views::pnl(pos.side, pos.entry, x, pos.filled));
                let how = match pos.state {
                    PosState::Closed { how, .. } => Some(how.as_str()),
                    _ => None,
                };
                ClosedPosition {
                    id: id.to_string(),
                    qty: pos.qty.to_f64(),
                    entry_price: pos.entry.to_f64(),
                    exit_price: exit.map(Price::to_f64),
                    pnl: pnl.map(|v| (v * 100.0).round() / 100.0),
                    status: pos.state.as_str(),
                    closed_how: how,
                    attempts: pos.state.closing().map_or(pos.attempts, |c| c.attempt),
                }
            }
            None => {
                // Evicted from the book already: the recent closes remember it.
                match s.recent.iter().rev().find(|c| c.rec.id == *id) {
                    Some(c) => ClosedPosition {
                        id: id.to_string(),
                        qty: c.rec.qty.to_f64(),
                        entry_price: c.rec.entry.to_f64(),
                        exit_price: c.rec.exit.map(Price::to_f64),
                        pnl: c.rec.exit.map(|x| {
                            (views::pnl(c.rec.side, c.rec.entry, x, c.rec.qty) * 100.0).round() / 100.0
                        }),
                        status: "closed",
                        closed_how: Some("filled"),
                        attempts: c.rec.attempts,
                    },
                    None => ClosedPosition {
                        id: id.to_string(),
                        qty: 0.0,
                        entry_price: 0.0,
                        exit_price: None,
                        pnl: None,
                        status: "closed",
                        closed_how: None,
                        attempts: 0,
                    },
                }
            }
        };
        qty_sum += row.qty;
        entry_sum += row.entry_price * row.qty;
        match (row.exit_price, row.closed_how) {
            (Some(x), Some("filled")) => {
                exit_sum += x * row.qty;
                filled_sum += row.qty;
                pnl_sum += row.pnl.unwrap_or(0.0);
            }
            _ => all_filled = false,
        }
        rows.push(row);
    }
    let avg = |sum: f64, n: f64| (n > 0.0).then(|| (sum / n * 1e8).round() / 1e8);
    let entry_price = avg(entry_sum, qty_sum);
    let reason_s = reason.as_str();
    if done && all_filled {
        let exit_price = avg(exit_sum, filled_sum);
        Answer::json(
            200,
            &json!({
                "status": "success",
                "symbol": symbol,
                "entry_price": entry_price,
                "exit_price": exit_price,
                "pnl": (pnl_sum * 100.0).round() / 100.0,
                "reason": reason_s,
                "message": format!("Position {symbol} closed successfully"),
                "positions": rows,
            }),
        )
    } else if done {
        Answer::json(
            200,
            &json!({
                "status": "closed",
                "symbol": symbol,
                "entry_price": entry_price,
                "exit_price": avg(exit_sum, filled_sum),
                "pnl": (filled_sum > 0.0).then_some((pnl_sum * 100.0).round() / 100.0),
                "reason": reason_s,
                "message": format!("Position {symbol} is closed, not (only) by our orders; see positions"),
                "positions": rows,
            }),
        )
    } else {
        let attempts: Vec<String> = rows
            .iter()
            .filter(|r| r.status != "closed")
            .map(|r| format!("{} attempt {}", r.id, r.attempts))
            .collect();
        Answer::json(
            202,
            &json!({
                "status": "closing",
                "symbol": symbol,
                "entry_price": entry_price,
                "exit_price": null,
                "pnl": null,
                "reason": reason_s,
                "message": format!(
                    "Close of {symbol} decided; no fill within {} s ({}); it keeps retrying, follow it on GET /api/v1/monitoring/status",
                    CLOSE_WAIT.as_secs(),
                    attempts.join(", ")
                ),
                "positions": rows,
            }),
        )
    }
}

/// The clock's synchronisation as the system shows it: systemd-timesyncd's flag file (the
/// appliance's time daemon). Unknown elsewhere.
pub fn clock_state(now: SystemTime) -> Value {
    let flag = std::path::Path::new("/run/systemd/timesync/synchronized");
    let dir = std::path::Path::new("/run/systemd/timesync");
    let synced = if flag.exists() {
        Some(true)
    } else if dir.exists() {
        Some(false)
    } else {
        None
    };
    json!({
        "synchronized": synced,
        "source": if synced.is_some() { "systemd-timesyncd" } else { "unknown" },
        "utc": views::iso8601(now),
        "epoch": views::epoch_seconds(now),
    })
}

/// A Content-Security-Policy allowing exactly the page's own inline script and style.
fn page_csp(page: &str) -> String {
    let hash = |open: &str, close: &str| -> Option<String> {
        let start = page.find(open)?;
        let body_start = start + page[start..].find('>')? + 1;
        let end = body_start + page[body_start..].find(close)?;
        let d = ring::digest::digest(&ring::digest::SHA256, &page.as_bytes()[body_start..end]);
        Some(format!("'sha256-{}'", base64(d.as_ref())))
    };
    let script = hash("<script", "</script>").unwrap_or_else(|| "'none'".into());
    let style = hash("<style", "</style>").unwrap_or_else(|| "'none'".into());
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The headers every answer carries, before its own.
pub const COMMON_HEADERS: [(&str, &str); 4] = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/"), Some(Route::Page));
        assert_eq!(route("/api/v1/positions/"), Some(Route::Positions));
        assert_eq!(route("/api/v1/positions/btc-1"), Some(Route::Position("btc-1".into())));
        assert_eq!(route("/api/v1/positions/btc%2D1/resolve"), Some(Route::Resolve("btc-1".into())));
        assert_eq!(route("/api/v1/positions/a/close"), Some(Route::ClosePosition("a".into())));
        assert_eq!(route("/api/v1/positions/a/b/c"), None);
        assert_eq!(route("/api/v1/nope"), None);
        assert_eq!(route("/api/v1/positions/%zz"), None);
    }

    #[test]
    fn decimals_from_json() {
        let v = |s: &str| serde_json::from_str::<Value>(s).expect("json");
        assert_eq!(decimal(Some(&v("60000"))), Ok(Some(60_000 * SCALE)));
        assert_eq!(decimal(Some(&v("0.5"))), Ok(Some(SCALE / 2)));
        assert_eq!(decimal(Some(&v("\"65000.50\""))), Ok(Some(6_500_050_000_000)));
        assert_eq!(decimal(Some(&v("null"))), Ok(None));
        assert!(decimal(Some(&v("true"))).is_err());
        assert!(decimal(Some(&v("\"1.123456789\""))).is_err());
    }

    #[test]
    fn csp_hashes_the_page() {
        let csp = page_csp("<style>a{}</style><script>x()</script>");
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(base64(b"any carnal pleasu"), "YW55IGNhcm5hbCBwbGVhc3U=");
        assert_eq!(base64(b"any carnal pleasur"), "YW55IGNhcm5hbCBwbGVhc3Vy");
    }
}
