//! Memory locking and real-time scheduling for the heartbeat thread, so a loaded machine
//! does not delay heartbeats by paging or by the CPU scheduler.
#![allow(unsafe_code)]

/// Whether memory locking and real-time scheduling took effect.
#[derive(Clone, Debug, Default)]
pub struct RealtimeStatus {
    /// `mlockall` result: `None` if not requested, `Some(Ok)` or the error text.
    pub mlock: Option<Result<(), String>>,
    /// `SCHED_FIFO` result for the engine thread.
    pub fifo: Option<Result<(), String>>,
}

/// The `SCHED_FIFO` priority the heartbeat thread asks for (low among real-time
/// priorities, above every normal process).
pub const FIFO_PRIORITY: i32 = 10;

/// Locks current and future memory and switches the calling thread to `SCHED_FIFO`. Each
/// step reports its own result; failures are not fatal (the caller prints a warning).
#[must_use]
pub fn enter_realtime() -> RealtimeStatus {
    use rustix::mm::{MlockAllFlags, mlockall};
    let mlock = Some(
        mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE)
            .map_err(|e| format!("mlockall: {e}")),
    );
    let param = libc::sched_param {
        sched_priority: FIFO_PRIORITY,
    };
    // SAFETY: pid 0 means the calling thread; `param` is a valid, initialised sched_param that
    // outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
    let fifo = Some(if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "sched_setscheduler(SCHED_FIFO): {}",
            std::io::Error::last_os_error()
        ))
    });
    RealtimeStatus { mlock, fifo }
}
