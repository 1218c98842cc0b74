//! UniFFI's binding generator, built from the same `uniffi` version as `switchboard-mobile`
//! (both take it from the workspace, pinned exactly), so the generated Kotlin, Swift and
//! Python match the library's scaffolding. `cargo xtask test-mobile` and the build scripts
//! run it in library mode:
//! `cargo run -p switchboard-mobile-bindgen -- generate --library <libswitchboard_mobile> ...`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
