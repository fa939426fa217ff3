//! Fuzz target: the protocol machine driven by arbitrary event sequences (reads of arbitrary and
//! valid blocks, write outcomes, errors, time, release): no panic, no write after the end,
//! heartbeats only inside the lease, CLEAN only while releasing.
//! The body is shared with the main workspace's corpus replay (tests/src/fuzz_bodies.rs).
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/fuzz_bodies.rs"]
mod fuzz_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_bodies::machine_events(data);
});
