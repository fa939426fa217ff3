//! On-disk formats, byte-exact and allocation-free.
//!
//! Every parser here never panics on any device bytes: it returns a small `Copy` error that
//! names what was wrong. Every emitter never panics on a buffer of the documented length and
//! writes every byte of the structure (reserved bytes are zeroed), so nothing stale leaks.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod ext4;
pub mod ext4fs;
pub mod native;
pub mod record;

/// Reads a little-endian `u16` from `b[f]` (callers pass ranges inside `b`).
pub(crate) fn le16(b: &[u8], f: core::ops::Range<usize>) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[f]);
    u16::from_le_bytes(a)
}

/// Reads a little-endian `u32` from `b[f]`.
pub(crate) fn le32(b: &[u8], f: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[f]);
    u32::from_le_bytes(a)
}

/// Reads a little-endian `u64` from `b[f]`.
pub(crate) fn le64(b: &[u8], f: core::ops::Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[f]);
    u64::from_le_bytes(a)
}

/// Copies `name` into a fixed-size on-disk field: truncated to the field, NUL padded.
pub(crate) fn put_name(field: &mut [u8], name: &[u8]) {
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
    field[n..].fill(0);
}

/// The bytes of a fixed-size name field up to the first NUL (or the whole field).
#[must_use]
pub fn trim_name(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// What a device's first bytes say it is, as far as MMP cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// An ext2/3/4 or ldiskfs superblock (with or without the MMP feature).
    Ext4,
    /// A native mmp area.
    Native,
    /// Another known signature, by name (for error messages and `format`'s refusal).
    Other(&'static str),
    /// Nothing recognised.
    Unknown,
}

/// Looks for known signatures in the first 256 KiB of a device (`head` may be shorter; absent
/// bytes simply do not match). Never panics.
///
/// Recognises ext2/3/4, the native area, XFS, btrfs, LVM2, MD (1.1/1.2 superblocks at 0 and
/// 4 KiB), swap, GPT, an MBR partition table, and a ZFS label (uberblock magic in the first
/// label's uberblock ring).
#[must_use]
pub fn detect(head: &[u8]) -> Detected {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if native::Record::looks_native(head) {
        return Detected::Native;
    }
    if at(1024 + 0x38, &[0x53, 0xEF]) {
        return Detected::Ext4;
    }
    if at(0, b"XFSB") {
        return Detected::Other("XFS");
    }
    if at(0x10040, b"_BHRfS_M") {
        return Detected::Other("btrfs");
    }
    if at(512 + 0x18, b"LVM2 001") || at(0x18, b"LVM2 001") {
        return Detected::Other("LVM2 physical volume");
    }
    for off in [0usize, 4096] {
        if at(off, &[0xFC, 0x4E, 0x2B, 0xA9]) {
            return Detected::Other("Linux MD RAID member");
        }
    }
    if at(4096 - 10, b"SWAPSPACE2") || at(4096 - 10, b"SWAP-SPACE") {
        return Detected::Other("Linux swap");
    }
    if at(512, b"EFI PART") || at(4096, b"EFI PART") {
        return Detected::Other("GPT partition table");
    }
    // ZFS: vdev label 0 at offset 0, uberblock ring at 128 KiB; also look at the first
    // bytes we were given for the little- or big-endian uberblock magic 0x00bab10c.
    for off in (128 * 1024..head.len().saturating_sub(8)).step_by(1024) {
        if at(off, &[0x0C, 0xB1, 0xBA, 0x00, 0, 0, 0, 0])
            || at(off, &[0, 0, 0, 0, 0x00, 0xBA, 0xB1, 0x0C])
        {
            return Detected::Other("ZFS label");
        }
    }
    if at(510, &[0x55, 0xAA]) {
        return Detected::Other("MBR partition table or boot sector");
    }
    Detected::Unknown
}

/// How many bytes at the end of a device [`detect_end`] looks at.
pub const END_PROBE_LEN: u64 = 128 * 1024;

/// Looks for signatures kept at the end of a device: Linux MD RAID superblocks of versions
/// 0.90 (64 KiB-aligned, the last whole 64 KiB) and 1.0 (4 KiB-aligned, at least 8 KiB before
/// the end), in either byte order. `tail` holds the device's bytes from `tail_start` up to
/// its end at `size` (the last [`END_PROBE_LEN`] bytes are enough). Never panics.
#[must_use]
pub fn detect_end(tail: &[u8], tail_start: u64, size: u64) -> Detected {
    let at = |pos: u64, magic: &[u8]| {
        pos.checked_sub(tail_start)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| tail.get(o..o.checked_add(magic.len())?))
            == Some(magic)
    };
    let md_090 = (size & !0xFFFF).checked_sub(0x1_0000);
    let md_10 = size.checked_sub(8192).map(|v| v & !0xFFF);
    for pos in [md_090, md_10].into_iter().flatten() {
        if at(pos, &[0xFC, 0x4E, 0x2B, 0xA9]) || at(pos, &[0xA9, 0x2B, 0x4E, 0xFC]) {
            return Detected::Other("Linux MD RAID member (superblock at the end)");
        }
    }
    Detected::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_superblocks_at_the_end() {
        const MAGIC_LE: [u8; 4] = [0xFC, 0x4E, 0x2B, 0xA9];
        // Device sizes that are and are not multiples of 64 KiB and 4 KiB.
        for size in [1u64 << 20, (1 << 20) + 12_345, 300 * 1024 + 512] {
            let start = size - END_PROBE_LEN.min(size);
            let v090 = (size & !0xFFFF) - 0x1_0000;
            let v10 = (size - 8192) & !0xFFF;
            for (pos, magic) in [
                (v090, MAGIC_LE),
                (v10, MAGIC_LE),
                (v10, [0xA9, 0x2B, 0x4E, 0xFC]),
            ] {
                let mut tail = vec![0u8; usize::try_from(size - start).unwrap()];
                let o = usize::try_from(pos - start).unwrap();
                tail[o..o + 4].copy_from_slice(&magic);
                assert!(
                    matches!(detect_end(&tail, start, size), Detected::Other(w) if w.contains("MD")),
                    "size {size} pos {pos}"
                );
                // One byte off: not a superblock.
                tail[o..o + 4].fill(0);
                tail[o + 1..o + 5].copy_from_slice(&magic);
                assert_eq!(detect_end(&tail, start, size), Detected::Unknown);
            }
        }
        // Short or misplaced tails and tiny devices never panic.
        assert_eq!(detect_end(&[], 0, 0), Detected::Unknown);
        assert_eq!(detect_end(&[0xFC; 10], 0, 5), Detected::Unknown);
        assert_eq!(detect_end(&[0; 4], 1 << 40, 1 << 20), Detected::Unknown);
        assert_eq!(detect_end(&[0; 100], 0, u64::MAX), Detected::Unknown);
    }
}
