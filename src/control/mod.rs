//! The control plane: the seed-compatible JSON API, the status page, Prometheus metrics and
//! the notifications that reach a person.
//!
//! ```text
//!  HTTP clients ──▶ server (hyper, own runtime thread) ──▶ api (checks, endpoints)
//!                                                            │ bridge: Command / Inspect
//!  watch (one look per 250 ms) ──▶ notify (webhook,          ▼   over the bounded channel
//!        │                          Telegram; own threads)  engine task (owns all state)
//!        └──▶ close counters ──▶ /metrics
//! ```
//!
//! Nothing here holds a lock the engine needs, and nothing here runs on the engine's thread:
//! a page view is an inspection message that copies what it shows ([`views::snapshot`]), and
//! every wait for the engine is bounded ([`bridge`]). The module layout:
//!
//! - [`server`]: hyper's HTTP/1.1 server on its own runtime, with the bounds of a hostile LAN;
//! - [`hosts`]: the `Host` allow-list (DNS rebinding);
//! - [`api`]: routing, credentials, the endpoints (see `docs/api.md`, `docs/openapi.yaml`);
//! - [`auth`]: bearer token, sessions, CSRF, origin check;
//! - [`views`]: snapshots and their JSON;
//! - [`metrics`]: `/metrics` (see `docs/metrics.md`);
//! - [`watch`], [`notify`]: change detection and delivery.

pub mod api;
pub mod auth;
pub mod bridge;
pub mod hosts;
pub mod metrics;
pub mod notify;
pub mod server;
mod store;
pub mod views;
pub mod watch;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::bus::EngineHandle;
use crate::net::dns::DnsConfig;

/// Durability of what the API changes, provided by the store.
///
/// The API answers `201` to a registration (and `200` to a level change, a withdrawal or a
/// resolve) only after [`Journal::sync`] returned: the store journals the engine's accepted
/// commands, and `sync` is the barrier that says they are on disk. Without a journal
/// (`None` in [`spawn`]) the API answers as soon as the engine accepted the command.
pub trait Journal: Send + Sync {
    /// Blocks until everything the engine has accepted so far is on disk, at most `timeout`.
    fn sync(&self, timeout: Duration) -> Result<(), String>;
    /// Whether the store can take writes now (`/ready`).
    fn writable(&self) -> Result<(), String>;
    /// Size of the journal in bytes (`tickguard_journal_bytes`).
    fn bytes(&self) -> Option<u64>;
    /// Fsyncs of the journal and times a writer waited for room in the writer thread's queue
    /// (`tickguard_journal_fsyncs_total`, `tickguard_journal_queue_waits_total`).
    fn counters(&self) -> Option<(u64, u64)> {
        None
    }
    /// How and when (Unix ms) the position with this id closed, if it ever did: remembered
    /// after the position itself is pruned, so a closed id is never registered again.
    fn closed(&self, _id: &str) -> Option<(&'static str, u64)> {
        None
    }
    /// Records a position's Upstox product (durable before returning `Ok`).
    fn product(&self, _id: &str, _product: &str) -> Result<(), String> {
        Ok(())
    }
    /// The product journaled for a position, if any.
    fn product_of(&self, _id: &str) -> Option<String> {
        None
    }
}

/// What the venue says of a symbol (the venue's full list, kept in the state directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolVerdict {
    /// On the venue's list and trading.
    Traded,
    /// Not on the list, or not trading.
    NotTraded,
    /// No list known yet (first start during an outage): accepted, watched, and caught by
    /// the blind rule if it never prices.
    Unverified,
}

/// How registrations' symbols are checked at the door.
#[derive(Clone)]
pub struct SymbolGate {
    /// The venue's name (`binance`).
    pub venue: &'static str,
    /// The venue's symbols are case-free: registrations are upper-cased.
    pub uppercase: bool,
    /// The check.
    pub check: Arc<dyn Fn(&str) -> SymbolVerdict + Send + Sync>,
}

impl std::fmt::Debug for SymbolGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SymbolGate({})", self.venue)
    }
}

/// Where the Upstox `product` of a position registered through the API goes: the Upstox
/// broker's `set_product`, so its closing order uses the position's product.
#[derive(Clone)]
pub struct ProductSink(pub Arc<ProductFn>);

/// The callback of a [`ProductSink`]: position id and product.
pub type ProductFn = dyn Fn(&str, crate::broker::upstox::Product) + Send + Sync;

impl std::fmt::Debug for ProductSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProductSink")
    }
}

/// How `/ready` checks the store when no [`Journal`] is attached.
#[derive(Clone, Debug)]
pub enum StoreProbe {
    /// Nothing to check: this mode keeps no state (the demo).
    None,
    /// The state directory must exist and take a file.
    Dir(PathBuf),
}

impl StoreProbe {
    /// Checks the store: creates and removes a probe file in the directory.
    pub fn check(&self) -> Result<(), String> {
        let StoreProbe::Dir(dir) = self else { return Ok(()) };
        if !dir.is_dir() {
            return Err(format!("store.dir {} does not exist", dir.display()));
        }
        let probe = dir.join(format!(".ready-probe-{}", std::process::id()));
        std::fs::write(&probe, b"ok")
            .map_err(|e| format!("store.dir {} does not take writes: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}

/// Settings of the control plane.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Listen address (`api.listen`).
    pub listen: SocketAddr,
    /// The API token (content of `api.token_file`).
    pub token: Option<String>,
    /// `api.protect_reads`.
    pub protect_reads: bool,
    /// `api.tls_cert` and `api.tls_key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The store check of `/ready`.
    pub store: StoreProbe,
    /// `feed.venue`.
    pub venue: &'static str,
    /// Notification channels.
    pub notify: Vec<notify::Target>,
    /// Name resolution for the notification channels.
    pub dns: DnsConfig,
    /// `tls.extra_ca`, for the notification channels.
    pub extra_ca: Option<PathBuf>,
    /// Server bounds.
    pub limits: server::Limits,
    /// Where registrations' `product` goes (the Upstox broker), if anywhere.
    pub products: Option<ProductSink>,
    /// How registrations' symbols are checked (Binance: the venue's list), if at all.
    pub symbols: Option<SymbolGate>,
    /// A side the broker cannot close (Binance spot: a short), refused at registration with
    /// the broker's own reason: the one short-refusal rule (`broker::binance::check_side`)
    /// that the configuration's positions and the broker's `place` apply too.
    pub side_rule: Option<crate::core::spec::SideRule>,
    /// `api.allowed_hosts`: the `Host` values served. `None`: the default set (localhost,
    /// 127.0.0.1, [::1], every address of the box's interfaces and its host names, each with
    /// and without the port), recomputed as interfaces change.
    pub allowed_hosts: Option<Vec<String>>,
    /// `api.protect_metrics`: `/metrics` needs the token.
    pub protect_metrics: bool,
    /// `api.hsts`: send `Strict-Transport-Security` over TLS.
    pub hsts: bool,
    /// How long a `/ready` answer is reused ([`api::READY_EVERY`]).
    pub ready_every: Duration,
    /// A configuration problem of the API's transport or token that made `run` fall back to
    /// serving on loopback only (the text names the key and the fix). Shown as an alarm on
    /// `/ready`, `/health`, `/metrics` and the page while it lasts.
    pub alarm: Option<String>,
}

impl ControlConfig {
    /// A plain-HTTP control plane on `listen` with these credentials and no notifications.
    pub fn new(listen: SocketAddr, token: Option<String>) -> ControlConfig {
        ControlConfig {
            listen,
            token,
            protect_reads: false,
            tls: None,
            store: StoreProbe::None,
            venue: "sim",
            notify: Vec::new(),
            dns: DnsConfig::default(),
            extra_ca: None,
            limits: server::Limits::default(),
            products: None,
            symbols: None,
            side_rule: None,
            allowed_hosts: None,
            protect_metrics: false,
            hsts: false,
            alarm: None,
            ready_every: api::READY_EVERY,
        }
    }
}

/// The running control plane. Dropping it stops the server, the watcher and the channels.
pub struct Control {
    server: Arc<Mutex<Option<server::Server>>>,
    binder: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    watcher: watch::Watcher,
    /// Shared counters (close counters, notifier).
    pub watch: Arc<watch::WatchState>,
    remove_on_drop: Option<PathBuf>,
}

impl Control {
    /// The address the API listens on, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.lock().ok()?.as_ref().map(server::Server::local_addr)
    }

    /// Removes `path` when the control plane stops (the demo's token file).
    pub fn remove_on_drop(&mut self, path: PathBuf) {
        self.remove_on_drop = Some(path);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(b) = self.binder.take() {
            let _ = b.join();
        }
        if let Ok(mut s) = self.server.lock() {
            if let Some(mut s) = s.take() {
                s.stop();
            }
        }
        self.watcher.stop();
        if let Some(p) = self.remove_on_drop.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How often a failed bind is retried.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// Starts the control plane. A configuration problem (TLS files, notification channels) is
/// an error; an address that cannot be bound yet is logged and retried every
/// [`BIND_RETRY`] in the background, so the appliance protects positions even when its API
/// cannot listen.
pub fn spawn(
    cfg: ControlConfig,
    engine: EngineHandle,
    journal: Option<Arc<dyn Journal>>,
) -> Result<Control, String> {
    let tls = match &cfg.tls {
        Some((cert, key)) => Some(server::tls_config(cert, key)?),
        None => None,
    };
    let mut notifier = notify::Notifier::default();
    for t in &cfg.notify {
        notifier.channels.push(notify::Channel::start(t.clone(), cfg.dns.clone(), cfg.extra_ca.as_deref())?);
    }
    let watch_state = Arc::new(watch::WatchState { notifier, ..Default::default() });
    let bridge = bridge::Bridge::new(engine, Duration::from_secs(2));
    let api = Arc::new(api::Api::new(api::ApiConfig {
        bridge: bridge.clone(),
        token: cfg.token.clone(),
        protect_reads: cfg.protect_reads,
        protect_metrics: cfg.protect_metrics,
        alarm: cfg.alarm.clone(),
        ready_every: cfg.ready_every,
        journal,
        store: cfg.store.clone(),
        venue: cfg.venue,
        watch: watch_state.clone(),
        products: cfg.products.clone(),
        symbols: cfg.symbols.clone(),
        side_rule: cfg.side_rule,
    }));
    let watcher = watch::Watcher::start(bridge, watch_state.clone()).map_err(|e| e.to_string())?;
    let server: Arc<Mutex<Option<server::Server>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let start = {
        let (api, limits, tls) = (api.clone(), cfg.limits.clone(), tls.clone());
        let opts = server::Options { allowed_hosts: cfg.allowed_hosts.clone(), hsts: cfg.hsts };
        move |listener: TcpListener| -> Result<server::Server, String> {
            let s = server::serve(listener, tls.clone(), limits.clone(), api.clone(), opts.clone())
                .map_err(|e| e.to_string())?;
            api.set_http_stats(s.stats.clone());
            log::info!("[API] listening on {scheme}://{}/", s.local_addr());
            Ok(s)
        }
    };
    let mut binder = None;
    match TcpListener::bind(cfg.listen) {
        Ok(l) => {
            let s = start(l)?;
            if let Ok(mut slot) = server.lock() {
                *slot = Some(s);
            }
        }
        Err(e) => {
            log::error!(
                "[API] cannot listen on {}: {e}; protection runs without the API, retrying every {} s",
                cfg.listen,
                BIND_RETRY.as_secs()
            );
            let (server, stop, listen) = (server.clone(), stop.clone(), cfg.listen);
            binder = Some(
                std::thread::Builder::new()
                    .name("tg-http-bind".into())
                    .spawn(move || {
                        while !stop.load(Ordering::SeqCst) {
                            for _ in 0..(BIND_RETRY.as_millis() / 100) {
                                if stop.load(Ordering::SeqCst) {
                                    return;
                                }
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            if let Ok(l) = TcpListener::bind(listen) {
                                match start(l) {
                                    Ok(s) => {
                                        if let Ok(mut slot) = server.lock() {
                                            *slot = Some(s);
                                        }
                                    }
                                    Err(e) => log::error!("[API] cannot serve on {listen}: {e}"),
                                }
                                return;
                            }
                        }
                    })
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    Ok(Control { server, binder, stop, watcher, watch: watch_state, remove_on_drop: None })
}

/// The control plane of `tickguard demo`: a random token written to a file only this user can
/// read (its path is printed), the page on `listen`.
pub fn spawn_demo(listen: SocketAddr, engine: EngineHandle) -> Result<Control, String> {
    let token = auth::random_hex(24).ok_or("no randomness from the OS for the demo token")?;
    // A random name, created new: another user of a shared /tmp can neither guess the path
    // nor plant a file (or a symlink) there for the demo to write its token into.
    let name = auth::random_hex(8).ok_or("no randomness from the OS for the demo token")?;
    let path = std::env::temp_dir().join(format!("tickguard-demo-{name}.token"));
    write_private(&path, &token)
        .map_err(|e| format!("cannot write the demo token to {}: {e}", path.display()))?;
    let mut c = spawn(ControlConfig::new(listen, Some(token)), engine, None)?;
    c.remove_on_drop(path.clone());
    println!("  status page: http://{listen}/  (log in with the token in {})", path.display());
    Ok(c)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")
}
