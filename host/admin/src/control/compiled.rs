//! Compiled plugins kept in memory, so activating a stored version again is a lookup: at
//! most [`COMPILED_PLUGINS`], least recently used dropped first.
//!
//! Only stored versions enter (an upload's plugin after its self-test passed and it was
//! written, or a stored version loaded for activation): a refused upload never does. A
//! version serving a tenant is also held by the hub's policy value, so dropping it here
//! frees nothing that is in use; it only makes the next activation load it from the
//! artifact cache (milliseconds) again.

use std::collections::HashMap;

use parking_lot::Mutex;
use switchboard_core::TenantId;
use switchboard_policy::Plugin;

/// Most compiled plugins kept in memory (beyond the ones serving). A compiled first-party
/// plugin is a few MiB of code and metadata.
pub const COMPILED_PLUGINS: usize = 32;

type Key = (TenantId, String);

/// Generic over the value only so the eviction is unit-tested without compiling plugins.
#[derive(Debug)]
pub(crate) struct CompiledPlugins<V = Plugin> {
    cap: usize,
    inner: Mutex<Inner<V>>,
}

#[derive(Debug)]
struct Inner<V> {
    /// Each plugin with the tick of its last use.
    map: HashMap<Key, (V, u64)>,
    tick: u64,
}

impl<V: Clone> CompiledPlugins<V> {
    pub(crate) fn new(cap: usize) -> CompiledPlugins<V> {
        CompiledPlugins {
            cap: cap.max(1),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                tick: 0,
            }),
        }
    }

    pub(crate) fn get(&self, tenant: &TenantId, version: &str) -> Option<V> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let key = (tenant.clone(), version.to_owned());
        inner.map.get_mut(&key).map(|(plugin, used)| {
            *used = tick;
            plugin.clone()
        })
    }

    /// Keeps `plugin`, dropping the least recently used ones beyond the cap.
    pub(crate) fn insert(&self, tenant: &TenantId, version: &str, plugin: V) {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        inner
            .map
            .insert((tenant.clone(), version.to_owned()), (plugin, tick));
        while inner.map.len() > self.cap {
            let Some(oldest) = inner
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            inner.map.remove(&oldest);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_the_cap_holds() {
        let t = TenantId::new("t").unwrap();
        let lru = CompiledPlugins::<u32>::new(3);
        for v in 0..3u32 {
            lru.insert(&t, &v.to_string(), v);
        }
        // "0" is used again, so "1" is the oldest when "3" comes.
        assert_eq!(lru.get(&t, "0"), Some(0));
        lru.insert(&t, "3", 3);
        assert_eq!(lru.len(), 3);
        assert_eq!(lru.get(&t, "1"), None);
        for v in ["0", "2", "3"] {
            assert!(lru.get(&t, v).is_some(), "{v}");
        }
        for v in 4..100u32 {
            lru.insert(&t, &v.to_string(), v);
        }
        assert_eq!(lru.len(), 3);
        // Another tenant's version of the same name is another entry.
        let other = TenantId::new("u").unwrap();
        assert_eq!(lru.get(&other, "99"), None);
    }
}
