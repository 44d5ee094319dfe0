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
pub mod meta;
pub mod path;
pub mod shared;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use hyperfs_chunker::{Chunker, Preset, HYPERFS_CDC_V1};
use rayon::prelude::*;

use crate::crypto::{Hash, KeyPair};
use crate::fetch::{self, Blocks, Fetch};
use crate::hyperbee::{Hyperbee, Metadata, Range, View};
use crate::hypercore::{stored, Hypercore, Snapshot};
use crate::store::{Store, Table};
use crate::{Error, Result};
pub use entry::{Blob, Entry, MapBlock};
pub use meta::Meta;
pub use shared::{SharedDrive, Writing};

/// The sub-database of file entries, as Hyperdrive's SubEncoder writes it: `files` ‖ 00.
const FILES: &[u8] = b"files\0";

/// Empty directories live outside `files`, so JS drives neither list nor mind them.
const DIRS: &[u8] = b"dirs\0";

/// New chunks are appended to the blobs core in batches of about this many bytes, so a large
/// file is never held whole in memory.
const APPEND_BATCH_BYTES: usize = 8 << 20;

/// A put reads its input this many bytes at a time.
const READ_BYTES: u64 = 1 << 20;

/// Large reads fetch this many chunks at a time, in parallel.
const READ_WINDOW_BLOCKS: usize = 64;
/// Reads at least this long are taken for a sequential reader's window, and the blocks after
/// them are asked for ahead ([`Fetch::hint`]); the kernel's own reads are at most 128 KiB.
const HINT_FROM: u64 = 256 << 10;

/// One change of an atomic [`Drive::apply`].
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Writes a file or symlink entry.
    Put(&'a str, &'a Entry),
    /// Removes a file or symlink entry.
    Del(&'a str),
    /// Records a directory (with its attributes in the entry's metadata).
    Mkdir(&'a str, &'a Entry),
    /// Forgets a directory record.
    Rmdir(&'a str),
    /// Moves a file, symlink or directory with everything under it (see [`Drive::rename`]).
    Rename(&'a str, &'a str),
}

/// One name inside a folder.
#[derive(Debug, Clone)]
pub struct Child {
    pub name: String,
    /// The file or symlink entry; `None` for a folder.
    pub entry: Option<Entry>,
}

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

/// One operation of a drive's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The db block that made it.
    pub seq: u64,
    /// The first version that shows it: `seq + 1`, or the end of the atomic change it was
    /// part of.
    pub version: u64,
    pub path: String,
    /// The entry written, or `None` for a deletion.
    pub entry: Option<Entry>,
}

/// How a path differs between two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffKind {
    Added,
    Changed,
    Removed,
}

/// One path that differs between two versions: its entry in the older and the newer one.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub path: String,
    pub kind: DiffKind,
    pub old: Option<Entry>,
    pub new: Option<Entry>,
}

/// One chunk of a file: blobs block `index` holds the file's bytes `start..start + len`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    index: u64,
    start: u64,
    len: u64,
}

impl Piece {
    /// A file's chunks laid end to end from its start; a file over 2^64 bytes is malformed
    /// (the sum wrapped in release builds, and a read then split its buffer where it had none).
    fn laid_out(blocks: impl IntoIterator<Item = MapBlock>) -> Result<Vec<Piece>> {
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

/// One db record a move rewrites: old key, new key, value.
type Move = (Vec<u8>, Vec<u8>, Vec<u8>);

/// A drive: its db bee and blobs core.
pub struct Drive {
    db: Hyperbee,
    blobs: Hypercore,
    preset: Preset,
    fetch: Option<Arc<dyn Fetch>>,
    /// Per-file chunk offsets, keyed by blob: random access without reading what comes before.
    /// Shared with the drive's frozen copies (a blob's offsets never change).
    pieces: Arc<Mutex<PieceCache>>,
}

/// The chunk offsets of recently used blobs, up to [`PIECE_CACHE_PIECES`] pieces in all (then it
/// starts again empty). A block map is read once, not at every stat of its file (a listing of
/// many deduplicated files stats each).
#[derive(Default)]
struct PieceCache {
    map: HashMap<Blob, Arc<Vec<Piece>>>,
    pieces: usize,
}

/// About 24 MiB of offsets.
const PIECE_CACHE_PIECES: usize = 1 << 20;

impl PieceCache {
    fn get(&self, blob: &Blob) -> Option<Arc<Vec<Piece>>> {
        self.map.get(blob).cloned()
    }

    fn insert(&mut self, blob: Blob, pieces: Arc<Vec<Piece>>) {
        let n = pieces.len().max(1);
        if self.pieces + n > PIECE_CACHE_PIECES {
            self.clear();
        }
        if let Some(old) = self.map.insert(blob, pieces) {
            self.pieces -= old.len().max(1);
        }
        self.pieces += n;
    }

    fn clear(&mut self) {
        *self = PieceCache::default();
    }
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
        let mut blobs = Hypercore::create_with_manifest(store, key_pair, blobs_manifest_for(&db)?)?;
        blobs.set_index_blocks(true);
        Ok(Drive::assemble(Hyperbee::new(db).with_metadata(Metadata::default()), blobs))
    }

    /// Opens a drive this store holds (writable if it holds the secret key), or `None`.
    pub fn open(store: Arc<dyn Store>, key: &Hash) -> Result<Option<Drive>> {
        Drive::open_with(store, key, None)
    }

    /// [`Drive::open`] for a replica whose blocks not stored locally come through `fetch`.
    pub fn open_with(store: Arc<dyn Store>, key: &Hash, fetch: Option<Arc<dyn Fetch>>) -> Result<Option<Drive>> {
        let Some(db) = Hypercore::open(store.clone(), key)? else { return Ok(None) };
        let mut db = Hyperbee::new(db).with_metadata(Metadata::default());
        if let Some(f) = &fetch {
            db = db.with_fetch(f.clone());
        }
        // A header naming a content feed wins (older and compat drives); Hyperdrive 13 writes
        // none, so a replica that has not got the header yet derives the key the same way.
        let header = match db.header() {
            Err(Error::MissingBlock { .. }) => None,
            other => other?,
        };
        // A header's content feed is the writer's word: it must be the key Hyperdrive derives
        // from the db where one is derived, or it could name any core of this store (a drive of
        // the user's own, which the replica would then serve to every peer).
        let derived = blobs_manifest_for(db.core()).ok().map(|m| m.hash());
        let blobs_key = match header.and_then(|h| h.metadata).and_then(|m| m.content_feed) {
            Some(feed) => {
                let feed = feed
                    .get(..32)
                    .and_then(|k| <Hash>::try_from(k).ok())
                    .ok_or_else(|| Error::Verification("the drive header's content feed is not a key".into()))?;
                match derived {
                    Some(d) if d != feed => {
                        return Err(Error::Verification(
                            "the drive header's content feed is not the blobs core derived from its db".into(),
                        ))
                    }
                    _ => feed,
                }
            }
            None => derived.ok_or_else(|| Error::InvalidRequest("a drive's db core needs a v1 manifest".into()))?,
        };
        if derived.is_none() && !db.core().writable() {
            // A compat-era drive names its content core freely: never one this store writes.
            if Hypercore::open(store.clone(), &blobs_key)?.is_some_and(|b| b.writable()) {
                return Err(Error::Verification("the drive header names a core this node writes".into()));
            }
        }
        let mut blobs = match Hypercore::open(store.clone(), &blobs_key)? {
            Some(b) => b,
            None => {
                // The derived manifest proves the blobs key only when the key was derived.
                let m = blobs_manifest_for(db.core()).ok().filter(|m| m.hash() == blobs_key);
                Hypercore::open_replica(store, blobs_key, m)?
            }
        };
        blobs.set_index_blocks(blobs.writable());
        let mut drive = Drive::assemble(db, blobs);
        drive.fetch = fetch;
        Ok(Some(drive))
    }

    fn assemble(db: Hyperbee, blobs: Hypercore) -> Drive {
        Drive { db, blobs, preset: HYPERFS_CDC_V1, fetch: None, pieces: Arc::default() }
    }

    /// A read-only copy of the drive as it is now: reads of it never wait on, and never see,
    /// later changes to this one (a published [`snapshot`](crate::drive::SharedDrive::snapshot)).
    /// Every change through it fails with [`Error::NotWritable`].
    pub fn frozen_copy(&self) -> Drive {
        Drive {
            db: self.db.frozen_copy(),
            blobs: self.blobs.frozen_copy(),
            preset: self.preset,
            fetch: self.fetch.clone(),
            pieces: self.pieces.clone(),
        }
    }

    /// The db bee itself: keys and values go in as given, past every rule of paths and entries
    /// — how other software may write a drive. For tools and tests that build such drives.
    pub fn db_mut(&mut self) -> &mut Hyperbee {
        &mut self.db
    }

    /// The db core, for the network layer to serve a writer's drive from (a replica's proofs
    /// go to the network layer's own instance; see [`Drive::refresh`]). Appending to it
    /// directly bypasses the drive's rules.
    pub fn db_core_mut(&mut self) -> &mut Hypercore {
        self.db.core_mut()
    }

    /// The blobs core, for the network layer (see [`Drive::db_core_mut`]).
    pub fn blobs_mut(&mut self) -> &mut Hypercore {
        &mut self.blobs
    }

    /// Takes in what another instance of this drive's cores on the same store committed (a
    /// replica's proofs, applied by the network layer): new versions, forks, local blocks.
    /// Returns whether anything changed.
    pub fn refresh(&mut self) -> Result<bool> {
        let fork = (self.db.core().fork(), self.blobs.fork());
        let changed = self.db.core_mut().refresh()? | self.blobs.refresh()?;
        if fork != (self.db.core().fork(), self.blobs.fork()) {
            self.pieces.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok(changed)
    }

    /// How this drive gets blocks it does not hold (a replica's network), if it has a way.
    pub fn fetcher(&self) -> Option<Arc<dyn Fetch>> {
        self.fetch.clone()
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
        let blob = self.write_blob(reader)?;
        let entry =
            Entry { executable: opts.executable, linkname: None, blob: Some(blob), metadata: opts.metadata.clone() };
        self.db.put(&key_in(FILES, &path), &entry.encode())
    }

    /// Makes `path` a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str, metadata: Option<serde_json::Value>) -> Result<()> {
        let entry = Entry { executable: false, linkname: Some(target.to_owned()), blob: None, metadata };
        self.put_entry(path, &entry)
    }

    /// Applies several changes as one new version (one db batch): all of them or none.
    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<()> {
        // An entry never names bytes the blobs core does not hold yet (a batch not finished).
        for op in ops {
            if let Op::Put(p, Entry { blob: Some(b), .. }) = *op {
                if b.block_offset.saturating_add(b.block_length) > self.blobs.length() {
                    return Err(Error::InvalidRequest(format!(
                        "the entry of {p} names blobs blocks {}..{} of {} written",
                        b.block_offset,
                        b.block_offset.saturating_add(b.block_length),
                        self.blobs.length()
                    )));
                }
            }
        }
        // Moves read the tree as it is before the batch.
        let mut moves = Vec::new();
        for op in ops {
            if let Op::Rename(from, to) = *op {
                let (from, to) = (path::file(from)?, path::file(to)?);
                moves.push(if from == to { Vec::new() } else { self.moves(&from, &to)? });
            }
        }
        let mut moves = moves.into_iter();
        let mut b = self.db.batch();
        for op in ops {
            match *op {
                Op::Put(p, e) => b.put(&key_in(FILES, &path::file(p)?), &e.encode())?,
                Op::Del(p) => {
                    b.del(&key_in(FILES, &path::file(p)?))?;
                }
                Op::Mkdir(p, e) => b.put(&dir_key(p)?, &e.encode())?,
                Op::Rmdir(p) => {
                    b.del(&dir_key(p)?)?;
                }
                Op::Rename(..) => {
                    for (old, new, value) in moves.next().unwrap_or_default() {
                        b.put(&new, &value)?;
                        b.del(&old)?;
                    }
                }
            }
        }
        b.flush()
    }

    /// Makes everything written so far durable (the store's log is synced).
    pub fn flush(&self) -> Result<()> {
        self.db.core().store().flush()
    }

    /// Chunks what `reader` yields into the blobs core (only chunks this drive lacks are
    /// appended) and returns the blob, for an entry written later by [`Drive::apply`].
    pub fn write_blob(&mut self, reader: impl Read) -> Result<Blob> {
        let mut batch = BlobBatch::new();
        let blob = self.write_chunks(&mut batch, reader)?;
        self.finish_blobs(&mut batch)?;
        Ok(blob)
    }

    /// Like [`Drive::write_blob`], but the new chunks join `batch` and reach the blobs core
    /// with the batch's other files, a few MiB per signed append; entries may name the blob
    /// once [`Drive::finish_blobs`] has run. Many small files are written far faster this way.
    pub fn write_blob_into(&mut self, batch: &mut BlobBatch, reader: impl Read) -> Result<Blob> {
        self.write_chunks(batch, reader)
    }

    /// Appends what `batch` still holds to the blobs core.
    pub fn finish_blobs(&mut self, batch: &mut BlobBatch) -> Result<()> {
        let committed = batch.commit(&mut self.blobs);
        let maps = std::mem::take(&mut batch.maps);
        committed?;
        batch.fresh.clear();
        let mut cache = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
        for (blob, pieces) in maps {
            cache.insert(blob, pieces);
        }
        Ok(())
    }

    /// Writes an entry as given (a metadata-only change keeps the blob it names).
    pub fn put_entry(&mut self, path: &str, entry: &Entry) -> Result<()> {
        self.apply(&[Op::Put(path, entry)])
    }

    /// Removes `path`; returns whether it existed. Its chunks stay in the blobs core (older
    /// versions still read them).
    pub fn del(&mut self, path: &str) -> Result<bool> {
        let path = path::file(path)?;
        self.db.del(&key_in(FILES, &path))
    }

    /// Reads of the current version.
    pub fn view(&self) -> DriveView<'_, &Hypercore> {
        DriveView { db: self.db.view(), drive: self }
    }

    /// Reads of the drive as it was at `version`.
    pub fn checkout(&self, version: u64) -> Result<DriveView<'_, Snapshot>> {
        Ok(DriveView { db: self.db.checkout(version)?, drive: self })
    }

    /// Records an empty directory at `path` (with its attributes), kept where JS does not look.
    pub fn mkdir(&mut self, path: &str, metadata: Option<serde_json::Value>) -> Result<()> {
        path::file(path)?;
        let entry = Entry { executable: false, linkname: None, blob: None, metadata };
        self.apply(&[Op::Mkdir(path, &entry)])
    }

    /// Forgets the empty-directory record at `path`; returns whether there was one.
    pub fn rmdir(&mut self, path: &str) -> Result<bool> {
        let path = path::file(path)?;
        self.db.del(&key_in(DIRS, &path))
    }

    /// Moves a file, symlink or directory (with everything under it) in one version. A file at
    /// `to` is replaced.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.apply(&[Op::Rename(from, to)])
    }

    /// The db records a move of `from` to `to` rewrites: (old key, new key, value).
    fn moves(&self, from: &str, to: &str) -> Result<Vec<Move>> {
        let view = self.db.view();
        let mut moves = Vec::new();
        if let Some(e) = view.get(&key_in(FILES, from))? {
            moves.push((key_in(FILES, from), key_in(FILES, to), e.value));
            return Ok(moves);
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::InvalidRequest(format!("cannot move {from} into itself ({to})")));
        }
        for prefix in [FILES, DIRS] {
            if let Some(e) = view.get(&key_in(prefix, from))? {
                moves.push((key_in(prefix, from), key_in(prefix, to), e.value));
            }
            for e in view.range(&under(prefix, from, "/")) {
                let e = e?;
                let mut new_key = key_in(prefix, to);
                new_key.extend_from_slice(&e.key[prefix.len() + from.len()..]);
                moves.push((e.key, new_key, e.value));
            }
        }
        if moves.is_empty() {
            return Err(Error::InvalidRequest(format!("nothing at {from} to move")));
        }
        Ok(moves)
    }

    /// The operations on files, oldest first, from version `since` (0: all).
    pub fn history(&self, since: u64) -> Result<Vec<Change>> {
        let h = crate::hyperbee::HistoryRange { gte: Some(since.max(1) as i64), ..Default::default() };
        let spans = self.db.core().atomic_spans()?;
        let mut out = Vec::new();
        for e in self.db.view().history(&h) {
            let e = e?;
            let Some(p) = e.entry.key.strip_prefix(FILES) else { continue };
            let path = String::from_utf8_lossy(p).into_owned();
            let entry = if e.deletion { None } else { Some(Entry::decode(&e.entry.value)?) };
            let after = e.entry.seq + 1;
            // A change of an atomic batch becomes visible with the batch's last block.
            let i = spans.partition_point(|&(_, end)| end < after);
            let version = match spans.get(i) {
                Some(&(start, end)) if start < after && after < end => end,
                _ => after,
            };
            out.push(Change { seq: e.entry.seq, version, path, entry });
        }
        Ok(out)
    }

    /// The files added, changed and removed from version `old` to version `new`, in path order.
    pub fn diff(&self, old: u64, new: u64) -> Result<Vec<Difference>> {
        let range = under(FILES, "", "/");
        let (new_view, old_view) = (self.db.checkout(new)?, self.db.checkout(old)?);
        let mut out = Vec::new();
        for d in new_view.diff(&old_view, &range)? {
            let key = d.left.as_ref().or(d.right.as_ref()).map(|e| e.key.clone()).unwrap_or_default();
            let entry = |e: Option<crate::hyperbee::Entry>| e.map(|e| Entry::decode(&e.value)).transpose();
            let (new_entry, old_entry) = (entry(d.left)?, entry(d.right)?);
            let kind = match (&old_entry, &new_entry) {
                (None, _) => DiffKind::Added,
                (_, None) => DiffKind::Removed,
                _ => DiffKind::Changed,
            };
            out.push(Difference { path: path_of(FILES, &key)?, kind, old: old_entry, new: new_entry });
        }
        Ok(out)
    }

    /// Truncates the drive back to `version`: the db to that length, then the blobs core to the
    /// chunks versions up to it reference (db first, so no entry ever points past the blobs).
    pub fn truncate(&mut self, version: u64) -> Result<()> {
        if version > self.version() {
            return Err(Error::OutOfBounds(format!("version {version} of a drive at version {}", self.version())));
        }
        if version >= self.db.core().length() {
            return Ok(());
        }
        if let Some((start, end)) = self.db.core().atomic_span(version)? {
            return Err(Error::InvalidRequest(format!(
                "version {version} falls inside one atomic change (versions {start} to {end})"
            )));
        }
        // Every version up to `version` stays readable, so the blobs keep every chunk any entry
        // written before it references. A block map is always appended after the chunks it
        // lists (by hyperfs and by hyperblobs), so the end of the map covers them.
        let mut needed = 0u64;
        let h = crate::hyperbee::HistoryRange { lt: Some(version as i64), ..Default::default() };
        for e in self.db.view().history(&h) {
            let e = e?;
            if e.deletion || !e.entry.key.starts_with(FILES) {
                continue;
            }
            if let Some(b) = Entry::decode(&e.entry.value)?.blob {
                needed = needed.max(b.block_offset + b.block_length);
            }
        }
        self.db.truncate(version)?;
        if needed < self.blobs.length() {
            self.blobs.truncate(needed)?;
        }
        self.pieces.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// After a power cut took blocks of this (writable) drive — `db_lost` and `blobs_lost`,
    /// the first lost block of each core — rolls back to the latest version whose db blocks
    /// and every blob its entries reference are intact, on a new fork; the blobs are cut where
    /// their first block was lost. Returns the versions before and after, `None` when nothing
    /// had to go.
    pub fn roll_back_to_intact(&mut self, db_lost: Option<u64>, blobs_lost: Option<u64>) -> Result<Option<(u64, u64)>> {
        let from = self.version();
        let mut version = db_lost.unwrap_or(from).min(from);
        if let Some(b) = blobs_lost {
            // The first change whose blob reaches a lost block goes, with all after it.
            let h = crate::hyperbee::HistoryRange { lt: Some(version as i64), ..Default::default() };
            for e in self.db.view().history(&h) {
                let e = e?;
                if e.deletion || !e.entry.key.starts_with(FILES) {
                    continue;
                }
                if Entry::decode(&e.entry.value)?.blob.is_some_and(|blob| blob.block_offset + blob.block_length > b) {
                    version = e.entry.seq;
                    break;
                }
            }
        }
        // A version inside an atomic change is none: back to its start.
        while let Some((start, _)) = self.db.core().atomic_span(version)? {
            if start >= version {
                break;
            }
            version = start;
        }
        let cut_blobs_at = blobs_lost.filter(|&b| b < self.blobs.length());
        if version >= from && cut_blobs_at.is_none() {
            return Ok(None);
        }
        if version < from {
            self.truncate(version)?;
        }
        // The truncation may have cut the blobs there or below already.
        if let Some(b) = cut_blobs_at.filter(|&b| b < self.blobs.length()) {
            self.blobs.truncate(b)?;
        }
        Ok(Some((from, self.version())))
    }

    /// The entry at `path` and the db block that wrote it.
    pub fn entry(&self, path: &str) -> Result<Option<(u64, Entry)>> {
        self.view().entry(path)
    }

    pub fn exists(&self, path: &str) -> Result<bool> {
        self.view().exists(path)
    }

    /// The entry at `path` with the size of its file.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        self.view().stat(path)
    }

    /// The whole content of the file at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.view().get(path)
    }

    /// Up to `len` bytes of the file at `path` from byte `offset` (fewer at its end).
    pub fn read(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.view().read(path, offset, len)
    }

    /// Every file and symlink under `folder`, recursively, in path order.
    pub fn list(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        self.view().list(folder)
    }

    /// The names directly inside `folder` (files, folders, empty folders).
    pub fn readdir(&self, folder: &str) -> Result<Vec<String>> {
        self.view().readdir(folder)
    }

    /// Whether `path` is a directory of the current version.
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        self.view().is_dir(path)
    }

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
                let bytes = self.read_plain_by_seek(blob, offset, len)?;
                out[..bytes.len()].copy_from_slice(&bytes);
                return Ok(bytes.len());
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
        if let (Some(f), Some(_)) = (&self.fetch, fetch::current()) {
            // A read that defers its network waits asks for every window's missing blocks now:
            // its next run then finds them all, rather than one window more per run.
            let missing: Vec<u64> = wanted.iter().map(|p| p.index).filter(|&i| !self.blobs.has(i)).collect();
            if !missing.is_empty() {
                f.prefetch(self.blobs.key(), &missing);
            }
        }
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
            // The reads on other threads defer network waits as this one does.
            let deferral = fetch::current();
            let read = |(p, from, dest): (&Piece, usize, &mut [u8])| -> Result<()> {
                fetch::within(deferral.clone(), || {
                    if from == 0 && dest.len() as u64 == p.len {
                        return fetch::read_block_into(&self.blobs, self.fetch.as_deref(), p.index, dest);
                    }
                    fetch::read_block_part(&self.blobs, self.fetch.as_deref(), p.index, p.len, from, dest)
                })
            };
            if jobs.len() > 1 {
                jobs.into_par_iter().try_for_each(read)?;
            } else {
                jobs.into_iter().try_for_each(read)?;
            }
        }
        Ok((stop - offset) as usize)
    }

    /// Reads a plain blob from the block holding `offset`, located through the fetcher's seek.
    fn read_plain_by_seek(&self, blob: &Blob, offset: u64, len: u64) -> Result<Vec<u8>> {
        let offset = offset.min(blob.byte_length);
        let mut remaining = len.min(blob.byte_length - offset) as usize;
        let mut out = Vec::with_capacity(remaining);
        if remaining == 0 {
            return Ok(out);
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
            let span = (remaining as u64 + skip as u64).div_ceil(mean).min(READ_WINDOW_BLOCKS as u64);
            let missing: Vec<u64> = (index..end.min(index + span)).filter(|&i| !self.blobs.has(i)).collect();
            if missing.len() > 1 {
                f.prefetch(self.blobs.key(), &missing);
            }
            // A long read is a sequential reader's window: the next as many blocks are asked
            // for now, so they travel while this range is used. (Short reads are random ones:
            // they fetch only what they read.)
            if len >= HINT_FROM && span > 1 {
                let next: Vec<u64> =
                    (index + span..end.min(index + 2 * span)).filter(|&i| !self.blobs.has(i)).collect();
                f.hint(self.blobs.key(), &next);
            }
        }
        while remaining > 0 && index < end {
            let block = fetch::read_block(&self.blobs, self.fetch.as_deref(), index)?;
            let take = block.len().saturating_sub(skip).min(remaining);
            out.extend_from_slice(&block[skip.min(block.len())..skip.min(block.len()) + take]);
            remaining -= take;
            skip = 0;
            index += 1;
        }
        Ok(out)
    }

    /// Chunks `reader` into `batch`: chunks this drive (or the batch) already has are reused,
    /// new ones join the batch's pending appends. Returns the file's blob.
    fn write_chunks(&mut self, batch: &mut BlobBatch, reader: impl Read) -> Result<Blob> {
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

    /// The chunks of a blob with their offsets in the file (cached).
    fn pieces(&self, blob: &Blob) -> Result<Arc<Vec<Piece>>> {
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
            (blob.block_offset..end)
                .map(|index| {
                    let node = self.blobs.node(2 * index)?.ok_or(Error::MissingNode { index: 2 * index })?;
                    Ok(MapBlock { index, byte_length: node.size })
                })
                .collect::<Result<_>>()?
        };
        let pieces = Arc::new(Piece::laid_out(blocks)?);
        self.pieces.lock().unwrap_or_else(|e| e.into_inner()).insert(*blob, pieces.clone());
        Ok(pieces)
    }
}

/// Reads of one version of a drive: the current one ([`Drive::view`]) or a past one
/// ([`Drive::checkout`]). Contents are read from the drive's blobs core, which only grows.
pub struct DriveView<'a, B: Blocks> {
    db: View<B>,
    drive: &'a Drive,
}

impl<B: Blocks> DriveView<'_, B> {
    /// The version this view reads.
    pub fn version(&self) -> u64 {
        self.db.version()
    }

    /// The entry at `path` and the db block that wrote it.
    pub fn entry(&self, path: &str) -> Result<Option<(u64, Entry)>> {
        let path = path::file(path)?;
        match self.db.get(&key_in(FILES, &path))? {
            Some(e) => Ok(Some((e.seq, Entry::decode(&e.value)?))),
            None => Ok(None),
        }
    }

    /// Whether a file or symlink entry is stored at `path` (read, not decoded: a damaged entry
    /// still exists, and can be removed).
    pub fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.db.get(&key_in(FILES, &path::file(path)?))?.is_some())
    }

    /// The entry at `path` with the size of its file.
    pub fn stat(&self, path: &str) -> Result<Option<Stat>> {
        let Some((seq, entry)) = self.entry(path)? else { return Ok(None) };
        let size = match &entry.blob {
            None => 0,
            Some(b) => self.drive.blob_size(b)?,
        };
        Ok(Some(Stat { seq, entry, size }))
    }

    /// The whole content of the file at `path`.
    pub fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(stat) = self.stat(path)? else { return Ok(None) };
        match &stat.entry.blob {
            None => Ok(Some(Vec::new())),
            Some(b) => self.drive.read_blob(b, 0, stat.size).map(Some),
        }
    }

    /// Up to `len` bytes of the file at `path` from byte `offset` (fewer at its end).
    pub fn read(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let stat = self.stat(path)?.ok_or_else(|| Error::InvalidRequest(format!("no file at {path}")))?;
        match &stat.entry.blob {
            None => Ok(Vec::new()),
            Some(b) => self.drive.read_blob(b, offset, len),
        }
    }

    /// Every file and symlink under `folder`, recursively, in path order. Entries whose stored
    /// path is not a plain one ([`path::check_stored`]) are left out; [`DriveView::walk`] says why.
    pub fn list(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        self.stored(FILES, folder, |_, _| ())
    }

    /// Every directory record under `folder`, recursively, in path order (not `folder`'s own:
    /// see [`DriveView::dir_entry`]), invalid paths left out as by [`DriveView::list`].
    pub fn list_dirs(&self, folder: &str) -> Result<Vec<(String, Entry)>> {
        self.stored(DIRS, folder, |_, _| ())
    }

    /// Everything under `folder` that can be laid out as a tree of files: directory records and
    /// file and symlink entries, in path order, and what cannot — a path that is not a plain one
    /// ([`path::check_stored`]), an entry that does not decode, an entry or record below a file
    /// or symlink entry (following a link entry to write below it would write wherever it
    /// points) — each with the reason. Nothing rejected is followed by `export`, `clone` or the
    /// mount.
    pub fn walk(&self, folder: &str) -> Result<Walk> {
        let mut rejected = Vec::new();
        let mut files = self.stored(FILES, folder, |p, why| rejected.push(Rejected { path: p, why }))?;
        let mut dirs = self.stored(DIRS, folder, |p, why| rejected.push(Rejected { path: p, why }))?;
        // Following a link entry (or a file) to write below it would write wherever it points.
        let leaves: std::collections::HashSet<String> = files.iter().map(|(p, _)| p.clone()).collect();
        let below_leaf = |p: &str| {
            std::path::Path::new(p).ancestors().skip(1).any(|a| a.to_str().is_some_and(|a| leaves.contains(a)))
        };
        for (list, what) in [(&mut files, "an entry"), (&mut dirs, "a folder record")] {
            list.retain(|(p, _)| {
                let keep = !below_leaf(p);
                if !keep {
                    rejected
                        .push(Rejected { path: printable(p), why: format!("{what} below a file or symlink entry") });
                }
                keep
            });
        }
        Ok(Walk { files, dirs, rejected })
    }

    /// The entries of sub-database `prefix` under `folder` whose paths are plain and whose values
    /// decode; `reject` hears of the others (the path made printable, and why).
    fn stored(
        &self,
        prefix: &[u8],
        folder: &str,
        mut reject: impl FnMut(String, String),
    ) -> Result<Vec<(String, Entry)>> {
        let folder = path::folder(folder)?;
        let mut out = Vec::new();
        let mut it = self.db.range(&under(prefix, &folder, "/"));
        while let Some(next) = it.next_block() {
            let (_, block) = next?;
            let raw = it.key_of(&block).get(prefix.len()..).unwrap_or_default();
            let p = match path::check_stored(raw) {
                Ok(p) => p,
                Err(why) => {
                    reject(printable(&String::from_utf8_lossy(raw)), why.to_string());
                    continue;
                }
            };
            match Entry::decode(block.value.as_deref().unwrap_or_default()) {
                Ok(e) => out.push((p.to_owned(), e)),
                Err(e) => reject(printable(p), format!("the entry does not decode: {e}")),
            }
        }
        Ok(out)
    }

    /// The names directly inside `folder` (files, folders, empty folders). Without empty
    /// folders the order is JS's (key order); with them, names are sorted.
    pub fn readdir(&self, folder: &str) -> Result<Vec<String>> {
        let folder = path::folder(folder)?;
        let mut names = self.children_names(FILES, &folder)?;
        let dirs = self.children_names(DIRS, &folder)?;
        if !dirs.is_empty() {
            names.extend(dirs);
            names.sort();
            names.dedup();
        }
        Ok(names)
    }

    /// The directory record at `path` (its attributes; the root's too), if one was written.
    pub fn dir_entry(&self, path: &str) -> Result<Option<Entry>> {
        match self.db.get(&dir_key(path)?)? {
            Some(e) => Ok(Some(Entry::decode(&e.value)?)),
            None => Ok(None),
        }
    }

    /// The names directly inside `folder` with their entries (`None` for folders), sorted.
    pub fn children(&self, folder: &str) -> Result<Vec<Child>> {
        let children = self.children_with(folder, Entry::decode)?;
        Ok(children.into_iter().map(|(name, entry)| Child { name, entry }).collect())
    }

    /// [`DriveView::children`] with what `f` makes of each entry's value as stored, uncopied
    /// and undecoded: a listing that needs only names and kinds (see
    /// [`Entry::decode_is_link`]) skips the decoding and the copies.
    pub fn children_with<T>(
        &self,
        folder: &str,
        f: impl FnMut(&[u8]) -> Result<T>,
    ) -> Result<Vec<(String, Option<T>)>> {
        let folder = path::folder(folder)?;
        let mut out = self.shallow(FILES, &folder, f)?;
        let dirs = self.shallow(DIRS, &folder, |_| Ok(()))?;
        if !dirs.is_empty() {
            out.extend(dirs.into_iter().map(|(name, _)| (name, None)));
            // A name that is both a file and a recorded folder shows as the file.
            out.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.is_some().cmp(&a.1.is_some())));
            out.dedup_by(|b, a| a.0 == b.0);
        }
        Ok(out)
    }

    /// Whether `path` is a directory: it holds entries or is a recorded empty directory.
    pub fn is_dir(&self, path: &str) -> Result<bool> {
        let folder = path::folder(path)?;
        Ok(folder.is_empty() || self.db.get(&key_in(DIRS, &folder))?.is_some() || self.holds_entries(&folder)?)
    }

    /// `path` as a directory: `Some` with its record ([`DriveView::dir_entry`]) if it is one
    /// (the root and a directory that exists through its entries may have none), `None` if not.
    pub fn dir(&self, path: &str) -> Result<Option<Option<Entry>>> {
        let folder = path::folder(path)?;
        if folder.is_empty() {
            return Ok(Some(self.dir_entry("/")?));
        }
        if let Some(e) = self.db.get(&key_in(DIRS, &folder))? {
            return Ok(Some(Some(Entry::decode(&e.value)?)));
        }
        Ok(self.holds_entries(&folder)?.then_some(None))
    }

    /// Whether anything is stored under `folder`.
    fn holds_entries(&self, folder: &str) -> Result<bool> {
        for prefix in [FILES, DIRS] {
            let range = Range { limit: Some(1), ..under(prefix, folder, "/") };
            if self.db.range(&range).next().transpose()?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The names directly inside `folder`.
    fn children_names(&self, prefix: &[u8], folder: &str) -> Result<Vec<String>> {
        Ok(self.shallow(prefix, folder, |_| Ok(()))?.into_iter().map(|(n, _)| n).collect())
    }

    /// A shallow listing in Hyperdrive's order, from one range read that starts again past each
    /// sub-folder (files of a folder are neighbours in the tree; Hyperdrive's fresh descent per
    /// name cost a folder of a hundred files a hundred descents). Each name comes with the value
    /// stored at `folder/name`, or `None` for a sub-folder.
    fn shallow<T>(
        &self,
        prefix: &[u8],
        folder: &str,
        mut f: impl FnMut(&[u8]) -> Result<T>,
    ) -> Result<Vec<(String, Option<T>)>> {
        let mut names: Vec<(String, Option<T>)> = Vec::new();
        let mut range = under(prefix, folder, "/");
        // Keys are `prefix ‖ folder/ ‖ rest`: the name is `rest` up to its first slash.
        'ranges: loop {
            let mut it = self.db.range(&range);
            while let Some(next) = it.next_block() {
                let (_, block) = next?;
                // A key that is not a plain path is never shown ([`path::check_stored`]).
                let key = it.key_of(&block);
                let Ok(rest) = path::check_stored(key.get(prefix.len()..).unwrap_or_default())
                    .map(|p| p.get(folder.len() + 1..).unwrap_or_default())
                else {
                    continue;
                };
                match rest.find('/') {
                    None => names.push((rest.to_owned(), Some(f(block.value.as_deref().unwrap_or_default())?))),
                    Some(i) => {
                        let name = &rest[..i];
                        if names.last().map(|(n, _)| n.as_str()) != Some(name) {
                            names.push((name.to_owned(), None));
                        }
                        // Everything under the sub-folder is skipped: on from `name0`, which
                        // JS skips too (a file of that name beside the folder went unlisted).
                        range.lower = Bound::Included(key_in(prefix, &format!("{folder}/{name}0")));
                        continue 'ranges;
                    }
                }
            }
            return Ok(names);
        }
    }
}

/// What [`DriveView::walk`] finds under a folder.
#[derive(Debug, Default)]
pub struct Walk {
    /// File and symlink entries, by path, in path order.
    pub files: Vec<(String, Entry)>,
    /// Directory records, by path, in path order.
    pub dirs: Vec<(String, Entry)>,
    /// What cannot be laid out as a tree, and why.
    pub rejected: Vec<Rejected>,
}

/// An entry of a drive that is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The stored path, with control characters escaped ([`printable`]).
    pub path: String,
    /// Why it is not used.
    pub why: String,
}

/// `s` with control characters and bidirectional overrides escaped (`\n`, `\x1b`, `\u{202e}`)
/// and backslashes doubled, for a terminal: names and link targets from a drive are someone
/// else's bytes, and raw escape sequences would drive the user's terminal or disguise a name.
pub fn printable(s: &str) -> String {
    let odd = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(|c| odd(c) || c == '\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if odd(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
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
    fresh: HashMap<Hash, u64>,
    pending: Vec<Vec<u8>>,
    leaves: Vec<Hash>,
    pending_bytes: u64,
    /// The blobs core's length when the first pending chunk was added.
    base: Option<u64>,
    /// The chunk offsets of the block maps written through this batch, cached once it is in.
    maps: Vec<(Blob, Arc<Vec<Piece>>)>,
    /// Whether large files written through this batch go past the page cache.
    past_cache: bool,
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

    fn commit(&mut self, blobs: &mut Hypercore) -> Result<()> {
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

/// The db key of a normalised path in a sub-database (`FILES` or `DIRS`).
fn key_in(prefix: &[u8], path: &str) -> Vec<u8> {
    [prefix, path.as_bytes()].concat()
}

/// The keys of a sub-database under `folder` that sort after `folder ‖ after` (Hyperdrive's
/// prefix range: `'0'` is the byte after `'/'`).
fn under(prefix: &[u8], folder: &str, after: &str) -> Range {
    Range {
        lower: Bound::Excluded(key_in(prefix, &format!("{folder}{after}"))),
        upper: Bound::Excluded(key_in(prefix, &format!("{folder}0"))),
        ..Range::default()
    }
}

/// The key of a directory record; the root's is `dirs\0/`, which no folder listing reaches.
fn dir_key(path: &str) -> Result<Vec<u8>> {
    let folder = path::folder(path)?;
    Ok(key_in(DIRS, if folder.is_empty() { "/" } else { &folder }))
}

/// The path of a db key inside a sub-database.
fn path_of(prefix: &[u8], key: &[u8]) -> Result<String> {
    Ok(path_str(key.strip_prefix(prefix).unwrap_or(key))?.to_owned())
}

/// Stored path bytes as text; a path that is not UTF-8 is a decode error.
fn path_str(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes)
        .map_err(|_| Error::Decode { what: "drive path", source: crate::encoding::DecodeError::Invalid("UTF-8") })
}

/// Hyperdrive 13's blobs manifest for a drive's db core.
fn blobs_manifest_for(db: &Hypercore) -> Result<crate::hypercore::Manifest> {
    let m = db.manifest().ok_or_else(|| Error::InvalidRequest("a drive needs a manifest".into()))?;
    keys::blobs_manifest(m, db.key())
        .ok_or_else(|| Error::InvalidRequest("a drive's db core needs a v1 manifest".into()))
}
