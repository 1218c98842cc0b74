//! The stable hash the host uses to pick a share of users: canary cohorts and flag rollouts.
//!
//! It is the same function as the plugin SDK's `switchboard_plugin::rollout::bucket`
//! (FNV-1a 64 of `salt ‖ 0x00 ‖ user`, mod 100), so a tenant can predict in its plugin which
//! users a host-side rollout reaches. The SDK is built for wasm and does not depend on this
//! crate, hence the copy; the frozen vectors below are the SDK's own and keep the two equal.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The bucket, 0 to 99, of `user` in the rollout named `salt`. Stable forever.
pub fn bucket(salt: &str, user: &str) -> u8 {
    let h = fnv1a64(fnv1a64(FNV_OFFSET_BASIS, salt.as_bytes()), &[0]);
    (fnv1a64(h, user.as_bytes()) % 100) as u8
}

/// Whether `user` is in the first `percent` % of the rollout named `salt`. Raising the
/// percentage only adds users.
pub fn in_rollout(percent: u8, salt: &str, user: &str) -> bool {
    bucket(salt, user) < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SDK's frozen vectors: if this fails, host and SDK disagree on cohorts.
    #[test]
    fn matches_the_sdk_buckets() {
        for &(salt, user, expected) in &[
            ("", "", 55u8),
            ("new-composer", "alice", 34),
            ("new-composer", "bob", 45),
            ("dark-mode", "user-0001", 86),
            ("beta", "alice", 7),
            ("beta", "bob", 52),
        ] {
            assert_eq!(bucket(salt, user), expected, "bucket({salt:?}, {user:?})");
        }
    }

    #[test]
    fn shares_are_roughly_what_was_asked() {
        let n = (0..10_000)
            .filter(|i| in_rollout(10, "canary", &format!("user-{i}")))
            .count();
        assert!((800..1200).contains(&n), "{n}");
    }
}
