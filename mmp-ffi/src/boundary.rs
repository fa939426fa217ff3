//! Everything that touches C's raw pointers, and the panic boundary.
//!
//! This is the only module with `unsafe` blocks (besides the declarations in [`crate::api`]):
//! turning pointers into references, reading C strings, writing out-parameters, calling
//! C function pointers, and freeing handles. Every block carries a `// SAFETY:` line.
#![allow(unsafe_code)]

use crate::device::Handle;
use crate::result::mmp_result;
use crate::types::{mmp_loss_cb, mmp_loss_info, mmp_phase, mmp_progress_cb};
use core::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// An open device: the opaque handle C code holds as `struct mmp_device *`.
///
/// Ownership: `mmp_device_open` creates it, `mmp_device_free` frees it, exactly once.
/// Calls on one handle take turns (see `docs/c-api.md`, Threads): a re-entry from a
/// callback gets `MMP_RESULT_BUSY` instead of racing or waiting for itself.
///
/// fork, exec, exit: a `fork()` child owns nothing its parent holds. On a handle opened
/// before the fork, the child's `mmp_device_status` reads the block with `owned` false,
/// `mmp_device_free` frees the child's copy without writing, and every other call returns
/// `MMP_RESULT_FORKED`; handles opened in the child work, with the child's own heartbeat
/// thread. Leave such a child with `_exit()` or `exec`. Device, event and watchdog
/// descriptors are close-on-exec. An exec or exit while holding ends the heartbeats without
/// writing CLEAN (a crash, to other hosts): release first.
#[allow(non_camel_case_types)]
pub struct mmp_device {
    pub(crate) handle: Handle,
}

/// Runs `f`, turning a panic into [`mmp_result::Panic`].
pub(crate) fn catch(f: impl FnOnce() -> Result<(), mmp_result>) -> mmp_result {
    crate::device::begin_call();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => mmp_result::Ok,
        Ok(Err(e)) => e,
        Err(_) => mmp_result::Panic,
    }
}

/// Runs `f`, returning `default` if it panics (for the functions that return no
/// `mmp_result`).
pub(crate) fn catch_or<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// The panic boundary around the body of every exported function: NULL checks happen in
/// the body (through the helpers of this module), panics are caught here.
macro_rules! ffi_boundary {
    ($body:block) => {
        $crate::boundary::catch(|| $body)
    };
    (default = $default:expr, $body:block) => {
        $crate::boundary::catch_or($default, || $body)
    };
}
pub(crate) use ffi_boundary;

/// A shared reference from a pointer, or [`mmp_result::NullParameter`].
///
/// # Safety
/// `p` is NULL or points to a live, properly aligned `T` that nobody mutates (other than
/// through interior mutability) for `'a`.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T) -> Result<&'a T, mmp_result> {
    // SAFETY: the caller promises `p` is NULL or valid for `'a`; `as_ref` checks NULL.
    unsafe { p.as_ref() }.ok_or(mmp_result::NullParameter)
}

/// Checks that an out-pointer is not NULL, before any work is done.
pub(crate) fn check_out<T>(p: *mut T) -> Result<(), mmp_result> {
    if p.is_null() {
        Err(mmp_result::NullParameter)
    } else {
        Ok(())
    }
}

/// Writes an out-parameter (only ever on success).
///
/// # Safety
/// `p` passed [`check_out`] and points to writable memory for one `T` (it may be
/// uninitialised: nothing is read or dropped).
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T) {
    // SAFETY: the caller promises `p` is non-NULL, aligned and writable; `write` does not
    // read or drop the old value.
    unsafe { p.write(value) }
}

/// The bytes of a NUL-terminated C string (not necessarily UTF-8), or
/// [`mmp_result::NullParameter`].
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn c_bytes<'a>(p: *const c_char) -> Result<&'a [u8], mmp_result> {
    if p.is_null() {
        return Err(mmp_result::NullParameter);
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string valid for `'a`.
    Ok(unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// The handle behind `dev`, or [`mmp_result::NullParameter`].
///
/// # Safety
/// `dev` is NULL or a pointer from `mmp_device_open` that has not been freed for `'a`.
pub(crate) unsafe fn handle<'a>(dev: *const mmp_device) -> Result<&'a Handle, mmp_result> {
    // SAFETY: the caller's promise, passed on.
    Ok(&unsafe { try_ref(dev) }?.handle)
}

/// Runs `f` on the handle behind `dev` (see [`Handle::with`]): NULL checks, the poison
/// and fork checks, taking turns, and poisoning when `f` panics.
///
/// # Safety
/// `dev` is NULL or a pointer from `mmp_device_open` that has not been freed.
pub(crate) unsafe fn with_handle<T>(
    dev: *const mmp_device,
    f: impl FnOnce(&mut crate::device::Inner, &Handle) -> Result<T, mmp_result>,
) -> Result<T, mmp_result> {
    // SAFETY: the caller's promise, passed on.
    let dev = unsafe { try_ref(dev) }?;
    dev.handle.with(f)
}

/// Moves a new handle to the heap and returns the pointer C will own.
pub(crate) fn into_raw(handle: Handle) -> *mut mmp_device {
    Box::into_raw(Box::new(mmp_device { handle }))
}

/// Frees a handle from [`into_raw`]. NULL does nothing.
///
/// # Safety
/// `dev` is NULL or a pointer from [`into_raw`] that has not been freed, and no other call
/// uses it now or later.
pub(crate) unsafe fn free(dev: *mut mmp_device) {
    if dev.is_null() {
        return;
    }
    // SAFETY: the caller promises `dev` came from `Box::into_raw` in `into_raw` and is
    // freed exactly once, with no other user.
    drop(unsafe { Box::from_raw(dev) });
}

/// A progress callback with its user data, called on the caller's thread.
pub(crate) struct Progress {
    cb: mmp_progress_cb,
    userdata: *mut c_void,
}

impl Progress {
    /// Wraps C's callback.
    ///
    /// # Safety
    /// `cb` is NULL or a function that may be called with `userdata` on the current thread
    /// until the call that receives this wrapper returns.
    pub(crate) unsafe fn new(cb: mmp_progress_cb, userdata: *mut c_void) -> Self {
        Progress { cb, userdata }
    }

    /// A wrapper that never calls anything.
    pub(crate) fn none() -> Self {
        Progress {
            cb: None,
            userdata: core::ptr::null_mut(),
        }
    }

    /// Reports progress.
    pub(crate) fn call(&self, phase: mmp_phase, remaining_ms: u64, total_ms: u64) {
        if let Some(f) = self.cb {
            // SAFETY: `new`'s contract: `f` may be called with `userdata` on this thread
            // while the API call runs, which it does.
            unsafe { f(self.userdata, phase, remaining_ms, total_ms) }
        }
    }
}

/// A loss callback with its user data, called on the process's event thread.
pub(crate) struct Loss {
    cb: mmp_loss_cb,
    userdata: *mut c_void,
}

// SAFETY: `Loss::new`'s contract makes the callback and its user data usable from the
// event thread, which is the only thread that calls it.
unsafe impl Send for Loss {}

impl Loss {
    /// Wraps C's callback.
    ///
    /// # Safety
    /// `cb` is NULL or a function that may be called with `userdata` from another thread
    /// (the process's event thread) until the heartbeat ends (release or free).
    pub(crate) unsafe fn new(cb: mmp_loss_cb, userdata: *mut c_void) -> Self {
        Loss { cb, userdata }
    }

    /// Reports a loss.
    pub(crate) fn call(&self, info: &mmp_loss_info) {
        if let Some(f) = self.cb {
            // SAFETY: `new`'s contract; `info` outlives the call.
            unsafe { f(self.userdata, info) }
        }
    }
}
