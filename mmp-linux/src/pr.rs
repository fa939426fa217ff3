//! SCSI-3 persistent reservations (SPC-4/SPC-5 PERSISTENT RESERVE IN and OUT) over Linux
//! `SG_IO`: the storage itself shuts out a host that lost the device.
//!
//! MMP makes a host that lost its heartbeat stop writing; a persistent reservation makes the
//! target refuse that host's writes even when it does not stop (a hung process, a stuck
//! kernel thread, a write queued before the takeover). This module is the OS layer for it:
//!
//! * wire formats, pure and tested with golden bytes: CDB builders ([`in_cdb`],
//!   [`OutCommand`]), the 24-byte PERSISTENT RESERVE OUT parameter list ([`OutParams`]),
//!   parsers for the PERSISTENT RESERVE IN answers ([`Keys`], [`Reservation`],
//!   [`Capabilities`]), SCSI [`Status`] and [`Sense`] data (fixed and descriptor formats),
//!   all of which never panic on any bytes;
//! * [`Completion::check`], which turns what a command returned into a typed [`PrError`];
//! * [`Pr`], a handle that runs the commands through a [`Transport`] ([`SgIo`], the
//!   `SG_IO` ioctl, in production) and retries a UNIT ATTENTION once;
//! * the fencing procedure: [`fence_prepare`], [`fence_acquire`], [`fence_hand_over`], and
//!   [`fence_release`] for an administrator who gives a device up.
//!
//! # Keys
//!
//! A host registers the key [`key_for_hostid`] derives from its hostid: the 4 bytes
//! `"mmp\0"` (0x6d6d7000) followed by the hostid, so `0x6d6d70001a2b3c4d` is hostid
//! `0x1a2b3c4d` in `mmp pr` or `sg_persist -k` output. The key is never 0 (0 means "no key"
//! in SPC), and [`hostid_for_key`] tells mmp keys from keys other software registered.
//!
//! # Reservation type
//!
//! [`FENCE_TYPE`] is **Write Exclusive – Registrants Only** (type 5, LU scope), not Write
//! Exclusive (type 1):
//!
//! * reads stay open to every host, so a preempted host still reads the MMP block and learns
//!   who took over, and `mmp status` works from anywhere;
//! * every path of the owner (dm-multipath: one I_T nexus per path, all registered with the
//!   same key) may write, where Write Exclusive lets only the one nexus that reserved write;
//! * a takeover removes the old owner from all its paths with one PREEMPT (AND ABORT) naming
//!   its key, and the old owner then gets RESERVATION CONFLICT on every write;
//! * a contender that registers *before* its MMP claim can write the claim even while a
//!   crashed owner still holds the reservation ([`fence_prepare`]); with Write Exclusive it
//!   would have to preempt before knowing that its claim wins.
//!
//! The price is that any registered key may write, so [`fence_acquire`] removes every
//! registration but its own, and a host registers only after the MMP activity test.
//!
//! # Order
//!
//! See `docs/protocol.md`, "Persistent reservations": the activity test first (reads only),
//! then [`fence_prepare`] (register), the claim and its verification, then [`fence_acquire`]
//! (reserve, or preempt the stale holder, and remove stale registrations); on release,
//! [`fence_hand_over`] after the data device is quiesced and before the MMP block is written
//! CLEAN: the reservation stays with the host that released until the next owner preempts
//! it, so no host that was preempted earlier can write in between.
//!
//! # Privileges
//!
//! The kernel lets PERSISTENT RESERVE IN/OUT through `SG_IO` on a block device only with
//! `CAP_SYS_RAWIO` (root).

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

mod sgio;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

// ----- keys ------------------------------------------------------------------------------

/// The upper 32 bits of every mmp reservation key: the bytes `"mmp\0"`.
pub const KEY_TAG: u32 = 0x6d6d_7000;

/// The reservation key of the host with this hostid: [`KEY_TAG`] in the upper 32 bits and
/// the hostid in the lower 32, so the key names its host in any tool's hex output.
///
/// Returns `None` for hostid 0 ("unset"), which must never acquire; every key returned is
/// non-zero.
#[must_use]
pub const fn key_for_hostid(hostid: u32) -> Option<u64> {
    if hostid == 0 {
        None
    } else {
        Some(((KEY_TAG as u64) << 32) | hostid as u64)
    }
}

/// The hostid an mmp key was derived from, or `None` for a key some other software
/// registered (wrong tag, or hostid 0).
#[must_use]
pub const fn hostid_for_key(key: u64) -> Option<u32> {
    let hostid = (key & 0xffff_ffff) as u32;
    if (key >> 32) as u32 == KEY_TAG && hostid != 0 {
        Some(hostid)
    } else {
        None
    }
}

// ----- CDBs and the parameter list -------------------------------------------------------

/// Operation code of PERSISTENT RESERVE IN.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// Operation code of PERSISTENT RESERVE OUT.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// Both commands have 10-byte CDBs.
pub const CDB_LEN: usize = 10;
/// Length of the basic PERSISTENT RESERVE OUT parameter list (no transport IDs).
pub const PARAM_LEN: usize = 24;
/// Length of the sense buffer handed to the kernel (fixed format is 18 bytes, descriptor
/// format up to 252; the fields we use sit in the first 14).
pub const SENSE_LEN: usize = 64;
/// The only scope SPC-4 keeps: the whole logical unit.
pub const SCOPE_LU: u8 = 0;

/// The reservation mmp holds (see the module docs for why).
pub const FENCE_TYPE: Type = Type::WriteExclusiveRegistrantsOnly;

/// PERSISTENT RESERVE IN service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InAction {
    /// All registered keys.
    ReadKeys = 0x00,
    /// The reservation, if any.
    ReadReservation = 0x01,
    /// What the device server supports.
    ReportCapabilities = 0x02,
}

/// PERSISTENT RESERVE OUT service actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OutAction {
    /// Register, change or (new key 0) remove this I_T nexus's key; the old key must match.
    Register = 0x00,
    /// Reserve with the registered key.
    Reserve = 0x01,
    /// Release a reservation this I_T nexus holds.
    Release = 0x02,
    /// Remove every registration and the reservation.
    Clear = 0x03,
    /// Remove the registrations of a key, and its reservation if it holds one.
    Preempt = 0x04,
    /// As [`OutAction::Preempt`], also aborting the preempted nexuses' queued commands.
    PreemptAndAbort = 0x05,
    /// Register whatever key this nexus had before (new key 0: unregister).
    RegisterAndIgnoreExistingKey = 0x06,
}

impl OutAction {
    /// The name SPC gives the service action.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Register => "REGISTER",
            Self::Reserve => "RESERVE",
            Self::Release => "RELEASE",
            Self::Clear => "CLEAR",
            Self::Preempt => "PREEMPT",
            Self::PreemptAndAbort => "PREEMPT AND ABORT",
            Self::RegisterAndIgnoreExistingKey => "REGISTER AND IGNORE EXISTING KEY",
        }
    }
}

/// Persistent reservation types (SPC-4 table "Persistent reservation type codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Type {
    /// Only the holder nexus writes; everyone reads.
    WriteExclusive = 0x1,
    /// Only the holder nexus reads or writes.
    ExclusiveAccess = 0x3,
    /// Registered nexuses write; everyone reads. mmp's [`FENCE_TYPE`].
    WriteExclusiveRegistrantsOnly = 0x5,
    /// Registered nexuses read and write.
    ExclusiveAccessRegistrantsOnly = 0x6,
    /// Registered nexuses write, and all of them hold the reservation.
    WriteExclusiveAllRegistrants = 0x7,
    /// Registered nexuses read and write, and all of them hold the reservation.
    ExclusiveAccessAllRegistrants = 0x8,
}

impl Type {
    /// The type with this code, or `None` for a reserved or obsolete code.
    #[must_use]
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => Self::WriteExclusive,
            0x3 => Self::ExclusiveAccess,
            0x5 => Self::WriteExclusiveRegistrantsOnly,
            0x6 => Self::ExclusiveAccessRegistrantsOnly,
            0x7 => Self::WriteExclusiveAllRegistrants,
            0x8 => Self::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// The 4-bit code.
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The name as SPC and `sg_persist` print it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::WriteExclusive => "Write Exclusive",
            Self::ExclusiveAccess => "Exclusive Access",
            Self::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
            Self::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
            Self::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
            Self::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
        }
    }

    /// A stable `snake_case` name for JSON.
    #[must_use]
    pub const fn json_name(self) -> &'static str {
        match self {
            Self::WriteExclusive => "write_exclusive",
            Self::ExclusiveAccess => "exclusive_access",
            Self::WriteExclusiveRegistrantsOnly => "write_exclusive_registrants_only",
            Self::ExclusiveAccessRegistrantsOnly => "exclusive_access_registrants_only",
            Self::WriteExclusiveAllRegistrants => "write_exclusive_all_registrants",
            Self::ExclusiveAccessAllRegistrants => "exclusive_access_all_registrants",
        }
    }

    /// Whether every registrant holds the reservation (READ RESERVATION then shows key 0).
    #[must_use]
    pub const fn is_all_registrants(self) -> bool {
        matches!(
            self,
            Self::WriteExclusiveAllRegistrants | Self::ExclusiveAccessAllRegistrants
        )
    }
}

/// The PERSISTENT RESERVE IN CDB: service action in byte 1, allocation length big-endian in
/// bytes 7..9.
#[must_use]
pub const fn in_cdb(action: InAction, allocation_len: u16) -> [u8; CDB_LEN] {
    let len = allocation_len.to_be_bytes();
    [
        PERSISTENT_RESERVE_IN,
        action as u8,
        0,
        0,
        0,
        0,
        0,
        len[0],
        len[1],
        0,
    ]
}

/// The 24-byte PERSISTENT RESERVE OUT parameter list (no transport IDs, so SPEC_I_PT is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutParams {
    /// RESERVATION KEY: the key this nexus is registered with (0 when it has none).
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY: the new key (REGISTER*), or the key to preempt.
    pub service_action_key: u64,
    /// ALL_TG_PT: register through every target port at once (REGISTER* only; optional).
    pub all_tg_pt: bool,
    /// APTPL: keep registrations and the reservation across a target power loss
    /// (REGISTER* only; optional).
    pub aptpl: bool,
}

impl OutParams {
    /// The bytes: keys big-endian at 0..8 and 8..16, the obsolete scope-specific address
    /// 16..20 zero, flags in byte 20 (ALL_TG_PT bit 2, APTPL bit 0), 21..24 zero.
    #[must_use]
    pub const fn emit(&self) -> [u8; PARAM_LEN] {
        let mut b = [0u8; PARAM_LEN];
        let k = self.key.to_be_bytes();
        let s = self.service_action_key.to_be_bytes();
        let mut i = 0;
        while i < 8 {
            b[i] = k[i];
            b[8 + i] = s[i];
            i += 1;
        }
        b[20] = ((self.all_tg_pt as u8) << 2) | self.aptpl as u8;
        b
    }
}

/// One PERSISTENT RESERVE OUT command: the CDB and its parameter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutCommand {
    /// The service action (for messages).
    pub action: OutAction,
    /// Opcode, service action, scope and type, parameter list length 24.
    pub cdb: [u8; CDB_LEN],
    /// The parameter list.
    pub params: [u8; PARAM_LEN],
}

impl OutCommand {
    /// Any service action; `kind` goes into the TYPE field (0 when `None`), scope is LU.
    #[must_use]
    pub const fn new(action: OutAction, kind: Option<Type>, params: &OutParams) -> Self {
        let type_code = match kind {
            Some(t) => t.code(),
            None => 0,
        };
        #[allow(clippy::cast_possible_truncation, reason = "PARAM_LEN is 24")]
        let len = (PARAM_LEN as u32).to_be_bytes();
        Self {
            action,
            cdb: [
                PERSISTENT_RESERVE_OUT,
                action as u8,
                (SCOPE_LU << 4) | type_code,
                0,
                0,
                len[0],
                len[1],
                len[2],
                len[3],
                0,
            ],
            params: params.emit(),
        }
    }

    /// REGISTER: replace `old_key` (0 when this nexus has none) by `new_key` (0: unregister).
    #[must_use]
    pub const fn register(old_key: u64, new_key: u64) -> Self {
        let p = OutParams {
            key: old_key,
            service_action_key: new_key,
            all_tg_pt: false,
            aptpl: false,
        };
        Self::new(OutAction::Register, None, &p)
    }

    /// REGISTER AND IGNORE EXISTING KEY: register `new_key` whatever this nexus had
    /// (`new_key` 0: unregister; a no-op when it has nothing).
    #[must_use]
    pub const fn register_ignore(new_key: u64) -> Self {
        let p = OutParams {
            key: 0,
            service_action_key: new_key,
            all_tg_pt: false,
            aptpl: false,
        };
        Self::new(OutAction::RegisterAndIgnoreExistingKey, None, &p)
    }

    /// RESERVE with the registered `key`.
    #[must_use]
    pub const fn reserve(key: u64, kind: Type) -> Self {
        Self::new(OutAction::Reserve, Some(kind), &Self::key_only(key))
    }

    /// RELEASE the reservation of this `kind` held with `key`.
    #[must_use]
    pub const fn release(key: u64, kind: Type) -> Self {
        Self::new(OutAction::Release, Some(kind), &Self::key_only(key))
    }

    /// CLEAR every registration and the reservation (needs a registered `key`).
    #[must_use]
    pub const fn clear(key: u64) -> Self {
        Self::new(OutAction::Clear, None, &Self::key_only(key))
    }

    /// PREEMPT the registrations of `victim` (and its reservation, replaced by one of
    /// `kind` for this nexus).
    #[must_use]
    pub const fn preempt(key: u64, victim: u64, kind: Type) -> Self {
        Self::new(OutAction::Preempt, Some(kind), &Self::victim(key, victim))
    }

    /// PREEMPT AND ABORT: as [`OutCommand::preempt`], and the target aborts the commands
    /// the victim's nexuses still have queued.
    #[must_use]
    pub const fn preempt_and_abort(key: u64, victim: u64, kind: Type) -> Self {
        Self::new(
            OutAction::PreemptAndAbort,
            Some(kind),
            &Self::victim(key, victim),
        )
    }

    const fn key_only(key: u64) -> OutParams {
        OutParams {
            key,
            service_action_key: 0,
            all_tg_pt: false,
            aptpl: false,
        }
    }

    const fn victim(key: u64, victim: u64) -> OutParams {
        OutParams {
            key,
            service_action_key: victim,
            all_tg_pt: false,
            aptpl: false,
        }
    }
}

// ----- PERSISTENT RESERVE IN answers -----------------------------------------------------

/// Why an answer could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than the fixed header, or than the length field announces for a
    /// mandatory part.
    #[error("answer truncated: {len} bytes, at least {need} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A length field with a value SPC does not allow.
    #[error("answer has an invalid length field ({value})")]
    BadLength {
        /// The value.
        value: u32,
    },
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_be_bytes(v)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        v.copy_from_slice(s);
    }
    u64::from_be_bytes(v)
}

/// The READ KEYS answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// PRGENERATION: bumped by every successful REGISTER*, CLEAR, PREEMPT*.
    pub generation: u32,
    /// The keys, in the device's order (one entry per registered I_T nexus, so the same
    /// key appears once per path).
    pub keys: Vec<u64>,
    /// The device had more keys than the allocation length let through
    /// (`additional_len` says how many bytes).
    pub truncated: bool,
    /// ADDITIONAL LENGTH: bytes of keys the device has.
    pub additional_len: u32,
}

impl Keys {
    /// Parses a READ KEYS answer: generation at 0..4, additional length at 4..8, then keys.
    /// Only whole keys are kept; more keys than `buf` holds sets `truncated`.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] under 8 bytes; [`ParseError::BadLength`] when the
    /// additional length is not a multiple of 8. Never panics.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < 8 {
            return Err(ParseError::Truncated {
                len: buf.len(),
                need: 8,
            });
        }
        let additional_len = be32(buf, 4);
        if !additional_len.is_multiple_of(8) {
            return Err(ParseError::BadLength {
                value: additional_len,
            });
        }
        let announced = usize::try_from(additional_len).unwrap_or(usize::MAX);
        let avail = buf.len() - 8;
        let take = announced.min(avail) / 8 * 8;
        let keys = buf[8..8 + take]
            .chunks_exact(8)
            .map(|c| be64(c, 0))
            .collect();
        Ok(Self {
            generation: be32(buf, 0),
            keys,
            truncated: take < announced,
            additional_len,
        })
    }

    /// Whether `key` is registered (on at least one nexus).
    #[must_use]
    pub fn contains(&self, key: u64) -> bool {
        self.keys.contains(&key)
    }

    /// The keys without repeats, in first-seen order.
    #[must_use]
    pub fn distinct(&self) -> Vec<u64> {
        let mut v: Vec<u64> = Vec::with_capacity(self.keys.len());
        for &k in &self.keys {
            if !v.contains(&k) {
                v.push(k);
            }
        }
        v
    }
}

/// The reservation READ RESERVATION reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's key (0 for an all-registrants type: every registrant holds it).
    pub key: u64,
    /// SCOPE (0: logical unit).
    pub scope: u8,
    /// The raw TYPE code; see [`Holder::kind`].
    pub type_code: u8,
}

impl Holder {
    /// The type, or `None` for a reserved code.
    #[must_use]
    pub const fn kind(&self) -> Option<Type> {
        Type::from_code(self.type_code)
    }
}

/// The READ RESERVATION answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// PRGENERATION.
    pub generation: u32,
    /// The reservation, `None` when there is none.
    pub holder: Option<Holder>,
}

impl Reservation {
    /// Parses a READ RESERVATION answer: generation at 0..4, additional length at 4..8 (0:
    /// no reservation, 16: one), then key at 8..16 and scope/type in byte 21.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] when the header or the announced reservation is cut
    /// short; [`ParseError::BadLength`] for an additional length that is neither 0 nor at
    /// least 16. Never panics.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < 8 {
            return Err(ParseError::Truncated {
                len: buf.len(),
                need: 8,
            });
        }
        let generation = be32(buf, 0);
        let additional_len = be32(buf, 4);
        if additional_len == 0 {
            return Ok(Self {
                generation,
                holder: None,
            });
        }
        if additional_len < 16 {
            return Err(ParseError::BadLength {
                value: additional_len,
            });
        }
        if buf.len() < 24 {
            return Err(ParseError::Truncated {
                len: buf.len(),
                need: 24,
            });
        }
        Ok(Self {
            generation,
            holder: Some(Holder {
                key: be64(buf, 8),
                scope: buf[21] >> 4,
                type_code: buf[21] & 0x0f,
            }),
        })
    }
}

/// The REPORT CAPABILITIES answer (an optional service action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // one flag per SPC bit
pub struct Capabilities {
    /// RLR_C: REPLACE LOST RESERVATION supported (SPC-5).
    pub replace_lost_reservation: bool,
    /// CRH: compatible reservation handling (SPC-2 RESERVE/RELEASE interplay).
    pub compatible_reservation_handling: bool,
    /// SIP_C: SPEC_I_PT supported.
    pub specify_initiator_ports: bool,
    /// ATP_C: ALL_TG_PT supported.
    pub all_target_ports: bool,
    /// PTPL_C: APTPL supported.
    pub persist_through_power_loss: bool,
    /// TMV: the type mask is valid.
    pub type_mask_valid: bool,
    /// ALLOW COMMANDS (3 bits).
    pub allow_commands: u8,
    /// PTPL_A: persist through power loss is active.
    pub persist_through_power_loss_active: bool,
    /// The persistent reservation type mask, bytes 4..6 big-endian.
    pub type_mask: u16,
}

impl Capabilities {
    /// Parses a REPORT CAPABILITIES answer: length at 0..2 (8), flags in bytes 2 and 3, the
    /// type mask in bytes 4..6.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] under 6 bytes; [`ParseError::BadLength`] for a length
    /// field under 6. Never panics.
    pub fn parse(buf: &[u8]) -> Result<Self, ParseError> {
        if buf.len() < 6 {
            return Err(ParseError::Truncated {
                len: buf.len(),
                need: 6,
            });
        }
        let length = u16::from_be_bytes([buf[0], buf[1]]);
        if length < 6 {
            return Err(ParseError::BadLength {
                value: u32::from(length),
            });
        }
        let (b2, b3) = (buf[2], buf[3]);
        Ok(Self {
            replace_lost_reservation: b2 & 0x80 != 0,
            compatible_reservation_handling: b2 & 0x10 != 0,
            specify_initiator_ports: b2 & 0x08 != 0,
            all_target_ports: b2 & 0x04 != 0,
            persist_through_power_loss: b2 & 0x01 != 0,
            type_mask_valid: b3 & 0x80 != 0,
            allow_commands: (b3 >> 4) & 0x07,
            persist_through_power_loss_active: b3 & 0x01 != 0,
            type_mask: u16::from_be_bytes([buf[4], buf[5]]),
        })
    }

    /// Whether the device supports reservations of `kind`; `None` when the type mask is
    /// not valid (the device does not say).
    #[must_use]
    pub const fn supports(&self, kind: Type) -> Option<bool> {
        if !self.type_mask_valid {
            return None;
        }
        // Byte 4: WR_EX_AR bit 7, EX_AC_RO 6, WR_EX_RO 5, EX_AC 3, WR_EX 1; byte 5:
        // EX_AC_AR bit 0.
        let bit: u16 = match kind {
            Type::WriteExclusiveAllRegistrants => 0x8000,
            Type::ExclusiveAccessRegistrantsOnly => 0x4000,
            Type::WriteExclusiveRegistrantsOnly => 0x2000,
            Type::ExclusiveAccess => 0x0800,
            Type::WriteExclusive => 0x0200,
            Type::ExclusiveAccessAllRegistrants => 0x0001,
        };
        Some(self.type_mask & bit != 0)
    }
}

// ----- status and sense ------------------------------------------------------------------

/// The SCSI status byte (SAM-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 00h.
    Good,
    /// 02h: sense data describes the error.
    CheckCondition,
    /// 04h.
    ConditionMet,
    /// 08h: the logical unit is busy; retry later.
    Busy,
    /// 18h: a reservation forbids this command to this I_T nexus.
    ReservationConflict,
    /// 28h: the task set is full; retry later.
    TaskSetFull,
    /// 30h.
    AcaActive,
    /// 40h.
    TaskAborted,
    /// Any other value.
    Other(u8),
}

impl Status {
    /// The status for a status byte.
    #[must_use]
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::Good,
            0x02 => Self::CheckCondition,
            0x04 => Self::ConditionMet,
            0x08 => Self::Busy,
            0x18 => Self::ReservationConflict,
            0x28 => Self::TaskSetFull,
            0x30 => Self::AcaActive,
            0x40 => Self::TaskAborted,
            other => Self::Other(other),
        }
    }
}

/// Sense keys (SPC-4 table "Sense key descriptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseKey {
    /// 0h.
    NoSense,
    /// 1h: the command completed after recovery.
    RecoveredError,
    /// 2h.
    NotReady,
    /// 3h.
    MediumError,
    /// 4h.
    HardwareError,
    /// 5h.
    IllegalRequest,
    /// 6h.
    UnitAttention,
    /// 7h.
    DataProtect,
    /// 8h.
    BlankCheck,
    /// 9h.
    VendorSpecific,
    /// Ah.
    CopyAborted,
    /// Bh.
    AbortedCommand,
    /// Ch (reserved).
    Reserved,
    /// Dh.
    VolumeOverflow,
    /// Eh.
    Miscompare,
    /// Fh.
    Completed,
}

impl SenseKey {
    /// The key for the low 4 bits of `b`.
    #[must_use]
    pub const fn from_nibble(b: u8) -> Self {
        match b & 0x0f {
            0x0 => Self::NoSense,
            0x1 => Self::RecoveredError,
            0x2 => Self::NotReady,
            0x3 => Self::MediumError,
            0x4 => Self::HardwareError,
            0x5 => Self::IllegalRequest,
            0x6 => Self::UnitAttention,
            0x7 => Self::DataProtect,
            0x8 => Self::BlankCheck,
            0x9 => Self::VendorSpecific,
            0xa => Self::CopyAborted,
            0xb => Self::AbortedCommand,
            0xc => Self::Reserved,
            0xd => Self::VolumeOverflow,
            0xe => Self::Miscompare,
            _ => Self::Completed,
        }
    }

    /// The name SPC gives the key.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoSense => "NO SENSE",
            Self::RecoveredError => "RECOVERED ERROR",
            Self::NotReady => "NOT READY",
            Self::MediumError => "MEDIUM ERROR",
            Self::HardwareError => "HARDWARE ERROR",
            Self::IllegalRequest => "ILLEGAL REQUEST",
            Self::UnitAttention => "UNIT ATTENTION",
            Self::DataProtect => "DATA PROTECT",
            Self::BlankCheck => "BLANK CHECK",
            Self::VendorSpecific => "VENDOR SPECIFIC",
            Self::CopyAborted => "COPY ABORTED",
            Self::AbortedCommand => "ABORTED COMMAND",
            Self::Reserved => "RESERVED",
            Self::VolumeOverflow => "VOLUME OVERFLOW",
            Self::Miscompare => "MISCOMPARE",
            Self::Completed => "COMPLETED",
        }
    }
}

/// The decisive part of sense data: key, additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// The response code (70h/71h fixed, 72h/73h descriptor).
    pub response_code: u8,
    /// The sense key.
    pub key: SenseKey,
    /// ADDITIONAL SENSE CODE (0 when the data stops before it).
    pub asc: u8,
    /// ADDITIONAL SENSE CODE QUALIFIER (0 when the data stops before it).
    pub ascq: u8,
}

impl Sense {
    /// Parses fixed-format (70h current, 71h deferred: key in byte 2, ASC/ASCQ in bytes 12
    /// and 13, present only when the additional sense length in byte 7 covers them) or
    /// descriptor-format (72h, 73h: key, ASC, ASCQ in bytes 1..4) sense data. The VALID
    /// bit (byte 0 bit 7) is ignored.
    ///
    /// Returns `None` for an empty buffer, a vendor-specific or unknown response code, or a
    /// buffer too short to hold the sense key. Never panics.
    #[must_use]
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let response_code = buf.first()? & 0x7f;
        match response_code {
            0x70 | 0x71 => {
                let key = SenseKey::from_nibble(*buf.get(2)?);
                let covered = 8 + usize::from(buf.get(7).copied().unwrap_or(0));
                let field = |i: usize| {
                    if i < covered {
                        buf.get(i).copied().unwrap_or(0)
                    } else {
                        0
                    }
                };
                Some(Self {
                    response_code,
                    key,
                    asc: field(12),
                    ascq: field(13),
                })
            }
            0x72 | 0x73 => Some(Self {
                response_code,
                key: SenseKey::from_nibble(*buf.get(1)?),
                asc: buf.get(2).copied().unwrap_or(0),
                ascq: buf.get(3).copied().unwrap_or(0),
            }),
            _ => None,
        }
    }

    /// Whether the data describes an earlier command (71h, 73h).
    #[must_use]
    pub const fn is_deferred(&self) -> bool {
        matches!(self.response_code, 0x71 | 0x73)
    }

    /// A description of the ASC/ASCQ pairs that matter here, `None` for others.
    #[must_use]
    pub const fn description(&self) -> Option<&'static str> {
        asc_text(self.asc, self.ascq)
    }
}

/// Text for the additional sense codes persistent reservations run into.
#[must_use]
pub const fn asc_text(asc: u8, ascq: u8) -> Option<&'static str> {
    Some(match (asc, ascq) {
        (0x00, 0x00) => "no additional sense information",
        (0x04, _) => "logical unit not ready",
        (0x1a, 0x00) => "parameter list length error",
        (0x20, 0x00) => "invalid command operation code",
        (0x24, 0x00) => "invalid field in CDB",
        (0x25, 0x00) => "logical unit not supported",
        (0x26, 0x00) => "invalid field in parameter list",
        (0x26, 0x04) => "invalid release of persistent reservation",
        (0x27, _) => "write protected",
        (0x28, 0x00) => "not ready to ready change, medium may have changed",
        (0x29, _) => "power on, reset, or bus device reset occurred",
        (0x2a, 0x03) => "reservations preempted",
        (0x2a, 0x04) => "reservations released",
        (0x2a, 0x05) => "registrations preempted",
        (0x2a, _) => "parameters changed",
        (0x2c, 0x00) => "command sequence error",
        (0x3a, _) => "medium not present",
        (0x3f, 0x0e) => "reported LUNs data has changed",
        (0x3f, _) => "target operating conditions have changed",
        (0x55, 0x02) => "insufficient reservation resources",
        (0x55, 0x03) => "insufficient resources",
        (0x55, 0x04) => "insufficient registration resources",
        _ => return None,
    })
}

// ----- errors ----------------------------------------------------------------------------

/// Why a device is not one persistent reservations can be used on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotScsi {
    /// A regular file, directory, FIFO...: not a device at all.
    NotADevice,
    /// A block or character device that refuses `SG_IO` with this errno (ENOTTY, EINVAL):
    /// a loop device, virtio-blk, NVMe, a device-mapper table that does not pass it on.
    NoSgIo(i32),
    /// An sg driver older than the v3 interface (version below 30000).
    OldSg(i32),
}

/// A persistent-reservation command that did not succeed. Small and `Copy`; the caller adds
/// the device name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    /// The device does not speak SCSI at all.
    NotScsi(NotScsi),
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE: the device does not implement
    /// persistent reservations (or this service action).
    NotSupported {
        /// ASC.
        asc: u8,
        /// ASCQ.
        ascq: u8,
    },
    /// Another ILLEGAL REQUEST (invalid field in CDB or parameter list, invalid release).
    IllegalRequest {
        /// ASC.
        asc: u8,
        /// ASCQ.
        ascq: u8,
    },
    /// RESERVATION CONFLICT: this nexus is not registered with the key given, or another
    /// nexus holds a conflicting reservation.
    Conflict,
    /// NOT READY.
    NotReady {
        /// ASC.
        asc: u8,
        /// ASCQ.
        ascq: u8,
    },
    /// UNIT ATTENTION (the command was not run; [`Pr`] retries once).
    UnitAttention {
        /// ASC.
        asc: u8,
        /// ASCQ.
        ascq: u8,
    },
    /// BUSY or TASK SET FULL (the status byte).
    Busy(u8),
    /// Another CHECK CONDITION; `None` when the device sent no usable sense data.
    Check(Option<Sense>),
    /// A status byte that is neither success nor one of the above.
    Status(u8),
    /// The command timed out (host or driver timeout).
    Timeout,
    /// The host adapter or driver failed the command (transport error, device gone).
    Transport {
        /// `host_status` of `sg_io_hdr` (DID_* code).
        host_status: u16,
        /// `driver_status` of `sg_io_hdr` (DRIVER_* code).
        driver_status: u16,
    },
    /// A system call failed with this errno (open, `SG_IO` itself).
    Io(i32),
    /// The device's answer could not be parsed.
    Malformed(ParseError),
}

impl PrError {
    /// Whether retrying the same command soon may succeed (UNIT ATTENTION, BUSY, TASK SET
    /// FULL, ABORTED COMMAND).
    #[must_use]
    pub const fn is_transient(&self) -> bool {
        match self {
            Self::UnitAttention { .. } | Self::Busy(_) => true,
            Self::Check(Some(s)) => matches!(s.key, SenseKey::AbortedCommand),
            _ => false,
        }
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

fn asc_suffix(f: &mut fmt::Formatter<'_>, asc: u8, ascq: u8) -> fmt::Result {
    write!(f, " (ASC/ASCQ {asc:02x}h/{ascq:02x}h")?;
    if let Some(t) = asc_text(asc, ascq) {
        write!(f, ": {t}")?;
    }
    write!(f, ")")
}

impl fmt::Display for NotScsi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotADevice => write!(f, "not a block or character device"),
            Self::NoSgIo(e) => write!(f, "SG_IO refused: {}", errno_text(e)),
            Self::OldSg(v) => write!(f, "sg driver version {v} lacks the v3 interface"),
        }
    }
}

impl fmt::Display for PrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotScsi(why) => write!(
                f,
                "this device does not support SCSI persistent reservations (not a SCSI \
                 device: {why})"
            ),
            Self::NotSupported { asc, ascq } => {
                write!(
                    f,
                    "the device does not support SCSI persistent reservations (ILLEGAL REQUEST"
                )?;
                asc_suffix(f, asc, ascq)?;
                write!(f, ")")
            }
            Self::IllegalRequest { asc, ascq } => {
                write!(f, "ILLEGAL REQUEST")?;
                asc_suffix(f, asc, ascq)
            }
            Self::Conflict => write!(f, "RESERVATION CONFLICT"),
            Self::NotReady { asc, ascq } => {
                write!(f, "device not ready")?;
                asc_suffix(f, asc, ascq)
            }
            Self::UnitAttention { asc, ascq } => {
                write!(f, "UNIT ATTENTION")?;
                asc_suffix(f, asc, ascq)
            }
            Self::Busy(s) => write!(f, "device busy (status {s:02x}h)"),
            Self::Check(None) => write!(f, "CHECK CONDITION without sense data"),
            Self::Check(Some(s)) => {
                write!(f, "CHECK CONDITION, {}", s.key.name())?;
                asc_suffix(f, s.asc, s.ascq)
            }
            Self::Status(s) => write!(f, "unexpected SCSI status {s:02x}h"),
            Self::Timeout => write!(f, "command timed out"),
            Self::Transport {
                host_status,
                driver_status,
            } => write!(
                f,
                "transport error (host status {host_status:#x}, driver status \
                 {driver_status:#x})"
            ),
            Self::Io(e) => write!(f, "{}", errno_text(e)),
            Self::Malformed(e) => write!(f, "malformed answer: {e}"),
        }
    }
}

impl std::error::Error for PrError {}

// ----- completions and transports --------------------------------------------------------

/// The data phase of a command.
#[derive(Debug)]
pub enum Dir<'a> {
    /// No data.
    None,
    /// Data to the device (a parameter list).
    ToDevice(&'a [u8]),
    /// Data from the device into this buffer (its length is the allocation length).
    FromDevice(&'a mut [u8]),
}

/// What a transport reports for a command that reached the device (or its driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The SCSI status byte.
    pub status: u8,
    /// `host_status` (0: DID_OK).
    pub host_status: u16,
    /// `driver_status` (0, or DRIVER_SENSE 08h when sense data is present).
    pub driver_status: u16,
    /// Sense data; the first `sense_len` bytes are valid.
    pub sense: [u8; SENSE_LEN],
    /// Bytes of sense data written.
    pub sense_len: usize,
    /// Bytes of data transferred from the device.
    pub data_len: usize,
}

/// `host_status` of a timed-out command (DID_TIME_OUT).
const DID_TIME_OUT: u16 = 0x03;
/// The low nibble of `driver_status`: DRIVER_TIMEOUT, and DRIVER_SENSE (no error by itself).
const DRIVER_TIMEOUT: u16 = 0x06;
const DRIVER_SENSE: u16 = 0x08;

impl Completion {
    /// A completion with this status and sense data and nothing else (tests, simulators).
    #[must_use]
    pub fn with_sense(status: u8, sense: &[u8]) -> Self {
        let mut buf = [0u8; SENSE_LEN];
        let n = sense.len().min(SENSE_LEN);
        buf[..n].copy_from_slice(&sense[..n]);
        Self {
            status,
            host_status: 0,
            driver_status: if n > 0 { DRIVER_SENSE } else { 0 },
            sense: buf,
            sense_len: n,
            data_len: 0,
        }
    }

    /// The parsed sense data, if any.
    #[must_use]
    pub fn sense(&self) -> Option<Sense> {
        Sense::parse(&self.sense[..self.sense_len.min(SENSE_LEN)])
    }

    /// Success, or the typed error. A transport failure wins over the status byte; GOOD,
    /// CONDITION MET and a CHECK CONDITION with RECOVERED ERROR are success.
    ///
    /// # Errors
    /// Every other outcome, as the matching [`PrError`]. Never panics.
    pub fn check(&self) -> Result<(), PrError> {
        if self.host_status == DID_TIME_OUT || self.driver_status & 0x0f == DRIVER_TIMEOUT {
            return Err(PrError::Timeout);
        }
        if self.host_status != 0 || (self.driver_status & 0x0f & !DRIVER_SENSE) != 0 {
            return Err(PrError::Transport {
                host_status: self.host_status,
                driver_status: self.driver_status,
            });
        }
        match Status::from_byte(self.status) {
            Status::Good | Status::ConditionMet => Ok(()),
            Status::ReservationConflict => Err(PrError::Conflict),
            Status::Busy | Status::TaskSetFull => Err(PrError::Busy(self.status)),
            Status::CheckCondition => {
                let Some(s) = self.sense() else {
                    return Err(PrError::Check(None));
                };
                let (asc, ascq) = (s.asc, s.ascq);
                match s.key {
                    SenseKey::RecoveredError => Ok(()),
                    SenseKey::IllegalRequest if (asc, ascq) == (0x20, 0x00) => {
                        Err(PrError::NotSupported { asc, ascq })
                    }
                    SenseKey::IllegalRequest => Err(PrError::IllegalRequest { asc, ascq }),
                    SenseKey::NotReady => Err(PrError::NotReady { asc, ascq }),
                    SenseKey::UnitAttention => Err(PrError::UnitAttention { asc, ascq }),
                    _ => Err(PrError::Check(Some(s))),
                }
            }
            Status::AcaActive | Status::TaskAborted | Status::Other(_) => {
                Err(PrError::Status(self.status))
            }
        }
    }
}

/// Something that runs a SCSI command: [`SgIo`] on Linux, a simulated target in tests.
pub trait Transport {
    /// Runs `cdb` with the data phase `dir` and reports how it ended.
    ///
    /// # Errors
    /// Only when the command could not be issued at all ([`PrError::Io`] with the errno);
    /// SCSI-level failures are in the returned [`Completion`].
    fn execute(&self, cdb: &[u8], dir: Dir<'_>, timeout_ms: u32) -> Result<Completion, PrError>;
}

/// The `SG_IO` transport over an open device.
#[derive(Debug)]
pub struct SgIo {
    file: File,
}

impl SgIo {
    /// Opens `path` read-only (PERSISTENT RESERVE OUT needs no write access, only
    /// `CAP_SYS_RAWIO`) and checks that it takes `SG_IO`.
    ///
    /// # Errors
    /// [`PrError::Io`] when it cannot be opened; [`PrError::NotScsi`] for a regular file,
    /// or a device that refuses `SG_GET_VERSION_NUM` (loop, virtio-blk, NVMe).
    pub fn open(path: &Path) -> Result<Self, PrError> {
        let file = File::open(path).map_err(|e| PrError::Io(e.raw_os_error().unwrap_or(0)))?;
        Self::from_file(file)
    }

    /// Wraps an open device (for example the one a driver already holds), with the same
    /// checks as [`SgIo::open`].
    ///
    /// # Errors
    /// As [`SgIo::open`].
    pub fn from_file(file: File) -> Result<Self, PrError> {
        let ft = file
            .metadata()
            .map_err(|e| PrError::Io(e.raw_os_error().unwrap_or(0)))?
            .file_type();
        if !ft.is_block_device() && !ft.is_char_device() {
            return Err(PrError::NotScsi(NotScsi::NotADevice));
        }
        match sgio::version(file.as_fd()) {
            Ok(v) if v < 30000 => Err(PrError::NotScsi(NotScsi::OldSg(v))),
            Ok(_) => Ok(Self { file }),
            Err(e) => Err(classify_ioctl_errno(e.raw_os_error())),
        }
    }
}

/// `ENOTTY` and `EINVAL` on the SG ioctls mean "no SCSI here"; other errnos are I/O errors.
fn classify_ioctl_errno(errno: i32) -> PrError {
    if errno == rustix::io::Errno::NOTTY.raw_os_error()
        || errno == rustix::io::Errno::INVAL.raw_os_error()
        || errno == rustix::io::Errno::OPNOTSUPP.raw_os_error()
    {
        PrError::NotScsi(NotScsi::NoSgIo(errno))
    } else {
        PrError::Io(errno)
    }
}

impl Transport for SgIo {
    fn execute(&self, cdb: &[u8], dir: Dir<'_>, timeout_ms: u32) -> Result<Completion, PrError> {
        sgio::execute(self.file.as_fd(), cdb, dir, timeout_ms)
            .map_err(|e| classify_ioctl_errno(e.raw_os_error()))
    }
}

// ----- the handle ------------------------------------------------------------------------

/// Default command timeout.
pub const DEFAULT_TIMEOUT_MS: u32 = 20_000;
/// First READ KEYS allocation: the header and 64 keys; larger lists are read again with
/// the announced length.
const KEYS_ALLOC: u16 = 8 + 64 * 8;

/// Persistent-reservation commands on one device (one I_T nexus).
#[derive(Debug)]
pub struct Pr<T = SgIo> {
    transport: T,
    timeout_ms: u32,
}

impl Pr<SgIo> {
    /// Opens a SCSI device through `SG_IO`.
    ///
    /// # Errors
    /// As [`SgIo::open`]; in particular [`PrError::NotScsi`] for files, loop devices,
    /// virtio-blk and NVMe.
    pub fn open(path: &Path) -> Result<Self, PrError> {
        Ok(Self::new(SgIo::open(path)?))
    }
}

impl<T: Transport> Pr<T> {
    /// A handle over any transport, with [`DEFAULT_TIMEOUT_MS`].
    #[must_use]
    pub const fn new(transport: T) -> Self {
        Self {
            transport,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Sets the per-command timeout.
    pub const fn set_timeout_ms(&mut self, timeout_ms: u32) {
        self.timeout_ms = timeout_ms;
    }

    /// The transport.
    #[must_use]
    pub const fn transport(&self) -> &T {
        &self.transport
    }

    /// Runs one PERSISTENT RESERVE IN into `buf` and returns the bytes received. A UNIT
    /// ATTENTION is retried once.
    fn run_in(&self, action: InAction, buf: &mut [u8]) -> Result<usize, PrError> {
        let alloc = u16::try_from(buf.len()).unwrap_or(u16::MAX);
        let buf = &mut buf[..usize::from(alloc)];
        let cdb = in_cdb(action, alloc);
        let mut retried = false;
        loop {
            buf.fill(0);
            let c = self
                .transport
                .execute(&cdb, Dir::FromDevice(buf), self.timeout_ms)?;
            match c.check() {
                Ok(()) => return Ok(c.data_len.min(buf.len())),
                Err(PrError::UnitAttention { .. }) if !retried => retried = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one PERSISTENT RESERVE OUT. A UNIT ATTENTION (which means the command was not
    /// run) is retried once.
    ///
    /// # Errors
    /// The typed error of the command.
    pub fn run_out(&self, cmd: &OutCommand) -> Result<(), PrError> {
        let mut retried = false;
        loop {
            let c =
                self.transport
                    .execute(&cmd.cdb, Dir::ToDevice(&cmd.params), self.timeout_ms)?;
            match c.check() {
                Err(PrError::UnitAttention { .. }) if !retried => retried = true,
                r => return r,
            }
        }
    }

    /// READ KEYS: the generation and every registered key (all of them: a list longer than
    /// the first allocation is read again at its announced length, up to 65535 bytes).
    ///
    /// # Errors
    /// The command's error, or [`PrError::Malformed`].
    pub fn read_keys(&self) -> Result<Keys, PrError> {
        let mut buf = vec![0u8; usize::from(KEYS_ALLOC)];
        let n = self.run_in(InAction::ReadKeys, &mut buf)?;
        let keys = Keys::parse(&buf[..n]).map_err(PrError::Malformed)?;
        if !keys.truncated {
            return Ok(keys);
        }
        let want = usize::try_from(keys.additional_len)
            .unwrap_or(usize::MAX)
            .saturating_add(8)
            .min(usize::from(u16::MAX));
        let mut buf = vec![0u8; want];
        let n = self.run_in(InAction::ReadKeys, &mut buf)?;
        Keys::parse(&buf[..n]).map_err(PrError::Malformed)
    }

    /// READ RESERVATION.
    ///
    /// # Errors
    /// The command's error, or [`PrError::Malformed`].
    pub fn read_reservation(&self) -> Result<Reservation, PrError> {
        let mut buf = [0u8; 24];
        let n = self.run_in(InAction::ReadReservation, &mut buf)?;
        Reservation::parse(&buf[..n]).map_err(PrError::Malformed)
    }

    /// REPORT CAPABILITIES (optional in SPC: an older device answers
    /// [`PrError::IllegalRequest`]).
    ///
    /// # Errors
    /// The command's error, or [`PrError::Malformed`].
    pub fn report_capabilities(&self) -> Result<Capabilities, PrError> {
        let mut buf = [0u8; 8];
        let n = self.run_in(InAction::ReportCapabilities, &mut buf)?;
        Capabilities::parse(&buf[..n]).map_err(PrError::Malformed)
    }

    /// Registers `key` on this nexus, replacing whatever it had (REGISTER AND IGNORE
    /// EXISTING KEY): idempotent.
    ///
    /// # Errors
    /// The command's error; [`PrError::NotSupported`] on a device without persistent
    /// reservations.
    pub fn register(&self, key: u64) -> Result<(), PrError> {
        self.run_out(&OutCommand::register_ignore(key))
    }

    /// Removes this nexus's registration, whatever its key (REGISTER AND IGNORE EXISTING
    /// KEY with a new key of 0): idempotent, a no-op when it is not registered. If this
    /// nexus held a registrants-only reservation, the device releases it. `key` is what the
    /// caller believes is registered; SPC ignores it for this service action, so it is
    /// only sent for the target's logs.
    ///
    /// # Errors
    /// The command's error.
    pub fn unregister(&self, key: u64) -> Result<(), PrError> {
        let p = OutParams {
            key,
            ..OutParams::default()
        };
        self.run_out(&OutCommand::new(
            OutAction::RegisterAndIgnoreExistingKey,
            None,
            &p,
        ))
    }

    /// RESERVE with the registered `key`. Idempotent: SPC answers GOOD when this nexus
    /// already holds a reservation of this type.
    ///
    /// # Errors
    /// [`PrError::Conflict`] when another nexus holds a reservation, or `key` is not this
    /// nexus's registered key.
    pub fn reserve(&self, key: u64, kind: Type) -> Result<(), PrError> {
        self.run_out(&OutCommand::reserve(key, kind))
    }

    /// RELEASE a reservation of type `kind` held with `key`. Idempotent: GOOD when there is
    /// no reservation or another nexus holds it.
    ///
    /// # Errors
    /// [`PrError::Conflict`] when this nexus is not registered with `key`;
    /// [`PrError::IllegalRequest`] (26h/04h) when it holds a reservation of another type.
    pub fn release(&self, key: u64, kind: Type) -> Result<(), PrError> {
        self.run_out(&OutCommand::release(key, kind))
    }

    /// PREEMPT: remove every registration of `victim` and, if `victim` holds the
    /// reservation, take it over as type `kind`.
    ///
    /// # Errors
    /// [`PrError::Conflict`] when this nexus is not registered with `own_key`, or no nexus
    /// is registered with `victim`.
    pub fn preempt(&self, own_key: u64, victim: u64, kind: Type) -> Result<(), PrError> {
        self.run_out(&OutCommand::preempt(own_key, victim, kind))
    }

    /// PREEMPT AND ABORT: [`Pr::preempt`], and the commands the victim still has queued at
    /// the target are aborted (a write the old owner issued before the takeover cannot land
    /// after it).
    ///
    /// # Errors
    /// As [`Pr::preempt`].
    pub fn preempt_and_abort(&self, own_key: u64, victim: u64, kind: Type) -> Result<(), PrError> {
        self.run_out(&OutCommand::preempt_and_abort(own_key, victim, kind))
    }

    /// CLEAR: remove every registration and the reservation (this nexus must be registered
    /// with `key`). Not used by the fencing procedure; for operators.
    ///
    /// # Errors
    /// The command's error.
    pub fn clear(&self, key: u64) -> Result<(), PrError> {
        self.run_out(&OutCommand::clear(key))
    }
}

// ----- the fencing procedure -------------------------------------------------------------

/// A fencing step that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceError {
    /// The own key is 0, or not an mmp key (hostid 0).
    BadKey(u64),
    /// A command failed.
    Command {
        /// Which command ("READ KEYS", "RESERVE", ...).
        step: &'static str,
        /// Its error.
        error: PrError,
    },
    /// A key that is neither an mmp key nor the named previous owner's holds the
    /// reservation or is registered: some other software uses persistent reservations on
    /// this device, and mmp does not preempt it.
    ForeignKey(u64),
    /// Our registration disappeared while acquiring: another host preempted us.
    Preempted {
        /// The reservation holder seen then, if any.
        holder: Option<u64>,
    },
    /// The reservation could not be settled in the bounded number of rounds (other hosts
    /// keep changing it).
    NotSettled {
        /// The last holder seen.
        holder: Option<u64>,
    },
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadKey(k) => write!(f, "reservation key {k:#018x} is not a valid mmp key"),
            Self::Command { step, error } => write!(f, "{step}: {error}"),
            Self::ForeignKey(k) => write!(
                f,
                "reservation key {k:#018x} is not an mmp key: other software uses persistent \
                 reservations on this device; refusing to preempt it"
            ),
            Self::Preempted { holder } => {
                write!(f, "our registration was removed by another host")?;
                show_holder(f, holder)
            }
            Self::NotSettled { holder } => {
                write!(f, "the reservation kept changing")?;
                show_holder(f, holder)
            }
        }
    }
}

fn show_holder(f: &mut fmt::Formatter<'_>, holder: Option<u64>) -> fmt::Result {
    match holder {
        Some(k) => write!(f, " (holder {k:#018x})"),
        None => write!(f, " (no reservation)"),
    }
}

impl std::error::Error for FenceError {}

/// What [`fence_acquire`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acquired {
    /// The generation after the last change.
    pub generation: u32,
    /// The key whose reservation was preempted, if another key held one.
    pub took_over: Option<u64>,
    /// Every key whose registrations were removed (the holder's first).
    pub removed: Vec<u64>,
    /// The reservation was already ours of the right type (a repeated call).
    pub already_held: bool,
}

/// What [`fence_release`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// We held the reservation and released it.
    pub released_reservation: bool,
    /// Our key was registered before the unregister.
    pub was_registered: bool,
}

/// Rounds of [`fence_acquire`] before it gives up on a device that keeps changing.
const ACQUIRE_ROUNDS: u32 = 6;

fn step<R>(step: &'static str, r: Result<R, PrError>) -> Result<R, FenceError> {
    r.map_err(|error| FenceError::Command { step, error })
}

fn check_own_key(own_key: u64) -> Result<(), FenceError> {
    if hostid_for_key(own_key).is_none() {
        return Err(FenceError::BadKey(own_key));
    }
    Ok(())
}

/// Registers `own_key` on this nexus (REGISTER AND IGNORE EXISTING KEY; idempotent).
///
/// Call it after the MMP activity test proved the device unused and *before* the MMP claim
/// write when the MMP block lives on a reserved LUN: under a registrants-only reservation a
/// crashed owner may still hold, a registered host can write its claim, an unregistered one
/// gets RESERVATION CONFLICT. A contender that then loses the claim calls
/// [`fence_hand_over`] (the winner's [`fence_acquire`] removes its key anyway).
///
/// # Errors
/// [`FenceError::BadKey`] for a key that is not an mmp key; [`FenceError::Command`] with
/// the device's error ([`PrError::NotScsi`], [`PrError::NotSupported`], ...).
pub fn fence_prepare<T: Transport>(pr: &Pr<T>, own_key: u64) -> Result<(), FenceError> {
    check_own_key(own_key)?;
    step(
        OutAction::RegisterAndIgnoreExistingKey.name(),
        pr.register(own_key),
    )
}

/// Makes this host the only registrant and the holder of a [`FENCE_TYPE`] reservation:
/// register `own_key` (idempotent), then reserve, or preempt (PREEMPT AND ABORT, falling back
/// to PREEMPT) the key holding the reservation, then remove every other registration
/// (registrants may write under this type), then verify.
///
/// **Call it only after the MMP activity test and claim succeeded and were verified**: it
/// takes the device from whoever holds it, and only MMP proves that holder is gone.
///
/// Only mmp keys ([`hostid_for_key`] is `Some`) and `previous_owner_key` (the key of the
/// owner the MMP block named, when the caller knows it) are preempted; any other key means
/// other software uses reservations here, and the call fails with
/// [`FenceError::ForeignKey`] before preempting it.
///
/// Idempotent: a second call finds the reservation held and reports `already_held`.
///
/// # Errors
/// [`FenceError::BadKey`], [`FenceError::ForeignKey`], [`FenceError::Preempted`] (our
/// registration vanished: another host is acquiring too, which MMP should have prevented),
/// [`FenceError::NotSettled`], or [`FenceError::Command`] with the device's error.
pub fn fence_acquire<T: Transport>(
    pr: &Pr<T>,
    own_key: u64,
    previous_owner_key: Option<u64>,
) -> Result<Acquired, FenceError> {
    check_own_key(own_key)?;
    let may_preempt = |k: u64| -> Result<(), FenceError> {
        if hostid_for_key(k).is_some() || Some(k) == previous_owner_key {
            Ok(())
        } else {
            Err(FenceError::ForeignKey(k))
        }
    };
    let mut out = Acquired::default();
    let mut changed = false;
    step("REGISTER AND IGNORE EXISTING KEY", pr.register(own_key))?;
    let mut last_holder = None;
    for _ in 0..ACQUIRE_ROUNDS {
        let res = step("READ RESERVATION", pr.read_reservation())?;
        last_holder = res.holder.map(|h| h.key);
        let keys = step("READ KEYS", pr.read_keys())?;
        if !keys.contains(own_key) {
            return Err(FenceError::Preempted {
                holder: last_holder,
            });
        }
        match res.holder {
            Some(h) if h.key == own_key && h.kind() == Some(FENCE_TYPE) => {}
            Some(h) if h.key == own_key => {
                // Ours, of another type: release, and reserve in the next round.
                match pr.release(own_key, h.kind().unwrap_or(FENCE_TYPE)) {
                    Ok(()) | Err(PrError::Conflict) => {}
                    Err(e) => return step("RELEASE", Err(e)),
                }
                changed = true;
                continue;
            }
            Some(h) => {
                // Another key holds it (key 0: an all-registrants type, held by everyone):
                // preempt each registrant below instead.
                if h.key != 0 {
                    may_preempt(h.key)?;
                    match preempt(pr, own_key, h.key) {
                        Ok(()) => {
                            out.took_over = Some(h.key);
                            out.removed.push(h.key);
                        }
                        // It changed under us (released, unregistered): look again.
                        Err(PrError::Conflict) => {}
                        Err(e) => return step("PREEMPT", Err(e)),
                    }
                    changed = true;
                    continue;
                }
            }
            None => {
                match pr.reserve(own_key, FENCE_TYPE) {
                    Ok(()) | Err(PrError::Conflict) => {}
                    Err(e) => return step("RESERVE", Err(e)),
                }
                changed = true;
                continue;
            }
        }
        // We hold it (or nobody in particular does): remove every other registrant.
        let others: Vec<u64> = keys
            .distinct()
            .into_iter()
            .filter(|&k| k != own_key)
            .collect();
        if others.is_empty() {
            if res.holder.is_some_and(|h| h.key == own_key) {
                out.generation = res.generation;
                out.already_held = !changed;
                return Ok(out);
            }
            // An all-registrants reservation with only us left: release it, reserve ours.
            if let Some(h) = res.holder {
                match pr.release(own_key, h.kind().unwrap_or(FENCE_TYPE)) {
                    Ok(()) | Err(PrError::Conflict) => {}
                    Err(e) => return step("RELEASE", Err(e)),
                }
            }
            changed = true;
            continue;
        }
        for k in others {
            may_preempt(k)?;
            match preempt(pr, own_key, k) {
                Ok(()) => out.removed.push(k),
                Err(PrError::Conflict) => {}
                Err(e) => return step("PREEMPT", Err(e)),
            }
        }
        changed = true;
    }
    Err(FenceError::NotSettled {
        holder: last_holder,
    })
}

/// PREEMPT AND ABORT, or PREEMPT on a device that does not implement the former.
fn preempt<T: Transport>(pr: &Pr<T>, own_key: u64, victim: u64) -> Result<(), PrError> {
    match pr.preempt_and_abort(own_key, victim, FENCE_TYPE) {
        Err(PrError::NotSupported { .. } | PrError::IllegalRequest { .. }) => {
            pr.preempt(own_key, victim, FENCE_TYPE)
        }
        r => r,
    }
}

/// Gives the device up: RELEASE our reservation if we hold one, then unregister our key
/// (REGISTER AND IGNORE EXISTING KEY with key 0). Idempotent; a host that was preempted
/// meanwhile gets RESERVATION CONFLICT on the release, which is ignored (there is nothing
/// left to give up).
///
/// Not a hold's step: a hold ends with [`fence_hand_over`], which keeps the reservation for
/// the next owner to preempt. This is for an administrator who hands the device to software
/// that does not use reservations (`mmp pr --release`), once no mmp hold uses it.
///
/// # Errors
/// [`FenceError::BadKey`], or [`FenceError::Command`] with the device's error.
pub fn fence_release<T: Transport>(pr: &Pr<T>, own_key: u64) -> Result<Released, FenceError> {
    check_own_key(own_key)?;
    let mut out = Released::default();
    let res = step("READ RESERVATION", pr.read_reservation())?;
    if let Some(h) = res.holder.filter(|h| h.key == own_key) {
        match pr.release(own_key, h.kind().unwrap_or(FENCE_TYPE)) {
            Ok(()) => out.released_reservation = true,
            Err(PrError::Conflict) => {}
            Err(e) => return step("RELEASE", Err(e)),
        }
    }
    let keys = step("READ KEYS", pr.read_keys())?;
    out.was_registered = keys.contains(own_key);
    step("REGISTER AND IGNORE EXISTING KEY", pr.unregister(own_key))?;
    Ok(out)
}

/// What [`fence_hand_over`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandedOver {
    /// We hold the reservation and kept it (with our registration) for the next owner to
    /// preempt.
    pub kept_reservation: bool,
    /// We did not hold the reservation, and our registration (if any) was removed.
    pub unregistered: bool,
}

/// Ends a hold's use of the device *without opening it to anyone*: where we hold the
/// reservation, keep it and our registration (the next owner preempts them after its MMP
/// acquire, exactly as after a crash); where we do not (a contender that lost, a host that
/// was preempted), remove our registration.
///
/// Why a clean release keeps the reservation: giving it back would open the LUN to every
/// host, among them one that was preempted earlier and still has a stale mount of the data
/// (a node frozen past a takeover, resumed, its file system not yet unmounted). Found in the
/// lab (`pacemaker-comeback-with-reservations`): the cluster moved the group back to the
/// resumed node, stopped it on the partner first, and the partner's release let the resumed
/// node's stale XFS write. [`fence_release`] gives the device up for good (`mmp pr
/// --release`: an administrator handing the LUN to software that does not use
/// reservations).
///
/// # Errors
/// [`FenceError::BadKey`], or [`FenceError::Command`] with the device's error.
pub fn fence_hand_over<T: Transport>(pr: &Pr<T>, own_key: u64) -> Result<HandedOver, FenceError> {
    check_own_key(own_key)?;
    let res = step("READ RESERVATION", pr.read_reservation())?;
    if res.holder.is_some_and(|h| h.key == own_key) {
        return Ok(HandedOver {
            kept_reservation: true,
            unregistered: false,
        });
    }
    step("REGISTER AND IGNORE EXISTING KEY", pr.unregister(own_key))?;
    Ok(HandedOver {
        kept_reservation: false,
        unregistered: true,
    })
}

// ----- a hold's fence: the procedure over every device it protects -----------------------

/// A fencing step that failed on one device of a [`Fence`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFenceError {
    /// The device, as the caller named it.
    pub device: String,
    /// What failed.
    pub error: FenceError,
}

impl fmt::Display for DeviceFenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.device, self.error)
    }
}

impl std::error::Error for DeviceFenceError {}

/// The persistent reservations of one hold (`mmp hold/run/mount --fence scsi-pr`): every
/// device it protects (the MMP devices and the data devices), one key for all of them, and
/// the order of `docs/protocol.md`, "Persistent reservations":
///
/// 1. [`Fence::open`] before anything is written: each device must take persistent
///    reservations (a clear error otherwise, and nothing is written anywhere);
/// 2. [`Fence::prepare`] (register, on the MMP devices only) before the MMP claim can be
///    written, so a claim on a LUN a crashed owner still reserves is not refused by the
///    storage; the data devices stay closed to this host until step 3;
/// 3. [`Fence::acquire`] once every MMP device is acquired (activity test passed, claim
///    verified) and before the data is used: reserve, preempt the previous owner, remove
///    every other registration;
/// 4. [`Fence::hand_over`] after the data is quiesced and before the MMP block is written
///    CLEAN, and when the acquire did not succeed: the reservations we hold stay (the next
///    owner preempts them), our other registrations go.
///
/// After a loss nothing is done: the reservation stays until the next owner preempts it,
/// so the storage keeps refusing everyone else meanwhile. [`Fence::release`] gives every
/// device up for good (an administrator's step, never a hold's).
#[derive(Debug)]
pub struct Fence<T: Transport = SgIo> {
    own_key: u64,
    /// The MMP devices first, then the data devices.
    devices: Vec<(String, Pr<T>)>,
    /// How many of `devices` are MMP devices (registered by [`Fence::prepare`]); the data
    /// devices get our key only in [`Fence::acquire`].
    mmp_devices: usize,
}

impl Fence<SgIo> {
    /// Opens every device through `SG_IO` and reads its registered keys, so a device that
    /// does not take persistent reservations is found before anything is written.
    ///
    /// # Errors
    /// [`FenceError::BadKey`] for hostid 0 (on the first device's name, or `"hostid"` when
    /// there is none); the first device that cannot be opened or read, with its error
    /// ([`PrError::NotScsi`] for files, loop devices, virtio-blk, NVMe; [`PrError::NotSupported`]
    /// for SCSI devices without persistent reservations).
    ///
    /// `mmp` are the MMP devices, `data` the data devices they protect (registered only
    /// once the MMP devices are acquired, [`Fence::acquire`]).
    pub fn open(
        mmp: &[(String, &Path)],
        data: &[(String, &Path)],
        hostid: u32,
    ) -> Result<Self, DeviceFenceError> {
        let first = mmp.first().map_or("hostid", |(n, _)| n.as_str());
        let own_key = key_for_hostid(hostid).ok_or_else(|| DeviceFenceError {
            device: first.to_owned(),
            error: FenceError::BadKey(0),
        })?;
        let mut prs = Vec::with_capacity(mmp.len() + data.len());
        for (name, path) in mmp.iter().chain(data) {
            let err = |step, error| DeviceFenceError {
                device: name.clone(),
                error: FenceError::Command { step, error },
            };
            let pr = Pr::open(path).map_err(|e| err("open for SG_IO", e))?;
            pr.read_keys().map_err(|e| err("READ KEYS", e))?;
            prs.push((name.clone(), pr));
        }
        let data = prs.split_off(mmp.len());
        Ok(Self::new(own_key, prs, data))
    }
}

impl<T: Transport> Fence<T> {
    /// A fence over already opened devices: the MMP devices and the data devices.
    #[must_use]
    pub fn new(own_key: u64, mmp: Vec<(String, Pr<T>)>, data: Vec<(String, Pr<T>)>) -> Self {
        let mmp_devices = mmp.len();
        let mut devices = mmp;
        devices.extend(data);
        Self {
            own_key,
            devices,
            mmp_devices,
        }
    }

    /// The key this host registers.
    #[must_use]
    pub const fn key(&self) -> u64 {
        self.own_key
    }

    /// The devices, by name.
    pub fn device_names(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|(n, _)| n.as_str())
    }

    fn each<R>(
        &self,
        mut f: impl FnMut(&Pr<T>) -> Result<R, FenceError>,
    ) -> Result<Vec<R>, DeviceFenceError> {
        self.devices
            .iter()
            .map(|(name, pr)| {
                f(pr).map_err(|error| DeviceFenceError {
                    device: name.clone(),
                    error,
                })
            })
            .collect()
    }

    /// Registers our key on every MMP device ([`fence_prepare`]), so that our claim can be
    /// written under a crashed owner's reservation. Not on the data devices: under a
    /// registrants-only reservation a registered host may write, and a host that has not
    /// acquired yet may still have a stale mount of the data (a node that was frozen past a
    /// takeover and comes back, while something starts a new acquire on it); the data
    /// devices get our key in [`Fence::acquire`], after the MMP acquire.
    ///
    /// # Errors
    /// The first device that failed.
    pub fn prepare(&self) -> Result<(), DeviceFenceError> {
        self.devices[..self.mmp_devices]
            .iter()
            .try_for_each(|(name, pr)| {
                fence_prepare(pr, self.own_key).map_err(|error| DeviceFenceError {
                    device: name.clone(),
                    error,
                })
            })
    }

    /// Takes every device's reservation ([`fence_acquire`]); call only after MMP acquired
    /// every MMP device. Returns what was done per device, in order.
    ///
    /// # Errors
    /// The first device that failed; devices before it keep our reservation (the caller
    /// then does not use the data and calls [`Fence::hand_over`]; the next owner's acquire
    /// preempts what we took).
    pub fn acquire(&self) -> Result<Vec<(String, Acquired)>, DeviceFenceError> {
        let got = self.each(|pr| fence_acquire(pr, self.own_key, None))?;
        Ok(self
            .devices
            .iter()
            .map(|(n, _)| n.clone())
            .zip(got)
            .collect())
    }

    /// Gives every device up for good ([`fence_release`]: release, unregister), trying all
    /// of them. Returns the devices that failed (empty when all went well). Not a hold's
    /// step (see [`Fence::hand_over`]).
    #[must_use]
    pub fn release(&self) -> Vec<DeviceFenceError> {
        self.devices
            .iter()
            .filter_map(|(name, pr)| {
                fence_release(pr, self.own_key)
                    .err()
                    .map(|error| DeviceFenceError {
                        device: name.clone(),
                        error,
                    })
            })
            .collect()
    }

    /// The end of a hold ([`fence_hand_over`] on every device, trying all of them): after a
    /// clean release (the data quiesced), or after an acquire that did not succeed (refused,
    /// interrupted, a partial [`Fence::acquire`]). Where we hold the reservation it stays
    /// until the next owner preempts it; elsewhere our registration goes. Returns the
    /// devices where we kept the reservation, and the devices that failed.
    #[must_use]
    pub fn hand_over(&self) -> (Vec<String>, Vec<DeviceFenceError>) {
        let mut kept = Vec::new();
        let mut failed = Vec::new();
        for (name, pr) in &self.devices {
            match fence_hand_over(pr, self.own_key) {
                Ok(h) if h.kept_reservation => kept.push(name.clone()),
                Ok(_) => {}
                Err(error) => failed.push(DeviceFenceError {
                    device: name.clone(),
                    error,
                }),
            }
        }
        (kept, failed)
    }
}
