//! The bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` include this file with
//! `#[path]`; `tests/it/fuzz_corpus.rs` replays the committed corpus through the same
//! functions as ordinary tests, and `bench/fuzz-soak` runs them on generated inputs where
//! `cargo fuzz` is unavailable). Depends on `mmp_core` only.
//!
//! Every body panics (the fuzzer's "crash") when an invariant breaks; none may panic
//! otherwise, whatever the bytes.

use mmp_core::format::{ext4, ext4fs, native};
use mmp_core::machine::{
    self, Class, Config, Event, Identity, IoError, IoRequest, Layout, MAX_RECORD_LEN, Machine, Op,
    Outcome, Phase,
};
use mmp_core::time::{Instant, Now};

/// Fuzz target names, as directories under `fuzz/corpus/`.
pub const TARGETS: [&str; 3] = ["parse_ext4", "parse_native", "machine_events"];

/// Runs the body of target `name` on `data`.
///
/// # Panics
/// On an unknown target, or when the body finds a broken invariant.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "parse_ext4" => parse_ext4(data),
        "parse_native" => parse_native(data),
        "machine_events" => {
            machine_events(data);
        }
        _ => panic!("unknown fuzz target {name:?}"),
    }
}

fn le32(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    let n = b.len().min(4);
    x[..n].copy_from_slice(&b[..n]);
    u32::from_le_bytes(x)
}

// ----- parse_ext4 ----------------------------------------------------------------------------

/// `ext4::Superblock::parse`, `ext4fs::Layout::parse` and `ext4::Block::parse` with and
/// without a checksum seed. The input is tried whole and, for MMP blocks, as a
/// little-endian seed followed by the block (the corpus stores checksummed blocks that way).
/// A block that parses re-emits to bytes that parse to the same block and equal the input
/// outside the reserved area.
///
/// # Panics
/// When a parse/emit round trip breaks.
pub fn parse_ext4(data: &[u8]) {
    let (seed, rest) = if data.len() >= 4 {
        (le32(data), &data[4..])
    } else {
        (0, data)
    };
    for sb in [data, rest] {
        if let Ok(s) = ext4::Superblock::parse(sb) {
            let _ = s.block_size();
            let _ = s.has_mmp();
            let _ = s.metadata_csum();
            let _ = s.csum_seed();
            let _ = s.mmp_csum_seed();
            let _ = s.mmp_offset_bytes();
            let _ = s.update_interval_s();
        }
        let _ = ext4fs::Layout::parse(sb);
    }
    for (buf, seed) in [
        (data, None),
        (rest, None),
        (rest, Some(seed)),
        (data, Some(seed)),
    ] {
        let Ok(mut b) = ext4::Block::parse(buf, seed) else {
            continue;
        };
        let _ = b.seq_class();
        let _ = b.nodename();
        let _ = b.bdevname();
        let mut out = [0u8; ext4::STRUCT_LEN];
        b.emit(&mut out, seed);
        let again = ext4::Block::parse(&out, seed).expect("a re-emitted block parses");
        assert_eq!(again, b, "ext4 block round trip");
        // Identical outside `mmp_reserved` (116..1020), where emit writes zeros; the
        // checksum (computed over the reserved bytes too, with a seed) then matches only
        // when they were zero.
        assert_eq!(&out[..116], &buf[..116], "ext4 block head round trip");
        if seed.is_none() || buf[116..1020].iter().all(|&x| x == 0) {
            assert_eq!(
                &out[1020..],
                &buf[1020..1024],
                "ext4 block checksum round trip"
            );
        }
    }
}

// ----- parse_native -------------------------------------------------------------------------

/// `native::Record::parse`: a record that parses re-emits byte for byte, and what `emit`
/// writes for any parsed record parses back to it.
///
/// # Panics
/// When the round trip breaks.
pub fn parse_native(data: &[u8]) {
    let _ = native::Record::looks_native(data);
    if let Ok(r) = native::Record::parse(data) {
        let _ = r.nodename();
        let _ = r.devname();
        let _ = r.state.name();
        let _ = r.reason.name();
        let mut out = [0u8; native::RECORD_LEN];
        r.emit(&mut out);
        assert_eq!(
            &out[..],
            &data[..native::RECORD_LEN],
            "native record re-emit"
        );
        assert_eq!(native::Record::parse(&out), Ok(r));
    }
}

// ----- machine_events ---------------------------------------------------------------------------

/// A byte reader that yields zeros once the input is exhausted.
struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bytes<'_> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | (u16::from(self.u8()) << 8)
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos.min(self.data.len());
        let end = (self.pos + n).min(self.data.len());
        self.pos += n;
        &self.data[start..end]
    }
}

const OWN_HOSTID: u32 = 0x11;
const OTHER_HOSTID: u32 = 0x22;

/// A valid record chosen by `pick`: clean, another host's live record, ours, FSCK, an
/// unknown sequence, maintenance.
fn valid_record(layout: &Layout, pick: u8, seq: u32, out: &mut [u8; MAX_RECORD_LEN]) {
    match *layout {
        Layout::Native { .. } => {
            let mut r = native::Record::formatted([5; 16], 100, 3, 1_700_000_000_000);
            r.seq = u64::from(seq);
            match pick % 6 {
                0 => {}
                1 => {
                    r.state = native::State::Active;
                    r.hostid = OTHER_HOSTID;
                }
                2 => {
                    r.state = native::State::Active;
                    r.hostid = OWN_HOSTID;
                }
                3 => r.state = native::State::Maintenance,
                4 => {
                    r.state = native::State::Active;
                    r.hostid = OTHER_HOSTID;
                    r.delay_us = seq % 1_000_000;
                    r.interval_ms = 100 + seq % 2000;
                }
                _ => {
                    r.state = native::State::Clean;
                    r.hostid = OTHER_HOSTID;
                }
            }
            r.emit(&mut out[..]);
        }
        Layout::Ext4 { csum_seed, .. } => {
            let (seq, node, ci): (u32, &[u8], u16) = match pick % 6 {
                0 => (ext4::SEQ_CLEAN, b"other", 5),
                1 => (seq % ext4::SEQ_MAX, b"other", (seq % 400) as u16),
                2 => (seq % ext4::SEQ_MAX, b"me", 5),
                3 => (ext4::SEQ_FSCK, b"other", 5),
                4 => (ext4::SEQ_MAX.saturating_add(1 + seq % 1000), b"other", 5),
                _ => (ext4::SEQ_CLEAN, b"me", (seq % 400) as u16),
            };
            let mut b = ext4::Block::new(seq, 1_700_000_000, node, b"/dev/f", ci);
            b.emit(&mut out[..], csum_seed);
        }
    }
}

/// Drives a [`Machine`] with inputs decoded from `data`: which layout, operation and
/// identity, then a sequence of I/O completions (the simulated device's bytes, a valid
/// record of any kind, arbitrary bytes, a short read, EIO), write outcomes (landed or not,
/// acknowledged or EIO), time steps, releases and spurious inputs. Checks:
///
/// * never a write after the machine finished (released, lost, refused...), and no I/O
///   at all once finished; `emit_block` refuses then;
/// * a check never writes;
/// * a heartbeat is only emitted inside the lease (`is_owner` at that instant), and
///   `emit_block` never succeeds past `owned_until`;
/// * CLEAN is written by an acquiring machine only while releasing;
/// * `owned_until` only while held, `Acquired` at most once, time never goes backwards.
///
/// Returns what happened (for corpus tests).
///
/// # Panics
/// When an invariant breaks.
#[allow(clippy::too_many_lines)]
pub fn machine_events(data: &[u8]) -> EventsSummary {
    let mut b = Bytes { data, pos: 0 };
    let head = b.u8();
    let layout = match head % 4 {
        0 | 1 => Layout::Native { offset_bytes: 0 },
        2 => Layout::Ext4 {
            offset_bytes: 0,
            csum_seed: Some(0x643D_BF5B),
            update_interval_s: u16::from(b.u8() % 8),
        },
        _ => Layout::Ext4 {
            offset_bytes: 0,
            csum_seed: None,
            update_interval_s: u16::from(b.u8() % 8),
        },
    };
    let op = match (head >> 2) % 4 {
        0 | 1 => Op::Acquire,
        2 => Op::Check,
        _ => Op::Clear,
    };
    let hostid = if head & 0x40 != 0 && head & 0x80 != 0 {
        0
    } else {
        OWN_HOSTID
    };
    let node: &[u8] = if hostid == 0 { b"zero" } else { b"me" };
    let mut cfg = Config::new(
        layout,
        Identity::new(hostid, node, b"/dev/f"),
        u64::from(b.u32()),
    );
    cfg.force = head & 0x40 != 0;
    let len = layout.record_len();
    let mut t: u64 = 1_000_000 + u64::from(b.u16());
    let now = |t: u64| Now::new(Instant::from_micros(t), 1_700_000_000_000 + t / 1000);
    let mut m = Machine::new(cfg, op, now(t));
    // The simulated device: starts with a valid record of the chosen kind.
    let mut disk = [0u8; MAX_RECORD_LEN];
    valid_record(&layout, b.u8(), b.u32(), &mut disk);
    let mut pending: Option<IoRequest> = None;
    let mut acquired = 0u32;
    let mut buf = [0u8; MAX_RECORD_LEN];
    let mut steps = 0u32;
    let mut writes = 0u32;
    while !b.done() && steps < 4096 {
        steps += 1;
        // Drain events and check the state invariants after every input.
        while let Some(e) = m.poll_event() {
            if e == Event::Acquired {
                acquired += 1;
                assert_eq!(acquired, 1, "Acquired twice");
                assert_eq!(op, Op::Acquire, "Acquired outside an acquire");
            }
        }
        if let Some(u) = m.owned_until() {
            assert!(m.is_held(), "owned_until while not held");
            assert!(!m.is_owner(u), "is_owner at the lease end");
        }
        if m.outcome().is_some() {
            assert!(!m.is_held(), "held after the end");
            assert_eq!(m.owned_until(), None, "a lease after the end");
        }
        if pending.is_none() {
            pending = m.poll_io();
            if pending.is_some() {
                assert!(m.outcome().is_none(), "I/O requested after the end");
            }
        }
        // Every command is 4 bytes, `[cmd, x, y, z]`, so that a script stays aligned
        // whatever the machine asks for (only a raw read, below, takes more).
        let [cmd, x, y, z] = [b.u8(), b.u8(), b.u8(), b.u8()];
        let (x64, y64, z64) = (u64::from(x), u64::from(y), u64::from(z));
        match (cmd % 8, pending) {
            // Complete the outstanding read after `x` µs with: 0-2 the device's bytes, 3-4 a
            // valid record of kind `z`, 5 the device's bytes with one byte flipped, 6 `len`
            // raw bytes from the input (short at its end: a short read), 7 error `z`.
            (0..=2, Some(IoRequest::Read { len: l, .. })) => {
                assert_eq!(l, len);
                pending = None;
                t += x64;
                match y % 8 {
                    0..=2 => m.handle_read_done(now(t), &disk[..len]),
                    3 | 4 => {
                        let mut rec = [0u8; MAX_RECORD_LEN];
                        valid_record(&layout, z, u32::from_le_bytes([x, y, z, cmd]), &mut rec);
                        m.handle_read_done(now(t), &rec[..len]);
                    }
                    5 => {
                        let mut rec = disk;
                        rec[(usize::from(x) * 256 + usize::from(z)) % len] ^= z | 1;
                        m.handle_read_done(now(t), &rec[..len]);
                    }
                    6 => {
                        let raw = b.take(len).to_vec();
                        m.handle_read_done(now(t), &raw);
                    }
                    // Error byte 0 is a short read, as before the enum.
                    _ => m.handle_io_error(
                        now(t),
                        if z == 0 {
                            IoError::Short
                        } else {
                            IoError::Os(i32::from(z))
                        },
                    ),
                }
            }
            // Perform the outstanding write after `x` µs, fate `y`, completing `z` µs later.
            (0..=2, Some(IoRequest::Write { len: l, .. })) => {
                assert_eq!(l, len);
                pending = None;
                t += x64;
                let phase = m.phase();
                let lease = m.owned_until();
                let emitted = m.emit_block(now(t), &mut buf);
                if !emitted {
                    continue;
                }
                writes += 1;
                assert!(m.outcome().is_none(), "a write emitted after the end");
                assert_ne!(op, Op::Check, "a check wrote");
                if phase == Phase::Held {
                    assert!(
                        lease.is_some_and(|l| Instant::from_micros(t) < l),
                        "a heartbeat emitted outside the lease"
                    );
                }
                if op == Op::Acquire
                    && machine::parse(&layout, &buf[..len]).is_ok_and(|s| s.class() == Class::Clean)
                {
                    assert_eq!(phase, Phase::Releasing, "CLEAN written while not releasing");
                }
                // 0-3 lands, 4 lost (acknowledged, never lands), 5 EIO after landing, 6 EIO
                // and dropped, 7 torn (the first sector lands) and acknowledged.
                let fate = y % 8;
                match fate {
                    0..=3 | 5 => disk[..len].copy_from_slice(&buf[..len]),
                    7 => disk[..512].copy_from_slice(&buf[..512]),
                    _ => {}
                }
                t += z64;
                if matches!(fate, 5 | 6) {
                    m.handle_io_error(now(t), IoError::Os(5));
                } else {
                    m.handle_write_done(now(t));
                }
            }
            // Time passes (x % 4: 0 `y` µs, 1 `(y, z)` × 16 µs, 2 to the next deadline, 3
            // `(x, y, z)` × 64 µs, up to about 17 minutes); the timeout is delivered.
            (3 | 4, _) => {
                let step = match x % 4 {
                    0 => y64,
                    1 => (y64 << 8 | z64) * 16,
                    2 => m
                        .poll_timeout()
                        .map_or(1000, |d| d.as_micros().saturating_sub(t)),
                    _ => (x64 << 16 | y64 << 8 | z64) * 64,
                };
                t = t.saturating_add(step);
                if pending.is_none() {
                    m.handle_timeout(now(t));
                }
            }
            (5, _) => {
                t += x64;
                if pending.is_none() {
                    m.release(now(t));
                }
            }
            // Spurious inputs with nothing outstanding: ignored or handled, never a panic.
            (6, None) => match x % 4 {
                0 => m.handle_read_done(now(t), &disk[..len]),
                1 => m.handle_write_done(now(t)),
                2 => m.handle_io_error(now(t), IoError::Os(5)),
                _ => m.handle_timeout(now(t)),
            },
            _ => {
                // Read-only queries.
                let _ = m.phase();
                let _ = m.timing();
                let _ = m.stats();
                let _ = m.first_snapshot();
                let _ = m.poll_timeout();
                let _ = m.is_owner(Instant::from_micros(t));
            }
        }
        if let Some(o) = m.outcome() {
            // Done: nothing more may come out, whatever is fed in.
            if matches!(o, Outcome::Released | Outcome::Lost(_)) {
                assert!(!m.emit_block(now(t), &mut buf), "emit after the end");
            }
        }
    }
    if m.outcome().is_some() {
        assert!(m.poll_io().is_none(), "I/O after the end");
        assert!(!m.emit_block(now(t + 1), &mut buf), "emit after the end");
    }
    EventsSummary {
        outcome: m.outcome(),
        acquired: acquired > 0,
        writes,
        steps,
    }
}

/// What one `machine_events` input did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsSummary {
    /// How the machine finished, if it did.
    pub outcome: Option<Outcome>,
    /// It acquired.
    pub acquired: bool,
    /// Writes emitted.
    pub writes: u32,
    /// Commands decoded.
    pub steps: u32,
}
