//! The device-mapper ioctl call: the only `unsafe` of `dm`.
#![allow(unsafe_code)]

use std::os::fd::BorrowedFd;

use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

use super::{Cmd, HEADER_LEN};

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`: the size field is the fixed header's.
const fn request(cmd: Cmd) -> Opcode {
    opcode::read_write::<[u8; HEADER_LEN]>(0xfd, cmd as u8)
}

/// One command over a caller's buffer (header + payload, `data_size` = its length).
struct Call<'a> {
    opcode: Opcode,
    buf: &'a mut [u8],
}

// SAFETY: the kernel reads `data_size` bytes at the pointer and writes at most as many
// back; `run` checks that `data_size` equals the buffer's length before the call, the
// buffer is borrowed mutably for the whole synchronous call, and the ioctl is
// `_IOWR` (read and write).
unsafe impl Ioctl for Call<'_> {
    type Output = ();
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn output_from_ptr(
        _out: IoctlOutput,
        _extract_output: *mut core::ffi::c_void,
    ) -> rustix::io::Result<Self::Output> {
        Ok(())
    }
}

/// Runs `cmd` with `buf` (built by `super::Request`).
pub(super) fn run(fd: BorrowedFd<'_>, cmd: Cmd, buf: &mut [u8]) -> rustix::io::Result<()> {
    let mut size = [0u8; 4];
    size.copy_from_slice(&buf[12..16]);
    if buf.len() < HEADER_LEN || u32::from_ne_bytes(size) as usize != buf.len() {
        return Err(rustix::io::Errno::INVAL);
    }
    // SAFETY: `Call` upholds the `Ioctl` contract above: the pointer is to `buf`, whose
    // length the header's `data_size` states (checked just above), valid and exclusively
    // borrowed for the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Call {
                opcode: request(cmd),
                buf,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_header() {
        // _IOWR(0xfd, 3, struct dm_ioctl) with sizeof 312: 0xc138fd03.
        assert_eq!(request(Cmd::DevCreate) as u64, 0xc138_fd03);
        assert_eq!(request(Cmd::Version) as u64, 0xc138_fd00);
        assert_eq!(request(Cmd::TableLoad) as u64, 0xc138_fd09);
    }
}
