use super::*;
use proptest::prelude::*;

/// Deterministic pseudo-random bytes (xorshift64*), so pinned cut points never depend on a crate.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn pinned_cut_points_of_hyperfs_cdc_v1() {
    // If this fails the preset changed: that is a new preset name, never an edit of v1.
    let data = pseudo_random(2 << 20, 42);
    let lens: Vec<usize> = chunks(HYPERFS_CDC_V1, &data).iter().map(|c| c.len).collect();
    let expected: &[usize] = &PINNED_V1;
    assert_eq!(lens, expected);
    let ids: Vec<String> = chunks(HYPERFS_CDC_V1, &data)
        .iter()
        .take(2)
        .map(|c| hex::encode(leaf_hash(&data[c.offset as usize..c.offset as usize + c.len])))
        .collect();
    assert_eq!(ids, PINNED_V1_FIRST_IDS);
}

#[test]
fn leaf_hash_is_the_hypercore_leaf() {
    assert_eq!(hex::encode(leaf_hash(b"hello")), "f2391083cfaa8043205fed76cdff843902146ca92aebcd7a196814ec45d8c8f8");
}

#[test]
fn leaf_hashes_of_many_blocks_equal_each_leaf_hash() {
    // Lengths around the 128-byte BLAKE2b block and the 9-byte prefix, empty, and long ones
    // mixed, so lanes run out at different times.
    let lens = [0usize, 1, 118, 119, 120, 127, 128, 129, 247, 255, 256, 4096, 65_536, 3, 100_000, 4095, 17];
    let blocks: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| pseudo_random(n, i as u64 + 3)).collect();
    let many = leaf_hashes(&blocks);
    assert_eq!(many.len(), blocks.len());
    for (b, h) in blocks.iter().zip(&many) {
        assert_eq!(*h, leaf_hash(b), "block of {} bytes", b.len());
    }
    assert!(leaf_hashes::<Vec<u8>>(&[]).is_empty());
}

#[test]
fn size_bounds_and_average_on_random_data() {
    let data = pseudo_random(32 << 20, 7);
    let cs = chunks(HYPERFS_CDC_V1, &data);
    for c in &cs[..cs.len() - 1] {
        assert!((16 * 1024..=256 * 1024).contains(&c.len), "{}", c.len);
    }
    let mean = data.len() / cs.len();
    assert!((48 * 1024..=96 * 1024).contains(&mean), "mean chunk {mean}");
}

#[test]
fn edits_change_only_nearby_chunks_on_64_mib() {
    let old = pseudo_random(64 << 20, 99);
    let ids = |d: &[u8]| -> std::collections::HashSet<[u8; 32]> {
        chunks(HYPERFS_CDC_V1, d).iter().map(|c| leaf_hash(&d[c.offset as usize..c.offset as usize + c.len])).collect()
    };
    let old_ids = ids(&old);
    for (at, insert, delete) in [(0usize, 1usize, 0usize), (10 << 20, 5, 0), (33 << 20, 0, 7), (50 << 20, 3, 3)] {
        let mut new = old[..at].to_vec();
        new.extend(std::iter::repeat_n(0xabu8, insert));
        new.extend_from_slice(&old[at + delete..]);
        let new_chunks = chunks(HYPERFS_CDC_V1, &new);
        let new_ids = ids(&new);
        let kept = new_ids.iter().filter(|id| old_ids.contains(*id)).count();
        let ratio = kept as f64 / new_ids.len() as f64;
        assert!(ratio >= 0.98, "edit at {at}: only {:.2}% of {} chunks reused", ratio * 100.0, new_chunks.len());
    }
}

const SMALL: Preset = Preset::for_tests(64, 256, 1024);

proptest! {
    #[test]
    fn chunks_concatenate_and_respect_bounds(data in prop::collection::vec(any::<u8>(), 0..20_000)) {
        let cs = chunks(SMALL, &data);
        let mut at = 0u64;
        for (i, c) in cs.iter().enumerate() {
            prop_assert_eq!(c.offset, at);
            prop_assert!(c.len <= 1024);
            if i + 1 < cs.len() { prop_assert!(c.len >= 64); }
            prop_assert!(c.len > 0);
            at += c.len as u64;
        }
        prop_assert_eq!(at, data.len() as u64);
    }

    #[test]
    fn any_piece_sizes_give_the_same_cut_points(
        seed in any::<u64>(),
        len in 0usize..60_000,
        // Empty pushes included, but not only them (the feeding loop would never end).
        pieces in prop::collection::vec(0usize..3000, 1..50).prop_filter("a piece that is not empty", |p| p.iter().any(|&n| n > 0)),
    ) {
        let data = pseudo_random(len, seed);
        let whole = chunks(SMALL, &data);
        let mut streamed = Vec::new();
        let mut c = Chunker::new(SMALL);
        let mut at = 0;
        let mut k = 0;
        while at < data.len() {
            let n = pieces[k % pieces.len()].min(data.len() - at);
            c.push(&data[at..at + n], |ch| streamed.push(ch));
            at += n;
            k += 1;
        }
        streamed.extend(c.finish());
        prop_assert_eq!(streamed, whole);
    }
}

const PINNED_V1: [usize; 26] = [
    80748, 33655, 88625, 174653, 84752, 78118, 45427, 76971, 42629, 90505, 140906, 62493, 79111, 25163, 104794, 78908,
    61077, 69864, 105255, 83390, 65796, 74460, 87624, 24999, 178795, 58434,
];
const PINNED_V1_FIRST_IDS: [&str; 2] = [
    "e9e06f165aa3e0a22966c027e795f63a3e3b37e4ecb55db567bc74fc9ec9baa8",
    "84461618240af24cdd43c427191241f7f9e688f880d94dde98e4dc53eff8d467",
];
