//! The blocking loop that drives one [`Machine`] against a real device: performs its I/O,
//! feeds it the clock, and sleeps until its deadlines. The heartbeat engine
//! ([`crate::engine`]) uses the same [`pump`] for many machines on one thread.
//!
//! [`pump`] consults a [`FaultHook`] before every real read and write ([`crate::fault`]):
//! production code passes [`NoFaults`](crate::fault::NoFaults).

use crate::blockdev::{Device, DeviceError};
use crate::clock;
use crate::fault::{Fault, FaultAction, FaultHook, IoInfo, SECTOR};
use mmp_core::machine::{Event, IoError, IoRequest, MAX_RECORD_LEN, Machine, Outcome};
use mmp_core::time::{Duration, Instant};
use std::sync::atomic::{AtomicBool, Ordering};

fn errno_of(e: &DeviceError) -> IoError {
    match e {
        DeviceError::ShortRead { .. } => IoError::Short,
        e => e.raw_os_error().map_or(IoError::NoErrno, IoError::Os),
    }
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

/// Performs every I/O the machine asks for, synchronously, and hands each event to
/// `faults` and then `on_event`. Returns when the machine has no I/O outstanding.
pub fn pump(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    on_event: &mut dyn FnMut(&Event),
) {
    let mut buf = [0u8; MAX_RECORD_LEN];
    while let Some(p) = next_io(m, dev, faults, on_event, &mut buf) {
        let res = perform(dev, &p, &mut buf);
        complete(m, &p, res, &buf);
    }
}

/// One I/O taken from a machine, with the fault hook's decision: see [`next_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIo {
    /// Write (else read).
    pub write: bool,
    /// Byte offset of the record.
    pub offset: u64,
    /// Record length.
    pub len: usize,
    /// What the hook decided.
    pub fault: Fault,
}

/// Hands the machine's pending events to `faults` and then `on_event`, and takes its next
/// I/O request, asking `faults` about it. For a write the block is emitted into `buf`
/// first. `None`: the machine has no I/O outstanding.
pub fn next_io(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    on_event: &mut dyn FnMut(&Event),
    buf: &mut [u8; MAX_RECORD_LEN],
) -> Option<PendingIo> {
    loop {
        while let Some(e) = m.poll_event() {
            faults.on_event(dev, m, &e);
            on_event(&e);
        }
        let (write, offset, len) = match m.poll_io()? {
            IoRequest::Read { offset_bytes, len } => (false, offset_bytes, len),
            IoRequest::Write { offset_bytes, len } => {
                if !m.emit_block(clock::now(), buf) {
                    continue;
                }
                (true, offset_bytes, len)
            }
        };
        let fault = faults.before_io(&IoInfo {
            device: dev,
            machine: m,
            write,
            len,
        });
        return Some(PendingIo {
            write,
            offset,
            len,
            fault,
        });
    }
}

/// Performs `p` synchronously, with its fault's delays and action: a read fills
/// `buf[..p.len]`, a write writes it.
///
/// # Errors
/// How the I/O (or the injected fault) failed.
pub fn perform(dev: &Device, p: &PendingIo, buf: &mut [u8; MAX_RECORD_LEN]) -> Result<(), IoError> {
    let len = p.len.min(MAX_RECORD_LEN);
    pause(p.fault.delay_before);
    let res = match (p.write, p.fault.action) {
        (_, FaultAction::Fail(errno)) => Err(IoError::Os(errno)),
        (false, _) => dev
            .read_at(p.offset, &mut buf[..len])
            .map_err(|e| errno_of(&e)),
        (true, FaultAction::Proceed) => dev
            .write_at(p.offset, &buf[..len])
            .map_err(|e| errno_of(&e)),
        (true, FaultAction::Partial { sectors, errno }) => {
            let n = usize::try_from(sectors)
                .unwrap_or(usize::MAX)
                .saturating_mul(SECTOR)
                .min(len);
            let wrote = if n > 0 {
                dev.write_at(p.offset, &buf[..n]).map_err(|e| errno_of(&e))
            } else {
                Ok(())
            };
            wrote.and(errno.map_or(Ok(()), |e| Err(IoError::Os(e))))
        }
    };
    pause(p.fault.delay_after);
    res
}

/// Tells the machine how `p` ended (a read's data is `buf[..p.len]`).
pub fn complete(
    m: &mut Machine,
    p: &PendingIo,
    res: Result<(), IoError>,
    buf: &[u8; MAX_RECORD_LEN],
) {
    let now = clock::now();
    match res {
        Ok(()) if p.write => m.handle_write_done(now),
        Ok(()) => m.handle_read_done(now, &buf[..p.len.min(MAX_RECORD_LEN)]),
        Err(e) => m.handle_io_error(now, e),
    }
}

/// Runs `m` to its end against `dev`: for a check, an acquire that is refused, or a clear.
/// For an acquire that succeeds this returns `None` as soon as the device is held (use the
/// engine to keep heartbeating). `stop` aborts the wait (the machine is told to release).
/// `faults` is [`NoFaults`](crate::fault::NoFaults) in production; a front end may pass
/// [`EnvFaults`](crate::fault::EnvFaults) (tests).
pub fn run_until_settled(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Option<Outcome> {
    // `stop` is acted on once: after that the machine's own waits (restoring the block a
    // cancelled claim replaced waits an interval) run to their deadlines, not in a busy loop.
    let mut released = false;
    loop {
        pump(m, dev, faults, on_event);
        if let Some(o) = m.outcome() {
            return Some(o);
        }
        if m.is_held() {
            return None;
        }
        if !released && stop.load(Ordering::SeqCst) {
            released = true;
            m.release(clock::now());
            continue;
        }
        let Some(deadline) = m.poll_timeout() else {
            return m.outcome();
        };
        if released {
            clock::sleep_until(deadline);
        } else {
            sleep_until_or_stop(deadline, stop);
        }
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
