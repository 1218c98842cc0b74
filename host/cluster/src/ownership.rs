//! Which live node should own a shard: rendezvous (highest random weight) hashing. Pure.
//!
//! Every node computes the same answer from the same set of live nodes, with no
//! coordination; when a node leaves, only its shards move (each to its own runner-up), and
//! when one joins, it takes only the shards it now wins. The lease ([`crate::lease`]) is what
//! makes the answer true: the preferred owner still has to win the shard's lease, so two
//! nodes with different views of who is live never both own it.

use crate::names::Fnv;

/// The preferred owner of `shard` among `nodes` (node ids; order and duplicates do not
/// matter), or `None` when there is no node. Ties (two distinct ids with one score) go to
/// the smaller id, so the answer is a function of the set.
pub fn preferred_owner(shard: u16, nodes: &[impl AsRef<str>]) -> Option<&str> {
    nodes
        .iter()
        .map(AsRef::as_ref)
        .max_by(|a, b| score(shard, a).cmp(&score(shard, b)).then_with(|| b.cmp(a)))
}

/// The weight of `node` for `shard`: FNV-1a over the length-prefixed node id and the shard,
/// then a 64-bit finaliser (FNV alone mixes the last bytes poorly, so similar ids would
/// cluster).
fn score(shard: u16, node: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(&(node.len() as u32).to_be_bytes());
    h.write(node.as_bytes());
    h.write(&shard.to_be_bytes());
    mix(h.finish())
}

/// SplitMix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::SHARDS;

    fn owners(nodes: &[&str]) -> Vec<String> {
        (0..SHARDS)
            .map(|s| preferred_owner(s, nodes).unwrap().to_owned())
            .collect()
    }

    #[test]
    fn no_node_owns_nothing_and_one_node_owns_everything() {
        assert_eq!(preferred_owner(3, &[] as &[&str]), None);
        assert!(owners(&["solo"]).iter().all(|o| o == "solo"));
    }

    #[test]
    fn the_answer_is_a_function_of_the_set() {
        let a = owners(&["n1", "n2", "n3"]);
        assert_eq!(a, owners(&["n3", "n1", "n2"]));
        assert_eq!(a, owners(&["n2", "n3", "n1", "n2"]));
    }

    #[test]
    fn shards_spread_over_the_nodes() {
        let nodes = ["node-a", "node-b", "node-c", "node-d"];
        let owners = owners(&nodes);
        for n in nodes {
            let count = owners.iter().filter(|o| *o == n).count();
            // 64 on average; rendezvous hashing's spread over 256 shards stays well inside.
            assert!((32..=96).contains(&count), "{n}: {count}");
        }
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_shards() {
        let before = owners(&["n1", "n2", "n3", "n4"]);
        let after = owners(&["n1", "n2", "n4"]);
        for (b, a) in before.iter().zip(&after) {
            if b != "n3" {
                assert_eq!(a, b, "a shard of a node that stayed moved");
            } else {
                assert_ne!(a, "n3");
            }
        }
    }

    #[test]
    fn a_node_joining_takes_shards_only_for_itself() {
        let before = owners(&["n1", "n2", "n3"]);
        let after = owners(&["n1", "n2", "n3", "n4"]);
        let mut taken = 0;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                assert_eq!(a, "n4", "a shard moved between nodes that stayed");
                taken += 1;
            }
        }
        assert!(taken > 0);
    }
}
