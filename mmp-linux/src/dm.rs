//! Device-mapper control (the `/dev/mapper/control` ioctls of `<linux/dm-ioctl.h>`, version
//! 4): the local I/O cut-off of `mmp mount --cut-io`.
//!
//! A guarded data device is mounted through a one-target `linear` mapping that the holder
//! owns. When the holder loses the device (a foreign write, the lease ran out, a stall, a
//! reservation conflict), it swaps the mapping's table for the `error` target
//! ([`Mapping::cut`]): every I/O the file system submits from then on fails at once inside
//! this host, before the `--on-loss` action runs and whatever the file system or the
//! application does next. What was already in flight to the device cannot be recalled
//! (persistent reservations cover that, `super::pr`).
//!
//! The ioctl buffers are built and parsed by safe code here ([`Request`]); only the ioctl
//! call itself is in the small `ioctl` module.
//!
//! No `dmsetup` or libdevmapper is needed, and none of udev: the node is `/dev/dm-MINOR`
//! (devtmpfs), and `/dev/mapper/NAME` is made a symlink to it when udev does not make it.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod ioctl;

/// The control node.
pub const CONTROL: &str = "/dev/mapper/control";
/// Size of `struct dm_ioctl` (the fixed header every command carries).
pub const HEADER_LEN: usize = 312;
/// Size of `struct dm_target_spec` (before its parameter string).
pub const SPEC_LEN: usize = 40;
/// The interface version this code speaks (major 4; minor and patch are minimums).
pub const VERSION: [u32; 3] = [4, 0, 0];
/// `DM_NAME_LEN`.
pub const NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
pub const UUID_LEN: usize = 129;

/// `DM_SUSPEND_FLAG`.
pub const SUSPEND_FLAG: u32 = 1 << 1;
/// `DM_SKIP_LOCKFS_FLAG`: do not freeze the file system (which would flush it) on suspend.
pub const SKIP_LOCKFS_FLAG: u32 = 1 << 10;
/// `DM_NOFLUSH_FLAG`: suspend without flushing queued I/O (it is requeued, then hits the new
/// table).
pub const NOFLUSH_FLAG: u32 = 1 << 11;

/// Command numbers (`DM_*_CMD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cmd {
    /// `DM_VERSION`.
    Version = 0,
    /// `DM_DEV_CREATE`.
    DevCreate = 3,
    /// `DM_DEV_REMOVE`.
    DevRemove = 4,
    /// `DM_DEV_SUSPEND` (also resume, without [`SUSPEND_FLAG`]).
    DevSuspend = 6,
    /// `DM_DEV_STATUS`.
    DevStatus = 7,
    /// `DM_TABLE_LOAD`.
    TableLoad = 9,
}

/// Byte ranges of `struct dm_ioctl`.
mod field {
    pub(super) type Field = core::ops::Range<usize>;
    pub(super) const VERSION: Field = 0..12;
    pub(super) const DATA_SIZE: Field = 12..16;
    pub(super) const DATA_START: Field = 16..20;
    pub(super) const TARGET_COUNT: Field = 20..24;
    pub(super) const OPEN_COUNT: Field = 24..28;
    pub(super) const FLAGS: Field = 28..32;
    pub(super) const DEV: Field = 40..48;
    pub(super) const NAME: Field = 48..176;
    pub(super) const UUID: Field = 176..305;
}

/// A device-mapper operation that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmError {
    /// No `/dev/mapper/control`: the kernel has no device-mapper (`dm-mod` not loaded or not
    /// built).
    Unavailable(String),
    /// A name or parameter does not fit the interface.
    Invalid(String),
    /// The kernel speaks another major version.
    Version([u32; 3]),
    /// An ioctl failed with this errno.
    Ioctl {
        /// Which command.
        cmd: Cmd,
        /// The errno.
        errno: i32,
    },
    /// The device to map cannot be used.
    Device(String),
}

impl fmt::Display for DmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable(why) => write!(
                f,
                "device-mapper is not available ({why}): load dm-mod (`modprobe dm-mod`), or \
                 mount without --cut-io"
            ),
            Self::Invalid(m) | Self::Device(m) => f.write_str(m),
            Self::Version(v) => write!(
                f,
                "the kernel's device-mapper interface is version {}.{}.{}, not 4.x",
                v[0], v[1], v[2]
            ),
            Self::Ioctl { cmd, errno } => write!(
                f,
                "device-mapper {cmd:?} failed: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

impl std::error::Error for DmError {}

/// One command's buffer: the header, then the payload at [`HEADER_LEN`].
#[derive(Clone, Debug)]
pub struct Request {
    buf: Vec<u8>,
}

fn put_u32(b: &mut [u8], r: core::ops::Range<usize>, v: u32) {
    b[r].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[r]);
    u32::from_ne_bytes(a)
}

fn put_str(b: &mut [u8], r: core::ops::Range<usize>, s: &str, what: &str) -> Result<(), DmError> {
    // Room for the terminating NUL.
    if s.len() >= r.len() || s.bytes().any(|c| c == 0) {
        return Err(DmError::Invalid(format!(
            "{what} {s:?} is too long or contains NUL (at most {} bytes)",
            r.len() - 1
        )));
    }
    b[r.start..r.start + s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

impl Request {
    /// A request for the device `name` (empty: none) with `payload_room` bytes after the
    /// header for the kernel's answer or our table.
    ///
    /// # Errors
    /// [`DmError::Invalid`] for a name longer than 127 bytes.
    pub fn new(name: &str, flags: u32, payload_room: usize) -> Result<Self, DmError> {
        let len = (HEADER_LEN + payload_room).next_multiple_of(8);
        let mut buf = vec![0u8; len];
        for (i, v) in VERSION.iter().enumerate() {
            put_u32(
                &mut buf,
                field::VERSION.start + 4 * i..field::VERSION.start + 4 * i + 4,
                *v,
            );
        }
        let size = u32::try_from(len).map_err(|_| DmError::Invalid("request too large".into()))?;
        put_u32(&mut buf, field::DATA_SIZE, size);
        put_u32(
            &mut buf,
            field::DATA_START,
            u32::try_from(HEADER_LEN).unwrap_or(u32::MAX),
        );
        put_u32(&mut buf, field::FLAGS, flags);
        put_str(&mut buf, field::NAME, name, "device-mapper name")?;
        Ok(Self { buf })
    }

    /// Sets the uuid.
    ///
    /// # Errors
    /// [`DmError::Invalid`] for a uuid longer than 128 bytes.
    pub fn uuid(mut self, uuid: &str) -> Result<Self, DmError> {
        put_str(&mut self.buf, field::UUID, uuid, "device-mapper uuid")?;
        Ok(self)
    }

    /// A table of one target: `sector_start` 0, `length` sectors, `kind` (`linear`,
    /// `error`), `params`.
    ///
    /// # Errors
    /// [`DmError::Invalid`] for a target name over 15 bytes.
    pub fn table(name: &str, length: u64, kind: &str, params: &str) -> Result<Self, DmError> {
        let spec_len = (SPEC_LEN + params.len() + 1).next_multiple_of(8);
        let mut r = Self::new(name, 0, spec_len)?;
        put_u32(&mut r.buf, field::TARGET_COUNT, 1);
        let s = HEADER_LEN;
        r.buf[s..s + 8].copy_from_slice(&0u64.to_ne_bytes());
        r.buf[s + 8..s + 16].copy_from_slice(&length.to_ne_bytes());
        // `next` on a load: from this spec to the next one (none follows).
        let next =
            u32::try_from(spec_len).map_err(|_| DmError::Invalid("params too long".into()))?;
        put_u32(&mut r.buf, s + 20..s + 24, next);
        put_str(&mut r.buf, s + 24..s + 40, kind, "target type")?;
        r.buf[s + SPEC_LEN..s + SPEC_LEN + params.len()].copy_from_slice(params.as_bytes());
        Ok(r)
    }

    /// The bytes handed to the kernel.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The version the kernel answered.
    #[must_use]
    pub fn version(&self) -> [u32; 3] {
        let v = field::VERSION.start;
        [
            get_u32(&self.buf, v..v + 4),
            get_u32(&self.buf, v + 4..v + 8),
            get_u32(&self.buf, v + 8..v + 12),
        ]
    }

    /// The device number the kernel answered (`huge_encode_dev` form), as (major, minor).
    #[must_use]
    pub fn dev(&self) -> (u32, u32) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.buf[field::DEV]);
        let d = u64::from_ne_bytes(a);
        let major = u32::try_from((d >> 8) & 0xfff).unwrap_or(0);
        let minor = u32::try_from((d & 0xff) | ((d >> 12) & 0xfff_ff00)).unwrap_or(0);
        (major, minor)
    }

    /// Open count the kernel answered (DEV_STATUS).
    #[must_use]
    pub fn open_count(&self) -> i32 {
        get_u32(&self.buf, field::OPEN_COUNT) as i32
    }

    /// Flags the kernel answered.
    #[must_use]
    pub fn flags(&self) -> u32 {
        get_u32(&self.buf, field::FLAGS)
    }

    fn run(&mut self, ctl: &File, cmd: Cmd) -> Result<(), DmError> {
        ioctl::run(ctl.as_fd(), cmd, &mut self.buf).map_err(|e| DmError::Ioctl {
            cmd,
            errno: e.raw_os_error(),
        })
    }
}

/// The control node, opened.
fn control() -> Result<File, DmError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONTROL)
        .map_err(|e| DmError::Unavailable(format!("{CONTROL}: {e}")))?;
    let mut r = Request::new("", 0, 0)?;
    r.run(&f, Cmd::Version)?;
    let v = r.version();
    if v[0] != VERSION[0] {
        return Err(DmError::Version(v));
    }
    Ok(f)
}

/// Whether this kernel has device-mapper (the control node answers).
///
/// # Errors
/// [`DmError::Unavailable`] or [`DmError::Version`].
pub fn available() -> Result<(), DmError> {
    control().map(|_| ())
}

/// A mapping this host made over a data device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The device-mapper name (`mmp-...`).
    pub name: String,
    /// The node to mount: `/dev/dm-MINOR`.
    pub node: PathBuf,
    /// Length in 512-byte sectors.
    pub sectors: u64,
}

/// The name `mmp mount --cut-io` gives the mapping of `data`: `mmp-` and the device's
/// name with `/` as `-` (`/dev/sdb` → `mmp-sdb`, `/dev/mapper/lun0` → `mmp-mapper-lun0`).
#[must_use]
pub fn name_for(data: &Path) -> String {
    let s = data.to_string_lossy();
    let s = s.strip_prefix("/dev/").unwrap_or(&s);
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    n.truncate(NAME_LEN - 1 - 4);
    format!("mmp-{}", n.trim_matches('-'))
}

impl Mapping {
    /// Creates `name` as a `linear` mapping of the whole block device `data` and activates
    /// it. `/dev/mapper/NAME` is made a symlink to the node when udev did not make it.
    ///
    /// # Errors
    /// [`DmError::Unavailable`] without device-mapper; [`DmError::Device`] when `data` is
    /// not a block device; [`DmError::Ioctl`] (e.g. `EBUSY` when the name exists).
    pub fn create(name: &str, data: &Path) -> Result<Self, DmError> {
        let m = std::fs::metadata(data)
            .map_err(|e| DmError::Device(format!("{}: {e}", data.display())))?;
        if !m.file_type().is_block_device() {
            return Err(DmError::Device(format!(
                "{}: not a block device (--cut-io maps a block device)",
                data.display()
            )));
        }
        let rdev = m.rdev();
        let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
        let dev = crate::blockdev::Device::open(data, false)
            .map_err(|e| DmError::Device(format!("{}: {e}", data.display())))?;
        let sectors = dev.size_bytes() / 512;
        drop(dev);
        if sectors == 0 {
            return Err(DmError::Device(format!("{}: empty device", data.display())));
        }
        let ctl = control()?;
        let mut create = Request::new(name, 0, 0)?.uuid(&format!("mmp-cut-{name}"))?;
        create.run(&ctl, Cmd::DevCreate)?;
        let made = (|| {
            let mut load = Request::table(name, sectors, "linear", &format!("{maj}:{min} 0"))?;
            load.run(&ctl, Cmd::TableLoad)?;
            let mut resume = Request::new(name, 0, 0)?;
            resume.run(&ctl, Cmd::DevSuspend)?;
            Ok(resume.dev())
        })();
        let (_, minor) = match made {
            Ok(d) => d,
            Err(e) => {
                let _ = Request::new(name, 0, 0).and_then(|mut r| r.run(&ctl, Cmd::DevRemove));
                return Err(e);
            }
        };
        let node = PathBuf::from(format!("/dev/dm-{minor}"));
        // devtmpfs makes the node; give it a moment.
        let t = Instant::now();
        while !node.exists() && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let link = Path::new("/dev/mapper").join(name);
        if !link.exists() {
            let _ = std::os::unix::fs::symlink(format!("../dm-{minor}"), &link);
        }
        Ok(Self {
            name: name.to_owned(),
            node,
            sectors,
        })
    }

    /// Finds an existing mapping by name.
    ///
    /// # Errors
    /// [`DmError::Ioctl`] with `ENXIO` when there is none.
    pub fn find(name: &str) -> Result<Self, DmError> {
        let ctl = control()?;
        let mut st = Request::new(name, 0, 0)?;
        st.run(&ctl, Cmd::DevStatus)?;
        let (_, minor) = st.dev();
        let sectors = std::fs::read_to_string(format!("/sys/block/dm-{minor}/size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            name: name.to_owned(),
            node: PathBuf::from(format!("/dev/dm-{minor}")),
            sectors,
        })
    }

    /// Cuts every further I/O: loads the `error` target, suspends without flushing or
    /// freezing the file system (queued I/O is requeued), resumes with the new table.
    /// I/O submitted after the suspend began fails; I/O already sent to the device is not
    /// recalled. A suspend waits for that in-flight I/O, so on a stalled path this call can
    /// block: run it where blocking does no harm (the holder runs it on a thread of its own
    /// and goes on with the loss action after a bound).
    ///
    /// # Errors
    /// [`DmError::Ioctl`] when a step fails.
    pub fn cut(&self) -> Result<(), DmError> {
        let ctl = control()?;
        let mut load = Request::table(&self.name, self.sectors, "error", "")?;
        load.run(&ctl, Cmd::TableLoad)?;
        let mut suspend = Request::new(
            &self.name,
            SUSPEND_FLAG | NOFLUSH_FLAG | SKIP_LOCKFS_FLAG,
            0,
        )?;
        suspend.run(&ctl, Cmd::DevSuspend)?;
        let mut resume = Request::new(&self.name, 0, 0)?;
        resume.run(&ctl, Cmd::DevSuspend)
    }

    /// Removes the mapping (after the file system on it was unmounted) and its
    /// `/dev/mapper` symlink.
    ///
    /// # Errors
    /// [`DmError::Ioctl`] (`EBUSY` while it is still open or mounted).
    pub fn remove(&self) -> Result<(), DmError> {
        let ctl = control()?;
        let mut r = Request::new(&self.name, 0, 0)?;
        r.run(&ctl, Cmd::DevRemove)?;
        let link = Path::new("/dev/mapper").join(&self.name);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(link);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_the_kernels() {
        let r = Request::new("mmp-sdb", SUSPEND_FLAG, 0).unwrap();
        let b = r.bytes();
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(HEADER_LEN % 8, 0, "the payload starts 8-aligned");
        assert_eq!(&b[0..12], &[4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(get_u32(b, 12..16), 312, "data_size");
        assert_eq!(get_u32(b, 16..20), 312, "data_start");
        assert_eq!(get_u32(b, 28..32), 2, "flags");
        assert_eq!(&b[48..56], b"mmp-sdb\0");
        assert!(b[56..176].iter().all(|&c| c == 0));
        assert_eq!(
            field::UUID.end + 7,
            HEADER_LEN,
            "char data[7] closes the struct"
        );
    }

    #[test]
    fn a_table_of_one_target() {
        let r = Request::table("mmp-sdb", 2048, "linear", "8:16 0").unwrap();
        let b = r.bytes();
        // params "8:16 0" + NUL = 7 bytes: spec 40 + 7 rounded up to 48.
        assert_eq!(b.len(), HEADER_LEN + 48);
        assert_eq!(get_u32(b, 12..16) as usize, b.len());
        assert_eq!(get_u32(b, 20..24), 1, "target_count");
        let s = HEADER_LEN;
        assert_eq!(&b[s..s + 8], &0u64.to_ne_bytes(), "sector_start");
        assert_eq!(&b[s + 8..s + 16], &2048u64.to_ne_bytes(), "length");
        assert_eq!(
            get_u32(b, s + 20..s + 24),
            48,
            "next: to the end of this spec"
        );
        assert_eq!(&b[s + 24..s + 31], b"linear\0");
        assert_eq!(&b[s + 40..s + 47], b"8:16 0\0");
        let e = Request::table("mmp-sdb", 2048, "error", "").unwrap();
        assert_eq!(e.bytes().len(), HEADER_LEN + 48, "40 + NUL rounded up");
        assert_eq!(&e.bytes()[s + 24..s + 30], b"error\0");
    }

    #[test]
    fn bad_names_are_errors_not_panics() {
        let long = "x".repeat(128);
        assert!(matches!(
            Request::new(&long, 0, 0),
            Err(DmError::Invalid(_))
        ));
        assert!(Request::new(&"x".repeat(127), 0, 0).is_ok());
        assert!(matches!(
            Request::new("a\0b", 0, 0),
            Err(DmError::Invalid(_))
        ));
        assert!(matches!(
            Request::table("n", 1, "a-very-long-target-name", ""),
            Err(DmError::Invalid(_))
        ));
        let r = Request::new("n", 0, 0).unwrap();
        assert!(matches!(r.uuid(&"u".repeat(129)), Err(DmError::Invalid(_))));
    }

    #[test]
    fn device_numbers_decode_as_the_kernel_encodes_them() {
        let mut r = Request::new("n", 0, 0).unwrap();
        // huge_encode_dev(MKDEV(253, 3)) = 3 | 253 << 8; minor 300: low byte + high bits << 12.
        r.buf[40..48].copy_from_slice(&((253u64 << 8) | 3).to_ne_bytes());
        assert_eq!(r.dev(), (253, 3));
        let minor = 300u64;
        r.buf[40..48].copy_from_slice(
            &((minor & 0xff) | (253 << 8) | ((minor & !0xff) << 12)).to_ne_bytes(),
        );
        assert_eq!(r.dev(), (253, 300));
    }

    #[test]
    fn names_for_data_devices() {
        assert_eq!(name_for(Path::new("/dev/sdb")), "mmp-sdb");
        assert_eq!(name_for(Path::new("/dev/mapper/lun0")), "mmp-mapper-lun0");
        assert_eq!(
            name_for(Path::new("/dev/disk/by-id/x:y")),
            "mmp-disk-by-id-x-y"
        );
        assert!(name_for(Path::new(&format!("/dev/{}", "a".repeat(300)))).len() < NAME_LEN);
    }

    #[test]
    fn without_device_mapper_the_error_says_so() {
        if Path::new(CONTROL).exists() {
            return; // a kernel with device-mapper: nothing to show here
        }
        let e = available().unwrap_err();
        assert!(matches!(e, DmError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().contains("modprobe dm-mod"), "{e}");
    }
}
