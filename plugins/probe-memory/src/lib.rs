//! Probe for the isolation of pooled instances: can one tenant's instance see memory another
//! tenant's instance left behind? (`docs/reliability.md`, "Plugin isolation".)
//!
//! A **marker** is two 64-bit words, `tag` then `me`, both from the tenant's configuration as
//! 16 hex digits: `tag` is shared by every tenant of a test run, `me` is the tenant's own.
//! `on-message` does what the body says:
//!
//! - `write`: fills a fresh heap buffer of config `spread_bytes` (default 1 MiB) with the
//!   marker, over and over, and keeps it for the instance's lifetime. Accepts on the normal
//!   lane.
//! - `write <id>` (16 hex digits): the same with `id` in place of `me`, as if another tenant's
//!   marker had leaked in (the test's proof that a scan finds a foreign marker).
//! - `scan`: first grows the linear memory to about config `grow_to_bytes` (default 0: no
//!   growth; through the allocator, so a later `write` reuses that space), so pages another
//!   instance touched are in range, then reads every aligned word of the
//!   whole linear memory, from address 0 to `memory.size`. A `tag` word followed by a word
//!   other than `me` is another tenant's marker: rejects with
//!   `foreign <id> at <address>` (16 and 8 hex digits). Otherwise accepts on the high lane if
//!   the tenant's own marker is there, and on the low lane if no marker is.
//!
//! Anything else is accepted on the normal lane; the other hooks are the SDK's defaults.
//!
//! The scan must not find what it carries itself: the configuration arrives as hex text, and
//! `tag` and `me` are handled only masked (XOR [`MASK`]) everywhere they might be spilled to
//! linear memory (the shadow stack, returned `Option`s), and unmasked only in the scan's
//! comparison and `write`'s fill loop. Only `write` puts the raw words in memory. The scan reads 8-byte aligned words; `write` only writes aligned
//! markers, and a leak of another instance's memory would carry those.
//!
//! Reading all of linear memory needs raw pointer reads (`unsafe`), which the workspace
//! denies: allowed here, for the scan only.

use std::cell::RefCell;

use switchboard_plugin::{host, Lane, LogLevel, MessageInfo, Policy, Verdict};

/// `spread_bytes` when it is not configured: 1 MiB.
pub const DEFAULT_SPREAD_BYTES: usize = 1 << 20;

/// What `tag` and `me` are XORed with wherever they are kept (see the crate docs).
pub const MASK: u64 = 0x5a5a_5a5a_a5a5_a5a5;

/// See the crate docs.
#[derive(Debug, Default)]
pub struct ProbeMemory {
    /// What `write` filled, kept until the instance goes.
    hoard: RefCell<Vec<Box<[u64]>>>,
}

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Findings {
    /// Copies of the tenant's own marker.
    pub own: usize,
    /// The first marker of another tenant: (its byte address, its `me`).
    pub foreign: Option<(usize, u64)>,
}

/// Scans `words` (`read(i)` is the aligned word at byte address `8 * i`) for markers;
/// `tag` and `me` are masked.
pub fn scan(words: usize, read: impl Fn(usize) -> u64, tag: u64, me: u64) -> Findings {
    let mut found = Findings::default();
    let mut i = 0;
    while i + 1 < words {
        if read(i) ^ MASK == tag {
            let id = read(i + 1);
            if id ^ MASK == me {
                found.own += 1;
            } else if found.foreign.is_none() {
                found.foreign = Some((i * 8, id));
            }
        }
        i += 1;
    }
    found
}

/// The configuration value `key` as 16 hex digits, masked.
fn word(key: &str) -> Option<u64> {
    hex_word(&host::config(key)?)
}

/// 16 hex digits, masked.
fn hex_word(text: &str) -> Option<u64> {
    if text.len() != 16 {
        return None;
    }
    u64::from_str_radix(text, 16).ok().map(|w| w ^ MASK)
}

impl ProbeMemory {
    /// `tag` and `me` masked.
    fn write(&self, tag: u64, me: u64) {
        let bytes: usize = host::config_or("spread_bytes", DEFAULT_SPREAD_BYTES);
        let mut buffer = vec![0u64; (bytes / 8).max(2)].into_boxed_slice();
        for pair in buffer.chunks_exact_mut(2) {
            pair[0] = tag ^ MASK;
            pair[1] = me ^ MASK;
        }
        self.hoard.borrow_mut().push(buffer);
    }

    fn scan(&self, tag: u64, me: u64) -> Findings {
        memory::grow_to(host::config_or("grow_to_bytes", 0usize));
        memory::scan(self, tag, me)
    }
}

impl Policy for ProbeMemory {
    fn on_message(&self, message: &MessageInfo) -> Verdict {
        let (Some(tag), Some(me)) = (word("tag"), word("me")) else {
            host::log(
                LogLevel::Warn,
                "probe-memory: config tag and me must be 16 hex digits",
            );
            return Verdict::accept(Lane::Normal);
        };
        match message.body_prefix.as_slice() {
            b"write" => {
                self.write(tag, me);
                Verdict::accept(Lane::Normal)
            }
            [b'w', b'r', b'i', b't', b'e', b' ', hex @ ..] => {
                match std::str::from_utf8(hex).ok().and_then(hex_word) {
                    Some(id) => {
                        self.write(tag, id);
                        Verdict::accept(Lane::Normal)
                    }
                    _ => Verdict::reject("write <id>: id must be 16 hex digits"),
                }
            }
            b"scan" => {
                let found = self.scan(tag, me);
                match found.foreign {
                    Some((address, id)) => {
                        Verdict::reject(format!("foreign {id:016x} at {address:08x}"))
                    }
                    None if found.own > 0 => Verdict::accept(Lane::High),
                    None => Verdict::accept(Lane::Low),
                }
            }
            _ => Verdict::accept(Lane::Normal),
        }
    }
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod memory {
    use core::arch::wasm32;

    const PAGE: usize = 64 << 10;

    /// Grows the memory to `bytes` through the allocator (allocate, free), so what `write`
    /// allocates next fits in what was grown rather than going on top of it.
    pub fn grow_to(bytes: usize) {
        let now = wasm32::memory_size::<0>() * PAGE;
        if bytes > now {
            // black_box: an allocation nobody uses would be optimised away.
            drop(core::hint::black_box(Vec::<u8>::with_capacity(bytes - now)));
        }
    }

    /// The whole of linear memory 0, from address 0.
    pub fn scan(_probe: &super::ProbeMemory, tag: u64, me: u64) -> super::Findings {
        let words = wasm32::memory_size::<0>() * PAGE / 8;
        super::scan(
            words,
            |i| {
                // SAFETY: every address below `memory.size` is readable in wasm (there is no
                // unmapped page, address 0 included); the read is volatile because it reads
                // memory outside any Rust allocation, and only reads.
                unsafe {
                    core::ptr::read_volatile(core::ptr::with_exposed_provenance::<u64>(i * 8))
                }
            },
            tag,
            me,
        )
    }
}

/// Natively (unit tests) the probe's "memory" is what it wrote.
#[cfg(not(target_arch = "wasm32"))]
mod memory {
    pub fn grow_to(_bytes: usize) {}

    pub fn scan(probe: &super::ProbeMemory, tag: u64, me: u64) -> super::Findings {
        let words: Vec<u64> = probe.hoard.borrow().iter().flatten().copied().collect();
        super::scan(words.len(), |i| words[i], tag, me)
    }
}

switchboard_plugin::export_policy!(ProbeMemory);

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_plugin::testing::{self, TestHost};

    fn on(probe: &ProbeMemory, body: &[u8]) -> Verdict {
        probe.on_message(&testing::message("g", "u", body))
    }

    #[test]
    fn scan_sees_own_and_foreign_markers() {
        let (tag, a, b) = (0x1111, 0xaaaa, 0xbbbb);
        let memory = [0, tag, a, 7, tag, b, tag];
        let found = scan(memory.len(), |i| memory[i], tag ^ MASK, a ^ MASK);
        assert_eq!(found.own, 1);
        assert_eq!(found.foreign, Some((32, b)));
        // A tag in the last word has no id after it: not a marker.
        assert_eq!(scan(1, |_| tag, tag ^ MASK, a ^ MASK), Findings::default());
    }

    #[test]
    fn write_then_scan_finds_its_own_marker_only() {
        let _host = TestHost::builder()
            .config("tag", "00000000deadbeef")
            .config("me", "0123456789abcdef")
            .config("spread_bytes", "64")
            .install();
        let probe = ProbeMemory::default();
        assert_eq!(on(&probe, b"scan"), Verdict::accept(Lane::Low));
        assert_eq!(on(&probe, b"write"), Verdict::accept(Lane::Normal));
        assert_eq!(on(&probe, b"scan"), Verdict::accept(Lane::High));
    }

    #[test]
    fn write_as_another_id_plants_a_foreign_marker() {
        let _host = TestHost::builder()
            .config("tag", "00000000deadbeef")
            .config("me", "000000000000000a")
            .config("spread_bytes", "32")
            .install();
        let probe = ProbeMemory::default();
        assert_eq!(
            on(&probe, b"write 00000000000000bb"),
            Verdict::accept(Lane::Normal)
        );
        assert_eq!(
            on(&probe, b"scan"),
            Verdict::reject("foreign 00000000000000bb at 00000000")
        );
        assert!(on(&probe, b"write xyz").is_reject());
    }

    #[test]
    fn another_tenants_marker_is_reported() {
        let host = TestHost::builder()
            .config("tag", "00000000deadbeef")
            .config("me", "000000000000000a")
            .install();
        let probe = ProbeMemory::default();
        on(&probe, b"write");
        host.set_config("me", "000000000000000b");
        assert_eq!(
            on(&probe, b"scan"),
            Verdict::reject("foreign 000000000000000a at 00000000")
        );
    }

    #[test]
    fn without_configuration_it_does_nothing() {
        let _host = TestHost::builder().config("tag", "beef").install();
        let probe = ProbeMemory::default();
        assert_eq!(on(&probe, b"write"), Verdict::accept(Lane::Normal));
        assert!(probe.hoard.borrow().is_empty());
    }
}
