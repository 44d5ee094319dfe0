//! Hyperbee 2: a copy-on-write B-tree stored in a Hypercore, byte-compatible with the JS
//! `hyperbee` package (reference §7).
//!
//! Block 0 is a protobuf `Header`; every later block is one operation (a put or a delete of one
//! key) together with fresh copies of the tree nodes that operation changed. The tree of
//! version `v` is the root stored in block `v − 1`, so every past version stays readable.
//!
//! - [`Hyperbee`] owns a core and writes to it through [`Batch`] (one block per operation, one
//!   core append and one signature per batch).
//! - [`View`] reads one version — the live one, a [`Hyperbee::checkout`] or a snapshot — with
//!   `get`, `range`, `history` and `diff`, and can be narrowed to a sub-database by prefix.
//! - Decoded blocks are kept in a [`NodeCache`] shared by a bee and its views, keyed by
//!   (fork, seq): a truncation moves the fork, so nothing stale is ever served.
//!
//! Does not know: peers or networks. A block that is not local goes through the engine's
//! [`Fetch`] seam and, without a fetcher, is [`Error::MissingBlock`].
//!
//! Invariant: for the same operations, the blocks written equal JS Hyperbee 2.27.3's byte for
//! byte, including its batch re-indexing. Reads never panic on a malformed tree: a pointer to a
//! block or level that does not exist, or a descent deeper than any real tree, is an error.

mod messages;
mod read;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use crate::encoding::DecodeError;
use crate::fetch::{self, Blocks, Fetch};
use crate::hypercore::{Hypercore, Snapshot};
use crate::{Error, Result};

pub use messages::{decode_index, Header, Level, Metadata, NodeBlock};
pub use read::{DiffEntry, HistoryEntry, HistoryRange, RangeIter};
pub use write::Batch;

/// The separator between a sub-database's prefix and its keys (JS default: one zero byte).
pub const SEP: &[u8] = &[0];

/// One key and its value as stored at block `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// Bounds, direction and limit of a range read. The default is every key in order.
#[derive(Debug, Clone)]
pub struct Range {
    pub lower: Bound<Vec<u8>>,
    pub upper: Bound<Vec<u8>>,
    pub reverse: bool,
    pub limit: Option<usize>,
}

impl Default for Range {
    fn default() -> Self {
        Range { lower: Bound::Unbounded, upper: Bound::Unbounded, reverse: false, limit: None }
    }
}

/// A B-tree over a Hypercore.
pub struct Hyperbee {
    core: Hypercore,
    cache: Arc<NodeCache>,
    fetch: Option<Arc<dyn Fetch>>,
    metadata: Option<Metadata>,
}

impl std::fmt::Debug for Hyperbee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hyperbee").field("core", &self.core).finish_non_exhaustive()
    }
}

impl Hyperbee {
    /// A bee over `core` (empty, or holding a bee).
    pub fn new(core: Hypercore) -> Self {
        Hyperbee { core, cache: Arc::new(NodeCache::new(DEFAULT_CACHE_BLOCKS)), fetch: None, metadata: None }
    }

    /// The header metadata written with block 0 when the bee is first written to.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Where blocks that are not local are asked for.
    pub fn with_fetch(mut self, fetch: Arc<dyn Fetch>) -> Self {
        self.set_fetch(fetch);
        self
    }

    pub fn set_fetch(&mut self, fetch: Arc<dyn Fetch>) {
        self.fetch = Some(fetch);
    }

    pub fn core(&self) -> &Hypercore {
        &self.core
    }

    /// A read-only copy of the bee as it is now, sharing its node cache
    /// ([`Hypercore::frozen_copy`]).
    pub fn frozen_copy(&self) -> Hyperbee {
        Hyperbee {
            core: self.core.frozen_copy(),
            cache: self.cache.clone(),
            fetch: self.fetch.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// The core, for applying proofs received from peers. Blocks it drops on a new fork are
    /// never served from the cache, which is keyed by fork.
    pub fn core_mut(&mut self) -> &mut Hypercore {
        &mut self.core
    }

    pub fn into_core(self) -> Hypercore {
        self.core
    }

    /// The current version: the core's length, at least 1.
    pub fn version(&self) -> u64 {
        self.core.length().max(1)
    }

    /// The header (block 0), or `None` if nothing was written yet.
    pub fn header(&self) -> Result<Option<Header>> {
        if self.core.length() == 0 {
            return Ok(None);
        }
        let raw = fetch::read_block(&self.core, self.fetch.as_deref(), 0)?;
        Header::decode(&raw).map(Some).map_err(|source| Error::Decode { what: "hyperbee header", source })
    }

    /// Reads of the current version, borrowing the bee.
    pub fn view(&self) -> View<&Hypercore> {
        View::new(&self.core, self.version(), self.cache.clone(), self.fetch.clone())
    }

    /// Reads of the current version that stay valid while the bee is written to.
    pub fn snapshot(&self) -> View<Snapshot> {
        View::new(self.core.snapshot(), self.version(), self.cache.clone(), self.fetch.clone())
    }

    /// Reads of the bee as it was at `version` (a core length; 0 and 1 are the empty bee).
    pub fn checkout(&self, version: u64) -> Result<View<Snapshot>> {
        let version = version.max(1);
        if version > self.version() {
            return Err(Error::OutOfBounds(format!("version {version} of a bee at version {}", self.version())));
        }
        if let Some((start, end)) = self.core.atomic_span(version)? {
            return Err(Error::InvalidRequest(format!(
                "version {version} falls inside one atomic change (versions {start} to {end}); read {start} or {end}"
            )));
        }
        let snap = self.core.checkout(self.core.length().min(version))?;
        Ok(View::new(snap, version, self.cache.clone(), self.fetch.clone()))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        self.view().get(key)
    }

    /// A batch of writes appended together by [`Batch::flush`].
    pub fn batch(&mut self) -> Batch<'_> {
        Batch::new(self)
    }

    /// Puts one key (one block, one append).
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = self.batch();
        b.put(key, value)?;
        b.flush()
    }

    /// Deletes one key; returns whether it was present (a missing key writes nothing).
    pub fn del(&mut self, key: &[u8]) -> Result<bool> {
        let mut b = self.batch();
        let found = b.del(key)?;
        b.flush()?;
        Ok(found)
    }

    /// Truncates the bee back to `version` (a new fork of its core).
    pub fn truncate(&mut self, version: u64) -> Result<()> {
        self.core.truncate(version)
    }

    fn ensure_header(&mut self) -> Result<()> {
        if self.core.length() == 0 {
            let header = Header { protocol: "hyperbee".into(), metadata: self.metadata.clone() };
            self.core.append(&header.encode())?;
        }
        Ok(())
    }
}

/// Reads of one version of a bee, over any [`Blocks`] (a live core or a snapshot).
pub struct View<B: Blocks> {
    blocks: B,
    version: u64,
    prefix: Vec<u8>,
    cache: Arc<NodeCache>,
    fetch: Option<Arc<dyn Fetch>>,
}

impl<B: Blocks> std::fmt::Debug for View<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("version", &self.version).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl<B: Blocks> View<B> {
    fn new(blocks: B, version: u64, cache: Arc<NodeCache>, fetch: Option<Arc<dyn Fetch>>) -> Self {
        View { blocks, version, prefix: Vec::new(), cache, fetch }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The sub-database `name` of this view: keys are stored as prefix ‖ name ‖ [`SEP`] ‖ key.
    pub fn sub(&self, name: &[u8]) -> View<B>
    where
        B: Clone,
    {
        let mut prefix = self.prefix.clone();
        prefix.extend_from_slice(name);
        prefix.extend_from_slice(SEP);
        View {
            blocks: self.blocks.clone(),
            version: self.version,
            prefix,
            cache: self.cache.clone(),
            fetch: self.fetch.clone(),
        }
    }

    /// The stored form of `key` in this view (its sub-database prefix prepended).
    pub fn stored_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    fn loader(&self) -> Loader<'_> {
        Loader { blocks: &self.blocks, fetch: self.fetch.as_deref(), cache: &self.cache }
    }
}

/// How many decoded blocks a bee keeps by default (a few hundred bytes each: tens of MiB at
/// most). Enough for every block of a 256k-key bee, so random gets there never decode twice.
const DEFAULT_CACHE_BLOCKS: usize = 256 * 1024;

/// The deepest descent a real tree can need (a B-tree of order 5 over 2^64 blocks is ~28 deep);
/// anything deeper is a malformed or cyclic tree.
const MAX_DEPTH: usize = 64;

/// Decoded blocks, keyed by (core key prefix, fork, seq) and shared by a bee and its views.
/// Eviction is by shard, arbitrary entry first, like the JS bee's random-eviction cache.
pub struct NodeCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

const SHARDS: usize = 16;

/// (core key tag, fork, seq) → decoded block.
type Shard = HashMap<(u64, u64, u64), Arc<NodeBlock>, BuildHasherDefault<IdHasher>>;

/// A multiply-rotate hasher for the cache's integer keys: every get and put of a large bee makes
/// dozens of lookups, and SipHash's flood resistance buys nothing for seqs the bee itself chose.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl NodeCache {
    pub fn new(capacity: usize) -> Self {
        NodeCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, seq: u64) -> &Mutex<Shard> {
        &self.shards[(seq as usize) % SHARDS]
    }

    fn get(&self, id: (u64, u64, u64)) -> Option<Arc<NodeBlock>> {
        self.shard(id.2).lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn insert(&self, id: (u64, u64, u64), node: Arc<NodeBlock>) {
        let mut shard = self.shard(id.2).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= self.per_shard {
            if let Some(victim) = shard.keys().next().copied() {
                shard.remove(&victim);
            }
        }
        shard.insert(id, node);
    }
}

/// Reads and decodes blocks through the cache and the fetch seam.
#[derive(Clone, Copy)]
struct Loader<'a> {
    blocks: &'a dyn Blocks,
    fetch: Option<&'a dyn Fetch>,
    cache: &'a NodeCache,
}

impl Loader<'_> {
    fn id(&self, seq: u64) -> (u64, u64, u64) {
        let k = self.blocks.core_key();
        let tag = u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]);
        (tag, self.blocks.fork(), seq)
    }

    /// Block `seq` (≥ 1) decoded.
    fn node(&self, seq: u64) -> Result<Arc<NodeBlock>> {
        if seq == 0 {
            return Err(malformed("a tree pointer to the header block"));
        }
        let id = self.id(seq);
        if let Some(n) = self.cache.get(id) {
            return Ok(n);
        }
        let raw = fetch::read_block(self.blocks, self.fetch, seq)?;
        let node = Arc::new(NodeBlock::decode(&raw).map_err(|source| Error::Decode { what: "hyperbee node", source })?);
        self.cache.insert(id, node.clone());
        Ok(node)
    }

    fn remember(&self, seq: u64, node: Arc<NodeBlock>) {
        self.cache.insert(self.id(seq), node);
    }
}

fn malformed(what: &'static str) -> Error {
    Error::Decode { what: "hyperbee tree", source: DecodeError::Invalid(what) }
}
