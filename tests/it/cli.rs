//! The `mmp` binary, black box, on file-backed devices (issue 3, "Proven against the real
//! peers", plain tier; the kernel and loop-device parts are in `loop_cli`).
//!
//! * `status --json` agrees field by field with `e2mmpstatus -i` on images made by mke2fs
//!   (1 KiB and 4 KiB blocks, with and without metadata_csum) and on rewritten blocks
//!   (live, seq 0, FSCK, unknown sequence, names that fill their fields with no NUL).
//! * A holder killed with SIGKILL leaves a stale block: `check` says safe after the window,
//!   another host needs `--force`, the same host does not, and both run the activity test
//!   (native format with a 100 ms interval, and ext4 with interval 1).
//! * Corrupt and wrong inputs give the documented exit code and a one-line `mmp: ` reason,
//!   never a panic, and leave the image byte for byte unchanged, for status, check and hold.
//! * The native flows (format, status, hold, refusal, release, handover, takeover) with
//!   measured handover and takeover times (printed as `TIMING ...` lines).
//! * Several devices in one hold: all or nothing (nothing written when one is refused), and
//!   one activity window for all.
//! * Names from the device are escaped in text, JSON, dump and refusals.
//! * Help texts show examples, `demo`, `hostid`, `format`, `clear`, `dump`, `run`.
//!
//! Every command runs with an explicit identity (`--hostid`, `--nodename`, no
//! `MMP_HOSTID`) and under a time limit: a command that overruns is killed and the test
//! fails. Without the e2fsprogs tools the e2fsprogs comparisons print `SKIP: <reason>`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mmp_bin;
use mmp_core::format::ext4::{
    Block, RO_COMPAT_METADATA_CSUM, SEQ_CLEAN, SEQ_FSCK, Superblock, sb_field, superblock_checksum,
};
use mmp_core::format::native;
use mmp_tests::{find_tool, skip};

// ----- running commands under a time limit ---------------------------------------------

/// What a finished command left behind.
#[derive(Debug)]
pub(crate) struct Out {
    /// Exit code; `None` when killed by a signal.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

impl Out {
    /// A one-line description for assertion messages.
    pub(crate) fn show(&self) -> String {
        format!(
            "exit {:?} after {:.3} s\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// Asserts the exit code and that nothing panicked.
    pub(crate) fn expect(&self, code: i32, what: &str) -> &Self {
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: panic\n{}",
            self.show()
        );
        assert_eq!(
            self.code,
            Some(code),
            "{what}: wrong exit code\n{}",
            self.show()
        );
        self
    }
}

/// `mmp ARGS` with a clean, explicit environment ([`mmp_tests::mmp_cmd`]).
pub(crate) fn mmp(args: &[&str]) -> Command {
    let mut c = crate::mmp_cmd();
    c.args(args);
    c
}

/// An external tool (`/sbin` and `/usr/sbin` searched too).
pub(crate) fn tool(name: &str) -> Command {
    Command::new(find_tool(name).unwrap_or_else(|| PathBuf::from(name)))
}

fn collect(r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = BufReader::new(r).read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Runs `cmd` to the end; kills it and fails the test if it takes longer than `limit`.
pub(crate) fn run(mut cmd: Command, limit: Duration) -> Out {
    let desc = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let so = collect(child.stdout.take().expect("stdout"));
    let se = collect(child.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let out = Out {
        code: status.and_then(|s| s.code()),
        stdout: so.join().unwrap_or_default(),
        stderr: se.join().unwrap_or_default(),
        elapsed,
    };
    assert!(
        status.is_some(),
        "{desc} did not finish within {limit:?}; killed\n{}",
        out.show()
    );
    out
}

/// Runs `mmp ARGS` to the end within `secs` seconds.
pub(crate) fn mmp_run(args: &[&str], secs: u64) -> Out {
    run(mmp(args), Duration::from_secs(secs))
}

/// A long-running child (`mmp hold`), its stdout seen line by line. Killed on drop.
pub(crate) struct Proc {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    pub(crate) started: Instant,
    desc: String,
}

impl Proc {
    pub(crate) fn spawn(mut cmd: Command) -> Proc {
        let desc = format!("{cmd:?}");
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (o, so) = (Arc::clone(&stdout), child.stdout.take().expect("stdout"));
        std::thread::spawn(move || {
            for line in BufReader::new(so).lines().map_while(Result::ok) {
                o.lock().expect("lock").push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let (e, se) = (Arc::clone(&stderr), child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            let mut r = BufReader::new(se);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => e
                        .lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buf)),
                }
            }
        });
        Proc {
            child,
            lines,
            stdout,
            stderr,
            started,
            desc,
        }
    }

    fn text(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.desc,
            self.stdout.lock().expect("lock"),
            self.stderr.lock().expect("lock")
        )
    }

    /// Waits for a stdout line starting with `prefix`; returns the time since spawn. Fails
    /// the test if the child exits first or `limit` passes.
    pub(crate) fn wait_line(&mut self, prefix: &str, limit: Duration) -> Duration {
        self.wait_lines(&[prefix], limit)[0]
    }

    /// Waits for one stdout line starting with each prefix, in any order; returns the times
    /// since spawn, in the order of `prefixes`.
    pub(crate) fn wait_lines(&mut self, prefixes: &[&str], limit: Duration) -> Vec<Duration> {
        let deadline = Instant::now() + limit;
        let mut seen: Vec<Option<Duration>> = vec![None; prefixes.len()];
        loop {
            if seen.iter().all(Option::is_some) {
                return seen.into_iter().flatten().collect();
            }
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => {
                    if let Some(k) = (0..prefixes.len())
                        .find(|&k| seen[k].is_none() && l.starts_with(prefixes[k]))
                    {
                        seen[k] = Some(self.started.elapsed());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    panic!(
                        "no {prefixes:?} lines before stdout closed: {}",
                        self.text()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!("no {prefixes:?} lines within {limit:?}: {}", self.text());
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
            .expect("pid");
        rustix::process::kill_process(pid, sig).expect("kill");
    }

    /// Waits for the exit (killing the child after `limit`, which fails the test).
    pub(crate) fn wait(mut self, limit: Duration) -> Out {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Give the reader threads a moment to drain the pipes.
        let t = Instant::now();
        while self.lines.try_recv().is_ok() || t.elapsed() < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = Out {
            code: status.and_then(|s| s.code()),
            stdout: self.stdout.lock().expect("lock").clone(),
            stderr: self.stderr.lock().expect("lock").clone(),
            elapsed: self.started.elapsed(),
        };
        assert!(
            status.is_some(),
            "{} did not exit within {limit:?}: {}",
            self.desc,
            out.show()
        );
        out
    }

    /// SIGTERM, then the exit within `limit`.
    pub(crate) fn term(self, limit: Duration) -> Out {
        self.signal(rustix::process::Signal::TERM);
        self.wait(limit)
    }

    /// SIGKILL (a crash: nothing is released).
    pub(crate) fn kill9(mut self) {
        self.signal(rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `mmp hold` as host (hostid, node) on `devs`, plus extra flags.
pub(crate) fn hold(hostid: &str, node: &str, extra: &[&str], dev: &Path) -> Proc {
    let mut c = mmp(&["hold", "--hostid", hostid, "--nodename", node]);
    c.args(extra).arg(dev);
    Proc::spawn(c)
}

/// Whether a stderr line is wait progress (the start of a wait, or time left).
pub(crate) fn is_progress(line: &str) -> bool {
    line.contains(": watching for activity for ")
        || line.contains(": claimed; verifying nobody else claims for ")
        || line.ends_with(" s left")
}

/// Asserts a refusal or error: the exit code, no panic, every stderr line starting with
/// `mmp: `, and exactly one line besides wait progress, containing `needle`
/// (case-insensitive).
pub(crate) fn assert_reason(out: &Out, code: i32, needle: &str, what: &str) {
    out.expect(code, what);
    let all: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        all.iter().all(|l| l.starts_with("mmp: ")),
        "{what}: stderr lines must start with `mmp: `\n{}",
        out.show()
    );
    let lines: Vec<&str> = all.into_iter().filter(|l| !is_progress(l)).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected a one-line reason on stderr\n{}",
        out.show()
    );
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "{what}: reason must name the problem ({needle:?})\n{}",
        out.show()
    );
}

// ----- images and blocks ------------------------------------------------------------------

/// Whether the e2fsprogs tools these tests compare with exist; prints SKIP otherwise.
pub(crate) fn have_e2fsprogs() -> bool {
    for t in ["mke2fs", "e2mmpstatus", "dumpe2fs", "e2fsck"] {
        if find_tool(t).is_none() {
            skip(&format!("{t} not found"));
            return false;
        }
    }
    true
}

/// `mke2fs -F -q -t ext4 -O mmp -E mmp_update_interval=1 ARGS PATH SIZE`, run in the file's
/// directory with its bare name (so the block's device name is that name).
pub(crate) fn mkfs_mmp(path: &Path, size: &str, args: &[&str]) {
    let mut c = tool("mke2fs");
    c.args([
        "-F",
        "-q",
        "-t",
        "ext4",
        "-O",
        "mmp",
        "-E",
        "mmp_update_interval=1",
    ]);
    c.args(args)
        .arg(path.file_name().expect("file name"))
        .arg(size);
    c.current_dir(path.parent().expect("dir"));
    run(c, Duration::from_secs(60)).expect(0, "mke2fs");
}

/// The primary superblock's bytes and its parse.
pub(crate) fn superblock(img: &Path) -> (Vec<u8>, Superblock) {
    let f = fs::File::open(img).expect("open image");
    let mut sb = vec![0u8; 1024];
    f.read_exact_at(&mut sb, 1024).expect("read superblock");
    let parsed = Superblock::parse(&sb).expect("superblock parses");
    (sb, parsed)
}

/// Byte offset of the MMP block (no range check).
pub(crate) fn mmp_offset(sb: &Superblock) -> u64 {
    sb.mmp_block * u64::from(sb.block_size())
}

pub(crate) fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(path).expect("open");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, off).expect("read");
    b
}

pub(crate) fn write_at(path: &Path, off: u64, data: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open rw");
    f.write_all_at(data, off).expect("write");
    f.sync_all().expect("fsync");
}

/// The image's MMP block, parsed (checksum verified with metadata_csum).
pub(crate) fn mmp_block(img: &Path) -> Block {
    let (_, sb) = superblock(img);
    Block::parse(&read_at(img, mmp_offset(&sb), 1024), sb.mmp_csum_seed())
        .expect("MMP block parses")
}

/// Rewrites MMP block fields (the `mmpset.py` idea): `f` edits the parsed block, which is
/// then re-signed with the image's seed; `bad_csum` stores an inverted checksum.
pub(crate) fn edit_mmp(img: &Path, f: impl FnOnce(&mut Block), bad_csum: bool) {
    let (_, sb) = superblock(img);
    let off = mmp_offset(&sb);
    let mut buf = read_at(img, off, 1024);
    let mut b = Block::parse(&buf, None).expect("MMP block magic");
    f(&mut b);
    b.emit(&mut buf, sb.mmp_csum_seed());
    if bad_csum {
        let c = !u32::from_le_bytes(buf[0x3FC..0x400].try_into().expect("4"));
        buf[0x3FC..0x400].copy_from_slice(&c.to_le_bytes());
    }
    write_at(img, off, &buf);
}

/// Rewrites primary superblock bytes and re-signs it (metadata_csum).
pub(crate) fn edit_sb(img: &Path, f: impl FnOnce(&mut [u8])) {
    let mut sb = read_at(img, 1024, 1024);
    f(&mut sb);
    let ro = u32::from_le_bytes(sb[sb_field::FEATURE_RO_COMPAT].try_into().expect("4"));
    if ro & RO_COMPAT_METADATA_CSUM != 0 {
        let c = superblock_checksum(&sb);
        sb[sb_field::CHECKSUM].copy_from_slice(&c.to_le_bytes());
    }
    write_at(img, 1024, &sb);
}

/// The native record at the start of a device.
pub(crate) fn native_record(dev: &Path) -> native::Record {
    native::Record::parse(&read_at(dev, 0, 512)).expect("native record parses")
}

/// A cheap content hash (FNV-1a 64), with the length.
pub(crate) fn hash_file(p: &Path) -> (u64, u64) {
    let data = fs::read(p).expect("read for hash");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h, data.len() as u64)
}

fn hash_path(p: &Path) -> Option<(u64, u64)> {
    if p.is_file() {
        Some(hash_file(p))
    } else {
        None
    }
}

// ----- parsing outputs ----------------------------------------------------------------------

/// A JSON value of a flat object: strings are unescaped, everything else is kept as text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum J {
    S(String),
    N(String),
}

impl J {
    pub(crate) fn s(&self) -> &str {
        match self {
            J::S(s) => s,
            J::N(n) => panic!("expected a JSON string, got {n}"),
        }
    }
    pub(crate) fn u(&self) -> u64 {
        match self {
            J::N(n) => n.parse().unwrap_or_else(|_| panic!("not an integer: {n}")),
            J::S(s) => panic!("expected a JSON number, got string {s:?}"),
        }
    }
}

/// Parses one flat JSON object (`{"k":"v","n":1,...}`) as `mmp --json` prints it.
pub(crate) fn json(line: &str) -> BTreeMap<String, J> {
    let c: Vec<char> = line.trim().chars().collect();
    let mut i = 0;
    let mut m = BTreeMap::new();
    let bad = |i: usize| -> ! { panic!("bad JSON at {i}: {line}") };
    let string = |i: &mut usize| -> String {
        if c.get(*i) != Some(&'"') {
            bad(*i)
        }
        *i += 1;
        let mut s = String::new();
        loop {
            match c.get(*i) {
                Some('"') => {
                    *i += 1;
                    return s;
                }
                Some('\\') => {
                    *i += 1;
                    match c.get(*i) {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some('r') => s.push('\r'),
                        Some('u') => {
                            let hex: String = c[*i + 1..*i + 5].iter().collect();
                            s.push(
                                char::from_u32(
                                    u32::from_str_radix(&hex, 16).unwrap_or_else(|_| bad(*i)),
                                )
                                .unwrap_or('?'),
                            );
                            *i += 4;
                        }
                        Some(&x) => s.push(x),
                        None => bad(*i),
                    }
                    *i += 1;
                }
                Some(&x) => {
                    s.push(x);
                    *i += 1;
                }
                None => bad(*i),
            }
        }
    };
    if c.first() != Some(&'{') {
        bad(0)
    }
    i += 1;
    while c.get(i) != Some(&'}') {
        let k = string(&mut i);
        if c.get(i) != Some(&':') {
            bad(i)
        }
        i += 1;
        let v = if c.get(i) == Some(&'"') {
            J::S(string(&mut i))
        } else {
            let st = i;
            while c.get(i).is_some_and(|&x| x != ',' && x != '}') {
                i += 1;
            }
            J::N(c[st..i].iter().collect())
        };
        m.insert(k, v);
        if c.get(i) == Some(&',') {
            i += 1;
        }
        if i >= c.len() {
            bad(i)
        }
    }
    assert_eq!(
        i + 1,
        c.len(),
        "trailing bytes after the JSON object: {line}"
    );
    m
}

/// `e2mmpstatus -i DEV` as a map of `key: value` lines (exit 0 required).
pub(crate) fn e2mmpstatus_i(dev: &Path) -> BTreeMap<String, String> {
    let mut c = tool("e2mmpstatus");
    c.arg("-i").arg(dev);
    let out = run(c, Duration::from_secs(20));
    out.expect(0, "e2mmpstatus -i");
    assert!(
        out.stderr.trim().is_empty(),
        "e2mmpstatus -i complained\n{}",
        out.show()
    );
    out.stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `MMP update interval` from `dumpe2fs -h`.
pub(crate) fn dumpe2fs_update_interval(dev: &Path) -> u64 {
    let mut c = tool("dumpe2fs");
    c.arg("-h").arg(dev);
    let out = run(c, Duration::from_secs(20));
    out.expect(0, "dumpe2fs -h");
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("MMP update interval:"))
        .unwrap_or_else(|| panic!("no MMP update interval line\n{}", out.show()))
        .trim()
        .parse()
        .expect("interval")
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("not hex: {s}"))
}

/// Compares one `mmp status --json` object with `e2mmpstatus -i` field by field.
pub(crate) fn assert_agree(what: &str, j: &BTreeMap<String, J>, e: &BTreeMap<String, String>) {
    let ctx = format!("{what}: mmp {j:?}\ne2mmpstatus {e:?}");
    assert_eq!(j["format"].s(), "ext4", "{ctx}");
    assert_eq!(
        j["seq"].s().parse::<u64>().expect("seq: a decimal string"),
        hex(&e["mmp_sequence"]),
        "seq vs mmp_sequence\n{ctx}"
    );
    assert_eq!(j["node"].s(), e["mmp_node_name"], "node\n{ctx}");
    assert_eq!(
        j["device_name"].s(),
        e["mmp_device_name"],
        "device name\n{ctx}"
    );
    assert_eq!(
        j["time"].u().to_string(),
        e["mmp_update_time"],
        "time\n{ctx}"
    );
    assert_eq!(
        j["check_interval_s"].u().to_string(),
        e["mmp_check_interval"],
        "check interval\n{ctx}"
    );
    assert_eq!(
        j["mmp_block"].u().to_string(),
        e["mmp_block_number"],
        "MMP block number\n{ctx}"
    );
    assert_eq!(hex(&e["mmp_magic"]), 0x004D_4D50, "{ctx}");
}

/// The state a sequence should show.
fn state_of(seq: u32) -> &'static str {
    match seq {
        SEQ_CLEAN => "clean",
        SEQ_FSCK => "fsck",
        s if s <= mmp_core::format::ext4::SEQ_MAX => "active",
        _ => "unknown",
    }
}

pub(crate) fn tmpdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mmpcli")
        .tempdir()
        .expect("tempdir")
}

pub(crate) const A: &str = "0x0000000a";
pub(crate) const B: &str = "0x0000000b";
pub(crate) const T_SHORT: u64 = 15;

// ----- 1. e2mmpstatus agreement ----------------------------------------------------------------

#[test]
fn status_json_agrees_with_e2mmpstatus() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    // (file name, mke2fs args): a name of 32 bytes or more is stored with no NUL.
    let kinds: [(&str, &[&str]); 4] = [
        ("a1k_csum.img", &["-b", "1024"]),
        ("a1k_nocsum.img", &["-b", "1024", "-O", "^metadata_csum"]),
        ("a4k_csum.img", &["-b", "4096"]),
        (
            "a4k_nocsum_with_a_rather_long_file_name.img",
            &["-b", "4096", "-O", "^metadata_csum"],
        ),
    ];
    let mut imgs = Vec::new();
    for (name, args) in kinds {
        let img = dir.path().join(name);
        mkfs_mmp(&img, "16M", args);
        imgs.push(img);
    }
    for img in &imgs {
        let (_, sb) = superblock(img);
        let csum = sb.metadata_csum();
        let what = format!("{} (block {}, csum {csum})", img.display(), sb.block_size());
        // As mke2fs left it: CLEAN.
        let out = mmp_run(&["status", "--json", img.to_str().expect("utf8")], T_SHORT);
        out.expect(0, &what);
        let j = json(out.stdout.lines().next().expect("one line"));
        assert_eq!(
            out.stdout.lines().count(),
            1,
            "{what}: one object per device\n{}",
            out.show()
        );
        assert_eq!(j["state"].s(), "clean", "{what}");
        assert_eq!(j["device"].s(), img.to_str().expect("utf8"), "{what}");
        assert_eq!(
            j["update_interval_s"].u(),
            dumpe2fs_update_interval(img),
            "{what}: update interval"
        );
        assert_eq!(j["update_interval_s"].u(), 1, "{what}");
        assert_agree(&what, &j, &e2mmpstatus_i(img));

        // Rewritten blocks (re-signed with the image's seed): live, 0, FSCK, unknown, and
        // names that fill their fields.
        let long_node = "n".repeat(60) + "-end"; // 64 bytes, no NUL
        let long_dev = "/dev/disk/by-id/wwn-0x5000c500ab"; // 32 bytes, no NUL
        for (seq, node, dev, ci) in [
            (0x1234_5678u32, "othernode", "loop7", 7u16),
            (0, "zero-seq-node", "sdb1", 5),
            (SEQ_FSCK, "fsck-node", "/dev/sdc", 5),
            (0xF000_0000, "weird", "dm-3", 9),
            (0xE24D_4D4F, long_node.as_str(), long_dev, 300),
        ] {
            let before = mmp_block(img);
            edit_mmp(
                img,
                |b| {
                    let mut n = Block::new(
                        seq,
                        1_795_257_665 + u64::from(seq % 1000),
                        node.as_bytes(),
                        dev.as_bytes(),
                        ci,
                    );
                    n.checksum = b.checksum;
                    *b = n;
                },
                false,
            );
            let after = mmp_block(img);
            assert_ne!(before, after, "{what}: the rewrite changed the block");
            let w = format!("{what} seq {seq:#x}");
            let out = mmp_run(&["status", "--json", img.to_str().expect("utf8")], T_SHORT);
            out.expect(if seq == SEQ_CLEAN { 0 } else { 1 }, &w);
            let j = json(out.stdout.trim());
            assert_eq!(j["state"].s(), state_of(seq), "{w}");
            assert_eq!(
                j["seq"].s().parse::<u64>().expect("seq: a decimal string"),
                u64::from(seq),
                "{w}"
            );
            assert_eq!(j["node"].s(), node, "{w}");
            assert_eq!(j["device_name"].s(), dev, "{w}");
            assert_agree(&w, &j, &e2mmpstatus_i(img));
        }
    }
    // Several devices in one call: one line each, in order; exit 1 (all end non-clean).
    let mut c = mmp(&["status", "--json"]);
    c.args(&imgs);
    let out = run(c, Duration::from_secs(T_SHORT));
    out.expect(1, "status of four images");
    let lines: Vec<_> = out.stdout.lines().collect();
    assert_eq!(lines.len(), imgs.len(), "{}", out.show());
    for (l, img) in lines.iter().zip(&imgs) {
        let j = json(l);
        assert_eq!(j["device"].s(), img.to_str().expect("utf8"));
        assert_eq!(j["state"].s(), "active");
    }
}

// ----- 4. SIGKILL leaves a stale block ---------------------------------------------------------

/// Native, 100 ms: a killed holder's block is stale; check is safe after the window; another
/// hostid needs --force, the same hostid does not; both wait out the activity test.
#[test]
fn native_killed_holder_is_stale() {
    let dir = tmpdir();
    let img = dir.path().join("native.img");
    fs::write(&img, vec![0u8; 1 << 20]).expect("create");
    mmp_run(
        &[
            "format",
            "--interval-ms",
            "100",
            img.to_str().expect("utf8"),
        ],
        T_SHORT,
    )
    .expect(0, "format");
    let mut h = hold(A, "hostA", &[], &img);
    h.wait_line("acquired ", Duration::from_secs(T_SHORT));
    std::thread::sleep(Duration::from_millis(300));
    h.kill9();
    let rec = native_record(&img);
    assert_eq!(
        rec.state,
        native::State::Active,
        "SIGKILL leaves the block active"
    );
    assert_eq!(rec.hostid, 0xa);
    // The window: 2 x fail window (10 x 100 ms) + the advertised delay.
    let window =
        Duration::from_millis(2 * u64::from(rec.fail_intervals) * u64::from(rec.interval_ms))
            + Duration::from_micros(u64::from(rec.delay_us));
    let copies: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("stale{i}.img"));
            fs::copy(&img, &p).expect("copy");
            p
        })
        .collect();
    let stale = hash_file(&img);

    // status: not clean (1), names the holder.
    let out = mmp_run(
        &[
            "status",
            "--hostid",
            B,
            "--nodename",
            "hostB",
            img.to_str().expect("utf8"),
        ],
        T_SHORT,
    );
    out.expect(1, "status of a stale native block");
    assert!(
        out.stdout.contains("hostid 0x0000000a") && out.stdout.contains("hostA"),
        "{}",
        out.show()
    );

    // check: safe after the window, never writes.
    let out = mmp_run(
        &[
            "check",
            "--hostid",
            B,
            "--nodename",
            "hostB",
            img.to_str().expect("utf8"),
        ],
        T_SHORT,
    );
    out.expect(0, "check of a stale native block");
    assert!(
        out.stdout.contains("safe to take") && out.stdout.contains("silent"),
        "{}",
        out.show()
    );
    assert!(
        out.elapsed >= window,
        "check returned before the window {window:?}\n{}",
        out.show()
    );
    assert_eq!(hash_file(&img), stale, "check wrote to the device");

    // Another host (same node name, different hostid) without --force: refused at once.
    let mut c = mmp(&["hold", "--hostid", B, "--nodename", "hostA"]);
    c.arg(&img);
    let out = run(c, Duration::from_secs(T_SHORT));
    assert_reason(
        &out,
        1,
        "last held by another host",
        "native foreign without --force",
    );
    assert!(
        out.stderr.contains("0x0000000a"),
        "names the other hostid\n{}",
        out.show()
    );
    assert!(
        out.elapsed < window,
        "refusal should be immediate\n{}",
        out.show()
    );
    assert_eq!(hash_file(&img), stale, "a refused hold wrote to the device");

    // Another host with --force: acquires after the activity test.
    let mut hb = hold(B, "hostA", &["--force"], &copies[0]);
    let took = hb.wait_line("acquired ", Duration::from_secs(T_SHORT));
    assert!(
        took >= window,
        "--force acquired in {took:?}, before the window {window:?}"
    );
    let r = native_record(&copies[0]);
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (native::State::Active, 0xb, native::Reason::TakenOver)
    );
    hb.term(Duration::from_secs(T_SHORT))
        .expect(0, "release after forced takeover");
    let r = native_record(&copies[0]);
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (native::State::Clean, 0xb, native::Reason::Released)
    );

    // The same host without --force: acquires, also after the activity test.
    let mut ha = hold(A, "hostA", &[], &copies[1]);
    let took = ha.wait_line("acquired ", Duration::from_secs(T_SHORT));
    assert!(
        took >= window,
        "same host acquired in {took:?}, before the window {window:?}"
    );
    ha.term(Duration::from_secs(T_SHORT)).expect(0, "release");
    assert_eq!(native_record(&copies[1]).state, native::State::Clean);

    // format refuses a native area that is not clean; clear needs --force; both write nothing.
    let p = copies[2].to_str().expect("utf8");
    let out = mmp_run(&["format", "--interval-ms", "100", p], T_SHORT);
    assert_reason(
        &out,
        1,
        "refusing without --force",
        "format over a stale native area",
    );
    assert_eq!(hash_file(&copies[2]), stale, "format wrote without --force");
    let out = mmp_run(&["clear", "--hostid", B, p], T_SHORT);
    assert_reason(&out, 2, "--force", "clear without --force");
    assert_eq!(hash_file(&copies[2]), stale, "clear wrote without --force");
    let out = mmp_run(
        &["clear", "--force", "--hostid", B, "--nodename", "hostB", p],
        T_SHORT,
    );
    out.expect(0, "clear --force");
    let r = native_record(&copies[2]);
    assert_eq!(
        (r.state, r.reason),
        (native::State::Clean, native::Reason::Cleared)
    );
}

/// ext4, interval 1: the same, with the node name as the identity; the window is 11 s.
#[test]
fn ext4_killed_holder_is_stale() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("k.img");
    mkfs_mmp(&img, "16M", &["-b", "1024"]);
    let mut h = hold(A, "hostA", &[], &img);
    h.wait_line("acquired ", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1200));
    h.kill9();
    let b = mmp_block(&img);
    assert_eq!(state_of(b.seq), "active", "SIGKILL leaves a live sequence");
    assert_eq!(b.nodename(), b"hostA");
    let window = Duration::from_secs(11); // min(2*5+1, 5+60), ci = max(1, 5, 5)
    let stale = hash_file(&img);
    let copies: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("stale{i}.img"));
            fs::copy(&img, &p).expect("copy");
            p
        })
        .collect();

    // e2mmpstatus agrees with our status on the block our holder left.
    let out = mmp_run(&["status", "--json", img.to_str().expect("utf8")], T_SHORT);
    out.expect(1, "status of a stale ext4 block");
    assert_agree("stale ext4", &json(out.stdout.trim()), &e2mmpstatus_i(&img));

    std::thread::scope(|s| {
        // check: safe after the window.
        s.spawn(|| {
            let out = mmp_run(
                &[
                    "check",
                    "--hostid",
                    B,
                    "--nodename",
                    "hostB",
                    img.to_str().expect("utf8"),
                ],
                40,
            );
            out.expect(0, "check of a stale ext4 block");
            assert!(
                out.stdout.contains("safe to take") && out.stdout.contains("hostA"),
                "{}",
                out.show()
            );
            assert!(
                out.elapsed >= window,
                "check returned before the window\n{}",
                out.show()
            );
            assert_eq!(hash_file(&img), stale, "check wrote to the device");
        });
        // Another node: refused without --force, then acquires with it after watch + claim.
        s.spawn(|| {
            let mut c = mmp(&["hold", "--hostid", A, "--nodename", "hostB"]);
            c.arg(&copies[0]);
            let out = run(c, Duration::from_secs(T_SHORT));
            assert_reason(
                &out,
                1,
                "last held by another host",
                "ext4 foreign without --force",
            );
            assert!(
                out.stderr.contains("'hostA'"),
                "names the other node\n{}",
                out.show()
            );
            assert_eq!(
                hash_file(&copies[0]),
                stale,
                "a refused hold wrote to the device"
            );
            let mut hb = hold(A, "hostB", &["--force"], &copies[0]);
            let took = hb.wait_line("acquired ", Duration::from_secs(45));
            eprintln!(
                "TIMING ext4 interval 1 (file): crash takeover with --force {:.3} s",
                took.as_secs_f64()
            );
            assert!(
                took >= window * 2,
                "--force acquired in {took:?}, before watch + claim (22 s)"
            );
            assert_eq!(mmp_block(&copies[0]).nodename(), b"hostB");
            hb.term(Duration::from_secs(T_SHORT)).expect(0, "release");
            let b = mmp_block(&copies[0]);
            assert_eq!((b.seq, b.nodename()), (SEQ_CLEAN, &b"hostB"[..]));
        });
        // The same node without --force: acquires after watch + claim.
        s.spawn(|| {
            let mut ha = hold(A, "hostA", &[], &copies[1]);
            let took = ha.wait_line("acquired ", Duration::from_secs(45));
            assert!(
                took >= window * 2,
                "same node acquired in {took:?}, before watch + claim (22 s)"
            );
            ha.term(Duration::from_secs(T_SHORT)).expect(0, "release");
            assert_eq!(mmp_block(&copies[1]).seq, SEQ_CLEAN);
            let mut c = tool("e2mmpstatus");
            c.arg(&copies[1]);
            run(c, Duration::from_secs(T_SHORT)).expect(0, "e2mmpstatus after release");
        });
        // clear needs --force; with it the block is CLEAN at once, and e2fsprogs agrees.
        s.spawn(|| {
            let p = copies[2].to_str().expect("utf8");
            let out = mmp_run(&["clear", "--nodename", "hostB", p], T_SHORT);
            assert_reason(&out, 2, "--force", "clear without --force");
            assert_eq!(hash_file(&copies[2]), stale, "clear wrote without --force");
            mmp_run(&["clear", "--force", "--nodename", "hostB", p], T_SHORT)
                .expect(0, "clear --force");
            assert_eq!(mmp_block(&copies[2]).seq, SEQ_CLEAN);
            let mut c = tool("e2mmpstatus");
            c.arg(&copies[2]);
            run(c, Duration::from_secs(T_SHORT)).expect(0, "e2mmpstatus after clear");
            let mut c = tool("e2fsck");
            c.arg("-fn").arg(&copies[2]);
            run(c, Duration::from_secs(30)).expect(0, "e2fsck -fn after clear");
        });
    });
}

/// ext4, interval 1: a clean handover between two nodes (the second waits the claim: 11 s).
#[test]
fn ext4_handover_between_two_hosts() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("h.img");
    mkfs_mmp(&img, "16M", &["-b", "4096"]);
    let mut ha = hold(A, "hostA", &[], &img);
    let first = ha.wait_line("acquired ", Duration::from_secs(30));
    assert!(
        first >= Duration::from_secs(11),
        "a CLEAN ext4 block is claimed, then verified after 11 s"
    );
    // While held: another node is refused (foreign, and with --force: active).
    let mut c = mmp(&["hold", "--hostid", B, "--nodename", "hostB", "--force"]);
    c.arg(&img);
    let out = run(c, Duration::from_secs(30));
    assert_reason(&out, 1, "active on another node", "ext4 --force while held");
    assert!(out.stderr.contains("'hostA'"), "{}", out.show());
    let t = Instant::now();
    ha.term(Duration::from_secs(T_SHORT)).expect(0, "release");
    assert_eq!(mmp_block(&img).seq, SEQ_CLEAN);
    let mut hb = hold(B, "hostB", &[], &img);
    hb.wait_line("acquired ", Duration::from_secs(30));
    let handover = t.elapsed();
    eprintln!(
        "TIMING ext4 interval 1 (file): first acquire {:.3} s, clean handover {:.3} s",
        first.as_secs_f64(),
        handover.as_secs_f64()
    );
    hb.term(Duration::from_secs(T_SHORT)).expect(0, "release");
    let b = mmp_block(&img);
    assert_eq!((b.seq, b.nodename()), (SEQ_CLEAN, &b"hostB"[..]));
    let mut c = tool("e2fsck");
    c.arg("-fn").arg(&img);
    run(c, Duration::from_secs(30)).expect(0, "e2fsck -fn after our holds");
}

// ----- 5. corrupt and wrong inputs ---------------------------------------------------------------

/// One bad input: how to make it, and what status/check/hold must say.
struct Bad {
    name: &'static str,
    /// Expected exit code for status and check (hold refuses with 1 or 2).
    code: i32,
    /// A word the one-line reason must contain.
    needle: &'static str,
    /// For status on a readable block in a refused state (FSCK, unknown): the state is a
    /// normal status line on stdout, not an error on stderr.
    status_stdout: Option<&'static str>,
}

fn make_bad(dir: &Path, base: &Path, bad: &Bad) -> PathBuf {
    let p = dir.join(format!("{}.img", bad.name));
    let copy = || fs::copy(base, &p).expect("copy base");
    match bad.name {
        "bad_magic" => {
            copy();
            let (_, sb) = superblock(&p);
            let off = mmp_offset(&sb);
            let mut b = read_at(&p, off, 1024);
            b[0..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
            write_at(&p, off, &b);
        }
        "bad_checksum" => {
            copy();
            edit_mmp(&p, |b| b.seq = 0x0000_0042, true);
        }
        "torn" => {
            // First sector new (live seq, new node and time), second sector old (the old
            // checksum): what a write torn at 512 bytes leaves on a metadata_csum fs.
            copy();
            let (_, sb) = superblock(&p);
            assert!(sb.metadata_csum(), "torn needs metadata_csum");
            let off = mmp_offset(&sb);
            let old = read_at(&p, off, 1024);
            let mut new = old.clone();
            let mut b = Block::parse(&old, sb.mmp_csum_seed()).expect("base block");
            b.seq = 7;
            b.time += 100;
            b.nodename = [0; 64];
            b.nodename[..5].copy_from_slice(b"hostB");
            b.emit(&mut new, sb.mmp_csum_seed());
            let mut torn = new[..512].to_vec();
            torn.extend_from_slice(&old[512..]);
            assert_ne!(torn, old);
            assert_ne!(torn, new);
            write_at(&p, off, &torn);
        }
        "fsck_seq" => {
            copy();
            edit_mmp(&p, |b| b.seq = SEQ_FSCK, false);
        }
        "unknown_seq" => {
            copy();
            edit_mmp(&p, |b| b.seq = 0xF000_0000, false);
        }
        "mmp_block_out_of_range" => {
            copy();
            let (_, sb) = superblock(&p);
            edit_sb(&p, |s| {
                s[sb_field::MMP_BLOCK].copy_from_slice(&sb.blocks_count.to_le_bytes())
            });
            assert_eq!(
                superblock(&p).1.mmp_block,
                sb.blocks_count,
                "re-signed superblock parses"
            );
        }
        "no_mmp_feature" => {
            let mut c = tool("mke2fs");
            c.args(["-F", "-q", "-t", "ext4"]).arg(&p).arg("8M");
            run(c, Duration::from_secs(60)).expect(0, "mke2fs without mmp");
        }
        "zeros" => fs::write(&p, vec![0u8; 1 << 20]).expect("write"),
        "xfs_signature" => {
            let mut v = vec![0u8; 1 << 20];
            v[..4].copy_from_slice(b"XFSB");
            v[4..8].copy_from_slice(&4096u32.to_be_bytes());
            fs::write(&p, v).expect("write");
        }
        "native_bad_checksum" => {
            fs::write(&p, vec![0u8; 1 << 20]).expect("write");
            mmp_run(
                &["format", "--interval-ms", "100", p.to_str().expect("utf8")],
                T_SHORT,
            )
            .expect(0, "format");
            let mut r = read_at(&p, 0, 512);
            r[0x20] ^= 0xff; // time_ms, covered by the checksum
            write_at(&p, 0, &r);
        }
        "empty" => fs::write(&p, b"").expect("write"),
        "tiny" => fs::write(&p, vec![0u8; 100]).expect("write"),
        "missing" => {}
        "directory" => {
            let d = dir.join("a_directory");
            fs::create_dir(&d).expect("mkdir");
            return d;
        }
        other => panic!("unknown case {other}"),
    }
    p
}

const BADS: &[Bad] = &[
    Bad {
        name: "bad_magic",
        code: 2,
        needle: "invalid magic",
        status_stdout: None,
    },
    Bad {
        name: "bad_checksum",
        code: 2,
        needle: "checksum does not match",
        status_stdout: None,
    },
    Bad {
        name: "torn",
        code: 2,
        needle: "checksum does not match",
        status_stdout: None,
    },
    Bad {
        name: "fsck_seq",
        code: 1,
        needle: "e2fsck being run",
        status_stdout: Some("fsck"),
    },
    Bad {
        name: "unknown_seq",
        code: 1,
        needle: "unknown operation",
        status_stdout: Some("unknown sequence"),
    },
    Bad {
        name: "mmp_block_out_of_range",
        code: 2,
        needle: "beyond the file system range",
        status_stdout: None,
    },
    Bad {
        name: "no_mmp_feature",
        code: 2,
        needle: "MMP feature not enabled",
        status_stdout: None,
    },
    Bad {
        name: "zeros",
        code: 2,
        needle: "all zeros",
        status_stdout: None,
    },
    Bad {
        name: "xfs_signature",
        code: 2,
        needle: "found XFS",
        status_stdout: None,
    },
    Bad {
        name: "native_bad_checksum",
        code: 2,
        needle: "checksum does not match",
        status_stdout: None,
    },
    Bad {
        name: "empty",
        code: 2,
        needle: "too small",
        status_stdout: None,
    },
    Bad {
        name: "tiny",
        code: 2,
        needle: "too small",
        status_stdout: None,
    },
    Bad {
        name: "missing",
        code: 2,
        needle: "No such file",
        status_stdout: None,
    },
    Bad {
        name: "directory",
        code: 2,
        needle: "directory",
        status_stdout: None,
    },
];

/// Runs status, status --json, check and hold on `dev` and checks the contract.
fn check_bad(bad: &Bad, dev: &Path, user: Option<&[&str]>) {
    let before = hash_path(dev);
    let d = dev.to_str().expect("utf8");
    let id = ["--hostid", B, "--nodename", "hostB"];
    let cmd = |args: &[&str]| -> Command {
        match user {
            None => mmp(args),
            Some(prefix) => {
                let mut c = Command::new(prefix[0]);
                c.args(&prefix[1..]).arg(mmp_bin()).args(args);
                c.env_remove("MMP_HOSTID")
                    .env_remove("NOTIFY_SOCKET")
                    .env_remove("MMP_FAULTS");
                c
            }
        }
    };
    let lim = Duration::from_secs(T_SHORT);
    let what = |c: &str| format!("{c} on {} ({d})", bad.name);

    let out = run(cmd(&[&["status"], &id[..], &[d]].concat()), lim);
    match bad.status_stdout {
        None => assert_reason(&out, bad.code, bad.needle, &what("status")),
        Some(state) => {
            out.expect(bad.code, &what("status"));
            assert!(
                out.stdout.contains(state) && out.stdout.lines().count() == 1,
                "{}: {}",
                what("status"),
                out.show()
            );
            assert!(out.stderr.is_empty(), "{}: {}", what("status"), out.show());
        }
    }
    assert!(
        out.stdout.is_empty() || bad.status_stdout.is_some(),
        "{}: {}",
        what("status"),
        out.show()
    );

    let out = run(cmd(&[&["status", "--json"], &id[..], &[d]].concat()), lim);
    out.expect(bad.code, &what("status --json"));
    let j = json(out.stdout.trim());
    assert_eq!(j["device"].s(), d, "{}", what("status --json"));
    // What the device was recognised as, also on an error: an ext4 file system whose MMP
    // cannot be used is still ext4.
    if bad.name == "no_mmp_feature" || bad.name == "mmp_block_out_of_range" {
        assert_eq!(j["format"].s(), "ext4", "{}: {j:?}", what("status --json"));
    }
    if bad.name == "zeros" || bad.name == "xfs_signature" {
        assert_eq!(
            j["format"].s(),
            "unknown",
            "{}: {j:?}",
            what("status --json")
        );
    }
    match bad.status_stdout {
        None => {
            assert_eq!(j["state"].s(), "error", "{}", what("status --json"));
            assert!(
                j["error"].s().contains(bad.needle),
                "{}: {j:?}",
                what("status --json")
            );
        }
        Some(_) => assert_ne!(j["state"].s(), "error", "{}", what("status --json")),
    }

    let out = run(cmd(&[&["check"], &id[..], &[d]].concat()), lim);
    assert_reason(&out, bad.code, bad.needle, &what("check"));
    assert!(out.stdout.is_empty(), "{}: {}", what("check"), out.show());

    let out = run(cmd(&[&["check", "--json"], &id[..], &[d]].concat()), lim);
    out.expect(bad.code, &what("check --json"));
    let j = json(out.stdout.trim());
    assert_eq!(j["device"].s(), d, "{}", what("check --json"));
    let result = if bad.code == 1 { "in_use" } else { "error" };
    assert_eq!(
        j["result"].s(),
        result,
        "{}: {}",
        what("check --json"),
        out.show()
    );
    assert!(
        j["message"].s().contains(bad.needle),
        "{}: {}",
        what("check --json"),
        out.show()
    );

    let out = run(
        cmd(&[&["hold", "--no-realtime"], &id[..], &[d]].concat()),
        lim,
    );
    assert!(
        matches!(out.code, Some(1 | 2)),
        "{}: hold must refuse\n{}",
        what("hold"),
        out.show()
    );
    assert_reason(&out, bad.code, bad.needle, &what("hold"));
    assert!(
        out.elapsed < Duration::from_secs(5),
        "{}: refuse at once\n{}",
        what("hold"),
        out.show()
    );
    assert!(
        !out.stdout.contains("acquired"),
        "{}: {}",
        what("hold"),
        out.show()
    );

    let out = run(
        cmd(&[&["hold", "--force", "--no-realtime"], &id[..], &[d]].concat()),
        lim,
    );
    assert_reason(&out, bad.code, bad.needle, &what("hold --force"));

    assert_eq!(
        hash_path(dev),
        before,
        "{}: the device changed",
        what("any command")
    );
}

#[test]
fn corrupt_and_wrong_inputs() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let base = dir.path().join("base.img");
    mkfs_mmp(&base, "8M", &["-b", "1024"]);
    assert!(superblock(&base).1.metadata_csum());
    for bad in BADS {
        let dev = make_bad(dir.path(), &base, bad);
        check_bad(bad, &dev, None);
    }
    // The base itself is fine (the cases above fail for their own reason).
    mmp_run(&["status", base.to_str().expect("utf8")], T_SHORT).expect(0, "base image");
}

/// No permission: the image is mode 0600, owned by root; mmp runs as nobody.
#[test]
fn no_permission() {
    if !mmp_tests::is_root() {
        skip("needs root to run as another user");
        return;
    }
    let prefix: &[&str] = if find_tool("setpriv").is_some() {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ]
    } else if find_tool("runuser").is_some() {
        &["runuser", "-u", "nobody", "--"]
    } else {
        skip("neither setpriv nor runuser");
        return;
    };
    // The binary must be reachable for that user.
    let probe = {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(mmp_bin()).arg("--version");
        run(c, Duration::from_secs(T_SHORT))
    };
    if probe.code != Some(0) {
        mmp_tests::skip_optional(&format!(
            "nobody cannot run {}: {}",
            mmp_bin().display(),
            probe.show()
        ));
        return;
    }
    let dir = tmpdir();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let img = dir.path().join("private.img");
    fs::write(&img, vec![0u8; 1 << 20]).expect("create");
    mmp_run(
        &[
            "format",
            "--interval-ms",
            "100",
            img.to_str().expect("utf8"),
        ],
        T_SHORT,
    )
    .expect(0, "format");
    fs::set_permissions(&img, fs::Permissions::from_mode(0o600)).expect("chmod");
    let bad = Bad {
        name: "no_permission",
        code: 2,
        needle: "Permission denied",
        status_stdout: None,
    };
    check_bad(&bad, &img, Some(prefix));
}

// ----- 6. native flows -----------------------------------------------------------------------

/// Format, status, hold, refusals, release, handover, takeover, run on `dev` (file or
/// block device), with a 100 ms interval. Returns (handover, takeover).
/// Records are read back through `backing` (the image file behind a loop device).
pub(crate) fn native_flow(dev: &Path, backing: &Path, label: &str) -> (Duration, Duration) {
    let d = dev.to_str().expect("utf8");
    // What the device holds now, read through the backing file.
    let rec = || native_record(backing);
    let lim = Duration::from_secs(T_SHORT);
    mmp_run(&["format", "--interval-ms", "100", d], T_SHORT).expect(0, "format");
    let r = rec();
    assert_eq!(
        (r.state, r.interval_ms, r.reason),
        (native::State::Clean, 100, native::Reason::Formatted)
    );

    let out = mmp_run(&["status", "--json", "--hostid", A, d], T_SHORT);
    out.expect(0, "status of a formatted area");
    let j = json(out.stdout.trim());
    assert_eq!(
        (j["format"].s(), j["state"].s(), j["interval_ms"].u()),
        ("native", "clean", 100)
    );
    let out = mmp_run(&["check", "--hostid", B, d], T_SHORT);
    out.expect(0, "check of a clean area");
    assert!(
        out.elapsed < Duration::from_millis(1500),
        "check of CLEAN does not wait\n{}",
        out.show()
    );

    // A holds.
    let mut ha = hold(A, "hostA", &[], dev);
    let first = ha.wait_line("acquired ", lim);
    let out = mmp_run(&["status", "--json", d], T_SHORT);
    out.expect(1, "status while held");
    let j = json(out.stdout.trim());
    assert_eq!(
        (j["state"].s(), j["hostid"].u(), j["node"].s()),
        ("active", 0xa, "hostA"),
        "{}",
        out.show()
    );
    assert_eq!(j["device_name"].s(), d);
    let out = mmp_run(&["check", "--hostid", B, d], T_SHORT);
    assert_reason(&out, 1, "active on another node", "check while held");
    assert!(out.stderr.contains("hostA"), "{}", out.show());

    // B is refused, with and without --force.
    let mut c = mmp(&["hold", "--hostid", B, "--nodename", "hostB"]);
    c.arg(dev);
    let out = run(c, lim);
    assert_reason(
        &out,
        1,
        "last held by another host",
        "second host without --force",
    );
    let mut c = mmp(&["hold", "--force", "--hostid", B, "--nodename", "hostB"]);
    c.arg(dev);
    let out = run(c, lim);
    assert_reason(
        &out,
        1,
        "active on another node",
        "second host with --force",
    );
    assert_eq!(rec().hostid, 0xa, "the refused host wrote nothing");

    // Handover: A releases on SIGTERM, B acquires.
    let t = Instant::now();
    ha.term(lim).expect(0, "release on SIGTERM");
    let r = rec();
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (native::State::Clean, 0xa, native::Reason::Released)
    );
    mmp_run(&["status", d], T_SHORT).expect(0, "status after release");
    let mut hb = hold(B, "hostB", &[], dev);
    hb.wait_line("acquired ", lim);
    let handover = t.elapsed();
    assert_eq!(rec().hostid, 0xb);

    // Takeover: B crashes, A takes over with --force after the activity test.
    std::thread::sleep(Duration::from_millis(250));
    hb.kill9();
    let t = Instant::now();
    let mut ha = hold(A, "hostA", &["--force"], dev);
    ha.wait_line("acquired ", Duration::from_secs(T_SHORT));
    let takeover = t.elapsed();
    assert!(
        takeover >= Duration::from_secs(2),
        "takeover {takeover:?} shorter than the 2 s window"
    );
    let r = rec();
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (native::State::Active, 0xa, native::Reason::TakenOver)
    );
    ha.term(lim).expect(0, "release");
    assert_eq!(rec().state, native::State::Clean);

    // run: the command's status, released clean.
    let out = mmp_run(
        &[
            "run",
            "--hostid",
            A,
            "--nodename",
            "hostA",
            d,
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
        T_SHORT,
    );
    out.expect(7, "run sh -c 'exit 7'");
    let r = rec();
    assert_eq!(
        (r.state, r.hostid, r.reason),
        (native::State::Clean, 0xa, native::Reason::Released)
    );

    eprintln!(
        "TIMING native 100 ms ({label}): first acquire {:.3} s, clean handover {:.3} s, crash takeover (--force) {:.3} s",
        first.as_secs_f64(),
        handover.as_secs_f64(),
        takeover.as_secs_f64()
    );
    (handover, takeover)
}

#[test]
fn native_flows_on_a_file() {
    let dir = tmpdir();
    let img = dir.path().join("n.img");
    fs::write(&img, vec![0u8; 1 << 20]).expect("create");
    native_flow(&img, &img, "file");
}

// ----- the rest of the contract ------------------------------------------------------------------

#[test]
fn help_shows_examples() {
    let out = mmp_run(&["--help"], T_SHORT);
    out.expect(0, "mmp --help");
    assert!(out.stdout.contains("Example"), "{}", out.show());
    for sub in [
        "status",
        "check",
        "hold",
        "run",
        "clear",
        "dump",
        "format",
        "hostid",
        "enable",
        "disable",
        "set-interval",
        "list",
        "demo",
    ] {
        let out = mmp_run(&[sub, "--help"], T_SHORT);
        out.expect(0, sub);
        assert!(
            out.stdout.contains("Example"),
            "`mmp {sub} --help` has no example\n{}",
            out.show()
        );
    }
    // A usage error is exit 2 with a message, not a panic.
    let out = mmp_run(&["status"], T_SHORT);
    out.expect(2, "status without a device");
}

#[test]
fn demo_prints_the_timing_table() {
    let dir = tmpdir();
    let out = mmp_run(&["demo", "--dir", dir.path().to_str().expect("utf8")], 60);
    out.expect(0, "mmp demo");
    for row in [
        "| first acquire (clean) |",
        "| clean handover |",
        "| crash takeover (--force) |",
    ] {
        assert!(out.stdout.contains(row), "missing {row:?}\n{}", out.show());
    }
    assert!(
        out.stdout.contains("refused without --force"),
        "{}",
        out.show()
    );
    assert_eq!(
        fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "demo left its file behind"
    );
}

#[test]
fn hostid_generate_show_and_refuse_overwrite() {
    let dir = tmpdir();
    let f = dir.path().join("hostid");
    let fp = f.to_str().expect("utf8");
    let out = mmp_run(&["hostid", "--generate", "--file", fp], T_SHORT);
    out.expect(0, "hostid --generate");
    let bytes = fs::read(&f).expect("hostid file");
    assert_eq!(bytes.len(), 4, "4 bytes");
    let v = u32::from_ne_bytes(bytes[..].try_into().expect("4"));
    assert_ne!(v, 0, "never 0");
    let shown = format!("0x{v:08x}");
    assert!(out.stdout.contains(&shown), "{}", out.show());
    let out = mmp_run(&["hostid", "--file", fp], T_SHORT);
    out.expect(0, "hostid");
    assert!(
        out.stdout.contains(&shown),
        "shows the generated value {shown}\n{}",
        out.show()
    );
    let out = mmp_run(&["hostid", "--generate", "--file", fp], T_SHORT);
    assert_reason(&out, 2, "", "generate over an existing file");
    assert!(
        out.stderr.contains(fp) || out.stderr.to_lowercase().contains("exist"),
        "{}",
        out.show()
    );
    assert_eq!(
        fs::read(&f).expect("read"),
        bytes,
        "the file changed without --force"
    );
    let out = mmp_run(&["hostid", "--generate", "--force", "--file", fp], T_SHORT);
    out.expect(0, "--generate --force");
    // --hostid wins over the file.
    let out = mmp_run(&["hostid", "--hostid", "0x1234abcd", "--file", fp], T_SHORT);
    out.expect(0, "hostid --hostid");
    assert!(out.stdout.contains("0x1234abcd"), "{}", out.show());
}

#[test]
fn format_refuses_known_signatures() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let ext4 = dir.path().join("e.img");
    mkfs_mmp(&ext4, "8M", &["-b", "1024"]);
    // Every other signature, planted in an otherwise empty 1 MiB image.
    let planted: &[(&str, usize, &[u8], &str)] = &[
        ("x", 0, b"XFSB", "XFS"),
        ("btrfs", 0x10040, b"_BHRfS_M", "btrfs"),
        ("lvm", 512 + 0x18, b"LVM2 001", "LVM2"),
        ("md12", 4096, &[0xFC, 0x4E, 0x2B, 0xA9], "MD RAID"),
        ("md11", 0, &[0xFC, 0x4E, 0x2B, 0xA9], "MD RAID"),
        // MD 0.90: the last whole 64 KiB of the device; 1.0: 8 KiB before the end.
        (
            "md090",
            (1 << 20) - 0x1_0000,
            &[0xFC, 0x4E, 0x2B, 0xA9],
            "MD RAID",
        ),
        (
            "md10",
            (1 << 20) - 8192,
            &[0xFC, 0x4E, 0x2B, 0xA9],
            "MD RAID",
        ),
        ("swap", 4096 - 10, b"SWAPSPACE2", "swap"),
        ("gpt", 512, b"EFI PART", "GPT"),
        ("mbr", 510, &[0x55, 0xAA], "MBR"),
        ("zfs", 128 * 1024, &[0x0C, 0xB1, 0xBA, 0, 0, 0, 0, 0], "ZFS"),
    ];
    let mut images = vec![(ext4.clone(), "ext2/3/4")];
    for (name, off, magic, needle) in planted {
        let p = dir.path().join(format!("{name}.img"));
        let mut v = vec![0u8; 1 << 20];
        v[*off..off + magic.len()].copy_from_slice(magic);
        fs::write(&p, v).expect("write");
        images.push((p, *needle));
    }
    let xfs = images[1].0.clone();
    for (p, needle) in &images {
        let p = &p;
        let before = hash_file(p);
        let out = mmp_run(
            &["format", "--interval-ms", "100", p.to_str().expect("utf8")],
            T_SHORT,
        );
        assert_reason(&out, 1, needle, "format over a signature");
        assert!(
            out.stderr.contains("--force"),
            "says what to do\n{}",
            out.show()
        );
        assert_eq!(hash_file(p), before, "format wrote without --force");
    }
    // With --force the XFS signature is overwritten and the area is clean.
    let out = mmp_run(
        &[
            "format",
            "--force",
            "--interval-ms",
            "100",
            xfs.to_str().expect("utf8"),
        ],
        T_SHORT,
    );
    out.expect(0, "format --force");
    assert_eq!(native_record(&xfs).state, native::State::Clean);
    // Out-of-range parameters are errors, nothing written.
    let before = hash_file(&xfs);
    let out = mmp_run(
        &[
            "format",
            "--force",
            "--interval-ms",
            "5",
            xfs.to_str().expect("utf8"),
        ],
        T_SHORT,
    );
    assert_reason(&out, 2, "interval", "format --interval-ms 5");
    assert_eq!(hash_file(&xfs), before);
}

#[test]
fn clear_dump_and_run_on_ext4() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("c.img");
    mkfs_mmp(&img, "8M", &["-b", "1024"]);
    edit_mmp(&img, |b| b.seq = 0x0bad_cafe, false);
    let p = img.to_str().expect("utf8");
    let before = hash_file(&img);
    let out = mmp_run(&["clear", "--nodename", "hostB", p], T_SHORT);
    assert_reason(&out, 2, "--force", "clear without --force");
    assert_eq!(hash_file(&img), before, "clear without --force wrote");

    let out = mmp_run(&["dump", p], T_SHORT);
    out.expect(0, "dump");
    for f in [
        "s_mmp_block:",
        "s_mmp_update_interval: 1",
        "mmp_seq: 0x0badcafe",
        "mmp_checksum:",
        "valid: yes (active)",
    ] {
        assert!(out.stdout.contains(f), "dump lacks {f:?}\n{}", out.show());
    }
    assert_eq!(hash_file(&img), before, "dump wrote");

    mmp_run(&["clear", "--force", "--nodename", "hostB", p], T_SHORT).expect(0, "clear --force");
    let b = mmp_block(&img);
    assert_eq!((b.seq, b.nodename()), (SEQ_CLEAN, &b"hostB"[..]));
    let mut c = tool("e2mmpstatus");
    c.arg(&img);
    run(c, Duration::from_secs(T_SHORT)).expect(0, "e2mmpstatus after clear");

    // run on ext4: the command's status; the claim waits 11 s.
    let out = mmp_run(
        &[
            "run",
            "--hostid",
            A,
            "--nodename",
            "hostA",
            p,
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
        40,
    );
    out.expect(7, "run sh -c 'exit 7' on ext4");
    let b = mmp_block(&img);
    assert_eq!((b.seq, b.nodename()), (SEQ_CLEAN, &b"hostA"[..]));
    let mut c = tool("e2fsck");
    c.arg("-fn").arg(&img);
    run(c, Duration::from_secs(30)).expect(0, "e2fsck -fn after run");
}

/// Several devices in one hold: all or nothing, and one activity window for all.
#[test]
fn hold_several_devices() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let n1 = dir.path().join("n1.img");
    let n2 = dir.path().join("n2.img");
    for n in [&n1, &n2] {
        fs::write(n, vec![0u8; 1 << 20]).expect("create");
        mmp_run(
            &["format", "--interval-ms", "100", n.to_str().expect("utf8")],
            T_SHORT,
        )
        .expect(0, "format");
    }
    let e = dir.path().join("fsck.img");
    mkfs_mmp(&e, "8M", &["-b", "1024"]);
    edit_mmp(&e, |b| b.seq = SEQ_FSCK, false);

    // A clean device next to a refused one: refused, and nothing written to either.
    let (h1, he) = (hash_file(&n1), hash_file(&e));
    let mut c = mmp(&["hold", "--hostid", A, "--nodename", "hostA"]);
    c.arg(&n1).arg(&e);
    let out = run(c, Duration::from_secs(T_SHORT));
    out.expect(1, "hold clean + fsck");
    assert!(out.stderr.contains("e2fsck being run"), "{}", out.show());
    assert!(!out.stdout.contains("acquired"), "{}", out.show());
    assert_eq!(
        hash_file(&n1),
        h1,
        "the clean device was claimed and left claimed"
    );
    assert_eq!(hash_file(&e), he);

    // Both held, then a crash: both stale.
    let mut c = mmp(&["hold", "--hostid", A, "--nodename", "hostA"]);
    c.arg(&n1).arg(&n2);
    let mut h = Proc::spawn(c);
    let (a1, a2) = (
        format!("acquired {}", n1.display()),
        format!("acquired {}", n2.display()),
    );
    h.wait_lines(&[&a1, &a2], Duration::from_secs(T_SHORT));
    std::thread::sleep(Duration::from_millis(300));
    h.kill9();
    for n in [&n1, &n2] {
        assert_eq!(native_record(n).state, native::State::Active);
    }
    // Another host without --force: refused, nothing written.
    let (h1, h2) = (hash_file(&n1), hash_file(&n2));
    let mut c = mmp(&["hold", "--hostid", B, "--nodename", "hostB"]);
    c.arg(&n1).arg(&n2);
    let out = run(c, Duration::from_secs(T_SHORT));
    out.expect(1, "hold of two stale devices without --force");
    assert_eq!(
        out.stderr.matches("last held by another host").count(),
        2,
        "{}",
        out.show()
    );
    assert_eq!(
        (hash_file(&n1), hash_file(&n2)),
        (h1, h2),
        "a refused hold wrote"
    );
    // With --force: both after one window (2 s), not one window each.
    let mut c = mmp(&["hold", "--force", "--hostid", B, "--nodename", "hostB"]);
    c.arg(&n1).arg(&n2);
    let mut h = Proc::spawn(c);
    let t = h.wait_lines(&[&a1, &a2], Duration::from_secs(T_SHORT));
    let (t1, t2) = (t[0], t[1]);
    let both = t1.max(t2);
    assert!(
        t1.min(t2) >= Duration::from_secs(2),
        "before the window: {t1:?} {t2:?}"
    );
    assert!(
        both < Duration::from_secs(4),
        "the windows ran one after the other: {both:?}"
    );
    h.term(Duration::from_secs(T_SHORT))
        .expect(0, "release both");
    for n in [&n1, &n2] {
        let r = native_record(n);
        assert_eq!((r.state, r.hostid), (native::State::Clean, 0xb));
    }
}

/// Names from the device are printed with control characters escaped, in text and JSON.
#[test]
fn device_text_is_escaped() {
    if !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("esc.img");
    mkfs_mmp(&img, "8M", &["-b", "1024"]);
    edit_mmp(
        &img,
        |b| {
            *b = Block::new(
                0x42,
                1_795_257_665,
                b"evil\x1b[31m\nnode\x07",
                b"dev\ttab\r",
                5,
            );
        },
        false,
    );
    let p = img.to_str().expect("utf8");
    let raw_ok = |s: &str, what: &str| {
        assert!(
            !s.bytes()
                .any(|b| b == 0x1b || b == 0x07 || b == b'\t' || b == b'\r'),
            "{what}: a raw control character reached the terminal: {s:?}"
        );
    };
    let out = mmp_run(&["status", p], T_SHORT);
    out.expect(1, "status");
    raw_ok(&out.stdout, "status");
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.show());
    assert!(
        out.stdout.contains(r"node 'evil\x1b[31m\x0anode\x07'"),
        "{}",
        out.show()
    );
    assert!(
        out.stdout.contains(r"device 'dev\x09tab\x0d'"),
        "{}",
        out.show()
    );
    let out = mmp_run(&["status", "--json", p], T_SHORT);
    raw_ok(&out.stdout, "status --json");
    let j = json(out.stdout.trim());
    assert_eq!(j["node"].s(), r"evil\x1b[31m\x0anode\x07");
    assert_eq!(j["device_name"].s(), r"dev\x09tab\x0d");
    let out = mmp_run(&["dump", p], T_SHORT);
    out.expect(0, "dump");
    raw_ok(&out.stdout, "dump");
    assert!(
        out.stdout
            .contains(r"mmp_nodename: evil\x1b[31m\x0anode\x07"),
        "{}",
        out.show()
    );
    let out = mmp_run(&["hold", "--hostid", B, "--nodename", "hostB", p], T_SHORT);
    assert_reason(
        &out,
        1,
        "last held by another host",
        "hold of a foreign block",
    );
    raw_ok(&out.stderr, "hold refusal");
    assert!(
        out.stderr.contains(r"evil\x1b[31m\x0anode"),
        "{}",
        out.show()
    );
}

/// `mmp-forge` (the benchmarks' raw writer; `mmp_tests::forge`, which the binary parses
/// arguments for) writes through the project's ext4 codec: debugfs reads back exactly the
/// forged fields, e2mmpstatus accepts its checksum, and a bad key writes nothing.
#[test]
fn tool_forge_writes_what_debugfs_reads() {
    if find_tool("debugfs").is_none() || find_tool("mke2fs").is_none() {
        mmp_tests::skip("debugfs/mke2fs not found");
        return;
    }
    let tmp = tmpdir();
    for csum in [true, false] {
        let img = tmp.path().join(format!("forge-{csum}.img"));
        let feat = if csum {
            "metadata_csum"
        } else {
            "^metadata_csum"
        };
        mkfs_mmp(&img, "32M", &["-b", "4096", "-O", feat]);
        let before = hash_file(&img);
        let bad = mmp_tests::forge::ext4(&img, &["sequence=1".to_owned()]);
        assert!(bad.is_err(), "a bad key is an error: {bad:?}");
        assert_eq!(hash_file(&img), before, "a bad key wrote");
        let edits = [
            "seq=0x12345678",
            "nodename=crashed-node",
            "bdevname=loop9",
            "check_interval=7",
        ]
        .map(str::to_owned);
        let t = mmp_tests::forge::ext4(&img, &edits).expect("forge");
        assert!(t > 1.6e9, "{t}");
        let mut d = tool("debugfs");
        d.args(["-R", "dump_mmp"]).arg(&img);
        let out = run(d, Duration::from_secs(30));
        for want in [
            "sequence: 12345678",
            "node_name: crashed-node",
            "device_name: loop9",
            "check_interval: 7",
        ] {
            assert!(out.stdout.contains(want), "{want} in\n{}", out.show());
        }
        let mut st = tool("e2mmpstatus");
        st.arg("-i").arg(&img);
        let out = run(st, Duration::from_secs(30));
        assert!(
            out.stdout.contains("mmp_sequence: 0x12345678"),
            "e2mmpstatus (csum {csum}) reads it:\n{}",
            out.show()
        );
    }
}
