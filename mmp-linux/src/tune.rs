//! Turning MMP on and off in an unmounted ext4/ldiskfs file system, the way
//! `tune2fs -O mmp`, `tune2fs -O ^mmp` and `tune2fs -E mmp_update_interval=N` do
//! (spec `ext4-mmp.md` §4.4 and §5).
//!
//! * [`enable`] takes the first free block at or after `s_first_data_block`, zeroes it, writes
//!   a CLEAN MMP block into it, marks it in the block bitmap, decrements the group's and the
//!   superblock's free counts, clears `BLOCK_UNINIT`, recomputes the bitmap and descriptor
//!   checksums, and sets `s_mmp_block`, `s_mmp_update_interval` and `INCOMPAT_MMP`.
//! * [`disable`] frees the block (when it still holds an MMP block and is marked in use),
//!   clears the three fields, and leaves the block's content as it was.
//! * [`set_interval`] rewrites `s_mmp_update_interval`.
//!
//! Like e2fsprogs, every superblock copy is rewritten from the primary (backups carry their
//! own `s_block_group_nr`, `s_state` without the clean bit, and their own checksum), and
//! [`enable`] and [`disable`] rewrite every copy of the descriptor table. `s_wtime` and
//! `s_kbytes_written` are left alone.
//!
//! [`preflight`] makes every refusal check without writing: mounted on this host (mountinfo
//! by device number or backing loop device, and for block devices an `O_EXCL` open, which
//! fails with `EBUSY` while anything holds the device), not ext2/3/4, a feature this code does
//! not handle (`bigalloc`, `meta_bg`, snapshots, unknown ones), a journal that needs recovery,
//! a file system with errors, MMP already on (enable) or off (disable, set-interval), and
//! checksums or geometry that do not add up. [`enable`], [`disable`] and [`set_interval`] run
//! the same checks first and write nothing when one fails. None of them proves that no other
//! host uses the device: the caller does that with the MMP protocol before [`disable`] and
//! [`set_interval`] (enable has no MMP block to check).
//!
//! # Write order (crash safety)
//!
//! Every write is durable before the next starts (`O_DSYNC`/`fdatasync`), so a crash leaves a
//! prefix of the sequence on disk. The **primary superblock is the commit point**: until it
//! says MMP, nothing uses the MMP block; from the moment it says no MMP, nothing writes it.
//!
//! `enable`:
//! 1. the chosen block: zeros plus the CLEAN MMP block (it is free, so nothing reads it);
//! 2. the group's block bitmap with the block's bit set (for a `BLOCK_UNINIT` group, the whole
//!    bitmap the layout implies, written before any descriptor stops saying "uninit");
//! 3. the primary descriptor table (free count −1, `BLOCK_UNINIT` cleared, checksums), then
//!    every backup copy;
//! 4. the primary superblock (free count −1, `s_mmp_block`, interval, `INCOMPAT_MMP`,
//!    checksum): **commit**;
//! 5. every backup superblock.
//!
//! A crash before 4 leaves a file system without MMP in which at most one block is marked in
//! use that no inode owns (`e2fsck` reports "block bitmap differences" and frees it), and,
//! between 2 and 3 with metadata_csum, one group whose bitmap checksum is stale (`e2fsck`
//! rebuilds the bitmap; the kernel refuses to allocate from that group until then). A crash
//! after 4 leaves MMP fully enabled with stale backup superblocks, the state the kernel
//! itself leaves them in.
//!
//! `disable` is the reverse:
//! 1. the primary superblock (no MMP, `s_mmp_block = 0`, interval 0, free count +1,
//!    checksum): **commit** — after it no kernel or tool writes the MMP block any more, so the
//!    block can be released;
//! 2. the bitmap with the bit cleared;
//! 3. the primary descriptor table, then the backups;
//! 4. every backup superblock.
//!
//! Freeing the bitmap bit first would open a window in which the superblock still names the
//! block as the MMP block while the allocator may hand it to a file: the heartbeat would then
//! overwrite file data. With this order a crash leaves at worst a leaked block, a superblock
//! free count one too high, or one stale bitmap checksum, all of which `e2fsck` repairs
//! without touching data.
//!
//! `set_interval` writes the primary superblock, then the backups.
//!
//! Writes that do not start or end on a sector boundary (1 KiB superblocks and blocks on
//! 4 KiB-sector devices) read the covering sectors first and write them back whole.

use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::blockdev::{Device, DeviceError, DeviceKind};
use mmp_core::format::ext4::{
    Block, INCOMPAT_JOURNAL_DEV, INCOMPAT_MMP, INCOMPAT_RECOVER, MAX_UPDATE_INTERVAL_S,
    MIN_CHECK_INTERVAL_S, SEQ_CLEAN, SUPERBLOCK_LEN, SUPERBLOCK_OFFSET, Superblock,
    SuperblockError, sb_field,
};
use mmp_core::format::ext4fs::{
    self, BG_BLOCK_UNINIT, Desc, DescMut, FsError, Layout, STATE_ERROR, first_clear_bit, put_bit,
    test_bit, write_bytes,
};

/// The default `s_mmp_update_interval` (seconds), as e2fsprogs.
pub const DEFAULT_INTERVAL_S: u16 = 5;

/// The operation [`preflight`] checks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// [`enable`]: MMP must be off.
    Enable,
    /// [`disable`]: MMP must be on.
    Disable,
    /// [`set_interval`]: MMP must be on.
    SetInterval,
}

/// What [`enable`] writes into the new MMP block and the superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnableOptions {
    /// `s_mmp_update_interval` in seconds, 1..=300 (default 5).
    pub update_interval_s: u16,
    /// Node name for the CLEAN block (truncated to 64 bytes), normally the host name.
    pub nodename: Vec<u8>,
    /// Device name for the CLEAN block (truncated to 32 bytes with no NUL, like e2fsprogs'
    /// `strncpy`), normally the path as given.
    pub devname: Vec<u8>,
    /// `mmp_time` of the CLEAN block (Unix seconds).
    pub now_unix_s: u64,
}

impl EnableOptions {
    /// Options with the default interval.
    #[must_use]
    pub fn new(nodename: &[u8], devname: &[u8], now_unix_s: u64) -> Self {
        EnableOptions {
            update_interval_s: DEFAULT_INTERVAL_S,
            nodename: nodename.to_vec(),
            devname: devname.to_vec(),
            now_unix_s,
        }
    }
}

/// What [`enable`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnableReport {
    /// The MMP block chosen (`s_mmp_block`).
    pub block: u64,
    /// Its block group.
    pub group: u32,
    /// `s_mmp_update_interval` written (seconds).
    pub update_interval_s: u16,
    /// `mmp_check_interval` written into the CLEAN block: `max(interval, 5)`.
    pub check_interval_s: u16,
    /// Whether the group's bitmap was uninitialised (`BLOCK_UNINIT`) before.
    pub was_block_uninit: bool,
}

/// What [`disable`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisableReport {
    /// The former `s_mmp_block`.
    pub old_block: u64,
    /// Whether the block was returned to the free pool.
    pub freed: bool,
    /// Why it was not freed (then it stays marked in use until `e2fsck` frees it, as with
    /// tune2fs when it cannot read the block).
    pub not_freed_reason: Option<String>,
}

/// What [`preflight`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsInfo {
    /// Block size in bytes.
    pub block_size: u32,
    /// `s_blocks_count`.
    pub blocks_count: u64,
    /// `s_free_blocks_count`.
    pub free_blocks_count: u64,
    /// Number of block groups.
    pub group_count: u32,
    /// Groups that hold a superblock and descriptor copy (group 0 first).
    pub super_groups: Vec<u32>,
    /// Whether `INCOMPAT_MMP` is set.
    pub mmp_enabled: bool,
    /// `s_mmp_block`.
    pub mmp_block: u64,
    /// `s_mmp_update_interval` as stored.
    pub mmp_update_interval: u16,
    /// Whether metadata_csum is on.
    pub metadata_csum: bool,
    /// Whether gdt_csum (uninit_bg) is on without metadata_csum.
    pub gdt_csum: bool,
    /// Whether descriptors are 64-bit.
    pub is_64bit: bool,
    /// `s_uuid`.
    pub uuid: [u8; 16],
}

/// Why [`enable`], [`disable`], [`set_interval`] or [`preflight`] refused or failed. Every
/// refusal happens before the first write.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// Mounted on this host.
    #[error("the file system is mounted on {mountpoint}; unmount it first")]
    Mounted {
        /// Where it is mounted.
        mountpoint: String,
    },
    /// A block device that another holder has open exclusively (a mount in another
    /// namespace, device-mapper, md, ...).
    #[error(
        "{path} is in use (exclusive open failed with EBUSY): mounted or held by another driver"
    )]
    InUse {
        /// The device path.
        path: String,
    },
    /// The mount check itself failed.
    #[error("cannot check whether the device is mounted: {0}")]
    MountCheck(#[source] std::io::Error),
    /// Not an ext2/3/4 file system.
    #[error("not an ext2/3/4 file system: {found}")]
    NotExt4 {
        /// What was found instead.
        found: String,
    },
    /// `enable` on a file system that has MMP.
    #[error("multiple mount protection is already enabled (MMP block {block})")]
    AlreadyEnabled {
        /// `s_mmp_block`.
        block: u64,
    },
    /// `disable` or `set_interval` on a file system without MMP.
    #[error("multiple mount protection is not enabled")]
    NotEnabled,
    /// The journal needs recovery (`INCOMPAT_RECOVER`).
    #[error("the journal needs recovery; run e2fsck (or mount and unmount) first")]
    NeedsRecovery,
    /// `s_state` has the error bit.
    #[error("the file system has errors; run e2fsck first")]
    HasErrors,
    /// A feature this code does not handle yet.
    #[error("unsupported ext4 feature: {feature}")]
    Unsupported {
        /// The feature.
        feature: &'static str,
    },
    /// An update interval outside 1..=300 seconds.
    #[error("MMP update interval {0} is out of range (1 to 300 seconds)")]
    BadInterval(u32),
    /// No free block for the MMP block.
    #[error("no free block for the MMP block")]
    NoFreeBlock,
    /// Metadata that does not add up (checksums, counts, geometry).
    #[error("file system metadata is inconsistent: {what}; run e2fsck first")]
    Corrupt {
        /// What.
        what: String,
    },
    /// The proof that no other node uses the device (the lease of [`crate::procedure::prove_unused`])
    /// ran out before a write of the change could be issued: another node may have taken the
    /// device since, so the write was not made. With `committed` false nothing was written;
    /// otherwise the primary superblock was, and the rest was not (run e2fsck).
    #[error("{}", lease_expired(*.late_ms, *.committed))]
    LeaseExpired {
        /// How long past the lease the write would have been issued (milliseconds).
        late_ms: u64,
        /// Whether the primary superblock (the commit) had been written already.
        committed: bool,
    },
    /// A read or write failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

fn lease_expired(late_ms: u64, committed: bool) -> String {
    if committed {
        format!(
            "the proof that no other node uses the device ran out {late_ms} ms before the change \
             was complete: the primary superblock was written, the rest was not; nothing more \
             was written: run e2fsck -f before use"
        )
    } else {
        format!(
            "the proof that no other node uses the device ran out {late_ms} ms before the change \
             could be written; nothing was written: try again (on slow storage, with a longer \
             interval)"
        )
    }
}

/// The instant by which every write of a superblock change must be issued: the end of the
/// lease of the machine that proved the device unused ([`Machine::owned_until`]). Past it
/// another node may hold the device (its activity test may have ended), and a superblock
/// write landing under its mount would damage the file system, so no further write is
/// issued ([`TuneError::LeaseExpired`]). [`Deadline::NONE`] for a forced change (no proof).
///
/// [`Machine::owned_until`]: mmp_core::machine::Machine::owned_until
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deadline(Option<mmp_core::time::Instant>);

impl Deadline {
    /// No deadline: `--force`, or a test.
    pub const NONE: Deadline = Deadline(None);

    /// Writes must be issued before `at` (on [`crate::clock::now`]'s monotonic clock).
    #[must_use]
    pub const fn at(at: mmp_core::time::Instant) -> Deadline {
        Deadline(Some(at))
    }

    /// The deadline of a held machine's lease; `None` (no deadline) when `until` is `None`.
    #[must_use]
    pub const fn from_lease(until: Option<mmp_core::time::Instant>) -> Deadline {
        Deadline(until)
    }

    /// Checked just before each write is issued.
    fn check(self, committed: bool) -> Result<(), TuneError> {
        let Some(at) = self.0 else { return Ok(()) };
        let now = crate::clock::now().mono;
        if now >= at {
            return Err(TuneError::LeaseExpired {
                late_ms: u64::try_from(now.saturating_since(at).as_millis()).unwrap_or(u64::MAX),
                committed,
            });
        }
        Ok(())
    }
}

impl From<FsError> for TuneError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::NotExt4 => TuneError::NotExt4 {
                found: "no ext2/3/4 superblock".into(),
            },
            FsError::Unsupported(feature) => TuneError::Unsupported { feature },
            other => TuneError::Corrupt {
                what: other.to_string(),
            },
        }
    }
}

/// Incompatible features this code handles (besides `RECOVER`, checked separately).
const KNOWN_INCOMPAT: u32 = 0x0002 // filetype
    | INCOMPAT_RECOVER
    | 0x0040 // extents
    | 0x0080 // 64bit
    | INCOMPAT_MMP
    | 0x0200 // flex_bg
    | 0x0400 // ea_inode
    | 0x1000 // dirdata (Lustre)
    | 0x2000 // metadata_csum_seed
    | 0x4000 // largedir
    | 0x8000 // inline_data
    | 0x1_0000 // encrypt
    | 0x2_0000; // casefold

/// Read-only-compatible features this code handles.
const KNOWN_RO_COMPAT: u32 = 0x0001 // sparse_super
    | 0x0002 // large_file
    | 0x0004 // btree_dir
    | 0x0008 // huge_file
    | 0x0010 // gdt_csum
    | 0x0020 // dir_nlink
    | 0x0040 // extra_isize
    | 0x0100 // quota
    | 0x0400 // metadata_csum
    | 0x0800 // replica
    | 0x1000 // read-only
    | 0x2000 // project
    | 0x4000 // shared_blocks
    | 0x8000 // verity
    | 0x1_0000; // orphan_present

/// Everything read during the checks.
struct Fs {
    layout: Layout,
    sb: Superblock,
    /// The primary superblock bytes.
    sb_bytes: Vec<u8>,
    /// The primary descriptor table (whole blocks).
    table: Vec<u8>,
}

impl Fs {
    fn info(&self) -> FsInfo {
        FsInfo {
            block_size: self.layout.block_size,
            blocks_count: self.layout.blocks_count,
            free_blocks_count: self.sb.free_blocks_count,
            group_count: self.layout.group_count,
            super_groups: self.layout.super_groups().collect(),
            mmp_enabled: self.sb.has_mmp(),
            mmp_block: self.sb.mmp_block,
            mmp_update_interval: self.sb.mmp_update_interval,
            metadata_csum: self.layout.metadata_csum(),
            gdt_csum: self.layout.gdt_csum(),
            is_64bit: self.layout.is_64bit(),
            uuid: self.layout.uuid,
        }
    }

    fn bs(&self) -> u64 {
        u64::from(self.layout.block_size)
    }

    fn gdt_offset(&self, g: u32) -> u64 {
        self.layout.gdt_first_block(g) * self.bs()
    }

    /// A block number that may hold a bitmap or the MMP block: inside the file system and
    /// past the superblock.
    fn check_block(&self, block: u64, what: &str) -> Result<(), TuneError> {
        if block <= u64::from(self.layout.first_data_block) || block >= self.layout.blocks_count {
            return Err(corrupt(format!(
                "{what} at block {block} is outside the file system"
            )));
        }
        Ok(())
    }

    /// Group `g`'s block bitmap block as it is or, for `BLOCK_UNINIT`, as the layout implies.
    fn load_bitmap(&self, dev: &Device, g: u32) -> Result<Vec<u8>, TuneError> {
        let d = Desc::of(&self.layout, &self.table, g)?;
        let mut buf = vec![0u8; self.layout.block_size as usize];
        if d.block_uninit() {
            ext4fs::uninit_block_bitmap(&self.layout, &self.table, g, &mut buf)?;
        } else {
            let at = d.block_bitmap();
            self.check_block(at, &format!("block bitmap of group {g}"))?;
            dev.read_at(at * self.bs(), &mut buf)?;
            ext4fs::verify_bitmap(&self.layout, &self.table, g, &buf)?;
        }
        Ok(buf)
    }

    fn write_tables(&self, dev: &Device) -> Result<(), TuneError> {
        for g in self.layout.super_groups() {
            write_span(dev, self.gdt_offset(g), &self.table)?;
        }
        Ok(())
    }

    fn write_primary_super(&self, dev: &Device) -> Result<(), TuneError> {
        let mut sb = self.sb_bytes.clone();
        ext4fs::superblock_copy(&self.sb_bytes, 0, &mut sb)?;
        write_span(dev, SUPERBLOCK_OFFSET, &sb)
    }

    fn write_backup_supers(&self, dev: &Device) -> Result<(), TuneError> {
        let mut sb = vec![0u8; SUPERBLOCK_LEN];
        for g in self.layout.super_groups().filter(|&g| g > 0) {
            ext4fs::superblock_copy(&self.sb_bytes, g, &mut sb)?;
            write_span(dev, self.layout.super_offset(g), &sb)?;
        }
        Ok(())
    }

    fn set_sb_free(&mut self, free: u64) -> Result<(), TuneError> {
        let is64 = self.layout.feature_incompat & mmp_core::format::ext4::INCOMPAT_64BIT != 0;
        if !is64 && free > u64::from(u32::MAX) {
            return Err(corrupt("free block count overflows".into()));
        }
        put(
            &mut self.sb_bytes,
            sb_field::FREE_BLOCKS_LO,
            &((free & 0xFFFF_FFFF) as u32).to_le_bytes(),
        );
        if is64 {
            put(
                &mut self.sb_bytes,
                sb_field::FREE_BLOCKS_HI,
                &((free >> 32) as u32).to_le_bytes(),
            );
        }
        self.sb.free_blocks_count = free;
        Ok(())
    }

    fn set_mmp_fields(&mut self, on: bool, block: u64, interval: u16) {
        let incompat = if on {
            self.sb.feature_incompat | INCOMPAT_MMP
        } else {
            self.sb.feature_incompat & !INCOMPAT_MMP
        };
        put(
            &mut self.sb_bytes,
            sb_field::FEATURE_INCOMPAT,
            &incompat.to_le_bytes(),
        );
        put(
            &mut self.sb_bytes,
            sb_field::MMP_BLOCK,
            &block.to_le_bytes(),
        );
        put(
            &mut self.sb_bytes,
            sb_field::MMP_UPDATE_INTERVAL,
            &interval.to_le_bytes(),
        );
        self.sb.feature_incompat = incompat;
        self.sb.mmp_block = block;
        self.sb.mmp_update_interval = interval;
    }
}

fn corrupt(what: String) -> TuneError {
    TuneError::Corrupt { what }
}

fn put(buf: &mut [u8], f: core::ops::Range<usize>, bytes: &[u8]) {
    // The superblock buffer is always SUPERBLOCK_LEN bytes and every field lies inside it,
    // so this never fails.
    let _ = write_bytes(buf, f, bytes);
}

/// Writes `data` at any byte offset: the covering sector-aligned span is read, patched and
/// written whole, so offsets need not be aligned.
fn write_span(dev: &Device, offset: u64, data: &[u8]) -> Result<(), TuneError> {
    let align = dev.alignment().max(1) as u64;
    let start = offset - offset % align;
    if start == offset {
        // Device::write_at preserves the tail of a partial last sector itself.
        dev.write_at(offset, data)?;
        return Ok(());
    }
    #[allow(
        clippy::cast_possible_truncation,
        reason = "below one block (64 KiB at most)"
    )]
    let head = (offset - start) as usize;
    let mut buf = vec![0u8; head + data.len()];
    dev.read_at(start, &mut buf[..head])?;
    buf[head..].copy_from_slice(data);
    dev.write_at(start, &buf)?;
    Ok(())
}

/// The mount checks: mountinfo (by device number, or a loop device backed by this file),
/// then for block devices an `O_EXCL` open.
fn check_not_mounted(dev: &Device) -> Result<(), TuneError> {
    if let Some(mountpoint) = dev.is_mounted().map_err(TuneError::MountCheck)? {
        return Err(TuneError::Mounted { mountpoint });
    }
    if dev.kind() == DeviceKind::BlockDevice {
        exclusive_probe(dev.path())?;
    }
    Ok(())
}

fn exclusive_probe(path: &Path) -> Result<(), TuneError> {
    let flags = OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(Errno::BUSY) => Err(TuneError::InUse {
            path: path.display().to_string(),
        }),
        Err(e) => Err(TuneError::MountCheck(e.into())),
    }
}

/// Reads and checks everything; no writes.
fn load(dev: &Device, want: Op) -> Result<Fs, TuneError> {
    check_not_mounted(dev)?;

    let size = dev.size_bytes();
    let head_len = size.min(256 * 1024) as usize;
    let mut head = vec![0u8; head_len];
    dev.read_at(0, &mut head)?;
    let not_ext4 = |head: &[u8], why: &str| -> TuneError {
        let found = match mmp_core::format::detect(head) {
            mmp_core::format::Detected::Native => "an mmp native area".to_string(),
            mmp_core::format::Detected::Other(name) => name.to_string(),
            mmp_core::format::Detected::Ext4 | mmp_core::format::Detected::Unknown => {
                why.to_string()
            }
        };
        TuneError::NotExt4 { found }
    };
    #[allow(clippy::cast_possible_truncation, reason = "1024")]
    const SB_AT: usize = SUPERBLOCK_OFFSET as usize;
    let Some(sb_bytes) = head.get(SB_AT..SB_AT + SUPERBLOCK_LEN) else {
        return Err(not_ext4(&head, "the device is smaller than 2 KiB"));
    };
    let sb_bytes = sb_bytes.to_vec();
    let sb = match Superblock::parse(&sb_bytes) {
        Ok(sb) => sb,
        Err(SuperblockError::BadMagic(m)) => {
            return Err(not_ext4(
                &head,
                &format!("no ext2/3/4 superblock (magic {m:#06x})"),
            ));
        }
        Err(SuperblockError::TooShort) => return Err(not_ext4(&head, "the device is too small")),
        Err(e) => return Err(corrupt(e.to_string())),
    };
    if sb.feature_incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err(TuneError::NotExt4 {
            found: "an ext4 external journal device".into(),
        });
    }
    if sb.feature_incompat & 0x0001 != 0 {
        return Err(TuneError::Unsupported {
            feature: "compression",
        });
    }
    if sb.feature_ro_compat & 0x0080 != 0 {
        return Err(TuneError::Unsupported {
            feature: "has_snapshot",
        });
    }
    let layout = Layout::parse(&sb_bytes)?;
    if sb.feature_incompat & !KNOWN_INCOMPAT != 0 {
        return Err(TuneError::Unsupported {
            feature: "an unknown incompatible feature",
        });
    }
    if sb.feature_ro_compat & !KNOWN_RO_COMPAT != 0 {
        return Err(TuneError::Unsupported {
            feature: "an unknown read-only-compatible feature",
        });
    }
    if sb.feature_incompat & INCOMPAT_RECOVER != 0 {
        return Err(TuneError::NeedsRecovery);
    }
    if sb.state & STATE_ERROR != 0 {
        return Err(TuneError::HasErrors);
    }
    match want {
        Op::Enable if sb.has_mmp() => {
            return Err(TuneError::AlreadyEnabled {
                block: sb.mmp_block,
            });
        }
        Op::Disable | Op::SetInterval if !sb.has_mmp() => return Err(TuneError::NotEnabled),
        _ => {}
    }
    let fs_bytes = layout
        .blocks_count
        .saturating_mul(u64::from(layout.block_size));
    if fs_bytes > size {
        return Err(corrupt(format!(
            "the file system ({fs_bytes} bytes) is larger than the device ({size} bytes)"
        )));
    }
    let mut table = vec![0u8; layout.desc_table_len()];
    let gdt_at = layout.gdt_first_block(0) * u64::from(layout.block_size);
    dev.read_at(gdt_at, &mut table)?;
    for g in 0..layout.group_count {
        ext4fs::verify_desc(&layout, &table, g)?;
    }
    let total: u64 = (0..layout.group_count)
        .map(|g| Desc::of(&layout, &table, g).map(|d| u64::from(d.free_blocks())))
        .sum::<Result<u64, FsError>>()?;
    if total > layout.blocks_count {
        return Err(corrupt(format!(
            "group free counts add up to {total}, more than the block count"
        )));
    }
    Ok(Fs {
        layout,
        sb,
        sb_bytes,
        table,
    })
}

/// Makes every refusal check for `want` without writing anything, and describes the file
/// system.
///
/// # Errors
/// The refusals of [`TuneError`] (everything but `BadInterval` and `NoFreeBlock`), or a read
/// error.
pub fn preflight(dev: &Device, want: Op) -> Result<FsInfo, TuneError> {
    Ok(load(dev, want)?.info())
}

fn check_interval(secs: u16) -> Result<(), TuneError> {
    if secs == 0 || secs > MAX_UPDATE_INTERVAL_S {
        return Err(TuneError::BadInterval(u32::from(secs)));
    }
    Ok(())
}

/// Enables MMP. See the [module documentation](self) for what is written and in which order.
///
/// # Errors
/// [`TuneError::BadInterval`], the refusals of [`preflight`] for [`Op::Enable`],
/// [`TuneError::NoFreeBlock`], [`TuneError::Corrupt`] — all before anything is written — or a
/// device error while writing (the file system is then in one of the states described above).
pub fn enable(dev: &Device, opts: &EnableOptions) -> Result<EnableReport, TuneError> {
    check_interval(opts.update_interval_s)?;
    let mut fs = load(dev, Op::Enable)?;
    let bs = fs.bs();

    // Find the first free block at or after s_first_data_block.
    let mut found = None;
    for g in 0..fs.layout.group_count {
        let bitmap = fs.load_bitmap(dev, g)?;
        if let Some(i) = first_clear_bit(&bitmap, u64::from(fs.layout.group_block_count(g))) {
            found = Some((g, i, bitmap));
            break;
        }
    }
    let Some((group, bit, mut bitmap)) = found else {
        return Err(TuneError::NoFreeBlock);
    };
    let block = fs.layout.group_first_block(group) + bit;
    if ext4fs::is_metadata_block(&fs.layout, &fs.table, block)? {
        return Err(corrupt(format!(
            "the block bitmap marks metadata block {block} free"
        )));
    }
    let was_uninit;
    let bitmap_at;
    {
        let d = Desc::of(&fs.layout, &fs.table, group)?;
        was_uninit = d.block_uninit();
        bitmap_at = d.block_bitmap();
        fs.check_block(bitmap_at, &format!("block bitmap of group {group}"))?;
        if d.free_blocks() == 0 {
            return Err(corrupt(format!(
                "group {group} has a free block but a free count of 0"
            )));
        }
        if fs.sb.free_blocks_count == 0 {
            return Err(corrupt("the superblock free block count is 0".into()));
        }
    }

    // Prepare every change in memory before the first write.
    put_bit(&mut bitmap, bit, true);
    {
        let mut d = DescMut::of(&fs.layout, &mut fs.table, group)?;
        let free = d.view().free_blocks().saturating_sub(1);
        let flags = d.view().flags() & !BG_BLOCK_UNINIT;
        d.set_free_blocks(free)?;
        d.set_flags(flags);
        d.set_bitmap_checksum(&bitmap)?;
        d.update_checksum()?;
    }
    let free = fs.sb.free_blocks_count.saturating_sub(1);
    fs.set_sb_free(free)?;
    fs.set_mmp_fields(true, block, opts.update_interval_s);
    let check_interval_s = opts.update_interval_s.max(MIN_CHECK_INTERVAL_S);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "a validated ext4 block size, at most 64 KiB"
    )]
    let mut mmp = vec![0u8; bs as usize];
    Block::new(
        SEQ_CLEAN,
        opts.now_unix_s,
        &opts.nodename,
        &opts.devname,
        check_interval_s,
    )
    .emit(&mut mmp, fs.sb.mmp_csum_seed());

    // 1. The MMP block (zeros after the 1024-byte structure).
    write_span(dev, block * bs, &mmp)?;
    // 2. The bitmap.
    write_span(dev, bitmap_at * bs, &bitmap)?;
    // 3. Descriptor tables, primary first.
    fs.write_tables(dev)?;
    // 4. Commit: the primary superblock.
    fs.write_primary_super(dev)?;
    // 5. Backup superblocks.
    fs.write_backup_supers(dev)?;
    dev.sync()?;
    Ok(EnableReport {
        block,
        group,
        update_interval_s: opts.update_interval_s,
        check_interval_s,
        was_block_uninit: was_uninit,
    })
}

/// Disables MMP: clears the feature, `s_mmp_block` and `s_mmp_update_interval`, and frees the
/// block if it still holds an MMP block (valid magic and checksum) and is marked in use; its
/// content is left as it was. The caller must first prove with the MMP protocol that no node
/// uses the file system (unless forced): this function only makes the on-disk change.
///
/// # Errors
/// The refusals of [`preflight`] for [`Op::Disable`] before anything is written, or a device
/// error while writing.
pub fn disable(dev: &Device, until: Deadline) -> Result<DisableReport, TuneError> {
    let mut fs = load(dev, Op::Disable)?;
    let bs = fs.bs();
    let old_block = fs.sb.mmp_block;

    // Decide whether to free the block, like tune2fs: only when it can be read as an MMP
    // block (otherwise it may not be ours to free).
    let mut free_plan: Option<(u32, u64, Vec<u8>)> = None;
    let mut not_freed_reason = None;
    match fs.sb.mmp_offset_bytes() {
        Err(e) => not_freed_reason = Some(e.to_string()),
        Ok(off) => {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "a validated ext4 block size, at most 64 KiB"
            )]
            let mut buf = vec![0u8; bs as usize];
            dev.read_at(off, &mut buf)?;
            match Block::parse(&buf, fs.sb.mmp_csum_seed()) {
                Err(e) => {
                    not_freed_reason =
                        Some(format!("block {old_block} does not hold an MMP block: {e}"))
                }
                Ok(_) => {
                    let group = fs
                        .layout
                        .group_of(old_block)
                        .ok_or_else(|| corrupt(format!("MMP block {old_block} is in no group")))?;
                    let bit = old_block - fs.layout.group_first_block(group);
                    let d = Desc::of(&fs.layout, &fs.table, group)?;
                    if d.block_uninit() {
                        not_freed_reason = Some(format!(
                            "group {group} of block {old_block} is uninitialised"
                        ));
                    } else {
                        let bitmap = fs.load_bitmap(dev, group)?;
                        if test_bit(&bitmap, bit) == Some(true) {
                            free_plan = Some((group, bit, bitmap));
                        } else {
                            not_freed_reason =
                                Some(format!("block {old_block} is already marked free"));
                        }
                    }
                }
            }
        }
    }

    let mut bitmap_write = None;
    if let Some((group, bit, mut bitmap)) = free_plan {
        put_bit(&mut bitmap, bit, false);
        let bitmap_at = Desc::of(&fs.layout, &fs.table, group)?.block_bitmap();
        {
            let mut d = DescMut::of(&fs.layout, &mut fs.table, group)?;
            let free = d.view().free_blocks().saturating_add(1);
            if free > fs.layout.group_block_count(group) {
                return Err(corrupt(format!(
                    "group {group} free count exceeds its size"
                )));
            }
            d.set_free_blocks(free)?;
            d.set_bitmap_checksum(&bitmap)?;
            d.update_checksum()?;
        }
        let free = fs.sb.free_blocks_count.saturating_add(1);
        fs.set_sb_free(free)?;
        bitmap_write = Some((bitmap_at, bitmap));
    }
    fs.set_mmp_fields(false, 0, 0);

    // 1. Commit: the primary superblock says no MMP.
    until.check(false)?;
    fs.write_primary_super(dev)?;
    if let Some((at, bitmap)) = &bitmap_write {
        // 2. The bitmap, 3. the descriptor tables.
        until.check(true)?;
        write_span(dev, at * bs, bitmap)?;
        until.check(true)?;
        fs.write_tables(dev)?;
    }
    // 4. Backup superblocks.
    until.check(true)?;
    fs.write_backup_supers(dev)?;
    dev.sync()?;
    Ok(DisableReport {
        old_block,
        freed: bitmap_write.is_some(),
        not_freed_reason,
    })
}

/// Sets `s_mmp_update_interval` (1..=300 seconds) in every superblock copy. The MMP block is
/// not touched. The caller proves no node uses the file system first.
///
/// # Errors
/// [`TuneError::BadInterval`], the refusals of [`preflight`] for [`Op::SetInterval`], or a
/// device error while writing.
pub fn set_interval(dev: &Device, secs: u16, until: Deadline) -> Result<(), TuneError> {
    check_interval(secs)?;
    let mut fs = load(dev, Op::SetInterval)?;
    put(
        &mut fs.sb_bytes,
        sb_field::MMP_UPDATE_INTERVAL,
        &secs.to_le_bytes(),
    );
    until.check(false)?;
    fs.write_primary_super(dev)?;
    until.check(true)?;
    fs.write_backup_supers(dev)?;
    dev.sync()?;
    Ok(())
}
