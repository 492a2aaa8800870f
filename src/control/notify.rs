//! Notifications that reach a person: JSON to a webhook and/or a Telegram chat.
//!
//! Each channel has a bounded queue ([`QUEUE`] events) and one thread of its own with a small
//! tokio runtime for the HTTP client (the project's DNS-fallback and TLS stack). Pushing an
//! event never blocks on the network: when the queue is full, the oldest event is dropped and
//! counted. Delivery is retried with backoff ([`RETRY_DELAYS`]); an event that still fails is
//! counted and dropped. Nothing here touches the engine: events come from the watcher
//! ([`super::watch`]), which reads the engine through one inspection per period.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::net::dns::{DnsConfig, Resolver};
use crate::net::http::{self, Connector, Endpoint, Req};
use crate::net::tls::TlsClient;

/// Events waiting per channel; beyond it the oldest is dropped.
pub const QUEUE: usize = 64;
/// Delays between delivery attempts of one event (then it is given up).
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
    Duration::from_secs(30),
];
/// Bound of one delivery attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The live feed has been down for a while.
    FeedDown,
    /// The live feed is back after a `FeedDown`.
    FeedUp,
    /// Names were resolved through the fallback servers or the last-good cache.
    DnsFallback,
    /// A position has no usable price and no working source.
    Blind,
    /// A position was closed.
    CloseDone,
    /// A close failed `max_close_attempts` times: a person is needed.
    CloseFailed,
}

impl EventKind {
    /// `feed_down`, `feed_up`, `dns_fallback`, `blind`, `close_done`, `close_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::FeedDown => "feed_down",
            EventKind::FeedUp => "feed_up",
            EventKind::DnsFallback => "dns_fallback",
            EventKind::Blind => "blind",
            EventKind::CloseDone => "close_done",
            EventKind::CloseFailed => "close_failed",
        }
    }
    /// `info`, `warning` or `critical`.
    pub fn severity(self) -> &'static str {
        match self {
            EventKind::FeedUp | EventKind::CloseDone => "info",
            EventKind::FeedDown | EventKind::DnsFallback => "warning",
            EventKind::Blind | EventKind::CloseFailed => "critical",
        }
    }
}

/// One notification.
#[derive(Clone, Debug)]
pub struct Event {
    /// What.
    pub kind: EventKind,
    /// One line for a person.
    pub text: String,
    /// Details (`id`, `symbol`, prices...).
    pub fields: Map<String, Value>,
    /// When it was noticed.
    pub at: SystemTime,
}

impl Event {
    /// The webhook body: `event`, `severity`, `text`, `timestamp`, `appliance` and the fields.
    pub fn webhook_json(&self) -> Value {
        let mut m = self.fields.clone();
        m.insert("event".into(), json!(self.kind.as_str()));
        m.insert("severity".into(), json!(self.kind.severity()));
        m.insert("text".into(), json!(self.text));
        m.insert("timestamp".into(), json!(super::views::iso8601(self.at)));
        m.insert("appliance".into(), json!(concat!("tickguard ", env!("CARGO_PKG_VERSION"))));
        Value::Object(m)
    }
    /// The Telegram message text.
    pub fn telegram_text(&self) -> String {
        let icon = match self.kind.severity() {
            "critical" => "\u{1F6A8}",
            "warning" => "\u{26A0}\u{FE0F}",
            _ => "\u{2705}",
        };
        format!("{icon} tickguard: {}", self.text)
    }
}

/// Counters of one channel.
#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Events delivered.
    pub sent: AtomicU64,
    /// Events given up after every retry.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Delivery attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Events waiting now.
    pub queued: AtomicU64,
}

/// Where a channel delivers.
#[derive(Clone, Debug)]
pub enum Target {
    /// POST the event's JSON to this URL.
    Webhook(String),
    /// Telegram's `sendMessage`.
    Telegram {
        /// Bot API base URL (`https://api.telegram.org`).
        api_url: String,
        /// Bot token (never logged).
        token: String,
        /// Chat id.
        chat_id: String,
    },
}

impl Target {
    /// `webhook` or `telegram`.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Webhook(_) => "webhook",
            Target::Telegram { .. } => "telegram",
        }
    }
}

struct Queue {
    events: Mutex<VecDeque<Event>>,
    ready: Condvar,
}

/// One delivery channel: its queue, its thread and its counters.
pub struct Channel {
    target_name: &'static str,
    queue: Arc<Queue>,
    /// Counters.
    pub stats: Arc<ChannelStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Channel {
    /// Starts the channel's thread.
    pub fn start(
        target: Target,
        dns: DnsConfig,
        extra_ca: Option<&std::path::Path>,
    ) -> Result<Channel, String> {
        let tls = TlsClient::new(extra_ca).map_err(|e| e.to_string())?;
        let url = match &target {
            Target::Webhook(u) => u.clone(),
            Target::Telegram { api_url, .. } => api_url.clone(),
        };
        let base = Endpoint::parse(&url).map_err(|e| format!("notify: {e}"))?;
        let connector = Connector {
            resolver: Arc::new(Resolver::new(dns)),
            tls,
            connect_timeout: Duration::from_secs(3),
            fresh: Duration::from_secs(300),
        };
        let queue =
            Arc::new(Queue { events: Mutex::new(VecDeque::with_capacity(QUEUE)), ready: Condvar::new() });
        let stats = Arc::new(ChannelStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let name = target.name();
        let thread = {
            let (queue, stats, stop) = (queue.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("tg-notify-{name}"))
                .spawn(move || deliver_loop(target, base, connector, &queue, &stats, &stop))
                .map_err(|e| e.to_string())?
        };
        Ok(Channel { target_name: name, queue, stats, stop, thread: Some(thread) })
    }

    /// `webhook` or `telegram`.
    pub fn name(&self) -> &'static str {
        self.target_name
    }

    /// Queues an event; drops the oldest when full. Never waits for the network.
    pub fn push(&self, ev: Event) {
        let Ok(mut q) = self.queue.events.lock() else { return };
        if q.len() >= QUEUE {
            q.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(ev);
        self.stats.queued.store(q.len() as u64, Ordering::Relaxed);
        drop(q);
        self.queue.ready.notify_one();
    }

    /// Stops the thread (an attempt in flight ends within its timeout).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.queue.ready.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sleeps `d` unless `stop` is set; returns false when stopped.
fn pause(queue: &Queue, stop: &AtomicBool, d: Duration) -> bool {
    let deadline = crate::bus::clock::mono_std() + d;
    let Ok(mut g) = queue.events.lock() else { return false };
    while !stop.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(crate::bus::clock::mono_std());
        if left.is_zero() {
            return true;
        }
        g = match queue.ready.wait_timeout(g, left) {
            Ok((g, _)) => g,
            Err(_) => return false,
        };
    }
    false
}

fn deliver_loop(
    target: Target,
    base: Endpoint,
    connector: Connector,
    queue: &Queue,
    stats: &ChannelStats,
    stop: &AtomicBool,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("[NOTIFY] channel={} event=start_failed cause=\"{e}\"", target.name());
            return;
        }
    };
    loop {
        let ev = {
            let Ok(mut q) = queue.events.lock() else { return };
            loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(ev) = q.pop_front() {
                    stats.queued.store(q.len() as u64, Ordering::Relaxed);
                    break ev;
                }
                q = match queue.ready.wait_timeout(q, Duration::from_millis(500)) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
        };
        let mut attempt = 0usize;
        loop {
            let result = rt.block_on(post(&target, &base, &connector, &ev));
            match result {
                Ok(()) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "[NOTIFY] channel={} event={} delivered attempts={}",
                        target.name(),
                        ev.kind.as_str(),
                        attempt + 1
                    );
                    break;
                }
                Err((why, retry_after)) => {
                    let Some(delay) = RETRY_DELAYS.get(attempt) else {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        log::warn!(
                            "[NOTIFY] channel={} event={} gave_up attempts={} cause=\"{why}\"",
                            target.name(),
                            ev.kind.as_str(),
                            attempt + 1
                        );
                        break;
                    };
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = retry_after.map_or(*delay, |r| r.clamp(*delay, Duration::from_secs(120)));
                    log::debug!(
                        "[NOTIFY] channel={} event={} retry_in_ms={} cause=\"{why}\"",
                        target.name(),
                        ev.kind.as_str(),
                        delay.as_millis()
                    );
                    attempt += 1;
                    if !pause(queue, stop, delay) {
                        return;
                    }
                }
            }
        }
    }
}

async fn post(
    target: &Target,
    base: &Endpoint,
    connector: &Connector,
    ev: &Event,
) -> Result<(), (String, Option<Duration>)> {
    let (path, body) = match target {
        Target::Webhook(_) => (base.path.clone(), ev.webhook_json()),
        Target::Telegram { token, chat_id, .. } => {
            let prefix = base.path.trim_end_matches('/');
            (
                format!("{prefix}/bot{token}/sendMessage"),
                json!({"chat_id": chat_id, "text": ev.telegram_text(), "disable_web_page_preview": true}),
            )
        }
    };
    let body = serde_json::to_vec(&body).map_err(|e| (e.to_string(), None))?;
    let req = Req {
        method: "POST",
        path: &path,
        headers: &[("content-type", "application/json")],
        body: Some(Bytes::from(body)),
        timeout: ATTEMPT_TIMEOUT,
        max_body: 16 * 1024,
    };
    match http::request(connector, base, req).await {
        Ok(a) if (200..300).contains(&a.status) => Ok(()),
        Ok(a) => Err((format!("HTTP {}", a.status), a.retry_after.map(Duration::from_secs))),
        // The error names the host, never the path (which holds the Telegram token).
        Err(e) => Err((e.to_string(), None)),
    }
}

/// The channels, fed by the watcher.
#[derive(Default)]
pub struct Notifier {
    /// The configured channels.
    pub channels: Vec<Channel>,
    /// Events produced, by kind (whether or not any channel is configured).
    pub produced: [AtomicU64; 6],
}

impl Notifier {
    /// Sends `ev` to every channel and logs it.
    pub fn notify(&self, ev: Event) {
        let i = match ev.kind {
            EventKind::FeedDown => 0,
            EventKind::FeedUp => 1,
            EventKind::DnsFallback => 2,
            EventKind::Blind => 3,
            EventKind::CloseDone => 4,
            EventKind::CloseFailed => 5,
        };
        self.produced[i].fetch_add(1, Ordering::Relaxed);
        log::info!(
            "[NOTIFY] event={} severity={} text=\"{}\"",
            ev.kind.as_str(),
            ev.kind.severity(),
            ev.text.replace('"', "'")
        );
        if let Some((last, rest)) = self.channels.split_last() {
            for c in rest {
                c.push(ev.clone());
            }
            last.push(ev);
        }
    }
}

/// The kinds in the order of [`Notifier::produced`].
pub const KINDS: [EventKind; 6] = [
    EventKind::FeedDown,
    EventKind::FeedUp,
    EventKind::DnsFallback,
    EventKind::Blind,
    EventKind::CloseDone,
    EventKind::CloseFailed,
];
