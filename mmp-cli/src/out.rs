//! Text and JSON rendering: device-derived names are escaped, times are shown in UTC with
//! their age, and the other side is named the way e2mmpstatus and zpool do.

use mmp_core::format::{ext4, native};
use mmp_core::machine::{Class, Corrupt, Identity, Loss, Refusal, Snapshot, Timing};
use mmp_core::sys::target::{Format, Target};
use std::fmt::Write as _;

/// Escapes bytes from a device for a terminal: printable ASCII as is, everything else
/// (control characters, non-ASCII) as `\xNN`, backslash as `\\`.
pub(crate) fn esc(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s
}

/// A JSON string literal for arbitrary text.
pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON string for device bytes (escaped as [`esc`] does, so it is always valid UTF-8).
pub(crate) fn json_bytes(b: &[u8]) -> String {
    json_str(&esc(b))
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds.
pub(crate) fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A short human age: `3.2 s`, `4 min`, `2.5 h`, `3 days`.
pub(crate) fn age(ms: i128) -> String {
    if ms < 0 {
        return format!(
            "{:.1} s in the future (clocks disagree)",
            -ms as f64 / 1000.0
        );
    }
    let s = ms as f64 / 1000.0;
    if s < 120.0 {
        format!("{s:.1} s ago")
    } else if s < 7200.0 {
        format!("{:.0} min ago", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h ago", s / 3600.0)
    } else {
        format!("{:.0} days ago", s / 86400.0)
    }
}

/// Wall-clock now in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    mmp_core::sys::clock::now().wall_ms
}

/// "node 'oss2' (hostid 0x1234abcd), device 'sdb', last update 2026-11-21 10:45:12 UTC
/// (3.2 s ago)".
pub(crate) fn who(snap: &Snapshot) -> String {
    // A native area as `mmp format` wrote it names no owner: say so rather than
    // "node '' (hostid 0x00000000)".
    if let Snapshot::Native(r) = snap
        && r.reason == native::Reason::Formatted
        && r.hostid == 0
        && snap.nodename().is_empty()
    {
        let t = snap.time_ms();
        return format!(
            "never held (formatted {}, {})",
            utc(t / 1000),
            age(i128::from(now_ms()) - i128::from(t))
        );
    }
    let mut s = format!("node '{}'", esc(snap.nodename()));
    if let Some(h) = snap.hostid() {
        let _ = write!(s, " (hostid 0x{h:08x})");
    }
    let _ = write!(s, ", device '{}'", esc(snap.devname()));
    let t = snap.time_ms();
    let _ = write!(
        s,
        ", last update {} ({})",
        utc(t / 1000),
        age(i128::from(now_ms()) - i128::from(t))
    );
    s
}

/// The state name for output.
pub(crate) fn state_name(snap: &Snapshot) -> &'static str {
    snap.class().name()
}

/// One-line explanation of a refusal, with what the operator can do next.
pub(crate) fn refusal(path: &str, r: &Refusal) -> String {
    match r {
        Refusal::NoHostid => {
            "this host has no hostid (0): set a unique one with `mmp hostid --generate`, \
             or give --hostid / MMP_HOSTID; --force cannot override this"
                .to_string()
        }
        Refusal::Corrupt(c @ Corrupt::Native(native::RecordError::UnsupportedVersion(_))) => {
            format!(
                "{path}: {c}; a newer mmp wrote it: use that version, or overwrite the area with \
                 `mmp format --force {path}` if no other host uses it"
            )
        }
        Refusal::Corrupt(c @ Corrupt::Native(_)) => format!(
            "{path}: {c}; refusing to act on a block that cannot be trusted. If no other host uses \
             it, reset it with `mmp clear --force {path}` (keeps the area's parameters where they \
             can be read)"
        ),
        Refusal::Corrupt(c) => format!(
            "{path}: {c}; refusing to act on a block that cannot be trusted. If no other host uses \
             it, reset it with `mmp clear --force {path}` (or `e2fsck -fy {path}`)"
        ),
        Refusal::Fsck(s) => format!(
            "{path}: MMP: e2fsck being run (sequence FSCK) by {}. If you are sure no node uses it, \
             run `mmp clear --force {path}`",
            who(s)
        ),
        Refusal::UnknownSeq(s) => format!(
            "{path}: MMP: undergoing an unknown operation (sequence {:#010x}) by {}. If you are \
             sure no node uses it, run `mmp clear --force {path}`",
            s.seq(),
            who(s)
        ),
        Refusal::Maintenance(s) => format!(
            "{path}: in maintenance, set by {}; run `mmp clear --force {path}` when done",
            who(s)
        ),
        Refusal::Foreign(s) => format!(
            "{path}: last held by another host, {}, and not released. Make sure that host is \
             down, then use --force (the activity test still runs)",
            who(s)
        ),
        Refusal::Active(Some(s)) => format!(
            "{path}: device is active on another node: the block changed during the activity \
             test; now {}",
            who(s)
        ),
        Refusal::Active(None) => format!(
            "{path}: device is active on another node: the block changed during the activity \
             test (it is now unreadable, possibly mid-write)"
        ),
        Refusal::LostRace(Some(s)) => format!(
            "{path}: another host claimed the device at the same time: {}",
            who(s)
        ),
        Refusal::LostRace(None) => {
            format!("{path}: another host claimed the device at the same time")
        }
        Refusal::Io(e) => format!(
            "{path}: I/O error during the protocol ({}); refusing while in doubt",
            errno_text(e.errno)
        ),
        Refusal::TooLate { late_by } => format!(
            "{path}: too slow to take the device safely: a result came {:.1} s after the \
             instant it had to beat (the storage or this host stalled); nothing more was \
             written. Retry when the storage responds normally",
            late_by.as_secs_f64()
        ),
    }
}

/// One-line explanation of a loss.
///
/// `me` is this process's identity: a block that carries it was not written by another
/// host, and the text says what that means instead.
pub(crate) fn loss(path: &str, l: &Loss, me: &Identity) -> String {
    match l {
        Loss::ForeignWrite(Some(s))
            if s.nodename() == me.nodename() && s.hostid().is_none_or(|h| h == me.hostid) =>
        {
            format!(
                "{path}: ownership lost: the MMP block changed, but to a block of this host's \
                 own identity ({}, seq {}), not the one this process wrote last: another mmp \
                 process on this host with the same identity took the device, or the storage \
                 lost or reordered our write; stopped writing",
                who(s),
                s.seq()
            )
        }
        Loss::ForeignWrite(Some(s)) => format!(
            "{path}: ownership lost: another host wrote the MMP block ({}); stopped writing",
            who(s)
        ),
        Loss::ForeignWrite(None) => format!(
            "{path}: ownership lost: the MMP block was overwritten with something unreadable; \
             stopped writing"
        ),
        Loss::Fenced {
            since_last_write,
            fail_window,
        } => format!(
            "{path}: ownership lost: no heartbeat succeeded for {:.1} s, past the {:.1} s fail \
             window; self-fenced, stopped writing",
            since_last_write.as_secs_f64(),
            fail_window.as_secs_f64()
        ),
        Loss::ReleaseReadFailed(e) => format!(
            "{path}: release could not verify the block ({}); CLEAN not written, the last \
             heartbeat stays (another host will see it stale)",
            errno_text(e.errno)
        ),
    }
}

/// Text for an errno.
pub(crate) fn errno_text(errno: i32) -> String {
    if errno == 0 {
        "short read".into()
    } else {
        std::io::Error::from_raw_os_error(errno).to_string()
    }
}

/// Whether a refusal means "in use / in doubt but readable" (exit 1) rather than an error
/// (exit 2).
pub(crate) fn refusal_code(r: &Refusal) -> u8 {
    match r {
        Refusal::Corrupt(_) | Refusal::Io(_) | Refusal::NoHostid => 2,
        _ => 1,
    }
}

/// The JSON object `mmp status --json` prints for a parsed record.
pub(crate) fn status_json(path: &str, t: &Target, snap: &Snapshot) -> String {
    let mut o = format!(
        "{{\"device\":{},\"format\":\"{}\",\"state\":\"{}\",\"seq\":{},\"node\":{},\"device_name\":{},\"time\":{}",
        json_str(path),
        t.format.name(),
        state_name(snap),
        snap.seq(),
        json_bytes(snap.nodename()),
        json_bytes(snap.devname()),
        snap.time_ms() / 1000
    );
    let age_ms = i128::from(now_ms()) - i128::from(snap.time_ms());
    let _ = write!(o, ",\"age_s\":{:.3}", age_ms as f64 / 1000.0);
    // The waits an acquire of this device can take: now, and after its owner crashed.
    let timing = Timing::for_snapshot(&t.layout, snap);
    let clean = snap.class() == Class::Clean;
    let _ = write!(
        o,
        ",\"acquire_wait_ms\":{},\"takeover_wait_ms\":{}",
        timing.max_acquire_wait(clean).as_millis(),
        timing.max_acquire_wait(false).as_millis()
    );
    match snap {
        Snapshot::Ext4(b) => {
            let sb = t.superblock.as_ref();
            let _ = write!(
                o,
                ",\"mmp_block\":{},\"check_interval_s\":{},\"update_interval_s\":{}",
                sb.map_or(0, |s| s.mmp_block),
                b.check_interval,
                sb.map_or(0, |s| s.mmp_update_interval)
            );
        }
        Snapshot::Native(r) => {
            let _ = write!(
                o,
                ",\"hostid\":{},\"hostid_hex\":\"0x{:08x}\",\"interval_ms\":{},\"fail_intervals\":{},\"delay_us\":{},\"reason\":\"{}\"",
                r.hostid,
                r.hostid,
                r.interval_ms,
                r.fail_intervals,
                r.delay_us,
                r.reason.name()
            );
        }
    }
    o.push('}');
    o
}

/// The JSON object for an error on one device.
pub(crate) fn error_json(path: &str, format: Option<Format>, err: &str) -> String {
    let mut o = format!("{{\"device\":{}", json_str(path));
    if let Some(f) = format {
        let _ = write!(o, ",\"format\":\"{}\"", f.name());
    }
    let _ = write!(o, ",\"state\":\"error\",\"error\":{}}}", json_str(err));
    o
}

/// The text line `mmp status` prints for a parsed record.
pub(crate) fn status_text(path: &str, t: &Target, snap: &Snapshot) -> String {
    let what = match snap.class() {
        Class::Clean => "clean: safe to take".to_string(),
        Class::Active => {
            "active (held, or its holder stopped without releasing; `mmp check` tells)".to_string()
        }
        Class::Fsck => "fsck: an e2fsprogs tool holds it".to_string(),
        Class::Unknown => "unknown sequence: refused".to_string(),
        Class::Maintenance => "maintenance".to_string(),
    };
    let extra = match snap {
        Snapshot::Ext4(b) => format!(
            "seq {:#010x}, check interval {} s, update interval {} s",
            b.seq,
            b.check_interval,
            t.superblock.as_ref().map_or(0, |s| s.mmp_update_interval)
        ),
        Snapshot::Native(r) => format!(
            "seq {}, interval {} ms, fail intervals {}, delay {} us, last transition {}",
            r.seq,
            r.interval_ms,
            r.fail_intervals,
            r.delay_us,
            r.reason.name()
        ),
    };
    format!(
        "{path}: {} MMP {what}; {}; {extra}",
        t.format.name(),
        who(snap)
    )
}

/// `mmp dump`: every raw field.
pub(crate) fn dump(
    path: &str,
    t: &Target,
    raw: &[u8],
    parsed: Result<Snapshot, Corrupt>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "device: {path}");
    let _ = writeln!(o, "format: {}", t.format.name());
    let _ = writeln!(o, "io_mode: {}", t.device.io_mode());
    let _ = writeln!(o, "logical_sector_size: {}", t.device.logical_sector_size());
    let _ = writeln!(o, "device_size: {}", t.device.size_bytes());
    if let Some(sb) = &t.superblock {
        let _ = writeln!(o, "superblock:");
        let _ = writeln!(o, "  s_magic: 0xef53");
        let _ = writeln!(o, "  s_blocks_count: {}", sb.blocks_count);
        let _ = writeln!(o, "  s_free_blocks_count: {}", sb.free_blocks_count);
        let _ = writeln!(o, "  s_first_data_block: {}", sb.first_data_block);
        let _ = writeln!(
            o,
            "  s_log_block_size: {} (block size {})",
            sb.log_block_size,
            sb.block_size()
        );
        let _ = writeln!(o, "  s_state: {:#06x}", sb.state);
        let _ = writeln!(o, "  s_errors: {}", sb.errors);
        let _ = writeln!(o, "  s_feature_compat: {:#010x}", sb.feature_compat);
        let _ = writeln!(o, "  s_feature_incompat: {:#010x}", sb.feature_incompat);
        let _ = writeln!(o, "  s_feature_ro_compat: {:#010x}", sb.feature_ro_compat);
        let _ = writeln!(o, "  s_uuid: {}", uuid(&sb.uuid));
        let _ = writeln!(o, "  s_mmp_update_interval: {}", sb.mmp_update_interval);
        let _ = writeln!(o, "  s_mmp_block: {}", sb.mmp_block);
        let _ = writeln!(o, "  s_checksum_type: {}", sb.checksum_type);
        let _ = writeln!(o, "  s_checksum_seed: {:#010x}", sb.checksum_seed);
        let _ = writeln!(o, "  s_checksum: {:#010x}", sb.checksum);
        let _ = writeln!(
            o,
            "  csum_seed: {}",
            sb.csum_seed()
                .map_or("none".to_string(), |s| format!("{s:#010x}"))
        );
        let _ = writeln!(o, "  mmp_offset_bytes: {}", t.layout.offset_bytes());
    }
    let _ = writeln!(
        o,
        "record (offset {}, {} bytes):",
        t.layout.offset_bytes(),
        raw.len()
    );
    let le32 = |r: std::ops::Range<usize>| u32::from_le_bytes(raw[r].try_into().unwrap_or([0; 4]));
    let le64 = |r: std::ops::Range<usize>| u64::from_le_bytes(raw[r].try_into().unwrap_or([0; 8]));
    let le16 = |r: std::ops::Range<usize>| u16::from_le_bytes(raw[r].try_into().unwrap_or([0; 2]));
    match t.format {
        Format::Ext4 => {
            use ext4::field as f;
            let _ = writeln!(o, "  mmp_magic: {:#010x}", le32(f::MAGIC));
            let seq = le32(f::SEQ);
            let _ = writeln!(o, "  mmp_seq: {seq:#010x} ({:?})", ext4::SeqClass::of(seq));
            let time = le64(f::TIME);
            let _ = writeln!(o, "  mmp_time: {time} ({})", utc(time));
            let _ = writeln!(
                o,
                "  mmp_nodename: {}",
                esc(mmp_core::format::trim_name(&raw[f::NODENAME]))
            );
            let _ = writeln!(
                o,
                "  mmp_bdevname: {}",
                esc(mmp_core::format::trim_name(&raw[f::BDEVNAME]))
            );
            let _ = writeln!(o, "  mmp_check_interval: {}", le16(f::CHECK_INTERVAL));
            let _ = writeln!(o, "  mmp_pad1: {}", le16(f::PAD1));
            let nz = raw[f::PAD2].iter().filter(|&&b| b != 0).count();
            let _ = writeln!(o, "  mmp_pad2: {nz} non-zero bytes");
            let _ = writeln!(o, "  mmp_checksum: {:#010x}", le32(f::CHECKSUM));
        }
        Format::Native => {
            use native::field as f;
            let _ = writeln!(o, "  magic: {}", esc(&raw[f::MAGIC]));
            let _ = writeln!(o, "  version: {}", le16(f::VERSION));
            let _ = writeln!(o, "  record_len: {}", le16(f::RECORD_LEN));
            let _ = writeln!(o, "  state: {}", raw[f::STATE.start]);
            let _ = writeln!(o, "  reason: {}", raw[f::REASON.start]);
            let _ = writeln!(o, "  fail_intervals: {}", le16(f::FAIL_INTERVALS));
            let _ = writeln!(o, "  interval_ms: {}", le32(f::INTERVAL_MS));
            let _ = writeln!(o, "  delay_us: {}", le32(f::DELAY_US));
            let _ = writeln!(o, "  seq: {}", le64(f::SEQ));
            let tm = le64(f::TIME_MS);
            let _ = writeln!(o, "  time_ms: {tm} ({})", utc(tm / 1000));
            let _ = writeln!(o, "  hostid: {:#010x}", le32(f::HOSTID));
            let _ = writeln!(o, "  flags: {:#010x}", le32(f::FLAGS));
            let _ = writeln!(o, "  area_id: {}", uuid(&raw[f::AREA_ID]));
            let _ = writeln!(
                o,
                "  nodename: {}",
                esc(mmp_core::format::trim_name(&raw[f::NODENAME]))
            );
            let _ = writeln!(
                o,
                "  devname: {}",
                esc(mmp_core::format::trim_name(&raw[f::DEVNAME]))
            );
            let since = le64(f::SINCE_MS);
            let _ = writeln!(o, "  since_ms: {since} ({})", utc(since / 1000));
            let nz = raw[f::RESERVED].iter().filter(|&&b| b != 0).count();
            let _ = writeln!(o, "  reserved: {nz} non-zero bytes");
            let _ = writeln!(o, "  checksum: {:#010x}", le32(f::CHECKSUM));
        }
    }
    match parsed {
        Ok(s) => {
            let _ = writeln!(o, "valid: yes ({})", state_name(&s));
        }
        Err(e) => {
            let _ = writeln!(o, "valid: no ({e})");
        }
    }
    o
}

fn uuid(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_dates() {
        assert_eq!(esc(b"vm\x1b[31m\\"), "vm\\x1b[31m\\\\");
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_257_665), "2026-11-21 10:41:05 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
