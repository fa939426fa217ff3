//! `mmp demo`: two hosts on a temporary file-backed device show a clean handover and a crash
//! takeover, with timings. Both "hosts" are engines in this process with different hostids
//! and node names; a crash is an engine stopped without releasing.

use crate::exit::Exit;
use crate::out;
use mmp_core::format::native;
use mmp_core::machine::{Config, Event, Identity, Machine, Op, Outcome};
use mmp_linux::engine::{self, Engine, EngineEvent};
use mmp_linux::{clock, target};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

struct Host {
    name: &'static str,
    hostid: u32,
}

const A: Host = Host {
    name: "node-a",
    hostid: 0xA11C_E001,
};
const B: Host = Host {
    name: "node-b",
    hostid: 0xB0B0_0002,
};

fn start(
    host: &Host,
    path: &Path,
    force: bool,
    wait: bool,
) -> Result<(Engine, Receiver<EngineEvent>), String> {
    let t = target::open(path, true).map_err(|e| e.to_string())?;
    let id = Identity::new(
        host.hostid,
        host.name.as_bytes(),
        path.as_os_str().as_encoded_bytes(),
    );
    let mut cfg = Config::new(t.layout, id, clock::random_seed());
    cfg.force = force;
    cfg.wait = wait;
    let (tx, rx) = mpsc::channel();
    let opts = engine::Options {
        realtime: false,
        ..engine::Options::default()
    };
    let mut e = Engine::start(opts, tx);
    e.add(t, Machine::new(cfg, Op::Acquire, clock::now()));
    Ok((e, rx))
}

/// Waits for the acquire to finish: `Ok(())` when held, `Err(text)` when refused.
fn wait_acquired(rx: &Receiver<EngineEvent>) -> Result<(), String> {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(EngineEvent {
                event: Event::Acquired,
                ..
            }) => return Ok(()),
            Ok(EngineEvent {
                event: Event::Finished(Outcome::Refused(r)),
                ..
            }) => {
                return Err(out::refusal("demo device", &r));
            }
            Ok(EngineEvent {
                event: Event::Finished(o),
                ..
            }) => return Err(out::outcome("demo device", Some(&o))),
            Ok(_) => {}
            Err(_) => return Err("timed out".into()),
        }
    }
}

fn status_line(path: &Path) -> String {
    let Ok(t) = target::open(path, false) else {
        return "unreadable".into();
    };
    let Ok(raw) = t.read_record() else {
        return "unreadable".into();
    };
    match mmp_core::machine::parse(&t.layout, &raw) {
        Ok(s) => format!("{}, {}", s.class().name(), out::who(&s)),
        Err(e) => e.to_string(),
    }
}

pub(crate) fn demo(dir: Option<&Path>) -> Result<Exit, String> {
    let dir: PathBuf = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let path = dir.join(format!("mmp-demo-{}.img", std::process::id()));
    let res = run_demo(&path);
    let _ = std::fs::remove_file(&path);
    res
}

fn run_demo(path: &Path) -> Result<Exit, String> {
    let interval_ms = 100;
    let fail = native::DEFAULT_FAIL_INTERVALS;
    std::fs::write(path, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", path.display()))?;
    {
        let dev = mmp_linux::blockdev::Device::open(path, true).map_err(|e| e.to_string())?;
        let mut area = vec![0u8; 4096];
        native::Record::formatted([0x42; 16], interval_ms, fail, clock::now().wall_ms)
            .emit(&mut area);
        dev.write_at(0, &area).map_err(|e| e.to_string())?;
    }
    outln!(
        "mmp demo: native MMP area on {} (interval {interval_ms} ms, fail intervals {fail})",
        path.display()
    );
    outln!(
        "  two hosts: {} (hostid 0x{:08x}) and {} (hostid 0x{:08x})\n",
        A.name,
        A.hostid,
        B.name,
        B.hostid
    );

    outln!("1. {} acquires the clean device", A.name);
    let t = Instant::now();
    let (ea, rxa) = start(&A, path, false, false)?;
    wait_acquired(&rxa)?;
    let first = t.elapsed();
    outln!(
        "   acquired in {:.3} s (claim, wait a fail window and an eighth: nobody watched this \
         CLEAN being written, so it may have landed late over a silent owner; verify)",
        first.as_secs_f64()
    );
    outln!("   status: {}\n", status_line(path));

    outln!("2. {} tries to take it while {} is alive", B.name, A.name);
    let (eb, rxb) = start(&B, path, false, false)?;
    match wait_acquired(&rxb) {
        Ok(()) => return Err("node-b acquired a held device: this is a bug".into()),
        Err(e) => outln!("   refused without --force: {e}"),
    }
    let _ = eb.shutdown();
    let t = Instant::now();
    let (eb, rxb) = start(&B, path, true, false)?;
    match wait_acquired(&rxb) {
        Ok(()) => return Err("node-b acquired a held device with --force: this is a bug".into()),
        Err(e) => outln!(
            "   refused with --force after {:.3} s of watching: {e}\n",
            t.elapsed().as_secs_f64()
        ),
    }
    let _ = eb.shutdown();

    outln!(
        "3. clean handover: {} waits in the queue (hold --wait), {} releases",
        B.name,
        A.name
    );
    let (eb, rxb) = start(&B, path, false, true)?;
    std::thread::sleep(Duration::from_millis(u64::from(interval_ms) * 5));
    let t = Instant::now();
    let _ = ea.shutdown();
    wait_acquired(&rxb)?;
    let handover = t.elapsed();
    outln!(
        "   handover took {:.3} s ({} watched the release: claim, wait 2 intervals, verify)",
        handover.as_secs_f64(),
        B.name
    );
    outln!("   status: {}\n", status_line(path));

    outln!(
        "4. crash takeover: {} dies without releasing, {} takes over with --force",
        B.name,
        A.name
    );
    eb.abandon();
    let t = Instant::now();
    let (ea, rxa) = start(&A, path, true, false)?;
    wait_acquired(&rxa)?;
    let takeover = t.elapsed();
    outln!(
        "   takeover took {:.3} s (watch 2 x fail window, then claim and verify)",
        takeover.as_secs_f64()
    );
    outln!("   status: {}\n", status_line(path));
    let _ = ea.shutdown();
    outln!("5. {} releases: {}\n", A.name, status_line(path));

    outln!("| step | time |");
    outln!("|---|---|");
    outln!("| first acquire (clean) | {:.3} s |", first.as_secs_f64());
    outln!("| clean handover | {:.3} s |", handover.as_secs_f64());
    outln!(
        "| crash takeover (--force) | {:.3} s |",
        takeover.as_secs_f64()
    );
    outln!(
        "\nFor comparison: e2fsprogs needs 11 s to open a clean ext4 MMP file system at interval 5,"
    );
    outln!("and the kernel waits 22 s before mounting one whose holder crashed.");
    Ok(Exit::Ok)
}
