//! The real `tickguard run` binary under test: started with a config, its stderr collected
//! line by line, stopped with SIGTERM (killed on drop). Shared by the edge tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// Log lines as they arrive, with the instant the test saw each.
#[derive(Clone, Default)]
pub struct Log(pub Lines);

/// A log line found by [`Log::wait_from`]: its index, when the test read it, and its text.
#[derive(Clone, Debug)]
pub struct Line {
    /// Index in the log.
    pub idx: usize,
    /// When the test read it.
    pub at: Instant,
    /// The line.
    pub text: String,
}

impl Log {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), line));
    }

    pub fn snapshot(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last lines of the log, for failure messages.
    pub fn tail(&self) -> String {
        let all = self.snapshot();
        let from = all.len().saturating_sub(80);
        all[from..].iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    /// First line at index `from` or later that satisfies `pred`.
    pub fn find_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> Option<Line> {
        self.all_from(from, pred).into_iter().next()
    }

    /// Every line at index `from` or later that satisfies `pred`.
    pub fn all_from(&self, from: usize, pred: impl Fn(&str) -> bool) -> Vec<Line> {
        self.snapshot()
            .into_iter()
            .enumerate()
            .skip(from)
            .filter(|(_, (_, l))| pred(l))
            .map(|(idx, (at, text))| Line { idx, at, text })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits (polling every 10 ms, letting the servers run) for a line at index `from` or
    /// later that satisfies `pred`.
    pub async fn wait_from(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.find_from(from, &pred) {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// As [`Log::wait_from`], panicking with the log's tail when nothing matches.
    pub async fn expect_from(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Line {
        match self.wait_from(from, pred, timeout).await {
            Some(l) => l,
            None => panic!("no log line {what} within {timeout:?}; log tail:\n{}", self.tail()),
        }
    }
}

impl Log {
    /// The feed and DNS died (at log line `cut`): `symbol` falls back to REST
    /// (`[FALLBACK] ... to=rest`), the poller reaches `rest_host` through an address remembered
    /// from before the outage (`dns=cached(..)` or `dns=last_good(..)`), and the feed's DNS
    /// health check answers `feed_host` from its last-good address. Returns that `[DNS]` line.
    pub async fn expect_rest_through_last_good(
        &self,
        cut: usize,
        symbol: &str,
        hosts: (&str, &str),
        within: Duration,
        dns_within: Duration,
    ) -> Line {
        let (rest_host, feed_host) = hosts;
        let fallback = format!("[FALLBACK] symbol={symbol} from=live to=rest");
        self.expect_from(cut, "[FALLBACK] to rest", |l| l.contains(&fallback), within).await;
        let polling = format!("[FALLBACK] event=rest_polling host={rest_host} ");
        let polling = self.expect_from(cut, "REST polling", |l| l.contains(&polling), within).await;
        assert!(polling.text.contains("addr=127.0.0.1:"), "{}", polling.text);
        assert!(
            polling.text.contains("dns=cached(") || polling.text.contains("dns=last_good("),
            "REST went through a remembered address: {}",
            polling.text
        );
        let last_good = format!("[DNS] resolver=last_good host={feed_host} ");
        self.expect_from(cut, "[DNS] last_good", |l| l.contains(&last_good), dns_within).await
    }
}

/// A running `tickguard run`; killed on drop.
pub struct App {
    /// The process.
    pub child: Child,
    /// Its stderr, line by line.
    pub log: Log,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for App {
    type Target = Log;
    fn deref(&self) -> &Log {
        &self.log
    }
}

impl App {
    pub fn start(config: &Path) -> App {
        App::start_with_env(config, &[], "NETWORK_EDGE_ECHO")
    }

    /// As [`App::start`] with extra environment variables; `echo_var` set (with
    /// `--nocapture`) shows the binary's log as it runs.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)], echo_var: &str) -> App {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickguard"));
        cmd.args(["run", "--config"]).arg(config);
        for (k, _) in std::env::vars() {
            if k.starts_with("TICKGUARD_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "warn,tickguard=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn tickguard");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Log::default();
        let sink = log.clone();
        let echo = std::env::var_os(echo_var).is_some();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("{line}");
                }
                sink.push(line);
            }
        });
        App { child, log, reader: Some(reader) }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub async fn stop(mut self) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `key=value` of a log line (up to the next space; quotes kept).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let i = line.find(&pat)? + pat.len();
    let rest = &line[i..];
    Some(rest.split(' ').next().unwrap_or(rest))
}
