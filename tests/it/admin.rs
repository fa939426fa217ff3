//! Issue 15, "What an admin meets": what a new user who knows tune2fs, e2mmpstatus, zpool
//! and Pacemaker runs into, one test per finding.
//!
//! * ext4 MMP without a hostid (no `MMP_HOSTID`, no hostid file): hold, release and disable
//!   work; the native format still refuses.
//! * The OCF agent's meta-data is static (runs nothing) and valid against `ra-api-1.dtd`;
//!   validate-all reports the start timeout, as the meta-data says.
//! * A closed stdout or stderr never panics (`mmp status ... | head -c 10`).
//! * `mmp run` hands the terminal to its command: it can read it, Ctrl-C reaches it (exit
//!   130), Ctrl-Z stops it (not the heartbeat) and `fg` resumes it, a missing command exits
//!   127, mmp's own lines go to stderr.
//! * The recovery hint for a corrupt native record works when followed.
//! * `mmp umount DEVICE` releases the holder; a recorded pid that is no longer the holder is
//!   never signalled.
//! * `mmp mount` of an ext4 device mounted on this host says so at once.
//! * `disable --force` refuses a block that changes while watched; `--force --force` does not.
//! * The same device under two names is refused before anything is written.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mmp_bin;
use mmp_core::format::native;
use mmp_tests::{Loop, find_tool, skip};

use super::cli::{
    A, B, Out, Proc, T_SHORT, hash_file, hold, mkfs_mmp, mmp, mmp_run, native_record, read_at, run,
    tmpdir, tool, write_at,
};

/// A 1 MiB file with a native area (`mmp format --interval-ms INTERVAL ARGS`).
fn area(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("area file");
    let mut a = vec!["format"];
    a.extend_from_slice(args);
    a.push(p.to_str().expect("utf-8 path"));
    mmp_run(&a, T_SHORT).expect(0, "format");
    p
}

/// What `mmp mount` tests need, under `dir`: a native area (100 ms), an ext4 file system
/// without MMP on a loop device, a mount point, and a run directory for `MMP_RUN_DIR`.
pub(crate) struct MountRig {
    pub(crate) area: PathBuf,
    pub(crate) lo: Loop,
    pub(crate) dir: PathBuf,
    pub(crate) rd: PathBuf,
}

/// [`MountRig`] under `dir`; `None` (with a printed reason) where no loop device attaches.
pub(crate) fn mount_rig(dir: &Path) -> Option<MountRig> {
    let area = area(dir, "area.img", &["--interval-ms", "100"]);
    let data = dir.join("data.img");
    fs::File::create(&data)
        .and_then(|f| f.set_len(32 << 20))
        .expect("data");
    let mut c = tool("mke2fs");
    c.args(["-F", "-q", "-t", "ext4"]).arg(&data);
    run(c, Duration::from_secs(60)).expect(0, "mke2fs (no MMP)");
    let lo = Loop::attach(&data)?;
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).expect("mnt");
    Some(MountRig {
        area,
        lo,
        dir: mnt,
        rd: dir.join("run"),
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ----- 1. ext4 MMP needs no hostid ------------------------------------------------------------

#[test]
fn ext4_works_without_a_hostid() {
    if find_tool("mke2fs").is_none() {
        skip("mke2fs not found");
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    mkfs_mmp(&img, "8M", &[]);
    let native_area = area(tmp.path(), "n.img", &["--interval-ms", "100"]);
    // No --hostid, no MMP_HOSTID (mmp() removes it), and a hostid file that does not exist.
    let no_file = tmp.path().join("no-hostid");
    let cmd = |args: &[&str]| {
        let mut c = mmp(args);
        c.env("MMP_HOSTID_FILE", &no_file);
        c
    };
    let o = run(cmd(&["hostid"]), Duration::from_secs(T_SHORT));
    o.expect(0, "hostid");
    assert!(o.stdout.contains("not set"), "{}", o.show());

    // The native format keeps the ZFS rule.
    let o = run(
        cmd(&["hold", "--no-realtime", s(&native_area)]),
        Duration::from_secs(T_SHORT),
    );
    o.expect(2, "native hold without a hostid");
    assert!(o.stderr.contains("no hostid"), "{}", o.show());

    // ext4: the node name is the identity, as for the kernel and e2fsprogs.
    let mut h = Proc::spawn(cmd(&["hold", "--no-realtime", s(&img)]));
    h.wait_line("acquired", Duration::from_secs(60));
    let o = h.term(Duration::from_secs(T_SHORT));
    o.expect(0, "ext4 hold without a hostid");
    assert!(o.stdout.contains("released"), "{}", o.show());
    assert_eq!(
        super::cli::mmp_block(&img).seq,
        mmp_core::format::ext4::SEQ_CLEAN
    );

    let o = run(cmd(&["disable", s(&img)]), Duration::from_secs(60));
    o.expect(0, "ext4 disable without a hostid");
    assert!(o.stdout.contains("disabled"), "{}", o.show());
}

// ----- 2. the OCF agent's meta-data -------------------------------------------------------------

fn agent_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/ocf/mmp")
}

fn find_dtd() -> Option<PathBuf> {
    [
        "/usr/share/resource-agents/ra-api-1.dtd",
        "/usr/lib/ocf/ra-api-1.dtd",
        "/usr/share/pacemaker/ra-api-1.dtd",
        "/usr/lib/ocf/lib/heartbeat/ra-api-1.dtd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

#[test]
fn ocf_meta_data_is_static_and_valid() {
    let Some(xmllint) = find_tool("xmllint") else {
        skip("xmllint not found (libxml2-utils)");
        return;
    };
    let Some(dtd) = find_dtd() else {
        skip("ra-api-1.dtd not found (resource-agents)");
        return;
    };
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    // A binary that leaves a mark when run: reading the meta-data must run nothing.
    let marker = tmp.path().join("ran");
    let bin = tmp.path().join("mmp-spy");
    fs::write(
        &bin,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            mmp_bin().display()
        ),
    )
    .expect("spy");
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut c = Command::new("sh");
    c.arg(agent_path())
        .arg("meta-data")
        .env("OCF_RESKEY_binary", &bin)
        .env("OCF_RESKEY_device", &dev)
        .env("OCF_RESKEY_hostid", "0x1234");
    let o = run(c, Duration::from_secs(T_SHORT));
    o.expect(0, "meta-data");
    assert_eq!(o.stderr, "", "meta-data wrote to stderr\n{}", o.show());
    assert!(!marker.exists(), "meta-data ran {}", bin.display());
    assert!(
        o.stdout.contains("mmp status --json") && o.stdout.contains("takeover_wait_ms"),
        "meta-data lost words\n{}",
        o.show()
    );
    // xmllint resolves the DOCTYPE's "ra-api-1.dtd" next to the document.
    fs::write(tmp.path().join("meta.xml"), &o.stdout).expect("write meta-data");
    fs::copy(&dtd, tmp.path().join("ra-api-1.dtd")).expect("copy dtd");
    let mut c = Command::new(xmllint);
    c.args(["--noout", "--dtdvalid", "ra-api-1.dtd", "meta.xml"])
        .current_dir(tmp.path());
    let x = run(c, Duration::from_secs(T_SHORT));
    x.expect(0, "xmllint --dtdvalid");
    assert_eq!(x.stderr, "", "xmllint complained\n{}", x.show());

    // validate-all does what the meta-data says: it reports the start timeout this device
    // needs, derived from `status --json`.
    let j = mmp_run(&["status", "--json", s(&dev)], T_SHORT);
    j.expect(0, "status --json");
    let ms = super::cli::json(j.stdout.trim())
        .get("takeover_wait_ms")
        .expect("takeover_wait_ms")
        .u();
    // The agent's arithmetic: (ms * 5 / 4 + 999) / 1000 + 30.
    let need = (ms * 5 / 4).div_ceil(1000) + 30;
    let mut c = Command::new("sh");
    c.arg(agent_path())
        .arg("validate-all")
        .env("OCF_RESKEY_binary", mmp_bin())
        .env("OCF_RESKEY_device", &dev)
        .env("OCF_RESKEY_hostid", "0x1234");
    let v = run(c, Duration::from_secs(T_SHORT));
    v.expect(0, "validate-all");
    let all = format!("{}{}", v.stdout, v.stderr);
    assert!(
        all.contains(&format!("start timeout must be at least {need} s")),
        "validate-all does not report the start timeout ({need} s)\n{}",
        v.show()
    );
}

// ----- 3. a closed stdout or stderr is not a panic -------------------------------------------

/// Runs `mmp ARGS` with stdout and/or stderr a pipe whose reader is gone; returns the exit
/// code and whatever stderr said (when open).
fn with_closed(args: &[&str], close_out: bool, close_err: bool) -> (Option<i32>, String) {
    let mut child = mmp(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mmp");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let out_reader = if close_out {
        drop(out);
        None
    } else {
        Some(std::thread::spawn(move || {
            let mut v = Vec::new();
            let mut out = out;
            let _ = out.read_to_end(&mut v);
        }))
    };
    let err_reader = if close_err {
        drop(err);
        None
    } else {
        Some(std::thread::spawn(move || {
            let mut v = String::new();
            let mut err = err;
            let _ = err.read_to_string(&mut v);
            v
        }))
    };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "mmp {args:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(r) = out_reader {
        let _ = r.join();
    }
    let text = err_reader.map_or_else(String::new, |r| r.join().unwrap_or_default());
    (status.code(), text)
}

#[test]
fn closed_stdout_or_stderr_is_never_a_panic() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    // More output than a pipe buffers, so the writes meet the closed pipe whatever the timing.
    let many: Vec<&str> = std::iter::once("status")
        .chain(std::iter::repeat_n(s(&dev), 600))
        .collect();
    let (code, err) = with_closed(&many, true, false);
    assert_eq!(code, Some(0), "status with stdout closed: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let mut json = many.clone();
    json.insert(1, "--json");
    let (code, err) = with_closed(&json, true, false);
    assert_eq!(code, Some(0), "status --json with stdout closed: {err}");
    assert!(!err.contains("panicked"), "{err}");

    let (code, err) = with_closed(&["dump", s(&dev)], true, false);
    assert_eq!(code, Some(0), "dump with stdout closed: {err}");
    let (code, err) = with_closed(&["--help"], true, false);
    assert_eq!(code, Some(0), "--help with stdout closed: {err}");

    // Errors go to stderr: a closed stderr keeps the documented exit code (2), not 101.
    let missing = tmp.path().join("missing");
    let errs: Vec<&str> = std::iter::once("status")
        .chain(std::iter::repeat_n(s(&missing), 2000))
        .collect();
    let (code, _) = with_closed(&errs, false, true);
    assert_eq!(
        code,
        Some(2),
        "status of missing devices with stderr closed"
    );
    let (code, _) = with_closed(&errs, true, true);
    assert_eq!(code, Some(2), "status with both closed");
}

// ----- 4. `mmp run` and the terminal ----------------------------------------------------------

/// `script -qec COMMAND /dev/null`: COMMAND on a new pseudo-terminal, its output on stdout,
/// our writes to stdin typed on that terminal.
struct Pty {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Pty {
    fn spawn(command: &str) -> Pty {
        let mut child = Command::new(find_tool("script").expect("script"))
            .args(["-qec", command, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env_remove("MMP_HOSTID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script");
        let output = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let o = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut r = r;
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    o.lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Pty { child, output }
    }

    fn text(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        let t = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                t.elapsed() < limit,
                "no {needle:?} within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("type");
        stdin.flush().expect("flush");
    }

    fn exit(mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("still running after {limit:?}:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn run_gives_its_command_the_terminal() {
    if find_tool("script").is_none() {
        skip("script not found (bsdutils/util-linux)");
        return;
    }
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let run_cmd = |script: &str| {
        format!(
            "'{}' --hostid {A} --nodename hostA run --no-realtime '{}' -- sh -c '{script}'",
            mmp_bin().display(),
            dev.display()
        )
    };
    let clean = || {
        let o = mmp_run(&["status", s(&dev)], T_SHORT);
        o.expect(0, "released clean");
    };

    // The command reads the terminal (before: stopped by SIGTTIN, and mmp waited forever).
    let mut p = Pty::spawn(&run_cmd("read x; echo got:$x"));
    p.wait_for("acquired", Duration::from_secs(T_SHORT));
    p.type_in(b"hello\n");
    p.wait_for("got:hello", Duration::from_secs(10));
    let text = p.text();
    assert_eq!(p.exit(Duration::from_secs(10)), Some(0), "{text}");
    clean();

    // Ctrl-C reaches the command as SIGINT; run exits 130 once it released.
    let mut p = Pty::spawn(&run_cmd("echo ready:$$; exec sleep 30"));
    p.wait_for("ready:", Duration::from_secs(T_SHORT));
    std::thread::sleep(Duration::from_millis(200));
    let text = p.text();
    let pid: String = text
        .split("ready:")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    p.type_in(b"\x03");
    p.wait_for("released", Duration::from_secs(10));
    let text = p.text();
    assert_eq!(p.exit(Duration::from_secs(10)), Some(130), "{text}");
    assert!(!pid.is_empty(), "{text}");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the command (pid {pid}) outlived run:\n{text}"
    );
    clean();

    // A missing command: 127, released; mmp's own lines on stderr, stdout left to the
    // command.
    let o = mmp_run(
        &[
            "--hostid",
            A,
            "run",
            "--no-realtime",
            s(&dev),
            "--",
            "/nonexistent/command",
        ],
        T_SHORT,
    );
    o.expect(127, "run of a missing command");
    assert_eq!(o.stdout, "", "{}", o.show());
    // Said before anything is claimed: the area is not touched.
    assert_eq!(
        o.stderr.trim(),
        "mmp: cannot run /nonexistent/command: no such file; nothing was acquired",
        "{}",
        o.show()
    );
    let before = std::fs::read(&dev).expect("read area");
    // A name not in PATH (127) and a file that is not executable (126): the same.
    let text = tmp.path().join("not-executable");
    std::fs::write(&text, "echo hi\n").expect("write");
    for (cmd, code, why) in [
        ("mmp-no-such-command-here", 127, "command not found in PATH"),
        (s(&text), 126, "not an executable file"),
    ] {
        let o = mmp_run(
            &["--hostid", A, "run", "--no-realtime", s(&dev), "--", cmd],
            T_SHORT,
        );
        o.expect(code, "run of a command that cannot run");
        assert!(o.stderr.contains(why), "{}", o.show());
        assert!(!o.stderr.contains("os error"), "{}", o.show());
        assert!(!o.stderr.contains("mmp: acquired"), "{}", o.show());
    }
    assert_eq!(
        std::fs::read(&dev).expect("read area"),
        before,
        "nothing written for a command that cannot run"
    );
    clean();
}

/// The sequence of a native area (it moves while a holder heartbeats).
fn seq_of(dev: &Path) -> u64 {
    native_record(dev).seq
}

/// Ctrl-Z under `mmp run` in an interactive shell: the command stops and the shell gets its
/// job back ("Stopped"), the heartbeat goes on meanwhile; `fg` gives the command the terminal
/// again, and it reads it.
#[test]
fn run_ctrl_z_stops_the_command_not_the_heartbeat() {
    if find_tool("script").is_none() || find_tool("bash").is_none() {
        skip("script or bash not found");
        return;
    }
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let mut p = Pty::spawn("bash --norc --noprofile -i");
    p.type_in(b"PS1='$ '; echo shell-ready\n");
    p.wait_for("shell-ready", Duration::from_secs(T_SHORT));
    let cmd = format!(
        "'{}' --hostid {A} --nodename hostA run --no-realtime '{}' -- sh -c 'read x; echo got:$x'\n",
        mmp_bin().display(),
        dev.display()
    );
    p.type_in(cmd.as_bytes());
    p.wait_for("mmp: acquired", Duration::from_secs(T_SHORT));
    std::thread::sleep(Duration::from_millis(300));
    p.type_in(b"\x1a");
    p.wait_for("Stopped", Duration::from_secs(10));
    // Stopped, and still held: the sequence moves.
    let s1 = seq_of(&dev);
    std::thread::sleep(Duration::from_millis(800));
    let s2 = seq_of(&dev);
    assert!(
        s2 > s1,
        "no heartbeat while stopped ({s1} -> {s2}):\n{}",
        p.text()
    );
    // The shell has the terminal: it runs commands.
    p.type_in(b"echo shell-$((40+2))\n");
    p.wait_for("shell-42", Duration::from_secs(10));
    p.type_in(b"fg\n");
    std::thread::sleep(Duration::from_millis(300));
    p.type_in(b"hello\n");
    p.wait_for("got:hello", Duration::from_secs(10));
    p.wait_for("mmp: released", Duration::from_secs(10));
    p.type_in(b"echo exit=$?\n");
    p.wait_for("exit=0", Duration::from_secs(10));
    mmp_run(&["status", s(&dev)], T_SHORT).expect(0, "released clean");

    // The stand-in the shell waits for (the job's pid) killed with SIGKILL: the holder stops
    // the command and releases, as for SIGTERM.
    let cmd = format!(
        "'{}' --hostid {A} --nodename hostA run --no-realtime '{}' -- sleep 60\n",
        mmp_bin().display(),
        dev.display()
    );
    p.type_in(cmd.as_bytes());
    p.wait_for("mmp: acquired", Duration::from_secs(T_SHORT));
    std::thread::sleep(Duration::from_millis(300));
    p.type_in(b"\x1a");
    std::thread::sleep(Duration::from_millis(300));
    p.type_in(b"echo job:$(jobs -p):\n");
    p.wait_for("job:", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let text = p.text();
    let pid: i32 = text
        .rsplit("job:")
        .next()
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no job pid in:\n{text}"));
    let stand_in = rustix::process::Pid::from_raw(pid).expect("pid");
    rustix::process::kill_process(stand_in, rustix::process::Signal::KILL).expect("kill");
    let t = Instant::now();
    while mmp_run(&["status", s(&dev)], T_SHORT).code != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not released after the stand-in was killed:\n{}",
            p.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p.type_in(b"exit\n");
    let _ = p.exit(Duration::from_secs(10));
}

// ----- 5. recovery hints work when followed ---------------------------------------------------

/// The command inside the first backticks of `text` that starts with `mmp `, as arguments.
fn hint(text: &str, start: &str) -> Vec<String> {
    let at = text
        .find(&format!("`{start}"))
        .unwrap_or_else(|| panic!("no `{start}...` hint in:\n{text}"));
    let rest = &text[at + 1..];
    let end = rest.find('`').expect("closing backtick");
    rest[..end]
        .split_whitespace()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

fn mmp_args(args: &[String], cwd: &Path) -> Out {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = mmp(&v);
    c.current_dir(cwd);
    run(c, Duration::from_secs(T_SHORT))
}

#[test]
fn corrupt_native_record_hints_work() {
    let tmp = tmpdir();
    let dev = area(
        tmp.path(),
        "a.img",
        &["--interval-ms", "200", "--fail-intervals", "5"],
    );
    let before = native_record(&dev);
    // A bad checksum (a torn write): one flipped byte inside the record.
    let mut b = read_at(&dev, 0, native::RECORD_LEN);
    b[0x60] ^= 0x5a;
    write_at(&dev, 0, &b);
    let h = hash_file(&dev);
    let o = mmp_run(&["--hostid", A, "hold", "--no-realtime", s(&dev)], T_SHORT);
    o.expect(2, "hold on a corrupt record");
    assert_eq!(hash_file(&dev), h, "hold wrote to a corrupt record");
    let fix = hint(&o.stderr, "mmp clear --force");
    mmp_args(&fix, tmp.path()).expect(0, "the hint of hold (clear --force)");
    let r = native_record(&dev);
    assert_eq!(
        (r.state, r.interval_ms, r.fail_intervals, r.area_id),
        (native::State::Clean, 200, 5, before.area_id),
        "clear --force keeps the area's parameters"
    );
    let mut p = hold(A, "hostA", &["--no-realtime"], &dev);
    p.wait_line("acquired", Duration::from_secs(T_SHORT));
    p.term(Duration::from_secs(T_SHORT))
        .expect(0, "hold after the repair");

    // A version this mmp does not know: clear must not rewrite it; the hint names format.
    let mut b = read_at(&dev, 0, native::RECORD_LEN);
    b[native::field::VERSION].copy_from_slice(&99u16.to_le_bytes());
    let crc = mmp_core::crc32c::crc32c(&b[..native::field::CHECKSUM.start]);
    b[native::field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    write_at(&dev, 0, &b);
    let h = hash_file(&dev);
    let o = mmp_run(&["--hostid", A, "hold", "--no-realtime", s(&dev)], T_SHORT);
    o.expect(2, "hold on a newer version");
    let fix = hint(&o.stderr, "mmp format --force");
    let c = mmp_run(&["clear", "--force", s(&dev)], T_SHORT);
    c.expect(2, "clear --force on a newer version");
    assert!(c.stderr.contains("mmp format --force"), "{}", c.show());
    assert_eq!(hash_file(&dev), h, "clear rewrote a newer version");
    mmp_args(&fix, tmp.path()).expect(0, "the hint of hold (format --force)");
    mmp_run(&["status", s(&dev)], T_SHORT).expect(0, "clean after format --force");
}

// ----- 8. disable --force and a live block ------------------------------------------------------

#[test]
fn disable_force_refuses_a_live_block() {
    if find_tool("mke2fs").is_none() {
        skip("mke2fs not found");
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    mkfs_mmp(&img, "8M", &[]);
    let mut h = hold(A, "hostA", &["--no-realtime"], &img);
    h.wait_line("acquired", Duration::from_secs(60));
    let sum = hash_file(&img);
    let o = mmp_run(&["--hostid", A, "disable", "--force", s(&img)], 40);
    o.expect(1, "disable --force under a live holder");
    assert!(o.stderr.contains("changed while watched"), "{}", o.show());
    // Still MMP: status reads the holder's block (1: active), not "MMP not enabled" (2).
    mmp_run(&["status", s(&img)], T_SHORT).expect(1, "MMP still enabled");
    assert_ne!(hash_file(&img), sum, "the holder kept writing");
    // The admin who knows better says so twice.
    mmp_run(
        &["--hostid", A, "disable", "--force", "--force", s(&img)],
        T_SHORT,
    )
    .expect(0, "disable --force --force");
    h.kill9();
    mmp_run(&["status", s(&img)], T_SHORT).expect(2, "MMP off");

    // A holder that crashed leaves a silent block: --force takes it after the watch.
    let img2 = tmp.path().join("f.img");
    mkfs_mmp(&img2, "8M", &[]);
    let mut h = hold(A, "hostA", &["--no-realtime"], &img2);
    h.wait_line("acquired", Duration::from_secs(60));
    h.kill9();
    let o = mmp_run(&["--hostid", A, "disable", "--force", s(&img2)], 40);
    o.expect(0, "disable --force on a silent block");
}

// ----- 9. one device under two names ------------------------------------------------------------

#[test]
fn same_device_twice_is_refused() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "f.img", &["--interval-ms", "100"]);
    std::os::unix::fs::symlink(&dev, tmp.path().join("link")).expect("symlink");
    let h = hash_file(&dev);
    for other in ["./f.img", "link"] {
        let mut c = mmp(&["--hostid", A, "hold", "--no-realtime", "f.img", other]);
        c.current_dir(tmp.path());
        let o = run(c, Duration::from_secs(T_SHORT));
        o.expect(2, "hold f.img twice");
        assert!(o.stderr.contains("same device"), "{}", o.show());
        assert!(!o.stderr.contains("another host"), "{}", o.show());
        assert_eq!(hash_file(&dev), h, "nothing written");
    }
}

// ----- 6, 7: mount and umount on loop devices (root) --------------------------------------------

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

/// A kernel mount, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let mut c = tool("umount");
        c.arg(&self.0);
        let _ = run(c, Duration::from_secs(60));
    }
}

#[test]
fn loop_mount_of_an_ext4_mounted_here_says_so() {
    if !loop_ready() {
        return;
    }
    let tmp = tmpdir();
    let img = tmp.path().join("e.img");
    mkfs_mmp(&img, "32M", &[]);
    let Some(lo) = Loop::attach(&img) else { return };
    let (d1, d2) = (tmp.path().join("m1"), tmp.path().join("m2"));
    fs::create_dir_all(&d1).expect("m1");
    fs::create_dir_all(&d2).expect("m2");
    let mut c = tool("mount");
    c.args(["-t", "ext4"]).arg(&lo.dev).arg(&d1);
    run(c, Duration::from_secs(60)).expect(0, "kernel mount");
    let _m = Mounted(d1.clone());
    let o = mmp_run(&["--hostid", A, "mount", s(&lo.dev), s(&d2)], 30);
    o.expect(1, "mmp mount of a device mounted here");
    assert!(o.stderr.contains("mounted on this host"), "{}", o.show());
    assert!(!o.stderr.contains("another node"), "{}", o.show());
    assert!(
        o.elapsed < Duration::from_secs(3),
        "took {:?}: it watched instead of saying so at once",
        o.elapsed
    );
}

#[test]
fn loop_umount_by_device_releases_the_holder() {
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
    let m = |args: &[&str]| {
        let mut c = mmp(args);
        c.env("MMP_RUN_DIR", &rd);
        run(c, Duration::from_secs(30))
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
    m(&mount).expect(0, "mmp mount");
    let pid_of = || -> i32 {
        let st = fs::read_dir(&rd)
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
    };
    let holder = pid_of();
    // umount(8) accepts the device: so does mmp umount, and it stops the holder.
    let o = m(&["umount", s(&lo.dev)]);
    o.expect(0, "mmp umount DEVICE");
    assert!(o.stdout.contains("released"), "{}", o.show());
    let holder_gone = |pid: i32| {
        !Path::new(&format!("/proc/{pid}")).exists()
            || fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    };
    assert!(holder_gone(holder), "the holder (pid {holder}) still runs");

    // The data mounted a second time on this host: `mmp umount DIR` unmounts DIR, says the
    // other mount keeps the device held (exit 1) instead of waiting for a holder that will
    // not release under a mount; once that mount is gone, `mmp umount DEVICE` releases.
    m(&mount).expect(0, "mmp mount for the second mount");
    let holder = pid_of();
    let second = tmp.path().join("second");
    fs::create_dir_all(&second).expect("mkdir");
    let mut c = tool("mount");
    c.args(["-t", "ext4"]).arg(&lo.dev).arg(&second);
    run(c, Duration::from_secs(60)).expect(0, "second kernel mount");
    let o = m(&["umount", s(&dir)]);
    o.expect(1, "mmp umount while the data is mounted elsewhere too");
    assert!(o.stderr.contains("still mounted at"), "{}", o.show());
    assert!(o.stderr.contains("second"), "{}", o.show());
    assert!(
        o.elapsed < Duration::from_secs(10),
        "it waited {:?}",
        o.elapsed
    );
    assert!(!holder_gone(holder), "the holder must keep the device");
    let mut c = tool("umount");
    c.arg(&second);
    run(c, Duration::from_secs(60)).expect(0, "umount the second mount");
    let o = m(&["umount", s(&lo.dev)]);
    o.expect(0, "mmp umount DEVICE after the other mount is gone");
    assert!(o.stdout.contains("released"), "{}", o.show());
    assert!(holder_gone(holder), "the holder (pid {holder}) still runs");
    mmp_run(&["status", s(&mmp_area)], T_SHORT).expect(0, "area released clean");
    let left: Vec<_> = fs::read_dir(&rd).expect("run dir").flatten().collect();
    assert!(left.is_empty(), "state left behind: {left:?}");

    // A recorded pid that is no longer the holder is left alone.
    m(&mount).expect(0, "mmp mount again");
    let holder = pid_of();
    let mut other = Command::new("sleep").arg("60").spawn().expect("sleep");
    let st = fs::read_dir(&rd)
        .expect("run dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .expect("state")
        .path();
    let body = fs::read_to_string(&st).expect("state");
    fs::write(
        &st,
        body.replace(&format!("pid={holder}"), &format!("pid={}", other.id())),
    )
    .expect("rewrite state");
    let o = m(&["umount", s(&dir)]);
    o.expect(2, "umount with a pid that is not the holder");
    assert!(o.stderr.contains("no longer running"), "{}", o.show());
    assert!(
        other.try_wait().expect("try_wait").is_none(),
        "mmp umount signalled a process that is not its holder"
    );
    let _ = other.kill();
    let _ = other.wait();
    // The real holder is still there: stop it by hand.
    if let Some(p) = rustix::process::Pid::from_raw(holder) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let t = Instant::now();
    while mmp_run(&["status", s(&mmp_area)], T_SHORT).code != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "holder did not release"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The holder of `mmp mount` keeps a state file (`--state-file`, schema 1): `ready` while it
/// holds, `ended` with its exit status after; `mmp umount` decides from it (exit 3 after a
/// loss), not from the holder's log text.
#[test]
fn loop_umount_after_a_loss_exits_3_from_the_state_file() {
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
    let m = |args: &[&str]| {
        let mut c = mmp(args);
        c.env("MMP_RUN_DIR", &rd);
        run(c, Duration::from_secs(30))
    };
    m(&[
        "--hostid",
        A,
        "mount",
        "-t",
        "ext4",
        "--mmp-device",
        s(&mmp_area),
        s(&lo.dev),
        s(&dir),
    ])
    .expect(0, "mmp mount");
    let holder_file = fs::read_dir(&rd)
        .expect("run dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "holder"))
        .expect("a .holder state file");
    let key = |text: &str, k: &str| -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    let text = fs::read_to_string(&holder_file).expect("state file");
    assert_eq!(key(&text, "schema").as_deref(), Some("1"), "{text}");
    assert_eq!(key(&text, "state").as_deref(), Some("ready"), "{text}");
    assert!(
        key(&text, "pid").is_some() && key(&text, "start").is_some(),
        "{text}"
    );
    // Another host forces the area: the holder sees a foreign block and ends (exit 3).
    let t = Instant::now();
    loop {
        let _ = mmp_run(
            &[
                "clear",
                "--force",
                "--hostid",
                B,
                "--nodename",
                "other",
                s(&mmp_area),
            ],
            T_SHORT,
        );
        std::thread::sleep(Duration::from_millis(400));
        let text = fs::read_to_string(&holder_file).unwrap_or_default();
        if key(&text, "state").as_deref() == Some("ended") {
            assert_eq!(key(&text, "exit").as_deref(), Some("3"), "{text}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the holder did not end after foreign writes: {text}"
        );
    }
    let o = m(&["umount", s(&dir)]);
    o.expect(3, "mmp umount after the holder lost");
    assert!(o.stderr.contains("lost"), "{}", o.show());
    let left: Vec<_> = fs::read_dir(&rd).expect("run dir").flatten().collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
}

// ----- lower priority: messages an admin reads ---------------------------------------------------

#[test]
fn admin_messages_are_plain() {
    let tmp = tmpdir();
    let dev = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    // A freshly formatted area names no owner.
    let o = mmp_run(&["status", s(&dev)], T_SHORT);
    o.expect(0, "status of a fresh area");
    assert!(o.stdout.contains("never held"), "{}", o.show());
    assert!(!o.stdout.contains("node ''"), "{}", o.show());
    // A unit where a number is expected gets a hint; nothing is written.
    let h = hash_file(&dev);
    let o = mmp_run(
        &["format", "--force", "--interval-ms", "1s", s(&dev)],
        T_SHORT,
    );
    o.expect(2, "--interval-ms 1s");
    assert!(o.stderr.contains("--interval-ms 1000"), "{}", o.show());
    assert_eq!(hash_file(&dev), h, "nothing written");
    // Ranges in words, not Rust syntax.
    for args in [
        &["format", "--force", "--interval-ms", "50", s(&dev)][..],
        &["format", "--force", "--fail-intervals", "1", s(&dev)][..],
        &["enable", "--interval", "301", s(&dev)][..],
        &["set-interval", "0", s(&dev)][..],
    ] {
        let o = mmp_run(args, T_SHORT);
        o.expect(2, &format!("{args:?}"));
        assert!(!o.stderr.contains("..="), "{}", o.show());
        assert_eq!(hash_file(&dev), h, "nothing written");
    }
}

/// `mmp mount` refuses before anything is written: a data device this host already has
/// mounted outside mmp (exit 1, it would be mounted twice with its first mount unprotected),
/// and the native area itself given as the data device (exit 2, with the `--mmp-device`
/// form). The area is byte for byte unchanged.
#[test]
fn loop_mount_refuses_a_mounted_data_device_and_the_area_itself() {
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
    let m = |args: &[&str]| {
        let mut c = mmp(args);
        c.env("MMP_RUN_DIR", &rd);
        run(c, Duration::from_secs(30))
    };
    let before = fs::read(&mmp_area).expect("area");
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).expect("other");
    let mut c = Command::new("mount");
    c.arg(&lo.dev).arg(&other);
    run(c, Duration::from_secs(30)).expect(0, "plain mount");
    let o = m(&[
        "--hostid",
        A,
        "mount",
        "-t",
        "ext4",
        "--mmp-device",
        s(&mmp_area),
        s(&lo.dev),
        s(&dir),
    ]);
    let mut c = Command::new("umount");
    c.arg(&other);
    run(c, Duration::from_secs(30)).expect(0, "umount");
    o.expect(1, "mmp mount of a data device mounted here");
    assert!(
        o.stderr.contains("already mounted on this host"),
        "{}",
        o.show()
    );
    let o = m(&["--hostid", A, "mount", s(&mmp_area), s(&dir)]);
    o.expect(2, "mmp mount of the area itself");
    assert!(o.stderr.contains("--mmp-device"), "{}", o.show());
    assert_eq!(
        fs::read(&mmp_area).expect("area"),
        before,
        "nothing written"
    );
}

/// A holder's state or status file that cannot be written is an error before anything is
/// written (an agent waiting on it would otherwise wait forever).
#[test]
fn hold_refuses_an_unwritable_state_or_status_file() {
    let tmp = tmpdir();
    let a = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let before = fs::read(&a).expect("area");
    for flag in ["--state-file", "--status-file"] {
        let o = mmp_run(
            &[
                "--hostid",
                A,
                "hold",
                "--no-realtime",
                flag,
                "/nonexistent-dir/x",
                s(&a),
            ],
            T_SHORT,
        );
        o.expect(2, flag);
        assert!(
            o.stderr.contains(flag) && o.stderr.contains("nothing was written"),
            "{}",
            o.show()
        );
        assert_eq!(
            fs::read(&a).expect("area"),
            before,
            "{flag}: nothing written"
        );
    }
}

/// `clear --force` of a device this host's own holder heartbeats is refused (exit 1),
/// nothing written, the holder keeps its device.
#[test]
fn clear_refuses_a_device_held_on_this_host() {
    let tmp = tmpdir();
    let a = area(tmp.path(), "a.img", &["--interval-ms", "100"]);
    let mut holder = crate::hold_until_acquired("0x7e57c21", "clear-here", &a);
    let o = mmp_run(
        &[
            "--hostid",
            "0x7e57c21",
            "--nodename",
            "clear-here",
            "clear",
            "--force",
            s(&a),
        ],
        T_SHORT,
    );
    o.expect(1, "clear --force of a device held here");
    assert!(o.stderr.contains("already held here"), "{}", o.show());
    // `check` says so at once as well, instead of watching and blaming another node.
    let o = mmp_run(
        &[
            "--hostid",
            "0x7e57c21",
            "--nodename",
            "clear-here",
            "check",
            s(&a),
        ],
        T_SHORT,
    );
    o.expect(1, "check of a device held here");
    assert!(o.stderr.contains("already held here"), "{}", o.show());
    assert!(!o.stderr.contains("another node"), "{}", o.show());
    assert!(
        o.elapsed < Duration::from_secs(1),
        "it watched: {:?}",
        o.elapsed
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mmp_tests::term_and_wait(&mut holder),
        Some(0),
        "the holder kept its device and released it"
    );
}
