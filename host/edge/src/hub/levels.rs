//! The node's load level and queue fill as the hub reports and applies them (the decisions
//! are `switchboard_router::load`'s; `load.rs` keeps the level, the monitor samples it).

use super::*;

impl Hub {
    /// Bytes of frames queued for all sessions now (gauge; walks the sessions).
    pub fn queued_bytes(&self) -> usize {
        self.sessions.queued_bytes()
    }

    /// Sends waiting for the committer, as a percentage of the commit queue's bound.
    pub fn commit_queue_percent(&self) -> u64 {
        let max = self.commit_tx.max_capacity();
        ((max - self.commit_tx.capacity()) * 100 / max.max(1)) as u64
    }

    /// Pushes queued for all sessions, as a percentage of their total bound.
    pub fn push_queue_percent(&self) -> u64 {
        let queued: usize = self.queue_depths().iter().map(|(_, n)| n).sum();
        let sessions = self.metrics.sessions.load(Ordering::Relaxed).max(1);
        let bound = sessions * self.limits.outbox_frames as usize * PushStream::ALL.len();
        (queued * 100 / bound.max(1)) as u64
    }

    /// Pushes queued right now over every session, per push stream (gauge for metrics;
    /// walks the sessions, so call it per scrape, not per message).
    pub fn queue_depths(&self) -> [(PushStream, usize); 4] {
        self.sessions.queue_depths()
    }

    /// The node's load level: 0 normal, 1 elevated, 2 high, 3 critical. An admin's forced
    /// level wins over the measured one.
    pub fn load_level(&self) -> u8 {
        self.load.level()
    }

    /// Moves the node's measured load level and asks every tenant's policy what to shed.
    pub fn set_load_level(&self, level: u8) {
        if let Some(before) = self.load.set_measured(level) {
            self.load_level_changed(before);
        }
    }

    /// Forces a load level (an admin's degradation override), or with `None` goes back to
    /// the measured level.
    pub fn set_load_override(&self, level: Option<u8>) {
        if let Some(before) = self.load.set_forced(level) {
            self.load_level_changed(before);
        }
    }

    pub(super) fn load_level_changed(&self, before: u8) {
        tracing::info!(level = self.load_level(), before, "load level changed");
        for t in self.policies.tenants() {
            self.apply_load(&t);
        }
    }

    /// Asks the tenant's policy what it sheds at the level in force.
    pub(super) fn apply_load(&self, tenant: &TenantId) {
        let shed = self.policies.on_load(tenant, self.load.level());
        self.load.set_shedding(tenant, shed);
    }

    /// What `tenant` sheds at the current load level.
    pub fn shedding(&self, tenant: &TenantId) -> policy::Shedding {
        self.load.shedding(tenant)
    }
}

impl LoadSignals for Hub {
    fn commit_queue_percent(&self) -> u64 {
        Hub::commit_queue_percent(self)
    }
    fn push_queue_percent(&self) -> u64 {
        Hub::push_queue_percent(self)
    }
    fn set_load_level(&self, level: u8) {
        Hub::set_load_level(self, level)
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
