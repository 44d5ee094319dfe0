//! Which blocks of a core are stored locally, in 4096-byte pages of 32768 bits (bit i of a page is
//! byte i>>3, bit i&7, least significant first — the layout Hypercore stores).
//!
//! A page is stored as its runs of set bits when that is shorter ([`encode_page`]): each commit
//! rewrites the page it touched, and a writer's pages are one run, so a one-block commit writes a
//! few bytes instead of 4 KiB to the write-ahead log, the memtable and every later compaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const PAGE_BYTES: usize = 4096;
pub const PAGE_BITS: u64 = (PAGE_BYTES * 8) as u64;

#[derive(Debug, Clone, Default)]
pub struct Bitfield {
    /// Shared between copies (a snapshot's bitfield is a clone): a page is copied when a
    /// copy changes it.
    pages: BTreeMap<u64, Arc<[u8; PAGE_BYTES]>>,
    dirty: BTreeSet<u64>,
}

impl Bitfield {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a page read from the store (either form of [`encode_page`]); a malformed one is
    /// refused.
    pub fn load_page(&mut self, page: u64, bytes: &[u8]) -> bool {
        match decode_page(bytes) {
            Some(p) => {
                self.pages.insert(page, Arc::from(p));
                true
            }
            None => false,
        }
    }

    pub fn get(&self, index: u64) -> bool {
        let (page, bit) = (index / PAGE_BITS, index % PAGE_BITS);
        self.pages.get(&page).is_some_and(|p| p[(bit >> 3) as usize] & (1 << (bit & 7)) != 0)
    }

    pub fn set(&mut self, index: u64, value: bool) {
        let (page, bit) = (index / PAGE_BITS, index % PAGE_BITS);
        if !value && !self.pages.contains_key(&page) {
            return;
        }
        let p = Arc::make_mut(self.pages.entry(page).or_insert_with(|| Arc::new([0u8; PAGE_BYTES])));
        let byte = &mut p[(bit >> 3) as usize];
        if value {
            *byte |= 1 << (bit & 7);
        } else {
            *byte &= !(1 << (bit & 7));
        }
        self.dirty.insert(page);
    }

    /// Sets `[start, end)`. Clearing visits only the pages present (a range cleared on a fork
    /// can be as long as any signed length, up to 2^55 blocks of pages never held).
    pub fn set_range(&mut self, start: u64, end: u64, value: bool) {
        if start >= end {
            return;
        }
        if !value {
            let (first, last) = (start / PAGE_BITS, (end - 1) / PAGE_BITS);
            let present: Vec<u64> = self.pages.range(first..=last).map(|(&p, _)| p).collect();
            for page in present {
                let base = page * PAGE_BITS;
                self.fill(page, start.max(base) - base, end.min(base + PAGE_BITS) - base, false);
            }
            return;
        }
        let mut i = start;
        while i < end {
            let (page, base) = (i / PAGE_BITS, i / PAGE_BITS * PAGE_BITS);
            let to = end.min(base + PAGE_BITS);
            self.fill(page, i - base, to - base, true);
            i = to;
        }
    }

    /// Sets bits `[from, to)` of one page.
    fn fill(&mut self, page: u64, from: u64, to: u64, value: bool) {
        let p = Arc::make_mut(self.pages.entry(page).or_insert_with(|| Arc::new([0u8; PAGE_BYTES])));
        let mut bit = from;
        while bit < to {
            let byte = &mut p[(bit >> 3) as usize];
            if bit.is_multiple_of(8) && to - bit >= 8 {
                *byte = if value { 0xff } else { 0 };
                bit += 8;
            } else {
                if value {
                    *byte |= 1 << (bit & 7);
                } else {
                    *byte &= !(1 << (bit & 7));
                }
                bit += 1;
            }
        }
        self.dirty.insert(page);
    }

    /// The first index in `[from, end)` whose bit is `value`, if any: pages not held are skipped
    /// whole (all clear), so the cost follows the pages held, not the length.
    pub fn next(&self, from: u64, end: u64, value: bool) -> Option<u64> {
        let mut i = from;
        while i < end {
            let (page, base) = (i / PAGE_BITS, i / PAGE_BITS * PAGE_BITS);
            match self.pages.get(&page) {
                None if !value => return Some(i),
                None => {
                    // On to the next page held.
                    let (&next, _) = self.pages.range(page + 1..).next()?;
                    i = next * PAGE_BITS;
                    continue;
                }
                Some(bytes) => {
                    let to = end.min(base + PAGE_BITS);
                    let mut bit = i - base;
                    while base + bit < to {
                        let b = bytes[(bit >> 3) as usize];
                        let skip = if value { 0 } else { 0xff };
                        if bit.is_multiple_of(8) && b == skip {
                            bit += 8;
                            continue;
                        }
                        if (b & (1 << (bit & 7)) != 0) == value {
                            return Some(base + bit);
                        }
                        bit += 1;
                    }
                    i = base + PAGE_BITS;
                }
            }
        }
        None
    }

    /// Number of set bits below `end`.
    pub fn count(&self, end: u64) -> u64 {
        let mut n = 0u64;
        for (&page, bytes) in &self.pages {
            let base = page * PAGE_BITS;
            if base >= end {
                break;
            }
            let limit = (end - base).min(PAGE_BITS);
            let full = (limit / 8) as usize;
            n += bytes[..full].iter().map(|b| b.count_ones() as u64).sum::<u64>();
            for bit in (full as u64 * 8)..limit {
                if bytes[(bit >> 3) as usize] & (1 << (bit & 7)) != 0 {
                    n += 1;
                }
            }
        }
        n
    }

    /// A copy of just the pages that hold bits `[start, end)`, to change and write before the
    /// change is adopted with [`Bitfield::merge`] (copying every page per commit would cost a
    /// large core more than the commit itself).
    pub fn subset(&self, start: u64, end: u64) -> Bitfield {
        let mut out = Bitfield::new();
        if start < end {
            let (first, last) = (start / PAGE_BITS, (end - 1) / PAGE_BITS);
            for (&p, bytes) in self.pages.range(first..=last) {
                out.pages.insert(p, bytes.clone());
            }
        }
        out
    }

    /// Adopts the pages of `other` (a changed [`Bitfield::subset`]).
    pub fn merge(&mut self, other: Bitfield) {
        self.pages.extend(other.pages);
    }

    /// Pages changed since the last call, each encoded to be stored ([`encode_page`]).
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter_map(|p| self.pages.get(&p).map(|b| (p, encode_page(b)))).collect()
    }
}

/// Marks a page stored as runs of set bits: `RUNS`, a little-endian u16 count, then each run
/// as little-endian u16 start and length in bits (a run of the whole page has length 32768).
/// Always shorter than a page, so a stored value of exactly [`PAGE_BYTES`] is the page itself.
const RUNS: u8 = 1;

/// A page as stored: its runs of set bits, or its bytes when the runs would take as much room.
pub fn encode_page(page: &[u8; PAGE_BYTES]) -> Vec<u8> {
    let mut out = vec![RUNS, 0, 0];
    let mut runs = 0u16;
    let mut bit = 0usize;
    while bit < PAGE_BITS as usize {
        let Some(start) = next_bit(page, bit, true) else { break };
        let end = next_bit(page, start, false).unwrap_or(PAGE_BITS as usize);
        if out.len() + 4 >= PAGE_BYTES {
            return page.to_vec();
        }
        // Both fit: start < 32768 and end - start <= 32768.
        out.extend_from_slice(&(start as u16).to_le_bytes());
        out.extend_from_slice(&((end - start) as u16).to_le_bytes());
        runs += 1;
        bit = end;
    }
    out[1..3].copy_from_slice(&runs.to_le_bytes());
    out
}

/// A stored page, in either form of [`encode_page`]; `None` if malformed.
pub fn decode_page(bytes: &[u8]) -> Option<Box<[u8; PAGE_BYTES]>> {
    if let Ok(raw) = <[u8; PAGE_BYTES]>::try_from(bytes) {
        return Some(Box::new(raw));
    }
    let (&RUNS, rest) = bytes.split_first()? else { return None };
    let (count, runs) = rest.split_at_checked(2)?;
    let count = u16::from_le_bytes([count[0], count[1]]) as usize;
    if runs.len() != count * 4 {
        return None;
    }
    let mut page = Box::new([0u8; PAGE_BYTES]);
    let mut after_last = 0usize;
    for r in runs.chunks_exact(4) {
        let start = u16::from_le_bytes([r[0], r[1]]) as usize;
        let end = start + u16::from_le_bytes([r[2], r[3]]) as usize;
        // Runs are in order, apart and inside the page, as `encode_page` writes them.
        if start < after_last || end <= start || end > PAGE_BITS as usize {
            return None;
        }
        set_bits(&mut page, start, end);
        after_last = end + 1;
    }
    Some(page)
}

/// The first bit at or after `from` that is `value`.
fn next_bit(page: &[u8; PAGE_BYTES], from: usize, value: bool) -> Option<usize> {
    let word = |i: usize| {
        let w = u64::from_le_bytes(page[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        if value {
            w
        } else {
            !w
        }
    };
    let mut i = from / 64;
    let mut w = word(i) & (u64::MAX << (from % 64));
    loop {
        if w != 0 {
            return Some(i * 64 + w.trailing_zeros() as usize);
        }
        i += 1;
        if i == PAGE_BYTES / 8 {
            return None;
        }
        w = word(i);
    }
}

/// Sets bits `[start, end)` of a page.
fn set_bits(page: &mut [u8; PAGE_BYTES], start: usize, end: usize) {
    let mut i = start;
    while i < end {
        if i.is_multiple_of(8) && end - i >= 8 {
            page[i / 8] = 0xff;
            i += 8;
        } else {
            page[i / 8] |= 1 << (i % 8);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_across_pages() {
        let mut b = Bitfield::new();
        b.set_range(3, 40_000, true);
        assert!(!b.get(2));
        assert!(b.get(3));
        assert!(b.get(39_999));
        assert!(!b.get(40_000));
        assert_eq!(b.count(100_000), 39_997);
        b.set_range(10, 20, false);
        assert_eq!(b.count(100_000), 39_987);
        let dirty = b.take_dirty();
        assert_eq!(dirty.iter().map(|d| d.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(decode_page(&dirty[0].1).expect("page")[0], 0b1111_1000);
    }

    /// A signed length can be near 2^55: clearing past it and finding the next held or missing
    /// block cost time in the pages held, not in the length (it was a loop over every index).
    #[test]
    fn next_and_clearing_cost_the_pages_held_not_the_length() {
        let huge = 1u64 << 55;
        let mut b = Bitfield::new();
        b.set_range(5, 9, true);
        b.set_range(huge - 3, huge, true);
        assert_eq!(b.next(0, huge, true), Some(5));
        assert_eq!(b.next(9, huge, true), Some(huge - 3));
        assert_eq!(b.next(5, huge, false), Some(9));
        assert_eq!(b.next(huge - 3, huge, false), None);
        assert_eq!(b.next(huge - 3, huge + 10, false), Some(huge));
        assert_eq!(b.next(10, huge - 3, true), None);
        b.set_range(7, huge, false);
        assert_eq!(b.count(huge), 2);
        assert_eq!(b.next(0, huge, true), Some(5));
        assert_eq!(b.next(7, huge, true), None);
        // Against a plain model, around page edges.
        let mut b = Bitfield::new();
        let mut model = vec![false; 3 * PAGE_BITS as usize];
        for (s, e, v) in [(0, 10, true), (32_760, 32_780, true), (32_770, 32_775, false), (65_535, 65_537, true)] {
            b.set_range(s, e, v);
            model[s as usize..e as usize].iter_mut().for_each(|m| *m = v);
        }
        for from in [0, 9, 10, 32_759, 32_768, 32_774, 65_530, 65_536] {
            for value in [true, false] {
                let want = (from..model.len() as u64).find(|&i| model[i as usize] == value);
                assert_eq!(b.next(from, model.len() as u64, value), want, "{from} {value}");
            }
        }
    }

    fn page_with(runs: &[(usize, usize)]) -> Box<[u8; PAGE_BYTES]> {
        let mut p = Box::new([0u8; PAGE_BYTES]);
        for &(s, e) in runs {
            set_bits(&mut p, s, e);
        }
        p
    }

    #[test]
    fn pages_are_stored_as_runs_when_shorter_and_read_back_either_way() {
        let full = PAGE_BITS as usize;
        // A writer's pages: one run from the start (or the whole page), or nothing.
        for runs in [vec![], vec![(0, 1)], vec![(0, 12_345)], vec![(0, full)], vec![(full - 1, full)]] {
            let page = page_with(&runs);
            let stored = encode_page(&page);
            assert_eq!(stored.len(), 3 + 4 * runs.len(), "{runs:?}");
            assert_eq!(decode_page(&stored).expect("decodes"), page, "{runs:?}");
        }
        // A replica's scattered blocks: runs while shorter, then the page itself.
        let scattered: Vec<_> = (0..full / 2).step_by(3).map(|s| (s, s + 1)).collect();
        let page = page_with(&scattered);
        let stored = encode_page(&page);
        assert_eq!(stored.len(), PAGE_BYTES);
        assert_eq!(decode_page(&stored).expect("decodes"), page);
        let some: Vec<_> = (0..full).step_by(97).map(|s| (s, (s + 40).min(full))).collect();
        assert_eq!(decode_page(&encode_page(&page_with(&some))).expect("decodes"), page_with(&some));
    }

    #[test]
    fn a_malformed_stored_page_is_refused() {
        let bad: [&[u8]; 7] = [
            &[],
            &[RUNS, 1],
            &[2, 0, 0],
            &[RUNS, 1, 0, 0, 0],
            &[RUNS, 1, 0, 5, 0, 0, 0],             // an empty run
            &[RUNS, 1, 0, 0xff, 0x7f, 2, 0],       // past the page's end
            &[RUNS, 2, 0, 0, 0, 4, 0, 4, 0, 1, 0], // runs that touch
        ];
        for b in bad {
            assert!(decode_page(b).is_none(), "{b:?}");
        }
        assert!(!Bitfield::new().load_page(0, &[0u8; PAGE_BYTES - 1]));
    }

    proptest::proptest! {
        #[test]
        fn any_page_reads_back_as_it_was_stored(bits in proptest::collection::vec(0usize..PAGE_BITS as usize, 0..3000)) {
            let mut page = Box::new([0u8; PAGE_BYTES]);
            for b in bits {
                set_bits(&mut page, b, (b + b % 50 + 1).min(PAGE_BITS as usize));
            }
            let stored = encode_page(&page);
            proptest::prop_assert!(stored.len() <= PAGE_BYTES);
            proptest::prop_assert_eq!(decode_page(&stored).expect("decodes"), page);
        }
    }

    #[test]
    fn a_changed_subset_merges_back() {
        let mut b = Bitfield::new();
        b.set_range(0, 3 * PAGE_BITS, true);
        let mut sub = b.subset(PAGE_BITS + 5, PAGE_BITS + 9);
        sub.set_range(PAGE_BITS + 5, PAGE_BITS + 9, false);
        assert_eq!(sub.take_dirty().len(), 1);
        assert_eq!(b.count(3 * PAGE_BITS), 3 * PAGE_BITS, "the original is untouched until merged");
        b.merge(sub);
        assert_eq!(b.count(3 * PAGE_BITS), 3 * PAGE_BITS - 4);
        assert!(!b.get(PAGE_BITS + 5) && b.get(PAGE_BITS + 9));
    }
}
