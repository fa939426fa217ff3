//! The exported C functions. Each body sits inside `ffi_boundary!` (panics become
//! `MMP_RESULT_PANIC` and poison the handle) and reaches C's pointers only through
//! the private `boundary` module. Conventions: `docs/c-api.md`.
#![allow(unsafe_code)]

use crate::boundary::{
    self, Loss, Progress, c_bytes, check_out, ffi_boundary, handle, mmp_device, try_ref,
    with_handle, write_out,
};
use crate::device::{self, Handle, IdentityArg};
use crate::result::mmp_result;
use crate::types::{
    mmp_error_info, mmp_identity, mmp_loss_cb, mmp_loss_info, mmp_progress, mmp_progress_cb,
    mmp_self_fence, mmp_status,
};
use core::ffi::{c_char, c_void};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens a device (block device or image file) and detects its MMP format: an ext4/ldiskfs
/// file system with MMP enabled, or a native mmp area. Nothing is written.
///
/// `path` is a NUL-terminated byte string (any encoding). `id` gives this host's hostid and
/// node name; NULL resolves them as the `mmp` command does (hostid from `$MMP_HOSTID`, else
/// `/etc/hostid`; node name from `uname`). `flags` is 0 or a combination of
/// `MMP_OPEN_READ_ONLY` and `MMP_OPEN_REALTIME`.
///
/// On success `*out` receives a handle to free with `mmp_device_free`.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER` (`path` or `out` NULL), `MMP_RESULT_INVALID_PARAMETER`
/// (unknown flags, empty path or node name), `MMP_RESULT_NOT_FOUND`,
/// `MMP_RESULT_PERMISSION_DENIED`, `MMP_RESULT_NOT_A_DEVICE`, `MMP_RESULT_NOT_MMP`,
/// `MMP_RESULT_CORRUPT` (an inconsistent ext4 superblock), `MMP_RESULT_UNSUPPORTED`,
/// `MMP_RESULT_IO`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `id` is NULL or points to an `mmp_identity`
/// whose `nodename` is NULL or a NUL-terminated string; `out` is NULL or writable. All only
/// for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_open(
    path: *const c_char,
    id: *const mmp_identity,
    flags: u32,
    out: *mut *mut mmp_device,
) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { c_bytes(path) }?;
        let identity = if id.is_null() {
            None
        } else {
            // SAFETY: non-NULL, and the caller promises a valid `mmp_identity`.
            let id = unsafe { try_ref(id) }?;
            let nodename = if id.nodename.is_null() {
                None
            } else {
                // SAFETY: the caller promises a NUL-terminated string.
                Some(unsafe { c_bytes(id.nodename) }?.to_vec())
            };
            Some(IdentityArg {
                hostid: (!id.default_hostid).then_some(id.hostid),
                nodename,
            })
        };
        let handle = Handle::open(path, identity, flags)?;
        // SAFETY: `out` passed `check_out` and the caller promises it is writable.
        unsafe { write_out(out, boundary::into_raw(handle)) };
        Ok(())
    })
}

/// Frees a handle. NULL is allowed and does nothing.
///
/// A device still held is released first, as `mmp_device_release` would (errors are
/// ignored); a poisoned handle writes nothing. In a `fork()` child, freeing a handle
/// inherited from the parent frees the child's copy only: it writes nothing and does not
/// touch the parent's heartbeat.
///
/// # Safety
/// `dev` is NULL or a handle from `mmp_device_open` that has not been freed, and no other
/// call on it runs now or later (in particular not on another thread, and not from its
/// own callbacks).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_free(dev: *mut mmp_device) {
    ffi_boundary!(default = (), {
        // SAFETY: the caller promises `dev` came from `mmp_device_open` and is freed
        // exactly once with no other user.
        unsafe { boundary::free(dev) }
    });
}

/// Reads the device's MMP block once and describes it: never writes, never waits, and
/// never waits for (or delays) another call on the handle or the heartbeat, so any thread
/// may poll it at any time, also while an acquire or release runs.
///
/// `owned` follows the lease by the clock: it is true only while this handle holds the
/// device and its lease (renewed by every successful heartbeat) has not run out, whether
/// or not the heartbeat thread has noticed. In a `fork()` child, on a handle inherited from
/// the parent, the block is read as usual and `owned` is false.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_CORRUPT` (the block does not parse),
/// `MMP_RESULT_IO`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_status(
    dev: *const mmp_device,
    out: *mut mmp_status,
) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        // SAFETY: the caller promises `dev` is NULL or live.
        let status = unsafe { handle(dev) }?.status()?;
        // SAFETY: `out` passed `check_out` and is writable.
        unsafe { write_out(out, status) };
        Ok(())
    })
}

/// The activity test, read-only: watches the block as long as its owner's parameters
/// require and succeeds when the device is safe to take (clean, or not clean but silent
/// for the whole window). `*out_owner` (may be NULL) then describes the block as found.
///
/// `cb` (may be NULL) is called on this thread: once with `MMP_PHASE_READING` (0 ms) at
/// the start, then with `MMP_PHASE_WATCHING` and the time left in the wait.
/// `mmp_device_cancel` stops the wait (`MMP_RESULT_ABORTED`).
///
/// # Errors
/// `MMP_RESULT_IN_USE` (another host is active), `MMP_RESULT_FSCK`,
/// `MMP_RESULT_UNKNOWN_SEQ`, `MMP_RESULT_MAINTENANCE`, `MMP_RESULT_CORRUPT`,
/// `MMP_RESULT_IO`, `MMP_RESULT_ABORTED`, `MMP_RESULT_ALREADY_HELD` (this handle holds
/// it), `MMP_RESULT_LOST` (this handle's acquire lapsed, see `mmp_device_acquire`; the
/// handle is idle again), `MMP_RESULT_NULL_PARAMETER` (`dev` NULL), `MMP_RESULT_BUSY`,
/// `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`. `mmp_device_last_error` gives the owner
/// behind a refusal.
///
/// # Safety
/// `dev` is NULL or a live handle; `cb` is NULL or a function that may be called with
/// `userdata` on this thread during the call; `out_owner` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_check(
    dev: *mut mmp_device,
    cb: mmp_progress_cb,
    userdata: *mut c_void,
    out_owner: *mut mmp_status,
) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `cb` may be called with `userdata` during this call.
        let progress = unsafe { Progress::new(cb, userdata) };
        // SAFETY: the caller promises `dev` is NULL or live.
        let status = unsafe { with_handle(dev, |inner, h| inner.check(h, &progress)) }?;
        if !out_owner.is_null() {
            // SAFETY: non-NULL, and the caller promises it is writable.
            unsafe { write_out(out_owner, status) };
        }
        Ok(())
    })
}

/// Acquires the device: the full activity test, then a claim that is verified after a
/// wait. On success the handle holds the device; call `mmp_device_start_heartbeat` at once
/// (within the fail window, `mmp_status.fail_window_ms`), or the lease runs out.
///
/// `force` takes a device last held by another host and not released; the activity test
/// still runs, so a live owner is never taken. `cb` (may be NULL) is called on this thread:
/// once with `MMP_PHASE_READING` (0 ms) at the start, then with `MMP_PHASE_WATCHING` and
/// `MMP_PHASE_CLAIMING` and the time left in each wait (the other phases are never
/// reported). A callback that blocks delays the acquire: past the fail window during the
/// claim the acquire ends in `MMP_RESULT_LOST` or `MMP_RESULT_TOO_LATE`.
///
/// `mmp_device_cancel` stops the wait (`MMP_RESULT_ABORTED`). A cancel during the claim
/// restores the block found before it: the previous block is written back if a fresh
/// re-read an interval later still shows exactly the claim and the write can go out within
/// a short deadline (see docs/protocol.md); only if not (the claim was overwritten, or the
/// I/O is too slow) does the claim stay on the device, as a stale live block.
///
/// A lapsed hold: if `mmp_device_start_heartbeat` is not called within the fail window,
/// the lease runs out: `owned` becomes false, and the next call on the handle that finds it
/// (`mmp_device_start_heartbeat`, `mmp_device_release`, `mmp_device_check`,
/// `mmp_device_acquire`, `mmp_device_clear`) returns `MMP_RESULT_LOST` once and leaves the
/// handle idle (nothing is written; the claim stays on the device as a stale live block).
///
/// # Errors
/// The refusals `MMP_RESULT_IN_USE`, `MMP_RESULT_FOREIGN`, `MMP_RESULT_FSCK`,
/// `MMP_RESULT_UNKNOWN_SEQ`, `MMP_RESULT_MAINTENANCE`, `MMP_RESULT_CORRUPT`,
/// `MMP_RESULT_NO_HOSTID` (native format only), `MMP_RESULT_LOST_RACE`,
/// `MMP_RESULT_TOO_LATE` (the claim was verified only after the lease it earned had run
/// out: the I/O or this thread was too slow), `MMP_RESULT_ABORTED`; `MMP_RESULT_LOST`
/// (the claim was overwritten or its lease ran out while it was being verified, e.g. a
/// progress callback that blocked past the fail window; or a lapsed earlier hold, above);
/// and `MMP_RESULT_IO`, `MMP_RESULT_HOSTID_INVALID`, `MMP_RESULT_READ_ONLY`,
/// `MMP_RESULT_ALREADY_HELD`, `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_BUSY`,
/// `MMP_RESULT_FORKED` (a handle inherited through `fork()`), `MMP_RESULT_POISONED`.
/// `mmp_device_last_error` gives the errno and the owner behind a failure.
///
/// # Safety
/// `dev` is NULL or a live handle; `cb` is NULL or a function that may be called with
/// `userdata` on this thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_acquire(
    dev: *mut mmp_device,
    force: bool,
    cb: mmp_progress_cb,
    userdata: *mut c_void,
) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `cb` may be called with `userdata` during this call.
        let progress = unsafe { Progress::new(cb, userdata) };
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.acquire(h, force, &progress)) }
    })
}

/// Starts heartbeating the device this handle acquired, on the heartbeat thread every
/// handle of the process shares (`mmp-heartbeat`). Every beat re-reads the block first, so
/// a foreign write is noticed within one interval; then `cb` (may be NULL) is called once,
/// on the process's event thread (`mmp-events`), never on the heartbeat thread, and the
/// device must no longer be used. Without a successful beat for the fail window the
/// heartbeat self-fences (stops writing) and `cb` reports that too.
///
/// # Errors
/// `MMP_RESULT_NOT_HELD`, `MMP_RESULT_ALREADY_HELD` (already heartbeating),
/// `MMP_RESULT_LOST` (the lease ran out before this call; the handle no longer holds the
/// device), `MMP_RESULT_IO`, `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_BUSY`,
/// `MMP_RESULT_FORKED` (a handle inherited through `fork()`; a handle opened in the child
/// gets the child's own heartbeat thread), `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `cb` is NULL or a function that may be called with
/// `userdata` from another thread until `mmp_device_release` or `mmp_device_free`
/// returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_start_heartbeat(
    dev: *mut mmp_device,
    cb: mmp_loss_cb,
    userdata: *mut c_void,
) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `cb` may be called with `userdata` from the event
        // thread until the heartbeat ends.
        let loss = unsafe { Loss::new(cb, userdata) };
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.start_heartbeat(h, loss)) }
    })
}

/// Starts acquiring the device and returns at once: the same acquire as
/// `mmp_device_acquire` (activity test, claim, verification), run by the process's
/// heartbeat thread (`mmp-heartbeat`), which runs every started acquire concurrently with
/// the others and with the heartbeats, so one thread can acquire many devices at the same
/// time (`poll` on their event descriptors). Once held, the device heartbeats at once
/// (no `mmp_device_start_heartbeat`), and a loss is reported as for
/// `mmp_device_start_heartbeat`: `cb` (may be NULL) on the event thread, and
/// `MMP_EVENT_LOST`.
///
/// Progress and the end come through the event descriptor (`mmp_device_event_fd`):
/// `MMP_EVENT_PROGRESS` when the acquire enters a new phase or wait
/// (`mmp_device_acquire_progress` describes it), then `MMP_EVENT_ACQUIRE_DONE` once, when
/// it ended. Then `mmp_device_acquire_finish` returns its result.
///
/// Until `mmp_device_acquire_finish` has returned something other than
/// `MMP_RESULT_PENDING`, the operations check, acquire, acquire_start, start_heartbeat and
/// clear return `MMP_RESULT_BUSY`. `mmp_device_cancel` stops the acquire within 50 ms
/// (`mmp_device_acquire_finish` then returns `MMP_RESULT_ABORTED`; a claim written is
/// restored as for a cancelled `mmp_device_acquire`). `mmp_device_release` gives it up at
/// once: it waits for it to stop (aborted, or released if it had acquired already), and
/// `mmp_device_free` does the same.
///
/// # Errors
/// `MMP_RESULT_READ_ONLY`, `MMP_RESULT_HOSTID_INVALID` (native format only: a hostid
/// resolved from the environment that does not parse, as for `mmp_device_acquire`),
/// `MMP_RESULT_ALREADY_HELD`, `MMP_RESULT_LOST` (a lapsed earlier hold, see
/// `mmp_device_acquire`), `MMP_RESULT_BUSY` (an acquire started already, or a call on the
/// handle from its own callback), `MMP_RESULT_IO` (the device could not be reopened, or the
/// heartbeat thread could not start), `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_FORKED`,
/// `MMP_RESULT_POISONED`. The refusals (`MMP_RESULT_NO_HOSTID` for a hostid of 0 among
/// them) come from `mmp_device_acquire_finish`.
///
/// # Safety
/// `dev` is NULL or a live handle; `cb` is NULL or a function that may be called with
/// `userdata` from another thread until `mmp_device_release` or `mmp_device_free`
/// returns.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_acquire_start(
    dev: *mut mmp_device,
    force: bool,
    cb: mmp_loss_cb,
    userdata: *mut c_void,
) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `cb` may be called with `userdata` from the event
        // thread until the heartbeat ends.
        let loss = unsafe { Loss::new(cb, userdata) };
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.acquire_start(h, force, loss)) }
    })
}

/// The result of the acquire `mmp_device_acquire_start` started, once it ended
/// (`MMP_EVENT_ACQUIRE_DONE`); never waits for it. `MMP_RESULT_OK`: the handle holds the
/// device and it heartbeats (release it with `mmp_device_release`; a loss since the
/// acquire is reported through the event descriptor and the loss callback as usual). Any
/// other result but `MMP_RESULT_PENDING` ends the acquire: the handle is idle again, and
/// `mmp_device_last_error` gives the owner behind a refusal. A result is returned once;
/// then this call returns `MMP_RESULT_NOT_STARTED`.
///
/// # Errors
/// `MMP_RESULT_PENDING` (still running; not recorded as the handle's last error), the
/// refusals and errors of `mmp_device_acquire` (`MMP_RESULT_ABORTED` after
/// `mmp_device_cancel`, also when the cancel came just after the device was acquired:
/// it is released again), `MMP_RESULT_NOT_STARTED`, `MMP_RESULT_NULL_PARAMETER`,
/// `MMP_RESULT_BUSY`, `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_acquire_finish(dev: *mut mmp_device) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.acquire_finish(h)) }
    })
}

/// Where the acquire `mmp_device_acquire_start` started is: its phase and the time left in
/// its current wait, counted down by the clock. Changes nothing, and never waits for
/// another call on the handle.
///
/// # Errors
/// `MMP_RESULT_NOT_STARTED` (no acquire started, or its result was taken),
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_acquire_progress(
    dev: *const mmp_device,
    out: *mut mmp_progress,
) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        // SAFETY: the caller promises `dev` is NULL or live.
        let p = unsafe { handle(dev) }?.acquire_progress()?;
        // SAFETY: `out` passed `check_out` and is writable.
        unsafe { write_out(out, p) };
        Ok(())
    })
}

/// Releases the device: the block is re-read and CLEAN is written only if it still holds
/// what this host last wrote. Stops the heartbeat (waiting for its threads) if it runs.
/// The handle can acquire again afterwards. If another call on the handle runs (on another
/// thread), the release waits for it to finish, then runs; `mmp_device_status` never
/// delays it.
///
/// On an acquire started with `mmp_device_acquire_start` whose result was not taken yet,
/// the release gives it up and waits until it stopped: `MMP_RESULT_OK` if it had held the
/// device (released now), `MMP_RESULT_ABORTED` if it was stopped first (a claim written is
/// restored as for a cancel), else the refusal it ended with.
///
/// # Errors
/// `MMP_RESULT_LOST` (ownership was lost before or during the release, or the hold had
/// lapsed; nothing was written), `MMP_RESULT_NOT_HELD`, `MMP_RESULT_IN_CALLBACK` (called
/// from this handle's loss callback), `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_BUSY` (from
/// a progress callback of a call on the same handle, or from a loss callback while another
/// call runs), `MMP_RESULT_FORKED` (a handle inherited through `fork()`: the child owns
/// nothing and writes nothing; the parent still holds the device), `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_release(dev: *mut mmp_device) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.release_call(h)) }
    })
}

/// The operator's forced reset to CLEAN (like `tune2fs -f -E clear_mmp`): no activity
/// test, so only for when no other host uses the device. Rewrites a corrupt ext4 MMP block;
/// a native record that does not parse has lost its parameters and is refused
/// (`MMP_RESULT_CORRUPT`): reformat it with `mmp_native_format` and `force`.
///
/// # Errors
/// `MMP_RESULT_CORRUPT`, `MMP_RESULT_READ_ONLY`, `MMP_RESULT_ALREADY_HELD` (release
/// instead), `MMP_RESULT_LOST` (this handle's acquire lapsed, see `mmp_device_acquire`; the
/// handle is idle again), `MMP_RESULT_ABORTED` (`mmp_device_cancel`), `MMP_RESULT_IO`,
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_BUSY`, `MMP_RESULT_FORKED`,
/// `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_clear(dev: *mut mmp_device) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { with_handle(dev, |inner, h| inner.clear(h)) }
    })
}

/// Cancels the check, acquire or clear running on this handle: it returns
/// `MMP_RESULT_ABORTED` at its next wake-up (within 50 ms). An acquire started with
/// `mmp_device_acquire_start` is stopped the same way (within 50 ms, then
/// `MMP_EVENT_ACQUIRE_DONE`; `mmp_device_acquire_finish` returns `MMP_RESULT_ABORTED`). It applies only to the call in
/// flight: when none runs (before it starts, or while the device is held), it does nothing
/// and the next call is not affected. Lock-free: may be called from any thread and from a
/// signal handler.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_cancel(dev: *mut mmp_device) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe { handle(dev) }?.cancel()
    })
}

/// Reads a path argument.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string valid for `'a`.
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a Path, mmp_result> {
    // SAFETY: passed on from the caller.
    let bytes = unsafe { c_bytes(path) }?;
    if bytes.is_empty() {
        return Err(mmp_result::InvalidParameter);
    }
    Ok(Path::new(OsStr::from_bytes(bytes)))
}

/// Enables MMP on an unmounted ext4/ldiskfs file system (like `tune2fs -O mmp -E
/// mmp_update_interval=N`), with an update interval of `interval_s` seconds (1..=300).
///
/// # Errors
/// `MMP_RESULT_INVALID_PARAMETER`, `MMP_RESULT_NOT_EXT4`, `MMP_RESULT_ALREADY_ENABLED`,
/// `MMP_RESULT_MOUNTED`, `MMP_RESULT_NEEDS_FSCK`, `MMP_RESULT_UNSUPPORTED`,
/// `MMP_RESULT_NO_SPACE`, `MMP_RESULT_NOT_FOUND`, `MMP_RESULT_IO`,
/// `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_ext4_enable(path: *const c_char, interval_s: u32) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { path_arg(path) }?;
        device::ext4_enable(path, interval_s)
    })
}

/// Disables MMP on an unmounted ext4/ldiskfs file system. Unless `force`, first proves with
/// the acquire protocol that no other host uses it (this blocks for the activity test, 11 s
/// or more). The hostid is resolved as for `mmp_device_open` with a NULL identity.
///
/// # Errors
/// The refusals of `mmp_device_acquire`, `MMP_RESULT_NOT_MMP` (MMP is off),
/// `MMP_RESULT_MOUNTED`, `MMP_RESULT_NEEDS_FSCK`, `MMP_RESULT_UNSUPPORTED`,
/// `MMP_RESULT_NOT_FOUND`, `MMP_RESULT_IO`, `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_ext4_disable(path: *const c_char, force: bool) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { path_arg(path) }?;
        device::ext4_disable(path, force)
    })
}

/// Changes the MMP update interval of an unmounted ext4/ldiskfs file system to `secs`
/// (1..=300), after proving with the acquire protocol that no other host uses it (blocks
/// for the activity test).
///
/// # Errors
/// As `mmp_ext4_disable`, plus `MMP_RESULT_INVALID_PARAMETER`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_ext4_set_interval(path: *const c_char, secs: u32) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { path_arg(path) }?;
        device::ext4_set_interval(path, secs)
    })
}

/// Writes a native MMP area (4 KiB at the start of the device) with a heartbeat interval
/// of `interval_ms` (100..=300000) and `fail_intervals` (2..=1000) intervals without a
/// successful heartbeat before an owner self-fences. Without `force` it refuses to
/// overwrite a known signature or a native area that is not clean.
///
/// # Errors
/// `MMP_RESULT_INVALID_PARAMETER`, `MMP_RESULT_WOULD_OVERWRITE`, `MMP_RESULT_MOUNTED`,
/// `MMP_RESULT_NOT_MMP` (smaller than 4 KiB), `MMP_RESULT_NOT_FOUND`, `MMP_RESULT_IO`,
/// `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_native_format(
    path: *const c_char,
    interval_ms: u32,
    fail_intervals: u32,
    force: bool,
) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { path_arg(path) }?;
        device::native_format(path, interval_ms, fail_intervals, force)
    })
}

/// This host's hostid, resolved as the `mmp` command does: `$MMP_HOSTID`, else the first 4
/// bytes of `/etc/hostid`.
///
/// # Errors
/// `MMP_RESULT_NO_HOSTID` (unset or 0), `MMP_RESULT_HOSTID_INVALID`, `MMP_RESULT_IO`,
/// `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_hostid_get(out: *mut u32) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        let v = device::hostid_get()?;
        // SAFETY: `out` passed `check_out` and is writable.
        unsafe { write_out(out, v) };
        Ok(())
    })
}

/// Arms a hardware (or software) watchdog for the whole process, like `mmp hold
/// --watchdog-device`: it is petted by the heartbeat thread after successful heartbeats
/// only, and no longer once any device is lost, so a hung process or a lost device resets
/// the host within `timeout_s`. Call it once the devices to protect are heartbeating;
/// `timeout_s` (at least 1) must not exceed the shortest fail window among them (other
/// hosts wait longer than that before taking over). Disarm it with `mmp_watchdog_disarm`
/// before the process exits, or the host is reset.
///
/// # Errors
/// `MMP_RESULT_NOT_HELD` (no device is heartbeating), `MMP_RESULT_INVALID_PARAMETER` (bad
/// timeout), `MMP_RESULT_ALREADY_ARMED`, `MMP_RESULT_NOT_FOUND`,
/// `MMP_RESULT_PERMISSION_DENIED`, `MMP_RESULT_IO` (opening or setting the timeout failed),
/// `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_watchdog_arm(path: *const c_char, timeout_s: u32) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises a NUL-terminated string or NULL.
        let path = unsafe { path_arg(path) }?;
        device::watchdog_arm(path, timeout_s)
    })
}

/// Closes the process's watchdog: with the magic character (the watchdog stops) when no
/// device was lost, else without it (the reset goes ahead).
///
/// # Errors
/// `MMP_RESULT_NOT_ARMED` (no watchdog armed in this process; a `fork()` child never
/// inherits one).
#[unsafe(no_mangle)]
pub extern "C" fn mmp_watchdog_disarm() -> mmp_result {
    ffi_boundary!({ device::watchdog_disarm() })
}

/// Whether the process's heartbeats self-fence with a watchdog: off, active or degraded.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_self_fence_state(out: *mut mmp_self_fence) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        let v = device::self_fence_state();
        // SAFETY: `out` passed `check_out` and is writable.
        unsafe { write_out(out, v) };
        Ok(())
    })
}

/// A static, NUL-terminated description of a result value. Takes the raw integer: unknown
/// values get the text of `MMP_RESULT_INVALID_PARAMETER`. Never NULL; never free it.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_result_str(result: u32) -> *const c_char {
    let text = mmp_result::from_raw(result).description();
    text.as_ptr().cast()
}

/// Whether `result` is a refusal (1..=99): the protocol or a safety check said no.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_result_is_refusal(result: u32) -> bool {
    mmp_result::is_refusal(result)
}

/// Whether `result` is an error (100..=199): I/O, bad arguments, misuse.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_result_is_error(result: u32) -> bool {
    mmp_result::is_error(result)
}

/// Whether `result` says a held device was lost (200..): stop using the device at once.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_result_is_lost(result: u32) -> bool {
    mmp_result::is_lost(result)
}

/// The `errno` behind the error the last libmmp call on this thread returned (0 if that
/// call succeeded or its error came from no system call), like `errno` itself: read it
/// right after the failing call. Per handle, `mmp_device_last_error` keeps it too.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_last_os_error() -> i32 {
    crate::result::last_errno()
}

/// The context of the last call on this handle that failed (other than
/// `mmp_device_status`, which changes nothing, and this function): its result, the `errno`
/// behind it, and for a refusal the owner whose block caused it (node name, hostid, state,
/// and how long ago it last wrote), so no second `mmp_device_status` is needed (it might
/// describe a later block anyway). `result` is `MMP_RESULT_OK` if no call failed yet.
/// Never waits for another call on the handle.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_last_error(
    dev: *const mmp_device,
    out: *mut mmp_error_info,
) -> mmp_result {
    ffi_boundary!({
        check_out(out)?;
        // SAFETY: the caller promises `dev` is NULL or live.
        let info = unsafe { handle(dev) }?.last_error()?;
        // SAFETY: `out` passed `check_out` and is writable.
        unsafe { write_out(out, info) };
        Ok(())
    })
}

/// A file descriptor that becomes readable when an event is pending on this handle (a
/// loss: `MMP_EVENT_LOST`; a started acquire's `MMP_EVENT_PROGRESS` and
/// `MMP_EVENT_ACQUIRE_DONE`), for `poll`/`epoll`/`select` event loops; then call
/// `mmp_device_read_events`. The loss callback, if one was given, is still called as well,
/// just after the event is posted (so it may still be running when the descriptor turns
/// readable); `mmp_device_release` returns only after it has returned.
///
/// The descriptor (an eventfd: non-blocking, close-on-exec) belongs to the handle: it is
/// the same on every call, stays valid until `mmp_device_free`, and must not be closed,
/// read or written by the caller. Events of earlier holds that were not read stay pending.
///
/// # Errors
/// `MMP_RESULT_IO` (the descriptor could not be created; see `mmp_last_os_error`),
/// `MMP_RESULT_NULL_PARAMETER`, `MMP_RESULT_FORKED`, `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `out_fd` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_event_fd(
    dev: *const mmp_device,
    out_fd: *mut i32,
) -> mmp_result {
    ffi_boundary!({
        check_out(out_fd)?;
        // SAFETY: the caller promises `dev` is NULL or live.
        let fd = unsafe { handle(dev) }?.event_fd()?;
        // SAFETY: `out_fd` passed `check_out` and is writable.
        unsafe { write_out(out_fd, fd) };
        Ok(())
    })
}

/// Takes the pending events of this handle and makes its event descriptor unreadable
/// again: `*out_events` receives a combination of `MMP_EVENT_*` bits (0 when nothing was
/// pending, which a wake-up may show), and when `MMP_EVENT_LOST` is among them and
/// `out_loss` is not NULL, `*out_loss` receives the details of the last loss (as the loss
/// callback saw them). Never waits for another call on the handle; may be called from any
/// thread, not from a signal handler.
///
/// # Errors
/// `MMP_RESULT_NULL_PARAMETER` (`dev` or `out_events`), `MMP_RESULT_FORKED`,
/// `MMP_RESULT_POISONED`.
///
/// # Safety
/// `dev` is NULL or a live handle; `out_events` is NULL or writable; `out_loss` is NULL or
/// writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmp_device_read_events(
    dev: *mut mmp_device,
    out_events: *mut u32,
    out_loss: *mut mmp_loss_info,
) -> mmp_result {
    ffi_boundary!({
        check_out(out_events)?;
        // SAFETY: the caller promises `dev` is NULL or live.
        let (events, loss) = unsafe { handle(dev) }?.read_events()?;
        // SAFETY: `out_events` passed `check_out` and is writable.
        unsafe { write_out(out_events, events) };
        if let Some(l) = loss
            && !out_loss.is_null()
        {
            // SAFETY: non-NULL, and the caller promises it is writable.
            unsafe { write_out(out_loss, l) };
        }
        Ok(())
    })
}

/// The library version, `"MAJOR.MINOR.PATCH"`: static, NUL-terminated, never NULL. Compare
/// with the `MMP_VERSION_*` macros to detect a header/library mismatch.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library version as a number, `MAJOR << 16 | MINOR << 8 | PATCH`, as
/// `MMP_VERSION_NUMBER` computes it from the header's macros: e.g.
/// `mmp_version_number() >= MMP_VERSION_NUMBER` at run time, or a check that the minor
/// version (the ABI, while at 0.x) matches the header's.
#[unsafe(no_mangle)]
pub extern "C" fn mmp_version_number() -> u32 {
    VERSION_NUMBER
}

const VERSION_NUMBER: u32 = (version_part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
    | (version_part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
    | version_part(env!("CARGO_PKG_VERSION_PATCH"));

/// A version component (decimal, below 256: the number has 8 bits for each).
const fn version_part(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut v = 0u32;
    let mut i = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "a version part is decimal");
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    assert!(v < 256, "a version part fits in 8 bits");
    v
}

/// Test hook (Rust only, not part of the C API; only with the private feature
/// `_test-switches`): runs a call on the handle that panics, to prove that the panic is
/// caught and poisons the handle.
///
/// # Safety
/// `dev` is NULL or a live handle.
#[doc(hidden)]
#[cfg(feature = "_test-switches")]
pub unsafe fn panic_in_call_for_tests(dev: *const mmp_device) -> mmp_result {
    ffi_boundary!({
        // SAFETY: the caller promises `dev` is NULL or live.
        unsafe {
            with_handle(dev, |_, _| -> Result<(), mmp_result> {
                panic!("injected by panic_in_call_for_tests")
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{
        mmp_device_acquire, mmp_device_free, mmp_device_open, mmp_device_release,
        mmp_device_start_heartbeat,
    };
    use crate::hub::Hub;
    use crate::types::mmp_identity;
    use crate::{mmp_device, mmp_result};
    use std::ffi::CString;
    use std::time::{Duration, Instant};

    /// Heartbeats started and released one after another through the C API take one
    /// engine slot in turn, each with a new generation: a process that starts a heartbeat
    /// per mount for months does not keep a machine for every one it ever started.
    #[test]
    fn heartbeats_in_turn_reuse_one_engine_slot() {
        let path = std::env::temp_dir().join(format!("mmp-ffi-slots-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).expect("create the area file");
        mmp_linux::area::format(&path, 100, 4, true).expect("format the area");
        let cpath = CString::new(path.to_string_lossy().as_bytes()).expect("a C path");
        let node = CString::new("slots").expect("a C name");
        let id = mmp_identity {
            hostid: 0x5107_0002,
            nodename: node.as_ptr(),
            default_hostid: false,
        };
        let mut seen = Vec::new();
        for round in 0..5 {
            let mut dev: *mut mmp_device = std::ptr::null_mut();
            // SAFETY: a NUL-terminated path, a valid identity and out pointer, for the call.
            let rc = unsafe { mmp_device_open(cpath.as_ptr(), &id, 0, &mut dev) };
            assert_eq!(rc, mmp_result::Ok, "round {round}: open");
            // SAFETY: `dev` is live; no callbacks.
            let rc = unsafe { mmp_device_acquire(dev, false, None, std::ptr::null_mut()) };
            assert_eq!(rc, mmp_result::Ok, "round {round}: acquire");
            // SAFETY: as above.
            let rc = unsafe { mmp_device_start_heartbeat(dev, None, std::ptr::null_mut()) };
            assert_eq!(rc, mmp_result::Ok, "round {round}: start_heartbeat");
            let hub = Hub::existing().expect("the heartbeat started the hub");
            let slot = hub
                .report()
                .slots
                .iter()
                .find(|s| !s.vacant && s.outcome.is_none())
                .map(|s| s.id);
            // SAFETY: `dev` is live.
            let rc = unsafe { mmp_device_release(dev) };
            assert_eq!(rc, mmp_result::Ok, "round {round}: release");
            // SAFETY: `dev` came from mmp_device_open and is freed once.
            unsafe { mmp_device_free(dev) };
            // The engine vacates the slot once the release is done (asynchronously).
            let end = Instant::now() + Duration::from_secs(10);
            while !hub.report().slots.iter().all(|s| s.vacant) {
                assert!(Instant::now() < end, "round {round}: slot not vacated");
                std::thread::sleep(Duration::from_millis(5));
            }
            let r = hub.report();
            assert_eq!(r.slots.len(), 1, "round {round}: {:?}", r.slots);
            seen.push(slot.or(Some(r.slots[0].id)));
        }
        let gens: Vec<u32> = seen.iter().flatten().map(|s| s.generation()).collect();
        assert_eq!(gens, [0, 1, 2, 3, 4], "{seen:?}");
        let _ = std::fs::remove_file(&path);
    }
}
