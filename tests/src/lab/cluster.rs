//! Cluster and systemd scenarios on the full guest ([`super::full`]): two nodes with
//! systemd, corosync (knet, `two_node: 1`, `token: 3000`) and Pacemaker over a point-to-point
//! link, the group `ocf:mmp:mmp` (a native area on `/dev/vdb`, interval 1 s) +
//! `ocf:heartbeat:Filesystem` (XFS on `/dev/vdc`), and the data-integrity witness
//! (`witness.py`: numbered, checksummed, fsynced records on the XFS whose acknowledgements go
//! to the node's job folder on the host). The `pacemaker-comeback-*` scenarios put the area
//! and the XFS on two iSCSI LUNs from `tgtd` instead (by their `/dev/disk/by-id/wwn-*` names),
//! with and without the agent's `fence=scsi-pr`.
//!
//! Every check ends the same way: the group is stopped through Pacemaker, `xfs_repair -n`
//! runs on the partner, the XFS is mounted read-only there and every acknowledged record
//! must be on it, intact. QEMU's `query-blockstats` counts the writes each node issued.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::fencer::Fencer;
use super::full::{FullBoot, FullImage, Hub, Link};
use super::scenarios::{Ctx, Report, Verdict};
use super::{Disk, IscsiLun, IscsiTarget, Job, JobResult, Node, NodeSpec, Result};

const MIB: u64 = 1 << 20;
const SHORT: Duration = Duration::from_secs(60);
const LONG: Duration = Duration::from_secs(300);

/// The data-integrity witness, shared with the guests as `/tools/lab/witness.py`.
const WITNESS: &str = include_str!("witness.py");

/// The lab's fence agent (`/tools/lab/fence_mmplab`, installed as `/usr/sbin/fence_mmplab`
/// by [`enable_stonith`]); the host side is [`super::fencer`].
const FENCE_AGENT: &str = include_str!("fence_mmplab");

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

/// The shared devices of a cluster scenario as the guests name them, and the agent's storage
/// fencing.
#[derive(Clone, Debug)]
struct Shared {
    /// The MMP area (the agent's `mmp_device`).
    area: String,
    /// The XFS (the agent's `device` and the Filesystem resource's).
    data: String,
    /// The agent's `fence` parameter (`scsi-pr`), if any.
    fence: Option<&'static str>,
    /// The file system on `data`: `xfs` (protected by the native `area`) or `ext4` (with
    /// the MMP feature: `area` is `data` itself and the kernel heartbeats once mounted).
    fstype: &'static str,
}

impl Shared {
    /// The virtio disks of the first scenarios: the area on `/dev/vdb`, the XFS on `/dev/vdc`.
    fn virtio() -> Self {
        Self {
            area: "/dev/vdb".to_owned(),
            data: "/dev/vdc".to_owned(),
            fence: None,
            fstype: "xfs",
        }
    }

    /// An ext4 with the MMP feature on `/dev/vdc`, no separate area: the agent runs the
    /// full acquire and hands the file system to the kernel, whose kmmpd heartbeats.
    fn virtio_ext4() -> Self {
        Self {
            area: "/dev/vdc".to_owned(),
            data: "/dev/vdc".to_owned(),
            fence: None,
            fstype: "ext4",
        }
    }

    /// Shell condition: the agent on this node has acquired the MMP (the native holder
    /// printed `acquired`; for ext4 the agent's hand-over mark exists).
    fn acquired_test(&self) -> String {
        if self.fstype == "ext4" {
            format!("[ -e {} ]", self.agent_file("ext4"))
        } else {
            format!("grep -q acquired {} 2>/dev/null", self.agent_file("out"))
        }
    }

    /// Job text: make the file systems (and the native area).
    fn format(&self) -> String {
        if self.fstype == "ext4" {
            format!(
                "mke2fs -q -F -t ext4 -O mmp -E mmp_update_interval=5 {}",
                self.data
            )
        } else {
            format!(
                "mmp format --interval-ms 1000 {} && mkfs.xfs -q -f {}",
                self.area, self.data
            )
        }
    }

    /// A file the OCF agent keeps for the area (`out`: the holder's stdout, `log`: its
    /// stderr), named as the agent's `key()` names it.
    fn agent_file(&self, ext: &str) -> String {
        let key: String = self
            .area
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("/run/mmp/ocf-{key}.{ext}")
    }

    /// The group: the MMP area first, then the XFS it protects (`cibadmin -C -o resources`).
    fn resources_xml(&self) -> String {
        let fence = self.fence.map_or_else(String::new, |f| {
            format!("\n      <nvpair id=\"svc-mmp-fence\" name=\"fence\" value=\"{f}\"/>")
        });
        let (area, data, fstype) = (&self.area, &self.data, self.fstype);
        let mmp_device = if area == data {
            String::new()
        } else {
            format!(
                "\n      <nvpair id=\"svc-mmp-mmp_device\" name=\"mmp_device\" value=\"{area}\"/>"
            )
        };
        format!(
            r#"<group id="svc">
  <primitive id="svc-mmp" class="ocf" provider="mmp" type="mmp">
    <instance_attributes id="svc-mmp-ia">
      <nvpair id="svc-mmp-device" name="device" value="{data}"/>{mmp_device}{fence}
    </instance_attributes>
    <operations>
      <op id="svc-mmp-start" name="start" interval="0" timeout="120s"/>
      <op id="svc-mmp-stop" name="stop" interval="0" timeout="60s"/>
      <op id="svc-mmp-monitor" name="monitor" interval="5s" timeout="20s"/>
    </operations>
  </primitive>
  <primitive id="svc-fs" class="ocf" provider="heartbeat" type="Filesystem">
    <instance_attributes id="svc-fs-ia">
      <nvpair id="svc-fs-device" name="device" value="{data}"/>
      <nvpair id="svc-fs-directory" name="directory" value="/mnt/d"/>
      <nvpair id="svc-fs-fstype" name="fstype" value="{fstype}"/>
    </instance_attributes>
    <operations>
      <op id="svc-fs-start" name="start" interval="0" timeout="90s"/>
      <op id="svc-fs-stop" name="stop" interval="0" timeout="90s"/>
      <op id="svc-fs-monitor" name="monitor" interval="10s" timeout="40s"/>
    </operations>
  </primitive>
</group>"#
        )
    }
}

/// The holder's files written by the OCF agent for the area `/dev/vdb`.
const AGENT_OUT: &str = "/run/mmp/ocf-_dev_vdb.out";
const AGENT_LOG: &str = "/run/mmp/ocf-_dev_vdb.log";

/// Job text on the partner: marks when its holder acquired the area, when the XFS is
/// mounted, and when Pacemaker reports the group running there.
fn watch_takeover(node: &str) -> String {
    watch_takeover_on(node, &Shared::virtio())
}

/// [`watch_takeover`] for the devices `shared`.
fn watch_takeover_on(node: &str, shared: &Shared) -> String {
    let acquired = shared.acquired_test();
    format!(
        "until {acquired}; do sleep 0.1; done\n\
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
    let agent = dir.join("lab/fence_mmplab");
    fs::write(&agent, FENCE_AGENT)?;
    fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(())
}

fn two(nodes: &mut [Node]) -> (&mut Node, &mut Node) {
    let (a, rest) = nodes.split_at_mut(1);
    (&mut a[0], &mut rest[0])
}

/// Boots nodes a (hostid 0xa1, 169.254.0.1) and b (0xb2, 169.254.0.2) from the full image,
/// with the shared virtio `disks` and iSCSI `luns`, linked to each other when `network`.
fn boot_full_pair(
    ctx: &Ctx,
    r: &mut Report,
    disks: &[Disk],
    luns: &[IscsiLun],
    network: bool,
) -> Result<Vec<Node>> {
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
        s.luns = luns.to_vec();
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

/// Boots nodes a, b and c (hostids 0xa1, 0xb2, 0xc3; 169.254.0.1-3) from the full image with
/// the shared virtio `disks`, on one network segment (a [`Hub`], returned: it must live as
/// long as the nodes).
fn boot_full_three(ctx: &Ctx, r: &mut Report, disks: &[Disk]) -> Result<(Vec<Node>, Hub)> {
    let image = full_image(r)?;
    prepare_tools(ctx)?;
    let (hub, links) = Hub::start(3)?;
    let t = Instant::now();
    let mut nodes = Vec::new();
    for (i, ((name, hostid), link)) in [("a", 0xa1), ("b", 0xb2), ("c", 0xc3)]
        .into_iter()
        .zip(links)
        .enumerate()
    {
        let mut s = NodeSpec::new(name, hostid, disks);
        s.memory_mb = 768;
        s.full = Some(FullBoot {
            image: image.clone(),
            ip: Some(format!("169.254.0.{}", i + 1)),
            link: Some(link),
        });
        nodes.push(Node::boot(&ctx.run_dir, &ctx.images, &ctx.tools, s)?);
    }
    for n in &mut nodes {
        n.wait_ready(Duration::from_secs(400))?;
    }
    secs(r, "boot of three full nodes (host)", t.elapsed());
    Ok((nodes, hub))
}

/// corosync.conf for the nodes `names` (ids 1.., addresses 169.254.0.1..): as
/// [`COROSYNC_CONF`] but with plain majority quorum (no `two_node`) when there are more
/// than two.
fn corosync_conf(names: &[&str]) -> String {
    if names.len() == 2 {
        return COROSYNC_CONF.to_owned();
    }
    let nodes: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "    node {{\n        name: {n}\n        nodeid: {}\n        ring0_addr: 169.254.0.{}\n    }}\n",
                i + 1,
                i + 1
            )
        })
        .collect();
    format!(
        "totem {{\n    version: 2\n    cluster_name: mmplab\n    transport: knet\n    token: 3000\n    crypto_cipher: none\n    crypto_hash: none\n}}\n\
         nodelist {{\n{nodes}}}\n\
         quorum {{\n    provider: corosync_votequorum\n}}\n\
         logging {{\n    to_syslog: yes\n    to_stderr: no\n    timestamp: on\n}}\n"
    )
}

/// Shell condition: `crm_mon` lists exactly the nodes of `nodes` online.
fn all_online(nodes: &[Node]) -> String {
    let names: Vec<&str> = nodes.iter().map(Node::name).collect();
    format!(
        "crm_mon -1 2>/dev/null | grep -q 'Online: \\[ {} \\]'",
        names.join(" ")
    )
}

/// Pushes corosync.conf to every node, starts corosync and Pacemaker, waits until all are
/// online with a DC.
fn start_cluster(nodes: &mut [Node], r: &mut Report) -> Result<()> {
    let t = Instant::now();
    let mut jobs = Vec::new();
    let names: Vec<String> = nodes.iter().map(|n| n.name().to_owned()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let conf = corosync_conf(&names);
    let online = all_online(nodes);
    for n in nodes.iter_mut() {
        fs::write(n.job_file("corosync.conf"), &conf)?;
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
        &format!("i=0\nuntil {online} && crm_mon -1 2>/dev/null | grep -q 'Current DC: [a-z] '; do\n\
         i=$((i+1)); [ $i -gt 120 ] && {{ crm_mon -1; corosync-cfgtool -s; exit 9; }}; sleep 2\ndone"),
        0,
        LONG,
    )?;
    secs(
        r,
        "cluster formed: all online, a DC (host, from the start of corosync)",
        t.elapsed(),
    );
    Ok(())
}

/// Formats the area and the XFS from `a`, configures the group (no STONITH) and waits until
/// it runs on `a`.
fn configure_group(a: &mut Node, shared: &Shared, r: &mut Report) -> Result<()> {
    a.expect(
        "format the area and the file system",
        &shared.format(),
        0,
        LONG,
    )?;
    fs::write(a.job_file("resources.xml"), shared.resources_xml())?;
    let acquired = shared.acquired_test();
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
         until {acquired}; do i=$((i+1)); [ $i -gt 1800 ] && exit 9; sleep 0.1; done\n\
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
    let mounted = format!("a: configured -> {} mounted (guest)", fs_name(shared));
    for (mark, what) in [
        ("lab-took-acquire", "a: configured -> area acquired (guest)"),
        ("lab-took-mount", mounted.as_str()),
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
    start_tagged_writer(n, &name)
}

/// Starts a witness writer on `n` whose records carry `name` (records in
/// `/mnt/d/records-NAME`, acks in `/jobs/acks-NAME`, its pid in `/jobs/writer-NAME.pid`).
fn start_tagged_writer(n: &mut Node, name: &str) -> Result<()> {
    let file = format!("/mnt/d/records-{name}");
    n.expect(
        "start the witness writer",
        &format!(
            "grep -q ' /mnt/d ' /proc/mounts || {{ echo 'the witness writer needs /mnt/d mounted'; exit 3; }}\n\
             setsid python3 /tools/lab/witness.py write {name} {file} /jobs/acks-{name} 0.1 >/jobs/writer-{name}.log 2>&1 </dev/null &\n\
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

/// Acknowledged records of node `n`'s own writer so far (host side).
fn acked(n: &Node) -> usize {
    acked_tag(n, n.name())
}

/// Acknowledged records of the writer `tag` on `n` so far (host side).
fn acked_tag(n: &Node, tag: &str) -> usize {
    fs::read_to_string(n.job_file(&format!("acks-{tag}")))
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
    cluster_view_log(n, AGENT_LOG)
}

/// `crm_mon -1` and the agent's log `log` on `n`, for an error message.
fn cluster_view_log(n: &mut Node, log: &str) -> String {
    n.run(
        "cluster view",
        &format!("crm_mon -1 2>&1 | tail -20; tail -3 {log} 2>/dev/null"),
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
    stop_and_check_on(nodes, checker, "/dev/vdc", "xfs", r)
}

/// Every writer's acknowledgements on the host: (tag, `acks-TAG` file), from every node's
/// job folder.
fn all_acks(nodes: &[Node]) -> Result<Vec<(String, PathBuf)>> {
    let mut acks = Vec::new();
    for n in nodes {
        let Ok(dir) = fs::read_dir(n.job_file("")) else {
            continue;
        };
        for e in dir {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(tag) = name.strip_prefix("acks-") {
                acks.push((tag.to_owned(), e.path()));
            }
        }
    }
    acks.sort();
    Ok(acks)
}

/// [`stop_and_check`] with the XFS on `data` (as the guests name it).
fn stop_and_check_on(
    nodes: &mut [Node],
    checker: usize,
    data: &str,
    fstype: &str,
    r: &mut Report,
) -> Result<(JobResult, JobResult)> {
    for n in nodes.iter_mut() {
        if n.is_running()? {
            let _ = n.run(
                "stop the writers",
                "for p in /jobs/writer-*.pid; do kill $(cat $p) 2>/dev/null; done; true",
                SHORT,
            );
        }
    }
    let acks = all_acks(nodes)?;
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
                "the file system is mounted nowhere",
                "i=0; while grep -q ' /mnt/d ' /proc/mounts; do i=$((i+1)); [ $i -gt 120 ] && exit 9; sleep 0.5; done",
                0,
                LONG,
            )?;
        }
    }
    let c = &mut nodes[checker];
    let (check, noreplay) = if fstype == "ext4" {
        ("e2fsck -fn", "noload")
    } else {
        ("xfs_repair -n", "norecovery")
    };
    let repair = c.run(
        check,
        &format!(
            "{check} {data} >/jobs/repair.log 2>&1; rc=$?; tail -4 /jobs/repair.log; exit $rc"
        ),
        LONG,
    )?;
    fig(
        r,
        &format!("{}: {check}", c.name()),
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
             if mount -t {fstype} -o ro {data} /mnt/v; then echo 'lab-mount ro';\n\
             elif mount -t {fstype} -o ro,{noreplay} {data} /mnt/v; then echo 'lab-mount ro,{noreplay} (the log does not replay)';\n\
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
    pacemaker_setup_on(ctx, r, &Shared::virtio())
}

/// [`pacemaker_setup`] with the devices `shared` (on the virtio disks).
fn pacemaker_setup_on(ctx: &Ctx, r: &mut Report, shared: &Shared) -> Result<Vec<Node>> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let mut nodes = boot_full_pair(ctx, r, &[area, data], &[], true)?;
    start_cluster(&mut nodes, r)?;
    let a = &mut nodes[0];
    configure_group(a, shared, r)?;
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
    // (`repair` is `xfs_repair -n` or, for ext4, `e2fsck -fn`.)
    if witness.rc != 0 {
        return Err(format!(
            "acknowledged records lost or damaged:\n{}",
            witness.out.trim_end()
        )
        .into());
    }
    if repair.rc != 0 {
        return Err(format!(
            "the file system check found damage:\n{}",
            repair.out.trim_end()
        )
        .into());
    }
    Ok(())
}

/// `pacemaker-failover`: power loss (QMP `quit`) of the node running the group.
pub fn pacemaker_failover(ctx: &Ctx, r: &mut Report) -> Result<()> {
    failover_on(ctx, r, &Shared::virtio())
}

/// `pacemaker-ext4-failover`: [`pacemaker_failover`] with an ext4 MMP file system (no
/// separate area): the agent's full acquire, then the kernel mounts and heartbeats.
pub fn pacemaker_ext4_failover(ctx: &Ctx, r: &mut Report) -> Result<()> {
    failover_on(ctx, r, &Shared::virtio_ext4())
}

/// The name of `shared`'s file system in figures.
fn fs_name(shared: &Shared) -> &'static str {
    if shared.fstype == "ext4" {
        "ext4"
    } else {
        "XFS"
    }
}

fn failover_on(ctx: &Ctx, r: &mut Report, shared: &Shared) -> Result<()> {
    let mut nodes = pacemaker_setup_on(ctx, r, shared)?;
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover_on("b", shared))?;
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
    secs(
        r,
        &format!("power loss -> {} mounted on b (host)", fs_name(shared)),
        marks[1],
    );
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
    let (repair, witness) = stop_and_check_on(&mut nodes, 1, &shared.data, shared.fstype, r)?;
    check_verdict(&repair, &witness)
}

/// `pacemaker-freeze-resume`: the node running the group is frozen (QMP `stop`) until its
/// partner runs the group, then resumes (`cont`): what it writes after the partner acquired.
pub fn pacemaker_freeze_resume(ctx: &Ctx, r: &mut Report) -> Result<()> {
    freeze_resume_on(ctx, r, &Shared::virtio())
}

/// `pacemaker-ext4-freeze-resume`: [`pacemaker_freeze_resume`] with an ext4 MMP file system:
/// what the resumed node's kernel (kmmpd) does, and what it writes before.
pub fn pacemaker_ext4_freeze_resume(ctx: &Ctx, r: &mut Report) -> Result<()> {
    freeze_resume_on(ctx, r, &Shared::virtio_ext4())
}

fn freeze_resume_on(ctx: &Ctx, r: &mut Report, shared: &Shared) -> Result<()> {
    let mut nodes = pacemaker_setup_on(ctx, r, shared)?;
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover_on("b", shared))?;
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
    secs(
        r,
        &format!("freeze -> {} mounted on b (host)", fs_name(shared)),
        marks[1],
    );
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
        &format!("grep ' /mnt/d ' /proc/mounts; grep -h 'ownership lost' {agent_log} | tail -1; dmesg | grep -E 'MMP|EXT4-fs (error|warning)|XFS .*(shut|rror)' | tail -4 | sed 's/^/kernel: /' | grep . || echo 'kernel: no MMP or file system error logged'; crm_mon -1 2>&1 | grep -A3 -E 'svc|Failed' | head -12", agent_log = shared.agent_file("log")),
        SHORT,
    )?;
    eprintln!("    a after the resume:\n{}", view.out.trim_end());
    let kernel: Vec<&str> = view
        .out
        .lines()
        .filter_map(|l| l.strip_prefix("kernel: "))
        .collect();
    fig(r, "a: kernel log after the resume", kernel.join(" | "));
    let (repair, witness) = stop_and_check_on(&mut nodes, 1, &shared.data, shared.fstype, r)?;
    if after > 0 || repair.rc != 0 || witness.rc != 0 {
        r.verdict = Verdict::Gap(format!(
            "a wrote {after} times to the data disk after b acquired (last {:.1} s after the resume); file system check exit {}; witness exit {}; needs fencing (persistent reservations or STONITH)",
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
    let mut nodes = boot_full_pair(ctx, r, &[area, data], &[], false)?;
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

/// `pacemaker-comeback-with-reservations`: the surprise comeback under Pacemaker on iSCSI
/// LUNs from `tgtd`, the agent with `fence=scsi-pr`. See `pacemaker_comeback`.
pub fn pacemaker_comeback_with_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    pacemaker_comeback(ctx, r, true)
}

/// `pacemaker-comeback-without-reservations`: the same cycles on the same iSCSI LUNs without
/// `fence`: the side-by-side figure (a known gap).
pub fn pacemaker_comeback_without_reservations(ctx: &Ctx, r: &mut Report) -> Result<()> {
    pacemaker_comeback(ctx, r, false)
}

/// The guests' stable names of the two LUNs (area: SCSI target 0, data: 1): the first of
/// `/dev/disk/by-id/wwn-*`, `/dev/disk/by-id/scsi-3*`, `/dev/disk/by-path/*` that points at the
/// LUN on node a, checked to point at the same LUN on node b (`sda`/`sdb` order is not stable).
fn iscsi_names(nodes: &mut [Node]) -> Result<(String, String)> {
    let find = "udevadm settle -t 30\n\
        for i in 0 1; do\n\
        d=$(ls /sys/bus/scsi/devices/*:0:$i:0/block/ 2>/dev/null)\n\
        [ -n \"$d\" ] || { echo \"no LUN at target $i\"; ls /sys/bus/scsi/devices; exit 3; }\n\
        p=\n\
        for l in /dev/disk/by-id/wwn-* /dev/disk/by-id/scsi-3* /dev/disk/by-path/*; do\n\
        [ -e \"$l\" ] && [ \"$(readlink -f \"$l\")\" = /dev/$d ] && { p=$l; break; }\n\
        done\n\
        [ -n \"$p\" ] || { ls -l /dev/disk/by-id /dev/disk/by-path; exit 4; }\n\
        echo \"lab-dev $i $p\"\n\
        done";
    let j = nodes[0].expect("stable names of the LUNs", find, 0, SHORT)?;
    let name = |i: u32| {
        j.out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("lab-dev {i} ")))
            .map(str::to_owned)
            .ok_or_else(|| format!("no name for LUN {i}: {}", j.out))
    };
    let (area, data) = (name(0)?, name(1)?);
    nodes[1].expect(
        "the same names on b",
        &format!(
            "udevadm settle -t 30\n\
             [ \"$(readlink -f {area})\" = /dev/$(ls /sys/bus/scsi/devices/*:0:0:0/block/) ] || exit 5\n\
             [ \"$(readlink -f {data})\" = /dev/$(ls /sys/bus/scsi/devices/*:0:1:0/block/) ] || exit 6"
        ),
        0,
        SHORT,
    )?;
    Ok((area, data))
}

/// Job text on the partner `node`: forgets the agent's output of an earlier cycle (the group
/// does not run there now), says `armed`, then marks when its holder acquired the area, when
/// the XFS is mounted and when Pacemaker reports the group running there.
fn watch_takeover_again(node: &str, shared: &Shared) -> String {
    let out = shared.agent_file("out");
    format!(
        "rm -f {out}\necho \"lab-mark armed $(now)\"\n\
         until grep -q acquired {out} 2>/dev/null; do sleep 0.1; done\n\
         echo \"lab-mark acquired $(now)\"\n\
         until grep -q ' /mnt/d ' /proc/mounts; do sleep 0.1; done\n\
         echo \"lab-mark mounted $(now)\"\n\
         until crm_resource --locate -r svc-fs 2>/dev/null | grep -q 'running on: {node}'; do sleep 1; done\n\
         echo \"lab-mark started $(now)\""
    )
}

/// Waits on `n` until the cluster is settled: both nodes online, the controller idle, the
/// area and the XFS running on the same single node, the same for two polls in a row.
/// Returns that node's name.
fn wait_settled(n: &mut Node, timeout: Duration) -> Result<String> {
    let j = n.run(
        "wait until the cluster settles",
        &format!(
            "i=0; prev=; same=0\n\
             while :; do\n\
             i=$((i+1)); [ $i -gt {} ] && {{ crm_mon -1 2>&1 | tail -20; exit 9; }}\n\
             m=$(crm_resource --locate -r svc-mmp 2>/dev/null | sed -n 's/.*running on: //p' | tr '\\n' ' ')\n\
             f=$(crm_resource --locate -r svc-fs 2>/dev/null | sed -n 's/.*running on: //p' | tr '\\n' ' ')\n\
             dc=$(crmadmin -q -D 2>&1 | awk '{{print $NF}}')\n\
             if crm_mon -1 2>/dev/null | grep -q 'Online: \\[ a b \\]' && crmadmin -q -S \"$dc\" 2>&1 | grep -q S_IDLE \\\n\
             && [ \"$m\" = \"$f\" ] && {{ [ \"$m\" = 'a ' ] || [ \"$m\" = 'b ' ]; }}; then\n\
             if [ \"$m\" = \"$prev\" ]; then same=$((same+1)); else same=1; prev=$m; fi\n\
             [ $same -ge 2 ] && {{ echo \"lab-settled $m\"; exit 0; }}\n\
             else same=0; prev=; fi\n\
             sleep 2\n\
             done",
            timeout.as_secs() / 2
        ),
        timeout + SHORT,
    )?;
    if j.rc != 0 {
        return Err(format!(
            "{}: the cluster did not settle within {timeout:?}:\n{}",
            n.name(),
            j.out.trim_end()
        )
        .into());
    }
    j.out
        .lines()
        .find_map(|l| l.strip_prefix("lab-settled "))
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| format!("no lab-settled line: {}", j.out).into())
}

/// Runs the witness on `n` over every writer's file on the mounted XFS (`/mnt/d`) against the
/// acknowledgements in `acks`; returns (records acknowledged, lost or damaged, summary lines).
fn witness_mounted(
    n: &mut Node,
    acks: &[(String, PathBuf)],
) -> Result<(usize, usize, Vec<String>)> {
    let mut script = String::from("rc=0\n");
    let mut total = 0usize;
    for (tag, src) in acks {
        let copy = format!("check-acks-{tag}");
        fs::copy(src, n.job_file(&copy))?;
        total += fs::read_to_string(src)?.lines().count();
        script.push_str(&format!(
            "echo \"lab-tag {tag}\"; python3 /tools/lab/witness.py verify /mnt/d/records-{tag} {tag}=/jobs/{copy} || rc=1\n"
        ));
    }
    script.push_str("exit $rc");
    let j = n.run("witness on the mounted XFS", &script, LONG)?;
    // "records N, invalid N; TAG: acked N, on disk N, missing N, duplicated N"
    let mut lost = 0usize;
    let mut lines = Vec::new();
    for l in j.out.lines().filter(|l| l.starts_with("records ")) {
        if let Some(m) = l.split("missing ").nth(1) {
            lost += m
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<usize>().ok())
                .unwrap_or(0);
        }
        lines.push(l.to_owned());
    }
    if lines.len() != acks.len() {
        return Err(format!(
            "{}: the witness answered for {} of {} writers:\n{}",
            n.name(),
            lines.len(),
            acks.len(),
            j.out.trim_end()
        )
        .into());
    }
    Ok((total, lost, lines))
}

/// Counts of one cycle and of the whole run.
#[derive(Clone, Copy, Debug, Default)]
struct ComebackCounts {
    /// Writes of the resumed node that completed, to the data LUN.
    ok_data: u64,
    /// Writes of the resumed node that completed, to the area LUN.
    ok_area: u64,
    /// Writes of the resumed node that failed (RESERVATION CONFLICT), both LUNs.
    refused: u64,
    /// Records the resumed node's writer acknowledged after the resume.
    acked_after_resume: usize,
}

/// Median and p99 (nearest rank) of `v`, in seconds.
fn median_p99(v: &[f64]) -> Option<(f64, f64)> {
    let mut t = v.to_vec();
    t.sort_by(f64::total_cmp);
    let m = *t.get(t.len() / 2)?;
    let p = *t.get((t.len() * 99).div_ceil(100).saturating_sub(1))?;
    Some((m, p))
}

/// The surprise comeback under Pacemaker, `MMP_LAB_CYCLES` times (default 2): two full guests
/// reach an MMP area and an XFS data LUN on one `tgtd` through QEMU's iSCSI initiator (SCSI
/// pass-through, so PERSISTENT RESERVE reaches the target), by their stable `/dev/disk/by-id`
/// names. The group `ocf:mmp:mmp` (with `fence=scsi-pr` when `fence`) + `Filesystem` (XFS)
/// runs with the witness writer. Each cycle: the node running the group is frozen (QMP
/// `stop`) until Pacemaker runs the group on the partner; the partner checks every record
/// the frozen node acknowledged and writes its own; the frozen node resumes. QEMU's per-drive
/// counters of the resumed node, from the resume until its XFS is unmounted, split into
/// completed and failed writes, are the witness of what it wrote after its partner acquired
/// (nothing runs while it is frozen, and it resumes only after the partner acquired). Then the
/// cluster settles (wherever Pacemaker puts the group), failures are cleaned up, and the
/// witness checks every record acknowledged so far on the node that runs the group. At the
/// end: the group stopped, `xfs_repair -n`, the witness over every record.
fn pacemaker_comeback(ctx: &Ctx, r: &mut Report, fence: bool) -> Result<()> {
    let cycles: usize = std::env::var("MMP_LAB_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // A time budget for a soak: no cycle starts after it, and the run still ends with the
    // final checks; the figures say how many cycles were done.
    let budget = std::env::var("MMP_LAB_CYCLES_MAX_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    let began = Instant::now();
    let area = Disk::create(&ctx.run_dir, "area", 16 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let target = IscsiTarget::start(&ctx.run_dir, &[area, data])?;
    let mut nodes = boot_full_pair(ctx, r, &[], &target.luns(), true)?;
    let (area, data) = iscsi_names(&mut nodes)?;
    fig(r, "area LUN (guest name)", area.clone());
    fig(r, "data LUN (guest name)", data.clone());
    let shared = Shared {
        area,
        data,
        fence: fence.then_some("scsi-pr"),
        fstype: "xfs",
    };
    start_cluster(&mut nodes, r)?;
    configure_group(&mut nodes[0], &shared, r)?;
    // When the resumed node rejoins, the group is active on both nodes for a moment; the
    // default (`stop_start`) stops it everywhere and starts it again. `stop_unexpected` stops
    // it only where it should not run, so the partner that took over keeps it and the next
    // cycle freezes the partner: the roles alternate.
    nodes[0].expect(
        "multiple-active=stop_unexpected",
        "crm_resource -r svc --meta -p multiple-active -v stop_unexpected",
        0,
        SHORT,
    )?;
    fig(r, "group meta multiple-active", "stop_unexpected");
    let mut owner = 0usize;
    let mut tag = "a0".to_owned();
    start_tagged_writer(&mut nodes[0], &tag)?;

    let mut total = ComebackCounts::default();
    let (mut acquired_s, mut started_s, mut unmounted_s, mut settled_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut checked_at_takeover = 0usize;
    let mut lost_max = 0usize;
    let mut done = 0usize;
    let mut broke: Option<String> = None;
    for cycle in 0..cycles {
        if let Some(b) = budget.filter(|b| began.elapsed() > *b) {
            eprintln!(
                "    time budget MMP_LAB_CYCLES_MAX_SECS={} used up after {cycle} cycles",
                b.as_secs()
            );
            break;
        }
        let step = comeback_cycle(&mut nodes, &shared, cycle, owner, &tag, &mut total);
        let c = match step {
            Ok(c) => c,
            Err(e) if !fence => {
                // Without reservations the comeback may damage the XFS so that the cluster
                // cannot recover: that is the gap; report the cycles done so far.
                broke = Some(format!("cycle {cycle}: {e}"));
                break;
            }
            Err(e) => return Err(format!("cycle {cycle}: {e}").into()),
        };
        done += 1;
        acquired_s.push(c.acquired);
        started_s.push(c.started);
        unmounted_s.push(c.unmounted);
        settled_s.push(c.settled);
        checked_at_takeover += c.checked;
        lost_max = lost_max.max(c.lost);
        owner = c.owner;
        tag = c.tag;
        if c.lost > 0 && !fence {
            broke = Some(format!(
                "cycle {cycle}: {} acknowledged records lost",
                c.lost
            ));
            break;
        }
    }
    fig(
        r,
        "cycles (freeze/resume) done",
        format!("{done} of {cycles}"),
    );
    fig(
        r,
        "resumed node's successful writes after the partner acquired (data LUN + area LUN)",
        format!(
            "{} ({} + {})",
            total.ok_data + total.ok_area,
            total.ok_data,
            total.ok_area
        ),
    );
    fig(
        r,
        "resumed node's writes refused by the storage",
        total.refused.to_string(),
    );
    fig(
        r,
        "records the resumed node's writer acknowledged after the resume",
        total.acked_after_resume.to_string(),
    );
    fig(
        r,
        "frozen node's acknowledged records checked on the partner at takeover",
        checked_at_takeover.to_string(),
    );
    for (what, v) in [
        ("freeze -> area acquired on the partner (host)", &acquired_s),
        (
            "freeze -> Pacemaker reports the group on the partner (host)",
            &started_s,
        ),
        (
            "resume -> the resumed node's XFS unmounted (host)",
            &unmounted_s,
        ),
        ("resume -> cluster settled (host)", &settled_s),
    ] {
        if let Some((m, p)) = median_p99(v) {
            fig(r, what, format!("median {m:.1} s, p99 {p:.1} s"));
        }
    }
    let checker = usize::from(nodes[0].name() != nodes[owner].name());
    let final_check = stop_and_check_on(&mut nodes, checker, &shared.data, shared.fstype, r);
    let late = total.ok_data + total.ok_area;
    let (repair, witness) = match final_check {
        Ok(x) => x,
        Err(e) if !fence => {
            r.verdict = Verdict::Gap(format!(
                "without reservations the resumed node wrote {late} times after its partner acquired; the final check failed: {e}"
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !fence {
        if late > 0 || broke.is_some() || repair.rc != 0 || witness.rc != 0 {
            r.verdict = Verdict::Gap(format!(
                "without reservations the resumed node wrote {late} times after its partner acquired ({} data); most records lost in one check: {lost_max}; xfs_repair -n exit {}; witness exit {}{}",
                total.ok_data,
                repair.rc,
                witness.rc,
                broke.map_or_else(String::new, |b| format!("; stopped early: {b}"))
            ));
        }
        return Ok(());
    }
    if late > 0 {
        return Err(format!(
            "the resumed node wrote {late} times after its partner acquired ({} to the data LUN)",
            total.ok_data
        )
        .into());
    }
    if lost_max > 0 {
        return Err(format!("{lost_max} acknowledged records lost in a cycle").into());
    }
    check_verdict(&repair, &witness)
}

/// What one cycle measured.
struct CycleResult {
    acquired: f64,
    started: f64,
    unmounted: f64,
    settled: f64,
    checked: usize,
    lost: usize,
    owner: usize,
    tag: String,
}

fn comeback_cycle(
    nodes: &mut [Node],
    shared: &Shared,
    cycle: usize,
    owner: usize,
    tag: &str,
    total: &mut ComebackCounts,
) -> Result<CycleResult> {
    let taker = 1 - owner;
    let log = shared.agent_file("log");
    let (oname, tname) = (
        nodes[owner].name().to_owned(),
        nodes[taker].name().to_owned(),
    );
    std::thread::sleep(Duration::from_secs(3));
    if acked_tag(&nodes[owner], tag) == 0 {
        return Err(format!("the writer {tag} on {oname} acknowledged nothing").into());
    }
    let watch = nodes[taker].spawn("watch the takeover", &watch_takeover_again(&tname, shared))?;
    wait_marks(&watch, &["armed"], Instant::now(), SHORT)?;
    nodes[owner].freeze()?;
    let frozen_at = Instant::now();
    let frozen = nodes[owner].blockstats()?;
    let marks = match wait_marks(&watch, &["acquired", "mounted", "started"], frozen_at, LONG) {
        Ok(m) => m,
        Err(e) => {
            return Err(format!(
                "{e}\n{tname}'s view:\n{}",
                cluster_view_log(&mut nodes[taker], &log)
            )
            .into());
        }
    };
    // The frozen node's acknowledgements are final: check them on the partner's mount.
    let src = nodes[owner].job_file(&format!("acks-{tag}"));
    let (checked, lost_now, _) = witness_mounted(&mut nodes[taker], &[(tag.to_owned(), src)])?;
    if lost_now > 0 {
        return Err(
            format!("{lost_now} of {oname}'s acknowledged records missing at takeover").into(),
        );
    }
    let acked_frozen = acked_tag(&nodes[owner], tag);
    let new_tag = format!("{tname}{}", cycle + 1);
    start_tagged_writer(&mut nodes[taker], &new_tag)?;
    std::thread::sleep(Duration::from_secs(3));
    if nodes[owner].blockstats()? != frozen {
        return Err(format!("{oname}'s counters moved while it was frozen").into());
    }
    // Runs once the node resumes: says when its XFS is gone.
    let gone = nodes[owner].spawn(
        "watch the unmount",
        "until ! grep -q ' /mnt/d ' /proc/mounts; do sleep 0.1; done\necho \"lab-mark unmounted $(now)\"",
    )?;
    nodes[owner].resume()?;
    let resumed = Instant::now();
    // The counters are read right after the mark was seen: the XFS is gone by then, and a
    // new start of the group on this node acquires the area (seconds of reads) before it
    // writes.
    let (unmounted, last) = loop {
        let seen = fs::read_to_string(gone.base.with_extension("out"))
            .unwrap_or_default()
            .contains("lab-mark unmounted");
        let last = nodes[owner].blockstats()?;
        if seen {
            break (resumed.elapsed(), last);
        }
        if resumed.elapsed() > LONG {
            return Err(format!(
                "{oname} still has the XFS mounted {:?} after the resume\n{}",
                resumed.elapsed(),
                cluster_view_log(&mut nodes[owner], &log)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut c = ComebackCounts::default();
    for s in &last {
        if let Some(f) = frozen.iter().find(|f| f.device == s.device) {
            // The two LUNs only (`s0-area`, `s1-data`): the root disk is the node's own.
            let ok = s.wr_operations - f.wr_operations;
            if s.device.ends_with("-data") {
                c.ok_data += ok;
            } else if s.device.ends_with("-area") {
                c.ok_area += ok;
            } else {
                continue;
            }
            c.refused += s.failed_wr_operations - f.failed_wr_operations;
        }
    }
    c.acked_after_resume = acked_tag(&nodes[owner], tag) - acked_frozen;
    let view = nodes[owner].run(
        "the resumed node",
        &format!("grep -h 'ownership lost' {log} 2>/dev/null | tail -n 1; for p in /jobs/writer-*.pid; do kill $(cat $p) 2>/dev/null; done; true"),
        SHORT,
    )?;
    let loss = if view.out.contains("ownership lost") {
        "its holder reported the loss"
    } else {
        "NO loss reported by its holder"
    };
    // The cluster recovers: wherever the group ends up, failures are cleaned up.
    wait_settled(&mut nodes[taker], LONG)?;
    nodes[taker].expect(
        "clean up failures",
        "crm_resource --cleanup >/dev/null 2>&1; true",
        0,
        SHORT,
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let here = wait_settled(&mut nodes[taker], LONG)?;
    let settled = resumed.elapsed();
    let new_owner = if here == nodes[0].name() { 0 } else { 1 };
    let acks = all_acks(nodes)?;
    let (intact_total, lost, _) = witness_mounted(&mut nodes[new_owner], &acks)?;
    // A writer on the node that runs the group: the partner's goes on if the group stayed.
    let alive = nodes[new_owner]
        .run(
            "is the writer alive",
            &format!("kill -0 $(cat /jobs/writer-{new_tag}.pid 2>/dev/null) 2>/dev/null"),
            SHORT,
        )?
        .rc
        == 0;
    let tag_next = if new_owner == taker && alive {
        new_tag
    } else {
        let t = format!("{here}{}r", cycle + 1);
        start_tagged_writer(&mut nodes[new_owner], &t)?;
        t
    };
    total.ok_data += c.ok_data;
    total.ok_area += c.ok_area;
    total.refused += c.refused;
    total.acked_after_resume += c.acked_after_resume;
    eprintln!(
        "    cycle {cycle}: {oname} frozen; {tname} acquired after {:.1} s, group running after {:.1} s; {checked} acked records of {oname} intact; {oname} resumed: {} successful writes ({} data, {} area), {} refused, {} records acked after the resume, XFS unmounted after {:.1} s, {loss}; cluster settled after {:.1} s, group on {here}; witness: {} acked, {} intact, {lost} lost",
        marks[0].as_secs_f64(),
        marks[2].as_secs_f64(),
        c.ok_data + c.ok_area,
        c.ok_data,
        c.ok_area,
        c.refused,
        c.acked_after_resume,
        unmounted.as_secs_f64(),
        settled.as_secs_f64(),
        intact_total,
        intact_total.saturating_sub(lost),
    );
    Ok(CycleResult {
        acquired: marks[0].as_secs_f64(),
        started: marks[2].as_secs_f64(),
        unmounted: unmounted.as_secs_f64(),
        settled: settled.as_secs_f64(),
        checked,
        lost,
        owner: new_owner,
        tag: tag_next,
    })
}

/// STONITH for a running two-node cluster: installs the lab's fence agent on both nodes and
/// configures one device per node (`fence-a` fences a and runs only on b, and the reverse),
/// `stonith-enabled=true`; waits until both devices run. `delay_a`: Pacemaker's
/// `pcmk_delay_base` on `fence-a` (seconds), so that in a split both ways the node running
/// the group (a) shoots first, the usual setting for two-node clusters.
fn enable_stonith(nodes: &mut [Node], delay_a: Option<u32>, r: &mut Report) -> Result<()> {
    for n in nodes.iter_mut() {
        n.expect(
            "install the fence agent",
            "install -m 755 /tools/lab/fence_mmplab /usr/sbin/fence_mmplab && fence_mmplab -o metadata | grep -q resource-agent",
            0,
            SHORT,
        )?;
    }
    let device = |n: &str, other: &str, delay: Option<u32>| {
        let delay = delay.map_or_else(String::new, |d| {
            format!(r#"<nvpair id="fence-{n}-delay" name="pcmk_delay_base" value="{d}s"/>"#)
        });
        format!(
            "cibadmin -C -o resources -X '<primitive id=\"fence-{n}\" class=\"stonith\" type=\"fence_mmplab\">\
<instance_attributes id=\"fence-{n}-ia\"><nvpair id=\"fence-{n}-hosts\" name=\"pcmk_host_list\" value=\"{n}\"/>{delay}</instance_attributes>\
<operations><op id=\"fence-{n}-monitor\" name=\"monitor\" interval=\"60s\" timeout=\"20s\"/></operations></primitive>'\n\
cibadmin -C -o constraints -X '<rsc_location id=\"fence-{n}-away\" rsc=\"fence-{n}\" node=\"{n}\" score=\"-INFINITY\"/>'\n\
i=0; until crm_resource --locate -r fence-{n} 2>/dev/null | grep -q 'running on: {other}'; do i=$((i+1)); [ $i -gt 120 ] && {{ crm_mon -1; exit 9; }}; sleep 1; done\n"
        )
    };
    let t = Instant::now();
    nodes[0].expect(
        "configure STONITH",
        &format!(
            "set -e\n{}{}crm_attribute -t crm_config -n stonith-enabled -v true\n\
             crm_attribute -t crm_config -n stonith-timeout -v 120s\n\
             stonith_admin --list-registered",
            device("a", "b", delay_a),
            device("b", "a", None)
        ),
        0,
        LONG,
    )?;
    secs(
        r,
        "STONITH configured, both devices running (host)",
        t.elapsed(),
    );
    if let Some(d) = delay_a {
        fig(r, "fence-a pcmk_delay_base", format!("{d} s"));
    }
    Ok(())
}

/// The fencing actions the host carried out, as a figure.
fn fencing_figure(r: &mut Report, fencer: &Fencer, since: Instant) {
    let shots: Vec<String> = fencer
        .shots()
        .iter()
        .map(|f| {
            format!(
                "{} by {}: {} at {:.1} s",
                f.target,
                f.by,
                f.action,
                f.at.saturating_duration_since(since).as_secs_f64()
            )
        })
        .collect();
    fig(
        r,
        "fencing (host, from the fault)",
        if shots.is_empty() {
            "none".to_owned()
        } else {
            shots.join("; ")
        },
    );
}

/// `pacemaker-freeze-stonith`: `pacemaker-freeze-resume` with STONITH (the lab's fence
/// agent, which resets a node through the host) and no reservations (virtio disks): the
/// frozen node is reset before its partner starts the group, so nothing of it can write
/// after the partner acquired. The reset node reboots and rejoins; the group stays.
pub fn pacemaker_freeze_stonith(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    enable_stonith(&mut nodes, None, r)?;
    let fencer = Fencer::start(&nodes);
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover("b"))?;
    a.freeze()?;
    let fault = Instant::now();
    let frozen_data = a.writes_to("data")?;
    let marks = match wait_marks(
        &watch,
        &["acquired", "mounted", "started"],
        fault,
        Duration::from_secs(300),
    ) {
        Ok(m) => m,
        Err(e) => return Err(format!("{e}\nb's view:\n{}", cluster_view(b)).into()),
    };
    let shots = fencer.shots();
    fencing_figure(r, &fencer, fault);
    let Some(shot) = shots.iter().find(|f| f.target == "a") else {
        return Err(format!(
            "b ran the group but the host fenced nothing of a: {:?}",
            fencer.log()
        )
        .into());
    };
    let fenced = shot.at.saturating_duration_since(fault);
    secs(r, "freeze -> a fenced (reset) by b (host)", fenced);
    secs(r, "freeze -> mmp area acquired on b (host)", marks[0]);
    secs(r, "freeze -> XFS mounted on b (host)", marks[1]);
    secs(
        r,
        "freeze -> Pacemaker reports the group running on b (host)",
        marks[2],
    );
    if fenced >= marks[0] {
        return Err("b acquired the area before a was fenced".into());
    }
    start_writer(b)?;
    a.wait_ready_again(Duration::from_secs(300))?;
    secs(
        r,
        "a fenced -> its job loop up again (host; at most, checked after the takeover)",
        shot.at.elapsed(),
    );
    std::thread::sleep(Duration::from_secs(5));
    let a_after = a.writes_to("data")? - frozen_data;
    fig(
        r,
        "a: data-disk writes after b acquired (QEMU, through its reboot)",
        a_after.to_string(),
    );
    let view = a.run(
        "a after the reboot",
        "grep ' /mnt/d ' /proc/mounts; systemctl start corosync pacemaker; i=0; until crm_mon -1 2>/dev/null | grep -q 'Online: \\[ a b \\]'; do i=$((i+1)); [ $i -gt 120 ] && break; sleep 1; done; crm_mon -1 2>&1 | grep -E 'Online|svc-|fence-' | head -8",
        LONG,
    )?;
    eprintln!("    a after the reboot:\n{}", view.out.trim_end());
    let (repair, witness) = stop_and_check(&mut nodes, 1, r)?;
    if a_after > 0 {
        return Err(format!("a wrote {a_after} times to the data disk after b acquired").into());
    }
    check_verdict(&repair, &witness)
}

/// `pacemaker-partition-stonith`: the active node's network cut with STONITH on (`fence-a`
/// delayed 10 s, so the node running the group shoots first): one side fences the other,
/// the group runs on exactly one node, nothing writes the data disk from the other side;
/// after the heal both are members again.
pub fn pacemaker_partition_stonith(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    enable_stonith(&mut nodes, Some(10), r)?;
    let fencer = Fencer::start(&nodes);
    let (a, b) = two(&mut nodes);
    let b_data = b.writes_to("data")?;
    let acks0 = acked(a);
    a.set_link(false)?;
    let fault = Instant::now();
    // Someone is shot within the token timeout + consensus + the fencing itself.
    while fencer.shots().is_empty() {
        if fault.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "nobody fenced within 180 s of the partition: {:?}\n{}",
                fencer.log(),
                cluster_view(a)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let shot = fencer.shots()[0].clone();
    secs(
        r,
        &format!("partition -> {} fenced by {} (host)", shot.target, shot.by),
        shot.at.saturating_duration_since(fault),
    );
    // The survivor runs the group; the other reboots.
    std::thread::sleep(Duration::from_secs(20));
    fencing_figure(r, &fencer, fault);
    let (survivor, victim) = if shot.target == "b" { (0, 1) } else { (1, 0) };
    nodes[victim].wait_ready_again(Duration::from_secs(300))?;
    secs(
        r,
        &format!(
            "{} fenced -> its job loop up again (host; at most)",
            nodes[victim].name()
        ),
        shot.at.elapsed(),
    );
    // The stack does not start at boot in the lab's image (as many sites set it after a
    // fence): the administrator's start.
    nodes[victim].expect(
        "start the cluster stack again",
        "grep ' /mnt/d ' /proc/mounts && exit 1; systemctl start corosync pacemaker",
        0,
        LONG,
    )?;
    let name = nodes[survivor].name().to_owned();
    let j = nodes[survivor].expect(
        "the group runs on the survivor",
        &format!(
            "i=0; until crm_resource --locate -r svc-fs 2>/dev/null | grep -q 'running on: {name}'; do i=$((i+1)); [ $i -gt 240 ] && {{ crm_mon -1; exit 9; }}; sleep 1; done; until grep -q ' /mnt/d ' /proc/mounts; do i=$((i+1)); [ $i -gt 480 ] && exit 9; sleep 0.5; done; echo \"lab-mark running $(now)\""
        ),
        0,
        LONG,
    )?;
    drop(j);
    secs(
        r,
        &if survivor == 0 {
            "the group still runs on a (host; checked at)".to_owned()
        } else {
            format!("partition -> the group runs on {name} (host)")
        },
        fault.elapsed(),
    );
    if survivor == 1 {
        // b took over after fencing a: its own writer from here.
        start_writer(&mut nodes[1])?;
    } else {
        let b_after = nodes[1].writes_to("data")? - b_data;
        fig(
            r,
            "b: data-disk writes during the partition (QEMU, through its reboot)",
            b_after.to_string(),
        );
        if b_after > 0 {
            return Err(format!("b wrote {b_after} times to the data disk").into());
        }
        let during = acked(&nodes[0]) - acks0;
        fig(
            r,
            "a: records acknowledged since the partition",
            during.to_string(),
        );
    }
    nodes[0].set_link(true)?;
    let healed = Instant::now();
    nodes[survivor].expect(
        "the cluster merges",
        "i=0\nuntil crm_mon -1 2>/dev/null | grep -q 'Online: \\[ a b \\]'; do i=$((i+1)); [ $i -gt 240 ] && { crm_mon -1; exit 9; }; sleep 1; done",
        0,
        LONG,
    )?;
    secs(
        r,
        "heal -> both nodes online again (host)",
        healed.elapsed(),
    );
    let more = fencer.shots().len() - 1;
    fig(r, "fencing actions after the first", more.to_string());
    let (repair, witness) = stop_and_check(&mut nodes, survivor, r)?;
    check_verdict(&repair, &witness)
}

/// Where Pacemaker runs the XFS, seen from `n`: the node name, or `None`.
fn group_location(n: &mut Node) -> Option<String> {
    let j = n
        .run(
            "where the group runs",
            "crm_resource --locate -r svc-fs 2>/dev/null",
            SHORT,
        )
        .ok()?;
    j.out
        .lines()
        .find_map(|l| l.split("running on: ").nth(1))
        .map(|s| s.trim().to_owned())
}

/// Waits (from `n`) until the group runs on a node other than `not`; returns that node's
/// index in `nodes`.
fn wait_group_moved(
    nodes: &mut [Node],
    from: usize,
    not: &str,
    timeout: Duration,
) -> Result<usize> {
    let t = Instant::now();
    loop {
        // `--locate` names a node while the start is still pending (Pacemaker records
        // pending operations): the group runs there once the XFS is mounted there.
        if let Some(at) = group_location(&mut nodes[from])
            && at != not
            && let Some(i) = nodes.iter().position(|m| m.name() == at)
            && nodes[i]
                .run(
                    "is the XFS mounted here",
                    "grep -q ' /mnt/d ' /proc/mounts",
                    SHORT,
                )
                .is_ok_and(|j| j.rc == 0)
        {
            return Ok(i);
        }
        if t.elapsed() > timeout {
            return Err(format!(
                "the group did not move off {not} within {timeout:?}:\n{}",
                cluster_view(&mut nodes[from])
            )
            .into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `pacemaker-three-nodes`: a three-node cluster (majority quorum, no STONITH) on one network
/// segment, the group on a. (1) a's network cut: a loses quorum and stops the group; the
/// two others keep quorum and start it, mmp serialising the handover while a still
/// heartbeats; (2) the heal: a rejoins, the group stays; (3) power loss of the node now
/// running the group: the last one takes over. The witness checks every record at the end.
pub fn pacemaker_three_nodes(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let area = Disk::create(&ctx.run_dir, "area", 4 * MIB)?;
    let data = Disk::create(&ctx.run_dir, "data", 320 * MIB)?;
    let (mut nodes, _hub) = boot_full_three(ctx, r, &[area, data])?;
    start_cluster(&mut nodes, r)?;
    configure_group(&mut nodes[0], &Shared::virtio(), r)?;
    start_writer(&mut nodes[0])?;
    std::thread::sleep(Duration::from_secs(3));
    let a_data = nodes[0].writes_to("data")?;
    // (1) Partition of a.
    nodes[0].set_link(false)?;
    let cut = Instant::now();
    let owner = wait_group_moved(&mut nodes, 1, "a", Duration::from_secs(300))?;
    secs(
        r,
        &format!(
            "a's network cut -> the group runs on {} (host)",
            nodes[owner].name()
        ),
        cut.elapsed(),
    );
    let v = nodes[0].run(
        "a after losing quorum",
        &format!("grep ' /mnt/d ' /proc/mounts; tail -2 {AGENT_LOG}; crm_mon -1 2>&1 | grep -iE 'quorum|svc-' | head -6"),
        SHORT,
    )?;
    eprintln!("    a after losing quorum:\n{}", v.out.trim_end());
    if v.out.contains(" /mnt/d ") {
        return Err(format!("a still has the XFS mounted without quorum:\n{}", v.out).into());
    }
    let tries = nodes[owner].run(
        "start attempts",
        "crm_mon -1 --include=failcounts 2>&1 | grep -iE 'fail|svc-mmp' | head -6; true",
        SHORT,
    )?;
    eprintln!("    start attempts:\n{}", tries.out.trim_end());
    let a_at_takeover = nodes[0].writes_to("data")?;
    fig(
        r,
        "a: data-disk writes from the cut until it stopped the group itself",
        (a_at_takeover - a_data).to_string(),
    );
    let tag = format!("{}-1", nodes[owner].name());
    start_tagged_writer(&mut nodes[owner], &tag)?;
    std::thread::sleep(Duration::from_secs(3));
    let a_after = nodes[0].writes_to("data")? - a_at_takeover;
    fig(
        r,
        &format!(
            "a: data-disk writes after the group ran on {}",
            nodes[owner].name()
        ),
        a_after.to_string(),
    );
    if a_after > 0 {
        return Err(format!("a wrote {a_after} times after the group moved").into());
    }
    // (2) The heal.
    nodes[0].set_link(true)?;
    let healed = Instant::now();
    let online = all_online(&nodes);
    nodes[owner].expect(
        "the cluster merges",
        &format!("i=0\nuntil {online}; do i=$((i+1)); [ $i -gt 240 ] && {{ crm_mon -1; exit 9; }}; sleep 1; done"),
        0,
        LONG,
    )?;
    secs(r, "heal -> all three online (host)", healed.elapsed());
    std::thread::sleep(Duration::from_secs(10));
    let at = group_location(&mut nodes[owner]).unwrap_or_default();
    fig(r, "after the heal the group runs on", at.clone());
    if at != nodes[owner].name() {
        return Err(format!("the group moved after the heal (to {at:?})").into());
    }
    // (3) Power loss of the owner.
    let owner_name = nodes[owner].name().to_owned();
    let watcher = if owner == 1 { 2 } else { 1 };
    let off = Instant::now();
    nodes[owner].power_off()?;
    let next = wait_group_moved(&mut nodes, watcher, &owner_name, Duration::from_secs(300))?;
    secs(
        r,
        &format!(
            "power loss of {owner_name} -> the group runs on {} (host)",
            nodes[next].name()
        ),
        off.elapsed(),
    );
    let tag = format!("{}-2", nodes[next].name());
    start_tagged_writer(&mut nodes[next], &tag)?;
    std::thread::sleep(Duration::from_secs(3));
    let result = stop_and_check(&mut nodes, next, r);
    // Every running node's view of the mounts, for the log: the kernel's XFS lines and the
    // cluster's actions on the group, with the host's wall clock of each line.
    for n in nodes.iter_mut() {
        if n.is_running()? {
            let j = n.run(
                "journal of the mounts",
                "journalctl -b --no-pager -o short-precise 2>/dev/null | grep -E 'XFS|Filesystem\\(svc-fs\\)|svc-fs|svc-mmp|quorum' | grep -vE 'monitor|probe' | tail -60",
                SHORT,
            )?;
            eprintln!("    {}'s journal:\n{}", n.name(), j.out.trim_end());
        }
    }
    let (repair, witness) = result?;
    check_verdict(&repair, &witness)
}

/// `pacemaker-stall-stonith`: every disk of the node running the group stalls (QMP
/// throttling at 1 byte/s, the root disk included: the whole path hangs), STONITH on, no
/// reservations. The holder self-fences at its lease end; the cluster sees the failure,
/// cannot stop the file system on a hung path, and fences the node; then the partner takes
/// over. QEMU's counters: the stalled node's data-disk writes after the partner acquired
/// must be 0 (its queued requests are drained by the reset, before the partner starts).
pub fn pacemaker_stall_stonith(ctx: &Ctx, r: &mut Report) -> Result<()> {
    let mut nodes = pacemaker_setup(ctx, r)?;
    enable_stonith(&mut nodes, None, r)?;
    let fencer = Fencer::start(&nodes);
    let (a, b) = two(&mut nodes);
    let watch = b.spawn("watch the takeover", &watch_takeover("b"))?;
    let out = watch.base.with_extension("out");
    a.stall_storage(true)?;
    let fault = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let (mut acquired, mut started, mut unstalled) = (None, None, false);
    while started.is_none() {
        if fault.elapsed() > Duration::from_secs(480) {
            return Err(format!(
                "no takeover within 480 s of the stall; fencing: {:?}\nb's view:\n{}",
                fencer.log(),
                cluster_view(b)
            )
            .into());
        }
        if a.is_running()? {
            samples.push((fault.elapsed(), a.writes_to("data")?));
        }
        // Once the node is fenced (reset), its path works again (the reset drained the
        // requests it had queued); it reboots.
        if !unstalled && !fencer.shots().is_empty() {
            a.stall_storage(false)?;
            unstalled = true;
        }
        let text = fs::read_to_string(&out).unwrap_or_default();
        if acquired.is_none() && text.contains("lab-mark acquired ") {
            acquired = Some(fault.elapsed());
        }
        if text.contains("lab-mark started ") {
            started = Some(fault.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (Some(acquired), Some(started)) = (acquired, started) else {
        return Err("the takeover marks are missing".into());
    };
    fencing_figure(r, &fencer, fault);
    let Some(shot) = fencer.shots().into_iter().find(|f| f.target == "a") else {
        return Err(format!(
            "b runs the group but a was never fenced: {:?}",
            fencer.log()
        )
        .into());
    };
    let fenced = shot.at.saturating_duration_since(fault);
    secs(r, "stall -> a fenced (reset) by b (host)", fenced);
    secs(r, "stall -> mmp area acquired on b (host)", acquired);
    secs(
        r,
        "stall -> Pacemaker reports the group running on b (host)",
        started,
    );
    if fenced >= acquired {
        return Err("b acquired the area before a was fenced".into());
    }
    let at_acquire = samples
        .iter()
        .rev()
        .find(|(t, _)| *t <= acquired)
        .map_or(0, |(_, w)| *w);
    start_writer(b)?;
    std::thread::sleep(Duration::from_secs(10));
    let a_after = a
        .writes_to("data")?
        .checked_sub(at_acquire)
        .ok_or("a's counters went back")?;
    fig(
        r,
        "a: data-disk writes after b acquired (QEMU, through its reset)",
        a_after.to_string(),
    );
    a.wait_ready_again(Duration::from_secs(300))?;
    let view = a.run(
        "a after the reboot",
        "grep ' /mnt/d ' /proc/mounts; systemctl start corosync pacemaker; true",
        LONG,
    )?;
    if view.out.contains(" /mnt/d ") {
        return Err("a mounted the XFS after its reboot".into());
    }
    let b_view = cluster_view(b);
    eprintln!("    b's view:\n{}", b_view.trim_end());
    let (repair, witness) = stop_and_check(&mut nodes, 1, r)?;
    if a_after > 0 {
        return Err(format!("a wrote {a_after} times to the data disk after b acquired").into());
    }
    check_verdict(&repair, &witness)
}
