//! Opening a shard: each sealed segment from its summary where the summary can be trusted,
//! the others and the active one read record by record (truncating a torn tail) (see the
//! module docs of `segment`, "Recovery").

use super::*;

impl Inner {
    /// Opens shard `n`: takes each sealed segment from its summary where the summary is
    /// good, reads the others and the active one (truncating a torn or damaged tail, and
    /// writing a sealed one's summary again), rebuilds the groups, and makes sure there is
    /// an active segment.
    pub(super) fn open_shard(&self, n: u16) -> Result<Shard, StoreError> {
        let dir = self.config.dir.join(format!("shard-{n:03}"));
        create_dir_private(&dir)?;
        let trimmed = read_trimmed(&dir)?;
        let mut ids = Vec::new();
        let mut summaries = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io("list shard", e))? {
            let name = entry.map_err(|e| io("list shard", e))?.file_name();
            let name = name.to_string_lossy();
            let id = |suffix| {
                name.strip_suffix(suffix)
                    .and_then(|s| s.parse::<u64>().ok())
            };
            if let Some(id) = id(".seg") {
                ids.push(id);
            } else if let Some(id) = id(".idx") {
                summaries.push(id);
            } else if name.ends_with(".tmp") {
                // A `trimmed` file whose rename a crash prevented: the old one holds.
                let _ = std::fs::remove_file(dir.join(&*name));
            }
        }
        ids.sort_unstable();
        let newest = ids.last().copied();
        for id in summaries {
            // A summary of no segment (retention deletes the summary first, but a crash can
            // leave one), or of the active segment (a seal whose next segment a crash lost):
            // neither describes a sealed segment that is there.
            if ids.binary_search(&id).is_err() || Some(id) == newest {
                let _ = std::fs::remove_file(summary_path(&dir, id));
            }
        }
        let mut shard = Shard {
            dir: dir.clone(),
            segments: BTreeMap::new(),
            active: 0,
            pending: Vec::new(),
            unsynced: Vec::new(),
            dir_dirty: false,
            summaries_due: Vec::new(),
            groups: HashMap::new(),
            trimmed,
            failed: None,
            key_id: self.key_id,
            #[cfg(test)]
            scanned: Vec::new(),
        };
        for &id in &ids {
            let path = segment_path(&dir, id);
            let file = private_file(OpenOptions::new().read(true).write(true))
                .open(&path)
                .map_err(|e| io("open segment", e))?;
            let size = file.metadata().map_err(|e| io("stat segment", e))?.len();
            shard.segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    len: size,
                    groups: HashMap::new(),
                    hashes: HashMap::new(),
                    hash_blocks: HashMap::new(),
                },
            );
            shard.active = id;
            let sealed = Some(id) != newest;
            if sealed && shard.load_summary(id, size) {
                continue;
            }
            #[cfg(test)]
            shard.scanned.push(id);
            let good = self.scan(&mut shard, id, size)?;
            if good < size {
                let seg = shard
                    .segments
                    .get(&id)
                    .ok_or_else(|| corrupt("segment vanished"))?;
                tracing::warn!(
                    segment = %path.display(),
                    kept = good,
                    dropped = size - good,
                    "segment log: truncated a torn or damaged tail"
                );
                seg.file
                    .set_len(good)
                    .and_then(|()| seg.file.sync_all())
                    .map_err(|e| io("truncate segment", e))?;
            }
            if let Some(seg) = shard.segments.get_mut(&id) {
                seg.len = good;
            }
            if sealed {
                if let Some(summary) = shard.summary(id) {
                    write_summary(&dir, id, &summary::encode(&summary));
                }
                if let Some(seg) = shard.segments.get_mut(&id) {
                    seg.hashes = HashMap::new();
                }
            }
        }
        // Groups whose every message was trimmed keep their numbering.
        for (key, &t) in &shard.trimmed {
            if !shard.groups.contains_key(key) {
                shard.groups.insert(key.clone(), GroupLog::new(t));
            }
        }
        if shard.segments.is_empty() {
            shard.create_segment(1)?;
            sync_dir(&dir)?;
            shard.dir_dirty = false;
        }
        Ok(shard)
    }

    /// Reads segment `id` (`size` bytes in its file) into the shard's state; returns how
    /// many bytes from its start are intact records.
    pub(super) fn scan(&self, shard: &mut Shard, id: u64, size: u64) -> Result<u64, StoreError> {
        let max = self.config.max_record_bytes as usize;
        let file = shard
            .segments
            .get(&id)
            .map(|s| s.file.clone())
            .ok_or_else(|| corrupt("segment vanished"))?;
        let mut reader = SegmentReader::new(&file, size, &[], max);
        let mut pos = 0;
        while let Some(bytes) = reader.bytes_at(pos)? {
            let (view, len) = match record::parse(bytes, max) {
                Parsed::Record(view, len) => (view, len),
                Parsed::Short { .. } | Parsed::Bad(_) => break,
            };
            let (Ok(tenant), Ok(group), Ok(sender)) = (
                TenantId::new(view.tenant),
                GroupId::new(view.group),
                UserId::new(view.sender),
            ) else {
                break;
            };
            let key = (tenant, group);
            let head = shard.known_head(&key);
            // At or below the head: trimmed already (its segment's deletion was cut short).
            if view.seq > head {
                let hash = self.dedupe_hash(sender.as_str(), view.client_msg_id);
                shard.note(
                    &self.config,
                    key,
                    Noted {
                        seq: view.seq,
                        segment: id,
                        offset: pos,
                        len: len as u64,
                        sent_at_ms: view.sent_at_ms,
                        hash,
                    },
                );
            }
            pos += len as u64;
        }
        Ok(pos)
    }
}

impl Shard {
    /// The summary of segment `id`, sealed (or being sealed): its groups' records in it.
    /// `None` if a group's records there do not run `first..=last` without a gap (a torn
    /// older segment before it): such a segment is read at every open.
    pub(super) fn summary(&self, id: u64) -> Option<Summary> {
        let seg = self.segments.get(&id)?;
        let groups = seg
            .groups
            .iter()
            .map(|(key, sg)| {
                let hashes = seg.hashes.get(key).cloned().unwrap_or_default();
                if hashes.len() as u64 != sg.last - sg.first + 1 {
                    return None;
                }
                let (index, end) = self.groups.get(key).map_or((Vec::new(), 0), |g| {
                    let lo = g.index.partition_point(|e| e.segment < id);
                    let hi = g.index.partition_point(|e| e.segment <= id);
                    let index = g.index[lo..hi].iter().map(|e| (e.seq, e.offset)).collect();
                    // Nothing is written after a segment being sealed: its newest record
                    // of the group is the group's newest.
                    (index, if g.last_segment == id { g.last_end } else { 0 })
                });
                Some(GroupSummary {
                    key: key.clone(),
                    seg: *sg,
                    end,
                    index,
                    hashes,
                    hashes_at: 0,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Summary {
            id,
            len: seg.len,
            key_id: self.key_id,
            groups,
        })
    }

    /// The group's head as the open has it so far (its trimmed seq before any record).
    pub(super) fn known_head(&self, key: &GroupKey) -> u64 {
        self.groups
            .get(key)
            .map(|g| g.head)
            .or_else(|| self.trimmed.get(key).copied())
            .unwrap_or(0)
    }

    /// Takes sealed segment `id` (`size` bytes in its file) from its summary, if that is
    /// good: whole, for this length, and continuing what the older segments left (a group
    /// whose records there are all trimmed already is left out, as a scan would skip them).
    /// `false` (nothing changed): the segment has to be read.
    pub(super) fn load_summary(&mut self, id: u64, size: u64) -> bool {
        let Ok(file) = File::open(summary_path(&self.dir, id)) else {
            return false;
        };
        let file_len = file.metadata().map_or(0, |m| m.len());
        let Some(summary) = summary::read(&file, file_len)
            .filter(|s| s.id == id && s.len == size && s.key_id == self.key_id)
        else {
            tracing::info!(
                segment = id,
                "segment log: summary not usable; reading the segment"
            );
            return false;
        };
        if summary.groups.iter().any(|g| {
            let head = self.known_head(&g.key);
            g.seg.first <= head && g.seg.last > head
        }) {
            return false;
        }
        let mut groups = HashMap::with_capacity(summary.groups.len());
        let mut blocks = HashMap::with_capacity(summary.groups.len());
        for gs in summary.groups {
            if gs.seg.last <= self.known_head(&gs.key) {
                continue;
            }
            let trimmed = self.trimmed.get(&gs.key).copied().unwrap_or(0);
            let g = self
                .groups
                .entry(gs.key.clone())
                .or_insert_with(|| GroupLog::new(trimmed));
            if g.index.is_empty() {
                g.first = gs.seg.first;
            }
            let last_entry = gs.index.last().map_or(gs.seg.first, |e| e.0);
            g.index
                .extend(gs.index.iter().map(|&(seq, offset)| IndexEntry {
                    seq,
                    segment: id,
                    offset,
                }));
            g.since_index = u32::try_from(gs.seg.last - last_entry + 1).unwrap_or(u32::MAX);
            g.head = gs.seg.last;
            g.last_segment = id;
            g.last_end = gs.end;
            // The window is completed from the hash blocks when first needed.
            g.dedupe_ready = false;
            blocks.insert(gs.key.clone(), gs.hashes_at);
            groups.insert(gs.key, gs.seg);
        }
        if let Some(seg) = self.segments.get_mut(&id) {
            seg.groups = groups;
            seg.hash_blocks = blocks;
        }
        true
    }
}
