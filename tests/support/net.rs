//! Shared plumbing: a loopback TCP accept loop that can stop listening ("refuse") and resume on
//! the same port, and a task guard that aborts on drop.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Most connection tasks one server keeps at once; further connections are reset.
pub const MAX_LIVE_CONNECTIONS: usize = 256;
/// Attempts (10 ms apart) to bind the same port again after a "refuse" period.
const REBIND_ATTEMPTS: usize = 200;

/// Aborts the task when dropped.
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a TCP listener on `127.0.0.1:0`.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("bind 127.0.0.1:0")
}

/// Resets a TCP connection: `SO_LINGER` 0, then drop (the kernel sends RST).
pub fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
    drop(tcp);
}

/// Runs an accept loop on `listener` (bound to 127.0.0.1) until the task is aborted.
///
/// While `*refuse.borrow()` is true the listener is closed (connects get ECONNREFUSED) and
/// `listening` is false; when it turns false again the loop binds the same port again. A
/// connection accepted while refusing (a race with the switch) is reset. Each accepted connection
/// is handed to `serve` and runs in a `JoinSet` owned by this loop, so aborting the loop's task
/// aborts every connection task too.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    mut refuse: watch::Receiver<bool>,
    listening: Arc<AtomicBool>,
    mut serve: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(_) => return,
    };
    let mut listener = Some(listener);
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let refusing = *refuse.borrow_and_update();
        if refusing {
            if listener.take().is_some() {
                log::debug!("test server 127.0.0.1:{port}: refusing (listener closed)");
            }
            listening.store(false, Ordering::SeqCst);
            if refuse.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = listener.as_ref() else {
            match rebind(port).await {
                Some(l) => {
                    listener = Some(l);
                    listening.store(true, Ordering::SeqCst);
                    continue;
                }
                None => {
                    log::error!("test server: could not bind 127.0.0.1:{port} again");
                    return;
                }
            }
        };
        listening.store(true, Ordering::SeqCst);
        tokio::select! {
            r = l.accept() => match r {
                Ok((tcp, _peer)) => {
                    if *refuse.borrow() || tasks.len() >= MAX_LIVE_CONNECTIONS {
                        reset(tcp);
                    } else {
                        let _ = tcp.set_nodelay(true);
                        tasks.spawn(serve(tcp));
                    }
                }
                Err(e) => {
                    log::debug!("test server 127.0.0.1:{port}: accept error {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            r = refuse.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

async fn rebind(port: u16) -> Option<TcpListener> {
    for _ in 0..REBIND_ATTEMPTS {
        if let Ok(l) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
