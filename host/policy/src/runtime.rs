//! What the engine and every plugin loaded into it share: the wasmtime engine, the linker
//! with the host functions, the limits, and the epoch ticker that enforces call deadlines.
//! Below `engine` (which builds it), `tenant` (whose plugins hold it) and `cache` (which
//! checks artifacts against it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Engine, EngineWeak};

use crate::host::InstanceState;
use crate::limits::PolicyLimits;

/// The engine's shared part: held by [`PolicyEngine`](crate::PolicyEngine) and by every
/// [`Plugin`](crate::Plugin) loaded into it, so a plugin keeps its engine alive.
pub(crate) struct EngineInner {
    pub engine: Engine,
    pub linker: Linker<InstanceState>,
    pub limits: Arc<PolicyLimits>,
    /// SHA-256 of `Engine::precompile_compatibility_hash`: which compiled artifacts this
    /// engine can load (see `cache.rs`).
    pub compatibility: [u8; 32],
    /// Drives the epoch (the call deadline) while guest code runs.
    pub ticker: Arc<Ticker>,
}

/// The epoch ticker's switch: the ticker thread advances the epoch every `epoch_tick` only
/// while some guest code runs ([`Ticker::running`]), and parks otherwise, so an idle node
/// does not wake a thread 1,000 times a second (measured: ~20 ms of CPU a second, the
/// node's whole idle cost with 1,000 idle connections). A deadline is counted in ticks
/// from the call's start, so pausing between calls changes nothing.
#[derive(Default)]
pub(crate) struct Ticker {
    running: AtomicUsize,
    thread: OnceLock<std::thread::Thread>,
}

/// Guest code is running while this lives.
pub(crate) struct Running<'a>(&'a Ticker);

impl Ticker {
    pub(crate) fn running(&self) -> Running<'_> {
        if self.running.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Running(self)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Advances the engine's epoch every `tick` while guest code runs (see [`Ticker`]), until
/// the engine is dropped. One thread per engine; it holds only a weak reference, and wakes
/// once a second while parked to notice the engine is gone.
pub(crate) fn spawn_epoch_ticker(
    engine: EngineWeak,
    ticker: Arc<Ticker>,
    tick: Duration,
) -> std::io::Result<()> {
    let shared = ticker.clone();
    let handle = std::thread::Builder::new()
        .name("policy-epoch".into())
        .spawn(move || loop {
            if shared.running.load(Ordering::Acquire) == 0 {
                // A call starting after this load unparks us (the token makes the park
                // return at once if it came first).
                std::thread::park_timeout(Duration::from_secs(1));
            } else {
                std::thread::sleep(tick);
            }
            match engine.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => return,
            }
        })?;
    let _ = ticker.thread.set(handle.thread().clone());
    Ok(())
}
