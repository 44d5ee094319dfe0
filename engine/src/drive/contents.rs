//! Reading a file's contents: where each chunk of a blob lies in the file (cached), and reads
//! of any byte range that touch only the chunks holding it — a window of chunks at a time, on
//! every core, a sparse replica asking for a window's missing blocks at once.

use super::*;

/// One chunk of a file: blobs block `index` holds the file's bytes `start..start + len`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Piece {
    index: u64,
    start: u64,
    len: u64,
}

impl Piece {
    /// The blobs block holding this piece.
    pub(super) fn index(&self) -> u64 {
        self.index
    }

    /// A file's chunks laid end to end from its start; a file over 2^64 bytes is malformed
    /// (the sum wrapped in release builds, and a read then split its buffer where it had none).
    pub(super) fn laid_out(blocks: impl IntoIterator<Item = MapBlock>) -> Result<Vec<Piece>> {
        let mut start = 0u64;
        blocks
            .into_iter()
            .map(|m| {
                let p = Piece { index: m.index, start, len: m.byte_length };
                start = start.checked_add(m.byte_length).ok_or(Error::Decode {
                    what: "blob",
                    source: crate::encoding::DecodeError::Invalid("a file over 2^64 bytes"),
                })?;
                Ok(p)
            })
            .collect()
    }
}

/// The chunk offsets of recently used blobs, up to [`PIECE_CACHE_PIECES`] pieces in all (then it
/// starts again empty). A block map is read once, not at every stat of its file (a listing of
/// many deduplicated files stats each).
///
/// A sparse replica lacks the tree leaves of the blocks it has not fetched; for a plain blob it
/// keeps the leaves it found so far (`partial`), and the next look resumes after them. Before,
/// every read of a sequential reader walked the leaves from the blob's start to the first
/// missing one again: 15% of a 256 MiB sparse read's CPU was those lookups.
#[derive(Default)]
pub(super) struct PieceCache {
    map: HashMap<Blob, Arc<Vec<Piece>>>,
    pieces: usize,
    partial: HashMap<Blob, Vec<MapBlock>>,
}

/// About 24 MiB of offsets.
const PIECE_CACHE_PIECES: usize = 1 << 20;

impl PieceCache {
    fn get(&self, blob: &Blob) -> Option<Arc<Vec<Piece>>> {
        self.map.get(blob).cloned()
    }

    pub(super) fn insert(&mut self, blob: Blob, pieces: Arc<Vec<Piece>>) {
        let n = pieces.len().max(1);
        if self.pieces + n > PIECE_CACHE_PIECES {
            self.clear();
        }
        if let Some(old) = self.map.insert(blob, pieces) {
            self.pieces -= old.len().max(1);
        }
        self.pieces += n;
    }

    pub(super) fn clear(&mut self) {
        *self = PieceCache::default();
    }

    /// The leaves of plain blob `blob` found before (taken: they come back with
    /// [`PieceCache::keep_partial`] if still incomplete).
    fn take_partial(&mut self, blob: &Blob) -> Vec<MapBlock> {
        let found = self.partial.remove(blob).unwrap_or_default();
        self.pieces -= found.len();
        found
    }

    /// Keeps the leaves found so far of a blob whose next leaf is missing; the prefixes kept
    /// count in the cache's bound.
    fn keep_partial(&mut self, blob: Blob, found: Vec<MapBlock>) {
        if found.is_empty() {
            return;
        }
        let n = found.len();
        if self.pieces + n > PIECE_CACHE_PIECES {
            self.clear();
        }
        if let Some(old) = self.partial.insert(blob, found) {
            self.pieces -= old.len();
        }
        self.pieces += n;
    }
}

impl Drive {
    /// The size of the file a blob holds (for a block map, the sum of its chunks).
    pub fn blob_size(&self, blob: &Blob) -> Result<u64> {
        if !blob.block_map {
            return Ok(blob.byte_length);
        }
        Ok(self.pieces(blob)?.last().map_or(0, |p| p.start + p.len))
    }

    /// Up to `len` bytes of a blob from `offset`, reading only the chunks that hold them.
    pub fn read_blob(&self, blob: &Blob, offset: u64, len: u64) -> Result<Vec<u8>> {
        let size = self.blob_size(blob)?;
        let mut out = vec![0u8; len.min(size.saturating_sub(offset)) as usize];
        let n = self.read_blob_into(blob, offset, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Up to `out.len()` bytes of a blob from `offset` into `out` (a reader's own buffer, reused
    /// from read to read); how many there were (fewer at the blob's end).
    pub fn read_blob_into(&self, blob: &Blob, offset: u64, out: &mut [u8]) -> Result<usize> {
        let len = out.len() as u64;
        let pieces = match self.pieces(blob) {
            // A sparse replica without the chunk sizes of a plain blob finds its start by seeking.
            Err(Error::MissingNode { .. }) if !blob.block_map && self.fetch.is_some() => {
                return self.read_plain_by_seek(blob, offset, out);
            }
            other => other?,
        };
        let end = pieces.last().map_or(0, |p| p.start + p.len);
        let (offset, stop) = (offset.min(end), offset.saturating_add(len).min(end));
        let first = pieces.partition_point(|p| p.start + p.len <= offset);
        let last = pieces.partition_point(|p| p.start < stop);
        let wanted = &pieces[first..last.max(first)];
        // Blocks are read on every core, a window at a time (a sparse replica asks for a window's
        // missing blocks at once), each straight into its place in the result.
        let mut rest: &mut [u8] = &mut out[..(stop - offset) as usize];
        if let Some(f) = &self.fetch {
            // A long read is a sequential reader's window: the chunks after it travel while it
            // is used.
            if len >= HINT_FROM && wanted.len() > 1 {
                let after = &pieces[last.min(pieces.len())..pieces.len().min(last + wanted.len())];
                let next: Vec<u64> = after.iter().map(|p| p.index).filter(|&i| !self.blobs.has(i)).collect();
                f.hint(self.blobs.key(), &next);
            }
        }
        // The store is told of each window's blocks a window ahead, so their reads from the
        // disk overlap the copying of the window before; a long read is a sequential reader's,
        // and twice as many blocks after it are asked for too, to be loading while it uses this
        // range.
        let windows: Vec<&[Piece]> = wanted.chunks(READ_WINDOW_BLOCKS).collect();
        if wanted.len() > 1 {
            let after = if len >= HINT_FROM {
                &pieces[last.min(pieces.len())..pieces.len().min(last + 2 * wanted.len())]
            } else {
                &[]
            };
            self.blobs.will_read(windows[0].iter().chain(after).map(|p| p.index));
        }
        for (k, window) in windows.iter().enumerate() {
            if let Some(next) = windows.get(k + 1) {
                self.blobs.will_read(next.iter().map(|p| p.index));
            }
            if let Some(f) = &self.fetch {
                let missing: Vec<u64> = window.iter().map(|p| p.index).filter(|&i| !self.blobs.has(i)).collect();
                if missing.len() > 1 {
                    f.prefetch(self.blobs.key(), &missing);
                }
            }
            let mut jobs = Vec::with_capacity(window.len());
            for p in window.iter() {
                let from = offset.saturating_sub(p.start);
                let to = (stop - p.start).min(p.len);
                let (dest, tail) = std::mem::take(&mut rest).split_at_mut(to.saturating_sub(from) as usize);
                rest = tail;
                jobs.push((p, from as usize, dest));
            }
            let read = |(p, from, dest): (&Piece, usize, &mut [u8])| -> Result<()> {
                if from == 0 && dest.len() as u64 == p.len {
                    return fetch::read_block_into(&self.blobs, self.fetch.as_deref(), p.index, dest);
                }
                fetch::read_block_part(&self.blobs, self.fetch.as_deref(), p.index, p.len, from, dest)
            };
            if jobs.len() > 1 {
                jobs.into_par_iter().try_for_each(read)?;
            } else {
                jobs.into_iter().try_for_each(read)?;
            }
        }
        Ok((stop - offset) as usize)
    }

    /// Reads a plain blob into `out` from the block holding `offset`, located through the
    /// fetcher's seek; how many bytes there were.
    fn read_plain_by_seek(&self, blob: &Blob, offset: u64, out: &mut [u8]) -> Result<usize> {
        let len = out.len() as u64;
        let offset = offset.min(blob.byte_length);
        let mut remaining = len.min(blob.byte_length - offset) as usize;
        let mut filled = 0;
        if remaining == 0 {
            return Ok(0);
        }
        let at = blob.byte_offset + offset;
        let (mut index, skip) = match self.blobs.seek(at) {
            Err(Error::MissingNode { .. }) => match &self.fetch {
                Some(f) => f.seek(self.blobs.key(), at)?,
                None => return Err(Error::MissingNode { index: 0 }),
            },
            other => other?,
        };
        let mut skip = skip as usize;
        let end = blob.block_offset + blob.block_length;
        if let Some(f) = &self.fetch {
            // Block sizes are unknown here: ask at once for as many as the blob's mean block
            // size says the range spans.
            let mean = (blob.byte_length / blob.block_length.max(1)).max(1);
            let range = (remaining as u64 + skip as u64).div_ceil(mean);
            let span = range.min(READ_WINDOW_BLOCKS as u64);
            let missing: Vec<u64> = (index..end.min(index + span)).filter(|&i| !self.blobs.has(i)).collect();
            if missing.len() > 1 {
                f.prefetch(self.blobs.key(), &missing);
            }
            // A long read is a sequential reader's window: the rest of the range, and as many
            // blocks after it, are asked for now, so they travel while this range is used and
            // the next read finds its start in flight. (Short reads are random ones: they fetch
            // only what they read.)
            if len >= HINT_FROM && span > 1 {
                let next: Vec<u64> =
                    (index + span..end.min(index + 2 * range)).filter(|&i| !self.blobs.has(i)).collect();
                f.hint(self.blobs.key(), &next);
            }
        }
        while remaining > 0 && index < end {
            let block = fetch::read_block(&self.blobs, self.fetch.as_deref(), index)?;
            let take = block.len().saturating_sub(skip).min(remaining);
            out[filled..filled + take].copy_from_slice(&block[skip.min(block.len())..skip.min(block.len()) + take]);
            filled += take;
            remaining -= take;
            skip = 0;
            index += 1;
        }
        Ok(filled)
    }

    /// The chunks of a blob with their offsets in the file (cached).
    pub(super) fn pieces(&self, blob: &Blob) -> Result<Arc<Vec<Piece>>> {
        if let Some(p) = self.pieces.lock().unwrap_or_else(|e| e.into_inner()).get(blob) {
            return Ok(p);
        }
        let end = blob.block_offset.checked_add(blob.block_length).filter(|&e| e <= self.blobs.length());
        let Some(end) = end else {
            return Err(Error::OutOfBounds(format!(
                "a blob of blocks {}..+{} in a blobs core of length {}",
                blob.block_offset,
                blob.block_length,
                self.blobs.length()
            )));
        };
        let blocks: Vec<MapBlock> = if blob.block_map {
            if blob.block_length > entry::MAX_MAP_BLOCKS {
                return Err(Error::InvalidRequest("a block map larger than Hyperdrive reads".into()));
            }
            let parts = (blob.block_offset..end)
                .map(|i| fetch::read_block(&self.blobs, self.fetch.as_deref(), i))
                .collect::<Result<Vec<_>>>()?;
            entry::decode_block_map(&parts, self.blobs.length())?
        } else {
            let mut found = self.pieces.lock().unwrap_or_else(|e| e.into_inner()).take_partial(blob);
            for index in blob.block_offset + found.len() as u64..end {
                match self.blobs.leaf(index) {
                    Ok(Some(node)) => found.push(MapBlock { index, byte_length: node.size }),
                    Ok(None) => {
                        self.pieces.lock().unwrap_or_else(|e| e.into_inner()).keep_partial(*blob, found);
                        return Err(Error::MissingNode { index: 2 * index });
                    }
                    Err(e) => return Err(e),
                }
            }
            found
        };
        let pieces = Arc::new(Piece::laid_out(blocks)?);
        self.pieces.lock().unwrap_or_else(|e| e.into_inner()).insert(*blob, pieces.clone());
        Ok(pieces)
    }
}
