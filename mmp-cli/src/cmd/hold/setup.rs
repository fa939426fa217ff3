//! Before anything is written: the options checked, the guarded devices and `--cut-io`
//! mappings opened, every MMP device opened and pre-checked, the fence registered and the
//! watchdog arithmetic done. Any problem here ends the hold with nothing acquired.

use super::fence::Fencing;
use super::{HoldOpts, LossAction, parse_loss};
use crate::exit::Exit;
use crate::{Ctx, out, show};
use mmp_core::machine::{Op, Refusal};
use mmp_linux::blockdev::Device;
use mmp_linux::dm::Mapping;
use mmp_linux::{procedure, target};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a hold ends before its engine starts.
pub(super) enum Early {
    /// A usage or device error (exit 2).
    Error(String),
    /// A decision from the first reads, already said on stderr (a refusal, a device held or
    /// mounted here): the hold exits with this status, nothing written.
    Exit(Exit),
}

impl From<String> for Early {
    fn from(e: String) -> Early {
        Early::Error(e)
    }
}

/// What a hold opened and checked before it writes anything.
///
/// The field order is the drop order: `made_cuts` comes last so that the mappings are
/// removed only after the devices open on them are closed (a mapping still open cannot be
/// removed).
pub(super) struct Setup {
    /// What to do on loss (`--on-loss`).
    pub(super) action: LossAction,
    /// `--wait=SECONDS`: how long to queue behind another host's hold.
    pub(super) wait_limit: Option<Duration>,
    /// `--wait` (with or without a limit): queue instead of refusing a held device.
    pub(super) queue: bool,
    /// The guarded devices (`--guard`, and the nodes of the `--cut-io` mappings), named as
    /// the user named them: no CLEAN while one is mounted here.
    pub(super) guards: Vec<(String, Device)>,
    /// The `--cut-io` mappings, switched to the error target on loss.
    pub(super) cuts: Vec<Mapping>,
    /// The MMP devices, opened and pre-checked, in command-line order (handed to the engine).
    pub(super) targets: Vec<target::Target>,
    /// `--fence scsi-pr`: our key registered on every device.
    pub(super) fence: Option<Fencing>,
    /// The watchdog timeout, when `--watchdog-device` is given.
    pub(super) wd_timeout: Option<Duration>,
    /// The mappings this hold made (see the type).
    pub(super) made_cuts: MadeCuts,
}

impl Setup {
    /// Checks the options (`run`: for `mmp run`, which has a command) and opens everything,
    /// in this order: the loss action and wait, the guards, the cuts, the MMP devices (refusing what is mounted or held here, and
    /// with several devices what the first read already refuses), the fence, the watchdog.
    pub(super) fn open(
        c: &Ctx,
        opts: &HoldOpts,
        devices: &[PathBuf],
        run: bool,
    ) -> Result<Setup, Early> {
        let action = parse_loss(&opts.on_loss)?;
        let wait_limit = wait_limit(opts.wait)?;
        let queue = opts.wait.is_some();
        // Declared before the open devices so that it is dropped after them (a mapping still
        // open cannot be removed).
        let mut made_cuts = MadeCuts::default();
        let mut guards = Vec::with_capacity(opts.guard.len());
        for g in &opts.guard {
            let dev = Device::open(g, false).map_err(|e| format!("--guard {}: {e}", show(g)))?;
            guards.push((show(g), dev));
        }
        let cuts = open_cuts(&opts.cut_io, &mut guards, &mut made_cuts)?;
        if action == LossAction::Kill && !run {
            return Err(Early::Error(
                "--on-loss kill needs `mmp run` (there is no command to kill)".into(),
            ));
        }
        crate::resolve::refuse_duplicates(devices)?;
        let targets = open_targets(c, devices)?;
        // With several devices, refuse what the first read already refuses before anything is
        // claimed: a clean device claimed next to a refused one would keep that claim (an
        // acquire given up before it is verified never writes CLEAN) and look stale to others.
        if targets.len() > 1 {
            refuse_early(c, opts.force || queue, devices, &targets)?;
        }
        // Persistent reservations: every device must take them, checked before anything is
        // written; our key is registered before the MMP claim can be written.
        let fence = match &opts.fence {
            None => None,
            Some(_) => Some(Fencing::open(c, devices, &opts.guard)?),
        };
        // Watchdog arithmetic before anything is written.
        let wd_timeout = match &opts.watchdog_device {
            None => None,
            Some(p) => Some(watchdog_timeout(opts, &targets, p)?),
        };
        Ok(Setup {
            action,
            wait_limit,
            queue,
            guards,
            cuts,
            targets,
            fence,
            wd_timeout,
            made_cuts,
        })
    }

    /// Where a guarded device is mounted on this host, if anywhere: its name and mount point.
    pub(super) fn guard_mounted(&self) -> Option<(String, String)> {
        self.guards
            .iter()
            .find_map(|(p, d)| d.is_mounted().ok().flatten().map(|mp| (p.clone(), mp)))
    }

    /// At the end of the hold: closes the guarded devices, then removes the mappings this
    /// hold made unless it `lost` a device.
    pub(super) fn close(&mut self, lost: bool) {
        self.guards.clear();
        self.made_cuts.keep = lost;
        drop(std::mem::take(&mut self.made_cuts));
    }
}

/// `--wait=SECONDS` as a limit (none: `--wait` alone or no `--wait`).
fn wait_limit(wait: Option<Option<f64>>) -> Result<Option<Duration>, String> {
    match wait {
        Some(Some(s)) if !s.is_finite() || s < 0.0 => Err(format!(
            "--wait={s}: expected a number of seconds (0 or more), or --wait alone to wait \
             without a limit"
        )),
        Some(Some(s)) => Ok(Some(Duration::from_secs_f64(s))),
        _ => Ok(None),
    }
}

/// Finds (`NAME`) or makes (`NAME=DEVICE`, unless NAME exists) each `--cut-io` mapping and
/// opens its node as a guarded device. The mappings made are recorded in `made` at once, so
/// that an error later on removes them.
fn open_cuts(
    args: &[String],
    guards: &mut Vec<(String, Device)>,
    made: &mut MadeCuts,
) -> Result<Vec<Mapping>, String> {
    let mut cuts = Vec::with_capacity(args.len());
    for arg in args {
        let m = match arg.split_once('=') {
            None => Mapping::find(arg).map_err(|e| format!("--cut-io {arg}: {e}"))?,
            Some((name, dev)) => match Mapping::find(name) {
                Ok(m) => m,
                Err(_) => {
                    let m = Mapping::create(name, Path::new(dev))
                        .map_err(|e| format!("--cut-io {arg}: {e}; nothing was written"))?;
                    made.made.push(m.clone());
                    m
                }
            },
        };
        let name = &m.name;
        let dev = Device::open(&m.node, false)
            .map_err(|e| format!("--cut-io {name}: {}: {e}", m.node.display()))?;
        guards.push((m.node.display().to_string(), dev));
        cuts.push(m);
    }
    Ok(cuts)
}

/// Opens every MMP device first: any bad device is an error before anything is acquired. A
/// device mounted or already held on this host is refused (said, exit 1).
fn open_targets(c: &Ctx, devices: &[PathBuf]) -> Result<Vec<target::Target>, Early> {
    let mut targets = Vec::with_capacity(devices.len());
    for d in devices {
        let t = target::open(d, true).map_err(|e| e.to_string())?;
        c.check_hostid(t.format)?;
        c.warn_same_nodename(&t, &show(d));
        if let Some(msg) = crate::cmd::check::mounted_here(&t, &show(d))
            .or_else(|| crate::local::held_here(c, &t, d))
        {
            note!("mmp: {msg}");
            return Err(Early::Exit(Exit::Refused));
        }
        if c.verbose {
            note!(
                "mmp: {}: {} format, I/O mode {}",
                show(d),
                t.format.name(),
                t.device.io_mode()
            );
        }
        targets.push(t);
    }
    Ok(targets)
}

/// All or nothing: says every refusal the first reads already imply and, if there is one,
/// ends the hold (the worst status) before anything is written.
fn refuse_early(
    c: &Ctx,
    force: bool,
    devices: &[PathBuf],
    targets: &[target::Target],
) -> Result<(), Early> {
    let mut code = Exit::Ok;
    for (d, t) in devices.iter().zip(targets) {
        if let Some(r) = preflight(c, force, d, t) {
            note!("mmp: {}", out::refusal(&show(d), &r));
            code = code.worst(out::refusal_code(&r));
        }
    }
    if code != Exit::Ok {
        note!("mmp: nothing written to any device (all or nothing)");
        return Err(Early::Exit(code));
    }
    Ok(())
}

/// The refusal the first read of `t` already implies (corrupt, FSCK, unknown sequence,
/// maintenance, or another host's without `force`), as the machine would decide it. An I/O
/// error is left to the machine.
fn preflight(c: &Ctx, force: bool, d: &Path, t: &target::Target) -> Option<Refusal> {
    let raw = t.read_record().ok()?;
    match mmp_core::machine::parse(&t.layout, &raw) {
        Ok(snap) => mmp_core::machine::immediate_refusal(Op::Acquire, &c.identity(d), force, &snap),
        Err(e) => Some(Refusal::Corrupt(e)),
    }
}

/// The watchdog timeout for `--watchdog-device wd`: `--watchdog-timeout` or the shortest
/// fail window of the devices (rounded down), refused when it exceeds one.
fn watchdog_timeout(
    opts: &HoldOpts,
    targets: &[target::Target],
    wd: &Path,
) -> Result<Duration, String> {
    // The device itself, before anything is claimed: opening it would start its timer
    // (it is opened, and armed, once every device is held), so only look: it exists, and is
    // a character device or a file (a test stand-in) this process may write.
    let meta = std::fs::metadata(wd).map_err(|e| {
        format!(
            "--watchdog-device {}: {}; nothing was acquired",
            wd.display(),
            crate::out::plain(&e.to_string())
        )
    })?;
    {
        use std::os::unix::fs::FileTypeExt;
        let ft = meta.file_type();
        if !(ft.is_char_device() || ft.is_file()) {
            return Err(format!(
                "--watchdog-device {}: not a watchdog device (a character device such as \
                 /dev/watchdog0); nothing was acquired",
                wd.display()
            ));
        }
    }
    if let Err(e) = rustix::fs::access(wd, rustix::fs::Access::WRITE_OK) {
        return Err(format!(
            "--watchdog-device {}: {}; nothing was acquired",
            wd.display(),
            crate::out::plain(&std::io::Error::from(e).to_string())
        ));
    }
    let mut min_fail: Option<Duration> = None;
    for t in targets {
        let raw = t.read_record().map_err(|e| e.to_string())?;
        let snap = mmp_core::machine::parse(&t.layout, &raw)
            .map_err(|e| format!("{}: {e}", show(t.device.path())))?;
        let f = mmp_core::machine::Timing::for_snapshot(&t.layout, &snap).fail_window;
        min_fail = Some(min_fail.map_or(f, |m| m.min(f)));
    }
    let min_fail = min_fail.unwrap_or_default();
    procedure::watchdog_timeout(opts.watchdog_timeout, min_fail).map_err(|e| match e {
        procedure::WatchdogTimeoutError::FailWindowTooShort { .. } => format!(
            "{e}; use a longer interval (mmp format --interval-ms / --fail-intervals) or no \
             --watchdog-device {}",
            wd.display()
        ),
        e => e.to_string(),
    })
}

/// The `--cut-io NAME=DEVICE` mappings this hold made: removed when the hold ends, on any
/// path (a refusal, an error), unless `keep` (after a loss they stay cut until the file
/// system on them is unmounted and an admin removes them).
#[derive(Default)]
pub(super) struct MadeCuts {
    /// The mappings, in the order they were made.
    made: Vec<Mapping>,
    /// Leave them in place (set after a loss).
    keep: bool,
}

impl Drop for MadeCuts {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for m in &self.made {
            if let Err(e) = m.remove() {
                note!("mmp: --cut-io: could not remove {}: {e}", m.name);
            }
        }
    }
}
