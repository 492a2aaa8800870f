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
        Cmd::Demo { run_for, listen, config } => with_runtime(|| async move {
            if let Some(path) = &config {
                if let Err(e) = tickguard::config::load(Some(path), std::env::vars()) {
                    eprintln!("config error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            if let Some(addr) = listen {
                log::info!("demo: status page address {addr} is served once the control plane is built in");
            }
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(runtime::signals::stop_on_signal(tx));
            runtime::demo::run(run_for, rx).await;
            ExitCode::SUCCESS
        }),
        Cmd::Run { config } => with_runtime(|| async move { runtime::app::run(&config).await }),
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
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
}
