//! `mmp-lab`: runs the multi-host lab's scenarios (guests with their own kernels on shared
//! disks, faults injected from the host). Usually started by `lab/run`, which installs the
//! packages and builds `mmp` first.
//!
//! ```text
//! mmp-lab [smoke | all | list | SCENARIO...] [--keep]
//! ```
//!
//! Environment: `MMP_LAB_MMP` (the `mmp` binary to share; default `target/debug/mmp`),
//! `MMP_LAB_CACHE` (image cache, default `lab/.cache`), `MMP_LAB_RUN` (scratch folder,
//! default `lab/.run`). Exit status: 0 when every scenario passed or showed its expected gap,
//! 1 otherwise, 2 when the lab cannot run here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use mmp_tests::find_tool;
use mmp_tests::lab::scenarios::{self, Ctx, SCENARIOS, Scenario, Verdict};
use mmp_tests::lab::{Images, Tools};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    let names: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let chosen: Vec<&Scenario> = match names.as_slice() {
        [] | ["smoke"] => SCENARIOS.iter().filter(|s| s.smoke).collect(),
        ["all"] => SCENARIOS.iter().collect(),
        ["list"] => {
            for s in SCENARIOS {
                let tag = if s.smoke { " [smoke]" } else { "" };
                println!("{}{tag}: {}", s.name, s.about);
            }
            return ExitCode::SUCCESS;
        }
        list => {
            let mut v = Vec::new();
            for n in list {
                match SCENARIOS.iter().find(|s| s.name == *n) {
                    Some(s) => v.push(s),
                    None => {
                        eprintln!("mmp-lab: no scenario {n:?} (see `mmp-lab list`)");
                        return ExitCode::from(2);
                    }
                }
            }
            v
        }
    };
    match run(&chosen, keep) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mmp-lab: {e}");
            ExitCode::from(2)
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn run(chosen: &[&Scenario], keep: bool) -> mmp_tests::lab::Result<bool> {
    let started = Instant::now();
    let repo = repo_root();
    let mut missing = Vec::new();
    for (tool, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("mke2fs", "e2fsprogs"),
        ("e2mmpstatus", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("mkfs.xfs", "xfsprogs"),
        ("ldd", "libc-bin"),
    ] {
        if find_tool(tool).is_none() {
            missing.push(format!("{tool} (package {package})"));
        }
    }
    if !missing.is_empty() {
        return Err(format!("missing {}; `lab/run` installs them", missing.join(", ")).into());
    }
    let mmp = std::env::var_os("MMP_LAB_MMP")
        .map_or_else(|| repo.join("target/debug/mmp"), PathBuf::from);
    if !mmp.exists() {
        return Err(format!(
            "{} missing: build it (`cargo build -p mmp-cli`) or set MMP_LAB_MMP",
            mmp.display()
        )
        .into());
    }
    let images = Images::build(&repo)?;
    eprintln!(
        "mmp-lab: images {} ({:.0} s)",
        images.version,
        started.elapsed().as_secs_f64()
    );
    let run_root =
        std::env::var_os("MMP_LAB_RUN").map_or_else(|| repo.join("lab/.run"), PathBuf::from);
    if run_root.exists() {
        std::fs::remove_dir_all(&run_root)?;
    }
    let mut binaries = vec![mmp];
    for t in [
        "mke2fs",
        "e2mmpstatus",
        "dumpe2fs",
        "debugfs",
        "tune2fs",
        "e2fsck",
        "mkfs.xfs",
        "xfs_repair",
    ] {
        binaries.extend(find_tool(t));
    }
    let tools = Tools::assemble(&run_root.join("tools"), &binaries)?;

    let mut rows = Vec::new();
    for s in chosen {
        eprintln!("== {} — {}", s.name, s.about);
        let ctx = Ctx {
            images: images.clone(),
            tools: tools.clone(),
            run_dir: run_root.join(s.name),
        };
        std::fs::create_dir_all(&ctx.run_dir)?;
        let t = Instant::now();
        let report = scenarios::run(s, &ctx);
        let took = t.elapsed();
        match &report.verdict {
            Verdict::Pass => eprintln!("   PASS ({:.0} s)", took.as_secs_f64()),
            Verdict::Gap(m) => eprintln!("   GAP, as expected ({:.0} s): {m}", took.as_secs_f64()),
            Verdict::Fail(m) => eprintln!(
                "   FAIL ({:.0} s): {m}\n   (disks, console logs and job files in {})",
                took.as_secs_f64(),
                ctx.run_dir.display()
            ),
        }
        rows.push((*s, report, took));
    }
    let ok = rows.iter().all(|(s, r, _)| match r.verdict {
        Verdict::Pass => true,
        // A scenario that shows a known gap passes the run whether or not the gap showed.
        Verdict::Gap(_) => s.shows_gap,
        Verdict::Fail(_) => false,
    });
    println!("{}", scenarios::table(&rows));
    println!(
        "mmp-lab: {} in {:.0} s",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    if ok && !keep {
        let _ = std::fs::remove_dir_all(&run_root);
    }
    Ok(ok)
}
