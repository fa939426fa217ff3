//! CRC32C (Castagnoli, reflected polynomial `0x82F63B78`), table driven, `const`-built.
//!
//! ext4 uses the *raw* form: the initial value is the seed and there is no final inversion
//! ([`crc32c_raw`]). The textbook CRC32C ([`crc32c`]) is `!crc32c_raw(!0, data)`.

const POLY: u32 = 0x82F6_3B78;

// `static`, not `const`: indexing a `const` array copies all 4 KiB of it in debug builds.
static TABLE: [[u32; 256]; 4] = build_tables();

const fn build_tables() -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation, reason = "i < 256")]
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 4 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xFF) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

/// The raw CRC32C update used by ext4 (`crc32c_le` in the kernel and e2fsprogs): starts from
/// `seed`, no final inversion. Never panics.
#[must_use]
pub fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    let mut crc = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        crc ^= u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        crc = TABLE[3][(crc & 0xFF) as usize]
            ^ TABLE[2][((crc >> 8) & 0xFF) as usize]
            ^ TABLE[1][((crc >> 16) & 0xFF) as usize]
            ^ TABLE[0][(crc >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = TABLE[0][((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC32C (initial `!0`, final inversion), as used by iSCSI and the native
/// format. Check value: `crc32c(b"123456789") == 0xE306_9283`. Never panics.
#[must_use]
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_raw(!0, data)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "test patterns")]
mod tests {
    use super::*;

    fn bitwise(seed: u32, data: &[u8]) -> u32 {
        let mut c = seed;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
        }
        c
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }

    #[test]
    fn matches_bitwise_reference_for_all_lengths() {
        let data: [u8; 67] = core::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5A);
        for len in 0..data.len() {
            for seed in [0u32, !0, 0x643D_BF5B] {
                assert_eq!(crc32c_raw(seed, &data[..len]), bitwise(seed, &data[..len]));
            }
        }
    }

    #[test]
    fn ext4_uuid_seed_vector() {
        // spec/ext4-mmp.md §1.2: UUID 11111111-2222-3333-4444-555555555555 -> seed 0x643DBF5B.
        let uuid = [
            0x11, 0x11, 0x11, 0x11, 0x22, 0x22, 0x33, 0x33, 0x44, 0x44, 0x55, 0x55, 0x55, 0x55,
            0x55, 0x55,
        ];
        assert_eq!(crc32c_raw(!0, &uuid), 0x643D_BF5B);
    }
}
