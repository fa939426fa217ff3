//! What the engine tells about itself without touching a disk: the [`Report`] it publishes
//! after every pass (per-slot state, heartbeat gaps, real-time and self-fence state).

use super::worker::Worker;
use super::*;

/// A log-bucketed histogram of durations in microseconds (64 sub-buckets per power of two,
/// about 1.6 % resolution), fixed size whatever the number of samples.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

const SUB: u64 = 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 40 * usize::try_from(SUB).unwrap_or(64)],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return usize::try_from(us).unwrap_or(0);
        }
        let octave = 63 - u64::from(us.leading_zeros()); // >= 6
        let shift = octave - 6;
        let sub = (us >> shift) - SUB; // 0..64
        usize::try_from((octave - 5) * SUB + sub).unwrap_or(usize::MAX)
    }

    fn lower_bound(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < SUB {
            return idx;
        }
        let octave = idx / SUB + 5;
        let sub = idx % SUB;
        (SUB + sub) << (octave - 6)
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Number of samples.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample.
    #[must_use]
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The `q` quantile (0.0..=1.0), as the lower bound of its bucket; zero when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(Self::lower_bound(i).min(self.max_us));
            }
        }
        self.max()
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// The state of one device in the engine.
#[derive(Clone, Debug)]
pub struct SlotReport {
    /// The device's id (a slot's index and generation).
    pub id: SlotId,
    /// The slot is vacant ([`Engine::remove`]): the fields describe its last device.
    pub vacant: bool,
    /// Device path.
    pub path: PathBuf,
    /// Machine phase.
    pub phase: Phase,
    /// Outcome, once finished.
    pub outcome: Option<Outcome>,
    /// Heartbeat figures.
    pub stats: Stats,
    /// Timing derived from the owner's parameters.
    pub timing: Option<Timing>,
    /// Lease end while held.
    pub owned_until: Option<Instant>,
    /// Wall time of the last successful write (Unix ms).
    pub last_write_wall_ms: Option<u64>,
    /// Whether the device was ever acquired by this engine.
    pub acquired: bool,
    /// Forgotten ([`Engine::forget`]): no longer driven, nothing more written.
    pub forgotten: bool,
}

/// Self-fencing state, as shown by status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfFence {
    /// No hardware watchdog: the lease stops our writes, but a hung host is not reset.
    Off,
    /// A watchdog is armed and petted after successful heartbeats.
    Active,
    /// A watchdog is configured but petting failed, or a device was lost and petting
    /// stopped (the watchdog will fire).
    Degraded,
}

impl SelfFence {
    /// `off`, `active`, `degraded`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SelfFence::Off => "off",
            SelfFence::Active => "active",
            SelfFence::Degraded => "degraded",
        }
    }
}

/// Everything the engine knows, refreshed after every pass.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per slot: without removals, per device in the order they were added; a
    /// vacated slot ([`Engine::remove`]) is reused by a later device. Look a device up
    /// with [`Report::slot`].
    pub slots: Vec<SlotReport>,
    /// Gaps between successful heartbeat writes, all devices.
    pub gaps: Histogram,
    /// Memory locking and scheduling.
    pub realtime: RealtimeStatus,
    /// Self-fencing state.
    pub self_fence: Option<SelfFence>,
    /// Watchdog pets so far.
    pub watchdog_pets: u64,
    /// How heartbeat I/O is done: `"io_uring"` (batched), `"sync"` (not requested), or
    /// `"sync (io_uring: <why not>)"`.
    pub io: String,
}

impl Report {
    /// The entry of device `id`; `None` when its slot was vacated (and maybe reused).
    #[must_use]
    pub fn slot(&self, id: SlotId) -> Option<&SlotReport> {
        self.slots
            .get(id.index())
            .filter(|s| s.id == id && !s.vacant)
    }
}

pub(super) fn publish(report: &Mutex<Report>, w: &Worker, rt: &RealtimeStatus, io: &str) {
    let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
    // Slots are only ever appended: update the existing entries in place (a path is copied
    // only when a reused slot has a new device), then add the new ones.
    let known = r.slots.len().min(w.slots.len());
    r.slots.truncate(known);
    for (d, s) in r.slots.iter_mut().zip(&w.slots) {
        if d.id != s.id {
            d.id = s.id;
            d.path.clone_from(&s.dev.path);
        }
        d.vacant = s.vacant;
        d.phase = s.dev.machine.phase();
        d.outcome = s.dev.machine.outcome();
        d.stats = s.dev.machine.stats();
        d.timing = s.dev.machine.timing();
        d.owned_until = s.dev.machine.owned_until();
        d.last_write_wall_ms = s.last_write_wall_ms;
        d.acquired = s.acquired;
        d.forgotten = s.forgotten;
    }
    r.slots.extend(w.slots[known..].iter().map(|s| SlotReport {
        id: s.id,
        vacant: s.vacant,
        path: s.dev.path.clone(),
        phase: s.dev.machine.phase(),
        outcome: s.dev.machine.outcome(),
        stats: s.dev.machine.stats(),
        timing: s.dev.machine.timing(),
        owned_until: s.dev.machine.owned_until(),
        last_write_wall_ms: s.last_write_wall_ms,
        acquired: s.acquired,
        forgotten: s.forgotten,
    }));
    r.gaps.clone_from(&w.gaps);
    r.realtime.clone_from(rt);
    r.self_fence = w.fence;
    r.watchdog_pets = w.pets;
    if r.io != io {
        io.clone_into(&mut r.io);
    }
}
