//! `tool_` tier: the ext4 codec (`mmp_core::format::ext4`) against the real e2fsprogs.
//!
//! For each kind of image (4 KiB and 1 KiB blocks with and without metadata_csum,
//! `metadata_csum_seed` before and after `tune2fs -U`, `mmp_update_interval=1`), mke2fs makes
//! the file system in a temporary directory and then:
//!
//! 1. the superblock parses, and block size, MMP block number, update interval, features,
//!    UUID and checksum seed agree with `dumpe2fs -h`;
//! 2. the MMP block parses (with the checksum seed when metadata_csum is on) and every field
//!    agrees with `debugfs -R dump_mmp`;
//! 3. re-emitting the parsed block gives back exactly the 1024 bytes mke2fs wrote, and
//!    re-signing gives the same checksum;
//! 4. a block we write (seq 0x12345678, node "othernode") is read back by
//!    `e2mmpstatus -i` / `debugfs` with no checksum error;
//! 5. an inverted checksum makes `e2mmpstatus` exit 1 with "checksum does not match" and our
//!    parser return `BadChecksum` (with metadata_csum), or is ignored by both (without).
//!
//! Without mke2fs (looked up on `PATH`, `/sbin`, `/usr/sbin`) each test prints why and returns.

use mmp_core::crc32c::crc32c_raw;
use mmp_core::format::ext4::{
    Block, BlockError, SEQ_CLEAN, STRUCT_LEN, SUPERBLOCK_LEN, SUPERBLOCK_OFFSET, SeqClass,
    Superblock,
};
use mmp_tests::{find_tool, skip};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UUID: &str = "11111111-2222-3333-4444-555555555555";
/// `crc32c_raw(!0, UUID)`: spec/ext4-mmp.md §1.2.
const UUID_SEED: u32 = 0x643D_BF5B;
const NEW_UUID: &str = "99999999-8888-7777-6666-555555555555";

struct Tools {
    mke2fs: PathBuf,
    dumpe2fs: PathBuf,
    debugfs: PathBuf,
    /// `e2mmpstatus`, or `dumpe2fs` with `-m` (the same program under another name).
    mmpstatus: Command,
}

impl Tools {
    /// The tools, or `None` after printing why the test cannot run.
    fn find() -> Option<Self> {
        let Some(mke2fs) = find_tool("mke2fs") else {
            skip("mke2fs not found on PATH, /sbin or /usr/sbin (e2fsprogs not installed)");
            return None;
        };
        let (Some(dumpe2fs), Some(debugfs)) = (find_tool("dumpe2fs"), find_tool("debugfs")) else {
            skip("mke2fs found but dumpe2fs or debugfs missing");
            return None;
        };
        let mmpstatus = match find_tool("e2mmpstatus") {
            Some(p) => Command::new(p),
            None => {
                let mut c = Command::new(&dumpe2fs);
                c.arg("-m");
                c
            }
        };
        Some(Tools {
            mke2fs,
            dumpe2fs,
            debugfs,
            mmpstatus,
        })
    }

    /// `e2mmpstatus ARGS IMG` (or `dumpe2fs -m ARGS IMG`).
    fn mmpstatus(&self, args: &[&str], img: &Path) -> Output {
        let mut c = Command::new(self.mmpstatus.get_program());
        c.args(self.mmpstatus.get_args()).args(args).arg(img);
        output(&mut c)
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`, asserts success, returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `key: value` lines (the first `:` splits; values keep inner spaces, outer ones trimmed).
fn key_values(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn get<'a>(map: &'a HashMap<String, String>, key: &str, what: &str) -> &'a str {
    map.get(key)
        .unwrap_or_else(|| panic!("no {key:?} in {what}: {map:?}"))
}

fn num<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not a number: {e:?}"))
}

fn hex_u32(s: &str) -> u32 {
    let digits = s.strip_prefix("0x").unwrap_or(s);
    u32::from_str_radix(digits, 16).unwrap_or_else(|e| panic!("{s:?} is not hex: {e}"))
}

fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let hex: String = uuid.chars().filter(|&c| c != '-').collect();
    core::array::from_fn(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("uuid hex"))
}

fn read_at(img: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(img).expect("open image");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read image");
    buf
}

fn write_at(img: &Path, offset: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image for writing");
    f.write_all_at(data, offset).expect("write image");
    f.sync_all().expect("sync image");
}

/// One image kind: how to make it and what it must look like.
struct Kind {
    /// Image file name (also what mke2fs records as the device name, via the full path).
    name: &'static str,
    /// `-b` block size, or `None` for mke2fs' default.
    block_size: Option<u32>,
    /// `-O` feature list.
    features: &'static str,
    /// Extra mke2fs arguments.
    extra: &'static [&'static str],
    /// mke2fs size argument.
    size: &'static str,
    /// Whether metadata_csum must be on.
    csum: bool,
    /// Run `tune2fs -U NEW_UUID` after mke2fs (waits ~11 s: tune2fs claims MMP).
    new_uuid: bool,
}

struct Parsed {
    sb: Superblock,
    mmp_offset: u64,
    /// The whole file-system block holding the MMP structure, as on disk.
    raw: Vec<u8>,
    block: Block,
}

fn make_image(t: &Tools, kind: &Kind, dir: &Path) -> Option<PathBuf> {
    let img = dir.join(kind.name);
    let mut cmd = Command::new(&t.mke2fs);
    cmd.args(["-F", "-q", "-t", "ext4", "-O", kind.features, "-U", UUID]);
    if let Some(bs) = kind.block_size {
        cmd.arg("-b").arg(bs.to_string());
    }
    cmd.args(kind.extra).arg(&img).arg(kind.size);
    run_ok(&mut cmd);
    if kind.new_uuid {
        let Some(tune2fs) = find_tool("tune2fs") else {
            skip("tune2fs not found: cannot change the UUID");
            return None;
        };
        run_ok(Command::new(tune2fs).args(["-U", NEW_UUID]).arg(&img));
    }
    Some(img)
}

/// Step 1 and 2: parse superblock and MMP block and compare with dumpe2fs and debugfs.
fn parse_and_compare(t: &Tools, kind: &Kind, img: &Path) -> Parsed {
    let sb_bytes = read_at(img, SUPERBLOCK_OFFSET, SUPERBLOCK_LEN);
    let sb =
        Superblock::parse(&sb_bytes).unwrap_or_else(|e| panic!("{}: superblock: {e}", kind.name));
    assert!(sb.has_mmp(), "{}: INCOMPAT_MMP not set", kind.name);
    assert_eq!(
        sb.metadata_csum(),
        kind.csum,
        "{}: metadata_csum",
        kind.name
    );
    assert_eq!(
        sb.mmp_csum_seed().is_some(),
        kind.csum,
        "{}: MMP checksum seed",
        kind.name
    );

    let dump = key_values(&run_ok(Command::new(&t.dumpe2fs).arg("-h").arg(img)));
    let what = "dumpe2fs -h";
    assert_eq!(
        sb.block_size(),
        num::<u32>(get(&dump, "Block size", what)),
        "{}: block size",
        kind.name
    );
    if let Some(bs) = kind.block_size {
        assert_eq!(sb.block_size(), bs);
    }
    assert_eq!(
        sb.mmp_block,
        num::<u64>(get(&dump, "MMP block number", what)),
        "{}: MMP block",
        kind.name
    );
    assert_eq!(
        sb.mmp_update_interval,
        num::<u16>(get(&dump, "MMP update interval", what)),
        "{}: update interval",
        kind.name
    );
    let features: Vec<&str> = get(&dump, "Filesystem features", what)
        .split_whitespace()
        .collect();
    assert_eq!(
        features.contains(&"metadata_csum"),
        sb.metadata_csum(),
        "{}: {features:?}",
        kind.name
    );
    assert_eq!(
        features.contains(&"mmp"),
        sb.has_mmp(),
        "{}: {features:?}",
        kind.name
    );
    let uuid = get(&dump, "Filesystem UUID", what);
    assert_eq!(sb.uuid, uuid_bytes(uuid), "{}: UUID", kind.name);
    if let Some(seed) = dump.get("Checksum seed") {
        assert_eq!(
            sb.checksum_seed,
            hex_u32(seed),
            "{}: s_checksum_seed",
            kind.name
        );
        assert_eq!(
            sb.csum_seed(),
            Some(hex_u32(seed)),
            "{}: CSUM_SEED feature uses s_checksum_seed",
            kind.name
        );
    } else if sb.metadata_csum() {
        assert_eq!(
            sb.csum_seed(),
            Some(crc32c_raw(!0, &uuid_bytes(uuid))),
            "{}: seed from UUID",
            kind.name
        );
    }

    let mmp_offset = sb
        .mmp_offset_bytes()
        .unwrap_or_else(|e| panic!("{}: {e}", kind.name));
    assert_eq!(mmp_offset, sb.mmp_block * u64::from(sb.block_size()));
    let raw = read_at(
        img,
        mmp_offset,
        usize::try_from(sb.block_size()).expect("block size"),
    );
    let block = Block::parse(&raw, sb.mmp_csum_seed())
        .unwrap_or_else(|e| panic!("{}: MMP block: {e}", kind.name));
    assert_eq!(
        block.seq_class(),
        SeqClass::Clean,
        "{}: e2fsprogs leaves the block CLEAN",
        kind.name
    );
    assert!(
        raw[STRUCT_LEN..].iter().all(|&b| b == 0),
        "{}: block tail after 1024 bytes not zero",
        kind.name
    );

    let dm = key_values(&run_ok(
        Command::new(&t.debugfs).args(["-R", "dump_mmp"]).arg(img),
    ));
    let what = "debugfs dump_mmp";
    assert_eq!(
        num::<u64>(get(&dm, "block_number", what)),
        sb.mmp_block,
        "{}",
        kind.name
    );
    assert_eq!(
        num::<u16>(get(&dm, "update_interval", what)),
        sb.mmp_update_interval,
        "{}",
        kind.name
    );
    assert_eq!(
        num::<u16>(get(&dm, "check_interval", what)),
        block.check_interval,
        "{}",
        kind.name
    );
    assert_eq!(
        hex_u32(get(&dm, "sequence", what)),
        block.seq,
        "{}",
        kind.name
    );
    let time = get(&dm, "time", what)
        .split_whitespace()
        .next()
        .expect("time value");
    assert_eq!(num::<u64>(time), block.time, "{}", kind.name);
    assert_eq!(
        get(&dm, "node_name", what).as_bytes(),
        block.nodename(),
        "{}",
        kind.name
    );
    assert_eq!(
        get(&dm, "device_name", what).as_bytes(),
        block.bdevname(),
        "{}",
        kind.name
    );
    assert_eq!(
        hex_u32(get(&dm, "magic", what)),
        block.magic,
        "{}",
        kind.name
    );
    assert_eq!(
        hex_u32(get(&dm, "checksum", what)),
        block.checksum,
        "{}",
        kind.name
    );
    if !kind.csum {
        assert_eq!(
            block.checksum, 0,
            "{}: no metadata_csum, mke2fs leaves 0",
            kind.name
        );
    }
    Parsed {
        sb,
        mmp_offset,
        raw,
        block,
    }
}

/// Step 3: emit reproduces mke2fs' bytes; re-signing reproduces its checksum.
fn check_round_trip(kind: &Kind, p: &Parsed) {
    let original = &p.raw[..STRUCT_LEN];
    let seed = p.sb.mmp_csum_seed();
    let mut copy = original.to_vec();
    let mut b = p.block;
    b.emit(&mut copy, seed);
    assert_eq!(
        copy, original,
        "{}: emit(parse(block)) differs from what mke2fs wrote",
        kind.name
    );
    let mut poisoned = [0xa5u8; STRUCT_LEN];
    let mut b = p.block;
    b.emit(&mut poisoned, seed);
    assert_eq!(
        &poisoned[..],
        original,
        "{}: emit into a poisoned buffer",
        kind.name
    );

    let mut resigned = p.block;
    resigned.checksum = 0;
    let mut buf = [0u8; STRUCT_LEN];
    resigned.emit(&mut buf, seed);
    if kind.csum {
        assert_eq!(
            resigned.checksum, p.block.checksum,
            "{}: re-signed checksum",
            kind.name
        );
        let seed = seed.expect("seed with metadata_csum");
        assert_eq!(
            crc32c_raw(seed, &original[..0x3FC]),
            p.block.checksum,
            "{}: checksum rule",
            kind.name
        );
    } else {
        assert_eq!(
            resigned.checksum, 0,
            "{}: without a seed the checksum is written as given",
            kind.name
        );
    }
}

/// Step 4: a block we write is what e2fsprogs reads.
fn check_our_write(t: &Tools, kind: &Kind, img: &Path, p: &Parsed) {
    let time = p.block.time + 1;
    let mut ours = Block::new(
        0x1234_5678,
        time,
        b"othernode",
        p.block.bdevname(),
        p.block.check_interval,
    );
    let mut buf = p.raw[..STRUCT_LEN].to_vec();
    ours.emit(&mut buf, p.sb.mmp_csum_seed());
    write_at(img, p.mmp_offset, &buf);

    let out = t.mmpstatus(&["-i"], img);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{}: mmpstatus -i: {}: {stdout}{stderr}",
        kind.name,
        out.status
    );
    assert!(
        !stderr.contains("checksum"),
        "{}: e2fsprogs rejects our block: {stderr}",
        kind.name
    );
    let info = key_values(&stdout);
    let what = "e2mmpstatus -i";
    assert_eq!(
        hex_u32(get(&info, "mmp_sequence", what)),
        0x1234_5678,
        "{}",
        kind.name
    );
    assert_eq!(
        get(&info, "mmp_node_name", what),
        "othernode",
        "{}",
        kind.name
    );
    assert_eq!(
        num::<u64>(get(&info, "mmp_update_time", what)),
        time,
        "{}",
        kind.name
    );
    assert_eq!(
        get(&info, "mmp_device_name", what).as_bytes(),
        p.block.bdevname(),
        "{}",
        kind.name
    );
    assert_eq!(
        num::<u16>(get(&info, "mmp_check_interval", what)),
        p.block.check_interval,
        "{}",
        kind.name
    );
    assert_eq!(
        hex_u32(get(&info, "mmp_magic", what)),
        p.block.magic,
        "{}",
        kind.name
    );

    let dm = key_values(&run_ok(
        Command::new(&t.debugfs).args(["-R", "dump_mmp"]).arg(img),
    ));
    assert_eq!(
        hex_u32(get(&dm, "sequence", "debugfs dump_mmp")),
        0x1234_5678,
        "{}",
        kind.name
    );
    assert_eq!(
        hex_u32(get(&dm, "checksum", "debugfs dump_mmp")),
        ours.checksum,
        "{}",
        kind.name
    );
}

/// Step 5: an inverted checksum. With metadata_csum both e2fsprogs and our parser reject it;
/// without, both ignore it. The block is CLEAN so `e2mmpstatus` does not wait.
fn check_bad_checksum(t: &Tools, kind: &Kind, img: &Path, p: &Parsed) {
    let seed = p.sb.mmp_csum_seed();
    let mut clean = p.block;
    clean.seq = SEQ_CLEAN;
    let mut buf = p.raw[..STRUCT_LEN].to_vec();
    clean.emit(&mut buf, seed);
    let good = clean.checksum;
    let bad = !good;
    buf[0x3FC..0x400].copy_from_slice(&bad.to_le_bytes());
    write_at(img, p.mmp_offset, &buf);

    let out = t.mmpstatus(&[], img);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reread = read_at(img, p.mmp_offset, STRUCT_LEN);
    if kind.csum {
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: e2mmpstatus on a bad checksum: {stdout}{stderr}",
            kind.name
        );
        assert!(
            stderr.contains("checksum does not match"),
            "{}: {stderr}",
            kind.name
        );
        let seed = seed.expect("seed");
        assert_eq!(
            Block::parse(&reread, Some(seed)),
            Err(BlockError::BadChecksum {
                stored: bad,
                computed: crc32c_raw(seed, &reread[..0x3FC])
            }),
            "{}",
            kind.name
        );
    } else {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: checksum must be ignored: {stdout}{stderr}",
            kind.name
        );
        assert!(stdout.contains("MMP is clean"), "{}: {stdout}", kind.name);
        let parsed = Block::parse(&reread, None).unwrap_or_else(|e| panic!("{}: {e}", kind.name));
        assert_eq!(parsed.checksum, bad);
    }
}

fn check_kind(kind: &Kind) -> Option<Parsed> {
    let t = Tools::find()?;
    let dir = tempfile::tempdir().expect("temp dir");
    let img = make_image(&t, kind, dir.path())?;
    let parsed = parse_and_compare(&t, kind, &img);
    check_round_trip(kind, &parsed);
    check_our_write(&t, kind, &img, &parsed);
    check_bad_checksum(&t, kind, &img, &parsed);
    Some(parsed)
}

#[test]
fn tool_ext4_codec_4k_csum() {
    check_kind(&Kind {
        name: "a4k_csum.img",
        block_size: Some(4096),
        features: "mmp,metadata_csum",
        extra: &[],
        size: "64M",
        csum: true,
        new_uuid: false,
    });
}

#[test]
fn tool_ext4_codec_4k_nocsum() {
    check_kind(&Kind {
        name: "a4k_nocsum.img",
        block_size: Some(4096),
        features: "mmp,^metadata_csum",
        extra: &[],
        size: "64M",
        csum: false,
        new_uuid: false,
    });
}

#[test]
fn tool_ext4_codec_1k_csum() {
    check_kind(&Kind {
        name: "a1k_csum.img",
        block_size: Some(1024),
        features: "mmp,metadata_csum",
        extra: &[],
        size: "64M",
        csum: true,
        new_uuid: false,
    });
}

#[test]
fn tool_ext4_codec_1k_nocsum() {
    check_kind(&Kind {
        name: "a1k_nocsum.img",
        block_size: Some(1024),
        features: "mmp,^metadata_csum",
        extra: &[],
        size: "64M",
        csum: false,
        new_uuid: false,
    });
}

#[test]
fn tool_ext4_codec_csum_seed() {
    let Some(p) = check_kind(&Kind {
        name: "seed.img",
        block_size: None,
        features: "mmp,metadata_csum,metadata_csum_seed",
        extra: &[],
        size: "16M",
        csum: true,
        new_uuid: false,
    }) else {
        return;
    };
    assert_ne!(
        p.sb.feature_incompat & mmp_core::format::ext4::INCOMPAT_CSUM_SEED,
        0
    );
    assert_eq!(p.sb.mmp_csum_seed(), Some(UUID_SEED));
}

/// The name is longer than 32 bytes with the temp dir, so e2fsprogs stores the device path
/// truncated, without a NUL: covers names that fill their field.
#[test]
fn tool_ext4_codec_csum_seed_after_tune2fs_new_uuid() {
    let Some(p) = check_kind(&Kind {
        name: "seed_then_tune2fs_new_uuid.img",
        block_size: None,
        features: "mmp,metadata_csum,metadata_csum_seed",
        extra: &[],
        size: "16M",
        csum: true,
        new_uuid: true,
    }) else {
        return;
    };
    assert_eq!(p.sb.uuid, uuid_bytes(NEW_UUID));
    // The seed stays that of the UUID the file system was made with.
    assert_eq!(p.sb.mmp_csum_seed(), Some(UUID_SEED));
    assert_ne!(crc32c_raw(!0, &uuid_bytes(NEW_UUID)), UUID_SEED);
    assert_eq!(
        p.block.bdevname().len(),
        32,
        "a path of 32+ bytes fills bdevname without a NUL"
    );
}

#[test]
fn tool_ext4_codec_update_interval_1() {
    let Some(p) = check_kind(&Kind {
        name: "interval1.img",
        block_size: None,
        features: "mmp,metadata_csum",
        extra: &["-E", "mmp_update_interval=1"],
        size: "16M",
        csum: true,
        new_uuid: false,
    }) else {
        return;
    };
    assert_eq!(p.sb.mmp_update_interval, 1);
    assert_eq!(p.sb.update_interval_s(), 1);
    assert_eq!(p.block.check_interval, 5, "mke2fs writes max(interval, 5)");
}
