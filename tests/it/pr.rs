//! `mmp pr` (SCSI persistent reservations), black box. This host has no SCSI subsystem, so
//! only the refusal on devices that are not SCSI is tested here; real PERSISTENT RESERVE
//! I/O runs in the QEMU lab (virtio-scsi pass-through of a tgtd LUN). The library side is
//! unit-tested in `mmp_linux::pr` against golden bytes and a simulated device server.

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
        assert!(
            l.starts_with("{\"schema\":1,\"kind\":\"pr\",\"device\":"),
            "{l}"
        );
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

/// `mmp pr --release` / `--clear` write (PERSISTENT RESERVE OUT); on a device that cannot
/// take reservations they are a clear error, exit 2, and nothing is written.
#[test]
fn cli_pr_release_and_clear_on_a_non_scsi_device_write_nothing() {
    let dir = tmpdir();
    let img = dir.path().join("img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("write image");
    let img_s = img.to_str().expect("utf-8 path");
    for flag in ["--release", "--clear"] {
        let out = run(
            mmp(&["--hostid", "0x1a2b3c4d", "pr", flag, img_s]),
            Duration::from_secs(20),
        );
        out.expect(2, &format!("pr {flag} on a regular file"));
        assert!(out.stderr.contains(NOT_SCSI), "{}", out.show());
        assert!(!out.stderr.contains("released"), "{}", out.show());
    }
    let out = run(
        mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "pr",
            "--release",
            "--clear",
            img_s,
        ]),
        Duration::from_secs(20),
    );
    out.expect(2, "pr --release --clear");
    assert!(out.stderr.contains("cannot be used with"), "{}", out.show());
    assert!(
        std::fs::read(&img)
            .expect("read image")
            .iter()
            .all(|&b| b == 0),
        "nothing may be written"
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
    assert!(!out.stderr.contains("os error"), "{}", out.show());
}

/// `--fence scsi-pr` on devices that cannot take reservations: a clear error, exit 2,
/// before anything is written to the MMP block.
#[test]
fn cli_fence_on_devices_without_reservations_writes_nothing() {
    let dir = tmpdir();
    let area = dir.path().join("area");
    std::fs::write(&area, vec![0u8; 1 << 20]).expect("write area");
    let area_s = area.to_str().expect("utf-8 path");
    run(
        mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "format",
            "--interval-ms",
            "100",
            area_s,
        ]),
        Duration::from_secs(20),
    )
    .expect(0, "format");
    let before = std::fs::read(&area).expect("read area");

    for cmd in [
        vec!["hold", "--fence", "scsi-pr", area_s],
        vec!["run", "--fence", "scsi-pr", area_s, "--", "true"],
    ] {
        let mut args = vec!["--hostid", "0x1a2b3c4d"];
        args.extend(&cmd);
        let out = run(mmp(&args), Duration::from_secs(20));
        out.expect(2, "--fence on a regular file");
        assert!(
            out.stderr.contains(&format!(
                "mmp: --fence scsi-pr: {area_s}: open for SG_IO: this device {NOT_SCSI}"
            )),
            "{}",
            out.show()
        );
        assert!(out.stderr.contains("nothing was written"), "{}", out.show());
        assert!(!out.stdout.contains("acquired"), "{}", out.show());
        assert_eq!(
            std::fs::read(&area).expect("read area"),
            before,
            "--fence refused: the MMP block must be untouched"
        );
    }

    // Unknown kinds are a usage error.
    let out = run(
        mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "hold",
            "--fence",
            "stonith",
            area_s,
        ]),
        Duration::from_secs(20),
    );
    out.expect(2, "--fence stonith");
    assert!(out.stderr.contains("scsi-pr"), "{}", out.show());
}

/// The reservation key comes from the hostid: on ext4 (which needs no hostid otherwise)
/// `--fence` without one is refused up front, and nothing is written.
#[test]
fn tool_cli_fence_needs_a_hostid() {
    if !crate::cli::have_e2fsprogs() {
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("fs.img");
    crate::cli::mkfs_mmp(&img, "8M", &[]);
    let before = std::fs::read(&img).expect("read image");
    let img_s = img.to_str().expect("utf-8 path");
    for args in [
        vec!["hold", "--fence", "scsi-pr", img_s],
        vec!["run", "--fence", "scsi-pr", img_s, "--", "true"],
    ] {
        let mut cmd = mmp(&args);
        cmd.env("MMP_HOSTID_FILE", dir.path().join("no-hostid"));
        let out = run(cmd, Duration::from_secs(30));
        out.expect(2, "--fence without a hostid");
        assert!(
            out.stderr
                .contains("--fence scsi-pr needs a hostid (the reservation key is derived"),
            "{}",
            out.show()
        );
        assert_eq!(
            std::fs::read(&img).expect("read image"),
            before,
            "nothing written"
        );
    }
    // `mmp mount --fence` of ext4 MMP (no holder stays to keep the reservation).
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let out = run(
        mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "mount",
            "--fence",
            "scsi-pr",
            img_s,
            mnt.to_str().expect("utf-8 path"),
        ]),
        Duration::from_secs(30),
    );
    out.expect(2, "mount --fence of ext4");
    assert!(
        out.stderr.contains("--fence needs a native MMP area"),
        "{}",
        out.show()
    );
    assert_eq!(
        std::fs::read(&img).expect("read image"),
        before,
        "nothing written"
    );
}

/// `mmp mount --cut-io`: a data device that is not a block device, or a kernel without
/// device-mapper, is a clear error (exit 2) before the MMP area is written. (The cut-off
/// itself runs in the lab's guests, whose kernel has dm-mod: `lab/run cut-io-on-loss`.)
#[test]
fn loop_cli_mount_cut_io_refusals_write_nothing() {
    let dir = tmpdir();
    let area = dir.path().join("area");
    let data = dir.path().join("data");
    std::fs::write(&area, vec![0u8; 1 << 20]).expect("write area");
    std::fs::write(&data, vec![0u8; 4 << 20]).expect("write data");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    run(
        mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "format",
            "--interval-ms",
            "100",
            &s(&area),
        ]),
        Duration::from_secs(20),
    )
    .expect(0, "format");
    let before = std::fs::read(&area).expect("read area");
    let mount = |data: &str| {
        let mut cmd = mmp(&[
            "--hostid",
            "0x1a2b3c4d",
            "mount",
            "--cut-io",
            "--mmp-device",
            &s(&area),
            data,
            &s(&mnt),
        ]);
        cmd.env("MMP_RUN_DIR", dir.path().join("run"));
        run(cmd, Duration::from_secs(30))
    };
    let out = mount(&s(&data));
    out.expect(2, "--cut-io on a regular file");
    assert!(out.stderr.contains("not a block device"), "{}", out.show());
    assert_eq!(std::fs::read(&area).expect("read area"), before);

    let Some(lo) = mmp_tests::Loop::attach(&data) else {
        return;
    };
    let out = mount(lo.dev.to_str().expect("utf-8 path"));
    if std::path::Path::new("/dev/mapper/control").exists() {
        // A kernel with device-mapper: the mapping is made; this test only checks refusals.
        eprintln!("skip: this kernel has device-mapper; the refusal is not reachable here");
        let _ = run(mmp(&["umount", &s(&mnt)]), Duration::from_secs(30));
        return;
    }
    // `hold --cut-io NAME=DEVICE` makes the mapping itself: the same refusal.
    let mut hold = mmp(&[
        "--hostid",
        "0x1a2b3c4d",
        "hold",
        "--cut-io",
        &format!("mmp-test={}", lo.dev.display()),
        &s(&area),
    ]);
    hold.env("MMP_RUN_DIR", dir.path().join("run"));
    let h = run(hold, Duration::from_secs(30));
    h.expect(2, "hold --cut-io without device-mapper");
    assert!(
        h.stderr.contains("device-mapper is not available"),
        "{}",
        h.show()
    );
    assert_eq!(
        std::fs::read(&area).expect("read area"),
        before,
        "nothing written"
    );
    out.expect(2, "--cut-io without device-mapper");
    assert!(
        out.stderr.contains("device-mapper is not available")
            && out.stderr.contains("nothing was written"),
        "{}",
        out.show()
    );
    assert_eq!(
        std::fs::read(&area).expect("read area"),
        before,
        "nothing written"
    );
    assert!(
        std::fs::read_dir(dir.path().join("run")).map_or(true, |mut d| d.next().is_none()),
        "no state left behind"
    );
}
