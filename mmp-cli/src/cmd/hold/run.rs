//! `mmp run`'s command: started once every device is held, in its own process group (which
//! a loss kills), with the terminal handed to it; its end asks for the release.

use crate::exit::Exit;
use mmp_linux::job::Foreground;
use std::process::{Child, Command};

/// Whether `cmd` can be started, checked before anything is claimed: its program found
/// (a path, or a name in `PATH`) and executable. Err: what is wrong, and the shell's exit
/// status for it (127 not found, 126 not executable). The spawn can still fail later (the
/// file changes meanwhile), and then says so as well.
pub(super) fn runnable(cmd: &[String]) -> Result<(), (String, u8)> {
    use std::os::unix::fs::PermissionsExt;
    let Some(prog) = cmd.first() else {
        return Err(("no command given".to_owned(), 127));
    };
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if prog.contains('/') {
        let p = std::path::Path::new(prog);
        return match std::fs::metadata(p) {
            Err(_) => Err((format!("cannot run {prog}: no such file"), 127)),
            Ok(_) if executable(p) => Ok(()),
            Ok(_) => Err((format!("cannot run {prog}: not an executable file"), 126)),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    if std::env::split_paths(&path).any(|d| executable(&d.join(prog))) {
        Ok(())
    } else {
        Err((format!("cannot run {prog}: command not found in PATH"), 127))
    }
}

/// The command of `mmp run` and what became of it.
pub(super) struct Job<'a> {
    /// The command line (program, then its arguments).
    cmd: &'a [String],
    /// The terminal, when mmp has it: handed to the command, taken back when it ends.
    terminal: Option<Foreground>,
    /// Ctrl-Z stops the command, not the heartbeat (job.rs).
    relay: crate::job::Relay,
    /// The command's process, once started.
    child: Option<Child>,
    /// How the command ended, or why it could not start: `run`'s exit status.
    code: Option<Exit>,
    /// `/proc/self/mountinfo` just before the command started, to tell what it left
    /// mounted.
    mounts_before: Option<Vec<u8>>,
}

impl<'a> Job<'a> {
    /// Takes the terminal's state (when stdin is one) and starts relaying job control;
    /// nothing runs yet.
    pub(super) fn new(cmd: &'a [String]) -> Job<'a> {
        Job {
            cmd,
            terminal: Foreground::of_stdin(),
            relay: crate::job::Relay::new(),
            child: None,
            code: None,
            mounts_before: None,
        }
    }

    /// How the command ended (or could not start), if it did.
    pub(super) fn code(&self) -> Option<Exit> {
        self.code
    }

    /// The command's process, while there is one (for the loss action, which kills it).
    pub(super) fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Starts the command. False when it cannot be run (said; its status is then 127 or
    /// 126, as a shell's): the hold is to be released.
    pub(super) fn spawn(&mut self) -> bool {
        use std::os::unix::process::CommandExt;
        let cmd = self.cmd;
        let mut spawn = Command::new(&cmd[0]);
        spawn.args(&cmd[1..]);
        // Its own process group (a loss kills all of it), which takes the terminal when mmp
        // has it: the command can read it, and Ctrl-C reaches it.
        match &self.terminal {
            Some(t) => t.hand_to(&mut spawn),
            None => {
                spawn.process_group(0);
            }
        }
        self.mounts_before = std::fs::read("/proc/self/mountinfo").ok();
        match spawn.spawn() {
            Ok(ch) => {
                self.child = Some(ch);
                true
            }
            Err(e) => {
                note!(
                    "mmp: cannot run {}: {}; releasing",
                    cmd[0],
                    crate::out::plain(&e.to_string())
                );
                // As a shell: 127 when there is no such command, 126 when it cannot be run.
                let cc = Exit::Command(if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                });
                self.code = Some(cc);
                false
            }
        }
    }

    /// SIGINT/SIGTERM reached mmp: the command is told to stop (SIGTERM to its group).
    pub(super) fn terminate(&self) {
        if let Some(ch) = self.child.as_ref() {
            kill_group(ch, rustix::process::Signal::TERM);
        }
    }

    /// Called every tick: relays job control while the command runs, and notices its end.
    /// True when it ended just now (the terminal is taken back and, without `guarded`
    /// devices, what it left mounted is warned about): the hold is to be released.
    pub(super) fn tick(&mut self, guarded: bool) -> bool {
        if let Some(ch) = self.child.as_ref()
            && self.code.is_none()
        {
            self.relay.tick(ch.id());
        }
        let Some(ch) = self.child.as_mut() else {
            return false;
        };
        if self.code.is_some() {
            return false;
        }
        let Ok(Some(status)) = ch.try_wait() else {
            return false;
        };
        if let Some(t) = &self.terminal {
            t.take_back();
        }
        self.code = Some(exit_code_of(status));
        if !guarded {
            self.warn_left_mounted();
        }
        true
    }

    /// Warns about each file system the command mounted and left mounted: releasing now tells
    /// other hosts its data is free.
    fn warn_left_mounted(&self) {
        if let (Some(before), Ok(after)) = (
            self.mounts_before.as_deref(),
            std::fs::read("/proc/self/mountinfo"),
        ) {
            for m in new_mounts(before, &after) {
                note!(
                    "mmp: warning: the command left {m} mounted; releasing the MMP device now \
                     tells other hosts the data is free. Use `mmp mount`, or `mmp run --guard \
                     DATA_DEVICE`, to keep it held while the data is mounted"
                );
            }
        }
    }

    /// At the end of the hold: waits for the command too (it was killed or told to stop on
    /// loss/termination).
    pub(super) fn reap(&mut self) {
        if let Some(ch) = self.child.as_mut()
            && self.code.is_none()
        {
            let st = ch.wait();
            if let Some(t) = &self.terminal {
                t.take_back();
            }
            self.code = Some(st.map_or(Exit::Command(1), exit_code_of));
        }
    }
}

/// Sends `sig` to the command's process group, then SIGCONT.
pub(super) fn kill_group(ch: &Child, sig: rustix::process::Signal) {
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
