//! On-disk formats, byte-exact and allocation-free.
//!
//! Every parser here never panics on any device bytes: it returns a small `Copy` error that
//! names what was wrong. Every emitter never panics on a buffer of the documented length and
//! writes every byte of the structure (reserved bytes are zeroed), so nothing stale leaks.
#![forbid(unsafe_code)]

pub mod ext4;
pub mod ext4fs;
pub mod native;

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
