//! One slow device does not stall the others (issue 12, item 6).
//!
//! `loop_slow_device_fences_alone`: one `mmp hold X Y` process holds X (an image file) and
//! Y (a loop device), both native areas at 200 ms; Y's fail window is 3 s. Once both are
//! held, the process's block I/O to Y is throttled to 51 bytes per second with the cgroup
//! v1 blkio controller (`blkio.throttle.{read,write}_bps_device`), so each 512-byte request
//! to Y takes about 10 s, for real, in the kernel. Meanwhile:
//!
//! * X keeps beating: its record changes at the interval (sampled from outside), its gaps
//!   stay near 200 ms, and the status file (SIGHUP) shows it held;
//! * Y alone self-fences at the end of its lease while its request is still in flight (well
//!   before the request could complete), and `mmp` reports it lost (exit 3, X released).
//!
//! It runs twice in parallel: with io_uring (the default) and with `MMP_IO=sync` (the I/O
//! threads). It needs root, a loop device and the blkio controller; it skips (a failure
//! under `MMP_TESTS_STRICT=1`) without them.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mmp_core::format::native::Record;
use mmp_linux::blockdev::Device;
use mmp_tests::{Loop, is_root, skip};

const BLKIO: &str = "/sys/fs/cgroup/blkio";
const INTERVAL_MS: u64 = 200;
/// X: 200 ms x 10 = 2 s. Y: 200 ms x 15 = 3 s.
const X_FAIL: u16 = 10;
const Y_FAIL: u16 = 15;
/// Bytes per second for Y: a 512-byte request takes about 10 s.
const THROTTLE_BPS: u64 = 51;

/// A blkio cgroup of its own, removed on drop (its processes go back to the root first).
struct Cgroup {
    dir: PathBuf,
    dev: String,
}

impl Cgroup {
    fn new(name: &str, dev: &Path) -> Option<Cgroup> {
        let root = Path::new(BLKIO);
        if !root.join("blkio.throttle.read_bps_device").exists() {
            skip("no cgroup v1 blkio controller with throttling at /sys/fs/cgroup/blkio");
            return None;
        }
        let rdev = fs::metadata(dev).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.rdev()
        });
        let Ok(rdev) = rdev else {
            skip("cannot stat the loop device");
            return None;
        };
        let dir = root.join(format!("mmp-test-{name}-{}", std::process::id()));
        if let Err(e) = fs::create_dir(&dir) {
            skip(&format!("cannot create {}: {e}", dir.display()));
            return None;
        }
        let dev = format!("{}:{}", libc_major(rdev), libc_minor(rdev));
        Some(Cgroup { dir, dev })
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join the cgroup");
    }

    /// Throttles reads and writes to the device (0: no limit).
    fn throttle(&self, bps: u64) {
        for f in [
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_bps_device",
        ] {
            fs::write(self.dir.join(f), format!("{} {bps}", self.dev)).expect("set the throttle");
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.throttle(0);
        if let Ok(procs) = fs::read_to_string(self.dir.join("cgroup.procs")) {
            for p in procs.split_whitespace() {
                let _ = fs::write(Path::new(BLKIO).join("cgroup.procs"), p);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn libc_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn libc_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

/// A path as it appears in a status line (quoted, so `/dev/loop1` does not match
/// `/dev/loop10`).
fn quoted(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

fn format_native(p: &Path, fail: u16) {
    let out = crate::mmp_cmd()
        .env_remove("MMP_HOSTID")
        .args(["format", "--interval-ms", &INTERVAL_MS.to_string()])
        .args(["--fail-intervals", &fail.to_string()])
        .arg(p)
        .output()
        .expect("mmp format");
    assert!(
        out.status.success(),
        "mmp format {}: {}",
        p.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The native sequence of `p`, read with O_DIRECT (from outside the holder's cgroup).
fn seq_of(dev: &Device) -> Option<u64> {
    let mut buf = [0u8; 512];
    dev.read_at(0, &mut buf).ok()?;
    Record::parse(&buf).ok().map(|r| r.seq)
}

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

fn collect(r: impl std::io::Read + Send + 'static, label: String) -> Lines {
    let lines: Lines = Arc::default();
    let l = Arc::clone(&lines);
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label}] {line}");
            l.lock().unwrap().push((Instant::now(), line));
        }
    });
    lines
}

fn find(lines: &Lines, what: &str) -> Option<Instant> {
    lines
        .lock()
        .unwrap()
        .iter()
        .find(|(_, l)| l.contains(what))
        .map(|(t, _)| *t)
}

struct Killer(Child);

impl Drop for Killer {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn loop_slow_device_fences_alone() {
    if !is_root() {
        skip("the slow-device test needs root (loop devices, cgroups)");
        return;
    }
    let scenarios: [Option<&str>; 2] = [None, Some("sync")];
    thread::scope(|s| {
        let hs: Vec<_> = scenarios
            .iter()
            .map(|&io| s.spawn(move || slow_device(io)))
            .collect();
        let mut first = None;
        for h in hs {
            if let Err(e) = h.join() {
                first.get_or_insert(e);
            }
        }
        if let Some(e) = first {
            std::panic::resume_unwind(e);
        }
    });
}

fn slow_device(io: Option<&str>) {
    let label = match io {
        None => "uring",
        Some(_) => "sync",
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let x = tmp.path().join("x.img");
    let y_img = tmp.path().join("y.img");
    for p in [&x, &y_img] {
        fs::File::create(p)
            .and_then(|f| f.set_len(1 << 20))
            .expect("create image");
    }
    format_native(&x, X_FAIL);
    let Some(y) = Loop::attach(&y_img) else {
        return;
    };
    format_native(&y.dev, Y_FAIL);
    let Some(cg) = Cgroup::new(label, &y.dev) else {
        return;
    };
    let status = tmp.path().join("status.json");
    let mut cmd = crate::mmp_cmd();
    cmd.env_remove("MMP_HOSTID")
        .env_remove("MMP_IO")
        .env_remove("MMP_FAULT_EIO_FILE")
        .env_remove("MMP_FAULT_PLAN");
    if let Some(io) = io {
        cmd.env("MMP_IO", io);
    }
    let mut child = cmd
        .args([
            "--hostid",
            "0x5104",
            "--nodename",
            "slow",
            "hold",
            "--no-realtime",
        ])
        .arg("--status-file")
        .arg(&status)
        .arg(&x)
        .arg(&y.dev)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mmp hold");
    cg.add(child.id());
    let out = collect(child.stdout.take().expect("stdout"), format!("{label} out"));
    let err = collect(child.stderr.take().expect("stderr"), format!("{label} err"));
    let mut child = Killer(child);
    let start = Instant::now();
    while find(&out, "acquired").is_none() || out.lock().unwrap().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "[{label}] not both acquired"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "[{label}] mmp hold exited"
        );
        thread::sleep(Duration::from_millis(10));
    }
    // Let a few heartbeats go by, then make Y slow.
    thread::sleep(Duration::from_millis(600));
    let xdev = Device::open(&x, false).expect("open x");
    let throttled = Instant::now();
    cg.throttle(THROTTLE_BPS);
    // Sample X's record from outside until Y is reported lost (or 12 s: a stalled engine
    // would show X's heartbeats stopping long before).
    let mut last = (Instant::now(), seq_of(&xdev));
    let mut max_gap = Duration::ZERO;
    let mut changes = 0u32;
    let mut hup_sent = false;
    let mut status_mid = String::new();
    let lost_at = loop {
        thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let seq = seq_of(&xdev);
        if seq != last.1 {
            max_gap = max_gap.max(now.saturating_duration_since(last.0));
            last = (now, seq);
            changes += 1;
        }
        // Halfway through Y's lease: a status snapshot (SIGHUP writes the status file).
        if !hup_sent && now.saturating_duration_since(throttled) > Duration::from_millis(1500) {
            let _ = fs::remove_file(&status);
            let _ = Command::new("kill")
                .args(["-HUP", &child.0.id().to_string()])
                .status();
            hup_sent = true;
        }
        if hup_sent && status_mid.is_empty() {
            status_mid = fs::read_to_string(&status).unwrap_or_default();
        }
        if let Some(t) = find(&err, "ownership lost") {
            break t;
        }
        assert!(
            now.saturating_duration_since(throttled) < Duration::from_secs(12),
            "[{label}] Y was not reported lost within 12 s of being throttled; X changed \
             {changes} times, max gap {max_gap:?}"
        );
    };
    let lost_after = lost_at.saturating_duration_since(throttled);
    let sampled = lost_at.saturating_duration_since(throttled);
    eprintln!(
        "[{label}] Y lost {lost_after:?} after the throttle; meanwhile X's record changed \
         {changes} times, largest gap {max_gap:?} (interval {INTERVAL_MS} ms)"
    );
    // Y's loss: the lease (3 s after its last write, which was at most one interval before
    // the throttle) ran out with the request in flight, long before the ~10 s request could
    // complete; and it names Y and the fencing.
    assert!(
        lost_after < Duration::from_secs(6),
        "[{label}] Y lost only after {lost_after:?}"
    );
    let err_text: Vec<String> = err.lock().unwrap().iter().map(|(_, l)| l.clone()).collect();
    let loss_line = err_text
        .iter()
        .find(|l| l.contains("ownership lost"))
        .cloned()
        .unwrap_or_default();
    assert!(
        loss_line.contains("self-fenced"),
        "[{label}] Y self-fenced: {loss_line}"
    );
    assert!(
        loss_line.contains(&y.dev.to_string_lossy().to_string()),
        "[{label}] the loss names Y: {loss_line}"
    );
    assert!(
        !loss_line.contains(&x.to_string_lossy().to_string()),
        "[{label}] X is not lost: {loss_line}"
    );
    // X beat on at its interval the whole time.
    let expected = sampled.as_millis() as u64 / INTERVAL_MS;
    assert!(
        u64::from(changes) + 3 >= expected,
        "[{label}] X's record changed {changes} times in {sampled:?} (expected about {expected})"
    );
    assert!(
        max_gap < Duration::from_millis(INTERVAL_MS + 400),
        "[{label}] X's largest heartbeat gap was {max_gap:?}"
    );
    // The snapshot taken while Y's request was stuck shows X held (Y still within its lease
    // or already fenced, never a stale "held" past it).
    let x_line = status_mid
        .lines()
        .find(|l| l.contains(&quoted(&x)))
        .unwrap_or_default();
    assert!(
        x_line.contains("\"state\":\"held\""),
        "[{label}] X held in the SIGHUP status: {status_mid}"
    );
    // The rest is as for any loss: X released, exit 3. Lift the throttle so that the
    // process's exit does not wait for Y's request.
    cg.throttle(0);
    let end = Instant::now();
    let code = loop {
        if let Some(st) = child.0.try_wait().expect("try_wait") {
            break st.code();
        }
        assert!(
            end.elapsed() < Duration::from_secs(20),
            "[{label}] mmp hold did not exit after the loss"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(3), "[{label}] exit code after a loss");
    let body = fs::read_to_string(&status).expect("final status file");
    let y_line = body
        .lines()
        .find(|l| l.contains(&quoted(&y.dev)))
        .unwrap_or_default();
    assert!(
        y_line.contains("\"state\":\"lost\""),
        "[{label}] Y lost in the final status: {body}"
    );
    let x_line = body
        .lines()
        .find(|l| l.contains(&quoted(&x)))
        .unwrap_or_default();
    assert!(
        x_line.contains("\"state\":\"released\""),
        "[{label}] X released in the final status: {body}"
    );
    let summary = body.lines().last().unwrap_or_default();
    let want_io = if io.is_some() {
        "\"io\":\"sync\""
    } else {
        "\"io\":\"io_uring\""
    };
    assert!(summary.contains(want_io), "[{label}] I/O path: {summary}");
    // X is CLEAN on disk.
    let mut buf = [0u8; 512];
    xdev.read_at(0, &mut buf).expect("read x");
    let rec = Record::parse(&buf).expect("x record");
    assert_eq!(
        rec.state,
        mmp_core::format::native::State::Clean,
        "[{label}] X released clean"
    );
    drop(cg);
}
