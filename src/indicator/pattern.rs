//! The sans-IO pattern generator: the engine's [`Alarm`] and the time in, line levels out.
//!
//! No IO, no clock: every call takes `now`, a core [`Timestamp`] that the engine task itself
//! produced (see [`super`]): when the engine loop stops turning no new `now` arrives and the
//! lines stop changing, so a frozen LED reads as a fault.
//!
//! Each pattern is a table of steps of at least [`MIN_STEP_MS`] (300 ms, readable across a
//! room and robust to an emulated clock), played from the moment the pattern was entered, so a
//! change of state shows at once. Healthy is a heartbeat, never a steady level.
//!
//! | shown | LED | buzzer |
//! |---|---|---|
//! | `self-test` | on 800 ms, then off 400 ms, once at start | on for the first 400 ms |
//! | `live` | flash 300 ms every 2 s | off |
//! | `stale` | 1 s on, 1 s off | off |
//! | `blind` | 300 ms on, 300 ms off | chirp 300 ms every 2.4 s |
//! | `blind-silenced` | 300 ms on, 300 ms off | off |
//! | `close-failed` | double flash (300 on, 300 off, 300 on) every 2 s | continuous |
//! | `close-failed-silenced` | double flash every 2 s | off |

use core::time::Duration;

use crate::core::engine::Alarm;
use crate::core::time::Timestamp;

/// The shortest step of any pattern, in milliseconds.
pub const MIN_STEP_MS: u32 = 300;

/// Levels of the two lines: `true` is *on* (the driver maps it to the board's active level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Levels {
    /// The status LED.
    pub led: bool,
    /// The buzzer.
    pub buzzer: bool,
}

impl Levels {
    /// Both lines off.
    pub const OFF: Levels = Levels { led: false, buzzer: false };
}

/// One step of a pattern: the levels held until `until_ms` after the pattern started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// End of the step, in ms from the start of the pattern (or of its period).
    pub until_ms: u32,
    /// The levels during the step.
    pub levels: Levels,
}

const fn step(until_ms: u32, led: bool, buzzer: bool) -> Step {
    Step { until_ms, levels: Levels { led, buzzer } }
}

/// A pattern: steps played once, or repeated with the period of the last step's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// Name, as logged (`[INDICATOR] state=...`) and documented.
    pub name: &'static str,
    /// Steps, in order; `until_ms` strictly increasing.
    pub steps: &'static [Step],
    /// Whether the steps repeat; otherwise the last step's levels hold.
    pub repeat: bool,
}

impl Pattern {
    /// The period (one pass over the steps), in ms.
    pub fn period_ms(&self) -> u32 {
        self.steps.last().map_or(1, |s| s.until_ms.max(1))
    }

    /// Levels at `elapsed` since the pattern started, and how long they hold from then
    /// (`None`: for ever).
    pub fn at(&self, elapsed: Duration) -> (Levels, Option<Duration>) {
        let period = u64::from(self.period_ms());
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if !self.repeat && ms >= period {
            return (self.steps.last().map_or(Levels::OFF, |s| s.levels), None);
        }
        let phase = if self.repeat { ms % period } else { ms };
        for s in self.steps {
            let until = u64::from(s.until_ms);
            if phase < until {
                // Keep the sub-millisecond part so the next change lands on the boundary.
                let sub = u64::from(elapsed.subsec_nanos() % 1_000_000);
                return (s.levels, Some(Duration::from_millis(until - phase) - Duration::from_nanos(sub)));
            }
        }
        (Levels::OFF, None)
    }

    /// The steps as the documentation writes them: `on 300 / off 1700 ms` per line.
    pub fn describe(&self, buzzer: bool) -> String {
        let mut out = String::new();
        let mut start = 0u32;
        let mut prev: Option<(bool, u32)> = None;
        let mut parts: Vec<(bool, u32)> = Vec::new();
        for s in self.steps {
            let on = if buzzer { s.levels.buzzer } else { s.levels.led };
            let len = s.until_ms - start;
            start = s.until_ms;
            match prev {
                Some((p, l)) if p == on => prev = Some((p, l + len)),
                Some(x) => {
                    parts.push(x);
                    prev = Some((on, len));
                }
                None => prev = Some((on, len)),
            }
        }
        if let Some(x) = prev {
            parts.push(x);
        }
        for (i, (on, len)) in parts.iter().enumerate() {
            if i > 0 {
                out.push_str(" / ");
            }
            out.push_str(if *on { "on " } else { "off " });
            out.push_str(&len.to_string());
        }
        out.push_str(" ms");
        if !self.repeat {
            out.push_str(", once");
        }
        out
    }
}

/// Start-up self-test: both outputs visibly and audibly work.
pub const SELF_TEST: Pattern = Pattern {
    name: "self-test",
    steps: &[step(400, true, true), step(800, true, false), step(1200, false, false)],
    repeat: false,
};
/// Healthy: a short flash every 2 s, driven by the engine loop's own clock.
pub const LIVE: Pattern =
    Pattern { name: "live", steps: &[step(300, true, false), step(2000, false, false)], repeat: true };
/// Some price is stale or the feed is down: a slow even blink.
pub const STALE: Pattern =
    Pattern { name: "stale", steps: &[step(1000, true, false), step(2000, false, false)], repeat: true };
/// A position is blind: fast blink and a buzzer chirp every 2.4 s.
pub const BLIND: Pattern = Pattern {
    name: "blind",
    steps: &[
        step(300, true, true),
        step(600, false, false),
        step(900, true, false),
        step(1200, false, false),
        step(1500, true, false),
        step(1800, false, false),
        step(2100, true, false),
        step(2400, false, false),
    ],
    repeat: true,
};
/// Blind, acknowledged by the operator: fast blink, buzzer silent.
pub const BLIND_SILENCED: Pattern = Pattern {
    name: "blind-silenced",
    steps: &[step(300, true, false), step(600, false, false)],
    repeat: true,
};
/// A close failed for good: a double flash every 2 s, buzzer continuous until acknowledged.
pub const CLOSE_FAILED: Pattern = Pattern {
    name: "close-failed",
    steps: &[step(300, true, true), step(600, false, true), step(900, true, true), step(2000, false, true)],
    repeat: true,
};
/// A close failed, acknowledged: the double flash, buzzer silent.
pub const CLOSE_FAILED_SILENCED: Pattern = Pattern {
    name: "close-failed-silenced",
    steps: &[
        step(300, true, false),
        step(600, false, false),
        step(900, true, false),
        step(2000, false, false),
    ],
    repeat: true,
};

/// Every pattern, in documentation order.
pub const ALL: [&Pattern; 7] =
    [&SELF_TEST, &LIVE, &STALE, &BLIND, &BLIND_SILENCED, &CLOSE_FAILED, &CLOSE_FAILED_SILENCED];

/// The pattern for an alarm and whether the operator silenced it.
pub fn for_alarm(alarm: Alarm, silenced: bool) -> &'static Pattern {
    match (alarm, silenced) {
        (Alarm::CloseFailed, false) => &CLOSE_FAILED,
        (Alarm::CloseFailed, true) => &CLOSE_FAILED_SILENCED,
        (Alarm::Blind, false) => &BLIND,
        (Alarm::Blind, true) => &BLIND_SILENCED,
        (Alarm::Stale, _) => &STALE,
        (Alarm::Live, _) => &LIVE,
    }
}

/// What [`Generator::update`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    /// The levels to write now.
    pub levels: Levels,
    /// The pattern shown.
    pub shown: &'static Pattern,
    /// Whether the pattern changed with this call.
    pub changed: bool,
    /// When the levels change next if the state stays (`NEVER`: not before the state changes).
    pub next_change: Timestamp,
}

/// The pattern generator: plays the self-test from `boot`, then the pattern of the latest
/// alarm, each pattern from the moment it was entered.
#[derive(Clone, Copy, Debug)]
pub struct Generator {
    shown: &'static Pattern,
    entered: Timestamp,
}

impl Generator {
    /// A generator whose self-test starts at `boot`.
    pub fn new(boot: Timestamp) -> Generator {
        Generator { shown: &SELF_TEST, entered: boot }
    }

    /// The pattern shown.
    pub fn shown(&self) -> &'static Pattern {
        self.shown
    }

    /// The levels at `now` for the engine's `alarm` (and whether it is silenced). `now` never
    /// goes backwards between calls.
    pub fn update(&mut self, now: Timestamp, alarm: Alarm, silenced: bool) -> Output {
        let mut changed = false;
        let self_test_over = now.since(self.entered).as_millis() >= u128::from(SELF_TEST.period_ms());
        // Patterns are compared by name: they are constants, whose addresses are not unique.
        if self.shown.name != SELF_TEST.name || self_test_over {
            let want = for_alarm(alarm, silenced);
            if want.name != self.shown.name {
                self.shown = want;
                self.entered = now;
                changed = true;
            }
        }
        let (levels, left) = self.shown.at(now.since(self.entered));
        let next_change = match left {
            Some(d) => Timestamp::from_nanos(
                now.as_nanos().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            ),
            None => Timestamp::NEVER,
        };
        Output { levels, shown: self.shown, changed, next_change }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ON: Levels = Levels { led: true, buzzer: false };
    const BOTH: Levels = Levels { led: true, buzzer: true };

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn every_step_is_long_enough_to_see() {
        for p in ALL {
            let mut start = 0;
            for s in p.steps {
                assert!(
                    s.until_ms - start >= MIN_STEP_MS,
                    "{}: step ending {} too short",
                    p.name,
                    s.until_ms
                );
                start = s.until_ms;
            }
        }
    }

    #[test]
    fn patterns_are_distinct() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert!(
                    a.describe(false) != b.describe(false) || a.describe(true) != b.describe(true),
                    "{} and {} look and sound the same",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn healthy_is_never_a_steady_level() {
        let (a, _) = LIVE.at(Duration::from_millis(100));
        let (b, _) = LIVE.at(Duration::from_millis(1000));
        assert_ne!(a, b);
        const { assert!(LIVE.repeat) };
    }

    #[test]
    fn self_test_then_live_heartbeat() {
        let mut g = Generator::new(ms(0));
        let o = g.update(ms(0), Alarm::Live, false);
        assert_eq!((o.levels, o.shown.name), (BOTH, "self-test"));
        assert_eq!(o.next_change, ms(400));
        assert_eq!(g.update(ms(500), Alarm::Live, false).levels, ON);
        let o = g.update(ms(900), Alarm::Live, false);
        assert_eq!((o.levels, o.next_change), (Levels::OFF, ms(1200)));
        // The self-test is over at 1200 ms: the heartbeat starts with its flash.
        let o = g.update(ms(1200), Alarm::Live, false);
        assert_eq!((o.levels, o.shown.name, o.changed), (ON, "live", true));
        assert_eq!(o.next_change, ms(1500));
        let o = g.update(ms(1500), Alarm::Live, false);
        assert_eq!((o.levels, o.changed, o.next_change), (Levels::OFF, false, ms(3200)));
        assert_eq!(g.update(ms(3200), Alarm::Live, false).levels, ON);
        assert_eq!(g.update(ms(3499), Alarm::Live, false).levels, ON);
        assert_eq!(g.update(ms(3500), Alarm::Live, false).levels, Levels::OFF);
    }

    #[test]
    fn the_self_test_runs_whatever_the_alarm() {
        let mut g = Generator::new(ms(10_000));
        assert_eq!(g.update(ms(10_100), Alarm::CloseFailed, false).shown.name, "self-test");
        assert_eq!(g.update(ms(11_199), Alarm::CloseFailed, false).levels, Levels::OFF);
        let o = g.update(ms(11_200), Alarm::CloseFailed, false);
        assert_eq!((o.shown.name, o.levels), ("close-failed", BOTH));
    }

    #[test]
    fn stale_is_a_slow_even_blink_from_the_moment_it_starts() {
        let mut g = Generator::new(ms(0));
        g.update(ms(5_000), Alarm::Live, false);
        let o = g.update(ms(5_100), Alarm::Stale, false);
        assert_eq!((o.levels, o.shown.name, o.changed, o.next_change), (ON, "stale", true, ms(6_100)));
        assert_eq!(g.update(ms(6_099), Alarm::Stale, false).levels, ON);
        assert_eq!(g.update(ms(6_100), Alarm::Stale, false).levels, Levels::OFF);
        assert_eq!(g.update(ms(7_100), Alarm::Stale, false).levels, ON);
    }

    #[test]
    fn blind_chirps_and_silencing_stops_the_buzzer_only() {
        let mut g = Generator::new(ms(0));
        g.update(ms(2_000), Alarm::Live, false);
        assert_eq!(g.update(ms(3_000), Alarm::Blind, false).levels, BOTH);
        assert_eq!(g.update(ms(3_300), Alarm::Blind, false).levels, Levels::OFF);
        assert_eq!(g.update(ms(3_600), Alarm::Blind, false).levels, ON);
        assert_eq!(g.update(ms(5_400), Alarm::Blind, false).levels, BOTH, "next chirp 2.4 s later");
        let o = g.update(ms(5_500), Alarm::Blind, true);
        assert_eq!((o.shown.name, o.levels), ("blind-silenced", ON));
        for t in (5_500..9_000).step_by(50) {
            assert!(!g.update(ms(t), Alarm::Blind, true).levels.buzzer);
        }
    }

    #[test]
    fn close_failed_sounds_until_acknowledged() {
        let mut g = Generator::new(ms(0));
        g.update(ms(2_000), Alarm::Live, false);
        for t in (2_000..6_000).step_by(100) {
            assert!(g.update(ms(t), Alarm::CloseFailed, false).levels.buzzer, "at {t}");
        }
        let o = g.update(ms(6_000), Alarm::CloseFailed, true);
        assert_eq!((o.shown.name, o.levels), ("close-failed-silenced", ON));
        assert_eq!(g.update(ms(6_300), Alarm::CloseFailed, true).levels, Levels::OFF);
    }

    #[test]
    fn no_new_time_no_new_level() {
        // The generator only moves when it is given a later `now`: the same `now` gives the
        // same answer, so a stalled engine loop freezes the line.
        let mut g = Generator::new(ms(0));
        g.update(ms(1_300), Alarm::Live, false);
        let a = g.update(ms(1_400), Alarm::Live, false);
        let b = g.update(ms(1_400), Alarm::Live, false);
        assert_eq!(a.levels, b.levels);
        assert!(!b.changed);
    }

    #[test]
    fn next_change_lands_on_the_boundary() {
        let (lv, left) = STALE.at(Duration::from_micros(999_250));
        assert_eq!(lv, ON);
        assert_eq!(left, Some(Duration::from_micros(750)));
        let (lv, left) = SELF_TEST.at(Duration::from_secs(5));
        assert_eq!((lv, left), (Levels::OFF, None));
    }

    #[test]
    fn descriptions() {
        assert_eq!(LIVE.describe(false), "on 300 / off 1700 ms");
        assert_eq!(LIVE.describe(true), "off 2000 ms");
        assert_eq!(BLIND.describe(true), "on 300 / off 2100 ms");
        assert_eq!(SELF_TEST.describe(false), "on 800 / off 400 ms, once");
        assert_eq!(CLOSE_FAILED.describe(true), "on 2000 ms");
        assert_eq!(CLOSE_FAILED.describe(false), "on 300 / off 300 / on 300 / off 1100 ms");
    }
}
