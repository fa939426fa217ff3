//! The timing rules: how long to watch, to wait after a claim, and to keep a lease, derived
//! from the owner's recorded parameters (docs/protocol.md carries the argument).
#![forbid(unsafe_code)]

use crate::format::ext4;
use crate::format::record::{Layout, Snapshot};
use crate::time::Duration;

/// The timing parameters of one device, derived from the owner's recorded values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Heartbeat interval.
    pub interval: Duration,
    /// Self-fence after this long without a successful write.
    pub fail_window: Duration,
    /// Passive watch of a non-clean block.
    pub watch: Duration,
    /// Wait between writing our claim and verifying it.
    pub claim_wait: Duration,
    /// Re-read period during waits.
    pub poll: Duration,
}

impl Timing {
    /// Timing for a record, from the owner's recorded parameters and our layout.
    ///
    /// * ext4 (e2fsprogs' rule): `ci = max(s_mmp_update_interval, 5, block check interval)`
    ///   (the block's value is ignored when CLEAN), watch and claim wait
    ///   `min(2*ci + 1, ci + 60)` s; our fail window is that wait computed without the
    ///   block's value (so never longer than any waiter's watch).
    /// * native: watch `2 * fail_intervals * interval + delay`, claim wait
    ///   `2 * (interval + delay)`, fail window `fail_intervals * interval`.
    #[must_use]
    pub fn for_snapshot(layout: &Layout, snap: &Snapshot) -> Timing {
        match snap {
            Snapshot::Ext4(b) => {
                let upd = u32::from(layout.ext4_update_interval_s());
                let base = upd.max(u32::from(ext4::MIN_CHECK_INTERVAL_S));
                let ci = if b.seq_class() == ext4::SeqClass::Clean {
                    base
                } else {
                    base.max(u32::from(b.check_interval))
                };
                let wait = Duration::from_secs(u64::from(ext4::wait_time_s(ci)));
                Timing {
                    interval: Duration::from_secs(u64::from(upd)),
                    fail_window: Duration::from_secs(u64::from(ext4::wait_time_s(base))),
                    watch: wait,
                    claim_wait: wait,
                    poll: Duration::from_secs(1),
                }
            }
            Snapshot::Native(r) => {
                let interval = Duration::from_millis(u64::from(r.interval_ms));
                let delay = Duration::from_micros(u64::from(r.delay_us));
                let fail = interval * u32::from(r.fail_intervals);
                Timing {
                    interval,
                    fail_window: fail,
                    watch: fail * 2 + delay,
                    claim_wait: (interval + delay) * 2,
                    poll: interval.clamp(Duration::from_millis(50), Duration::from_secs(1)),
                }
            }
        }
    }

    /// The longest an acquire may wait on a block with this timing: the watch (unless the
    /// block is clean) plus the longest claim wait (a late claim waits out a whole lease plus
    /// an eighth). Not counting I/O time. Start timeouts of cluster resources must exceed
    /// it for a stale block (`clean = false`).
    #[must_use]
    pub fn max_acquire_wait(&self, clean: bool) -> Duration {
        let claim = self.claim_wait.max(self.fail_window + self.fail_window / 8);
        if clean { claim } else { self.watch + claim }
    }

    /// The shortest claim wait any host may use on this device: two intervals (native,
    /// without advertised delay), at most the claim wait. An aborted acquire restores the
    /// block it replaced only if the restore is issued within half of it after its re-read.
    #[must_use]
    pub fn min_claim_wait(&self) -> Duration {
        (self.interval * 2).min(self.claim_wait)
    }
}

/// Timing used only if an input arrives in a state that has no parsed record (never in a
/// correct driver); conservative values.
pub(crate) const FALLBACK_TIMING: Timing = Timing {
    interval: Duration::from_secs(5),
    fail_window: Duration::from_secs(5),
    watch: Duration::from_secs(300),
    claim_wait: Duration::from_secs(300),
    poll: Duration::from_secs(1),
};
