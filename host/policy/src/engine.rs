//! The wasm engine, configured for untrusted guests, and loading plugins into it.

use std::sync::Arc;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings;
use crate::cache::{self, ArtifactCache, CacheOutcome, CacheRejection, Lookup};
use crate::limits::PolicyLimits;
use crate::load::{self, LoadError, POLICY_EXPORT};
use crate::runtime::{spawn_epoch_ticker, EngineInner, Ticker};
use crate::tenant::InstantiateError;
use crate::version::Version;

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid policy limits: {0}")]
    Limits(String),
    #[error("could not set up the wasm engine: {0}")]
    Setup(String),
}

/// One wasmtime engine for all tenants' plugins: compiled code, the instance pool, the host
/// functions and the epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Core instances the pool holds per instance it can hold (the pool's total is this times
/// `max_instances`): a Rust wasm32-wasip2 component has its main module plus a few small
/// shims.
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Core instances one component may contain: a Python component (componentize-py: CPython,
/// its libraries and shims, dynamically linked) has 38; one in JavaScript (QuickJS) 11.
/// Larger than the average above, so a node full of Python instances holds fewer of them
/// (the pool's totals, and so its memory, do not grow).
const MAX_CORE_INSTANCES_IN_ONE_COMPONENT: u32 = 40;
const TABLES_PER_COMPONENT: u32 = 8;
/// Memories the pool holds per instance it can hold (its total is this times
/// `max_instances`).
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Memories one component may define: a JavaScript component (componentize-qjs) defines 3
/// (two of them empty); Rust and Python components 1.
const MAX_MEMORIES_IN_ONE_COMPONENT: u32 = 3;

impl PolicyEngine {
    pub fn new(limits: PolicyLimits) -> Result<Self, EngineError> {
        limits.validate().map_err(EngineError::Limits)?;
        let engine = Engine::new(&engine_config(&limits))
            .map_err(|e| EngineError::Setup(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        bindings::policy::TenantPolicy::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Setup(format!("{e:#}")))?;
        bindings::wasi::InertWasi::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| EngineError::Setup(format!("{e:#}")))?;
        let ticker = Arc::new(Ticker::default());
        spawn_epoch_ticker(engine.weak(), ticker.clone(), limits.epoch_tick)
            .map_err(|e| EngineError::Setup(format!("epoch ticker: {e}")))?;
        let compatibility = cache::compatibility_digest(&engine);
        Ok(PolicyEngine {
            inner: Arc::new(EngineInner {
                compatibility,
                ticker,
                engine,
                linker,
                limits: Arc::new(limits),
            }),
        })
    }

    pub fn limits(&self) -> &PolicyLimits {
        &self.inner.limits
    }

    /// The shared part (the cache's tests store and look up artifacts with it).
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &EngineInner {
        &self.inner
    }

    /// Checks and compiles a plugin. Refusals say what is wrong in terms the uploader can act
    /// on; see [`LoadError`]. Compiling takes milliseconds to seconds: call it off the
    /// async runtime (e.g. `spawn_blocking`).
    ///
    /// Nothing is written anywhere: a plugin that is refused later (say, by its self-test)
    /// leaves nothing behind once dropped. [`ArtifactCache::store_plugin`] caches one that
    /// passed.
    pub fn load(&self, bytes: &[u8]) -> Result<crate::Plugin, LoadError> {
        self.check_upload(bytes)?;
        let component = self.compile(bytes)?;
        self.check_component(component, Version::of(bytes), bytes.len())
    }

    /// [`PolicyEngine::load`], through a cache of compiled plugins: a plugin this node
    /// compiled before is deserialized (milliseconds) instead of compiled again.
    ///
    /// `version` must be the plugin's version, the hex SHA-256 of `wasm`; anything else is
    /// refused ([`LoadError::WrongVersion`]). The upload's size and header are checked in
    /// every case; a cached artifact is used only after its HMAC checks out, and then goes
    /// through the same world, import and instantiation checks as a fresh compile. An
    /// artifact that fails (tampered with, written under another key or by another engine,
    /// refused by wasmtime or by this node's checks) is deleted and the plugin compiled
    /// again: [`CacheOutcome::Rejected`], never an error. Failing to write the cache is
    /// logged, not returned.
    pub fn load_cached(
        &self,
        wasm: &[u8],
        version: &str,
        cache: &ArtifactCache,
    ) -> Result<(crate::Plugin, CacheOutcome), LoadError> {
        self.check_upload(wasm)?;
        let computed = Version::of(wasm);
        if Version::parse(version).as_ref() != Some(&computed) {
            return Err(LoadError::WrongVersion {
                given: cache::cut(version),
                computed: computed.as_str().to_string(),
            });
        }
        let rejected = match cache.lookup(&self.inner, &computed) {
            Lookup::Missing => None,
            Lookup::Rejected(reason) => Some(reason),
            Lookup::Found(component) => {
                match self.check_component(component, computed.clone(), wasm.len()) {
                    Ok(plugin) => return Ok((plugin, CacheOutcome::Hit)),
                    Err(e) => {
                        cache.discard(&computed);
                        Some(CacheRejection::FailedChecks(e))
                    }
                }
            }
        };
        if let Some(reason) = &rejected {
            // An upgrade (another engine) explains itself; anything else deserves a look.
            if matches!(reason, CacheRejection::OtherEngine) {
                tracing::info!(version = computed.as_str(), %reason, "recompiling a cached plugin");
            } else {
                tracing::warn!(version = computed.as_str(), %reason, "rejected a cached plugin artifact; recompiling");
            }
        }
        let component = self.compile(wasm)?;
        let plugin = self.check_component(component.clone(), computed.clone(), wasm.len())?;
        if let Err(error) = cache.store(&self.inner, &computed, &component) {
            tracing::warn!(version = computed.as_str(), %error, "could not cache a compiled plugin");
        }
        let outcome = rejected.map_or(CacheOutcome::Miss, CacheOutcome::Rejected);
        Ok((plugin, outcome))
    }

    /// The upload's plugin from `cache`, if a verified artifact of exactly these bytes is
    /// there (an earlier upload stored it, for this tenant or another): the same checks as
    /// [`PolicyEngine::load_cached`]'s hit, and `None` on anything else (an artifact that
    /// fails verification is deleted, as there). It never compiles and never stores, so an
    /// upload refused later leaves nothing behind, as with [`PolicyEngine::load`].
    pub fn load_from_cache(&self, wasm: &[u8], cache: &ArtifactCache) -> Option<crate::Plugin> {
        self.check_upload(wasm).ok()?;
        let version = Version::of(wasm);
        match cache.lookup(&self.inner, &version) {
            Lookup::Found(component) => self.check_component(component, version, wasm.len()).ok(),
            Lookup::Missing | Lookup::Rejected(_) => None,
        }
    }

    /// The checks on the upload's bytes themselves: size, the binary header, then its shape
    /// (counts of functions, exports, nesting…: `shape.rs`), all before compiling.
    fn check_upload(&self, bytes: &[u8]) -> Result<(), LoadError> {
        let max = self.inner.limits.max_plugin_bytes;
        if bytes.len() > max {
            return Err(LoadError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        load::check_header(bytes)?;
        crate::shape::Shape::measure(bytes, &self.inner.limits.shape).map(drop)
    }

    /// Validates and compiles (the slow part of a load).
    fn compile(&self, bytes: &[u8]) -> Result<Component, LoadError> {
        let limits = &self.inner.limits;
        match &limits.compile {
            Some(child) => {
                crate::compile::compile_in_child(&self.inner.engine, child, limits, bytes)
            }
            None => Component::new(&self.inner.engine, bytes)
                .map_err(|e| LoadError::Invalid(format!("{e:#}"))),
        }
    }

    /// Everything after compilation, for a fresh compile and a cached artifact alike: the
    /// imports, the exports, linking against this node's host functions, the world's types,
    /// and one instantiation.
    fn check_component(
        &self,
        component: Component,
        version: Version,
        size: usize,
    ) -> Result<crate::Plugin, LoadError> {
        let engine = &self.inner.engine;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        load::check_imports(imports.iter().map(String::as_str))?;
        let export_names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
        let policy_funcs: Option<Vec<String>> =
            match ty.get_export(engine, POLICY_EXPORT).map(|e| e.ty) {
                Some(ComponentItem::ComponentInstance(instance)) => Some(
                    instance
                        .exports(engine)
                        .filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_)))
                        .map(|(name, _)| name.to_string())
                        .collect(),
                ),
                _ => None,
            };
        load::check_exports(
            export_names,
            policy_funcs
                .as_ref()
                .map(|f| f.iter().map(String::as_str).collect()),
        )?;
        let instance_pre = self.inner.linker.instantiate_pre(&component).map_err(|e| {
            LoadError::WrongWorld(format!(
                "the plugin's imports do not match what this node provides: {e:#}"
            ))
        })?;
        let pre = bindings::policy::TenantPolicyPre::new(instance_pre).map_err(|e| {
            LoadError::WrongWorld(format!(
                "`{POLICY_EXPORT}` does not have the functions this node calls: {e:#}"
            ))
        })?;
        let plugin = crate::Plugin::new(self.inner.clone(), pre, version, size, imports);
        // Instantiate once now, so a plugin that cannot even start within its limits (too
        // much initial memory, a trapping start function) is refused at upload.
        plugin.check_instantiate().map_err(|e| match e {
            InstantiateError::Start(e) => {
                LoadError::Invalid(format!("the plugin cannot start within its limits: {e}"))
            }
            InstantiateError::Types(e) => LoadError::WrongWorld(format!(
                "`{POLICY_EXPORT}` does not have the functions this node calls: {e}"
            )),
        })?;
        Ok(plugin)
    }
}

/// The engine's configuration: [`compile_config`], plus the pooling allocator.
fn engine_config(limits: &PolicyLimits) -> Config {
    let mut config = crate::compile::compile_config(limits);
    let mut pool = PoolingAllocationConfig::default();
    let instances = limits.max_instances;
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .max_core_instances_per_component(MAX_CORE_INSTANCES_IN_ONE_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_IN_ONE_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(limits.max_memory_bytes)
        .table_elements(limits.max_table_elements);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}
