//! The fetch seam: how a reader above the log (the bee, the drive, the mount) gets a block that
//! is not stored locally, without knowing about peers or networks.
//!
//! Readers go through [`read_block`]: the local copy if there is one; otherwise, if a [`Fetch`]
//! was given, that fetcher is asked (the network layer implements it: it requests the block,
//! verifies it against the signed tree, stores it and returns it); otherwise the answer is
//! [`Error::MissingBlock`]. A reader never guesses and never panics on a block it lacks.

use crate::crypto::Hash;
use crate::{Error, Result};

/// Anything blocks are read from by index: a live core or a snapshot of one.
pub trait Blocks: Send + Sync {
    /// The key of the core the blocks belong to.
    fn core_key(&self) -> &Hash;
    /// How many blocks this view has.
    fn length(&self) -> u64;
    /// The fork the view is on; cached decodings are keyed by it.
    fn fork(&self) -> u64;
    /// Block `index`, or [`Error::MissingBlock`] if it is not local.
    fn block(&self, index: u64) -> Result<Vec<u8>>;
    /// Block `index` into `out`, which must be exactly its size; errors as [`Blocks::block`].
    fn block_into(&self, index: u64, out: &mut [u8]) -> Result<()> {
        copy_block(index, &self.block(index)?, out)
    }
    /// Bytes `from..from + out.len()` of block `index`, which must hold `size` bytes; errors as
    /// [`Blocks::block`].
    fn block_part(&self, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
        copy_part(index, &self.block(index)?, size, from, out)
    }
}

/// Bytes `from..from + out.len()` of `block`, which must hold `size` bytes.
fn copy_part(index: u64, block: &[u8], size: u64, from: usize, out: &mut [u8]) -> Result<()> {
    let part = part_range(index, block.len() as u64, size, from, out.len())?;
    out.copy_from_slice(&block[part]);
    Ok(())
}

/// The range `from..from + len` of block `index`, checked: the block holds `actual` bytes where
/// the reader's file map says `size`, and the range lies inside it.
pub(crate) fn part_range(
    index: u64,
    actual: u64,
    size: u64,
    from: usize,
    len: usize,
) -> Result<std::ops::Range<usize>> {
    if actual != size {
        return Err(Error::Verification(format!("block {index} has {actual} bytes where the file's map says {size}")));
    }
    match from.checked_add(len) {
        Some(end) if end as u64 <= size => Ok(from..end),
        _ => Err(Error::InvalidRequest(format!("bytes {from}..+{len} of block {index} of {size} bytes"))),
    }
}

/// Copies a block into a buffer that must be exactly its size.
fn copy_block(index: u64, block: &[u8], out: &mut [u8]) -> Result<()> {
    if block.len() != out.len() {
        return Err(Error::Verification(format!(
            "block {index} has {} bytes, not the {} read",
            block.len(),
            out.len()
        )));
    }
    out.copy_from_slice(block);
    Ok(())
}

impl<B: Blocks + ?Sized> Blocks for &B {
    fn core_key(&self) -> &Hash {
        (**self).core_key()
    }
    fn length(&self) -> u64 {
        (**self).length()
    }
    fn fork(&self) -> u64 {
        (**self).fork()
    }
    fn block(&self, index: u64) -> Result<Vec<u8>> {
        (**self).block(index)
    }
    fn block_into(&self, index: u64, out: &mut [u8]) -> Result<()> {
        (**self).block_into(index, out)
    }
    fn block_part(&self, index: u64, size: u64, from: usize, out: &mut [u8]) -> Result<()> {
        (**self).block_part(index, size, from, out)
    }
}

/// Makes a missing block available: implemented by whoever holds the network.
pub trait Fetch: Send + Sync {
    /// Block `index` of core `core`, verified against that core's signed tree, or an error
    /// saying why it could not be had ([`Error::MissingBlock`] when no peer supplied it in time).
    fn fetch(&self, core: &Hash, index: u64) -> Result<Vec<u8>>;

    /// Makes blocks `indices` of core `core` local before they are read, asking for them all at
    /// once (a reader's window, read-ahead); what it cannot get is left for [`Fetch::fetch`] to
    /// report. The default does nothing.
    fn prefetch(&self, core: &Hash, indices: &[u64]) {
        let _ = (core, indices);
    }

    /// Blocks `indices` of core `core` are likely to be read next (a sequential reader's next
    /// window): start getting them without waiting. The default does nothing.
    fn hint(&self, core: &Hash, indices: &[u64]) {
        let _ = (core, indices);
    }

    /// The block of core `core` holding byte `bytes` and the offset inside it, located from a
    /// verified seek proof, for readers whose local tree lacks the nodes to find it.
    fn seek(&self, core: &Hash, bytes: u64) -> Result<(u64, u64)> {
        let _ = (core, bytes);
        Err(Error::InvalidRequest("this fetcher cannot seek".into()))
    }
}

/// What a read could not have without waiting on the network, while it ran [`deferring`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred {
    /// Blocks `indices` of core `core`.
    Blocks { core: Hash, indices: Vec<u64> },
    /// The seek to byte `bytes` of core `core`.
    Seek { core: Hash, bytes: u64 },
}

/// Where the fetchers of a [`deferring`] run record what they would have waited for.
#[derive(Debug, Clone, Default)]
pub struct Deferral(std::sync::Arc<std::sync::Mutex<Vec<Deferred>>>);

thread_local! {
    static DEFERRAL: std::cell::RefCell<Option<Deferral>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with network waits deferred: a fetcher asked for something it does not have at
/// hand records it ([`defer`]) and answers at once that it is missing. A reader that holds a
/// lock runs its read this way, lets go, waits for what was deferred ([`complete`]) and reads
/// again — it never waits on a peer while holding anything. Returns `f`'s result and what was
/// deferred.
pub fn deferring<T>(f: impl FnOnce() -> T) -> (T, Vec<Deferred>) {
    let deferral = Deferral::default();
    let out = within(Some(deferral.clone()), f);
    let deferred = std::mem::take(&mut *deferral.0.lock().unwrap_or_else(|e| e.into_inner()));
    (out, deferred)
}

/// The deferral the current thread runs under, to carry into work it hands to other threads.
pub fn current() -> Option<Deferral> {
    DEFERRAL.with(|d| d.borrow().clone())
}

/// Runs `f` under `deferral` (from [`current`] on the thread that handed the work over).
pub fn within<T>(deferral: Option<Deferral>, f: impl FnOnce() -> T) -> T {
    let outer = DEFERRAL.with(|d| std::mem::replace(&mut *d.borrow_mut(), deferral));
    let out = f();
    DEFERRAL.with(|d| *d.borrow_mut() = outer);
    out
}

/// For fetchers: records `what` and returns `true` when the current read defers network waits
/// (the fetcher then answers at once); `false` when it may wait.
pub fn defer(what: Deferred) -> bool {
    match current() {
        Some(d) => {
            d.0.lock().unwrap_or_else(|e| e.into_inner()).push(what);
            true
        }
        None => false,
    }
}

/// Waits, holding nothing, for what a [`deferring`] read deferred: each core's blocks asked for
/// together, then the seeks.
pub fn complete(fetch: &dyn Fetch, deferred: &[Deferred]) {
    let mut blocks: Vec<(Hash, Vec<u64>)> = Vec::new();
    for d in deferred {
        if let Deferred::Blocks { core, indices } = d {
            match blocks.iter_mut().find(|(c, _)| c == core) {
                Some((_, all)) => all.extend_from_slice(indices),
                None => blocks.push((*core, indices.clone())),
            }
        }
    }
    for (core, mut indices) in blocks {
        indices.sort_unstable();
        indices.dedup();
        fetch.prefetch(&core, &indices);
    }
    for d in deferred {
        if let Deferred::Seek { core, bytes } = d {
            let _ = fetch.seek(core, *bytes);
        }
    }
}

/// Block `index` of `blocks`: local, else fetched, else [`Error::MissingBlock`].
pub fn read_block(blocks: &dyn Blocks, fetch: Option<&dyn Fetch>, index: u64) -> Result<Vec<u8>> {
    match (blocks.block(index), fetch) {
        (Err(Error::MissingBlock { .. }), Some(f)) => f.fetch(blocks.core_key(), index),
        (local, _) => local,
    }
}

/// Bytes `from..from + out.len()` of block `index` (which must hold `size` bytes): read from
/// the disk in that range when local, else the whole block fetched.
pub fn read_block_part(
    blocks: &dyn Blocks,
    fetch: Option<&dyn Fetch>,
    index: u64,
    size: u64,
    from: usize,
    out: &mut [u8],
) -> Result<()> {
    match (blocks.block_part(index, size, from, out), fetch) {
        (Err(Error::MissingBlock { .. }), Some(f)) => {
            copy_part(index, &f.fetch(blocks.core_key(), index)?, size, from, out)
        }
        (local, _) => local,
    }
}

/// [`read_block`] into `out`, which must be exactly the block's size.
pub fn read_block_into(blocks: &dyn Blocks, fetch: Option<&dyn Fetch>, index: u64, out: &mut [u8]) -> Result<()> {
    match (blocks.block_into(index, out), fetch) {
        (Err(Error::MissingBlock { .. }), Some(f)) => copy_block(index, &f.fetch(blocks.core_key(), index)?, out),
        (local, _) => local,
    }
}
