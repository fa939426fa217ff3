//! Text and JSON rendering: device-derived names are escaped, times are shown in UTC with
//! their age, and the other side is named the way e2mmpstatus and zpool do.

use crate::json::Obj;
use mmp_core::format::{ext4, native};
use mmp_core::machine::{Class, Corrupt, Identity, Loss, Outcome, Refusal, Snapshot, Timing};
use mmp_linux::target::{Format, Target};
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
    mmp_linux::clock::now().wall_ms
}

/// "node 'oss2' (hostid 0x1234abcd), device 'sdb', last update 2026-11-21 10:45:12 UTC
/// (3.2 s ago)".
pub(crate) fn who(snap: &Snapshot) -> String {
    // A native area as `mmp format` wrote it (or an ext4 MMP block as mke2fs did) names no
    // owner: say so rather than "node '' (hostid 0x00000000)".
    if never_held(snap) {
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
        Refusal::Foreign(s) => match written_recently(s) {
            Some(age) => format!(
                "{path}: last held by another host, {}, and not released; it wrote the block \
                 {age:.1} s ago, within its update interval: it is most likely alive. Do not \
                 use --force (the activity test would refuse anyway); stop it on that host, \
                 or queue with --wait until it releases",
                who(s)
            ),
            None => format!(
                "{path}: last held by another host, {}, and not released; silent since then. \
                 If that host is down (or its mmp was killed), --force takes the device after \
                 the activity test (which still refuses a live owner)",
                who(s)
            ),
        },
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
            io_error_text(*e)
        ),
        Refusal::TooLate { late_by } => format!(
            "{path}: too slow to take the device safely: a result came {:.1} s after the \
             instant it had to beat (the storage or this host stalled); nothing more was \
             written. Retry when the storage responds normally",
            late_by.as_secs_f64()
        ),
    }
}

/// The age in seconds of a block written within about two of its owner's update intervals
/// by this host's clock (a live owner, most likely); `None` for an older one. A time in the
/// future (clocks disagree) counts as recent: in doubt, do not suggest --force.
pub(crate) fn written_recently(s: &Snapshot) -> Option<f64> {
    let interval_ms = match s {
        Snapshot::Native(r) => u64::from(r.interval_ms),
        Snapshot::Ext4(b) => u64::from(b.check_interval.max(1)) * 1000,
    };
    let age_ms = i128::from(now_ms()) - i128::from(s.time_ms());
    (age_ms <= i128::from(2 * interval_ms + 1000)).then(|| age_ms.max(0) as f64 / 1000.0)
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
        Loss::Preempted(_) => format!(
            "{path}: ownership lost: the storage refused our heartbeat with RESERVATION \
             CONFLICT (another host preempted this host's persistent reservation); stopped \
             writing"
        ),
        Loss::ReleaseReadFailed(e) => format!(
            "{path}: release could not verify the block ({}); CLEAN not written, the last \
             heartbeat stays (another host will see it stale)",
            io_error_text(*e)
        ),
    }
}

/// What a protocol run ended with, in words (never Rust's `Debug` text): for the rare ends a
/// command does not expect, such as "released" where a refusal or a hold was due.
pub(crate) fn outcome(path: &str, o: Option<&Outcome>) -> String {
    match o {
        None => "still running".into(),
        Some(Outcome::Safe { stale: false, .. }) => "safe to take (clean)".into(),
        Some(Outcome::Safe { stale: true, .. }) => "safe to take (stale and silent)".into(),
        Some(Outcome::Refused(r)) => refusal(path, r),
        Some(Outcome::Released) => "released (CLEAN written)".into(),
        Some(Outcome::Lost(l)) => loss(path, l, &Identity::new(0, b"", b"")),
        Some(Outcome::Cleared) => "reset to clean".into(),
        Some(Outcome::Aborted) => "interrupted".into(),
    }
}

/// The state name `report_lines` and JSON use for an outcome.
pub(crate) fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Safe { .. } => "safe",
        Outcome::Refused(_) => "refused",
        Outcome::Released => "released",
        Outcome::Lost(_) => "lost",
        Outcome::Cleared => "cleared",
        Outcome::Aborted => "aborted",
    }
}

/// An ext4 MMP sequence's class in words (`mmp dump`).
pub(crate) fn seq_class(seq: u32) -> String {
    match ext4::SeqClass::of(seq) {
        ext4::SeqClass::Clean => "clean".into(),
        ext4::SeqClass::Fsck => "fsck".into(),
        ext4::SeqClass::Live(n) => format!("active, sequence {n}"),
        ext4::SeqClass::Unknown(n) => format!("unknown sequence {n:#010x}"),
    }
}

/// Text for a failed I/O.
pub(crate) fn io_error_text(e: mmp_core::machine::IoError) -> String {
    use mmp_core::machine::IoError;
    match e {
        IoError::Short => "short read".into(),
        IoError::NoErrno => "I/O refused without an OS error".into(),
        e if e.is_reservation_conflict() => {
            "RESERVATION CONFLICT: another host holds the SCSI persistent reservation".into()
        }
        IoError::Os(errno) => std::io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// Whether a refusal means "in use / in doubt but readable" (exit 1) rather than an error
/// (exit 2).
pub(crate) fn refusal_code(r: &Refusal) -> crate::exit::Exit {
    use crate::exit::Exit;
    match r {
        Refusal::Corrupt(_) | Refusal::Io(_) | Refusal::NoHostid => Exit::Error,
        _ => Exit::Refused,
    }
}

/// The object `mmp status --json` (and `--export`) prints for a parsed record
/// (docs/json.md). `mounted_at`: where this host has the device mounted, if it does.
pub(crate) fn status_obj(path: &str, t: &Target, snap: &Snapshot, mounted_at: Option<&str>) -> Obj {
    let age_ms = i128::from(now_ms()) - i128::from(snap.time_ms());
    // The waits an acquire of this device can take: now, and after its owner crashed.
    let timing = Timing::for_snapshot(&t.layout, snap);
    let clean = snap.class() == Class::Clean;
    let o = Obj::device("status", path, Some(t.format))
        .str("state", state_name(snap))
        .str("seq", &snap.seq().to_string())
        .str("node", &esc(snap.nodename()))
        .str("device_name", &esc(snap.devname()))
        .raw("time", snap.time_ms() / 1000)
        .raw("age_s", format!("{:.3}", age_ms as f64 / 1000.0))
        .raw("never_held", never_held(snap))
        .opt_str("mounted_at", mounted_at)
        .raw(
            "acquire_wait_ms",
            timing.max_acquire_wait(clean).as_millis(),
        )
        .raw(
            "takeover_wait_ms",
            timing.max_acquire_wait(false).as_millis(),
        );
    match snap {
        Snapshot::Ext4(b) => {
            let sb = t.superblock.as_ref();
            o.raw("mmp_block", sb.map_or(0, |s| s.mmp_block))
                .raw("check_interval_s", b.check_interval)
                .raw("update_interval_s", sb.map_or(0, |s| s.mmp_update_interval))
        }
        Snapshot::Native(r) => o
            .raw("hostid", r.hostid)
            .str("hostid_hex", &format!("0x{:08x}", r.hostid))
            .raw("interval_ms", r.interval_ms)
            .raw("fail_intervals", r.fail_intervals)
            .raw("delay_us", r.delay_us)
            .str("reason", r.reason.name()),
    }
}

/// Error text for an admin: without Rust's " (os error N)" after an errno's text.
pub(crate) fn plain(msg: &str) -> String {
    let mut s = msg.to_string();
    while let Some(a) = s.find(" (os error ") {
        let Some(len) = s[a..].find(')') else { break };
        s.replace_range(a..=a + len, "");
    }
    s
}

/// The JSON object for an error on one device (`kind`: `status` or `check`).
pub(crate) fn error_json(kind: &str, path: &str, format: Option<Format>, err: &str) -> String {
    error_obj(kind, path, format, err).end()
}

/// The object of [`error_json`].
pub(crate) fn error_obj(kind: &str, path: &str, format: Option<Format>, err: &str) -> Obj {
    let err = &plain(err);
    let o = Obj::device(kind, path, format);
    let o = if kind == "check" {
        o.str("result", "error").str("message", err)
    } else {
        o.str("state", "error")
    };
    o.str("error", err)
}

/// Whether the record was never written by a holder: a native area as `mmp format` wrote
/// it, or a clean ext4 MMP block with no node and no device name. mke2fs and tune2fs record
/// the node and device they ran on, so their blocks do not count: nothing tells them from a
/// clean release.
pub(crate) fn never_held(snap: &Snapshot) -> bool {
    let nameless = snap.nodename().is_empty() && snap.devname().is_empty();
    match snap {
        Snapshot::Native(r) => r.reason == native::Reason::Formatted && r.hostid == 0 && nameless,
        Snapshot::Ext4(_) => snap.class() == Class::Clean && nameless,
    }
}

/// The text line `mmp status` prints for a parsed record.
pub(crate) fn status_text(
    path: &str,
    t: &Target,
    snap: &Snapshot,
    mounted_at: Option<&str>,
) -> Vec<String> {
    let what = match (snap.class(), mounted_at) {
        (Class::Active, Some(mp)) if t.format == Format::Ext4 => {
            format!("active: mounted on this host (at {mp}); this host's kernel heartbeats it")
        }
        (Class::Clean, _) => "clean: safe to take".to_string(),
        (Class::Active, _) => {
            "active (held, or its holder stopped without releasing; `mmp check` tells)".to_string()
        }
        (Class::Fsck, _) => "fsck: an e2fsprogs tool holds it".to_string(),
        (Class::Unknown, _) => "unknown sequence: refused".to_string(),
        (Class::Maintenance, _) => "maintenance".to_string(),
    };
    let what = match mounted_at {
        Some(mp) if !what.contains("mounted on this host") => {
            format!("{what}; mounted on this host (at {mp})")
        }
        _ => what,
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
    vec![
        format!("{path}: {} MMP {what}", t.format.name()),
        who(snap),
        extra,
    ]
}

/// The width of the terminal on stdout, when stdout is a terminal.
pub(crate) fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal as _;
    let out = std::io::stdout();
    if !out.is_terminal() {
        return None;
    }
    let ws = rustix::termios::tcgetwinsize(&out).ok();
    let cols = ws.map_or(0, |w| usize::from(w.ws_col));
    if cols > 0 {
        return Some(cols);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .or(Some(80))
}

/// A `status` record as text: one line when piped (`PATH: ... ; WHO; DETAILS`, for scripts);
/// on a terminal of `width` columns, the path and state first, then the owner and the
/// details indented below, wrapped at spaces; a name too long for a line loses its middle
/// (marked `...`).
pub(crate) fn status_lines(parts: &[String], width: Option<usize>) -> String {
    let Some(w) = width else {
        return parts.join("; ");
    };
    let w = w.max(30);
    let mut details: Vec<&str> = Vec::new();
    let mut lines = Vec::new();
    let head = parts.first().map_or("", String::as_str);
    match head.split_once(": ") {
        _ if head.chars().count() <= w => lines.push(head.to_string()),
        Some((path, what)) => {
            lines.push(fit(&format!("{path}:"), w));
            details.push(what);
        }
        None => lines.push(fit(head, w)),
    }
    details.extend(parts.iter().skip(1).map(String::as_str));
    let room = w - 4;
    for d in details {
        let mut cur = String::new();
        for word in d.split(' ') {
            let word = fit(word, room);
            if cur.is_empty() {
                cur = word;
            } else if cur.chars().count() + 1 + word.chars().count() <= room {
                cur.push(' ');
                cur.push_str(&word);
            } else {
                lines.push(format!("    {cur}"));
                cur = word;
            }
        }
        lines.push(format!("    {cur}"));
    }
    lines.join("\n")
}

/// `s` shortened to `width` characters: first the longest quoted name or the leading path
/// loses its middle (`...`), then the end of the line.
pub(crate) fn fit(s: &str, width: usize) -> String {
    let mut s = s.to_string();
    let len = |s: &str| s.chars().count();
    while len(&s) > width {
        // Candidates: the text inside '...' quotes, and the path before the first ": ".
        let mut spans: Vec<(usize, usize)> = Vec::new();
        if let Some(end) = s.find(": ") {
            spans.push((0, end));
        } else if !s.contains(' ') && !s.contains('\'') {
            // One word (a path on a line of its own): all of it but a trailing colon.
            spans.push((0, s.trim_end_matches([':', ',']).len()));
        }
        let mut from = 0;
        while let Some(a) = s[from..].find('\'') {
            let a = from + a + 1;
            let Some(b) = s[a..].find('\'') else { break };
            spans.push((a, a + b));
            from = a + b + 1;
        }
        let Some(&(a, b)) = spans
            .iter()
            .filter(|(a, b)| len(&s[*a..*b]) > 12)
            .max_by_key(|(a, b)| len(&s[*a..*b]))
        else {
            break;
        };
        let name: Vec<char> = s[a..b].chars().collect();
        let over = len(&s) - width;
        let keep = name.len().saturating_sub(over + 3).max(9);
        if keep + 3 >= name.len() {
            break;
        }
        let head: String = name[..keep - keep / 2].iter().collect();
        let tail: String = name[name.len() - keep / 2..].iter().collect();
        s.replace_range(a..b, &format!("{head}...{tail}"));
    }
    if len(&s) > width {
        let cut: String = s.chars().take(width.saturating_sub(3)).collect();
        s = format!("{cut}...");
    }
    s
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
            let _ = writeln!(o, "  mmp_seq: {seq:#010x} ({})", seq_class(seq));
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
    fn long_names_lose_their_middle() {
        let s = "/dev/mapper/a-very-long-multipath-name-0123456789: ext4 MMP clean";
        let f = fit(s, 40);
        assert_eq!(f.chars().count(), 40, "{f}");
        assert!(f.contains("...") && f.ends_with(": ext4 MMP clean"), "{f}");
        let s = "node 'a-node-name-that-goes-on-and-on-and-on', device 'sdb'";
        let f = fit(s, 40);
        assert!(
            f.chars().count() <= 40 && f.ends_with("', device 'sdb'"),
            "{f}"
        );
        assert_eq!(fit("short", 40), "short");
        assert!(fit(&"x".repeat(100), 30).chars().count() <= 30);
    }

    #[test]
    fn escapes_and_dates() {
        assert_eq!(esc(b"vm\x1b[31m\\"), "vm\\x1b[31m\\\\");
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_257_665), "2026-11-21 10:41:05 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
