//! Real-process regression tests for the protocol's timing rules (issue 12): decisions are
//! timed by when an I/O was issued, never by when its result was handled, and every write
//! but the claim carries a deadline. Each test makes one schedule happen with real `mmp`
//! processes through a targeted fault plan (`delay.<phase>.<read|write>.<before|after>_us`,
//! see `mmp_linux::fault::FaultPlan`): a result handled seconds late, or a write that
//! lands seconds after it was decided. Each failed before the fix in `mmp_core::machine`.
//!
//! They use image files (no root needed) and the debug `mmp` binary, which honours
//! `MMP_FAULT_PLAN`.

use crate::race::{intervals, overlaps};
use mmp_core::format::native::{self, Record, State};
use rustix::process::{Pid, Signal, kill_process};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn mmp() -> Command {
    crate::mmp_cmd()
}

/// A native area (4 KiB record area in a 1 MiB file) with this interval and fail intervals.
fn area(dir: &Path, name: &str, interval_ms: u32, fail: u16) -> PathBuf {
    let p = dir.join(name);
    fs::File::create(&p)
        .and_then(|f| f.set_len(1 << 20))
        .expect("create image");
    let out = mmp()
        .args(["format", "--interval-ms", &interval_ms.to_string()])
        .args(["--fail-intervals", &fail.to_string()])
        .arg(&p)
        .output()
        .expect("mmp format");
    assert!(out.status.success(), "{out:?}");
    p
}

fn plan(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write plan");
    p
}

fn record(p: &Path) -> Record {
    let mut f = fs::File::open(p).expect("open area");
    let mut buf = [0u8; native::RECORD_LEN];
    f.read_exact(&mut buf).expect("read area");
    Record::parse(&buf).expect("a valid record")
}

fn put(p: &Path, r: &Record) {
    let mut buf = [0u8; native::RECORD_LEN];
    r.emit(&mut buf);
    let f = fs::OpenOptions::new().write(true).open(p).expect("open");
    f.write_all_at(&buf, 0).expect("write record");
    f.sync_all().expect("sync");
}

/// `mmp --hostid ID --nodename NODE hold --no-realtime [extra] AREA`, stdout and stderr piped.
fn hold(id: u32, area: &Path, plan: Option<&Path>, extra: &[&str]) -> Child {
    let mut c = mmp();
    c.args([
        "--hostid",
        &format!("{id:#x}"),
        "--nodename",
        &format!("h{id}"),
    ])
    .args(["hold", "--no-realtime"])
    .args(extra)
    .arg(area)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(p) = plan {
        c.env("MMP_FAULT_PLAN", p);
    }
    c.spawn().expect("start mmp hold")
}

fn signal(child: &Child, sig: Signal) {
    if let Some(pid) = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) {
        let _ = kill_process(pid, sig);
    }
}

/// Waits for the child with a limit; kills it past the limit. Returns (exit code, stdout,
/// stderr).
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls the area until `pred` holds; `false` after `limit`.
fn poll_until(p: &Path, limit: Duration, pred: impl Fn(&Record) -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if record_opt(p).is_some_and(|r| pred(&r)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn record_opt(p: &Path) -> Option<Record> {
    let mut f = fs::File::open(p).ok()?;
    let mut buf = [0u8; native::RECORD_LEN];
    f.read_exact(&mut buf).ok()?;
    Record::parse(&buf).ok()
}

/// Polls the area until `pred` holds (or panics after `limit`); returns when it first held.
fn wait_for(p: &Path, limit: Duration, what: &str, pred: impl Fn(&Record) -> bool) -> Instant {
    let start = Instant::now();
    loop {
        let mut f = fs::File::open(p).expect("open area");
        let mut buf = [0u8; native::RECORD_LEN];
        if f.read_exact(&mut buf).is_ok()
            && let Ok(r) = Record::parse(&buf)
            && pred(&r)
        {
            return Instant::now();
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmp-timing-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tempdir");
    d
}

/// Bugs 1 and 5: the claim lands at once but its completion is handled 2.5 s late (a slow
/// sibling device in the same batch, a stalled thread). The lease the claim earned runs
/// from when it was issued (claim + 2.25 s wait + 1 s), so by the verify (2.5 + 2.25 s
/// after the claim) it has run out: refused as too late, never `acquired`. Before the fix
/// the lease ran from the handling and `hold` printed `acquired` with a lease 2.5 s too
/// long.
#[test]
fn timing_claim_completion_handled_late_is_not_acquired() {
    let dir = tempdir("claim-late");
    let a = area(&dir, "a.img", 200, 10); // W = 2 s
    let pl = plan(&dir, "p", "delay.claiming.write.after_us = 2500000\n");
    let (code, out, err) = finish(hold(1, &a, Some(&pl), &[]), Duration::from_secs(30));
    assert!(!out.contains("acquired"), "stdout: {out}\nstderr: {err}");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("too slow"), "stderr: {err}");
    let r = record(&a);
    assert_eq!((r.state, r.hostid), (State::Active, 1), "the claim stays");
    let _ = fs::remove_dir_all(&dir);
}

/// Bug 2: every verify read of the claim wait is handled 3 s after it sampled the device.
/// Another host's claim lands 1 s after our claim, after the first poll read sampled the
/// device but before its result is handled (past the end of the wait). A wait ends only by
/// a read requested after it: the machine reads again, sees the other claim and refuses.
/// Before the fix the stale result passed the verify and `hold` printed `acquired`.
#[test]
fn timing_verify_read_handled_late_sees_a_later_claim() {
    let dir = tempdir("verify-late");
    let a = area(&dir, "a.img", 200, 10);
    let pl = plan(&dir, "p", "delay.claiming.read.after_us = 3000000\n");
    let child = hold(1, &a, Some(&pl), &[]);
    let t0 = wait_for(&a, Duration::from_secs(10), "our claim", |r| {
        r.state == State::Active && r.hostid == 1
    });
    std::thread::sleep(Duration::from_millis(1000).saturating_sub(t0.elapsed()));
    let mut other = record(&a);
    assert_eq!(
        other.hostid, 1,
        "still our claim before the other host writes"
    );
    other.hostid = 2;
    other.seq = other.seq.wrapping_add(0x1_0000_0000);
    other.nodename = [0; 64];
    other.nodename[..2].copy_from_slice(b"h2");
    put(&a, &other);
    let (code, out, err) = finish(child, Duration::from_secs(30));
    assert!(!out.contains("acquired"), "stdout: {out}\nstderr: {err}");
    assert_eq!(code, Some(1), "stderr: {err}");
    assert!(err.contains("at the same time"), "stderr: {err}");
    assert_eq!(record(&a).hostid, 2, "the other claim is left alone");
    let _ = fs::remove_dir_all(&dir);
}

/// Bug 3: an acquire abandoned during its claim wait (SIGTERM) re-reads to restore the
/// CLEAN record it replaced; that read's result is handled 3 s late, long past the
/// restore's deadline. Nothing is written: our claim stays (a stale live record that others
/// take only after the full watch). Before the fix the CLEAN was written 3 s late, whatever
/// another host had done meanwhile (in a real run: over a host that had owned the device
/// for 7 s, letting a third take it at once).
#[test]
fn timing_restore_handled_late_writes_nothing() {
    let dir = tempdir("restore-late");
    let a = area(&dir, "a.img", 200, 10);
    let pl = plan(&dir, "p", "delay.releasing.read.after_us = 3000000\n");
    let child = hold(1, &a, Some(&pl), &[]);
    wait_for(&a, Duration::from_secs(10), "our claim", |r| {
        r.state == State::Active && r.hostid == 1
    });
    std::thread::sleep(Duration::from_millis(150));
    signal(&child, Signal::TERM);
    let (_code, out, err) = finish(child, Duration::from_secs(30));
    assert!(!out.contains("acquired"), "stdout: {out}\nstderr: {err}");
    let r = record(&a);
    assert_eq!(
        (r.state, r.hostid),
        (State::Active, 1),
        "a late restore must not write CLEAN; stderr: {err}"
    );

    // Without the delay the restore is in time and puts the CLEAN record back.
    let b = area(&dir, "b.img", 200, 10);
    let child = hold(1, &b, None, &[]);
    wait_for(&b, Duration::from_secs(10), "our claim", |r| {
        r.state == State::Active && r.hostid == 1
    });
    std::thread::sleep(Duration::from_millis(150));
    signal(&child, Signal::TERM);
    let (_code, _out, err) = finish(child, Duration::from_secs(30));
    assert_eq!(record(&b).state, State::Clean, "restored; stderr: {err}");
    let _ = fs::remove_dir_all(&dir);
}

/// Bug 4: a release's CLEAN is decided within the lease but lands 10.5 s later (a write
/// stuck in a multipath queue). Meanwhile B takes the stale device over with `--force` and
/// is then frozen (SIGSTOP) with its lease running; A's late CLEAN lands over B's record.
/// C, starting on that CLEAN, did not watch a release happen: it must wait out a fail window
/// before owning, so it cannot own while B's lease runs. The owner logs of all three prove
/// no two ownership intervals overlap. Before the fix C owned 0.4 s after the late CLEAN,
/// a second inside B's lease.
#[test]
fn timing_late_release_clean_is_not_trusted() {
    let dir = tempdir("late-clean");
    let a_img = area(&dir, "a.img", 200, 20); // W = 4 s
    let log = dir.join("owners.log");
    let log_arg = log.to_string_lossy().into_owned();
    let pl = plan(&dir, "p", "delay.releasing.write.before_us = 10500000\n");
    let mut a = hold(1, &a_img, Some(&pl), &["--owner-log", &log_arg]);
    let mut line = String::new();
    BufReader::new(a.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("acquired"), "A: {line:?}");
    signal(&a, Signal::TERM);
    let released_at = Instant::now();
    // B watches A's (now silent) record and takes it over; freeze B at once.
    let mut b = hold(2, &a_img, None, &["--force", "--owner-log", &log_arg]);
    let mut line = String::new();
    BufReader::new(b.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("acquired"), "B: {line:?}");
    signal(&b, Signal::STOP);
    let b_acquired = released_at.elapsed();
    assert!(
        b_acquired < Duration::from_millis(10_300),
        "B must own before A's CLEAN lands (took {b_acquired:?})"
    );
    // A's CLEAN lands over B's record.
    if !poll_until(&a_img, Duration::from_secs(20), |r| r.state == State::Clean) {
        let _ = b.kill();
        let (_, a_out, a_err) = finish(a, Duration::from_secs(1));
        let (_, _, b_err) = finish(b, Duration::from_secs(1));
        panic!(
            "A's late CLEAN never landed ({:?}); A: {a_out}{a_err}\nB: {b_err}",
            record(&a_img)
        );
    }
    let c = hold(3, &a_img, None, &["--owner-log", &log_arg]);
    // Long enough for C to own under either rule, then let B see what happened.
    std::thread::sleep(Duration::from_secs(6));
    signal(&b, Signal::CONT);
    std::thread::sleep(Duration::from_millis(500));
    for p in [&b, &c] {
        signal(p, Signal::TERM);
    }
    let (_, a_out, a_err) = finish(a, Duration::from_secs(20));
    let (_, _, b_err) = finish(b, Duration::from_secs(20));
    let (_, c_out, c_err) = finish(c, Duration::from_secs(20));
    assert!(
        c_out.contains("acquired"),
        "C must own in the end (liveness): {c_err}"
    );
    let text = fs::read_to_string(&log).expect("owner log");
    let iv = intervals(&text).expect("owner log parses");
    let bad = overlaps(&iv);
    assert!(
        bad.is_empty(),
        "{}\nA: {a_out}{a_err}\nB: {b_err}\nC: {c_err}\nlog:\n{text}",
        bad.join("\n")
    );
    let _ = fs::remove_dir_all(&dir);
}

/// `hold --wait` queues behind a live owner instead of refusing, takes the device when the
/// owner releases it (a watched release: two intervals plus the owner's advertised delay,
/// not a fail window), and `--wait=SECONDS` gives up with exit 1.
#[test]
fn timing_wait_queues_behind_a_live_owner() {
    let dir = tempdir("wait");
    let a_img = area(&dir, "a.img", 100, 20); // W = 2 s: a long wait would take 2.25 s
    let mut a = hold(1, &a_img, None, &[]);
    let mut line = String::new();
    BufReader::new(a.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert!(line.starts_with("acquired"), "A: {line:?}");
    // A bounded wait on a live owner gives up.
    let t = Instant::now();
    let (code, out, err) = finish(
        hold(3, &a_img, None, &["--wait=1"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("gave up waiting"), "{err}");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    // A queued standby.
    let mut b = hold(2, &a_img, None, &["--wait"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        b.try_wait().expect("try_wait").is_none(),
        "B must keep waiting"
    );
    signal(&a, Signal::TERM);
    // A's release, or already B's claim over it (a busy test thread may miss the CLEAN
    // record between the two).
    let released = wait_for(&a_img, Duration::from_secs(20), "A's release", |r| {
        r.state == State::Clean || r.hostid == 2
    });
    let mut line = String::new();
    BufReader::new(b.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let took = released.elapsed();
    assert!(line.starts_with("acquired"), "B: {line:?}");
    assert!(
        took < Duration::from_millis(2000),
        "a watched release is taken after the short claim wait, took {took:?}"
    );
    signal(&b, Signal::TERM);
    let (code, _, err) = finish(b, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    // The claim wait it announced: the short one (2 × (I + D)), not a fail window and an
    // eighth (2.25 s).
    let wait: f64 = err
        .split("verifying nobody else claims for ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no claim wait in {err}"));
    assert!(
        wait < 2.0,
        "claim wait {wait} s after a watched release: {err}"
    );
    let _ = finish(a, Duration::from_secs(20));
    // Bad values are errors before anything is written.
    let (code, _, err) = finish(
        hold(3, &a_img, None, &["--wait=-1"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{err}");
    let _ = fs::remove_dir_all(&dir);
}
