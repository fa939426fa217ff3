//! `mmp pr DEVICE...`: the SCSI persistent reservations of each device, like
//! `sg_persist -k -r`, with mmp keys decoded to hostids. Read-only (PERSISTENT RESERVE IN:
//! READ KEYS, READ RESERVATION) unless asked to give a device up: `--release` (this host's
//! reservation and key) or `--clear` (every host's).

use crate::exit::Exit;
use crate::json::Obj;
use crate::{Ctx, out, show};
use clap::Args;
use mmp_linux::pr::{self, Keys, Pr, PrError, Reservation};
use std::fmt::Write as _;
use std::path::PathBuf;

/// Arguments of `mmp pr`.
#[derive(Args, Debug)]
pub(crate) struct PrArgs {
    /// One JSON object per device per line.
    #[arg(long)]
    json: bool,
    /// The reservation key to mark as this host's (hex); default: the key of this host's
    /// hostid (0x6d6d7000 followed by the hostid).
    #[arg(long, value_name = "HEX")]
    key: Option<String>,
    /// Give this host's reservation and key up on each device (RELEASE, then unregister),
    /// then show it. A hold with --fence scsi-pr keeps its reservation after a clean
    /// release until the next owner preempts it; this hands the device to software that
    /// does not use reservations. Only when no mmp hold of this host uses the device.
    #[arg(long, conflicts_with = "clear")]
    release: bool,
    /// Remove every host's keys and reservation on each device (register this host's key,
    /// then CLEAR), then show it. Only when no host uses the device: a fenced owner
    /// elsewhere loses its protection.
    #[arg(long)]
    clear: bool,
    /// SCSI devices (/dev/sdX, /dev/sgN, or a multipath map that passes SG_IO through).
    #[arg(required = true)]
    devices: Vec<PathBuf>,
}

impl PrArgs {
    /// The devices (for `UUID=`/`LABEL=` names).
    pub(crate) fn devices_mut(&mut self) -> &mut Vec<PathBuf> {
        &mut self.devices
    }
}

fn parse_key(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|&k| k != 0)
        .ok_or_else(|| format!("--key {s}: not a non-zero hexadecimal 64-bit key"))
}

/// Runs `mmp pr`: 0 when every device was read, 2 when any was not (the others are still
/// shown).
pub(crate) fn pr(c: &Ctx, args: &PrArgs) -> Result<Exit, String> {
    let own = match &args.key {
        Some(k) => Some(parse_key(k)?),
        None => pr::key_for_hostid(c.hostid),
    };
    if (args.release || args.clear) && own.is_none() {
        return Err(format!(
            "mmp pr --{}: needs this host's key: set a hostid (`mmp hostid --set`, --hostid) \
             or give --key",
            if args.release { "release" } else { "clear" }
        ));
    }
    let mut code = Exit::Ok;
    for d in &args.devices {
        let path = show(d);
        let res = Pr::open(d).and_then(|p| {
            if let Some(k) = own.filter(|_| args.release || args.clear) {
                give_up(&p, &path, k, args.clear)?;
            }
            Ok((p.read_keys()?, p.read_reservation()?))
        });
        match res {
            Ok((keys, res)) => {
                if args.json {
                    outln!("{}", json(&path, &keys, &res, own));
                } else {
                    out_raw!("{}", text(&path, &keys, &res, own));
                }
            }
            Err(e) => {
                code = Exit::Error;
                let msg = message(&path, &e);
                if args.json {
                    let o = Obj::new("pr")
                        .str("device", &path)
                        .str("error", &msg)
                        .raw("not_scsi", matches!(e, PrError::NotScsi(_)));
                    outln!("{}", o.end());
                } else {
                    note!("mmp: {}", out::plain(&msg));
                }
            }
        }
    }
    Ok(code)
}

/// `--release` (our reservation and key) or `--clear` (everyone's) on one device; says what
/// was done on stderr.
fn give_up(p: &Pr, path: &str, key: u64, clear: bool) -> Result<(), PrError> {
    if clear {
        p.register(key)?;
        p.clear(key)?;
        note!("mmp: {path}: cleared every registration and the reservation");
        return Ok(());
    }
    let ours = p.read_reservation()?.holder.filter(|h| h.key == key);
    let held = ours.is_some();
    if let Some(h) = ours {
        match p.release(key, h.kind().unwrap_or(pr::FENCE_TYPE)) {
            Ok(()) | Err(PrError::Conflict) => {}
            Err(e) => return Err(e),
        }
    }
    let registered = p.read_keys()?.contains(key);
    if registered {
        p.unregister(key)?;
    }
    note!(
        "mmp: {path}: {}",
        match (held, registered) {
            (true, _) => format!("released the reservation of key {key:#018x} and removed it"),
            (false, true) => format!("removed key {key:#018x} (it held no reservation)"),
            (false, false) => format!("key {key:#018x} was not registered; nothing to do"),
        }
    );
    Ok(())
}

fn message(path: &str, e: &PrError) -> String {
    match *e {
        PrError::Io(errno)
            if errno == rustix::io::Errno::PERM.raw_os_error()
                || errno == rustix::io::Errno::ACCESS.raw_os_error() =>
        {
            format!(
                "{path}: {}: persistent reservation commands need root (CAP_SYS_RAWIO)",
                out::io_error_text(mmp_core::machine::IoError::Os(errno))
            )
        }
        PrError::Io(errno) => format!(
            "{path}: {}",
            out::io_error_text(mmp_core::machine::IoError::Os(errno))
        ),
        ref e => format!("{path}: {e}"),
    }
}

/// Who a key belongs to: `mmp hostid 0x..., this host`, or `not an mmp key`.
fn whose(key: u64, own: Option<u64>) -> String {
    let mut s = match pr::hostid_for_key(key) {
        Some(h) => format!("mmp hostid 0x{h:08x}"),
        None => "not an mmp key".to_owned(),
    };
    if Some(key) == own {
        s.push_str(", this host");
    }
    s
}

/// The text block for one device.
fn text(path: &str, keys: &Keys, res: &Reservation, own: Option<u64>) -> String {
    let mut o = String::new();
    let n = keys.keys.len();
    let _ = writeln!(
        o,
        "{path}: PR generation 0x{:x}, {}",
        keys.generation,
        match n {
            0 => "no registered reservation keys".to_owned(),
            1 => "1 registered reservation key:".to_owned(),
            n => format!("{n} registered reservation keys:"),
        }
    );
    for &k in &keys.keys {
        let _ = writeln!(o, "    0x{k:016x}  ({})", whose(k, own));
    }
    if keys.truncated {
        let _ = writeln!(
            o,
            "    ... more keys than one answer holds ({} bytes announced)",
            keys.additional_len
        );
    }
    match res.holder {
        None => {
            let _ = writeln!(
                o,
                "{path}: PR generation 0x{:x}, no reservation",
                res.generation
            );
        }
        Some(h) => {
            let kind = h.kind().map_or_else(
                || format!("reserved type 0x{:x}", h.type_code),
                |t| t.name().to_owned(),
            );
            let _ = writeln!(
                o,
                "{path}: PR generation 0x{:x}, reservation:",
                res.generation
            );
            if h.kind().is_some_and(pr::Type::is_all_registrants) {
                let _ = writeln!(o, "    held by every registrant");
            } else {
                let _ = writeln!(o, "    key 0x{:016x}  ({})", h.key, whose(h.key, own));
            }
            let scope = if h.scope == pr::SCOPE_LU {
                "LU".to_owned()
            } else {
                format!("0x{:x}", h.scope)
            };
            let _ = writeln!(o, "    type: {kind}, scope: {scope}");
        }
    }
    o
}

/// A key with the hostid it encodes (mmp's keys) and whether it is this host's.
fn json_key(key: u64, own: Option<u64>) -> Obj {
    Obj::nested()
        .str("key", &format!("0x{key:016x}"))
        .raw(
            "hostid",
            pr::hostid_for_key(key).map_or_else(|| "null".to_owned(), |h| format!("\"0x{h:08x}\"")),
        )
        .raw("this_host", Some(key) == own)
}

/// The JSON object for one device (kind `pr`).
fn json(path: &str, keys: &Keys, res: &Reservation, own: Option<u64>) -> String {
    let list: Vec<String> = keys.keys.iter().map(|&k| json_key(k, own).end()).collect();
    let reservation = res.holder.map_or_else(
        || "null".to_owned(),
        |h| {
            json_key(h.key, own)
                .raw(
                    "type",
                    h.kind()
                        .map_or_else(|| "null".to_owned(), |t| format!("\"{}\"", t.json_name())),
                )
                .raw("type_code", h.type_code)
                .raw("scope", h.scope)
                .end()
        },
    );
    Obj::new("pr")
        .str("device", path)
        .raw("generation", keys.generation)
        .raw("keys", format!("[{}]", list.join(",")))
        .raw("keys_truncated", keys.truncated)
        .raw("reservation", reservation)
        .end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmp_linux::pr::Holder;

    const OWN: u64 = 0x6d6d_7000_1a2b_3c4d;
    const OTHER: u64 = 0x6d6d_7000_0000_00bb;
    const FOREIGN: u64 = 0x0123_4567_89ab_cdef;

    fn sample() -> (Keys, Reservation) {
        (
            Keys {
                generation: 0x2a,
                keys: vec![OWN, OWN, FOREIGN],
                truncated: false,
                additional_len: 24,
            },
            Reservation {
                generation: 0x2a,
                holder: Some(Holder {
                    key: OWN,
                    scope: 0,
                    type_code: 5,
                }),
            },
        )
    }

    #[test]
    fn text_names_hosts() {
        let (k, r) = sample();
        assert_eq!(
            text("/dev/sdb", &k, &r, Some(OWN)),
            "/dev/sdb: PR generation 0x2a, 3 registered reservation keys:\n\
             \x20   0x6d6d70001a2b3c4d  (mmp hostid 0x1a2b3c4d, this host)\n\
             \x20   0x6d6d70001a2b3c4d  (mmp hostid 0x1a2b3c4d, this host)\n\
             \x20   0x0123456789abcdef  (not an mmp key)\n\
             /dev/sdb: PR generation 0x2a, reservation:\n\
             \x20   key 0x6d6d70001a2b3c4d  (mmp hostid 0x1a2b3c4d, this host)\n\
             \x20   type: Write Exclusive, registrants only, scope: LU\n"
        );
        let empty = Keys {
            generation: 0,
            keys: vec![],
            truncated: false,
            additional_len: 0,
        };
        let none = Reservation {
            generation: 0,
            holder: None,
        };
        assert_eq!(
            text("/dev/sdc", &empty, &none, None),
            "/dev/sdc: PR generation 0x0, no registered reservation keys\n\
             /dev/sdc: PR generation 0x0, no reservation\n"
        );
    }

    #[test]
    fn json_names_hosts() {
        let (k, r) = sample();
        assert_eq!(
            json("/dev/sdb", &k, &r, Some(OTHER)),
            "{\"schema\":1,\"kind\":\"pr\",\"device\":\"/dev/sdb\",\"generation\":42,\"keys\":[\
             {\"key\":\"0x6d6d70001a2b3c4d\",\"hostid\":\"0x1a2b3c4d\",\"this_host\":false},\
             {\"key\":\"0x6d6d70001a2b3c4d\",\"hostid\":\"0x1a2b3c4d\",\"this_host\":false},\
             {\"key\":\"0x0123456789abcdef\",\"hostid\":null,\"this_host\":false}],\
             \"keys_truncated\":false,\"reservation\":\
             {\"key\":\"0x6d6d70001a2b3c4d\",\"hostid\":\"0x1a2b3c4d\",\"this_host\":false,\
             \"type\":\"write_exclusive_registrants_only\",\"type_code\":5,\"scope\":0}}"
        );
        let none = Reservation {
            generation: 1,
            holder: None,
        };
        assert!(json("d", &k, &none, None).ends_with("\"reservation\":null}"));
    }

    #[test]
    fn odd_reservations_shown_raw() {
        let (k, mut r) = sample();
        r.holder = Some(Holder {
            key: 0,
            scope: 0,
            type_code: 7,
        });
        assert!(text("d", &k, &r, None).contains("    held by every registrant\n"));
        r.holder = Some(Holder {
            key: FOREIGN,
            scope: 2,
            type_code: 0xf,
        });
        let t = text("d", &k, &r, None);
        assert!(t.contains("type: reserved type 0xf, scope: 0x2"), "{t}");
        assert!(json("d", &k, &r, None).contains("\"type\":null,\"type_code\":15,\"scope\":2"));
    }

    #[test]
    fn io_error_messages() {
        assert_eq!(
            message("/dev/sdb", &PrError::Io(1)),
            "/dev/sdb: Operation not permitted (os error 1): persistent reservation commands \
             need root (CAP_SYS_RAWIO)"
        );
        assert_eq!(
            message("/x", &PrError::Io(2)),
            "/x: No such file or directory (os error 2)"
        );
        assert_eq!(
            message("/x", &PrError::Conflict),
            "/x: RESERVATION CONFLICT"
        );
    }

    #[test]
    fn key_option() {
        assert_eq!(parse_key("0x6d6d70001a2b3c4d"), Ok(OWN));
        assert_eq!(parse_key("6D6D70001A2B3C4D"), Ok(OWN));
        assert!(parse_key("0").is_err());
        assert!(parse_key("xyz").is_err());
        assert!(parse_key("0x1ffffffffffffffff").is_err());
    }
}
