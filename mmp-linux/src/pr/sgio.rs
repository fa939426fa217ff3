//! The Linux `SG_IO` ioctl (the sg v3 interface, `struct sg_io_hdr` of `<scsi/sg.h>`): the
//! only `unsafe` of the persistent-reservation layer.
//!
//! `SG_IO` works on SCSI disks (`/dev/sdX`), SCSI generic nodes (`/dev/sgN`) and on
//! device-mapper devices that pass it through to one SCSI path. On anything else the kernel
//! answers `ENOTTY` (or `EINVAL` from some drivers), which [`super::Pr::open`] turns into
//! [`super::PrError::NotScsi`].
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uchar, c_uint, c_ushort, c_void};
use std::os::fd::BorrowedFd;

use rustix::ioctl::{Getter, Opcode, Updater};

use super::{Completion, Dir, SENSE_LEN};

/// `SG_IO` from `<scsi/sg.h>` (not an `_IOC`-encoded number).
const SG_IO: Opcode = 0x2285;
/// `SG_GET_VERSION_NUM` from `<scsi/sg.h>`: writes an `int` such as 30536.
const SG_GET_VERSION_NUM: Opcode = 0x2282;

/// `interface_id` of the v3 interface.
const INTERFACE_ID: c_int = b'S' as c_int;
/// `dxfer_direction` values.
const SG_DXFER_NONE: c_int = -1;
const SG_DXFER_TO_DEV: c_int = -2;
const SG_DXFER_FROM_DEV: c_int = -3;

/// `struct sg_io_hdr`, field for field in the kernel's order and C types.
#[repr(C)]
struct SgIoHdr {
    interface_id: c_int,
    dxfer_direction: c_int,
    cmd_len: c_uchar,
    mx_sb_len: c_uchar,
    iovec_count: c_ushort,
    dxfer_len: c_uint,
    dxferp: *mut c_void,
    cmdp: *mut c_uchar,
    sbp: *mut c_uchar,
    timeout: c_uint,
    flags: c_uint,
    pack_id: c_int,
    usr_ptr: *mut c_void,
    status: c_uchar,
    masked_status: c_uchar,
    msg_status: c_uchar,
    sb_len_wr: c_uchar,
    host_status: c_ushort,
    driver_status: c_ushort,
    resid: c_int,
    duration: c_uint,
    info: c_uint,
}

// The ABI: 88 bytes with 64-bit pointers, 64 with 32-bit ones.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<SgIoHdr>() == 88);
#[cfg(target_pointer_width = "32")]
const _: () = assert!(size_of::<SgIoHdr>() == 64);

/// The sg driver version of the node behind `fd` (at least 30000 for the v3 interface).
pub(super) fn version(fd: BorrowedFd<'_>) -> rustix::io::Result<c_int> {
    // SAFETY: SG_GET_VERSION_NUM writes one int through its argument pointer; `Getter`
    // provides a properly aligned, writable c_int for the duration of the call.
    unsafe { rustix::ioctl::ioctl(fd, Getter::<SG_GET_VERSION_NUM, c_int>::new()) }
}

/// Runs one command: `cdb` (at most 16 bytes), data in the direction of `dir`, and a
/// `timeout_ms` the kernel enforces (it aborts the command and reports a host error).
pub(super) fn execute(
    fd: BorrowedFd<'_>,
    cdb: &[u8],
    dir: Dir<'_>,
    timeout_ms: u32,
) -> rustix::io::Result<Completion> {
    if cdb.len() > 16 {
        return Err(rustix::io::Errno::INVAL);
    }
    let mut cmd = [0u8; 16];
    cmd[..cdb.len()].copy_from_slice(cdb);
    let mut sense = [0u8; SENSE_LEN];
    let (direction, dxferp, dxfer_len): (c_int, *mut c_void, usize) = match dir {
        Dir::None => (SG_DXFER_NONE, std::ptr::null_mut(), 0),
        // The kernel only reads a TO_DEV buffer; the pointer type is the ABI's.
        Dir::ToDevice(b) => (SG_DXFER_TO_DEV, b.as_ptr().cast_mut().cast(), b.len()),
        Dir::FromDevice(b) => (SG_DXFER_FROM_DEV, b.as_mut_ptr().cast(), b.len()),
    };
    let dxfer_len = c_uint::try_from(dxfer_len).map_err(|_| rustix::io::Errno::INVAL)?;
    let mut hdr = SgIoHdr {
        interface_id: INTERFACE_ID,
        dxfer_direction: direction,
        cmd_len: c_uchar::try_from(cdb.len()).map_err(|_| rustix::io::Errno::INVAL)?,
        mx_sb_len: c_uchar::try_from(SENSE_LEN).unwrap_or(c_uchar::MAX),
        iovec_count: 0,
        dxfer_len,
        dxferp,
        cmdp: cmd.as_mut_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: SG_IO reads and writes one `struct sg_io_hdr`, which `hdr` is (`repr(C)`, the
    // kernel's field order, size checked above). Its pointers stay valid for the whole
    // synchronous call: `cmdp` points at `cmd` (16 bytes, `cmd_len` <= 16), `sbp` at `sense`
    // (`mx_sb_len` = SENSE_LEN bytes), and `dxferp` at the caller's buffer of exactly
    // `dxfer_len` bytes, writable for FROM_DEV (borrowed `&mut`) and only read by the kernel
    // for TO_DEV; it is null with length 0 for NONE. No iovec is used (`iovec_count` 0).
    unsafe { rustix::ioctl::ioctl(fd, Updater::<SG_IO, SgIoHdr>::new(&mut hdr))? };
    let sense_len = usize::from(hdr.sb_len_wr).min(SENSE_LEN);
    let resid = usize::try_from(hdr.resid).unwrap_or(0);
    let total = usize::try_from(dxfer_len).unwrap_or(0);
    Ok(Completion {
        status: hdr.status,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        sense,
        sense_len,
        data_len: total.saturating_sub(resid),
    })
}
