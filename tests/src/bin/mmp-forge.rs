//! `mmp-forge`: the raw writes the benchmarks need (`bench/lib.sh`), through the project's own
//! ext4 codec and O_DIRECT device layer (no second codec in a script):
//!
//! * `mmp-forge ext4 DEV [seq=N] [nodename=S] [bdevname=S] [check_interval=N]`: rewrites
//!   those fields of the ext4 MMP block (and its time), re-signed when metadata_csum is on, as
//!   another node or a crashed one would have left it;
//! * `mmp-forge raw DEV FILE`: writes FILE's first 4096 bytes (zero padded) at offset 0.
//!
//! Each prints the wall-clock time (Unix seconds, microseconds) just before its write.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.as_slice() {
        [mode, dev, rest @ ..] if mode == "ext4" => mmp_tests::forge::ext4(Path::new(dev), rest),
        [mode, dev, file] if mode == "raw" => {
            mmp_tests::forge::raw(Path::new(dev), Path::new(file))
        }
        _ => Err("usage: mmp-forge ext4 DEV [key=value...] | mmp-forge raw DEV FILE".into()),
    };
    match res {
        Ok(t) => {
            println!("{t:.6}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mmp-forge: {e}");
            ExitCode::from(2)
        }
    }
}
