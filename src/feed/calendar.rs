//! Market hours: when a quiet feed is normal.
//!
//! A [`Calendar`] (`feed.market_hours`, `feed.holidays`) says from the wall clock whether the
//! market is open; the venue's own `market_info` frames override it while the feed that sent
//! them is connected ([`MarketState`]). The result reaches the engine as
//! `FeedEvent::Market(open)`: while closed, a silent feed is not stale, nobody is blind, and a
//! close decided is held until the open.
//!
//! The calendar needs wall time, which a Raspberry Pi without an RTC may not have after a power
//! cut (it boots in 1970, or at the last saved time, until NTP syncs). So the edge passes the
//! wall time **and** whether the clock is synchronized ([`WallClock`]), and an unsynchronized
//! clock counts as *market open*: a wrong clock can make an alarm ring for nothing, never
//! silence one.
//!
//! Everything here but [`WallClock::now`] is pure (time is an argument).

use std::time::Duration;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;
/// A wall clock before this (2025-01-01T00:00:00Z) is not synchronized, whatever the system
/// says (a board that booted without its RTC).
pub const WALL_FLOOR_MS: i64 = 1_735_689_600_000;

/// Environment variable (tests only) that fakes the wall clock: an RFC 3339 time such as
/// `2026-01-07T16:00:00+05:30` (the clock starts there and runs with the monotonic clock),
/// optionally followed by `,unsynced` (the clock reports itself unsynchronized).
pub const FAKE_WALL_CLOCK_ENV: &str = "TICKGUARD_FAKE_WALL_CLOCK";

/// A civil date (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Year.
    pub y: i32,
    /// Month, 1 to 12.
    pub m: u8,
    /// Day, 1 to 31.
    pub d: u8,
}

impl Date {
    /// Parses `YYYY-MM-DD` (a real date: `2026-02-30` is refused).
    pub fn parse(s: &str) -> Result<Date, String> {
        let bad = || format!("{s:?} is not a date like 2026-01-26");
        let mut it = s.trim().splitn(3, '-');
        let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let y: i32 = y.parse().map_err(|_| bad())?;
        let m: u8 = m.parse().map_err(|_| bad())?;
        let d: u8 = d.parse().map_err(|_| bad())?;
        let date = Date { y, m, d };
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return Err(format!("{s:?} is not a day of the calendar"));
        }
        Ok(date)
    }
    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        days_from_civil(self.y, self.m, self.d)
    }
    /// The date of a day number.
    pub fn from_days(days: i64) -> Date {
        let (y, m, d) = civil_from_days(days);
        Date { y, m, d }
    }
}

impl core::fmt::Display for Date {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.y, self.m, self.d)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i32, m: u8, d: u8) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (y + i64::from(m <= 2)) as i32;
    (y, m, d)
}

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// When the market trades: windows of local time on some weekdays, in one time zone, except
/// holidays. `"always"` is a calendar that is always open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// `None`: always open (`feed.market_hours = "always"`).
    hours: Option<Hours>,
    holidays: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Hours {
    /// Minutes since local midnight, `[start, end)`.
    windows: Vec<(u16, u16)>,
    /// Offset of local time from UTC, minutes.
    offset_min: i32,
    /// Bit `1 << weekday` (0 = Sunday) for trading days.
    days: u8,
}

fn parse_hm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    match (h, m) {
        (24, 0) => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn parse_zone(s: &str) -> Option<i32> {
    match s {
        "Asia/Kolkata" | "Asia/Calcutta" | "IST" => return Some(330),
        "UTC" | "Etc/UTC" | "Z" => return Some(0),
        _ => {}
    }
    let t = s.strip_prefix("UTC").unwrap_or(s);
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return None,
    };
    let m = parse_hm(rest)?;
    (m <= 14 * 60).then_some(sign * i32::from(m))
}

fn parse_days(s: &str) -> Option<u8> {
    let day = |n: &str| DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(n));
    let mut bits = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut i = a;
                loop {
                    bits |= 1 << i;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => bits |= 1 << day(part)?,
        }
    }
    Some(bits)
}

impl Calendar {
    /// Always open.
    pub fn always() -> Calendar {
        Calendar { hours: None, holidays: Vec::new() }
    }

    /// Parses `feed.market_hours`: `"always"`, or `HH:MM-HH:MM[,HH:MM-HH:MM…] ZONE DAYS`, e.g.
    /// `09:15-15:30 Asia/Kolkata Mon-Fri`. ZONE is `Asia/Kolkata` (or `IST`), `UTC`, or a fixed
    /// offset `+05:30` / `UTC+05:30` (no daylight saving is applied: the Indian exchanges have
    /// none). DAYS is a list of days and ranges: `Mon-Fri`, `Mon,Wed,Fri`, `Sun-Fri`.
    pub fn parse(text: &str, holidays: &[Date]) -> Result<Calendar, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("always") {
            return Ok(Calendar::always());
        }
        let form = "write it like \"09:15-15:30 Asia/Kolkata Mon-Fri\" (or \"always\")";
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [windows, zone, days] = parts.as_slice() else {
            return Err(format!("expected three parts (hours, time zone, days); {form}"));
        };
        let mut ws = Vec::new();
        for w in windows.split(',') {
            let (a, b) =
                w.split_once('-').ok_or_else(|| format!("hours {w:?}: expected HH:MM-HH:MM; {form}"))?;
            let (Some(a), Some(b)) = (parse_hm(a), parse_hm(b)) else {
                return Err(format!("hours {w:?}: expected HH:MM-HH:MM (00:00 to 24:00); {form}"));
            };
            if a >= b {
                return Err(format!("hours {w:?}: the window must end after it starts (same day)"));
            }
            ws.push((a, b));
        }
        let offset_min = parse_zone(zone).ok_or_else(|| {
            format!("time zone {zone:?} not supported: use Asia/Kolkata, UTC, or a fixed offset like +05:30")
        })?;
        let days = parse_days(days)
            .filter(|b| *b != 0)
            .ok_or_else(|| format!("days {days:?}: expected names like Mon-Fri or Mon,Wed,Fri"))?;
        let mut holidays: Vec<i64> = holidays.iter().map(|d| d.days()).collect();
        holidays.sort_unstable();
        holidays.dedup();
        Ok(Calendar { hours: Some(Hours { windows: ws, offset_min, days }), holidays })
    }

    /// Whether the calendar is off (`"always"`).
    pub fn is_always(&self) -> bool {
        self.hours.is_none()
    }

    /// Whether the market is open at `unix_ms` by the calendar alone.
    pub fn is_open_at(&self, unix_ms: i64) -> bool {
        let Some(h) = &self.hours else { return true };
        let local = unix_ms + i64::from(h.offset_min) * 60_000;
        let day = local.div_euclid(DAY_MS);
        let minute = (local.rem_euclid(DAY_MS) / 60_000) as u16;
        let weekday = (day + 4).rem_euclid(7) as u8; // 1970-01-01 was a Thursday
        if h.days & (1 << weekday) == 0 || self.holidays.binary_search(&day).is_ok() {
            return false;
        }
        h.windows.iter().any(|(a, b)| (*a..*b).contains(&minute))
    }

    /// Whether the market counts as open at wall time `unix_ms` on a clock that is (or not)
    /// synchronized: an unsynchronized clock always counts as open.
    pub fn is_open(&self, unix_ms: i64, synced: bool) -> bool {
        !synced || unix_ms < WALL_FLOOR_MS || self.is_open_at(unix_ms)
    }
}

/// What the venue said about a segment's market (`marketInfo.segmentStatus`), reduced to
/// "trading continuously or not". Only `NORMAL_OPEN` is open: in pre-open and in the closing
/// session a market close order would not trade at a market price.
pub fn venue_status_open(status: i32) -> bool {
    status == super::upstox_proto::status::NORMAL_OPEN
}

/// Combines the calendar and the venue's word into the engine's market flag.
///
/// The venue's `market_info` overrides the calendar while the connection that delivered it is
/// up (a holiday the configuration does not list, a special session, an early close). When that
/// connection is lost the calendar rules again: a stale "closed" from a feed that is gone must
/// not silence alarms.
#[derive(Clone, Debug)]
pub struct MarketState {
    calendar: Calendar,
    venue: Option<bool>,
    last: Option<bool>,
}

/// Why the market flag is what it is (for logs and the status page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarketBasis {
    /// The venue's `market_info` on the live connection.
    Venue,
    /// The calendar on a synchronized clock.
    Calendar,
    /// The clock is not synchronized: open, whatever the calendar says.
    Unsynced,
    /// `feed.market_hours = "always"` and no word from the venue.
    Always,
}

impl MarketBasis {
    /// `venue`, `calendar`, `unsynced_clock` or `always`.
    pub fn as_str(self) -> &'static str {
        match self {
            MarketBasis::Venue => "venue",
            MarketBasis::Calendar => "calendar",
            MarketBasis::Unsynced => "unsynced_clock",
            MarketBasis::Always => "always",
        }
    }
}

impl MarketState {
    /// A state on `calendar`, no word from the venue yet.
    pub fn new(calendar: Calendar) -> MarketState {
        MarketState { calendar, venue: None, last: None }
    }
    /// The venue said the relevant segments are open (`Some(true)`) or not; `None` when the
    /// connection that said it is gone.
    pub fn set_venue(&mut self, open: Option<bool>) {
        self.venue = open;
    }
    /// The flag and its basis at wall time `unix_ms` on a clock synchronized or not.
    pub fn evaluate(&self, unix_ms: i64, synced: bool) -> (bool, MarketBasis) {
        if let Some(v) = self.venue {
            return (v, MarketBasis::Venue);
        }
        if self.calendar.is_always() {
            return (true, MarketBasis::Always);
        }
        if !synced || unix_ms < WALL_FLOOR_MS {
            return (true, MarketBasis::Unsynced);
        }
        (self.calendar.is_open_at(unix_ms), MarketBasis::Calendar)
    }
    /// Evaluates and returns `Some((open, basis))` when the flag differs from the last one
    /// returned (the first call always returns).
    pub fn changed(&mut self, unix_ms: i64, synced: bool) -> Option<(bool, MarketBasis)> {
        let (open, basis) = self.evaluate(unix_ms, synced);
        if self.last == Some(open) {
            return None;
        }
        self.last = Some(open);
        Some((open, basis))
    }
}

/// Parses an RFC 3339 time (`2026-01-07T16:00:00+05:30`, `...Z`, optional fraction) into
/// Unix ms.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', ' '])?;
    let date = Date::parse(date).ok()?;
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else {
        let i = rest.rfind(['+', '-'])?;
        (&rest[..i], parse_zone(&rest[i..])?)
    };
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut it = hms.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next().unwrap_or("0").parse().ok()?;
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let ms: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<3}")[..3].parse().ok()? };
    Some(date.days() * DAY_MS + ((h * 60 + m) * 60 + sec) * 1000 + ms - i64::from(offset_min) * 60_000)
}

/// The appliance's wall clock and whether it is synchronized.
///
/// Synchronized means: the time is after [`WALL_FLOOR_MS`] and either systemd-timesyncd has
/// marked it synchronized (`/run/systemd/timesync/synchronized`) or `timedatectl` reports the
/// kernel's NTP state as synchronized (`NTPSynchronized=yes`, which covers chrony and ntpd). If
/// neither can be asked, the clock counts as unsynchronized, and the market as open. The answer
/// is cached for a minute.
#[derive(Debug)]
pub struct WallClock {
    fake: Option<(i64, bool, std::time::Instant)>,
    cached: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl Default for WallClock {
    fn default() -> Self {
        WallClock::from_env()
    }
}

impl WallClock {
    /// The system clock, or the fake of [`FAKE_WALL_CLOCK_ENV`] when that is set.
    pub fn from_env() -> WallClock {
        let fake = std::env::var(FAKE_WALL_CLOCK_ENV).ok().and_then(|v| {
            let (t, flag) = v.split_once(',').unwrap_or((v.as_str(), "synced"));
            let at = parse_rfc3339(t);
            if at.is_none() {
                log::error!("{FAKE_WALL_CLOCK_ENV}={v:?} is not an RFC 3339 time; using the system clock");
            }
            at.map(|at| (at, flag.trim() != "unsynced", crate::bus::clock::mono_std()))
        });
        WallClock { fake, cached: std::sync::Mutex::new(None) }
    }

    /// A fixed fake clock starting at `unix_ms` (tests).
    pub fn fake(unix_ms: i64, synced: bool) -> WallClock {
        WallClock {
            fake: Some((unix_ms, synced, crate::bus::clock::mono_std())),
            cached: std::sync::Mutex::new(None),
        }
    }

    /// Whether the clock is a fake.
    pub fn is_fake(&self) -> bool {
        self.fake.is_some()
    }

    /// Wall time (Unix ms) and whether the clock is synchronized.
    pub fn now(&self) -> (i64, bool) {
        if let Some((at, synced, t0)) = self.fake {
            // The fake runs from its own start, and follows the test steps of the wall clock
            // (`runtime::clock::step_wall`) like the real one does.
            let ms = i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX);
            return (at.saturating_add(ms).saturating_add(crate::bus::clock::wall_offset_ms()), synced);
        }
        let ms = crate::bus::clock::wall_unix_ms();
        (ms, ms >= WALL_FLOOR_MS && self.system_synced())
    }

    fn system_synced(&self) -> bool {
        let mut slot = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, v)) = *slot {
            if at.elapsed() < Duration::from_secs(60) {
                return v;
            }
        }
        let v = std::path::Path::new("/run/systemd/timesync/synchronized").exists() || timedatectl_synced();
        *slot = Some((crate::bus::clock::mono_std(), v));
        v
    }
}

fn timedatectl_synced() -> bool {
    std::process::Command::new("timedatectl")
        .args(["show", "-p", "NTPSynchronized", "--value"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "yes")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ist(s: &str) -> i64 {
        parse_rfc3339(s).expect("time")
    }

    #[test]
    fn dates_round_trip() {
        for d in [-719_468, -1, 0, 59, 365, 10_957, 20_460, 2_932_896] {
            assert_eq!(Date::from_days(d).days(), d);
        }
        assert_eq!(Date::parse("2026-01-26").map(|d| d.to_string()).as_deref(), Ok("2026-01-26"));
        assert!(Date::parse("2026-02-29").is_err());
        assert!(Date::parse("2024-02-29").is_ok());
        assert!(Date::parse("26-01-26").is_err());
        assert_eq!(ist("1970-01-01T05:30:00+05:30"), 0);
        assert_eq!(ist("2026-01-07T11:24:16+05:30"), 1_767_765_256_000);
        assert_eq!(ist("2026-01-07T05:54:16.5Z"), 1_767_765_256_500);
    }

    #[test]
    fn nse_hours() {
        let cal = Calendar::parse("09:15-15:30 Asia/Kolkata Mon-Fri", &[Date { y: 2026, m: 1, d: 26 }])
            .expect("default parses");
        // Wednesday 2026-01-07.
        assert!(!cal.is_open_at(ist("2026-01-07T09:14:59+05:30")));
        assert!(cal.is_open_at(ist("2026-01-07T09:15:00+05:30")));
        assert!(cal.is_open_at(ist("2026-01-07T10:00:00+05:30")));
        assert!(cal.is_open_at(ist("2026-01-07T15:29:59+05:30")));
        assert!(!cal.is_open_at(ist("2026-01-07T15:30:00+05:30")));
        assert!(!cal.is_open_at(ist("2026-01-07T16:00:00+05:30")));
        // Saturday, and the Republic Day holiday (a Monday).
        assert!(!cal.is_open_at(ist("2026-01-10T10:00:00+05:30")));
        assert!(!cal.is_open_at(ist("2026-01-26T10:00:00+05:30")));
        assert!(cal.is_open_at(ist("2026-01-27T10:00:00+05:30")));
        // An unsynchronized clock is open, whatever it says.
        assert!(cal.is_open(ist("2026-01-07T16:00:00+05:30"), false));
        assert!(cal.is_open(0, true), "a clock in 1970 is not trusted");
    }

    #[test]
    fn forms_and_errors() {
        let c = Calendar::parse("09:00-17:00,17:00-23:55 +05:30 Sun-Fri", &[]).expect("parses");
        assert!(c.is_open_at(ist("2026-01-11T20:00:00+05:30")), "a Sunday");
        assert!(!c.is_open_at(ist("2026-01-10T20:00:00+05:30")), "a Saturday");
        assert!(Calendar::parse("always", &[]).expect("always").is_open_at(0));
        for bad in [
            "09:15-15:30 Asia/Kolkata",
            "15:30-09:15 UTC Mon-Fri",
            "09:15-15:30 Europe/Paris Mon-Fri",
            "9-10 UTC Mon",
            "09:15-15:30 UTC Funday",
        ] {
            assert!(Calendar::parse(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn venue_overrides_while_connected() {
        let cal = Calendar::parse("09:15-15:30 Asia/Kolkata Mon-Fri", &[]).expect("parses");
        let mut m = MarketState::new(cal);
        let ten = ist("2026-01-07T10:00:00+05:30");
        assert_eq!(m.changed(ten, true), Some((true, MarketBasis::Calendar)));
        // An unlisted holiday: the venue says closed while connected.
        m.set_venue(Some(false));
        assert_eq!(m.changed(ten, true), Some((false, MarketBasis::Venue)));
        assert_eq!(m.changed(ten + 1000, true), None);
        // The connection is lost: the calendar rules again (no silenced alarm).
        m.set_venue(None);
        assert_eq!(m.changed(ten + 2000, true), Some((true, MarketBasis::Calendar)));
        let four = ist("2026-01-07T16:00:00+05:30");
        assert_eq!(m.changed(four, true), Some((false, MarketBasis::Calendar)));
        assert_eq!(m.changed(four, false), Some((true, MarketBasis::Unsynced)));
    }
}
