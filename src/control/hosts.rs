//! The `Host` allow-list of the API (`api.allowed_hosts`).
//!
//! A page on `attacker.example` whose name is re-resolved to the box's address (DNS
//! rebinding) reaches the API from the trader's own browser, past every same-origin rule: the
//! only thing that gives it away is the `Host` it sends. The API therefore serves only the
//! names of the box itself:
//!
//! - configured: exactly the entries of `api.allowed_hosts`; an entry without a port also
//!   matches with the API's port;
//! - default: `localhost`, `127.0.0.1`, `[::1]`, every address of the box's interfaces (read
//!   again at most every [`REFRESH`] when a `Host` is not found, so a new DHCP lease is
//!   served), the host name and `<host name>.local`, each with and without the port.
//!
//! A request without `Host` (an HTTP/1.0 tool) passes: a browser always sends one, so it
//! cannot be a rebinding.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often, at most, the interfaces' addresses are read again.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The allow-list.
pub struct HostCheck {
    configured: Option<HashSet<String>>,
    port: u16,
    default: Mutex<(Option<Instant>, HashSet<String>)>,
}

/// `Host` as compared: lower case, without a trailing dot, with an explicit port.
fn normalise(host: &str, port: u16) -> Option<String> {
    let h = host.trim().to_ascii_lowercase();
    if h.is_empty() || h.len() > 300 {
        return None;
    }
    let (name, p) = split_port(&h)?;
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(format!("{name}:{}", p.unwrap_or(port)))
}

/// `name` and `port` of `name[:port]` or `[v6][:port]`; `None` when malformed.
fn split_port(h: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = h.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let v6 = &h[..inside.len() + 2];
        return match after {
            "" => Some((v6, None)),
            a => Some((v6, Some(a.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match h.rsplit_once(':') {
        // A bare IPv6 address without brackets is not a valid Host.
        Some((n, _)) if n.contains(':') => None,
        Some((n, p)) => Some((n, Some(p.parse().ok()?))),
        None => Some((h, None)),
    }
}

/// The box's own names: loopback names, interface addresses, host name.
pub fn own_names() -> Vec<String> {
    let mut v = vec!["localhost".to_string(), "127.0.0.1".to_string(), "[::1]".to_string()];
    if let Ok(ifs) = if_addrs::get_if_addrs() {
        for i in ifs {
            match i.ip() {
                std::net::IpAddr::V4(a) => v.push(a.to_string()),
                std::net::IpAddr::V6(a) => v.push(format!("[{a}]")),
            }
        }
    }
    if let Some(h) = host_name() {
        let h = h.trim().to_ascii_lowercase();
        if !h.is_empty() && h != "localhost" {
            v.push(format!("{h}.local"));
            v.push(h);
        }
    }
    v
}

/// The box's host name: `/etc/hostname` (Debian and Raspberry Pi OS keep it there; no file
/// under `/proc`, so the unit can keep `ProcSubset=pid`), else the kernel's.
fn host_name() -> Option<String> {
    ["/etc/hostname", "/proc/sys/kernel/hostname"].iter().find_map(|p| {
        let h = std::fs::read_to_string(p).ok()?;
        let h = h.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'))?.to_string();
        Some(h)
    })
}

impl HostCheck {
    /// The allow-list of `api.allowed_hosts` (`None`: the default) for an API on `port`.
    pub fn new(configured: Option<Vec<String>>, port: u16) -> HostCheck {
        let configured = configured.map(|v| v.iter().filter_map(|h| normalise(h, port)).collect());
        HostCheck { configured, port, default: Mutex::new((None, HashSet::new())) }
    }

    fn refresh(&self, set: &mut (Option<Instant>, HashSet<String>)) {
        set.1 = own_names().iter().filter_map(|h| normalise(h, self.port)).collect();
        set.0 = Some(crate::bus::clock::mono_std());
    }

    /// Whether a request with this `Host` is served.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        let Some(h) = normalise(host, self.port) else { return false };
        if let Some(c) = &self.configured {
            return c.contains(&h);
        }
        let Ok(mut set) = self.default.lock() else { return false };
        if set.0.is_none() {
            self.refresh(&mut set);
        }
        if set.1.contains(&h) {
            return true;
        }
        if set.0.is_some_and(|t| t.elapsed() >= REFRESH) {
            self.refresh(&mut set);
            return set.1.contains(&h);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_serves_the_box_and_nothing_else() {
        let c = HostCheck::new(None, 8000);
        for ok in [
            "localhost",
            "localhost:8000",
            "127.0.0.1:8000",
            "127.0.0.1",
            "[::1]:8000",
            "LOCALHOST.",
            "[::1]",
        ] {
            assert!(c.allows(Some(ok)), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8000",
            "127.0.0.1:9000",
            "localhost:80",
            "",
            "::1",
            "[::1",
            "a:b",
        ] {
            assert!(!c.allows(Some(bad)), "{bad}");
        }
        assert!(c.allows(None), "HTTP/1.0 without Host");
    }

    #[test]
    fn the_host_name_is_served() {
        let Some(h) = host_name() else { return };
        assert!(!h.is_empty());
        let c = HostCheck::new(None, 8000);
        if h != "localhost" {
            assert!(c.allows(Some(&h.to_ascii_lowercase())), "{h}");
            assert!(c.allows(Some(&format!("{}.local:8000", h.to_ascii_lowercase()))), "{h}.local");
        }
    }

    #[test]
    fn configured_entries_are_the_whole_list() {
        let c = HostCheck::new(Some(vec!["guard.lan".into(), "10.0.0.5:8443".into()]), 8443);
        assert!(c.allows(Some("guard.lan")));
        assert!(c.allows(Some("guard.lan:8443")));
        assert!(c.allows(Some("10.0.0.5:8443")));
        assert!(!c.allows(Some("guard.lan:9999")));
        assert!(!c.allows(Some("localhost")), "configured: only what is listed");
    }
}
