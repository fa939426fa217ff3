//! The heartbeat engine: one thread drives the machines of every device a process holds,
//! deadline-scheduled, so `mmp hold DEV1 ... DEV200` costs one thread. Acquires run
//! concurrently on the same thread (one activity window for all devices, not one per
//! device). The CLI and libmmp both use it.
//!
//! Heartbeat I/O is batched through `io_uring` ([`crate::sys::uring`]) where the kernel
//! allows it: the reads (then the writes) of every device due in a pass go to the kernel in
//! one submission, and a pass also takes the devices whose heartbeat is due within their
//! [`Machine::early_beat_slack`], so devices that fall due at nearly the same time settle into
//! shared batches. Without `io_uring`, I/O is synchronous, and above 256 devices a pass that
//! finds many devices due spreads it over a few short-lived scoped threads (the machines
//! stay owned by the engine thread).
//!
//! Commands reach the thread over a channel; events leave over another; a shared
//! [`Report`] (updated after every pass) answers status queries without touching the disk.

use crate::machine::{Event, Machine, Outcome, Phase, Stats, Timing};
use crate::machine::{MAX_EARLY_BEAT, MAX_RECORD_LEN};
use crate::sys::clock;
use crate::sys::driver::{self, Fault, FaultHook, PendingIo};
use crate::sys::target::Target;
use crate::sys::uring::{self, Ring, RingOp};
use crate::sys::watchdog::Watchdog;
use crate::time::{Duration, Instant};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A log-bucketed histogram of durations in microseconds (64 sub-buckets per power of two,
/// about 1.6 % resolution), fixed size whatever the number of samples.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_us: u64,
}

const SUB: u64 = 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; 40 * SUB as usize],
            count: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < SUB {
            return usize::try_from(us).unwrap_or(0);
        }
        let octave = 63 - u64::from(us.leading_zeros()); // >= 6
        let shift = octave - 6;
        let sub = (us >> shift) - SUB; // 0..64
        usize::try_from((octave - 5) * SUB + sub).unwrap_or(usize::MAX)
    }

    fn lower_bound(idx: usize) -> u64 {
        let idx = idx as u64;
        if idx < SUB {
            return idx;
        }
        let octave = idx / SUB + 5;
        let sub = idx % SUB;
        (SUB + sub) << (octave - 6)
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max_us = self.max_us.max(us);
    }

    /// Number of samples.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample.
    #[must_use]
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us)
    }

    /// The `q` quantile (0.0..=1.0), as the lower bound of its bucket; zero when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_micros(Self::lower_bound(i).min(self.max_us));
            }
        }
        self.max()
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max_us = self.max_us.max(other.max_us);
    }
}

/// The state of one device in the engine.
#[derive(Clone, Debug)]
pub struct SlotReport {
    /// Device path.
    pub path: PathBuf,
    /// Machine phase.
    pub phase: Phase,
    /// Outcome, once finished.
    pub outcome: Option<Outcome>,
    /// Heartbeat figures.
    pub stats: Stats,
    /// Timing derived from the owner's parameters.
    pub timing: Option<Timing>,
    /// Lease end while held.
    pub owned_until: Option<Instant>,
    /// Wall time of the last successful write (Unix ms).
    pub last_write_wall_ms: Option<u64>,
    /// Whether the device was ever acquired by this engine.
    pub acquired: bool,
    /// Forgotten ([`Engine::forget`]): no longer driven, nothing more written.
    pub forgotten: bool,
}

/// Whether memory locking and real-time scheduling took effect.
#[derive(Clone, Debug, Default)]
pub struct RealtimeStatus {
    /// `mlockall` result: `None` if not requested, `Some(Ok)` or the error text.
    pub mlock: Option<Result<(), String>>,
    /// `SCHED_FIFO` result for the engine thread.
    pub fifo: Option<Result<(), String>>,
}

/// Self-fencing state, as shown by status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfFence {
    /// No hardware watchdog: the lease stops our writes, but a hung host is not reset.
    Off,
    /// A watchdog is armed and petted after successful heartbeats.
    Active,
    /// A watchdog is configured but petting failed, or a device was lost and petting
    /// stopped (the watchdog will fire).
    Degraded,
}

impl SelfFence {
    /// `off`, `active`, `degraded`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SelfFence::Off => "off",
            SelfFence::Active => "active",
            SelfFence::Degraded => "degraded",
        }
    }
}

/// Everything the engine knows, refreshed after every pass.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per device, in the order they were added.
    pub slots: Vec<SlotReport>,
    /// Gaps between successful heartbeat writes, all devices.
    pub gaps: Histogram,
    /// Memory locking and scheduling.
    pub realtime: RealtimeStatus,
    /// Self-fencing state.
    pub self_fence: Option<SelfFence>,
    /// Watchdog pets so far.
    pub watchdog_pets: u64,
    /// How heartbeat I/O is done: `"io_uring"` (batched), `"sync"` (not requested), or
    /// `"sync (io_uring: <why not>)"`.
    pub io: String,
}

/// An event from one device.
#[derive(Clone, Copy, Debug)]
pub struct EngineEvent {
    /// Index of the device (order of [`Engine::add`]).
    pub slot: usize,
    /// What happened.
    pub event: Event,
}

enum Cmd {
    Add(Box<Dev>),
    Watchdog(Watchdog),
    DisarmWatchdog,
    Forget(usize),
    Abandon,
    Release(Option<usize>),
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
    /// `false` keeps every I/O a synchronous system call.
    pub batch_io: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            realtime: false,
            watchdog: None,
            faults: Box::new(driver::EnvFaults::from_env()),
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
    added: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("devices", &self.added)
            .finish()
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
        let thread = std::thread::Builder::new()
            .name("mmp-heartbeat".into())
            .stack_size(HEARTBEAT_STACK)
            .spawn(move || run(options, &rx, &events, &shared))
            .expect("spawn the heartbeat thread");
        Engine {
            tx,
            thread: Some(thread),
            report,
            added: 0,
        }
    }

    /// Adds a device with a fresh machine (normally an acquire). Returns its slot index.
    pub fn add(&mut self, target: Target, machine: Machine) -> usize {
        let _ = self.tx.send(Cmd::Add(Box::new(Dev {
            path: target.device.path().to_path_buf(),
            target: Some(target),
            machine,
        })));
        self.added += 1;
        self.added - 1
    }

    /// Releases one device (or aborts its acquire).
    pub fn release(&self, slot: usize) {
        let _ = self.tx.send(Cmd::Release(Some(slot)));
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
    pub fn forget(&self, slot: usize) {
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

/// A device and its machine, boxed once by [`Engine::add`] and kept in that box: moving
/// the machine (about 5 KiB, mostly record buffers) into the slot vector would leave the
/// freed box behind in the adding thread's heap, and real-time mode keeps freed memory
/// resident (locked), so 1000 devices would cost twice their state in RSS.
struct Dev {
    /// Closed (`None`) once the machine has finished or the slot was forgotten: a released
    /// device must not stay open (device-mapper, LVM and loop refuse to remove a device
    /// someone holds open).
    target: Option<Target>,
    path: PathBuf,
    machine: Machine,
}

struct Slot {
    dev: Box<Dev>,
    acquired: bool,
    last_write: Option<Instant>,
    last_write_wall_ms: Option<u64>,
    /// The deadline this slot has in the heap (entries that do not match are stale).
    queued: Option<Instant>,
    /// Already in this pass's work list.
    marked: bool,
    /// Counted in `Worker::done`.
    finished: bool,
    /// Taken into this pass before its deadline: start its heartbeat early.
    early: bool,
    /// [`Engine::forget`]: never driven again.
    forgotten: bool,
}

/// The engine thread's state.
///
/// Each pass services only the slots that need it: those whose deadline passed (a min-heap
/// of deadlines, with stale entries skipped) and those a command touched. A pass therefore
/// costs O(k log N) for k due devices, not O(N): with 1000 devices whose deadlines are
/// spread over the interval, the thread wakes hundreds of times a second.
struct Worker {
    slots: Vec<Slot>,
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Slots to service in this pass (reused: no allocation per pass).
    work: Vec<usize>,
    /// Slots with an outcome.
    done: usize,
    /// Scratch for [`Worker::collect_early`] (reused: no allocation per pass).
    deferred: Vec<(Instant, usize)>,
    gaps: Histogram,
    stopping: bool,
    watchdog: Option<Watchdog>,
    fence: Option<SelfFence>,
    pets: u64,
    lost_any: bool,
    /// A slot changed phase or finished, or one was added: publish now.
    changed: bool,
}

impl Worker {
    fn mark(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && !s.marked
            && !s.forgotten
        {
            s.marked = true;
            self.work.push(i);
        }
    }

    fn mark_all(&mut self) {
        for i in 0..self.slots.len() {
            self.mark(i);
        }
    }

    /// Applies one command; returns `false` when the thread must end at once (abandon).
    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Add(b) => {
                self.slots.push(Slot {
                    dev: b,
                    acquired: false,
                    last_write: None,
                    last_write_wall_ms: None,
                    queued: None,
                    marked: false,
                    finished: false,
                    early: false,
                    forgotten: false,
                });
                self.mark(self.slots.len() - 1);
                self.changed = true;
            }
            Cmd::Watchdog(mut wd) => {
                // A fresh arm fences the devices held from now on: losses before it (of
                // devices no longer held) do not stop the petting.
                self.lost_any = false;
                let ok = wd.pet().is_ok();
                self.pets += u64::from(ok);
                self.fence = Some(if ok && !self.lost_any {
                    SelfFence::Active
                } else {
                    SelfFence::Degraded
                });
                self.watchdog = Some(wd);
            }
            Cmd::DisarmWatchdog => {
                if let Some(wd) = self.watchdog.take() {
                    // Magic close only if nothing was lost (else let it fire).
                    if !self.lost_any {
                        let _ = wd.close_clean();
                    }
                }
                self.fence = None;
                self.changed = true;
            }
            Cmd::Forget(i) => {
                if let Some(s) = self.slots.get_mut(i)
                    && !s.forgotten
                {
                    s.forgotten = true;
                    s.queued = None;
                    s.dev.target = None;
                    if !s.finished {
                        s.finished = true;
                        self.done += 1;
                    }
                    self.changed = true;
                }
            }
            Cmd::Release(which) => {
                let now = clock::now();
                for (i, s) in self.slots.iter_mut().enumerate() {
                    if which.is_none_or(|w| w == i) && !s.forgotten {
                        s.dev.machine.release(now);
                    }
                }
                match which {
                    Some(i) => self.mark(i),
                    None => self.mark_all(),
                }
            }
            Cmd::Stop => self.stop(),
            Cmd::Abandon => return false,
        }
        true
    }

    fn stop(&mut self) {
        if !self.stopping {
            self.stopping = true;
            let now = clock::now();
            for s in self.slots.iter_mut().filter(|s| !s.forgotten) {
                s.dev.machine.release(now);
            }
            self.mark_all();
        }
    }

    /// Moves every slot whose deadline is at or before `now` from the heap to the work list.
    fn collect_due(&mut self, now: Instant) {
        while let Some(&Reverse((t, i))) = self.heap.peek() {
            if t > now {
                break;
            }
            self.heap.pop();
            if self.slots[i].queued == Some(t) {
                self.slots[i].queued = None;
                self.mark(i);
            }
        }
    }

    /// Also takes into this pass the slots whose heartbeat falls due within their
    /// [`Machine::early_beat_slack`] of `now` (they are marked `early`); other entries stay.
    fn collect_early(&mut self, now: Instant) {
        let horizon = now + MAX_EARLY_BEAT;
        let mut keep = std::mem::take(&mut self.deferred);
        while let Some(&Reverse((t, i))) = self.heap.peek() {
            if t > horizon {
                break;
            }
            self.heap.pop();
            let s = &mut self.slots[i];
            if s.queued != Some(t) {
                continue; // stale
            }
            if s.dev
                .machine
                .early_beat_slack()
                .is_some_and(|sl| t <= now + sl)
            {
                s.queued = None;
                s.early = true;
                self.mark(i);
            } else {
                keep.push((t, i));
            }
        }
        for &e in &keep {
            self.heap.push(Reverse(e));
        }
        keep.clear();
        self.deferred = keep;
    }

    /// The earliest live deadline (drops stale entries from the top of the heap).
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((t, i))) = self.heap.peek() {
            if self.slots[i].queued == Some(t) {
                return Some(t);
            }
            self.heap.pop();
        }
        None
    }

    /// Runs slot `i`: its timeout if due, then its I/O. Returns whether a heartbeat write
    /// succeeded.
    ///
    /// The machine gets the time of this call, not of the start of the pass: when many
    /// devices are due together, the last one's cycle starts after the others' I/O, and its
    /// cycle time, its next deadline (planned from the cycle start) and its lease check must
    /// say so.
    fn service(
        &mut self,
        i: usize,
        faults: &mut dyn FaultHook,
        events: &Sender<EngineEvent>,
    ) -> bool {
        let before = drive(&mut self.slots[i], i, faults, events);
        self.account(i, before)
    }

    /// Bookkeeping after [`drive`]: gaps, loss, completion, the slot's next deadline.
    /// Returns whether a heartbeat write succeeded.
    fn account(&mut self, i: usize, before: (Phase, bool)) -> bool {
        let s = &mut self.slots[i];
        if s.dev.machine.is_held() {
            s.acquired = true;
        }
        let mut beat_ok = false;
        let lw = s.dev.machine.stats().last_write;
        if lw != s.last_write && s.acquired {
            if let (Some(prev), Some(cur)) = (s.last_write, lw) {
                self.gaps.record(cur.saturating_since(prev));
            }
            s.last_write = lw;
            s.last_write_wall_ms = Some(clock::now().wall_ms);
            beat_ok = true;
        }
        let outcome = s.dev.machine.outcome();
        if matches!(outcome, Some(Outcome::Lost(_))) {
            self.lost_any = true;
        }
        if outcome.is_some() && !s.finished {
            s.finished = true;
            self.done += 1;
        }
        if outcome.is_some() {
            s.dev.target = None;
        }
        self.changed |= before != (s.dev.machine.phase(), outcome.is_some());
        // The pump left no I/O outstanding, so this is the slot's next input (or none:
        // finished).
        // A changed deadline leaves the old heap entry stale (skipped when popped).
        let next = s.dev.machine.poll_timeout();
        if next != s.queued {
            s.queued = next;
            if let Some(t) = next {
                self.heap.push(Reverse((t, i)));
            }
        }
        beat_ok
    }
}

/// Runs one slot's machine: its timeout if due, then all its I/O. Returns the phase and
/// finished flag from before, for [`Worker::account`].
fn drive(
    s: &mut Slot,
    i: usize,
    faults: &mut dyn FaultHook,
    events: &Sender<EngineEvent>,
) -> (Phase, bool) {
    let before = begin(s);
    let mut on_event = |e: &Event| {
        let _ = events.send(EngineEvent { slot: i, event: *e });
    };
    if let Some(target) = s.dev.target.as_ref() {
        driver::pump(&mut s.dev.machine, &target.device, faults, &mut on_event);
    }
    before
}

/// Starts a slot's turn in a pass: its timeout if due (or its early heartbeat). Returns the
/// phase and finished flag from before, for [`Worker::account`].
fn begin(s: &mut Slot) -> (Phase, bool) {
    let now = clock::now();
    s.marked = false;
    let before = (s.dev.machine.phase(), s.dev.machine.outcome().is_some());
    if s.dev.machine.poll_timeout().is_some_and(|t| t <= now.mono) {
        s.dev.machine.handle_timeout(now);
    } else if s.early {
        s.dev.machine.beat_early(now);
    }
    s.early = false;
    before
}

/// Drives the due slots `work` with their plain I/O batched through `ring`, [`uring::DEPTH`]
/// slots at a time: the reads of a group go in one submission, then their writes in
/// another, so a slot's read-to-write window spans one batch, not the whole pass. Requests
/// the ring cannot take (fault injection, buffered files, read-modify-write) and requests it
/// did not complete exactly are performed synchronously, as [`driver::pump`] would.
/// Returns whether any heartbeat write succeeded.
fn service_batched(
    w: &mut Worker,
    work: &[usize],
    faults: &mut dyn FaultHook,
    events: &Sender<EngineEvent>,
    ring: &mut Ring,
) -> bool {
    let mut beat_ok = false;
    let mut rec = [0u8; MAX_RECORD_LEN];
    let mut befores = [(Phase::Reading, false); uring::DEPTH];
    let mut queued: Vec<(usize, PendingIo, u64, usize, usize)> = Vec::with_capacity(uring::DEPTH);
    let mut results = [0i32; uring::DEPTH];
    for group in work.chunks(uring::DEPTH) {
        for (b, &i) in befores.iter_mut().zip(group) {
            *b = begin(&mut w.slots[i]);
        }
        let mut active: Vec<usize> = group.to_vec();
        while !active.is_empty() {
            // Each active slot: its next I/O into the ring, or done synchronously.
            for &i in &active {
                let s = &mut w.slots[i];
                let Some(target) = s.dev.target.as_ref() else {
                    continue;
                };
                let dev = &target.device;
                let mut on_event = |e: &Event| {
                    let _ = events.send(EngineEvent { slot: i, event: *e });
                };
                while let Some(p) =
                    driver::next_io(&mut s.dev.machine, dev, faults, &mut on_event, &mut rec)
                {
                    let span = if p.fault == Fault::NONE {
                        dev.direct_span(p.offset, p.len, p.write, uring::BUF_LEN)
                    } else {
                        None
                    };
                    let k = queued.len();
                    match (span, ring.buf(k)) {
                        (Some(span), Some(buf)) => {
                            if p.write {
                                buf[..p.len].copy_from_slice(&rec[..p.len]);
                            }
                            queued.push((i, p, span.start, span.io_len, span.skip));
                            break;
                        }
                        _ => {
                            let res = driver::perform(dev, &p, &mut rec);
                            driver::complete(&mut s.dev.machine, &p, res, &rec);
                        }
                    }
                }
            }
            active.clear();
            if queued.is_empty() {
                break;
            }
            // The lease was checked when each write was queued; other devices' synchronous
            // I/O may have taken long since. Check it again just before the writes go out:
            // a machine whose lease ran out fences now and its write is not submitted.
            let now = clock::now();
            let mut fenced = [false; uring::DEPTH];
            for (k, &(i, p, ..)) in queued.iter().enumerate() {
                fenced[k] = p.write && !w.slots[i].dev.machine.emit_block(now, &mut rec);
            }
            {
                let ops: Vec<Option<RingOp<'_>>> = queued
                    .iter()
                    .zip(&fenced)
                    .map(|(&(i, p, start, io_len, _), &f)| {
                        let t = w.slots[i].dev.target.as_ref().filter(|_| !f)?;
                        Some(RingOp {
                            fd: t.device.fd(),
                            write: p.write,
                            offset: start,
                            len: io_len,
                        })
                    })
                    .collect();
                ring.run(&ops, &mut results);
            }
            for (k, &(i, p, _, io_len, skip)) in queued.iter().enumerate() {
                let s = &mut w.slots[i];
                if fenced[k] {
                    // Finished (fenced): its events are drained in the next round.
                    active.push(i);
                    continue;
                }
                let exact = usize::try_from(results[k]).is_ok_and(|n| n == io_len);
                let from_ring = ring.buf(k);
                match from_ring {
                    Some(buf) if exact => {
                        if !p.write {
                            rec[..p.len].copy_from_slice(&buf[skip..skip + p.len]);
                        }
                        driver::complete(&mut s.dev.machine, &p, Ok(()), &rec);
                    }
                    Some(_) => {
                        // Not exactly done (an error, a short transfer, EAGAIN): again,
                        // synchronously, for the errors every other caller sees. A write
                        // takes its block (and a fresh lease check) from the machine.
                        if !p.write || s.dev.machine.emit_block(clock::now(), &mut rec) {
                            let res = perform_on(&s.dev, &p, &mut rec);
                            driver::complete(&mut s.dev.machine, &p, res, &rec);
                        }
                    }
                    None if p.write => {
                        // The ring failed and its buffers (this write's block with them)
                        // are gone: a failed write, which the machine retries.
                        driver::complete(&mut s.dev.machine, &p, Err(libc::EIO), &rec);
                    }
                    None => {
                        let res = perform_on(&s.dev, &p, &mut rec);
                        driver::complete(&mut s.dev.machine, &p, res, &rec);
                    }
                }
                active.push(i);
            }
            queued.clear();
        }
        for (&i, &b) in group.iter().zip(&befores) {
            beat_ok |= w.account(i, b);
        }
    }
    beat_ok
}

/// [`driver::perform`] on the slot's device (`EBADF` if it was closed, which an active slot
/// never is).
fn perform_on(dev: &Dev, p: &PendingIo, rec: &mut [u8; MAX_RECORD_LEN]) -> Result<(), i32> {
    match dev.target.as_ref() {
        Some(t) => driver::perform(&t.device, p, rec),
        None => Err(libc::EBADF),
    }
}

/// With this many devices or more, a pass that finds at least [`PARALLEL_DUE`] devices due
/// performs their I/O on [`IO_THREADS`] short-lived threads: heartbeat I/O is synchronous,
/// and one thread doing a thousand devices' reads, writes and flushes in a row falls behind
/// when the storage is slow. Below it, everything stays on the one heartbeat thread.
const PARALLEL_MIN_DEVICES: usize = 256;
/// See [`PARALLEL_MIN_DEVICES`].
const PARALLEL_DUE: usize = 32;
/// See [`PARALLEL_MIN_DEVICES`].
const IO_THREADS: usize = 4;
/// Stack of an I/O thread (memory is locked in real-time mode, so keep it small).
const IO_STACK: usize = 256 * 1024;

/// A fault hook shared by the I/O threads of a parallel pass.
struct LockedHook<'a, 'b>(&'a Mutex<&'b mut (dyn FaultHook + Send)>);

impl FaultHook for LockedHook<'_, '_> {
    fn before_io(&mut self, io: &driver::IoInfo<'_>) -> driver::Fault {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .before_io(io)
    }
    fn on_event(
        &mut self,
        device: &crate::sys::blockdev::Device,
        machine: &Machine,
        event: &Event,
    ) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_event(device, machine, event);
    }
}

/// Drives the due slots `work` on up to [`IO_THREADS`] threads (this one included) that
/// take slots from a shared queue, then does the bookkeeping on this thread. If a thread
/// cannot be created, the others (at least this one) drain the queue: no slot is skipped.
/// Returns whether any heartbeat write succeeded.
fn service_parallel(
    w: &mut Worker,
    work: &[usize],
    faults: &mut (dyn FaultHook + Send),
    events: &Sender<EngineEvent>,
) -> bool {
    let mut due = vec![false; w.slots.len()];
    for &i in work {
        due[i] = true;
    }
    let queue: Mutex<Vec<(usize, &mut Slot)>> = Mutex::new(
        w.slots
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| due[*i])
            .collect(),
    );
    let shared = Mutex::new(faults);
    let done: Mutex<Vec<(usize, (Phase, bool))>> = Mutex::new(Vec::with_capacity(work.len()));
    let drain = || {
        let mut hook = LockedHook(&shared);
        loop {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some((i, s)) = next else { break };
            let before = drive(s, i, &mut hook, events);
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((i, before));
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..IO_THREADS {
            // A failed spawn only means fewer helpers.
            let _ = std::thread::Builder::new()
                .name("mmp-io".into())
                .stack_size(IO_STACK)
                .spawn_scoped(scope, drain);
        }
        drain();
    });
    let befores = done.into_inner().unwrap_or_else(PoisonError::into_inner);
    let mut beat_ok = false;
    for (i, before) in befores {
        beat_ok |= w.account(i, before);
    }
    beat_ok
}

fn run(
    mut options: Options,
    rx: &Receiver<Cmd>,
    events: &Sender<EngineEvent>,
    report: &Mutex<Report>,
) {
    let realtime = if options.realtime {
        crate::sys::rt::enter_realtime()
    } else {
        RealtimeStatus::default()
    };
    let mut w = Worker {
        slots: Vec::new(),
        heap: BinaryHeap::new(),
        work: Vec::new(),
        done: 0,
        deferred: Vec::new(),
        gaps: Histogram::default(),
        stopping: false,
        watchdog: options.watchdog.take(),
        fence: None,
        pets: 0,
        lost_any: false,
        changed: false,
    };
    w.fence = w.watchdog.as_ref().map(|_| SelfFence::Active);
    let (mut ring, mut io) = if options.batch_io {
        match Ring::new() {
            Ok(r) => (Some(r), "io_uring".to_string()),
            Err(e) => (None, format!("sync (io_uring: {e})")),
        }
    } else {
        (None, "sync".to_string())
    };
    let mut last_publish: Option<Instant> = None;
    let mut next_cmd: Option<Cmd> = None;
    let mut work = Vec::new();
    loop {
        // Commands: the one that woke us, then whatever else is queued.
        if let Some(cmd) = next_cmd.take()
            && !w.command(cmd)
        {
            return;
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !w.command(cmd) {
                        return;
                    }
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    w.stop();
                    break;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        // Slots touched by commands, then those whose deadline passed, earliest deadline
        // first (when the thread falls behind, the most overdue device goes first).
        let now = clock::now();
        w.collect_due(now.mono);
        let ring_ok = ring.as_ref().is_some_and(|r| !r.is_retired());
        if ring_ok && !w.work.is_empty() {
            w.collect_early(now.mono);
        }
        std::mem::swap(&mut work, &mut w.work);
        // A slot forgotten after it was marked in this round is not driven.
        work.retain(|&i| {
            let s = &mut w.slots[i];
            if s.forgotten {
                s.marked = false;
            }
            !s.forgotten
        });
        let mut beat_ok = false;
        if let Some(r) = ring.as_mut().filter(|_| ring_ok) {
            beat_ok = service_batched(&mut w, &work, options.faults.as_mut(), events, r);
            if r.is_retired() {
                ring = None;
                io = "sync (io_uring failed while in use)".to_string();
                w.changed = true;
            }
        } else if w.slots.len() >= PARALLEL_MIN_DEVICES && work.len() >= PARALLEL_DUE {
            beat_ok = service_parallel(&mut w, &work, options.faults.as_mut(), events);
        } else {
            for &i in &work {
                beat_ok |= w.service(i, options.faults.as_mut(), events);
            }
        }
        work.clear();
        // Watchdog: pet only after a successful heartbeat while no device has been lost.
        if let Some(wd) = w.watchdog.as_mut() {
            if w.lost_any {
                w.fence = Some(SelfFence::Degraded);
            } else if beat_ok {
                match wd.pet() {
                    Ok(()) => w.pets += 1,
                    Err(_) => w.fence = Some(SelfFence::Degraded),
                }
            }
        }
        let all_done = w.done == w.slots.len();
        // Publishing copies every slot: do it on state changes and at most 4 times a second
        // otherwise, so 1000 devices do not cost 1000 copies per heartbeat.
        let due =
            last_publish.is_none_or(|t| now.mono.saturating_since(t) >= Duration::from_millis(250));
        if w.changed || due || (w.stopping && all_done) {
            publish(report, &w, &realtime, &io);
            last_publish = Some(now.mono);
            w.changed = false;
        }
        if w.stopping && all_done {
            break;
        }
        // Sleep until the earliest deadline or the next command.
        let next = w.next_deadline();
        let now = clock::now().mono;
        let wait = match next {
            Some(t) => t.saturating_since(now),
            None if w.stopping => Duration::from_millis(10),
            None => Duration::from_secs(3600),
        };
        if wait.is_zero() {
            continue;
        }
        match rx.recv_timeout(wait) {
            Ok(cmd) => next_cmd = Some(cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => w.stop(),
        }
    }
    // Clean end: magic close only if nothing was lost.
    if let Some(wd) = w.watchdog.filter(|_| !w.lost_any) {
        let _ = wd.close_clean();
    }
}

fn publish(report: &Mutex<Report>, w: &Worker, rt: &RealtimeStatus, io: &str) {
    let mut r = report.lock().unwrap_or_else(PoisonError::into_inner);
    // Slots are only ever appended: update the existing entries in place (their paths do
    // not change, so no allocation), then add the new ones.
    let known = r.slots.len().min(w.slots.len());
    r.slots.truncate(known);
    for (d, s) in r.slots.iter_mut().zip(&w.slots) {
        d.phase = s.dev.machine.phase();
        d.outcome = s.dev.machine.outcome();
        d.stats = s.dev.machine.stats();
        d.timing = s.dev.machine.timing();
        d.owned_until = s.dev.machine.owned_until();
        d.last_write_wall_ms = s.last_write_wall_ms;
        d.acquired = s.acquired;
        d.forgotten = s.forgotten;
    }
    r.slots.extend(w.slots[known..].iter().map(|s| SlotReport {
        path: s.dev.path.clone(),
        phase: s.dev.machine.phase(),
        outcome: s.dev.machine.outcome(),
        stats: s.dev.machine.stats(),
        timing: s.dev.machine.timing(),
        owned_until: s.dev.machine.owned_until(),
        last_write_wall_ms: s.last_write_wall_ms,
        acquired: s.acquired,
        forgotten: s.forgotten,
    }));
    r.gaps.clone_from(&w.gaps);
    r.realtime.clone_from(rt);
    r.self_fence = w.fence;
    r.watchdog_pets = w.pets;
    if r.io != io {
        io.clone_into(&mut r.io);
    }
}
