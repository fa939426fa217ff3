//! `mmp generate` (hidden): man pages and shell completions from the clap definition, so
//! they can never disagree with `--help`. `scripts/install-integration` installs them.
//!
//! Hidden by being a parser of its own ([`Gen`]): clap_complete offers hidden subcommands
//! all the same, so `generate` is not in [`crate::args::Cli`] at all.
//!
//! * `mmp generate man DIR`: `mmp.8` and one `mmp-SUBCOMMAND.8` per subcommand, each with an
//!   EXIT STATUS section from [`EXIT_STATUS`].
//! * `mmp generate completions SHELL`: the completion script on stdout.

use crate::exit::Exit;
use clap::{CommandFactory, Parser, Subcommand};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, roman};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `mmp generate`: man pages and shell completions for packaging.
#[derive(Parser, Debug)]
#[command(name = "mmp-generate", bin_name = "mmp generate")]
struct Gen {
    #[command(subcommand)]
    what: What,
}

/// `mmp generate ARGS` (`args` starts at `generate`).
pub(crate) fn main(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Exit, String> {
    generate(&Gen::parse_from(args).what)
}

/// What to generate.
#[derive(Subcommand, Debug)]
enum What {
    /// Write mmp.8 and mmp-SUBCOMMAND.8 for every subcommand into DIR (created if missing).
    Man {
        /// Output directory.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The man page section: mmp is an administrator's tool.
const SECTION: &str = "8";

/// Every subcommand's exit codes, as in README.md's "Exit codes" table and `mmp --help`.
/// A subcommand missing here gets [`OTHERS`]; a test checks every page has the section.
pub(crate) const EXIT_STATUS: &[(&str, &[(&str, &str)])] = &[
    (
        "status",
        &[
            ("0", "every device is clean"),
            (
                "1",
                "any device is not clean (active, fsck, unknown sequence, maintenance)",
            ),
            ("2", "error, including a corrupt block"),
        ],
    ),
    (
        "check",
        &[
            (
                "0",
                "safe to take (clean, or stale and silent through the whole window)",
            ),
            ("1", "in use (activity seen, fsck, unknown sequence)"),
            ("2", "error, including a corrupt block"),
        ],
    ),
    (
        "hold",
        &[
            ("0", "released cleanly"),
            (
                "1",
                "refused: in use, foreign without --force, --wait ran out, or too slow (the \
                 claim was verified after the lease it earned ran out)",
            ),
            (
                "2",
                "error, including SIGINT/SIGTERM before every device was held (the acquire \
                 is given up)",
            ),
            ("3", "ownership lost"),
        ],
    ),
    (
        "run",
        &[
            (
                "N",
                "the command's own status (128 + signal; 130 after Ctrl-C; 127 when it does \
                 not exist, 126 when it cannot be run: both said before anything is claimed)",
            ),
            ("1", "refused, as for hold"),
            ("2", "error"),
            ("3", "ownership lost"),
        ],
    ),
    (
        "format",
        &[
            ("0", "written"),
            (
                "1",
                "refused: a known signature or an area in use, without --force",
            ),
            ("2", "error"),
        ],
    ),
    (
        "disable",
        &[
            (
                "0",
                "done, or MMP already off (nothing written, as tune2fs)",
            ),
            (
                "1",
                "refused, nothing changed: the activity test saw the device in use (or in \
                 doubt), or --force saw the block change",
            ),
            ("2", "error, including mounted on this host"),
        ],
    ),
    (
        "set-interval",
        &[
            ("0", "done, or that interval already set (nothing written)"),
            (
                "1",
                "refused, nothing changed: the activity test saw the device in use (or in \
                 doubt)",
            ),
            ("2", "error, including MMP off and mounted on this host"),
        ],
    ),
    (
        "mount",
        &[
            ("0", "mounted, and the device is held"),
            (
                "1",
                "refused: in use, foreign without --force, or already mounted on this host",
            ),
            (
                "2",
                "error, including a failed mount(8), after which the device is released again",
            ),
            ("3", "ownership lost before the mount"),
        ],
    ),
    (
        "umount",
        &[
            ("0", "unmounted and released"),
            (
                "1",
                "the data is still mounted elsewhere on this host: the given mount is gone, \
                 the holder keeps the device until the rest is unmounted",
            ),
            (
                "2",
                "error: umount(8) failed, or the holder was gone or did not stop",
            ),
            ("3", "ownership was lost while mounted"),
        ],
    ),
    (
        "list",
        &[
            (
                "0",
                "every recorded holder runs or released cleanly, or none is recorded",
            ),
            (
                "1",
                "a recorded holder is gone: its MMP device is not heartbeated from this host",
            ),
            (
                "2",
                "error: the state directory or a state file cannot be read",
            ),
        ],
    ),
];

/// The exit codes of every other subcommand.
pub(crate) const OTHERS: &[(&str, &str)] = &[("0", "success"), ("2", "error")];

/// The exit codes of subcommand `name`.
fn exit_codes(name: &str) -> &'static [(&'static str, &'static str)] {
    EXIT_STATUS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(OTHERS, |(_, c)| c)
}

/// The subcommands that get a page: not hidden, not clap's `help`.
fn documented(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn generate(what: &What) -> Result<Exit, String> {
    match what {
        What::Man { dir } => man(dir),
        What::Completions { shell } => {
            let mut cmd = crate::args::Cli::command();
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "mmp", &mut buf);
            // A closed stdout is the reader's choice (see `outln!`).
            let _ = std::io::stdout().write_all(&buf);
            Ok(Exit::Ok)
        }
    }
}

fn man(dir: &Path) -> Result<Exit, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", crate::show(dir)))?;
    let mut cmd = crate::args::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let subs: Vec<String> = documented(&cmd).map(page_name).collect();
    let mut pages = vec![(format!("mmp.{SECTION}"), page(&cmd, None, &subs)?)];
    for sub in documented(&cmd) {
        let name = page_name(sub);
        pages.push((
            format!("{name}.{SECTION}"),
            page(sub, Some(sub.get_name()), &subs)?,
        ));
    }
    for (file, text) in &pages {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", crate::show(&p)))?;
        outln!("{}", crate::show(&p));
    }
    Ok(Exit::Ok)
}

/// `mmp-status` for `status` (clap's display name once built).
fn page_name(sub: &clap::Command) -> String {
    sub.get_display_name()
        .map_or_else(|| format!("mmp-{}", sub.get_name()), str::to_owned)
}

/// One page: clap_mangen's sections, then NOTES (the after-help text), EXIT STATUS and
/// SEE ALSO. `sub` is the subcommand's name, `None` for mmp(8).
fn page(cmd: &clap::Command, sub: Option<&str>, all: &[String]) -> Result<Vec<u8>, String> {
    let man = Man::new(cmd.clone())
        .section(SECTION)
        .source(concat!("mmp ", env!("CARGO_PKG_VERSION")))
        .manual("mmp");
    let mut out = Vec::new();
    let io = |e: std::io::Error| format!("rendering the man page: {e}");
    man.render_title(&mut out).map_err(io)?;
    // Every render_* call starts with the same preamble; keep the first one only.
    let preamble = Roff::new().render().into_bytes();
    let mut section = |f: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> Result<(), String> {
        let mut b = Vec::new();
        f(&mut b).map_err(io)?;
        out.extend_from_slice(b.strip_prefix(preamble.as_slice()).unwrap_or(&b));
        Ok(())
    };
    section(&|w| man.render_name_section(w))?;
    section(&|w| man.render_synopsis_section(w))?;
    section(&|w| man.render_description_section(w))?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        section(&|w| man.render_options_section(w))?;
    }
    if sub.is_none() {
        section(&|w| man.render_subcommands_section(w))?;
    }
    let mut roff = Roff::new();
    if let Some(text) = cmd.get_after_long_help().or(cmd.get_after_help()) {
        let text = text.to_string();
        // mmp(8)'s after-help opens with the exit status summary, which EXIT STATUS below
        // gives in full.
        let text = match sub {
            None if text.starts_with("Exit status") => text
                .split_once("\n\n")
                .map_or(String::new(), |(_, rest)| rest.to_owned()),
            _ => text,
        };
        if !text.trim().is_empty() {
            roff.control("SH", ["NOTES"]);
            roff.control("nf", []);
            for line in text.lines() {
                roff.text([roman(line)]);
            }
            roff.control("fi", []);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    match sub {
        Some(name) => codes(&mut roff, exit_codes(name)),
        None => {
            for s in documented(cmd) {
                roff.control("TP", []);
                roff.text([bold(format!("mmp {}", s.get_name()))]);
                roff.control("RS", []);
                codes(&mut roff, exit_codes(s.get_name()));
                roff.control("RE", []);
            }
            roff.control("PP", []);
            roff.text([roman(
                "A corrupt block (bad magic, bad checksum, torn write) is an error (2): it \
                 cannot be trusted.",
            )]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    let see: Vec<String> = match sub {
        Some(_) => vec![format!("mmp({SECTION})")],
        None => all.iter().map(|p| format!("{p}({SECTION})")).collect(),
    };
    roff.text([roman(see.join(", "))]);
    let b = roff.render().into_bytes();
    out.extend_from_slice(b.strip_prefix(preamble.as_slice()).unwrap_or(&b));
    Ok(out)
}

fn codes(roff: &mut Roff, codes: &[(&str, &str)]) {
    for (code, meaning) in codes {
        roff.control("TP", []);
        roff.text([bold(*code)]);
        roff.text([roman(*meaning)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry names a real subcommand (a renamed one would silently fall back to
    /// [`OTHERS`]).
    #[test]
    fn generate_definition_is_valid() {
        Gen::command().debug_assert();
    }

    #[test]
    fn exit_status_names_real_subcommands() {
        let cmd = crate::args::Cli::command();
        for (name, _) in EXIT_STATUS {
            assert!(
                cmd.find_subcommand(name).is_some(),
                "EXIT_STATUS names {name}, which is not a subcommand"
            );
        }
    }
}
