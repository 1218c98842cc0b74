//! Tenants, their quotas and token secrets, tenant API keys (and checking a bearer token),
//! and minting client tokens.

use rand::RngCore;
use subtle::ConstantTimeEq;
use switchboard_core::token::{self, Claims};
use switchboard_store::{ApiKeyRecord, TenantQuotas, TenantRecord};

use super::shared::{hex, now_ms, random_b64, sha256, tenant_id, user_id};
use super::types::*;
use super::{Control, ControlError};

/// Prefix of tenant API keys: `sbk_<key id>_<secret>`. The id is public (lists, uploader);
/// the tenant is found from the key's hash, never from its text.
const KEY_PREFIX: &str = "sbk_";
/// Longest token lifetime `mint_token` grants.
pub const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;
const DEFAULT_TOKEN_TTL_SECS: u64 = 86_400;

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

fn key_info(k: &ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: k.id.clone(),
        tenant: k.tenant.to_string(),
        label: k.label.clone(),
        created_at_ms: k.created_at_ms,
    }
}

impl Control {
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
}
