//! ext4/ldiskfs: the superblock fields MMP needs and the 1024-byte MMP block.
//!
//! Byte-compatible with the Linux kernel (`fs/ext4/mmp.c`) and e2fsprogs
//! (`lib/ext2fs/mmp.c`); every offset and rule comes from `spec/ext4-mmp.md`. All integers
//! are little-endian on disk.
//!
//! # Fuzzing
//! Under `cfg(fuzzing)` checksum checks still run; fuzz targets build valid checksums
//! themselves where they want to get past them.
#![forbid(unsafe_code)]

use super::{le16, le32, le64};
use crate::crc32c::crc32c_raw;
use core::fmt;

/// `EXT4_MMP_MAGIC`: bytes `50 4D 4D 00` on disk.
pub const MMP_MAGIC: u32 = 0x004D_4D50;
/// `EXT4_MMP_SEQ_CLEAN`: cleanly unmounted or released.
pub const SEQ_CLEAN: u32 = 0xFF4D_4D50;
/// `EXT4_MMP_SEQ_FSCK`: an e2fsprogs tool holds the file system.
pub const SEQ_FSCK: u32 = 0xE24D_4D50;
/// `EXT4_MMP_SEQ_MAX`: the largest live sequence number.
pub const SEQ_MAX: u32 = 0xE24D_4D4F;
/// `EXT4_MMP_MIN_CHECK_INTERVAL` (seconds).
pub const MIN_CHECK_INTERVAL_S: u16 = 5;
/// `EXT4_MMP_MAX_CHECK_INTERVAL` (seconds).
pub const MAX_CHECK_INTERVAL_S: u16 = 300;
/// e2fsprogs' default `s_mmp_update_interval` (seconds).
pub const DEFAULT_UPDATE_INTERVAL_S: u16 = 5;
/// e2fsprogs' largest accepted `s_mmp_update_interval` (seconds).
pub const MAX_UPDATE_INTERVAL_S: u16 = 300;

/// Length of the MMP structure: the first 1024 bytes of the MMP block.
pub const STRUCT_LEN: usize = 1024;
/// Byte offset of the primary superblock on the device.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Length of the superblock.
pub const SUPERBLOCK_LEN: usize = 1024;
/// `s_magic`.
pub const SUPER_MAGIC: u16 = 0xEF53;

/// `INCOMPAT_MMP`.
pub const INCOMPAT_MMP: u32 = 0x0100;
/// `INCOMPAT_64BIT`.
pub const INCOMPAT_64BIT: u32 = 0x0080;
/// `INCOMPAT_EA_INODE`.
pub const INCOMPAT_EA_INODE: u32 = 0x0400;
/// `INCOMPAT_CSUM_SEED`.
pub const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// `INCOMPAT_FLEX_BG`.
pub const INCOMPAT_FLEX_BG: u32 = 0x0200;
/// `INCOMPAT_RECOVER`: the journal needs recovery.
pub const INCOMPAT_RECOVER: u32 = 0x0004;
/// `INCOMPAT_JOURNAL_DEV`: an external journal device, not a file system.
pub const INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
/// `INCOMPAT_META_BG`.
pub const INCOMPAT_META_BG: u32 = 0x0010;
/// `RO_COMPAT_GDT_CSUM`.
pub const RO_COMPAT_GDT_CSUM: u32 = 0x0010;
/// `RO_COMPAT_METADATA_CSUM`.
pub const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;
/// `RO_COMPAT_BIGALLOC`.
pub const RO_COMPAT_BIGALLOC: u32 = 0x0200;
/// `RO_COMPAT_SPARSE_SUPER`.
pub const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
/// `COMPAT_HAS_JOURNAL`.
pub const COMPAT_HAS_JOURNAL: u32 = 0x0004;
/// `COMPAT_SPARSE_SUPER2`.
pub const COMPAT_SPARSE_SUPER2: u32 = 0x0200;

/// Byte ranges of the MMP block fields (spec §1).
pub mod field {
    /// A byte range inside the structure.
    pub type Field = core::ops::Range<usize>;
    /// `mmp_magic` (le32).
    pub const MAGIC: Field = 0x000..0x004;
    /// `mmp_seq` (le32).
    pub const SEQ: Field = 0x004..0x008;
    /// `mmp_time` (le64, seconds).
    pub const TIME: Field = 0x008..0x010;
    /// `mmp_nodename` (64 bytes, not necessarily NUL-terminated).
    pub const NODENAME: Field = 0x010..0x050;
    /// `mmp_bdevname` (32 bytes, not necessarily NUL-terminated).
    pub const BDEVNAME: Field = 0x050..0x070;
    /// `mmp_check_interval` (le16, seconds).
    pub const CHECK_INTERVAL: Field = 0x070..0x072;
    /// `mmp_pad1` (le16).
    pub const PAD1: Field = 0x072..0x074;
    /// `mmp_pad2` (226 le32).
    pub const PAD2: Field = 0x074..0x3FC;
    /// `mmp_checksum` (le32, crc32c with metadata_csum).
    pub const CHECKSUM: Field = 0x3FC..0x400;
}

/// Byte ranges of the superblock fields MMP uses (spec §2), relative to the superblock.
pub mod sb_field {
    /// A byte range inside the superblock.
    pub type Field = core::ops::Range<usize>;
    /// `s_inodes_count`.
    pub const INODES_COUNT: Field = 0x000..0x004;
    /// `s_blocks_count_lo`.
    pub const BLOCKS_COUNT_LO: Field = 0x004..0x008;
    /// `s_free_blocks_count_lo`.
    pub const FREE_BLOCKS_LO: Field = 0x00C..0x010;
    /// `s_first_data_block`.
    pub const FIRST_DATA_BLOCK: Field = 0x014..0x018;
    /// `s_log_block_size`.
    pub const LOG_BLOCK_SIZE: Field = 0x018..0x01C;
    /// `s_log_cluster_size`.
    pub const LOG_CLUSTER_SIZE: Field = 0x01C..0x020;
    /// `s_blocks_per_group`.
    pub const BLOCKS_PER_GROUP: Field = 0x020..0x024;
    /// `s_inodes_per_group`.
    pub const INODES_PER_GROUP: Field = 0x028..0x02C;
    /// `s_magic`.
    pub const MAGIC: Field = 0x038..0x03A;
    /// `s_state`.
    pub const STATE: Field = 0x03A..0x03C;
    /// `s_errors`.
    pub const ERRORS: Field = 0x03C..0x03E;
    /// `s_rev_level`.
    pub const REV_LEVEL: Field = 0x04C..0x050;
    /// `s_feature_compat`.
    pub const FEATURE_COMPAT: Field = 0x05C..0x060;
    /// `s_feature_incompat`.
    pub const FEATURE_INCOMPAT: Field = 0x060..0x064;
    /// `s_feature_ro_compat`.
    pub const FEATURE_RO_COMPAT: Field = 0x064..0x068;
    /// `s_uuid`.
    pub const UUID: Field = 0x068..0x078;
    /// `s_volume_name`.
    pub const VOLUME_NAME: Field = 0x078..0x088;
    /// `s_desc_size`.
    pub const DESC_SIZE: Field = 0x0FE..0x100;
    /// `s_blocks_count_hi` (64BIT).
    pub const BLOCKS_COUNT_HI: Field = 0x150..0x154;
    /// `s_free_blocks_hi` (64BIT).
    pub const FREE_BLOCKS_HI: Field = 0x158..0x15C;
    /// `s_mmp_update_interval`.
    pub const MMP_UPDATE_INTERVAL: Field = 0x166..0x168;
    /// `s_mmp_block`.
    pub const MMP_BLOCK: Field = 0x168..0x170;
    /// `s_checksum_type`.
    pub const CHECKSUM_TYPE: Field = 0x175..0x176;
    /// `s_checksum_seed`.
    pub const CHECKSUM_SEED: Field = 0x270..0x274;
    /// `s_checksum`.
    pub const CHECKSUM: Field = 0x3FC..0x400;
}

/// The checksum of a 1024-byte superblock: `crc32c_raw(!0, sb[0..0x3FC])`.
///
/// # Panics
/// Never on a slice of at least [`SUPERBLOCK_LEN`] bytes; shorter slices panic (internal use).
#[must_use]
pub fn superblock_checksum(sb: &[u8]) -> u32 {
    crc32c_raw(!0, &sb[..sb_field::CHECKSUM.start])
}

/// Why a superblock was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockError {
    /// Fewer than 1024 bytes.
    TooShort,
    /// `s_magic` is not 0xEF53 (value found).
    BadMagic(u16),
    /// metadata_csum is set and the superblock checksum does not match.
    BadChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
    /// `s_log_block_size` gives a block size outside 1 KiB..64 KiB.
    BadBlockSize(u32),
    /// metadata_csum with a checksum type other than crc32c (1).
    BadChecksumType(u8),
    /// The MMP feature is not set, or `s_mmp_block` is 0.
    MmpNotEnabled,
    /// `s_mmp_block` is outside the file system (e2fsprogs' rule: must be
    /// `> s_first_data_block` and `< s_blocks_count`).
    MmpBlockOutOfRange {
        /// The block number found.
        block: u64,
        /// Blocks in the file system.
        blocks_count: u64,
    },
}

impl fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SuperblockError::TooShort => write!(f, "too short for an ext4 superblock"),
            SuperblockError::BadMagic(m) => {
                write!(
                    f,
                    "not an ext2/3/4 file system (superblock magic {m:#06x}, expected 0xef53)"
                )
            }
            SuperblockError::BadChecksum { stored, computed } => write!(
                f,
                "ext4 superblock checksum does not match (stored {stored:#010x}, computed {computed:#010x})"
            ),
            SuperblockError::BadBlockSize(l) => {
                write!(f, "invalid ext4 block size (s_log_block_size {l})")
            }
            SuperblockError::BadChecksumType(t) => write!(f, "unsupported ext4 checksum type {t}"),
            SuperblockError::MmpNotEnabled => {
                write!(f, "MMP feature not enabled on this ext4 file system")
            }
            SuperblockError::MmpBlockOutOfRange {
                block,
                blocks_count,
            } => write!(
                f,
                "MMP block number {block} is beyond the file system range (blocks count {blocks_count})"
            ),
        }
    }
}

impl core::error::Error for SuperblockError {}

/// The superblock fields MMP needs, parsed and validated (magic, block size, checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// `s_blocks_count` (hi half only with 64BIT).
    pub blocks_count: u64,
    /// `s_free_blocks_count` (hi half only with 64BIT).
    pub free_blocks_count: u64,
    /// `s_first_data_block`.
    pub first_data_block: u32,
    /// `s_log_block_size`.
    pub log_block_size: u32,
    /// `s_blocks_per_group`.
    pub blocks_per_group: u32,
    /// `s_state`.
    pub state: u16,
    /// `s_errors`.
    pub errors: u16,
    /// `s_feature_compat`.
    pub feature_compat: u32,
    /// `s_feature_incompat`.
    pub feature_incompat: u32,
    /// `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// `s_mmp_update_interval` (seconds, as stored).
    pub mmp_update_interval: u16,
    /// `s_mmp_block`.
    pub mmp_block: u64,
    /// `s_checksum_type`.
    pub checksum_type: u8,
    /// `s_checksum_seed`.
    pub checksum_seed: u32,
    /// `s_checksum`.
    pub checksum: u32,
}

impl Superblock {
    /// Parses the 1024 bytes of a superblock. Checks the magic, the block size and, with
    /// metadata_csum, the checksum type and the superblock checksum. Never panics.
    ///
    /// # Errors
    /// [`SuperblockError`] naming the first problem found, in the order listed there.
    pub fn parse(sb: &[u8]) -> Result<Self, SuperblockError> {
        if sb.len() < SUPERBLOCK_LEN {
            return Err(SuperblockError::TooShort);
        }
        let magic = le16(sb, sb_field::MAGIC);
        if magic != SUPER_MAGIC {
            return Err(SuperblockError::BadMagic(magic));
        }
        let incompat = le32(sb, sb_field::FEATURE_INCOMPAT);
        let ro_compat = le32(sb, sb_field::FEATURE_RO_COMPAT);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let hi = |f| {
            if is64 {
                u64::from(le32(sb, f)) << 32
            } else {
                0
            }
        };
        let log_block_size = le32(sb, sb_field::LOG_BLOCK_SIZE);
        if log_block_size > 6 {
            return Err(SuperblockError::BadBlockSize(log_block_size));
        }
        let checksum_type = sb[sb_field::CHECKSUM_TYPE.start];
        let checksum = le32(sb, sb_field::CHECKSUM);
        if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            if checksum_type != 1 {
                return Err(SuperblockError::BadChecksumType(checksum_type));
            }
            let computed = superblock_checksum(sb);
            if computed != checksum {
                return Err(SuperblockError::BadChecksum {
                    stored: checksum,
                    computed,
                });
            }
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&sb[sb_field::UUID]);
        Ok(Superblock {
            blocks_count: u64::from(le32(sb, sb_field::BLOCKS_COUNT_LO))
                | hi(sb_field::BLOCKS_COUNT_HI),
            free_blocks_count: u64::from(le32(sb, sb_field::FREE_BLOCKS_LO))
                | hi(sb_field::FREE_BLOCKS_HI),
            first_data_block: le32(sb, sb_field::FIRST_DATA_BLOCK),
            log_block_size,
            blocks_per_group: le32(sb, sb_field::BLOCKS_PER_GROUP),
            state: le16(sb, sb_field::STATE),
            errors: le16(sb, sb_field::ERRORS),
            feature_compat: le32(sb, sb_field::FEATURE_COMPAT),
            feature_incompat: incompat,
            feature_ro_compat: ro_compat,
            uuid,
            mmp_update_interval: le16(sb, sb_field::MMP_UPDATE_INTERVAL),
            mmp_block: le64(sb, sb_field::MMP_BLOCK),
            checksum_type,
            checksum_seed: le32(sb, sb_field::CHECKSUM_SEED),
            checksum,
        })
    }

    /// Block size in bytes (1024 << `s_log_block_size`).
    #[must_use]
    pub fn block_size(&self) -> u32 {
        1024u32 << self.log_block_size.min(6)
    }

    /// Whether `INCOMPAT_MMP` is set.
    #[must_use]
    pub fn has_mmp(&self) -> bool {
        self.feature_incompat & INCOMPAT_MMP != 0
    }

    /// Whether `RO_COMPAT_METADATA_CSUM` is set.
    #[must_use]
    pub fn metadata_csum(&self) -> bool {
        self.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }

    /// The metadata checksum seed (`s_csum_seed`): `s_checksum_seed` with CSUM_SEED, else
    /// `crc32c_raw(!0, uuid)` when metadata_csum or ea_inode is set, else `None`.
    #[must_use]
    pub fn csum_seed(&self) -> Option<u32> {
        if self.feature_incompat & INCOMPAT_CSUM_SEED != 0 {
            Some(self.checksum_seed)
        } else if self.metadata_csum() || self.feature_incompat & INCOMPAT_EA_INODE != 0 {
            Some(crc32c_raw(!0, &self.uuid))
        } else {
            None
        }
    }

    /// The seed the MMP block checksum uses: the csum seed, only with metadata_csum.
    #[must_use]
    pub fn mmp_csum_seed(&self) -> Option<u32> {
        if self.metadata_csum() {
            self.csum_seed()
        } else {
            None
        }
    }

    /// Byte offset of the MMP block, after checking the feature and e2fsprogs' range rule
    /// (`s_first_data_block < s_mmp_block < s_blocks_count`).
    ///
    /// # Errors
    /// [`SuperblockError::MmpNotEnabled`] or [`SuperblockError::MmpBlockOutOfRange`].
    pub fn mmp_offset_bytes(&self) -> Result<u64, SuperblockError> {
        if !self.has_mmp() || self.mmp_block == 0 {
            return Err(SuperblockError::MmpNotEnabled);
        }
        if self.mmp_block <= u64::from(self.first_data_block) || self.mmp_block >= self.blocks_count
        {
            return Err(SuperblockError::MmpBlockOutOfRange {
                block: self.mmp_block,
                blocks_count: self.blocks_count,
            });
        }
        Ok(self.mmp_block.saturating_mul(u64::from(self.block_size())))
    }

    /// The heartbeat interval the kernel would use, in seconds: `s_mmp_update_interval`,
    /// with 0 read as e2fsprogs' default 5 (the kernel would busy-loop; we never do).
    #[must_use]
    pub fn update_interval_s(&self) -> u16 {
        if self.mmp_update_interval == 0 {
            DEFAULT_UPDATE_INTERVAL_S
        } else {
            self.mmp_update_interval
        }
    }
}

/// The class of an `mmp_seq` value (spec §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeqClass {
    /// `SEQ_CLEAN`: released; safe to take after the claim-and-verify wait.
    Clean,
    /// `SEQ_FSCK`: an e2fsprogs tool holds it; never taken without `clear`.
    Fsck,
    /// `0..=SEQ_MAX`: a writer is (or was) active.
    Live(u32),
    /// Anything else: refused (e2fsprogs' `MMP_UNKNOWN_SEQ`; the ext4.h rule).
    Unknown(u32),
}

impl SeqClass {
    /// Classifies a sequence value.
    #[must_use]
    pub fn of(seq: u32) -> Self {
        match seq {
            SEQ_CLEAN => SeqClass::Clean,
            SEQ_FSCK => SeqClass::Fsck,
            s if s <= SEQ_MAX => SeqClass::Live(s),
            s => SeqClass::Unknown(s),
        }
    }
}

/// Why an MMP block was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Fewer than 1024 bytes.
    TooShort,
    /// `mmp_magic` is not `0x004D4D50` (value found). Wins over a bad checksum, as in
    /// e2fsprogs.
    BadMagic(u32),
    /// metadata_csum is on and the checksum does not match.
    BadChecksum {
        /// Stored value.
        stored: u32,
        /// Computed value.
        computed: u32,
    },
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BlockError::TooShort => write!(f, "MMP block too short"),
            BlockError::BadMagic(m) => write!(
                f,
                "MMP: invalid magic number {m:#010x} (expected 0x004d4d50)"
            ),
            BlockError::BadChecksum { stored, computed } => write!(
                f,
                "MMP block checksum does not match (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

impl core::error::Error for BlockError {}

/// The MMP block (`struct mmp_struct`), as plain values.
///
/// Round trip: `Block::parse(&buf, seed)` after `block.emit(&mut buf, seed)` gives `block`
/// back (with `checksum` set by `emit` when a seed is given).
///
/// ```
/// use mmp_core::format::ext4::{Block, SEQ_CLEAN};
/// let mut b = Block::new(SEQ_CLEAN, 1_795_257_665, b"vm", b"a4k_csum.img", 5);
/// let mut buf = [0xa5u8; 1024];
/// b.emit(&mut buf, Some(0x643D_BF5B));
/// assert_eq!(b.checksum, 0x3148_9D08); // the worked vector of spec/ext4-mmp.md §1.2
/// assert_eq!(Block::parse(&buf, Some(0x643D_BF5B)), Ok(b));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// `mmp_magic`.
    pub magic: u32,
    /// `mmp_seq`.
    pub seq: u32,
    /// `mmp_time`: Unix seconds of the last write (informational).
    pub time: u64,
    /// `mmp_nodename`, all 64 bytes as on disk.
    pub nodename: [u8; 64],
    /// `mmp_bdevname`, all 32 bytes as on disk.
    pub bdevname: [u8; 32],
    /// `mmp_check_interval` (seconds).
    pub check_interval: u16,
    /// `mmp_pad1`, kept as found.
    pub pad1: u16,
    /// `mmp_checksum`, as stored (parse) or as computed (emit with a seed).
    pub checksum: u32,
}

impl Block {
    /// A block with magic, the given fields, names truncated to their fields and NUL padded.
    #[must_use]
    pub fn new(seq: u32, time: u64, nodename: &[u8], bdevname: &[u8], check_interval: u16) -> Self {
        let mut b = Block {
            magic: MMP_MAGIC,
            seq,
            time,
            nodename: [0; 64],
            bdevname: [0; 32],
            check_interval,
            pad1: 0,
            checksum: 0,
        };
        super::put_name(&mut b.nodename, nodename);
        super::put_name(&mut b.bdevname, bdevname);
        b
    }

    /// Parses the first 1024 bytes of `buf`. With `csum_seed` (metadata_csum on) the checksum
    /// is verified; a bad magic wins over a bad checksum, as in e2fsprogs. Padding is not
    /// checked (neither the kernel nor e2fsprogs does). Never panics.
    ///
    /// # Errors
    /// [`BlockError`].
    pub fn parse(buf: &[u8], csum_seed: Option<u32>) -> Result<Self, BlockError> {
        let Some(b) = buf.get(..STRUCT_LEN) else {
            return Err(BlockError::TooShort);
        };
        let magic = le32(b, field::MAGIC);
        if magic != MMP_MAGIC {
            return Err(BlockError::BadMagic(magic));
        }
        let checksum = le32(b, field::CHECKSUM);
        if let Some(seed) = csum_seed {
            let computed = crc32c_raw(seed, &b[..field::CHECKSUM.start]);
            if computed != checksum {
                return Err(BlockError::BadChecksum {
                    stored: checksum,
                    computed,
                });
            }
        }
        let mut nodename = [0u8; 64];
        nodename.copy_from_slice(&b[field::NODENAME]);
        let mut bdevname = [0u8; 32];
        bdevname.copy_from_slice(&b[field::BDEVNAME]);
        Ok(Block {
            magic,
            seq: le32(b, field::SEQ),
            time: le64(b, field::TIME),
            nodename,
            bdevname,
            check_interval: le16(b, field::CHECK_INTERVAL),
            pad1: le16(b, field::PAD1),
            checksum,
        })
    }

    /// Writes the 1024-byte structure into `buf[..1024]` (bytes after 1024 are untouched).
    /// With `csum_seed` the checksum is computed and stored (also in `self.checksum`);
    /// without, `self.checksum` is written as is (normally 0).
    ///
    /// # Panics
    /// If `buf` is shorter than [`STRUCT_LEN`].
    pub fn emit(&mut self, buf: &mut [u8], csum_seed: Option<u32>) {
        let b = &mut buf[..STRUCT_LEN];
        b.fill(0);
        b[field::MAGIC].copy_from_slice(&self.magic.to_le_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.to_le_bytes());
        b[field::TIME].copy_from_slice(&self.time.to_le_bytes());
        b[field::NODENAME].copy_from_slice(&self.nodename);
        b[field::BDEVNAME].copy_from_slice(&self.bdevname);
        b[field::CHECK_INTERVAL].copy_from_slice(&self.check_interval.to_le_bytes());
        b[field::PAD1].copy_from_slice(&self.pad1.to_le_bytes());
        if let Some(seed) = csum_seed {
            self.checksum = crc32c_raw(seed, &b[..field::CHECKSUM.start]);
        }
        b[field::CHECKSUM].copy_from_slice(&self.checksum.to_le_bytes());
    }

    /// The class of `seq`.
    #[must_use]
    pub fn seq_class(&self) -> SeqClass {
        SeqClass::of(self.seq)
    }

    /// The node name up to the first NUL.
    #[must_use]
    pub fn nodename(&self) -> &[u8] {
        super::trim_name(&self.nodename)
    }

    /// The device name up to the first NUL.
    #[must_use]
    pub fn bdevname(&self) -> &[u8] {
        super::trim_name(&self.bdevname)
    }
}

/// The e2fsprogs/kernel wait: `min(2*ci + 1, ci + 60)` seconds.
#[must_use]
pub fn wait_time_s(check_interval_s: u32) -> u32 {
    (2 * check_interval_s + 1).min(check_interval_s + 60)
}

/// The kernel's next advertised check interval after a heartbeat cycle of `elapsed_s` whole
/// seconds: `clamp(2 * elapsed, 5, 300)`.
#[must_use]
pub fn next_check_interval_s(elapsed_s: u64) -> u16 {
    let v = elapsed_s.saturating_mul(2).clamp(
        u64::from(MIN_CHECK_INTERVAL_S),
        u64::from(MAX_CHECK_INTERVAL_S),
    );
    u16::try_from(v).unwrap_or(MAX_CHECK_INTERVAL_S)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u32 = 0x643D_BF5B;

    fn vector_block() -> Block {
        Block::new(SEQ_CLEAN, 1_795_257_665, b"vm", b"a4k_csum.img", 5)
    }

    #[test]
    fn worked_checksum_vector() {
        let mut b = vector_block();
        let mut buf = [0xa5u8; 1024];
        b.emit(&mut buf, Some(SEED));
        assert_eq!(b.checksum, 0x3148_9D08);
        assert_eq!(&buf[0x3FC..], &[0x08, 0x9D, 0x48, 0x31]);
        assert_eq!(&buf[..8], &[0x50, 0x4D, 0x4D, 0x00, 0x50, 0x4D, 0x4D, 0xFF]);
        let mut live = vector_block();
        live.seq = 1;
        live.emit(&mut buf, Some(SEED));
        assert_eq!(live.checksum, 0x5246_DCCB);
    }

    #[test]
    fn emit_writes_every_byte() {
        let mut a = [0xa5u8; 1024];
        let mut z = [0x00u8; 1024];
        vector_block().emit(&mut a, Some(SEED));
        vector_block().emit(&mut z, Some(SEED));
        assert_eq!(a, z);
    }

    #[test]
    fn every_bit_flip_gives_the_exact_error() {
        let mut good = [0u8; 1024];
        vector_block().emit(&mut good, Some(SEED));
        for byte in 0..STRUCT_LEN {
            for bit in 0..8 {
                let mut buf = good;
                buf[byte] ^= 1 << bit;
                let got = Block::parse(&buf, Some(SEED));
                if field::MAGIC.contains(&byte) {
                    assert!(
                        matches!(got, Err(BlockError::BadMagic(_))),
                        "byte {byte} bit {bit}"
                    );
                } else {
                    let computed = crc32c_raw(SEED, &buf[..0x3FC]);
                    let stored =
                        u32::from_le_bytes([buf[0x3FC], buf[0x3FD], buf[0x3FE], buf[0x3FF]]);
                    assert_eq!(
                        got,
                        Err(BlockError::BadChecksum { stored, computed }),
                        "byte {byte} bit {bit}"
                    );
                }
                // Without metadata_csum only the magic is checked; other flips parse to a
                // block that differs from the original in exactly the flipped field.
                let got = Block::parse(&buf, None);
                if field::MAGIC.contains(&byte) {
                    assert!(matches!(got, Err(BlockError::BadMagic(_))));
                } else {
                    let mut re = [0u8; 1024];
                    let mut parsed = got.expect("parses without csum");
                    parsed.emit(&mut re, None);
                    let pad = field::PAD2.contains(&byte);
                    if pad {
                        // Padding is not represented: re-emitting zeroes it.
                        assert_eq!(re, good);
                    } else {
                        assert_eq!(re, buf, "byte {byte} bit {bit}");
                    }
                }
            }
        }
    }

    #[test]
    fn short_and_magic_errors() {
        assert_eq!(Block::parse(&[0u8; 1023], None), Err(BlockError::TooShort));
        let mut buf = [0u8; 1024];
        vector_block().emit(&mut buf, Some(SEED));
        buf[0] = 0xFF;
        buf[0x3FC] ^= 1; // bad magic wins over bad checksum
        assert_eq!(
            Block::parse(&buf, Some(SEED)),
            Err(BlockError::BadMagic(0x004D_4DFF))
        );
    }

    #[test]
    fn seq_classes() {
        assert_eq!(SeqClass::of(SEQ_CLEAN), SeqClass::Clean);
        assert_eq!(SeqClass::of(SEQ_FSCK), SeqClass::Fsck);
        assert_eq!(SeqClass::of(0), SeqClass::Live(0));
        assert_eq!(SeqClass::of(SEQ_MAX), SeqClass::Live(SEQ_MAX));
        assert_eq!(SeqClass::of(0xF000_0000), SeqClass::Unknown(0xF000_0000));
        assert_eq!(SeqClass::of(SEQ_FSCK + 1), SeqClass::Unknown(SEQ_FSCK + 1));
    }

    #[test]
    fn names_without_nul() {
        let b = Block::new(1, 0, &[b'x'; 80], &[b'y'; 40], 5);
        assert_eq!(b.nodename().len(), 64);
        assert_eq!(b.bdevname().len(), 32);
        let mut c = Block::new(1, 0, b"loop1", b"", 5);
        c.nodename[10] = b'z'; // stale bytes after the NUL are ignored
        assert_eq!(c.nodename(), b"loop1");
    }

    #[test]
    fn timing_rules() {
        assert_eq!(wait_time_s(5), 11);
        assert_eq!(wait_time_s(10), 21);
        assert_eq!(wait_time_s(100), 160);
        assert_eq!(next_check_interval_s(0), 5);
        assert_eq!(next_check_interval_s(7), 14);
        assert_eq!(next_check_interval_s(1000), 300);
    }

    #[test]
    fn superblock_errors() {
        let mut sb = [0u8; 1024];
        assert_eq!(
            Superblock::parse(&sb[..100]),
            Err(SuperblockError::TooShort)
        );
        assert_eq!(Superblock::parse(&sb), Err(SuperblockError::BadMagic(0)));
        sb[0x38] = 0x53;
        sb[0x39] = 0xEF;
        sb[0x04] = 100; // 100 blocks
        sb[0x14] = 1;
        let parsed = Superblock::parse(&sb).expect("minimal superblock");
        assert_eq!(parsed.block_size(), 1024);
        assert_eq!(
            parsed.mmp_offset_bytes(),
            Err(SuperblockError::MmpNotEnabled)
        );
        sb[0x61] = 0x01; // INCOMPAT_MMP
        sb[0x168] = 1; // == first data block: out of range for e2fsprogs
        let parsed = Superblock::parse(&sb).expect("parses");
        assert!(matches!(
            parsed.mmp_offset_bytes(),
            Err(SuperblockError::MmpBlockOutOfRange { block: 1, .. })
        ));
        sb[0x168] = 50;
        assert_eq!(
            Superblock::parse(&sb).expect("parses").mmp_offset_bytes(),
            Ok(50 * 1024)
        );
        sb[0x65] = 0x04; // metadata_csum, checksum type 0
        assert_eq!(
            Superblock::parse(&sb),
            Err(SuperblockError::BadChecksumType(0))
        );
        sb[0x175] = 1;
        let c = superblock_checksum(&sb);
        assert!(
            matches!(Superblock::parse(&sb), Err(SuperblockError::BadChecksum { computed, .. }) if computed == c)
        );
        sb[0x3FC..].copy_from_slice(&c.to_le_bytes());
        let p = Superblock::parse(&sb).expect("checksummed");
        assert_eq!(p.mmp_csum_seed(), Some(crc32c_raw(!0, &[0u8; 16])));
    }
}
