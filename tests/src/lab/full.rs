//! The full guest: a Debian root file system with systemd, corosync and Pacemaker (built by
//! `lab/build-full-image`), booted from a per-node qcow2 overlay, with an optional
//! point-to-point network link to one other node.
//!
//! A node is "full" when its [`NodeSpec`](super::NodeSpec) carries a [`FullBoot`]: the root
//! overlay's `-device` comes before the shared disks (so the root is `/dev/vda` and the shared
//! disks follow as `/dev/vdb`, `/dev/vdc`, ...), the kernel boots the image's small initramfs,
//! which switch_roots into systemd, and `mmplab.service` in the image runs the same job channel
//! as the busybox guest. The host's `mmp`, the OCF agent and the systemd unit reach the guest
//! over 9p (`/tools`), so a new build needs no new image.

use std::fs;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Node, Result};

/// The full guest's images (see `lab/build-full-image`).
#[derive(Clone, Debug)]
pub struct FullImage {
    /// The raw ext4 root image; nodes boot qcow2 overlays of it, it is never written.
    pub root: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The small initramfs that mounts `/dev/vda` and starts systemd.
    pub initrd: PathBuf,
    /// Which Debian packages it holds (a few lines).
    pub version: String,
}

impl FullImage {
    /// Runs `lab/build-full-image` (which answers from its cache when nothing changed).
    ///
    /// # Errors
    /// When the script fails (missing packages, no mirror).
    pub fn build(repo: &Path) -> Result<Self> {
        let out = Command::new(repo.join("lab/build-full-image"))
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("lab/build-full-image failed ({})", out.status).into());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        let version = fs::read_to_string(dir.join("VERSION")).unwrap_or_default();
        Ok(Self {
            root: dir.join("root.img"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
            version: version.trim().replace('\n', "; "),
        })
    }
}

/// One end of a point-to-point link between two guests: QEMU's `-netdev dgram` over UDP on
/// 127.0.0.1. It survives either side's restart, and nothing leaves the host.
#[derive(Clone, Debug)]
pub struct Link {
    /// The UDP port this end receives on.
    pub local_port: u16,
    /// The UDP port of the other end.
    pub remote_port: u16,
}

impl Link {
    /// Two ends of one link, on two UDP ports free right now.
    ///
    /// # Errors
    /// When no UDP port can be bound on 127.0.0.1.
    pub fn pair() -> Result<(Self, Self)> {
        let s1 = UdpSocket::bind("127.0.0.1:0")?;
        let s2 = UdpSocket::bind("127.0.0.1:0")?;
        let (p1, p2) = (s1.local_addr()?.port(), s2.local_addr()?.port());
        Ok((
            Self {
                local_port: p1,
                remote_port: p2,
            },
            Self {
                local_port: p2,
                remote_port: p1,
            },
        ))
    }
}

/// A network segment for more than two guests: a UDP hub on 127.0.0.1 that forwards every
/// frame a node sends to every other node (a dumb Ethernet hub). Each node's end is a
/// [`Link`] whose remote port is the hub. Stops when dropped.
#[derive(Debug)]
pub struct Hub {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    /// A hub for `n` nodes and their links, in order.
    ///
    /// # Errors
    /// When no UDP port can be bound on 127.0.0.1.
    pub fn start(n: usize) -> Result<(Self, Vec<Link>)> {
        let hub = UdpSocket::bind("127.0.0.1:0")?;
        hub.set_read_timeout(Some(Duration::from_millis(100)))?;
        let hub_port = hub.local_addr()?.port();
        let mut ports = Vec::new();
        for _ in 0..n {
            // A free port for the node's end (QEMU binds it).
            ports.push(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port());
        }
        let links = ports
            .iter()
            .map(|&p| Link {
                local_port: p,
                remote_port: hub_port,
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = hub.recv_from(&mut buf) else {
                        continue;
                    };
                    for &p in &ports {
                        if p != from.port() {
                            let _ = hub.send_to(&buf[..len], ("127.0.0.1", p));
                        }
                    }
                }
            })
        };
        Ok((
            Self {
                stop,
                thread: Some(thread),
            },
            links,
        ))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How a full node boots: the image, and its network (a link-local address on `eth0`).
#[derive(Clone, Debug)]
pub struct FullBoot {
    /// The images.
    pub image: FullImage,
    /// The guest's address on `eth0` (e.g. `169.254.0.1`, a /16), when it has a link.
    pub ip: Option<String>,
    /// The link to the other node.
    pub link: Option<Link>,
}

/// The QEMU id of a full node's network card (for `set_link`).
pub const NIC_ID: &str = "nic0";

impl FullBoot {
    /// Kernel command-line words: predictable `eth0`, the address for the job channel.
    pub(super) fn append(&self, append: &mut String) {
        append.push_str(" net.ifnames=0");
        if let Some(ip) = &self.ip {
            append.push_str(" mmplab_ip=");
            append.push_str(ip);
        }
    }

    /// Creates the node's root overlay in `dir` and adds it (first, so it is `/dev/vda`) and
    /// the network card to `cmd`.
    pub(super) fn add_args(&self, cmd: &mut Command, dir: &Path, hostid: u32) -> Result<()> {
        let overlay = dir.join("root.qcow2");
        let _ = fs::remove_file(&overlay);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&self.image.root)
            .arg(&overlay)
            .output()
            .map_err(|e| format!("qemu-img (package qemu-utils): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img create {}: {}",
                overlay.display(),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id=root,format=qcow2",
                overlay.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=root,serial=root"]);
        if let Some(link) = &self.link {
            cmd.arg("-netdev").arg(format!(
                "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={}",
                link.local_port, link.remote_port
            ));
            cmd.arg("-device").arg(format!(
                "virtio-net-pci,netdev=n0,id={NIC_ID},mac=52:54:00:{:02x}:{:02x}:{:02x}",
                (hostid >> 16) & 0xff,
                (hostid >> 8) & 0xff,
                hostid & 0xff
            ));
        }
        Ok(())
    }
}

impl Node {
    /// Takes the node's network card down or up (QMP `set_link`): down, the guest sees no
    /// carrier and QEMU drops every frame both ways, a network partition of this node.
    ///
    /// # Errors
    /// When QMP fails (e.g. the node has no network card).
    pub fn set_link(&mut self, up: bool) -> Result<()> {
        self.qmp()?
            .execute(
                "set_link",
                Some(serde_json::json!({ "name": NIC_ID, "up": up })),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_forwards_every_frame_to_every_other_node() {
        let (_hub, links) = Hub::start(3).unwrap();
        let socks: Vec<UdpSocket> = links
            .iter()
            .map(|l| {
                let s = UdpSocket::bind(("127.0.0.1", l.local_port)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                s
            })
            .collect();
        socks[0]
            .send_to(b"frame", ("127.0.0.1", links[0].remote_port))
            .unwrap();
        let mut buf = [0u8; 16];
        for s in &socks[1..] {
            let (n, _) = s.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"frame");
        }
        // Not back to the sender.
        assert!(socks[0].recv_from(&mut buf).is_err());
    }
}
