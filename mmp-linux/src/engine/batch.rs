//! Batched heartbeat I/O: the `io_uring` ring and the engine's view of its buffers
//! ([`Batch`]), staging and submitting a pass's requests together, reaping completions,
//! and feeding requests that waited for a free buffer.

use super::pool::STUCK;
use super::worker::{RING_POLL, STRAGGLER, SlotIo, THREAD_POLL, Worker};
use super::*;

/// A ring request: whose it is and what it needs until its completion is reaped.
pub(super) struct RingReq {
    pub(super) slot: usize,
    pub(super) p: PendingIo,
    pub(super) span: DirectSpan,
    /// A write's deadline ([`Machine::write_deadline`]): not submitted at or after it.
    pub(super) not_after: Option<Instant>,
    /// When it went to the kernel (`None`: staged, not yet submitted).
    pub(super) pushed: Option<Instant>,
    /// Keeps the descriptor open until the completion is reaped.
    pub(super) target: Arc<Target>,
}

/// The ring and the engine's view of its buffers.
pub(super) struct Batch {
    pub(super) ring: Ring,
    /// Per buffer: the request using it.
    pub(super) owners: Vec<Option<RingReq>>,
    /// Buffers reserved and filled in this pass, submitted together just before the wait.
    pub(super) staged: Vec<usize>,
    /// Slots whose plain request found no free buffer, oldest first.
    pub(super) starved: VecDeque<usize>,
    /// Completions reaped by the last wait, handled at the start of the next pass.
    pub(super) reaped: Vec<(usize, i32)>,
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

impl Worker {
    /// A ring completion: buffer `k`, result `res`.
    pub(super) fn ring_done(&mut self, k: usize, res: i32) {
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
            None if p.write => driver::complete(m, &p, Err(IoError::Os(libc::EIO)), &self.rec),
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

    /// Gives freed ring buffers to the slots waiting for one, oldest first.
    pub(super) fn feed_starved(&mut self) {
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
    pub(super) fn flush(&mut self) {
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
    pub(super) fn wait_ring(&mut self, until: Instant) {
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
    pub(super) fn reap(&mut self) {
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
}
