//! `mmp status`: the state of each device, like e2mmpstatus, for any number of devices.

use crate::exit::Exit;
use crate::{Ctx, out, resolve, show};
use mmp_linux::target;
use std::path::PathBuf;

pub(crate) fn status(c: &Ctx, json: bool, devices: &[PathBuf]) -> Exit {
    let mut code = Exit::Ok;
    for d in devices {
        let d = &match resolve::device(d) {
            Ok(d) => d,
            Err(msg) => {
                code = Exit::Error;
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
                            code = code.worst(Exit::Refused);
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
                        code = Exit::Error;
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
                code = Exit::Error;
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
