//! `mmp list`: what this host holds through `mmp mount`, from the state files in the run
//! directory (`MMP_RUN_DIR`). Here without root: no state, stale state, broken state; a live
//! holder is `loop_integration::loop_list_shows_the_live_holder`.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::cli::{Out, mmp, run, tmpdir};

fn list(rd: &Path, args: &[&str]) -> Out {
    let mut c = mmp(&["list"]);
    c.args(args).env("MMP_RUN_DIR", rd);
    run(c, Duration::from_secs(15))
}

fn state(rd: &Path, key: &str, pid: u32, dir: &str) {
    fs::write(
        rd.join(format!("{key}.state")),
        format!(
            "pid={pid}\nstart=1\nmmp_device=/dev/mmp-{key}\ndevice=/dev/data-{key}\ndir={dir}\n"
        ),
    )
    .expect("write state");
}

#[test]
fn list_without_state_is_empty() {
    let tmp = tmpdir();
    let rd = tmp.path().join("run");
    // No run directory at all (no `mmp mount` since boot).
    let o = list(&rd, &[]);
    o.expect(0, "list without a run directory");
    assert!(o.stdout.contains("no mmp mounts recorded"), "{}", o.show());
    let o = list(&rd, &["--json"]);
    o.expect(0, "list --json without a run directory");
    assert_eq!(o.stdout, "", "{}", o.show());
    // An empty one; other files (a holder's .log) are not mounts.
    fs::create_dir_all(&rd).expect("mkdir");
    fs::write(rd.join("-mnt.log"), b"acquired\n").expect("log");
    let o = list(&rd, &[]);
    o.expect(0, "list with an empty run directory");
    assert!(o.stdout.contains("no mmp mounts recorded"), "{}", o.show());
    assert_eq!(o.stderr, "", "{}", o.show());
}

#[test]
fn list_reports_stale_state_as_gone() {
    let tmp = tmpdir();
    let rd = tmp.path().to_path_buf();
    // A pid that exited, and a live pid that is not a holder (this test: a reused pid).
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let dead = child.id();
    child.wait().expect("wait");
    state(&rd, "-srv-a", dead, "/srv/a");
    state(&rd, "-srv-b", std::process::id(), "/srv/b");
    let o = list(&rd, &[]);
    o.expect(1, "list with holders gone");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", o.show());
    assert!(
        lines[0].starts_with("DEVICE") && lines[0].ends_with("HOLDER"),
        "{}",
        o.show()
    );
    for (line, key, pid) in [
        (lines[1], "-srv-a", dead),
        (lines[2], "-srv-b", std::process::id()),
    ] {
        for want in [
            format!("/dev/data-{key}"),
            format!("/dev/mmp-{key}"),
            format!("/srv/{}", &key[5..]),
            pid.to_string(),
            " UTC".to_owned(),
        ] {
            assert!(
                line.contains(&want),
                "{want} missing in {line}\n{}",
                o.show()
            );
        }
        assert!(line.ends_with("GONE"), "{}", o.show());
        assert!(
            o.stderr.contains(&format!("mmp status /dev/mmp-{key}")),
            "{}",
            o.show()
        );
    }
    let o = list(&rd, &["--json"]);
    o.expect(1, "list --json with holders gone");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", o.show());
    assert!(
        lines[0].contains("\"mount_point\":\"/srv/a\"")
            && lines[0].contains(&format!("\"pid\":{dead},"))
            && lines[0].contains("\"holder\":\"gone\"")
            && lines[0].contains("\"since_unix\":"),
        "{}",
        o.show()
    );
    // Listing never cleans up: the state is still there for `mmp umount`.
    assert!(rd.join("-srv-a.state").exists());
}

/// A holder that released cleanly and exited (told to stop while the data was mounted, it
/// released once the data was unmounted by hand): "released", not GONE, and exit 0; the
/// record stays for `mmp umount` (listing writes nothing).
#[test]
fn list_shows_a_holder_that_released_cleanly() {
    let tmp = tmpdir();
    let rd = tmp.path().to_path_buf();
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("run true");
    let dead = child.id();
    child.wait().expect("wait");
    state(&rd, "-srv-c", dead, "/srv/c");
    fs::write(
        rd.join("-srv-c.holder"),
        format!("schema=1\npid={dead}\nstart=1\nstate=ended\nexit=0\n"),
    )
    .expect("write holder state");
    let o = list(&rd, &[]);
    o.expect(0, "list with a holder that released");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", o.show());
    assert!(lines[1].ends_with("released"), "{}", o.show());
    assert!(
        o.stderr.contains("released /dev/mmp--srv-c cleanly"),
        "{}",
        o.show()
    );
    let o = list(&rd, &["--json"]);
    o.expect(0, "list --json with a holder that released");
    assert!(o.stdout.contains("\"holder\":\"released\""), "{}", o.show());
    assert!(rd.join("-srv-c.state").exists());
    // The same record with exit 3 (a loss) is gone, exit 1.
    fs::write(
        rd.join("-srv-c.holder"),
        format!("schema=1\npid={dead}\nstart=1\nstate=ended\nexit=3\n"),
    )
    .expect("write holder state");
    let o = list(&rd, &[]);
    o.expect(1, "list with a holder that lost");
    assert!(
        o.stdout.lines().nth(1).is_some_and(|l| l.ends_with("GONE")),
        "{}",
        o.show()
    );
}

#[test]
fn list_reports_a_broken_state_file() {
    let tmp = tmpdir();
    let rd = tmp.path().to_path_buf();
    fs::write(rd.join("junk.state"), b"not a state file\n").expect("write");
    fs::write(rd.join("badpid.state"), b"pid=-3\n").expect("write");
    let o = list(&rd, &[]);
    o.expect(2, "list with broken state files");
    assert!(
        o.stderr.contains("junk.state: no pid= line")
            && o.stderr
                .contains("badpid.state: the pid= line is not a process id"),
        "{}",
        o.show()
    );
    let o = list(&rd, &["--json"]);
    o.expect(2, "list --json with broken state files");
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.show());
    assert!(o.stdout.contains("\"error\":"), "{}", o.show());
    // A run directory that is a file: an error, not "nothing recorded".
    let file = rd.join("file");
    fs::write(&file, b"x").expect("write");
    let o = list(&file, &[]);
    o.expect(2, "list with a file as the run directory");
    assert!(o.stderr.starts_with("mmp: "), "{}", o.show());
}
