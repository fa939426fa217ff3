//! The one integration-test binary (ripgrep style): all cross-crate tests build here.
//!
//! Tiers by name prefix: plain names run everywhere; `tool_*` need the e2fsprogs binaries;
//! `loop_*` need root and loop devices. A test that cannot run prints why and returns.
#![allow(
    clippy::cast_possible_truncation,
    reason = "simulator and test arithmetic on values bounded by construction"
)]

mod admin;
mod c_api;
mod cli;
mod conventions;
mod crash;
mod format_doc;
mod fuzz_corpus;
mod generate;
mod heartbeat;
mod list;
mod loop_cli;
mod loop_integration;
mod loop_slow_device;
mod ocf_monitor;
mod pr;
mod race;
mod sim;
mod timing;
mod tool_ext4_codec;
mod tool_tune;
