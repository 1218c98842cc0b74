//! The only `bindgen!` invocations in the workspace: the policy world (`wit/`) and the inert
//! WASI subset (`host/policy/wasi-wit/`). Nothing outside this crate sees these types;
//! `convert.rs` maps them to and from `types.rs`.

/// `switchboard:policy/tenant-policy`. Exports take borrowed strings so a call lowers the
/// host's `MessageInfo` without copying it first.
pub(crate) mod policy {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "tenant-policy",
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

/// The WASI 0.2 interfaces Rust's std links, implemented inertly in `wasi.rs` (its resource
/// types are in `inert.rs`).
pub(crate) mod wasi {
    wasmtime::component::bindgen!({
        path: "wasi-wit",
        world: "switchboard:inert-wasi/inert-wasi",
        imports: { default: trappable },
        with: {
            "wasi:io/error.error": crate::inert::InertError,
            "wasi:io/poll.pollable": crate::inert::InertPollable,
            "wasi:io/streams.input-stream": crate::inert::InertInputStream,
            "wasi:io/streams.output-stream": crate::inert::InertOutputStream,
            "wasi:cli/terminal-input.terminal-input": crate::inert::InertTerminalInput,
            "wasi:cli/terminal-output.terminal-output": crate::inert::InertTerminalOutput,
        },
    });
}
