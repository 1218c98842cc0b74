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

pub use crate::native::LogRecord;
use crate::native::{State, INSTALLED};
use crate::{FlagContext, LoadInfo, MessageInfo, ReceiptInfo, ReceiptKind, BODY_PREFIX_BYTES};

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
