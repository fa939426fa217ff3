//! The native mmp area: one checksummed 512-byte record at the start of a dedicated device
//! (a small partition, LUN or file), for any file system or none.
//!
//! The area is the first [`AREA_LEN`] bytes of the device: the record in the first 512 bytes
//! (one sector on 512-byte devices, so a write is atomic there), zeros after it up to 4 KiB
//! (so 4 KiB-sector devices write one whole sector). Every field is little-endian. The
//! record is documented byte by byte in `docs/on-disk-format.md`; a test checks that table
//! against [`field`].
//!
//! A torn write (some sectors or bytes new, some old) never parses: the CRC32C over the
//! whole record fails, and a record that does not parse is treated as "in use" by the
//! protocol, never as clean.
#![forbid(unsafe_code)]

use super::{le16, le32, le64};
use crate::crc32c::crc32c;
use core::fmt;

/// The 8-byte magic at offset 0: `"MMPNATIV"`.
pub const MAGIC: [u8; 8] = *b"MMPNATIV";
/// The format version this code reads and writes.
pub const VERSION: u16 = 1;
/// Length of the record in bytes.
pub const RECORD_LEN: usize = 512;
/// Bytes reserved at the start of the device for the area (one 4 KiB sector).
pub const AREA_LEN: u64 = 4096;
/// Shortest heartbeat interval the format accepts.
pub const MIN_INTERVAL_MS: u32 = 100;
/// Longest heartbeat interval the format accepts (5 minutes).
pub const MAX_INTERVAL_MS: u32 = 300_000;
/// Default heartbeat interval.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;
/// Default number of intervals without a successful heartbeat before the owner self-fences.
pub const DEFAULT_FAIL_INTERVALS: u16 = 10;
/// Smallest accepted fail-interval count.
pub const MIN_FAIL_INTERVALS: u16 = 2;
/// Largest accepted fail-interval count.
pub const MAX_FAIL_INTERVALS: u16 = 1000;

/// Byte ranges of the record fields.
pub mod field {
    /// A byte range inside the record.
    pub type Field = core::ops::Range<usize>;
    /// Magic, `"MMPNATIV"`.
    pub const MAGIC: Field = 0x000..0x008;
    /// Format version (le16), 1.
    pub const VERSION: Field = 0x008..0x00A;
    /// Record length (le16), 512.
    pub const RECORD_LEN: Field = 0x00A..0x00C;
    /// State (u8): 1 clean, 2 active, 3 maintenance.
    pub const STATE: Field = 0x00C..0x00D;
    /// Reason (u8): how the last owner let go (see [`super::Reason`]).
    pub const REASON: Field = 0x00D..0x00E;
    /// Fail intervals (le16): the owner self-fences after this many intervals without a
    /// successful heartbeat.
    pub const FAIL_INTERVALS: Field = 0x00E..0x010;
    /// Heartbeat interval in milliseconds (le32).
    pub const INTERVAL_MS: Field = 0x010..0x014;
    /// The owner's advertised delay in microseconds (le32): how late its heartbeats may be.
    pub const DELAY_US: Field = 0x014..0x018;
    /// Sequence (le64): random at each claim, +1 at each heartbeat.
    pub const SEQ: Field = 0x018..0x020;
    /// Wall time of the write, Unix milliseconds (le64), informational.
    pub const TIME_MS: Field = 0x020..0x028;
    /// Owner hostid (le32), 0 only in a freshly formatted area.
    pub const HOSTID: Field = 0x028..0x02C;
    /// Flags (le32), reserved, 0.
    pub const FLAGS: Field = 0x02C..0x030;
    /// Area identifier, 16 random bytes chosen by `format`.
    pub const AREA_ID: Field = 0x030..0x040;
    /// Owner node name, NUL padded.
    pub const NODENAME: Field = 0x040..0x080;
    /// Owner's device path, NUL padded.
    pub const DEVNAME: Field = 0x080..0x0C0;
    /// Wall time the owner acquired the area, Unix milliseconds (le64).
    pub const SINCE_MS: Field = 0x0C0..0x0C8;
    /// Reserved, zero.
    pub const RESERVED: Field = 0x0C8..0x1FC;
    /// CRC32C (standard: init !0, final inversion) of bytes 0x000..0x1FC (le32).
    pub const CHECKSUM: Field = 0x1FC..0x200;
}

/// The area's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Released: safe to take after the claim-and-verify wait.
    Clean,
    /// Held (or held by a host that died): take only after the activity test.
    Active,
    /// An administrator reserved it; refused until `mmp clear --force`.
    Maintenance,
}

impl State {
    fn to_u8(self) -> u8 {
        match self {
            State::Clean => 1,
            State::Active => 2,
            State::Maintenance => 3,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(State::Clean),
            2 => Some(State::Active),
            3 => Some(State::Maintenance),
            _ => None,
        }
    }
    /// The name used in text and JSON output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            State::Clean => "clean",
            State::Active => "active",
            State::Maintenance => "maintenance",
        }
    }
}

/// Why the last owner let go (in a clean record), or how the current owner came in (in an
/// active record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Nothing recorded (an active record acquired from a clean one).
    None,
    /// The owner released it cleanly.
    Released,
    /// An operator reset it with `clear --force`.
    Cleared,
    /// The current owner took it over from an owner that never released it.
    TakenOver,
    /// `mmp format` wrote it.
    Formatted,
}

impl Reason {
    fn to_u8(self) -> u8 {
        match self {
            Reason::None => 0,
            Reason::Released => 1,
            Reason::Cleared => 2,
            Reason::TakenOver => 3,
            Reason::Formatted => 4,
        }
    }
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Reason::None),
            1 => Some(Reason::Released),
            2 => Some(Reason::Cleared),
            3 => Some(Reason::TakenOver),
            4 => Some(Reason::Formatted),
            _ => None,
        }
    }
    /// The name used in text and JSON output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Reason::None => "none",
            Reason::Released => "released",
            Reason::Cleared => "cleared",
            Reason::TakenOver => "taken-over",
            Reason::Formatted => "formatted",
        }
    }
}

/// Why a native record was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer than 512 bytes.
    TooShort,
    /// The magic is not `"MMPNATIV"`.
    BadMagic,
    /// The checksum does not match (a torn or corrupt write).
    BadChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// A version this code does not know.
    UnsupportedVersion(u16),
    /// The record length field is not 512.
    BadLength(u16),
    /// An unknown state byte.
    BadState(u8),
    /// An unknown reason byte.
    BadReason(u8),
    /// An interval outside 100 ms..300 s.
    BadInterval(u32),
    /// A fail-interval count outside 2..=1000.
    BadFailIntervals(u16),
    /// Reserved bytes or flags are not zero.
    ReservedNotZero,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RecordError::TooShort => write!(f, "native MMP record too short"),
            RecordError::BadMagic => write!(f, "no native MMP magic"),
            RecordError::BadChecksum { stored, computed } => write!(
                f,
                "native MMP record checksum does not match (stored {stored:#010x}, computed {computed:#010x}): torn or corrupt write"
            ),
            RecordError::UnsupportedVersion(v) => write!(
                f,
                "native MMP format version {v} is not supported (this mmp reads version {VERSION})"
            ),
            RecordError::BadLength(l) => {
                write!(f, "native MMP record length {l} (expected {RECORD_LEN})")
            }
            RecordError::BadState(s) => write!(f, "native MMP record has unknown state {s}"),
            RecordError::BadReason(r) => write!(f, "native MMP record has unknown reason {r}"),
            RecordError::BadInterval(i) => write!(
                f,
                "native MMP interval {i} ms is outside {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS} ms"
            ),
            RecordError::BadFailIntervals(n) => write!(
                f,
                "native MMP fail intervals {n} outside {MIN_FAIL_INTERVALS} to {MAX_FAIL_INTERVALS}"
            ),
            RecordError::ReservedNotZero => {
                write!(f, "native MMP record has non-zero reserved bytes")
            }
        }
    }
}

impl core::error::Error for RecordError {}

/// A native record, as plain values.
///
/// ```
/// use mmp_core::format::native::{Record, State};
/// let mut r = Record::formatted([7; 16], 100, 10, 1_700_000_000_000);
/// r.state = State::Active;
/// r.hostid = 0xdeadbeef;
/// let mut buf = [0xa5u8; 512];
/// r.emit(&mut buf);
/// assert_eq!(Record::parse(&buf), Ok(r));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// State.
    pub state: State,
    /// Reason for the last transition.
    pub reason: Reason,
    /// Fail intervals.
    pub fail_intervals: u16,
    /// Heartbeat interval, milliseconds.
    pub interval_ms: u32,
    /// Advertised delay, microseconds.
    pub delay_us: u32,
    /// Sequence.
    pub seq: u64,
    /// Wall time of this write, Unix milliseconds.
    pub time_ms: u64,
    /// Owner hostid.
    pub hostid: u32,
    /// Area identifier.
    pub area_id: [u8; 16],
    /// Owner node name (64 bytes as on disk).
    pub nodename: [u8; 64],
    /// Owner's device path (64 bytes as on disk).
    pub devname: [u8; 64],
    /// Wall time of the acquisition, Unix milliseconds.
    pub since_ms: u64,
}

impl Record {
    /// The record `mmp format` writes: clean, reason "formatted", hostid 0, seq 0.
    #[must_use]
    pub fn formatted(
        area_id: [u8; 16],
        interval_ms: u32,
        fail_intervals: u16,
        time_ms: u64,
    ) -> Self {
        Record {
            state: State::Clean,
            reason: Reason::Formatted,
            fail_intervals,
            interval_ms,
            delay_us: 0,
            seq: 0,
            time_ms,
            hostid: 0,
            area_id,
            nodename: [0; 64],
            devname: [0; 64],
            since_ms: 0,
        }
    }

    /// Whether `buf` starts with the native magic (no other check).
    #[must_use]
    pub fn looks_native(buf: &[u8]) -> bool {
        buf.get(field::MAGIC) == Some(&MAGIC[..])
    }

    /// Parses the first 512 bytes of `buf`. Checks, in order: length, magic, checksum,
    /// version, record length, state, reason, interval, fail intervals, reserved bytes.
    /// Never panics.
    ///
    /// # Errors
    /// [`RecordError`].
    pub fn parse(buf: &[u8]) -> Result<Self, RecordError> {
        let Some(b) = buf.get(..RECORD_LEN) else {
            return Err(RecordError::TooShort);
        };
        if b[field::MAGIC] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let stored = le32(b, field::CHECKSUM);
        let computed = crc32c(&b[..field::CHECKSUM.start]);
        if stored != computed {
            return Err(RecordError::BadChecksum { stored, computed });
        }
        let version = le16(b, field::VERSION);
        if version != VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let len = le16(b, field::RECORD_LEN);
        if usize::from(len) != RECORD_LEN {
            return Err(RecordError::BadLength(len));
        }
        let state = State::from_u8(b[field::STATE.start])
            .ok_or(RecordError::BadState(b[field::STATE.start]))?;
        let reason = Reason::from_u8(b[field::REASON.start])
            .ok_or(RecordError::BadReason(b[field::REASON.start]))?;
        let interval_ms = le32(b, field::INTERVAL_MS);
        if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
            return Err(RecordError::BadInterval(interval_ms));
        }
        let fail_intervals = le16(b, field::FAIL_INTERVALS);
        if !(MIN_FAIL_INTERVALS..=MAX_FAIL_INTERVALS).contains(&fail_intervals) {
            return Err(RecordError::BadFailIntervals(fail_intervals));
        }
        if le32(b, field::FLAGS) != 0 || b[field::RESERVED].iter().any(|&x| x != 0) {
            return Err(RecordError::ReservedNotZero);
        }
        let mut area_id = [0u8; 16];
        area_id.copy_from_slice(&b[field::AREA_ID]);
        let mut nodename = [0u8; 64];
        nodename.copy_from_slice(&b[field::NODENAME]);
        let mut devname = [0u8; 64];
        devname.copy_from_slice(&b[field::DEVNAME]);
        Ok(Record {
            state,
            reason,
            fail_intervals,
            interval_ms,
            delay_us: le32(b, field::DELAY_US),
            seq: le64(b, field::SEQ),
            time_ms: le64(b, field::TIME_MS),
            hostid: le32(b, field::HOSTID),
            area_id,
            nodename,
            devname,
            since_ms: le64(b, field::SINCE_MS),
        })
    }

    /// Writes the 512-byte record (every byte, checksum last) into `buf[..512]`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`RECORD_LEN`].
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..RECORD_LEN];
        b.fill(0);
        b[field::MAGIC].copy_from_slice(&MAGIC);
        b[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
        #[allow(clippy::cast_possible_truncation)]
        b[field::RECORD_LEN].copy_from_slice(&(RECORD_LEN as u16).to_le_bytes());
        b[field::STATE.start] = self.state.to_u8();
        b[field::REASON.start] = self.reason.to_u8();
        b[field::FAIL_INTERVALS].copy_from_slice(&self.fail_intervals.to_le_bytes());
        b[field::INTERVAL_MS].copy_from_slice(&self.interval_ms.to_le_bytes());
        b[field::DELAY_US].copy_from_slice(&self.delay_us.to_le_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        b[field::TIME_MS].copy_from_slice(&self.time_ms.to_le_bytes());
        b[field::HOSTID].copy_from_slice(&self.hostid.to_le_bytes());
        b[field::AREA_ID].copy_from_slice(&self.area_id);
        b[field::NODENAME].copy_from_slice(&self.nodename);
        b[field::DEVNAME].copy_from_slice(&self.devname);
        b[field::SINCE_MS].copy_from_slice(&self.since_ms.to_le_bytes());
        let c = crc32c(&b[..field::CHECKSUM.start]);
        b[field::CHECKSUM].copy_from_slice(&c.to_le_bytes());
    }

    /// The node name up to the first NUL.
    #[must_use]
    pub fn nodename(&self) -> &[u8] {
        super::trim_name(&self.nodename)
    }

    /// The device name up to the first NUL.
    #[must_use]
    pub fn devname(&self) -> &[u8] {
        super::trim_name(&self.devname)
    }

    /// Sets the node name (truncated to 64 bytes, NUL padded).
    pub fn set_nodename(&mut self, name: &[u8]) {
        super::put_name(&mut self.nodename, name);
    }

    /// Sets the device name (truncated to 64 bytes, NUL padded).
    pub fn set_devname(&mut self, name: &[u8]) {
        super::put_name(&mut self.devname, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::formatted([0x42; 16], 100, 10, 1_763_700_000_123);
        r.state = State::Active;
        r.reason = Reason::TakenOver;
        r.hostid = 0x1234_5678;
        r.seq = 0x0102_0304_0506_0708;
        r.delay_us = 2500;
        r.since_ms = 1_763_700_000_000;
        r.set_nodename(b"oss1");
        r.set_devname(b"/dev/mapper/ost0-mmp");
        r
    }

    #[test]
    fn round_trip_and_poison() {
        let r = sample();
        let mut a = [0xa5u8; 512];
        let mut z = [0u8; 512];
        r.emit(&mut a);
        r.emit(&mut z);
        assert_eq!(a, z, "emit writes every byte");
        assert_eq!(Record::parse(&a), Ok(r));
        assert_eq!(r.nodename(), b"oss1");
    }

    #[test]
    fn every_bit_flip_gives_the_exact_error() {
        let mut good = [0u8; 512];
        sample().emit(&mut good);
        for byte in 0..RECORD_LEN {
            for bit in 0..8 {
                let mut buf = good;
                buf[byte] ^= 1 << bit;
                let got = Record::parse(&buf);
                if field::MAGIC.contains(&byte) {
                    assert_eq!(got, Err(RecordError::BadMagic), "byte {byte} bit {bit}");
                } else {
                    let stored = le32(&buf, field::CHECKSUM);
                    let computed = crc32c(&buf[..0x1FC]);
                    assert_eq!(
                        got,
                        Err(RecordError::BadChecksum { stored, computed }),
                        "byte {byte} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn semantic_errors_after_a_valid_checksum() {
        fn resign(buf: &mut [u8; 512]) {
            let c = crc32c(&buf[..0x1FC]);
            buf[0x1FC..].copy_from_slice(&c.to_le_bytes());
        }
        let mut good = [0u8; 512];
        sample().emit(&mut good);
        let cases: [(usize, u8, RecordError); 6] = [
            (0x008, 2, RecordError::UnsupportedVersion(2)),
            (0x00B, 4, RecordError::BadLength(0x0400)),
            (0x00C, 9, RecordError::BadState(9)),
            (0x00D, 9, RecordError::BadReason(9)),
            (0x00E, 1, RecordError::BadFailIntervals(1)),
            (0x100, 1, RecordError::ReservedNotZero),
        ];
        for (off, val, want) in cases {
            let mut b = good;
            b[off] = val;
            resign(&mut b);
            assert_eq!(Record::parse(&b), Err(want), "offset {off:#x}");
        }
        let mut b = good;
        b[0x010..0x014].copy_from_slice(&99u32.to_le_bytes());
        resign(&mut b);
        assert_eq!(Record::parse(&b), Err(RecordError::BadInterval(99)));
        assert_eq!(Record::parse(&good[..511]), Err(RecordError::TooShort));
    }
}
