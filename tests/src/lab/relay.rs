//! One node's own path to the iSCSI target: a TCP relay on 127.0.0.1 between the node's
//! QEMU initiator and `tgtd`. The scenario can hold it (no byte moves either way: a path
//! whose I/O hangs, as with a dead multipath link that queues or a stuck HBA; the node's
//! requests wait in the relay's sockets) and release it (everything queued goes on, late:
//! the old owner's writes that land after a takeover). QEMU's throttling cannot stall these
//! LUNs (scsi-block pass-through goes around it); this can, and only for one node.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{IscsiLun, Result};

/// A relay for one node; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct PathRelay {
    port: u16,
    target_port: u16,
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl PathRelay {
    /// Listens on a free port of 127.0.0.1 and relays every connection to `target_port`.
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(target_port: u16) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let held = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) {
                                pump_both(client, server, &held, &stop);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        };
        Ok(Self {
            port,
            target_port,
            held,
            stop,
            accept: Some(accept),
        })
    }

    /// `luns` as the node reaches them through this relay.
    #[must_use]
    pub fn luns(&self, luns: &[IscsiLun]) -> Vec<IscsiLun> {
        let direct = format!("127.0.0.1:{}/", self.target_port);
        let relayed = format!("127.0.0.1:{}/", self.port);
        luns.iter()
            .map(|l| IscsiLun {
                name: l.name.clone(),
                url: l.url.replace(&direct, &relayed),
            })
            .collect()
    }

    /// Holds the path (`true`: nothing moves) or lets it go (`false`).
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::SeqCst);
    }
}

impl Drop for PathRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Starts one pump per direction.
fn pump_both(client: TcpStream, server: TcpStream, held: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    for (from, to) in [(client, server), (s2, c2)] {
        let (held, stop) = (Arc::clone(held), Arc::clone(stop));
        std::thread::spawn(move || pump(from, to, &held, &stop));
    }
}

/// Copies `from` to `to` while the path is not held; ends at end of stream or on an error
/// (and shuts the other side's writing down, so the peer sees the end too).
fn pump(mut from: TcpStream, mut to: TcpStream, held: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        if held.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A target that echoes every byte back.
    fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        port
    }

    #[test]
    fn a_held_path_moves_nothing_and_delivers_it_all_when_released() {
        let relay = PathRelay::start(echo_server()).unwrap();
        let lun = IscsiLun {
            name: "data".to_owned(),
            url: format!("iscsi://127.0.0.1:{}/iqn.x:t/2", relay.target_port),
        };
        let relayed = relay.luns(std::slice::from_ref(&lun));
        assert_eq!(
            relayed[0].url,
            format!("iscsi://127.0.0.1:{}/iqn.x:t/2", relay.port)
        );
        let mut c = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 5];
        c.write_all(b"early").unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"early");
        relay.hold(true);
        std::thread::sleep(Duration::from_millis(100));
        c.write_all(b"late!").unwrap();
        // Held: nothing comes back.
        let got = c.read(&mut buf);
        assert!(
            matches!(&got, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "{got:?}"
        );
        relay.hold(false);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"late!");
    }
}
