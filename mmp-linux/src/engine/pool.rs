//! The I/O threads: synchronous requests the ring cannot take (fault injection, buffered
//! image files, `MMP_IO=sync`, no `io_uring`), performed off the engine thread.

use super::*;

/// A synchronous request for an I/O thread.
pub(super) struct Job {
    pub(super) slot: usize,
    pub(super) p: PendingIo,
    /// A write's block in, a read's data out.
    pub(super) rec: Box<[u8; MAX_RECORD_LEN]>,
    pub(super) target: Arc<Target>,
    /// A write's deadline ([`Machine::write_deadline`]): not issued at or after it.
    pub(super) not_after: Option<Instant>,
}

/// How a synchronous request ended (sent back over the command channel).
pub(super) struct JobDone {
    pub(super) slot: usize,
    pub(super) p: PendingIo,
    /// `None`: not issued, its deadline had passed (a write only).
    pub(super) res: Option<Result<(), IoError>>,
    pub(super) rec: Box<[u8; MAX_RECORD_LEN]>,
}

/// The I/O threads that do synchronous requests (fault injection, buffered image files,
/// `MMP_IO=sync`, requests the ring did not complete exactly), so that the heartbeat thread
/// never blocks on a device. Threads start on demand: up to [`POOL_BASE`] busy at once,
/// plus one per request outstanding longer than [`STUCK`] (a stuck device holds its thread
/// without starving the others), at most [`POOL_MAX`]. They live until the engine ends.
pub(super) struct Pool {
    pub(super) jobs: Option<Sender<Job>>,
    pub(super) queue: Arc<Mutex<Receiver<Job>>>,
    pub(super) done: Sender<Cmd>,
    pub(super) threads: usize,
    /// Requests handed out and not back yet: slot and when.
    pub(super) outstanding: Vec<(usize, Instant)>,
}

/// Thread-pool sizing, see [`Pool`].
const POOL_BASE: usize = 4;
/// See [`Pool`].
const POOL_MAX: usize = 64;
/// See [`Pool`].
pub(super) const STUCK: Duration = Duration::from_secs(1);
/// Stack of an I/O thread (memory is locked in real-time mode, so keep it small).
const IO_STACK: usize = 256 * 1024;

impl Pool {
    pub(super) fn new(done: Sender<Cmd>) -> Pool {
        let (tx, rx) = mpsc::channel();
        Pool {
            jobs: Some(tx),
            queue: Arc::new(Mutex::new(rx)),
            done,
            threads: 0,
            outstanding: Vec::new(),
        }
    }

    pub(super) fn send(&mut self, job: Job) {
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

    pub(super) fn finished(&mut self, slot: usize) {
        if let Some(k) = self.outstanding.iter().position(|&(s, _)| s == slot) {
            self.outstanding.swap_remove(k);
        }
    }
}

/// An I/O thread: performs jobs until the engine ends.
pub(super) fn io_thread(queue: &Mutex<Receiver<Job>>, done: &Sender<Cmd>) {
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
