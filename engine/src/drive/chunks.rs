//! Writing a file's contents: cut into chunks (CDC), hashed on every core, chunks the drive
//! already has reused, new ones appended to the blobs core in batches (`BlobBatch`).

use super::contents::Piece;
use super::*;

impl Drive {
    /// Chunks `reader` into `batch`: chunks this drive (or the batch) already has are reused,
    /// new ones join the batch's pending appends. Returns the file's blob.
    pub(super) fn write_chunks(&mut self, batch: &mut BlobBatch, reader: impl Read) -> Result<Blob> {
        batch.check(&self.blobs)?;
        let start_length = batch.next_index(&self.blobs);
        let start_bytes = batch.next_byte(&self.blobs);
        let mut w = ChunkWriter { map: Vec::new(), reused: false };
        let mut feed = ChunkFeed::new(reader, self.preset);
        let first = feed.next_window(Vec::new())?;
        if feed.done {
            // A file of one window (most files) is written here, without a second thread; its
            // new chunks join the batch (small files share appends).
            let hashes = first.hash(None);
            w.resolve(&mut self.blobs, batch, &first, hashes, false)?;
        } else {
            // A large file, in three stages: the next window is read and cut into chunks while
            // the one before it is hashed (on every core) and the one before that is looked up
            // and appended straight from its buffer, so the log's write overlaps the hashing.
            // The buffers go back and forth (no fresh memory per window).
            let (blobs, w, batch) = (&mut self.blobs, &mut w, &mut *batch);
            std::thread::scope(|s| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Window>(1);
                let (hashed, to_append) = std::sync::mpsc::sync_channel::<(Window, Hashed)>(1);
                let store = blobs.store().clone();
                let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
                s.spawn(move || {
                    for window in rx {
                        let hashes = window.hash(Some(&*store));
                        if hashed.send((window, hashes)).is_err() {
                            return; // the appender stopped
                        }
                    }
                });
                let worker = s.spawn(move || -> Result<()> {
                    for (window, hashes) in to_append {
                        w.resolve(blobs, batch, &window, hashes, true)?;
                        let _ = give_back.send(window.buf);
                    }
                    Ok(())
                });
                let fed = (|| -> Result<()> {
                    let mut next = first;
                    loop {
                        if tx.send(next).is_err() {
                            return Ok(()); // the appender stopped; its error is the one to report
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
        }
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

/// The chunks of one file being written: the blocks it is made of so far.
struct ChunkWriter {
    map: Vec<MapBlock>,
    reused: bool,
}

impl ChunkWriter {
    /// Gives each chunk of a hashed window its block: one the drive or the batch already has,
    /// else a new one. New chunks are appended straight from the window (`direct`: a large
    /// file's, after what the batch holds) or copied into the batch's pending appends; either
    /// way with their hashes, so the log does not hash them again.
    fn resolve(
        &mut self,
        blobs: &mut Hypercore,
        batch: &mut BlobBatch,
        window: &Window,
        hashed: Hashed,
        direct: bool,
    ) -> Result<()> {
        let chunks = window.chunks();
        let Hashed { leaves, mut forms } = hashed;
        if direct {
            batch.commit(blobs)?;
        }
        let (mut new, mut new_leaves, mut new_forms) = (Vec::new(), Vec::new(), Vec::new());
        for (k, (chunk, leaf)) in chunks.into_iter().zip(leaves).enumerate() {
            let known = match batch.fresh.get(&leaf) {
                Some(&i) => Some(i),
                None => blobs.find_block(&leaf)?,
            };
            let index = match known {
                Some(i) => {
                    self.reused = true;
                    i
                }
                None if direct => {
                    let i = blobs.length() + new.len() as u64;
                    batch.fresh.insert(leaf, i);
                    new.push(chunk);
                    new_leaves.push(leaf);
                    new_forms.push(forms.get_mut(k).and_then(Option::take));
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
        if !new.is_empty() {
            blobs.append_batch_hashed(&new, &new_leaves, Some(&new_forms), batch.past_cache)?;
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
