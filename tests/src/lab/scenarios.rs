//! The lab's scenarios: each boots its own nodes on fresh disks, runs its steps and reports a
//! verdict with figures. Times inside guests come from the guest's `/proc/uptime`; under TCG
//! they are slow in absolute terms, compare them with the peers measured in the same run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::qmp::write_deltas;
use super::relay::PathRelay;
use super::{Disk, Images, IscsiTarget, Node, NodeSpec, Result, Tools, boot_all, scsi_dev};

/// What every scenario gets.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Guest images.
    pub images: Images,
    /// Host binaries shared with the guests.
    pub tools: Tools,
    /// A fresh folder for this scenario's disks and nodes.
    pub run_dir: PathBuf,
}

/// How a scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// A check failed, with the reason.
    Fail(String),
    /// The scenario shows a known gap on purpose (it is expected to fail its check until the
    /// fix lands): the figures say how large the gap was.
    Gap(String),
}

/// A scenario's verdict and figures.
#[derive(Clone, Debug)]
pub struct Report {
    /// The verdict ([`Verdict::Pass`] until a step says otherwise).
    pub verdict: Verdict,
    /// Named figures in the order measured.
    pub figures: Vec<(String, String)>,
}

impl Report {
    fn figure(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        eprintln!("    {name}: {value}");
        self.figures.push((name.to_owned(), value));
    }

    fn secs(&mut self, name: &str, d: f64) {
        self.figure(name, format!("{d:.1} s"));
    }
}

/// A scenario: a name a user understands, what it shows, whether it is in the smoke set.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Command-line name.
    pub name: &'static str,
    /// One line: what it shows.
    pub about: &'static str,
    /// Part of `smoke`.
    pub smoke: bool,
    /// Expected to end in [`Verdict::Gap`] for now.
    pub shows_gap: bool,
    /// The steps.
    pub run: fn(&Ctx, &mut Report) -> Result<()>,
}

/// Every scenario, in the order `all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "ext4-kernel-vs-mmp",
        about: "a kernel's ext4 MMP mount on one node and mmp on another refuse each other; clean handovers both ways",
        smoke: true,
        shows_gap: false,
        run: ext4_kernel_vs_mmp,
    },
    Scenario {
        name: "ext4-clean-race",
        about: "the kernel's zero-wait race across kernels: two nodes mount a CLEAN ext4 MMP file system at the same moment, through plain `mount` (both may succeed) and through `mmp mount` (exactly one does), MMP_LAB_TRIALS times each",
        smoke: false,
        shows_gap: true,
        run: ext4_clean_race,
    },
    Scenario {
        name: "watchdog-fences-frozen-holder",
        about: "i6300esb watchdog: a SIGSTOPped holder's node powers off before the partner takes over",
        smoke: true,
        shows_gap: false,
        run: watchdog_fences_frozen_holder,
    },
    Scenario {
        name: "watchdog-fences-stalled-holder",
        about: "i6300esb watchdog: the holder's storage stalls (QMP throttling); the holder self-fences at its lease end and stops petting the watchdog: the node powers off before the partner takes over",
        smoke: false,
        shows_gap: false,
        run: watchdog_fences_stalled_holder,
    },
    Scenario {
        name: "comeback-after-freeze",
        about: "an XFS owner frozen past the takeover resumes: its writes to the data disk after the partner acquired, counted by QEMU",
        smoke: true,
        shows_gap: true,
        run: comeback_after_freeze,
    },
    Scenario {
        name: "comeback-with-reservations",
        about: "the surprise comeback on an iSCSI LUN with `--fence scsi-pr`: the frozen owner's writes after the partner acquired, counted by QEMU, must be 0; acknowledged records survive (MMP_LAB_CYCLES cycles, roles alternate; MMP_LAB_FAULTS=freeze,kill,power,freeze-handover picks the faults, in turn or at random with MMP_LAB_SEED: lab/soak)",
        smoke: true,
        shows_gap: false,
        run: comeback_with_reservations,
    },
    Scenario {
        name: "comeback-without-reservations",
        about: "comeback-with-reservations on the same iSCSI LUNs without `--fence`: how many writes the resumed owner makes after the partner acquired (the figure reservations remove)",
        smoke: false,
        shows_gap: true,
        run: comeback_without_reservations,
    },
    Scenario {
        name: "eio-on-owner-path",
        about: "every request on the owner's own path fails with EIO (nbdkit's error filter on demand): its holder self-fences, the partner takes over after the fail window; when the path works again, what the old owner's file system still writes (a known gap without --cut-io or reservations)",
        smoke: false,
        shows_gap: true,
        run: eio_on_owner_path,
    },
    Scenario {
        name: "eio-on-owner-path-cut-io",
        about: "eio-on-owner-path with the XFS mounted by `mmp mount --cut-io`: the holder cuts the data mapping when it self-fences; when the path works again the old owner writes nothing",
        smoke: false,
        shows_gap: false,
        run: eio_on_owner_path_cut_io,
    },
    Scenario {
        name: "late-write-with-reservations",
        about: "the late write: the owner's own path to the iSCSI target held (its writes queue, as on a hung multipath) while the partner takes over with `--fence scsi-pr`; then the path comes back: the queued writes that complete must be 0, the partner's records intact",
        smoke: false,
        shows_gap: false,
        run: late_write_with_reservations,
    },
    Scenario {
        name: "late-write-without-reservations",
        about: "late-write-with-reservations without `--fence`: what the queued writes do when they land after the takeover (a known gap)",
        smoke: false,
        shows_gap: true,
        run: late_write_without_reservations,
    },
    Scenario {
        name: "cut-io-on-loss",
        about: "`mmp mount --cut-io`: the owner loses the area to a foreign write while its writer runs; the holder switches the data mapping to the error target; QEMU counts the data writes that still reach the disk",
        smoke: true,
        shows_gap: false,
        run: cut_io_on_loss,
    },
    Scenario {
        name: "takeover-timings",
        about: "crash takeover and clean handover times across nodes, native and ext4, beside the kernel and e2fsprogs",
        smoke: false,
        shows_gap: false,
        run: takeover_timings,
    },
    // The full guest (systemd, corosync, Pacemaker): tests/src/lab/cluster.rs.
    Scenario {
        name: "pacemaker-failover",
        about: "Pacemaker group ocf:mmp:mmp + Filesystem (XFS): power loss of the active node; time until the group runs on the partner, every acknowledged record intact, xfs_repair clean",
        smoke: true,
        shows_gap: false,
        run: super::cluster::pacemaker_failover,
    },
    Scenario {
        name: "pacemaker-freeze-resume",
        about: "Pacemaker: the active node frozen until the partner runs the group, then resumed: what it writes after the partner acquired (a known gap until fencing lands)",
        smoke: false,
        shows_gap: true,
        run: super::cluster::pacemaker_freeze_resume,
    },
    Scenario {
        name: "pacemaker-comeback-with-reservations",
        about: "Pacemaker on iSCSI LUNs from tgtd, the agent with fence=scsi-pr: the node running the group frozen until the partner runs it, then resumed (MMP_LAB_CYCLES cycles): its successful writes after the partner acquired must be 0 (refused ones counted apart), every acknowledged record intact, xfs_repair clean",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_comeback_with_reservations,
    },
    Scenario {
        name: "pacemaker-comeback-without-reservations",
        about: "pacemaker-comeback-with-reservations on the same iSCSI LUNs without fence: the resumed node's successful writes after the partner acquired and the records lost (the side-by-side figure; a known gap)",
        smoke: false,
        shows_gap: true,
        run: super::cluster::pacemaker_comeback_without_reservations,
    },
    Scenario {
        name: "pacemaker-partition",
        about: "Pacemaker without STONITH: the active node's network cut; both sides keep quorum, mmp refuses the partner's start, no double mount; the heal",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_partition,
    },
    Scenario {
        name: "pacemaker-ext4-failover",
        about: "Pacemaker group ocf:mmp:mmp + Filesystem on an ext4 with MMP (no separate area: the agent's full acquire, then the kernel's kmmpd): power loss of the active node; time until the group runs on the partner, every record intact, e2fsck clean",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_ext4_failover,
    },
    Scenario {
        name: "pacemaker-ext4-freeze-resume",
        about: "Pacemaker on an ext4 with MMP: the active node frozen until the partner runs the group, then resumed: what its kernel writes before kmmpd notices (a known gap without fencing)",
        smoke: false,
        shows_gap: true,
        run: super::cluster::pacemaker_ext4_freeze_resume,
    },
    Scenario {
        name: "pacemaker-freeze-stonith",
        about: "Pacemaker with STONITH (the lab's fence agent resets a node through the host), virtio disks, no reservations: the active node frozen; its partner fences it before starting the group, 0 writes from it after the partner acquired, every record intact",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_freeze_stonith,
    },
    Scenario {
        name: "pacemaker-partition-stonith",
        about: "Pacemaker with STONITH (fence-a delayed 10 s): the active node's network cut; one node fences the other, the group runs on exactly one, no writes from the other side; the heal",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_partition_stonith,
    },
    Scenario {
        name: "pacemaker-stall-stonith",
        about: "Pacemaker with STONITH, virtio disks: every disk of the active node stalls (QMP throttling); its holder self-fences, the cluster cannot stop the file system on the hung path and fences the node, then the partner takes over; 0 writes from the stalled node after the partner acquired",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_stall_stonith,
    },
    Scenario {
        name: "pacemaker-three-nodes",
        about: "three-node Pacemaker cluster (majority quorum, no STONITH): the active node's network cut (it loses quorum and stops the group, the others start it through mmp), the heal, then power loss of the new owner; every record intact",
        smoke: false,
        shows_gap: false,
        run: super::cluster::pacemaker_three_nodes,
    },
    Scenario {
        name: "systemd-unit",
        about: "mmp@.service (Type=notify) under systemd with a BindsTo= XFS mount: start, stop, holder killed, node reset; the partner takes over",
        smoke: false,
        shows_gap: false,
        run: super::cluster::systemd_unit,
    },
];

const MIB: u64 = 1 << 20;
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(240);

/// The guest-side duration `lab-took START END` printed by `timed` in a job's output.
fn took(out: &str) -> Option<f64> {
    out.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("lab-took ")?;
        let mut it = rest.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(s)), Some(Ok(e))) = (it.next(), it.next()) else {
            return None;
        };
        Some(e - s)
    })
}

/// Job text: run `cmd` under `timed` (prints `lab-took START END`, keeps the status).
fn timed(cmd: &str) -> String {
    format!("s=$(now); {cmd}\nrc=$?; echo \"lab-took $s $(now)\"; exit $rc")
}

/// Job text: start `mmp ARGS` in the background (log and pid in /jobs/NAME.log, .pid) and
/// wait until it prints `acquired`; prints `lab-took` for the acquisition.
fn start_holder(name: &str, args: &str) -> String {
    format!(
        "s=$(now)\nmmp {args} >/jobs/{name}.log 2>&1 &\necho $! >/jobs/{name}.pid\n\
         i=0\nwhile ! grep -q '^acquired' /jobs/{name}.log; do\n\
         kill -0 $(cat /jobs/{name}.pid) 2>/dev/null || {{ cat /jobs/{name}.log; exit 8; }}\n\
         i=$((i+1)); [ $i -gt 3000 ] && exit 9; sleep 0.05\ndone\n\
         echo \"lab-took $s $(now)\"\ncat /jobs/{name}.log"
    )
}

/// Job text: SIGTERM the holder NAME and wait for `released` in its log.
fn stop_holder(name: &str) -> String {
    format!(
        "kill -TERM $(cat /jobs/{name}.pid)\ni=0\n\
         while kill -0 $(cat /jobs/{name}.pid) 2>/dev/null; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.05; done\n\
         cat /jobs/{name}.log\ngrep -q '^released' /jobs/{name}.log"
    )
}

fn two(nodes: &mut [Node]) -> (&mut Node, &mut Node) {
    let (a, rest) = nodes.split_at_mut(1);
    (&mut a[0], &mut rest[0])
}

fn boot_pair(ctx: &Ctx, r: &mut Report, a: NodeSpec, b: NodeSpec) -> Result<Vec<Node>> {
    let t = Instant::now();
    let nodes = boot_all(&ctx.run_dir, &ctx.images, &ctx.tools, vec![a, b])?;
    r.secs("boot of two nodes (host)", t.elapsed().as_secs_f64());
    Ok(nodes)
}

fn ext4_kernel_vs_mmp(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let disk = Disk::create(&ctx.run_dir, "ext4", 64 * MIB)?;
    let mut nodes = boot_pair(
        ctx,
        r,
        NodeSpec::new("a", 0xa1, std::slice::from_ref(&disk)),
        NodeSpec::new("b", 0xb2, std::slice::from_ref(&disk)),
    )?;
    let (a, b) = two(&mut nodes);
    a.expect(
        "mke2fs -O mmp",
        "$T/mke2fs -q -F -t ext4 -O mmp -E mmp_update_interval=1 /dev/vda",
        0,
        LONG,
    )?;
    let j = a.expect(
        "kernel mounts (clean block)",
        &timed("mkdir -p /mnt/e && mount -t ext4 /dev/vda /mnt/e"),
        0,
        SHORT,
    )?;
    r.secs(
        "a: kernel mount of a clean block",
        took(&j.out).unwrap_or(-1.0),
    );
    b.expect(
        "mmp status sees the kernel",
        "mmp status /dev/vda",
        1,
        SHORT,
    )?;
    let j = b.expect("mmp check refuses", &timed("mmp check /dev/vda"), 1, LONG)?;
    r.secs("b: mmp check says in use", took(&j.out).unwrap_or(-1.0));
    let j = b.expect("mmp hold refuses", &timed("mmp hold /dev/vda"), 1, LONG)?;
    r.secs("b: mmp hold refuses", took(&j.out).unwrap_or(-1.0));
    b.expect("e2mmpstatus agrees", "$T/e2mmpstatus /dev/vda", 1, SHORT)?;
    a.expect("kernel unmounts", "umount /mnt/e", 0, SHORT)?;
    b.expect("mmp status: clean", "mmp status /dev/vda", 0, SHORT)?;

    // The reverse: mmp on b holds, the kernel on a refuses.
    let j = b.expect("mmp holds", &start_holder("hold", "hold /dev/vda"), 0, LONG)?;
    r.secs(
        "b: mmp hold of a clean block (release not watched)",
        took(&j.out).unwrap_or(-1.0),
    );
    let j = a.run(
        "kernel mount refused",
        &timed("mount -t ext4 /dev/vda /mnt/e; rc=$?; dmesg | tail -3; (exit $rc)"),
        LONG,
    )?;
    if j.rc == 0 {
        return Err(format!(
            "a: the kernel mounted while mmp on b held the device:\n{}",
            j.out
        )
        .into());
    }
    r.secs("a: kernel mount refused", took(&j.out).unwrap_or(-1.0));
    a.expect("e2mmpstatus sees mmp", "$T/e2mmpstatus /dev/vda", 1, SHORT)?;

    // Clean handover mmp -> kernel, then kernel -> mmp.
    b.expect("mmp releases", &stop_holder("hold"), 0, SHORT)?;
    let j = a.expect(
        "kernel mounts after mmp released",
        &timed("mount -t ext4 /dev/vda /mnt/e"),
        0,
        LONG,
    )?;
    r.secs(
        "handover mmp(b) -> kernel(a): mount",
        took(&j.out).unwrap_or(-1.0),
    );
    a.expect("kernel unmounts", "umount /mnt/e", 0, SHORT)?;
    let j = b.expect(
        "mmp mount after the kernel unmounted",
        &timed("mkdir -p /mnt/e && mmp mount /dev/vda /mnt/e"),
        0,
        LONG,
    )?;
    r.secs(
        "handover kernel(a) -> mmp mount(b)",
        took(&j.out).unwrap_or(-1.0),
    );
    a.expect(
        "e2mmpstatus on a sees b's kernel",
        "$T/e2mmpstatus /dev/vda",
        1,
        SHORT,
    )?;
    b.expect("mmp umount", "mmp umount /mnt/e", 0, SHORT)?;
    a.expect("clean at the end", "$T/e2mmpstatus /dev/vda", 0, SHORT)?;
    Ok(())
}

/// Runs `cmd` on both nodes at the same moment: each job signals that it is ready, then
/// busy-waits for its go file, which the host writes into both job folders at once (the
/// start skew is a 9p round trip). Returns both results.
fn at_once(nodes: &mut [Node], what: &str, cmd: &str, n: usize) -> Result<Vec<super::JobResult>> {
    let mut jobs = Vec::new();
    for node in nodes.iter_mut() {
        let _ = std::fs::remove_file(node.job_file(&format!("go-{n}")));
        let _ = std::fs::remove_file(node.job_file(&format!("ready-{n}")));
        jobs.push(node.spawn(
            what,
            &format!(
                ": >/jobs/ready-{n}
while [ ! -e /jobs/go-{n} ]; do :; done
s=$(now); {cmd}
rc=$?; echo \"lab-took $s $(now)\"; exit $rc"
            ),
        )?);
    }
    let t = Instant::now();
    while !nodes
        .iter()
        .all(|node| node.job_file(&format!("ready-{n}")).exists())
    {
        if t.elapsed() > SHORT {
            return Err(format!("{what}: the jobs did not start").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for node in nodes.iter() {
        std::fs::write(node.job_file(&format!("go-{n}")), "")?;
    }
    jobs.iter().map(|j| j.wait(LONG)).collect()
}

/// Lab scenario 2: the kernel's zero-wait race across kernels. The kernel claims a CLEAN
/// MMP block without waiting (write, re-read at once: docs/protocol.md and the ext4 spec,
/// "Why a CLEAN mount takes ~9 ms"), so two nodes that mount a cleanly unmounted file
/// system at the same moment can both succeed. Each trial makes a fresh ext4 with MMP
/// (interval 1 s) and starts the two mounts together; then the same with `mmp mount`
/// (the full acquire before the hand-over to the kernel). Figures: trials in which both
/// nodes had the file system mounted. The plain mounts show the gap; `mmp mount` must
/// never let both in.
fn ext4_clean_race(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let trials: usize = std::env::var("MMP_LAB_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let disk = Disk::create(&ctx.run_dir, "ext4", 64 * MIB)?;
    let mut nodes = boot_pair(
        ctx,
        r,
        NodeSpec::new("a", 0xa1, std::slice::from_ref(&disk)),
        NodeSpec::new("b", 0xb2, std::slice::from_ref(&disk)),
    )?;
    let mut n = 0usize;
    let mut both = [0usize; 2];
    let mut one = [0usize; 2];
    let mut mmp_times = Vec::new();
    for (k, (label, cmd)) in [
        ("mount", "mount -t ext4 /dev/vda /mnt/e"),
        ("mmp mount", "mmp mount -t ext4 /dev/vda /mnt/e"),
    ]
    .into_iter()
    .enumerate()
    {
        for trial in 0..trials {
            n += 1;
            nodes[0].expect(
                "fresh ext4 with MMP",
                "$T/mke2fs -q -F -t ext4 -O mmp -E mmp_update_interval=1 /dev/vda && mkdir -p /mnt/e",
                0,
                LONG,
            )?;
            nodes[1].expect("mount point", "mkdir -p /mnt/e", 0, SHORT)?;
            let res = at_once(&mut nodes, label, cmd, n)?;
            let ok = res.iter().filter(|j| j.rc == 0).count();
            if k == 1 {
                mmp_times.extend(
                    res.iter()
                        .filter(|j| j.rc == 0)
                        .filter_map(|j| took(&j.out)),
                );
            }
            match ok {
                2 => both[k] += 1,
                1 => one[k] += 1,
                _ => {}
            }
            eprintln!(
                "    {label} trial {trial}: exit a {} b {}{}",
                res[0].rc,
                res[1].rc,
                if ok == 2 { " (both mounted)" } else { "" }
            );
            // Unmount wherever mounted (mmp umount for an mmp mount; a double mount is
            // unmounted twice and the next trial starts from a fresh file system).
            for node in nodes.iter_mut() {
                node.run(
                    "unmount",
                    "if grep -q ' /mnt/e ' /proc/mounts; then mmp umount /mnt/e 2>/dev/null || umount /mnt/e; fi; true",
                    SHORT,
                )?;
            }
        }
    }
    r.figure(
        "plain mount at once: trials with both nodes mounted",
        format!("{} of {trials} ({} with one)", both[0], one[0]),
    );
    r.figure(
        "mmp mount at once: trials with both nodes mounted",
        format!("{} of {trials} ({} with one)", both[1], one[1]),
    );
    mmp_times.sort_by(f64::total_cmp);
    if let Some(m) = mmp_times.get(mmp_times.len() / 2) {
        r.secs("mmp mount of the winner (median, guest)", *m);
    }
    if both[1] > 0 {
        r.verdict = Verdict::Fail(format!(
            "mmp mount let both nodes mount in {} of {trials} trials",
            both[1]
        ));
    } else if one[1] != trials {
        r.verdict = Verdict::Fail(format!(
            "mmp mount: exactly one node should mount in every trial; {} of {trials}",
            one[1]
        ));
    } else if both[0] > 0 {
        r.verdict = Verdict::Gap(format!(
            "plain mount let both nodes mount a CLEAN ext4 MMP file system in {} of {trials} trials; mmp mount in none",
            both[0]
        ));
    }
    Ok(())
}

fn watchdog_fences_frozen_holder(ctx: &Ctx, r: &mut Report) -> Result<()> {
    watchdog_fences(ctx, r, false)
}

/// `watchdog-fences-stalled-holder`: as [`watchdog_fences_frozen_holder`], but the holder
/// runs on and its storage stalls (QMP throttling of a's disk at 1 byte/s): its heartbeat
/// request never comes back, the holder self-fences at the lease end and stops petting the
/// watchdog, which powers the node off before the partner takes over.
fn watchdog_fences_stalled_holder(ctx: &Ctx, r: &mut Report) -> Result<()> {
    watchdog_fences(ctx, r, true)
}

fn watchdog_fences(ctx: &Ctx, r: &mut Report, stall: bool) -> Result<()> {
    let what = if stall { "the stall" } else { "SIGSTOP" };
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let mut spec_a = NodeSpec::new("a", 0xa1, std::slice::from_ref(&area));
    spec_a.watchdog = true;
    let mut nodes = boot_pair(
        ctx,
        r,
        spec_a,
        NodeSpec::new("b", 0xb2, std::slice::from_ref(&area)),
    )?;
    let (a, b) = two(&mut nodes);
    a.expect("format", "mmp format --interval-ms 1000 /dev/vda", 0, SHORT)?;
    a.expect("watchdog present", "ls -l /dev/watchdog", 0, SHORT)?;
    a.expect(
        "hold with the watchdog",
        &start_holder("hold", "hold --watchdog-device /dev/watchdog /dev/vda"),
        0,
        LONG,
    )?;
    if stall {
        a.stall_storage(true)?;
    } else {
        a.expect(
            "SIGSTOP the holder",
            "kill -STOP $(cat /jobs/hold.pid)",
            0,
            SHORT,
        )?;
    }
    let stopped = Instant::now();
    let take = b.spawn("takeover", &timed("mmp hold --force /dev/vda >/jobs/take.log 2>&1 &\necho $! >/jobs/take.pid\nwhile ! grep -q '^acquired' /jobs/take.log; do kill -0 $(cat /jobs/take.pid) || exit 8; sleep 0.05; done"))?;
    let mut off = None;
    let mut acquired = None;
    let deadline = Instant::now() + Duration::from_secs(180);
    while (off.is_none() || acquired.is_none()) && Instant::now() < deadline {
        if off.is_none() && !a.is_running()? {
            off = Some(stopped.elapsed());
        }
        if acquired.is_none()
            && let Some(j) = take.try_result()?
        {
            if j.rc != 0 {
                return Err(format!("b: takeover failed ({}): {}", j.rc, j.out).into());
            }
            acquired = Some(stopped.elapsed());
        }
        let _ = a.poll_events();
        std::thread::sleep(Duration::from_millis(50));
    }
    let events: Vec<String> = a.events().into_iter().map(|(_, e)| e).collect();
    r.figure("a: QMP events", events.join(","));
    let off = off.ok_or_else(|| format!("a did not power off within 180 s of {what}"))?;
    let acquired = acquired.ok_or("b did not take over within 180 s")?;
    r.secs(
        &format!("a: powered off after {what} (host)"),
        off.as_secs_f64(),
    );
    r.secs(
        &format!("b: acquired after {what} (host)"),
        acquired.as_secs_f64(),
    );
    if off >= acquired {
        return Err(format!("b acquired ({acquired:?}) before a powered off ({off:?})").into());
    }
    r.secs(
        "margin (acquired - powered off)",
        (acquired - off).as_secs_f64(),
    );
    Ok(())
}

fn comeback_after_freeze(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let disks = [area, data];
    let mut nodes = boot_pair(
        ctx,
        r,
        NodeSpec::new("a", 0xa1, &disks),
        NodeSpec::new("b", 0xb2, &disks),
    )?;
    let (a, b) = two(&mut nodes);
    a.expect(
        "format the area",
        "mmp format --interval-ms 1000 /dev/vda",
        0,
        SHORT,
    )?;
    a.expect("mkfs.xfs", "$T/mkfs.xfs -q -f /dev/vdb", 0, LONG)?;
    a.expect(
        "mmp mount",
        "mkdir -p /mnt/d && mmp mount -t xfs --mmp-device /dev/vda /dev/vdb /mnt/d",
        0,
        LONG,
    )?;
    a.expect(
        "writer",
        "(i=0; while :; do i=$((i+1)); echo \"a $i $(now)\" >>/mnt/d/log; sync; sleep 0.2; done) >/dev/null 2>&1 &\necho $! >/jobs/writer.pid",
        0,
        SHORT,
    )?;
    std::thread::sleep(Duration::from_secs(3));
    let w0 = a.writes_to("data")?;
    std::thread::sleep(Duration::from_secs(2));
    let w1 = a.writes_to("data")?;
    if w1 <= w0 {
        return Err(format!("a's writer issued no data writes in 2 s ({w0} -> {w1})").into());
    }
    r.figure(
        "a: data writes per second before the freeze",
        format!("{:.1}", (w1 - w0) as f64 / 2.0),
    );

    a.freeze()?;
    let frozen = Instant::now();
    let frozen_writes = a.writes_to("data")?;
    let frozen_area = a.writes_to("area")?;
    let j = b.expect(
        "takeover mount",
        &timed("mkdir -p /mnt/d && mmp mount --force -t xfs --mmp-device /dev/vda /dev/vdb /mnt/d"),
        0,
        LONG,
    )?;
    let acquired = Instant::now();
    r.secs("b: mmp mount --force (guest)", took(&j.out).unwrap_or(-1.0));
    r.secs(
        "b: mounted after the freeze (host)",
        (acquired - frozen).as_secs_f64(),
    );
    b.expect("b writes", "echo b >>/mnt/d/b-was-here; sync", 0, SHORT)?;
    if a.writes_to("data")? != frozen_writes {
        return Err("a issued writes while frozen".into());
    }
    std::thread::sleep(Duration::from_secs(5));

    a.resume()?;
    let resumed = Instant::now();
    let mut first_write = None;
    let mut last_write = None;
    let mut count = frozen_writes;
    let mut area_after = 0;
    while resumed.elapsed() < Duration::from_secs(20) {
        let now = a.writes_to("data")?;
        if now != count {
            count = now;
            first_write = first_write.or(Some(resumed.elapsed()));
            last_write = Some(resumed.elapsed());
        }
        area_after = a.writes_to("area")? - frozen_area;
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = count - frozen_writes;
    let j = a.run(
        "a after the resume",
        "cat /proc/mounts | grep /mnt/d; ls /run/mmp; cat /run/mmp/*.log 2>/dev/null | tail -5; kill $(cat /jobs/writer.pid)",
        SHORT,
    )?;
    eprintln!("    a after the resume:\n{}", j.out.trim_end());
    r.figure("a: data writes after b acquired", after.to_string());
    r.figure(
        "a: area (heartbeat) writes after the resume",
        area_after.to_string(),
    );
    if let Some(t) = first_write {
        r.secs("a: first data write after the resume", t.as_secs_f64());
    }
    if let Some(t) = last_write {
        r.secs(
            "a: last data write after the resume (watched 20 s)",
            t.as_secs_f64(),
        );
    }
    let b_view = b.run("b's view", "grep -c '^a ' /mnt/d/log; ls /mnt/d", SHORT)?;
    r.figure(
        "b: a's lines visible to b",
        b_view.out.lines().next().unwrap_or("?").to_owned(),
    );
    if after > 0 {
        r.verdict = Verdict::Gap(format!(
            "a wrote {after} times to the data disk after b acquired (last {:.1} s after the resume); needs persistent reservations",
            last_write.map_or(0.0, |t| t.as_secs_f64())
        ));
    }
    Ok(())
}

/// Job text: the witness workload on `/mnt/d`: numbered records with a checksum, each
/// appended and fsynced (`sync FILE` fails when the fsync does), then acknowledged in
/// `/jobs/acks-TAG` (the job folder, outside the shared disk). Its pid in /jobs/writer.pid.
fn start_writer(tag: &str) -> String {
    format!(
        "(i=0; while :; do i=$((i+1)); c=$(echo \"{tag} $i\" | md5sum | cut -c1-8); \
         echo \"{tag} $i $c\" >>/mnt/d/rec-{tag} && sync /mnt/d/rec-{tag} && echo $i >>/jobs/acks-{tag}; \
         sleep 0.2; done) >/dev/null 2>&1 &\necho $! >/jobs/writer.pid"
    )
}

/// The acknowledged record numbers of `tag` on `node` (from its job folder on the host).
fn acks(node: &Node, tag: &str) -> Vec<u64> {
    std::fs::read_to_string(node.job_file(&format!("acks-{tag}")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Checks that every acknowledged record of `tag` is in `listing` (the lines of
/// `rec-TAG` as the new owner reads them) with its checksum; returns how many were checked.
fn check_records(tag: &str, acked: &[u64], listing: &str) -> std::result::Result<usize, String> {
    let mut seen = std::collections::HashMap::new();
    for l in listing.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [t, n, c] = f[..]
            && t == tag
            && let Ok(n) = n.parse::<u64>()
        {
            seen.insert(n, c.to_owned());
        }
    }
    for n in acked {
        if !seen.contains_key(n) {
            return Err(format!("acknowledged record {tag} {n} is missing"));
        }
    }
    Ok(acked.len())
}

/// The job texts of the iSCSI scenarios in a busybox guest: `$AREA` (the native area, LUN
/// 1) and `$DATA` (the XFS, LUN 2), named by SCSI target number.
struct LunJobs {
    /// Shell prefix that sets `AREA` and `DATA`.
    devs: String,
    /// `--fence scsi-pr ` or nothing.
    fence_arg: &'static str,
}

impl LunJobs {
    fn new(fence: bool) -> Self {
        Self {
            devs: format!("AREA={}; DATA={}\n", scsi_dev(0), scsi_dev(1)),
            fence_arg: if fence { "--fence scsi-pr " } else { "" },
        }
    }

    /// Formats the area (1 s interval) and makes the XFS, on `n`.
    fn format(&self, n: &mut Node) -> Result<()> {
        let devs = &self.devs;
        n.expect(
            "format the area",
            &format!("{devs}mmp format --interval-ms 1000 $AREA"),
            0,
            SHORT,
        )?;
        n.expect(
            "mkfs.xfs",
            &format!("{devs}$T/mkfs.xfs -q -f $DATA"),
            0,
            LONG,
        )?;
        Ok(())
    }

    /// Job text: a holder of the area guarding the data LUN (`extra`: e.g. `--force `).
    fn hold(&self, extra: &str) -> String {
        format!(
            "{}mkdir -p /mnt/d\n{}",
            self.devs,
            start_holder(
                "holder",
                &format!(
                    "hold {extra}{}--guard $DATA --on-loss exit $AREA",
                    self.fence_arg
                )
            )
        )
    }

    /// Job text: mount the XFS on `/mnt/d`.
    fn mount(&self) -> String {
        format!("{}mount -t xfs $DATA /mnt/d", self.devs)
    }
}

/// The surprise comeback (lab scenario 5) with SCSI-3 persistent reservations: two nodes
/// reach an MMP area and an XFS data LUN on one `tgtd` through QEMU's iSCSI initiator with
/// SCSI pass-through. Each cycle: the owner holds with `--fence scsi-pr` and writes
/// witness records; it is frozen (QMP stop); the partner takes over (`--force --fence
/// scsi-pr`, which preempts the owner's key), mounts the data and checks every
/// acknowledged record; the frozen node resumes and keeps trying to write. QEMU's
/// per-drive counters are the witness: the old owner's successful writes to either LUN
/// after the partner acquired must be 0. Roles alternate, so every cycle also re-acquires
/// from a preempted node. `MMP_LAB_CYCLES` (default 2) sets the number of cycles,
/// `MMP_LAB_CYCLES_MAX_SECS` a time budget, `MMP_LAB_FAULTS` the faults (default `freeze`;
/// also `kill`: SIGKILL of the holder, `power`: power loss and a fresh boot,
/// `freeze-handover`: as `freeze`, but the new owner releases cleanly while the old one is
/// still frozen, then acquires again once the old owner's stale mount is gone), in turn or
/// at random with `MMP_LAB_SEED`.
fn comeback_with_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    comeback_on_iscsi(ctx, r, true)
}

/// [`comeback_with_reservations`] without `--fence`: the side-by-side figure.
fn comeback_without_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    comeback_on_iscsi(ctx, r, false)
}

fn comeback_on_iscsi(ctx: &Ctx, r: &mut Report, fence: bool) -> Result<()> {
    let cycles: usize = std::env::var("MMP_LAB_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let area = Disk::create(&ctx.run_dir, "area", 16 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let target = IscsiTarget::start(&ctx.run_dir, &[area, data])?;
    let mut spec_a = NodeSpec::new("a", 0xa1, &[]);
    spec_a.luns = target.luns();
    let mut spec_b = NodeSpec::new("b", 0xb2, &[]);
    spec_b.luns = target.luns();
    let mut nodes = boot_pair(ctx, r, spec_a, spec_b)?;
    let jobs = LunJobs::new(fence);
    let (devs, fence_arg) = (&jobs.devs, jobs.fence_arg);
    jobs.format(&mut nodes[0])?;
    let hold = |extra: &str| jobs.hold(extra);
    let mount = jobs.mount();
    // Node 0 starts as the owner.
    nodes[0].expect("first hold", &hold(""), 0, LONG)?;
    nodes[0].expect("mount", &mount, 0, LONG)?;
    let mut owner = 0usize;
    let mut tag = format!("{}0", nodes[owner].name());
    nodes[owner].expect("writer", &start_writer(&tag), 0, SHORT)?;

    let mut late_writes = 0u64;
    let mut refused_writes = 0u64;
    let mut checked = 0usize;
    let mut takeovers = Vec::new();
    let mut losses_seen = 0usize;
    let faults: Vec<String> = std::env::var("MMP_LAB_FAULTS")
        .unwrap_or_else(|_| "freeze".to_owned())
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    for f in &faults {
        if !["freeze", "kill", "power", "freeze-handover"].contains(&f.as_str()) {
            // (`stall`, Node::stall_storage, throttles QEMU's block layer, which the
            // scsi-block pass-through of these LUNs bypasses: it does not stall them.)
            return Err(format!(
                "MMP_LAB_FAULTS: unknown fault {f:?} (freeze, kill, power, freeze-handover)"
            )
            .into());
        }
    }
    // In turn, or at random (reproducibly) with MMP_LAB_SEED.
    let seed: Option<u64> = std::env::var("MMP_LAB_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    if let Some(s) = seed {
        r.figure("fault order", format!("random, MMP_LAB_SEED={s}"));
    }
    let budget = std::env::var("MMP_LAB_CYCLES_MAX_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    let began = Instant::now();
    let mut done = 0usize;
    let mut by_kind: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for cycle in 0..cycles {
        if let Some(b) = budget.filter(|b| began.elapsed() > *b) {
            eprintln!(
                "    time budget MMP_LAB_CYCLES_MAX_SECS={} used up after {cycle} cycles",
                b.as_secs()
            );
            break;
        }
        let taker = 1 - owner;
        let pick = seed.map_or(cycle % faults.len(), |s| {
            let x = mmp_core::rand::splitmix64_mix(s ^ (cycle as u64).wrapping_mul(0x9e37_79b9));
            usize::try_from(x % faults.len() as u64).unwrap_or(0)
        });
        let fault = faults[pick].clone();
        *by_kind.entry(fault.clone()).or_default() += 1;
        std::thread::sleep(Duration::from_secs(3));
        if acks(&nodes[owner], &tag).is_empty() {
            return Err(format!(
                "cycle {cycle}: the writer on {} acknowledged nothing",
                nodes[owner].name()
            )
            .into());
        }
        let faulted = Instant::now();
        let frozen = fault == "freeze" || fault == "freeze-handover";
        match fault.as_str() {
            "freeze" | "freeze-handover" => nodes[owner].freeze()?,
            // The holder dies (SIGKILL: no CLEAN); the writer goes on writing.
            "kill" => {
                nodes[owner].expect(
                    "kill the holder",
                    "kill -9 $(cat /jobs/holder.pid)",
                    0,
                    SHORT,
                )?;
            }
            // The path to the storage hangs; the node runs on (its holder's heartbeat
            // I/O never completes: it self-fences when its lease ends).
            _ => nodes[owner].power_off()?,
        }
        // Acknowledged records (the job folder is on the host: a frozen or dead node's
        // acknowledgements are all there). After a kill, the writer may still acknowledge
        // records until the taker fences it; those are read again after the takeover.
        let stats_before = if fault == "power" {
            Vec::new()
        } else {
            nodes[owner].blockstats()?
        };
        // The takeover, with the old owner's counters sampled until the taker reports
        // `acquired` (printed only after its reservations are taken): the baseline for
        // "writes after the partner acquired" is the last sample before that line.
        let job = nodes[taker].spawn("takeover", &hold("--force "))?;
        let mut baseline = stats_before.clone();
        let j = loop {
            if fault == "kill" {
                baseline = nodes[owner].blockstats()?;
            }
            if let Some(res) = job.try_result()? {
                break res;
            }
            if faulted.elapsed() > LONG {
                return Err(format!("cycle {cycle}: the takeover did not finish").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if j.rc != 0 {
            return Err(format!("cycle {cycle}: takeover exit {}:\n{}", j.rc, j.out).into());
        }
        let acquired_after = faulted.elapsed();
        let took_s = took(&j.out).unwrap_or(-1.0);
        takeovers.push(took_s);
        if fence && !j.out.contains("fenced: reservation key") {
            return Err(format!(
                "cycle {cycle}: the taker did not report its reservation:\n{}",
                j.out
            )
            .into());
        }
        nodes[taker].expect("mount after the takeover", &mount, 0, LONG)?;
        let acked = acks(&nodes[owner], &tag);
        let view = nodes[taker].run("read the records", &format!("cat /mnt/d/rec-{tag}"), SHORT)?;
        match check_records(&tag, &acked, &view.out) {
            Ok(n) => checked += n,
            Err(e) if !fence => return records_lost_gap(r, cycle, &e, late_writes),
            Err(e) => return Err(format!("cycle {cycle}: {e}").into()),
        }
        // The new owner writes too.
        let mut next_tag = format!("{}{}", nodes[taker].name(), cycle + 1);
        nodes[taker].expect("writer", &start_writer(&next_tag), 0, SHORT)?;
        // `freeze-handover`: the new owner releases cleanly while the old one is still
        // frozen (what Pacemaker without STONITH did in soak 2 when it moved the group back:
        // it stopped the good instance first). The old owner's stale mount must stay
        // refused after that release too.
        if fault == "freeze-handover" {
            std::thread::sleep(Duration::from_secs(3));
            nodes[taker].expect(
                "the new owner releases cleanly",
                &format!(
                    "kill $(cat /jobs/writer.pid); umount /mnt/d
{}",
                    stop_holder("holder")
                ),
                0,
                LONG,
            )?;
        }

        let (mut ok, mut failed) = (0u64, 0u64);
        let mut note = String::new();
        match fault.as_str() {
            "power" => {
                // Nothing of the old node runs: boot it again for the next cycles.
                let spec = nodes[owner].spec.clone();
                let mut n = Node::boot(&ctx.run_dir, &ctx.images, &ctx.tools, spec)?;
                n.wait_ready(Duration::from_secs(180))?;
                nodes[owner] = n;
                note.push_str("powered off, booted again");
            }
            _ => {
                if frozen {
                    if nodes[owner].blockstats()? != stats_before {
                        return Err(
                            format!("cycle {cycle}: the frozen node's counters moved").into()
                        );
                    }
                    nodes[owner].resume()?;
                }
                std::thread::sleep(Duration::from_secs(10));
                (ok, failed) = write_deltas(&nodes[owner].blockstats()?, &baseline);
                let j = nodes[owner].run(
                    "the old owner after the fault",
                    "kill $(cat /jobs/writer.pid) 2>/dev/null\ni=0; while kill -0 $(cat /jobs/holder.pid) 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.1; done\n\
                     cat /jobs/holder.log; umount /mnt/d 2>/dev/null || umount -l /mnt/d; grep /mnt/d /proc/mounts; true",
                    SHORT,
                )?;
                if j.out.contains("ownership lost") {
                    losses_seen += 1;
                }
                if fault == "freeze-handover" {
                    // The stale mount is gone: the new owner acquires again (the area is
                    // clean), checks the records it acknowledged before its release, and
                    // writes on.
                    nodes[taker].expect("acquire again", &hold(""), 0, LONG)?;
                    nodes[taker].expect("mount again", &mount, 0, LONG)?;
                    let mine = acks(&nodes[taker], &next_tag);
                    let view = nodes[taker].run(
                        "read the records again",
                        &format!("cat /mnt/d/rec-{next_tag}"),
                        SHORT,
                    )?;
                    match check_records(&next_tag, &mine, &view.out) {
                        Ok(n) => checked += n,
                        Err(e) if !fence => {
                            return records_lost_gap(r, cycle, &e, late_writes + ok);
                        }
                        Err(e) => {
                            return Err(format!("cycle {cycle} (after the handover): {e}").into());
                        }
                    }
                    next_tag.push('r');
                    nodes[taker].expect("writer", &start_writer(&next_tag), 0, SHORT)?;
                    note.push_str("released by the new owner while frozen; acquired again");
                }
                if ok > 0 {
                    note = format!("old owner's holder:\n{}", j.out.trim_end());
                }
            }
        }
        late_writes += ok;
        refused_writes += failed;
        eprintln!(
            "    cycle {cycle} ({fault}): {} faulted, {} acquired after {:.1} s (guest {took_s:.1} s); {} acked records intact; afterwards: {ok} successful, {failed} refused writes from the old owner {note}",
            nodes[owner].name(),
            nodes[taker].name(),
            acquired_after.as_secs_f64(),
            acked.len(),
        );
        owner = taker;
        tag = next_tag;
        done += 1;
    }
    // The last owner releases cleanly: data unmounted, then CLEAN; its reservation stays
    // until the next owner preempts it (no host preempted earlier may write meanwhile).
    // Then an administrator gives the LUNs up for good (`mmp pr --release`).
    let o = &mut nodes[owner];
    o.expect("stop the writer", "kill $(cat /jobs/writer.pid)", 0, SHORT)?;
    o.expect("umount", "umount /mnt/d", 0, SHORT)?;
    let rel = o.expect("release", &stop_holder("holder"), 0, SHORT)?;
    let pr = o.expect(
        "reservations after the release",
        &format!("{devs}mmp pr $AREA $DATA"),
        0,
        SHORT,
    )?;
    let given_up = o.expect(
        "mmp pr --release",
        &format!("{devs}mmp pr --release $AREA $DATA 2>&1"),
        0,
        SHORT,
    )?;
    r.figure("cycles (failovers)", format!("{done} of {cycles}"));
    r.figure(
        "faults",
        by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    r.figure(
        "old owner's successful writes after the partner acquired",
        late_writes.to_string(),
    );
    r.figure(
        "old owner's writes refused by the storage",
        refused_writes.to_string(),
    );
    r.figure(
        "acknowledged records checked on the new owner",
        checked.to_string(),
    );
    r.figure(
        "old owner's holder reported the loss after a freeze",
        format!(
            "{losses_seen}/{}",
            by_kind.get("freeze").copied().unwrap_or(0)
                + by_kind.get("freeze-handover").copied().unwrap_or(0)
        ),
    );
    let mut t = takeovers.clone();
    t.sort_by(f64::total_cmp);
    if let Some(m) = t.get(t.len() / 2) {
        r.secs(&format!("takeover {fence_arg}(median, guest)"), *m);
    }
    if let Some(p) = t.get((t.len() * 99).div_ceil(100).saturating_sub(1)) {
        r.secs(&format!("takeover {fence_arg}(p99, guest)"), *p);
    }
    let fsck = o.run(
        "xfs_repair -n",
        &format!("{devs}$T/xfs_repair -n $DATA"),
        LONG,
    )?;
    r.figure(
        "xfs_repair -n",
        if fsck.rc == 0 {
            "clean".to_owned()
        } else {
            format!("exit {}", fsck.rc)
        },
    );
    eprintln!("    reservations after the release:\n{}", pr.out.trim_end());
    if !fence {
        if late_writes > 0 {
            r.verdict = Verdict::Gap(format!(
                "without reservations the old owner wrote {late_writes} times after its partner acquired"
            ));
        }
    } else if late_writes > 0 {
        r.verdict = Verdict::Fail(format!(
            "the old owner wrote {late_writes} times after its partner acquired"
        ));
    } else if fsck.rc != 0 {
        r.verdict = Verdict::Fail(format!("xfs_repair -n exit {}:\n{}", fsck.rc, fsck.out));
    } else if !kept_by_this_host(&pr.out, 2) {
        r.verdict = Verdict::Fail(format!(
            "the releasing owner does not keep its reservation on both LUNs after the clean release:\n{}\n{}",
            rel.out, pr.out
        ));
    } else if given_up.out.matches(", no reservation").count() != 2
        || !given_up.out.contains("no registered reservation keys")
    {
        r.verdict = Verdict::Fail(format!(
            "`mmp pr --release` left a reservation or a key:\n{}",
            given_up.out
        ));
    }
    if fence {
        r.figure(
            "reservation after the clean release",
            "kept by the releasing owner on both LUNs; `mmp pr --release` gave them up",
        );
    }
    Ok(())
}

/// Without reservations an acknowledged record went missing: the gap this scenario shows
/// (the run ends at that cycle, as `pacemaker-comeback-without-reservations` does).
fn records_lost_gap(r: &mut Report, cycle: usize, err: &str, late_writes: u64) -> Result<()> {
    r.figure("cycle that lost acknowledged records", cycle.to_string());
    r.figure(
        "old owner's successful writes after the partner acquired (up to that cycle)",
        late_writes.to_string(),
    );
    r.verdict = Verdict::Gap(format!(
        "without reservations, cycle {cycle}: {err} ({late_writes} writes from the old owner after its partner acquired)"
    ));
    Ok(())
}

/// `eio-on-owner-path`: node a reaches the area and the XFS through a path that can fail
/// ([`NodeSpec::eio_flag`]: `nbdkit` with its error filter), b directly. a holds the area
/// (`--guard` the XFS) and writes witness records; then every request on a's path fails
/// with EIO (as on a dead HBA or a failed multipath without queueing): a's holder must see
/// it and self-fence, b takes over after the fail window, checks a's acknowledged records
/// and writes its own; then a's path works again: what a's file system still writes (its
/// holder is gone, but XFS retries its metadata after EIO: a known gap that `--cut-io` and
/// reservations close). QEMU's counters witness every write a issued.
fn eio_on_owner_path(ctx: &Ctx, r: &mut Report) -> Result<()> {
    eio_on_path(ctx, r, false)
}

/// `eio-on-owner-path-cut-io`: [`eio_on_owner_path`] with a's XFS mounted by
/// `mmp mount --cut-io`: when the holder self-fences it switches the data mapping to the
/// error target, so nothing the file system retries reaches the disk once the path works.
fn eio_on_owner_path_cut_io(ctx: &Ctx, r: &mut Report) -> Result<()> {
    eio_on_path(ctx, r, true)
}

fn eio_on_path(ctx: &Ctx, r: &mut Report, cut_io: bool) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let disks = [area, data];
    let flag = ctx.run_dir.join("a-path-fails");
    let _ = std::fs::remove_file(&flag);
    let mut spec_a = NodeSpec::new("a", 0xa1, &disks);
    spec_a.eio_flag = Some(flag.clone());
    let mut nodes = boot_pair(ctx, r, spec_a, NodeSpec::new("b", 0xb2, &disks))?;
    let (a, b) = two(&mut nodes);
    a.expect(
        "format the area",
        "mmp format --interval-ms 1000 /dev/vda",
        0,
        SHORT,
    )?;
    a.expect("mkfs.xfs", "$T/mkfs.xfs -q -f /dev/vdb", 0, LONG)?;
    let hold = |extra: &str| {
        format!(
            "mkdir -p /mnt/d\n{}",
            start_holder(
                "holder",
                &format!("hold {extra}--guard /dev/vdb --on-loss exit /dev/vda")
            )
        )
    };
    let mount = "mount -t xfs /dev/vdb /mnt/d";
    if cut_io {
        a.expect(
            "mmp mount --cut-io",
            "mkdir -p /mnt/d /jobs/run && MMP_RUN_DIR=/jobs/run mmp mount --cut-io -t xfs --mmp-device /dev/vda /dev/vdb /mnt/d && grep /mnt/d /proc/mounts",
            0,
            LONG,
        )?;
    } else {
        a.expect("hold", &hold(""), 0, LONG)?;
        a.expect("mount", mount, 0, LONG)?;
    }
    a.expect("writer", &start_writer("a0"), 0, SHORT)?;
    std::thread::sleep(Duration::from_secs(3));
    if acks(a, "a0").is_empty() {
        return Err("a's writer acknowledged nothing".into());
    }
    let before = a.blockstats()?;
    std::fs::write(&flag, "")?;
    let failing = Instant::now();
    let job = b.spawn("takeover", &hold("--force "))?;
    let j = job.wait(LONG)?;
    if j.rc != 0 {
        return Err(format!("takeover exit {}:\n{}", j.rc, j.out).into());
    }
    r.secs(
        "a's path fails -> b acquired (host)",
        failing.elapsed().as_secs_f64(),
    );
    let at_takeover = a.blockstats()?;
    let (ok_before, failed_before) = write_deltas(&at_takeover, &before);
    r.figure(
        "a's writes between the failure and b's acquire: completed / failed with EIO",
        format!("{ok_before} / {failed_before}"),
    );
    let aj = a.run(
        "a's holder",
        "if [ -e /jobs/holder.pid ]; then i=0; while kill -0 $(cat /jobs/holder.pid) 2>/dev/null; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done; tail -3 /jobs/holder.log; kill -0 $(cat /jobs/holder.pid) 2>/dev/null && echo 'holder still running'; else sleep 2; tail -q -n 8 /jobs/run/*.log; fi; dmesg | grep -E 'XFS .*(shut|rror)' | tail -2; true",
        SHORT,
    )?;
    eprintln!("    a after its path failed:\n{}", aj.out.trim_end());
    let self_fenced = aj.out.contains("ownership lost") && !aj.out.contains("holder still running");
    r.figure(
        "a's holder",
        if self_fenced {
            "reported the loss and exited before b acquired"
        } else {
            "DID NOT report the loss"
        },
    );
    b.expect("b mounts", mount, 0, LONG)?;
    let a_acked = acks(a, "a0");
    let view = b.run("read a's records", "cat /mnt/d/rec-a0", SHORT)?;
    let checked = check_records("a0", &a_acked, &view.out).map_err(|e| format!("on b: {e}"))?;
    r.figure("a's acknowledged records intact on b", checked.to_string());
    b.expect("b writes", &start_writer("b1"), 0, SHORT)?;
    // The path works again.
    std::fs::remove_file(&flag)?;
    std::thread::sleep(Duration::from_secs(15));
    let (ok_after, _) = write_deltas(&a.blockstats()?, &at_takeover);
    r.figure(
        "a's completed writes after b acquired (path failing, then working again)",
        ok_after.to_string(),
    );
    let bj = b.run(
        "b checks",
        "kill $(cat /jobs/writer.pid); sleep 1; cat /mnt/d/rec-b1 >/jobs/rec-b1.txt; umount /mnt/d; $T/xfs_repair -n /dev/vdb >/jobs/repair.log 2>&1; echo repair=$?",
        LONG,
    )?;
    let repair_ok = bj.out.contains("repair=0");
    r.figure(
        "xfs_repair -n on b",
        if repair_ok { "clean" } else { "damage found" },
    );
    let b_view = std::fs::read_to_string(b.job_file("rec-b1.txt")).unwrap_or_default();
    let b_checked = check_records("b1", &acks(b, "b1"), &b_view).map_err(|e| format!("b: {e}"))?;
    r.figure("b's acknowledged records intact", b_checked.to_string());
    if cut_io {
        let cut = aj.out.contains("cut I/O to");
        r.figure(
            "a's data mapping",
            if cut {
                "switched to the error target by the holder"
            } else {
                "NOT cut"
            },
        );
        if !cut {
            r.verdict = Verdict::Fail("a's holder did not cut the data mapping".into());
        }
    }
    if ok_after > 0 || !repair_ok || !self_fenced {
        let what = format!(
            "a completed {ok_after} writes after b acquired once its path worked again; xfs_repair -n {}; a's holder {}",
            if repair_ok { "clean" } else { "found damage" },
            if self_fenced {
                "self-fenced"
            } else {
                "did not self-fence"
            }
        );
        r.verdict = if !cut_io && self_fenced && repair_ok {
            // The holder did its part; the file system's own retries are what --cut-io or
            // reservations stop.
            Verdict::Gap(format!("without --cut-io: {what}"))
        } else {
            Verdict::Fail(what)
        };
    }
    Ok(())
}

/// `late-write-with-reservations`: see [`late_write_on_iscsi`].
fn late_write_with_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    late_write_on_iscsi(ctx, r, true)
}

/// `late-write-without-reservations`: [`late_write_on_iscsi`] without `--fence`.
fn late_write_without_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    late_write_on_iscsi(ctx, r, false)
}

/// The late write (issue: protect the data): node a reaches the LUNs through its own path
/// ([`PathRelay`]), b directly. a holds the area (`--guard` the data LUN) and writes witness
/// records on the XFS; a's path is held: its heartbeat and data writes queue in the path
/// while a runs on. b takes over (`--force`, with `--fence scsi-pr` preempting a's key),
/// mounts, checks a's acknowledged records and writes its own. Then a's path comes back and
/// everything a had queued lands, late. QEMU's counters on a: its writes that completed
/// after b acquired (must be 0 with reservations: the target refuses them); b's records
/// and `xfs_repair -n` afterwards.
fn late_write_on_iscsi(ctx: &Ctx, r: &mut Report, fence: bool) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 16 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let target = IscsiTarget::start(&ctx.run_dir, &[area, data])?;
    let path = PathRelay::start(target.port())?;
    let mut spec_a = NodeSpec::new("a", 0xa1, &[]);
    spec_a.luns = path.luns(&target.luns());
    let mut spec_b = NodeSpec::new("b", 0xb2, &[]);
    spec_b.luns = target.luns();
    let mut nodes = boot_pair(ctx, r, spec_a, spec_b)?;
    let jobs = LunJobs::new(fence);
    let devs = &jobs.devs;
    let hold = |extra: &str| jobs.hold(extra);
    let mount = jobs.mount();
    let (a, b) = two(&mut nodes);
    jobs.format(a)?;
    a.expect("hold", &hold(""), 0, LONG)?;
    a.expect("mount", &mount, 0, LONG)?;
    a.expect("writer", &start_writer("a0"), 0, SHORT)?;
    std::thread::sleep(Duration::from_secs(3));
    if acks(a, "a0").is_empty() {
        return Err("a's writer acknowledged nothing".into());
    }
    path.hold(true);
    let stalled = Instant::now();
    let job = b.spawn("takeover", &hold("--force "))?;
    let mut baseline;
    let j = loop {
        baseline = a.blockstats()?;
        if let Some(res) = job.try_result()? {
            break res;
        }
        if stalled.elapsed() > LONG {
            return Err("the takeover did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if j.rc != 0 {
        return Err(format!("takeover exit {}:\n{}", j.rc, j.out).into());
    }
    r.secs(
        "a's path held -> b acquired (host)",
        stalled.elapsed().as_secs_f64(),
    );
    b.expect("b mounts", &mount, 0, LONG)?;
    let a_acked = acks(a, "a0");
    let view = b.run("read a's records", "cat /mnt/d/rec-a0", SHORT)?;
    let checked = check_records("a0", &a_acked, &view.out).map_err(|e| format!("on b: {e}"))?;
    r.figure(
        "a's acknowledged records intact on b at the takeover",
        checked.to_string(),
    );
    b.expect("b writes", &start_writer("b1"), 0, SHORT)?;
    std::thread::sleep(Duration::from_secs(5));
    let held_for = stalled.elapsed();
    path.hold(false);
    r.secs("a's path held for (host)", held_for.as_secs_f64());
    std::thread::sleep(Duration::from_secs(20));
    let (ok, failed) = write_deltas(&a.blockstats()?, &baseline);
    r.figure(
        "a's writes that completed after b acquired (late writes landed)",
        ok.to_string(),
    );
    r.figure("a's writes refused by the storage", failed.to_string());
    let late_acks = acks(a, "a0").len() - a_acked.len();
    r.figure(
        "records a's writer acknowledged after the path came back",
        late_acks.to_string(),
    );
    let aj = a.run(
        "a after its path came back",
        "kill $(cat /jobs/writer.pid) 2>/dev/null; sleep 1; tail -3 /jobs/holder.log; umount /mnt/d 2>/dev/null || umount -l /mnt/d; true",
        LONG,
    )?;
    eprintln!("    a's holder:\n{}", aj.out.trim_end());
    let bj = b.run(
        "b after the late writes",
        &format!("{devs}kill $(cat /jobs/writer.pid); sleep 1; tail -2 /jobs/holder.log; cat /mnt/d/rec-b1 >/jobs/rec-b1.txt; cat /mnt/d/rec-a0 >/jobs/rec-a0.txt; umount /mnt/d; $T/xfs_repair -n $DATA >/jobs/repair.log 2>&1; echo repair=$?"),
        LONG,
    )?;
    eprintln!("    b:\n{}", bj.out.trim_end());
    let b_lost_loss = bj.out.contains("ownership lost");
    if b_lost_loss {
        r.figure(
            "b's holder",
            "saw a foreign write on the area and reported the loss",
        );
    }
    let repair_ok = bj.out.contains("repair=0");
    r.figure(
        "xfs_repair -n on b",
        if repair_ok { "clean" } else { "damage found" },
    );
    let b_view = std::fs::read_to_string(b.job_file("rec-b1.txt")).unwrap_or_default();
    let b_acked = acks(b, "b1");
    let b_check = check_records("b1", &b_acked, &b_view);
    let a_view = std::fs::read_to_string(b.job_file("rec-a0.txt")).unwrap_or_default();
    let a_check = check_records("a0", &a_acked, &a_view);
    r.figure(
        "b's acknowledged records after the late writes",
        match &b_check {
            Ok(n) => format!("{n} intact"),
            Err(e) => format!("LOST: {e}"),
        },
    );
    let bad = ok > 0 || b_check.is_err() || a_check.is_err() || !repair_ok || b_lost_loss;
    if bad {
        let what = format!(
            "{ok} late writes from a landed after b acquired; b's records {}; a's records {}; xfs_repair -n {}; b's holder {}",
            if b_check.is_ok() { "intact" } else { "lost" },
            if a_check.is_ok() { "intact" } else { "lost" },
            if repair_ok { "clean" } else { "found damage" },
            if b_lost_loss {
                "lost the area"
            } else {
                "kept the area"
            },
        );
        r.verdict = if fence {
            Verdict::Fail(what)
        } else {
            Verdict::Gap(format!("without reservations: {what}"))
        };
    } else if !fence {
        r.figure(
            "late writes without reservations",
            "none landed in this run",
        );
    }
    Ok(())
}

/// Whether `mmp pr` text shows `n` reservations held by this host's key.
pub(crate) fn kept_by_this_host(pr_out: &str, n: usize) -> bool {
    let lines: Vec<&str> = pr_out.lines().collect();
    let held = lines
        .windows(2)
        .filter(|w| w[0].ends_with(", reservation:") && w[1].trim_end().ends_with(", this host)"))
        .count();
    held == n
}

/// The local I/O cut-off (issue: protect the data): node a mounts an XFS through
/// `mmp mount --cut-io` (a device-mapper mapping its holder controls) and runs the witness
/// writer; node b overwrites the MMP area (what a takeover looks like to a. b's `dd`
/// stands for any host that took the device). a's holder sees the foreign write at its next
/// heartbeat, cuts the mapping (error target), then runs its loss action. Figures: how long
/// the cut took (the holder's log), the data writes QEMU saw from a between the foreign
/// write and the cut, and after the cut (must be 0); acknowledged records stop.
fn cut_io_on_loss(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let disks = [area, data];
    let mut nodes = boot_pair(
        ctx,
        r,
        NodeSpec::new("a", 0xa1, &disks),
        NodeSpec::new("b", 0xb2, &disks),
    )?;
    let (a, b) = two(&mut nodes);
    a.expect(
        "format the area",
        "mmp format --interval-ms 1000 /dev/vda",
        0,
        SHORT,
    )?;
    a.expect("mkfs.xfs", "$T/mkfs.xfs -q -f /dev/vdb", 0, LONG)?;
    a.expect(
        "mmp mount --cut-io",
        "mkdir -p /mnt/d /jobs/run && MMP_RUN_DIR=/jobs/run mmp mount --cut-io -t xfs --mmp-device /dev/vda /dev/vdb /mnt/d && grep /mnt/d /proc/mounts",
        0,
        LONG,
    )?;
    a.expect("writer", &start_writer("a"), 0, SHORT)?;
    std::thread::sleep(Duration::from_secs(3));
    let acked_before = acks(a, "a").len();
    if acked_before == 0 {
        return Err("the writer acknowledged nothing".into());
    }
    let before = a.writes_to("data")?;
    b.expect(
        "overwrite the area",
        "dd if=/dev/urandom of=/dev/vda bs=4096 count=1 oflag=direct conv=fsync 2>&1",
        0,
        SHORT,
    )?;
    let overwritten = Instant::now();
    let log_path = a.job_file("run");
    let holder_log = || -> String {
        std::fs::read_dir(&log_path)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    };
    let mut at_cut = None;
    while overwritten.elapsed() < Duration::from_secs(30) {
        if holder_log().contains("cut I/O to") {
            at_cut = Some((overwritten.elapsed(), a.writes_to("data")?));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = holder_log();
    eprintln!("    a's holder:\n{}", log.trim_end());
    let Some((cut_after, cut_writes)) = at_cut else {
        return Err(format!("a's holder did not cut the I/O within 30 s:\n{log}").into());
    };
    let acked_at_cut = acks(a, "a").len();
    std::thread::sleep(Duration::from_secs(8));
    let end = a.writes_to("data")?;
    let acked_end = acks(a, "a").len();
    let log = holder_log();
    let cut_ms = log.lines().find_map(|l| {
        l.split(" in ")
            .nth(1)?
            .split(" ms")
            .next()?
            .parse::<f64>()
            .ok()
    });
    r.secs(
        "loss seen and I/O cut after the foreign write (host)",
        cut_after.as_secs_f64(),
    );
    if let Some(ms) = cut_ms {
        r.figure(
            "cut (load error table, suspend, resume) took",
            format!("{ms:.1} ms"),
        );
    }
    r.figure(
        "a: data writes between the foreign write and the cut",
        (cut_writes - before).to_string(),
    );
    r.figure(
        "a: data writes after the cut (8 s)",
        (end - cut_writes).to_string(),
    );
    r.figure(
        "a: records acknowledged after the cut",
        (acked_end - acked_at_cut).to_string(),
    );
    let j = a.run(
        "a after the cut",
        "kill $(cat /jobs/writer.pid) 2>/dev/null; MMP_RUN_DIR=/jobs/run mmp umount /mnt/d 2>&1; echo \"umount exit $?\"; ls /dev/mapper | sed 's/^/mapper: /'; grep /mnt/d /proc/mounts | sed 's/^/mounted: /'",
        SHORT,
    )?;
    eprintln!("    a after the cut:\n{}", j.out.trim_end());
    if !j.out.contains("umount exit 3")
        || j.out.contains("mapper: mmp-vdb")
        || j.out.contains("mounted: ")
    {
        r.verdict = Verdict::Fail(format!(
            "mmp umount after the loss should unmount, report the loss (exit 3) and remove the mapping:\n{}",
            j.out
        ));
        return Ok(());
    }
    if end != cut_writes {
        r.verdict = Verdict::Fail(format!(
            "{} data writes reached the disk after the cut",
            end - cut_writes
        ));
    } else if acked_end > acked_at_cut + 1 {
        r.verdict = Verdict::Fail(format!(
            "the writer acknowledged {} records after the cut",
            acked_end - acked_at_cut
        ));
    }
    Ok(())
}

fn takeover_timings(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let ext4 = Disk::create(&ctx.run_dir, "ext4", 64 * MIB)?;
    let disks = [area, ext4];
    let spec_a = NodeSpec::new("a", 0xa1, &disks);
    let mut nodes = boot_pair(ctx, r, spec_a.clone(), NodeSpec::new("b", 0xb2, &disks))?;
    {
        let (a, b) = two(&mut nodes);
        a.expect("format", "mmp format --interval-ms 1000 /dev/vda", 0, SHORT)?;
        a.expect(
            "mke2fs -O mmp",
            "$T/mke2fs -q -F -t ext4 -O mmp -E mmp_update_interval=1 /dev/vdb",
            0,
            LONG,
        )?;
        // Native, clean handover: a releases, b (not watching) acquires; then a queued
        // standby (hold --wait) that watched the release.
        a.expect("a holds", &start_holder("hold", "hold /dev/vda"), 0, LONG)?;
        a.expect("a releases", &stop_holder("hold"), 0, SHORT)?;
        let j = b.expect(
            "b holds after a clean release",
            &start_holder("hold", "hold /dev/vda"),
            0,
            LONG,
        )?;
        r.secs(
            "native 1 s: clean handover, release not watched",
            took(&j.out).unwrap_or(-1.0),
        );
        // The standby must see a few of b's heartbeats before the release (the mmp process
        // starts from 9p and locks its memory: seconds under TCG).
        let w = a.spawn(
            "a queues",
            &start_holder("hold", "hold --wait --verbose /dev/vda"),
        )?;
        std::thread::sleep(Duration::from_secs(8));
        b.expect("b releases", &stop_holder("hold"), 0, SHORT)?;
        let released = Instant::now();
        let j = w.wait(LONG)?;
        if j.rc != 0 {
            return Err(format!("a: hold --wait failed: {}", j.out).into());
        }
        r.secs(
            "native 1 s: queued standby after the release (host)",
            released.elapsed().as_secs_f64(),
        );
        a.expect("a releases", &stop_holder("hold"), 0, SHORT)?;

        // ext4: the kernel's clean handover to e2fsprogs (debugfs -w opens with MMP).
        let j = b.expect(
            "debugfs -w on a clean block",
            &timed("$T/debugfs -w -R stats /dev/vdb >/dev/null"),
            0,
            LONG,
        )?;
        r.secs(
            "ext4 1 s: e2fsprogs open (debugfs -w) of a clean block",
            took(&j.out).unwrap_or(-1.0),
        );
        let j = b.expect(
            "mmp hold of a clean block",
            &start_holder("e", "hold /dev/vdb"),
            0,
            LONG,
        )?;
        r.secs(
            "ext4 1 s: mmp hold of a clean block",
            took(&j.out).unwrap_or(-1.0),
        );
        b.expect("b releases", &stop_holder("e"), 0, SHORT)?;

        // Crash of a native holder and of a kernel mount on a, by power loss.
        a.expect(
            "a holds native",
            &start_holder("hold", "hold /dev/vda"),
            0,
            LONG,
        )?;
        a.expect(
            "a kernel-mounts",
            "mkdir -p /mnt/e && mount -t ext4 /dev/vdb /mnt/e",
            0,
            LONG,
        )?;
        a.power_off()?;
        let j = b.expect("b takes the native area", &timed("mmp hold --force /dev/vda >/jobs/t.log 2>&1 &\necho $! >/jobs/t.pid\nwhile ! grep -q '^acquired' /jobs/t.log; do kill -0 $(cat /jobs/t.pid) || exit 8; sleep 0.05; done"), 0, LONG)?;
        r.secs(
            "native 1 s: crash takeover (mmp hold --force)",
            took(&j.out).unwrap_or(-1.0),
        );
        let j = b.expect(
            "e2mmpstatus after the crash",
            &timed("$T/e2mmpstatus /dev/vdb"),
            0, // it watches the block for its wait and calls a silent one safe
            LONG,
        )?;
        r.secs(
            "ext4 1 s: e2mmpstatus of a crashed owner (safe)",
            took(&j.out).unwrap_or(-1.0),
        );
        let j = b.expect(
            "mmp check after the crash",
            &timed("mmp check /dev/vdb"),
            0,
            LONG,
        )?;
        r.secs(
            "ext4 1 s: mmp check of a crashed owner (safe)",
            took(&j.out).unwrap_or(-1.0),
        );
        let j = b.expect(
            "kernel mounts after the crash",
            &timed("mkdir -p /mnt/e && mount -t ext4 /dev/vdb /mnt/e"),
            0,
            LONG,
        )?;
        r.secs(
            "ext4 1 s: crash takeover (kernel mount)",
            took(&j.out).unwrap_or(-1.0),
        );
        b.expect("umount", "umount /mnt/e", 0, SHORT)?;
    }
    // A second crash for mmp's own ext4 takeover.
    let mut a = Node::boot(&ctx.run_dir, &ctx.images, &ctx.tools, spec_a)?;
    a.wait_ready(Duration::from_secs(180))?;
    let b = &mut nodes[1];
    a.expect(
        "a kernel-mounts again",
        "mkdir -p /mnt/e && mount -t ext4 /dev/vdb /mnt/e",
        0,
        LONG,
    )?;
    a.power_off()?;
    let j = b.expect(
        "mmp hold --force after the crash",
        &start_holder("e2", "hold --force /dev/vdb"),
        0,
        LONG,
    )?;
    r.secs(
        "ext4 1 s: crash takeover (mmp hold --force)",
        took(&j.out).unwrap_or(-1.0),
    );
    b.expect("release", &stop_holder("e2"), 0, SHORT)?;
    Ok(())
}

/// Runs one scenario in `ctx.run_dir` and returns its report; an error becomes
/// [`Verdict::Fail`].
#[must_use]
pub fn run(s: &Scenario, ctx: &Ctx) -> Report {
    let mut r = Report {
        verdict: Verdict::Pass,
        figures: Vec::new(),
    };
    if let Err(e) = (s.run)(ctx, &mut r) {
        r.verdict = Verdict::Fail(e.to_string());
    }
    r
}

/// The results table printed at the end of a run.
#[must_use]
pub fn table(rows: &[(&Scenario, Report, Duration)]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "| scenario | result | time | figures |");
    let _ = writeln!(t, "|---|---|---|---|");
    for (s, r, d) in rows {
        let verdict = match &r.verdict {
            Verdict::Pass => "PASS".to_owned(),
            Verdict::Fail(m) => format!("FAIL: {}", m.lines().next().unwrap_or_default()),
            Verdict::Gap(m) => format!("GAP (expected): {m}"),
        };
        let figs: Vec<String> = r.figures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            t,
            "| {} | {verdict} | {:.0} s | {} |",
            s.name,
            d.as_secs_f64(),
            figs.join("; ")
        );
    }
    t
}
