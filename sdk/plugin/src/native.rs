//! The native side of [`crate::host`]: the [`TestHost`](crate::testing::TestHost)s installed
//! on this thread, and the host calls answered from the innermost one. Below both `host` and
//! `testing`, so neither has to reach into the other.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::LogLevel;

/// One line a plugin logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// The level it was logged at.
    pub level: LogLevel,
    /// The message.
    pub message: String,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) now_ms: u64,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) counters: BTreeMap<String, u64>,
}

thread_local! {
    /// Installed hosts, innermost last; the last one answers.
    pub(crate) static INSTALLED: RefCell<Vec<Rc<RefCell<State>>>> =
        const { RefCell::new(Vec::new()) };
}

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
