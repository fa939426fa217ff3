//! `mmp check`: is the device safe to take? The full activity test, nothing written.

use crate::exit::Exit;
use crate::progress::Progress;
use crate::{Ctx, json, out, resolve, show};
use mmp_core::machine::{Config, Machine, Op, Outcome};
use mmp_linux::{clock, driver, target};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub(crate) fn check(c: &Ctx, json: bool, device: &Path) -> Result<Exit, String> {
    let device = &match resolve::device(device) {
        Ok(d) => d,
        Err(e) if json => {
            outln!("{}", out::error_json("check", &show(device), None, &e));
            return Ok(Exit::Error);
        }
        Err(e) => return Err(e),
    };
    let path = show(device);
    let t = match target::open(device, false) {
        Ok(t) => t,
        // `--json` promises one object, also for a device that cannot be opened.
        Err(e) if json => {
            outln!(
                "{}",
                out::error_json("check", &path, e.format(), &e.to_string())
            );
            return Ok(Exit::Error);
        }
        Err(e) => return Err(e.to_string()),
    };
    // Mounted here (ext4: kmmpd holds it), or held by another mmp process of this host: said
    // at once, instead of watching the block change and blaming another node.
    if let Some(msg) = mounted_here(&t, &path).or_else(|| crate::local::held_here(c, &t, device)) {
        if json {
            outln!(
                "{}",
                json::Obj::device("check", &path, Some(t.format))
                    .str("result", "in_use")
                    .str("message", &msg)
                    .end()
            );
        } else {
            note!("mmp: {msg}");
        }
        return Ok(Exit::Refused);
    }
    let cfg = Config::new(t.layout, c.identity(device), clock::random_seed());
    let mut m = Machine::new(cfg, Op::Check, clock::now());
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let mut progress = Progress::new(path.clone());
    progress.quiet = json;
    let outcome = driver::run_until_settled(&mut m, &t.device, &mut c.faults(), &stop, &mut |e| {
        progress.event(e)
    });
    let (code, text) = match outcome {
        Some(Outcome::Safe {
            stale: false,
            snapshot,
        }) => (
            Exit::Ok,
            format!(
                "{path}: safe to take: MMP is clean; {}",
                out::who(&snapshot)
            ),
        ),
        Some(Outcome::Safe {
            stale: true,
            snapshot,
        }) => (
            Exit::Ok,
            format!(
                "{path}: safe to take: not clean but silent for the whole {:.1} s window; {}",
                m.timing().map_or(0.0, |t| t.watch.as_secs_f64()),
                out::who(&snapshot)
            ),
        ),
        Some(Outcome::Refused(r)) => (out::refusal_code(&r), out::refusal(&path, &r)),
        Some(Outcome::Aborted) => (Exit::Error, format!("{path}: interrupted")),
        other => (
            Exit::Error,
            format!(
                "{path}: the check ended unexpectedly: {}",
                out::outcome(&path, other.as_ref())
            ),
        ),
    };
    if json {
        let state = match (code, outcome) {
            (Exit::Ok, _) => "safe",
            (Exit::Refused, _) => "in_use",
            _ => "error",
        };
        let o = json::Obj::device("check", &path, Some(t.format))
            .str("result", state)
            .str("message", &text);
        let o = if state == "error" {
            o.str("error", &text)
        } else {
            o
        };
        outln!("{}", o.end());
    } else if code == Exit::Ok {
        outln!("{text}");
    } else {
        note!("mmp: {text}");
    }
    Ok(code)
}

/// An ext4 file system mounted on this host is held by this host's kernel (kmmpd): say so
/// instead of waiting a whole window to report "active on another node".
pub(crate) fn mounted_here(t: &target::Target, path: &str) -> Option<String> {
    if t.format != target::Format::Ext4 {
        return None;
    }
    match t.device.is_mounted() {
        Ok(Some(mp)) => Some(format!(
            "{path}: mounted on this host at {mp}: this host's kernel (kmmpd) holds its MMP \
             block; unmount it first"
        )),
        _ => None,
    }
}
