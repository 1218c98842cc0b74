//! Every check an upload goes through, in order, as one place both the node's upload
//! (`host/admin`) and the workbench (`switchboard plugin check`) call: the same checks, the
//! same messages.
//!
//! 1. [`check_upload_size`]: the tenant's quota and the node's limit, before anything reads
//!    the bytes;
//! 2. [`PolicyEngine::check_upload_and_self_test`]: [`PolicyEngine::load`] (header, shape, compilation,
//!    imports, world, start) and then [`Plugin::self_test`] with no configuration.
//!
//! What lies between the two in the node (is the version stored already, is the tenant's
//! version quota full) depends on the store and stays there.

use std::collections::BTreeMap;

use crate::engine::PolicyEngine;
use crate::load::LoadError;
use crate::self_test::{SelfTestError, SelfTestReport};
use crate::tenant::Plugin;

/// Why an upload is refused: the first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadRefusal {
    /// Larger than the tenant's quota or the node's plugin size limit, whichever is smaller.
    #[error("plugin is {size} bytes; at most {max}")]
    TooLarge { size: usize, max: usize },
    /// Refused by [`PolicyEngine::load`].
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Loaded, but a hook failed its self-test.
    #[error(transparent)]
    SelfTest(#[from] SelfTestError),
}

impl UploadRefusal {
    /// Whether the refusal is about size (the node answers those with 413).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            UploadRefusal::TooLarge { .. } | UploadRefusal::Load(LoadError::TooLarge { .. })
        )
    }
}

/// The first check: `size` against the tenant's quota `tenant_max` and the engine's
/// `max_plugin_bytes`.
pub fn check_upload_size(
    size: usize,
    tenant_max: usize,
    engine: &PolicyEngine,
) -> Result<(), UploadRefusal> {
    let max = tenant_max.min(engine.limits().max_plugin_bytes);
    if size > max {
        return Err(UploadRefusal::TooLarge { size, max });
    }
    Ok(())
}

impl PolicyEngine {
    /// The checks after the size: load (steps 1 to 6 of `docs/plugins.md` §8) and the
    /// self-test with no configuration (step 7), which is what an upload stores. Takes a
    /// compile and a few deadlines: call it off the async runtime. Nothing is written
    /// anywhere; the plugin is returned for the caller to keep or drop.
    pub fn check_upload_and_self_test(
        &self,
        wasm: &[u8],
    ) -> Result<(Plugin, SelfTestReport), UploadRefusal> {
        let plugin = self.load(wasm)?;
        let report = plugin.self_test(&BTreeMap::new())?;
        Ok((plugin, report))
    }

    /// [`PolicyEngine::check_upload_and_self_test`], taking the compiled plugin from `cache`
    /// when these bytes were compiled and stored before ([`PolicyEngine::load_from_cache`]):
    /// the same bytes uploaded again (by another tenant, say) are self-tested, not compiled
    /// again. Nothing is stored in the cache either way.
    pub fn check_upload_and_self_test_cached(
        &self,
        wasm: &[u8],
        cache: &crate::ArtifactCache,
    ) -> Result<(Plugin, SelfTestReport), UploadRefusal> {
        let plugin = match self.load_from_cache(wasm, cache) {
            Some(plugin) => plugin,
            None => self.load(wasm)?,
        };
        let report = plugin.self_test(&BTreeMap::new())?;
        Ok((plugin, report))
    }
}
