//! `mmp pr` (SCSI persistent reservations), black box. This host has no SCSI subsystem, so
//! only the refusal on devices that are not SCSI is tested here; real PERSISTENT RESERVE
//! I/O runs in the QEMU lab (virtio-scsi pass-through of a tgtd LUN). The library side is
//! unit-tested in `mmp_core::sys::pr` against golden bytes and a simulated device server.

use std::time::Duration;

use crate::cli::{mmp, run, tmpdir};

const NOT_SCSI: &str = "does not support SCSI persistent reservations (not a SCSI device";

#[test]
fn cli_pr_on_a_non_scsi_device_is_a_clear_error() {
    let dir = tmpdir();
    let img = dir.path().join("img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("write image");
    let img_s = img.to_str().expect("utf-8 path");

    let out = run(
        mmp(&["--hostid", "0x1a2b3c4d", "pr", img_s]),
        Duration::from_secs(20),
    );
    out.expect(2, "pr on a regular file");
    assert!(out.stdout.is_empty(), "{}", out.show());
    assert_eq!(
        out.stderr.trim(),
        format!("mmp: {img_s}: this device {NOT_SCSI}: not a block or character device)"),
        "{}",
        out.show()
    );

    // /dev/null: a character device whose driver has no SG_IO (ENOTTY).
    let out = run(mmp(&["pr", "/dev/null"]), Duration::from_secs(20));
    out.expect(2, "pr on /dev/null");
    assert!(out.stderr.contains(NOT_SCSI), "{}", out.show());
    assert!(out.stderr.contains("SG_IO refused"), "{}", out.show());

    // --json: one object per device, also for errors; still exit 2.
    let out = run(
        mmp(&["pr", "--json", img_s, "/dev/null"]),
        Duration::from_secs(20),
    );
    out.expect(2, "pr --json on non-SCSI devices");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.show());
    for l in lines {
        assert!(l.starts_with("{\"device\":"), "{l}");
        assert!(l.contains(NOT_SCSI), "{l}");
        assert!(l.ends_with("\"not_scsi\":true}"), "{l}");
    }
    assert!(out.stderr.is_empty(), "{}", out.show());

    // Nothing was written.
    assert!(
        std::fs::read(&img)
            .expect("read image")
            .iter()
            .all(|&b| b == 0),
        "pr must never write"
    );
}

#[test]
fn cli_pr_bad_key_and_missing_device() {
    let out = run(
        mmp(&["pr", "--key", "0", "/dev/null"]),
        Duration::from_secs(20),
    );
    out.expect(2, "pr --key 0");
    assert!(
        out.stderr.contains("--key 0: not a non-zero"),
        "{}",
        out.show()
    );
    let out = run(mmp(&["pr", "/nonexistent/mmp-pr"]), Duration::from_secs(20));
    out.expect(2, "pr on a missing path");
    assert!(
        out.stderr
            .contains("mmp: /nonexistent/mmp-pr: No such file"),
        "{}",
        out.show()
    );
}

#[test]
fn loop_cli_pr_on_a_loop_device_is_a_clear_error() {
    let dir = tmpdir();
    let img = dir.path().join("img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("write image");
    let Some(lo) = mmp_tests::Loop::attach(&img) else {
        return;
    };
    let dev = lo.dev.to_str().expect("utf-8 path");
    let out = run(mmp(&["pr", dev]), Duration::from_secs(20));
    out.expect(2, "pr on a loop device");
    assert!(
        out.stderr.starts_with(&format!(
            "mmp: {dev}: this device {NOT_SCSI}: SG_IO refused"
        )),
        "{}",
        out.show()
    );
}
