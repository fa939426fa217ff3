//! `mmp mount` / `mmp umount`: acquire, mount, keep the heartbeat; unmount, release.
//!
//! * **native** (`--mmp-device`, or a DEVICE that carries a native area): a detached
//!   `mmp hold` process keeps the heartbeat; its state lives under `/run/mmp/` (override with
//!   `MMP_RUN_DIR`). `mmp umount DIR` unmounts, then stops the holder, which releases CLEAN.
//! * **ext4 with MMP**: the kernel's kmmpd is the heartbeat once mounted. `mmp mount` runs
//!   the full acquire protocol first (activity test, claim, verify: what the kernel skips on
//!   a clean block), then hands the device to the kernel: it writes CLEAN and mounts at
//!   once, and the kernel claims the block within milliseconds. `mmp umount` unmounts (the
//!   kernel writes CLEAN).

use crate::{Ctx, out, show};
use clap::Args;
use mmp_core::machine::{Config, Machine, Op, Outcome};
use mmp_core::sys::{clock, driver, target};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// `mmp mount` arguments.
#[derive(Args, Debug, Clone)]
pub(crate) struct MountArgs {
    /// Take a device whose previous owner did not release it (after the activity test).
    #[arg(long)]
    force: bool,
    /// File system type, passed to mount(8).
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    fstype: Option<String>,
    /// Mount options, passed to mount(8).
    #[arg(short = 'o', long = "options", value_name = "OPTS")]
    options: Option<String>,
    /// The native MMP area protecting DEVICE (a small partition or LUN), for file systems
    /// without MMP of their own (XFS, btrfs).
    #[arg(long, value_name = "PATH")]
    mmp_device: Option<PathBuf>,
    /// What the holder does on loss (see `mmp hold --help`).
    #[arg(long, default_value = "exit", value_name = "ACTION")]
    on_loss: String,
    /// The device to mount.
    device: PathBuf,
    /// Mount point.
    dir: PathBuf,
}

fn run_dir() -> PathBuf {
    std::env::var_os("MMP_RUN_DIR").map_or_else(|| PathBuf::from("/run/mmp"), PathBuf::from)
}

/// A file name for a mount point: the absolute path with `/` as `-` and other odd bytes as
/// `_`.
fn key(dir: &Path) -> String {
    let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut k: String = abs
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|&b| match b {
            b'/' => '-',
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' => char::from(b),
            _ => '_',
        })
        .collect();
    if k.is_empty() {
        k.push('-');
    }
    k
}

fn mount_cmd(a: &MountArgs) -> Command {
    let mut c = Command::new("mount");
    if let Some(t) = &a.fstype {
        c.arg("-t").arg(t);
    }
    if let Some(o) = &a.options {
        c.arg("-o").arg(o);
    }
    c.arg(&a.device).arg(&a.dir);
    c
}

fn run_mount(a: &MountArgs) -> Result<(), String> {
    let out = mount_cmd(a)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn mount(c: &Ctx, a: &MountArgs) -> Result<u8, String> {
    if !a.dir.is_dir() {
        return Err(format!(
            "mount point {} does not exist or is not a directory",
            show(&a.dir)
        ));
    }
    let mmp_dev = a.mmp_device.clone().unwrap_or_else(|| a.device.clone());
    let t = target::open(&mmp_dev, true).map_err(|e| match e {
        target::TargetError::NotMmp { .. } if a.mmp_device.is_none() => format!(
            "{e}; for a file system without MMP of its own (XFS, btrfs), \
             protect it with --mmp-device AREA"
        ),
        e => e.to_string(),
    })?;
    match t.format {
        target::Format::Ext4 => mount_ext4(c, a, t),
        target::Format::Native => mount_native(c, a, &mmp_dev),
    }
}

fn mount_ext4(c: &Ctx, a: &MountArgs, t: target::Target) -> Result<u8, String> {
    let path = show(&a.device);
    if let Some(e) = &c.hostid_error {
        return Err(e.clone());
    }
    let mut cfg = Config::new(t.layout, c.identity(&a.device), clock::random_seed());
    cfg.force = a.force;
    let mut m = Machine::new(cfg, Op::Acquire, clock::now());
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let mut progress = crate::Progress::new(path.clone());
    match driver::run_until_settled(&mut m, &t.device, &stop, &mut |e| progress.event(e)) {
        None => {}
        Some(Outcome::Refused(r)) => {
            eprintln!("mmp: {}", out::refusal(&path, &r));
            return Ok(out::refusal_code(&r));
        }
        Some(o) => return Err(format!("{path}: acquire ended with {o:?}")),
    }
    // Hand over to the kernel: CLEAN, then mount at once (the kernel claims it).
    m.release(clock::now());
    let never = AtomicBool::new(false);
    let end = driver::run_until_settled(&mut m, &t.device, &never, &mut |_| {});
    if end != Some(Outcome::Released) {
        return Err(format!(
            "{path}: could not hand the device to the kernel: {end:?}"
        ));
    }
    drop(t);
    run_mount(a)?;
    println!(
        "mounted {} on {} (ext4 MMP: the kernel heartbeats now)",
        path,
        show(&a.dir)
    );
    Ok(0)
}

fn mount_native(c: &Ctx, a: &MountArgs, mmp_dev: &Path) -> Result<u8, String> {
    let rd = run_dir();
    std::fs::create_dir_all(&rd).map_err(|e| format!("{}: {e}", rd.display()))?;
    let k = key(&a.dir);
    let state = rd.join(format!("{k}.state"));
    if state.exists() {
        return Err(format!(
            "{} already has an mmp mount (state in {}); run `mmp umount {}` first",
            show(&a.dir),
            state.display(),
            show(&a.dir)
        ));
    }
    let outf = rd.join(format!("{k}.out"));
    let logf = rd.join(format!("{k}.log"));
    let statusf = rd.join(format!("{k}.status"));
    let _ = std::fs::remove_file(&outf);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--hostid")
        .arg(format!("0x{:08x}", c.hostid))
        .arg("--nodename")
        .arg(std::ffi::OsStr::from_bytes_compat(&c.nodename))
        .arg("hold")
        .arg("--on-loss")
        .arg(&a.on_loss)
        .arg("--status-file")
        .arg(&statusf);
    if a.force {
        cmd.arg("--force");
    }
    cmd.arg(mmp_dev);
    let stdout = std::fs::File::create(&outf).map_err(|e| format!("{}: {e}", outf.display()))?;
    let stderr = std::fs::File::create(&logf).map_err(|e| format!("{}: {e}", logf.display()))?;
    {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the holder: {e}"))?;
    let start = Instant::now();
    let mut shown = 0usize;
    // Wait for `acquired`, relaying the holder's progress.
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&logf) {
            let _ = f.read_to_string(&mut text);
            if text.len() > shown {
                eprint!("{}", &text[shown..]);
                shown = text.len();
            }
        }
        let acquired = std::fs::read_to_string(&outf).is_ok_and(|s| s.contains("acquired"));
        if acquired {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let code = st.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(2);
            // Relay what the holder wrote last, then leave nothing behind in the run directory.
            if let Ok(text) = std::fs::read_to_string(&logf) {
                eprint!("{}", text.get(shown..).unwrap_or_default());
            }
            for f in [&statusf, &outf, &logf] {
                let _ = std::fs::remove_file(f);
            }
            return Ok(code.max(1));
        }
        if start.elapsed() > Duration::from_secs(3600) {
            let _ = child.kill();
            return Err("the holder did not acquire within an hour".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = run_mount(a) {
        // Mount failed: release the device.
        stop_holder(child.id());
        let _ = child.wait();
        for f in [&statusf, &outf, &logf] {
            let _ = std::fs::remove_file(f);
        }
        return Err(format!("{}; released {}", e.trim_end(), show(mmp_dev)));
    }
    let body = format!(
        "pid={}\nmmp_device={}\ndevice={}\ndir={}\n",
        child.id(),
        mmp_dev.display(),
        a.device.display(),
        a.dir.display()
    );
    std::fs::write(&state, body).map_err(|e| format!("{}: {e}", state.display()))?;
    println!(
        "mounted {} on {} (heartbeat: pid {} on {}; state in {})",
        show(&a.device),
        show(&a.dir),
        child.id(),
        show(mmp_dev),
        state.display()
    );
    Ok(0)
}

fn stop_holder(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0)) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// `mmp umount DIR`.
pub(crate) fn umount(dir: &Path) -> Result<u8, String> {
    let state = run_dir().join(format!("{}.state", key(dir)));
    let out = Command::new("umount")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run umount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "umount {} failed: {}",
            show(dir),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let Ok(body) = std::fs::read_to_string(&state) else {
        println!(
            "unmounted {} (no mmp holder recorded: ext4 MMP is released by the kernel)",
            show(dir)
        );
        return Ok(0);
    };
    let pid: u32 = body
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{}: no pid", state.display()))?;
    stop_holder(pid);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = key(dir);
    let rd = run_dir();
    let logf = rd.join(format!("{k}.log"));
    let log = std::fs::read_to_string(&logf).unwrap_or_default();
    for f in ["state", "out", "log", "status"] {
        let _ = std::fs::remove_file(rd.join(format!("{k}.{f}")));
    }
    if alive(pid) {
        return Err(format!("holder pid {pid} did not stop within 30 s"));
    }
    if log.contains("ownership lost") {
        eprint!("{log}");
        return Ok(3);
    }
    println!("unmounted {} and released the MMP device", show(dir));
    Ok(0)
}

/// `OsStr` from node-name bytes (Unix: any bytes).
trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(b: &[u8]) -> &std::ffi::OsStr {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(b)
    }
}
