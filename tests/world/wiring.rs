//! The real runtime wiring (`tickguard::runtime::app::run_with_edges`: journal, restore, watch
//! set, engine task, broker executor, reconciliation, control plane with its real HTTP API)
//! with the world's fake edges, one "life" at a time.

use std::sync::Arc;
use std::time::Duration;

use tickguard::config::Config;
use tickguard::control::{SymbolGate, SymbolVerdict};
use tickguard::runtime::EngineHandle;
use tickguard::runtime::app::{EdgeWiring, Edges, run_with_edges};
use tokio::sync::{oneshot, watch};

use crate::feed::{self, Feed, FeedParams};
use crate::venue::{FakeBroker, Venue};

/// One running life of the appliance.
pub struct Life {
    pub handle: EngineHandle,
    pub addr: std::net::SocketAddr,
    stop_tx: watch::Sender<bool>,
}

/// A free port on 127.0.0.1 for the control plane (bound, read, released).
fn free_port() -> Result<std::net::SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

/// Starts the wiring; `Err` names what failed at start-up. `list_known`: whether the venue's
/// symbol list is known (else every symbol is "unverified", a first start during an outage).
pub async fn start(cfg: &Config, venue: &Venue, feed_state: &Feed, list_known: bool) -> Result<Life, String> {
    let mut cfg = cfg.clone();
    cfg.api.listen = free_port()?;
    venue.begin_life();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel();
    let params = FeedParams {
        frame_every: Duration::from_secs(1),
        silence_timeout: cfg.feed.silence_timeout,
        rest_poll: cfg.feed.rest_poll,
    };
    let (v, f) = (venue.clone(), feed_state.clone());
    let spawn = Box::new(move |w: EdgeWiring| {
        v.set_clock(w.clock);
        vec![tokio::spawn(feed::run(f, v, params, w.engine, w.clock, w.instruments, w.added, w.stop))]
    });
    let gv = venue.clone();
    let gate = SymbolGate {
        venue: "binance",
        uppercase: true,
        check: Arc::new(move |s: &str| {
            if !list_known {
                SymbolVerdict::Unverified
            } else if gv.price(s).is_some() {
                SymbolVerdict::Traded
            } else {
                SymbolVerdict::NotTraded
            }
        }),
    };
    let edges = Edges {
        broker: Arc::new(FakeBroker(venue.clone())),
        spawn,
        reconcile: true,
        products: None,
        symbols: Some(gate),
        recovered: None,
        // `/ready` exact at every step: the probe cache is a real-time rate limit, and this
        // world runs minutes of virtual time in milliseconds (the cache: tests/control_api.rs).
        ready_every: Some(Duration::ZERO),
    };
    let addr = cfg.api.listen;
    tokio::spawn(async move {
        let code = run_with_edges(cfg, stop_rx, Some(ready_tx), edges).await;
        log::info!("world: run_with_edges ended: {code:?}");
    });
    let handle = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
        Ok(Ok(h)) => h,
        Ok(Err(_)) => return Err("run_with_edges ended before it was ready (start-up error)".into()),
        Err(_) => return Err("run_with_edges not ready within 60 s".into()),
    };
    Ok(Life { handle, addr, stop_tx })
}

impl Life {
    /// Ends this life. `graceful`: as on SIGTERM (the stop signal, then a moment for the tasks
    /// to end); else as kill -9: nothing more runs once the caller drops the runtime (after
    /// in-flight journal writes on blocking threads finish: tokio's paused clock waits for them).
    pub async fn stop(self, graceful: bool) {
        if graceful {
            let _ = self.stop_tx.send(true);
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
