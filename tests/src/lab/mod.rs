//! The multi-host lab: guests with their own kernels on shared raw disks, driven from the host.
//!
//! Each [`Node`] is a QEMU process (TCG) that boots the Debian kernel and the busybox
//! initramfs built by `lab/build-images`. Every node sees the same disk files as virtio-blk
//! devices (`cache=none`, `share-rw=on`, host locking off), so every write a guest issues goes
//! to the host file at once and the other guests read it through their own kernel and block
//! layer. The host's `mmp`, e2fsprogs and xfsprogs reach the guests read-only over virtio-9p
//! ([`Tools`]); commands run through a job folder shared over 9p ([`Node::run`]); faults come
//! from the host over QMP ([`qmp::Qmp`]): power loss, reset, freeze and resume, and
//! `query-blockstats`, a host-side count of every write a guest issued to each disk.
//!
//! The scenarios built on it are in [`scenarios`].

pub mod cluster;
pub mod fencer;
pub mod full;
pub mod qmp;
pub mod relay;
pub mod scenarios;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every lab failure is a message for a person: what was tried and what was seen.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The lab's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The guest kernel and initramfs (see `lab/build-images`).
#[derive(Clone, Debug)]
pub struct Images {
    /// `vmlinuz` of the Debian guest kernel.
    pub kernel: PathBuf,
    /// The busybox initramfs with the modules and `lab/guest-init`.
    pub initrd: PathBuf,
    /// One line naming the package versions the images came from.
    pub version: String,
}

impl Images {
    /// Runs `lab/build-images` (which answers from its cache when nothing changed) and returns
    /// the images it names.
    ///
    /// # Errors
    /// When the script fails (missing packages, no network for the first download).
    pub fn build(repo: &Path) -> Result<Self> {
        let out = Command::new(repo.join("lab/build-images"))
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("lab/build-images failed ({})", out.status).into());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        let version = fs::read_to_string(dir.join("VERSION")).unwrap_or_default();
        Ok(Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
            version: version.trim().to_owned(),
        })
    }
}

/// The host binaries shared with the guests: `DIR/bin` holds copies of the binaries,
/// `DIR/lib` every library `ldd` names for them (the guest runs them with
/// `LD_LIBRARY_PATH=/tools/lib` and the initramfs's `ld-linux`).
#[derive(Clone, Debug)]
pub struct Tools {
    /// The folder exported read-only as the 9p tag `tools`.
    pub dir: PathBuf,
}

impl Tools {
    /// Copies `binaries` and their libraries into `dir`.
    ///
    /// # Errors
    /// When a binary is missing or `ldd` fails on it.
    pub fn assemble(dir: &Path, binaries: &[PathBuf]) -> Result<Self> {
        let bin = dir.join("bin");
        let lib = dir.join("lib");
        fs::create_dir_all(&bin)?;
        fs::create_dir_all(&lib)?;
        for b in binaries {
            let name = b.file_name().ok_or("binary without a name")?;
            fs::copy(b, bin.join(name)).map_err(|e| format!("copy {}: {e}", b.display()))?;
            let out = Command::new("ldd").arg(b).output()?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux..."
                let path = match line.split_once("=>") {
                    Some((_, rest)) => rest.split_whitespace().next(),
                    None => line
                        .split_whitespace()
                        .next()
                        .filter(|p| p.starts_with('/')),
                };
                let Some(path) = path.filter(|p| p.starts_with('/')) else {
                    continue;
                };
                let src = Path::new(path);
                if let Some(libname) = src.file_name() {
                    let dst = lib.join(libname);
                    if !dst.exists() {
                        fs::copy(src, &dst).map_err(|e| format!("copy {path}: {e}"))?;
                    }
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }
}

/// A raw disk file on the host, shared by every node that lists it.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The QEMU drive id suffix and a name for people (`area`, `data`).
    pub name: String,
    /// The host file.
    pub path: PathBuf,
}

impl Disk {
    /// Creates (or truncates to zero and resizes) a sparse file of `size_bytes`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub fn create(dir: &Path, name: &str, size_bytes: u64) -> Result<Self> {
        let path = dir.join(format!("{name}.img"));
        let f = fs::File::create(&path)?;
        f.set_len(size_bytes)?;
        Ok(Self {
            name: name.to_owned(),
            path,
        })
    }
}

/// What a node is: its name, hostid, disks (in order: the first is `/dev/vda`), devices.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Host name inside the guest, and the name of its folder.
    pub name: String,
    /// The mmp hostid (`MMP_HOSTID` of every job).
    pub hostid: u32,
    /// Shared disks, `/dev/vda`, `/dev/vdb`, ... in this order.
    pub disks: Vec<Disk>,
    /// Add an i6300esb watchdog whose expiry powers the node off.
    pub watchdog: bool,
    /// Guest memory.
    pub memory_mb: u32,
    /// LUNs of an iSCSI target ([`IscsiTarget`]) reached through QEMU's own initiator and
    /// SCSI pass-through (`scsi-block` on virtio-scsi), so PERSISTENT RESERVE commands reach
    /// the target. LUN `i` of this list is SCSI target id `i` in the guest (`H:0:i:0`; see
    /// [`scsi_dev`]).
    pub luns: Vec<IscsiLun>,
    /// Boot the full guest (systemd, Pacemaker; [`full`]) from a root overlay that comes first
    /// (`/dev/vda`, the shared disks follow), with its network link; `None`: the busybox guest.
    pub full: Option<full::FullBoot>,
    /// Reach the shared disks through a path that can fail: one `nbdkit` per disk (file
    /// plugin, error filter) that answers every request with EIO while this file exists on
    /// the host. `None`: the disks are opened by QEMU directly.
    pub eio_flag: Option<PathBuf>,
}

/// One LUN of an [`IscsiTarget`] as a node sees it.
#[derive(Clone, Debug)]
pub struct IscsiLun {
    /// A name for people and for [`Node::writes_to`] (`area`, `data`).
    pub name: String,
    /// `iscsi://127.0.0.1:PORT/IQN/LUN`.
    pub url: String,
}

/// Shell text that expands to the guest's block device of the node's `index`-th LUN
/// ([`NodeSpec::luns`]), e.g. `/dev/sda`.
#[must_use]
pub fn scsi_dev(index: usize) -> String {
    format!("/dev/$(ls /sys/bus/scsi/devices/*:0:{index}:0/block/)")
}

/// A userspace iSCSI target (`tgtd` from the Debian package `tgt`) on 127.0.0.1 serving
/// files as LUNs; it implements SCSI-3 persistent reservations. Stopped on drop.
#[derive(Debug)]
pub struct IscsiTarget {
    child: Option<Child>,
    control_port: u16,
    port: u16,
    iqn: String,
    luns: Vec<Disk>,
}

impl IscsiTarget {
    /// Starts `tgtd` on a free port of 127.0.0.1 (its management channel numbered after the
    /// port, so it never meets a system tgtd or another lab's) with one target whose LUNs 1,
    /// 2, ... are `disks`.
    ///
    /// # Errors
    /// When `tgtd`/`tgtadm` are missing or refuse.
    pub fn start(dir: &Path, disks: &[Disk]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // tgtadm takes -C up to 32767 (its socket is /var/run/tgtd/socket.N).
        let control_port = 1000 + port % 30000;
        let tgtd = find_sbin("tgtd").ok_or("tgtd missing (package tgt; `lab/run` installs it)")?;
        let log = fs::File::create(dir.join("tgtd.log"))?;
        let child = Command::new(tgtd)
            .args(["-f", "-C", &control_port.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start tgtd: {e}"))?;
        let mut t = Self {
            child: Some(child),
            control_port,
            port,
            iqn: "iqn.2026-12.org.mmp.lab:shared".to_owned(),
            luns: Vec::new(),
        };
        // tgtd answers on its management socket once it is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let iqn = t.iqn.clone();
            match t.adm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", &iqn]) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        for (i, d) in disks.iter().enumerate() {
            let lun = (i + 1).to_string();
            let path = d.path.to_string_lossy().into_owned();
            t.adm(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                "1",
                "--lun",
                &lun,
                "-b",
                &path,
            ])?;
            t.luns.push(d.clone());
        }
        t.adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        // tgtd keeps running when its portal cannot be bound (another target on the port).
        let log = fs::read_to_string(dir.join("tgtd.log")).unwrap_or_default();
        if log.contains("unable to bind") || log.contains("failed to create/bind") {
            return Err(format!(
                "tgtd could not listen on 127.0.0.1:{port} (another iSCSI target there?): {}",
                log.lines().next().unwrap_or_default()
            )
            .into());
        }
        Ok(t)
    }

    fn adm(&self, args: &[&str]) -> Result<()> {
        let tgtadm = find_sbin("tgtadm").ok_or("tgtadm missing (package tgt)")?;
        let out = Command::new(tgtadm)
            .args(["-C", &self.control_port.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tgtadm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into())
        }
    }

    /// The TCP port of the target's portal on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The LUNs as nodes attach them, in order.
    #[must_use]
    pub fn luns(&self) -> Vec<IscsiLun> {
        self.luns
            .iter()
            .enumerate()
            .map(|(i, d)| IscsiLun {
                name: d.name.clone(),
                url: format!("iscsi://127.0.0.1:{}/{}/{}", self.port, self.iqn, i + 1),
            })
            .collect()
    }
}

impl Drop for IscsiTarget {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `NAME` in `/usr/sbin`, `/sbin` or `PATH`.
fn find_sbin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl NodeSpec {
    /// A node with 256 MiB, no watchdog.
    #[must_use]
    pub fn new(name: &str, hostid: u32, disks: &[Disk]) -> Self {
        Self {
            name: name.to_owned(),
            hostid,
            disks: disks.to_vec(),
            watchdog: false,
            memory_mb: 256,
            luns: Vec::new(),
            full: None,
            eio_flag: None,
        }
    }
}

/// The result of one job run in a guest.
#[derive(Clone, Debug)]
pub struct JobResult {
    /// Exit status of `sh JOB`.
    pub rc: i32,
    /// Its stdout and stderr, interleaved.
    pub out: String,
    /// Host time from submitting the job to seeing its status (includes up to about 0.2 s of
    /// channel latency).
    pub elapsed: Duration,
}

/// A job submitted with [`Node::spawn`], not waited for yet.
#[derive(Debug)]
pub struct Job {
    base: PathBuf,
    started: Instant,
    what: String,
}

impl Job {
    /// The status if the job finished, without waiting.
    ///
    /// # Errors
    /// When the status file cannot be read.
    pub fn try_result(&self) -> Result<Option<JobResult>> {
        let rc_path = self.base.with_extension("rc");
        let Ok(rc) = fs::read_to_string(&rc_path) else {
            return Ok(None);
        };
        let out = fs::read_to_string(self.base.with_extension("out")).unwrap_or_default();
        let rc = rc
            .trim()
            .parse()
            .map_err(|e| format!("{}: bad status {rc:?}: {e}", rc_path.display()))?;
        Ok(Some(JobResult {
            rc,
            out,
            elapsed: self.started.elapsed(),
        }))
    }

    /// Waits for the job to finish.
    ///
    /// # Errors
    /// When it does not finish within `timeout`.
    pub fn wait(&self, timeout: Duration) -> Result<JobResult> {
        let deadline = self.started + timeout;
        loop {
            if let Some(r) = self.try_result()? {
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(
                    format!("job {:?} did not finish within {timeout:?}", self.what).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Lines every job starts with: the tools folder (`$T`), a clock (guest uptime in seconds).
const JOB_PRELUDE: &str = "T=/tools/bin\nnow() { cut -d' ' -f1 /proc/uptime; }\n";

/// One running guest.
#[derive(Debug)]
pub struct Node {
    /// What it was booted with.
    pub spec: NodeSpec,
    dir: PathBuf,
    child: Option<Child>,
    qmp: Option<qmp::Qmp>,
    jobs: PathBuf,
    next_job: u32,
    /// When the QEMU process was started.
    pub booted_at: Instant,
    /// The `nbdkit` servers of a failing path ([`NodeSpec::eio_flag`]).
    paths: Vec<Child>,
}

impl Node {
    /// Starts QEMU for `spec` under `run_dir/NAME` (console log, QMP socket, job folder).
    /// Returns once QMP answers; [`Node::wait_ready`] waits for the guest's job loop.
    ///
    /// # Errors
    /// When QEMU cannot start or QMP does not answer within 30 s.
    pub fn boot(run_dir: &Path, images: &Images, tools: &Tools, spec: NodeSpec) -> Result<Self> {
        let dir = run_dir.join(&spec.name);
        let jobs = dir.join("jobs");
        if jobs.exists() {
            fs::remove_dir_all(&jobs)?;
        }
        fs::create_dir_all(&jobs)?;
        let sock = dir.join("qmp.sock");
        let _ = fs::remove_file(&sock);
        let _ = fs::remove_file(dir.join("fence.sock"));
        let mut append = format!(
            "console=ttyS0 panic=-1 loglevel=4 mmplab_node={} mmplab_hostid={:#010x}",
            spec.name, spec.hostid
        );
        if let Some(f) = &spec.full {
            f.append(&mut append);
        }
        if let Ok(extra) = std::env::var("MMP_LAB_APPEND") {
            let _ = write!(append, " {extra}");
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg,thread=multi", "-smp", "1", "-nodefaults"])
            .args(["-no-user-config", "-display", "none"])
            .args(["-m", &spec.memory_mb.to_string()])
            .arg("-kernel")
            .arg(
                spec.full
                    .as_ref()
                    .map_or(&images.kernel, |f| &f.image.kernel),
            )
            .arg("-initrd")
            .arg(
                spec.full
                    .as_ref()
                    .map_or(&images.initrd, |f| &f.image.initrd),
            )
            .args(["-append", &append])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            // A second monitor for the lab's STONITH device (fencer.rs), which runs in a
            // thread of its own while the scenario holds the first.
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("fence.sock").display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=tools,security_model=none,readonly=on",
                tools.dir.display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=jobs,security_model=none",
                jobs.display()
            ));
        if let Some(f) = &spec.full {
            f.add_args(&mut cmd, &dir, spec.hostid)?;
        }
        let mut paths = Vec::new();
        for (i, disk) in spec.disks.iter().enumerate() {
            if let Some(flag) = &spec.eio_flag {
                let sock = dir.join(format!("path-{}.sock", disk.name));
                paths.push(start_failing_path(&disk.path, &sock, flag)?);
                cmd.arg("-drive").arg(format!(
                    "file=nbd+unix:///?socket={},if=none,id=d{i}-{},format=raw",
                    sock.display(),
                    disk.name
                ));
            } else {
                cmd.arg("-drive").arg(format!(
                    "file={},if=none,id=d{i}-{},format=raw,cache=none,file.locking=off",
                    disk.path.display(),
                    disk.name
                ));
            }
            cmd.arg("-device").arg(format!(
                "virtio-blk-pci,drive=d{i}-{},share-rw=on,serial={}",
                disk.name, disk.name
            ));
        }
        if !spec.luns.is_empty() {
            cmd.arg("-iscsi").arg(format!(
                "initiator-name=iqn.2026-12.org.mmp.lab:node-{}",
                spec.name
            ));
            cmd.args(["-device", "virtio-scsi-pci,id=scsi0"]);
        }
        for (i, lun) in spec.luns.iter().enumerate() {
            cmd.arg("-drive").arg(format!(
                "file={},if=none,id=s{i}-{},format=raw,cache=none",
                lun.url, lun.name
            ));
            cmd.arg("-device").arg(format!(
                "scsi-block,drive=s{i}-{},bus=scsi0.0,channel=0,scsi-id={i},lun=0",
                lun.name
            ));
        }
        if spec.watchdog {
            cmd.args(["-device", "i6300esb", "-watchdog-action", "poweroff"]);
        }
        let log = fs::File::create(dir.join("qemu.log"))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let booted_at = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("start qemu-system-x86_64: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let qmp = loop {
            if let Some(status) = child.try_wait()? {
                let log = fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
                return Err(
                    format!("qemu for {} exited at once ({status}): {log}", spec.name).into(),
                );
            }
            if let Ok(q) = qmp::Qmp::connect(&sock) {
                break q;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("no QMP from {} within 30 s", spec.name).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Self {
            spec,
            dir,
            child: Some(child),
            qmp: Some(qmp),
            jobs,
            next_job: 0,
            booted_at,
            paths,
        })
    }

    /// The node's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Waits for the guest's job loop (`jobs/ready`); returns the boot time.
    ///
    /// # Errors
    /// When the guest is not ready within `timeout` (the console log is quoted).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let ready = self.jobs.join("ready");
        loop {
            if ready.exists() {
                return Ok(self.booted_at.elapsed());
            }
            if !self.is_running()? || self.booted_at.elapsed() > timeout {
                return Err(format!(
                    "{} not ready after {:?}; console:\n{}",
                    self.name(),
                    self.booted_at.elapsed(),
                    self.console_tail(30)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the guest's job loop after a reboot that did not restart QEMU (a reset by
    /// the fencer removes `jobs/ready` first); returns the time waited.
    ///
    /// # Errors
    /// When the guest is not ready within `timeout` (the console log is quoted).
    pub fn wait_ready_again(&mut self, timeout: Duration) -> Result<Duration> {
        let t = Instant::now();
        let ready = self.jobs.join("ready");
        while !ready.exists() {
            if !self.is_running()? || t.elapsed() > timeout {
                return Err(format!(
                    "{} not ready again after {:?}; console:\n{}",
                    self.name(),
                    t.elapsed(),
                    self.console_tail(30)
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(t.elapsed())
    }

    /// The node's folder on the host (console log, QMP sockets, job folder).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last `lines` lines of the serial console.
    #[must_use]
    pub fn console_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Drops a job script into the node's folder; the guest starts it within about 0.1 s.
    ///
    /// # Errors
    /// When the script cannot be written.
    pub fn spawn(&mut self, what: &str, script: &str) -> Result<Job> {
        self.next_job += 1;
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let base = self.jobs.join(format!("{:03}-{slug}", self.next_job));
        let tmp = base.with_extension("tmp");
        fs::write(&tmp, format!("{JOB_PRELUDE}{script}\n"))?;
        fs::rename(&tmp, base.with_extension("sh"))?;
        Ok(Job {
            base,
            started: Instant::now(),
            what: format!("{}: {what}", self.name()),
        })
    }

    /// Runs a job and waits for it.
    ///
    /// # Errors
    /// When it cannot be submitted or does not finish within `timeout`.
    pub fn run(&mut self, what: &str, script: &str, timeout: Duration) -> Result<JobResult> {
        let job = self.spawn(what, script)?;
        job.wait(timeout)
    }

    /// Runs a job and requires exit status `want`.
    ///
    /// # Errors
    /// When the status differs (the output is quoted) or the job times out.
    pub fn expect(
        &mut self,
        what: &str,
        script: &str,
        want: i32,
        timeout: Duration,
    ) -> Result<JobResult> {
        let r = self.run(what, script, timeout)?;
        if r.rc != want {
            return Err(format!(
                "{}: {what}: exit {} (wanted {want}); output:\n{}",
                self.name(),
                r.rc,
                r.out.trim_end()
            )
            .into());
        }
        Ok(r)
    }

    /// A file in the node's job folder (the guest sees it as `/jobs/NAME`).
    #[must_use]
    pub fn job_file(&self, name: &str) -> PathBuf {
        self.jobs.join(name)
    }

    /// Whether the QEMU process still runs.
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn is_running(&mut self) -> Result<bool> {
        match &mut self.child {
            Some(c) => Ok(c.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    fn qmp(&mut self) -> Result<&mut qmp::Qmp> {
        self.qmp
            .as_mut()
            .ok_or_else(|| format!("{}: no QMP (powered off)", self.spec.name).into())
    }

    /// Freezes the whole guest (QMP `stop`): no vCPU runs, its clocks stop.
    ///
    /// # Errors
    /// When QMP fails.
    pub fn freeze(&mut self) -> Result<()> {
        self.qmp()?.execute("stop", None).map(drop)
    }

    /// Resumes a frozen guest (QMP `cont`).
    ///
    /// # Errors
    /// When QMP fails.
    pub fn resume(&mut self) -> Result<()> {
        self.qmp()?.execute("cont", None).map(drop)
    }

    /// Resets the guest (QMP `system_reset`): it reboots with the same disks.
    ///
    /// # Errors
    /// When QMP fails.
    pub fn reset(&mut self) -> Result<()> {
        self.qmp()?.execute("system_reset", None).map(drop)
    }

    /// Power loss (QMP `quit`): the QEMU process ends without the guest noticing.
    ///
    /// # Errors
    /// When the process does not end within 10 s (it is then killed).
    pub fn power_off(&mut self) -> Result<()> {
        if let Some(q) = self.qmp.as_mut() {
            let _ = q.execute("quit", None);
        }
        self.qmp = None;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{}: qemu did not quit", self.spec.name).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stalls this node's path to its disks and LUNs, or lets it go again: QMP
    /// `block_set_io_throttle` at 1 byte per second on every drive, so each request waits
    /// in QEMU's throttle queue (a 4 KiB request about an hour) as on a path whose I/O
    /// hangs (a dead multipath queueing, a stuck HBA); at most one request per drive gets
    /// through as the stall begins. `false` removes the limit: the queued requests go out,
    /// late. The guest and its clocks run on. Virtio disks only: the scsi-block pass-through
    /// of iSCSI LUNs goes around QEMU's throttling (tried in the lab: the owner kept beating).
    ///
    /// # Errors
    /// When QMP refuses.
    pub fn stall_storage(&mut self, stalled: bool) -> Result<()> {
        let mut drives: Vec<String> = self
            .spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| format!("d{i}-{}", d.name))
            .collect();
        drives.extend(
            self.spec
                .luns
                .iter()
                .enumerate()
                .map(|(i, l)| format!("s{i}-{}", l.name)),
        );
        let bps = u64::from(stalled);
        for d in drives {
            self.qmp()?.execute(
                "block_set_io_throttle",
                Some(serde_json::json!({
                    "device": d, "bps": bps, "bps_rd": 0, "bps_wr": 0,
                    "iops": 0, "iops_rd": 0, "iops_wr": 0,
                })),
            )?;
        }
        Ok(())
    }

    /// Per-disk I/O counts seen by QEMU (`query-blockstats`): what the guest issued.
    ///
    /// # Errors
    /// When QMP fails or the answer is not the expected shape.
    pub fn blockstats(&mut self) -> Result<Vec<qmp::BlockStats>> {
        let v = self.qmp()?.execute("query-blockstats", None)?;
        qmp::BlockStats::parse_all(&v)
    }

    /// Write operations the guest issued to `disk` so far.
    ///
    /// # Errors
    /// As [`Node::blockstats`], or when the node has no such disk.
    pub fn writes_to(&mut self, disk: &str) -> Result<u64> {
        let stats = self.blockstats()?;
        stats
            .iter()
            .find(|s| s.device.ends_with(&format!("-{disk}")))
            .map(|s| s.wr_operations)
            .ok_or_else(|| format!("{}: no disk {disk} in blockstats", self.spec.name).into())
    }

    /// QMP events received so far (`WATCHDOG`, `SHUTDOWN`, `STOP`, ...), with their host
    /// arrival time.
    #[must_use]
    pub fn events(&self) -> Vec<(Instant, String)> {
        self.qmp
            .as_ref()
            .map(|q| q.events.clone())
            .unwrap_or_default()
    }

    /// Reads pending QMP events without sending a command.
    ///
    /// # Errors
    /// When the socket fails (a powered-off node has none: that is not an error).
    pub fn poll_events(&mut self) -> Result<()> {
        if let Some(q) = self.qmp.as_mut() {
            q.poll_events()?;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for mut p in self.paths.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// One disk's failing path: `nbdkit` serving `disk` on the UNIX socket `sock` through its
/// error filter, which fails every request with EIO while `flag` exists. Returns once the
/// socket is there.
fn start_failing_path(disk: &Path, sock: &Path, flag: &Path) -> Result<Child> {
    let _ = fs::remove_file(sock);
    let nbdkit =
        find_sbin("nbdkit").ok_or("nbdkit missing (package nbdkit; `lab/run` installs it)")?;
    let mut child = Command::new(nbdkit)
        .args(["--foreground", "--exit-with-parent", "--unix"])
        .arg(sock)
        .args(["--filter=error", "file"])
        .arg(format!("file={}", disk.display()))
        .args(["error=EIO", "error-rate=100%"])
        .arg(format!("error-file={}", flag.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start nbdkit: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(status) = child.try_wait()? {
            return Err(format!("nbdkit for {} exited at once ({status})", disk.display()).into());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("nbdkit for {}: no socket within 10 s", disk.display()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// Boots several nodes at once and waits until all are ready.
///
/// # Errors
/// When one fails to boot.
pub fn boot_all(
    run_dir: &Path,
    images: &Images,
    tools: &Tools,
    specs: Vec<NodeSpec>,
) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for spec in specs {
        nodes.push(Node::boot(run_dir, images, tools, spec)?);
    }
    for n in &mut nodes {
        n.wait_ready(Duration::from_secs(180))?;
    }
    Ok(nodes)
}
