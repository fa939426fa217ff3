//! Another mmp holder of the same device on this host.
//!
//! Two holders on one host carry the same identity, so to the protocol the second one sees
//! "another node" writing the block. Before acquiring, `hold`, `run` and `mount` look at a
//! block that is not clean and carries this identity for a holder here: first in the state `mmp mount` keeps for `mmp list`, then among this host's
//! `mmp hold` and `mmp run` processes, one of which has the device open. What this user may
//! not read (another user's processes) is not seen; the protocol still refuses then.

use crate::resolve::{DeviceKey, device_key};
use crate::{Ctx, show};
use mmp_linux::target;
use std::path::{Path, PathBuf};

/// A process of this host that holds a device.
pub(crate) struct Holder {
    pub(crate) pid: u32,
    /// `mmp hold`, `mmp run`, or `mmp mount of DIR`.
    pub(crate) what: String,
}

/// The words of `/proc/PID/cmdline`.
fn cmdline(pid: u32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// `hold` or `run` when `pid` is an mmp process running that command.
fn mmp_command(pid: u32) -> Option<&'static str> {
    let args = cmdline(pid);
    let exe_is_mmp = args.first().is_some_and(|a| {
        Path::new(std::ffi::OsStr::new(&*String::from_utf8_lossy(a)))
            .file_name()
            .is_some_and(|n| n == "mmp")
    }) || std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .zip(std::env::current_exe().ok())
        .is_some_and(|(a, b)| a == b);
    if !exe_is_mmp {
        return None;
    }
    // The subcommand: the first word after the program that is not an option or an
    // option's value (global options: --hostid X, --nodename X, -v).
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_slice() {
            b"--hostid" | b"--nodename" => {
                it.next();
            }
            b"hold" => return Some("hold"),
            b"run" => return Some("run"),
            a if a.starts_with(b"-") => {}
            _ => return None,
        }
    }
    None
}

/// Whether `pid` has the device `key` open.
fn has_open(pid: u32, key: DeviceKey) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| device_key(&fd.path()) == Some(key))
}

/// The holder of `dev` on this host other than this process and its parent (`mmp mount`
/// starts the holder it then waits for), if there is one.
pub(crate) fn holder_of(dev: &Path, mounts: &[(u32, PathBuf, PathBuf)]) -> Option<Holder> {
    let key = device_key(dev)?;
    let me = std::process::id();
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get().unsigned_abs());
    for (pid, mmp_dev, dir) in mounts {
        if *pid != me && *pid != parent && device_key(mmp_dev) == Some(key) {
            return Some(Holder {
                pid: *pid,
                what: format!("`mmp mount` of {}", show(dir)),
            });
        }
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&p| p != me && p != parent)
        .collect();
    pids.sort_unstable();
    pids.into_iter().find_map(|pid| {
        let cmd = mmp_command(pid)?;
        has_open(pid, key).then(|| Holder {
            pid,
            what: format!("`mmp {cmd}`"),
        })
    })
}

/// Whether the MMP block of `t` was last written, and not released, with this process's
/// identity (node name, and hostid where the format records one).
fn ours(c: &Ctx, t: &target::Target) -> bool {
    let Ok(raw) = t.read_record() else {
        return false;
    };
    let Ok(snap) = mmp_core::machine::parse(&t.layout, &raw) else {
        return false;
    };
    snap.class() != mmp_core::machine::Class::Clean
        && snap.nodename() == c.nodename
        && snap.hostid().is_none_or(|h| h == c.hostid)
}

/// The refusal text when the block of `t` (opened as `dev`) carries this process's identity
/// and another mmp process on this host holds it: the second holder is told so, rather than
/// watching the block change and blaming another node.
pub(crate) fn held_here(c: &Ctx, t: &target::Target, dev: &Path) -> Option<String> {
    if !ours(c, t) {
        return None;
    }
    let h = holder_of(dev, &crate::cmd::mount::live_mounts())?;
    Some(format!(
        "{}: already held here by pid {} ({}): stop that one first, or use it \
         (`mmp list` shows what `mmp mount` holds)",
        show(dev),
        h.pid,
        h.what
    ))
}
