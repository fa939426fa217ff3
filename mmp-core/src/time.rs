//! Time types with explicit units. The core never reads a clock.
#![forbid(unsafe_code)]

use core::ops::{Add, Sub};
pub use core::time::Duration;

/// A point on the caller's monotonic clock, in microseconds since an arbitrary origin.
///
/// Only differences between two `Instant`s of the same clock mean anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    micros: u64,
}

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant { micros: 0 };

    /// An instant `micros` microseconds after the origin.
    #[must_use]
    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }

    /// An instant `millis` milliseconds after the origin (saturating).
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Instant {
            micros: millis.saturating_mul(1000),
        }
    }

    /// Microseconds since the origin.
    #[must_use]
    pub const fn as_micros(self) -> u64 {
        self.micros
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later (never panics).
    #[must_use]
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.micros.saturating_sub(earlier.micros))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let add = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant {
            micros: self.micros.saturating_add(add),
        }
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        let sub = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant {
            micros: self.micros.saturating_sub(sub),
        }
    }
}

/// What the caller knows about "now": its monotonic clock (decisions) and its wall clock
/// (informational time stamps written to the device; never used for a decision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: all waits and deadlines use this.
    pub mono: Instant,
    /// Wall-clock milliseconds since the Unix epoch, written into blocks for people to read.
    pub wall_ms: u64,
}

impl Now {
    /// A `Now` with both clocks given.
    #[must_use]
    pub const fn new(mono: Instant, wall_ms: u64) -> Self {
        Now { mono, wall_ms }
    }
}
