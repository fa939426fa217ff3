//! Self-fencing with a watchdog device (`/dev/watchdog`): armed with a timeout shorter than
//! the window other hosts wait, petted only after a successful heartbeat, closed with the
//! magic character `V` on a clean release. If the process hangs, or a device is lost, the
//! pets stop and the watchdog resets the machine before another host can take the device.
//!
//! A regular file or FIFO may stand in for the device in tests: it is not configured with
//! ioctls, and each pet writes one byte `.` to it, the magic close a `V`.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What kind of file the watchdog is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A character device driven by the kernel watchdog API.
    Device,
    /// A regular file or FIFO (tests): pets are bytes written to it.
    Fake,
}

/// An armed watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
    kind: Kind,
    timeout: Duration,
}

mod ioctl {
    #![allow(unsafe_code)]
    use rustix::ioctl::{Setter, Updater, opcode};
    use std::os::fd::AsFd;

    // <linux/watchdog.h>: WDIOC_SETTIMEOUT = _IOWR('W', 6, int), WDIOC_KEEPALIVE =
    // _IOR('W', 5, int).
    const SETTIMEOUT: rustix::ioctl::Opcode = opcode::read_write::<i32>(b'W', 6);
    const KEEPALIVE: rustix::ioctl::Opcode = opcode::read::<i32>(b'W', 5);

    pub(super) fn set_timeout(fd: impl AsFd, secs: i32) -> rustix::io::Result<i32> {
        let mut v = secs;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int, which `v` is, and the opcode
        // encodes that size.
        unsafe { rustix::ioctl::ioctl(fd, Updater::<SETTIMEOUT, i32>::new(&mut v))? };
        Ok(v)
    }

    pub(super) fn keepalive(fd: impl AsFd) -> rustix::io::Result<()> {
        // SAFETY: WDIOC_KEEPALIVE ignores its argument; we pass an int as the opcode says.
        unsafe { rustix::ioctl::ioctl(fd, Setter::<KEEPALIVE, i32>::new(0)) }
    }
}

impl Watchdog {
    /// Opens and arms the watchdog at `path` with `timeout` (whole seconds, at least 1).
    ///
    /// # Errors
    /// Opening fails, the device refuses the timeout, or it grants a longer one than asked
    /// (that would be unsafe: the error says so and the watchdog is closed with the magic
    /// character so it does not fire).
    pub fn open(path: &Path, timeout: Duration) -> io::Result<Watchdog> {
        let meta = std::fs::metadata(path)?;
        let kind = if meta.file_type().is_char_device() {
            Kind::Device
        } else {
            Kind::Fake
        };
        let file = OpenOptions::new()
            .write(true)
            .append(kind == Kind::Fake)
            .open(path)?;
        let secs = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        let mut wd = Watchdog {
            file,
            path: path.to_path_buf(),
            kind,
            timeout: Duration::from_secs(u64::try_from(secs).unwrap_or(1)),
        };
        if kind == Kind::Device {
            match ioctl::set_timeout(&wd.file, secs) {
                Ok(granted) if granted <= secs => {
                    wd.timeout = Duration::from_secs(u64::try_from(granted.max(1)).unwrap_or(1));
                }
                Ok(granted) => {
                    let _ = wd.file.write_all(b"V");
                    return Err(io::Error::other(format!(
                        "{}: watchdog granted a {granted} s timeout, longer than the {secs} s the MMP timing allows",
                        path.display()
                    )));
                }
                Err(e) => {
                    let _ = wd.file.write_all(b"V");
                    return Err(io::Error::other(format!(
                        "{}: WDIOC_SETTIMEOUT: {e}",
                        path.display()
                    )));
                }
            }
        }
        Ok(wd)
    }

    /// The armed timeout.
    #[must_use]
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of watchdog this is.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Pets the watchdog.
    ///
    /// # Errors
    /// The ioctl or write failed.
    pub fn pet(&mut self) -> io::Result<()> {
        match self.kind {
            Kind::Device => ioctl::keepalive(&self.file).map_err(io::Error::from),
            Kind::Fake => self.file.write_all(b"."),
        }
    }

    /// Magic close: tells the driver the stop is deliberate, so it does not fire.
    ///
    /// # Errors
    /// The write failed (the watchdog may then fire).
    pub fn close_clean(mut self) -> io::Result<()> {
        self.file.write_all(b"V")
    }
}
