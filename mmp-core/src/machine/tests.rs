//! Golden transcripts and rule tests for the machine, against a one-host in-memory disk.

use super::*;
use crate::format::ext4::{Block, SEQ_CLEAN, SEQ_FSCK};
use crate::format::native::{Record, State};
use std::string::String;
use std::vec::Vec;

const SEED: Option<u32> = Some(0x643D_BF5B);
const OFF: u64 = 4096;

fn ext4_layout(upd: u16) -> Layout {
    Layout::Ext4 {
        offset_bytes: OFF,
        csum_seed: SEED,
        update_interval_s: upd,
    }
}

fn native_layout() -> Layout {
    Layout::Native { offset_bytes: 0 }
}

/// A disk and a clock for one machine; `on_time` lets a test play another host.
struct Rig {
    disk: Vec<u8>,
    now_us: u64,
    log: Vec<String>,
    writes: usize,
    fail_reads: usize,
    fail_writes: usize,
}

impl Rig {
    fn new() -> Self {
        Rig {
            disk: vec![0; 16384],
            now_us: 1_000_000,
            log: Vec::new(),
            writes: 0,
            fail_reads: 0,
            fail_writes: 0,
        }
    }
    fn now(&self) -> Now {
        Now::new(
            Instant::from_micros(self.now_us),
            1_700_000_000_000 + self.now_us / 1000,
        )
    }
    fn put_ext4(&mut self, mut b: Block) {
        let o = OFF as usize;
        b.emit(&mut self.disk[o..o + 1024], SEED);
    }
    fn put_native(&mut self, r: Record) {
        r.emit(&mut self.disk[..512]);
    }
    fn ext4(&self) -> Block {
        let o = OFF as usize;
        Block::parse(&self.disk[o..o + 1024], SEED).expect("valid block")
    }
    fn native(&self) -> Record {
        Record::parse(&self.disk[..512]).expect("valid record")
    }

    /// Performs all outstanding I/O and drains events.
    fn pump(&mut self, m: &mut Machine) {
        loop {
            while let Some(e) = m.poll_event() {
                match e {
                    Event::Progress { .. } | Event::Observed(_) => {}
                    other => self.log.push(
                        format!("{other:?}")
                            .split('(')
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    ),
                }
            }
            let Some(io) = m.poll_io() else { break };
            let now = self.now();
            match io {
                IoRequest::Read { offset_bytes, len } => {
                    self.log.push("Read".into());
                    if self.fail_reads > 0 {
                        self.fail_reads -= 1;
                        m.handle_io_error(now, IoError::Os(5));
                    } else {
                        let o = offset_bytes as usize;
                        let data = self.disk[o..o + len].to_vec();
                        m.handle_read_done(now, &data);
                    }
                }
                IoRequest::Write { offset_bytes, len } => {
                    let mut buf = [0u8; MAX_RECORD_LEN];
                    if !m.emit_block(now, &mut buf) {
                        self.log.push("WriteCancelled".into());
                        continue;
                    }
                    self.log.push("Write".into());
                    if self.fail_writes > 0 {
                        self.fail_writes -= 1;
                        m.handle_io_error(now, IoError::Os(5));
                    } else {
                        let o = offset_bytes as usize;
                        self.disk[o..o + len].copy_from_slice(&buf[..len]);
                        self.writes += 1;
                        m.handle_write_done(now);
                    }
                }
            }
        }
    }

    /// Runs until the machine is done or held, or virtual time passes `limit_s`; calls
    /// `other` at each step so a test can play another host.
    fn run(&mut self, m: &mut Machine, limit_s: u64, other: impl FnMut(&mut Rig)) {
        self.drive(m, limit_s, true, other);
    }

    /// Like `run`, but keeps heartbeating until the time limit.
    fn run_for(&mut self, m: &mut Machine, limit_s: u64, other: impl FnMut(&mut Rig)) {
        self.drive(m, limit_s, false, other);
    }

    fn drive(
        &mut self,
        m: &mut Machine,
        limit_s: u64,
        stop_when_held: bool,
        mut other: impl FnMut(&mut Rig),
    ) {
        let end = self.now_us + limit_s * 1_000_000;
        self.pump(m);
        while self.now_us < end {
            if m.outcome().is_some() || (stop_when_held && m.is_held()) {
                return;
            }
            let Some(t) = m.poll_timeout() else { return };
            self.now_us = self.now_us.max(t.as_micros());
            other(self);
            m.handle_timeout(self.now());
            self.pump(m);
        }
    }

    fn transcript(&self) -> Vec<&str> {
        // Collapse the heartbeat tail for stable golden transcripts.
        self.log.iter().map(String::as_str).collect()
    }
}

fn cfg(layout: Layout, hostid: u32, node: &[u8]) -> Config {
    Config::new(layout, Identity::new(hostid, node, b"/dev/loop7"), 7)
}

fn secs(rig: &Rig, start_us: u64) -> f64 {
    (rig.now_us - start_us) as f64 / 1e6
}

#[test]
fn ext4_clean_acquire_waits_once_then_heartbeats() {
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"othernode", b"loop1", 5));
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    let t0 = rig.now_us;
    rig.run(&mut m, 30, |_| {});
    // min(2*5+1, 5+60) = 11 s is e2fsprogs' claim wait even for CLEAN (the kernel races
    // here). A CLEAN block whose release we did not watch may have landed late over an owner
    // that is silent now: the claim waits out a fail window and an eighth (12.375 s).
    assert!(m.is_held(), "held after the claim wait: {:?}", m.outcome());
    assert!(
        (12.375..12.4).contains(&secs(&rig, t0)),
        "{}",
        secs(&rig, t0)
    );
    let reads_during_wait = 13; // one verify read per second, the last one at 12.375 s
    let mut want = vec!["Read", "Write"];
    want.extend(std::iter::repeat_n("Read", reads_during_wait));
    want.extend(["Acquired", "Read", "Write"]);
    assert_eq!(rig.transcript(), want);
    let b = rig.ext4();
    assert!(b.seq <= crate::format::ext4::SEQ_MAX);
    assert_eq!(b.nodename(), b"me");
    assert_eq!(b.check_interval, 5); // max(2*upd, 5) before the first measured cycle
}

#[test]
fn ext4_stale_block_costs_two_waits_and_live_block_is_refused() {
    let mut rig = Rig::new();
    let mut stale = Block::new(0x1234_5678, 1, b"me", b"loop1", 5);
    stale.check_interval = 10; // the block's value counts when not CLEAN: min(21, 70)
    rig.put_ext4(stale);
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    let t0 = rig.now_us;
    rig.run(&mut m, 120, |_| {});
    assert!(m.is_held());
    let t = secs(&rig, t0);
    // watch 21 s (+ up to 12.5 % jitter), then claim wait 21 s
    assert!((42.0..=44.7).contains(&t), "took {t}");

    // A live writer changes the block during the watch: refused, nothing written.
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(7, 1, b"other", b"loop1", 5));
    let mut m = Machine::new(
        cfg(ext4_layout(1), 1, b"me").with_force(),
        Op::Acquire,
        rig.now(),
    );
    let mut n = 7;
    rig.run(&mut m, 60, |r| {
        n += 1;
        r.put_ext4(Block::new(n, 2, b"other", b"loop1", 5));
    });
    assert!(
        matches!(
            m.outcome(),
            Some(Outcome::Refused(Refusal::Active(Some(_))))
        ),
        "{:?}",
        m.outcome()
    );
    assert_eq!(rig.writes, 0);
}

#[test]
fn refusals_in_doubt_write_nothing() {
    let cases: [(Block, &str); 3] = [
        (Block::new(SEQ_FSCK, 1, b"me", b"x", 5), "Fsck"),
        (Block::new(0xF000_0000, 1, b"me", b"x", 5), "UnknownSeq"),
        (Block::new(5, 1, b"other", b"x", 5), "Foreign"),
    ];
    for (blk, want) in cases {
        let mut rig = Rig::new();
        rig.put_ext4(blk);
        let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
        rig.run(&mut m, 100, |_| {});
        let got = format!("{:?}", m.outcome());
        assert!(got.contains(want), "{got}");
        assert_eq!(rig.writes, 0);
    }
    // Corrupt: bad checksum.
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"me", b"x", 5));
    rig.disk[OFF as usize + 0x3FC] ^= 0xFF;
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 100, |_| {});
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Refused(Refusal::Corrupt(Corrupt::Ext4(
            ext4::BlockError::BadChecksum { .. }
        ))))
    ));
    assert_eq!(rig.writes, 0);
    // Hostid 0: a native acquire is refused before any I/O, even with force.
    let mut c = cfg(native_layout(), 0, b"me");
    c.force = true;
    let mut m = Machine::new(c, Op::Acquire, rig.now());
    assert_eq!(m.poll_io(), None);
    assert_eq!(m.outcome(), Some(Outcome::Refused(Refusal::NoHostid)));
    // ext4 MMP records only a node name: hostid 0 acquires like the kernel and e2fsprogs.
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"me", b"x", 5));
    let mut m = Machine::new(cfg(ext4_layout(1), 0, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 30, |_| {});
    assert!(m.is_held(), "{:?}", m.outcome());
    // Read error on the first read: refused, in doubt.
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"me", b"x", 5));
    rig.fail_reads = 1;
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 100, |_| {});
    assert_eq!(
        m.outcome(),
        Some(Outcome::Refused(Refusal::Io(IoError::Os(5))))
    );
    assert_eq!(rig.writes, 0);
}

#[test]
fn check_never_writes() {
    for blk in [
        Block::new(SEQ_CLEAN, 1, b"a", b"x", 5),
        Block::new(9, 1, b"a", b"x", 5),
    ] {
        let mut rig = Rig::new();
        rig.put_ext4(blk);
        let mut m = Machine::new(cfg(ext4_layout(1), 0, b"me"), Op::Check, rig.now());
        let t0 = rig.now_us;
        rig.run(&mut m, 100, |_| {});
        assert!(
            matches!(m.outcome(), Some(Outcome::Safe { .. })),
            "{:?}",
            m.outcome()
        );
        assert_eq!(rig.writes, 0);
        let stale = matches!(m.outcome(), Some(Outcome::Safe { stale: true, .. }));
        assert_eq!(stale, blk.seq != SEQ_CLEAN);
        assert_eq!(secs(&rig, t0), if stale { 11.0 } else { 0.0 });
    }
}

#[test]
fn heartbeat_detects_a_foreign_write_within_one_interval_and_never_writes_clean_after() {
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"other", b"x", 5));
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 30, |_| {});
    assert!(m.is_held());
    rig.run_for(&mut m, 5, |_| {}); // a few heartbeats
    let beats = m.stats().beats;
    assert!(beats >= 4, "{beats}");
    let t_foreign = rig.now_us;
    rig.put_ext4(Block::new(0x11111111, 3, b"othernode", b"y", 5));
    let writes = rig.writes;
    rig.run_for(&mut m, 10, |_| {});
    assert!(
        matches!(
            m.outcome(),
            Some(Outcome::Lost(Loss::ForeignWrite(Some(_))))
        ),
        "{:?}",
        m.outcome()
    );
    assert!(
        secs(&rig, t_foreign) <= 1.0,
        "detected after {}",
        secs(&rig, t_foreign)
    );
    assert_eq!(
        rig.writes, writes,
        "nothing written after the foreign write"
    );
    m.release(rig.now());
    rig.pump(&mut m);
    assert_eq!(
        rig.ext4().seq,
        0x11111111,
        "never CLEAN for a device we lost"
    );
}

#[test]
fn release_writes_clean_only_when_unchanged() {
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"other", b"x", 5));
    let mut m = Machine::new(cfg(ext4_layout(1), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 30, |_| {});
    m.release(rig.now());
    rig.pump(&mut m);
    assert_eq!(m.outcome(), Some(Outcome::Released));
    assert_eq!(rig.ext4().seq, SEQ_CLEAN);
    assert_eq!(rig.ext4().nodename(), b"me");
    let tail: Vec<&str> = rig
        .transcript()
        .iter()
        .rev()
        .take(3)
        .rev()
        .copied()
        .collect();
    assert_eq!(tail, ["Read", "Write", "Finished"]);
}

#[test]
fn lease_runs_out_while_paused_and_nothing_is_written() {
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    let until = m.owned_until().expect("held");
    assert!(m.is_owner(rig.now().mono));
    // The process is paused for 5 s (fail window is 1 s): on resume the machine fences
    // before any write.
    rig.now_us += 5_000_000;
    assert!(!m.is_owner(rig.now().mono));
    assert!(rig.now().mono >= until);
    let writes = rig.writes;
    m.handle_timeout(rig.now());
    rig.pump(&mut m);
    assert!(
        matches!(m.outcome(), Some(Outcome::Lost(Loss::Fenced { .. }))),
        "{:?}",
        m.outcome()
    );
    assert_eq!(rig.writes, writes);
}

#[test]
fn paused_between_read_and_write_cancels_the_write() {
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    // Drive one beat by hand: read done, then pause before the write is issued.
    beat_to_write(&mut rig, &mut m);
    rig.now_us += 3_000_000;
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(
        !m.emit_block(rig.now(), &mut buf),
        "the lease ran out: the write must not be issued"
    );
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Lost(Loss::Fenced { .. }))
    ));
}

/// Drives a held machine's next heartbeat by hand up to its write request (the read done,
/// the write not emitted yet).
fn beat_to_write(rig: &mut Rig, m: &mut Machine) {
    let t = m.poll_timeout().expect("next beat");
    rig.now_us = t.as_micros();
    m.handle_timeout(rig.now());
    let Some(IoRequest::Read { len, .. }) = m.poll_io() else {
        panic!("expected a read")
    };
    let data = rig.disk[..len].to_vec();
    m.handle_read_done(rig.now(), &data);
    assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
}

#[test]
fn heartbeat_io_errors_are_retried_then_fence() {
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    // A burst of 8 failures (~0.2 s at 25 ms retries) is shorter than the 1 s window.
    rig.fail_writes = 8;
    rig.run_for(&mut m, 2, |_| {});
    assert!(m.is_held(), "{:?}", m.outcome());
    assert_eq!(m.stats().io_failures, 8);
    // A long burst fences.
    rig.fail_reads = 1000;
    rig.run_for(&mut m, 5, |_| {});
    assert!(
        matches!(m.outcome(), Some(Outcome::Lost(Loss::Fenced { .. }))),
        "{:?}",
        m.outcome()
    );
}

#[test]
fn a_reservation_conflict_on_a_heartbeat_is_lost_at_once() {
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    beat_to_write(&mut rig, &mut m);
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(m.emit_block(rig.now(), &mut buf));
    // An ordinary I/O error is retried within the fail window ...
    m.handle_io_error(rig.now(), IoError::Os(5));
    assert!(m.is_held(), "{:?}", m.outcome());
    // ... a RESERVATION CONFLICT (another host preempted us) is not.
    beat_to_write(&mut rig, &mut m);
    assert!(m.emit_block(rig.now(), &mut buf));
    let conflict = IoError::Os(IoError::RESERVATION_CONFLICT);
    m.handle_io_error(rig.now(), conflict);
    assert_eq!(m.outcome(), Some(Outcome::Lost(Loss::Preempted(conflict))));
    assert!(!m.is_held());
    assert_eq!(m.poll_io(), None, "nothing more is written");
}

#[test]
fn native_handover_and_takeover_timing() {
    // Clean, release not watched: claim, a fail window and an eighth, verify.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 2, b"b"), Op::Acquire, rig.now());
    let t0 = rig.now_us;
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    assert!(
        (1.125..1.13).contains(&secs(&rig, t0)),
        "{}",
        secs(&rig, t0)
    );
    let r = rig.native();
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (State::Active, 2, native::Reason::None)
    );
    // Stale record of host 1: refused without force, taken with force after 2*10*100 ms.
    let mut stale = r;
    stale.hostid = 1;
    let mut rig = Rig::new();
    rig.put_native(stale);
    let mut m = Machine::new(cfg(native_layout(), 2, b"b"), Op::Acquire, rig.now());
    rig.run(&mut m, 10, |_| {});
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Refused(Refusal::Foreign(_)))
    ));
    let mut m = Machine::new(
        cfg(native_layout(), 2, b"b").with_force(),
        Op::Acquire,
        rig.now(),
    );
    let t0 = rig.now_us;
    rig.run(&mut m, 10, |_| {});
    assert!(m.is_held());
    let t = secs(&rig, t0);
    assert!((2.2..=2.5).contains(&t), "{t}");
    assert_eq!(rig.native().reason, native::Reason::TakenOver);
    // Release: clean, reason released, owner kept for diagnostics.
    m.release(rig.now());
    rig.pump(&mut m);
    let r = rig.native();
    assert_eq!(
        (r.state, r.reason, r.hostid),
        (State::Clean, native::Reason::Released, 2)
    );
}

#[test]
fn ext4_check_interval_follows_the_kernel_rule() {
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_CLEAN, 1, b"x", b"x", 5));
    let mut m = Machine::new(cfg(ext4_layout(5), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 60, |_| {});
    assert!(m.is_held());
    rig.run_for(&mut m, 12, |_| {});
    assert_eq!(rig.ext4().check_interval, 10); // 2 * 5 s cycles
    // A 7 s cycle (late beat) advertises 14 on the next write.
    let t = m.poll_timeout().expect("beat");
    rig.now_us = t.as_micros() + 2_000_000;
    m.handle_timeout(rig.now());
    rig.pump(&mut m);
    assert_eq!(rig.ext4().check_interval, 14);
}

#[test]
fn clear_resets_whatever_was_there() {
    let mut rig = Rig::new();
    rig.put_ext4(Block::new(SEQ_FSCK, 1, b"x", b"x", 5));
    rig.disk[OFF as usize] = 0; // bad magic
    let mut m = Machine::new(cfg(ext4_layout(1), 0, b"me"), Op::Clear, rig.now());
    rig.run(&mut m, 1, |_| {});
    assert_eq!(m.outcome(), Some(Outcome::Cleared));
    assert_eq!(rig.ext4().seq, SEQ_CLEAN);
    assert_eq!(rig.ext4().check_interval, 5);
    // Native clear keeps the area parameters; an unreadable record is refused.
    let mut rig = Rig::new();
    let mut r = Record::formatted([1; 16], 250, 7, 0);
    r.state = State::Maintenance;
    rig.put_native(r);
    let mut m = Machine::new(cfg(native_layout(), 3, b"me"), Op::Clear, rig.now());
    rig.run(&mut m, 1, |_| {});
    let r = rig.native();
    assert_eq!(
        (r.state, r.reason, r.interval_ms, r.fail_intervals),
        (State::Clean, native::Reason::Cleared, 250, 7)
    );
    rig.disk[100] ^= 1;
    let mut m = Machine::new(cfg(native_layout(), 3, b"me"), Op::Clear, rig.now());
    rig.run(&mut m, 1, |_| {});
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Refused(Refusal::Corrupt(_)))
    ));
}

#[test]
fn two_claimers_on_a_clean_block_one_wins() {
    // Both read CLEAN before either writes; the later claim wins, the earlier loses the race.
    let mut disk = Rig::new();
    disk.put_native(Record::formatted([1; 16], 100, 10, 0));
    let now = disk.now();
    let mut a = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, now);
    let mut b = Machine::new(cfg(native_layout(), 2, b"b"), Op::Acquire, now);
    let data = disk.disk[..512].to_vec();
    for m in [&mut a, &mut b] {
        let _ = m.poll_io();
        m.handle_read_done(now, &data);
    }
    for m in [&mut a, &mut b] {
        let _ = m.poll_io();
        let mut buf = [0u8; MAX_RECORD_LEN];
        assert!(m.emit_block(now, &mut buf));
        disk.disk[..512].copy_from_slice(&buf[..512]);
        m.handle_write_done(now);
    }
    disk.run(&mut a, 2, |_| {});
    disk.run(&mut b, 2, |_| {});
    assert!(
        matches!(a.outcome(), Some(Outcome::Refused(Refusal::LostRace(_)))),
        "{:?}",
        a.outcome()
    );
    assert!(b.is_held());
}

#[test]
fn a_late_claim_waits_out_a_silent_owners_lease() {
    // Found by the simulator (MMP_SEED=17066632814133811436 before the fix): A reads CLEAN and
    // freezes before its claim goes out; B acquires meanwhile and freezes inside its lease;
    // A's stale claim lands on B's heartbeat. A must not verify and own while B's lease runs.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0)); // I = 100 ms, W = 1 s
    let now = rig.now();
    let mut a = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, now);
    assert!(matches!(a.poll_io(), Some(IoRequest::Read { .. })));
    let clean = rig.disk[..512].to_vec();
    a.handle_read_done(now, &clean);
    assert!(matches!(a.poll_io(), Some(IoRequest::Write { .. })));
    let mut b = Machine::new(cfg(native_layout(), 2, b"b"), Op::Acquire, rig.now());
    rig.run(&mut b, 5, |_| {});
    assert!(b.is_held());
    let b_lease = b.owned_until().expect("held");
    rig.now_us += 300_000;
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(a.emit_block(rig.now(), &mut buf));
    rig.disk[..512].copy_from_slice(&buf[..512]);
    a.handle_write_done(rig.now());
    let claimed = rig.now_us;
    assert!(
        b.is_owner(rig.now().mono),
        "B is frozen but its lease still runs"
    );
    rig.run(&mut a, 10, |_| {});
    assert!(a.is_held(), "{:?}", a.outcome());
    assert!(
        rig.now().mono >= b_lease,
        "A owned {} s after its claim, before B's lease ended",
        secs(&rig, claimed)
    );
    // A late claim waits a whole fail window and an eighth (1.125 s) before verifying.
    assert!(
        (1.125..1.2).contains(&secs(&rig, claimed)),
        "{}",
        secs(&rig, claimed)
    );
    // A prompt claim keeps the short claim wait (after a watch: see
    // `native_handover_and_takeover_timing`; after a watched release:
    // `a_watched_release_gets_the_short_claim_wait`).
}

#[test]
fn abort_during_the_claim_restores_the_block_only_if_still_ours() {
    // Our claim is still there: the original (clean) record comes back.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let before = rig.disk[..512].to_vec();
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    rig.pump(&mut m);
    assert_eq!(m.phase(), Phase::Claiming);
    assert_ne!(rig.disk[..512], before[..], "the claim is on disk");
    m.release(rig.now());
    rig.pump(&mut m);
    assert_eq!(
        m.phase(),
        Phase::Releasing,
        "waits an interval before re-reading"
    );
    assert_eq!(
        rig.disk[..512],
        m.written[..512],
        "our claim is still there"
    );
    rig.run(&mut m, 1, |_| {});
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.disk[..512], before[..], "restored");
    // Another host wrote meanwhile: nothing is written.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    rig.pump(&mut m);
    let mut other = rig.native();
    other.hostid = 9;
    other.seq += 77;
    rig.put_native(other);
    let writes = rig.writes;
    m.release(rig.now());
    rig.run(&mut m, 1, |_| {});
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.writes, writes);
    assert_eq!(rig.native().hostid, 9);
}

#[test]
fn early_heartbeats_only_within_the_slack_and_only_while_held() {
    let mut rig = Rig::new();
    // 1 s interval: the slack is 50 ms (a twentieth, capped at MAX_EARLY_BEAT).
    rig.put_native(Record::formatted([1; 16], 1000, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    assert_eq!(m.early_beat_slack(), None, "not held: no early beats");
    assert!(!m.beat_early(rig.now()));
    rig.run(&mut m, 30, |_| {});
    assert!(m.is_held());
    let slack = m.early_beat_slack().expect("held and idle");
    assert_eq!(slack, MAX_EARLY_BEAT);
    let due = m.poll_timeout().expect("next beat").as_micros();
    let writes = rig.writes;
    let seq = rig.native().seq;

    // 60 ms before the beat: outside the slack, nothing happens.
    rig.now_us = due - 60_000;
    assert!(!m.beat_early(rig.now()));
    assert!(m.poll_io().is_none());
    assert_eq!(m.poll_timeout().map(Instant::as_micros), Some(due));

    // 40 ms before: the heartbeat starts now and is an ordinary one.
    rig.now_us = due - 40_000;
    assert!(m.beat_early(rig.now()));
    assert!(
        m.early_beat_slack().is_none(),
        "busy: a beat is in progress"
    );
    rig.pump(&mut m);
    assert_eq!(rig.writes, writes + 1);
    assert_eq!(rig.native().seq, seq + 1);
    // The next one is planned an interval after this (early) start.
    assert_eq!(
        m.poll_timeout().map(Instant::as_micros),
        Some(due - 40_000 + 1_000_000)
    );

    // A 100 ms interval gives a 5 ms slack.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"me"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert_eq!(m.early_beat_slack(), Some(Duration::from_millis(5)));

    // Once release is requested, no early beats (the release path takes over).
    m.release(rig.now());
    assert_eq!(m.early_beat_slack(), None);
    assert!(!m.beat_early(rig.now()));
}

// ----- issue 12: decisions timed by when the I/O was issued; bounded writes -------------------

/// Reads CLEAN and emits the claim at the rig's current time; returns the emit instant.
fn read_clean_and_emit_claim(rig: &mut Rig, m: &mut Machine) -> u64 {
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let data = rig.disk[..512].to_vec();
    m.handle_read_done(rig.now(), &data);
    assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(m.emit_block(rig.now(), &mut buf));
    rig.disk[..512].copy_from_slice(&buf[..512]);
    rig.now_us
}

#[test]
fn the_claim_lease_runs_from_when_the_claim_was_issued() {
    // I = 100 ms, W = 1 s. The claim lands at once but its completion is handled 0.4 s
    // late (a slow sibling device in the same batch): the lease must not grow by 0.4 s.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let emitted = read_clean_and_emit_claim(&mut rig, &mut m);
    rig.now_us += 400_000;
    m.handle_write_done(rig.now());
    // The claim was late (handled 0.4 s after its read): wait 1.125 s; lease + W/2, from
    // when the claim was issued.
    let want = emitted + 1_125_000 + 500_000;
    assert_eq!(m.lease_until.map(Instant::as_micros), Some(want));
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held(), "{:?}", m.outcome());
    // The first heartbeat (issued at the verify, 1.525 s) has since extended it.
    let first_beat = m.stats().last_write.expect("beat").as_micros();
    assert_eq!(first_beat, emitted + 400_000 + 1_125_000);
    assert!(want < first_beat + 1_000_000);
    assert_eq!(
        m.owned_until().map(Instant::as_micros),
        Some(first_beat + 1_000_000)
    );
}

#[test]
fn acquired_is_never_reported_after_the_claim_lease_ran_out() {
    // The claim's completion is handled 2 s late: by the verify (1.125 s later) the lease the
    // claim earned (issue + 1.125 s + 0.5 s) has long run out. Refused, nothing written.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    rig.now_us += 2_000_000;
    m.handle_write_done(rig.now());
    let writes = rig.writes;
    rig.run(&mut m, 5, |_| {});
    assert!(
        matches!(m.outcome(), Some(Outcome::Refused(Refusal::TooLate { .. }))),
        "{:?}",
        m.outcome()
    );
    assert!(!rig.log.iter().any(|l| l == "Acquired"), "{:?}", rig.log);
    assert_eq!(rig.writes, writes, "nothing written after the claim");
}

#[test]
fn a_verify_read_issued_before_the_wait_ended_proves_nothing() {
    // The last poll read of the claim wait is issued before the wait ends but handled after
    // it; another host's claim lands between that read's sample and its handling. The
    // machine must read again (and so see the other claim), not take the old result.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 1000, 10, 0)); // I = 1 s, W = 10 s
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    m.handle_write_done(rig.now());
    let until = m.poll_timeout().expect("claim wait");
    // Poll reads every second; take the last one issued before the wait ends.
    let wait_end = {
        let Step::ClaimWait { until, .. } = m.step else {
            panic!("{:?}", m.step)
        };
        until
    };
    assert!(until < wait_end);
    let mut t = until;
    loop {
        rig.now_us = t.as_micros();
        m.handle_timeout(rig.now());
        let Some(IoRequest::Read { .. }) = m.poll_io() else {
            panic!("a poll read")
        };
        let sample = rig.disk[..512].to_vec();
        let next = t + Duration::from_secs(1);
        if next >= wait_end {
            // This read sampled our claim before the wait's end; its result is handled
            // 3 s later, after another host's claim landed.
            let mut other = rig.native();
            other.hostid = 2;
            other.seq ^= 0x5555;
            rig.put_native(other);
            rig.now_us = (wait_end + Duration::from_secs(3)).as_micros();
            m.handle_read_done(rig.now(), &sample);
            break;
        }
        m.handle_read_done(rig.now(), &sample);
        t = m.poll_timeout().expect("still waiting");
    }
    assert!(
        !m.is_held(),
        "verified on a read issued before the wait ended"
    );
    rig.run(&mut m, 5, |_| {});
    assert!(
        matches!(m.outcome(), Some(Outcome::Refused(Refusal::LostRace(_)))),
        "{:?}",
        m.outcome()
    );
}

#[test]
fn a_watch_read_issued_before_the_watch_ended_proves_nothing() {
    // Same rule for the activity watch of a stale block.
    let mut rig = Rig::new();
    let mut stale = Record::formatted([1; 16], 1000, 10, 0);
    stale.state = State::Active;
    stale.hostid = 9;
    stale.seq = 40;
    rig.put_native(stale);
    let mut m = Machine::new(
        cfg(native_layout(), 1, b"a").with_force(),
        Op::Acquire,
        rig.now(),
    );
    rig.pump(&mut m);
    let Step::Watch { until, .. } = m.step else {
        panic!("{:?}", m.step)
    };
    // Jump to the last poll before the end; its result is handled 5 s after the end.
    rig.now_us = (until - Duration::from_millis(10)).as_micros();
    m.handle_timeout(rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    rig.now_us = (until + Duration::from_secs(5)).as_micros();
    m.handle_read_done(rig.now(), &sample);
    assert_eq!(m.phase(), Phase::Watching, "must read again");
    assert_eq!(rig.writes, 0);
}

#[test]
fn a_restore_handled_late_writes_nothing() {
    // Abort in the claim wait; the restore read's result is handled 2 s late: the old CLEAN
    // must not be written back (another host may have taken over meanwhile).
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    m.handle_write_done(rig.now());
    rig.now_us += 400_000; // past the restore's earliest read (I + W/4 = 0.35 s)
    m.release(rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    rig.now_us += 2_000_000;
    m.handle_read_done(rig.now(), &sample);
    assert_eq!(m.poll_io(), None, "no restore write");
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.native().state, State::Active, "our claim stays");

    // A restore decided in time but emitted past its deadline is not issued either.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    m.handle_write_done(rig.now());
    rig.now_us += 400_000; // past the restore's earliest read (I + W/4 = 0.35 s)
    m.release(rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    m.handle_read_done(rig.now(), &sample);
    assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
    rig.now_us += 500_000; // a stalled thread between the decision and the write
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(!m.emit_block(rig.now(), &mut buf), "past the deadline");
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
}

#[test]
fn an_abort_right_after_the_claim_waits_before_restoring() {
    // A competitor that read CLEAN before our claim landed writes its claim within an
    // interval: the restore read comes no earlier than an interval after our claim, so it
    // sees the competitor's claim and leaves it alone.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 1000, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let claim_at = read_clean_and_emit_claim(&mut rig, &mut m);
    m.handle_write_done(rig.now());
    m.release(rig.now());
    assert_eq!(m.poll_io(), None, "no restore read at once");
    // An interval and a quarter fail window (I = 1 s, W = 10 s).
    assert_eq!(
        m.poll_timeout().map(Instant::as_micros),
        Some(claim_at + 1_000_000 + 2_500_000)
    );
    let mut other = rig.native();
    other.hostid = 2;
    other.seq ^= 0x77;
    let writes = rig.writes;
    rig.run(&mut m, 5, |r| r.put_native(other));
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.writes, writes);
    assert_eq!(rig.native().hostid, 2);
}

#[test]
fn a_clear_handled_late_writes_nothing() {
    let mut rig = Rig::new();
    let mut r = Record::formatted([1; 16], 100, 10, 0);
    r.state = State::Maintenance;
    rig.put_native(r);
    let mut m = Machine::new(cfg(native_layout(), 3, b"me"), Op::Clear, rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    rig.now_us += 2_000_000; // W = 1 s
    m.handle_read_done(rig.now(), &sample);
    assert_eq!(m.poll_io(), None);
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Refused(Refusal::TooLate { .. }))
    ));
}

/// An owner's live native record with `seq`, and its release record.
fn owner_record(seq: u64) -> Record {
    let mut r = Record::formatted([1; 16], 100, 10, 0);
    r.state = State::Active;
    r.hostid = 9;
    r.seq = seq;
    r
}

fn release_record(seq: u64) -> Record {
    let mut r = owner_record(seq + 1);
    r.state = State::Clean;
    r.reason = native::Reason::Released;
    r
}

/// B starts on the owner's live record 100 (queueing if `wait`, else with force), the disk
/// gets `script[k]` at B's k-th step (`None`: unchanged), the last entry being a CLEAN
/// record; returns the seconds from that CLEAN to B holding the device.
fn held_after_release(wait: bool, script: &[Option<Record>]) -> f64 {
    let mut rig = Rig::new();
    rig.put_native(owner_record(100));
    let c = cfg(native_layout(), 1, b"b");
    let c = if wait { c.with_wait() } else { c.with_force() };
    let mut m = Machine::new(c, Op::Acquire, rig.now());
    let mut k = 0;
    let mut released_at = 0;
    rig.run(&mut m, 10, |r| {
        if let Some(Some(rec)) = script.get(k) {
            r.put_native(*rec);
            released_at = r.now_us;
        }
        k += 1;
    });
    assert!(m.is_held(), "{:?}", m.outcome());
    (rig.now_us - released_at) as f64 / 1e6
}

#[test]
fn a_watched_release_gets_the_short_claim_wait() {
    // Queueing: B watches A's heartbeats advance, then sees A's release naming the next
    // sequence: A wrote that CLEAN itself, over its own heartbeat, so the short claim wait
    // (2 intervals) is enough.
    let beats = |step: u64| (1..=4).map(move |k| Some(owner_record(100 + step * k)));
    let mut script: Vec<_> = beats(1).collect();
    script.push(Some(release_record(104)));
    let t = held_after_release(true, &script);
    assert!(
        (0.2..0.21).contains(&t),
        "claim wait after a watched release: {t}"
    );

    // Heartbeats written between our polls (the release names a later sequence than the
    // last heartbeat we saw): still the owner's own release.
    let mut script: Vec<_> = beats(2).collect();
    script.push(Some(release_record(110)));
    let t = held_after_release(true, &script);
    assert!((0.2..0.21).contains(&t), "{t}");

    // Without queueing, a release seen during the watch is claimed too (not refused), but
    // with the long wait: one observation of the owner does not show the CLEAN was its
    // own fresh release.
    let t = held_after_release(false, &[None, Some(release_record(100))]);
    assert!((1.125..1.13).contains(&t), "{t}");

    // A CLEAN that does not name the next sequence of the block we watched (a restore, a
    // clear, a late release landing over someone else) gets the long wait.
    let mut script: Vec<_> = beats(1).collect();
    script.push(Some(release_record(50)));
    let t = held_after_release(true, &script);
    assert!((1.125..1.13).contains(&t), "{t}");
}

#[test]
fn queueing_waits_through_a_live_owner_and_never_takes_a_stale_foreign_block() {
    // A live foreign owner: no refusal, the machine keeps watching.
    let mut rig = Rig::new();
    rig.put_native(owner_record(100));
    let mut m = Machine::new(
        cfg(native_layout(), 1, b"b").with_wait(),
        Op::Acquire,
        rig.now(),
    );
    let mut n = 100;
    rig.run(&mut m, 5, |r| {
        n += 1;
        r.put_native(owner_record(n));
    });
    assert_eq!(m.phase(), Phase::Watching, "{:?}", m.outcome());
    // The owner dies: without force its stale block is never taken.
    rig.run(&mut m, 10, |_| {});
    assert_eq!(m.phase(), Phase::Watching, "{:?}", m.outcome());
    assert_eq!(rig.writes, 0);
    // Abandoning the queue writes nothing.
    m.release(rig.now());
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.writes, 0);
}

#[test]
fn acquired_and_finished_are_never_dropped_from_the_event_queue() {
    let rig = Rig::new();
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Check, rig.now());
    for _ in 0..EVENT_CAP + 3 {
        m.progress(Phase::Watching, Duration::ZERO, Duration::ZERO);
    }
    m.push(Event::Acquired);
    for _ in 0..EVENT_CAP {
        m.progress(Phase::Claiming, Duration::ZERO, Duration::ZERO);
    }
    m.push(Event::Finished(Outcome::Aborted));
    for _ in 0..EVENT_CAP {
        m.progress(Phase::Held, Duration::ZERO, Duration::ZERO);
    }
    let mut got = Vec::new();
    while let Some(e) = m.poll_event() {
        got.push(e);
    }
    assert_eq!(got.len(), EVENT_CAP);
    let acq = got.iter().position(|e| *e == Event::Acquired);
    let fin = got
        .iter()
        .position(|e| matches!(e, Event::Finished(Outcome::Aborted)));
    assert!(acq.is_some() && fin.is_some() && acq < fin, "{got:?}");
}

#[test]
fn a_late_claim_is_never_restored() {
    // Found by the simulator (MMP_SEED=2766502138665456333): a CLEAN read handled late, a
    // late claim over an owner stalled inside its lease, SIGTERM, then a prompt restore read
    // would write back the stale CLEAN over that owner. A late claim is left alone.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    rig.now_us += 300_000; // the claim's completion is handled 3 intervals after the read
    m.handle_write_done(rig.now());
    let writes = rig.writes;
    m.release(rig.now());
    rig.run(&mut m, 2, |_| {});
    assert_eq!(m.outcome(), Some(Outcome::Aborted));
    assert_eq!(rig.writes, writes, "no restore after a late claim");
    assert_eq!(rig.native().state, State::Active);
}

#[test]
fn an_emitted_write_not_issued_by_its_deadline_ends_the_machine() {
    // A restore emitted in time but held in a driver's queue past its deadline: the driver
    // must not issue it, and the machine ends as if the emit had come too late.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    let _ = read_clean_and_emit_claim(&mut rig, &mut m);
    m.handle_write_done(rig.now());
    assert_eq!(m.write_deadline(), None, "no write outstanding");
    rig.now_us += 400_000;
    m.release(rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    m.handle_read_done(rig.now(), &sample);
    assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
    let deadline = m.write_deadline().expect("a restore has a deadline");
    let mut buf = [0u8; MAX_RECORD_LEN];
    assert!(m.emit_block(rig.now(), &mut buf));
    rig.now_us = deadline.as_micros();
    m.handle_write_not_issued(rig.now());
    assert_eq!(m.outcome(), Some(Outcome::Aborted));

    // A heartbeat: its deadline is the lease; past it the machine fences.
    let mut rig = Rig::new();
    rig.put_native(Record::formatted([1; 16], 100, 10, 0));
    let mut m = Machine::new(cfg(native_layout(), 1, b"a"), Op::Acquire, rig.now());
    rig.run(&mut m, 5, |_| {});
    assert!(m.is_held());
    let beat = m.poll_timeout().expect("next beat");
    rig.now_us = beat.as_micros();
    m.handle_timeout(rig.now());
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    let sample = rig.disk[..512].to_vec();
    m.handle_read_done(rig.now(), &sample);
    assert!(matches!(m.poll_io(), Some(IoRequest::Write { .. })));
    assert_eq!(m.write_deadline(), m.owned_until());
    assert!(m.emit_block(rig.now(), &mut buf));
    // Before the deadline nothing happens; after it, fenced.
    m.handle_write_not_issued(rig.now());
    assert!(m.is_held());
    rig.now_us = m.write_deadline().expect("lease").as_micros();
    m.handle_write_not_issued(rig.now());
    assert!(matches!(
        m.outcome(),
        Some(Outcome::Lost(Loss::Fenced { .. }))
    ));
}
