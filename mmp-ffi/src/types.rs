//! The plain C types: enums, flags, the status and identity structs, the callback types.
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_void};
use mmp_core::format::{native, trim_name};
use mmp_core::machine::{Class, Layout, Loss, Phase, Snapshot, Timing};
use mmp_linux::target::Format;

/// Open the device read-only: `mmp_device_status` and `mmp_device_check` work, every call
/// that writes returns `MMP_RESULT_READ_ONLY`.
pub const MMP_OPEN_READ_ONLY: u32 = 1;

/// Run the heartbeat thread with locked memory (`mlockall`, which affects the whole
/// process) and `SCHED_FIFO` when the system allows it; failures are ignored.
pub const MMP_OPEN_REALTIME: u32 = 2;

/// Every flag `mmp_device_open` knows; other bits give `MMP_RESULT_INVALID_PARAMETER`.
pub const MMP_OPEN_ALL: u32 = MMP_OPEN_READ_ONLY | MMP_OPEN_REALTIME;

/// `mmp_device_read_events`: a held device was lost (the loss callback, if any, is called
/// too); the details come with the event.
pub const MMP_EVENT_LOST: u32 = 1;

/// `mmp_device_read_events`: the acquire started with `mmp_device_acquire_start` entered a
/// new phase or wait (`mmp_device_acquire_progress` describes it).
pub const MMP_EVENT_PROGRESS: u32 = 2;

/// `mmp_device_read_events`: the acquire started with `mmp_device_acquire_start` has
/// finished (held, refused, failed or cancelled): `mmp_device_acquire_finish` returns its
/// result.
pub const MMP_EVENT_ACQUIRE_DONE: u32 = 4;

/// Size of the name arrays in `mmp_status`: up to 64 bytes and a terminating NUL.
pub const MMP_NAME_SIZE: usize = 65;

/// The on-disk format of a device.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_format {
    /// An ext4/ldiskfs file system with the MMP feature.
    Ext4 = 1,
    /// A native mmp area (`mmp_native_format`).
    Native = 2,
}

impl From<Format> for mmp_format {
    fn from(f: Format) -> Self {
        match f {
            Format::Ext4 => mmp_format::Ext4,
            Format::Native => mmp_format::Native,
        }
    }
}

/// The state an MMP block records.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_state {
    /// Released: nobody holds the device.
    Clean = 0,
    /// Held, or held by a host that stopped without releasing.
    Active = 1,
    /// ext4: e2fsck or another e2fsprogs tool holds it (`SEQ_FSCK`).
    Fsck = 2,
    /// ext4: an unknown sequence value above `SEQ_MAX`.
    Unknown = 3,
    /// native: reserved for maintenance.
    Maintenance = 4,
}

impl From<Class> for mmp_state {
    fn from(c: Class) -> Self {
        match c {
            Class::Clean => mmp_state::Clean,
            Class::Active => mmp_state::Active,
            Class::Fsck => mmp_state::Fsck,
            Class::Unknown => mmp_state::Unknown,
            Class::Maintenance => mmp_state::Maintenance,
        }
    }
}

/// Why a native block is in its state: the last transition it records
/// (`mmp status --json`'s `reason`). ext4 records none.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_reason {
    /// Nothing recorded: an active block acquired from a clean one, and every ext4 block.
    None = 0,
    /// The owner released it cleanly.
    Released = 1,
    /// An operator reset it (`mmp_device_clear`, `mmp clear --force`).
    Cleared = 2,
    /// The current owner took it over from an owner that never released it.
    TakenOver = 3,
    /// `mmp_native_format` (`mmp format`) wrote it.
    Formatted = 4,
}

impl From<native::Reason> for mmp_reason {
    fn from(r: native::Reason) -> Self {
        match r {
            native::Reason::None => mmp_reason::None,
            native::Reason::Released => mmp_reason::Released,
            native::Reason::Cleared => mmp_reason::Cleared,
            native::Reason::TakenOver => mmp_reason::TakenOver,
            native::Reason::Formatted => mmp_reason::Formatted,
        }
    }
}

/// Self-fencing of the process's heartbeats (`mmp_self_fence_state`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_self_fence {
    /// No watchdog armed: a lost lease stops our writes, but a hung host is not reset.
    Off = 0,
    /// A watchdog is armed and petted after successful heartbeats.
    Active = 1,
    /// A watchdog is armed but petting failed, or a device was lost and petting stopped (the
    /// watchdog will reset the host unless disarmed).
    Degraded = 2,
}

/// What a check or acquire is doing, for progress callbacks.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_phase {
    /// The first read.
    Reading = 0,
    /// Watching a non-clean block for activity.
    Watching = 1,
    /// Our claim is written; waiting to verify nobody else claims.
    Claiming = 2,
    /// Held; heartbeating.
    Held = 3,
    /// Releasing.
    Releasing = 4,
    /// Clearing.
    Clearing = 5,
    /// Finished.
    Done = 6,
}

impl From<Phase> for mmp_phase {
    fn from(p: Phase) -> Self {
        match p {
            Phase::Reading => mmp_phase::Reading,
            Phase::Watching => mmp_phase::Watching,
            Phase::Claiming => mmp_phase::Claiming,
            Phase::Held => mmp_phase::Held,
            Phase::Releasing => mmp_phase::Releasing,
            Phase::Clearing => mmp_phase::Clearing,
            Phase::Done => mmp_phase::Done,
        }
    }
}

/// Why a held device was lost.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum mmp_loss {
    /// Another host (or a person) wrote the block: it no longer holds what this host last
    /// wrote. `found` describes what was there when it parsed.
    ForeignWrite = 1,
    /// No heartbeat succeeded within the fail window: this host stopped writing
    /// (self-fenced). `since_last_write_ms` says how long it had been.
    Fenced = 2,
    /// The release could not re-read the block, so CLEAN was not written. `os_error` is
    /// the errno.
    ReleaseReadFailed = 3,
    /// The heartbeat thread stopped unexpectedly (a bug); no more heartbeats are written.
    HeartbeatStopped = 4,
    /// The storage refused a heartbeat with RESERVATION CONFLICT: another host preempted
    /// this host's SCSI persistent reservation. `os_error` is the errno (`EBADE`).
    Preempted = 5,
}

/// Who this host is, for `mmp_device_open`. Zero-initialise it and set what to override:
/// `{.nodename = "ost0-a", .default_hostid = true}` overrides only the node name.
#[repr(C)]
#[derive(Debug)]
pub struct mmp_identity {
    /// The hostid written to native blocks; 0 (unset) refuses to acquire a native area
    /// (ext4 MMP records only the node name and needs no hostid).
    pub hostid: u32,
    /// The node name written to the block (NUL-terminated bytes, at most 64 used), or NULL
    /// for this host's `uname` node name. Copied by `mmp_device_open`.
    pub nodename: *const c_char,
    /// true: ignore `hostid` and resolve this host's as a NULL identity does
    /// (`$MMP_HOSTID`, else `/etc/hostid`; a malformed or missing one is reported by the
    /// acquiring calls), so that only the node name is overridden. A flag rather than a
    /// reserved hostid value, because every 32-bit value but 0 is a valid hostid. false
    /// (what `{hostid, nodename}` initialisers leave it): use `hostid`.
    pub default_hostid: bool,
}

/// What a device's MMP block says, plus the timing derived from it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmp_status {
    /// ext4 or native.
    pub format: mmp_format,
    /// The recorded state.
    pub state: mmp_state,
    /// The sequence value (ext4: `mmp_seq`; native: `seq`).
    pub seq: u64,
    /// Wall time of the last write, Unix milliseconds (ext4 stores seconds).
    pub time_ms: u64,
    /// The hostid of the last writer (native only; 0 when `has_hostid` is false).
    pub hostid: u32,
    /// Whether the format records a hostid (native).
    pub has_hostid: bool,
    /// Whether this handle holds the device right now (acquired, not released, not lost),
    /// by the clock: false once the lease ran out, even if the heartbeat thread has not
    /// noticed (or is gone), and always false in a `fork()` child. Always false in statuses
    /// that describe someone else's block (check, loss, `mmp_error_info.owner`).
    pub owned: bool,
    /// The node name of the last writer, NUL-terminated.
    pub nodename: [c_char; MMP_NAME_SIZE],
    /// The device name the last writer recorded, NUL-terminated.
    pub devname: [c_char; MMP_NAME_SIZE],
    /// Heartbeat interval, milliseconds.
    pub interval_ms: u64,
    /// An owner self-fences after this long without a successful heartbeat, milliseconds.
    pub fail_window_ms: u64,
    /// How long an activity test of this block watches it, milliseconds.
    pub watch_ms: u64,
    /// How long an acquire waits after writing its claim, milliseconds.
    pub claim_wait_ms: u64,
    /// The last transition the block records (native); `MMP_REASON_NONE` for ext4.
    pub reason: mmp_reason,
    /// Native: wall time the last owner claimed the device (the last transition to ACTIVE,
    /// kept when it is released; 0 in a freshly formatted area), Unix milliseconds; ext4: 0.
    pub since_ms: u64,
    /// Native: intervals without a successful heartbeat before the owner self-fences, as
    /// recorded; ext4: 0.
    pub fail_intervals: u32,
    /// Native: the delay the owner advertises (added to its waits for slow storage),
    /// microseconds, as recorded; ext4: 0.
    pub delay_us: u32,
    /// ext4: `mmp_check_interval` as the last writer recorded it, seconds; native: 0.
    pub check_interval_s: u32,
    /// ext4: the superblock's `s_mmp_update_interval` as stored (0 is read as 5), seconds;
    /// native: 0.
    pub update_interval_s: u32,
    /// Byte offset of the MMP record on the device (ext4: the MMP block's number times the
    /// block size; native: 0 for a whole device).
    pub offset_bytes: u64,
    /// The longest an acquire of this device may wait now, not counting I/O: the claim wait
    /// if the block is clean, else the activity test and the claim wait, milliseconds.
    pub acquire_wait_ms: u64,
    /// The longest an acquire may wait after the owner crashed (the block not clean),
    /// milliseconds: what a start timeout of a cluster resource must exceed.
    pub takeover_wait_ms: u64,
    /// Whether no holder ever wrote the block: a native area as `mmp_native_format` wrote
    /// it, or a clean ext4 MMP block with neither node nor device name (as mke2fs/tune2fs
    /// wrote it).
    pub never_held: bool,
}

/// Where an acquire started with `mmp_device_acquire_start` is
/// (`mmp_device_acquire_progress`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct mmp_progress {
    /// `MMP_PHASE_READING` until the first read completed, then `MMP_PHASE_WATCHING` (the
    /// activity test) and `MMP_PHASE_CLAIMING` (the verify wait after the claim);
    /// `MMP_PHASE_HELD` once acquired, `MMP_PHASE_DONE` once it ended otherwise.
    pub phase: mmp_phase,
    /// Milliseconds left in the current wait, by the clock at the time of the call (0 when
    /// not waiting).
    pub remaining_ms: u64,
    /// The current wait's total length, milliseconds (0 when not waiting).
    pub total_ms: u64,
}

/// Details of a loss, valid only during the loss callback.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmp_loss_info {
    /// Why.
    pub reason: mmp_loss,
    /// `MMP_LOSS_FENCED`: time since the last successful heartbeat write, milliseconds.
    pub since_last_write_ms: u64,
    /// `MMP_LOSS_RELEASE_READ_FAILED`: the errno of the failed read (0 if none).
    pub os_error: i32,
    /// `MMP_LOSS_FOREIGN_WRITE`: whether `found` describes the foreign block (false when
    /// it did not parse).
    pub found_valid: bool,
    /// `MMP_LOSS_FOREIGN_WRITE`: the block found, when `found_valid`.
    pub found: mmp_status,
}

/// Why the last failed call on a handle failed (`mmp_device_last_error`): the result, the
/// operating system's error number behind it, and for a refusal the owner whose block
/// caused it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct mmp_error_info {
    /// The result the call returned (`MMP_RESULT_OK` if no call on the handle failed yet).
    pub result: u32,
    /// The `errno` behind it (for `MMP_RESULT_IO` and the other results that come from a
    /// system call), else 0.
    pub os_error: i32,
    /// Whether `owner` describes the block that caused a refusal (`MMP_RESULT_IN_USE`,
    /// `FOREIGN`, `FSCK`, `UNKNOWN_SEQ`, `MAINTENANCE`, `LOST_RACE` when the block parsed).
    pub owner_valid: bool,
    /// The block found, when `owner_valid`: the owner's node name, hostid, state.
    pub owner: mmp_status,
    /// When `owner_valid`: how long before the failure the owner last wrote the block, by
    /// the wall clocks of both hosts, milliseconds (0 if its clock is ahead; ext4 records
    /// whole seconds).
    pub owner_age_ms: u64,
}

/// Progress of a check or acquire: `phase`, milliseconds left in the current wait, and
/// that wait's total length. Called on the thread that called `mmp_device_check` or
/// `mmp_device_acquire`, while that call runs.
pub type mmp_progress_cb = Option<
    unsafe extern "C" fn(userdata: *mut c_void, phase: mmp_phase, remaining_ms: u64, total_ms: u64),
>;

/// A held device was lost. Called once per loss on the handle's event thread (see
/// `docs/c-api.md`); `info` is valid only during the call.
pub type mmp_loss_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, info: *const mmp_loss_info)>;

fn millis(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn name_array(bytes: &[u8]) -> [c_char; MMP_NAME_SIZE] {
    let mut out = [0 as c_char; MMP_NAME_SIZE];
    let name = trim_name(bytes);
    for (o, b) in out.iter_mut().zip(name.iter().take(MMP_NAME_SIZE - 1)) {
        *o = c_char::from_ne_bytes([*b]);
    }
    out
}

impl mmp_status {
    /// The status of a parsed record of a device with `layout` and `format`.
    #[must_use]
    pub fn from_snapshot(format: Format, layout: &Layout, snap: &Snapshot, owned: bool) -> Self {
        let t = Timing::for_snapshot(layout, snap);
        let nameless = snap.nodename().is_empty() && snap.devname().is_empty();
        let (reason, since_ms, fail_intervals, delay_us, check_interval_s, never_held) = match snap
        {
            Snapshot::Native(r) => (
                r.reason.into(),
                r.since_ms,
                u32::from(r.fail_intervals),
                r.delay_us,
                0,
                r.reason == native::Reason::Formatted && r.hostid == 0 && nameless,
            ),
            Snapshot::Ext4(b) => (
                mmp_reason::None,
                0,
                0,
                0,
                u32::from(b.check_interval),
                snap.class() == Class::Clean && nameless,
            ),
        };
        let update_interval_s = match layout {
            Layout::Ext4 {
                update_interval_s, ..
            } => u32::from(*update_interval_s),
            Layout::Native { .. } => 0,
        };
        mmp_status {
            format: format.into(),
            state: snap.class().into(),
            seq: snap.seq(),
            time_ms: snap.time_ms(),
            hostid: snap.hostid().unwrap_or(0),
            has_hostid: snap.hostid().is_some(),
            owned,
            nodename: name_array(snap.nodename()),
            devname: name_array(snap.devname()),
            interval_ms: millis(t.interval),
            fail_window_ms: millis(t.fail_window),
            watch_ms: millis(t.watch),
            claim_wait_ms: millis(t.claim_wait),
            reason,
            since_ms,
            fail_intervals,
            delay_us,
            check_interval_s,
            update_interval_s,
            offset_bytes: layout.offset_bytes(),
            acquire_wait_ms: millis(t.max_acquire_wait(snap.class() == Class::Clean)),
            takeover_wait_ms: millis(t.max_acquire_wait(false)),
            never_held,
        }
    }

    /// The node name as bytes, up to the NUL.
    #[must_use]
    pub fn nodename_bytes(&self) -> Vec<u8> {
        self.nodename
            .iter()
            .map(|c| c.to_ne_bytes()[0])
            .take_while(|&b| b != 0)
            .collect()
    }
}

impl mmp_loss_info {
    /// The info for a loss on a device with `layout` and `format`.
    #[must_use]
    pub fn from_loss(format: Format, layout: &Layout, loss: &Loss) -> Self {
        let empty = |found: Option<&Snapshot>| match found {
            Some(s) => (true, mmp_status::from_snapshot(format, layout, s, false)),
            None => (false, zeroed_status(format)),
        };
        match loss {
            Loss::ForeignWrite(found) => {
                let (found_valid, found) = empty(found.as_ref());
                mmp_loss_info {
                    reason: mmp_loss::ForeignWrite,
                    since_last_write_ms: 0,
                    os_error: 0,
                    found_valid,
                    found,
                }
            }
            Loss::Fenced {
                since_last_write, ..
            } => mmp_loss_info {
                reason: mmp_loss::Fenced,
                since_last_write_ms: millis(*since_last_write),
                os_error: 0,
                found_valid: false,
                found: zeroed_status(format),
            },
            Loss::Preempted(e) => mmp_loss_info {
                reason: mmp_loss::Preempted,
                since_last_write_ms: 0,
                os_error: e.errno().unwrap_or(0),
                found_valid: false,
                found: zeroed_status(format),
            },
            Loss::ReleaseReadFailed(e) => mmp_loss_info {
                reason: mmp_loss::ReleaseReadFailed,
                since_last_write_ms: 0,
                os_error: e.errno().unwrap_or(0),
                found_valid: false,
                found: zeroed_status(format),
            },
        }
    }

    /// The info when the heartbeat thread ended without reporting an outcome.
    #[must_use]
    pub fn stopped(format: Format) -> Self {
        mmp_loss_info {
            reason: mmp_loss::HeartbeatStopped,
            since_last_write_ms: 0,
            os_error: 0,
            found_valid: false,
            found: zeroed_status(format),
        }
    }
}

/// A status with every field zero (the name arrays empty).
pub(crate) fn zeroed_status(format: Format) -> mmp_status {
    mmp_status {
        format: format.into(),
        state: mmp_state::Clean,
        seq: 0,
        time_ms: 0,
        hostid: 0,
        has_hostid: false,
        owned: false,
        nodename: [0; MMP_NAME_SIZE],
        devname: [0; MMP_NAME_SIZE],
        interval_ms: 0,
        fail_window_ms: 0,
        watch_ms: 0,
        claim_wait_ms: 0,
        reason: mmp_reason::None,
        since_ms: 0,
        fail_intervals: 0,
        delay_us: 0,
        check_interval_s: 0,
        update_interval_s: 0,
        offset_bytes: 0,
        acquire_wait_ms: 0,
        takeover_wait_ms: 0,
        never_held: false,
    }
}
