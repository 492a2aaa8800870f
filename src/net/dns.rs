//! Name resolution that survives a DNS outage.
//!
//! Every host the appliance needs is resolved at start-up and refreshed in the background
//! ([`Resolver::refresh_loop`]), so an outage finds a last-good address already in hand.
//! A resolution tries the system resolver first (the nameservers of `dns.resolv_conf`, when
//! `dns.use_system`), then each of `dns.nameservers` in order, UDP with TCP on truncation;
//! each try is bounded by `dns.timeout_s` and the whole resolution by a cap, so a dead
//! resolver list never stalls a reconnect. When every resolver fails, the last-good address
//! is used at once and its age logged. Every try logs one `[DNS]` line and is counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

/// Resolver settings (`[dns]`).
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Try the system resolver (the nameservers of `resolv_conf`) first.
    pub use_system: bool,
    /// Where the system nameservers are listed.
    pub resolv_conf: PathBuf,
    /// Fallback nameservers, tried in order after the system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Bound of one try against one resolver.
    pub timeout: Duration,
    /// Bound of one whole resolution (all resolvers).
    pub cap: Duration,
}

impl Default for DnsConfig {
    /// The documented defaults of `[dns]` (`docs/configuration.md`): the system resolver
    /// first, then four public fallback servers, 5 s per try, a whole resolution at most 10 s.
    fn default() -> Self {
        let timeout = Duration::from_secs(5);
        DnsConfig {
            use_system: true,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            nameservers: vec![
                SocketAddr::from(([8, 8, 8, 8], 53)),
                SocketAddr::from(([1, 1, 1, 1], 53)),
                SocketAddr::from(([8, 8, 4, 4], 53)),
                SocketAddr::from(([1, 0, 0, 1], 53)),
            ],
            timeout,
            cap: (timeout * 2).min(Duration::from_secs(10)),
        }
    }
}

/// Which resolver gave an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The host was an IP literal.
    Literal,
    /// The system resolver.
    System,
    /// A fallback nameserver.
    Fallback(SocketAddr),
    /// Nothing answered: the last address that worked, with its age.
    LastGood(Duration),
    /// A recent answer from the background refresh.
    Cached(Duration),
}

impl Via {
    /// Short name for logs and the status page.
    pub fn label(&self) -> String {
        match self {
            Via::Literal => "literal".into(),
            Via::System => "system".into(),
            Via::Fallback(a) => format!("fallback:{a}"),
            Via::LastGood(age) => format!("last_good(age_ms={})", age.as_millis()),
            Via::Cached(age) => format!("cached(age_ms={})", age.as_millis()),
        }
    }
}

/// Addresses for a host and how they were found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses (IPv4 first).
    pub addrs: Vec<IpAddr>,
    /// Where they came from.
    pub via: Via,
}

/// Resolution failed and no address was ever known for the host.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot resolve {host}: every resolver failed ({tried} tried) and no last-good address is known; check the network and dns.nameservers"
)]
pub struct DnsError {
    /// The host.
    pub host: String,
    /// Resolvers tried.
    pub tried: usize,
}

/// Counters for metrics (defined in the bus, which the status views read them through).
pub use crate::bus::status::DnsStats;

struct Entry {
    addrs: Vec<IpAddr>,
    at: Instant,
}

/// The appliance's resolver. Cheap to share behind an `Arc`.
pub struct Resolver {
    cfg: DnsConfig,
    last_good: Mutex<HashMap<String, Entry>>,
    /// Counters.
    pub stats: DnsStats,
}

/// Parses `nameserver` lines of a resolv.conf: `ip`, `ip:port` or `[v6]:port` (the port forms
/// are an extension used by tests, which cannot bind port 53).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver")).then(|| it.next()).flatten()
        })
        .filter_map(parse_server)
        .collect()
}

/// `ip` (port 53), `ip:port` or `[v6]:port`.
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)))
}

impl Resolver {
    /// A resolver with no addresses known yet.
    pub fn new(cfg: DnsConfig) -> Resolver {
        Resolver { cfg, last_good: Mutex::new(HashMap::new()), stats: DnsStats::default() }
    }

    fn remember(&self, host: &str, addrs: &[IpAddr]) {
        if let Ok(mut m) = self.last_good.lock() {
            m.insert(
                host.to_ascii_lowercase(),
                Entry { addrs: addrs.to_vec(), at: crate::bus::clock::mono() },
            );
        }
    }

    /// The last addresses that worked for `host`, with their age.
    pub fn last_good(&self, host: &str) -> Option<(Vec<IpAddr>, Duration)> {
        let m = self.last_good.lock().ok()?;
        m.get(&host.to_ascii_lowercase()).map(|e| (e.addrs.clone(), e.at.elapsed()))
    }

    async fn try_server(&self, host: &str, server: SocketAddr) -> Result<Vec<IpAddr>, String> {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let mut opts = ResolverOpts::default();
        opts.timeout = self.cfg.timeout;
        opts.attempts = 1;
        opts.cache_size = 0;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        opts.ndots = 0;
        // A and AAAA in parallel. hickory's default (A, then AAAA when A fails) sends a second
        // query after the first one timed out, so a dead resolver cost two `dns.timeout_s`
        // instead of one, and a dead first fallback ate the whole cap before the second was
        // ever asked (found by tests/network_edge.rs).
        opts.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        let r = hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![ns]),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| e.to_string())?;
        let fqdn = if host.ends_with('.') { host.to_string() } else { format!("{host}.") };
        // hickory bounds one query (UDP, then TCP on truncation) by `timeout` end to end, and
        // A and AAAA go in parallel; this margin only absorbs scheduling.
        let bound = self.cfg.timeout + Duration::from_millis(100);
        match tokio::time::timeout(bound, r.lookup_ip(fqdn.as_str())).await {
            Err(_) => Err("timeout".into()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(l)) => {
                let mut v: Vec<IpAddr> = l.iter().collect();
                v.sort_by_key(|ip| ip.is_ipv6());
                if v.is_empty() { Err("no addresses".into()) } else { Ok(v) }
            }
        }
    }

    /// Resolves `host` now through the resolver chain; on total failure falls back to the
    /// last-good address. Always bounded by the cap.
    pub async fn resolve(&self, host: &str) -> Result<Resolved, DnsError> {
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(Resolved { addrs: vec![ip], via: Via::Literal });
        }
        let deadline = crate::bus::clock::mono() + self.cfg.cap;
        let mut tried = 0usize;
        let mut chain: Vec<(bool, SocketAddr)> = Vec::new();
        if self.cfg.use_system {
            match std::fs::read_to_string(&self.cfg.resolv_conf) {
                Ok(text) => chain.extend(parse_resolv_conf(&text).into_iter().map(|s| (true, s))),
                Err(e) => log::warn!(
                    "[DNS] resolver=system host={host} result=error error=\"cannot read {}: {e}\"",
                    self.cfg.resolv_conf.display()
                ),
            }
        }
        chain.extend(self.cfg.nameservers.iter().map(|s| (false, *s)));
        for (system, server) in chain {
            let left = deadline.saturating_duration_since(crate::bus::clock::mono());
            if left.is_zero() {
                log::warn!("[DNS] host={host} result=cap_reached cap_ms={}", self.cfg.cap.as_millis());
                break;
            }
            tried += 1;
            let who = if system { "system" } else { "fallback" };
            if system {
                self.stats.system_tries.fetch_add(1, Ordering::Relaxed);
            } else {
                self.stats.fallback_tries.fetch_add(1, Ordering::Relaxed);
            }
            let t0 = crate::bus::clock::mono();
            let r = match tokio::time::timeout(left, self.try_server(host, server)).await {
                Ok(r) => r,
                Err(_) => Err("cap reached".to_string()),
            };
            let ms = t0.elapsed().as_millis();
            match r {
                Ok(addrs) => {
                    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                    log::info!(
                        "[DNS] resolver={who} server={server} host={host} result=ok addrs={} time_ms={ms}",
                        list.join(",")
                    );
                    if !system {
                        self.stats.fallback_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    self.remember(host, &addrs);
                    let via = if system { Via::System } else { Via::Fallback(server) };
                    return Ok(Resolved { addrs, via });
                }
                Err(e) => {
                    if system {
                        self.stats.system_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    log::warn!(
                        "[DNS] resolver={who} server={server} host={host} result=error error=\"{e}\" time_ms={ms}"
                    );
                }
            }
        }
        match self.last_good(host) {
            Some((addrs, age)) => {
                self.stats.last_good_uses.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "[DNS] resolver=last_good host={host} result=ok addrs={} age_ms={} (every resolver failed)",
                    addrs.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","),
                    age.as_millis()
                );
                Ok(Resolved { addrs, via: Via::LastGood(age) })
            }
            None => Err(DnsError { host: host.to_string(), tried }),
        }
    }

    /// Addresses to connect to now: a background-refreshed answer younger than `fresh` is used
    /// without a query; otherwise [`Resolver::resolve`].
    pub async fn addrs_for(&self, host: &str, fresh: Duration) -> Result<Resolved, DnsError> {
        if let Some((addrs, age)) = self.last_good(host) {
            if age < fresh {
                return Ok(Resolved { addrs, via: Via::Cached(age) });
            }
        }
        self.resolve(host).await
    }

    /// Resolves `hosts` now and then every `every` until `stop` fires, so that last-good
    /// addresses are always in hand.
    pub async fn refresh_loop(
        self: std::sync::Arc<Self>,
        hosts: Vec<String>,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            for h in &hosts {
                let _ = self.resolve(h).await;
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

impl crate::bus::status::DnsProbe for Resolver {
    fn dns_stats(&self) -> &DnsStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines() {
        let t = "# comment\nsearch lan\nnameserver 10.0.0.1\nnameserver 127.0.0.1:5353\nnameserver [::1]:5300\nnameserver ::1\nnameserver bogus\n";
        let v = parse_resolv_conf(t);
        let want: Vec<SocketAddr> = ["10.0.0.1:53", "127.0.0.1:5353", "[::1]:5300", "[::1]:53"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(v, want);
    }

    #[tokio::test]
    async fn literals_skip_dns_and_unknown_hosts_fail_cleanly() {
        let r = Resolver::new(DnsConfig {
            use_system: false,
            resolv_conf: PathBuf::from("/nonexistent"),
            nameservers: vec![],
            timeout: Duration::from_millis(100),
            cap: Duration::from_millis(500),
        });
        let got = r.resolve("127.0.0.1").await.expect("literal");
        assert_eq!(got.via, Via::Literal);
        let err = r.resolve("feed.invalid").await.expect_err("nothing to ask");
        assert_eq!(err.tried, 0);
        assert!(err.to_string().contains("feed.invalid"));
    }
}
