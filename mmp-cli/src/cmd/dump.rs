//! `mmp dump`: the raw MMP record and what it says.

use crate::exit::Exit;
use crate::{out, show};
use mmp_linux::target;
use std::path::Path;

pub(crate) fn dump(device: &Path) -> Result<Exit, String> {
    let path = show(device);
    let t = target::open(device, false).map_err(|e| e.to_string())?;
    let raw = t.read_record().map_err(|e| format!("{path}: {e}"))?;
    let parsed = mmp_core::machine::parse(&t.layout, &raw);
    out_raw!("{}", out::dump(&path, &t, &raw, parsed));
    Ok(Exit::Ok)
}
