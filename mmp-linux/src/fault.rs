//! Fault injection for tests and the fault campaign: the [`FaultHook`] the driver and the
//! engine consult before every real read and write, and the hooks that inject nothing
//! ([`NoFaults`]), follow a [`FaultPlan`] ([`PlanFaults`]) or the environment ([`EnvFaults`]).
//!
//! [`EnvFaults`] injects nothing unless one of these environment variables is set (and only
//! in builds with debug assertions or the `fault-injection` feature):
//!
//! * `MMP_FAULT_EIO_FILE=PATH`: every I/O fails with EIO while `PATH` exists.
//! * `MMP_FAULT_PLAN=PATH`: a [`FaultPlan`] (EIO on reads and writes, added latency with
//!   spikes, pauses around I/O, lost writes, torn writes at sector granularity), in the text
//!   format of `docs/RELIABILITY.md`; the simulator describes its faults with the same
//!   [`FaultKnobs`] and prints its counterexamples in the same format, so they replay against
//!   real processes. An unreadable plan fails every I/O.
//! * `MMP_FAULT_LOG=PATH`: with a plan, append one line per injected fault.
//!
//! The library never reads these variables by itself: a front end asks for them with
//! [`EnvFaults::from_env`] or `engine::Options::from_env`.

use crate::blockdev::Device;
use crate::clock;
use crate::owner_log::mono_ns;
use mmp_core::machine::{Event, Machine, Phase};
use mmp_core::time::Duration;
use std::io::Write;
use std::path::{Path, PathBuf};
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

/// Fault hooks for tests: [`pump`](crate::driver::pump) consults them before every I/O and tells them every
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

/// The fault knobs: one vocabulary for the simulator (`tests/src/sim.rs` runs with exactly
/// these) and for real I/O (a [`FaultPlan`] carries them; [`PlanFaults`] applies them). All
/// zero: no faults.
///
/// Applied by the driver to each real I/O: latency (`lat_min_us` plus an exponential extra
/// with mean `lat_mean_us` capped at ten means, and with probability `spike_p` a spike of up
/// to `spike_max_us`, split at random before and after the I/O), `io_pause_p` (a pause of up
/// to `pause_max_us` before a read or after a write's block was emitted), `eio_read_p`,
/// `eio_write_p` (half of the failed writes land anyway), `lost_write_p` (acknowledged,
/// never written), `torn_write_p` (a strict prefix of the record's sectors lands, then
/// success or, half the time, EIO).
///
/// For a process-level harness (the driver ignores them): `pause_gap_us` (mean time between
/// SIGSTOPs of one process, each up to `pause_max_us`), `crash_gap_us` (mean time between
/// SIGKILLs), `down_max_us` (longest time a killed host stays down), and `drift`.
///
/// Simulator only (a real harness cannot stall a sibling device or place a pause between
/// emit and issue; the driver ignores them): `emit_pause_max_us`, `stall_p`,
/// `stall_max_us`, `abort_p`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultKnobs {
    /// Smallest added latency.
    pub lat_min_us: u64,
    /// Mean of the exponential extra latency (capped at ten means).
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
    /// Probability that a write lands torn (a strict prefix of its 512-byte sectors) and is
    /// then acknowledged, or (half the time) fails with EIO.
    pub torn_write_p: f64,
    /// Harness: mean time between pauses of one host or process (0: none).
    pub pause_gap_us: u64,
    /// Probability of a pause right before a read or right after a write's block was emitted.
    pub io_pause_p: f64,
    /// Longest pause.
    pub pause_max_us: u64,
    /// Harness: mean time between crashes (kills) of one host (0: none).
    pub crash_gap_us: u64,
    /// Harness: longest time a crashed host stays down.
    pub down_max_us: u64,
    /// Whether clocks drift (informational for real processes: their clocks cannot be made to).
    pub drift: bool,
    /// Simulator: longest pause right after `emit_block`, before the write is issued (0:
    /// `pause_max_us`). With the latency spikes it makes the issue-to-land bound of the timing
    /// argument, so the swarm keeps it at most an eighth of the fail window.
    pub emit_pause_max_us: u64,
    /// Simulator: probability that an I/O completion is handled late because the host's I/O
    /// thread is busy with a slow sibling device (the whole host handles nothing meanwhile).
    pub stall_p: f64,
    /// Simulator: longest such stall (heavy-tailed).
    pub stall_max_us: u64,
    /// Simulator: probability that an acquire attempt is abandoned at a random point
    /// (SIGTERM, or another device of an all-or-nothing `hold A B` refused).
    pub abort_p: f64,
}

impl FaultKnobs {
    /// Whether any fault is on.
    #[must_use]
    pub fn any(&self) -> bool {
        *self != FaultKnobs::default()
    }
}

/// A fault plan: a seed, the [`FaultKnobs`], targeted delays, and `scenario.*` keys carried
/// for replay harnesses (ignored here). Its text format is in `docs/RELIABILITY.md`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// The generator's seed (a random one if `None`).
    pub seed: Option<u64>,
    /// What to inject.
    pub knobs: FaultKnobs,
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
                "lat_min_us" => p.knobs.lat_min_us = int()?,
                "lat_mean_us" => p.knobs.lat_mean_us = int()?,
                "spike_p" => p.knobs.spike_p = prob()?,
                "spike_max_us" => p.knobs.spike_max_us = int()?,
                "eio_read_p" => p.knobs.eio_read_p = prob()?,
                "eio_write_p" => p.knobs.eio_write_p = prob()?,
                "lost_write_p" => p.knobs.lost_write_p = prob()?,
                "torn_write_p" => p.knobs.torn_write_p = prob()?,
                "pause_gap_us" => p.knobs.pause_gap_us = int()?,
                "io_pause_p" => p.knobs.io_pause_p = prob()?,
                "pause_max_us" => p.knobs.pause_max_us = int()?,
                "crash_gap_us" => p.knobs.crash_gap_us = int()?,
                "down_max_us" => p.knobs.down_max_us = int()?,
                "emit_pause_max_us" => p.knobs.emit_pause_max_us = int()?,
                "stall_p" => p.knobs.stall_p = prob()?,
                "stall_max_us" => p.knobs.stall_max_us = int()?,
                "abort_p" => p.knobs.abort_p = prob()?,
                "drift" => {
                    p.knobs.drift = match v {
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
        let f = &self.knobs;
        let ints = [
            ("lat_min_us", f.lat_min_us),
            ("lat_mean_us", f.lat_mean_us),
            ("spike_max_us", f.spike_max_us),
            ("pause_gap_us", f.pause_gap_us),
            ("pause_max_us", f.pause_max_us),
            ("crash_gap_us", f.crash_gap_us),
            ("down_max_us", f.down_max_us),
        ];
        let probs = [
            ("spike_p", f.spike_p),
            ("eio_read_p", f.eio_read_p),
            ("eio_write_p", f.eio_write_p),
            ("lost_write_p", f.lost_write_p),
            ("torn_write_p", f.torn_write_p),
            ("io_pause_p", f.io_pause_p),
        ];
        for (k, v) in ints {
            let _ = writeln!(s, "{k} = {v}");
        }
        for (k, v) in probs {
            let _ = writeln!(s, "{k} = {v}");
        }
        let _ = writeln!(s, "drift = {}", f.drift);
        // The simulator-only knobs, when set (the driver ignores them).
        let sim_ints = [
            ("emit_pause_max_us", f.emit_pause_max_us),
            ("stall_max_us", f.stall_max_us),
        ];
        for (k, v) in sim_ints.into_iter().filter(|(_, v)| *v != 0) {
            let _ = writeln!(s, "{k} = {v}");
        }
        let sim_probs = [("stall_p", f.stall_p), ("abort_p", f.abort_p)];
        for (k, v) in sim_probs.into_iter().filter(|(_, v)| *v != 0.0) {
            let _ = writeln!(s, "{k} = {v}");
        }
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

/// splitmix64: tiny, fast, deterministic. The one generator of the simulator (every
/// schedule it runs comes from here, so its streams must never change: regression seeds
/// replay through them) and of [`PlanFaults`].
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mmp_core::rand::splitmix64_mix(self.0)
    }

    /// Uniform in `0..n`; 0 without drawing when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // The high half of a 128-bit product is below n.
        u64::try_from((u128::from(self.next_u64()) * u128::from(n)) >> 64).unwrap_or(0)
    }

    /// Uniform in `lo..=hi` (one draw, also when `lo == hi`); `lo` without drawing when
    /// `hi < lo`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi < lo {
            return lo;
        }
        if hi - lo == u64::MAX {
            return self.next_u64();
        }
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    #[allow(clippy::cast_precision_loss)]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p` (draws nothing when `p <= 0`).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponentially distributed with `mean`, capped at ten means (0 without drawing when
    /// `mean == 0`).
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn exp(&mut self, mean: u64) -> u64 {
        if mean == 0 {
            return 0;
        }
        let v = -(1.0 - self.unit()).ln() * mean as f64;
        (v as u64).min(mean.saturating_mul(10))
    }
}

/// Uniform in `lo..=hi`, drawing nothing when there is no choice (`hi <= lo`: `lo`). The
/// plans' own rule, unlike [`SplitMix64::range`] (which draws also for `lo == hi`, as the
/// simulator's streams need): a plan's seed keeps meaning the same faults.
fn span(r: &mut SplitMix64, lo: u64, hi: u64) -> u64 {
    if hi <= lo { lo } else { r.range(lo, hi) }
}

/// Applies a [`FaultPlan`] to real I/O (see its docs for what each knob does).
#[derive(Debug)]
pub struct PlanFaults {
    plan: FaultPlan,
    rng: SplitMix64,
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
            rng: SplitMix64::new(seed),
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
        let p = &self.plan.knobs;
        let r = &mut self.rng;
        self.counts.ios += 1;
        let mut lat = p.lat_min_us + r.exp(p.lat_mean_us);
        let spike = r.chance(p.spike_p);
        if spike {
            lat += span(r, 0, p.spike_max_us);
        }
        // The data moves at a random instant between issue and completion.
        let before = span(r, 0, lat);
        let mut fault = Fault {
            delay_before: Duration::from_micros(before),
            delay_after: Duration::from_micros(lat - before),
            action: FaultAction::Proceed,
        };
        let pause = p.pause_max_us > 0 && r.chance(p.io_pause_p);
        if pause {
            fault.delay_before += Duration::from_micros(span(r, 1, p.pause_max_us));
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
            let k = u32::try_from(span(r, 1, u64::from(sectors) - 1)).unwrap_or(1);
            let eio = r.chance(0.5);
            fault.action = FaultAction::Partial {
                sectors: k,
                errno: eio.then_some(5),
            };
            kind = Some(if eio { "torn_write_eio" } else { "torn_write" });
        }
        let phase = io.machine.phase();
        for d in self
            .plan
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_and_reject_typos() {
        let p = FaultPlan {
            seed: Some(42),
            knobs: FaultKnobs {
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
                stall_p: 0.125,
                abort_p: 0.0,
                ..FaultKnobs::default()
            },
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
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            assert!((3..=9).contains(&r.range(3, 9)));
            assert!(r.exp(100) <= 1000);
        }
        assert_eq!(r.range(5, 5), 5);
        assert!(!r.chance(0.0));
    }
}
