//! `mmp status`: the state of each device, like e2mmpstatus, for any number of devices.

use crate::exit::Exit;
use crate::json::Obj;
use crate::{Ctx, out, resolve, show};
use mmp_linux::target::{self, Format};
use std::path::PathBuf;

/// How `mmp status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Lines for people.
    Text,
    /// One JSON object per device (docs/json.md).
    Json,
    /// The same keys as `KEY=VALUE` lines, an empty line after each device.
    Export,
}

impl Output {
    /// Prints one object (a record or an error).
    fn object(self, o: Obj) {
        match self {
            Output::Json => outln!("{}", o.end()),
            _ => outln!("{}", o.export()),
        }
    }

    /// Prints an error: as an object, or as a line on stderr.
    fn error(self, path: &str, format: Option<Format>, msg: &str) {
        match self {
            Output::Text => note!("mmp: {}", out::plain(msg)),
            _ => self.object(out::error_obj("status", path, format, msg)),
        }
    }
}

pub(crate) fn status(c: &Ctx, output: Output, devices: &[PathBuf]) -> Exit {
    let mut code = Exit::Ok;
    for d in devices {
        let d = &match resolve::device(d) {
            Ok(d) => d,
            Err(msg) => {
                code = Exit::Error;
                output.error(&show(d), None, &msg);
                continue;
            }
        };
        let path = show(d);
        let res = target::open(d, false)
            .map_err(|e| (e.to_string(), e.format()))
            .and_then(|t| {
                let raw = t
                    .read_record()
                    .map_err(|e| (format!("{path}: {e}"), Some(t.format)))?;
                Ok((t, raw))
            });
        let (t, raw) = match res {
            Ok(x) => x,
            Err((msg, format)) => {
                code = Exit::Error;
                output.error(&path, format, &msg);
                continue;
            }
        };
        if c.verbose && output == Output::Text {
            note!("{path}: I/O mode {}", t.device.io_mode());
        }
        let snap = match mmp_core::machine::parse(&t.layout, &raw) {
            Ok(snap) => snap,
            Err(e) => {
                code = Exit::Error;
                output.error(&path, Some(t.format), &format!("{path}: {e}"));
                continue;
            }
        };
        if snap.class() != mmp_core::machine::Class::Clean {
            code = code.worst(Exit::Refused);
        }
        let mounted = t.device.is_mounted().ok().flatten();
        match output {
            Output::Text => outln!(
                "{}",
                out::status_lines(
                    &out::status_text(&path, &t, &snap, mounted.as_deref()),
                    out::terminal_width()
                )
            ),
            _ => output.object(out::status_obj(&path, &t, &snap, mounted.as_deref())),
        }
    }
    code
}
