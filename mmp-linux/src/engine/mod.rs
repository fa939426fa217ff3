//! The heartbeat engine: one thread drives the machines of every device a process holds,
//! deadline-scheduled, so `mmp hold DEV1 ... DEV200` costs one thread. Acquires run
//! concurrently on the same thread (one activity window for all devices, not one per
//! device). The CLI and libmmp both use it.
//!
//! Heartbeat I/O is batched through `io_uring` ([`crate::uring`]) where the kernel
//! allows it: the reads (then the writes) of every device due in a pass go to the kernel in
//! one submission, and a pass also takes the devices whose heartbeat is due within their
//! [`Machine::early_beat_slack`], so devices that fall due at nearly the same time settle into
//! shared batches. Requests the ring cannot take (fault injection, buffered image files,
//! `MMP_IO=sync`, or a kernel without `io_uring`) are performed by a small pool of I/O
//! threads.
//!
//! # One device never stalls the others
//!
//! The engine thread never waits for one device's I/O. A device's request is issued and
//! the device goes on only when its completion arrives; every completion is handled as it
//! comes (the ring is asked for whatever has completed, with a sleep bounded by the next
//! deadline), so a slow device delays nobody else's heartbeats. While a request is
//! outstanding, the device's entry in the deadline heap is the end of its lease
//! ([`Machine::stall_deadline`]): a request that does not come back by then fences that
//! device alone ([`Machine::handle_stall`]), with `Event::Finished(Outcome::Lost(..))` as
//! for any other loss. Its ring buffer and descriptor stay reserved until the kernel
//! completes the request. On stop, requests still outstanding once every machine has
//! finished get 2 s; then the thread ends and leaves them to the kernel (their ring buffers
//! and descriptors are leaked, never reused).
//!
//! Commands reach the thread over a channel; events leave over another; a shared
//! [`Report`] (updated after every pass) answers status queries without touching the disk.

use crate::blockdev::DirectSpan;
use crate::clock;
use crate::driver::{self, PendingIo};
use crate::fault::{self, Fault, FaultHook};
use crate::target::Target;
use crate::uring::{self, Ring, RingOp};
use crate::watchdog::Watchdog;
use mmp_core::machine::{Event, IoError, Machine, Outcome, Phase, Stats, Timing};
use mmp_core::machine::{MAX_EARLY_BEAT, MAX_RECORD_LEN};
use mmp_core::time::{Duration, Instant};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

mod batch;
mod pool;
mod report;
mod worker;

pub use crate::rt::RealtimeStatus;
use pool::JobDone;
pub use report::{Histogram, Report, SelfFence, SlotReport};

#[cfg(test)]
mod tests;
use worker::{Dev, run};

/// A device's place in the engine: a slot index and the generation of that slot.
///
/// A slot is reused once its device has finished and its front end has let it go
/// ([`Engine::remove`]); the generation tells the new device from the old one, so a late
/// event or a stale command about the old device never reaches the new one. Without
/// removals (the CLI) the index is the order of [`Engine::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    index: u32,
    generation: u32,
}

impl SlotId {
    /// The slot index: the device's entry in [`Report::slots`].
    #[must_use]
    pub fn index(self) -> usize {
        self.index as usize
    }

    /// How many devices had this slot before this one.
    #[must_use]
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// An event from one device.
#[derive(Clone, Copy, Debug)]
pub struct EngineEvent {
    /// The device.
    pub slot: SlotId,
    /// What happened.
    pub event: Event,
}

enum Cmd {
    Add(SlotId, Box<Dev>),
    /// An I/O thread finished a request.
    IoDone(JobDone),
    Watchdog(Watchdog),
    DisarmWatchdog,
    Forget(SlotId),
    Remove(SlotId),
    Abandon,
    Release(Option<SlotId>),
    Stop,
}

/// Options for [`Engine::start`].
pub struct Options {
    /// Lock memory and ask for `SCHED_FIFO` (with a warning in the report when refused).
    pub realtime: bool,
    /// A hardware (or fake) watchdog to pet after successful heartbeats.
    pub watchdog: Option<Watchdog>,
    /// Fault injection (tests).
    pub faults: Box<dyn FaultHook + Send>,
    /// Batch heartbeat I/O through `io_uring` when the kernel allows it (the default);
    /// `false` keeps every I/O a synchronous system call (made on the engine's I/O threads,
    /// never on the heartbeat thread).
    pub batch_io: bool,
}

impl Options {
    /// The defaults with what a front end's environment asks for: `MMP_FAULT_*` fault
    /// injection ([`fault::EnvFaults`], test builds only) and `MMP_IO=sync` (one system call
    /// per I/O instead of batches, for comparisons and odd kernels). The library itself
    /// never reads the environment; the CLI and libmmp call this.
    #[must_use]
    pub fn from_env() -> Self {
        Options {
            faults: Box::new(fault::EnvFaults::from_env()),
            batch_io: std::env::var_os("MMP_IO").is_none_or(|v| v != "sync"),
            ..Options::default()
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            realtime: false,
            watchdog: None,
            faults: Box::new(fault::NoFaults),
            batch_io: true,
        }
    }
}

/// Stack of the heartbeat thread. Real-time mode locks all memory (`mlockall` with
/// `MCL_CURRENT | MCL_FUTURE`), which makes the whole stack resident: the default 2 MiB
/// would be 2 MiB of RSS. The deepest path (pump -> device I/O, whose 64 KiB bounce buffer
/// may pass through the stack in unoptimised builds) needs well under 256 KiB.
const HEARTBEAT_STACK: usize = 512 * 1024;

/// The engine handle. Dropping it stops the thread after releasing every device.
pub struct Engine {
    tx: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    report: Arc<Mutex<Report>>,
    /// Slots ever made (the next new index).
    slots: u32,
    /// Slots the thread has vacated ([`Engine::remove`]), with their next generation.
    free: Arc<Mutex<Vec<SlotId>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the engine thread. Events are sent to `events` (dropped silently if the
    /// receiver is gone).
    ///
    /// # Panics
    /// If the OS refuses to create a thread.
    #[must_use]
    pub fn start(options: Options, events: Sender<EngineEvent>) -> Engine {
        let (tx, rx) = mpsc::channel();
        let report = Arc::new(Mutex::new(Report::default()));
        let shared = Arc::clone(&report);
        let free = Arc::new(Mutex::new(Vec::new()));
        let vacated = Arc::clone(&free);
        let done = tx.clone();
        let thread = std::thread::Builder::new()
            .name("mmp-heartbeat".into())
            .stack_size(HEARTBEAT_STACK)
            .spawn(move || run(options, &rx, done, &events, &shared, vacated))
            .expect("spawn the heartbeat thread");
        Engine {
            tx,
            thread: Some(thread),
            report,
            slots: 0,
            free,
        }
    }

    /// Adds a device with a fresh machine (normally an acquire), in a slot the thread
    /// vacated ([`Engine::remove`]) if there is one, else in a new slot.
    pub fn add(&mut self, target: Target, machine: Machine) -> SlotId {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let id = reused.unwrap_or_else(|| {
            self.slots += 1;
            SlotId {
                index: self.slots - 1,
                generation: 0,
            }
        });
        let _ = self.tx.send(Cmd::Add(
            id,
            Box::new(Dev {
                path: target.device.path().to_path_buf(),
                target: Some(Arc::new(target)),
                machine,
            }),
        ));
        id
    }

    /// Releases one device (or aborts its acquire). A stale `slot` (removed) is ignored.
    pub fn release(&self, slot: SlotId) {
        let _ = self.tx.send(Cmd::Release(Some(slot)));
    }

    /// The front end is done with `slot`: once its device has finished (released, lost,
    /// refused, or forgotten) and no request of it is outstanding, the thread vacates the
    /// slot for a later [`Engine::add`] (its report entry then says `vacant`). A device
    /// still running is not stopped by this: release or forget it first.
    pub fn remove(&self, slot: SlotId) {
        let _ = self.tx.send(Cmd::Remove(slot));
    }

    /// Arms a watchdog: from now on it is petted after successful heartbeats while no
    /// device has been lost, and closed with the magic character at a clean end. Arm it
    /// only once every device is held (acquire waits are longer than its timeout).
    pub fn arm_watchdog(&self, watchdog: Watchdog) {
        let _ = self.tx.send(Cmd::Watchdog(watchdog));
    }

    /// Stops the thread at once without releasing anything and without closing the watchdog
    /// cleanly: what a crash looks like to other hosts (used by `mmp demo` and tests).
    pub fn abandon(mut self) {
        let _ = self.tx.send(Cmd::Abandon);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Stops driving one device without releasing it or writing anything more: what a
    /// crash looks like to other hosts, for that device only (libmmp's poisoned handles).
    pub fn forget(&self, slot: SlotId) {
        let _ = self.tx.send(Cmd::Forget(slot));
    }

    /// Closes the watchdog armed with [`Engine::arm_watchdog`]: with the magic character
    /// if no device was lost (the watchdog stops), else without it (it fires).
    pub fn disarm_watchdog(&self) {
        let _ = self.tx.send(Cmd::DisarmWatchdog);
    }

    /// Whether the engine thread still runs (it ends after [`Engine::shutdown`] or
    /// [`Engine::abandon`], or if it died).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Releases every device.
    pub fn release_all(&self) {
        let _ = self.tx.send(Cmd::Release(None));
    }

    /// The latest report.
    #[must_use]
    pub fn report(&self) -> Report {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Releases everything still held, waits for the thread to finish and returns the final
    /// report.
    #[must_use]
    pub fn shutdown(mut self) -> Report {
        self.stop_thread();
        self.report()
    }

    fn stop_thread(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
