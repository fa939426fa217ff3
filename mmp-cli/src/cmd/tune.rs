//! `mmp enable`, `disable`, `set-interval`: tune2fs parity for ext4/ldiskfs MMP.

use crate::exit::Exit;
use crate::progress::Progress;
use crate::{Ctx, out, show};
use mmp_core::machine::{Machine, Outcome};
use mmp_linux::blockdev::Device;
use mmp_linux::procedure::{self, Unproven};
use mmp_linux::tune::{self, EnableOptions};
use mmp_linux::{clock, target};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub(crate) fn enable(c: &Ctx, interval: u16, device: &Path) -> Result<Exit, String> {
    let path = show(device);
    let interval = procedure::update_interval(u64::from(interval))
        .map_err(|e| format!("--interval {interval}: {e}"))?;
    let dev = Device::open(device, true).map_err(|e| e.to_string())?;
    let mut opts = EnableOptions::new(
        &c.nodename,
        device.as_os_str().as_encoded_bytes(),
        clock::now().wall_ms / 1000,
    );
    opts.update_interval_s = interval;
    let r = match tune::enable(&dev, &opts) {
        Ok(r) => r,
        // As tune2fs -O mmp: already there is done, not an error.
        Err(tune::TuneError::AlreadyEnabled { block }) => {
            let now = target::open(device, false)
                .ok()
                .and_then(|t| t.superblock.map(|s| s.mmp_update_interval));
            let note = match now {
                Some(i) if i != interval => format!(
                    " (update interval {i} s; change it with `mmp set-interval {interval} {path}`)"
                ),
                Some(i) => format!(" (update interval {i} s)"),
                None => String::new(),
            };
            outln!(
                "{path}: multiple mount protection is already enabled (MMP block {block}){note}; \
                 nothing changed"
            );
            return Ok(Exit::Ok);
        }
        Err(e) => return Err(format!("{path}: {e}")),
    };
    outln!(
        "{path}: multiple mount protection enabled with update interval {} s (MMP block {})",
        r.update_interval_s,
        r.block
    );
    Ok(Exit::Ok)
}

/// [`procedure::prove_unused`] with this host's identity, progress on the terminal, and
/// SIGINT/SIGTERM aborting the wait. A refusal is `Err((exit code, message))`: 1 when the
/// device is in use or in doubt but readable (like `hold`), 2 for errors.
fn prove_unused(c: &Ctx, t: &target::Target, device: &Path) -> Result<Machine, (Exit, String)> {
    let path = show(device);
    c.check_hostid(t.format).map_err(|e| (Exit::Error, e))?;
    c.warn_same_nodename(t, &path);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let mut progress = Progress::new(path.clone());
    procedure::prove_unused(t, c.identity(device), &mut c.faults(), &stop, &mut |e| {
        progress.event(e)
    })
    .map_err(|e| match e {
        Unproven::Refused(r) => (out::refusal_code(&r), out::refusal(&path, &r)),
        Unproven::Ended(o) => (
            Exit::Error,
            format!(
                "{path}: could not prove the device unused: {}",
                out::outcome(&path, o.as_ref())
            ),
        ),
    })
}

/// [`prove_unused`], with a refusal printed and turned into its exit code.
fn prove_or_exit(c: &Ctx, t: &target::Target, device: &Path) -> Result<Machine, Exit> {
    prove_unused(c, t, device).map_err(|(code, msg)| {
        note!("mmp: {msg}; nothing changed");
        code
    })
}

/// `disable --force`: the activity test is skipped, but a block that visibly changes while
/// watched for one update interval (plus a second, at most 31 s) has a live writer, and
/// freeing it under that writer would let its next heartbeat land in a freed block. `Err`
/// carries the exit code (1: live, 2: unreadable) after printing why.
fn refuse_if_live(t: &target::Target, path: &str) -> Result<(), Exit> {
    let secs = t
        .superblock
        .as_ref()
        .map_or(5, |s| u64::from(s.mmp_update_interval))
        .clamp(1, 30)
        + 1;
    let read = || {
        t.read_record().map_err(|e| {
            note!("mmp: {path}: {e}; nothing changed");
            Exit::Error
        })
    };
    let first = read()?;
    note!(
        "mmp: {path}: --force: watching the MMP block for {secs} s for a live holder \
         (--force --force skips this)"
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = read()?;
        if now != first {
            let who = mmp_core::machine::parse(&t.layout, &now)
                .map_or_else(|e| format!("now unreadable: {e}"), |s| out::who(&s));
            note!(
                "mmp: {path}: the MMP block changed while watched: a holder is writing it now \
                 ({who}). Refusing to disable MMP under a live holder, even with --force: stop \
                 it (unmount the file system on its node) first, or give --force twice if you \
                 know the writer is gone; nothing changed"
            );
            return Err(Exit::Refused);
        }
    }
    Ok(())
}

pub(crate) fn disable(c: &Ctx, force: u8, device: &Path) -> Result<Exit, String> {
    let path = show(device);
    // As tune2fs -O ^mmp: already off is done, not an error.
    let dev = Device::open(device, false).map_err(|e| e.to_string())?;
    if let Err(tune::TuneError::NotEnabled) = tune::preflight(&dev, tune::Op::Disable) {
        outln!("{path}: multiple mount protection is not enabled; nothing changed");
        return Ok(Exit::Ok);
    }
    drop(dev);
    let t = target::open(device, true).map_err(|e| e.to_string())?;
    tune::preflight(&t.device, tune::Op::Disable).map_err(|e| format!("{path}: {e}"))?;
    if force == 1
        && let Err(code) = refuse_if_live(&t, &path)
    {
        return Ok(code);
    }
    // Holding the device while the superblock changes; after MMP is off the block is freed,
    // so the machine is dropped without writing to it again (never CLEAN into a freed block).
    let held = if force > 0 {
        None
    } else {
        match prove_or_exit(c, &t, device) {
            Ok(m) => Some(m),
            Err(code) => return Ok(code),
        }
    };
    match procedure::disable(&t, held, &mut c.faults()) {
        Ok(r) if r.freed => {
            outln!(
                "{path}: multiple mount protection disabled (MMP block {} freed)",
                r.old_block
            );
            Ok(Exit::Ok)
        }
        Ok(r) => {
            outln!(
                "{path}: multiple mount protection disabled; MMP block {} not freed ({}): run e2fsck to reclaim it",
                r.old_block,
                r.not_freed_reason.unwrap_or_default()
            );
            Ok(Exit::Ok)
        }
        Err(e) => Err(format!("{path}: {e}")),
    }
}

pub(crate) fn set_interval(c: &Ctx, secs: u16, device: &Path) -> Result<Exit, String> {
    let path = show(device);
    let secs =
        procedure::update_interval(u64::from(secs)).map_err(|e| format!("interval {secs}: {e}"))?;
    let t = target::open(device, true).map_err(|e| e.to_string())?;
    let info =
        tune::preflight(&t.device, tune::Op::SetInterval).map_err(|e| format!("{path}: {e}"))?;
    // Already so: done, and nothing is claimed or written (as `enable` when already on).
    if info.mmp_update_interval == secs {
        outln!("{path}: MMP update interval is already {secs} s; nothing written");
        return Ok(Exit::Ok);
    }
    let m = match prove_or_exit(c, &t, device) {
        Ok(m) => m,
        Err(code) => return Ok(code),
    };
    let (res, end) = procedure::set_interval(&t, m, secs, &mut c.faults());
    res.map_err(|e| format!("{path}: {e}"))?;
    if end != Some(Outcome::Released) {
        note!(
            "mmp: {path}: warning: release after the change ended: {}",
            out::outcome(&path, end.as_ref())
        );
    }
    outln!("{path}: MMP update interval set to {secs} s");
    Ok(Exit::Ok)
}
