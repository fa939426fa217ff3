//! The lab's scenarios: each boots its own nodes on fresh disks, runs its steps and reports a
//! verdict with figures. Times inside guests come from the guest's `/proc/uptime`; under TCG
//! they are slow in absolute terms, compare them with the peers measured in the same run.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{Disk, Images, Node, NodeSpec, Result, Tools, boot_all};

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
        name: "watchdog-fences-frozen-holder",
        about: "i6300esb watchdog: a SIGSTOPped holder's node powers off before the partner takes over",
        smoke: true,
        shows_gap: false,
        run: watchdog_fences_frozen_holder,
    },
    Scenario {
        name: "comeback-after-freeze",
        about: "an XFS owner frozen past the takeover resumes: its writes to the data disk after the partner acquired, counted by QEMU",
        smoke: true,
        shows_gap: true,
        run: comeback_after_freeze,
    },
    Scenario {
        name: "takeover-timings",
        about: "crash takeover and clean handover times across nodes, native and ext4, beside the kernel and e2fsprogs",
        smoke: false,
        shows_gap: false,
        run: takeover_timings,
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

fn watchdog_fences_frozen_holder(ctx: &Ctx, r: &mut Report) -> Result<()> {
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
    a.expect(
        "SIGSTOP the holder",
        "kill -STOP $(cat /jobs/hold.pid)",
        0,
        SHORT,
    )?;
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
    let off = off.ok_or("a did not power off within 180 s of the SIGSTOP")?;
    let acquired = acquired.ok_or("b did not take over within 180 s")?;
    r.secs("a: powered off after SIGSTOP (host)", off.as_secs_f64());
    r.secs("b: acquired after SIGSTOP (host)", acquired.as_secs_f64());
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
