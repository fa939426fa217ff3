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
use mmp_core::machine::{Event, Machine, Outcome, Phase, Stats, Timing};
use mmp_core::machine::{MAX_EARLY_BEAT, MAX_RECORD_LEN};
use mmp_core::time::{Duration, Instant};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
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
    /// An I/O thread finished a request.
    IoDone(JobDone),
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
        let done = tx.clone();
        let thread = std::thread::Builder::new()
            .name("mmp-heartbeat".into())
            .stack_size(HEARTBEAT_STACK)
            .spawn(move || run(options, &rx, done, &events, &shared))
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
            target: Some(Arc::new(target)),
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
    /// Dropped (`None`) once the machine has finished or the slot was forgotten: a released
    /// device must not stay open (device-mapper, LVM and loop refuse to remove a device
    /// someone holds open). A request still outstanding holds its own reference, so the
    /// descriptor closes when that request is over.
    target: Option<Arc<Target>>,
    path: PathBuf,
    machine: Machine,
}

/// A slot's one outstanding request (a machine has at most one).
#[derive(Clone, Copy, Debug)]
enum SlotIo {
    /// None.
    Idle,
    /// For the ring, waiting for a free buffer (in [`Batch::starved`]).
    Starved(PendingIo),
    /// In the ring (staged or in flight; [`Batch::owners`] knows its buffer).
    Ring,
    /// On an I/O thread ([`Pool`]).
    Thread,
}

struct Slot {
    dev: Box<Dev>,
    acquired: bool,
    last_write: Option<Instant>,
    last_write_wall_ms: Option<u64>,
    /// The deadline this slot has in the heap (entries that do not match are stale): the
    /// machine's next timeout, or while a request is outstanding its stall deadline.
    queued: Option<Instant>,
    /// Already in this pass's work list.
    marked: bool,
    /// Counted in `Worker::done`.
    finished: bool,
    /// Taken into this pass before its deadline: start its heartbeat early.
    early: bool,
    /// [`Engine::forget`]: never driven again.
    forgotten: bool,
    /// The request outstanding.
    io: SlotIo,
    /// Phase and finished flag when last accounted (a change is published at once).
    seen: (Phase, bool),
}

/// A ring request: whose it is and what it needs until its completion is reaped.
struct RingReq {
    slot: usize,
    p: PendingIo,
    span: DirectSpan,
    /// A write's deadline ([`Machine::write_deadline`]): not submitted at or after it.
    not_after: Option<Instant>,
    /// When it went to the kernel (`None`: staged, not yet submitted).
    pushed: Option<Instant>,
    /// Keeps the descriptor open until the completion is reaped.
    target: Arc<Target>,
}

/// The ring and the engine's view of its buffers.
struct Batch {
    ring: Ring,
    /// Per buffer: the request using it.
    owners: Vec<Option<RingReq>>,
    /// Buffers reserved and filled in this pass, submitted together just before the wait.
    staged: Vec<usize>,
    /// Slots whose plain request found no free buffer, oldest first.
    starved: VecDeque<usize>,
    /// Completions reaped by the last wait, handled at the start of the next pass.
    reaped: Vec<(usize, i32)>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        // Requests the kernel may still perform (a device that never answered, an abandoned
        // engine): their descriptors stay open for good, so that a reused descriptor number
        // can never receive them. `Ring`'s own drop leaks their buffers.
        for req in self.owners.iter_mut().filter_map(Option::take) {
            if req.pushed.is_some() {
                std::mem::forget(req.target);
            }
        }
    }
}

/// A synchronous request for an I/O thread.
struct Job {
    slot: usize,
    p: PendingIo,
    /// A write's block in, a read's data out.
    rec: Box<[u8; MAX_RECORD_LEN]>,
    target: Arc<Target>,
    /// A write's deadline ([`Machine::write_deadline`]): not issued at or after it.
    not_after: Option<Instant>,
}

/// How a synchronous request ended (sent back over the command channel).
struct JobDone {
    slot: usize,
    p: PendingIo,
    /// `None`: not issued, its deadline had passed (a write only).
    res: Option<Result<(), i32>>,
    rec: Box<[u8; MAX_RECORD_LEN]>,
}

/// The I/O threads that do synchronous requests (fault injection, buffered image files,
/// `MMP_IO=sync`, requests the ring did not complete exactly), so that the heartbeat thread
/// never blocks on a device. Threads start on demand: up to [`POOL_BASE`] busy at once,
/// plus one per request outstanding longer than [`STUCK`] (a stuck device holds its thread
/// without starving the others), at most [`POOL_MAX`]. They live until the engine ends.
struct Pool {
    jobs: Option<Sender<Job>>,
    queue: Arc<Mutex<Receiver<Job>>>,
    done: Sender<Cmd>,
    threads: usize,
    /// Requests handed out and not back yet: slot and when.
    outstanding: Vec<(usize, Instant)>,
}

/// Thread-pool sizing, see [`Pool`].
const POOL_BASE: usize = 4;
/// See [`Pool`].
const POOL_MAX: usize = 64;
/// See [`Pool`].
const STUCK: Duration = Duration::from_secs(1);
/// Stack of an I/O thread (memory is locked in real-time mode, so keep it small).
const IO_STACK: usize = 256 * 1024;

impl Pool {
    fn new(done: Sender<Cmd>) -> Pool {
        let (tx, rx) = mpsc::channel();
        Pool {
            jobs: Some(tx),
            queue: Arc::new(Mutex::new(rx)),
            done,
            threads: 0,
            outstanding: Vec::new(),
        }
    }

    fn send(&mut self, job: Job) {
        let now = clock::now().mono;
        if self.outstanding.len() >= self.threads {
            let stuck = self
                .outstanding
                .iter()
                .filter(|&&(_, t)| now.saturating_since(t) >= STUCK)
                .count();
            if self.threads < (POOL_BASE + stuck).min(POOL_MAX) {
                let queue = Arc::clone(&self.queue);
                let done = self.done.clone();
                // A failed spawn only means the job waits for a busy thread.
                if std::thread::Builder::new()
                    .name("mmp-io".into())
                    .stack_size(IO_STACK)
                    .spawn(move || io_thread(&queue, &done))
                    .is_ok()
                {
                    self.threads += 1;
                }
            }
        }
        self.outstanding.push((job.slot, now));
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }

    fn finished(&mut self, slot: usize) {
        if let Some(k) = self.outstanding.iter().position(|&(s, _)| s == slot) {
            self.outstanding.swap_remove(k);
        }
    }
}

/// An I/O thread: performs jobs until the engine ends.
fn io_thread(queue: &Mutex<Receiver<Job>>, done: &Sender<Cmd>) {
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(mut job) = job else { return };
        // The engine checked the lease when it emitted the block; the job may have waited
        // for a thread since. Check again right before the write is issued (a fault's delay
        // comes after this check, like a process paused with the block in hand).
        let res = if job.p.write && job.not_after.is_some_and(|t| clock::now().mono >= t) {
            None
        } else {
            Some(driver::perform(&job.target.device, &job.p, &mut job.rec))
        };
        drop(job.target);
        let msg = Cmd::IoDone(JobDone {
            slot: job.slot,
            p: job.p,
            res,
            rec: job.rec,
        });
        if done.send(msg).is_err() {
            return;
        }
    }
}

/// How long a ring request counts as young: a wait sleeps until every young request has
/// completed (one wake-up for a whole batch on healthy storage), but no longer than this
/// after the oldest young one was submitted. An older request is a straggler: the others'
/// completions are handled as they come, without waiting for it.
const STRAGGLER: Duration = Duration::from_millis(10);
/// Longest sleep in the ring while requests are in flight (commands arrive on a channel the
/// ring cannot see): how late a command may be handled while a device is stuck.
const RING_POLL: Duration = Duration::from_millis(20);
/// The same while I/O threads have requests outstanding for less than [`STUCK`] (their
/// completions arrive over the command channel).
const THREAD_POLL: Duration = Duration::from_millis(2);
/// On stop, once every machine has finished: how long to wait for requests still
/// outstanding (a stuck device's) before the thread ends anyway, leaving them to the kernel
/// (their ring buffers and descriptors are leaked; an I/O thread finishes on its own).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The engine thread's state.
///
/// Each pass services only the slots that need it: those whose deadline passed (a min-heap
/// of deadlines, with stale entries skipped), those a command touched, and those whose
/// request completed. A pass therefore costs O(k log N) for k such devices, not O(N): with
/// 1000 devices whose deadlines are spread over the interval, the thread wakes hundreds of
/// times a second.
///
/// No device's I/O is waited for: a slot issues its request (into the ring, or to an I/O
/// thread) and goes on only when the completion arrives; meanwhile its stall deadline (the
/// end of its lease, [`Machine::stall_deadline`]) is its entry in the heap, so a request
/// that never comes back fences that device alone.
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
    /// A heartbeat write succeeded in this pass (the watchdog is petted).
    beat_ok: bool,
    batch: Option<Batch>,
    pool: Pool,
    /// The latest instant an injected fault delay of a request handed to an I/O thread
    /// runs to (test builds): such a request stands for a write held in the storage, which
    /// an exiting process cannot take back, so stopping waits for it beyond
    /// [`STOP_GRACE`].
    fault_until: Option<Instant>,
    faults: Box<dyn FaultHook + Send>,
    events: Sender<EngineEvent>,
    /// Scratch record buffer.
    rec: [u8; MAX_RECORD_LEN],
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
                    io: SlotIo::Idle,
                    seen: (Phase::Reading, false),
                });
                self.mark(self.slots.len() - 1);
                self.changed = true;
            }
            Cmd::IoDone(d) => self.job_done(d),
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
                    if matches!(s.io, SlotIo::Starved(_)) {
                        s.io = SlotIo::Idle; // never went out
                    }
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
            if matches!(s.io, SlotIo::Idle)
                && s.dev
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

    /// Requests outstanding (staged, in the ring, waiting for a buffer, on a thread).
    fn outstanding(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s.io, SlotIo::Idle))
            .count()
    }

    /// Services slot `i` in this pass: if it has a request outstanding, whether that
    /// request has outlived the lease (the machine fences); else its timeout if due (or its
    /// early heartbeat). Then its next request goes out.
    ///
    /// The machine gets the time of this call, not of the start of the pass.
    fn kick(&mut self, i: usize) {
        let now = clock::now();
        let s = &mut self.slots[i];
        s.marked = false;
        if s.forgotten {
            return;
        }
        let m = &mut s.dev.machine;
        if matches!(s.io, SlotIo::Idle) {
            if m.poll_timeout().is_some_and(|t| t <= now.mono) {
                m.handle_timeout(now);
            } else if s.early {
                m.beat_early(now);
            }
        } else {
            m.handle_stall(now);
            if m.outcome().is_some() && matches!(s.io, SlotIo::Starved(_)) {
                // It never went out (its entry in the starved queue is skipped).
                s.io = SlotIo::Idle;
            }
        }
        s.early = false;
        self.advance(i);
    }

    /// Hands slot `i`'s events on and, if it has no request outstanding, issues its next
    /// one; then its bookkeeping.
    fn advance(&mut self, i: usize) {
        let Worker {
            slots,
            faults,
            events,
            rec,
            ..
        } = self;
        let s = &mut slots[i];
        if s.forgotten {
            return;
        }
        let mut on_event = |e: &Event| {
            let _ = events.send(EngineEvent { slot: i, event: *e });
        };
        let m = &mut s.dev.machine;
        match s.dev.target.clone() {
            Some(t) if matches!(s.io, SlotIo::Idle) => {
                if let Some(p) = driver::next_io(m, &t.device, faults.as_mut(), &mut on_event, rec)
                {
                    self.dispatch(i, p, t);
                }
            }
            Some(t) => {
                while let Some(e) = m.poll_event() {
                    faults.on_event(&t.device, m, &e);
                    on_event(&e);
                }
            }
            None => while m.poll_event().is_some() {},
        }
        self.account(i);
    }

    /// Issues `p` (a write's block is in `self.rec`): into the ring if it can take it (or
    /// queued for a free buffer), else to an I/O thread.
    fn dispatch(&mut self, i: usize, p: PendingIo, target: Arc<Target>) {
        let s = &mut self.slots[i];
        let not_after = if p.write {
            s.dev.machine.write_deadline()
        } else {
            None
        };
        if let Some(b) = self.batch.as_mut()
            && p.fault == Fault::NONE
            && let Some(span) = target
                .device
                .direct_span(p.offset, p.len, p.write, uring::BUF_LEN)
        {
            let Some(k) = b.ring.reserve() else {
                s.io = SlotIo::Starved(p);
                b.starved.push_back(i);
                return;
            };
            if p.write
                && let Some(buf) = b.ring.buf(k)
            {
                buf[..p.len].copy_from_slice(&self.rec[..p.len]);
            }
            b.owners[k] = Some(RingReq {
                slot: i,
                p,
                span,
                not_after,
                pushed: None,
                target,
            });
            b.staged.push(k);
            s.io = SlotIo::Ring;
            return;
        }
        s.io = SlotIo::Thread;
        self.send_to_thread(i, p, target, not_after);
    }

    /// Hands `p` (a write's block is in `self.rec`) to an I/O thread.
    fn send_to_thread(
        &mut self,
        i: usize,
        p: PendingIo,
        target: Arc<Target>,
        not_after: Option<Instant>,
    ) {
        let injected = p.fault.delay_before + p.fault.delay_after;
        if !injected.is_zero() {
            let until = clock::now().mono + injected + Duration::from_millis(100);
            self.fault_until = Some(self.fault_until.map_or(until, |u| u.max(until)));
        }
        self.pool.send(Job {
            slot: i,
            p,
            rec: Box::new(self.rec),
            target,
            not_after,
        });
    }

    /// Does `p` again on an I/O thread (a ring request not completed exactly, or one the
    /// failed ring lost): a write takes its block, and a fresh lease check, from the machine
    /// (if the lease ran out it fences instead).
    fn redo(&mut self, i: usize, p: PendingIo, target: Arc<Target>) {
        let s = &mut self.slots[i];
        if p.write && !s.dev.machine.emit_block(clock::now(), &mut self.rec) {
            return;
        }
        let not_after = if p.write {
            s.dev.machine.write_deadline()
        } else {
            None
        };
        s.io = SlotIo::Thread;
        self.send_to_thread(i, p, target, not_after);
    }

    /// A ring completion: buffer `k`, result `res`.
    fn ring_done(&mut self, k: usize, res: i32) {
        let Some(b) = self.batch.as_mut() else { return };
        let Some(req) = b.owners.get_mut(k).and_then(Option::take) else {
            b.ring.release(k);
            return;
        };
        let RingReq {
            slot: i,
            p,
            span,
            target,
            ..
        } = req;
        let s = &mut self.slots[i];
        s.io = SlotIo::Idle;
        if s.forgotten || s.dev.machine.outcome().is_some() {
            // Fenced while it was in flight (or forgotten): its result no longer matters.
            b.ring.release(k);
            self.advance(i);
            return;
        }
        let exact = usize::try_from(res).is_ok_and(|n| n == span.io_len);
        let m = &mut s.dev.machine;
        match b.ring.buf(k) {
            Some(buf) if exact => {
                if !p.write {
                    self.rec[..p.len].copy_from_slice(&buf[span.skip..span.skip + p.len]);
                }
                b.ring.release(k);
                driver::complete(m, &p, Ok(()), &self.rec);
            }
            // The ring failed and its buffers (this write's block with them) are gone: a
            // failed write, which the machine retries.
            None if p.write => driver::complete(m, &p, Err(libc::EIO), &self.rec),
            _ => {
                // Not exactly done (an error, a short transfer, EAGAIN), or a read the
                // failed ring lost: again, synchronously, for the errors every other caller
                // sees.
                b.ring.release(k);
                self.redo(i, p, target);
            }
        }
        self.advance(i);
    }

    /// An I/O thread's completion.
    fn job_done(&mut self, d: JobDone) {
        self.pool.finished(d.slot);
        let Some(s) = self.slots.get_mut(d.slot) else {
            return;
        };
        s.io = SlotIo::Idle;
        if s.forgotten || s.dev.machine.outcome().is_some() {
            self.advance(d.slot);
            return;
        }
        let now = clock::now();
        match d.res {
            // The write's deadline passed before it could be issued.
            None => s.dev.machine.handle_write_not_issued(now),
            Some(res) => driver::complete(&mut s.dev.machine, &d.p, res, &d.rec),
        }
        self.advance(d.slot);
    }

    /// Gives freed ring buffers to the slots waiting for one, oldest first.
    fn feed_starved(&mut self) {
        loop {
            let Some(b) = self.batch.as_mut() else { return };
            if b.ring.available() == 0 {
                return;
            }
            let Some(i) = b.starved.pop_front() else {
                return;
            };
            let s = &mut self.slots[i];
            let SlotIo::Starved(p) = s.io else { continue };
            s.io = SlotIo::Idle;
            let Some(t) = s.dev.target.clone().filter(|_| !s.forgotten) else {
                continue;
            };
            // A write's block again (and a fresh lease check: it may have waited long).
            if p.write && !s.dev.machine.emit_block(clock::now(), &mut self.rec) {
                self.advance(i);
                continue;
            }
            self.dispatch(i, p, t);
            self.account(i);
        }
    }

    /// Submits the staged ring requests. The lease of each write was checked when its block
    /// was emitted; it is checked again here, just before the write goes out: a machine
    /// whose lease ran out meanwhile fences and its write is not submitted.
    fn flush(&mut self) {
        let Some(b) = self.batch.as_mut() else { return };
        if b.staged.is_empty() {
            return;
        }
        let now = clock::now();
        let mut staged = std::mem::take(&mut b.staged);
        let mut back = Vec::new();
        for &k in &staged {
            let Some(b) = self.batch.as_mut() else { break };
            let Some(req) = b.owners[k].as_mut() else {
                continue;
            };
            let i = req.slot;
            let s = &mut self.slots[i];
            let late = req.p.write && req.not_after.is_some_and(|t| now.mono >= t);
            if late || s.forgotten || s.dev.machine.outcome().is_some() {
                b.owners[k] = None;
                b.ring.release(k);
                s.io = SlotIo::Idle;
                if late {
                    s.dev.machine.handle_write_not_issued(now);
                }
                back.push(i);
                continue;
            }
            let op = RingOp {
                fd: req.target.device.fd(),
                write: req.p.write,
                offset: req.span.start,
                len: req.span.io_len,
            };
            if b.ring.push(k, op) {
                req.pushed = Some(now.mono);
            } else if let Some(req) = b.owners[k].take() {
                // The submission queue is full (it holds DEPTH entries, as many as there
                // are buffers, so this does not happen): do it synchronously.
                b.ring.release(k);
                self.redo(i, req.p, req.target);
                back.push(i);
            }
        }
        staged.clear();
        if let Some(b) = self.batch.as_mut() {
            b.staged = staged;
        }
        for i in back {
            self.advance(i);
        }
    }

    /// Sleeps in the ring until its young requests have completed, a deadline passes or
    /// [`RING_POLL`] (or [`THREAD_POLL`]) has passed, then reaps what completed (handled at
    /// the start of the next pass).
    fn wait_ring(&mut self, until: Instant) {
        let now = clock::now().mono;
        // Only requests of I/O threads that may still come back soon (a stuck one does not
        // keep the engine polling).
        let threads = self
            .pool
            .outstanding
            .iter()
            .any(|&(_, t)| now.saturating_since(t) < STUCK);
        let Some(b) = self.batch.as_mut() else { return };
        let mut young = 0usize;
        let mut young_end: Option<Instant> = None;
        for r in b.owners.iter().flatten() {
            if let Some(t) = r.pushed
                && now.saturating_since(t) < STRAGGLER
            {
                young += 1;
                let end = t + STRAGGLER;
                young_end = Some(young_end.map_or(end, |e| e.min(end)));
            }
        }
        let cap = now + if threads { THREAD_POLL } else { RING_POLL };
        let until = young_end.map_or(until, |e| e.min(until)).min(cap);
        let mut reaped = std::mem::take(&mut b.reaped);
        b.ring
            .wait(young.max(1), until.saturating_since(now), &mut |k, r| {
                reaped.push((k, r))
            });
        b.reaped = reaped;
    }

    /// Handles the completions the last wait reaped.
    fn reap(&mut self) {
        let Some(b) = self.batch.as_mut() else { return };
        let mut reaped = std::mem::take(&mut b.reaped);
        for &(k, r) in &reaped {
            self.ring_done(k, r);
        }
        reaped.clear();
        if let Some(b) = self.batch.as_mut() {
            b.reaped = reaped;
        }
    }

    /// Bookkeeping after a slot moved: gaps, loss, completion, the slot's next deadline.
    fn account(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.forgotten {
            return;
        }
        if s.dev.machine.is_held() {
            s.acquired = true;
        }
        // Heartbeat writes only: the claim's write (which a slot whose acquire completes in
        // steps may see here first) is followed by the claim wait, not an interval.
        let stats = s.dev.machine.stats();
        let lw = stats.last_write.filter(|_| stats.beats > 0);
        if lw.is_some() && lw != s.last_write && s.acquired {
            if let (Some(prev), Some(cur)) = (s.last_write, lw) {
                self.gaps.record(cur.saturating_since(prev));
            }
            s.last_write = lw;
            s.last_write_wall_ms = Some(clock::now().wall_ms);
            self.beat_ok = true;
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
        let seen = (s.dev.machine.phase(), outcome.is_some());
        self.changed |= seen != s.seen;
        s.seen = seen;
        // The slot's next input: its request's completion (or its stall deadline), else its
        // timeout (none: finished). A changed deadline leaves the old heap entry stale
        // (skipped when popped).
        let next = match s.io {
            SlotIo::Idle => s.dev.machine.poll_timeout(),
            _ => s.dev.machine.stall_deadline(),
        };
        if next != s.queued {
            s.queued = next;
            if let Some(t) = next {
                self.heap.push(Reverse((t, i)));
            }
        }
    }
}

fn run(
    mut options: Options,
    rx: &Receiver<Cmd>,
    done: Sender<Cmd>,
    events: &Sender<EngineEvent>,
    report: &Mutex<Report>,
) {
    let realtime = if options.realtime {
        crate::rt::enter_realtime()
    } else {
        RealtimeStatus::default()
    };
    let (batch, mut io) = if options.batch_io {
        match Ring::new() {
            Ok(ring) => (
                Some(Batch {
                    ring,
                    owners: (0..uring::DEPTH).map(|_| None).collect(),
                    staged: Vec::with_capacity(uring::DEPTH),
                    starved: VecDeque::new(),
                    reaped: Vec::with_capacity(uring::DEPTH),
                }),
                "io_uring".to_string(),
            ),
            Err(e) => (None, format!("sync (io_uring: {e})")),
        }
    } else {
        (None, "sync".to_string())
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
        beat_ok: false,
        batch,
        pool: Pool::new(done),
        fault_until: None,
        faults: options.faults,
        events: events.clone(),
        rec: [0; MAX_RECORD_LEN],
    };
    w.fence = w.watchdog.as_ref().map(|_| SelfFence::Active);
    let mut last_publish: Option<Instant> = None;
    let mut next_cmd: Option<Cmd> = None;
    let mut work = Vec::new();
    // Set once stopping and every machine has finished: the end of the wait for requests
    // still outstanding.
    let mut grace: Option<Instant> = None;
    loop {
        // Commands (and I/O threads' completions): the one that woke us, then whatever else
        // is queued. (The I/O threads hold senders too, so the channel never reports a
        // disconnect once one has started: dropping the `Engine` sends `Stop` anyway.)
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
        // Ring completions reaped by the last wait.
        w.reap();
        if w.batch.as_ref().is_some_and(|b| b.ring.is_retired()) {
            w.batch = None;
            io = "sync (io_uring failed while in use)".to_string();
            w.changed = true;
        }
        // Slots touched by commands, then those whose deadline passed, earliest deadline
        // first (when the thread falls behind, the most overdue device goes first).
        let now = clock::now();
        w.collect_due(now.mono);
        if w.batch.is_some() && !w.work.is_empty() {
            w.collect_early(now.mono);
        }
        std::mem::swap(&mut work, &mut w.work);
        for &i in &work {
            w.kick(i);
        }
        work.clear();
        w.feed_starved();
        w.flush();
        // Watchdog: pet only after a successful heartbeat while no device has been lost.
        let beat_ok = std::mem::take(&mut w.beat_ok);
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
        let now = clock::now().mono;
        if w.stopping && all_done {
            let end =
                *grace.get_or_insert_with(|| (now + STOP_GRACE).max(w.fault_until.unwrap_or(now)));
            if now >= end || w.outstanding() == 0 {
                break;
            }
        }
        // Sleep until the earliest deadline (a timeout, or a stall: the end of the lease of
        // a device whose request is outstanding), the next command or completion.
        let mut until = match w.next_deadline() {
            Some(t) => t,
            None if w.stopping => now + Duration::from_millis(10),
            None => now + Duration::from_secs(3600),
        };
        if let Some(g) = grace {
            until = until.min(g);
        }
        if w.batch.as_ref().is_some_and(|b| b.ring.in_flight() > 0) {
            w.wait_ring(until);
            continue;
        }
        let wait = until.saturating_since(now);
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
    if let Some(wd) = w.watchdog.take().filter(|_| !w.lost_any) {
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
