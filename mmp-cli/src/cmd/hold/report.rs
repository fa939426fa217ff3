//! What a holder tells the outside: its lines on stdout, systemd's readiness notice, the
//! per-device JSON report (SIGHUP, `--status-file`) and the `--state-file`.

use crate::out;
use mmp_core::machine::{Identity, Outcome};
use mmp_linux::engine::Report;
use mmp_linux::target;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prints one line on stdout and flushes it, ignoring errors: a holder must keep
/// heartbeating (and release cleanly) even when whoever read its stdout has gone away.
pub(super) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Tells systemd (`NOTIFY_SOCKET`, `Type=notify` units) that every device is held: sent at
/// the moment `acquired` is printed. Nothing without a socket; a failure is only a warning.
pub(super) fn notify_ready() {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = sock.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| s.send_to_addr(b"READY=1\n", &a))
    } else {
        s.send_to(b"READY=1\n", Path::new(&sock))
    };
    if let Err(e) = res {
        note!("mmp: warning: could not notify systemd: {e}");
    }
}

/// Per-device state lines (JSON, docs/json.md), for SIGHUP and the status file: one `holder`
/// object per device, then a `summary`.
pub(super) fn report_lines(r: &Report, formats: &[target::Format], ids: &[Identity]) -> String {
    let mut s = String::new();
    let fence = r.self_fence.map_or("off", |f| f.name());
    for (i, d) in r.slots.iter().enumerate() {
        let st = d.stats;
        let state = match d.outcome {
            None if d.owned_until.is_some() => "held",
            None => d.phase.name(),
            Some(o) => out::outcome_name(&o),
        };
        let path = out::esc(d.path.as_os_str().as_encoded_bytes());
        let o = crate::json::Obj::device("holder", &path, formats.get(i).copied())
            .str("state", state)
            .raw(
                "last_write",
                d.last_write_wall_ms
                    .map_or("null".to_string(), |t| format!("{:.3}", t as f64 / 1000.0)),
            )
            .raw(
                "last_cycle_ms",
                format!("{:.3}", st.last_cycle.as_secs_f64() * 1000.0),
            )
            .raw(
                "advertised_delay_ms",
                format!("{:.3}", st.advertised_delay.as_secs_f64() * 1000.0),
            )
            .raw("interval_ms", st.interval.as_millis())
            .raw("fail_window_ms", st.fail_window.as_millis())
            .raw("beats", st.beats)
            .raw("io_failures", st.io_failures)
            .raw(
                "max_gap_ms",
                format!("{:.3}", st.max_gap.as_secs_f64() * 1000.0),
            )
            .str("self_fence", fence);
        let o = match (d.outcome, ids.get(i)) {
            (Some(Outcome::Refused(x)), _) => o.str("error", &out::refusal(&path, &x)),
            (Some(Outcome::Lost(l)), Some(me)) => o.str("error", &out::loss(&path, &l, me)),
            _ => o,
        };
        s.push_str(&o.end());
        s.push('\n');
    }
    let g = &r.gaps;
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    let summary = crate::json::Obj::new("summary")
        .raw("summary", true)
        .raw("devices", r.slots.len())
        .raw("gaps", g.count())
        .raw("gap_p50_ms", ms(g.quantile(0.5)))
        .raw("gap_p99_ms", ms(g.quantile(0.99)))
        .raw("gap_p999_ms", ms(g.quantile(0.999)))
        .raw("gap_max_ms", ms(g.max()))
        .str("self_fence", fence)
        .raw("watchdog_pets", r.watchdog_pets)
        .raw("mlock", rt_json(r.realtime.mlock.as_ref()))
        .raw("sched_fifo", rt_json(r.realtime.fifo.as_ref()))
        .str("io", &r.io);
    s.push_str(&summary.end());
    s.push('\n');
    s
}

/// A real-time setting's state as a JSON string: `off` (not asked), `ok`, or why it failed.
fn rt_json(r: Option<&Result<(), String>>) -> String {
    match r {
        None => "\"off\"".into(),
        Some(Ok(())) => "\"ok\"".into(),
        Some(Err(e)) => out::json_str(&out::plain(e)),
    }
}

/// Replaces the file at `path` with `body` through `PATH.tmp` and a rename: a reader sees
/// the old or the new text, never half of one. Errors are ignored: the holder keeps
/// heartbeating.
pub(super) fn write_status_file(path: &Path, body: &str) {
    // PATH.tmp: the status and state files of one holder never share a temporary.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// The holder's state file (`--state-file`): KEY=VALUE lines, schema 1 (docs/json.md).
pub(super) struct StateFile<'a>(pub(super) Option<&'a Path>);

/// The version of the state file's format. Adding keys keeps it.
const STATE_SCHEMA: u32 = 1;

impl StateFile<'_> {
    /// Replaces the file (write to a temporary, then rename: a reader sees the old or the new
    /// state, never half of one). Errors are ignored: the holder keeps heartbeating.
    pub(super) fn write(&self, state: &str, exit: Option<u8>) {
        self.write_with(state, exit, "");
    }

    /// `state=ready` with the holder's health, refreshed every second: the shortest
    /// interval and fail window of its devices, the oldest last successful heartbeat write
    /// (Unix seconds), the longest last heartbeat cycle, and how many devices were lost.
    pub(super) fn ready(&self, r: &Report) {
        if self.0.is_none() {
            return;
        }
        let held = r.slots.iter().filter(|s| !s.forgotten);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (mut iv, mut fw, mut cycle) = (None::<Duration>, None::<Duration>, Duration::ZERO);
        let (mut oldest, mut lost) = (None::<u64>, 0u32);
        for s in held {
            if matches!(s.outcome, Some(Outcome::Lost(_))) {
                lost += 1;
            }
            iv = Some(iv.map_or(s.stats.interval, |v| v.min(s.stats.interval)));
            fw = Some(fw.map_or(s.stats.fail_window, |v| v.min(s.stats.fail_window)));
            cycle = cycle.max(s.stats.last_cycle);
            if let Some(w) = s.last_write_wall_ms {
                oldest = Some(oldest.map_or(w, |o| o.min(w)));
            }
        }
        let mut live = format!("lost={lost}\nlast_cycle_ms={:.0}\n", ms(cycle));
        if let (Some(iv), Some(fw)) = (iv, fw) {
            live.push_str(&format!(
                "interval_ms={:.0}\nfail_window_ms={:.0}\n",
                ms(iv),
                ms(fw)
            ));
        }
        if let Some(w) = oldest {
            live.push_str(&format!("last_write={}.{:03}\n", w / 1000, w % 1000));
        }
        // When these figures were true: a reader judges the last write's age as of this
        // instant, not as of its own clock a second later.
        let now = mmp_linux::clock::now().wall_ms;
        live.push_str(&format!("updated={}.{:03}\n", now / 1000, now % 1000));
        self.write_with("ready", None, &live);
    }

    /// The file's common lines (schema, pid, the process's start time, state, exit status),
    /// then `extra`.
    fn write_with(&self, state: &str, exit: Option<u8>, extra: &str) {
        let Some(path) = self.0 else {
            return;
        };
        let pid = std::process::id();
        let mut body = format!("schema={STATE_SCHEMA}\npid={pid}\n");
        if let Some(t) = crate::cmd::mount::proc_start_time(pid) {
            body.push_str(&format!("start={t}\n"));
        }
        body.push_str(&format!("state={state}\n"));
        if let Some(code) = exit {
            body.push_str(&format!("exit={code}\n"));
        }
        body.push_str(extra);
        write_status_file(path, &body);
    }
}
