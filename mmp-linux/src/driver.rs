//! The blocking loop that drives one [`Machine`] against a real device: performs its I/O,
//! feeds it the clock, and sleeps until its deadlines. The heartbeat engine
//! ([`crate::engine`]) uses the same [`pump`] for many machines on one thread.
//!
//! # Fault injection and the owner log (tests and the fault campaign)
//!
//! [`pump`] consults a [`FaultHook`] before every real read and write. Production code passes
//! [`NoFaults`] or [`EnvFaults`], which injects nothing unless one of these environment
//! variables is set:
//!
//! * `MMP_FAULT_EIO_FILE=PATH`: every I/O fails with EIO while `PATH` exists.
//! * `MMP_FAULT_PLAN=PATH`: a [`FaultPlan`] (EIO on reads and writes, added latency with
//!   spikes, pauses around I/O, lost writes, torn writes at sector granularity), in the text
//!   format of `docs/RELIABILITY.md`; the simulator prints its counterexamples in the same
//!   format, so they replay against real processes. An unreadable plan fails every I/O.
//! * `MMP_FAULT_LOG=PATH`: with a plan, append one line per injected fault.
//!
//! [`OwnerLog`] wraps a hook and appends, to a log outside the device, when this process
//! starts and stops believing it owns each device and an upper bound of its lease before
//! every heartbeat write (`mmp hold --owner-log`): the race harness proves from these logs
//! that no two processes' ownership intervals overlap.

use crate::blockdev::{Device, DeviceError};
use crate::clock;
use mmp_core::machine::{Event, IoError, IoRequest, MAX_RECORD_LEN, Machine, Outcome, Phase};
use mmp_core::time::{Duration, Instant};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The sector size torn writes are cut at.
pub const SECTOR: usize = 512;

/// What happens to one I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultAction {
    /// Perform it.
    #[default]
    Proceed,
    /// Do not perform it; report this errno.
    Fail(i32),
    /// Writes only (a read proceeds): write only the first `sectors` 512-byte sectors of the
    /// record (0: nothing at all), then report success (`errno: None`) or the error. A lost
    /// write is `Partial { sectors: 0, errno: None }`; an EIO after the data landed is
    /// `Partial { sectors: all, errno: Some(5) }`.
    Partial {
        /// Sectors written from the start of the record.
        sectors: u32,
        /// The error reported afterwards, if any.
        errno: Option<i32>,
    },
}

/// A hook's decision for one I/O: sleep, act, sleep, then report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// Sleep this long before performing the I/O (latency before the data moves; for a write
    /// this is after `emit_block`, like a process paused with the block in hand).
    pub delay_before: Duration,
    /// Sleep this long after performing it, before the machine hears the result.
    pub delay_after: Duration,
    /// What happens to the I/O.
    pub action: FaultAction,
}

impl Fault {
    /// No fault.
    pub const NONE: Fault = Fault {
        delay_before: Duration::ZERO,
        delay_after: Duration::ZERO,
        action: FaultAction::Proceed,
    };

    /// Fail at once with `errno`.
    #[must_use]
    pub const fn fail(errno: i32) -> Fault {
        Fault {
            delay_before: Duration::ZERO,
            delay_after: Duration::ZERO,
            action: FaultAction::Fail(errno),
        }
    }
}

/// What a hook is told about an I/O about to be performed.
#[derive(Clone, Copy, Debug)]
pub struct IoInfo<'a> {
    /// The device.
    pub device: &'a Device,
    /// The machine that asked for it (a write's block is already emitted).
    pub machine: &'a Machine,
    /// Write (else read).
    pub write: bool,
    /// Record length in bytes.
    pub len: usize,
}

/// Fault hooks for tests: [`pump`] consults them before every I/O and tells them every
/// machine event. Production code passes [`NoFaults`] or [`EnvFaults`] (inert unless its
/// environment variables are set).
pub trait FaultHook {
    /// Decide what happens to this I/O.
    fn before_io(&mut self, io: &IoInfo<'_>) -> Fault;

    /// A machine event, as soon as the machine produced it (before the caller sees it).
    fn on_event(&mut self, _device: &Device, _machine: &Machine, _event: &Event) {}
}

/// No fault injection.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFaults;

impl FaultHook for NoFaults {
    fn before_io(&mut self, _io: &IoInfo<'_>) -> Fault {
        Fault::NONE
    }
}

// ----- fault plans ---------------------------------------------------------------------------

/// A fault plan: the knobs of the simulator's `Faults` (`tests/src/sim.rs`), applied to real
/// I/O by [`PlanFaults`]. All zero: no faults.
///
/// Knobs the driver applies to each I/O: latency (`lat_min_us` plus an exponential extra
/// with mean `lat_mean_us` capped at ten means, and with probability `spike_p` a spike of up
/// to `spike_max_us`, split at random before and after the I/O), `io_pause_p` (a pause of up
/// to `pause_max_us` before a read or after a write's block was emitted), `eio_read_p`,
/// `eio_write_p` (half of the failed writes land anyway), `lost_write_p` (acknowledged,
/// never written), `torn_write_p` (a strict prefix of the record's sectors lands, then
/// success or, half the time, EIO).
///
/// Knobs for the process-level harness (the driver ignores them): `pause_gap_us` (mean time
/// between SIGSTOPs of one process, each up to `pause_max_us`), `crash_gap_us` (mean time
/// between SIGKILLs), `down_max_us` (longest time a killed host stays down), and `drift`
/// (informational: real clocks cannot be made to drift).
///
/// Keys starting with `scenario.` are carried for replay harnesses and ignored here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// The generator's seed (a random one if `None`).
    pub seed: Option<u64>,
    /// Smallest added latency.
    pub lat_min_us: u64,
    /// Mean of the exponential extra latency.
    pub lat_mean_us: u64,
    /// Probability of a latency spike per I/O.
    pub spike_p: f64,
    /// Largest spike.
    pub spike_max_us: u64,
    /// EIO probability per read.
    pub eio_read_p: f64,
    /// EIO probability per write.
    pub eio_write_p: f64,
    /// Probability that a write is acknowledged but never lands.
    pub lost_write_p: f64,
    /// Probability that a write lands torn (a strict prefix of its sectors).
    pub torn_write_p: f64,
    /// Harness: mean time between pauses of one process.
    pub pause_gap_us: u64,
    /// Probability of a pause right before a read or right after a write's block was emitted.
    pub io_pause_p: f64,
    /// Longest pause.
    pub pause_max_us: u64,
    /// Harness: mean time between kills of one process.
    pub crash_gap_us: u64,
    /// Harness: longest time a killed host stays down.
    pub down_max_us: u64,
    /// Informational: the simulator's clocks drifted.
    pub drift: bool,
    /// `scenario.*` keys, in order (for replay harnesses).
    pub scenario: Vec<(String, String)>,
    /// Targeted delays (`delay.<phase>.<read|write>.<before|after>_us = N`): every I/O of
    /// that kind while the machine is in that phase waits `N` µs more before the data
    /// moves (for a write: after its block was emitted, so it lands late) or after it
    /// moved (before the machine hears the result: the result is handled late). For
    /// regression tests of the protocol's timing rules with real processes.
    pub delays: Vec<PhaseDelay>,
}

/// One targeted delay of a [`FaultPlan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseDelay {
    /// The machine's phase when the I/O is performed.
    pub phase: Phase,
    /// Writes (else reads).
    pub write: bool,
    /// After the data moved (else before).
    pub after: bool,
    /// How long.
    pub us: u64,
}

impl PhaseDelay {
    /// The plan key, e.g. `delay.releasing.write.before_us`.
    #[must_use]
    pub fn key(&self) -> String {
        format!(
            "delay.{}.{}.{}_us",
            self.phase.name(),
            if self.write { "write" } else { "read" },
            if self.after { "after" } else { "before" }
        )
    }

    fn parse_key(k: &str) -> Option<(Phase, bool, bool)> {
        let rest = k.strip_prefix("delay.")?;
        let mut it = rest.split('.');
        let (phase, kind, when) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let phase = Phase::from_name(phase).filter(|p| *p != Phase::Done)?;
        let write = match kind {
            "read" => false,
            "write" => true,
            _ => return None,
        };
        let after = match when {
            "before_us" => false,
            "after_us" => true,
            _ => return None,
        };
        Some((phase, write, after))
    }
}

/// Why a fault plan does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault plan line {line}: {what}")]
pub struct PlanError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: String,
}

impl FaultPlan {
    /// Parses the text format (`key = value` lines, `#` comments; see
    /// `docs/RELIABILITY.md`). Unknown keys are errors, except `scenario.*`.
    ///
    /// # Errors
    /// [`PlanError`] naming the first bad line.
    pub fn parse(text: &str) -> Result<FaultPlan, PlanError> {
        let mut p = FaultPlan::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |what: String| PlanError { line, what };
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                return Err(err(format!("expected `key = value`, got {l:?}")));
            };
            let (k, v) = (k.trim(), v.trim());
            if let Some(rest) = k.strip_prefix("scenario.") {
                if rest.is_empty() {
                    return Err(err("empty scenario key".into()));
                }
                p.scenario.push((k.to_string(), v.to_string()));
                continue;
            }
            let int = || -> Result<u64, PlanError> {
                let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(h) => u64::from_str_radix(&h.replace('_', ""), 16),
                    None => v.replace('_', "").parse(),
                };
                r.map_err(|_| err(format!("{k}: expected an integer, got {v:?}")))
            };
            if k.starts_with("delay.") {
                let Some((phase, write, after)) = PhaseDelay::parse_key(k) else {
                    return Err(err(format!(
                        "{k}: expected delay.<phase>.<read|write>.<before|after>_us"
                    )));
                };
                p.delays.push(PhaseDelay {
                    phase,
                    write,
                    after,
                    us: int()?,
                });
                continue;
            }
            let prob = || -> Result<f64, PlanError> {
                match v.parse::<f64>() {
                    Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
                    _ => Err(err(format!(
                        "{k}: expected a probability from 0 to 1, got {v:?}"
                    ))),
                }
            };
            match k {
                "seed" => p.seed = Some(int()?),
                "lat_min_us" => p.lat_min_us = int()?,
                "lat_mean_us" => p.lat_mean_us = int()?,
                "spike_p" => p.spike_p = prob()?,
                "spike_max_us" => p.spike_max_us = int()?,
                "eio_read_p" => p.eio_read_p = prob()?,
                "eio_write_p" => p.eio_write_p = prob()?,
                "lost_write_p" => p.lost_write_p = prob()?,
                "torn_write_p" => p.torn_write_p = prob()?,
                "pause_gap_us" => p.pause_gap_us = int()?,
                "io_pause_p" => p.io_pause_p = prob()?,
                "pause_max_us" => p.pause_max_us = int()?,
                "crash_gap_us" => p.crash_gap_us = int()?,
                "down_max_us" => p.down_max_us = int()?,
                "drift" => {
                    p.drift = match v {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(err(format!("drift: expected true or false, got {v:?}"))),
                    }
                }
                _ => return Err(err(format!("unknown key {k:?}"))),
            }
        }
        Ok(p)
    }

    /// The text format; [`FaultPlan::parse`] gives back an equal plan.
    #[must_use]
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("# mmp fault plan (docs/RELIABILITY.md)\n");
        if let Some(seed) = self.seed {
            let _ = writeln!(s, "seed = {seed}");
        }
        let ints = [
            ("lat_min_us", self.lat_min_us),
            ("lat_mean_us", self.lat_mean_us),
            ("spike_max_us", self.spike_max_us),
            ("pause_gap_us", self.pause_gap_us),
            ("pause_max_us", self.pause_max_us),
            ("crash_gap_us", self.crash_gap_us),
            ("down_max_us", self.down_max_us),
        ];
        let probs = [
            ("spike_p", self.spike_p),
            ("eio_read_p", self.eio_read_p),
            ("eio_write_p", self.eio_write_p),
            ("lost_write_p", self.lost_write_p),
            ("torn_write_p", self.torn_write_p),
            ("io_pause_p", self.io_pause_p),
        ];
        for (k, v) in ints {
            let _ = writeln!(s, "{k} = {v}");
        }
        for (k, v) in probs {
            let _ = writeln!(s, "{k} = {v}");
        }
        let _ = writeln!(s, "drift = {}", self.drift);
        for d in &self.delays {
            let _ = writeln!(s, "{} = {}", d.key(), d.us);
        }
        for (k, v) in &self.scenario {
            let _ = writeln!(s, "{k} = {v}");
        }
        s
    }

    /// The value of `scenario.<key>`, if present.
    #[must_use]
    pub fn scenario(&self, key: &str) -> Option<&str> {
        self.scenario
            .iter()
            .find(|(k, _)| k.strip_prefix("scenario.") == Some(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Faults injected so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// I/Os seen.
    pub ios: u64,
    /// Reads failed with EIO.
    pub eio_reads: u64,
    /// Writes failed with EIO (landed or not).
    pub eio_writes: u64,
    /// Writes acknowledged but dropped.
    pub lost_writes: u64,
    /// Writes torn (a strict prefix of sectors landed).
    pub torn_writes: u64,
    /// Latency spikes.
    pub spikes: u64,
    /// Pauses around I/O.
    pub pauses: u64,
}

/// splitmix64, the simulator's generator (same distributions).
#[derive(Clone, Debug)]
struct PlanRng(u64);

impl PlanRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let n = hi - lo;
        if n == u64::MAX {
            return self.next_u64();
        }
        // The high half of a 128-bit product is below n + 1.
        lo + u64::try_from((u128::from(self.next_u64()) * u128::from(n + 1)) >> 64).unwrap_or(0)
    }

    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    fn exp(&mut self, mean: u64) -> u64 {
        if mean == 0 {
            return 0;
        }
        let v = -(1.0 - self.unit()).ln() * mean as f64;
        (v as u64).min(mean.saturating_mul(10))
    }
}

/// Applies a [`FaultPlan`] to real I/O (see its docs for what each knob does).
#[derive(Debug)]
pub struct PlanFaults {
    plan: FaultPlan,
    rng: PlanRng,
    counts: FaultCounts,
    log: Option<std::fs::File>,
}

impl PlanFaults {
    /// A hook for `plan` (seeded from the plan, else at random).
    #[must_use]
    pub fn new(plan: FaultPlan) -> Self {
        let seed = plan.seed.unwrap_or_else(clock::random_seed);
        PlanFaults {
            plan,
            rng: PlanRng(seed),
            counts: FaultCounts::default(),
            log: None,
        }
    }

    /// Also append one line per injected fault to `path`:
    /// `fault <kind> <pid> <CLOCK_MONOTONIC ns> <device>`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn with_log(mut self, path: &Path) -> std::io::Result<Self> {
        self.log = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        );
        Ok(self)
    }

    /// The plan.
    #[must_use]
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Faults injected so far.
    #[must_use]
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    fn note(&mut self, kind: &str, dev: &Device) {
        if let Some(f) = self.log.as_mut() {
            let line = format!(
                "fault {kind} {} {} {}\n",
                std::process::id(),
                mono_ns(),
                dev.path().display()
            );
            let _ = f.write_all(line.as_bytes());
        }
    }
}

impl FaultHook for PlanFaults {
    fn before_io(&mut self, io: &IoInfo<'_>) -> Fault {
        let p = &self.plan;
        let r = &mut self.rng;
        self.counts.ios += 1;
        let mut lat = p.lat_min_us + r.exp(p.lat_mean_us);
        let spike = r.chance(p.spike_p);
        if spike {
            lat += r.range(0, p.spike_max_us);
        }
        // The data moves at a random instant between issue and completion.
        let before = r.range(0, lat);
        let mut fault = Fault {
            delay_before: Duration::from_micros(before),
            delay_after: Duration::from_micros(lat - before),
            action: FaultAction::Proceed,
        };
        let pause = p.pause_max_us > 0 && r.chance(p.io_pause_p);
        if pause {
            fault.delay_before += Duration::from_micros(r.range(1, p.pause_max_us));
        }
        let sectors = u32::try_from(io.len / SECTOR).unwrap_or(u32::MAX);
        let mut kind = None;
        if !io.write {
            if r.chance(p.eio_read_p) {
                fault.action = FaultAction::Fail(5);
                kind = Some("eio_read");
            }
        } else if r.chance(p.eio_write_p) {
            fault.action = if r.chance(0.5) {
                kind = Some("eio_write_landed");
                FaultAction::Partial {
                    sectors,
                    errno: Some(5),
                }
            } else {
                kind = Some("eio_write");
                FaultAction::Fail(5)
            };
        } else if r.chance(p.lost_write_p) {
            fault.action = FaultAction::Partial {
                sectors: 0,
                errno: None,
            };
            kind = Some("lost_write");
        } else if sectors > 1 && r.chance(p.torn_write_p) {
            let k = u32::try_from(r.range(1, u64::from(sectors) - 1)).unwrap_or(1);
            let eio = r.chance(0.5);
            fault.action = FaultAction::Partial {
                sectors: k,
                errno: eio.then_some(5),
            };
            kind = Some(if eio { "torn_write_eio" } else { "torn_write" });
        }
        let phase = io.machine.phase();
        for d in p
            .delays
            .iter()
            .filter(|d| d.phase == phase && d.write == io.write)
        {
            let us = Duration::from_micros(d.us);
            if d.after {
                fault.delay_after += us;
            } else {
                fault.delay_before += us;
            }
        }
        if spike {
            self.counts.spikes += 1;
            self.note("spike", io.device);
        }
        if pause {
            self.counts.pauses += 1;
            self.note("io_pause", io.device);
        }
        if let Some(k) = kind {
            match k {
                "eio_read" => self.counts.eio_reads += 1,
                "eio_write" | "eio_write_landed" => self.counts.eio_writes += 1,
                "lost_write" => self.counts.lost_writes += 1,
                _ => self.counts.torn_writes += 1,
            }
            self.note(k, io.device);
        }
        fault
    }
}

/// Fault injection from the environment, for tests and the fault campaign (see the module
/// docs): `MMP_FAULT_EIO_FILE` (every I/O fails with EIO while that file exists),
/// `MMP_FAULT_PLAN` (a [`FaultPlan`]) and `MMP_FAULT_LOG`. Only read when a variable is set;
/// a plain `mmp` run never looks at the file system for them.
///
/// Only in test builds: builds with debug assertions, or with the `fault-injection` feature.
/// A release build ignores the variables (with one warning on stderr), so a stray
/// environment cannot make production I/O fail.
#[derive(Debug, Default)]
pub struct EnvFaults {
    path: Option<PathBuf>,
    plan: Option<PlanFaults>,
    /// `MMP_FAULT_PLAN` was set but unusable: every I/O fails (in doubt, refuse).
    broken: bool,
}

impl EnvFaults {
    /// Reads `MMP_FAULT_EIO_FILE`, `MMP_FAULT_PLAN` and `MMP_FAULT_LOG`. A plan that cannot be
    /// read or parsed is reported on stderr and makes every I/O fail with EIO.
    #[must_use]
    pub fn from_env() -> Self {
        if !FAULTS_BUILT_IN {
            warn_faults_ignored();
            return EnvFaults::default();
        }
        let mut f = EnvFaults {
            path: std::env::var_os("MMP_FAULT_EIO_FILE").map(Into::into),
            plan: None,
            broken: false,
        };
        if let Some(p) = std::env::var_os("MMP_FAULT_PLAN") {
            let p = PathBuf::from(p);
            let res = std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| FaultPlan::parse(&t).map_err(|e| e.to_string()))
                .and_then(|plan| {
                    let h = PlanFaults::new(plan);
                    match std::env::var_os("MMP_FAULT_LOG") {
                        Some(l) => h.with_log(Path::new(&l)).map_err(|e| e.to_string()),
                        None => Ok(h),
                    }
                });
            match res {
                Ok(h) => f.plan = Some(h),
                Err(e) => {
                    eprintln!(
                        "mmp: MMP_FAULT_PLAN={}: {e}; every I/O will fail",
                        p.display()
                    );
                    f.broken = true;
                }
            }
        }
        f
    }

    /// The plan hook, when `MMP_FAULT_PLAN` is in force.
    #[must_use]
    pub fn plan(&self) -> Option<&PlanFaults> {
        self.plan.as_ref()
    }
}

impl FaultHook for EnvFaults {
    fn before_io(&mut self, io: &IoInfo<'_>) -> Fault {
        if self.broken || self.path.as_ref().is_some_and(|p| p.exists()) {
            return Fault::fail(5);
        }
        match self.plan.as_mut() {
            Some(h) => h.before_io(io),
            None => Fault::NONE,
        }
    }
}

/// Whether this build honours the `MMP_FAULT_*` variables (see [`EnvFaults`]).
pub const FAULTS_BUILT_IN: bool = cfg!(any(debug_assertions, feature = "fault-injection"));

fn warn_faults_ignored() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let set: Vec<&str> = ["MMP_FAULT_EIO_FILE", "MMP_FAULT_PLAN", "MMP_FAULT_LOG"]
        .into_iter()
        .filter(|k| std::env::var_os(k).is_some())
        .collect();
    if !set.is_empty() {
        WARNED.call_once(|| {
            eprintln!(
                "mmp: warning: {} ignored: fault injection is not built into this release \
                 build (cargo feature fault-injection)",
                set.join(", ")
            );
        });
    }
}

// ----- the owner log ----------------------------------------------------------------------------

/// `CLOCK_MONOTONIC` in nanoseconds (the race checker's clock: the same for every process on
/// this machine).
#[must_use]
pub fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// `CLOCK_MONOTONIC` nanoseconds of a machine [`Instant`] (`CLOCK_BOOTTIME` microseconds).
fn instant_to_mono_ns(t: Instant) -> u64 {
    let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let mono = mono_ns();
    let boot_ns = u64::try_from(boot.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(boot.tv_nsec).unwrap_or(0));
    // Boot time runs ahead of monotonic time by the time spent suspended.
    let offset = boot_ns.saturating_sub(mono);
    t.as_micros().saturating_mul(1000).saturating_sub(offset)
}

#[derive(Debug)]
struct Held {
    device: PathBuf,
    /// Largest lease end logged (boot clock).
    lease: Instant,
}

/// A hook that records ownership to a log outside the device and passes every I/O to an
/// inner hook. Lines (one `write(2)` each, `O_APPEND`), times in `CLOCK_MONOTONIC` ns:
///
/// ```text
/// acquired <device> <host> <pid> <t> <lease end>   the machine owns the device from t
/// lease    <device> <host> <pid> <t> <lease end>   before a heartbeat write: the lease it
///                                                  gives if it lands (an upper bound)
/// released <device> <host> <pid> <t> <lease end>   ownership ended at t (CLEAN follows)
/// lost     <device> <host> <pid> <t> <lease end>   the machine stopped at t (foreign write,
///                                                  fenced, failed release)
/// ```
///
/// A process may believe it owns a device from `acquired` until the earlier of its
/// `released`/`lost` time and its last lease end (which also bounds a process that was
/// killed and logged no end). Device paths and host names must not contain spaces.
pub struct OwnerLog {
    inner: Box<dyn FaultHook + Send>,
    file: std::fs::File,
    host: String,
    held: Vec<Held>,
}

impl std::fmt::Debug for OwnerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerLog")
            .field("host", &self.host)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl OwnerLog {
    /// Appends to `path` as `host`, passing every I/O on to `inner`.
    ///
    /// # Errors
    /// When the file cannot be opened for appending.
    pub fn open(
        path: &Path,
        host: &str,
        inner: Box<dyn FaultHook + Send>,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(OwnerLog {
            inner,
            file,
            host: host.replace(char::is_whitespace, "_"),
            held: Vec::new(),
        })
    }

    fn line(&mut self, kind: &str, dev: &Path, lease: Instant) {
        let s = format!(
            "{kind} {} {} {} {} {}\n",
            dev.display(),
            self.host,
            std::process::id(),
            mono_ns(),
            instant_to_mono_ns(lease)
        );
        let _ = self.file.write_all(s.as_bytes());
    }

    fn index(&self, dev: &Path) -> Option<usize> {
        self.held.iter().position(|h| h.device == dev)
    }
}

impl FaultHook for OwnerLog {
    fn before_io(&mut self, io: &IoInfo<'_>) -> Fault {
        let dev = io.device.path();
        if let Some(i) = self.index(dev) {
            let lease = self.held[i].lease;
            if !io.machine.is_held() {
                // Only the CLEAN write of a release comes after ownership ended.
                self.held.swap_remove(i);
                self.line("released", dev, lease);
            } else if io.write && io.machine.phase() == Phase::Held {
                // The lease this heartbeat gives if it lands starts before now.
                let window = io.machine.timing().map(|t| t.fail_window);
                let bound = clock::now().mono + window.unwrap_or(Duration::from_secs(3600));
                if bound > lease {
                    self.held[i].lease = bound;
                    self.line("lease", dev, bound);
                }
            }
        }
        self.inner.before_io(io)
    }

    fn on_event(&mut self, device: &Device, machine: &Machine, event: &Event) {
        let dev = device.path();
        match event {
            Event::Acquired => {
                let lease = machine
                    .owned_until()
                    .unwrap_or(Instant::from_micros(u64::MAX / 2));
                match self.index(dev) {
                    Some(i) => self.held[i].lease = lease,
                    None => self.held.push(Held {
                        device: dev.to_path_buf(),
                        lease,
                    }),
                }
                self.line("acquired", dev, lease);
            }
            Event::Finished(o) => {
                if let Some(i) = self.index(dev) {
                    let lease = self.held.swap_remove(i).lease;
                    let kind = if matches!(o, Outcome::Released) {
                        "released"
                    } else {
                        "lost"
                    };
                    self.line(kind, dev, lease);
                }
            }
            _ => {}
        }
        self.inner.on_event(device, machine, event);
    }
}

// ----- the pump ----------------------------------------------------------------------------------

fn errno_of(e: &DeviceError) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

/// Performs every I/O the machine asks for, synchronously, and hands each event to
/// `faults` and then `on_event`. Returns when the machine has no I/O outstanding.
pub fn pump(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    on_event: &mut dyn FnMut(&Event),
) {
    let mut buf = [0u8; MAX_RECORD_LEN];
    while let Some(p) = next_io(m, dev, faults, on_event, &mut buf) {
        let res = perform(dev, &p, &mut buf);
        complete(m, &p, res, &buf);
    }
}

/// One I/O taken from a machine, with the fault hook's decision: see [`next_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingIo {
    /// Write (else read).
    pub write: bool,
    /// Byte offset of the record.
    pub offset: u64,
    /// Record length.
    pub len: usize,
    /// What the hook decided.
    pub fault: Fault,
}

/// Hands the machine's pending events to `faults` and then `on_event`, and takes its next
/// I/O request, asking `faults` about it. For a write the block is emitted into `buf`
/// first. `None`: the machine has no I/O outstanding.
pub fn next_io(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    on_event: &mut dyn FnMut(&Event),
    buf: &mut [u8; MAX_RECORD_LEN],
) -> Option<PendingIo> {
    loop {
        while let Some(e) = m.poll_event() {
            faults.on_event(dev, m, &e);
            on_event(&e);
        }
        let (write, offset, len) = match m.poll_io()? {
            IoRequest::Read { offset_bytes, len } => (false, offset_bytes, len),
            IoRequest::Write { offset_bytes, len } => {
                if !m.emit_block(clock::now(), buf) {
                    continue;
                }
                (true, offset_bytes, len)
            }
        };
        let fault = faults.before_io(&IoInfo {
            device: dev,
            machine: m,
            write,
            len,
        });
        return Some(PendingIo {
            write,
            offset,
            len,
            fault,
        });
    }
}

/// Performs `p` synchronously, with its fault's delays and action: a read fills
/// `buf[..p.len]`, a write writes it. Returns the errno on failure.
///
/// # Errors
/// The errno of the failed (or failure-injected) I/O.
pub fn perform(dev: &Device, p: &PendingIo, buf: &mut [u8; MAX_RECORD_LEN]) -> Result<(), i32> {
    let len = p.len.min(MAX_RECORD_LEN);
    pause(p.fault.delay_before);
    let res = match (p.write, p.fault.action) {
        (_, FaultAction::Fail(errno)) => Err(errno),
        (false, _) => dev
            .read_at(p.offset, &mut buf[..len])
            .map_err(|e| errno_of(&e)),
        (true, FaultAction::Proceed) => dev
            .write_at(p.offset, &buf[..len])
            .map_err(|e| errno_of(&e)),
        (true, FaultAction::Partial { sectors, errno }) => {
            let n = usize::try_from(sectors)
                .unwrap_or(usize::MAX)
                .saturating_mul(SECTOR)
                .min(len);
            let wrote = if n > 0 {
                dev.write_at(p.offset, &buf[..n]).map_err(|e| errno_of(&e))
            } else {
                Ok(())
            };
            wrote.and(errno.map_or(Ok(()), Err))
        }
    };
    pause(p.fault.delay_after);
    res
}

/// Tells the machine how `p` ended (a read's data is `buf[..p.len]`).
pub fn complete(m: &mut Machine, p: &PendingIo, res: Result<(), i32>, buf: &[u8; MAX_RECORD_LEN]) {
    let now = clock::now();
    match res {
        Ok(()) if p.write => m.handle_write_done(now),
        Ok(()) => m.handle_read_done(now, &buf[..p.len.min(MAX_RECORD_LEN)]),
        Err(errno) => m.handle_io_error(now, IoError { errno }),
    }
}

/// Runs `m` to its end against `dev`: for a check, an acquire that is refused, or a clear.
/// For an acquire that succeeds this returns `None` as soon as the device is held (use the
/// engine to keep heartbeating). `stop` aborts the wait (the machine is told to release).
/// `faults` is [`NoFaults`] in production; a front end may pass [`EnvFaults`] (tests).
pub fn run_until_settled(
    m: &mut Machine,
    dev: &Device,
    faults: &mut dyn FaultHook,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Option<Outcome> {
    // `stop` is acted on once: after that the machine's own waits (restoring the block a
    // cancelled claim replaced waits an interval) run to their deadlines, not in a busy loop.
    let mut released = false;
    loop {
        pump(m, dev, faults, on_event);
        if let Some(o) = m.outcome() {
            return Some(o);
        }
        if m.is_held() {
            return None;
        }
        if !released && stop.load(Ordering::SeqCst) {
            released = true;
            m.release(clock::now());
            continue;
        }
        let Some(deadline) = m.poll_timeout() else {
            return m.outcome();
        };
        if released {
            clock::sleep_until(deadline);
        } else {
            sleep_until_or_stop(deadline, stop);
        }
        m.handle_timeout(clock::now());
    }
}

/// Sleeps until `deadline`, waking every 50 ms to check `stop`.
pub fn sleep_until_or_stop(deadline: Instant, stop: &AtomicBool) {
    loop {
        let now = clock::now().mono;
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return;
        }
        let left = deadline
            .saturating_since(now)
            .min(Duration::from_millis(50));
        clock::sleep_until(now + left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_reject_typos() {
        let p = FaultPlan {
            seed: Some(42),
            lat_min_us: 100,
            lat_mean_us: 2_000,
            spike_p: 0.013,
            spike_max_us: 250_000,
            eio_read_p: 0.02,
            eio_write_p: 0.031,
            lost_write_p: 0.005,
            torn_write_p: 0.25,
            pause_gap_us: 9_000_000,
            io_pause_p: 0.001,
            pause_max_us: 700_000,
            crash_gap_us: 5_000_000,
            down_max_us: 3_000_000,
            drift: true,
            scenario: vec![("scenario.hosts".into(), "3".into())],
            delays: vec![
                PhaseDelay {
                    phase: Phase::Releasing,
                    write: true,
                    after: false,
                    us: 10_500_000,
                },
                PhaseDelay {
                    phase: Phase::Claiming,
                    write: false,
                    after: true,
                    us: 3,
                },
            ],
        };
        let text = p.to_text();
        assert!(
            text.contains("delay.releasing.write.before_us = 10500000"),
            "{text}"
        );
        assert!(FaultPlan::parse("delay.held.write.sideways_us = 1").is_err());
        assert!(FaultPlan::parse("delay.sleeping.read.after_us = 1").is_err());
        assert_eq!(FaultPlan::parse(&text), Ok(p.clone()));
        assert_eq!(p.scenario("hosts"), Some("3"));
        let e = FaultPlan::parse("seed = 1\neio_raed_p = 0.1\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(FaultPlan::parse("eio_read_p = 1.5").is_err());
        assert!(FaultPlan::parse("lat_min_us 5").is_err());
        assert_eq!(
            FaultPlan::parse("# nothing\n\n seed = 0x10 # hex\n").map(|p| p.seed),
            Ok(Some(16))
        );
        assert_eq!(FaultPlan::parse(""), Ok(FaultPlan::default()));
    }

    #[test]
    fn plan_rng_stays_in_range() {
        let mut r = PlanRng(7);
        for _ in 0..10_000 {
            assert!((3..=9).contains(&r.range(3, 9)));
            assert!(r.exp(100) <= 1000);
        }
        assert_eq!(r.range(5, 5), 5);
        assert!(!r.chance(0.0));
    }
}
