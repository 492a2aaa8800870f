//! Jittered exponential backoff, a circuit breaker, and the small seeded generator they use.

use core::time::Duration;

use super::time::Timestamp;

/// SplitMix64: a tiny, fast, seedable generator. Not for secrets; for jitter only. The
/// runtime seeds it from OS entropy unless the configuration fixes a seed; tests fix it.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)` with 53 bits.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Exponential backoff: the n-th delay is `initial * 2^(n-1)` capped at `max`, then spread by
/// `jitter` (0.5 gives `[0.5, 1.5] x` the base, never above `max`) so that many clients that
/// failed together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// A backoff with no failures yet. `jitter` is clamped to `[0, 1]`.
    pub fn new(initial: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff { initial, max: max.max(initial), jitter: jitter.clamp(0.0, 1.0), attempt: 0 }
    }
    /// Failures since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// Forgets the failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    /// The un-jittered delay before the next try.
    pub fn base(&self) -> Duration {
        let shift = self.attempt.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << shift).min(self.max)
    }
    /// The slowest delay it ever gives (used once a close has failed for good).
    pub fn max(&self) -> Duration {
        self.max
    }
    /// Counts a failure and returns the jittered delay before the next try.
    pub fn next_delay(&mut self, rng: &mut Rng) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.jittered(self.base(), rng)
    }
    /// `base` spread by the jitter, capped at `max`.
    pub fn jittered(&self, base: Duration, rng: &mut Rng) -> Duration {
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * rng.next_unit();
        base.mul_f64(factor).min(self.max)
    }
}

/// State of a [`CircuitBreaker`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests are refused until the given time.
    Open {
        /// When one trial request is let through.
        until: Timestamp,
    },
    /// One trial request is allowed; its result closes or re-opens the breaker.
    HalfOpen,
}

/// Stops hammering an endpoint that keeps failing or that asked us to wait (HTTP 429/418
/// `Retry-After`). Opens after `threshold` consecutive failures for a cool-down that grows
/// with each re-opening, up to `max_cooldown`.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    state: BreakerState,
    failures: u32,
    threshold: u32,
    cooldown: Backoff,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(threshold: u32, cooldown: Duration, max_cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            state: BreakerState::Closed,
            failures: 0,
            threshold: threshold.max(1),
            cooldown: Backoff::new(cooldown, max_cooldown, 0.0),
        }
    }
    /// The current state (after promoting an expired `Open` to `HalfOpen`).
    pub fn state(&mut self, now: Timestamp) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen;
            }
        }
        self.state
    }
    /// True when a request may be sent now.
    pub fn allow(&mut self, now: Timestamp) -> bool {
        !matches!(self.state(now), BreakerState::Open { .. })
    }
    /// A request succeeded: close.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.cooldown.reset();
        self.state = BreakerState::Closed;
    }
    /// A request failed: open after `threshold` failures in a row, or at once when half-open.
    pub fn on_failure(&mut self, now: Timestamp, rng: &mut Rng) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold || self.state == BreakerState::HalfOpen {
            let wait = self.cooldown.next_delay(rng);
            self.state = BreakerState::Open { until: now + wait };
        }
    }
    /// The endpoint said when to come back (`Retry-After`): open until then at least.
    pub fn hold_off(&mut self, now: Timestamp, wait: Duration) {
        let until = now + wait;
        self.state = match self.state {
            BreakerState::Open { until: u } if u > until => BreakerState::Open { until: u },
            _ => BreakerState::Open { until },
        };
    }
    /// 0 closed, 1 open, 2 half-open (the metric's encoding).
    pub fn gauge(&mut self, now: Timestamp) -> u8 {
        match self.state(now) {
            BreakerState::Closed => 0,
            BreakerState::Open { .. } => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_jitters_and_caps() {
        let mut rng = Rng::new(7);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.5);
        let mut bases = Vec::new();
        for _ in 0..8 {
            let d = b.next_delay(&mut rng);
            let base = b.base();
            assert!(d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5).min(Duration::from_secs(30)));
            bases.push(base.as_secs());
        }
        assert_eq!(bases, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.base(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_and_is_reproducible() {
        let delays = |seed| {
            let mut rng = Rng::new(seed);
            let b = Backoff::new(Duration::from_secs(4), Duration::from_secs(30), 0.5);
            (0..100).map(|_| b.jittered(Duration::from_secs(4), &mut rng)).collect::<Vec<_>>()
        };
        let a = delays(1);
        assert_eq!(a, delays(1));
        assert_ne!(a, delays(2));
        let lo = a.iter().min().copied().unwrap_or_default();
        let hi = a.iter().max().copied().unwrap_or_default();
        assert!(lo < Duration::from_millis(2500) && hi > Duration::from_millis(5500));
    }

    #[test]
    fn breaker_opens_half_opens_and_honours_retry_after() {
        let mut rng = Rng::new(1);
        let t = Timestamp::from_secs(100);
        let mut cb = CircuitBreaker::new(3, Duration::from_secs(5), Duration::from_secs(60));
        cb.on_failure(t, &mut rng);
        cb.on_failure(t, &mut rng);
        assert!(cb.allow(t));
        cb.on_failure(t, &mut rng);
        assert!(!cb.allow(t + Duration::from_secs(4)));
        assert_eq!(cb.gauge(t + Duration::from_secs(5)), 2);
        cb.on_failure(t + Duration::from_secs(5), &mut rng);
        assert!(!cb.allow(t + Duration::from_secs(14)));
        assert!(cb.allow(t + Duration::from_secs(15)));
        cb.on_success();
        assert_eq!(cb.gauge(t), 0);
        cb.hold_off(t, Duration::from_secs(120));
        assert!(!cb.allow(t + Duration::from_secs(119)));
        assert!(cb.allow(t + Duration::from_secs(120)));
    }
}
