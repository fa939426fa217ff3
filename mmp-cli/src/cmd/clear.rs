//! `mmp clear --force`: the operator's reset to CLEAN (like `tune2fs -f -E clear_mmp`).

use crate::exit::Exit;
use crate::{Ctx, out, show};
use mmp_core::machine::{Config, Machine, Op, Outcome};
use mmp_linux::{clock, driver, target};
use std::path::Path;
use std::sync::atomic::AtomicBool;

pub(crate) fn clear(c: &Ctx, force: bool, device: &Path) -> Result<Exit, String> {
    let path = show(device);
    if !force {
        return Err(format!(
            "refusing to clear {path} without --force: clear skips the activity test; use it only \
             when no other node uses the device (run `mmp check {path}` first)"
        ));
    }
    let t = open_for_clear(device)?;
    // A holder on this host (the kernel's kmmpd, or an mmp holder of this identity) would
    // only be told its device is free: refuse, as `hold` does, before anything is written.
    if let Some(msg) = crate::cmd::check::mounted_here(&t, &path)
        .or_else(|| crate::local::held_here(c, &t, device))
    {
        note!("mmp: {msg}; not clearing (nothing was written)");
        return Ok(Exit::Refused);
    }
    if t.format == target::Format::Native
        && let Ok(raw) = t.read_record()
        && mmp_core::machine::parse(&t.layout, &raw).is_err()
    {
        // The protocol's clear keeps the area's parameters from its record, which does not
        // parse here: repair the record instead, keeping what can still be read.
        drop(t);
        return clear_unparsable_native(c, device);
    }
    let mut cfg = Config::new(t.layout, c.identity(device), clock::random_seed());
    cfg.force = true;
    let mut m = Machine::new(cfg, Op::Clear, clock::now());
    let stop = AtomicBool::new(false);
    match driver::run_until_settled(&mut m, &t.device, &mut c.faults(), &stop, &mut |_| {}) {
        Some(Outcome::Cleared) => {
            outln!("{path}: MMP reset to clean");
            Ok(Exit::Ok)
        }
        Some(Outcome::Refused(r)) => Err(out::refusal(&path, &r)),
        other => Err(format!(
            "{path}: clear failed: {}",
            out::outcome(&path, other.as_ref())
        )),
    }
}

fn clear_unparsable_native(c: &Ctx, device: &Path) -> Result<Exit, String> {
    use mmp_linux::area;
    let path = show(device);
    match area::reset_unparsable(device, &c.identity(device)) {
        Ok(r) => {
            let params = if r.kept_parameters {
                "kept its"
            } else {
                "its own were unreadable, so it has the default"
            };
            outln!(
                "{path}: MMP reset to clean (the record was corrupt: {}); {params} interval {} ms \
                 and fail intervals {}",
                r.was,
                r.record.interval_ms,
                r.record.fail_intervals
            );
            Ok(Exit::Ok)
        }
        Err(area::ResetError::Device(e)) => Err(e.to_string()),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

/// Opens a device for `clear`, read-write. The MMP block itself is not parsed here, so a
/// block with a bad magic or checksum opens (that is what clear is for); a superblock that
/// is not ext4 with MMP and not a native area is still an error.
fn open_for_clear(device: &Path) -> Result<target::Target, String> {
    target::open(device, true).map_err(|e| e.to_string())
}
