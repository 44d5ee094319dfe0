//! Storage behind a narrow trait: named tables (RocksDB column families), point reads, range
//! scans and atomic write batches.
//!
//! Invariants: `store::rocks` is the only module that imports `rocksdb`; every change to a core is
//! one [`Batch`] written atomically; nothing above this module knows how tables are laid out on
//! disk.

mod memory;
mod rocks;

pub use memory::MemStore;
pub use rocks::RocksStore;

use crate::Result;

/// The format version this build writes and reads. A store with another version is refused,
/// except the versions in [`FORMAT_UPGRADES`].
pub const FORMAT_VERSION: u64 = 2;

/// Older versions this build opens, and what it changed since: opening records the current
/// version, so an older build then refuses the store instead of misreading it.
/// - 1: bitfield pages were always stored whole; version 2 also stores them as runs of set bits
///   (the whole form still reads).
const FORMAT_UPGRADES: &[u64] = &[1];

/// A table of the store (one RocksDB column family each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Store-wide records: the format version, id counters, and the atomic appends of each core
    /// (`atomic` ‖ core id ‖ end → start: the lengths strictly between are no version).
    Meta,
    /// Core key → core record (id, manifest, keys).
    Cores,
    /// Core id → signed head (fork, length, tree hash, signature).
    Heads,
    /// Core id ‖ tree index → merkle node.
    Nodes,
    /// Merkle leaf hash → block bytes: each distinct block is stored once.
    Blocks,
    /// Core id ‖ page → 4096-byte presence bitfield page.
    Bitfield,
    /// Core id ‖ merkle leaf hash → index of a block of that core with that content. Hints for
    /// deduplication, kept only for cores that ask for them and verified against the tree on use.
    Chunks,
}

impl Table {
    pub const ALL: [Table; 7] =
        [Table::Meta, Table::Cores, Table::Heads, Table::Nodes, Table::Blocks, Table::Bitfield, Table::Chunks];

    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Cores => "cores",
            Table::Heads => "heads",
            Table::Nodes => "nodes",
            Table::Blocks => "blocks",
            Table::Bitfield => "bitfield",
            Table::Chunks => "chunks",
        }
    }
}

/// One change inside a batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(Table, Vec<u8>, Vec<u8>),
    Delete(Table, Vec<u8>),
    /// Deletes keys in `[start, end)`.
    DeleteRange(Table, Vec<u8>, Vec<u8>),
    /// Commits block bytes staged earlier under `key` in [`Table::Blocks`].
    PutStaged(Vec<u8>, Staged),
}

/// Block bytes already written by [`Store::stage_block`] but not yet part of any committed
/// state: a batch holding a [`Op::PutStaged`] for it commits them; otherwise they are garbage that
/// the next open (or garbage collection) drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    pub(crate) id: u64,
    pub(crate) len: u32,
}

/// Changes applied all together or not at all.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub ops: Vec<Op>,
    /// Make the batch durable (synced write-ahead log) before `write` returns.
    pub sync: bool,
}

impl Batch {
    pub fn put(&mut self, t: Table, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(t, k.into(), v.into()));
    }
    pub fn delete(&mut self, t: Table, k: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(t, k.into()));
    }
    pub fn delete_range(&mut self, t: Table, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(t, start.into(), end.into()));
    }
    pub fn put_staged(&mut self, k: impl Into<Vec<u8>>, staged: Staged) {
        self.ops.push(Op::PutStaged(k.into(), staged));
    }
}

/// What the engine needs from storage.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Whether `key` is present, cheaper than `get` where the backend allows.
    fn contains(&self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.get(table, key)?.is_some())
    }
    /// Every pair with `start <= key < end`, in key order.
    fn scan(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The first pair with `start <= key < end`.
    fn first(&self, table: Table, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.scan(table, start, end)?.into_iter().next())
    }
    /// Reads the stored bytes of block `key` straight into `bufs`, in order, when they are
    /// exactly as long as the buffers together (a reader's own buffer, no copy in between).
    /// Returns the stored length, `None` when the block is absent; when the length differs
    /// nothing is read.
    fn read_block_into(&self, key: &[u8], bufs: &mut [std::io::IoSliceMut<'_>]) -> Result<Option<usize>> {
        let Some(v) = self.get(Table::Blocks, key)? else { return Ok(None) };
        if v.len() == bufs.iter().map(|b| b.len()).sum::<usize>() {
            let mut rest = &v[..];
            for b in bufs.iter_mut() {
                let (head, tail) = rest.split_at(b.len());
                b.copy_from_slice(head);
                rest = tail;
            }
        }
        Ok(Some(v.len()))
    }
    /// Reads `out.len()` stored bytes of block `key` from byte `at` into `out` when the block's
    /// stored length is `stored_len` (a 4 KiB read of a 64 KiB chunk reads 4 KiB from the
    /// disk). Returns the stored length, `None` when the block is absent; when the length differs
    /// or the range runs past it, nothing is read.
    fn read_block_range(&self, key: &[u8], stored_len: usize, at: usize, out: &mut [u8]) -> Result<Option<usize>> {
        let Some(v) = self.get(Table::Blocks, key)? else { return Ok(None) };
        if v.len() == stored_len {
            if let Some(range) = v.get(at..at.saturating_add(out.len())) {
                out.copy_from_slice(range);
            }
        }
        Ok(Some(v.len()))
    }
    /// Writes block bytes ahead of the batch that will commit them, so writers can do it on
    /// every core while they hash. Safe to call from many threads at once.
    fn stage_block(&self, bytes: Vec<u8>) -> Result<Staged>;
    /// Stages several blocks at once (one write where the backend allows), each given as two
    /// parts stored one after the other (a tag and the bytes, so they need not be joined).
    fn stage_blocks(&self, blocks: &[[&[u8]; 2]]) -> Result<Vec<Staged>> {
        blocks.iter().map(|parts| self.stage_block(parts.concat())).collect()
    }
    /// A hint that the blocks under `keys` are about to be read: a backend may start loading
    /// them (blocks not in memory are then read in a few large requests at once, not one small
    /// one per block as each is needed).
    fn will_read(&self, keys: &[&[u8]]) {
        let _ = keys;
    }
    /// [`Store::stage_blocks`] for the bytes of a large file being imported, which nothing is
    /// likely to read again soon: a backend may write them past its caches.
    fn stage_streamed(&self, blocks: &[[&[u8]; 2]]) -> Result<Vec<Staged>> {
        self.stage_blocks(blocks)
    }
    /// Applies `batch` atomically.
    fn write(&self, batch: Batch) -> Result<()>;
    /// Makes every earlier write durable.
    fn flush(&self) -> Result<()>;
    /// Whether blocks were committed since the last [`Store::flush`] (or durable batch).
    fn unsynced(&self) -> bool {
        false
    }
    /// After an unclean stop: checks every block written since the store last knew its bytes
    /// durable with `verifies(key, stored bytes)`, drops those that fail (a power cut took
    /// them) and returns the keys of every block lost and not yet forgotten. Cheap when the
    /// last stop was clean.
    fn recover_blocks(&self, verifies: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let _ = verifies;
        Ok(Vec::new())
    }
    /// The cores have caught up with the blocks [`Store::recover_blocks`] returned.
    fn forget_lost(&self) -> Result<()> {
        Ok(())
    }
    /// The stored length of block `key` (compressed or raw, as kept), `None` when absent.
    fn stored_len(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.get(Table::Blocks, key)?.map(|v| v.len()))
    }
    /// Whether block `key` is stored, asked by a writer that will reference it instead of
    /// writing its bytes again (under a [`Store::pin`] held until that commit): a garbage
    /// collection running meanwhile keeps it.
    fn reuse_block(&self, key: &[u8]) -> Result<bool> {
        self.contains(Table::Blocks, key)
    }
    /// Held from a writer's [`Store::reuse_block`] decisions until its commit: a garbage
    /// collection waits for the pins older than it before it looks at what is referenced.
    fn pin(&self) -> Pin {
        Pin::none()
    }
    /// Removes every block `mark` does not find referenced and gives their space back (see
    /// [`crate::gc`]). `mark` reads the tables as they were at one instant and returns the keys
    /// of the referenced blocks, sorted.
    fn collect_garbage(
        &self,
        mark: &dyn Fn(&dyn SnapshotRead) -> Result<Vec<crate::crypto::Hash>>,
    ) -> Result<Collected> {
        let _ = mark;
        Err(crate::Error::InvalidRequest("this store does not collect garbage".into()))
    }
    /// What the store takes on disk.
    fn disk_usage(&self) -> Result<DiskUsage> {
        Ok(DiskUsage::default())
    }
}

/// What [`SnapshotRead::each`] calls with each key and value.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<()>;

/// The tables as they were at one instant, for [`Store::collect_garbage`]'s mark.
pub trait SnapshotRead {
    /// Calls `f` with every pair with `start <= key < end`, in key order.
    fn each(&self, table: Table, start: &[u8], end: &[u8], f: Visit<'_>) -> Result<()>;
}

/// What a garbage collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collected {
    /// Blocks referenced by some core, kept.
    pub blocks_kept: u64,
    /// Blocks no core referenced, removed.
    pub blocks_removed: u64,
    /// Their stored bytes.
    pub bytes_removed: u64,
    /// Bytes of the block log given back to the file system.
    pub bytes_freed: u64,
}

/// What a store takes on disk, in bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskUsage {
    /// The block log's allocated space.
    pub block_log: u64,
    /// The stored bytes of the blocks the index holds (the rest of the log is garbage, or
    /// space allocated ahead).
    pub blocks: u64,
    /// The database's files (index, trees, bitfields).
    pub database: u64,
}

/// Two counts of holders, one per epoch: [`Gate::wait_older`] waits until every holder that
/// came before it has let go, while newer ones come and go (no writer starves it, and it
/// starves no writer).
#[derive(Debug, Default)]
pub struct Gate {
    epoch: std::sync::atomic::AtomicUsize,
    held: [std::sync::atomic::AtomicUsize; 2],
}

impl Gate {
    /// One more holder, counted in the current epoch, for as long as the pin lives.
    pub fn enter(self: &std::sync::Arc<Self>) -> Pin {
        let slot = self.hold().slot();
        Pin(Some((self.clone(), slot)))
    }

    /// One more holder for a moment (a read): [`Gate::enter`] without the shared handle a pin
    /// that outlives its caller needs.
    pub fn hold(&self) -> Held<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let e = self.epoch.load(SeqCst);
            self.held[e & 1].fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == e {
                return Held(self, e & 1);
            }
            // The epoch moved between the two loads: counted in the new one instead.
            self.held[e & 1].fetch_sub(1, SeqCst);
        }
    }

    /// Starts a new epoch and waits until every holder of the one before has let go. One
    /// caller at a time.
    pub fn wait_older(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let old = self.epoch.fetch_add(1, SeqCst) & 1;
        while self.held[old].load(SeqCst) > 0 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// A holder of a [`Gate`] for a moment, let go when dropped.
#[must_use]
pub struct Held<'a>(&'a Gate, usize);

impl Held<'_> {
    /// Hands the count over to a [`Pin`]: the slot it was counted in, no longer let go here.
    fn slot(self) -> usize {
        let slot = self.1;
        std::mem::forget(self);
        slot
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held[self.1].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A holder of a [`Gate`] (or of nothing), let go when dropped.
#[derive(Debug)]
#[must_use]
pub struct Pin(Option<(std::sync::Arc<Gate>, usize)>);

impl Pin {
    /// A pin of nothing, for stores that need none.
    pub fn none() -> Pin {
        Pin(None)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some((gate, slot)) = &self.0 {
            gate.held[*slot].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Checks or records the format version of a store.
pub(crate) fn check_format(store: &dyn Store, path: &std::path::Path, fresh: bool) -> Result<()> {
    let record_current = || {
        let mut b = Batch { sync: true, ..Batch::default() };
        b.put(Table::Meta, b"format".to_vec(), FORMAT_VERSION.to_le_bytes().to_vec());
        store.write(b)
    };
    match store.get(Table::Meta, b"format")? {
        Some(v) => {
            let found = <[u8; 8]>::try_from(v.as_slice()).map(u64::from_le_bytes).map_err(|_| {
                crate::Error::Damaged { path: path.into(), reason: "format record has the wrong size".into() }
            })?;
            if found == FORMAT_VERSION {
                return Ok(());
            }
            if !FORMAT_UPGRADES.contains(&found) {
                return Err(crate::Error::UnknownFormat { path: path.into(), found, expected: FORMAT_VERSION });
            }
            record_current()
        }
        // A store killed between its making and its format record holds nothing: new, not
        // damaged.
        None if fresh || holds_nothing(store)? => record_current(),
        None => Err(crate::Error::Damaged { path: path.into(), reason: "the format record is missing".into() }),
    }
}

/// Whether no table of `store` holds a record.
fn holds_nothing(store: &dyn Store) -> Result<bool> {
    for t in Table::ALL {
        if store.first(t, &[], &[0xff; 64])?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}
