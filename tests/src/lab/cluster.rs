//! Cluster and systemd scenarios on the full guest ([`super::full`]): two nodes with
//! systemd, corosync (knet, `two_node: 1`, `token: 3000`) and Pacemaker over a point-to-point
//! link, the group `ocf:mmp:mmp` (a native area on `/dev/vdb`, interval 1 s) +
//! `ocf:heartbeat:Filesystem` (XFS on `/dev/vdc`), and the data-integrity witness
//! (`witness.py`: numbered, checksummed, fsynced records on the XFS whose acknowledgements go
//! to the node's job folder on the host).
//!
//! Every check ends the same way: the group is stopped through Pacemaker, `xfs_repair -n`
//! runs on the partner, the XFS is mounted read-only there and every acknowledged record
//! must be on it, intact. QEMU's `query-blockstats` counts the writes each node issued.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::full::{FullBoot, FullImage, Link};
use super::scenarios::{Ctx, Report, Verdict};
use super::{Disk, Job, JobResult, Node, NodeSpec, Result};

const MIB: u64 = 1 << 20;
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(300);

/// The data-integrity witness, shared with the guests as `/tools/lab/witness.py`.
const WITNESS: &str = include_str!("witness.py");

/// corosync 3: knet over the nodes' link-local addresses, two nodes, 3 s token.
const COROSYNC_CONF: &str = "\
totem {
    version: 2
    cluster_name: mmplab
    transport: knet
    token: 3000
    crypto_cipher: none
    crypto_hash: none
}
nodelist {
    node {
        name: a
        nodeid: 1
        ring0_addr: 169.254.0.1
    }
    node {
        name: b
        nodeid: 2
        ring0_addr: 169.254.0.2
    }
}
quorum {
    provider: corosync_votequorum
    two_node: 1
}
logging {
    to_syslog: yes
    to_stderr: no
    timestamp: on
}
";

/// The group: the MMP area first, then the XFS it protects (`cibadmin -C -o resources`).
const RESOURCES_XML: &str = r#"<group id="svc">
  <primitive id="svc-mmp" class="ocf" provider="mmp" type="mmp">
    <instance_attributes id="svc-mmp-ia">
      <nvpair id="svc-mmp-device" name="device" value="/dev/vdc"/>
      <nvpair id="svc-mmp-mmp_device" name="mmp_device" value="/dev/vdb"/>
    </instance_attributes>
    <operations>
      <op id="svc-mmp-start" name="start" interval="0" timeout="120s"/>
      <op id="svc-mmp-stop" name="stop" interval="0" timeout="60s"/>
      <op id="svc-mmp-monitor" name="monitor" interval="5s" timeout="20s"/>
    </operations>
  </primitive>
  <primitive id="svc-fs" class="ocf" provider="heartbeat" type="Filesystem">
    <instance_attributes id="svc-fs-ia">
      <nvpair id="svc-fs-device" name="device" value="/dev/vdc"/>
      <nvpair id="svc-fs-directory" name="directory" value="/mnt/d"/>
      <nvpair id="svc-fs-fstype" name="fstype" value="xfs"/>
    </instance_attributes>
    <operations>
      <op id="svc-fs-start" name="start" interval="0" timeout="90s"/>
      <op id="svc-fs-stop" name="stop" interval="0" timeout="90s"/>
      <op id="svc-fs-monitor" name="monitor" interval="10s" timeout="40s"/>
    </operations>
  </primitive>
</group>"#;

/// The holder's files written by the OCF agent for the area `/dev/vdb`.
const AGENT_OUT: &str = "/run/mmp/ocf-_dev_vdb.out";
const AGENT_LOG: &str = "/run/mmp/ocf-_dev_vdb.log";

/// Job text on the partner: marks when its holder acquired the area, when the XFS is
/// mounted, and when Pacemaker reports the group running there.
fn watch_takeover(node: &str) -> String {
    format!(
        "until grep -q acquired {AGENT_OUT} 2>/dev/null; do sleep 0.1; done\n\
         echo \"lab-mark acquired $(now)\"\n\
         until grep -q ' /mnt/d ' /proc/mounts; do sleep 0.1; done\n\
         echo \"lab-mark mounted $(now)\"\n\
         until crm_resource --locate -r svc-fs 2>/dev/null | grep -q 'running on: {node}'; do sleep 1; done\n\
         echo \"lab-mark started $(now)\""
    )
}

fn fig(r: &mut Report, name: &str, value: impl Into<String>) {
    let value = value.into();
    eprintln!("    {name}: {value}");
    r.figures.push((name.to_owned(), value));
}

fn secs(r: &mut Report, name: &str, d: Duration) {
    fig(r, name, format!("{:.1} s", d.as_secs_f64()));
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The full guest image, built (or found in the cache) once per run.
fn full_image(r: &mut Report) -> Result<FullImage> {
    static IMAGE: OnceLock<std::result::Result<FullImage, String>> = OnceLock::new();
    let t = Instant::now();
    let img = IMAGE
        .get_or_init(|| FullImage::build(&repo_root()).map_err(|e| e.to_string()))
        .clone()?;
    secs(r, "full image ready (cache or build; host)", t.elapsed());
    Ok(img)
}

/// Puts the OCF agent, the systemd unit and the witness next to `mmp` in the tools share.
fn prepare_tools(ctx: &Ctx) -> Result<()> {
    let repo = repo_root();
    let dir = &ctx.tools.dir;
    for (src, dst) in [
        ("contrib/ocf/mmp", "ocf/mmp"),
        ("contrib/systemd/mmp@.service", "systemd/mmp@.service"),
    ] {
        let to = dir.join(dst);
        fs::create_dir_all(to.parent().ok_or("no parent")?)?;
        fs::copy(repo.join(src), &to).map_err(|e| format!("copy {src}: {e}"))?;
    }
    fs::create_dir_all(dir.join("lab"))?;
    fs::write(dir.join("lab/witness.py"), WITNESS)?;
    Ok(())
}

fn two(nodes: &mut [Node]) -> (&mut Node, &mut Node) {
    let (a, rest) = nodes.split_at_mut(1);
    (&mut a[0], &mut rest[0])
}

/// Boots nodes a (hostid 0xa1, 169.254.0.1) and b (0xb2, 169.254.0.2) from the full image,
/// linked to each other when `network`.
fn boot_full_pair(ctx: &Ctx, r: &mut Report, disks: &[Disk], network: bool) -> Result<Vec<Node>> {
    let image = full_image(r)?;
    prepare_tools(ctx)?;
    let (la, lb) = if network {
        let (x, y) = Link::pair()?;
        (Some(x), Some(y))
    } else {
        (None, None)
    };
    let spec = |name: &str, hostid: u32, ip: &str, link: Option<Link>| {
        let mut s = NodeSpec::new(name, hostid, disks);
        s.memory_mb = 768;
        s.full = Some(FullBoot {
            image: image.clone(),
            ip: link.as_ref().map(|_| ip.to_owned()),
            link,
        });
        s
    };
    let t = Instant::now();
    let mut nodes = vec![
        Node::boot(
            &ctx.run_dir,
            &ctx.images,
            &ctx.tools,
            spec("a", 0xa1, "169.254.0.1", la),
        )?,
        Node::boot(
            &ctx.run_dir,
            &ctx.images,
            &ctx.tools,
            spec("b", 0xb2, "169.254.0.2", lb),
        )?,
    ];
    for n in &mut nodes {
        n.wait_ready(Duration::from_secs(300))?;
    }
    secs(r, "boot of two full nodes (host)", t.elapsed());
    Ok(nodes)
}

/// Pushes corosync.conf to both nodes, starts corosync and Pacemaker, waits until both are
/// online with a DC.
fn start_cluster(nodes: &mut [Node], r: &mut Report) -> Result<()> {
    let t = Instant::now();
    let mut jobs = Vec::new();
    for n in nodes.iter_mut() {
        fs::write(n.job_file("corosync.conf"), COROSYNC_CONF)?;
        jobs.push(n.spawn(
            "start corosync and pacemaker",
            "install -m 644 /jobs/corosync.conf /etc/corosync/corosync.conf && systemctl start corosync pacemaker",
        )?);
    }
    for j in jobs {
        let res = j.wait(LONG)?;
        if res.rc != 0 {
            return Err(format!("start corosync/pacemaker: exit {}: {}", res.rc, res.out).into());
        }
    }
    nodes[0].expect(
        "cluster forms",
        "i=0\nuntil crm_mon -1 2>/dev/null | grep -q 'Online: \\[ a b \\]' && crm_mon -1 2>/dev/null | grep -q 'Current DC: [ab] '; do\n\
         i=$((i+1)); [ $i -gt 120 ] && { crm_mon -1; corosync-cfgtool -s; exit 9; }; sleep 2\ndone",
        0,
        LONG,
    )?;
    secs(
        r,
        "cluster formed: both online, a DC (host, from the start of corosync)",
        t.elapsed(),
    );
    Ok(())
}

/// Formats the area and the XFS from `a`, configures the group (no STONITH) and waits until
/// it runs on `a`.
fn configure_group(a: &mut Node, r: &mut Report) -> Result<()> {
    a.expect(
        "format the area and the XFS",
        "mmp format --interval-ms 1000 /dev/vdb && mkfs.xfs -q -f /dev/vdc",
        0,
        LONG,
    )?;
    fs::write(a.job_file("resources.xml"), RESOURCES_XML)?;
    let t = Instant::now();
    let j = a.expect(
        "configure pacemaker",
        &format!(
            "set -e\n\
         crm_attribute -t crm_config -n stonith-enabled -v false\n\
         crm_attribute -t rsc_defaults -n resource-stickiness -v 100\n\
         cibadmin -C -o resources -x /jobs/resources.xml\n\
         cibadmin -C -o constraints -X '<rsc_location id=\"svc-prefers-a\" rsc=\"svc\" node=\"a\" score=\"50\"/>'\n\
         i=0\n\
         s=$(now); i=0\n\
         until grep -q acquired {AGENT_OUT} 2>/dev/null; do i=$((i+1)); [ $i -gt 1800 ] && exit 9; sleep 0.1; done\n\
         echo \"lab-took-acquire $s $(now)\"\n\
         until grep -q ' /mnt/d ' /proc/mounts; do i=$((i+1)); [ $i -gt 1800 ] && exit 9; sleep 0.1; done\n\
         echo \"lab-took-mount $s $(now)\"\n\
         until crm_resource --locate -r svc-fs 2>/dev/null | grep -q 'running on: a'; do\n\
         i=$((i+1)); [ $i -gt 1800 ] && {{ crm_mon -1; tail -5 /run/mmp/*.log; exit 9; }}; sleep 1\ndone\n\
         echo \"lab-took $s $(now)\"",
        ),
        0,
        LONG,
    )?;
    for (mark, what) in [
        ("lab-took-acquire", "a: configured -> area acquired (guest)"),
        ("lab-took-mount", "a: configured -> XFS mounted (guest)"),
        (
            "lab-took",
            "a: configured -> Pacemaker reports the group running (guest)",
        ),
    ] {
        fig(r, what, took_mark(&j.out, mark));
    }
    secs(r, "group started on a (host)", t.elapsed());
    Ok(())
}

/// Starts the witness writer on `n` (records of node NAME in `/mnt/d/records-NAME`, acks in
/// `/jobs/acks-NAME`, one record every 0.1 s).
fn start_writer(n: &mut Node) -> Result<()> {
    let name = n.name().to_owned();
    let file = format!("/mnt/d/records-{name}");
    n.expect(
        "start the witness writer",
        &format!(
            "setsid python3 /tools/lab/witness.py write {name} {file} /jobs/acks-{name} 0.1 >/jobs/writer-{name}.log 2>&1 </dev/null &\n\
             echo $! >/jobs/writer-{name}.pid\ni=0\n\
             until test -s /jobs/acks-{name}; do\n\
             kill -0 $(cat /jobs/writer-{name}.pid) && [ $i -lt 600 ] || {{ cat /jobs/writer-{name}.log; exit 1; }}\n\
             i=$((i+1)); sleep 0.1\ndone"
        ),
        0,
        SHORT,
    )
    .map(drop)
}

/// Acknowledged records of node `name` so far (host side).
fn acked(n: &Node) -> usize {
    fs::read_to_string(n.job_file(&format!("acks-{}", n.name())))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Waits until each `lab-mark NAME` line appears in the job's output; returns the host time
/// of each since `since`.
fn wait_marks(
    job: &Job,
    marks: &[&str],
    since: Instant,
    timeout: Duration,
) -> Result<Vec<Duration>> {
    let out = job.base.with_extension("out");
    let mut seen: Vec<Option<Duration>> = vec![None; marks.len()];
    loop {
        let text = fs::read_to_string(&out).unwrap_or_default();
        for (i, m) in marks.iter().enumerate() {
            let prefix = format!("lab-mark {m} ");
            if seen[i].is_none() && text.lines().any(|l| l.starts_with(&prefix)) {
                seen[i] = Some(since.elapsed());
            }
        }
        if seen.iter().all(Option::is_some) {
            return Ok(seen.into_iter().flatten().collect());
        }
        let done = job.try_result()?;
        if done.is_some() || since.elapsed() > timeout {
            let got: Vec<String> = marks
                .iter()
                .zip(&seen)
                .map(|(m, s)| format!("{m}: {s:?}"))
                .collect();
            return Err(format!(
                "{}: not every mark within {timeout:?} ({}); output:\n{}",
                job.what,
                got.join(", "),
                text.trim_end()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `crm_mon -1` and the agent's log on `n`, for an error message.
fn cluster_view(n: &mut Node) -> String {
    n.run(
        "cluster view",
        &format!("crm_mon -1 2>&1 | tail -20; tail -3 {AGENT_LOG} 2>/dev/null"),
        SHORT,
    )
    .map_or_else(|e| e.to_string(), |j| j.out)
}

/// The end of every cluster scenario: the writers stop, the group is stopped through
/// Pacemaker (and is mounted nowhere), then on `checker`: `xfs_repair -n`, a read-only mount
/// and the witness over every acknowledged record. Returns the repair's and the witness's
/// results (figures are added to `r`).
fn stop_and_check(
    nodes: &mut [Node],
    checker: usize,
    r: &mut Report,
) -> Result<(JobResult, JobResult)> {
    for n in nodes.iter_mut() {
        if n.is_running()? {
            let name = n.name().to_owned();
            let _ = n.run(
                "stop the writer",
                &format!("kill $(cat /jobs/writer-{name}.pid) 2>/dev/null; true"),
                SHORT,
            );
        }
    }
    let mut acks = Vec::new();
    for n in nodes.iter() {
        let src = n.job_file(&format!("acks-{}", n.name()));
        if src.exists() {
            acks.push((n.name().to_owned(), src));
        }
    }
    let c = &mut nodes[checker];
    for (name, src) in &acks {
        fs::copy(src, c.job_file(&format!("check-acks-{name}")))?;
    }
    let t = Instant::now();
    c.expect(
        "stop the group",
        "crm_resource -r svc --meta -p target-role -v Stopped >/dev/null\ni=0\n\
         until crm_resource --locate -r svc-mmp 2>&1 | grep -q 'NOT running' && crm_resource --locate -r svc-fs 2>&1 | grep -q 'NOT running'; do\n\
         i=$((i+1)); [ $i -gt 180 ] && { crm_mon -1; exit 9; }; sleep 1\ndone",
        0,
        LONG,
    )?;
    secs(r, "group stopped through Pacemaker (host)", t.elapsed());
    for n in nodes.iter_mut() {
        if n.is_running()? {
            n.expect(
                "the XFS is mounted nowhere",
                "i=0; while grep -q ' /mnt/d ' /proc/mounts; do i=$((i+1)); [ $i -gt 120 ] && exit 9; sleep 0.5; done",
                0,
                LONG,
            )?;
        }
    }
    let c = &mut nodes[checker];
    let repair = c.run(
        "xfs_repair -n",
        "xfs_repair -n /dev/vdc >/jobs/repair.log 2>&1; rc=$?; tail -4 /jobs/repair.log; exit $rc",
        LONG,
    )?;
    fig(
        r,
        &format!("{}: xfs_repair -n", c.name()),
        if repair.rc == 0 {
            "clean".to_owned()
        } else {
            format!("exit {} (damage found)", repair.rc)
        },
    );
    let checks: Vec<String> = acks
        .iter()
        .map(|(name, _)| {
            format!(
                "python3 /tools/lab/witness.py verify /mnt/v/records-{name} {name}=/jobs/check-acks-{name} || rc=1"
            )
        })
        .collect();
    let witness = c.run(
        "witness: every acknowledged record",
        &format!(
            "mkdir -p /mnt/v\n\
             if mount -t xfs -o ro /dev/vdc /mnt/v; then echo 'lab-mount ro';\n\
             elif mount -t xfs -o ro,norecovery /dev/vdc /mnt/v; then echo 'lab-mount ro,norecovery (the log does not replay)';\n\
             else exit 7; fi\n\
             rc=0\n{}\numount /mnt/v\nexit $rc",
            checks.join("\n")
        ),
        LONG,
    )?;
    if let Some(m) = witness
        .out
        .lines()
        .find_map(|l| l.strip_prefix("lab-mount "))
    {
        fig(
            r,
            &format!("{}: read-only mount for the witness", c.name()),
            m,
        );
    }
    for l in witness.out.lines().filter(|l| l.starts_with("records")) {
        fig(r, &format!("{}: witness", c.name()), l);
    }
    Ok((repair, witness))
}

/// Boot, cluster, group on a, writer on a: the start of every Pacemaker scenario.
fn pacemaker_setup(ctx: &Ctx, r: &mut Report) -> Result<Vec<Node>> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let mut nodes = boot_full_pair(ctx, r, &[area, data], true)?;
    start_cluster(&mut nodes, r)?;
    let a = &mut nodes[0];
    configure_group(a, r)?;
    start_writer(a)?;
    let w0 = a.writes_to("data")?;
    std::thread::sleep(Duration::from_secs(3));
    let w1 = a.writes_to("data")?;
    if w1 <= w0 {
        return Err(format!("a's writer issued no data writes in 3 s ({w0} -> {w1})").into());
    }
    fig(
        r,
        "a: data-disk writes per second (witness writer)",
        format!("{:.1}", (w1 - w0) as f64 / 3.0),
    );
    Ok(nodes)
}

fn check_verdict(repair: &JobResult, witness: &JobResult) -> Result<()> {
    if witness.rc != 0 {
        return Err(format!(
            "acknowledged records lost or damaged:\n{}",
            witness.out.trim_end()
        )
        .into());
    }
    if repair.rc != 0 {
        return Err(format!("xfs_repair -n found damage:\n{}", repair.out.trim_end()).into());
    }
    Ok(())
}

/// `pacemaker-failover`: power loss (QMP `quit`) of the node running the group.
pub fn pacemaker_failover(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover("b"))?;
    let acks_before = acked(a);
    let fault = Instant::now();
    a.power_off()?;
    let marks = match wait_marks(
        &watch,
        &["acquired", "mounted", "started"],
        fault,
        Duration::from_secs(240),
    ) {
        Ok(m) => m,
        Err(e) => return Err(format!("{e}\nb's view:\n{}", cluster_view(b)).into()),
    };
    fig(
        r,
        "a: records acknowledged before the power loss",
        acks_before.to_string(),
    );
    secs(r, "power loss -> mmp area acquired on b (host)", marks[0]);
    secs(r, "power loss -> XFS mounted on b (host)", marks[1]);
    secs(
        r,
        "power loss -> Pacemaker reports the group running on b (host)",
        marks[2],
    );
    fig(
        r,
        "a: writes to the shared disks after b acquired",
        "0 (QEMU gone)",
    );
    let (repair, witness) = stop_and_check(&mut nodes, 1, r)?;
    check_verdict(&repair, &witness)
}

/// `pacemaker-freeze-resume`: the node running the group is frozen (QMP `stop`) until its
/// partner runs the group, then resumes (`cont`): what it writes after the partner acquired.
pub fn pacemaker_freeze_resume(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover("b"))?;
    a.freeze()?;
    let fault = Instant::now();
    let frozen_data = a.writes_to("data")?;
    let frozen_area = a.writes_to("area")?;
    let marks = match wait_marks(
        &watch,
        &["acquired", "mounted", "started"],
        fault,
        Duration::from_secs(240),
    ) {
        Ok(m) => m,
        Err(e) => return Err(format!("{e}\nb's view:\n{}", cluster_view(b)).into()),
    };
    secs(r, "freeze -> mmp area acquired on b (host)", marks[0]);
    secs(r, "freeze -> XFS mounted on b (host)", marks[1]);
    secs(
        r,
        "freeze -> Pacemaker reports the group running on b (host)",
        marks[2],
    );
    start_writer(b)?;
    std::thread::sleep(Duration::from_secs(3));
    if a.writes_to("data")? != frozen_data {
        return Err("a issued writes while frozen".into());
    }
    let acks_a_frozen = acked(a);
    a.resume()?;
    let resumed = Instant::now();
    let (mut first, mut last) = (None, None);
    let mut count = frozen_data;
    while resumed.elapsed() < Duration::from_secs(45) {
        let now = a.writes_to("data")?;
        if now != count {
            count = now;
            first = first.or(Some(resumed.elapsed()));
            last = Some(resumed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = count - frozen_data;
    let area_after = a.writes_to("area")? - frozen_area;
    fig(r, "a: data-disk writes after b acquired", after.to_string());
    fig(r, "a: area writes after the resume", area_after.to_string());
    if let Some(t) = first {
        secs(r, "a: first data-disk write after the resume", t);
    }
    if let Some(t) = last {
        secs(
            r,
            "a: last data-disk write after the resume (watched 45 s)",
            t,
        );
    }
    fig(
        r,
        "a: records acknowledged after the resume",
        (acked(a) - acks_a_frozen).to_string(),
    );
    let view = a.run(
        "a after the resume",
        &format!("grep ' /mnt/d ' /proc/mounts; grep -h 'ownership lost' {AGENT_LOG} | tail -1; crm_mon -1 2>&1 | grep -A3 -E 'svc|Failed' | head -12"),
        SHORT,
    )?;
    eprintln!("    a after the resume:\n{}", view.out.trim_end());
    let (repair, witness) = stop_and_check(&mut nodes, 1, r)?;
    if after > 0 || repair.rc != 0 || witness.rc != 0 {
        r.verdict = Verdict::Gap(format!(
            "a wrote {after} times to the data disk after b acquired (last {:.1} s after the resume); xfs_repair -n exit {}; witness exit {}; needs fencing (persistent reservations)",
            last.map_or(0.0, |t| t.as_secs_f64()),
            repair.rc,
            witness.rc
        ));
    }
    Ok(())
}

/// `pacemaker-partition`: the node running the group loses its network (QMP `set_link`
/// off), no STONITH: both sides keep quorum (`two_node`), the partner tries to start the
/// group and mmp refuses; after the heal the group still runs on a only.
pub fn pacemaker_partition(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    let (a, b) = two(&mut nodes);
    let watch = b.spawn(
        "watch the start attempt",
        &format!(
            "until [ -e {AGENT_OUT} ]; do sleep 0.1; done\necho \"lab-mark tried $(now)\"\n\
             until crm_mon -1 2>/dev/null | grep -q 'svc-mmp start on b returned' || grep -q acquired {AGENT_OUT}; do sleep 1; done\n\
             if grep -q acquired {AGENT_OUT}; then echo \"lab-mark ACQUIRED $(now)\"; else echo \"lab-mark refused $(now)\"; fi\n\
             tail -2 {AGENT_LOG}"
        ),
    )?;
    let b_data = b.writes_to("data")?;
    let b_area = b.writes_to("area")?;
    let acks0 = acked(a);
    a.set_link(false)?;
    let fault = Instant::now();
    let marks = match wait_marks(&watch, &["tried"], fault, Duration::from_secs(180)) {
        Ok(m) => m,
        Err(e) => return Err(format!("{e}\nb's view:\n{}", cluster_view(b)).into()),
    };
    secs(r, "partition -> b's agent starts mmp (host)", marks[0]);
    let res = watch.wait(Duration::from_secs(180))?;
    let refused = res.out.lines().any(|l| l.starts_with("lab-mark refused"));
    fig(
        r,
        "b: start of the group",
        if refused {
            format!(
                "refused by mmp ({})",
                res.out.lines().last().unwrap_or_default()
            )
        } else {
            "ACQUIRED the area".to_owned()
        },
    );
    secs(r, "partition -> b's start failed (host)", fault.elapsed());
    std::thread::sleep(Duration::from_secs(10));
    let b_data_after = b.writes_to("data")? - b_data;
    let b_area_after = b.writes_to("area")? - b_area;
    fig(
        r,
        "b: data-disk writes during the partition",
        b_data_after.to_string(),
    );
    fig(
        r,
        "b: area writes during the partition",
        b_area_after.to_string(),
    );
    let acks_during = acked(a) - acks0;
    fig(
        r,
        "a: records acknowledged during the partition",
        acks_during.to_string(),
    );
    a.set_link(true)?;
    let healed = Instant::now();
    a.expect(
        "the cluster merges",
        "i=0\nuntil crm_mon -1 2>/dev/null | grep -q 'Online: \\[ a b \\]'; do i=$((i+1)); [ $i -gt 180 ] && { crm_mon -1; exit 9; }; sleep 1; done",
        0,
        LONG,
    )?;
    secs(
        r,
        "heal -> both nodes online again (host)",
        healed.elapsed(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let loc = a.run(
        "where the group runs",
        "crm_resource --locate -r svc-fs 2>&1; crm_resource --locate -r svc-mmp 2>&1",
        SHORT,
    )?;
    fig(
        r,
        "after the heal",
        loc.out.lines().collect::<Vec<_>>().join("; "),
    );
    let (repair, witness) = stop_and_check(&mut nodes, 1, r)?;
    if !refused || b_data_after > 0 {
        return Err(format!(
            "b took the area or wrote to the data disk during the partition ({b_data_after} writes)"
        )
        .into());
    }
    if acks_during == 0 {
        return Err("a's writer stopped during the partition".into());
    }
    check_verdict(&repair, &witness)
}

/// `systemd-unit`: `mmp@.service` (Type=notify) with an XFS mount unit that has `BindsTo=` on
/// it: start, stop, holder killed, node reset; node b checks the area each time and takes
/// over after the kill and the reset.
pub fn systemd_unit(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let mut nodes = boot_full_pair(ctx, r, &[area, data], false)?;
    let (a, b) = two(&mut nodes);
    a.expect(
        "install the unit and the mount",
        "set -e\nmmp format --interval-ms 1000 /dev/vdb\nmkfs.xfs -q -f /dev/vdc\n\
         install -m 644 /tools/systemd/mmp@.service /etc/systemd/system/mmp@.service\n\
         mkdir -p /etc/mmp /mnt/d\necho 'MMP_HOLD_OPTS=--force' >/etc/mmp/dev-vdb.conf\n\
         printf '[Unit]\\nBindsTo=mmp@dev-vdb.service\\nAfter=mmp@dev-vdb.service\\n[Mount]\\nWhat=/dev/vdc\\nWhere=/mnt/d\\nType=xfs\\n' >/etc/systemd/system/mnt-d.mount\n\
         systemctl daemon-reload",
        0,
        LONG,
    )?;
    let start = "s=$(now)\nsystemctl start mnt-d.mount || { systemctl status mmp@dev-vdb.service mnt-d.mount; exit 1; }\n\
         echo \"lab-took $s $(now)\"\nsystemctl is-active mmp@dev-vdb.service mnt-d.mount\n\
         systemctl show -p Type -p StatusText mmp@dev-vdb.service";
    // Start: the mount pulls in the holder, which is ready (sd_notify) once it acquired.
    let j = a.expect("start the mount (pulls in mmp@)", start, 0, LONG)?;
    fig(r, "a: start mnt-d.mount (guest)", took(&j.out));
    b.expect("b: the area is in use", "mmp status /dev/vdb", 1, SHORT)?;
    // Stop the holder: systemd unmounts first (BindsTo + After), the area ends CLEAN.
    let j = a.expect(
        "stop mmp@",
        "s=$(now)\nsystemctl stop mmp@dev-vdb.service\necho \"lab-took $s $(now)\"\n\
         grep ' /mnt/d ' /proc/mounts && exit 1\nsystemctl is-active mnt-d.mount; true",
        0,
        LONG,
    )?;
    fig(r, "a: stop mmp@ (unmount, release; guest)", took(&j.out));
    b.expect("b: the area is clean", "mmp status /dev/vdb", 0, SHORT)?;

    // The holder killed: the unit fails and systemd unmounts the XFS.
    a.expect("start again", start, 0, LONG)?;
    let j = a.expect(
        "SIGKILL the holder",
        "s=$(now)\nsystemctl kill -s KILL mmp@dev-vdb.service\ni=0\n\
         while grep -q ' /mnt/d ' /proc/mounts; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.1; done\n\
         echo \"lab-took $s $(now)\"\nsystemctl is-failed mmp@dev-vdb.service; true",
        0,
        LONG,
    )?;
    fig(
        r,
        "a: holder SIGKILLed -> XFS unmounted (guest)",
        took(&j.out),
    );
    let j = b.expect(
        "b takes over after the kill",
        "s=$(now)\nmmp hold --force /dev/vdb >/jobs/take1.log 2>&1 &\necho $! >/jobs/take1.pid\n\
         until grep -q '^acquired' /jobs/take1.log; do kill -0 $(cat /jobs/take1.pid) || { cat /jobs/take1.log; exit 8; }; sleep 0.1; done\n\
         echo \"lab-took $s $(now)\"\nkill -TERM $(cat /jobs/take1.pid); while kill -0 $(cat /jobs/take1.pid) 2>/dev/null; do sleep 0.1; done",
        0,
        LONG,
    )?;
    fig(
        r,
        "b: takeover after the kill (mmp hold --force; guest)",
        took(&j.out),
    );

    // Node reset while holding and mounted: the unit is not enabled, nothing holds after the
    // reboot; b takes over; a writes nothing to the data disk after b acquired.
    a.expect(
        "reset-failed, start again",
        &format!("systemctl reset-failed\n{start}"),
        0,
        LONG,
    )?;
    a.expect(
        "a writes",
        "dd if=/dev/urandom of=/mnt/d/f bs=64k count=16 conv=fsync 2>/dev/null",
        0,
        SHORT,
    )?;
    let _ = fs::remove_file(a.job_file("ready"));
    a.reset()?;
    let reset = Instant::now();
    let j = b.expect(
        "b takes over after the reset",
        "s=$(now)\nmmp hold --force /dev/vdb >/jobs/take2.log 2>&1 &\necho $! >/jobs/take2.pid\n\
         until grep -q '^acquired' /jobs/take2.log; do kill -0 $(cat /jobs/take2.pid) || { cat /jobs/take2.log; exit 8; }; sleep 0.1; done\n\
         echo \"lab-took $s $(now)\"\nmkdir -p /mnt/d && mount -t xfs /dev/vdc /mnt/d && ls -l /mnt/d/f",
        0,
        LONG,
    )?;
    let acquired = reset.elapsed();
    let a_data = a.writes_to("data")?;
    fig(r, "b: takeover after a's reset (guest)", took(&j.out));
    secs(r, "a reset -> b acquired and mounted (host)", acquired);
    a.wait_ready(Duration::from_secs(300))?;
    secs(r, "a: back after the reset (host)", reset.elapsed());
    let j = a.expect(
        "a after the reboot",
        "systemctl is-active mmp@dev-vdb.service mnt-d.mount; mmp status /dev/vdb; true",
        0,
        SHORT,
    )?;
    eprintln!("    a after the reboot:\n{}", j.out.trim_end());
    let a_after = a.writes_to("data")? - a_data;
    fig(
        r,
        "a: data-disk writes after b acquired",
        a_after.to_string(),
    );
    b.expect(
        "b unmounts",
        "umount /mnt/d && xfs_repair -n /dev/vdc >/dev/null 2>&1",
        0,
        LONG,
    )?;
    fig(r, "b: xfs_repair -n", "clean");
    b.expect(
        "b releases",
        "kill -TERM $(cat /jobs/take2.pid); while kill -0 $(cat /jobs/take2.pid) 2>/dev/null; do sleep 0.1; done; mmp status /dev/vdb",
        0,
        SHORT,
    )?;
    if a_after > 0 {
        return Err(format!("a wrote {a_after} times to the data disk after b acquired").into());
    }
    Ok(())
}

/// The guest-side duration of a `lab-took START END` line, as text.
fn took(out: &str) -> String {
    took_mark(out, "lab-took")
}

/// The guest-side duration of a `MARK START END` line, as text.
fn took_mark(out: &str, mark: &str) -> String {
    let prefix = format!("{mark} ");
    out.lines()
        .rev()
        .find_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let mut it = rest.split_whitespace().map(str::parse::<f64>);
            let (Some(Ok(s)), Some(Ok(e))) = (it.next(), it.next()) else {
                return None;
            };
            Some(format!("{:.1} s", e - s))
        })
        .unwrap_or_else(|| "?".to_owned())
}
