//! SHA-256 digests written into keys, for the key spaces that hash what they name (Memcached keys,
//! gRPC request messages).

use std::fmt::Write;

use sha2::{Digest, Sha256};

/// Appends the SHA-256 of `bytes` to `out` as 64 lower-case hex digits.
pub(crate) fn push_sha256_hex(out: &mut String, bytes: &[u8]) {
    out.reserve(64);
    for byte in Sha256::digest(bytes) {
        // Writing into a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::push_sha256_hex;

    #[test]
    fn appends_the_hex_digest() {
        let mut out = String::from("k:");
        push_sha256_hex(&mut out, b"abc");
        assert_eq!(
            out,
            "k:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
