//! `mmp hold` and `mmp run`: acquire every device concurrently on the heartbeat engine,
//! keep them, react to loss, release CLEAN at the end.
//!
//! The steps, each in its own module: [`setup`] checks the options and opens everything
//! before anything is written; [`holder`] runs the engine's loop as named steps on a
//! [`holder::Holder`] and finishes; [`fence`] is `--fence scsi-pr`, [`loss`] what happens on
//! loss, [`run`] the command of `mmp run`, [`report`] what the holder writes for others.

mod fence;
mod holder;
mod loss;
mod report;
mod run;
mod setup;

use crate::exit::Exit;
use crate::{Ctx, show};
use clap::Args;
use holder::Holder;
use report::StateFile;
use setup::{Early, Setup};
use std::path::PathBuf;

/// Options shared by `hold` and `run`.
#[derive(Args, Debug, Clone)]
pub(crate) struct HoldOpts {
    /// Take devices last held by another host and not released (the activity test still
    /// runs: a live owner is never taken).
    #[arg(long)]
    force: bool,
    /// Queue: while another host holds a device, wait until it releases it (like
    /// `flock -w`) instead of refusing; SECONDS bounds the wait (exit 1 when it runs out),
    /// none means forever. A standby that watched the release takes the device after two
    /// intervals. A dead owner's device is still taken only with --force (after the full
    /// activity test).
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true,
          value_parser = crate::args::parse_wait)]
    wait: Option<Option<f64>>,
    /// A data device this hold protects (repeatable). On SIGTERM/SIGINT, and under `run`
    /// when the command ends, the MMP devices are released (CLEAN) only once no guarded
    /// device is mounted on this host: until then mmp keeps heartbeating and says why, so
    /// no other host is told the data is free while it is in use here. (SIGKILL never
    /// writes CLEAN: the partner then needs the full takeover.)
    #[arg(long, value_name = "DEVICE")]
    guard: Vec<PathBuf>,
    /// Fence the storage as well: `scsi-pr` registers this host's key (0x6d6d7000 and the
    /// hostid) on every MMP device and every --guard device, and once every MMP device is
    /// acquired takes a SCSI-3 persistent reservation (Write Exclusive, Registrants Only)
    /// on each, preempting the previous owner, before the command runs or `acquired` is
    /// reported. A host that lost the device then gets RESERVATION CONFLICT on every write,
    /// even if it was frozen and comes back. Released (before CLEAN) on a clean release;
    /// kept after a loss until the next owner preempts it. Needs a hostid and SCSI devices
    /// (iSCSI, FC, SAS; not loop, virtio-blk or NVMe); checked before anything is written.
    #[arg(long, value_name = "KIND", value_parser = ["scsi-pr"])]
    fence: Option<String>,
    /// A device-mapper mapping over a data device (repeatable): on loss it is switched to
    /// the error target, so every further I/O to the data fails at once on this host,
    /// before the --on-loss action. `NAME` uses an existing mapping (as `mmp mount
    /// --cut-io` makes); `NAME=DEVICE` makes it over DEVICE first (mount
    /// /dev/mapper/NAME then) and removes it when the hold ends without a loss. Its node
    /// counts as a guarded device (no CLEAN while it is mounted).
    #[arg(long, value_name = "NAME[=DEVICE]")]
    cut_io: Vec<String>,
    /// What to do when ownership of a device is lost: `exit` (default: release the others
    /// and exit 3), `kill` (the same; for `run` only), `exec:CMD` (run CMD with MMP_DEVICE
    /// and MMP_REASON set, then exit 3), `reboot` (sync, then an immediate sysrq reboot:
    /// explicit opt-in). Under `run` the command's process group is always killed (SIGKILL)
    /// on loss, whatever the action.
    #[arg(long, default_value = "exit", value_name = "ACTION")]
    on_loss: String,
    /// Arm this watchdog device (e.g. /dev/watchdog) once every device is held, pet it
    /// after successful heartbeats only, magic-close it on clean release.
    #[arg(long, value_name = "PATH")]
    watchdog_device: Option<PathBuf>,
    /// Watchdog timeout in seconds (default: the shortest fail window, rounded down); must
    /// not exceed any device's fail window.
    #[arg(long, value_name = "SECS", value_parser = crate::args::parse_whole_secs)]
    watchdog_timeout: Option<u64>,
    /// Write per-device state as JSON lines to this file every second (and on SIGHUP).
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// Keep this holder's state in this file for mount helpers and agents: KEY=VALUE lines
    /// (schema 1, docs/json.md), replaced atomically at each transition: state starting,
    /// ready (every device held: the moment `acquired` is printed and systemd is notified),
    /// ended with its exit status (3: ownership lost).
    #[arg(long, value_name = "PATH")]
    state_file: Option<PathBuf>,
    /// Do not lock memory or ask for real-time scheduling.
    #[arg(long)]
    no_realtime: bool,
    /// Test harnesses: append ownership lines (acquired, lease bounds before every
    /// heartbeat write, released/lost; CLOCK_MONOTONIC ns) to this file (see
    /// docs/RELIABILITY.md).
    #[arg(long, value_name = "PATH", hide = true)]
    owner_log: Option<PathBuf>,
}

impl HoldOpts {
    /// The --guard devices (for `UUID=`/`LABEL=` names).
    pub(crate) fn guards_mut(&mut self) -> &mut Vec<PathBuf> {
        &mut self.guard
    }
}

/// What to do when ownership of a device is lost (`--on-loss`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum LossAction {
    /// Release the others and exit 3.
    Exit,
    /// The same; for `run` only (its command is killed on loss whatever the action).
    Kill,
    /// Run this shell command with `MMP_DEVICE` and `MMP_REASON` set, then exit 3.
    Exec(String),
    /// Sync, then an immediate sysrq reboot.
    Reboot,
}

/// `--on-loss ACTION` as a [`LossAction`].
fn parse_loss(s: &str) -> Result<LossAction, String> {
    match s {
        "exit" => Ok(LossAction::Exit),
        "kill" => Ok(LossAction::Kill),
        "reboot" => Ok(LossAction::Reboot),
        _ => match s.strip_prefix("exec:") {
            Some(cmd) if !cmd.trim().is_empty() => Ok(LossAction::Exec(cmd.to_string())),
            _ => Err(format!(
                "--on-loss '{s}': expected exit, kill, exec:COMMAND or reboot"
            )),
        },
    }
}

/// Whether `path` can be written as the holder writes it (through `PATH.tmp`, renamed).
fn check_writable(path: &std::path::Path) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, b"")?;
    std::fs::remove_file(&tmp)?;
    if path.is_dir() {
        return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory));
    }
    Ok(())
}

/// `hold` (command = None) and `run`, keeping `--state-file` up to date around them.
pub(crate) fn hold(
    c: &Ctx,
    opts: &HoldOpts,
    devices: &[PathBuf],
    command: Option<&[String]>,
) -> Result<Exit, String> {
    // An agent waits on these files: one that cannot be written is an error before
    // anything else, not a silent gap.
    for (flag, path) in [
        ("--state-file", &opts.state_file),
        ("--status-file", &opts.status_file),
    ] {
        if let Some(p) = path {
            check_writable(p).map_err(|e| {
                format!(
                    "{flag} {}: cannot write it: {e}; nothing was written",
                    show(p)
                )
            })?;
        }
    }
    let state = StateFile(opts.state_file.as_deref());
    state.write("starting", None);
    let res = hold_inner(c, opts, devices, command, &state);
    state.write(
        "ended",
        Some(res.as_ref().map_or(Exit::Error.code(), |e| e.code())),
    );
    res
}

/// The hold itself: everything opened and checked, then the engine's loop until every
/// device has its outcome, then the finish.
fn hold_inner(
    c: &Ctx,
    opts: &HoldOpts,
    devices: &[PathBuf],
    command: Option<&[String]>,
    state: &StateFile<'_>,
) -> Result<Exit, String> {
    // A command that cannot run is said before anything is claimed (as a shell: 127, 126).
    if let Some(cmd) = command
        && let Err((why, code)) = run::runnable(cmd)
    {
        note!("mmp: {why}; nothing was acquired");
        return Ok(Exit::Command(code));
    }
    let setup = match Setup::open(c, opts, devices, command.is_some()) {
        Ok(s) => s,
        Err(Early::Error(e)) => return Err(e),
        Err(Early::Exit(code)) => return Ok(code),
    };
    let mut holder = Holder::start(c, opts, devices, command, state, setup)?;
    while holder.step() {}
    Ok(holder.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_actions_parse() {
        assert_eq!(parse_loss("exit"), Ok(LossAction::Exit));
        assert_eq!(
            parse_loss("exec:echo hi"),
            Ok(LossAction::Exec("echo hi".into()))
        );
        assert!(parse_loss("exec:").is_err());
        assert!(parse_loss("shutdown").is_err());
    }
}
