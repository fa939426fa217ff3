//! Job control for `mmp run` (Ctrl-Z, `fg`, `bg`), as under `flock` or `timeout`.
//!
//! The command runs in a process group of its own, which has the terminal: Ctrl-Z stops the
//! command alone. The shell, though, waits for mmp, and mmp must not stop: its heartbeat
//! has to go on while the command is stopped, or the device would be lost. So when `mmp run`
//! starts in the foreground of a job-control shell, it runs itself again as a child (the
//! *holder*, which heartbeats and starts the command) and stays behind as the *stand-in*, the
//! process the shell knows, in the same process group:
//!
//! * The command stops (Ctrl-Z, or it reads the terminal in the background): the holder
//!   takes the terminal back for the job's group and stops the stand-in with SIGTSTP. The
//!   shell sees its job stopped ("Stopped") and takes the terminal; the heartbeat goes on.
//! * `fg`: the shell gives the job's group the terminal and sends it SIGCONT; the holder
//!   hands the terminal to the command and continues it. `bg`: the same without the
//!   terminal (a command that reads it stops again, as a shell's background job does).
//! * The stand-in exits with the holder's exit status. SIGTERM sent to the stand-in alone is
//!   passed on to the holder; signals sent to the job's group reach both. A stand-in killed
//!   with SIGKILL gets its holder SIGTERM from the kernel (the parent-death signal): the
//!   command is stopped and the devices released, as for SIGTERM.
//!
//! Without a job-control shell (no terminal, a session of its own, a script) nothing of this
//! applies: `mmp run` runs as one process, and a command stopped by Ctrl-Z is continued at
//! once (the kernel does the same for an orphaned process group).

use rustix::process::{Pid, Signal};
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set in the holder's environment: the stand-in's pid.
const ENV: &str = "MMP_RUN_STAND_IN";

fn stdin() -> std::io::Stdin {
    std::io::stdin()
}

/// Whether this process is in the foreground of a terminal on stdin, started by a shell with
/// job control: the parent is in the same session, in another process group.
fn under_job_control() -> bool {
    use std::io::IsTerminal as _;
    if !stdin().is_terminal() {
        return false;
    }
    let me = rustix::process::getpgrp();
    if rustix::termios::tcgetpgrp(stdin()).ok() != Some(me) {
        return false;
    }
    let Some(parent) = rustix::process::getppid() else {
        return false;
    };
    let same_session =
        rustix::process::getsid(Some(parent)).ok() == rustix::process::getsid(None).ok();
    let other_group = rustix::process::getpgid(Some(parent)).is_ok_and(|g| g != me);
    same_session && other_group
}

/// For `mmp run`: under a job-control shell, runs the holder as a child and stands in for it
/// until it exits; returns its exit status. `None`: run in this process (not under job
/// control, or this process is the holder already).
pub(crate) fn stand_in() -> Option<u8> {
    if std::env::var_os(ENV).is_some() || !under_job_control() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    // SIGTERM for the stand-in alone is passed on; SIGINT, SIGQUIT and SIGHUP come from the
    // terminal to the whole group, which the holder is in: the stand-in only outlives them.
    let term = Arc::new(AtomicBool::new(false));
    let ignore = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term)).ok()?;
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGQUIT,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&ignore)).ok()?;
    }
    let mut child = match Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV, std::process::id().to_string())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            note!("mmp: cannot start the holder: {e}; running without job control");
            return None;
        }
    };
    let holder = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                return Some(st.code().map_or_else(
                    || 128 + u8::try_from(st.signal().unwrap_or(0)).unwrap_or(0),
                    |c| u8::try_from(c).unwrap_or(1),
                ));
            }
            Ok(None) => {}
            Err(_) => return Some(2),
        }
        if term.swap(false, Ordering::SeqCst)
            && let Some(h) = holder
        {
            let _ = rustix::process::kill_process(h, Signal::TERM);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The holder's side: relays the command's stops to the stand-in, and the shell's `fg`/`bg`
/// back to the command.
pub(crate) struct Relay {
    /// The stand-in, when there is one.
    stand_in: Option<Pid>,
    /// SIGCONT arrived (the shell continued the job).
    cont: Arc<AtomicBool>,
    /// The command is stopped and the stand-in was stopped for it.
    stopped: bool,
}

impl Relay {
    pub(crate) fn new() -> Relay {
        let stand_in = std::env::var(ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok())
            .and_then(Pid::from_raw)
            .filter(|p| rustix::process::getppid() == Some(*p));
        let cont = Arc::new(AtomicBool::new(false));
        if stand_in.is_some() {
            // The stand-in killed (SIGKILL, which it cannot pass on): stop as for SIGTERM,
            // releasing cleanly, rather than hold on with nobody to answer to.
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::TERM));
            let _ = signal_hook::flag::register(signal_hook::consts::SIGCONT, Arc::clone(&cont));
        }
        Relay {
            stand_in,
            cont,
            stopped: false,
        }
    }

    /// Called often while the command (process group leader `pid`) runs.
    pub(crate) fn tick(&mut self, pid: u32) {
        let Some(cmd) = Pid::from_raw(i32::try_from(pid).unwrap_or(0)) else {
            return;
        };
        if self.stopped {
            if self.cont.swap(false, Ordering::SeqCst) {
                // `fg` gave the job's group the terminal: pass it on. `bg` did not.
                let me = rustix::process::getpgrp();
                if rustix::termios::tcgetpgrp(stdin()).ok() == Some(me) {
                    let _ = rustix::termios::tcsetpgrp(stdin(), cmd);
                }
                let _ = rustix::process::kill_process_group(cmd, Signal::CONT);
                self.stopped = false;
            }
            return;
        }
        let Ok(Some(st)) = rustix::process::waitid(
            rustix::process::WaitId::Pid(cmd),
            rustix::process::WaitIdOptions::STOPPED | rustix::process::WaitIdOptions::NOHANG,
        ) else {
            return;
        };
        let sig = st.stopping_signal().unwrap_or(0);
        let job_stop = [Signal::TSTP, Signal::TTIN, Signal::TTOU]
            .iter()
            .any(|s| s.as_raw() == sig);
        if !job_stop {
            // SIGSTOP from someone debugging it: theirs to continue.
            return;
        }
        match self.stand_in {
            Some(p) => {
                // The terminal back to the job's group (if the command has it), then the
                // stand-in stops: the shell sees its job stopped.
                if rustix::termios::tcgetpgrp(stdin()).ok() == Some(cmd) {
                    let _ = rustix::termios::tcsetpgrp(stdin(), rustix::process::getpgrp());
                }
                self.cont.store(false, Ordering::SeqCst);
                let _ = rustix::process::kill_process(p, Signal::TSTP);
                self.stopped = true;
            }
            // No shell to continue it: a Ctrl-Z means nothing.
            None if sig == Signal::TSTP.as_raw() => {
                let _ = rustix::process::kill_process_group(cmd, Signal::CONT);
            }
            None => {}
        }
    }
}

impl Drop for Relay {
    /// A stand-in stopped for a command that is gone: let it go (it exits with our status).
    fn drop(&mut self) {
        if self.stopped
            && let Some(p) = self.stand_in
        {
            let _ = rustix::process::kill_process(p, Signal::CONT);
        }
    }
}
