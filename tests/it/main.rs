//! The one integration-test binary (ripgrep style): all cross-crate tests build here. It is a
//! test target of the `mmp-cli` package (`cargo test -p mmp-cli --test integration`), so
//! cargo builds `mmp` for it and names it in `CARGO_BIN_EXE_mmp` ([`mmp_bin`]).
//!
//! Tiers by name prefix: plain names run everywhere; `tool_*` need the e2fsprogs binaries;
//! `loop_*` need root and loop devices. A test that cannot run prints why and returns.
#![allow(
    clippy::cast_possible_truncation,
    reason = "simulator and test arithmetic on values bounded by construction"
)]
#![allow(
    clippy::disallowed_macros,
    reason = "mmp-cli's clippy.toml bans eprintln! for the binary (a closed stderr); tests print to the harness"
)]

mod admin;
mod c_api;
mod cli;
mod conventions;
mod crash;
mod format_doc;
mod fuzz_corpus;
mod generate;
mod heartbeat;
mod list;
mod loop_cli;
mod loop_integration;
mod loop_slow_device;
mod ocf_monitor;
mod pr;
mod race;
mod sim;
mod timing;
mod tool_ext4_codec;
mod tool_tune;

use std::path::{Path, PathBuf};

/// The `mmp` binary of this workspace, the one cargo built for this test
/// (`CARGO_BIN_EXE_mmp`: this test target belongs to the `mmp-cli` package).
#[must_use]
pub(crate) fn mmp_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mmp"))
}

/// `mmp` ([`mmp_bin`]) with a clean environment: every `MMP_*` variable of the test process
/// (hostid, fault injection, run directory, I/O mode) and `NOTIFY_SOCKET` removed, so a test
/// sets exactly what it means. The one command builder every test uses.
#[must_use]
pub(crate) fn mmp_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(mmp_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MMP_") {
            c.env_remove(k);
        }
    }
    c.env_remove("NOTIFY_SOCKET");
    c
}

/// Starts `mmp --hostid HOSTID --nodename NODE hold --no-realtime DEVICE` and returns once it
/// printed `acquired` (its stdout is consumed; stderr is discarded).
///
/// # Panics
/// If it cannot start or its first line is not `acquired ...`.
#[must_use]
pub(crate) fn hold_until_acquired(hostid: &str, node: &str, device: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = mmp_cmd()
        .env_remove("MMP_HOSTID")
        .args([
            "--hostid",
            hostid,
            "--nodename",
            node,
            "hold",
            "--no-realtime",
        ])
        .arg(device)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start mmp hold");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read mmp hold's stdout");
    assert!(line.starts_with("acquired"), "mmp hold: {line:?}");
    child
}
