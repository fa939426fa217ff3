//! The heartbeat engine every handle of the process shares: one heartbeat thread
//! (`mmp-heartbeat`) for all the devices libmmp holds, as `mmp hold DEV...` has for the CLI,
//! and one event thread (`mmp-events`) that delivers the loss callbacks. Started by the first
//! `mmp_device_start_heartbeat` or `mmp_device_acquire_start`, with that handle's real-time
//! choice; it lives as long as the process. A process-wide watchdog (`mmp_watchdog_arm`)
//! belongs to it.
//!
//! Started acquires (`mmp_device_acquire_start`) run on the engine like `mmp hold`'s: their
//! machine is added in its acquire, and the event thread, which otherwise only delivers
//! outcomes, reports their progress and end through the handle's event descriptor (never
//! as a loss, until they held the device) and turns a handle's cancel flag into a release of
//! the slot, which aborts the acquire (the call itself stays lock-free).
//!
//! Delivery rule: each device's outcome is delivered once. Its route (callback and user
//! data) is taken out of the table under a lock, either by the event thread (which then
//! calls the callback) or by the handle's release (which then knows no callback will come);
//! a release that finds the route gone waits until the event thread has finished with it,
//! unless it runs on the event thread itself. A release that ends in a loss leaves the
//! route to the event thread and waits for its callback.

use crate::boundary::Loss;
use crate::result::mmp_result;
use crate::types::{
    MMP_EVENT_ACQUIRE_DONE, MMP_EVENT_LOST, MMP_EVENT_PROGRESS, mmp_loss_info, mmp_phase,
    mmp_progress,
};
use mmp_core::machine::{Event, Layout, Machine, Outcome};
use mmp_linux::engine::{self, Engine, EngineEvent, Report, SlotId};
use mmp_linux::target::{Format, Target};
use mmp_linux::watchdog::Watchdog;
use std::cell::Cell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, mpsc};

/// State one heartbeating handle shares with the event thread.
#[derive(Default)]
pub(crate) struct Shared {
    /// Put on the engine by `mmp_device_acquire_start`: the engine runs the acquire. Until
    /// `acquired`, the event thread reports its progress and its end
    /// (`MMP_EVENT_PROGRESS`, `MMP_EVENT_ACQUIRE_DONE`), never a loss.
    pub(crate) started: bool,
    /// The device is held (from the start for `mmp_device_start_heartbeat`).
    pub(crate) acquired: AtomicBool,
    /// `mmp_device_acquire_finish` took the started acquire's result.
    pub(crate) taken: AtomicBool,
    /// A started acquire's latest progress, and when it was reported.
    progress: Mutex<Option<(mmp_progress, std::time::Instant)>>,
    /// The outcome the engine reported (`Lost` or `Released`).
    outcome: Mutex<Option<Outcome>>,
    /// The engine stopped without reporting an outcome (its thread died).
    pub(crate) stopped: AtomicBool,
    /// A release is under way: an ending engine is expected.
    pub(crate) releasing: AtomicBool,
    /// The event thread is done with this device's route.
    delivered: Mutex<bool>,
    delivered_cv: Condvar,
}

impl Shared {
    /// A device already held (`mmp_device_start_heartbeat`).
    pub(crate) fn held() -> Self {
        let s = Shared::default();
        s.acquired.store(true, Ordering::SeqCst);
        s
    }

    /// A device whose acquire the engine runs (`mmp_device_acquire_start`).
    pub(crate) fn starting() -> Self {
        Shared {
            started: true,
            ..Shared::default()
        }
    }

    /// Whether `mmp_device_acquire_finish` took the started acquire's result.
    pub(crate) fn taken(&self) -> bool {
        self.taken.load(Ordering::SeqCst)
    }

    /// A started acquire's progress now: the wait's time left counted down by the clock.
    pub(crate) fn progress(&self) -> mmp_progress {
        let p = *self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        match p {
            Some((mut p, at)) => {
                let gone = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                p.remaining_ms = p.remaining_ms.saturating_sub(gone);
                p
            }
            None => mmp_progress {
                phase: mmp_phase::Reading,
                remaining_ms: 0,
                total_ms: 0,
            },
        }
    }

    fn set_progress(&self, phase: mmp_phase, remaining_ms: u64, total_ms: u64) {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner) = Some((
            mmp_progress {
                phase,
                remaining_ms,
                total_ms,
            },
            std::time::Instant::now(),
        ));
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_delivered(&self) {
        *self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.delivered_cv.notify_all();
    }

    fn wait_delivered(&self) {
        let mut d = self
            .delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while !*d {
            d = self
                .delivered_cv
                .wait(d)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What the event thread needs to deliver one device's outcome.
pub(crate) struct Route {
    pub(crate) shared: Arc<Shared>,
    /// The handle's event queue (`mmp_device_event_fd`).
    pub(crate) events: Arc<Events>,
    pub(crate) loss: Loss,
    pub(crate) format: Format,
    pub(crate) layout: Layout,
    /// A started acquire: the handle's cancel flags, which the event thread turns into a
    /// release of the slot (`mmp_device_cancel` itself takes no lock).
    pub(crate) cancel: Option<CancelFlags>,
}

/// The cancel flags of a handle whose acquire runs on the engine.
pub(crate) struct CancelFlags {
    /// Set by `mmp_device_cancel`.
    flag: Arc<AtomicBool>,
    /// The acquire runs (cancel applies only then).
    in_flight: Arc<AtomicBool>,
    /// The release of the slot was sent to the engine.
    sent: bool,
}

/// Routes that carry [`CancelFlags`]: while there are none, the event thread sleeps until
/// the next engine event instead of looking for cancels every [`CANCEL_POLL`].
static WATCHED_CANCELS: AtomicUsize = AtomicUsize::new(0);

impl Drop for CancelFlags {
    fn drop(&mut self) {
        WATCHED_CANCELS.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CancelFlags {
    /// The flags of a handle whose acquire is about to start on the engine.
    pub(crate) fn new(flag: &Arc<AtomicBool>, in_flight: &Arc<AtomicBool>) -> Self {
        WATCHED_CANCELS.fetch_add(1, Ordering::SeqCst);
        CancelFlags {
            flag: Arc::clone(flag),
            in_flight: Arc::clone(in_flight),
            sent: false,
        }
    }

    /// The acquire ended: later cancels do nothing.
    fn end(&self) {
        self.in_flight.store(false, Ordering::SeqCst);
        self.flag.store(false, Ordering::SeqCst);
    }
}

/// The routes of the engine's devices, by slot index. Each entry keeps its device's
/// [`SlotId`]: once a slot is reused, a late event of its earlier device finds no route.
#[derive(Default)]
pub(crate) struct RouteTable(Vec<Option<(SlotId, Route)>>);

impl RouteTable {
    fn put(&mut self, id: SlotId, route: Route) {
        let i = id.index();
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some((id, route));
    }

    fn get_mut(&mut self, id: SlotId) -> Option<&mut Route> {
        match self.0.get_mut(id.index()) {
            Some(Some((have, route))) if *have == id => Some(route),
            _ => None,
        }
    }

    fn take(&mut self, id: SlotId) -> Option<Route> {
        let entry = self.0.get_mut(id.index())?;
        if entry.as_ref().is_some_and(|(have, _)| *have == id) {
            entry.take().map(|(_, r)| r)
        } else {
            None
        }
    }

    /// Every route, emptying the table.
    fn drain(&mut self) -> impl Iterator<Item = Route> + '_ {
        self.0.iter_mut().filter_map(|e| e.take().map(|(_, r)| r))
    }
}

type Routes = Arc<Mutex<RouteTable>>;

/// A loss or state change to report through a handle's event descriptor
/// (`MMP_EVENT_*` bits).
pub(crate) struct Events {
    /// The eventfd, created by the first `mmp_device_event_fd`.
    fd: OnceLock<OwnedFd>,
    /// Events not read yet.
    pending: AtomicU32,
    /// The details of the last loss, until read.
    loss: Mutex<Option<mmp_loss_info>>,
}

impl Events {
    pub(crate) fn new() -> Self {
        Events {
            fd: OnceLock::new(),
            pending: AtomicU32::new(0),
            loss: Mutex::new(None),
        }
    }

    /// Queues `bits` (with the loss details, if any) and makes the descriptor readable.
    pub(crate) fn post(&self, bits: u32, loss: Option<mmp_loss_info>) {
        if let Some(l) = loss {
            *self.loss.lock().unwrap_or_else(PoisonError::into_inner) = Some(l);
        }
        self.pending.fetch_or(bits, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(fd) = self.fd.get() {
            // An eventfd counter only overflows after 2^64 - 2 writes; a full one is
            // readable anyway, which is all that matters.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// The descriptor, created on first use (non-blocking, close-on-exec).
    pub(crate) fn fd(&self) -> Result<BorrowedFd<'_>, mmp_result> {
        if self.fd.get().is_none() {
            use rustix::event::{EventfdFlags, eventfd};
            let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(|e| {
                crate::result::note_errno(e.raw_os_error());
                mmp_result::Io
            })?;
            // Two threads may race here: the loser's descriptor is closed.
            let _ = self.fd.set(fd);
            if self.pending.load(Ordering::SeqCst) != 0 {
                self.wake();
            }
        }
        Ok(self.fd.get().ok_or(mmp_result::Io)?.as_fd())
    }

    /// Drains the descriptor and returns the pending events and the last loss.
    pub(crate) fn take(&self) -> (u32, Option<mmp_loss_info>) {
        if let Some(fd) = self.fd.get() {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(fd, &mut buf);
        }
        let bits = self.pending.swap(0, Ordering::SeqCst);
        let loss = self
            .loss
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        (bits, loss)
    }
}

/// What status needs of the engine's report, refreshed at most every [`LITE_MAX_AGE`].
struct Lite {
    at: std::time::Instant,
    /// Per slot: its device, whether that ended (outcome or forgotten), and the end of its
    /// lease.
    slots: Vec<(SlotId, bool, Option<mmp_core::time::Instant>)>,
}

/// How stale the lease view that status reads may be. Status computes `owned` from it with
/// a fresh clock, so staleness only makes it report a loss a little late, never an
/// ownership that ended (a lease only grows while the device is held).
const LITE_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(5);

/// The shared engine and the routes of its devices (indexed by engine slot).
pub(crate) struct Hub {
    engine: Mutex<Engine>,
    routes: Routes,
    /// The process that started the engine: its threads exist only there.
    pid: u32,
    /// The lease view for status (see [`Lite`]): status never locks the engine's report
    /// more often than every [`LITE_MAX_AGE`], whatever the number of threads polling it.
    lite: Mutex<Arc<Lite>>,
    refreshing: AtomicBool,
}

/// The hubs started in this process and its ancestors (a `fork()` child inherits its
/// parent's, whose threads do not exist in the child): each process uses only the one it
/// started itself. Leaked on purpose: a hub lives as long as its process.
static HUBS: Mutex<Vec<&'static Hub>> = Mutex::new(Vec::new());

thread_local! {
    /// On the event thread during a loss callback: the address of that device's
    /// [`Shared`] (0 elsewhere). A plain `Cell` rather than `std::thread::current()`, which
    /// allocates a handle for the caller's thread that is never freed (valgrind reports it).
    static CALLBACK_OF: Cell<usize> = const { Cell::new(0) };
    /// This thread is the event thread.
    static IS_EVENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is the event thread (where a call must not wait for a
/// handle's lock: the holder may be waiting for this thread).
pub(crate) fn on_event_thread() -> bool {
    IS_EVENT_THREAD.get()
}

/// Whether the current thread is inside the loss callback of the device sharing `shared`.
pub(crate) fn in_callback_of(shared: &Arc<Shared>) -> bool {
    CALLBACK_OF.get() == Arc::as_ptr(shared).addr()
}

impl Hub {
    /// This process's hub, started on first use in this process (also in a `fork()` child
    /// of a process that had one); [`mmp_result::Io`] if its threads cannot be created.
    pub(crate) fn get(realtime: bool) -> Result<&'static Hub, mmp_result> {
        let mut hubs = HUBS.lock().unwrap_or_else(PoisonError::into_inner);
        let me = std::process::id();
        if let Some(h) = hubs.iter().find(|h| h.pid == me) {
            return Ok(h);
        }
        let hub: &'static Hub = Box::leak(Box::new(Hub::start(realtime).ok_or(mmp_result::Io)?));
        hubs.push(hub);
        Ok(hub)
    }

    /// This process's hub, if a heartbeat ever started in it.
    pub(crate) fn existing() -> Option<&'static Hub> {
        let me = std::process::id();
        HUBS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|h| h.pid == me)
            .copied()
    }

    /// Whether the slot's lease still runs at `now` (see [`Lite`]): `None` while the
    /// engine has not reported the slot yet.
    pub(crate) fn slot_owned(&self, slot: SlotId, now: mmp_core::time::Instant) -> Option<bool> {
        let mut lite = Arc::clone(&self.lite.lock().unwrap_or_else(PoisonError::into_inner));
        if lite.at.elapsed() >= LITE_MAX_AGE && !self.refreshing.swap(true, Ordering::SeqCst) {
            let at = std::time::Instant::now();
            let slots = self
                .report()
                .slots
                .iter()
                .map(|s| (s.id, s.outcome.is_some() || s.forgotten, s.owned_until))
                .collect();
            lite = Arc::new(Lite { at, slots });
            *self.lite.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&lite);
            self.refreshing.store(false, Ordering::SeqCst);
        }
        lite.slots
            .get(slot.index())
            .filter(|&&(id, ..)| id == slot)
            .map(|&(_, ended, until)| !ended && until.is_none_or(|t| now < t))
    }

    // Never inlined: `tests/c/valgrind.supp` names this frame to suppress the thread-local
    // storage of the hub's threads, which live until the process exits.
    #[inline(never)]
    fn start(realtime: bool) -> Option<Hub> {
        let (tx, rx) = mpsc::channel::<EngineEvent>();
        let routes: Routes = Arc::default();
        let thread_routes = Arc::clone(&routes);
        std::thread::Builder::new()
            .name("mmp-events".into())
            .spawn(move || event_loop(&rx, &thread_routes))
            .ok()?;
        let engine = Engine::start(
            engine::Options {
                realtime,
                ..engine::Options::from_env()
            },
            tx,
        );
        Some(Hub {
            engine: Mutex::new(engine),
            routes,
            pid: std::process::id(),
            lite: Mutex::new(Arc::new(Lite {
                // Stale from the start: the first status refreshes it.
                at: std::time::Instant::now()
                    .checked_sub(LITE_MAX_AGE)
                    .unwrap_or_else(std::time::Instant::now),
                slots: Vec::new(),
            })),
            refreshing: AtomicBool::new(false),
        })
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a held machine on the engine; returns its slot.
    pub(crate) fn add(&self, target: Target, machine: Machine, route: Route) -> SlotId {
        // The routes lock is held across the add, so the event thread cannot see the
        // device's first event before its route is in place.
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = self.engine().add(target, machine);
        routes.put(slot, route);
        slot
    }

    /// Whether the engine thread runs.
    pub(crate) fn is_running(&self) -> bool {
        self.engine().is_running()
    }

    /// The latest report of the engine.
    pub(crate) fn report(&self) -> Report {
        self.engine().report()
    }

    /// Releases `slot` (CLEAN only if the block is still what this host wrote), waits for
    /// its outcome and for any loss callback in progress for it, and returns the outcome
    /// (`None` if the engine died first). The engine may then reuse the slot.
    pub(crate) fn finish(&self, slot: SlotId, shared: &Arc<Shared>) -> Option<Outcome> {
        shared.releasing.store(true, Ordering::SeqCst);
        self.engine().release(slot);
        let outcome = loop {
            // The report, not the event thread: the caller may be on the event thread, in
            // another device's loss callback.
            let r = self.report();
            if let Some(o) = r.slot(slot).and_then(|s| s.outcome) {
                break Some(o);
            }
            if !self.engine().is_running() {
                break shared.outcome();
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        if matches!(outcome, Some(Outcome::Lost(_))) && !IS_EVENT_THREAD.get() {
            // Lost during the release (the block changed, or could not be verified): the
            // event thread calls the loss callback; wait until it has.
            shared.wait_delivered();
        } else {
            self.settle_route(slot, shared);
        }
        // Its route is gone and its outcome known: the slot may serve another device.
        self.engine().remove(slot);
        outcome
    }

    /// Stops driving `slot` without writing anything more (poisoned handles); the engine
    /// may then reuse the slot.
    pub(crate) fn forget(&self, slot: SlotId, shared: &Arc<Shared>) {
        shared.releasing.store(true, Ordering::SeqCst);
        self.engine().forget(slot);
        self.settle_route(slot, shared);
        self.engine().remove(slot);
    }

    /// After this, no callback for `slot` runs or will run (see the module docs).
    fn settle_route(&self, slot: SlotId, shared: &Arc<Shared>) {
        let taken = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(slot);
        if taken.is_none() && !IS_EVENT_THREAD.get() {
            shared.wait_delivered();
        }
    }

    /// Arms a process-wide watchdog (see `mmp_watchdog_arm`).
    pub(crate) fn arm_watchdog(&self, wd: Watchdog) {
        self.engine().arm_watchdog(wd);
    }

    /// Closes the watchdog (magic close if nothing was lost).
    pub(crate) fn disarm_watchdog(&self) {
        self.engine().disarm_watchdog();
    }
}

/// The event thread: delivers each device's outcome once (see the module docs), reports the
/// progress and end of acquires the engine runs for `mmp_device_acquire_start`, and turns
/// their cancel flags into releases (at most [`CANCEL_POLL`] late); if the engine thread ends
/// (it never does unless it dies), every device still routed is reported as stopped.
fn event_loop(rx: &mpsc::Receiver<EngineEvent>, routes: &Mutex<RouteTable>) {
    IS_EVENT_THREAD.set(true);
    let take = |slot: SlotId| {
        routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(slot)
    };
    let mut last_scan = std::time::Instant::now();
    loop {
        if last_scan.elapsed() >= CANCEL_POLL {
            last_scan = std::time::Instant::now();
            send_cancels(routes);
        }
        // Without started acquires, nothing to look for: wait for the next event (a started
        // acquire's first read produces one at once, and from then on this polls).
        let wait = if WATCHED_CANCELS.load(Ordering::SeqCst) > 0 {
            CANCEL_POLL
        } else {
            IDLE_WAIT
        };
        match rx.recv_timeout(wait) {
            Ok(EngineEvent {
                slot,
                event: Event::Finished(o),
            }) => {
                let Some(route) = take(slot) else { continue };
                *route
                    .shared
                    .outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(o);
                if route.shared.started && !route.shared.acquired.load(Ordering::SeqCst) {
                    // A started acquire that ended without holding: its result, not a loss.
                    if let Some(c) = &route.cancel {
                        c.end();
                    }
                    route.shared.set_progress(mmp_phase::Done, 0, 0);
                    route.events.post(MMP_EVENT_ACQUIRE_DONE, None);
                } else if let Outcome::Lost(l) = o {
                    let info = mmp_loss_info::from_loss(route.format, &route.layout, &l);
                    route.events.post(MMP_EVENT_LOST, Some(info));
                    CALLBACK_OF.set(Arc::as_ptr(&route.shared).addr());
                    route.loss.call(&info);
                    CALLBACK_OF.set(0);
                }
                route.shared.set_delivered();
            }
            Ok(EngineEvent {
                slot,
                event: event @ (Event::Acquired | Event::Progress { .. }),
            }) => {
                let mut routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(route) = routes.get_mut(slot) else {
                    continue;
                };
                if !route.shared.started || route.shared.acquired.load(Ordering::SeqCst) {
                    continue;
                }
                match event {
                    Event::Progress {
                        phase,
                        remaining,
                        total,
                    } => {
                        route
                            .shared
                            .set_progress(phase.into(), millis(remaining), millis(total));
                        route.events.post(MMP_EVENT_PROGRESS, None);
                    }
                    // A cancel already sent wins: the engine releases the device, and the
                    // acquire ends with that (reported as cancelled).
                    _ if route.cancel.as_ref().is_some_and(|c| c.sent) => {}
                    _ => {
                        route.shared.acquired.store(true, Ordering::SeqCst);
                        // Held: a later cancel (of another call on the handle) must never
                        // release this device.
                        if let Some(c) = route.cancel.take() {
                            c.end();
                        }
                        route.shared.set_progress(mmp_phase::Held, 0, 0);
                        route.events.post(MMP_EVENT_ACQUIRE_DONE, None);
                    }
                }
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let all: Vec<Route> = routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain()
                    .collect();
                for route in all {
                    if route.shared.outcome().is_none() {
                        route.shared.stopped.store(true, Ordering::SeqCst);
                        if let Some(c) = &route.cancel {
                            c.end();
                        }
                        if route.shared.started && !route.shared.acquired.load(Ordering::SeqCst) {
                            route.events.post(MMP_EVENT_ACQUIRE_DONE, None);
                        } else if !route.shared.releasing.load(Ordering::SeqCst) {
                            let info = mmp_loss_info::stopped(route.format);
                            route.events.post(MMP_EVENT_LOST, Some(info));
                            CALLBACK_OF.set(Arc::as_ptr(&route.shared).addr());
                            route.loss.call(&info);
                            CALLBACK_OF.set(0);
                        }
                    }
                    route.shared.set_delivered();
                }
                return;
            }
        }
    }
}

/// How often the event thread looks for cancelled acquires (`mmp_device_cancel` promises
/// 50 ms).
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// How long the event thread sleeps without started acquires (an engine event wakes it).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

fn millis(d: core::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Releases (aborts) every started acquire whose handle was cancelled while it ran.
fn send_cancels(routes: &Mutex<RouteTable>) {
    let mut slots = Vec::new();
    for (slot, route) in routes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .0
        .iter_mut()
        .flatten()
    {
        if let Some(c) = route.cancel.as_mut()
            && !c.sent
            && c.in_flight.load(Ordering::SeqCst)
            && c.flag.load(Ordering::SeqCst)
        {
            c.sent = true;
            slots.push(*slot);
        }
    }
    if slots.is_empty() {
        return;
    }
    if let Some(hub) = Hub::existing() {
        for slot in slots {
            hub.engine().release(slot);
        }
    }
}
