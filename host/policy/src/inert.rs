//! The resource types of the inert WASI interfaces (`wasi.rs`). A leaf of their own: the
//! `bindgen!` in `bindings.rs` maps the WASI resources onto them, and `wasi.rs` implements
//! the generated traits with them, so neither of the two has to name the other's types.

/// Resource types of the inert interfaces. They carry nothing: the host never needs to tell
/// one stdout handle from another.
pub struct InertError;
pub struct InertPollable;
pub struct InertInputStream;
pub struct InertOutputStream;
pub struct InertTerminalInput;
pub struct InertTerminalOutput;
