//! A plugin's version: what names it in the artifact cache, in every [`Plugin`](crate::Plugin)
//! and in the node's bindings. A leaf: the cache and the loaded plugin both use it.

use sha2::{Digest, Sha256};

/// Bytes of a SHA-256 digest.
pub(crate) const DIGEST_BYTES: usize = 32;

/// A plugin version: the lowercase hex SHA-256 of the component. Only ever 64 hex digits,
/// so it is safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Version(String);

impl Version {
    pub(crate) fn of(wasm: &[u8]) -> Version {
        Version(hex(&Sha256::digest(wasm)))
    }

    /// Accepts either case; keeps lowercase.
    pub(crate) fn parse(version: &str) -> Option<Version> {
        (version.len() == 2 * DIGEST_BYTES && version.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Version(version.to_ascii_lowercase()))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}
