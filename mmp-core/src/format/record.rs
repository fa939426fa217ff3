//! The MMP record whatever its format: where it lives on a device ([`Layout`]), what it
//! says once parsed ([`Snapshot`], [`Class`]), and why it could not be parsed
//! ([`Corrupt`]). The protocol machine works on these; `ext4` and `native` hold the bytes.
#![forbid(unsafe_code)]

use super::{ext4, native};

/// The largest record the machine reads or writes (the ext4 MMP structure).
pub const MAX_RECORD_LEN: usize = ext4::STRUCT_LEN;

/// Where and how the MMP record lives on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// An ext4/ldiskfs file system with the MMP feature.
    Ext4 {
        /// Byte offset of the MMP block (`s_mmp_block * block_size`).
        offset_bytes: u64,
        /// The MMP checksum seed (with metadata_csum), see
        /// [`ext4::Superblock::mmp_csum_seed`].
        csum_seed: Option<u32>,
        /// `s_mmp_update_interval` as stored (0 is read as 5).
        update_interval_s: u16,
    },
    /// A native mmp area.
    Native {
        /// Byte offset of the record (0 for a whole device).
        offset_bytes: u64,
    },
}

impl Layout {
    /// Bytes the machine reads and writes: 1024 for ext4, 512 for native.
    #[must_use]
    pub fn record_len(&self) -> usize {
        match self {
            Layout::Ext4 { .. } => ext4::STRUCT_LEN,
            Layout::Native { .. } => native::RECORD_LEN,
        }
    }

    /// Byte offset of the record on the device.
    #[must_use]
    pub fn offset_bytes(&self) -> u64 {
        match *self {
            Layout::Ext4 { offset_bytes, .. } | Layout::Native { offset_bytes } => offset_bytes,
        }
    }

    pub(crate) fn ext4_update_interval_s(&self) -> u16 {
        match *self {
            Layout::Ext4 {
                update_interval_s: 0,
                ..
            } => ext4::DEFAULT_UPDATE_INTERVAL_S,
            Layout::Ext4 {
                update_interval_s, ..
            } => update_interval_s,
            Layout::Native { .. } => ext4::DEFAULT_UPDATE_INTERVAL_S,
        }
    }
}

/// A parsed record: what the device says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snapshot {
    /// An ext4 MMP block.
    Ext4(ext4::Block),
    /// A native record.
    Native(native::Record),
}

impl Snapshot {
    /// The node name of the last writer, up to the first NUL.
    #[must_use]
    pub fn nodename(&self) -> &[u8] {
        match self {
            Snapshot::Ext4(b) => b.nodename(),
            Snapshot::Native(r) => r.nodename(),
        }
    }

    /// The device name recorded by the last writer, up to the first NUL.
    #[must_use]
    pub fn devname(&self) -> &[u8] {
        match self {
            Snapshot::Ext4(b) => b.bdevname(),
            Snapshot::Native(r) => r.devname(),
        }
    }

    /// The hostid of the last writer (native only).
    #[must_use]
    pub fn hostid(&self) -> Option<u32> {
        match self {
            Snapshot::Ext4(_) => None,
            Snapshot::Native(r) => Some(r.hostid),
        }
    }

    /// Wall time of the last write, Unix milliseconds.
    #[must_use]
    pub fn time_ms(&self) -> u64 {
        match self {
            Snapshot::Ext4(b) => b.time.saturating_mul(1000),
            Snapshot::Native(r) => r.time_ms,
        }
    }

    /// The sequence value.
    #[must_use]
    pub fn seq(&self) -> u64 {
        match self {
            Snapshot::Ext4(b) => u64::from(b.seq),
            Snapshot::Native(r) => r.seq,
        }
    }

    /// The state class.
    #[must_use]
    pub fn class(&self) -> Class {
        match self {
            Snapshot::Ext4(b) => match b.seq_class() {
                ext4::SeqClass::Clean => Class::Clean,
                ext4::SeqClass::Fsck => Class::Fsck,
                ext4::SeqClass::Live(_) => Class::Active,
                ext4::SeqClass::Unknown(_) => Class::Unknown,
            },
            Snapshot::Native(r) => match r.state {
                native::State::Clean => Class::Clean,
                native::State::Active => Class::Active,
                native::State::Maintenance => Class::Maintenance,
            },
        }
    }
}

/// The state class of a record, common to both formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Released.
    Clean,
    /// Held, or held by a host that stopped without releasing.
    Active,
    /// ext4: an e2fsprogs tool holds it (`SEQ_FSCK`).
    Fsck,
    /// ext4: a sequence above `SEQ_MAX` that is neither CLEAN nor FSCK.
    Unknown,
    /// native: reserved by an administrator.
    Maintenance,
}

impl Class {
    /// The name used in text and JSON output.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Class::Clean => "clean",
            Class::Active => "active",
            Class::Fsck => "fsck",
            Class::Unknown => "unknown",
            Class::Maintenance => "maintenance",
        }
    }
}

/// A record that does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// ext4 MMP block error.
    Ext4(ext4::BlockError),
    /// Native record error.
    Native(native::RecordError),
}

impl core::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Corrupt::Ext4(e) => e.fmt(f),
            Corrupt::Native(e) => e.fmt(f),
        }
    }
}

/// Parses a record of the given layout. Never panics.
///
/// # Errors
/// [`Corrupt`] when the bytes are not a valid record.
pub fn parse(layout: &Layout, bytes: &[u8]) -> Result<Snapshot, Corrupt> {
    match *layout {
        Layout::Ext4 { csum_seed, .. } => ext4::Block::parse(bytes, csum_seed)
            .map(Snapshot::Ext4)
            .map_err(Corrupt::Ext4),
        Layout::Native { .. } => native::Record::parse(bytes)
            .map(Snapshot::Native)
            .map_err(Corrupt::Native),
    }
}
