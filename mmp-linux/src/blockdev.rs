//! Block-device (and image-file) I/O that bypasses the page cache.
//!
//! [`Device`] opens a block device or a regular file and reads and writes it at byte offsets:
//!
//! * **Block devices** are always opened with `O_DIRECT` (plus `O_DSYNC` when writable), so
//!   every read comes from the medium and every write is durable before the call returns
//!   (ext4-mmp.md §8 items 1 and 2). They are never opened with `O_EXCL`: another process or
//!   host must be able to open the same device to watch the heartbeat.
//! * **Regular files** (images, tests) are opened the same way when their file system accepts
//!   `O_DIRECT`. If it refuses (`EINVAL` at open or at the first aligned read), the file is
//!   reopened buffered and [`IoMode::BufferedFallback`] applies: `fdatasync` after every write
//!   and `posix_fadvise(POSIX_FADV_DONTNEED)` before every read, so reads come from the medium
//!   as far as this host can arrange it.
//!
//! Requests go through an aligned bounce buffer, so callers may pass any buffer. Reads may
//! start and end anywhere. Writes must start on an [`Device::alignment`] boundary; a write
//! whose length is not a multiple of the alignment is completed by a read-modify-write of its
//! last sector (see [`Device::write_at`]). Nothing here panics on any input.

use std::fmt;
use std::fs;
use std::io;
use std::num::NonZeroU64;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;

/// Largest number of bytes moved by one system call; larger requests are split.
const CHUNK: usize = 64 * 1024;
/// Alignment of the bounce buffer in memory.
const MEM_ALIGN: usize = 4096;
/// Smallest alignment ever used for offsets and lengths.
const MIN_ALIGN: usize = 512;

/// A bounce buffer aligned for `O_DIRECT` without `unsafe`.
#[repr(C, align(4096))]
struct Bounce([u8; CHUNK]);

const _: () = assert!(core::mem::align_of::<Bounce>() == MEM_ALIGN);
const _: () = assert!(CHUNK.is_multiple_of(MEM_ALIGN));

impl Bounce {
    /// A bounce buffer: this thread's cached one when free, else a new one. The heartbeat
    /// thread does thousands of small I/Os a second; allocating and zeroing 64 KiB for each
    /// was most of its user-space CPU.
    fn get() -> BounceGuard {
        let cached = CACHED_BOUNCE.with(|c| c.borrow_mut().take());
        BounceGuard(Some(cached.unwrap_or_else(|| Box::new(Bounce([0; CHUNK])))))
    }
}

thread_local! {
    static CACHED_BOUNCE: std::cell::RefCell<Option<Box<Bounce>>> =
        const { std::cell::RefCell::new(None) };
}

/// A bounce buffer that goes back to the thread's cache when dropped. Its contents are
/// whatever the previous I/O left: every user reads into it before using the bytes.
struct BounceGuard(Option<Box<Bounce>>);

impl BounceGuard {
    fn buf(&mut self) -> &mut [u8; CHUNK] {
        &mut self
            .0
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
            .0
    }
}

impl Drop for BounceGuard {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            let _ = CACHED_BOUNCE.try_with(|c| *c.borrow_mut() = Some(b));
        }
    }
}

/// What kind of object a [`Device`] was opened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// A block device (`S_IFBLK`), e.g. `/dev/sdb` or `/dev/loop0`.
    BlockDevice,
    /// A regular file holding an image.
    RegularFile,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::BlockDevice => "block device",
            DeviceKind::RegularFile => "regular file",
        })
    }
}

/// How a [`Device`] talks to the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// `O_DIRECT` (and `O_DSYNC` when writable): no page cache, writes durable on return.
    Direct,
    /// A regular file whose file system refuses `O_DIRECT` (for example an old tmpfs): buffered
    /// I/O, `fdatasync` after every write and `posix_fadvise(DONTNEED)` before every read, so
    /// reads come from the medium as far as this host can arrange it. Another host sharing
    /// the file through a network file system may still see stale data.
    BufferedFallback,
}

impl fmt::Display for IoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoMode::Direct => "direct",
            IoMode::BufferedFallback => "buffered (O_DIRECT refused)",
        })
    }
}

/// Errors from [`Device`].
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path could not be opened or examined (missing, permission denied, ...).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path given to [`Device::open`].
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// The path names something that is neither a block device nor a regular file.
    #[error("{} is a {what}, not a block device or regular file", path.display())]
    NotADevice {
        /// The path given to [`Device::open`].
        path: PathBuf,
        /// What the path is instead ("directory", "character device", "fifo", ...).
        what: &'static str,
    },
    /// The device is smaller than one sector ([`Device::alignment`]).
    #[error("{} is too small: {size} bytes, at least {needed} needed", path.display())]
    TooSmall {
        /// The path given to [`Device::open`].
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The minimum size in bytes.
        needed: u64,
    },
    /// The request reaches beyond the end of the device.
    #[error(
        "request of {len} bytes at offset {offset} is beyond the end of the device ({size} bytes)"
    )]
    OutOfRange {
        /// Start of the request in bytes.
        offset: u64,
        /// Length of the request in bytes.
        len: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// A write does not start on a sector boundary.
    #[error(
        "write of {len} bytes at offset {offset} is not aligned to the {align}-byte sector size"
    )]
    Misaligned {
        /// Start of the request in bytes.
        offset: u64,
        /// Length of the request in bytes.
        len: u64,
        /// The required alignment ([`Device::alignment`]).
        align: usize,
    },
    /// A system call failed.
    #[error("{op} at offset {offset} failed: {source}")]
    Io {
        /// The operation ("read", "write", "fdatasync", "BLKGETSIZE64", ...).
        op: &'static str,
        /// The byte offset involved (0 for operations on the whole device).
        offset: u64,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },
    /// End of file (or of the device) was reached before the request was complete.
    #[error("short read at offset {offset}: got {got} of {want} bytes")]
    ShortRead {
        /// Start of the read that came up short, in bytes.
        offset: u64,
        /// Bytes obtained.
        got: usize,
        /// Bytes wanted.
        want: usize,
    },
    /// A write was attempted on a device opened read-only.
    #[error("{} was opened read-only; cannot write", path.display())]
    ReadOnly {
        /// The path given to [`Device::open`].
        path: PathBuf,
    },
}

impl DeviceError {
    /// The `errno` behind this error, if it came from a system call.
    #[must_use]
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            DeviceError::Open { source, .. } | DeviceError::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// Whether the operating system refused access (`EACCES` or `EPERM`).
    #[must_use]
    pub fn is_permission_denied(&self) -> bool {
        match self {
            DeviceError::Open { source, .. } | DeviceError::Io { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
                    || source.raw_os_error() == Some(Errno::PERM.raw_os_error())
            }
            _ => false,
        }
    }
}

/// The one `ioctl` rustix has no safe wrapper for.
#[allow(unsafe_code)]
mod ioctl {
    use std::os::fd::BorrowedFd;

    use rustix::ioctl::{Getter, Opcode, opcode};

    /// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)` from `<linux/fs.h>`; the kernel writes a
    /// `u64` whatever the width of `size_t`.
    pub(super) const BLKGETSIZE64: Opcode = opcode::read::<usize>(0x12, 114);

    /// Size of a block device in bytes.
    pub(super) fn blkgetsize64(fd: BorrowedFd<'_>) -> rustix::io::Result<u64> {
        // SAFETY: BLKGETSIZE64 is a read-only ioctl whose argument is a pointer to a u64 that
        // the kernel fills in; `Getter<_, u64>` provides exactly that buffer.
        unsafe { rustix::ioctl::ioctl(fd, Getter::<BLKGETSIZE64, u64>::new()) }
    }
}

/// Which opening strategy to use for regular files (a test seam: tmpfs accepts `O_DIRECT` on
/// current kernels, so the fallback cannot be reached otherwise).
#[derive(Clone, Copy, PartialEq, Eq)]
enum FilePolicy {
    /// `O_DIRECT` if the file system accepts it, else buffered.
    Auto,
    /// Behave as if the file system refused `O_DIRECT`.
    #[cfg(test)]
    ForceBuffered,
}

/// See [`Device::direct_span`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSpan {
    /// Aligned offset of the request.
    pub start: u64,
    /// Aligned length of the request.
    pub io_len: usize,
    /// Where the caller's bytes start within it.
    pub skip: usize,
}

/// An open block device or image file. See the [module documentation](self).
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
    path: PathBuf,
    kind: DeviceKind,
    io_mode: IoMode,
    writable: bool,
    size: u64,
    sector: u32,
    align: usize,
    rdev: Option<u64>,
    dev_ino: (u64, u64),
}

fn to_u64<T: Into<u64>>(v: T) -> u64 {
    v.into()
}

fn file_type_name(ft: FileType) -> &'static str {
    match ft {
        FileType::Directory => "directory",
        FileType::CharacterDevice => "character device",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::Symlink => "symbolic link",
        FileType::RegularFile => "regular file",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Rounds `v` down to a multiple of `align` (a power of two).
fn round_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

impl Device {
    /// Opens `path` (a block device or a regular file) for reading, and for writing when
    /// `writable`.
    ///
    /// Block devices get `O_DIRECT` (plus `O_DSYNC` when writable), never `O_EXCL`. Regular
    /// files get the same when their file system accepts it, else [`IoMode::BufferedFallback`].
    ///
    /// # Errors
    /// [`DeviceError::Open`] when the path cannot be examined or opened,
    /// [`DeviceError::NotADevice`] for directories, character devices, fifos and sockets,
    /// [`DeviceError::TooSmall`] when the device is smaller than one sector, and
    /// [`DeviceError::Io`] when querying its size or sector size fails.
    pub fn open(path: &Path, writable: bool) -> Result<Device, DeviceError> {
        Device::open_with(path, writable, FilePolicy::Auto)
    }

    fn open_with(path: &Path, writable: bool, policy: FilePolicy) -> Result<Device, DeviceError> {
        let open_err = |source: io::Error| DeviceError::Open {
            path: path.to_owned(),
            source,
        };
        // Classify before opening so that a fifo is never opened (that would block).
        let st = rustix::fs::stat(path).map_err(|e| open_err(e.into()))?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::BlockDevice => DeviceKind::BlockDevice,
            FileType::RegularFile => DeviceKind::RegularFile,
            other => {
                return Err(DeviceError::NotADevice {
                    path: path.to_owned(),
                    what: file_type_name(other),
                });
            }
        };

        let mut base = OFlags::CLOEXEC | OFlags::NOCTTY;
        base |= if writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let direct = if writable {
            OFlags::DIRECT | OFlags::DSYNC
        } else {
            OFlags::DIRECT
        };

        let (fd, io_mode) = match kind {
            DeviceKind::BlockDevice => (open_checked(path, base | direct, kind)?, IoMode::Direct),
            DeviceKind::RegularFile => {
                let try_direct = match policy {
                    FilePolicy::Auto => true,
                    #[cfg(test)]
                    FilePolicy::ForceBuffered => false,
                };
                let direct_fd = if try_direct {
                    match open_checked(path, base | direct, kind) {
                        Ok(fd) => Some(fd),
                        Err(DeviceError::Open { source, .. })
                            if source.raw_os_error() == Some(Errno::INVAL.raw_os_error()) =>
                        {
                            None
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    None
                };
                match direct_fd {
                    Some(fd) if direct_read_works(&fd) => (fd, IoMode::Direct),
                    _ => (open_checked(path, base, kind)?, IoMode::BufferedFallback),
                }
            }
        };

        if kind == DeviceKind::RegularFile {
            // No access-time updates: under relatime every heartbeat read after a write
            // would dirty the image's inode (a journal update per read). Best effort: only
            // the file's owner (or CAP_FOWNER) may set it.
            if let Ok(fl) = rustix::fs::fcntl_getfl(&fd) {
                let _ = rustix::fs::fcntl_setfl(&fd, fl | OFlags::NOATIME);
            }
        }
        let st = rustix::fs::fstat(&fd).map_err(|e| open_err(e.into()))?;
        let (size, sector, rdev) = match kind {
            DeviceKind::BlockDevice => {
                let size = ioctl::blkgetsize64(fd.as_fd()).map_err(|e| DeviceError::Io {
                    op: "BLKGETSIZE64",
                    offset: 0,
                    source: e.into(),
                })?;
                let sector = rustix::fs::ioctl_blksszget(&fd).map_err(|e| DeviceError::Io {
                    op: "BLKSSZGET",
                    offset: 0,
                    source: e.into(),
                })?;
                (size, sector, Some(to_u64(st.st_rdev)))
            }
            DeviceKind::RegularFile => {
                let size = u64::try_from(st.st_size).unwrap_or(0);
                (size, file_dio_align(&fd), None)
            }
        };
        let align = usize::try_from(sector).unwrap_or(usize::MAX).max(MIN_ALIGN);
        if !align.is_power_of_two() || align > CHUNK {
            return Err(DeviceError::Io {
                op: "BLKSSZGET",
                offset: 0,
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("unsupported logical sector size {sector}"),
                ),
            });
        }
        let sector = sector.max(512);
        let needed = align as u64;
        if size < needed {
            return Err(DeviceError::TooSmall {
                path: path.to_owned(),
                size,
                needed,
            });
        }
        Ok(Device {
            fd,
            path: path.to_owned(),
            kind,
            io_mode,
            writable,
            size,
            sector,
            align,
            rdev,
            dev_ino: (to_u64(st.st_dev), to_u64(st.st_ino)),
        })
    }

    /// The path this device was opened from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is a block device or a regular file.
    #[must_use]
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Whether I/O bypasses the page cache ([`IoMode::Direct`]) or not.
    #[must_use]
    pub fn io_mode(&self) -> IoMode {
        self.io_mode
    }

    /// Size in bytes (`BLKGETSIZE64` for block devices, `st_size` for files), as of
    /// [`Device::open`].
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Logical sector size: `BLKSSZGET` for block devices; for files the `STATX_DIOALIGN`
    /// offset alignment if the kernel reports one, else 512. Never less than 512.
    #[must_use]
    pub fn logical_sector_size(&self) -> u32 {
        self.sector
    }

    /// Alignment of write offsets and of every internal I/O: `max(logical_sector_size, 512)`.
    #[must_use]
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// The one aligned `O_DIRECT` request that performs a read (or write) of `len` bytes at
    /// `offset`, when a single request of at most `max` bytes can: [`IoMode::Direct`], in
    /// range, and for a write a writable device with `offset` and `len` aligned (no
    /// read-modify-write). `None` means: use [`Device::read_at`] / [`Device::write_at`].
    /// Used to batch heartbeat I/O ([`crate::uring`]).
    #[must_use]
    pub fn direct_span(
        &self,
        offset: u64,
        len: usize,
        write: bool,
        max: usize,
    ) -> Option<DirectSpan> {
        if self.io_mode != IoMode::Direct || len == 0 || self.check_range(offset, len).is_err() {
            return None;
        }
        let align = self.align as u64;
        let start = round_down(offset, align);
        let skip = usize::try_from(offset - start).ok()?;
        let io_len = skip
            .checked_add(len)?
            .checked_next_multiple_of(self.align)?;
        let aligned_write = skip == 0 && len.is_multiple_of(self.align);
        let fits = io_len <= max && start.checked_add(io_len as u64)? <= self.size;
        (fits && (!write || (self.writable && aligned_write))).then_some(DirectSpan {
            start,
            io_len,
            skip,
        })
    }

    /// The open descriptor (for [`crate::uring`]).
    #[must_use]
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `st_rdev` of a block device (for mount checks); `None` for regular files.
    #[must_use]
    pub fn dev_rdev(&self) -> Option<u64> {
        self.rdev
    }

    /// Reads `buf.len()` bytes at `offset`. Any offset and length are allowed: the covering
    /// sector-aligned range is read into an aligned bounce buffer and the requested bytes are
    /// copied out.
    ///
    /// # Errors
    /// [`DeviceError::OutOfRange`] if `offset + buf.len()` exceeds [`Device::size_bytes`];
    /// [`DeviceError::ShortRead`] if end of file comes first (a file shrank since open);
    /// [`DeviceError::Io`] when `pread` fails.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut bounce = Bounce::get();
        let mut done = 0usize;
        while done < buf.len() {
            // In range, so no overflow: offset + buf.len() <= size.
            let pos = offset + done as u64;
            let start = round_down(pos, self.align as u64);
            #[allow(
                clippy::cast_possible_truncation,
                reason = "below the alignment, a few KiB"
            )]
            let skip = (pos - start) as usize;
            let take = (CHUNK - skip).min(buf.len() - done);
            let want = skip + take;
            let io_len = want.next_multiple_of(self.align);
            self.fadvise_dontneed(start, io_len);
            let got = self.pread_full(&mut bounce.buf()[..io_len], start, want)?;
            if got < want {
                return Err(DeviceError::ShortRead {
                    offset: pos,
                    got: got.saturating_sub(skip),
                    want: take,
                });
            }
            buf[done..done + take].copy_from_slice(&bounce.buf()[skip..want]);
            done += take;
        }
        Ok(())
    }

    /// Writes `data` at `offset` and returns once it is durable (`O_DSYNC` in
    /// [`IoMode::Direct`], `fdatasync` in [`IoMode::BufferedFallback`]).
    ///
    /// `offset` must be a multiple of [`Device::alignment`]. If `data.len()` is not a multiple
    /// of it, the rest of the last sector is read first and written back unchanged
    /// (read-modify-write). Callers must therefore only write areas whose whole last sector
    /// belongs to them (an MMP area always spans whole sectors); a concurrent writer of the
    /// same sector's tail could otherwise be overwritten with what was read.
    ///
    /// The sectors covered (`offset` up to `offset + data.len()` rounded up to the alignment)
    /// must lie within [`Device::size_bytes`]; for a regular file whose size is not a multiple
    /// of the alignment the trailing partial sector cannot be written, so the file never grows.
    ///
    /// # Errors
    /// [`DeviceError::ReadOnly`], [`DeviceError::Misaligned`] and [`DeviceError::OutOfRange`]
    /// before anything is written; [`DeviceError::Io`] or [`DeviceError::ShortRead`] when the
    /// preserving read, the write or the flush fails (the device may then hold a mix of old
    /// and new sectors).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if !self.writable {
            return Err(DeviceError::ReadOnly {
                path: self.path.clone(),
            });
        }
        let align = self.align as u64;
        if !offset.is_multiple_of(align) {
            return Err(DeviceError::Misaligned {
                offset,
                len: data.len() as u64,
                align: self.align,
            });
        }
        let out_of_range = || DeviceError::OutOfRange {
            offset,
            len: data.len() as u64,
            size: self.size,
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(out_of_range)?;
        let cover_end = end
            .checked_next_multiple_of(align)
            .ok_or_else(out_of_range)?;
        if cover_end > self.size {
            return Err(out_of_range());
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut bounce = Bounce::get();
        for (i, piece) in data.chunks(CHUNK).enumerate() {
            // i * CHUNK <= data.len(), and offset + data.len() did not overflow.
            let pos = offset + (i * CHUNK) as u64;
            let io_len = piece.len().next_multiple_of(self.align);
            let buf = &mut bounce.buf()[..io_len];
            if io_len != piece.len() {
                // Preserve the tail of the last sector.
                let last = io_len - self.align;
                let last_pos = pos + last as u64;
                self.fadvise_dontneed(last_pos, self.align);
                let got = self.pread_full(&mut buf[last..], last_pos, self.align)?;
                if got < self.align {
                    return Err(DeviceError::ShortRead {
                        offset: last_pos,
                        got,
                        want: self.align,
                    });
                }
            }
            buf[..piece.len()].copy_from_slice(piece);
            self.pwrite_full(buf, pos)?;
        }
        if self.io_mode == IoMode::BufferedFallback {
            self.sync()?;
        }
        Ok(())
    }

    /// Flushes written data to the medium (`fdatasync`).
    ///
    /// # Errors
    /// [`DeviceError::Io`] when `fdatasync` fails.
    pub fn sync(&self) -> Result<(), DeviceError> {
        loop {
            match rustix::fs::fdatasync(&self.fd) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(DeviceError::Io {
                        op: "fdatasync",
                        offset: 0,
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Whether this device is mounted on this host, and where.
    ///
    /// For a block device: a mount in `/proc/self/mountinfo` whose device number equals
    /// [`Device::dev_rdev`], or whose source path is this block device (btrfs reports an
    /// anonymous device number). For a regular file: a loop device (or one of its partitions)
    /// backed by this file, per `/sys/block/loop*/loop/backing_file`, that is mounted.
    /// Only mounts visible in this process's mount namespace are found; a device used by
    /// device-mapper, md or another host is not detected.
    ///
    /// # Errors
    /// When `/proc/self/mountinfo` cannot be read.
    pub fn is_mounted(&self) -> io::Result<Option<String>> {
        let mountinfo = fs::read("/proc/self/mountinfo")?;
        let devs: Vec<u64> = match self.kind {
            DeviceKind::BlockDevice => self.rdev.into_iter().collect(),
            DeviceKind::RegularFile => self.backing_loop_devices(),
        };
        if devs.is_empty() {
            return Ok(None);
        }
        Ok(find_mount(&mountinfo, &devs))
    }

    /// Device numbers of loop devices (and their partitions) backed by this file.
    fn backing_loop_devices(&self) -> Vec<u64> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir("/sys/block") else {
            return out;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.as_bytes().starts_with(b"loop") {
                continue;
            }
            let dir = entry.path();
            let Ok(backing) = fs::read(dir.join("loop/backing_file")) else {
                continue;
            };
            let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
            let backing = Path::new(std::ffi::OsStr::from_bytes(backing));
            let same = fs::metadata(backing).is_ok_and(|m| (m.dev(), m.ino()) == self.dev_ino)
                || fs::canonicalize(&self.path).is_ok_and(|p| p == backing);
            if !same {
                continue;
            }
            if let Some(d) = read_sysfs_dev(&dir.join("dev")) {
                out.push(d);
            }
            // Partitions appear as subdirectories named like loop0p1.
            if let Ok(parts) = fs::read_dir(&dir) {
                for part in parts.flatten() {
                    if part.file_name().as_bytes().starts_with(name.as_bytes())
                        && let Some(d) = read_sysfs_dev(&part.path().join("dev"))
                    {
                        out.push(d);
                    }
                }
            }
        }
        out
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), DeviceError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DeviceError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Drops cached pages before a buffered read (best effort; dirty pages are never dropped,
    /// which is why buffered writes are followed by `fdatasync`).
    fn fadvise_dontneed(&self, offset: u64, len: usize) {
        if self.io_mode == IoMode::BufferedFallback {
            let len = NonZeroU64::new(len as u64);
            let _ = rustix::fs::fadvise(&self.fd, offset, len, rustix::fs::Advice::DontNeed);
        }
    }

    /// `pread` into `buf` at `offset` (both aligned) until at least `want` bytes are in,
    /// retrying `EINTR` and continuing after short reads; stops early at end of file.
    fn pread_full(&self, buf: &mut [u8], offset: u64, want: usize) -> Result<usize, DeviceError> {
        let mut got = 0usize;
        while got < want {
            let pos = offset + got as u64;
            match rustix::io::pread(&self.fd, &mut buf[got..], pos) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    // An unaligned count under O_DIRECT only happens at end of file; the next
                    // (unaligned) read would fail with EINVAL rather than report it.
                    if self.io_mode == IoMode::Direct && !got.is_multiple_of(self.align) {
                        break;
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(DeviceError::Io {
                        op: "read",
                        offset: pos,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(got)
    }

    /// `pwrite` all of `buf` at `offset`, retrying `EINTR` and continuing after short writes.
    fn pwrite_full(&self, buf: &[u8], offset: u64) -> Result<(), DeviceError> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            match rustix::io::pwrite(&self.fd, &buf[done..], pos) {
                Ok(0) => {
                    return Err(DeviceError::Io {
                        op: "write",
                        offset: pos,
                        source: io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(n) => {
                    done += n;
                    if self.io_mode == IoMode::Direct && !done.is_multiple_of(self.align) {
                        return Err(DeviceError::Io {
                            op: "write",
                            offset: pos,
                            source: io::Error::new(
                                io::ErrorKind::WriteZero,
                                format!("short direct write ({n} bytes)"),
                            ),
                        });
                    }
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(DeviceError::Io {
                        op: "write",
                        offset: pos,
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Opens `path` with `flags` (plus a temporary `O_NONBLOCK`, so that a path swapped for a fifo
/// cannot block) and checks it is still of the expected kind.
fn open_checked(path: &Path, flags: OFlags, kind: DeviceKind) -> Result<OwnedFd, DeviceError> {
    let open_err = |source: io::Error| DeviceError::Open {
        path: path.to_owned(),
        source,
    };
    let fd = rustix::fs::open(path, flags | OFlags::NONBLOCK, Mode::empty())
        .map_err(|e| open_err(e.into()))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| open_err(e.into()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    let expected = match kind {
        DeviceKind::BlockDevice => FileType::BlockDevice,
        DeviceKind::RegularFile => FileType::RegularFile,
    };
    if ft != expected {
        return Err(DeviceError::NotADevice {
            path: path.to_owned(),
            what: file_type_name(ft),
        });
    }
    let fl = rustix::fs::fcntl_getfl(&fd).map_err(|e| open_err(e.into()))?;
    rustix::fs::fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| open_err(e.into()))?;
    Ok(fd)
}

/// Whether an aligned `O_DIRECT` read works on `fd` (some file systems accept the flag at
/// open and refuse the I/O with `EINVAL`). Any other outcome counts as working: real I/O
/// errors are reported by the real reads.
fn direct_read_works(fd: &OwnedFd) -> bool {
    let mut bounce = Bounce::get();
    let len = file_dio_align(fd).clamp(512, u32::try_from(CHUNK).unwrap_or(u32::MAX)) as usize;
    loop {
        match rustix::io::pread(fd, &mut bounce.buf()[..len], 0) {
            Err(Errno::INTR) => {}
            Err(Errno::INVAL) => return false,
            _ => return true,
        }
    }
}

/// `STATX_DIOALIGN` offset alignment of an open file, else 512.
fn file_dio_align(fd: &OwnedFd) -> u32 {
    match rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) {
        Ok(stx)
            if StatxFlags::from_bits_retain(stx.stx_mask).contains(StatxFlags::DIOALIGN)
                && stx.stx_dio_offset_align != 0 =>
        {
            stx.stx_dio_offset_align.max(512)
        }
        _ => 512,
    }
}

/// Parses a sysfs `dev` file ("MAJOR:MINOR\n") into a device number.
fn read_sysfs_dev(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    parse_majmin(text.trim())
}

fn parse_majmin(s: &str) -> Option<u64> {
    let (maj, min) = s.split_once(':')?;
    Some(to_u64(rustix::fs::makedev(
        maj.parse().ok()?,
        min.parse().ok()?,
    )))
}

/// Undoes the octal escapes (`\040` etc.) of `/proc/self/mountinfo` fields (an escape
/// that is not a byte stays as it is).
#[must_use]
pub fn unescape_mount_field(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\'
            && let Some(oct) = field.get(i + 1..i + 4)
            && oct.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = oct
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Finds the first mount in `mountinfo` whose device number, or whose source block device,
/// is one of `devs`; returns its mount point.
fn find_mount(mountinfo: &[u8], devs: &[u64]) -> Option<String> {
    for line in mountinfo.split(|&b| b == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let mount_point = || String::from_utf8_lossy(&unescape_mount_field(fields[4])).into_owned();
        let majmin = std::str::from_utf8(fields[2]).ok().and_then(parse_majmin);
        if majmin.is_some_and(|d| devs.contains(&d)) {
            return Some(mount_point());
        }
        // After the optional fields: "-", fstype, source, super options.
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let Some(source) = fields.get(sep + 2) else {
            continue;
        };
        if source.first() != Some(&b'/') {
            continue;
        }
        let source = unescape_mount_field(source);
        if let Ok(st) = rustix::fs::stat(Path::new(std::ffi::OsStr::from_bytes(&source)))
            && FileType::from_raw_mode(st.st_mode) == FileType::BlockDevice
            && devs.contains(&to_u64(st.st_rdev))
        {
            return Some(mount_point());
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns")]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A temporary file removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(dir: &Path, contents: &[u8]) -> TempFile {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("mmp-blockdev-test-{}-{n}.img", std::process::id()));
            let mut f = fs::File::create(&path).unwrap();
            f.write_all(contents).unwrap();
            f.sync_all().unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn tmp_dir() -> PathBuf {
        std::env::temp_dir()
    }

    fn shm_dir() -> Option<PathBuf> {
        let p = PathBuf::from("/dev/shm");
        p.is_dir().then_some(p)
    }

    /// Exercises one opened file of 64 KiB filled with `pattern`.
    fn exercise(dev: &Device, path: &Path) {
        let size = 64 * 1024;
        let orig = pattern(size);
        assert_eq!(dev.size_bytes(), size as u64);
        assert_eq!(dev.kind(), DeviceKind::RegularFile);
        assert!(dev.logical_sector_size() >= 512);
        assert!(dev.alignment() >= 512 && dev.alignment().is_power_of_two());
        assert_eq!(dev.dev_rdev(), None);
        let a = dev.alignment();

        // Unaligned reads of all shapes.
        for (off, len) in [
            (0, 1),
            (1, 1),
            (511, 2),
            (100, 5000),
            (0, size),
            (size - 1, 1),
            (777, 0),
        ] {
            let mut buf = vec![0u8; len];
            dev.read_at(off as u64, &mut buf).unwrap();
            assert_eq!(buf, orig[off..off + len], "read {off}+{len}");
        }

        // Out of range reads.
        let mut buf = [0u8; 2];
        assert!(matches!(
            dev.read_at(size as u64 - 1, &mut buf),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.read_at(u64::MAX, &mut buf),
            Err(DeviceError::OutOfRange { .. })
        ));

        // Misaligned write rejected, nothing written.
        let err = dev.write_at(1, &[0xAA; 16]).unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::Misaligned {
                    offset: 1,
                    len: 16,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("offset 1"), "{err}");
        assert_eq!(fs::read(path).unwrap(), orig);

        // Out-of-range writes rejected, nothing written.
        assert!(matches!(
            dev.write_at(size as u64, &[1; 1]),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write_at((size - a) as u64, &vec![1; a + 1]),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.write_at(round_down(u64::MAX, a as u64), &[1; 1]),
            Err(DeviceError::OutOfRange { .. })
        ));
        assert_eq!(fs::read(path).unwrap(), orig);

        // Read-modify-write preserves the tail of the last sector.
        let mut expect = orig.clone();
        let data = vec![0x5A; a + 100];
        dev.write_at(a as u64, &data).unwrap();
        expect[a..2 * a + 100].copy_from_slice(&data);
        assert_eq!(fs::read(path).unwrap(), expect);
        let mut back = vec![0u8; 3 * a];
        dev.read_at(0, &mut back).unwrap();
        assert_eq!(back, expect[..3 * a]);

        // Whole-sector write at the very end, and a large multi-chunk write.
        let last = vec![0xC3; a];
        dev.write_at((size - a) as u64, &last).unwrap();
        expect[size - a..].copy_from_slice(&last);
        dev.write_at(0, &[]).unwrap();
        assert_eq!(fs::read(path).unwrap(), expect);

        dev.sync().unwrap();
    }

    fn open_both(dir: &Path, policy: FilePolicy) -> (TempFile, Device) {
        let tf = TempFile::new(dir, &pattern(64 * 1024));
        let dev = Device::open_with(&tf.0, true, policy).unwrap();
        (tf, dev)
    }

    #[test]
    fn direct_file_in_tmp() {
        let (tf, dev) = open_both(&tmp_dir(), FilePolicy::Auto);
        eprintln!(
            "{}: io_mode {}, alignment {}",
            tf.0.display(),
            dev.io_mode(),
            dev.alignment()
        );
        exercise(&dev, &tf.0);
    }

    #[test]
    fn direct_span_only_for_single_plain_requests() {
        let (_tf, dev) = open_both(&tmp_dir(), FilePolicy::Auto);
        if dev.io_mode() != IoMode::Direct {
            eprintln!("skipped: {} refuses O_DIRECT", tmp_dir().display());
            return;
        }
        let a = dev.alignment();
        let span = |off: u64, len: usize, write: bool| dev.direct_span(off, len, write, 4096);
        // An aligned record: read and write as they are.
        let whole = DirectSpan {
            start: a as u64,
            io_len: a,
            skip: 0,
        };
        assert_eq!(span(a as u64, a, false), Some(whole));
        assert_eq!(span(a as u64, a, true), Some(whole));
        // An unaligned read is widened to the covering sectors; a write is not batchable
        // (it needs read-modify-write).
        assert_eq!(
            span(a as u64 + 100, 200, false),
            Some(DirectSpan {
                start: a as u64,
                io_len: a,
                skip: 100
            })
        );
        assert_eq!(span(a as u64 + 100, 200, true), None);
        assert_eq!(span(0, a + 1, true), None);
        // Too large for the caller's buffer, out of range, empty.
        assert_eq!(span(0, 8192, false), None);
        assert_eq!(span(dev.size_bytes() - 100, 200, false), None);
        assert_eq!(span(0, 0, false), None);
        // Never for a buffered file or a read-only device's writes.
        let (_tf2, buffered) = open_both(&tmp_dir(), FilePolicy::ForceBuffered);
        assert_eq!(buffered.direct_span(0, 512, false, 4096), None);
        let ro = Device::open(&_tf.0, false).unwrap();
        assert!(ro.direct_span(0, a, false, 4096).is_some());
        assert_eq!(ro.direct_span(0, a, true, 4096), None);
    }

    #[test]
    fn shm_file() {
        let Some(dir) = shm_dir() else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let (tf, dev) = open_both(&dir, FilePolicy::Auto);
        // tmpfs accepts O_DIRECT since Linux 6.6; older kernels take the fallback.
        eprintln!(
            "{}: io_mode {}, alignment {}",
            tf.0.display(),
            dev.io_mode(),
            dev.alignment()
        );
        exercise(&dev, &tf.0);
    }

    #[test]
    fn buffered_fallback() {
        for dir in std::iter::once(tmp_dir()).chain(shm_dir()) {
            let (tf, dev) = open_both(&dir, FilePolicy::ForceBuffered);
            assert_eq!(dev.io_mode(), IoMode::BufferedFallback);
            exercise(&dev, &tf.0);
        }
    }

    #[test]
    fn large_write_spans_chunks() {
        let size = 3 * CHUNK + 4096;
        let tf = TempFile::new(&tmp_dir(), &vec![0u8; size]);
        let dev = Device::open(&tf.0, true).unwrap();
        let data = pattern(2 * CHUNK + 1000);
        dev.write_at(4096, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        dev.read_at(4096, &mut back).unwrap();
        assert_eq!(back, data);
        let on_disk = fs::read(&tf.0).unwrap();
        assert_eq!(&on_disk[4096..4096 + data.len()], &data[..]);
        assert!(on_disk[..4096].iter().all(|&b| b == 0));
        assert!(on_disk[4096 + data.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn read_only_device_refuses_writes() {
        let tf = TempFile::new(&tmp_dir(), &pattern(8192));
        let dev = Device::open(&tf.0, false).unwrap();
        let mut buf = [0u8; 10];
        dev.read_at(5, &mut buf).unwrap();
        assert_eq!(buf, pattern(8192)[5..15]);
        assert!(matches!(
            dev.write_at(0, &[0; 512]),
            Err(DeviceError::ReadOnly { .. })
        ));
    }

    #[test]
    fn unaligned_file_size() {
        let tf = TempFile::new(&tmp_dir(), &pattern(8192 + 100));
        let dev = Device::open(&tf.0, true).unwrap();
        let a = dev.alignment();
        let mut buf = [0u8; 50];
        dev.read_at(8192 + 50, &mut buf).unwrap();
        assert_eq!(buf, pattern(8192 + 100)[8192 + 50..]);
        // The trailing partial sector is not writable: the file never grows.
        assert!(matches!(
            dev.write_at(8192, &[1; 10]),
            Err(DeviceError::OutOfRange { .. })
        ));
        dev.write_at((8192 - a) as u64, &[1; 10]).unwrap();
        assert_eq!(fs::metadata(&tf.0).unwrap().len(), 8192 + 100);
    }

    #[test]
    fn too_small() {
        let tf = TempFile::new(&tmp_dir(), &[1; 100]);
        let err = Device::open(&tf.0, false).unwrap_err();
        assert!(
            matches!(err, DeviceError::TooSmall { size: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&tf.0.display().to_string()));
    }

    #[test]
    fn directory_is_not_a_device() {
        let err = Device::open(&tmp_dir(), true).unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::NotADevice {
                    what: "directory",
                    ..
                }
            ),
            "{err}"
        );
        let err = Device::open(Path::new("/dev/null"), false).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::NotADevice {
                what: "character device",
                ..
            }
        ));
        assert_eq!(err.raw_os_error(), None);
    }

    #[test]
    fn fifo_is_not_opened() {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = tmp_dir().join(format!("mmp-blockdev-fifo-{}-{n}", std::process::id()));
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = Device::open(&path, false).unwrap_err();
        let _ = fs::remove_file(&path);
        assert!(
            matches!(err, DeviceError::NotADevice { what: "fifo", .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_path() {
        let path = tmp_dir().join("mmp-blockdev-definitely-missing/x.img");
        let err = Device::open(&path, false).unwrap_err();
        assert!(matches!(err, DeviceError::Open { .. }), "{err}");
        assert_eq!(err.raw_os_error(), Some(Errno::NOENT.raw_os_error()));
        assert!(!err.is_permission_denied());
        assert!(
            err.to_string()
                .contains("mmp-blockdev-definitely-missing/x.img"),
            "{err}"
        );
    }

    #[test]
    fn blkgetsize64_opcode() {
        #[cfg(target_pointer_width = "64")]
        assert_eq!(ioctl::BLKGETSIZE64 as u64, 0x8008_1272);
        #[cfg(target_pointer_width = "32")]
        assert_eq!(ioctl::BLKGETSIZE64 as u64, 0x8004_1272);
    }

    #[test]
    fn mountinfo_parsing() {
        let info = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            30 22 7:3 / /mnt/with\\040space rw - ext4 /dev/loop3 rw\n\
            short line\n";
        let loop3 = to_u64(rustix::fs::makedev(7, 3));
        assert_eq!(
            find_mount(info, &[loop3]).as_deref(),
            Some("/mnt/with space")
        );
        assert_eq!(
            find_mount(info, &[to_u64(rustix::fs::makedev(8, 1))]).as_deref(),
            Some("/")
        );
        assert_eq!(find_mount(info, &[to_u64(rustix::fs::makedev(9, 9))]), None);
        assert_eq!(unescape_mount_field(b"a\\\\b\\04"), b"a\\\\b\\04");
    }

    #[test]
    fn temp_file_not_mounted() {
        let tf = TempFile::new(&tmp_dir(), &pattern(4096));
        let dev = Device::open(&tf.0, false).unwrap();
        assert_eq!(dev.is_mounted().unwrap(), None);
    }

    /// A loop device over a temporary file, detached on drop.
    struct Loop(PathBuf);

    impl Loop {
        fn attach(file: &Path) -> Result<Loop, String> {
            let out = Command::new("losetup")
                .args(["-f", "--show"])
                .arg(file)
                .output()
                .map_err(|e| format!("cannot run losetup: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "losetup failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if dev.is_empty() {
                return Err("losetup printed no device".into());
            }
            Ok(Loop(PathBuf::from(dev)))
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    #[test]
    fn loop_device_round_trip() {
        let size = 1024 * 1024;
        let tf = TempFile::new(&tmp_dir(), &pattern(size));
        let lo = match Loop::attach(&tf.0) {
            Ok(lo) => lo,
            Err(why) => {
                eprintln!("skipped loop_device_round_trip: {why}");
                return;
            }
        };
        let dev = Device::open(&lo.0, true).unwrap();
        assert_eq!(dev.kind(), DeviceKind::BlockDevice);
        assert_eq!(dev.io_mode(), IoMode::Direct);
        assert_eq!(dev.logical_sector_size(), 512);
        assert_eq!(dev.alignment(), 512);
        assert_eq!(dev.size_bytes(), size as u64);
        let rdev = dev.dev_rdev().unwrap();
        assert_eq!(rdev, fs::metadata(&lo.0).unwrap().rdev());

        let mut buf = vec![0u8; 3000];
        dev.read_at(1234, &mut buf).unwrap();
        assert_eq!(buf, pattern(size)[1234..4234]);

        let data = pattern(1500).iter().map(|b| b ^ 0xFF).collect::<Vec<_>>();
        dev.write_at(512 * 7, &data).unwrap();
        let mut back = vec![0u8; 2048];
        dev.read_at(512 * 7, &mut back).unwrap();
        assert_eq!(back[..1500], data[..]);
        assert_eq!(back[1500..], pattern(size)[512 * 7 + 1500..512 * 7 + 2048]);
        assert!(matches!(
            dev.write_at(100, &data),
            Err(DeviceError::Misaligned { .. })
        ));
        assert!(matches!(
            dev.write_at(size as u64 - 512, &data),
            Err(DeviceError::OutOfRange { .. })
        ));

        // A second opener (another "host") can open the same device at the same time.
        let second = Device::open(&lo.0, false).unwrap();
        let mut again = vec![0u8; 1500];
        second.read_at(512 * 7, &mut again).unwrap();
        assert_eq!(again, data);

        assert_eq!(dev.is_mounted().unwrap(), None);
        let file_dev = Device::open(&tf.0, false).unwrap();
        assert_eq!(file_dev.backing_loop_devices(), vec![rdev]);
        assert_eq!(file_dev.is_mounted().unwrap(), None);

        drop(second);
        drop(dev);
        drop(lo);
        let on_disk = fs::read(&tf.0).unwrap();
        assert_eq!(&on_disk[512 * 7..512 * 7 + 1500], &data[..]);
    }
}
