//! The one place that reads the clocks: the monotonic clock, turned into core [`Timestamp`]s
//! (every age, grace and deadline of the protection logic), and the wall clock
//! ([`wall_now`]: request timestamps for the venues, journal times, the market calendar, the
//! age of the stored symbol list), which decides nothing about protection.
//!
//! The wall clock has a process-wide step offset ([`step_wall`]) so tests can make it jump
//! forward or back the way an NTP step or a wrong RTC at boot does. It is a test clock: the
//! appliance itself never calls [`step_wall`], so in production the offset is always 0 and
//! [`wall_now`] is `SystemTime::now()` plus one relaxed atomic load.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::core::time::Timestamp;

/// Monotonic clock with its origin at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Clock {
        Clock { origin: Instant::now() }
    }
    /// Now, as a core timestamp.
    pub fn now(&self) -> Timestamp {
        self.at(Instant::now())
    }
    /// An instant as a core timestamp.
    pub fn at(&self, i: Instant) -> Timestamp {
        let ns = i.saturating_duration_since(self.origin).as_nanos();
        Timestamp::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
    /// A core timestamp as an instant (far future for [`Timestamp::NEVER`]).
    pub fn instant(&self, t: Timestamp) -> Instant {
        let far = self.origin + Duration::from_secs(86_400 * 365);
        self.origin.checked_add(Duration::from_nanos(t.as_nanos())).map_or(far, |i| i.min(far))
    }
}

/// The monotonic clock as tokio sees it: deadlines and ages of tasks on a runtime (paused and
/// advanced by tests that start the runtime paused).
pub fn mono() -> Instant {
    Instant::now()
}

/// The operating system's monotonic clock, for threads outside any runtime (the API server's
/// connection deadlines, the notification threads, the journal writer).
pub fn mono_std() -> std::time::Instant {
    std::time::Instant::now()
}

/// Test step of the wall clock, ms (see [`step_wall`]).
static WALL_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The wall clock: `SystemTime::now()` plus the test step offset ([`wall_offset_ms`], always 0
/// in the appliance). Every wall-clock read of the appliance goes through here.
pub fn wall_now() -> SystemTime {
    stepped(SystemTime::now(), wall_offset_ms())
}

/// `now` moved by `offset_ms` (unchanged where that would leave `SystemTime`'s range).
fn stepped(now: SystemTime, offset_ms: i64) -> SystemTime {
    let step = Duration::from_millis(offset_ms.unsigned_abs());
    let moved = if offset_ms >= 0 { now.checked_add(step) } else { now.checked_sub(step) };
    moved.unwrap_or(now)
}

/// [`wall_now`] as milliseconds since the Unix epoch (0 before the epoch, saturating).
pub fn wall_unix_ms() -> i64 {
    wall_now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Test clock: steps the wall clock by `delta_ms` (forward if positive, back if negative) for
/// the whole process, as an NTP step or a corrected RTC would. The appliance never calls this;
/// tests that do must put it back ([`reset_wall`]) and must not run alongside other tests that
/// read the wall clock in the same process unless those tolerate the step.
pub fn step_wall(delta_ms: i64) {
    let _ = WALL_OFFSET_MS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| Some(o.saturating_add(delta_ms)));
}

/// Test clock: puts the wall clock back to the host's (offset 0).
pub fn reset_wall() {
    WALL_OFFSET_MS.store(0, Ordering::Relaxed);
}

/// The current test step of the wall clock, ms (0 unless a test stepped it).
pub fn wall_offset_ms() -> i64 {
    WALL_OFFSET_MS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The process-wide offset itself is stepped by the world simulator (tests/world.rs), not
    // here: the library's unit tests run in parallel and read the wall clock.
    #[test]
    fn a_step_moves_the_wall_clock_forward_and_back() {
        let host = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(stepped(host, 0), host);
        assert_eq!(stepped(host, 3_600_000), host + Duration::from_secs(3_600));
        assert_eq!(stepped(host, -7_200_500), host - Duration::from_millis(7_200_500));
    }
}
