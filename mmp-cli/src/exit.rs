//! The exit statuses of `mmp`: a contract with scripts and cluster agents (README, the
//! `Exit status` section of `mmp --help` and of every man page). Commands return an [`Exit`],
//! never a bare number.

use std::process::ExitCode;

/// How a command ended, as its exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// 0: done: clean, safe to take, held and released.
    Ok,
    /// 1: refused, in use, in doubt or not clean (nothing was written), or a recorded holder
    /// that is gone (`list`).
    Refused,
    /// 2: an error: bad input, a device that cannot be read, a tool that failed.
    Error,
    /// 3: ownership lost: another host took the device, or its heartbeat could not be kept.
    Lost,
    /// `run`: the command's own exit status (127: not found, 128 + N: killed by signal N).
    Command(u8),
}

impl Exit {
    /// The number the process exits with.
    pub(crate) const fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Refused => 1,
            Exit::Error => 2,
            Exit::Lost => 3,
            Exit::Command(c) => c,
        }
    }

    /// The more serious of two results, for commands over several devices (an error
    /// outweighs a refusal, which outweighs success).
    #[must_use]
    pub(crate) fn worst(self, other: Exit) -> Exit {
        if other.code() > self.code() {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [Exit::Ok, Exit::Refused, Exit::Error, Exit::Lost];
        assert_eq!(all.map(Exit::code), [0, 1, 2, 3]);
        assert_eq!(Exit::Command(127).code(), 127);
        assert_eq!(
            Exit::Ok.worst(Exit::Error).worst(Exit::Refused),
            Exit::Error
        );
    }
}
