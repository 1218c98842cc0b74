//! Hostile: a plain core wasm module, not a component, built for `wasm32-unknown-unknown`
//! without wit-bindgen. It exports functions named like the component's core exports, so only
//! a check that the upload is a component (not a look at export names) refuses it. The node
//! must refuse to load it, with a clear error.

// Exporting under a chosen symbol name is `unsafe` to declare (names can clash). Only on
// wasm32: natively the crate is empty (`@` in an ELF symbol name means a symbol version).
#![allow(unsafe_code)]

/// Looks like the lowered `on-message`; returns 0 ("accept" to a naive host).
#[cfg(target_arch = "wasm32")]
#[unsafe(export_name = "switchboard:policy/policy@0.1.0#on-message")]
pub extern "C" fn on_message() -> i32 {
    0
}

/// Looks like the lowered `on-receipt`; returns 0 ("forward").
#[cfg(target_arch = "wasm32")]
#[unsafe(export_name = "switchboard:policy/policy@0.1.0#on-receipt")]
pub extern "C" fn on_receipt() -> i32 {
    0
}
