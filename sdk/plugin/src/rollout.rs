//! A stable hash for percentage rollouts.
//!
//! **Stable forever**: [`fnv1a64`], [`bucket`] and [`in_rollout`] return the same values for
//! the same inputs in every version of this crate, on every target, so a user who was in a
//! 10 % rollout stays in it when the plugin is rebuilt, upgraded, or moved to another node —
//! and, rolled out further to 20 %, is still in it. The tests pin fixed vectors.
//!
//! ```
//! use switchboard_plugin::rollout;
//!
//! // The same user gets the same bucket for a flag, wherever it is computed.
//! assert_eq!(rollout::bucket("new-composer", "alice"), rollout::bucket("new-composer", "alice"));
//! assert!(rollout::in_rollout(100, "new-composer", "alice"));
//! assert!(!rollout::in_rollout(0, "new-composer", "alice"));
//! ```

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit FNV-1a hash of `bytes`.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_continue(FNV_OFFSET_BASIS, bytes)
}

const fn fnv1a64_continue(mut hash: u64, bytes: &[u8]) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        i += 1;
    }
    hash
}

/// The bucket, 0 to 99, of `user` for the rollout named `salt` (e.g. a flag name):
/// `fnv1a64(salt ‖ 0x00 ‖ user) % 100`.
///
/// Salting with the rollout's name makes rollouts independent: the first 10 % of one flag
/// are not the first 10 % of every flag. The 0x00 byte keeps `("ab", "c")` and `("a", "bc")`
/// apart.
pub fn bucket(salt: &str, user: &str) -> u8 {
    let hash = fnv1a64_continue(fnv1a64(salt.as_bytes()), &[0]);
    let hash = fnv1a64_continue(hash, user.as_bytes());
    // The remainder is below 100.
    (hash % 100) as u8
}

/// Whether `user` is in a rollout named `salt` to `percent` % of users: its [`bucket`] is
/// below `percent`. 0 includes no one, 100 (or more) everyone, and raising the percentage only
/// adds users.
pub fn in_rollout(percent: u8, salt: &str, user: &str) -> bool {
    bucket(salt, user) < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// These values are a promise to tenants: if this test fails, users move between
    /// rollout buckets. Never change the expected values.
    #[test]
    fn buckets_are_stable_forever() {
        let vectors: &[(&str, &str, u8)] = &[
            // Computed independently of this code (a Python FNV-1a), then frozen.
            ("", "", 55),
            ("new-composer", "alice", 34),
            ("new-composer", "bob", 45),
            ("new-composer", "carol", 51),
            ("dark-mode", "alice", 63),
            ("dark-mode", "user-0001", 86),
            ("dark-mode", "user-0002", 75),
            ("beta", "alice", 7),
            ("beta", "bob", 52),
        ];
        for &(salt, user, expected) in vectors {
            assert_eq!(bucket(salt, user), expected, "bucket({salt:?}, {user:?})");
        }
    }

    #[test]
    fn salt_and_user_are_separated() {
        assert_ne!(bucket("ab", "c"), bucket("a", "bc"));
    }

    #[test]
    fn rollouts_only_grow_and_are_roughly_uniform() {
        let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut previous = 0;
        for percent in [0u8, 1, 10, 50, 99, 100] {
            let included: Vec<&String> = users
                .iter()
                .filter(|user| in_rollout(percent, "flag", user))
                .collect();
            assert!(included.len() >= previous);
            previous = included.len();
            let expected = users.len() * usize::from(percent) / 100;
            assert!(
                included.len().abs_diff(expected) <= users.len() / 50,
                "{percent}%: {} of {}",
                included.len(),
                users.len()
            );
            // Everyone in a smaller rollout is in every larger one.
            for user in &included {
                assert!(in_rollout(percent.saturating_add(1), "flag", user));
            }
        }
        assert!(users.iter().all(|user| in_rollout(200, "flag", user)));
    }
}
