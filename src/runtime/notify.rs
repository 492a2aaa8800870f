//! The systemd notification protocol (`sd_notify`), written here over a Unix datagram socket
//! with the standard library only.
//!
//! - `READY=1` once start-up is done, **whatever the feed's state**: a box that boots during an
//!   outage must still guard, blink and alert.
//! - `STATUS=` with the alarm, the positions per ladder rung and the feed state, when it changes.
//! - `WATCHDOG=1` every `WATCHDOG_USEC / 4`, **only while the engine loop is turning**: each
//!   period the notifier sends the engine an empty look (which makes a live loop turn) and
//!   compares [`Status::engine_turns`](super::status::Status::engine_turns) with the last
//!   period's. A stalled loop gets no keep-alive, and systemd restarts the service after
//!   `WatchdogSec=`.
//! - `STOPPING=1` as the graceful stop begins.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) nothing is sent, but a stalled engine loop
//! is still logged (`[WATCHDOG] event=engine_stalled`).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{AppEngine, EngineHandle, Request};
use crate::core::time::Timestamp;
use crate::core::types::Rung;

/// Period of the stall check and of `STATUS=` updates when systemd asks for no watchdog.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest period of the stall check, whatever `WATCHDOG_USEC` says.
pub const MAX_CHECK_EVERY: Duration = Duration::from_secs(5);
/// Shortest period of the stall check, whatever `WATCHDOG_USEC` says.
pub const MIN_CHECK_EVERY: Duration = Duration::from_millis(20);
/// How long one notification may block the runtime before it is given up.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// The notification socket, when systemd gave one.
#[derive(Debug)]
struct Sink {
    sock: UnixDatagram,
    addr: SocketAddr,
    shown: String,
}

/// Sends notifications to systemd and keeps its watchdog fed while the engine loop turns.
/// Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    sink: Option<Arc<Sink>>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the process environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok();
        Notifier::from_vars(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// From the values of the three variables (`None`: unset) for the process `pid`. Bad
    /// values are logged and ignored: notifications are never a reason not to guard.
    pub fn from_vars(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let sink = notify_socket.filter(|s| !s.is_empty()).and_then(|s| match open(s) {
            Ok(sink) => Some(Arc::new(sink)),
            Err(e) => {
                log::warn!("[SYSTEMD] event=disabled socket={s:?} error=\"{e}\"");
                None
            }
        });
        let for_us = match watchdog_pid.map(str::trim) {
            None | Some("") => true,
            Some(p) => p.parse::<u32>().is_ok_and(|p| p == pid),
        };
        let watchdog = match watchdog_usec.map(str::trim) {
            None | Some("") => None,
            Some(_) if !for_us => None,
            Some(v) => match v.parse::<u64>() {
                Ok(us) if us > 0 => Some(Duration::from_micros(us)),
                _ => {
                    log::warn!("[SYSTEMD] event=bad_watchdog_usec value={v:?} (ignored)");
                    None
                }
            },
        };
        Notifier { sink, watchdog }
    }

    /// Whether systemd gave a notification socket.
    pub fn is_connected(&self) -> bool {
        self.sink.is_some()
    }

    /// The watchdog interval systemd asked for.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The period of the stall check and keep-alive: a quarter of the watchdog interval. A
    /// keep-alive reports the turns since the previous check, so the last one can follow a
    /// stall by up to one period: systemd then fires within 1.25 intervals of the stall.
    pub fn check_every(&self) -> Duration {
        self.watchdog.map_or(CHECK_EVERY, |w| (w / 4).clamp(MIN_CHECK_EVERY, MAX_CHECK_EVERY))
    }

    /// Sends one notification (newline-separated `KEY=value` lines). Without a socket, does
    /// nothing.
    pub fn notify(&self, msg: &str) -> io::Result<()> {
        match &self.sink {
            Some(s) => s.sock.send_to_addr(msg.as_bytes(), &s.addr).map(|_| ()),
            None => Ok(()),
        }
    }

    fn send(&self, msg: &str) {
        if let Err(e) = self.notify(msg) {
            let what = msg.lines().next().unwrap_or("");
            log::warn!("[SYSTEMD] event=send_failed message={what:?} error=\"{e}\"");
        }
    }

    /// `READY=1` with a status line: start-up is done.
    pub fn ready(&self, status: &str) {
        if let Some(s) = &self.sink {
            log::info!(
                "[SYSTEMD] event=ready socket={} watchdog_ms={}",
                s.shown,
                self.watchdog.map_or(0, |w| w.as_millis())
            );
        }
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// Feeds the watchdog while the engine loop turns and keeps `STATUS=` current, until
    /// `stop` fires; then sends `STOPPING=1`.
    pub async fn run(self, handle: EngineHandle, mut stop: watch::Receiver<bool>) {
        let every = self.check_every();
        let mut last_turns = handle.status.engine_turns.load(Ordering::Relaxed);
        let mut stalled_since: Option<Instant> = None;
        let mut last_status = String::new();
        let mut next_status = crate::bus::clock::mono();
        loop {
            poke(&handle);
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let turns = handle.status.engine_turns.load(Ordering::Relaxed);
            if turns != last_turns {
                last_turns = turns;
                if let Some(since) = stalled_since.take() {
                    log::warn!("[WATCHDOG] event=engine_resumed stalled_ms={}", since.elapsed().as_millis());
                }
                if self.watchdog.is_some() {
                    self.send("WATCHDOG=1");
                }
            } else if stalled_since.is_none() {
                stalled_since = Some(crate::bus::clock::mono());
                log::error!(
                    "[WATCHDOG] event=engine_stalled turns={turns} (the engine loop stopped turning; {})",
                    if self.watchdog.is_some() {
                        "keep-alives withheld, systemd will restart the service"
                    } else {
                        "no systemd watchdog to restart it"
                    }
                );
                self.send("STATUS=engine loop stalled: protection is not running; awaiting the watchdog");
                last_status.clear();
            }
            if stalled_since.is_none() && self.sink.is_some() && crate::bus::clock::mono() >= next_status {
                next_status = crate::bus::clock::mono() + CHECK_EVERY;
                let look = handle.inspect(status_line);
                if let Ok(Some(s)) = tokio::time::timeout(every, look).await {
                    if s != last_status {
                        self.send(&format!("STATUS={}", one_line(&s)));
                        last_status = s;
                    }
                }
            }
        }
        log::info!("[SYSTEMD] event=stopping");
        self.send("STOPPING=1\nSTATUS=stopping: finishing closes in flight");
    }
}

/// Makes a live engine loop turn once: an empty look, dropped if the queue is full (the loop
/// then has work anyway).
fn poke(handle: &EngineHandle) {
    let _ = handle.requests.try_send(Request::Inspect(Box::new(|_, _| {})));
}

/// The `STATUS=` line: alarm, open positions per rung, closes in trouble, feed state.
pub fn status_line(e: &AppEngine, now: Timestamp) -> String {
    let (alarm, silenced) = e.alarm(now);
    let mut rungs = [0u32; 4];
    let mut open = 0u32;
    let mut closing = 0u32;
    for (_, p) in e.book().iter() {
        if p.state.is_terminal() {
            continue;
        }
        open += 1;
        if p.state.closing().is_some() {
            closing += 1;
        }
        let i = match e.rung(p.instrument, now) {
            Rung::Live => 0,
            Rung::Rest => 1,
            Rung::Cache => 2,
            Rung::Blind => 3,
        };
        rungs[i] += 1;
    }
    let alarm = match alarm {
        crate::core::engine::Alarm::CloseFailed => "CLOSE FAILED",
        crate::core::engine::Alarm::Blind => "BLIND",
        crate::core::engine::Alarm::Stale => "stale",
        crate::core::engine::Alarm::Live => "live",
    };
    format!(
        "{alarm}{}: {open} open position(s) on live {} / rest {} / cache {} / blind {}{}; feed {}",
        if silenced { " (silenced)" } else { "" },
        rungs[0],
        rungs[1],
        rungs[2],
        rungs[3],
        if closing > 0 { format!(", {closing} closing") } else { String::new() },
        if e.feed_connected() { "up" } else { "down" }
    )
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn open(spec: &str) -> io::Result<Sink> {
    let addr = if let Some(name) = spec.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())?
    } else if spec.starts_with('/') {
        SocketAddr::from_pathname(spec)?
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only absolute paths and @abstract names are supported",
        ));
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    Ok(Sink { sock, addr, shown: spec.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_from_the_environment() {
        let n = Notifier::from_vars(None, Some("4000000"), None, 7);
        assert_eq!(n.watchdog(), Some(Duration::from_secs(4)));
        assert_eq!(n.check_every(), Duration::from_secs(1));
        assert!(!n.is_connected());
        // For another process: not ours to feed.
        assert_eq!(Notifier::from_vars(None, Some("4000000"), Some("8"), 7).watchdog(), None);
        assert!(Notifier::from_vars(None, Some("4000000"), Some("7"), 7).watchdog().is_some());
        assert_eq!(Notifier::from_vars(None, Some("soon"), None, 7).watchdog(), None);
        assert_eq!(Notifier::from_vars(None, Some("0"), None, 7).watchdog(), None);
        assert_eq!(Notifier::from_vars(None, None, None, 7).check_every(), CHECK_EVERY);
        assert_eq!(Notifier::from_vars(None, Some("60000000"), None, 7).check_every(), MAX_CHECK_EVERY);
        assert_eq!(
            Notifier::from_vars(None, Some("10000000"), None, 7).check_every(),
            Duration::from_millis(2500)
        );
        assert_eq!(Notifier::from_vars(None, Some("1000"), None, 7).check_every(), MIN_CHECK_EVERY);
    }

    #[test]
    fn sends_datagrams_to_a_path_and_an_abstract_socket() {
        let dir = std::env::temp_dir().join(format!("tg-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_vars(path.to_str(), None, None, 1);
        assert!(n.is_connected());
        n.ready("starting\nsecond line");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=starting second line");
        let _ = std::fs::remove_dir_all(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("tickguard-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None, 1);
        n.notify("WATCHDOG=1").expect("send");
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn unsupported_sockets_disable_notifications_without_failing() {
        let n = Notifier::from_vars(Some("vsock:2:1234"), Some("1000000"), None, 1);
        assert!(!n.is_connected());
        assert!(n.notify("READY=1").is_ok());
    }
}
