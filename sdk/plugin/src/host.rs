//! What the node gives a plugin: its log, the tenant's plugin configuration, the clock and
//! metrics counters.
//!
//! On `wasm32` these call the component's `switchboard:policy/host` imports. On other
//! targets they call the thread-local [`TestHost`](crate::testing::TestHost), and panic when
//! none is installed, so a test cannot silently run against an empty configuration.
//!
//! # Configuration is cached
//!
//! A tenant's plugin configuration is fixed for the life of an instance (the node changes it
//! only by swapping in a new policy, with new instances; see `docs/plugins.md` §4 and §9). So
//! on `wasm32` the first read of a key ([`config`], [`config_or`], [`config_list`]) asks the
//! host, and every later read of that key in the same instance is answered from a cache in
//! the guest, without a host call; a key that is unset is cached as unset. The cache holds at
//! most [`MAX_CACHED_CONFIG_KEYS`] keys (reads of further keys go to the host every time) and
//! goes away with the instance.
//!
//! Natively nothing is cached: every read asks the installed
//! [`TestHost`](crate::testing::TestHost), so a test that changes the configuration with
//! [`TestHost::set_config`](crate::testing::TestHost::set_config) sees the change at once.
//!
//! A cached read still copies the value ([`config`] returns a `String`, [`config_list`] a
//! `Vec`), and [`config_or`] still parses it. A policy that reads configuration on every
//! message is cheaper still when it parses what it needs once, when it is created
//! (`export_policy!(MyPolicy, MyPolicy::from_config())`, see
//! [`export_policy!`](crate::export_policy)).

use std::str::FromStr;

use crate::LogLevel;

/// How many distinct configuration keys an instance caches (see the module docs); reads of
/// keys beyond these are not cached but still answered by the host.
pub const MAX_CACHED_CONFIG_KEYS: usize = 256;

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::cell::RefCell;

    use super::ConfigCache;
    use crate::bindings::switchboard::policy::host;
    use crate::LogLevel;

    thread_local! {
        /// What `config-get` answered, per key, for the life of this instance.
        static CONFIG: RefCell<ConfigCache> = const { RefCell::new(ConfigCache::new()) };
    }

    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message);
    }
    /// `f` must not call back into `host` (the cache is borrowed while it runs); only this
    /// module's callers pass closures here.
    pub fn with_config<R>(key: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        CONFIG.with(|cache| cache.borrow_mut().with(key, host::config_get, f))
    }
    pub fn now_ms() -> u64 {
        host::now_ms()
    }
    pub fn counter_add(name: &str, delta: u64) {
        host::counter_add(name, delta);
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::native as imp;

/// Writes to the node's log, tagged with the tenant. The node rate-limits plugin logs, so log
/// decisions that are rare, not one line per message.
pub fn log(level: LogLevel, message: &str) {
    imp::log(level, message);
}

/// The value of `key` in the tenant's plugin configuration. On `wasm32` only the first read
/// of a key in an instance is a host call (see [the module docs](self)).
pub fn config(key: &str) -> Option<String> {
    imp::with_config(key, |value| value.map(str::to_owned))
}

/// The value of `key` parsed as a `T`, or `default` when it is missing or does not parse
/// (which is logged as a warning, on every such read).
pub fn config_or<T: FromStr>(key: &str, default: T) -> T {
    // Parsed from the cached value in place; only a bad value is copied, for the warning
    // (logged after the cache is released).
    let parsed = imp::with_config(key, |raw| {
        raw.map(|raw| raw.trim().parse::<T>().map_err(|_| raw.to_owned()))
    });
    match parsed {
        None => default,
        Some(Ok(value)) => value,
        Some(Err(raw)) => {
            log(
                LogLevel::Warn,
                &format!("config {key:?} = {raw:?} is not valid here; using the default"),
            );
            default
        }
    }
}

/// The value of `key` as a comma-separated list: items trimmed, empty items dropped. Empty
/// when the key is missing.
pub fn config_list(key: &str) -> Vec<String> {
    imp::with_config(key, |raw| {
        raw.map(|raw| split_list(raw, ',')).unwrap_or_default()
    })
}

/// `raw` split at `separator`, items trimmed, empty items dropped.
pub(crate) fn split_list(raw: &str, separator: char) -> Vec<String> {
    raw.split(separator)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Configuration values by key, as the host answered them (`None`: unset), for the life of an
/// instance. Used on `wasm32` only; natively it is only unit-tested.
#[cfg(any(target_arch = "wasm32", test))]
struct ConfigCache {
    values: std::collections::BTreeMap<String, Option<String>>,
}

#[cfg(any(target_arch = "wasm32", test))]
impl ConfigCache {
    const fn new() -> Self {
        ConfigCache {
            values: std::collections::BTreeMap::new(),
        }
    }

    /// Calls `f` with the value of `key`: the cached one, else what `fetch` answers, which is
    /// then cached unless [`MAX_CACHED_CONFIG_KEYS`] keys already are.
    fn with<R>(
        &mut self,
        key: &str,
        fetch: impl FnOnce(&str) -> Option<String>,
        f: impl FnOnce(Option<&str>) -> R,
    ) -> R {
        if let Some(value) = self.values.get(key) {
            return f(value.as_deref());
        }
        let value = fetch(key);
        if self.values.len() >= MAX_CACHED_CONFIG_KEYS {
            return f(value.as_deref());
        }
        let value = self.values.entry(key.to_owned()).or_insert(value);
        f(value.as_deref())
    }
}

/// The node's clock, in milliseconds since the Unix epoch. (`std::time` is not available to
/// plugins.)
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Adds `delta` to the tenant-scoped counter `name` in the node's metrics.
pub fn counter_add(name: &str, delta: u64) {
    imp::counter_add(name, delta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestHost;

    #[test]
    fn config_or_parses_and_falls_back_with_a_warning() {
        let host = TestHost::builder()
            .config("limit", " 42 ")
            .config("broken", "forty-two")
            .install();
        assert_eq!(config_or("limit", 7u32), 42);
        assert_eq!(config_or("missing", 7u32), 7);
        assert!(host.logs().is_empty());
        assert_eq!(config_or("broken", 7u32), 7);
        let logs = host.logs();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].level, LogLevel::Warn);
        assert!(logs[0].message.contains("broken"), "{logs:?}");
    }

    #[test]
    fn config_list_trims_and_drops_empty_items() {
        let _host = TestHost::builder()
            .config("users", " alice, bob,,carol ,")
            .config("empty", "")
            .install();
        assert_eq!(config_list("users"), ["alice", "bob", "carol"]);
        assert!(config_list("empty").is_empty());
        assert!(config_list("missing").is_empty());
    }

    #[test]
    fn natively_config_is_not_cached() {
        let host = TestHost::builder().config("limit", "1").install();
        assert_eq!(config_or("limit", 0u32), 1);
        assert_eq!(config_list("limit"), ["1"]);
        host.set_config("limit", "2");
        assert_eq!(config("limit").as_deref(), Some("2"));
        assert_eq!(config_or("limit", 0u32), 2);
        assert_eq!(config_list("limit"), ["2"]);
        host.remove_config("limit");
        assert_eq!(config("limit"), None);
        assert_eq!(config_or("limit", 0u32), 0);
    }

    #[test]
    fn the_cache_asks_the_host_once_per_key_and_caches_unset_keys() {
        let mut cache = ConfigCache::new();
        let mut asked = Vec::new();
        let mut read = |cache: &mut ConfigCache, key: &str| {
            cache.with(
                key,
                |key| {
                    asked.push(key.to_owned());
                    (key == "set").then(|| "value".to_owned())
                },
                |value| value.map(str::to_owned),
            )
        };
        for _ in 0..3 {
            assert_eq!(read(&mut cache, "set").as_deref(), Some("value"));
            assert_eq!(read(&mut cache, "unset"), None);
        }
        assert_eq!(asked, ["set", "unset"]);
    }

    #[test]
    fn the_cache_is_bounded_and_still_answers_beyond_its_bound() {
        let mut cache = ConfigCache::new();
        let mut fetches = 0;
        let mut read = |cache: &mut ConfigCache, key: &str| {
            cache.with(
                key,
                |key| {
                    fetches += 1;
                    Some(format!("v-{key}"))
                },
                |value| value.map(str::to_owned),
            )
        };
        for i in 0..MAX_CACHED_CONFIG_KEYS {
            read(&mut cache, &format!("k{i}"));
        }
        let extra = format!("k{MAX_CACHED_CONFIG_KEYS}");
        assert_eq!(read(&mut cache, &extra), Some(format!("v-{extra}")));
        assert_eq!(read(&mut cache, &extra), Some(format!("v-{extra}")));
        assert_eq!(read(&mut cache, "k0").as_deref(), Some("v-k0"));
        assert_eq!(cache.values.len(), MAX_CACHED_CONFIG_KEYS);
        assert_eq!(
            fetches,
            MAX_CACHED_CONFIG_KEYS + 2,
            "the extra key is fetched each time"
        );
    }

    #[test]
    #[should_panic(expected = "no TestHost is installed")]
    fn host_calls_without_a_test_host_panic() {
        config("anything");
    }
}
