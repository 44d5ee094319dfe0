//! The fetch seam: how a reader above the log (the bee, the drive, the mount) gets a block that
//! is not stored locally, without knowing about peers or networks.
//!
//! Readers go through [`read_block`]: the local copy if there is one; otherwise, if a [`Fetch`]
//! was given, that fetcher is asked (the network layer implements it: it requests the block,
//! verifies it against the signed tree, stores it and returns it); otherwise the answer is
//! [`Error::MissingBlock`]. A reader never guesses and never panics on a block it lacks.

use crate::crypto::CoreKey;
use crate::{Error, Result};

/// Anything blocks are read from by index: a live core or a snapshot of one.
pub trait Blocks: Send + Sync {
    /// The key of the core the blocks belong to.
    fn core_key(&self) -> &CoreKey;
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
    fn core_key(&self) -> &CoreKey {
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
    fn fetch(&self, core: &CoreKey, index: u64) -> Result<Vec<u8>>;

    /// Makes blocks `indices` of core `core` local before they are read, asking for them all at
    /// once (a reader's window, read-ahead); what it cannot get is left for [`Fetch::fetch`] to
    /// report. The default does nothing.
    fn prefetch(&self, core: &CoreKey, indices: &[u64]) {
        let _ = (core, indices);
    }

    /// Blocks `indices` of core `core` are likely to be read next (a sequential reader's next
    /// window): start getting them without waiting. The default does nothing.
    fn hint(&self, core: &CoreKey, indices: &[u64]) {
        let _ = (core, indices);
    }

    /// Block `index` of core `core` was read from the local copy (a cache keeps the blocks
    /// read last). The default does nothing.
    fn used(&self, core: &CoreKey, index: u64) {
        let _ = (core, index);
    }

    /// The block of core `core` holding byte `bytes` and the offset inside it, located from a
    /// verified seek proof, for readers whose local tree lacks the nodes to find it.
    fn seek(&self, core: &CoreKey, bytes: u64) -> Result<(u64, u64)> {
        let _ = (core, bytes);
        Err(Error::InvalidRequest("this fetcher cannot seek".into()))
    }
}

/// Block `index` of `blocks`: local, else fetched, else [`Error::MissingBlock`].
pub fn read_block(blocks: &dyn Blocks, fetch: Option<&dyn Fetch>, index: u64) -> Result<Vec<u8>> {
    match (blocks.block(index), fetch) {
        (Err(Error::MissingBlock { .. }), Some(f)) => f.fetch(blocks.core_key(), index),
        (local, f) => used(local, f, blocks, index),
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
        (local, f) => used(local, f, blocks, index),
    }
}

/// [`read_block`] into `out`, which must be exactly the block's size.
pub fn read_block_into(blocks: &dyn Blocks, fetch: Option<&dyn Fetch>, index: u64, out: &mut [u8]) -> Result<()> {
    match (blocks.block_into(index, out), fetch) {
        (Err(Error::MissingBlock { .. }), Some(f)) => copy_block(index, &f.fetch(blocks.core_key(), index)?, out),
        (local, f) => used(local, f, blocks, index),
    }
}

/// `local`, a read of the local copy, told to the fetcher when it succeeded.
fn used<T>(local: Result<T>, fetch: Option<&dyn Fetch>, blocks: &dyn Blocks, index: u64) -> Result<T> {
    if let (Ok(_), Some(f)) = (&local, fetch) {
        f.used(blocks.core_key(), index);
    }
    local
}
