//! The operations: tenants, credentials, tokens, groups, plugins, policy, flags, degradation.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use bytes::Bytes;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use switchboard_core::token::{self, Claims};
use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_edge::RequestError;
use switchboard_store::{
    ApiKeyRecord, BindingRefused, Canary, FlagRule, GroupMeta, PluginVersion, PolicyBinding,
    StoreError, TenantQuotas, TenantRecord, VersionConfig,
};

use super::types::*;
use super::{Control, ControlError};

/// Prefix of tenant API keys: `sbk_<key id>_<secret>`. The id is public (lists, uploader);
/// the tenant is found from the key's hash, never from its text.
const KEY_PREFIX: &str = "sbk_";
/// Compiles and self-tests running at once on this node (CPU-heavy; more wait).
pub const COMPILE_SLOTS: usize = 2;
/// Longest token lifetime `mint_token` grants.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;
const DEFAULT_TOKEN_TTL_SECS: u64 = 86_400;
/// Most entries in a plugin's config map, and longest key/value.
pub const MAX_PLUGIN_CONFIG_ENTRIES: usize = 64;
pub const MAX_PLUGIN_CONFIG_BYTES: usize = 1024;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    B64.encode(buf)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tenant_id(s: &str) -> Result<TenantId, ControlError> {
    TenantId::new(s).map_err(|e| ControlError::Invalid(format!("tenant id: {e}")))
}

fn group_id(s: &str) -> Result<GroupId, ControlError> {
    GroupId::new(s).map_err(|e| ControlError::Invalid(format!("group id: {e}")))
}

fn user_id(s: &str) -> Result<UserId, ControlError> {
    UserId::new(s).map_err(|e| ControlError::Invalid(format!("user id: {e}")))
}

impl From<RequestError> for ControlError {
    fn from(e: RequestError) -> Self {
        use switchboard_core::ErrorCode as C;
        match e.code {
            C::GroupNotFound => ControlError::NotFound(e.message),
            C::GroupFull => ControlError::Conflict(e.message),
            C::InvalidArgument => ControlError::Invalid(e.message),
            C::StoreUnavailable => ControlError::Store(StoreError::Io(e.message)),
            _ => ControlError::Internal(format!("{:?}: {}", e.code, e.message)),
        }
    }
}

pub(crate) fn authenticate(c: &Control, bearer: Option<&str>) -> Result<Caller, ControlError> {
    let Some(bearer) = bearer.filter(|b| !b.is_empty()) else {
        return Err(ControlError::Unauthenticated(
            "missing bearer token (Authorization: Bearer …)".to_owned(),
        ));
    };
    let hash = sha256(bearer.as_bytes());
    if bearer.starts_with(KEY_PREFIX) {
        if let Some(key) = c.config.api_key_by_hash(&hash)? {
            return Ok(Caller::Tenant {
                tenant: key.tenant.to_string(),
                key_id: key.id,
            });
        }
    } else if let Some(admin) = &c.settings.admin_token_sha256 {
        if bool::from(hash.ct_eq(admin)) {
            return Ok(Caller::Admin);
        }
    }
    Err(ControlError::Unauthenticated("unknown token".to_owned()))
}

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

fn quotas_out(q: TenantQuotas) -> Quotas {
    Quotas {
        max_groups: q.max_groups,
        max_plugin_versions: q.max_plugin_versions,
        max_plugin_bytes: q.max_plugin_bytes,
    }
}

fn quotas_in(q: &Quotas) -> TenantQuotas {
    TenantQuotas {
        max_groups: q.max_groups,
        max_plugin_versions: q.max_plugin_versions,
        max_plugin_bytes: q.max_plugin_bytes,
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

fn check_config(config: &BTreeMap<String, String>) -> Result<(), ControlError> {
    if config.len() > MAX_PLUGIN_CONFIG_ENTRIES {
        return Err(ControlError::Invalid(format!(
            "plugin config has {} entries; at most {MAX_PLUGIN_CONFIG_ENTRIES}",
            config.len()
        )));
    }
    for (k, v) in config {
        if k.len() > MAX_PLUGIN_CONFIG_BYTES || v.len() > MAX_PLUGIN_CONFIG_BYTES {
            return Err(ControlError::Invalid(format!(
                "plugin config entry {k:?}: keys and values are at most {MAX_PLUGIN_CONFIG_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

impl Control {
    // --- tenants ---

    pub(crate) fn require_tenant(&self, tenant: &str) -> Result<TenantRecord, ControlError> {
        let id = tenant_id(tenant)?;
        self.store
            .tenant(&id)?
            .ok_or_else(|| ControlError::NotFound(format!("tenant {tenant} not found")))
    }

    /// Creates a tenant (admin). Returns its token secret, shown only here.
    pub fn create_tenant(&self, req: &CreateTenant) -> Result<TenantSecret, ControlError> {
        let id = tenant_id(&req.id)?;
        if self.store.tenant(&id)?.is_some() {
            return Err(ControlError::Conflict(format!("tenant {id} exists")));
        }
        let secret = match &req.secret {
            Some(s) if s.len() < token::MIN_SECRET_LEN => {
                return Err(ControlError::Invalid(format!(
                    "secret must be at least {} bytes",
                    token::MIN_SECRET_LEN
                )))
            }
            Some(s) => s.clone(),
            None => random_b64(32),
        };
        if let Some(q) = &req.quotas {
            self.config.put_quotas(&id, &quotas_in(q))?;
        }
        self.store.put_tenant(&TenantRecord {
            id: id.clone(),
            secret: secret.clone().into_bytes(),
        })?;
        self.store.flush()?;
        tracing::info!(tenant = %id, "tenant created");
        Ok(TenantSecret {
            tenant: id.to_string(),
            secret,
        })
    }

    pub fn tenants(&self) -> Result<Vec<TenantInfo>, ControlError> {
        self.store
            .tenants()?
            .iter()
            .map(|t| self.tenant(t.id.as_str()))
            .collect()
    }

    pub fn tenant(&self, tenant: &str) -> Result<TenantInfo, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let binding = self.config.binding(&rec.id)?;
        Ok(TenantInfo {
            id: rec.id.to_string(),
            quotas: quotas_out(self.config.quotas(&rec.id)?),
            active_version: binding.active.map(|v| v.version),
            canary_version: binding.canary.map(|c| c.version.version),
            groups: self.store.groups(&rec.id)?.len() as u64,
        })
    }

    /// Sets a tenant's quotas (admin).
    pub fn set_quotas(&self, tenant: &str, quotas: &Quotas) -> Result<TenantInfo, ControlError> {
        let rec = self.require_tenant(tenant)?;
        self.config.put_quotas(&rec.id, &quotas_in(quotas))?;
        self.tenant(tenant)
    }

    /// Replaces a tenant's token secret (admin): tokens signed with the old one stop working
    /// at once (sessions already open stay open).
    pub fn rotate_secret(&self, tenant: &str) -> Result<TenantSecret, ControlError> {
        let mut rec = self.require_tenant(tenant)?;
        let secret = random_b64(32);
        rec.secret = secret.clone().into_bytes();
        self.store.put_tenant(&rec)?;
        self.store.flush()?;
        tracing::info!(tenant, "tenant secret rotated");
        Ok(TenantSecret {
            tenant: tenant.to_owned(),
            secret,
        })
    }

    // --- API keys ---

    /// Creates a tenant API key (admin). The key is returned once; only its hash is stored.
    pub fn create_api_key(&self, tenant: &str, label: &str) -> Result<NewApiKey, ControlError> {
        let rec = self.require_tenant(tenant)?;
        if label.len() > 256 {
            return Err(ControlError::Invalid("label is at most 256 bytes".into()));
        }
        let mut id_bytes = [0u8; 6];
        rand::thread_rng().fill_bytes(&mut id_bytes);
        let id = format!("key-{}", hex(&id_bytes));
        let key = format!("{KEY_PREFIX}{}_{}", id, random_b64(32));
        let record = ApiKeyRecord {
            id: id.clone(),
            tenant: rec.id.clone(),
            hash: sha256(key.as_bytes()),
            label: label.to_owned(),
            created_at_ms: now_ms(),
        };
        self.config.put_api_key(&record)?;
        tracing::info!(tenant, key = %id, "api key created");
        Ok(NewApiKey {
            info: key_info(&record),
            key,
        })
    }

    pub fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyInfo>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        Ok(self
            .config
            .api_keys(&rec.id)?
            .iter()
            .map(key_info)
            .collect())
    }

    pub fn delete_api_key(&self, tenant: &str, id: &str) -> Result<(), ControlError> {
        let rec = self.require_tenant(tenant)?;
        if !self.config.delete_api_key(&rec.id, id)? {
            return Err(ControlError::NotFound(format!("api key {id} not found")));
        }
        tracing::info!(tenant, key = %id, "api key deleted");
        Ok(())
    }

    // --- client tokens ---

    /// Mints a client token for a user of the tenant.
    pub fn mint_token(&self, tenant: &str, req: &MintToken) -> Result<MintedToken, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let user = user_id(&req.user)?;
        let ttl = req.ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
            return Err(ControlError::Invalid(format!(
                "ttl_secs must be 1..={MAX_TOKEN_TTL_SECS}"
            )));
        }
        let now = now_ms() / 1000;
        let claims = Claims {
            tenant: rec.id.clone(),
            user: user.clone(),
            exp: now + ttl,
            nbf: now.saturating_sub(60),
        };
        Ok(MintedToken {
            token: token::mint(&claims, &rec.secret),
            tenant: rec.id.to_string(),
            user: user.to_string(),
            expires_at: claims.exp,
        })
    }

    // --- groups and members ---

    pub fn create_group(&self, tenant: &str, req: &CreateGroup) -> Result<GroupInfo, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let gid = group_id(&req.id)?;
        let quotas = self.config.quotas(&rec.id)?;
        if self.store.groups(&rec.id)?.len() >= quotas.max_groups as usize {
            return Err(ControlError::QuotaExceeded(format!(
                "tenant has max_groups ({}) groups",
                quotas.max_groups
            )));
        }
        let max = self.settings.max_group_members;
        let max_members = req.max_members.unwrap_or(max);
        if max_members == 0 || max_members > max {
            return Err(ControlError::Invalid(format!(
                "max_members must be 1..={max}"
            )));
        }
        match self.store.create_group(
            &rec.id,
            &gid,
            GroupMeta {
                open: req.open,
                max_members,
            },
        ) {
            Ok(()) => {}
            Err(StoreError::GroupExists(_)) => {
                return Err(ControlError::Conflict(format!("group {gid} exists")))
            }
            Err(e) => return Err(e.into()),
        }
        self.store.flush()?;
        self.group(tenant, gid.as_str())
    }

    pub fn groups(&self, tenant: &str) -> Result<Vec<GroupInfo>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        self.store
            .groups(&rec.id)?
            .iter()
            .map(|g| self.group(tenant, g.as_str()))
            .collect()
    }

    pub fn group(&self, tenant: &str, group: &str) -> Result<GroupInfo, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let gid = group_id(group)?;
        let meta = self
            .store
            .group(&rec.id, &gid)?
            .ok_or_else(|| ControlError::NotFound(format!("group {gid} not found")))?;
        Ok(GroupInfo {
            id: gid.to_string(),
            open: meta.open,
            max_members: meta.max_members,
            members: self.store.member_count(&rec.id, &gid)?.unwrap_or(0),
            head: self.store.head(&rec.id, &gid)?,
        })
    }

    pub fn members(&self, tenant: &str, group: &str) -> Result<Vec<String>, ControlError> {
        let g = self.group(tenant, group)?;
        let rec = self.require_tenant(tenant)?;
        Ok(self
            .store
            .members(&rec.id, &group_id(&g.id)?)?
            .iter()
            .map(|u| u.to_string())
            .collect())
    }

    /// Adds a member; connected sessions of the user start receiving the group at once.
    /// Ok(false) if the user was a member already.
    pub fn add_member(&self, tenant: &str, group: &str, user: &str) -> Result<bool, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let added = self
            .hub
            .add_member(&rec.id, &group_id(group)?, &user_id(user)?)?;
        self.store.flush()?;
        Ok(added)
    }

    /// Removes a member; its sessions stop receiving the group at once.
    pub fn remove_member(&self, tenant: &str, group: &str, user: &str) -> Result<(), ControlError> {
        let rec = self.require_tenant(tenant)?;
        if !self
            .hub
            .remove_member(&rec.id, &group_id(group)?, &user_id(user)?)?
        {
            return Err(ControlError::NotFound(format!(
                "{user} is not a member of {group}"
            )));
        }
        self.store.flush()?;
        Ok(())
    }

    // --- plugins ---

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

    // --- policy bindings ---

    /// Checks that `version` is stored for the tenant and loads it (so a bad artifact shows
    /// here, not in the reconcile task).
    async fn ready(&self, tenant: &TenantId, version: &str) -> Result<(), ControlError> {
        if self.config.plugin(tenant, version)?.is_none() {
            return Err(ControlError::NotFound(format!(
                "plugin version {version} not found"
            )));
        }
        self.stored_plugin(tenant, version).await.map(drop)
    }

    /// Writes a binding change and waits until this node serves it.
    async fn change_binding(
        &self,
        tenant: &TenantId,
        mut change: impl FnMut(&mut PolicyBinding) -> Result<(), BindingRefused>,
    ) -> Result<PolicyStatus, ControlError> {
        let written =
            off_the_runtime(|| self.config.update_binding(tenant, now_ms(), &mut change))?
                .map_err(|e| ControlError::Conflict(e.0))?;
        self.wait_applied(tenant, written.revision).await?;
        self.policy_status(tenant.as_str())
    }

    /// Activates a version for all of the tenant's users. The version serving before goes to
    /// the front of `previous`; a running canary is ended.
    pub async fn activate(
        &self,
        tenant: &str,
        req: &Activate,
    ) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        check_config(&req.config)?;
        self.ready(&rec.id, &req.version).await?;
        let next = VersionConfig {
            version: req.version.clone(),
            config: req.config.clone(),
        };
        tracing::info!(tenant, version = %req.version, "activate");
        self.change_binding(&rec.id, |b| {
            if b.active.as_ref() == Some(&next) && b.canary.is_none() {
                return Ok(()); // already serving exactly this: a no-op that still bumps
            }
            if let Some(old) = b.active.take() {
                b.previous.push(old);
            }
            b.active = Some(next.clone());
            b.canary = None;
            Ok(())
        })
        .await
    }

    /// Starts (or replaces) a canary: `percent` of users by stable hash, plus `groups`.
    pub async fn start_canary(
        &self,
        tenant: &str,
        req: &StartCanary,
    ) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        check_config(&req.config)?;
        if req.percent > 100 {
            return Err(ControlError::Invalid("percent must be 0..=100".into()));
        }
        if req.percent == 0 && req.groups.is_empty() {
            return Err(ControlError::Invalid(
                "a canary needs a percent above 0 or at least one group".into(),
            ));
        }
        if req.groups.len() > 256 {
            return Err(ControlError::Invalid("at most 256 canary groups".into()));
        }
        let groups = req
            .groups
            .iter()
            .map(|g| group_id(g))
            .collect::<Result<Vec<_>, _>>()?;
        self.ready(&rec.id, &req.version).await?;
        let canary = Canary {
            version: VersionConfig {
                version: req.version.clone(),
                config: req.config.clone(),
            },
            percent: req.percent,
            groups,
            started_at_ms: now_ms(),
        };
        tracing::info!(tenant, version = %req.version, percent = req.percent, "canary");
        self.change_binding(&rec.id, |b| {
            b.canary = Some(canary.clone());
            Ok(())
        })
        .await
    }

    /// Makes the canary the active version for everyone.
    pub async fn promote(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "promote canary");
        self.change_binding(&rec.id, |b| {
            let Some(c) = b.canary.take() else {
                return Err(BindingRefused("no canary to promote".into()));
            };
            if let Some(old) = b.active.take() {
                b.previous.push(old);
            }
            b.active = Some(c.version);
            Ok(())
        })
        .await
    }

    /// Ends the canary; everyone goes back to the active version.
    pub async fn abort_canary(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "abort canary");
        self.change_binding(&rec.id, |b| {
            if b.canary.take().is_none() {
                return Err(BindingRefused("no canary running".into()));
            }
            Ok(())
        })
        .await
    }

    /// One-call rollback: ends a canary if one runs; otherwise the active version is replaced
    /// by the previous one (or the built-in policy if there is none).
    pub async fn rollback(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        tracing::info!(tenant, "manual rollback");
        self.change_binding(&rec.id, |b| {
            rollback_binding(b, false, "rolled back by an operator".into(), now_ms())
        })
        .await
    }

    pub fn policy_status(&self, tenant: &str) -> Result<PolicyStatus, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let b = self.config.binding(&rec.id)?;
        let serving = self.hub.serving(&rec.id);
        let health = |vc: &VersionConfig, live: Option<&switchboard_edge::ServingSnapshot>| {
            let mut h = VersionHealth {
                version: vc.version.clone(),
                config: vc.config.clone(),
                ..Default::default()
            };
            if let Some(s) = live.filter(|s| s.version == vc.version) {
                h.handled = s.handled;
                h.failed = s.failed;
                h.calls = s.stats.calls();
                let f = &s.stats.fallbacks;
                h.traps = f.traps;
                h.out_of_fuel = f.out_of_fuel;
                h.deadline = f.deadline;
                h.invalid_output = f.invalid_output;
                h.counters = s.policy.counters();
                h.counter_updates_dropped = s.stats.counter_updates_dropped;
                h.last_failure = s.policy.last_failure().map(|l| FailureInfo {
                    hook: l.hook.wit_name().to_owned(),
                    reason: l.reason.clone(),
                    at_ms: l.at_ms,
                });
            }
            h
        };
        Ok(PolicyStatus {
            tenant: tenant.to_owned(),
            active: b
                .active
                .as_ref()
                .map(|a| health(a, serving.active.as_ref())),
            canary: b.canary.as_ref().map(|c| CanaryStatus {
                health: health(&c.version, serving.canary.as_ref()),
                percent: c.percent,
                groups: c.groups.iter().map(|g| g.to_string()).collect(),
                started_at_ms: c.started_at_ms,
            }),
            previous: b.previous.iter().map(|v| v.version.clone()).collect(),
            last_rollback: b.last_rollback.as_ref().map(|r| RollbackInfo {
                from: r.from.clone(),
                to: r.to.clone(),
                automatic: r.automatic,
                reason: r.reason.clone(),
                at_ms: r.at_ms,
            }),
            revision: b.revision,
            applied_revision: self.applied_revision(&rec.id),
        })
    }

    // --- flags ---

    pub fn flags(&self, tenant: &str) -> Result<BTreeMap<String, FlagRuleBody>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        Ok(self
            .config
            .flags(&rec.id)?
            .into_iter()
            .map(|(k, r)| {
                (
                    k,
                    FlagRuleBody {
                        enabled: r.enabled,
                        percent: r.percent,
                        users: r.users.iter().map(|u| u.to_string()).collect(),
                    },
                )
            })
            .collect())
    }

    /// Replaces the tenant's flag rules; connected users get their new flags at once.
    pub fn put_flags(
        &self,
        tenant: &str,
        flags: &BTreeMap<String, FlagRuleBody>,
    ) -> Result<BTreeMap<String, FlagRuleBody>, ControlError> {
        let rec = self.require_tenant(tenant)?;
        if flags.len() > switchboard_store::config::MAX_FLAG_RULES {
            return Err(ControlError::Invalid(format!(
                "at most {} flags",
                switchboard_store::config::MAX_FLAG_RULES
            )));
        }
        let mut rules = BTreeMap::new();
        for (name, body) in flags {
            if name.is_empty() || name.len() > 64 {
                return Err(ControlError::Invalid(format!(
                    "flag name {name:?} must be 1..=64 bytes"
                )));
            }
            if body.percent > 100 {
                return Err(ControlError::Invalid(format!(
                    "flag {name}: percent must be 0..=100"
                )));
            }
            if body.users.len() > 1000 {
                return Err(ControlError::Invalid(format!(
                    "flag {name}: at most 1000 users"
                )));
            }
            let users = body
                .users
                .iter()
                .map(|u| user_id(u))
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(
                name.clone(),
                FlagRule {
                    enabled: body.enabled,
                    percent: body.percent,
                    users,
                },
            );
        }
        self.config.put_flags(&rec.id, &rules)?;
        self.flags(tenant)
    }

    // --- degradation ---

    pub fn degradation(&self) -> Result<DegradationStatus, ControlError> {
        Ok(DegradationStatus {
            level: self.hub.load_level(),
            forced: self.config.degradation_override()?,
        })
    }

    /// Forces the node's load level (or clears the override). Applied through the watch.
    pub async fn set_degradation(
        &self,
        req: &SetDegradation,
    ) -> Result<DegradationStatus, ControlError> {
        if req.level.is_some_and(|l| l > 3) {
            return Err(ControlError::Invalid("level must be 0..=3".into()));
        }
        off_the_runtime(|| self.config.set_degradation_override(req.level))?;
        // Apply here too, so the answer already shows it; the watch applies it again (no-op).
        self.hub.set_load_override(req.level);
        tracing::info!(level = ?req.level, "degradation override");
        self.degradation()
    }

    // --- node ---

    /// Rotates the store key on the running node (admin; see
    /// [`switchboard_store::SledStore::rotate_secrets_key`]): a new key seals every tenant
    /// secret, the old one leaves the key file. Tokens, sessions and concurrent writes carry
    /// on (writers of secrets wait for the re-sealing).
    /// Refused with [`ControlError::StoreKeyNotInFile`] when the key came from the
    /// environment.
    pub fn rotate_store_key(&self) -> Result<StoreKeyRotation, ControlError> {
        let (key_id, resealed) = self.store.rotate_secrets_key()?;
        tracing::info!(key_id, resealed, "store key rotated on the running node");
        Ok(StoreKeyRotation {
            key_id,
            resealed: resealed as u64,
        })
    }

    pub fn health(&self) -> Health {
        let m = self.hub.metrics().snapshot();
        let (store, store_reason) = match self.hub.store().health() {
            switchboard_store::StoreHealth::Failed { reason } => ("failed", Some(reason)),
            switchboard_store::StoreHealth::Ok if self.hub.disk_low() => (
                "disk_low",
                Some("free disk space is under min_free_disk_bytes; sends are refused".into()),
            ),
            switchboard_store::StoreHealth::Ok => ("ok", None),
        };
        Health {
            status: if store == "ok" { "ok" } else { "degraded" }.to_owned(),
            sessions: m.sessions,
            connections: m.connections,
            load_level: self.hub.load_level(),
            store: store.to_owned(),
            store_reason,
            build: super::observe::build_info(),
            uptime_s: self.uptime_s(),
        }
    }
}

/// Runs a store write that flushes (an fsync) without stalling the runtime worker it is
/// called on: on a multi-threaded runtime the worker hands its other tasks to the rest first.
/// (On a current-thread runtime there is nowhere to hand them; the write just runs.)
pub(crate) fn off_the_runtime<T>(write: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}

fn key_info(k: &ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id.clone(),
        tenant: k.tenant.to_string(),
        label: k.label.clone(),
        created_at_ms: k.created_at_ms,
    }
}

/// The rollback step on a binding: end the canary if there is one, else go back one
/// version. Shared by the manual rollback and the automatic one.
pub(crate) fn rollback_binding(
    b: &mut PolicyBinding,
    automatic: bool,
    reason: String,
    now_ms: u64,
) -> Result<(), BindingRefused> {
    if let Some(c) = b.canary.take() {
        b.last_rollback = Some(switchboard_store::RollbackRecord {
            from: c.version.version,
            to: b.active.as_ref().map(|a| a.version.clone()),
            automatic,
            reason,
            at_ms: now_ms,
        });
        return Ok(());
    }
    let Some(from) = b.active.take() else {
        return Err(BindingRefused(
            "nothing to roll back: the built-in policy is serving".into(),
        ));
    };
    b.active = b.previous.pop();
    b.last_rollback = Some(switchboard_store::RollbackRecord {
        from: from.version,
        to: b.active.as_ref().map(|a| a.version.clone()),
        automatic,
        reason,
        at_ms: now_ms,
    });
    Ok(())
}
