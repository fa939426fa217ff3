//! Crash consistency at the machine level, exhaustively (issue 8).
//!
//! A scripted holder (acquire, three heartbeats, release; or an acquire given up during
//! the claim wait) runs against an in-memory device, recording every I/O. For every I/O
//! index `k` the device is rebuilt as a crash right after the `k`-th I/O would leave it:
//! I/Os before `k` complete, and if the `k`-th is a write it lands whole, not at all, or torn
//! at every sector boundary. A fresh acquirer (another host, `--force`) then makes its first
//! read. The assertions:
//!
//! * It never classifies the block as CLEAN unless the device holds, byte for byte, a CLEAN
//!   record that was written completely (the format's, a release's, or an abort's restore
//!   of a clean block) and is the last complete write.
//! * A torn write that mixes two records is refused as corrupt when the format has a
//!   checksum over both sectors (ext4 with metadata_csum); without metadata_csum only sector
//!   0 carries data, so a tear leaves exactly the new record.
//! * Native records are one sector: a "tear" is all or nothing.

use mmp_core::format::{ext4, native};
use mmp_core::machine::{
    self, Class, Config, Event, Identity, IoRequest, Layout, MAX_RECORD_LEN, Machine, Op, Outcome,
    Phase, Refusal,
};
use mmp_core::time::{Instant, Now};

const SECTOR: usize = 512;
const CSUM_SEED: u32 = 0x643D_BF5B;
const WALL: u64 = 1_700_000_000_000;

#[derive(Clone, Copy, Debug)]
enum Script {
    /// Acquire, `beats` heartbeats, release.
    HoldRelease { beats: u64 },
    /// Acquire, give up during the claim wait (the claim is restored if still ours).
    AbortInClaim,
}

#[derive(Clone, Copy, Debug)]
enum Start {
    /// The format's CLEAN record.
    Clean,
    /// Another host's live record, not released (we use force).
    Stale,
}

#[derive(Clone, Debug)]
struct Io {
    write: bool,
    data: Vec<u8>,
}

fn layouts() -> Vec<(&'static str, Layout)> {
    vec![
        ("native", Layout::Native { offset_bytes: 0 }),
        (
            "ext4-csum",
            Layout::Ext4 {
                offset_bytes: 0,
                csum_seed: Some(CSUM_SEED),
                update_interval_s: 1,
            },
        ),
        (
            "ext4-nocsum",
            Layout::Ext4 {
                offset_bytes: 0,
                csum_seed: None,
                update_interval_s: 1,
            },
        ),
    ]
}

fn initial(layout: &Layout, start: Start) -> Vec<u8> {
    let mut buf = vec![0u8; layout.record_len()];
    match (layout, start) {
        (Layout::Native { .. }, s) => {
            let mut r = native::Record::formatted([3; 16], 100, 10, WALL);
            if let Start::Stale = s {
                r.state = native::State::Active;
                r.hostid = 0x99;
                r.seq = 777;
                r.set_nodename(b"other");
            }
            r.emit(&mut buf);
        }
        (Layout::Ext4 { csum_seed, .. }, s) => {
            let seq = match s {
                Start::Clean => ext4::SEQ_CLEAN,
                Start::Stale => 12_345,
            };
            let mut b = ext4::Block::new(seq, WALL / 1000, b"other", b"/dev/x", 5);
            b.emit(&mut buf, *csum_seed);
        }
    }
    buf
}

fn now(t: u64) -> Now {
    Now::new(Instant::from_micros(t), WALL + t / 1000)
}

/// Runs the holder to its end against `disk` (no faults) and returns every I/O in order.
fn record(layout: Layout, start: Start, script: Script) -> (Vec<u8>, Vec<Io>, Outcome) {
    let init = initial(&layout, start);
    let mut disk = init.clone();
    let len = layout.record_len();
    let id = Identity::new(0x11, b"holder", b"/dev/x");
    let cfg = Config::new(layout, id, 7).with_force();
    let mut t = 1_000_000u64;
    let mut m = Machine::new(cfg, Op::Acquire, now(t));
    let mut ios = Vec::new();
    let mut released = false;
    for _ in 0..10_000 {
        while let Some(e) = m.poll_event() {
            let _ = e == Event::Acquired;
        }
        if let Some(io) = m.poll_io() {
            t += 50;
            match io {
                IoRequest::Read { .. } => {
                    ios.push(Io {
                        write: false,
                        data: disk.clone(),
                    });
                    m.handle_read_done(now(t), &disk);
                }
                IoRequest::Write { .. } => {
                    let mut buf = [0u8; MAX_RECORD_LEN];
                    if m.emit_block(now(t), &mut buf) {
                        disk.copy_from_slice(&buf[..len]);
                        ios.push(Io {
                            write: true,
                            data: disk.clone(),
                        });
                        m.handle_write_done(now(t));
                    }
                }
            }
            continue;
        }
        if let Some(o) = m.outcome() {
            return (init, ios, o);
        }
        let due_release = match script {
            Script::HoldRelease { beats } => m.is_held() && m.stats().beats >= beats,
            Script::AbortInClaim => m.phase() == Phase::Claiming,
        };
        if due_release && !released {
            released = true;
            m.release(now(t));
            continue;
        }
        let d = m.poll_timeout().expect("a deadline while not finished");
        t = t.max(d.as_micros());
        m.handle_timeout(now(t));
    }
    panic!("the script did not finish");
}

/// What a fresh acquirer's first read makes of `disk`.
#[allow(clippy::result_large_err)]
fn first_read(layout: Layout, disk: &[u8]) -> Result<Class, Refusal> {
    let id = Identity::new(0x22, b"next", b"/dev/x");
    let cfg = Config::new(layout, id, 9).with_force();
    let mut m = Machine::new(cfg, Op::Acquire, now(50_000_000));
    assert!(matches!(m.poll_io(), Some(IoRequest::Read { .. })));
    m.handle_read_done(now(50_000_100), disk);
    match m.outcome() {
        Some(Outcome::Refused(r)) => Err(r),
        Some(o) => panic!("unexpected outcome after one read: {o:?}"),
        None => Ok(m.first_snapshot().expect("a parsed first read").class()),
    }
}

fn is_clean(layout: &Layout, bytes: &[u8]) -> bool {
    machine::parse(layout, bytes).is_ok_and(|s| s.class() == Class::Clean)
}

#[test]
fn crash_between_any_two_ios_never_reads_clean() {
    let mut cases = 0u64;
    let mut torn_refused = 0u64;
    for (name, layout) in layouts() {
        let len = layout.record_len();
        let sectors = len / SECTOR;
        for start in [Start::Clean, Start::Stale] {
            for script in [
                Script::HoldRelease { beats: 3 },
                Script::HoldRelease { beats: 0 },
                Script::AbortInClaim,
            ] {
                let (init, ios, outcome) = record(layout, start, script);
                let label = format!("{name} {start:?} {script:?}");
                match script {
                    Script::HoldRelease { .. } => {
                        assert_eq!(outcome, Outcome::Released, "{label}");
                    }
                    Script::AbortInClaim => assert_eq!(outcome, Outcome::Aborted, "{label}"),
                }
                assert!(ios.iter().any(|io| io.write), "{label}: no write");
                for k in 0..ios.len() {
                    // The device after I/Os 0..k complete.
                    let mut before = init.clone();
                    for io in &ios[..k] {
                        if io.write {
                            before.clone_from(&io.data);
                        }
                    }
                    let io = &ios[k];
                    // Crash right after a read, or with the k-th write landed 0..=all sectors.
                    let fates: Vec<usize> = if io.write {
                        (0..=sectors).collect()
                    } else {
                        vec![0]
                    };
                    for s in fates {
                        let mut disk = before.clone();
                        if io.write {
                            disk[..s * SECTOR].copy_from_slice(&io.data[..s * SECTOR]);
                        }
                        // The last complete write (the initial record counts as one).
                        let last_complete = if io.write && s == sectors {
                            &io.data
                        } else {
                            &before
                        };
                        cases += 1;
                        let got = first_read(layout, &disk);
                        let what = format!(
                            "{label}: crash after I/O {k} of {}, {s} sector(s) of it landed",
                            ios.len()
                        );
                        if got == Ok(Class::Clean) {
                            // Clean only if the device holds a complete CLEAN record byte for
                            // byte: the last complete write, or (a tear whose sectors equal
                            // the whole record) the k-th write itself.
                            let whole_new = io.write && disk == io.data;
                            let ok = (disk == *last_complete && is_clean(&layout, last_complete))
                                || (whole_new && is_clean(&layout, &io.data));
                            assert!(ok, "{what}: read as CLEAN");
                        }
                        let torn = io.write && s > 0 && s < sectors;
                        if torn && disk != before && disk != io.data {
                            // A mix of two records: only a checksum over both sectors sees it.
                            assert!(
                                matches!(got, Err(Refusal::Corrupt(_))),
                                "{what}: a torn block was not refused as corrupt: {got:?}"
                            );
                            torn_refused += 1;
                        }
                        if torn
                            && let Layout::Ext4 {
                                csum_seed: None, ..
                            } = layout
                        {
                            assert_eq!(
                                disk, io.data,
                                "{what}: without metadata_csum only sector 0 carries data"
                            );
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "crash consistency: {cases} crash points checked, {torn_refused} torn blocks refused as corrupt"
    );
    assert!(torn_refused > 0);
}

#[test]
fn crash_torn_heartbeats_are_in_use_for_ext4_csum() {
    // Every tear of every write of a long hold on a checksummed ext4 block: the mix of the
    // previous and the new block fails the checksum (refused: in use), never CLEAN.
    let layout = Layout::Ext4 {
        offset_bytes: 0,
        csum_seed: Some(CSUM_SEED),
        update_interval_s: 1,
    };
    let (init, ios, _) = record(layout, Start::Clean, Script::HoldRelease { beats: 20 });
    let mut prev = init;
    let mut n = 0;
    for io in ios.iter().filter(|io| io.write) {
        let mut disk = prev.clone();
        disk[..SECTOR].copy_from_slice(&io.data[..SECTOR]);
        if disk != prev && disk != io.data {
            let got = first_read(layout, &disk);
            assert!(
                matches!(
                    got,
                    Err(Refusal::Corrupt(machine::Corrupt::Ext4(
                        ext4::BlockError::BadChecksum { .. }
                    )))
                ),
                "{got:?}"
            );
            n += 1;
        }
        prev.clone_from(&io.data);
    }
    assert!(n >= 20, "{n} tears checked");
}
