//! A small QMP client: one JSON object per line over a UNIX socket. After the greeting the
//! client sends `qmp_capabilities`; then each command gets one `return` or `error` line, and
//! asynchronous `event` lines may come in between (they are kept with their arrival time).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Result;

/// A QMP connection.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events seen so far: host arrival time and the event name.
    pub events: Vec<(Instant, String)>,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    ///
    /// # Errors
    /// When the socket is not there yet or the handshake fails.
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let writer = stream.try_clone()?;
        let mut q = Self {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read_line()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}").into());
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err("QMP socket closed".into());
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends a command and returns its `return` value.
    ///
    /// # Errors
    /// On a QMP `error` answer, a closed socket or a timeout (30 s).
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        loop {
            let v = self.read_line()?;
            if let Some(ev) = v.get("event").and_then(Value::as_str) {
                self.events.push((Instant::now(), ev.to_owned()));
            } else if let Some(r) = v.get("return") {
                return Ok(r.clone());
            } else if let Some(e) = v.get("error") {
                return Err(format!("QMP {command}: {e}").into());
            }
        }
    }

    /// Reads the events that arrived since the last call, without blocking.
    ///
    /// # Errors
    /// When the socket fails.
    pub fn poll_events(&mut self) -> Result<()> {
        self.reader.get_ref().set_nonblocking(true)?;
        let mut result = Ok(());
        loop {
            match self.read_line() {
                Ok(v) => {
                    if let Some(ev) = v.get("event").and_then(Value::as_str) {
                        self.events.push((Instant::now(), ev.to_owned()));
                    }
                }
                Err(e) => {
                    let would_block = e
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::WouldBlock);
                    if !would_block {
                        result = Err(e);
                    }
                    break;
                }
            }
        }
        self.reader.get_ref().set_nonblocking(false)?;
        result
    }
}

/// One disk's counters from `query-blockstats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// The drive id (`d<index>-<disk name>`).
    pub device: String,
    /// Write requests completed or failed (what the guest issued).
    pub wr_operations: u64,
    /// Bytes written.
    pub wr_bytes: u64,
    /// Read requests.
    pub rd_operations: u64,
    /// Failed writes.
    pub failed_wr_operations: u64,
}

impl BlockStats {
    /// Parses the `return` value of `query-blockstats`.
    ///
    /// # Errors
    /// When it is not a list of objects with `device` and `stats`.
    pub fn parse_all(v: &Value) -> Result<Vec<Self>> {
        let list = v.as_array().ok_or("query-blockstats: not a list")?;
        let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
        list.iter()
            .map(|e| {
                let device = e
                    .get("device")
                    .and_then(Value::as_str)
                    .ok_or("query-blockstats: entry without device")?
                    .to_owned();
                let s = e.get("stats").ok_or("query-blockstats: no stats")?;
                Ok(Self {
                    device,
                    wr_operations: num(s, "wr_operations"),
                    wr_bytes: num(s, "wr_bytes"),
                    rd_operations: num(s, "rd_operations"),
                    failed_wr_operations: num(s, "failed_wr_operations"),
                })
            })
            .collect()
    }
}

/// The writes completed and failed between two `query-blockstats` samples of one node,
/// summed over the drives present in both: (completed, failed).
#[must_use]
pub fn write_deltas(now: &[BlockStats], base: &[BlockStats]) -> (u64, u64) {
    now.iter()
        .filter_map(|s| {
            let b = base.iter().find(|b| b.device == s.device)?;
            Some((
                s.wr_operations.saturating_sub(b.wr_operations),
                s.failed_wr_operations
                    .saturating_sub(b.failed_wr_operations),
            ))
        })
        .fold((0, 0), |(o, f), (o2, f2)| (o + o2, f + f2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blockstats() {
        let v: Value = serde_json::from_str(
            r#"[{"device":"d0-area","stats":{"wr_operations":7,"wr_bytes":3584,
            "rd_operations":9,"failed_wr_operations":0}}]"#,
        )
        .unwrap();
        let s = BlockStats::parse_all(&v).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].device, "d0-area");
        assert_eq!(s[0].wr_operations, 7);
        assert_eq!(s[0].wr_bytes, 3584);
    }

    #[test]
    fn write_deltas_sum_the_drives_in_both_samples() {
        let st = |d: &str, w, f| BlockStats {
            device: d.to_owned(),
            wr_operations: w,
            failed_wr_operations: f,
            ..BlockStats::default()
        };
        let base = [st("s0-area", 10, 0), st("s1-data", 100, 2)];
        let now = [
            st("s0-area", 12, 1),
            st("s1-data", 100, 7),
            st("d2-new", 50, 50),
        ];
        assert_eq!(write_deltas(&now, &base), (2, 6));
        assert_eq!(write_deltas(&base, &base), (0, 0));
    }
}
