//! # libmmp: the C ABI over mmp-core
//!
//! Mount helpers, HA agents and other C tools get what the `mmp` command offers without
//! shelling out: open a device, read its status, run the activity test, acquire it, keep it
//! with a heartbeat thread that reports a loss through a callback, release it, and the
//! administrative operations (clear, ext4 enable/disable/set-interval, native format, hostid).
//!
//! This crate is a thin layer, never a second protocol implementation: every operation is
//! the one the CLI runs, on the same `mmp_core::machine::Machine`, driven by
//! `mmp_linux::driver` on the caller's thread and by `mmp_linux::engine` for
//! heartbeats.
//!
//! The header `include/mmp.h` is generated from this crate by cbindgen (see
//! `mmp-ffi/cbindgen.toml` and the `header_is_fresh` test in `mmp-tests`); the conventions
//! (results, out-parameters, ownership, threads, panics) are in `docs/c-api.md`.
//!
//! ## Layout
//!
//! * [`api`] holds the exported functions;
//! * [`types`] the C structs, enums, flags and callback types;
//! * [`result`] the `mmp_result` enum;
//! * [`fence`] SCSI persistent reservations (`mmp_fence_*`), the storage fencing of
//!   `mmp hold --fence scsi-pr`;
//! * `boundary` raw pointers, callbacks and the panic boundary: the `unsafe` helpers that
//!   the exported functions in [`api`] and [`fence`] call, each call with a `// SAFETY:`
//!   line naming the C caller's promise it relies on;
//! * `device` the handle's state and operations, in safe Rust;
//! * `hub` the heartbeat engine and event thread every handle of the process shares.
//!
//! MSRV: Rust 1.95 (edition 2024).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
mod boundary;
mod device;
pub mod fence;
mod hub;
pub mod result;
pub mod types;

pub use api::*;
pub use boundary::mmp_device;
pub use fence::*;
pub use result::mmp_result;
pub use types::*;
