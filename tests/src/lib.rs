//! Shared test harness.
#![allow(
    clippy::cast_possible_truncation,
    reason = "simulator and test arithmetic on values bounded by construction"
)]

pub mod forge;
pub mod fuzz_bodies;
pub mod lab;
pub mod sim;

use std::path::{Path, PathBuf};

/// Finds the executable `name` on `PATH`, then in `/sbin` and `/usr/sbin` (where e2fsprogs
/// lives, often missing from a non-root `PATH`). `None` when it is nowhere.
#[must_use]
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/sbin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Prints `SKIP: <reason>` for a test that cannot run on this machine (no root, no loop
/// devices, a peer tool missing); the caller then returns (the test passes, and the reason
/// shows with `--nocapture`).
///
/// # Panics
/// With `MMP_TESTS_STRICT=1`, which `.ci/run` sets when it runs as root with every tool
/// installed: there, a skip means a broken environment or a broken test, and must not pass
/// as green.
pub fn skip(reason: &str) {
    if std::env::var_os("MMP_TESTS_STRICT").is_some_and(|v| v == "1") {
        panic!("SKIP refused (MMP_TESTS_STRICT=1: root, every tool installed): {reason}");
    }
    eprintln!("SKIP: {reason}");
}

/// Like [`skip`], for the few checks that depend on how this machine is set up rather than
/// on privileges or tools (never fatal).
pub fn skip_optional(reason: &str) {
    eprintln!("SKIP: {reason}");
}

/// Whether this process runs as root (loop devices, mounts).
#[must_use]
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A loop device attached to an image file, detached on drop.
#[derive(Debug)]
pub struct Loop {
    /// `/dev/loopN`.
    pub dev: PathBuf,
}

impl Loop {
    /// `losetup -f --show FILE`; `None` (with a printed reason) when that is impossible here.
    #[must_use]
    pub fn attach(file: &Path) -> Option<Loop> {
        if !is_root() {
            skip("loop devices need root");
            return None;
        }
        let Some(losetup) = find_tool("losetup") else {
            skip("losetup not found");
            return None;
        };
        let out = std::process::Command::new(losetup)
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            skip(&format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string());
        Some(Loop { dev })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(losetup) = find_tool("losetup") {
            let _ = std::process::Command::new(losetup)
                .arg("-d")
                .arg(&self.dev)
                .status();
        }
    }
}

/// SIGTERM to `child`, then its exit code.
///
/// # Panics
/// If waiting fails.
pub fn term_and_wait(child: &mut std::process::Child) -> Option<i32> {
    if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    child.wait().expect("wait").code()
}
