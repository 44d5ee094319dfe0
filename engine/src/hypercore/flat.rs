//! Flat-tree index math (reference §3.1): block i is tree index 2i, parents are odd, a node's
//! depth is its number of trailing one bits.
//!
//! Invariant: pure integer math, no storage; every function is total for indexes below 2^62.

/// Depth of a tree index (0 for leaves).
pub fn depth(index: u64) -> u32 {
    (!index).trailing_zeros()
}

/// Offset of a node within its depth.
pub fn offset(index: u64) -> u64 {
    let d = depth(index);
    ((index + 1) >> d).saturating_sub(1) / 2
}

/// Index from depth and offset.
pub fn index(depth: u32, offset: u64) -> u64 {
    ((2 * offset + 1) << depth) - 1
}

pub fn parent(i: u64) -> u64 {
    let d = depth(i);
    index(d + 1, offset(i) >> 1)
}

pub fn sibling(i: u64) -> u64 {
    let d = depth(i);
    index(d, offset(i) ^ 1)
}

pub fn left_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i
    } else {
        offset(i) * (2u64 << d)
    }
}

pub fn right_span(i: u64) -> u64 {
    let d = depth(i);
    if d == 0 {
        i
    } else {
        (offset(i) + 1) * (2u64 << d) - 2
    }
}

pub fn count_leaves(i: u64) -> u64 {
    1 << depth(i)
}

/// The roots of a tree whose head (2 × length) is `head`, left to right.
pub fn full_roots(head: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut leaves = head / 2;
    let mut start = 0u64;
    while leaves > 0 {
        let factor = 1u64 << (63 - leaves.leading_zeros());
        out.push(start + factor - 1);
        start += 2 * factor;
        leaves -= factor;
    }
    out
}

/// A cursor over the tree with the same moves as the JS flat-tree iterator.
#[derive(Debug, Clone, Copy)]
pub struct Iter {
    pub index: u64,
    pub offset: u64,
    /// 2 × the number of leaves under the current node.
    pub factor: u64,
}

impl Iter {
    pub fn new(index: u64) -> Self {
        let mut it = Iter { index: 0, offset: 0, factor: 2 };
        it.seek(index);
        it
    }

    pub fn seek(&mut self, index: u64) {
        self.index = index;
        if index & 1 == 1 {
            self.offset = offset(index);
            self.factor = 2u64 << depth(index);
        } else {
            self.offset = index / 2;
            self.factor = 2;
        }
    }

    pub fn is_left(&self) -> bool {
        self.offset & 1 == 0
    }

    pub fn sibling(&mut self) -> u64 {
        if self.is_left() {
            self.offset += 1;
            self.index += self.factor;
        } else {
            self.offset -= 1;
            self.index -= self.factor;
        }
        self.index
    }

    pub fn parent(&mut self) -> u64 {
        if self.offset & 1 == 1 {
            self.index -= self.factor / 2;
            self.offset = (self.offset - 1) / 2;
        } else {
            self.index += self.factor / 2;
            self.offset /= 2;
        }
        self.factor *= 2;
        self.index
    }

    pub fn left_child(&mut self) -> u64 {
        if self.factor == 2 {
            return self.index;
        }
        self.factor /= 2;
        self.index -= self.factor / 2;
        self.offset *= 2;
        self.index
    }

    pub fn right_span(&self) -> u64 {
        self.index + self.factor / 2 - 1
    }

    pub fn left_span(&self) -> u64 {
        self.index + 1 - self.factor / 2
    }

    /// Whether `index` lies in the subtree under the current node.
    pub fn contains(&self, index: u64) -> bool {
        if index > self.index {
            index < self.index + self.factor / 2
        } else if index < self.index {
            index + self.factor / 2 > self.index
        } else {
            true
        }
    }

    /// From a leaf, grows to the largest full subtree that ends before `head`; false if none.
    pub fn full_root(&mut self, head: u64) -> bool {
        if head <= self.index || self.index & 1 == 1 {
            return false;
        }
        while head > self.index + self.factor + self.factor / 2 {
            self.index += self.factor / 2;
            self.factor *= 2;
            self.offset /= 2;
        }
        true
    }

    /// Moves to the first leaf after the current subtree.
    pub fn next_tree(&mut self) -> u64 {
        self.index = self.index + self.factor / 2 + 1;
        self.offset = self.index / 2;
        self.factor = 2;
        self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_small_trees() {
        assert_eq!(full_roots(6), vec![1, 4]);
        assert_eq!(full_roots(10), vec![3, 8]);
        assert_eq!(full_roots(0), Vec::<u64>::new());
        assert_eq!(full_roots(2 * 7), vec![3, 9, 12]);
    }

    #[test]
    fn spans_parents_siblings() {
        assert_eq!(parent(0), 1);
        assert_eq!(parent(2), 1);
        assert_eq!(parent(1), 3);
        assert_eq!(parent(5), 3);
        assert_eq!(sibling(1), 5);
        assert_eq!(sibling(4), 6);
        assert_eq!((left_span(3), right_span(3)), (0, 6));
        assert_eq!((left_span(11), right_span(11)), (8, 14));
        assert_eq!(count_leaves(7), 8);
        assert_eq!(depth(7), 3);
        assert_eq!(offset(11), 1);
    }

    #[test]
    fn iterator_full_roots_walk_matches_full_roots() {
        for len in 0..200u64 {
            let mut got = Vec::new();
            let mut it = Iter::new(0);
            while it.full_root(2 * len) {
                got.push(it.index);
                it.next_tree();
            }
            assert_eq!(got, full_roots(2 * len), "length {len}");
        }
    }

    #[test]
    fn iterator_moves_agree_with_formulas() {
        for i in 0..500u64 {
            let mut it = Iter::new(i);
            assert_eq!(it.sibling(), sibling(i));
            let mut it = Iter::new(i);
            assert_eq!(it.parent(), parent(i));
            let it = Iter::new(i);
            assert_eq!(it.right_span(), right_span(i));
            assert_eq!(it.left_span(), left_span(i));
        }
    }
}
