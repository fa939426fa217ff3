//! Shared test harness.

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

/// Prints `SKIP: <reason>` for a test that cannot run on this machine; the caller then
/// returns (the test passes, and the reason shows with `--nocapture`).
pub fn skip(reason: &str) {
    eprintln!("SKIP: {reason}");
}
