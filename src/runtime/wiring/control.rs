//! The control plane's settings (`control::ControlConfig`) from a loaded configuration: credentials, transport rules and
//! their loopback-only fallback, notification channels.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::config::{Config, Severity};
use crate::control::{ControlConfig, StoreProbe, notify};
use crate::net::dns::DnsConfig;

impl ControlConfig {
    /// The control plane of a loaded configuration; reads the token files (their content
    /// never appears in a message). A problem of the API's configuration (the rules of
    /// [`crate::config::api_problems`], an unreadable `api.token_file`) never fails it: the API
    /// then listens on 127.0.0.1 (same port) only and `alarm` says why; an unreadable Telegram
    /// token leaves that channel out. Secret file modes and insecure outbound URLs are logged.
    pub fn from_config(cfg: &Config) -> Result<ControlConfig, crate::config::ConfigError> {
        // The rules `check-config` refuses (exit 78) never stop `run` from protecting: the API
        // falls back to 127.0.0.1 (same port) with an alarm naming the key and the fix.
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, cfg.api.listen.port()));
        let mut listen = cfg.api.listen;
        let mut alarms = Vec::new();
        // An unreadable token file neither: the API serves read-only (no token) on loopback.
        let token = match cfg.api.token_file.as_deref().map(crate::config::read_secret).transpose() {
            Ok(t) => t,
            Err(e) => {
                listen = loopback;
                let message = format!(
                    "api.token_file: {e}; the API is read-only (no token) until it is readable: fix the path, or its owner and mode (chmod 600, owned by the service user), and restart"
                );
                log::error!(
                    "[API] event=token_unreadable key=api.token_file configured={} listen={listen} alarm=\"{}\"",
                    cfg.api.listen,
                    message.replace('"', "'")
                );
                alarms.push(message);
                None
            }
        };
        for p in crate::config::api_problems_for_token(cfg, token.as_deref()) {
            match p.severity {
                Severity::Error => {
                    listen = loopback;
                    log::error!(
                        "[API] event={} key={} configured={} listen={listen} alarm=\"{}\"",
                        p.event,
                        p.key,
                        cfg.api.listen,
                        p.message.replace('"', "'")
                    );
                    alarms.push(p.message);
                }
                Severity::Warning => log::warn!(
                    "[API] event={} key={} warning=\"{}\"",
                    p.event,
                    p.key,
                    p.message.replace('"', "'")
                ),
            }
        }
        let alarm = (!alarms.is_empty()).then(|| {
            format!(
                "the API serves on {listen} only (loopback) until the configuration is fixed: {}",
                alarms.join("; ")
            )
        });
        // Secret files others can read, and outbound URLs that would carry a key in clear:
        // logged at every start (`check-config` refuses the latter); protection goes on.
        for p in crate::config::secret_problems(cfg) {
            log::warn!(
                "[CONFIG] event={} key={} warning=\"{}\"",
                p.event,
                p.key,
                p.message.replace('"', "'")
            );
        }
        for p in crate::config::outbound_problems(cfg) {
            log::error!("[CONFIG] event={} key={} error=\"{}\"", p.event, p.key, p.message.replace('"', "'"));
        }
        let mut notify = Vec::new();
        if let Some(url) = &cfg.notify.webhook_url {
            notify.push(notify::Target::Webhook(url.clone()));
        }
        if let (Some(file), Some(chat)) = (&cfg.notify.telegram_token_file, &cfg.notify.telegram_chat_id) {
            // A notification channel's secret never stops protection either: without it the
            // channel is left out, loudly.
            match crate::config::read_secret(file) {
                Ok(token) => notify.push(notify::Target::Telegram {
                    api_url: cfg.notify.telegram_api_url.clone(),
                    token,
                    chat_id: chat.clone(),
                }),
                Err(e) => log::error!(
                    "[CONFIG] event=secret_unreadable key=notify.telegram_token_file error=\"{}\" (Telegram notifications are off until it is readable and the service restarted)",
                    e.to_string().replace('"', "'")
                ),
            }
        }
        let mut c = ControlConfig::new(listen, token);
        c.protect_reads = cfg.api.reads_protected();
        c.protect_metrics = cfg.api.metrics_protected();
        c.allowed_hosts = cfg.api.allowed_hosts.clone();
        if alarm.is_some() {
            // Served on loopback only: an explicit list must still let the operator in through
            // 127.0.0.1 (an ssh tunnel), or the emergency close would answer 421.
            if let Some(hosts) = c.allowed_hosts.as_mut() {
                let port = listen.port();
                for h in ["localhost".to_string(), "127.0.0.1".into(), "[::1]".into()] {
                    for v in [format!("{h}:{port}"), h] {
                        if !hosts.contains(&v) {
                            hosts.push(v);
                        }
                    }
                }
            }
        }
        c.hsts = cfg.api.hsts;
        c.alarm = alarm;
        c.tls = cfg.api.tls_cert.clone().zip(cfg.api.tls_key.clone());
        c.store = StoreProbe::Dir(cfg.store.dir.clone());
        c.venue = cfg.feed.venue.as_str();
        c.notify = notify;
        c.dns = DnsConfig {
            use_system: cfg.dns.use_system,
            resolv_conf: cfg.dns.resolv_conf.clone(),
            nameservers: cfg.dns.nameservers.clone(),
            timeout: cfg.dns.timeout,
            cap: (cfg.dns.timeout * 2).min(Duration::from_secs(10)),
        };
        c.extra_ca = cfg.tls.extra_ca.clone();
        c.side_rule = crate::config::side_rule(cfg);
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 hex digits (`openssl rand -hex 32`).
    const STRONG: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn token_file(name: &str, token: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tickguard-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = dir.join(name);
        std::fs::write(&p, token).expect("token file");
        p
    }

    fn control(text: &str) -> ControlConfig {
        let cfg = crate::config::parse_str(text, "t.toml", Vec::new()).expect("valid config");
        ControlConfig::from_config(&cfg).expect("control config")
    }

    #[test]
    fn a_lan_listen_without_tls_falls_back_to_loopback_with_an_alarm() {
        let t = token_file("strong-lan", STRONG);
        let c = control(&format!(
            "[api]\nlisten = \"0.0.0.0:8443\"\ntoken_file = \"{}\"\nallowed_hosts = [\"tickguard.lan\"]\nhsts = true\n",
            t.display()
        ));
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8443)));
        let alarm = c.alarm.as_deref().unwrap_or("");
        assert!(alarm.contains("api.listen") && alarm.contains("api.allow_plain_http = true"), "{alarm}");
        assert!(alarm.contains("api.tls_cert"), "{alarm}");
        // The explicit list still lets the operator in on loopback.
        let hosts = c.allowed_hosts.unwrap_or_default();
        for h in ["tickguard.lan", "127.0.0.1:8443", "127.0.0.1", "localhost:8443", "[::1]:8443"] {
            assert!(hosts.iter().any(|x| x == h), "{h} not in {hosts:?}");
        }
        // Reads are protected (the configured address is not loopback), metrics are not.
        assert!(c.protect_reads && !c.protect_metrics && c.hsts);
    }

    #[test]
    fn a_short_token_falls_back_to_loopback_with_an_alarm() {
        let t = token_file("short", "letmein-123");
        let c = control(&format!("[api]\nlisten = \"127.0.0.1:8000\"\ntoken_file = \"{}\"\n", t.display()));
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
        let alarm = c.alarm.as_deref().unwrap_or("");
        assert!(alarm.contains("api.token_file") && alarm.contains("openssl rand -hex 32"), "{alarm}");
        assert!(!alarm.contains("letmein"), "the token leaked: {alarm}");
        assert_eq!(c.allowed_hosts, None, "the default set already holds loopback");
    }

    #[test]
    fn an_unreadable_token_file_falls_back_to_a_read_only_api_on_loopback() {
        let c = control(
            "[api]\nlisten = \"0.0.0.0:8000\"\nallow_plain_http = true\ntoken_file = \"/nonexistent/api.token\"\n[notify]\ntelegram_token_file = \"/nonexistent/tg\"\ntelegram_chat_id = 1\n",
        );
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8000)));
        assert_eq!(c.token, None);
        let alarm = c.alarm.as_deref().unwrap_or("");
        assert!(alarm.contains("api.token_file") && alarm.contains("/nonexistent/api.token"), "{alarm}");
        assert!(c.notify.is_empty(), "the Telegram channel without its token is left out");
    }

    #[test]
    fn allowed_plain_http_or_a_loopback_listen_raise_no_alarm() {
        let t = token_file("strong-ok", STRONG);
        let c = control(&format!(
            "[api]\nlisten = \"0.0.0.0:8000\"\nallow_plain_http = true\ntoken_file = \"{}\"\nprotect_reads = true\n",
            t.display()
        ));
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 8000)));
        assert_eq!(c.alarm, None);
        assert!(c.protect_reads && c.protect_metrics, "protect_metrics follows protect_reads = true");
        let c = control("[api]\nlisten = \"127.0.0.1:9000\"\n");
        assert_eq!(
            (c.listen, c.alarm, c.protect_reads),
            (SocketAddr::from(([127, 0, 0, 1], 9000)), None, false)
        );
    }
}
