//! Pruning a drive's history: the contents blocks that only older versions reference are
//! cleared locally (Hypercore's `clear`: the signed tree stays, so the drive still verifies and
//! peers that hold those blocks can still serve them). A garbage collection then gives their
//! space back ([`crate::gc`]).

use super::*;

/// What [`Drive::prune`] did (or, for a dry run, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// Blocks cleared per bitfield change, so memory stays bounded whatever the drive's size.
const CLEAR_AT_ONCE: usize = 1 << 16;

impl Drive {
    /// Keeps the contents of the last `keep_last` versions (at least one: the current) and
    /// clears every other local contents block. With `dry_run`, only counts.
    pub fn prune(&mut self, keep_last: u64, dry_run: bool) -> Result<Pruned> {
        let keep_last = keep_last.max(1);
        let spans = self.db.core().atomic_spans()?;
        let inside = |v: u64| spans.iter().any(|&(s, e)| s < v && v < e);
        let mut versions = Vec::new();
        let mut v = self.version();
        while v > 0 && (versions.len() as u64) < keep_last {
            if !inside(v) {
                versions.push(v);
            }
            v -= 1;
        }
        let length = self.blobs.length();
        let mut held = vec![false; usize::try_from(length).map_err(|_| Error::InvalidRequest("too long".into()))?];
        for &v in &versions {
            for blob in self.checkout(v)?.blobs()? {
                let end = blob.block_offset.saturating_add(blob.block_length).min(length);
                for i in blob.block_offset..end {
                    held[i as usize] = true;
                }
                if blob.block_map {
                    for m in self.map_of(&blob)? {
                        if let Some(h) = held.get_mut(m.index as usize) {
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

    /// The chunks a block-mapped blob lists.
    fn map_of(&self, blob: &Blob) -> Result<Vec<MapBlock>> {
        if blob.block_length > entry::MAX_MAP_BLOCKS {
            return Err(Error::InvalidRequest("a block map larger than Hyperdrive reads".into()));
        }
        let end = blob.block_offset.saturating_add(blob.block_length).min(self.blobs.length());
        let parts = (blob.block_offset..end).map(|i| self.blobs.get(i)).collect::<Result<Vec<_>>>()?;
        entry::decode_block_map(&parts, self.blobs.length())
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
