//! Unit-testing a policy natively, with plain `cargo test` (not available on `wasm32`).
//!
//! Install a [`TestHost`] at the start of a test; until it is dropped, the [`host`](crate::host)
//! functions called on this thread read its configuration and clock and record logs and
//! counters into it. Each test runs on its own thread, so tests do not see each other's host.
//!
//! ```
//! use switchboard_plugin::testing::{self, TestHost};
//! use switchboard_plugin::{host, LogLevel};
//!
//! let host = TestHost::builder()
//!     .config("large_bytes", "1024")
//!     .now_ms(1_700_000_000_000)
//!     .install();
//! assert_eq!(host::config_or("large_bytes", 16_384u32), 1024);
//! assert_eq!(host::now_ms(), 1_700_000_000_000);
//! host::log(LogLevel::Info, "hello");
//! host::counter_add("seen", 2);
//! assert_eq!(host.logs()[0].message, "hello");
//! assert_eq!(host.counter("seen"), 2);
//!
//! // What the node would pass for a 5-byte message to a group of 2:
//! let message = testing::message("g1", "alice", b"hello");
//! assert_eq!(message.body_size, 5);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::{
    FlagContext, LoadInfo, LogLevel, MessageInfo, ReceiptInfo, ReceiptKind, BODY_PREFIX_BYTES,
};

/// One line a plugin logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The level it was logged at.
    pub level: LogLevel,
    /// The message.
    pub message: String,
}

#[derive(Default)]
struct State {
    config: BTreeMap<String, String>,
    now_ms: u64,
    logs: Vec<LogRecord>,
    counters: BTreeMap<String, u64>,
}

thread_local! {
    /// Installed hosts, innermost last; the last one answers.
    static INSTALLED: RefCell<Vec<Rc<RefCell<State>>>> = const { RefCell::new(Vec::new()) };
}

/// Configures a [`TestHost`]; [`TestHostBuilder::install`] makes it answer host calls.
#[derive(Default)]
pub struct TestHostBuilder {
    state: State,
}

impl TestHostBuilder {
    /// Sets `key` in the tenant's plugin configuration.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.state.config.insert(key.into(), value.into());
        self
    }

    /// Fixes the clock at `now_ms` (default 0) until the test changes it.
    pub fn now_ms(mut self, now_ms: u64) -> Self {
        self.state.now_ms = now_ms;
        self
    }

    /// Installs the host on this thread until the returned handle is dropped.
    pub fn install(self) -> TestHost {
        let state = Rc::new(RefCell::new(self.state));
        INSTALLED.with(|installed| installed.borrow_mut().push(Rc::clone(&state)));
        TestHost { state }
    }
}

/// A fake node for native tests: configuration and a fixed clock in, logs and counters out.
///
/// Created with [`TestHost::builder`]; answers host calls on its thread until dropped.
pub struct TestHost {
    state: Rc<RefCell<State>>,
}

impl TestHost {
    /// A builder with no configuration and the clock at 0.
    pub fn builder() -> TestHostBuilder {
        TestHostBuilder::default()
    }

    /// Everything logged so far, oldest first.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.state.borrow().logs.clone()
    }

    /// Forgets the logs so far.
    pub fn clear_logs(&self) {
        self.state.borrow_mut().logs.clear();
    }

    /// The value of counter `name` (0 if never added to).
    pub fn counter(&self, name: &str) -> u64 {
        self.state.borrow().counters.get(name).copied().unwrap_or(0)
    }

    /// Every counter added to so far.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.state.borrow().counters.clone()
    }

    /// Sets `key` in the configuration. The next read sees it: natively the SDK does not cache
    /// configuration. (In a component it does, for the life of the instance, since the node
    /// never changes an instance's configuration; see [`crate::host`]. A policy that parses
    /// its configuration when it is created sees a change only when created again.)
    pub fn set_config(&self, key: impl Into<String>, value: impl Into<String>) {
        self.state
            .borrow_mut()
            .config
            .insert(key.into(), value.into());
    }

    /// Removes `key` from the configuration; like [`TestHost::set_config`], seen at the next
    /// read.
    pub fn remove_config(&self, key: &str) {
        self.state.borrow_mut().config.remove(key);
    }

    /// Sets the clock.
    pub fn set_now_ms(&self, now_ms: u64) {
        self.state.borrow_mut().now_ms = now_ms;
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        let mut state = self.state.borrow_mut();
        state.now_ms = state.now_ms.saturating_add(ms);
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // try_with: the thread-local may already be gone when a host is dropped during thread
        // teardown.
        let _ = INSTALLED.try_with(|installed| {
            installed
                .borrow_mut()
                .retain(|state| !Rc::ptr_eq(state, &self.state));
        });
    }
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("TestHost")
            .field("config", &state.config)
            .field("now_ms", &state.now_ms)
            .field("logs", &state.logs)
            .field("counters", &state.counters)
            .finish()
    }
}

/// The native side of [`crate::host`].
pub(crate) mod imp {
    use super::*;

    fn with_host<R>(call: &str, f: impl FnOnce(&mut State) -> R) -> R {
        let state = INSTALLED.with(|installed| installed.borrow().last().cloned());
        let Some(state) = state else {
            panic!(
                "switchboard_plugin::host::{call} was called natively but no TestHost is \
                 installed on this thread: start the test with \
                 `let host = TestHost::builder().install();`"
            );
        };
        let mut state = state.borrow_mut();
        f(&mut state)
    }

    pub fn log(level: LogLevel, message: &str) {
        // Shown by the test harness when the test fails.
        eprintln!("[plugin {level:?}] {message}");
        with_host("log", |state| {
            state.logs.push(LogRecord {
                level,
                message: message.to_owned(),
            })
        });
    }

    /// Not cached natively (unlike on `wasm32`): every read sees the host's current
    /// configuration. `f` must not call back into `host` (the state is borrowed while it runs).
    pub fn with_config<R>(key: &str, f: impl FnOnce(Option<&str>) -> R) -> R {
        with_host("config", |state| {
            f(state.config.get(key).map(String::as_str))
        })
    }

    pub fn now_ms() -> u64 {
        with_host("now_ms", |state| state.now_ms)
    }

    pub fn counter_add(name: &str, delta: u64) {
        with_host("counter_add", |state| {
            let counter = state.counters.entry(name.to_owned()).or_default();
            *counter = counter.saturating_add(delta);
        });
    }
}

/// What the node passes for a message of `body` from `sender` to `group`: the body's size and
/// first 64 bytes, a group of 2 with both members connected. Adjust fields with struct update
/// syntax: `MessageInfo { group_size: 500, ..testing::message("g", "alice", b"hi") }`.
pub fn message(group: &str, sender: &str, body: &[u8]) -> MessageInfo {
    MessageInfo {
        group: group.to_owned(),
        sender: sender.to_owned(),
        body_size: u32::try_from(body.len()).unwrap_or(u32::MAX),
        body_prefix: body[..body.len().min(BODY_PREFIX_BYTES)].to_vec(),
        group_size: 2,
        connected_members: 2,
    }
}

/// A receipt of `kind` from `reader` for message 1 of `group`, a group of `group_size`.
pub fn receipt(group: &str, reader: &str, kind: ReceiptKind, group_size: u32) -> ReceiptInfo {
    ReceiptInfo {
        group: group.to_owned(),
        seq: 1,
        reader: reader.to_owned(),
        kind,
        group_size,
    }
}

/// A flag context for `user`, in `group` if given.
pub fn flag_context(user: &str, group: Option<&str>) -> FlagContext {
    FlagContext {
        user: user.to_owned(),
        group: group.map(str::to_owned),
    }
}

/// Load at `level`, with no rate or connections.
pub fn load(level: u8) -> LoadInfo {
    LoadInfo {
        level,
        tenant_message_rate: 0,
        tenant_connections: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn answers_from_its_config_and_clock_and_records_logs_and_counters() {
        let host = TestHost::builder().config("a", "1").now_ms(1_000).install();
        assert_eq!(host::config("a").as_deref(), Some("1"));
        assert_eq!(host::config("b"), None);
        assert_eq!(host::now_ms(), 1_000);

        host.set_config("b", "2");
        host.remove_config("a");
        host.advance_ms(500);
        assert_eq!(host::config("a"), None);
        assert_eq!(host::config("b").as_deref(), Some("2"));
        assert_eq!(host::now_ms(), 1_500);
        host.set_now_ms(7);
        assert_eq!(host::now_ms(), 7);

        host::log(LogLevel::Debug, "one");
        host::log(LogLevel::Error, "two");
        assert_eq!(
            host.logs(),
            [
                LogRecord {
                    level: LogLevel::Debug,
                    message: "one".into()
                },
                LogRecord {
                    level: LogLevel::Error,
                    message: "two".into()
                },
            ]
        );
        host.clear_logs();
        assert!(host.logs().is_empty());

        host::counter_add("x", 2);
        host::counter_add("x", 3);
        host::counter_add("y", u64::MAX);
        host::counter_add("y", 1);
        assert_eq!(host.counter("x"), 5);
        assert_eq!(host.counter("y"), u64::MAX, "saturates");
        assert_eq!(host.counter("never"), 0);
        assert_eq!(host.counters().len(), 2);
    }

    #[test]
    fn the_innermost_host_answers_until_dropped() {
        let outer = TestHost::builder().config("k", "outer").install();
        {
            let _inner = TestHost::builder().config("k", "inner").install();
            assert_eq!(host::config("k").as_deref(), Some("inner"));
            host::counter_add("c", 1);
        }
        assert_eq!(host::config("k").as_deref(), Some("outer"));
        assert_eq!(outer.counter("c"), 0, "the inner host got the counter");
        drop(outer);
        let uninstalled = std::panic::catch_unwind(host::now_ms);
        assert!(uninstalled.is_err());
    }

    #[test]
    fn hosts_are_per_thread() {
        let host = TestHost::builder().config("k", "main").install();
        std::thread::spawn(|| {
            let _other = TestHost::builder().config("k", "other").install();
            host::counter_add("c", 1);
            assert_eq!(host::config("k").as_deref(), Some("other"));
        })
        .join()
        .unwrap();
        assert_eq!(host::config("k").as_deref(), Some("main"));
        assert_eq!(host.counter("c"), 0);
    }

    #[test]
    fn message_mirrors_what_the_node_passes() {
        let body = [b'x'; 100];
        let message = message("g", "alice", &body);
        assert_eq!(message.body_size, 100);
        assert_eq!(message.body_prefix.len(), BODY_PREFIX_BYTES);
        assert_eq!(message.group, "g");
        assert_eq!(message.sender, "alice");
    }
}
