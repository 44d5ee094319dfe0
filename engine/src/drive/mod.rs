//! Drives: a Hyperdrive-13-compatible file tree (reference §8) whose file contents are
//! content-defined chunks, deduplicated within the drive.
//!
//! A drive is two cores signed by one key pair: the *db*, a Hyperbee whose keys are
//! `files\0/normalized/path` and whose values are Hyperdrive's JSON entries, and the *blobs* core,
//! one block per chunk. A file whose chunks are all new gets a plain contiguous `blob`; a file
//! that reuses chunks already in the blobs core gets a hyperblobs block map listing them, so an
//! identical file, a renamed one, or a new version of a big file costs only its new chunks.
//!
//! Does not know: FUSE, peers, the node. Blocks that are not local go through the [`Fetch`]
//! seam like the bee's.
//!
//! Invariant: a put appends its chunks to the blobs core before the db entry that points at
//! them, so a crash between the two leaves unreferenced chunks, never an entry without bytes.

pub mod entry;
pub mod keys;
pub mod path;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use hyperfs_chunker::{Chunker, Preset, HYPERFS_CDC_V1};

use crate::crypto::{Hash, KeyPair};
use crate::fetch::{self, Fetch};
use crate::hyperbee::{Hyperbee, Metadata, Range};
use crate::hypercore::Hypercore;
use crate::store::Store;
use crate::{Error, Result};
pub use entry::{Blob, Entry, MapBlock};

/// The sub-database of file entries, as Hyperdrive's SubEncoder writes it: `files` ‖ 00.
const FILES: &[u8] = b"files\0";

/// New chunks are appended to the blobs core in batches of about this many bytes, so a large
/// file is never held whole in memory.
const APPEND_BATCH_BYTES: usize = 8 << 20;

/// How a file is written.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub executable: bool,
    /// Any JSON (hyperfs keeps POSIX mode and times here); `None` writes `null` as JS does.
    pub metadata: Option<serde_json::Value>,
}

/// A file's entry and its size in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// The db block that wrote the entry.
    pub seq: u64,
    pub entry: Entry,
    pub size: u64,
}

/// One chunk of a file: blobs block `index` holds the file's bytes `start..start + len`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    index: u64,
    start: u64,
    len: u64,
}

/// A drive: its db bee and blobs core.
pub struct Drive {
    db: Hyperbee,
    blobs: Hypercore,
    preset: Preset,
    fetch: Option<Arc<dyn Fetch>>,
    /// Per-file chunk offsets, keyed by blob: random access without reading what comes before.
    pieces: Mutex<HashMap<Blob, Arc<Vec<Piece>>>>,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive").field("db", &self.db).field("blobs", &self.blobs).finish_non_exhaustive()
    }
}

impl Drive {
    /// Opens the writable drive of `key_pair`, creating its cores if this store has none.
    pub fn create(store: Arc<dyn Store>, key_pair: KeyPair) -> Result<Drive> {
        let db = Hypercore::create(store.clone(), key_pair.clone(), false)?;
        let manifest =
            db.manifest().cloned().ok_or_else(|| Error::InvalidRequest("a drive needs a manifest".into()))?;
        let blobs_manifest = keys::blobs_manifest(&manifest, db.key())
            .ok_or_else(|| Error::InvalidRequest("a drive's db core needs a v1 manifest".into()))?;
        let mut blobs = Hypercore::create_with_manifest(store, key_pair, blobs_manifest)?;
        blobs.set_index_blocks(true);
        Ok(Drive::assemble(Hyperbee::new(db).with_metadata(Metadata::default()), blobs))
    }

    /// Opens a drive this store holds (writable if it holds the secret key), or `None`.
    pub fn open(store: Arc<dyn Store>, key: &Hash) -> Result<Option<Drive>> {
        let Some(db) = Hypercore::open(store.clone(), key)? else { return Ok(None) };
        let db = Hyperbee::new(db).with_metadata(Metadata::default());
        let blobs_key = match db.header()?.and_then(|h| h.metadata).and_then(|m| m.content_feed) {
            Some(feed) => feed
                .get(..32)
                .and_then(|k| <Hash>::try_from(k).ok())
                .ok_or_else(|| Error::Verification("the drive header's content feed is not a key".into()))?,
            None => {
                let m = db.core().manifest().ok_or_else(|| Error::InvalidRequest("a drive needs a manifest".into()))?;
                keys::blobs_manifest(m, key)
                    .ok_or_else(|| Error::InvalidRequest("a drive's db core needs a v1 manifest".into()))?
                    .hash()
            }
        };
        let mut blobs = match Hypercore::open(store.clone(), &blobs_key)? {
            Some(b) => b,
            None => {
                let m = db.core().manifest().and_then(|m| keys::blobs_manifest(m, key));
                Hypercore::open_replica(store, blobs_key, m)?
            }
        };
        blobs.set_index_blocks(blobs.writable());
        Ok(Some(Drive::assemble(db, blobs)))
    }

    fn assemble(db: Hyperbee, blobs: Hypercore) -> Drive {
        Drive { db, blobs, preset: HYPERFS_CDC_V1, fetch: None, pieces: Mutex::new(HashMap::new()) }
    }

    /// Where blocks that are not local are asked for (both cores).
    pub fn with_fetch(mut self, fetch: Arc<dyn Fetch>) -> Self {
        self.db = self.db.with_fetch(fetch.clone());
        self.fetch = Some(fetch);
        self
    }

    pub fn key(&self) -> &Hash {
        self.db.core().key()
    }

    pub fn db(&self) -> &Hyperbee {
        &self.db
    }

    pub fn blobs(&self) -> &Hypercore {
        &self.blobs
    }

    pub fn writable(&self) -> bool {
        self.db.core().writable()
    }

    /// The drive's version: its db core's length.
    pub fn version(&self) -> u64 {
        self.db.version()
    }

    /// The chunker preset new writes use.
    pub fn preset(&self) -> &Preset {
        &self.preset
    }

    /// Writes `data` to `path`.
    pub fn put(&mut self, path: &str, data: &[u8], opts: &PutOptions) -> Result<()> {
        self.put_reader(path, data, opts)
    }

    /// Writes what `reader` yields to `path`, a few MiB at a time.
    pub fn put_reader(&mut self, path: &str, reader: impl Read, opts: &PutOptions) -> Result<()> {
        let path = path::file(path)?;
        let blob = self.write_chunks(reader)?;
        let entry =
            Entry { executable: opts.executable, linkname: None, blob: Some(blob), metadata: opts.metadata.clone() };
        self.db.put(&file_key(&path), &entry.encode())
    }

    /// Makes `path` a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str, metadata: Option<serde_json::Value>) -> Result<()> {
        let path = path::file(path)?;
        let entry = Entry { executable: false, linkname: Some(target.to_owned()), blob: None, metadata };
        self.db.put(&file_key(&path), &entry.encode())
    }

    /// Writes an entry as given (a metadata-only change keeps the blob it names).
    pub fn put_entry(&mut self, path: &str, entry: &Entry) -> Result<()> {
        let path = path::file(path)?;
        self.db.put(&file_key(&path), &entry.encode())
    }

    /// Removes `path`; returns whether it existed. Its chunks stay in the blobs core (older
    /// versions still read them).
    pub fn del(&mut self, path: &str) -> Result<bool> {
        let path = path::file(path)?;
        self.db.del(&file_key(&path))
    }

    /// The entry at `path` and the db block that wrote it.
    pub fn entry(&self, path: &str) -> Result<Option<(u64, Entry)>> {
        let path = path::file(path)?;
        match self.db.get(&file_key(&path))? {
            Some(e) => Ok(Some((e.seq, Entry::decode(&e.value)?))),
            None => Ok(None),
        }
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.entry(path)?.is_some())
    }

    /// The entry at `path` with the size of its file.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        let Some((seq, entry)) = self.entry(path)? else { return Ok(None) };
        let size = match &entry.blob {
            None => 0,
            Some(b) if !b.block_map => b.byte_length,
            Some(b) => self.pieces(b)?.last().map_or(0, |p| p.start + p.len),
        };
        Ok(Some(Stat { seq, entry, size }))
    }

    /// The whole content of the file at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(stat) = self.stat(path)? else { return Ok(None) };
        match &stat.entry.blob {
            None => Ok(Some(Vec::new())),
            Some(b) => self.read_blob(b, 0, stat.size).map(Some),
        }
    }

    /// Up to `len` bytes of the file at `path` from byte `offset` (fewer at its end).
    pub fn read(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let stat = self.stat(path)?.ok_or_else(|| Error::InvalidRequest(format!("no file at {path}")))?;
        match &stat.entry.blob {
            None => Ok(Vec::new()),
            Some(b) => self.read_blob(b, offset, len),
        }
    }

    /// Up to `len` bytes of a blob from `offset`, reading only the chunks that hold them.
    pub fn read_blob(&self, blob: &Blob, offset: u64, len: u64) -> Result<Vec<u8>> {
        let pieces = self.pieces(blob)?;
        let end = pieces.last().map_or(0, |p| p.start + p.len);
        let (offset, stop) = (offset.min(end), offset.saturating_add(len).min(end));
        let mut out = Vec::with_capacity((stop - offset) as usize);
        let first = pieces.partition_point(|p| p.start + p.len <= offset);
        for p in &pieces[first..] {
            if p.start >= stop {
                break;
            }
            let block = fetch::read_block(&self.blobs, self.fetch.as_deref(), p.index)?;
            if block.len() as u64 != p.len {
                return Err(Error::Verification(format!(
                    "blobs block {} has {} bytes where the file's map says {}",
                    p.index,
                    block.len(),
                    p.len
                )));
            }
            let from = offset.saturating_sub(p.start) as usize;
            let to = ((stop - p.start).min(p.len)) as usize;
            out.extend_from_slice(&block[from..to]);
        }
        Ok(out)
    }

    /// Every file and symlink under `folder`, recursively, in path order.
    pub fn list(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        let folder = path::folder(folder)?;
        let range = Range {
            lower: Bound::Excluded(file_key(&format!("{folder}/"))),
            upper: Bound::Excluded(file_key(&format!("{folder}0"))),
            ..Range::default()
        };
        let view = self.db.view();
        let mut out = Vec::new();
        for e in view.range(&range) {
            let e = e?;
            out.push((path_of(&e.key)?, Entry::decode(&e.value)?));
        }
        Ok(out)
    }

    /// The names directly inside `folder` (files and sub-folders), in order.
    pub fn readdir(&self, folder: &str) -> Result<Vec<String>> {
        let folder = path::folder(folder)?;
        let view = self.db.view();
        let mut names = Vec::new();
        let mut prev = String::from("/");
        loop {
            let range = Range {
                lower: Bound::Excluded(file_key(&format!("{folder}{prev}"))),
                upper: Bound::Excluded(file_key(&format!("{folder}0"))),
                limit: Some(1),
                ..Range::default()
            };
            let Some(e) = view.range(&range).next().transpose()? else { break };
            let path = path_of(&e.key)?;
            let suffix = path.get(folder.len() + 1..).unwrap_or_default();
            let (name, is_dir) = match suffix.find('/') {
                Some(i) => (&suffix[..i], true),
                None => (suffix, false),
            };
            prev = format!("/{name}{}", if is_dir { "0" } else { "" });
            if names.last().map(String::as_str) != Some(name) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Chunks `reader`, appends the chunks this drive does not have yet, and returns the blob.
    fn write_chunks(&mut self, mut reader: impl Read) -> Result<Blob> {
        let start_length = self.blobs.length();
        let start_bytes = self.blobs.byte_length();
        let mut chunker = Chunker::new(self.preset);
        let mut w = ChunkWriter {
            map: Vec::new(),
            reused: false,
            fresh: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
        };
        let mut buf: Vec<u8> = Vec::with_capacity(APPEND_BATCH_BYTES);
        let mut buf_start = 0u64;
        let mut read_buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut read_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Storage(format!("reading the file to store: {e}"))),
            };
            let mut cuts = Vec::new();
            if n == 0 {
                cuts.extend(chunker.finish());
            } else {
                buf.extend_from_slice(&read_buf[..n]);
                chunker.push(&read_buf[..n], |c| cuts.push(c));
            }
            let mut consumed = 0usize;
            for c in cuts {
                let from = (c.offset - buf_start) as usize;
                w.add(&mut self.blobs, &buf[from..from + c.len])?;
                consumed = from + c.len;
            }
            buf.drain(..consumed);
            buf_start += consumed as u64;
            if n == 0 {
                break;
            }
        }
        w.flush(&mut self.blobs)?;
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
        let (map_start, map_bytes) = (self.blobs.length(), self.blobs.byte_length());
        self.blobs.append_batch(&parts)?;
        Ok(Blob {
            block_offset: map_start,
            byte_offset: map_bytes,
            block_length: parts.len() as u64,
            byte_length: self.blobs.byte_length() - map_bytes,
            block_map: true,
        })
    }

    /// The chunks of a blob with their offsets in the file (cached).
    fn pieces(&self, blob: &Blob) -> Result<Arc<Vec<Piece>>> {
        if let Some(p) = self.pieces.lock().unwrap_or_else(|e| e.into_inner()).get(blob) {
            return Ok(p.clone());
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
        let mut pieces = Vec::new();
        let mut start = 0u64;
        if blob.block_map {
            if blob.block_length > entry::MAX_MAP_BLOCKS {
                return Err(Error::InvalidRequest("a block map larger than Hyperdrive reads".into()));
            }
            let parts = (blob.block_offset..end)
                .map(|i| fetch::read_block(&self.blobs, self.fetch.as_deref(), i))
                .collect::<Result<Vec<_>>>()?;
            for m in entry::decode_block_map(&parts)? {
                pieces.push(Piece { index: m.index, start, len: m.byte_length });
                start += m.byte_length;
            }
        } else {
            for index in blob.block_offset..end {
                let len = self.blobs.node(2 * index)?.ok_or(Error::MissingNode { index: 2 * index })?.size;
                pieces.push(Piece { index, start, len });
                start += len;
            }
        }
        let pieces = Arc::new(pieces);
        let mut cache = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 4096 {
            cache.clear();
        }
        cache.insert(*blob, pieces.clone());
        Ok(pieces)
    }
}

/// The chunks of one file being written: which blocks it is made of, and the new chunks not yet
/// appended.
struct ChunkWriter {
    map: Vec<MapBlock>,
    reused: bool,
    /// New chunks of this file: content → the index they got.
    fresh: HashMap<Hash, u64>,
    pending: Vec<Vec<u8>>,
    pending_bytes: usize,
}

impl ChunkWriter {
    fn add(&mut self, blobs: &mut Hypercore, chunk: &[u8]) -> Result<()> {
        let leaf = crate::crypto::leaf_hash(chunk);
        let known = match self.fresh.get(&leaf) {
            Some(&i) => Some(i),
            None => blobs.find_block(&leaf)?,
        };
        let index = match known {
            Some(i) => {
                self.reused = true;
                i
            }
            None => {
                let i = blobs.length() + self.pending.len() as u64;
                self.fresh.insert(leaf, i);
                self.pending.push(chunk.to_vec());
                self.pending_bytes += chunk.len();
                if self.pending_bytes >= APPEND_BATCH_BYTES {
                    self.flush(blobs)?;
                }
                i
            }
        };
        self.map.push(MapBlock { index, byte_length: chunk.len() as u64 });
        Ok(())
    }

    fn flush(&mut self, blobs: &mut Hypercore) -> Result<()> {
        if !self.pending.is_empty() {
            blobs.append_batch(&self.pending)?;
            self.pending.clear();
            self.pending_bytes = 0;
        }
        Ok(())
    }
}

/// The db key of a normalised path.
fn file_key(path: &str) -> Vec<u8> {
    let mut k = FILES.to_vec();
    k.extend_from_slice(path.as_bytes());
    k
}

/// The path of a db key inside the files sub-database.
fn path_of(key: &[u8]) -> Result<String> {
    let p = key.strip_prefix(FILES).unwrap_or(key);
    String::from_utf8(p.to_vec())
        .map_err(|_| Error::Decode { what: "drive path", source: crate::encoding::DecodeError::Invalid("UTF-8") })
}
