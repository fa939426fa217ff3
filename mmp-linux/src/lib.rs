//! # mmp-linux: the Linux side of multiple-mount protection
//!
//! [`mmp_core`] holds the on-disk formats and the one sans-IO protocol machine; it never
//! touches a device, a clock or the environment. This crate runs that machine against real
//! Linux devices:
//!
//! * device access: [`blockdev`] (O_DIRECT, aligned buffers, sector sizes), [`target`] and
//!   [`area`] (what a path holds: an ext4 file system or a native area), [`uring`] (batched
//!   heartbeat I/O);
//! * time and identity: [`clock`] (monotonic and wall clocks, entropy), [`hostid`];
//! * running machines: [`driver`] (one machine, one blocking pump), [`engine`] (one
//!   heartbeat thread for many devices), [`rt`], [`job`];
//! * testing them: [`fault`] (fault hooks and plans, one vocabulary with the simulator),
//!   [`owner_log`] (what the race harness checks);
//! * protecting the data: [`watchdog`] (`/dev/watchdog`), [`pr`] (SCSI-3 persistent
//!   reservations over SG_IO), [`dm`] (the device-mapper I/O cut-off);
//! * administration: [`tune`] (enable/disable MMP and set the interval on ext4, like tune2fs),
//!   and [`procedure`]: each operator procedure written once for the CLI and libmmp.
//!
//! The CLI (`mmp-cli`) and the C library (`mmp-ffi`) are thin front ends over this crate.
//!
//! `unsafe` is denied crate-wide and allowed only in the small named modules that need a raw
//! system call, each block with a `// SAFETY:` line.
//!
//! Features: `fault-injection` honours the `MMP_FAULT_*` variables in release builds too
//! (builds with debug assertions always do).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod area;
pub mod blockdev;
pub mod clock;
pub mod dm;
pub mod driver;
pub mod engine;
pub mod fault;
pub mod hostid;
pub mod job;
pub mod owner_log;
pub mod pr;
pub mod procedure;
pub mod rt;
pub mod target;
pub mod tune;
pub mod uring;
pub mod watchdog;
