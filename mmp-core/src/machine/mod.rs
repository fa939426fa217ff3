//! The one MMP protocol state machine, sans-IO.
//!
//! A [`Machine`] runs one operation ([`Op`]) on one device: a read-only activity check, an
//! acquire followed by heartbeats until release, or an operator's forced clear. It never
//! touches a disk or a clock: the caller feeds it read results, write completions, I/O
//! errors and time, and it answers with the next I/O request or deadline.
//!
//! # Call order
//!
//! After [`Machine::new`] and after every input (`handle_*`, [`Machine::release`]):
//!
//! 1. [`Machine::poll_io`]: at most one request is outstanding. For a write, fill the
//!    buffer with [`Machine::emit_block`] right before issuing it (it re-checks the lease
//!    and may cancel the write), then report [`Machine::handle_write_done`] or
//!    [`Machine::handle_io_error`]. For a read, report [`Machine::handle_read_done`] with
//!    the bytes, or [`Machine::handle_io_error`].
//! 2. [`Machine::poll_event`] until `None`.
//! 3. [`Machine::poll_timeout`]: sleep until that instant (or until you want to release),
//!    then call [`Machine::handle_timeout`]. `None` means the operation is finished (see
//!    [`Machine::outcome`]).
//!
//! Time given to the machine must never go backwards. Extra `handle_timeout` calls are
//! harmless.
//!
//! # Safety rules enforced here
//!
//! * Anything in doubt (unparsable block, checksum failure, FSCK or unknown sequence,
//!   maintenance state, I/O error during acquire) refuses to acquire, naming why.
//! * A hostid of 0 refuses to acquire; a device last held by another host and not released
//!   is refused unless `force`; force never skips the activity test.
//! * Waits use the owner's recorded parameters (ext4 check interval, native interval, fail
//!   intervals and advertised delay).
//! * Every heartbeat re-reads the block and compares it with what this machine last wrote
//!   before writing again, so a foreign write is detected within one interval.
//! * Ownership is a lease: it lasts a fail window after the last successful write was
//!   issued ([`Machine::owned_until`]). Past that the machine self-fences: it never writes
//!   again, and never writes CLEAN.
//! * CLEAN is written on release only after re-reading the block and finding exactly what
//!   this machine last wrote.
//!
//! `docs/protocol.md` carries the timing argument.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use crate::format::{ext4, native};
use crate::rand::Rng;
use crate::time::{Duration, Instant, Now};

mod stall;
mod timing;

pub use crate::format::record::{Class, Corrupt, Layout, MAX_RECORD_LEN, Snapshot, parse};
use timing::FALLBACK_TIMING;
pub use timing::Timing;

/// Who this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Hostid; 0 means unset and refuses to acquire.
    pub hostid: u32,
    /// Node name, NUL padded (written to the block; compared in ext4 mode).
    pub nodename: [u8; 64],
    /// Device name as this host sees it, NUL padded (informational).
    pub devname: [u8; 64],
}

impl Identity {
    /// An identity; names are truncated to 64 bytes.
    #[must_use]
    pub fn new(hostid: u32, nodename: &[u8], devname: &[u8]) -> Self {
        let mut id = Identity {
            hostid,
            nodename: [0; 64],
            devname: [0; 64],
        };
        crate::format::put_name(&mut id.nodename, nodename);
        crate::format::put_name(&mut id.devname, devname);
        id
    }

    /// The node name up to the first NUL.
    #[must_use]
    pub fn nodename(&self) -> &[u8] {
        crate::format::trim_name(&self.nodename)
    }
}

/// The operation a machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The read-only activity test: never writes.
    Check,
    /// Acquire, then heartbeat until [`Machine::release`] or loss.
    Acquire,
    /// The operator's forced reset to CLEAN (like `tune2fs -f -E clear_mmp`). Writes without
    /// any activity test: for use only when the operator knows no other host uses the device.
    Clear,
}

/// Configuration of one machine.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Where the record is.
    pub layout: Layout,
    /// Who we are.
    pub identity: Identity,
    /// Take a device last held by another host and not released (still after the full
    /// activity test).
    pub force: bool,
    /// Seed for sequence numbers and wait jitter.
    pub random_seed: u64,
    /// Self-fencing (the lease). Exists only in test builds (the private feature
    /// `_test-switches`); always on otherwise. The simulator turns it off in the one
    /// scenario that proves its checker catches double owners.
    #[cfg(any(test, feature = "_test-switches"))]
    pub self_fence: bool,
    /// Queue (`--wait`): an acquire that finds the device held keeps watching through the
    /// owner's heartbeats (and, without `force`, through another host's stale block) until
    /// the owner releases it, instead of refusing. The caller bounds the wait by releasing.
    pub wait: bool,
}

impl Config {
    /// A configuration with `force` off and self-fencing on.
    #[must_use]
    pub fn new(layout: Layout, identity: Identity, random_seed: u64) -> Self {
        Config {
            layout,
            identity,
            force: false,
            random_seed,
            #[cfg(any(test, feature = "_test-switches"))]
            self_fence: true,
            wait: false,
        }
    }

    /// Whether self-fencing (the lease) is on: always, outside test builds.
    #[must_use]
    pub fn self_fence(&self) -> bool {
        #[cfg(any(test, feature = "_test-switches"))]
        return self.self_fence;
        #[cfg(not(any(test, feature = "_test-switches")))]
        true
    }

    /// The same configuration with `force` on.
    #[must_use]
    pub fn with_force(mut self) -> Self {
        self.force = true;
        self
    }

    /// The same configuration with queueing ([`Config::wait`]) on.
    #[must_use]
    pub fn with_wait(mut self) -> Self {
        self.wait = true;
        self
    }
}

/// The next I/O the caller must perform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoRequest {
    /// Read `len` bytes at `offset_bytes` (bypassing every cache) and report them.
    Read {
        /// Device offset.
        offset_bytes: u64,
        /// Length.
        len: usize,
    },
    /// Write the `len` bytes from [`Machine::emit_block`] at `offset_bytes`, durably.
    Write {
        /// Device offset.
        offset_bytes: u64,
        /// Length.
        len: usize,
    },
}

/// A failed read or write, as the caller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoError {
    /// The operating system failed it with this error number (e.g. 5 for EIO).
    Os(i32),
    /// A read returned fewer bytes than the record.
    Short,
    /// It failed without an OS error number (the driver refused it: beyond the end of the
    /// device, misaligned), or the machine met a state no correct driver produces.
    NoErrno,
}

impl IoError {
    /// The errno Linux gives an I/O that a SCSI target refused with RESERVATION CONFLICT
    /// (`EBADE`, "invalid exchange": the block layer's `BLK_STS_NEXUS`). Under a persistent
    /// reservation (`--fence scsi-pr`) it means another host preempted us: the storage
    /// itself says we no longer own the device, so a heartbeat that gets it is lost at
    /// once ([`Loss::Preempted`]) instead of retried through the fail window.
    pub const RESERVATION_CONFLICT: i32 = 52;

    /// Whether the storage refused the I/O because another host holds the reservation.
    #[must_use]
    pub const fn is_reservation_conflict(self) -> bool {
        matches!(self, IoError::Os(Self::RESERVATION_CONFLICT))
    }

    /// The OS error number, if there was one.
    #[must_use]
    pub const fn errno(self) -> Option<i32> {
        match self {
            IoError::Os(e) => Some(e),
            IoError::Short | IoError::NoErrno => None,
        }
    }
}

/// Why an acquire (or a check) did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The local hostid is 0: set a unique one (`mmp hostid --generate`). Force cannot
    /// override this.
    NoHostid,
    /// The block does not parse (bad magic, checksum, torn write, unknown version...).
    Corrupt(Corrupt),
    /// ext4 `SEQ_FSCK`: e2fsck or another e2fsprogs tool holds it (or crashed holding it).
    Fsck(Snapshot),
    /// ext4 sequence above `SEQ_MAX`: an unknown operation.
    UnknownSeq(Snapshot),
    /// Native maintenance state.
    Maintenance(Snapshot),
    /// Last held by another host and not released; `force` is needed (after which the full
    /// activity test still runs).
    Foreign(Snapshot),
    /// The block changed during the activity test: another host is alive. The snapshot is
    /// the changed block (`None` if it did not parse).
    Active(Option<Snapshot>),
    /// Our claim was overwritten during the verify wait: another host claimed at the same
    /// time.
    LostRace(Option<Snapshot>),
    /// A read or write failed during the operation: in doubt, so refused.
    Io(IoError),
    /// This host or its I/O was too slow: a result was handled (or a write was ready to go
    /// out) after the instant it had to beat. For an acquire: the lease its verified claim
    /// earned (counted from when the claim write was issued) had already run out, so the
    /// device is not taken (the claim stays on it; other hosts treat it as a stale live
    /// block). For a clear: the CLEAN write was not issued within its deadline after the
    /// read. Nothing more was written.
    TooLate {
        /// How long after that instant it was handled.
        late_by: Duration,
    },
}

/// Why an owner lost the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The block no longer holds what we last wrote: another host wrote it. The snapshot is
    /// what was found (`None` if it did not parse).
    ForeignWrite(Option<Snapshot>),
    /// No heartbeat succeeded within the fail window: self-fenced.
    Fenced {
        /// Time since the last successful write was issued.
        since_last_write: Duration,
        /// The fail window that ran out.
        fail_window: Duration,
    },
    /// The release re-read failed, so CLEAN was not written (the block keeps our last live
    /// heartbeat; another host will see it stale and take it after the activity test).
    ReleaseReadFailed(IoError),
    /// The storage refused a heartbeat or release I/O with RESERVATION CONFLICT
    /// ([`IoError::is_reservation_conflict`]): another host preempted our persistent
    /// reservation. Nothing more was written (nothing more could be).
    Preempted(IoError),
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Check: safe to take. `stale` is false for a clean block, true for a non-clean block
    /// that stayed unchanged through the whole window.
    Safe {
        /// The block was not clean but nobody wrote it during the window.
        stale: bool,
        /// What the block said.
        snapshot: Snapshot,
    },
    /// Acquire or check refused (check: "in use" or "in doubt").
    Refused(Refusal),
    /// Released: CLEAN written.
    Released,
    /// Ownership lost; nothing more was written.
    Lost(Loss),
    /// Clear: CLEAN written.
    Cleared,
    /// The caller gave up before the acquire finished. A claim already written is replaced
    /// by the block found before it, only if the block still holds exactly our claim (so
    /// nothing another host wrote is ever overwritten); otherwise it is left alone.
    Aborted,
}

/// What the machine is doing, for progress reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// First read.
    Reading,
    /// Watching a non-clean block for activity.
    Watching,
    /// Our claim is written; waiting to verify nobody overwrote it.
    Claiming,
    /// Owned; heartbeating.
    Held,
    /// Releasing.
    Releasing,
    /// Clearing.
    Clearing,
    /// Finished.
    Done,
}

impl Phase {
    /// Every phase, in the order of an acquire.
    pub const ALL: [Phase; 7] = [
        Phase::Reading,
        Phase::Watching,
        Phase::Claiming,
        Phase::Held,
        Phase::Releasing,
        Phase::Clearing,
        Phase::Done,
    ];

    /// The phase whose [`Phase::name`] is `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.name() == name)
    }

    /// A short name for output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Reading => "reading",
            Phase::Watching => "watching",
            Phase::Claiming => "claiming",
            Phase::Held => "held",
            Phase::Releasing => "releasing",
            Phase::Clearing => "clearing",
            Phase::Done => "done",
        }
    }
}

/// Something the caller may want to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The first read parsed: what the device says.
    Observed(Snapshot),
    /// A wait started or progressed.
    Progress {
        /// Which wait.
        phase: Phase,
        /// Time left in this wait.
        remaining: Duration,
        /// Length of this wait.
        total: Duration,
    },
    /// The device is ours; heartbeats start.
    Acquired,
    /// A heartbeat I/O failed and will be retried within the fail window.
    IoRetry(IoError),
    /// The operation finished.
    Finished(Outcome),
}

/// Timing figures of a held device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Heartbeat interval.
    pub interval: Duration,
    /// Fail window: no successful write for this long means self-fencing.
    pub fail_window: Duration,
    /// Successful heartbeat writes.
    pub beats: u64,
    /// Failed heartbeat I/Os (retried).
    pub io_failures: u64,
    /// When the last successful write was issued.
    pub last_write: Option<Instant>,
    /// Duration of the last complete heartbeat cycle (read, compare, write).
    pub last_cycle: Duration,
    /// Longest gap between two successful writes.
    pub max_gap: Duration,
    /// The delay we advertise (native: decaying lateness; ext4: check interval).
    pub advertised_delay: Duration,
    /// ext4: the check interval we advertise.
    pub check_interval_s: u16,
}

/// The refusal an operation meets at its first read of a block in this state, before any
/// wait: fsck, unknown sequence, maintenance, and (for an acquire without `force`) a live
/// block of another host. `None`: the operation goes on (clean: claim; active: watch). The
/// machine applies exactly this rule; `mmp hold` of several devices asks it up front, so
/// that nothing is claimed when one device would be refused at once.
#[must_use]
pub fn immediate_refusal(
    op: Op,
    identity: &Identity,
    force: bool,
    snap: &Snapshot,
) -> Option<Refusal> {
    match snap.class() {
        Class::Fsck => Some(Refusal::Fsck(*snap)),
        Class::Unknown => Some(Refusal::UnknownSeq(*snap)),
        Class::Maintenance => Some(Refusal::Maintenance(*snap)),
        Class::Active if op == Op::Acquire && !force && is_foreign(identity, snap) => {
            Some(Refusal::Foreign(*snap))
        }
        Class::Clean | Class::Active => None,
    }
}

/// Whether `snap` was written by another host than `identity` (ext4: by node name; native:
/// by hostid).
fn is_foreign(identity: &Identity, snap: &Snapshot) -> bool {
    match snap {
        Snapshot::Ext4(b) => b.nodename() != identity.nodename(),
        Snapshot::Native(r) => r.hostid != identity.hostid,
    }
}

/// Capacity of the event queue; older progress events are dropped first when it is full.
const EVENT_CAP: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The first read is outstanding.
    Initial,
    /// Waiting during the activity watch.
    Watch {
        until: Instant,
        total: Duration,
        next_poll: Instant,
    },
    /// A watch re-read is outstanding.
    WatchRead { until: Instant, total: Duration },
    /// The claim write is outstanding.
    ClaimWrite,
    /// Waiting after the claim.
    ClaimWait { until: Instant, next_poll: Instant },
    /// A claim re-read is outstanding.
    ClaimRead { until: Instant },
    /// Owned, idle until the next beat.
    Held { next_beat: Instant },
    /// Heartbeat verify read outstanding.
    BeatRead { started: Instant },
    /// Heartbeat write outstanding.
    BeatWrite { started: Instant },
    /// Release verify read outstanding.
    ReleaseRead,
    /// CLEAN write outstanding.
    ReleaseWrite,
    /// Abort during the claim: waiting until a competitor's prompt claim would be visible.
    RestoreWait { at: Instant },
    /// Abort during the claim: re-read outstanding.
    RestoreRead,
    /// Abort during the claim: restoring the block we found; never issued past `deadline`.
    RestoreWrite { deadline: Instant },
    /// Clear: first read outstanding.
    ClearRead,
    /// Clear: CLEAN write outstanding; never issued past `deadline`.
    ClearWrite { deadline: Instant },
    /// Finished.
    Done(Outcome),
}

/// The protocol state machine. See the module docs for the call order.
#[derive(Debug)]
pub struct Machine {
    cfg: Config,
    op: Op,
    rng: Rng,
    step: Step,
    pending: Option<IoRequest>,
    /// What the first read returned (compared during the watch).
    seen: [u8; MAX_RECORD_LEN],
    /// What we last wrote successfully (compared before every heartbeat).
    written: [u8; MAX_RECORD_LEN],
    /// What the outstanding write will write.
    out: [u8; MAX_RECORD_LEN],
    /// The parsed first read (for parameters).
    first: Option<Snapshot>,
    /// The record as we last built it (the template for the next write).
    mine: Option<Snapshot>,
    timing: Option<Timing>,
    lease_until: Option<Instant>,
    /// When the outstanding (or last) read was requested: a lower bound of the instant it
    /// sampled the device (the caller cannot issue it earlier).
    read_requested: Instant,
    /// When the outstanding (or last) write was emitted ([`Machine::emit_block`], right
    /// before it is issued): a lower bound of the instant it landed.
    write_emitted: Instant,
    /// When the read that justified our claim was requested.
    claim_basis: Instant,
    /// When our claim write's completion was handled: an upper bound of its landing.
    claim_done: Instant,
    /// The claim wait in force (short, or a fail window and an eighth), for progress.
    claim_total: Duration,
    /// Our claim was late (its completion handled more than an interval after the read
    /// that justified it): it may have landed over a block other than the one we saw, so
    /// an abort never restores that block.
    claim_late: bool,
    /// The claim replaces a release we watched happen (see `docs/protocol.md`): the short
    /// claim wait is enough. Otherwise a claim on a CLEAN block waits out a fail window.
    release_watched: bool,
    /// Watch: when the last read that still saw the previous live block was requested,
    /// once the watched block has changed from one live block to another (a heartbeat seen
    /// to advance).
    advance_basis: Option<Instant>,
    /// Watch: when the last read that matched the watched block was requested.
    last_match: Instant,
    last_beat_start: Option<Instant>,
    release_requested: bool,
    /// The caller abandoned the acquire while our claim was on (or going to) the device.
    abort_requested: bool,
    stats: Stats,
    events: [Option<Event>; EVENT_CAP],
    ev_head: usize,
    ev_len: usize,
}

impl Machine {
    /// A machine for `op`; the first I/O is available from [`Machine::poll_io`] at once.
    #[must_use]
    pub fn new(cfg: Config, op: Op, now: Now) -> Self {
        let mut m = Machine {
            cfg,
            op,
            rng: Rng::new(cfg.random_seed),
            step: Step::Initial,
            pending: None,
            seen: [0; MAX_RECORD_LEN],
            written: [0; MAX_RECORD_LEN],
            out: [0; MAX_RECORD_LEN],
            first: None,
            mine: None,
            timing: None,
            lease_until: None,
            read_requested: now.mono,
            write_emitted: now.mono,
            claim_basis: now.mono,
            claim_done: now.mono,
            claim_total: Duration::ZERO,
            claim_late: false,
            release_watched: false,
            advance_basis: None,
            last_match: now.mono,
            last_beat_start: None,
            release_requested: false,
            abort_requested: false,
            stats: Stats::default(),
            events: [None; EVENT_CAP],
            ev_head: 0,
            ev_len: 0,
        };
        // ext4 MMP records only a node name: the hostid rule is the native format's.
        if op == Op::Acquire
            && cfg.identity.hostid == 0
            && matches!(cfg.layout, Layout::Native { .. })
        {
            m.finish(Outcome::Refused(Refusal::NoHostid));
            return m;
        }
        m.step = if op == Op::Clear {
            Step::ClearRead
        } else {
            Step::Initial
        };
        m.request_read(now.mono);
        m
    }

    // ----- getters -------------------------------------------------------------------

    /// The operation.
    #[must_use]
    pub fn op(&self) -> Op {
        self.op
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        match self.step {
            Step::Initial => Phase::Reading,
            Step::Watch { .. } | Step::WatchRead { .. } => Phase::Watching,
            Step::ClaimWrite | Step::ClaimWait { .. } | Step::ClaimRead { .. } => Phase::Claiming,
            Step::Held { .. } | Step::BeatRead { .. } | Step::BeatWrite { .. } => Phase::Held,
            Step::ReleaseRead
            | Step::ReleaseWrite
            | Step::RestoreWait { .. }
            | Step::RestoreRead
            | Step::RestoreWrite { .. } => Phase::Releasing,
            Step::ClearRead | Step::ClearWrite { .. } => Phase::Clearing,
            Step::Done(_) => Phase::Done,
        }
    }

    /// The outcome, once finished.
    #[must_use]
    pub fn outcome(&self) -> Option<Outcome> {
        match self.step {
            Step::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Whether the machine currently holds the device (acquired, not lost or released).
    /// Use [`Machine::is_owner`] to also check the lease against the clock.
    #[must_use]
    pub fn is_held(&self) -> bool {
        matches!(
            self.step,
            Step::Held { .. } | Step::BeatRead { .. } | Step::BeatWrite { .. } | Step::ReleaseRead
        ) && self.lease_until.is_some()
    }

    /// The end of the current lease (on this host's monotonic clock), while held. Past this
    /// instant the device must not be used, whether or not the machine has noticed yet.
    /// `None` when not held. With self-fencing off (tests only) the lease never ends.
    #[must_use]
    pub fn owned_until(&self) -> Option<Instant> {
        if !self.is_held() {
            return None;
        }
        if self.cfg.self_fence() {
            self.lease_until
        } else {
            Some(Instant::from_micros(u64::MAX))
        }
    }

    /// Whether this host may use the device at `now`: held and within the lease.
    #[must_use]
    pub fn is_owner(&self, now: Instant) -> bool {
        self.owned_until().is_some_and(|t| now < t)
    }

    /// Timing parameters, once the first read parsed.
    #[must_use]
    pub fn timing(&self) -> Option<Timing> {
        self.timing
    }

    /// What the first read found.
    #[must_use]
    pub fn first_snapshot(&self) -> Option<Snapshot> {
        self.first
    }

    /// Heartbeat figures.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next I/O to perform, if any (at most one is outstanding).
    #[must_use]
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        self.pending.take()
    }

    /// Fills `buf[..len]` for the outstanding write and returns `true`; call it right
    /// before issuing the write. Returns `false` (and the write must not be issued) when
    /// there is no write outstanding or the lease ran out since the write was requested, in
    /// which case the machine has self-fenced (see [`Machine::poll_event`]).
    ///
    /// # Panics
    /// Never; a `buf` shorter than the record gets `false`.
    pub fn emit_block(&mut self, now: Now, buf: &mut [u8]) -> bool {
        let len = self.cfg.layout.record_len();
        let writing = matches!(
            self.step,
            Step::ClaimWrite
                | Step::BeatWrite { .. }
                | Step::ReleaseWrite
                | Step::ClearWrite { .. }
                | Step::RestoreWrite { .. }
        );
        if !writing || buf.len() < len {
            return false;
        }
        if self.write_past_deadline(now) {
            return false;
        }
        self.write_emitted = now.mono;
        buf[..len].copy_from_slice(&self.out[..len]);
        true
    }

    /// The instant the outstanding write must be issued before: the lease for a heartbeat
    /// and the release's CLEAN, the restore's own deadline (and the claim's lease), the
    /// clear's own deadline. `None` for the claim (a late claim waits longer instead) and
    /// when no write is outstanding. [`Machine::emit_block`] applies it; a driver that issues
    /// the emitted block later (a queue, an I/O thread) must not issue it at or after this
    /// instant, and then calls [`Machine::handle_write_not_issued`].
    #[must_use]
    pub fn write_deadline(&self) -> Option<Instant> {
        let lease = self.lease_until.filter(|_| self.cfg.self_fence());
        match self.step {
            Step::BeatWrite { .. } | Step::ReleaseWrite => lease,
            Step::RestoreWrite { deadline } => Some(lease.map_or(deadline, |l| l.min(deadline))),
            Step::ClearWrite { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// The outstanding write was emitted but not issued by its [`Machine::write_deadline`]:
    /// the machine ends as [`Machine::emit_block`] would have past it (fenced, aborted with
    /// the claim left, or a clear refused as too late).
    pub fn handle_write_not_issued(&mut self, now: Now) {
        let _ = self.write_past_deadline(now);
    }

    /// Every write but the claim carries a deadline and is never issued past it (see
    /// [`Machine::write_deadline`]). Returns whether it has passed: the machine has then
    /// finished (or fenced).
    fn write_past_deadline(&mut self, now: Now) -> bool {
        match self.step {
            Step::BeatWrite { .. } | Step::ReleaseWrite if self.lease_expired(now.mono) => {
                self.fence(now.mono);
                true
            }
            Step::RestoreWrite { deadline }
                if now.mono >= deadline || self.lease_expired(now.mono) =>
            {
                // Too late to put the old block back safely: our claim stays, which other
                // hosts treat as a stale live block (the full takeover wait, never a CLEAN).
                self.finish(Outcome::Aborted);
                true
            }
            Step::ClearWrite { deadline } if now.mono >= deadline => {
                let late_by = now.mono.saturating_since(deadline);
                self.finish(Outcome::Refused(Refusal::TooLate { late_by }));
                true
            }
            _ => false,
        }
    }

    /// The next deadline: call [`Machine::handle_timeout`] once it has passed. `None` when
    /// finished or when an I/O is outstanding (its completion is the next input).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.step {
            Step::Watch {
                until, next_poll, ..
            } => Some(until.min(next_poll)),
            Step::ClaimWait { until, next_poll } => Some(until.min(next_poll)),
            Step::RestoreWait { at } => Some(at),
            Step::Held { next_beat } => Some(match (self.cfg.self_fence(), self.lease_until) {
                (true, Some(l)) => next_beat.min(l),
                _ => next_beat,
            }),
            _ => None,
        }
    }

    /// The next event, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.ev_len == 0 {
            return None;
        }
        let e = self.events[self.ev_head].take();
        self.ev_head = (self.ev_head + 1) % EVENT_CAP;
        self.ev_len -= 1;
        e
    }

    // ----- inputs --------------------------------------------------------------------

    /// A read finished with `data` (at least the requested length).
    ///
    /// `now` is when the result is handled, which may be long after the device was sampled:
    /// decisions that need the sample to be *after* an instant use the time the read was
    /// requested (a lower bound of the sample), decisions that need it *before* an instant
    /// use `now` (an upper bound). See "Time of an I/O" in `docs/protocol.md`.
    pub fn handle_read_done(&mut self, now: Now, data: &[u8]) {
        let len = self.cfg.layout.record_len();
        let Some(data) = data.get(..len) else {
            self.handle_io_error(now, IoError::Short);
            return;
        };
        match self.step {
            Step::Initial => self.on_initial(now, data),
            Step::WatchRead { until, total } => self.on_watch_read(now, data, until, total),
            Step::ClaimRead { .. } if self.abort_requested => {
                self.on_aborting_claim_read(now, data)
            }
            Step::ClaimRead { until } => self.on_claim_read(now, data, until),
            Step::RestoreRead => self.on_restore_read(now, data),
            Step::BeatRead { started } => self.on_beat_read(now, data, started),
            Step::ReleaseRead => self.on_release_read(now, data),
            Step::ClearRead => self.on_clear_read(now, data),
            _ => {}
        }
    }

    /// The outstanding write completed durably.
    ///
    /// `now` (when the completion is handled) is an upper bound of when the write landed;
    /// the instant it was emitted ([`Machine::emit_block`]) is a lower bound. Leases run
    /// from the lower bound, waits for competitors from the upper one.
    pub fn handle_write_done(&mut self, now: Now) {
        match self.step {
            Step::ClaimWrite => self.on_claim_written(now),
            Step::BeatWrite { started } => self.on_beat_written(now, started),
            Step::ReleaseWrite => self.finish(Outcome::Released),
            Step::RestoreWrite { .. } => self.finish(Outcome::Aborted),
            Step::ClearWrite { .. } => self.finish(Outcome::Cleared),
            _ => {}
        }
    }

    /// The outstanding read or write failed.
    pub fn handle_io_error(&mut self, now: Now, err: IoError) {
        match self.step {
            Step::Initial
            | Step::WatchRead { .. }
            | Step::ClaimRead { .. }
            | Step::ClaimWrite
            | Step::ClearRead
            | Step::ClearWrite { .. } => self.finish(Outcome::Refused(Refusal::Io(err))),
            Step::BeatRead { .. }
            | Step::BeatWrite { .. }
            | Step::ReleaseRead
            | Step::ReleaseWrite
                if err.is_reservation_conflict() =>
            {
                self.stats.io_failures += 1;
                self.finish(Outcome::Lost(Loss::Preempted(err)));
            }
            Step::BeatRead { .. } | Step::BeatWrite { .. } => self.on_beat_io_error(now, err),
            Step::ReleaseRead => self.finish(Outcome::Lost(Loss::ReleaseReadFailed(err))),
            // A failed CLEAN write leaves either our last heartbeat or CLEAN: both are safe
            // for the next owner. We no longer own it either way.
            Step::ReleaseWrite => self.finish(Outcome::Lost(Loss::ReleaseReadFailed(err))),
            // Restoring after an abort is best effort: our claim stays, which other hosts
            // treat as a stale live block.
            Step::RestoreRead | Step::RestoreWrite { .. } => self.finish(Outcome::Aborted),
            _ => {}
        }
    }

    /// Time passed: performs whatever was due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        match self.step {
            Step::Watch {
                until,
                total,
                next_poll,
            } if now.mono >= next_poll || now.mono >= until => {
                self.step = Step::WatchRead { until, total };
                self.request_read(now.mono);
            }
            Step::ClaimWait { until, next_poll } if now.mono >= next_poll || now.mono >= until => {
                self.step = Step::ClaimRead { until };
                self.request_read(now.mono);
            }
            Step::RestoreWait { at } if now.mono >= at => {
                self.step = Step::RestoreRead;
                self.request_read(now.mono);
            }
            Step::Held { next_beat } => self.on_held_tick(now, next_beat),
            _ => {}
        }
    }

    /// How early [`Machine::beat_early`] may start this machine's next heartbeat: a
    /// twentieth of the interval, at most 50 ms. `None` unless it is held and idle between
    /// heartbeats.
    #[must_use]
    pub fn early_beat_slack(&self) -> Option<Duration> {
        match self.step {
            Step::Held { .. } if !self.release_requested => {
                let interval = self
                    .timing
                    .map(|t| t.interval)
                    .unwrap_or(FALLBACK_TIMING.interval);
                Some((interval / 20).min(MAX_EARLY_BEAT))
            }
            _ => None,
        }
    }

    /// Starts the next heartbeat now if the machine is held and idle and the heartbeat is
    /// due within [`Machine::early_beat_slack`]. Returns whether it started.
    ///
    /// A heartbeat written early only makes one gap shorter, which is always safe (waiters
    /// count from the owner's interval, and the lease runs from the new write); the next one
    /// is planned an interval after this start. Engines use it to do the heartbeats of many
    /// devices that are due at nearly the same time as one batch of I/O.
    pub fn beat_early(&mut self, now: Now) -> bool {
        let Some(slack) = self.early_beat_slack() else {
            return false;
        };
        let Step::Held { next_beat } = self.step else {
            return false;
        };
        if self.lease_expired(now.mono) || next_beat > now.mono + slack {
            return false;
        }
        self.beat(now);
        true
    }

    /// Asks to release. While held: at the next opportunity the block is re-read and, only
    /// if it is still exactly what we wrote (and the lease still runs), CLEAN is written.
    /// While acquiring or checking: the operation is abandoned ([`Outcome::Aborted`]); a
    /// claim already written is replaced by the block found before it only if that can be
    /// done safely (see [`Outcome::Aborted`]), else it stays.
    pub fn release(&mut self, now: Now) {
        match self.step {
            Step::Held { .. } => {
                self.release_requested = true;
                self.handle_timeout(now);
            }
            Step::BeatRead { .. } | Step::BeatWrite { .. } => self.release_requested = true,
            Step::Done(_)
            | Step::ReleaseRead
            | Step::ReleaseWrite
            | Step::RestoreWait { .. }
            | Step::RestoreRead
            | Step::RestoreWrite { .. } => {}
            // Our claim is on the device: restore what was there, if it is still ours.
            Step::ClaimWait { .. } => {
                self.abort_requested = true;
                self.start_restore(now);
            }
            Step::ClaimWrite | Step::ClaimRead { .. } => self.abort_requested = true,
            _ => {
                self.pending = None;
                self.finish(Outcome::Aborted);
            }
        }
    }

    // ----- internals -----------------------------------------------------------------

    // The steps of the inputs, one per (input, step) pair: what `handle_*` dispatch to.

    /// The claim landed: how long to wait before the verify read (longer for a late claim
    /// or over a CLEAN whose release was not watched), and the lease it earns.
    fn on_claim_written(&mut self, now: Now) {
        let len = self.cfg.layout.record_len();
        self.written[..len].copy_from_slice(&self.out[..len]);
        let t = self.timing.unwrap_or(FALLBACK_TIMING);
        // A claim whose write completed more than an interval after the read that
        // justified it may have landed on a host that became owner meanwhile and is
        // now silent (paused, I/O stalled) but still inside its lease: the short
        // claim wait (2 intervals) only catches owners that keep heartbeating. Such a
        // late claim waits out a whole lease (plus 1/8 for clock drift), still well
        // inside a waiter's watch of our claim (2 fail windows), so the silence is not
        // mistaken for a dead claimer. ext4's claim wait equals its fail window,
        // which leaves no margin for clock drift, so the same rule applies there.
        // A claim on a CLEAN block whose release we did not watch happen waits the
        // same: that CLEAN may have landed late over an owner that is silent now.
        let late = now.mono.saturating_since(self.claim_basis) > t.interval;
        let untrusted_clean = self
            .first
            .is_some_and(|f| f.class() == Class::Clean && !self.release_watched);
        let wait = if late || untrusted_clean {
            t.max_acquire_wait(true)
        } else {
            t.claim_wait
        };
        // A waiter that saw our claim needs a whole watch plus a claim wait after it
        // landed (no earlier than it was emitted) before it could own, so the lease
        // runs from the emission: our own claim wait plus half a fail window to get
        // the first heartbeat out. The wait itself runs from the completion.
        self.lease_until = Some(self.write_emitted + wait + t.fail_window / 2);
        self.stats.last_write = Some(self.write_emitted);
        self.claim_done = now.mono;
        self.claim_total = wait;
        self.claim_late = late;
        if self.abort_requested {
            self.start_restore(now);
            return;
        }
        let until = now.mono + wait;
        self.step = Step::ClaimWait {
            until,
            next_poll: self.next_poll(now.mono),
        };
        self.progress(Phase::Claiming, wait, wait);
    }

    /// A heartbeat landed: account it, then the release's read or the next heartbeat.
    fn on_beat_written(&mut self, now: Now, started: Instant) {
        let len = self.cfg.layout.record_len();
        self.written[..len].copy_from_slice(&self.out[..len]);
        let issued = self.write_emitted;
        self.on_beat_success(now, started, issued);
        if self.release_requested {
            self.step = Step::ReleaseRead;
            self.request_read(now.mono);
        } else {
            let interval = self
                .timing
                .map(|t| t.interval)
                .unwrap_or(FALLBACK_TIMING.interval);
            let mut next = started + interval;
            if next < now.mono {
                next = now.mono;
            }
            self.step = Step::Held { next_beat: next };
        }
    }

    /// A heartbeat's read or write failed: retry soon within the lease (a pending release
    /// gives up instead: in doubt, no CLEAN).
    fn on_beat_io_error(&mut self, now: Now, err: IoError) {
        self.stats.io_failures += 1;
        self.push(Event::IoRetry(err));
        if self.lease_expired(now.mono) {
            self.fence(now.mono);
            return;
        }
        if self.release_requested {
            // In doubt: do not write CLEAN; leave the last heartbeat on disk.
            self.finish(Outcome::Lost(Loss::ReleaseReadFailed(err)));
            return;
        }
        let t = self.timing.unwrap_or(FALLBACK_TIMING);
        let retry = (t.interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.step = Step::Held {
            next_beat: now.mono + retry,
        };
    }

    /// Held between heartbeats: fence past the lease, else beat when due (or to release).
    fn on_held_tick(&mut self, now: Now, next_beat: Instant) {
        if self.lease_expired(now.mono) {
            self.fence(now.mono);
        } else if now.mono >= next_beat || self.release_requested {
            self.beat(now);
        }
    }

    /// The claim's read-back while an abort is pending: restore what was there if the claim
    /// is still ours (and old enough), else leave the device to whoever wrote.
    fn on_aborting_claim_read(&mut self, now: Now, data: &[u8]) {
        let len = self.cfg.layout.record_len();
        if data != &self.written[..len] {
            // Someone else wrote: never overwrite it.
            self.finish(Outcome::Aborted);
        } else if self.read_requested >= self.restore_not_before() {
            self.try_restore(now);
        } else {
            self.start_restore(now);
        }
    }

    /// The claim's verify read: another claim lost us the race; a read issued after the
    /// claim wait proves the claim (if its lease still runs); an earlier one proves nothing.
    fn on_claim_read(&mut self, now: Now, data: &[u8], until: Instant) {
        let len = self.cfg.layout.record_len();
        if data != &self.written[..len] {
            let snap = parse(&self.cfg.layout, data).ok();
            self.finish(Outcome::Refused(Refusal::LostRace(snap)));
        } else if self.read_requested >= until {
            // The read was issued after the claim wait ended, so it saw the device
            // after every competing prompt claim had landed.
            match self.lease_until {
                Some(l) if now.mono >= l => {
                    let late_by = now.mono.saturating_since(l);
                    self.finish(Outcome::Refused(Refusal::TooLate { late_by }));
                }
                _ => {
                    self.push(Event::Acquired);
                    self.beat(now);
                }
            }
        } else {
            // Issued before the wait ended (a poll read, or handled late): it proves
            // nothing about the end of the wait. Read again once it has passed.
            let next_poll = self.next_poll(now.mono);
            self.step = Step::ClaimWait { until, next_poll };
            let total = self.claim_total;
            let remaining = until.saturating_since(now.mono).min(total);
            self.progress(Phase::Claiming, remaining, total);
        }
    }

    /// The restore's read: still our claim, so put back what was there; else someone wrote.
    fn on_restore_read(&mut self, now: Now, data: &[u8]) {
        let len = self.cfg.layout.record_len();
        if data == &self.written[..len] {
            self.try_restore(now);
        } else {
            self.finish(Outcome::Aborted);
        }
    }

    /// A heartbeat's read: fence past the lease, lose to a foreign write, else write the
    /// next heartbeat (or CLEAN when a release is pending).
    fn on_beat_read(&mut self, now: Now, data: &[u8], started: Instant) {
        let len = self.cfg.layout.record_len();
        if self.lease_expired(now.mono) {
            self.fence(now.mono);
        } else if data != &self.written[..len] {
            let snap = parse(&self.cfg.layout, data).ok();
            self.finish(Outcome::Lost(Loss::ForeignWrite(snap)));
        } else if self.release_requested {
            self.start_release_write(now);
        } else {
            self.build_heartbeat(now, started);
            self.step = Step::BeatWrite { started };
            self.request_write();
        }
    }

    /// The release's read: CLEAN only over our own last write, within the lease.
    fn on_release_read(&mut self, now: Now, data: &[u8]) {
        let len = self.cfg.layout.record_len();
        if data != &self.written[..len] {
            let snap = parse(&self.cfg.layout, data).ok();
            self.finish(Outcome::Lost(Loss::ForeignWrite(snap)));
        } else if self.lease_expired(now.mono) {
            self.fence(now.mono);
        } else {
            self.start_release_write(now);
        }
    }

    /// The clear's read: what to write, and the deadline by which it must go out.
    fn on_clear_read(&mut self, now: Now, data: &[u8]) {
        let snap = parse(&self.cfg.layout, data).ok();
        if let Some(s) = snap {
            self.push(Event::Observed(s));
        }
        // The clear writes what it derived from this read: not later than a fail
        // window after it (ext4: the file system's own, also for a block that does
        // not parse).
        let budget = match (snap, self.cfg.layout) {
            (Some(s), layout) => Timing::for_snapshot(&layout, &s).fail_window,
            (None, layout @ Layout::Ext4 { .. }) => {
                let base = u32::from(layout.ext4_update_interval_s())
                    .max(u32::from(ext4::MIN_CHECK_INTERVAL_S));
                Duration::from_secs(u64::from(ext4::wait_time_s(base)))
            }
            (None, Layout::Native { .. }) => FALLBACK_TIMING.fail_window,
        };
        let deadline = self.read_requested + budget;
        if now.mono >= deadline {
            let late_by = now.mono.saturating_since(deadline);
            self.finish(Outcome::Refused(Refusal::TooLate { late_by }));
            return;
        }
        match self.build_clear(now, snap) {
            Ok(()) => {
                self.step = Step::ClearWrite { deadline };
                self.request_write();
            }
            Err(c) => self.finish(Outcome::Refused(Refusal::Corrupt(c))),
        }
    }

    fn on_initial(&mut self, now: Now, data: &[u8]) {
        let len = self.cfg.layout.record_len();
        self.seen[..len].copy_from_slice(data);
        self.last_match = self.read_requested;
        let snap = match parse(&self.cfg.layout, data) {
            Ok(s) => s,
            Err(c) => {
                self.finish(Outcome::Refused(Refusal::Corrupt(c)));
                return;
            }
        };
        self.first = Some(snap);
        self.push(Event::Observed(snap));
        let timing = Timing::for_snapshot(&self.cfg.layout, &snap);
        self.timing = Some(timing);
        self.stats.interval = timing.interval;
        self.stats.fail_window = timing.fail_window;
        // Queueing waits through another host's live block instead of refusing it.
        let force = self.cfg.force || self.cfg.wait;
        if let Some(r) = immediate_refusal(self.op, &self.cfg.identity, force, &snap) {
            return self.finish(Outcome::Refused(r));
        }
        if snap.class() == Class::Clean {
            if self.op == Op::Check {
                return self.finish(Outcome::Safe {
                    stale: false,
                    snapshot: snap,
                });
            }
            self.claim(now);
            return;
        }
        self.start_watch(now, timing);
    }

    /// Starts (or restarts) the activity watch of the block in `seen`, from `now` (an upper
    /// bound of when that block was sampled).
    fn start_watch(&mut self, now: Now, timing: Timing) {
        let mut total = timing.watch;
        if self.op == Op::Acquire {
            // 0..12.5 % jitter, so two hosts that start together do not finish together.
            let micros = u64::try_from(total.as_micros() / 8).unwrap_or(u64::MAX);
            let cap = u32::try_from(micros).unwrap_or(u32::MAX);
            total += Duration::from_micros(u64::from(self.rng.below_inclusive(cap)));
        }
        let until = now.mono + total;
        self.step = Step::Watch {
            until,
            total,
            next_poll: self.next_poll(now.mono),
        };
        self.progress(Phase::Watching, total, total);
    }

    fn on_watch_read(&mut self, now: Now, data: &[u8], until: Instant, total: Duration) {
        let len = self.cfg.layout.record_len();
        if data == &self.seen[..len] {
            self.last_match = self.read_requested;
            // The watch is over only if this read was issued after its end.
            if self.read_requested >= until {
                self.watch_passed(now);
            } else {
                let next_poll = self.next_poll(now.mono);
                self.step = Step::Watch {
                    until,
                    total,
                    next_poll,
                };
                self.progress(Phase::Watching, until.saturating_since(now.mono), total);
            }
            return;
        }
        let snap = parse(&self.cfg.layout, data).ok();
        let prev = self.first;
        match snap {
            // Released while we watched: the best news a waiter can get.
            Some(s) if s.class() == Class::Clean && self.op == Op::Acquire => {
                self.release_watched = prev.is_some_and(|p| self.watched_release(now, &p, &s));
                self.adopt(data, s);
                self.claim(now);
            }
            // Another heartbeat: the owner is alive. Queueing keeps watching it.
            Some(s) if self.cfg.wait && self.op == Op::Acquire && s.class() == Class::Active => {
                self.advance_basis = Some(self.last_match);
                self.adopt(data, s);
                self.last_match = self.read_requested;
                let timing = Timing::for_snapshot(&self.cfg.layout, &s);
                self.start_watch(now, timing);
            }
            _ => self.finish(Outcome::Refused(Refusal::Active(snap))),
        }
    }

    /// Whether `clean` is the release of the live block `prev` that we saw being written:
    /// a native release record of the same host, naming (its sequence minus one) a
    /// heartbeat at or after `prev`'s (the owner may have written a few more between our
    /// polls: at most about a fail window's worth, `2 F + 2` allowed; an old release of an
    /// earlier ownership has an unrelated random sequence), observed within a fail window of
    /// the last read that still saw the block before `prev` (so `prev` was a live heartbeat
    /// that landed during our watch, and no other host can have completed a takeover of it
    /// before the release landed). ext4 CLEAN blocks do not name the sequence they release:
    /// never.
    fn watched_release(&self, now: Now, prev: &Snapshot, clean: &Snapshot) -> bool {
        let (Snapshot::Native(p), Snapshot::Native(c)) = (prev, clean) else {
            return false;
        };
        let Some(basis) = self.advance_basis else {
            return false;
        };
        let fail = Timing::for_snapshot(&self.cfg.layout, prev).fail_window;
        let gap = c.seq.wrapping_sub(p.seq);
        p.state == native::State::Active
            && c.reason == native::Reason::Released
            && c.hostid == p.hostid
            && (1..=2 * u64::from(p.fail_intervals) + 2).contains(&gap)
            && now.mono.saturating_since(basis) < fail
    }

    /// Makes `data` (parsed as `snap`) the block we watch and would restore.
    fn adopt(&mut self, data: &[u8], snap: Snapshot) {
        let len = self.cfg.layout.record_len();
        self.seen[..len].copy_from_slice(data);
        self.first = Some(snap);
        let timing = Timing::for_snapshot(&self.cfg.layout, &snap);
        self.timing = Some(timing);
        self.stats.interval = timing.interval;
        self.stats.fail_window = timing.fail_window;
    }

    fn watch_passed(&mut self, now: Now) {
        let Some(snap) = self.first else {
            // No record from the first read: no correct driver gets here. In doubt, refuse.
            self.finish(Outcome::Refused(Refusal::Io(IoError::NoErrno)));
            return;
        };
        if self.op == Op::Check {
            self.finish(Outcome::Safe {
                stale: true,
                snapshot: snap,
            });
        } else if self.cfg.wait && !self.cfg.force && is_foreign(&self.cfg.identity, &snap) {
            // Another host's block went stale: taking it needs `force`. Queueing waits on
            // for a release (or for the caller to give up).
            let timing = self.timing.unwrap_or(FALLBACK_TIMING);
            self.start_watch(now, timing);
        } else {
            self.claim(now);
        }
    }

    /// After an abort, the earliest instant a restore read may be requested: an interval
    /// and a quarter fail window (the issue-to-land bound) after our claim completed, so
    /// that a competitor's prompt claim (written within an interval of a read that came
    /// before our claim landed), and the next heartbeat of a kernel that mounted the CLEAN
    /// block with no wait just before our claim landed (kmmpd writes every interval without
    /// reading), have landed and are seen. The simulator found the kernel case (seed
    /// 9228204365228054242).
    fn restore_not_before(&self) -> Instant {
        let t = self.timing.unwrap_or(FALLBACK_TIMING);
        self.claim_done + t.interval + t.fail_window / 4
    }

    /// Abort with our claim on the device: wait until a competitor's prompt claim would be
    /// visible, then re-read.
    fn start_restore(&mut self, now: Now) {
        if self.claim_late {
            // Nothing to restore (see `try_restore`): no wait, no read.
            self.finish(Outcome::Aborted);
            return;
        }
        let at = self.restore_not_before();
        if now.mono >= at {
            self.step = Step::RestoreRead;
            self.request_read(now.mono);
        } else {
            self.step = Step::RestoreWait { at };
        }
    }

    /// The restore read (issued after [`Machine::restore_not_before`]) found exactly our
    /// claim: put back the block found before it, if that can still land before any
    /// competitor could verify a claim of its own; else leave our claim.
    fn try_restore(&mut self, now: Now) {
        let t = self.timing.unwrap_or(FALLBACK_TIMING);
        // A competitor whose claim had not landed when we read verifies no earlier than its
        // shortest claim wait after our read: our restore must be issued within half of it.
        let deadline = self.read_requested + t.min_claim_wait() / 2;
        // A late claim may have covered a block written after the one we saw (another
        // host's heartbeat): writing back what we saw would not restore anything.
        if self.claim_late || now.mono >= deadline || self.lease_expired(now.mono) {
            self.finish(Outcome::Aborted);
            return;
        }
        let len = self.cfg.layout.record_len();
        self.out[..len].copy_from_slice(&self.seen[..len]);
        self.step = Step::RestoreWrite { deadline };
        self.request_write();
    }

    fn claim(&mut self, now: Now) {
        let Some(first) = self.first else { return };
        self.claim_basis = self.read_requested;
        let id = self.cfg.identity;
        let snap = match first {
            Snapshot::Ext4(old) => {
                let mut seq = self.rng.below_inclusive(ext4::SEQ_MAX);
                if seq == old.seq {
                    seq = if seq == 0 { 1 } else { seq - 1 };
                }
                let upd = self.cfg.layout.ext4_update_interval_s();
                let ci = (upd.saturating_mul(2)).max(ext4::MIN_CHECK_INTERVAL_S);
                let mut b =
                    ext4::Block::new(seq, now.wall_ms / 1000, id.nodename(), ext4_bdev(&id), ci);
                b.pad1 = 0;
                self.stats.check_interval_s = ci;
                Snapshot::Ext4(b)
            }
            Snapshot::Native(old) => {
                let mut r = old;
                let mut seq = self.rng.next_u64() >> 2;
                if seq == old.seq || seq == 0 {
                    seq = old.seq.wrapping_add(1 << 32) | 1;
                }
                r.seq = seq;
                r.reason = if old.state == native::State::Active {
                    native::Reason::TakenOver
                } else {
                    native::Reason::None
                };
                r.state = native::State::Active;
                r.hostid = id.hostid;
                r.nodename = id.nodename;
                r.devname = id.devname;
                r.time_ms = now.wall_ms;
                r.since_ms = now.wall_ms;
                r.delay_us = 0;
                Snapshot::Native(r)
            }
        };
        self.mine = Some(snap);
        self.encode(snap);
        self.step = Step::ClaimWrite;
        self.request_write();
    }

    /// Starts a heartbeat cycle: the verify read.
    fn beat(&mut self, now: Now) {
        self.step = Step::BeatRead { started: now.mono };
        self.request_read(now.mono);
    }

    fn build_heartbeat(&mut self, now: Now, started: Instant) {
        let Some(mine) = self.mine else { return };
        let elapsed = self.last_beat_start.map(|p| started.saturating_since(p));
        self.last_beat_start = Some(started);
        let next = match mine {
            Snapshot::Ext4(mut b) => {
                b.seq = if b.seq >= ext4::SEQ_MAX { 1 } else { b.seq + 1 };
                b.time = now.wall_ms / 1000;
                if let Some(e) = elapsed {
                    // The kernel's rule: clamp(2 * elapsed whole seconds, 5, 300), written
                    // on the next write.
                    b.check_interval = ext4::next_check_interval_s(e.as_secs());
                }
                self.stats.check_interval_s = b.check_interval;
                self.stats.advertised_delay = Duration::from_secs(u64::from(b.check_interval));
                Snapshot::Ext4(b)
            }
            Snapshot::Native(mut r) => {
                r.seq = r.seq.wrapping_add(1);
                r.time_ms = now.wall_ms;
                r.delay_us =
                    u32::try_from(self.stats.advertised_delay.as_micros()).unwrap_or(u32::MAX);
                Snapshot::Native(r)
            }
        };
        self.mine = Some(next);
        self.encode(next);
    }

    fn on_beat_success(&mut self, now: Now, started: Instant, issued: Instant) {
        let t = self.timing.unwrap_or(FALLBACK_TIMING);
        // The gap from the claim to the first heartbeat is the claim wait, not lateness.
        if let Some(prev) = self.stats.last_write.filter(|_| self.stats.beats > 0) {
            let gap = issued.saturating_since(prev);
            self.stats.max_gap = self.stats.max_gap.max(gap);
            if matches!(self.cfg.layout, Layout::Native { .. }) {
                // Decaying lateness that jumps up at once on a slow cycle (ZFS's mmp_delay
                // rule, applied to the lateness beyond the interval).
                let late = gap.saturating_sub(t.interval) + now.mono.saturating_since(issued);
                let cur = self.stats.advertised_delay;
                self.stats.advertised_delay = if late > cur {
                    late
                } else {
                    (late + cur * 127) / 128
                };
            }
        }
        self.stats.beats += 1;
        self.stats.last_write = Some(issued);
        self.stats.last_cycle = now.mono.saturating_since(started);
        self.lease_until = Some(issued + t.fail_window);
    }

    fn start_release_write(&mut self, now: Now) {
        let Some(mine) = self.mine else { return };
        let clean = match mine {
            Snapshot::Ext4(mut b) => {
                b.seq = ext4::SEQ_CLEAN;
                b.time = now.wall_ms / 1000;
                Snapshot::Ext4(b)
            }
            Snapshot::Native(mut r) => {
                r.state = native::State::Clean;
                r.reason = native::Reason::Released;
                r.seq = r.seq.wrapping_add(1);
                r.time_ms = now.wall_ms;
                Snapshot::Native(r)
            }
        };
        self.mine = Some(clean);
        self.encode(clean);
        self.step = Step::ReleaseWrite;
        self.request_write();
    }

    fn build_clear(&mut self, now: Now, old: Option<Snapshot>) -> Result<(), Corrupt> {
        let id = self.cfg.identity;
        let snap = match self.cfg.layout {
            Layout::Ext4 { .. } => {
                // Like e2fsprogs' reset: a fresh block whatever was there.
                let ci = self
                    .cfg
                    .layout
                    .ext4_update_interval_s()
                    .max(ext4::MIN_CHECK_INTERVAL_S);
                Snapshot::Ext4(ext4::Block::new(
                    ext4::SEQ_CLEAN,
                    now.wall_ms / 1000,
                    id.nodename(),
                    ext4_bdev(&id),
                    ci,
                ))
            }
            Layout::Native { .. } => {
                // The record carries the area's parameters; without a readable record there
                // is nothing to keep (use `mmp format --force` instead).
                let Some(Snapshot::Native(mut r)) = old else {
                    let mut buf = [0u8; native::RECORD_LEN];
                    buf.copy_from_slice(&self.seen[..native::RECORD_LEN]);
                    return Err(match native::Record::parse(&buf) {
                        Err(e) => Corrupt::Native(e),
                        Ok(_) => Corrupt::Native(native::RecordError::BadMagic),
                    });
                };
                r.state = native::State::Clean;
                r.reason = native::Reason::Cleared;
                r.seq = r.seq.wrapping_add(1);
                r.time_ms = now.wall_ms;
                r.delay_us = 0;
                r.hostid = id.hostid;
                r.nodename = id.nodename;
                r.devname = id.devname;
                Snapshot::Native(r)
            }
        };
        self.encode(snap);
        Ok(())
    }

    fn encode(&mut self, snap: Snapshot) {
        match (snap, self.cfg.layout) {
            (Snapshot::Ext4(mut b), Layout::Ext4 { csum_seed, .. }) => {
                b.emit(&mut self.out, csum_seed)
            }
            (Snapshot::Native(r), _) => r.emit(&mut self.out),
            (Snapshot::Ext4(mut b), Layout::Native { .. }) => b.emit(&mut self.out, None),
        }
    }

    fn lease_expired(&self, now: Instant) -> bool {
        self.cfg.self_fence() && self.lease_until.is_some_and(|l| now >= l)
    }

    fn fence(&mut self, now: Instant) {
        let since = self
            .stats
            .last_write
            .map(|w| now.saturating_since(w))
            .unwrap_or_default();
        self.pending = None;
        let fail_window = self
            .timing
            .map_or(FALLBACK_TIMING.fail_window, |t| t.fail_window);
        self.finish(Outcome::Lost(Loss::Fenced {
            since_last_write: since,
            fail_window,
        }));
    }

    fn next_poll(&self, now: Instant) -> Instant {
        now + self.timing.map(|t| t.poll).unwrap_or(FALLBACK_TIMING.poll)
    }

    fn request_read(&mut self, now: Instant) {
        self.read_requested = now;
        self.pending = Some(IoRequest::Read {
            offset_bytes: self.cfg.layout.offset_bytes(),
            len: self.cfg.layout.record_len(),
        });
    }

    fn request_write(&mut self) {
        self.pending = Some(IoRequest::Write {
            offset_bytes: self.cfg.layout.offset_bytes(),
            len: self.cfg.layout.record_len(),
        });
    }

    fn finish(&mut self, outcome: Outcome) {
        self.step = Step::Done(outcome);
        self.pending = None;
        self.lease_until = None;
        self.push(Event::Finished(outcome));
    }

    fn progress(&mut self, phase: Phase, remaining: Duration, total: Duration) {
        self.push(Event::Progress {
            phase,
            remaining,
            total,
        });
    }

    fn push(&mut self, e: Event) {
        if self.ev_len == EVENT_CAP {
            // Make room by dropping the oldest progress report (the only frequent kind);
            // `Acquired` and `Finished` are never dropped.
            let victim = (0..EVENT_CAP)
                .map(|k| (self.ev_head + k) % EVENT_CAP)
                .find(|&i| matches!(self.events[i], Some(Event::Progress { .. })))
                .unwrap_or(self.ev_head);
            let mut i = victim;
            // Close the gap: shift the younger events one place towards the head.
            while i != (self.ev_head + self.ev_len - 1) % EVENT_CAP {
                let next = (i + 1) % EVENT_CAP;
                self.events[i] = self.events[next].take();
                i = next;
            }
            self.events[i] = None;
            self.ev_len -= 1;
        }
        let idx = (self.ev_head + self.ev_len) % EVENT_CAP;
        self.events[idx] = Some(e);
        self.ev_len += 1;
    }
}

/// Upper bound of [`Machine::early_beat_slack`].
pub const MAX_EARLY_BEAT: Duration = Duration::from_millis(50);

/// The 32-byte ext4 device name: the device path if it fits, else its last component.
fn ext4_bdev(id: &Identity) -> &[u8] {
    let full = crate::format::trim_name(&id.devname);
    if full.len() <= 32 {
        return full;
    }
    match full.iter().rposition(|&b| b == b'/') {
        Some(i) => &full[i + 1..],
        None => full,
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test arithmetic")]
mod tests;
