//! ext4 file-system geometry for enabling and disabling MMP: the group layout, group
//! descriptors, block bitmaps and their checksums.
//!
//! Only what allocating or freeing one block needs (spec `ext4-mmp.md` §5): where every
//! group starts, which groups carry superblock and descriptor backups, the descriptor fields
//! (free count, flags, bitmap location and checksum, descriptor checksum), the block-bitmap
//! checksum, and the bitmap an uninitialised group (`BLOCK_UNINIT`) implies. Nothing here
//! performs I/O; `mmp_linux::tune` reads and writes the blocks.
//!
//! Every parser and accessor returns an error instead of panicking on any device bytes.
//! Layout facts (descriptor field offsets, crc16 for `gdt_csum`) are the published ext4
//! on-disk format.
#![forbid(unsafe_code)]

use super::ext4::{
    COMPAT_SPARSE_SUPER2, INCOMPAT_64BIT, INCOMPAT_CSUM_SEED, INCOMPAT_EA_INODE, INCOMPAT_META_BG,
    RO_COMPAT_BIGALLOC, RO_COMPAT_GDT_CSUM, RO_COMPAT_METADATA_CSUM, RO_COMPAT_SPARSE_SUPER,
    SUPER_MAGIC, SUPERBLOCK_LEN, sb_field,
};
use crate::crc32c::crc32c_raw;
use core::fmt;
use core::ops::Range;

/// Superblock fields used here that `ext4::sb_field` does not list.
pub mod sb_extra {
    /// A byte range inside the superblock.
    pub type Field = core::ops::Range<usize>;
    /// `s_wtime` (le32, low 32 bits of the last write time).
    pub const WTIME: Field = 0x030..0x034;
    /// `s_inode_size` (le16, revision 1 and later).
    pub const INODE_SIZE: Field = 0x058..0x05A;
    /// `s_block_group_nr` (le16): the group a superblock copy lives in.
    pub const BLOCK_GROUP_NR: Field = 0x05A..0x05C;
    /// `s_reserved_gdt_blocks` (le16): blocks reserved after the descriptor table.
    pub const RESERVED_GDT_BLOCKS: Field = 0x0CE..0x0D0;
    /// `s_backup_bgs` (two le32, `sparse_super2`): the groups holding backups.
    pub const BACKUP_BGS: Field = 0x24C..0x254;
}

/// `s_state` bit: cleanly unmounted.
pub const STATE_VALID: u16 = 0x0001;
/// `s_state` bit: errors detected.
pub const STATE_ERROR: u16 = 0x0002;

/// `bg_flags` bit: inode table and bitmap not initialised.
pub const BG_INODE_UNINIT: u16 = 0x0001;
/// `bg_flags` bit: block bitmap not initialised (its content is implied by the layout).
pub const BG_BLOCK_UNINIT: u16 = 0x0002;
/// `bg_flags` bit: inode table zeroed.
pub const BG_INODE_ZEROED: u16 = 0x0004;

/// Descriptor size without `64BIT`.
pub const DESC_SIZE_32: u16 = 32;
/// Smallest descriptor size with `64BIT`.
pub const DESC_SIZE_64: u16 = 64;

/// Largest descriptor table this module accepts (bytes). Without `meta_bg` the whole table
/// must fit inside group 0, so real file systems stay far below this.
pub const MAX_DESC_TABLE_BYTES: u64 = 256 << 20;

/// Byte ranges of the group descriptor fields (`struct ext4_group_desc`).
pub mod desc_field {
    /// A byte range inside one descriptor.
    pub type Field = core::ops::Range<usize>;
    /// `bg_block_bitmap_lo` (le32).
    pub const BLOCK_BITMAP_LO: Field = 0x00..0x04;
    /// `bg_inode_bitmap_lo` (le32).
    pub const INODE_BITMAP_LO: Field = 0x04..0x08;
    /// `bg_inode_table_lo` (le32).
    pub const INODE_TABLE_LO: Field = 0x08..0x0C;
    /// `bg_free_blocks_count_lo` (le16).
    pub const FREE_BLOCKS_LO: Field = 0x0C..0x0E;
    /// `bg_flags` (le16).
    pub const FLAGS: Field = 0x12..0x14;
    /// `bg_block_bitmap_csum_lo` (le16).
    pub const BLOCK_BITMAP_CSUM_LO: Field = 0x18..0x1A;
    /// `bg_checksum` (le16).
    pub const CHECKSUM: Field = 0x1E..0x20;
    /// `bg_block_bitmap_hi` (le32, 64-byte descriptors).
    pub const BLOCK_BITMAP_HI: Field = 0x20..0x24;
    /// `bg_inode_bitmap_hi` (le32, 64-byte descriptors).
    pub const INODE_BITMAP_HI: Field = 0x24..0x28;
    /// `bg_inode_table_hi` (le32, 64-byte descriptors).
    pub const INODE_TABLE_HI: Field = 0x28..0x2C;
    /// `bg_free_blocks_count_hi` (le16, 64-byte descriptors).
    pub const FREE_BLOCKS_HI: Field = 0x2C..0x2E;
    /// `bg_block_bitmap_csum_hi` (le16, 64-byte descriptors).
    pub const BLOCK_BITMAP_CSUM_HI: Field = 0x38..0x3A;
}

/// Why a superblock, descriptor or bitmap was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsError {
    /// A superblock that is shorter than 1024 bytes or lacks the ext2/3/4 magic.
    NotExt4,
    /// A feature this module does not handle, by name.
    Unsupported(&'static str),
    /// A geometry field is impossible; names the field.
    BadGeometry(&'static str),
    /// A descriptor table, descriptor or bitmap buffer has the wrong length.
    BadLength(&'static str),
    /// A group number beyond the group count.
    NoSuchGroup(u32),
    /// A group descriptor checksum does not match.
    BadDescChecksum {
        /// The group.
        group: u32,
        /// Stored value.
        stored: u16,
        /// Computed value.
        computed: u16,
    },
    /// A block-bitmap checksum does not match.
    BadBitmapChecksum {
        /// The group.
        group: u32,
        /// Stored value (only the stored half with 32-byte descriptors).
        stored: u32,
        /// Computed value (masked the same way).
        computed: u32,
    },
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FsError::NotExt4 => write!(f, "not an ext2/3/4 superblock"),
            FsError::Unsupported(what) => write!(f, "unsupported ext4 feature: {what}"),
            FsError::BadGeometry(what) => write!(f, "impossible ext4 geometry: {what}"),
            FsError::BadLength(what) => write!(f, "wrong buffer length for {what}"),
            FsError::NoSuchGroup(g) => write!(f, "block group {g} does not exist"),
            FsError::BadDescChecksum {
                group,
                stored,
                computed,
            } => write!(
                f,
                "group descriptor {group} checksum does not match (stored {stored:#06x}, computed {computed:#06x})"
            ),
            FsError::BadBitmapChecksum {
                group,
                stored,
                computed,
            } => write!(
                f,
                "block bitmap checksum of group {group} does not match (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

impl core::error::Error for FsError {}

fn get_le16(b: &[u8], f: Range<usize>) -> Option<u16> {
    let s = b.get(f)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

fn get_le32(b: &[u8], f: Range<usize>) -> Option<u32> {
    let s = b.get(f)?;
    let mut a = [0u8; 4];
    if s.len() != 4 {
        return None;
    }
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

fn get_le64(b: &[u8], f: Range<usize>) -> Option<u64> {
    let s = b.get(f)?;
    let mut a = [0u8; 8];
    if s.len() != 8 {
        return None;
    }
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Reads a little-endian u16 at `f`; `None` if `b` is too short. Never panics.
#[must_use]
pub fn read_le16(b: &[u8], f: Range<usize>) -> Option<u16> {
    get_le16(b, f)
}

/// Reads a little-endian u32 at `f`; `None` if `b` is too short or `f` is not 4 bytes.
#[must_use]
pub fn read_le32(b: &[u8], f: Range<usize>) -> Option<u32> {
    get_le32(b, f)
}

/// Reads a little-endian u64 at `f`; `None` if `b` is too short or `f` is not 8 bytes.
#[must_use]
pub fn read_le64(b: &[u8], f: Range<usize>) -> Option<u64> {
    get_le64(b, f)
}

/// Writes `bytes` at `f`; `false` (nothing written) if `b` is too short or the lengths differ.
pub fn write_bytes(b: &mut [u8], f: Range<usize>, bytes: &[u8]) -> bool {
    match b.get_mut(f) {
        Some(s) if s.len() == bytes.len() => {
            s.copy_from_slice(bytes);
            true
        }
        _ => false,
    }
}

/// The ext4 `gdt_csum` CRC16: polynomial 0x8005 reflected (0xA001), no final inversion,
/// starting from `crc`. Never panics.
#[must_use]
pub fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The geometry of an ext4 file system, from its primary superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Block size in bytes.
    pub block_size: u32,
    /// `s_blocks_count`.
    pub blocks_count: u64,
    /// `s_first_data_block` (1 with 1 KiB blocks, else 0).
    pub first_data_block: u32,
    /// `s_blocks_per_group`.
    pub blocks_per_group: u32,
    /// `s_inodes_per_group`.
    pub inodes_per_group: u32,
    /// `s_inode_size`.
    pub inode_size: u16,
    /// Group descriptor size in bytes (32, or `s_desc_size` with `64BIT`).
    pub desc_size: u16,
    /// Number of block groups.
    pub group_count: u32,
    /// Blocks of the descriptor table.
    pub gdt_blocks: u32,
    /// `s_reserved_gdt_blocks`.
    pub reserved_gdt_blocks: u16,
    /// `s_feature_compat`.
    pub feature_compat: u32,
    /// `s_feature_incompat`.
    pub feature_incompat: u32,
    /// `s_feature_ro_compat`.
    pub feature_ro_compat: u32,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// The metadata checksum seed, when metadata_csum or ea_inode is on.
    pub csum_seed: Option<u32>,
    /// `s_backup_bgs` (`sparse_super2` only).
    pub backup_bgs: [u32; 2],
}

impl Layout {
    /// Derives the geometry from a primary superblock (at least 1024 bytes). Does not check
    /// the superblock checksum (use [`super::ext4::Superblock::parse`] for that). Refuses
    /// `bigalloc` and `meta_bg`, which change where blocks and descriptors live.
    ///
    /// # Errors
    /// [`FsError::NotExt4`], [`FsError::Unsupported`] or [`FsError::BadGeometry`].
    pub fn parse(sb: &[u8]) -> Result<Self, FsError> {
        if sb.len() < SUPERBLOCK_LEN || get_le16(sb, sb_field::MAGIC) != Some(SUPER_MAGIC) {
            return Err(FsError::NotExt4);
        }
        let g32 = |f: Range<usize>| get_le32(sb, f).ok_or(FsError::NotExt4);
        let g16 = |f: Range<usize>| get_le16(sb, f).ok_or(FsError::NotExt4);
        let feature_compat = g32(sb_field::FEATURE_COMPAT)?;
        let feature_incompat = g32(sb_field::FEATURE_INCOMPAT)?;
        let feature_ro_compat = g32(sb_field::FEATURE_RO_COMPAT)?;
        if g32(sb_field::REV_LEVEL)? == 0 {
            return Err(FsError::Unsupported("revision 0 superblock"));
        }
        if feature_ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return Err(FsError::Unsupported("bigalloc"));
        }
        if feature_incompat & INCOMPAT_META_BG != 0 {
            return Err(FsError::Unsupported("meta_bg"));
        }
        let log = g32(sb_field::LOG_BLOCK_SIZE)?;
        if log > 6 {
            return Err(FsError::BadGeometry("s_log_block_size"));
        }
        let block_size = 1024u32 << log;
        let is64 = feature_incompat & INCOMPAT_64BIT != 0;
        let hi = |f: Range<usize>| -> Result<u64, FsError> {
            if is64 {
                Ok(u64::from(g32(f)?) << 32)
            } else {
                Ok(0)
            }
        };
        let blocks_count =
            u64::from(g32(sb_field::BLOCKS_COUNT_LO)?) | hi(sb_field::BLOCKS_COUNT_HI)?;
        let first_data_block = g32(sb_field::FIRST_DATA_BLOCK)?;
        if first_data_block != u32::from(block_size == 1024) {
            return Err(FsError::BadGeometry("s_first_data_block"));
        }
        if blocks_count <= u64::from(first_data_block)
            || blocks_count.checked_mul(u64::from(block_size)).is_none()
        {
            return Err(FsError::BadGeometry("s_blocks_count"));
        }
        let blocks_per_group = g32(sb_field::BLOCKS_PER_GROUP)?;
        if blocks_per_group == 0
            || !blocks_per_group.is_multiple_of(8)
            || blocks_per_group > block_size * 8
        {
            return Err(FsError::BadGeometry("s_blocks_per_group"));
        }
        if g32(sb_field::LOG_CLUSTER_SIZE)? != log {
            return Err(FsError::BadGeometry(
                "s_log_cluster_size differs from the block size",
            ));
        }
        let inodes_per_group = g32(sb_field::INODES_PER_GROUP)?;
        let inode_size = g16(sb_extra::INODE_SIZE)?;
        if inodes_per_group == 0
            || inode_size < 128
            || !inode_size.is_power_of_two()
            || u32::from(inode_size) > block_size
        {
            return Err(FsError::BadGeometry("s_inodes_per_group or s_inode_size"));
        }
        let desc_size = if is64 {
            let d = g16(sb_field::DESC_SIZE)?;
            if d < DESC_SIZE_64 || !d.is_power_of_two() || u32::from(d) > block_size {
                return Err(FsError::BadGeometry("s_desc_size"));
            }
            d
        } else {
            DESC_SIZE_32
        };
        let groups =
            (blocks_count - u64::from(first_data_block)).div_ceil(u64::from(blocks_per_group));
        let group_count = u32::try_from(groups).map_err(|_| FsError::BadGeometry("group count"))?;
        let table_bytes = groups * u64::from(desc_size);
        if table_bytes > MAX_DESC_TABLE_BYTES {
            return Err(FsError::Unsupported(
                "a descriptor table larger than 256 MiB",
            ));
        }
        let gdt_blocks = u32::try_from(table_bytes.div_ceil(u64::from(block_size)))
            .map_err(|_| FsError::BadGeometry("descriptor table size"))?;
        let reserved_gdt_blocks = g16(sb_extra::RESERVED_GDT_BLOCKS)?;
        // Without meta_bg, group 0 holds the superblock, the table and the reserved blocks.
        if u64::from(gdt_blocks) + u64::from(reserved_gdt_blocks) + 1 >= u64::from(blocks_per_group)
        {
            return Err(FsError::BadGeometry(
                "descriptor table does not fit in group 0",
            ));
        }
        let mut uuid = [0u8; 16];
        if !sb.get(sb_field::UUID).is_some_and(|u| {
            uuid.copy_from_slice(u);
            true
        }) {
            return Err(FsError::NotExt4);
        }
        let metadata_csum = feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0;
        let csum_seed = if feature_incompat & INCOMPAT_CSUM_SEED != 0 {
            Some(g32(sb_field::CHECKSUM_SEED)?)
        } else if metadata_csum || feature_incompat & INCOMPAT_EA_INODE != 0 {
            Some(crc32c_raw(!0, &uuid))
        } else {
            None
        };
        let backup_bgs = [
            g32(sb_extra::BACKUP_BGS.start..sb_extra::BACKUP_BGS.start + 4)?,
            g32(sb_extra::BACKUP_BGS.start + 4..sb_extra::BACKUP_BGS.end)?,
        ];
        Ok(Layout {
            block_size,
            blocks_count,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            desc_size,
            group_count,
            gdt_blocks,
            reserved_gdt_blocks,
            feature_compat,
            feature_incompat,
            feature_ro_compat,
            uuid,
            csum_seed,
            backup_bgs,
        })
    }

    /// Whether `metadata_csum` is on.
    #[must_use]
    pub fn metadata_csum(&self) -> bool {
        self.feature_ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }

    /// Whether `gdt_csum` (uninit_bg) is on and `metadata_csum` is not (metadata_csum wins).
    #[must_use]
    pub fn gdt_csum(&self) -> bool {
        !self.metadata_csum() && self.feature_ro_compat & RO_COMPAT_GDT_CSUM != 0
    }

    /// Whether descriptors carry a checksum (and `BLOCK_UNINIT` is meaningful).
    #[must_use]
    pub fn has_group_csum(&self) -> bool {
        self.metadata_csum() || self.gdt_csum()
    }

    /// Whether descriptors have the 64-bit half (`64BIT` and at least 64 bytes).
    #[must_use]
    pub fn is_64bit(&self) -> bool {
        self.feature_incompat & INCOMPAT_64BIT != 0 && self.desc_size >= DESC_SIZE_64
    }

    /// Bytes of the block bitmap covered by its checksum: blocks per group / 8.
    #[must_use]
    pub fn bitmap_bytes(&self) -> usize {
        (self.blocks_per_group / 8) as usize
    }

    /// Blocks of one group's inode table.
    #[must_use]
    pub fn inode_table_blocks(&self) -> u64 {
        (u64::from(self.inodes_per_group) * u64::from(self.inode_size))
            .div_ceil(u64::from(self.block_size))
    }

    /// Length of the descriptor table in bytes (whole blocks).
    #[must_use]
    pub fn desc_table_len(&self) -> usize {
        self.gdt_blocks as usize * self.block_size as usize
    }

    /// First block of group `g`.
    #[must_use]
    pub fn group_first_block(&self, g: u32) -> u64 {
        u64::from(self.first_data_block) + u64::from(g) * u64::from(self.blocks_per_group)
    }

    /// Blocks in group `g` (the last group may be shorter); 0 for a group that does not exist.
    #[must_use]
    pub fn group_block_count(&self, g: u32) -> u32 {
        if g >= self.group_count {
            return 0;
        }
        let left = self.blocks_count.saturating_sub(self.group_first_block(g));
        u32::try_from(left.min(u64::from(self.blocks_per_group))).unwrap_or(self.blocks_per_group)
    }

    /// The group that holds `block`, if it is inside the file system's groups.
    #[must_use]
    pub fn group_of(&self, block: u64) -> Option<u32> {
        if block < u64::from(self.first_data_block) || block >= self.blocks_count {
            return None;
        }
        u32::try_from((block - u64::from(self.first_data_block)) / u64::from(self.blocks_per_group))
            .ok()
    }

    /// Whether group `g` holds a superblock copy and a descriptor table copy (group 0 always;
    /// with `sparse_super` groups 1 and powers of 3, 5 and 7; with `sparse_super2` the two
    /// listed groups; otherwise every group).
    #[must_use]
    pub fn has_super(&self, g: u32) -> bool {
        if g == 0 {
            return true;
        }
        if g >= self.group_count {
            return false;
        }
        if self.feature_compat & COMPAT_SPARSE_SUPER2 != 0 {
            return g == self.backup_bgs[0] || g == self.backup_bgs[1];
        }
        if self.feature_ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g == 1 {
            return true;
        }
        if g.is_multiple_of(2) {
            return false;
        }
        [3u32, 5, 7].iter().any(|&base| {
            let mut p = base;
            while p < g {
                match p.checked_mul(base) {
                    Some(n) => p = n,
                    None => return false,
                }
            }
            p == g
        })
    }

    /// The groups that hold a superblock and descriptor copy, in order (group 0 first).
    pub fn super_groups(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.group_count).filter(|&g| self.has_super(g))
    }

    /// Byte offset of group `g`'s superblock copy (1024 for group 0).
    #[must_use]
    pub fn super_offset(&self, g: u32) -> u64 {
        if g == 0 {
            super::ext4::SUPERBLOCK_OFFSET
        } else {
            self.group_first_block(g) * u64::from(self.block_size)
        }
    }

    /// First block of group `g`'s descriptor table copy (the block after its superblock).
    #[must_use]
    pub fn gdt_first_block(&self, g: u32) -> u64 {
        self.group_first_block(g) + 1
    }

    /// Blocks at the start of group `g` taken by its superblock, descriptor table and
    /// reserved descriptor blocks (0 without a copy).
    #[must_use]
    pub fn super_and_gdt_blocks(&self, g: u32) -> u32 {
        if self.has_super(g) {
            1 + self.gdt_blocks + u32::from(self.reserved_gdt_blocks)
        } else {
            0
        }
    }

    /// Byte range of group `g`'s descriptor inside the descriptor table.
    ///
    /// # Errors
    /// [`FsError::NoSuchGroup`].
    pub fn desc_range(&self, g: u32) -> Result<Range<usize>, FsError> {
        if g >= self.group_count {
            return Err(FsError::NoSuchGroup(g));
        }
        let start = g as usize * usize::from(self.desc_size);
        Ok(start..start + usize::from(self.desc_size))
    }

    /// The checksum group descriptor `g` should carry, or `None` without gdt_csum and
    /// metadata_csum. `desc` is the descriptor's `desc_size` bytes; its checksum field is
    /// ignored.
    ///
    /// metadata_csum: low 16 bits of `crc32c_raw(seed, le32 g ‖ desc with bg_checksum zeroed)`.
    /// gdt_csum: `crc16(!0, uuid ‖ le32 g ‖ desc[..0x1E] ‖ desc[0x20..])`.
    ///
    /// # Errors
    /// [`FsError::BadLength`] if `desc` is not `desc_size` bytes.
    pub fn desc_checksum(&self, g: u32, desc: &[u8]) -> Result<Option<u16>, FsError> {
        if desc.len() != usize::from(self.desc_size) {
            return Err(FsError::BadLength("group descriptor"));
        }
        let (head, tail) = desc.split_at(desc_field::CHECKSUM.start);
        let rest = tail.get(2..).unwrap_or(&[]);
        if self.metadata_csum() {
            let seed = self.csum_seed.unwrap_or(!0);
            let mut c = crc32c_raw(seed, &g.to_le_bytes());
            c = crc32c_raw(c, head);
            c = crc32c_raw(c, &[0, 0]);
            c = crc32c_raw(c, rest);
            Ok(Some((c & 0xFFFF) as u16))
        } else if self.gdt_csum() {
            let mut c = crc16(!0, &self.uuid);
            c = crc16(c, &g.to_le_bytes());
            c = crc16(c, head);
            // The part after the checksum exists only for descriptors longer than 32 bytes.
            c = crc16(c, rest);
            Ok(Some(c))
        } else {
            Ok(None)
        }
    }

    /// The block-bitmap checksum of `bitmap` (at least [`Layout::bitmap_bytes`] long), with
    /// metadata_csum: `crc32c_raw(seed, bitmap[..blocks_per_group / 8])`.
    ///
    /// # Errors
    /// [`FsError::BadLength`] if `bitmap` is too short.
    pub fn bitmap_checksum(&self, bitmap: &[u8]) -> Result<Option<u32>, FsError> {
        let b = bitmap
            .get(..self.bitmap_bytes())
            .ok_or(FsError::BadLength("block bitmap"))?;
        Ok(if self.metadata_csum() {
            Some(crc32c_raw(self.csum_seed.unwrap_or(!0), b))
        } else {
            None
        })
    }
}

/// Typed access to one group descriptor (`desc_size` bytes) of a [`Layout`].
#[derive(Clone, Copy, Debug)]
pub struct Desc<'a> {
    layout: &'a Layout,
    bytes: &'a [u8],
}

fn combine(lo: Option<u32>, hi: Option<u32>, wide: bool) -> u64 {
    u64::from(lo.unwrap_or(0))
        | if wide {
            u64::from(hi.unwrap_or(0)) << 32
        } else {
            0
        }
}

impl<'a> Desc<'a> {
    /// Descriptor `g` of `table` (the whole descriptor table).
    ///
    /// # Errors
    /// [`FsError::NoSuchGroup`] or [`FsError::BadLength`] if the table is too short.
    pub fn of(layout: &'a Layout, table: &'a [u8], g: u32) -> Result<Self, FsError> {
        let bytes = table
            .get(layout.desc_range(g)?)
            .ok_or(FsError::BadLength("descriptor table"))?;
        Ok(Desc { layout, bytes })
    }

    /// The raw bytes.
    #[must_use]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `bg_block_bitmap`.
    #[must_use]
    pub fn block_bitmap(&self) -> u64 {
        let w = self.layout.is_64bit();
        combine(
            get_le32(self.bytes, desc_field::BLOCK_BITMAP_LO),
            get_le32(self.bytes, desc_field::BLOCK_BITMAP_HI),
            w,
        )
    }

    /// `bg_inode_bitmap`.
    #[must_use]
    pub fn inode_bitmap(&self) -> u64 {
        let w = self.layout.is_64bit();
        combine(
            get_le32(self.bytes, desc_field::INODE_BITMAP_LO),
            get_le32(self.bytes, desc_field::INODE_BITMAP_HI),
            w,
        )
    }

    /// `bg_inode_table`.
    #[must_use]
    pub fn inode_table(&self) -> u64 {
        let w = self.layout.is_64bit();
        combine(
            get_le32(self.bytes, desc_field::INODE_TABLE_LO),
            get_le32(self.bytes, desc_field::INODE_TABLE_HI),
            w,
        )
    }

    /// `bg_free_blocks_count`.
    #[must_use]
    pub fn free_blocks(&self) -> u32 {
        let lo = u32::from(get_le16(self.bytes, desc_field::FREE_BLOCKS_LO).unwrap_or(0));
        let hi = if self.layout.is_64bit() {
            u32::from(get_le16(self.bytes, desc_field::FREE_BLOCKS_HI).unwrap_or(0))
        } else {
            0
        };
        lo | hi << 16
    }

    /// `bg_flags`.
    #[must_use]
    pub fn flags(&self) -> u16 {
        get_le16(self.bytes, desc_field::FLAGS).unwrap_or(0)
    }

    /// `bg_checksum`.
    #[must_use]
    pub fn checksum(&self) -> u16 {
        get_le16(self.bytes, desc_field::CHECKSUM).unwrap_or(0)
    }

    /// `bg_block_bitmap_csum` (the high half only with 64-byte descriptors).
    #[must_use]
    pub fn block_bitmap_csum(&self) -> u32 {
        let lo = u32::from(get_le16(self.bytes, desc_field::BLOCK_BITMAP_CSUM_LO).unwrap_or(0));
        let hi = if self.layout.is_64bit() {
            u32::from(get_le16(self.bytes, desc_field::BLOCK_BITMAP_CSUM_HI).unwrap_or(0))
        } else {
            0
        };
        lo | hi << 16
    }

    /// Whether the block bitmap is uninitialised (`BLOCK_UNINIT` with a group checksum
    /// feature; the flag means nothing without one).
    #[must_use]
    pub fn block_uninit(&self) -> bool {
        self.layout.has_group_csum() && self.flags() & BG_BLOCK_UNINIT != 0
    }
}

/// Checks descriptor `g`'s checksum (a no-op without a group checksum feature).
///
/// # Errors
/// [`FsError::BadDescChecksum`], or the errors of [`Desc::of`].
pub fn verify_desc(layout: &Layout, table: &[u8], g: u32) -> Result<(), FsError> {
    let d = Desc::of(layout, table, g)?;
    if let Some(computed) = layout.desc_checksum(g, d.bytes())? {
        let stored = d.checksum();
        if stored != computed {
            return Err(FsError::BadDescChecksum {
                group: g,
                stored,
                computed,
            });
        }
    }
    Ok(())
}

/// Checks group `g`'s block bitmap against the checksum in its descriptor (metadata_csum
/// only; with 32-byte descriptors only the low 16 bits are stored and compared).
///
/// # Errors
/// [`FsError::BadBitmapChecksum`], or the errors of [`Desc::of`] and
/// [`Layout::bitmap_checksum`].
pub fn verify_bitmap(layout: &Layout, table: &[u8], g: u32, bitmap: &[u8]) -> Result<(), FsError> {
    let d = Desc::of(layout, table, g)?;
    if let Some(c) = layout.bitmap_checksum(bitmap)? {
        let mask = if layout.is_64bit() { u32::MAX } else { 0xFFFF };
        let (stored, computed) = (d.block_bitmap_csum() & mask, c & mask);
        if stored != computed {
            return Err(FsError::BadBitmapChecksum {
                group: g,
                stored,
                computed,
            });
        }
    }
    Ok(())
}

/// Mutable access to the descriptor table for the changes allocating or freeing one block
/// makes.
#[derive(Debug)]
pub struct DescMut<'a> {
    layout: &'a Layout,
    bytes: &'a mut [u8],
    group: u32,
}

impl<'a> DescMut<'a> {
    /// Descriptor `g` of `table`.
    ///
    /// # Errors
    /// [`FsError::NoSuchGroup`] or [`FsError::BadLength`].
    pub fn of(layout: &'a Layout, table: &'a mut [u8], g: u32) -> Result<Self, FsError> {
        let bytes = table
            .get_mut(layout.desc_range(g)?)
            .ok_or(FsError::BadLength("descriptor table"))?;
        Ok(DescMut {
            layout,
            bytes,
            group: g,
        })
    }

    /// A read-only view.
    #[must_use]
    pub fn view(&self) -> Desc<'_> {
        Desc {
            layout: self.layout,
            bytes: self.bytes,
        }
    }

    /// Sets `bg_free_blocks_count` (the high half only with 64-byte descriptors).
    ///
    /// # Errors
    /// [`FsError::BadGeometry`] if the value does not fit.
    pub fn set_free_blocks(&mut self, v: u32) -> Result<(), FsError> {
        if !self.layout.is_64bit() && v > 0xFFFF {
            return Err(FsError::BadGeometry("group free block count"));
        }
        write_bytes(
            self.bytes,
            desc_field::FREE_BLOCKS_LO,
            &((v & 0xFFFF) as u16).to_le_bytes(),
        );
        if self.layout.is_64bit() {
            write_bytes(
                self.bytes,
                desc_field::FREE_BLOCKS_HI,
                &((v >> 16) as u16).to_le_bytes(),
            );
        }
        Ok(())
    }

    /// Sets `bg_flags`.
    pub fn set_flags(&mut self, flags: u16) {
        write_bytes(self.bytes, desc_field::FLAGS, &flags.to_le_bytes());
    }

    /// Stores the block-bitmap checksum of `bitmap` (metadata_csum only; otherwise nothing).
    ///
    /// # Errors
    /// [`FsError::BadLength`] if `bitmap` is too short.
    pub fn set_bitmap_checksum(&mut self, bitmap: &[u8]) -> Result<(), FsError> {
        if let Some(c) = self.layout.bitmap_checksum(bitmap)? {
            write_bytes(
                self.bytes,
                desc_field::BLOCK_BITMAP_CSUM_LO,
                &((c & 0xFFFF) as u16).to_le_bytes(),
            );
            if self.layout.is_64bit() {
                write_bytes(
                    self.bytes,
                    desc_field::BLOCK_BITMAP_CSUM_HI,
                    &((c >> 16) as u16).to_le_bytes(),
                );
            }
        }
        Ok(())
    }

    /// Recomputes and stores `bg_checksum` (nothing without a group checksum feature).
    ///
    /// # Errors
    /// [`FsError::BadLength`] (not for a descriptor obtained from [`DescMut::of`]).
    pub fn update_checksum(&mut self) -> Result<(), FsError> {
        if let Some(c) = self.layout.desc_checksum(self.group, self.bytes)? {
            write_bytes(self.bytes, desc_field::CHECKSUM, &c.to_le_bytes());
        }
        Ok(())
    }
}

/// Tests bit `i` of a bitmap (bit 0 = least significant bit of byte 0); `None` if out of range.
#[must_use]
pub fn test_bit(bitmap: &[u8], i: u64) -> Option<bool> {
    let byte = usize::try_from(i / 8).ok()?;
    bitmap.get(byte).map(|b| b & (1 << (i % 8)) != 0)
}

/// Sets or clears bit `i`; `false` (nothing changed) if out of range.
pub fn put_bit(bitmap: &mut [u8], i: u64, on: bool) -> bool {
    let Ok(byte) = usize::try_from(i / 8) else {
        return false;
    };
    match bitmap.get_mut(byte) {
        Some(b) => {
            if on {
                *b |= 1 << (i % 8);
            } else {
                *b &= !(1 << (i % 8));
            }
            true
        }
        None => false,
    }
}

/// The first clear bit below `limit`, if any.
#[must_use]
pub fn first_clear_bit(bitmap: &[u8], limit: u64) -> Option<u64> {
    let whole = usize::try_from(limit / 8).ok()?.min(bitmap.len());
    if let Some(pos) = bitmap[..whole].iter().position(|&b| b != 0xFF) {
        let b = bitmap[pos];
        return Some(pos as u64 * 8 + u64::from((!b).trailing_zeros()));
    }
    (whole as u64 * 8..limit).find(|&i| test_bit(bitmap, i) == Some(false))
}

/// Marks blocks `[start, start + len)` that fall inside group `g` in `bitmap` (whose bit 0 is
/// the group's first block).
fn mark_range(layout: &Layout, g: u32, bitmap: &mut [u8], start: u64, len: u64) {
    let first = layout.group_first_block(g);
    let end_group = first + u64::from(layout.group_block_count(g));
    let lo = start.max(first);
    let hi = start.saturating_add(len).min(end_group);
    for b in lo..hi {
        put_bit(bitmap, b - first, true);
    }
}

/// Builds the block bitmap an uninitialised group (`BLOCK_UNINIT`) implies, into `out` (one
/// whole block): its superblock, descriptor table and reserved descriptor blocks when it has
/// a copy; the block bitmap, inode bitmap and inode table of *every* group that lie inside
/// it (with flex_bg they may belong to other groups); and every bit past the group's last
/// block set, as the kernel and e2fsprogs write it.
///
/// # Errors
/// [`FsError::BadLength`] if `out` is not one block, or the errors of [`Desc::of`].
pub fn uninit_block_bitmap(
    layout: &Layout,
    table: &[u8],
    g: u32,
    out: &mut [u8],
) -> Result<(), FsError> {
    if out.len() != layout.block_size as usize {
        return Err(FsError::BadLength("block bitmap block"));
    }
    if g >= layout.group_count {
        return Err(FsError::NoSuchGroup(g));
    }
    out.fill(0);
    let first = layout.group_first_block(g);
    mark_range(
        layout,
        g,
        out,
        first,
        u64::from(layout.super_and_gdt_blocks(g)),
    );
    let itb = layout.inode_table_blocks();
    for h in 0..layout.group_count {
        let d = Desc::of(layout, table, h)?;
        mark_range(layout, g, out, d.block_bitmap(), 1);
        mark_range(layout, g, out, d.inode_bitmap(), 1);
        mark_range(layout, g, out, d.inode_table(), itb);
    }
    for i in u64::from(layout.group_block_count(g))..u64::from(layout.block_size) * 8 {
        put_bit(out, i, true);
    }
    Ok(())
}

/// Whether `block` is fixed metadata of some group: a superblock or descriptor copy (with
/// its reserved blocks), a bitmap, or an inode table block. Used as a sanity check before
/// taking a block the bitmap says is free.
///
/// # Errors
/// The errors of [`Desc::of`].
pub fn is_metadata_block(layout: &Layout, table: &[u8], block: u64) -> Result<bool, FsError> {
    if block <= u64::from(layout.first_data_block) {
        return Ok(true);
    }
    if let Some(g) = layout.group_of(block) {
        let first = layout.group_first_block(g);
        if block < first + u64::from(layout.super_and_gdt_blocks(g)) {
            return Ok(true);
        }
    }
    let itb = layout.inode_table_blocks();
    for h in 0..layout.group_count {
        let d = Desc::of(layout, table, h)?;
        let it = d.inode_table();
        if block == d.block_bitmap()
            || block == d.inode_bitmap()
            || (block >= it && block < it.saturating_add(itb))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes a superblock copy for group `g` from the primary's bytes, as e2fsprogs writes
/// backups: `s_block_group_nr = g`, and for backups (`g > 0`) `s_state` without the
/// clean bit and without `INCOMPAT_RECOVER`; then the checksum with metadata_csum.
///
/// # Errors
/// [`FsError::BadLength`] if either buffer is shorter than 1024 bytes or `g` does not fit
/// in 16 bits.
pub fn superblock_copy(primary: &[u8], g: u32, out: &mut [u8]) -> Result<(), FsError> {
    let src = primary
        .get(..SUPERBLOCK_LEN)
        .ok_or(FsError::BadLength("superblock"))?;
    let dst = out
        .get_mut(..SUPERBLOCK_LEN)
        .ok_or(FsError::BadLength("superblock"))?;
    dst.copy_from_slice(src);
    let nr = u16::try_from(g).map_err(|_| FsError::BadLength("block group number"))?;
    write_bytes(dst, sb_extra::BLOCK_GROUP_NR, &nr.to_le_bytes());
    if g > 0 {
        let state = get_le16(dst, sb_field::STATE).unwrap_or(0) & !STATE_VALID;
        write_bytes(dst, sb_field::STATE, &state.to_le_bytes());
        let incompat =
            get_le32(dst, sb_field::FEATURE_INCOMPAT).unwrap_or(0) & !super::ext4::INCOMPAT_RECOVER;
        write_bytes(dst, sb_field::FEATURE_INCOMPAT, &incompat.to_le_bytes());
    }
    update_superblock_checksum(dst);
    Ok(())
}

/// Recomputes `s_checksum` when metadata_csum is on (otherwise leaves it). Does nothing on a
/// buffer shorter than 1024 bytes.
pub fn update_superblock_checksum(sb: &mut [u8]) {
    if sb.len() < SUPERBLOCK_LEN {
        return;
    }
    if get_le32(sb, sb_field::FEATURE_RO_COMPAT).unwrap_or(0) & RO_COMPAT_METADATA_CSUM != 0 {
        let c = super::ext4::superblock_checksum(sb);
        write_bytes(sb, sb_field::CHECKSUM, &c.to_le_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns")]
mod tests {
    use super::*;

    fn sb_1k(groups: u32, flags_ro: u32, incompat: u32) -> [u8; 1024] {
        let mut sb = [0u8; 1024];
        let put32 = |sb: &mut [u8; 1024], f: Range<usize>, v: u32| {
            sb[f].copy_from_slice(&v.to_le_bytes());
        };
        put32(&mut sb, sb_field::BLOCKS_COUNT_LO, 1 + groups * 8192);
        put32(&mut sb, sb_field::FIRST_DATA_BLOCK, 1);
        put32(&mut sb, sb_field::BLOCKS_PER_GROUP, 8192);
        put32(&mut sb, sb_field::INODES_PER_GROUP, 2048);
        put32(&mut sb, sb_field::REV_LEVEL, 1);
        put32(&mut sb, sb_field::FEATURE_RO_COMPAT, flags_ro);
        put32(&mut sb, sb_field::FEATURE_INCOMPAT, incompat);
        sb[sb_field::MAGIC].copy_from_slice(&SUPER_MAGIC.to_le_bytes());
        sb[sb_extra::INODE_SIZE].copy_from_slice(&256u16.to_le_bytes());
        sb[sb_field::DESC_SIZE].copy_from_slice(&64u16.to_le_bytes());
        sb[sb_field::UUID].copy_from_slice(&[0x11; 16]);
        sb
    }

    #[test]
    fn crc16_check_value() {
        // CRC-16/ARC check value with init 0 ("123456789"), and the MODBUS variant (init !0).
        assert_eq!(crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(crc16(!0, b"123456789"), 0x4B37);
    }

    #[test]
    fn sparse_super_groups() {
        let sb = sb_1k(200, RO_COMPAT_SPARSE_SUPER, 0);
        let l = Layout::parse(&sb).expect("layout");
        let got: Vec<u32> = l.super_groups().collect();
        assert_eq!(got, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
        let sb = sb_1k(5, 0, 0);
        let l = Layout::parse(&sb).expect("layout");
        assert!((0..5).all(|g| l.has_super(g)));
        assert!(!l.has_super(5));
    }

    #[test]
    fn geometry_and_refusals() {
        let sb = sb_1k(3, 0, INCOMPAT_64BIT);
        let l = Layout::parse(&sb).expect("layout");
        assert_eq!(l.group_count, 3);
        assert_eq!(l.desc_size, 64);
        assert_eq!(l.gdt_blocks, 1);
        assert_eq!(l.group_first_block(2), 16385);
        assert_eq!(l.group_of(16385), Some(2));
        assert_eq!(l.group_of(0), None);
        assert_eq!(l.inode_table_blocks(), 512);
        let mut b = sb;
        b[sb_field::FEATURE_RO_COMPAT].copy_from_slice(&RO_COMPAT_BIGALLOC.to_le_bytes());
        assert_eq!(Layout::parse(&b), Err(FsError::Unsupported("bigalloc")));
        let mut b = sb;
        b[sb_field::FEATURE_INCOMPAT].copy_from_slice(&INCOMPAT_META_BG.to_le_bytes());
        assert_eq!(Layout::parse(&b), Err(FsError::Unsupported("meta_bg")));
        let mut b = sb;
        b[sb_field::BLOCKS_PER_GROUP].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(Layout::parse(&b), Err(FsError::BadGeometry(_))));
        assert_eq!(Layout::parse(&sb[..100]), Err(FsError::NotExt4));
    }

    #[test]
    fn parse_never_panics_on_mutations() {
        let base = sb_1k(
            3,
            RO_COMPAT_METADATA_CSUM | RO_COMPAT_SPARSE_SUPER,
            INCOMPAT_64BIT,
        );
        let mut x: u32 = 12345;
        for _ in 0..20000 {
            let mut sb = base;
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let pos = (x as usize) % 0x280;
                sb[pos] = (x >> 16) as u8;
            }
            if let Ok(l) = Layout::parse(&sb) {
                let table = [0u8; 4096];
                let mut out = [0u8; 65536];
                let bs = l.block_size as usize;
                let _ = uninit_block_bitmap(&l, &table, 0, &mut out[..bs]);
                let _ = is_metadata_block(&l, &table, 5);
                let _ = l.super_groups().count();
            }
        }
    }

    #[test]
    fn descriptor_checksums_and_bitmap() {
        let sb = sb_1k(
            3,
            RO_COMPAT_METADATA_CSUM | RO_COMPAT_SPARSE_SUPER,
            INCOMPAT_64BIT,
        );
        let l = Layout::parse(&sb).expect("layout");
        let mut table = [0u8; 1024];
        // Group 1: bitmaps and inode table inside group 0 (flex_bg style), BLOCK_UNINIT.
        for g in 0..3u32 {
            let mut d = DescMut::of(&l, &mut table, g).expect("desc");
            d.bytes[desc_field::BLOCK_BITMAP_LO].copy_from_slice(&(100 + g).to_le_bytes());
            d.bytes[desc_field::INODE_BITMAP_LO].copy_from_slice(&(110 + g).to_le_bytes());
            d.bytes[desc_field::INODE_TABLE_LO].copy_from_slice(&(200 + 512 * g).to_le_bytes());
            d.set_flags(if g > 0 { BG_BLOCK_UNINIT } else { 0 });
            d.set_free_blocks(8000 + g).expect("fits");
            d.update_checksum().expect("csum");
        }
        for g in 0..3 {
            verify_desc(&l, &table, g).expect("valid");
        }
        let d = Desc::of(&l, &table, 2).expect("desc");
        assert_eq!(d.free_blocks(), 8002);
        assert!(d.block_uninit());
        table[2 * 64 + 3] ^= 1;
        assert!(matches!(
            verify_desc(&l, &table, 2),
            Err(FsError::BadDescChecksum { group: 2, .. })
        ));
        table[2 * 64 + 3] ^= 1;

        let mut bm = [0u8; 1024];
        uninit_block_bitmap(&l, &table, 1, &mut bm).expect("bitmap");
        // Group 1 has a backup: superblock + 1 descriptor block + 0 reserved.
        assert_eq!(test_bit(&bm, 0), Some(true));
        assert_eq!(test_bit(&bm, 1), Some(true));
        assert_eq!(test_bit(&bm, 2), Some(false));
        assert_eq!(first_clear_bit(&bm, 8192), Some(2));
        uninit_block_bitmap(&l, &table, 2, &mut bm).expect("bitmap");
        assert_eq!(first_clear_bit(&bm, 8192), Some(0));
        uninit_block_bitmap(&l, &table, 0, &mut bm).expect("bitmap");
        // Group 0: sb (1), gdt (2), block bitmaps 100..102, inode bitmaps 110..112,
        // inode tables 200..1735.
        assert_eq!(first_clear_bit(&bm, 8192), Some(2));
        assert_eq!(test_bit(&bm, 99), Some(true));
        assert_eq!(test_bit(&bm, 102), Some(false));
        assert_eq!(test_bit(&bm, 1734), Some(true));
        assert_eq!(test_bit(&bm, 1735), Some(false));
        assert!(is_metadata_block(&l, &table, 101).expect("ok"));
        assert!(is_metadata_block(&l, &table, 8193).expect("ok"));
        assert!(!is_metadata_block(&l, &table, 8195).expect("ok"));

        let mut dm = DescMut::of(&l, &mut table, 0).expect("desc");
        dm.set_bitmap_checksum(&bm).expect("csum");
        dm.update_checksum().expect("csum");
        verify_bitmap(&l, &table, 0, &bm).expect("valid");
        put_bit(&mut bm, 5000, true);
        assert!(matches!(
            verify_bitmap(&l, &table, 0, &bm),
            Err(FsError::BadBitmapChecksum { group: 0, .. })
        ));
    }

    #[test]
    fn bits() {
        let mut b = [0xFFu8, 0xFF, 0b1110_1111];
        assert_eq!(first_clear_bit(&b, 24), Some(20));
        assert_eq!(first_clear_bit(&b, 20), None);
        assert_eq!(first_clear_bit(&b, 1000), Some(20));
        assert!(put_bit(&mut b, 20, true));
        assert_eq!(first_clear_bit(&b, 1000), None);
        assert!(!put_bit(&mut b, 24, true));
        assert_eq!(test_bit(&b, 24), None);
    }

    #[test]
    fn superblock_copies() {
        let mut sb = sb_1k(
            3,
            RO_COMPAT_METADATA_CSUM,
            super::super::ext4::INCOMPAT_RECOVER,
        );
        sb[sb_field::STATE].copy_from_slice(&1u16.to_le_bytes());
        let mut out = [0u8; 1024];
        superblock_copy(&sb, 1, &mut out).expect("copy");
        assert_eq!(read_le16(&out, sb_extra::BLOCK_GROUP_NR), Some(1));
        assert_eq!(read_le16(&out, sb_field::STATE), Some(0));
        assert_eq!(read_le32(&out, sb_field::FEATURE_INCOMPAT), Some(0));
        assert_eq!(
            read_le32(&out, sb_field::CHECKSUM),
            Some(super::super::ext4::superblock_checksum(&out))
        );
        superblock_copy(&sb, 0, &mut out).expect("copy");
        assert_eq!(read_le16(&out, sb_field::STATE), Some(1));
    }
}
