//! `tool_` tier: `mmp_linux::tune` (`mmp enable`, `disable`, `set-interval`) against
//! `tune2fs`.
//!
//! For each kind of image (1 KiB and 4 KiB blocks; metadata_csum, gdt_csum or neither; 64bit
//! and 32-bit descriptors; flex_bg or not; small single-group and multi-group file systems;
//! files written with debugfs; group 0 full so that the MMP block lands in a `BLOCK_UNINIT`
//! group), mke2fs makes a base image, and two copies are changed side by side, ours through
//! the library and the other with tune2fs:
//!
//! 1. `enable` vs `tune2fs -O mmp -E mmp_update_interval=5`: `e2fsck -fn` is clean on both;
//!    `dumpe2fs` output is identical once times, node and device names, the lifetime-writes
//!    counter and the superblock checksum are filtered out; and the images are identical
//!    byte for byte except in the MMP block's first 1024 bytes and in each superblock copy's
//!    `s_wtime`, `s_kbytes_written` and `s_checksum` (which e2fsprogs sets from the clock and
//!    its I/O statistics). Our CLEAN block is checked field by field.
//! 2. `set_interval(7)` vs `tune2fs -f -E mmp_update_interval=7`: the same comparisons.
//! 3. `disable` vs `tune2fs -f -O ^mmp`: the same comparisons.
//!
//! Refusals (already enabled, disable or set-interval when off, bad intervals, bigalloc,
//! meta_bg, zeros, journal needing recovery, errors flag, a bad descriptor checksum) leave
//! the image byte for byte unchanged.
//!
//! `loop_` tests (root, loop devices, kernel ext4): the kernel mounts our copy and its kmmpd
//! updates the block; a mounted file system is refused (through the image path and through
//! the loop device) with nothing written; an image whose files the kernel wrote (stale
//! backup superblocks) gives the same parity; and so does a 1 KiB-block file system changed
//! through a 4 KiB-sector loop device (every write a read-modify-write of whole sectors).
//!
//! Without the e2fsprogs tools each test prints `SKIP: <reason>` and returns.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mmp_core::format::ext4::{
    Block, INCOMPAT_RECOVER, MMP_MAGIC, SEQ_CLEAN, Superblock, sb_field, superblock_checksum,
};
use mmp_core::format::ext4fs::{Desc, Layout, desc_field};
use mmp_linux::blockdev::Device;
use mmp_linux::tune::{self, Deadline, EnableOptions, Op, TuneError};
use mmp_tests::{find_tool, skip};

const UUID: &str = "11111111-2222-3333-4444-555555555555";
const NOW: u64 = 1_795_257_665;
const NODE: &[u8] = b"tune-test-node";

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// Whether the e2fsprogs tools are there; prints SKIP otherwise.
fn have_tools() -> bool {
    for t in ["mke2fs", "tune2fs", "dumpe2fs", "e2fsck", "debugfs"] {
        if find_tool(t).is_none() {
            skip(&format!("{t} not found"));
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mkfs(path: &Path, size: &str, args: &[&str]) {
    let mut c = Command::new(tool("mke2fs"));
    c.args([
        "-F",
        "-q",
        "-t",
        "ext4",
        "-U",
        UUID,
        "-E",
        "lazy_itable_init=1,nodiscard",
    ]);
    c.args(args).arg(path).arg(size);
    run_ok(&mut c);
}

fn copy_sparse(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("--sparse=always").arg(from).arg(to));
}

fn fsck_clean(path: &Path) {
    let out = run(Command::new(tool("e2fsck")).arg("-fn").arg(path));
    assert!(
        out.status.success(),
        "e2fsck -fn {} not clean ({}):\n{}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `dumpe2fs` with everything that depends on the clock, the host, the device name or the
/// tool's I/O statistics removed.
fn dumpe2fs_filtered(path: &Path) -> String {
    let out = run_ok(Command::new(tool("dumpe2fs")).arg(path));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    const DROP: [&str; 11] = [
        "Filesystem created:",
        "Last mount time:",
        "Last write time:",
        "Last checked:",
        "Lifetime writes:",
        "Checksum:",
        "mmp_update_date:",
        "mmp_update_time:",
        "mmp_node_name:",
        "mmp_device_name:",
        "mmp_sequence:",
    ];
    text.lines()
        .filter(|l| !DROP.iter().any(|d| l.trim_start().starts_with(d)))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn assert_dumps_match(ours: &Path, theirs: &Path, step: &str) {
    let a = dumpe2fs_filtered(ours);
    let b = dumpe2fs_filtered(theirs);
    if a != b {
        let diff: Vec<String> = a
            .lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .take(20)
            .map(|(x, y)| format!("  ours:   {x}\n  tune2fs: {y}"))
            .collect();
        panic!(
            "{step}: dumpe2fs differs ({} vs {} lines):\n{}",
            a.lines().count(),
            b.lines().count(),
            diff.join("\n")
        );
    }
}

fn primary_super(path: &Path) -> Vec<u8> {
    let f = fs::File::open(path).expect("open image");
    let mut sb = vec![0u8; 1024];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut sb, 1024).expect("read superblock");
    sb
}

/// Byte ranges (absolute) allowed to differ between our copy and tune2fs's: the MMP block's
/// structure, and in every superblock copy `s_wtime`, `s_kbytes_written`, `s_wtime_hi` and
/// `s_checksum`.
fn allowed_ranges(path: &Path, mmp_block: Option<u64>) -> Vec<std::ops::Range<u64>> {
    let sb = primary_super(path);
    let layout = Layout::parse(&sb).expect("layout");
    let bs = u64::from(layout.block_size);
    let mut out = Vec::new();
    if let Some(b) = mmp_block {
        out.push(b * bs..b * bs + 1024);
    }
    for g in layout.super_groups() {
        let base = layout.super_offset(g);
        for r in [0x30..0x34u64, 0x178..0x180, 0x274..0x275, 0x3FC..0x400] {
            out.push(base + r.start..base + r.end);
        }
    }
    out
}

fn assert_bytes_match(ours: &Path, theirs: &Path, allowed: &[std::ops::Range<u64>], step: &str) {
    use std::os::unix::fs::FileExt;
    let a = fs::File::open(ours).expect("open ours");
    let b = fs::File::open(theirs).expect("open theirs");
    let len = a.metadata().expect("stat").len();
    assert_eq!(
        len,
        b.metadata().expect("stat").len(),
        "{step}: sizes differ"
    );
    const CHUNK: usize = 1 << 20;
    let (mut x, mut y) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut bad = Vec::new();
    let mut pos = 0u64;
    while pos < len && bad.len() < 20 {
        let n = CHUNK.min((len - pos) as usize);
        a.read_exact_at(&mut x[..n], pos).expect("read ours");
        b.read_exact_at(&mut y[..n], pos).expect("read theirs");
        if x[..n] != y[..n] {
            for i in (0..n).filter(|&i| x[i] != y[i]) {
                let at = pos + i as u64;
                if !allowed.iter().any(|r| r.contains(&at)) {
                    bad.push(format!(
                        "{at:#x} (1 KiB block {}, +{:#x}): ours {:02x} tune2fs {:02x}",
                        at / 1024,
                        at % 1024,
                        x[i],
                        y[i]
                    ));
                }
            }
        }
        pos += n as u64;
    }
    assert!(
        bad.is_empty(),
        "{step}: unexpected byte differences:\n{}",
        bad.join("\n")
    );
}

fn tune2fs(path: &Path, args: &[&str]) {
    run_ok(Command::new(tool("tune2fs")).args(args).arg(path));
}

fn open_rw(path: &Path) -> Device {
    Device::open(path, true).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn opts(interval: u16, devname: &[u8]) -> EnableOptions {
    EnableOptions {
        update_interval_s: interval,
        nodename: NODE.to_vec(),
        devname: devname.to_vec(),
        now_unix_s: NOW,
    }
}

fn check_clean_block(path: &Path, interval: u16) -> u64 {
    let sb_bytes = primary_super(path);
    let sb = Superblock::parse(&sb_bytes).expect("superblock");
    let off = sb.mmp_offset_bytes().expect("mmp enabled");
    let bs = sb.block_size() as usize;
    let mut data = vec![0u8; bs];
    let f = fs::File::open(path).expect("open");
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut data, off).expect("read MMP block");
    let start = 0usize;
    let blk = Block::parse(&data[..1024], sb.mmp_csum_seed()).expect("MMP block parses");
    assert_eq!(blk.magic, MMP_MAGIC);
    assert_eq!(blk.seq, SEQ_CLEAN);
    assert_eq!(blk.time, NOW);
    assert_eq!(blk.nodename(), NODE);
    assert_eq!(blk.bdevname(), b"ours.img");
    assert_eq!(blk.check_interval, interval.max(5));
    assert!(
        data[start + 1024..start + bs].iter().all(|&b| b == 0),
        "block tail zeroed"
    );
    sb.mmp_block
}

/// How a base image is populated after mke2fs.
#[derive(Clone, Copy)]
enum Populate {
    Nothing,
    /// A few files and a directory written with `debugfs -w`.
    DebugfsFiles,
    /// A file exactly as large as group 0's free space, so the first free block lies in
    /// group 1, which is `BLOCK_UNINIT`.
    FillGroup0,
}

fn populate(dir: &Path, img: &Path, how: Populate) {
    match how {
        Populate::Nothing => {}
        Populate::DebugfsFiles => {
            let big = dir.join("big.bin");
            fs::write(
                &big,
                (0..300_000u32)
                    .flat_map(|i| i.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
            .expect("write");
            let cmds = dir.join("cmds");
            fs::write(
                &cmds,
                format!(
                    "write /etc/services f1\nmkdir d\ncd d\nwrite {} big\nwrite /etc/passwd p\nsymlink s /etc/services\n",
                    big.display()
                ),
            )
            .expect("write");
            run_ok(
                Command::new(tool("debugfs"))
                    .arg("-w")
                    .arg("-f")
                    .arg(&cmds)
                    .arg(img),
            );
        }
        Populate::FillGroup0 => {
            let sb = primary_super(img);
            let layout = Layout::parse(&sb).expect("layout");
            let mut table = vec![0u8; layout.desc_table_len()];
            let f = fs::File::open(img).expect("open");
            std::os::unix::fs::FileExt::read_exact_at(
                &f,
                &mut table,
                layout.gdt_first_block(0) * u64::from(layout.block_size),
            )
            .expect("read gdt");
            let free = Desc::of(&layout, &table, 0).expect("desc").free_blocks();
            assert!(
                Desc::of(&layout, &table, 1).expect("desc").block_uninit(),
                "group 1 starts BLOCK_UNINIT"
            );
            let fill = dir.join("fill.bin");
            let len = free as usize * layout.block_size as usize;
            fs::write(
                &fill,
                b"abcdefgh"
                    .iter()
                    .copied()
                    .cycle()
                    .take(len)
                    .collect::<Vec<u8>>(),
            )
            .expect("write");
            run_ok(
                Command::new(tool("debugfs"))
                    .arg("-w")
                    .arg("-R")
                    .arg(format!("write {} fill", fill.display()))
                    .arg(img),
            );
        }
    }
}

/// The full parity run on one kind of image. Returns the temp dir (kept alive by the caller).
fn parity(name: &str, size: &str, mkfs_args: &[&str], how: Populate) {
    if !have_tools() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    mkfs(&base, size, mkfs_args);
    populate(dir.path(), &base, how);
    fsck_clean(&base);
    let report = parity_on(dir.path(), &base, name, Via::File);
    assert_eq!(
        report.was_block_uninit,
        matches!(how, Populate::FillGroup0),
        "{name}: group was BLOCK_UNINIT"
    );
    eprintln!("{name}: {:?}", started.elapsed());
}

/// How our copy is opened.
#[derive(Clone, Copy)]
enum Via {
    /// The image file itself.
    File,
    /// A loop device with this logical sector size attached to it for each operation.
    Loop(u32),
}

fn with_ours<R>(ours: &Path, via: Via, f: impl FnOnce(&Device) -> R) -> R {
    match via {
        Via::File => f(&open_rw(ours)),
        Via::Loop(sector) => {
            let lo = Loop::attach_with(ours, sector).expect("losetup");
            let dev = open_rw(Path::new(&lo.0));
            assert_eq!(dev.alignment(), sector as usize, "loop device sector size");
            let r = f(&dev);
            drop(dev);
            drop(lo);
            r
        }
    }
}

fn parity_on(dir: &Path, base: &Path, name: &str, via: Via) -> tune::EnableReport {
    let ours = dir.join("ours.img");
    let theirs = dir.join("theirs.img");
    copy_sparse(base, &ours);
    copy_sparse(base, &theirs);

    // 1. enable
    let report = with_ours(&ours, via, |dev| {
        let info = tune::preflight(dev, Op::Enable).expect("preflight");
        assert!(!info.mmp_enabled);
        tune::enable(dev, &opts(5, b"ours.img")).unwrap_or_else(|e| panic!("{name}: enable: {e}"))
    });
    tune2fs(&theirs, &["-O", "mmp", "-E", "mmp_update_interval=5"]);
    fsck_clean(&ours);
    fsck_clean(&theirs);
    let block = check_clean_block(&ours, 5);
    assert_eq!(block, report.block);
    let theirs_block = Superblock::parse(&primary_super(&theirs))
        .expect("sb")
        .mmp_block;
    assert_eq!(block, theirs_block, "{name}: same MMP block chosen");
    assert_dumps_match(&ours, &theirs, &format!("{name} enable"));
    assert_bytes_match(
        &ours,
        &theirs,
        &allowed_ranges(&ours, Some(block)),
        &format!("{name} enable"),
    );

    // 2. set-interval
    with_ours(&ours, via, |dev| tune::set_interval(dev, 7, Deadline::NONE))
        .unwrap_or_else(|e| panic!("{name}: set_interval: {e}"));
    tune2fs(&theirs, &["-f", "-E", "mmp_update_interval=7"]);
    fsck_clean(&ours);
    assert_eq!(
        Superblock::parse(&primary_super(&ours))
            .expect("sb")
            .mmp_update_interval,
        7
    );
    assert_dumps_match(&ours, &theirs, &format!("{name} set-interval"));
    assert_bytes_match(
        &ours,
        &theirs,
        &allowed_ranges(&ours, Some(block)),
        &format!("{name} set-interval"),
    );

    // 3. disable
    let rep = with_ours(&ours, via, |d| tune::disable(d, Deadline::NONE))
        .unwrap_or_else(|e| panic!("{name}: disable: {e}"));
    assert!(
        rep.freed,
        "{name}: block freed ({:?})",
        rep.not_freed_reason
    );
    assert_eq!(rep.old_block, block);
    tune2fs(&theirs, &["-f", "-O", "^mmp"]);
    fsck_clean(&ours);
    fsck_clean(&theirs);
    assert_dumps_match(&ours, &theirs, &format!("{name} disable"));
    assert_bytes_match(
        &ours,
        &theirs,
        &allowed_ranges(&ours, Some(block)),
        &format!("{name} disable"),
    );
    let sb = Superblock::parse(&primary_super(&ours)).expect("sb");
    assert!(!sb.has_mmp());
    assert_eq!((sb.mmp_block, sb.mmp_update_interval), (0, 0));
    report
}

#[test]
fn tool_tune_1k_csum_small() {
    parity(
        "1k metadata_csum 8M",
        "8M",
        &["-b", "1024"],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_4k_csum_small() {
    parity(
        "4k metadata_csum 16M",
        "16M",
        &["-b", "4096"],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_1k_gdt_csum_32bit() {
    parity(
        "1k gdt_csum 32bit 64M",
        "64M",
        &["-b", "1024", "-O", "^metadata_csum,^64bit,uninit_bg"],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_4k_gdt_csum_64bit_no_flex() {
    parity(
        "4k gdt_csum 64bit no flex_bg 400M",
        "400M",
        &[
            "-b",
            "4096",
            "-O",
            "^metadata_csum,64bit,uninit_bg,^flex_bg",
        ],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_no_checksums_no_journal() {
    parity(
        "1k no csum, no journal 40M",
        "40M",
        &[
            "-b",
            "1024",
            "-O",
            "^metadata_csum,^uninit_bg,^has_journal,^64bit",
        ],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_4k_csum_32bit() {
    parity(
        "4k metadata_csum 32bit 16M",
        "16M",
        &["-b", "4096", "-O", "^64bit"],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_backup_layouts() {
    // Every group a backup (no sparse_super), and sparse_super2 (two listed backup groups).
    parity(
        "1k no sparse_super 64M",
        "64M",
        &["-b", "1024", "-O", "^sparse_super,^resize_inode"],
        Populate::Nothing,
    );
    parity(
        "1k sparse_super2 64M",
        "64M",
        &[
            "-b",
            "1024",
            "-O",
            "sparse_super2,^resize_inode",
            "-E",
            "num_backup_sb=2",
        ],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_1k_csum_multigroup_flex() {
    parity(
        "1k metadata_csum flex_bg 300M",
        "300M",
        &["-b", "1024"],
        Populate::Nothing,
    );
}

#[test]
fn tool_tune_1k_csum_no_flex_files() {
    parity(
        "1k metadata_csum no flex_bg 100M with files",
        "100M",
        &["-b", "1024", "-O", "^flex_bg"],
        Populate::DebugfsFiles,
    );
}

#[test]
fn tool_tune_4k_csum_seed_files() {
    parity(
        "4k metadata_csum_seed 300M with files",
        "300M",
        &["-b", "4096", "-O", "metadata_csum_seed"],
        Populate::DebugfsFiles,
    );
}

#[test]
fn tool_tune_uninit_group() {
    parity(
        "1k group 0 full, MMP block in BLOCK_UNINIT group 1",
        "32M",
        &["-b", "1024"],
        Populate::FillGroup0,
    );
}

#[test]
fn tool_tune_uninit_group_gdt_csum() {
    parity(
        "1k gdt_csum, group 0 full",
        "32M",
        &["-b", "1024", "-O", "^metadata_csum,uninit_bg"],
        Populate::FillGroup0,
    );
}

fn assert_refused(
    path: &Path,
    what: &str,
    f: impl FnOnce(&Device) -> Result<(), TuneError>,
) -> TuneError {
    let before = fs::read(path).expect("read");
    let dev = open_rw(path);
    let err = match f(&dev) {
        Ok(()) => panic!("{what}: not refused"),
        Err(e) => e,
    };
    drop(dev);
    assert!(
        fs::read(path).expect("read") == before,
        "{what}: image changed"
    );
    eprintln!("{what}: refused: {err}");
    err
}

fn enable_default(d: &Device) -> Result<(), TuneError> {
    tune::enable(d, &opts(5, b"x")).map(|_| ())
}

/// Rewrites the primary superblock's checksum after a hand edit.
fn patch_super(path: &Path, edit: impl FnOnce(&mut [u8])) {
    let mut data = fs::read(path).expect("read");
    let sb = &mut data[1024..2048];
    edit(sb);
    let c = superblock_checksum(sb);
    sb[sb_field::CHECKSUM].copy_from_slice(&c.to_le_bytes());
    fs::write(path, data).expect("write");
}

#[test]
fn tool_tune_refusals_leave_image_unchanged() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);

    // Plain image: disable / set-interval when off; bad intervals.
    mkfs(&p("plain.img"), "8M", &["-b", "1024"]);
    let e = assert_refused(&p("plain.img"), "disable when off", |d| {
        tune::disable(d, Deadline::NONE).map(|_| ())
    });
    assert!(matches!(e, TuneError::NotEnabled), "{e:?}");
    let e = assert_refused(&p("plain.img"), "set-interval when off", |d| {
        tune::set_interval(d, 7, Deadline::NONE)
    });
    assert!(matches!(e, TuneError::NotEnabled), "{e:?}");
    for bad in [0u16, 301] {
        let e = assert_refused(&p("plain.img"), "bad interval", |d| {
            tune::enable(d, &opts(bad, b"x")).map(|_| ())
        });
        assert!(
            matches!(e, TuneError::BadInterval(v) if v == u32::from(bad)),
            "{e:?}"
        );
    }
    let e = assert_refused(&p("plain.img"), "bad interval on set", |d| {
        tune::set_interval(d, 0, Deadline::NONE)
    });
    assert!(matches!(e, TuneError::BadInterval(0)), "{e:?}");

    // Already enabled (by tune2fs, and by us).
    copy_sparse(&p("plain.img"), &p("mmp.img"));
    tune2fs(&p("mmp.img"), &["-O", "mmp"]);
    let e = assert_refused(&p("mmp.img"), "already enabled", enable_default);
    assert!(matches!(e, TuneError::AlreadyEnabled { .. }), "{e:?}");
    copy_sparse(&p("plain.img"), &p("ours.img"));
    tune::enable(&open_rw(&p("ours.img")), &opts(5, b"ours.img")).expect("enable");
    let e = assert_refused(&p("ours.img"), "already enabled (ours)", enable_default);
    assert!(matches!(e, TuneError::AlreadyEnabled { .. }), "{e:?}");

    // bigalloc and meta_bg.
    mkfs(
        &p("bigalloc.img"),
        "64M",
        &["-b", "1024", "-O", "bigalloc", "-C", "16384"],
    );
    let e = assert_refused(&p("bigalloc.img"), "bigalloc", enable_default);
    assert!(
        matches!(
            e,
            TuneError::Unsupported {
                feature: "bigalloc"
            }
        ),
        "{e:?}"
    );
    mkfs(
        &p("metabg.img"),
        "64M",
        &["-b", "1024", "-O", "meta_bg,^resize_inode"],
    );
    let e = assert_refused(&p("metabg.img"), "meta_bg", enable_default);
    assert!(
        matches!(e, TuneError::Unsupported { feature: "meta_bg" }),
        "{e:?}"
    );

    // Not ext4 at all.
    fs::write(p("zeros.img"), vec![0u8; 4 << 20]).expect("write");
    let e = assert_refused(&p("zeros.img"), "zeros", enable_default);
    assert!(matches!(e, TuneError::NotExt4 { .. }), "{e:?}");
    let e = assert_refused(&p("zeros.img"), "zeros (disable)", |d| {
        tune::disable(d, Deadline::NONE).map(|_| ())
    });
    assert!(matches!(e, TuneError::NotExt4 { .. }), "{e:?}");

    // Journal needing recovery, errors flag (checksum recomputed after the hand edit).
    copy_sparse(&p("plain.img"), &p("recover.img"));
    patch_super(&p("recover.img"), |sb| {
        let v = u32::from_le_bytes(sb[sb_field::FEATURE_INCOMPAT].try_into().expect("4 bytes"))
            | INCOMPAT_RECOVER;
        sb[sb_field::FEATURE_INCOMPAT].copy_from_slice(&v.to_le_bytes());
    });
    let e = assert_refused(&p("recover.img"), "needs recovery", enable_default);
    assert!(matches!(e, TuneError::NeedsRecovery), "{e:?}");
    copy_sparse(&p("ours.img"), &p("recover2.img"));
    patch_super(&p("recover2.img"), |sb| {
        let v = u32::from_le_bytes(sb[sb_field::FEATURE_INCOMPAT].try_into().expect("4 bytes"))
            | INCOMPAT_RECOVER;
        sb[sb_field::FEATURE_INCOMPAT].copy_from_slice(&v.to_le_bytes());
    });
    let e = assert_refused(&p("recover2.img"), "needs recovery (disable)", |d| {
        tune::disable(d, Deadline::NONE).map(|_| ())
    });
    assert!(matches!(e, TuneError::NeedsRecovery), "{e:?}");
    copy_sparse(&p("plain.img"), &p("errors.img"));
    patch_super(&p("errors.img"), |sb| sb[sb_field::STATE.start] |= 0x02);
    let e = assert_refused(&p("errors.img"), "has errors", enable_default);
    assert!(matches!(e, TuneError::HasErrors), "{e:?}");

    // A superblock checksum that does not match; a descriptor checksum that does not match.
    copy_sparse(&p("plain.img"), &p("badsb.img"));
    {
        let mut data = fs::read(p("badsb.img")).expect("read");
        data[1024 + 0x3FC] ^= 0xFF;
        fs::write(p("badsb.img"), data).expect("write");
    }
    let e = assert_refused(&p("badsb.img"), "bad superblock checksum", enable_default);
    assert!(matches!(e, TuneError::Corrupt { .. }), "{e:?}");
    copy_sparse(&p("plain.img"), &p("baddesc.img"));
    {
        let mut data = fs::read(p("baddesc.img")).expect("read");
        // 1 KiB blocks: the descriptor table starts at block 2.
        data[2048 + desc_field::FREE_BLOCKS_LO.start] ^= 0x01;
        fs::write(p("baddesc.img"), data).expect("write");
    }
    let e = assert_refused(&p("baddesc.img"), "bad descriptor checksum", enable_default);
    assert!(matches!(e, TuneError::Corrupt { .. }), "{e:?}");
}

// ---- loop tier --------------------------------------------------------------------------

fn loop_ready() -> bool {
    if !have_tools() {
        return false;
    }
    use std::os::unix::fs::MetadataExt;
    if fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        skip("not root");
        return false;
    }
    if find_tool("losetup").is_none() || !Path::new("/dev/loop-control").exists() {
        skip("no losetup or /dev/loop-control");
        return false;
    }
    true
}

/// An attached loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &Path) -> Option<Loop> {
        Loop::attach_with(img, 512)
    }

    fn attach_with(img: &Path, sector: u32) -> Option<Loop> {
        let out = run(Command::new(tool("losetup"))
            .args(["-f", "--show", "-b", &sector.to_string()])
            .arg(img));
        if !out.status.success() {
            skip(&format!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup"))
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// A mount, unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn mount(dev: &str, at: &Path, opts: &str) -> Option<Mounted> {
        fs::create_dir_all(at).expect("mkdir");
        let out = run(Command::new("mount")
            .args(["-t", "ext4", "-o", opts, dev])
            .arg(at));
        if !out.status.success() {
            skip(&format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        Some(Mounted(at.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn read_seq(dev: &Device, offset: u64) -> u32 {
    let mut b = vec![0u8; 1024];
    dev.read_at(offset, &mut b).expect("read MMP block");
    let blk = Block::parse(&b, None).expect("MMP magic");
    blk.seq
}

#[test]
fn loop_tune_kernel_heartbeat_and_mount_refusal() {
    if !loop_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("ours.img");
    mkfs(&img, "32M", &["-b", "1024"]);
    let rep = tune::enable(&open_rw(&img), &opts(1, b"ours.img")).expect("enable");
    fsck_clean(&img);
    let sb = Superblock::parse(&primary_super(&img)).expect("sb");
    assert_eq!(sb.mmp_update_interval, 1);
    let off = rep.block * u64::from(sb.block_size());

    let Some(lo) = Loop::attach(&img) else { return };
    {
        let Some(_m) = Mounted::mount(&lo.0, &dir.path().join("mnt"), "rw") else {
            return;
        };
        let dev = Device::open(Path::new(&lo.0), false).expect("open loop");
        let s1 = read_seq(&dev, off);
        std::thread::sleep(Duration::from_millis(1600));
        let s2 = read_seq(&dev, off);
        assert_ne!(s1, s2, "kmmpd updates the MMP block");
        assert!(
            s2 <= mmp_core::format::ext4::SEQ_MAX,
            "live sequence {s2:#x}"
        );
        // `mmp status` sees the kernel's heartbeat on the file system we enabled.
        let st = crate::mmp_cmd()
            .env_remove("MMP_HOSTID")
            .args(["status", "--json", &lo.0])
            .output()
            .expect("run mmp status");
        let json = String::from_utf8_lossy(&st.stdout);
        assert_eq!(st.status.code(), Some(1), "active: {json}");
        assert!(json.contains("\"state\":\"active\""), "{json}");
        // Mounted: refused through the loop device and through the image path.
        let e = tune::disable(&open_rw(Path::new(&lo.0)), Deadline::NONE)
            .expect_err("refused while mounted");
        assert!(
            matches!(e, TuneError::Mounted { .. } | TuneError::InUse { .. }),
            "{e:?}"
        );
        let e = tune::set_interval(&open_rw(&img), 3, Deadline::NONE)
            .expect_err("refused while mounted");
        assert!(matches!(e, TuneError::Mounted { .. }), "{e:?}");
    }
    // Unmounted: the kernel left the block CLEAN.
    let dev = Device::open(Path::new(&lo.0), false).expect("open loop");
    assert_eq!(read_seq(&dev, off), SEQ_CLEAN);
    drop(dev);
    drop(lo);

    // A read-only, no-load mount writes nothing, so "nothing written" can be checked by bytes.
    let plain = dir.path().join("plain.img");
    mkfs(&plain, "16M", &["-b", "4096"]);
    let Some(lo) = Loop::attach(&plain) else {
        return;
    };
    let Some(m) = Mounted::mount(&lo.0, &dir.path().join("mnt2"), "ro,noload") else {
        return;
    };
    let e = assert_refused(&plain, "mounted (image path)", enable_default);
    assert!(matches!(e, TuneError::Mounted { .. }), "{e:?}");
    let e = assert_refused(Path::new(&lo.0), "mounted (loop device)", enable_default);
    assert!(
        matches!(e, TuneError::Mounted { .. } | TuneError::InUse { .. }),
        "{e:?}"
    );
    drop(m);
    drop(lo);
}

#[test]
fn loop_tune_kernel_written_files_parity() {
    if !loop_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    mkfs(&base, "200M", &["-b", "1024"]);
    {
        let Some(lo) = Loop::attach(&base) else {
            return;
        };
        let Some(m) = Mounted::mount(&lo.0, &dir.path().join("mnt"), "rw") else {
            return;
        };
        for (i, src) in ["/etc/services", "/etc/passwd", "/etc/hostname"]
            .iter()
            .enumerate()
        {
            if Path::new(src).exists() {
                fs::copy(src, m.0.join(format!("f{i}"))).expect("copy");
            }
        }
        fs::create_dir(m.0.join("d")).expect("mkdir");
        fs::write(m.0.join("d/big"), vec![0x5Au8; 3 << 20]).expect("write");
        drop(m);
        drop(lo);
    }
    fsck_clean(&base);
    parity_on(dir.path(), &base, "1k kernel-written 200M", Via::File);
}

/// 1 KiB superblocks and blocks on a 4 KiB-sector block device: every write is a
/// read-modify-write of the covering sectors, and the `O_EXCL` probe runs.
#[test]
fn loop_tune_4k_sector_device_parity() {
    if !loop_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    mkfs(&base, "100M", &["-b", "1024"]);
    populate(dir.path(), &base, Populate::DebugfsFiles);
    parity_on(
        dir.path(),
        &base,
        "1k fs on a 4k-sector loop device",
        Via::Loop(4096),
    );
}

/// The `mmp` commands themselves, end to end on an image: `enable`, `set-interval` (which
/// first proves the device unused with the activity test), `disable` refused while another
/// process holds the device (the activity test sees its heartbeat: exit 1, nothing
/// changed), then `disable` once it is released. e2fsck stays clean throughout, and tune2fs
/// sees each change.
#[test]
fn tool_tune_cli_commands_end_to_end() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("cli.img");
    mkfs(&img, "32M", &[]);
    let img_s = img.to_string_lossy().to_string();
    let mmp = |args: &[&str]| {
        let out = run(crate::mmp_cmd()
            .env_remove("MMP_HOSTID")
            .args(["--hostid", "0x7e57c11", "--nodename", "cli-a"])
            .args(args));
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let features = |p: &Path| {
        let out = run_ok(Command::new(tool("dumpe2fs")).arg("-h").arg(p));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let has_mmp = |p: &Path| {
        features(p)
            .lines()
            .find(|l| l.starts_with("Filesystem features:"))
            .is_some_and(|l| l.split_whitespace().any(|w| w == "mmp"))
    };

    let (code, text) = mmp(&["enable", "--interval", "1", &img_s]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("enabled with update interval 1 s"), "{text}");
    assert!(has_mmp(&img));
    let h = features(&img);
    assert!(h.contains("MMP update interval:      1"), "{h}");
    fsck_clean(&img);
    let (code, text) = mmp(&["enable", &img_s]);
    assert_eq!(
        code,
        Some(0),
        "enabling twice is a no-op, as for tune2fs: {text}"
    );
    assert!(text.contains("already enabled"), "{text}");

    let (code, text) = mmp(&["set-interval", "3", &img_s]);
    assert_eq!(code, Some(0), "{text}");
    assert!(features(&img).contains("MMP update interval:      3"));
    fsck_clean(&img);
    // The same value again: done, nothing claimed or written (the image is byte-identical;
    // a claim would have moved the MMP block's sequence and time).
    let before = std::fs::read(&img).expect("read image");
    let (code, text) = mmp(&["set-interval", "3", &img_s]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("already 3 s; nothing written"), "{text}");
    assert!(
        std::fs::read(&img).expect("read image") == before,
        "set-interval to the current value wrote"
    );

    // Another process holds the device: disable without --force watches, sees its
    // heartbeat and refuses; the file system keeps MMP.
    let mut holder = crate::hold_until_acquired("0x7e57c12", "cli-b", &img);
    let (code, text) = mmp(&["disable", &img_s]);
    assert_eq!(code, Some(1), "disable while held elsewhere: {text}");
    assert!(has_mmp(&img), "MMP still on");
    assert_eq!(mmp_tests::term_and_wait(&mut holder), Some(0));

    let (code, text) = mmp(&["disable", &img_s]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!has_mmp(&img), "MMP off");
    fsck_clean(&img);
    let (code, text) = mmp(&["disable", &img_s]);
    assert_eq!(
        code,
        Some(0),
        "disabling twice is a no-op, as for tune2fs: {text}"
    );
    assert!(text.contains("not enabled"), "{text}");
    assert!(!has_mmp(&img), "still off");
    fsck_clean(&img);
}

/// The proof behind `set-interval` and `disable` is a lease, and a superblock write issued
/// after it would land on a device another node may have taken since (its activity test saw
/// no heartbeat from us while we held the proof without beating). A fault plan pauses the
/// command with the change in hand (`delay.held.write.before_us`, past the lease of an
/// interval of 1 s: a fail window of 11 s, a lease of about half of it after the verify):
/// the command fails saying the proof ran out, the superblock is byte for byte unchanged,
/// and no CLEAN was written for a device this host no longer owns (the block keeps the
/// claim, so a partner waits the full takeover).
fn change_after_the_proof_ran_out(cmd: &[&str]) {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("late.img");
    mkfs(&img, "32M", &["-O", "mmp", "-E", "mmp_update_interval=1"]);
    let before = primary_super(&img);
    let sb = Superblock::parse(&before).expect("superblock");
    let off = sb.mmp_offset_bytes().expect("mmp on");
    let plan = dir.path().join("plan");
    fs::write(&plan, "delay.held.write.before_us = 12000000\n").expect("plan");
    let img_s = img.to_string_lossy().to_string();
    let out = run(crate::mmp_cmd()
        .env("MMP_FAULT_PLAN", &plan)
        .args(["--hostid", "0x7e57c13", "--nodename", "late"])
        .args(cmd)
        .arg(&img_s));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "{cmd:?} after the lease: {text}"
    );
    assert!(
        text.contains("ran out") && text.contains("nothing was written"),
        "{cmd:?}: {text}"
    );
    assert_eq!(primary_super(&img), before, "{cmd:?}: superblock changed");
    let seq = read_seq(&open_rw(&img), off);
    assert_ne!(
        seq, SEQ_CLEAN,
        "{cmd:?}: CLEAN written after the lease: {text}"
    );
    fsck_clean(&img);
}

#[test]
fn tool_tune_set_interval_after_its_proof_ran_out_writes_nothing() {
    change_after_the_proof_ran_out(&["set-interval", "3"]);
}

#[test]
fn tool_tune_disable_after_its_proof_ran_out_writes_nothing() {
    change_after_the_proof_ran_out(&["disable"]);
}
