//! Structure-aware fuzzing of every decoder that reads bytes from disk or from a peer: bee nodes
//! and headers, drive entries and block maps, manifests and multisig proofs, bitfield pages,
//! stored blocks and heads. Each starts from valid encodings and mutates them (bytes flipped,
//! cut, spliced, varints made huge) beside plain random bytes. No input may panic, and no
//! single allocation made while decoding may exceed [`ALLOC_BOUND`] plus 64 times the input.
//!
//! The count is proptest's (`PROPTEST_CASES`, 256 by default in the test suite);
//! `scripts/fuzz` runs the same targets for longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;

use crate::drive::entry::{decode_block_map, encode_block_map, MapBlock};
use crate::drive::{Blob, Entry};
use crate::hyperbee::{decode_index, Header, Level, Metadata, NodeBlock};
use crate::hypercore::bitfield::{decode_page, encode_page, PAGE_BYTES};
use crate::hypercore::Manifest;

/// The largest single allocation a decode may make beyond 64 bytes per input byte.
const ALLOC_BOUND: usize = 1 << 20;

/// Records the largest allocation a watching thread makes (other threads are not counted: the
/// test harness runs tests side by side).
struct Watching;

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call goes to the system allocator unchanged; the thread-locals are plain
// `Cell`s with const initialisers (no allocation, no re-entry).
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: a pointer this allocator (the system's) gave out with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as in `dealloc`, and the caller's new size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let _ = WATCH.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs `decode` on `input`, checking the largest allocation it makes.
fn bounded<T>(what: &str, input: &[u8], decode: impl FnOnce(&[u8]) -> T) -> T {
    LARGEST.with(|l| l.set(0));
    WATCH.with(|w| w.set(true));
    let out = decode(input);
    WATCH.with(|w| w.set(false));
    let largest = LARGEST.with(Cell::get);
    assert!(
        largest <= ALLOC_BOUND + 64 * input.len(),
        "{what}: an allocation of {largest} bytes for {} bytes of input",
        input.len()
    );
    out
}

/// Valid encodings to mutate, one per decoder.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let node = NodeBlock {
        key: b"files\0/a/b.txt".to_vec(),
        value: Some(b"{\"executable\":false}".to_vec()),
        levels: vec![Level { keys: vec![1, 2, 3], children: vec![(1, 0), (2, 0), (3, 1), (4, 0)] }],
    };
    let header = Header {
        protocol: "hyperbee".into(),
        metadata: Some(Metadata { content_feed: Some(vec![7; 32]), user_data: Some(b"x".to_vec()) }),
    };
    let entry = Entry {
        executable: true,
        linkname: None,
        blob: Some(Blob { block_offset: 3, byte_offset: 100, block_length: 2, byte_length: 9000, block_map: true }),
        metadata: Some(serde_json::json!({"mode": 0o644, "uid": 1, "gid": 2, "mtime": 5})),
    };
    let map = encode_block_map(&(0..40).map(|i| MapBlock { index: i, byte_length: 65536 }).collect::<Vec<_>>());
    let mut page = [0u8; PAGE_BYTES];
    page[..100].fill(0xff);
    page[3000] = 0x0f;
    vec![
        ("bee node", node.encode()),
        ("bee header", header.encode()),
        ("drive entry", entry.encode()),
        ("block map", map.concat()),
        ("manifest", Manifest::single([9; 32]).encode()),
        ("bitfield page", encode_page(&page)),
    ]
}

/// Runs every decoder on `bytes`.
fn decode_all(bytes: &[u8]) {
    let _ = bounded("bee node", bytes, NodeBlock::decode);
    let _ = bounded("bee header", bytes, Header::decode);
    let _ = bounded("bee index", bytes, decode_index);
    let _ = bounded("drive entry", bytes, Entry::decode);
    let _ = bounded("drive entry kind", bytes, Entry::decode_is_link);
    let _ = bounded("block map", bytes, |b| decode_block_map(&[b.to_vec()], 1 << 40));
    let _ = bounded("manifest", bytes, Manifest::decode);
    let _ = bounded("multisig", bytes, crate::hypercore::manifest::Multisig::decode);
    let _ = bounded("bitfield page", bytes, decode_page);
    let _ = bounded("stored block", bytes, |b| crate::hypercore::stored::decode(b, (b.len() as u64) * 4, 0));
    let _ = bounded("stored path", bytes, |b| crate::drive::path::check_stored(b).is_ok());
}

/// One mutation of `seed`: a byte set, a cut, a splice of random bytes, or a varint made huge.
fn mutate(seed: &[u8], op: u8, at: usize, bytes: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    let at = if out.is_empty() { 0 } else { at % out.len() };
    match op % 4 {
        0 => {
            if let (Some(b), Some(&v)) = (out.get_mut(at), bytes.first()) {
                *b = v;
            }
        }
        1 => out.truncate(at),
        2 => {
            let tail = out.split_off(at);
            out.extend_from_slice(bytes);
            out.extend(tail);
        }
        _ => {
            // A compact-encoding varint of 2^64 - 1 where a length or count was.
            let tail = out.split_off(at);
            out.extend_from_slice(&[0xff; 9]);
            out.extend(tail.get(1..).unwrap_or_default());
        }
    }
    out
}

proptest! {
    #[test]
    fn random_bytes_decode_without_panic_or_huge_allocations(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_encodings_decode_without_panic_or_huge_allocations(
        which in 0usize..6,
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), proptest::collection::vec(any::<u8>(), 0..16)), 1..6),
    ) {
        let seeds = seeds();
        let (_, seed) = &seeds[which % seeds.len()];
        let mut input = seed.clone();
        for (op, at, bytes) in &ops {
            input = mutate(&input, *op, *at, bytes);
        }
        decode_all(&input);
    }
}

/// The seeds themselves decode: the mutations start from real encodings.
#[test]
fn the_seeds_are_valid() {
    for (what, bytes) in seeds() {
        let ok = match what {
            "bee node" => NodeBlock::decode(&bytes).is_ok(),
            "bee header" => Header::decode(&bytes).is_ok(),
            "drive entry" => Entry::decode(&bytes).is_ok(),
            "block map" => decode_block_map(std::slice::from_ref(&bytes), 100).is_ok(),
            "manifest" => Manifest::decode(&bytes).is_ok(),
            "bitfield page" => decode_page(&bytes).is_some(),
            _ => false,
        };
        assert!(ok, "{what}");
    }
}
