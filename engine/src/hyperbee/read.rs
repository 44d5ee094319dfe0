//! Reading one version of a bee: point gets, range iteration, the history of operations and the
//! diff between two versions, following the JS algorithms so the answers are JS's answers.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::Arc;

use super::{malformed, Entry, Loader, NodeBlock, Range, View, MAX_DEPTH};
use crate::fetch::Blocks;
use crate::Result;

/// A tree node: level `offset` of block `seq`.
#[derive(Clone)]
pub(super) struct TreeNode {
    block: Arc<NodeBlock>,
    seq: u64,
    offset: usize,
}

impl TreeNode {
    fn new(block: Arc<NodeBlock>, seq: u64, offset: u64) -> Result<Self> {
        let offset = usize::try_from(offset).map_err(|_| malformed("level offset"))?;
        if offset >= block.levels.len() {
            return Err(malformed("a pointer to a level its block does not have"));
        }
        Ok(TreeNode { block, seq, offset })
    }

    fn keys(&self) -> &[u64] {
        &self.block.levels[self.offset].keys
    }

    fn children(&self) -> &[(u64, u64)] {
        &self.block.levels[self.offset].children
    }

    fn is_leaf(&self) -> bool {
        self.children().is_empty()
    }
}

/// Whether block `seq` is a deletion: no value, and its index does not hold its own seq.
pub(super) fn is_deletion(block: &NodeBlock, seq: u64) -> bool {
    block.value.is_none() && !block.levels.iter().any(|l| l.keys.contains(&seq))
}

impl Loader<'_> {
    fn root(&self, version: u64) -> Result<Option<TreeNode>> {
        if version < 2 {
            return Ok(None);
        }
        let seq = version - 1;
        Ok(Some(TreeNode::new(self.node(seq)?, seq, 0)?))
    }

    fn child(&self, node: &TreeNode, i: usize) -> Result<TreeNode> {
        let &(seq, offset) = node.children().get(i).ok_or_else(|| malformed("a child slot a node does not have"))?;
        // A block can only point back: the tree it roots was written before it.
        if seq > node.seq {
            return Err(malformed("a child in a later block"));
        }
        let block = if seq == node.seq { node.block.clone() } else { self.node(seq)? };
        TreeNode::new(block, seq, offset)
    }

    fn key_at(&self, node: &TreeNode, i: usize) -> Result<Arc<NodeBlock>> {
        let seq = *node.keys().get(i).ok_or_else(|| malformed("a key slot a node does not have"))?;
        if seq > node.seq {
            return Err(malformed("a key in a later block"));
        }
        if seq == node.seq {
            Ok(node.block.clone())
        } else {
            self.node(seq)
        }
    }

    fn entry(&self, seq: u64) -> Result<Entry> {
        let b = self.node(seq)?;
        Ok(Entry { seq, key: b.key.clone(), value: b.value.clone().unwrap_or_default() })
    }

    /// Binary search of `key` among a node's keys: `Ok(i)` on a match, else `Err(child slot)`.
    fn search(&self, node: &TreeNode, key: &[u8]) -> Result<std::result::Result<usize, usize>> {
        let (mut s, mut e) = (0, node.keys().len());
        while s < e {
            let mid = (s + e) >> 1;
            match key.cmp(&self.key_at(node, mid)?.key) {
                Ordering::Equal => return Ok(Ok(mid)),
                Ordering::Less => e = mid,
                Ordering::Greater => s = mid + 1,
            }
        }
        Ok(Err(s))
    }
}

impl<B: Blocks> View<B> {
    /// The value of `key` in this version. Unlike JS, this does not stop at a node whose block
    /// wrote `key`: after a batch deletes a key, a rebalance can move such a node onto the key's
    /// path without rewriting it, and JS then returns the deleted value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let key = self.stored_key(key);
        let l = self.loader();
        let Some(mut node) = l.root(self.version)? else { return Ok(None) };
        for _ in 0..MAX_DEPTH {
            match l.search(&node, &key)? {
                Ok(i) => {
                    let seq = node.keys()[i];
                    let block = l.key_at(&node, i)?;
                    return Ok(Some(self.unprefixed(seq, &block)));
                }
                Err(i) => {
                    if node.is_leaf() {
                        return Ok(None);
                    }
                    node = l.child(&node, i)?;
                }
            }
        }
        Err(malformed("a tree deeper than any real one"))
    }

    /// The key and value written by block `seq` (a put or, with an empty value, a delete).
    pub fn get_by_seq(&self, seq: u64) -> Result<Entry> {
        if seq == 0 || seq >= self.version {
            return Err(crate::Error::OutOfBounds(format!("block {seq} of a bee at version {}", self.version)));
        }
        self.loader().entry(seq)
    }

    /// Entries of this view in key order (or reverse) within `range`.
    pub fn range(&self, range: &Range) -> RangeIter<'_, B> {
        let (lower, upper) = self.stored_bounds(range);
        RangeIter {
            view: self,
            stack: Vec::new(),
            opened: false,
            lower,
            upper,
            reverse: range.reverse,
            limit: range.limit,
            failed: false,
            last: None,
        }
    }

    /// The operations of blocks in `h`, oldest first (or newest first when reversed). As in JS,
    /// a sub-database's history is the whole bee's, each key with the sub's prefix length cut.
    pub fn history(&self, h: &HistoryRange) -> impl Iterator<Item = Result<HistoryEntry>> + '_ {
        let version = self.version as i64;
        let rel = |v: i64| if v < 0 { v + version } else { v };
        let mut gte = match h.gt {
            Some(gt) => rel(gt) + 1,
            None => rel(h.gte.unwrap_or(1)).max(0),
        };
        let mut lt = match h.lte {
            Some(lte) => rel(lte) + 1,
            None => rel(h.lt.unwrap_or(version)),
        };
        gte = gte.max(1);
        lt = lt.min(version);
        let reverse = h.reverse;
        let mut limit = h.limit;
        let l = self.loader();
        std::iter::from_fn(move || {
            if limit == Some(0) || gte >= lt {
                return None;
            }
            if let Some(n) = &mut limit {
                *n -= 1;
            }
            let seq = if reverse {
                lt -= 1;
                lt as u64
            } else {
                gte += 1;
                (gte - 1) as u64
            };
            Some(l.node(seq).map(|b| HistoryEntry { deletion: is_deletion(&b, seq), entry: self.unprefixed(seq, &b) }))
        })
    }

    /// The keys whose entries differ between this version (left) and `other` (right), in key
    /// order: `left` is this version's entry, `right` the other's, `None` where absent.
    pub fn diff<C: Blocks>(&self, other: &View<C>, range: &Range) -> Result<Vec<DiffEntry>> {
        let (lower, upper) = self.stored_bounds(range);
        let mut left = TreeIter::open(self.loader(), self.version, lower.clone(), upper.clone())?;
        let mut right = TreeIter::open(other.loader(), other.version, lower, upper)?;
        let mut out = Vec::new();
        while range.limit.is_none_or(|n| out.len() < n) {
            let Some(d) = diff_next(&mut left, &mut right)? else { break };
            out.push(DiffEntry {
                left: d.0.map(|(seq, b)| self.unprefixed(seq, &b)),
                right: d.1.map(|(seq, b)| self.unprefixed(seq, &b)),
            });
        }
        Ok(out)
    }

    fn unprefixed(&self, seq: u64, block: &NodeBlock) -> Entry {
        let key = block.key.get(self.prefix.len()..).unwrap_or_default().to_vec();
        Entry { seq, key, value: block.value.clone().unwrap_or_default() }
    }

    /// The range in stored keys; a sub-database clamps an open side to its own keys as JS does
    /// (lower exclusive prefix ‖ 00, upper exclusive prefix with its last byte bumped).
    fn stored_bounds(&self, range: &Range) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let map = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(self.stored_key(k)),
            Bound::Excluded(k) => Bound::Excluded(self.stored_key(k)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut lower = map(&range.lower);
        let mut upper = map(&range.upper);
        if !self.prefix.is_empty() {
            if matches!(lower, Bound::Unbounded) {
                lower = Bound::Excluded(self.stored_key(super::SEP));
            }
            if matches!(upper, Bound::Unbounded) {
                let mut k = self.prefix.clone();
                if let Some(last) = k.last_mut() {
                    *last = last.wrapping_add(1);
                }
                upper = Bound::Excluded(k);
            }
        }
        (lower, upper)
    }
}

/// Which blocks a history read covers. Negative bounds count back from the version, as in JS.
#[derive(Debug, Clone, Default)]
pub struct HistoryRange {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
    pub reverse: bool,
    pub limit: Option<usize>,
}

/// One operation of the history: a put, or a deletion (whose value is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub deletion: bool,
    pub entry: Entry,
}

/// One difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffEntry {
    pub left: Option<Entry>,
    pub right: Option<Entry>,
}

/// In-order iteration over a range of one version (the JS range iterator: a stack of
/// (node, i) where odd i is a key slot and even i a child slot).
pub struct RangeIter<'a, B: Blocks> {
    view: &'a View<B>,
    stack: Vec<(TreeNode, i64)>,
    opened: bool,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    reverse: bool,
    limit: Option<usize>,
    failed: bool,
    /// The block of the entry yielded last: keys must strictly increase (decrease in reverse)
    /// along a range, so a crafted tree whose children share sub-trees cannot make a range
    /// yield more entries than the tree holds (k children pointing at one node made k² of them).
    last: Option<Arc<NodeBlock>>,
}

impl<B: Blocks> RangeIter<'_, B> {
    fn open(&mut self) -> Result<()> {
        let l = self.view.loader();
        let Some(mut node) = l.root(self.view.version)? else { return Ok(()) };
        let reverse = self.reverse;
        let (start, incl) = match if reverse { &self.upper } else { &self.lower } {
            Bound::Included(k) => (k.clone(), true),
            Bound::Excluded(k) => (k.clone(), false),
            Bound::Unbounded => {
                let i = if reverse { 2 * node.keys().len() as i64 } else { 0 };
                self.stack.push((node, i));
                return Ok(());
            }
        };
        for _ in 0..MAX_DEPTH {
            let len = node.keys().len() as i64;
            match l.search(&node, &start)? {
                Ok(mid) => {
                    let mid = mid as i64;
                    let i = if incl { mid * 2 + 1 } else { mid * 2 + if reverse { 0 } else { 2 } };
                    self.stack.push((node, i));
                    return Ok(());
                }
                Err(s) => {
                    let i = 2 * s as i64 + if reverse { -1 } else { 1 };
                    let leaf = node.is_leaf();
                    let next = if leaf { None } else { Some(l.child(&node, s)?) };
                    if i >= 0 && i <= len << 1 {
                        self.stack.push((node, i));
                    }
                    match next {
                        None => return Ok(()),
                        Some(n) => node = n,
                    }
                }
            }
        }
        Err(malformed("a tree deeper than any real one"))
    }

    /// The next entry as its stored block, uncopied: `(seq, block)`; see [`RangeIter::key_of`].
    pub fn next_block(&mut self) -> Option<Result<(u64, Arc<NodeBlock>)>> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(e) => e.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }

    /// The key of a block from [`RangeIter::next_block`], as [`Entry::key`] has it (without a
    /// sub-database's prefix).
    pub fn key_of<'b>(&self, block: &'b NodeBlock) -> &'b [u8] {
        block.key.get(self.view.prefix.len()..).unwrap_or_default()
    }

    fn advance(&mut self) -> Result<Option<(u64, Arc<NodeBlock>)>> {
        if !self.opened {
            self.opened = true;
            self.open()?;
        }
        let l = self.view.loader();
        let reverse = self.reverse;
        while self.limit != Some(0) {
            let Some((node, i)) = self.stack.last_mut() else { break };
            let is_key = (*i & 1) == 1;
            let n = if reverse {
                if *i < 0 {
                    node.keys().len()
                } else {
                    let n = *i >> 1;
                    *i -= 1;
                    n as usize
                }
            } else {
                let n = *i >> 1;
                *i += 1;
                n as usize
            };
            if !is_key {
                if node.is_leaf() {
                    continue;
                }
                let child = l.child(node, n)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err(malformed("a tree deeper than any real one"));
                }
                let i = if reverse { 2 * child.keys().len() as i64 } else { 0 };
                self.stack.push((child, i));
                continue;
            }
            if n >= node.keys().len() {
                self.stack.pop();
                continue;
            }
            let seq = node.keys()[n];
            let block = l.key_at(node, n)?;
            let end = if reverse { &self.lower } else { &self.upper };
            let past = match end {
                Bound::Unbounded => false,
                Bound::Included(e) | Bound::Excluded(e) => {
                    let c = block.key.as_slice().cmp(e.as_slice());
                    if c == Ordering::Equal {
                        matches!(end, Bound::Excluded(_))
                    } else if reverse {
                        c == Ordering::Less
                    } else {
                        c == Ordering::Greater
                    }
                }
            };
            if past {
                self.limit = Some(0);
                break;
            }
            if let Some(last) = &self.last {
                let order = block.key.as_slice().cmp(last.key.as_slice());
                if order != if reverse { Ordering::Less } else { Ordering::Greater } {
                    return Err(malformed("keys out of order along a range"));
                }
            }
            self.last = Some(block.clone());
            if let Some(n) = &mut self.limit {
                *n -= 1;
            }
            return Ok(Some((seq, block)));
        }
        Ok(None)
    }
}

impl<B: Blocks> Iterator for RangeIter<'_, B> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        Some(self.next_block()?.map(|(seq, block)| self.view.unprefixed(seq, &block)))
    }
}

// The diff walks two trees side by side (JS iterators/diff.js): each side is a stack of
// sub-trees with a cursor i (odd: key slot, even: child slot); positions whose pointers are equal
// on both sides are skipped without being read.

struct SubTree {
    node: TreeNode,
    i: i64,
    is_key: bool,
    n: usize,
    seq: u64,
    offset: u64,
}

impl SubTree {
    fn new(node: TreeNode) -> Result<Self> {
        let is_key = node.is_leaf();
        let (seq, offset) = if is_key {
            (*node.keys().first().ok_or_else(|| malformed("an empty node below the root"))?, 0)
        } else {
            node.children()[0]
        };
        Ok(SubTree { node, i: if is_key { 1 } else { 0 }, is_key, n: 0, seq, offset })
    }

    fn next(&mut self) -> bool {
        self.i += 1;
        self.is_key = (self.i & 1) == 1;
        if !self.is_key && self.node.is_leaf() {
            self.i += 1;
        }
        self.update()
    }

    fn update(&mut self) -> bool {
        self.is_key = (self.i & 1) == 1;
        self.n = (self.i >> 1) as usize;
        let len = if self.is_key { self.node.keys().len() } else { self.node.children().len() };
        if self.n >= len {
            return false;
        }
        if self.is_key {
            self.seq = self.node.keys()[self.n];
            self.offset = 0;
        } else {
            (self.seq, self.offset) = self.node.children()[self.n];
        }
        true
    }

    /// JS `bisect`: positions the cursor at `key`; true when the seek is finished here.
    fn bisect(&mut self, l: &Loader<'_>, key: &[u8], incl: bool) -> Result<bool> {
        let leaf = self.node.is_leaf();
        match l.search(&self.node, key)? {
            Ok(mid) => {
                let mid = mid as i64;
                self.i = if incl { mid * 2 + 1 } else { mid * 2 + if leaf { 3 } else { 2 } };
                Ok(true)
            }
            Err(i) => {
                self.i = 2 * i as i64 + if leaf { 1 } else { 0 };
                Ok(leaf)
            }
        }
    }
}

struct TreeIter<'a> {
    l: Loader<'a>,
    trees: Vec<SubTree>,
    upper: Bound<Vec<u8>>,
    lower: Option<(Vec<u8>, bool)>,
    seeking: bool,
}

impl<'a> TreeIter<'a> {
    fn open(l: Loader<'a>, version: u64, lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>>) -> Result<Self> {
        let lower = match lower {
            Bound::Included(k) => Some((k, true)),
            Bound::Excluded(k) => Some((k, false)),
            Bound::Unbounded => None,
        };
        let mut it = TreeIter { l, trees: Vec::new(), upper, seeking: lower.is_some(), lower };
        let Some(root) = l.root(version)? else { return Ok(it) };
        if root.keys().is_empty() {
            return Ok(it);
        }
        let mut tree = SubTree::new(root)?;
        if it.seeking && !it.seek(&mut tree)? {
            return Ok(it);
        }
        it.trees.push(tree);
        Ok(it)
    }

    fn seek(&mut self, tree: &mut SubTree) -> Result<bool> {
        let Some((key, incl)) = &self.lower else { return Ok(true) };
        let done = tree.bisect(&self.l, key, *incl)?;
        let oob = !tree.update();
        if done || oob {
            self.seeking = false;
            if oob {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn peek(&self) -> Option<usize> {
        self.trees.len().checked_sub(1)
    }

    fn skip(&mut self) {
        if let Some(top) = self.trees.last_mut() {
            if !top.next() {
                self.trees.pop();
            }
        }
    }

    /// The key a position compares by: its key slot's key, or for a child slot past the last
    /// key, the nearest enclosing sub-tree's. The sub-trees below `t` on the stack are exactly
    /// its ancestors still open; ancestors already popped sit past their last key and would
    /// defer upwards in the same way.
    fn key_of(&self, t: usize) -> Result<Option<Arc<NodeBlock>>> {
        for s in self.trees[..=t].iter().rev() {
            if s.n < s.node.keys().len() {
                return self.l.key_at(&s.node, s.n).map(Some);
            }
        }
        Ok(None)
    }

    fn next(&mut self) -> Result<Option<(u64, Arc<NodeBlock>)>> {
        let Some(top) = self.trees.last_mut() else { return Ok(None) };
        let (is_key, n, seq) = (top.is_key, top.n, top.seq);
        let node = top.node.clone();
        if !top.next() {
            self.trees.pop();
        }
        if is_key {
            self.seeking = false;
            return Ok(Some((seq, self.l.node(seq)?)));
        }
        if self.trees.len() >= MAX_DEPTH {
            return Err(malformed("a tree deeper than any real one"));
        }
        let mut tree = SubTree::new(self.l.child(&node, n)?)?;
        if self.seeking && !self.seek(&mut tree)? {
            return Ok(None);
        }
        self.trees.push(tree);
        Ok(None)
    }

    fn next_key(&mut self) -> Result<Option<(u64, Arc<NodeBlock>)>> {
        let mut n = None;
        while !self.trees.is_empty() && n.is_none() {
            n = self.next()?;
        }
        let Some((seq, block)) = n else { return Ok(None) };
        let inside = match &self.upper {
            Bound::Unbounded => true,
            Bound::Included(e) => block.key.as_slice() <= e.as_slice(),
            Bound::Excluded(e) => block.key.as_slice() < e.as_slice(),
        };
        if inside {
            Ok(Some((seq, block)))
        } else {
            self.trees.clear();
            Ok(None)
        }
    }
}

type Side = Option<(u64, Arc<NodeBlock>)>;

fn diff_next(a: &mut TreeIter<'_>, b: &mut TreeIter<'_>) -> Result<Option<(Side, Side)>> {
    loop {
        let (l, r) = (a.peek(), b.peek());
        let (l, r) = match (l, r) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return b.next_key().map(|r| r.map(|r| (None, Some(r)))),
            (Some(_), None) => return a.next_key().map(|l| l.map(|l| (Some(l), None))),
            (Some(l), Some(r)) => (l, r),
        };
        let (lt, rt) = (&a.trees[l], &b.trees[r]);
        if lt.seq == rt.seq && lt.is_key == rt.is_key && lt.offset == rt.offset {
            a.skip();
            b.skip();
            continue;
        }
        let (l_is_key, r_is_key) = (lt.is_key, rt.is_key);
        let c = compare(a.key_of(l)?, b.key_of(r)?);
        if l_is_key && !r_is_key {
            b.next()?;
            continue;
        }
        if !l_is_key && r_is_key {
            a.next()?;
            continue;
        }
        if l_is_key && r_is_key {
            return Ok(Some(match c {
                Ordering::Equal => (a.next_key()?, b.next_key()?),
                Ordering::Less => (a.next_key()?, None),
                Ordering::Greater => (None, b.next_key()?),
            }))
            .map(|d| d.filter(|(l, r)| l.is_some() || r.is_some()));
        }
        match c {
            Ordering::Equal => {
                a.next()?;
                b.next()?;
            }
            Ordering::Less => {
                b.next()?;
            }
            Ordering::Greater => {
                a.next()?;
            }
        }
    }
}

/// JS `cmp` with a missing key sorting after every key.
fn compare(a: Option<Arc<NodeBlock>>, b: Option<Arc<NodeBlock>>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(a), Some(b)) => a.key.cmp(&b.key),
    }
}
