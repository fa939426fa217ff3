//! `mmp-forge`: the raw writes the benchmarks need (`bench/lib.sh`), through the project's own
//! ext4 codec and O_DIRECT device layer (no second codec in a script):
//!
//! * `mmp-forge ext4 DEV [seq=N] [nodename=S] [bdevname=S] [check_interval=N]`: rewrites
//!   those fields of the ext4 MMP block (and its time), re-signed when metadata_csum is on, as
//!   another node or a crashed one would have left it;
//! * `mmp-forge raw DEV FILE`: writes FILE's first 4096 bytes (zero padded) at offset 0.
//!
//! Each prints the wall-clock time (Unix seconds, microseconds) just before its write.

use mmp_core::format::ext4::{Block, Superblock};
use mmp_linux::blockdev::Device;
use std::path::Path;
use std::process::ExitCode;
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

fn forge_ext4(dev: &Device, edits: &[String]) -> Result<(), String> {
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
    println!("{:.6}", unix_now());
    dev.write_at(at, &buf).map_err(|e| e.to_string())
}

fn raw(dev: &Device, file: &Path) -> Result<(), String> {
    let mut data = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    data.resize(4096, 0);
    println!("{:.6}", unix_now());
    dev.write_at(0, &data).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.as_slice() {
        [mode, dev, rest @ ..] if mode == "ext4" => Device::open(Path::new(dev), true)
            .map_err(|e| e.to_string())
            .and_then(|d| forge_ext4(&d, rest)),
        [mode, dev, file] if mode == "raw" => Device::open(Path::new(dev), true)
            .map_err(|e| e.to_string())
            .and_then(|d| raw(&d, Path::new(file))),
        _ => Err("usage: mmp-forge ext4 DEV [key=value...] | mmp-forge raw DEV FILE".into()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmp-forge: {e}");
            ExitCode::from(2)
        }
    }
}
