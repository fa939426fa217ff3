//! The engine thread: its slots, the ring batch, the deadline heap, and the pass that
//! services them ([`run`]).

use super::batch::{Batch, RingReq};
use super::pool::{Job, JobDone, Pool};
use super::report::publish;
use super::*;

/// A device and its machine, boxed once by [`Engine::add`] and kept in that box: moving
/// the machine (about 5 KiB, mostly record buffers) into the slot vector would leave the
/// freed box behind in the adding thread's heap, and real-time mode keeps freed memory
/// resident (locked), so 1000 devices would cost twice their state in RSS.
pub(super) struct Dev {
    /// Dropped (`None`) once the machine has finished or the slot was forgotten: a released
    /// device must not stay open (device-mapper, LVM and loop refuse to remove a device
    /// someone holds open). A request still outstanding holds its own reference, so the
    /// descriptor closes when that request is over.
    pub(super) target: Option<Arc<Target>>,
    pub(super) path: PathBuf,
    pub(super) machine: Machine,
}

/// A slot's one outstanding request (a machine has at most one).
#[derive(Clone, Copy, Debug)]
pub(super) enum SlotIo {
    /// None.
    Idle,
    /// For the ring, waiting for a free buffer (in [`Batch::starved`]).
    Starved(PendingIo),
    /// In the ring (staged or in flight; [`Batch::owners`] knows its buffer).
    Ring,
    /// On an I/O thread ([`Pool`]).
    Thread,
}

pub(super) struct Slot {
    /// This device's id (the slot's index and generation).
    pub(super) id: SlotId,
    pub(super) dev: Box<Dev>,
    pub(super) acquired: bool,
    pub(super) last_write: Option<Instant>,
    pub(super) last_write_wall_ms: Option<u64>,
    /// The deadline this slot has in the heap (entries that do not match are stale): the
    /// machine's next timeout, or while a request is outstanding its stall deadline.
    pub(super) queued: Option<Instant>,
    /// Already in this pass's work list.
    pub(super) marked: bool,
    /// Counted in `Worker::done`.
    pub(super) finished: bool,
    /// Taken into this pass before its deadline: start its heartbeat early.
    pub(super) early: bool,
    /// [`Engine::forget`]: never driven again. Also set when the slot is vacated.
    pub(super) forgotten: bool,
    /// [`Engine::remove`]: vacate the slot once finished with nothing outstanding.
    pub(super) removed: bool,
    /// Vacated: its id is on the free list, a later add takes the slot (the old machine
    /// stays boxed here until then, so vacant slots cost no allocation churn).
    pub(super) vacant: bool,
    /// The request outstanding.
    pub(super) io: SlotIo,
    /// Phase and finished flag when last accounted (a change is published at once).
    pub(super) seen: (Phase, bool),
}

/// How long a ring request counts as young: a wait sleeps until every young request has
/// completed (one wake-up for a whole batch on healthy storage), but no longer than this
/// after the oldest young one was submitted. An older request is a straggler: the others'
/// completions are handled as they come, without waiting for it.
pub(super) const STRAGGLER: Duration = Duration::from_millis(10);
/// Longest sleep in the ring while requests are in flight (commands arrive on a channel the
/// ring cannot see): how late a command may be handled while a device is stuck.
pub(super) const RING_POLL: Duration = Duration::from_millis(20);
/// The same while I/O threads have requests outstanding for less than [`STUCK`] (their
/// completions arrive over the command channel).
pub(super) const THREAD_POLL: Duration = Duration::from_millis(2);
/// On stop, once every machine has finished: how long to wait for requests still
/// outstanding (a stuck device's) before the thread ends anyway, leaving them to the kernel
/// (their ring buffers and descriptors are leaked; an I/O thread finishes on its own).
pub(super) const STOP_GRACE: Duration = Duration::from_secs(2);

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
pub(super) struct Worker {
    pub(super) slots: Vec<Slot>,
    pub(super) heap: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Slots to service in this pass (reused: no allocation per pass).
    pub(super) work: Vec<usize>,
    /// Slots with an outcome.
    pub(super) done: usize,
    /// Scratch for [`Worker::collect_early`] (reused: no allocation per pass).
    pub(super) deferred: Vec<(Instant, usize)>,
    pub(super) gaps: Histogram,
    pub(super) stopping: bool,
    pub(super) watchdog: Option<Watchdog>,
    pub(super) fence: Option<SelfFence>,
    pub(super) pets: u64,
    pub(super) lost_any: bool,
    /// A slot changed phase or finished, or one was added: publish now.
    pub(super) changed: bool,
    /// A heartbeat write succeeded in this pass (the watchdog is petted).
    pub(super) beat_ok: bool,
    pub(super) batch: Option<Batch>,
    pub(super) pool: Pool,
    /// The latest instant an injected fault delay of a request handed to an I/O thread
    /// runs to (test builds): such a request stands for a write held in the storage, which
    /// an exiting process cannot take back, so stopping waits for it beyond
    /// [`STOP_GRACE`].
    pub(super) fault_until: Option<Instant>,
    pub(super) faults: Box<dyn FaultHook + Send>,
    pub(super) events: Sender<EngineEvent>,
    /// Vacated slots' next ids, shared with [`Engine::add`].
    pub(super) free: Arc<Mutex<Vec<SlotId>>>,
    /// Scratch record buffer.
    pub(super) rec: [u8; MAX_RECORD_LEN],
}

impl Worker {
    pub(super) fn mark(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && !s.marked
            && !s.forgotten
        {
            s.marked = true;
            self.work.push(i);
        }
    }

    pub(super) fn mark_all(&mut self) {
        for i in 0..self.slots.len() {
            self.mark(i);
        }
    }

    /// Applies one command; returns `false` when the thread must end at once (abandon).
    fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Add(id, b) => self.add(id, b),
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
            Cmd::Forget(id) => {
                let i = id.index();
                if let Some(s) = self.slots.get_mut(i)
                    && s.id == id
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
                    self.try_vacate(i);
                }
            }
            Cmd::Remove(id) => {
                let i = id.index();
                if let Some(s) = self.slots.get_mut(i)
                    && s.id == id
                {
                    s.removed = true;
                    self.try_vacate(i);
                }
            }
            Cmd::Release(which) => {
                let now = clock::now();
                for s in &mut self.slots {
                    if which.is_none_or(|w| w == s.id) && !s.forgotten {
                        s.dev.machine.release(now);
                    }
                }
                match which {
                    Some(id) if self.slots.get(id.index()).is_some_and(|s| s.id == id) => {
                        self.mark(id.index());
                    }
                    Some(_) => {}
                    None => self.mark_all(),
                }
            }
            Cmd::Stop => self.stop(),
            Cmd::Abandon => return false,
        }
        true
    }

    /// Puts a new device in slot `id` (a vacated one, or the next new index).
    fn add(&mut self, id: SlotId, dev: Box<Dev>) {
        let i = id.index();
        let mut slot = Slot {
            id,
            dev,
            acquired: false,
            last_write: None,
            last_write_wall_ms: None,
            queued: None,
            marked: false,
            finished: false,
            early: false,
            forgotten: false,
            removed: false,
            vacant: false,
            io: SlotIo::Idle,
            seen: (Phase::Reading, false),
        };
        if i == self.slots.len() {
            self.slots.push(slot);
        } else if let Some(old) = self.slots.get_mut(i).filter(|o| o.vacant) {
            // Still in this pass's work list if it was marked: stay there once.
            slot.marked = old.marked;
            // The old device was counted finished.
            self.done -= 1;
            *old = slot;
        } else {
            // Engine::add hands out only new indexes and vacated slots.
            debug_assert!(false, "slot {id:?} is not free");
            return;
        }
        self.mark(i);
        self.changed = true;
    }

    /// Vacates slot `i` if its front end removed it, its device finished and no request
    /// of it is outstanding (a request in the ring or on a thread refers to the slot by
    /// index until it completes); its next id goes on the free list.
    fn try_vacate(&mut self, i: usize) {
        let Some(s) = self.slots.get_mut(i) else {
            return;
        };
        if s.vacant || !s.removed || !s.finished || !matches!(s.io, SlotIo::Idle) {
            return;
        }
        s.vacant = true;
        s.forgotten = true;
        s.queued = None;
        s.dev.target = None;
        self.changed = true;
        let next = SlotId {
            index: s.id.index,
            generation: s.id.generation.wrapping_add(1),
        };
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(next);
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
    pub(super) fn kick(&mut self, i: usize) {
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
    pub(super) fn advance(&mut self, i: usize) {
        if self.slots[i].forgotten {
            // Its request may just have come back: the slot may be free now.
            self.try_vacate(i);
            return;
        }
        let Worker {
            slots,
            faults,
            events,
            rec,
            ..
        } = self;
        let s = &mut slots[i];
        let id = s.id;
        let mut on_event = |e: &Event| {
            let _ = events.send(EngineEvent {
                slot: id,
                event: *e,
            });
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
    pub(super) fn dispatch(&mut self, i: usize, p: PendingIo, target: Arc<Target>) {
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
    pub(super) fn send_to_thread(
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
    pub(super) fn redo(&mut self, i: usize, p: PendingIo, target: Arc<Target>) {
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

    /// Bookkeeping after a slot moved: gaps, loss, completion, the slot's next deadline.
    pub(super) fn account(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.forgotten {
            self.try_vacate(i);
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
        self.try_vacate(i);
    }
}

pub(super) fn run(
    mut options: Options,
    rx: &Receiver<Cmd>,
    done: Sender<Cmd>,
    events: &Sender<EngineEvent>,
    report: &Mutex<Report>,
    free: Arc<Mutex<Vec<SlotId>>>,
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
        free,
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
