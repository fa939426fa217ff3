//! `mmp_result`: what every fallible C call returns.
//!
//! Values are explicit, grouped by range, and never reused: a retired value stays behind as a
//! "reserved" comment. `0` is success; `1..=99` are refusals (the protocol or a safety check
//! said no, nothing is broken); `100..=199` are errors (I/O, bad arguments, misuse of the
//! API); `200..` means this host lost a device it held.

use mmp_core::machine::{Outcome, Refusal};
use mmp_linux::blockdev::DeviceError;
use mmp_linux::hostid::HostidError;
use mmp_linux::target::TargetError;
use mmp_linux::tune::TuneError;
use std::cell::Cell;

/// The result of a libmmp call.
///
/// Functions return it as a plain `uint32_t` (`mmp_result` in C); `mmp_result_str`
/// describes any value, known or not.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum mmp_result {
    /// Success.
    Ok = 0,

    // 1..=99: refusals.
    /// Refused: another host is active on the device (the block changed during the
    /// activity test).
    InUse = 1,
    /// Refused: the device was last held by another host and not released; acquire with
    /// `force` to take it (the full activity test still runs).
    Foreign = 2,
    /// Refused: ext4 `SEQ_FSCK`: e2fsck or another e2fsprogs tool holds the file system (or
    /// crashed holding it).
    Fsck = 3,
    /// Refused: an ext4 sequence number above `SEQ_MAX` (an unknown operation).
    UnknownSeq = 4,
    /// Refused: the native area is reserved for maintenance.
    Maintenance = 5,
    /// Refused: the MMP block does not parse (bad magic, bad checksum, torn write); it
    /// cannot be trusted.
    Corrupt = 6,
    /// Refused: this host's hostid is 0 (unset) and the device is a native area; set one
    /// (`mmp hostid --generate`).
    NoHostid = 7,
    /// Refused: another host claimed the device at the same time and won.
    LostRace = 8,
    /// The operation was cancelled with `mmp_device_cancel`.
    Aborted = 9,
    /// Refused: the file system or device is mounted or held open exclusively on this host.
    Mounted = 10,
    /// Refused: MMP is already enabled on this file system.
    AlreadyEnabled = 11,
    /// Refused: the file system needs e2fsck first (journal recovery pending, errors
    /// recorded, or inconsistent metadata).
    NeedsFsck = 12,
    /// Refused: formatting would overwrite a known signature or a native area that is not
    /// clean; pass `force` to overwrite.
    WouldOverwrite = 13,
    /// Refused: this host or its I/O was too slow: the claim was verified only after the
    /// lease it earned had run out (or a clear's write, or a superblock change's, could not
    /// go out within its deadline). Nothing more was written; retry when the storage
    /// responds normally.
    TooLate = 14,

    // 100..=199: errors.
    /// A read, write or system call failed.
    Io = 100,
    /// The path does not exist.
    NotFound = 101,
    /// The operating system denied access (run as root, or check permissions).
    PermissionDenied = 102,
    /// The path is neither a block device nor a regular file.
    NotADevice = 103,
    /// The device holds neither an ext4/ldiskfs file system with MMP nor a native mmp area
    /// (or is too small to hold one).
    NotMmp = 104,
    /// The device uses a feature or geometry libmmp does not handle.
    Unsupported = 105,
    /// An argument is out of range, or an enum value or flag is unknown.
    InvalidParameter = 106,
    /// A required pointer argument is NULL.
    NullParameter = 107,
    /// The handle was opened with `MMP_OPEN_READ_ONLY`; this call writes.
    ReadOnly = 108,
    /// The handle does not hold the device (acquire it first).
    NotHeld = 109,
    /// The handle already holds the device (release it first).
    AlreadyHeld = 110,
    /// The handle is in use by another call: from another thread, or from inside a
    /// callback of a call on the same handle; or an acquire started with
    /// `mmp_device_acquire_start` has not been finished (`mmp_device_acquire_finish`).
    Busy = 111,
    /// Called from the handle's own loss callback, where this call would wait for itself.
    InCallback = 112,
    /// A previous call on this handle panicked; the handle only accepts `mmp_device_free`.
    /// It no longer heartbeats and must be assumed not to own the device.
    Poisoned = 113,
    /// libmmp panicked (a bug); the handle, if any, is now poisoned.
    Panic = 114,
    /// The hostid in `MMP_HOSTID` is not 1 to 8 hexadecimal digits.
    HostidInvalid = 115,
    /// No free block for the ext4 MMP block.
    NoSpace = 116,
    /// The path is not an ext2/3/4 file system.
    NotExt4 = 117,
    /// Called in a `fork()` child on a handle opened before the fork: the child owns
    /// nothing the parent holds (the parent still does). `mmp_device_status` still reads
    /// the block (with `owned` false) and `mmp_device_free` frees the child's copy without
    /// writing; handles opened in the child work normally.
    Forked = 118,
    /// `mmp_watchdog_disarm` with no watchdog armed.
    NotArmed = 119,
    /// `mmp_watchdog_arm` while a watchdog is armed already.
    AlreadyArmed = 120,
    /// `mmp_fence_*`: the device does not take SCSI persistent reservations (a file, loop,
    /// virtio-blk or NVMe device, or a SCSI target without them).
    NotScsi = 121,
    /// `mmp_fence_*`: a persistent-reservation step failed: another software's key holds
    /// the device, another host preempted ours while acquiring, the reservation kept
    /// changing, or the target refused a command (see `mmp_last_os_error` for an errno).
    FenceFailed = 122,
    /// `mmp_device_acquire_finish`: the acquire started with `mmp_device_acquire_start` is
    /// still running; wait for `MMP_EVENT_ACQUIRE_DONE` on the event descriptor. Not
    /// recorded by `mmp_device_last_error`.
    Pending = 123,
    /// `mmp_device_acquire_finish`, `mmp_device_acquire_progress`: no acquire was started
    /// with `mmp_device_acquire_start` on this handle, or its result was taken already.
    NotStarted = 124,

    // 200..: ownership lost.
    /// This host lost a device it held: another host wrote the block, no heartbeat
    /// succeeded within the fail window (self-fenced), or the release could not verify the
    /// block. Stop using the device at once.
    Lost = 200,
}

/// Every value, in numeric order (for tests and for mapping raw integers).
pub const ALL: &[mmp_result] = &[
    mmp_result::Ok,
    mmp_result::InUse,
    mmp_result::Foreign,
    mmp_result::Fsck,
    mmp_result::UnknownSeq,
    mmp_result::Maintenance,
    mmp_result::Corrupt,
    mmp_result::NoHostid,
    mmp_result::LostRace,
    mmp_result::Aborted,
    mmp_result::Mounted,
    mmp_result::AlreadyEnabled,
    mmp_result::NeedsFsck,
    mmp_result::WouldOverwrite,
    mmp_result::TooLate,
    mmp_result::Io,
    mmp_result::NotFound,
    mmp_result::PermissionDenied,
    mmp_result::NotADevice,
    mmp_result::NotMmp,
    mmp_result::Unsupported,
    mmp_result::InvalidParameter,
    mmp_result::NullParameter,
    mmp_result::ReadOnly,
    mmp_result::NotHeld,
    mmp_result::AlreadyHeld,
    mmp_result::Busy,
    mmp_result::InCallback,
    mmp_result::Poisoned,
    mmp_result::Panic,
    mmp_result::HostidInvalid,
    mmp_result::NoSpace,
    mmp_result::NotExt4,
    mmp_result::Forked,
    mmp_result::NotArmed,
    mmp_result::AlreadyArmed,
    mmp_result::NotScsi,
    mmp_result::FenceFailed,
    mmp_result::Pending,
    mmp_result::NotStarted,
    mmp_result::Lost,
];

impl mmp_result {
    /// The value for a raw integer; unknown integers map to
    /// [`mmp_result::InvalidParameter`], so C can never hand Rust an invalid enum value.
    #[must_use]
    pub fn from_raw(raw: u32) -> mmp_result {
        ALL.iter()
            .copied()
            .find(|r| *r as u32 == raw)
            .unwrap_or(mmp_result::InvalidParameter)
    }

    /// A static, NUL-terminated description.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            mmp_result::Ok => "success\0",
            mmp_result::InUse => "refused: another host is active on the device\0",
            mmp_result::Foreign => {
                "refused: the device was last held by another host and not released; force is needed\0"
            }
            mmp_result::Fsck => "refused: e2fsck or another e2fsprogs tool holds the file system\0",
            mmp_result::UnknownSeq => "refused: the MMP block has an unknown sequence number\0",
            mmp_result::Maintenance => "refused: the device is reserved for maintenance\0",
            mmp_result::Corrupt => "refused: the MMP block is corrupt and cannot be trusted\0",
            mmp_result::NoHostid => "refused: this host's hostid is not set (0)\0",
            mmp_result::LostRace => "refused: another host claimed the device at the same time\0",
            mmp_result::Aborted => "the operation was cancelled\0",
            mmp_result::Mounted => "refused: the device is mounted or in use on this host\0",
            mmp_result::AlreadyEnabled => "refused: MMP is already enabled\0",
            mmp_result::NeedsFsck => "refused: the file system needs e2fsck first\0",
            mmp_result::WouldOverwrite => {
                "refused: the device carries data or an active MMP area; force is needed\0"
            }
            mmp_result::TooLate => {
                "refused: the I/O or this host was too slow to take the device safely\0"
            }
            mmp_result::Io => "I/O error\0",
            mmp_result::NotFound => "no such file or device\0",
            mmp_result::PermissionDenied => "permission denied\0",
            mmp_result::NotADevice => "not a block device or regular file\0",
            mmp_result::NotMmp => {
                "no MMP on this device (neither ext4 with MMP nor a native area)\0"
            }
            mmp_result::Unsupported => "unsupported feature or geometry\0",
            mmp_result::InvalidParameter => "invalid parameter\0",
            mmp_result::NullParameter => "a required pointer is NULL\0",
            mmp_result::ReadOnly => "the handle was opened read-only\0",
            mmp_result::NotHeld => "the handle does not hold the device\0",
            mmp_result::AlreadyHeld => "the handle already holds the device\0",
            mmp_result::Busy => "the handle is in use by another call\0",
            mmp_result::InCallback => "not allowed from the handle's own loss callback\0",
            mmp_result::Poisoned => {
                "the handle is poisoned by an earlier panic and no longer owns the device\0"
            }
            mmp_result::Panic => "internal error (panic) in libmmp\0",
            mmp_result::HostidInvalid => "MMP_HOSTID is not a valid hostid\0",
            mmp_result::NoSpace => "no free block for the MMP block\0",
            mmp_result::NotExt4 => "not an ext2/3/4 file system\0",
            mmp_result::Forked => {
                "called in a forked child on a handle of the parent process; the child owns nothing\0"
            }
            mmp_result::NotArmed => "no watchdog is armed\0",
            mmp_result::AlreadyArmed => "a watchdog is armed already\0",
            mmp_result::NotScsi => "the device does not support SCSI persistent reservations\0",
            mmp_result::FenceFailed => "a SCSI persistent reservation step failed\0",
            mmp_result::Pending => "the started acquire has not finished yet\0",
            mmp_result::NotStarted => "no acquire was started on this handle\0",
            mmp_result::Lost => "ownership of the device was lost\0",
        }
    }

    /// Whether this is a refusal (1..=99).
    #[must_use]
    pub fn is_refusal(raw: u32) -> bool {
        (1..100).contains(&raw)
    }

    /// Whether this is an error (100..=199).
    #[must_use]
    pub fn is_error(raw: u32) -> bool {
        (100..200).contains(&raw)
    }

    /// Whether this says a held device was lost (200..).
    #[must_use]
    pub fn is_lost(raw: u32) -> bool {
        raw >= 200
    }
}

impl From<&Refusal> for mmp_result {
    fn from(r: &Refusal) -> Self {
        match r {
            Refusal::NoHostid => mmp_result::NoHostid,
            Refusal::Corrupt(_) => mmp_result::Corrupt,
            Refusal::Fsck(_) => mmp_result::Fsck,
            Refusal::UnknownSeq(_) => mmp_result::UnknownSeq,
            Refusal::Maintenance(_) => mmp_result::Maintenance,
            Refusal::Foreign(_) => mmp_result::Foreign,
            Refusal::Active(_) => mmp_result::InUse,
            Refusal::LostRace(_) => mmp_result::LostRace,
            Refusal::Io(e) => {
                note_errno(e.errno().unwrap_or(0));
                mmp_result::Io
            }
            Refusal::TooLate { .. } => mmp_result::TooLate,
        }
    }
}

/// The result for an operation that ended with `o`: the successful endings (safe, released,
/// cleared) are [`mmp_result::Ok`], every other ending its own code.
pub(crate) fn outcome_result(o: Option<Outcome>) -> mmp_result {
    match o {
        Some(Outcome::Safe { .. } | Outcome::Released | Outcome::Cleared) => mmp_result::Ok,
        Some(Outcome::Refused(r)) => mmp_result::from(&r),
        Some(Outcome::Lost(_)) => mmp_result::Lost,
        Some(Outcome::Aborted) => mmp_result::Aborted,
        // Held (an acquire that succeeded) is handled by the caller.
        None => mmp_result::Ok,
    }
}

thread_local! {
    /// The OS error number behind the last error of a call on this thread (0: none).
    static LAST_ERRNO: Cell<i32> = const { Cell::new(0) };
}

/// Records the errno behind the error the current call is about to return.
pub(crate) fn note_errno(errno: i32) {
    LAST_ERRNO.set(errno);
}

/// The errno recorded by the current (or last) call on this thread.
pub(crate) fn last_errno() -> i32 {
    LAST_ERRNO.get()
}

/// The result for an OS error (recorded for `mmp_last_os_error`).
pub(crate) fn errno_result(errno: Option<i32>) -> mmp_result {
    if let Some(e) = errno {
        note_errno(e);
    }
    match errno {
        Some(libc::ENOENT | libc::ENOTDIR) => mmp_result::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => mmp_result::PermissionDenied,
        Some(libc::EBUSY) => mmp_result::Mounted,
        _ => mmp_result::Io,
    }
}

impl From<&DeviceError> for mmp_result {
    fn from(e: &DeviceError) -> Self {
        match e {
            DeviceError::NotADevice { .. } => mmp_result::NotADevice,
            DeviceError::TooSmall { .. } => mmp_result::NotMmp,
            DeviceError::ReadOnly { .. } => mmp_result::ReadOnly,
            DeviceError::Misaligned { .. } => mmp_result::Unsupported,
            other => errno_result(other.raw_os_error()),
        }
    }
}

impl From<&TargetError> for mmp_result {
    fn from(e: &TargetError) -> Self {
        use mmp_core::format::ext4::SuperblockError;
        match e {
            TargetError::Device(d) => d.into(),
            TargetError::Superblock { error, .. } => match error {
                SuperblockError::MmpNotEnabled | SuperblockError::TooShort => mmp_result::NotMmp,
                SuperblockError::BadBlockSize(_) | SuperblockError::BadChecksumType(_) => {
                    mmp_result::Unsupported
                }
                SuperblockError::BadMagic(_)
                | SuperblockError::BadChecksum { .. }
                | SuperblockError::MmpBlockOutOfRange { .. } => mmp_result::Corrupt,
            },
            TargetError::BeyondDevice { .. } => mmp_result::Corrupt,
            TargetError::SectorTooLarge { .. } => mmp_result::Unsupported,
            TargetError::NotMmp { .. } | TargetError::TooSmall { .. } => mmp_result::NotMmp,
        }
    }
}

impl From<&TuneError> for mmp_result {
    fn from(e: &TuneError) -> Self {
        match e {
            TuneError::Mounted { .. } | TuneError::InUse { .. } => mmp_result::Mounted,
            TuneError::MountCheck(_) => mmp_result::Io,
            TuneError::NotExt4 { .. } => mmp_result::NotExt4,
            TuneError::AlreadyEnabled { .. } => mmp_result::AlreadyEnabled,
            TuneError::NotEnabled => mmp_result::NotMmp,
            TuneError::NeedsRecovery | TuneError::HasErrors | TuneError::Corrupt { .. } => {
                mmp_result::NeedsFsck
            }
            TuneError::Unsupported { .. } => mmp_result::Unsupported,
            TuneError::BadInterval(_) => mmp_result::InvalidParameter,
            TuneError::NoFreeBlock => mmp_result::NoSpace,
            TuneError::LeaseExpired {
                committed: false, ..
            } => mmp_result::TooLate,
            TuneError::LeaseExpired {
                committed: true, ..
            } => mmp_result::NeedsFsck,
            TuneError::Device(d) => d.into(),
        }
    }
}

impl From<&HostidError> for mmp_result {
    fn from(e: &HostidError) -> Self {
        match e {
            HostidError::Parse { .. } => mmp_result::HostidInvalid,
            HostidError::AlreadyExists { .. } => mmp_result::InvalidParameter,
            HostidError::Io { source, .. } => errno_result(source.raw_os_error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_grouped_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            let v = *r as u32;
            assert!(seen.insert(v), "{r:?} reuses {v}");
            assert_eq!(mmp_result::from_raw(v), *r);
            assert!(r.description().ends_with('\0'));
            assert_eq!(r.description().matches('\0').count(), 1);
        }
        assert!(ALL.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)));
        assert_eq!(mmp_result::from_raw(99_999), mmp_result::InvalidParameter);
        assert!(mmp_result::is_refusal(mmp_result::InUse as u32));
        assert!(mmp_result::is_error(mmp_result::Io as u32));
        assert!(!mmp_result::is_error(mmp_result::Lost as u32));
        assert!(mmp_result::is_lost(mmp_result::Lost as u32));
        assert!(!mmp_result::is_lost(mmp_result::Forked as u32));
    }
}
