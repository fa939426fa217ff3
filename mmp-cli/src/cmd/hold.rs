//! `mmp hold` and `mmp run`: acquire every device concurrently on the heartbeat engine,
//! keep them, react to loss, release CLEAN at the end.

use crate::exit::Exit;
use crate::progress::Progress;
use crate::{Ctx, out, show};
use clap::Args;
use mmp_core::machine::{Config, Event, Identity, Loss, Machine, Op, Outcome, Refusal};
use mmp_linux::engine::{self, Engine, EngineEvent, Report};
use mmp_linux::watchdog::Watchdog;
use mmp_linux::{clock, owner_log, pr, procedure, target};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

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

#[derive(Clone, Debug, PartialEq, Eq)]
enum LossAction {
    Exit,
    Kill,
    Exec(String),
    Reboot,
}

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

/// Prints one line on stdout and flushes it, ignoring errors: a holder must keep
/// heartbeating (and release cleanly) even when whoever read its stdout has gone away.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn notify_ready() {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = sock.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| s.send_to_addr(b"READY=1\n", &a))
    } else {
        s.send_to(b"READY=1\n", Path::new(&sock))
    };
    if let Err(e) = res {
        note!("mmp: warning: could not notify systemd: {e}");
    }
}

/// Per-device state lines (JSON, docs/json.md), for SIGHUP and the status file: one `holder`
/// object per device, then a `summary`.
fn report_lines(r: &Report, formats: &[target::Format], ids: &[Identity]) -> String {
    let mut s = String::new();
    let fence = r.self_fence.map_or("off", |f| f.name());
    for (i, d) in r.slots.iter().enumerate() {
        let st = d.stats;
        let state = match d.outcome {
            None if d.owned_until.is_some() => "held",
            None => d.phase.name(),
            Some(o) => out::outcome_name(&o),
        };
        let path = out::esc(d.path.as_os_str().as_encoded_bytes());
        let o = crate::json::Obj::device("holder", &path, formats.get(i).copied())
            .str("state", state)
            .raw(
                "last_write",
                d.last_write_wall_ms
                    .map_or("null".to_string(), |t| format!("{:.3}", t as f64 / 1000.0)),
            )
            .raw(
                "last_cycle_ms",
                format!("{:.3}", st.last_cycle.as_secs_f64() * 1000.0),
            )
            .raw(
                "advertised_delay_ms",
                format!("{:.3}", st.advertised_delay.as_secs_f64() * 1000.0),
            )
            .raw("interval_ms", st.interval.as_millis())
            .raw("fail_window_ms", st.fail_window.as_millis())
            .raw("beats", st.beats)
            .raw("io_failures", st.io_failures)
            .raw(
                "max_gap_ms",
                format!("{:.3}", st.max_gap.as_secs_f64() * 1000.0),
            )
            .str("self_fence", fence);
        let o = match (d.outcome, ids.get(i)) {
            (Some(Outcome::Refused(x)), _) => o.str("error", &out::refusal(&path, &x)),
            (Some(Outcome::Lost(l)), Some(me)) => o.str("error", &out::loss(&path, &l, me)),
            _ => o,
        };
        s.push_str(&o.end());
        s.push('\n');
    }
    let g = &r.gaps;
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    let summary = crate::json::Obj::new("summary")
        .raw("summary", true)
        .raw("devices", r.slots.len())
        .raw("gaps", g.count())
        .raw("gap_p50_ms", ms(g.quantile(0.5)))
        .raw("gap_p99_ms", ms(g.quantile(0.99)))
        .raw("gap_p999_ms", ms(g.quantile(0.999)))
        .raw("gap_max_ms", ms(g.max()))
        .str("self_fence", fence)
        .raw("watchdog_pets", r.watchdog_pets)
        .raw("mlock", rt_json(r.realtime.mlock.as_ref()))
        .raw("sched_fifo", rt_json(r.realtime.fifo.as_ref()))
        .str("io", &r.io);
    s.push_str(&summary.end());
    s.push('\n');
    s
}

fn rt_json(r: Option<&Result<(), String>>) -> String {
    match r {
        None => "\"off\"".into(),
        Some(Ok(())) => "\"ok\"".into(),
        Some(Err(e)) => out::json_str(&out::plain(e)),
    }
}

fn write_status_file(path: &Path, body: &str) {
    // PATH.tmp: the status and state files of one holder never share a temporary.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn run_loss_action(action: &LossAction, path: &str, reason: &str, child: Option<&mut Child>) {
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

fn kill_group(ch: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(ch.id()).unwrap_or(0)) {
        let _ = rustix::process::kill_process_group(pid, sig);
        // A stopped job (Ctrl-Z, or a read from a terminal it does not own) acts on SIGTERM
        // only once continued.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::CONT);
    }
}

/// How `mmp run` reports the end of its command (as a shell does): its exit status, 128 +
/// the signal that killed it.
fn exit_code_of(status: std::process::ExitStatus) -> Exit {
    use std::os::unix::process::ExitStatusExt;
    Exit::Command(status.code().map_or_else(
        || 128 + u8::try_from(status.signal().unwrap_or(0)).unwrap_or(0),
        |c| u8::try_from(c).unwrap_or(1),
    ))
}

/// Mounts in `after` (`/proc/self/mountinfo` text) whose mount id is not in `before`, as
/// "SOURCE at MOUNTPOINT".
fn new_mounts(before: &[u8], after: &[u8]) -> Vec<String> {
    let ids = |text: &[u8]| -> std::collections::HashSet<Vec<u8>> {
        text.split(|&b| b == b'\n')
            .filter_map(|l| l.split(|&b| b == b' ').next().map(<[u8]>::to_vec))
            .filter(|id| !id.is_empty())
            .collect()
    };
    let old = ids(before);
    let text = String::from_utf8_lossy(after);
    text.lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .is_some_and(|id| !old.contains(id.as_bytes()))
        })
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let mp = f.get(4).copied().unwrap_or("?");
            let src = l
                .split(" - ")
                .nth(1)
                .and_then(|r| r.split(' ').nth(1))
                .unwrap_or("?");
            format!("{src} at {mp}")
        })
        .collect()
}

/// The holder's state file (`--state-file`): KEY=VALUE lines, schema 1 (docs/json.md).
struct StateFile<'a>(Option<&'a Path>);

/// The version of the state file's format. Adding keys keeps it.
const STATE_SCHEMA: u32 = 1;

impl StateFile<'_> {
    /// Replaces the file (write to a temporary, then rename: a reader sees the old or the new
    /// state, never half of one). Errors are ignored: the holder keeps heartbeating.
    fn write(&self, state: &str, exit: Option<u8>) {
        self.write_with(state, exit, "");
    }

    /// `state=ready` with the holder's health, refreshed every second: the shortest
    /// interval and fail window of its devices, the oldest last successful heartbeat write
    /// (Unix seconds), the longest last heartbeat cycle, and how many devices were lost.
    fn ready(&self, r: &Report) {
        if self.0.is_none() {
            return;
        }
        let held = r.slots.iter().filter(|s| !s.forgotten);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (mut iv, mut fw, mut cycle) = (None::<Duration>, None::<Duration>, Duration::ZERO);
        let (mut oldest, mut lost) = (None::<u64>, 0u32);
        for s in held {
            if matches!(s.outcome, Some(Outcome::Lost(_))) {
                lost += 1;
            }
            iv = Some(iv.map_or(s.stats.interval, |v| v.min(s.stats.interval)));
            fw = Some(fw.map_or(s.stats.fail_window, |v| v.min(s.stats.fail_window)));
            cycle = cycle.max(s.stats.last_cycle);
            if let Some(w) = s.last_write_wall_ms {
                oldest = Some(oldest.map_or(w, |o| o.min(w)));
            }
        }
        let mut live = format!("lost={lost}\nlast_cycle_ms={:.0}\n", ms(cycle));
        if let (Some(iv), Some(fw)) = (iv, fw) {
            live.push_str(&format!(
                "interval_ms={:.0}\nfail_window_ms={:.0}\n",
                ms(iv),
                ms(fw)
            ));
        }
        if let Some(w) = oldest {
            live.push_str(&format!("last_write={}.{:03}\n", w / 1000, w % 1000));
        }
        // When these figures were true: a reader judges the last write's age as of this
        // instant, not as of its own clock a second later.
        let now = mmp_linux::clock::now().wall_ms;
        live.push_str(&format!("updated={}.{:03}\n", now / 1000, now % 1000));
        self.write_with("ready", None, &live);
    }

    fn write_with(&self, state: &str, exit: Option<u8>, extra: &str) {
        let Some(path) = self.0 else {
            return;
        };
        let pid = std::process::id();
        let mut body = format!("schema={STATE_SCHEMA}\npid={pid}\n");
        if let Some(t) = crate::cmd::mount::proc_start_time(pid) {
            body.push_str(&format!("start={t}\n"));
        }
        body.push_str(&format!("state={state}\n"));
        if let Some(code) = exit {
            body.push_str(&format!("exit={code}\n"));
        }
        body.push_str(extra);
        write_status_file(path, &body);
    }
}

/// `hold` (command = None) and `run`, keeping `--state-file` up to date around them.
pub(crate) fn hold(
    c: &Ctx,
    opts: &HoldOpts,
    devices: &[PathBuf],
    command: Option<&[String]>,
) -> Result<Exit, String> {
    let state = StateFile(opts.state_file.as_deref());
    state.write("starting", None);
    let res = hold_inner(c, opts, devices, command, &state);
    state.write(
        "ended",
        Some(res.as_ref().map_or(Exit::Error.code(), |e| e.code())),
    );
    res
}

fn hold_inner(
    c: &Ctx,
    opts: &HoldOpts,
    devices: &[PathBuf],
    command: Option<&[String]>,
    state: &StateFile<'_>,
) -> Result<Exit, String> {
    let action = parse_loss(&opts.on_loss)?;
    let wait_limit = match opts.wait {
        Some(Some(s)) if !s.is_finite() || s < 0.0 => {
            return Err(format!(
                "--wait={s}: expected a number of seconds (0 or more), or --wait alone to wait \
                 without a limit"
            ));
        }
        Some(Some(s)) => Some(Duration::from_secs_f64(s)),
        _ => None,
    };
    let queue = opts.wait.is_some();
    // Declared before the open devices so that it is dropped after them (a mapping still
    // open cannot be removed).
    let mut made_cuts = MadeCuts::default();
    let mut guards = Vec::with_capacity(opts.guard.len());
    for g in &opts.guard {
        let dev = mmp_linux::blockdev::Device::open(g, false)
            .map_err(|e| format!("--guard {}: {e}", show(g)))?;
        guards.push((show(g), dev));
    }
    let mut cuts = Vec::with_capacity(opts.cut_io.len());
    for arg in &opts.cut_io {
        let m = match arg.split_once('=') {
            None => {
                mmp_linux::dm::Mapping::find(arg).map_err(|e| format!("--cut-io {arg}: {e}"))?
            }
            Some((name, dev)) => match mmp_linux::dm::Mapping::find(name) {
                Ok(m) => m,
                Err(_) => {
                    let m = mmp_linux::dm::Mapping::create(name, Path::new(dev))
                        .map_err(|e| format!("--cut-io {arg}: {e}; nothing was written"))?;
                    made_cuts.made.push(m.clone());
                    m
                }
            },
        };
        let name = &m.name;
        let dev = mmp_linux::blockdev::Device::open(&m.node, false)
            .map_err(|e| format!("--cut-io {name}: {}: {e}", m.node.display()))?;
        guards.push((m.node.display().to_string(), dev));
        cuts.push(m);
    }
    // Where a guarded device is mounted on this host, if anywhere.
    let guard_mounted = || {
        guards
            .iter()
            .find_map(|(p, d)| d.is_mounted().ok().flatten().map(|mp| (p.clone(), mp)))
    };
    if action == LossAction::Kill && command.is_none() {
        return Err("--on-loss kill needs `mmp run` (there is no command to kill)".into());
    }
    crate::resolve::refuse_duplicates(devices)?;
    // Open everything first: any bad device is an error before anything is acquired.
    let mut targets = Vec::with_capacity(devices.len());
    for d in devices {
        let t = target::open(d, true).map_err(|e| e.to_string())?;
        c.check_hostid(t.format)?;
        c.warn_same_nodename(&t, &show(d));
        if let Some(msg) = crate::cmd::check::mounted_here(&t, &show(d))
            .or_else(|| crate::local::held_here(c, &t, d))
        {
            note!("mmp: {msg}");
            return Ok(Exit::Refused);
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
    // With several devices, refuse what the first read already refuses before anything is
    // claimed: a clean device claimed next to a refused one would keep that claim (an
    // acquire given up before it is verified never writes CLEAN) and look stale to others.
    if targets.len() > 1 {
        let mut code = Exit::Ok;
        for (d, t) in devices.iter().zip(&targets) {
            if let Some(r) = preflight(c, opts.force || queue, d, t) {
                note!("mmp: {}", out::refusal(&show(d), &r));
                code = code.worst(out::refusal_code(&r));
            }
        }
        if code != Exit::Ok {
            note!("mmp: nothing written to any device (all or nothing)");
            return Ok(code);
        }
    }
    // Persistent reservations: every device must take them, checked before anything is
    // written; our key is registered before the MMP claim can be written.
    let fence = match &opts.fence {
        None => None,
        Some(_) => Some(open_fence(c, devices, &opts.guard)?),
    };
    // Watchdog arithmetic before anything is written.
    let wd_timeout = match &opts.watchdog_device {
        None => None,
        Some(p) => Some(watchdog_timeout(opts, &targets, p)?),
    };

    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    // Which signal stopped `run` before its command ran: it exits 128 + that signal.
    let got_int = Arc::new(AtomicBool::new(false));
    let got_term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term)).map_err(|e| e.to_string())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGINT, Arc::clone(&got_int))
        .map_err(|e| e.to_string())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&got_term))
        .map_err(|e| e.to_string())?;
    // Under `run` stdout belongs to the command: mmp's own lines go to stderr.
    let say = |line: &str| {
        if command.is_some() {
            note!("mmp: {line}");
        } else {
            say(line);
        }
    };
    let terminal = command.and_then(|_| mmp_linux::job::Foreground::of_stdin());
    // Ctrl-Z stops the command, not the heartbeat (job.rs).
    let mut relay = command.map(|_| crate::job::Relay::new());
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(|e| e.to_string())?;

    let from_env = engine::Options::from_env();
    let mut faults = from_env.faults;
    if let Some(p) = &opts.owner_log {
        let host = String::from_utf8_lossy(&c.nodename);
        faults = Box::new(
            owner_log::OwnerLog::open(p, &host, faults)
                .map_err(|e| format!("--owner-log {}: {e}", p.display()))?,
        );
    }
    let (tx, rx) = mpsc::channel::<EngineEvent>();
    let mut eng = Engine::start(
        engine::Options {
            realtime: !opts.no_realtime,
            watchdog: None,
            faults,
            batch_io: from_env.batch_io,
        },
        tx,
    );
    let paths: Vec<String> = devices.iter().map(|d| show(d)).collect();
    let identities: Vec<Identity> = devices.iter().map(|d| c.identity(d)).collect();
    let n = targets.len();
    let formats: Vec<target::Format> = targets.iter().map(|t| t.format).collect();
    for (t, id) in targets.into_iter().zip(&identities) {
        let mut cfg = Config::new(t.layout, *id, clock::random_seed());
        cfg.force = opts.force;
        cfg.wait = queue;
        eng.add(t, Machine::new(cfg, Op::Acquire, clock::now()));
    }
    let mut progress: Vec<Progress> = paths.iter().map(|p| Progress::new(p.clone())).collect();
    let many = n > 4;
    let mut acquired = vec![false; n];
    let mut done: Vec<Option<Outcome>> = vec![None; n];
    let mut ready = false;
    let mut releasing = false;
    // A release was asked for (signal, the command ended) and waits for the guarded data
    // devices to be unmounted.
    let mut release_wanted = false;
    let mut guard_note: Option<Instant> = None;
    let mut mounts_before: Option<Vec<u8>> = None;
    let mut code = Exit::Ok;
    let mut lost = false;
    let mut child: Option<Child> = None;
    let mut child_code: Option<Exit> = None;
    let mut last_status_write = Instant::now();
    let mut last_summary = Instant::now();
    let mut io_warned = vec![false; n];
    // Whether we hold persistent reservations that a clean release gives back.
    let mut fence_reserved = false;
    // The reservations were taken (acquired is reported only after that).
    let mut fenced = false;
    let started = Instant::now();
    loop {
        // 25 ms: how late a SIGTERM release may start (signals cannot wake the channel).
        // The CLI never removes a device: a slot's index is the order of the adds.
        match rx
            .recv_timeout(Duration::from_millis(25))
            .map(|e| (e.slot.index(), e.event))
        {
            Ok((slot, event)) => match event {
                Event::Acquired => {
                    acquired[slot] = true;
                    // Fenced: reported once the reservations are ours too.
                    if fence.is_none() {
                        say(&format!("acquired {}", paths[slot]));
                    }
                }
                Event::Progress { .. } if !many => progress[slot].event(&event),
                Event::IoRetry(e) if !io_warned[slot] || c.verbose => {
                    note!(
                        "mmp: {}: heartbeat I/O failed ({}); retrying within the fail window",
                        paths[slot],
                        out::io_error_text(e)
                    );
                    io_warned[slot] = true;
                }
                Event::Finished(o) => {
                    done[slot] = Some(o);
                    match o {
                        Outcome::Refused(r) => {
                            note!("mmp: {}", out::refusal(&paths[slot], &r));
                            code = code.worst(out::refusal_code(&r));
                            if !releasing {
                                if acquired.iter().any(|&a| a) || n > 1 {
                                    note!("mmp: releasing the other devices (all or nothing)");
                                }
                                releasing = true;
                                eng.release_all();
                            }
                        }
                        Outcome::Lost(l) => {
                            // The reservation stays until the next owner preempts it.
                            fence_reserved = false;
                            let msg = out::loss(&paths[slot], &l, &identities[slot]);
                            note!("mmp: {msg}");
                            if !lost {
                                lost = true;
                                cut_io(&cuts);
                                run_loss_action(&action, &paths[slot], &msg, child.as_mut());
                            }
                            code = Exit::Lost;
                            if !releasing {
                                releasing = true;
                                eng.release_all();
                            }
                        }
                        Outcome::Released => {
                            say(&format!("released {}", paths[slot]));
                        }
                        _ => {}
                    }
                }
                _ => {}
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if many && !ready && !releasing && last_summary.elapsed() >= Duration::from_secs(5) {
            let got = acquired.iter().filter(|&&a| a).count();
            note!("mmp: acquiring {n} devices: {got} held so far");
            last_summary = Instant::now();
        }
        if let Some(limit) = wait_limit
            && !ready
            && !releasing
            && started.elapsed() >= limit
        {
            note!(
                "mmp: gave up waiting after {:.1} s (--wait): still held by another host",
                limit.as_secs_f64()
            );
            code = code.worst(Exit::Refused);
            releasing = true;
            eng.release_all();
        }
        if term.swap(false, Ordering::SeqCst) && !releasing && !release_wanted {
            release_wanted = true;
            if let Some(ch) = child.as_ref() {
                kill_group(ch, rustix::process::Signal::TERM);
            }
        }
        if release_wanted && !releasing {
            if !ready {
                // Not acquired yet: nothing is mounted under our protection.
                releasing = true;
                eng.release_all();
            } else if let Some((g, mp)) = guard_mounted() {
                if guard_note.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    note!(
                        "mmp: not releasing {}: the guarded device {g} is still mounted at \
                         {mp}; unmount it first (`umount {mp}`), then mmp releases. The \
                         heartbeat goes on meanwhile",
                        paths.join(", ")
                    );
                    guard_note = Some(Instant::now());
                }
            } else {
                // The data is quiesced: the reservations go before the MMP blocks say CLEAN.
                if let Some(f) = fence.as_ref().filter(|_| fence_reserved) {
                    for e in f.release() {
                        note!(
                            "mmp: --fence scsi-pr: could not release {e}; the next owner \
                             preempts it"
                        );
                    }
                    fence_reserved = false;
                }
                releasing = true;
                eng.release_all();
            }
        }
        if hup.swap(false, Ordering::SeqCst) {
            let body = report_lines(&eng.report(), &formats, &identities);
            note_raw!("{body}");
            if let Some(p) = &opts.status_file {
                write_status_file(p, &body);
            }
        }
        if last_status_write.elapsed() >= Duration::from_secs(1) {
            let report = eng.report();
            if let Some(p) = &opts.status_file {
                write_status_file(p, &report_lines(&report, &formats, &identities));
            }
            if ready && !releasing {
                state.ready(&report);
            }
            last_status_write = Instant::now();
        }
        if !ready
            && !releasing
            && !fenced
            && acquired.iter().all(|&a| a)
            && let Some(f) = &fence
        {
            // Every MMP device is ours (activity test passed, claims verified): now the
            // storage's word, before the data is used.
            let fence_started = Instant::now();
            match f.acquire() {
                Ok(got) => {
                    fence_reserved = true;
                    fenced = true;
                    say(&format!(
                        "{} in {:.0} ms",
                        fence_summary(f.key(), &got),
                        fence_started.elapsed().as_secs_f64() * 1000.0
                    ));
                    // The reservation calls block; a loss reported meanwhile is handled
                    // before anything is declared acquired.
                    continue;
                }
                Err(e) => {
                    note!("mmp: --fence scsi-pr: {e}; releasing");
                    code = Exit::Error;
                    releasing = true;
                    // Possibly reserved on the devices before the failing one: give back.
                    for e in f.release() {
                        note!("mmp: --fence scsi-pr: could not release {e}");
                    }
                    eng.release_all();
                }
            }
        }
        if !ready && !releasing && acquired.iter().all(|&a| a) && (fence.is_none() || fenced) {
            ready = true;
            if fence.is_some() {
                for p in &paths {
                    say(&format!("acquired {p}"));
                }
            }
            notify_ready();
            state.ready(&eng.report());
            warn_realtime(&eng, opts);
            if c.verbose {
                note!("mmp: heartbeat I/O: {}", eng.report().io);
            }
            if let (Some(p), Some(t)) = (&opts.watchdog_device, wd_timeout) {
                match Watchdog::open(p, t) {
                    Ok(wd) => {
                        note!(
                            "mmp: self-fencing active: watchdog {} armed with a {} s timeout",
                            p.display(),
                            wd.timeout().as_secs()
                        );
                        eng.arm_watchdog(wd);
                    }
                    Err(e) => {
                        note!("mmp: cannot arm the watchdog: {e}; releasing");
                        code = Exit::Error;
                        releasing = true;
                        eng.release_all();
                    }
                }
            }
            if let Some(cmd) = command
                && !releasing
            {
                use std::os::unix::process::CommandExt;
                let mut spawn = Command::new(&cmd[0]);
                spawn.args(&cmd[1..]);
                // Its own process group (a loss kills all of it), which takes the terminal
                // when mmp has it: the command can read it, and Ctrl-C reaches it.
                match &terminal {
                    Some(t) => t.hand_to(&mut spawn),
                    None => {
                        spawn.process_group(0);
                    }
                }
                mounts_before = std::fs::read("/proc/self/mountinfo").ok();
                match spawn.spawn() {
                    Ok(ch) => child = Some(ch),
                    Err(e) => {
                        note!("mmp: cannot run {}: {e}; releasing", cmd[0]);
                        // As a shell: 127 when there is no such command, 126 when it cannot
                        // be run.
                        let cc = Exit::Command(if e.kind() == std::io::ErrorKind::NotFound {
                            127
                        } else {
                            126
                        });
                        child_code = Some(cc);
                        releasing = true;
                        eng.release_all();
                    }
                }
            }
        }
        if let (Some(r), Some(ch)) = (relay.as_mut(), child.as_ref())
            && child_code.is_none()
        {
            r.tick(ch.id());
        }
        if let Some(ch) = child.as_mut()
            && child_code.is_none()
            && let Ok(Some(status)) = ch.try_wait()
        {
            if let Some(t) = &terminal {
                t.take_back();
            }
            child_code = Some(exit_code_of(status));
            if guards.is_empty()
                && let (Some(before), Ok(after)) = (
                    mounts_before.as_deref(),
                    std::fs::read("/proc/self/mountinfo"),
                )
            {
                for m in new_mounts(before, &after) {
                    note!(
                        "mmp: warning: the command left {m} mounted; releasing the MMP device \
                         now tells other hosts the data is free. Use `mmp mount`, or `mmp run \
                         --guard DATA_DEVICE`, to keep it held while the data is mounted"
                    );
                }
            }
            release_wanted = true;
        }
        if done.iter().all(Option::is_some) {
            // Wait for the child too (it was killed or told to stop on loss/termination).
            if let Some(ch) = child.as_mut()
                && child_code.is_none()
            {
                let st = ch.wait();
                if let Some(t) = &terminal {
                    t.take_back();
                }
                child_code = Some(st.map_or(Exit::Command(1), exit_code_of));
            }
            break;
        }
    }
    let report = eng.shutdown();
    // Mappings this hold made go when it ends without a loss; after a loss they stay (cut)
    // until the file system on them is unmounted and an admin removes them.
    drop(guards);
    made_cuts.keep = lost;
    drop(made_cuts);
    // Registered but never reserved (refused, interrupted, gave up waiting): withdraw.
    if let Some(f) = &fence
        && !ready
    {
        for e in f.withdraw() {
            note!("mmp: --fence scsi-pr: could not withdraw {e}");
        }
    }
    if let Some(p) = &opts.status_file {
        write_status_file(p, &report_lines(&report, &formats, &identities));
    }
    if code != Exit::Ok {
        return Ok(code);
    }
    for (i, o) in done.iter().enumerate() {
        match o {
            Some(Outcome::Released) => {}
            Some(Outcome::Lost(Loss::ReleaseReadFailed(_))) => return Ok(Exit::Lost),
            Some(Outcome::Aborted) if command.is_none() => {
                note!("mmp: {}: acquire interrupted", paths[i]);
                return Ok(Exit::Error);
            }
            // `run` stopped by a signal before its command ran: 128 + the signal, as the
            // command would have exited.
            Some(Outcome::Aborted) if child_code.is_none() => {
                note!("mmp: {}: acquire interrupted", paths[i]);
                let sig = if got_int.load(Ordering::SeqCst) {
                    signal_hook::consts::SIGINT
                } else if got_term.load(Ordering::SeqCst) {
                    signal_hook::consts::SIGTERM
                } else {
                    return Ok(Exit::Error);
                };
                return Ok(Exit::Command(128 + u8::try_from(sig).unwrap_or(0)));
            }
            _ => {}
        }
    }
    Ok(child_code.unwrap_or(Exit::Ok))
}

/// The `--cut-io NAME=DEVICE` mappings this hold made: removed when the hold ends, on any
/// path (a refusal, an error), unless `keep` (after a loss they stay cut until the file
/// system on them is unmounted and an admin removes them).
#[derive(Default)]
struct MadeCuts {
    made: Vec<mmp_linux::dm::Mapping>,
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

/// Switches every `--cut-io` mapping to the error target (on a thread of its own: a
/// suspend waits for I/O in flight, which a stalled path may never complete) and waits at
/// most a second for it before the loss action goes on.
fn cut_io(cuts: &[mmp_linux::dm::Mapping]) {
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

/// Opens the persistent-reservation fence over the MMP devices and the guarded devices and
/// registers our key (the MMP claim may have to be written under a crashed owner's
/// reservation). Nothing is written to any MMP block before this succeeds.
fn open_fence(c: &Ctx, devices: &[PathBuf], guards: &[PathBuf]) -> Result<pr::Fence, String> {
    if c.hostid == 0 {
        return Err(format!(
            "--fence scsi-pr needs a hostid (the reservation key is derived from it): {}",
            c.hostid_error
                .as_deref()
                .unwrap_or("set one with `mmp hostid --set` or --hostid")
        ));
    }
    let mut named: Vec<(String, &Path)> = Vec::new();
    for d in devices.iter().chain(guards) {
        let k = crate::resolve::device_key(d);
        if !named
            .iter()
            .any(|(_, p)| *p == d.as_path() || (k.is_some() && crate::resolve::device_key(p) == k))
        {
            named.push((show(d), d.as_path()));
        }
    }
    let fence = pr::Fence::open(&named, c.hostid).map_err(|e| {
        format!(
            "--fence scsi-pr: {e}. Persistent reservations need a SCSI device (iSCSI, FC, \
             SAS, a SCSI pass-through disk); nothing was written"
        )
    })?;
    fence
        .prepare()
        .map_err(|e| format!("--fence scsi-pr: {e}; nothing was written"))?;
    Ok(fence)
}

/// One line: our key and what the reservation acquire did per device.
fn fence_summary(key: u64, got: &[(String, pr::Acquired)]) -> String {
    let mut line = format!("fenced: reservation key {key:#018x} holds");
    for (i, (dev, a)) in got.iter().enumerate() {
        line.push_str(if i == 0 { " " } else { ", " });
        line.push_str(dev);
        if let Some(k) = a.took_over {
            line.push_str(&format!(" (preempted {k:#018x})"));
        }
    }
    line
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

fn warn_realtime(eng: &Engine, opts: &HoldOpts) {
    if opts.no_realtime {
        return;
    }
    let r = eng.report().realtime;
    for (what, res) in [
        ("memory locking", r.mlock),
        ("real-time scheduling", r.fifo),
    ] {
        if let Some(Err(e)) = res {
            note!("mmp: warning: {what} not available ({e}); heartbeats may be delayed under load");
        }
    }
}

fn watchdog_timeout(
    opts: &HoldOpts,
    targets: &[target::Target],
    wd: &Path,
) -> Result<Duration, String> {
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
