//! The `mmp` binary against the Linux kernel's ext4 MMP and e2fsprogs on loop devices
//! (issue 3, "Proven against the real peers", loop tier): root, loop devices and a kernel
//! that mounts ext4 are needed; otherwise each test prints `SKIP: <reason>` and returns.
//!
//! * While the kernel has the image mounted through one loop device (its kmmpd writes the
//!   block every second), `mmp status` and `mmp check` through another loop device exit 1
//!   and name the node and the kernel's device ("loopN"); `status --json` agrees with
//!   `e2mmpstatus -i` on the kernel's block; after unmount, `mmp hold` takes it over.
//! * While `mmp hold` holds the image through one loop device, a kernel mount through
//!   another fails ("Device is already active on another node"), `e2mmpstatus` exits 1
//!   and `e2fsck -fy` refuses; after SIGTERM the block is CLEAN, e2mmpstatus exits 0,
//!   `e2fsck -fn` is clean and the kernel mounts it.
//! * The native flows on a loop device with a 100 ms interval, with timings.
//!
//! The block is always read back through the image file (or another loop device) so that
//! no page cache hides the writer's latest data.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mmp_core::format::ext4::SEQ_CLEAN;
use mmp_tests::{Loop, find_tool, skip};

use super::cli::{
    A, B, J, T_SHORT, assert_agree, assert_reason, e2mmpstatus_i, have_e2fsprogs, hold, json,
    mkfs_mmp, mmp, mmp_block, mmp_run, native_flow, run, tmpdir, tool,
};

/// Whether a loop test can run here (prints `SKIP: <reason>` when not).
fn ready() -> bool {
    if !mmp_tests::is_root() {
        skip("loop tests need root");
        return false;
    }
    for t in ["losetup", "mount", "umount"] {
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

fn mount(dev: &Path, at: &Path) -> super::cli::Out {
    fs::create_dir_all(at).expect("mountpoint");
    let mut c = tool("mount");
    c.args(["-t", "ext4"]).arg(dev).arg(at);
    run(c, Duration::from_secs(60))
}

fn umount(m: Mounted) -> super::cli::Out {
    let mut c = tool("umount");
    c.arg(&m.0);
    std::mem::forget(m);
    run(c, Duration::from_secs(60))
}

fn uname_node() -> String {
    String::from_utf8_lossy(rustix::system::uname().nodename().to_bytes()).into_owned()
}

fn base(p: &Path) -> String {
    p.file_name().expect("name").to_string_lossy().into_owned()
}

/// `mmp status --json DEV` agrees with `e2mmpstatus -i DEV` while a writer updates the block
/// every second: taken when two e2mmpstatus reads around ours agree with each other.
fn agree_live(dev: &Path, what: &str) -> std::collections::BTreeMap<String, J> {
    for _ in 0..20 {
        let e1 = e2mmpstatus_i(dev);
        let out = mmp_run(&["status", "--json", dev.to_str().expect("utf8")], T_SHORT);
        let e2 = e2mmpstatus_i(dev);
        if e1 == e2 {
            out.expect(1, what);
            let j = json(out.stdout.trim());
            assert_agree(what, &j, &e1);
            return j;
        }
    }
    panic!("{what}: the block never held still across two e2mmpstatus reads");
}

/// Kernel log lines stamped at or after `since` (seconds since boot, the printk clock),
/// or `None` when dmesg is not readable here.
fn dmesg_since(since: f64) -> Option<Vec<String>> {
    let out = run(tool("dmesg"), Duration::from_secs(T_SHORT));
    (out.code == Some(0)).then(|| {
        out.stdout
            .lines()
            .filter(|l| {
                l.strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(t, _)| t.trim().parse::<f64>().ok())
                    .is_some_and(|t| t >= since)
            })
            .map(str::to_string)
            .collect()
    })
}

/// Seconds since boot on the clock printk stamps (CLOCK_MONOTONIC, close enough here).
fn boot_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Test 2: the kernel holds it; we see it as active, through another loop device.
#[test]
fn kernel_mount_is_active_for_mmp() {
    if !ready() || !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("k.img");
    mkfs_mmp(&img, "16M", &["-b", "1024"]);
    let (Some(l1), Some(l2)) = (Loop::attach(&img), Loop::attach(&img)) else {
        return;
    };
    let out = mount(&l1.dev, &dir.path().join("m1"));
    if out.code != Some(0) {
        skip(&format!(
            "the kernel cannot mount ext4 with MMP here: {}",
            out.show()
        ));
        return;
    }
    let m1 = Mounted(dir.path().join("m1"));
    assert!(
        out.elapsed < Duration::from_secs(5),
        "a CLEAN block mounts at once\n{}",
        out.show()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let node = uname_node();
    let kdev = base(&l1.dev);
    let d2 = l2.dev.to_str().expect("utf8");

    // status: one read, exit 1, names the kernel's node and device.
    let j = agree_live(&l2.dev, "kernel-mounted block via L2");
    assert_eq!(j["state"].s(), "active");
    assert_eq!(j["node"].s(), node);
    assert_eq!(j["device_name"].s(), kdev);
    assert_eq!(j["update_interval_s"].u(), 1);
    let out = mmp_run(&["status", d2], T_SHORT);
    out.expect(1, "status while the kernel holds it");
    assert!(
        out.stdout.contains(&format!("node '{node}'"))
            && out.stdout.contains(&format!("device '{kdev}'")),
        "{}",
        out.show()
    );
    // The image file says the same.
    mmp_run(&["status", img.to_str().expect("utf8")], T_SHORT).expect(1, "status via the file");

    // check: the activity test sees kmmpd's writes; exit 1 naming node and device.
    let out = mmp_run(&["check", "--hostid", B, "--nodename", "hostB", d2], 30);
    assert_reason(
        &out,
        1,
        "active on another node",
        "check while the kernel holds it",
    );
    assert!(
        out.stderr.contains(&format!("'{node}'")) && out.stderr.contains(&format!("'{kdev}'")),
        "names node and device\n{}",
        out.show()
    );
    assert!(
        out.elapsed < Duration::from_secs(11),
        "activity is seen before the window ends\n{}",
        out.show()
    );

    // hold: refused without --force (another node), and with --force (activity).
    let mut c = mmp(&["hold", "--hostid", B, "--nodename", "hostB"]);
    c.arg(&l2.dev);
    assert_reason(
        &run(c, Duration::from_secs(30)),
        1,
        "last held by another host",
        "hold while mounted",
    );
    let mut c = mmp(&["hold", "--force", "--hostid", B, "--nodename", "hostB"]);
    c.arg(&l2.dev);
    let out = run(c, Duration::from_secs(30));
    assert_reason(
        &out,
        1,
        "active on another node",
        "hold --force while mounted",
    );
    assert_eq!(
        mmp_block(&img).nodename(),
        node.as_bytes(),
        "the refused hold wrote nothing"
    );

    // Unmount: the kernel writes CLEAN; mmp agrees; then mmp takes it over (11 s claim).
    umount(m1).expect(0, "umount");
    let b = mmp_block(&img);
    assert_eq!(b.seq, SEQ_CLEAN, "the kernel's unmount leaves CLEAN");
    let out = mmp_run(&["status", "--json", d2], T_SHORT);
    out.expect(0, "status after umount");
    assert_agree(
        "after umount",
        &json(out.stdout.trim()),
        &e2mmpstatus_i(&l2.dev),
    );
    let t = Instant::now();
    let mut h = hold(A, "hostA", &[], &l2.dev);
    h.wait_line("acquired ", Duration::from_secs(30));
    eprintln!(
        "TIMING ext4 interval 1 (loop): kernel umount -> mmp hold acquired {:.3} s",
        t.elapsed().as_secs_f64()
    );
    let b = mmp_block(&img);
    assert_eq!(b.nodename(), b"hostA");
    assert_eq!(b.bdevname(), d2.as_bytes());
    h.term(Duration::from_secs(T_SHORT)).expect(0, "release");
    assert_eq!(mmp_block(&img).seq, SEQ_CLEAN);
    drop((l1, l2));
}

/// Test 3: we hold it; the kernel and e2fsprogs are kept out, and get it after release.
#[test]
fn mmp_hold_keeps_kernel_and_e2fsprogs_out() {
    if !ready() || !have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("h.img");
    mkfs_mmp(&img, "16M", &["-b", "1024"]);
    let (Some(l1), Some(l2), Some(l3), Some(l4)) = (
        Loop::attach(&img),
        Loop::attach(&img),
        Loop::attach(&img),
        Loop::attach(&img),
    ) else {
        return;
    };
    let mut h = hold(A, "hostA", &[], &l1.dev);
    h.wait_line("acquired ", Duration::from_secs(30));
    let b = mmp_block(&img);
    assert_eq!(
        (b.nodename(), b.bdevname()),
        (&b"hostA"[..], l1.dev.to_str().expect("utf8").as_bytes())
    );
    assert_eq!(b.check_interval, 5, "max(2 * 1, 5)");
    let j = agree_live(&l2.dev, "mmp-held block via L2");
    assert_eq!(j["node"].s(), "hostA");

    let mount_started = boot_seconds() - 1.0;
    let m2 = dir.path().join("m2");
    std::thread::scope(|s| {
        let mnt = s.spawn(|| {
            let out = mount(&l2.dev, &m2);
            if out.code == Some(0) {
                drop(Mounted(m2.clone()));
                panic!("the kernel mounted a device mmp holds\n{}", out.show());
            }
            assert!(
                !out.stderr.contains("unknown filesystem type"),
                "{}",
                out.show()
            );
            assert!(
                out.elapsed >= Duration::from_secs(10),
                "the kernel should fail after its 11 s wait\n{}",
                out.show()
            );
        });
        let e2 = s.spawn(|| {
            let mut c = tool("e2mmpstatus");
            c.arg(&l3.dev);
            let out = run(c, Duration::from_secs(40));
            out.expect(1, "e2mmpstatus while held");
            assert!(
                out.stderr.contains("device currently active") && out.stderr.contains("hostA"),
                "{}",
                out.show()
            );
        });
        let fsck = s.spawn(|| {
            let mut c = tool("e2fsck");
            c.arg("-fy").arg(&l4.dev);
            let out = run(c, Duration::from_secs(60));
            assert!(
                out.code.is_some_and(|c| c != 0),
                "e2fsck -fy must refuse\n{}",
                out.show()
            );
            let all = format!("{}{}", out.stdout, out.stderr);
            assert!(
                all.contains("MMP") && all.contains("device currently active"),
                "{}",
                out.show()
            );
        });
        for t in [mnt, e2, fsck] {
            if let Err(p) = t.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
    if let Some(lines) = dmesg_since(mount_started) {
        let want = format!("(device {})", base(&l2.dev));
        assert!(
            lines.iter().any(
                |l| l.contains(&want) && l.contains("Device is already active on another node")
            ),
            "no kernel refusal for {want} since {mount_started:.1} s:\n{}",
            lines.join("\n")
        );
    } else {
        mmp_tests::skip_optional("dmesg not readable; not checking the kernel's message");
    }
    // The holder is unaffected, and the block is still ours.
    assert_eq!(mmp_block(&img).nodename(), b"hostA");

    // Release: CLEAN, and every peer is happy.
    let t = Instant::now();
    h.term(Duration::from_secs(T_SHORT))
        .expect(0, "release on SIGTERM");
    let b = mmp_block(&img);
    assert_eq!((b.seq, b.nodename()), (SEQ_CLEAN, &b"hostA"[..]));
    let mut c = tool("e2mmpstatus");
    c.arg(&l3.dev);
    let out = run(c, Duration::from_secs(T_SHORT));
    out.expect(0, "e2mmpstatus after release");
    assert!(out.stdout.contains("MMP is clean"), "{}", out.show());
    let mut c = tool("e2fsck");
    c.arg("-fn").arg(&l4.dev);
    run(c, Duration::from_secs(60)).expect(0, "e2fsck -fn after release");
    let out = mount(&l2.dev, &m2);
    out.expect(0, "kernel mount after release");
    let m = Mounted(m2.clone());
    eprintln!(
        "TIMING ext4 interval 1 (loop): mmp release -> kernel mounted {:.3} s (mount itself {:.3} s)",
        t.elapsed().as_secs_f64(),
        out.elapsed.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(1200));
    let j = agree_live(&l3.dev, "kernel block after our release");
    assert_eq!(j["device_name"].s(), base(&l2.dev));
    umount(m).expect(0, "umount");
    assert_eq!(mmp_block(&img).seq, SEQ_CLEAN);
    drop((l1, l2, l3, l4));
}

/// Test 6 on a block device: native format, 100 ms interval.
#[test]
fn native_flows_on_a_loop_device() {
    if !ready() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("n.img");
    fs::write(&img, vec![0u8; 1 << 20]).expect("create");
    let Some(l) = Loop::attach(&img) else { return };
    native_flow(&l.dev, &img, "loop device");
}
