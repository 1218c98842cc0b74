//! What the node gives a plugin: its log, the tenant's plugin configuration, the clock and
//! metrics counters.
//!
//! On `wasm32` these call the component's `switchboard:policy/host` imports. On other
//! targets they call the thread-local [`TestHost`](crate::testing::TestHost), and panic when
//! none is installed, so a test cannot silently run against an empty configuration.

use std::str::FromStr;

use crate::LogLevel;

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::switchboard::policy::host;
    use crate::LogLevel;

    pub fn log(level: LogLevel, message: &str) {
        host::log(level, message);
    }
    pub fn config(key: &str) -> Option<String> {
        host::config_get(key)
    }
    pub fn now_ms() -> u64 {
        host::now_ms()
    }
    pub fn counter_add(name: &str, delta: u64) {
        host::counter_add(name, delta);
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::imp;

/// Writes to the node's log, tagged with the tenant. The node rate-limits plugin logs, so log
/// decisions that are rare, not one line per message.
pub fn log(level: LogLevel, message: &str) {
    imp::log(level, message);
}

/// The value of `key` in the tenant's plugin configuration.
pub fn config(key: &str) -> Option<String> {
    imp::config(key)
}

/// The value of `key` parsed as a `T`, or `default` when it is missing or does not parse
/// (which is logged as a warning).
pub fn config_or<T: FromStr>(key: &str, default: T) -> T {
    let Some(raw) = config(key) else {
        return default;
    };
    match raw.trim().parse() {
        Ok(value) => value,
        Err(_) => {
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
    config(key)
        .map(|raw| split_list(&raw, ','))
        .unwrap_or_default()
}

/// `raw` split at `separator`, items trimmed, empty items dropped.
pub(crate) fn split_list(raw: &str, separator: char) -> Vec<String> {
    raw.split(separator)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
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
    #[should_panic(expected = "no TestHost is installed")]
    fn host_calls_without_a_test_host_panic() {
        config("anything");
    }
}
