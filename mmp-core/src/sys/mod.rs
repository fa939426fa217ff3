//! Linux I/O under the `std` feature: O_DIRECT block-device access, clocks, hostid, ext4
//! tuning (enable/disable MMP), SCSI persistent reservations (`pr`), the device-mapper
//! I/O cut-off (`dm`), and the driver and
//! heartbeat engine that run the protocol machine against real devices.
//!
//! `unsafe` is allowed only in the small named modules that need a raw system call, each
//! block with a `// SAFETY:` line.

pub mod area;
pub mod blockdev;
pub mod clock;
pub mod dm;
pub mod driver;
pub mod engine;
pub mod hostid;
pub mod job;
pub mod pr;
pub mod rt;
pub mod target;
pub mod tune;
pub mod uring;
pub mod watchdog;
