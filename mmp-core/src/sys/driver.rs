//! The blocking loop that drives one [`Machine`] against a real device: performs its I/O,
//! feeds it the clock, and sleeps until its deadlines. The heartbeat engine
//! ([`crate::sys::engine`]) uses the same [`pump`] for many machines on one thread.

use crate::machine::{Event, IoError, IoRequest, MAX_RECORD_LEN, Machine, Outcome};
use crate::sys::blockdev::{Device, DeviceError};
use crate::sys::clock;
use crate::time::{Duration, Instant};
use std::sync::atomic::{AtomicBool, Ordering};

/// Fault hooks for tests: the engine consults them before every I/O. Production code
/// passes [`NoFaults`].
pub trait FaultHook {
    /// Return `Some(errno)` to fail this I/O instead of performing it.
    fn before_io(&mut self, device: &Device, write: bool) -> Option<i32>;
}

/// No fault injection.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultHook for NoFaults {
    fn before_io(&mut self, _device: &Device, _write: bool) -> Option<i32> {
        None
    }
}

/// Fault injection from the environment, for tests and the fault campaign: when
/// `MMP_FAULT_EIO_FILE` names a file that exists, every I/O fails with EIO while it exists.
/// Only read when the variable is set; a plain `mmp` run never looks at the file system for
/// it.
#[derive(Debug, Default)]
pub struct EnvFaults {
    path: Option<std::path::PathBuf>,
}

impl EnvFaults {
    /// Reads `MMP_FAULT_EIO_FILE`.
    #[must_use]
    pub fn from_env() -> Self {
        EnvFaults {
            path: std::env::var_os("MMP_FAULT_EIO_FILE").map(Into::into),
        }
    }
}

impl FaultHook for EnvFaults {
    fn before_io(&mut self, _device: &Device, _write: bool) -> Option<i32> {
        match &self.path {
            Some(p) if p.exists() => Some(5),
            _ => None,
        }
    }
}

fn errno_of(e: &DeviceError) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Performs every I/O the machine asks for, synchronously, and hands each event to
/// `on_event`. Returns when the machine has no I/O outstanding.
pub fn pump(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    on_event: &mut dyn FnMut(&Event),
) {
    let mut buf = [0u8; MAX_RECORD_LEN];
    loop {
        while let Some(e) = m.poll_event() {
            on_event(&e);
        }
        let Some(io) = m.poll_io() else { break };
        match io {
            IoRequest::Read { offset_bytes, len } => {
                if let Some(errno) = faults.before_io(dev, false) {
                    m.handle_io_error(clock::now(), IoError { errno });
                    continue;
                }
                let res = dev.read_at(offset_bytes, &mut buf[..len]);
                let now = clock::now();
                match res {
                    Ok(()) => m.handle_read_done(now, &buf[..len]),
                    Err(e) => m.handle_io_error(
                        now,
                        IoError {
                            errno: errno_of(&e),
                        },
                    ),
                }
            }
            IoRequest::Write { offset_bytes, len } => {
                if !m.emit_block(clock::now(), &mut buf) {
                    continue;
                }
                if let Some(errno) = faults.before_io(dev, true) {
                    m.handle_io_error(clock::now(), IoError { errno });
                    continue;
                }
                let res = dev.write_at(offset_bytes, &buf[..len]);
                let now = clock::now();
                match res {
                    Ok(()) => m.handle_write_done(now),
                    Err(e) => m.handle_io_error(
                        now,
                        IoError {
                            errno: errno_of(&e),
                        },
                    ),
                }
            }
        }
    }
}

/// Runs `m` to its end against `dev`: for a check, an acquire that is refused, or a clear.
/// For an acquire that succeeds this returns `None` as soon as the device is held (use the
/// engine to keep heartbeating). `stop` aborts the wait (the machine is told to release).
pub fn run_until_settled(
    m: &mut Machine,
    dev: &Device,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Option<Outcome> {
    let mut faults = EnvFaults::from_env();
    loop {
        pump(m, dev, &mut faults, on_event);
        if let Some(o) = m.outcome() {
            return Some(o);
        }
        if m.is_held() {
            return None;
        }
        if stop.load(Ordering::SeqCst) {
            m.release(clock::now());
            continue;
        }
        let Some(deadline) = m.poll_timeout() else {
            return m.outcome();
        };
        sleep_until_or_stop(deadline, stop);
        m.handle_timeout(clock::now());
    }
}

/// Sleeps until `deadline`, waking every 50 ms to check `stop`.
pub fn sleep_until_or_stop(deadline: Instant, stop: &AtomicBool) {
    loop {
        let now = clock::now().mono;
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return;
        }
        let left = deadline
            .saturating_since(now)
            .min(Duration::from_millis(50));
        clock::sleep_until(now + left);
    }
}
