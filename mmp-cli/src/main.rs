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

mod args;
mod cmd;
mod exit;
mod generate;
mod job;
mod json;
mod local;
mod out;
mod progress;
mod resolve;

use crate::exit::Exit;
use args::{Cli, Cmd, Global};
use clap::Parser;
use mmp_core::machine::Identity;
use mmp_linux::{clock, fault, hostid, target};
use std::path::Path;
use std::process::ExitCode;

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
            Exit::Error
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

fn run(mut cli: Cli) -> Result<Exit, String> {
    // `mmp run` in the foreground of a job-control shell: a stand-in for the shell, so that
    // Ctrl-Z stops the command but not the heartbeat (see job.rs).
    if matches!(cli.cmd, Cmd::Run { .. })
        && let Some(code) = job::stand_in()
    {
        // The holder's own exit status, relayed.
        return Ok(Exit::Command(code));
    }
    let c = ctx(&cli.global)?;
    resolve_names(&mut cli.cmd)?;
    match cli.cmd {
        Cmd::Status {
            json,
            export,
            devices,
        } => {
            let output = match (json, export) {
                (true, _) => cmd::status::Output::Json,
                (_, true) => cmd::status::Output::Export,
                _ => cmd::status::Output::Text,
            };
            Ok(cmd::status::status(&c, output, &devices))
        }
        Cmd::Check { json, device } => cmd::check::check(&c, json, &device),
        Cmd::Hold { opts, devices } => cmd::hold::hold(&c, &opts, &devices, None),
        Cmd::Run {
            opts,
            devices,
            command,
        } => cmd::hold::hold(&c, &opts, &devices, Some(&command)),
        Cmd::Clear { force, device } => cmd::clear::clear(&c, force, &device),
        Cmd::Dump { device } => cmd::dump::dump(&device),
        Cmd::Format {
            interval_ms,
            fail_intervals,
            force,
            device,
        } => cmd::format::format_native(interval_ms, fail_intervals, force, &device),
        Cmd::Hostid {
            generate,
            force,
            file,
        } => cmd::hostid::hostid_cmd(
            &cli.global,
            generate,
            force,
            &file.unwrap_or_else(hostid::default_file),
        ),
        Cmd::Enable { interval, device } => cmd::tune::enable(&c, interval, &device),
        Cmd::Disable { force, device } => cmd::tune::disable(&c, force, &device),
        Cmd::SetInterval { secs, device } => cmd::tune::set_interval(&c, secs, &device),
        Cmd::Demo { dir } => cmd::demo::demo(dir.as_deref()),
        Cmd::Mount { args } => cmd::mount::mount(&c, &args),
        Cmd::Umount { dir } => cmd::mount::umount(&dir),
        Cmd::List { json } => cmd::mount::list(json),
        Cmd::Pr(args) => cmd::pr::pr(&c, &args),
    }
}

fn show(p: &Path) -> String {
    out::esc(p.as_os_str().as_encoded_bytes())
}
