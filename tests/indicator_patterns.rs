//! The status LED and buzzer through the public API: the pattern generator at explicit times
//! over a whole incident, the board profiles through the configuration, and the start-up
//! errors a trader sees when the chip is not there.

use tickguard::config::{IndicatorBoard, parse_str};
use tickguard::core::engine::Alarm;
use tickguard::core::time::Timestamp;
use tickguard::indicator::pattern::{Generator, Levels};
use tickguard::indicator::{EXIT_CONFIG, Indicator, board};

fn ms(n: u64) -> Timestamp {
    Timestamp::from_millis(n)
}

const OFF: Levels = Levels { led: false, buzzer: false };
const LED: Levels = Levels { led: true, buzzer: false };
const BOTH: Levels = Levels { led: true, buzzer: true };
const BUZZ: Levels = Levels { led: false, buzzer: true };

/// Levels of the generator, stepped every 50 ms from `from` to `to` under one alarm.
fn play(g: &mut Generator, from: u64, to: u64, alarm: Alarm, silenced: bool) -> Vec<(u64, Levels)> {
    (from..to).step_by(50).map(|t| (t, g.update(ms(t), alarm, silenced).levels)).collect()
}

/// (start, end, levels) runs of equal levels.
fn runs(samples: &[(u64, Levels)]) -> Vec<(u64, u64, Levels)> {
    let mut out: Vec<(u64, u64, Levels)> = Vec::new();
    for &(t, l) in samples {
        match out.last_mut() {
            Some(r) if r.2 == l => r.1 = t + 50,
            _ => out.push((t, t + 50, l)),
        }
    }
    out
}

#[test]
fn an_incident_at_explicit_times() {
    let mut g = Generator::new(ms(0));

    // 0 .. 1.2 s: the self-test, whatever the engine says.
    let st = runs(&play(&mut g, 0, 1_200, Alarm::Stale, false));
    assert_eq!(st, vec![(0, 400, BOTH), (400, 800, LED), (800, 1_200, OFF)]);

    // 1.2 .. 7.2 s: live: a 300 ms flash every 2 s, the buzzer silent.
    let live = runs(&play(&mut g, 1_200, 7_200, Alarm::Live, false));
    assert_eq!(
        live,
        vec![
            (1_200, 1_500, LED),
            (1_500, 3_200, OFF),
            (3_200, 3_500, LED),
            (3_500, 5_200, OFF),
            (5_200, 5_500, LED),
            (5_500, 7_200, OFF),
        ]
    );

    // 7.2 s: the feed dies: stale, 1 s on / 1 s off from the moment it starts.
    let stale = runs(&play(&mut g, 7_200, 11_200, Alarm::Stale, false));
    assert_eq!(
        stale,
        vec![(7_200, 8_200, LED), (8_200, 9_200, OFF), (9_200, 10_200, LED), (10_200, 11_200, OFF)]
    );

    // 11.2 s: a position goes blind: fast blink, a chirp now and 2.4 s later.
    let blind = play(&mut g, 11_200, 16_000, Alarm::Blind, false);
    let chirps: Vec<(u64, u64)> =
        runs(&blind).into_iter().filter(|r| r.2.buzzer).map(|r| (r.0, r.1)).collect();
    assert_eq!(chirps, vec![(11_200, 11_500), (13_600, 13_900)]);
    let led_on: Vec<u64> = runs(&blind).iter().filter(|r| r.2.led).map(|r| r.1 - r.0).collect();
    assert!(led_on.iter().all(|d| *d == 300), "fast blink: {led_on:?}");
    assert_eq!(led_on.len(), 8);

    // 16 s: the operator acknowledges: the LED goes on blinking, the buzzer stops.
    let acked = play(&mut g, 16_000, 20_000, Alarm::Blind, true);
    assert!(acked.iter().all(|(_, l)| !l.buzzer));
    assert!(acked.iter().any(|(_, l)| l.led) && acked.iter().any(|(_, l)| !l.led));

    // 20 s: a close fails for good: the buzzer sounds without a break, under a double flash.
    let failed = runs(&play(&mut g, 20_000, 24_000, Alarm::CloseFailed, false));
    assert_eq!(
        failed,
        vec![
            (20_000, 20_300, BOTH),
            (20_300, 20_600, BUZZ),
            (20_600, 20_900, BOTH),
            (20_900, 22_000, BUZZ),
            (22_000, 22_300, BOTH),
            (22_300, 22_600, BUZZ),
            (22_600, 22_900, BOTH),
            (22_900, 24_000, BUZZ),
        ]
    );

    // Acknowledged: silent, still flashing.
    let o = g.update(ms(24_000), Alarm::CloseFailed, true);
    assert_eq!((o.shown.name, o.levels, o.changed), ("close-failed-silenced", LED, true));
    assert_eq!(o.next_change, ms(24_300));

    // Back to healthy: the heartbeat again, starting with its flash.
    let o = g.update(ms(25_000), Alarm::Live, false);
    assert_eq!((o.shown.name, o.levels, o.next_change), ("live", LED, ms(25_300)));
}

#[test]
fn without_a_new_engine_time_the_line_does_not_move() {
    // The indicator plays patterns at the time the engine task hands it: a stalled engine
    // loop hands none, so the last levels stay (a frozen heartbeat reads as a fault).
    let mut g = Generator::new(ms(0));
    play(&mut g, 0, 3_000, Alarm::Live, false);
    let last = g.update(ms(3_100), Alarm::Live, false);
    for _ in 0..100 {
        let again = g.update(ms(3_100), Alarm::Live, false);
        assert_eq!(again.levels, last.levels);
        assert!(!again.changed);
    }
}

#[test]
fn next_change_is_when_the_levels_change() {
    let mut g = Generator::new(ms(0));
    let mut t = 1_200;
    let mut prev = g.update(ms(t), Alarm::Stale, false);
    for _ in 0..10 {
        let next = prev.next_change;
        // Just before the announced change: same levels; at it: different.
        let before = g.update(Timestamp::from_nanos(next.as_nanos() - 1), Alarm::Stale, false);
        assert_eq!(before.levels, prev.levels);
        prev = g.update(next, Alarm::Stale, false);
        assert_ne!(prev.levels, before.levels);
        t = next.as_nanos() / 1_000_000;
    }
    assert_eq!(t, 11_200);
}

#[test]
fn board_profiles_through_the_configuration() {
    let cfg = parse_str("[indicator]\nenabled = true\nboard = \"rpi5\"\nbuzzer_line = 22\n", "t", Vec::new())
        .expect("valid");
    assert_eq!(cfg.indicator.board, IndicatorBoard::Rpi5);
    let w = board::resolve(&cfg.indicator, None).expect("resolves");
    assert_eq!(w.describe(), "board=rpi5 chip=pinctrl-rp1 led=17 buzzer=22 active=high");

    // An environment override may bring a key back to the board's value.
    let env = vec![("TICKGUARD_INDICATOR_BUZZER_LINE".to_string(), String::new())];
    let cfg = parse_str("[indicator]\nboard = \"rpi4\"\nbuzzer_line = 22\n", "t", env).expect("valid");
    assert_eq!(cfg.indicator.buzzer_line, None);
    assert_eq!(board::resolve(&cfg.indicator, None).map(|w| w.buzzer_line).ok(), Some(Some(27)));

    // auto on a Raspberry Pi 5's device tree.
    let cfg = parse_str("[indicator]\nenabled = true\n", "t", Vec::new()).expect("valid");
    let w = board::resolve(&cfg.indicator, Some(b"raspberrypi,5-model-b\0brcm,bcm2712\0")).expect("rpi5");
    assert_eq!((w.board, w.chip_label.as_str()), (IndicatorBoard::Rpi5, "pinctrl-rp1"));
}

#[test]
fn configuration_mistakes_name_the_key() {
    let e = parse_str("[indicator]\nenabled = true\nboard = \"custom\"\nled_line = 3\n", "t", Vec::new())
        .expect_err("custom needs a chip");
    assert!(e.to_string().contains("indicator.chip_label"), "{e}");
    let e = parse_str("[indicator]\nled_line = 5000\n", "t", Vec::new()).expect_err("out of range");
    assert!(e.to_string().contains("indicator.led_line"), "{e}");
    let e = parse_str("[indicator]\nboard = \"rpi3\"\n", "t", Vec::new()).expect_err("unknown board");
    assert!(e.to_string().contains("auto, rpi4, rpi5, qemu-virt, custom"), "{e}");
    let e = parse_str("[indicator]\nchip_label = \"\"\n", "t", Vec::new()).expect_err("empty label");
    assert!(e.to_string().contains("indicator.chip_label"), "{e}");
}

#[test]
fn a_chip_that_is_not_there_is_a_clear_start_up_error() {
    let cfg = parse_str(
        "[indicator]\nenabled = true\nboard = \"custom\"\nchip_label = \"tickguard-absent\"\nled_line = 0\n",
        "t",
        Vec::new(),
    )
    .expect("valid");
    let e = Indicator::start(&cfg.indicator).expect_err("no chip carries that label here");
    let msg = e.to_string();
    assert!(msg.contains("\"tickguard-absent\""), "{msg}");
    assert!(msg.contains("indicator.enabled = false"), "{msg}");
    // A wrong label is a configuration error (78: systemd does not restart on it); a chip
    // that cannot be opened may pass (1: systemd retries).
    if msg.contains("no GPIO chip labelled") {
        assert_eq!(e.exit_code(), EXIT_CONFIG);
    }

    // Disabled (the default): nothing is opened, nothing can fail.
    let cfg = parse_str("", "t", Vec::new()).expect("valid");
    assert!(matches!(Indicator::start(&cfg.indicator), Ok(None)));
}

#[test]
fn the_binary_refuses_to_start_without_its_chip() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickguard"))
        .args(["demo", "--for", "5s"])
        .env("TICKGUARD_INDICATOR_ENABLED", "true")
        .env("TICKGUARD_INDICATOR_BOARD", "custom")
        .env("TICKGUARD_INDICATOR_CHIP_LABEL", "tickguard-absent")
        .env("TICKGUARD_INDICATOR_LED_LINE", "0")
        .output()
        .expect("run tickguard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("start-up error: indicator:"), "{stderr}");
    assert!(stderr.contains("\"tickguard-absent\""), "{stderr}");
    assert!(matches!(out.status.code(), Some(78) | Some(1)), "exit {:?}: {stderr}", out.status.code());
    // Before any round was played: nothing on stdout past the banner.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("summary"));
}
