//! The deterministic simulator (`mmp_tests::sim`): many seeds, the checker's teeth, a pause
//! with self-fencing, liveness after healing, and determinism.
//!
//! `MMP_SEED=<seed>` reruns one seed (twice, comparing trace hashes); add `MMP_TRACE=1` and
//! `-- --nocapture` to see every event. `MMP_SEEDS=N` sets how many commit-derived seeds
//! `sim_commit_seeds` runs (the soak script `bench/sim-soak` uses it).
//! `MMP_CHECK_DETERMINISM=1` runs every seed twice (`sim_determinism` always does, for its
//! own 320 seeds).

use mmp_tests::sim::{self, Failure, Options, OutcomeKind, Stats, Totals};
use std::time::Instant;

/// Seeds derived from a constant base, the same on every commit (with `FIXED_SEEDS`).
const FIXED_EXTRA: u64 = 10_000;
/// Commit-derived seeds per `cargo test` run unless `MMP_SEEDS` says otherwise.
const COMMIT_SEEDS: u64 = 10_000;
/// Seeds the determinism test runs twice.
const DETERMINISM_SEEDS: u64 = 300;
/// Runs of each scripted scenario.
const SCENARIO_RUNS: u64 = 60;
/// Crash-heavy runs of the liveness test.
const LIVENESS_SEEDS: u64 = 300;

fn print_summary(test: &str, stats: &Stats, started: Instant) {
    eprintln!(
        "{test}: {stats} | wall={:.2}s",
        started.elapsed().as_secs_f64()
    );
}

fn check(test: &str, totals: &Totals) {
    if let Some(f) = &totals.failure {
        panic!(
            "{test}: {} of {} seeds failed (seeds: {:?})\n{f}",
            totals.failed_seeds.len(),
            totals.stats.runs,
            &totals.failed_seeds[..totals.failed_seeds.len().min(20)]
        );
    }
    assert_eq!(totals.stats.double_owners, 0);
}

/// The options the CI swarm tests run: the whole envelope once the machine fix has landed,
/// until then the envelope without the knobs that expose its open bugs.
fn ci_swarm(seed: u64) -> Options {
    if sim::MACHINE_FIX_LANDED {
        Options::swarm(seed)
    } else {
        Options::swarm_known_bugs_masked(seed)
    }
}

/// `MMP_SEED` set: run just that seed (twice) with the whole swarm envelope (so the seeds of
/// `sim::REGRESSION_SEEDS` reproduce) and return true.
fn single_seed(test: &str) -> bool {
    let Some(seed) = sim::env_seed() else {
        return false;
    };
    let started = Instant::now();
    // MMP_HUNT_LAX=1: as `sim_hunt` does, no stop at an Event::Acquired outside the lease.
    let make: fn(u64) -> Options = if std::env::var("MMP_HUNT_LAX").is_ok_and(|v| v == "1") {
        lax_swarm
    } else {
        Options::swarm
    };
    let totals = sim::run_seeds(&[seed], test, true, make);
    eprintln!(
        "{test}: MMP_SEED={seed}\n  options: {}",
        Options::swarm(seed)
    );
    print_summary(test, &totals.stats, started);
    check(test, &totals);
    true
}

/// `MMP_CHECK_DETERMINISM=1`: run every seed twice and compare trace hashes.
fn check_determinism() -> bool {
    std::env::var("MMP_CHECK_DETERMINISM").is_ok_and(|v| v == "1")
}

fn swarm_seeds(test: &str, seeds: &[u64]) -> Stats {
    let started = Instant::now();
    let totals = sim::run_seeds(seeds, test, check_determinism(), ci_swarm);
    print_summary(test, &totals.stats, started);
    check(test, &totals);
    assert_eq!(totals.stats.runs, seeds.len() as u64);
    assert_eq!(
        totals.stats.liveness_ok, totals.stats.runs,
        "every run ends with a passed liveness phase"
    );
    totals.stats
}

#[test]
fn sim_fixed_seeds() {
    if single_seed("sim_fixed_seeds") {
        return;
    }
    let mut seeds = sim::FIXED_SEEDS.to_vec();
    seeds.extend(sim::derived_seeds(0x4D4D_5F46_4958_4544, FIXED_EXTRA));
    let stats = swarm_seeds("sim_fixed_seeds", &seeds);
    // The swarm really injects every fault kind.
    let mut kinds = vec![
        ("eio_reads", stats.eio_reads),
        ("eio_writes", stats.eio_writes),
        ("lost_writes", stats.lost_writes),
        ("spikes", stats.spikes),
        ("pauses", stats.pauses),
        ("crashes", stats.crashes),
        ("drift_runs", stats.drift_runs),
        ("fenced", stats.fenced),
        ("lost_foreign", stats.lost_foreign),
        ("kernel_mounts", stats.kernel_mounts),
    ];
    if sim::MACHINE_FIX_LANDED {
        kinds.extend([("stalls", stats.stalls), ("aborts", stats.aborts)]);
    }
    for (name, n) in kinds {
        assert!(n > 0, "no {name} in {} runs", stats.runs);
    }
}

/// The base of the commit-derived seeds, and the commit it came from.
fn commit_base() -> (u64, Option<String>) {
    let commit = sim::commit();
    let base = commit
        .as_deref()
        .and_then(sim::parse_seed)
        .unwrap_or(0x00C0_FFEE_0000_0000);
    (base, commit)
}

#[test]
fn sim_commit_seeds() {
    if single_seed("sim_commit_seeds") {
        return;
    }
    let (base, commit) = commit_base();
    let n = sim::env_seed_count().unwrap_or(COMMIT_SEEDS);
    eprintln!(
        "sim_commit_seeds: commit {} -> base seed {base}, {n} seeds",
        commit.as_deref().unwrap_or("(none)")
    );
    swarm_seeds("sim_commit_seeds", &sim::derived_seeds(base, n));
}

#[test]
fn sim_determinism() {
    let started = Instant::now();
    let mut seeds = sim::derived_seeds(0xD7E7_0000, DETERMINISM_SEEDS);
    seeds.extend(sim::FIXED_SEEDS);
    let totals = sim::run_seeds(&seeds, "sim_determinism", true, ci_swarm);
    print_summary("sim_determinism", &totals.stats, started);
    check("sim_determinism", &totals);
    // Different seeds give different traces (the hash sees the run).
    let a = sim::run(&Options::swarm(1)).hash;
    let b = sim::run(&Options::swarm(2)).hash;
    assert_ne!(a, b);
}

#[test]
fn sim_checker_has_teeth() {
    // No self-fencing, and a holder frozen for five takeover windows while another host
    // takes over with force: the checker must catch two owners, every time.
    let started = Instant::now();
    let mut stats = Stats::default();
    for seed in 0..SCENARIO_RUNS {
        let o = Options::pause_takeover(seed, false);
        let r = sim::run(&o);
        stats.add(&r.stats);
        match &r.failure {
            Some(Failure::DoubleOwner { hosts, .. }) => assert_eq!(hosts, &[0, 1]),
            other => panic!(
                "seed {seed}: expected a double owner, got {other:?}\n{}",
                r.explain("sim_checker_has_teeth")
            ),
        }
        // Deterministic failures too.
        assert_eq!(sim::run(&o).hash, r.hash);
    }
    print_summary("sim_checker_has_teeth", &stats, started);
    assert_eq!(stats.double_owners, SCENARIO_RUNS);
}

#[test]
fn sim_pause_with_fence_is_safe() {
    // The same freeze with self-fencing on: the holder's lease runs out by its own clock
    // during the pause, the other host takes over, and nobody sees two owners.
    let started = Instant::now();
    let mut stats = Stats::default();
    for seed in 0..SCENARIO_RUNS {
        let o = Options::pause_takeover(seed, true);
        let r = sim::run(&o);
        stats.add(&r.stats);
        assert!(
            r.failure.is_none(),
            "{}",
            r.explain("sim_pause_with_fence_is_safe")
        );
        assert_eq!(
            r.acquired,
            [1, 1, 0],
            "{}",
            r.explain("sim_pause_with_fence_is_safe")
        );
        assert!(
            matches!(
                r.last_outcome[0],
                Some(OutcomeKind::LostFenced | OutcomeKind::LostForeign)
            ),
            "the frozen holder must give up: {:?}\n{}",
            r.last_outcome,
            r.explain("sim_pause_with_fence_is_safe")
        );
    }
    print_summary("sim_pause_with_fence_is_safe", &stats, started);
    assert_eq!(stats.double_owners, 0);
}

#[test]
fn sim_liveness_after_heal() {
    // Crash-heavy runs (torn writes, operator repairs), derived from the commit; with
    // MMP_SEEDS=N, N/10 of them. One seed: MMP_SEED with `Options::crashy`.
    let started = Instant::now();
    let seeds = match sim::env_seed() {
        Some(seed) => vec![seed],
        None => {
            let n = sim::env_seed_count().map_or(LIVENESS_SEEDS, |n| (n / 10).max(1));
            sim::derived_seeds(commit_base().0 ^ 0x11FE, n)
        }
    };
    let totals = sim::run_seeds(&seeds, "sim_liveness_after_heal", false, Options::crashy);
    print_summary("sim_liveness_after_heal", &totals.stats, started);
    check("sim_liveness_after_heal", &totals);
    assert_eq!(totals.stats.liveness_ok, totals.stats.runs);
    if seeds.len() >= 100 {
        assert!(totals.stats.torn_writes > 0 && totals.stats.operator_repairs > 0);
    }
}

#[test]
fn sim_plan_replay() {
    // A run printed as a fault plan rebuilds the same options and the same run (trace hash);
    // `MMP_SIM_PLAN=FILE` runs a plan file (a counterexample, or a hand-written plan).
    if let Ok(path) = std::env::var("MMP_SIM_PLAN") {
        let text = std::fs::read_to_string(&path).expect("read MMP_SIM_PLAN");
        let plan = mmp_linux::fault::FaultPlan::parse(&text).expect("parse the plan");
        let o = Options::from_plan(&plan).expect("plan to options");
        let r = sim::run(&o);
        eprintln!("sim_plan_replay: {path}: {}", r.stats);
        assert!(r.failure.is_none(), "{}", r.explain("sim_plan_replay"));
        return;
    }
    let mut seeds = sim::derived_seeds(0x9_1A4E, 200);
    seeds.extend(sim::FIXED_SEEDS);
    for seed in seeds {
        let mut all = vec![
            Options::swarm(seed),
            Options::crashy(seed),
            Options::pause_takeover(seed, true),
        ];
        all.extend(
            sim::BugScenario::ALL
                .into_iter()
                .map(|b| Options::bug_scenario(seed, b)),
        );
        for o in all {
            let text = o.to_plan_text();
            let plan = mmp_linux::fault::FaultPlan::parse(&text).expect("parse");
            let back = Options::from_plan(&plan).expect("from_plan");
            assert_eq!(format!("{back:?}"), format!("{o:?}"), "seed {seed}\n{text}");
        }
        let o = Options::swarm(seed);
        let back = Options::from_plan(
            &mmp_linux::fault::FaultPlan::parse(&o.to_plan_text()).expect("parse"),
        )
        .expect("from_plan");
        assert_eq!(sim::run(&back).hash, sim::run(&o).hash, "seed {seed}");
    }
}

#[test]
fn sim_torn_writes_are_safe() {
    // Torn writes outside crashes (a strict prefix of sectors lands, then success or EIO):
    // every torn record fails its checksum (ext4 with metadata_csum) or is seen as a foreign
    // write by its writer; no double owner, and liveness after the operator's repair.
    let started = Instant::now();
    let seeds = sim::derived_seeds(0x7042_4E00, 300);
    let totals = sim::run_seeds(&seeds, "sim_torn_writes_are_safe", false, torn_options);
    print_summary("sim_torn_writes_are_safe", &totals.stats, started);
    check("sim_torn_writes_are_safe", &totals);
    assert!(totals.stats.torn_writes > 0);
    assert_eq!(totals.stats.liveness_ok, totals.stats.runs);
}

/// The swarm on a checksummed ext4 block with torn writes on.
fn torn_options(seed: u64) -> Options {
    let mut o = ci_swarm(seed);
    let mut r = sim::SimRng::new(sim::mix(seed ^ 0x7042));
    o.disk = sim::DiskKind::Ext4 {
        csum: true,
        update_interval_s: r.range(1, 3) as u16,
    };
    let i = o.disk.interval_us();
    let w = o.disk.fail_window_us();
    o.hold_us = (i, 6 * i);
    o.idle_us = (0, 2 * i);
    o.fault_phase_us = 30 * o.disk.takeover_us();
    o.faults.spike_max_us = o.faults.spike_max_us.min(w / 8);
    o.faults.pause_max_us = o.faults.pause_max_us.min(w * 9 / 10);
    o.faults.emit_pause_max_us = o.faults.emit_pause_max_us.min(w / 8);
    o.faults.stall_max_us = o.faults.stall_max_us.min(4 * w);
    o.faults.torn_write_p = r.range(5, 50) as f64 / 1000.0;
    o
}

#[test]
#[ignore = "a seed hunt, run by hand: MMP_SEEDS=N MMP_HUNT_BASE=B"]
fn sim_hunt() {
    // Runs N swarm seeds derived from MMP_HUNT_BASE and prints every failing seed with its
    // failure, one line each (how REGRESSION_SEEDS was collected).
    let started = Instant::now();
    let base = std::env::var("MMP_HUNT_BASE")
        .ok()
        .and_then(|v| sim::parse_seed(&v))
        .unwrap_or(0x4855_4E54);
    let n = sim::env_seed_count().unwrap_or(20_000);
    let seeds = sim::derived_seeds(base, n);
    // MMP_HUNT_LAX=1: do not stop at an Event::Acquired outside the lease (the most common
    // failure) to see what else breaks.
    let make: fn(u64) -> Options = match std::env::var("MMP_HUNT_LAX").as_deref() {
        Ok("1") => lax_swarm,
        Ok("masked") => Options::swarm_known_bugs_masked,
        _ => Options::swarm,
    };
    let totals = sim::run_seeds(&seeds, "sim_hunt", false, make);
    print_summary("sim_hunt", &totals.stats, started);
    let mut failed = totals.failed_seeds.clone();
    failed.sort_unstable();
    for seed in failed {
        let r = sim::run(&make(seed));
        let f = r.failure.map(|f| f.to_string()).unwrap_or_default();
        eprintln!("FAILED {seed}: {f}");
    }
}

fn lax_swarm(seed: u64) -> Options {
    Options {
        check_acquired: false,
        ..Options::swarm(seed)
    }
}

/// Runs a bug scenario for `SCENARIO_RUNS` seeds and asserts every run is safe.
fn bug_scenario(test: &str, bug: sim::BugScenario) {
    let started = Instant::now();
    let mut stats = Stats::default();
    for seed in 0..SCENARIO_RUNS {
        let r = sim::run(&Options::bug_scenario(seed, bug));
        stats.add(&r.stats);
        assert!(r.failure.is_none(), "seed {seed}: {}", r.explain(test));
        // Not vacuous: these need the takeovers to happen.
        match bug {
            sim::BugScenario::LateReleaseClean => {
                assert_eq!(r.acquired, [1, 1, 1, 0], "seed {seed}: {}", r.explain(test));
            }
            sim::BugScenario::SlowSiblingDevice => {
                assert_eq!(r.acquired, [1, 1, 0], "seed {seed}: {}", r.explain(test));
            }
            _ => {}
        }
    }
    print_summary(test, &stats, started);
}

#[test]
fn sim_late_claim_completion() {
    bug_scenario(
        "sim_late_claim_completion",
        sim::BugScenario::LateClaimCompletion,
    );
}

#[test]
fn sim_verify_read_handled_late() {
    bug_scenario(
        "sim_verify_read_handled_late",
        sim::BugScenario::VerifyReadHandledLate,
    );
}

#[test]
fn sim_late_restore_clean() {
    bug_scenario("sim_late_restore_clean", sim::BugScenario::LateRestoreClean);
}

#[test]
fn sim_late_release_clean() {
    bug_scenario("sim_late_release_clean", sim::BugScenario::LateReleaseClean);
}

#[test]
fn sim_acquired_after_lease() {
    bug_scenario(
        "sim_acquired_after_lease",
        sim::BugScenario::AcquiredAfterLease,
    );
}

#[test]
fn sim_slow_sibling_device() {
    bug_scenario(
        "sim_slow_sibling_device",
        sim::BugScenario::SlowSiblingDevice,
    );
}

#[test]
fn sim_bug_scenarios_fail_today() {
    // While the machine fix has not landed, every bug scenario must fail, each in its own
    // way (so the scenarios keep their teeth); once it lands, the ignored tests above
    // take over.
    if sim::MACHINE_FIX_LANDED {
        return;
    }
    for bug in sim::BugScenario::ALL {
        for seed in 0..SCENARIO_RUNS {
            let r = sim::run(&Options::bug_scenario(seed, bug));
            let ok = match (bug, &r.failure) {
                (
                    sim::BugScenario::LateClaimCompletion
                    | sim::BugScenario::VerifyReadHandledLate
                    | sim::BugScenario::SlowSiblingDevice,
                    Some(Failure::DoubleOwner { hosts, .. }),
                ) => hosts == &[0, 1],
                (
                    sim::BugScenario::LateRestoreClean,
                    Some(Failure::LateClean { writer, owners, .. }),
                ) => *writer == 0 && owners == &[1],
                (sim::BugScenario::LateReleaseClean, Some(Failure::DoubleOwner { hosts, .. })) => {
                    hosts == &[1, 2]
                }
                (sim::BugScenario::AcquiredAfterLease, Some(Failure::BadWrite { what, .. })) => {
                    what.contains("Acquired")
                }
                _ => false,
            };
            assert!(
                ok,
                "{bug:?} seed {seed}: {:?}\n{}",
                r.failure,
                r.explain("sim_bug_scenarios_fail_today")
            );
        }
    }
}

#[test]
fn sim_regression_seeds() {
    // Swarm seeds that failed against the machine before the fix (whole envelope).
    let started = Instant::now();
    let totals = sim::run_seeds(
        &sim::REGRESSION_SEEDS,
        "sim_regression_seeds",
        true,
        Options::swarm,
    );
    print_summary("sim_regression_seeds", &totals.stats, started);
    check("sim_regression_seeds", &totals);
}

#[test]
fn sim_whole_envelope_is_deterministic() {
    // The whole envelope (stalls, aborts, kernel peers), failing runs included: the same
    // seed gives the same trace. (While the machine fix has not landed, the CI swarm tests
    // run the envelope without the knobs that expose its bugs; this keeps those code paths
    // exercised.)
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut failed = 0;
    for seed in sim::derived_seeds(0x3E7E_10E5, DETERMINISM_SEEDS) {
        let o = Options::swarm(seed);
        let a = sim::run(&o);
        let b = sim::run(&o);
        assert_eq!(
            a.hash,
            b.hash,
            "seed {seed}\n{}",
            b.explain("sim_whole_envelope_is_deterministic")
        );
        assert_eq!(a.stats, b.stats, "seed {seed}");
        failed += u64::from(a.failure.is_some());
        stats.add(&a.stats);
    }
    print_summary("sim_whole_envelope_is_deterministic", &stats, started);
    eprintln!("sim_whole_envelope_is_deterministic: {failed} of {DETERMINISM_SEEDS} runs failed");
    assert!(stats.stalls > 0 && stats.aborts > 0 && stats.kernel_mounts > 0);
}
