//! The Rust side of `struct mmp_device`: one open device, what it holds, and its place on
//! the process's shared heartbeat engine ([`crate::hub`]) once the heartbeat runs. Safe
//! code only; C pointers and callbacks arrive through [`crate::boundary`].
//!
//! Every operation is the one the CLI performs (`mmp-cli/src/{main,hold,tune}.rs`): the
//! protocol is `mmp_core::machine::Machine`, driven by `mmp_core::sys::driver` on the
//! caller's thread and by `mmp_core::sys::engine` once the heartbeat starts.

use crate::boundary::{Loss, Progress};
use crate::hub::{Hub, Route, Shared, in_callback_of};
use crate::result::{mmp_result, outcome_result};
use crate::types::{MMP_OPEN_ALL, MMP_OPEN_READ_ONLY, MMP_OPEN_REALTIME, mmp_status};
use mmp_core::machine::{Config, Event, Identity, Machine, Op, Outcome, parse};
use mmp_core::sys::blockdev::Device;
use mmp_core::sys::target::{self, Target};
use mmp_core::sys::{clock, driver, hostid};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};

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

/// A device on the shared heartbeat engine ([`Hub`]).
struct Heartbeat {
    hub: &'static Hub,
    slot: usize,
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

    fn owned(&self) -> bool {
        if self.done
            || self.shared.stopped.load(Ordering::SeqCst)
            || self.shared.outcome().is_some()
        {
            return false;
        }
        // Before the engine's first pass the report has no slot yet: still held. After
        // that, held means within the lease by the clock too: if the heartbeat thread is
        // stuck (a hung device no longer blocks it, but the thread itself may hang),
        // ownership ends with the lease, whether or not the machine has noticed yet.
        let now = clock::now().mono;
        self.hub.report().slots.get(self.slot).is_none_or(|s| {
            s.outcome.is_none() && !s.forgotten && s.owned_until.is_none_or(|t| now < t)
        })
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
        // Only the native format records the hostid; ext4 MMP names its owner by node
        // name alone, as the kernel and e2fsprogs do, so an unreadable or missing hostid
        // does not stop it.
        if let Some(e) = self.hostid_error
            && self.target.format == target::Format::Native
        {
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

    /// Moves the held machine onto the shared heartbeat engine; `loss` runs on the event
    /// thread.
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
        let Some(hub) = Hub::get(self.realtime).filter(|h| h.is_running()) else {
            // No heartbeat thread (it could not start, or it died): nobody would heartbeat
            // or report a loss.
            self.hold = Hold::Acquired(m);
            return Err(mmp_result::Io);
        };
        let shared = Arc::new(Shared::default());
        let route = Route {
            shared: Arc::clone(&shared),
            loss,
            format,
            layout,
        };
        let slot = hub.add(engine_target, *m, route);
        self.hold = Hold::Beating(Heartbeat {
            hub,
            slot,
            shared,
            done: false,
        });
        Ok(())
    }

    /// Releases the device: CLEAN is written only if the block still holds what this host
    /// last wrote.
    pub(crate) fn release(&mut self) -> Result<(), mmp_result> {
        if let Hold::Beating(hb) = &self.hold
            && in_callback_of(&hb.shared)
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

/// `mmp_watchdog_arm`: see there.
pub(crate) fn watchdog_arm(path: &Path, timeout_s: u32) -> Result<(), mmp_result> {
    use mmp_core::sys::engine::SelfFence;
    use mmp_core::sys::watchdog::Watchdog;
    let hub = Hub::existing().ok_or(mmp_result::NotHeld)?;
    // A heartbeat started just now shows in the engine's report after its first pass.
    let mut shortest = None;
    for _ in 0..250 {
        let report = hub.report();
        if report.self_fence.is_some_and(|f| f != SelfFence::Off) {
            return Err(mmp_result::AlreadyHeld);
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
    if timeout_s == 0 || u64::from(timeout_s) > shortest.as_secs() {
        return Err(mmp_result::InvalidParameter);
    }
    let wd = Watchdog::open(path, std::time::Duration::from_secs(u64::from(timeout_s))).map_err(
        |e| match e.kind() {
            std::io::ErrorKind::NotFound => mmp_result::NotFound,
            std::io::ErrorKind::PermissionDenied => mmp_result::PermissionDenied,
            _ => mmp_result::Io,
        },
    )?;
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
    let hub = Hub::existing().ok_or(mmp_result::NotHeld)?;
    if hub.report().self_fence.is_none() {
        return Err(mmp_result::NotHeld);
    }
    hub.disarm_watchdog();
    wait_fence(hub, false);
    Ok(())
}

/// `mmp_self_fence_state`.
pub(crate) fn self_fence_state() -> crate::types::mmp_self_fence {
    use crate::types::mmp_self_fence;
    use mmp_core::sys::engine::SelfFence;
    match Hub::existing().and_then(|h| h.report().self_fence) {
        None | Some(SelfFence::Off) => mmp_self_fence::Off,
        Some(SelfFence::Active) => mmp_self_fence::Active,
        Some(SelfFence::Degraded) => mmp_self_fence::Degraded,
    }
}
