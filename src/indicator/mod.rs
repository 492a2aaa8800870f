//! The appliance's status LED and buzzer.
//!
//! - [`pattern`]: the sans-IO generator. The engine's [`Alarm`] and a time in, line levels
//!   out; one table of steps per state (docs/indicator.md shows them).
//! - [`board`]: board profiles (`rpi4`, `rpi5`, `qemu-virt`) naming the chip **by label** and
//!   the line offsets, overridden key by key by `[indicator]`.
//! - [`gpio`]: the driver, two output lines through the GPIO character device.
//!
//! [`Indicator::run`] ties them to the engine. Each step asks the engine task for its alarm
//! *and its clock* in one [`EngineHandle::inspect`]: the time the pattern is played at is a
//! value the engine loop itself produced. If the loop stops turning, no answer comes, nothing is
//! written and the heartbeat freezes, high or low: a hung process reads as a fault, exactly like
//! a killed one. Healthy is a heartbeat, never a steady level.
//!
//! A missing or busy chip is a start-up error ([`Indicator::start`]); a line that fails later is
//! logged and retried while the protection goes on: the indicator is a separate task and never
//! holds up the engine.

pub mod board;
pub mod gpio;
pub mod pattern;
mod settings;

pub use settings::{IndicatorBoard, IndicatorConfig};

use std::time::Duration;

use tokio::sync::watch;

use crate::bus::EngineHandle;
use crate::core::engine::Alarm;
use board::Wiring;
use pattern::{Generator, Levels};

/// Longest wait between two looks at the engine's alarm: a new state shows within this.
pub const POLL: Duration = Duration::from_millis(200);
/// Delay between attempts to get a failed line back.
pub const REOPEN_EVERY: Duration = Duration::from_secs(5);

/// Exit code of an indicator start-up error that a restart cannot fix (`EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code of an indicator start-up error that may pass (busy line, permission, IO).
pub const EXIT_RUNTIME: u8 = 1;

/// Why the indicator cannot start (or a line failed).
#[derive(Debug, thiserror::Error)]
pub enum IndicatorError {
    /// `indicator.board = "auto"` and the device tree names no board with a profile.
    #[error(
        "indicator.board = \"auto\": {} matches no board profile; set indicator.board to rpi4, rpi5, qemu-virt or custom, or indicator.enabled = false",
        match compatible { Some(c) => format!("the device tree says compatible = {c}, which"), None => "no device tree, so the board".to_string() }
    )]
    UnknownBoard {
        /// The device tree's `compatible` strings, if any.
        compatible: Option<String>,
    },
    /// A key neither the configuration nor the profile sets.
    #[error(
        "{key} is not set and the board profile has none: set it under [indicator], or indicator.enabled = false"
    )]
    Incomplete {
        /// The key.
        key: &'static str,
    },
    /// LED and buzzer on the same line.
    #[error(
        "indicator: the LED and the buzzer are both on line {line}; give indicator.buzzer_line another line"
    )]
    SameLine {
        /// The line.
        line: u32,
    },
    /// A compiled-in profile does not parse (a build defect).
    #[error("board profile {file} is invalid: {problem}")]
    Profile {
        /// The profile's file.
        file: &'static str,
        /// The configuration error.
        problem: String,
    },
    /// No chip carries the label.
    #[error(
        "indicator: no GPIO chip labelled \"{label}\" ({}); check indicator.board / indicator.chip_label (gpiodetect lists the labels), or set indicator.enabled = false",
        if seen.is_empty() { "no /dev/gpiochip* at all".to_string() } else { format!("found {}", seen.join(", ")) }
    )]
    NoChip {
        /// The label looked for.
        label: String,
        /// The chips seen, with their labels.
        seen: Vec<String>,
    },
    /// Chips could not be opened.
    #[error(
        "indicator: permission denied opening {} while looking for the chip labelled \"{label}\"; run as a member of the gpio group (the package's udev rule gives it /dev/gpiochip*), or set indicator.enabled = false",
        paths.join(", ")
    )]
    Permission {
        /// The label looked for.
        label: String,
        /// The chips that could not be opened.
        paths: Vec<String>,
    },
    /// A line offset beyond the chip's lines.
    #[error("indicator: line {line} does not exist on chip \"{label}\" ({path}, lines 0 to {}); fix indicator.led_line / indicator.buzzer_line", lines.saturating_sub(1))]
    LineOutOfRange {
        /// Chip label.
        label: String,
        /// Chip path.
        path: String,
        /// The line.
        line: u32,
        /// Lines of the chip.
        lines: u32,
    },
    /// A line is held by someone else.
    #[error(
        "indicator: line {line} of chip \"{label}\" ({path}) is busy: used by {consumer}; free it (is another tickguard running?) or set indicator.enabled = false"
    )]
    Busy {
        /// Chip label.
        label: String,
        /// Chip path.
        path: String,
        /// The line.
        line: u32,
        /// Who holds it.
        consumer: String,
    },
    /// Another OS error.
    #[error("indicator: {what}: {detail}")]
    Io {
        /// What failed.
        what: String,
        /// The OS's word on it.
        detail: String,
    },
}

impl IndicatorError {
    /// The exit code for this error at start-up: 78 when only a configuration change fixes it
    /// (systemd does not restart on 78), 1 when it may pass on its own (systemd retries).
    pub fn exit_code(&self) -> u8 {
        match self {
            IndicatorError::UnknownBoard { .. }
            | IndicatorError::Incomplete { .. }
            | IndicatorError::SameLine { .. }
            | IndicatorError::Profile { .. }
            | IndicatorError::NoChip { .. }
            | IndicatorError::LineOutOfRange { .. } => EXIT_CONFIG,
            IndicatorError::Permission { .. } | IndicatorError::Busy { .. } | IndicatorError::Io { .. } => {
                EXIT_RUNTIME
            }
        }
    }
}

/// The opened indicator, ready to run.
#[derive(Debug)]
pub struct Indicator {
    wiring: Wiring,
    lines: Option<gpio::Lines>,
}

impl Indicator {
    /// Resolves the wiring and requests the lines. `Ok(None)` when `indicator.enabled` is
    /// false. Logs `[INDICATOR] event=ready ...` on success.
    pub fn start(cfg: &IndicatorConfig) -> Result<Option<Indicator>, IndicatorError> {
        if !cfg.enabled {
            log::info!("[INDICATOR] event=disabled (indicator.enabled = false)");
            return Ok(None);
        }
        let compatible = match cfg.board {
            IndicatorBoard::Auto => board::read_compatible(),
            _ => None,
        };
        let wiring = board::resolve(cfg, compatible.as_deref())?;
        let lines = gpio::open(&wiring)?;
        log::info!("[INDICATOR] event=ready {} path={}", wiring.describe(), lines.path.display());
        Ok(Some(Indicator { wiring, lines: Some(lines) }))
    }

    /// The resolved wiring.
    pub fn wiring(&self) -> &Wiring {
        &self.wiring
    }

    /// Plays the patterns until `stop` fires or the engine is gone, then turns both lines off.
    /// Starts with the self-test.
    pub async fn run(mut self, handle: EngineHandle, mut stop: watch::Receiver<bool>) {
        let mut generator: Option<Generator> = None;
        let mut failed_at: Option<tokio::time::Instant> = None;
        loop {
            let probe = handle.inspect(|e, now| {
                let (alarm, silenced) = e.alarm(now);
                (alarm, silenced, now)
            });
            let answer = tokio::select! {
                _ = stop.changed() => break,
                a = probe => a,
            };
            let Some((alarm, silenced, now)) = answer else { break };
            let g = generator.get_or_insert_with(|| Generator::new(now));
            let out = g.update(now, alarm, silenced);
            if out.changed {
                log::info!("[INDICATOR] state={} alarm={}", out.shown.name, alarm_name(alarm, silenced));
            }
            self.write(out.levels, &mut failed_at);
            let wait = if out.next_change.as_nanos() == u64::MAX {
                POLL
            } else {
                out.next_change.since(now).clamp(Duration::from_millis(5), POLL)
            };
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(l) = self.lines.as_mut() {
            if let Err(e) = l.set(Levels::OFF) {
                log::warn!("[INDICATOR] event=line_failed error=\"{e}\" (turning off at stop)");
            }
        }
        log::info!("[INDICATOR] event=stopped");
    }

    /// Writes the levels; on failure logs once, keeps the protection going, and tries to get
    /// the lines back every [`REOPEN_EVERY`].
    fn write(&mut self, levels: Levels, failed_at: &mut Option<tokio::time::Instant>) {
        if self.lines.is_none() {
            let due = failed_at.is_none_or(|t| t.elapsed() >= REOPEN_EVERY);
            if !due {
                return;
            }
            *failed_at = Some(crate::bus::clock::mono());
            match gpio::open(&self.wiring) {
                Ok(l) => {
                    log::info!("[INDICATOR] event=line_restored path={}", l.path.display());
                    self.lines = Some(l);
                    *failed_at = None;
                }
                Err(_) => return,
            }
        }
        if let Some(l) = self.lines.as_mut() {
            if let Err(e) = l.set(levels) {
                log::error!(
                    "[INDICATOR] event=line_failed error=\"{e}\" (protection continues; retrying every {} s)",
                    REOPEN_EVERY.as_secs()
                );
                self.lines = None;
                *failed_at = Some(crate::bus::clock::mono());
            }
        }
    }
}

fn alarm_name(alarm: Alarm, silenced: bool) -> &'static str {
    match (alarm, silenced) {
        (Alarm::CloseFailed, false) => "close_failed",
        (Alarm::CloseFailed, true) => "close_failed_acked",
        (Alarm::Blind, false) => "blind",
        (Alarm::Blind, true) => "blind_acked",
        (Alarm::Stale, _) => "stale",
        (Alarm::Live, _) => "live",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &str = include_str!("../../docs/indicator.md");

    #[test]
    fn docs_show_every_pattern_as_played() {
        for p in pattern::ALL {
            let row = format!("| `{}` | {} | {} |", p.name, p.describe(false), p.describe(true));
            assert!(DOCS.contains(&row), "docs/indicator.md lacks the row\n{row}");
        }
    }

    #[test]
    fn disabled_needs_no_gpio() {
        let r = Indicator::start(&IndicatorConfig::default());
        assert!(matches!(r, Ok(None)));
    }

    #[test]
    fn a_missing_chip_is_a_clear_configuration_error() {
        let cfg = IndicatorConfig {
            enabled: true,
            board: IndicatorBoard::Custom,
            chip_label: Some("no-such-chip-label".into()),
            led_line: Some(0),
            ..IndicatorConfig::default()
        };
        let e = Indicator::start(&cfg).expect_err("no chip has that label");
        let msg = e.to_string();
        assert!(msg.contains("no-such-chip-label"), "{msg}");
        assert!(msg.contains("indicator.enabled = false"), "{msg}");
        assert!(matches!(e.exit_code(), EXIT_CONFIG | EXIT_RUNTIME));
    }
}
