//! `mmp hostid`: show or generate this host's hostid.

use crate::args::Global;
use crate::exit::Exit;
use mmp_linux::hostid;
use std::io::Write;
use std::path::Path;

pub(crate) fn hostid_cmd(
    g: &Global,
    generate: bool,
    force: bool,
    file: &Path,
) -> Result<Exit, String> {
    if generate {
        let v = hostid::generate(file, force).map_err(|e| match e {
            hostid::HostidError::AlreadyExists { path, current } => format!(
                "{} already exists (hostid {}); overwrite it with `mmp hostid --generate --force`",
                path.display(),
                current.map_or_else(|| "unreadable".to_owned(), |v| format!("0x{v:08x}"))
            ),
            e => e.to_string(),
        })?;
        outln!("hostid 0x{v:08x} written to {}", file.display());
        return Ok(Exit::Ok);
    }
    let env = std::env::var(hostid::ENV_VAR).ok();
    let h = hostid::resolve_with_path(g.hostid.as_deref(), env.as_deref(), file)
        .map_err(|e| e.to_string())?;
    if h.is_set() {
        outln!("hostid 0x{:08x} (from {})", h.value, h.source);
    } else if h.source == hostid::HostidSource::Unset {
        outln!(
            "hostid not set (no --hostid, no ${}, no {}): ext4 MMP needs none; for native MMP areas run `mmp hostid --generate`",
            hostid::ENV_VAR,
            file.display()
        );
    } else {
        outln!(
            "hostid is 0 (from {}), which cannot acquire native MMP areas (ext4 MMP needs none): give a non-zero hostid or run `mmp hostid --generate`",
            h.source
        );
    }
    let _ = std::io::stdout().flush();
    Ok(Exit::Ok)
}
