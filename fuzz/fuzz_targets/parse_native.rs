//! Fuzz target: native records (`native::Record::parse`): a parsed record re-emits byte for byte.
//! The body is shared with the main workspace's corpus replay (tests/src/fuzz_bodies.rs).
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/fuzz_bodies.rs"]
mod fuzz_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_bodies::parse_native(data);
});
