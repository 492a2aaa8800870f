//! Board profiles and the wiring they resolve to.
//!
//! A profile (`board/profiles/*.toml`, compiled in) is an `[indicator]` fragment of the
//! configuration: the label of the GPIO chip (chip numbers differ between kernels and boards,
//! labels do not), the line offsets of the LED and the buzzer, and their active level. Keys
//! set in the configuration override the profile one by one. `auto` picks the profile from the
//! device tree's `compatible`.

use toml::de::{DeTable, DeValue};

use super::{IndicatorBoard, IndicatorConfig};

use super::IndicatorError;

/// The compiled-in profiles: board, file name, text.
pub const PROFILES: [(IndicatorBoard, &str, &str); 3] = [
    (IndicatorBoard::Rpi4, "board/profiles/rpi4.toml", include_str!("../../board/profiles/rpi4.toml")),
    (IndicatorBoard::Rpi5, "board/profiles/rpi5.toml", include_str!("../../board/profiles/rpi5.toml")),
    (
        IndicatorBoard::QemuVirt,
        "board/profiles/qemu-virt.toml",
        include_str!("../../board/profiles/qemu-virt.toml"),
    ),
];

/// Where the device tree's root `compatible` property is read from, first found wins.
pub const COMPATIBLE_PATHS: [&str; 2] =
    ["/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible"];

/// The lines to drive, fully resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wiring {
    /// The profile used (never `auto`).
    pub board: IndicatorBoard,
    /// Label of the GPIO chip.
    pub chip_label: String,
    /// Line offset of the LED.
    pub led_line: u32,
    /// Line offset of the buzzer, if there is one.
    pub buzzer_line: Option<u32>,
    /// Whether *on* is the low level.
    pub active_low: bool,
}

impl Wiring {
    /// `board=rpi5 chip=pinctrl-rp1 led=17 buzzer=27 active=high`, for logs.
    pub fn describe(&self) -> String {
        format!(
            "board={} chip={} led={} buzzer={} active={}",
            self.board.as_str(),
            self.chip_label,
            self.led_line,
            self.buzzer_line.map_or_else(|| "none".to_string(), |b| b.to_string()),
            if self.active_low { "low" } else { "high" }
        )
    }
}

/// The `[indicator]` keys of a board's profile (`None` for `auto` and `custom`).
pub fn profile(board: IndicatorBoard) -> Result<Option<IndicatorConfig>, IndicatorError> {
    let Some((_, file, text)) = PROFILES.iter().find(|(b, _, _)| *b == board) else {
        return Ok(None);
    };
    parse_profile(text).map(Some).map_err(|problem| IndicatorError::Profile { file, problem })
}

/// A profile's `[indicator]` table: `chip_label`, `led_line`, `buzzer_line`, `active_low`,
/// nothing else (the profiles are compiled in; `every_profile_parses_and_is_complete` reads
/// each of them).
fn parse_profile(text: &str) -> Result<IndicatorConfig, String> {
    let doc = DeTable::parse(text).map_err(|e| e.to_string())?;
    let mut out = IndicatorConfig::default();
    for (k, v) in doc.get_ref() {
        let DeValue::Table(t) = v.get_ref() else {
            return Err(format!("{}: a profile holds only the [indicator] table", k.get_ref()));
        };
        if k.get_ref() != "indicator" {
            return Err(format!("[{}]: a profile holds only the [indicator] table", k.get_ref()));
        }
        for (k, v) in t {
            let key = k.get_ref().as_ref();
            let line = |v: &DeValue<'_>| match v {
                DeValue::Integer(i) => u16::from_str_radix(i.as_str(), i.radix())
                    .map_err(|_| format!("indicator.{key}: a line offset 0..=65535")),
                _ => Err(format!("indicator.{key}: expected an integer")),
            };
            match (key, v.get_ref()) {
                ("chip_label", DeValue::String(s)) => out.chip_label = Some(s.to_string()),
                ("led_line", v) => out.led_line = Some(line(v)?),
                ("buzzer_line", v) => out.buzzer_line = Some(line(v)?),
                ("active_low", DeValue::Boolean(b)) => out.active_low = Some(*b),
                _ => return Err(format!("indicator.{key}: not a profile key, or not of its type")),
            }
        }
    }
    Ok(out)
}

/// The board a device tree `compatible` property (NUL-separated strings, most specific
/// first) describes, if tickguard has a profile for it.
pub fn detect(compatible: &[u8]) -> Option<IndicatorBoard> {
    for entry in compatible.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let board = match entry {
            b"raspberrypi,5-model-b" | b"raspberrypi,5-compute-module" | b"brcm,bcm2712" => {
                IndicatorBoard::Rpi5
            }
            b"raspberrypi,4-model-b"
            | b"raspberrypi,400"
            | b"raspberrypi,4-compute-module"
            | b"brcm,bcm2711" => IndicatorBoard::Rpi4,
            b"linux,dummy-virt" => IndicatorBoard::QemuVirt,
            _ => continue,
        };
        return Some(board);
    }
    None
}

/// Reads the device tree's root `compatible`, if the system has a device tree.
pub fn read_compatible() -> Option<Vec<u8>> {
    COMPATIBLE_PATHS.iter().find_map(|p| std::fs::read(p).ok())
}

/// Resolves the configuration against its board's profile. `compatible` is the device tree's
/// root `compatible` (only read for `auto`; [`read_compatible`] on a real system).
pub fn resolve(cfg: &IndicatorConfig, compatible: Option<&[u8]>) -> Result<Wiring, IndicatorError> {
    let board = match cfg.board {
        IndicatorBoard::Auto => {
            let seen = compatible.map(|c| {
                c.split(|b| *b == 0)
                    .filter(|e| !e.is_empty())
                    .map(|e| String::from_utf8_lossy(e).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            match compatible.and_then(detect) {
                Some(b) => b,
                // Explicit keys still make a complete wiring: treat it as custom.
                None if cfg.chip_label.is_some() && cfg.led_line.is_some() => IndicatorBoard::Custom,
                None => return Err(IndicatorError::UnknownBoard { compatible: seen }),
            }
        }
        b => b,
    };
    let base = profile(board)?.unwrap_or_default();
    let chip_label = cfg
        .chip_label
        .clone()
        .or(base.chip_label)
        .ok_or(IndicatorError::Incomplete { key: "indicator.chip_label" })?;
    let led_line =
        cfg.led_line.or(base.led_line).ok_or(IndicatorError::Incomplete { key: "indicator.led_line" })?;
    let buzzer_line = cfg.buzzer_line.or(base.buzzer_line);
    if buzzer_line == Some(led_line) {
        return Err(IndicatorError::SameLine { line: u32::from(led_line) });
    }
    Ok(Wiring {
        board,
        chip_label,
        led_line: u32::from(led_line),
        buzzer_line: buzzer_line.map(u32::from),
        active_low: cfg.active_low.or(base.active_low).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(board: IndicatorBoard) -> IndicatorConfig {
        IndicatorConfig { enabled: true, board, ..IndicatorConfig::default() }
    }

    #[test]
    fn every_profile_parses_and_is_complete() {
        for (board, file, _) in PROFILES {
            let w = resolve(&cfg(board), None).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(w.board, board);
            assert!(w.buzzer_line.is_some(), "{file} has a buzzer");
        }
    }

    #[test]
    fn profiles_name_chips_by_label() {
        let w = |b| resolve(&cfg(b), None).map(|w| w.describe()).unwrap_or_default();
        assert_eq!(w(IndicatorBoard::Rpi4), "board=rpi4 chip=pinctrl-bcm2711 led=17 buzzer=27 active=high");
        assert_eq!(w(IndicatorBoard::Rpi5), "board=rpi5 chip=pinctrl-rp1 led=17 buzzer=27 active=high");
        assert_eq!(
            w(IndicatorBoard::QemuVirt),
            "board=qemu-virt chip=tickguard-sim led=0 buzzer=1 active=high"
        );
    }

    #[test]
    fn keys_override_the_profile_one_by_one() {
        let c =
            IndicatorConfig { buzzer_line: Some(22), active_low: Some(true), ..cfg(IndicatorBoard::Rpi5) };
        let w = resolve(&c, None).expect("resolves");
        assert_eq!(
            (w.chip_label.as_str(), w.led_line, w.buzzer_line, w.active_low),
            ("pinctrl-rp1", 17, Some(22), true)
        );
    }

    #[test]
    fn detects_boards_from_the_device_tree() {
        assert_eq!(detect(b"raspberrypi,5-model-b\0brcm,bcm2712\0"), Some(IndicatorBoard::Rpi5));
        assert_eq!(detect(b"raspberrypi,4-model-b\0brcm,bcm2711\0"), Some(IndicatorBoard::Rpi4));
        assert_eq!(detect(b"raspberrypi,400\0brcm,bcm2711\0"), Some(IndicatorBoard::Rpi4));
        assert_eq!(detect(b"linux,dummy-virt\0"), Some(IndicatorBoard::QemuVirt));
        assert_eq!(detect(b"raspberrypi,3-model-b\0brcm,bcm2837\0"), None);
        assert_eq!(detect(b""), None);
    }

    #[test]
    fn auto_without_a_known_board_is_a_clear_error() {
        let e = resolve(&cfg(IndicatorBoard::Auto), Some(b"acme,widget\0acme,soc\0")).unwrap_err();
        assert!(e.to_string().contains("acme,widget, acme,soc"), "{e}");
        assert!(e.to_string().contains("indicator.board"), "{e}");
        let e = resolve(&cfg(IndicatorBoard::Auto), None).unwrap_err();
        assert!(e.to_string().contains("no device tree"), "{e}");
        // With the keys set, auto needs no profile.
        let c = IndicatorConfig {
            chip_label: Some("gpio-x".into()),
            led_line: Some(3),
            ..cfg(IndicatorBoard::Auto)
        };
        let w = resolve(&c, Some(b"acme,widget\0")).expect("custom wiring");
        assert_eq!((w.board, w.buzzer_line), (IndicatorBoard::Custom, None));
    }

    #[test]
    fn custom_needs_its_keys_and_distinct_lines() {
        let e = resolve(&cfg(IndicatorBoard::Custom), None).unwrap_err();
        assert!(e.to_string().contains("indicator.chip_label"), "{e}");
        let c = IndicatorConfig { led_line: Some(27), ..cfg(IndicatorBoard::Rpi4) };
        let e = resolve(&c, None).unwrap_err();
        assert!(e.to_string().contains("line 27"), "{e}");
    }
}
