//! The raw writes the benchmarks need (`bench/lib.sh`, through the binary `mmp-forge`),
//! through the project's own ext4 codec and O_DIRECT device layer (no second codec in a
//! script). The binary is a thin argument parser over [`ext4`] and [`raw`]; the integration
//! test `tool_forge_writes_what_debugfs_reads` calls them directly.

use mmp_core::format::ext4::{Block, Superblock};
use mmp_linux::blockdev::Device;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn number(v: &str) -> Result<u64, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("{v:?}: expected a number"))
}

/// Rewrites the fields `edits` name (`seq=N`, `nodename=S`, `bdevname=S`,
/// `check_interval=N`) of the ext4 MMP block of `path`, and its time, re-signed when
/// metadata_csum is on, as another node or a crashed one would have left it. Every edit is
/// parsed before anything is written. Returns the wall-clock time (Unix seconds) just
/// before the write.
///
/// # Errors
/// A device that cannot be opened or read, no MMP, a bad edit, or the failed write.
pub fn ext4(path: &Path, edits: &[String]) -> Result<f64, String> {
    let dev = Device::open(path, true).map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 4096];
    dev.read_at(0, &mut head).map_err(|e| e.to_string())?;
    let sb = Superblock::parse(&head[1024..2048]).map_err(|e| format!("superblock: {e}"))?;
    if !sb.has_mmp() {
        return Err("the file system has no MMP".into());
    }
    let at = sb
        .mmp_offset_bytes()
        .map_err(|e| format!("MMP block: {e}"))?;
    let seed = sb.mmp_csum_seed();
    let mut buf = vec![0u8; usize::try_from(sb.block_size()).map_err(|e| e.to_string())?];
    dev.read_at(at, &mut buf).map_err(|e| e.to_string())?;
    // The block as found, its checksum not verified (a forger may overwrite a bad one).
    let mut b = Block::parse(&buf, None).map_err(|e| format!("MMP block: {e}"))?;
    for e in edits {
        let (k, v) = e
            .split_once('=')
            .ok_or(format!("{e:?}: expected key=value"))?;
        match k {
            "seq" => b.seq = u32::try_from(number(v)?).map_err(|e| format!("seq: {e}"))?,
            "check_interval" => {
                b.check_interval =
                    u16::try_from(number(v)?).map_err(|e| format!("check_interval: {e}"))?;
            }
            "nodename" => b.nodename = Block::new(0, 0, v.as_bytes(), b"", 0).nodename,
            "bdevname" => b.bdevname = Block::new(0, 0, b"", v.as_bytes(), 0).bdevname,
            _ => {
                return Err(format!(
                    "{k}: expected seq, nodename, bdevname or check_interval"
                ));
            }
        }
    }
    b.time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    b.emit(&mut buf, seed);
    let t = unix_now();
    dev.write_at(at, &buf).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Writes `file`'s first 4096 bytes (zero padded) at offset 0 of `path`. Returns the
/// wall-clock time (Unix seconds) just before the write.
///
/// # Errors
/// A file or device that cannot be read or opened, or the failed write.
pub fn raw(path: &Path, file: &Path) -> Result<f64, String> {
    let mut data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    data.resize(4096, 0);
    let dev = Device::open(path, true).map_err(|e| e.to_string())?;
    let t = unix_now();
    dev.write_at(0, &data).map_err(|e| e.to_string())?;
    Ok(t)
}
