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

use crate::exit::Exit;
use crate::{Ctx, out, show};
use clap::Args;
use mmp_linux::procedure::{self, HandOver, Unproven};
use mmp_linux::target;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// Fence the storage too (`scsi-pr`: SCSI-3 persistent reservations on the MMP area and
    /// DEVICE; see `mmp hold --help`). Native areas only: ext4 MMP is heartbeated by the
    /// kernel once mounted.
    #[arg(long, value_name = "KIND", value_parser = ["scsi-pr"])]
    fence: Option<String>,
    /// Mount DEVICE through a device-mapper mapping (`/dev/mapper/mmp-NAME`) that the
    /// holder switches to the error target on loss: every further I/O to the data fails at
    /// once on this host, before the --on-loss action. Native areas only; needs
    /// device-mapper (`dm-mod`). `mmp umount` removes the mapping.
    #[arg(long)]
    cut_io: bool,
    /// The device to mount.
    device: PathBuf,
    /// Mount point.
    dir: PathBuf,
}

impl MountArgs {
    /// The device and the --mmp-device (for `UUID=`/`LABEL=` names).
    pub(crate) fn devices_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        std::iter::once(&mut self.device).chain(self.mmp_device.as_mut())
    }
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

fn mount_cmd(a: &MountArgs, source: &Path) -> Command {
    let mut c = Command::new("mount");
    if let Some(t) = &a.fstype {
        c.arg("-t").arg(t);
    }
    if let Some(o) = &a.options {
        c.arg("-o").arg(o);
    }
    c.arg(source).arg(&a.dir);
    c
}

fn run_mount(a: &MountArgs, source: &Path) -> Result<(), String> {
    let out = mount_cmd(a, source)
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

pub(crate) fn mount(c: &Ctx, a: &MountArgs) -> Result<Exit, String> {
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
        // The area itself as the data device: a mount of it could only fail, after a claim.
        target::Format::Native if a.mmp_device.is_none() => Err(format!(
            "{} is a native MMP area, not a file system: protect the data device with it, \
             `mmp mount --mmp-device {} DATA DIR`; nothing was written",
            show(&a.device),
            show(&a.device)
        )),
        target::Format::Native => mount_native(c, a, &mmp_dev),
    }
}

fn mount_ext4(c: &Ctx, a: &MountArgs, t: target::Target) -> Result<Exit, String> {
    let path = show(&a.device);
    if a.cut_io {
        return Err(format!(
            "{path}: --cut-io needs a native MMP area (--mmp-device AREA): ext4 MMP is \
             heartbeated by the kernel once mounted, and no mmp holder stays to cut the I/O"
        ));
    }
    if a.fence.is_some() {
        return Err(format!(
            "{path}: --fence needs a native MMP area (--mmp-device AREA): ext4 MMP is \
             heartbeated by the kernel once mounted, and no mmp holder stays to keep and \
             release the reservation"
        ));
    }
    // Mounted here already: this host's kmmpd heartbeats; say so now rather than watch the
    // block for a whole window and blame "another node".
    if let Some(msg) = crate::cmd::check::mounted_here(&t, &path) {
        note!("mmp: {msg}");
        return Ok(Exit::Refused);
    }
    if let Some(msg) = crate::local::held_here(c, &t, &a.device) {
        note!("mmp: {msg}");
        return Ok(Exit::Refused);
    }
    c.check_hostid(t.format)?;
    c.warn_same_nodename(&t, &path);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let mut progress = crate::progress::Progress::new(path.clone());
    let handed = procedure::hand_to_kernel(
        &t,
        c.identity(&a.device),
        a.force,
        &mut c.faults(),
        &stop,
        &mut |e| progress.event(e),
    );
    match handed {
        Ok(()) => {}
        Err(HandOver::Unproven(Unproven::Refused(r))) => {
            note!("mmp: {}", out::refusal(&path, &r));
            return Ok(out::refusal_code(&r));
        }
        Err(HandOver::Unproven(Unproven::Ended(o))) => {
            return Err(format!(
                "{path}: acquire ended: {}",
                out::outcome(&path, o.as_ref())
            ));
        }
        Err(HandOver::NotReleased(end)) => {
            return Err(format!(
                "{path}: could not hand the device to the kernel: {}",
                out::outcome(&path, end.as_ref())
            ));
        }
    }
    drop(t);
    run_mount(a, &a.device)?;
    outln!(
        "mounted {} on {} (ext4 MMP: the kernel heartbeats now)",
        path,
        show(&a.dir)
    );
    Ok(Exit::Ok)
}

/// The files `mmp mount` keeps for one mount point under the run directory: the holder's
/// stdout, stderr (log), status file and state file.
struct HolderFiles {
    out: PathBuf,
    log: PathBuf,
    status: PathBuf,
    holder: PathBuf,
}

impl HolderFiles {
    fn new(rd: &Path, k: &str) -> HolderFiles {
        HolderFiles {
            out: rd.join(format!("{k}.out")),
            log: rd.join(format!("{k}.log")),
            status: rd.join(format!("{k}.status")),
            holder: rd.join(format!("{k}.holder")),
        }
    }

    /// Leaves nothing behind (a mount that did not happen).
    fn remove_all(&self) {
        for f in [&self.status, &self.out, &self.log, &self.holder] {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn mount_native(c: &Ctx, a: &MountArgs, mmp_dev: &Path) -> Result<Exit, String> {
    c.check_hostid(target::Format::Native)?;
    let rd = run_dir();
    std::fs::create_dir_all(&rd).map_err(|e| format!("{}: {e}", rd.display()))?;
    let k = key(&a.dir);
    let state = rd.join(format!("{k}.state"));
    if state.exists() {
        clear_stale_state(&rd, &k, &state, &a.dir)?;
    }
    if let Ok(t) = target::open(mmp_dev, false)
        && let Some(msg) = crate::local::held_here(c, &t, mmp_dev)
    {
        note!("mmp: {msg}");
        return Ok(Exit::Refused);
    }
    // A data device already mounted here (outside mmp) would be mounted twice, and
    // its first mount is not protected: refuse before anything is written.
    if let Ok(Some(mp)) = mmp_linux::blockdev::Device::open(&a.device, false)
        .map_err(|e| e.to_string())
        .and_then(|d| d.is_mounted().map_err(|e| e.to_string()))
    {
        note!(
            "mmp: {} is already mounted on this host at {mp}; unmount it first \
             (nothing was written)",
            show(&a.device)
        );
        return Ok(Exit::Refused);
    }
    // The cut-off mapping first: an error here leaves nothing written.
    let cut = if a.cut_io {
        let name = mmp_linux::dm::name_for(&a.device);
        Some(
            mmp_linux::dm::Mapping::create(&name, &a.device)
                .map_err(|e| format!("--cut-io: {e}; nothing was written"))?,
        )
    } else {
        None
    };
    let drop_cut = || {
        if let Some(m) = &cut {
            let _ = m.remove();
        }
    };
    let files = HolderFiles::new(&rd, &k);
    let _ = std::fs::remove_file(&files.out);
    let _ = std::fs::remove_file(&files.holder);
    // Readiness comes over the systemd notify protocol (the holder sends READY=1 once every
    // device is held, fenced and declared acquired), on an abstract socket of our own.
    let (notify, notify_name) = notify_socket().map_err(|e| format!("notify socket: {e}"))?;
    let mut child = spawn_holder(c, a, mmp_dev, &files, cut.as_ref(), &notify_name)
        .inspect_err(|_| drop_cut())?;
    if let Some(code) = wait_ready(&mut child, &notify, &files)? {
        files.remove_all();
        drop_cut();
        return Ok(code);
    }
    drop(notify);
    let source = cut
        .as_ref()
        .map_or(a.device.as_path(), |m| m.node.as_path());
    if let Err(e) = run_mount(a, source) {
        // Mount failed: release the device.
        stop_holder(child.id());
        let _ = child.wait();
        drop_cut();
        files.remove_all();
        return Err(format!("{}; released {}", e.trim_end(), show(mmp_dev)));
    }
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let start = proc_start_time(child.id()).map_or_else(String::new, |t| format!("start={t}\n"));
    let cut_line = cut
        .as_ref()
        .map_or_else(String::new, |m| format!("cut_io={}\n", m.name));
    let body = format!(
        "pid={}\n{start}mmp_device={}\ndevice={}\ndir={}\n{cut_line}",
        child.id(),
        abs(mmp_dev).display(),
        abs(&a.device).display(),
        abs(&a.dir).display()
    );
    std::fs::write(&state, body).map_err(|e| format!("{}: {e}", state.display()))?;
    outln!(
        "mounted {} on {} (heartbeat: pid {} on {}; state in {})",
        show(&a.device),
        show(&a.dir),
        child.id(),
        show(mmp_dev),
        state.display()
    );
    Ok(Exit::Ok)
}

/// Starts the detached holder (`mmp hold` in its own process group) of `mmp_dev` for the
/// mount of `a`: it guards the data device (never CLEAN while it is mounted here), cuts
/// I/O through `cut` on loss, and notifies `notify_name` when every device is held.
fn spawn_holder(
    c: &Ctx,
    a: &MountArgs,
    mmp_dev: &Path,
    files: &HolderFiles,
    cut: Option<&mmp_linux::dm::Mapping>,
    notify_name: &str,
) -> Result<Child, String> {
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
        .arg(&files.status)
        .arg("--state-file")
        .arg(&files.holder)
        .env("NOTIFY_SOCKET", notify_name);
    if a.force {
        cmd.arg("--force");
    }
    if let Some(kind) = &a.fence {
        cmd.arg("--fence").arg(kind);
    }
    // The holder never releases while the data device is mounted here (SIGTERM from an
    // admin or the OOM killer's neighbour must not tell other hosts the data is free).
    cmd.arg("--guard").arg(&a.device);
    if let Some(m) = cut {
        cmd.arg("--cut-io").arg(&m.name);
    }
    cmd.arg(mmp_dev);
    let stdout =
        std::fs::File::create(&files.out).map_err(|e| format!("{}: {e}", files.out.display()))?;
    let stderr =
        std::fs::File::create(&files.log).map_err(|e| format!("{}: {e}", files.log.display()))?;
    {
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start the holder: {e}"))
}

/// Waits for the holder's READY=1, relaying its progress (its log) to stderr. `None` once
/// ready; `Some(exit)` when the holder ended first (refused: 1, lost: 3, else an error),
/// after relaying what it wrote last.
fn wait_ready(
    child: &mut Child,
    notify: &std::os::unix::net::UnixDatagram,
    files: &HolderFiles,
) -> Result<Option<Exit>, String> {
    let start = Instant::now();
    let mut shown = 0usize;
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&files.log) {
            let _ = f.read_to_string(&mut text);
            if text.len() > shown {
                note_raw!("{}", &text[shown..]);
                shown = text.len();
            }
        }
        let mut msg = [0u8; 256];
        if let Ok(n) = notify.recv(&mut msg)
            && msg[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1")
        {
            return Ok(None);
        }
        if let Ok(Some(st)) = child.try_wait() {
            let code = match st.code() {
                Some(0 | 1) => Exit::Refused,
                Some(3) => Exit::Lost,
                _ => Exit::Error,
            };
            if let Ok(text) = std::fs::read_to_string(&files.log) {
                note_raw!("{}", text.get(shown..).unwrap_or_default());
            }
            return Ok(Some(code));
        }
        if start.elapsed() > Duration::from_secs(3600) {
            let _ = child.kill();
            return Err("the holder did not acquire within an hour".into());
        }
    }
}

/// A state file for `dir` exists already. Its holder still runs: refuse (unmount first).
/// Its holder is gone (crashed, killed; its pid gone or reused, told by the recorded start
/// time): the state only blocks, so it is removed, unless the recorded data device is still
/// mounted, which the admin must look at first.
fn clear_stale_state(rd: &Path, k: &str, state: &Path, dir: &Path) -> Result<(), String> {
    let st = match read_state(state) {
        Ok(st) => st,
        Err(e) => {
            return Err(format!(
                "{}: {e}; remove it if no mmp mount of {} is running",
                state.display(),
                show(dir)
            ));
        }
    };
    if is_our_holder(&st) {
        return Err(format!(
            "{} already has an mmp mount (holder pid {}, state in {}); run `mmp umount {}` \
             first",
            show(dir),
            st.pid,
            state.display(),
            show(dir)
        ));
    }
    let still_mounted = mmp_linux::blockdev::Device::open(&st.device, false)
        .ok()
        .and_then(|d| d.is_mounted().ok().flatten());
    if let Some(mp) = still_mounted {
        return Err(format!(
            "{} was mounted by an mmp holder (pid {}) that is gone, and is still mounted at \
             {mp} without a heartbeat: unmount it (`umount {mp}`) and check {} with `mmp \
             status`, then mount again",
            show(&st.device),
            st.pid,
            show(&st.mmp_device)
        ));
    }
    note!(
        "mmp: removing the state of a previous mount of {} whose holder (pid {}) is gone",
        show(dir),
        st.pid
    );
    for f in ["state", "out", "log", "status", "holder"] {
        let _ = std::fs::remove_file(rd.join(format!("{k}.{f}")));
    }
    Ok(())
}

/// The holders `mmp mount` started that still run: pid, MMP device, mount point.
pub(crate) fn live_mounts() -> Vec<(u32, PathBuf, PathBuf)> {
    read_states(&run_dir())
        .into_iter()
        .filter(is_our_holder)
        .map(|st| (st.pid, st.mmp_device, st.dir))
        .collect()
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

/// The start time of process `pid` (clock ticks after boot, field 22 of /proc/PID/stat):
/// with the pid it names one process, even after the pid is reused.
/// A datagram socket for the holder's `READY=1` (the systemd notify protocol), bound to a
/// fresh abstract name (no file, no path length limit), with a 20 ms receive timeout so the
/// caller can also watch the holder. Returns it and the `NOTIFY_SOCKET` value.
fn notify_socket() -> std::io::Result<(std::os::unix::net::UnixDatagram, String)> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let name = format!(
        "mmp-mount/{}/{:016x}",
        std::process::id(),
        mmp_linux::clock::random_seed()
    );
    let sock = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    Ok((sock, format!("@{name}")))
}

/// What a holder's `--state-file` says of how it ended: its exit status, if it ended.
fn holder_exit(path: &Path) -> Option<u8> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    if value("state")? != "ended" {
        return None;
    }
    value("exit")?.parse().ok()
}

/// The start time of `pid` (clock ticks since boot, `/proc/PID/stat` field 22): with the
/// pid, it names one process even after the pid is reused.
pub(crate) fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What `mmp mount` recorded for one native mount.
#[derive(Debug)]
struct MountState {
    key: String,
    pid: u32,
    /// Absent in state files of older versions.
    start: Option<u64>,
    mmp_device: PathBuf,
    device: PathBuf,
    dir: PathBuf,
}

fn read_states(rd: &Path) -> Vec<MountState> {
    let Ok(entries) = std::fs::read_dir(rd) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".state") else {
            continue;
        };
        let Ok(body) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        let Some(pid) = field("pid").and_then(|p| p.parse().ok()) else {
            continue;
        };
        out.push(MountState {
            key: key.to_owned(),
            pid,
            start: field("start").and_then(|t| t.parse().ok()),
            mmp_device: field("mmp_device").map(PathBuf::from).unwrap_or_default(),
            device: field("device").map(PathBuf::from).unwrap_or_default(),
            dir: field("dir").map(PathBuf::from).unwrap_or_default(),
        });
    }
    out
}

/// Whether two names mean the same mount point or device: the same path, the same file, or
/// the same block device.
fn same(a: &Path, b: &Path) -> bool {
    if b.as_os_str().is_empty() {
        return false;
    }
    a == b
        || std::fs::canonicalize(a).is_ok_and(|x| std::fs::canonicalize(b).is_ok_and(|y| x == y))
        || crate::resolve::device_key(a).is_some_and(|k| crate::resolve::device_key(b) == Some(k))
}

/// Whether `st.pid` is still the holder `mmp mount` started: alive, started when it was
/// recorded, and running `mmp ... hold`. A pid reused by another process is never signalled.
fn is_our_holder(st: &MountState) -> bool {
    if !alive(st.pid) {
        return false;
    }
    if let Some(t) = st.start
        && proc_start_time(st.pid) != Some(t)
    {
        return false;
    }
    std::fs::read(format!("/proc/{}/cmdline", st.pid))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == b"hold"))
}

/// `mmp umount DIR|DEVICE`: unmount, stop the holder (it releases), then remove the
/// `--cut-io` mapping, if any.
pub(crate) fn umount(arg: &Path) -> Result<Exit, String> {
    let rd = run_dir();
    let cut = read_states(&rd)
        .into_iter()
        .find(|st| same(arg, &st.dir) || same(arg, &st.device) || same(arg, &st.mmp_device))
        .and_then(|st| {
            std::fs::read_to_string(rd.join(format!("{}.state", st.key)))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("cut_io=").map(str::to_owned))
        });
    let r = umount_holder(arg);
    if let Some(name) = cut
        && let Err(e) = mmp_linux::dm::Mapping::find(&name).and_then(|m| m.remove())
    {
        note!("mmp: could not remove the --cut-io mapping {name}: {e}");
    }
    r
}

fn umount_holder(arg: &Path) -> Result<Exit, String> {
    let rd = run_dir();
    // Found before unmounting: afterwards the mount point no longer resolves to the mount.
    let st = read_states(&rd)
        .into_iter()
        .find(|st| same(arg, &st.dir) || same(arg, &st.device) || same(arg, &st.mmp_device));
    let mp = st.as_ref().map_or(arg, |s| s.dir.as_path());
    // A recorded mount whose directory was unmounted already (by hand, or by an earlier
    // `mmp umount` that found the data mounted elsewhere too): on to the holder.
    let already_gone = st.is_some() && !is_mount_point(mp);
    if !already_gone {
        let out = Command::new("umount")
            .arg(mp)
            .output()
            .map_err(|e| format!("cannot run umount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "umount {} failed: {}",
                show(mp),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    // The data still mounted elsewhere on this host (a second mount, a bind mount): its
    // holder keeps the device held until it is unmounted everywhere (it never releases
    // under a mount), so say so instead of waiting for a holder that will not stop.
    if let Some(st) = &st
        && let Ok(dev) = mmp_linux::blockdev::Device::open(&st.device, false)
        && let Ok(Some(other)) = dev.is_mounted()
    {
        note!(
            "mmp: {} is still mounted at {other}: its holder keeps {} held (heartbeating) \
             until the data is unmounted everywhere on this host; unmount {other}, then run \
             `mmp umount {}` again",
            show(&st.device),
            show(&st.mmp_device),
            show(&st.device)
        );
        return Ok(Exit::Refused);
    }
    let Some(st) = st else {
        outln!(
            "unmounted {} (no mmp holder recorded for it in {}; an ext4 file system with MMP \
             is released by the kernel on unmount)",
            show(arg),
            rd.display()
        );
        return Ok(Exit::Ok);
    };
    if is_our_holder(&st) {
        stop_and_report(&rd, &st)
    } else {
        report_gone_holder(&rd, &st)
    }
}

/// Whether `dir` is a mount point now (`/proc/self/mountinfo`, octal escapes decoded).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(want) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    info.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ').nth(4).is_some_and(|m| {
            mmp_linux::blockdev::unescape_mount_field(m) == want.as_os_str().as_bytes()
        })
    })
}

/// The run directory's files of the mount `st` (state, holder output, log, status, state
/// file).
fn state_files(rd: &Path, st: &MountState) -> [PathBuf; 5] {
    ["state", "out", "log", "status", "holder"].map(|f| rd.join(format!("{}.{f}", st.key)))
}

/// After the unmount, when `st`'s holder is no longer our process: a holder told to stop
/// while the data was mounted (`--guard`) releases by itself as soon as the unmount is
/// done and may have exited already; its state file says how it ended.
fn report_gone_holder(rd: &Path, st: &MountState) -> Result<Exit, String> {
    let ended = holder_exit(&rd.join(format!("{}.holder", st.key)));
    let log = std::fs::read_to_string(rd.join(format!("{}.log", st.key))).unwrap_or_default();
    for f in state_files(rd, st) {
        let _ = std::fs::remove_file(f);
    }
    if ended == Some(0) {
        outln!(
            "unmounted {} and released the MMP device {}",
            show(&st.dir),
            show(&st.mmp_device)
        );
        return Ok(Exit::Ok);
    }
    if !log.is_empty() {
        note_raw!("{log}");
    }
    // The holder ended on a loss (its state file says exit 3): exit 3, as it did.
    if ended == Some(3) {
        note!(
            "mmp: unmounted {}; its holder had lost {} (see above) and exited",
            show(&st.dir),
            show(&st.mmp_device)
        );
        return Ok(Exit::Lost);
    }
    Err(format!(
        "unmounted {}, but its holder (pid {}) is no longer running (the pid is gone or \
         belongs to another process now, which was left alone): {} was not released; \
         check it with `mmp status {}`",
        show(&st.dir),
        st.pid,
        show(&st.mmp_device),
        show(&st.mmp_device)
    ))
}

/// After the unmount: stops `st`'s holder (it releases CLEAN now that the data is
/// unmounted), waits up to 30 s, and reports how it ended (its state file).
fn stop_and_report(rd: &Path, st: &MountState) -> Result<Exit, String> {
    stop_holder(st.pid);
    let start = Instant::now();
    while alive(st.pid) && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(rd.join(format!("{}.log", st.key))).unwrap_or_default();
    let ended = holder_exit(&rd.join(format!("{}.holder", st.key)));
    if alive(st.pid) {
        return Err(format!(
            "holder pid {} did not stop within 30 s (state kept in {})",
            st.pid,
            rd.display()
        ));
    }
    for f in state_files(rd, st) {
        let _ = std::fs::remove_file(f);
    }
    match ended {
        Some(0) => {}
        Some(3) => {
            note_raw!("{log}");
            return Ok(Exit::Lost);
        }
        other => {
            note_raw!("{log}");
            return Err(format!(
                "unmounted {}, but its holder {}: check {} with `mmp status {}`",
                show(&st.dir),
                other.map_or_else(
                    || "left no end state".to_string(),
                    |c| format!("ended with exit status {c}")
                ),
                show(&st.mmp_device),
                show(&st.mmp_device)
            ));
        }
    }
    outln!(
        "unmounted {} and released the MMP device {}",
        show(&st.dir),
        show(&st.mmp_device)
    );
    Ok(Exit::Ok)
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

/// One recorded holder, as `mmp list` reports it.
struct Listed {
    st: MountState,
    /// When `mmp mount` finished (the state file's modification time), Unix seconds.
    since: Option<u64>,
    alive: bool,
    /// Not running, and its state file says it ended with exit 0 (released cleanly).
    released: bool,
}

/// `mmp list`: what this host holds through `mmp mount`, from the holders' state files in
/// the run directory. Exit 0 when every recorded holder runs (or none is recorded), 1 when
/// any is gone (its device was not released by it), 2 on an error.
pub(crate) fn list(json: bool) -> Result<Exit, String> {
    let rd = run_dir();
    let entries = match std::fs::read_dir(&rd) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !json {
                outln!("no mmp mounts recorded ({} does not exist)", rd.display());
            }
            return Ok(Exit::Ok);
        }
        Err(e) => return Err(format!("{}: {e}", rd.display())),
    };
    let mut code = Exit::Ok;
    let mut names: Vec<std::ffi::OsString> = entries
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.as_encoded_bytes().ends_with(b".state"))
        .collect();
    names.sort();
    let mut listed = Vec::new();
    for name in names {
        let p = rd.join(&name);
        match read_state(&p) {
            Ok(st) => {
                let since = std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs());
                let alive = is_our_holder(&st);
                // A holder that ended by releasing cleanly (exit 0: told to stop while the
                // data was mounted, it released once the data was unmounted by hand): shown
                // as released, not gone (its records stay for `mmp umount`, which removes
                // them; listing writes nothing).
                let released =
                    !alive && holder_exit(&rd.join(format!("{}.holder", st.key))) == Some(0);
                if !alive && !released {
                    code = code.worst(Exit::Refused);
                }
                listed.push(Listed {
                    st,
                    since,
                    alive,
                    released,
                });
            }
            Err(e) => {
                code = Exit::Error;
                if json {
                    outln!(
                        "{}",
                        crate::json::Obj::new("mount")
                            .str("state_file", &show(&p))
                            .str("error", &e)
                            .end()
                    );
                } else {
                    note!("mmp: {}: {e}", show(&p));
                }
            }
        }
    }
    if json {
        for l in &listed {
            outln!("{}", list_json(&rd, l));
        }
    } else {
        list_text(&rd, &listed);
    }
    Ok(code)
}

/// Reads one state file; a file without a pid is not one `mmp mount` wrote.
fn read_state(p: &Path) -> Result<MountState, String> {
    let body = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
    let field = |k: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let pid = field("pid")
        .ok_or("no pid= line: not a state file of `mmp mount`")?
        .parse::<u32>()
        .map_err(|_| "the pid= line is not a process id".to_string())?;
    let key = p
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".state").to_owned())
        .unwrap_or_default();
    Ok(MountState {
        key,
        pid,
        start: field("start").and_then(|t| t.parse().ok()),
        mmp_device: field("mmp_device").map(PathBuf::from).unwrap_or_default(),
        device: field("device").map(PathBuf::from).unwrap_or_default(),
        dir: field("dir").map(PathBuf::from).unwrap_or_default(),
    })
}

/// The HOLDER column: running, ended after a clean release, or gone otherwise.
fn holder_word<'a>(l: &Listed, alive: &'a str, released: &'a str, gone: &'a str) -> &'a str {
    if l.alive {
        alive
    } else if l.released {
        released
    } else {
        gone
    }
}

fn list_json(rd: &Path, l: &Listed) -> String {
    let since = l.since.map_or_else(
        || "null,\"since_unix\":null".to_owned(),
        |s| format!("{},\"since_unix\":{s}", out::json_str(&out::utc(s))),
    );
    format!(
        "{{\"schema\":{},\"kind\":\"mount\",\"device\":{},\"mmp_device\":{},\"mount_point\":{},\"pid\":{},\"since\":{since},\
         \"holder\":\"{}\",\"state_file\":{}}}",
        crate::json::SCHEMA,
        out::json_str(&show(&l.st.device)),
        out::json_str(&show(&l.st.mmp_device)),
        out::json_str(&show(&l.st.dir)),
        l.st.pid,
        holder_word(l, "alive", "released", "gone"),
        out::json_str(&show(&rd.join(format!("{}.state", l.st.key))))
    )
}

fn list_text(rd: &Path, listed: &[Listed]) {
    if listed.is_empty() {
        outln!("no mmp mounts recorded in {}", rd.display());
        return;
    }
    let rows: Vec<[String; 6]> = listed
        .iter()
        .map(|l| {
            [
                show(&l.st.device),
                show(&l.st.mmp_device),
                show(&l.st.dir),
                l.st.pid.to_string(),
                l.since.map_or_else(|| "?".to_owned(), out::utc),
                holder_word(l, "alive", "released", "GONE").to_owned(),
            ]
        })
        .collect();
    let head = [
        "DEVICE",
        "MMP DEVICE",
        "MOUNT POINT",
        "PID",
        "SINCE",
        "HOLDER",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (w, c) in w.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s
    };
    outln!("{}", line(head));
    for r in &rows {
        outln!("{}", line(r.each_ref().map(String::as_str)));
    }
    for l in listed.iter().filter(|l| l.released) {
        note!(
            "mmp: the holder of {} (pid {}) released {} cleanly and exited (the data was \
             unmounted); `mmp umount {}` removes the record",
            show(&l.st.dir),
            l.st.pid,
            show(&l.st.mmp_device),
            show(&l.st.device)
        );
    }
    for l in listed.iter().filter(|l| !l.alive && !l.released) {
        note!(
            "mmp: the holder of {} (pid {}) is gone (the pid no longer runs `mmp hold`): {} is \
             not heartbeated from this host; check it with `mmp status {}`",
            show(&l.st.dir),
            l.st.pid,
            show(&l.st.mmp_device),
            show(&l.st.mmp_device)
        );
    }
}
