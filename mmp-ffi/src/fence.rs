//! Storage fencing for C tools: the SCSI-3 persistent-reservation procedure that
//! `mmp hold --fence scsi-pr` runs (`mmp_linux::pr::Fence`, `docs/protocol.md`,
//! "Persistent reservations"), as three calls around a device's acquire and release:
//!
//! ```c
//! const char *luns[] = { "/dev/mapper/lun0-mmp", "/dev/mapper/lun0" };
//! mmp_fence_register(luns, 2, 0);        // before mmp_device_acquire
//! if (mmp_device_acquire(dev, ...) == MMP_RESULT_OK &&
//!     mmp_fence_acquire(luns, 2, 0) == MMP_RESULT_OK) {
//!     mmp_device_start_heartbeat(dev, ...);
//!     /* use the data */
//!     mmp_fence_release(luns, 2, 0);     // after the data is quiesced, before release
//!     mmp_device_release(dev);
//! } else {
//!     mmp_fence_release(luns, 2, 0);     // withdraw the registration
//! }
//! ```
//!
//! `mmp_fence_release` hands the devices over: the reservation stays with this host until
//! the next owner preempts it, so a host that was preempted earlier (a stale mount on a
//! node that was frozen past a takeover) cannot write in between. `mmp pr --release` gives
//! a device up for good.
//!
//! The calls keep no state: each opens the devices (`SG_IO`, root), runs its step on all
//! of them in order and closes them. A heartbeat refused with RESERVATION CONFLICT after
//! another host preempted this one is reported as the loss `MMP_LOSS_PREEMPTED`.
#![allow(unsafe_code)]

use core::ffi::c_char;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use mmp_linux::pr::{self, DeviceFenceError, FenceError, NotScsi, PrError};

use crate::boundary::{c_bytes, ffi_boundary};
use crate::result::{errno_result, mmp_result, note_errno};

#[derive(Clone, Copy)]
enum Step {
    Register,
    Acquire,
    Release,
}

/// The result for a fence failure (the errno, if any, goes to `mmp_last_os_error`).
fn fence_result(e: &DeviceFenceError) -> mmp_result {
    match e.error {
        FenceError::BadKey(_) => mmp_result::NoHostid,
        FenceError::Command { error, .. } => match error {
            PrError::NotScsi(NotScsi::NoSgIo(errno)) => {
                note_errno(errno);
                mmp_result::NotScsi
            }
            PrError::NotScsi(_) | PrError::NotSupported { .. } => mmp_result::NotScsi,
            PrError::Io(errno) => errno_result(Some(errno)),
            _ => mmp_result::FenceFailed,
        },
        FenceError::ForeignKey(_)
        | FenceError::Preempted { .. }
        | FenceError::NotSettled { .. } => mmp_result::FenceFailed,
    }
}

/// The steps over `paths[0..n]` with the key of `hostid` (0: this host's, as
/// `mmp_hostid_get` resolves it).
///
/// # Safety
/// `paths` is NULL or points to `n` pointers, each NULL or a NUL-terminated string.
unsafe fn run(
    paths: *const *const c_char,
    n: usize,
    hostid: u32,
    step: Step,
) -> Result<(), mmp_result> {
    if paths.is_null() {
        return Err(mmp_result::NullParameter);
    }
    if n == 0 || n > 64 {
        return Err(mmp_result::InvalidParameter);
    }
    // SAFETY: the caller promises `n` readable pointers at `paths`.
    let ptrs = unsafe { std::slice::from_raw_parts(paths, n) };
    let mut named = Vec::with_capacity(n);
    for &p in ptrs {
        // SAFETY: each is NULL or a NUL-terminated string, as promised by the caller.
        let bytes = unsafe { c_bytes(p) }?;
        if bytes.is_empty() {
            return Err(mmp_result::InvalidParameter);
        }
        let path = Path::new(OsStr::from_bytes(bytes));
        named.push((path.display().to_string(), path));
    }
    let hostid = if hostid == 0 {
        crate::device::hostid_get()?
    } else {
        hostid
    };
    // The MMP device first, then the data devices it protects.
    let (mmp, data) = named.split_at(1);
    let fence = pr::Fence::open(mmp, data, hostid).map_err(|e| fence_result(&e))?;
    match step {
        Step::Register => fence.prepare().map_err(|e| fence_result(&e)),
        Step::Acquire => fence.acquire().map(|_| ()).map_err(|e| fence_result(&e)),
        Step::Release => match fence.hand_over().1.first() {
            None => Ok(()),
            Some(e) => Err(fence_result(e)),
        },
    }
}

/// Registers this host's reservation key (`0x6d6d7000` and the hostid; `hostid` 0 means
/// this host's) on the MMP device `paths[0]`; `paths[1..n]` are the data devices it
/// protects, checked here but registered only by `mmp_fence_acquire` (a registered host
/// may write under the reservation, and a host that has not acquired must not: it may
/// still have a stale mount of the data). Call it before `mmp_device_acquire`: under a
/// crashed owner's reservation only a registered host can write its claim. Idempotent.
///
/// # Errors
/// `MMP_RESULT_NOT_SCSI` (checked on every device before anything is registered),
/// `MMP_RESULT_NO_HOSTID`, `MMP_RESULT_NOT_FOUND`, `MMP_RESULT_PERMISSION_DENIED` (needs
/// root: `CAP_SYS_RAWIO`), `MMP_RESULT_IO`, `MMP_RESULT_FENCE_FAILED`,
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_INVALID_PARAMETER` (`n` 0 or over 64, an empty
/// path).
///
/// # Safety
/// `paths` is NULL or points to `n` pointers, each NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_fence_register(
    paths: *const *const c_char,
    n: usize,
    hostid: u32,
) -> mmp_result {
    // SAFETY: passed on from the caller.
    ffi_boundary!({ unsafe { run(paths, n, hostid, Step::Register) } })
}

/// Registers our key on each device and takes a Write Exclusive – Registrants Only
/// reservation on it, preempting the previous owner's key and removing every other
/// registration. Call it only after
/// `mmp_device_acquire` returned `MMP_RESULT_OK` (the activity test proved the previous
/// owner gone), and before the data is used. From then on the storage refuses every
/// write of any other host.
///
/// # Errors
/// As `mmp_fence_register`; `MMP_RESULT_FENCE_FAILED` when a key of other software holds a
/// device (never preempted), another host preempted ours meanwhile, or the reservation
/// kept changing. Devices before the failing one may hold our reservation: call
/// `mmp_fence_release` (which keeps it for the next owner to preempt).
///
/// # Safety
/// As `mmp_fence_register`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_fence_acquire(
    paths: *const *const c_char,
    n: usize,
    hostid: u32,
) -> mmp_result {
    // SAFETY: passed on from the caller.
    ffi_boundary!({ unsafe { run(paths, n, hostid, Step::Acquire) } })
}

/// Hands the devices over (every device is tried; the first failure is returned): where
/// this host holds the reservation, it and our registration stay until the next owner
/// preempts them after its MMP acquire, as after a crash; elsewhere our registration is
/// removed. Keeping the reservation means no host that was preempted earlier (a stale
/// mount on a node frozen past a takeover) can write between this release and the next
/// owner's acquire. Call it after the data is quiesced and before `mmp_device_release`
/// writes CLEAN, or after an acquire that did not succeed. Not needed after a loss.
/// Idempotent; harmless when another host preempted us. `mmp pr --release` gives a device
/// up for good.
///
/// # Errors
/// As `mmp_fence_register`.
///
/// # Safety
/// As `mmp_fence_register`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_fence_release(
    paths: *const *const c_char,
    n: usize,
    hostid: u32,
) -> mmp_result {
    // SAFETY: passed on from the caller.
    ffi_boundary!({ unsafe { run(paths, n, hostid, Step::Release) } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    #[test]
    fn bad_arguments_and_devices_without_reservations() {
        let dir = std::env::temp_dir().join(format!("mmp-fence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("img");
        std::fs::write(&file, [0u8; 4096]).unwrap();
        let f = CString::new(file.to_str().unwrap()).unwrap();
        let null = CString::new("/dev/null").unwrap();
        let missing = CString::new("/nonexistent/mmp-fence").unwrap();
        let one = [f.as_ptr()];
        // SAFETY: valid arrays of valid C strings, or NULL.
        unsafe {
            assert_eq!(
                mmp_fence_register(std::ptr::null(), 1, 7),
                mmp_result::NullParameter
            );
            assert_eq!(
                mmp_fence_register(one.as_ptr(), 0, 7),
                mmp_result::InvalidParameter
            );
            assert_eq!(mmp_fence_register(one.as_ptr(), 1, 7), mmp_result::NotScsi);
            assert_eq!(mmp_fence_acquire(one.as_ptr(), 1, 7), mmp_result::NotScsi);
            assert_eq!(mmp_fence_release(one.as_ptr(), 1, 7), mmp_result::NotScsi);
            let dev = [null.as_ptr()];
            assert_eq!(mmp_fence_register(dev.as_ptr(), 1, 7), mmp_result::NotScsi);
            let gone = [missing.as_ptr()];
            assert_eq!(
                mmp_fence_register(gone.as_ptr(), 1, 7),
                mmp_result::NotFound
            );
            let with_null = [f.as_ptr(), std::ptr::null()];
            assert_eq!(
                mmp_fence_register(with_null.as_ptr(), 2, 7),
                mmp_result::NullParameter
            );
        }
        assert!(
            std::fs::read(&file).unwrap().iter().all(|&b| b == 0),
            "nothing written"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
