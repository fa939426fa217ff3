//! `--fence scsi-pr`: the persistent reservations a hold takes over its devices, from the
//! registration before anything is written to the hand-over before CLEAN (the reservation
//! stays until the next owner preempts it).

use crate::{Ctx, show};
use mmp_linux::pr;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The fence over the MMP devices and the guarded devices, and whether we hold reservations
/// that a clean release hands over.
pub(super) struct Fencing {
    /// Our key, registered on every device.
    fence: pr::Fence,
    /// Whether we hold persistent reservations that a clean release hands over.
    reserved: bool,
}

impl Fencing {
    /// Opens the persistent-reservation fence over the MMP devices and the guarded devices
    /// and registers our key on the MMP devices (the MMP claim may have to be written under
    /// a crashed owner's reservation); the guarded devices get it only with the reservation,
    /// after the acquire ([`Fencing::take`]). Nothing is written to any MMP block before this
    /// succeeds.
    pub(super) fn open(
        c: &Ctx,
        devices: &[PathBuf],
        guards: &[PathBuf],
    ) -> Result<Fencing, String> {
        if c.hostid == 0 {
            return Err(format!(
                "--fence scsi-pr needs a hostid (the reservation key is derived from it): {}",
                c.hostid_error
                    .as_deref()
                    .unwrap_or("set one with `mmp hostid --set` or --hostid")
            ));
        }
        // The MMP devices, then the guarded data devices not already among them.
        let mut named: Vec<(String, &Path)> = Vec::new();
        let mut mmp_devices = 0;
        for (i, d) in devices.iter().chain(guards).enumerate() {
            let k = crate::resolve::device_key(d);
            if !named.iter().any(|(_, p)| {
                *p == d.as_path() || (k.is_some() && crate::resolve::device_key(p) == k)
            }) {
                named.push((show(d), d.as_path()));
                if i < devices.len() {
                    mmp_devices = named.len();
                }
            }
        }
        let (mmp, data) = named.split_at(mmp_devices);
        let fence = pr::Fence::open(mmp, data, c.hostid).map_err(|e| {
            format!(
                "--fence scsi-pr: {e}. Persistent reservations need a SCSI device (iSCSI, FC, \
                 SAS, a SCSI pass-through disk); nothing was written"
            )
        })?;
        fence
            .prepare()
            .map_err(|e| format!("--fence scsi-pr: {e}; nothing was written"))?;
        Ok(Fencing {
            fence,
            reserved: false,
        })
    }

    /// Takes the reservation on every device, preempting the previous owner's: the line to
    /// report (key, preemptions, how long it took). None when one could not be taken: said;
    /// what was reserved on the devices before the failing one stays reserved (we may have
    /// preempted the previous owner there: giving it back would let that owner write), our
    /// other registrations go.
    pub(super) fn take(&mut self) -> Option<String> {
        let started = Instant::now();
        match self.fence.acquire() {
            Ok(got) => {
                self.reserved = true;
                Some(format!(
                    "{} in {:.0} ms",
                    fence_summary(self.fence.key(), &got),
                    started.elapsed().as_secs_f64() * 1000.0
                ))
            }
            Err(e) => {
                note!("mmp: --fence scsi-pr: {e}; giving up the acquire");
                self.hand_over();
                None
            }
        }
    }

    /// A device was lost: the reservation stays until the next owner preempts it.
    pub(super) fn lost(&mut self) {
        self.reserved = false;
    }

    /// A clean release, the data quiesced (before the MMP blocks say CLEAN): the
    /// reservations stay with us until the next owner preempts them, so no host that was
    /// preempted earlier can write meanwhile (`docs/protocol.md`, "Persistent
    /// reservations"). Said, with how to give them up.
    pub(super) fn release(&mut self) {
        if !self.reserved {
            return;
        }
        self.hand_over();
        self.reserved = false;
    }

    /// Registered but never reserved (refused, interrupted, gave up waiting): withdraws our
    /// key (keeping a reservation we may hold from an earlier hold of this host).
    pub(super) fn withdraw(&self) {
        self.hand_over();
    }

    fn hand_over(&self) {
        let (kept, failed) = self.fence.hand_over();
        if !kept.is_empty() {
            note!(
                "mmp: --fence scsi-pr: reservation key {:#018x} kept on {} until the next owner \
                 preempts it (`mmp pr --release` gives it up)",
                self.fence.key(),
                kept.join(", ")
            );
        }
        for e in failed {
            note!("mmp: --fence scsi-pr: could not withdraw our key from {e}");
        }
    }
}

/// One line: our key and what the reservation acquire did per device.
fn fence_summary(key: u64, got: &[(String, pr::Acquired)]) -> String {
    let mut line = format!("fenced: reservation key {key:#018x} holds");
    for (i, (dev, a)) in got.iter().enumerate() {
        line.push_str(if i == 0 { " " } else { ", " });
        line.push_str(dev);
        if let Some(k) = a.took_over {
            line.push_str(&format!(" (preempted {k:#018x})"));
        }
    }
    line
}
