//! Retention: what a group keeps (`Retention`, per tenant and group), which sealed segments
//! a pass deletes, and the shard's `trimmed` file that keeps a group's numbering once its
//! segments are gone (see the module docs of `segment`).

use super::*;

/// Limits of one group's log; a message goes (with its whole segment) once it is past any
/// of them. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Messages sent longer ago than this (by `sent_at_ms`).
    pub max_age_ms: Option<u64>,
    /// Messages older than the group's newest this many.
    pub max_messages: Option<u64>,
    /// Messages older than the group's newest this many bytes (record sizes).
    pub max_bytes: Option<u64>,
}

impl RetentionLimits {
    /// `self`'s limits, with `fallback`'s where `self` has none.
    fn or(self, fallback: RetentionLimits) -> RetentionLimits {
        RetentionLimits {
            max_age_ms: self.max_age_ms.or(fallback.max_age_ms),
            max_messages: self.max_messages.or(fallback.max_messages),
            max_bytes: self.max_bytes.or(fallback.max_bytes),
        }
    }
}

/// Retention limits: a group's own, else its tenant's, else the default, field by field.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub default: RetentionLimits,
    pub tenants: HashMap<TenantId, RetentionLimits>,
    pub groups: HashMap<(TenantId, GroupId), RetentionLimits>,
}

impl Retention {
    /// The limits that apply to a group.
    pub fn limits(&self, tenant: &TenantId, group: &GroupId) -> RetentionLimits {
        let tenant_limits = self.tenants.get(tenant).copied().unwrap_or_default();
        let group_limits = self
            .groups
            .get(&(tenant.clone(), group.clone()))
            .copied()
            .unwrap_or_default();
        group_limits.or(tenant_limits.or(self.default))
    }

    /// Whether any limit is set (else retention never deletes anything).
    pub fn is_limited(&self) -> bool {
        let none = RetentionLimits::default();
        self.default != none
            || self.tenants.values().any(|l| *l != none)
            || self.groups.values().any(|l| *l != none)
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// Retention as a store reports it ([`crate::Store::retention`]): the limits in force and
/// what the retained messages take on disk now.
#[derive(Debug, Clone, Default)]
pub struct RetentionStatus {
    pub limits: Retention,
    /// Bytes of segment files, buffered appends included.
    pub bytes: u64,
    /// Segment files, the active ones included.
    pub segments: usize,
}

impl SegmentLog {
    /// Deletes the sealed segments, oldest first, whose every group's records are past that
    /// group's retention limits at `now_ms` (see the module docs). Blocking (it syncs the
    /// `trimmed` file and deletes files).
    pub fn enforce_retention(&self, now_ms: u64) -> Result<RetentionReport, StoreError> {
        let retention = &self.inner.config.retention;
        let mut report = RetentionReport::default();
        if !retention.is_limited() {
            return Ok(report);
        }
        // Not during a flush: it writes the summaries of segments it sealed, and one written
        // after its segment's deletion would outlive it.
        let _one = self.inner.flushing.lock();
        for shard in &self.inner.shards {
            let mut s = shard.lock();
            if s.failed.is_some() {
                continue;
            }
            let doomed = s.expired_segments(retention, now_ms);
            if doomed.is_empty() {
                continue;
            }
            if let Err(e) = s.trim(&doomed, &mut report) {
                return Err(s.fail(e));
            }
        }
        if report.segments_deleted > 0 {
            tracing::info!(
                segments = report.segments_deleted,
                bytes = report.bytes_deleted,
                "retention deleted segments"
            );
        }
        Ok(report)
    }

    /// The retention limits and the log's size now.
    pub fn retention_status(&self) -> RetentionStatus {
        let (bytes, segments) = self.disk_usage();
        RetentionStatus {
            limits: self.inner.config.retention.clone(),
            bytes,
            segments,
        }
    }
}

impl Shard {
    /// The sealed segments, oldest first, that retention deletes now.
    pub(super) fn expired_segments(&self, retention: &Retention, now_ms: u64) -> Vec<u64> {
        // Per group, bytes of its records in segments newer than each one (for max_bytes).
        let mut newer_bytes: HashMap<&GroupKey, u64> = HashMap::new();
        let mut bytes_after: HashMap<(u64, &GroupKey), u64> = HashMap::new();
        for (&id, seg) in self.segments.iter().rev() {
            for (key, sg) in &seg.groups {
                let newer = newer_bytes.entry(key).or_insert(0);
                bytes_after.insert((id, key), *newer);
                *newer += sg.bytes;
            }
        }
        let mut doomed = Vec::new();
        for (&id, seg) in &self.segments {
            if id == self.active {
                break;
            }
            let expired = seg.groups.iter().all(|(key, sg)| {
                let limits = retention.limits(&key.0, &key.1);
                let head = self.groups.get(key).map_or(0, |g| g.head);
                let by_age = limits
                    .max_age_ms
                    .is_some_and(|age| sg.newest_ms.saturating_add(age) < now_ms);
                let by_count = limits
                    .max_messages
                    .is_some_and(|n| sg.last.saturating_add(n) <= head);
                let by_bytes = limits
                    .max_bytes
                    .is_some_and(|b| bytes_after.get(&(id, key)).copied().unwrap_or(0) >= b);
                by_age || by_count || by_bytes
            });
            if !expired {
                break;
            }
            doomed.push(id);
        }
        doomed
    }

    /// Deletes `doomed` (the oldest segments): the groups' trimmed seqs are made durable
    /// first, then the files go.
    pub(super) fn trim(
        &mut self,
        doomed: &[u64],
        report: &mut RetentionReport,
    ) -> Result<(), StoreError> {
        for id in doomed {
            if let Some(seg) = self.segments.get(id) {
                for (key, sg) in &seg.groups {
                    let t = self.trimmed.entry(key.clone()).or_insert(0);
                    *t = (*t).max(sg.last);
                }
            }
        }
        write_trimmed(&self.dir, &self.trimmed)?;
        for id in doomed {
            let Some(seg) = self.segments.remove(id) else {
                continue;
            };
            // The summary first: a crash between the two leaves a segment that is read at
            // open, never a summary without its segment (open deletes one anyway).
            match std::fs::remove_file(summary_path(&self.dir, *id)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("delete summary", e))
                }
                _ => {}
            }
            std::fs::remove_file(segment_path(&self.dir, *id))
                .map_err(|e| io("delete segment", e))?;
            report.segments_deleted += 1;
            report.bytes_deleted += seg.len;
            for (key, sg) in seg.groups {
                if let Some(g) = self.groups.get_mut(&key) {
                    g.first = g.first.max(sg.last + 1);
                    g.index.retain(|e| e.segment != *id);
                }
            }
        }
        sync_dir(&self.dir)
    }
}

/// Reads a shard's `trimmed` file: per group, its newest deleted seq. Layout: count u32,
/// then per group tenant and group (u8 length each) and seq u64, then a CRC32C of all that;
/// little-endian.
pub(super) fn read_trimmed(dir: &Path) -> Result<HashMap<GroupKey, u64>, StoreError> {
    let bytes = match std::fs::read(dir.join(TRIMMED_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io("read trimmed", e)),
    };
    let bad = || corrupt(format!("{}: damaged", dir.join(TRIMMED_FILE).display()));
    let (body, crc) = bytes
        .split_at_checked(bytes.len().saturating_sub(4))
        .ok_or_else(bad)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(bad());
    }
    let mut out = HashMap::new();
    let (count, mut rest) = body.split_at_checked(4).ok_or_else(bad)?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| bad())?);
    for _ in 0..count {
        let mut id = || -> Option<String> {
            let (&n, tail) = rest.split_first()?;
            let (s, tail) = tail.split_at_checked(usize::from(n))?;
            rest = tail;
            String::from_utf8(s.to_vec()).ok()
        };
        let (tenant, group) = (id().ok_or_else(bad)?, id().ok_or_else(bad)?);
        let (seq, tail) = rest.split_at_checked(8).ok_or_else(bad)?;
        rest = tail;
        let seq = u64::from_le_bytes(seq.try_into().map_err(|_| bad())?);
        let tenant = TenantId::new(&tenant).map_err(|_| bad())?;
        let group = GroupId::new(&group).map_err(|_| bad())?;
        out.insert((tenant, group), seq);
    }
    Ok(out)
}

/// Replaces the `trimmed` file durably (written aside, synced, renamed, directory synced).
fn write_trimmed(dir: &Path, trimmed: &HashMap<GroupKey, u64>) -> Result<(), StoreError> {
    let mut b = Vec::with_capacity(8 + trimmed.len() * 48);
    b.extend_from_slice(&(trimmed.len() as u32).to_le_bytes());
    for ((tenant, group), seq) in trimmed {
        for id in [tenant.as_str(), group.as_str()] {
            b.push(id.len() as u8);
            b.extend_from_slice(id.as_bytes());
        }
        b.extend_from_slice(&seq.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{TRIMMED_FILE}.tmp"));
    let file = private_file(OpenOptions::new().write(true).create(true).truncate(true))
        .open(&tmp)
        .map_err(|e| io("create trimmed", e))?;
    file.write_all_at(&b, 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write trimmed", e))?;
    std::fs::rename(&tmp, dir.join(TRIMMED_FILE)).map_err(|e| io("rename trimmed", e))?;
    sync_dir(dir)
}
