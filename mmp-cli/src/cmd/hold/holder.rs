//! The holder: the state of one `hold` or `run` from the start of its engine to its end, and
//! the named steps of its loop: an engine event, a tick (signals, the release waiting for
//! the data to be unmounted, the status and state files, the fence, readiness, the command),
//! the finish.

use super::HoldOpts;
use super::loss::{cut_io, run_loss_action};
use super::report::{StateFile, notify_ready, report_lines, write_status_file};
use super::run::Job;
use super::setup::Setup;
use crate::exit::Exit;
use crate::progress::Progress;
use crate::{Ctx, out, show};
use mmp_core::machine::{Config, Event, Identity, Loss, Machine, Op, Outcome, Refusal};
use mmp_linux::engine::{self, Engine, EngineEvent};
use mmp_linux::watchdog::Watchdog;
use mmp_linux::{clock, owner_log, target};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long the loop waits for an engine event: 25 ms, how late a SIGTERM release may start
/// (signals cannot wake the channel).
const TICK: Duration = Duration::from_millis(25);

/// Where a hold stands. It only moves forward: Acquiring, then Held (possibly through
/// ReleaseWanted), then Releasing; or from Acquiring straight to Releasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not every device is ours yet. `fenced`: every device was acquired and, under
    /// `--fence`, the reservations were taken; `acquired` is reported on the next tick
    /// unless a loss reported meanwhile comes first.
    Acquiring { fenced: bool },
    /// Every device is held (and fenced): `acquired` was reported, the state file says
    /// ready, the command runs.
    Held,
    /// Held, and a release was asked for (a signal, the command ended): it waits for the
    /// guarded data devices to be unmounted, heartbeating meanwhile.
    ReleaseWanted,
    /// The engine was told to release every device. `was_held`: the hold had been declared
    /// held (then the fence registrations are not withdrawn at the end).
    Releasing { was_held: bool },
}

impl Phase {
    /// Whether the hold was declared held (`acquired` reported), now or before releasing.
    fn was_held(self) -> bool {
        matches!(
            self,
            Phase::Held | Phase::ReleaseWanted | Phase::Releasing { was_held: true }
        )
    }

    /// Whether the engine was told to release everything.
    fn releasing(self) -> bool {
        matches!(self, Phase::Releasing { .. })
    }
}

/// The signals a holder acts on: flags set by their handlers, polled every tick.
struct Signals {
    /// SIGINT or SIGTERM: release (once the guarded devices are unmounted).
    term: Arc<AtomicBool>,
    /// SIGHUP: print the per-device state (and write the status file).
    hup: Arc<AtomicBool>,
    /// Which signal stopped `run` before its command ran: it exits 128 + that signal.
    got_int: Arc<AtomicBool>,
    /// See `got_int`.
    got_term: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers (they stay for the life of the process).
    fn register() -> Result<Signals, String> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let flag = |sig, f: &Arc<AtomicBool>| {
            signal_hook::flag::register(sig, Arc::clone(f)).map_err(|e| e.to_string())
        };
        let s = Signals {
            term: Arc::default(),
            hup: Arc::default(),
            got_int: Arc::default(),
            got_term: Arc::default(),
        };
        for sig in [SIGINT, SIGTERM] {
            flag(sig, &s.term)?;
        }
        flag(SIGINT, &s.got_int)?;
        flag(SIGTERM, &s.got_term)?;
        flag(SIGHUP, &s.hup)?;
        Ok(s)
    }

    /// `run`'s status when a signal stopped it before its command ran: 128 + the signal, as
    /// the command would have exited.
    fn stopped_run(&self) -> Option<Exit> {
        let sig = if self.got_int.load(Ordering::SeqCst) {
            signal_hook::consts::SIGINT
        } else if self.got_term.load(Ordering::SeqCst) {
            signal_hook::consts::SIGTERM
        } else {
            return None;
        };
        Some(Exit::Command(128 + u8::try_from(sig).unwrap_or(0)))
    }
}

/// The devices by engine slot (command-line order): their names, identities and formats, and
/// how far each got.
struct Slots {
    /// The names as the user gave them.
    paths: Vec<String>,
    /// This host's identity on each device.
    identities: Vec<Identity>,
    /// Each device's format (for the JSON report).
    formats: Vec<target::Format>,
    /// The acquire progress shown per device.
    progress: Vec<Progress>,
    /// More than 4 devices: a count every 5 s instead of each device's progress.
    many: bool,
    /// Which devices were acquired.
    acquired: Vec<bool>,
    /// Each device's outcome, once it has one.
    done: Vec<Option<Outcome>>,
    /// A heartbeat I/O retry was said (once per device, every time with --verbose).
    io_warned: Vec<bool>,
}

impl Slots {
    /// The slots of `devices`, opened as `targets`, nothing acquired yet.
    fn new(c: &Ctx, devices: &[PathBuf], targets: &[target::Target]) -> Slots {
        let paths: Vec<String> = devices.iter().map(|d| show(d)).collect();
        let n = targets.len();
        Slots {
            identities: devices.iter().map(|d| c.identity(d)).collect(),
            formats: targets.iter().map(|t| t.format).collect(),
            progress: paths.iter().map(|p| Progress::new(p.clone())).collect(),
            paths,
            many: n > 4,
            acquired: vec![false; n],
            done: vec![None; n],
            io_warned: vec![false; n],
        }
    }

    /// Whether every device was acquired.
    fn all_acquired(&self) -> bool {
        self.acquired.iter().all(|&a| a)
    }

    /// The exit status once the engine is done and nothing went wrong on the way: a release
    /// read that failed is a loss; an acquire interrupted is an error under `hold`, and
    /// under `run` (`job`) 128 + the signal when it came before the command ran; otherwise
    /// the command's status (0 under `hold`).
    fn exit_code(&self, job: Option<&Job<'_>>, signals: &Signals) -> Exit {
        let child_code = job.and_then(Job::code);
        for (i, o) in self.done.iter().enumerate() {
            match o {
                Some(Outcome::Released) => {}
                Some(Outcome::Lost(Loss::ReleaseReadFailed(_))) => return Exit::Lost,
                Some(Outcome::Aborted) if job.is_none() => {
                    note!("mmp: {}: acquire interrupted", self.paths[i]);
                    return Exit::Error;
                }
                // `run` stopped by a signal before its command ran: 128 + the signal, as the
                // command would have exited.
                Some(Outcome::Aborted) if child_code.is_none() => {
                    note!("mmp: {}: acquire interrupted", self.paths[i]);
                    return signals.stopped_run().unwrap_or(Exit::Error);
                }
                _ => {}
            }
        }
        child_code.unwrap_or(Exit::Ok)
    }
}

/// One `hold` or `run` while its engine runs: what was opened, the engine, and the state
/// its steps share (formerly the flags of one long loop).
pub(super) struct Holder<'a> {
    /// The global options (identity, verbosity).
    c: &'a Ctx,
    /// The hold's options.
    opts: &'a HoldOpts,
    /// The `--state-file` (ready while held; `hold` writes starting and ended around us).
    state: &'a StateFile<'a>,
    /// What was opened and checked before anything was written.
    setup: Setup,
    /// The signals, as flags.
    signals: Signals,
    /// `mmp run`'s command; None under `hold`.
    job: Option<Job<'a>>,
    /// The heartbeat engine, with one machine per device.
    eng: Engine,
    /// The engine's events.
    rx: Receiver<EngineEvent>,
    /// The devices.
    slots: Slots,
    /// Where the hold stands.
    phase: Phase,
    /// The exit status so far (refusals, a loss, an error on the way).
    code: Exit,
    /// A device was lost (the cuts and the loss action ran once; the mappings made stay).
    lost: bool,
    /// When the guarded device still mounted was last said (every 10 s).
    guard_note: Option<Instant>,
    /// When the acquire started (`--wait=SECONDS` counts from here).
    started: Instant,
    /// When the count of devices held was last said (with many devices).
    last_summary: Instant,
    /// When the status file was last written (and the state file refreshed).
    last_status_write: Instant,
}

impl<'a> Holder<'a> {
    /// Installs the signal handlers, prepares `run`'s command, starts the engine and gives it
    /// one acquiring machine per device.
    pub(super) fn start(
        c: &'a Ctx,
        opts: &'a HoldOpts,
        devices: &[PathBuf],
        command: Option<&'a [String]>,
        state: &'a StateFile<'a>,
        mut setup: Setup,
    ) -> Result<Holder<'a>, String> {
        let signals = Signals::register()?;
        let job = command.map(Job::new);
        let (mut eng, rx) = start_engine(c, opts)?;
        let targets = std::mem::take(&mut setup.targets);
        let slots = Slots::new(c, devices, &targets);
        for (t, id) in targets.into_iter().zip(&slots.identities) {
            let mut cfg = Config::new(t.layout, *id, clock::random_seed());
            cfg.force = opts.force;
            cfg.wait = setup.queue;
            eng.add(t, Machine::new(cfg, Op::Acquire, clock::now()));
        }
        Ok(Holder {
            c,
            opts,
            state,
            setup,
            signals,
            job,
            eng,
            rx,
            slots,
            phase: Phase::Acquiring { fenced: false },
            code: Exit::Ok,
            lost: false,
            guard_note: None,
            started: Instant::now(),
            last_summary: Instant::now(),
            last_status_write: Instant::now(),
        })
    }

    /// One turn of the loop: the next engine event (or 25 ms without one), then a tick.
    /// False once it is over: every device has its outcome, or the engine is gone.
    pub(super) fn step(&mut self) -> bool {
        match self.rx.recv_timeout(TICK) {
            Ok(ev) => self.on_event(ev),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return false,
        }
        self.on_tick()
    }

    /// Prints one of mmp's lines: on stdout under `hold`; under `run` stdout belongs to the
    /// command, so on stderr.
    fn say(&self, line: &str) {
        if self.job.is_some() {
            note!("mmp: {line}");
        } else {
            super::report::say(line);
        }
    }

    /// Tells the engine to release every device (CLEAN where held) and enters Releasing.
    fn release(&mut self) {
        self.phase = Phase::Releasing {
            was_held: self.phase.was_held(),
        };
        self.eng.release_all();
    }

    /// An engine event: a device acquired, its progress, a heartbeat I/O retry, its outcome.
    fn on_event(&mut self, EngineEvent { slot, event }: EngineEvent) {
        // The CLI never removes a device: a slot's index is the order of the adds.
        let slot = slot.index();
        match event {
            Event::Acquired => {
                self.slots.acquired[slot] = true;
                // Fenced: reported once the reservations are ours too.
                if self.setup.fence.is_none() {
                    self.say(&format!("acquired {}", self.slots.paths[slot]));
                }
            }
            Event::Progress { .. } if !self.slots.many => self.slots.progress[slot].event(&event),
            Event::IoRetry(e) if !self.slots.io_warned[slot] || self.c.verbose => {
                note!(
                    "mmp: {}: heartbeat I/O failed ({}); retrying within the fail window",
                    self.slots.paths[slot],
                    out::io_error_text(e)
                );
                self.slots.io_warned[slot] = true;
            }
            Event::Finished(o) => {
                self.slots.done[slot] = Some(o);
                match o {
                    Outcome::Refused(r) => self.on_refused(slot, &r),
                    Outcome::Lost(l) => self.on_lost(slot, &l),
                    Outcome::Released => {
                        self.say(&format!("released {}", self.slots.paths[slot]));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// A device refused: all or nothing, the others are released.
    fn on_refused(&mut self, slot: usize, r: &Refusal) {
        note!("mmp: {}", out::refusal(&self.slots.paths[slot], r));
        self.code = self.code.worst(out::refusal_code(r));
        if !self.phase.releasing() {
            if self.slots.acquired.iter().any(|&a| a) || self.slots.paths.len() > 1 {
                note!("mmp: releasing the other devices (all or nothing)");
            }
            self.release();
        }
    }

    /// A device was lost: on the first loss the I/O is cut, then the loss action runs; the
    /// others are released; exit 3.
    fn on_lost(&mut self, slot: usize, l: &Loss) {
        // The reservation stays until the next owner preempts it.
        if let Some(f) = &mut self.setup.fence {
            f.lost();
        }
        let path = &self.slots.paths[slot];
        let msg = out::loss(path, l, &self.slots.identities[slot]);
        note!("mmp: {msg}");
        if !self.lost {
            self.lost = true;
            cut_io(&self.setup.cuts);
            let child = self.job.as_mut().and_then(Job::child_mut);
            run_loss_action(&self.setup.action, path, &msg, child);
        }
        self.code = Exit::Lost;
        if !self.phase.releasing() {
            self.release();
        }
    }

    /// Everything the loop does after an event (or 25 ms without one), in this order. False
    /// once every device has its outcome (after waiting for the command).
    fn on_tick(&mut self) -> bool {
        self.count_held();
        self.check_wait_limit();
        self.on_signal();
        if self.phase == Phase::ReleaseWanted {
            self.release_once_unmounted();
        }
        self.on_hup();
        self.write_status();
        if self.take_reservations() {
            // The reservation calls block; a loss reported meanwhile is handled before
            // anything is declared acquired.
            return true;
        }
        self.declare_held();
        if let Some(job) = &mut self.job
            && job.tick(!self.setup.guards.is_empty())
        {
            self.on_child_exit();
        }
        if !self.slots.done.iter().all(Option::is_some) {
            return true;
        }
        // Wait for the child too (it was killed or told to stop on loss/termination).
        if let Some(job) = &mut self.job {
            job.reap();
        }
        false
    }

    /// With many devices, says every 5 s while acquiring how many are held so far.
    fn count_held(&mut self) {
        if self.slots.many
            && matches!(self.phase, Phase::Acquiring { .. })
            && self.last_summary.elapsed() >= Duration::from_secs(5)
        {
            let got = self.slots.acquired.iter().filter(|&&a| a).count();
            let n = self.slots.paths.len();
            note!("mmp: acquiring {n} devices: {got} held so far");
            self.last_summary = Instant::now();
        }
    }

    /// `--wait=SECONDS` ran out while another host still holds a device: give up (exit 1).
    fn check_wait_limit(&mut self) {
        if let Some(limit) = self.setup.wait_limit
            && matches!(self.phase, Phase::Acquiring { .. })
            && self.started.elapsed() >= limit
        {
            note!(
                "mmp: gave up waiting after {:.1} s (--wait): still held by another host",
                limit.as_secs_f64()
            );
            self.code = self.code.worst(Exit::Refused);
            self.release();
        }
    }

    /// SIGINT/SIGTERM (the flag is cleared whatever the phase): the command is told to stop,
    /// and a release is asked for, unless one already was.
    fn on_signal(&mut self) {
        if self.signals.term.swap(false, Ordering::SeqCst)
            && matches!(self.phase, Phase::Acquiring { .. } | Phase::Held)
        {
            if let Some(job) = &self.job {
                job.terminate();
            }
            self.want_release();
        }
    }

    /// `run`'s command ended (or could not be waited for): the hold is to be released.
    fn on_child_exit(&mut self) {
        self.want_release();
    }

    /// A release is asked for. Not acquired yet: nothing is mounted under our protection,
    /// so at once. Held: once the guarded data devices are unmounted (checked every tick).
    fn want_release(&mut self) {
        match self.phase {
            // Not acquired yet: nothing is mounted under our protection.
            Phase::Acquiring { .. } => self.release(),
            Phase::Held => self.phase = Phase::ReleaseWanted,
            Phase::ReleaseWanted | Phase::Releasing { .. } => {}
        }
    }

    /// Releases unless a guarded device is still mounted here (then says so every 10 s and
    /// keeps heartbeating): no other host is told the data is free while it is in use here.
    fn release_once_unmounted(&mut self) {
        if let Some((g, mp)) = self.setup.guard_mounted() {
            if self
                .guard_note
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                note!(
                    "mmp: not releasing {}: the guarded device {g} is still mounted at {mp}; \
                     unmount it first (`umount {mp}`), then mmp releases. The heartbeat goes \
                     on meanwhile",
                    self.slots.paths.join(", ")
                );
                self.guard_note = Some(Instant::now());
            }
        } else {
            // The data is quiesced: the reservations go before the MMP blocks say CLEAN.
            if let Some(f) = &mut self.setup.fence {
                f.release();
            }
            self.release();
        }
    }

    /// SIGHUP: the per-device state on stderr, and in the status file.
    fn on_hup(&self) {
        if self.signals.hup.swap(false, Ordering::SeqCst) {
            let body = report_lines(
                &self.eng.report(),
                &self.slots.formats,
                &self.slots.identities,
            );
            note_raw!("{body}");
            if let Some(p) = &self.opts.status_file {
                write_status_file(p, &body);
            }
        }
    }

    /// Every second: the status file, and the state file's health while held.
    fn write_status(&mut self) {
        if self.last_status_write.elapsed() >= Duration::from_secs(1) {
            let report = self.eng.report();
            if let Some(p) = &self.opts.status_file {
                let body = report_lines(&report, &self.slots.formats, &self.slots.identities);
                write_status_file(p, &body);
            }
            if matches!(self.phase, Phase::Held | Phase::ReleaseWanted) {
                self.state.ready(&report);
            }
            self.last_status_write = Instant::now();
        }
    }

    /// Under `--fence`, once every device is acquired: takes the reservations. True when
    /// they were taken just now; a failure releases everything (exit 2).
    fn take_reservations(&mut self) -> bool {
        if self.phase != (Phase::Acquiring { fenced: false }) || !self.slots.all_acquired() {
            return false;
        }
        let Some(f) = &mut self.setup.fence else {
            return false;
        };
        // Every MMP device is ours (activity test passed, claims verified): now the
        // storage's word, before the data is used.
        match f.take() {
            Some(line) => {
                self.phase = Phase::Acquiring { fenced: true };
                self.say(&line);
                true
            }
            None => {
                self.code = Exit::Error;
                self.release();
                false
            }
        }
    }

    /// Every device acquired (and fenced): the hold is declared held. `acquired` is
    /// reported, systemd notified and the state file says ready at that moment; then the
    /// watchdog is armed and `run`'s command started.
    fn declare_held(&mut self) {
        let Phase::Acquiring { fenced } = self.phase else {
            return;
        };
        if !self.slots.all_acquired() || (self.setup.fence.is_some() && !fenced) {
            return;
        }
        self.phase = Phase::Held;
        if self.setup.fence.is_some() {
            for p in &self.slots.paths {
                self.say(&format!("acquired {p}"));
            }
        }
        notify_ready();
        self.state.ready(&self.eng.report());
        warn_realtime(&self.eng, self.opts);
        if self.c.verbose {
            note!("mmp: heartbeat I/O: {}", self.eng.report().io);
        }
        self.arm_watchdog();
        if self.phase == Phase::Held
            && let Some(job) = &mut self.job
            && !job.spawn()
        {
            self.release();
        }
    }

    /// `--watchdog-device`: armed once every device is held (the engine pets it after
    /// successful heartbeats only). Failing to arm it releases everything (exit 2).
    fn arm_watchdog(&mut self) {
        let (Some(p), Some(t)) = (&self.opts.watchdog_device, self.setup.wd_timeout) else {
            return;
        };
        match Watchdog::open(p, t) {
            Ok(wd) => {
                note!(
                    "mmp: self-fencing active: watchdog {} armed with a {} s timeout",
                    p.display(),
                    wd.timeout().as_secs()
                );
                self.eng.arm_watchdog(wd);
            }
            Err(e) => {
                note!("mmp: cannot arm the watchdog: {e}; releasing");
                self.code = Exit::Error;
                self.release();
            }
        }
    }

    /// The end, in this order: the engine stops, the guarded devices are closed and the
    /// mappings this hold made removed (kept after a loss), registrations never reserved are
    /// withdrawn, the status file is written a last time; then the exit status.
    pub(super) fn finish(mut self) -> Exit {
        let report = self.eng.shutdown();
        // Mappings this hold made go when it ends without a loss; after a loss they stay (cut)
        // until the file system on them is unmounted and an admin removes them.
        self.setup.close(self.lost);
        // Registered but never reserved (refused, interrupted, gave up waiting): withdraw.
        if let Some(f) = &self.setup.fence
            && !self.phase.was_held()
        {
            f.withdraw();
        }
        if let Some(p) = &self.opts.status_file {
            write_status_file(
                p,
                &report_lines(&report, &self.slots.formats, &self.slots.identities),
            );
        }
        if self.code != Exit::Ok {
            return self.code;
        }
        self.slots.exit_code(self.job.as_ref(), &self.signals)
    }
}

/// Starts the heartbeat engine (options from the environment; `--owner-log` wraps its fault
/// hooks) with a channel for its events.
fn start_engine(c: &Ctx, opts: &HoldOpts) -> Result<(Engine, Receiver<EngineEvent>), String> {
    let from_env = engine::Options::from_env();
    let mut faults = from_env.faults;
    if let Some(p) = &opts.owner_log {
        let host = String::from_utf8_lossy(&c.nodename);
        faults = Box::new(
            owner_log::OwnerLog::open(p, &host, faults)
                .map_err(|e| format!("--owner-log {}: {e}", p.display()))?,
        );
    }
    let (tx, rx) = mpsc::channel::<EngineEvent>();
    let eng = Engine::start(
        engine::Options {
            realtime: !opts.no_realtime,
            watchdog: None,
            faults,
            batch_io: from_env.batch_io,
        },
        tx,
    );
    Ok((eng, rx))
}

/// Warns when memory locking or real-time scheduling was asked for and is not available:
/// heartbeats may then be delayed under load.
fn warn_realtime(eng: &Engine, opts: &HoldOpts) {
    if opts.no_realtime {
        return;
    }
    let r = eng.report().realtime;
    for (what, res) in [
        ("memory locking", r.mlock),
        ("real-time scheduling", r.fifo),
    ] {
        if let Some(Err(e)) = res {
            note!("mmp: warning: {what} not available ({e}); heartbeats may be delayed under load");
        }
    }
}
