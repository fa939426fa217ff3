//! The Rust side of `struct mmp_device`: one open device, what it holds, and its place on
//! the process's shared heartbeat engine ([`crate::hub`]) once the heartbeat runs. Safe
//! code only; C pointers and callbacks arrive through [`crate::boundary`].
//!
//! Every operation is the one the CLI performs (`mmp-cli/src/{main,hold,tune}.rs`): the
//! protocol is `mmp_core::machine::Machine`, driven by `mmp_linux::driver` on the
//! caller's thread and by `mmp_linux::engine` once the heartbeat starts.

use crate::boundary::{Loss, Progress};
use crate::hub::{CancelFlags, Events, Hub, Route, Shared, in_callback_of, on_event_thread};
use crate::result::{mmp_result, outcome_result};
use crate::types::{
    MMP_OPEN_ALL, MMP_OPEN_READ_ONLY, MMP_OPEN_REALTIME, mmp_error_info, mmp_loss_info, mmp_phase,
    mmp_progress, mmp_status, zeroed_status,
};
use mmp_core::machine::{Config, Event, Identity, Machine, Op, Outcome, Refusal, Snapshot, parse};
use mmp_linux::blockdev::Device;
use mmp_linux::engine::SlotId;
use mmp_linux::procedure::{self, Unproven};
use mmp_linux::target::{self, Target};
use mmp_linux::{clock, driver, fault, hostid};
use std::cell::Cell;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

/// Who the handle acts as: an explicit identity, or `None` to resolve it as the CLI does
/// (hostid from `MMP_HOSTID`, else `/etc/hostid`; node name from `uname`).
pub(crate) struct IdentityArg {
    /// The hostid, or `None` to resolve it as the CLI does.
    pub(crate) hostid: Option<u32>,
    /// The node name, or `None` for `uname`'s.
    pub(crate) nodename: Option<Vec<u8>>,
}

/// One open device. Shared by reference between overlapping calls. The operations take
/// turns on `inner` (a call waits for the one before it; only a re-entry from the holder's
/// own thread, or from the event thread, gets [`mmp_result::Busy`]); `mmp_device_status`
/// never takes that lock: it reads the block through `target` and ownership from `lease`,
/// a small mutex held only to copy a few words.
pub(crate) struct Handle {
    inner: Mutex<Inner>,
    /// The token of the thread holding `inner` (0: none), to refuse re-entry.
    holder: AtomicU64,
    /// The device, its layout and format: never changed after open.
    target: Target,
    /// The process that opened the handle: in any other (a `fork()` child) the handle is
    /// inherited state and owns nothing.
    pid: u32,
    /// What status needs to say whether the handle owns the device.
    lease: Mutex<Lease>,
    /// The last failed call's context (`mmp_device_last_error`).
    last_error: Mutex<mmp_error_info>,
    /// Loss events for `mmp_device_event_fd`.
    pub(crate) events: Arc<Events>,
    /// Set by `mmp_device_cancel` while a check, acquire or clear runs; read by its waits
    /// (and, for an acquire started with `mmp_device_acquire_start`, by the event thread).
    cancel: Arc<AtomicBool>,
    /// A check, acquire or clear runs (cancel applies only then).
    in_flight: Arc<AtomicBool>,
    /// Set when a call panicked: every later call returns [`mmp_result::Poisoned`].
    poisoned: AtomicBool,
}

/// The ownership view status reads, updated by the operations.
#[derive(Clone)]
enum Lease {
    /// Nothing held.
    Idle,
    /// Acquired, not heartbeating: owned until then.
    Until(Option<mmp_core::time::Instant>),
    /// On the heartbeat engine.
    Beating {
        hub: &'static Hub,
        slot: SlotId,
        shared: Arc<Shared>,
    },
}

thread_local! {
    /// This thread's token for [`Handle::holder`] (0 until first used).
    static TOKEN: Cell<u64> = const { Cell::new(0) };
    /// The block behind the refusal the current call returns, if it parsed.
    static REFUSAL_OWNER: Cell<Option<mmp_status>> = const { Cell::new(None) };
}

fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if TOKEN.get() == 0 {
        TOKEN.set(NEXT.fetch_add(1, Ordering::Relaxed));
    }
    TOKEN.get()
}

/// Forgets the context of the previous call on this thread (at the start of every call).
pub(crate) fn begin_call() {
    crate::result::note_errno(0);
    REFUSAL_OWNER.set(None);
}

/// The block that caused a refusal, if it parsed.
fn refusal_snapshot(r: &Refusal) -> Option<Snapshot> {
    match *r {
        Refusal::Fsck(s)
        | Refusal::UnknownSeq(s)
        | Refusal::Maintenance(s)
        | Refusal::Foreign(s)
        | Refusal::Active(Some(s))
        | Refusal::LostRace(Some(s)) => Some(s),
        _ => None,
    }
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
    /// On the heartbeat engine, which runs the acquire started by `mmp_device_acquire_start`
    /// (until `mmp_device_acquire_finish` takes its result).
    Starting(Heartbeat),
}

/// A device on the shared heartbeat engine ([`Hub`]).
struct Heartbeat {
    hub: &'static Hub,
    slot: SlotId,
    shared: Arc<Shared>,
    /// Released or forgotten already.
    done: bool,
}

impl Heartbeat {
    /// Releases the device (CLEAN only if the block is still ours) and returns its
    /// outcome, once no loss callback for it runs any more.
    fn finish(&mut self) -> Option<Outcome> {
        if self.done {
            return self.shared.outcome();
        }
        self.done = true;
        self.hub.finish(self.slot, &self.shared)
    }

    /// Stops heartbeating without releasing: what a crash looks like to other hosts.
    fn abandon(&mut self) {
        if !self.done {
            self.done = true;
            self.hub.forget(self.slot, &self.shared);
        }
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

impl Lease {
    /// Whether the lease runs at `now`, by the clock: also when the heartbeat thread is
    /// stuck or gone, ownership ends with the lease.
    fn owned(&self) -> bool {
        let now = clock::now().mono;
        match self {
            Lease::Idle => false,
            Lease::Until(t) => t.is_some_and(|t| now < t),
            Lease::Beating { hub, slot, shared } => {
                shared.acquired.load(Ordering::SeqCst)
                    && !shared.stopped.load(Ordering::SeqCst)
                    && shared.outcome().is_none()
                    // Before the engine's first report of the slot: just added, held.
                    && hub.slot_owned(*slot, now).unwrap_or(true)
            }
        }
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
        let (explicit, nodename) = match identity {
            Some(id) => (id.hostid, id.nodename.unwrap_or_else(clock::nodename)),
            None => (None, clock::nodename()),
        };
        let (hostid, hostid_error) = match explicit {
            Some(h) => (h, None),
            None => match hostid::resolve(None) {
                Ok(h) => (h.value, None),
                Err(e) => (0, Some(mmp_result::from(&e))),
            },
        };
        if nodename.is_empty() {
            return Err(mmp_result::InvalidParameter);
        }
        let target = target::open(&path, writable).map_err(|e| mmp_result::from(&e))?;
        let identity = Identity::new(hostid, &nodename, path.as_os_str().as_bytes());
        let format = target.format;
        Ok(Handle {
            inner: Mutex::new(Inner {
                path,
                writable,
                realtime: flags & MMP_OPEN_REALTIME != 0,
                identity,
                hostid_error,
                hold: Hold::Idle,
            }),
            holder: AtomicU64::new(0),
            target,
            pid: std::process::id(),
            lease: Mutex::new(Lease::Idle),
            last_error: Mutex::new(mmp_error_info {
                result: mmp_result::Ok as u32,
                os_error: 0,
                owner_valid: false,
                owner: zeroed_status(format),
                owner_age_ms: 0,
            }),
            events: Arc::new(Events::new()),
            cancel: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(AtomicBool::new(false)),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Whether this handle was inherited through `fork()` (this is not the process that
    /// opened it).
    pub(crate) fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// The checks every call on the handle makes first.
    pub(crate) fn usable(&self) -> Result<(), mmp_result> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(mmp_result::Poisoned);
        }
        if self.forked() {
            return Err(mmp_result::Forked);
        }
        Ok(())
    }

    fn set_lease(&self, lease: Lease) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }

    /// Runs `f` on the state, after the call before it on this handle has finished:
    /// [`mmp_result::Poisoned`] after an earlier panic, [`mmp_result::Forked`] in a forked
    /// child, [`mmp_result::Busy`] on a re-entry from the thread that runs a call (its
    /// progress callback) or when the event thread (a loss callback) finds a call running;
    /// a panic in `f` poisons the handle (it stops heartbeating without writing CLEAN) and
    /// returns [`mmp_result::Panic`]. A failure is recorded for `mmp_device_last_error`.
    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Inner, &Handle) -> Result<T, mmp_result>,
    ) -> Result<T, mmp_result> {
        self.usable()?;
        let me = thread_token();
        if self.holder.load(Ordering::SeqCst) == me {
            return Err(mmp_result::Busy);
        }
        let locked = if on_event_thread() {
            // The holder may be a release waiting for this very thread: never wait here.
            match self.inner.try_lock() {
                Ok(g) => Ok(g),
                Err(TryLockError::WouldBlock) => return Err(mmp_result::Busy),
                Err(TryLockError::Poisoned(_)) => Err(()),
            }
        } else {
            self.inner.lock().map_err(|_| ())
        };
        let Ok(mut guard) = locked else {
            return Err(mmp_result::Poisoned);
        };
        // A panic poisoned the handle while this call waited.
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(mmp_result::Poisoned);
        }
        self.holder.store(me, Ordering::SeqCst);
        let r = match catch_unwind(AssertUnwindSafe(|| f(&mut guard, self))) {
            Ok(r) => r,
            Err(_) => {
                self.poisoned.store(true, Ordering::SeqCst);
                // A node that panicked mid-protocol no longer trusts that it owns the
                // device: stop heartbeating, write nothing more.
                let _ = catch_unwind(AssertUnwindSafe(|| guard.abandon()));
                self.set_lease(Lease::Idle);
                Err(mmp_result::Panic)
            }
        };
        if let Err(e) = &r
            && *e != mmp_result::Pending
        {
            self.record_error(*e);
        }
        self.holder.store(0, Ordering::SeqCst);
        r
    }

    /// Records a failed call's context (result, errno, refusing owner).
    fn record_error(&self, e: mmp_result) {
        let owner = REFUSAL_OWNER.get();
        let age = owner.map_or(0, |o| clock::now().wall_ms.saturating_sub(o.time_ms));
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mmp_error_info {
            result: e as u32,
            os_error: crate::result::last_errno(),
            owner_valid: owner.is_some(),
            owner: owner.unwrap_or_else(|| zeroed_status(self.target.format)),
            owner_age_ms: age,
        };
    }

    /// The context of the last failed call (`mmp_device_last_error`).
    pub(crate) fn last_error(&self) -> Result<mmp_error_info, mmp_result> {
        self.usable()?;
        Ok(*self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the check, acquire or clear running on this handle to stop; does nothing when
    /// none runs. Lock-free, so it works from any thread while the call runs and from a
    /// signal handler.
    pub(crate) fn cancel(&self) -> Result<(), mmp_result> {
        self.usable()?;
        if self.in_flight.load(Ordering::SeqCst) {
            self.cancel.store(true, Ordering::SeqCst);
            // The call may have ended between the two loads: never leave the flag set for
            // the next one.
            if !self.in_flight.load(Ordering::SeqCst) {
                self.cancel.store(false, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// One read of the record: never writes, never waits for another call on the handle
    /// (see the type's docs). In a forked child it still reads, and `owned` is false.
    pub(crate) fn status(&self) -> Result<mmp_status, mmp_result> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(mmp_result::Poisoned);
        }
        let raw = self
            .target
            .read_record()
            .map_err(|e| mmp_result::from(&e))?;
        let snap = parse(&self.target.layout, &raw).map_err(|_| mmp_result::Corrupt)?;
        let owned = !self.forked()
            && self
                .lease
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .owned();
        Ok(self.snapshot_status(&snap, owned))
    }

    fn snapshot_status(&self, snap: &Snapshot, owned: bool) -> mmp_status {
        mmp_status::from_snapshot(self.target.format, &self.target.layout, snap, owned)
    }

    /// Maps the outcome of a check or acquire that did not succeed, remembering the
    /// refusing block for `mmp_device_last_error`.
    fn failed(&self, o: Option<Outcome>) -> mmp_result {
        if let Some(Outcome::Refused(r)) = &o
            && let Some(s) = refusal_snapshot(r)
        {
            REFUSAL_OWNER.set(Some(self.snapshot_status(&s, false)));
        }
        match o {
            None => mmp_result::Io,
            other => outcome_result(other),
        }
    }

    /// `mmp_device_event_fd`.
    pub(crate) fn event_fd(&self) -> Result<i32, mmp_result> {
        use std::os::fd::AsRawFd;
        self.usable()?;
        Ok(self.events.fd()?.as_raw_fd())
    }

    /// `mmp_device_acquire_progress`: never waits for another call on the handle.
    pub(crate) fn acquire_progress(&self) -> Result<mmp_progress, mmp_result> {
        self.usable()?;
        match &*self.lease.lock().unwrap_or_else(PoisonError::into_inner) {
            Lease::Beating { shared, .. } if shared.started && !shared.taken() => {
                Ok(shared.progress())
            }
            _ => Err(mmp_result::NotStarted),
        }
    }

    /// `mmp_device_read_events`.
    pub(crate) fn read_events(&self) -> Result<(u32, Option<mmp_loss_info>), mmp_result> {
        self.usable()?;
        Ok(self.events.take())
    }
}

impl Drop for Handle {
    /// `mmp_device_free` releases whatever is still held, as `mmp_device_release` would;
    /// in a forked child it frees the child's copy and writes nothing.
    fn drop(&mut self) {
        let forked = self.forked();
        let poisoned = self.poisoned.load(Ordering::SeqCst);
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        if forked || poisoned {
            inner.forget_inherited();
        } else if !matches!(inner.hold, Hold::Idle) {
            let _ = inner.release(&self.target);
        }
    }
}

impl Inner {
    fn config(&self, t: &Target) -> Config {
        Config::new(t.layout, self.identity, clock::random_seed())
    }

    /// Idle, or an error. A hold whose lease ran out before its heartbeat started is
    /// dropped here, and this call reports it with [`mmp_result::Lost`]: the handle is
    /// idle afterwards.
    fn require_idle(&mut self, h: &Handle) -> Result<(), mmp_result> {
        match &self.hold {
            Hold::Idle => Ok(()),
            Hold::Acquired(m) if !m.is_owner(clock::now().mono) => {
                self.hold = Hold::Idle;
                h.set_lease(Lease::Idle);
                Err(mmp_result::Lost)
            }
            Hold::Starting(_) => Err(mmp_result::Busy),
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

    /// Runs `m` on the caller's thread until it settles, reporting progress, honouring
    /// `mmp_device_cancel` (only while it runs).
    fn settle(m: &mut Machine, h: &Handle, progress: &Progress) -> Option<Outcome> {
        h.cancel.store(false, Ordering::SeqCst);
        h.in_flight.store(true, Ordering::SeqCst);
        let out = driver::run_until_settled(
            m,
            &h.target.device,
            &mut env_faults(),
            &h.cancel,
            &mut |e| {
                progress_event(progress, e);
            },
        );
        h.in_flight.store(false, Ordering::SeqCst);
        h.cancel.store(false, Ordering::SeqCst);
        out
    }

    /// The activity test (read-only): the status of the block when it is safe to take.
    pub(crate) fn check(
        &mut self,
        h: &Handle,
        progress: &Progress,
    ) -> Result<mmp_status, mmp_result> {
        self.require_idle(h)?;
        let mut m = Machine::new(self.config(&h.target), Op::Check, clock::now());
        progress.call(mmp_phase::Reading, 0, 0);
        match Self::settle(&mut m, h, progress) {
            Some(Outcome::Safe { snapshot, .. }) => Ok(h.snapshot_status(&snapshot, false)),
            other => Err(h.failed(other)),
        }
    }

    /// Acquires the device on the caller's thread.
    pub(crate) fn acquire(
        &mut self,
        h: &Handle,
        force: bool,
        progress: &Progress,
    ) -> Result<(), mmp_result> {
        self.require_writable()?;
        self.require_idle(h)?;
        // Only the native format records the hostid; ext4 MMP names its owner by node
        // name alone, as the kernel and e2fsprogs do, so an unreadable or missing hostid
        // does not stop it.
        if let Some(e) = self.hostid_error
            && h.target.format == target::Format::Native
        {
            return Err(e);
        }
        let mut cfg = self.config(&h.target);
        cfg.force = force;
        let mut m = Machine::new(cfg, Op::Acquire, clock::now());
        progress.call(mmp_phase::Reading, 0, 0);
        match Self::settle(&mut m, h, progress) {
            None if m.is_held() => {
                h.set_lease(Lease::Until(m.owned_until()));
                self.hold = Hold::Acquired(Box::new(m));
                Ok(())
            }
            other => Err(h.failed(other)),
        }
    }

    /// Moves the held machine onto the shared heartbeat engine; `loss` runs on the event
    /// thread.
    pub(crate) fn start_heartbeat(&mut self, h: &Handle, loss: Loss) -> Result<(), mmp_result> {
        let m = match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Acquired(m) => m,
            Hold::Idle => return Err(mmp_result::NotHeld),
            beating @ Hold::Beating(_) => {
                self.hold = beating;
                return Err(mmp_result::AlreadyHeld);
            }
            starting @ Hold::Starting(_) => {
                self.hold = starting;
                return Err(mmp_result::Busy);
            }
        };
        if !m.is_owner(clock::now().mono) {
            // Too late: the lease ran out before the heartbeat started. Nothing more is
            // written; the machine is dropped.
            h.set_lease(Lease::Idle);
            return Err(mmp_result::Lost);
        }
        let hub = match Hub::get(self.realtime) {
            Ok(hub) if hub.is_running() => hub,
            other => {
                // No heartbeat thread (it could not start, or it died): nobody would
                // heartbeat or report a loss.
                self.hold = Hold::Acquired(m);
                return Err(other.err().unwrap_or(mmp_result::Io));
            }
        };
        let engine_target = match self.engine_target(h) {
            Ok(t) => t,
            Err(e) => {
                self.hold = Hold::Acquired(m);
                return Err(e);
            }
        };
        let shared = Arc::new(Shared::held());
        self.hold = Hold::Beating(Self::put_on(h, hub, engine_target, *m, shared, loss, None));
        Ok(())
    }

    /// A target for the engine: its own descriptor (the handle keeps its own for status
    /// reads).
    fn engine_target(&self, h: &Handle) -> Result<Target, mmp_result> {
        let device = Device::open(&self.path, true).map_err(|e| mmp_result::from(&e))?;
        Ok(Target {
            device,
            layout: h.target.layout,
            format: h.target.format,
            superblock: h.target.superblock,
            superblock_bytes: None,
        })
    }

    /// Puts `m` on the engine with its route; the lease follows `shared`.
    fn put_on(
        h: &Handle,
        hub: &'static Hub,
        target: Target,
        m: Machine,
        shared: Arc<Shared>,
        loss: Loss,
        cancel: Option<CancelFlags>,
    ) -> Heartbeat {
        let route = Route {
            shared: Arc::clone(&shared),
            events: Arc::clone(&h.events),
            loss,
            format: h.target.format,
            layout: h.target.layout,
            cancel,
        };
        let slot = hub.add(target, m, route);
        h.set_lease(Lease::Beating {
            hub,
            slot,
            shared: Arc::clone(&shared),
        });
        Heartbeat {
            hub,
            slot,
            shared,
            done: false,
        }
    }

    /// `mmp_device_acquire_start`: the same acquire as [`Inner::acquire`], run by the shared
    /// engine (as `mmp hold` runs its acquires): returns at once; the event thread reports
    /// progress and the end through the event descriptor, and once held the engine goes on
    /// heartbeating it.
    pub(crate) fn acquire_start(
        &mut self,
        h: &Handle,
        force: bool,
        loss: Loss,
    ) -> Result<(), mmp_result> {
        self.require_writable()?;
        self.require_idle(h)?;
        if let Some(e) = self.hostid_error
            && h.target.format == target::Format::Native
        {
            return Err(e);
        }
        let hub = match Hub::get(self.realtime) {
            Ok(hub) if hub.is_running() => hub,
            other => return Err(other.err().unwrap_or(mmp_result::Io)),
        };
        let target = self.engine_target(h)?;
        let mut cfg = self.config(&h.target);
        cfg.force = force;
        let m = Machine::new(cfg, Op::Acquire, clock::now());
        h.cancel.store(false, Ordering::SeqCst);
        h.in_flight.store(true, Ordering::SeqCst);
        let cancel = CancelFlags::new(&h.cancel, &h.in_flight);
        let shared = Arc::new(Shared::starting());
        self.hold = Hold::Starting(Self::put_on(h, hub, target, m, shared, loss, Some(cancel)));
        Ok(())
    }

    /// `mmp_device_acquire_finish`: the started acquire's result once it ended
    /// ([`mmp_result::Pending`] before).
    pub(crate) fn acquire_finish(&mut self, h: &Handle) -> Result<(), mmp_result> {
        let Hold::Starting(hb) = &mut self.hold else {
            return Err(mmp_result::NotStarted);
        };
        if hb.shared.acquired.load(Ordering::SeqCst) {
            let Hold::Starting(hb) = std::mem::replace(&mut self.hold, Hold::Idle) else {
                unreachable!("matched above");
            };
            hb.shared.taken.store(true, Ordering::SeqCst);
            self.hold = Hold::Beating(hb);
            return Ok(());
        }
        let outcome = hb.shared.outcome();
        if outcome.is_none() && !hb.shared.stopped.load(Ordering::SeqCst) {
            return Err(mmp_result::Pending);
        }
        // Ended without holding: the engine is done with the slot, and so is the event
        // thread once it has posted the end.
        let r = match outcome {
            // A cancel that reached the engine after it had acquired: released again.
            Some(Outcome::Released) => mmp_result::Aborted,
            None => mmp_result::Lost,
            other => h.failed(other),
        };
        let _ = hb.finish();
        self.hold = Hold::Idle;
        h.set_lease(Lease::Idle);
        Err(r)
    }

    /// `mmp_device_release`.
    pub(crate) fn release_call(&mut self, h: &Handle) -> Result<(), mmp_result> {
        if let Hold::Beating(hb) | Hold::Starting(hb) = &self.hold
            && in_callback_of(&hb.shared)
        {
            return Err(mmp_result::InCallback);
        }
        h.set_lease(Lease::Idle);
        self.release(&h.target)
    }

    /// Releases the device: CLEAN is written only if the block still holds what this host
    /// last wrote.
    fn release(&mut self, t: &Target) -> Result<(), mmp_result> {
        let outcome = match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Idle => return Err(mmp_result::NotHeld),
            Hold::Acquired(mut m) => {
                m.release(clock::now());
                let never = AtomicBool::new(false);
                driver::run_until_settled(&mut m, &t.device, &mut env_faults(), &never, &mut |_| {})
            }
            Hold::Beating(mut hb) => hb.finish(),
            Hold::Starting(mut hb) => {
                // Gives the started acquire up: aborted (a claim restored as for a cancel)
                // unless it held the device already, which is then released.
                let o = hb.finish();
                if !hb.shared.acquired.load(Ordering::SeqCst) {
                    return Err(match o {
                        Some(Outcome::Released | Outcome::Aborted) => mmp_result::Aborted,
                        None => mmp_result::Io,
                        other => outcome_result(other),
                    });
                }
                o
            }
        };
        match outcome {
            Some(Outcome::Released) => Ok(()),
            // The heartbeat ended without an outcome: nothing can be assumed.
            None => Err(mmp_result::Lost),
            other => Err(outcome_result(other)),
        }
    }

    /// The operator's forced reset to CLEAN, without an activity test.
    pub(crate) fn clear(&mut self, h: &Handle) -> Result<(), mmp_result> {
        self.require_writable()?;
        self.require_idle(h)?;
        let mut cfg = self.config(&h.target);
        cfg.force = true;
        let mut m = Machine::new(cfg, Op::Clear, clock::now());
        match Self::settle(&mut m, h, &Progress::none()) {
            Some(Outcome::Cleared) => Ok(()),
            None => Err(mmp_result::Io),
            other => Err(outcome_result(other)),
        }
    }

    /// Poisoning: forget the device without writing anything more.
    fn abandon(&mut self) {
        match std::mem::replace(&mut self.hold, Hold::Idle) {
            Hold::Idle | Hold::Acquired(_) => {}
            Hold::Beating(mut hb) | Hold::Starting(mut hb) => {
                hb.abandon();
                // `hb` is dropped here; `finish` finds nothing left to stop.
            }
        }
    }

    /// In a forked child (or after poisoning, once abandoned): drops the hold without
    /// touching the heartbeat engine (whose threads do not exist in a child, and whose
    /// locks a parent's thread may have held at the fork) and without writing.
    fn forget_inherited(&mut self) {
        if let Hold::Beating(hb) | Hold::Starting(hb) = &mut self.hold {
            hb.done = true;
        }
        self.hold = Hold::Idle;
    }
}

/// The fault hook of one-shot runs: `MMP_FAULT_*` in test builds, as in the CLI.
fn env_faults() -> fault::EnvFaults {
    fault::EnvFaults::from_env()
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

/// [`procedure::prove_unused`] with the identity the CLI uses, as a result code.
fn prove_unused(t: &Target, path: &Path) -> Result<Machine, mmp_result> {
    let never = AtomicBool::new(false);
    procedure::prove_unused(
        t,
        env_identity(path)?,
        &mut env_faults(),
        &never,
        &mut |_| {},
    )
    .map_err(|e| match e {
        Unproven::Refused(r) => outcome_result(Some(Outcome::Refused(r))),
        Unproven::Ended(None) => mmp_result::Io,
        Unproven::Ended(o) => outcome_result(o),
    })
}

/// `mmp enable`: turns MMP on in an unmounted ext4 file system.
pub(crate) fn ext4_enable(path: &Path, interval_s: u32) -> Result<(), mmp_result> {
    use mmp_linux::tune::{self, EnableOptions};
    let interval = procedure::update_interval(u64::from(interval_s))
        .map_err(|_| mmp_result::InvalidParameter)?;
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
    use mmp_linux::tune;
    let t = target::open(path, true).map_err(|e| mmp_result::from(&e))?;
    tune::preflight(&t.device, tune::Op::Disable).map_err(|e| mmp_result::from(&e))?;
    // Held while the superblock changes; once MMP is off the block is freed, so the machine
    // is dropped without writing to it again (never CLEAN into a freed block).
    let held = if force {
        None
    } else {
        Some(prove_unused(&t, path)?)
    };
    procedure::disable(&t, held, &mut env_faults())
        .map(|_| ())
        .map_err(|e| mmp_result::from(&e))
}

/// `mmp set-interval`: proves the device unused, then rewrites the update interval.
pub(crate) fn ext4_set_interval(path: &Path, secs: u32) -> Result<(), mmp_result> {
    use mmp_linux::tune;
    let secs =
        procedure::update_interval(u64::from(secs)).map_err(|_| mmp_result::InvalidParameter)?;
    let t = target::open(path, true).map_err(|e| mmp_result::from(&e))?;
    tune::preflight(&t.device, tune::Op::SetInterval).map_err(|e| mmp_result::from(&e))?;
    let m = prove_unused(&t, path)?;
    procedure::set_interval(&t, m, secs, &mut env_faults())
        .0
        .map_err(|e| mmp_result::from(&e))
}

/// `mmp format`: writes a native MMP area, refusing (without `force`) to overwrite a
/// known signature or a native area that is not clean.
pub(crate) fn native_format(
    path: &Path,
    interval_ms: u32,
    fail_intervals: u32,
    force: bool,
) -> Result<(), mmp_result> {
    use mmp_linux::area::{self, FormatError};
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

/// `mmp_watchdog_arm`: see there.
pub(crate) fn watchdog_arm(path: &Path, timeout_s: u32) -> Result<(), mmp_result> {
    use mmp_linux::engine::SelfFence;
    use mmp_linux::watchdog::Watchdog;
    let hub = Hub::existing().ok_or(mmp_result::NotHeld)?;
    // A heartbeat started just now shows in the engine's report after its first pass.
    let mut shortest = None;
    for _ in 0..250 {
        let report = hub.report();
        if report.self_fence.is_some_and(|f| f != SelfFence::Off) {
            return Err(mmp_result::AlreadyArmed);
        }
        shortest = report
            .slots
            .iter()
            .filter(|s| s.outcome.is_none() && !s.forgotten && s.owned_until.is_some())
            .filter_map(|s| s.timing.map(|t| t.fail_window))
            .min();
        if shortest.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let shortest = shortest.ok_or(mmp_result::NotHeld)?;
    let timeout = procedure::watchdog_timeout(Some(u64::from(timeout_s)), shortest)
        .map_err(|_| mmp_result::InvalidParameter)?;
    let wd = Watchdog::open(path, timeout).map_err(|e| {
        crate::result::note_errno(e.raw_os_error().unwrap_or(0));
        match e.kind() {
            std::io::ErrorKind::NotFound => mmp_result::NotFound,
            std::io::ErrorKind::PermissionDenied => mmp_result::PermissionDenied,
            _ => mmp_result::Io,
        }
    })?;
    hub.arm_watchdog(wd);
    wait_fence(hub, true);
    Ok(())
}

/// Waits (at most a second) until the engine's report shows the watchdog armed or not.
fn wait_fence(hub: &Hub, armed: bool) {
    for _ in 0..500 {
        if hub.report().self_fence.is_some() == armed {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// `mmp_watchdog_disarm`.
pub(crate) fn watchdog_disarm() -> Result<(), mmp_result> {
    let hub = Hub::existing().ok_or(mmp_result::NotArmed)?;
    if hub.report().self_fence.is_none() {
        return Err(mmp_result::NotArmed);
    }
    hub.disarm_watchdog();
    wait_fence(hub, false);
    Ok(())
}

/// `mmp_self_fence_state`.
pub(crate) fn self_fence_state() -> crate::types::mmp_self_fence {
    use crate::types::mmp_self_fence;
    use mmp_linux::engine::SelfFence;
    match Hub::existing().and_then(|h| h.report().self_fence) {
        None | Some(SelfFence::Off) => mmp_self_fence::Off,
        Some(SelfFence::Active) => mmp_self_fence::Active,
        Some(SelfFence::Degraded) => mmp_self_fence::Degraded,
    }
}
