//! The lab's STONITH device, host side. The guests' fence agent (`fence_mmplab`, installed
//! from the tools share) writes a request `fence-ID.req` ("ACTION NODE REQUESTER") into its
//! own job folder; a thread here answers every request with `fence-ID.done` ("RC TEXT", the
//! agent's exit status and message) after acting on the target's second QMP monitor
//! (`fence.sock`): `reboot` is `system_reset` followed by `cont` (a frozen node reboots
//! instead of staying paused; its memory, page cache included, is gone), `off` is `quit`
//! (power loss), `status` and `on` report whether the node's QEMU still runs. Every action
//! is logged with its host time, for the scenario's figures.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Node;
use super::qmp::Qmp;

/// One fencing action the host carried out.
#[derive(Clone, Debug)]
pub struct Fencing {
    /// When the host acted.
    pub at: Instant,
    /// The node whose agent asked.
    pub by: String,
    /// The node acted on.
    pub target: String,
    /// `reboot`, `off`, `on`, `status` or `list`.
    pub action: String,
    /// The agent's exit status (0: done).
    pub rc: i32,
}

/// A node as the fencer knows it: its name, job folder and fencing monitor.
#[derive(Clone, Debug)]
struct Member {
    name: String,
    jobs: PathBuf,
    socket: PathBuf,
}

/// The fencing thread; stops when dropped.
#[derive(Debug)]
pub struct Fencer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Fencing>>>,
    thread: Option<JoinHandle<()>>,
}

impl Fencer {
    /// Starts answering the fence requests of `nodes` (and acting on them).
    #[must_use]
    pub fn start(nodes: &[Node]) -> Self {
        Self::start_members(
            nodes
                .iter()
                .map(|n| Member {
                    name: n.name().to_owned(),
                    jobs: n.job_file(""),
                    socket: n.dir().join("fence.sock"),
                })
                .collect(),
        )
    }

    fn start_members(members: Vec<Member>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for m in &members {
                        serve(m, &members, &log);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Every action so far, oldest first.
    #[must_use]
    pub fn log(&self) -> Vec<Fencing> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The `reboot` and `off` actions that succeeded, oldest first.
    #[must_use]
    pub fn shots(&self) -> Vec<Fencing> {
        self.log()
            .into_iter()
            .filter(|f| f.rc == 0 && (f.action == "reboot" || f.action == "off"))
            .collect()
    }
}

impl Drop for Fencer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests waiting in `m`'s job folder.
fn serve(m: &Member, members: &[Member], log: &Mutex<Vec<Fencing>>) {
    let Ok(dir) = fs::read_dir(&m.jobs) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("fence-")
            .and_then(|r| r.strip_suffix(".req"))
        else {
            continue;
        };
        let req = fs::read_to_string(e.path()).unwrap_or_default();
        let _ = fs::rename(e.path(), m.jobs.join(format!("fence-{id}.taken")));
        let mut words = req.split_whitespace();
        let action = words.next().unwrap_or_default().to_owned();
        let target = words.next().unwrap_or_default().to_owned();
        let (rc, text) = act(&action, &target, members);
        eprintln!(
            "    fencer: {} asked {action} {target}: {rc} {text}",
            m.name
        );
        if let Ok(mut l) = log.lock() {
            l.push(Fencing {
                at: Instant::now(),
                by: m.name.clone(),
                target: target.clone(),
                action: action.clone(),
                rc,
            });
        }
        let tmp = m.jobs.join(format!("fence-{id}.done.tmp"));
        if fs::write(&tmp, format!("{rc} {text}\n")).is_ok() {
            let _ = fs::rename(&tmp, m.jobs.join(format!("fence-{id}.done")));
        }
    }
}

/// Carries out one action; returns the agent's exit status and message.
fn act(action: &str, target: &str, members: &[Member]) -> (i32, String) {
    if action == "list" {
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        return (0, names.join(" "));
    }
    let Some(t) = members.iter().find(|m| m.name == target) else {
        return (1, format!("no lab node named {target:?}"));
    };
    // QEMU gone (powered off, or `off` earlier): the node is off.
    let Ok(mut q) = Qmp::connect(&t.socket) else {
        return match action {
            "off" | "status" => (if action == "off" { 0 } else { 2 }, "off".to_owned()),
            _ => (1, format!("{target}: no QEMU (powered off)")),
        };
    };
    match action {
        "status" | "on" => (0, "on".to_owned()),
        "reboot" => {
            // The job loop writes `ready` again when the rebooted guest is up.
            let _ = fs::remove_file(t.jobs.join("ready"));
            match q.execute("system_reset", None) {
                Ok(_) => {
                    let _ = q.execute("cont", None);
                    (0, format!("{target} reset"))
                }
                Err(e) => (1, format!("{target}: system_reset: {e}")),
            }
        }
        "off" => {
            let _ = q.execute("quit", None);
            (0, format!("{target} powered off"))
        }
        _ => (1, format!("unsupported action {action}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// Two members without QEMU (their sockets do not exist) in a fresh folder.
    fn members(tag: &str) -> (PathBuf, Vec<Member>) {
        let dir = std::env::temp_dir().join(format!("mmp-fencer-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let members: Vec<Member> = ["a", "b"]
            .iter()
            .map(|n| {
                let jobs = dir.join(n).join("jobs");
                fs::create_dir_all(&jobs).unwrap();
                Member {
                    name: (*n).to_owned(),
                    jobs,
                    socket: dir.join(n).join("fence.sock"),
                }
            })
            .collect();
        (dir, members)
    }

    /// Runs the guest's agent with `stdin` as Pacemaker's fencer would, against `jobs`.
    fn agent(jobs: &std::path::Path, stdin: &str) -> (i32, String) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/lab/fence_mmplab");
        let mut child = Command::new("bash")
            .arg(script)
            .env("MMPLAB_JOBS", jobs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn the_agent_and_the_host_answer_each_action() {
        let (dir, m) = members("actions");
        let jobs_a = m[0].jobs.clone();
        let fencer = Fencer::start_members(m);
        let (rc, out) = agent(&jobs_a, "action=metadata\n");
        assert_eq!(rc, 0);
        assert!(
            out.contains("<resource-agent name=\"fence_mmplab\""),
            "{out}"
        );
        assert!(out.contains("<action name=\"reboot\"/>"), "{out}");
        // b has no QEMU: it is off, a reboot of it cannot be done, an unknown node fails.
        assert_eq!(
            agent(&jobs_a, "action=status\nport=b\n"),
            (2, "off\n".to_owned())
        );
        let (rc, out) = agent(&jobs_a, "action=reboot\nplug=b\n");
        assert_eq!(rc, 1, "{out}");
        assert!(out.contains("no QEMU"), "{out}");
        let (rc, out) = agent(&jobs_a, "action=off\nnodename=b\n");
        assert_eq!((rc, out.as_str()), (0, "off\n"));
        let (rc, out) = agent(&jobs_a, "action=reboot\nport=zz\n");
        assert_eq!(rc, 1);
        assert!(out.contains("no lab node named"), "{out}");
        assert_eq!(agent(&jobs_a, "action=list\n"), (0, "a b\n".to_owned()));
        let (rc, _) = agent(&jobs_a, "action=dance\nport=b\n");
        assert_eq!(rc, 1);
        assert_eq!(agent(&jobs_a, "action=monitor\n").0, 0);
        // Every request was answered and logged with who asked; nothing counts as a shot
        // except the `off` of a node that was already off.
        let log = fencer.log();
        assert_eq!(log.len(), 5, "{log:?}");
        assert!(log.iter().all(|f| f.by == "a"));
        let shots = fencer.shots();
        assert_eq!(shots.len(), 1);
        assert_eq!(
            (shots[0].target.as_str(), shots[0].action.as_str()),
            ("b", "off")
        );
        drop(fencer);
        let _ = fs::remove_dir_all(dir);
    }
}
