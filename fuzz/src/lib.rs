//! Switchboard's fuzz targets. Each module is one target's logic behind a `run(&[u8])`:
//! the libFuzzer binaries in `fuzz_targets/` call it, and so does the stable `#[test]`
//! replay in `tests/smoke.rs` (the checked-in corpus, then seeded random inputs for a
//! bounded time), which is what CI runs.
//!
//! Targets: [`frame`] (wire codec and framer), [`token`] (client tokens), [`plugin`]
//! (plugin upload: load + self-test), [`routing`] (the hub under operation sequences),
//! [`routing_sim`] (the routing core under the seeded simulation, operations from the input).

pub mod alloc;
pub mod frame;
pub mod plugin;
pub mod routing;
pub mod routing_sim;
pub mod token;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and the corpus folders name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("frame", frame::run),
    ("token", token::run),
    ("plugin_upload", plugin::run),
    ("routing", routing::run),
    ("routing_sim", routing_sim::run),
];
