//! Clocks, sleeping, entropy and the host name for the driver.
//!
//! The monotonic clock is `CLOCK_BOOTTIME`: unlike `CLOCK_MONOTONIC` it keeps counting while
//! the machine is suspended, so a holder that resumes sees that its heartbeat really lapsed
//! (and self-fences) instead of believing no time passed.

use std::io::Read;

use rustix::io::Errno;
use rustix::time::{ClockId, Timespec};

use mmp_core::time::{Instant, Now};

/// Microseconds of a non-negative `Timespec` (negative values clamp to zero).
fn timespec_micros(ts: Timespec) -> u64 {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

/// The current time: `mono` from `CLOCK_BOOTTIME` in microseconds (counts suspend),
/// `wall_ms` from `CLOCK_REALTIME` in milliseconds since the Unix epoch (0 if the wall clock
/// is before 1970).
#[must_use]
pub fn now() -> Now {
    let mono = Instant::from_micros(timespec_micros(rustix::time::clock_gettime(
        ClockId::Boottime,
    )));
    let wall_ms = timespec_micros(rustix::time::clock_gettime(ClockId::Realtime)) / 1_000;
    Now::new(mono, wall_ms)
}

/// Sleeps until [`now()`]`.mono >= deadline`; returns at once if the deadline has passed.
///
/// Sleeps with `clock_nanosleep(CLOCK_BOOTTIME, TIMER_ABSTIME)`, so time spent suspended
/// counts, and re-checks the clock after every wake-up (signals, spurious wake-ups). Never
/// busy-waits.
pub fn sleep_until(deadline: Instant) {
    let micros = deadline.as_micros();
    let target = Timespec {
        tv_sec: i64::try_from(micros / 1_000_000).unwrap_or(i64::MAX),
        // Below 1e9, so it fits.
        tv_nsec: ((micros % 1_000_000) * 1_000) as _,
    };
    loop {
        let mono = now().mono;
        if mono >= deadline {
            return;
        }
        match rustix::thread::clock_nanosleep_absolute(ClockId::Boottime, &target) {
            Ok(()) | Err(Errno::INTR) => {}
            // Should not happen on Linux; sleep on the difference instead.
            Err(_) => std::thread::sleep(deadline.saturating_since(mono)),
        }
    }
}

/// 64 random bits from the kernel CSPRNG (`getrandom`), for seeding protocol randomness.
///
/// Falls back to `/dev/urandom`, and as a last resort to a mix of the clocks and the process
/// id, if `getrandom` is unavailable (it has existed since Linux 3.17).
#[must_use]
pub fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if fill_random(&mut buf) {
        return u64::from_ne_bytes(buf);
    }
    let boot = rustix::time::clock_gettime(ClockId::Boottime);
    let wall = rustix::time::clock_gettime(ClockId::Realtime);
    let x = timespec_micros(wall)
        ^ timespec_micros(boot).rotate_left(32)
        ^ u64::try_from(boot.tv_nsec).unwrap_or(0).rotate_left(17)
        ^ u64::from(std::process::id()).rotate_left(48);
    // Nearby inputs give unrelated seeds.
    mmp_core::rand::splitmix64_mix(x)
}

/// Fills `buf` from `getrandom` (else `/dev/urandom`); false if neither works.
pub(crate) fn fill_random(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    if filled == buf.len() {
        return true;
    }
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

/// This host's node name (`uname().nodename`), without the terminating NUL.
///
/// This is the name in the caller's UTS namespace (as e2fsprogs uses), which inside a
/// container may differ from the kernel's initial-namespace name.
#[must_use]
pub fn nodename() -> Vec<u8> {
    rustix::system::uname().nodename().to_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmp_core::time::Duration;

    #[test]
    fn now_is_monotonic_and_wall_is_plausible() {
        let a = now();
        let b = now();
        assert!(b.mono >= a.mono);
        // After 2020-01-01 and before 2200.
        assert!(a.wall_ms > 1_577_836_800_000, "{}", a.wall_ms);
        assert!(a.wall_ms < 7_258_118_400_000, "{}", a.wall_ms);
        assert!(a.mono > Instant::ZERO);
    }

    #[test]
    fn sleep_until_waits_for_the_deadline() {
        let start = now().mono;
        let deadline = start + Duration::from_millis(30);
        sleep_until(deadline);
        let end = now().mono;
        assert!(end >= deadline);
        assert!(end.saturating_since(start) < Duration::from_secs(2));
        // Past deadlines return at once.
        let t = std::time::Instant::now();
        sleep_until(start);
        sleep_until(Instant::ZERO);
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn random_seeds_differ() {
        let seeds: Vec<u64> = (0..4).map(|_| random_seed()).collect();
        assert!(seeds.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn nodename_matches_proc() {
        let name = nodename();
        assert!(!name.is_empty());
        assert!(!name.contains(&0));
        if let Ok(proc) = std::fs::read("/proc/sys/kernel/hostname") {
            assert_eq!(proc.strip_suffix(b"\n").unwrap_or(&proc), &name[..]);
        }
    }

    #[test]
    fn timespec_conversion() {
        assert_eq!(
            timespec_micros(Timespec {
                tv_sec: 2,
                tv_nsec: 345_678_901
            }),
            2_345_678
        );
        assert_eq!(
            timespec_micros(Timespec {
                tv_sec: -5,
                tv_nsec: 0
            }),
            0
        );
        assert_eq!(
            timespec_micros(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0
            }),
            u64::MAX
        );
    }
}
