//! Pruning a drive's history: the contents blocks that only older versions reference are
//! cleared locally (Hypercore's `clear`: the signed tree stays, so the drive still verifies and
//! peers that hold those blocks can still serve them). A garbage collection then gives their
//! space back ([`crate::gc`]).

use super::*;

/// What [`Drive::prune`] did (or, for a dry run, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pruned {
    /// The oldest version kept whole; versions before it may lack contents.
    pub kept_from: u64,
    /// Versions kept whole.
    pub versions_kept: u64,
    /// Contents blocks cleared.
    pub blocks_cleared: u64,
    /// Their bytes.
    pub bytes_cleared: u64,
}

/// Which versions keep their contents (restic's and borg's vocabulary): the union of what each
/// rule keeps; the current version always stays.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The last N versions.
    pub last: u64,
    /// Versions made within this many milliseconds before `now_ms`.
    pub within_ms: Option<i64>,
    /// The last version of each of the last N days (UTC) that have versions.
    pub daily: u64,
    /// The time the rules count back from (ms since the epoch).
    pub now_ms: i64,
}

impl Keep {
    /// The versions of `versions` (oldest first, with their times) these rules keep.
    pub fn choose(&self, versions: &[(u64, Option<i64>)]) -> Vec<u64> {
        let mut out: Vec<u64> = versions.iter().rev().take(self.last as usize).map(|v| v.0).collect();
        if let Some(within) = self.within_ms {
            let since = self.now_ms.saturating_sub(within);
            out.extend(versions.iter().filter(|v| v.1.is_some_and(|t| t >= since)).map(|v| v.0));
        }
        if self.daily > 0 {
            const DAY_MS: i64 = 86_400_000;
            let mut days = 0;
            let mut last_day = None;
            for &(v, t) in versions.iter().rev() {
                let Some(t) = t else { continue };
                let day = t.div_euclid(DAY_MS);
                if last_day != Some(day) {
                    if days == self.daily {
                        break;
                    }
                    days += 1;
                    last_day = Some(day);
                    out.push(v);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Blocks cleared per bitfield change, so memory stays bounded whatever the drive's size.
const CLEAR_AT_ONCE: usize = 1 << 16;

impl Drive {
    /// Keeps the contents of the last `keep_last` versions (at least one: the current) and
    /// clears every other local contents block. With `dry_run`, only counts.
    pub fn prune(&mut self, keep_last: u64, dry_run: bool) -> Result<Pruned> {
        self.prune_with(&Keep { last: keep_last, ..Keep::default() }, dry_run)
    }

    /// Keeps the contents of the versions `keep` chooses (always the current one) and clears
    /// every other local contents block. With `dry_run`, only counts.
    pub fn prune_with(&mut self, keep: &Keep, dry_run: bool) -> Result<Pruned> {
        let versions = keep.choose(&self.versions()?);
        let versions: Vec<u64> =
            if versions.contains(&self.version()) { versions } else { [vec![self.version()], versions].concat() };
        self.prune_keeping(&versions, dry_run)
    }

    /// Every version of the drive, oldest first, with the time it was made as far as its entry
    /// tells it (the `ctime`, else `mtime`, hyperfs writes; a deletion, or an entry without
    /// times, takes the time of the version before).
    pub fn versions(&self) -> Result<Vec<(u64, Option<i64>)>> {
        let mut out: Vec<(u64, Option<i64>)> = Vec::new();
        let mut last = None;
        for c in self.history(0)? {
            let t = c
                .entry
                .as_ref()
                .and_then(|e| e.metadata.as_ref())
                .and_then(|m| m["ctime"].as_i64().or(m["mtime"].as_i64()));
            last = t.or(last);
            match out.last_mut() {
                Some(v) if v.0 == c.version => v.1 = last,
                _ => out.push((c.version, last)),
            }
        }
        Ok(out)
    }

    /// Keeps the contents of `versions` and clears every other local contents block.
    fn prune_keeping(&mut self, versions: &[u64], dry_run: bool) -> Result<Pruned> {
        let mut versions = versions.to_vec();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        let length = self.blobs.length();
        let mut held = vec![false; usize::try_from(length).map_err(|_| Error::InvalidRequest("too long".into()))?];
        for &v in &versions {
            for blob in self.checkout(v)?.blobs()? {
                let end = blob.block_offset.saturating_add(blob.block_length).min(length);
                for i in blob.block_offset..end {
                    held[i as usize] = true;
                }
                if blob.block_map {
                    // The chunks the map lists, as reads lay them out (cached across versions).
                    for p in self.pieces(&blob)?.iter() {
                        if let Some(h) = held.get_mut(p.index() as usize) {
                            *h = true;
                        }
                    }
                }
            }
        }
        let mut out = Pruned {
            kept_from: versions.last().copied().unwrap_or(0),
            versions_kept: versions.len() as u64,
            ..Pruned::default()
        };
        let mut clear = Vec::new();
        let mut next = self.blobs.next_local(0, length, true);
        while let Some(i) = next {
            if !held[i as usize] {
                out.blocks_cleared += 1;
                out.bytes_cleared += self.blobs.leaf(i)?.map_or(0, |n| n.size);
                clear.push(i);
                if clear.len() == CLEAR_AT_ONCE && !dry_run {
                    self.blobs.forget(&std::mem::take(&mut clear))?;
                }
            }
            next = self.blobs.next_local(i + 1, length, true);
        }
        if !dry_run {
            self.blobs.forget(&clear)?;
            self.pieces.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok(out)
    }

    /// Removes the drive of `key` (its db and blobs cores, secret keys included) from `store`.
    /// Its blocks stay until a garbage collection finds nothing else holds them. Returns
    /// whether the store had it. Open instances of the drive must be dropped first.
    pub fn remove(store: &Arc<dyn Store>, key: &CoreKey) -> Result<bool> {
        let blobs = match Drive::open(store.clone(), key) {
            Ok(Some(d)) => Some(*d.blobs.key()),
            Ok(None) => return Ok(false),
            // A drive that does not open (a damaged header) still goes, with its db core.
            Err(_) => None,
        };
        if let Some(b) = blobs {
            Hypercore::remove(&**store, &b)?;
        }
        Hypercore::remove(&**store, key)
    }
}

impl<B: Blocks> DriveView<'_, B> {
    /// The blob of every file entry of this version, whatever its path (entries no listing
    /// shows still hold their contents for JS readers).
    pub fn blobs(&self) -> Result<Vec<Blob>> {
        let mut upper = FILES.to_vec();
        if let Some(last) = upper.last_mut() {
            *last += 1;
        }
        let range = Range { lower: Bound::Included(FILES.to_vec()), upper: Bound::Excluded(upper), ..Range::default() };
        let mut out = Vec::new();
        let mut it = self.db.range(&range);
        while let Some(next) = it.next_block() {
            let (_, block) = next?;
            if let Ok(Entry { blob: Some(b), .. }) = Entry::decode(block.value.as_deref().unwrap_or_default()) {
                out.push(b);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Keep;

    const DAY: i64 = 86_400_000;

    #[test]
    fn the_rules_keep_what_restic_and_borg_would() {
        // Versions 1..=10: two a day over five days, the last at day 10 noon.
        let versions: Vec<(u64, Option<i64>)> =
            (1..=10u64).map(|v| (v, Some(5 * DAY + (v as i64 - 1) / 2 * DAY + (1 - v as i64 % 2) * 1000))).collect();
        let now = versions[9].1.expect("time") + 1000;
        let keep = |k: Keep| k.choose(&versions);
        assert_eq!(keep(Keep { last: 3, now_ms: now, ..Keep::default() }), vec![8, 9, 10]);
        assert_eq!(keep(Keep { within_ms: Some(DAY), now_ms: now, ..Keep::default() }), vec![9, 10]);
        // The newest version of each of the last three days.
        assert_eq!(keep(Keep { daily: 3, now_ms: now, ..Keep::default() }), vec![6, 8, 10]);
        assert_eq!(keep(Keep { last: 1, daily: 2, now_ms: now, ..Keep::default() }), vec![8, 10]);
        // A version without a time is kept by `last` only.
        let untimed = vec![(1, None), (2, None)];
        assert_eq!(
            Keep { daily: 5, within_ms: Some(DAY), now_ms: now, ..Keep::default() }.choose(&untimed),
            Vec::<u64>::new()
        );
        assert_eq!(Keep { last: 1, ..Keep::default() }.choose(&untimed), vec![2]);
    }
}
