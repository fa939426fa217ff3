//! `mmp`: multiple-mount protection for shared block storage.
//!
//! Everything decisive lives in `mmp-core`; this binary parses arguments, calls it, and
//! prints. Exit codes are a contract (see `mmp --help`).
#![forbid(unsafe_code)]

/// `println!` that never panics: a closed stdout (`mmp status A B C | head -c 10`) is the
/// reader's choice, not an error; the command finishes its work and keeps its exit code.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` that never panics (see [`outln`]).
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics: a closed stderr must not kill a holder or change an exit
/// code.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` that never panics.
macro_rules! note_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod hold;
mod job;
mod json;
mod local;
mod out;

use clap::{Args, Parser, Subcommand};
use mmp_core::format::native;
use mmp_core::machine::{Config, Event, Identity, Machine, Op, Outcome, Phase};
use mmp_linux::{clock, driver, fault, hostid, target};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

const AFTER_HELP: &str = "\
Exit status (scripts rely on it):
  status   0 all clean, 1 any not clean (active, fsck, unknown sequence, maintenance), 2 error
  check    0 safe to take (clean, or stale and silent through the window), 1 in use, 2 error
  hold     0 released cleanly, 1 refused (in use, or foreign without --force), 2 error, 3 ownership lost
  run      the command's status (127 no such command, 130 after Ctrl-C), or 1/2/3 as for hold
  format   0 written, 1 refused (a known signature or an area in use; see --force), 2 error
  disable, set-interval   0 done, 1 refused (activity seen or in doubt; nothing changed), 2 error
  mount    0 mounted and held, 1 refused (in use, or mounted here already), 2 error, 3 lost
  umount   0 unmounted and released, 2 error, 3 ownership was lost while mounted
  list     0 every recorded holder runs (or none is recorded), 1 any holder gone, 2 error
  others   0 success, 2 error
A corrupt block (bad magic, bad checksum, torn write) is an error (2): it cannot be trusted.

Devices: a path, or UUID=UUID / LABEL=LABEL as for mount(8): an ext4 file system's UUID or
label, or a native area's UUID (its area_id in `mmp dump`; native areas have no label).

Identity: --hostid, else $MMP_HOSTID, else /etc/hostid ($MMP_HOSTID_FILE); node name:
--nodename, else uname. Native areas need a non-zero hostid; ext4 MMP records only the node
name and needs none.

Examples:
  mmp status /dev/mapper/ost0            # one read, never writes, never waits
  mmp check /dev/mapper/ost0             # full activity test, never writes
  mmp hold /dev/mapper/ost0 /dev/mapper/ost1   # acquire both, heartbeat until SIGTERM
  mmp run /dev/sdc1 -- mount /dev/sdb /mnt     # hold the native area sdc1 while a command runs
  mmp format --interval-ms 100 /dev/sdc1       # native MMP area on a small partition
  mmp demo                                     # two hosts on a temporary file";

/// Multiple-mount protection for shared block storage (ext4/ldiskfs MMP and a native
/// format for any device).
#[derive(Parser, Debug)]
#[command(name = "mmp", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// This host's hostid (hex, e.g. 0x1a2b3c4d); overrides $MMP_HOSTID and /etc/hostid.
    #[arg(long, global = true, value_name = "HEX")]
    hostid: Option<String>,
    /// This host's node name; overrides uname.
    #[arg(long, global = true, value_name = "NAME")]
    nodename: Option<String>,
    /// Say more: I/O mode per device, timing details.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show each device's MMP state: one read, never writes, never waits.
    #[command(after_help = "Example:\n  mmp status --json /dev/loop0 /dev/loop1")]
    Status {
        /// One JSON object per device per line.
        #[arg(long)]
        json: bool,
        /// Devices (block devices or image files).
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// Run the full activity test (waits the window the owner's parameters require); never
    /// writes.
    #[command(after_help = "Example:\n  mmp check /dev/mapper/ost0 && echo safe to take")]
    Check {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Device.
        device: PathBuf,
    },
    /// Acquire every device concurrently, print `acquired DEVICE`, heartbeat until
    /// SIGTERM/SIGINT, then release CLEAN (printing `released DEVICE`).
    #[command(
        after_help = "Example:\n  mmp hold --force /dev/mapper/ost0 /dev/mapper/ost1\n\nSIGHUP prints per-device state to stderr (and --status-file)."
    )]
    Hold {
        #[command(flatten)]
        opts: hold::HoldOpts,
        /// Devices.
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// Hold the devices while a command runs; release when it exits.
    #[command(
        after_help = "Example:\n  mmp run /dev/sdc1 -- sh -c 'mount /dev/sdb /mnt && do-work; umount /mnt'\n(/dev/sdc1: a native area from `mmp format`; for ext4 MMP use `mmp mount`, since the kernel\nrefuses to mount a device that mmp holds)\n\nThe command runs in a process group of its own, which takes the terminal when mmp has it\n(it can read it; Ctrl-C reaches it; Ctrl-Z stops it, not the heartbeat, and\n`fg` resumes it). Exit status: the command's (128 + signal; 130 after\nCtrl-C), 127 when it does not exist, 126 when it cannot be run. mmp's own lines\n(acquired, released) go to stderr."
    )]
    Run {
        #[command(flatten)]
        opts: hold::HoldOpts,
        /// Devices, then `--`, then the command.
        #[arg(required = true, num_args = 1.., value_terminator = "--")]
        devices: Vec<PathBuf>,
        /// The command and its arguments.
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// The operator's reset to CLEAN (like `tune2fs -f -E clear_mmp`). No activity test:
    /// only when you know no other node uses the device.
    #[command(after_help = "Example:\n  mmp clear --force /dev/sdb")]
    Clear {
        /// Required: you confirm no other node uses the device.
        #[arg(long)]
        force: bool,
        /// Device.
        device: PathBuf,
    },
    /// Print every raw field of the superblock part and the MMP record.
    #[command(after_help = "Example:\n  mmp dump /dev/sdb")]
    Dump {
        /// Device.
        device: PathBuf,
    },
    /// Write a native MMP area (for devices without ext4 MMP: a small partition or LUN).
    #[command(after_help = "Example:\n  mmp format --interval-ms 100 /dev/sdc1")]
    Format {
        /// Heartbeat interval in milliseconds (100 to 300000).
        #[arg(long, default_value_t = native::DEFAULT_INTERVAL_MS, value_parser = parse_ms)]
        interval_ms: u32,
        /// Intervals without a successful heartbeat before the owner self-fences (2 to 1000).
        #[arg(long, default_value_t = native::DEFAULT_FAIL_INTERVALS, value_parser = parse_count)]
        fail_intervals: u16,
        /// Overwrite a known signature or an area that is not clean.
        #[arg(long)]
        force: bool,
        /// Device.
        device: PathBuf,
    },
    /// Show this host's hostid and where it came from, or generate /etc/hostid.
    #[command(after_help = "Example:\n  mmp hostid --generate")]
    Hostid {
        /// Write a new random hostid (4 bytes, native order, never 0).
        #[arg(long)]
        generate: bool,
        /// With --generate: overwrite an existing file.
        #[arg(long, requires = "generate")]
        force: bool,
        /// The hostid file (default: $MMP_HOSTID_FILE, else /etc/hostid).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// Enable MMP on an unmounted ext4/ldiskfs file system (like `tune2fs -O mmp`).
    #[command(after_help = "Example:\n  mmp enable --interval 5 /dev/sdb")]
    Enable {
        /// Update interval in seconds (1 to 300).
        #[arg(long, default_value_t = 5, value_parser = parse_secs)]
        interval: u16,
        /// Device.
        device: PathBuf,
    },
    /// Disable MMP on an unmounted ext4/ldiskfs file system, after proving it is not in use.
    #[command(
        after_help = "Example:\n  mmp disable /dev/sdb\n\n--force skips the activity test but still watches the MMP block for one update\ninterval (at most 31 s) and refuses if it changes: a holder is writing it, and freeing\nthe block under it would let the holder's next heartbeat land in a freed block. Give\n--force twice (--force --force) to skip that watch too."
    )]
    Disable {
        /// Skip the activity test (only when you know no other node uses it); a block that
        /// changes during a short watch is still refused. Twice: skip the watch too.
        #[arg(long, action = clap::ArgAction::Count)]
        force: u8,
        /// Device.
        device: PathBuf,
    },
    /// Change the ext4 MMP update interval (1 to 300 s).
    #[command(
        name = "set-interval",
        after_help = "Example:\n  mmp set-interval 10 /dev/sdb"
    )]
    SetInterval {
        /// Seconds.
        #[arg(value_parser = parse_secs)]
        secs: u16,
        /// Device.
        device: PathBuf,
    },
    /// Acquire the device (or its --mmp-device), mount it, and keep the heartbeat in a
    /// detached holder (state under /run/mmp); ext4 MMP is handed to the kernel's kmmpd.
    #[command(
        after_help = "Examples:\n  mmp mount -t xfs --mmp-device /dev/sdc1 /dev/sdb /srv/data\n  mmp mount /dev/mapper/ost0 /mnt/ost0   # ext4/ldiskfs with MMP"
    )]
    Mount {
        #[command(flatten)]
        args: mount::MountArgs,
    },
    /// List what this host holds through `mmp mount`: device, MMP device, mount point, holder
    /// pid, since when, and whether the holder still runs (from the state under /run/mmp).
    #[command(
        after_help = "Example:\n  mmp list\n\nThe state directory is /run/mmp, or $MMP_RUN_DIR. A holder that is GONE (killed, or its\npid now belongs to another process) no longer heartbeats its MMP device: check the device\nwith `mmp status`. ext4 file systems mounted by `mmp mount` are held by the kernel and not\nlisted."
    )]
    List {
        /// One JSON object per recorded mount per line.
        #[arg(long)]
        json: bool,
    },
    /// Unmount, then release the MMP device (stops the detached holder).
    #[command(
        after_help = "Examples:\n  mmp umount /srv/data\n  mmp umount /dev/sdb   # the device works too, as for umount(8)"
    )]
    Umount {
        /// Mount point, or the mounted device (or its --mmp-device).
        #[arg(value_name = "DIR|DEVICE")]
        dir: PathBuf,
    },
    /// Show SCSI persistent reservations (keys, holder, type; mmp keys as hostids); read-only.
    #[command(after_help = "Example:\n  mmp pr --json /dev/sdb /dev/sdc")]
    Pr(pr::PrArgs),
    /// Show a clean handover and a crash takeover between two hosts on a temporary file.
    #[command(after_help = "Example:\n  mmp demo --dir /var/tmp")]
    Demo {
        /// Directory for the temporary device (default: the system temp directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// `--interval-ms`: a whole number of milliseconds; `1s` or `250ms` get a hint.
fn parse_ms(s: &str) -> Result<u32, String> {
    s.parse().map_err(|_| {
        let t = s.trim();
        let (num, unit) = t.split_at(
            t.find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(t.len()),
        );
        match (num.parse::<f64>(), unit) {
            (Ok(n), "s") => format!(
                "give milliseconds as a plain number: {s} is --interval-ms {}",
                n * 1000.0
            ),
            (Ok(_), "ms") => format!("give milliseconds as a plain number: --interval-ms {num}"),
            _ => "expected a whole number of milliseconds, such as 1000".to_string(),
        }
    })
}

/// An update interval in seconds; `5s` gets a hint.
fn parse_secs(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| match s.trim().strip_suffix('s') {
        Some(n) if n.parse::<u16>().is_ok() => {
            format!("give seconds as a plain number: {n}, not {s}")
        }
        _ => "expected a whole number of seconds, such as 5".to_string(),
    })
}

/// A number with a unit where a plain number is expected: the number in the unit wanted
/// (`1.5s` as milliseconds is 1500), when the unit is a time unit.
fn unit_hint(s: &str, unit_ms: f64) -> Option<f64> {
    let t = s.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let n: f64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "ms" => 1.0,
        "s" | "sec" | "secs" => 1000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(n * ms / unit_ms)
}

/// `--wait=SECONDS`: seconds, fractions allowed; `30s` or `5m` get a hint.
pub(crate) fn parse_wait(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(match unit_hint(s, 1000.0) {
            Some(v) => format!("give seconds as a plain number: {s} is --wait={v}"),
            None => "expected a number of seconds (0 or more), such as 30 or 0.5".to_string(),
        }),
    }
}

/// Whole seconds (`--watchdog-timeout`); `10s` gets a hint.
pub(crate) fn parse_whole_secs(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| match unit_hint(s, 1000.0) {
        Some(v) if v.fract() == 0.0 => format!("give seconds as a plain number: {s} is {v}"),
        _ => "expected a whole number of seconds, such as 10".to_string(),
    })
}

/// A count (`--fail-intervals`).
fn parse_count(s: &str) -> Result<u16, String> {
    s.trim().parse().map_err(|_| {
        if unit_hint(s, 1.0).is_some() {
            "give a number of intervals, not a time, such as 10".to_string()
        } else {
            "expected a whole number, such as 10".to_string()
        }
    })
}

/// Who this process is and how loud.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) hostid: u32,
    /// Why the hostid could not be resolved (commands that need it report it).
    pub(crate) hostid_error: Option<String>,
    /// Whether that error is a misconfiguration the admin gave (a bad --hostid or
    /// $MMP_HOSTID), reported by every acquiring command, rather than an unreadable hostid
    /// file, which only the native format (whose records carry the hostid) cares about.
    pub(crate) hostid_error_explicit: bool,
    pub(crate) nodename: Vec<u8>,
    pub(crate) verbose: bool,
}

impl Ctx {
    /// The fault hook for one-shot runs: `MMP_FAULT_*` in test builds (see
    /// [`fault::EnvFaults`]); nothing otherwise.
    pub(crate) fn faults(&self) -> fault::EnvFaults {
        fault::EnvFaults::from_env()
    }

    pub(crate) fn identity(&self, path: &Path) -> Identity {
        Identity::new(
            self.hostid,
            &self.nodename,
            path.as_os_str().as_encoded_bytes(),
        )
    }

    /// Whether this host may acquire a device of this format. The native format records the
    /// hostid and needs a non-zero one (the ZFS rule); ext4 MMP records only the node name,
    /// as the kernel and e2fsprogs do, so a host without a hostid may use it.
    pub(crate) fn check_hostid(&self, format: target::Format) -> Result<(), String> {
        if let Some(e) = &self.hostid_error
            && (self.hostid_error_explicit || format == target::Format::Native)
        {
            return Err(e.clone());
        }
        if format == target::Format::Native && self.hostid == 0 {
            return Err(out::refusal("", &mmp_core::machine::Refusal::NoHostid));
        }
        Ok(())
    }

    /// A note when an ext4 MMP block that is not clean carries this host's node name: ext4
    /// MMP names its owner by node name only, so either this host held it last, or another
    /// node has the same node name, which MMP cannot tell apart.
    pub(crate) fn warn_same_nodename(&self, t: &target::Target, path: &str) {
        // With a hostid the note would only repeat what every ext4 user knows; without one
        // the node name is this host's only identity.
        if t.format != target::Format::Ext4 || self.hostid != 0 {
            return;
        }
        let Ok(raw) = t.read_record() else { return };
        let Ok(snap) = mmp_core::machine::parse(&t.layout, &raw) else {
            return;
        };
        if snap.class() != mmp_core::machine::Class::Clean && snap.nodename() == self.nodename {
            note!(
                "mmp: {path}: note: the MMP block was last written by node '{}', this host's \
                 node name, and not released. If this host did not hold it, another node has \
                 the same node name, and ext4 MMP cannot tell the two apart: give every node a \
                 unique node name (--nodename)",
                out::esc(&self.nodename)
            );
        }
    }
}

fn ctx(g: &Global) -> Result<Ctx, String> {
    let (hostid, hostid_error, hostid_error_explicit) = match hostid::resolve(g.hostid.as_deref()) {
        Ok(h) => (h.value, None, false),
        Err(e) => {
            let explicit = matches!(e, hostid::HostidError::Parse { .. });
            (0, Some(e.to_string()), explicit)
        }
    };
    let nodename = g
        .nodename
        .clone()
        .map_or_else(clock::nodename, String::into_bytes);
    if nodename.is_empty() {
        return Err("the node name is empty: give --nodename".into());
    }
    Ok(Ctx {
        hostid,
        hostid_error,
        hostid_error_explicit,
        nodename,
        verbose: g.verbose,
    })
}

fn main() -> ExitCode {
    // `mmp generate ...` (man pages, completions) is a parser of its own, so that neither
    // `--help`, the man pages nor the completions offer it. It needs no hostid or node name.
    let result = if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        generate::main(std::env::args_os().skip(1))
    } else {
        run(Cli::parse())
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            note!("mmp: {}", out::plain(&e));
            2
        }
    };
    ExitCode::from(code)
}

/// Replaces `UUID=`/`LABEL=` device names by the devices they name (`status` resolves each
/// device by itself, so that one bad name does not hide the others).
fn resolve_names(cmd: &mut Cmd) -> Result<(), String> {
    use std::iter::once;
    match cmd {
        Cmd::Status { .. } | Cmd::Hostid { .. } | Cmd::List { .. } | Cmd::Demo { .. } => Ok(()),
        Cmd::Hold { opts, devices } | Cmd::Run { opts, devices, .. } => {
            resolve::all(devices.iter_mut().chain(opts.guards_mut()))
        }
        // `check --json` reports a name that does not resolve as its one JSON object.
        Cmd::Check { .. } => Ok(()),
        Cmd::Clear { device, .. }
        | Cmd::Dump { device }
        | Cmd::Format { device, .. }
        | Cmd::Enable { device, .. }
        | Cmd::Disable { device, .. }
        | Cmd::SetInterval { device, .. } => resolve::all(once(device)),
        Cmd::Mount { args } => resolve::all(args.devices_mut()),
        Cmd::Umount { dir } => resolve::all(once(dir)),
        Cmd::Pr(args) => resolve::all(args.devices_mut()),
    }
}

fn run(mut cli: Cli) -> Result<u8, String> {
    // `mmp run` in the foreground of a job-control shell: a stand-in for the shell, so that
    // Ctrl-Z stops the command but not the heartbeat (see job.rs).
    if matches!(cli.cmd, Cmd::Run { .. })
        && let Some(code) = job::stand_in()
    {
        return Ok(code);
    }
    let c = ctx(&cli.global)?;
    resolve_names(&mut cli.cmd)?;
    match cli.cmd {
        Cmd::Status { json, devices } => Ok(status(&c, json, &devices)),
        Cmd::Check { json, device } => check(&c, json, &device),
        Cmd::Hold { opts, devices } => hold::hold(&c, &opts, &devices, None),
        Cmd::Run {
            opts,
            devices,
            command,
        } => hold::hold(&c, &opts, &devices, Some(&command)),
        Cmd::Clear { force, device } => clear(&c, force, &device),
        Cmd::Dump { device } => dump(&device),
        Cmd::Format {
            interval_ms,
            fail_intervals,
            force,
            device,
        } => format_native(interval_ms, fail_intervals, force, &device),
        Cmd::Hostid {
            generate,
            force,
            file,
        } => hostid_cmd(
            &cli.global,
            generate,
            force,
            &file.unwrap_or_else(hostid::default_file),
        ),
        Cmd::Enable { interval, device } => tune::enable(&c, interval, &device),
        Cmd::Disable { force, device } => tune::disable(&c, force, &device),
        Cmd::SetInterval { secs, device } => tune::set_interval(&c, secs, &device),
        Cmd::Demo { dir } => demo::demo(dir.as_deref()),
        Cmd::Mount { args } => mount::mount(&c, &args),
        Cmd::Umount { dir } => mount::umount(&dir),
        Cmd::List { json } => mount::list(json),
        Cmd::Pr(args) => pr::pr(&c, &args),
    }
}

mod demo;
mod generate;
mod mount;
mod pr;
mod resolve;
mod tune;

fn show(p: &Path) -> String {
    out::esc(p.as_os_str().as_encoded_bytes())
}

fn status(c: &Ctx, json: bool, devices: &[PathBuf]) -> u8 {
    let mut code = 0u8;
    for d in devices {
        let d = &match resolve::device(d) {
            Ok(d) => d,
            Err(msg) => {
                code = 2;
                if json {
                    outln!("{}", out::error_json("status", &show(d), None, &msg));
                } else {
                    note!("mmp: {msg}");
                }
                continue;
            }
        };
        let path = show(d);
        let res = target::open(d, false)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                let raw = t.read_record().map_err(|e| format!("{path}: {e}"))?;
                Ok((t, raw))
            });
        match res {
            Ok((t, raw)) => {
                if c.verbose && !json {
                    note!("{path}: I/O mode {}", t.device.io_mode());
                }
                match mmp_core::machine::parse(&t.layout, &raw) {
                    Ok(snap) => {
                        let clean = snap.class() == mmp_core::machine::Class::Clean;
                        if !clean {
                            code = code.max(1);
                        }
                        let mounted = t.device.is_mounted().ok().flatten();
                        if json {
                            outln!("{}", out::status_json(&path, &t, &snap, mounted.as_deref()));
                        } else {
                            outln!(
                                "{}",
                                out::status_lines(
                                    &out::status_text(&path, &t, &snap, mounted.as_deref()),
                                    out::terminal_width()
                                )
                            );
                        }
                    }
                    Err(e) => {
                        code = 2;
                        let msg = format!("{path}: {e}");
                        if json {
                            outln!("{}", out::error_json("status", &path, Some(t.format), &msg));
                        } else {
                            note!("mmp: {msg}");
                        }
                    }
                }
            }
            Err(msg) => {
                code = 2;
                if json {
                    outln!("{}", out::error_json("status", &path, None, &msg));
                } else {
                    note!("mmp: {}", out::plain(&msg));
                }
            }
        }
    }
    code
}

/// What names one device, whatever the path: the device number of a block device, else
/// the file's file system and inode.
pub(crate) type DeviceKey = (bool, u64, u64);

/// The [`DeviceKey`] of `p`; `None` when it cannot be read.
pub(crate) fn device_key(p: &Path) -> Option<DeviceKey> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(p).ok()?;
    if m.file_type().is_block_device() {
        Some((true, m.rdev(), 0))
    } else {
        Some((false, m.dev(), m.ino()))
    }
}

/// Refuses a device named twice (`f.img ./f.img`, a symlink and its target, two nodes of one
/// block device): holding it twice would make the two holders see each other as another host.
pub(crate) fn refuse_duplicates(devices: &[PathBuf]) -> Result<(), String> {
    let mut seen: Vec<(&PathBuf, Option<DeviceKey>)> = Vec::with_capacity(devices.len());
    for d in devices {
        let k = device_key(d);
        if let Some((first, _)) = seen
            .iter()
            .find(|(p, pk)| *p == d || (k.is_some() && *pk == k))
        {
            return Err(if *first == d {
                format!("{} is given twice", show(d))
            } else {
                format!(
                    "{} and {} are the same device; give each device once",
                    show(first),
                    show(d)
                )
            });
        }
        seen.push((d, k));
    }
    Ok(())
}

/// Prints wait progress on stderr: the start of each wait, then every 5 s.
pub(crate) struct Progress {
    label: String,
    last_phase: Option<Phase>,
    last_print_s: Option<u64>,
    pub(crate) quiet: bool,
}

impl Progress {
    pub(crate) fn new(label: String) -> Self {
        Progress {
            label,
            last_phase: None,
            last_print_s: None,
            quiet: false,
        }
    }

    pub(crate) fn event(&mut self, e: &Event) {
        if self.quiet {
            return;
        }
        if let Event::Progress {
            phase,
            remaining,
            total,
        } = *e
        {
            let left = remaining.as_secs();
            let new_phase = self.last_phase != Some(phase);
            let tick = self.last_print_s.is_some_and(|p| p >= left + 5);
            if new_phase {
                let what = match phase {
                    Phase::Watching => "watching for activity",
                    Phase::Claiming => "claimed; verifying nobody else claims",
                    _ => phase.name(),
                };
                note!(
                    "mmp: {}: {what} for {:.1} s",
                    self.label,
                    total.as_secs_f64()
                );
                self.last_phase = Some(phase);
                self.last_print_s = Some(left);
            } else if tick {
                let _ = writeln!(std::io::stderr(), "mmp: {}: {} s left", self.label, left);
                self.last_print_s = Some(left);
            }
        }
    }
}

fn check(c: &Ctx, json: bool, device: &Path) -> Result<u8, String> {
    let device = &match resolve::device(device) {
        Ok(d) => d,
        Err(e) if json => {
            outln!("{}", out::error_json("check", &show(device), None, &e));
            return Ok(2);
        }
        Err(e) => return Err(e),
    };
    let path = show(device);
    let t = match target::open(device, false) {
        Ok(t) => t,
        // `--json` promises one object, also for a device that cannot be opened.
        Err(e) if json => {
            outln!("{}", out::error_json("check", &path, None, &e.to_string()));
            return Ok(2);
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Some(msg) = mounted_here(&t, &path) {
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
        return Ok(1);
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
            0,
            format!(
                "{path}: safe to take: MMP is clean; {}",
                out::who(&snapshot)
            ),
        ),
        Some(Outcome::Safe {
            stale: true,
            snapshot,
        }) => (
            0,
            format!(
                "{path}: safe to take: not clean but silent for the whole {:.1} s window; {}",
                m.timing().map_or(0.0, |t| t.watch.as_secs_f64()),
                out::who(&snapshot)
            ),
        ),
        Some(Outcome::Refused(r)) => (out::refusal_code(&r), out::refusal(&path, &r)),
        Some(Outcome::Aborted) => (2, format!("{path}: interrupted")),
        other => (
            2,
            format!(
                "{path}: the check ended unexpectedly: {}",
                out::outcome(&path, other.as_ref())
            ),
        ),
    };
    if json {
        let state = match (code, outcome) {
            (0, _) => "safe",
            (1, _) => "in_use",
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
    } else if code == 0 {
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

fn clear(c: &Ctx, force: bool, device: &Path) -> Result<u8, String> {
    let path = show(device);
    if !force {
        return Err(format!(
            "refusing to clear {path} without --force: clear skips the activity test; use it only \
             when no other node uses the device (run `mmp check {path}` first)"
        ));
    }
    let t = open_for_clear(device)?;
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
            Ok(0)
        }
        Some(Outcome::Refused(r)) => Err(out::refusal(&path, &r)),
        other => Err(format!(
            "{path}: clear failed: {}",
            out::outcome(&path, other.as_ref())
        )),
    }
}

fn clear_unparsable_native(c: &Ctx, device: &Path) -> Result<u8, String> {
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
            Ok(0)
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

fn dump(device: &Path) -> Result<u8, String> {
    let path = show(device);
    let t = target::open(device, false).map_err(|e| e.to_string())?;
    let raw = t.read_record().map_err(|e| format!("{path}: {e}"))?;
    let parsed = mmp_core::machine::parse(&t.layout, &raw);
    out_raw!("{}", out::dump(&path, &t, &raw, parsed));
    Ok(0)
}

fn format_native(interval_ms: u32, fail: u16, force: bool, device: &Path) -> Result<u8, String> {
    use mmp_linux::area;
    let path = show(device);
    match area::format(device, interval_ms, u32::from(fail), force) {
        Ok(_) => {
            outln!(
                "{path}: native MMP area written: interval {interval_ms} ms, fail intervals {fail} \
                 (self-fence after {} ms; a takeover waits {} ms)",
                u64::from(interval_ms) * u64::from(fail),
                2 * u64::from(interval_ms) * u64::from(fail)
            );
            Ok(0)
        }
        Err(area::FormatError::NotClean(r)) => {
            note!(
                "mmp: {path}: holds a native MMP area that is {} ({}); refusing without --force",
                r.state.name(),
                out::who(&mmp_core::machine::Snapshot::Native(*r))
            );
            Ok(1)
        }
        Err(e) if e.is_refusal() => {
            note!("mmp: {path}: {e}");
            Ok(1)
        }
        Err(e @ (area::FormatError::BadInterval(_) | area::FormatError::BadFailIntervals(_))) => {
            Err(format!("--interval-ms/--fail-intervals: {e}"))
        }
        // Device errors already name the device.
        Err(area::FormatError::Device(e)) => Err(e.to_string()),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn hostid_cmd(g: &Global, generate: bool, force: bool, file: &Path) -> Result<u8, String> {
    if generate {
        let v = hostid::generate(file, force).map_err(|e| match e {
            hostid::HostidError::AlreadyExists { path, current } => format!(
                "{} already exists (hostid {}); overwrite it with `mmp hostid --generate --force`",
                path.display(),
                current.map_or_else(|| "unreadable".to_owned(), |v| format!("0x{v:08x}"))
            ),
            e => e.to_string(),
        })?;
        outln!("hostid 0x{v:08x} written to {}", file.display());
        return Ok(0);
    }
    let env = std::env::var(hostid::ENV_VAR).ok();
    let h = hostid::resolve_with_path(g.hostid.as_deref(), env.as_deref(), file)
        .map_err(|e| e.to_string())?;
    if h.is_set() {
        outln!("hostid 0x{:08x} (from {})", h.value, h.source);
    } else if h.source == hostid::HostidSource::Unset {
        outln!(
            "hostid not set (no --hostid, no ${}, no {}): ext4 MMP needs none; for native MMP areas run `mmp hostid --generate`",
            hostid::ENV_VAR,
            file.display()
        );
    } else {
        outln!(
            "hostid is 0 (from {}), which cannot acquire native MMP areas (ext4 MMP needs none): give a non-zero hostid or run `mmp hostid --generate`",
            h.source
        );
    }
    let _ = std::io::stdout().flush();
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
