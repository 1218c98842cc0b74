//! Inert WASI: the interfaces Rust's standard library links into every wasm32-wasip2
//! component, implemented so that they reach nothing.
//!
//! - `wasi:cli/environment`: no variables, no arguments, no working directory.
//! - `wasi:cli/exit`: traps ("plugin called exit").
//! - `wasi:cli/stdin`: an input stream that is already closed (reads see end of file).
//! - `wasi:cli/stdout`, `wasi:cli/stderr`: output streams that accept everything. Stdout is
//!   discarded; of stderr, the first `max_log_line_bytes` written in a call are kept, so a
//!   call that traps can report what the guest said before it died (a Rust panic's message
//!   is written there just before the `unreachable`). Plugins log through `host.log`.
//! - `wasi:cli/terminal-*`: no terminal.
//! - `wasi:io/{error,poll,streams}`: what the streams above need; every pollable is ready.
//!
//! Why not `wasmtime-wasi`: its synchronous stream bindings run every blocking operation
//! (including the write behind a guest's panic message) through `Handle::block_on` on the
//! ambient tokio runtime, which panics on a runtime worker thread, and it would bring tokio,
//! cap-std and the rest of WASI into the one crate that runs untrusted code. These
//! implementations hold no state but that bounded stderr tail: a handle's representation is 0
//! (1 for stderr, so its writes can be told apart), the
//! component-model handle table (capped by `PolicyLimits::max_handles`) is the only thing a
//! guest can grow.
//!
//! Only the names `load.rs` classifies as `InertWasi` are ever linked; anything else in WASI
//! (files, sockets, clocks, random, http) is refused at load.

use wasmtime::component::Resource;

use crate::bindings::wasi::wasi::cli::{
    environment, exit, stderr, stdin, stdout, terminal_input, terminal_output, terminal_stderr,
    terminal_stdin, terminal_stdout,
};
use crate::bindings::wasi::wasi::io::{error, poll, streams};
use crate::host::InstanceState;
use crate::inert::{
    InertError, InertInputStream, InertOutputStream, InertPollable, InertTerminalInput,
    InertTerminalOutput,
};

/// How much an output stream says it can take at once; writes are discarded.
const WRITE_PERMIT: u64 = 4096;

#[derive(Debug, thiserror::Error)]
#[error("plugin called WASI exit (status: {0}); policy plugins must return from each hook")]
pub(crate) struct PluginExited(String);

type Result<T> = wasmtime::Result<T>;

impl environment::Host for InstanceState {
    fn get_environment(&mut self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    fn get_arguments(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn initial_cwd(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
}

impl exit::Host for InstanceState {
    fn exit(&mut self, status: std::result::Result<(), ()>) -> Result<()> {
        let status = if status.is_ok() { "ok" } else { "error" };
        Err(PluginExited(status.into()).into())
    }

    fn exit_with_code(&mut self, status_code: u8) -> Result<()> {
        Err(PluginExited(status_code.to_string()).into())
    }
}

impl stdin::Host for InstanceState {
    fn get_stdin(&mut self) -> Result<Resource<InertInputStream>> {
        Ok(Resource::new_own(0))
    }
}

impl stdout::Host for InstanceState {
    fn get_stdout(&mut self) -> Result<Resource<InertOutputStream>> {
        Ok(Resource::new_own(0))
    }
}

/// The representation of stderr's handles (every other handle's is 0).
const STDERR_REP: u32 = 1;

impl stderr::Host for InstanceState {
    fn get_stderr(&mut self) -> Result<Resource<InertOutputStream>> {
        Ok(Resource::new_own(STDERR_REP))
    }
}

impl InstanceState {
    /// Keeps the start of what a call writes to stderr, up to the log line bound.
    fn keep_stderr(&mut self, stream: &Resource<InertOutputStream>, contents: &[u8]) {
        if stream.rep() != STDERR_REP {
            return;
        }
        let room = self
            .shared
            .limits
            .max_log_line_bytes
            .saturating_sub(self.stderr.len());
        self.stderr
            .extend_from_slice(&contents[..contents.len().min(room)]);
    }
}

impl terminal_input::Host for InstanceState {}

impl terminal_input::HostTerminalInput for InstanceState {
    fn drop(&mut self, _rep: Resource<InertTerminalInput>) -> Result<()> {
        Ok(())
    }
}

impl terminal_output::Host for InstanceState {}

impl terminal_output::HostTerminalOutput for InstanceState {
    fn drop(&mut self, _rep: Resource<InertTerminalOutput>) -> Result<()> {
        Ok(())
    }
}

impl terminal_stdin::Host for InstanceState {
    fn get_terminal_stdin(&mut self) -> Result<Option<Resource<InertTerminalInput>>> {
        Ok(None)
    }
}

impl terminal_stdout::Host for InstanceState {
    fn get_terminal_stdout(&mut self) -> Result<Option<Resource<InertTerminalOutput>>> {
        Ok(None)
    }
}

impl terminal_stderr::Host for InstanceState {
    fn get_terminal_stderr(&mut self) -> Result<Option<Resource<InertTerminalOutput>>> {
        Ok(None)
    }
}

impl error::Host for InstanceState {}

impl error::HostError for InstanceState {
    fn to_debug_string(&mut self, _self_: Resource<InertError>) -> Result<String> {
        Ok("inert stream error".into())
    }

    fn drop(&mut self, _rep: Resource<InertError>) -> Result<()> {
        Ok(())
    }
}

impl poll::Host for InstanceState {
    fn poll(&mut self, pollables: Vec<Resource<InertPollable>>) -> Result<Vec<u32>> {
        // Every inert pollable is always ready.
        Ok((0..u32::try_from(pollables.len())?).collect())
    }
}

impl poll::HostPollable for InstanceState {
    fn ready(&mut self, _self_: Resource<InertPollable>) -> Result<bool> {
        Ok(true)
    }

    fn block(&mut self, _self_: Resource<InertPollable>) -> Result<()> {
        Ok(())
    }

    fn drop(&mut self, _rep: Resource<InertPollable>) -> Result<()> {
        Ok(())
    }
}

type StreamResult<T> = Result<std::result::Result<T, streams::StreamError>>;

impl streams::Host for InstanceState {}

impl streams::HostInputStream for InstanceState {
    fn read(&mut self, _self_: Resource<InertInputStream>, _len: u64) -> StreamResult<Vec<u8>> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn blocking_read(
        &mut self,
        _self_: Resource<InertInputStream>,
        _len: u64,
    ) -> StreamResult<Vec<u8>> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn skip(&mut self, _self_: Resource<InertInputStream>, _len: u64) -> StreamResult<u64> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn blocking_skip(
        &mut self,
        _self_: Resource<InertInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn subscribe(&mut self, _self_: Resource<InertInputStream>) -> Result<Resource<InertPollable>> {
        Ok(Resource::new_own(0))
    }

    fn drop(&mut self, _rep: Resource<InertInputStream>) -> Result<()> {
        Ok(())
    }
}

impl streams::HostOutputStream for InstanceState {
    fn check_write(&mut self, _self_: Resource<InertOutputStream>) -> StreamResult<u64> {
        Ok(Ok(WRITE_PERMIT))
    }

    fn write(
        &mut self,
        stream: Resource<InertOutputStream>,
        contents: Vec<u8>,
    ) -> StreamResult<()> {
        self.keep_stderr(&stream, &contents);
        Ok(Ok(()))
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<InertOutputStream>,
        contents: Vec<u8>,
    ) -> StreamResult<()> {
        self.keep_stderr(&stream, &contents);
        Ok(Ok(()))
    }

    fn flush(&mut self, _self_: Resource<InertOutputStream>) -> StreamResult<()> {
        Ok(Ok(()))
    }

    fn blocking_flush(&mut self, _self_: Resource<InertOutputStream>) -> StreamResult<()> {
        Ok(Ok(()))
    }

    fn subscribe(
        &mut self,
        _self_: Resource<InertOutputStream>,
    ) -> Result<Resource<InertPollable>> {
        Ok(Resource::new_own(0))
    }

    fn write_zeroes(&mut self, _self_: Resource<InertOutputStream>, _len: u64) -> StreamResult<()> {
        Ok(Ok(()))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        _self_: Resource<InertOutputStream>,
        _len: u64,
    ) -> StreamResult<()> {
        Ok(Ok(()))
    }

    fn splice(
        &mut self,
        _self_: Resource<InertOutputStream>,
        _src: Resource<InertInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn blocking_splice(
        &mut self,
        _self_: Resource<InertOutputStream>,
        _src: Resource<InertInputStream>,
        _len: u64,
    ) -> StreamResult<u64> {
        Ok(Err(streams::StreamError::Closed))
    }

    fn drop(&mut self, _rep: Resource<InertOutputStream>) -> Result<()> {
        Ok(())
    }
}
