//! `testing::TestHost` through the public API, as a plugin's own tests use it: it answers the
//! `host` functions called on its thread while installed. (Here rather than in `testing.rs`,
//! so `testing` does not use `host`: `host`'s own tests use `TestHost`.)

use switchboard_plugin::testing::{LogRecord, TestHost};
use switchboard_plugin::{host, LogLevel};

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
