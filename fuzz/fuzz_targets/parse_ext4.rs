//! Fuzz target: ext4 superblocks (`ext4::Superblock::parse`, `ext4fs::Layout::parse`) and MMP blocks
//! (`ext4::Block::parse` with and without a checksum seed; re-emit round trip).
//! The body is shared with the main workspace's corpus replay (tests/src/fuzz_bodies.rs).
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/src/fuzz_bodies.rs"]
mod fuzz_bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fuzz_bodies::parse_ext4(data);
});
