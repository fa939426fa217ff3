//! # mmp-core: multiple-mount protection for shared block storage
//!
//! Two servers that see the same LUN must never both write to it. The defence is an on-disk
//! heartbeat: the owner rewrites a sequence block every interval; a would-be owner watches the
//! block long enough to prove nobody is alive, claims it, and verifies its claim before using
//! the device. This crate holds everything decisive about that protocol.
//!
//! ## Layers
//!
//! * [`crc32c`]: the CRC32C (Castagnoli) used by ext4 and by the native format.
//! * [`time`]: explicit-unit time types. The core never reads a clock: every input carries the
//!   caller's [`time::Now`].
//! * [`format`](mod@format): on-disk blocks, byte-exact and allocation-free.
//!   * [`format::ext4`]: the ext4/ldiskfs superblock fields MMP needs and the 1024-byte MMP
//!     block, compatible with the Linux kernel and e2fsprogs.
//!   * [`format::native`]: mmp's own format for any block device (millisecond intervals,
//!     hostid ownership), documented byte by byte in `docs/on-disk-format.md`.
//! * [`machine`]: the one protocol state machine (acquire, check, heartbeat, release, clear),
//!   sans-IO: the caller feeds read results, write completions and time, and the machine
//!   answers with the next read, write or deadline. Every front end (CLI, C library,
//!   simulator) drives this machine; there is no second implementation.
//!
//! The Linux side (O_DIRECT block I/O, clocks, hostid, the driver and heartbeat engine that
//! run machines against real devices, watchdog, persistent reservations) is the `mmp-linux`
//! crate.
//!
//! ## Guarantees
//!
//! * `#![no_std]` without `alloc` and without dependencies; `format` and `machine` forbid
//!   `unsafe`.
//! * Parsers never panic on any device bytes; emitters never panic on a buffer of the
//!   documented length.
//! * Fully deterministic: no clocks, no entropy, no I/O. Randomness comes from a seed in the
//!   configuration, so a simulator run depends only on its seed.
//!
//! MSRV: Rust 1.95 (edition 2024).
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod crc32c;
pub mod format;
pub mod machine;
pub mod rand;
pub mod time;
