//! The indicator's settings (`[indicator]` of the configuration, which fills them).

/// `[indicator]`: the status LED and buzzer (see docs/indicator.md and docs/board.md).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IndicatorConfig {
    /// `indicator.enabled`.
    pub enabled: bool,
    /// `indicator.board`: `auto`, `rpi4`, `rpi5`, `qemu-virt` or `custom`.
    pub board: IndicatorBoard,
    /// `indicator.chip_label`; `None`: the board's.
    pub chip_label: Option<String>,
    /// `indicator.led_line`; `None`: the board's.
    pub led_line: Option<u16>,
    /// `indicator.buzzer_line`; `None`: the board's.
    pub buzzer_line: Option<u16>,
    /// `indicator.active_low`; `None`: the board's.
    pub active_low: Option<bool>,
}

/// `indicator.board`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum IndicatorBoard {
    /// Read the device tree's `compatible` and pick the matching profile.
    #[default]
    Auto,
    /// Raspberry Pi 4 / 400 / CM4.
    Rpi4,
    /// Raspberry Pi 5.
    Rpi5,
    /// QEMU's arm64 `virt` machine with a `gpio-sim` chip (the board test).
    QemuVirt,
    /// No profile: `indicator.chip_label` and `indicator.led_line` are required.
    Custom,
}

impl IndicatorBoard {
    /// Parses the word of `indicator.board`.
    pub fn parse(s: &str) -> Option<IndicatorBoard> {
        match s {
            "auto" => Some(IndicatorBoard::Auto),
            "rpi4" => Some(IndicatorBoard::Rpi4),
            "rpi5" => Some(IndicatorBoard::Rpi5),
            "qemu-virt" => Some(IndicatorBoard::QemuVirt),
            "custom" => Some(IndicatorBoard::Custom),
            _ => None,
        }
    }
    /// The word of `indicator.board`.
    pub fn as_str(self) -> &'static str {
        match self {
            IndicatorBoard::Auto => "auto",
            IndicatorBoard::Rpi4 => "rpi4",
            IndicatorBoard::Rpi5 => "rpi5",
            IndicatorBoard::QemuVirt => "qemu-virt",
            IndicatorBoard::Custom => "custom",
        }
    }
}
