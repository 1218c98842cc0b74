//! Plugin versions: upload (checked, self-tested, stored), compiling a stored version (the
//! artifact cache, the in-memory map, [`COMPILE_SLOTS`] at once), and listing versions.

use std::collections::BTreeMap;

use bytes::Bytes;
use switchboard_core::TenantId;
use switchboard_store::PluginVersion;

use super::shared::{hex, now_ms, sha256};
use super::types::*;
use super::{Control, ControlError};

/// Compiles and self-tests running at once on this node (CPU-heavy; more wait).
pub const COMPILE_SLOTS: usize = 2;

fn load_error(e: switchboard_policy::LoadError) -> ControlError {
    match e {
        switchboard_policy::LoadError::TooLarge { .. } => {
            ControlError::PluginTooLarge(e.to_string())
        }
        // Not the plugin's fault (the compiler process could not run): the node's problem.
        switchboard_policy::LoadError::CompilerFailed(_) => ControlError::Internal(e.to_string()),
        other => ControlError::PluginRejected(other.to_string()),
    }
}

fn upload_refusal(e: switchboard_policy::UploadRefusal) -> ControlError {
    use switchboard_policy::UploadRefusal;
    match e {
        e if e.is_too_large() => ControlError::PluginTooLarge(e.to_string()),
        UploadRefusal::SelfTest(e) => ControlError::SelfTestFailed(e.to_string()),
        UploadRefusal::Load(e @ switchboard_policy::LoadError::CompilerFailed(_)) => {
            ControlError::Internal(e.to_string())
        }
        other => ControlError::PluginRejected(other.to_string()),
    }
}

fn plugin_info(p: &PluginVersion) -> PluginInfo {
    PluginInfo {
        version: p.version.clone(),
        tenant: p.tenant.to_string(),
        size: p.size,
        uploader: p.uploader.clone(),
        uploaded_at_ms: p.uploaded_at_ms,
        imports: p.imports.clone(),
        label: p.label.clone(),
    }
}

/// A version's label: 1 to [`MAX_PLUGIN_LABEL_CHARS`] characters, none of them a control
/// character (it is shown in tables and logs); surrounding whitespace is dropped.
fn check_label(label: Option<&str>) -> Result<Option<String>, ControlError> {
    let Some(label) = label.map(str::trim) else {
        return Ok(None);
    };
    let chars = label.chars().count();
    if chars == 0 || chars > switchboard_store::MAX_PLUGIN_LABEL_CHARS {
        return Err(ControlError::Invalid(format!(
            "a plugin label is 1 to {} characters; this one has {chars}",
            switchboard_store::MAX_PLUGIN_LABEL_CHARS
        )));
    }
    if label.chars().any(char::is_control) {
        return Err(ControlError::Invalid(
            "a plugin label has no control characters".into(),
        ));
    }
    Ok(Some(label.to_owned()))
}

impl Control {
    /// Stores a plugin version after checking it: size (tenant quota and node limit), a
    /// `tenant-policy` component with allowed imports that compiles, and a self-test call of
    /// every hook within budget. Nothing is stored when any check fails.
    pub async fn upload_plugin(
        &self,
        caller: &Caller,
        tenant: &str,
        wasm: Bytes,
    ) -> Result<Uploaded, ControlError> {
        self.upload_labelled_plugin(caller, tenant, wasm, None)
            .await
    }

    /// [`Control::upload_plugin`] with a label for the version ([`check_label`]). A version
    /// stored before keeps its label: the same bytes are the same version.
    pub async fn upload_labelled_plugin(
        &self,
        caller: &Caller,
        tenant: &str,
        wasm: Bytes,
        label: Option<&str>,
    ) -> Result<Uploaded, ControlError> {
        let label = check_label(label)?;
        let rec = self.require_tenant(tenant)?;
        let quotas = self.config.quotas(&rec.id)?;
        switchboard_policy::check_upload_size(
            wasm.len(),
            quotas.max_plugin_bytes as usize,
            &self.engine,
        )
        .map_err(upload_refusal)?;
        let version = hex(&sha256(&wasm));
        if let Some(existing) = self.config.plugin(&rec.id, &version)? {
            return Ok(Uploaded {
                plugin: plugin_info(&existing),
                created: false,
                self_test_us: BTreeMap::new(),
            });
        }
        if self.config.plugins(&rec.id)?.len() >= quotas.max_plugin_versions as usize {
            return Err(ControlError::QuotaExceeded(format!(
                "tenant has max_plugin_versions ({}) versions stored",
                quotas.max_plugin_versions
            )));
        }
        // Compiled for this check only (or taken from the artifact cache, if these bytes
        // were stored before, for any tenant): nothing is cached, kept in memory or written
        // until the upload has passed every check and is stored, so a refusal leaves nothing.
        // The checks are `switchboard_policy`'s, shared with `switchboard plugin check`.
        let (plugin, report) = self.check_new(wasm.clone()).await?;
        let meta = PluginVersion {
            tenant: rec.id.clone(),
            version: version.clone(),
            size: wasm.len() as u64,
            uploader: caller.name(),
            uploaded_at_ms: now_ms(),
            imports: plugin.imports().to_vec(),
            label,
        };
        let created = self.config.put_plugin(&meta, &wasm)?;
        let cache = self.cache.clone();
        let cached = plugin.clone();
        let stored = tokio::task::spawn_blocking(move || cache.store_plugin(&cached)).await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%version, %error, "could not cache a compiled plugin")
            }
            Err(error) => tracing::warn!(%version, %error, "plugin cache task failed"),
        }
        self.plugins.insert(&rec.id, &version, plugin);
        tracing::info!(tenant, %version, size = wasm.len(), uploader = %meta.uploader, "plugin uploaded");
        Ok(Uploaded {
            plugin: plugin_info(&meta),
            created,
            self_test_us: report
                .hooks
                .iter()
                .map(|h| (h.hook.wit_name().to_owned(), h.elapsed.as_micros() as u64))
                .collect(),
        })
    }

    /// Compiles (or reads from the artifact cache, never storing in it) and self-tests an
    /// upload's bytes, off the runtime, without the in-memory map: what it makes is dropped
    /// with the refusal.
    async fn check_new(
        &self,
        wasm: Bytes,
    ) -> Result<
        (
            switchboard_policy::Plugin,
            switchboard_policy::SelfTestReport,
        ),
        ControlError,
    > {
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let slot = self.compile_slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            engine.check_upload_and_self_test_cached(&wasm, &cache)
        })
        .await
        .map_err(|e| ControlError::Internal(format!("check task: {e}")))?
        .map_err(upload_refusal)
    }

    /// Loads a stored version's bytes (from the artifact cache, or compiled and cached), off
    /// the runtime, and keeps it in the in-memory map.
    pub(crate) async fn compile(
        &self,
        tenant: &TenantId,
        version: &str,
        wasm: Bytes,
    ) -> Result<switchboard_policy::Plugin, ControlError> {
        if let Some(p) = self.plugins.get(tenant, version) {
            return Ok(p);
        }
        let engine = self.engine.clone();
        let cache = self.cache.clone();
        let v = version.to_owned();
        let slot = self.compile_slot().await?;
        let (plugin, outcome) = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            engine.load_cached(&wasm, &v, &cache)
        })
        .await
        .map_err(|e| ControlError::Internal(format!("compile task: {e}")))?
        .map_err(load_error)?;
        tracing::debug!(%tenant, version, ?outcome, "plugin compiled");
        self.plugins.insert(tenant, version, plugin.clone());
        Ok(plugin)
    }

    /// One of the [`COMPILE_SLOTS`]: held by the blocking task that compiles or self-tests,
    /// so the bound holds even when the caller (an HTTP request) goes away mid-compile.
    async fn compile_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ControlError> {
        self.compile_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ControlError::Internal("compile slots closed".into()))
    }

    /// A stored version, loaded (from the in-memory map, the artifact cache, or compiled).
    pub(crate) async fn stored_plugin(
        &self,
        tenant: &TenantId,
        version: &str,
    ) -> Result<switchboard_policy::Plugin, ControlError> {
        if let Some(p) = self.plugins.get(tenant, version) {
            return Ok(p);
        }
        let wasm = self
            .config
            .plugin_bytes(tenant, version)?
            .ok_or_else(|| ControlError::NotFound(format!("plugin version {version} not found")))?;
        self.compile(tenant, version, Bytes::from(wasm)).await
    }

    pub fn plugins(&self, tenant: &str) -> Result<Vec<PluginInfo>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        Ok(self
            .config
            .plugins(&rec.id)?
            .iter()
            .map(plugin_info)
            .collect())
    }

    pub fn plugin(&self, tenant: &str, version: &str) -> Result<PluginDetail, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let p = self
            .config
            .plugin(&rec.id, version)?
            .ok_or_else(|| ControlError::NotFound(format!("plugin version {version} not found")))?;
        let b = self.config.binding(&rec.id)?;
        let role = if b.active.as_ref().is_some_and(|a| a.version == version) {
            "active"
        } else if b
            .canary
            .as_ref()
            .is_some_and(|c| c.version.version == version)
        {
            "canary"
        } else if b.previous.iter().any(|v| v.version == version) {
            "previous"
        } else {
            "stored"
        };
        Ok(PluginDetail {
            plugin: plugin_info(&p),
            role: role.to_owned(),
        })
    }
}
