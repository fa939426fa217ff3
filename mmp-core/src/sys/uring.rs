//! Batched heartbeat I/O through `io_uring`.
//!
//! One heartbeat is a read and a durable write of one small record. Done one system call at
//! a time, 1000 devices cost 2000 requests a second, each its own doorbell to the storage
//! (on a virtual machine, each an exit to the hypervisor): that, not our code, was 90 % of
//! the engine's CPU time. A [`Ring`] submits the reads (then the writes) of every device due
//! in one pass with one `io_uring_enter`, so the block layer dispatches them together.
//!
//! Only plain requests go through the ring: `O_DIRECT`, aligned, one request per record, no
//! fault injected ([`crate::sys::blockdev::Device::direct_span`]). Everything else, and any
//! request the ring did not complete exactly (an error, a short transfer, `EAGAIN`), is done
//! again by the synchronous path, which reports errors the way every other caller sees them.
//!
//! This module holds the `unsafe` of handing buffer addresses to the kernel. The rule that
//! makes it sound: [`Ring::run`] does not return while any request it submitted is in
//! flight, and the buffers belong to the ring, so nothing can move, reuse or free them while
//! the kernel may still read or write them.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{IoUring, opcode, types};

/// Requests per submission (and buffers owned by the ring): 256 requests and 256 pages of
/// buffer (1 MiB, locked in real-time mode): a pass with more due devices submits in
/// several batches.
pub const DEPTH: usize = 256;

/// Size and alignment of one request's buffer: covers a record of up to 1 KiB at any
/// alignment up to 4 KiB (a 4 KiB-sector device).
pub const BUF_LEN: usize = 4096;

#[repr(C, align(4096))]
struct Page([u8; BUF_LEN]);

/// One request: buffer `k` of the ring for the `k`-th request of a batch.
#[derive(Clone, Copy, Debug)]
pub struct RingOp<'a> {
    /// The device's descriptor (opened with `O_DIRECT`, and `O_DSYNC` for writes).
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
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("depth", &DEPTH).finish()
    }
}

/// The result a request gets when it could not be submitted at all (never a kernel value:
/// those are byte counts or negated errnos in the `i32` range of `-4095..`).
pub const NOT_SUBMITTED: i32 = i32::MIN;

impl Ring {
    /// Sets up a ring, or says why not (no `io_uring` in this kernel, disabled by
    /// `kernel.io_uring_disabled`, or refused by a seccomp filter: callers then do
    /// their I/O synchronously).
    ///
    /// # Errors
    /// The `io_uring_setup` error.
    pub fn new() -> io::Result<Ring> {
        // Completions are handed to the ring's task as task work: by default each one wakes
        // the sleeping submitter, so a batch of N requests costs up to N wake-ups (measured:
        // about one context switch per device-heartbeat). DEFER_TASKRUN (Linux 6.1; needs
        // SINGLE_ISSUER: only the creating thread submits, which is how the engine uses
        // it) defers that work until we wait, and wakes us once when the batch is complete.
        // COOP_TASKRUN (5.19) at least avoids interrupting us; older kernels get neither.
        let depth = DEPTH as u32;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(depth)
            .or_else(|_| IoUring::builder().setup_coop_taskrun().build(depth))
            .or_else(|_| IoUring::new(depth))?;
        // Requests that cannot complete without blocking (a file whose time stamps need an
        // update) go to the kernel's worker threads: a few are plenty for heartbeats.
        let _ = ring.submitter().register_iowq_max_workers(&mut [2, 2]);
        let bufs = (0..DEPTH).map(|_| Page([0; BUF_LEN])).collect();
        Ok(Ring { ring, bufs })
    }

    /// Buffer `k` (`k < DEPTH`): a write's data goes here before [`Ring::run`], a read's data
    /// is here after it. `None` once the ring is retired.
    pub fn buf(&mut self, k: usize) -> Option<&mut [u8; BUF_LEN]> {
        self.bufs.get_mut(k).map(|p| &mut p.0)
    }

    /// Performs `ops` (at most [`DEPTH`]), request `k` with buffer `k` (`None`: nothing for
    /// that buffer), and stores each result in `res[k]`: the byte count, a negated errno, or
    /// [`NOT_SUBMITTED`]. Returns when every submitted request has completed.
    ///
    /// # Panics
    /// If `ops` is longer than [`DEPTH`] or `res` shorter than `ops`, or a length exceeds
    /// [`BUF_LEN`] (caller bugs).
    pub fn run(&mut self, ops: &[Option<RingOp<'_>>], res: &mut [i32]) {
        assert!(ops.len() <= DEPTH && res.len() >= ops.len());
        res[..ops.len()].fill(NOT_SUBMITTED);
        if self.is_retired() {
            return;
        }
        let mut queued = 0usize;
        {
            let mut sq = self.ring.submission();
            for (k, op) in ops.iter().enumerate() {
                let Some(op) = op else { continue };
                assert!(op.len <= BUF_LEN);
                let buf = self.bufs[k].0.as_mut_ptr();
                let len = op.len as u32;
                let fd = types::Fd(op.fd.as_raw_fd());
                let entry = if op.write {
                    opcode::Write::new(fd, buf, len).offset(op.offset).build()
                } else {
                    opcode::Read::new(fd, buf, len).offset(op.offset).build()
                }
                .user_data(k as u64);
                // SAFETY: the entry points at `self.bufs[k]` (BUF_LEN bytes, `len` <= BUF_LEN),
                // which the ring owns and does not touch again until the request completes:
                // this function waits below for the completion of every entry it queued.
                // The descriptor is borrowed for the duration of this call.
                if unsafe { sq.push(&entry) }.is_err() {
                    break; // the queue is full: the rest stays NOT_SUBMITTED
                }
                queued += 1;
            }
        }
        let mut done = 0usize;
        while done < queued {
            // Submits what is still queued and waits for every outstanding completion (one
            // wake-up per batch, not one per request).
            match self.ring.submit_and_wait(queued - done) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(_) => {
                    // The ring itself failed: whether the kernel still holds some of our
                    // buffers is unknown, so they are never used again (leaked) and the ring
                    // is retired. What did not complete stays NOT_SUBMITTED: the caller
                    // does it synchronously (a late completion of a write we also redo
                    // lands the same or an older record, which the next heartbeat's read
                    // reports as a foreign write: stop, never a silent overwrite).
                    self.retire();
                    break;
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = usize::try_from(cqe.user_data())
                    .ok()
                    .and_then(|k| res.get_mut(k))
                {
                    *r = cqe.result();
                    done += 1;
                }
            }
        }
    }

    /// Whether the ring failed and must not be used (see [`Ring::run`]).
    #[must_use]
    pub fn is_retired(&self) -> bool {
        self.bufs.is_empty()
    }

    fn retire(&mut self) {
        let bufs = std::mem::take(&mut self.bufs);
        std::mem::forget(bufs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::blockdev::{Device, IoMode};
    use std::fs;

    #[test]
    fn batched_writes_then_reads_round_trip() {
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
        // Three writes in one batch, each its own pattern at its own offset.
        let mut ops = Vec::new();
        for (k, d) in devs.iter().enumerate() {
            ring.buf(k).unwrap()[..512].fill(0x10 + k as u8);
            ops.push(RingOp {
                fd: d.fd(),
                write: true,
                offset: 512 * (k as u64 + 1),
                len: 512,
            });
        }
        let mut res = [0i32; DEPTH];
        ring.run(&some(&ops), &mut res);
        assert_eq!(&res[..3], &[512, 512, 512]);
        for (k, p) in paths.iter().enumerate() {
            let bytes = fs::read(p).unwrap();
            let at = 512 * (k + 1);
            assert!(bytes[at..at + 512].iter().all(|&b| b == 0x10 + k as u8));
            assert!(bytes[..at].iter().all(|&b| b == 0));
        }
        // Reads of the same: the data arrives in the buffers.
        for (k, op) in ops.iter_mut().enumerate() {
            op.write = false;
            ring.buf(k).unwrap().fill(0);
        }
        // A hole in the batch: buffer 1 is left alone.
        let mut holed = some(&ops);
        holed[1] = None;
        ring.buf(1).unwrap().fill(0xEE);
        ring.run(&holed, &mut res);
        assert_eq!(res[1], NOT_SUBMITTED);
        assert!(ring.buf(1).unwrap().iter().all(|&b| b == 0xEE));
        ring.buf(1).unwrap().fill(0);
        ring.run(&some(&ops), &mut res);
        assert_eq!(&res[..3], &[512, 512, 512]);
        for k in 0..3 {
            assert!(
                ring.buf(k).unwrap()[..512]
                    .iter()
                    .all(|&b| b == 0x10 + k as u8)
            );
        }
        // Past the end of the file: a short (zero) read, which callers redo synchronously;
        // a misaligned direct request: a negated errno.
        let past = [RingOp {
            fd: devs[0].fd(),
            write: false,
            offset: 16384,
            len: 512,
        }];
        ring.run(&some(&past), &mut res);
        assert_eq!(res[0], 0);
        let odd = [RingOp {
            fd: devs[0].fd(),
            write: false,
            offset: 100,
            len: 512,
        }];
        ring.run(&some(&odd), &mut res);
        assert_eq!(res[0], -libc::EINVAL);
        assert!(!ring.is_retired());
        let _ = fs::remove_dir_all(&dir);
    }

    fn some<'a>(ops: &[RingOp<'a>]) -> Vec<Option<RingOp<'a>>> {
        ops.iter().copied().map(Some).collect()
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mmp-uring-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }
}
