//! The command line: clap definitions of every command and option, and the value parsers
//! (units, hints). The command bodies are in `cmd/`.

use crate::cmd::{hold, mount, pr};
use clap::{Args, Parser, Subcommand};
use mmp_core::format::native;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit status (scripts rely on it):
  status   0 all clean, 1 any not clean (active, fsck, unknown sequence, maintenance), 2 error
  check    0 safe to take (clean, or stale and silent through the window), 1 in use, 2 error
  hold     0 released cleanly, 1 refused (in use, or foreign without --force), 2 error, 3 ownership lost
  run      the command's status (126/127 cannot run / no such command, said before anything
           is claimed; 130 after Ctrl-C), or 1/2/3 as for hold
  format   0 written, 1 refused (a known signature or an area in use; see --force), 2 error
  disable, set-interval   0 done, 1 refused (activity seen or in doubt; nothing changed), 2 error
  mount    0 mounted and held, 1 refused (in use, or mounted here already), 2 error, 3 lost
  umount   0 unmounted and released, 1 the data is still mounted elsewhere here (the holder
           keeps the device), 2 error, 3 ownership was lost while mounted
  list     0 every recorded holder runs or released (or none is recorded), 1 any holder gone,
           2 error
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
  mmp run /dev/sdc1 -- make-backup.sh          # hold the native area sdc1 while a command runs
  mmp mount -t xfs --mmp-device /dev/sdc1 /dev/sdb /mnt   # a mount held until `mmp umount`
  mmp format --interval-ms 100 /dev/sdc1       # native MMP area on a small partition
  mmp demo                                     # two hosts on a temporary file";

/// Multiple-mount protection for shared block storage (ext4/ldiskfs MMP and a native
/// format for any device).
#[derive(Parser, Debug)]
#[command(name = "mmp", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// This host's hostid (hex, e.g. 0x1a2b3c4d); overrides $MMP_HOSTID and /etc/hostid.
    #[arg(long, global = true, value_name = "HEX")]
    pub(crate) hostid: Option<String>,
    /// This host's node name; overrides uname.
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) nodename: Option<String>,
    /// Say more: I/O mode per device, timing details.
    #[arg(short, long, global = true)]
    pub(crate) verbose: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Show each device's MMP state: one read, never writes, never waits.
    #[command(after_help = "Example:\n  mmp status --json /dev/loop0 /dev/loop1")]
    Status {
        /// One JSON object per device per line.
        #[arg(long)]
        json: bool,
        /// The keys of --json as KEY=VALUE lines, an empty line after each device: for
        /// shell scripts (split each line at its first `=`; not for `eval`).
        #[arg(long, conflicts_with = "json")]
        export: bool,
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
        after_help = "Example:\n  mmp run /dev/sdc1 -- sh -c 'mount /dev/sdb /mnt && do-work; umount /mnt'\n(/dev/sdc1: a native area from `mmp format`; for ext4 MMP use `mmp mount`, since the kernel\nrefuses to mount a device that mmp holds)\n\nThe command runs in a process group of its own, which takes the terminal when mmp has it\n(it can read it; Ctrl-C reaches it; Ctrl-Z stops it, not the heartbeat, and\n`fg` resumes it). Exit status: the command's (128 + signal; 130 after\nCtrl-C), 127 when it does not exist, 126 when it cannot be run (both checked\nbefore anything is claimed). mmp's own lines\n(acquired, released) go to stderr."
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
pub(crate) fn parse_ms(s: &str) -> Result<u32, String> {
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
pub(crate) fn parse_secs(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| match s.trim().strip_suffix('s') {
        Some(n) if n.parse::<u16>().is_ok() => {
            format!("give seconds as a plain number: {n}, not {s}")
        }
        _ => "expected a whole number of seconds, such as 5".to_string(),
    })
}

/// A number with a unit where a plain number is expected: the number in the unit wanted
/// (`1.5s` as milliseconds is 1500), when the unit is a time unit.
pub(crate) fn unit_hint(s: &str, unit_ms: f64) -> Option<f64> {
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
pub(crate) fn parse_count(s: &str) -> Result<u16, String> {
    s.trim().parse().map_err(|_| {
        if unit_hint(s, 1.0).is_some() {
            "give a number of intervals, not a time, such as 10".to_string()
        } else {
            "expected a whole number, such as 10".to_string()
        }
    })
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
