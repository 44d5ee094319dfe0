//! Which blocks of a core are stored locally, in 4096-byte pages of 32768 bits (bit i of a page is
//! byte i>>3, bit i&7, least significant first — the layout Hypercore stores).

use std::collections::{BTreeMap, BTreeSet};

pub const PAGE_BYTES: usize = 4096;
pub const PAGE_BITS: u64 = (PAGE_BYTES * 8) as u64;

#[derive(Debug, Clone, Default)]
pub struct Bitfield {
    pages: BTreeMap<u64, Box<[u8; PAGE_BYTES]>>,
    dirty: BTreeSet<u64>,
}

impl Bitfield {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a page read from the store; pages of the wrong size are refused.
    pub fn load_page(&mut self, page: u64, bytes: &[u8]) -> bool {
        let Ok(arr) = <[u8; PAGE_BYTES]>::try_from(bytes) else {
            return false;
        };
        self.pages.insert(page, Box::new(arr));
        true
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
        let p = self.pages.entry(page).or_insert_with(|| Box::new([0u8; PAGE_BYTES]));
        let byte = &mut p[(bit >> 3) as usize];
        if value {
            *byte |= 1 << (bit & 7);
        } else {
            *byte &= !(1 << (bit & 7));
        }
        self.dirty.insert(page);
    }

    /// Sets `[start, end)`.
    pub fn set_range(&mut self, start: u64, end: u64, value: bool) {
        let mut i = start;
        while i < end {
            if i.is_multiple_of(8) && end - i >= 8 && (value || self.pages.contains_key(&(i / PAGE_BITS))) {
                let (page, bit) = (i / PAGE_BITS, i % PAGE_BITS);
                let p = self.pages.entry(page).or_insert_with(|| Box::new([0u8; PAGE_BYTES]));
                p[(bit >> 3) as usize] = if value { 0xff } else { 0 };
                self.dirty.insert(page);
                i += 8;
            } else {
                self.set(i, value);
                i += 1;
            }
        }
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

    /// Pages changed since the last call, with their bytes.
    pub fn take_dirty(&mut self) -> Vec<(u64, Vec<u8>)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter_map(|p| self.pages.get(&p).map(|b| (p, b.to_vec()))).collect()
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
        assert_eq!(dirty[0].1[0], 0b1111_1000);
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
