//! On loss: the `--cut-io` mappings are switched to the error target, then the `--on-loss`
//! action runs (after `run`'s command is killed).

use super::LossAction;
use super::run::kill_group;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs the `--on-loss` action for the device `path` lost for `reason` (`exec:` gets them as
/// MMP_DEVICE and MMP_REASON), after killing `run`'s command (`child`).
pub(super) fn run_loss_action(
    action: &LossAction,
    path: &str,
    reason: &str,
    child: Option<&mut Child>,
) {
    // Under `run` the command never outlives ownership: whatever the action, its process
    // group is killed first (before a hook runs or a reboot is attempted, either of which
    // may fail or hang).
    if let Some(ch) = child {
        kill_group(ch, rustix::process::Signal::KILL);
        note!("mmp: killed the command's process group (pid {})", ch.id());
    }
    match action {
        LossAction::Exit | LossAction::Kill => {}
        LossAction::Exec(cmd) => {
            match Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .env("MMP_DEVICE", path)
                .env("MMP_REASON", reason)
                .env("MMP_EVENT", "loss")
                .spawn()
            {
                Ok(mut c) => {
                    let _ = c.wait();
                }
                Err(e) => note!("mmp: --on-loss exec: {e}"),
            }
        }
        LossAction::Reboot => {
            note!("mmp: --on-loss reboot: syncing and rebooting now");
            rustix::fs::sync();
            let _ = std::fs::write("/proc/sysrq-trigger", b"b");
        }
    }
}

/// Switches every `--cut-io` mapping to the error target (on a thread of its own: a
/// suspend waits for I/O in flight, which a stalled path may never complete) and waits at
/// most a second for it before the loss action goes on.
pub(super) fn cut_io(cuts: &[mmp_linux::dm::Mapping]) {
    if cuts.is_empty() {
        return;
    }
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let work = cuts.to_vec();
    std::thread::spawn(move || {
        for m in work {
            let r = m.cut();
            let _ = tx.send((m, r, started.elapsed()));
        }
    });
    for _ in cuts {
        match rx.recv_timeout(Duration::from_secs(1).saturating_sub(started.elapsed())) {
            Ok((m, Ok(()), took)) => note!(
                "mmp: cut I/O to {} ({}) in {:.1} ms: every further I/O fails",
                m.name,
                m.node.display(),
                took.as_secs_f64() * 1000.0
            ),
            Ok((m, Err(e), _)) => note!("mmp: could not cut I/O to {}: {e}", m.name),
            Err(_) => {
                note!(
                    "mmp: cutting I/O is still waiting for in-flight I/O after 1 s (a stalled \
                     path); going on with the loss action"
                );
                break;
            }
        }
    }
}
