//! What every resource's operations use: ids parsed from text, the wall clock, hashes and
//! random secrets, the tenant lookup, and running a flushing write off the runtime.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use switchboard_core::{GroupId, TenantId, UserId};
use switchboard_store::TenantRecord;

use super::{Control, ControlError};

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn random_b64(bytes: usize) -> String {
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

pub(crate) fn tenant_id(s: &str) -> Result<TenantId, ControlError> {
    TenantId::new(s).map_err(|e| ControlError::Invalid(format!("tenant id: {e}")))
}

pub(crate) fn group_id(s: &str) -> Result<GroupId, ControlError> {
    GroupId::new(s).map_err(|e| ControlError::Invalid(format!("group id: {e}")))
}

pub(crate) fn user_id(s: &str) -> Result<UserId, ControlError> {
    UserId::new(s).map_err(|e| ControlError::Invalid(format!("user id: {e}")))
}

impl Control {
    pub(crate) fn require_tenant(&self, tenant: &str) -> Result<TenantRecord, ControlError> {
        let id = tenant_id(tenant)?;
        self.store
            .tenant(&id)?
            .ok_or_else(|| ControlError::NotFound(format!("tenant {tenant} not found")))
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
