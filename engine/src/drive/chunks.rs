//! Writing a file's contents: cut into chunks (CDC), hashed on every core, chunks the drive
//! already has reused, new ones appended to the blobs core in batches (`BlobBatch`).

use super::contents::Piece;
use super::*;
use crate::store::Staged;

impl Drive {
    /// Chunks `reader` into `batch`: chunks this drive (or the batch) already has are reused,
    /// new ones join the batch's pending appends. Returns the file's blob.
    pub(super) fn write_chunks(&mut self, batch: &mut BlobBatch, reader: impl Read) -> Result<Blob> {
        batch.check(&self.blobs)?;
        let mut feed = ChunkFeed::new(reader, self.preset);
        let first = feed.next_window(Vec::new())?;
        if !feed.done {
            // A large file: chunked, hashed and staged as a close does it beside the owner,
            // then committed.
            let prepared = self.prepare_feed(feed, first, batch.past_cache)?;
            return self.write_prepared_into(batch, prepared);
        }
        // A file of one window (most files) is written here, without a second thread; its new
        // chunks join the batch (small files share appends).
        let (start_length, start_bytes) = (batch.next_index(&self.blobs), batch.next_byte(&self.blobs));
        let mut w = ChunkWriter { map: Vec::new(), reused: false };
        let hashes = first.hash(None);
        w.resolve(&mut self.blobs, batch, &first, hashes)?;
        self.finish_blob(batch, w, start_length, start_bytes)
    }

    /// Cuts what `reader` yields into chunks, hashes them on every core and writes the chunks
    /// the store lacks to its block log, all on `self`, a snapshot: nothing here needs the
    /// drive's owner, so a 1 GiB close holds the drive only for [`Drive::write_prepared`]. The
    /// staged bytes are garbage until that commit (the next open or collection drops them).
    /// `past_cache` as [`BlobBatch::past_cache`].
    pub fn prepare_blob(&self, reader: impl Read, past_cache: bool) -> Result<PreparedBlob> {
        let mut feed = ChunkFeed::new(reader, self.preset);
        let first = feed.next_window(Vec::new())?;
        self.prepare_feed(feed, first, past_cache)
    }

    fn prepare_feed<R: Read>(&self, mut feed: ChunkFeed<R>, first: Window, past_cache: bool) -> Result<PreparedBlob> {
        let store = self.blobs.store().clone();
        let blobs = &self.blobs;
        let mut out = PreparedBlob {
            chunks: Vec::new(),
            staged: std::collections::HashSet::new(),
            seen: (blobs.fork(), blobs.length()),
            core: *blobs.key(),
            _pin: store.pin(),
        };
        if feed.done {
            let hashes = first.hash(Some(&*store));
            out.add(blobs, &first, hashes, past_cache)?;
            return Ok(out);
        }
        // In three stages: the next window is read and cut into chunks while the one before
        // it is hashed (on every core) and the one before that is looked up and written to the
        // block log straight from its buffer, so the log's write overlaps the hashing. The
        // buffers go back and forth (no fresh memory per window).
        let out_ref = &mut out;
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Window>(1);
            let (hashed, to_stage) = std::sync::mpsc::sync_channel::<(Window, Hashed)>(1);
            let hasher_store = store.clone();
            let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
            s.spawn(move || {
                for window in rx {
                    let hashes = window.hash(Some(&*hasher_store));
                    if hashed.send((window, hashes)).is_err() {
                        return; // the stager stopped
                    }
                }
            });
            let worker = s.spawn(move || -> Result<()> {
                for (window, hashes) in to_stage {
                    out_ref.add(blobs, &window, hashes, past_cache)?;
                    let _ = give_back.send(window.buf);
                }
                Ok(())
            });
            let fed = (|| -> Result<()> {
                let mut next = first;
                loop {
                    if tx.send(next).is_err() {
                        return Ok(()); // the stager stopped; its error is the one to report
                    }
                    if feed.done {
                        return Ok(());
                    }
                    next = feed.next_window(returned.try_recv().unwrap_or_default())?;
                }
            })();
            drop(tx);
            let worked = worker.join().unwrap_or_else(|_| Err(Error::Storage("the chunk writer failed".into())));
            worked.and(fed)
        })?;
        Ok(out)
    }

    /// Writes a blob prepared by [`Drive::prepare_blob`] (on a snapshot of this drive) to the
    /// blobs core: chunks the drive has by now are reused, the rest appended from their staged
    /// bytes. Returns the blob, for an entry written by [`Drive::apply`].
    pub fn write_prepared(&mut self, prepared: PreparedBlob) -> Result<Blob> {
        let mut batch = BlobBatch::new();
        let blob = self.write_prepared_into(&mut batch, prepared)?;
        self.finish_blobs(&mut batch)?;
        Ok(blob)
    }

    fn write_prepared_into(&mut self, batch: &mut BlobBatch, prepared: PreparedBlob) -> Result<Blob> {
        if prepared.core != *self.blobs.key() {
            return Err(Error::InvalidRequest("a blob prepared for another drive".into()));
        }
        // What the batch holds goes first: this file's new chunks follow it.
        batch.commit(&mut self.blobs)?;
        let (start_length, start_bytes) = (self.blobs.length(), self.blobs.byte_length());
        // Chunks found in the snapshot are still there while its history is (same fork, not
        // shorter); chunks it lacked are looked up again only if the core grew since.
        let (fork, length) = prepared.seen;
        let same = self.blobs.fork() == fork && start_length >= length;
        let grown = !same || start_length > length;
        let mut w = ChunkWriter { map: Vec::with_capacity(prepared.chunks.len()), reused: false };
        let mut new: Vec<(Hash, u64, Option<Staged>)> = Vec::new();
        for c in prepared.chunks {
            let known = match c.known {
                Some(i) if same && self.blobs.has(i) => Some(i),
                _ if grown => self.blobs.find_block(&c.leaf)?,
                _ => None,
            };
            let index = match known.or_else(|| batch.fresh.get(&c.leaf).copied()) {
                Some(i) => {
                    w.reused = true;
                    i
                }
                None => {
                    // A chunk the snapshot had and the drive no longer has (truncated or
                    // pruned since) has no staged bytes: the store must still hold them.
                    if c.staged.is_none() && !self.blobs.store().reuse_block(&c.leaf)? {
                        return Err(Error::InvalidRequest(
                            "the drive's history was cut while this file was being written; write it again".into(),
                        ));
                    }
                    let i = start_length + new.len() as u64;
                    batch.fresh.insert(c.leaf, i);
                    new.push((c.leaf, c.len, c.staged));
                    i
                }
            };
            w.map.push(MapBlock { index, byte_length: c.len });
        }
        // In slices, so one commit's batch stays a few MiB whatever the file's size.
        for slice in new.chunks(STAGED_APPEND_BLOCKS) {
            self.blobs.append_staged(slice)?;
        }
        self.finish_blob(batch, w, start_length, start_bytes)
    }

    /// The blob of a file whose blocks `w` has laid out from `start_length` (byte
    /// `start_bytes`): its run of blocks when all are new, else a block map appended to the
    /// batch (with the map's chunk offsets cached for when the batch is in).
    fn finish_blob(
        &mut self,
        batch: &mut BlobBatch,
        w: ChunkWriter,
        start_length: u64,
        start_bytes: u64,
    ) -> Result<Blob> {
        let total: u64 = w.map.iter().map(|m| m.byte_length).sum();
        if !w.reused {
            return Ok(Blob {
                block_offset: start_length,
                byte_offset: start_bytes,
                block_length: w.map.len() as u64,
                byte_length: total,
                block_map: false,
            });
        }
        let parts = entry::encode_block_map(&w.map);
        if parts.len() as u64 > entry::MAX_MAP_BLOCKS {
            return Err(Error::InvalidRequest(format!(
                "a file of {} chunks needs a block map larger than Hyperdrive reads ({} blocks)",
                w.map.len(),
                entry::MAX_MAP_BLOCKS
            )));
        }
        let (map_start, map_bytes) = (batch.next_index(&self.blobs), batch.next_byte(&self.blobs));
        let map_len: usize = parts.iter().map(Vec::len).sum();
        for part in parts.iter() {
            batch.push(&self.blobs, part.clone(), crate::crypto::leaf_hash(part));
        }
        let blob = Blob {
            block_offset: map_start,
            byte_offset: map_bytes,
            block_length: parts.len() as u64,
            byte_length: map_len as u64,
            block_map: true,
        };
        batch.commit_if_full(&mut self.blobs)?;
        // The map is known here: once the batch is in, stats and reads of the file need not
        // read it back.
        batch.maps.push((blob, Arc::new(Piece::laid_out(w.map)?)));
        Ok(blob)
    }
}

/// How many staged blocks one append commits (a 1 GiB file of 64 KiB chunks in two).
const STAGED_APPEND_BLOCKS: usize = 8192;

/// A file's contents ready to join a drive ([`Drive::prepare_blob`]): its chunks, each with
/// its leaf hash, the index of a block the snapshot already had with those bytes, and the bytes
/// written to the block log for the others.
#[derive(Debug)]
pub struct PreparedBlob {
    chunks: Vec<PreparedChunk>,
    /// The chunks staged so far (a chunk the file repeats is staged once).
    staged: std::collections::HashSet<Hash>,
    /// The blobs core's fork and length in the snapshot the chunks were looked up in.
    seen: (u64, u64),
    /// The blobs core's key.
    core: CoreKey,
    /// Blocks the store held when staging are referenced until the commit (see `crate::gc`).
    _pin: crate::store::Pin,
}

#[derive(Debug, Clone, Copy)]
struct PreparedChunk {
    leaf: Hash,
    len: u64,
    known: Option<u64>,
    staged: Option<Staged>,
}

impl PreparedBlob {
    /// Looks up a hashed window's chunks in `blobs` and stages those it lacks (each distinct
    /// chunk once).
    fn add(&mut self, blobs: &Hypercore, window: &Window, hashed: Hashed, past_cache: bool) -> Result<()> {
        let chunks = window.chunks();
        let Hashed { leaves, mut forms } = hashed;
        let first = self.chunks.len();
        let (mut new, mut new_leaves, mut new_forms, mut at) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, (chunk, leaf)) in chunks.into_iter().zip(leaves).enumerate() {
            let known = blobs.find_block(&leaf)?;
            if known.is_none() && self.staged.insert(leaf) {
                new.push(chunk);
                new_leaves.push(leaf);
                new_forms.push(forms.get_mut(k).and_then(Option::take));
                at.push(first + k);
            }
            self.chunks.push(PreparedChunk { leaf, len: chunk.len() as u64, known, staged: None });
        }
        let staged =
            crate::hypercore::stage(&**blobs.store(), &new, 0, Some(&new_leaves), Some(&new_forms), past_cache)?;
        for (k, (_, staged)) in at.into_iter().zip(staged) {
            self.chunks[k].staged = staged;
        }
        Ok(())
    }
}

/// The chunks of one file being written: the blocks it is made of so far.
struct ChunkWriter {
    map: Vec<MapBlock>,
    reused: bool,
}

impl ChunkWriter {
    /// Gives each chunk of a hashed window its block: one the drive or the batch already has,
    /// else a new one copied into the batch's pending appends with its hash, so the log does
    /// not hash it again.
    fn resolve(&mut self, blobs: &mut Hypercore, batch: &mut BlobBatch, window: &Window, hashed: Hashed) -> Result<()> {
        for (chunk, leaf) in window.chunks().into_iter().zip(hashed.leaves) {
            let known = match batch.fresh.get(&leaf) {
                Some(&i) => Some(i),
                None => blobs.find_block(&leaf)?,
            };
            let index = match known {
                Some(i) => {
                    self.reused = true;
                    i
                }
                None => {
                    let i = batch.next_index(blobs);
                    batch.fresh.insert(leaf, i);
                    batch.push(blobs, chunk.to_vec(), leaf);
                    i
                }
            };
            self.map.push(MapBlock { index, byte_length: chunk.len() as u64 });
        }
        batch.commit_if_full(blobs)
    }
}

/// A stretch of a file read into one buffer, and where it is cut into chunks.
struct Window {
    buf: Vec<u8>,
    cuts: Vec<std::ops::Range<usize>>,
}

impl Window {
    fn chunks(&self) -> Vec<&[u8]> {
        self.cuts.iter().map(|r| &self.buf[r.clone()]).collect()
    }

    /// The leaf hashes of the chunks on every core (a share per core, each hashed several
    /// chunks at a time in the SIMD lanes); with a `store`, also the stored form of each chunk
    /// the store lacks (so compression runs beside the hashing, not after it).
    fn hash(&self, store: Option<&dyn Store>) -> Hashed {
        let chunks = self.chunks();
        let share = chunks.len().div_ceil(rayon::current_num_threads()).max(8);
        let shares: Vec<Hashed> = chunks
            .par_chunks(share)
            .map(|share| {
                let leaves = crate::crypto::leaf_hashes(share);
                let forms = match store {
                    None => Vec::new(),
                    Some(store) => share
                        .iter()
                        .zip(&leaves)
                        .map(|(c, l)| match store.contains(Table::Blocks, l) {
                            Ok(false) => stored::packed(c),
                            _ => None,
                        })
                        .collect(),
                };
                Hashed { leaves, forms }
            })
            .collect();
        let mut out = Hashed { leaves: Vec::with_capacity(chunks.len()), forms: Vec::new() };
        for s in shares {
            out.leaves.extend(s.leaves);
            out.forms.extend(s.forms);
        }
        out
    }
}

/// The leaf hashes of a window's chunks and, for a large file's, their stored forms
/// ([`stored::packed`]; `None` for raw, and for chunks the store had when they were hashed).
struct Hashed {
    leaves: Vec<Hash>,
    forms: Vec<Option<Vec<u8>>>,
}

/// A file's bytes read and cut into chunks, a window of about [`APPEND_BATCH_BYTES`] at a time.
struct ChunkFeed<R> {
    reader: R,
    chunker: Chunker,
    /// Bytes read but not yet cut into chunks (they open the next window).
    carry: Vec<u8>,
    /// The file offset of the next window's first byte.
    start: u64,
    /// Whether the reader is exhausted and every chunk handed out.
    done: bool,
}

impl<R: Read> ChunkFeed<R> {
    fn new(reader: R, preset: Preset) -> Self {
        ChunkFeed { reader, chunker: Chunker::new(preset), carry: Vec::new(), start: 0, done: false }
    }

    /// The next window, read into `buf` (a buffer given back, or a new empty one: a small file
    /// must not pay for a large one): chunks of at least [`APPEND_BATCH_BYTES`] unless the file
    /// ends first (then `done` is set).
    fn next_window(&mut self, mut buf: Vec<u8>) -> Result<Window> {
        buf.clear();
        buf.extend_from_slice(&self.carry);
        let mut cuts = Vec::new();
        let mut cut_to = 0usize;
        while !self.done && cut_to < APPEND_BATCH_BYTES {
            let before = buf.len();
            let n = (&mut self.reader)
                .take(READ_BYTES)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io("reading the file to store", e))?;
            let start = self.start;
            let mut cut = |c: hyperfs_chunker::Chunk| {
                let from = (c.offset - start) as usize;
                cuts.push(from..from + c.len);
                cut_to = from + c.len;
            };
            if n == 0 {
                if let Some(c) = self.chunker.finish() {
                    cut(c);
                }
                self.done = true;
            } else {
                self.chunker.push(&buf[before..], cut);
            }
        }
        self.carry.clear();
        self.carry.extend_from_slice(&buf[cut_to..]);
        buf.truncate(cut_to);
        self.start += cut_to as u64;
        Ok(Window { buf, cuts })
    }
}

/// New chunks of several files on their way to the blobs core, appended a few MiB at a time
/// (one signature per append, not per file). Blobs written into a batch may be named by entries
/// only after [`Drive::finish_blobs`]; nothing else may append to the drive's blobs core while
/// a batch has chunks pending (the drive checks).
#[derive(Debug, Default)]
pub struct BlobBatch {
    /// Chunks written through this batch: content → block index.
    pub(super) fresh: HashMap<Hash, u64>,
    pub(super) pending: Vec<Vec<u8>>,
    pub(super) leaves: Vec<Hash>,
    pub(super) pending_bytes: u64,
    /// The blobs core's length when the first pending chunk was added.
    pub(super) base: Option<u64>,
    /// The chunk offsets of the block maps written through this batch, cached once it is in.
    pub(super) maps: Vec<(Blob, Arc<Vec<Piece>>)>,
    /// Whether large files written through this batch go past the page cache.
    pub(super) past_cache: bool,
}

impl BlobBatch {
    pub fn new() -> BlobBatch {
        BlobBatch::default()
    }

    /// A batch whose large files (those of more than one write window) are written past the
    /// page cache where the store allows ([`Store::stage_streamed`]): for an import, whose bytes
    /// nothing reads soon. It keeps the user's working set in memory, and on the virtual
    /// machines measured it made a 1 GiB import two to three times faster: copying into fresh
    /// page-cache pages (ones the host had taken back) ran at 0.3–0.5 GB/s and took a core from
    /// the hashing, where the disk takes 1 GB/s and more straight from a reused buffer. Reads
    /// soon after then come from the disk.
    pub fn past_cache() -> BlobBatch {
        BlobBatch { past_cache: true, ..BlobBatch::default() }
    }

    /// Whether chunks wait to be appended.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn check(&self, blobs: &Hypercore) -> Result<()> {
        match self.base {
            Some(b) if b != blobs.length() => Err(Error::InvalidRequest(format!(
                "the blobs core grew from {b} to {} blocks beside a batch of pending chunks",
                blobs.length()
            ))),
            _ => Ok(()),
        }
    }

    fn next_index(&self, blobs: &Hypercore) -> u64 {
        blobs.length() + self.pending.len() as u64
    }

    fn next_byte(&self, blobs: &Hypercore) -> u64 {
        blobs.byte_length() + self.pending_bytes
    }

    fn push(&mut self, blobs: &Hypercore, chunk: Vec<u8>, leaf: Hash) {
        self.base.get_or_insert(blobs.length());
        self.pending_bytes += chunk.len() as u64;
        self.pending.push(chunk);
        self.leaves.push(leaf);
    }

    fn commit_if_full(&mut self, blobs: &mut Hypercore) -> Result<()> {
        if self.pending_bytes >= APPEND_BATCH_BYTES as u64 {
            self.commit(blobs)?;
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, blobs: &mut Hypercore) -> Result<()> {
        self.check(blobs)?;
        if !self.pending.is_empty() {
            blobs.append_batch_hashed(&self.pending, &self.leaves, None, false)?;
        }
        self.pending.clear();
        self.leaves.clear();
        self.pending_bytes = 0;
        self.base = None;
        Ok(())
    }
}
