//! The thin driver: two output lines through the Linux GPIO character device (`gpiocdev`,
//! uAPI v2). No sysfs GPIO and no root: the user needs read-write access to the chip's
//! `/dev/gpiochipN` (the Debian package's udev rule gives it to the `gpio` group).

use std::path::PathBuf;

use gpiocdev::line::{Value, Values};

use super::IndicatorError;
use super::board::Wiring;
use super::pattern::Levels;

/// The consumer name the kernel shows for our lines (`gpioinfo`).
pub const CONSUMER: &str = "tickguard";

/// The requested LED and buzzer lines.
pub struct Lines {
    req: gpiocdev::Request,
    led: u32,
    buzzer: Option<u32>,
    /// The chip's device path (`/dev/gpiochip1`).
    pub path: PathBuf,
    last: Option<Levels>,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("path", &self.path)
            .field("led", &self.led)
            .field("buzzer", &self.buzzer)
            .finish()
    }
}

/// Finds the chip labelled `wiring.chip_label` and requests its lines as outputs, both off.
pub fn open(wiring: &Wiring) -> Result<Lines, IndicatorError> {
    let label = wiring.chip_label.as_str();
    let paths = gpiocdev::chip::chips().map_err(|e| IndicatorError::Io {
        what: "cannot list /dev/gpiochip*".into(),
        detail: e.to_string(),
    })?;
    let mut seen = Vec::new();
    let mut denied = Vec::new();
    let mut found = None;
    for path in paths {
        match gpiocdev::Chip::from_path(&path) {
            Ok(chip) => match chip.info() {
                Ok(info) if info.label == label => {
                    found = Some((chip, info));
                    break;
                }
                Ok(info) => seen.push(format!("{} [{}]", path.display(), info.label)),
                Err(e) => seen.push(format!("{} (unreadable: {e})", path.display())),
            },
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("ermission denied") {
                    denied.push(path.display().to_string());
                } else {
                    seen.push(format!("{} (cannot open: {msg})", path.display()));
                }
            }
        }
    }
    let Some((chip, info)) = found else {
        if !denied.is_empty() {
            return Err(IndicatorError::Permission { label: label.to_string(), paths: denied });
        }
        return Err(IndicatorError::NoChip { label: label.to_string(), seen });
    };
    let path = chip.path().to_path_buf();
    let mut offsets = vec![wiring.led_line];
    offsets.extend(wiring.buzzer_line);
    for &line in &offsets {
        if line >= info.num_lines {
            return Err(IndicatorError::LineOutOfRange {
                label: label.to_string(),
                path: path.display().to_string(),
                line,
                lines: info.num_lines,
            });
        }
        if let Ok(li) = chip.line_info(line) {
            if li.used {
                return Err(IndicatorError::Busy {
                    label: label.to_string(),
                    path: path.display().to_string(),
                    line,
                    consumer: if li.consumer.is_empty() { "(unnamed)".into() } else { li.consumer },
                });
            }
        }
    }
    drop(chip);
    let mut builder = gpiocdev::Request::builder();
    builder.on_chip(&path).with_consumer(CONSUMER).with_lines(&offsets).as_output(Value::Inactive);
    if wiring.active_low {
        builder.as_active_low();
    }
    let req = builder.request().map_err(|e| {
        let detail = e.to_string();
        if detail.contains("busy") {
            IndicatorError::Busy {
                label: label.to_string(),
                path: path.display().to_string(),
                line: wiring.led_line,
                consumer: "another process".into(),
            }
        } else {
            IndicatorError::Io {
                what: format!("cannot request lines {offsets:?} of {}", path.display()),
                detail,
            }
        }
    })?;
    Ok(Lines { req, led: wiring.led_line, buzzer: wiring.buzzer_line, path, last: Some(Levels::OFF) })
}

fn value(on: bool) -> Value {
    if on { Value::Active } else { Value::Inactive }
}

impl Lines {
    /// Sets both lines (one ioctl) unless they already hold these levels.
    pub fn set(&mut self, levels: Levels) -> Result<(), gpiocdev::Error> {
        if self.last == Some(levels) {
            return Ok(());
        }
        let mut v = Values::default();
        v.set(self.led, value(levels.led));
        if let Some(b) = self.buzzer {
            v.set(b, value(levels.buzzer));
        }
        // Unknown until the write succeeds: a failed write is retried on the next call.
        self.last = None;
        self.req.set_values(&v)?;
        self.last = Some(levels);
        Ok(())
    }
}
