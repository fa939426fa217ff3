//! Batched heartbeat I/O through `io_uring`.
//!
//! One heartbeat is a read and a durable write of one small record. Done one system call at
//! a time, 1000 devices cost 2000 requests a second, each its own doorbell to the storage
//! (on a virtual machine, each an exit to the hypervisor): that, not our code, was 90 % of
//! the engine's CPU time. A [`Ring`] takes the reads (then the writes) of every device due
//! at about the same time and submits them with one `io_uring_enter`, so the block layer
//! dispatches them together.
//!
//! Each request is handled on its own: [`Ring::wait`] reaps whatever has completed and
//! returns, and a request still in flight stays in flight while the caller goes on (the
//! heartbeat engine services other devices meanwhile), so one slow device never holds back
//! the completions of the others.
//!
//! Only plain requests go through the ring: `O_DIRECT`, aligned, one request per record, no
//! fault injected ([`crate::blockdev::Device::direct_span`]). Everything else, and any
//! request the ring did not complete exactly (an error, a short transfer, `EAGAIN`), is done
//! again by the synchronous path, which reports errors the way every other caller sees them.
//!
//! This module holds the `unsafe` of handing buffer addresses to the kernel. The rule that
//! makes it sound: each request has a buffer of its own, owned by the ring; a buffer goes
//! `Free` -> `Reserved` ([`Ring::reserve`]; only now does [`Ring::buf`] lend it out) ->
//! `InFlight` ([`Ring::push`]; the kernel may read or write it, and nothing in this module
//! gives out a reference to it) -> `Reserved` again only when its completion has been reaped
//! -> `Free` ([`Ring::release`]). A ring dropped or retired while any request is in flight
//! leaks its buffers (never frees them), because the kernel may still use them.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use io_uring::{IoUring, opcode, types};

/// Requests in flight at once (and buffers owned by the ring): 256 requests and 256 pages
/// of buffer (1 MiB, locked in real-time mode). Callers queue what finds no free buffer.
pub const DEPTH: usize = 256;

/// Size and alignment of one request's buffer: covers a record of up to 1 KiB at any
/// alignment up to 4 KiB (a 4 KiB-sector device).
pub const BUF_LEN: usize = 4096;

#[repr(C, align(4096))]
struct Page([u8; BUF_LEN]);

/// Where a buffer is in its life (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    Free,
    Reserved,
    InFlight,
}

/// One request: what to do with a reserved buffer.
#[derive(Clone, Copy, Debug)]
pub struct RingOp<'a> {
    /// The device's descriptor (opened with `O_DIRECT`, and `O_DSYNC` for writes). The
    /// caller keeps it open until the request's completion has been reaped: a descriptor
    /// closed (and its number reused) before the kernel looked it up would send the request
    /// to another file.
    pub fd: BorrowedFd<'a>,
    /// Write (else read).
    pub write: bool,
    /// Aligned byte offset.
    pub offset: u64,
    /// Aligned length, at most [`BUF_LEN`].
    pub len: usize,
}

/// An `io_uring` instance with its request buffers.
pub struct Ring {
    ring: IoUring,
    bufs: Box<[Page]>,
    state: Vec<BufState>,
    /// Indices of `Free` buffers.
    free: Vec<usize>,
    /// Buffers `InFlight`.
    in_flight: usize,
    /// Completions reaped by [`Ring::wait`] (reused: no allocation per call).
    reaped: Vec<(u64, i32)>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("depth", &DEPTH)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// The result a request gets when the ring failed before its completion was reaped (never
/// a kernel value: those are byte counts or negated errnos in the `i32` range of `-4095..`).
/// Whether the kernel performed it is unknown.
pub const NOT_SUBMITTED: i32 = i32::MIN;

impl Ring {
    /// Sets up a ring, or says why not (no `io_uring` in this kernel, disabled by
    /// `kernel.io_uring_disabled`, refused by a seccomp filter, or a kernel older than 5.11
    /// that cannot wait with a timeout: callers then do their I/O synchronously).
    ///
    /// # Errors
    /// The `io_uring_setup` error, or [`io::ErrorKind::Unsupported`].
    pub fn new() -> io::Result<Ring> {
        // Completions are handed to the ring's task as task work: by default each one wakes
        // the sleeping submitter, so a batch of N requests costs up to N wake-ups (measured:
        // about one context switch per device-heartbeat). DEFER_TASKRUN (Linux 6.1; needs
        // SINGLE_ISSUER: only the creating thread submits, which is how the engine uses
        // it) defers that work until we wait, and wakes us once when as many completions as
        // we wait for are there. Completions are then only posted while we are in
        // `io_uring_enter` asking for events: see `Ring::wait`. COOP_TASKRUN (5.19) at least
        // avoids interrupting us; older kernels get neither.
        let depth = u32::try_from(DEPTH).unwrap_or(u32::MAX);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(depth)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(depth))
            .or_else(|_| IoUring::new(depth))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no IORING_FEAT_EXT_ARG (waits with a timeout need Linux 5.11)",
            ));
        }
        // Requests that cannot complete without blocking (a file whose time stamps need an
        // update) go to the kernel's worker threads: a few are plenty for heartbeats.
        let _ = ring.submitter().register_iowq_max_workers(&mut [2, 2]);
        let bufs = (0..DEPTH).map(|_| Page([0; BUF_LEN])).collect();
        Ok(Ring {
            ring,
            bufs,
            state: vec![BufState::Free; DEPTH],
            free: (0..DEPTH).rev().collect(),
            in_flight: 0,
            reaped: Vec::with_capacity(2 * DEPTH),
        })
    }

    /// Reserves a free buffer and returns its index, or `None` when every buffer is in use
    /// (or the ring is retired).
    pub fn reserve(&mut self) -> Option<usize> {
        if self.is_retired() {
            return None;
        }
        let k = self.free.pop()?;
        self.state[k] = BufState::Reserved;
        Some(k)
    }

    /// Free buffers (what [`Ring::reserve`] can still hand out).
    #[must_use]
    pub fn available(&self) -> usize {
        if self.is_retired() {
            0
        } else {
            self.free.len()
        }
    }

    /// Gives a reserved buffer back (a buffer in flight, or free, is left alone).
    pub fn release(&mut self, k: usize) {
        if self.state.get(k) == Some(&BufState::Reserved) {
            self.state[k] = BufState::Free;
            self.free.push(k);
        }
    }

    /// Reserved buffer `k`: a write's data goes here before [`Ring::push`], a read's data is
    /// here once its completion was reaped. `None` while the buffer is free or in flight, or
    /// once the ring is retired.
    pub fn buf(&mut self, k: usize) -> Option<&mut [u8; BUF_LEN]> {
        if self.state.get(k) != Some(&BufState::Reserved) {
            return None;
        }
        self.bufs.get_mut(k).map(|p| &mut p.0)
    }

    /// Requests in flight (pushed, completion not reaped yet).
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues `op` on reserved buffer `k`; it goes to the kernel with the next
    /// [`Ring::wait`]. From now on the buffer is in flight until that call reaps its
    /// completion. Returns `false` (nothing queued, the buffer stays reserved) when `k` is
    /// not reserved or the submission queue is full.
    ///
    /// # Panics
    /// If `op.len` exceeds [`BUF_LEN`] (a caller bug).
    pub fn push(&mut self, k: usize, op: RingOp<'_>) -> bool {
        assert!(op.len <= BUF_LEN);
        if self.buf(k).is_none() {
            return false;
        }
        let buf = self.bufs[k].0.as_mut_ptr();
        #[allow(
            clippy::cast_possible_truncation,
            reason = "at most one ring buffer, 64 KiB"
        )]
        let len = op.len as u32;
        let fd = types::Fd(op.fd.as_raw_fd());
        let entry = if op.write {
            opcode::Write::new(fd, buf, len).offset(op.offset).build()
        } else {
            opcode::Read::new(fd, buf, len).offset(op.offset).build()
        }
        .user_data(k as u64);
        // SAFETY: the entry points at `self.bufs[k]` (BUF_LEN bytes, `len` <= BUF_LEN). The
        // buffer is marked in flight below before anything else can run: from then on
        // `buf` refuses to lend it, `reserve` cannot hand it out, and only the reaping of
        // its completion in `wait` (which the kernel posts after it is done with the
        // buffer) makes it reserved again. `Drop` and `retire` leak the buffers while any
        // request is in flight, so the memory outlives the kernel's use of it. The
        // descriptor stays open until the completion is reaped (the caller's duty, see
        // `RingOp::fd`).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false; // the queue is full: nothing was queued
        }
        self.state[k] = BufState::InFlight;
        self.in_flight += 1;
        true
    }

    /// Submits what [`Ring::push`] queued, waits until at least `want` completions are
    /// ready (at most the number in flight; `0`: do not sleep) or `timeout` has passed, then
    /// reaps every completion that is ready: its buffer becomes reserved again (a read's
    /// data is there) and `done(k, result)` is called with the byte count or a negated
    /// errno. With `DEFER_TASKRUN` completions are only posted inside this call, so a
    /// caller with requests in flight must come back here regularly.
    ///
    /// If the ring itself fails, it is retired: every request still in flight is reported
    /// with [`NOT_SUBMITTED`] (whether the kernel performs it is unknown: a write must
    /// count as failed, a read may be done again synchronously), and its buffers are leaked.
    pub fn wait(&mut self, want: usize, timeout: Duration, done: &mut dyn FnMut(usize, i32)) {
        if self.is_retired() {
            return;
        }
        let want = want.min(self.in_flight);
        // Even with nothing to wait for, an enter with GETEVENTS runs the deferred task
        // work that posts completions: wait for one with a zero timeout.
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let zero = types::Timespec::new();
        let ts = if want == 0 { &zero } else { &ts };
        let args = types::SubmitArgs::new().timespec(ts);
        match self.ring.submitter().submit_with_args(want.max(1), &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) => {}
            Err(_) => {
                // Whether the kernel still holds some of our buffers is unknown: they are
                // never used again (leaked) and the ring is retired. A late completion of
                // a write the caller counts as failed lands the same or an older record,
                // which its next heartbeat's read reports as a foreign write: stop, never
                // a silent overwrite.
                self.retire(done);
                return;
            }
        }
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(k, res) in &reaped {
            let Some(k) = usize::try_from(k)
                .ok()
                .filter(|&k| self.state.get(k) == Some(&BufState::InFlight))
            else {
                continue;
            };
            self.state[k] = BufState::Reserved;
            self.in_flight -= 1;
            done(k, res);
        }
        reaped.clear();
        self.reaped = reaped;
    }

    /// Whether the ring failed and must not be used (see [`Ring::wait`]).
    #[must_use]
    pub fn is_retired(&self) -> bool {
        self.bufs.is_empty()
    }

    /// Leaks the buffers and reports every request in flight with [`NOT_SUBMITTED`].
    fn retire(&mut self, done: &mut dyn FnMut(usize, i32)) {
        let bufs = std::mem::take(&mut self.bufs);
        std::mem::forget(bufs);
        for k in 0..self.state.len() {
            if self.state[k] == BufState::InFlight {
                self.state[k] = BufState::Reserved;
                done(k, NOT_SUBMITTED);
            }
        }
        self.in_flight = 0;
        self.free.clear();
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Requests still in flight (a device that never answered) may still write into
        // their buffers after the ring's descriptor is closed: leak them all.
        if self.in_flight > 0 {
            std::mem::forget(std::mem::take(&mut self.bufs));
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns")]
mod tests {
    use super::*;
    use crate::blockdev::{Device, IoMode};
    use std::fs;

    /// Pushes `ops` (each on its own reserved buffer, `fill` for writes), waits for all of
    /// them, and returns (buffer, result) per op. Buffers stay reserved.
    fn run(ring: &mut Ring, ops: &[RingOp<'_>], fill: &[u8]) -> Vec<(usize, i32)> {
        let mut ks = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            let k = ring.reserve().unwrap();
            if op.write {
                ring.buf(k).unwrap()[..op.len].fill(fill[n]);
            }
            assert!(ring.push(k, *op));
            // In flight: not lent out, not reserved twice.
            assert!(ring.buf(k).is_none());
            ks.push(k);
        }
        let mut res = vec![NOT_SUBMITTED; DEPTH];
        while ring.in_flight() > 0 {
            ring.wait(ring.in_flight(), Duration::from_secs(5), &mut |k, r| {
                res[k] = r
            });
        }
        ks.iter().map(|&k| (k, res[k])).collect()
    }

    #[test]
    fn requests_round_trip_and_buffers_follow_their_states() {
        let mut ring = match Ring::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: no io_uring here ({e})");
                return;
            }
        };
        let dir = tempfile_dir();
        let paths: Vec<_> = (0..3).map(|k| dir.join(format!("r{k}.img"))).collect();
        for p in &paths {
            fs::write(p, vec![0u8; 16384]).unwrap();
        }
        let devs: Vec<Device> = paths
            .iter()
            .map(|p| Device::open(p, true).unwrap())
            .collect();
        if devs[0].io_mode() != IoMode::Direct {
            eprintln!("skipped: {} refuses O_DIRECT", dir.display());
            return;
        }
        // Three writes at once, each its own pattern at its own offset.
        let mut ops = Vec::new();
        for (k, d) in devs.iter().enumerate() {
            ops.push(RingOp {
                fd: d.fd(),
                write: true,
                offset: 512 * (k as u64 + 1),
                len: 512,
            });
        }
        let done = run(&mut ring, &ops, &[0x10, 0x11, 0x12]);
        assert!(done.iter().all(|&(_, r)| r == 512), "{done:?}");
        for (k, _) in done {
            ring.release(k);
        }
        for (k, p) in paths.iter().enumerate() {
            let bytes = fs::read(p).unwrap();
            let at = 512 * (k + 1);
            assert!(bytes[at..at + 512].iter().all(|&b| b == 0x10 + k as u8));
            assert!(bytes[..at].iter().all(|&b| b == 0));
        }
        // Reads of the same: the data is in each buffer once its completion was reaped.
        for op in &mut ops {
            op.write = false;
        }
        let done = run(&mut ring, &ops, &[0; 3]);
        for (n, &(k, r)) in done.iter().enumerate() {
            assert_eq!(r, 512);
            assert!(
                ring.buf(k).unwrap()[..512]
                    .iter()
                    .all(|&b| b == 0x10 + n as u8)
            );
            ring.release(k);
            assert!(ring.buf(k).is_none(), "a free buffer is not lent out");
        }
        // Past the end of the file: a short (zero) read, which callers redo synchronously;
        // a misaligned direct request: a negated errno.
        let past = RingOp {
            fd: devs[0].fd(),
            write: false,
            offset: 16384,
            len: 512,
        };
        let odd = RingOp {
            offset: 100,
            ..past
        };
        let done = run(&mut ring, &[past, odd], &[0; 2]);
        assert_eq!(done[0].1, 0);
        assert_eq!(done[1].1, -libc::EINVAL);
        // Every buffer can be reserved, and no more.
        for (k, _) in done {
            ring.release(k);
        }
        let all: Vec<usize> = (0..DEPTH).map(|_| ring.reserve().unwrap()).collect();
        assert!(ring.reserve().is_none());
        for k in all {
            ring.release(k);
        }
        // Waiting with nothing in flight returns at once.
        ring.wait(1, Duration::from_secs(5), &mut |_, _| {
            panic!("nothing in flight")
        });
        assert!(!ring.is_retired());
        let _ = fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mmp-uring-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
