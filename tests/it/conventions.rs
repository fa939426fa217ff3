//! Issue 15, "What an admin meets", the conventions (admin.rs has the broken items):
//!
//! * `UUID=` and `LABEL=` device names, as mount(8) and e2mmpstatus take them (loop devices).
//! * One versioned JSON schema across `status --json`, `check --json`, `list --json` and the
//!   holder's status file, documented in docs/json.md; `seq` a string; no Debug text.
//! * A second holder with this host's identity is told "already held here by pid N".
//! * `status`: fits a terminal, full when piped; "mounted on this host (at DIR)"; the
//!   not-released refusal tells a live owner from a silent one.
//! * A crashed holder's state does not block `mmp mount` of its mount point.
//! * Messages: no Rust syntax or Debug text.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::mmp_bin;
use mmp_core::format::native;
use mmp_tests::{Loop, find_tool, skip};
use serde_json::Value;

use super::admin::{MountRig, mount_rig};
use super::cli::{
    A, B, Out, Proc, T_SHORT, hold, mkfs_mmp, mmp, mmp_run, native_record, read_at, run, tmpdir,
    tool,
};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A 1 MiB file with a native area.
fn area(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("area file");
    let mut a = vec!["format"];
    a.extend_from_slice(args);
    a.push(s(&p));
    mmp_run(&a, T_SHORT).expect(0, "format");
    p
}

fn uuid_text(b: &[u8]) -> String {
    let mut t = String::new();
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            t.push('-');
        }
        t.push_str(&format!("{x:02x}"));
    }
    t
}

fn loop_ready() -> bool {
    if !mmp_tests::is_root() {
        skip("loop tests need root");
        return false;
    }
    for t in ["losetup", "mount", "umount", "mke2fs"] {
        if find_tool(t).is_none() {
            skip(&format!("{t} not found"));
            return false;
        }
    }
    true
}

// ----- UUID= and LABEL= ---------------------------------------------------------------------

#[test]
fn loop_uuid_and_label_name_devices() {
    if !loop_ready() {
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    let label = format!("mmpt{}", std::process::id() % 100_000);
    mkfs_mmp(&img, "16M", &["-L", &label]);
    let uuid = uuid_text(&read_at(&img, 0x468, 16));
    let Some(lo) = Loop::attach(&img) else { return };
    let dev = s(&lo.dev);
    for name in [
        format!("LABEL={label}"),
        format!("UUID={uuid}"),
        format!("UUID={}", uuid.to_uppercase()),
    ] {
        let o = mmp_run(&["status", &name], T_SHORT);
        o.expect(0, &format!("status {name}"));
        assert!(
            o.stdout.starts_with(&format!("{dev}: ext4 MMP")),
            "{}",
            o.show()
        );
        let o = mmp_run(&["check", "--json", &name], 60);
        o.expect(0, &format!("check --json {name}"));
        let j: Value = serde_json::from_str(o.stdout.trim()).expect("check json");
        assert_eq!(j["device"], dev, "{}", o.show());
        mmp_run(&["dump", &name], T_SHORT).expect(0, &format!("dump {name}"));
    }
    // hold takes the name too, and records the device it names.
    let mut c = mmp(&["--hostid", A, "hold", "--no-realtime"]);
    c.arg(format!("LABEL={label}"));
    let mut h = Proc::spawn(c);
    h.wait_line(&format!("acquired {dev}"), Duration::from_secs(60));
    h.term(Duration::from_secs(T_SHORT))
        .expect(0, "hold LABEL=");

    // A native area has a UUID (its area id), no label.
    let a = area(tmp.path(), "n.img", &["--interval-ms", "100"]);
    let Some(lo2) = Loop::attach(&a) else { return };
    let id = uuid_text(&native_record(&a).area_id);
    let o = mmp_run(&["status", &format!("UUID={id}")], T_SHORT);
    o.expect(0, "status UUID= of a native area");
    assert!(
        o.stdout
            .starts_with(&format!("{}: native MMP", lo2.dev.display())),
        "{}",
        o.show()
    );

    // None, and several.
    let o = mmp_run(&["status", "LABEL=no-such-label-here"], T_SHORT);
    o.expect(2, "status of an unknown label");
    assert!(o.stderr.contains("no block device carries"), "{}", o.show());
    let o = mmp_run(
        &[
            "--hostid",
            A,
            "hold",
            "UUID=01234567-89ab-cdef-0123-456789abcdef",
        ],
        T_SHORT,
    );
    o.expect(2, "hold of an unknown UUID");
    assert!(o.stderr.contains("no block device carries"), "{}", o.show());
    let Some(lo3) = Loop::attach(&img) else {
        return;
    };
    let o = mmp_run(&["status", &format!("LABEL={label}")], T_SHORT);
    o.expect(2, "a label on two devices");
    assert!(
        o.stderr.contains("2 devices carry it")
            && o.stderr.contains(dev)
            && o.stderr.contains(s(&lo3.dev)),
        "{}",
        o.show()
    );
    // status goes on with the other devices (and says which name failed).
    let o = mmp_run(&["status", &format!("UUID={uuid}"), s(&a)], T_SHORT);
    o.expect(2, "status of an ambiguous name and a good device");
    assert!(o.stdout.contains("native MMP"), "{}", o.show());
}

// ----- one JSON schema --------------------------------------------------------------------------

/// Every key `docs/json.md` documents (in backticks in the first column of its key table).
fn documented_keys() -> BTreeSet<String> {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/json.md"))
        .expect("docs/json.md");
    let mut keys = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split('|').nth(1).unwrap_or_default();
        for k in first.split('`').skip(1).step_by(2) {
            keys.insert(k.to_owned());
        }
    }
    keys
}

/// Checks one output line against the schema; returns it parsed.
fn schema_line(line: &str, kinds: &[&str], docs: &BTreeSet<String>) -> Value {
    let j: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let o = j
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {line}"));
    assert_eq!(o.get("schema"), Some(&Value::from(1)), "{line}");
    let kind = o["kind"].as_str().unwrap_or_default();
    assert!(kinds.contains(&kind), "kind {kind}: {line}");
    if matches!(kind, "status" | "check" | "holder") {
        assert!(
            ["ext4", "native", "unknown"].contains(&o["format"].as_str().unwrap_or("-")),
            "format: {line}"
        );
        assert!(o["device"].is_string(), "device: {line}");
    }
    if let Some(seq) = o.get("seq") {
        let t = seq
            .as_str()
            .unwrap_or_else(|| panic!("seq not a string: {line}"));
        t.parse::<u64>()
            .unwrap_or_else(|_| panic!("seq not decimal: {line}"));
    }
    for (k, v) in o {
        assert!(docs.contains(k), "key {k} not in docs/json.md: {line}");
        if let Some(t) = v.as_str() {
            for bad in [
                "Some(", "None", "Ok(", "Err(", "::", " { ", "os error", "..=",
            ] {
                assert!(!t.contains(bad), "{k} has Rust text {bad:?}: {line}");
            }
        }
    }
    j
}

#[test]
fn json_is_one_schema() {
    let docs = documented_keys();
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let bad = tmp.path().join("zeros.img");
    fs::write(&bad, vec![0u8; 1 << 20]).expect("zeros");
    let corrupt = area(tmp.path(), "c.img", &["--interval-ms", "100"]);
    let mut b = read_at(&corrupt, 0, native::RECORD_LEN);
    b[0x60] ^= 0x5a;
    super::cli::write_at(&corrupt, 0, &b);

    // status: records and errors of every sort, one line each.
    let devices = [
        s(&dev),
        "/nonexistent",
        s(&bad),
        s(&corrupt),
        "LABEL=no-such-label-here",
    ];
    let o = mmp_run(&[&["status", "--json"][..], &devices].concat(), T_SHORT);
    o.expect(2, "status --json");
    let lines: Vec<Value> = o
        .stdout
        .lines()
        .map(|l| schema_line(l, &["status"], &docs))
        .collect();
    assert_eq!(lines.len(), 5, "{}", o.show());
    assert_eq!(lines[0]["state"], "clean");
    assert_eq!(lines[0]["never_held"], true);
    for l in &lines[1..] {
        assert_eq!(l["state"], "error", "{l}");
        assert!(l["error"].is_string(), "{l}");
    }
    assert_eq!(
        lines[3]["format"], "native",
        "a corrupt area is still native"
    );
    assert_eq!(lines[1]["format"], "unknown");

    // --export: the same keys, one KEY=VALUE line each (strings as their text, null as
    // nothing, other values as JSON), an empty line after each device. (The age differs
    // between the two runs.)
    let o = mmp_run(&[&["status", "--export"][..], &devices].concat(), T_SHORT);
    o.expect(2, "status --export");
    let blocks: Vec<&str> = o
        .stdout
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    assert_eq!(blocks.len(), lines.len(), "{}", o.show());
    for (block, j) in blocks.iter().zip(&lines) {
        let obj = j.as_object().expect("an object");
        let kv: Vec<(&str, &str)> = block
            .lines()
            .map(|l| {
                l.split_once('=')
                    .unwrap_or_else(|| panic!("not KEY=VALUE: {l}"))
            })
            .collect();
        let mut keys: Vec<&str> = kv.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let want: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys, want, "{block}");
        assert!(
            block.starts_with("schema=1\nkind=status\ndevice="),
            "{block}"
        );
        for (k, v) in kv.into_iter().filter(|(k, _)| *k != "age_s") {
            let expect = match &obj[k] {
                Value::String(t) => t.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            assert_eq!(v, expect, "{k} in {block}");
        }
    }

    // A held native area: its 64-bit sequence, as a string, exactly.
    let status_file = tmp.path().join("hold.status");
    let mut h = hold(
        A,
        "hostA",
        &["--no-realtime", "--status-file", s(&status_file)],
        &dev,
    );
    h.wait_line("acquired", Duration::from_secs(T_SHORT));
    let o = mmp_run(&["status", "--json", s(&dev)], T_SHORT);
    o.expect(1, "status --json while held");
    let j = schema_line(o.stdout.trim(), &["status"], &docs);
    let seq: u64 = j["seq"].as_str().expect("seq").parse().expect("u64");
    assert!(
        seq.abs_diff(native_record(&dev).seq) < 1000,
        "seq {seq} lost digits"
    );
    // check: in use, and an error.
    let o = mmp_run(&["check", "--json", s(&dev)], 30);
    o.expect(1, "check --json while held");
    let j = schema_line(o.stdout.trim(), &["check"], &docs);
    assert_eq!(j["result"], "in_use");
    let o = mmp_run(&["check", "--json", s(&bad)], T_SHORT);
    o.expect(2, "check --json of zeros");
    let j = schema_line(o.stdout.trim(), &["check"], &docs);
    assert_eq!(j["result"], "error");
    assert!(j["error"].is_string());
    for nothing in ["/nonexistent", "LABEL=no-such-label-here"] {
        let o = mmp_run(&["check", "--json", nothing], T_SHORT);
        o.expect(2, "check --json of nothing");
        let j = schema_line(o.stdout.trim(), &["check"], &docs);
        assert_eq!(j["device"], nothing);
        assert_eq!(j["result"], "error");
    }

    // The holder's status file.
    let t = Instant::now();
    while !status_file.exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "no status file");
        std::thread::sleep(Duration::from_millis(50));
    }
    h.term(Duration::from_secs(T_SHORT)).expect(0, "release");
    let body = fs::read_to_string(&status_file).expect("status file");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| schema_line(l, &["holder", "summary"], &docs))
        .collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(lines[0]["kind"], "holder");
    assert_eq!(lines[0]["format"], "native");
    assert_eq!(lines[0]["state"], "released");
    assert_eq!(lines[1]["kind"], "summary");

    // A refused holder says why in `error`.
    let mut h = hold(A, "hostA", &["--no-realtime"], &dev);
    h.wait_line("acquired", Duration::from_secs(T_SHORT));
    let refused = tmp.path().join("refused.status");
    let o = mmp_run(
        &[
            "--hostid",
            B,
            "--nodename",
            "hostB",
            "hold",
            "--no-realtime",
            "--status-file",
            s(&refused),
            s(&dev),
        ],
        T_SHORT,
    );
    o.expect(1, "hold of a held area");
    let body = fs::read_to_string(&refused).expect("status file");
    let first = schema_line(body.lines().next().unwrap_or_default(), &["holder"], &docs);
    assert_eq!(first["state"], "refused", "{body}");
    assert!(
        first["error"]
            .as_str()
            .is_some_and(|e| e.contains("another host")),
        "{body}"
    );
    h.term(Duration::from_secs(T_SHORT)).expect(0, "release");

    // list --json (state files of `mmp mount`), errors included.
    let rd = tmp.path().join("run");
    fs::create_dir_all(&rd).expect("run dir");
    fs::write(
        rd.join("-srv.state"),
        "pid=1\nstart=1\nmmp_device=/dev/x\ndevice=/dev/y\ndir=/srv\n",
    )
    .expect("state");
    fs::write(rd.join("junk.state"), "junk\n").expect("state");
    let mut c = mmp(&["list", "--json"]);
    c.env("MMP_RUN_DIR", &rd);
    let o = run(c, Duration::from_secs(T_SHORT));
    o.expect(2, "list --json");
    for l in o.stdout.lines() {
        schema_line(l, &["mount"], &docs);
    }
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.show());

    // pr --json: a file is not SCSI; the object says so in the same schema. (Objects of
    // SCSI devices are checked by the pr unit tests and the lab.)
    let o = mmp_run(&["pr", "--json", s(&dev)], T_SHORT);
    o.expect(2, "pr --json of a file");
    let j = schema_line(o.stdout.trim_end(), &["pr"], &docs);
    assert_eq!(j["not_scsi"], true, "{}", o.show());
}

// ----- a second holder here ---------------------------------------------------------------------

#[test]
fn second_holder_here_is_told_the_pid() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let mut h = hold(A, "hostA", &["--no-realtime"], &dev);
    h.wait_line("acquired", Duration::from_secs(T_SHORT));
    let pid = h.pid();
    let want = format!("already held here by pid {pid}");
    for args in [
        &["hold", "--no-realtime", s(&dev)][..],
        &["run", "--no-realtime", s(&dev), "--", "true"][..],
        &["hold", "--no-realtime", "--wait=1", s(&dev)][..],
    ] {
        let mut c = mmp(&["--hostid", A, "--nodename", "hostA"]);
        c.args(args);
        let o = run(c, Duration::from_secs(T_SHORT));
        o.expect(1, &format!("{args:?} while held here"));
        assert!(o.stderr.contains(&want), "{}", o.show());
        assert!(
            !o.stderr.contains("another host") && !o.stderr.contains("another node"),
            "{}",
            o.show()
        );
        assert!(o.elapsed < Duration::from_secs(3), "{}", o.show());
    }
    // Another identity (another host, as tests play it on one machine) meets the protocol.
    let o = mmp_run(
        &["--hostid", B, "--nodename", "hostB", "hold", s(&dev)],
        T_SHORT,
    );
    o.expect(1, "another identity");
    assert!(o.stderr.contains("another host"), "{}", o.show());
    assert!(!o.stderr.contains("already held here"), "{}", o.show());
    h.term(Duration::from_secs(T_SHORT)).expect(0, "release");
}

// ----- status -------------------------------------------------------------------------------------

#[test]
fn status_fits_the_terminal() {
    if find_tool("script").is_none() {
        skip("script not found");
        return;
    }
    let tmp = tmpdir();
    let deep = tmp
        .path()
        .join("a-rather-long-directory-name-for-a-shared-lun")
        .join("and-another-one-below-it");
    fs::create_dir_all(&deep).expect("dirs");
    let dev = area(
        &deep,
        "an-area-with-a-long-name.img",
        &["--interval-ms", "100"],
    );
    let node = "a-node-name-that-goes-on-and-on-for-quite-a-while-0123456789";
    let mut h = hold(A, node, &["--no-realtime"], &dev);
    h.wait_line("acquired", Duration::from_secs(T_SHORT));
    // Piped: one line per device, in full.
    let o = mmp_run(&["status", s(&dev)], T_SHORT);
    o.expect(1, "status piped");
    assert_eq!(o.stdout.lines().count(), 1, "{}", o.show());
    assert!(
        o.stdout.contains(s(&dev)) && o.stdout.contains(node),
        "{}",
        o.show()
    );
    // On a 60-column terminal: every line fits.
    let cmd = format!(
        "stty cols 60; '{}' status '{}'",
        mmp_bin().display(),
        s(&dev)
    );
    let mut c = tool("script");
    c.args(["-qec", &cmd, "/dev/null"]).env("SHELL", "/bin/sh");
    let o = run(c, Duration::from_secs(T_SHORT));
    o.expect(1, "status on a terminal");
    let lines: Vec<&str> = o.stdout.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines.len() >= 3, "{}", o.show());
    for l in &lines {
        assert!(
            l.chars().count() <= 60,
            "{} columns: {l}\n{}",
            l.len(),
            o.show()
        );
    }
    assert!(
        lines[0].ends_with("img:") && lines[1].contains("native MMP active"),
        "{}",
        o.show()
    );
    assert!(o.stdout.contains("hostid 0x"), "{}", o.show());
    h.term(Duration::from_secs(T_SHORT)).expect(0, "release");
}

#[test]
fn not_released_tells_live_from_silent() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let mut h = hold(B, "hostB", &["--no-realtime"], &dev);
    h.wait_line("acquired", Duration::from_secs(T_SHORT));
    let o = mmp_run(&["--hostid", A, "hold", "--no-realtime", s(&dev)], T_SHORT);
    o.expect(1, "hold of a live owner's area");
    assert!(
        o.stderr.contains("most likely alive") && o.stderr.contains("Do not use --force"),
        "{}",
        o.show()
    );
    h.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let o = mmp_run(&["--hostid", A, "hold", "--no-realtime", s(&dev)], T_SHORT);
    o.expect(1, "hold of a silent owner's area");
    assert!(
        o.stderr.contains("silent since") && o.stderr.contains("--force takes"),
        "{}",
        o.show()
    );
    assert!(!o.stderr.contains("most likely alive"), "{}", o.show());
}

#[test]
fn loop_status_says_mounted_here() {
    if !loop_ready() {
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    mkfs_mmp(&img, "32M", &[]);
    let Some(lo) = Loop::attach(&img) else { return };
    let dir = tmp.path().join("m");
    fs::create_dir_all(&dir).expect("m");
    let mut c = tool("mount");
    c.args(["-t", "ext4"]).arg(&lo.dev).arg(&dir);
    run(c, Duration::from_secs(60)).expect(0, "kernel mount");
    let o = mmp_run(&["status", s(&lo.dev)], T_SHORT);
    let o2 = mmp_run(&["status", "--json", s(&lo.dev)], T_SHORT);
    let mut c = tool("umount");
    c.arg(&dir);
    run(c, Duration::from_secs(60)).expect(0, "umount");
    o.expect(1, "status of a device mounted here");
    assert!(
        o.stdout
            .contains(&format!("mounted on this host (at {})", dir.display())),
        "{}",
        o.show()
    );
    let j: Value = serde_json::from_str(o2.stdout.trim()).expect("json");
    assert_eq!(j["mounted_at"], s(&dir), "{}", o2.show());
    let o = mmp_run(&["status", "--json", s(&lo.dev)], T_SHORT);
    let j: Value = serde_json::from_str(o.stdout.trim()).expect("json");
    assert_eq!(j["mounted_at"], Value::Null, "{}", o.show());
}

// ----- a crashed holder's state ---------------------------------------------------------------

fn pid_in(rd: &Path) -> i32 {
    let st = fs::read_dir(rd)
        .expect("run dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .expect("a state file");
    fs::read_to_string(st.path())
        .expect("state")
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .expect("pid")
}

fn kill9(pid: i32) {
    let p = rustix::process::Pid::from_raw(pid).expect("pid");
    rustix::process::kill_process(p, rustix::process::Signal::KILL).expect("kill");
    let t = Instant::now();
    while fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(t.elapsed() < Duration::from_secs(5), "pid {pid} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn loop_mount_after_a_holder_was_killed() {
    if !loop_ready() {
        return;
    }
    let tmp = tmpdir();
    let Some(MountRig {
        area: mmp_area,
        lo,
        dir,
        rd,
    }) = mount_rig(tmp.path())
    else {
        return;
    };
    let m = |args: &[&str]| -> Out {
        let mut c = mmp(args);
        c.env("MMP_RUN_DIR", &rd);
        run(c, Duration::from_secs(60))
    };
    let mount = [
        "--hostid",
        A,
        "mount",
        "-t",
        "ext4",
        "--mmp-device",
        s(&mmp_area),
        s(&lo.dev),
        s(&dir),
    ];
    let umount = || {
        let mut c = tool("umount");
        c.arg(&dir);
        run(c, Duration::from_secs(60))
    };
    m(&mount).expect(0, "mmp mount");
    let first = pid_in(&rd);

    // The holder is killed while the data is mounted: the state is not silently dropped.
    kill9(first);
    let o = m(&mount);
    o.expect(
        2,
        "mmp mount while the data of a dead holder is still mounted",
    );
    assert!(o.stderr.contains("still mounted"), "{}", o.show());
    // Unmounted by hand: the stale state no longer blocks (once the dead holder's last
    // write, if one was in flight, has landed).
    umount().expect(0, "umount");
    std::thread::sleep(Duration::from_millis(500));
    let o = m(&mount);
    o.expect(0, "mmp mount after the holder was killed");
    assert!(
        o.stderr.contains(&format!("holder (pid {first}) is gone")),
        "{}",
        o.show()
    );
    let second = pid_in(&rd);
    assert_ne!(first, second);

    // The area held by that mount: a second holder here is told by whom.
    let o = m(&["--hostid", A, "hold", "--no-realtime", s(&mmp_area)]);
    o.expect(1, "hold of an area `mmp mount` holds");
    assert!(
        o.stderr.contains(&format!(
            "already held here by pid {second} (`mmp mount` of"
        )),
        "{}",
        o.show()
    );
    m(&["umount", s(&dir)]).expect(0, "mmp umount");
    mmp_run(&["status", s(&mmp_area)], T_SHORT).expect(0, "released");
}

// ----- messages -------------------------------------------------------------------------------

#[test]
fn dump_has_no_debug_text() {
    if find_tool("mke2fs").is_none() {
        skip("mke2fs not found");
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    mkfs_mmp(&img, "8M", &[]);
    let o = mmp_run(&["dump", s(&img)], T_SHORT);
    o.expect(0, "dump");
    assert!(
        o.stdout.contains("mmp_seq: 0xff4d4d50 (clean)"),
        "{}",
        o.show()
    );
    for bad in ["Clean", "Live(", "Some(", "None"] {
        assert!(!o.stdout.contains(bad), "{bad}: {}", o.show());
    }
    // --on-loss with a bad action: quoted as the admin typed it, not as a Rust string.
    let o = mmp_run(
        &["--hostid", A, "hold", "--on-loss", "shut\"down", s(&img)],
        T_SHORT,
    );
    o.expect(2, "bad --on-loss");
    assert!(o.stderr.contains("--on-loss 'shut\"down'"), "{}", o.show());
}

#[test]
fn units_get_a_hint_not_a_parse_error() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    for (args, want) in [
        (&["hold", "--wait=1s", s(&dev)][..], "--wait=1"),
        (&["hold", "--wait=5m", s(&dev)][..], "--wait=300"),
        (
            &["run", "--wait=x", s(&dev), "--", "true"][..],
            "such as 30",
        ),
        (&["hold", "--watchdog-timeout", "10s", s(&dev)][..], "is 10"),
        (
            &["format", "--fail-intervals", "1s", s(&dev)][..],
            "not a time",
        ),
        (
            &["format", "--interval-ms", "1.5s", s(&dev)][..],
            "--interval-ms 1500",
        ),
        (&["enable", "--interval", "5s", s(&dev)][..], "5, not 5s"),
    ] {
        let o = mmp_run(args, T_SHORT);
        o.expect(2, &format!("{args:?}"));
        assert!(o.stderr.contains(want), "{}", o.show());
        for bad in ["invalid digit", "invalid float", "ParseIntError", "..="] {
            assert!(!o.stderr.contains(bad), "{}", o.show());
        }
    }
}
