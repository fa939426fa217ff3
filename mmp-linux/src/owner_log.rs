//! The owner log (`mmp hold --owner-log`): [`OwnerLog`] wraps a fault hook and appends, to a
//! log outside the device, when this process starts and stops believing it owns each device
//! and an upper bound of its lease before every heartbeat write. The race harness proves from
//! these logs that no two processes' ownership intervals overlap.

use crate::blockdev::Device;
use crate::clock;
use crate::fault::{Fault, FaultHook, IoInfo};
use mmp_core::machine::{Event, Machine, Outcome, Phase};
use mmp_core::time::{Duration, Instant};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `CLOCK_MONOTONIC` in nanoseconds (the race checker's clock: the same for every process on
/// this machine).
#[must_use]
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// `CLOCK_MONOTONIC` nanoseconds of a machine [`Instant`] (`CLOCK_BOOTTIME` microseconds).
fn instant_to_mono_ns(t: Instant) -> u64 {
    let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let mono = mono_ns();
    let boot_ns = u64::try_from(boot.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(boot.tv_nsec).unwrap_or(0));
    // Boot time runs ahead of monotonic time by the time spent suspended.
    let offset = boot_ns.saturating_sub(mono);
    t.as_micros().saturating_mul(1000).saturating_sub(offset)
}

#[derive(Debug)]
struct Held {
    device: PathBuf,
    /// Largest lease end logged (boot clock).
    lease: Instant,
}

/// A hook that records ownership to a log outside the device and passes every I/O to an
/// inner hook. Lines (one `write(2)` each, `O_APPEND`), times in `CLOCK_MONOTONIC` ns:
///
/// ```text
/// acquired <device> <host> <pid> <t> <lease end>   the machine owns the device from t
/// lease    <device> <host> <pid> <t> <lease end>   before a heartbeat write: the lease it
///                                                  gives if it lands (an upper bound)
/// released <device> <host> <pid> <t> <lease end>   ownership ended at t (CLEAN follows)
/// lost     <device> <host> <pid> <t> <lease end>   the machine stopped at t (foreign write,
///                                                  fenced, failed release)
/// ```
///
/// A process may believe it owns a device from `acquired` until the earlier of its
/// `released`/`lost` time and its last lease end (which also bounds a process that was
/// killed and logged no end). Device paths and host names must not contain spaces.
pub struct OwnerLog {
    inner: Box<dyn FaultHook + Send>,
    file: std::fs::File,
    host: String,
    held: Vec<Held>,
}

impl std::fmt::Debug for OwnerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerLog")
            .field("host", &self.host)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl OwnerLog {
    /// Appends to `path` as `host`, passing every I/O on to `inner`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(
        path: &Path,
        host: &str,
        inner: Box<dyn FaultHook + Send>,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(OwnerLog {
            inner,
            file,
            host: host.replace(char::is_whitespace, "_"),
            held: Vec::new(),
        })
    }

    fn line(&mut self, kind: &str, dev: &Path, lease: Instant) {
        let s = format!(
            "{kind} {} {} {} {} {}\n",
            dev.display(),
            self.host,
            std::process::id(),
            mono_ns(),
            instant_to_mono_ns(lease)
        );
        let _ = self.file.write_all(s.as_bytes());
    }

    fn index(&self, dev: &Path) -> Option<usize> {
        self.held.iter().position(|h| h.device == dev)
    }
}

impl FaultHook for OwnerLog {
    fn before_io(&mut self, io: &IoInfo<'_>) -> Fault {
        let dev = io.device.path();
        if let Some(i) = self.index(dev) {
            let lease = self.held[i].lease;
            if !io.machine.is_held() {
                // Only the CLEAN write of a release comes after ownership ended.
                self.held.swap_remove(i);
                self.line("released", dev, lease);
            } else if io.write && io.machine.phase() == Phase::Held {
                // The lease this heartbeat gives if it lands starts before now.
                let window = io.machine.timing().map(|t| t.fail_window);
                let bound = clock::now().mono + window.unwrap_or(Duration::from_secs(3600));
                if bound > lease {
                    self.held[i].lease = bound;
                    self.line("lease", dev, bound);
                }
            }
        }
        self.inner.before_io(io)
    }

    fn on_event(&mut self, device: &Device, machine: &Machine, event: &Event) {
        let dev = device.path();
        match event {
            Event::Acquired => {
                let lease = machine
                    .owned_until()
                    .unwrap_or(Instant::from_micros(u64::MAX / 2));
                match self.index(dev) {
                    Some(i) => self.held[i].lease = lease,
                    None => self.held.push(Held {
                        device: dev.to_path_buf(),
                        lease,
                    }),
                }
                self.line("acquired", dev, lease);
            }
            Event::Finished(o) => {
                if let Some(i) = self.index(dev) {
                    let lease = self.held.swap_remove(i).lease;
                    let kind = if matches!(o, Outcome::Released) {
                        "released"
                    } else {
                        "lost"
                    };
                    self.line(kind, dev, lease);
                }
            }
            _ => {}
        }
        self.inner.on_event(device, machine, event);
    }
}
