//! The engine's slots on real files: a removed slot is reused with a new generation, and
//! an id of an earlier generation reaches nothing.

use super::*;
use mmp_core::machine::{Config, Identity, Op};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::{Duration as StdDuration, Instant as StdInstant};

/// A clean native area (100 ms interval, 4 fail intervals) in a fresh file.
fn area(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mmp-engine-{}-{name}", std::process::id()));
    std::fs::write(&p, vec![0u8; 1 << 20]).expect("create the area file");
    crate::area::format(&p, 100, 4, true).expect("format the area");
    p
}

fn acquire(path: &Path) -> (Target, Machine) {
    let t = crate::target::open(path, true).expect("open the area");
    let cfg = Config::new(
        t.layout,
        Identity::new(0x5107_0001, b"slots", b"area"),
        clock::random_seed(),
    );
    (t, Machine::new(cfg, Op::Acquire, clock::now()))
}

/// Waits for `want` from device `id`; panics on another device's `Finished` or after 20 s.
fn wait_for(rx: &Receiver<EngineEvent>, id: SlotId, want: fn(&Event) -> bool) -> Event {
    let end = StdInstant::now() + StdDuration::from_secs(20);
    loop {
        let left = end.saturating_duration_since(StdInstant::now());
        let ev = rx.recv_timeout(left).expect("an engine event in time");
        if ev.slot == id && want(&ev.event) {
            return ev.event;
        }
        assert!(
            ev.slot == id || !matches!(ev.event, Event::Finished(_)),
            "{:?} finished while waiting for {id:?}: {:?}",
            ev.slot,
            ev.event
        );
    }
}

/// Polls the report until `id`'s slot is vacant.
fn wait_vacant(e: &Engine, id: SlotId) {
    let end = StdInstant::now() + StdDuration::from_secs(10);
    while !e
        .report()
        .slots
        .get(id.index())
        .is_some_and(|s| s.id == id && s.vacant)
    {
        assert!(StdInstant::now() < end, "slot {id:?} never vacated");
        std::thread::sleep(StdDuration::from_millis(5));
    }
}

#[test]
fn removed_slots_are_reused_with_a_new_generation() {
    let p = area("reuse");
    let (tx, rx) = mpsc::channel();
    let mut e = Engine::start(Options::default(), tx);
    let mut ids = Vec::new();
    for round in 0..4u32 {
        let (t, m) = acquire(&p);
        let id = e.add(t, m);
        assert_eq!((id.index(), id.generation()), (0, round), "round {round}");
        wait_for(&rx, id, |ev| matches!(ev, Event::Acquired));
        e.release(id);
        let end = wait_for(&rx, id, |ev| matches!(ev, Event::Finished(_)));
        assert!(
            matches!(end, Event::Finished(Outcome::Released)),
            "round {round}: {end:?}"
        );
        e.remove(id);
        wait_vacant(&e, id);
        assert!(e.report().slot(id).is_none(), "a vacated slot is not found");
        ids.push(id);
    }
    let r = e.shutdown();
    assert_eq!(r.slots.len(), 1, "one slot for four devices in turn");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn an_id_of_an_earlier_generation_reaches_nothing() {
    let p = area("stale");
    let (tx, rx) = mpsc::channel();
    let mut e = Engine::start(Options::default(), tx);
    let (t, m) = acquire(&p);
    let old = e.add(t, m);
    wait_for(&rx, old, |ev| matches!(ev, Event::Acquired));
    e.release(old);
    wait_for(&rx, old, |ev| matches!(ev, Event::Finished(_)));
    e.remove(old);
    wait_vacant(&e, old);

    let (t, m) = acquire(&p);
    let new = e.add(t, m);
    assert_eq!(new.index(), old.index(), "the vacated slot is reused");
    assert_ne!(new, old);
    wait_for(&rx, new, |ev| matches!(ev, Event::Acquired));
    // Commands with the old id: none of them touches the new device.
    e.release(old);
    e.forget(old);
    e.remove(old);
    let beats = e.report().slot(new).expect("the new device").stats.beats;
    std::thread::sleep(StdDuration::from_millis(600));
    let r = e.report();
    let s = r.slot(new).expect("the new device is reported");
    assert!(s.outcome.is_none() && !s.forgotten, "{s:?}");
    assert!(s.stats.beats > beats, "still heartbeating: {s:?}");
    assert!(r.slot(old).is_none());
    // No event of the new device was produced by the stale commands.
    while let Ok(ev) = rx.try_recv() {
        assert!(
            !matches!(ev.event, Event::Finished(_)),
            "unexpected end: {ev:?}"
        );
    }
    e.release(new);
    let end = wait_for(&rx, new, |ev| matches!(ev, Event::Finished(_)));
    assert!(matches!(end, Event::Finished(Outcome::Released)), "{end:?}");
    let _ = e.shutdown();
    let _ = std::fs::remove_file(&p);
}
