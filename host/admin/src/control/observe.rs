//! What operators and tenants read about the running node: node info (build, uptime, health,
//! load, queues, latency, counters, slow consumers, a config summary), its sessions paged like
//! NATS's `/connz`, and its tenants with their traffic and policy health. Read-only; every
//! list is paged with a capped page size.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use switchboard_core::{PresenceState, TenantId};
use switchboard_edge::histogram::HistogramSnapshot;
use switchboard_edge::SessionInfo;

use super::shared::now_ms;
use super::types::*;
use super::{Control, ControlError};

/// Largest page of `GET /v1/connections` (default [`DEFAULT_CONNECTIONS_PAGE`]).
pub const MAX_CONNECTIONS_PAGE: u64 = 1_000;
pub const DEFAULT_CONNECTIONS_PAGE: u64 = 100;
/// Largest page of `GET /v1/traffic` (default [`DEFAULT_TRAFFIC_PAGE`]); each tenant on a
/// page costs a read of its binding.
pub const MAX_TRAFFIC_PAGE: u64 = 200;
pub const DEFAULT_TRAFFIC_PAGE: u64 = 50;
/// Slow consumers listed in `NodeInfo`.
pub const SLOW_CONSUMERS_SHOWN: usize = 10;
/// Longest filter string (user or tenant search).
pub const MAX_FILTER_BYTES: usize = 64;

/// The commit this crate was built from (`build.rs`), or `unknown`.
const COMMIT: &str = env!("SWITCHBOARD_COMMIT");

/// What this binary is: in `GET /v1/node`, `/healthz` and `/metrics` (`switchboard_build_info`).
pub(crate) fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        commit: COMMIT.to_owned(),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_owned(),
    }
}

fn page_limit(asked: Option<u64>, default: u64, max: u64) -> Result<u64, ControlError> {
    match asked {
        None => Ok(default),
        Some(0) => Err(ControlError::Invalid("limit must be at least 1".into())),
        Some(n) if n > max => Err(ControlError::Invalid(format!(
            "limit is at most {max} (asked {n})"
        ))),
        Some(n) => Ok(n),
    }
}

fn filter(s: &Option<String>) -> Result<Option<String>, ControlError> {
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(f) if f.len() > MAX_FILTER_BYTES => Err(ControlError::Invalid(format!(
            "a filter is at most {MAX_FILTER_BYTES} bytes"
        ))),
        Some(f) => Ok(Some(f.to_lowercase())),
    }
}

fn presence_name(p: PresenceState) -> &'static str {
    match p {
        PresenceState::Foreground => "foreground",
        PresenceState::Background => "background",
    }
}

fn connection(s: SessionInfo) -> ConnectionInfo {
    ConnectionInfo {
        session: s.id,
        tenant: s.tenant.to_string(),
        user: s.user.to_string(),
        presence: presence_name(s.presence).to_owned(),
        connected_at_ms: s.connected_at_ms,
        remote: s.remote.map(|a| a.to_string()),
        groups: s.groups as u64,
        queued: s.queued as u64,
        queued_bytes: s.queued_bytes as u64,
        catching_up: s.catching_up,
        slow: s.slow,
    }
}

/// The upper bound (ms) of the bucket holding quantile `q`, `None` without samples or above
/// the last bound.
fn quantile_ms(h: &HistogramSnapshot, q: f64) -> Option<f64> {
    if h.count == 0 {
        return None;
    }
    let rank = ((h.count as f64) * q).ceil().max(1.0) as u64;
    h.cumulative
        .iter()
        .find(|(_, n)| *n >= rank)
        .map(|(le_us, _)| *le_us as f64 / 1000.0)
}

fn latency(class: &str, h: HistogramSnapshot) -> LatencyClass {
    LatencyClass {
        class: class.to_owned(),
        count: h.count,
        mean_ms: (h.count > 0).then(|| h.sum_us as f64 / h.count as f64 / 1000.0),
        p50_ms: quantile_ms(&h, 0.50),
        p90_ms: quantile_ms(&h, 0.90),
        p99_ms: quantile_ms(&h, 0.99),
    }
}

impl Control {
    /// Who `caller` is, for a page that must know which views to show.
    pub fn whoami(&self, caller: &Caller) -> Whoami {
        match caller {
            Caller::Admin => Whoami {
                role: "admin".into(),
                tenant: None,
            },
            Caller::Tenant { tenant, .. } => Whoami {
                role: "tenant".into(),
                tenant: Some(tenant.clone()),
            },
        }
    }

    /// Everything node-wide, for one poll of the dashboard or a script (admin).
    pub fn node_info(&self) -> Result<NodeInfo, ControlError> {
        let hub = &self.hub;
        let now = now_ms();
        let m = hub.metrics();
        let snapshot = m.snapshot();
        // One walk of the session index for the presence counts and the slow consumers.
        let infos = hub.session_infos(None);
        let mut sessions = SessionCounts::default();
        for s in &infos {
            match s.presence {
                PresenceState::Foreground => sessions.foreground += 1,
                PresenceState::Background => sessions.background += 1,
            }
        }
        let mut load = LoadInfo {
            level: hub.load_level(),
            forced: self.config.degradation_override()?,
            tenants_shedding_receipts: 0,
            tenants_shedding_presence: 0,
            tenants_shedding_background: 0,
            commit_queue_percent: hub.commit_queue_percent(),
            push_queue_percent: hub.push_queue_percent(),
        };
        for t in self.store.tenants()? {
            let s = hub.shedding(&t.id);
            load.tenants_shedding_receipts += u32::from(s.receipts);
            load.tenants_shedding_presence += u32::from(s.presence);
            load.tenants_shedding_background += u32::from(s.background_delivery);
        }
        let queues = QueueInfo {
            depth: hub
                .queue_depths()
                .iter()
                .map(|(s, n)| (s.name().to_owned(), *n as u64))
                .collect(),
            bytes: hub.queued_bytes() as u64,
        };
        // Behind: marked slow, catching up from the log, or with half a push stream's queue
        // waiting (a frame or two in flight is every session's normal).
        let backlog = (hub.limits().outbox_frames as usize / 2).max(1);
        let mut behind: Vec<SessionInfo> = infos
            .into_iter()
            .filter(|s| s.slow || s.catching_up || s.queued >= backlog)
            .collect();
        behind.sort_by_key(|s| (Reverse((s.slow, s.catching_up, s.queued_bytes)), s.id));
        behind.truncate(SLOW_CONSUMERS_SHOWN);
        let limits = hub.limits();
        let ar = &self.settings.auto_rollback;
        Ok(NodeInfo {
            build: build_info(),
            started_at_ms: self.started_at_ms,
            uptime_s: self.uptime_s(),
            now_ms: now,
            health: self.health(),
            sessions,
            load,
            queues,
            latency: vec![
                latency("active", m.latency_active.snapshot()),
                latency("background", m.latency_background.snapshot()),
            ],
            counters: snapshot
                .series()
                .into_iter()
                .map(|s| (s.name.to_owned(), s.value))
                .collect::<BTreeMap<_, _>>(),
            auto_rollbacks: self.auto_rollbacks(),
            slow_consumers: behind.into_iter().map(connection).collect(),
            config: ConfigSummary {
                max_connections: u64::from(limits.max_connections),
                max_payload_bytes: u64::from(limits.max_payload_bytes),
                max_group_members: u64::from(limits.max_group_members),
                max_groups_per_user: u64::from(limits.max_groups_per_user),
                outbox_frames: u64::from(limits.outbox_frames),
                outbox_bytes: u64::from(limits.outbox_bytes),
                disconnect_slow_consumers: limits.disconnect_slow_consumers,
                apply_timeout_ms: self.settings.apply_timeout.as_millis() as u64,
                auto_rollback: AutoRollbackSummary {
                    enabled: ar.enabled,
                    window_ms: ar.window.as_millis() as u64,
                    min_events: ar.min_events,
                    max_failure_ratio: ar.max_failure_ratio,
                },
            },
        })
    }

    /// Open sessions, filtered and paged. `scope` is the tenant a tenant key is limited to
    /// (it wins over the query's `tenant`); the admin passes `None`.
    pub fn connections(
        &self,
        scope: Option<&str>,
        q: &ConnectionQuery,
    ) -> Result<ConnectionPage, ControlError> {
        let limit = page_limit(q.limit, DEFAULT_CONNECTIONS_PAGE, MAX_CONNECTIONS_PAGE)?;
        let tenant = match scope.or(q.tenant.as_deref()) {
            Some(t) => Some(self.require_tenant(t)?.id),
            None => None,
        };
        let user = filter(&q.user)?;
        let presence = match q.presence.as_deref() {
            None | Some("") => None,
            Some("foreground") => Some(PresenceState::Foreground),
            Some("background") => Some(PresenceState::Background),
            Some(other) => {
                return Err(ControlError::Invalid(format!(
                    "presence is foreground or background, not {other:?}"
                )))
            }
        };
        let mut all: Vec<SessionInfo> = self
            .hub
            .session_infos(tenant.as_ref())
            .into_iter()
            .filter(|s| presence.is_none_or(|p| s.presence == p))
            .filter(|s| {
                user.as_deref()
                    .is_none_or(|u| s.user.as_str().to_lowercase().contains(u))
            })
            .collect();
        match q.sort.as_deref() {
            None | Some("") | Some("session") => all.sort_by_key(|s| s.id),
            Some("queued") => all.sort_by_key(|s| (Reverse(s.queued_bytes), s.id)),
            Some("user") => all.sort_by(|a, b| (&a.user, a.id).cmp(&(&b.user, b.id))),
            Some(other) => {
                return Err(ControlError::Invalid(format!(
                    "sort is session, queued or user, not {other:?}"
                )))
            }
        }
        let total = all.len() as u64;
        let connections = all
            .into_iter()
            .skip(usize::try_from(q.offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(connection)
            .collect();
        Ok(ConnectionPage {
            total,
            offset: q.offset,
            limit,
            connections,
        })
    }

    /// Tenants with their traffic and policy health, filtered and paged (admin).
    pub fn traffic(&self, q: &TrafficQuery) -> Result<TrafficPage, ControlError> {
        let limit = page_limit(q.limit, DEFAULT_TRAFFIC_PAGE, MAX_TRAFFIC_PAGE)?;
        let search = filter(&q.q)?;
        let by_tenant = self.hub.sessions_by_tenant();
        // Cheap figures for every match first (memory only); bindings only for the page.
        let mut rows: Vec<(TenantId, SessionCounts, u64)> = self
            .store
            .tenants()?
            .into_iter()
            .filter(|t| {
                search
                    .as_deref()
                    .is_none_or(|s| t.id.as_str().to_lowercase().contains(s))
            })
            .map(|t| {
                let s = by_tenant.get(&t.id).copied().unwrap_or_default();
                let sessions = SessionCounts {
                    foreground: s.foreground,
                    background: s.background,
                };
                let messages = self.hub.tenant_traffic(&t.id).messages_accepted;
                (t.id, sessions, messages)
            })
            .collect();
        let total_sessions = |s: &SessionCounts| s.foreground + s.background;
        match q.sort.as_deref() {
            None | Some("") | Some("tenant") => rows.sort_by(|a, b| a.0.cmp(&b.0)),
            Some("messages") => {
                rows.sort_by(|a, b| (Reverse(a.2), &a.0).cmp(&(Reverse(b.2), &b.0)))
            }
            Some("sessions") => rows.sort_by(|a, b| {
                (Reverse(total_sessions(&a.1)), &a.0).cmp(&(Reverse(total_sessions(&b.1)), &b.0))
            }),
            Some(other) => {
                return Err(ControlError::Invalid(format!(
                    "sort is tenant, messages or sessions, not {other:?}"
                )))
            }
        }
        let total = rows.len() as u64;
        let tenants = rows
            .into_iter()
            .skip(usize::try_from(q.offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(|(id, sessions, _)| self.tenant_traffic_of(&id, sessions))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrafficPage {
            total,
            offset: q.offset,
            limit,
            tenants,
        })
    }

    /// One tenant's traffic and policy health (a tenant key reads its own).
    pub fn tenant_traffic(&self, tenant: &str) -> Result<TenantTraffic, ControlError> {
        let rec = self.require_tenant(tenant)?;
        let c = self
            .hub
            .sessions_by_tenant()
            .get(&rec.id)
            .copied()
            .unwrap_or_default();
        let sessions = SessionCounts {
            foreground: c.foreground,
            background: c.background,
        };
        self.tenant_traffic_of(&rec.id, sessions)
    }

    fn tenant_traffic_of(
        &self,
        id: &TenantId,
        sessions: SessionCounts,
    ) -> Result<TenantTraffic, ControlError> {
        let t = self.hub.tenant_traffic(id);
        let shed = self.hub.shedding(id);
        Ok(TenantTraffic {
            tenant: id.to_string(),
            sessions,
            messages_accepted: t.messages_accepted,
            deliveries_live: t.deliveries_live,
            deliveries_catch_up: t.deliveries_catch_up,
            deliveries_deferred: t.deliveries_deferred,
            shedding: SheddingInfo {
                receipts: shed.receipts,
                presence: shed.presence,
                background_delivery: shed.background_delivery,
            },
            policy: self.policy_status(id.as_str())?,
        })
    }
}
