//! The operator procedures, written once for every front end (the `mmp` CLI and libmmp):
//! the update-interval range, proving a device unused before its superblock changes,
//! disabling MMP and changing the interval under that proof, and the watchdog timeout rule.
//!
//! The front ends only present the results (messages and exit codes in the CLI, result codes
//! in libmmp); what is checked, in which order, and what is written lives here.

use crate::blockdev::Device;
use crate::clock;
use crate::driver;
use crate::fault::{FaultHook, IoInfo};
use crate::target::Target;
use crate::tune::{self, Deadline, DisableReport, TuneError};
use mmp_core::format::ext4::MAX_UPDATE_INTERVAL_S;
use mmp_core::machine::{Config, Event, Identity, Machine, Op, Outcome, Refusal};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The ext4 MMP update interval (`s_mmp_update_interval`) as given by a user, checked
/// against the range the kernel and tune2fs accept (1 to 300 seconds).
///
/// # Errors
/// [`TuneError::BadInterval`] outside that range.
pub fn update_interval(secs: u64) -> Result<u16, TuneError> {
    u16::try_from(secs)
        .ok()
        .filter(|s| (1..=MAX_UPDATE_INTERVAL_S).contains(s))
        .ok_or(TuneError::BadInterval(
            u32::try_from(secs).unwrap_or(u32::MAX),
        ))
}

/// Why a device could not be proven unused. Nothing was changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unproven {
    /// The activity test or the claim refused: the device is in use or in doubt.
    Refused(Refusal),
    /// The acquire ended otherwise (stopped, lost, an I/O error); `None` when it ended
    /// without holding the device and without an outcome.
    Ended(Option<Outcome>),
}

/// Proves with the acquire protocol (activity test, claim, verify) that no other node uses
/// the device, and returns the machine that now holds it. Force is on: a device last held by
/// another node is accepted, because the activity test itself proves that node gone (as
/// tune2fs does). `stop` aborts the wait (the claim is then undone by the machine). `faults`
/// is [`NoFaults`](crate::fault::NoFaults) in production; front ends pass their test hooks through it.
///
/// # Errors
/// [`Unproven`]: the device is not held and nothing else was written.
#[allow(
    clippy::result_large_err,
    reason = "the held Machine is larger still; one call per command"
)]
pub fn prove_unused(
    t: &Target,
    identity: Identity,
    faults: &mut dyn FaultHook,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Machine, Unproven> {
    acquire(t, identity, true, faults, stop, on_event)
}

#[allow(
    clippy::result_large_err,
    reason = "the held Machine is larger still; one call per command"
)]
fn acquire(
    t: &Target,
    identity: Identity,
    force: bool,
    faults: &mut dyn FaultHook,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Machine, Unproven> {
    let mut cfg = Config::new(t.layout, identity, clock::random_seed());
    cfg.force = force;
    let mut m = Machine::new(cfg, Op::Acquire, clock::now());
    match driver::run_until_settled(&mut m, &t.device, faults, stop, on_event) {
        None if m.is_held() => Ok(m),
        None => Err(Unproven::Ended(None)),
        Some(Outcome::Refused(r)) => Err(Unproven::Refused(r)),
        Some(o) => Err(Unproven::Ended(Some(o))),
    }
}

/// Releases a device held by [`prove_unused`] (CLEAN after the usual verification) and
/// returns how the release ended (`Some(Outcome::Released)` when it did).
pub fn release(mut m: Machine, dev: &Device, faults: &mut dyn FaultHook) -> Option<Outcome> {
    m.release(clock::now());
    let never = AtomicBool::new(false);
    driver::run_until_settled(&mut m, dev, faults, &never, &mut |_| {})
}

/// Why an ext4 device was not handed to the kernel ([`hand_to_kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The acquire did not hold the device: nothing was written but a claim it undid.
    Unproven(Unproven),
    /// Held, but the release (CLEAN) did not end as released; how it ended. Do not mount.
    NotReleased(Option<Outcome>),
}

/// `mmp mount` of ext4 with MMP: the full acquire protocol (activity test, claim, verify:
/// what the kernel skips on a CLEAN block), then CLEAN, so that the kernel's own mount,
/// made at once by the caller, finds a CLEAN block and claims it within milliseconds.
/// `force` takes a device whose last owner did not release it (the activity test still
/// runs). On `Ok` the caller mounts immediately: the window between the CLEAN and the
/// kernel's claim is the one argued in docs/protocol.md.
///
/// # Errors
/// [`HandOver`]: do not mount.
#[allow(
    clippy::result_large_err,
    reason = "an Outcome carries a snapshot; one call per mount"
)]
pub fn hand_to_kernel(
    t: &Target,
    identity: Identity,
    force: bool,
    faults: &mut dyn FaultHook,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<(), HandOver> {
    let m = acquire(t, identity, force, faults, stop, on_event).map_err(HandOver::Unproven)?;
    match release(m, &t.device, faults) {
        Some(Outcome::Released) => Ok(()),
        end => Err(HandOver::NotReleased(end)),
    }
}

/// The deadline of a change made under `proof`: its lease (no lease, as when the machine no
/// longer holds the device, is a deadline already past). Before the change the fault hook is
/// asked about a superblock write made while held: its `delay_before` stands for a process
/// paused with the change in hand (tests: `delay.held.write.before_us`).
fn change_deadline(t: &Target, proof: &Machine, faults: &mut dyn FaultHook) -> Deadline {
    let f = faults.before_io(&IoInfo {
        device: &t.device,
        machine: proof,
        write: true,
        len: mmp_core::format::ext4::SUPERBLOCK_LEN,
    });
    std::thread::sleep(f.delay_before);
    Deadline::at(
        proof
            .owned_until()
            .unwrap_or(mmp_core::time::Instant::from_micros(0)),
    )
}

/// Turns MMP off on `t` while `proof` (from [`prove_unused`], or `None` for `--force`)
/// holds the device: every write is issued within the proof's lease, or not at all
/// ([`TuneError::LeaseExpired`]). On success the held machine is dropped without writing
/// again: the block is freed, and a CLEAN written into a freed block could land in file
/// data. On failure the device is released (which writes nothing once the lease is over).
///
/// # Errors
/// The refusals and device errors of [`tune::disable`].
pub fn disable(
    t: &Target,
    proof: Option<Machine>,
    faults: &mut dyn FaultHook,
) -> Result<DisableReport, TuneError> {
    let until = proof
        .as_ref()
        .map_or(Deadline::NONE, |m| change_deadline(t, m, faults));
    let res = tune::disable(&t.device, until);
    if res.is_err()
        && let Some(m) = proof
    {
        let _ = release(m, &t.device, faults);
    }
    // On success the proof ends here unreleased: its block is no longer an MMP block.
    res
}

/// Sets the update interval on `t` while `proof` (from [`prove_unused`]) holds the device,
/// every write issued within its lease or not at all ([`TuneError::LeaseExpired`]), then
/// releases it (no write once the lease is over). Returns the change's result and how the
/// release ended.
pub fn set_interval(
    t: &Target,
    proof: Machine,
    secs: u16,
    faults: &mut dyn FaultHook,
) -> (Result<(), TuneError>, Option<Outcome>) {
    let until = change_deadline(t, &proof, faults);
    let res = tune::set_interval(&t.device, secs, until);
    let end = release(proof, &t.device, faults);
    (res, end)
}

/// Why a watchdog timeout is unsafe for the devices held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogTimeoutError {
    /// A timeout of 0 was asked for.
    Zero,
    /// The shortest fail window is below one second, the granularity of watchdog devices.
    FailWindowTooShort {
        /// The shortest fail window of the devices held.
        fail_window: Duration,
    },
    /// The timeout is longer than the shortest fail window: another host could take a
    /// device before the watchdog fires.
    LongerThanFailWindow {
        /// The timeout asked for (seconds).
        timeout_s: u64,
        /// The shortest fail window of the devices held.
        fail_window: Duration,
    },
}

impl std::fmt::Display for WatchdogTimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            WatchdogTimeoutError::Zero => write!(f, "a watchdog timeout of 0 s never fires"),
            WatchdogTimeoutError::FailWindowTooShort { fail_window } => write!(
                f,
                "unsafe watchdog timing: the shortest fail window is {:.3} s, below the 1 s \
                 granularity of watchdog devices",
                fail_window.as_secs_f64()
            ),
            WatchdogTimeoutError::LongerThanFailWindow {
                timeout_s,
                fail_window,
            } => write!(
                f,
                "unsafe watchdog timing: timeout {timeout_s} s is longer than the shortest fail \
                 window {:.3} s; another host could take a device before the watchdog fires",
                fail_window.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for WatchdogTimeoutError {}

/// The watchdog rule: the node must be reset no later than another host may take a device,
/// so the timeout is at most the shortest fail window of the devices held, in whole seconds
/// (the granularity of watchdog devices). `requested` `None` takes that longest safe value.
///
/// # Errors
/// [`WatchdogTimeoutError`] when no safe whole-second timeout exists or `requested` is not one.
pub fn watchdog_timeout(
    requested: Option<u64>,
    shortest_fail_window: Duration,
) -> Result<Duration, WatchdogTimeoutError> {
    if requested == Some(0) {
        return Err(WatchdogTimeoutError::Zero);
    }
    let secs = requested.unwrap_or(shortest_fail_window.as_secs());
    if secs == 0 {
        return Err(WatchdogTimeoutError::FailWindowTooShort {
            fail_window: shortest_fail_window,
        });
    }
    if Duration::from_secs(secs) > shortest_fail_window {
        return Err(WatchdogTimeoutError::LongerThanFailWindow {
            timeout_s: secs,
            fail_window: shortest_fail_window,
        });
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_interval_range_is_the_kernels() {
        assert_eq!(update_interval(1).ok(), Some(1));
        assert_eq!(update_interval(300).ok(), Some(300));
        for bad in [0, 301, 65_536, u64::MAX] {
            assert!(
                matches!(update_interval(bad), Err(TuneError::BadInterval(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn watchdog_timeout_never_exceeds_the_fail_window() {
        let w = Duration::from_millis(2_500);
        assert_eq!(watchdog_timeout(None, w), Ok(Duration::from_secs(2)));
        assert_eq!(watchdog_timeout(Some(2), w), Ok(Duration::from_secs(2)));
        assert_eq!(watchdog_timeout(Some(1), w), Ok(Duration::from_secs(1)));
        assert_eq!(
            watchdog_timeout(Some(3), w),
            Err(WatchdogTimeoutError::LongerThanFailWindow {
                timeout_s: 3,
                fail_window: w
            })
        );
        assert_eq!(
            watchdog_timeout(Some(0), w),
            Err(WatchdogTimeoutError::Zero)
        );
        let short = Duration::from_millis(900);
        assert_eq!(
            watchdog_timeout(None, short),
            Err(WatchdogTimeoutError::FailWindowTooShort { fail_window: short })
        );
        assert!(watchdog_timeout(Some(1), short).is_err());
    }
}
