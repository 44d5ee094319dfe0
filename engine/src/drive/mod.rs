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

mod chunks;
mod contents;
pub mod entry;
pub mod keys;
pub mod links;
pub mod members;
pub mod merge;
pub mod meta;
pub mod multi;
pub mod path;
pub mod prune;
pub mod shared;
mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Read;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use hyperfs_chunker::{Chunker, Preset, HYPERFS_CDC_V1};
use rayon::prelude::*;

use crate::crypto::{CoreKey, Hash, KeyPair};
use crate::fetch::{self, Blocks, Fetch};
use crate::hyperbee::{Hyperbee, Metadata, Range, View};
use crate::hypercore::{stored, Hypercore, Snapshot};
use crate::store::{Store, Table};
use crate::{Error, Result};
pub use chunks::{BlobBatch, PreparedBlob};
use contents::PieceCache;
pub use entry::{Blob, Entry, MapBlock, Special};
pub use meta::Meta;
pub use shared::{SharedDrive, Writing};
pub use view::{printable, DriveView, Listed, Rejected, Walk};

/// The sub-database of file entries, as Hyperdrive's SubEncoder writes it: `files` ‖ 00.
const FILES: &[u8] = b"files\0";

/// Empty directories live outside `files`, so JS drives neither list nor mind them.
const DIRS: &[u8] = b"dirs\0";

/// FIFOs, sockets and device nodes live outside `files` too: JS has no entry for them.
const SPECIAL: &[u8] = b"special\0";

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
    /// Moves a file, symlink, special file or directory with everything under it (see
    /// [`Drive::rename`]).
    Rename(&'a str, &'a str),
    /// Records a special file ([`Special`] in the entry's metadata).
    Mknod(&'a str, &'a Entry),
    /// Removes a special file.
    DelSpecial(&'a str),
    /// Gives the file at the first path the second as a further name (a hard link, see
    /// [`links`]): both entries name one group, and a later put through either is written to all.
    Link(&'a str, &'a str),
}

/// One name inside a folder.
#[derive(Debug, Clone)]
pub struct Child {
    pub name: String,
    /// The file, symlink or special file's entry; `None` for a folder.
    pub entry: Option<Entry>,
    /// The entry is a special file's (FIFO, socket, device node).
    pub special: bool,
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
    /// Whether versions of the drive hold any special file or link record (see
    /// [`DriveView::holds_any`]); shared with frozen copies (a version never changes).
    spaces: Arc<Mutex<Spaces>>,
}

/// Whether the `special` and `links` sub-databases hold anything, by (fork, version) and
/// sub-database, for the last few versions asked about: most drives hold neither, and their
/// lookups, listings and batches then skip those sub-databases.
#[derive(Default)]
struct Spaces {
    seen: std::collections::VecDeque<(SpaceAt, bool)>,
}

/// A sub-database of a drive at a (fork, version).
type SpaceAt = (u64, u64, &'static [u8]);

impl Spaces {
    const KEPT: usize = 16;

    fn get(&self, at: SpaceAt) -> Option<bool> {
        self.seen.iter().find(|(k, _)| *k == at).map(|&(_, v)| v)
    }

    fn insert(&mut self, at: SpaceAt, any: bool) {
        if self.seen.len() >= Self::KEPT {
            self.seen.pop_front();
        }
        self.seen.push_back((at, any));
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
    pub fn open(store: Arc<dyn Store>, key: &CoreKey) -> Result<Option<Drive>> {
        Drive::open_with(store, key, None)
    }

    /// [`Drive::open`] for a replica whose blocks not stored locally come through `fetch`.
    pub fn open_with(store: Arc<dyn Store>, key: &CoreKey, fetch: Option<Arc<dyn Fetch>>) -> Result<Option<Drive>> {
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
        let derived = blobs_manifest_for(db.core()).ok().map(|m| CoreKey(m.hash()));
        let blobs_key = match header.and_then(|h| h.metadata).and_then(|m| m.content_feed) {
            Some(feed) => {
                let feed = feed
                    .get(..32)
                    .and_then(|k| <Hash>::try_from(k).ok())
                    .map(CoreKey)
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
                let m = blobs_manifest_for(db.core()).ok().filter(|m| m.hash() == blobs_key.0);
                Hypercore::open_replica(store, blobs_key, m)?
            }
        };
        blobs.set_index_blocks(blobs.writable());
        let mut drive = Drive::assemble(db, blobs);
        drive.fetch = fetch;
        Ok(Some(drive))
    }

    fn assemble(db: Hyperbee, blobs: Hypercore) -> Drive {
        Drive { db, blobs, preset: HYPERFS_CDC_V1, fetch: None, pieces: Arc::default(), spaces: Arc::default() }
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
            spaces: self.spaces.clone(),
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
        self.set_fetch(fetch);
        self
    }

    /// [`Drive::with_fetch`] on a drive in place (an own drive, once its network starts).
    pub fn set_fetch(&mut self, fetch: Arc<dyn Fetch>) {
        self.db.set_fetch(fetch.clone());
        self.fetch = Some(fetch);
    }

    pub fn key(&self) -> &CoreKey {
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
        self.apply(&[Op::Put(&path, &entry)])
    }

    /// Makes `path` a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str, metadata: Option<serde_json::Value>) -> Result<()> {
        let entry = Entry { executable: false, linkname: Some(target.to_owned()), blob: None, metadata };
        self.put_entry(path, &entry)
    }

    /// Applies several changes as one new version (one db batch): all of them or none.
    pub fn apply(&mut self, ops: &[Op<'_>]) -> Result<()> {
        self.apply_with(ops, &[])
    }

    /// As [`Drive::apply`], with `tail` (keys outside what Hyperdrive lists, and their values,
    /// or `None` to delete) written at the end of the same batch: a multi-writer member's
    /// markers ([`members`]).
    pub fn apply_with(&mut self, ops: &[Op<'_>], tail: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
        if let Some((k, _)) = tail.iter().find(|(k, _)| [FILES, DIRS, SPECIAL].iter().any(|s| k.starts_with(s))) {
            return Err(Error::InvalidRequest(format!(
                "{} is a key of the drive's tree",
                printable(&String::from_utf8_lossy(k))
            )));
        }
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
        // What the batch writes, worked out first: hard-link groups follow their names.
        let writes = {
            let view = self.db.view();
            let links = ops.iter().any(|op| matches!(op, Op::Link(..))) || self.view().holds_any(links::LINKS)?;
            let mut plan = links::Plan::new(&view, links);
            for op in ops {
                match *op {
                    Op::Put(p, e) => plan.put(FILES, &path::file(p)?, e.encode(), true)?,
                    Op::Del(p) => plan.del(FILES, &path::file(p)?)?,
                    Op::Mkdir(p, e) => plan.raw(dir_key(p)?, Some(e.encode())),
                    Op::Rmdir(p) => plan.raw(dir_key(p)?, None),
                    Op::Mknod(p, e) => plan.put(SPECIAL, &path::file(p)?, e.encode(), true)?,
                    Op::DelSpecial(p) => plan.del(SPECIAL, &path::file(p)?)?,
                    Op::Link(from, to) => plan.link(&path::file(from)?, &path::file(to)?)?,
                    Op::Rename(..) => {
                        for (old, new, value) in moves.next().unwrap_or_default() {
                            let space = [FILES, SPECIAL].into_iter().find(|s| old.starts_with(s));
                            match space {
                                Some(space) => {
                                    let o = path_str(&old[space.len()..])?.to_owned();
                                    let n = path_str(&new[space.len()..])?.to_owned();
                                    plan.del(space, &o)?;
                                    plan.put(space, &n, value, false)?;
                                }
                                None => {
                                    plan.raw(new, Some(value));
                                    plan.raw(old, None);
                                }
                            }
                        }
                    }
                }
            }
            plan.finish()
        };
        let mut b = self.db.batch();
        for (key, value) in writes.into_iter().chain(tail.iter().cloned()) {
            match value {
                Some(v) => b.put(&key, &v)?,
                None => {
                    b.del(&key)?;
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
        if !self.view().exists(&path)? {
            return Ok(false);
        }
        self.apply(&[Op::Del(&path)])?;
        Ok(true)
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
        for leaf in [FILES, SPECIAL] {
            if let Some(e) = view.get(&key_in(leaf, from))? {
                moves.push((key_in(leaf, from), key_in(leaf, to), e.value));
                return Ok(moves);
            }
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::InvalidRequest(format!("cannot move {from} into itself ({to})")));
        }
        for prefix in [FILES, DIRS, SPECIAL] {
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
