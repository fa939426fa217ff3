//! The OCF agent's monitor of a native holder (no root: a stand-in holder process and a
//! state file as `mmp hold --state-file` writes it, docs/json.md). Slow heartbeats under load are
//! logged and succeed; OCF_DEGRADED (190), which Pacemaker lists under "Failed Resource
//! Actions", only when no heartbeat succeeded for more than half the fail window.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{SystemTime, UNIX_EPOCH};

use super::cli::tmpdir;

const DEVICE: &str = "/dev/mmp-test-area";

fn agent_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/ocf/mmp")
}

/// A live process standing in for the holder, killed on drop.
struct StandIn(Child);

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `monitor` with a status line whose last write was `age_ms` ago and whose last cycle
/// took `cycle_ms` (interval 1000 ms, fail window 10000 ms); returns the exit code and the
/// agent's log output.
fn monitor(state: &Path, age_ms: u64, cycle_ms: u64) -> (Option<i32>, String) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last_write = now - age_ms as f64 / 1000.0;
    let key = DEVICE.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
    fs::write(
        state.join(format!("ocf-{key}.state")),
        format!(
            "schema=1\npid=1\nstart=1\nstate=ready\nlost=0\nlast_cycle_ms={cycle_ms}\n\
             interval_ms=1000\nfail_window_ms=10000\nlast_write={last_write:.3}\n"
        ),
    )
    .expect("state file");
    run_monitor(state)
}

/// `monitor` (without ocf-shellfuncs: the agent's own ocf_log writes to stderr).
fn run_monitor(state: &Path) -> (Option<i32>, String) {
    let o = Command::new("sh")
        .arg(agent_path())
        .arg("monitor")
        .env("OCF_ROOT", state.join("no-ocf-root"))
        .env("OCF_RESKEY_device", DEVICE)
        .env("OCF_RESKEY_state_dir", state)
        .output()
        .expect("run the agent");
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn ocf_monitor_slow_heartbeats_succeed_degraded_only_near_self_fence() {
    let tmp = tmpdir();
    let state = tmp.path();
    let holder = StandIn(Command::new("sleep").arg("60").spawn().expect("sleep"));
    let key = DEVICE.replace(|c: char| !c.is_ascii_alphanumeric() && c != '.', "_");
    fs::write(
        state.join(format!("ocf-{key}.pid")),
        holder.0.id().to_string(),
    )
    .expect("pid");

    // On time: success, nothing to say.
    let (code, log) = monitor(state, 200, 5);
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(log, "", "on time");

    // A slow cycle (2.5 intervals) with writes on time: success, an info line.
    let (code, log) = monitor(state, 200, 2500);
    assert_eq!(code, Some(0), "slow cycle: {log}");
    assert!(log.contains("slow heartbeat cycle: 2500"), "{log}");

    // Late writes (3 s ago, interval 1 s), well inside the 10 s fail window: success, logged.
    let (code, log) = monitor(state, 3000, 2900);
    assert_eq!(code, Some(0), "late writes: {log}");
    assert!(log.contains("heartbeats are late"), "{log}");

    // No successful write for 6 s, more than half the fail window: really degraded.
    let (code, log) = monitor(state, 6000, 0);
    assert_eq!(code, Some(190), "near self-fence: {log}");
    assert!(log.contains("half the 10000 ms fail window"), "{log}");

    // The holder refreshes the file every second: the age is judged as of its `updated`
    // while that is recent. Last write 6 s ago, but only 4 s old when the file was written
    // 2 s ago: late, not degraded.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    fs::write(
        state.join(format!("ocf-{key}.state")),
        format!(
            "schema=1\npid=1\nstate=ready\nlost=0\nlast_cycle_ms=5\ninterval_ms=1000\n\
             fail_window_ms=10000\nlast_write={:.3}\nupdated={:.3}\n",
            now - 6.0,
            now - 2.0
        ),
    )
    .expect("state file");
    let (code, log) = run_monitor(state);
    assert_eq!(code, Some(0), "judged as of the refresh: {log}");
    assert!(log.contains("heartbeats are late"), "{log}");

    // A device lost while the holder still runs is a failure.
    fs::write(
        state.join(format!("ocf-{key}.state")),
        "schema=1\npid=1\nstate=ready\nlost=1\ninterval_ms=1000\n",
    )
    .expect("state file");
    let (code, log) = run_monitor(state);
    assert_eq!(code, Some(1), "lost: {log}");
    assert!(log.contains("ownership lost"), "{log}");

    // A holder that ended on a loss (exit 3, from its state file, not its log): a failure
    // that says so; one that ended otherwise is "gone".
    drop(holder);
    fs::write(
        state.join(format!("ocf-{key}.state")),
        "schema=1\npid=1\nstate=ended\nexit=3\n",
    )
    .expect("state file");
    let (code, log) = run_monitor(state);
    assert_eq!(code, Some(1), "ended lost: {log}");
    assert!(log.contains("ownership lost (holder exit 3)"), "{log}");
    fs::write(
        state.join(format!("ocf-{key}.state")),
        "schema=1\npid=1\nstate=ended\nexit=0\n",
    )
    .expect("state file");
    let (code, log) = run_monitor(state);
    assert_eq!(code, Some(1), "ended: {log}");
    assert!(log.contains("is gone"), "{log}");
}
