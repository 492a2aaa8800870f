//! `tickguard`: the command line. See `tickguard --help` and docs/cli.md.
//!
//! Exit codes: 0 done, 1 runtime failure, 2 usage, 78 configuration error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tickguard::runtime;

/// Exit code of a configuration error (EX_CONFIG); systemd is told not to restart on it.
const EXIT_CONFIG: u8 = 78;
/// Exit code of a runtime failure.
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser)]
#[command(
    name = "tickguard",
    version,
    about = "Risk watchdog appliance: closes crossed stops when the bot or the network fails"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Protect the configured positions (until SIGINT / SIGTERM).
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Inject a fault for tests: `engine-hang@10s` stalls the engine loop 10 s after start;
        /// `fsync-delay@100ms` delays every journal fsync; `crash@intent-synced` / `crash@sent`
        /// abort the process at that point of a close.
        #[arg(long, value_parser = parse_fault)]
        fault: Option<runtime::Faults>,
    },
    /// Replay the seed incident on a simulated feed and a paper broker; no network needed.
    Demo {
        /// Stop after this long (e.g. `20s`, `2m`, `1500ms`); default: until Ctrl-C.
        #[arg(long = "for", value_parser = parse_duration)]
        run_for: Option<Duration>,
        /// Address of the status page (default 127.0.0.1:8000, or api.listen of --config).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Configuration file for settings other than the scripted thresholds.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Inject a fault for tests: `engine-hang@10s` stalls the engine loop 10 s after start;
        /// `fsync-delay@100ms` delays every journal fsync; `crash@intent-synced` / `crash@sent`
        /// abort the process at that point of a close.
        #[arg(long, value_parser = parse_fault)]
        fault: Option<runtime::Faults>,
    },
    /// Validate a configuration file (with TICKGUARD_* overrides) and print a summary.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Read the durable state (journal and snapshot).
    Journal {
        #[command(subcommand)]
        cmd: JournalCmd,
    },
}

#[derive(Subcommand)]
enum JournalCmd {
    /// Print every record of the store (snapshot summary, then journal records).
    Dump {
        /// State directory (default: store.dir of --config, else ./tickguard-state).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Configuration file whose store.dir to read.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Parses `engine-hang@DURATION`, `fsync-delay@DURATION`, `crash@intent-synced` or `crash@sent`.
fn parse_fault(s: &str) -> Result<runtime::Faults, String> {
    match s.trim().split_once('@') {
        Some(("engine-hang", d)) => {
            Ok(runtime::Faults { engine_hang: Some(parse_duration(d)?), ..Default::default() })
        }
        Some(("fsync-delay", d)) => {
            Ok(runtime::Faults { fsync_delay: Some(parse_duration(d)?), ..Default::default() })
        }
        Some(("crash", "intent-synced")) => {
            Ok(runtime::Faults { crash_at: Some(runtime::CrashPoint::IntentSynced), ..Default::default() })
        }
        Some(("crash", "sent")) => {
            Ok(runtime::Faults { crash_at: Some(runtime::CrashPoint::Sent), ..Default::default() })
        }
        _ => Err(format!(
            "unknown fault '{s}' (known: engine-hang@DURATION, fsync-delay@DURATION, crash@intent-synced, crash@sent; e.g. engine-hang@10s)"
        )),
    }
}

/// Parses `20s`, `1.5s`, `2m`, `1h`, `1500ms` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.trim().parse().map_err(|_| format!("'{s}' is not a duration (try 20s, 2m, 1500ms)"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("unknown unit '{unit}' in '{s}' (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1.0e9).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    runtime::report::init_logging();
    match cli.cmd {
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Journal { cmd: JournalCmd::Dump { dir, config } } => journal_dump(dir, config),
        Cmd::Demo { run_for, listen, config, fault } => with_runtime(|| async move {
            // The file (if any) and the TICKGUARD_* overrides: the demo takes its indicator
            // settings from them.
            let cfg = match tickguard::config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if let Some(f) = fault {
                runtime::arm_faults(f);
            }
            let indicator = match tickguard::indicator::Indicator::start(&cfg.indicator) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("start-up error: {e}");
                    return ExitCode::from(e.exit_code());
                }
            };
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(runtime::signals::stop_on_signal(tx));
            let listen = listen.unwrap_or(cfg.api.listen);
            // The demo's relay is on (over the simulated venue, on relay.listen) unless
            // TICKGUARD_RELAY_ENABLED=false.
            let relay_on = std::env::var("TICKGUARD_RELAY_ENABLED").map_or(true, |v| v != "false");
            let relay = runtime::demo::relay_settings(&cfg, relay_on);
            runtime::demo::run_with(run_for, rx, indicator, Some(listen), relay).await;
            ExitCode::SUCCESS
        }),
        Cmd::Run { config, fault } => with_runtime(|| async move {
            if let Some(f) = fault {
                runtime::arm_faults(f);
            }
            runtime::app::run(&config).await
        }),
    }
}

fn journal_dump(dir: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    let dir = match (dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => match tickguard::config::load(Some(&c), std::env::vars()) {
            Ok(cfg) => cfg.store.dir,
            Err(e) => {
                eprintln!("config error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        (None, None) => tickguard::config::Config::default().store.dir,
    };
    let stdout = std::io::stdout();
    match tickguard::store::dump(&dir, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match tickguard::config::load(Some(file), std::env::vars()) {
        Ok(cfg) => {
            if let Err(e) = runtime::app::check_symbols(&cfg) {
                eprintln!("config error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            // The API's transport and token, outbound URLs, secret files: the very checks
            // `run` makes at start-up (where an API problem only narrows the API to loopback).
            let mut refused = false;
            for p in tickguard::config::start_problems(&cfg) {
                match p.severity {
                    tickguard::config::Severity::Error => {
                        refused = true;
                        eprintln!("config error: {p}");
                    }
                    tickguard::config::Severity::Warning => eprintln!("warning: {p}"),
                }
            }
            if refused {
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("{}: ok", file.display());
            println!("{}", runtime::app::summary(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn with_runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    // The engine's runtime. Its blocking pool (journal writes of close orders) is bounded, so
    // the process's thread count is bounded by construction (the unit's TasksMax; see
    // docs/performance.md): a burst of closes queues its writes instead of failing to spawn.
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(tickguard::limits::ENGINE_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn faults() {
        let hang = |s| parse_fault(s).map(|f| f.engine_hang);
        assert_eq!(hang("engine-hang@10s"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(hang("engine-hang@1500ms"), Ok(Some(Duration::from_millis(1500))));
        assert!(parse_fault("engine-hang").is_err());
        assert!(parse_fault("feed-drop@1s").is_err());
        assert!(parse_fault("engine-hang@soon").is_err());
        assert_eq!(
            parse_fault("fsync-delay@100ms").map(|f| f.fsync_delay),
            Ok(Some(Duration::from_millis(100)))
        );
        assert_eq!(parse_fault("crash@sent").map(|f| f.crash_at), Ok(Some(runtime::CrashPoint::Sent)));
        assert_eq!(
            parse_fault("crash@intent-synced").map(|f| f.crash_at),
            Ok(Some(runtime::CrashPoint::IntentSynced))
        );
        assert!(parse_fault("crash@later").is_err());
    }
}
