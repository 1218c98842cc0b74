//! Groups and their members. Member changes go through the hub, so connected sessions of
//! the user start or stop receiving the group at once.

use switchboard_store::{GroupMeta, StoreError};

use super::shared::{group_id, user_id};
use super::types::*;
use super::{Control, ControlError};

impl Control {
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
            first_seq: self.store.first_seq(&rec.id, &gid)?,
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
}
