//! Writing a native MMP area (`mmp format`, `mmp_native_format`): one implementation of
//! the checks and the write, shared by the CLI and libmmp.

use crate::blockdev::{Device, DeviceError};
use crate::{clock, target};
use mmp_core::format::{Detected, END_PROBE_LEN, detect, detect_end, native};
use std::path::Path;

/// Why an area was not written. Nothing is written in every case.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The interval is outside 100 ms..=300 s.
    #[error("interval {0} ms is outside {min} to {max} ms", min = native::MIN_INTERVAL_MS, max = native::MAX_INTERVAL_MS)]
    BadInterval(u32),
    /// The fail-interval count is outside 2..=1000.
    #[error("fail intervals {0} outside {min} to {max}", min = native::MIN_FAIL_INTERVALS, max = native::MAX_FAIL_INTERVALS)]
    BadFailIntervals(u32),
    /// The device cannot hold the 4 KiB area.
    #[error("too small for a native area ({size} bytes, need {need})", need = native::AREA_LEN)]
    TooSmall {
        /// Device size in bytes.
        size: u64,
    },
    /// Mounted on this host.
    #[error("mounted on {0}; refusing to format")]
    Mounted(String),
    /// A known signature is there (refused without force).
    #[error("carries {0}; refusing to overwrite it without --force")]
    WouldOverwrite(&'static str),
    /// A native area that is not clean is there (refused without force).
    #[error("holds a native MMP area that is {}; refusing without --force", .0.state.name())]
    NotClean(Box<native::Record>),
    /// A native area that does not parse is there (refused without force).
    #[error("holds a native MMP area that does not parse ({0}); refusing without --force")]
    Unparsable(native::RecordError),
    /// Opening, reading or writing the device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl FormatError {
    /// Whether this is a refusal that `force` would override (as opposed to an error).
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FormatError::WouldOverwrite(_) | FormatError::NotClean(_) | FormatError::Unparsable(_)
        )
    }
}

/// Writes a fresh, clean native area at the start of `path` with the given heartbeat
/// interval and fail-interval count. Without `force` it refuses a device that carries a
/// known signature (ext2/3/4, XFS, btrfs, LVM, MD, GPT or MBR, ZFS label, swap) or a native
/// area that is not clean. A mounted device is always refused.
///
/// # Errors
/// [`FormatError`]; nothing is written then.
pub fn format(
    path: &Path,
    interval_ms: u32,
    fail_intervals: u32,
    force: bool,
) -> Result<native::Record, FormatError> {
    if !(native::MIN_INTERVAL_MS..=native::MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(FormatError::BadInterval(interval_ms));
    }
    let fail = u16::try_from(fail_intervals)
        .ok()
        .filter(|f| (native::MIN_FAIL_INTERVALS..=native::MAX_FAIL_INTERVALS).contains(f))
        .ok_or(FormatError::BadFailIntervals(fail_intervals))?;
    let dev = Device::open(path, true)?;
    if dev.size_bytes() < native::AREA_LEN {
        return Err(FormatError::TooSmall {
            size: dev.size_bytes(),
        });
    }
    if let Ok(Some(mp)) = dev.is_mounted() {
        return Err(FormatError::Mounted(mp));
    }
    let n = usize::try_from(dev.size_bytes().min(target::PROBE_LEN as u64)).unwrap_or(4096);
    let mut head = vec![0u8; n];
    dev.read_at(0, &mut head)?;
    if !force {
        // MD 0.90 and 1.0 keep their superblock at the end of the device.
        let size = dev.size_bytes();
        if size > n as u64 {
            let start = size.saturating_sub(END_PROBE_LEN).max(n as u64);
            let mut tail = vec![0u8; usize::try_from(size - start).unwrap_or(0)];
            dev.read_at(start, &mut tail)?;
            if let Detected::Other(what) = detect_end(&tail, start, size) {
                return Err(FormatError::WouldOverwrite(what));
            }
        }
        match detect(&head) {
            Detected::Native => match native::Record::parse(&head) {
                Ok(r) if r.state == native::State::Clean => {}
                Ok(r) => return Err(FormatError::NotClean(Box::new(r))),
                Err(e) => return Err(FormatError::Unparsable(e)),
            },
            Detected::Ext4 => return Err(FormatError::WouldOverwrite("an ext2/3/4 file system")),
            Detected::Other(what) => return Err(FormatError::WouldOverwrite(what)),
            Detected::Unknown => {}
        }
    }
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&clock::random_seed().to_le_bytes());
    id[8..].copy_from_slice(&clock::random_seed().to_le_bytes());
    let rec = native::Record::formatted(id, interval_ms, fail, clock::now().wall_ms);
    let mut area = vec![0u8; usize::try_from(native::AREA_LEN).unwrap_or(4096)];
    rec.emit(&mut area);
    dev.write_at(0, &area)?;
    Ok(rec)
}

/// What [`reset_unparsable`] wrote.
#[derive(Clone, Copy, Debug)]
pub struct Reset {
    /// The clean record now on the device.
    pub record: native::Record,
    /// Why the old record did not parse.
    pub was: native::RecordError,
    /// Whether the interval and fail-interval count were read from the old record (`false`:
    /// they were unreadable or out of range and the defaults were written).
    pub kept_parameters: bool,
}

/// Why [`reset_unparsable`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The record parses: the protocol's own clear applies (`Op::Clear`).
    #[error("the native MMP record parses; nothing to repair")]
    Parses,
    /// No native magic: not a native area (use `mmp format`).
    #[error("no native MMP area (no native magic)")]
    NotNative,
    /// A format version this code does not know: a newer mmp wrote it, and rewriting it
    /// with this version would throw away what that one recorded.
    #[error("{0}: use the mmp that wrote it, or overwrite it with `mmp format --force`")]
    Newer(native::RecordError),
    /// Opening, reading or writing the device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The operator's reset (`mmp clear --force`) of a native area whose record does not parse
/// (a bad checksum, a torn write, a field out of range): writes a clean record with reason
/// "cleared", keeping the area identifier, the sequence (plus one) and the heartbeat
/// parameters where they can still be read and lie in range, else the defaults of
/// `mmp format`. `identity` names who cleared it. No activity test: only when no other node
/// uses the device.
///
/// # Errors
/// [`ResetError`]; nothing is written then.
pub fn reset_unparsable(
    path: &Path,
    identity: &mmp_core::machine::Identity,
) -> Result<Reset, ResetError> {
    let dev = Device::open(path, true)?;
    let len = usize::try_from(native::AREA_LEN).unwrap_or(4096);
    if dev.size_bytes() < native::AREA_LEN {
        return Err(ResetError::NotNative);
    }
    let mut area = vec![0u8; len];
    dev.read_at(0, &mut area)?;
    let was = match native::Record::parse(&area) {
        Ok(_) => return Err(ResetError::Parses),
        Err(native::RecordError::BadMagic) => return Err(ResetError::NotNative),
        Err(e @ native::RecordError::UnsupportedVersion(_)) => return Err(ResetError::Newer(e)),
        Err(e) => e,
    };
    let le = |f: core::ops::Range<usize>| -> u64 {
        area.get(f).map_or(0, |b| {
            b.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x))
        })
    };
    let interval = u32::try_from(le(native::field::INTERVAL_MS))
        .ok()
        .filter(|i| (native::MIN_INTERVAL_MS..=native::MAX_INTERVAL_MS).contains(i));
    let fail = u16::try_from(le(native::field::FAIL_INTERVALS))
        .ok()
        .filter(|f| (native::MIN_FAIL_INTERVALS..=native::MAX_FAIL_INTERVALS).contains(f));
    let kept_parameters = interval.is_some() && fail.is_some();
    let mut area_id = [0u8; 16];
    if let Some(b) = area.get(native::field::AREA_ID) {
        area_id.copy_from_slice(b);
    }
    let now = clock::now().wall_ms;
    let mut rec = native::Record::formatted(
        area_id,
        interval.unwrap_or(native::DEFAULT_INTERVAL_MS),
        fail.unwrap_or(native::DEFAULT_FAIL_INTERVALS),
        now,
    );
    rec.reason = native::Reason::Cleared;
    rec.seq = le(native::field::SEQ).wrapping_add(1);
    rec.hostid = identity.hostid;
    rec.nodename = identity.nodename;
    rec.devname = identity.devname;
    let mut out = vec![0u8; len];
    rec.emit(&mut out);
    // Only the record is rewritten; the rest of the area is kept as it was.
    let n = native::RECORD_LEN;
    area[..n].copy_from_slice(&out[..n]);
    dev.write_at(0, &area)?;
    Ok(Reset {
        record: rec,
        was,
        kept_parameters,
    })
}
