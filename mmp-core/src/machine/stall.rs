//! A request that does not come back: the lease ends while the machine still waits for an
//! I/O it asked for.
//!
//! The machine normally notices that its lease ran out when an input arrives (a read or
//! write completion, an error, a timeout). While a request of an owned step is outstanding
//! no such input comes: a device on a failing path can keep one request for tens of seconds.
//! A driver that does not wait for the request (the heartbeat engine keeps servicing other
//! devices meanwhile) asks [`Machine::stall_deadline`] when the outcome of the request stops
//! mattering, and calls [`Machine::handle_stall`] once that instant has passed: the machine
//! self-fences on its own, with the request still in flight.

use super::{Machine, Step};
use crate::time::{Instant, Now};

impl Machine {
    /// While an I/O is outstanding in a step where the machine owns the device (heartbeat
    /// read/write, release read/write): the end of the lease, past which the request's
    /// result no longer matters. `None` otherwise (and with self-fencing off, where the
    /// lease never ends).
    #[must_use]
    pub fn stall_deadline(&self) -> Option<Instant> {
        match self.step {
            Step::BeatRead { .. }
            | Step::BeatWrite { .. }
            | Step::ReleaseRead
            | Step::ReleaseWrite
                if self.cfg.self_fence() =>
            {
                self.lease_until
            }
            _ => None,
        }
    }

    /// The outstanding I/O has not completed by `now`: if the lease has run out, the machine
    /// self-fences ([`Outcome::Lost`](super::Outcome::Lost) with
    /// [`Loss::Fenced`](super::Loss::Fenced)); the request's completion, when it comes,
    /// must then not be delivered (a finished machine ignores inputs anyway). Before the end
    /// of the lease, or when no owned request is outstanding, nothing happens.
    pub fn handle_stall(&mut self, now: Now) {
        if self.stall_deadline().is_some() && self.lease_expired(now.mono) {
            self.fence(now.mono);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::native::Record;
    use crate::machine::{
        Config, Event, Identity, IoRequest, Layout, Loss, MAX_RECORD_LEN, Op, Outcome,
    };
    use crate::time::Duration;
    use std::vec::Vec;

    /// A one-host disk and clock (virtual time, microseconds).
    struct Disk {
        bytes: Vec<u8>,
        now_us: u64,
    }

    impl Disk {
        fn now(&self) -> Now {
            Now::new(Instant::from_micros(self.now_us), 1_700_000_000_000)
        }

        /// Performs the outstanding I/O, if any; returns whether there was one.
        fn io(&mut self, m: &mut Machine) -> bool {
            let now = self.now();
            match m.poll_io() {
                Some(IoRequest::Read { offset_bytes, len }) => {
                    let o = usize::try_from(offset_bytes).unwrap();
                    let data = self.bytes[o..o + len].to_vec();
                    m.handle_read_done(now, &data);
                    true
                }
                Some(IoRequest::Write { offset_bytes, len }) => {
                    let mut buf = [0u8; MAX_RECORD_LEN];
                    if m.emit_block(now, &mut buf) {
                        let o = usize::try_from(offset_bytes).unwrap();
                        self.bytes[o..o + len].copy_from_slice(&buf[..len]);
                        m.handle_write_done(now);
                    }
                    true
                }
                None => false,
            }
        }

        /// Runs `m` until it holds the device and sits between heartbeats.
        fn hold(&mut self, m: &mut Machine) {
            for _ in 0..10_000 {
                while self.io(m) {}
                if m.is_held() && m.poll_timeout().is_some() {
                    return;
                }
                let t = m.poll_timeout().expect("a deadline while acquiring");
                self.now_us = self.now_us.max(t.as_micros());
                m.handle_timeout(self.now());
            }
            panic!("not held");
        }
    }

    /// A held native machine (interval 100 ms, fail window 1 s) and its disk.
    fn held(self_fence: bool) -> (Machine, Disk) {
        let mut disk = Disk {
            bytes: std::vec![0; 4096],
            now_us: 1_000_000,
        };
        Record::formatted([1; 16], 100, 10, 0).emit(&mut disk.bytes[..512]);
        let mut cfg = Config::new(
            Layout::Native { offset_bytes: 0 },
            Identity::new(1, b"me", b"/dev/loop7"),
            7,
        );
        cfg.self_fence = self_fence;
        let mut m = Machine::new(cfg, Op::Acquire, disk.now());
        disk.hold(&mut m);
        (m, disk)
    }

    fn finished(m: &mut Machine) -> Option<Outcome> {
        let mut out = None;
        while let Some(e) = m.poll_event() {
            if let Event::Finished(o) = e {
                out = Some(o);
            }
        }
        out
    }

    #[test]
    fn no_stall_deadline_unless_an_owned_request_is_outstanding() {
        let (mut m, mut disk) = held(true);
        // Idle between heartbeats: the deadline is a timeout, not a stall.
        assert_eq!(m.stall_deadline(), None);
        let lease = m.owned_until().unwrap();
        // The heartbeat read is outstanding: the lease end.
        disk.now_us = m.poll_timeout().unwrap().as_micros();
        m.handle_timeout(disk.now());
        assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
        assert_eq!(m.stall_deadline(), Some(lease));
        // The read completes: the write is outstanding, still the same lease.
        let data = disk.bytes[..512].to_vec();
        m.handle_read_done(disk.now(), &data);
        assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
        assert_eq!(m.stall_deadline(), Some(lease));
        let mut buf = [0u8; MAX_RECORD_LEN];
        assert!(m.emit_block(disk.now(), &mut buf));
        disk.bytes[..512].copy_from_slice(&buf[..512]);
        m.handle_write_done(disk.now());
        // Written: a new lease, nothing outstanding.
        assert!(m.owned_until().unwrap() > lease);
        assert_eq!(m.stall_deadline(), None);
        // Release (its verify read, then the CLEAN write): owned steps too.
        m.release(disk.now());
        assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
        assert_eq!(m.stall_deadline(), m.owned_until());
        assert!(m.stall_deadline().is_some());
        let data = disk.bytes[..512].to_vec();
        m.handle_read_done(disk.now(), &data);
        assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
        assert!(m.stall_deadline().is_some());
        assert!(m.emit_block(disk.now(), &mut buf));
        m.handle_write_done(disk.now());
        assert_eq!(finished(&mut m), Some(Outcome::Released));
        assert_eq!(m.stall_deadline(), None);
        // An acquire in progress does not own the device: no stall deadline.
        let mut cfg = *m.config();
        cfg.random_seed = 8;
        let fresh = Machine::new(cfg, Op::Acquire, disk.now());
        assert_eq!(fresh.stall_deadline(), None);
        // Self-fencing off: the lease never ends, so neither does a stall.
        let (mut m, mut disk) = held(false);
        disk.now_us = m.poll_timeout().unwrap().as_micros();
        m.handle_timeout(disk.now());
        assert_eq!(m.stall_deadline(), None);
    }

    #[test]
    fn a_request_outstanding_past_the_lease_fences_and_its_completion_is_ignored() {
        let (mut m, mut disk) = held(true);
        disk.now_us = m.poll_timeout().unwrap().as_micros();
        m.handle_timeout(disk.now());
        assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
        let deadline = m.stall_deadline().unwrap();
        let last_write = m.stats().last_write.unwrap();
        // Before the end of the lease: nothing happens.
        disk.now_us = deadline.as_micros() - 1;
        m.handle_stall(disk.now());
        assert!(m.is_held());
        assert_eq!(finished(&mut m), None);
        // At the end of the lease, the read still in flight: fenced.
        disk.now_us = deadline.as_micros();
        m.handle_stall(disk.now());
        assert!(!m.is_held());
        assert_eq!(m.owned_until(), None);
        assert_eq!(m.stall_deadline(), None);
        let fail_window = m.timing().unwrap().fail_window;
        assert_eq!(fail_window, Duration::from_secs(1));
        assert_eq!(
            finished(&mut m),
            Some(Outcome::Lost(Loss::Fenced {
                since_last_write: Instant::from_micros(disk.now_us).saturating_since(last_write),
                fail_window,
            }))
        );
        // The read finally comes back: ignored, nothing more is written.
        disk.now_us += 10_000_000;
        let data = disk.bytes[..512].to_vec();
        m.handle_read_done(disk.now(), &data);
        assert_eq!(m.poll_io(), None);
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(finished(&mut m), None);
        assert!(matches!(
            m.outcome(),
            Some(Outcome::Lost(Loss::Fenced { .. }))
        ));
        // A second stall call on a finished machine is a no-op.
        m.handle_stall(disk.now());
        assert_eq!(finished(&mut m), None);

        // The same for a write in flight.
        let (mut m, mut disk) = held(true);
        disk.now_us = m.poll_timeout().unwrap().as_micros();
        m.handle_timeout(disk.now());
        assert!(disk.io(&mut m)); // the read completes
        assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
        let mut buf = [0u8; MAX_RECORD_LEN];
        assert!(m.emit_block(disk.now(), &mut buf));
        let beats = m.stats().beats;
        disk.now_us = m.stall_deadline().unwrap().as_micros() + 5;
        m.handle_stall(disk.now());
        assert!(matches!(
            finished(&mut m),
            Some(Outcome::Lost(Loss::Fenced { .. }))
        ));
        m.handle_write_done(disk.now());
        assert_eq!(m.stats().beats, beats); // the late write counts for nothing
        assert_eq!(m.poll_io(), None);
        assert_eq!(finished(&mut m), None);
    }
}
