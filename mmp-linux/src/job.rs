//! Job control for the command `mmp run` starts: it runs in a process group of its own (so
//! a loss kills all of it), and when `mmp run` was started in the foreground of a terminal,
//! that group takes the terminal, as a shell's foreground job does. The command can then
//! read the terminal (no SIGTTIN stop) and Ctrl-C reaches it as SIGINT; `mmp` takes the
//! terminal back once it exited.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

/// The terminal on standard input, when this process's group is its foreground group.
#[derive(Debug)]
pub struct Foreground {
    fd: libc::c_int,
    pgrp: libc::pid_t,
}

impl Foreground {
    /// `Some` when standard input is a terminal whose foreground process group is this
    /// process's group (started from an interactive shell, not in the background).
    #[must_use]
    pub fn of_stdin() -> Option<Foreground> {
        let fd = libc::STDIN_FILENO;
        // SAFETY: isatty, tcgetpgrp and getpgrp take plain values and touch no memory of
        // ours; a bad descriptor is an error return.
        let (tty, fg, me) = unsafe { (libc::isatty(fd), libc::tcgetpgrp(fd), libc::getpgrp()) };
        (tty == 1 && fg > 0 && fg == me).then_some(Foreground { fd, pgrp: me })
    }

    /// Makes `cmd` start in a new process group that takes the terminal before the command
    /// runs. Also ignores SIGTTOU in this process, so that [`Foreground::take_back`] works
    /// from the background (a shell does the same); the child restores the default.
    pub fn hand_to(&self, cmd: &mut Command) {
        // SAFETY: setting a signal's disposition to SIG_IGN touches no memory; no handler of
        // ours is involved.
        unsafe {
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        }
        let fd = self.fd;
        cmd.process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // async-signal-safe functions (setpgid, getpid, tcsetpgrp, signal) on plain values;
        // it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                // Its own group (std does this too, for process_group(0)), then the terminal:
                // SIGTTOU is still ignored here (inherited), so a background group may take
                // it. Then the defaults a command expects.
                let me = libc::getpid();
                libc::setpgid(0, 0);
                libc::tcsetpgrp(fd, me);
                libc::signal(libc::SIGTTOU, libc::SIG_DFL);
                libc::signal(libc::SIGTTIN, libc::SIG_DFL);
                libc::signal(libc::SIGTSTP, libc::SIG_DFL);
                Ok(())
            });
        }
    }

    /// Gives the terminal back to this process's group (after the command exited).
    pub fn take_back(&self) {
        // SAFETY: plain values; SIGTTOU is ignored (see `hand_to`), so this does not stop us
        // while in the background.
        unsafe {
            libc::tcsetpgrp(self.fd, self.pgrp);
        }
    }
}
