//! Golden bytes for every CDB and parameter list built, every answer, status and sense code
//! parsed, and the fencing procedure against the simulated device server in `sim`.

use super::sim::{Nexus, Target};
use super::*;

const A: u64 = 0x6d6d_7000_0000_000a; // hostid 0xa
const B: u64 = 0x6d6d_7000_0000_000b; // hostid 0xb
const C: u64 = 0x6d6d_7000_0000_000c; // hostid 0xc
const FOREIGN: u64 = 0x0123_4567_89ab_cdef;

// ----- keys ----------------------------------------------------------------------------

#[test]
fn key_for_hostid_is_tag_and_hostid() {
    assert_eq!(key_for_hostid(0x1a2b_3c4d), Some(0x6d6d_7000_1a2b_3c4d));
    assert_eq!(key_for_hostid(1), Some(0x6d6d_7000_0000_0001));
    assert_eq!(key_for_hostid(u32::MAX), Some(0x6d6d_7000_ffff_ffff));
    assert_eq!(key_for_hostid(0), None);
    // The tag reads "mmp\0" in a hex dump.
    assert_eq!(&KEY_TAG.to_be_bytes(), b"mmp\0");
}

#[test]
fn hostid_for_key_decodes_only_mmp_keys() {
    assert_eq!(hostid_for_key(0x6d6d_7000_1a2b_3c4d), Some(0x1a2b_3c4d));
    assert_eq!(hostid_for_key(0x6d6d_7000_0000_0000), None);
    assert_eq!(hostid_for_key(0), None);
    assert_eq!(hostid_for_key(FOREIGN), None);
    assert_eq!(hostid_for_key(0x6d6d_7001_0000_0001), None);
    for h in [1u32, 0xa, 0xdead_beef, u32::MAX] {
        let k = key_for_hostid(h).unwrap();
        assert_ne!(k, 0);
        assert_eq!(hostid_for_key(k), Some(h));
    }
}

// ----- CDBs ----------------------------------------------------------------------------

#[test]
fn in_cdbs_golden() {
    assert_eq!(
        in_cdb(InAction::ReadKeys, 0x0208),
        [0x5e, 0x00, 0, 0, 0, 0, 0, 0x02, 0x08, 0]
    );
    assert_eq!(
        in_cdb(InAction::ReadReservation, 24),
        [0x5e, 0x01, 0, 0, 0, 0, 0, 0x00, 0x18, 0]
    );
    assert_eq!(
        in_cdb(InAction::ReportCapabilities, 8),
        [0x5e, 0x02, 0, 0, 0, 0, 0, 0x00, 0x08, 0]
    );
    assert_eq!(
        in_cdb(InAction::ReadKeys, u16::MAX),
        [0x5e, 0x00, 0, 0, 0, 0, 0, 0xff, 0xff, 0]
    );
}

/// The 24-byte parameter list with these keys and byte 20.
fn params(key: u64, sa: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa.to_be_bytes());
    p[20] = flags;
    p
}

#[test]
fn param_list_golden() {
    let p = OutParams {
        key: 0x0102_0304_0506_0708,
        service_action_key: 0x1112_1314_1516_1718,
        all_tg_pt: false,
        aptpl: false,
    };
    assert_eq!(
        p.emit(),
        [
            1, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0, 0, 0, 0, 0,
            0, 0, 0
        ]
    );
    let flags = |all_tg_pt, aptpl| {
        OutParams {
            all_tg_pt,
            aptpl,
            ..OutParams::default()
        }
        .emit()[20]
    };
    assert_eq!(flags(false, true), 0x01);
    assert_eq!(flags(true, false), 0x04);
    assert_eq!(flags(true, true), 0x05);
    assert_eq!(OutParams::default().emit(), [0u8; 24]);
}

#[test]
fn out_cdbs_golden() {
    // Opcode, service action, scope<<4 | type, reserved, parameter list length 24.
    let cdb = |sa: u8, ty: u8| [0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
    let cases: [(OutCommand, OutAction, [u8; 10], [u8; 24]); 7] = [
        (
            OutCommand::register(A, B),
            OutAction::Register,
            cdb(0x00, 0),
            params(A, B, 0),
        ),
        (
            OutCommand::register_ignore(A),
            OutAction::RegisterAndIgnoreExistingKey,
            cdb(0x06, 0),
            params(0, A, 0),
        ),
        (
            OutCommand::reserve(A, Type::WriteExclusiveRegistrantsOnly),
            OutAction::Reserve,
            cdb(0x01, 0x05),
            params(A, 0, 0),
        ),
        (
            OutCommand::release(A, Type::WriteExclusive),
            OutAction::Release,
            cdb(0x02, 0x01),
            params(A, 0, 0),
        ),
        (
            OutCommand::clear(A),
            OutAction::Clear,
            cdb(0x03, 0),
            params(A, 0, 0),
        ),
        (
            OutCommand::preempt(A, B, Type::WriteExclusiveRegistrantsOnly),
            OutAction::Preempt,
            cdb(0x04, 0x05),
            params(A, B, 0),
        ),
        (
            OutCommand::preempt_and_abort(A, B, Type::ExclusiveAccessAllRegistrants),
            OutAction::PreemptAndAbort,
            cdb(0x05, 0x08),
            params(A, B, 0),
        ),
    ];
    for (cmd, action, cdb, params) in cases {
        assert_eq!(cmd.action, action, "{action:?}");
        assert_eq!(cmd.cdb, cdb, "{action:?}");
        assert_eq!(cmd.params, params, "{action:?}");
    }
    // Unregister: REGISTER with the new key 0.
    assert_eq!(OutCommand::register(A, 0).params, params(A, 0, 0));
    assert_eq!(OutCommand::register_ignore(0).params, [0u8; 24]);
}

#[test]
fn out_cdb_with_flags_and_every_type() {
    let p = OutParams {
        key: 0,
        service_action_key: A,
        all_tg_pt: true,
        aptpl: true,
    };
    let c = OutCommand::new(OutAction::RegisterAndIgnoreExistingKey, None, &p);
    assert_eq!(c.cdb, [0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0]);
    assert_eq!(c.params, params(0, A, 0x05));
    for (t, code) in [
        (Type::WriteExclusive, 1),
        (Type::ExclusiveAccess, 3),
        (Type::WriteExclusiveRegistrantsOnly, 5),
        (Type::ExclusiveAccessRegistrantsOnly, 6),
        (Type::WriteExclusiveAllRegistrants, 7),
        (Type::ExclusiveAccessAllRegistrants, 8),
    ] {
        assert_eq!(OutCommand::reserve(A, t).cdb[2], code);
        assert_eq!(Type::from_code(code), Some(t));
        assert_eq!(t.code(), code);
    }
    for code in [0, 2, 4, 9, 0xf, 0x10, 0xff] {
        assert_eq!(Type::from_code(code), None, "{code}");
    }
}

#[test]
fn type_names() {
    assert_eq!(FENCE_TYPE, Type::WriteExclusiveRegistrantsOnly);
    assert_eq!(FENCE_TYPE.name(), "Write Exclusive, registrants only");
    assert_eq!(FENCE_TYPE.json_name(), "write_exclusive_registrants_only");
    assert!(Type::WriteExclusiveAllRegistrants.is_all_registrants());
    assert!(!FENCE_TYPE.is_all_registrants());
}

// ----- PERSISTENT RESERVE IN answers ---------------------------------------------------

#[test]
fn read_keys_golden() {
    let buf = [
        0x00, 0x00, 0x00, 0x07, // generation 7
        0x00, 0x00, 0x00, 0x10, // 16 bytes of keys
        0x6d, 0x6d, 0x70, 0x00, 0x1a, 0x2b, 0x3c, 0x4d, //
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
    ];
    let k = Keys::parse(&buf).unwrap();
    assert_eq!(k.generation, 7);
    assert_eq!(k.keys, vec![0x6d6d_7000_1a2b_3c4d, FOREIGN]);
    assert!(!k.truncated);
    assert_eq!(k.additional_len, 16);
    assert!(k.contains(FOREIGN));
    assert!(!k.contains(A));
}

#[test]
fn read_keys_empty_truncated_and_garbage() {
    let empty = Keys::parse(&[0, 0, 1, 0, 0, 0, 0, 0]).unwrap();
    assert_eq!(empty.generation, 0x100);
    assert!(empty.keys.is_empty());
    assert!(!empty.truncated);
    // More keys announced than delivered: whole keys kept, `truncated` set; a partial key
    // is dropped.
    let mut buf = vec![0, 0, 0, 1, 0, 0, 0, 0x18];
    buf.extend_from_slice(&A.to_be_bytes());
    buf.extend_from_slice(&[0x6d, 0x6d, 0x70]);
    let k = Keys::parse(&buf).unwrap();
    assert_eq!(k.keys, vec![A]);
    assert!(k.truncated);
    // Trailing bytes beyond the announced length are ignored.
    let mut buf = vec![0, 0, 0, 1, 0, 0, 0, 0x08];
    buf.extend_from_slice(&A.to_be_bytes());
    buf.extend_from_slice(&B.to_be_bytes());
    assert_eq!(Keys::parse(&buf).unwrap().keys, vec![A]);
    // Errors.
    for n in 0..8 {
        assert_eq!(
            Keys::parse(&[0u8; 8][..n]),
            Err(ParseError::Truncated { len: n, need: 8 })
        );
    }
    assert_eq!(
        Keys::parse(&[0, 0, 0, 0, 0, 0, 0, 5]),
        Err(ParseError::BadLength { value: 5 })
    );
    // A huge announced length on a short buffer.
    let k = Keys::parse(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf8]).unwrap();
    assert!(k.keys.is_empty() && k.truncated);
}

#[test]
fn keys_distinct_keeps_first_seen_order() {
    let k = Keys {
        generation: 0,
        keys: vec![B, A, B, A, C],
        truncated: false,
        additional_len: 40,
    };
    assert_eq!(k.distinct(), vec![B, A, C]);
}

#[test]
fn read_reservation_golden() {
    let none = [0, 0, 0, 3, 0, 0, 0, 0];
    assert_eq!(
        Reservation::parse(&none).unwrap(),
        Reservation {
            generation: 3,
            holder: None
        }
    );
    let held = [
        0x00, 0x00, 0x00, 0x09, // generation
        0x00, 0x00, 0x00, 0x10, // additional length 16
        0x6d, 0x6d, 0x70, 0x00, 0x1a, 0x2b, 0x3c, 0x4d, // key
        0x00, 0x00, 0x00, 0x00, // obsolete
        0x00, // reserved
        0x05, // scope 0, type 5
        0x00, 0x00, // obsolete
    ];
    let r = Reservation::parse(&held).unwrap();
    assert_eq!(r.generation, 9);
    let h = r.holder.unwrap();
    assert_eq!(h.key, 0x6d6d_7000_1a2b_3c4d);
    assert_eq!(h.scope, 0);
    assert_eq!(h.type_code, 5);
    assert_eq!(h.kind(), Some(Type::WriteExclusiveRegistrantsOnly));
    // Scope and a reserved type code pass through raw.
    let mut odd = held;
    odd[21] = 0x2f;
    let h = Reservation::parse(&odd).unwrap().holder.unwrap();
    assert_eq!((h.scope, h.type_code, h.kind()), (2, 0xf, None));
}

#[test]
fn read_reservation_truncated_and_garbage() {
    for n in 0..8 {
        assert_eq!(
            Reservation::parse(&[0u8; 8][..n]),
            Err(ParseError::Truncated { len: n, need: 8 })
        );
    }
    let mut held = [0u8; 24];
    held[7] = 0x10;
    for n in 8..24 {
        assert_eq!(
            Reservation::parse(&held[..n]),
            Err(ParseError::Truncated { len: n, need: 24 })
        );
    }
    for bad in [1u8, 8, 15] {
        assert_eq!(
            Reservation::parse(&[0, 0, 0, 0, 0, 0, 0, bad]),
            Err(ParseError::BadLength {
                value: u32::from(bad)
            })
        );
    }
}

#[test]
fn report_capabilities_golden() {
    // Length 8; RLR_C, CRH, SIP_C, ATP_C, PTPL_C; TMV, ALLOW COMMANDS 1, PTPL_A; every
    // type in the mask.
    let all = [0x00, 0x08, 0x9d, 0x91, 0xea, 0x01, 0, 0];
    let c = Capabilities::parse(&all).unwrap();
    assert!(c.replace_lost_reservation);
    assert!(c.compatible_reservation_handling);
    assert!(c.specify_initiator_ports);
    assert!(c.all_target_ports);
    assert!(c.persist_through_power_loss);
    assert!(c.type_mask_valid);
    assert_eq!(c.allow_commands, 1);
    assert!(c.persist_through_power_loss_active);
    assert_eq!(c.type_mask, 0xea01);
    for t in [
        Type::WriteExclusive,
        Type::ExclusiveAccess,
        Type::WriteExclusiveRegistrantsOnly,
        Type::ExclusiveAccessRegistrantsOnly,
        Type::WriteExclusiveAllRegistrants,
        Type::ExclusiveAccessAllRegistrants,
    ] {
        assert_eq!(c.supports(t), Some(true), "{t:?}");
    }
    // Only WR_EX_RO (byte 4 bit 5) and ATP_C.
    let one = [0x00, 0x08, 0x04, 0x80, 0x20, 0x00, 0, 0];
    let c = Capabilities::parse(&one).unwrap();
    assert!(c.all_target_ports && !c.persist_through_power_loss);
    assert!(!c.replace_lost_reservation && !c.specify_initiator_ports);
    assert_eq!(c.supports(Type::WriteExclusiveRegistrantsOnly), Some(true));
    assert_eq!(c.supports(Type::WriteExclusive), Some(false));
    assert_eq!(c.supports(Type::ExclusiveAccessAllRegistrants), Some(false));
    // TMV clear: the mask says nothing.
    let c = Capabilities::parse(&[0, 8, 0, 0x70, 0xff, 0xff, 0, 0]).unwrap();
    assert_eq!(c.allow_commands, 7);
    assert_eq!(c.supports(FENCE_TYPE), None);
}

#[test]
fn report_capabilities_truncated_and_garbage() {
    for n in 0..6 {
        assert_eq!(
            Capabilities::parse(&[0, 8, 0, 0, 0, 0][..n]),
            Err(ParseError::Truncated { len: n, need: 6 })
        );
    }
    assert_eq!(
        Capabilities::parse(&[0, 5, 0, 0, 0, 0, 0, 0]),
        Err(ParseError::BadLength { value: 5 })
    );
    // 6 bytes are enough for every field used.
    assert!(Capabilities::parse(&[0, 8, 0, 0, 0, 0]).is_ok());
}

/// Every parser on pseudo-random bytes of every length up to 80, and on each prefix of the
/// golden answers: no panic, and results consistent with the lengths.
#[test]
fn parsers_never_panic_on_any_bytes() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in 0..80 {
        for _ in 0..200 {
            let buf: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
            if let Ok(k) = Keys::parse(&buf) {
                assert!(k.keys.len() * 8 + 8 <= buf.len());
            }
            if let Ok(r) = Reservation::parse(&buf) {
                assert!(r.holder.is_none() || buf.len() >= 24);
            }
            let _ = Capabilities::parse(&buf);
            if let Some(s) = Sense::parse(&buf) {
                assert!(matches!(s.response_code, 0x70..=0x73));
            }
            let _ = Completion::with_sense(buf.first().copied().unwrap_or(0), &buf).check();
        }
    }
}

// ----- status and sense ----------------------------------------------------------------

#[test]
fn status_bytes() {
    for (b, s) in [
        (0x00, Status::Good),
        (0x02, Status::CheckCondition),
        (0x04, Status::ConditionMet),
        (0x08, Status::Busy),
        (0x18, Status::ReservationConflict),
        (0x28, Status::TaskSetFull),
        (0x30, Status::AcaActive),
        (0x40, Status::TaskAborted),
        (0x10, Status::Other(0x10)),
        (0xff, Status::Other(0xff)),
    ] {
        assert_eq!(Status::from_byte(b), s, "{b:#x}");
    }
}

/// Fixed-format sense data (18 bytes) with this response code, key, ASC and ASCQ.
fn fixed(code: u8, key: u8, asc: u8, ascq: u8) -> [u8; 18] {
    let mut s = [0u8; 18];
    s[0] = code;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

#[test]
fn sense_fixed_golden() {
    // ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE, with the VALID bit set.
    let s = Sense::parse(&fixed(0xf0, 0x05, 0x20, 0x00)).unwrap();
    assert_eq!(
        s,
        Sense {
            response_code: 0x70,
            key: SenseKey::IllegalRequest,
            asc: 0x20,
            ascq: 0
        }
    );
    assert!(!s.is_deferred());
    assert_eq!(s.description(), Some("invalid command operation code"));
    // Deferred UNIT ATTENTION, REGISTRATIONS PREEMPTED; the upper bits of byte 2
    // (FILEMARK, EOM, ILI) do not change the key.
    let s = Sense::parse(&fixed(0x71, 0xe6, 0x2a, 0x05)).unwrap();
    assert_eq!(
        (s.key, s.asc, s.ascq),
        (SenseKey::UnitAttention, 0x2a, 0x05)
    );
    assert!(s.is_deferred());
    assert_eq!(s.description(), Some("registrations preempted"));
}

#[test]
fn sense_descriptor_golden() {
    let s = Sense::parse(&[0x72, 0x02, 0x04, 0x01, 0, 0, 0, 0]).unwrap();
    assert_eq!(
        s,
        Sense {
            response_code: 0x72,
            key: SenseKey::NotReady,
            asc: 0x04,
            ascq: 0x01
        }
    );
    assert_eq!(s.description(), Some("logical unit not ready"));
    let s = Sense::parse(&[0x73, 0x06, 0x29, 0x00]).unwrap();
    assert!(s.is_deferred());
    assert_eq!(s.key, SenseKey::UnitAttention);
    // Short descriptor data: key only.
    let s = Sense::parse(&[0x72, 0x05]).unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::IllegalRequest, 0, 0));
}

#[test]
fn sense_truncated_and_garbage() {
    assert_eq!(Sense::parse(&[]), None);
    assert_eq!(Sense::parse(&[0x70]), None);
    assert_eq!(Sense::parse(&[0x70, 0]), None);
    assert_eq!(Sense::parse(&[0x72]), None);
    // Vendor-specific (7Fh) and other response codes.
    for code in [0x00, 0x7f, 0x74, 0x6f, 0xff] {
        assert_eq!(Sense::parse(&fixed(code, 5, 0x20, 0)), None, "{code:#x}");
    }
    // Fixed format cut before ASC: key known, ASC/ASCQ 0.
    let s = Sense::parse(&[0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0]).unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::UnitAttention, 0, 0));
    // An additional sense length that does not cover ASC: ASC/ASCQ are not trusted.
    let mut short = fixed(0x70, 0x05, 0x24, 0x00);
    short[7] = 4;
    let s = Sense::parse(&short).unwrap();
    assert_eq!((s.asc, s.ascq), (0, 0));
    // Covers ASC but not ASCQ.
    short[7] = 5;
    let s = Sense::parse(&short).unwrap();
    assert_eq!((s.asc, s.ascq), (0x24, 0));
}

#[test]
fn every_sense_key() {
    let names = [
        "NO SENSE",
        "RECOVERED ERROR",
        "NOT READY",
        "MEDIUM ERROR",
        "HARDWARE ERROR",
        "ILLEGAL REQUEST",
        "UNIT ATTENTION",
        "DATA PROTECT",
        "BLANK CHECK",
        "VENDOR SPECIFIC",
        "COPY ABORTED",
        "ABORTED COMMAND",
        "RESERVED",
        "VOLUME OVERFLOW",
        "MISCOMPARE",
        "COMPLETED",
    ];
    for (n, name) in (0u8..16).zip(names) {
        assert_eq!(SenseKey::from_nibble(n).name(), name);
        assert_eq!(SenseKey::from_nibble(n | 0xf0).name(), name);
    }
}

#[test]
fn asc_texts() {
    for (asc, ascq, t) in [
        (0x1a, 0x00, "parameter list length error"),
        (0x24, 0x00, "invalid field in CDB"),
        (0x25, 0x00, "logical unit not supported"),
        (0x26, 0x00, "invalid field in parameter list"),
        (0x26, 0x04, "invalid release of persistent reservation"),
        (0x29, 0x02, "power on, reset, or bus device reset occurred"),
        (0x2a, 0x03, "reservations preempted"),
        (0x2a, 0x04, "reservations released"),
        (0x2a, 0x05, "registrations preempted"),
        (0x3a, 0x00, "medium not present"),
        (0x55, 0x02, "insufficient reservation resources"),
        (0x55, 0x04, "insufficient registration resources"),
    ] {
        assert_eq!(asc_text(asc, ascq), Some(t), "{asc:#x}/{ascq:#x}");
    }
    assert_eq!(asc_text(0x80, 0x00), None);
}

// ----- completions into typed errors ---------------------------------------------------

fn check_sense(key: u8, asc: u8, ascq: u8) -> Result<(), PrError> {
    Completion::with_sense(0x02, &fixed(0x70, key, asc, ascq)).check()
}

#[test]
fn completion_status_to_error() {
    let st = |s: u8| Completion::with_sense(s, &[]).check();
    assert_eq!(st(0x00), Ok(()));
    assert_eq!(st(0x04), Ok(()));
    assert_eq!(st(0x18), Err(PrError::Conflict));
    assert_eq!(st(0x08), Err(PrError::Busy(0x08)));
    assert_eq!(st(0x28), Err(PrError::Busy(0x28)));
    assert_eq!(st(0x30), Err(PrError::Status(0x30)));
    assert_eq!(st(0x40), Err(PrError::Status(0x40)));
    assert_eq!(st(0x02), Err(PrError::Check(None)));
}

#[test]
fn completion_sense_to_error() {
    assert_eq!(
        check_sense(0x05, 0x20, 0x00),
        Err(PrError::NotSupported { asc: 0x20, ascq: 0 })
    );
    assert_eq!(
        check_sense(0x05, 0x24, 0x00),
        Err(PrError::IllegalRequest { asc: 0x24, ascq: 0 })
    );
    assert_eq!(
        check_sense(0x05, 0x26, 0x04),
        Err(PrError::IllegalRequest { asc: 0x26, ascq: 4 })
    );
    assert_eq!(
        check_sense(0x02, 0x04, 0x02),
        Err(PrError::NotReady { asc: 0x04, ascq: 2 })
    );
    assert_eq!(
        check_sense(0x06, 0x29, 0x00),
        Err(PrError::UnitAttention { asc: 0x29, ascq: 0 })
    );
    assert_eq!(check_sense(0x01, 0x17, 0x01), Ok(()));
    let e = check_sense(0x04, 0x44, 0x00).unwrap_err();
    assert!(matches!(e, PrError::Check(Some(s)) if s.key == SenseKey::HardwareError));
    let e = check_sense(0x0b, 0x47, 0x00).unwrap_err();
    assert!(e.is_transient());
    // Descriptor format classifies the same way.
    assert_eq!(
        Completion::with_sense(0x02, &[0x72, 0x05, 0x20, 0x00]).check(),
        Err(PrError::NotSupported { asc: 0x20, ascq: 0 })
    );
}

#[test]
fn completion_transport_errors_win() {
    let mut c = Completion::with_sense(0x00, &[]);
    c.host_status = 0x01; // DID_NO_CONNECT
    assert_eq!(
        c.check(),
        Err(PrError::Transport {
            host_status: 1,
            driver_status: 0
        })
    );
    c.host_status = 0x03; // DID_TIME_OUT
    assert_eq!(c.check(), Err(PrError::Timeout));
    let mut c = Completion::with_sense(0x18, &[]);
    c.driver_status = 0x06; // DRIVER_TIMEOUT
    assert_eq!(c.check(), Err(PrError::Timeout));
    c.driver_status = 0x04; // DRIVER_ERROR
    assert!(matches!(c.check(), Err(PrError::Transport { .. })));
    // DRIVER_SENSE alone is not an error.
    let c = Completion::with_sense(0x02, &fixed(0x70, 0x06, 0x2a, 0x03));
    assert_eq!(c.driver_status, 0x08);
    assert_eq!(
        c.check(),
        Err(PrError::UnitAttention { asc: 0x2a, ascq: 3 })
    );
}

#[test]
fn error_messages() {
    let not_scsi = PrError::NotScsi(NotScsi::NoSgIo(rustix::io::Errno::NOTTY.raw_os_error()));
    let m = not_scsi.to_string();
    assert!(
        m.starts_with(
            "this device does not support SCSI persistent reservations (not a SCSI device"
        ),
        "{m}"
    );
    assert!(m.contains("SG_IO refused"), "{m}");
    assert_eq!(
        PrError::NotScsi(NotScsi::NotADevice).to_string(),
        "this device does not support SCSI persistent reservations (not a SCSI device: not a \
         block or character device)"
    );
    assert_eq!(
        PrError::NotSupported { asc: 0x20, ascq: 0 }.to_string(),
        "the device does not support SCSI persistent reservations (ILLEGAL REQUEST (ASC/ASCQ \
         20h/00h: invalid command operation code))"
    );
    assert_eq!(PrError::Conflict.to_string(), "RESERVATION CONFLICT");
    assert_eq!(
        PrError::UnitAttention { asc: 0x2a, ascq: 5 }.to_string(),
        "UNIT ATTENTION (ASC/ASCQ 2ah/05h: registrations preempted)"
    );
    assert_eq!(
        PrError::IllegalRequest { asc: 0x99, ascq: 1 }.to_string(),
        "ILLEGAL REQUEST (ASC/ASCQ 99h/01h)"
    );
    assert_eq!(
        PrError::Malformed(ParseError::Truncated { len: 3, need: 8 }).to_string(),
        "malformed answer: answer truncated: 3 bytes, at least 8 needed"
    );
    assert_eq!(
        FenceError::ForeignKey(FOREIGN).to_string(),
        "reservation key 0x0123456789abcdef is not an mmp key: other software uses persistent \
         reservations on this device; refusing to preempt it"
    );
    assert_eq!(
        FenceError::Command {
            step: "RESERVE",
            error: PrError::Conflict
        }
        .to_string(),
        "RESERVE: RESERVATION CONFLICT"
    );
}

// ----- the SG_IO transport on things that are not SCSI ---------------------------------

fn is_not_scsi(r: Result<Pr, PrError>) -> NotScsi {
    match r {
        Err(PrError::NotScsi(why)) => why,
        other => panic!("expected NotScsi, got {other:?}"),
    }
}

#[test]
fn open_regular_file_is_not_scsi() {
    let dir = std::env::temp_dir().join(format!("mmp-pr-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("img");
    std::fs::write(&f, [0u8; 4096]).unwrap();
    assert_eq!(is_not_scsi(Pr::open(&f)), NotScsi::NotADevice);
    assert_eq!(is_not_scsi(Pr::open(&dir)), NotScsi::NotADevice);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_char_device_without_sg_is_not_scsi() {
    // /dev/null is a character device whose driver knows no SG ioctl.
    let why = is_not_scsi(Pr::open(Path::new("/dev/null")));
    assert!(matches!(why, NotScsi::NoSgIo(_)), "{why:?}");
}

#[test]
fn open_missing_path_is_io_error() {
    assert_eq!(
        Pr::open(Path::new("/nonexistent/mmp-pr")).unwrap_err(),
        PrError::Io(rustix::io::Errno::NOENT.raw_os_error())
    );
}

#[test]
fn ioctl_errnos_classified() {
    use rustix::io::Errno;
    for e in [Errno::NOTTY, Errno::INVAL, Errno::OPNOTSUPP] {
        assert_eq!(
            classify_ioctl_errno(e.raw_os_error()),
            PrError::NotScsi(NotScsi::NoSgIo(e.raw_os_error()))
        );
    }
    for e in [Errno::PERM, Errno::ACCESS, Errno::IO, Errno::NODEV] {
        assert_eq!(
            classify_ioctl_errno(e.raw_os_error()),
            PrError::Io(e.raw_os_error())
        );
    }
}

// ----- the handle and the fencing procedure on the simulated target --------------------

fn host(t: &std::rc::Rc<std::cell::RefCell<Target>>, id: usize) -> Pr<Nexus> {
    Pr::new(Nexus {
        target: t.clone(),
        id,
    })
}

#[test]
fn handle_commands_round_trip() {
    let t = Target::shared();
    let a = host(&t, 1);
    assert_eq!(a.read_keys().unwrap().keys, Vec::<u64>::new());
    assert_eq!(a.read_reservation().unwrap().holder, None);
    a.register(A).unwrap();
    a.register(A).unwrap(); // idempotent
    assert_eq!(a.read_keys().unwrap().keys, vec![A]);
    a.reserve(A, FENCE_TYPE).unwrap();
    a.reserve(A, FENCE_TYPE).unwrap(); // idempotent
    let h = a.read_reservation().unwrap().holder.unwrap();
    assert_eq!((h.key, h.kind()), (A, Some(FENCE_TYPE)));
    assert_eq!(
        a.release(A, Type::WriteExclusive),
        Err(PrError::IllegalRequest { asc: 0x26, ascq: 4 })
    );
    a.release(A, FENCE_TYPE).unwrap();
    a.release(A, FENCE_TYPE).unwrap(); // idempotent
    a.unregister(A).unwrap();
    a.unregister(A).unwrap(); // idempotent
    assert_eq!(a.release(A, FENCE_TYPE), Err(PrError::Conflict));
    assert!(a.read_keys().unwrap().keys.is_empty());
    let caps = a.report_capabilities().unwrap();
    assert_eq!(caps.supports(FENCE_TYPE), Some(true));
    a.register(A).unwrap();
    a.clear(A).unwrap();
    assert!(a.read_keys().unwrap().keys.is_empty());
}

#[test]
fn read_keys_rereads_a_long_list() {
    let t = Target::shared();
    for n in 0..100 {
        t.borrow_mut()
            .force_register(n, key_for_hostid(u32::try_from(n + 1).unwrap()).unwrap());
    }
    let k = host(&t, 0).read_keys().unwrap();
    assert_eq!(k.keys.len(), 100);
    assert!(!k.truncated);
}

#[test]
fn unit_attention_is_retried_once() {
    let t = Target::shared();
    let a = host(&t, 1);
    t.borrow_mut().add_ua(1, 0x29, 0x00);
    a.register(A).unwrap();
    t.borrow_mut().add_ua(1, 0x29, 0x00);
    assert_eq!(a.read_keys().unwrap().keys, vec![A]);
    // Two in a row: the second is reported.
    t.borrow_mut().add_ua(1, 0x29, 0x00);
    t.borrow_mut().add_ua(1, 0x2a, 0x03);
    assert_eq!(
        a.reserve(A, FENCE_TYPE),
        Err(PrError::UnitAttention { asc: 0x2a, ascq: 3 })
    );
}

#[test]
fn fence_acquire_on_a_fresh_device() {
    let t = Target::shared();
    let a = host(&t, 1);
    let got = fence_acquire(&a, A, None).unwrap();
    assert_eq!(got.took_over, None);
    assert!(got.removed.is_empty());
    assert!(!got.already_held);
    assert_eq!(t.borrow().holder(), Some((A, FENCE_TYPE)));
    assert_eq!(t.borrow().keys(), vec![A]);
    assert_eq!(
        t.borrow().log,
        vec![(1, "REGISTER AND IGNORE EXISTING KEY"), (1, "RESERVE"),]
    );
    // Idempotent.
    let again = fence_acquire(&a, A, None).unwrap();
    assert!(again.already_held);
    assert_eq!(t.borrow().holder(), Some((A, FENCE_TYPE)));
}

#[test]
fn takeover_preempts_the_old_owner_who_then_cannot_write_but_can_read() {
    let t = Target::shared();
    let (a, b) = (host(&t, 1), host(&t, 2));
    fence_acquire(&a, A, None).unwrap();
    assert!(t.borrow().may_write(1));
    assert!(!t.borrow().may_write(2));
    // B passed the MMP activity test: it registers before its claim write, and can write.
    fence_prepare(&b, B).unwrap();
    assert!(t.borrow().may_write(2));
    // After the claim is verified:
    let got = fence_acquire(&b, B, Some(A)).unwrap();
    assert_eq!(got.took_over, Some(A));
    assert_eq!(got.removed, vec![A]);
    assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
    assert_eq!(t.borrow().keys(), vec![B]);
    assert!(!t.borrow().may_write(1), "the old owner is fenced");
    assert!(t.borrow().may_write(2));
    // The old owner: a UNIT ATTENTION (registrations preempted) then reads still work.
    let r = a.read_reservation().unwrap();
    assert_eq!(r.holder.map(|h| h.key), Some(B));
    // Its own release is harmless and leaves B in place.
    let rel = fence_release(&a, A).unwrap();
    assert_eq!(
        rel,
        Released {
            released_reservation: false,
            was_registered: false
        }
    );
    assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
    assert_eq!(t.borrow().keys(), vec![B]);
}

#[test]
fn takeover_uses_preempt_and_abort_else_preempt() {
    let t = Target::shared();
    let (a, b) = (host(&t, 1), host(&t, 2));
    fence_acquire(&a, A, None).unwrap();
    fence_acquire(&b, B, None).unwrap();
    assert!(t.borrow().log.contains(&(2, "PREEMPT AND ABORT")));
    assert!(!t.borrow().log.contains(&(2, "PREEMPT")));
    // An old device without PREEMPT AND ABORT.
    let t = Target::shared();
    t.borrow_mut().no_preempt_abort = true;
    let (a, b) = (host(&t, 1), host(&t, 2));
    fence_acquire(&a, A, None).unwrap();
    let got = fence_acquire(&b, B, None).unwrap();
    assert_eq!(got.took_over, Some(A));
    assert!(t.borrow().log.contains(&(2, "PREEMPT")));
    assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
}

#[test]
fn fence_acquire_removes_stale_registrants() {
    // C registered (a contender that lost its claim, or crashed before reserving) and A
    // holds; B takes over and is left the only registrant.
    let t = Target::shared();
    t.borrow_mut().force_register(3, C);
    t.borrow_mut().force_register(1, A);
    t.borrow_mut().force_reserve(1, FENCE_TYPE);
    t.borrow_mut().force_register(4, A); // A's second path
    let b = host(&t, 2);
    let got = fence_acquire(&b, B, Some(A)).unwrap();
    assert_eq!(got.took_over, Some(A));
    assert_eq!(got.removed, vec![A, C]);
    assert_eq!(t.borrow().keys(), vec![B]);
    for n in [1, 3, 4] {
        assert!(!t.borrow().may_write(n), "nexus {n}");
    }
    // No reservation, but a stale registrant: reserve, then remove it.
    let t = Target::shared();
    t.borrow_mut().force_register(3, C);
    let got = fence_acquire(&host(&t, 2), B, None).unwrap();
    assert_eq!(got.took_over, None);
    assert_eq!(got.removed, vec![C]);
    assert_eq!(t.borrow().keys(), vec![B]);
}

#[test]
fn fence_acquire_refuses_foreign_keys_unless_named() {
    let t = Target::shared();
    t.borrow_mut().force_register(5, FOREIGN);
    t.borrow_mut().force_reserve(5, Type::WriteExclusive);
    let b = host(&t, 2);
    assert_eq!(
        fence_acquire(&b, B, None),
        Err(FenceError::ForeignKey(FOREIGN))
    );
    assert_eq!(
        fence_acquire(&b, B, Some(A)),
        Err(FenceError::ForeignKey(FOREIGN))
    );
    // Nothing was preempted.
    assert_eq!(t.borrow().holder(), Some((FOREIGN, Type::WriteExclusive)));
    // The caller names it as the previous owner: taken over.
    let got = fence_acquire(&b, B, Some(FOREIGN)).unwrap();
    assert_eq!(got.took_over, Some(FOREIGN));
    assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
    // A foreign registrant that does not hold the reservation is refused too.
    let t = Target::shared();
    t.borrow_mut().force_register(5, FOREIGN);
    assert_eq!(
        fence_acquire(&host(&t, 2), B, None),
        Err(FenceError::ForeignKey(FOREIGN))
    );
}

#[test]
fn fence_acquire_changes_our_own_reservation_type() {
    let t = Target::shared();
    t.borrow_mut().force_register(1, A);
    t.borrow_mut().force_reserve(1, Type::WriteExclusive);
    let got = fence_acquire(&host(&t, 1), A, None).unwrap();
    assert!(!got.already_held);
    assert_eq!(t.borrow().holder(), Some((A, FENCE_TYPE)));
}

#[test]
fn fence_acquire_over_an_all_registrants_reservation() {
    let t = Target::shared();
    t.borrow_mut().force_register(1, A);
    t.borrow_mut()
        .force_reserve(1, Type::WriteExclusiveAllRegistrants);
    let got = fence_acquire(&host(&t, 2), B, None).unwrap();
    assert_eq!(got.removed, vec![A]);
    assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
    assert_eq!(t.borrow().keys(), vec![B]);
}

#[test]
fn fence_acquire_takes_over_from_a_host_that_preempted_us_earlier() {
    // C preempted B some time ago; B's MMP claim has since been verified, so B's
    // fence_acquire registers again and takes over.
    let t = Target::shared();
    let (b, c) = (host(&t, 2), host(&t, 3));
    fence_acquire(&c, C, None).unwrap();
    b.register(B).unwrap();
    c.preempt(C, B, FENCE_TYPE).unwrap();
    let got = fence_acquire(&b, B, None).unwrap();
    assert_eq!(got.took_over, Some(C));
    assert_eq!(t.borrow().keys(), vec![B]);
}

#[test]
fn fence_acquire_reports_being_preempted_by_a_racing_host() {
    // C holds; B registers, and right before B's next command C removes B. B reports it
    // instead of fighting back (two hosts acquiring at once is MMP's failure, not ours to
    // settle by preempting in turn).
    let t = Target::shared();
    fence_acquire(&host(&t, 3), C, None).unwrap();
    let b = host(&t, 2);
    t.borrow_mut().interleave = Some((
        2,
        Box::new(|t: &mut Target| {
            // Before B's REGISTER: arm the race for B's next command.
            t.interleave = Some((2, Box::new(|t: &mut Target| t.preempt_all_but(3))));
        }),
    ));
    assert_eq!(
        fence_acquire(&b, B, None),
        Err(FenceError::Preempted { holder: Some(C) })
    );
    assert_eq!(t.borrow().holder(), Some((C, FENCE_TYPE)));
    assert_eq!(t.borrow().keys(), vec![C]);
}

#[test]
fn fence_release_releases_then_unregisters() {
    let t = Target::shared();
    let a = host(&t, 1);
    fence_acquire(&a, A, None).unwrap();
    t.borrow_mut().log.clear();
    let rel = fence_release(&a, A).unwrap();
    assert_eq!(
        rel,
        Released {
            released_reservation: true,
            was_registered: true
        }
    );
    assert_eq!(t.borrow().holder(), None);
    assert!(t.borrow().keys().is_empty());
    assert_eq!(
        t.borrow().log,
        vec![(1, "RELEASE"), (1, "REGISTER AND IGNORE EXISTING KEY")]
    );
    // Idempotent.
    assert_eq!(fence_release(&a, A).unwrap(), Released::default());
    // A clean handover needs no preempt.
    let b = host(&t, 2);
    t.borrow_mut().log.clear();
    let got = fence_acquire(&b, B, Some(A)).unwrap();
    assert_eq!(got.took_over, None);
    assert!(!t.borrow().log.iter().any(|(_, s)| s.starts_with("PREEMPT")));
}

#[test]
fn fence_rejects_keys_that_are_not_mmp_keys() {
    let t = Target::shared();
    let a = host(&t, 1);
    for k in [0, FOREIGN, 0x6d6d_7000_0000_0000] {
        assert_eq!(fence_prepare(&a, k), Err(FenceError::BadKey(k)));
        assert_eq!(fence_acquire(&a, k, None), Err(FenceError::BadKey(k)));
        assert_eq!(fence_release(&a, k), Err(FenceError::BadKey(k)));
    }
    assert!(t.borrow().log.is_empty());
}

#[test]
fn fence_errors_name_the_step() {
    // A device without persistent reservations answers INVALID COMMAND OPERATION CODE.
    struct NoPr;
    impl Transport for NoPr {
        fn execute(&self, _: &[u8], _: Dir<'_>, _: u32) -> Result<Completion, PrError> {
            Ok(Completion::with_sense(0x02, &fixed(0x70, 0x05, 0x20, 0x00)))
        }
    }
    let p = Pr::new(NoPr);
    assert_eq!(
        fence_acquire(&p, A, None),
        Err(FenceError::Command {
            step: "REGISTER AND IGNORE EXISTING KEY",
            error: PrError::NotSupported { asc: 0x20, ascq: 0 }
        })
    );
    assert_eq!(
        p.read_keys(),
        Err(PrError::NotSupported { asc: 0x20, ascq: 0 })
    );
    // A transport that cannot issue the command at all.
    struct Gone;
    impl Transport for Gone {
        fn execute(&self, _: &[u8], _: Dir<'_>, _: u32) -> Result<Completion, PrError> {
            Err(PrError::Io(rustix::io::Errno::NODEV.raw_os_error()))
        }
    }
    assert_eq!(
        fence_release(&Pr::new(Gone), A),
        Err(FenceError::Command {
            step: "READ RESERVATION",
            error: PrError::Io(rustix::io::Errno::NODEV.raw_os_error())
        })
    );
    // Garbage answers are Malformed, never a panic.
    struct Garbage;
    impl Transport for Garbage {
        fn execute(&self, _: &[u8], dir: Dir<'_>, _: u32) -> Result<Completion, PrError> {
            let mut c = Completion::with_sense(0, &[]);
            if let Dir::FromDevice(b) = dir {
                b.fill(0xff);
                c.data_len = 5;
            }
            Ok(c)
        }
    }
    assert_eq!(
        Pr::new(Garbage).read_reservation(),
        Err(PrError::Malformed(ParseError::Truncated {
            len: 5,
            need: 8
        }))
    );
}

#[test]
fn open_loop_device_is_not_scsi() {
    // An (even unattached) loop device is a block device without SG_IO.
    let p = Path::new("/dev/loop0");
    if !p.exists() {
        eprintln!("SKIP: no /dev/loop0");
        return;
    }
    match Pr::open(p) {
        Err(PrError::NotScsi(NotScsi::NoSgIo(_))) => {}
        Err(PrError::Io(e)) => eprintln!("SKIP: cannot open /dev/loop0: errno {e}"),
        other => panic!("expected NotScsi, got {other:?}"),
    }
}

fn fence_of(
    key: u64,
    luns: &[&std::rc::Rc<std::cell::RefCell<Target>>],
    id: usize,
) -> Fence<Nexus> {
    let mut mmp: Vec<_> = luns
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("lun{i}"), host(t, id)))
        .collect();
    // The first LUN holds the MMP area; the others are data.
    let data = mmp.split_off(1);
    Fence::new(key, mmp, data)
}

#[test]
fn a_hold_fence_takes_every_lun_and_the_old_owner_writes_none() {
    let (area, data) = (Target::shared(), Target::shared());
    let a = fence_of(A, &[&area, &data], 1);
    let b = fence_of(B, &[&area, &data], 2);
    a.prepare().unwrap();
    let got = a.acquire().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0, "lun0");
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((A, FENCE_TYPE)));
        assert!(t.borrow().may_write(1));
        assert!(
            !t.borrow().may_write(2),
            "not registered: B cannot write yet"
        );
    }
    // B passed the activity test on the MMP area (A is frozen): it registers, claims,
    // verifies, then takes over every LUN.
    b.prepare().unwrap();
    assert!(area.borrow().may_write(2), "B's claim write is allowed");
    assert!(
        !data.borrow().may_write(2),
        "B may not write the data before it acquired (a stale mount of it would)"
    );
    let got = b.acquire().unwrap();
    assert!(got.iter().all(|(_, g)| g.took_over == Some(A)));
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
        assert!(
            !t.borrow().may_write(1),
            "the old owner is refused on every LUN"
        );
        assert_eq!(t.borrow().keys(), vec![B]);
    }
    // A comes back and gives up: nothing of B's changes.
    let (kept, failed) = a.hand_over();
    assert!(kept.is_empty() && failed.is_empty());
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
    }
    // B's clean release keeps the reservation: A (which may still have a stale mount)
    // stays refused until the next owner preempts B.
    let (kept, failed) = b.hand_over();
    assert_eq!(kept, vec!["lun0".to_owned(), "lun1".to_owned()]);
    assert!(failed.is_empty());
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
        assert!(
            !t.borrow().may_write(1),
            "A is still refused after B's release"
        );
    }
    // The next owner (A again, after a new MMP acquire) preempts B.
    let a2 = fence_of(A, &[&area, &data], 1);
    a2.prepare().unwrap();
    let got = a2.acquire().unwrap();
    assert!(got.iter().all(|(_, g)| g.took_over == Some(B)));
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((A, FENCE_TYPE)));
        assert_eq!(t.borrow().keys(), vec![A]);
        assert!(!t.borrow().may_write(2));
    }
    // An administrator gives the LUNs up for good.
    assert!(a2.release().is_empty());
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), None);
        assert!(t.borrow().keys().is_empty());
    }
}

/// Found in the lab (`pacemaker-comeback-with-reservations`, cycles 18 and 25 of the second
/// soak): A, frozen past B's takeover, resumes with its XFS still mounted; the cluster
/// decides to move the group back to A and stops it on B first. B's clean release used to
/// RELEASE and unregister: the LUN was then unreserved, and A's stale XFS flushed 7 and 11
/// writes onto B's file system before A's own stop unmounted it. A clean release now keeps
/// the reservation; A's writes stay refused until A acquires anew (after its stale mount is
/// gone) and preempts B.
#[test]
fn a_clean_release_keeps_a_preempted_stale_node_out() {
    let (area, data) = (Target::shared(), Target::shared());
    let a = fence_of(A, &[&area, &data], 1);
    let b = fence_of(B, &[&area, &data], 2);
    a.prepare().unwrap();
    a.acquire().unwrap();
    b.prepare().unwrap();
    b.acquire().unwrap();
    // B stops cleanly while A's stale mount still wants to write.
    let (kept, failed) = b.hand_over();
    assert_eq!(kept.len(), 2);
    assert!(failed.is_empty());
    assert!(!data.borrow().may_write(1), "A's stale mount is refused");
    assert!(
        !area.borrow().may_write(1),
        "A's stale heartbeat is refused"
    );
    // Repeated: idempotent, still kept.
    assert_eq!(b.hand_over().0.len(), 2);
    assert_eq!(data.borrow().holder(), Some((B, FENCE_TYPE)));
}

#[test]
fn fence_hand_over_keeps_a_held_reservation_and_withdraws_a_bare_key() {
    let lun = Target::shared();
    let a = host(&lun, 1);
    let b = host(&lun, 2);
    fence_prepare(&a, A).unwrap();
    fence_acquire(&a, A, None).unwrap();
    fence_prepare(&b, B).unwrap();
    assert_eq!(
        fence_hand_over(&b, B).unwrap(),
        HandedOver {
            kept_reservation: false,
            unregistered: true
        }
    );
    assert_eq!(lun.borrow().keys(), vec![A]);
    assert_eq!(
        fence_hand_over(&a, A).unwrap(),
        HandedOver {
            kept_reservation: true,
            unregistered: false
        }
    );
    assert_eq!(lun.borrow().holder(), Some((A, FENCE_TYPE)));
    assert_eq!(lun.borrow().keys(), vec![A]);
    assert_eq!(fence_hand_over(&a, 7), Err(FenceError::BadKey(7)));
}

#[test]
fn a_refused_contender_withdraws_its_registration() {
    let lun = Target::shared();
    let a = fence_of(A, &[&lun], 1);
    let b = fence_of(B, &[&lun], 2);
    a.prepare().unwrap();
    a.acquire().unwrap();
    b.prepare().unwrap();
    assert_eq!(lun.borrow().keys(), vec![A, B]);
    // B's activity test found A alive: B withdraws, A keeps everything.
    assert_eq!(b.hand_over(), (vec![], vec![]));
    assert_eq!(lun.borrow().keys(), vec![A]);
    assert_eq!(lun.borrow().holder(), Some((A, FENCE_TYPE)));
}

#[test]
fn a_hold_fence_names_the_device_that_failed() {
    let lun = Target::shared();
    let other = Target::shared();
    // Some other software holds a reservation on the second LUN.
    other.borrow_mut().force_register(9, 0x1234);
    other.borrow_mut().force_reserve(9, Type::WriteExclusive);
    let a = fence_of(A, &[&lun, &other], 1);
    a.prepare().unwrap();
    let e = a.acquire().unwrap_err();
    assert_eq!(e.device, "lun1");
    assert_eq!(e.error, FenceError::ForeignKey(0x1234));
    assert!(
        e.to_string()
            .starts_with("lun1: reservation key 0x0000000000001234")
    );
}

/// Found in the lab (`pacemaker-comeback-with-reservations`, cycle 18 of a soak): a node
/// frozen past its partner's takeover comes back with its XFS still mounted, and a new
/// acquire starts on it (the cluster restarting the resource there) before the stale mount
/// is gone. Registering on the data LUN at that point would make the stale mount a
/// registrant again, and its writes would land under the partner's reservation. The new
/// acquire registers on the MMP LUN only; the data LUN stays closed to it.
#[test]
fn a_new_acquire_on_a_preempted_node_opens_no_data_lun() {
    let (area, data) = (Target::shared(), Target::shared());
    let a = fence_of(A, &[&area, &data], 1);
    let b = fence_of(B, &[&area, &data], 2);
    a.prepare().unwrap();
    a.acquire().unwrap();
    b.prepare().unwrap();
    b.acquire().unwrap();
    assert!(!data.borrow().may_write(1), "A preempted");
    // A comes back; a new hold starts on it and registers before its activity test.
    let a2 = fence_of(A, &[&area, &data], 1);
    a2.prepare().unwrap();
    assert!(
        !data.borrow().may_write(1),
        "the data LUN must refuse A's stale mount while A has not acquired"
    );
    assert_eq!(data.borrow().keys(), vec![B]);
    // Its activity test sees B alive: it withdraws, and B keeps everything.
    assert_eq!(a2.hand_over(), (vec![], vec![]));
    for t in [&area, &data] {
        assert_eq!(t.borrow().holder(), Some((B, FENCE_TYPE)));
        assert_eq!(t.borrow().keys(), vec![B]);
    }
}

/// Random schedules of three hosts sharing an MMP LUN and a data LUN, each step one thing a
/// cluster can do: acquire (only when MMP allows it: nobody holds, or the owner froze), a
/// clean release, the owner freezing, a stale mount going away, a new hold refused by MMP
/// (also on a node with a stale mount). After every step: no host that has the data mounted
/// without owning it may write the data LUN, and the owner may. The clean release that gave
/// the reservation back (fixed after soak 2) breaks this at seed 1, with the schedule the
/// lab found: 0 acquires, 0 freezes, 1 acquires, 1 releases.
#[test]
fn no_stale_mount_ever_writes_in_random_schedules() {
    const KEYS: [u64; 3] = [A, B, C];
    for seed in 0..400u64 {
        let (area, data) = (Target::shared(), Target::shared());
        let fence = |h: usize| fence_of(KEYS[h], &[&area, &data], h + 1);
        // (owner, frozen): the MMP owner, and whether it froze (takeover allowed).
        let mut owner: Option<(usize, bool)> = None;
        let mut mounted = [false; 3];
        let mut log: Vec<String> = Vec::new();
        let mut rng = seed;
        for step in 0..60 {
            rng = mmp_core::rand::splitmix64_mix(rng.wrapping_add(0x9e37_79b9_7f4a_7c15));
            let h = usize::try_from(rng % 3).unwrap_or(0);
            match (rng >> 8) % 5 {
                // Acquire: MMP lets a host without a mount in when nobody holds or the
                // owner froze; the previous owner keeps its (now stale) mount.
                0 if !mounted[h] && owner.is_none_or(|(_, frozen)| frozen) => {
                    let f = fence(h);
                    f.prepare().unwrap();
                    let got = f.acquire();
                    assert!(got.is_ok(), "seed {seed} step {step}: {got:?}\n{log:?}");
                    owner = Some((h, false));
                    mounted[h] = true;
                    log.push(format!("{h} acquires"));
                }
                // The owner releases cleanly: unmount, hand over, CLEAN.
                1 if owner == Some((h, false)) => {
                    mounted[h] = false;
                    let (_, failed) = fence(h).hand_over();
                    assert!(failed.is_empty(), "seed {seed}: {failed:?}");
                    owner = None;
                    log.push(format!("{h} releases"));
                }
                // The owner freezes (VM pause): a takeover is now allowed.
                2 if owner == Some((h, false)) => {
                    owner = Some((h, true));
                    log.push(format!("{h} freezes"));
                }
                // A stale mount goes away (the cluster stops it).
                3 if mounted[h] && owner.is_none_or(|(o, _)| o != h) => {
                    mounted[h] = false;
                    log.push(format!("{h} unmounts its stale mount"));
                }
                // A new hold on h is refused by MMP (the owner is alive): it registered on
                // the MMP LUN, and withdraws. A stale mount on h must not write meanwhile.
                4 if owner.is_some_and(|(o, frozen)| o != h && !frozen) => {
                    let f = fence(h);
                    f.prepare().unwrap();
                    assert!(
                        !mounted[h] || !data.borrow().may_write(h + 1),
                        "seed {seed} step {step}: a refused hold opened the data LUN to {h}'s stale mount\n{log:?}"
                    );
                    let (_, failed) = f.hand_over();
                    assert!(failed.is_empty(), "seed {seed}: {failed:?}");
                    log.push(format!("{h} refused"));
                }
                _ => continue,
            }
            for (x, &is_mounted) in mounted.iter().enumerate() {
                let owns = owner.is_some_and(|(o, _)| o == x);
                if is_mounted && !owns {
                    assert!(
                        !data.borrow().may_write(x + 1),
                        "seed {seed} step {step}: host {x}'s stale mount may write the data LUN\n{log:?}"
                    );
                }
                if owns {
                    assert!(
                        data.borrow().may_write(x + 1) && area.borrow().may_write(x + 1),
                        "seed {seed} step {step}: the owner {x} may not write\n{log:?}"
                    );
                }
            }
        }
    }
}
