//! Failover integration (issue 7): the OCF agent under ocf-tester, and the mount helper end
//! to end on ext4 with MMP and on XFS with a native MMP partition. Root, loop devices,
//! mount(8), and the tools; each test skips with a printed reason when something is
//! missing.

use crate::mmp_bin;
use mmp_tests::{Loop, find_tool, is_root, skip};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mmp(run_dir: &Path, hostid: &str, node: &str, args: &[&str]) -> Output {
    crate::mmp_cmd()
        .env("MMP_RUN_DIR", run_dir)
        .args(["--hostid", hostid, "--nodename", node])
        .args(args)
        .output()
        .expect("run mmp")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn need(tools: &[&str]) -> Option<Vec<PathBuf>> {
    if !is_root() {
        skip("needs root (loop devices, mount)");
        return None;
    }
    let mut v = Vec::new();
    for t in tools {
        match find_tool(t) {
            Some(p) => v.push(p),
            None => {
                skip(&format!("{t} not installed"));
                return None;
            }
        }
    }
    Some(v)
}

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create image");
    f.set_len(size).expect("size image");
    p
}

fn run_ok(cmd: &mut Command) {
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
}

/// A 64 MiB ext4 image with MMP at update interval 1 s, made with `mke2fs`.
fn ext4_mmp_image(mke2fs: &Path, dir: &Path) -> PathBuf {
    let img = sparse(dir, "fs.img", 64 << 20);
    run_ok(
        Command::new(mke2fs)
            .args([
                "-F",
                "-q",
                "-t",
                "ext4",
                "-O",
                "mmp",
                "-E",
                "mmp_update_interval=1",
            ])
            .arg(&img),
    );
    img
}

fn umount_quiet(dir: &Path) {
    let _ = Command::new("umount").arg(dir).output();
}

/// Runs ocf-tester on the agent against `dev` (hostid 0x1234, this build of mmp, state
/// under `dir`) and asserts that every test passed.
fn ocf_tester_passes(name: &str, dev: &str, dir: &Path) {
    ocf_tester_with(name, dev, dir, &[]);
}

fn agent_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/ocf/mmp")
}

fn ocf_tester_with(name: &str, dev: &str, dir: &Path, extra: &[String]) {
    let tester = find_tool("ocf-tester").expect("ocf-tester");
    let agent = agent_path();
    let mut cmd = Command::new(tester);
    for e in extra {
        cmd.arg("-o").arg(e);
    }
    let o = cmd
        .args([
            "-n",
            name,
            "-o",
            &format!("device={dev}"),
            "-o",
            "hostid=0x1234",
        ])
        .arg("-o")
        .arg(format!("binary={}", mmp_bin().display()))
        .arg("-o")
        .arg(format!("state_dir={}", dir.join("state").display()))
        .arg(agent)
        .output()
        .expect("run ocf-tester");
    assert!(
        o.status.success() && text(&o).contains("passed all tests"),
        "{}",
        text(&o)
    );
}

#[test]
fn loop_ocf_tester_native() {
    let Some(_) = need(&["ocf-tester", "losetup"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = sparse(tmp.path(), "mmp.img", 1 << 20);
    let Some(lo) = Loop::attach(&img) else { return };
    let dev = lo.dev.to_string_lossy().to_string();
    let o = mmp(
        tmp.path(),
        "0x1",
        "n1",
        &["format", "--interval-ms", "100", &dev],
    );
    assert!(o.status.success(), "{}", text(&o));
    ocf_tester_passes("mmp_native", &dev, tmp.path());
    // The tester stops the resource at the end: the block is clean again.
    let o = mmp(tmp.path(), "0x1", "n1", &["status", &dev]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn loop_ocf_tester_ext4() {
    let Some(tools) = need(&["ocf-tester", "losetup", "mke2fs"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = ext4_mmp_image(&tools[2], tmp.path());
    let Some(lo) = Loop::attach(&img) else { return };
    let dev = lo.dev.to_string_lossy().to_string();
    ocf_tester_passes("mmp_ext4", &dev, tmp.path());
    let o = mmp(tmp.path(), "0x1", "n1", &["status", &dev]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "ext4 block handed back CLEAN: {}",
        text(&o)
    );
}

/// An XFS data device and a native MMP area (100 ms), each on a loop device, plus two
/// mount points and a run directory.
struct XfsRig {
    tmp: tempfile::TempDir,
    run: PathBuf,
    data: String,
    area: String,
    mnt1: PathBuf,
    mnt2: PathBuf,
    _loops: (Loop, Loop),
}

impl XfsRig {
    fn new() -> Option<XfsRig> {
        let tools = need(&["losetup", "mkfs.xfs", "mount", "umount"])?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = sparse(tmp.path(), "data.img", 320 << 20);
        let area = sparse(tmp.path(), "mmp.img", 1 << 20);
        run_ok(Command::new(&tools[1]).arg("-q").arg(&data));
        let (ld, lm) = (Loop::attach(&data)?, Loop::attach(&area)?);
        let run = tmp.path().join("run");
        let (mnt1, mnt2) = (tmp.path().join("m1"), tmp.path().join("m2"));
        std::fs::create_dir_all(&mnt1).expect("mkdir");
        std::fs::create_dir_all(&mnt2).expect("mkdir");
        let (data, area) = (
            ld.dev.to_string_lossy().to_string(),
            lm.dev.to_string_lossy().to_string(),
        );
        let o = mmp(
            &run,
            "0x1",
            "n1",
            &["format", "--interval-ms", "100", &area],
        );
        assert!(o.status.success(), "{}", text(&o));
        Some(XfsRig {
            tmp,
            run,
            data,
            area,
            mnt1,
            mnt2,
            _loops: (ld, lm),
        })
    }
}

#[test]
fn loop_mount_xfs_with_native_partition() {
    let Some(x) = XfsRig::new() else { return };
    let (tmp, rd, d, m, mnt1, mnt2) = (&x.tmp, &x.run, &x.data, &x.area, &x.mnt1, &x.mnt2);
    let (m1, m2) = (
        mnt1.to_string_lossy().to_string(),
        mnt2.to_string_lossy().to_string(),
    );
    let _ = tmp;

    let o = mmp(
        rd,
        "0xa1",
        "host-a",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m1],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(mnt1.join("hello"), b"written by host-a\n").expect("write a file");
    // The second host is refused while the first holds it.
    let o = mmp(
        rd,
        "0xb2",
        "host-b",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m2],
    );
    // (On one kernel the data device is mounted "here" already: that refusal comes first,
    // before anything is written.)
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("already mounted on this host"),
        "{}",
        text(&o)
    );
    // The MMP refusal itself names the owner.
    let o = mmp(rd, "0xb2", "host-b", &["hold", "--no-realtime", m]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("host-a"), "names the owner: {}", text(&o));
    // Unmount releases.
    let o = mmp(rd, "0xa1", "host-a", &["umount", &m1]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mmp(rd, "0xb2", "host-b", &["status", m]);
    assert_eq!(o.status.code(), Some(0), "released clean: {}", text(&o));
    // Now the second host mounts and reads the file.
    let o = mmp(
        rd,
        "0xb2",
        "host-b",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m2],
    );
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read_to_string(mnt2.join("hello")).expect("read the file");
    assert_eq!(got, "written by host-a\n");
    let o = mmp(rd, "0xb2", "host-b", &["umount", &m2]);
    assert!(o.status.success(), "{}", text(&o));
    umount_quiet(mnt1);
    umount_quiet(mnt2);
}

/// `mmp list` shows a live `mmp mount` holder with its devices, mount point and pid; after
/// the holder is killed it shows it GONE (exit 1); after `mmp umount` nothing.
#[test]
fn loop_list_shows_the_live_holder() {
    let Some(x) = XfsRig::new() else { return };
    let (rd, d, m, mnt1) = (&x.run, &x.data, &x.area, &x.mnt1);
    let m1 = mnt1.to_string_lossy().to_string();
    let o = mmp(
        rd,
        "0xa1",
        "host-a",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m1],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = mmp(rd, "0xa1", "host-a", &["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let row = out.lines().nth(1).unwrap_or_default().to_owned();
    let abs = std::fs::canonicalize(mnt1).expect("mount point");
    for want in [
        d.as_str(),
        m.as_str(),
        &abs.to_string_lossy(),
        " UTC",
        "alive",
    ] {
        assert!(row.contains(want), "{want} missing in:\n{out}");
    }
    let o = mmp(rd, "0xa1", "host-a", &["list", "--json"]);
    let json = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(json.contains("\"holder\":\"alive\""), "{json}");
    let pid: u32 = json
        .split("\"pid\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {json}"));
    assert!(row.contains(&pid.to_string()), "{out}");
    // The holder dies: listed as GONE, exit 1.
    run_ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    let start = Instant::now();
    let gone = loop {
        let o = mmp(rd, "0xa1", "host-a", &["list"]);
        if o.status.code() == Some(1) || start.elapsed() > Duration::from_secs(10) {
            break o;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    assert!(text(&gone).contains("GONE"), "{}", text(&gone));
    // `mmp umount` unmounts and reports the lost holder (exit 2), leaving nothing listed.
    let o = mmp(rd, "0xa1", "host-a", &["umount", &m1]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = mmp(rd, "0xa1", "host-a", &["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("no mmp mounts recorded"), "{}", text(&o));
    umount_quiet(mnt1);
}

#[test]
fn loop_mount_killed_holder_needs_force_and_waits() {
    let Some(x) = XfsRig::new() else { return };
    let (tmp, rd, d, m, mnt1, mnt2) = (&x.tmp, &x.run, &x.data, &x.area, &x.mnt1, &x.mnt2);
    let (m1, m2) = (
        mnt1.to_string_lossy().to_string(),
        mnt2.to_string_lossy().to_string(),
    );
    let _ = tmp;
    let o = mmp(
        rd,
        "0xa1",
        "host-a",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m1],
    );
    assert!(o.status.success(), "{}", text(&o));
    // Host A dies: its holder is killed and (as with a crashed node) its mount is gone.
    let state = std::fs::read_dir(rd)
        .expect("run dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .expect("state file");
    let body = std::fs::read_to_string(state.path()).expect("state");
    let pid: i32 = body
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .expect("pid")
        .parse()
        .expect("pid number");
    run_ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    umount_quiet(mnt1);
    std::thread::sleep(Duration::from_millis(200));
    // Without --force: refused at once, naming host-a.
    let o = mmp(
        rd,
        "0xb2",
        "host-b",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m2],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    // With --force: waits the window (2 x 10 x 100 ms), then mounts.
    let t = Instant::now();
    let o = mmp(
        rd,
        "0xb2",
        "host-b",
        &["mount", "--force", "-t", "xfs", "--mmp-device", m, d, &m2],
    );
    let took = t.elapsed();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        took >= Duration::from_millis(2000),
        "waited the activity window: {took:?}"
    );
    eprintln!(
        "mount helper takeover after a killed holder: {:.3} s",
        took.as_secs_f64()
    );
    let o = mmp(rd, "0xb2", "host-b", &["umount", &m2]);
    assert!(o.status.success(), "{}", text(&o));
    umount_quiet(mnt2);
}

#[test]
fn loop_mount_ext4_with_mmp() {
    let Some(tools) = need(&["losetup", "mke2fs", "mount", "umount"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = ext4_mmp_image(&tools[1], tmp.path());
    let (Some(l1), Some(l2)) = (Loop::attach(&img), Loop::attach(&img)) else {
        return;
    };
    let (d1, d2) = (
        l1.dev.to_string_lossy().to_string(),
        l2.dev.to_string_lossy().to_string(),
    );
    let rd = tmp.path().join("run");
    let mnt1 = tmp.path().join("m1");
    let mnt2 = tmp.path().join("m2");
    std::fs::create_dir_all(&mnt1).expect("mkdir");
    std::fs::create_dir_all(&mnt2).expect("mkdir");
    let (m1, m2) = (
        mnt1.to_string_lossy().to_string(),
        mnt2.to_string_lossy().to_string(),
    );
    let o = mmp(&rd, "0xa1", "host-a", &["mount", "-t", "ext4", &d1, &m1]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(mnt1.join("hello"), b"ext4 by host-a\n").expect("write");
    // The kernel's kmmpd now heartbeats: the second host (other node name, other loop
    // device) is refused without --force, and with --force after seeing activity.
    let o = mmp(&rd, "0xb2", "host-b", &["mount", "-t", "ext4", &d2, &m2]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = mmp(
        &rd,
        "0xb2",
        "host-b",
        &["mount", "--force", "-t", "ext4", &d2, &m2],
    );
    assert_eq!(o.status.code(), Some(1), "activity seen: {}", text(&o));
    assert!(text(&o).contains("active on another node"), "{}", text(&o));
    let o = mmp(&rd, "0xa1", "host-a", &["umount", &m1]);
    assert!(o.status.success(), "{}", text(&o));
    // After unmount the kernel wrote CLEAN: the second host mounts (claim + verify wait)
    // and reads the file.
    let o = mmp(&rd, "0xb2", "host-b", &["mount", "-t", "ext4", &d2, &m2]);
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read_to_string(mnt2.join("hello")).expect("read");
    assert_eq!(got, "ext4 by host-a\n");
    let o = mmp(&rd, "0xb2", "host-b", &["umount", &m2]);
    assert!(o.status.success(), "{}", text(&o));
    umount_quiet(&mnt1);
    umount_quiet(&mnt2);
}

/// `mmp hold` tells systemd it is ready (Type=notify) once every device is held: the
/// `READY=1` datagram arrives on `$NOTIFY_SOCKET`, after `acquired` and not before.
#[test]
fn systemd_notify_ready_after_acquire() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixDatagram;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dev = sparse(tmp.path(), "mmp.img", 1 << 20);
    let dev_s = dev.to_string_lossy().to_string();
    let rd = tmp.path().join("run");
    let o = mmp(
        &rd,
        "0x1",
        "n1",
        &["format", "--interval-ms", "100", &dev_s],
    );
    assert!(o.status.success(), "{}", text(&o));
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut child = crate::mmp_cmd()
        .env_remove("MMP_HOSTID")
        .env("NOTIFY_SOCKET", &sock_path)
        .args([
            "--hostid",
            "0x77",
            "--nodename",
            "svc",
            "hold",
            "--no-realtime",
            &dev_s,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start mmp hold");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read acquired");
    assert!(line.starts_with("acquired "), "{line}");
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "released cleanly on SIGTERM");
    let o = mmp(&rd, "0x1", "n1", &["status", &dev_s]);
    assert_eq!(o.status.code(), Some(0), "clean after stop: {}", text(&o));
}

/// Runs one action of the OCF agent with these parameters; returns its exit code and output.
fn agent(action: &str, params: &[(&str, &str)], state: &Path) -> (Option<i32>, String) {
    let mut cmd = Command::new("sh");
    cmd.arg(agent_path()).arg(action);
    cmd.env("OCF_RESKEY_hostid", "0x1234")
        .env("OCF_RESKEY_binary", mmp_bin())
        .env("OCF_RESKEY_state_dir", state)
        .env("__OCF_ACTION", action);
    for (k, v) in params {
        cmd.env(format!("OCF_RESKEY_{k}"), v);
    }
    let o = cmd.output().expect("run the agent");
    (o.status.code(), text(&o))
}

/// The agent with a separate MMP area (`mmp_device`) protecting an XFS data device: ocf-tester
/// passes; start holds the area (not the data device), stop releases it; an `mmp_device`
/// that is not a native area is a configuration error; validate-all reports the start
/// timeout the area's takeover wait needs.
#[test]
fn loop_ocf_agent_with_mmp_device() {
    let Some(_) = need(&["ocf-tester"]) else {
        return;
    };
    let Some(rig) = XfsRig::new() else { return };
    let state = rig.tmp.path().join("state");
    ocf_tester_with(
        "mmp_xfs",
        &rig.data,
        rig.tmp.path(),
        &[format!("mmp_device={}", rig.area)],
    );
    let p = [
        ("device", rig.data.as_str()),
        ("mmp_device", rig.area.as_str()),
    ];
    assert_eq!(agent("validate-all", &p, &state).0, Some(0));
    let (code, out) = agent("start", &p, &state);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(agent("monitor", &p, &state).0, Some(0));
    let o = mmp(&rig.run, "0x1", "n1", &["status", &rig.area]);
    assert_eq!(o.status.code(), Some(1), "the area is held: {}", text(&o));
    assert_eq!(agent("stop", &p, &state).0, Some(0));
    assert_eq!(agent("monitor", &p, &state).0, Some(7), "not running");
    let o = mmp(&rig.run, "0x1", "n1", &["status", &rig.area]);
    assert_eq!(o.status.code(), Some(0), "released clean: {}", text(&o));

    // The data device as the MMP area: not a native area.
    let bad = [
        ("device", rig.area.as_str()),
        ("mmp_device", rig.data.as_str()),
    ];
    let (code, out) = agent("validate-all", &bad, &state);
    assert_eq!(code, Some(6), "OCF_ERR_CONFIGURED: {out}");

    // validate-all reports the start timeout the area's takeover wait needs; the meta-data
    // is static text (120 s), whatever the device.
    let o = mmp(&rig.run, "0x1", "n1", &["status", "--json", &rig.area]);
    let json = String::from_utf8_lossy(&o.stdout).to_string();
    let wait: u64 = json
        .split("\"takeover_wait_ms\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .expect("takeover_wait_ms");
    let want = (wait * 5 / 4).div_ceil(1000) + 30;
    let (code, out) = agent("validate-all", &p, &state);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("start timeout must be at least {want} s")),
        "takeover {wait} ms: {out}"
    );
    for params in [&p[..], &[]] {
        let (_, md) = agent("meta-data", params, &state);
        assert!(
            md.contains("<action name=\"start\" timeout=\"120s\"/>"),
            "{md}"
        );
    }
}

/// ext4: after the agent's start (the block handed over CLEAN), monitor reads the block:
/// fine while clean, failed while another node's heartbeat is on it, fine again once that
/// node released it.
#[test]
fn loop_ocf_agent_ext4_monitor_reads_the_block() {
    let Some(tools) = need(&["losetup", "mke2fs"]) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let img = ext4_mmp_image(&tools[1], tmp.path());
    let Some(lo) = Loop::attach(&img) else { return };
    let dev = lo.dev.to_string_lossy().to_string();
    let state = tmp.path().join("state");
    let p = [("device", dev.as_str())];
    let (code, out) = agent("start", &p, &state);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        agent("monitor", &p, &state).0,
        Some(0),
        "clean, handed over"
    );

    let mut other = crate::hold_until_acquired("0x99", "othernode", &lo.dev);
    let (code, out) = agent("monitor", &p, &state);
    assert_eq!(code, Some(1), "another node's heartbeat: failed: {out}");
    assert!(out.contains("othernode"), "{out}");
    assert_eq!(mmp_tests::term_and_wait(&mut other), Some(0));
    assert_eq!(agent("monitor", &p, &state).0, Some(0), "clean again");
    assert_eq!(agent("stop", &p, &state).0, Some(0));
    assert_eq!(agent("monitor", &p, &state).0, Some(7));
}

/// Issue 14 item 1: the holder of `mmp mount --mmp-device AREA DATA DIR` never writes CLEAN
/// while DATA is mounted: SIGTERM (an admin, a stray `kill`) leaves it heartbeating and
/// saying why, another host stays refused, and `mmp umount` (unmount, then stop the holder)
/// releases. `mmp run AREA -- mount ...` warns that its command left a mount behind.
#[test]
fn loop_mount_holder_never_releases_while_mounted() {
    let Some(x) = XfsRig::new() else { return };
    let (rd, d, m, mnt1, mnt2) = (&x.run, &x.data, &x.area, &x.mnt1, &x.mnt2);
    let (m1, m2) = (
        mnt1.to_string_lossy().to_string(),
        mnt2.to_string_lossy().to_string(),
    );
    let o = mmp(
        rd,
        "0xa1",
        "host-a",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m1],
    );
    assert!(o.status.success(), "{}", text(&o));
    let state = std::fs::read_dir(rd)
        .expect("run dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .expect("state file");
    let body = std::fs::read_to_string(state.path()).expect("state");
    let pid: i32 = body
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .expect("pid")
        .parse()
        .expect("pid number");
    run_ok(Command::new("kill").args(["-TERM", &pid.to_string()]));
    std::thread::sleep(Duration::from_millis(1500));
    let alive = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    let log = std::fs::read_to_string(state.path().with_extension("log")).unwrap_or_default();
    assert!(
        alive,
        "the holder must keep the device while the data is mounted: {log}"
    );
    assert!(log.contains("not releasing"), "says why: {log}");
    let o = mmp(rd, "0xb2", "host-b", &["status", m]);
    assert_eq!(o.status.code(), Some(1), "still active: {}", text(&o));
    let o = mmp(
        rd,
        "0xb2",
        "host-b",
        &["mount", "-t", "xfs", "--mmp-device", m, d, &m2],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Unmounting lets the holder (already told to stop) release.
    let o = mmp(rd, "0xa1", "host-a", &["umount", &m1]);
    assert!(o.status.success(), "{}", text(&o));
    let o = mmp(rd, "0xb2", "host-b", &["status", m]);
    assert_eq!(o.status.code(), Some(0), "released clean: {}", text(&o));

    // `run` with a command that leaves the data mounted: a warning (and with --guard, no
    // release until it is unmounted).
    let o = mmp(rd, "0xa1", "host-a", &["run", m, "--", "mount", d, &m1]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("left"), "warns: {}", text(&o));
    umount_quiet(mnt1);
    let mut guarded = crate::mmp_cmd()
        .env_remove("MMP_HOSTID")
        .env("MMP_RUN_DIR", rd)
        .args([
            "--hostid",
            "0xa1",
            "--nodename",
            "host-a",
            "run",
            "--guard",
            d,
            m,
        ])
        .args(["--", "mount", d, &m1])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run --guard");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        guarded.try_wait().expect("try_wait").is_none(),
        "run --guard must hold while the data is mounted"
    );
    let o = mmp(rd, "0xb2", "host-b", &["status", m]);
    assert_eq!(o.status.code(), Some(1), "still active: {}", text(&o));
    umount_quiet(mnt1);
    let t = Instant::now();
    while guarded.try_wait().expect("try_wait").is_none() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = guarded.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o = mmp(rd, "0xb2", "host-b", &["status", m]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "released after the unmount: {}",
        text(&o)
    );
    umount_quiet(mnt2);
}
