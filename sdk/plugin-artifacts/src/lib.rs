//! The plugins of `plugins/` and `examples/minimal-plugin`, built for wasm32 by this crate's
//! build script (the same build as `cargo xtask build-plugins`), as absolute paths to their
//! `.wasm` files: one constant per plugin, named after its directory (`hostile-loop` →
//! [`HOSTILE_LOOP`]), and [`ALL`].
//!
//! The host's tests take this crate as a dev-dependency and read the files. Every plugin has a
//! test at the host's boundary: the host's tests check that each name in [`ALL`] is used, and
//! this crate's tests check that each directory of `plugins/` is in [`ALL`].
//!
//! All are components of the `tenant-policy` world, built for `wasm32-wasip2`, except:
//! [`HOSTILE_WRONG_WORLD`] (a component of another world) and [`HOSTILE_CORE_MODULE`] (a core
//! module, built for `wasm32-unknown-unknown`). Building needs both targets installed.

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
