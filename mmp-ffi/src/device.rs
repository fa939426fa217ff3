//! The Rust side of `struct mmp_device`: one open device, what it holds, and the heartbeat
//! engine plus event thread once the heartbeat runs. Safe code only; C pointers and
//! callbacks arrive through [`crate::boundary`].
//!
//! Every operation is the one the CLI performs (`mmp-cli/src/{main,hold,tune}.rs`): the
//! protocol is `mmp_core::machine::Machine`, driven by `mmp_core::sys::driver` on the
//! caller's thread and by `mmp_core::sys::engine` once the heartbeat starts.

use crate::boundary::{Loss, Progress};
use crate::result::{mmp_result, outcome_result};
use crate::types::{
    MMP_OPEN_ALL, MMP_OPEN_READ_ONLY, MMP_OPEN_REALTIME, mmp_loss_info, mmp_status,
};
use mmp_core::machine::{Config, Event, Identity, Layout, Machine, Op, Outcome, parse};
use mmp_core::sys::blockdev::Device;
use mmp_core::sys::engine::{self, Engine, EngineEvent};
use mmp_core::sys::target::{self, Format, Target};
use mmp_core::sys::{clock, driver, hostid};
use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::thread::JoinHandle;

/// Who the handle acts as: an explicit identity, or `None` to resolve it as the CLI does
/// (hostid from `MMP_HOSTID`, else `/etc/hostid`; node name from `uname`).
pub(crate) struct IdentityArg {
    /// The hostid.
    pub(crate) hostid: u32,
    /// The node name, or `None` for `uname`'s.
    pub(crate) nodename: Option<Vec<u8>>,
}

/// One open device. Shared by reference between overlapping calls; the state sits behind a
/// mutex that calls only `try_lock`, so misuse gives [`mmp_result::Busy`], never a race.
pub(crate) struct Handle {
    inner: Mutex<Inner>,
    /// Set by `mmp_device_cancel`; read by waits in check and acquire.
    cancel: AtomicBool,
    /// Set when a call panicked: every later call returns [`mmp_result::Poisoned`].
    poisoned: AtomicBool,
}

// C may use a handle from any thread (one call at a time) and the loss callback's thread
// shares it: the state must be movable and shareable.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Handle>();
};

/// The state of a handle.
pub(crate) struct Inner {
    path: PathBuf,
    writable: bool,
    realtime: bool,
    identity: Identity,
    /// Why the hostid could not be resolved (reported by acquiring calls, as the CLI does).
    hostid_error: Option<mmp_result>,
    target: Target,
    hold: Hold,
}

/// What the handle holds.
enum Hold {
    /// Nothing.
    Idle,
    /// Acquired on the caller's thread; heartbeats not started yet.
    Acquired(Box<Machine>),
    /// On the heartbeat engine.
    Beating(Heartbeat),
}

/// The heartbeat engine running one device, and the event thread that reads its events.
struct Heartbeat {
    engine: Option<Engine>,
    events: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// State shared with the event thread.
#[derive(Default)]
struct Shared {
    /// The outcome the engine reported (`Lost` or `Released`).
    outcome: Mutex<Option<Outcome>>,
    /// The engine ended without reporting an outcome.
    stopped: AtomicBool,
    /// A release is under way: the engine ending is expected.
    releasing: AtomicBool,
}

impl Shared {
    fn outcome(&self) -> Option<Outcome> {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

thread_local! {
    /// On an event thread: the address of its handle's [`Shared`] (0 elsewhere). A plain
    /// `Cell` rather than `std::thread::current()`, which allocates a handle for the
    /// caller's thread that is never freed (valgrind reports it).
    static EVENT_THREAD_OF: Cell<usize> = const { Cell::new(0) };
}

/// Whether the current thread is the event thread of the heartbeat sharing `shared`.
fn on_event_thread(shared: &Arc<Shared>) -> bool {
    EVENT_THREAD_OF.get() == Arc::as_ptr(shared).addr()
}

impl Heartbeat {
    /// Stops the engine, releasing the device (CLEAN only if the block is still ours), and
    /// waits for the event thread. Returns the device's outcome.
    fn finish(&mut self) -> Option<Outcome> {
        self.shared.releasing.store(true, Ordering::SeqCst);
        let report = self.engine.take().map(Engine::shutdown);
        if let Some(t) = self.events.take() {
            if on_event_thread(&self.shared) {
                // Freed from its own loss callback: the thread ends by itself once the
                // callback returns (the engine is gone, so its channel is closed).
                drop(t);
            } else {
                let _ = t.join();
            }
        }
        report
            .and_then(|r| r.slots.first().and_then(|s| s.outcome))
            .or_else(|| self.shared.outcome())
    }

    /// Stops heartbeating without releasing: what a crash looks like to other hosts.
    fn abandon(&mut self) {
        self.shared.releasing.store(true, Ordering::SeqCst);
        if let Some(e) = self.engine.take() {
            e.abandon();
        }
        if let Some(t) = self.events.take()
            && !on_event_thread(&self.shared)
        {
            let _ = t.join();
        }
    }

    fn owned(&self) -> bool {
        if self.shared.stopped.load(Ordering::SeqCst) || self.shared.outcome().is_some() {
            return false;
        }
        let Some(engine) = &self.engine else {
            return false;
        };
        // Before the engine's first pass the report has no slot yet: still held.
        engine
            .report()
            .slots
            .first()
            .is_none_or(|s| s.outcome.is_none())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn progress_event(progress: &Progress, e: &Event) {
    if let Event::Progress {
        phase,
        remaining,
        total,
    } = *e
    {
        let ms = |d: core::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        progress.call(phase.into(), ms(remaining), ms(total));
    }
}

impl Handle {
    /// Opens `path` (bytes, not necessarily UTF-8) and detects its MMP layout.
    pub(crate) fn open(
        path: &[u8],
        identity: Option<IdentityArg>,
        flags: u32,
    ) -> Result<Handle, mmp_result> {
        if flags & !MMP_OPEN_ALL != 0 || path.is_empty() {
            return Err(mmp_result::InvalidParameter);
        }
        let path = PathBuf::from(OsStr::from_bytes(path));
        let writable = flags & MMP_OPEN_READ_ONLY == 0;
        let (hostid, hostid_error, nodename) = match identity {
            Some(id) => (id.hostid, None, id.nodename.unwrap_or_else(clock::nodename)),
            None => match hostid::resolve(None) {
                Ok(h) => (h.value, None, clock::nodename()),
                Err(e) => (0, Some(mmp_result::from(&e)), clock::nodename()),
            },
        };
        if nodename.is_empty() {
            return Err(mmp_result::InvalidParameter);
        }
        let target = target::open(&path, writable).map_err(|e| mmp_result::from(&e))?;
        let identity = Identity::new(hostid, &nodename, path.as_os_str().as_bytes());
        Ok(Handle {
            inner: Mutex::new(Inner {
                path,
                writable,
                realtime: flags & MMP_OPEN_REALTIME != 0,
                identity,
                hostid_error,
                target,
                hold: Hold::Idle,
            }),
            cancel: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the state: [`mmp_result::Poisoned`] after an earlier panic,
    /// [`mmp_result::Busy`] while another call runs, and a panic in `f` poisons the handle
    /// (it stops heartbeating without writing CLEAN) and returns [`mmp_result::Panic`].
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Inner, &Handle) -> Result<T, mmp_result>,
    ) -> Result<T, mmp_result> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(mmp_result::Poisoned);
        }
        let mut guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => return Err(mmp_result::Busy),
            Err(TryLockError::Poisoned(_)) => return Err(mmp_result::Poisoned),
        };
        match catch_unwind(AssertUnwindSafe(|| f(&mut guard, self))) {
            Ok(r) => r,
            Err(_) => {
                self.poisoned.store(true, Ordering::SeqCst);
                // A node that panicked mid-protocol no longer trusts that it owns the
                // device: stop heartbeating, write nothing more.
                let _ = catch_unwind(AssertUnwindSafe(|| guard.abandon()));
                Err(mmp_result::Panic)
            }
        }
    }

    /// Asks the check or acquire running on this handle (or the next one) to stop.
    /// Lock-free, so it works from any thread while the call runs.
    pub(crate) fn cancel(&self) -> Result<(), mmp_result> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(mmp_result::Poisoned);
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl Inner {
    fn snapshot_status(&self, snap: &mmp_core::machine::Snapshot, owned: bool) -> mmp_status {
        mmp_status::from_snapshot(self.target.format, &self.target.layout, snap, owned)
    }

    fn config(&self) -> Config {
        Config::new(self.target.layout, self.identity, clock::random_seed())
    }

    fn owned(&self) -> bool {
        match &self.hold {
            Hold::Idle => false,
            Hold::Acquired(m) => m.is_owner(clock::now().mono),
            Hold::Beating(hb) => hb.owned(),
        }
    }

    fn require_idle(&self) -> Result<(), mmp_result> {
        match self.hold {
            Hold::Idle => Ok(()),
            _ => Err(mmp_result::AlreadyHeld),
        }
    }

    fn require_writable(&self) -> Result<(), mmp_result> {
        if self.writable {
            Ok(())
        } else {
            Err(mmp_result::ReadOnly)
        }
    }

    /// One read of the record: never writes, never waits.
    pub(crate) fn status(&mut self) -> Result<mmp_status, mmp_result> {
        let raw = self
            .target
            .read_record()
            .map_err(|e| mmp_result::from(&e))?;
        let snap = parse(&self.target.layout, &raw).map_err(|_| mmp_result::Corrupt)?;
        Ok(self.snapshot_status(&snap, self.owned()))
    }

    /// Runs `m` on the caller's thread until it settles, reporting progress, honouring
    /// `mmp_device_cancel`.
    fn settle(&self, m: &mut Machine, handle: &Handle, progress: &Progress) -> Option<Outcome> {
        let out = driver::run_until_settled(m, &self.target.device, &handle.cancel, &mut |e| {
            progress_event(progress, e);
        });
        handle.cancel.store(false, Ordering::SeqCst);
        out
    }

    /// The activity test (read-only): the status of the block when it is safe to take.
    pub(crate) fn check(
        &mut self,
        handle: &Handle,
        progress: &Progress,
    ) -> Result<mmp_status, mmp_result> {
        self.require_idle()?;
        let mut m = Machine::new(self.config(), Op::Check, clock::now());
        match self.settle(&mut m, handle, progress) {
            Some(Outcome::Safe { snapshot, .. }) => Ok(self.snapshot_status(&snapshot, false)),
            None => Err(mmp_result::Io),
            other => Err(outcome_result(other)),
        }
    }

    /// Acquires the device on the caller's thread.
    pub(crate) fn acquire(
        &mut self,
        handle: &Handle,
        force: bool,
        progress: &Progress,
    ) -> Result<(), mmp_result> {
        self.require_writable()?;
        self.require_idle()?;
        if let Some(e) = self.hostid_error {
            return Err(e);
        }
        let mut cfg = self.config();
        cfg.force = force;
        let mut m = Machine::new(cfg, Op::Acquire, clock::now());
        match self.settle(&mut m, handle, progress) {
            None if m.is_held() => {
                self.hold = Hold::Acquired(Box::new(m));
                Ok(())
            }
            None => Err(mmp_result::Io),
            Some(o) => Err(outcome_result(Some(o))),
        }
    }

    /// Moves the held machine onto a heartbeat engine; `loss` runs on the event thread.
    pub(crate) fn start_heartbeat(&mut self, loss: Loss) -> Result<(), mmp_result> {
        let m = match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Acquired(m) => m,
            Hold::Idle => return Err(mmp_result::NotHeld),
            beating @ Hold::Beating(_) => {
                self.hold = beating;
                return Err(mmp_result::AlreadyHeld);
            }
        };
        if !m.is_owner(clock::now().mono) {
            // Too late: the lease ran out before the heartbeat started. Nothing more is
            // written; the machine is dropped.
            return Err(mmp_result::Lost);
        }
        // The engine gets its own descriptor; the handle keeps its own for status reads.
        let device = match Device::open(&self.path, true) {
            Ok(d) => d,
            Err(e) => {
                self.hold = Hold::Acquired(m);
                return Err(mmp_result::from(&e));
            }
        };
        let format = self.target.format;
        let layout = self.target.layout;
        let engine_target = Target {
            device,
            layout,
            format,
            superblock: self.target.superblock,
            superblock_bytes: None,
        };
        let (tx, rx) = mpsc::channel::<EngineEvent>();
        let mut engine = Engine::start(
            engine::Options {
                realtime: self.realtime,
                watchdog: None,
                faults: Box::new(driver::EnvFaults::from_env()),
                // One device per handle: nothing to batch.
                batch_io: false,
            },
            tx,
        );
        engine.add(engine_target, *m);
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("mmp-events".into())
            .spawn(move || {
                EVENT_THREAD_OF.set(Arc::as_ptr(&thread_shared).addr());
                event_loop(&rx, &thread_shared, &loss, format, &layout);
            });
        let events = match spawned {
            Ok(t) => t,
            Err(_) => {
                // Without the event thread nobody would report a loss: give the device up.
                shared.releasing.store(true, Ordering::SeqCst);
                let _ = engine.shutdown();
                return Err(mmp_result::Io);
            }
        };
        self.hold = Hold::Beating(Heartbeat {
            engine: Some(engine),
            events: Some(events),
            shared,
        });
        Ok(())
    }

    /// Releases the device: CLEAN is written only if the block still holds what this host
    /// last wrote.
    pub(crate) fn release(&mut self) -> Result<(), mmp_result> {
        if let Hold::Beating(hb) = &self.hold
            && on_event_thread(&hb.shared)
        {
            return Err(mmp_result::InCallback);
        }
        let outcome = match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Idle => return Err(mmp_result::NotHeld),
            Hold::Acquired(mut m) => {
                m.release(clock::now());
                let never = AtomicBool::new(false);
                driver::run_until_settled(&mut m, &self.target.device, &never, &mut |_| {})
            }
            Hold::Beating(mut hb) => hb.finish(),
        };
        match outcome {
            Some(Outcome::Released) => Ok(()),
            // The heartbeat ended without an outcome: nothing can be assumed.
            None => Err(mmp_result::Lost),
            other => Err(outcome_result(other)),
        }
    }

    /// The operator's forced reset to CLEAN, without an activity test.
    pub(crate) fn clear(&mut self, handle: &Handle) -> Result<(), mmp_result> {
        self.require_writable()?;
        self.require_idle()?;
        let mut cfg = self.config();
        cfg.force = true;
        let mut m = Machine::new(cfg, Op::Clear, clock::now());
        match self.settle(&mut m, handle, &Progress::none()) {
            Some(Outcome::Cleared) => Ok(()),
            None => Err(mmp_result::Io),
            other => Err(outcome_result(other)),
        }
    }

    /// Poisoning: forget the device without writing anything more.
    fn abandon(&mut self) {
        match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Idle | Hold::Acquired(_) => {}
            Hold::Beating(mut hb) => {
                hb.abandon();
                // `hb` is dropped here; `finish` finds nothing left to stop.
            }
        }
    }
}

impl Drop for Inner {
    /// `mmp_device_free` releases whatever is still held, as `mmp_device_release` would.
    fn drop(&mut self) {
        if !matches!(self.hold, Hold::Idle) {
            let _ = self.release();
        }
    }
}

/// The event thread: forwards the engine's events; calls `loss` on a loss, or when the
/// engine ends without an outcome (a bug) while no release is under way.
fn event_loop(
    rx: &mpsc::Receiver<EngineEvent>,
    shared: &Shared,
    loss: &Loss,
    format: Format,
    layout: &Layout,
) {
    loop {
        match rx.recv() {
            Ok(EngineEvent {
                event: Event::Finished(o),
                ..
            }) => {
                *shared
                    .outcome
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(o);
                if let Outcome::Lost(l) = o {
                    loss.call(&mmp_loss_info::from_loss(format, layout, &l));
                }
            }
            Ok(_) => {}
            Err(mpsc::RecvError) => {
                if shared.outcome().is_none() {
                    shared.stopped.store(true, Ordering::SeqCst);
                    if !shared.releasing.load(Ordering::SeqCst) {
                        loss.call(&mmp_loss_info::stopped(format));
                    }
                }
                return;
            }
        }
    }
}

/// The identity the tune operations use: resolved as the CLI does.
fn env_identity(path: &Path) -> Result<Identity, mmp_result> {
    let h = hostid::resolve(None).map_err(|e| mmp_result::from(&e))?;
    Ok(Identity::new(
        h.value,
        &clock::nodename(),
        path.as_os_str().as_bytes(),
    ))
}

/// Proves with the acquire protocol that no other node uses the device and returns the
/// machine holding it (`mmp-cli/src/tune.rs`, `prove_unused`): force is on because the
/// activity test itself proves a previous owner gone.
fn prove_unused(t: &Target, path: &Path) -> Result<Machine, mmp_result> {
    let mut cfg = Config::new(t.layout, env_identity(path)?, clock::random_seed());
    cfg.force = true;
    let mut m = Machine::new(cfg, Op::Acquire, clock::now());
    let never = AtomicBool::new(false);
    match driver::run_until_settled(&mut m, &t.device, &never, &mut |_| {}) {
        None if m.is_held() => Ok(m),
        None => Err(mmp_result::Io),
        Some(o) => Err(outcome_result(Some(o))),
    }
}

fn release_quietly(mut m: Machine, t: &Target) {
    m.release(clock::now());
    let never = AtomicBool::new(false);
    let _ = driver::run_until_settled(&mut m, &t.device, &never, &mut |_| {});
}

/// `mmp enable`: turns MMP on in an unmounted ext4 file system.
pub(crate) fn ext4_enable(path: &Path, interval_s: u32) -> Result<(), mmp_result> {
    use mmp_core::sys::tune::{self, EnableOptions};
    let interval = u16::try_from(interval_s)
        .ok()
        .filter(|s| (1..=300).contains(s))
        .ok_or(mmp_result::InvalidParameter)?;
    let dev = Device::open(path, true).map_err(|e| mmp_result::from(&e))?;
    let mut opts = EnableOptions::new(
        &clock::nodename(),
        path.as_os_str().as_bytes(),
        clock::now().wall_ms / 1000,
    );
    opts.update_interval_s = interval;
    tune::enable(&dev, &opts).map_err(|e| mmp_result::from(&e))?;
    Ok(())
}

/// `mmp disable`: proves the device unused (unless `force`), then turns MMP off.
pub(crate) fn ext4_disable(path: &Path, force: bool) -> Result<(), mmp_result> {
    use mmp_core::sys::tune;
    let t = target::open(path, true).map_err(|e| mmp_result::from(&e))?;
    tune::preflight(&t.device, tune::Op::Disable).map_err(|e| mmp_result::from(&e))?;
    // Held while the superblock changes; once MMP is off the block is freed, so the machine
    // is dropped without writing to it again (never CLEAN into a freed block).
    let held = if force {
        None
    } else {
        Some(prove_unused(&t, path)?)
    };
    match tune::disable(&t.device) {
        // `held` is simply forgotten: its block is no longer an MMP block.
        Ok(_) => Ok(()),
        Err(e) => {
            if let Some(m) = held {
                release_quietly(m, &t);
            }
            Err(mmp_result::from(&e))
        }
    }
}

/// `mmp set-interval`: proves the device unused, then rewrites the update interval.
pub(crate) fn ext4_set_interval(path: &Path, secs: u32) -> Result<(), mmp_result> {
    use mmp_core::sys::tune;
    let secs = u16::try_from(secs)
        .ok()
        .filter(|s| (1..=300).contains(s))
        .ok_or(mmp_result::InvalidParameter)?;
    let t = target::open(path, true).map_err(|e| mmp_result::from(&e))?;
    tune::preflight(&t.device, tune::Op::SetInterval).map_err(|e| mmp_result::from(&e))?;
    let m = prove_unused(&t, path)?;
    let res = tune::set_interval(&t.device, secs);
    release_quietly(m, &t);
    res.map_err(|e| mmp_result::from(&e))
}

/// `mmp format`: writes a native MMP area, refusing (without `force`) to overwrite a
/// known signature or a native area that is not clean.
pub(crate) fn native_format(
    path: &Path,
    interval_ms: u32,
    fail_intervals: u32,
    force: bool,
) -> Result<(), mmp_result> {
    use mmp_core::sys::area::{self, FormatError};
    match area::format(path, interval_ms, fail_intervals, force) {
        Ok(_) => Ok(()),
        Err(FormatError::BadInterval(_) | FormatError::BadFailIntervals(_)) => {
            Err(mmp_result::InvalidParameter)
        }
        Err(FormatError::TooSmall { .. }) => Err(mmp_result::NotMmp),
        Err(FormatError::Mounted(_)) => Err(mmp_result::Mounted),
        Err(
            FormatError::WouldOverwrite(_) | FormatError::NotClean(_) | FormatError::Unparsable(_),
        ) => Err(mmp_result::WouldOverwrite),
        Err(FormatError::Device(e)) => Err(mmp_result::from(&e)),
    }
}

/// This host's hostid, resolved as the CLI does; [`mmp_result::NoHostid`] when unset.
pub(crate) fn hostid_get() -> Result<u32, mmp_result> {
    let h = hostid::resolve(None).map_err(|e| mmp_result::from(&e))?;
    if h.is_set() {
        Ok(h.value)
    } else {
        Err(mmp_result::NoHostid)
    }
}
