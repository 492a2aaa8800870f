//! The one place that reads the monotonic clock and turns it into core [`Timestamp`]s.

use std::time::Duration;

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
