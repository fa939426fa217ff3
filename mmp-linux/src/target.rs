//! Opening a device and finding its MMP record: ext4/ldiskfs with the MMP feature, or a
//! native area. Anything else is an error that names what was found.

use crate::blockdev::{Device, DeviceError};
use mmp_core::format::{self, Detected, ext4, native};
use mmp_core::machine::Layout;
use std::path::Path;

/// How many bytes from the start of a device are read to detect its format.
pub const PROBE_LEN: usize = 256 * 1024;

/// Which on-disk format a target uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// ext4/ldiskfs MMP block.
    Ext4,
    /// Native mmp area.
    Native,
}

impl Format {
    /// `ext4` or `native`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Ext4 => "ext4",
            Format::Native => "native",
        }
    }
}

/// Why a device could not be used as an MMP target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Opening or reading the device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The ext4 superblock is invalid, or MMP is not enabled on it.
    #[error("{path}: {error}{}", if *error == ext4::SuperblockError::MmpNotEnabled { " (turn it on with `mmp enable`, unmounted)" } else { "" })]
    Superblock {
        /// Device path.
        path: String,
        /// What is wrong.
        error: ext4::SuperblockError,
    },
    /// The MMP block lies beyond the end of the device.
    #[error("{path}: MMP block at byte {offset} lies beyond the end of the device ({size} bytes)")]
    BeyondDevice {
        /// Device path.
        path: String,
        /// MMP block offset.
        offset: u64,
        /// Device size.
        size: u64,
    },
    /// The file system block is smaller than the device's logical sector.
    #[error(
        "{path}: ext4 block size {block_size} is smaller than the device's logical sector size {sector}"
    )]
    SectorTooLarge {
        /// Device path.
        path: String,
        /// Block size.
        block_size: u32,
        /// Sector size.
        sector: u32,
    },
    /// Not ext4 with MMP and not a native area.
    #[error(
        "{path}: {what}; not an ext4/ldiskfs file system with MMP and not a native mmp area ({})",
        not_mmp_hint(what)
    )]
    NotMmp {
        /// Device path.
        path: String,
        /// What was found.
        what: String,
    },
    /// Too small to hold anything.
    #[error(
        "{path}: device is too small ({size} bytes) to hold an MMP area (at least {need} bytes)"
    )]
    TooSmall {
        /// Device path.
        path: String,
        /// Size found.
        size: u64,
        /// Size needed.
        need: u64,
    },
}

impl TargetError {
    /// The format the device was recognised as before the error, if any: ext4 for a bad
    /// superblock, MMP off, or an MMP block that cannot be used.
    #[must_use]
    pub const fn format(&self) -> Option<Format> {
        match self {
            Self::Superblock { .. } | Self::BeyondDevice { .. } | Self::SectorTooLarge { .. } => {
                Some(Format::Ext4)
            }
            Self::Device(_) | Self::NotMmp { .. } | Self::TooSmall { .. } => None,
        }
    }
}

/// What to do with a device that is neither ext4 with MMP nor a native area: a file system
/// found there (`what` is "found XFS", ...) has no MMP of its own and is protected through a
/// native area on another device; anything else can become an area.
fn not_mmp_hint(what: &str) -> &'static str {
    if what.starts_with("found ") {
        "a file system without MMP of its own is protected through a small native area on \
         another device: `mmp format AREA`, then `mmp mount --mmp-device AREA` or `--guard`"
    } else {
        "`mmp format` makes it a native area; `mmp enable` turns MMP on in an ext4 file system"
    }
}

/// An open device with its MMP layout resolved.
#[derive(Debug)]
pub struct Target {
    /// The open device.
    pub device: Device,
    /// Where the record is and how to read it.
    pub layout: Layout,
    /// Which format.
    pub format: Format,
    /// The ext4 superblock (ext4 only).
    pub superblock: Option<ext4::Superblock>,
    /// The first bytes of the device as read at open (for `dump`).
    pub superblock_bytes: Option<Vec<u8>>,
}

/// Opens `path` (read-write if `writable`) and resolves its MMP layout.
///
/// # Errors
/// [`TargetError`] naming the device and the problem; nothing is written.
pub fn open(path: &Path, writable: bool) -> Result<Target, TargetError> {
    let device = Device::open(path, writable)?;
    let shown = path.display().to_string();
    let size = device.size_bytes();
    let need = 2048u64;
    if size < need {
        return Err(TargetError::TooSmall {
            path: shown,
            size,
            need,
        });
    }
    let probe_len = usize::try_from(size.min(PROBE_LEN as u64)).unwrap_or(PROBE_LEN);
    let mut head = vec![0u8; probe_len];
    device.read_at(0, &mut head)?;
    match format::detect(&head) {
        Detected::Native => {
            if size < native::AREA_LEN {
                return Err(TargetError::TooSmall {
                    path: shown,
                    size,
                    need: native::AREA_LEN,
                });
            }
            Ok(Target {
                device,
                layout: Layout::Native { offset_bytes: 0 },
                format: Format::Native,
                superblock: None,
                superblock_bytes: None,
            })
        }
        Detected::Ext4 => {
            let sb_bytes = head[1024..2048].to_vec();
            let sb =
                ext4::Superblock::parse(&sb_bytes).map_err(|error| TargetError::Superblock {
                    path: shown.clone(),
                    error,
                })?;
            let offset = sb
                .mmp_offset_bytes()
                .map_err(|error| TargetError::Superblock {
                    path: shown.clone(),
                    error,
                })?;
            if offset.saturating_add(u64::from(sb.block_size())) > size {
                return Err(TargetError::BeyondDevice {
                    path: shown,
                    offset,
                    size,
                });
            }
            let sector = device.logical_sector_size();
            if sb.block_size() < sector {
                return Err(TargetError::SectorTooLarge {
                    path: shown,
                    block_size: sb.block_size(),
                    sector,
                });
            }
            let layout = Layout::Ext4 {
                offset_bytes: offset,
                csum_seed: sb.mmp_csum_seed(),
                update_interval_s: sb.mmp_update_interval,
            };
            Ok(Target {
                device,
                layout,
                format: Format::Ext4,
                superblock: Some(sb),
                superblock_bytes: Some(sb_bytes),
            })
        }
        Detected::Other(what) => Err(TargetError::NotMmp {
            path: shown,
            what: format!("found {what}"),
        }),
        Detected::Unknown => {
            let what = if head.iter().all(|&b| b == 0) {
                "the device is all zeros at the start".to_string()
            } else {
                "no known signature".to_string()
            };
            Err(TargetError::NotMmp { path: shown, what })
        }
    }
}

impl Target {
    /// Reads the raw record bytes (one read, no parsing).
    ///
    /// # Errors
    /// The device error.
    pub fn read_record(&self) -> Result<Vec<u8>, DeviceError> {
        let mut buf = vec![0u8; self.layout.record_len()];
        self.device.read_at(self.layout.offset_bytes(), &mut buf)?;
        Ok(buf)
    }
}
