//! Wait progress on stderr for the long waits of the protocol.

use mmp_core::machine::{Event, Phase};
use std::io::Write;

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
